"""The embedded default: the app starts its own Valkey in the data dir and finds its cases after a restart."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hotline.app import create_app
from hotline.settings import load_settings


async def test_cases_survive_a_restart_of_the_embedded_server(aiohttp_client: Any, tmp_path: Path) -> None:
    settings = load_settings(overrides={"server": {"data_dir": str(tmp_path)}, "store": {"redis_url": ""}},
                             env={})
    client = await aiohttp_client(create_app(settings))
    body = {"text": "学校门口占道经营，上下学很堵", "contact": "13511112222"}
    resp = await client.post("/api/v1/complaints", json=body)
    assert resp.status == 201
    case_id = (await resp.json())["case_id"]
    await client.close()
    assert (tmp_path / "redis" / "appendonlydir").is_dir()
    assert not (tmp_path / "redis" / "redis.sock").exists()

    client = await aiohttp_client(create_app(settings))
    resp = await client.get(f"/api/v1/cases/{case_id}?last4=2222")
    assert resp.status == 200
    assert (await resp.json())["text"] == "学校门口占道经营，上下学很堵"
    resp = await client.post("/api/v1/complaints", json={"text": "第二件：小区垃圾没人清运"})
    assert int((await resp.json())["case_id"][-6:]) == int(case_id[-6:]) + 1
    await client.close()
