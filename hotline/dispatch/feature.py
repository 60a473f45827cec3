"""The dispatch feature: dispatcher, outbox forwarder, poller and overdue sweep, and their HTTP routes.

Routes:
- ``POST /api/v1/dispatch/events``            signed status events from the backend (hotline/dispatch/events.py)
- ``GET  /api/v1/cases?status=&overdue=1``    staff listing; ``overdue=1`` lists cases past their deadline (督办)
- ``GET  /api/v1/dispatch/dead``              dead letters (supervisors)
- ``POST /api/v1/dispatch/dead/{dead_id}/redrive``  put one dead letter back into the outbox (supervisors)
- ``GET  /api/v1/dispatch/stats``             outbox, pending, retrying, dead and open orders (supervisors)
- ``/api/v1/dispatch/extensions``             pending extension requests, approve / refuse (supervisors;
                                              hotline/dispatch/extensions.py)
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import re
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
from aiohttp import web

from hotline.access import can_see_phone, requires
from hotline.appkeys import ATTACHMENTS, DISPATCHER, INTAKE, NOTIFICATIONS, SETTINGS, STORE
from hotline.attachments import MediaLinks, photo_headers
from hotline.dispatch import extensions
from hotline.dispatch.backends import Open311Backend, WebhookBackend
from hotline.dispatch.events import post_event
from hotline.dispatch.forwarder import Forwarder, ForwarderConfig, consumer_name
from hotline.dispatch.params import query_int
from hotline.dispatch.poller import poll_forever
from hotline.dispatch.service import SUPERVISED_STATES, DispatchConfig, Dispatcher, DispatchError
from hotline.dispatch.tables import DispatchTables, Taxonomy, load_tables
from hotline.records import Case, mask_name, mask_phone
from hotline.secret import service_secret
from hotline.settings import Settings
from hotline.status import LABELS_ZH, parse_status
from hotline.store.outbox import Outbox
from hotline.tasks import stop_tasks

log = logging.getLogger("hotline.dispatch")
dumps = functools.partial(json.dumps, ensure_ascii=False)

DEAD_ID = re.compile(r"[0-9]{1,20}-[0-9]{1,20}")  # [0-9]: \d also matches other scripts' digits
MAX_LIST = 200
FORWARDER: web.AppKey[Forwarder] = web.AppKey("dispatch_forwarder", Forwarder)


def site_tables(settings: Settings) -> DispatchTables:
    """The dispatch tables of this site, with its extra department table when it has one."""
    departments = settings.resolve_path("dispatch.departments_file") if settings["dispatch"].get(
        "departments_file") else None
    return load_tables(settings.resolve_path("dispatch.tables_file"), departments)


def build_dispatcher(settings: Settings, store: Any, notifications: Any) -> Dispatcher:
    cfg = DispatchConfig.from_section(settings["dispatch"])
    tables = site_tables(settings)
    taxonomy = Taxonomy(settings.resolve_path("dispatch.taxonomy_file"))
    media = MediaLinks(settings["server"]["public_url"], service_secret(settings),
                       ttl_s=max(1.0, float(settings["dispatch"]["media_link_days"])) * 86400)
    dispatcher = Dispatcher(store, Outbox(store), notifications, tables, taxonomy, cfg,
                            timezone=settings["intake"]["timezone"], media=media)
    missing = dispatcher.calendar.missing_years(time.time())
    if missing:
        log.warning("the holiday calendar has no dates for %s: working-day time limits count those holidays "
                    "as working days until [calendar] in %s lists them", ", ".join(map(str, missing)),
                    settings.resolve_path("dispatch.tables_file").name)
    return dispatcher


async def media_file(request: web.Request) -> web.FileResponse:
    """A photo of a case, for whoever holds the work order's signed link (the department's system)."""
    name = request.match_info["name"]
    dispatcher, files = request.app.get(DISPATCHER), request.app.get(ATTACHMENTS)
    path = files.path(name) if files is not None else None
    media = dispatcher.media if dispatcher is not None else None
    # One answer for a bad, expired or unknown link: nothing about the files is revealed.
    if path is None or media is None or not media.valid(name, request.query.get("exp", ""),
                                                         request.query.get("sig", ""), time.time()):
        raise DispatchError("not_found", "链接无效或已过期。", 404)
    return web.FileResponse(path, headers=photo_headers(name, "private, max-age=3600"))


def forwarder_config(cfg: DispatchConfig) -> ForwarderConfig:
    return ForwarderConfig(max_attempts=cfg.max_attempts, backoff_base_s=cfg.backoff_base_s,
                           backoff_max_s=cfg.backoff_max_s, claim_idle_s=cfg.claim_idle_s,
                           concurrency=cfg.concurrency)


async def _sweep_forever(dispatcher: Dispatcher, interval_s: float) -> None:
    while True:
        try:
            await dispatcher.recover()
            await dispatcher.flag_overdue()
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("dispatch sweep failed", extra={"event": "dispatch_sweep_failed"})
        await asyncio.sleep(interval_s)


async def dispatch_ctx(app: web.Application) -> AsyncIterator[None]:
    settings = app[SETTINGS]
    dispatcher = build_dispatcher(settings, app[STORE], app[NOTIFICATIONS])
    cfg = dispatcher.cfg
    app[DISPATCHER] = dispatcher
    app[INTAKE].on_created.append(dispatcher.on_case_created)
    session: aiohttp.ClientSession | None = None
    tasks: list[asyncio.Task[None]] = []
    if cfg.backend in ("open311", "webhook"):
        session = aiohttp.ClientSession(headers={"User-Agent": "hotline-dispatch/1"})
        backend: Open311Backend | WebhookBackend
        if cfg.backend == "open311":
            backend = Open311Backend(session, cfg.url, cfg.api_key, dispatcher.tables, cfg.request_timeout_s)
        else:
            backend = WebhookBackend(session, cfg.url, cfg.secret, cfg.request_timeout_s)
        forwarder = Forwarder(dispatcher.outbox, backend, forwarder_config(cfg), consumer=consumer_name(),
                              on_delivered=dispatcher.on_delivered, on_dead=dispatcher.on_dead)
        app[FORWARDER] = forwarder
        tasks.append(asyncio.create_task(forwarder.run(), name="dispatch-forwarder"))
        if isinstance(backend, Open311Backend) and cfg.poll_interval_s > 0:
            tasks.append(asyncio.create_task(poll_forever(dispatcher, backend, cfg.poll_interval_s),
                                             name="dispatch-poller"))
    else:
        # The backend reads the stream with its own consumer group; create ours so stats work.
        await dispatcher.outbox.ensure_group()
    tasks.append(asyncio.create_task(_sweep_forever(dispatcher, cfg.sweep_interval_s), name="dispatch-sweep"))
    try:
        yield
    finally:
        await stop_tasks(tasks)
        if session is not None:
            await session.close()


# staff routes ------------------------------------------------------------------

def staff_case(case: Case, now: float, user: Any) -> dict[str, Any]:
    """The stored record for staff lists, with personal data masked as on the console's pages: the full
    phone number only for a follow-up agent on a case to call back about."""
    data = case.to_dict()
    full = can_see_phone(user, case)
    data["contact"] = case.contact if full else mask_phone(case.contact)
    data["name"] = mask_name(case.name)
    data["sender"] = ""
    for report in data["reports"]:
        report["contact"] = report.get("contact", "") if full else mask_phone(report.get("contact", ""))
        report["sender"] = ""
    data["status_label"] = LABELS_ZH[case.status]
    data["reporter_count"] = case.reporter_count
    # Overdue while the order is being handled: a returned (退单) or reopened case keeps the last round's deadline
    # until it is dispatched again, but no unit is late on it.
    data["overdue"] = case.status in SUPERVISED_STATES and 0 < case.deadline_at < now
    return data


def _stream_id(value: str) -> bool:
    """A Redis stream entry id: two unsigned 64-bit numbers (Redis refuses larger ones with an error)."""
    return bool(DEAD_ID.fullmatch(value)) and all(int(part) < 2**64 for part in value.split("-"))


@requires("call_taker", "follow_up", "supervisor")
async def list_cases(request: web.Request) -> web.Response:
    limit = query_int(request, "limit", 50, 1, MAX_LIST)
    offset = query_int(request, "offset", 0, 0, 1_000_000)
    overdue = request.query.get("overdue", "")
    if overdue not in ("", "0", "1"):
        raise DispatchError("bad_query", "参数 overdue 须为 0 或 1。", 400)
    now = time.time()
    if overdue == "1":
        cases = await request.app[DISPATCHER].overdue(limit=limit, offset=offset)
        return web.json_response({"cases": [staff_case(c, now, request["user"]) for c in cases], "overdue": True,
                                  "limit": limit, "offset": offset}, dumps=dumps)
    status = None
    if request.query.get("status"):
        try:
            status = parse_status(request.query["status"])
        except ValueError as exc:
            raise DispatchError("bad_query", f"未知的状态：{request.query['status'][:30]}", 400) from exc
    store = request.app[STORE]
    ids = await store.case_ids(status=status, offset=offset, limit=limit)
    cases = await store.get_cases(ids)
    return web.json_response({"cases": [staff_case(c, now, request["user"]) for c in cases],
                              "total": await store.count(status), "limit": limit, "offset": offset}, dumps=dumps)


@requires("supervisor")
async def list_dead(request: web.Request) -> web.Response:
    limit = query_int(request, "limit", 100, 1, 1000)
    outbox = request.app[DISPATCHER].outbox
    dead = await outbox.dead_letters(limit)
    return web.json_response({"dead": [_masked_letter(d.to_dict()) for d in dead], "total": await outbox.dead_count()},
                             dumps=dumps)


def _masked_letter(letter: dict[str, Any]) -> dict[str, Any]:
    """A dead letter as supervisors see it: the order keeps the citizen's number for the department, the
    listing shows it masked as the console's pages do."""
    order = letter.get("order")
    citizen = order.get("citizen") if isinstance(order, dict) else None
    if isinstance(citizen, dict):
        letter["order"] = {**order, "citizen": {**citizen, "contact": mask_phone(str(citizen.get("contact") or "")),
                                                "name": mask_name(str(citizen.get("name") or ""))}}
    return letter


@requires("supervisor")
async def redrive_dead(request: web.Request) -> web.Response:
    dead_id = request.match_info["dead_id"]
    if not _stream_id(dead_id):
        raise DispatchError("not_found", "死信不存在。", 404)
    # The audit trail names the supervisor who sent the order again.
    letter, entry = await request.app[DISPATCHER].redrive(dead_id, f"staff:{request['user'].name}")
    return web.json_response({"dead_id": dead_id, "entry_id": entry, "order_id": letter.key,
                              "case_id": letter.case_id}, dumps=dumps)


@requires("supervisor")
async def dispatch_stats(request: web.Request) -> web.Response:
    dispatcher = request.app[DISPATCHER]
    stats = await dispatcher.outbox.stats()
    fwd = request.app.get(FORWARDER)
    if fwd is not None:
        stats.update(consumer=fwd.consumer, delivered_here=fwd.delivered, failed_attempts_here=fwd.failed_attempts)
    stats["backend"] = dispatcher.cfg.backend
    return web.json_response(stats, dumps=dumps)


def setup(app: web.Application) -> None:
    app.cleanup_ctx.append(dispatch_ctx)
    app.router.add_post("/api/v1/dispatch/events", post_event)
    app.router.add_get("/media/{name}", media_file)
    app.router.add_get("/api/v1/cases", list_cases)
    app.router.add_get("/api/v1/dispatch/dead", list_dead)
    app.router.add_post("/api/v1/dispatch/dead/{dead_id}/redrive", redrive_dead)
    app.router.add_get("/api/v1/dispatch/stats", dispatch_stats)
    extensions.setup_routes(app)
