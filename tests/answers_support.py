"""Shared helpers for the answer tests: the whole app with a small knowledge base of fresh entries."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path
from typing import Any

from aiohttp.test_utils import TestClient

from hotline.app import create_app
from hotline.appkeys import ANSWERS, STORE
from hotline.console.auth import CSRF_HEADER, SESSION_COOKIE
from hotline.notify import Notification
from hotline.store.users import Users
from tests.conftest import make_settings

TODAY = time.strftime("%Y-%m-%d")
ENTRIES = [
    {"question": "新生儿医保怎么办理？需要什么材料", "answer": "新生儿凭出生医学证明和户口簿到社区医保窗口办理参保。",
     "department": "医疗保障局", "date": TODAY},
    {"question": "供暖费什么时候开始收，在哪里交", "answer": "供暖费每年9月起在供热公司营业厅或网上缴纳。",
     "department": "供热办", "date": TODAY},
    {"question": "小学入学报名需要准备哪些材料", "answer": "适龄儿童报名需户口簿、房产证明和预防接种证。",
     "department": "教育局", "date": TODAY},
]
BABY_Q = "请问新生儿医保怎么办理？需要什么材料？"


class ChatDouble:
    """The chat side of a channel notifier: records what would go out to the platform."""

    def __init__(self) -> None:
        self.sent: list[Notification] = []

    async def send(self, notification: Notification) -> bool:
        self.sent.append(notification)
        return True


async def answers_client(aiohttp_client: Any, redis_url: str, tmp_path: Path, prefix: str,
                         **kb: Any) -> TestClient:
    settings = make_settings(redis_url, tmp_path, prefix, kb={"threshold": 0.5, "suggest_threshold": 0.1, **kb})
    client = await aiohttp_client(create_app(settings))
    await client.app[ANSWERS].ready.wait()
    return client


async def staff_headers(client: TestClient, name: str, role: str) -> dict[str, str]:
    """A real console session (as after logging in) for a staff account of ``role``."""
    users = Users(client.app[STORE])
    user = await users.add(name, role, "unused-password-hash")
    token, session = await users.create_session(user, 3600)
    return {"Cookie": f"{SESSION_COOKIE}={token}", CSRF_HEADER: session.csrf}


async def add_entries(client: TestClient, headers: dict[str, str],
                      entries: list[dict[str, Any]] = ENTRIES) -> list[str]:
    ids = []
    for e in entries:
        resp = await client.post("/api/v1/kb", json=e, headers=headers)
        assert resp.status == 201, await resp.text()
        ids.append((await resp.json())["entry"]["id"])
    return ids


def hidden(html: str, name: str) -> str:
    m = re.search(rf'name="{name}" value="([^"]*)"', html)
    assert m, f"no hidden field {name}"
    return m.group(1)


async def form_token(client: TestClient) -> str:
    return hidden(await (await client.get("/")).text(), "form_token")


def dump(obj: Any) -> str:
    return json.dumps(obj, ensure_ascii=False)
