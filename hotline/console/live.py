"""Live console updates: one reader of the store's change feed fans out to every open console (SSE).

One background task per process reads ``Store.feed`` (a blocking XREAD), so a hundred open consoles
cost one Redis connection, not a hundred. Each console gets a bounded queue; a console too slow to
keep up is told to reload its list instead of holding memory.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator
from typing import Any

from aiohttp import web

from hotline.access import CALL_TAKER, SUPERVISOR, requires
from hotline.appkeys import STORE
from hotline.store import Store
from hotline.store.cases import FEED_BATCH, FEED_BATCH_S
from hotline.tasks import stop_tasks

log = logging.getLogger("hotline.console")

HEARTBEAT_S = 15.0
QUEUE_MAX = 256
RESYNC = {"action": "resync"}


class LiveHub:
    def __init__(self, store: Store, *, block_ms: int = 1000) -> None:
        self.store = store
        self.block_ms = block_ms
        self.subscribers: set[asyncio.Queue[dict[str, Any] | None]] = set()
        self.closed = asyncio.Event()

    def subscribe(self) -> asyncio.Queue[dict[str, Any] | None]:
        q: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue(maxsize=QUEUE_MAX)
        self.subscribers.add(q)
        return q

    def unsubscribe(self, q: asyncio.Queue[dict[str, Any] | None]) -> None:
        self.subscribers.discard(q)

    def publish(self, entry: dict[str, Any]) -> None:
        for q in list(self.subscribers):
            try:
                q.put_nowait(entry)
            except asyncio.QueueFull:
                # The console fell behind: drop its backlog and have it reload the list once.
                while not q.empty():
                    q.get_nowait()
                q.put_nowait(RESYNC)

    def close(self) -> None:
        self.closed.set()
        for q in list(self.subscribers):
            with contextlib.suppress(asyncio.QueueFull):
                q.put_nowait(None)

    async def run(self) -> None:
        last = await self.store.feed_last_id()
        while not self.closed.is_set():
            try:
                entries = await self.store.feed(last, block_ms=self.block_ms, count=FEED_BATCH)
                for eid, fields in entries:
                    last = eid
                    if self.subscribers:
                        self.publish({"id": eid, "case": fields.get("case", ""),
                                      "action": fields.get("action", ""), "status": fields.get("status", "")})
                if entries and len(entries) < FEED_BATCH:
                    await asyncio.sleep(FEED_BATCH_S)
            except asyncio.CancelledError:
                raise
            except Exception:
                # Redis restarting must not end live updates for good; consoles resync when it is back.
                log.exception("live feed error", extra={"event": "console_live_error"})
                await asyncio.sleep(1.0)
                self.publish(RESYNC)


LIVE = web.AppKey("console_live", LiveHub)


async def live_ctx(app: web.Application) -> AsyncIterator[None]:
    hub = LiveHub(app[STORE])
    app[LIVE] = hub
    task = asyncio.create_task(hub.run())
    try:
        yield
    finally:
        hub.close()
        await stop_tasks([task])


async def on_shutdown(app: web.Application) -> None:
    # Open event streams end before the server waits for handlers to finish.
    if LIVE in app:
        app[LIVE].close()


@requires(CALL_TAKER, SUPERVISOR)
async def events(request: web.Request) -> web.StreamResponse:
    """Server-sent events: one ``change`` event per feed entry (case id, action, status; no personal data)."""
    hub = request.app[LIVE]
    resp = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-store",
                                       "X-Accel-Buffering": "no"})
    await resp.prepare(request)
    q = hub.subscribe()
    try:
        await resp.write(b"retry: 2000\nevent: ready\ndata: {}\n\n")
        while not hub.closed.is_set():
            try:
                entry = await asyncio.wait_for(q.get(), HEARTBEAT_S)
            except TimeoutError:
                await resp.write(b": keep-alive\n\n")
                continue
            if entry is None:
                break
            data = json.dumps(entry, ensure_ascii=False)
            await resp.write(f"event: change\ndata: {data}\n\n".encode())
    except ConnectionResetError:
        pass  # the console went away
    finally:
        hub.unsubscribe(q)
    return resp
