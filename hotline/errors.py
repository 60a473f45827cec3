"""Errors a request handler raises to answer with a clear 4xx: ``{"error": {"code", "message"}}``."""

from __future__ import annotations

from hotline.bodies import LoneSurrogate, parse_json


class ApiError(Exception):
    def __init__(self, code: str, message: str, status: int = 422) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.status = status


def decode_json_object(raw: bytes, content_type: str, *, allow_empty: bool = False) -> dict:
    """A request body that must be one JSON object, or the matching 4xx ApiError."""
    if not raw.strip():
        if allow_empty:
            return {}
        raise ApiError("empty_body", "请求内容为空。", 400)
    if content_type != "application/json":
        raise ApiError("unsupported_media_type", "请求须为 application/json。", 415)
    try:
        body = parse_json(raw)
    except LoneSurrogate as exc:
        raise ApiError("bad_json", exc.message, 400) from exc
    except (ValueError, UnicodeDecodeError) as exc:
        raise ApiError("bad_json", "请求内容不是合法的 JSON。", 400) from exc
    if not isinstance(body, dict):
        raise ApiError("bad_body", "请求内容须为 JSON 对象。")
    return body
