"""One phone call as the IVR flow sees it, independent of the PBX protocol.

A telephony adapter (AudioSocket, chan_websocket) pushes the caller's audio, key presses and the
hang-up into the session and implements ``Transport`` to play audio back. The flow calls ``play``
(with barge-in: a key press or the caller starting to speak stops the prompt) and ``collect`` (key
presses and/or speech with end-of-speech detection, a no-input timeout and a maximum length).

The caller's whole inbound audio is recorded into the data dir. A speech recognizer is held only
while the flow listens and is always closed again, also when the caller hangs up mid-sentence; what
was said up to then is returned so the complaint is kept.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import re
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from hotline.ivr import audio
from hotline.ivr.prompts import PromptLibrary
from hotline.ivr.stt import STTBusy, STTError, SttStream, VoskSTT
from hotline.speech import Transcript

log = logging.getLogger("hotline.ivr.session")

DTMF_KEYS = frozenset("0123456789*#ABCD")
_CALL_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
_NUMBER = re.compile(r"^\+?[\d\s\-()]{3,24}$")
STT_CHUNK_MS = 100  # audio is handed to the recognizer in chunks this long (fewer thread hops than 20 ms frames)
INBOX_EVENTS = 400  # ~8 s of 20 ms frames; beyond that the adapter waits (TCP back-pressure)
MIN_NUMBER_DIGITS = 3  # 110, 119, 120 are the shortest numbers a call can come from


def clean_call_id(raw: str) -> str:
    """The PBX's call id if it is a sane token, else a fresh one (it names files and keys)."""
    raw = (raw or "").strip()
    return raw if _CALL_ID.match(raw) else uuid.uuid4().hex


def clean_number(raw: str) -> str:
    """The caller's number, or "" (no caller ID). A "number" of dashes and spaces is none: its empty last four
    digits would match every case that has no contact."""
    raw = (raw or "").strip()
    return raw if _NUMBER.match(raw) and sum(c.isdigit() for c in raw) >= MIN_NUMBER_DIGITS else ""


class Transport(Protocol):
    """The PBX side of a call, implemented by each adapter."""

    name: str

    async def send_audio(self, pcm: bytes) -> None:
        """Play PCM at the session rate; returns when the caller has heard it (or would have)."""
        ...

    async def stop_audio(self) -> None:
        """Barge-in: drop whatever is still queued for playback."""
        ...

    async def end(self, outcome: CallOutcome) -> None:
        """Finish the call leg: hang up; the dialplan then reads the outcome (see README: Voice)."""
        ...


@dataclass
class CallOutcome:
    action: str  # "hangup" | "transfer"
    reason: str = ""  # done | operator | no_input | no_match | emergency | low_confidence | no_speech | busy | …
    case_id: str = ""
    answers: dict[str, str] = field(default_factory=dict)


@dataclass
class VoiceTimings:
    no_input_s: float = 6.0
    end_silence_s: float = 1.2
    max_complaint_s: float = 120.0
    max_menu_s: float = 8.0
    max_call_s: float = 900.0
    digit_timeout_s: float = 4.0
    vad_threshold: float = 600.0  # RMS of 16-bit PCM above which a frame counts as voice
    vad_onset_ms: int = 120


@dataclass
class Input:
    digits: str = ""
    transcript: Transcript | None = None
    speech: bool = False  # the caller spoke (energy), whether or not anything was recognised
    no_input: bool = False
    hung_up: bool = False
    cut: bool = False  # the maximum length was reached
    stopped_by: str = ""  # "#", "watch", "end_of_speech", "endpoint", "digits", "max", "no_input", "hangup"
    stt_unavailable: bool = False

    @property
    def text(self) -> str:
        return self.transcript.text if self.transcript else ""


class CallSession:
    def __init__(self, *, call_id: str, caller: str, rate: int, transport: Transport, stt: VoskSTT | None,
                 prompts: PromptLibrary, timings: VoiceTimings, recording: Path | None = None,
                 pbx_id: str = "") -> None:
        if rate not in audio.RATES:
            raise ValueError(f"unsupported session rate {rate}")
        # ``call_id`` is ours: it names the recording and the case's call. ``pbx_id`` is the one the dialplan
        # asks about; they differ when the PBX reuses an id (a retry, a UNIQUEID after a restart).
        self.call_id = call_id
        self.pbx_id = pbx_id or call_id
        # The intake's idempotency key: the same for every submission of this call, never another call's.
        self.submission_key = f"{call_id}:{uuid.uuid4().hex[:12]}"
        self.caller = caller
        self.rate = rate
        self.transport = transport
        self.stt = stt
        self.prompts = prompts
        self.t = timings
        self.started = time.monotonic()
        self.recorder = audio.WavRecorder(recording, rate, timings.max_call_s) if recording else None
        self._inbox: asyncio.Queue[tuple[str, bytes | str]] = asyncio.Queue(INBOX_EVENTS)
        self._wakeup = asyncio.Event()
        self._listening = False
        self._preroll: collections.deque[bytes] = collections.deque(maxlen=25)
        self._voiced_ms = 0.0
        self._silent_ms = 0.0
        self.speaking = False
        self.hung_up = False  # the caller hung up, or the call reached its time limit (then ``timed_out`` too)
        self.timed_out = False
        self.rx_bytes = 0
        self.stream: SttStream | None = None
        self.heard: list[str] = []  # prompt sequences played, for the call log
        self.closed = False
        self.overflow = False  # the host already carries voice.max_calls calls: play busy and transfer

    # from the adapter ------------------------------------------------------------------------------
    async def audio_in(self, pcm: bytes) -> None:
        if self.closed or self.hung_up or not pcm:
            return
        self.rx_bytes += len(pcm)
        if self.recorder is not None:
            self.recorder.write(pcm)
        ms = audio.duration_s(len(pcm), self.rate) * 1000
        if audio.rms(pcm) >= self.t.vad_threshold:
            self._voiced_ms += ms
            self._silent_ms = 0.0
            if not self.speaking and self._voiced_ms >= self.t.vad_onset_ms:
                self.speaking = True
                self._wakeup.set()
        else:
            self._silent_ms += ms
            if self._silent_ms >= 200:
                self._voiced_ms = 0.0
            if self.speaking and self._silent_ms >= self.t.end_silence_s * 1000:
                self.speaking = False
        if self._listening:
            await self._inbox.put(("audio", pcm))
        else:
            self._preroll.append(pcm)

    async def dtmf_in(self, digit: str) -> None:
        if self.closed or digit not in DTMF_KEYS:
            return
        self._put_control(("dtmf", digit))
        self._wakeup.set()

    def hangup_in(self) -> None:
        if self.hung_up:
            return
        self.hung_up = True
        self._put_control(("hangup", ""))
        self._wakeup.set()

    def time_up(self) -> None:
        """The call reached ``max_call_s``: the flow stops as on a hang-up (keeping what was said), but the
        line is still there, so the service ends the leg itself."""
        if self.hung_up:
            return
        self.timed_out = True
        self.hangup_in()

    @property
    def caller_hung_up(self) -> bool:
        return self.hung_up and not self.timed_out

    def _put_control(self, event: tuple[str, str]) -> None:
        # Control events must never be lost to a full inbox of audio: drop the oldest audio instead.
        while True:
            try:
                self._inbox.put_nowait(event)
                return
            except asyncio.QueueFull:
                with contextlib.suppress(asyncio.QueueEmpty):
                    dropped = self._inbox.get_nowait()
                    if dropped[0] != "audio":
                        self._inbox.put_nowait(dropped)
                        return

    # for the flow -----------------------------------------------------------------------------------
    @property
    def elapsed_s(self) -> float:
        return time.monotonic() - self.started

    async def play(self, names: list[str], *, barge_in: bool = True) -> str:
        """Play prompts; returns "" when heard to the end, "dtmf"/"speech" on barge-in, "hangup"."""
        if self.hung_up or self.closed:
            return "hangup"
        pcm = self.prompts.sequence(names, self.rate)
        self.heard.append(" ".join(names))
        if not pcm:
            return ""
        self._wakeup.clear()
        if barge_in and self._has_control():
            return "dtmf"  # type-ahead: a key pressed before the prompt started skips it
        self.speaking = False if barge_in else self.speaking
        player = asyncio.create_task(self.transport.send_audio(pcm))
        waiter = asyncio.create_task(self._wakeup.wait())
        try:
            while True:
                done, _ = await asyncio.wait({player, waiter}, return_when=asyncio.FIRST_COMPLETED)
                if player in done:
                    player.result()
                    return "hangup" if self.hung_up else ""
                self._wakeup.clear()
                if self.hung_up:
                    return "hangup"
                if barge_in and (self.speaking or self._has_control()):
                    await self._stop(player)
                    return "speech" if self.speaking and not self._has_control() else "dtmf"
                waiter = asyncio.create_task(self._wakeup.wait())
        finally:
            waiter.cancel()
            if not player.done():
                await self._stop(player)

    async def _stop(self, player: asyncio.Task[None]) -> None:
        player.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await player
        with contextlib.suppress(Exception):
            await self.transport.stop_audio()

    def _has_control(self) -> bool:
        return any(kind != "audio" for kind, _ in list(self._inbox._queue))  # type: ignore[attr-defined]

    async def collect(self, *, speech: bool = True, grammar: list[str] | None = None, max_digits: int = 1,
                      terminator: str = "#", no_input_s: float | None = None, max_s: float | None = None,
                      end_silence_s: float | None = None, stop_on_endpoint: bool = False,
                      watch: Callable[[str], bool] | None = None, preroll: bool = True,
                      keys: str = "0123456789*", bare_terminator: bool = False) -> Input:
        """Wait for key presses (``keys``) and/or speech; digits end at ``max_digits`` or the terminator.

        A terminator before any digit or speech is ignored (a stray key), unless ``bare_terminator``: then it
        is an answer of its own (``digits == ""``, ``stopped_by == "#"``).
        """
        result = Input()
        if self.hung_up:
            # Keys pressed just before the hang-up still count (an answer given as the caller hangs up).
            result.digits = self._queued_digits(keys, max_digits)
            result.hung_up, result.stopped_by = True, "hangup"
            return result
        no_input_s = self.t.no_input_s if no_input_s is None else no_input_s
        max_s = self.t.max_menu_s if max_s is None else max_s
        end_silence_s = self.t.end_silence_s if end_silence_s is None else end_silence_s
        stream: SttStream | None = None
        if speech:
            if self.stt is None:
                result.stt_unavailable = True
            else:
                try:
                    stream = await self.stt.open_stream(self.rate, grammar)
                except (STTBusy, STTError):
                    result.stt_unavailable = True
        self.stream = stream
        chunk_bytes = audio.frame_bytes(self.rate, STT_CHUNK_MS)
        pending = bytearray()
        heard_s = 0.0  # audio time since listening started: a fast sender cannot outrun the limits
        t0 = time.monotonic()
        last_digit = t0
        if preroll and speech and self.speaking:
            # The caller barged in by speaking: the start of the sentence arrived while the prompt played.
            for pcm in self._preroll:
                if not self._inbox.full():
                    self._inbox.put_nowait(("audio", pcm))
        self._preroll.clear()
        if not self.speaking:
            self._voiced_ms = 0.0

        def remaining() -> tuple[float, str]:
            now = time.monotonic()
            if result.digits:
                return last_digit + self.t.digit_timeout_s - now, "digits"
            elapsed = max(now - t0, heard_s)
            if result.speech:
                return max_s - elapsed, "max"
            return min(no_input_s, max_s) - elapsed, "no_input"

        self._listening = True
        try:
            while True:
                left, why = remaining()
                if left <= 0:
                    result.stopped_by = why
                    result.cut = why == "max"
                    result.no_input = why == "no_input"
                    break
                try:
                    # Wall-clock guard for a PBX that stops sending audio; audio time ends it sooner.
                    async with asyncio.timeout(left + 0.02):
                        kind, value = await self._inbox.get()
                except TimeoutError:
                    continue
                if kind == "hangup":
                    result.hung_up, result.stopped_by = True, "hangup"
                    break
                if kind == "dtmf":
                    assert isinstance(value, str)
                    if value == terminator:
                        if result.digits or result.speech or bare_terminator:
                            result.stopped_by = "#"
                            break
                        continue
                    if value not in keys:
                        continue
                    result.digits += value
                    last_digit = time.monotonic()
                    if len(result.digits) >= max_digits:
                        result.stopped_by = "digits"
                        break
                    continue
                assert isinstance(value, bytes)
                heard_s += audio.duration_s(len(value), self.rate)
                if self.speaking:
                    result.speech = True
                if stream is not None and not result.digits:
                    pending += value
                    if len(pending) >= chunk_bytes:
                        update = await stream.accept(bytes(pending))
                        pending.clear()
                        text = update.final.text if update.final else update.partial
                        if watch is not None and text and watch(text):
                            result.stopped_by = "watch"
                            break
                        if update.final is not None and stop_on_endpoint and update.final.text:
                            result.stopped_by = "endpoint"
                            break
                if result.speech and not self.speaking and self._silent_ms >= end_silence_s * 1000:
                    result.stopped_by = "end_of_speech"
                    if stream is not None and not result.digits:
                        # The speech detector sees the newest frame while the decoder lags behind it: audio
                        # still queued was said before the silence and belongs to the sentence.
                        pending += self._take_queued_audio()
                    break
        finally:
            self._listening = False
            self._drain_audio()
            if stream is not None:
                try:
                    if pending:
                        with contextlib.suppress(STTError):
                            await stream.accept(bytes(pending))
                    result.transcript = await stream.finish()
                except STTError:
                    log.exception("speech stream failed", extra={"event": "stt_failed", "call_id": self.call_id})
                finally:
                    await stream.close()
                    self.stream = None
        self.speaking = False
        return result

    def _queued_digits(self, keys: str, max_digits: int) -> str:
        digits = ""
        for kind, value in list(self._inbox._queue):  # type: ignore[attr-defined]
            if kind == "hangup" or len(digits) >= max_digits:
                break
            if kind == "dtmf" and isinstance(value, str) and value in keys:
                digits += value
        return digits

    def _take_queued_audio(self) -> bytes:
        audio_out = bytearray()
        keep = []
        while not self._inbox.empty():
            kind, value = self._inbox.get_nowait()
            if kind == "audio" and isinstance(value, bytes):
                audio_out += value
            else:
                keep.append((kind, value))
        for event in keep:
            self._inbox.put_nowait(event)
        return bytes(audio_out)

    def _drain_audio(self) -> None:
        keep = []
        while not self._inbox.empty():
            event = self._inbox.get_nowait()
            if event[0] != "audio":
                keep.append(event)
        for event in keep:
            self._inbox.put_nowait(event)

    async def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        if self.stream is not None:
            await self.stream.close()
            self.stream = None
        if self.recorder is not None:
            await asyncio.to_thread(self.recorder.close)
