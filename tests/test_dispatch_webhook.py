"""The webhook backend against a real receiver on 127.0.0.1 that checks the HMAC signature itself."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import time
from collections import Counter
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import redis.asyncio as aioredis
from aiohttp import web
from aiohttp.test_utils import TestClient

from hotline.app import create_app
from hotline.appkeys import DISPATCHER, STORE
from hotline.dispatch.backends import WebhookBackend
from hotline.dispatch.forwarder import Forwarder, ForwarderConfig
from hotline.redis_server import EmbeddedRedis
from tests.conftest import make_settings
from tests.dispatch_support import CLASSIFICATION, new_case, wait_for

SECRET = "webhook-secret-for-tests"
FAST = ForwarderConfig(max_attempts=4, backoff_base_s=0.05, backoff_max_s=0.2, claim_idle_s=0.6, concurrency=4,
                       block_ms=50)


class WebhookReceiver:
    """A work-order system that accepts signed JSON orders; the first try of each order gets a 503."""

    def __init__(self, secret: str) -> None:
        self.secret = secret
        self.accepted: list[dict[str, Any]] = []
        self.keys: Counter[str] = Counter()
        self.rejected_signatures = 0
        self.url = ""
        self._runner: web.AppRunner | None = None

    def _signed_ok(self, request: web.Request, body: bytes) -> bool:
        ts = request.headers.get("X-Hotline-Timestamp", "")
        sig = request.headers.get("X-Hotline-Signature", "")
        expected = "sha256=" + hmac.new(self.secret.encode(), ts.encode() + b"." + body, hashlib.sha256).hexdigest()
        return ts.isdigit() and abs(time.time() - int(ts)) < 300 and hmac.compare_digest(sig, expected)

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        if not self._signed_ok(request, body):
            self.rejected_signatures += 1
            return web.json_response({"error": "bad signature"}, status=401)
        key = request.headers.get("Idempotency-Key", "")
        self.keys[key] += 1
        if self.keys[key] == 1:
            return web.json_response({"error": "busy"}, status=503)
        order = json.loads(body)
        self.accepted.append(order)
        return web.json_response({"id": f"WO-{len(self.accepted)}"}, status=201)

    async def start(self) -> WebhookReceiver:
        app = web.Application()
        app.router.add_post("/orders", self.handle)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.url = f"http://127.0.0.1:{port}/orders"
        return self

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()


@pytest.fixture
async def app_client(aiohttp_client: Any, redis_server: EmbeddedRedis, tmp_path: Path, key_prefix: str) -> TestClient:
    settings = make_settings(redis_server.url, tmp_path, key_prefix, dispatch={"backend": "stream"},
                             dedup={"enabled": False})
    return await aiohttp_client(create_app(settings))


@contextlib.asynccontextmanager
async def forwarding(client: TestClient, url: str, secret: str):  # type: ignore[no-untyped-def]
    dispatcher = client.app[DISPATCHER]
    async with aiohttp.ClientSession() as session:
        fwd = Forwarder(dispatcher.outbox, WebhookBackend(session, url, secret, 2.0), FAST,
                        on_delivered=dispatcher.on_delivered, on_dead=dispatcher.on_dead)
        task = asyncio.create_task(fwd.run())
        try:
            yield fwd
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


async def test_signed_orders_arrive_once_after_a_retry(app_client: TestClient) -> None:
    receiver = await WebhookReceiver(SECRET).start()
    try:
        ids = []
        for _ in range(3):
            case = await new_case(app_client)
            await app_client.app[DISPATCHER].confirm(case.id, CLASSIFICATION, "staff:test")
            ids.append(case.id)
        async with forwarding(app_client, receiver.url, SECRET):
            await wait_for(lambda: len(receiver.accepted) >= 3, timeout=15)
            await asyncio.sleep(0.3)
        assert receiver.rejected_signatures == 0
        assert sorted(o["case_id"] for o in receiver.accepted) == sorted(ids)
        assert all(n == 2 for n in receiver.keys.values())  # 503 once, then accepted, same key both times
        order = receiver.accepted[0]
        assert order["lead_department"] == CLASSIFICATION["department"]
        assert order["order_id"] == f"{order['case_id']}-R1"
        # The backend's own order id is kept on the case once delivery is acknowledged.
        refs = {(await app_client.app[STORE].get_case(i)).dispatch.get("ref") for i in ids}
        assert refs == {"WO-1", "WO-2", "WO-3"}
    finally:
        await receiver.close()


async def test_wrong_secret_is_refused_by_the_receiver_and_nothing_is_accepted(app_client: TestClient) -> None:
    receiver = await WebhookReceiver(SECRET).start()
    try:
        case = await new_case(app_client)
        await app_client.app[DISPATCHER].confirm(case.id, CLASSIFICATION, "staff:test")
        async with forwarding(app_client, receiver.url, "not-the-secret"):
            await wait_for(lambda: receiver.rejected_signatures >= 1, timeout=10)
        assert receiver.accepted == []
    finally:
        await receiver.close()


async def test_stream_backend_leaves_orders_for_the_city_systems_own_consumer_group(
        app_client: TestClient, redis_server: EmbeddedRedis) -> None:
    """With backend = "stream" nothing is sent: the work-order system reads the outbox stream itself."""
    case = await new_case(app_client)
    await app_client.app[DISPATCHER].confirm(case.id, CLASSIFICATION, "staff:test")
    stream = app_client.app[DISPATCHER].outbox.k_stream
    outside = aioredis.Redis.from_url(redis_server.url, decode_responses=True)
    try:
        await outside.xgroup_create(stream, "city-workorders", id="0")
        rows = await outside.xreadgroup("city-workorders", "wo-1", {stream: ">"}, count=10)
        entries = [fields for _s, items in rows for _id, fields in items]
        orders = [json.loads(f["order"]) for f in entries if f.get("case") == case.id]
        assert len(orders) == 1
        assert orders[0]["lead_department"] == CLASSIFICATION["department"]
        assert orders[0]["deadline_at"] > time.time()
    finally:
        await outside.aclose()
