"""延期申请: a handling unit asks for more time, a supervisor approves (perhaps fewer hours) or refuses.

The request arrives as the backend's ``extension_requested`` status event and is kept on the case as
``case.dispatch.extension_request`` (hours, reason, arrival time, the request's event id, order id and
round); a newer request of the same round replaces it. It is pending while the case is being handled
(dispatched or in progress) in that round. Pending requests are indexed by arrival time
(hotline/store/extensions.py) for the 督办 page and the staff API:

- ``GET  /api/v1/dispatch/extensions``                    pending requests, oldest first (supervisors)
- ``POST /api/v1/dispatch/extensions/{case_id}/approve``  ``{"hours"?, "note"?, "request_id"?}``
- ``POST /api/v1/dispatch/extensions/{case_id}/refuse``   ``{"note", "request_id"?}``

Approving moves the deadline by the granted hours — clock hours, as the hour time limits count
(hotline/dispatch/deadlines.py) — from the current deadline, also one already passed; the open-orders index
follows, so the overdue and due-soon views do, and an overdue case whose new deadline lies ahead is no longer
flagged. The citizen is told the new time on their channel. Refusing leaves the deadline. Both end the
request and are written to the audit trail and to ``case.dispatch.extensions`` (the case's history of
decided requests). The work-order backends have no message for changing a sent order, so the unit is not
told through them.
"""

from __future__ import annotations

import functools
import json
import time
from datetime import datetime
from typing import Any

from aiohttp import web

from hotline.access import SUPERVISOR, requires
from hotline.appkeys import DISPATCHER
from hotline.console.auth import staff_actor
from hotline.dispatch.events import MAX_EVENT_ID_CHARS, MAX_EXTENSION_HOURS, MIN_EXTENSION_HOURS
from hotline.dispatch.params import query_int
from hotline.dispatch.service import Dispatcher, DispatchError
from hotline.errors import decode_json_object
from hotline.numbers import finite_number
from hotline.records import Case, mask_pii
from hotline.status import LABELS_ZH, Status
from hotline.store import CaseNotFound

dumps = functools.partial(json.dumps, ensure_ascii=False)

WORKING = (Status.DISPATCHED, Status.IN_PROGRESS)
MIN_HOURS, MAX_HOURS = MIN_EXTENSION_HOURS, MAX_EXTENSION_HOURS  # what the events endpoint accepts
MAX_NOTE_CHARS = 1000
HISTORY_KEPT = 50
MAX_LIST = 500


def pending_request(case: Case) -> dict[str, Any] | None:
    """The request waiting for a decision: one of the current round while the unit is handling the case."""
    d = case.dispatch or {}
    request = d.get("extension_request")
    if case.status not in WORKING or not isinstance(request, dict) or not d.get("order_id"):
        return None
    if request.get("order_id", d["order_id"]) != d["order_id"]:
        return None  # a request of an earlier round (the order was returned and sent again)
    hours = finite_number(request.get("hours"))
    return request if hours is not None and hours > 0 else None


def history(case: Case) -> list[dict[str, Any]]:
    return [h for h in (case.dispatch or {}).get("extensions") or [] if isinstance(h, dict)]


def approved_of(case: Case) -> tuple[int, float]:
    """(how many extensions were approved on the case, their hours together), over all rounds."""
    approved = [h for h in history(case) if h.get("outcome") == "approved"]
    return len(approved), sum(finite_number(h.get("hours")) or 0.0 for h in approved)


def extension_row(case: Case, now: float) -> dict[str, Any]:
    """A pending request as supervisors see it (API and 督办 page); the unit's reason with numbers masked."""
    request = pending_request(case) or {}
    d = case.dispatch or {}
    cls = case.classification or {}
    hours = float(request.get("hours") or 0.0)
    times, total = approved_of(case)
    return {
        "case_id": case.id, "status": str(case.status), "status_label": LABELS_ZH.get(case.status, str(case.status)),
        "department": str(cls.get("department") or ""), "street": str(cls.get("street") or ""),
        "order_id": str(d.get("order_id") or ""), "round": int(d.get("round") or 1),
        "request_id": str(request.get("event_id") or ""), "requested_at": float(request.get("at") or 0.0),
        "requested_hours": hours, "reason": mask_pii(str(request.get("reason") or ""))[:500],
        "deadline_at": case.deadline_at, "proposed_deadline_at": case.deadline_at + hours * 3600,
        "overdue": 0 < case.deadline_at < now, "extensions": times, "extended_hours": total,
        "refused": sum(1 for h in history(case) if h.get("outcome") == "refused"),
        "text": mask_pii(case.text)[:80],
    }


def _not_found(case_id: str) -> DispatchError:
    return DispatchError("not_found", f"案件 {case_id} 不存在。", 404)


def _no_pending(case: Case) -> DispatchError:
    if case.status not in WORKING:
        return DispatchError("invalid_transition", f"案件 {case.id} 当前状态为“{LABELS_ZH[case.status]}”"
                                                   f"（{case.status}），没有待审批的延期申请。", 409)
    return DispatchError("no_pending_extension", f"案件 {case.id} 没有待审批的延期申请（可能已由他人处理）。", 409)


class Extensions:
    def __init__(self, dispatcher: Dispatcher) -> None:
        self.dispatcher = dispatcher
        self.store = dispatcher.store
        self.index = dispatcher.extension_index

    async def pending(self, limit: int = 100, offset: int = 0) -> list[Case]:
        """Cases with a pending request, oldest request first; entries that no longer stand are dropped."""
        entries = await self.index.entries(offset, limit)
        by_id = {c.id: c for c in await self.store.get_cases([case_id for case_id, _at in entries])}
        out = []
        for case_id, at in entries:
            case = by_id.get(case_id)
            if case is not None and pending_request(case) is not None:
                out.append(case)
            else:
                await self.index.remove(case_id, at)
        return out

    def time_text(self, ts: float) -> str:
        return datetime.fromtimestamp(ts, self.dispatcher.tz).strftime("%Y年%m月%d日 %H:%M")

    def notice_text(self, case: Case) -> str:
        return (f"您反映的问题（案件编号：{case.id}）承办单位申请延期办理，经审核同意，"
                f"办理时限延长至{self.time_text(case.deadline_at)}。")

    def _decide(self, case: Case, request_id: str) -> dict[str, Any]:
        request = pending_request(case)
        if request is None:
            raise _no_pending(case)
        if request_id and request.get("event_id") != request_id:
            raise DispatchError("extension_changed", f"案件 {case.id} 的延期申请已更新为新的申请，请刷新后重新审批。",
                                409)
        return request

    def _close(self, case: Case, request: dict[str, Any], entry: dict[str, Any]) -> None:
        d = dict(case.dispatch)
        d.pop("extension_request", None)
        d["extensions"] = [*history(case), {
            "event_id": request.get("event_id", ""), "order_id": d.get("order_id", ""),
            "round": int(d.get("round") or 0), "requested_hours": request.get("hours"),
            "reason": request.get("reason", ""), "requested_at": request.get("at", 0.0), **entry}][-HISTORY_KEPT:]
        case.dispatch = d

    async def approve(self, case_id: str, actor: str, *, hours: float | None = None, note: str = "",
                      request_id: str = "") -> Case:
        now = time.time()
        decided: dict[str, Any] = {}

        def mutate(case: Case) -> dict[str, Any]:
            request = self._decide(case, request_id)
            asked = float(request["hours"])
            granted = asked if hours is None else hours
            if granted > asked:
                raise DispatchError("too_many_hours", f"批准的小时数不能超过申请的 {asked:g} 小时。")
            before = case.deadline_at
            if before + granted * 3600 <= now:
                # The citizen would be told of a new time limit that has passed already.
                raise DispatchError("deadline_still_past",
                                    f"同意 {granted:g} 小时后办理期限为 {self.time_text(before + granted * 3600)}，"
                                    f"仍早于现在。请增加小时数（不超过申请的 {asked:g} 小时），或不同意延期。", 422)
            case.deadline_at = before + granted * 3600
            self._close(case, request, {"outcome": "approved", "hours": granted, "note": note, "by": actor,
                                        "decided_at": now, "deadline_before": before,
                                        "deadline_after": case.deadline_at})
            if case.deadline_at > now:
                # Overdue no more: the sweep writes a new 超期 entry if the new deadline passes too.
                case.dispatch = {**case.dispatch, "overdue_flagged": False}
            decided["at"] = float(request.get("at") or 0.0)
            return {"order_id": case.dispatch.get("order_id", ""), "round": int(case.dispatch.get("round") or 0),
                    "event_id": request.get("event_id", ""), "hours": granted, "requested_hours": asked,
                    "reason": request.get("reason", ""), "previous_deadline_at": before,
                    "deadline_at": case.deadline_at, "note": note, "extensions": approved_of(case)[0]}

        try:
            case = await self.store.update_case(case_id, mutate, actor=actor, action="extension_approved")
        except CaseNotFound as exc:
            raise _not_found(case_id) from exc
        await self._follow_deadline(case)
        await self.index.remove(case.id, decided["at"])
        await self.dispatcher._notify(case, "extension", self.notice_text(case))
        return case

    async def refuse(self, case_id: str, actor: str, *, note: str, request_id: str = "") -> Case:
        now = time.time()
        decided: dict[str, Any] = {}

        def mutate(case: Case) -> dict[str, Any]:
            request = self._decide(case, request_id)
            self._close(case, request, {"outcome": "refused", "hours": 0.0, "note": note, "by": actor,
                                        "decided_at": now, "deadline_before": case.deadline_at,
                                        "deadline_after": case.deadline_at})
            decided["at"] = float(request.get("at") or 0.0)
            return {"order_id": case.dispatch.get("order_id", ""), "round": int(case.dispatch.get("round") or 0),
                    "event_id": request.get("event_id", ""), "requested_hours": request.get("hours"),
                    "reason": request.get("reason", ""), "deadline_at": case.deadline_at, "note": note}

        try:
            case = await self.store.update_case(case_id, mutate, actor=actor, action="extension_refused")
        except CaseNotFound as exc:
            raise _not_found(case_id) from exc
        await self.index.remove(case.id, decided["at"])
        return case

    async def _follow_deadline(self, case: Case) -> None:
        """The open-orders index (overdue, due soon) takes the new deadline. Written after the case: if the
        case moved on meanwhile (resolved, returned, a new round), the index follows what it is now."""
        outbox = self.dispatcher.outbox
        await outbox.set_open(case.id, case.deadline_at)
        current = await self.store.get_case(case.id)
        if current.status not in (*WORKING, Status.CONFIRMED):
            await outbox.clear_open(case.id)
        elif current.deadline_at != case.deadline_at:
            await outbox.set_open(case.id, current.deadline_at)


# staff routes ---------------------------------------------------------------------------------------

def _text(body: dict[str, Any], name: str, limit: int, *, required: bool = False) -> str:
    value = body.get(name)
    if value is None:
        value = ""
    if not isinstance(value, str) or len(value) > limit:
        raise DispatchError("bad_field", f"{name} 须为不超过 {limit} 字的文字。")
    value = value.strip()
    if required and not value:
        raise DispatchError("missing_field", f"请填写{'不同意延期的理由' if name == 'note' else name}。")
    return value


def _hours(body: dict[str, Any]) -> float | None:
    value = body.get("hours")
    if value is None:
        return None
    hours = finite_number(value)
    if hours is None or not MIN_HOURS <= hours <= MAX_HOURS:
        raise DispatchError("bad_field",
                            f"hours 须为 {MIN_HOURS:g} 到 {MAX_HOURS} 之间的小时数（不超过申请的小时数）。")
    return hours


def _case_id(request: web.Request) -> str:
    case_id = request.match_info["case_id"]
    if not (8 <= len(case_id) <= 20 and set(case_id) <= set("0123456789-")):
        raise DispatchError("not_found", "案件不存在。", 404)
    return case_id


def decided_view(case: Case, extensions: Extensions) -> dict[str, Any]:
    times, total = approved_of(case)
    return {"case_id": case.id, "status": str(case.status), "deadline_at": case.deadline_at,
            "deadline_text": extensions.time_text(case.deadline_at) if case.deadline_at else "",
            "overdue": 0 < case.deadline_at < time.time(), "extensions": times, "extended_hours": total}


@requires(SUPERVISOR)
async def list_extensions(request: web.Request) -> web.Response:
    limit = query_int(request, "limit", 100, 1, MAX_LIST)
    offset = query_int(request, "offset", 0, 0, 1_000_000)
    extensions = Extensions(request.app[DISPATCHER])
    now = time.time()
    rows = [extension_row(c, now) for c in await extensions.pending(limit, offset)]
    return web.json_response({"items": rows, "total": await extensions.index.count(), "limit": limit,
                              "offset": offset}, dumps=dumps)


@requires(SUPERVISOR)
async def approve_extension(request: web.Request) -> web.Response:
    case_id = _case_id(request)
    body = decode_json_object(await request.read(), request.content_type, allow_empty=True)
    hours = _hours(body)
    note = _text(body, "note", MAX_NOTE_CHARS)
    request_id = _text(body, "request_id", MAX_EVENT_ID_CHARS)
    extensions = Extensions(request.app[DISPATCHER])
    case = await extensions.approve(case_id, staff_actor(request), hours=hours, note=note, request_id=request_id)
    last = history(case)[-1]
    return web.json_response({**decided_view(case, extensions), "result": "approved", "hours": last["hours"],
                              "requested_hours": last["requested_hours"],
                              "previous_deadline_at": last["deadline_before"]}, dumps=dumps)


@requires(SUPERVISOR)
async def refuse_extension(request: web.Request) -> web.Response:
    case_id = _case_id(request)
    body = decode_json_object(await request.read(), request.content_type)
    note = _text(body, "note", MAX_NOTE_CHARS, required=True)
    request_id = _text(body, "request_id", MAX_EVENT_ID_CHARS)
    extensions = Extensions(request.app[DISPATCHER])
    case = await extensions.refuse(case_id, staff_actor(request), note=note, request_id=request_id)
    return web.json_response({**decided_view(case, extensions), "result": "refused"}, dumps=dumps)


def setup_routes(app: web.Application) -> None:
    app.router.add_get("/api/v1/dispatch/extensions", list_extensions)
    app.router.add_post("/api/v1/dispatch/extensions/{case_id}/approve", approve_extension)
    app.router.add_post("/api/v1/dispatch/extensions/{case_id}/refuse", refuse_extension)
