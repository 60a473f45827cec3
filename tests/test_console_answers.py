"""Answers for consultations in the staff console, in real headless Chromium: a call-taker sees the suggested
answers of a consultation in the confirmation queue and sends one (the case closes as 直接答复); a supervisor
adds, edits and retires a knowledge-base entry on /console/kb; other roles and anonymous visitors are refused.
Screenshots go to the artifacts dir."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestClient, TestServer
from playwright.async_api import Page

from hotline.app import create_app
from hotline.appkeys import ANSWERS, STORE
from hotline.nlp.answers import ACTIVE, RETIRED
from hotline.status import Status
from tests.answers_support import ENTRIES, TODAY
from tests.browser import chromium
from tests.conftest import make_settings
from tests.console_support import DEFAULT_PASSWORD, add_user, staff_login

# Staff see suggestions from 0.1 up; a citizen would get an answer at intake only at a perfect score, so the
# consultation below (worded differently from the entry) waits in the queue for a call-taker.
KB_SETTINGS = {"threshold": 1.0, "suggest_threshold": 0.1}
CONSULTATION = "你好，想问一下新生儿医保怎么办理，要带哪些材料？"
UNRELATED = "幸福小区东门下水道堵了，污水漫到路上"


async def login(page: Page, base: str, name: str) -> None:
    await page.goto(f"{base}/console/login")
    await page.fill("#name", name)
    await page.fill("#password", DEFAULT_PASSWORD)
    await page.click("#login")


@pytest.mark.browser
async def test_call_taker_sends_a_suggested_answer_and_supervisor_edits_the_kb(
    redis_server: Any, tmp_path: Path, key_prefix: str, artifacts: Path
) -> None:
    server = TestServer(create_app(make_settings(redis_server.url, tmp_path, key_prefix, kb=KB_SETTINGS)),
                        host="127.0.0.1")
    await server.start_server()
    try:
        app = server.app
        store = app[STORE]
        service = app[ANSWERS]
        base = str(server.make_url("")).rstrip("/")
        await service.ready.wait()
        await add_user(store, "wangfang", "call_taker", display_name="王芳")
        await add_user(store, "banzhang", "supervisor")
        ids = [(await service.kb.add(e, actor="staff:seed")).id for e in ENTRIES]
        await service.refresh()

        async with aiohttp.ClientSession() as http:
            async def submit(text: str, contact: str) -> dict[str, Any]:
                async with http.post(f"{base}/api/v1/complaints", json={"text": text, "contact": contact}) as resp:
                    assert resp.status == 201, await resp.text()
                    return await resp.json()

            body = await submit(CONSULTATION, "13900001111")
            case_id = body["case_id"]
            other = (await submit(UNRELATED, "13900002222"))["case_id"]
        case = await store.get_case(case_id)
        assert case.status == Status.CLASSIFIED, "the consultation must wait for a call-taker, not be auto-answered"
        assert case_id in await store.confirm_queue()
        staff_view = await service.suggest_case(case)
        assert staff_view.suggestions and staff_view.suggestions[0].entry.id == ids[0]

        async with chromium() as browser:
            ctx = await browser.new_context(viewport={"width": 1400, "height": 1000}, locale="zh-CN")
            page = await ctx.new_page()
            errors: list[str] = []
            # Script errors and server errors fail the test (the expected 403 below and a missing favicon do not).
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            page.on("response", lambda r: errors.append(f"{r.status} {r.url}") if r.status >= 500 else None)
            await login(page, base, "wangfang")
            await page.wait_for_url("**/console/queue")
            await page.wait_for_function("document.body.dataset.ready === '1'")

            # An unrelated complaint: the panel says nothing fits and offers no button.
            await page.click(f'li.item[data-case-id="{other}"]')
            await page.wait_for_selector(f'article.case-detail[data-case-id="{other}"] #answers')
            assert (await page.text_content("#no-answer") or "").strip() == "暂无合适的答复"
            assert await page.locator("#answers button.answer-send").count() == 0

            # The consultation: the top suggestions with text, source, date and score.
            await page.click(f'li.item[data-case-id="{case_id}"]')
            await page.wait_for_selector(f'article.case-detail[data-case-id="{case_id}"] #answers .answer')
            first = page.locator("#answers .answer").first
            assert await first.get_attribute("data-entry-id") == ids[0]
            assert ENTRIES[0]["answer"] in (await first.locator(".answer-text").text_content() or "")
            assert await first.locator(".dep").text_content() == "医疗保障局"
            assert await first.locator(".date").text_content() == TODAY
            assert (await first.locator(".score").text_content() or "").endswith("%")
            assert 1 <= await page.locator("#answers .answer").count() <= 3
            await page.screenshot(path=str(artifacts / "console-answers-panel.png"), full_page=True)

            await first.locator("button.answer-send").click()
            await page.wait_for_selector("#toast.show")
            toast = await page.text_content("#toast") or ""
            assert "已发送并结案" in toast and "医疗保障局" in toast
            await page.screenshot(path=str(artifacts / "console-answers-sent.png"), full_page=True)
            await page.wait_for_selector(f'li.item[data-case-id="{case_id}"]', state="detached")
            answered = await store.get_case(case_id)
            assert answered.status == Status.ANSWERED
            assert answered.answer["entry_id"] == ids[0] and answered.answer["mode"] == "staff"
            assert answered.answer["answered_by"] == "staff:wangfang"
            assert any(e.action == "answered" and e.actor == "staff:wangfang" for e in await store.events(case_id))
            assert (await store.get_case(other)).status == Status.CLASSIFIED

            # A call-taker has no business in the knowledge base editor.
            resp = await page.goto(f"{base}/console/kb")
            assert resp is not None and resp.status == 403
            assert await page.locator("#nav-kb").count() == 0
            await page.screenshot(path=str(artifacts / "console-kb-forbidden.png"))
            assert not errors, errors

            # The supervisor adds, edits and retires an entry.
            boss_ctx = await browser.new_context(viewport={"width": 1400, "height": 1000}, locale="zh-CN")
            boss = await boss_ctx.new_page()
            boss.on("pageerror", lambda exc: errors.append(str(exc)))
            boss.on("response", lambda r: errors.append(f"{r.status} {r.url}") if r.status >= 500 else None)
            await login(boss, base, "banzhang")
            await boss.wait_for_url("**/console/queue")
            await boss.click("#nav-kb")
            await boss.wait_for_url("**/console/kb")
            await boss.wait_for_function("document.body.dataset.ready === '1'")
            for eid in ids:
                await boss.wait_for_selector(f'#kb-rows tr[data-entry-id="{eid}"]')
            await boss.fill("#kb-question", "居住证怎么办理，需要哪些材料")
            await boss.fill("#kb-answer", "居住证凭身份证和居住证明到派出所办理。")
            await boss.fill("#kb-department", "公安局")
            await boss.fill("#kb-date", "2026-03-01")
            await boss.click("#kb-save")
            await boss.wait_for_selector("#kb-message:not([hidden])")
            assert "已新增条目" in (await boss.text_content("#kb-message") or "")
            new_id = (await service.kb.recent_changes(count=1))[0]["entry"]
            assert new_id not in ids
            rec = await service.kb.get(new_id)
            assert (rec.question, rec.department, rec.date, rec.status) == (
                "居住证怎么办理，需要哪些材料", "公安局", "2026-03-01", ACTIVE)
            assert rec.created_by == "staff:banzhang"
            await boss.screenshot(path=str(artifacts / "console-kb-added.png"), full_page=True)

            row = boss.locator(f'#kb-rows tr[data-entry-id="{new_id}"]')
            await row.locator("button.kb-edit").click()
            assert await boss.input_value("#kb-question") == "居住证怎么办理，需要哪些材料"
            await boss.fill("#kb-answer", "居住证凭身份证、居住证明和一寸照片到社区警务室办理。")
            await boss.screenshot(path=str(artifacts / "console-kb-editing.png"), full_page=True)
            await boss.click("#kb-save")
            # The flash of the previous step stays until the page reloads: wait for this step's own.
            await boss.wait_for_function(
                "t => (document.querySelector('#kb-message') || {}).textContent?.includes(t)",
                arg=f"已保存条目 {new_id}")
            rec = await service.kb.get(new_id)
            assert rec.answer == "居住证凭身份证、居住证明和一寸照片到社区警务室办理。" and rec.rev == 2
            assert "一寸照片" in (await row.locator("td.a").text_content() or "")

            # Search finds it; then retire it.
            await boss.fill("#kb-q", "居住证办理")
            await boss.click("#kb-search")
            await boss.wait_for_selector(f'#kb-rows tr[data-entry-id="{new_id}"]')
            await boss.locator(f'#kb-rows tr[data-entry-id="{new_id}"] button.kb-retire').click()
            # The flash of the previous step stays until the page reloads: wait for this step's own.
            await boss.wait_for_function(
                "t => (document.querySelector('#kb-message') || {}).textContent?.includes(t)",
                arg=f"已停用条目 {new_id}")
            assert await boss.locator(f'#kb-rows tr[data-entry-id="{new_id}"]').count() == 0
            await boss.screenshot(path=str(artifacts / "console-kb-retired.png"), full_page=True)
            rec = await service.kb.get(new_id)
            assert rec.status == RETIRED and rec.retired_by == "staff:banzhang"
            actions = [e.action for e in await service.kb.events(new_id)]
            assert actions == ["created", "edited", "retired"], actions
            # Retired entries stay listed under 已停用, with nothing left to do on them.
            await boss.goto(f"{base}/console/kb?status=retired")
            gone = boss.locator(f'#kb-rows tr[data-entry-id="{new_id}"]')
            assert await gone.get_attribute("data-status") == RETIRED
            assert await gone.locator("button").count() == 0
            assert await boss.locator('#kb-rows tr[data-status="active"]').count() == 0
            decision = await service.suggest_text("居住证怎么办理，需要哪些材料")
            assert new_id not in [m.entry.id for m in decision.suggestions]
            assert not errors, errors
    finally:
        await server.close()


async def test_kb_page_refuses_anonymous_and_other_roles(client: TestClient) -> None:
    resp = await client.get("/console/kb", allow_redirects=False, headers={"Accept": "text/html"})
    assert resp.status == 303 and resp.headers["Location"].startswith("/console/login")
    resp = await client.get("/console/kb", allow_redirects=False, headers={"Accept": "application/json"})
    assert resp.status == 401
    for role in ("call_taker", "follow_up"):
        async with staff_login(client, role) as staff:
            resp = await staff.page("/console/kb")
            assert resp.status == 403, role
            assert 'href="/console/kb"' not in await resp.text(), role
    async with staff_login(client, "supervisor") as boss:
        resp = await boss.page("/console/kb")
        assert resp.status == 200
        html = await resp.text()
        assert 'id="kb-form"' in html and 'href="/console/kb"' in html
