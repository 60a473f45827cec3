"""One survey try holds its citizen until it is over, however long it queues for a line; and once it has the line
it checks again that the citizen is still to be rung now.

Two ``hotline serve`` processes share the Redis store. Process A claims two due phone surveys but has one line
(``ari.max_concurrent_calls = 1``): the second citizen waits for the line, then is called. Process B runs its own
due worker meanwhile. The far side is the fake Asterisk of tests/ivr_support.py (real ARI over HTTP and, for an
answered call, a real AudioSocket connection where the citizen listens and presses keys). The lease's fixed 30 s
safety margin is cut to 0.5 s so the test takes seconds; a queue of enough calls outlasts any fixed margin.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from aiohttp.test_utils import TestClient

from hotline.app import create_app
from hotline.appkeys import STORE, SURVEYS
from hotline.ivr.feature import SURVEY_CALLER, VOICE
from hotline.ivr.outbound import AriSurveyCaller
from hotline.ivr.prompts import PromptLibrary
from hotline.records import Case
from hotline.redis_server import EmbeddedRedis
from hotline.status import Status
from hotline.store.surveys import ANSWERED, MAIN, SCHEDULED
from hotline.surveys import next_working_time
from tests.conftest import make_settings
from tests.dispatch_support import SECRET, Open311Receiver
from tests.ivr_support import Callee, FakeAri, ko_model_dir
from tests.test_survey_calls import resolve, voice_case

pytestmark = pytest.mark.realtime

SILENT = "13800138011"  # picks up and never presses a key: the line stays busy for the whole call
ANSWERS = "13800138012"
QUESTIONS = ("survey_resolved", "survey_satisfaction")
PASSWORD = "s3cret-ari-pass"
RING_S, MARGIN_S, MAX_CALL_S = 1, 0.5, 8.0


@pytest.fixture
async def ari() -> AsyncIterator[FakeAri]:
    fake = await FakeAri(password=PASSWORD, prompts=PromptLibrary(), questions=QUESTIONS).start()
    yield fake
    await fake.close()


def settings_for(redis_server: EmbeddedRedis, data_dir: Path, prefix: str, dispatch_url: str, ari_url: str, *,
                 poll_s: float, model: bool, hours: tuple[int, int] = (0, 24)) -> Any:
    dispatch = {"backend": "open311", "url": dispatch_url, "api_key": "city-key", "secret": SECRET,
                "backoff_base_s": 0.05, "backoff_max_s": 0.2, "max_attempts": 3, "request_timeout_s": 2.0,
                "sweep_interval_s": 3600.0}
    # Due at once (at any hour unless ``hours`` says otherwise); a try that did not get answers comes back only
    # hours later (not in these tests).
    callbacks = {"delay_s": 0, "hours_start": hours[0], "hours_end": hours[1], "poll_s": poll_s,
                 "max_attempts": 2, "answer_timeout_s": 86400}
    voice = {"model_dir": str(ko_model_dir() if model else data_dir / "none"), "audiosocket_port": 0,
             "no_input_s": 5.0}
    ari = {"url": ari_url, "user": "hotline", "password": PASSWORD, "trunk": "citytrunk",
           "context": "hotline-survey", "caller_id": "12345", "ring_timeout_s": RING_S,
           "connect_margin_s": MARGIN_S, "max_call_s": MAX_CALL_S, "max_concurrent_calls": 1}
    return make_settings(redis_server.url, data_dir, prefix, dispatch=dispatch, callbacks=callbacks, voice=voice,
                         ari=ari, dedup={"enabled": False})


async def test_a_citizen_queued_for_a_line_is_called_once(aiohttp_client: Any, redis_server: EmbeddedRedis,
                                                           tmp_path: Path, key_prefix: str,
                                                           receiver: Open311Receiver, ari: FakeAri,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    lease_s = RING_S + MARGIN_S + MAX_CALL_S + 0.5
    monkeypatch.setattr(AriSurveyCaller, "max_call_s",
                        property(lambda self: self.cfg.ring_timeout_s + self.cfg.connect_margin_s
                                 + self.cfg.max_call_s + 0.5))
    # Process A: the test drives its due worker (poll_s is long).
    a: TestClient = await aiohttp_client(create_app(settings_for(
        redis_server, tmp_path / "a", key_prefix, receiver.url, ari.url, poll_s=3600.0, model=True)))
    ari.audiosocket = ("127.0.0.1", a.app[VOICE].audiosocket_port)
    ari.callees[SILENT] = Callee(keys=())
    ari.callees[ANSWERS] = Callee(keys=("1", "1"))  # 已解决, 满意
    service = a.app[SURVEYS]
    silent = await resolve(a, receiver, (await voice_case(a, SILENT, "建设路口的路灯坏了一个星期")).id, "已修复。")
    answers = await resolve(a, receiver, (await voice_case(a, ANSWERS, "解放街的井盖丢了")).id, "已补装井盖。")
    await service.schedule(silent)
    await service.schedule(answers)

    started = time.monotonic()
    run = asyncio.create_task(service.run_due())
    surveys = service.surveys
    keys = [f"{silent.id}|{MAIN}", f"{answers.id}|{MAIN}"]

    async def both_leased() -> bool:
        scores = [await surveys.r.zscore(surveys.k_due, k) for k in keys]
        return all(s is not None and s > time.time() + 1 for s in scores)

    while not await both_leased():
        assert not run.done()
        await asyncio.sleep(0.02)
    # Process B starts beside it with its own line and a due worker polling every 0.2 s.
    b: TestClient = await aiohttp_client(create_app(settings_for(
        redis_server, tmp_path / "b", key_prefix, receiver.url, ari.url, poll_s=0.2, model=False)))
    assert b.app[SURVEYS].caller is b.app[SURVEY_CALLER]
    assert await asyncio.wait_for(run, 60) == 2
    held_s = time.monotonic() - started
    # The second citizen waited for the silent call's line, then was surveyed: longer than one lease.
    assert held_s > lease_s + 1, held_s
    await asyncio.sleep(1.0)  # B's worker polls a few more times

    dialled = [o["number"] for o in ari.originated]
    assert dialled.count(SILENT) == 1
    assert dialled.count(ANSWERS) == 1, f"citizen rung {dialled.count(ANSWERS)} times: {dialled}"
    store = a.app[STORE]
    placed = [e for e in await store.events(answers.id) if e.action == "survey_call_placed"]
    assert len(placed) == 1
    survey = await surveys.get(answers.id)
    assert survey is not None
    rec = survey.recipients[MAIN]
    assert rec.state == ANSWERED and rec.attempts == 1 and rec.satisfaction == "satisfied"
    rec = (await surveys.get(silent.id)).recipients[MAIN]  # type: ignore[union-attr]
    assert rec.attempts == 1
    # Both surveys are off the schedule until their next try, hours away.
    for k in keys:
        score = await surveys.r.zscore(surveys.k_due, k)
        assert score is None or score > time.time() + 3600


# Checked again once the line is free ---------------------------------------------------------------------------

async def queued_behind_a_silent_call(aiohttp_client: Any, redis_server: EmbeddedRedis, tmp_path: Path,
                                      key_prefix: str, receiver: Open311Receiver, ari: FakeAri,
                                      **over: Any) -> tuple[TestClient, dict[str, Case]]:
    """Process A with one line and two due phone surveys of citizens who pick up and stay silent: whichever
    gets the line first holds it for the whole call, and the other waits."""
    a: TestClient = await aiohttp_client(create_app(settings_for(
        redis_server, tmp_path / "a", key_prefix, receiver.url, ari.url, poll_s=3600.0, model=True, **over)))
    ari.audiosocket = ("127.0.0.1", a.app[VOICE].audiosocket_port)
    ari.callees[SILENT] = Callee(keys=())
    ari.callees[ANSWERS] = Callee(keys=())
    service = a.app[SURVEYS]
    cases = {SILENT: await resolve(a, receiver, (await voice_case(a, SILENT, "建设路口的路灯坏了一个星期")).id,
                                   "已修复。"),
             ANSWERS: await resolve(a, receiver, (await voice_case(a, ANSWERS, "解放街的井盖丢了")).id, "已补装井盖。")}
    for case in cases.values():
        await service.schedule(case)
    return a, cases


async def first_dialled(ari: FakeAri, run: asyncio.Task[int], cases: dict[str, Case]) -> tuple[Case, Case]:
    """One citizen's phone rings (the tries start side by side, so either may get the line first): that case,
    and the other one, which now waits for the line."""
    while not ari.originated:
        assert not run.done()
        await asyncio.sleep(0.02)
    number = ari.originated[0]["number"]
    assert [o["number"] for o in ari.originated] == [number]
    (other,) = [n for n in cases if n != number]
    return cases[number], cases[other]


async def test_a_survey_answered_while_it_waits_for_a_line_is_not_dialled(
        aiohttp_client: Any, redis_server: EmbeddedRedis, tmp_path: Path, key_prefix: str,
        receiver: Open311Receiver, ari: FakeAri) -> None:
    a, cases = await queued_behind_a_silent_call(aiohttp_client, redis_server, tmp_path, key_prefix, receiver, ari)
    service = a.app[SURVEYS]
    run = asyncio.create_task(service.run_due())
    on_line, waits = await first_dialled(ari, run, cases)
    survey = await service.surveys.get(waits.id)
    assert survey is not None
    token = service.link(waits.id, MAIN, survey.round).split("/survey/", 1)[1]
    # The citizen answers through the web link (the status page or the SMS) while their call waits.
    web = await a.post(f"/survey/{token}", data={"resolved": "yes", "satisfaction": "satisfied"})
    assert web.status == 200 and "感谢" in await web.text()
    assert [o["number"] for o in ari.originated] == [on_line.contact]  # still on the other citizen's line

    assert await asyncio.wait_for(run, 60) == 2
    assert [o["number"] for o in ari.originated] == [on_line.contact], "rung after answering through the web link"
    store = a.app[STORE]
    assert not [e for e in await store.events(waits.id) if e.action.startswith("survey_call")]
    rec = (await service.surveys.get(waits.id)).recipients[MAIN]  # type: ignore[union-attr]
    assert rec.state == ANSWERED and rec.answered_by == "web:citizen" and rec.attempts == 0
    assert (await store.get_case(waits.id)).status == Status.CLOSED
    surveys = service.surveys
    assert await surveys.r.zscore(surveys.k_due, f"{waits.id}|{MAIN}") is None
    assert (await surveys.get(on_line.id)).recipients[MAIN].attempts == 1  # type: ignore[union-attr]


async def test_a_survey_still_waiting_for_a_line_when_the_calling_hours_close_is_moved_to_the_next_opening(
        aiohttp_client: Any, redis_server: EmbeddedRedis, tmp_path: Path, key_prefix: str,
        receiver: Open311Receiver, ari: FakeAri) -> None:
    a, cases = await queued_behind_a_silent_call(aiohttp_client, redis_server, tmp_path, key_prefix, receiver, ari,
                                                 hours=(9, 20))
    service = a.app[SURVEYS]
    # The worker's clock (run_due's ``now``): two seconds before the calling hours close, two days on.
    tz = ZoneInfo(service.cfg.timezone)
    closing = (datetime.now(tz) + timedelta(days=2)).replace(hour=20, minute=0, second=0, microsecond=0)
    now = closing.timestamp() - 2
    assert next_working_time(now, service.cfg) == now  # both tries start inside the hours
    run = asyncio.create_task(service.run_due(now))
    on_line, waits = await first_dialled(ari, run, cases)

    assert await asyncio.wait_for(run, 60) == 2  # the silent call holds the line for longer than 2 s
    assert [o["number"] for o in ari.originated] == [on_line.contact], "rung after the calling hours"
    store = a.app[STORE]
    assert not [e for e in await store.events(waits.id) if e.action.startswith("survey_call")]
    surveys = service.surveys
    rec = (await surveys.get(waits.id)).recipients[MAIN]  # type: ignore[union-attr]
    assert rec.state == SCHEDULED and rec.attempts == 0
    opening = (closing + timedelta(days=1)).replace(hour=9).timestamp()
    assert await surveys.r.zscore(surveys.k_due, f"{waits.id}|{MAIN}") == opening
    assert (await surveys.get(on_line.id)).recipients[MAIN].attempts == 1  # type: ignore[union-attr]
