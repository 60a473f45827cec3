"""督办 page: overdue and due-soon orders, returned orders, dead letters sent again from real Chromium."""

from __future__ import annotations

import dataclasses
import re
import time
from datetime import date, datetime
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from hotline.app import create_app
from hotline.appkeys import DISPATCHER, STORE
from hotline.console.supervision import span_text
from hotline.records import Case
from hotline.redis_server import EmbeddedRedis
from tests.browser import chromium
from tests.console_support import add_user, sign_in, staff_login
from tests.dispatch_support import CLASSIFICATION, Open311Receiver, new_case, post_event, wait_for
from tests.test_dispatch_app import _state, dispatch_settings, dispatched, event


@pytest.fixture
async def app_client(aiohttp_client: Any, redis_server: EmbeddedRedis, tmp_path: Path, key_prefix: str,
                     receiver: Open311Receiver) -> TestClient:
    settings = dispatch_settings(redis_server, tmp_path, key_prefix, receiver.url)
    settings["console"]["supervision_due_soon_h"] = 4.0
    return await aiohttp_client(create_app(settings))


def table_ids(html: str, table_id: str) -> list[str]:
    body = html.split(f'id="{table_id}"', 1)[1].split("</table>", 1)[0]
    return re.findall(r'<tr data-(?:case|dead)-id="([^"]+)"', body)


async def move_deadline(client: TestClient, case: Case, deadline: float) -> None:
    def change(c: Case) -> dict[str, Any]:
        c.deadline_at = deadline
        return {}

    await client.app[STORE].update_case(case.id, change, actor="test", action="test_deadline")
    await client.app[DISPATCHER].outbox.set_open(case.id, deadline)


def test_span_text_reads_like_a_supervisor_speaks() -> None:
    assert span_text(25 * 60) == "25 分"
    assert span_text(5 * 3600 + 10 * 60) == "5 小时 10 分"
    assert span_text(2 * 3600) == "2 小时"
    assert span_text(3 * 86400 + 4 * 3600 + 59) == "3 天 4 小时"
    assert span_text(-5) == "0 分"


async def test_supervision_page_says_when_the_holiday_table_misses_a_year(app_client: TestClient) -> None:
    dispatcher = app_client.app[DISPATCHER]
    year = datetime.now(dispatcher.calendar.tz).year
    covered = {date(y, 1, 1) for y in range(year - 1, year + 3)}
    async with staff_login(app_client, "supervisor") as sup:
        dispatcher.calendar = dataclasses.replace(dispatcher.calendar, holidays=frozenset(covered))
        assert 'id="calendar-missing"' not in await (await sup.page("/console/supervision")).text()
        dispatcher.calendar = dataclasses.replace(dispatcher.calendar, holidays=frozenset({date(year - 1, 1, 1)}))
        html = await (await sup.page("/console/supervision")).text()
    banner = html.split('id="calendar-missing"', 1)[1].split("</p>", 1)[0]
    assert f"缺少 {year}" in banner and "config/dispatch.toml" in banner


async def test_supervisor_sees_what_to_chase_and_sends_a_dead_order_again(
        app_client: TestClient, receiver: Open311Receiver, artifacts: Path) -> None:
    now = time.time()
    # Plain texts: an urgent one (停水, 井盖 …) would get a 2-hour limit and land in 即将超期 by itself.
    late = await dispatched(app_client, receiver, "幸福小区广场舞音乐太吵", contact="13800138000", street="东华门街道")
    soon = await dispatched(app_client, receiver, "建设路人行道上的共享单车乱停")
    far = await dispatched(app_client, receiver, "和平巷的健身器材有一个坏了")
    await move_deadline(app_client, late, now - 5 * 3600)
    await move_deadline(app_client, soon, now + 3600)
    back = await dispatched(app_client, receiver, "光明小区门口有流动摊贩占道经营")
    assert (await post_event(app_client, event(back, "returned", reason="不属于本单位职责")))[0] == 200
    dead_case = await new_case(app_client, "东湖村的宣传栏破损了")
    receiver.plan = lambda key, n: "fail" if key.startswith(dead_case.id) and n <= 3 else "accept"
    await app_client.app[DISPATCHER].confirm(dead_case.id, CLASSIFICATION, "staff:a")
    await wait_for(lambda: _state(app_client, dead_case.id, "dead_letter"))

    async with staff_login(app_client, "call_taker") as staff:
        assert (await staff.page("/console/supervision")).status == 403
    async with staff_login(app_client, "supervisor") as sup:
        resp = await sup.page("/console/supervision")
        assert resp.status == 200
        html = await resp.text()
    assert table_ids(html, "overdue") == [late.id]
    assert table_ids(html, "due-soon") == [soon.id] and far.id not in html
    assert table_ids(html, "returned") == [back.id] and "不属于本单位职责" in html
    assert len(table_ids(html, "dead")) == 1 and dead_case.id in html
    overdue_row = html.split(f'data-case-id="{late.id}"', 1)[1].split("</tr>", 1)[0]
    assert "东华门街道" in overdue_row and "5 小时" in overdue_row and "13800138000" not in html

    await add_user(app_client.app[STORE], "banzhang", "supervisor")
    base = str(app_client.make_url("")).rstrip("/")
    async with chromium() as browser:
        page = await browser.new_page()
        await sign_in(page, base, "banzhang")
        await page.click("#nav-supervision")
        await page.wait_for_selector("body[data-ready='1']")
        assert await page.inner_text("#dead-count") == "1"
        await page.click("button.redrive")
        await page.wait_for_selector("#dead tr.done")
        assert await page.inner_text("#dead-count") == "0"
        await page.screenshot(path=str(artifacts / "supervision.png"), full_page=True)
    await wait_for(lambda: _state(app_client, dead_case.id, "delivered"))
    redriven = [e for e in await app_client.app[STORE].events(dead_case.id) if e.action == "order_redriven"]
    assert [e.actor for e in redriven] == ["staff:banzhang"]
