"""No phone or ID-card number in the logs of a full run through the app.

Every log record of every logger (the app's, aiohttp's access log as `hotline serve` configures it,
redis, asyncio) is formatted with the production JsonFormatter and the lines are scanned.
"""

from __future__ import annotations

import asyncio
import io
import json
import logging
import re
from collections.abc import Iterator
from typing import Any

import pytest
from aiohttp.test_utils import TestServer

from hotline.app import create_app
from hotline.logs import AccessLogger, JsonFormatter, setup_logging

PHONES = ["13812345678", "15900001111", "18677772222", "13544443333", "17755556666"]
IDS = ["110101199003071234", "44030619851231002X", "320102197712120017"]

# Any mobile number or ID-card number, also glued to other digits (+8613812345678) or split by
# spaces and dashes (138 1234 5678, 138-1234-5678), which is how citizens write them.
# Digit boundaries keep 13-digit stream ids and timestamps out of the scan.
_SEP = r"[\s\-]?"
MOBILE = re.compile(r"(?<!\d)(?:86)?1[3-9]\d" + _SEP + r"\d{4}" + _SEP + r"\d{4}(?!\d)")
ID_CARD = re.compile(r"(?<!\d)\d{17}[\dXx](?![\dA-Za-z])")


@pytest.fixture
def log_lines() -> Iterator[io.StringIO]:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    handler.setLevel(logging.DEBUG)
    root = logging.getLogger()
    old_level = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    try:
        yield stream
    finally:
        root.removeHandler(handler)
        root.setLevel(old_level)


def leaks(text: str) -> list[str]:
    found = [m.group(0) for m in MOBILE.finditer(text)] + [m.group(0) for m in ID_CARD.finditer(text)]
    found += [v for v in PHONES + IDS if v in text]
    return found


def test_the_scanner_finds_what_it_looks_for() -> None:
    # A scan that can never fire proves nothing: it must see the raw forms.
    for raw in ("电话13812345678", "+8613812345678", "138 1234 5678", "138-1234-5678", "44030619851231002X"):
        assert leaks(raw), raw


def test_formatter_masks_nested_and_non_string_values() -> None:
    record = logging.LogRecord("hotline.x", logging.INFO, __file__, 1, "citizen %s called from %s",
                               ("13812345678", "+8613812345678"), None)
    record.contact = "15900001111"
    record.data = {"phone": "18677772222", "id": IDS[0], "list": ["138-1234-5678", 13544443333]}
    try:
        raise ValueError(f"bad id {IDS[1]}")
    except ValueError:
        import sys

        record.exc_info = sys.exc_info()
    line = JsonFormatter().format(record)
    assert json.loads(line)["logger"] == "hotline.x"
    assert leaks(line) == [], line


async def test_no_pii_in_logs_of_a_full_run(aiohttp_client: Any, settings: Any, log_lines: io.StringIO) -> None:
    # As `hotline serve` runs it: the JSON access logger.
    server = TestServer(create_app(settings))
    await server.start_server(access_log_class=AccessLogger)
    client = await aiohttp_client(server)
    ids: list[str] = []

    # API submissions: contact, phone and ID numbers in the text, in several spellings.
    for i, (phone, idno) in enumerate(zip(PHONES, IDS * 2, strict=False)):
        body = {"text": f"第{i}次反映：小区路灯坏了，我电话{phone}，身份证号{idno}，或者打+86{phone}",
                "contact": phone, "name": "张三", "address": f"幸福小区{i}栋"}
        resp = await client.post("/api/v1/complaints", json=body, headers={"Idempotency-Key": f"pii-{phone}"})
        assert resp.status == 201, await resp.text()
        ids.append((await resp.json())["case_id"])
    # The same again (idempotent replay: the same body under the same key) and a spaced number.
    replay = {"text": f"第0次反映：小区路灯坏了，我电话{PHONES[0]}，身份证号{IDS[0]}，或者打+86{PHONES[0]}",
              "contact": PHONES[0], "name": "张三", "address": "幸福小区0栋"}
    resp = await client.post("/api/v1/complaints", json=replay, headers={"Idempotency-Key": f"pii-{PHONES[0]}"})
    assert resp.status == 200
    resp = await client.post("/api/v1/complaints", json={"text": "噪音扰民 电话 138 1234 5678",
                                                         "contact": "138-1234-5678"})
    assert resp.status == 201

    # Web form.
    resp = await client.post("/submit", data={"text": f"井盖丢失，联系{PHONES[1]}，身份证{IDS[2]}",
                                              "contact": PHONES[1], "name": "李四", "form_token": "pii-form"})
    assert resp.status == 201
    # Open311.
    resp = await client.post("/open311/v2/requests.json",
                             data={"service_code": "x", "description": f"垃圾堆积 {PHONES[2]}", "phone": PHONES[2]})
    assert resp.status < 500

    # Status look-ups: right and wrong digits, in the form, the query string and the API.
    for case_id, phone in zip(ids, PHONES, strict=False):
        resp = await client.post("/status", data={"case_id": case_id, "last4": phone[-4:]})
        assert resp.status == 200
    assert (await client.post("/status", data={"case_id": ids[0], "last4": "0000"})).status == 404
    assert (await client.get(f"/status?case_id={ids[0]}&phone={PHONES[0]}")).status == 200
    assert (await client.get(f"/api/v1/cases/{ids[0]}?contact={PHONES[0]}")).status == 200

    # Errors: refused contact, unknown paths carrying numbers, broken JSON, oversized body.
    resp = await client.post("/api/v1/complaints", json={"text": "路灯坏了", "contact": f"{PHONES[3]}abc{IDS[0]}"})
    assert resp.status == 422
    assert (await client.get(f"/api/v1/cases/{PHONES[4]}")).status in (400, 404)
    assert (await client.get(f"/no/such/{IDS[1]}/{PHONES[0]}")).status == 404
    resp = await client.post("/api/v1/complaints", data=f'{{"text": "{PHONES[0]}',
                             headers={"Content-Type": "application/json"})
    assert resp.status == 400
    big = f"{IDS[0]} {PHONES[0]} " * 100_000
    assert (await client.post("/api/v1/complaints", json={"text": big})).status == 413

    await client.close()
    text = log_lines.getvalue()
    lines = [line for line in text.splitlines() if line.strip()]
    # The run was logged at all (access lines and case events), else the scan is empty.
    events = [json.loads(line).get("event") for line in lines]
    assert events.count("http") >= 20 and "case_created" in events, events
    bad = [line for line in lines if leaks(line)]
    assert bad == [], "\n".join(bad[:10])


async def test_a_malformed_request_is_one_warning_without_its_text(aiohttp_client: Any, settings: Any) -> None:
    """A request line too long to parse: 400 for the client, one warning line for the operator, and
    neither the traceback nor the query string (which here carries a phone number) in the log."""
    stream = io.StringIO()
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    setup_logging("INFO", stream)
    try:
        server = TestServer(create_app(settings))
        await server.start_server(access_log_class=AccessLogger)
        reader, writer = await asyncio.open_connection(server.host, server.port)
        writer.write(f"GET /status?phone={PHONES[0]}&q={'a' * 9000} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        await writer.drain()
        status_line = await asyncio.wait_for(reader.readline(), 10)
        writer.close()
        await server.close()
    finally:
        root.handlers[:], level = saved
        root.setLevel(level)
    assert status_line.split()[1] == b"400"
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    bad = [r for r in lines if r.get("event") == "bad_request"]
    assert len(bad) == 1 and bad[0]["level"] == "warning" and bad[0]["error"] == "LineTooLong", lines
    assert not [r for r in lines if r["level"] == "error"], lines
    text = stream.getvalue()
    assert "Traceback" not in text and "aaaa" not in text and not leaks(text)


@pytest.mark.parametrize("level", ["DEBUG", "INFO", "WARNING"])
def test_library_payload_logs_stay_out_at_any_level(level: str) -> None:
    """At logging.level DEBUG the service's own debug lines appear, but python-telegram-bot's record of a
    Bot API answer (a citizen's message) and httpx's request URL (the bot token) do not; a higher level
    is not lowered for those libraries either."""
    stream = io.StringIO()
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    libraries = {name: logging.getLogger(name).level for name in ("telegram", "httpx", "httpcore")}
    setup_logging(level, stream)
    try:
        logging.getLogger("hotline.test").debug("own debug line")
        logging.getLogger("telegram.Bot").debug("Call to Bot API endpoint `getUpdates` finished with return "
                                                "value `{'text': '我家楼下烧烤油烟扰民'}`")
        logging.getLogger("telegram.ext.Updater").info("updater info line")
        logging.getLogger("httpx").info("HTTP Request: POST https://api.telegram.org/bot123:SECRET/getMe")
        logging.getLogger("telegram.ext.Application").warning("library warning line")
    finally:
        root.handlers[:], root_level = saved
        root.setLevel(root_level)
        for name, lib_level in libraries.items():
            logging.getLogger(name).setLevel(lib_level)
    text = stream.getvalue()
    assert ("own debug line" in text) == (level == "DEBUG"), text
    assert "烧烤油烟" not in text and "SECRET" not in text, text
    assert ("updater info line" in text) == (level != "WARNING"), text
    assert "library warning line" in text, text
