"""The call-takers' confirmation queue: list, case detail, confirm (which dispatches), merge decisions."""

from __future__ import annotations

import importlib
import logging
import re
import time
from typing import Any

from aiohttp import web

from hotline import appkeys
from hotline.access import CALL_TAKER, SUPERVISOR, requires
from hotline.appkeys import SETTINGS, STORE
from hotline.channels.web import read_json_object
from hotline.console.auth import render_console, staff_actor
from hotline.console.catalog import Catalog, CatalogSource
from hotline.console.event_text import HEAD_LABELS
from hotline.console.kb_pages import answer_panel
from hotline.console.views import (
    URGENCY_LABELS,
    URGENCY_LEVELS,
    case_view,
    check_case_id,
    heads_of,
    history_rows,
    json_response,
    suggested_urgency,
    top_labels,
)
from hotline.dispatch.deadlines import BY_CALL_TAKER, BY_RULES, urgency_choice, urgency_of
from hotline.errors import ApiError
from hotline.pages import page_zone
from hotline.records import Case
from hotline.status import IllegalTransition, Status
from hotline.store import CONFIRM_QUEUE_STATES, CaseNotFound, queue_score
from hotline.store.users import HEADS, URGENCY_HEAD, ConsoleStats

log = logging.getLogger("hotline.console")

CATALOG = web.AppKey("console_catalog", CatalogSource)
MAX_LABEL = 100
MAX_ADDRESS = 500
MAX_CO_DEPARTMENTS = 5
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


# reading the queue ---------------------------------------------------------------------

async def queue_cases(request: web.Request) -> list[Case]:
    store = request.app[STORE]
    limit = int(request.app[SETTINGS]["console"]["queue_limit"])
    cases = await store.get_cases(await store.confirm_queue(limit))
    # The index can briefly list a case that already moved on: show only what still waits. The order is the
    # one the records give now (an entry scored before the queue had tiers sorts where it belongs).
    waiting = [c for c in cases if c.status in CONFIRM_QUEUE_STATES]
    return sorted(waiting, key=lambda c: queue_score(c) or 0.0)


def queue_item(case: Case) -> dict[str, Any]:
    tops = top_labels(case)
    return {"id": case.id, "channel": case.channel, "status": str(case.status), "created_at": case.created_at,
            "emergency": case.emergency, "priority": case.priority,
            "urgency": urgency_of(case, case.classification or {}),
            "returned": case.status in (Status.RETURNED, Status.REOPENED),
            "duplicates": len(case.duplicate_candidates), "category": tops["category"],
            "department": tops["department"]}


@requires(CALL_TAKER, SUPERVISOR)
async def queue_page(request: web.Request) -> web.Response:
    cases = await queue_cases(request)
    items = [case_view(c, request["user"], page_zone(request.app)) for c in cases]
    return render_console(request, "console/queue.html", items=items)


@requires(CALL_TAKER, SUPERVISOR)
async def queue_list_fragment(request: web.Request) -> web.Response:
    cases = await queue_cases(request)
    items = [case_view(c, request["user"], page_zone(request.app)) for c in cases]
    return render_console(request, "console/queue_list.html", items=items)


@requires(CALL_TAKER, SUPERVISOR)
async def queue_case_fragment(request: web.Request) -> web.Response:
    case = await _get(request, check_case_id(request.match_info["case_id"]))
    user = request["user"]
    tz = page_zone(request.app)
    view = case_view(case, user, tz)
    ids = [d["case_id"] for d in view["duplicate_candidates"] if d["case_id"]]
    by_id = {c.id: case_view(c, user, tz) for c in await request.app[STORE].get_cases(ids[:3])}
    candidates = [{**d, "case": by_id.get(d["case_id"])} for d in view["duplicate_candidates"][:3]]
    catalog = request.app[CATALOG].get()
    tops = top_labels(case)
    default_dep = tops["department"] or catalog.default_department.get(tops["category"], "")
    history = history_rows(await request.app[STORE].caller_history(case))
    return render_console(request, "console/queue_case.html", case=view, candidates=candidates,
                          in_queue=case.status in CONFIRM_QUEUE_STATES, default_department=default_dep,
                          answers=await answer_panel(request, case), history=history,
                          urgency_labels=URGENCY_LABELS)


@requires(CALL_TAKER, SUPERVISOR)
async def queue_json(request: web.Request) -> web.Response:
    cases = await queue_cases(request)
    return json_response({"items": [queue_item(c) for c in cases]})


@requires(CALL_TAKER, SUPERVISOR)
async def catalog_json(request: web.Request) -> web.Response:
    return json_response(request.app[CATALOG].get().as_json())


# deciding --------------------------------------------------------------------------------

async def _get(request: web.Request, case_id: str) -> Case:
    try:
        return await request.app[STORE].get_case(case_id)
    except CaseNotFound as exc:
        raise ApiError("not_found", "案件不存在。", 404) from exc


def _label(body: dict[str, Any], name: str, *, required: bool) -> str:
    value = body.get(name, "")
    if value is None:
        value = ""
    if not isinstance(value, str):
        raise ApiError("bad_classification", f"{name} 须为文字。")
    value = _CONTROL.sub("", value).strip()
    if required and not value:
        raise ApiError("bad_classification", f"请选择{HEAD_LABELS.get(name, name)}。")
    if len(value) > MAX_LABEL:
        raise ApiError("bad_classification", f"{name} 过长。")
    return value


def parse_classification(body: dict[str, Any], case: Case, catalog: Catalog) -> dict[str, Any]:
    """The call-taker's decision, checked against the known tree and departments (when there are any)."""
    suggested = {h: {r["label"] for r in rows} for h, rows in heads_of(case).items()}
    category = _label(body, "category", required=True)
    department = _label(body, "department", required=True)
    rtype = _label(body, "type", required=False)
    street = _label(body, "street", required=False)
    address = body.get("address", case.address)
    if not isinstance(address, str) or len(address) > MAX_ADDRESS:
        raise ApiError("bad_classification", f"地址须为不超过 {MAX_ADDRESS} 字的文字。")
    address = _CONTROL.sub(" ", address).strip()

    level1 = {c["label"] for c in catalog.categories if c["level"] == 1}
    if level1 and category not in level1 | suggested["category"]:
        raise ApiError("unknown_category", f"类别“{category}”不在分类目录中。")
    path_raw = body.get("category_path") or [category]
    if (not isinstance(path_raw, list) or not 1 <= len(path_raw) <= 3
            or not all(isinstance(x, str) and len(x) <= MAX_LABEL for x in path_raw) or path_raw[0] != category):
        raise ApiError("bad_classification", "category_path 须为以类别开头的 1-3 级名称。")
    path = [_CONTROL.sub("", x).strip() for x in path_raw]
    if len(path) > 1 and catalog.categories and tuple(path) not in catalog.category_paths:
        raise ApiError("unknown_category", "所选分类路径不在分类目录中。")

    known_deps = set(catalog.departments)
    allowed_deps = known_deps | suggested["department"]
    if known_deps and department not in allowed_deps:
        raise ApiError("unknown_department", f"部门“{department}”不在部门目录中。")
    co_raw = body.get("co_departments", [])
    if not isinstance(co_raw, list) or len(co_raw) > MAX_CO_DEPARTMENTS:
        raise ApiError("bad_classification", f"协办部门最多 {MAX_CO_DEPARTMENTS} 个。")
    co: list[str] = []
    for item in co_raw:
        if not isinstance(item, str) or len(item) > MAX_LABEL:
            raise ApiError("bad_classification", "协办部门须为文字。")
        item = _CONTROL.sub("", item).strip()
        if not item or item == department or item in co:
            continue
        if known_deps and item not in allowed_deps:
            raise ApiError("unknown_department", f"部门“{item}”不在部门目录中。")
        co.append(item)
    if rtype and catalog.types and rtype not in set(catalog.types) | suggested["type"]:
        raise ApiError("unknown_type", f"诉求类型“{rtype}”不在目录中。")
    return {"category": category, "category_path": path, "department": department, "co_departments": co,
            "street": street, "type": rtype, "address": address, "urgency": chosen_urgency(body, case)}


def chosen_urgency(body: dict[str, Any], case: Case) -> str:
    """The call-taker's urgency (emergency / urgent / normal). Not given, or given as the page pre-selected it
    without the call-taker touching it (``urgency_preselected``): the one a call-taker chose earlier (人工受理,
    or the round before a return), else "" and the dispatcher takes intake's rules."""
    earlier, by_person = urgency_choice(case, {})
    earlier = earlier if by_person and earlier in URGENCY_LEVELS else ""
    value = body.get("urgency")
    if value is None or value == "":
        return earlier
    if value not in URGENCY_LEVELS:
        raise ApiError("bad_classification", "紧急程度须为 emergency（紧急）、urgent（加急）或 normal（一般）。")
    if body.get("urgency_preselected") is True and value == urgency_of(case, case.classification or {}):
        return earlier
    return str(value)


def _dispatcher(app: web.Application) -> Any:
    key = getattr(appkeys, "DISPATCHER", None)
    return app.get(key) if key is not None else None


async def _record_correction(request: web.Request, case: Case, labels: dict[str, str], suggested: dict[str, str],
                             actor: str) -> bool:
    """Every confirmation is a labelled example for retraining (hotline/store/corrections.py, when installed).

    The case is already confirmed and dispatched here: a failure is logged, never turned into an error.
    """
    try:
        module = importlib.import_module("hotline.store.corrections")
    except ImportError:
        return False
    try:
        await module.Corrections(request.app[STORE]).record(case.id, case.text, labels,
                                                            {h: v for h, v in suggested.items() if v}, actor)
    except Exception:
        log.exception("correction not recorded", extra={"event": "correction_failed", "case_id": case.id})
        return False
    return True


@requires(CALL_TAKER, SUPERVISOR)
async def confirm(request: web.Request) -> web.Response:
    case_id = check_case_id(request.match_info["case_id"])
    body = await read_json_object(request)
    store = request.app[STORE]
    actor = staff_actor(request)
    user = request["user"]
    case = await _get(request, case_id)
    if case.status not in CONFIRM_QUEUE_STATES:
        raise ApiError("not_waiting", f"案件 {case_id} 已不在待确认队列（当前：{case.status}），可能已由他人处理。",
                       409)
    classification = parse_classification(body, case, request.app[CATALOG].get())
    suggested = top_labels(case)
    accepted = {h: classification[h] == suggested[h] for h in HEADS if suggested[h]}
    # The urgency is reviewed like a head when the call-taker gave one (the console always does): the rules'
    # level against the choice, in the audit trail, the corrections and the 采纳率.
    labels = {h: classification[h] for h in HEADS}
    if body.get("urgency"):
        # What the call-taker confirmed, also when it was the page's pre-selection (left to the rules then).
        reviewed = str(body["urgency"])
        suggested = {**suggested, URGENCY_HEAD: suggested_urgency(case)}
        accepted[URGENCY_HEAD] = reviewed == suggested[URGENCY_HEAD]
        labels[URGENCY_HEAD] = reviewed

    dispatcher = _dispatcher(request.app)
    try:
        if dispatcher is not None:
            case = await dispatcher.confirm(case_id, classification, actor)
        else:
            def apply(c: Case) -> dict[str, Any]:
                urgency, chosen = urgency_choice(c, classification)
                c.classification = {**c.classification, **classification, "urgency": urgency,
                                    "urgency_by": BY_CALL_TAKER if chosen else BY_RULES}
                c.emergency = c.classification["urgency"] == "emergency"
                c.address = classification["address"]
                c.needs_confirmation = False
                return {"classification": classification}

            case = await store.update_case(case_id, apply, actor=actor, action="confirmed", target=Status.CONFIRMED)
    except IllegalTransition as exc:
        raise ApiError("not_waiting", f"案件 {case_id} 已由他人处理（当前：{exc.current}）。", 409) from exc
    except CaseNotFound as exc:
        raise ApiError("not_found", "案件不存在。", 404) from exc

    changed = {h: {"suggested": suggested[h], "chosen": labels[h]} for h, ok in accepted.items() if not ok}
    await store.add_event(case_id, actor=actor, action="ai_reviewed",
                          data={"accepted": accepted, "changed": changed})
    await ConsoleStats(store).record_review(user.name, accepted, time.time())
    if URGENCY_HEAD in changed and changed[URGENCY_HEAD]["suggested"] == "emergency":
        # The call-taker decides, but an emergency the rules raised and a person lowered is worth a line.
        log.info("emergency lowered by call-taker", extra={"event": "emergency_lowered", "case_id": case_id,
                                                              "user": user.name,
                                                              "urgency": changed[URGENCY_HEAD]["chosen"]})
    recorded = await _record_correction(request, case, labels, suggested, actor)
    log.info("case confirmed", extra={"event": "staff_confirmed", "case_id": case_id, "user": user.name,
                                      "accepted": all(accepted.values()) if accepted else None})
    return json_response({"case_id": case.id, "status": str(case.status), "classification": case.classification,
                          "accepted": accepted, "correction_recorded": recorded,
                          "dispatched": case.status == Status.DISPATCHED})


def _dedup(request: web.Request) -> Any:
    service = request.app.get(appkeys.DEDUP)
    if service is None:
        raise ApiError("unavailable", "查重服务未启用。", 503)
    return service


@requires(CALL_TAKER, SUPERVISOR)
async def merge(request: web.Request) -> web.Response:
    case_id = check_case_id(request.match_info["case_id"])
    body = await read_json_object(request)
    into = body.get("into")
    if not isinstance(into, str):
        raise ApiError("bad_body", "请给出要并入的案件编号 into。")
    check_case_id(into)
    case = await _dedup(request).confirm_merge(case_id, into, staff_actor(request))
    return json_response({"case_id": case.id, "status": str(case.status), "duplicate_of": case.duplicate_of})


@requires(CALL_TAKER, SUPERVISOR)
async def reject_duplicate(request: web.Request) -> web.Response:
    case_id = check_case_id(request.match_info["case_id"])
    body = await read_json_object(request)
    candidate = body.get("candidate")
    if not isinstance(candidate, str):
        raise ApiError("bad_body", "请给出被否认的候选案件编号 candidate。")
    check_case_id(candidate)
    case = await _dedup(request).reject(case_id, candidate, staff_actor(request))
    return json_response({"case_id": case.id, "status": str(case.status),
                          "duplicate_candidates": [d.get("case_id") for d in case.duplicate_candidates]})


@requires(CALL_TAKER, SUPERVISOR)
async def unmerge(request: web.Request) -> web.Response:
    case_id = check_case_id(request.match_info["case_id"])
    case = await _dedup(request).unmerge(case_id, staff_actor(request))
    return json_response({"case_id": case.id, "status": str(case.status)})
