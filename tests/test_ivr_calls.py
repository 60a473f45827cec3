"""Whole calls through the real app: fake Asterisk clients on each adapter, the real Vosk engine (Korean
model), the real intake and embedded Valkey. The caller speaks Mandarin synthesised by espeak-ng."""

from __future__ import annotations

import asyncio
import logging
import uuid
import wave
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from hotline.app import create_app
from hotline.appkeys import STORE, STT
from hotline.ivr.feature import VOICE
from hotline.ivr.flow import UNRECOGNISED_TEXT
from hotline.redis_server import EmbeddedRedis
from tests.conftest import make_settings
from tests.ivr_support import (
    COMPLAINT_PINYIN,
    FakeAudioSocketPBX,
    FakeWebSocketPBX,
    early,
    espeak,
    find_in,
    ko_model_dir,
    noise,
)

pytestmark = pytest.mark.realtime

CALLER = "13800138000"


@pytest.fixture(scope="module")
def complaint8() -> bytes:
    return espeak(COMPLAINT_PINYIN, 8000)


@pytest.fixture(scope="module")
def complaint16() -> bytes:
    return espeak(COMPLAINT_PINYIN, 16000)


def voice_settings(**over: Any) -> dict[str, Any]:
    values: dict[str, Any] = {"model_dir": str(ko_model_dir()), "audiosocket_port": 0, "low_confidence": 0.0,
                              "no_input_s": 5.0, "end_silence_s": 1.0, "max_complaint_s": 30.0}
    values.update(over)
    return values


async def start_app(aiohttp_client: Any, redis_server: EmbeddedRedis, tmp_path: Path, key_prefix: str,
                    **voice: Any) -> tuple[web.Application, Any]:
    settings = make_settings(redis_server.url, tmp_path, key_prefix, voice=voice_settings(**voice))
    app = create_app(settings)
    client = await aiohttp_client(app)
    return app, client


async def call_status(client: Any, call_id: str, timeout: float = 10.0) -> dict[str, Any]:
    """What the dialplan reads after the call leg ends."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        resp = await client.get(f"/ivr/calls/{call_id}")
        body = await resp.json()
        if resp.status == 200 and body["action"] != "pending":
            return body
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"call {call_id} did not finish: {body}")
        await asyncio.sleep(0.1)


async def voice_event(app: web.Application, case_id: str) -> dict[str, Any]:
    """The call's facts the flow writes to the case's audit trail."""
    events = [e for e in await app[STORE].events(case_id) if e.action == "voice_call"]
    assert len(events) == 1
    return events[0].data


def wav_seconds(path: Path) -> float:
    with wave.open(str(path), "rb") as w:
        return w.getnframes() / w.getframerate()


async def test_audiosocket_call_end_to_end(aiohttp_client: Any, redis_server: EmbeddedRedis, tmp_path: Path,
                                           key_prefix: str, complaint8: bytes) -> None:
    app, client = await start_app(aiohttp_client, redis_server, tmp_path, key_prefix)
    voice = app[VOICE]
    assert app.get(STT) is voice.stt is not None
    prompts = voice.prompts
    call_id = str(uuid.uuid4())
    # Another serve process on the same Redis (a second worker or host, no speech model): the dialplan's
    # HTTP requests may reach it rather than the process that takes the AudioSocket connection.
    other = await aiohttp_client(create_app(make_settings(
        redis_server.url, tmp_path / "other", key_prefix,
        voice={"model_dir": str(tmp_path / "none"), "audiosocket_enabled": False})))
    # The dialplan announces the caller before AudioSocket() (AudioSocket itself only carries the UUID).
    resp = await other.post(f"/ivr/calls/{call_id}", data={"caller": CALLER})
    assert resp.status == 204
    pbx = FakeAudioSocketPBX("127.0.0.1", voice.audiosocket_port, rate=8000, call_id=call_id)
    await pbx.connect()
    try:
        await pbx.wait_audio(10)
        await pbx.press("1")  # barge-in on the greeting, type-ahead through the menu
        await pbx.wait_for(prompts.pcm("beep", 8000), 20)
        pbx.caller.say(complaint8)
        await pbx.wait_for(early(prompts.pcm("confirm", 8000), 8000), 40)
        await pbx.press("1")
        await pbx.wait_closed(60)
    finally:
        await pbx.drop()
    assert pbx.got_hangup.is_set()
    status = await call_status(client, call_id)
    assert status["action"] == "hangup" and status["reason"] == "done" and status["case_id"]
    case_id = status["case_id"]
    # The case number was read back digit by digit.
    readback = prompts.sequence(["case_number_is", *prompts.digits(case_id)], 8000)
    assert find_in(bytes(pbx.rx), readback) >= 0
    assert find_in(bytes(pbx.rx), prompts.pcm("goodbye", 8000)) >= 0
    case = await app[STORE].get_case(case_id)
    assert case.channel == "voice" and case.contact == CALLER and case.sender == CALLER
    assert case.transcript and case.text == case.transcript
    recording = voice.data_dir / case.audio_ref
    assert case.audio_ref.startswith("recordings/") and recording.is_file()
    assert wav_seconds(recording) > len(complaint8) / 16000
    for process in (client, other):
        resp = await process.get(f"/ivr/calls/{call_id}/action")
        assert await resp.text() == "hangup"
    assert (await call_status(other, call_id))["case_id"] == case_id
    assert voice.stt.active_streams == 0 and not voice.active_sessions


async def test_websocket_call_end_to_end(aiohttp_client: Any, redis_server: EmbeddedRedis, tmp_path: Path,
                                         key_prefix: str, complaint16: bytes) -> None:
    app, client = await start_app(aiohttp_client, redis_server, tmp_path, key_prefix)
    voice = app[VOICE]
    prompts = voice.prompts
    call_id = "1700000000.42"  # Asterisk's ${UNIQUEID}
    pbx = FakeWebSocketPBX(str(client.make_url("/ivr/media")), rate=16000, caller=CALLER, call_id=call_id)
    await pbx.connect()
    try:
        await pbx.wait_audio(10)
        await pbx.press("1")
        await pbx.wait_for(early(prompts.pcm("capture", 16000), 16000), 20)
        assert "FLUSH_MEDIA" in pbx.commands  # the greeting was cut short by the key press
        flushes = pbx.commands.count("FLUSH_MEDIA")
        # The caller starts talking over the instructions: the prompt stops, the first words are kept.
        pbx.caller.say(complaint16)
        await pbx.wait_for(early(prompts.pcm("confirm", 16000), 16000), 40)
        assert pbx.commands.count("FLUSH_MEDIA") == flushes + 1
        assert find_in(bytes(pbx.rx), prompts.pcm("beep", 16000)) == -1
        await pbx.press("1")
        await pbx.wait_closed(60)
    finally:
        await pbx.close()
    assert pbx.commands[-1] == "HANGUP"
    assert pbx.commands.count("START_MEDIA_BUFFERING") == sum(c.startswith("STOP_MEDIA_BUFFERING")
                                                               for c in pbx.commands)
    status = await call_status(client, call_id)
    assert status["action"] == "hangup" and status["adapter"] == "websocket"
    case_id = status["case_id"]
    readback = prompts.sequence(["case_number_is", *prompts.digits(case_id)], 16000)
    # Asterisk played the read-back to the caller (not only received it).
    assert find_in(bytes(pbx.played), readback) >= 0
    case = await app[STORE].get_case(case_id)
    assert case.contact == CALLER and case.transcript
    assert (voice.data_dir / case.audio_ref).is_file()
    events = [e.action for e in await app[STORE].events(case_id)]
    assert events[:2] == ["received", "classified"]
    assert voice.stt.active_streams == 0


async def test_emergency_words_transfer_after_110_119_120(aiohttp_client: Any, redis_server: EmbeddedRedis,
                                                          tmp_path: Path, key_prefix: str,
                                                          complaint16: bytes) -> None:
    app, client = await start_app(aiohttp_client, redis_server, tmp_path, key_prefix)
    voice = app[VOICE]
    prompts = voice.prompts
    # The test model is Korean: the emergency list is made of the words it hears in this sentence, so the
    # keyword spotting on streaming results is exercised for real.
    heard = await voice.stt.transcribe_pcm(complaint16, 16000)
    voice.cfg.emergency_keywords = [w.word for w in heard.words if len(w.word) >= 2][:6]
    assert voice.cfg.emergency_keywords
    pbx = FakeWebSocketPBX(str(client.make_url("/ivr/media")), rate=16000, caller=CALLER, call_id="em-1")
    await pbx.connect()
    try:
        await pbx.wait_audio(10)
        await pbx.press("1")
        await pbx.wait_for(prompts.pcm("beep", 16000), 20)
        pbx.caller.say(complaint16)
        await pbx.wait_for(prompts.pcm("emergency", 16000), 40)
        await pbx.wait_closed(30)
    finally:
        await pbx.close()
    status = await call_status(client, "em-1")
    assert status["action"] == "transfer" and status["reason"] == "emergency"
    assert find_in(bytes(pbx.rx), prompts.pcm("transfer", 16000)) >= 0
    case = await app[STORE].get_case(status["case_id"])
    assert case.contact == CALLER
    assert (await voice_event(app, case.id))["emergency_word"] in voice.cfg.emergency_keywords


async def test_pbx_disconnect_mid_complaint_keeps_the_case(aiohttp_client: Any, redis_server: EmbeddedRedis,
                                                           tmp_path: Path, key_prefix: str,
                                                           complaint8: bytes) -> None:
    app, client = await start_app(aiohttp_client, redis_server, tmp_path, key_prefix)
    voice = app[VOICE]
    prompts = voice.prompts
    call_id = str(uuid.uuid4())
    await client.post(f"/ivr/calls/{call_id}", data={"caller": CALLER})
    pbx = FakeAudioSocketPBX("127.0.0.1", voice.audiosocket_port, rate=8000, call_id=call_id)
    await pbx.connect()
    await pbx.wait_audio(10)
    await pbx.press("1")
    await pbx.wait_for(prompts.pcm("beep", 8000), 20)
    pbx.caller.say(complaint8)
    await asyncio.sleep(2.0)  # half the sentence
    # A truncated message (header says 320 bytes, 101 arrive), then the TCP connection is gone.
    await pbx.send_raw(b"\x10\x01\x40" + bytes(101))
    await pbx.drop()
    status = await call_status(client, call_id)
    assert status["action"] == "hangup" and status["reason"] == "caller_hung_up"
    case = await app[STORE].get_case(status["case_id"])
    assert case.contact == CALLER
    assert case.text == (case.transcript or UNRECOGNISED_TEXT)
    facts = await voice_event(app, case.id)
    assert facts["hung_up"] is True and 0 < facts["duration_s"] < 4
    assert (voice.data_dir / case.audio_ref).is_file()
    assert voice.stt.active_streams == 0 and not voice.active_sessions


async def test_store_down_mid_call_apologises_and_transfers(aiohttp_client: Any, tmp_path: Path,
                                                            key_prefix: str, complaint8: bytes) -> None:
    """Redis goes away during the call: the caller is told and put through to a person, the audio is kept."""
    own = EmbeddedRedis(tmp_path / "own")
    url = await asyncio.to_thread(own.start)
    try:
        app = create_app(make_settings(url, tmp_path, key_prefix, voice=voice_settings()))
        await aiohttp_client(app)
        voice = app[VOICE]
        prompts = voice.prompts
        pbx = FakeAudioSocketPBX("127.0.0.1", voice.audiosocket_port, rate=8000, call_id=str(uuid.uuid4()))
        await pbx.connect()
        try:
            await pbx.wait_audio(10)
            await pbx.press("1")
            at = await pbx.wait_for(prompts.pcm("beep", 8000), 20)
            await asyncio.to_thread(own.stop)  # the store is gone before the complaint is submitted
            pbx.caller.say(complaint8)
            at = await pbx.wait_for(early(prompts.pcm("confirm", 8000), 8000), 40, at)
            await pbx.press("1")
            await pbx.wait_closed(60)
        finally:
            await pbx.drop()
        rx = bytes(pbx.rx)
        sorry = find_in(rx, prompts.pcm("store_down", 8000), at)
        assert sorry > at and find_in(rx, prompts.pcm("transfer", 8000), sorry) > sorry
        assert find_in(rx, prompts.pcm("case_number_is", 8000)) < 0
        recordings = list((voice.data_dir / "recordings").rglob("*.wav"))
        assert len(recordings) == 1 and wav_seconds(recordings[0]) > len(complaint8) / 16000
        assert voice.stt.active_streams == 0 and not voice.active_sessions
    finally:
        await asyncio.to_thread(own.stop)


async def test_thirty_minutes_of_noise_is_cut(aiohttp_client: Any, redis_server: EmbeddedRedis, tmp_path: Path,
                                              key_prefix: str) -> None:
    app, client = await start_app(aiohttp_client, redis_server, tmp_path, key_prefix, max_complaint_s=8.0,
                                  max_menu_s=3.0, max_call_s=60.0, low_confidence=1.0)
    voice = app[VOICE]
    call_id = str(uuid.uuid4())
    pbx = FakeAudioSocketPBX("127.0.0.1", voice.audiosocket_port, rate=8000, call_id=call_id)
    await pbx.connect()
    try:
        await pbx.wait_audio(10)
        await pbx.press("1")
        # 30 minutes of loud noise, sent as fast as the socket takes it.
        await asyncio.wait_for(pbx.blast(noise(1800, 8000, level=4000)), 120)
        await pbx.wait_closed(120)
    finally:
        await pbx.drop()
    status = await call_status(client, call_id)
    # Noise is never trusted (low_confidence 1: every spoken complaint goes to a person): the complaint is kept
    # and a person takes over.
    assert status["action"] == "transfer" and status["reason"] in ("low_confidence", "no_match")
    case = await app[STORE].get_case(status["case_id"])
    assert case.contact == "" and case.sender == "unknown"
    assert 0 < (await voice_event(app, case.id))["duration_s"] <= 8.5
    recording = voice.data_dir / case.audio_ref
    # The recording stops at max_call_s, the complaint at max_complaint_s of audio.
    assert wav_seconds(recording) <= 60.0
    assert find_in(bytes(pbx.rx), voice.prompts.pcm("kept", 8000)) >= 0 or status["reason"] == "no_match"
    assert voice.stt.active_streams == 0 and not voice.active_sessions


async def test_without_a_model_calls_go_to_a_person(aiohttp_client: Any, redis_server: EmbeddedRedis,
                                                    tmp_path: Path, key_prefix: str,
                                                    caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="hotline.ivr")
    app, client = await start_app(aiohttp_client, redis_server, tmp_path, key_prefix,
                                  model_dir=str(tmp_path / "no-model"), max_calls=1)
    assert app.get(STT) is None
    assert any("hotline models fetch small-cn" in r.getMessage() for r in caplog.records)
    voice = app[VOICE]
    prompts = voice.prompts
    # The rest of the product still works.
    resp = await client.post("/api/v1/complaints", json={"text": "小区门口路灯坏了", "contact": CALLER})
    assert resp.status == 201
    first = FakeAudioSocketPBX("127.0.0.1", voice.audiosocket_port)
    await first.connect()
    await first.wait_audio(10)
    # A second call while this host carries max_calls: busy, straight to a person.
    second = FakeAudioSocketPBX("127.0.0.1", voice.audiosocket_port)
    await second.connect()
    try:
        await second.wait_closed(20)
        await first.wait_closed(30)
    finally:
        await first.drop()
        await second.drop()
    assert find_in(bytes(first.rx), prompts.pcm("no_speech", 8000)) >= 0
    assert find_in(bytes(second.rx), prompts.pcm("busy", 8000)) >= 0
    one = await call_status(client, first.call_id)
    two = await call_status(client, second.call_id)
    assert (one["action"], one["reason"], one["case_id"]) == ("transfer", "no_speech", "")
    assert (two["action"], two["reason"]) == ("transfer", "busy")


async def test_recognizers_are_warmed_at_start_without_holding_up_the_stop(
        aiohttp_client: Any, redis_server: EmbeddedRedis, tmp_path: Path, key_prefix: str,
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="hotline.ivr")
    app, _ = await start_app(aiohttp_client, redis_server, tmp_path, key_prefix, prewarm_s=4.0,
                             warm_recognizers=1, max_streams=2)
    stt = app[STT]
    for _ in range(300):
        if stt.warm:
            break
        await asyncio.sleep(0.1)
    assert (stt.warm, stt.recognizers_created) == (1, 1)
    assert stt.audio_seconds == pytest.approx(4.0, abs=0.05)  # the menu prompts, cut at prewarm_s
    warmed = [r for r in caplog.records if getattr(r, "event", "") == "stt_prewarmed"]
    assert warmed and warmed[0].recognizers == 1

    # Stopping while the recognizers are being warmed: the warming is cancelled, nothing is left running.
    settings = make_settings(redis_server.url, tmp_path / "b", key_prefix + "b",
                             voice=voice_settings(prewarm_s=60.0, warm_recognizers=2))
    client = await aiohttp_client(create_app(settings))
    other = client.app[STT]
    for _ in range(100):
        if other.active_streams:
            break
        await asyncio.sleep(0.05)
    assert other.active_streams == 1
    await asyncio.wait_for(client.close(), 10)
    assert other.active_streams == 0 and other.warm == 0
    assert other.audio_seconds < 30  # cut short: not the whole minute of prompts, nor a second recognizer


async def keypad_call(client: Any, port: int, keys: str) -> tuple[str, FakeAudioSocketPBX]:
    """A call from CALLER that presses ``keys`` once the menu plays and waits for the hang-up."""
    call_id = str(uuid.uuid4())
    await client.post(f"/ivr/calls/{call_id}", data={"caller": CALLER})
    pbx = FakeAudioSocketPBX("127.0.0.1", port, call_id=call_id)
    await pbx.connect()
    try:
        await pbx.wait_audio(10)
        for key in keys:
            await pbx.press(key)
        await pbx.wait_closed(40)
    finally:
        await pbx.drop()
    return call_id, pbx


async def test_query_progress_by_keypad(aiohttp_client: Any, redis_server: EmbeddedRedis, tmp_path: Path,
                                        key_prefix: str) -> None:
    app, client = await start_app(aiohttp_client, redis_server, tmp_path, key_prefix)
    voice = app[VOICE]
    prompts = voice.prompts
    resp = await client.post("/api/v1/complaints", json={"text": "小区门口路灯坏了三天", "contact": CALLER})
    case_id = (await resp.json())["case_id"]
    case = await app[STORE].get_case(case_id)
    call_id, pbx = await keypad_call(client, voice.audiosocket_port, "3" + case_id.replace("-", "") + "#")
    status_prompt = prompts.sequence(["status_is", f"status_{case.status}"], 8000)
    assert find_in(bytes(pbx.rx), status_prompt) >= 0
    assert (await call_status(client, call_id))["action"] == "hangup"


async def test_hash_alone_reads_the_callers_latest_case(aiohttp_client: Any, redis_server: EmbeddedRedis,
                                                        tmp_path: Path, key_prefix: str) -> None:
    app, client = await start_app(aiohttp_client, redis_server, tmp_path, key_prefix)
    voice = app[VOICE]
    prompts = voice.prompts
    for text in ("小区门口路灯坏了三天", "楼下餐馆油烟太大"):
        resp = await client.post("/api/v1/complaints", json={"text": text, "contact": CALLER})
        latest = await app[STORE].get_case((await resp.json())["case_id"])
    call_id, pbx = await keypad_call(client, voice.audiosocket_port, "3#")
    told = prompts.sequence(["latest_case_is", *prompts.digits(latest.id), "status_is",
                             f"status_{latest.status}"], 8000)
    assert find_in(bytes(pbx.rx), told) >= 0
    assert (await call_status(client, call_id))["action"] == "hangup"


async def test_pbx_protocol_errors(aiohttp_client: Any, redis_server: EmbeddedRedis, tmp_path: Path,
                                   key_prefix: str) -> None:
    app, client = await start_app(aiohttp_client, redis_server, tmp_path, key_prefix,
                                  model_dir=str(tmp_path / "no-model"))
    voice = app[VOICE]
    # chan_websocket offering a codec we do not take: told to hang up.
    pbx = FakeWebSocketPBX(str(client.make_url("/ivr/media")), rate=8000, fmt="ulaw")
    await pbx.connect()
    await pbx.wait_closed(10)
    assert pbx.commands == ["HANGUP"]
    # Binary before MEDIA_START: closed without a call.
    pbx = FakeWebSocketPBX(str(client.make_url("/ivr/media")))
    await pbx.connect(send_start=False)
    await pbx.send_bytes(bytes(640))
    await pbx.wait_closed(10)
    assert not pbx.rx
    # AudioSocket whose first message is audio, not the UUID: an error message, then closed.
    reader, writer = await asyncio.open_connection("127.0.0.1", voice.audiosocket_port)
    writer.write(b"\x10\x01\x40" + bytes(320))
    await writer.drain()
    data = await asyncio.wait_for(reader.read(), 10)
    assert data[:1] == b"\xff"
    writer.close()
    # Garbage call ids and unknown calls.
    assert (await client.get("/ivr/calls/..%2F..%2Fetc")).status in (400, 404)
    assert (await client.get("/ivr/calls/nope/action")).status == 404
    assert not voice.active_sessions


async def test_pbx_endpoints_refuse_other_addresses(aiohttp_client: Any, redis_server: EmbeddedRedis,
                                                    tmp_path: Path, key_prefix: str) -> None:
    app, client = await start_app(aiohttp_client, redis_server, tmp_path, key_prefix,
                                  model_dir=str(tmp_path / "no-model"), pbx_allow=["10.0.0.0/8"],
                                  audiosocket_enabled=False)
    assert (await client.get("/ivr/calls/abc")).status == 403
    assert (await client.post("/ivr/calls/abc", data={"caller": CALLER})).status == 403
    assert (await client.get("/ivr/media")).status == 403
    assert app[VOICE].audiosocket_port == 0
