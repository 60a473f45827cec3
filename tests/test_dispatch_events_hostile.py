"""Hostile status events from the dispatch backend: times in milliseconds or out of any calendar, sequence
numbers beyond a float's precision or a 64-bit counter, stored bad values from before the checks, and
many events on one busy case at once. Each must get a clear answer and no event may be lost."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

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
from tests.dispatch_support import CLASSIFICATION, Open311Receiver, new_case, post_event
from tests.test_dispatch_app import dispatch_settings, dispatched, event

BEIJING = ZoneInfo("Asia/Shanghai")

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
        assert format_ts(value, BEIJING) == "—", value
    assert format_ts(0.0, BEIJING) == "" and format_ts(1795000000.0, BEIJING) == "2026-11-18 19:06"


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


async def test_a_lone_surrogate_in_an_event_gets_the_message_every_json_door_gives(
        app_client: TestClient, receiver: Open311Receiver) -> None:
    case = await dispatched(app_client, receiver)
    raw = json.dumps(event(case, "resolved", reply="已修复\udc00")).encode()  # ASCII escapes: valid JSON
    status, body = await post_event(app_client, raw)
    assert status == 400 and body["error"]["code"] == "bad_json", body
    assert "代理项" in body["error"]["message"], body
    assert (await app_client.app[STORE].get_case(case.id)).status == Status.DISPATCHED


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


async def test_an_event_for_a_case_left_between_confirm_and_dispatch_finishes_the_dispatch_first(
        app_client: TestClient, receiver: Open311Receiver) -> None:
    """A process stopped after writing CONFIRMED with its order (step 1 of 3) and the backend answers: the event
    is not decided on the CONFIRMED record (it would be a 409 a backend may drop) but after the dispatch is
    finished, and applied."""
    store = app_client.app[STORE]
    dispatcher: Dispatcher = app_client.app[DISPATCHER]
    case = await new_case(app_client)
    cls = {**CLASSIFICATION, "category_path": ["城乡建设"], "co_departments": [], "street": "", "urgency": "normal"}

    def step1(c: Case) -> dict[str, Any]:
        c.classification = cls
        return dispatcher._open_round(c, time.time(), redo=False, reason="")

    case = await store.update_case(case.id, step1, actor="staff:a", action="confirmed", target=Status.CONFIRMED)
    with pytest.raises(service._NotYetDispatched):  # the rule the loop waits on, on the stored record
        dispatcher._decide_and_apply(await store.get_case(case.id), parse_event(event(case, "accepted")))
    status, out = await post_event(app_client, event(case, "accepted", "evt-after-step1"))
    assert (status, out["result"], out["status"]) == (200, "applied", "dispatched")
    trail = await store.events(case.id)
    assert [e.actor for e in trail if e.action == "dispatched"] == ["dispatch:recover"]
    assert "evt-after-step1" in (await store.get_case(case.id)).dispatch["event_ids"]
