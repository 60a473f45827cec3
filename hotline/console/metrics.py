"""AI metrics for supervisors: 采纳率, the share of suggestions call-takers accepted unchanged, per head."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from aiohttp import web

from hotline.access import SUPERVISOR, requires
from hotline.appkeys import STORE
from hotline.console.auth import render_console
from hotline.console.event_text import HEAD_LABELS
from hotline.console.views import json_response
from hotline.dates import parse_day
from hotline.errors import ApiError
from hotline.store.users import ConsoleStats

DEFAULT_DAYS = 7
MAX_DAYS = 366


def _range(request: web.Request) -> tuple[datetime, datetime]:
    tz = request.app[STORE].tz
    today = datetime.now(tz).replace(hour=0, minute=0, second=0, microsecond=0)

    def day(name: str, default: datetime) -> datetime:
        value = request.query.get(name, "")
        if not value:
            return default
        try:
            return parse_day(value, tz)
        except ValueError as exc:
            raise ApiError("bad_date", f"{name} 须为 YYYY-MM-DD 格式的日期。", 400) from exc

    end = day("to", today)
    start = day("from", end - timedelta(days=DEFAULT_DAYS - 1))
    if end < start or (end - start).days >= MAX_DAYS:
        raise ApiError("bad_date", f"日期范围须在 1-{MAX_DAYS} 天之间。", 400)
    return start, end


async def adoption(request: web.Request) -> dict[str, Any]:
    start, end = _range(request)
    return await ConsoleStats(request.app[STORE]).adoption(start, end)


@requires(SUPERVISOR)
async def metrics_page(request: web.Request) -> web.Response:
    data = await adoption(request)
    fmt = {k: f"{v[:4]}-{v[4:6]}-{v[6:]}" for k, v in (("from", data["from"]), ("to", data["to"]))}
    return render_console(request, "console/metrics.html", data=data, head_labels=HEAD_LABELS, range=fmt)


@requires(SUPERVISOR)
async def metrics_json(request: web.Request) -> web.Response:
    return json_response(await adoption(request))
