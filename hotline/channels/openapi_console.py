"""OpenAPI paths of the call-takers' console API (/api/v1/console/*): queue, decisions, search, adoption."""

from __future__ import annotations

from typing import Any

from hotline.channels.openapi_common import (
    CASE_ID_PARAM,
    STAFF_READ,
    STAFF_WRITE,
    json_body,
    ok,
    staff_errors,
)
from hotline.status import Status

_STATUS = {"type": "string", "enum": [str(s) for s in Status]}
_TOP = {"type": "array", "items": {"type": "object", "required": ["label", "p"],
                                   "properties": {"label": {"type": "string"}, "p": {"type": "number"}}}}
_NULLABLE_STR = {"type": ["string", "null"]}

# What staff see of a case (hotline/console/views.py case_view): text with ID/phone numbers masked.
STAFF_CASE: dict[str, Any] = {
    "type": "object",
    "required": ["id", "status", "status_label", "channel", "created_at", "text", "contact", "heads",
                 "reporter_count", "needs_confirmation"],
    "properties": {
        "id": {"type": "string"},
        "status": _STATUS,
        "status_label": {"type": "string"},
        "channel": {"type": "string"},
        "channel_label": {"type": "string"},
        "created_at": {"type": "number"},
        "updated_at": {"type": "number"},
        "text": {"type": "string"},
        "transcript": {"type": "string"},
        "audio_ref": {"type": "string"},
        "contact": {"type": "string", "description": "masked unless the role may see it"},
        "name": {"type": "string"},
        "address": {"type": "string"},
        "location": {"type": ["object", "null"]},
        "emergency": {"type": "boolean"},
        "priority": {"type": "number"},
        "urgency": {"type": "object"},
        "returned": {"type": "boolean"},
        "heads": {"type": "object", "additionalProperties": _TOP},
        "category_path": {"type": "array", "items": {"type": "string"}},
        "classification": {"type": "object"},
        "needs_confirmation": {"type": "boolean"},
        "duplicate_of": {"type": "string"},
        "duplicate_candidates": {"type": "array", "items": {"type": "object"}},
        "reports": {"type": "array", "items": {"type": "object"}},
        "reporter_count": {"type": "integer"},
        "dispatch": {"type": ["object", "null"]},
        "dispatch_rows": {"type": "array"},
        "deadline_at": {"type": "number"},
        "answer": {"type": ["object", "null"]},
        "survey": {"type": "object"},
        "snippet": {"type": "string"},
    },
}

_EVENT = {"type": "object", "required": ["id", "ts", "actor", "action"],
          "properties": {"id": {"type": "string"}, "ts": {"type": "number"}, "actor": {"type": "string"},
                         "actor_label": {"type": "string"}, "action": {"type": "string"},
                         "action_label": {"type": "string"},
                         "data": {"type": "string", "description": "the event's data as JSON text (masked)"},
                         "details": {"type": "string", "description": "the same data worded for staff"}}}

_HISTORY = {"type": "object", "required": ["id", "status_label"],
            "properties": {"id": {"type": "string"}, "created_at": {"type": "number"},
                           "status_label": {"type": "string"}, "channel_label": {"type": "string"},
                           "text": {"type": "string"}}}

_QUEUE_ITEM = {"type": "object", "required": ["id", "status", "created_at"],
               "properties": {"id": {"type": "string"}, "channel": {"type": "string"}, "status": _STATUS,
                              "created_at": {"type": "number"}, "emergency": {"type": "boolean"},
                              "priority": {"type": "number"}, "returned": {"type": "boolean"},
                              "urgency": {"type": "string", "enum": ["emergency", "urgent", "normal"]},
                              "duplicates": {"type": "integer"}, "category": {"type": "string"},
                              "department": {"type": "string"}}}

_URGENCY_CHOICE = {"type": ["string", "null"], "enum": ["emergency", "urgent", "normal", "", None],
                   "description": "坐席选定的紧急程度（紧急/加急/一般）；不填：沿用此前坐席的选择，"
                                  "否则按受理时的紧急规则"}

_CONFIRM_IN = {
    "type": "object",
    "required": ["category", "department"],
    "description": "类别、部门、诉求类型须在目录中（或是 AI 建议之一）；category_path 以 category 开头",
    "properties": {
        "category": {"type": ["string", "null"]},
        "department": {"type": ["string", "null"]},
        "type": {"type": ["string", "null"]},
        "street": {"type": ["string", "null"]},
        "address": {"type": "string"},
        "category_path": {"type": ["array", "null"], "items": {"type": "string"}},
        "co_departments": {"type": ["array", "null"], "items": {"type": "string"}},
        "urgency": _URGENCY_CHOICE,
        "urgency_preselected": {"type": "boolean",
                                "description": "true：urgency 是页面预选、坐席未改动的值（沿用此前坐席的选择"
                                               "或紧急规则，停水停电等按水电气热时限）；不填或 false：坐席选定"},
    },
}

_DECIDED = {"type": "object", "required": ["case_id", "status"],
            "properties": {"case_id": {"type": "string"}, "status": _STATUS}}

_DATE = {"type": "string", "description": "YYYY-MM-DD（1970-2200 年）"}
_RATE = {"type": "object", "properties": {"reviewed": {"type": "integer"}, "accepted": {"type": "integer"},
                                          "rate": {"type": ["number", "null"]}}}


def _get(op_id: str, summary: str, body: dict[str, Any], *codes: int, params: list[dict[str, Any]] | None = None,
         ) -> dict[str, Any]:
    return {"get": {"operationId": op_id, "summary": summary, "tags": ["console"], "security": STAFF_READ,
                    "parameters": params or [], "responses": {**ok("ok", body), **staff_errors(*codes)}}}


def _decide(op_id: str, summary: str, body: dict[str, Any] | None, out: dict[str, Any]) -> dict[str, Any]:
    op: dict[str, Any] = {"operationId": op_id, "summary": summary, "tags": ["console"], "security": STAFF_WRITE,
                          "parameters": [CASE_ID_PARAM],
                          "responses": {**ok("done", out), **staff_errors(404, 409)}}
    if body is not None:
        op["requestBody"] = json_body(body)
        op["responses"].update(staff_errors(400, 404, 409, 413, 415, 422))
    return {"post": op}


_INTAKE_IN = {"type": "object", "required": ["text"], "properties": {
    "phone": {"type": "string", "description": "来电号码（无来电显示时留空）"}, "name": {"type": "string"},
    "address": {"type": "string"}, "text": {"type": "string", "description": "诉求内容"},
    "confidential": {"type": "boolean", "description": "来电人要求保密：派单不带姓名、电话和录音"},
    "urgency": {**_URGENCY_CHOICE, "description": "坐席选定的紧急程度；不填则按紧急规则（预览时不采用）"}}}
_PREVIEW = {"type": "object", "required": ["ready"], "properties": {
    "ready": {"type": "boolean", "description": "false: the text is still too short to classify"},
    "phone_ok": {"type": "boolean", "description": "false: the number is malformed; previewed without it"},
    "emergency": {"type": "boolean"}, "advice": {"type": "string", "description": "110/119/120 advice"},
    "urgency": {"type": "object"}, "category_path": {"type": "array", "items": {"type": "string"}},
    "heads": {"type": "object", "additionalProperties": _TOP},
    "duplicates": {"type": "array", "items": {"type": "object", "properties": {
        "case_id": {"type": "string"}, "score": {"type": "number"}, "reason_text": {"type": "string"},
        "status_label": {"type": "string"}, "created_at": {"type": "number"}, "reporter_count": {"type": "integer"},
        "text": {"type": "string"}, "merge": {"type": "boolean"}}}},
    "history": {"type": "array", "items": _HISTORY}}}
_REGISTERED = {"type": "object", "required": ["case_id", "status", "created", "reply"], "properties": {
    "case_id": {"type": "string"}, "status": _STATUS, "created": {"type": "boolean"},
    "merged_into": {"type": "string"}, "reply": {"type": "string"}, "emergency": {"type": "boolean"},
    "needs_confirmation": {"type": "boolean"}, "suggestion": {"type": "object"},
    "case_url": {"type": "string"}, "queue_url": {"type": "string"}}}


def _intake_post(op_id: str, summary: str, out: dict[str, Any], *statuses: int) -> dict[str, Any]:
    params = [{"name": "Idempotency-Key", "in": "header", "schema": {"type": "string", "maxLength": 200}}]
    return {"post": {"operationId": op_id, "summary": summary, "tags": ["console"], "security": STAFF_WRITE,
                     "parameters": params if op_id == "consoleIntake" else [],
                     "requestBody": json_body(_INTAKE_IN),
                     "responses": {**{k: v for st in statuses for k, v in ok("ok", out, st).items()},
                                   **staff_errors(400, 413, 415, 422)}}}


PATHS: dict[str, Any] = {
    "/api/v1/console/intake/preview": _intake_post(
        "consoleIntakePreview", "人工受理：登记前预览分类、紧急程度、疑似重复和来电人历史（不保存）", _PREVIEW, 200),
    "/api/v1/console/intake": _intake_post(
        "consoleIntake", "人工受理：坐席为来电人登记诉求（电话渠道）", _REGISTERED, 201, 200),
    "/api/v1/console/me": _get("consoleMe", "当前登录的工作人员与 CSRF 令牌", {
        "type": "object", "required": ["name", "role", "csrf_token"],
        "properties": {"name": {"type": "string"}, "role": {"type": "string"}, "role_label": {"type": "string"},
                       "display_name": {"type": "string"}, "csrf_token": {"type": "string"}}}),
    "/api/v1/console/queue": _get("consoleQueue", "待确认队列", {
        "type": "object", "required": ["items"], "properties": {"items": {"type": "array", "items": _QUEUE_ITEM}}}),
    "/api/v1/console/catalog": _get("consoleCatalog", "分类、部门、诉求类型目录", {
        "type": "object", "properties": {"categories": {"type": "array"}, "departments": {"type": "array"},
                                         "types": {"type": "array"}, "default_department": {"type": "object"}}}),
    "/api/v1/console/live": {"get": {
        "operationId": "consoleLive", "summary": "案件变化的实时推送（server-sent events）", "tags": ["console"],
        "security": STAFF_READ,
        "responses": {"200": {"description": "event stream: ready, then one change event per case change",
                              "content": {"text/event-stream": {"schema": {"type": "string"}}}},
                      **staff_errors()}}},
    "/api/v1/console/cases/{case_id}": _get(
        "consoleCase", "案件详情与全部处理记录", {**STAFF_CASE, "properties": {
            **STAFF_CASE["properties"], "events": {"type": "array", "items": _EVENT},
            "caller_history": {"type": "array", "description": "the same citizen's other cases, newest first",
                               "items": _HISTORY}}}, 404,
        params=[CASE_ID_PARAM]),
    "/api/v1/console/cases/{case_id}/confirm": _decide("consoleConfirm", "确认或修正 AI 建议并派遣", _CONFIRM_IN, {
        **_DECIDED, "properties": {**_DECIDED["properties"], "classification": {"type": "object"},
                                   "accepted": {"type": "object"}, "correction_recorded": {"type": "boolean"},
                                   "dispatched": {"type": "boolean"}}}),
    "/api/v1/console/cases/{case_id}/merge": _decide(
        "consoleMerge", "将案件并入另一案件（重复诉求）",
        {"type": "object", "required": ["into"], "properties": {"into": {"type": "string"}}},
        {**_DECIDED, "properties": {**_DECIDED["properties"], "duplicate_of": {"type": "string"}}}),
    "/api/v1/console/cases/{case_id}/reject-duplicate": _decide(
        "consoleRejectDuplicate", "否认重复候选",
        {"type": "object", "required": ["candidate"], "properties": {"candidate": {"type": "string"}}},
        {**_DECIDED, "properties": {**_DECIDED["properties"],
                                    "duplicate_candidates": {"type": "array", "items": _NULLABLE_STR}}}),
    "/api/v1/console/cases/{case_id}/unmerge": _decide("consoleUnmerge", "撤销合并", None, _DECIDED),
    "/api/v1/console/search": _get(
        "consoleSearch", "按编号、电话、文字、状态、部门、日期查找案件", {
            "type": "object", "required": ["params", "results", "scanned", "truncated"],
            "properties": {"params": {"type": "object"}, "results": {"type": "array", "items": STAFF_CASE},
                           "scanned": {"type": "integer"}, "truncated": {"type": "boolean"}}}, 400,
        params=[{"name": "q", "in": "query", "schema": {"type": "string"},
                 "description": "案件编号、电话（或尾号）或文字"},
                {"name": "status", "in": "query", "schema": {"type": "string", "enum": ["", *_STATUS["enum"]]}},
                {"name": "department", "in": "query", "schema": {"type": "string"}},
                {"name": "from", "in": "query", "schema": _DATE},
                {"name": "to", "in": "query", "schema": _DATE}]),
    "/api/v1/console/metrics/adoption": _get(
        "consoleAdoption", "AI 建议采纳率（按分类头与坐席）", {
            "type": "object", "required": ["heads", "users"],
            "properties": {"from": {"type": "string"}, "to": {"type": "string"},
                           "heads": {"type": "object", "additionalProperties": _RATE},
                           "users": {"type": "object", "additionalProperties": _RATE}}}, 400,
        params=[{"name": "from", "in": "query", "schema": _DATE}, {"name": "to", "in": "query", "schema": _DATE}]),
}
