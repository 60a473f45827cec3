"""``GET /api/v1/hotspots``: open (or recent) hotspots as aggregate data.

A hotspot carries place, category, reporter count and case numbers only — no citizen text, names or
contacts — so it is served without a staff login, like the public case-status lookup.
"""

from __future__ import annotations

from aiohttp import web

from hotline.appkeys import HOTSPOTS
from hotline.errors import ApiError
from hotline.numbers import ascii_digits

STATUSES = ("open", "closed", "all")
MAX_LIMIT = 200


async def list_hotspots(request: web.Request) -> web.Response:
    status = request.query.get("status", "open")
    if status not in STATUSES:
        raise ApiError("bad_status", f"status 须为 {'/'.join(STATUSES)} 之一。", 400)
    raw_limit = request.query.get("limit", "50")
    if not ascii_digits(raw_limit) or not 1 <= int(raw_limit) <= MAX_LIMIT:
        raise ApiError("bad_limit", f"limit 须为 1 到 {MAX_LIMIT} 的整数。", 400)
    hotspots = await request.app[HOTSPOTS].hs.listing(status=status, limit=int(raw_limit))
    return web.json_response({"hotspots": [h.to_dict() for h in hotspots]})


def setup(app: web.Application) -> None:
    app.router.add_get("/api/v1/hotspots", list_hotspots)
