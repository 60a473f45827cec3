"""Dispatch inside the whole app: confirm → order at a real Open311 receiver, signed status events back,
returned orders, re-dispatch, overdue listing, dead letters, polling and crash recovery."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from aiohttp.test_utils import TestClient

from hotline.app import create_app
from hotline.appkeys import DISPATCHER, STORE
from hotline.channels.conversation import progress_text
from hotline.dispatch.backends import Open311Backend
from hotline.dispatch.feature import FORWARDER
from hotline.dispatch.poller import poll_once
from hotline.records import Case
from hotline.redis_server import EmbeddedRedis
from hotline.status import Status
from tests.conftest import make_settings
from tests.console_support import staff_login
from tests.dispatch_support import (
    CLASSIFICATION,
    SECRET,
    Open311Receiver,
    new_case,
    post_event,
    record_notifications,
    wait_for,
)


def dispatch_settings(redis_server: EmbeddedRedis, tmp_path: Path, prefix: str, url: str, **extra: Any) -> Any:
    section = {"backend": "open311", "url": url, "api_key": "city-key", "secret": SECRET,
               "backoff_base_s": 0.05, "backoff_max_s": 0.2, "max_attempts": 3, "request_timeout_s": 2.0,
               "sweep_interval_s": 3600.0, **extra}
    return make_settings(redis_server.url, tmp_path, prefix, dispatch=section, dedup={"enabled": False})


@pytest.fixture
async def app_client(aiohttp_client: Any, redis_server: EmbeddedRedis, tmp_path: Path, key_prefix: str,
                     receiver: Open311Receiver) -> TestClient:
    return await aiohttp_client(create_app(dispatch_settings(redis_server, tmp_path, key_prefix, receiver.url)))


async def dispatched(client: TestClient, receiver: Open311Receiver, text: str = "", contact: str = "",
                     **cls: Any) -> Case:
    case = await new_case(client, text, contact=contact)
    case = await client.app[DISPATCHER].confirm(case.id, {**CLASSIFICATION, **cls}, "staff:zhang")
    await wait_for(lambda: any(a.case_id == case.id for a in receiver.orders))
    await wait_for(lambda: _state(client, case.id, "delivered"))
    return await client.app[STORE].get_case(case.id)


async def _state(client: TestClient, case_id: str, state: str) -> bool:
    return (await client.app[STORE].get_case(case_id)).dispatch.get("state") == state


def event(case: Case, etype: str, event_id: str = "", **fields: Any) -> dict[str, Any]:
    return {"event_id": event_id or f"evt-{etype}-{time.time_ns()}", "case_id": case.id, "type": etype,
            "order_id": case.dispatch["order_id"], **fields}


# confirm → dispatch -------------------------------------------------------------------

async def test_confirm_dispatches_work_order_and_tells_citizen(app_client: TestClient,
                                                               receiver: Open311Receiver) -> None:
    notes = record_notifications(app_client)
    case = await dispatched(app_client, receiver, "幸福里小区楼下有人私自搭建彩钢房，占用公共绿地", category="违章建筑",
                            department="",
                            co_departments=[], street="")
    assert case.status == Status.DISPATCHED
    assert case.classification["department"] == "城市管理综合执法局"  # table fallback by category
    assert case.classification["co_departments"] == ["自然资源和规划局"]
    assert case.classification["street"] == "A3区人民政府"  # 属地 from the address → 双派
    assert case.classification["category_path"] == ["城乡建设", "城乡规划", "违章建筑"]
    assert 15 * 86400 - 60 < case.deadline_at - case.dispatch["confirmed_at"] < 15 * 86400 + 60
    order = next(a for a in receiver.orders if a.case_id == case.id).form
    assert order["service_code"] == "urban" and order["api_key"] == "city-key"
    assert order["attribute[lead_department]"] == "城市管理综合执法局"
    assert order["attribute[co_departments]"] == "自然资源和规划局"
    assert order["attribute[street]"] == "A3区人民政府"
    assert order["attribute[hotline_order_id]"] == f"{case.id}-R1"
    assert order["address_string"] == case.address and order["description"] == case.text
    assert case.dispatch["ref"].startswith("SR-")
    assert notes.kinds(case.id) == ["dispatched"]
    assert "城市管理综合执法局" in notes.sent[0].text and case.id in notes.sent[0].text
    actions = [e.action for e in await app_client.app[STORE].events(case.id)]
    assert actions[:4] == ["received", "classified", "confirmed", "dispatched"]
    assert "order_delivered" in actions and "notified" in actions


async def test_confirm_refuses_bad_input_and_wrong_states(app_client: TestClient, receiver: Open311Receiver) -> None:
    from hotline.dispatch.service import DispatchError

    dispatcher = app_client.app[DISPATCHER]
    case = await new_case(app_client)
    with pytest.raises(DispatchError) as exc:
        await dispatcher.confirm(case.id, {"department": "x"}, "staff:a")
    assert exc.value.status == 422 and exc.value.code == "missing_field"
    with pytest.raises(DispatchError) as exc:
        await dispatcher.confirm(case.id, {"category": "无此类别"}, "staff:a")
    assert exc.value.code == "missing_department"
    with pytest.raises(DispatchError) as exc:
        await dispatcher.confirm("20990101-000001", CLASSIFICATION, "staff:a")
    assert exc.value.status == 404
    await dispatcher.confirm(case.id, CLASSIFICATION, "staff:a")
    with pytest.raises(DispatchError) as exc:  # a second call-taker confirming the same case
        await dispatcher.confirm(case.id, CLASSIFICATION, "staff:b")
    assert exc.value.status == 409 and exc.value.code == "invalid_transition"
    assert (await app_client.app[STORE].get_case(case.id)).dispatch["round"] == 1


async def test_time_limit_classes(app_client: TestClient, receiver: Open311Receiver) -> None:
    dispatcher = app_client.app[DISPATCHER]
    # Texts of their own: a generated one can carry words that intake flags urgent, and the call-taker's
    # classification here names no urgency.
    water = await dispatcher.confirm((await new_case(app_client, "小区自来水水质发黄，希望有关部门检测一下")).id,
                                     {"category": "自来水供应", "type": "投诉"}, "staff:a")
    assert water.dispatch["time_limit"] == "utilities"
    assert abs(water.deadline_at - water.dispatch["confirmed_at"] - 3 * 3600) < 1
    urgent = await dispatcher.confirm((await new_case(app_client)).id, {**CLASSIFICATION, "urgency": "urgent"},
                                      "staff:a")
    assert urgent.dispatch["time_limit"] == "urgent"
    assert abs(urgent.deadline_at - urgent.dispatch["confirmed_at"] - 2 * 3600) < 1
    ask = await dispatcher.confirm((await new_case(app_client, "请问办理居住证需要准备哪些材料")).id,
                                   {**CLASSIFICATION, "type": "咨询"}, "staff:a")
    assert ask.dispatch["time_limit"] == "consultation"
    assert 86400 - 60 <= ask.deadline_at - ask.dispatch["confirmed_at"] <= 4 * 86400 + 9 * 3600


# status events --------------------------------------------------------------------------

async def test_signed_resolved_event_resolves_case_and_notifies_citizen(app_client: TestClient,
                                                                        receiver: Open311Receiver) -> None:
    notes = record_notifications(app_client)
    case = await dispatched(app_client, receiver)
    status, body = await post_event(app_client, event(case, "accepted", seq=1))
    assert (status, body["result"], body["status"]) == (200, "applied", "dispatched")
    status, body = await post_event(app_client, event(case, "in_progress", seq=2))
    assert (status, body["status"]) == (200, "in_progress")
    reply = "经现场核查，路灯线路老化，已于今日更换，恢复照明。"
    status, body = await post_event(app_client, event(case, "resolved", "evt-r1", seq=3, reply=reply))
    assert (status, body["result"], body["status"]) == (200, "applied", "resolved")
    stored = await app_client.app[STORE].get_case(case.id)
    assert stored.status == Status.RESOLVED and stored.dispatch["reply"] == reply
    assert stored.dispatch["accepted_at"] > 0
    assert notes.kinds(case.id) == ["dispatched", "resolved"]
    assert reply in notes.sent[-1].text
    # The same event again (a backend retry) changes nothing and tells nobody twice.
    status, body = await post_event(app_client, event(case, "resolved", "evt-r1", seq=3, reply=reply))
    assert (status, body["result"]) == (200, "duplicate")
    # A late in_progress after resolved: 200, ignored, written to the audit trail.
    status, body = await post_event(app_client, event(case, "in_progress", "evt-late"))
    assert (status, body["result"], body["status"]) == (200, "ignored", "resolved")
    events = await app_client.app[STORE].events(case.id)
    ignored = [e for e in events if e.action == "dispatch_event_ignored"]
    assert ignored and ignored[-1].data["event_id"] == "evt-late"
    assert notes.kinds(case.id) == ["dispatched", "resolved"]
    assert case.id not in await app_client.app[DISPATCHER].outbox.open_ids()


async def test_citizen_sees_unit_time_limit_and_reply_on_the_status_page(app_client: TestClient,
                                                                          receiver: Open311Receiver) -> None:
    case = await dispatched(app_client, receiver, contact="13811112222")

    async def status_page() -> str:
        resp = await app_client.post("/status", data={"case_id": case.id, "last4": "2222"})
        assert resp.status == 200
        return await resp.text()

    page = await status_page()
    assert 'id="case-unit">承办单位：城乡建设局' in page and 'id="case-deadline">办理时限：' in page
    assert "case-reply" not in page
    reply = "经核查已更换灯泡，如仍有问题请联系13987654321。"
    assert (await post_event(app_client, event(case, "resolved", seq=1, reply=reply)))[0] == 200
    page = await status_page()
    assert "经核查已更换灯泡" in page and "139****4321" in page and "13987654321" not in page
    assert "case-deadline" not in page and "承办单位：城乡建设局" in page
    # The chat channels tell the same: unit and reply, numbers masked.
    stored = await app_client.app[STORE].get_case(case.id)
    told = progress_text(stored, await app_client.app[STORE].events(case.id), ZoneInfo("Asia/Shanghai"))
    assert "承办单位：城乡建设局" in told and "139****4321" in told and "13987654321" not in told


async def test_out_of_order_events_by_sequence(app_client: TestClient, receiver: Open311Receiver) -> None:
    case = await dispatched(app_client, receiver)
    status, body = await post_event(app_client, event(case, "returned", seq=5, reason="不属于本单位职责"))
    assert (status, body["status"]) == (200, "returned")
    # An older in_progress arriving after the return is stale, not a conflict.
    status, body = await post_event(app_client, event(case, "in_progress", seq=4))
    assert (status, body["result"], body["status"]) == (200, "ignored", "returned")


async def test_returned_order_goes_back_to_call_taker_queue_first(app_client: TestClient,
                                                                  receiver: Open311Receiver) -> None:
    store = app_client.app[STORE]
    # An older, ordinary case already waiting (a generated text may be urgent, which ranks like a return).
    waiting = await new_case(app_client, "公园里的长椅油漆脱落了，希望重新粉刷一下")
    case = await dispatched(app_client, receiver)
    status, body = await post_event(app_client, event(case, "returned", reason="该问题属于供电公司职责，非本单位管辖",
                                                      department="城乡建设局"))
    assert (status, body["status"]) == (200, "returned")
    queue = await store.confirm_queue()
    assert queue.index(case.id) < queue.index(waiting.id)  # returned cases rank first
    stored = await store.get_case(case.id)
    assert stored.dispatch["returns"][-1]["reason"].startswith("该问题属于供电公司")
    assert case.id not in await app_client.app[DISPATCHER].outbox.open_ids()
    # The call-taker re-routes it: a new round with a new order id reaches the backend.
    again = await app_client.app[DISPATCHER].confirm(case.id, {**CLASSIFICATION, "department": "供电公司"},
                                                     "staff:li")
    assert again.status == Status.DISPATCHED and again.dispatch["order_id"] == f"{case.id}-R2"
    await wait_for(lambda: any(a.key == f"{case.id}-R2" for a in receiver.orders))
    order = next(a for a in receiver.orders if a.key == f"{case.id}-R2").form
    assert order["attribute[lead_department]"] == "供电公司"
    # An event about the first round arriving now is stale: ignored, the new round is untouched.
    status, body = await post_event(app_client, event(case, "resolved", reply="已处理"))
    assert (status, body["result"], body["status"]) == (200, "ignored", "dispatched")


async def test_event_errors_are_clear_4xx(app_client: TestClient, receiver: Open311Receiver) -> None:
    case = await dispatched(app_client, receiver)
    good = event(case, "in_progress")
    raw = json.dumps(good).encode()
    resp = await app_client.post("/api/v1/dispatch/events", data=raw, headers={"Content-Type": "application/json"})
    assert resp.status == 401 and (await resp.json())["error"]["code"] == "unsigned"
    status, body = await post_event(app_client, good, secret="wrong-secret")
    assert status == 401 and body["error"]["code"] == "bad_signature"
    status, body = await post_event(app_client, good, now=time.time() - 3600)
    assert status == 401 and body["error"]["code"] == "stale"
    status, body = await post_event(app_client, good, now=time.time() + 3600)
    assert status == 401 and body["error"]["code"] == "stale"
    # "²" passes str.isdigit() but is no number of seconds.
    from tests.dispatch_support import signed

    _raw, headers = signed(good)
    status, body = await post_event(app_client, good, headers={**headers, "X-Hotline-Timestamp": "²"})
    assert status == 401 and body["error"]["code"] == "bad_timestamp"
    # A valid signature over other bytes than those sent.
    _raw, headers = signed(good)
    resp = await app_client.post("/api/v1/dispatch/events", data=json.dumps({**good, "type": "resolved"}),
                                 headers=headers)
    assert resp.status == 401
    status, body = await post_event(app_client, b"{not json")
    assert status == 400 and body["error"]["code"] == "bad_json"
    status, body = await post_event(app_client, [1, 2])
    assert status == 422 and body["error"]["code"] == "bad_body"
    status, body = await post_event(app_client, {**good, "type": "exploded"})
    assert status == 422 and body["error"]["code"] == "bad_type"
    status, body = await post_event(app_client, {k: v for k, v in good.items() if k != "event_id"})
    assert status == 422 and body["error"]["code"] == "missing_field"
    status, body = await post_event(app_client, event(case, "resolved"))  # no reply for the citizen
    assert status == 422 and "reply" in body["error"]["message"]
    status, body = await post_event(app_client, event(case, "returned"))  # no reason
    assert status == 422 and "reason" in body["error"]["message"]
    status, body = await post_event(app_client, {**good, "seq": -1})
    assert status == 422
    # Too large for a float: float() and math.isfinite() raise OverflowError on it.
    status, body = await post_event(app_client, {**good, "seq": 10**400})
    assert status == 422 and body["error"]["code"] == "bad_field"
    # compare_digest raises TypeError on non-ASCII str: still just a wrong signature.
    status, body = await post_event(app_client, good, headers={**headers, "X-Hotline-Signature": "é" * 64})
    assert status == 401 and body["error"]["code"] == "bad_signature"
    status, body = await post_event(app_client, {**good, "case_id": "../../etc"})
    assert status == 422 and body["error"]["code"] == "bad_case_id"
    status, body = await post_event(app_client, {**good, "case_id": "20990101-999999"})
    assert status == 404 and body["error"]["code"] == "unknown_case"
    # Invalid transitions: a case never dispatched; returning a resolved case.
    fresh = await new_case(app_client)
    status, body = await post_event(app_client, {**good, "case_id": fresh.id, "order_id": ""})
    assert status == 409 and body["error"]["code"] == "invalid_transition"
    await post_event(app_client, event(case, "resolved", reply="已修复"))
    status, body = await post_event(app_client, event(case, "returned", reason="不归我们管"))
    assert status == 409 and "退单" in body["error"]["message"]
    # Nothing above changed the case beyond the one resolve.
    assert (await app_client.app[STORE].get_case(case.id)).status == Status.RESOLVED


async def test_extension_request_is_recorded(app_client: TestClient, receiver: Open311Receiver) -> None:
    case = await dispatched(app_client, receiver)
    status, body = await post_event(app_client, event(case, "extension_requested", extension_hours=48,
                                                      reason="需协调产权单位"))
    assert (status, body["result"]) == (200, "applied")
    stored = await app_client.app[STORE].get_case(case.id)
    assert stored.dispatch["extension_request"]["hours"] == 48
    status, body = await post_event(app_client, event(case, "extension_requested", reason="x"))
    assert status == 422


# re-dispatch, overdue, auto, recovery -------------------------------------------------------

async def test_redispatch_after_unsatisfied_survey(app_client: TestClient, receiver: Open311Receiver) -> None:
    store = app_client.app[STORE]
    case = await dispatched(app_client, receiver, department="园林局")
    await post_event(app_client, event(case, "resolved", reply="已修剪"))
    await store.update_case(case.id, lambda c: {"reason": "没有修剪"}, actor="citizen", action="reopened",
                            target=Status.REOPENED)
    again = await app_client.app[DISPATCHER].redispatch(case.id, "市民反映树枝仍未修剪", "system:survey")
    assert again.status == Status.DISPATCHED and again.dispatch["redo"] is True
    assert again.dispatch["order_id"] == f"{case.id}-R2"
    await wait_for(lambda: any(a.key == f"{case.id}-R2" for a in receiver.orders))
    order = next(a for a in receiver.orders if a.key == f"{case.id}-R2").form
    assert order["attribute[redo]"] == "1" and order["attribute[lead_department]"] == "园林局"
    assert order["attribute[redo_reason"] if False else order["attribute[redo_reason]"] == "市民反映树枝仍未修剪"
    from hotline.dispatch.service import DispatchError

    with pytest.raises(DispatchError) as exc:  # not reopened: nothing to re-handle
        await app_client.app[DISPATCHER].redispatch(case.id, "again", "system:survey")
    assert exc.value.status == 409


async def test_overdue_listing_and_flag(app_client: TestClient, receiver: Open311Receiver) -> None:
    store = app_client.app[STORE]
    dispatcher = app_client.app[DISPATCHER]
    late = await dispatched(app_client, receiver, contact="13800138000")
    on_time = await dispatched(app_client, receiver)
    past = time.time() - 600

    def backdate(c: Case) -> dict[str, Any]:
        c.deadline_at = past
        return {}

    await store.update_case(late.id, backdate, actor="test", action="test_backdate")
    await dispatcher.outbox.set_open(late.id, past)
    resp = await app_client.get("/api/v1/cases?overdue=1")
    assert resp.status == 401  # staff only
    async with staff_login(app_client, "call_taker") as staff:
        resp = await staff.get("/api/v1/cases?overdue=1")
        assert resp.status == 200
        body = await resp.json()
        assert [c["id"] for c in body["cases"]] == [late.id] and body["cases"][0]["overdue"] is True
        # Personal data masked as on the console's pages.
        assert body["cases"][0]["contact"] == "138****8000" and body["cases"][0]["sender"] == ""
        resp = await staff.get("/api/v1/cases?status=dispatched&limit=10")
        listed = {c["id"]: c for c in (await resp.json())["cases"]}
        assert {late.id, on_time.id} <= set(listed) and listed[on_time.id]["overdue"] is False
        for bad in ("/api/v1/cases?status=nope", "/api/v1/cases?limit=0", "/api/v1/cases?overdue=yes",
                    "/api/v1/cases?limit=%C2%B2", "/api/v1/cases?offset=%E2%91%A0"):
            resp = await staff.get(bad)
            assert resp.status == 400, bad
    assert await dispatcher.flag_overdue() == 1
    assert await dispatcher.flag_overdue() == 0  # flagged once
    assert [e.action for e in await store.events(late.id)].count("overdue") == 1
    await post_event(app_client, event(await store.get_case(late.id), "resolved", reply="已处理"))
    assert await dispatcher.overdue() == []


async def test_dead_letters_api_for_supervisors(app_client: TestClient, receiver: Open311Receiver) -> None:
    receiver.plan = lambda key, n: "fail" if n <= 3 else "accept"
    case = await new_case(app_client, contact="13800138000")
    await app_client.app[DISPATCHER].confirm(case.id, CLASSIFICATION, "staff:a")
    await wait_for(lambda: _state(app_client, case.id, "dead_letter"))
    async with staff_login(app_client, "call_taker") as staff:
        assert (await staff.get("/api/v1/dispatch/dead")).status == 403
    async with staff_login(app_client, "supervisor") as sup:
        resp = await sup.get("/api/v1/dispatch/dead")
        dead = (await resp.json())["dead"]
        assert [d["case_id"] for d in dead] == [case.id] and dead[0]["attempts"] == 3
        # The stored order carries the full number for the department; the listing does not.
        assert dead[0]["order"]["citizen"]["contact"] == "138****8000"
        # Unknown, and beyond what a stream id can hold (Redis answers those with an error).
        for dead_id in ("1-1", "151215064528435-63296625698230985688", "18446744073709551616-0", "١-١"):
            resp = await sup.post_json(f"/api/v1/dispatch/dead/{dead_id}/redrive", {})
            assert resp.status == 404, dead_id
        resp = await sup.post_json(f"/api/v1/dispatch/dead/{dead[0]['dead_id']}/redrive", {})
        assert resp.status == 200
        await wait_for(lambda: _state(app_client, case.id, "delivered"))
        stats = await (await sup.get("/api/v1/dispatch/stats")).json()
        assert stats["dead"] == 0 and stats["backend"] == "open311"
    assert len(receiver.orders) == 1 and receiver.orders[0].case_id == case.id


async def test_auto_dispatch_only_when_every_head_is_confident(aiohttp_client: Any, redis_server: EmbeddedRedis,
                                                               tmp_path: Path, key_prefix: str,
                                                               receiver: Open311Receiver) -> None:
    settings = dispatch_settings(redis_server, tmp_path, key_prefix, receiver.url, auto_confidence=0.8)
    client = await aiohttp_client(create_app(settings))
    dispatcher = client.app[DISPATCHER]
    plain = await new_case(client)  # no trained model installed: nothing is confident
    assert (await client.app[STORE].get_case(plain.id)).status == Status.CLASSIFIED

    def head(label: str, p: float) -> dict[str, Any]:
        return {"top": [{"label": label, "p": p}, {"label": "其他", "p": 1 - p}]}

    sure = {"category": {**head("城乡建设", 0.93), "path": ["城乡建设"]}, "department": head("城乡建设局", 0.9),
            "type": head("投诉", 0.85), "urgency": {"level": "normal"}}
    unsure = {**sure, "type": head("投诉", 0.6)}
    for suggestion, expect in ((sure, Status.DISPATCHED), (unsure, Status.CLASSIFIED)):
        case = await new_case(client)

        def put(c: Case, s: dict[str, Any] = suggestion) -> dict[str, Any]:
            c.suggestion = s
            return {}

        case = await client.app[STORE].update_case(case.id, put, actor="test", action="test_suggestion")
        await dispatcher.on_case_created(case)
        stored = await client.app[STORE].get_case(case.id)
        assert stored.status == expect
        if expect == Status.DISPATCHED:
            assert stored.classification["confirmed_by"] == "system:auto"
            assert stored.classification["department"] == "城乡建设局"


async def test_recover_finishes_an_interrupted_dispatch(app_client: TestClient, receiver: Open311Receiver) -> None:
    """A process died between CONFIRMED and DISPATCHED: the sweep enqueues once and finishes the move."""
    store = app_client.app[STORE]
    dispatcher = app_client.app[DISPATCHER]
    case = await new_case(app_client)
    cls = {**CLASSIFICATION, "category_path": ["城乡建设"], "co_departments": [], "street": "", "urgency": "normal"}

    def step1(c: Case) -> dict[str, Any]:
        c.classification = cls
        return dispatcher._open_round(c, time.time(), redo=False, reason="")

    await store.update_case(case.id, step1, actor="staff:a", action="confirmed", target=Status.CONFIRMED)
    assert await dispatcher.recover(older_than_s=0) == 1
    assert await dispatcher.recover(older_than_s=0) == 0
    await wait_for(lambda: _state(app_client, case.id, "delivered"))
    assert (await store.get_case(case.id)).status == Status.DISPATCHED
    assert receiver.orders_per_case()[case.id] == 1


async def test_polling_open311_status(app_client: TestClient, receiver: Open311Receiver) -> None:
    notes = record_notifications(app_client)
    case = await dispatched(app_client, receiver)
    dispatcher = app_client.app[DISPATCHER]
    backend = app_client.app[FORWARDER].backend
    assert isinstance(backend, Open311Backend)
    ref = case.dispatch["ref"]
    assert await poll_once(dispatcher, backend) == 0  # still "open": nothing new
    receiver.status[ref].update(status="in_progress", updated_datetime="2026-01-02T10:00:00+08:00")
    assert await poll_once(dispatcher, backend) == 1
    receiver.status[ref].update(status="closed", status_notes="已更换灯泡。",
                                updated_datetime="2026-01-02T12:00:00+08:00")
    assert await poll_once(dispatcher, backend) == 1
    stored = await app_client.app[STORE].get_case(case.id)
    assert stored.status == Status.RESOLVED and stored.dispatch["reply"] == "已更换灯泡。"
    assert notes.kinds(case.id)[-1] == "resolved"
    assert await poll_once(dispatcher, backend) == 0  # resolved cases are no longer polled
