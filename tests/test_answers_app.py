"""Answers in the whole app: web and API consultations, 是/否, staff endpoints, KB editing, chat, IVR."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from hotline.access import CALL_TAKER, SUPERVISOR, required_roles
from hotline.answers import KIND, AnswerService
from hotline.appkeys import ANSWERS, INTAKE, NOTIFICATIONS, STORE
from hotline.channels.conversation import Conversation
from hotline.nlp.answers import RetrievalConfig
from hotline.notify import Reply
from hotline.records import InboundMessage
from hotline.redis_server import EmbeddedRedis
from hotline.status import Status
from hotline.store.conversations import ConversationStore
from tests.answers_support import (
    BABY_Q,
    ENTRIES,
    ChatDouble,
    add_entries,
    answers_client,
    form_token,
    hidden,
    staff_headers,
)

Headers = dict[str, str]


@pytest.fixture
async def app_client(aiohttp_client: Any, redis_server: EmbeddedRedis, tmp_path: Path, key_prefix: str) -> TestClient:
    return await answers_client(aiohttp_client, redis_server.url, tmp_path, key_prefix)


@pytest.fixture
async def ct(app_client: TestClient) -> Headers:
    return await staff_headers(app_client, "zhang", CALL_TAKER)


@pytest.fixture
async def sup(app_client: TestClient) -> Headers:
    return await staff_headers(app_client, "wang", SUPERVISOR)


async def submit_web(client: TestClient, text: str, contact: str = "13812345678") -> tuple[int, str]:
    resp = await client.post("/submit", data={"text": text, "contact": contact,
                                              "form_token": await form_token(client)})
    return resp.status, await resp.text()


# web page ------------------------------------------------------------------------

async def test_web_consultation_gets_a_sourced_answer_and_yes_keeps_it_answered(
    app_client: TestClient, ct: Headers, sup: Headers
) -> None:
    await add_entries(app_client, sup)
    status, html = await submit_web(app_client, BABY_Q)
    assert status == 201
    assert "新生儿凭出生医学证明和户口簿到社区医保窗口办理参保" in html
    assert "医疗保障局" in html and ENTRIES[0]["date"] in html and "是否解决了您的问题" in html
    case_id, token = hidden(html, "case_id"), hidden(html, "token")
    case = await app_client.app[STORE].get_case(case_id)
    assert case.status == Status.ANSWERED and case.answer["department"] == "医疗保障局"
    assert case.answer["mode"] == "auto" and case.answer["answered_by"] == "system"
    # The answer stays readable on the status page (case number + the phone's last four digits).
    page = await app_client.post("/status", data={"case_id": case_id, "last4": "5678"})
    body = await page.text()
    assert page.status == 200 and "新生儿凭出生医学证明和户口簿到社区医保窗口办理参保" in body and "医疗保障局" in body
    resp = await app_client.post("/answer/feedback", data={"case_id": case_id, "token": token, "resolved": "yes"})
    assert resp.status == 200 and "感谢您的反馈" in await resp.text()
    case = await app_client.app[STORE].get_case(case_id)
    assert case.status == Status.ANSWERED and case.answer["feedback"] == "resolved"
    assert case_id not in await app_client.app[STORE].confirm_queue()
    # The survey worker may write its own entry in between (survey_scheduled): only the answer's steps count.
    actions = [e.action for e in await app_client.app[STORE].events(case_id) if e.action.startswith("answer")]
    assert actions[-2:] == ["answered", "answer_resolved"]


async def test_web_no_turns_the_answer_into_a_normal_case(app_client: TestClient, ct: Headers, sup: Headers) -> None:
    await add_entries(app_client, sup)
    _, html = await submit_web(app_client, BABY_Q)
    case_id, token = hidden(html, "case_id"), hidden(html, "token")
    resp = await app_client.post("/answer/feedback", data={"case_id": case_id, "token": token, "resolved": "no"})
    text = await resp.text()
    assert resp.status == 200 and case_id in text and "转为人工办理" in text
    store = app_client.app[STORE]
    case = await store.get_case(case_id)
    assert case.status == Status.CLASSIFIED and case.needs_confirmation and case.answer["feedback"] == "not_resolved"
    assert case_id in await store.confirm_queue()
    # A second click (back button) changes nothing and says the same.
    again = await app_client.post("/answer/feedback", data={"case_id": case_id, "token": token, "resolved": "no"})
    assert again.status == 200 and case_id in await again.text()
    events = await store.events(case_id)
    assert [e.action for e in events].count("answer_not_resolved") == 1
    moved = next(e for e in events if e.action == "answer_not_resolved")
    assert moved.data["from"] == "answered" and moved.data["to"] == "classified"
    # The public status page history shows it.
    page = await (await app_client.get(f"/api/v1/cases/{case_id}")).json()
    assert page["status"] == "classified"


async def test_web_feedback_needs_the_right_token(app_client: TestClient, ct: Headers, sup: Headers) -> None:
    await add_entries(app_client, sup)
    _, html = await submit_web(app_client, BABY_Q)
    case_id = hidden(html, "case_id")
    for data in ({"case_id": case_id, "token": "0" * 32, "resolved": "no"},
                 {"case_id": case_id, "token": hidden(html, "token"), "resolved": "maybe"},
                 {"case_id": "../etc", "token": "x", "resolved": "no"}, {}):
        resp = await app_client.post("/answer/feedback", data=data)
        assert resp.status == 403
    assert (await app_client.app[STORE].get_case(case_id)).status == Status.ANSWERED


async def test_web_complaint_or_weak_match_is_a_normal_case(app_client: TestClient, ct: Headers, sup: Headers) -> None:
    await add_entries(app_client, sup)
    # Not a question: even words from an entry do not trigger an answer.
    status, html = await submit_web(app_client, "新生儿医保窗口排队太久，工作人员态度差，投诉", "13800000001")
    assert status == 201 and "您的诉求已受理" in html and "是否解决了您的问题" not in html
    # A question nothing in the KB answers.
    status, html = await submit_web(app_client, "请问公园的健身器材晚上几点关？", "13800000002")
    assert status == 201 and "是否解决了您的问题" not in html


async def test_empty_kb_consultation_is_a_normal_case(app_client: TestClient, ct: Headers, sup: Headers,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    threads: list[Any] = []
    to_thread = asyncio.to_thread

    async def counting(func: Any, *args: Any, **kwargs: Any) -> Any:
        threads.append(func)
        return await to_thread(func, *args, **kwargs)

    monkeypatch.setattr(asyncio, "to_thread", counting)
    status, html = await submit_web(app_client, BABY_Q)
    # An empty knowledge base is not searched: the consultation costs no worker thread.
    assert [f for f in threads if getattr(f, "__name__", "") == "search"] == []
    assert status == 201 and "您的诉求已受理" in html
    case_id = html.split('id="case-id">')[1].split("<")[0]
    body = await (await app_client.get(f"/api/v1/cases/{case_id}/answers", headers=ct)).json()
    assert body["answers"] == [] and body["message"] and body["consultation"] is True


# JSON API ---------------------------------------------------------------------------

async def test_api_consultation_answer_and_feedback(app_client: TestClient, ct: Headers, sup: Headers) -> None:
    await add_entries(app_client, sup)
    resp = await app_client.post("/api/v1/complaints", json={"text": "供暖费什么时候开始收？在哪里交？",
                                                             "contact": "13900001111"})
    body = await resp.json()
    assert resp.status == 201 and body["status"] == "answered"
    ans = body["answer"]
    assert ans["department"] == "供热办" and ans["date"] == ENTRIES[1]["date"] and "9月" in ans["answer"]
    assert ans["question"] == "是否解决了您的问题？" and [o["label"] for o in ans["options"]] == ["是", "否"]
    url = f"/api/v1/cases/{body['case_id']}/answer/feedback"
    bad = await app_client.post(url, json={"resolved": False, "token": "nope"})
    assert bad.status == 403 and (await bad.json())["error"]["code"] == "forbidden"
    bad = await app_client.post(url, json={"resolved": "否", "token": ans["feedback_token"]})
    assert bad.status == 422
    bad = await app_client.post(url, data=b"{", headers={"Content-Type": "application/json"})
    assert bad.status == 400
    # compare_digest refuses non-ASCII str: still just a wrong token.
    bad = await app_client.post(url, json={"resolved": False, "token": "é" * 32})
    assert bad.status == 403 and (await bad.json())["error"]["code"] == "forbidden"
    ok = await app_client.post(url, json={"resolved": False, "token": ans["feedback_token"]})
    out = await ok.json()
    assert ok.status == 200 and out["status"] == "classified" and out["feedback"] == "not_resolved"
    # A plain complaint through the API has no answer.
    resp = await app_client.post("/api/v1/complaints", json={"text": "路灯坏了一周"})
    assert (await resp.json())["answer"] is None


async def test_feedback_on_a_case_that_was_never_answered(app_client: TestClient, ct: Headers, sup: Headers) -> None:
    resp = await app_client.post("/api/v1/complaints", json={"text": "路灯坏了一周"})
    case_id = (await resp.json())["case_id"]
    token = app_client.app[ANSWERS].token(case_id)
    out = await app_client.post(f"/api/v1/cases/{case_id}/answer/feedback", json={"resolved": True, "token": token})
    assert out.status == 409 and (await out.json())["error"]["code"] == "not_answered"


# staff endpoints -----------------------------------------------------------------------

def test_staff_endpoints_are_marked_with_roles(app_client: TestClient) -> None:
    roles = {}
    for route in app_client.app.router.routes():
        info = route.resource.canonical if route.resource else ""
        roles[(route.method, info)] = required_roles(route.handler)
    assert roles[("GET", "/api/v1/cases/{case_id}/answers")] == {CALL_TAKER, SUPERVISOR}
    assert roles[("POST", "/api/v1/cases/{case_id}/answer")] == {CALL_TAKER, SUPERVISOR}
    assert roles[("GET", "/api/v1/kb")] == {CALL_TAKER, SUPERVISOR}
    for key in (("POST", "/api/v1/kb"), ("PUT", "/api/v1/kb/{entry_id}"), ("DELETE", "/api/v1/kb/{entry_id}")):
        assert roles[key] == {SUPERVISOR}
    # Citizen endpoints carry no mark.
    assert roles[("POST", "/api/v1/cases/{case_id}/answer/feedback")] is None
    assert roles[("POST", "/answer/feedback")] is None


async def test_console_top3_and_send_closes_as_direct_answer(app_client: TestClient, ct: Headers, sup: Headers) -> None:
    ids = await add_entries(app_client, sup)
    tg = ChatDouble()
    app_client.app[NOTIFICATIONS].register("telegram", tg)
    # A question close to an entry but below the citizen threshold: not answered at intake, but suggested.
    result = await app_client.app[INTAKE].submit(InboundMessage(
        channel="telegram", sender="tg:42", text="宝宝出生后医保材料"))
    case_id = result.case.id
    assert (await app_client.app[STORE].get_case(case_id)).status == Status.CLASSIFIED
    body = await (await app_client.get(f"/api/v1/cases/{case_id}/answers", headers=ct)).json()
    assert 1 <= len(body["answers"]) <= 3
    assert body["answers"][0]["entry_id"] == ids[0] and body["answers"][0]["department"] == "医疗保障局"
    scores = [a["score"] for a in body["answers"]]
    assert scores == sorted(scores, reverse=True)
    resp = await app_client.post(f"/api/v1/cases/{case_id}/answer", json={"entry_id": ids[0]}, headers=ct)
    out = await resp.json()
    assert resp.status == 200 and out["status"] == "answered" and out["delivered"] is True
    assert out["answer"]["mode"] == "staff" and out["answer"]["entry_id"] == ids[0]
    assert tg.sent[-1].kind == KIND and tg.sent[-1].recipient == "tg:42"
    assert "医疗保障局" in tg.sent[-1].text and "是否解决了您的问题" in tg.sent[-1].text
    assert [v for v, _ in tg.sent[-1].options] == ["yes", "no"]
    events = await app_client.app[STORE].events(case_id)
    answered = next(e for e in events if e.action == "answered")
    assert answered.actor == "staff:zhang" and answered.data["to"] == "answered" and answered.data["entry_id"] == ids[0]
    assert any(e.action == "notified" and e.data["kind"] == KIND and e.data["delivered"] for e in events)
    # Sending again is refused: the case is no longer waiting.
    again = await app_client.post(f"/api/v1/cases/{case_id}/answer", json={"entry_id": ids[1]}, headers=ct)
    assert again.status == 409


async def test_send_errors(app_client: TestClient, ct: Headers, sup: Headers) -> None:
    ids = await add_entries(app_client, sup)
    case_id = (await (await app_client.post("/api/v1/complaints", json={"text": "路灯坏了"})).json())["case_id"]
    url = f"/api/v1/cases/{case_id}/answer"
    assert (await app_client.post(url, json={"entry_id": "kb-999999"}, headers=ct)).status == 404
    assert (await app_client.post(url, json={"entry_id": 5}, headers=ct)).status == 422
    assert (await app_client.post(url, json={"entry_id": ids[0], "channel": "wechat"}, headers=ct)).status == 422
    fax = {"entry_id": ids[0], "channel": "fax", "recipient": "1"}
    assert (await app_client.post(url, json=fax, headers=ct)).status == 422
    assert (await app_client.post(url, data=b"", headers={**ct, "Content-Type": "application/json"})).status == 400
    assert (await app_client.post(url, data=b"[]", headers={**ct, "Content-Type": "application/json"})).status == 422
    missing = "/api/v1/cases/20990101-000001/answer"
    assert (await app_client.post(missing, json={"entry_id": ids[0]}, headers=ct)).status == 404
    assert (await app_client.get("/api/v1/cases/nonsense/answers", headers=ct)).status == 404
    await app_client.delete(f"/api/v1/kb/{ids[0]}", headers=sup)
    resp = await app_client.post(url, json={"entry_id": ids[0]}, headers=ct)
    assert resp.status == 409 and (await resp.json())["error"]["code"] == "entry_retired"
    assert (await app_client.app[STORE].get_case(case_id)).status == Status.CLASSIFIED


# knowledge base editing ----------------------------------------------------------------

async def test_kb_of_questions_too_short_to_index(app_client: TestClient, ct: Headers, sup: Headers) -> None:
    # One character holds no 2-gram: stored, listed, never matched, and no 500 from the index rebuild.
    made = await app_client.post("/api/v1/kb", json={"question": "0", "answer": "0"}, headers=sup)
    assert made.status == 201, await made.text()
    entry_id = (await made.json())["entry"]["id"]
    put = await app_client.put(f"/api/v1/kb/{entry_id}", json={"question": "办"}, headers=sup)
    assert put.status == 200, await put.text()
    listed = await (await app_client.get("/api/v1/kb", headers=ct)).json()
    assert [e["id"] for e in listed["entries"]] == [entry_id]
    resp = await app_client.post("/api/v1/complaints", json={"text": "请问这个怎么办？"})
    assert resp.status == 201 and (await resp.json())["answer"] is None


async def test_kb_crud_audit_and_retired_never_shown(app_client: TestClient, ct: Headers, sup: Headers) -> None:
    ids = await add_entries(app_client, sup)
    bad = await app_client.post("/api/v1/kb", json={"question": "只有问题"}, headers=sup)
    assert bad.status == 422 and (await bad.json())["error"]["code"] == "bad_entry"
    put = await app_client.put(f"/api/v1/kb/{ids[1]}", json={"answer": "供暖费10月起在网上缴纳。", "rev": 1},
                               headers=sup)
    assert put.status == 200 and (await put.json())["entry"]["rev"] == 2
    stale = await app_client.put(f"/api/v1/kb/{ids[1]}", json={"answer": "x", "rev": 1}, headers=sup)
    assert stale.status == 409
    assert (await app_client.put("/api/v1/kb/kb-999999", json={"answer": "x"}, headers=sup)).status == 404
    # The edited text is what citizens get.
    resp = await app_client.post("/api/v1/complaints", json={"text": "供暖费什么时候开始收？在哪里交？"})
    assert "10月起" in (await resp.json())["answer"]["answer"]
    # Retire: never suggested to staff, never answered to citizens.
    gone = await app_client.delete(f"/api/v1/kb/{ids[0]}", json={"reason": "政策调整"}, headers=sup)
    assert gone.status == 200 and (await gone.json())["entry"]["status"] == "retired"
    resp = await app_client.post("/api/v1/complaints", json={"text": BABY_Q, "contact": "13700000009"})
    body = await resp.json()
    assert body["answer"] is None and body["status"] == "classified"
    sugg = await (await app_client.get(f"/api/v1/cases/{body['case_id']}/answers", headers=ct)).json()
    assert ids[0] not in [a["entry_id"] for a in sugg["answers"]]
    detail = await (await app_client.get(f"/api/v1/kb/{ids[0]}", headers=ct)).json()
    assert [e["action"] for e in detail["events"]] == ["created", "retired"]
    assert detail["events"][1]["data"]["reason"] == "政策调整"
    listing = await (await app_client.get("/api/v1/kb?status=retired", headers=ct)).json()
    assert [e["id"] for e in listing["entries"]] == [ids[0]] and listing["total"] == 3
    found = await (await app_client.get("/api/v1/kb", params={"q": "小学入学报名材料"}, headers=ct)).json()
    assert found["entries"][0]["id"] == ids[2]
    assert (await app_client.get("/api/v1/kb?limit=0", headers=ct)).status == 400
    assert (await app_client.get("/api/v1/kb?status=x", headers=ct)).status == 400


async def test_changes_from_another_process_reach_the_serving_index(app_client: TestClient) -> None:
    """A second service on the same store (another host, or the CLI) edits the KB; the serving one follows."""
    serving = app_client.app[ANSWERS]
    other = AnswerService(app_client.app[STORE], app_client.app[NOTIFICATIONS], RetrievalConfig(threshold=0.5),
                          b"other")
    rec = await other.kb.add(ENTRIES[2], actor="staff:elsewhere")
    assert (await serving.suggest_text("小学入学报名需要准备哪些材料")).nothing_fits
    assert await serving.refresh() is True
    assert (await serving.suggest_text("小学入学报名需要准备哪些材料")).answer.entry.id == rec.id
    # Retired elsewhere: never shown, even before this process's index has caught up.
    await other.kb.retire(rec.id, actor="staff:elsewhere")
    assert (await serving.suggest_text("小学入学报名需要准备哪些材料")).nothing_fits
    assert await serving.refresh() is True
    assert await serving.refresh() is False


# chat and IVR ---------------------------------------------------------------------------

async def test_chat_consultation_answered_at_once_and_no_reply_makes_a_case(
    app_client: TestClient, ct: Headers, sup: Headers
) -> None:
    await add_entries(app_client, sup)
    wx = ChatDouble()
    app_client.app[NOTIFICATIONS].register("wechat", wx)
    result = await app_client.app[INTAKE].submit(InboundMessage(channel="wechat", sender="openid-1", text=BABY_Q))
    case_id = result.case.id
    assert wx.sent and wx.sent[0].kind == KIND and wx.sent[0].recipient == "openid-1"
    assert "医疗保障局" in wx.sent[0].text and "是否解决了您的问题" in wx.sent[0].text
    notifications = app_client.app[NOTIFICATIONS]
    # Someone else cannot answer for the citizen; an unclear reply is asked again.
    assert "未找到" in await notifications.reply(Reply(case_id, KIND, "no", "wechat", "openid-2"))
    assert "请回复" in await notifications.reply(Reply(case_id, KIND, "随便", "wechat", "openid-1"))
    # 查询 shows the answer that was given.
    conversation = Conversation(app_client.app[INTAKE], app_client.app[STORE],
                                ConversationStore(app_client.app[STORE]), notifications)
    shown = (await conversation.status("wechat", "openid-1", case_id)).text
    assert "办理答复：新生儿凭出生医学证明" in shown
    text = await notifications.reply(Reply(case_id, KIND, "否", "wechat", "openid-1"))
    assert case_id in text
    case = await app_client.app[STORE].get_case(case_id)
    assert case.status == Status.CLASSIFIED and case.answer["feedback_by"] == "wechat:citizen"


async def test_ivr_offer_names_the_entry_and_sends_by_text(app_client: TestClient, ct: Headers, sup: Headers) -> None:
    ids = await add_entries(app_client, sup)
    wx = ChatDouble()
    app_client.app[NOTIFICATIONS].register("wechat", wx)
    result = await app_client.app[INTAKE].submit(InboundMessage(channel="voice", sender="+8613800000000",
                                                                text=BABY_Q, contact="13800000000"))
    service = app_client.app[ANSWERS]
    assert (await app_client.app[STORE].get_case(result.case.id)).status == Status.CLASSIFIED  # no TTS answer
    offer = await service.ivr_offer(result.case)
    assert offer is not None and offer.entry_id == ids[0] and "医疗保障局" in offer.department
    assert offer.text.count("新生儿凭出生医学证明") == 1 and "医疗保障局" in offer.text
    case, delivered = await service.send(result.case.id, offer.entry_id, actor="voice:ivr", channel="wechat",
                                         recipient="openid-9")
    assert delivered and case.status == Status.ANSWERED and wx.sent[-1].recipient == "openid-9"


async def test_staff_endpoints_need_a_login_the_role_and_csrf(app_client: TestClient, ct: Headers,
                                                              sup: Headers) -> None:
    ids = await add_entries(app_client, sup)
    case_id = (await (await app_client.post("/api/v1/complaints", json={"text": "路灯坏了"})).json())["case_id"]
    assert (await app_client.get(f"/api/v1/cases/{case_id}/answers")).status == 401
    assert (await app_client.post(f"/api/v1/cases/{case_id}/answer", json={"entry_id": ids[0]})).status == 401
    assert (await app_client.post("/api/v1/kb", json=ENTRIES[0])).status == 401
    # A call-taker may read the KB but not edit it.
    assert (await app_client.get("/api/v1/kb", headers=ct)).status == 200
    assert (await app_client.post("/api/v1/kb", json=ENTRIES[0], headers=ct)).status == 403
    assert (await app_client.delete(f"/api/v1/kb/{ids[0]}", headers=ct)).status == 403
    no_csrf = {"Cookie": sup["Cookie"]}
    assert (await app_client.put(f"/api/v1/kb/{ids[0]}", json={"answer": "x"}, headers=no_csrf)).status == 403
    assert (await app_client.app[ANSWERS].kb.get(ids[0])).rev == 1


async def test_parallel_yes_and_no_on_one_answer_first_wins(app_client: TestClient, ct: Headers, sup: Headers) -> None:
    """是 and 否 sent at once (a double tap, two devices): one wins, the rest get the repeat's reply, and the
    feedback always matches the status (是 keeps it answered, 否 makes it a normal case)."""
    await add_entries(app_client, sup)
    store = app_client.app[STORE]
    questions = ["供暖费什么时候开始收？在哪里交？", "请问新生儿医保怎么办理？需要什么材料？",
                 "小学入学报名需要准备哪些材料？"]
    for n in range(6):
        resp = await app_client.post("/api/v1/complaints", json={"text": questions[n % 3],
                                                                 "contact": f"1390000{n:04d}"})
        body = await resp.json()
        assert body["status"] == "answered", body
        url = f"/api/v1/cases/{body['case_id']}/answer/feedback"
        token = body["answer"]["feedback_token"]
        # Alternate which answer is sent first, so both orders of the race are seen.
        choices = [bool((n + i) % 2) for i in range(8)]
        replies = await asyncio.gather(*(app_client.post(url, json={"resolved": r, "token": token}) for r in choices))
        outs = [await r.json() for r in replies]
        assert all(r.status == 200 for r in replies), outs
        case = await store.get_case(body["case_id"])
        feedback = case.answer["feedback"]
        assert (case.status, feedback) in ((Status.ANSWERED, "resolved"), (Status.CLASSIFIED, "not_resolved"))
        assert case.needs_confirmation == (feedback == "not_resolved")
        # Every reply tells what was recorded, as a sequential repeat would.
        assert {(o["status"], o["feedback"], o["message"]) for o in outs} == {(str(case.status), feedback,
                                                                                 outs[0]["message"])}
        actions = [e.action for e in await store.events(case.id) if e.action in ("answer_resolved",
                                                                                 "answer_not_resolved")]
        assert actions == ["answer_resolved" if feedback == "resolved" else "answer_not_resolved"]
