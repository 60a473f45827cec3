"""A citizen uses the web pages in a real browser: submit, get a case number, look it up, after a restart too."""

from __future__ import annotations

from pathlib import Path

import pytest
from aiohttp.test_utils import TestServer

from hotline.app import create_app
from hotline.appkeys import STORE
from hotline.settings import load_settings
from tests.browser import chromium
from tests.test_attachments import png

pytestmark = pytest.mark.browser


async def start(settings) -> TestServer:
    server = TestServer(create_app(settings), host="127.0.0.1")
    await server.start_server()
    return server


async def test_submit_and_look_up_in_chromium(tmp_path: Path, artifacts: Path) -> None:
    settings = load_settings(overrides={"server": {"data_dir": str(tmp_path)}, "store": {"redis_url": ""}},
                             env={})
    server = await start(settings)
    base = str(server.make_url("/"))
    async with chromium() as browser:
        page = await browser.new_page()
        await page.goto(base)
        await page.fill("#text", "幸福小区3栋楼下路灯坏了一个星期，晚上很黑，<script>alert(1)</script>")
        await page.fill("#address", "幸福小区3栋")
        await page.fill("#contact", "13812345678")
        await page.set_input_files("#photos", files=[{"name": "路灯.png", "mimeType": "image/png", "buffer": png()}])
        await page.screenshot(path=str(artifacts / "web-form.png"), full_page=True)
        await page.click("#submit")
        case_id = (await page.text_content("#case-id") or "").strip()
        assert len(case_id) == 15 and case_id[8] == "-"
        photos = (await server.app[STORE].get_case(case_id)).attachments
        assert len(photos) == 1 and photos[0].startswith("upload:") and photos[0].endswith(".png")
        await page.screenshot(path=str(artifacts / "web-submitted.png"), full_page=True)

        # Reloading the result page must not file the complaint twice.
        await page.go_back()
        await page.click("#submit")
        assert (await page.text_content("#case-id") or "").strip() == case_id

        await server.close()
        server = await start(settings)  # a restart: the embedded store comes back from its AOF
        status_url = str(server.make_url("/status"))

        await page.goto(status_url)
        await page.fill("#case_id", case_id)
        await page.fill("#last4", "0000")
        await page.click("#lookup")
        assert "未找到" in (await page.text_content("[role=alert]") or "")

        await page.fill("#case_id", case_id)
        await page.fill("#last4", "5678")
        await page.click("#lookup")
        assert (await page.text_content("#found-case-id")) == case_id
        assert "待确认" in (await page.text_content("#case-status") or "")
        text = await page.text_content(".text") or ""
        assert "<script>alert(1)</script>" in text  # shown as text, never run
        assert "诉求已受理" in (await page.text_content(".history") or "")
        await page.screenshot(path=str(artifacts / "web-status.png"), full_page=True)
        dialogs: list[str] = []
        page.on("dialog", lambda d: dialogs.append(d.message))
        await page.reload()
        assert dialogs == []
    await server.close()


async def test_form_errors_are_shown_in_chinese(tmp_path: Path, redis_server) -> None:
    settings = load_settings(overrides={"server": {"data_dir": str(tmp_path)},
                                        "store": {"redis_url": redis_server.url, "key_prefix": "browser2"}}, env={})
    server = await start(settings)
    async with chromium() as browser:
        page = await browser.new_page()
        await page.goto(str(server.make_url("/")))
        await page.fill("#text", "路灯")
        await page.fill("#contact", "abc")
        await page.click("#submit")
        assert "联系电话格式不正确" in (await page.text_content("[role=alert]") or "")
        assert await page.input_value("#text") == "路灯"  # what the citizen typed is kept
    await server.close()
