"""Console pages of the satisfaction callbacks: the follow-up agents' worklist and the supervisors' dashboard.

Both read through the callbacks feature (hotline/callbacks.py) so that the page, the JSON API and the CSV
export show the same numbers; answers are recorded by the worklist script through that feature's JSON API.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any
from urllib.parse import urlencode
from zoneinfo import ZoneInfo

from aiohttp import web

from hotline.access import FOLLOW_UP, SUPERVISOR, requires
from hotline.appkeys import HOTSPOTS, SETTINGS, SURVEYS
from hotline.callbacks import rate_rows, rate_window, staff_user, worklist_item
from hotline.charts import RATE_SERIES, Series, bar_chart, line_chart
from hotline.console.auth import render_console
from hotline.console.event_text import CHANNEL_LABELS
from hotline.rates import Rates, compute, ranking, total
from hotline.rates_cases import RateSettings
from hotline.status import LABELS_ZH as STATUS_LABELS_ZH
from hotline.status import Status
from hotline.surveys import SurveyError

OUTCOME_LABELS_ZH = {"no_answer": "无人接听", "wrong_number": "号码错误", "call_back_later": "稍后回拨"}
RANKED_ROWS_IN_CHART = 15
MAX_HOTSPOTS = 50


def _local(ts: Any, tz: ZoneInfo) -> str:
    try:
        return datetime.fromtimestamp(float(ts), tz).strftime("%Y-%m-%d %H:%M")
    except (TypeError, ValueError, OverflowError, OSError):
        return ""


@requires(FOLLOW_UP, SUPERVISOR)
async def worklist_page(request: web.Request) -> web.Response:
    _name, role = staff_user(request)
    tz = ZoneInfo(request.app[SETTINGS]["intake"]["timezone"])
    items = [worklist_item(r, role) for r in await request.app[SURVEYS].worklist()]
    for item in items:
        item["since_text"] = _local(item["since"], tz)
        item["status_label"] = STATUS_LABELS_ZH.get(Status(item["status"]), item["status"])
        for note in item["notes"]:
            note["at_text"] = _local(note.get("at", 0), tz)
    return render_console(request, "console/callbacks.html", items=items, outcome_labels=OUTCOME_LABELS_ZH,
                          channel_labels=CHANNEL_LABELS, phone_visible=role == FOLLOW_UP)


def _trend(weeks: list[Rates]) -> Any:
    labels = [w.key for w in weeks]
    series = [Series(name, colour, [getattr(w, attr) for w in weeks]) for attr, name, colour in RATE_SERIES]
    return line_chart(labels, series, chart_id="trend-chart")


def _bars(ranked: list[Rates], chart_id: str, title: str) -> Any:
    top = ranked[:RANKED_ROWS_IN_CHART]
    return bar_chart([(r.key, r.score) for r in top], title=title, chart_id=chart_id)


@requires(SUPERVISOR)
async def dashboard_page(request: web.Request) -> web.Response:
    try:
        start, end = rate_window(request)
    except SurveyError as exc:
        return render_console(request, "console/error.html", status=exc.status, code=exc.code, message=exc.message)
    settings = request.app[SETTINGS]
    cfg = RateSettings.from_settings(settings["rates"])
    tz = settings["intake"]["timezone"]
    rows = await rate_rows(request, start.timestamp(), end.timestamp())
    departments = ranking(compute(rows, "department", cfg.weights, tz), cfg.min_cases)
    streets = ranking(compute(rows, "street", cfg.weights, tz), cfg.min_cases)
    weeks = sorted(compute(rows, "week", cfg.weights, tz), key=lambda r: r.key)
    hotspot_service = request.app.get(HOTSPOTS)
    hotspots = await hotspot_service.hs.listing(status="open", limit=MAX_HOTSPOTS) if hotspot_service else []
    window = {"from": f"{start:%Y-%m-%d}", "to": f"{(end - timedelta(days=1)):%Y-%m-%d}"}

    def csv_link(by: str) -> str:
        return "/api/v1/metrics/rates?" + urlencode({"by": by, **window, "format": "csv"})

    return render_console(
        request, "console/dashboard.html", window=window, total=total(rows, cfg.weights),
        departments=departments, streets=streets, weeks=weeks, min_cases=cfg.min_cases,
        trend_chart=_trend(weeks),
        department_chart=_bars(departments, "department-chart", "部门综合得分排名"),
        street_chart=_bars(streets, "street-chart", "街道综合得分排名"),
        csv_links={by: csv_link(by) for by in ("department", "street", "category", "week")},
        hotspots=hotspots, hotspots_available=hotspot_service is not None)


def setup(app: web.Application) -> None:
    app.router.add_get("/console/callbacks", worklist_page)
    app.router.add_get("/console/dashboard", dashboard_page)
