"""The phone menu as an explicit state machine; its words, keys and phrases come from config/ivr.toml.

    GREETING → MENU ─1/2─→ CAPTURE → CONFIRM ─1─→ SUBMIT → READBACK → GOODBYE (hang up)
                 │             │  ╰─2 重说─╯        │
                 │             │                   ├─ 咨询 with a knowledge-base answer → OFFER:
                 │             │                   │    1 text → GOODBYE, 2 call-taker → TRANSFER, 3 → READBACK
                 ├─3─→ QUERY → GOODBYE              ├─ emergency (classifier or keywords) → EMERGENCY → TRANSFER
                 ╰─0, no input, no match → TRANSFER ╰─ low confidence → TRANSFER (case kept)
    keywords heard while the caller speaks ─→ EMERGENCY: "dial 110/119/120", case kept, TRANSFER

Whatever the caller said is never lost: a hang-up, an emergency or a transfer after the caller spoke
still submits the complaint (with the recording) as a case. ``run_survey`` drives outbound survey
calls (questions answered with keys 1/2/3 or a few words) on the same session API.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hotline.answers import AnswerService, IvrOffer
from hotline.callers import phone_key
from hotline.intake import Intake, IntakeError
from hotline.ivr.session import CallOutcome, CallSession, Input
from hotline.records import InboundMessage, last4
from hotline.speech import Transcript
from hotline.status import Status
from hotline.store import CaseNotFound, Store

log = logging.getLogger("hotline.ivr.flow")

UNRECOGNISED_TEXT = "（电话诉求：语音未能识别，请听录音）"
_CASE_ID = re.compile(r"^(\d{8})(\d{6})$")


@dataclass
class MenuItem:
    key: str
    action: str  # complaint | consult | query | transfer
    speech: list[str] = field(default_factory=list)


@dataclass
class SurveyQuestion:
    id: str
    prompt: str
    answers: dict[str, str]  # key → value
    speech: dict[str, list[str]] = field(default_factory=dict)  # key → phrases

    def grammar(self) -> list[str]:
        return [p for phrases in self.speech.values() for p in phrases]

    def match(self, text: str) -> str:
        return _match_phrases(text, self.speech)


def _squash(text: str) -> str:
    return re.sub(r"\s+", "", text)


def _match_phrases(text: str, options: dict[str, list[str]]) -> str:
    """The option whose longest phrase occurs in the text (不满意 beats 满意); "" when none does."""
    said = _squash(text)
    best, best_len = "", 0
    for key, phrases in options.items():
        for phrase in phrases:
            p = _squash(phrase)
            if p and p in said and len(p) > best_len:
                best, best_len = key, len(p)
    return best


@dataclass
class IvrConfig:
    prompts: dict[str, str]
    digits: dict[str, str]
    categories: dict[str, str]
    menu: list[MenuItem]
    confirm_yes: list[str]
    confirm_no: list[str]
    emergency_keywords: list[str]
    survey: list[SurveyQuestion]
    tts: dict[str, Any] = field(default_factory=dict)
    # Consultations answered from the knowledge base (hotline/answers.py): key → phrases, and the
    # notification channel that reaches a caller's phone number by text ("" = none: recorded for a call-taker).
    answer_speech: dict[str, list[str]] = field(default_factory=dict)
    answer_text_channel: str = ""
    max_no_input: int = 2
    max_no_match: int = 2
    max_capture_attempts: int = 3
    case_number_digits: int = 14

    @classmethod
    def load(cls, path: Path) -> IvrConfig:
        with path.open("rb") as fh:
            data = tomllib.load(fh)
        return cls.from_dict(data)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> IvrConfig:
        flow = data.get("flow", {})
        menu = [MenuItem(str(m["key"]), str(m["action"]), list(m.get("speech", []))) for m in data.get("menu", [])]
        for item in menu:
            if item.action not in ("complaint", "consult", "query", "transfer"):
                raise ValueError(f"ivr menu: unknown action {item.action!r}")
        survey = [SurveyQuestion(str(q["id"]), str(q["prompt"]), {str(k): str(v) for k, v in q["answers"].items()},
                                 {str(k): list(v) for k, v in q.get("speech", {}).items()})
                  for q in data.get("survey", [])]
        answers = data.get("answers", {})
        return cls(prompts=dict(data.get("prompts", {})), digits=dict(data.get("digits", {})),
                   categories=dict(data.get("categories", {})), menu=menu,
                   confirm_yes=list(data.get("confirm", {}).get("yes", [])),
                   confirm_no=list(data.get("confirm", {}).get("no", [])),
                   emergency_keywords=list(data.get("emergency", {}).get("keywords", [])),
                   survey=survey, tts=dict(data.get("tts", {})),
                   answer_speech={str(k): list(v) for k, v in answers.get("speech", {}).items()},
                   answer_text_channel=str(answers.get("text_channel", "")),
                   max_no_input=int(flow.get("max_no_input", 2)), max_no_match=int(flow.get("max_no_match", 2)),
                   max_capture_attempts=int(flow.get("max_capture_attempts", 3)),
                   case_number_digits=int(flow.get("case_number_digits", 14)))

    def menu_keys(self) -> str:
        return "".join(m.key for m in self.menu)

    def menu_grammar(self) -> list[str]:
        return [p for m in self.menu for p in m.speech]

    def menu_by_key(self, key: str) -> MenuItem | None:
        return next((m for m in self.menu if m.key == key), None)

    def menu_by_speech(self, text: str) -> MenuItem | None:
        key = _match_phrases(text, {m.key: m.speech for m in self.menu})
        return self.menu_by_key(key) if key else None

    def confirm_answer(self, text: str) -> str:
        return _match_phrases(text, {"1": self.confirm_yes, "2": self.confirm_no})

    def answer_choice(self, text: str) -> str:
        return _match_phrases(text, self.answer_speech)

    def answer_grammar(self) -> list[str]:
        return [p for phrases in self.answer_speech.values() for p in phrases]

    def emergency_word(self, text: str) -> str:
        said = _squash(text)
        return next((k for k in self.emergency_keywords if k and _squash(k) in said), "")


class State(enum.Enum):
    GREETING = "greeting"
    MENU = "menu"
    CAPTURE = "capture"
    CONFIRM = "confirm"
    SUBMIT = "submit"
    READBACK = "readback"
    QUERY = "query"
    OFFER = "offer"
    EMERGENCY = "emergency"
    TRANSFER = "transfer"
    GOODBYE = "goodbye"
    DONE = "done"


@dataclass
class FlowOptions:
    low_confidence: float = 0.45  # mean word confidence below which a person takes over (case kept)
    audio_ref: str = ""  # recording path relative to the data dir
    adapter: str = ""


@dataclass
class CallState:
    """What the flow knows about the call so far."""

    intent: str = "complaint"
    no_input: int = 0
    no_match: int = 0
    captures: int = 0
    transcript: Transcript | None = None
    spoke: bool = False
    emergency_word: str = ""
    case_id: str = ""
    submitted: bool = False
    transfer_reason: str = ""
    category_prompt: str = ""
    offer: IvrOffer | None = None
    history: list[str] = field(default_factory=list)


class IvrFlow:
    def __init__(self, cfg: IvrConfig, intake: Intake, store: Store, options: FlowOptions | None = None, *,
                 answers: AnswerService | None = None) -> None:
        self.cfg = cfg
        self.intake = intake
        self.store = store
        self.opt = options or FlowOptions()
        self.answers = answers

    async def run(self, s: CallSession) -> CallOutcome:
        st = CallState()
        state = State.GREETING
        handlers = {
            State.GREETING: self._greeting, State.MENU: self._menu, State.CAPTURE: self._capture,
            State.CONFIRM: self._confirm, State.SUBMIT: self._submit, State.READBACK: self._readback,
            State.QUERY: self._query, State.EMERGENCY: self._emergency, State.TRANSFER: self._transfer,
            State.GOODBYE: self._goodbye, State.OFFER: self._offer,
        }
        try:
            while state is not State.DONE:
                st.history.append(state.value)
                if s.hung_up and state not in (State.SUBMIT, State.DONE):
                    # Nothing more can be said to the caller; keep what they said, then stop.
                    await self._keep_partial(s, st)
                    break
                state = await handlers[state](s, st)
        finally:
            if s.hung_up:
                await self._keep_partial(s, st)
        log.info("call finished", extra={"event": "call_finished", "call_id": s.call_id, "case_id": st.case_id,
                                         "path": "→".join(st.history), "transfer": st.transfer_reason})
        if st.transfer_reason:
            return CallOutcome("transfer", st.transfer_reason, st.case_id)
        if s.timed_out:
            # The line is still up after voice.max_call_s: a person finds out why.
            return CallOutcome("transfer", "max_call", st.case_id)
        return CallOutcome("hangup", "caller_hung_up" if s.hung_up else "done", st.case_id)

    # states -----------------------------------------------------------------------------------------
    async def _greeting(self, s: CallSession, st: CallState) -> State:
        await s.play(["greeting"])
        if s.stt is None:
            st.transfer_reason = "no_speech"
            await s.play(["no_speech"], barge_in=False)
            return State.TRANSFER
        return State.MENU

    async def _menu(self, s: CallSession, st: CallState) -> State:
        await s.play(["menu"])
        got = await s.collect(grammar=self.cfg.menu_grammar(), keys=self.cfg.menu_keys(), stop_on_endpoint=True)
        if got.hung_up:
            return State.DONE
        item = self.cfg.menu_by_key(got.digits) if got.digits else self.cfg.menu_by_speech(got.text)
        if item is None:
            return await self._retry(s, st, got, State.MENU)
        if item.action == "transfer":
            st.transfer_reason = "operator"
            return State.TRANSFER
        if item.action == "query":
            return State.QUERY
        st.intent = item.action
        return State.CAPTURE

    async def _retry(self, s: CallSession, st: CallState, got: Input, again: State) -> State:
        if got.no_input:
            st.no_input += 1
            if st.no_input >= self.cfg.max_no_input:
                st.transfer_reason = "no_input"
                return State.TRANSFER
            await s.play(["no_input"])
        else:
            st.no_match += 1
            if st.no_match >= self.cfg.max_no_match:
                st.transfer_reason = "no_match"
                return State.TRANSFER
            await s.play(["no_match"])
        return again

    async def _capture(self, s: CallSession, st: CallState) -> State:
        st.captures += 1
        barged = await s.play(["consult" if st.intent == "consult" else "capture"])
        if barged != "speech":
            await s.play(["beep"], barge_in=False)

        def watch(text: str) -> bool:
            # Spotted on partial results too: a caller shouting 着火了 is not kept waiting for the end.
            word = self.cfg.emergency_word(text)
            if word:
                st.emergency_word = word
            return bool(word)

        got = await s.collect(max_digits=1, keys="", no_input_s=s.t.no_input_s + 2, max_s=s.t.max_complaint_s,
                              watch=watch, preroll=barged == "speech")
        if got.stt_unavailable:
            st.transfer_reason = "busy"
            await s.play(["busy"], barge_in=False)
            return State.TRANSFER
        st.transcript = got.transcript
        st.spoke = st.spoke or got.speech
        word = self.cfg.emergency_word(got.text) or st.emergency_word
        if word:
            st.emergency_word = word
            return State.EMERGENCY
        if got.hung_up:
            return State.DONE
        if not got.text:
            if st.captures >= self.cfg.max_capture_attempts:
                st.transfer_reason = "no_input" if got.no_input else "no_match"
                return State.TRANSFER
            return await self._retry(s, st, got, State.CAPTURE)
        # 1.0 sends every spoken complaint to a person, however sure the recogniser is.
        low = self.opt.low_confidence
        if got.transcript is not None and (got.transcript.confidence < low or low >= 1.0):
            st.transfer_reason = "low_confidence"
            await self._submit_case(s, st)
            await s.play(["kept"], barge_in=False)
            return State.TRANSFER
        return State.CONFIRM

    async def _confirm(self, s: CallSession, st: CallState) -> State:
        await s.play(["confirm"])
        got = await s.collect(grammar=self.cfg.confirm_yes + self.cfg.confirm_no, keys="12", stop_on_endpoint=True)
        if got.hung_up:
            return State.DONE
        answer = got.digits or self.cfg.confirm_answer(got.text)
        if answer == "2":
            if st.captures >= self.cfg.max_capture_attempts:
                st.transfer_reason = "retries"
                await self._submit_case(s, st)
                return State.TRANSFER
            return State.CAPTURE
        if answer == "1" or got.no_input:
            # Silence after a complete complaint means "yes": dropping it would lose the citizen's words.
            return State.SUBMIT
        st.no_match += 1
        if st.no_match >= self.cfg.max_no_match:
            return State.SUBMIT
        await s.play(["no_match"])
        return State.CONFIRM

    async def _submit(self, s: CallSession, st: CallState) -> State:
        case = await self._submit_case(s, st)
        if case is None:
            st.transfer_reason = st.transfer_reason or "intake_failed"
            return State.TRANSFER
        if s.hung_up:
            return State.DONE
        urgency = (case.suggestion or {}).get("urgency") or {}
        if urgency.get("level") == "emergency":
            return State.EMERGENCY
        if st.intent == "consult" and self.answers is not None:
            return State.OFFER
        return State.READBACK

    async def _readback(self, s: CallSession, st: CallState) -> State:
        names = ["accepted"]
        if st.category_prompt:
            names += ["category_is", st.category_prompt]
        names += ["case_number_is", *s.prompts.digits(st.case_id), "remember"]
        await s.play(names, barge_in=False)
        return State.GOODBYE

    async def _query(self, s: CallSession, st: CallState) -> State:
        await s.play(["query_enter"])
        got = await s.collect(speech=False, max_digits=self.cfg.case_number_digits, keys="0123456789",
                              no_input_s=s.t.no_input_s + 4, bare_terminator=True)
        if got.hung_up:
            return State.DONE
        if not got.digits and got.stopped_by == "#" and s.caller:
            # "#" alone: the latest case this phone reported, so nobody has to key in 14 digits.
            latest = await self.store.cases_of_callers([phone_key(s.caller)], limit=1)
            if latest and s.prompts.has(f"status_{latest[0].status}"):
                await s.play(["latest_case_is", *s.prompts.digits(latest[0].id), "status_is",
                              f"status_{latest[0].status}"], barge_in=False)
                return State.GOODBYE
        m = _CASE_ID.match(got.digits)
        status = ""
        if m:
            try:
                case = await self.store.get_case(f"{m.group(1)}-{m.group(2)}")
                # Only the reporter's own phone hears the status (the web status page asks for the last 4 digits).
                # No digits on either side is no match: a case without a contact belongs to no phone.
                mine = last4(s.caller)
                if mine and last4(case.contact) == mine:
                    status = str(case.status)
            except CaseNotFound:
                pass
        if not status or not s.prompts.has(f"status_{status}"):
            if got.no_input:
                return await self._retry(s, st, got, State.MENU)
            st.no_match += 1
            await s.play(["query_not_found"], barge_in=False)
            return State.MENU if st.no_match < self.cfg.max_no_match else State.GOODBYE
        await s.play(["status_is", f"status_{status}"], barge_in=False)
        return State.GOODBYE

    async def _offer(self, s: CallSession, st: CallState) -> State:
        """A consultation the knowledge base can answer: by text, from a call-taker, or register it as a case.

        The answer itself is never spoken by the machine (long texts read by TTS are unusable on the
        phone); the prompts are fixed recordings, whatever the department or the answer.
        """
        assert self.answers is not None
        try:
            offer = await self.answers.ivr_offer(await self.store.get_case(st.case_id))
        except asyncio.CancelledError:
            raise
        except Exception:
            # No answer service right now (index building, Redis hiccup): the call goes on as a plain case.
            log.exception("ivr answer offer failed", extra={"event": "ivr_offer_failed", "case_id": st.case_id})
            offer = None
        if offer is None:
            return State.READBACK
        st.offer = offer
        choice = ""
        names = ["answer_found", "answer_options"]
        for attempt in range(max(1, self.cfg.max_no_input)):
            await s.play(names)
            got = await s.collect(grammar=self.cfg.answer_grammar() or None, keys="123", stop_on_endpoint=True)
            if got.hung_up:
                break
            choice = got.digits or self.cfg.answer_choice(got.text)
            if choice in ("1", "2", "3"):
                break
            choice = ""
            if attempt + 1 < max(1, self.cfg.max_no_input):
                await s.play(["no_input" if got.no_input else "no_match"])
                names = ["answer_options"]
        action = {"1": "text", "2": "call_taker", "3": "register"}.get(choice, "none")
        await self._case_event(st.case_id, "ivr_answer_offered", {
            "call_id": s.call_id, "entry_id": offer.entry_id, "department": offer.department,
            "date": offer.date, "choice": action, "hung_up": s.caller_hung_up})
        if s.hung_up:
            return State.DONE
        if choice == "1":
            return await self._answer_by_text(s, st, offer)
        if choice == "2":
            # The call-taker's console shows the same suggestion beside the case; they read it out.
            st.transfer_reason = "answer_reader"
            return State.TRANSFER
        return State.READBACK  # 3, or no choice: the consultation stays a case like any other

    async def _answer_by_text(self, s: CallSession, st: CallState, offer: IvrOffer) -> State:
        assert self.answers is not None
        channel = self.cfg.answer_text_channel
        delivered, reason = False, "no_text_channel"
        if channel and s.caller and self.answers.notifications.notifier(channel) is not None:
            try:
                _case, delivered = await self.answers.send(st.case_id, offer.entry_id, actor="voice:ivr",
                                                           channel=channel, recipient=s.caller)
                reason = "" if delivered else "delivery_failed"
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("ivr answer by text failed", extra={"event": "ivr_answer_send_failed",
                                                                  "case_id": st.case_id})
                reason = "send_failed"
        elif not s.caller:
            reason = "no_caller_number"
        if delivered:
            await s.play(["answer_sent"], barge_in=False)
            return State.GOODBYE
        if s.caller and await self._keep_for_reading(st, offer):
            # Answered (直接答复): the web status page shows it to whoever knows the case number and the
            # phone's last four digits, which is why the case number is read back next.
            await self._case_event(st.case_id, "ivr_answer_online", {"call_id": s.call_id, "reason": reason})
            await s.play(["answer_online"], barge_in=False)
            return State.READBACK
        # No way to reach this phone by text: a call-taker gets the request with the answer to send or
        # read back (the case waits in the confirmation queue, flagged).
        def flag(case: Any) -> dict[str, Any]:
            case.needs_confirmation = True
            return {"call_id": s.call_id, "entry_id": offer.entry_id, "channel": channel, "reason": reason}

        try:
            await self.store.update_case(st.case_id, flag, actor="voice:ivr", action="ivr_answer_requested")
        except Exception:
            log.exception("ivr answer request not recorded", extra={"event": "ivr_answer_request_failed",
                                                                    "case_id": st.case_id})
        await s.play(["answer_later"], barge_in=False)
        return State.READBACK

    async def _keep_for_reading(self, st: CallState, offer: IvrOffer) -> bool:
        assert self.answers is not None
        try:
            case = await self.store.get_case(st.case_id)
            if case.status != Status.ANSWERED:  # a text channel that failed has answered it already
                await self.answers.keep_for_reading(st.case_id, offer.entry_id, actor="voice:ivr")
            return True
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("ivr answer not kept", extra={"event": "ivr_answer_keep_failed", "case_id": st.case_id})
            return False

    async def _case_event(self, case_id: str, action: str, data: dict[str, Any]) -> None:
        try:
            await self.store.add_event(case_id, actor="voice:ivr", action=action, data=data)
        except Exception:
            log.exception("voice case event failed", extra={"event": "voice_event_failed", "case_id": case_id})

    async def _emergency(self, s: CallSession, st: CallState) -> State:
        await s.play(["emergency"], barge_in=False)
        st.transfer_reason = "emergency"
        if not st.submitted:
            await self._submit_case(s, st)
        return State.TRANSFER

    async def _transfer(self, s: CallSession, st: CallState) -> State:
        st.transfer_reason = st.transfer_reason or "operator"
        if st.spoke and not st.submitted:
            await self._submit_case(s, st)
        # The store could not take the case (Redis away): say so, and a person takes it down by hand.
        names = ["store_down", "transfer"] if st.transfer_reason == "intake_failed" else ["transfer"]
        await s.play(names, barge_in=False)
        return State.DONE

    async def _goodbye(self, s: CallSession, st: CallState) -> State:
        await s.play(["goodbye"], barge_in=False)
        return State.DONE

    # cases ------------------------------------------------------------------------------------------
    async def _keep_partial(self, s: CallSession, st: CallState) -> None:
        if not st.submitted and (st.spoke or (st.transcript is not None and st.transcript.text)):
            await self._submit_case(s, st)

    @staticmethod
    def _call_facts(s: CallSession) -> dict[str, Any]:
        """Only when they say something: the PBX's own id when the call got another, a call cut at max_call_s."""
        facts: dict[str, Any] = {}
        if s.pbx_id != s.call_id:
            facts["pbx_call_id"] = s.pbx_id
        if s.timed_out:
            facts["timed_out"] = True
        return facts

    async def _submit_case(self, s: CallSession, st: CallState) -> Any:
        if st.submitted:
            return None
        st.submitted = True
        transcript = st.transcript or Transcript(text="")
        text = transcript.text or UNRECOGNISED_TEXT
        if st.intent == "consult":
            text = f"【咨询】{text}"
        msg = InboundMessage(
            channel="voice", sender=s.caller or "unknown", contact=s.caller, text=text,
            transcript=transcript.text, audio_ref=self.opt.audio_ref, idempotency_key=s.submission_key,
            meta={"call_id": s.call_id, "adapter": self.opt.adapter, "intent": st.intent,
                  "confidence": transcript.confidence, "duration_s": transcript.duration_s,
                  "emergency_word": st.emergency_word, "hung_up": s.caller_hung_up, **self._call_facts(s)},
        )
        try:
            result = await self.intake.submit(msg)
        except IntakeError as exc:
            log.error("voice case refused", extra={"event": "voice_case_refused", "call_id": s.call_id,
                                                   "code": exc.code})
            return None
        except Exception:
            log.exception("voice case failed", extra={"event": "voice_case_failed", "call_id": s.call_id})
            return None
        case = result.case
        st.case_id = case.id
        if result.created:
            # The call's own facts go to the case's audit trail, where the call-taker sees them.
            try:
                await self.store.add_event(case.id, actor="voice:ivr", action="voice_call", data={
                    "call_id": s.call_id, "adapter": self.opt.adapter, "intent": st.intent,
                    "confidence": transcript.confidence, "duration_s": transcript.duration_s,
                    "words": len(transcript.words), "emergency_word": st.emergency_word,
                    "hung_up": s.caller_hung_up, "audio_ref": self.opt.audio_ref, **self._call_facts(s)})
            except Exception:
                log.exception("voice call event failed", extra={"event": "voice_event_failed", "case_id": case.id})
        top = ((case.suggestion or {}).get("category") or {}).get("top") or []
        if top:
            st.category_prompt = self.cfg.categories.get(str(top[0].get("label", "")), "")
        return case


# outbound survey -------------------------------------------------------------------------------------
async def run_survey(s: CallSession, cfg: IvrConfig, questions: list[SurveyQuestion] | None = None,
                     *, intro: str = "survey_intro", thanks: str = "survey_thanks") -> dict[str, str]:
    """Ask each question (keys or a few words); returns {question id: answer value}, "" when unanswered.

    Used by the satisfaction callbacks on an outbound call once the PBX has connected it to a session.
    """
    questions = cfg.survey if questions is None else questions
    answers: dict[str, str] = {}
    await s.play([intro])
    for q in questions:
        answer = ""
        for _try in range(max(1, cfg.max_no_input)):
            if s.hung_up:
                break
            await s.play([q.prompt])
            got = await s.collect(speech=bool(q.speech), grammar=q.grammar() or None, keys="".join(q.answers),
                                  stop_on_endpoint=True)
            key = got.digits or q.match(got.text)
            if key in q.answers:
                answer = q.answers[key]
                break
            if got.hung_up:
                break
            await s.play(["no_input" if got.no_input else "no_match"])
        answers[q.id] = answer
        if s.hung_up:
            break
    for q in questions:
        answers.setdefault(q.id, "")
    if not s.hung_up:
        await s.play([thanks], barge_in=False)
    return answers


def survey_result(answers: dict[str, str]) -> dict[str, Any] | None:
    """The shape the satisfaction callbacks take (hotline/surveys.py): None when nothing was answered."""
    if not answers.get("resolved"):
        return None
    result: dict[str, Any] = {"resolved": answers["resolved"] == "yes"}
    if answers.get("satisfaction"):
        result["satisfaction"] = answers["satisfaction"]
    return result
