"""Hostile and broken PBX input on the voice door, each case in seconds: the PBX endpoints behind a reverse
proxy, AudioSocket peers that never send audio, reused call ids, a chan_websocket PBX stuck after MEDIA_XOFF,
unusable frame sizes, bad recorded prompts and digit-less caller numbers.

The app runs on the embedded Valkey, without a speech model where nothing is said. Where the flow has to
hear a complaint, the real Vosk engine (the Korean test model) decodes synthesised speech, fed faster than real
time through a transport that plays prompts instantly: what is under test there is the call's handling.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import struct
import time
import uuid
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
import pytest
from aiohttp import web

from hotline.app import create_app
from hotline.appkeys import STORE
from hotline.ivr import audio, audiosocket, websocket
from hotline.ivr.feature import VOICE
from hotline.ivr.flow import CallState, FlowOptions, IvrFlow
from hotline.ivr.prompts import PromptLibrary
from hotline.ivr.service import VoiceService
from hotline.ivr.session import CallOutcome, CallSession, VoiceTimings, clean_number
from hotline.redis_server import EmbeddedRedis
from hotline.speech import Transcript
from tests.conftest import make_settings
from tests.ivr_support import FakeAudioSocketPBX, espeak, find_in, ko_model_dir, noise, silence

HEADER = struct.Struct(">BH")
LAMP = "xiao3 qu1 men2 kou3 de5 lu4 deng1 huai4 le5"  # 小区门口的路灯坏了
FUMES = "lou2 xia4 can1 guan3 you2 yan1 tai4 da4"  # 楼下餐馆油烟太大
CALLER = "13800138000"
PROMPTS = PromptLibrary()


async def start_app(aiohttp_client: Any, redis_server: EmbeddedRedis, tmp_path: Path, key_prefix: str, *,
                    limits: dict[str, Any] | None = None, **voice: Any) -> tuple[web.Application, Any]:
    values: dict[str, Any] = {"model_dir": str(tmp_path / "no-model")}
    values.update(voice)
    sections: dict[str, dict[str, Any]] = {"voice": values}
    if limits:
        sections["limits"] = limits
    app = create_app(make_settings(redis_server.url, tmp_path, key_prefix, **sections))
    client = await aiohttp_client(app)
    return app, client


class RecordingTransport:
    """Plays instantly and keeps what was played; ``stuck_from``: the n-th prompt never finishes playing (a
    PBX that stopped taking audio)."""

    name = "test"

    def __init__(self, stuck_from: int = 0) -> None:
        self.played: list[bytes] = []
        self.stuck_from = stuck_from
        self.ended: CallOutcome | None = None

    async def send_audio(self, pcm: bytes) -> None:
        self.played.append(pcm)
        if self.stuck_from and len(self.played) >= self.stuck_from:
            await asyncio.Event().wait()
        await asyncio.sleep(0)

    async def stop_audio(self) -> None:
        return None

    async def end(self, outcome: CallOutcome) -> None:
        self.ended = outcome

    def heard(self, name: str, rate: int = 8000) -> bool:
        pcm = PROMPTS.pcm(name, rate)
        return any(pcm in played for played in self.played)


async def speak_after_beep(session: CallSession, transport: RecordingTransport, speech: bytes) -> None:
    """The caller: once the capture prompt and the beep have played, ``speech``, then a quiet line."""
    while len(transport.played) < 2 and not session.closed:
        await asyncio.sleep(0.005)
    frame = audio.frame_bytes(session.rate)
    for i in range(0, len(speech), frame):
        await session.audio_in(speech[i:i + frame])
        await asyncio.sleep(0.002)
    while not session.closed and not session.hung_up:
        await session.audio_in(silence(0.02, session.rate))
        await asyncio.sleep(0.002)


async def complaint_call(voice: VoiceService, call_id: str, caller: str, speech: bytes,
                         transport: RecordingTransport | None = None) -> tuple[CallSession, CallOutcome]:
    """A whole call by keypad and voice: 1 (complaint), the complaint, silence at the confirmation (= yes)."""
    transport = transport or RecordingTransport()
    session = await voice.open_call(transport, call_id=call_id, caller=caller, rate=8000)
    await session.dtmf_in("1")
    caller_task = asyncio.create_task(speak_after_beep(session, transport, speech))
    try:
        outcome = await asyncio.wait_for(voice.run_flow(session), 20)
    finally:
        caller_task.cancel()
    return session, outcome


# 1. PBX endpoints behind the recommended reverse proxy ----------------------------------------------
async def test_pbx_endpoints_judge_the_forwarded_client_behind_a_trusted_proxy(
        aiohttp_client: Any, redis_server: EmbeddedRedis, tmp_path: Path, key_prefix: str) -> None:
    app, client = await start_app(aiohttp_client, redis_server, tmp_path, key_prefix, audiosocket_enabled=False,
                                  pbx_allow=["127.0.0.1/32", "10.0.0.20/32"],
                                  limits={"trusted_proxies": ["127.0.0.1/32"]})
    call_id = "qa-" + uuid.uuid4().hex[:8]
    # An internet client relayed by the proxy (nginx appends what the client sent itself, or sets it).
    for xff in ("203.0.113.9", "10.0.0.20, 203.0.113.9", "not-an-address", "10.0.0.20, junk"):
        headers = {"X-Forwarded-For": xff}
        assert (await client.post(f"/ivr/calls/{call_id}", data={"caller": CALLER}, headers=headers)).status == 403
        assert (await client.get(f"/ivr/calls/{call_id}", headers=headers)).status == 403
        assert (await client.get(f"/ivr/calls/{call_id}/action", headers=headers)).status == 403
        with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
            await client.ws_connect(f"/ivr/media?call_id={call_id}", headers=headers)
        assert refused.value.status == 403
    assert await app[VOICE].calls.get(call_id) is None
    # The Asterisk server behind the same proxy.
    forwarded = {"X-Forwarded-For": "10.0.0.20"}
    assert (await client.post(f"/ivr/calls/{call_id}", data={"caller": CALLER}, headers=forwarded)).status == 204
    assert await (await client.get(f"/ivr/calls/{call_id}/action", headers=forwarded)).text() == "pending"
    # The Asterisk server on this host, connected directly (no proxy, no header).
    assert (await client.post(f"/ivr/calls/{call_id}", data={"caller": CALLER})).status == 204
    resp = await client.get(f"/ivr/calls/{call_id}")
    assert resp.status == 200 and (await resp.json())["action"] == "pending"
    assert await (await client.get(f"/ivr/calls/{call_id}/action")).text() == "pending"
    ws = await client.ws_connect(f"/ivr/media?call_id={call_id}w")
    await ws.send_str("MEDIA_START connection_id:x format:slin16 optimal_frame_size:640")
    first = await ws.receive(timeout=5)
    assert first.type == aiohttp.WSMsgType.TEXT and first.data == "START_MEDIA_BUFFERING"
    await ws.close()


# 2. AudioSocket peers that never send audio ------------------------------------------------------------
def feed(reader: asyncio.StreamReader, *messages: tuple[int, bytes]) -> None:
    for kind, payload in messages:
        reader.feed_data(HEADER.pack(kind, len(payload)) + payload)


async def test_audiosocket_keeps_only_a_few_keys_before_the_first_audio() -> None:
    reader = asyncio.StreamReader(limit=1 << 20)
    junk = bytes(0xFFFF)
    feed(reader, *[(0x02, junk)] * 40, *[(audiosocket.KIND_DTMF, b"5")] * 100, (audiosocket.KIND_DTMF, b"\xff"),
         (audiosocket.KIND_SLIN16, bytes(640)), (audiosocket.KIND_DTMF, b"9"))
    kind, payload, digits = await asyncio.wait_for(audiosocket.read_until_audio(reader), 5)
    assert (kind, len(payload)) == (audiosocket.KIND_SLIN16, 640)
    assert digits == "5" * audiosocket.MAX_EARLY_DIGITS
    # A hang-up before any audio is no call.
    reader = asyncio.StreamReader()
    feed(reader, (audiosocket.KIND_DTMF, b"1"), (audiosocket.KIND_HANGUP, b""))
    assert (await audiosocket.read_until_audio(reader))[0] == 0


async def test_audiosocket_gives_no_audio_one_deadline(monkeypatch: pytest.MonkeyPatch, aiohttp_client: Any,
                                                       redis_server: EmbeddedRedis, tmp_path: Path,
                                                       key_prefix: str) -> None:
    monkeypatch.setattr(audiosocket, "FIRST_AUDIO_TIMEOUT_S", 1.0, raising=False)
    app, _ = await start_app(aiohttp_client, redis_server, tmp_path, key_prefix)
    voice = app[VOICE]
    call_id = uuid.uuid4()
    reader, writer = await asyncio.open_connection("127.0.0.1", voice.audiosocket_port)
    writer.write(HEADER.pack(0x01, 16) + call_id.bytes)

    async def peer() -> None:
        # A message every 100 ms, well inside any per-message timeout, and never audio.
        with contextlib.suppress(ConnectionError, OSError):
            for n in range(100):
                big = HEADER.pack(0x02, 0xFFFF) + bytes(0xFFFF)
                writer.write(big if n % 2 else HEADER.pack(0x03, 1) + b"1")
                await writer.drain()
                await asyncio.sleep(0.1)

    sending = asyncio.create_task(peer())
    started = time.monotonic()
    try:
        assert await asyncio.wait_for(reader.read(), 4) == b""  # closed by the service, nothing said
    finally:
        sending.cancel()
        writer.close()
    assert time.monotonic() - started < 3.5  # the 1 s deadline, not a timer restarted by every message
    assert not voice.active_sessions
    assert await voice.calls.get(str(call_id)) is None


def tone(rate: int, hz: float = 1000.0, seconds: float = 1.0) -> bytes:
    t = np.arange(int(rate * seconds)) / rate
    return (np.sin(2 * np.pi * hz * t) * 8000).astype("<i2").tobytes()


def peak_hz(pcm: bytes, rate: int) -> float:
    samples = np.frombuffer(pcm, dtype="<i2").astype(float)
    spectrum = np.abs(np.fft.rfft(samples * np.hanning(len(samples))))
    return float(np.fft.rfftfreq(len(samples), 1 / rate)[int(np.argmax(spectrum))])


async def test_audiosocket_takes_the_upstream_audio_types(aiohttp_client: Any, redis_server: EmbeddedRedis,
                                                          tmp_path: Path, key_prefix: str) -> None:
    # Current upstream numbers the audio types 0x10 = 8 kHz, 0x11 = 12 kHz, 0x12 = 16 kHz, … A 16 kHz call runs
    # at 16 kHz; a 12 kHz call runs at 16 kHz too, its audio resampled both ways, and is answered with 0x11.
    app, client = await start_app(aiohttp_client, redis_server, tmp_path, key_prefix)
    voice = app[VOICE]
    calls = {rate: FakeAudioSocketPBX("127.0.0.1", voice.audiosocket_port, rate=rate) for rate in (12000, 16000)}
    for rate, pbx in calls.items():
        pbx.caller.say(tone(rate))  # the caller's first second: a 1 kHz tone
        await pbx.connect()
    try:
        for pbx in calls.values():
            await pbx.wait_closed(30)
    finally:
        for pbx in calls.values():
            await pbx.drop()
    wide, mid = calls[16000], calls[12000]
    assert {wide.kinds[0], wide.kinds[-1]} == {0x12, 0x00} and set(wide.kinds) == {0x12, 0x00}
    assert {mid.kinds[0], mid.kinds[-1]} == {0x11, 0x00} and set(mid.kinds) == {0x11, 0x00}
    assert len(mid.rx) % audio.frame_bytes(12000) == 0
    # The 16 kHz call heard the shipped prompts as they are; the 12 kHz call the same length of audio.
    assert find_in(bytes(wide.rx), PROMPTS.pcm("no_speech", 16000)) >= 0
    assert audio.duration_s(len(mid.rx), 12000) == pytest.approx(audio.duration_s(len(wide.rx), 16000), abs=0.1)
    for rate, pbx in calls.items():
        status = await (await client.get(f"/ivr/calls/{pbx.call_id}")).json()
        assert (status["action"], status["reason"]) == ("transfer", "no_speech")
        # The recording is at 16 kHz and the caller's tone is still 1 kHz: the 12 kHz audio was resampled,
        # not read as if it were 16 kHz.
        decoded = audio.read_wav(voice.recording_path(pbx.call_id).read_bytes())
        assert decoded.rate == 16000
        assert audio.duration_s(len(decoded.pcm), 16000) == pytest.approx(pbx.caller.sent_bytes / 2 / rate, abs=0.1)
        assert peak_hz(decoded.pcm[audio.frame_bytes(16000, 100):audio.frame_bytes(16000, 900)], 16000) == \
            pytest.approx(1000, abs=10)


# 3. A call id used again -------------------------------------------------------------------------------
async def test_reused_call_id_gets_its_own_recording_and_case(aiohttp_client: Any, redis_server: EmbeddedRedis,
                                                               tmp_path: Path, key_prefix: str) -> None:
    app, client = await start_app(aiohttp_client, redis_server, tmp_path, key_prefix, audiosocket_enabled=False,
                                  model_dir=str(ko_model_dir()), no_input_s=0.5, end_silence_s=0.3,
                                  low_confidence=0.0)
    voice = app[VOICE]
    call_id = str(uuid.uuid4())
    assert (await client.post(f"/ivr/calls/{call_id}", data={"caller": CALLER})).status == 204
    first, one = await complaint_call(voice, call_id, "", espeak(LAMP, 8000))
    assert first.call_id == call_id and one.reason == "done" and one.case_id
    case1 = await app[STORE].get_case(one.case_id)
    recording1 = voice.data_dir / case1.audio_ref
    digest1 = hashlib.sha256(recording1.read_bytes()).hexdigest()
    assert case1.contact == CALLER and recording1.name == f"{call_id}.wav"

    # The PBX uses the id again (a retry, a UNIQUEID after a restart) for another caller, unannounced.
    second, two = await complaint_call(voice, call_id, "", espeak(FUMES, 8000))
    assert hashlib.sha256(recording1.read_bytes()).hexdigest() == digest1
    assert two.reason == "done" and two.case_id and two.case_id != one.case_id
    case2 = await app[STORE].get_case(two.case_id)
    assert case2.transcript and case2.contact == ""  # heard, and not the first caller's number
    assert case2.audio_ref != case1.audio_ref and (voice.data_dir / case2.audio_ref).is_file()
    assert second.pbx_id == call_id and second.call_id != call_id and second.caller == ""
    facts = [e.data for e in await app[STORE].events(case2.id) if e.action == "voice_call"]
    assert facts[0]["call_id"] == second.call_id and facts[0]["pbx_call_id"] == call_id
    # The dialplan asks with the id it knows and hears about the second call.
    status = await (await client.get(f"/ivr/calls/{call_id}")).json()
    assert status["case_id"] == two.case_id
    assert voice.stt is not None and voice.stt.active_streams == 0 and not voice.active_sessions

    # A retry of the same call's submission still finds its case.
    flow = IvrFlow(voice.cfg, voice.intake, voice.store, FlowOptions(audio_ref=case2.audio_ref))
    retry = await flow._submit_case(second, CallState(transcript=Transcript(text=case2.transcript)))
    assert retry is not None and retry.id == two.case_id


async def test_recordings_are_never_overwritten_and_submissions_never_collide(
        aiohttp_client: Any, redis_server: EmbeddedRedis, tmp_path: Path, key_prefix: str) -> None:
    app, _ = await start_app(aiohttp_client, redis_server, tmp_path, key_prefix, audiosocket_enabled=False)
    voice = app[VOICE]
    # Today's recording of an earlier call whose outcome record has expired.
    call_id = "1700000000.42"
    earlier = voice.recording_path(call_id)
    earlier.parent.mkdir(parents=True)
    earlier.write_bytes(b"caller one")
    with pytest.raises(FileExistsError):
        audio.WavRecorder(earlier, 8000, 10)
    session = await voice.open_call(RecordingTransport(), call_id=call_id, caller=CALLER, rate=8000)
    try:
        assert session.call_id != call_id and session.pbx_id == call_id
        assert session.recorder is not None and session.recorder.path != earlier
        await session.audio_in(noise(0.2, 8000))
    finally:
        voice.active_sessions.pop(session.call_id)
        await session.close()
    assert earlier.read_bytes() == b"caller one"

    # Two calls under one id, as after a restart on another day (no record, no recording left): two cases.
    flow = IvrFlow(voice.cfg, voice.intake, voice.store)
    cases = []
    for text in ("小区门口的路灯坏了一个月了", "楼下餐馆的油烟太大"):
        s = CallSession(call_id="1700000000.43", caller="", rate=8000, transport=RecordingTransport(), stt=None,
                        prompts=voice.prompts, timings=VoiceTimings())
        cases.append(await flow._submit_case(s, CallState(transcript=Transcript(text=text))))
    assert all(c is not None for c in cases) and cases[0].id != cases[1].id


# 4. A PBX that stops taking audio; the call's time limit ----------------------------------------------
class FakeMediaSocket:
    """The server side of chan_websocket as the transport uses it; completes buffered media unless paused."""

    def __init__(self) -> None:
        self.texts: list[str] = []
        self.sent: list[bytes] = []
        self.closed = False
        self.transport: websocket.WebSocketTransport | None = None

    async def send_str(self, text: str) -> None:
        self.texts.append(text)
        name, _, mark = text.partition(" ")
        if name == "STOP_MEDIA_BUFFERING" and self.transport is not None:
            transport = self.transport
            asyncio.get_running_loop().call_soon(transport.notify, "MEDIA_BUFFERING_COMPLETED", {}, [mark])

    async def send_bytes(self, data: bytes) -> None:
        self.sent.append(data)

    async def close(self) -> None:
        self.closed = True


async def test_media_xoff_without_xon_gives_the_prompt_up(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(websocket, "COMPLETION_SLACK_S", 0.2)
    ws = FakeMediaSocket()
    transport = websocket.WebSocketTransport(ws, 16000, 640)  # type: ignore[arg-type]
    ws.transport = transport
    transport.notify("MEDIA_XOFF", {}, [])
    started = time.monotonic()
    await asyncio.wait_for(transport.send_audio(bytes(3200)), 3)  # 0.1 s of audio
    assert time.monotonic() - started < 2.0  # 0.1 s of audio and 0.2 s of slack, not for ever
    assert transport.xon_timeouts == 1 and not ws.sent
    transport.notify("MEDIA_XON", {}, [])
    await asyncio.wait_for(transport.send_audio(bytes(3200)), 3)
    assert ws.sent == [bytes(3200)] and ws.texts[-1].startswith("STOP_MEDIA_BUFFERING")


async def test_stuck_websocket_call_ends_at_max_call_s(aiohttp_client: Any, redis_server: EmbeddedRedis,
                                                       tmp_path: Path, key_prefix: str) -> None:
    app, client = await start_app(aiohttp_client, redis_server, tmp_path, key_prefix, audiosocket_enabled=False,
                                  max_call_s=1.0)
    call_id = "xoff-" + uuid.uuid4().hex[:8]
    ws = await client.ws_connect(f"/ivr/media?call_id={call_id}&caller={CALLER}")
    await ws.send_str(f"MEDIA_START connection_id:{call_id} format:slin16 optimal_frame_size:640")
    await ws.send_str("MEDIA_XOFF")  # and never MEDIA_XON
    texts: list[str] = []

    async def caller() -> None:
        while not ws.closed:
            await ws.send_bytes(bytes(640))
            await asyncio.sleep(0.02)

    sender = asyncio.create_task(caller())
    started = time.monotonic()
    try:
        async with asyncio.timeout(6):
            async for msg in ws:
                if msg.type == aiohttp.WSMsgType.TEXT:
                    texts.append(msg.data)
    finally:
        sender.cancel()
        await ws.close()
    assert time.monotonic() - started < 4
    assert texts[-1] == "HANGUP"
    status = await (await client.get(f"/ivr/calls/{call_id}")).json()
    assert status["action"] == "transfer"
    assert not app[VOICE].active_sessions


async def test_max_call_s_ends_a_stuck_call_and_keeps_the_complaint(
        aiohttp_client: Any, redis_server: EmbeddedRedis, tmp_path: Path, key_prefix: str) -> None:
    app, client = await start_app(aiohttp_client, redis_server, tmp_path, key_prefix, audiosocket_enabled=False,
                                  model_dir=str(ko_model_dir()), no_input_s=0.5, end_silence_s=0.3,
                                  low_confidence=0.0, max_call_s=4.0)
    voice = app[VOICE]
    # The complaint is heard, then the PBX stops playing at the confirmation (capture, beep, confirm).
    transport = RecordingTransport(stuck_from=3)
    call_id = str(uuid.uuid4())
    started = time.monotonic()
    session, outcome = await complaint_call(voice, call_id, CALLER, espeak(LAMP, 8000), transport)
    assert time.monotonic() - started < 12  # max_call_s, then the call ends as on a hang-up
    assert session.timed_out and not session.caller_hung_up
    assert (outcome.action, outcome.reason) == ("transfer", "max_call") and outcome.case_id
    assert transport.ended is not None and transport.ended.reason == "max_call"  # we hung the leg up
    case = await app[STORE].get_case(outcome.case_id)
    assert case.transcript and case.contact == CALLER
    facts = next(e.data for e in await app[STORE].events(case.id) if e.action == "voice_call")
    assert facts["timed_out"] is True and facts["hung_up"] is False
    status = await (await client.get(f"/ivr/calls/{call_id}")).json()
    assert (status["action"], status["reason"], status["case_id"]) == ("transfer", "max_call", case.id)
    assert voice.stt is not None and voice.stt.active_streams == 0
    assert not voice.active_sessions and session.closed


# 5. Frame sizes ----------------------------------------------------------------------------------------
@pytest.mark.parametrize(("offered", "used"), [(640, 640), (320, 320), (2, 2), (65500, 65500), (70000, 640),
                                               (641, 640), (65501, 640), (0, 640), (-640, 640), (1, 640)])
def test_only_whole_sample_frames_that_fit_a_message_are_used(offered: int, used: int) -> None:
    assert websocket.usable_frame_size(offered, 16000) == used


@pytest.mark.parametrize("offered", ["70000", "641"])
async def test_unusable_frame_size_still_plays_the_greeting(offered: str, aiohttp_client: Any,
                                                            redis_server: EmbeddedRedis, tmp_path: Path,
                                                            key_prefix: str) -> None:
    _, client = await start_app(aiohttp_client, redis_server, tmp_path, key_prefix, audiosocket_enabled=False)
    ws = await client.ws_connect(f"/ivr/media?call_id=fs-{offered}&caller={CALLER}")
    await ws.send_str(f"MEDIA_START connection_id:x format:slin16 optimal_frame_size:{offered}")
    media: list[bytes] = []
    try:
        async with asyncio.timeout(5):
            async for msg in ws:
                if msg.type == aiohttp.WSMsgType.BINARY:
                    media.append(msg.data)
                    if len(media) == 2 or len(msg.data) < 640 * 100:
                        break
                elif msg.type == aiohttp.WSMsgType.TEXT:
                    assert msg.data != "HANGUP"
    finally:
        await ws.close()
    # Whole 20 ms frames per message up to the prompt's last bit, and never half a sample.
    assert media and len(media[0]) == (websocket.MAX_MESSAGE // 640) * 640
    assert all(len(m) % 2 == 0 and len(m) <= websocket.MAX_MESSAGE for m in media)


# 6. Bad recorded prompts --------------------------------------------------------------------------------
def wav_with(rate: int = 8000, width: int = 2, pcm: bytes = bytes(1600)) -> bytes:
    data = bytearray(audio.wav_bytes(pcm, 8000))
    struct.pack_into("<I", data, 24, rate)
    struct.pack_into("<H", data, 34, width * 8)
    struct.pack_into("<H", data, 32, width)
    return bytes(data)


@pytest.mark.parametrize("data", [wav_with(rate=0), wav_with(rate=1), wav_with(rate=10_000_000), wav_with(width=1),
                                  b"RIFF", bytes(range(256)) * 20])
def test_bad_wav_files_raise_audio_error(data: bytes) -> None:
    with pytest.raises(audio.AudioError):
        audio.read_wav(data)


def bad_prompts(directory: Path) -> Path:
    directory.mkdir()
    (directory / "greeting.wav").write_bytes(wav_with(rate=0))
    (directory / "menu.wav").write_bytes(wav_with(rate=1))
    (directory / "beep.wav").write_bytes(wav_with(width=1))
    (directory / "confirm.wav").write_bytes(bytes(range(256)) * 20)
    (directory / "capture.wav").write_bytes(audio.wav_bytes(noise(0.5, 16000), 16000))  # a good recording
    return directory


def test_bad_recorded_prompts_fall_back_to_the_shipped_ones(tmp_path: Path) -> None:
    lib = PromptLibrary(bad_prompts(tmp_path / "recorded"))
    lib.preload(["greeting", "menu", "beep", "confirm", "capture"])
    for name in ("greeting", "menu", "beep", "confirm"):
        assert lib.has(name) and lib.pcm(name, 8000) == PROMPTS.pcm(name, 8000)
    assert lib.pcm("capture", 16000) == audio.read_wav((tmp_path / "recorded" / "capture.wav").read_bytes()).pcm
    assert not lib.has("no_such_prompt") and lib.pcm("no_such_prompt", 8000) == b""


async def test_the_service_starts_with_bad_recorded_prompts(aiohttp_client: Any, redis_server: EmbeddedRedis,
                                                            tmp_path: Path, key_prefix: str) -> None:
    prompts_dir = bad_prompts(tmp_path / "recorded")
    app, client = await start_app(aiohttp_client, redis_server, tmp_path, key_prefix, audiosocket_enabled=False,
                                  prompts_dir=str(prompts_dir))
    assert app[VOICE].prompts.pcm("greeting", 8000) == PROMPTS.pcm("greeting", 8000)
    assert (await client.get("/healthz")).status == 200


# 7. Caller numbers without digits ------------------------------------------------------------------------
@pytest.mark.parametrize(("raw", "clean"), [("---", ""), ("( )", ""), ("+-", ""), ("12", ""), ("110", "110"),
                                            ("+86 138-0013-8000", "+86 138-0013-8000")])
def test_a_number_needs_digits(raw: str, clean: str) -> None:
    assert clean_number(raw) == clean


async def test_query_never_reads_a_case_without_contact_to_a_caller_without_number(
        aiohttp_client: Any, redis_server: EmbeddedRedis, tmp_path: Path, key_prefix: str) -> None:
    app, client = await start_app(aiohttp_client, redis_server, tmp_path, key_prefix, audiosocket_enabled=False)
    voice = app[VOICE]
    anonymous = (await (await client.post("/api/v1/complaints", json={"text": "小区门口路灯坏了三天"})).json())
    own = (await (await client.post("/api/v1/complaints", json={"text": "楼下餐馆油烟太大",
                                                                "contact": CALLER})).json())
    flow = IvrFlow(voice.cfg, voice.intake, voice.store)

    async def query(caller: str, case_id: str) -> RecordingTransport:
        transport = RecordingTransport()
        s = CallSession(call_id=uuid.uuid4().hex, caller=caller, rate=8000, transport=transport, stt=None,
                        prompts=voice.prompts, timings=VoiceTimings(no_input_s=0.3, digit_timeout_s=0.3))
        for key in case_id.replace("-", "") + "#":
            await s.dtmf_in(key)
        await asyncio.wait_for(flow._query(s, CallState()), 10)
        return transport

    for caller in ("---", "", "( )"):
        heard = await query(caller, anonymous["case_id"])
        assert heard.heard("query_not_found") and not heard.heard("status_is")
    # The reporter's own phone still hears its case's status.
    assert (await query(CALLER, own["case_id"])).heard("status_is")
    # Such a "number" from the PBX is no caller ID at all.
    session = await voice.open_call(RecordingTransport(), call_id=uuid.uuid4().hex, caller="---", rate=8000)
    voice.active_sessions.pop(session.call_id)
    await session.close()
    assert session.caller == ""
