"""The citizen and staff pages meet WCAG 2.1 level AA as axe-core checks it, in real headless Chromium.

Government service sites in China must be usable by older and disabled citizens (GB/T 37668-2019, which
follows WCAG): screen-reader labels, contrast, language, landmarks, errors announced. Every state a citizen
can reach is checked: the form, the form with an error, the case number, the status lookup (empty, not
found, found), the satisfaction survey (open, answered, invalid link), the not-found page; and every staff
page, with a case open in the queue. A control page with known faults shows the checker really reports.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from axe_playwright_python.async_playwright import Axe
from playwright.async_api import Page

from hotline.app import create_app
from hotline.appkeys import STORE, SURVEYS
from hotline.redis_server import EmbeddedRedis
from hotline.store.surveys import MAIN
from tests.browser import chromium
from tests.conftest import make_settings
from tests.console_support import add_user, sign_in
from tests.dispatch_support import SECRET, Open311Receiver
from tests.test_callbacks_e2e import dispatch_and_resolve, survey_due

pytestmark = pytest.mark.browser

WCAG_AA = {"runOnly": {"type": "tag", "values": ["wcag2a", "wcag2aa", "wcag21a", "wcag21aa"]},
           "resultTypes": ["violations"]}


async def violations(page: Page, state: str) -> list[str]:
    results = await Axe().run(page, options=WCAG_AA)
    return [f"{state}: {v['id']} ({v['impact']}) {v['help']} → {[n['target'] for n in v['nodes']][:5]}"
            for v in results.response["violations"]]


async def test_citizen_pages_pass_wcag_aa(aiohttp_client: Any, redis_server: EmbeddedRedis, tmp_path: Path,
                                          key_prefix: str, receiver: Open311Receiver, artifacts: Path) -> None:
    dispatch = {"backend": "open311", "url": receiver.url, "api_key": "city-key", "secret": SECRET,
                "backoff_base_s": 0.05, "backoff_max_s": 0.2, "max_attempts": 3, "request_timeout_s": 2.0,
                "sweep_interval_s": 3600.0}
    settings = make_settings(redis_server.url, tmp_path, key_prefix, dispatch=dispatch,
                             callbacks={"delay_s": 0, "hours_start": 0, "hours_end": 24, "poll_s": 3600.0})
    client = await aiohttp_client(create_app(settings))
    base = str(client.make_url("")).rstrip("/")
    found: list[str] = []
    async with chromium() as browser:
        page = await browser.new_page()

        await page.goto(f"{base}/")
        found += await violations(page, "form")
        await page.fill("#text", "  ")
        await page.click("#submit")
        await page.wait_for_selector("[role=alert]")
        found += await violations(page, "form with an error")

        await page.fill("#text", "幸福小区3栋楼下路灯坏了一个星期，晚上很黑")
        await page.fill("#contact", "13812345678")
        await page.click("#submit")
        case_id = (await page.text_content("#case-id") or "").strip()
        assert case_id
        found += await violations(page, "case number")

        await page.goto(f"{base}/status")
        found += await violations(page, "status lookup")
        await page.fill("#case_id", case_id)
        await page.fill("#last4", "0000")
        await page.click("#lookup")
        await page.wait_for_selector("[role=alert]")
        found += await violations(page, "status not found")
        await page.fill("#case_id", case_id)
        await page.fill("#last4", "5678")
        await page.click("#lookup")
        await page.wait_for_selector("#found-case-id")
        found += await violations(page, "status found")

        case = await dispatch_and_resolve(client, receiver, case_id, "已更换路灯灯泡，恢复照明。")
        await survey_due(client, case)
        service = client.app[SURVEYS]
        survey = await service.surveys.get(case_id)
        assert survey is not None
        await page.goto(service.link(case_id, MAIN, survey.round).replace(service.public_url, base))
        await page.wait_for_selector('input[name="resolved"]')
        found += await violations(page, "survey")
        await page.screenshot(path=str(artifacts / "a11y-survey.png"), full_page=True)
        await page.check('input[name="resolved"][value="yes"]')
        await page.check('input[name="satisfaction"][value="satisfied"]')
        await page.click("button[type=submit]")
        await page.wait_for_selector("#survey-done")
        found += await violations(page, "survey answered")

        await page.goto(f"{base}/survey/not-a-link")
        found += await violations(page, "survey link invalid")
        await page.goto(f"{base}/no-such-page")
        found += await violations(page, "not found")
        await page.goto(f"{base}/console/login")
        found += await violations(page, "staff login")
    assert not found, "\n".join(found)


# Staff pages, and whether their script announces it has filled the page (body[data-ready]).
CONSOLE_PAGES = (("/console/queue", True), ("/console/intake", True), ("/console/callbacks", True),
                 ("/console/dashboard", False), ("/console/supervision", True), ("/console/kb", True),
                 ("/console/search?q=路灯", False), ("/console/metrics", False))


async def test_console_pages_pass_wcag_aa(aiohttp_client: Any, redis_server: EmbeddedRedis, tmp_path: Path,
                                          key_prefix: str) -> None:
    """Staff pages too: hotline centres employ call-takers who work with screen readers and magnifiers."""
    client = await aiohttp_client(create_app(make_settings(redis_server.url, tmp_path, key_prefix)))
    base = str(client.make_url("")).rstrip("/")
    await add_user(client.app[STORE], "banzhang", "supervisor", display_name="王班长")
    resp = await client.post("/api/v1/complaints", json={"text": "光明路菜市场门口占道经营，车辆无法通行",
                                                         "contact": "13800001111", "channel": "web"})
    assert resp.status == 201
    case_id = (await resp.json())["case_id"]
    found: list[str] = []
    async with chromium() as browser:
        page = await browser.new_page()
        await sign_in(page, base, "banzhang")
        for path, scripted in CONSOLE_PAGES:
            await page.goto(f"{base}{path}")
            if scripted:
                await page.wait_for_selector("body[data-ready='1']")
            found += await violations(page, path)
        # The queue with the case open: the open case is announced with aria-current, its pane filled.
        await page.goto(f"{base}/console/queue?case={case_id}")
        await page.wait_for_selector(f'li.item[aria-current="true"][data-case-id="{case_id}"]')
        await page.wait_for_selector(f'#detail [data-case-id="{case_id}"]')
        found += await violations(page, "queue with a case open")
        await page.goto(f"{base}/console/cases/{case_id}")
        found += await violations(page, "case page")
    assert not found, "\n".join(found)


async def test_the_checker_reports_a_faulty_page() -> None:
    """Control: the same rule set finds missing alt text, a missing label and language, low contrast."""
    async with chromium() as browser:
        page = await browser.new_page()
        await page.set_content('<html><head><title>t</title></head><body><img src="x.png"><input id="a">'
                               '<p style="color:#bbb;background:#fff">低对比度文字</p></body></html>')
        ids = {line.split(": ", 1)[1].split(" ", 1)[0] for line in await violations(page, "control")}
    assert {"image-alt", "label", "html-has-lang", "color-contrast"} <= ids
