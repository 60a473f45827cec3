"""Followers of the change feed read it in batches when it never runs dry (a busy service)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from typing import Any

from hotline.appkeys import STORE
from hotline.callbacks import _feed_worker
from hotline.console.live import LiveHub
from hotline.dedup import DedupConfig, DedupService, load_idf
from hotline.notify import Notifications
from hotline.store.cases import FEED_BATCH_S
from hotline.surveys import CallbackSettings, SurveyService

RUN_S = 0.6
# One read per batching delay, plus the first read and some slack for a slow machine.
MAX_READS = int(RUN_S / FEED_BATCH_S) + 4


async def _busy_feed(store: Any, owner: Any, name: str, monkeypatch: Any) -> list[int]:
    """Wrap ``owner.name`` (a feed read) so that a new entry is on the feed whenever it is read: without
    batching, a follower would read again at once, as fast as the event loop lets it."""
    read = getattr(owner, name)
    sizes: list[int] = []

    async def reading(*args: Any, **kwargs: Any) -> Any:
        entries = await read(*args, **kwargs)
        sizes.append(len(entries))
        await store.r.xadd(store.k_feed, {"case": "20250101-000001", "action": "noted", "status": "classified"})
        return entries

    monkeypatch.setattr(owner, name, reading)
    return sizes


async def _run_for(store: Any, start: Callable[[], Awaitable[None]]) -> None:
    task = asyncio.create_task(start())
    await asyncio.sleep(0.05)  # the follower has taken the feed's end as its start
    await store.r.xadd(store.k_feed, {"case": "20250101-000001", "action": "noted", "status": "classified"})
    await asyncio.sleep(RUN_S)
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


def _check(sizes: list[int]) -> None:
    assert sum(sizes) >= 2, sizes  # the follower did read the entries
    assert len(sizes) <= MAX_READS, f"{len(sizes)} reads in {RUN_S} s"


async def test_duplicate_index_follower_reads_in_batches(store: Any, settings: Any, monkeypatch: Any) -> None:
    service = DedupService(store, DedupConfig.from_settings(settings), load_idf(settings))
    sizes = await _busy_feed(store, store, "feed", monkeypatch)
    stop = asyncio.Event()
    await _run_for(store, lambda: service.follow_feed(stop))
    _check(sizes)


async def test_live_console_follower_reads_in_batches(store: Any, monkeypatch: Any) -> None:
    hub = LiveHub(store)
    queue = hub.subscribe()
    sizes = await _busy_feed(store, store, "feed", monkeypatch)
    await _run_for(store, hub.run)
    _check(sizes)
    assert queue.qsize() == sum(sizes)


async def test_survey_follower_reads_in_batches(store: Any, settings: Any, monkeypatch: Any) -> None:
    cfg = CallbackSettings.from_settings(settings["callbacks"], settings["intake"]["timezone"])
    service = SurveyService(store, Notifications(store), cfg, b"test-secret")
    sizes = await _busy_feed(store, service.surveys, "read_feed", monkeypatch)
    await _run_for(store, lambda: _feed_worker({STORE: store}, service, "t1"))  # type: ignore[arg-type]
    _check(sizes)
