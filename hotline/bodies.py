"""Reading request bodies with a hard size limit, also when the client sends no Content-Length."""

from __future__ import annotations

from aiohttp import web


async def read_limited(request: web.Request, limit: int) -> bytes:
    if request.content_length is not None and request.content_length > limit:
        raise web.HTTPRequestEntityTooLarge(max_size=limit, actual_size=request.content_length)
    buf = bytearray()
    async for chunk in request.content.iter_chunked(65536):
        buf += chunk
        if len(buf) > limit:
            raise web.HTTPRequestEntityTooLarge(max_size=limit, actual_size=len(buf))
    return bytes(buf)
