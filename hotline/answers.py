"""Answers for consultations (智能问答): suggest past official answers, send one, close as 直接答复.

The serving process keeps an in-memory ``AnswerIndex`` of the knowledge base, built at start-up and
updated when the KB's version counter moves (changes made by this or any other process). Every match is
checked against the stored entry before it is shown, so a retired entry is never shown even in the
moment before the index catches up, and an edited answer is shown as edited.

Where answers go out:
- web and JSON API: ``offer_for`` right after intake answers a confident consultation at once;
- chat (WeChat, Telegram): an intake hook sends the answer with 是/否 options (kind ``answer``); the
  chat channels route the citizen's reply back to ``handle_reply``;
- IVR: ``ivr_offer`` finds the answer; the flow plays fixed prompts (config/ivr.toml ``answer_*``) and the
  answer itself goes out by text (``send`` through ``[answers].text_channel`` to the caller's number) or is
  read by a call-taker — long answers are never read by TTS;
- call-taker console: ``suggest_case`` (top 3) and ``send``.
A 否 moves the case from answered back to classified: it waits in the confirmation queue as a normal case.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import time
from dataclasses import dataclass
from typing import Any

from hotline.errors import ApiError
from hotline.nlp.answers import (
    ACTIVE,
    RETIRED,
    AnswerIndex,
    Decision,
    KBEntry,
    Match,
    RetrievalConfig,
    decide,
    is_consultation,
)
from hotline.notify import Notification, Notifications, Reply
from hotline.records import Case
from hotline.status import IllegalTransition, Status
from hotline.store import CaseNotFound, Store
from hotline.store.kb import EntryNotFound, KnowledgeBase

log = logging.getLogger("hotline.answers")

KIND = "answer"
YES, NO = "yes", "no"
OPTIONS: list[tuple[str, str]] = [(YES, "是"), (NO, "否")]
ASK_RESOLVED = "是否解决了您的问题？"
CHAT_CHANNELS = frozenset({"wechat", "telegram"})
_YES_WORDS = {YES, "是", "1", "y", "已解决", "解决了"}
_NO_WORDS = {NO, "否", "2", "n", "没有", "未解决", "没解决"}
# More changes than this since the last look (or than this share of the index) and a full rebuild is cheaper.
MAX_INCREMENTAL = 5000
REBUILD_SHARE = 0.2
SMALL_INDEX = 2000


class _AlreadyAnswered(Exception):
    """Raised inside the read-modify-write: the citizen's 是/否 is already recorded; nothing is written."""


class AnswerError(ApiError):
    """A request the answer service refuses; the app's error middleware maps it onto the HTTP error body."""


@dataclass
class AnswerOffer:
    """An answer given to a citizen, as the web page, the API and the chat message show it."""

    case_id: str
    entry_id: str
    answer: str
    department: str
    date: str
    score: float
    token: str  # lets the citizen (and only them) say 是/否 on the web and the API
    feedback: str = ""

    def public(self) -> dict[str, Any]:
        return {"case_id": self.case_id, "entry_id": self.entry_id, "answer": self.answer,
                "department": self.department, "date": self.date, "score": round(self.score, 4),
                "question": ASK_RESOLVED, "options": [{"value": v, "label": lb} for v, lb in OPTIONS],
                "feedback_token": self.token, "feedback": self.feedback}


@dataclass
class IvrOffer:
    case_id: str
    entry_id: str
    department: str
    date: str
    text: str  # the full answer with its source, for a chat message or a call-taker to read


def source_line(department: str, date: str) -> str:
    who = department or "相关部门"
    return f"（来源：{who}，{date}答复）" if date else f"（来源：{who}）"


def answer_text(answer: dict[str, Any]) -> str:
    """The message a citizen gets: the answer, its source department and date, and the question."""
    return (f"关于您咨询的问题，以下是政府部门此前的正式答复：\n{answer.get('answer', '')}\n"
            f"{source_line(answer.get('department', ''), answer.get('date', ''))}\n{ASK_RESOLVED}")


class AnswerService:
    def __init__(self, store: Store, notifications: Notifications, cfg: RetrievalConfig, secret: bytes) -> None:
        cfg.check()
        self.store = store
        self.kb = KnowledgeBase(store)
        self.notifications = notifications
        self.cfg = cfg
        self._secret = secret
        self.index = AnswerIndex.build([])
        self.version = -1
        self._log_id = "0-0"
        self._lock = asyncio.Lock()
        self.ready = asyncio.Event()  # set once the first full build is done

    # index upkeep ---------------------------------------------------------
    async def load(self) -> int:
        """Build the index from every stored entry (start-up, or after many changes)."""
        async with self._lock:
            return await self._load()

    async def _load(self) -> int:
        last = await self.kb.last_change()
        version, records = await self.kb.snapshot()
        self.index = await asyncio.to_thread(AnswerIndex.build, [r.to_entry() for r in records])
        self.version, self._log_id = version, last
        log.info("answer index built", extra={"event": "kb_index_built", "entries": len(self.index),
                                              "version": version})
        return len(self.index)

    async def refresh(self) -> bool:
        """Catch up with changes to the KB made by any process; True when the index changed."""
        async with self._lock:
            version = await self.kb.version()
            if version == self.version:
                return False
            rows = await self.kb.changes_since(self._log_id, MAX_INCREMENTAL + 1)
            # A small index is rebuilt whole (it takes milliseconds, and an index grown from a few entries
            # would keep their tiny vocabulary); a large one is updated in place until many entries changed.
            if (len(rows) > MAX_INCREMENTAL or len(self.index) < SMALL_INDEX
                    or self.index.stale > max(1000, REBUILD_SHARE * len(self.index))):
                await self._load()
                return True
            ids = list(dict.fromkeys(entry for _log_id, entry in rows))
            records = await self.kb.get_many(ids)
            changed = [records[i].to_entry() if i in records else KBEntry(i, "", "", status=RETIRED) for i in ids]
            if changed:
                self.index = await asyncio.to_thread(self.index.updated, changed)
            if rows:
                self._log_id = rows[-1][0]
            self.version = version
            return bool(changed)

    async def refresh_loop(self, every_s: float) -> None:
        task = asyncio.current_task()
        while True:
            await asyncio.sleep(every_s)
            try:
                await self.refresh()
            except asyncio.CancelledError:
                raise
            except Exception:
                # Redis away for a moment: keep serving the index we have and try again.
                log.exception("kb refresh failed", extra={"event": "kb_refresh_failed"})
            # A cancellation swallowed inside a client library must still stop the loop at shutdown.
            if task is not None and task.cancelling():
                raise asyncio.CancelledError

    # retrieval ------------------------------------------------------------
    async def suggest_text(self, text: str, *, now: float | None = None) -> Decision:
        """Suggestions for a question, checked against the stored entries (retired ones dropped)."""
        if not self.index.entries:
            # No knowledge base yet: nothing to search, and no worker thread to wait for.
            return decide([], self.cfg)
        k = self.cfg.suggestions * 2  # room for candidates dropped by the check below
        matches = await asyncio.to_thread(self.index.search, text, cfg=self.cfg, now=now, k=k)
        return decide(await self._verified(matches), self.cfg)

    async def suggest_case(self, case: Case, *, now: float | None = None) -> Decision:
        return await self.suggest_text(case.normalized_text or case.text, now=now)

    async def _verified(self, matches: list[Match]) -> list[Match]:
        if not matches:
            return []
        current = await self.kb.get_many([m.entry.id for m in matches])
        out = []
        for m in matches:
            rec = current.get(m.entry.id)
            if rec is None or rec.status != ACTIVE:
                self.index.retire(m.entry.id)  # the index has not caught up yet: stop it showing again
                continue
            out.append(Match(entry=rec.to_entry(), similarity=m.similarity, age_days=m.age_days,
                             age_factor=m.age_factor, score=m.score))
        return out

    # answering ------------------------------------------------------------
    def token(self, case_id: str) -> str:
        return hmac.new(self._secret, f"answer\x00{case_id}".encode(), hashlib.sha256).hexdigest()[:32]

    def check_token(self, case_id: str, token: str) -> bool:
        # compare_digest refuses str holding non-ASCII characters (TypeError): such a token is wrong anyway.
        return bool(token) and str(token).isascii() and hmac.compare_digest(self.token(case_id), str(token))

    def offer(self, case: Case) -> AnswerOffer | None:
        a = case.answer or {}
        if not a.get("entry_id"):
            return None
        return AnswerOffer(case_id=case.id, entry_id=a["entry_id"], answer=a.get("answer", ""),
                           department=a.get("department", ""), date=a.get("date", ""),
                           score=float(a.get("score") or 0.0), token=self.token(case.id),
                           feedback=a.get("feedback", ""))

    async def offer_for(self, case: Case, *, created: bool) -> AnswerOffer | None:
        """Web and API intake: answer a new confident consultation at once; a repeated submission of an
        answered case shows the answer it got."""
        if created:
            return await self.answer_at_intake(case)
        if case.status == Status.ANSWERED:
            return self.offer(case)
        return None

    async def answer_at_intake(self, case: Case) -> AnswerOffer | None:
        """Answer a consultation when the best entry clears the citizen threshold; else None (normal case)."""
        if case.status != Status.CLASSIFIED or case.emergency or case.duplicate_of:
            return None
        if not is_consultation(case.normalized_text or case.text, case.suggestion):
            return None
        decision = await self.suggest_case(case)
        if decision.answer is None:
            return None
        try:
            answered = await self._record(case.id, decision.answer, actor="system", mode="auto")
        except (IllegalTransition, CaseNotFound):
            return None  # a call-taker or a hook got to the case first
        return self.offer(answered)

    async def on_case_created(self, case: Case) -> None:
        """Intake hook for chat channels: a confident answer goes out at once with 是/否."""
        if case.channel not in CHAT_CHANNELS:
            return
        offer = await self.answer_at_intake(case)
        if offer is None:
            return
        answered = await self.store.get_case(case.id)
        await self.notifications.notify_case(answered, KIND, answer_text(answered.answer), options=OPTIONS,
                                             include_reports=False, meta={"entry_id": offer.entry_id})

    async def send(self, case_id: str, entry_id: str, *, actor: str, channel: str = "",
                   recipient: str = "") -> tuple[Case, bool]:
        """A call-taker sends an entry's answer and closes the contact as 直接答复.

        With ``channel`` and ``recipient`` the text goes to that chat account (a caller who asked for the
        answer by text); otherwise to the citizen on the case's own channel. Returns (case, delivered).
        """
        try:
            rec = await self.kb.get(entry_id)
        except EntryNotFound as exc:
            raise AnswerError("entry_not_found", "知识库中没有该条目。", 404) from exc
        if rec.status != ACTIVE:
            raise AnswerError("entry_retired", "该条目已停用，不能再发送。", 409)
        case = await self.store.get_case(case_id)
        score = 0.0
        for m in (await self.suggest_case(case)).suggestions:
            if m.entry.id == entry_id:
                score = m.score
        match = Match(entry=rec.to_entry(), similarity=score, age_days=None, age_factor=1.0, score=score)
        try:
            case = await self._record(case_id, match, actor=actor, mode="staff")
        except IllegalTransition as exc:
            raise AnswerError("illegal_transition", f"案件当前状态（{case.status}）不能直接答复。", 409) from exc
        text = answer_text(case.answer)
        if channel and recipient:
            n = Notification(case.id, KIND, text, channel, recipient, options=list(OPTIONS),
                             meta={"entry_id": entry_id})
            delivered = await self.notifications.send(n)
        else:
            results = await self.notifications.notify_case(case, KIND, text, options=OPTIONS, include_reports=False,
                                                           meta={"entry_id": entry_id})
            delivered = any(ok for _n, ok in results)
        return case, delivered

    async def keep_for_reading(self, case_id: str, entry_id: str, *, actor: str) -> Case:
        """A caller asked for the answer by text and no text channel reaches their phone: the contact is
        answered (直接答复) and the answer waits on the web status page (case number + last four digits)."""
        rec = await self.kb.get(entry_id)
        if rec.status != ACTIVE:
            raise AnswerError("entry_retired", "该条目已停用，不能再发送。", 409)
        match = Match(entry=rec.to_entry(), similarity=0.0, age_days=None, age_factor=1.0, score=0.0)
        return await self._record(case_id, match, actor=actor, mode="web_status")

    async def _record(self, case_id: str, match: Match, *, actor: str, mode: str) -> Case:
        e = match.entry
        now = time.time()

        def mutate(case: Case) -> dict[str, Any]:
            case.answer = {"entry_id": e.id, "question": e.question, "answer": e.answer,
                           "department": e.department, "date": e.date, "score": round(match.score, 4),
                           "mode": mode, "answered_at": now, "answered_by": actor, "feedback": ""}
            return {"entry_id": e.id, "department": e.department, "date": e.date,
                    "score": round(match.score, 4), "mode": mode}

        return await self.store.update_case(case_id, mutate, actor=actor, action="answered", target=Status.ANSWERED)

    # 是否解决了您的问题? ------------------------------------------------------
    async def feedback(self, case_id: str, resolved: bool, *, actor: str) -> tuple[Case, str]:
        """是 keeps the case answered; 否 turns it into a normal case. Repeating the same answer is harmless."""
        case = await self.store.get_case(case_id)
        if not (case.answer or {}).get("entry_id"):
            raise AnswerError("not_answered", "该案件没有直接答复。", 409)
        if case.answer.get("feedback"):
            return case, self._feedback_message(case)
        now = time.time()

        def mark(value: str) -> Any:
            def mutate(c: Case) -> dict[str, Any]:
                # Checked again on the version being written over: a 是 and a 否 sent together both passed
                # the check above, and the second must not overwrite the first (否 moved the case on).
                if (c.answer or {}).get("feedback") or not (c.answer or {}).get("entry_id"):
                    raise _AlreadyAnswered()
                c.answer = {**c.answer, "feedback": value, "feedback_at": now, "feedback_by": actor}
                if value == "not_resolved":
                    c.needs_confirmation = True
                return {"entry_id": c.answer.get("entry_id", "")}
            return mutate

        try:
            if resolved:
                case = await self.store.update_case(case_id, mark("resolved"), actor=actor, action="answer_resolved")
            else:
                case = await self.store.update_case(case_id, mark("not_resolved"), actor=actor,
                                                    action="answer_not_resolved", target=Status.CLASSIFIED)
        except (_AlreadyAnswered, IllegalTransition):
            # Another answer won the race (or the case moved on): reply as to a repeat.
            case = await self.store.get_case(case_id)
        return case, self._feedback_message(case)

    @staticmethod
    def _feedback_message(case: Case) -> str:
        if (case.answer or {}).get("feedback") == "not_resolved" or case.status != Status.ANSWERED:
            return (f"已为您转为人工办理，案件编号：{case.id}。我们会尽快处理，"
                    "可凭案件编号和手机号后四位查询办理进度。")
        return "感谢您的反馈！如还有其他问题，欢迎随时联系我们。"

    async def handle_reply(self, reply: Reply) -> str:
        """是/否 from a chat channel (registered for notifications of kind ``answer``)."""
        value = (reply.value or "").strip().lower()
        if value not in _YES_WORDS | _NO_WORDS:
            return "请回复“是”或“否”。"
        try:
            case = await self.store.get_case(reply.case_id)
        except CaseNotFound:
            return "未找到需要您回复的答复。"
        # Only the citizen the answer went to may answer for the case.
        if reply.sender != case.sender or not (case.answer or {}).get("entry_id"):
            return "未找到需要您回复的答复。"
        _case, text = await self.feedback(case.id, value in _YES_WORDS, actor=f"{reply.channel}:citizen")
        return text

    # IVR --------------------------------------------------------------------
    async def ivr_offer(self, case: Case) -> IvrOffer | None:
        """For a caller's consultation: the answer to offer, or None.

        The IVR flow offers it with fixed prompts, then calls ``send(case_id, entry_id, channel=…,
        recipient=<caller number>)`` through ``[answers].text_channel`` or queues the caller for a call-taker,
        who sees the same suggestion in the console.
        """
        if not is_consultation(case.normalized_text or case.text, case.suggestion):
            return None
        decision = await self.suggest_case(case)
        if decision.answer is None:
            return None
        e = decision.answer.entry
        return IvrOffer(case_id=case.id, entry_id=e.id, department=e.department, date=e.date,
                        text=answer_text({"answer": e.answer, "department": e.department, "date": e.date}))


async def intake_offer(service: AnswerService | None, case: Case, *, created: bool) -> AnswerOffer | None:
    """For the web and API doors: the answer to show, or None. Never fails the intake: the case is
    already stored and acknowledged, so a failure here only means no instant answer."""
    if service is None:
        return None
    try:
        return await service.offer_for(case, created=created)
    except asyncio.CancelledError:
        raise
    except Exception:
        log.exception("instant answer failed", extra={"event": "answer_failed", "case_id": case.id})
        return None
