"""Reading request bodies: a hard size limit (also without Content-Length), JSON that cannot crash the parser."""

from __future__ import annotations

import json
from typing import Any

from aiohttp import web
from aiohttp.web_request import FileField
from multidict import MultiDictProxy


async def read_limited(request: web.Request, limit: int) -> bytes:
    if request.content_length is not None and request.content_length > limit:
        raise web.HTTPRequestEntityTooLarge(max_size=limit, actual_size=request.content_length)
    buf = bytearray()
    async for chunk in request.content.iter_chunked(65536):
        buf += chunk
        if len(buf) > limit:
            raise web.HTTPRequestEntityTooLarge(max_size=limit, actual_size=len(buf))
    return bytes(buf)


def parse_json(raw: bytes | str) -> Any:
    """``json.loads`` of bytes from outside: ValueError for anything unreadable, including nesting too deep
    for the parser (``[[[[…`` raises RecursionError, which a ``ValueError`` handler would let through)."""
    try:
        return json.loads(raw)
    except RecursionError as exc:
        raise ValueError("JSON nested too deeply") from exc


async def read_form(request: web.Request) -> MultiDictProxy[str | bytes | FileField]:
    """``request.post()``, with a body that is no readable form (bad multipart boundary, bytes that are not
    UTF-8) answered 400 instead of raising ValueError from the handler."""
    try:
        return await request.post()
    except ValueError as exc:
        raise web.HTTPBadRequest(text="请求内容不是合法的表单。") from exc
