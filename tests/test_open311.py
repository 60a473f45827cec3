"""The Open311 GeoReport v2 door: services from the category tree, requests through the same intake."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from aiohttp.test_utils import TestClient

from hotline.app import create_app
from hotline.appkeys import DISPATCHER, STORE
from hotline.dispatch.tables import Taxonomy
from hotline.redis_server import EmbeddedRedis
from hotline.status import Status
from tests.conftest import make_settings
from tests.dispatch_support import CLASSIFICATION, SECRET, post_event

REQUEST = {"service_code": "城乡建设/城市建设和市政管理",
           "description": "光明小区3号楼前路灯不亮已经两周，晚上出行不便",
           "address_string": "A3区光明小区3号楼", "lat": "28.2", "long": "112.9", "phone": "13812345678",
           "first_name": "明", "last_name": "王", "device_id": "app-device-1",
           "media_url": "https://img.example.org/lamp.jpg"}


async def test_services_from_category_tree(client: TestClient) -> None:
    resp = await client.get("/open311/v2/services.json")
    assert resp.status == 200
    services = await resp.json()
    codes = {s["service_code"]: s for s in services}
    assert "城乡建设/城市建设和市政管理" in codes
    s = codes["城乡建设/城市建设和市政管理"]
    assert s["group"] == "城乡建设" and s["service_name"] == "城市建设和市政管理" and s["type"] == "batch"
    assert "路灯" not in s["keywords"] and "自来水供应" in s["keywords"].split(",")
    tree = json.loads(Path("config/taxonomy.json").read_text(encoding="utf-8"))["tree"]
    assert len(services) == sum(len(v) for v in tree.values())


def test_taxonomy_falls_back_gracefully(tmp_path: Path) -> None:
    path = tmp_path / "taxonomy.json"
    tax = Taxonomy(path)
    assert tax.tree() == {} and tax.path_of("路灯") == ["路灯"]  # no file yet
    path.write_text(json.dumps({"tree": {"城乡建设": {"市政": ["路灯", "道路"]}}}), encoding="utf-8")
    assert tax.path_of("路灯") == ["城乡建设", "市政", "路灯"]
    path.write_text('{"tree": {"城乡建', encoding="utf-8")  # half-written by another process
    import os

    os.utime(path, (1, 1))
    assert tax.path_of("路灯") == ["城乡建设", "市政", "路灯"]  # the last good tree stays
    assert list(tax.tree()) == ["城乡建设"]


async def test_post_request_form_encoded_goes_through_intake(client: TestClient) -> None:
    resp = await client.post("/open311/v2/requests.json", data=REQUEST)
    assert resp.status == 201
    body = await resp.json()
    sid = body[0]["service_request_id"]
    assert "案件编号" in body[0]["service_notice"]
    case = await client.app[STORE].get_case(sid)
    assert case.channel == "open311" and case.status == Status.CLASSIFIED
    assert case.contact == "13812345678" and case.name == "王 明" and case.location is not None
    assert case.attachments == ["https://img.example.org/lamp.jpg"]
    events = await client.app[STORE].events(sid)
    assert any(e.action == "open311_service" and e.data["service_code"] == REQUEST["service_code"] for e in events)
    # The same app sending the same words again gets the same case.
    again = await client.post("/open311/v2/requests.json", data=REQUEST)
    assert again.status == 200 and (await again.json())[0]["service_request_id"] == sid
    # JSON bodies work too, and an Idempotency-Key dedups.
    other = {**REQUEST, "description": "滨河路人行道地砖松动，老人容易绊倒", "device_id": "app-2"}
    r1 = await client.post("/open311/v2/requests.json", json=other, headers={"Idempotency-Key": "k-1"})
    r2 = await client.post("/open311/v2/requests.json", json={**other, "device_id": "app-3"},
                           headers={"Idempotency-Key": "k-1"})
    assert r1.status == 201 and r2.status == 200
    assert (await r1.json())[0]["service_request_id"] == (await r2.json())[0]["service_request_id"]


async def test_post_request_errors_in_georeport_form(client: TestClient) -> None:
    cases = [
        ({k: v for k, v in REQUEST.items() if k != "service_code"}, 400, "service_code"),
        ({**REQUEST, "service_code": "没有/这个"}, 404, "service_code"),
        ({k: v for k, v in REQUEST.items() if k not in ("lat", "long", "address_string")}, 400, "位置"),
        ({**REQUEST, "lat": "abc"}, 400, "lat"),
        ({**REQUEST, "lat": "91"}, 400, "lat"),
        ({k: v for k, v in REQUEST.items() if k != "long"}, 400, "long"),
        ({**REQUEST, "description": ""}, 400, "描述"),
        ({**REQUEST, "phone": "not a phone"}, 400, "电话"),
    ]
    before = await client.app[STORE].count()
    for form, status, word in cases:
        resp = await client.post("/open311/v2/requests.json", data=form)
        body = await resp.json()
        assert resp.status == status, (form, body)
        assert body[0]["code"] == status and word in body[0]["description"], body
    resp = await client.post("/open311/v2/requests.json", data=b"<xml/>", headers={"Content-Type": "text/xml"})
    assert resp.status == 415
    for raw in (b"{oops", b"[" * 50_000):
        resp = await client.post("/open311/v2/requests.json", data=raw, headers={"Content-Type": "application/json"})
        assert resp.status == 400
    resp = await client.post("/open311/v2/requests.json", json={**REQUEST, "lat": {"x": 1}})
    assert resp.status == 400
    assert await client.app[STORE].count() == before  # nothing half-written


async def test_api_keys_when_configured(aiohttp_client: Any, redis_server: EmbeddedRedis, tmp_path: Path,
                                        key_prefix: str) -> None:
    settings = make_settings(redis_server.url, tmp_path, key_prefix, dispatch={"open311_api_keys": ["app-key-1"]})
    client = await aiohttp_client(create_app(settings))
    resp = await client.post("/open311/v2/requests.json", data=REQUEST)
    assert resp.status == 403
    resp = await client.post("/open311/v2/requests.json", data={**REQUEST, "api_key": "app-key-1"})
    assert resp.status == 201


async def test_get_request_follows_the_case(aiohttp_client: Any, redis_server: EmbeddedRedis, tmp_path: Path,
                                            key_prefix: str) -> None:
    settings = make_settings(redis_server.url, tmp_path, key_prefix, dispatch={"secret": SECRET})
    client = await aiohttp_client(create_app(settings))
    sid = (await (await client.post("/open311/v2/requests.json", data=REQUEST)).json())[0]["service_request_id"]
    resp = await client.get(f"/open311/v2/requests/{sid}.json?last4=5678")
    view = (await resp.json())[0]
    assert resp.status == 200 and view["status"] == "open" and view["service_request_id"] == sid
    assert view["description"] and view["lat"] is not None
    assert "13812345678" not in json.dumps(view, ensure_ascii=False) and "王" not in json.dumps(view,
                                                                                                 ensure_ascii=False)
    case = await client.app[DISPATCHER].confirm(sid, CLASSIFICATION, "staff:a")
    view = (await (await client.get(f"/open311/v2/requests/{sid}.json")).json())[0]
    assert view["agency_responsible"] == "城乡建设局" and view["expected_datetime"]
    status, _ = await post_event(client, {"event_id": "e1", "case_id": sid, "type": "resolved",
                                          "order_id": case.dispatch["order_id"], "reply": "已更换路灯。"})
    assert status == 200
    view = (await (await client.get(f"/open311/v2/requests/{sid}.json?last4=5678")).json())[0]
    assert view["status"] == "closed" and "已更换路灯。" in view["status_notes"]
    # The number alone (numbers run in sequence): progress, no content, reply or place.
    bare = (await (await client.get(f"/open311/v2/requests/{sid}.json")).json())[0]
    assert bare["status"] == "closed" and "已更换" not in bare["status_notes"]
    assert bare["description"] == "" and bare["address"] == "" and bare["lat"] is None
    assert (await client.get(f"/open311/v2/requests/{sid}.json?last4=0000")).status == 404
    for bad in ("20990101-000001", "abc", "..%2F..%2Fetc"):
        resp = await client.get(f"/open311/v2/requests/{bad}.json")
        assert resp.status == 404 and (await resp.json())[0]["code"] == 404
