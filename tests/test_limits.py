"""Per-source rate limits of the public doors, on the whole app with the real embedded Valkey."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from aiohttp.test_utils import TestClient

from hotline.app import create_app
from hotline.appkeys import STORE
from hotline.redis_server import EmbeddedRedis
from tests.conftest import make_settings


async def limited_client(aiohttp_client: Any, redis_server: EmbeddedRedis, tmp_path: Path, prefix: str,
                         **limits: Any) -> TestClient:
    # Tests connect from 127.0.0.1, which the shipped config exempts: lift the exemption.
    cfg = {"exempt": [], **limits}
    settings = make_settings(redis_server.url, tmp_path, prefix, limits=cfg)
    return await aiohttp_client(create_app(settings))


def complaint(i: int) -> dict[str, str]:
    return {"text": f"第{i}号投诉：小区门口垃圾堆积无人清运"}


def assert_429(resp_status: int, headers: Any) -> int:
    assert resp_status == 429
    retry = int(headers["Retry-After"])
    assert 1 <= retry <= 60
    return retry


async def test_api_submissions_beyond_the_limit_get_429(aiohttp_client, redis_server, tmp_path, key_prefix) -> None:
    client = await limited_client(aiohttp_client, redis_server, tmp_path, key_prefix, submit_per_minute=3)
    statuses = [(await client.post("/api/v1/complaints", json=complaint(i))).status for i in range(3)]
    assert statuses == [201, 201, 201]
    resp = await client.post("/api/v1/complaints", json=complaint(99))
    assert_429(resp.status, resp.headers)
    body = await resp.json()
    assert body["error"]["code"] == "too_many_requests" and "秒后再试" in body["error"]["message"]
    # The refused complaint was not stored.
    assert await client.app[STORE].count() == 3
    # Other doors of the same group share the budget: the web form and Open311 are refused too.
    resp = await client.post("/submit", data={"text": "路灯不亮", "form_token": "t1"})
    assert_429(resp.status, resp.headers)
    assert "text/html" in resp.headers["Content-Type"] and "请求过于频繁" in await resp.text()
    resp = await client.post("/open311/v2/requests.json", data={"service_code": "x", "description": "路灯不亮"})
    assert_429(resp.status, resp.headers)
    # Another group (look-ups) has its own budget; unlimited routes are never refused.
    assert (await client.get("/status")).status == 200
    assert (await client.get("/healthz")).status == 200


async def test_refused_requests_leave_no_case(aiohttp_client, redis_server, tmp_path, key_prefix) -> None:
    client = await limited_client(aiohttp_client, redis_server, tmp_path, key_prefix, submit_per_minute=2)
    results = [(await client.post("/api/v1/complaints", json=complaint(i))).status for i in range(6)]
    assert results.count(201) == 2 and results.count(429) == 4
    assert await client.app[STORE].count() == 2


async def test_lookups_are_limited(aiohttp_client, redis_server, tmp_path, key_prefix) -> None:
    client = await limited_client(aiohttp_client, redis_server, tmp_path, key_prefix, lookup_per_minute=5)
    seen = []
    for i in range(7):
        resp = await client.post("/status", data={"case_id": "20261123-000001", "last4": f"{i:04d}"})
        seen.append(resp.status)
    # Wrong digits are 404; from the sixth guess on the client is refused before the store is asked.
    assert seen[:5] == [404] * 5 and seen[5:] == [429, 429]
    resp = await client.get("/api/v1/cases/20261123-000001")
    assert_429(resp.status, resp.headers)
    assert json.loads(await resp.text())["error"]["code"] == "too_many_requests"


async def test_survey_links_are_limited(aiohttp_client, redis_server, tmp_path, key_prefix) -> None:
    client = await limited_client(aiohttp_client, redis_server, tmp_path, key_prefix, survey_per_minute=2)
    seen = [(await client.get(f"/survey/bogus{i}")).status for i in range(3)]
    assert seen[2] == 429 and all(s != 429 for s in seen[:2])


async def test_zero_means_unlimited(aiohttp_client, redis_server, tmp_path, key_prefix) -> None:
    client = await limited_client(aiohttp_client, redis_server, tmp_path, key_prefix, submit_per_minute=0)
    seen = [(await client.post("/api/v1/complaints", json=complaint(i))).status for i in range(30)]
    assert seen == [201] * 30


async def test_loopback_is_exempt_by_default(client: TestClient) -> None:
    # The shipped configuration: 20 per minute, loopback exempt (local tools and the test suite).
    from hotline.limits import LIMITS

    assert client.app[LIMITS].per_minute["submit"] == 20
    seen = [(await client.post("/api/v1/complaints", json=complaint(i))).status for i in range(40)]
    assert seen == [201] * 40


async def test_clients_behind_a_trusted_proxy_are_told_apart(aiohttp_client, redis_server, tmp_path,
                                                            key_prefix) -> None:
    # The proxy (loopback) is exempt itself, but the clients it forwards are counted one by one.
    client = await limited_client(aiohttp_client, redis_server, tmp_path, key_prefix, submit_per_minute=2,
                                  exempt=["127.0.0.1/32"], trusted_proxies=["127.0.0.1/32"])

    async def post(xff: str | None, i: int) -> int:
        headers = {"X-Forwarded-For": xff} if xff is not None else {}
        return (await client.post("/api/v1/complaints", json=complaint(i), headers=headers)).status

    assert [await post("203.0.113.5", i) for i in range(3)] == [201, 201, 429]
    # A client writing a fake address in front does not get a new budget: the right-most hop counts.
    assert await post("198.51.100.77, 203.0.113.5", 10) == 429
    assert await post("198.51.100.8", 11) == 201
    # No header: the proxy's own (exempt) requests.
    assert [await post(None, 20 + i) for i in range(4)] == [201] * 4


async def test_forwarded_header_is_ignored_from_untrusted_peers(aiohttp_client, redis_server, tmp_path,
                                                                key_prefix) -> None:
    client = await limited_client(aiohttp_client, redis_server, tmp_path, key_prefix, submit_per_minute=2)
    seen = [(await client.post("/api/v1/complaints", json=complaint(i),
                               headers={"X-Forwarded-For": f"198.51.100.{i}"})).status for i in range(3)]
    assert seen == [201, 201, 429]


async def test_processes_share_one_budget(aiohttp_client, redis_server, tmp_path, key_prefix) -> None:
    # Two apps on one Redis stand for two serving processes behind one address.
    a = await limited_client(aiohttp_client, redis_server, tmp_path / "a", key_prefix, submit_per_minute=3)
    b = await limited_client(aiohttp_client, redis_server, tmp_path / "b", key_prefix, submit_per_minute=3)
    seen = [(await (a if i % 2 else b).post("/api/v1/complaints", json=complaint(i))).status for i in range(5)]
    assert seen == [201, 201, 201, 429, 429]
