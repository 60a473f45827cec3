"""The voice door's shared state: speech engine, prompts, flow, the calls in progress and their outcomes."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from datetime import datetime
from pathlib import Path
from zoneinfo import ZoneInfo

from hotline.answers import AnswerService
from hotline.intake import Intake
from hotline.ivr.flow import FlowOptions, IvrConfig, IvrFlow, run_survey
from hotline.ivr.prompts import PromptLibrary
from hotline.ivr.session import CallOutcome, CallSession, Transport, VoiceTimings, clean_call_id, clean_number
from hotline.ivr.stt import VoskSTT
from hotline.settings import Settings
from hotline.store import Store
from hotline.store.calls import CONNECTED, CallStore, InboundCall, InboundCallStore, OutboundCall

log = logging.getLogger("hotline.ivr")

END_GRACE_S = 15.0  # after max_call_s: time for the flow to keep what was said before it is cancelled


class VoiceService:
    def __init__(self, settings: Settings, intake: Intake, store: Store, stt: VoskSTT | None,
                 cfg: IvrConfig, prompts: PromptLibrary, *, answers: AnswerService | None = None) -> None:
        v = settings["voice"]
        self.answers = answers
        # Outbound calls placed by any process (ARI survey calls) are recognised by their UUID here.
        self.outbound = CallStore(store)
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
        self.calls = InboundCallStore(store, v["result_ttl_s"])
        self.active_sessions: dict[str, CallSession] = {}
        self.audiosocket_port = 0

    def recording_path(self, call_id: str) -> Path:
        day = datetime.now(self.tz).strftime("%Y%m%d")
        return self.recordings_dir / day / f"{call_id}.wav"

    async def open_call(self, transport: Transport, *, call_id: str, caller: str, rate: int) -> CallSession:
        """A session for a call the PBX just connected; the adapter feeds it, ``run_flow`` drives it."""
        pbx_id = clean_call_id(call_id)
        previous = await self._previous(pbx_id)
        # A PBX reusing a live id must not mix two calls: the second is a call of its own, outcome included.
        live = any(pbx_id in (s.call_id, s.pbx_id) for s in self.active_sessions.values()) or (
            previous is not None and bool(previous.adapter) and not previous.action)
        # An id used before (a PBX retry, a UNIQUEID after a restart) keeps naming the dialplan's outcome, but
        # the recording and the case get an id of their own: case 1 must keep pointing at caller 1's audio.
        used = live or (previous is not None and bool(previous.adapter))
        own_id = clean_call_id("") if used else pbx_id
        if live:
            pbx_id = own_id
        caller = clean_number(caller)
        try:
            caller = await self.calls.start(pbx_id, caller, transport.name)
        except asyncio.CancelledError:
            raise
        except Exception:
            # Redis away: the call is still answered; only the announced number and the outcome record miss.
            log.exception("call record failed", extra={"event": "call_record_failed", "call_id": pbx_id})
        overflow = len(self.active_sessions) >= self.max_calls
        # Beyond max_calls: straight to a person, no recognizer, no recording.
        recording = None if overflow else self.recording_path(own_id)
        while True:
            try:
                session = CallSession(call_id=own_id, caller=caller, rate=rate, transport=transport,
                                      stt=None if overflow else self.stt, prompts=self.prompts,
                                      timings=self.timings, recording=recording, pbx_id=pbx_id)
                break
            except FileExistsError:
                # Today's recording of an earlier call with this id, whose outcome record has expired.
                own_id = clean_call_id("")
                recording = self.recording_path(own_id)
            except OSError:
                # A full or read-only disk: the caller is still served, without a recording.
                log.exception("call recording failed", extra={"event": "call_recording_failed", "call_id": own_id})
                recording = None
        if own_id != pbx_id:
            log.info("call id already used; the call gets its own", extra={
                "event": "call_id_reused", "call_id": own_id, "pbx_call_id": pbx_id})
        session.overflow = overflow
        self.active_sessions[own_id] = session
        return session

    async def _previous(self, pbx_id: str) -> InboundCall | None:
        """The record of an earlier call with this id, or only the dialplan's announcement (no adapter)."""
        try:
            return await self.calls.get(pbx_id)
        except asyncio.CancelledError:
            raise
        except Exception:
            return None  # Redis away: the recording is still never overwritten (exclusive create)

    async def run_flow(self, session: CallSession) -> CallOutcome:
        """Run the IVR until the call ends, always closing the session and ending the call leg.

        At ``max_call_s`` the flow is stopped as on a hang-up (what was said is kept as a case) and the leg
        is ended by us; a flow that still does not finish ``END_GRACE_S`` later is cancelled.
        """
        transport = session.transport
        outcome = CallOutcome("hangup", "error")
        max_call_s = self.timings.max_call_s
        timer = asyncio.get_running_loop().call_later(max_call_s, session.time_up)
        limit = asyncio.timeout(max_call_s + END_GRACE_S)
        try:
            async with limit:
                outbound = await self._outbound(session)
                if outbound is not None:
                    outcome = await self._run_outbound(session, outbound)
                elif session.overflow:
                    outcome = CallOutcome("transfer", "busy")
                    await session.play(["busy", "transfer"], barge_in=False)
                else:
                    flow = IvrFlow(self.cfg, self.intake, self.store,
                                   FlowOptions(low_confidence=self.low_confidence, adapter=transport.name,
                                               audio_ref=self.audio_ref(session)), answers=self.answers)
                    outcome = await flow.run(session)
        except TimeoutError:
            if limit.expired():
                log.error("call did not end after its time limit", extra={"event": "call_stuck",
                                                                           "call_id": session.call_id})
                outcome = CallOutcome("transfer", "max_call")
            else:
                log.exception("call failed", extra={"event": "call_failed", "call_id": session.call_id})
                outcome = CallOutcome("transfer", "error")
        except asyncio.CancelledError:
            outcome = CallOutcome("hangup", "shutdown")
            raise
        except Exception:
            log.exception("call failed", extra={"event": "call_failed", "call_id": session.call_id})
            outcome = CallOutcome("transfer", "error")
        finally:
            timer.cancel()
            if session.timed_out:
                log.warning("call reached max_call_s", extra={"event": "call_max_time", "call_id": session.call_id})
            self.active_sessions.pop(session.call_id, None)
            await session.close()
            await self._record(session.pbx_id, outcome)
            if not session.caller_hung_up:
                await self._end(transport, session.pbx_id, outcome)
        return outcome

    def audio_ref(self, session: CallSession) -> str:
        """Where the call's recording is, as cases and events name it (relative to the data dir)."""
        path = session.recorder.path if session.recorder else None
        if path is None:
            return ""
        return str(path.relative_to(self.data_dir)) if path.is_relative_to(self.data_dir) else str(path)

    async def _outbound(self, session: CallSession) -> OutboundCall | None:
        """The outbound call this connection answers (its UUID was registered by the originator), or None."""
        try:
            return await self.outbound.connect(session.pbx_id)
        except asyncio.CancelledError:
            raise
        except Exception:
            # Redis away: the inbound menu is the safe default (an outbound try then times out as unanswered).
            log.exception("outbound lookup failed", extra={"event": "outbound_lookup_failed",
                                                           "call_id": session.call_id})
            return None

    async def _run_outbound(self, session: CallSession, call: OutboundCall) -> CallOutcome:
        if call.state != CONNECTED or call.purpose != "survey":
            # Abandoned (answered after the originator gave up) or connected twice: say nothing, hang up.
            log.warning("stale outbound call", extra={"event": "outbound_stale", "call_id": session.call_id,
                                                      "state": call.state})
            return CallOutcome("hangup", "stale_outbound", call.case_id)
        answers: dict[str, str] = {}
        try:
            answers = await run_survey(session, self.cfg)
        finally:
            # Always tell the originator, also on a hang-up or an error: it must not wait for nothing.
            with contextlib.suppress(Exception):
                await self.outbound.post(session.pbx_id, {"event": "result", "answers": answers,
                                                           "hung_up": session.hung_up,
                                                           "audio_ref": self.audio_ref(session)})
        return CallOutcome("hangup", "survey", call.case_id, answers=answers)

    async def _record(self, call_id: str, outcome: CallOutcome) -> None:
        try:
            await self.calls.finish(call_id, action=outcome.action, reason=outcome.reason, case_id=outcome.case_id)
            # The number announced for this call must not pass to a later call that reuses the id unannounced.
            await self.calls.announce(call_id, "")
        except asyncio.CancelledError:
            raise
        except Exception:
            # The dialplan then hears "unknown" and puts the caller through to a person: the safe side.
            log.exception("call outcome not recorded", extra={"event": "call_record_failed", "call_id": call_id})

    async def _end(self, transport: Transport, call_id: str, outcome: CallOutcome) -> None:
        # The outcome is recorded already: the dialplan asks for it as soon as the leg ends.
        try:
            await transport.end(outcome)
        except Exception:
            log.warning("could not end call leg", extra={"event": "call_end_failed", "call_id": call_id})
