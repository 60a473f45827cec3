"""The dispatcher: confirm → dispatch a case, re-dispatch (重办), and apply the backend's status events.

A dispatch round is three steps, each idempotent, so a crash between them is finished later by
``recover`` instead of losing or doubling the order:
1. the case moves to CONFIRMED with the classification, deadline and the round's order id;
2. the work order is enqueued in the outbox under that order id (a second enqueue adds nothing) and the case
   joins the deadline index (督办, polling);
3. the case moves to DISPATCHED and the citizen is told.
Whoever finishes a round (the confirming request, ``recover``, an early status event) does steps 2 and 3
both, so a DISPATCHED case is always in the deadline index; ``recover`` also puts back any that is not.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

from hotline.attachments import MediaLinks
from hotline.dispatch.deadlines import BY_CALL_TAKER, BY_RULES, WorkCalendar, limit_for, urgency_choice
from hotline.dispatch.tables import DispatchTables, Taxonomy
from hotline.dispatch.workorder import build_work_order, order_key
from hotline.errors import ApiError
from hotline.nlp.text import normalize
from hotline.notify import Notifications
from hotline.records import Case
from hotline.status import LABELS_ZH, IllegalTransition, Status, check_move
from hotline.store import CaseNotFound, Store
from hotline.store.extensions import ExtensionIndex
from hotline.store.outbox import DeadLetter, Outbox

log = logging.getLogger("hotline.dispatch")

S = Status
EVENT_TYPES = ("accepted", "in_progress", "resolved", "returned", "extension_requested")
EVENT_IDS_KEPT = 200
MAX_LABEL_CHARS = 100
MAX_CO_DEPARTMENTS = 10
URGENCY_LEVELS = ("emergency", "urgent", "normal")
# Status of a case at the backend's progress, for telling stale events from real moves.
PROGRESS = {S.DISPATCHED: 1, S.IN_PROGRESS: 2, S.RESOLVED: 3, S.CLOSED: 4}
BACKENDS = ("stream", "open311", "webhook")
MAX_SEQ = 2**63 - 1  # a signed 64-bit counter: what backends' databases hold
# How long one event may wait for its case to leave CONFIRMED (another process finishing a dispatch) before
# the backend is told to retry (503 + Retry-After): a bounded wait, never a 409 that reads as "drop it".
EVENT_BUSY_WAIT_S = 5.0
EVENT_RETRY_AFTER_S = 2
# Cases under supervision: in the deadline index, overdue once their deadline passes (CONFIRMED only for the
# moment between the two steps of a dispatch).
SUPERVISED_STATES = frozenset({S.CONFIRMED, S.DISPATCHED, S.IN_PROGRESS})
# The overdue sweep reads its worklist this many cases at a time, at most FLAG_MAX_PAGES pages per sweep (the
# next sweep goes on where it stopped).
FLAG_PAGE = 200
FLAG_MAX_PAGES = 50
# Dispatched cases the sweep checks against the deadline index per status and sweep, going round the index.
REPAIR_WINDOW = 500


_STREAM_ID = re.compile(r"[0-9]{1,20}-[0-9]{1,20}")  # [0-9]: \d also matches other scripts' digits


def is_stream_id(value: str) -> bool:
    """A complete Redis stream entry id: two unsigned 64-bit numbers (Redis refuses larger ones)."""
    return bool(_STREAM_ID.fullmatch(value)) and all(int(part) < 2**64 for part in value.split("-"))


class DispatchError(ApiError):
    """A dispatch request or status event refused with a clear 4xx."""


class CaseBusy(DispatchError):
    """The event could not be applied in time because the case kept changing; nothing was written, retry."""

    def __init__(self, case_id: str) -> None:
        super().__init__("busy", f"案件 {case_id} 正在被同时修改，事件未处理，请稍后重试。", 503)
        self.retry_after_s = EVENT_RETRY_AFTER_S


@dataclass(frozen=True)
class DispatchConfig:
    backend: str = "stream"
    url: str = ""
    api_key: str = ""
    secret: str = ""
    auto_confidence: float = 0.0
    max_attempts: int = 8
    backoff_base_s: float = 2.0
    backoff_max_s: float = 600.0
    request_timeout_s: float = 10.0
    claim_idle_s: float = 60.0
    concurrency: int = 16
    poll_interval_s: float = 0.0
    event_max_age_s: float = 300.0
    sweep_interval_s: float = 30.0
    tables_file: str = "config/dispatch.toml"
    taxonomy_file: str = "config/taxonomy.json"
    open311_api_keys: tuple[str, ...] = ()

    @classmethod
    def from_section(cls, section: dict[str, Any]) -> DispatchConfig:
        from hotline.settings import SettingsError

        values = dict(section)
        values["open311_api_keys"] = tuple(values.get("open311_api_keys") or ())
        cfg = cls(**{k: v for k, v in values.items() if k in cls.__dataclass_fields__})
        if cfg.backend not in BACKENDS:
            raise SettingsError(f"dispatch.backend: expected one of {', '.join(BACKENDS)}, got {cfg.backend!r}")
        if cfg.backend in ("open311", "webhook") and not cfg.url:
            raise SettingsError(f"dispatch.url: required for backend {cfg.backend!r}")
        if cfg.backend == "webhook" and not cfg.secret:
            raise SettingsError("dispatch.secret: required to sign webhook orders")
        if cfg.max_attempts < 1 or cfg.concurrency < 1:
            raise SettingsError("dispatch.max_attempts and dispatch.concurrency must be at least 1")
        if not 0.0 <= cfg.auto_confidence <= 1.0:
            raise SettingsError("dispatch.auto_confidence: expected 0..1 (0 = off)")
        if cfg.backoff_base_s <= 0 or cfg.backoff_max_s < cfg.backoff_base_s:
            raise SettingsError("dispatch.backoff_base_s must be > 0 and ≤ dispatch.backoff_max_s")
        return cfg


@dataclass
class StatusEvent:
    """One status change reported by the backend (pushed to the events endpoint or polled)."""

    event_id: str
    case_id: str
    type: str  # accepted | in_progress | resolved | returned | extension_requested
    order_id: str = ""
    seq: int | None = None
    occurred_at: float = 0.0
    reply: str = ""  # resolved: what the department tells the citizen
    reason: str = ""  # returned (退单) / extension: why
    department: str = ""
    extension_hours: float = 0.0
    ref: str = ""  # the backend's own id of the order
    source: str = "backend"


@dataclass
class EventOutcome:
    result: str  # applied | ignored | duplicate
    case: Case
    note: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {"result": self.result, "case_id": self.case.id, "status": str(self.case.status), "note": self.note}


class _Duplicate(Exception):
    pass


class _Settled(Exception):
    """Raised inside the read-modify-write when the event changes nothing (duplicate or ignored)."""

    def __init__(self, decision: _Decision, case: Case) -> None:
        super().__init__(decision.kind)
        self.decision = decision
        self.case = case


class _NotYetDispatched(Exception):
    """The case is between CONFIRMED and DISPATCHED: finish step 3 of the dispatch, then decide."""


@dataclass
class _Decision:
    kind: str  # apply | ignore | duplicate
    target: Status | None = None
    note: str = ""


def _label(value: Any, name: str, *, required: bool = False) -> str:
    if value is None or value == "":
        if required:
            raise DispatchError("missing_field", f"缺少字段 {name}。")
        return ""
    if not isinstance(value, str):
        raise DispatchError("bad_field", f"字段 {name} 必须是字符串。")
    value = normalize(value)
    if len(value) > MAX_LABEL_CHARS:
        raise DispatchError("bad_field", f"字段 {name} 过长（上限 {MAX_LABEL_CHARS} 字）。")
    if required and not value:
        raise DispatchError("missing_field", f"缺少字段 {name}。")
    return value


def validate_classification(data: Any) -> dict[str, Any]:
    """The call-taker's decision, checked: category required; the rest optional with table fallbacks."""
    if not isinstance(data, dict):
        raise DispatchError("bad_classification", "classification 须为对象。")
    co = data.get("co_departments") or []
    if not isinstance(co, list) or len(co) > MAX_CO_DEPARTMENTS:
        raise DispatchError("bad_field", f"co_departments 须为不超过 {MAX_CO_DEPARTMENTS} 个单位名称的数组。")
    urgency = data.get("urgency") or ""
    if urgency and urgency not in URGENCY_LEVELS:
        raise DispatchError("bad_field", "urgency 须为 emergency / urgent / normal。")
    address = data.get("address")
    if address is not None and (not isinstance(address, str) or len(address) > 500):
        raise DispatchError("bad_field", "address 须为不超过 500 字的字符串。")
    path = data.get("category_path") or []
    if not isinstance(path, list) or len(path) > 5:
        raise DispatchError("bad_field", "category_path 须为不超过 5 级的类别名称数组。")
    return {
        "category": _label(data.get("category"), "category", required=True),
        "category_path": [p for p in (_label(p, "category_path") for p in path) if p],
        "department": _label(data.get("department"), "department"),
        "co_departments": [c for c in dict.fromkeys(_label(c, "co_departments") for c in co) if c],
        "street": _label(data.get("street"), "street"),
        "type": _label(data.get("type"), "type"),
        "urgency": urgency,
        "address": address,
    }


def _top(suggestion: dict[str, Any], head: str) -> tuple[str, float]:
    top = (suggestion.get(head) or {}).get("top") or []
    if not top or not isinstance(top[0], dict):
        return "", 0.0
    return str(top[0].get("label") or ""), float(top[0].get("p") or 0.0)


def _conflict(case: Case, what: str) -> DispatchError:
    return DispatchError("invalid_transition",
                         f"案件 {case.id} 当前状态为“{LABELS_ZH[case.status]}”（{case.status}），不能{what}。", 409)


class Dispatcher:
    def __init__(self, store: Store, outbox: Outbox, notifications: Notifications, tables: DispatchTables,
                 taxonomy: Taxonomy, cfg: DispatchConfig, *, timezone: str = "Asia/Shanghai",
                 media: MediaLinks | None = None) -> None:
        self.store = store
        self.outbox = outbox
        self.notifications = notifications
        self.tables = tables
        self.taxonomy = taxonomy
        self.cfg = cfg
        self.tz = ZoneInfo(timezone)
        self.calendar = WorkCalendar.from_tables(tables, timezone)
        self.media = media
        self.extension_index = ExtensionIndex(store)
        self._unflagged_filled = False

    def work_order(self, case: Case) -> dict[str, Any]:
        media = self.media
        if media is None:
            return build_work_order(case, self.tz)
        now = time.time()
        return build_work_order(case, self.tz, lambda ref: media.link(ref, now))

    # confirm and dispatch -------------------------------------------------
    async def confirm(self, case_id: str, classification: dict[str, Any], actor: str) -> Case:
        """A call-taker's confirmation (or the auto policy): CLASSIFIED/RETURNED/REOPENED → CONFIRMED →
        DISPATCHED with the work order in the outbox."""
        cls = validate_classification(classification)
        now = time.time()

        def to_confirmed(case: Case) -> dict[str, Any]:
            if cls["address"] is not None:
                case.address = normalize(cls["address"])
            resolved = self._resolve(case, cls)
            case.classification = {**resolved, "confirmed_by": actor, "confirmed_at": now}
            # The case is handled as urgent as the call-taker decided: an emergency the rules flagged and the
            # call-taker lowered is no longer one (the rules' finding stays in the suggestion and the trail).
            case.emergency = resolved["urgency"] == "emergency"
            return self._open_round(case, now, redo=False, reason="")

        case = await self._move(case_id, to_confirmed, actor=actor, action="confirmed", target=S.CONFIRMED,
                                what="确认派遣")
        return await self._send(case, actor)

    async def redispatch(self, case_id: str, reason: str, actor: str) -> Case:
        """重办: the citizen was not satisfied; the same departments get a new, flagged order."""
        reason = (reason or "").strip()[:1000] or "市民反映问题未解决"
        now = time.time()

        def to_confirmed(case: Case) -> dict[str, Any]:
            if not case.classification.get("department"):
                raise DispatchError("no_previous_dispatch", f"案件 {case.id} 没有承办单位记录，请接线员重新确认派遣。",
                                    409)
            case.classification = {**case.classification, "confirmed_by": actor, "confirmed_at": now}
            return self._open_round(case, now, redo=True, reason=reason)

        try:
            before = await self.store.get_case(case_id)
        except CaseNotFound as exc:
            raise DispatchError("not_found", f"案件 {case_id} 不存在。", 404) from exc
        if before.status != S.REOPENED:
            raise _conflict(before, "重办派遣")
        round_before = before.dispatch.get("round")

        def guarded(case: Case) -> dict[str, Any]:
            # The status was REOPENED when read; the round unchanged means no other dispatch came between.
            if case.dispatch.get("round") != round_before:
                raise _conflict(case, "重办派遣")
            return to_confirmed(case)

        case = await self._move(case_id, guarded, actor=actor, action="confirmed", target=S.CONFIRMED,
                                what="重办派遣")
        return await self._send(case, actor)

    def _resolve(self, case: Case, cls: dict[str, Any]) -> dict[str, Any]:
        """Fill what the call-taker left empty from the tables: department, co-handling, street (属地)."""
        path = cls["category_path"] or self.taxonomy.path_of(cls["category"])
        lead = cls["department"] or self.tables.lookup(self.tables.departments, path) or ""
        if not lead:
            raise DispatchError("missing_department", f"类别“{cls['category']}”没有默认承办单位，请选择主办单位。")
        co = cls["co_departments"] or list(self.tables.lookup(self.tables.co_handling, path) or [])
        co = [c for c in co if c != lead]
        street = cls["street"] or self.tables.street_for(case.address, case.location.label if case.location else "",
                                                         case.text)
        urgency, chosen = urgency_choice(case, cls)
        out = {"category": cls["category"], "category_path": path, "department": lead, "co_departments": co,
               "street": street, "type": cls["type"], "urgency": urgency,
               "urgency_by": BY_CALL_TAKER if chosen else BY_RULES}
        return out

    def _open_round(self, case: Case, now: float, *, redo: bool, reason: str) -> dict[str, Any]:
        round_ = int(case.dispatch.get("round") or 0) + 1
        limit = limit_for(self.tables, case, case.classification, case.classification.get("category_path") or [])
        case.deadline_at = self.calendar.deadline(now, limit)
        key = order_key(case.id, round_)
        case.dispatch = {
            **case.dispatch, "round": round_, "order_id": key, "state": "queued", "backend": self.cfg.backend,
            "time_limit": limit.name, "redo": redo, "redo_reason": reason, "confirmed_at": now, "ref": "",
            "accepted_at": 0.0, "reply": "" if redo else case.dispatch.get("reply", ""), "overdue_flagged": False,
            "last_seq": -1,
        }
        cls = case.classification
        return {"order_id": key, "round": round_, "category": cls.get("category"), "department": cls.get("department"),
                "co_departments": cls.get("co_departments"), "street": cls.get("street"),
                "urgency": cls.get("urgency"), "time_limit": limit.name,
                "deadline_at": case.deadline_at, "redo": redo, "reason": reason}

    async def _send(self, case: Case, actor: str) -> Case:
        case, moved = await self._finish_round(case, actor)
        if moved:
            await self._notify(case, "dispatched", self.dispatched_text(case))
        return case

    async def _finish_round(self, case: Case, actor: str) -> tuple[Case, bool]:
        """Steps 2 and 3 of the round ``case`` (as read in CONFIRMED) opened: the order in the outbox and the
        case in the deadline index (both no-ops when done already), then DISPATCHED. (case, True when this call
        made the move; False when another finished it first or a newer round replaced it)."""
        order_id = case.dispatch["order_id"]
        await self.outbox.enqueue(order_id, case.id, self.work_order(case))
        await self.outbox.set_open(case.id, case.deadline_at)
        return await self._mark_dispatched(case.id, order_id, actor)

    async def _mark_dispatched(self, case_id: str, order_id: str, actor: str) -> tuple[Case, bool]:
        def mark(case: Case) -> dict[str, Any]:
            if case.dispatch.get("order_id") != order_id:
                raise _Duplicate()
            case.dispatch = {**case.dispatch, "state": "sent_to_outbox", "dispatched_at": time.time()}
            cls = case.classification
            return {"order_id": order_id, "department": cls.get("department", ""),
                    "co_departments": cls.get("co_departments", []), "street": cls.get("street", ""),
                    "deadline_at": case.deadline_at, "redo": bool(case.dispatch.get("redo"))}

        try:
            return await self.store.update_case(case_id, mark, actor=actor, action="dispatched",
                                                target=S.DISPATCHED), True
        except (_Duplicate, IllegalTransition):
            # Finished by someone else already (recover, or an early status event): that is fine.
            return await self.store.get_case(case_id), False

    def dispatched_text(self, case: Case) -> str:
        dept = case.classification.get("department", "")
        street = case.classification.get("street", "")
        who = f"{dept}和{street}" if street and street != dept else dept
        due = datetime.fromtimestamp(case.deadline_at, self.tz).strftime("%Y年%m月%d日 %H:%M")
        again = "重新" if case.dispatch.get("redo") else ""
        return f"您反映的问题（案件编号：{case.id}）已{again}派遣至{who}办理，办理时限至{due}。"

    async def _notify(self, case: Case, kind: str, text: str) -> None:
        try:
            await self.notifications.notify_case(case, kind, text)
        except Exception:
            # The case moved already; a failed notice is in the log, not a failed dispatch.
            log.exception("notification failed", extra={"event": "dispatch_notify_failed", "case_id": case.id})

    async def _move(self, case_id: str, mutate: Any, *, actor: str, action: str, target: Status,
                    what: str) -> Case:
        try:
            return await self.store.update_case(case_id, mutate, actor=actor, action=action, target=target)
        except CaseNotFound as exc:
            raise DispatchError("not_found", f"案件 {case_id} 不存在。", 404) from exc
        except IllegalTransition as exc:
            case = await self.store.get_case(case_id)
            raise _conflict(case, what) from exc

    # auto-dispatch --------------------------------------------------------
    def auto_classification(self, case: Case) -> dict[str, Any] | None:
        """The classifier's suggestion as a classification when every head clears auto_confidence."""
        if self.cfg.auto_confidence <= 0 or case.status != S.CLASSIFIED or case.duplicate_of:
            return None
        labels = {}
        for head in ("category", "department", "type"):
            label, p = _top(case.suggestion, head)
            if not label or p < self.cfg.auto_confidence:
                return None
            labels[head] = label
        path = (case.suggestion.get("category") or {}).get("path") or []
        category = "/".join(path) if path else labels["category"]
        return {"category": category, "department": labels["department"], "type": labels["type"]}

    async def on_case_created(self, case: Case) -> None:
        cls = self.auto_classification(case)
        if cls is None:
            return
        from hotline.answers import is_consultation  # a consultation is answered, not dispatched

        if is_consultation(case.normalized_text or case.text, case.suggestion):
            return
        try:
            await self.confirm(case.id, cls, actor="system:auto")
        except DispatchError as exc:
            # A call-taker (or the answers service) got there first, or a table lacks a department.
            log.info("auto-dispatch skipped", extra={"event": "auto_dispatch_skipped", "case_id": case.id,
                                                     "reason": exc.code})

    # delivery callbacks from the forwarder ---------------------------------
    async def on_delivered(self, case_id: str, order_id: str, ref: str, backend: str) -> None:
        def note(case: Case) -> dict[str, Any]:
            if case.dispatch.get("order_id") == order_id:
                case.dispatch = {**case.dispatch, "state": "delivered", "ref": ref, "delivered_at": time.time()}
            return {"order_id": order_id, "ref": ref, "backend": backend}

        await self.store.update_case(case_id, note, actor=f"dispatch:{backend}", action="order_delivered")

    async def on_dead(self, case_id: str, order_id: str, error: str, attempts: int) -> None:
        def note(case: Case) -> dict[str, Any]:
            if case.dispatch.get("order_id") == order_id:
                case.dispatch = {**case.dispatch, "state": "dead_letter", "error": error[:300]}
            return {"order_id": order_id, "error": error[:300], "attempts": attempts}

        await self.store.update_case(case_id, note, actor="dispatch:forwarder", action="order_failed")

    async def on_redriven(self, case_id: str, order_id: str, actor: str) -> None:
        def note(case: Case) -> dict[str, Any]:
            if case.dispatch.get("order_id") == order_id:
                case.dispatch = {**case.dispatch, "state": "sent_to_outbox", "error": ""}
            return {"order_id": order_id}

        await self.store.update_case(case_id, note, actor=actor, action="order_redriven")

    async def redrive(self, dead_id: str, actor: str) -> tuple[DeadLetter, str]:
        """Put one dead letter back into the outbox (same order id, fresh attempts); (letter, new entry id).

        ``dead_id`` comes from a person (CLI, API): anything but a stream entry id is not found, rather than
        Redis's "Invalid stream ID" error from XRANGE (and "-"/"+" would name the first or last letter).
        """
        if not is_stream_id(dead_id):
            shown = dead_id if len(dead_id) <= 40 else dead_id[:40] + "…"
            raise DispatchError("not_found", f"死信 {shown!r} 不存在：编号应形如 1712345678901-0。", 404)
        letters = await self.outbox.dead_letters(1, start=dead_id)
        if not letters or letters[0].dead_id != dead_id:
            raise DispatchError("not_found", f"死信 {dead_id} 不存在或已重新投递。", 404)
        entry = await self.outbox.redrive(dead_id)
        if not entry:
            raise DispatchError("not_found", f"死信 {dead_id} 不存在或已重新投递。", 404)
        # The order may have outlived its case record; it is sent all the same.
        with contextlib.suppress(CaseNotFound):
            await self.on_redriven(letters[0].case_id, letters[0].key, actor)
        return letters[0], entry

    async def redrive_all(self, actor: str, limit: int = 10_000) -> list[tuple[DeadLetter, str]]:
        out = []
        for letter in await self.outbox.dead_letters(limit):
            try:
                out.append(await self.redrive(letter.dead_id, actor))
            except DispatchError:
                continue  # redriven concurrently by someone else
        return out

    # status events --------------------------------------------------------
    def _decide(self, case: Case, ev: StatusEvent) -> _Decision:
        d = case.dispatch
        if ev.event_id in (d.get("event_ids") or []):
            return _Decision("duplicate", note="重复的事件，已处理过。")
        if ev.order_id and d.get("order_id") and ev.order_id != d["order_id"]:
            return _Decision("ignore", note=f"事件属于已结束的派遣轮次 {ev.order_id}（当前 {d['order_id']}）。")
        if not d.get("order_id"):
            raise _conflict(case, f"处理“{ev.type}”事件（案件尚未派遣）")
        last_seq = d.get("last_seq", -1)
        # A last_seq past the bound was stored before seq was checked (1e308): honouring it would ignore
        # every later event of the case.
        if ev.seq is not None and isinstance(last_seq, int) and last_seq <= MAX_SEQ and ev.seq <= last_seq:
            return _Decision("ignore", note=f"事件序号 {ev.seq} 不晚于已处理的 {last_seq}。")
        st = case.status
        working = st in (S.DISPATCHED, S.IN_PROGRESS)
        finished = st in (S.RESOLVED, S.CLOSED)
        if ev.type == "accepted":
            if st == S.DISPATCHED:
                return _Decision("apply")
            if st in PROGRESS:
                return _Decision("ignore", note="承办单位已在处理或已办结，迟到的接单事件不改变状态。")
            raise _conflict(case, "接单")
        if ev.type == "in_progress":
            if st == S.DISPATCHED:
                return _Decision("apply", S.IN_PROGRESS)
            if st == S.IN_PROGRESS:
                return _Decision("ignore", note="案件已在处理中。")
            if finished:
                return _Decision("ignore", note="案件已办结，迟到的处理中事件不改变状态。")
            raise _conflict(case, "转为处理中")
        if ev.type == "resolved":
            if working:
                return _Decision("apply", S.RESOLVED)
            if finished:
                return _Decision("ignore", note="案件已办结。")
            raise _conflict(case, "办结")
        if ev.type == "returned":
            if working:
                return _Decision("apply", S.RETURNED)
            if st == S.RETURNED:
                return _Decision("ignore", note="案件已退回。")
            raise _conflict(case, "退单")
        if ev.type == "extension_requested":
            if working:
                return _Decision("apply")
            raise _conflict(case, "申请延期")
        raise DispatchError("bad_type", f"未知的事件类型：{ev.type[:40]}")

    def _decide_and_apply(self, case: Case, ev: StatusEvent) -> dict[str, Any]:
        """The store's read-modify-write: decide on the version being written over, so concurrent events
        on one case are each decided on their predecessor's result instead of failing on a stale read."""
        if self._finish_dispatch_first(case, ev):
            raise _NotYetDispatched()
        decision = self._decide(case, ev)
        if decision.kind != "apply":
            raise _Settled(decision, case)
        if decision.target is not None:
            try:
                check_move(case.status, decision.target)
            except IllegalTransition as exc:
                raise _conflict(case, f"处理“{ev.type}”事件") from exc
            case.status = decision.target
        return self._apply(case, ev)

    @staticmethod
    def _finish_dispatch_first(case: Case, ev: StatusEvent) -> bool:
        return case.status == S.CONFIRMED and bool(case.dispatch.get("order_id")) and (
            not ev.order_id or ev.order_id == case.dispatch["order_id"])

    def _apply(self, case: Case, ev: StatusEvent) -> dict[str, Any]:
        """Mutate the case for an applied event (inside the store's read-modify-write)."""
        now = time.time()
        d = dict(case.dispatch)
        d["event_ids"] = [*(d.get("event_ids") or []), ev.event_id][-EVENT_IDS_KEPT:]
        if ev.seq is not None:
            d["last_seq"] = ev.seq
        if ev.ref and not d.get("ref"):
            d["ref"] = ev.ref
        data: dict[str, Any] = {"event_id": ev.event_id, "order_id": d.get("order_id", ""), "source": ev.source}
        if ev.department:
            data["department"] = ev.department
        if ev.type == "accepted" or (ev.type in ("in_progress", "resolved") and not d.get("accepted_at")):
            d["accepted_at"] = ev.occurred_at or now
        if ev.type == "resolved":
            d["reply"] = ev.reply
            d["resolved_at"] = ev.occurred_at or now
            d["state"] = "resolved"
            data["reply"] = ev.reply
        elif ev.type == "returned":
            returns = [*(d.get("returns") or []), {"reason": ev.reason, "at": now, "order_id": d.get("order_id", ""),
                                                   "department": ev.department or case.classification.get(
                                                       "department", "")}]
            d["returns"] = returns[-20:]
            d["state"] = "returned"
            data["reason"] = ev.reason
        elif ev.type == "extension_requested":
            # One pending request per round: a new one replaces it (the unit revised its request), and the
            # trail keeps what it replaced. A supervisor decides it (hotline/dispatch/extensions.py).
            previous = d.get("extension_request")
            d["extension_request"] = {"hours": ev.extension_hours, "reason": ev.reason, "at": now,
                                      "event_id": ev.event_id, "order_id": d.get("order_id", ""),
                                      "round": int(d.get("round") or 0)}
            data.update(hours=ev.extension_hours, reason=ev.reason)
            if isinstance(previous, dict) and previous.get("order_id") == d.get("order_id"):
                data["replaces"] = {"hours": previous.get("hours"), "reason": previous.get("reason"),
                                    "event_id": previous.get("event_id", "")}
        elif ev.type == "in_progress":
            d["state"] = "in_progress"
        case.dispatch = d
        return data

    async def handle_event(self, ev: StatusEvent) -> EventOutcome:
        """Apply one backend event. Repeats answer ``duplicate``; late or superseded events ``ignored``
        with an audit entry; an event that contradicts the case raises 409. Concurrent events on one case
        are serialised by the store, never refused; only a case that stays between confirmation and
        dispatch for ``EVENT_BUSY_WAIT_S`` raises ``CaseBusy`` (503, retry)."""
        if ev.type not in EVENT_TYPES:
            raise DispatchError("bad_type", f"未知的事件类型：{ev.type[:40]}")
        deadline = time.monotonic() + EVENT_BUSY_WAIT_S
        pause = 0.01
        while True:
            try:
                case = await self.store.get_case(ev.case_id)
            except CaseNotFound as exc:
                raise DispatchError("unknown_case", f"案件 {ev.case_id} 不存在。", 404) from exc
            if self._finish_dispatch_first(case, ev):
                # The backend answered before the dispatch finished (the process stopped, or Redis failed, after
                # the order went out): finish steps 2 and 3 first, the deadline index included.
                case, moved = await self._finish_round(case, "dispatch:recover")
                if moved:
                    await self._notify(case, "dispatched", self.dispatched_text(case))
            try:
                case = await self.store.update_case(case.id, lambda c: self._decide_and_apply(c, ev),
                                                    actor=f"dispatch:{ev.source}", action=ev.type)
            except CaseNotFound as exc:
                raise DispatchError("unknown_case", f"案件 {ev.case_id} 不存在。", 404) from exc
            except _Settled as settled:
                return await self._settled(settled.case, ev, settled.decision)
            except _NotYetDispatched:
                # Re-confirmed between our read and write (a new round): finish its dispatch and decide again.
                if time.monotonic() >= deadline:
                    raise CaseBusy(ev.case_id) from None
                await asyncio.sleep(pause)
                pause = min(pause * 2, 0.2)
                continue
            await self._after_event(case, ev)
            return EventOutcome("applied", case)

    async def _settled(self, case: Case, ev: StatusEvent, decision: _Decision) -> EventOutcome:
        if decision.kind == "duplicate":
            request = case.dispatch.get("extension_request")
            if ev.type == "extension_requested" and isinstance(request, dict) and \
                    request.get("event_id") == ev.event_id and case.status in (S.DISPATCHED, S.IN_PROGRESS):
                # The backend's retry after an answer it never heard: the index entry may be what was lost.
                await self.extension_index.add(case.id, float(request.get("at") or 0.0))
            return EventOutcome("duplicate", case, decision.note)
        await self.store.add_event(case.id, actor=f"dispatch:{ev.source}", action="dispatch_event_ignored",
                                   data={"event_id": ev.event_id, "type": ev.type, "note": decision.note,
                                         "order_id": ev.order_id})
        return EventOutcome("ignored", case, decision.note)

    async def _after_event(self, case: Case, ev: StatusEvent) -> None:
        if ev.type in ("resolved", "returned"):
            await self.outbox.clear_open(case.id)
            await self.extension_index.remove(case.id)  # a request of a round that ended is moot
        if ev.type == "extension_requested":
            await self.extension_index.add(case.id, float(case.dispatch["extension_request"]["at"]))
        if ev.type == "resolved":
            await self._notify(case, "resolved", self.resolved_text(case))

    def resolved_text(self, case: Case) -> str:
        reply = case.dispatch.get("reply", "")
        return f"您反映的问题（案件编号：{case.id}）已办理完毕。办理结果：{reply}"

    # supervision ----------------------------------------------------------
    async def overdue(self, limit: int = 100, offset: int = 0) -> list[Case]:
        """Dispatched cases past their deadline and not yet resolved or returned (督办), oldest deadline first."""
        now = time.time()
        cases = await self._still_open(await self.outbox.overdue_ids(now, limit=limit, offset=offset))
        return [c for c in cases if 0 < c.deadline_at < now]

    async def due_soon(self, within_s: float, limit: int = 100) -> list[Case]:
        """Dispatched cases whose deadline comes within ``within_s`` (即将超期), soonest first."""
        now = time.time()
        cases = await self._still_open(await self.outbox.due_ids(now, now + within_s, limit=limit))
        return [c for c in cases if c.deadline_at >= now]

    async def _still_open(self, ids: list[str]) -> list[Case]:
        out = []
        for case in await self.store.get_cases(ids):
            if case.status in SUPERVISED_STATES:
                out.append(case)
            else:
                # Left the open states by a path that did not clear the index (closed by hand, merged).
                await self.outbox.clear_open(case.id)
        return out

    async def flag_overdue(self, page: int = FLAG_PAGE, max_pages: int = FLAG_MAX_PAGES) -> int:
        """Write one 'overdue' audit entry per case when its deadline passes.

        Reads only the worklist of open orders not flagged yet (``Outbox.unflagged_due``), ``page`` at a time:
        each case read leaves it (flagged, found flagged, or no longer open) or waits there under its record's
        later deadline, so a sweep costs what became overdue since the last one, however many are overdue."""
        if not self._unflagged_filled:
            await self.outbox.fill_unflagged()
            self._unflagged_filled = True
        now = time.time()
        flagged = 0
        for _ in range(max_pages):
            rows = await self.outbox.unflagged_due(now, page)
            if not rows:
                break
            found = {c.id: c for c in await self.store.get_cases([cid for cid, _ in rows])}
            for case_id, score in rows:
                case = found.get(case_id)
                if case is None or case.status not in SUPERVISED_STATES:
                    await self.outbox.clear_open(case_id)
                    continue
                if case.deadline_at >= now:
                    # A newer round's deadline the index has not caught up with: wait for that one.
                    await self.outbox.settle_unflagged(case_id, score, case.deadline_at)
                    continue
                if not case.dispatch.get("overdue_flagged") and case.deadline_at > 0:
                    flagged += await self._flag_one(case, now)
                await self.outbox.settle_unflagged(case_id, score)
            if len(rows) < page:
                break
        return flagged

    async def _flag_one(self, case: Case, now: float) -> int:
        order_id = case.dispatch.get("order_id", "")

        def flag(c: Case) -> dict[str, Any]:
            # Decided on the record written over: not twice, and not for a round opened since it was read.
            if (c.dispatch.get("overdue_flagged") or c.dispatch.get("order_id", "") != order_id
                    or c.status not in SUPERVISED_STATES or not 0 < c.deadline_at < now):
                raise _Duplicate()
            c.dispatch = {**c.dispatch, "overdue_flagged": True}
            return {"deadline_at": c.deadline_at, "order_id": order_id,
                    "department": c.classification.get("department", "")}

        try:
            await self.store.update_case(case.id, flag, actor="system", action="overdue")
        except (_Duplicate, CaseNotFound):
            return 0
        return 1

    async def recover(self, older_than_s: float = 30.0, limit: int = 500) -> int:
        """Finish dispatch rounds a crashed process left between CONFIRMED and DISPATCHED, and put dispatched
        cases missing from the deadline index back into it. Returns how many cases it finished or put back."""
        done = 0
        now = time.time()
        for case in await self.store.get_cases(await self.store.case_ids(status=S.CONFIRMED, limit=limit)):
            order_id = case.dispatch.get("order_id")
            if not order_id or case.status != S.CONFIRMED or now - case.updated_at < older_than_s:
                continue
            updated, moved = await self._finish_round(case, "dispatch:recover")
            if moved:
                await self._notify(updated, "dispatched", self.dispatched_text(updated))
            done += 1
        return done + await self.repair_open_index()

    async def repair_open_index(self, window: int = REPAIR_WINDOW) -> int:
        """Dispatched and in-progress cases that are not in the deadline index go back into it.

        Each sweep checks the next ``window`` cases of each status index (one ZMSCORE), going round the index
        sweep by sweep, and reads only the records of the cases missing."""
        ids: list[str] = []
        for status in (S.DISPATCHED, S.IN_PROGRESS):
            ids += await self.outbox.repair_window(self.store.k_status(status), str(status), window)
        repaired = 0
        for case in await self.store.get_cases(await self.outbox.not_open(list(dict.fromkeys(ids)))):
            if case.status not in (S.DISPATCHED, S.IN_PROGRESS) or case.deadline_at <= 0:
                continue
            await self.outbox.set_open(case.id, case.deadline_at)
            try:
                still = (await self.store.get_case(case.id)).status in SUPERVISED_STATES
            except CaseNotFound:
                still = False
            if not still:  # resolved or returned meanwhile: the event's clear_open may have come first
                await self.outbox.clear_open(case.id)
                continue
            repaired += 1
            log.warning("dispatched case was missing from the deadline index; put back",
                        extra={"event": "open_index_repaired", "case_id": case.id})
        return repaired


@dataclass
class CaseListing:
    cases: list[Case] = field(default_factory=list)
    total: int = 0
