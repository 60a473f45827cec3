"""Hostile status events from the dispatch backend: times in milliseconds or out of any calendar, sequence
numbers beyond a float's precision or a 64-bit counter, stored bad values from before the checks, and
many events on one busy case at once. Each must get a clear answer and no event may be lost."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from hotline.app import create_app
from hotline.appkeys import DISPATCHER, STORE
from hotline.dispatch import service
from hotline.dispatch.events import parse_event
from hotline.dispatch.feature import build_dispatcher
from hotline.dispatch.service import Dispatcher, DispatchError
from hotline.notify import Notifications
from hotline.pages import format_ts
from hotline.records import Case
from hotline.redis_server import EmbeddedRedis
from hotline.status import Status
from hotline.store import Store
from tests.console_support import staff_login
from tests.dispatch_support import CLASSIFICATION, Open311Receiver, new_case, post_event, signed
from tests.test_dispatch_app import dispatch_settings, dispatched, event

BIG_SEQ = 1795562000123456789  # float(BIG_SEQ) == float(BIG_SEQ + 100)


@pytest.fixture
async def app_client(aiohttp_client: Any, redis_server: EmbeddedRedis, tmp_path: Path, key_prefix: str,
                     receiver: Open311Receiver) -> TestClient:
    return await aiohttp_client(create_app(dispatch_settings(redis_server, tmp_path, key_prefix, receiver.url)))


@pytest.fixture
async def other_process(redis_server: EmbeddedRedis, tmp_path: Path, key_prefix: str,
                        receiver: Open311Receiver) -> AsyncIterator[Dispatcher]:
    """A second serving process: its own store connection (and its own per-case locks) on the same data."""
    store = Store.from_url(redis_server.url, prefix=key_prefix)
    settings = dispatch_settings(redis_server, tmp_path, key_prefix, receiver.url)
    yield build_dispatcher(settings, store, Notifications(store))
    await store.close()


async def _write_dispatch(client: TestClient, case_id: str, **fields: Any) -> None:
    """Store values as code before the checks wrote them (old data)."""
    def mutate(c: Case) -> dict[str, Any]:
        c.dispatch = {**c.dispatch, **fields}
        return {}

    await client.app[STORE].update_case(case_id, mutate, actor="system", action="note")


# occurred_at ---------------------------------------------------------------------------------------

async def test_occurred_at_outside_the_window_is_refused_and_changes_nothing(app_client: TestClient,
                                                                             receiver: Open311Receiver) -> None:
    case = await dispatched(app_client, receiver)
    now = time.time()
    for bad in (1795562000123, -1e18, 1e18, 946684799, now + 2 * 86400, "2026-01-01"):
        status, body = await post_event(app_client, event(case, "accepted", occurred_at=bad))
        assert status == 422 and body["error"]["code"] == "bad_field", (bad, body)
        assert "occurred_at" in body["error"]["message"]
    stored = await app_client.app[STORE].get_case(case.id)
    assert stored.status == Status.DISPATCHED and not stored.dispatch.get("accepted_at")
    # A time in seconds within the window is kept as given; null means "unknown".
    status, body = await post_event(app_client, event(case, "accepted", occurred_at=now - 60))
    assert (status, body["result"]) == (200, "applied")
    assert (await app_client.app[STORE].get_case(case.id)).dispatch["accepted_at"] == pytest.approx(now - 60)
    status, body = await post_event(app_client, event(case, "in_progress", occurred_at=None))
    assert (status, body["status"]) == (200, "in_progress")


def test_format_ts_never_raises() -> None:
    for value in (1795562000123.0, -1e18, 1e18, 1e308, -1e308, float("nan"), float("inf"), float("-inf"),
                  2.0**70, 253402300800.0):
        assert format_ts(value) == "—", value
    assert format_ts(0.0) == "" and format_ts(1795000000.0) == "2026-11-18 19:06"


async def test_stored_out_of_range_times_do_not_break_the_console(app_client: TestClient,
                                                                  receiver: Open311Receiver) -> None:
    case = await dispatched(app_client, receiver)
    await _write_dispatch(app_client, case.id, accepted_at=1795562000123, dispatched_at=-1e18)
    async with staff_login(app_client, "call_taker") as staff:
        resp = await staff.get(f"/api/v1/console/cases/{case.id}")
        assert resp.status == 200, await resp.text()
        body = await resp.json()
        rows = dict(body.get("case", body)["dispatch_rows"])
        assert rows["接单时间"] == "—" and rows["派遣时间"] == "—"
        page = await staff.page(f"/console/cases/{case.id}")
        assert page.status == 200 and "接单时间" in await page.text()
        found = await staff.get("/api/v1/console/search", params={"q": case.id})
        assert found.status == 200
        found = await staff.page(f"/console/search?q={case.id}")
        assert found.status == 200


# seq -----------------------------------------------------------------------------------------------

async def test_large_sequence_numbers_compare_exactly(app_client: TestClient, receiver: Open311Receiver) -> None:
    case = await dispatched(app_client, receiver)
    status, body = await post_event(app_client, event(case, "accepted", seq=BIG_SEQ))
    assert (status, body["result"]) == (200, "applied")
    # Equal to the last one as floats, but a newer event: applied, not lost.
    status, body = await post_event(app_client, event(case, "in_progress", seq=BIG_SEQ + 100))
    assert (status, body["result"], body["status"]) == (200, "applied", "in_progress")
    stored = await app_client.app[STORE].get_case(case.id)
    assert stored.dispatch["last_seq"] == BIG_SEQ + 100
    status, body = await post_event(app_client, event(case, "in_progress", seq=BIG_SEQ + 99))
    assert (status, body["result"]) == (200, "ignored")
    status, body = await post_event(app_client, event(case, "resolved", seq=2**63 - 1, reply="已修复"))
    assert (status, body["result"], body["status"]) == (200, "applied", "resolved")


async def test_sequence_numbers_that_are_no_64_bit_integer_are_refused(app_client: TestClient,
                                                                      receiver: Open311Receiver) -> None:
    case = await dispatched(app_client, receiver)
    for bad in (1e308, 3.0, 2**63, -1, True, "5", 10**400):
        status, body = await post_event(app_client, event(case, "accepted", seq=bad))
        assert status == 422 and body["error"]["code"] == "bad_field", (bad, body)
        assert "seq" in body["error"]["message"]
    # Nothing was stored that would make later events look old.
    status, body = await post_event(app_client, event(case, "accepted", seq=1))
    assert (status, body["result"]) == (200, "applied")
    with pytest.raises(DispatchError):
        parse_event({"event_id": "e", "case_id": "20260314-000001", "type": "accepted", "seq": 1e308})


async def test_an_impossible_stored_last_seq_does_not_block_the_case(app_client: TestClient,
                                                                     receiver: Open311Receiver) -> None:
    case = await dispatched(app_client, receiver)
    await _write_dispatch(app_client, case.id, last_seq=int(1e308))  # what seq=1e308 left behind
    status, body = await post_event(app_client, event(case, "accepted", seq=7))
    assert (status, body["result"]) == (200, "applied")
    assert (await app_client.app[STORE].get_case(case.id)).dispatch["last_seq"] == 7


# contention ----------------------------------------------------------------------------------------

async def test_parallel_events_on_one_case_are_all_applied(app_client: TestClient, receiver: Open311Receiver,
                                                           other_process: Dispatcher) -> None:
    for _round in range(2):
        case = await dispatched(app_client, receiver)
        ids = [f"evt-ext-{case.id}-{i}" for i in range(30)]

        async def http(event_id: str, c: Case = case) -> tuple[int, Any]:
            return await post_event(app_client, event(c, "extension_requested", event_id, extension_hours=24,
                                                      reason="需协调产权单位"))

        async def elsewhere(event_id: str, c: Case = case) -> tuple[int, Any]:
            ev = parse_event(event(c, "extension_requested", event_id, extension_hours=24, reason="需协调"))
            return 200, (await other_process.handle_event(ev)).to_dict()

        answers = await asyncio.gather(*(http(e) for e in ids[:20]), *(elsewhere(e) for e in ids[20:]))
        assert [(s, b["result"]) for s, b in answers] == [(200, "applied")] * 30, answers
        stored = await app_client.app[STORE].get_case(case.id)
        assert sorted(stored.dispatch["event_ids"]) == sorted(ids)
        trail = [e for e in await app_client.app[STORE].events(case.id) if e.action == "extension_requested"]
        assert sorted(e.data["event_id"] for e in trail) == sorted(ids)
        # A repeat of any of them is still a duplicate.
        status, body = await http(ids[3])
        assert (status, body["result"]) == (200, "duplicate")


async def test_a_case_stuck_before_dispatch_answers_503_retry_after_and_the_retry_applies(
        app_client: TestClient, receiver: Open311Receiver, monkeypatch: pytest.MonkeyPatch) -> None:
    """Another process confirmed the case and has not finished step 3 yet (it stands still here): the event
    is not a contradiction (409 would let the backend drop it) but a retry."""
    async def stands_still(self: Dispatcher, case_id: str, order_id: str, actor: str) -> Case:
        return await self.store.get_case(case_id)

    monkeypatch.setattr(service, "EVENT_BUSY_WAIT_S", 0.3)
    monkeypatch.setattr(Dispatcher, "_mark_dispatched", stands_still)
    case = await app_client.app[DISPATCHER].confirm((await new_case(app_client)).id, CLASSIFICATION, "staff:zhang")
    assert case.status == Status.CONFIRMED
    body = event(case, "accepted", "evt-stuck-1")
    raw, headers = signed(body)
    resp = await app_client.post("/api/v1/dispatch/events", data=raw, headers=headers)
    out = await resp.json()
    assert resp.status == 503 and out["error"]["code"] == "busy" and resp.headers["Retry-After"] == "2", out
    assert "重试" in out["error"]["message"]
    assert "evt-stuck-1" not in (await app_client.app[STORE].get_case(case.id)).dispatch.get("event_ids", [])
    monkeypatch.undo()
    status, again = await post_event(app_client, body)
    assert (status, again["result"], again["status"]) == (200, "applied", "dispatched")
