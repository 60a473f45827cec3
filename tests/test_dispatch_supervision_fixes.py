"""Supervision (督办) of dispatched orders: nothing drops out of the deadline index, the overdue sweep reaches
every overdue order, the 督办 page counts all of them, returned orders are not "overdue", pages and Open311
show the site's time zone and what the citizen may see, and utility outages get the utilities time limit."""

from __future__ import annotations

import re
import time
from datetime import datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from aiohttp.test_utils import TestClient

from hotline.app import create_app
from hotline.appkeys import DISPATCHER, STORE
from hotline.console import supervision
from hotline.dispatch.deadlines import limit_for
from hotline.dispatch.service import Dispatcher
from hotline.dispatch.tables import load_tables
from hotline.records import Case
from hotline.redis_server import EmbeddedRedis
from hotline.settings import PROJECT_ROOT
from hotline.status import Status
from tests.conftest import make_settings
from tests.console_support import staff_login
from tests.dispatch_support import CLASSIFICATION, SECRET, new_case, post_event

URUMQI = "Asia/Urumqi"  # UTC+6 all year: two hours behind Beijing


def stream_settings(redis_server: EmbeddedRedis, tmp_path: Path, prefix: str, **intake: Any) -> Any:
    return make_settings(redis_server.url, tmp_path, prefix, dedup={"enabled": False}, intake=intake,
                         dispatch={"backend": "stream", "secret": SECRET, "sweep_interval_s": 3600.0})


@pytest.fixture
async def client(aiohttp_client: Any, redis_server: EmbeddedRedis, tmp_path: Path, key_prefix: str) -> TestClient:
    return await aiohttp_client(create_app(stream_settings(redis_server, tmp_path, key_prefix)))


async def dispatch(client: TestClient, text: str = "", contact: str = "", **cls: Any) -> Case:
    case = await new_case(client, text, contact=contact)
    return await client.app[DISPATCHER].confirm(case.id, {**CLASSIFICATION, **cls}, "staff:zhang")


async def move_deadline(client: TestClient, case: Case, deadline: float) -> Case:
    """The deadline of the current round moved (as time passing would): in the record and in the index."""
    def change(c: Case) -> dict[str, Any]:
        c.deadline_at = deadline
        return {}

    case = await client.app[STORE].update_case(case.id, change, actor="test", action="test_deadline")
    await client.app[DISPATCHER].outbox.set_open(case.id, deadline)
    return case


def event(case: Case, etype: str, **fields: Any) -> dict[str, Any]:
    return {"event_id": f"evt-{etype}-{time.time_ns()}", "case_id": case.id, "type": etype,
            "order_id": case.dispatch["order_id"], **fields}


# 1. an order stays under supervision -----------------------------------------------------------------------

async def test_an_early_event_after_a_lost_index_write_keeps_the_order_supervised(client: TestClient) -> None:
    """Redis fails once between writing the order to the outbox and adding it to the deadline index; the backend
    has read the order and answers ``accepted`` before the recover sweep: the event finishes the round, index
    included, and the citizen is told once."""
    dispatcher: Dispatcher = client.app[DISPATCHER]
    store = client.app[STORE]
    case = await new_case(client)
    real_set_open = dispatcher.outbox.set_open
    calls = 0

    async def set_open_failing_once(case_id: str, deadline_at: float) -> None:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise ConnectionError("redis connection lost")  # a failover or timeout right after the XADD
        await real_set_open(case_id, deadline_at)

    dispatcher.outbox.set_open = set_open_failing_once  # type: ignore[method-assign]
    with pytest.raises(ConnectionError):
        await dispatcher.confirm(case.id, CLASSIFICATION, "staff:a")
    stuck = await store.get_case(case.id)
    assert stuck.status == Status.CONFIRMED and stuck.dispatch["order_id"]
    status, body = await post_event(client, event(stuck, "accepted"))
    assert (status, body["result"], body["status"]) == (200, "applied", "dispatched")

    case = await store.get_case(case.id)
    assert case.status == Status.DISPATCHED
    assert case.id in await dispatcher.outbox.open_ids()
    assert case.id in await dispatcher.outbox.overdue_ids(case.deadline_at + 1)
    assert [e.action for e in await store.events(case.id)].count("dispatched") == 1
    told = [e for e in await store.events(case.id) if e.action == "notified"]
    assert [e.data["kind"] for e in told] == ["dispatched"]


async def test_the_sweep_puts_a_dispatched_order_missing_from_the_index_back(client: TestClient) -> None:
    """However a dispatched case lost its index entry (an older version, a restore), the sweep puts it back."""
    dispatcher: Dispatcher = client.app[DISPATCHER]
    kept = await dispatch(client)
    lost = await dispatch(client)
    working = await dispatch(client)
    assert (await post_event(client, event(working, "in_progress")))[0] == 200
    for case in (lost, working):
        await dispatcher.outbox.clear_open(case.id)
    assert await dispatcher.recover(older_than_s=0) == 2
    open_ids = await dispatcher.outbox.open_ids()
    assert {kept.id, lost.id, working.id} <= set(open_ids)
    assert await dispatcher.recover(older_than_s=0) == 0
    # With the deadline the record holds.
    score = await client.app[STORE].r.zscore(dispatcher.outbox.k_open, lost.id)
    assert score == pytest.approx(lost.deadline_at)


# 2. the overdue sweep reaches every overdue order -------------------------------------------------------------

async def test_the_overdue_sweep_pages_past_its_page_size(client: TestClient) -> None:
    dispatcher: Dispatcher = client.app[DISPATCHER]
    store = client.app[STORE]
    past = time.time() - 3600
    cases = [await dispatch(client) for _ in range(7)]
    for i, case in enumerate(cases):
        await move_deadline(client, case, past + i)
    on_time = await dispatch(client)
    # Pages of 3: the 7 overdue orders take three pages in one sweep.
    assert await dispatcher.flag_overdue(page=3) == 7
    for case in cases:
        assert [e.action for e in await store.events(case.id)].count("overdue") == 1, case.id
    assert "overdue" not in [e.action for e in await store.events(on_time.id)]
    assert await dispatcher.flag_overdue(page=3) == 0
    # The next sweeps read nothing of them: the worklist holds only orders not yet due.
    assert await dispatcher.outbox.unflagged_due(time.time(), 100) == []
    assert len(await dispatcher.overdue(limit=100)) == 7  # still overdue, still listed
    # More become overdue later: only those are read and flagged.
    late = await move_deadline(client, on_time, time.time() - 1)
    assert await dispatcher.flag_overdue(page=3) == 1
    assert [e.action for e in await store.events(late.id)].count("overdue") == 1


async def test_the_sweep_stops_at_max_pages_and_the_next_goes_on(client: TestClient) -> None:
    dispatcher: Dispatcher = client.app[DISPATCHER]
    past = time.time() - 3600
    for i in range(5):
        await move_deadline(client, await dispatch(client), past + i)
    assert await dispatcher.flag_overdue(page=2, max_pages=1) == 2
    assert await dispatcher.flag_overdue(page=2, max_pages=1) == 2
    assert await dispatcher.flag_overdue(page=2, max_pages=1) == 1
    assert await dispatcher.flag_overdue(page=2, max_pages=1) == 0


async def test_orders_opened_before_the_worklist_existed_are_flagged_too(client: TestClient) -> None:
    dispatcher: Dispatcher = client.app[DISPATCHER]
    r = client.app[STORE].r
    outbox = dispatcher.outbox
    past = time.time() - 3600
    cases = [await move_deadline(client, await dispatch(client), past + i) for i in range(3)]
    assert await dispatcher.flag_overdue() == 3
    fresh = await move_deadline(client, await dispatch(client), past + 10)
    # As a store written by the version before the worklist: the open index only.
    await r.delete(outbox.k_unflagged, f"{outbox.p}:dispatch:unflagged_ready")
    dispatcher._unflagged_filled = False
    assert await dispatcher.flag_overdue() == 1  # the flagged ones are not flagged again
    assert [e.action for e in await client.app[STORE].events(fresh.id)].count("overdue") == 1
    for c in cases:
        assert [e.action for e in await client.app[STORE].events(c.id)].count("overdue") == 1
    assert await outbox.fill_unflagged() is False  # once per store


async def test_a_new_round_is_flagged_again_and_a_stale_entry_waits_for_its_deadline(client: TestClient) -> None:
    dispatcher: Dispatcher = client.app[DISPATCHER]
    store = client.app[STORE]
    case = await move_deadline(client, await dispatch(client), time.time() - 60)
    assert await dispatcher.flag_overdue() == 1
    # The index says overdue, the record holds a later deadline (a new round written after it): not flagged,
    # and the entry waits under the record's deadline.
    later = time.time() + 3600

    def extend(c: Case) -> dict[str, Any]:
        c.deadline_at = later
        c.dispatch = {**c.dispatch, "overdue_flagged": False}
        return {}

    await store.update_case(case.id, extend, actor="test", action="test_deadline")
    await store.r.zadd(dispatcher.outbox.k_unflagged, {case.id: time.time() - 30})
    assert await dispatcher.flag_overdue() == 0
    assert await store.r.zscore(dispatcher.outbox.k_unflagged, case.id) == pytest.approx(later)
    await move_deadline(client, case, time.time() - 1)
    assert await dispatcher.flag_overdue() == 1
    assert [e.action for e in await store.events(case.id)].count("overdue") == 2


# 3. the 督办 page counts every order --------------------------------------------------------------------------

async def test_supervision_summary_counts_all_orders_not_the_rows_shown(client: TestClient,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(supervision, "ROWS", 2)
    now = time.time()
    for i in range(3):
        await move_deadline(client, await dispatch(client), now - 3600 + i)
    for i in range(4):
        await move_deadline(client, await dispatch(client), now + 1800 + i)
    for _ in range(3):
        case = await dispatch(client)
        assert (await post_event(client, event(case, "returned", reason="不属于本单位职责")))[0] == 200
    async with staff_login(client, "supervisor") as sup:
        html = await (await sup.page("/console/supervision")).text()

    def count(name: str) -> str:
        found = re.search(rf'id="{name}-count">(\d+)<', html)
        assert found, name
        return found.group(1)

    def rows(table_id: str) -> int:
        body = html.split(f'id="{table_id}"', 1)[1].split("</table>", 1)[0]
        return len(re.findall(r"<tr data-case-id=", body))

    assert (count("overdue"), count("due"), count("returned")) == ("3", "4", "3")
    assert (rows("overdue"), rows("due-soon"), rows("returned")) == (2, 2, 2)
    assert "共 3 件，此处列出前 2 件" in html.split('id="overdue-more"', 1)[1]
    assert "共 4 件" in html.split('id="due-soon-more"', 1)[1]


# 4. a returned order is not overdue ---------------------------------------------------------------------------

async def test_a_returned_order_is_not_reported_overdue(client: TestClient) -> None:
    case = await move_deadline(client, await dispatch(client), time.time() - 600)
    async with staff_login(client, "supervisor") as sup:
        listed = (await (await sup.get("/api/v1/cases?status=dispatched")).json())["cases"]
        assert [c["overdue"] for c in listed if c["id"] == case.id] == [True]
        assert (await post_event(client, event(case, "returned", reason="不属于本单位职责")))[0] == 200
        for query in ("status=returned", "limit=200"):
            listed = (await (await sup.get(f"/api/v1/cases?{query}")).json())["cases"]
            assert [(c["status"], c["overdue"]) for c in listed if c["id"] == case.id] == [("returned", False)]
        assert case.id not in [c["id"] for c in (await (await sup.get("/api/v1/cases?overdue=1")).json())["cases"]]


# 5. pages show the site's time zone ---------------------------------------------------------------------------

async def test_pages_show_times_in_the_configured_zone(aiohttp_client: Any, redis_server: EmbeddedRedis,
                                                       tmp_path: Path, key_prefix: str) -> None:
    client = await aiohttp_client(create_app(stream_settings(redis_server, tmp_path, key_prefix,
                                                             timezone=URUMQI)))
    case = await dispatch(client, contact="13700137000")
    local = datetime.fromtimestamp(case.deadline_at, ZoneInfo(URUMQI)).strftime("%Y-%m-%d %H:%M")
    beijing = datetime.fromtimestamp(case.deadline_at, ZoneInfo("Asia/Shanghai")).strftime("%Y-%m-%d %H:%M")
    assert local != beijing
    status_page = await (await client.post("/status", data={"case_id": case.id, "last4": "7000"})).text()
    assert re.search(r'id="case-deadline">([^<]*)<', status_page).group(1) == f"办理时限：{local} 前反馈"
    async with staff_login(client, "supervisor") as sup:
        page = await (await sup.page(f"/console/cases/{case.id}")).text()
        assert re.search(r'id="case-deadline">([^<]*)<', page).group(1) == local
        # The audit trail's details and the dispatch record, written in Python, too.
        assert f"办理期限：{local}" in page and beijing not in page
        body = await (await sup.get(f"/api/v1/console/cases/{case.id}")).json()
        dispatched_at = datetime.fromtimestamp(case.dispatch["dispatched_at"], ZoneInfo(URUMQI))
        assert dict(body.get("case", body)["dispatch_rows"])["派遣时间"] == dispatched_at.strftime("%Y-%m-%d %H:%M")
        overdue_at = time.time() - 3600
        await move_deadline(client, case, overdue_at)
        sup_page = await (await sup.page("/console/supervision")).text()
        assert datetime.fromtimestamp(overdue_at, ZoneInfo(URUMQI)).strftime("%Y-%m-%d %H:%M") in sup_page


# 6. Open311 tells what the status page tells ------------------------------------------------------------------

async def test_open311_hides_the_unit_and_deadline_of_a_returned_order(client: TestClient) -> None:
    case = await dispatch(client, contact="13812345678")
    view = (await (await client.get(f"/open311/v2/requests/{case.id}.json")).json())[0]
    assert view["agency_responsible"] == "城乡建设局" and view["expected_datetime"]
    assert (await post_event(client, event(case, "returned", reason="不属于本单位职责")))[0] == 200
    for query in ("", "?last4=5678"):
        view = (await (await client.get(f"/open311/v2/requests/{case.id}.json{query}")).json())[0]
        assert view["status"] == "open"
        assert view["agency_responsible"] == "" and view["expected_datetime"] is None
    status_page = await (await client.post("/status", data={"case_id": case.id, "last4": "5678"})).text()
    assert 'id="case-unit"' not in status_page and 'id="case-deadline"' not in status_page
    # Staff see that the old round's limit no longer runs.
    async with staff_login(client, "call_taker") as staff:
        page = await (await staff.page(f"/console/cases/{case.id}")).text()
    shown = re.search(r'id="case-deadline">([^<]*)<', page).group(1)
    assert shown.startswith("（已退单，") and "重新派遣后重新计算" in shown and "上一轮期限" in shown, shown


# 7. utility outages: 3 h, unless a call-taker marks them urgent ----------------------------------------------

WATER = "我家小区从今天早上开始停水，到现在还没有来水，请尽快处理"
GAS_LEAK = "楼道里燃气泄漏，味道很大，邻居家没人开门"
MANHOLE = "小区门口井盖丢失，晚上很危险"
WATER_PATH = ["城乡建设", "城市建设和市政管理", "自来水供应"]


def hours(case: Case) -> float:
    return round((case.deadline_at - case.dispatch["confirmed_at"]) / 3600, 3)


async def test_a_water_outage_from_intake_gets_the_utilities_limit(client: TestClient) -> None:
    dispatcher: Dispatcher = client.app[DISPATCHER]
    water = await new_case(client, WATER, contact="13800138001")
    assert water.suggestion["urgency"]["level"] == "urgent"
    assert [r.partition(":")[0] for r in water.suggestion["urgency"]["reasons"]] == ["water_outage"]
    case = await dispatcher.confirm(water.id, {**CLASSIFICATION, "category_path": WATER_PATH,
                                               "department": "自来水公司", "type": "求助"}, "staff:a")
    assert (case.dispatch["time_limit"], hours(case), case.classification["urgency"]) == ("utilities", 3.0, "urgent")
    assert case.classification["urgency_by"] == "rules"
    # Filed under another category, the outage still takes the utilities limit, not 15 days.
    other = await new_case(client, "幸福小区6栋停电了，一整晚都没有电", contact="13800138002")
    case = await dispatcher.confirm(other.id, CLASSIFICATION, "staff:a")
    assert (case.dispatch["time_limit"], hours(case)) == ("utilities", 3.0)


async def test_a_call_taker_urgent_or_an_emergency_gets_two_hours(client: TestClient) -> None:
    dispatcher: Dispatcher = client.app[DISPATCHER]
    water = await new_case(client, WATER, contact="13800138003")
    case = await dispatcher.confirm(water.id, {**CLASSIFICATION, "category_path": WATER_PATH, "urgency": "urgent"},
                                    "staff:a")
    assert (case.dispatch["time_limit"], hours(case), case.classification["urgency_by"]) == ("urgent", 2.0,
                                                                                                "call_taker")
    gas = await new_case(client, GAS_LEAK, contact="13800138004")
    assert gas.suggestion["urgency"]["level"] == "emergency" and gas.emergency
    case = await dispatcher.confirm(gas.id, CLASSIFICATION, "staff:a")
    assert (case.dispatch["time_limit"], hours(case)) == ("urgent", 2.0)
    hazard = await new_case(client, MANHOLE, contact="13800138005")
    case = await dispatcher.confirm(hazard.id, CLASSIFICATION, "staff:a")
    assert (case.dispatch["time_limit"], hours(case)) == ("urgent", 2.0)  # a safety hazard, not an outage
    both = await new_case(client, "停水了，而且小区门口井盖丢失", contact="13800138006")
    case = await dispatcher.confirm(both.id, CLASSIFICATION, "staff:a")
    assert (case.dispatch["time_limit"], hours(case)) == ("urgent", 2.0)


async def test_after_a_return_the_rules_urgency_keeps_the_utilities_limit(client: TestClient) -> None:
    dispatcher: Dispatcher = client.app[DISPATCHER]
    water = await new_case(client, WATER, contact="13800138007")
    case = await dispatcher.confirm(water.id, {**CLASSIFICATION, "category_path": WATER_PATH}, "staff:a")
    assert (await post_event(client, event(case, "returned", reason="不属于本单位职责")))[0] == 200
    async with staff_login(client, "call_taker") as staff:
        frag = await (await staff.get(f"/console/queue/case/{case.id}")).text()
        assert 'data-urgency="urgent"' in frag
        # The console sends the pre-selected level the call-taker left as it was.
        resp = await staff.post_json(f"/api/v1/console/cases/{case.id}/confirm",
                                     {"category": "城乡建设", "department": "城乡建设局", "urgency": "urgent",
                                      "urgency_preselected": True})
        assert resp.status == 200, await resp.text()
        assert (await resp.json())["accepted"]["urgency"] is True
    again = await client.app[STORE].get_case(case.id)
    assert again.dispatch["round"] == 2 and (again.dispatch["time_limit"], hours(again)) == ("utilities", 3.0)


async def test_the_console_pre_selection_is_the_rules_and_a_pick_is_the_call_taker(client: TestClient) -> None:
    first = await new_case(client, WATER, contact="13800138008")
    second = await new_case(client, "幸福小区6栋停水了，一整天都没有水", contact="13800138009")
    async with staff_login(client, "call_taker") as staff:
        for case, preselected in ((first, True), (second, False)):
            resp = await staff.post_json(f"/api/v1/console/cases/{case.id}/confirm",
                                         {"category": "城乡建设", "department": "城乡建设局", "urgency": "urgent",
                                          "urgency_preselected": preselected})
            assert resp.status == 200, await resp.text()
    store = client.app[STORE]
    assert (await store.get_case(first.id)).dispatch["time_limit"] == "utilities"
    assert (await store.get_case(second.id)).dispatch["time_limit"] == "urgent"


def test_limit_class_by_rule_group() -> None:
    tables = load_tables(PROJECT_ROOT / "config" / "dispatch.toml")

    def case(level: str, *reasons: str, **extra: Any) -> Case:
        return Case(id="20261125-000001", channel="api", sender="s", status=Status.CLASSIFIED, created_at=1.0,
                    updated_at=1.0, text="t", normalized_text="t",
                    suggestion={"urgency": {"level": level, "reasons": list(reasons)}}, **extra)

    plain = ["教育文体"]
    assert limit_for(tables, case("urgent", "heating:停暖"), {}, plain).name == "utilities"
    assert limit_for(tables, case("urgent", "gas_supply:停气", "power_outage:停电"), {}, plain).name == "utilities"
    assert limit_for(tables, case("urgent", "hazard:塌陷"), {}, plain).name == "urgent"
    assert limit_for(tables, case("urgent"), {}, plain).name == "urgent"  # no reasons kept: urgent
    assert limit_for(tables, case("urgent", "heating:停暖"), {"urgency": "urgent"}, plain).name == "urgent"
    kept = {"urgency": "urgent", "urgency_by": "rules"}
    assert limit_for(tables, case("urgent", "heating:停暖", classification=kept), {}, plain).name == "utilities"
    # A record from before the source was kept: the stored urgency counts as the call-taker's.
    older = {"urgency": "urgent"}
    assert limit_for(tables, case("urgent", "heating:停暖", classification=older), {}, plain).name == "urgent"
    assert limit_for(tables, case("emergency", "gas_leak:燃气泄漏", emergency=True), {}, plain).name == "urgent"
