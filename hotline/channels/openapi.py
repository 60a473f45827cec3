"""The OpenAPI 3.1 document of the JSON API: the citizens' part here, the staff and integration parts beside."""

from __future__ import annotations

from typing import Any

from hotline import __version__
from hotline.channels import openapi_answers, openapi_console, openapi_dispatch, openapi_extensions
from hotline.channels.openapi_common import SECURITY_SCHEMES, errors
from hotline.status import Status

_TOP = {
    "type": "array",
    "items": {"type": "object", "properties": {"label": {"type": "string"}, "p": {"type": "number"}}},
}

_SUGGESTION = {
    "type": "object",
    "properties": {
        "category": {"type": "object", "properties": {"top": _TOP}},
        "department": {"type": "object", "properties": {"top": _TOP}},
        "type": {"type": "object", "properties": {"top": _TOP}},
        "urgency": {"type": "object", "properties": {"level": {"type": "string"}}},
        "needs_confirmation": {"type": "boolean"},
    },
}

# Optional fields may be absent or null (both mean "not given"); an empty contact is no contact.
_COMPLAINT_IN = {
    "type": "object",
    "required": ["text"],
    "properties": {
        "text": {"type": "string", "description": "诉求内容：至少 2 个有效字符（空白、控制字符和不可见字符不计），"
                                                  "UTF-8 不超过 64 KiB；否则 422 或 413", "minLength": 2},
        "address": {"type": ["string", "null"], "maxLength": 500},
        # At least 5 digits (hotline/intake.py MIN_PHONE_DIGITS), said without a lookahead so that schema-based
        # generators can produce it; full-width digits are accepted as well and stored as ASCII.
        "contact": {"type": ["string", "null"], "maxLength": 24,
                    "description": "联系电话（可为空）：至少 5 位数字，可含空格、-、() 和开头的 +；全角数字按半角保存",
                    "pattern": r"^(\+?[\s\-()]*(?:[0-9][\s\-()]*){5,})?$"},
        "name": {"type": ["string", "null"], "maxLength": 50},
        "confidential": {"type": "boolean", "description": "保密：派单时不向承办单位提供姓名、电话", "default": False},
        "channel": {"type": ["string", "null"], "enum": ["web", "api", None]},
        "location": {
            "type": ["object", "null"],
            "required": ["lat", "lon"],
            "properties": {
                "lat": {"type": "number", "minimum": -90, "maximum": 90},
                "lon": {"type": "number", "minimum": -180, "maximum": 180},
                "label": {"type": "string"},
            },
        },
        "attachments": {"type": "array", "maxItems": 20, "description": "links to files the client keeps; "
                        "upload: references are the service's own and refused",
                        "items": {"type": "string", "maxLength": 500, "not": {"pattern": "^upload:"}}},
    },
}

_COMPLAINT_OUT = {
    "type": "object",
    "required": ["case_id", "status", "suggestion"],
    "properties": {
        "case_id": {"type": "string", "examples": ["20261122-000123"]},
        "status": {"type": "string", "enum": [str(s) for s in Status]},
        "created": {"type": "boolean"},
        "merged_into": {"type": "string"},
        "reply": {"type": "string"},
        "emergency": {"type": "boolean"},
        "needs_confirmation": {"type": "boolean"},
        "suggestion": _SUGGESTION,
    },
}

_CASE = {
    "type": "object",
    "required": ["id", "status", "channel", "text", "created_at"],
    "properties": {
        "id": {"type": "string"},
        "status": {"type": "string", "enum": [str(s) for s in Status]},
        "status_label": {"type": "string"},
        "channel": {"type": "string"},
        "text": {"type": "string"},
        "address": {"type": "string"},
        "contact": {"type": "string", "description": "masked, e.g. 138****1234"},
        "created_at": {"type": "number"},
        "updated_at": {"type": "number"},
        "suggestion": _SUGGESTION,
        "classification": {"type": "object"},
        "reporter_count": {"type": "integer"},
        "duplicate_of": {"type": "string"},
        "details_hidden": {"type": "boolean",
                           "description": "true：未给出 last4，只返回办理进度（text 为空，不含地址、位置等内容）"},
    },
}


def openapi_document() -> dict[str, Any]:
    paths = _citizen_paths()
    for part in (openapi_console.PATHS, openapi_dispatch.PATHS, openapi_extensions.PATHS,
                 openapi_answers.PATHS):
        for path, operations in part.items():
            paths.setdefault(path, {}).update(operations)
    return {
        "openapi": "3.1.0",
        "info": {"title": "一号通 citizen hotline API", "version": __version__,
                 "description": "市民接口无需登录；工作人员接口需登录会话（写操作另带 CSRF 令牌）；"
                                "派遣状态回传以 HMAC 签名认证。"},
        "components": {"securitySchemes": SECURITY_SCHEMES},
        "paths": paths,
    }


def _citizen_paths() -> dict[str, Any]:
    return {
        "/api/v1/complaints": {
            "post": {
                "operationId": "createComplaint",
                "summary": "提交诉求",
                "tags": ["citizen"],
                "security": [],
                "parameters": [
                    {"name": "Idempotency-Key", "in": "header", "required": False,
                     "schema": {"type": "string", "maxLength": 200},
                     "description": "同一 Key 重发相同内容：200 与原案件；同一 Key 换了内容：422 "
                                    "idempotency_key_reused（不会返回原案件）"}
                ],
                "requestBody": {"required": True,
                                "content": {"application/json": {"schema": _COMPLAINT_IN}}},
                "responses": {
                    "201": {"description": "case created",
                            "content": {"application/json": {"schema": _COMPLAINT_OUT}}},
                    "200": {"description": "the same request was already accepted",
                            "content": {"application/json": {"schema": _COMPLAINT_OUT}}},
                    **errors(400, 413, 415, 422, 429, 503),
                },
            }
        },
        "/api/v1/cases/{case_id}": {
            "get": {
                "operationId": "getCase",
                "summary": "查询案件",
                "tags": ["citizen"],
                "security": [],
                "parameters": [{"name": "case_id", "in": "path", "required": True,
                                "schema": {"type": "string"}},
                               {"name": "last4", "in": "query", "required": False,
                                "schema": {"type": "string", "pattern": "^[0-9]{4}$"},
                                "description": "联系电话后四位：给出且正确时返回诉求内容（电话遮蔽）；"
                                               "不正确与案件不存在同样回答 404"}],
                "responses": {
                    "200": {"description": "the case's progress; with last4 also its content, contacts masked",
                            "content": {"application/json": {"schema": _CASE}}},
                    **errors(404, 429, 503),
                },
            }
        },
    }
