"""Consultations on the phone answered from the knowledge base (issue 10, IVR door), end to end.

A fake Asterisk connects over AudioSocket (real framing, real-time pacing), presses 2 (咨询) and asks a
question in synthesised Mandarin; the real Vosk engine (Korean test model) hears it, the real intake stores
it, the answer service finds a real knowledge-base entry in the embedded Valkey, and the caller hears the
fixed offer prompts and chooses 1 (by text), 2 (a call-taker) or 3 (register the question).

The test model is Korean, so the knowledge-base entry's question is what that model hears in the question
audio (as the emergency-word test does with its keyword list): retrieval, thresholds and the flow are
exercised for real, whatever language the model speaks.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from hotline.appkeys import ANSWERS, NOTIFICATIONS, STORE
from hotline.ivr.feature import VOICE
from hotline.notify import Notification
from hotline.redis_server import EmbeddedRedis
from hotline.status import Status
from hotline.store.kb import KnowledgeBase
from tests.ivr_support import FakeAudioSocketPBX, early, espeak, find_in
from tests.test_ivr_calls import call_status, start_app

pytestmark = pytest.mark.realtime

CALLER = "13912345678"
# 请问新生儿医保怎么办理，需要什么材料？
QUESTION_PINYIN = "qing3 wen4 xin1 sheng1 er2 yi1 bao3 zen3 me5 ban4 li3, xu1 yao4 shen2 me5 cai2 liao4?"
ANSWER = "新生儿凭出生医学证明和户口簿到社区医保窗口办理参保，出生后三个月内参保的，自出生之日起享受待遇。"


@pytest.fixture(scope="module")
def question8() -> bytes:
    return espeak(QUESTION_PINYIN, 8000)


class TextGateway:
    """The far side of a text channel that reaches phone numbers (a city's SMS gateway plugged in as a
    notifier): records what would be sent."""

    def __init__(self) -> None:
        self.sent: list[Notification] = []

    async def send(self, notification: Notification) -> bool:
        self.sent.append(notification)
        return True


async def app_with_kb(aiohttp_client: Any, redis_server: EmbeddedRedis, tmp_path: Path, key_prefix: str,
                      question8: bytes, *, entry: bool = True) -> tuple[web.Application, Any]:
    app, client = await start_app(aiohttp_client, redis_server, tmp_path, key_prefix)
    service = app[ANSWERS]
    await service.ready.wait()
    kb = KnowledgeBase(app[STORE])
    today = time.strftime("%Y-%m-%d")
    if entry:
        heard = await app[VOICE].stt.transcribe_pcm(question8, 8000)
        assert heard.text
        await kb.add({"question": heard.text, "answer": ANSWER, "department": "医疗保障局", "date": today},
                     actor="staff:editor")
    # Unrelated entries, so the index is a real one rather than a single document.
    await kb.add({"question": "供暖费什么时候开始收，在哪里交", "answer": "供暖费每年9月起在供热公司营业厅缴纳。",
                  "department": "供热办", "date": today}, actor="staff:editor")
    await kb.add({"question": "小学入学报名需要准备哪些材料", "answer": "需户口簿、房产证明和预防接种证。",
                  "department": "教育局", "date": today}, actor="staff:editor")
    await service.refresh()
    return app, client


async def consult_call(app: web.Application, client: Any, question8: bytes, choice: str | None,
                       caller: str = CALLER) -> tuple[FakeAudioSocketPBX, dict[str, Any]]:
    """Menu 2, the question, 1 确认; then ``choice`` once the offer is heard (None: no offer expected).
    ``caller`` "" is a call without caller ID (the dialplan announces nothing)."""
    voice = app[VOICE]
    prompts = voice.prompts
    call_id = str(uuid.uuid4())
    if caller:
        resp = await client.post(f"/ivr/calls/{call_id}", data={"caller": caller})
        assert resp.status == 204
    pbx = FakeAudioSocketPBX("127.0.0.1", voice.audiosocket_port, rate=8000, call_id=call_id)
    await pbx.connect()
    try:
        await pbx.wait_audio(10)
        await pbx.press("2")  # 咨询, typed ahead through the greeting and the menu
        at = await pbx.wait_for(prompts.pcm("beep", 8000), 60)
        # The beep is still playing when it reaches us (frames are sent ahead): start after it, as a caller would.
        await asyncio.sleep(0.5)
        pbx.caller.say(question8)
        at = await pbx.wait_for(early(prompts.pcm("confirm", 8000), 8000), 90, at)
        await pbx.press("1")
        if choice is not None:
            at = await pbx.wait_for(early(prompts.pcm("answer_found", 8000), 8000), 60, at)
            await pbx.press(choice)
        await pbx.wait_closed(90)
    finally:
        await pbx.drop()
    return pbx, await call_status(client, call_id)


async def events(app: web.Application, case_id: str) -> list[Any]:
    return await app[STORE].events(case_id)


async def test_offer_then_call_taker_reads_the_answer(aiohttp_client: Any, redis_server: EmbeddedRedis,
                                                      tmp_path: Path, key_prefix: str, question8: bytes) -> None:
    app, client = await app_with_kb(aiohttp_client, redis_server, tmp_path, key_prefix, question8)
    prompts = app[VOICE].prompts
    pbx, status = await consult_call(app, client, question8, "2")
    # The PBX is told to put the caller through; the call-taker finds the case and its suggestion.
    assert status["action"] == "transfer" and status["reason"] == "answer_reader"
    assert find_in(bytes(pbx.rx), prompts.pcm("transfer", 8000)) >= 0
    case = await app[STORE].get_case(status["case_id"])
    assert case.channel == "voice" and case.contact == CALLER and case.status == Status.CLASSIFIED
    offered = [e for e in await events(app, case.id) if e.action == "ivr_answer_offered"]
    assert len(offered) == 1 and offered[0].data["choice"] == "call_taker"
    assert offered[0].data["department"] == "医疗保障局"
    suggestion = await app[ANSWERS].suggest_case(case)
    assert suggestion.answer is not None and suggestion.answer.entry.answer == ANSWER
    assert app[VOICE].stt.active_streams == 0 and not app[VOICE].active_sessions


async def test_text_without_a_text_channel_waits_on_the_status_page(
        aiohttp_client: Any, redis_server: EmbeddedRedis, tmp_path: Path, key_prefix: str,
        question8: bytes) -> None:
    app, client = await app_with_kb(aiohttp_client, redis_server, tmp_path, key_prefix, question8)
    prompts = app[VOICE].prompts
    assert app[VOICE].cfg.answer_text_channel == ""  # as shipped: no channel reaches a phone number by text
    pbx, status = await consult_call(app, client, question8, "1")
    assert status["action"] == "hangup" and status["reason"] == "done"
    rx = bytes(pbx.rx)
    online = find_in(rx, prompts.pcm("answer_online", 8000))
    assert online >= 0
    # Then the case number, which the caller needs to read the answer.
    readback = prompts.sequence(["case_number_is", *prompts.digits(status["case_id"])], 8000)
    assert find_in(rx, readback, online) > online
    case = await app[STORE].get_case(status["case_id"])
    assert case.status == Status.ANSWERED and case.answer["answer"] == ANSWER  # 直接答复
    assert case.answer["mode"] == "web_status" and case.answer["answered_by"] == "voice:ivr"
    actions = [e.action for e in await events(app, case.id)]
    assert "answered" in actions and "ivr_answer_online" in actions and "ivr_answer_requested" not in actions
    assert case.id not in await app[STORE].confirm_queue()
    page = await client.post("/status", data={"case_id": case.id, "last4": CALLER[-4:]})
    html = await page.text()
    assert page.status == 200 and ANSWER in html and "医疗保障局" in html
    wrong = await client.post("/status", data={"case_id": case.id, "last4": "0000"})
    assert wrong.status == 404 and ANSWER not in await wrong.text()


async def test_text_to_an_unknown_number_is_recorded_for_a_call_taker(
        aiohttp_client: Any, redis_server: EmbeddedRedis, tmp_path: Path, key_prefix: str,
        question8: bytes) -> None:
    """Without caller ID nobody could read the answer on the status page: a call-taker follows up."""
    app, client = await app_with_kb(aiohttp_client, redis_server, tmp_path, key_prefix, question8)
    prompts = app[VOICE].prompts
    pbx, status = await consult_call(app, client, question8, "1", caller="")
    assert status["action"] == "hangup" and status["reason"] == "done"
    rx = bytes(pbx.rx)
    later = find_in(rx, prompts.pcm("answer_later", 8000))
    assert later >= 0 and find_in(rx, prompts.pcm("answer_online", 8000)) < 0
    readback = prompts.sequence(["case_number_is", *prompts.digits(status["case_id"])], 8000)
    assert find_in(rx, readback, later) > later
    case = await app[STORE].get_case(status["case_id"])
    assert case.status == Status.CLASSIFIED and case.needs_confirmation and not case.answer
    requested = [e for e in await events(app, case.id) if e.action == "ivr_answer_requested"]
    assert len(requested) == 1 and requested[0].data["reason"] == "no_caller_number"
    assert requested[0].data["entry_id"].startswith("kb-")
    assert case.id in await app[STORE].confirm_queue()


async def test_text_through_a_text_channel_answers_the_contact(aiohttp_client: Any, redis_server: EmbeddedRedis,
                                                               tmp_path: Path, key_prefix: str,
                                                               question8: bytes) -> None:
    app, client = await app_with_kb(aiohttp_client, redis_server, tmp_path, key_prefix, question8)
    prompts = app[VOICE].prompts
    gateway = TextGateway()
    app[NOTIFICATIONS].register("sms", gateway)
    app[VOICE].cfg.answer_text_channel = "sms"
    pbx, status = await consult_call(app, client, question8, "1")
    assert status["action"] == "hangup"
    rx = bytes(pbx.rx)
    sent_at = find_in(rx, prompts.pcm("answer_sent", 8000))
    assert sent_at >= 0 and find_in(rx, prompts.pcm("goodbye", 8000), sent_at) > sent_at
    assert len(gateway.sent) == 1
    msg = gateway.sent[0]
    assert msg.recipient == CALLER and msg.channel == "sms" and msg.case_id == status["case_id"]
    assert ANSWER in msg.text and "医疗保障局" in msg.text  # the answer with its source
    case = await app[STORE].get_case(status["case_id"])
    assert case.status == Status.ANSWERED and case.answer["answer"] == ANSWER  # 直接答复
    actions = [e.action for e in await events(app, case.id)]
    assert "ivr_answer_offered" in actions and "answered" in actions and "notified" in actions


@pytest.mark.parametrize("entry", [True, False], ids=["choice-3", "no-entry"])
async def test_register_or_no_answer_continues_as_a_case(aiohttp_client: Any, redis_server: EmbeddedRedis,
                                                         tmp_path: Path, key_prefix: str, question8: bytes,
                                                         entry: bool) -> None:
    app, client = await app_with_kb(aiohttp_client, redis_server, tmp_path, key_prefix, question8, entry=entry)
    prompts = app[VOICE].prompts
    pbx, status = await consult_call(app, client, question8, "3" if entry else None)
    assert status["action"] == "hangup" and status["reason"] == "done"
    rx = bytes(pbx.rx)
    heard_offer = find_in(rx, early(prompts.pcm("answer_found", 8000), 8000)) >= 0
    assert heard_offer is entry
    readback = prompts.sequence(["case_number_is", *prompts.digits(status["case_id"])], 8000)
    assert find_in(rx, readback) >= 0
    case = await app[STORE].get_case(status["case_id"])
    assert case.status == Status.CLASSIFIED and not case.answer
    offered = [e for e in await events(app, case.id) if e.action == "ivr_answer_offered"]
    assert [e.data["choice"] for e in offered] == (["register"] if entry else [])
