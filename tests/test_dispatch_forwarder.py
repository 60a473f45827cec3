"""The outbox forwarder against a real Open311 receiver on 127.0.0.1 (exactly-once in effect)."""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestClient

from hotline.app import create_app
from hotline.appkeys import DISPATCHER, STORE
from hotline.dispatch.backends import Open311Backend
from hotline.dispatch.forwarder import Forwarder, ForwarderConfig, backoff_delay
from hotline.dispatch.service import Dispatcher
from hotline.redis_server import EmbeddedRedis
from hotline.status import Status
from tests.conftest import make_settings
from tests.dispatch_support import CLASSIFICATION, Open311Receiver, new_case, wait_for


@pytest.fixture
async def app_client(aiohttp_client: Any, redis_server: EmbeddedRedis, tmp_path: Path, key_prefix: str) -> TestClient:
    """The app with the stream backend: orders wait in the outbox for the forwarders the tests run."""
    settings = make_settings(redis_server.url, tmp_path, key_prefix, dispatch={"backend": "stream"},
                             dedup={"enabled": False})
    return await aiohttp_client(create_app(settings))


FAST = ForwarderConfig(max_attempts=8, backoff_base_s=0.05, backoff_max_s=0.2, claim_idle_s=0.6, concurrency=8,
                       block_ms=50)


@contextlib.asynccontextmanager
async def running(dispatcher: Dispatcher, receiver: Open311Receiver, cfg: ForwarderConfig = FAST,
                  timeout_s: float = 0.5, consumer: str | None = None):  # type: ignore[no-untyped-def]
    async with aiohttp.ClientSession() as session:
        backend = Open311Backend(session, receiver.url, "key-123", dispatcher.tables, timeout_s)
        fwd = Forwarder(dispatcher.outbox, backend, cfg, consumer=consumer,
                        on_delivered=dispatcher.on_delivered, on_dead=dispatcher.on_dead)
        task = asyncio.create_task(fwd.run())
        try:
            yield fwd, task
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


async def confirm_cases(client: TestClient, n: int) -> list[str]:
    ids = []
    for _ in range(n):
        case = await new_case(client)
        await client.app[DISPATCHER].confirm(case.id, CLASSIFICATION, "staff:test")
        ids.append(case.id)
    return ids


async def test_fail_then_timeout_then_accept_exactly_one_order_per_case(app_client: TestClient) -> None:
    def plan(key: str, n: int) -> str:
        return {1: "fail", 2: "fail", 3: "stall"}.get(n, "accept")

    receiver = await Open311Receiver(plan=plan, stall_s=3.0).start()
    try:
        dispatcher = app_client.app[DISPATCHER]
        ids = await confirm_cases(app_client, 5)
        async with running(dispatcher, receiver) as (fwd, _task):
            await wait_for(lambda: len(receiver.orders) >= 5, timeout=20)
            await asyncio.sleep(0.5)  # give a wrongly repeated delivery the chance to show up
        assert receiver.orders_per_case() == Counter({i: 1 for i in ids})
        # Every case went through fail, fail, timeout, accept — with the same key each time.
        for case_id in ids:
            keys = {(a.key, a.header_key) for a in receiver.seen if a.case_id == case_id}
            assert keys == {(f"{case_id}-R1", f"{case_id}-R1")}
            assert receiver.attempts[f"{case_id}-R1"] == 4
        assert fwd.failed_attempts == 15 and fwd.delivered == 5
        store = app_client.app[STORE]
        refs = set()
        for case_id in ids:
            case = await store.get_case(case_id)
            assert case.status == Status.DISPATCHED
            assert case.dispatch["state"] == "delivered"
            refs.add(case.dispatch["ref"])
            state = await dispatcher.outbox.order_state(f"{case_id}-R1", case_id)
            assert state["status"] == "delivered" and state["attempts"] == "4"
        assert refs == {f"SR-{i}" for i in range(1, 6)}
        stats = await dispatcher.outbox.stats()
        assert stats["outbox"] == 0 and stats["pending"] == 0 and stats["retrying"] == 0 and stats["dead"] == 0
    finally:
        await receiver.close()


async def test_repeated_confirm_round_is_one_order(app_client: TestClient) -> None:
    dispatcher = app_client.app[DISPATCHER]
    case = await new_case(app_client)
    await dispatcher.confirm(case.id, CLASSIFICATION, "staff:a")
    again = await app_client.app[STORE].get_case(case.id)
    # The same order id enqueued again (as the crash recovery does) adds nothing.
    from hotline.dispatch.workorder import build_work_order

    _entry, created = await dispatcher.outbox.enqueue(again.dispatch["order_id"], case.id,
                                                     build_work_order(again, dispatcher.tz))
    assert not created
    assert (await dispatcher.outbox.stats())["outbox"] == 1


@pytest.mark.parametrize("backend_finishes_abandoned", [False, True])
async def test_forwarder_killed_mid_delivery_loses_and_duplicates_nothing(
        app_client: TestClient, backend_finishes_abandoned: bool) -> None:
    held_key: list[str] = []

    def plan(key: str, n: int) -> str:
        if not held_key:
            held_key.append(key)
            return "hold"
        return "accept"

    receiver = await Open311Receiver(plan=plan, cancel_on_disconnect=not backend_finishes_abandoned).start()
    try:
        dispatcher = app_client.app[DISPATCHER]
        ids = await confirm_cases(app_client, 4)
        slow = ForwarderConfig(**{**FAST.__dict__, "concurrency": 1, "claim_idle_s": 0.6})
        async with running(dispatcher, receiver, slow, timeout_s=30, consumer="crashing") as (_fwd, task):
            await asyncio.wait_for(receiver.held.wait(), 10)
            task.cancel()  # the process dies while the backend holds the request
            with contextlib.suppress(asyncio.CancelledError):
                await task
        pending = await app_client.app[STORE].r.xpending(dispatcher.outbox.k_stream, dispatcher.outbox.group)
        assert pending["pending"] >= 1  # the held order was not acknowledged
        receiver.release.set()
        async with running(dispatcher, receiver, FAST, consumer="survivor"):
            await wait_for(lambda: set(receiver.orders_per_case()) == set(ids), timeout=15)
            await wait_for(lambda: dispatcher.outbox.stats(), timeout=1)
            await asyncio.sleep(1.0)  # XAUTOCLAIM rounds that must not resend anything
            stats = await dispatcher.outbox.stats()
        assert stats["pending"] == 0 and stats["outbox"] == 0
        # Nothing lost: every case arrived; the receiver saw the held order's key again on the retry.
        assert set(receiver.orders_per_case()) == set(ids)
        held = held_key[0]
        assert [a.header_key for a in receiver.seen if a.key == held] == [held, held]
        per_key = Counter(a.key for a in receiver.orders)
        assert set(per_key) == {f"{i}-R1" for i in ids}
        if backend_finishes_abandoned:
            # The backend created the abandoned request too: both carry the same idempotency key, so a
            # backend keyed on it keeps one order; every other case arrived exactly once.
            assert per_key[held] == 2 and all(per_key[k] == 1 for k in per_key if k != held)
        else:
            assert all(c == 1 for c in per_key.values())
        case = await app_client.app[STORE].get_case(held.rsplit("-R", 1)[0])
        assert case.dispatch["state"] == "delivered" and case.dispatch["ref"]
    finally:
        await receiver.close()


async def test_dead_letter_after_max_attempts_and_redrive(app_client: TestClient) -> None:
    outage = {"on": True}

    def plan(key: str, n: int) -> str:
        return "fail" if outage["on"] else "accept"

    receiver = await Open311Receiver(plan=plan).start()
    try:
        dispatcher = app_client.app[DISPATCHER]
        ids = await confirm_cases(app_client, 2)
        cfg = ForwarderConfig(**{**FAST.__dict__, "max_attempts": 3})
        async with running(dispatcher, receiver, cfg):
            await wait_for(dispatcher.outbox.dead_count, timeout=10)
            await wait_for(lambda: _eq(dispatcher.outbox.dead_count(), 2), timeout=10)
            dead = await dispatcher.outbox.dead_letters()
            assert {d.case_id for d in dead} == set(ids)
            assert all(d.attempts == 3 and "503" in d.error for d in dead)
            assert receiver.orders == [] and sum(receiver.attempts.values()) == 6
            case = await app_client.app[STORE].get_case(ids[0])
            assert case.dispatch["state"] == "dead_letter"
            events = [e.action for e in await app_client.app[STORE].events(ids[0])]
            assert "order_failed" in events
            stats = await dispatcher.outbox.stats()
            assert stats["pending"] == 0 and stats["dead"] == 2
            # The backend is back; a supervisor redrives one, then the rest.
            outage["on"] = False
            letter, _entry = await dispatcher.redrive(dead[0].dead_id, "staff:sup")
            await wait_for(lambda: len(receiver.orders) == 1, timeout=10)
            assert receiver.orders[0].key == letter.key
            done = await dispatcher.redrive_all("staff:sup")
            assert len(done) == 1
            await wait_for(lambda: len(receiver.orders) == 2, timeout=10)
        assert receiver.orders_per_case() == Counter({i: 1 for i in ids})
        assert await dispatcher.outbox.dead_count() == 0
        state = await dispatcher.outbox.order_state(f"{ids[0]}-R1", ids[0])
        assert state["status"] == "delivered" and state["attempts"] == "1"  # fresh count after the redrive
    finally:
        await receiver.close()


async def test_refused_order_goes_to_dead_letters_at_once(app_client: TestClient) -> None:
    receiver = await Open311Receiver(plan=lambda key, n: "reject").start()
    try:
        dispatcher = app_client.app[DISPATCHER]
        await confirm_cases(app_client, 1)
        async with running(dispatcher, receiver):
            await wait_for(dispatcher.outbox.dead_count, timeout=10)
        dead = await dispatcher.outbox.dead_letters()
        assert dead[0].attempts == 1 and dead[0].error.startswith("refused: HTTP 400")
    finally:
        await receiver.close()


async def test_two_forwarders_share_the_outbox_without_duplicates(app_client: TestClient) -> None:
    receiver = await Open311Receiver(plan=lambda key, n: "fail" if n == 1 else "accept").start()
    try:
        dispatcher = app_client.app[DISPATCHER]
        ids = await confirm_cases(app_client, 20)
        async with running(dispatcher, receiver, consumer="a") as (fa, _), \
                running(dispatcher, receiver, consumer="b") as (fb, _):
            await wait_for(lambda: len(receiver.orders) >= 20, timeout=20)
            await asyncio.sleep(1.0)
        assert receiver.orders_per_case() == Counter({i: 1 for i in ids})
        assert fa.delivered + fb.delivered == 20
    finally:
        await receiver.close()


def test_backoff_grows_exponentially_with_jitter_and_cap() -> None:
    import random

    rng = random.Random(7)
    for attempt in range(1, 12):
        step = min(60.0, 1.0 * 2 ** (attempt - 1))
        values = {backoff_delay(attempt, 1.0, 60.0, rng) for _ in range(50)}
        assert all(step / 2 <= v <= step for v in values)
        assert len(values) > 40  # jittered, not one fixed value


async def _eq(awaitable: Any, expected: Any) -> bool:
    return (await awaitable) == expected
