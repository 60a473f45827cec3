"""A call-taker's shift in real headless Chromium: log in, see a new complaint arrive live, confirm it with the
keyboard, correct another one's department, reject a merge, look at the case and search pages, log out; a
follow-up agent cannot open the queue; a supervisor sees the adoption rate. Screenshots go to the artifacts."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestServer
from playwright.async_api import Page

from hotline.app import create_app
from hotline.appkeys import STORE
from hotline.status import Status
from tests.browser import chromium
from tests.conftest import make_settings
from tests.console_support import DEFAULT_PASSWORD, add_user
from tests.test_console_queue import suggest

pytestmark = pytest.mark.browser


async def login(page: Page, base: str, name: str) -> None:
    await page.goto(f"{base}/console/login")
    await page.fill("#name", name)
    await page.fill("#password", DEFAULT_PASSWORD)
    await page.click("#login")


async def test_call_taker_shift_in_chromium(redis_server: Any, tmp_path: Path, key_prefix: str,
                                           artifacts: Path) -> None:
    server = TestServer(create_app(make_settings(redis_server.url, tmp_path, key_prefix)), host="127.0.0.1")
    await server.start_server()
    store = server.app[STORE]
    base = str(server.make_url("")).rstrip("/")
    await add_user(store, "wangfang", "call_taker", display_name="王芳")
    await add_user(store, "liuqiang", "follow_up")
    await add_user(store, "banzhang", "supervisor")

    async with aiohttp.ClientSession() as http:
        async def submit(text: str, contact: str, address: str = "") -> str:
            async with http.post(f"{base}/api/v1/complaints",
                                 json={"text": text, "contact": contact, "address": address}) as resp:
                assert resp.status == 201, await resp.text()
                return (await resp.json())["case_id"]

        master = await submit("幸福小区东门下水道堵了，污水漫到路上", "13900001111", "幸福小区东门")
        dup = await submit("实验小学门口红绿灯坏了不亮，孩子过马路危险", "13900002222", "实验小学")
        wrong = await submit("<script>alert('x')</script>河道里有人倾倒建筑垃圾", "13900003333", "清水河")
        await suggest(store, wrong)
        await suggest(store, dup, duplicate_candidates=[{"case_id": master, "score": 0.55, "reasons": ["same_day"]}])
        await suggest(store, master)

        async with chromium() as browser:
            ctx = await browser.new_context(viewport={"width": 1400, "height": 900}, locale="zh-CN")
            page = await ctx.new_page()
            dialogs: list[str] = []
            page.on("dialog", lambda d: dialogs.append(d.message))

            # Not logged in: the queue sends the browser to the login page.
            await page.goto(f"{base}/console/queue")
            assert "/console/login" in page.url
            await page.fill("#name", "wangfang")
            await page.fill("#password", DEFAULT_PASSWORD)
            await page.screenshot(path=str(artifacts / "console-login.png"))
            await page.click("#login")
            await page.wait_for_url("**/console/queue")
            assert await page.text_content("#who-name") == "王芳"
            await page.wait_for_selector(f'li.item.selected[data-case-id="{master}"]')
            await page.wait_for_function("document.body.dataset.ready === '1'")

            # A complaint from the public API shows up without a reload.
            await page.evaluate("window.__sameDocument = 'yes'")
            fresh = await submit("人民路188号门口井盖丢失，晚上很危险", "13800138000", "人民路188号")
            await page.wait_for_selector(f'li.item[data-case-id="{fresh}"]', timeout=10_000)
            assert await page.evaluate("window.__sameDocument") == "yes"
            await suggest(store, fresh)

            # Keyboard only: k/j move through the list to the new case, Enter confirms the AI's top suggestion.
            for _ in range(6):
                await page.keyboard.press("k")
            for _ in range(6):
                if await page.get_attribute("li.item.selected", "data-case-id") == fresh:
                    break
                await page.keyboard.press("j")
            await page.wait_for_selector(f'article.case-detail[data-case-id="{fresh}"][data-category="城乡建设"]')
            await page.screenshot(path=str(artifacts / "console-queue.png"))
            await page.keyboard.press("Enter")
            await page.wait_for_selector(f'li.item[data-case-id="{fresh}"]', state="detached")
            case = await store.get_case(fresh)
            assert case.status in (Status.CONFIRMED, Status.DISPATCHED)
            assert case.classification["category"] == "城乡建设"
            assert case.classification["department"] == "城乡建设局"
            assert case.classification["urgency"] == "normal"  # the AI's urgency, pre-selected
            assert any(e.actor == "staff:wangfang" and e.action == "confirmed" for e in await store.events(fresh))

            # Another case: its department is wrong; search the department list and pick another.
            await page.click(f'li.item[data-case-id="{wrong}"]')
            await page.wait_for_selector(f'article.case-detail[data-case-id="{wrong}"]')
            shown = await page.text_content("#case-text") or ""
            assert "<script>alert('x')</script>" in shown  # the citizen's text, shown as text
            await page.keyboard.press("d")
            await page.keyboard.type("环境保护")
            await page.wait_for_selector(".picker-results li.active")
            await page.keyboard.press("Enter")
            assert "环境保护局" in (await page.text_content("#chosen-department") or "")
            # The urgency: the AI's 一般 is pre-selected; u raises it to 加急.
            level = 'button.opt[data-head="urgency"][data-label="{}"]'.format
            assert await page.get_attribute(level("normal"), "aria-pressed") == "true"
            await page.keyboard.press("u")
            assert "加急" in (await page.text_content("#chosen-urgency") or "")
            assert await page.get_attribute(level("urgent"), "aria-pressed") == "true"
            await page.screenshot(path=str(artifacts / "console-correct-department.png"))
            await page.keyboard.press("Enter")
            await page.wait_for_selector(f'li.item[data-case-id="{wrong}"]', state="detached")
            corrected = await store.get_case(wrong)
            assert corrected.classification["department"] == "环境保护局"
            assert corrected.classification["urgency"] == "urgent" and corrected.dispatch["time_limit"] == "urgent"

            # A suggested duplicate that is not one: reject the merge.
            await page.click(f'li.item[data-case-id="{dup}"]')
            await page.wait_for_selector(f'article.case-detail[data-case-id="{dup}"] .dup[data-candidate="{master}"]')
            await page.screenshot(path=str(artifacts / "console-duplicate.png"))
            await page.keyboard.press("x")
            await page.wait_for_selector(f'article.case-detail[data-case-id="{dup}"]:not(:has(.dup))')
            assert (await store.get_case(dup)).duplicate_candidates == []
            assert any(e.actor == "staff:wangfang" and e.action == "duplicate_rejected"
                       for e in await store.events(dup))

            # The case page: who did what when.
            await page.goto(f"{base}/console/cases/{fresh}")
            assert "wangfang（工作人员）" in (await page.text_content("#events") or "")
            assert "138****8000" in (await page.text_content("#case-contact") or "")
            await page.screenshot(path=str(artifacts / "console-case.png"), full_page=True)

            await page.goto(f"{base}/console/search")
            await page.keyboard.press("/")
            await page.keyboard.type("井盖")
            await page.keyboard.press("Enter")
            await page.wait_for_selector(f'#results tr[data-case-id="{fresh}"]')
            await page.screenshot(path=str(artifacts / "console-search.png"), full_page=True)

            await page.click("#logout")
            await page.wait_for_url("**/console/login")
            await page.goto(f"{base}/console/queue")
            assert "/console/login" in page.url
            assert dialogs == []
            await ctx.close()

            # A follow-up agent has no confirmation queue.
            ctx2 = await browser.new_context(viewport={"width": 1200, "height": 800}, locale="zh-CN")
            agent = await ctx2.new_page()
            await login(agent, base, "liuqiang")
            await agent.wait_for_url("**/console/search")
            assert await agent.locator('nav a[href="/console/queue"]').count() == 0
            resp = await agent.goto(f"{base}/console/queue")
            assert resp is not None and resp.status == 403
            assert "无权访问" in (await agent.text_content("[role=alert]") or "")
            await agent.screenshot(path=str(artifacts / "console-follow-up-forbidden.png"))
            await ctx2.close()

            # The supervisor sees the call-taker's adoption rate: 2 departments reviewed, 1 kept.
            ctx3 = await browser.new_context(viewport={"width": 1200, "height": 800}, locale="zh-CN")
            boss = await ctx3.new_page()
            await login(boss, base, "banzhang")
            await boss.wait_for_url("**/console/queue")
            await boss.goto(f"{base}/console/metrics")
            row = await boss.text_content('#heads tr[data-head="department"]') or ""
            assert "50.0%" in row
            assert await boss.locator('#users tr[data-user="wangfang"]').count() == 1
            await boss.screenshot(path=str(artifacts / "console-metrics.png"), full_page=True)
            await ctx3.close()
    await server.close()
