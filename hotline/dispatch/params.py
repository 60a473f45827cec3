"""Query parameters of the dispatch staff routes."""

from __future__ import annotations

from aiohttp import web

from hotline.dispatch.service import DispatchError
from hotline.numbers import ascii_digits


def query_int(request: web.Request, name: str, default: int, low: int, high: int) -> int:
    """``name`` as an integer in ``low..high``, ``default`` when absent or empty. ASCII digits only: ``int``
    also takes '٣' or '+5', which no client of ours sends."""
    raw = request.query.get(name)
    if raw is None or raw == "":
        return default
    if not ascii_digits(raw) or not low <= int(raw) <= high:
        raise DispatchError("bad_query", f"参数 {name} 须为 {low} 到 {high} 之间的整数。", 400)
    return int(raw)
