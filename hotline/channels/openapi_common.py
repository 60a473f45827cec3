"""Pieces shared by the parts of the OpenAPI document: the error body, staff security, common parameters."""

from __future__ import annotations

from typing import Any

ERROR = {
    "type": "object",
    "required": ["error"],
    "properties": {
        "error": {
            "type": "object",
            "required": ["code", "message"],
            "properties": {"code": {"type": "string"}, "message": {"type": "string"}},
        }
    },
}

# Staff routes: the console session cookie; a state-changing request also carries the session's CSRF token.
SECURITY_SCHEMES: dict[str, Any] = {
    "staffSession": {"type": "apiKey", "in": "cookie", "name": "hl_staff",
                     "description": "坐席/回访/班长登录后的会话（POST /console/login 设置）"},
    "csrfToken": {"type": "apiKey", "in": "header", "name": "X-CSRF-Token",
                  "description": "会话的 CSRF 令牌（GET /api/v1/console/me 的 csrf_token）；POST/PUT/DELETE 必带"},
}
STAFF_READ: list[dict[str, list[str]]] = [{"staffSession": []}]
STAFF_WRITE: list[dict[str, list[str]]] = [{"staffSession": [], "csrfToken": []}]

CASE_ID_PARAM = {"name": "case_id", "in": "path", "required": True, "schema": {"type": "string"},
                 "description": "案件编号，如 20261122-000123"}


def errors(*codes: int) -> dict[str, Any]:
    return {
        str(code): {"description": "error", "content": {"application/json": {"schema": ERROR}}}
        for code in codes
    }


def ok(description: str, schema: dict[str, Any], status: int = 200) -> dict[str, Any]:
    return {str(status): {"description": description, "content": {"application/json": {"schema": schema}}}}


def json_body(schema: dict[str, Any], *, required: bool = True) -> dict[str, Any]:
    return {"required": required, "content": {"application/json": {"schema": schema}}}


def staff_errors(*codes: int) -> dict[str, Any]:
    """Every staff route can answer 401 (no session), 403 (role, CSRF) and 503 (store down)."""
    return errors(*sorted({401, 403, 503, *codes}))
