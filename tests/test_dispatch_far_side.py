"""The dispatch hand-off against a far side that answers badly: the whole app on the embedded Valkey, its
Open311 or webhook backend pointed at a real HTTP server on 127.0.0.1 (tests/dispatch_support.FarSide).

Each test stands for one defect found in QA; each failed before its fix:
- a 200 whose JSON list holds no object (``["SR-1"]``) raised in the backend, the order stayed "sending" and
  was POSTed again every ``claim_idle_s``, never dead-lettered;
- redirects were followed: a 302 to a login page counted as delivery, a 307 re-sent the order (key, the
  citizen's name and number, the signature) to another host;
- the Open311 ``api_key`` reached the log through error texts holding the request URL or form;
- an answer arriving in two chunks lost its ``service_request_id``, so the order's status never came back.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from hotline.app import create_app
from hotline.appkeys import DISPATCHER, INTAKE, STORE
from hotline.dispatch.backends import MAX_RESPONSE_BYTES, Delivery, Open311Backend
from hotline.dispatch.feature import FORWARDER
from hotline.dispatch.forwarder import Forwarder, ForwarderConfig
from hotline.dispatch.poller import poll_once
from hotline.logs import JsonFormatter
from hotline.records import InboundMessage
from hotline.redis_server import EmbeddedRedis
from hotline.status import Status
from tests.conftest import make_settings
from tests.dispatch_support import CLASSIFICATION, FarSide, wait_for

API_KEY = "CITY-SECRET-API-KEY-7f3a9c"
HOOK_SECRET = "hook-secret-for-far-side"
PHONE = "13912345678"
OPEN311 = "/open311/v2"
HOOK = "/hook"


@pytest.fixture
async def far() -> AsyncIterator[list[FarSide]]:
    """Servers a test starts; all closed at the end."""
    servers: list[FarSide] = []
    yield servers
    for server in servers:
        await server.close()


async def start(servers: list[FarSide], *routes: tuple[str, str, Any]) -> FarSide:
    side = FarSide()
    for method, path, handler in routes:
        side.route(method, path, handler)
    servers.append(await side.start())
    return side


async def start_app(aiohttp_client: Any, redis_server: EmbeddedRedis, tmp_path: Path, prefix: str,
                    **dispatch: Any) -> TestClient:
    section = {"api_key": API_KEY, "secret": HOOK_SECRET, "backoff_base_s": 0.02, "backoff_max_s": 0.05,
               "max_attempts": 3, "request_timeout_s": 0.4, "claim_idle_s": 0.5, "sweep_interval_s": 3600.0,
               **dispatch}
    settings = make_settings(redis_server.url, tmp_path, prefix, dispatch=section, dedup={"enabled": False})
    return await aiohttp_client(create_app(settings))


async def confirmed(client: TestClient, contact: str = "") -> str:
    # Not dispatch_support.new_case: its text rotates with a module counter, and cases made here would
    # shift which text (some are flagged urgent) later tests in the same session get.
    result = await client.app[INTAKE].submit(InboundMessage(
        channel="api", sender=f"far-side-{time.time_ns()}", contact=contact,
        text="幸福里3号附近路灯坏了一个月没人修，请尽快处理", address="A3区中山路12号"))
    assert result.created
    await client.app[DISPATCHER].confirm(result.case.id, CLASSIFICATION, "staff:test")
    return result.case.id


async def dispatch_state(client: TestClient, case_id: str) -> str:
    return str((await client.app[STORE].get_case(case_id)).dispatch.get("state"))


def assert_key_never_logged(caplog: pytest.LogCaptureFixture, *secrets: str) -> None:
    """Every record as production writes it (JsonFormatter, traceback included) and every raw field."""
    fmt = JsonFormatter()
    for record in caplog.records:
        text = fmt.format(record) + repr(vars(record))
        for secret in secrets:
            assert secret not in text, f"{secret!r} logged in {record.name}: {record.getMessage()}"


# 1. a 2xx whose JSON list holds no object ---------------------------------------------------------------

@pytest.mark.parametrize("answer", [["SR-1"], [None], [[1]], "SR-1"])
async def test_open311_answer_without_object_is_one_accepted_order(
        aiohttp_client: Any, redis_server: EmbeddedRedis, tmp_path: Path, key_prefix: str, far: list[FarSide],
        answer: Any) -> None:
    async def accept(request: web.Request) -> web.Response:
        return web.json_response(answer, status=201)

    side = await start(far, ("POST", f"{OPEN311}/requests.json", accept))
    client = await start_app(aiohttp_client, redis_server, tmp_path, key_prefix, backend="open311",
                             url=side.url + OPEN311)
    case_id = await confirmed(client)
    await wait_for(lambda: _eq(dispatch_state(client, case_id), "delivered"), timeout=3)
    await asyncio.sleep(1.2)  # two claim_idle_s periods: a stuck "sending" order would be POSTed again
    assert side.count("POST") == 1
    state = await client.app[DISPATCHER].outbox.order_state(f"{case_id}-R1", case_id)
    assert state["status"] == "delivered" and state["attempts"] == "1" and state["ref"] == ""
    assert (await client.app[STORE].get_case(case_id)).status == Status.DISPATCHED


class _BuggyBackend(Open311Backend):
    """A backend with a bug after the POST, whose exception text holds the key (as an URL would)."""

    async def deliver(self, order: dict[str, Any], key: str) -> Delivery:
        await super().deliver(order, key)
        raise RuntimeError(f"cannot handle answer of {self.url}/requests.json?api_key={self.api_key}")


async def test_any_backend_exception_is_a_failed_attempt_then_a_dead_letter(
        aiohttp_client: Any, redis_server: EmbeddedRedis, tmp_path: Path, key_prefix: str, far: list[FarSide],
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)

    async def accept(request: web.Request) -> web.Response:
        return web.json_response([{"service_request_id": "SR-1"}], status=201)

    side = await start(far, ("POST", f"{OPEN311}/requests.json", accept))
    client = await start_app(aiohttp_client, redis_server, tmp_path, key_prefix, backend="stream")
    dispatcher = client.app[DISPATCHER]
    case_id = await confirmed(client)
    cfg = ForwarderConfig(max_attempts=3, backoff_base_s=0.02, backoff_max_s=0.05, claim_idle_s=0.5, block_ms=20)
    async with aiohttp.ClientSession() as session:
        backend = _BuggyBackend(session, side.url + OPEN311, API_KEY, dispatcher.tables, 0.4)
        fwd = Forwarder(dispatcher.outbox, backend, cfg, on_delivered=dispatcher.on_delivered,
                        on_dead=dispatcher.on_dead)
        task = asyncio.create_task(fwd.run())
        try:
            await wait_for(lambda: _eq(dispatcher.outbox.dead_count(), 1), timeout=3)
            await asyncio.sleep(1.2)  # claim rounds: nothing may be sent again
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
    assert side.count("POST") == 3 and fwd.failed_attempts == 3 and fwd.buried == 1
    [letter] = await dispatcher.outbox.dead_letters()
    assert letter.attempts == 3 and letter.error.startswith("unexpected RuntimeError")
    assert await dispatch_state(client, case_id) == "dead_letter"
    assert not [r for r in caplog.records if getattr(r, "event", "") == "forwarder_error"]
    assert_key_never_logged(caplog, API_KEY)
    assert API_KEY not in letter.error


# 2. redirects are not followed and not acceptance --------------------------------------------------------

@pytest.mark.parametrize("backend", ["open311", "webhook"])
@pytest.mark.parametrize("where", ["login", "other_host"])
async def test_redirected_order_is_a_dead_letter_and_goes_nowhere_else(
        aiohttp_client: Any, redis_server: EmbeddedRedis, tmp_path: Path, key_prefix: str, far: list[FarSide],
        caplog: pytest.LogCaptureFixture, backend: str, where: str) -> None:
    caplog.set_level(logging.INFO)

    async def elsewhere(request: web.Request) -> web.Response:
        return web.json_response([{"service_request_id": "EVIL-1"}], status=201)

    other = await start(far, ("POST", "/steal", elsewhere), ("GET", "/steal", elsewhere))

    async def redirect(request: web.Request) -> web.Response:
        if where == "login":  # an expired SSO session at the city's proxy
            raise web.HTTPFound(f"/login?next={request.path}&api_key={API_KEY}")
        raise web.HTTPTemporaryRedirect(f"{other.url}/steal?api_key={API_KEY}")

    async def login(request: web.Request) -> web.Response:
        return web.Response(text="<html><body>统一身份认证 登录</body></html>", content_type="text/html")

    path = f"{OPEN311}/requests.json" if backend == "open311" else HOOK
    side = await start(far, ("POST", path, redirect), ("GET", "/login", login))
    url = side.url + (OPEN311 if backend == "open311" else HOOK)
    client = await start_app(aiohttp_client, redis_server, tmp_path, key_prefix, backend=backend, url=url)
    case_id = await confirmed(client, contact=PHONE)
    await wait_for(lambda: _eq(dispatch_state(client, case_id), "dead_letter"), timeout=3)
    await asyncio.sleep(0.3)
    assert side.count("POST", path) == 1  # a misconfigured URL: no retries, a person must fix it
    assert side.count("GET", "/login") == 0 and other.hits == []
    [letter] = await client.app[DISPATCHER].outbox.dead_letters()
    assert letter.attempts == 1 and "redirect" in letter.error
    assert API_KEY not in letter.error and "?" not in letter.error.split("redirect to", 1)[1]
    assert (await client.app[STORE].get_case(case_id)).dispatch.get("ref", "") == ""
    assert_key_never_logged(caplog, API_KEY)


# 6. the api_key never reaches a log line ------------------------------------------------------------------

@pytest.mark.parametrize("far_answer", ["redirect_loop", "error_page_echoes_url"])
async def test_poll_failures_never_log_the_api_key(
        aiohttp_client: Any, redis_server: EmbeddedRedis, tmp_path: Path, key_prefix: str, far: list[FarSide],
        caplog: pytest.LogCaptureFixture, far_answer: str) -> None:
    caplog.set_level(logging.INFO)

    async def accept(request: web.Request) -> web.Response:
        return web.json_response([{"service_request_id": "SR-9"}], status=201)

    async def status(request: web.Request) -> web.Response:
        if far_answer == "redirect_loop":  # a proxy rule misfiring: same path and query again
            raise web.HTTPFound(str(request.rel_url))
        return web.Response(status=500, text=f"upstream error for {request.url}")

    side = await start(far, ("POST", f"{OPEN311}/requests.json", accept),
                       ("GET", OPEN311 + "/requests/{sid}.json", status))
    client = await start_app(aiohttp_client, redis_server, tmp_path, key_prefix, backend="open311",
                             url=side.url + OPEN311)
    case_id = await confirmed(client)
    await wait_for(lambda: _eq(dispatch_state(client, case_id), "delivered"), timeout=3)
    backend = client.app[FORWARDER].backend
    assert isinstance(backend, Open311Backend)
    assert await poll_once(client.app[DISPATCHER], backend) == 0
    assert side.count("GET") == 1 and API_KEY in side.hits[-1].query  # the key did go to the backend
    failed = [r for r in caplog.records if getattr(r, "event", "") == "poll_failed"]
    assert len(failed) == 1
    assert_key_never_logged(caplog, API_KEY)


async def test_delivery_failures_never_log_the_api_key(
        aiohttp_client: Any, redis_server: EmbeddedRedis, tmp_path: Path, key_prefix: str, far: list[FarSide],
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)

    async def echo(request: web.Request) -> web.Response:  # a gateway's error page quoting the request
        return web.Response(status=503, text=f"bad gateway for {request.url}?{(await request.read()).decode()}")

    side = await start(far, ("POST", f"{OPEN311}/requests.json", echo))
    client = await start_app(aiohttp_client, redis_server, tmp_path, key_prefix, backend="open311",
                             url=side.url + OPEN311)
    case_id = await confirmed(client)
    await wait_for(lambda: _eq(dispatch_state(client, case_id), "dead_letter"), timeout=3)
    assert side.count("POST") == 3
    [letter] = await client.app[DISPATCHER].outbox.dead_letters()
    assert "503" in letter.error and API_KEY not in letter.error
    assert_key_never_logged(caplog, API_KEY)


# 7. answers in several chunks, and answers over the limit --------------------------------------------------

async def _chunked(request: web.Request, parts: list[bytes], status: int = 201) -> web.StreamResponse:
    resp = web.StreamResponse(status=status, headers={"Content-Type": "application/json"})
    await resp.prepare(request)
    for part in parts:
        await resp.write(part)
        await asyncio.sleep(0.05)  # separate TCP segments, read by the client as separate chunks
    await resp.write_eof()
    return resp


async def test_answer_in_two_chunks_keeps_its_ref_and_status_comes_back(
        aiohttp_client: Any, redis_server: EmbeddedRedis, tmp_path: Path, key_prefix: str,
        far: list[FarSide]) -> None:
    async def accept(request: web.Request) -> web.StreamResponse:
        return await _chunked(request, [b'[{"service_request_id": "SR-', b'77", "service_notice": ""}]'])

    async def status(request: web.Request) -> web.StreamResponse:
        record = {"service_request_id": "SR-77", "status": "closed", "status_notes": "已修复。",
                  "updated_datetime": "2026-01-02T10:00:00+08:00"}
        raw = json.dumps([record], ensure_ascii=False).encode()
        return await _chunked(request, [raw[:20], raw[20:]], status=200)

    side = await start(far, ("POST", f"{OPEN311}/requests.json", accept),
                       ("GET", OPEN311 + "/requests/{sid}.json", status))
    client = await start_app(aiohttp_client, redis_server, tmp_path, key_prefix, backend="open311",
                             url=side.url + OPEN311, request_timeout_s=2.0, claim_idle_s=5.0)
    case_id = await confirmed(client)
    await wait_for(lambda: _eq(dispatch_state(client, case_id), "delivered"), timeout=3)
    case = await client.app[STORE].get_case(case_id)
    assert case.dispatch["ref"] == "SR-77"
    backend = client.app[FORWARDER].backend
    assert isinstance(backend, Open311Backend)
    assert await poll_once(client.app[DISPATCHER], backend) == 1
    assert [h.path for h in side.hits if h.method == "GET"] == [f"{OPEN311}/requests/SR-77.json"]
    case = await client.app[STORE].get_case(case_id)
    assert case.status == Status.RESOLVED and case.dispatch["reply"] == "已修复。"


async def test_answer_over_the_limit_is_accepted_without_ref_and_a_failed_poll(
        aiohttp_client: Any, redis_server: EmbeddedRedis, tmp_path: Path, key_prefix: str, far: list[FarSide],
        caplog: pytest.LogCaptureFixture) -> None:
    """The documented over-limit rules. Before the fix a big answer also ended without a ref, but only
    because the first chunk alone was unreadable JSON, not because its size was checked."""
    caplog.set_level(logging.INFO)
    pad = b" " * (MAX_RESPONSE_BYTES // 4)

    async def accept(request: web.Request) -> web.StreamResponse:
        first = sum(1 for h in side.hits if h.method == "POST") == 1
        body = b'[{"service_request_id": "SR-%d"}]' % (1 if first else 2)
        return await _chunked(request, [body[:1], pad, pad, pad, pad, pad, body[1:]] if first else [body])

    async def status(request: web.Request) -> web.StreamResponse:
        return await _chunked(request, [b"[", pad, pad, pad, pad, pad, b'{"status": "closed"}]'], status=200)

    side = await start(far, ("POST", f"{OPEN311}/requests.json", accept),
                       ("GET", OPEN311 + "/requests/{sid}.json", status))
    client = await start_app(aiohttp_client, redis_server, tmp_path, key_prefix, backend="open311",
                             url=side.url + OPEN311, request_timeout_s=2.0, claim_idle_s=5.0)
    big = await confirmed(client)  # one after the other: the first POST gets the big answer
    await wait_for(lambda: _eq(dispatch_state(client, big), "delivered"), timeout=3)
    small = await confirmed(client)
    await wait_for(lambda: _eq(dispatch_state(client, small), "delivered"), timeout=3)
    assert side.count("POST") == 2  # accepted: not sent again although the answer was unreadable
    assert (await client.app[STORE].get_case(big)).dispatch["ref"] == ""
    assert (await client.app[STORE].get_case(small)).dispatch["ref"] == "SR-2"
    backend = client.app[FORWARDER].backend
    assert isinstance(backend, Open311Backend)
    assert await poll_once(client.app[DISPATCHER], backend) == 0
    failed = [r for r in caplog.records if getattr(r, "event", "") == "poll_failed"]
    assert len(failed) == 1 and "over" in failed[0].error
    assert (await client.app[STORE].get_case(small)).status == Status.DISPATCHED


async def _eq(awaitable: Any, expected: Any) -> bool:
    return (await awaitable) == expected
