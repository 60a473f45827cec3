"""Server-rendered pages: one jinja2 environment with autoescaping, so citizen text is always text."""

from __future__ import annotations

import functools
from datetime import datetime, tzinfo
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import jinja2
from aiohttp import web

from hotline.appkeys import SETTINGS, TEMPLATES

TEMPLATE_DIR = Path(__file__).parent / "templates"
STATIC_DIR = Path(__file__).parent / "static"


def make_environment(timezone: str) -> jinja2.Environment:
    """The pages' environment; ``timezone`` (``intake.timezone``) is the zone the ``datetime`` filter shows times
    in, the same as work orders, notices and Open311 use."""
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(TEMPLATE_DIR),
        autoescape=jinja2.select_autoescape(["html"], default=True),
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["datetime"] = functools.partial(format_ts, tz=ZoneInfo(timezone))
    return env


UNREADABLE_TS = "—"


def page_zone(app: web.Application) -> ZoneInfo:
    """The zone staff and citizens read times in: ``intake.timezone``, as in work orders and Open311."""
    return ZoneInfo(app[SETTINGS]["intake"]["timezone"])


def format_ts(ts: float, tz: tzinfo) -> str:
    """A Unix time as local time in ``tz`` for people; "" when unset, "—" when no calendar date can show it.

    Stored times come from outside too (a backend's ``occurred_at`` in milliseconds, 1e18, NaN): one bad
    value must cost one cell of a page, not the page (``fromtimestamp`` raises ValueError, OverflowError or
    OSError on them)."""
    if not ts:
        return ""
    try:
        return datetime.fromtimestamp(ts, tz).strftime("%Y-%m-%d %H:%M")
    except (ValueError, OverflowError, OSError, TypeError):
        return UNREADABLE_TS


def render(request: web.Request, name: str, status: int = 200, **context: Any) -> web.Response:
    template = request.app[TEMPLATES].get_template(name)
    return web.Response(text=template.render(**context), status=status, content_type="text/html",
                        charset="utf-8")
