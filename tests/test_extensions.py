"""延期申请: a unit's extension request comes in through the real signed events endpoint, a supervisor approves
(perhaps fewer hours) or refuses it through the staff API or the 督办 page in real Chromium; the deadline, the
overdue views, the audit trail, the citizen's notice and status page follow."""

from __future__ import annotations

import asyncio
import time
from datetime import datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from aiohttp.test_utils import TestClient

from hotline.app import create_app
from hotline.appkeys import DISPATCHER, STORE
from hotline.console.views import event_view
from hotline.pages import format_ts
from hotline.records import Case
from hotline.redis_server import EmbeddedRedis
from hotline.status import Status
from tests.browser import chromium
from tests.console_support import add_user, sign_in, staff_login
from tests.dispatch_support import Open311Receiver, post_event, record_notifications
from tests.test_dispatch_app import dispatch_settings, dispatched, event
from tests.test_supervision import move_deadline, table_ids

TZ = ZoneInfo("Asia/Shanghai")
API = "/api/v1/dispatch/extensions"



@pytest.fixture
async def app_client(aiohttp_client: Any, redis_server: EmbeddedRedis, tmp_path: Path, key_prefix: str,
                     receiver: Open311Receiver) -> TestClient:
    return await aiohttp_client(create_app(dispatch_settings(redis_server, tmp_path, key_prefix, receiver.url)))


async def request_extension(client: TestClient, case: Case, hours: float, reason: str,
                            event_id: str = "") -> tuple[int, Any]:
    return await post_event(client, event(case, "extension_requested", event_id, extension_hours=hours,
                                          reason=reason))


async def pending(staff: Any) -> list[dict[str, Any]]:
    resp = await staff.get(API)
    assert resp.status == 200, await resp.text()
    return (await resp.json())["items"]


async def test_approved_with_fewer_hours_moves_the_deadline_and_the_citizen_is_told(
        app_client: TestClient, receiver: Open311Receiver) -> None:
    store, dispatcher = app_client.app[STORE], app_client.app[DISPATCHER]
    notes = record_notifications(app_client)
    case = await dispatched(app_client, receiver, "幸福里小区门口的路面塌陷了一个坑", contact="13811113333")
    # Already overdue and flagged by the sweep: it can still be extended.
    late = time.time() - 2 * 3600
    await move_deadline(app_client, case, late)
    assert await dispatcher.flag_overdue() == 1

    status, body = await request_extension(app_client, case, 48, "需协调产权单位，联系人13912345678")
    assert (status, body["result"]) == (200, "applied")
    async with staff_login(app_client, "supervisor") as sup:
        overdue = await (await sup.get("/api/v1/cases?overdue=1")).json()
        assert [c["id"] for c in overdue["cases"]] == [case.id]
        [row] = await pending(sup)
        assert row["case_id"] == case.id and row["department"] == "城乡建设局"
        assert row["requested_hours"] == 48 and row["deadline_at"] == late and row["overdue"] is True
        assert row["proposed_deadline_at"] == late + 48 * 3600
        assert row["reason"] == "需协调产权单位，联系人139****5678" and row["extensions"] == 0
        assert row["request_id"] and row["round"] == 1

        resp = await sup.post_json(f"{API}/{case.id}/approve", {"hours": 24, "note": "先给一天",
                                                                  "request_id": row["request_id"]})
        assert resp.status == 200, await resp.text()
        out = await resp.json()
        new = late + 24 * 3600
        assert out["result"] == "approved" and out["hours"] == 24 and out["requested_hours"] == 48
        assert out["deadline_at"] == new and out["previous_deadline_at"] == late
        assert out["overdue"] is False and out["extensions"] == 1
        assert out["deadline_text"] == datetime.fromtimestamp(new, TZ).strftime("%Y年%m月%d日 %H:%M")

        assert await pending(sup) == []
        overdue = await (await sup.get("/api/v1/cases?overdue=1")).json()
        assert overdue["cases"] == []
        listed = await (await sup.get("/api/v1/cases?status=dispatched&limit=200")).json()
        mine = next(c for c in listed["cases"] if c["id"] == case.id)
        assert mine["deadline_at"] == new and mine["overdue"] is False

    stored = await store.get_case(case.id)
    assert stored.deadline_at == new and stored.dispatch["overdue_flagged"] is False
    assert "extension_request" not in stored.dispatch
    assert [h["outcome"] for h in stored.dispatch["extensions"]] == ["approved"]
    assert await store.r.zscore(dispatcher.outbox.k_open, case.id) == new  # the overdue views' index
    assert [c.id for c in await dispatcher.due_soon(23 * 3600)] == [case.id]
    assert await dispatcher.flag_overdue() == 0  # not overdue any more: no second 超期 entry

    trail = await store.events(case.id)
    approved = [e for e in trail if e.action == "extension_approved"]
    assert len(approved) == 1 and approved[0].actor.startswith("staff:")
    assert approved[0].data["hours"] == 24 and approved[0].data["requested_hours"] == 48
    assert approved[0].data["previous_deadline_at"] == late and approved[0].data["deadline_at"] == new
    view = event_view(approved[0], TZ)
    assert view["action_label"] == "同意延期"
    assert "延期小时数：24" in view["details"] and "申请延期小时数：48" in view["details"]
    assert f"原办理期限：{format_ts(late, TZ)}" in view["details"]
    assert [e.action for e in trail].count("overdue") == 1

    # The citizen: a notice on their channel with the new time, and the status page shows it.
    assert notes.kinds(case.id) == ["dispatched", "extension"]
    told = notes.sent[-1].text
    assert datetime.fromtimestamp(new, TZ).strftime("%Y年%m月%d日 %H:%M") in told and case.id in told
    page = await (await app_client.post("/status", data={"case_id": case.id, "last4": "3333"})).text()
    assert f'id="case-deadline">办理时限：{format_ts(new, TZ)} 前反馈' in page
    assert "办理时限延长" in page
    sid = stored.id
    view311 = (await (await app_client.get(f"/open311/v2/requests/{sid}.json")).json())[0]
    assert view311["expected_datetime"] == datetime.fromtimestamp(new, TZ).isoformat(timespec="seconds")


async def test_refused_request_leaves_the_deadline(app_client: TestClient, receiver: Open311Receiver) -> None:
    store = app_client.app[STORE]
    notes = record_notifications(app_client)
    case = await dispatched(app_client, receiver)
    assert (await request_extension(app_client, case, 72, "材料未到"))[0] == 200
    async with staff_login(app_client, "supervisor") as sup:
        resp = await sup.post_json(f"{API}/{case.id}/refuse", {"note": "  "})
        assert resp.status == 422 and (await resp.json())["error"]["code"] == "missing_field"
        resp = await sup.post_json(f"{API}/{case.id}/refuse", {"note": "时限内可以办完，请抓紧"})
        assert resp.status == 200, await resp.text()
        out = await resp.json()
        assert out["result"] == "refused" and out["deadline_at"] == case.deadline_at and out["extensions"] == 0
        assert await pending(sup) == []
        # Nothing left to decide.
        resp = await sup.post_json(f"{API}/{case.id}/approve", {})
        assert resp.status == 409 and (await resp.json())["error"]["code"] == "no_pending_extension"
    stored = await store.get_case(case.id)
    assert stored.deadline_at == case.deadline_at and "extension_request" not in stored.dispatch
    assert stored.dispatch["extensions"][-1]["outcome"] == "refused"
    refused = [e for e in await store.events(case.id) if e.action == "extension_refused"]
    assert len(refused) == 1 and refused[0].data["note"] == "时限内可以办完，请抓紧"
    assert event_view(refused[0], TZ)["action_label"] == "不同意延期"
    assert notes.kinds(case.id) == ["dispatched"]


async def test_only_supervisors_see_and_decide_requests(app_client: TestClient, receiver: Open311Receiver) -> None:
    case = await dispatched(app_client, receiver)
    assert (await request_extension(app_client, case, 24, "需要协调"))[0] == 200
    assert (await app_client.get(API)).status == 401
    assert (await app_client.post(f"{API}/{case.id}/approve", json={})).status == 401
    for role in ("call_taker", "follow_up"):
        async with staff_login(app_client, role) as staff:
            for method, path, body in (("GET", API, None), ("POST", f"{API}/{case.id}/approve", {}),
                                       ("POST", f"{API}/{case.id}/refuse", {"note": "不行"})):
                resp = await staff.request(method, path, json=body)
                assert resp.status == 403, (role, path)
                assert (await resp.json())["error"]["code"] == "forbidden"
            page = await staff.page("/console/supervision")
            assert page.status == 403
    async with staff_login(app_client, "supervisor") as sup:
        # The CSRF token is required like on every staff write.
        resp = await sup.post_json(f"{API}/{case.id}/approve", {}, csrf=False)
        assert resp.status == 403
        assert [r["case_id"] for r in await pending(sup)] == [case.id]
    assert (await app_client.app[STORE].get_case(case.id)).deadline_at == case.deadline_at


async def test_requests_on_cases_not_being_handled(app_client: TestClient, receiver: Open311Receiver) -> None:
    store = app_client.app[STORE]
    returned = await dispatched(app_client, receiver)
    assert (await post_event(app_client, event(returned, "returned", reason="不属于本单位职责")))[0] == 200
    status, body = await request_extension(app_client, returned, 24, "需要协调")
    assert status == 409 and body["error"]["code"] == "invalid_transition" and "申请延期" in body["error"]["message"]
    assert "extension_request" not in (await store.get_case(returned.id)).dispatch

    resolved = await dispatched(app_client, receiver)
    assert (await post_event(app_client, event(resolved, "resolved", reply="已处理")))[0] == 200
    status, body = await request_extension(app_client, resolved, 24, "需要协调")
    assert status == 409 and body["error"]["code"] == "invalid_transition"

    # Pending, then the unit returns the order: the request ends with the round.
    case = await dispatched(app_client, receiver)
    assert (await request_extension(app_client, case, 24, "需要协调"))[0] == 200
    assert (await post_event(app_client, event(case, "returned", reason="应由街道办理")))[0] == 200
    async with staff_login(app_client, "supervisor") as sup:
        assert await pending(sup) == []
        resp = await sup.post_json(f"{API}/{case.id}/approve", {"hours": 12})
        assert resp.status == 409 and (await resp.json())["error"]["code"] == "invalid_transition"
        assert (await sup.post_json(f"{API}/20990101-000001/approve", {})).status == 404
        assert (await sup.post_json(f"{API}/not-a-case/refuse", {"note": "x"})).status == 404
    assert (await store.get_case(case.id)).status == Status.RETURNED


async def test_a_second_request_replaces_the_pending_one(app_client: TestClient, receiver: Open311Receiver) -> None:
    store, dispatcher = app_client.app[STORE], app_client.app[DISPATCHER]
    case = await dispatched(app_client, receiver)
    assert (await request_extension(app_client, case, 24, "材料未到", "evt-ext-a"))[0] == 200
    status, body = await request_extension(app_client, case, 72, "需等待供货", "evt-ext-b")
    assert (status, body["result"]) == (200, "applied")
    second = [e for e in await store.events(case.id) if e.action == "extension_requested"][-1]
    assert second.data["replaces"] == {"hours": 24, "reason": "材料未到", "event_id": "evt-ext-a"}
    assert "替换此前的申请（延期小时数：24" in event_view(second, TZ)["details"]

    async with staff_login(app_client, "supervisor") as sup:
        [row] = await pending(sup)
        assert (row["requested_hours"], row["reason"], row["request_id"]) == (72, "需等待供货", "evt-ext-b")
        # Deciding the request the supervisor saw, which the unit has replaced meanwhile: refused.
        resp = await sup.post_json(f"{API}/{case.id}/approve", {"request_id": "evt-ext-a"})
        assert resp.status == 409 and (await resp.json())["error"]["code"] == "extension_changed"
        resp = await sup.post_json(f"{API}/{case.id}/approve", {"hours": 100})
        assert resp.status == 422 and (await resp.json())["error"]["code"] == "too_many_hours"
        for bad in ({"hours": 0}, {"hours": -1}, {"hours": "24"}, {"hours": True}, {"note": 5}, {"hours": 2161}):
            resp = await sup.post_json(f"{API}/{case.id}/approve", bad)
            assert resp.status == 422, bad
        resp = await sup.post_json(f"{API}/{case.id}/approve", {"request_id": "evt-ext-b"})
        assert resp.status == 200 and (await resp.json())["hours"] == 72

        # The same unit asks again: a new pending request, and the supervisor sees the case was extended before.
        assert (await request_extension(app_client, case, 24, "仍需协调", "evt-ext-c"))[0] == 200
        [row] = await pending(sup)
        assert (row["extensions"], row["extended_hours"], row["refused"]) == (1, 72, 0)
        assert row["proposed_deadline_at"] == case.deadline_at + (72 + 24) * 3600

        # A retry of the event after a lost answer puts a lost index entry back.
        await dispatcher.extension_index.remove(case.id)
        assert await pending(sup) == []
        status, body = await request_extension(app_client, case, 24, "仍需协调", "evt-ext-c")
        assert (status, body["result"]) == (200, "duplicate")
        assert [r["case_id"] for r in await pending(sup)] == [case.id]

        # Two supervisors at once: one decision wins, the other is told there is nothing left.
        answers = await asyncio.gather(sup.post_json(f"{API}/{case.id}/approve", {}),
                                       sup.post_json(f"{API}/{case.id}/refuse", {"note": "不同意"}))
        assert sorted(r.status for r in answers) == [200, 409]
    stored = await store.get_case(case.id)
    assert len(stored.dispatch["extensions"]) == 2 and "extension_request" not in stored.dispatch


async def test_a_request_of_an_earlier_round_is_ignored(app_client: TestClient, receiver: Open311Receiver) -> None:
    case = await dispatched(app_client, receiver)
    assert (await post_event(app_client, event(case, "returned", reason="不属于本单位")))[0] == 200
    await app_client.app[DISPATCHER].confirm(case.id, {"category": "城乡建设", "department": "住建局"}, "staff:a")
    status, body = await request_extension(app_client, case, 24, "旧工单的申请")  # order id of round 1
    assert (status, body["result"]) == (200, "ignored")
    async with staff_login(app_client, "supervisor") as sup:
        assert await pending(sup) == []


@pytest.mark.browser
async def test_supervisor_decides_on_the_supervision_page(app_client: TestClient, receiver: Open311Receiver,
                                                          artifacts: Path) -> None:
    from tests.test_accessibility import violations

    store = app_client.app[STORE]
    notes = record_notifications(app_client)
    first = await dispatched(app_client, receiver, "建设路人行道上的共享单车乱停")
    second = await dispatched(app_client, receiver, "和平巷的健身器材有一个坏了")
    assert (await request_extension(app_client, first, 48, "需协调共享单车企业"))[0] == 200
    assert (await request_extension(app_client, second, 24, "配件未到"))[0] == 200
    async with staff_login(app_client, "supervisor") as sup:
        html = await (await sup.page("/console/supervision")).text()
    assert table_ids(html, "extensions") == [first.id, second.id]
    row = html.split(f'data-case-id="{first.id}"', 1)[1].split("</tr>", 1)[0]
    assert "48 小时（2 天）" in row and "需协调共享单车企业" in row and "城乡建设局" in row
    assert format_ts(first.deadline_at + 48 * 3600, TZ) in row

    await add_user(store, "banzhang", "supervisor")
    base = str(app_client.make_url("")).rstrip("/")
    async with chromium() as browser:
        page = await browser.new_page()
        await sign_in(page, base, "banzhang")
        await page.goto(f"{base}/console/supervision")
        await page.wait_for_selector("body[data-ready='1']")
        assert await violations(page, "supervision with extension requests") == []
        assert await page.inner_text("#extension-count") == "2"
        assert await page.inner_text("#extension-total") == "2"  # in the page's summary line too
        first_row = f'#extensions tr[data-case-id="{first.id}"]'
        await page.fill(f"{first_row} input.ext-hours", "12")
        await page.click(f"{first_row} button.ext-approve")
        await page.wait_for_selector(f"{first_row}.done")
        assert "已同意，办理期限延至" in await page.inner_text(f"{first_row} td.ext-decide")
        second_row = f'#extensions tr[data-case-id="{second.id}"]'
        await page.click(f"{second_row} button.ext-refuse")  # no reason given: not sent
        await page.wait_for_selector("#toast:has-text('填写理由')")
        await page.fill(f"{second_row} input.ext-note", "请在原时限内办结")
        await page.click(f"{second_row} button.ext-refuse")
        await page.wait_for_selector(f"{second_row}.done")
        assert await page.inner_text("#extension-count") == "0"
        assert await page.inner_text("#extension-total") == "0"
        await page.screenshot(path=str(artifacts / "supervision-extensions.png"), full_page=True)

    assert (await store.get_case(first.id)).deadline_at == first.deadline_at + 12 * 3600
    assert (await store.get_case(second.id)).deadline_at == second.deadline_at
    trail = {e.action: e for e in await store.events(first.id)} | {e.action: e for e in await store.events(second.id)}
    assert trail["extension_approved"].actor == trail["extension_refused"].actor == "staff:banzhang"
    assert trail["extension_refused"].data["note"] == "请在原时限内办结"
    assert notes.kinds(first.id)[-1] == "extension" and notes.kinds(second.id) == ["dispatched"]


async def test_an_extension_that_would_not_move_the_deadline_or_leaves_it_past_is_refused(
        app_client: TestClient, receiver: Open311Receiver) -> None:
    """The citizen is told of a new time limit only when there is one: a request of a few seconds is refused by
    the events endpoint, and an approval that leaves the deadline in the past by the staff API."""
    store = app_client.app[STORE]
    notes = record_notifications(app_client)
    case = await dispatched(app_client, receiver)
    for hours in (1e-300, 0.0001, 0.2):
        status, body = await request_extension(app_client, case, hours, "需协调")
        assert status == 422 and body["error"]["code"] == "bad_field", (hours, body)
    late = time.time() - 5 * 3600
    await move_deadline(app_client, case, late)
    assert (await request_extension(app_client, case, 8, "材料未到"))[0] == 200
    async with staff_login(app_client, "supervisor") as sup:
        for hours in (1e-300, 0.2):
            resp = await sup.post_json(f"{API}/{case.id}/approve", {"hours": hours})
            assert resp.status == 422 and (await resp.json())["error"]["code"] == "bad_field", hours
        resp = await sup.post_json(f"{API}/{case.id}/approve", {"hours": 2})  # 3 h short of today
        assert resp.status == 422, await resp.text()
        body = await resp.json()
        assert body["error"]["code"] == "deadline_still_past" and "仍早于现在" in body["error"]["message"]
        assert [row["case_id"] for row in await pending(sup)] == [case.id]  # still to decide
        resp = await sup.post_json(f"{API}/{case.id}/approve", {"hours": 8})
        assert resp.status == 200, await resp.text()
    stored = await store.get_case(case.id)
    assert stored.deadline_at == late + 8 * 3600 > time.time()
    assert [e.action for e in await store.events(case.id)].count("extension_approved") == 1
    assert notes.kinds(case.id) == ["dispatched", "extension"]
