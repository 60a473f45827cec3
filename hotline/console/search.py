"""Case search for staff: case number, phone number, text, status, department, date range.

A case number is looked up directly. Everything else scans the cases created in the date range, newest
first, up to ``console.search_scan_limit`` (the page says when the scan stopped early), and filters them:
a hotline's few thousand cases a day are scanned faster than a second index could be kept right. (The caller
index holds hashes of whole numbers, so it cannot answer "ends with 3333" either.)

A query of 7-20 digits is a phone number, matched whole or as the end of a case's or a merged reporter's
number. 4-6 digits are what a citizen reads out as "尾号": the cases whose number ends with them, together
with the cases whose text holds them (a house number, a year).
"""

from __future__ import annotations

import re
from datetime import datetime, timedelta
from typing import Any

from aiohttp import web

from hotline.access import CALL_TAKER, FOLLOW_UP, SUPERVISOR, requires
from hotline.appkeys import SETTINGS, STORE
from hotline.console.auth import render_console
from hotline.console.views import case_view, json_response, top_labels
from hotline.dates import parse_day
from hotline.errors import ApiError
from hotline.numbers import digits_of
from hotline.pages import page_zone
from hotline.records import Case, mask_pii
from hotline.status import LABELS_ZH, Status
from hotline.store import CaseNotFound
from hotline.store.users import ConsoleStats

MAX_RESULTS = 200
BATCH = 500
_CASE_ID = re.compile(r"^\d{8}-\d{6}$")
_PHONE_QUERY = re.compile(r"^\+?[\d\s\-]{7,20}$")
# 尾号: the last 4-6 digits of a phone (full-width digits typed with a Chinese input method included).
_PHONE_SUFFIX = re.compile(r"^\d{4,6}$")


def _date(value: str, tz: Any, name: str) -> datetime | None:
    if not value:
        return None
    try:
        return parse_day(value, tz)
    except ValueError as exc:
        raise ApiError("bad_date", f"{name} 须为 YYYY-MM-DD 格式的日期。", 400) from exc


def parse_params(request: web.Request) -> dict[str, Any]:
    query = request.query
    q = query.get("q", "").strip()[:100]
    status = query.get("status", "")
    if status and status not in {str(s) for s in Status}:
        raise ApiError("bad_status", "未知的案件状态。", 400)
    department = query.get("department", "").strip()[:100]
    store = request.app[STORE]
    tz = store.tz
    today = datetime.now(tz).replace(hour=0, minute=0, second=0, microsecond=0)
    days = int(request.app[SETTINGS]["console"]["search_default_days"])
    start = _date(query.get("from", ""), tz, "起始日期") or today - timedelta(days=days - 1)
    end = _date(query.get("to", ""), tz, "截止日期") or today
    if end < start:
        raise ApiError("bad_date", "截止日期早于起始日期。", 400)
    return {"q": q, "status": status, "department": department, "from": start.strftime("%Y-%m-%d"),
            "to": end.strftime("%Y-%m-%d"), "_start": start.timestamp(),
            "_end": (end + timedelta(days=1)).timestamp()}


def _phone_matches(case: Case, want: str) -> bool:
    if len(want) < 4:  # digits no ASCII digit stands for ("-------", "٣٣٣٣") would end every number
        return False
    phones = [digits_of(case.contact), *(digits_of(r.contact) for r in case.reports)]
    return any(p and (p == want or p.endswith(want)) for p in phones)


def matches(case: Case, params: dict[str, Any]) -> bool:
    if params["status"] and str(case.status) != params["status"]:
        return False
    dep = params["department"]
    if dep:
        cls = case.classification or {}
        deps = [str(cls.get("department") or top_labels(case)["department"]), *map(str, cls.get("co_departments")
                                                                                     or [])]
        if not any(dep in d for d in deps):
            return False
    q = params["q"]
    if not q:
        return True
    if _PHONE_QUERY.match(q):
        return _phone_matches(case, digits_of(q))
    # The text as staff see it (numbers masked): a search finds what its results show, so digits typed one more
    # at a time cannot tell a masked number.
    haystack = " ".join([mask_pii(case.text), mask_pii(case.transcript), case.address,
                         *map(str, (case.classification or {}).values())])
    if q in haystack:
        return True
    if not _PHONE_SUFFIX.match(q):
        return False
    return digits_of(q) in haystack or _phone_matches(case, digits_of(q))  # ３７４４ finds 3744号楼 too


async def run_search(request: web.Request, params: dict[str, Any]) -> dict[str, Any]:
    store = request.app[STORE]
    user = request["user"]
    tz = page_zone(request.app)
    q = params["q"]
    if _CASE_ID.match(q):
        try:
            found = [await store.get_case(q)]
        except CaseNotFound:
            found = []
        return {"results": [case_view(c, user, tz) for c in found], "scanned": len(found), "truncated": False}
    limit = int(request.app[SETTINGS]["console"]["search_scan_limit"])
    ids = await ConsoleStats(store).case_ids_newest(params["_start"], params["_end"], limit + 1)
    truncated = len(ids) > limit
    ids = ids[:limit]
    results: list[Case] = []
    for i in range(0, len(ids), BATCH):
        for case in await store.get_cases(ids[i:i + BATCH]):
            if matches(case, params):
                results.append(case)
        if len(results) >= MAX_RESULTS:
            break
    return {"results": [case_view(c, user, tz) for c in results[:MAX_RESULTS]], "scanned": len(ids),
            "truncated": truncated or len(results) > MAX_RESULTS}


def _public(params: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in params.items() if not k.startswith("_")}


@requires(CALL_TAKER, FOLLOW_UP, SUPERVISOR)
async def search_page(request: web.Request) -> web.Response:
    params = parse_params(request)
    searched = any(k in request.query for k in ("q", "status", "department", "from", "to"))
    found = await run_search(request, params) if searched else {"results": [], "scanned": 0, "truncated": False}
    return render_console(request, "console/search.html", params=_public(params), searched=searched,
                          statuses=[(str(s), LABELS_ZH[s]) for s in Status], **found)


@requires(CALL_TAKER, FOLLOW_UP, SUPERVISOR)
async def search_json(request: web.Request) -> web.Response:
    params = parse_params(request)
    found = await run_search(request, params)
    return json_response({"params": _public(params), **found})
