"""Merges that race other staff actions, merges of cases that hold reports, and the urgency of a merged case.

Two call-takers work the same queue: one confirms a case while the other merges it, two undo the same merge,
a case that already holds repeats is merged into a third. Whatever the order, a case is either a merged
report or a dispatched case (never both), every reporter stays on the case that is worked on, and a
refused action is a 409 with a reason, never a 500.
"""

from __future__ import annotations

import asyncio
from typing import Any

from hotline.appkeys import DEDUP, DISPATCHER, STORE
from hotline.dedup import DedupError, DedupService
from hotline.dispatch.service import DispatchError
from hotline.records import Case
from hotline.status import Status
from tests.console_support import staff_login
from tests.dispatch_support import CLASSIFICATION

# Different estates and problems, so that the intake's own duplicate check merges none of them.
TEXTS = [
    "翠湖苑小区5号楼电梯停运三天了，老人上下楼很困难，请尽快维修。",
    "东港路与滨海大道路口红绿灯坏了，早晚高峰车辆拥堵严重。",
    "幸福里小区门口垃圾桶满了一个星期没人清运，臭味很大。",
    "育才中学门口每天下午有流动摊贩占道经营，学生放学很危险。",
    "金沙湾花园地下车库积水半米深，车辆无法进出。",
    "南山村村口路灯全部不亮，晚上出行很不安全。",
    "和平广场每天晚上广场舞音响声音太大，影响附近居民休息。",
    "光明路菜市场周边污水横流，下水道堵塞很久了。",
]


async def file_case(client: Any, text: str, contact: str) -> Case:
    resp = await client.post("/api/v1/complaints", json={"text": text, "contact": contact})
    assert resp.status == 201, await resp.text()
    body = await resp.json()
    assert body["merged_into"] == "", body
    return await client.app[STORE].get_case(body["case_id"])


async def cases(client: Any, n: int, offset: int = 0) -> list[Case]:
    return [await file_case(client, f"{TEXTS[(offset + i) % len(TEXTS)]}（第{offset + i}次）",
                            f"1390000{offset + i:04d}") for i in range(n)]


async def test_a_confirmed_case_is_no_longer_merged(client: Any) -> None:
    report, master = await cases(client, 2)
    store = client.app[STORE]
    await store.update_case(report.id, lambda c: None, actor="staff:ct1", action="confirmed", target=Status.CONFIRMED)
    service: DedupService = client.app[DEDUP]
    try:
        await service.merge(await store.get_case(report.id), master.id, 0.9, "staff:ct2")
    except DedupError as exc:
        assert exc.status == 409 and exc.code == "not_mergeable" and "已立案" in exc.message
    else:
        raise AssertionError("a confirmed case was merged")
    after = await store.get_case(report.id)
    assert after.status == Status.CONFIRMED and after.duplicate_of == ""
    assert (await store.get_case(master.id)).reporter_count == 1


async def test_merge_racing_a_confirmation_ends_as_one_or_the_other(client: Any) -> None:
    store = client.app[STORE]
    dedup: DedupService = client.app[DEDUP]
    dispatcher = client.app[DISPATCHER]
    outcomes = set()
    for round_ in range(len(TEXTS) // 2):
        report, master = await cases(client, 2, offset=2 * round_)
        confirmed, merged = await asyncio.gather(
            dispatcher.confirm(report.id, CLASSIFICATION, "staff:ct1"),
            dedup.confirm_merge(report.id, master.id, "staff:ct2"), return_exceptions=True)
        for result in (confirmed, merged):
            assert isinstance(result, Case | DispatchError | DedupError), repr(result)
        after = await store.get_case(report.id)
        open_orders = await dispatcher.outbox.open_ids()
        if after.status == Status.MERGED:
            assert isinstance(confirmed, DispatchError) and confirmed.status == 409
            assert after.id not in open_orders and not after.dispatch.get("order_id")
            assert after.id in [r.report_id for r in (await store.get_case(master.id)).reports]
            outcomes.add("merged")
        else:
            assert after.status == Status.DISPATCHED and after.duplicate_of == ""
            assert isinstance(merged, DedupError) and merged.status == 409
            assert after.id in open_orders
            assert (await store.get_case(master.id)).reporter_count == 1
            outcomes.add("dispatched")
    assert outcomes  # each round ended in exactly one of the two


async def test_two_undos_at_once_one_wins_the_other_is_told(client: Any) -> None:
    report, master = await cases(client, 2)
    dedup: DedupService = client.app[DEDUP]
    store = client.app[STORE]
    for attempt in range(3):
        await dedup.confirm_merge(report.id, master.id, "staff:ct1")
        results = await asyncio.gather(dedup.unmerge(report.id, "staff:ct1"), dedup.unmerge(report.id, "staff:ct2"),
                                       return_exceptions=True)
        won = [r for r in results if isinstance(r, Case)]
        refused = [r for r in results if isinstance(r, DedupError)]
        assert len(won) == 1 and len(refused) == 1, results
        assert refused[0].code == "not_merged" and refused[0].status == 409
        after = await store.get_case(report.id)
        assert after.status == Status.CLASSIFIED and after.duplicate_of == ""
        holder = await store.get_case(master.id)
        assert holder.reporter_count == 1 and holder.priority == 0
        unmerged = [e for e in await store.events(master.id) if e.action == "unmerged"]
        assert len(unmerged) == attempt + 1  # one per undo that happened, none for the refused one


async def test_two_merges_of_one_report_at_once(client: Any) -> None:
    report, master = await cases(client, 2)
    dedup: DedupService = client.app[DEDUP]
    results = await asyncio.gather(dedup.confirm_merge(report.id, master.id, "staff:ct1"),
                                   dedup.confirm_merge(report.id, master.id, "staff:ct2"), return_exceptions=True)
    assert sum(isinstance(r, Case) for r in results) == 1, results
    refused = next(r for r in results if not isinstance(r, Case))
    assert isinstance(refused, DedupError) and refused.code == "already_merged" and master.id in refused.message
    holder = await client.app[STORE].get_case(master.id)
    assert [r.report_id for r in holder.reports] == [report.id]


async def merged_twice(client: Any) -> tuple[Case, Case, Case]:
    """``first`` merged into ``middle``, then ``middle`` (holding ``first``) into ``root``."""
    first, middle, root = await cases(client, 3)
    dedup: DedupService = client.app[DEDUP]
    await dedup.confirm_merge(first.id, middle.id, "staff:ct1")
    await dedup.confirm_merge(middle.id, root.id, "staff:ct1")
    return first, middle, root


async def test_a_case_merged_with_its_reports_brings_them_along(client: Any) -> None:
    first, middle, root = await merged_twice(client)
    dedup: DedupService = client.app[DEDUP]
    store = client.app[STORE]
    worked = await store.get_case(root.id)
    assert {r.report_id for r in worked.reports} == {first.id, middle.id}
    assert worked.reporter_count == 3 and worked.priority == 2
    assert (await store.get_case(middle.id)).reports == []
    assert (await store.get_case(first.id)).duplicate_of == root.id  # notices and surveys follow the root
    moved = [e for e in await store.events(first.id) if e.action == "report_moved"]
    assert moved and moved[0].data == {"from_case": middle.id, "into": root.id}
    # Undoing the first reporter takes it off the case that is worked on.
    back = await dedup.unmerge(first.id, "staff:ct2")
    assert back.status == Status.CLASSIFIED
    worked = await store.get_case(root.id)
    assert [r.report_id for r in worked.reports] == [middle.id] and worked.reporter_count == 2


async def test_undo_finds_a_report_still_pointing_at_a_case_merged_since(client: Any) -> None:
    """The pointers of a moved report are rewritten after the move; a stop in between must not strand it."""
    first, middle, root = await merged_twice(client)
    dedup: DedupService = client.app[DEDUP]
    store = client.app[STORE]

    def stale(c: Case) -> None:
        c.duplicate_of = middle.id

    await store.update_case(first.id, stale, actor="system", action="test_stale_pointer")
    await dedup.unmerge(first.id, "staff:ct2")
    assert first.id not in [r.report_id for r in (await store.get_case(root.id)).reports]


async def test_reject_needs_a_real_other_case_and_an_open_decision(client: Any) -> None:
    case, other, third = await cases(client, 3)
    dedup: DedupService = client.app[DEDUP]
    store = client.app[STORE]
    for candidate, code in ((case.id, "same_case"), ("20991231-000001", "not_found")):
        try:
            await dedup.reject(case.id, candidate, "staff:ct1")
        except DedupError as exc:
            assert exc.code == code
        else:
            raise AssertionError(f"rejecting {candidate} was accepted")
    await dedup.confirm_merge(third.id, other.id, "staff:ct1")
    try:
        await dedup.reject(third.id, case.id, "staff:ct1")
    except DedupError as exc:
        assert exc.code == "already_merged" and exc.status == 409
    else:
        raise AssertionError("a merged case took a rejection")
    assert not [e for e in await store.events(third.id) if e.action == "duplicate_rejected"]
    assert not [e for e in await store.events(case.id) if e.action == "duplicate_rejected"]
    await dedup.reject(case.id, other.id, "staff:ct1")  # a real decision still works


async def test_refusals_over_http_are_409_with_the_reason(client: Any) -> None:
    report, master, dispatched = await cases(client, 3)
    await client.app[DISPATCHER].confirm(dispatched.id, CLASSIFICATION, "staff:ct1")
    async with staff_login(client, "call_taker") as staff:
        merged = await staff.post_json(f"/api/v1/console/cases/{report.id}/merge", {"into": master.id})
        assert merged.status == 200
        page = await (await staff.page(f"/console/cases/{master.id}")).text()
        assert f"<td>{staff.name}（工作人员）</td>" in page  # the reports table says who merged, in words
        again = await staff.post_json(f"/api/v1/console/cases/{report.id}/merge", {"into": master.id})
        error = (await again.json())["error"]
        assert again.status == 409 and error["code"] == "already_merged" and master.id in error["message"]
        late = await staff.post_json(f"/api/v1/console/cases/{dispatched.id}/merge", {"into": master.id})
        error = (await late.json())["error"]
        assert late.status == 409 and "已派遣至承办单位" in error["message"]
        twice = [await staff.post_json(f"/api/v1/console/cases/{report.id}/unmerge", {}) for _ in range(2)]
        assert [r.status for r in twice] == [200, 409]


async def test_a_merged_repeat_does_not_make_a_case_urgent(client: Any) -> None:
    report, master, alone = await cases(client, 3)
    dedup: DedupService = client.app[DEDUP]
    dispatcher = client.app[DISPATCHER]
    await dedup.confirm_merge(report.id, master.id, "staff:ct1")
    with_repeat = await dispatcher.confirm(master.id, CLASSIFICATION, "staff:ct1")
    single = await dispatcher.confirm(alone.id, CLASSIFICATION, "staff:ct1")
    assert with_repeat.priority == 1
    assert with_repeat.classification["urgency"] == single.classification["urgency"] == "normal"
    assert with_repeat.dispatch["time_limit"] == single.dispatch["time_limit"] != "urgent"
