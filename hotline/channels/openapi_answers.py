"""OpenAPI paths of answers for consultations (hotline/channels/answers_api.py).

Staff: a case's suggested answers and sending one, the knowledge-base editor API. Citizens: 是/否 on an
answer they got, authorised by the answer's feedback token.
"""

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
from hotline.nlp.answers import ACTIVE, RETIRED
from hotline.status import Status
from hotline.store.kb import ENTRY_ID_PATTERN

Schema = dict[str, Any]

_STR: Schema = {"type": "string"}
_NUM: Schema = {"type": "number"}
_CASE_STATUS: Schema = {"type": "string", "enum": [str(s) for s in Status]}

# answers_api._valid_case_id: 8–20 characters, digits and "-" only; anything else is answered 404.
_CASE_ID_PARAM: Schema = {**CASE_ID_PARAM, "schema": {"type": "string", "pattern": "^[0-9-]{8,20}$"}}
# A malformed id is answered 404 (path) or 422 (body).
ENTRY_ID = f"^(?:{ENTRY_ID_PATTERN})$"
_ENTRY_ID_PARAM: Schema = {"name": "entry_id", "in": "path", "required": True,
                           "schema": {"type": "string", "pattern": ENTRY_ID},
                           "description": "知识库条目编号，如 kb-000123（导入的条目为 来源:行号）"}

# KBRecord.to_dict (dataclasses.asdict): every field is always present.
_KB_ENTRY_PROPS: dict[str, Schema] = {
    "id": {"type": "string", "pattern": ENTRY_ID},
    "question": _STR,
    "answer": _STR,
    "department": _STR,
    "date": {"type": "string", "description": "答复日期 YYYY-MM-DD（导入的条目可为空）"},
    "status": {"type": "string", "enum": [ACTIVE, RETIRED]},
    "source": {"type": "string", "description": "manual、taidi、dalian …"},
    "source_id": _STR,
    "rev": {"type": "integer", "minimum": 1},
    "created_at": _NUM,
    "created_by": _STR,
    "updated_at": _NUM,
    "updated_by": _STR,
    "retired_at": {"type": "number", "description": "0 表示未停用"},
    "retired_by": _STR,
    "retired_reason": _STR,
}
KB_ENTRY: Schema = {"type": "object", "required": list(_KB_ENTRY_PROPS), "properties": _KB_ENTRY_PROPS}
# Search hits carry their score; plain listing rows do not.
_KB_LIST_ROW: Schema = {**KB_ENTRY, "properties": {**_KB_ENTRY_PROPS, "score": _NUM}}
_KB_ENTRY_OUT: Schema = {"type": "object", "required": ["entry"], "properties": {"entry": KB_ENTRY}}

# Store.events / KnowledgeBase.events rows (Event.to_dict).
_EVENT: Schema = {
    "type": "object",
    "required": ["id", "ts", "actor", "action", "data"],
    "properties": {
        "id": _STR,
        "ts": _NUM,
        "actor": _STR,
        "action": {"type": "string", "description": "created、edited、retired、restored、imported、reimported"},
        "data": {"type": "object", "description": "新增时为条目内容；修改时为各字段的 [旧值, 新值] 及 rev"},
    },
}

# Case.answer as AnswerService._record writes it; the 是/否 adds feedback_at and feedback_by.
_ANSWER_RECORD_PROPS: dict[str, Schema] = {
    "entry_id": _STR,
    "question": _STR,
    "answer": _STR,
    "department": _STR,
    "date": _STR,
    "score": _NUM,
    "mode": {"type": "string", "enum": ["auto", "staff", "web_status"]},
    "answered_at": _NUM,
    "answered_by": _STR,
    "feedback": {"type": "string", "enum": ["", "resolved", "not_resolved"]},
}
ANSWER_RECORD: Schema = {
    "type": "object",
    "required": list(_ANSWER_RECORD_PROPS),
    "properties": {**_ANSWER_RECORD_PROPS, "feedback_at": _NUM, "feedback_by": _STR},
}

# Match.to_dict plus whether it clears the citizen threshold.
_SUGGESTION_PROPS: dict[str, Schema] = {
    "entry_id": _STR,
    "question": _STR,
    "answer": _STR,
    "department": _STR,
    "date": _STR,
    "source": _STR,
    "score": _NUM,
    "similarity": _NUM,
    "age_days": {"type": ["number", "null"], "description": "条目无日期时为 null"},
    "age_factor": _NUM,
    "confident": {"type": "boolean"},
}
_SUGGESTION: Schema = {"type": "object", "required": list(_SUGGESTION_PROPS), "properties": _SUGGESTION_PROPS}

_CASE_ANSWERS_OUT: Schema = {
    "type": "object",
    "required": ["case_id", "consultation", "answers", "threshold", "message", "answered"],
    "properties": {
        "case_id": _STR,
        "consultation": {"type": "boolean"},
        "answers": {"type": "array", "items": _SUGGESTION},
        "threshold": _NUM,
        "message": {"type": "string", "description": "没有合适答复时的提示，否则为空"},
        "answered": {"anyOf": [ANSWER_RECORD, {"type": "null"}], "description": "已直接答复时的答复记录"},
    },
}

# A recipient goes with a channel: both non-empty, or both empty/absent. Whether the channel has a notifier
# depends on the deployment's configuration, so any string is allowed here (an unknown one is a 422).
_SEND_IN: Schema = {
    "type": "object",
    "required": ["entry_id"],
    "properties": {
        "entry_id": {"type": "string", "pattern": ENTRY_ID},
        "channel": {"type": "string", "description": "改发到该渠道（如 wechat、telegram），须与 recipient 同时给出"},
        "recipient": {"type": "string", "description": "该渠道上的接收人（超出 200 字的部分不用）"},
    },
    "examples": [{"entry_id": "kb-000123"}],
    "anyOf": [
        {"properties": {"channel": {"maxLength": 0}, "recipient": {"maxLength": 0}}},
        {"required": ["channel", "recipient"],
         "properties": {"channel": {"minLength": 1}, "recipient": {"minLength": 1}}},
    ],
}
_SEND_OUT: Schema = {
    "type": "object",
    "required": ["case_id", "status", "answer", "delivered"],
    "properties": {
        "case_id": _STR,
        "status": _CASE_STATUS,
        "answer": ANSWER_RECORD,
        "delivered": {"type": "boolean", "description": "答复是否已送达市民（否则等待市民查询）"},
    },
}

_FEEDBACK_IN: Schema = {
    "type": "object",
    "required": ["token", "resolved"],
    "properties": {
        # The token is the first 32 hex digits of an HMAC-SHA256: nothing else can be right.
        "token": {"type": "string", "pattern": "^[0-9a-f]{32}$", "description": "答复时给出的 feedback_token"},
        "resolved": {"type": "boolean", "description": "true：已解决；false：未解决，转为人工办理"},
    },
    "examples": [{"token": "3f2a9c0d4b1e8f7a6c5d4e3f2a1b0c9d", "resolved": True}],
}
_FEEDBACK_OUT: Schema = {
    "type": "object",
    "required": ["case_id", "status", "message", "feedback"],
    "properties": {
        "case_id": _STR,
        "status": _CASE_STATUS,
        "message": _STR,
        "feedback": {"type": "string", "enum": ["", "resolved", "not_resolved"]},
    },
}

# clean_fields checks lengths after stripping blanks and NUL characters, and reads dates in several
# spellings (2019/5/10, 2019年5月10日 …): only what every accepted value satisfies is declared.
_QUESTION: Schema = {"type": "string", "minLength": 1, "description": "问题：去掉首尾空白后非空，不超过 5000 字"}
_ANSWER: Schema = {"type": "string", "minLength": 1, "description": "答复：去掉首尾空白后非空，不超过 10000 字"}
_DEPARTMENT: Schema = {"type": ["string", "null"], "description": "答复单位，不超过 100 字"}
_DATE: Schema = {"type": ["string", "null"], "examples": ["2026-03-01"],
                 "description": "答复日期 YYYY-MM-DD（也可写 2019/5/10 等）；新增时省略则为当天"}
_KB_CREATE_IN: Schema = {
    "type": "object",
    "required": ["question", "answer"],
    "properties": {"question": _QUESTION, "answer": _ANSWER, "department": _DEPARTMENT, "date": _DATE},
    # clean_fields refuses any other field with a 422.
    "additionalProperties": False,
    "examples": [{"question": "居住证怎么办理，需要哪些材料", "answer": "居住证凭身份证和居住证明到派出所办理。",
                  "department": "公安局", "date": "2026-03-01"}],
}
_KB_UPDATE_IN: Schema = {
    "type": "object",
    "properties": {
        "question": _QUESTION,
        "answer": _ANSWER,
        "department": _DEPARTMENT,
        "date": _DATE,
        "rev": {"type": ["integer", "null"], "description": "编辑前读到的版本；与当前版本不同则 409"},
    },
    "additionalProperties": False,
    "examples": [{"answer": "居住证凭身份证、居住证明和一寸照片到社区警务室办理。", "rev": 1}],
}
_KB_RETIRE_IN: Schema = {
    "type": "object",
    "properties": {"reason": {"type": "string", "description": "停用原因（保存前 500 字）"}},
    "examples": [{"reason": "政策调整"}],
}

_KB_LIST_OUT: Schema = {
    "type": "object",
    "required": ["entries", "next_cursor", "total", "version"],
    "properties": {
        "entries": {"type": "array", "items": _KB_LIST_ROW},
        "next_cursor": {"type": ["integer", "null"], "description": "下一页的 cursor；没有下一页或搜索时为 null"},
        "total": {"type": "integer", "description": "全部条目数（含已停用）"},
        "version": {"type": "integer", "description": "知识库版本，每次修改加一"},
    },
}
_KB_DETAIL_OUT: Schema = {
    "type": "object",
    "required": ["entry", "events"],
    "properties": {"entry": KB_ENTRY, "events": {"type": "array", "items": _EVENT}},
}

# cursor and status are only read without q (a search ignores them, whatever they hold), so no
# constraint can be declared on them; limit is checked on every request.
_KB_LIST_PARAMS: list[Schema] = [
    {"name": "q", "in": "query", "required": False, "schema": {"type": "string"},
     "description": "搜索词（只返回在用条目，按相关度排序）；为空则分页列出"},
    {"name": "limit", "in": "query", "required": False, "schema": {"type": "integer", "minimum": 1, "maximum": 200},
     "description": "每页或搜索结果条数，默认 50"},
    {"name": "cursor", "in": "query", "required": False, "schema": {"type": "string"},
     "description": "分页位置：上一页的 next_cursor（0 到 10^9 的整数）；搜索时忽略"},
    {"name": "status", "in": "query", "required": False, "schema": {"type": "string"},
     "description": "all（默认）、active 或 retired；搜索时忽略"},
]

PATHS: dict[str, dict[str, Any]] = {
    "/api/v1/cases/{case_id}/answers": {
        "get": {
            "operationId": "getCaseAnswers",
            "summary": "案件的推荐答复",
            "tags": ["answers"],
            "security": STAFF_READ,
            "parameters": [_CASE_ID_PARAM],
            "responses": {**ok("top suggestions from the knowledge base", _CASE_ANSWERS_OUT), **staff_errors(404)},
        }
    },
    "/api/v1/cases/{case_id}/answer": {
        "post": {
            "operationId": "sendCaseAnswer",
            "summary": "发送答复并以直接答复结案",
            "tags": ["answers"],
            "security": STAFF_WRITE,
            "parameters": [_CASE_ID_PARAM],
            "requestBody": json_body(_SEND_IN),
            "responses": {**ok("answer sent, case answered", _SEND_OUT),
                          **staff_errors(400, 404, 409, 413, 415, 422)},
        }
    },
    "/api/v1/cases/{case_id}/answer/feedback": {
        "post": {
            "operationId": "answerFeedback",
            "summary": "市民反馈答复是否解决问题",
            "tags": ["answers"],
            "security": [],
            "parameters": [_CASE_ID_PARAM],
            "requestBody": json_body(_FEEDBACK_IN),
            "responses": {**ok("feedback recorded (a repeat changes nothing)", _FEEDBACK_OUT),
                          **errors(400, 403, 404, 409, 413, 415, 422, 503)},
        }
    },
    "/api/v1/kb": {
        "get": {
            "operationId": "listKbEntries",
            "summary": "列出或搜索知识库条目",
            "tags": ["kb"],
            "security": STAFF_READ,
            "parameters": _KB_LIST_PARAMS,
            "responses": {**ok("entries", _KB_LIST_OUT), **staff_errors(400)},
        },
        "post": {
            "operationId": "createKbEntry",
            "summary": "新增知识库条目",
            "tags": ["kb"],
            "security": STAFF_WRITE,
            "requestBody": json_body(_KB_CREATE_IN),
            "responses": {**ok("entry created", _KB_ENTRY_OUT, 201), **staff_errors(400, 413, 415, 422)},
        },
    },
    "/api/v1/kb/{entry_id}": {
        "get": {
            "operationId": "getKbEntry",
            "summary": "知识库条目及其修改记录",
            "tags": ["kb"],
            "security": STAFF_READ,
            "parameters": [_ENTRY_ID_PARAM],
            "responses": {**ok("the entry with its audit trail", _KB_DETAIL_OUT), **staff_errors(404)},
        },
        "put": {
            "operationId": "updateKbEntry",
            "summary": "修改知识库条目",
            "tags": ["kb"],
            "security": STAFF_WRITE,
            "parameters": [_ENTRY_ID_PARAM],
            "requestBody": json_body(_KB_UPDATE_IN),
            "responses": {**ok("entry saved (unchanged when nothing differs)", _KB_ENTRY_OUT),
                          **staff_errors(400, 404, 409, 413, 415, 422)},
        },
        "delete": {
            "operationId": "retireKbEntry",
            "summary": "停用知识库条目",
            "description": "软删除：停用的条目不再推荐，但保留审计记录，GET 仍可读到（status 为 retired）。",
            "tags": ["kb"],
            "security": STAFF_WRITE,
            "parameters": [_ENTRY_ID_PARAM],
            "requestBody": json_body(_KB_RETIRE_IN, required=False),
            "responses": {**ok("entry retired (kept for the audit trail)", _KB_ENTRY_OUT),
                          **staff_errors(400, 404, 413, 415, 422)},
        },
    },
}
