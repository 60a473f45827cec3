"""The voice door's shared state: speech engine, prompts, flow, the calls in progress and their outcomes."""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from zoneinfo import ZoneInfo

from hotline.intake import Intake
from hotline.ivr.flow import FlowOptions, IvrConfig, IvrFlow
from hotline.ivr.prompts import PromptLibrary
from hotline.ivr.session import CallOutcome, CallSession, Transport, VoiceTimings, clean_call_id, clean_number
from hotline.ivr.stt import VoskSTT
from hotline.settings import Settings
from hotline.store import Store

log = logging.getLogger("hotline.ivr")


@dataclass
class CallRecord:
    call_id: str
    caller: str = ""
    adapter: str = ""
    started: float = field(default_factory=time.time)
    outcome: CallOutcome | None = None
    updated: float = field(default_factory=time.monotonic)


class CallRegistry:
    """Callers announced by the dialplan before a call, outcomes read by it after; kept for ``ttl_s``."""

    def __init__(self, ttl_s: float = 600.0, max_entries: int = 10000) -> None:
        self.ttl_s = ttl_s
        self.max_entries = max_entries
        self._calls: dict[str, CallRecord] = {}

    def _prune(self) -> None:
        cutoff = time.monotonic() - self.ttl_s
        for key in [k for k, r in self._calls.items() if r.updated < cutoff]:
            del self._calls[key]
        while len(self._calls) > self.max_entries:
            del self._calls[next(iter(self._calls))]

    def announce(self, call_id: str, caller: str) -> None:
        self._prune()
        rec = self._calls.setdefault(call_id, CallRecord(call_id))
        rec.caller, rec.updated = caller, time.monotonic()

    def get(self, call_id: str) -> CallRecord | None:
        self._prune()
        return self._calls.get(call_id)

    def start(self, call_id: str, caller: str, adapter: str) -> CallRecord:
        self._prune()
        rec = self._calls.setdefault(call_id, CallRecord(call_id))
        rec.caller = caller or rec.caller
        rec.adapter, rec.updated = adapter, time.monotonic()
        return rec

    def finish(self, call_id: str, outcome: CallOutcome) -> None:
        rec = self._calls.setdefault(call_id, CallRecord(call_id))
        rec.outcome, rec.updated = outcome, time.monotonic()


class VoiceService:
    def __init__(self, settings: Settings, intake: Intake, store: Store, stt: VoskSTT | None,
                 cfg: IvrConfig, prompts: PromptLibrary) -> None:
        v = settings["voice"]
        self.settings = settings
        self.intake = intake
        self.store = store
        self.stt = stt
        self.cfg = cfg
        self.prompts = prompts
        self.timings = VoiceTimings(
            no_input_s=v["no_input_s"], end_silence_s=v["end_silence_s"], max_complaint_s=v["max_complaint_s"],
            max_menu_s=v["max_menu_s"], max_call_s=v["max_call_s"], digit_timeout_s=v["digit_timeout_s"],
            vad_threshold=v["vad_threshold"])
        self.low_confidence = v["low_confidence"]
        self.max_calls = v["max_calls"]
        self.data_dir = settings.data_dir
        rec_dir = Path(v["recordings_dir"]).expanduser()
        self.recordings_dir = rec_dir if rec_dir.is_absolute() else self.data_dir / rec_dir
        self.tz = ZoneInfo(settings["intake"]["timezone"])
        self.calls = CallRegistry(v["result_ttl_s"])
        self.active_sessions: dict[str, CallSession] = {}
        self.audiosocket_port = 0

    def recording_path(self, call_id: str) -> Path:
        day = datetime.now(self.tz).strftime("%Y%m%d")
        return self.recordings_dir / day / f"{call_id}.wav"

    def open_call(self, transport: Transport, *, call_id: str, caller: str, rate: int) -> CallSession:
        """A session for a call the PBX just connected; the adapter feeds it, ``run_flow`` drives it."""
        call_id = clean_call_id(call_id)
        if call_id in self.active_sessions:
            call_id = clean_call_id("")  # a PBX reusing a live id must not mix two calls
        announced = self.calls.get(call_id)
        caller = clean_number(caller) or (announced.caller if announced else "")
        self.calls.start(call_id, caller, transport.name)
        overflow = len(self.active_sessions) >= self.max_calls
        # Beyond max_calls: straight to a person, no recognizer, no recording.
        session = CallSession(call_id=call_id, caller=caller, rate=rate, transport=transport,
                              stt=None if overflow else self.stt, prompts=self.prompts, timings=self.timings,
                              recording=None if overflow else self.recording_path(call_id))
        session.overflow = overflow
        self.active_sessions[call_id] = session
        return session

    async def run_flow(self, session: CallSession) -> CallOutcome:
        """Run the IVR until the call ends, always closing the session and ending the call leg."""
        transport = session.transport
        outcome = CallOutcome("hangup", "error")
        try:
            if session.overflow:
                outcome = CallOutcome("transfer", "busy")
                await session.play(["busy", "transfer"], barge_in=False)
            else:
                path = session.recorder.path if session.recorder else None
                audio_ref = ""
                if path is not None:
                    audio_ref = str(path.relative_to(self.data_dir)) if path.is_relative_to(self.data_dir) \
                        else str(path)
                flow = IvrFlow(self.cfg, self.intake, self.store,
                               FlowOptions(low_confidence=self.low_confidence, adapter=transport.name,
                                           audio_ref=audio_ref))
                outcome = await flow.run(session)
        except asyncio.CancelledError:
            outcome = CallOutcome("hangup", "shutdown")
            raise
        except Exception:
            log.exception("call failed", extra={"event": "call_failed", "call_id": session.call_id})
            outcome = CallOutcome("transfer", "error")
        finally:
            self.active_sessions.pop(session.call_id, None)
            await session.close()
            self.calls.finish(session.call_id, outcome)
            if not session.hung_up:
                await self._end(transport, session.call_id, outcome)
        return outcome

    async def _end(self, transport: Transport, call_id: str, outcome: CallOutcome) -> None:
        self.calls.finish(call_id, outcome)
        try:
            await transport.end(outcome)
        except Exception:
            log.warning("could not end call leg", extra={"event": "call_end_failed", "call_id": call_id})

    def session_for(self, transport: Transport, *, call_id: str, caller: str, rate: int) -> CallSession:
        """A bare session (no flow) for outbound work such as survey calls."""
        call_id = clean_call_id(call_id)
        return CallSession(call_id=call_id, caller=clean_number(caller), rate=rate, transport=transport,
                           stt=self.stt, prompts=self.prompts, timings=self.timings,
                           recording=self.recording_path(call_id))
