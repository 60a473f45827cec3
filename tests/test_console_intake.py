"""人工受理: a call-taker registers a caller's complaint, with the AI's view of it while typing.

Real app on loopback (embedded Redis, shipped models, the duplicate matcher on); the browser flow runs in
real Chromium.
"""

from __future__ import annotations

import json
import re
import uuid
from pathlib import Path
from typing import Any

from aiohttp.test_utils import TestClient

from hotline.appkeys import STORE
from hotline.status import Status
from tests.answers_support import BABY_Q, add_entries, answers_client, staff_headers
from tests.browser import chromium
from tests.console_support import DEFAULT_PASSWORD, add_user, staff_login
from tests.test_dedup import BBQ_1, BBQ_2, LIFT

CALLER = "13912345678"
PREVIEW = "/api/v1/console/intake/preview"
REGISTER = "/api/v1/console/intake"


async def post(client: TestClient, text: str, contact: str) -> dict[str, Any]:
    resp = await client.post("/api/v1/complaints", json={"text": text, "contact": contact})
    assert resp.status == 201, await resp.text()
    return await resp.json()


async def case_count(client: TestClient) -> int:
    return len(await client.app[STORE].case_ids(offset=0, limit=1000))


async def test_preview_shows_the_pipelines_view_and_stores_nothing(client: TestClient) -> None:
    earlier = await post(client, BBQ_1, "13800000001")
    mine = await post(client, LIFT, CALLER)
    before = await case_count(client)
    async with staff_login(client, "call_taker") as staff:
        resp = await staff.post_json(PREVIEW, {"phone": CALLER, "text": "阳"})
        assert resp.status == 200 and await resp.json() == {"ready": False}
        resp = await staff.post_json(PREVIEW, {"phone": CALLER, "address": "", "text": BBQ_2})
        assert resp.status == 200, await resp.text()
        data = await resp.json()
    assert data["ready"] and not data["emergency"] and data["advice"] == ""
    assert all(len(data["heads"][h]) >= 1 for h in ("category", "department", "type"))
    assert [d["case_id"] for d in data["duplicates"]][:1] == [earlier["case_id"]]
    first = data["duplicates"][0]
    assert first["merge"] is True and "文字相似度" in first["reason_text"] and "烧烤" in first["text"]
    # The caller's own earlier case, found by the number on the line; the number itself is not echoed.
    assert [h["id"] for h in data["history"]] == [mine["case_id"]]
    assert CALLER not in json.dumps(data, ensure_ascii=False)
    assert data["phone_ok"] is True
    stamp = re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d")
    assert all(stamp.fullmatch(row["created"]) for row in data["duplicates"] + data["history"])
    # A number still being typed: everything but the caller's history is there, and the number is flagged.
    async with staff_login(client, "call_taker") as staff:
        typing = await (await staff.post_json(PREVIEW, {"phone": "139", "text": BBQ_2})).json()
    assert typing["ready"] and typing["phone_ok"] is False and typing["history"] == []
    assert [d["case_id"] for d in typing["duplicates"]][:1] == [earlier["case_id"]]
    assert await case_count(client) == before


async def test_preview_points_an_emergency_to_110_119_120(client: TestClient) -> None:
    async with staff_login(client, "call_taker") as staff:
        data = await (await staff.post_json(PREVIEW, {"text": "楼道里燃气泄漏，味道很大，有人晕倒了"})).json()
    assert data["emergency"] is True and "119" in data["advice"] and "120" in data["advice"]
    assert data["urgency"]["level"] == "emergency" and data["urgency"]["reasons"]


async def test_registering_files_a_phone_case_taken_by_the_call_taker(client: TestClient) -> None:
    store = client.app[STORE]
    async with staff_login(client, "call_taker") as staff:
        key = {"Idempotency-Key": uuid.uuid4().hex}
        body = {"phone": CALLER, "name": "王先生", "address": "幸福路12号",
                "text": "幸福路12号门口的井盖丢了，晚上很危险"}
        resp = await staff.post_json(REGISTER, body, headers=key)
        assert resp.status == 201, await resp.text()
        made = await resp.json()
        # The call-taker pressed 登记 twice: still one case.
        again = await staff.post_json(REGISTER, body, headers=key)
        assert again.status == 200 and (await again.json())["case_id"] == made["case_id"]
    case = await store.get_case(made["case_id"])
    assert case.channel == "voice" and case.contact == CALLER and case.sender == CALLER
    assert case.name == "王先生" and case.address == "幸福路12号" and case.status == Status.CLASSIFIED
    assert made["queue_url"] == f"/console/queue?case={case.id}" and made["case_url"] == f"/console/cases/{case.id}"
    assert case.id in made["reply"]
    received = (await store.events(case.id))[0]
    assert received.action == "received" and received.actor == staff.actor
    assert received.data["taken_by"] == staff.name and received.data["channel"] == "voice"


async def test_a_repeat_registered_by_phone_joins_the_open_case(client: TestClient) -> None:
    earlier = await post(client, BBQ_1, "13800000001")
    async with staff_login(client, "call_taker") as staff:
        made = await (await staff.post_json(REGISTER, {"phone": CALLER, "text": BBQ_2})).json()
    assert made["merged_into"] == earlier["case_id"] and made["status"] == "merged"
    master = await client.app[STORE].get_case(earlier["case_id"])
    assert master.reporter_count == 2 and master.reports[0].channel == "voice"


async def test_calls_without_caller_id_are_not_one_caller(client: TestClient) -> None:
    async with staff_login(client, "call_taker") as staff:
        first = await (await staff.post_json(REGISTER, {"text": "东湖村的路灯坏了三盏"})).json()
        data = await (await staff.post_json(PREVIEW, {"text": "光明小区门口垃圾堆放多日无人清理"})).json()
    assert first["status"] == "classified" and data["history"] == []
    case = await client.app[STORE].get_case(first["case_id"])
    assert case.sender == "unknown" and case.contact == ""
    assert await client.app[STORE].caller_history(case) == []


async def test_bad_input_gets_a_clear_error_and_no_case(client: TestClient) -> None:
    before = await case_count(client)
    async with staff_login(client, "call_taker") as staff:
        for body, code in [({"text": ""}, "empty_text"), ({"text": "路灯坏了", "phone": "请回电"}, "bad_contact"),
                           ({"text": 12}, "bad_field"), ({"text": "路灯坏了", "name": ["a"]}, "bad_field"),
                           ({"text": None}, "bad_field"), ({"phone": CALLER}, "missing_field"),
                           ({"text": "路灯坏了", "address": "路" * 501}, "bad_address")]:
            resp = await staff.post_json(REGISTER, body)
            assert resp.status == 422, (body, await resp.text())
            assert (await resp.json())["error"]["code"] == code
        resp = await staff.request("POST", REGISTER, data=b"not json", headers={"Content-Type": "application/json"})
        assert resp.status == 400
        resp = await staff.request("POST", PREVIEW, data="x", headers={"Content-Type": "text/plain"})
        assert resp.status == 415
        resp = await staff.post_json(REGISTER, {"text": "路灯坏了"}, csrf=False)
        assert resp.status == 403
    assert await case_count(client) == before


async def test_only_call_takers_and_supervisors_register(client: TestClient) -> None:
    async with staff_login(client, "follow_up") as staff:
        assert (await staff.page("/console/intake")).status == 403
        assert (await staff.post_json(REGISTER, {"text": "路灯坏了"})).status == 403
        assert (await staff.post_json(PREVIEW, {"text": "路灯坏了"})).status == 403
    assert (await client.post(REGISTER, json={"text": "路灯坏了"})).status in (401, 403)
    async with staff_login(client, "supervisor") as staff:
        page = await staff.page("/console/intake?phone=139-1234-5678")
        html = await page.text()
        assert page.status == 200 and 'value="139-1234-5678"' in html
        html = await (await staff.page('/console/intake?phone="><script>')).text()
        assert "<script>" not in html.split('id="in-phone"', 1)[1].split(">", 1)[0]


async def test_call_taker_registers_a_call_in_chromium(client: TestClient, artifacts: Path) -> None:
    earlier = await post(client, BBQ_1, "13800000001")
    user = await add_user(client.app[STORE], role="call_taker")
    base = str(client.make_url("")).rstrip("/")
    async with chromium() as browser:
        page = await browser.new_page()
        await page.goto(f"{base}/console/login?next=/console/intake%3Fphone%3D{CALLER}")
        await page.fill("input[name=name]", user.name)
        await page.fill("input[name=password]", DEFAULT_PASSWORD)
        await page.click("button[type=submit]")
        await page.wait_for_selector("body[data-page=intake][data-ready='1']")
        assert await page.input_value("#in-phone") == CALLER
        await page.fill("#in-address", "阳光花园小区3栋")
        await page.fill("#in-text", BBQ_2)
        dup = page.locator(f"#as-dups li[data-case-id='{earlier['case_id']}']")
        await dup.wait_for()
        assert "自动并入" in await dup.inner_text()
        assert (await page.inner_text("#as-heads")).startswith("类别")
        await page.screenshot(path=str(artifacts / "console-intake.png"), full_page=True)
        await page.press("#in-text", "Control+Enter")
        await page.wait_for_selector("#in-result:not([hidden])")
        number = await page.inner_text("#in-case-id")
        assert earlier["case_id"] in await page.inner_text("#in-reply")
        assert await page.is_hidden("#in-confirm")  # merged: nothing left to confirm
        # The next call: a clean form; a plain new complaint goes on to the queue with its case open.
        await page.click("#in-reset")
        await page.fill("#in-phone", "13700001111")
        await page.fill("#in-text", "东湖村村口的宣传栏倒了，挡住了半条路")
        # The AI's urgency is pre-selected; the call-taker raises it.
        await page.wait_for_selector("#in-urgency-ai:has-text('AI 建议：一般')")
        await page.select_option("#in-urgency", "urgent")
        await page.click("#in-submit")
        await page.wait_for_selector("#in-result:not([hidden])")
        second = await page.inner_text("#in-case-id")
        assert second != number
        await page.click("#in-confirm")
        await page.wait_for_selector(f"article.case-detail[data-case-id='{second}'][data-urgency='urgent']")
        assert "加急" in await page.inner_text("#chosen-urgency")
    master = await client.app[STORE].get_case(earlier["case_id"])
    assert [r.report_id for r in master.reports] == [number]
    assert (await client.app[STORE].get_case(second)).classification == {"urgency": "urgent"}


async def test_preview_offers_knowledge_base_answers_to_a_question(aiohttp_client: Any, redis_server: Any,
                                                                  tmp_path: Path, key_prefix: str) -> None:
    client = await answers_client(aiohttp_client, redis_server.url, tmp_path, key_prefix)
    await add_entries(client, await staff_headers(client, "kb-editor", "supervisor"))
    async with staff_login(client, "call_taker") as staff:
        data = await (await staff.post_json(PREVIEW, {"phone": CALLER, "text": BABY_Q})).json()
        other = await (await staff.post_json(PREVIEW, {"text": "幸福路12号门口的井盖丢了，晚上很危险"})).json()
    assert data["consultation"] is True
    assert data["answers"][0]["answer"].startswith("新生儿凭出生医学证明") and data["answers"][0]["confident"]
    assert data["answers"][0]["department"] == "医疗保障局"
    assert other["consultation"] is False
    assert all(not a["answer"].startswith("新生儿") for a in other["answers"])
