"""``POST /api/v1/dispatch/events``: status changes pushed by the dispatch backend.

The request must be signed (hotline/dispatch/signing.py) with ``dispatch.secret``; unsigned, wrongly
signed or stale requests get 401 before the body is read as JSON. Body, one event:

    {"event_id": "evt-123", "case_id": "20261122-000123", "type": "resolved",
     "order_id": "20261122-000123-R1", "seq": 3, "occurred_at": 1795000000,
     "reply": "已修复路灯。", "reason": "", "department": "", "extension_hours": 0,
     "service_request_id": "311-42"}

``type`` is accepted | in_progress | resolved (``reply`` required: it goes to the citizen) | returned
(退单, ``reason`` required) | extension_requested (``extension_hours`` and ``reason`` required).
``seq`` is a JSON integer 0..2^63-1 compared exactly (a float would merge neighbouring large numbers and
lose events); ``occurred_at`` Unix seconds from 2000-01-01 to a day ahead of our clock (milliseconds are
refused, not shown as the year 58869), absent/null/0 for "unknown".
Answers 200 ``{"result": "applied" | "ignored" | "duplicate", "case_id", "status", "note"}``; 400/415/422
for malformed bodies, 404 for unknown cases, 409 for events that contradict the case's state, 503 with
Retry-After when the case stayed busy too long (retry: nothing was applied).
"""

from __future__ import annotations

import json
import time
from typing import Any

from aiohttp import web

from hotline.appkeys import DISPATCHER
from hotline.bodies import LoneSurrogate, parse_json
from hotline.dispatch.service import EVENT_TYPES, MAX_SEQ, CaseBusy, DispatchError, StatusEvent
from hotline.dispatch.signing import SignatureError, verify
from hotline.numbers import finite_number

MAX_EVENT_ID_CHARS = 200
MAX_TEXT_CHARS = 5000
EARLIEST_OCCURRED_AT = 946684800.0  # 2000-01-01T00:00:00Z: no work order of this service is older
OCCURRED_AT_AHEAD_S = 86400.0  # clock skew allowance; beyond it the value is no time of ours (milliseconds?)

# An extension moves a deadline by at least a quarter of an hour (less would tell the citizen of a new time that
# is the old one) and by at most 90 days.
MIN_EXTENSION_HOURS = 0.25
MAX_EXTENSION_HOURS = 24 * 90

def _str(body: dict[str, Any], name: str, *, limit: int, required: bool = False) -> str:
    value = body.get(name)
    if value is None or value == "":
        if required:
            raise DispatchError("missing_field", f"缺少字段 {name}。")
        return ""
    if not isinstance(value, str):
        raise DispatchError("bad_field", f"字段 {name} 必须是字符串。")
    value = value.strip()
    if required and not value:
        raise DispatchError("missing_field", f"缺少字段 {name}。")
    if len(value) > limit:
        raise DispatchError("bad_field", f"字段 {name} 过长（上限 {limit} 字）。")
    return value


def _number(body: dict[str, Any], name: str) -> float | None:
    value = body.get(name)
    if value is None:
        return None
    number = finite_number(value)
    if number is None:
        raise DispatchError("bad_field", f"字段 {name} 必须是数字。")
    return number


def _seq(body: dict[str, Any]) -> int | None:
    value = body.get("seq")
    if value is None:
        return None
    # bool is an int subclass; a float cannot tell 1795562000123456789 from the next 100 numbers.
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_SEQ:
        raise DispatchError("bad_field", f"seq 须为 0 到 {MAX_SEQ} 之间的整数。")
    return value


def _occurred_at(body: dict[str, Any]) -> float:
    value = _number(body, "occurred_at")
    if not value:
        return 0.0  # unknown: the time the event arrives stands in
    latest = time.time() + OCCURRED_AT_AHEAD_S
    if not EARLIEST_OCCURRED_AT <= value <= latest:
        raise DispatchError("bad_field",
                            "occurred_at 须为 2000-01-01 之后、不晚于当前时间一天的 Unix 时间（秒，不是毫秒）。")
    return value


def parse_event(body: Any, source: str = "backend") -> StatusEvent:
    if not isinstance(body, dict):
        raise DispatchError("bad_body", "请求内容须为 JSON 对象。")
    etype = _str(body, "type", limit=40, required=True)
    if etype not in EVENT_TYPES:
        raise DispatchError("bad_type", f"type 须为 {' / '.join(EVENT_TYPES)} 之一。")
    case_id = _str(body, "case_id", limit=20, required=True)
    if not (8 <= len(case_id) <= 20 and set(case_id) <= set("0123456789-")):
        raise DispatchError("bad_case_id", "case_id 格式不正确。")
    seq = _seq(body)
    ev = StatusEvent(
        event_id=_str(body, "event_id", limit=MAX_EVENT_ID_CHARS, required=True),
        case_id=case_id, type=etype,
        order_id=_str(body, "order_id", limit=40),
        seq=seq,
        occurred_at=_occurred_at(body),
        reply=_str(body, "reply", limit=MAX_TEXT_CHARS, required=etype == "resolved"),
        reason=_str(body, "reason", limit=MAX_TEXT_CHARS,
                    required=etype in ("returned", "extension_requested")),
        department=_str(body, "department", limit=100),
        ref=_str(body, "service_request_id", limit=100),
        source=source,
    )
    if etype == "extension_requested":
        hours = _number(body, "extension_hours")
        if hours is None or not MIN_EXTENSION_HOURS <= hours <= MAX_EXTENSION_HOURS:
            raise DispatchError("bad_field", f"extension_hours 须为 {MIN_EXTENSION_HOURS:g} 到 {MAX_EXTENSION_HOURS} "
                                             "之间的小时数。")
        ev.extension_hours = hours
    return ev


async def post_event(request: web.Request) -> web.Response:
    dispatcher = request.app[DISPATCHER]
    raw = await request.read()
    try:
        verify(dispatcher.cfg.secret, request.headers, raw, dispatcher.cfg.event_max_age_s)
    except SignatureError as exc:
        raise DispatchError(exc.code, exc.message, 401) from exc
    if request.content_type != "application/json":
        raise DispatchError("unsupported_media_type", "请求须为 application/json。", 415)
    try:
        body = parse_json(raw)
    except LoneSurrogate as exc:
        raise DispatchError("bad_json", exc.message, 400) from exc
    except (ValueError, UnicodeDecodeError) as exc:
        raise DispatchError("bad_json", "请求内容不是合法的 JSON。", 400) from exc
    try:
        outcome = await dispatcher.handle_event(parse_event(body))
    except CaseBusy as exc:
        # Not 409: that tells the backend the event contradicts the case and may be dropped.
        return web.json_response({"error": {"code": exc.code, "message": exc.message}}, status=503,
                                 headers={"Retry-After": str(exc.retry_after_s)},
                                 dumps=lambda o: json.dumps(o, ensure_ascii=False))
    return web.json_response(outcome.to_dict(), dumps=lambda o: json.dumps(o, ensure_ascii=False))
