"""Poll mode against a Bot API that misbehaves: the real app polls a loopback getUpdates (real HTTP wire
format) that answers with unreadable updates, wild 429s and a stray 401. Polling must neither spin, stall,
hang the shutdown, nor log the citizens' messages."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from hotline.app import create_app
from hotline.channels import telegram
from hotline.redis_server import EmbeddedRedis
from tests.chat_support import ScriptedBotAPI, bot_api_error, tg_message
from tests.conftest import make_settings

BOT_TOKEN = "123456789:AAHtestTOKENtestTOKENtestTOKEN_abcd"
ALICE = 900001
PRIVATE_TEXT = "张三 幸福路12号 夜里施工噪音"  # what must never reach a log record
STOP_BOUND_S = 5.0


@dataclass
class Polling:
    api: ScriptedBotAPI
    runner: web.AppRunner

    def calls_within(self, seconds: float) -> int:
        since = time.monotonic() - seconds
        return sum(t >= since for t in self.api.get_updates_at)

    async def stop(self) -> float:
        started = time.monotonic()
        await asyncio.wait_for(self.runner.cleanup(), STOP_BOUND_S)
        return time.monotonic() - started


@pytest.fixture
async def start_polling(aiohttp_server: Any, redis_server: EmbeddedRedis, tmp_path: Path,
                        key_prefix: str) -> AsyncIterator[Callable[..., Any]]:
    runners: list[web.AppRunner] = []

    async def start(script: Any = None, updates: tuple[Any, ...] = (), once: tuple[Any, ...] = ()) -> Polling:
        api = ScriptedBotAPI(BOT_TOKEN, script)
        api.updates.extend(updates)
        api.once.extend(once)
        server = await aiohttp_server(api.app)
        base = str(server.make_url("")).rstrip("/")
        section = {"token": BOT_TOKEN, "api_base_url": f"{base}/bot", "file_base_url": f"{base}/file/bot",
                   "request_timeout_s": 5.0, "mode": "poll"}
        app = create_app(make_settings(redis_server.url, tmp_path, key_prefix, telegram=section,
                                       dedup={"enabled": False}))
        runner = web.AppRunner(app)
        await runner.setup()  # runs the start-up, which starts polling
        runners.append(runner)
        return Polling(api, runner)

    yield start
    for runner in runners:
        # Bounded: a test that failed must not leave the session waiting on a parked polling loop.
        with contextlib.suppress(Exception):
            await asyncio.wait_for(runner.cleanup(), STOP_BOUND_S)


def leaked(caplog: pytest.LogCaptureFixture) -> list[str]:
    out = []
    for r in caplog.records:
        if r.name == "aiohttp.access":
            continue  # the fake Bot API's own access log: its paths hold the token
        text = r.getMessage() + (logging.Formatter().formatException(r.exc_info) if r.exc_info else "")
        if "张三" in text or "幸福路" in text or BOT_TOKEN.split(":")[1] in text:
            out.append(f"{r.levelname} {r.name}: {text[:200]}")
    return out


UNREADABLE = {
    "message_not_an_object": {"update_id": 11, "message": PRIVATE_TEXT},
    "update_id_a_string": {**tg_message(11, ALICE, text=PRIVATE_TEXT), "update_id": "abc"},
    "update_id_missing": {k: v for k, v in tg_message(11, ALICE, text=PRIVATE_TEXT).items() if k != "update_id"},
}


@pytest.mark.parametrize("kind", sorted(UNREADABLE))
async def test_unreadable_update_is_skipped_without_logging_it(start_polling: Any, kind: str,
                                                               caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    bad = UNREADABLE[kind]
    good = tg_message(12, ALICE, text="/start")
    # Served in one batch, the unreadable update first: PTB parsed the batch as a whole.
    p = await start_polling(updates=(bad, good) if kind == "message_not_an_object" else (good,),
                            once=() if kind == "message_not_an_object" else (bad,))
    sent = await p.api.wait_for("sendMessage", 1, timeout=5)
    assert "12345" in sent[0]["text"] and int(sent[0]["chat_id"]) == ALICE
    await asyncio.sleep(2.0)
    assert p.calls_within(2.0) <= 10  # acknowledged: no re-fetch of the same batch in a loop
    assert len(p.api.sent("sendMessage")) == 1
    assert leaked(caplog) == []
    assert not [r for r in caplog.records if r.levelno >= logging.CRITICAL]
    skipped = [r for r in caplog.records if getattr(r, "event", "") == "tg_unreadable"]
    assert skipped and skipped[0].update_id == (11 if kind == "message_not_an_object" else None)
    assert await p.stop() < STOP_BOUND_S


async def test_negative_retry_after_does_not_spin(start_polling: Any) -> None:
    p = await start_polling(lambda n, offset: bot_api_error(429, "Too Many Requests: retry after -5",
                                                            retry_after=-5))
    await asyncio.sleep(2.0)
    assert 1 <= p.calls_within(2.0) <= 4  # at least 1 s apart
    assert await p.stop() < STOP_BOUND_S


@pytest.mark.parametrize("retry_after", [86400, 10**9])
async def test_huge_retry_after_neither_parks_the_shutdown(start_polling: Any, retry_after: int) -> None:
    p = await start_polling(lambda n, offset: bot_api_error(429, "Too Many Requests", retry_after=retry_after)
                            if n == 1 else None)
    await asyncio.sleep(0.5)
    assert len(p.api.get_updates_at) >= 1
    assert await p.stop() < STOP_BOUND_S


async def test_retry_after_is_waited_then_polling_goes_on(start_polling: Any) -> None:
    p = await start_polling(lambda n, offset: bot_api_error(429, "Too Many Requests", retry_after=1)
                            if n == 1 else None, updates=(tg_message(31, ALICE, text="/start"),))
    sent = await p.api.wait_for("sendMessage", 1, timeout=5)
    assert "12345" in sent[0]["text"]
    assert p.api.get_updates_at[1] - p.api.get_updates_at[0] >= 0.9


@pytest.mark.parametrize("code", [401, 404])
async def test_one_refused_token_does_not_end_polling(start_polling: Any, monkeypatch: pytest.MonkeyPatch,
                                                      caplog: pytest.LogCaptureFixture, code: int) -> None:
    caplog.set_level(logging.INFO)
    monkeypatch.setattr(telegram, "TOKEN_RETRY_MIN_S", 0.3)
    p = await start_polling(lambda n, offset: bot_api_error(code, "Unauthorized" if code == 401 else "Not Found")
                            if n == 1 else None, updates=(tg_message(21, ALICE, text="/start"),))
    sent = await p.api.wait_for("sendMessage", 1, timeout=5)
    assert "12345" in sent[0]["text"]
    refused = [r for r in caplog.records if getattr(r, "event", "") == "tg_poll_invalid_token"]
    assert len(refused) == 1 and refused[0].retry_s == 0.3
    assert leaked(caplog) == []
    assert await p.stop() < STOP_BOUND_S


async def test_a_refused_token_is_retried_with_growing_waits(start_polling: Any,
                                                             monkeypatch: pytest.MonkeyPatch,
                                                             caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    monkeypatch.setattr(telegram, "TOKEN_RETRY_MIN_S", 0.2)
    monkeypatch.setattr(telegram, "TOKEN_RETRY_MAX_S", 0.4)
    p = await start_polling(lambda n, offset: bot_api_error(401, "Unauthorized"))
    await asyncio.sleep(2.0)
    waits = [r.retry_s for r in caplog.records if getattr(r, "event", "") == "tg_poll_invalid_token"]
    assert waits[:3] == [0.2, 0.4, 0.4]
    assert p.calls_within(2.0) <= 8
    assert await p.stop() < STOP_BOUND_S
