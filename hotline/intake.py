"""The one intake pipeline every channel hands its messages to.

validate → normalise → classify → deduplicate → persist → enqueue (confirmation queue or dispatch).
A case is acknowledged to the citizen only after the store has written it in one atomic step.
"""

from __future__ import annotations

import hashlib
import logging
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from hotline.classifier import Classifier
from hotline.errors import ApiError
from hotline.nlp.text import normalize, sanitize
from hotline.records import Case, InboundMessage, Location
from hotline.status import Status
from hotline.store import Store
from hotline.store.cases import Claim
from hotline.store.filing import Filing

log = logging.getLogger("hotline.intake")

CHANNELS = frozenset({"web", "api", "wechat", "telegram", "voice", "open311"})
MAX_ADDRESS_CHARS = 500
MAX_NAME_CHARS = 50
MAX_ATTACHMENTS = 20
MAX_KEY_CHARS = 200
PHONE_PATTERN = re.compile(r"^\+?[\d\s\-()]{5,24}$")
RESUBMIT_WINDOW_S = 24 * 3600

EMERGENCY_ADVICE = (
    "如遇火灾、燃气泄漏、有人被困或人身安全受到威胁等紧急情况，请立即拨打110（报警）、119（火警）、120（急救）。"
)


class IntakeError(ApiError):
    """A message the pipeline refuses; ``code`` and ``status`` map onto the API's error body."""


@dataclass
class DedupDecision:
    action: str  # "merge" | "suggest" | "new"
    case_id: str = ""
    score: float = 0.0
    candidates: list[dict[str, Any]] = field(default_factory=list)
    # The stored record of ``case_id`` as the check read it, when it is to be merged into (None: not read).
    record: str | None = None


class Deduplicator(Protocol):
    async def check(self, case: Case, *, remember: bool = True, claim: Claim | None = None) -> DedupDecision: ...

    def mark_report(self, c: Case, master_id: str, score: float, actor: str) -> dict[str, Any]: ...

    def filing(self, case: Case) -> Filing | None: ...

    async def attach(self, report: Case, master_id: str, score: float, actor: str, *,
                     indexed: bool = True, read: str | None = None) -> Case: ...


@dataclass
class IntakeResult:
    case: Case
    created: bool
    reply: str
    merged_into: str = ""


CaseHook = Callable[[Case], Awaitable[None]]


# Doors where a citizen may leave no way to be reached; chat and phone always know who sent it.
ANONYMOUS_CHANNELS = frozenset({"web", "api", "open311"})


def case_number_reply(case: Case, *, created: bool, merged_into: str = "") -> str:
    parts: list[str] = []
    if case.emergency:
        parts.append(EMERGENCY_ADVICE)
    if not created:
        parts.append(f"您已提交过相同的诉求，案件编号：{case.id}，无需重复提交。")
    elif merged_into:
        parts.append(
            f"您反映的问题已有其他市民反映，已并入案件 {merged_into} 一并办理（您的登记编号：{case.id}）。"
            "办理结果将同样告知您。"
        )
    else:
        parts.append(f"您反映的问题已受理，案件编号：{case.id}。")
    if case.contact or case.channel not in ANONYMOUS_CHANNELS:
        parts.append("请记好案件编号，可凭编号和手机号后四位查询办理进度。")
    else:
        # The status page and the phone menu both check the phone's last four digits.
        parts.append("您未留联系电话，办理结果无法通知您，也不能在网上查询；如需了解进度，请致电热线并提供案件编号。")
    return "".join(parts)


class Intake:
    def __init__(self, store: Store, classifier: Classifier, *, max_text_bytes: int = 65536,
                 min_text_chars: int = 2, dedup: Deduplicator | None = None) -> None:
        self.store = store
        self.classifier = classifier
        self.max_text_bytes = max_text_bytes
        self.min_text_chars = min_text_chars
        self.dedup = dedup
        self.on_created: list[CaseHook] = []

    # validation -------------------------------------------------------------
    def validate(self, msg: InboundMessage) -> tuple[str, str]:
        if msg.channel not in CHANNELS:
            raise IntakeError("bad_channel", f"未知的渠道：{msg.channel[:40]}")
        if not isinstance(msg.text, str):
            raise IntakeError("bad_text", "诉求内容必须是文字。")
        if len(msg.text.encode("utf-8", "surrogatepass")) > self.max_text_bytes:
            raise IntakeError("too_large", f"诉求内容过长（上限 {self.max_text_bytes // 1024} KB）。", 413)
        text = sanitize(msg.text.encode("utf-8", "replace").decode("utf-8"))
        norm = normalize(text)
        if len(norm) < self.min_text_chars:
            raise IntakeError("empty_text", "请描述您要反映的问题。")
        if msg.contact and not PHONE_PATTERN.match(msg.contact):
            raise IntakeError("bad_contact", "联系电话格式不正确。")
        if len(msg.address) > MAX_ADDRESS_CHARS:
            raise IntakeError("bad_address", f"地址过长（上限 {MAX_ADDRESS_CHARS} 字）。")
        if len(msg.name) > MAX_NAME_CHARS:
            raise IntakeError("bad_name", f"姓名过长（上限 {MAX_NAME_CHARS} 字）。")
        if len(msg.attachments) > MAX_ATTACHMENTS:
            raise IntakeError("bad_attachments", f"附件过多（上限 {MAX_ATTACHMENTS} 个）。")
        if len(msg.idempotency_key) > MAX_KEY_CHARS:
            raise IntakeError("bad_idempotency_key", "Idempotency-Key 过长。", 400)
        if msg.location is not None and not (-90 <= msg.location.lat <= 90 and -180 <= msg.location.lon <= 180):
            raise IntakeError("bad_location", "位置坐标不正确。")
        return text, norm

    # pipeline ---------------------------------------------------------------
    async def submit(self, msg: InboundMessage) -> IntakeResult:
        text, norm = self.validate(msg)
        keys = self._idempotency_keys(msg, norm)
        now = time.time()
        # The case is classified before it has an id: the id is got in the duplicate lookup's round trip.
        # A retry that an idempotency key names is classified for nothing, and retries are rare.
        case = self._draft(msg, text, norm, "", now)
        claim = self.store.claim(keys, now)
        decision = await self.dedup.check(case, claim=claim) if self.dedup is not None else None
        if not claim.settled:  # no duplicate lookup ran (matching switched off, or no deduplicator)
            await self.store.settle(claim)
        if claim.earlier:
            return await self._existing(claim.case_id)
        case.id = claim.case_id
        if decision is not None and decision.action == "suggest":
            case.duplicate_candidates = decision.candidates
        # A complaint typed in by a call-taker during the call (人工受理) is received by that staff member.
        who = f"staff:{msg.taken_by}" if msg.taken_by else f"{msg.channel}:citizen"
        taken = {"taken_by": msg.taken_by} if msg.taken_by else {}
        events = [
            (who, "received", {"channel": msg.channel, "received_at": msg.received_at, **taken}),
            ("system", "classified", {"model": case.suggestion.get("model", ""),
                                      "needs_confirmation": case.needs_confirmation}),
        ]
        # ``check`` has just read the best candidate's status: it is open, so it is no one's linked report and
        # the report joins it directly. If it closes or is merged in the meantime, ``attach`` refuses and the
        # report becomes a case of its own.
        master_id = decision.case_id if decision is not None and decision.action == "merge" else ""
        if master_id and self.dedup is not None and decision is not None:
            # A repeat is stored already merged: one write for the report, then one for the open case.
            data = self.dedup.mark_report(case, master_id, decision.score, "system")
            case.status = Status.MERGED
            events.append(("system", "merged", {"from": str(Status.CLASSIFIED), "to": str(Status.MERGED), **data}))
        # A new open case goes into the duplicate index in the same write (one round trip, not two).
        filing = self.dedup.filing(case) if self.dedup is not None and not master_id else None
        result = await self.store.create_case(case, idempotency_keys=keys, events=events, filing=filing)
        if not result.created:
            return await self._existing(result.case_id)

        merged_into = ""
        if master_id and self.dedup is not None and decision is not None:
            try:
                case = await self.dedup.attach(case, master_id, decision.score, "system", indexed=False,
                                               read=decision.record)
                merged_into = master_id
            except ApiError as exc:
                # The open case closed between the check and the merge: the report was put back as its own
                # case, and that is what the citizen is told.
                log.info("merge refused", extra={"event": "merge_refused", "case_id": case.id, "code": exc.code})
                case = await self.store.get_case(case.id)
        log.info("case created", extra={"event": "case_created", "case_id": case.id, "channel": case.channel,
                                        "merged_into": merged_into})
        for hook in self.on_created:
            try:
                await hook(case)
            except Exception:
                # A hook (live console push, auto-dispatch) failing must not undo an acknowledged case.
                log.exception("case hook failed", extra={"event": "hook_failed", "case_id": case.id})
        return IntakeResult(case=case, created=True,
                            reply=case_number_reply(case, created=True, merged_into=merged_into),
                            merged_into=merged_into)

    def _draft(self, msg: InboundMessage, text: str, norm: str, case_id: str, now: float) -> Case:
        """The case a validated message becomes: classified, not yet deduplicated or stored."""
        suggestion = self.classifier.suggest(norm)
        urgency = suggestion.get("urgency") or {}
        case = Case(
            id=case_id,
            channel=msg.channel,
            sender=msg.sender[:200],
            status=Status.CLASSIFIED,
            created_at=now,
            updated_at=now,
            text=text,
            normalized_text=norm,
            contact=sanitize(msg.contact),
            name=sanitize(msg.name),
            address=normalize(msg.address),
            location=Location(msg.location.lat, msg.location.lon, msg.location.label[:200])
            if msg.location else None,
            audio_ref=msg.audio_ref,
            transcript=msg.transcript,
            attachments=list(msg.attachments),
            suggestion=suggestion,
            needs_confirmation=bool(suggestion.get("needs_confirmation", True)),
            emergency=urgency.get("level") == "emergency",
            priority=1 if urgency.get("level") == "urgent" else 0,
            confidential=bool(msg.confidential),
        )
        return case

    async def preview(self, msg: InboundMessage) -> tuple[Case, DedupDecision | None]:
        """What submitting ``msg`` now would give: the classification and the duplicate check, with nothing
        stored. A call-taker sees it while still typing (人工受理)."""
        text, norm = self.validate(msg)
        case = self._draft(msg, text, norm, "", time.time())
        decision = await self.dedup.check(case, remember=False) if self.dedup else None
        return case, decision

    async def _existing(self, case_id: str) -> IntakeResult:
        case = await self.store.get_case(case_id)
        return IntakeResult(case=case, created=False, reply=case_number_reply(case, created=False),
                            merged_into=case.duplicate_of)

    @staticmethod
    def _idempotency_keys(msg: InboundMessage, norm: str) -> list[str]:
        keys = []
        if msg.idempotency_key:
            keys.append(f"req:{msg.channel}:{hashlib.sha256(msg.idempotency_key.encode()).hexdigest()[:32]}")
        who = msg.contact or msg.sender
        if who:
            # The same citizen sending the same words again within a day is one case (exact resubmission).
            digest = hashlib.sha256(f"{who}\x00{norm}".encode()).hexdigest()[:32]
            keys.append(f"resub:{digest}")
        return keys
