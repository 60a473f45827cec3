"""Asterisk AudioSocket over TCP (``AudioSocket(uuid,host:port)`` in the dialplan).

Every message is 1 byte type + 2 bytes big-endian payload length + payload:
0x00 hang-up (no payload), 0x01 call UUID (16 bytes, first message), 0x03 DTMF digit (1 ASCII byte),
0x10 signed-linear 8 kHz mono little-endian audio, 0xff error. Current upstream (include/asterisk/res_audiosocket.h)
adds 0x11–0x18: the same audio at 12, 16, 24, 32, 44.1, 48, 96 and 192 kHz. 8 and 16 kHz calls run at their
own rate; a call at any other of these rates runs at 16 kHz, its audio resampled both ways on this side.
Asterisk does not time the audio we send: we pace 20 ms frames ourselves. To end the call leg we send
a hang-up message and close; the dialplan then reads the outcome (transfer or not) from
``GET /ivr/calls/<uuid>/action`` (README: Voice).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import struct
import time
import uuid

from hotline.ivr import audio
from hotline.ivr.service import VoiceService
from hotline.ivr.session import DTMF_KEYS, CallOutcome

log = logging.getLogger("hotline.ivr.audiosocket")

KIND_HANGUP = 0x00
KIND_UUID = 0x01
KIND_DTMF = 0x03
KIND_SLIN = 0x10
KIND_SLIN12 = 0x11
KIND_SLIN16 = 0x12
KIND_ERROR = 0xFF
RATE_OF_KIND = {KIND_SLIN: 8000, KIND_SLIN12: 12000, KIND_SLIN16: 16000, 0x13: 24000, 0x14: 32000, 0x15: 44100,
                0x16: 48000, 0x17: 96000, 0x18: 192000}
KIND_OF_RATE = {rate: kind for kind, rate in RATE_OF_KIND.items()}
HEADER = struct.Struct(">BH")
FIRST_MESSAGE_TIMEOUT_S = 10.0
# From the UUID to the first audio message, however many other messages come in between: until audio
# arrives the connection is no call yet (no session, not counted in voice.max_calls).
FIRST_AUDIO_TIMEOUT_S = 10.0
MAX_EARLY_DIGITS = 32  # keys pressed before the first audio that are kept for the menu's type-ahead
READ_TIMEOUT_S = 30.0  # Asterisk sends audio every 20 ms; this long without any message is a dead peer
LEAD_FRAMES = 3  # frames sent ahead of the clock so the PBX's jitter buffer never runs dry


def message(kind: int, payload: bytes = b"") -> bytes:
    return HEADER.pack(kind, len(payload)) + payload


class ProtocolError(Exception):
    pass


async def read_message(reader: asyncio.StreamReader, timeout_s: float) -> tuple[int, bytes]:
    async with asyncio.timeout(timeout_s):
        head = await reader.readexactly(HEADER.size)
        kind, length = HEADER.unpack(head)
        payload = await reader.readexactly(length) if length else b""
    return kind, payload


async def read_until_audio(reader: asyncio.StreamReader) -> tuple[int, bytes, str]:
    """The messages after the UUID up to the first audio: (its kind, its payload, the keys pressed before).

    Kind 0 when the PBX hung up or reported an error first. Raises TimeoutError when no audio came within
    ``FIRST_AUDIO_TIMEOUT_S`` in all. Only DTMF digits are kept, and only ``MAX_EARLY_DIGITS`` of them: other
    messages are read and dropped, so a peer cannot fill memory before it is a call.
    """
    digits = ""
    async with asyncio.timeout(FIRST_AUDIO_TIMEOUT_S):
        while True:
            kind, payload = await read_message(reader, FIRST_AUDIO_TIMEOUT_S)
            if kind in RATE_OF_KIND:
                return kind, payload, digits
            if kind in (KIND_HANGUP, KIND_ERROR):
                return 0, b"", digits
            digit = payload[:1].decode("ascii", "replace") if kind == KIND_DTMF else ""
            if digit in DTMF_KEYS and len(digits) < MAX_EARLY_DIGITS:
                digits += digit


def session_rate(wire_rate: int) -> int:
    """The rate a call runs at (recording, prompts, speech) for audio that arrives at ``wire_rate``."""
    return wire_rate if wire_rate in audio.RATES else 16000


class AudioSocketTransport:
    name = "audiosocket"

    def __init__(self, writer: asyncio.StreamWriter, rate: int, wire_rate: int | None = None) -> None:
        self.writer = writer
        self.rate = rate  # the session's: what send_audio is given
        self.wire_rate = wire_rate or rate  # what the PBX sends, so what it gets back
        self.kind = KIND_OF_RATE[self.wire_rate]
        self._lock = asyncio.Lock()
        self.closed = False

    async def send_audio(self, pcm: bytes) -> None:
        if self.wire_rate != self.rate:
            pcm = audio.resample(pcm, self.rate, self.wire_rate)
        size = audio.frame_bytes(self.wire_rate)
        if len(pcm) % size:
            pcm += bytes(size - len(pcm) % size)
        start = time.monotonic()
        for n, i in enumerate(range(0, len(pcm), size)):
            if self.closed:
                return
            due = start + max(0, n - LEAD_FRAMES) * 0.02
            delay = due - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            async with self._lock:
                self.writer.write(message(self.kind, pcm[i:i + size]))
                await self.writer.drain()
        # Returns when the last frame is due at the far end.
        rest = start + len(pcm) / size * 0.02 - time.monotonic()
        if rest > 0:
            await asyncio.sleep(rest)

    async def stop_audio(self) -> None:
        # Frames already written cannot be taken back; cancelling the sender stops the rest (≤ 60 ms late).
        return None

    async def end(self, outcome: CallOutcome) -> None:
        if self.closed:
            return
        self.closed = True
        async with self._lock:
            with contextlib.suppress(ConnectionError, OSError):
                self.writer.write(message(KIND_HANGUP))
                await self.writer.drain()
            # Closing also ends the connection's read loop (the reader sees EOF).
            self.writer.close()


async def handle_connection(service: VoiceService, reader: asyncio.StreamReader,
                            writer: asyncio.StreamWriter) -> None:
    peer = writer.get_extra_info("peername")
    flow_task: asyncio.Task[CallOutcome] | None = None
    transport: AudioSocketTransport | None = None
    try:
        try:
            kind, payload = await read_message(reader, FIRST_MESSAGE_TIMEOUT_S)
        except (asyncio.IncompleteReadError, TimeoutError, ConnectionError):
            return
        if kind != KIND_UUID or len(payload) != 16:
            log.warning("audiosocket: first message is not a UUID", extra={"event": "audiosocket_bad_start",
                                                                            "kind": kind, "peer": str(peer)})
            writer.write(message(KIND_ERROR, b"\x01"))
            return
        call_id = str(uuid.UUID(bytes=payload))
        # The rate is known from the first audio message (0x10 = 8 kHz, 0x11 = 12 kHz, 0x12 = 16 kHz, …).
        try:
            first_kind, first_audio, early_digits = await read_until_audio(reader)
        except TimeoutError:
            log.warning("audiosocket: no audio after the UUID", extra={"event": "audiosocket_no_audio",
                                                                      "call_id": call_id})
            return
        except (asyncio.IncompleteReadError, ConnectionError):
            return
        if not first_kind:
            return
        wire_rate = RATE_OF_KIND[first_kind]
        rate = session_rate(wire_rate)
        transport = AudioSocketTransport(writer, rate, wire_rate)
        session = await service.open_call(transport, call_id=call_id, caller="", rate=rate)
        resamplers: dict[int, audio.Resampler] = {}
        flow_task = asyncio.create_task(service.run_flow(session), name=f"ivr-{session.call_id}")
        pending = [*((KIND_DTMF, d.encode()) for d in early_digits), (first_kind, first_audio)]
        while not flow_task.done():
            if pending:
                kind, payload = pending.pop(0)
            else:
                try:
                    kind, payload = await read_message(reader, READ_TIMEOUT_S)
                except (asyncio.IncompleteReadError, TimeoutError, ConnectionError):
                    break  # peer gone, or a truncated message at the end of the stream
            if kind in RATE_OF_KIND:
                if RATE_OF_KIND[kind] != rate:
                    # Another rate than the session's (12 kHz and the like, or a switch mid-call): resample
                    # rather than garble the audio.
                    rs = resamplers.setdefault(kind, audio.Resampler(RATE_OF_KIND[kind], rate))
                    payload = rs.process(payload)
                await session.audio_in(payload)
            elif kind == KIND_DTMF:
                digit = payload[:1].decode("ascii", "replace")
                await session.dtmf_in(digit)
            elif kind == KIND_HANGUP:
                break
            elif kind == KIND_ERROR:
                log.warning("audiosocket: error from PBX", extra={"event": "audiosocket_error",
                                                                  "call_id": session.call_id,
                                                                  "code": payload.hex()})
                break
            # Other kinds (future types) are ignored rather than fatal.
        if not flow_task.done():
            transport.closed = True
            session.hangup_in()
        await flow_task
    except asyncio.CancelledError:
        if flow_task is not None and not flow_task.done():
            flow_task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await flow_task
        raise
    except Exception:
        log.exception("audiosocket connection failed", extra={"event": "audiosocket_failed"})
    finally:
        if transport is not None:
            transport.closed = True
        writer.close()
        with contextlib.suppress(Exception):
            await writer.wait_closed()


async def start_server(service: VoiceService, host: str, port: int) -> asyncio.Server:
    async def on_connect(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await handle_connection(service, reader, writer)

    return await asyncio.start_server(on_connect, host, port)
