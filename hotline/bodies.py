"""Reading request bodies: a hard size limit (also without Content-Length), JSON that cannot crash the parser."""

from __future__ import annotations

import json
import re
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


# A \ud800–\udfff escape, or such a code point already decoded: only then can a string hold a lone surrogate.
_MAYBE_SURROGATE = re.compile(rb"\\u[dD][89a-fA-F]|\xed[\xa0-\xbf]")


class LoneSurrogate(ValueError):
    """A JSON string holding half of a UTF-16 pair (an emoji cut in two by the client)."""

    message = "请求内容含有无效字符（不成对的 UTF-16 代理项），请检查后重新提交。"


def parse_json(raw: bytes | str) -> Any:
    """``json.loads`` of bytes from outside: ValueError for anything unreadable, including nesting too deep
    for the parser (``[[[[…`` raises RecursionError, which a ``ValueError`` handler would let through) and
    strings holding a lone UTF-16 surrogate (``"\\udc00"`` is valid JSON, but no UTF-8 text: it would fail
    later, when the value is stored or echoed)."""
    try:
        value = json.loads(raw)
    except RecursionError as exc:
        raise ValueError("JSON nested too deeply") from exc
    data = raw if isinstance(raw, bytes | bytearray) else raw.encode("utf-8", "surrogatepass")
    if _MAYBE_SURROGATE.search(data):
        try:
            json.dumps(value, ensure_ascii=False).encode("utf-8")
        except UnicodeEncodeError as exc:
            raise LoneSurrogate("lone surrogate in a JSON string") from exc
    return value


async def read_form(request: web.Request) -> MultiDictProxy[str | bytes | FileField]:
    """``request.post()``, with a body that is no readable form (bad multipart boundary, bytes that are not
    UTF-8) answered 400 instead of raising ValueError from the handler."""
    try:
        return await request.post()
    except (ValueError, LookupError) as exc:  # LookupError: a charset Python does not know
        raise web.HTTPBadRequest(text="请求内容不是合法的表单。") from exc
