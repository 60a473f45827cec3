"""OpenAPI paths of extension requests (延期申请, hotline/dispatch/extensions.py): the supervisors' list and
decisions."""

from __future__ import annotations

from typing import Any

from hotline.channels.openapi_common import CASE_ID_PARAM, STAFF_READ, STAFF_WRITE, json_body, ok, staff_errors
from hotline.channels.openapi_dispatch import _limit, _obj, _query
from hotline.dispatch.events import MAX_EVENT_ID_CHARS
from hotline.dispatch.extensions import MAX_HOURS, MAX_LIST, MAX_NOTE_CHARS, MIN_HOURS
from hotline.status import Status

_STRING = {"type": "string"}
_NUMBER = {"type": "number"}
_INT = {"type": "integer"}
_BOOL = {"type": "boolean"}
_STATUS = {"type": "string", "enum": [str(s) for s in Status]}
_CASE_ID_FORM = "^[0-9-]{8,20}$"
_NOT_BLANK = r"\S"  # the note is trimmed before it is checked
_REQUEST_ID = {"type": ["string", "null"], "maxLength": MAX_EVENT_ID_CHARS,
               "description": "所审批申请的 request_id（列表中给出）；"
                              "给出且申请已被新的申请替换时 409 extension_changed"}

_ROW = _obj({
    "case_id": _STRING,
    "status": _STATUS,
    "status_label": _STRING,
    "department": _STRING,
    "street": _STRING,
    "order_id": _STRING,
    "round": _INT,
    "request_id": {"type": "string", "description": "申请的事件编号（event_id）"},
    "requested_at": _NUMBER,
    "requested_hours": _NUMBER,
    "reason": {"type": "string", "description": "申请理由（电话、证件号遮蔽）"},
    "deadline_at": {"type": "number", "description": "当前办理期限（Unix 秒）"},
    "proposed_deadline_at": {"type": "number", "description": "全部同意后的办理期限"},
    "overdue": _BOOL,
    "extensions": {"type": "integer", "description": "本案已同意的延期次数（各轮合计）"},
    "extended_hours": {"type": "number", "description": "本案已同意延期的小时数合计"},
    "refused": {"type": "integer", "description": "本案不同意的延期申请次数"},
    "text": _STRING,
})

_DECIDED_PROPS: dict[str, Any] = {
    "result": {"type": "string", "enum": ["approved", "refused"]},
    "case_id": _STRING,
    "status": _STATUS,
    "deadline_at": {"type": "number", "description": "审批后的办理期限（Unix 秒）"},
    "deadline_text": {"type": "string", "description": "同一期限的本地时间文字"},
    "overdue": _BOOL,
    "extensions": _INT,
    "extended_hours": _NUMBER,
    "hours": {"type": "number", "description": "批准的小时数"},
    "requested_hours": _NUMBER,
    "previous_deadline_at": _NUMBER,
}
_DECIDED_REQUIRED = ["result", "case_id", "status", "deadline_at", "deadline_text", "overdue", "extensions",
                     "extended_hours"]

_CASE_PARAM = {**CASE_ID_PARAM, "schema": {"type": "string", "pattern": _CASE_ID_FORM},
               "description": f"{CASE_ID_PARAM['description']}；格式不符 404"}

_APPROVE_IN = {"type": "object", "properties": {
    "hours": {"type": ["number", "null"], "minimum": MIN_HOURS, "maximum": MAX_HOURS,
              "description": "批准的小时数，不超过申请的小时数（否则 422 too_many_hours）；缺省为申请的小时数"},
    "note": {"type": ["string", "null"], "maxLength": MAX_NOTE_CHARS},
    "request_id": _REQUEST_ID,
}}
_REFUSE_IN = {"type": "object", "required": ["note"], "properties": {
    "note": {"type": "string", "minLength": 1, "maxLength": MAX_NOTE_CHARS, "pattern": _NOT_BLANK,
             "description": "不同意的理由"},
    "request_id": _REQUEST_ID,
}}

_DECIDE_DESCRIPTION = ("案件不在办理中（已退单、办结、结案）或没有待审批的申请时 409；"
                       "案件不存在 404。")


def _decide(op_id: str, summary: str, body: dict[str, Any], *, required: bool) -> dict[str, Any]:
    return {"post": {
        "operationId": op_id, "summary": summary, "description": _DECIDE_DESCRIPTION, "tags": ["dispatch"],
        "security": STAFF_WRITE, "parameters": [_CASE_PARAM], "requestBody": json_body(body, required=required),
        "responses": {**ok("decided", {"type": "object", "required": _DECIDED_REQUIRED,
                                       "properties": _DECIDED_PROPS}),
                      **staff_errors(400, 404, 409, 413, 415, 422)}}}


PATHS: dict[str, dict[str, Any]] = {
    "/api/v1/dispatch/extensions": {"get": {
        "operationId": "listExtensionRequests",
        "summary": "待审批的延期申请（督办）",
        "tags": ["dispatch"],
        "security": STAFF_READ,
        "parameters": [_limit(MAX_LIST, 100),
                       _query("offset", {"type": "integer", "minimum": 0, "maximum": 1_000_000},
                              "跳过条数，空或缺省为 0", allow_empty=True)],
        "responses": {**ok("pending requests, oldest first",
                           _obj({"items": {"type": "array", "items": _ROW}, "total": _INT, "limit": _INT,
                                 "offset": _INT})),
                      **staff_errors(400)},
    }},
    "/api/v1/dispatch/extensions/{case_id}/approve": _decide(
        "approveExtension", "同意延期：办理期限顺延批准的小时数，并告知市民", _APPROVE_IN, required=False),
    "/api/v1/dispatch/extensions/{case_id}/refuse": _decide(
        "refuseExtension", "不同意延期：期限不变", _REFUSE_IN, required=True),
}
