"""Call-taker defects found live: the confirmation queue's order, the call-taker's urgency, and search by the
last digits of a phone number. The whole app on loopback with the embedded Redis, through the staff API."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from aiohttp.test_utils import TestClient

from hotline.app import create_app
from hotline.appkeys import STORE
from hotline.console.event_text import describe
from hotline.records import Case
from hotline.redis_server import EmbeddedRedis
from hotline.status import Status
from hotline.store import Store
from tests.conftest import make_settings
from tests.console_support import staff_login
from tests.test_console_queue import submit, suggest

BEIJING = ZoneInfo("Asia/Shanghai")

DAY = 86400.0
CONFIRM = "/api/v1/console/cases/{}/confirm"
CLASSIFICATION = {"category": "城乡建设", "department": "城乡建设局", "type": "投诉"}
WATER = "幸福小区5栋从昨天早上开始停水，到现在还没有来水，做饭都成问题"
GAS = "楼道里燃气泄漏，味道很大，邻居家没人开门"
PLAIN = "公园里的长椅油漆脱落了，希望重新粉刷一下"


@pytest.fixture
async def quiet_client(aiohttp_client: Any, redis_server: EmbeddedRedis, tmp_path: Path,
                       key_prefix: str) -> TestClient:
    """The app with automatic merging made rare: each complaint stays its own case until staff merge it."""
    settings = make_settings(redis_server.url, tmp_path, key_prefix, dedup={"auto_merge": 0.999, "suggest": 0.99})
    return await aiohttp_client(create_app(settings))


async def suggest_keeping_urgency(store: Store, case_id: str) -> Case:
    """The console's fixture suggestion (tests/test_console_queue.py), with the urgency intake's rules gave."""
    urgency = (await store.get_case(case_id)).suggestion["urgency"]
    await suggest(store, case_id)

    def keep(c: Case) -> dict[str, Any]:
        c.suggestion["urgency"] = urgency
        return {}
    return await store.update_case(case_id, keep, actor="system", action="suggested")


async def queue_ids(staff: Any) -> list[str]:
    resp = await staff.get("/api/v1/console/queue")
    assert resp.status == 200, await resp.text()
    return [item["id"] for item in (await resp.json())["items"]]


# 1. the confirmation queue: emergencies, then returned orders, then the rest -----------------------------

async def test_an_emergency_outranks_merged_reports_age_and_returned_orders(quiet_client: TestClient) -> None:
    client = quiet_client
    store = client.app[STORE]
    old = await submit(client, "人民路口的垃圾桶坏了很久", contact="13600000001")
    parking = await submit(client, "阳光小区门口有车长期占用消防通道停车", contact="13600000002", address="阳光小区")
    reports = [await submit(client, text, contact=f"1360000001{i}") for i, text in enumerate(
        ("消防通道被私家车堵住了", "小区大门外的通道总停着车", "有车辆占道停放，救护车进不来"))]
    returned = await submit(client, "路灯不亮，晚上很黑", contact="13600000003")
    emergency = await submit(client, GAS, contact="13600000004")
    assert (await store.get_case(emergency)).emergency

    def age(c: Case) -> dict[str, Any]:
        c.created_at -= 25 * DAY
        return {}
    await store.update_case(old, age, actor="system", action="suggested")
    for target in (Status.CONFIRMED, Status.DISPATCHED, Status.RETURNED):
        await store.update_case(returned, lambda c: {}, actor="system", action=str(target), target=target)
    async with staff_login(client, "call_taker") as staff:
        for report in reports:
            resp = await staff.post_json(f"/api/v1/console/cases/{report}/merge", {"into": parking})
            assert resp.status == 200, await resp.text()
        merged = await store.get_case(parking)
        assert merged.priority == 3 and merged.reporter_count == 4 and not merged.emergency

        ids = await queue_ids(staff)
        # Before: the parking complaint (3 merged reports = 30 days' boost) and the 25-day-old case both
        # came before the 燃气泄漏 emergency.
        assert [i for i in ids if i in (emergency, returned, parking, old)] == [emergency, returned, parking, old]
        page = await (await staff.page("/console/queue")).text()
        assert page.index(emergency) < page.index(returned) < page.index(parking) < page.index(old)

        # Merged reports move a case up within its own tier: a returned order with reports stays below a
        # brand-new emergency, and an emergency with reports comes before one without.
        second = await submit(client, "小区地下室着火了，冒出很多浓烟", contact="13600000005")
        assert (await store.get_case(second)).emergency
        boost = await submit(client, "单元门口有人持刀威胁路人", contact="13600000006")
        await staff.post_json(f"/api/v1/console/cases/{boost}/merge", {"into": second})
        ids = await queue_ids(staff)
        assert [i for i in ids if i in (emergency, second, returned)] == [second, emergency, returned]


# 2. urgency: the call-taker's choice decides the time limit ---------------------------------------------

async def test_call_taker_sets_urgency_on_confirm_and_the_time_limit_follows(client: TestClient) -> None:
    store = client.app[STORE]
    water = await submit(client, WATER, contact="13600000011")
    plain = await submit(client, PLAIN, contact="13600000012")
    gas = await submit(client, GAS, contact="13600000013")
    for case_id in (water, plain, gas):
        await suggest_keeping_urgency(store, case_id)
    assert (await store.get_case(water)).suggestion["urgency"]["level"] == "urgent"
    assert (await store.get_case(plain)).suggestion["urgency"]["level"] == "normal"
    assert (await store.get_case(gas)).emergency
    async with staff_login(client, "call_taker", name="ct-urgency") as staff:
        bad = await staff.post_json(CONFIRM.format(plain), {**CLASSIFICATION, "urgency": "very"})
        assert bad.status == 422 and (await bad.json())["error"]["code"] == "bad_classification"

        resp = await staff.post_json(CONFIRM.format(water), {**CLASSIFICATION, "urgency": "normal"})
        assert resp.status == 200, await resp.text()
        out = await resp.json()
        assert out["accepted"]["urgency"] is False and out["classification"]["urgency"] == "normal"
        resp = await staff.post_json(CONFIRM.format(plain), {**CLASSIFICATION, "urgency": "urgent"})
        assert resp.status == 200, await resp.text()
        assert (await resp.json())["accepted"]["urgency"] is False
        resp = await staff.post_json(CONFIRM.format(gas), {**CLASSIFICATION, "urgency": "normal"})
        assert resp.status == 200, await resp.text()

        # The pane pre-selects the AI's urgency and offers the three levels.
        shown = await submit(client, "东湖村这两天一直停水，村民没水用了", contact="13600000014")
        await suggest_keeping_urgency(store, shown)
        frag = await (await staff.get(f"/console/queue/case/{shown}")).text()
        assert 'data-urgency="urgent"' in frag and 'data-urgency-ai="urgent"' in frag
        assert all(f'data-head="urgency" data-label="{level}"' in frag for level in ("emergency", "urgent", "normal"))

    water_case = await store.get_case(water)
    assert water_case.status == Status.DISPATCHED
    assert water_case.classification["urgency"] == "normal"
    assert water_case.dispatch["time_limit"] != "urgent"
    assert water_case.deadline_at - water_case.dispatch["confirmed_at"] > 24 * 3600
    plain_case = await store.get_case(plain)
    assert plain_case.classification["urgency"] == "urgent" and plain_case.dispatch["time_limit"] == "urgent"
    assert abs(plain_case.deadline_at - plain_case.dispatch["confirmed_at"] - 2 * 3600) < 1

    # The call-taker decides about an emergency too; the rules' finding stays with the AI suggestion and the
    # override is in the audit trail, worded for staff.
    gas_case = await store.get_case(gas)
    assert gas_case.classification["urgency"] == "normal" and not gas_case.emergency
    assert gas_case.suggestion["urgency"]["level"] == "emergency"
    assert gas_case.dispatch["time_limit"] != "urgent"
    review = next(e for e in await store.events(gas) if e.action == "ai_reviewed")
    assert review.actor == "staff:ct-urgency"
    assert review.data["changed"]["urgency"] == {"suggested": "emergency", "chosen": "normal"}
    assert "紧急程度（AI 建议：紧急，采用：一般）" in describe(review.data, BEIJING)
    review = next(e for e in await store.events(water) if e.action == "ai_reviewed")
    assert review.data["changed"]["urgency"] == {"suggested": "urgent", "chosen": "normal"}

    # Like the classifier's heads: a correction for the rules' review and the 采纳率 counters.
    rows = await store.r.xrange(f"{store.p}:nlp:corrections")
    by_case = {f["case_id"]: (json.loads(f["labels"]), json.loads(f["suggested"])) for _id, f in rows}
    assert by_case[water][0]["urgency"] == "normal" and by_case[water][1]["urgency"] == "urgent"
    assert by_case[plain][0]["urgency"] == "urgent" and by_case[plain][1]["urgency"] == "normal"
    async with staff_login(client, "supervisor") as boss:
        data = await (await boss.get("/api/v1/console/metrics/adoption")).json()
        assert data["heads"]["urgency"] == {"reviewed": 3, "accepted": 0, "rate": 0.0}
        assert data["heads"]["department"] == {"reviewed": 3, "accepted": 3, "rate": 1.0}
        page = await (await boss.page("/console/metrics")).text()
        assert 'data-head="urgency"' in page and "紧急程度" in page


async def test_confirm_without_urgency_keeps_the_rules_and_accepting_it_counts(client: TestClient) -> None:
    store = client.app[STORE]
    water = await submit(client, WATER, contact="13600000021")
    other = await submit(client, "幸福小区6栋停水了，一整天都没有水", contact="13600000022")
    for case_id in (water, other):
        await suggest_keeping_urgency(store, case_id)
    async with staff_login(client, "call_taker") as staff:
        resp = await staff.post_json(CONFIRM.format(water), CLASSIFICATION)  # an API client naming no urgency
        assert resp.status == 200, await resp.text()
        assert "urgency" not in (await resp.json())["accepted"]
        resp = await staff.post_json(CONFIRM.format(other), {**CLASSIFICATION, "urgency": "urgent"})
        assert (await resp.json())["accepted"]["urgency"] is True
    # Both are urgent; the one the rules alone found (a water outage) has the utilities limit (3 h), the one a
    # call-taker marked 加急 the urgent limit (2 h).
    for case_id, limit in ((water, "utilities"), (other, "urgent")):
        case = await store.get_case(case_id)
        assert case.classification["urgency"] == "urgent" and case.dispatch["time_limit"] == limit


async def test_intake_call_taker_chooses_urgency_and_the_queue_keeps_it(client: TestClient) -> None:
    store = client.app[STORE]
    async with staff_login(client, "call_taker", name="ct-intake") as staff:
        bad = await staff.post_json("/api/v1/console/intake", {"text": PLAIN, "urgency": "asap"})
        assert bad.status == 422 and (await bad.json())["error"]["code"] == "bad_field"

        resp = await staff.post_json("/api/v1/console/intake",
                                     {"phone": "13600000031", "text": WATER, "urgency": "normal"})
        assert resp.status == 201, await resp.text()
        water = (await resp.json())["case_id"]
        resp = await staff.post_json("/api/v1/console/intake",
                                     {"phone": "13600000032", "text": PLAIN, "urgency": "emergency"})
        assert resp.status == 201, await resp.text()
        body = await resp.json()
        plain = body["case_id"]
        assert "110" in body["reply"]  # the call-taker's emergency: the caller is told to call 110/119/120

        case = await store.get_case(water)
        assert case.suggestion["urgency"]["level"] == "urgent"  # what the rules said stays visible
        assert case.classification == {"urgency": "normal"} and case.priority == 0 and not case.emergency
        event = next(e for e in await store.events(water) if e.action == "urgency_set")
        assert event.actor == "staff:ct-intake" and event.data == {"suggested": "urgent", "chosen": "normal"}
        raised = await store.get_case(plain)
        assert raised.emergency and raised.classification == {"urgency": "emergency"}
        assert (await queue_ids(staff))[0] == plain

        # The queue pre-selects the call-taker's choice; the AI's level is still shown beside it.
        await suggest_keeping_urgency(store, water)
        frag = await (await staff.get(f"/console/queue/case/{water}")).text()
        assert 'data-urgency="normal"' in frag and 'data-urgency-ai="urgent"' in frag
        # A confirmation naming no urgency keeps the call-taker's.
        resp = await staff.post_json(CONFIRM.format(water), CLASSIFICATION)
        assert resp.status == 200, await resp.text()
    case = await store.get_case(water)
    assert case.classification["urgency"] == "normal" and case.dispatch["time_limit"] != "urgent"


# 3. search by the last digits of a phone number -----------------------------------------------------------

async def test_search_by_the_last_four_to_six_digits_of_a_phone(client: TestClient) -> None:
    store = client.app[STORE]
    mine = await submit(client, "人民路井盖松动，车开过去响", contact="13600003333")
    other = await submit(client, "解放路路灯不亮", contact="13600004444")
    text = await submit(client, "请到幸福路3333号门口看看，垃圾堆了好几天", contact="13900001212")
    async with staff_login(client, "call_taker") as staff:
        async def ids(query: str) -> list[str]:
            resp = await staff.get(f"/api/v1/console/search?{query}")
            assert resp.status == 200, await resp.text()
            return [r["id"] for r in (await resp.json())["results"]]

        # The last 4 digits the citizen reads out find the case; the same digits in a text are found too.
        assert sorted(await ids("q=3333")) == sorted([mine, text])
        assert await ids("q=03333") == [mine]
        assert await ids("q=003333") == [mine]
        assert await ids("q=4444") == [other]
        assert await ids("q=%EF%BC%94%EF%BC%94%EF%BC%94%EF%BC%94") == [other]  # full-width ４４４４
        assert await ids("q=1212") == [text]
        assert await ids("q=13600003333") == [mine]
        assert await ids("q=5555") == []
        assert sorted(await ids("q=%EF%BC%93%EF%BC%93%EF%BC%93%EF%BC%93")) == sorted([mine, text])  # ３３３３
        assert await ids("q=3333&from=2001-01-01&to=2001-01-02") == []
        found = await (await staff.get("/api/v1/console/search?q=3333")).json()
        contacts = {r["id"]: r["contact"] for r in found["results"]}
        assert contacts[mine] == "136****3333" and "13600003333" not in json.dumps(found)
        page = await (await staff.page("/console/search?q=3333")).text()
        assert mine in page and "136****3333" in page and "13600003333" not in page

    # A number inside the text is searched as staff see it (masked): digits typed one at a time cannot tell it.
    masked = await submit(client, "邻居电话13912349278总是半夜打来骚扰", contact="13800001111")
    async with staff_login(client, "call_taker") as staff:
        assert masked in await ids("q=9278")  # shown as 139****9278
        assert masked not in await ids("q=49278") and masked not in await ids("q=349278")
        assert masked in await ids("q=1111")

    # A merged reporter's number finds the case worked on.
    report = await submit(client, "人民路那个井盖还是松的", contact="13700009876")
    await store.update_case(report, lambda c: {}, actor="system", action="suggested")
    async with staff_login(client, "call_taker") as staff:
        resp = await staff.post_json(f"/api/v1/console/cases/{report}/merge", {"into": mine})
        if resp.status == 409:  # intake merged it already
            assert (await store.get_case(report)).duplicate_of == mine
        else:
            assert resp.status == 200, await resp.text()
        found = [r["id"] for r in (await (await staff.get("/api/v1/console/search?q=9876")).json())["results"]]
        assert mine in found
