"""The follow-up agent's worklist and the supervisor's dashboard in real headless Chromium.

A web case is dispatched to a real Open311 receiver, resolved by a signed status event and lands on the
worklist; the agent sees the full phone number, records 已解决 + 满意 and the case closes; another case is
set to be called back later; the supervisor's dashboard renders its SVG charts and the open hotspots
(screenshots in the artifacts folder); a call-taker is refused both pages.
"""

from __future__ import annotations

import time
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from aiohttp.test_utils import TestClient
from playwright.async_api import Browser, Page

from hotline.app import create_app
from hotline.appkeys import HOTSPOTS, STORE, SURVEYS
from hotline.redis_server import EmbeddedRedis
from hotline.status import Status
from hotline.store.surveys import FOLLOWUP, MAIN
from tests.browser import chromium
from tests.conftest import make_settings
from tests.console_support import DEFAULT_PASSWORD, add_user
from tests.dispatch_support import SECRET, Open311Receiver
from tests.test_callbacks_e2e import dispatch_and_resolve, survey_due

pytestmark = pytest.mark.browser
TZ = "Asia/Shanghai"


async def login(browser: Browser, base: str, name: str, errors: list[str]) -> Page:
    ctx = await browser.new_context(viewport={"width": 1280, "height": 900}, locale="zh-CN", timezone_id=TZ)
    page = await ctx.new_page()
    # A CSP violation (inline script or style) or a script error shows up here.
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.on("response", lambda r: errors.append(f"HTTP {r.status} {r.url}") if r.status >= 400 else None)
    await page.goto(f"{base}/console/login")
    await page.fill("#name", name)
    await page.fill("#password", DEFAULT_PASSWORD)
    await page.click("#login")
    await page.wait_for_url(lambda url: "/console/login" not in url)
    return page


async def web_case(client: TestClient, text: str, phone: str, address: str) -> str:
    resp = await client.post("/api/v1/complaints",
                             json={"text": text, "contact": phone, "address": address, "channel": "web"})
    assert resp.status == 201, await resp.text()
    return (await resp.json())["case_id"]


async def test_worklist_and_dashboard_in_chromium(aiohttp_client: Any, redis_server: EmbeddedRedis, tmp_path: Path,
                                                  key_prefix: str, receiver: Open311Receiver,
                                                  artifacts: Path) -> None:
    dispatch = {"backend": "open311", "url": receiver.url, "api_key": "city-key", "secret": SECRET,
                "backoff_base_s": 0.05, "backoff_max_s": 0.2, "max_attempts": 3, "request_timeout_s": 2.0,
                "sweep_interval_s": 3600.0}
    settings = make_settings(redis_server.url, tmp_path, key_prefix, dispatch=dispatch,
                             callbacks={"delay_s": 0, "hours_start": 0, "hours_end": 24, "poll_s": 3600.0},
                             rates={"min_cases_for_ranking": 1})
    client = await aiohttp_client(create_app(settings))
    app, store = client.app, client.app[STORE]
    base = str(client.make_url("")).rstrip("/")
    await add_user(store, "zhaoli", "follow_up", display_name="赵丽")
    await add_user(store, "banzhang", "supervisor")
    await add_user(store, "wangfang", "call_taker")

    first = await web_case(client, "幸福小区3号楼下水道堵塞，污水漫到路上", "13912345678", "幸福小区3号楼")
    second = await web_case(client, "光明路菜市场门口占道经营，车辆无法通行", "13800001111", "光明路菜市场")
    for case_id, reply in ((first, "已派人疏通，管道恢复通畅。"), (second, "已联合城管清理占道摊点。")):
        case = await dispatch_and_resolve(client, receiver, case_id, reply)
        await survey_due(client, case)
    # A hotspot lives while one of its cases is open: the estate's sewer again, not yet handled.
    again = await web_case(client, "幸福小区5号楼下水道又堵了，污水外溢到单元门口", "13700002222", "幸福小区5号楼")
    hotspots = app[HOTSPOTS].hs
    spot = hotspots.new("幸福小区", "城乡建设", time.time())
    spot.case_ids, spot.open_case_ids, spot.reporters = [first, again], [again], 4
    await hotspots.save(spot, event="raised")

    errors: list[str] = []
    async with chromium() as browser:
        agent = await login(browser, base, "zhaoli", errors)
        await agent.click('nav a[href="/console/callbacks"]')
        await agent.wait_for_url("**/console/callbacks")
        await agent.wait_for_selector('body[data-ready="1"]')
        card = agent.locator(f'article.callback[data-case-id="{first}"]')
        assert (await card.locator(".phone").text_content() or "").strip() == "13912345678"
        assert "已派人疏通" in (await card.locator(".reply").text_content() or "")
        await agent.screenshot(path=str(artifacts / "callbacks-worklist.png"), full_page=True)

        await card.locator('input[name="resolved"][value="yes"]').check()
        await card.locator('input[name="satisfaction"][value="satisfied"]').check()
        await card.locator('textarea[name="comment"]').fill("处理很及时")
        await card.locator("button.record-answer").click()
        await agent.wait_for_selector(f'article.callback.done[data-case-id="{first}"]')
        assert "感谢" in (await card.locator(".result").text_content() or "")
        closed = await store.get_case(first)
        assert closed.status == Status.CLOSED
        assert closed.survey["resolved"] is True and closed.survey["satisfaction"] == "satisfied"
        assert closed.survey["by"] == "staff:zhaoli" and closed.survey["comment"] == "处理很及时"

        # The other citizen asks to be called tomorrow morning.
        when = (datetime.now(ZoneInfo(TZ)) + timedelta(days=1)).replace(hour=10, minute=30, second=0, microsecond=0)
        other = agent.locator(f'article.callback[data-case-id="{second}"]')
        await other.locator('select[name="outcome"]').select_option("call_back_later")
        await other.locator('input[name="call_back_at"]').fill(when.strftime("%Y-%m-%dT%H:%M"))
        await other.locator('input[name="note"]').fill("市民在开会，明早再打")
        await other.locator("button.record-outcome").click()
        await agent.wait_for_selector(f'article.callback[data-recorded="1"][data-case-id="{second}"]')
        survey = await app[SURVEYS].surveys.get(second)
        assert survey is not None
        rec = survey.recipients[MAIN]
        assert rec.state == FOLLOWUP and rec.next_at == when.timestamp()
        assert rec.notes[-1]["note"] == "市民在开会，明早再打"
        await agent.reload()
        assert await agent.locator(f'article.callback[data-case-id="{second}"]').count() == 0  # not due yet
        assert await agent.locator(f'article.callback[data-case-id="{first}"]').count() == 0
        assert await agent.locator('nav a[href="/console/dashboard"]').count() == 0

        boss = await login(browser, base, "banzhang", errors)
        assert await boss.locator('nav a[href="/console/callbacks"]').count() == 1
        await boss.click('nav a[href="/console/dashboard"]')
        await boss.wait_for_url("**/console/dashboard")
        assert await boss.locator("svg.chart").count() == 3
        assert await boss.locator("#trend-chart circle.point").count() >= 3  # one week, three rates
        assert await boss.locator('#department-chart rect.bar[data-key="城乡建设局"]').count() == 1
        box = await boss.locator("#department-chart").bounding_box()
        assert box is not None and box["width"] > 300 and box["height"] > 20  # laid out, not collapsed
        row = boss.locator('#departments tr[data-key="城乡建设局"]')
        assert (await row.locator(".resolution").text_content()) == "100.0%"
        assert (await row.locator(".satisfaction").text_content()) == "100.0%"
        assert "幸福小区" in (await boss.locator(f'#hotspots tr[data-hotspot="{spot.id}"]').text_content() or "")
        href = await boss.get_attribute("#csv-department", "href")
        assert href and "format=csv" in href
        await boss.screenshot(path=str(artifacts / "callbacks-dashboard.png"), full_page=True)

        taker = await login(browser, base, "wangfang", errors)
        for path in ("/console/callbacks", "/console/dashboard"):
            resp = await taker.goto(f"{base}{path}")
            assert resp is not None and resp.status == 403, path
        assert await taker.locator('nav a[href="/console/callbacks"]').count() == 0
        # Only the refused pages and the browser's own favicon request failed; no script error, no CSP report.
        failed = {e for e in errors if not e.startswith("Failed to load resource")}
        assert failed == {f"HTTP 403 {base}/console/callbacks", f"HTTP 403 {base}/console/dashboard",
                          f"HTTP 404 {base}/favicon.ico"} - ({f"HTTP 404 {base}/favicon.ico"} - failed), errors
