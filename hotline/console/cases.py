"""The staff case page: the case, who did what when (its audit trail), linked reports, dispatch, deadline."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from hotline.access import CALL_TAKER, FOLLOW_UP, SUPERVISOR, can_see_phone, requires
from hotline.appkeys import ATTACHMENTS, STORE
from hotline.attachments import photo_headers
from hotline.console.auth import render_console, staff_actor
from hotline.console.views import case_view, check_case_id, event_view, history_rows, json_response
from hotline.errors import ApiError
from hotline.pages import page_zone
from hotline.records import Case
from hotline.store import CaseNotFound
from hotline.store.users import User


async def _load(request: web.Request) -> tuple[Case, dict[str, Any]]:
    case_id = check_case_id(request.match_info["case_id"])
    store = request.app[STORE]
    try:
        case = await store.get_case(case_id)
    except CaseNotFound as exc:
        raise ApiError("not_found", "案件不存在。", 404) from exc
    user: User = request["user"]
    if can_see_phone(user, case) and case.contact:
        # Seeing a citizen's full number is itself an audited act.
        await store.add_event(case_id, actor=staff_actor(request), action="phone_viewed", data={})
    tz = page_zone(request.app)
    events = [event_view(e, tz) for e in await store.events(case_id)]
    linked = [c for c in [case.duplicate_of] if c]
    history = history_rows(await store.caller_history(case))
    return case, {"case": case_view(case, user, tz), "events": events, "linked": linked, "history": history}


@requires(CALL_TAKER, FOLLOW_UP, SUPERVISOR)
async def case_page(request: web.Request) -> web.Response:
    _case, ctx = await _load(request)
    return render_console(request, "console/case.html", **ctx)


@requires(CALL_TAKER, FOLLOW_UP, SUPERVISOR)
async def attachment(request: web.Request) -> web.FileResponse:
    """A citizen's photo, for staff only; served as the image type its bytes showed on upload."""
    store = request.app.get(ATTACHMENTS)
    name = request.match_info["name"]
    path = store.path(name) if store is not None else None
    if path is None:
        raise ApiError("not_found", "附件不存在。", 404)
    return web.FileResponse(path, headers=photo_headers(name, "private, max-age=86400"))


@requires(CALL_TAKER, FOLLOW_UP, SUPERVISOR)
async def case_json(request: web.Request) -> web.Response:
    _case, ctx = await _load(request)
    return json_response({**ctx["case"], "events": ctx["events"], "caller_history": ctx["history"]})
