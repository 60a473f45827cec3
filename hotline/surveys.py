"""Satisfaction callbacks (回访): ask every citizen who reported a resolved case, act on the answers.

Q1 问题是否解决 (已解决 / 未解决), Q2 满意度 (满意 / 基本满意 / 不满意), optional comment.
Chat reporters are asked on their channel with options; phone and web reporters, and anyone who does
not answer after ``callbacks.max_attempts`` automated tries, go to the follow-up agents' worklist.
未解决 or 不满意 reopens the case (重办) and sends it back to dispatch; an answer from the case's own
reporter that is neither closes it (核实结案).

A round asks each citizen once (one 回访 per citizen per case, as 12345 centres do): a merged report from the
citizen who reported already — same phone or chat account, a 催办 folded into their own case — is kept in the
round as ``covered`` and never asked. Should the report that covers it be unmerged, the covered report still
belongs to the case and takes its place.

A round's recipients are fixed when it is scheduled, but a merge may be undone afterwards: a recipient
whose report is no longer in ``case.reports`` is withdrawn when next met (worker, worklist, an answer) and
nothing is recorded for it. A recipient found unreachable has ended its survey: a later answer is refused.
A round ends for everybody who has not answered yet when the case is reopened (one reporter's 未解决 or
不满意): the case is being handled again, so there is nothing to rate until it is resolved anew, and that
resolution starts the next round with every reporter.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import dataclasses
import hashlib
import hmac
import json
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Protocol
from zoneinfo import ZoneInfo

from hotline.errors import ApiError
from hotline.notify import Notification, Notifications, Reply
from hotline.rates import (
    BASIC,
    CHAT_CHANNELS,
    SATISFACTION_LABELS_ZH,
    SATISFIED,
    UNSATISFIED,
    citizen_keys,
    same_citizen,
)
from hotline.records import Case
from hotline.status import IllegalTransition, Status
from hotline.store import CaseNotFound, Store
from hotline.store.surveys import (
    ANSWERED,
    ASKED,
    FOLLOWUP,
    MAIN,
    SCHEDULED,
    UNREACHABLE,
    WITHDRAWN,
    Recipient,
    Survey,
    SurveyStore,
)

log = logging.getLogger("hotline.surveys")

KIND = "survey"
Q1_TEXT = "您好，您反映的问题（案件编号 {case_id}）已办理完毕。请问问题是否已经解决？"
Q2_TEXT = "请问您对本次办理结果是否满意？"
Q1_OPTIONS = [("q1:resolved", "已解决"), ("q1:unresolved", "未解决")]
Q2_OPTIONS = [("q2:satisfied", "满意"), ("q2:basic", "基本满意"), ("q2:unsatisfied", "不满意")]
SATISFACTIONS = (SATISFIED, BASIC, UNSATISFIED)
# Cases that get a survey round: resolved by a department, or answered at intake (直接答复).
SURVEYED_STATES = frozenset({Status.RESOLVED, Status.ANSWERED})
AGENT_OUTCOMES = ("answered", "no_answer", "wrong_number", "call_back_later")
MAX_COMMENT_CHARS = 1000
# A recipient who had not answered when the case was reopened; the next resolution asks them again.
SUPERSEDED = "superseded"
# A repeat report of a citizen another recipient of the round already asks: never asked itself.
COVERED = "covered"
# Recipients whose survey is over: nothing more is asked or recorded.
ENDED_STATES = frozenset({ANSWERED, UNREACHABLE, WITHDRAWN, SUPERSEDED, COVERED})
WAITING_STATES = frozenset({SCHEDULED, ASKED, FOLLOWUP})
# Case states in which the round's result may still be rated: after resolution (or a direct answer), and
# once closed (merged reporters still answer after the case's own reporter closed it). Anything else means
# the case was reopened and is being handled again.
RATEABLE_STATES = SURVEYED_STATES | {Status.CLOSED}


class SurveyError(ApiError):
    pass


class _Ended(Exception):
    """Stops a case write for a recipient whose survey ended meanwhile; ``state``: how (withdrawn, superseded)."""

    def __init__(self, state: str) -> None:
        super().__init__(state)
        self.state = state


def belongs(case: Case, rid: str) -> bool:
    """Whether the recipient is still a reporter of the case: its own, or a report merged into it."""
    return rid == MAIN or any(r.report_id == rid for r in case.reports)


def citizens(survey: Survey) -> list[list[str]]:
    """The round's recipients grouped by citizen, in the order they were scheduled (the case's own first)."""
    return same_citizen([(rid, citizen_keys(r.channel, r.sender, r.contact)) for rid, r in survey.recipients.items()])


def _covered_error() -> SurveyError:
    return SurveyError("same_citizen", "该市民已就本案件的另一条反映接受回访，同一案件只回访一次。", 409)


def _unmerged_error() -> SurveyError:
    return SurveyError("not_a_reporter", "该反映已撤销合并，不再属于本案件，不能登记本案件的回访。", 409)


def _reopened_error() -> SurveyError:
    return SurveyError("case_reopened", "该案件已重新办理，本次回访已结束；办理完毕后将再次回访。", 409)


def ended_error(state: str, actor: str) -> SurveyError | None:
    """Why a recipient in ``state`` can give no answer (None: it still can, or already did)."""
    if state == UNREACHABLE:
        # README: unreachable ends the survey and the case closed without an evaluation; a late answer
        # would reopen or rate a case the agents already finished.
        who = "该市民已记为联系不上，" if actor.startswith("staff:") else ""
        return SurveyError("survey_ended", f"{who}本次回访已结束，不再登记评价。", 409)
    if state == WITHDRAWN:
        return _unmerged_error()
    if state == SUPERSEDED:
        return _reopened_error()
    if state == COVERED:
        # A second evaluation from the same citizen would count twice in the 三率 and could reopen the
        # case against the answer they gave for it.
        return _covered_error()
    return None


class SurveyCaller(Protocol):
    """Outbound IVR survey through the telephony adapter: answers, or None when nobody answered.

    ``max_call_s`` bounds one try once it has a line (ringing and the survey itself); the worker's lease on the
    entry is that long and is renewed while the call queues for a line and runs. ``ready`` is awaited once the
    call holds a line, just before dialling: False → the line is released, nobody is dialled, None is returned.
    """

    max_call_s: float

    async def survey_call(self, number: str, case_id: str,
                          ready: Callable[[], Awaitable[bool]] | None = None) -> dict[str, Any] | None: ...


Redispatch = Callable[[str, str, str], Awaitable[Any]]


@dataclass
class CallbackSettings:
    delay_s: float = 3600
    hours_start: int = 9
    hours_end: int = 20
    weekdays: tuple[int, ...] = (1, 2, 3, 4, 5, 6, 7)
    answer_timeout_s: float = 86400
    max_attempts: int = 2
    max_agent_attempts: int = 3
    link_ttl_s: float = 14 * 86400
    timezone: str = "Asia/Shanghai"

    @classmethod
    def from_settings(cls, section: dict[str, Any], timezone: str) -> CallbackSettings:
        return cls(delay_s=section["delay_s"], hours_start=section["hours_start"], hours_end=section["hours_end"],
                   weekdays=tuple(section["weekdays"]), answer_timeout_s=section["answer_timeout_s"],
                   max_attempts=section["max_attempts"], max_agent_attempts=section["max_agent_attempts"],
                   link_ttl_s=section["link_ttl_s"], timezone=timezone)


def next_working_time(ts: float, cfg: CallbackSettings) -> float:
    """The first moment at or after ``ts`` inside the calling hours on a calling day."""
    tz = ZoneInfo(cfg.timezone)
    t = datetime.fromtimestamp(ts, tz)
    for _ in range(15):
        if t.isoweekday() in cfg.weekdays:
            midnight = t.replace(hour=0, minute=0, second=0, microsecond=0)
            # Added as hours, not set via replace(): hours_end = 24 (calls all day) is a valid setting.
            start = midnight + timedelta(hours=cfg.hours_start)
            end = midnight + timedelta(hours=cfg.hours_end)
            if t < start:
                return start.timestamp()
            if t < end:
                return t.timestamp()
        t = (t + timedelta(days=1)).replace(hour=0, minute=0, second=0, microsecond=0)
    return ts  # no calling day configured: do not hold surveys back forever


# Signed one-time links ----------------------------------------------------------

def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def make_token(secret: bytes, case_id: str, rid: str, round_: int, expires_at: float) -> str:
    payload = _b64(json.dumps([case_id, rid, round_, int(expires_at)], separators=(",", ":")).encode())
    sig = _b64(hmac.new(secret, payload.encode(), hashlib.sha256).digest()[:18])
    return f"{payload}.{sig}"


def read_token(secret: bytes, token: str, now: float | None = None) -> tuple[str, str, int]:
    try:
        payload, sig = token.split(".", 1)
        expected = _b64(hmac.new(secret, payload.encode(), hashlib.sha256).digest()[:18])
        if not hmac.compare_digest(sig, expected):
            raise ValueError("signature")
        case_id, rid, round_, expires_at = json.loads(_unb64(payload))
        if not (isinstance(case_id, str) and isinstance(rid, str) and isinstance(round_, int)):
            raise ValueError("payload")
    except (ValueError, TypeError, UnicodeDecodeError) as exc:
        raise SurveyError("bad_link", "回访链接无效。", 404) from exc
    if (time.time() if now is None else now) > expires_at:
        raise SurveyError("link_expired", "回访链接已过期。", 410)
    return case_id, rid, round_


class SurveyService:
    def __init__(self, store: Store, notifications: Notifications, cfg: CallbackSettings, secret: bytes, *,
                 public_url: str = "", redispatch: Redispatch | None = None,
                 caller: SurveyCaller | None = None) -> None:
        self.store = store
        self.surveys = SurveyStore(store)
        self.notifications = notifications
        self.cfg = cfg
        self.secret = secret
        self.public_url = public_url.rstrip("/")
        self.redispatch = redispatch
        self.caller = caller

    # scheduling -------------------------------------------------------------
    async def schedule(self, case: Case, now: float | None = None) -> bool:
        """One survey round per resolution: the case's reporter and each other citizen merged into it.

        Called for every change seen while a case is resolved (or answered at intake, 直接答复); the
        audit event that moved it there identifies the round, so repeated calls schedule nothing new.
        """
        if case.status not in SURVEYED_STATES:
            return False
        trigger = ""
        for ev in reversed(await self.store.events(case.id)):
            if ev.data.get("to") == str(case.status):
                trigger = ev.id
                break
        now = time.time() if now is None else now
        due = next_working_time(now + self.cfg.delay_s, self.cfg)
        earlier = await self.surveys.get(case.id)
        if earlier is not None and earlier.trigger == trigger:
            return False
        round_ = earlier.round + 1 if earlier else 1
        survey = Survey(case_id=case.id, created_at=now, round=round_, trigger=trigger)
        survey.recipients[MAIN] = Recipient(MAIN, case.channel, case.sender, case.contact, next_at=due)
        for r in case.reports:
            survey.recipients[r.report_id] = Recipient(r.report_id, r.channel, r.sender, r.contact, next_at=due)
        covered = [rid for group in citizens(survey) for rid in group[1:]]
        for rid in covered:
            survey.recipients[rid].state, survey.recipients[rid].next_at = COVERED, 0.0
        created = await self.surveys.create(survey)
        if created:
            for rid in covered:
                # create() puts every recipient on the schedule; the worker would only pass over these.
                with contextlib.suppress(KeyError):
                    await self.surveys.update(case.id, rid, lambda _r, _s: None)
            await self.store.add_event(case.id, actor="system", action="survey_scheduled",
                                       data={"round": round_, "due_at": due,
                                             "recipients": len(survey.recipients) - len(covered),
                                             "reporters": case.reporter_count})
        return created

    # automated tries --------------------------------------------------------
    async def run_due(self, now: float | None = None) -> int:
        now = time.time() if now is None else now
        claimed = await self.surveys.claim_due(now)

        async def one(case_id: str, rid: str) -> None:
            try:
                await self.try_recipient(case_id, rid, now)
            except (KeyError, CaseNotFound):
                log.warning("survey entry without case", extra={"event": "survey_orphan", "case_id": case_id})
            except Exception:
                # One recipient's fault must not stop the others of the batch; its lease brings it back.
                log.exception("survey try failed", extra={"event": "survey_try_failed", "case_id": case_id})

        # Side by side: an outbound survey call takes a minute and must not hold up the others
        # (the caller bounds how many calls run at once).
        await asyncio.gather(*(one(case_id, rid) for case_id, rid in claimed))
        return len(claimed)

    async def try_recipient(self, case_id: str, rid: str, now: float) -> None:
        started = time.monotonic()
        found = await self._to_ask(case_id, rid, now)
        if found is None:
            return
        survey, rec = found
        if rec.channel in CHAT_CHANNELS:
            n = Notification(case_id, KIND, Q1_TEXT.format(case_id=case_id), rec.channel, rec.sender, rec.contact,
                             report_id="" if rid == MAIN else rid, options=list(Q1_OPTIONS),
                             # The web survey page, for a channel that can only show a link (WeChat template).
                             meta={"question": "q1", "url": self.link(case_id, rid, survey.round, now)})
            delivered = await self.notifications.send(n)
            if not delivered:
                await self._to_followup(case_id, rid, "channel_unreachable", now)
                return

            def asked(r: Recipient, _s: Survey) -> None:
                r.state, r.question, r.attempts = ASKED, "q1", r.attempts + 1
                r.next_at = now + self.cfg.answer_timeout_s

            await self.surveys.update(case_id, rid, asked)
            return
        if rec.channel == "voice" and self.caller is not None and rec.contact:
            opens = next_working_time(now, self.cfg)
            if opens > now + 1:  # (datetime keeps microseconds: the same moment may come back a hair later)
                # Picked up late (a backlog, a stopped worker): never ring a citizen outside the calling hours.
                await self.surveys.reschedule(case_id, rid, opens)
                return
            # Claiming took the entry off the schedule: put it back as a lease, so a process that dies
            # mid-call does not lose the survey. The lease is renewed until this try is over: queueing for
            # a line can take longer than one call, and another process must not ring the citizen meanwhile.
            lease_s = self.caller.max_call_s
            await self.surveys.reschedule(case_id, rid, now + lease_s)
            over = asyncio.Event()
            keeper = asyncio.create_task(self._keep_lease(case_id, rid, lease_s, over))
            dial: dict[str, bool] = {"go": True}

            async def ready() -> bool:
                # Run by the caller once it holds a line, just before dialling: the wait for the line may have
                # been long (a morning backlog), and the survey ended or the calling hours closed meanwhile.
                try:
                    dial["go"] = await self._still_to_call(case_id, rid, survey.round,
                                                           now + (time.monotonic() - started))
                except Exception:
                    # Not dialled, not counted: the lease, no longer renewed, brings the entry back.
                    log.exception("survey re-check failed", extra={"event": "survey_recheck_error",
                                                                    "case_id": case_id})
                    dial["go"] = False
                return dial["go"]

            answers: dict[str, Any] | None = None
            try:
                answers = await self.caller.survey_call(rec.contact, case_id, ready=ready)
            except Exception:
                # The phone may have rung: the try counts, or the citizen is dialled after every lease
                # without ever reaching max_attempts.
                log.exception("survey call failed", extra={"event": "survey_call_error", "case_id": case_id})
            finally:
                over.set()  # and wait for a renewal under way, so it cannot land after the update below
                await keeper
            if not dial["go"]:
                log.info("survey call not placed", extra={"event": "survey_call_skipped", "case_id": case_id})
                return

            def called(r: Recipient, _s: Survey) -> None:
                r.attempts += 1
                r.next_at = next_working_time(now + self.cfg.answer_timeout_s / 4, self.cfg)

            await self.surveys.update(case_id, rid, called)
            if answers and "resolved" in answers:
                try:
                    await self.answer(case_id, rid, resolved=bool(answers["resolved"]),
                                      satisfaction=answers.get("satisfaction", ""), comment="", actor="voice:survey")
                except SurveyError as exc:
                    # The case was reopened or the report unmerged during the call: nothing to record, and
                    # not a fault of the worker (the other recipients it runs beside must go on).
                    log.info("survey call answer refused", extra={"event": "survey_call_refused",
                                                                  "case_id": case_id, "code": exc.code})
            return
        # Phone and web reporters: a person calls (the web status page also offers the signed link).
        await self._to_followup(case_id, rid, "needs_call", now)

    async def _to_ask(self, case_id: str, rid: str, now: float,
                      round_: int | None = None) -> tuple[Survey, Recipient] | None:
        """The survey and the recipient when an automated try at ``now`` goes ahead; else None, the recipient
        withdrawn, its round closed or handed to the follow-up agents as the case now requires.

        ``round_``: the entry is held as a lease of that round (the re-check before dialling). A new round
        owns the entry and is left alone; where a claimed entry would just stay off the schedule, the lease
        is taken off.
        """
        survey = await self.surveys.get(case_id)
        if survey is not None and round_ is not None and survey.round != round_:
            return None
        if survey is None or rid not in survey.recipients or survey.recipients[rid].state not in (SCHEDULED, ASKED):
            await self._release(case_id, rid, round_)  # (an ended recipient is off the schedule already)
            return None
        rec = survey.recipients[rid]
        case = await self.store.get_case(case_id)
        if not belongs(case, rid):
            # Asking would tell this citizen that someone else's case is done.
            await self.withdraw(case_id, rid)
            return None
        if case.status not in RATEABLE_STATES:
            await self.close_round(case_id, rid)  # reopened meanwhile: nothing to rate until it is resolved again
            return None
        if case.status not in SURVEYED_STATES:
            await self._release(case_id, rid, round_)  # closed by its own reporter's answer meanwhile
            return None
        if rec.attempts >= self.cfg.max_attempts:
            await self._to_followup(case_id, rid, "no_reply", now)
            return None
        return survey, rec

    async def _release(self, case_id: str, rid: str, round_: int | None) -> None:
        if round_ is not None:
            await self.surveys.release(case_id, rid, round_)

    async def _still_to_call(self, case_id: str, rid: str, round_: int, at: float) -> bool:
        """The check of ``try_recipient`` again, at ``at``, once the call has a line: False when the citizen is
        not to be rung now, the entry ended or off the schedule, or moved to the next opening of the hours."""
        if await self._to_ask(case_id, rid, at, round_) is None:
            return False
        opens = next_working_time(at, self.cfg)
        if opens > at + 1:
            # The calling hours closed while the call waited for a line.
            await self.surveys.reschedule(case_id, rid, opens)
            return False
        return True

    async def _keep_lease(self, case_id: str, rid: str, lease_s: float, over: asyncio.Event) -> None:
        """Every third of ``lease_s`` until ``over``: the claimed entry's lease runs ``lease_s`` from now."""
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(over.wait(), lease_s / 3)
            if over.is_set():
                return
            try:
                await self.surveys.renew(case_id, rid, time.time() + lease_s)
            except Exception:
                # Redis away for a moment: the next beat tries again, well before the lease runs out.
                log.warning("survey lease not renewed", exc_info=True,
                            extra={"event": "survey_lease_error", "case_id": case_id})

    async def _to_followup(self, case_id: str, rid: str, reason: str, now: float) -> None:
        def move(r: Recipient, _s: Survey) -> None:
            r.state, r.question, r.next_at = FOLLOWUP, "", now

        await self.surveys.update(case_id, rid, move)
        await self.store.add_event(case_id, actor="system", action="survey_followup",
                                   data={"report_id": "" if rid == MAIN else rid, "reason": reason})

    # answers ----------------------------------------------------------------
    async def handle_reply(self, reply: Reply) -> str:
        """A chat answer to a survey question (hotline/notify.py reply path)."""
        rid = reply.report_id or MAIN
        survey = await self.surveys.get(reply.case_id)
        rec = survey.recipients.get(rid) if survey else None
        if rec is None or (rec.state in ENDED_STATES and rec.state != SUPERSEDED):
            return "本次回访已结束，感谢您的参与。"
        if rec.channel != reply.channel or rec.sender != reply.sender:
            return "未找到您的回访。"
        if rec.state == SUPERSEDED:
            return _reopened_error().message
        try:
            await self.open_for(reply.case_id, rid)
        except SurveyError as exc:
            return exc.message
        if reply.value in ("q1:resolved", "q1:unresolved"):
            resolved = reply.value == "q1:resolved"

            def q1(r: Recipient, _s: Survey) -> None:
                r.resolved, r.question = resolved, "q2"

            await self.surveys.update(reply.case_id, rid, q1)
            await self.notifications.send(Notification(
                reply.case_id, KIND, Q2_TEXT, rec.channel, rec.sender, rec.contact,
                report_id=reply.report_id, options=list(Q2_OPTIONS), meta={"question": "q2"}))
            return ""
        if reply.value.startswith("q2:") and reply.value[3:] in SATISFACTIONS:
            if rec.resolved is None:
                return "请先回答问题是否已经解决。"
            try:
                return await self.answer(reply.case_id, rid, resolved=rec.resolved,
                                         satisfaction=reply.value[3:], comment=reply.comment,
                                         actor=f"{reply.channel}:citizen")
            except SurveyError as exc:
                return exc.message  # ended (unmerged, unreachable, reopened) since the check above
        return "未能识别您的选择，请点击或回复选项编号。"

    async def open_for(self, case_id: str, rid: str) -> Case:
        """The case, when this recipient may still rate it. Refuse (and take out of the round) a recipient
        whose report was unmerged after the round began, or whose case was reopened since: the answer would
        reopen or close a case that is not theirs, or rate a result the case no longer has."""
        try:
            case = await self.store.get_case(case_id)
        except CaseNotFound as exc:
            raise SurveyError("not_found", "未找到该回访。", 404) from exc
        if not belongs(case, rid):
            await self.withdraw(case_id, rid)
            raise _unmerged_error()
        if case.status not in RATEABLE_STATES:
            await self.close_round(case_id, rid)
            raise _reopened_error()
        return case

    async def answer(self, case_id: str, rid: str, *, resolved: bool, satisfaction: str, comment: str,
                     actor: str, round_: int | None = None) -> str:
        """Record a full answer (from chat, the web link, the IVR or an agent) and act on it.

        The recipient's entry is taken first (one answer per recipient). The answer counts once it is written
        to the case, and that write checks the case record it changes: a report unmerged, or a case reopened
        by another answer, since ``open_for`` gives the entry back (withdrawn, superseded), records nothing
        and is refused. The reopening and the close are decided on the record they change in the same way."""
        if satisfaction not in SATISFACTIONS:
            raise SurveyError("bad_satisfaction", "满意度须为 满意 / 基本满意 / 不满意。")
        comment = (comment or "")[:MAX_COMMENT_CHARS]
        now = time.time()
        state: dict[str, Any] = {"already": False}
        survey = await self.surveys.get(case_id)
        if survey is None or rid not in survey.recipients:
            raise SurveyError("not_found", "未找到该回访。", 404)
        await self.open_for(case_id, rid)

        def record(r: Recipient, s: Survey) -> None:
            if round_ is not None and s.round != round_:
                raise SurveyError("link_expired", "回访链接已失效。", 410)
            if r.state == ANSWERED:
                state["already"] = True
                return
            refused = ended_error(r.state, actor)
            if refused is not None:
                raise refused
            state["before"], state["round"] = dataclasses.replace(r), s.round
            r.state, r.question = ANSWERED, ""
            r.resolved, r.satisfaction, r.comment = resolved, satisfaction, comment
            r.answered_at, r.answered_by = now, actor

        try:
            await self.surveys.update(case_id, rid, record)
        except KeyError as exc:
            raise SurveyError("not_found", "未找到该回访。", 404) from exc
        if state["already"]:
            return "您已完成本次回访，感谢您的参与。"

        unhappy = (not resolved) or satisfaction == UNSATISFIED
        result = {"resolved": resolved, "satisfaction": satisfaction, "comment": comment, "at": now, "by": actor}

        def on_case(case: Case) -> dict[str, Any]:
            # On the record being written (update_case runs this again if the case changed since it was read):
            # an undo of the merge or another answer's reopening may have come after open_for.
            if not belongs(case, rid):
                raise _Ended(WITHDRAWN)
            if case.status not in RATEABLE_STATES:
                raise _Ended(SUPERSEDED)
            if rid == MAIN:
                case.survey = {**case.survey, **result, "reports": case.survey.get("reports", {})}
            else:
                reports = dict(case.survey.get("reports", {}))
                reports[rid] = result
                case.survey = {**case.survey, "reports": reports}
            return {"report_id": "" if rid == MAIN else rid, "resolved": resolved,
                    "satisfaction": SATISFACTION_LABELS_ZH[satisfaction], "comment": comment}

        try:
            case = await self.store.update_case(case_id, on_case, actor=actor, action="survey_answered")
        except _Ended as ended:
            await self._take_back(case_id, rid, state["before"], (now, actor), ended.state)
            raise (_unmerged_error() if ended.state == WITHDRAWN else _reopened_error()) from None

        if not unhappy:
            if rid == MAIN and case.status in SURVEYED_STATES:
                # Reopened by another reporter's answer since this one was written: the case is handled
                # again, and this answer stays recorded.
                with contextlib.suppress(IllegalTransition):
                    await self.store.update_case(case_id, lambda c: {"by": "survey"}, actor=actor, action="closed",
                                                 target=Status.CLOSED)
            return "感谢您的评价！"

        if case.status == Status.ANSWERED:
            # The answer given at intake did not help: the contact becomes a normal case for a call-taker.
            target, reason = Status.CLASSIFIED, comment or "市民反映直接答复未解决问题"
            done = "感谢您的反馈，您的问题将转为工单办理，我们会尽快联系您。"
        else:
            target = Status.REOPENED
            reason = comment or ("市民反映问题未解决" if not resolved else "市民对办理结果不满意")
            done = "感谢您的反馈，您的问题将重新办理，我们会尽快再次联系您。"

        def reopen(c: Case) -> dict[str, Any]:
            if not belongs(c, rid):
                raise _Ended(WITHDRAWN)
            return {"reason": reason}

        try:
            await self.store.update_case(case_id, reopen, actor=actor, action="reopened", target=target)
        except IllegalTransition:
            return done  # another reporter's answer reopened it since this one was written: handled again
        except _Ended:
            # The merge was undone after the answer was written: it stays recorded (given while a reporter),
            # but the case is no longer this citizen's to reopen.
            return "感谢您的评价！"
        # Now the case is reopened, an answer still on its way is refused when it is written (on_case); end the
        # round for those not asked yet. Only this round: a later resolution's round is not this answer's.
        await self.close_round(case_id, round_=state["round"])
        if target == Status.REOPENED and self.redispatch is not None:
            try:
                await self.redispatch(case_id, reason, actor)
            except Exception:
                # The case stays REOPENED in the queue; staff re-dispatch it by hand.
                log.exception("re-dispatch failed", extra={"event": "redispatch_failed", "case_id": case_id})
        return done

    async def _take_back(self, case_id: str, rid: str, before: Recipient, answer: tuple[float, str],
                         state: str) -> None:
        """End a recipient whose answer (``answer``: its time and actor) the case refused; ``state``: withdrawn,
        the report was unmerged, or superseded, the case was reopened. The entry is as ``before`` the answer
        took it, ended: nothing of the answer stays recorded."""
        changed: dict[str, bool] = {"done": False}

        def back(r: Recipient, _s: Survey) -> None:
            if r.state == ANSWERED and (r.answered_at, r.answered_by) == answer:  # still this answer's
                r.resolved, r.satisfaction, r.comment = before.resolved, before.satisfaction, before.comment
                r.answered_at, r.answered_by = before.answered_at, before.answered_by
                r.state, r.question, r.next_at = state, "", 0.0
                changed["done"] = True

        with contextlib.suppress(KeyError):
            await self.surveys.update(case_id, rid, back)
        if changed["done"]:
            with contextlib.suppress(CaseNotFound):
                await self.store.add_event(case_id, actor="system", action="survey_withdrawn",
                                           data={"report_id": "" if rid == MAIN else rid,
                                                 "reason": "unmerged" if state == WITHDRAWN else "reopened"})
            if state == WITHDRAWN:
                await self._uncover(case_id)

    # follow-up agents -------------------------------------------------------
    async def agent_outcome(self, case_id: str, rid: str, outcome: str, actor: str, *, note: str = "",
                            call_back_at: float = 0.0) -> Recipient:
        """An agent's call that did not yield answers: no answer, wrong number, call back later."""
        if outcome not in ("no_answer", "wrong_number", "call_back_later"):
            raise SurveyError("bad_outcome", "结果须为 no_answer / wrong_number / call_back_later。")
        now = time.time()
        if outcome == "call_back_later" and not (now < call_back_at < now + 30 * 86400):
            raise SurveyError("bad_call_back_at", "请填写 30 天内的回拨时间。")

        survey = await self.surveys.get(case_id)
        if survey is None or rid not in survey.recipients:
            raise SurveyError("not_found", "未找到该回访。", 404)
        await self.open_for(case_id, rid)

        def log_call(r: Recipient, _s: Survey) -> None:
            if r.state == WITHDRAWN:
                raise _unmerged_error()
            if r.state == SUPERSEDED:
                raise _reopened_error()
            if r.state == COVERED:
                raise _covered_error()
            if r.state != FOLLOWUP:
                raise SurveyError("not_waiting", "该回访不在待回访列表中。", 409)
            r.notes.append({"at": now, "by": actor, "outcome": outcome, "note": note[:MAX_COMMENT_CHARS]})
            if outcome == "call_back_later":
                r.next_at = call_back_at
                return
            r.agent_attempts += 1
            if outcome == "wrong_number" or r.agent_attempts >= self.cfg.max_agent_attempts:
                r.state = UNREACHABLE
            else:
                r.next_at = now + 3600  # try again later the same day

        try:
            rec = await self.surveys.update(case_id, rid, log_call)
        except KeyError as exc:
            raise SurveyError("not_found", "未找到该回访。", 404) from exc
        await self.store.add_event(case_id, actor=actor, action="callback_call",
                                   data={"report_id": "" if rid == MAIN else rid, "outcome": outcome,
                                         "note": note[:MAX_COMMENT_CHARS], "call_back_at": call_back_at})
        if rec.state == UNREACHABLE and rid == MAIN:
            case = await self.store.get_case(case_id)
            if case.status in SURVEYED_STATES:
                # 核实结案 without an evaluation: the case closes, the survey is recorded as unreachable.
                await self.store.update_case(case_id, lambda c: {"by": "unreachable"}, actor=actor,
                                             action="closed", target=Status.CLOSED)
        return rec

    async def worklist(self, limit: int = 200) -> list[dict[str, Any]]:
        rows = []
        for case_id, rid, since in await self.surveys.followup_list(limit):
            survey = await self.surveys.get(case_id)
            try:
                case = await self.store.get_case(case_id)
            except CaseNotFound:
                continue
            if survey is None or rid not in survey.recipients:
                continue
            if not belongs(case, rid):
                await self.withdraw(case_id, rid)
                continue
            if case.status not in RATEABLE_STATES:
                await self.close_round(case_id, rid)
                continue
            rec = survey.recipients[rid]
            rows.append({"case": case, "rid": rid, "recipient": rec, "since": since, "round": survey.round})
        return rows

    async def withdraw(self, case_id: str, rid: str) -> bool:
        """Take a recipient that is no longer the case's reporter out of the round (off the schedule and the
        worklist); True when this call did it. Answers already given stay as they were."""
        done = await self._end(case_id, rid, WITHDRAWN, "unmerged")
        if done:
            await self._uncover(case_id)
        return done

    async def _uncover(self, case_id: str) -> None:
        """Ask, in the withdrawn recipient's place, the citizen's next report still merged into the case:
        the citizen is still this case's reporter through it and has not been asked yet."""
        survey = await self.surveys.get(case_id)
        try:
            case = await self.store.get_case(case_id)
        except CaseNotFound:
            return
        if survey is None or case.status not in RATEABLE_STATES:
            return  # reopened: the next round asks every citizen anyway
        due = next_working_time(time.time(), self.cfg)
        for group in citizens(survey):
            present = [rid for rid in group if belongs(case, rid) and survey.recipients[rid].state != WITHDRAWN]
            if not present or survey.recipients[present[0]].state != COVERED:
                continue
            if await self._promote(case_id, present[0], due):
                await self.store.add_event(case_id, actor="system", action="survey_scheduled",
                                           data={"round": survey.round, "due_at": due, "report_id": present[0],
                                                 "reason": "unmerged"})

    async def _promote(self, case_id: str, rid: str, due: float) -> bool:
        changed: dict[str, bool] = {"done": False}

        def promote(r: Recipient, _s: Survey) -> None:
            if r.state == COVERED:  # (another process may have been first)
                r.state, r.next_at = SCHEDULED, due
                changed["done"] = True

        with contextlib.suppress(KeyError):
            await self.surveys.update(case_id, rid, promote)
        return changed["done"]

    async def close_round(self, case_id: str, rid: str | None = None, *, round_: int | None = None) -> list[str]:
        """End the round for its recipients still waiting (``rid``: just that one) because the case was
        reopened: off the schedule and the worklist, their link and answers refused. Returns those closed.
        ``round_``: only while the survey is still that round."""
        survey = await self.surveys.get(case_id)
        if survey is None:
            return []
        return [one for one in ([rid] if rid is not None else list(survey.recipients))
                if await self._end(case_id, one, SUPERSEDED, "reopened", round_=round_)]

    async def _end(self, case_id: str, rid: str, state: str, reason: str, *, round_: int | None = None) -> bool:
        changed: dict[str, bool] = {"done": False}

        def end(r: Recipient, s: Survey) -> None:
            if r.state in WAITING_STATES and (round_ is None or s.round == round_):
                r.state, r.question, r.next_at = state, "", 0.0
                changed["done"] = True

        try:
            await self.surveys.update(case_id, rid, end)
        except KeyError:
            return False
        if changed["done"]:
            with contextlib.suppress(CaseNotFound):
                await self.store.add_event(case_id, actor="system", action="survey_withdrawn",
                                           data={"report_id": "" if rid == MAIN else rid, "reason": reason})
        return changed["done"]

    # web link ---------------------------------------------------------------
    def link(self, case_id: str, rid: str, round_: int, now: float | None = None) -> str:
        expires = (time.time() if now is None else now) + self.cfg.link_ttl_s
        return f"{self.public_url}/survey/{make_token(self.secret, case_id, rid, round_, expires)}"

    async def pending_link(self, case_id: str) -> str:
        """The survey link for the case's own reporter while their answer is still open."""
        survey = await self.surveys.get(case_id)
        rec = survey.recipients.get(MAIN) if survey else None
        if survey is None or rec is None or rec.state in ENDED_STATES:
            return ""
        try:
            case = await self.store.get_case(case_id)
        except CaseNotFound:
            return ""
        if case.status not in RATEABLE_STATES:
            return ""  # reopened: no evaluation asked for until it is resolved again
        return self.link(case_id, MAIN, survey.round)

    def read_link(self, token: str) -> tuple[str, str, int]:
        return read_token(self.secret, token)
