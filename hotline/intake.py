"""The one intake pipeline every channel hands its messages to.

validate → normalise → classify → deduplicate → persist → enqueue (confirmation queue or dispatch).
A case is acknowledged to the citizen only after the store has written it in one atomic step.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from hotline.classifier import Classifier
from hotline.errors import ApiError
from hotline.nlp.text import nfkc, normalize, sanitize
from hotline.nlp.urgency import EMERGENCY, NORMAL, URGENT
from hotline.records import Case, InboundMessage, Location
from hotline.status import Status
from hotline.store import CaseNotFound, CreateResult, Store
from hotline.store.cases import STORE_REFUSED_MESSAGE, Claim
from hotline.store.filing import Filing

log = logging.getLogger("hotline.intake")

CHANNELS = frozenset({"web", "api", "wechat", "telegram", "voice", "open311"})
MAX_ADDRESS_CHARS = 500
MAX_NAME_CHARS = 50
MAX_ATTACHMENTS = 20
MAX_KEY_CHARS = 200
# The shortest numbers a citizen can be called back on are 5-digit service numbers (12345, 95598); a local
# landline has 7–8 digits, 10–12 with its 3–4 digit area code, a mobile 11. Fewer digits is no number, and
# the citizen would be told to check progress with "the last 4 digits" of it.
MIN_PHONE_DIGITS = 5
# Matched on the number as typed (the console checks a half-typed one with it too), so the full-width
# forms a Chinese input method produces pass; intake stores the NFKC form, which is plain ASCII.
_PHONE_DIGIT = "0-9０-９"
PHONE_PATTERN = re.compile(
    rf"^(?=(?:[^{_PHONE_DIGIT}]*[{_PHONE_DIGIT}]){{{MIN_PHONE_DIGITS}}})[+＋]?[{_PHONE_DIGIT}\s\-－()（）]{{5,24}}$")
RESUBMIT_WINDOW_S = 24 * 3600
# Rounds of writing a case under a number its keys name but whose case is not written yet (see ``submit``).
MAX_UNWRITTEN = 3
# Places within ~100 m are one place for the resubmission check: a phone's fix of the same spot wanders.
RESUBMIT_PLACE_DECIMALS = 3
_SURROGATES = re.compile("[\ud800-\udfff]")

EMERGENCY_ADVICE = (
    "如遇火灾、燃气泄漏、有人被困或人身安全受到威胁等紧急情况，请立即拨打110（报警）、119（火警）、120（急救）。"
)


class IntakeError(ApiError):
    """A message the pipeline refuses; ``code`` and ``status`` map onto the API's error body."""


def drop_surrogates(text: str) -> str:
    """``text`` without lone UTF-16 surrogates ("\\udc00" in JSON, or an emoji a client cut in half). They
    cannot be written as UTF-8, so a field holding one could be neither stored nor echoed in an answer."""
    return _SURROGATES.sub("", text) if isinstance(text, str) else text


def normalise_contact(contact: str) -> str:
    """The phone number as stored: NFKC (１３８００１３８０００ → 13800138000, （）－＋ → ()-+), blanks collapsed."""
    return " ".join(nfkc(drop_surrogates(contact)).split()) if isinstance(contact, str) else contact


def _digest(text: str) -> str:
    # surrogatepass: a header that is not UTF-8 arrives with its bytes as lone surrogates (surrogateescape).
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:32]


def content_digest(case: Case) -> str:
    """What a citizen asked for, as a request names it: a replay under the same request id must match it.
    The sender is left out: a client retrying from another address sends the same complaint."""
    loc = case.location
    content = [case.normalized_text, case.contact, case.name, case.address,
               [loc.lat, loc.lon, loc.label] if loc is not None else None, case.attachments, case.confidential]
    return _digest(json.dumps(content, ensure_ascii=False))


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
    @staticmethod
    def cleaned(msg: InboundMessage) -> InboundMessage:
        """``msg`` as the pipeline checks and stores it: no lone surrogates in any text (every door, not only
        the JSON ones, hands them in), the contact in ASCII digits."""
        loc = msg.location
        return dataclasses.replace(
            msg, text=drop_surrogates(msg.text), sender=drop_surrogates(msg.sender),
            contact=normalise_contact(msg.contact), name=drop_surrogates(msg.name),
            address=drop_surrogates(msg.address),
            location=Location(loc.lat, loc.lon, drop_surrogates(loc.label)) if loc is not None else None,
            audio_ref=drop_surrogates(msg.audio_ref), transcript=drop_surrogates(msg.transcript),
            attachments=[drop_surrogates(a) for a in msg.attachments], taken_by=drop_surrogates(msg.taken_by))

    def validate(self, msg: InboundMessage) -> tuple[str, str]:
        """The cleaned text and its normal form, or IntakeError for a message the pipeline refuses."""
        return self._validate(self.cleaned(msg))

    def _validate(self, msg: InboundMessage) -> tuple[str, str]:
        if msg.channel not in CHANNELS:
            raise IntakeError("bad_channel", f"未知的渠道：{msg.channel[:40]}")
        if not isinstance(msg.text, str):
            raise IntakeError("bad_text", "诉求内容必须是文字。")
        if len(msg.text.encode()) > self.max_text_bytes:
            raise IntakeError("too_large", f"诉求内容过长（上限 {self.max_text_bytes // 1024} KB）。", 413)
        text = sanitize(msg.text)
        norm = normalize(text)
        if len(norm) < self.min_text_chars:
            raise IntakeError("empty_text", "请描述您要反映的问题。")
        if msg.contact and not (msg.contact.isascii() and PHONE_PATTERN.match(msg.contact)):
            raise IntakeError("bad_contact", f"联系电话格式不正确（至少 {MIN_PHONE_DIGITS} 位数字）。")
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
        if msg.urgency not in ("", EMERGENCY, URGENT, NORMAL):
            raise IntakeError("bad_field", "紧急程度须为 emergency（紧急）、urgent（加急）或 normal（一般）。")
        return text, norm

    # pipeline ---------------------------------------------------------------
    async def submit(self, msg: InboundMessage) -> IntakeResult:
        msg = self.cleaned(msg)
        text, norm = self._validate(msg)
        now = time.time()
        # The case is classified before it has an id: the id is got in the duplicate lookup's round trip.
        # A retry that an idempotency key names is classified for nothing, and retries are rare.
        case = self._draft(msg, text, norm, "", now)
        request_keys = self._request_keys(msg, case)
        keys = [*request_keys, *self._resubmission_keys(msg, case)]
        claim = self.store.claim(keys, now)
        decision = await self.dedup.check(case, claim=claim) if self.dedup is not None else None
        if not claim.settled:  # no duplicate lookup ran (matching switched off, or no deduplicator)
            await self.store.settle(claim)
        case_id, earlier = claim.case_id, claim.earlier
        for _attempt in range(MAX_UNWRITTEN):
            if earlier:
                existing = await self._earlier(msg, request_keys, case_id)
                if existing is not None:
                    return existing
                # The keys name a number whose case is not written: a copy of this request took it and is
                # still writing it, or died first. This request writes the case under that number itself (a
                # copy that writes it first makes ``create_case`` answer with it): a number is spent once.
                log.info("case number not yet written", extra={"event": "case_number_unwritten", "case_id": case_id})
                case = self._draft(msg, text, norm, case_id, now)
                decision = await self.dedup.check(case) if self.dedup is not None else None
            case.id = case_id
            result = await self._create(msg, case, keys, decision)
            if result.created:
                break
            case_id, earlier = result.case_id, True
        else:
            # Keys naming several unwritten numbers at once, again and again: give up rather than guess.
            raise IntakeError("intake_busy", STORE_REFUSED_MESSAGE, 503)
        master_id = decision.case_id if decision is not None and decision.action == "merge" else ""

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

    async def _create(self, msg: InboundMessage, case: Case, keys: list[str],
                      decision: DedupDecision | None) -> CreateResult:
        """Write the new case (already merged, when the check found an open case to merge into) with its keys."""
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
        if msg.urgency:
            # The call-taker's urgency next to the rules': an emergency they lowered stays on the record.
            rules = str((case.suggestion.get("urgency") or {}).get("level") or NORMAL)
            events.append((who, "urgency_set", {"suggested": rules, "chosen": msg.urgency}))
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
        return await self.store.create_case(case, idempotency_keys=keys, events=events, filing=filing)

    def _draft(self, msg: InboundMessage, text: str, norm: str, case_id: str, now: float) -> Case:
        """The case a validated message becomes: classified, not yet deduplicated or stored."""
        suggestion = self.classifier.suggest(norm)
        urgency = suggestion.get("urgency") or {}
        # A call-taker's urgency (人工受理) decides; the rules' level stays in the suggestion.
        level = msg.urgency or urgency.get("level")
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
            classification={"urgency": msg.urgency} if msg.urgency else {},
            emergency=level == EMERGENCY,
            priority=1 if level == URGENT else 0,
            confidential=bool(msg.confidential),
        )
        return case

    async def preview(self, msg: InboundMessage) -> tuple[Case, DedupDecision | None]:
        """What submitting ``msg`` now would give: the classification and the duplicate check, with nothing
        stored. A call-taker sees it while still typing (人工受理)."""
        msg = self.cleaned(msg)
        text, norm = self._validate(msg)
        case = self._draft(msg, text, norm, "", time.time())
        decision = await self.dedup.check(case, remember=False) if self.dedup else None
        return case, decision

    async def _earlier(self, msg: InboundMessage, request_keys: list[str], case_id: str) -> IntakeResult | None:
        """The case an idempotency key named, unless the request id was used for other content; None while
        that case is not written (the number was taken with the key, see ``CLAIM_LUA``)."""
        if msg.key_reuse == "refuse" and request_keys:
            # The store says only that one of the keys was taken, not which: the bare request id taken while
            # this content's key does not name the same case is the request id used for another complaint.
            bare, bound = request_keys
            used, same = await self.store.idempotency_cases([bare, bound])
            if used is not None and same != used:
                log.info("idempotency key reused", extra={"event": "idempotency_key_reused", "case_id": str(used)})
                raise IntakeError("idempotency_key_reused",
                                  "该 Idempotency-Key 已用于另一项内容不同的诉求。提交新的诉求请使用新的 "
                                  "Idempotency-Key；重试原请求请发送与原请求相同的内容。")
        try:
            return await self._existing(case_id)
        except CaseNotFound:
            return None

    async def _existing(self, case_id: str) -> IntakeResult:
        case = await self.store.get_case(case_id)
        return IntakeResult(case=case, created=False, reply=case_number_reply(case, created=False),
                            merged_into=case.duplicate_of)

    @staticmethod
    def _request_keys(msg: InboundMessage, case: Case) -> list[str]:
        """The client's request id, bound to the content: a replay with the same content finds the case, other
        content does not. Under "refuse" the bare id comes first, to tell that it was used for other content;
        under "new" (the web form) there is none, so other content is simply a complaint of its own."""
        if not msg.idempotency_key:
            return []
        bare = f"req:{msg.channel}:{_digest(msg.idempotency_key)}"
        bound = f"{bare}:{content_digest(case)}"
        return [bound] if msg.key_reuse == "new" else [bare, bound]

    @staticmethod
    def _resubmission_keys(msg: InboundMessage, case: Case) -> list[str]:
        """The same citizen sending the same words about the same place again within a day is one case
        (exact resubmission). The place is part of it: one restaurant's fumes at two addresses are two."""
        who = case.contact or msg.sender
        if not who:
            return []
        parts = [who, case.normalized_text]
        if case.address or case.location is not None:
            # Without a place the key stays as it was before places counted, so resubmissions still match.
            loc = case.location
            parts += [case.address, "" if loc is None else
                      f"{loc.lat:.{RESUBMIT_PLACE_DECIMALS}f},{loc.lon:.{RESUBMIT_PLACE_DECIMALS}f}"]
        return [f"resub:{_digest(chr(0).join(parts))}"]
