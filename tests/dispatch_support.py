"""Test parts for dispatch: a real Open311 GeoReport v2 receiver on 127.0.0.1, a recording notifier,
signed event posts and case helpers.

The receiver stands for the city's dispatch system (the far side of a network we do not own). It speaks
the wire protocol (form-encoded POST /requests.json, JSON list answers, GET /requests/{id}.json) and
deduplicates nothing: every accepted POST is one more order, so the tests count what really arrived.
``FarSide`` is the same far side when it answers what a well-behaved receiver never does (redirects,
lists of non-objects, bodies in several chunks, error pages echoing the request): a loopback server whose
handlers the test writes, recording every request that reached it.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from aiohttp.test_utils import TestClient

from hotline.appkeys import INTAKE, NOTIFICATIONS
from hotline.dispatch.signing import sign_headers
from hotline.notify import Notification
from hotline.records import Case, InboundMessage

SECRET = "test-dispatch-secret"

# What the receiver does with the n-th POST of an order key.
Plan = Callable[[str, int], str]  # → "accept" | "fail" | "stall" | "hold" | "reject"


@dataclass
class Arrival:
    key: str  # attribute[hotline_order_id]
    header_key: str  # Idempotency-Key header
    case_id: str
    form: dict[str, str]
    at: float


@dataclass
class Open311Receiver:
    plan: Plan = lambda key, n: "accept"
    stall_s: float = 3.0
    # True: a request whose client went away is abandoned (like a backend rolling back its transaction);
    # False: the backend finishes it anyway and the order exists although the client never heard back.
    cancel_on_disconnect: bool = True
    seen: list[Arrival] = field(default_factory=list)
    orders: list[Arrival] = field(default_factory=list)
    attempts: Counter = field(default_factory=Counter)
    status: dict[str, dict[str, Any]] = field(default_factory=dict)
    held: asyncio.Event = field(default_factory=asyncio.Event)
    release: asyncio.Event = field(default_factory=asyncio.Event)
    url: str = ""
    _runner: web.AppRunner | None = None

    async def start(self) -> Open311Receiver:
        app = web.Application()
        app.router.add_post("/open311/v2/requests.json", self._post)
        app.router.add_get("/open311/v2/requests/{sid}.json", self._get)
        self._runner = web.AppRunner(app, handler_cancellation=self.cancel_on_disconnect)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = self._runner.addresses[0][1]
        self.url = f"http://127.0.0.1:{port}/open311/v2"
        return self

    async def close(self) -> None:
        self.release.set()
        if self._runner is not None:
            await self._runner.cleanup()

    async def _post(self, request: web.Request) -> web.Response:
        form = {k: v for k, v in (await request.post()).items() if isinstance(v, str)}
        key = form.get("attribute[hotline_order_id]", "")
        arrival = Arrival(key, request.headers.get("Idempotency-Key", ""), form.get("attribute[hotline_case_id]", ""),
                          form, time.time())
        self.seen.append(arrival)
        self.attempts[key] += 1
        action = self.plan(key, self.attempts[key])
        if action == "fail":
            return web.json_response([{"code": 503, "description": "service unavailable"}], status=503)
        if action == "reject":
            return web.json_response([{"code": 400, "description": "service_code not found"}], status=400)
        if action == "stall":
            await asyncio.sleep(self.stall_s)
            return web.json_response([{"code": 504, "description": "gateway timeout"}], status=504)
        if action == "hold":
            self.held.set()
            await self.release.wait()
        if not form.get("service_code") or (not form.get("address_string") and not form.get("lat")):
            return web.json_response([{"code": 400, "description": "location required"}], status=400)
        self.orders.append(arrival)
        sid = f"SR-{len(self.orders)}"
        self.status[sid] = {"service_request_id": sid, "status": "open", "status_notes": "",
                            "updated_datetime": "2026-01-01T00:00:00+08:00"}
        return web.json_response([{"service_request_id": sid, "service_notice": ""}], status=201)

    async def _get(self, request: web.Request) -> web.Response:
        record = self.status.get(request.match_info["sid"])
        if record is None:
            return web.json_response([{"code": 404, "description": "not found"}], status=404)
        return web.json_response([record])

    def orders_per_case(self) -> Counter:
        return Counter(a.case_id for a in self.orders)


@dataclass
class Hit:
    method: str
    path: str
    query: str
    headers: dict[str, str]
    body: bytes
    at: float


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class FarSide:
    """A real HTTP server on 127.0.0.1 with the test's own handlers; ``hits`` is every request it got."""

    def __init__(self) -> None:
        self.hits: list[Hit] = []
        self.url = ""  # http://127.0.0.1:<port>, known after start()
        self._routes: list[tuple[str, str, Handler]] = []
        self._runner: web.AppRunner | None = None

    def route(self, method: str, path: str, handler: Handler) -> FarSide:
        self._routes.append((method, path, handler))
        return self

    @web.middleware
    async def _record(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        body = await request.read()  # cached by aiohttp: the handler can still read or post() it
        self.hits.append(Hit(request.method, request.path, request.query_string, dict(request.headers), body,
                             time.time()))
        return await handler(request)

    async def start(self) -> FarSide:
        app = web.Application(middlewares=[self._record])
        for method, path, handler in self._routes:
            app.router.add_route(method, path, handler)
        # No access log: it is the far side's log, not ours, and would hold the query (api_key) that the
        # tests check our own log lines never do.
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.url = f"http://127.0.0.1:{self._runner.addresses[0][1]}"
        return self

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    def count(self, method: str, path: str = "") -> int:
        return sum(1 for h in self.hits if h.method == method and (not path or h.path == path))


class RecordingNotifier:
    """Stands for a chat channel's sender: records what citizens would be told."""

    def __init__(self) -> None:
        self.sent: list[Notification] = []

    async def send(self, notification: Notification) -> bool:
        self.sent.append(notification)
        return True

    def kinds(self, case_id: str) -> list[str]:
        return [n.kind for n in self.sent if n.case_id == case_id]


def record_notifications(client: TestClient, channel: str = "api") -> RecordingNotifier:
    rec = RecordingNotifier()
    client.app[NOTIFICATIONS].register(channel, rec)
    return rec


_N = 0
_PROBLEMS = [
    "路灯坏了一个月没人修", "下水道堵塞污水外溢", "楼下餐馆油烟扰民",
    "工地夜间施工噪音很大", "小区垃圾堆放没人清运", "公交站台顶棚破损漏雨",
    "人行道地砖松动绊倒老人", "违章搭建占用消防通道", "河道里有人倾倒建筑垃圾",
    "学校门口早晚高峰拥堵", "广场舞音响声音太大", "共享单车乱停堵住盲道",
    "电梯经常故障停运", "公园健身器材损坏", "菜市场占道经营",
    "暖气不热室温只有十五度", "路口红绿灯不亮", "小区停车位被占用",
]
_PLACES = ["幸福里", "光明小区", "建设路", "解放街", "和平巷", "东湖花园", "南门社区", "滨河路", "北苑", "西城家园"]


async def new_case(client: TestClient, text: str = "", *, address: str = "A3区中山路12号",
                   channel: str = "api", contact: str = "") -> Case:
    global _N
    _N += 1
    result = await client.app[INTAKE].submit(InboundMessage(
        channel=channel, sender=f"citizen-{_N}-{time.time_ns()}", contact=contact,
        text=text or f"{_PLACES[_N % len(_PLACES)]}{_N % 97}号附近{_PROBLEMS[_N % len(_PROBLEMS)]}，请尽快处理",
        address=address))
    assert result.created
    return result.case


CLASSIFICATION = {"category": "城乡建设", "department": "城乡建设局", "type": "投诉"}


def signed(body: Any, secret: str = SECRET, *, now: float | None = None) -> tuple[bytes, dict[str, str]]:
    raw = body if isinstance(body, bytes) else json.dumps(body, ensure_ascii=False).encode()
    return raw, {"Content-Type": "application/json", **sign_headers(secret, raw, now)}


async def post_event(client: TestClient, body: Any, secret: str = SECRET, *, now: float | None = None,
                     headers: dict[str, str] | None = None) -> tuple[int, Any]:
    raw, h = signed(body, secret, now=now)
    if headers is not None:
        h = headers
    resp = await client.post("/api/v1/dispatch/events", data=raw, headers=h)
    try:
        payload = await resp.json()
    except Exception:
        payload = await resp.text()
    return resp.status, payload


async def wait_for(pred: Callable[[], Any], timeout: float = 10.0, step: float = 0.02) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = pred()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return
        await asyncio.sleep(step)
    raise AssertionError("condition not reached in time")
