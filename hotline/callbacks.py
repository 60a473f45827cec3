"""Satisfaction callbacks and the 三率 as an app feature: workers, citizen survey page, staff API."""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
from collections.abc import AsyncIterator
from datetime import datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from aiohttp import web

from hotline import appkeys
from hotline.access import FOLLOW_UP, SUPERVISOR, requires
from hotline.appkeys import NOTIFICATIONS, SETTINGS, STORE, SURVEYS
from hotline.bodies import read_form
from hotline.channels.web import dumps, read_json_object, valid_case_id
from hotline.dates import parse_day
from hotline.numbers import finite_number
from hotline.pages import render
from hotline.rates import compute, ranking, to_csv, total
from hotline.rates_cases import RateSettings, rate_row
from hotline.records import mask_phone
from hotline.secret import service_secret
from hotline.store import CaseNotFound
from hotline.store.cases import FEED_BATCH, FEED_BATCH_S
from hotline.store.surveys import ANSWERED, MAIN
from hotline.surveys import KIND, SATISFACTIONS, CallbackSettings, SurveyError, SurveyService, ended_error
from hotline.tasks import stop_tasks

log = logging.getLogger("hotline.callbacks")

RATE_GROUPINGS = ("department", "street", "category", "week")
MAX_RATE_CASES = 200_000
FEED_POLL_S = 0.5


def staff_user(request: web.Request) -> tuple[str, str]:
    """(name, role) of the logged-in staff member, as set by the console's auth middleware."""
    user = request.get("user")
    if user is None:
        return "staff", ""
    if isinstance(user, dict):
        return str(user.get("name", "staff")), str(user.get("role", ""))
    return str(getattr(user, "name", "staff")), str(getattr(user, "role", ""))


# workers ----------------------------------------------------------------------

async def _feed_worker(app: web.Application, service: SurveyService, consumer: str) -> None:
    """Schedules a survey round whenever the change feed shows a case entering 'resolved'."""
    surveys = service.surveys
    await surveys.ensure_feed_group()
    while True:
        try:
            entries = await surveys.read_feed(consumer, FEED_BATCH)
            if not entries:
                await asyncio.sleep(FEED_POLL_S)
                continue
            for _eid, fields in entries:
                if fields.get("status") not in ("resolved", "answered"):
                    continue
                try:
                    case = await app[STORE].get_case(fields.get("case", ""))
                except CaseNotFound:
                    continue
                await service.schedule(case)
            await surveys.ack_feed([eid for eid, _ in entries])
            if len(entries) < FEED_BATCH:
                await asyncio.sleep(FEED_BATCH_S)
        except asyncio.CancelledError:
            raise
        except Exception:
            # Redis away or a bad entry: wait and go on; unacked entries are read again.
            log.exception("survey feed worker error", extra={"event": "survey_feed_error"})
            await asyncio.sleep(2)


async def _due_worker(service: SurveyService, poll_s: float) -> None:
    while True:
        try:
            await service.run_due()
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("survey worker error", extra={"event": "survey_worker_error"})
        await asyncio.sleep(poll_s)


async def callbacks_ctx(app: web.Application) -> AsyncIterator[None]:
    settings = app[SETTINGS]
    cfg = CallbackSettings.from_settings(settings["callbacks"], settings["intake"]["timezone"])

    async def redispatch(case_id: str, reason: str, actor: str) -> Any:
        key = getattr(appkeys, "DISPATCHER", None)
        dispatcher = app.get(key) if key is not None else None
        if dispatcher is None:
            return None  # stays reopened at the top of the call-takers' queue
        return await dispatcher.redispatch(case_id, reason, actor)

    service = SurveyService(app[STORE], app[NOTIFICATIONS], cfg, service_secret(settings),
                            public_url=settings["server"]["public_url"], redispatch=redispatch)
    app[SURVEYS] = service
    app[NOTIFICATIONS].on_reply(KIND, service.handle_reply)
    consumer = f"{socket.gethostname()}-{os.getpid()}"
    tasks = [asyncio.create_task(_feed_worker(app, service, consumer), name="survey-feed"),
             asyncio.create_task(_due_worker(service, settings["callbacks"]["poll_s"]), name="survey-due")]
    try:
        yield
    finally:
        await stop_tasks(tasks)


# citizen survey page (one-time signed link) -------------------------------------------

async def _survey_target(request: web.Request) -> tuple[SurveyService, str, str, int]:
    service = request.app[SURVEYS]
    case_id, rid, round_ = service.read_link(request.match_info["token"])
    survey = await service.surveys.get(case_id)
    if survey is None or rid not in survey.recipients or survey.round != round_:
        raise SurveyError("link_expired", "回访链接已失效。", 410)
    return service, case_id, rid, round_


async def survey_page(request: web.Request) -> web.Response:
    try:
        service, case_id, rid, _round = await _survey_target(request)
    except SurveyError as exc:
        return render(request, "survey.html", status=exc.status, case_id="", error=exc.message, done="")
    survey = await service.surveys.get(case_id)
    rec = survey.recipients[rid] if survey else None
    if rec is not None and rec.state == ANSWERED:
        return render(request, "survey.html", case_id=case_id, error="", done="您已完成本次回访，感谢您的参与。")
    try:
        # No form for an answer that would be refused (the case reopened since, the citizen unreachable).
        refused = ended_error(rec.state, "web:citizen") if rec is not None else None
        if refused is not None:
            raise refused
        await service.open_for(case_id, rid)
    except SurveyError as exc:
        return render(request, "survey.html", status=exc.status, case_id="", error=exc.message, done="")
    return render(request, "survey.html", case_id=case_id, error="", done="")


async def survey_submit(request: web.Request) -> web.Response:
    try:
        service, case_id, rid, round_ = await _survey_target(request)
    except SurveyError as exc:
        return render(request, "survey.html", status=exc.status, case_id="", error=exc.message, done="")
    form = await read_form(request)
    resolved_raw, satisfaction = str(form.get("resolved", "")), str(form.get("satisfaction", ""))
    if resolved_raw not in ("yes", "no") or satisfaction not in SATISFACTIONS:
        return render(request, "survey.html", status=422, case_id=case_id, error="请选择是否解决和满意度。", done="")
    try:
        text = await service.answer(case_id, rid, resolved=resolved_raw == "yes", satisfaction=satisfaction,
                                    comment=str(form.get("comment", "")), actor="web:citizen", round_=round_)
    except SurveyError as exc:
        return render(request, "survey.html", status=exc.status, case_id=case_id, error=exc.message, done="")
    return render(request, "survey.html", case_id=case_id, error="", done=text)


# staff API ---------------------------------------------------------------------

def worklist_item(row: dict[str, Any], role: str) -> dict[str, Any]:
    case, rec = row["case"], row["recipient"]
    reply = (case.dispatch or {}).get("reply", "")
    return {
        "case_id": case.id, "rid": row["rid"], "round": row["round"], "since": row["since"],
        "channel": rec.channel, "status": str(case.status),
        # Follow-up agents call the citizen; everyone else sees the number masked.
        "phone": rec.contact if role == FOLLOW_UP else mask_phone(rec.contact),
        "text": case.text[:500], "department": (case.classification or {}).get("department", ""),
        "reply": reply, "attempts": rec.attempts, "agent_attempts": rec.agent_attempts, "notes": rec.notes,
    }


@requires(FOLLOW_UP, SUPERVISOR)
async def get_worklist(request: web.Request) -> web.Response:
    _name, role = staff_user(request)
    rows = await request.app[SURVEYS].worklist()
    return web.json_response({"items": [worklist_item(r, role) for r in rows]}, dumps=dumps)


@requires(FOLLOW_UP, SUPERVISOR)
async def post_callback(request: web.Request) -> web.Response:
    case_id, rid = request.match_info["case_id"], request.match_info["rid"]
    if not valid_case_id(case_id) or not (rid == MAIN or valid_case_id(rid)):
        raise web.HTTPNotFound()
    body = await read_json_object(request)
    name, _role = staff_user(request)
    actor = f"staff:{name}"
    service = request.app[SURVEYS]
    outcome = body.get("outcome")
    if outcome == "answered":
        resolved, satisfaction = body.get("resolved"), body.get("satisfaction")
        comment = body.get("comment", "")
        if not isinstance(resolved, bool) or satisfaction not in SATISFACTIONS or not isinstance(comment, str):
            raise SurveyError("bad_answer", "请填写 resolved（true/false）、satisfaction 和 comment（文字）。")
        text = await service.answer(case_id, rid, resolved=resolved, satisfaction=satisfaction, comment=comment,
                                    actor=actor)
        return web.json_response({"result": "answered", "message": text}, dumps=dumps)
    note = body.get("note", "")
    call_back_at = body.get("call_back_at", 0)
    when = finite_number(call_back_at)
    if not isinstance(note, str) or when is None:
        raise SurveyError("bad_body", "note 须为文字，call_back_at 须为时间戳。")
    rec = await service.agent_outcome(case_id, rid, str(outcome), actor, note=note, call_back_at=when)
    return web.json_response({"result": str(outcome), "state": rec.state}, dumps=dumps)


def _day(value: str, tz: ZoneInfo, default: datetime) -> datetime:
    if not value:
        return default
    try:
        return parse_day(value, tz)
    except ValueError as exc:
        raise SurveyError("bad_date", "日期格式须为 YYYY-MM-DD。", 400) from exc


async def rate_rows(request: web.Request, start: float, end: float) -> list:
    store = request.app[STORE]
    cfg = RateSettings.from_settings(request.app[SETTINGS]["rates"])
    ids = await store.case_ids_between(start, end, limit=MAX_RATE_CASES)
    rows = []
    for i in range(0, len(ids), 500):
        chunk = ids[i:i + 500]
        cases = await store.get_cases(chunk)
        events = await store.events_many([c.id for c in cases])
        rows += [r for c in cases if (r := rate_row(c, events[c.id], cfg)) is not None]
    return rows


def rate_window(request: web.Request) -> tuple[datetime, datetime]:
    tz = ZoneInfo(request.app[SETTINGS]["intake"]["timezone"])
    today = datetime.now(tz).replace(hour=0, minute=0, second=0, microsecond=0)
    start = _day(request.query.get("from", ""), tz, today - timedelta(days=30))
    end = _day(request.query.get("to", ""), tz, today) + timedelta(days=1)
    if end <= start or (end - start).days > 366:
        raise SurveyError("bad_range", "统计区间须在一年以内且起始日期不晚于结束日期。", 400)
    return start, end


@requires(SUPERVISOR)
async def get_rates(request: web.Request) -> web.Response:
    by = request.query.get("by", "department")
    if by not in RATE_GROUPINGS:
        raise SurveyError("bad_grouping", "by 须为 department / street / category / week。", 400)
    start, end = rate_window(request)
    cfg = RateSettings.from_settings(request.app[SETTINGS]["rates"])
    rows = await rate_rows(request, start.timestamp(), end.timestamp())
    groups = compute(rows, by, cfg.weights, request.app[SETTINGS]["intake"]["timezone"])
    ranked = sorted(groups, key=lambda r: r.key) if by == "week" else ranking(groups, cfg.min_cases)
    if request.query.get("format") == "csv":
        filename = f"rates-{by}-{start:%Y%m%d}-{(end - timedelta(days=1)):%Y%m%d}.csv"
        # A BOM so that spreadsheet programs read the Chinese headers as UTF-8.
        return web.Response(text="\ufeff" + to_csv(ranked), content_type="text/csv", charset="utf-8",
                            headers={"Content-Disposition": f'attachment; filename="{filename}"'})
    return web.json_response({
        "by": by, "from": f"{start:%Y-%m-%d}", "to": f"{(end - timedelta(days=1)):%Y-%m-%d}",
        "total": total(rows, cfg.weights).to_dict(), "items": [r.to_dict() for r in ranked],
        "generated_at": time.time(),
    }, dumps=dumps)


def setup(app: web.Application) -> None:
    app.cleanup_ctx.append(callbacks_ctx)
    app.router.add_get("/survey/{token}", survey_page)
    app.router.add_post("/survey/{token}", survey_submit)
    app.router.add_get("/api/v1/callbacks", get_worklist)
    app.router.add_post("/api/v1/callbacks/{case_id}/{rid}", post_callback)
    app.router.add_get("/api/v1/metrics/rates", get_rates)
