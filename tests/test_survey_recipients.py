"""回访 once per citizen per case: a citizen who reported the same problem again (催办, auto-merged into their
own case: same phone, same chat account) is asked once and counted once in the 三率; another citizen merged
into the case is still asked and counted on their own."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from hotline.app import create_app
from hotline.appkeys import DEDUP, INTAKE, NOTIFICATIONS, STORE, SURVEYS
from hotline.notify import Reply
from hotline.rates import Weights, citizen_keys, same_citizen, total
from hotline.rates_cases import RateSettings, rate_row
from hotline.records import Case, InboundMessage, Report
from hotline.redis_server import EmbeddedRedis
from hotline.status import Status
from hotline.store import Event
from hotline.store.surveys import ANSWERED, FOLLOWUP, MAIN, WITHDRAWN
from hotline.surveys import COVERED, KIND
from tests.console_support import staff_login
from tests.dispatch_support import Open311Receiver, RecordingNotifier
from tests.test_callbacks_e2e import callback_settings, dispatch_and_resolve

CITIZEN = "13912345678"
NEIGHBOUR = "13700002222"
PLACE = "幸福小区3号楼"
TEXTS = ("幸福小区3号楼下水道堵塞，污水漫到路上", "幸福小区3号楼下水道还是堵着，污水漫到路上了，快来修",
         "幸福小区三号楼门口污水冒出来了，没法走路")


@pytest.fixture
async def client(aiohttp_client: Any, redis_server: EmbeddedRedis, tmp_path: Path, key_prefix: str,
                 receiver: Open311Receiver) -> TestClient:
    # Surveys due at once, the tests drive run_due; with merging on.
    settings = callback_settings(redis_server, tmp_path, key_prefix, receiver.url, merging=True)
    return await aiohttp_client(create_app(settings))


async def case_with_reports(client: TestClient, main: InboundMessage,
                            *reports: InboundMessage) -> tuple[str, list[str]]:
    """A case and reports merged into it (by dedup on its own, else by a call-taker), in that order."""
    first = await client.app[INTAKE].submit(main)
    ids = []
    for msg in reports:
        result = await client.app[INTAKE].submit(msg)
        if result.case.status != Status.MERGED:
            await client.app[DEDUP].confirm_merge(result.case.id, first.case.id, "staff:ct1")
        ids.append(result.case.id)
    case = await client.app[STORE].get_case(first.case.id)
    assert [r.report_id for r in case.reports] == ids
    return first.case.id, ids


def web(phone: str, text: str) -> InboundMessage:
    return InboundMessage(channel="web", sender=phone, contact=phone, text=text, address=PLACE)


async def resolved_and_surveyed(client: TestClient, receiver: Open311Receiver, case_id: str) -> None:
    service = client.app[SURVEYS]
    await service.schedule(await dispatch_and_resolve(client, receiver, case_id, "已疏通。"))
    await service.run_due()


async def cards(agent: Any, case_id: str) -> set[str]:
    items = (await (await agent.get("/api/v1/callbacks")).json())["items"]
    return {i["rid"] for i in items if i["case_id"] == case_id}


def answer(resolved: bool, satisfaction: str) -> dict[str, Any]:
    return {"outcome": "answered", "resolved": resolved, "satisfaction": satisfaction}


async def dept_rates(boss: Any) -> dict[str, Any]:
    rates = await (await boss.get("/api/v1/metrics/rates?by=department")).json()
    return next(r for r in rates["items"] if r["key"] == "城乡建设局")


async def test_a_citizen_who_called_twice_gets_one_worklist_card(client: TestClient,
                                                                 receiver: Open311Receiver) -> None:
    store, service = client.app[STORE], client.app[SURVEYS]
    # The same citizen again (催办), the number typed with the country code this time; then a neighbour.
    case_id, (again, neighbour) = await case_with_reports(
        client, web(CITIZEN, TEXTS[0]), web("+86 139-1234-5678", TEXTS[1]), web(NEIGHBOUR, TEXTS[2]))
    await resolved_and_surveyed(client, receiver, case_id)
    survey = await service.surveys.get(case_id)
    assert survey is not None
    assert {rid: r.state for rid, r in survey.recipients.items()} == {
        MAIN: FOLLOWUP, again: COVERED, neighbour: FOLLOWUP}
    scheduled = [e for e in await store.events(case_id) if e.action == "survey_scheduled"]
    assert [(e.data["recipients"], e.data["reporters"]) for e in scheduled] == [(2, 3)]

    async with staff_login(client, "follow_up") as agent, staff_login(client, "supervisor") as boss:
        assert await cards(agent, case_id) == {MAIN, neighbour}
        # An agent cannot record the citizen's second evaluation under the repeat report either.
        dup = await agent.post_json(f"/api/v1/callbacks/{case_id}/{again}", answer(False, "unsatisfied"))
        assert dup.status == 409 and (await dup.json())["error"]["code"] == "same_citizen"
        assert (await agent.post_json(f"/api/v1/callbacks/{case_id}/{again}", {"outcome": "no_answer"})).status == 409
        for rid, body in ((neighbour, answer(True, "basic")), (MAIN, answer(True, "satisfied"))):
            resp = await agent.post_json(f"/api/v1/callbacks/{case_id}/{rid}", body)
            assert resp.status == 200, await resp.text()
        dept = await dept_rates(boss)
    assert (dept["cases"], dept["surveyed"], dept["resolved"], dept["satisfied"], dept["basic"]) == (1, 2, 2, 1, 1)
    case = await store.get_case(case_id)
    assert case.status == Status.CLOSED and again not in case.survey["reports"]


async def test_a_chat_citizen_who_wrote_twice_is_asked_once(client: TestClient, receiver: Open311Receiver) -> None:
    chat = RecordingNotifier()
    client.app[NOTIFICATIONS].register("telegram", chat)
    notifications, service = client.app[NOTIFICATIONS], client.app[SURVEYS]

    def tg(text: str) -> InboundMessage:
        return InboundMessage(channel="telegram", sender="tg:77001", contact="", text=text, address=PLACE)

    case_id, (again, neighbour) = await case_with_reports(client, tg(TEXTS[0]), tg(TEXTS[1]),
                                                          web(NEIGHBOUR, TEXTS[2]))
    await resolved_and_surveyed(client, receiver, case_id)
    asked = [n for n in chat.sent if n.kind == KIND and n.case_id == case_id]
    assert [(n.recipient, n.report_id) for n in asked] == [("tg:77001", "")]
    assert await notifications.reply(Reply(case_id, KIND, "q1:resolved", "telegram", "tg:77001")) == ""
    assert "感谢" in await notifications.reply(Reply(case_id, KIND, "q2:satisfied", "telegram", "tg:77001"))
    # The repeat report's own id gets no question either.
    refused = await notifications.reply(Reply(case_id, KIND, "q1:unresolved", "telegram", "tg:77001",
                                              report_id=again))
    assert "结束" in refused
    assert len([n for n in chat.sent if n.kind == KIND]) == 2  # Q1 and Q2 to the citizen, nothing more

    async with staff_login(client, "follow_up") as agent, staff_login(client, "supervisor") as boss:
        assert await cards(agent, case_id) == {neighbour}
        resp = await agent.post_json(f"/api/v1/callbacks/{case_id}/{neighbour}", answer(False, "unsatisfied"))
        assert resp.status == 200, await resp.text()
        dept = await dept_rates(boss)
    assert (dept["surveyed"], dept["resolved"], dept["satisfied"], dept["unsatisfied"]) == (2, 1, 1, 1)
    survey = await service.surveys.get(case_id)
    assert survey is not None
    assert {rid: r.state for rid, r in survey.recipients.items()} == {
        MAIN: ANSWERED, again: COVERED, neighbour: ANSWERED}


async def test_unmerging_the_report_that_covered_a_repeat_asks_the_repeat(client: TestClient,
                                                                         receiver: Open311Receiver) -> None:
    store, service = client.app[STORE], client.app[SURVEYS]
    case_id, (first, repeat) = await case_with_reports(
        client, web(CITIZEN, TEXTS[0]), web(NEIGHBOUR, TEXTS[2]), web(NEIGHBOUR, TEXTS[1]))
    await resolved_and_surveyed(client, receiver, case_id)
    async with staff_login(client, "follow_up") as agent:
        assert await cards(agent, case_id) == {MAIN, first}
        # The neighbour's first report was merged by mistake; his repeat still belongs to the case.
        await client.app[DEDUP].unmerge(first, "staff:ct1")
        assert await cards(agent, case_id) == {MAIN}
        await service.run_due()
        assert await cards(agent, case_id) == {MAIN, repeat}
        resp = await agent.post_json(f"/api/v1/callbacks/{case_id}/{repeat}", answer(True, "satisfied"))
        assert resp.status == 200, await resp.text()
    survey = await service.surveys.get(case_id)
    assert survey is not None
    assert (survey.recipients[first].state, survey.recipients[repeat].state) == (WITHDRAWN, ANSWERED)
    scheduled = [e.data for e in await store.events(case_id) if e.action == "survey_scheduled"]
    assert scheduled[-1]["report_id"] == repeat and scheduled[-1]["reason"] == "unmerged"


def test_rates_count_old_double_answers_once_per_citizen() -> None:
    # A round scheduled before the rule asked every report: the citizen answered for both of theirs.
    cfg = RateSettings(weights=Weights(), response_hours=24, urgent_response_hours=2, min_cases=1)
    ts = 1_795_000_000.0

    def report(rid: str, channel: str, sender: str, contact: str) -> Report:
        return Report(report_id=rid, channel=channel, sender=sender, contact=contact, text="同一问题",
                      received_at=ts)

    reports = [report("r-phone", "voice", "+8613912345678", "+8613912345678"),  # the citizen, again by phone
               report("r-chat", "telegram", "tg:1", ""),  # a chat account not known yet: someone else ...
               report("r-link", "telegram", "tg:1", "139 1234 5678"),  # ... until it left the citizen's number
               report("r-other", "web", NEIGHBOUR, NEIGHBOUR),
               report("r-anon1", "web", "web:aa", ""), report("r-anon2", "web", "web:aa", "")]
    stored = {r.report_id: {"resolved": False, "satisfaction": "unsatisfied"} for r in reports}
    stored["r-other"] = {"resolved": True, "satisfaction": "basic"}
    case = Case(id="20261124-000001", channel="web", sender=CITIZEN, contact=CITIZEN, status=Status.CLOSED,
                created_at=ts, updated_at=ts, text="下水道堵塞", normalized_text="下水道堵塞",
                classification={"department": "城管局"}, reports=reports,
                survey={"resolved": True, "satisfaction": "satisfied", "reports": stored})
    events = [Event("1", ts + 10, "system", "dispatched", {"to": "dispatched"}),
              Event("2", ts + 70, "system", "accepted", {})]
    row = rate_row(case, events, cfg)
    assert row is not None
    # The citizen (their own answer), the neighbour, and each anonymous report: nothing ties those two.
    assert (row.resolved, row.satisfaction) == (True, "satisfied")
    assert row.reports == ((True, "basic"), (False, "unsatisfied"), (False, "unsatisfied"))
    t = total([row])
    assert (t.cases, t.surveyed, t.resolved, t.satisfied, t.basic, t.unsatisfied) == (1, 4, 2, 1, 1, 2)

    # Without the case's own answer, the citizen's first report that has one stands for them.
    case.survey = {"reports": stored}
    row = rate_row(case, events, cfg)
    assert row is not None and row.resolved is None
    assert total([row]).surveyed == 4


def test_same_citizen_groups() -> None:
    people = [("a", citizen_keys("web", CITIZEN, CITIZEN)), ("b", citizen_keys("telegram", "tg:1", "")),
              ("c", citizen_keys("voice", "unknown", "")), ("d", citizen_keys("wechat", "oX1", "0086 13912345678")),
              ("e", citizen_keys("wechat", "oX1", "")), ("f", citizen_keys("web", "web:aa", "")),
              ("g", citizen_keys("web", "web:aa", ""))]
    assert same_citizen(people) == [["a", "d", "e"], ["b"], ["c"], ["f"], ["g"]]
