"""Outbound satisfaction-survey calls (issues 8 + 9): Asterisk ARI originate → AudioSocket → IVR survey.

The far side is a fake Asterisk speaking the real protocols: ARI over HTTP (``POST /ari/channels`` with basic
auth, Asterisk's channel JSON and error bodies) and, for an answered call, the survey dialplan context's
``AudioSocket(${HOTLINE_CALL_ID},host:port)`` as a real TCP connection to the service, where the "citizen"
listens for each question and presses keys. Everything else is real: the app, the embedded Valkey, the
intake, an Open311 receiver for dispatch, the Vosk engine (Korean test model) listening beside the keys.
"""

from __future__ import annotations

import base64
import logging
import time
import uuid
from collections.abc import AsyncIterator
from datetime import datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from hotline.app import create_app
from hotline.appkeys import DISPATCHER, INTAKE, STORE, SURVEYS
from hotline.ivr.feature import SURVEY_CALLER, VOICE
from hotline.ivr.outbound import AriSettings, AriSurveyCaller, dial_number
from hotline.ivr.prompts import PromptLibrary
from hotline.records import Case, InboundMessage
from hotline.redis_server import EmbeddedRedis
from hotline.settings import SettingsError
from hotline.status import Status
from hotline.store.calls import ABANDONED, CallStore
from hotline.store.surveys import FOLLOWUP, MAIN, SCHEDULED
from hotline.surveys import next_working_time
from tests.conftest import make_settings
from tests.dispatch_support import CLASSIFICATION, SECRET, Open311Receiver, post_event, wait_for
from tests.ivr_support import Callee, FakeAri, ko_model_dir

pytestmark = pytest.mark.realtime

ANSWERS = "13800138001"
NO_ANSWER = "13800138002"
HANGS_UP = "13800138003"
LATE = "13800138004"
QUESTIONS = ("survey_resolved", "survey_satisfaction")
PASSWORD = "s3cret-ari-pass"


@pytest.fixture
async def ari() -> AsyncIterator[FakeAri]:
    fake = await FakeAri(password=PASSWORD, prompts=PromptLibrary(), questions=QUESTIONS).start()
    yield fake
    await fake.close()


def survey_settings(redis_server: EmbeddedRedis, tmp_path: Path, prefix: str, dispatch_url: str, ari_url: str,
                    **ari_over: Any) -> Any:
    dispatch = {"backend": "open311", "url": dispatch_url, "api_key": "city-key", "secret": SECRET,
                "backoff_base_s": 0.05, "backoff_max_s": 0.2, "max_attempts": 3, "request_timeout_s": 2.0,
                "sweep_interval_s": 3600.0}
    # Due at once at any hour, a new try as soon as the last one failed; the tests drive run_due themselves.
    callbacks = {"delay_s": 0, "hours_start": 0, "hours_end": 24, "poll_s": 3600.0, "max_attempts": 2,
                 "answer_timeout_s": 0}
    voice = {"model_dir": str(ko_model_dir()), "audiosocket_port": 0, "no_input_s": 5.0}
    ari = {"url": ari_url, "user": "hotline", "password": PASSWORD, "trunk": "citytrunk",
           "context": "hotline-survey", "caller_id": "12345", "ring_timeout_s": 2, "connect_margin_s": 1.5,
           "max_call_s": 90.0, **ari_over}
    return make_settings(redis_server.url, tmp_path, prefix, dispatch=dispatch, callbacks=callbacks, voice=voice,
                         ari=ari, rates={"min_cases_for_ranking": 1}, dedup={"enabled": False})


@pytest.fixture
async def app_client(aiohttp_client: Any, redis_server: EmbeddedRedis, tmp_path: Path, key_prefix: str,
                     receiver: Open311Receiver, ari: FakeAri) -> TestClient:
    client = await aiohttp_client(create_app(survey_settings(redis_server, tmp_path, key_prefix, receiver.url,
                                                             ari.url)))
    ari.audiosocket = ("127.0.0.1", client.app[VOICE].audiosocket_port)
    return client


async def voice_case(client: TestClient, number: str, text: str) -> Case:
    """A phone complaint as the IVR flow hands it to intake."""
    result = await client.app[INTAKE].submit(InboundMessage(
        channel="voice", sender=number, contact=number, text=text, transcript=text, address="建设路与解放街路口",
        idempotency_key=str(uuid.uuid4())))
    assert result.created
    return result.case


async def resolve(client: TestClient, receiver: Open311Receiver, case_id: str, reply: str) -> Case:
    """Confirmed by a call-taker, delivered to the receiver, accepted and resolved by signed status events."""
    store = client.app[STORE]
    await client.app[DISPATCHER].confirm(case_id, CLASSIFICATION, "staff:zhang")

    async def delivered() -> bool:
        return (await store.get_case(case_id)).dispatch.get("state") == "delivered"

    await wait_for(delivered)
    order = (await store.get_case(case_id)).dispatch["order_id"]
    for seq, etype, extra in ((1, "accepted", {}), (2, "resolved", {"reply": reply})):
        status, body = await post_event(client, {"event_id": f"e-{case_id}-{etype}", "case_id": case_id,
                                                 "type": etype, "order_id": order, "seq": seq, **extra})
        assert status == 200, body
    case = await store.get_case(case_id)
    assert case.status == Status.RESOLVED
    return case


def actions(events: list[Any]) -> list[str]:
    return [e.action for e in events]


async def test_survey_call_unresolved_reopens_and_redispatches(app_client: TestClient, receiver: Open311Receiver,
                                                               ari: FakeAri, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    app = app_client.app
    assert app[SURVEYS].caller is app[SURVEY_CALLER]
    ari.callees[ANSWERS] = Callee(keys=("2", "2"))  # 未解决, 基本满意
    case = await voice_case(app_client, ANSWERS, "建设路口的路灯坏了一个星期，晚上一片漆黑")
    case = await resolve(app_client, receiver, case.id, "已更换灯泡，恢复照明。")
    service = app[SURVEYS]
    await service.schedule(case)
    assert await service.run_due() == 1
    assert ari.errors == []

    # What Asterisk was asked: the documented originate, with basic auth and the call id as channel variable.
    assert len(ari.requests) == 1
    req = ari.requests[0]
    q = req["query"]
    assert q["endpoint"] == f"PJSIP/{ANSWERS}@citytrunk" and q["context"] == "hotline-survey"
    assert q["extension"] == "s" and q["priority"] == "1" and q["timeout"] == "2" and q["callerId"] == "12345"
    assert str(uuid.UUID(q["channelId"])) == q["channelId"]
    assert req["body"] == {"variables": {"HOTLINE_CALL_ID": q["channelId"]}}
    assert req["auth"] == "Basic " + base64.b64encode(f"hotline:{PASSWORD}".encode()).decode()
    # The citizen heard the intro and both questions over AudioSocket.
    prompts = app[VOICE].prompts
    pbx = ari.calls[0]
    assert pbx.call_id == q["channelId"] and pbx.got_hangup.is_set()
    for name in ("survey_intro", *QUESTIONS):
        assert bytes(pbx.rx).find(prompts.pcm(name, 8000)[1600:3200]) >= 0, name

    store = app[STORE]
    stored = await store.get_case(case.id)
    assert stored.survey["resolved"] is False and stored.survey["satisfaction"] == "basic"
    # 重办: reopened and sent back to the same department as a flagged re-handling order.
    assert stored.status == Status.DISPATCHED
    assert stored.dispatch["redo"] is True and stored.dispatch["order_id"] == f"{case.id}-R2"
    await wait_for(lambda: any(a.key == f"{case.id}-R2" for a in receiver.orders))
    order = next(a for a in receiver.orders if a.key == f"{case.id}-R2").form
    assert order["attribute[redo]"] == "1" and order["attribute[redo_reason]"] == "市民反映问题未解决"
    events = await store.events(case.id)
    acts = actions(events)
    for expected in ("survey_scheduled", "survey_call_placed", "survey_call", "survey_answered", "reopened"):
        assert expected in acts, expected
    assert acts.index("survey_call_placed") < acts.index("survey_call") < acts.index("survey_answered") \
        < acts.index("reopened")
    call = next(e for e in events if e.action == "survey_call")
    assert call.actor == "voice:survey" and call.data["outcome"] == "answered"
    assert call.data["answers"] == {"resolved": "no", "satisfaction": "basic"}
    # The call's recording is named in the trail, and is there.
    assert call.data["audio_ref"].startswith("recordings/") and call.data["audio_ref"].endswith(".wav")
    assert (app[VOICE].data_dir / call.data["audio_ref"]).is_file()
    assert next(e for e in events if e.action == "survey_answered").actor == "voice:survey"
    to_dispatched = [i for i, e in enumerate(events) if e.data.get("to") == str(Status.DISPATCHED)]
    assert len(to_dispatched) == 2 and to_dispatched[1] > acts.index("reopened")
    # The call's Redis records are gone; the ARI password never reached a log line.
    calls = CallStore(store)
    assert await calls.get(q["channelId"]) is None
    assert PASSWORD not in caplog.text
    survey = await service.surveys.get(case.id)
    assert survey is not None and survey.recipients[MAIN].state == "answered"


async def test_no_answer_ends_on_the_follow_up_worklist(app_client: TestClient, receiver: Open311Receiver,
                                                        ari: FakeAri) -> None:
    app = app_client.app
    ari.callees[NO_ANSWER] = Callee(answer=False)
    case = await voice_case(app_client, NO_ANSWER, "解放街的井盖丢了，很危险")
    case = await resolve(app_client, receiver, case.id, "已补装井盖。")
    service = app[SURVEYS]
    await service.schedule(case)
    started = time.monotonic()
    for _ in range(3):  # max_attempts = 2 tries, then the worklist
        await service.run_due()
    # Each try waits ring time + margin (2 + 1.5 s) for a connection that never comes.
    assert time.monotonic() - started >= 2 * 3.5
    assert len(ari.originated) == 2 and not ari.calls
    survey = await service.surveys.get(case.id)
    assert survey is not None
    rec = survey.recipients[MAIN]
    assert rec.state == FOLLOWUP and rec.attempts == 2
    worklist = await service.worklist()
    assert [(r["case"].id, r["rid"]) for r in worklist] == [(case.id, MAIN)]
    events = await app[STORE].events(case.id)
    outcomes = [e.data["outcome"] for e in events if e.action == "survey_call"]
    assert outcomes == ["no_answer", "no_answer"]
    followup = [e for e in events if e.action == "survey_followup"]
    assert len(followup) == 1 and followup[0].data["reason"] == "no_reply"
    # A late connection for an abandoned try must never hear the inbound menu: the record says abandoned.
    ids = [o["channel_id"] for o in ari.originated]
    assert [(await CallStore(app[STORE]).get(i)).state for i in ids] == [ABANDONED, ABANDONED]
    assert (await app[STORE].get_case(case.id)).status == Status.RESOLVED


async def test_hang_up_mid_survey_and_late_answer(app_client: TestClient, receiver: Open311Receiver,
                                                  ari: FakeAri) -> None:
    app = app_client.app
    store = app[STORE]
    caller = app[SURVEY_CALLER]
    prompts = app[VOICE].prompts
    ari.callees[HANGS_UP] = Callee(keys=("2",), hang_up_after=1)  # 未解决, then gone before Q2
    case = await voice_case(app_client, HANGS_UP, "和平巷的垃圾三天没人清运了")
    assert await caller.survey_call(HANGS_UP, case.id) is None
    assert ari.errors == []
    events = await store.events(case.id)
    call = [e for e in events if e.action == "survey_call"][-1]
    assert call.data["outcome"] == "hung_up" and call.data["answers"] == {"resolved": "no", "satisfaction": ""}

    # Answered, but connected after the originator stopped waiting: hung up at once, not a word played.
    ari.callees[LATE] = Callee(answer_after_s=0.2, connect_delay_s=4.0)
    case2 = await voice_case(app_client, LATE, "北苑小区门口路灯不亮")
    assert await caller.survey_call(LATE, case2.id) is None
    await wait_for(lambda: len(ari.calls) == 2 and ari.calls[1].closed.is_set(), timeout=15)
    late = ari.calls[1]
    assert late.got_hangup.is_set() and bytes(late.rx).find(prompts.pcm("greeting", 8000)[1600:3200]) == -1
    assert bytes(late.rx) == b""
    assert [e.data["outcome"] for e in await store.events(case2.id) if e.action == "survey_call"] == ["no_answer"]
    assert not app[VOICE].active_sessions


@pytest.mark.parametrize("fault", ["wrong_password", "asterisk_500", "unknown_trunk", "unroutable", "refused",
                                   "bad_number"])
async def test_ari_errors_are_no_answer(client: TestClient, ari: FakeAri, fault: str) -> None:
    """ARI refusing or unreachable: no answer (None), the reason in the case's trail, nothing left in Redis."""
    store = client.app[STORE]
    result = await client.app[INTAKE].submit(InboundMessage(channel="voice", sender=ANSWERS, contact=ANSWERS,
                                                            text="滨河路的护栏被撞坏了"))
    case_id = result.case.id
    cfg = AriSettings(url=ari.url, user="hotline", password=PASSWORD, trunk="citytrunk", ring_timeout_s=2,
                      connect_margin_s=1.0, max_call_s=30.0, request_timeout_s=2.0)
    number = ANSWERS
    ari.callees[ANSWERS] = Callee(keys=("1", "1"))
    if fault == "wrong_password":
        cfg.password = "guess"
    elif fault == "asterisk_500":
        ari.fail_with = 500
    elif fault == "unknown_trunk":
        cfg.trunk = "nosuchtrunk"
    elif fault == "unroutable":
        number = "13800000000"  # no such callee: Asterisk cannot allocate the channel
    elif fault == "refused":
        probe = web.AppRunner(web.Application())
        await probe.setup()
        site = web.TCPSite(probe, "127.0.0.1", 0)
        await site.start()
        port = probe.addresses[0][1]
        await probe.cleanup()  # nothing listens there any more
        cfg.url = f"http://127.0.0.1:{port}"
    elif fault == "bad_number":
        number = "call me maybe"
    async with aiohttp.ClientSession() as http:
        caller = AriSurveyCaller(cfg, store, http)
        assert await caller.survey_call(number, case_id) is None
    expected = {"wrong_password": 401, "asterisk_500": 500, "unknown_trunk": 400, "unroutable": 500, "refused": 0}
    events = [e for e in await store.events(case_id) if e.action == "survey_call"]
    assert len(events) == 1
    if fault == "bad_number":
        assert events[0].data["outcome"] == "bad_number" and not ari.requests
    else:
        assert events[0].data["outcome"] == "ari_error" and events[0].data["status"] == expected[fault]
        call_ids = [r["query"].get("channelId", "") for r in ari.requests]
        for call_id in call_ids:
            assert await CallStore(store).get(call_id) is None
    assert not ari.originated and not ari.calls  # no channel was created, nobody was rung


async def test_no_call_outside_calling_hours(aiohttp_client: Any, redis_server: EmbeddedRedis, tmp_path: Path,
                                             key_prefix: str, receiver: Open311Receiver, ari: FakeAri) -> None:
    settings = survey_settings(redis_server, tmp_path, key_prefix, receiver.url, ari.url)
    client = await aiohttp_client(create_app(settings))
    ari.callees[ANSWERS] = Callee(keys=("1", "1"))
    case = await voice_case(client, ANSWERS, "幸福里小区电梯经常故障停运")
    case = await resolve(client, receiver, case.id, "已维修电梯。")
    service = client.app[SURVEYS]
    await service.schedule(case)
    # The worker picks the entry up late: this hour is outside a one-hour calling window (by the clock).
    hour = datetime.now(ZoneInfo(service.cfg.timezone)).hour
    service.cfg.hours_start, service.cfg.hours_end = (hour + 2) % 24, (hour + 2) % 24 + 1
    now = time.time()
    opens = next_working_time(now, service.cfg)
    assert opens > now
    await service.run_due(now)
    assert ari.requests == []  # nobody was rung
    due = await service.surveys.r.zscore(service.surveys.k_due, f"{case.id}|{MAIN}")
    assert due == pytest.approx(opens)
    survey = await service.surveys.get(case.id)
    assert survey is not None and survey.recipients[MAIN].state == SCHEDULED
    assert survey.recipients[MAIN].attempts == 0


def test_bad_ari_settings_stop_start_up(redis_server: EmbeddedRedis, tmp_path: Path) -> None:
    for over in ({"trunk": "evil@trunk;x"}, {"url": "ftp://pbx"}, {"context": "a,b"}):
        settings = make_settings(redis_server.url, tmp_path, "x", ari={"url": "http://127.0.0.1:8088",
                                                                       "trunk": "citytrunk", **over})
        with pytest.raises(SettingsError):
            create_app(settings)
    assert dial_number("138 0013-8000") == "13800138000" and dial_number("+8613800138000") == "+8613800138000"
    assert dial_number("13800138000@evil") == "" and dial_number("") == ""


async def test_answers_survive_a_second_process(aiohttp_client: Any, redis_server: EmbeddedRedis, tmp_path: Path,
                                                key_prefix: str, receiver: Open311Receiver, ari: FakeAri) -> None:
    """The process that places the call is not the one Asterisk connects to: they meet in Redis."""
    placing = await aiohttp_client(create_app(survey_settings(redis_server, tmp_path / "a", key_prefix,
                                                              receiver.url, ari.url)))
    # A second serve process on the same Redis, no speech model (keys only), its own AudioSocket port.
    other = make_settings(redis_server.url, tmp_path / "b", key_prefix,
                          voice={"model_dir": str(tmp_path / "none"), "audiosocket_port": 0})
    answering = await aiohttp_client(create_app(other))
    ari.audiosocket = ("127.0.0.1", answering.app[VOICE].audiosocket_port)
    ari.callees[ANSWERS] = Callee(keys=("1", "1"))  # 已解决, 满意
    case = await voice_case(placing, ANSWERS, "东湖花园门口的公交站台顶棚破损漏雨")
    result = await placing.app[SURVEY_CALLER].survey_call(ANSWERS, case.id)
    assert result == {"resolved": True, "satisfaction": "satisfied"}
    assert ari.errors == [] and len(ari.calls) == 1
    assert not placing.app[VOICE].active_sessions
    status = await answering.get(f"/ivr/calls/{ari.calls[0].call_id}")
    body = await status.json()
    assert body["action"] == "hangup" and body["case_id"] == case.id
