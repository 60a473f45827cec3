"""Satisfaction callbacks end to end over HTTP: intake → confirmed and dispatched to a real Open311 receiver →
resolved by a signed status event → survey → answered (over chat, or by a follow-up agent from the worklist)
→ 不满意 / 未解决 reopens the case and re-dispatches it. Also the worklist and dashboard pages and the charts."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from aiohttp.test_utils import TestClient

from hotline.app import create_app
from hotline.appkeys import DISPATCHER, INTAKE, NOTIFICATIONS, STORE, SURVEYS
from hotline.charts import Series, bar_chart, line_chart
from hotline.notify import Reply
from hotline.records import Case, InboundMessage
from hotline.redis_server import EmbeddedRedis
from hotline.status import Status
from hotline.store.surveys import MAIN
from hotline.surveys import KIND
from tests.conftest import make_settings
from tests.console_support import staff_login
from tests.dispatch_support import CLASSIFICATION, SECRET, Open311Receiver, RecordingNotifier, post_event, wait_for


def callback_settings(redis_server: EmbeddedRedis, tmp_path: Path, prefix: str, dispatch_url: str, *,
                      merging: bool = False) -> Any:
    dispatch = {"backend": "open311", "url": dispatch_url, "api_key": "city-key", "secret": SECRET,
                "backoff_base_s": 0.05, "backoff_max_s": 0.2, "max_attempts": 3, "request_timeout_s": 2.0,
                "sweep_interval_s": 3600.0}
    # Due at once at any hour; the due worker runs once at start-up, the tests drive run_due themselves.
    callbacks = {"delay_s": 0, "hours_start": 0, "hours_end": 24, "poll_s": 3600.0}
    return make_settings(redis_server.url, tmp_path, prefix, dispatch=dispatch, callbacks=callbacks,
                         rates={"min_cases_for_ranking": 1}, dedup={"enabled": merging})


@pytest.fixture
async def app_client(aiohttp_client: Any, redis_server: EmbeddedRedis, tmp_path: Path, key_prefix: str,
                     receiver: Open311Receiver) -> TestClient:
    return await aiohttp_client(create_app(callback_settings(redis_server, tmp_path, key_prefix, receiver.url)))


async def dispatch_and_resolve(client: TestClient, receiver: Open311Receiver, case_id: str,
                               reply: str) -> Case:
    """Confirm as a call-taker would, wait for the order at the receiver, then the unit accepts and resolves."""
    store = client.app[STORE]
    case = await client.app[DISPATCHER].confirm(case_id, CLASSIFICATION, "staff:zhang")
    await wait_for(lambda: any(a.case_id == case_id for a in receiver.orders))

    async def delivered() -> bool:
        return (await store.get_case(case_id)).dispatch.get("state") == "delivered"

    await wait_for(delivered)
    case = await store.get_case(case_id)
    order = case.dispatch["order_id"]
    for seq, etype, extra in ((1, "accepted", {}), (2, "resolved", {"reply": reply})):
        status, body = await post_event(client, {"event_id": f"e-{case_id}-{etype}", "case_id": case_id,
                                                 "type": etype, "order_id": order, "seq": seq, **extra})
        assert status == 200, body
    case = await store.get_case(case_id)
    assert case.status == Status.RESOLVED and case.dispatch["reply"] == reply
    return case


async def survey_due(client: TestClient, case: Case) -> None:
    """The feed worker schedules the survey on its own; schedule() is idempotent, so calling it is safe."""
    service = client.app[SURVEYS]
    await service.schedule(case)
    survey = await service.surveys.get(case.id)
    assert survey is not None and survey.round == 1
    await service.run_due()
    survey = await service.surveys.get(case.id)
    assert survey is not None and survey.recipients[MAIN].state in ("asked", "followup")


async def assert_reopened_and_redispatched(client: TestClient, receiver: Open311Receiver, case_id: str,
                                           reason: str) -> None:
    store = client.app[STORE]
    case = await store.get_case(case_id)
    assert case.status == Status.DISPATCHED
    assert case.dispatch["redo"] is True and case.dispatch["order_id"] == f"{case_id}-R2"
    await wait_for(lambda: any(a.key == f"{case_id}-R2" for a in receiver.orders))
    order = next(a for a in receiver.orders if a.key == f"{case_id}-R2").form
    assert order["attribute[redo]"] == "1" and order["attribute[redo_reason]"] == reason
    assert receiver.orders_per_case()[case_id] == 2
    events = await store.events(case_id)
    actions = [e.action for e in events]
    assert "survey_answered" in actions and "reopened" in actions
    reopened = next(e for e in events if e.action == "reopened")
    assert reopened.data.get("to") == str(Status.REOPENED)
    # Two dispatch rounds in the audit trail, the second after the reopening.
    to_dispatched = [i for i, e in enumerate(events) if e.data.get("to") == str(Status.DISPATCHED)]
    assert len(to_dispatched) == 2 and to_dispatched[1] > actions.index("reopened")


async def test_chat_survey_unsatisfied_reopens_and_redispatches(app_client: TestClient,
                                                               receiver: Open311Receiver) -> None:
    chat = RecordingNotifier()
    app_client.app[NOTIFICATIONS].register("telegram", chat)
    # The Telegram adapter hands the message to intake exactly like this.
    result = await app_client.app[INTAKE].submit(InboundMessage(
        channel="telegram", sender="tg-77001", contact="", text="建设路口的路灯坏了一个星期，晚上一片漆黑",
        address="建设路与解放街路口"))
    assert result.created
    case = await dispatch_and_resolve(app_client, receiver, result.case.id, "已更换灯泡，恢复照明。")
    await survey_due(app_client, case)

    q1 = [n for n in chat.sent if n.kind == KIND]
    assert len(q1) == 1 and case.id in q1[0].text
    assert [v for v, _ in q1[0].options] == ["q1:resolved", "q1:unresolved"]
    # The same survey as a web page, for a channel that can only carry a link (a WeChat template message).
    link = await app_client.get(urlsplit(q1[0].meta["url"]).path)
    assert link.status == 200 and "是否" in await link.text()
    notifications = app_client.app[NOTIFICATIONS]
    # Someone else answering in the citizen's place is not taken.
    intruder = Reply(case.id, KIND, "q1:resolved", "telegram", "tg-intruder")
    assert await notifications.reply(intruder) == "未找到您的回访。"
    assert await notifications.reply(Reply(case.id, KIND, "q1:resolved", "telegram", "tg-77001")) == ""
    q2 = [n for n in chat.sent if n.kind == KIND][-1]
    assert [v for v, _ in q2.options] == ["q2:satisfied", "q2:basic", "q2:unsatisfied"]
    thanks = await notifications.reply(Reply(case.id, KIND, "q2:unsatisfied", "telegram", "tg-77001",
                                             comment="灯修好两天又不亮了"))
    assert "重新办理" in thanks

    stored = await app_client.app[STORE].get_case(case.id)
    assert stored.survey["resolved"] is True and stored.survey["satisfaction"] == "unsatisfied"
    await assert_reopened_and_redispatched(app_client, receiver, case.id, "灯修好两天又不亮了")
    # Answering again changes nothing.
    again = await notifications.reply(Reply(case.id, KIND, "q2:satisfied", "telegram", "tg-77001"))
    assert "结束" in again
    assert (await app_client.app[STORE].get_case(case.id)).status == Status.DISPATCHED


async def test_web_case_through_the_worklist_api_and_pages(app_client: TestClient, receiver: Open311Receiver) -> None:
    resp = await app_client.post("/api/v1/complaints", json={
        "text": "幸福小区3号楼下水道堵塞，污水漫到路上", "contact": "13912345678", "address": "幸福小区3号楼",
        "channel": "web"})
    assert resp.status == 201, await resp.text()
    case_id = (await resp.json())["case_id"]
    reply = "已派人疏通，管道恢复通畅。"
    case = await dispatch_and_resolve(app_client, receiver, case_id, reply)
    await survey_due(app_client, case)

    async with staff_login(app_client, "follow_up") as agent, staff_login(app_client, "supervisor") as boss, \
            staff_login(app_client, "call_taker") as taker:
        items = (await (await agent.get("/api/v1/callbacks")).json())["items"]
        item = next(i for i in items if i["case_id"] == case_id)
        assert (item["rid"], item["phone"], item["reply"], item["channel"]) == (MAIN, "13912345678", reply, "web")
        boss_items = (await (await boss.get("/api/v1/callbacks")).json())["items"]
        assert next(i for i in boss_items if i["case_id"] == case_id)["phone"] == "139****5678"

        page = await agent.page("/console/callbacks")
        html = await page.text()
        assert page.status == 200 and "13912345678" in html and reply in html
        assert f'data-case-id="{case_id}"' in html and 'href="/console/callbacks"' in html
        boss_html = await (await boss.page("/console/callbacks")).text()
        assert "139****5678" in boss_html and "13912345678" not in boss_html
        for path in ("/console/callbacks", "/console/dashboard"):
            assert (await taker.page(path)).status == 403
        assert (await agent.page("/console/dashboard")).status == 403

        # Hostile bodies: a clear 4xx, nothing recorded.
        url = f"/api/v1/callbacks/{case_id}/{MAIN}"
        for body, status in (({"outcome": "answered", "resolved": "no", "satisfaction": "satisfied"}, 422),
                             ({"outcome": "answered", "resolved": True, "satisfaction": "great"}, 422),
                             ({"outcome": "hung_up"}, 422),
                             ({"outcome": "call_back_later", "call_back_at": time.time() - 10}, 422),
                             ({"outcome": "call_back_later", "call_back_at": 10**400}, 422),
                             ({"outcome": "no_answer", "note": 5}, 422)):
            bad = await agent.post_json(url, body)
            assert bad.status == status, (body, bad.status)
            assert "error" in await bad.json()
        assert (await agent.post_json(f"/api/v1/callbacks/{case_id}/../x", {"outcome": "no_answer"})).status == 404
        assert (await agent.post_json(url, {"outcome": "no_answer"}, csrf=False)).status == 403

        # First call: nobody answers; the case stays on the worklist with the note.
        later = await agent.post_json(url, {"outcome": "no_answer", "note": "响铃无人接"})
        assert later.status == 200 and (await later.json())["state"] == "followup"
        # Second call: the citizen says it is not solved.
        done = await agent.post_json(url, {"outcome": "answered", "resolved": False, "satisfaction": "basic",
                                           "comment": "下雨后又堵了"})
        assert done.status == 200 and "重新办理" in (await done.json())["message"]
        items = (await (await agent.get("/api/v1/callbacks")).json())["items"]
        assert all(i["case_id"] != case_id for i in items)
        await assert_reopened_and_redispatched(app_client, receiver, case_id, "下雨后又堵了")
        events = await app_client.app[STORE].events(case_id)
        call = next(e for e in events if e.action == "callback_call")
        assert call.actor == agent.actor and call.data["note"] == "响铃无人接"
        answered = next(e for e in events if e.action == "survey_answered")
        assert answered.actor == agent.actor

        # The dashboard shows what the rates API computes, with charts and CSV links.
        api = await (await boss.get("/api/v1/metrics/rates?by=department")).json()
        dash = await boss.page("/console/dashboard")
        html = await dash.text()
        assert dash.status == 200
        assert html.count("<svg") == 3 and 'id="trend-chart"' in html and "<polyline" in html
        dept = next(r for r in api["items"] if r["key"] == "城乡建设局")
        assert dept["surveyed"] == 1 and dept["resolution_rate"] == 0.0 and dept["satisfaction_rate"] == 0.8
        assert 'data-key="城乡建设局"' in html and "80.0%" in html
        assert "/api/v1/metrics/rates?by=department" in html and "format=csv" in html
        csv = await boss.get("/api/v1/metrics/rates?by=department&format=csv")
        assert csv.status == 200 and "城乡建设局" in (await csv.read()).decode("utf-8-sig")
        bad_range = await boss.page("/console/dashboard?from=2026-13-01")
        assert bad_range.status == 400 and "YYYY-MM-DD" in await bad_range.text()
        for query in ("from=9999-12-31&to=9999-12-31", "from=0001-01-01&to=0001-01-01", "to=0001-01-01"):
            edge = await boss.get(f"/api/v1/metrics/rates?{query}")
            assert edge.status == 400, query


def test_charts_escape_labels_and_leave_gaps() -> None:
    bars = str(bar_chart([("<script>x</script>局", 0.5), ("未评街道", None)], title="t", chart_id="c"))
    assert "<script>" not in bars and "&lt;script&gt;" in bars
    assert bars.count('class="bar"') == 1 and 'width="255.0"' in bars  # half of the 510-pixel plot
    line = str(line_chart(["W1", "W2", "W3", "W4"], [Series("解决率", "#000", [0.5, None, 1.0, 0.75])]))
    # A week without surveys breaks the line instead of drawing a zero.
    assert line.count("<polyline") == 2 and line.count('class="point"') == 3
    empty = str(line_chart([], []))
    assert "暂无数据" in empty and empty.startswith("<svg")
