"""OpenAPI paths of dispatch (the work-order webhook, case listing, dead letters), callbacks (回访), the 三率
and hotspots."""

from __future__ import annotations

from typing import Any

from hotline.channels.openapi_common import (
    CASE_ID_PARAM,
    STAFF_READ,
    STAFF_WRITE,
    errors,
    json_body,
    ok,
    staff_errors,
)
from hotline.dispatch.events import MAX_EVENT_ID_CHARS, MAX_TEXT_CHARS
from hotline.dispatch.service import BACKENDS, EVENT_TYPES
from hotline.dispatch.signing import SIGNATURE_HEADER, TIMESTAMP_HEADER
from hotline.rates import SATISFACTION_LABELS_ZH
from hotline.status import Status
from hotline.store.surveys import ANSWERED, ASKED, FOLLOWUP, MAIN, SCHEDULED, UNREACHABLE
from hotline.surveys import AGENT_OUTCOMES

_STRING = {"type": "string"}
_OPT_STRING = {"type": ["string", "null"]}
_NUMBER = {"type": "number"}
_INT = {"type": "integer"}
_BOOL = {"type": "boolean"}
_OBJECT = {"type": "object"}
_STRINGS = {"type": "array", "items": _STRING}
_STATUS = {"type": "string", "enum": [str(s) for s in Status]}
_CASE_ID_FORM = "^[0-9-]{8,20}$"
# parse_event strips a value before checking it: a required one must keep a character.
_NOT_BLANK = r"\S"


def _obj(properties: dict[str, Any], required: list[str] | None = None) -> dict[str, Any]:
    """An object with these properties, every one of them always present unless ``required`` says which."""
    return {"type": "object", "required": list(properties) if required is None else required,
            "properties": properties}


def _query(name: str, schema: dict[str, Any], description: str, *, allow_empty: bool = False) -> dict[str, Any]:
    param: dict[str, Any] = {"name": name, "in": "query", "required": False, "schema": schema,
                             "description": description}
    if allow_empty:
        param["allowEmptyValue"] = True
    return param


# hotline/dispatch/events.py --------------------------------------------------------------------------

# parse_event trims strings and reads null or "" as absent; a type-specific field is only looked at for
# its type (reply for resolved, reason for returned and extension requests, extension_hours for the latter).
_EVENT_IN: dict[str, Any] = {
    "type": "object",
    "required": ["event_id", "case_id", "type"],
    "properties": {
        "event_id": {"type": "string", "minLength": 1, "maxLength": MAX_EVENT_ID_CHARS, "pattern": _NOT_BLANK,
                     "description": "事件编号，重复推送以此去重"},
        "case_id": {"type": "string", "pattern": _CASE_ID_FORM, "description": "案件编号，如 20261122-000123"},
        "type": {"type": "string", "enum": list(EVENT_TYPES)},
        "order_id": {**_OPT_STRING, "maxLength": 40, "description": "派遣轮次的工单号；属于已结束轮次的事件被忽略"},
        "seq": {"type": ["integer", "null"], "minimum": 0, "maximum": 2**63 - 1,
                "description": "事件序号（整数，按精确值比较）；不晚于已处理序号的事件被忽略"},
        "occurred_at": {"type": ["number", "null"],
                        "description": "Unix 秒（不是毫秒），2000-01-01 至本系统时钟后一天；0 或空：以收到时间计"},
        "reply": {**_OPT_STRING, "maxLength": MAX_TEXT_CHARS, "description": "办结答复（告知市民），resolved 必填"},
        "reason": {**_OPT_STRING, "maxLength": MAX_TEXT_CHARS,
                   "description": "退单或延期理由，returned / extension_requested 必填"},
        "department": {**_OPT_STRING, "maxLength": 100},
        "service_request_id": {**_OPT_STRING, "maxLength": 100, "description": "承办系统自己的工单编号"},
        "extension_hours": {"description": "申请延期的小时数（0.25 ≤ h ≤ 2160），仅 extension_requested 读取"},
    },
    "allOf": [
        {"if": {"required": ["type"], "properties": {"type": {"const": "resolved"}}},
         "then": {"required": ["reply"], "properties": {"reply": {"type": "string", "pattern": _NOT_BLANK}}}},
        {"if": {"required": ["type"], "properties": {"type": {"enum": ["returned", "extension_requested"]}}},
         "then": {"required": ["reason"], "properties": {"reason": {"type": "string", "pattern": _NOT_BLANK}}}},
        {"if": {"required": ["type"], "properties": {"type": {"const": "extension_requested"}}},
         "then": {"required": ["extension_hours"],
                  "properties": {"extension_hours": {"type": "number", "exclusiveMinimum": 0, "maximum": 24 * 90}}}},
    ],
}

_EVENT_OUT = _obj({
    "result": {"type": "string", "enum": ["applied", "ignored", "duplicate"]},
    "case_id": _STRING,
    "status": _STATUS,
    "note": {"type": "string", "description": "忽略或重复的原因"},
})

_SIGNATURE_PARAMS = [
    {"name": TIMESTAMP_HEADER, "in": "header", "required": True,
     "schema": {"type": "string", "pattern": "^[0-9]{1,12}$"},
     "description": "Unix 秒；与服务器时间相差超过 dispatch.event_max_age_s 即 401"},
    {"name": SIGNATURE_HEADER, "in": "header", "required": True,
     "schema": {"type": "string", "pattern": "^sha256=[0-9a-f]{64}$"},
     "description": "sha256=<hex HMAC-SHA256(dispatch.secret, \"<时间戳>.<原始请求体>\")>"},
]

# hotline/dispatch/feature.py -------------------------------------------------------------------------

_REPORT = _obj({"report_id": _STRING, "channel": _STRING, "sender": _STRING, "contact": _STRING, "text": _STRING,
                "received_at": _NUMBER, "score": _NUMBER, "merged_by": _STRING})

# staff_case: the stored record (Case.to_dict, personal data masked by role) plus three derived fields.
_CASE_RECORD = _obj({
    "id": _STRING,
    "channel": _STRING,
    "sender": _STRING,
    "status": _STATUS,
    "status_label": _STRING,
    "created_at": _NUMBER,
    "updated_at": _NUMBER,
    "text": _STRING,
    "normalized_text": _STRING,
    "contact": {"type": "string", "description": "市民电话：回访员在已办结案件上见完整号码，其余遮蔽"},
    "name": _STRING,
    "address": _STRING,
    "location": {"type": ["object", "null"], "required": ["lat", "lon"],
                 "properties": {"lat": _NUMBER, "lon": _NUMBER, "label": _STRING}},
    "audio_ref": _STRING,
    "transcript": _STRING,
    "attachments": _STRINGS,
    "suggestion": _OBJECT,
    "classification": _OBJECT,
    "needs_confirmation": _BOOL,
    "emergency": _BOOL,
    "priority": _INT,
    "duplicate_of": _STRING,
    "duplicate_candidates": {"type": "array", "items": _OBJECT},
    "reports": {"type": "array", "items": _REPORT},
    "reporter_count": _INT,
    "dispatch": {"type": "object", "description": "派遣轮次、工单号、状态、退单与延期记录"},
    "deadline_at": {"type": "number", "description": "办理时限（Unix 秒），未派遣为 0"},
    "overdue": {"type": "boolean", "description": "办理中且已超过时限"},
    "survey": _OBJECT,
    "answer": _OBJECT,
})

_CASES_OUT = _obj({
    "cases": {"type": "array", "items": _CASE_RECORD},
    "total": {"type": "integer", "description": "该状态的案件总数（overdue=1 时不返回）"},
    "overdue": {"type": "boolean", "const": True, "description": "仅 overdue=1 时返回"},
    "limit": _INT,
    "offset": _INT,
}, required=["cases", "limit", "offset"])

_DEAD_LETTER = _obj({
    "dead_id": _STRING,
    "key": {"type": "string", "description": "工单号（幂等键）"},
    "case_id": _STRING,
    "attempts": _INT,
    "error": _STRING,
    "failed_at": _NUMBER,
    "order": {"type": "object", "description": "原工单内容"},
})

_REDRIVEN = _obj({"dead_id": _STRING, "entry_id": _STRING, "order_id": _STRING, "case_id": _STRING})

_STATS = _obj({
    "outbox": _INT,
    "pending": _INT,
    "retrying": _INT,
    "dead": _INT,
    "open_orders": _INT,
    "backend": {"type": "string", "enum": list(BACKENDS)},
    "consumer": {"type": "string", "description": "本进程的投递者（仅 open311 / webhook 后端）"},
    "delivered_here": _INT,
    "failed_attempts_here": _INT,
}, required=["outbox", "pending", "retrying", "dead", "open_orders", "backend"])


def _limit(high: int, default: int) -> dict[str, Any]:
    # _int_param reads an empty value as an absent one.
    return _query("limit", {"type": "integer", "minimum": 1, "maximum": high}, f"条数，空或缺省为 {default}",
                  allow_empty=True)


# hotline/callbacks.py ----------------------------------------------------------------------------------

_NOTE = _obj({"at": _NUMBER, "by": _STRING, "outcome": _STRING, "note": _STRING})

_WORKLIST_ITEM = _obj({
    "case_id": _STRING,
    "rid": {"type": "string", "description": f"回访对象：{MAIN}（案件本人）或并入报告的编号"},
    "round": _INT,
    "since": {"type": "number", "description": "进入待回访列表（或约定回拨）的时间"},
    "channel": _STRING,
    "status": _STATUS,
    "phone": {"type": "string", "description": "回访员看到完整号码，其他角色看到遮蔽号码"},
    "text": {"type": "string", "maxLength": 500},
    "department": _STRING,
    "reply": _STRING,
    "attempts": _INT,
    "agent_attempts": _INT,
    "notes": {"type": "array", "items": _NOTE},
})

_SATISFACTION = {"type": "string", "enum": list(SATISFACTION_LABELS_ZH),
                 "description": " / ".join(f"{k}={v}" for k, v in SATISFACTION_LABELS_ZH.items())}

# post_callback reads the answer fields only for outcome "answered" and note/call_back_at only otherwise.
_CALLBACK_IN: dict[str, Any] = {
    "oneOf": [
        {"type": "object", "required": ["outcome", "resolved", "satisfaction"],
         "properties": {"outcome": {"const": "answered"}, "resolved": _BOOL, "satisfaction": _SATISFACTION,
                        "comment": {"type": "string", "description": "超过 1000 字的部分不保存"}}},
        {"type": "object", "required": ["outcome"],
         "properties": {"outcome": {"type": "string", "enum": [o for o in AGENT_OUTCOMES if o != "answered"]},
                        "note": {"type": "string", "description": "超过 1000 字的部分不保存"},
                        "call_back_at": {"type": "number",
                                         "description": "约定回拨时间（Unix 秒）；call_back_later 须在今后 30 天内"}}},
    ],
}

_CALLBACK_OUT = _obj({
    "result": {"type": "string", "enum": list(AGENT_OUTCOMES)},
    "message": {"type": "string", "description": "answered：告知市民的处理结果"},
    "state": {"type": "string", "enum": [SCHEDULED, ASKED, FOLLOWUP, ANSWERED, UNREACHABLE],
              "description": "其他结果：回访对象的新状态"},
}, required=["result"])

_RATES = _obj({
    "key": {"type": "string", "description": "单位、街道、类别或 ISO 周（2026-W47）"},
    "cases": _INT, "dispatched": _INT, "responded": _INT, "surveyed": _INT, "resolved": _INT,
    "satisfied": _INT, "basic": _INT, "unsatisfied": _INT,
    "response_rate": {"type": ["number", "null"]},
    "resolution_rate": {"type": ["number", "null"]},
    "satisfaction_rate": {"type": ["number", "null"]},
    "score": {"type": ["number", "null"]},
})

_RATES_OUT = _obj({
    "by": {"type": "string", "enum": ["department", "street", "category", "week"]},
    "from": {"type": "string", "description": "YYYY-MM-DD"},
    "to": {"type": "string", "description": "YYYY-MM-DD"},
    "total": _RATES,
    "items": {"type": "array", "items": _RATES},
    "generated_at": _NUMBER,
})

# The range rule (from ≤ to, at most 366 days, defaults relative to today) spans two parameters.
_DAY = {"type": "string", "description": "YYYY-MM-DD（1970-2200 年）；空或缺省为默认值"}

# hotline/channels/hotspots_api.py ----------------------------------------------------------------------

_HOTSPOT = _obj({
    "id": _STRING,
    "place": _STRING,
    "category": _STRING,
    "case_ids": _STRINGS,
    "open_case_ids": _STRINGS,
    "reporters": _INT,
    "status": {"type": "string", "enum": ["open", "closed"]},
    "opened_at": _NUMBER,
    "updated_at": _NUMBER,
    "closed_at": {"type": "number", "description": "未关闭为 0"},
})

PATHS: dict[str, dict[str, Any]] = {
    "/api/v1/dispatch/events": {"post": {
        "operationId": "postDispatchEvent",
        "summary": "承办系统回传工单状态（签名 webhook）",
        "description": "签名缺失、错误或过期（或未配置 dispatch.secret）时 401，此时不解析请求体。"
                       "409 只表示事件与案件状态矛盾（invalid_transition），可丢弃；503 busy（带 Retry-After）"
                       "表示未处理，请原样重发。",
        "tags": ["dispatch"],
        "security": [],
        "parameters": _SIGNATURE_PARAMS,
        "requestBody": json_body(_EVENT_IN),
        "responses": {**ok("applied, ignored or duplicate", _EVENT_OUT),
                      **errors(400, 401, 404, 409, 413, 415, 422, 503)},
    }},
    "/api/v1/cases": {"get": {
        "operationId": "listCases",
        "summary": "案件列表（按状态，或超时督办）",
        "tags": ["dispatch"],
        "security": STAFF_READ,
        "parameters": [
            # Not an enum: with overdue=1 the server ignores status altogether.
            _query("status", _STRING, f"案件状态（{' / '.join(str(s) for s in Status)}），空为全部；"
                                      "未知状态 400；overdue=1 时不读取"),
            _query("overdue", {"type": "string", "enum": ["", "0", "1"]}, "1：只列超过办理时限的案件"),
            _limit(200, 50),
            _query("offset", {"type": "integer", "minimum": 0, "maximum": 1_000_000}, "跳过条数，空或缺省为 0",
                   allow_empty=True),
        ],
        "responses": {**ok("cases, newest first (overdue: earliest deadline first)", _CASES_OUT),
                      **staff_errors(400)},
    }},
    "/api/v1/dispatch/dead": {"get": {
        "operationId": "listDeadLetters",
        "summary": "投递失败的工单（死信）",
        "tags": ["dispatch"],
        "security": STAFF_READ,
        "parameters": [_limit(1000, 100)],
        "responses": {**ok("dead letters, oldest first",
                           _obj({"dead": {"type": "array", "items": _DEAD_LETTER}, "total": _INT})),
                      **staff_errors(400)},
    }},
    "/api/v1/dispatch/dead/{dead_id}/redrive": {"post": {
        "operationId": "redriveDeadLetter",
        "summary": "重新投递一条死信",
        "tags": ["dispatch"],
        "security": STAFF_WRITE,
        "parameters": [{"name": "dead_id", "in": "path", "required": True,
                        "schema": {"type": "string", "pattern": "^[0-9]{1,20}-[0-9]{1,20}$"},
                        "description": "死信编号（GET /api/v1/dispatch/dead 的 dead_id，两段均小于 2^64）；"
                                       "格式不符或不存在 404"}],
        # 413: without the CSRF header, the auth middleware reads a form body for the token.
        "responses": {**ok("back in the outbox", _REDRIVEN), **staff_errors(404, 413)},
    }},
    "/api/v1/dispatch/stats": {"get": {
        "operationId": "dispatchStats",
        "summary": "派遣队列统计",
        "tags": ["dispatch"],
        "security": STAFF_READ,
        "responses": {**ok("outbox counters", _STATS), **staff_errors()},
    }},
    "/api/v1/callbacks": {"get": {
        "operationId": "listCallbacks",
        "summary": "待人工回访列表",
        "tags": ["callbacks"],
        "security": STAFF_READ,
        "responses": {**ok("worklist, longest waiting first",
                           _obj({"items": {"type": "array", "items": _WORKLIST_ITEM}})),
                      **staff_errors()},
    }},
    "/api/v1/callbacks/{case_id}/{rid}": {"post": {
        "operationId": "recordCallback",
        "summary": "记录人工回访结果",
        "tags": ["callbacks"],
        "security": STAFF_WRITE,
        "parameters": [
            {**CASE_ID_PARAM, "schema": {"type": "string", "pattern": _CASE_ID_FORM},
             "description": f"{CASE_ID_PARAM['description']}；格式不符 404"},
            {"name": "rid", "in": "path", "required": True,
             "schema": {"anyOf": [{"const": MAIN}, {"type": "string", "pattern": _CASE_ID_FORM}]},
             "description": f"{MAIN}（案件本人）或并入报告的编号；格式不符 404"},
        ],
        "requestBody": json_body(_CALLBACK_IN),
        "responses": {**ok("recorded", _CALLBACK_OUT), **staff_errors(400, 404, 409, 413, 415, 422)},
    }},
    "/api/v1/metrics/rates": {"get": {
        "operationId": "getRates",
        "summary": "三率（响应率、解决率、满意率）与排名",
        "tags": ["callbacks"],
        "security": STAFF_READ,
        "parameters": [
            _query("by", {"type": "string", "enum": ["department", "street", "category", "week"]},
                   "分组，默认 department"),
            _query("from", _DAY, "起始日，默认 30 天前；区间不超过一年且起始不晚于结束，否则 400"),
            _query("to", _DAY, "结束日（含），默认今天"),
            _query("format", _STRING, "csv：下载 CSV（UTF-8 带 BOM）；其他值为 JSON"),
        ],
        "responses": {
            "200": {"description": "rates per group: ranked (week: in order), and the total",
                    "content": {"application/json": {"schema": _RATES_OUT},
                                "text/csv": {"schema": {"type": "string"}}}},
            **staff_errors(400),
        },
    }},
    "/api/v1/hotspots": {"get": {
        "operationId": "listHotspots",
        "summary": "热点（同一地点多人反映的同类问题）",
        "description": "只含地点、类别、人数与案件编号，无需登录。",
        "tags": ["hotspots"],
        "security": [],
        "parameters": [
            _query("status", {"type": "string", "enum": ["open", "closed", "all"]}, "默认 open"),
            _query("limit", {"type": "integer", "minimum": 1, "maximum": 200}, "条数，默认 50"),
        ],
        "responses": {**ok("hotspots, newest first", _obj({"hotspots": {"type": "array", "items": _HOTSPOT}})),
                      **errors(400, 503)},
    }},
}
