"""Open311 GeoReport v2 door for third-party apps (JSON format only).

- ``GET  /open311/v2/services.json``          the category tree as services: one per second-level
                                               category, ``group`` = first level, ``keywords`` = third level
- ``POST /open311/v2/requests.json``          a service request, form-encoded (the standard) or JSON; it goes
                                               through the same intake as every other door
- ``GET  /open311/v2/requests/{id}.json``     one request: status open/closed, notes, agency, dates

Errors use the GeoReport form ``[{"code": <http status>, "description": "..."}]``. A request that carries
an ``Idempotency-Key`` header (or the same device/account sending the same words) never creates two cases.
"""

from __future__ import annotations

import functools
import hmac
import json
import math
from collections.abc import AsyncIterator
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

from aiohttp import web

from hotline.appkeys import DISPATCHER, INTAKE, SETTINGS, STORE
from hotline.bodies import LoneSurrogate, parse_json, read_form
from hotline.channels.web import client_address_of, contact_proof, valid_case_id
from hotline.dispatch.tables import Taxonomy
from hotline.intake import IntakeError, drop_surrogates
from hotline.progress import citizen_progress
from hotline.records import Case, InboundMessage, Location, mask_pii
from hotline.status import LABELS_ZH, Status
from hotline.store import CaseNotFound

dumps = functools.partial(json.dumps, ensure_ascii=False)
TAXONOMY: web.AppKey[Taxonomy] = web.AppKey("open311_taxonomy", Taxonomy)

CLOSED_STATES = frozenset({Status.RESOLVED, Status.CLOSED, Status.ANSWERED, Status.MERGED})
MAX_FIELD_CHARS = 500


class Open311Error(Exception):
    def __init__(self, status: int, description: str) -> None:
        super().__init__(description)
        self.status = status
        self.description = description


def error_response(status: int, description: str) -> web.Response:
    return web.json_response([{"code": status, "description": description}], status=status, dumps=dumps)


def services(taxonomy: Taxonomy) -> list[dict[str, Any]]:
    out = []
    for l1, subs in taxonomy.tree().items():
        if not subs:
            out.append({"service_code": l1, "service_name": l1, "description": l1, "metadata": False,
                        "type": "batch", "keywords": "", "group": l1})
        for l2, leaves in subs.items():
            out.append({"service_code": f"{l1}/{l2}", "service_name": l2, "description": f"{l1} · {l2}",
                        "metadata": False, "type": "batch", "keywords": ",".join(dict.fromkeys(leaves)),
                        "group": l1})
    return out


def _iso(ts: float, tz: ZoneInfo) -> str:
    return datetime.fromtimestamp(ts, tz).isoformat(timespec="seconds")


def request_view(case: Case, tz: ZoneInfo, *, details: bool = True) -> dict[str, Any]:
    """What a third party may see of a case: no contact, no name, phone and ID numbers masked; without
    ``details`` (the caller did not prove the contact) no description, reply, address or place either. The unit
    and the time limit as the citizen's status page tells them (hotline/progress.py): the unit once the order
    went out, not while a returned order is re-routed; the time limit only while the unit works on it."""
    d = case.dispatch
    progress = citizen_progress(case)
    notes = LABELS_ZH[case.status]
    if details and d.get("reply") and case.status in (Status.RESOLVED, Status.CLOSED):
        notes = f"{notes}：{d['reply']}"
    elif details and case.status == Status.ANSWERED and case.answer.get("text"):
        notes = f"{notes}：{case.answer['text']}"
    cls = case.classification
    code = "/".join(cls.get("category_path") or []) or cls.get("category", "")
    return {
        "service_request_id": case.id,
        "status": "closed" if case.status in CLOSED_STATES else "open",
        "status_notes": mask_pii(notes),
        "service_name": (cls.get("category_path") or [cls.get("category", "")])[-1] if code else "",
        "service_code": code,
        "description": mask_pii(case.text),
        "agency_responsible": progress.department,
        "service_notice": "",
        "requested_datetime": _iso(case.created_at, tz),
        "updated_datetime": _iso(case.updated_at, tz),
        "expected_datetime": _iso(progress.deadline_at, tz) if progress.deadline_at else None,
        "address": mask_pii(case.address),
        "address_id": None,
        "zipcode": None,
        "lat": case.location.lat if case.location else None,
        "long": case.location.lon if case.location else None,
        "media_url": next((a for a in case.attachments if a.startswith(("http://", "https://"))), None),
    } | ({} if details else {"description": "", "address": "", "lat": None, "long": None, "media_url": None})


async def _form(request: web.Request) -> dict[str, str]:
    ctype = request.content_type
    if ctype == "application/json":
        try:
            body = parse_json(await request.read())
        except LoneSurrogate as exc:
            raise Open311Error(400, exc.message) from exc
        except (ValueError, UnicodeDecodeError) as exc:
            raise Open311Error(400, "请求内容不是合法的 JSON。") from exc
        if not isinstance(body, dict):
            raise Open311Error(400, "请求内容须为 JSON 对象。")
        out = {}
        for k, v in body.items():
            if isinstance(v, bool) or not isinstance(v, str | int | float):
                raise Open311Error(400, f"字段 {k[:40]} 须为字符串或数字。")
            out[k] = str(v)  # parse_json has refused lone surrogates already
        return out
    if ctype in ("application/x-www-form-urlencoded", "multipart/form-data"):
        try:
            form = await read_form(request)
        except web.HTTPBadRequest as exc:
            raise Open311Error(400, "请求内容不是合法的表单。") from exc
        return {drop_surrogates(k): drop_surrogates(v) for k, v in form.items() if isinstance(v, str)}
    raise Open311Error(415, "请求须为 application/x-www-form-urlencoded、multipart/form-data 或 application/json。")


def _coord(form: dict[str, str], name: str, low: float, high: float) -> float:
    try:
        value = float(form[name])
    except ValueError as exc:
        raise Open311Error(400, f"{name} 须为数字。") from exc
    if not math.isfinite(value) or not low <= value <= high:
        raise Open311Error(400, f"{name} 超出范围。")
    return value


def message_from_form(form: dict[str, str], known_codes: set[str], sender_hint: str,
                      idempotency_key: str) -> tuple[InboundMessage, str]:
    for k, v in form.items():
        if len(v) > 65536 or (k != "description" and len(v) > MAX_FIELD_CHARS):
            raise Open311Error(413 if k == "description" else 400, f"字段 {k[:40]} 过长。")
    code = form.get("service_code", "").strip()
    if not code:
        raise Open311Error(400, "缺少 service_code。")
    if known_codes and code not in known_codes:
        raise Open311Error(404, f"未知的 service_code：{code[:60]}")
    has_latlon = bool(form.get("lat")) and bool(form.get("long"))
    if bool(form.get("lat")) != bool(form.get("long")):
        raise Open311Error(400, "lat 和 long 须同时提供。")
    address = form.get("address_string", "").strip()
    if not (has_latlon or address or form.get("address_id")):
        raise Open311Error(400, "须提供位置：lat/long、address_string 或 address_id。")
    location = Location(_coord(form, "lat", -90, 90), _coord(form, "long", -180, 180), address[:200]) \
        if has_latlon else None
    who = form.get("device_id") or form.get("account_id") or form.get("email") or form.get("phone") or sender_hint
    name = " ".join(x for x in (form.get("last_name", "").strip(), form.get("first_name", "").strip()) if x)
    media = form.get("media_url", "").strip()
    msg = InboundMessage(
        channel="open311",
        sender=f"open311:{who}"[:200],
        text=form.get("description", ""),
        contact=form.get("phone", "").strip(),
        name=name[:50],
        address=address or form.get("address_id", "").strip(),
        location=location,
        attachments=[media] if media.startswith(("http://", "https://")) else [],
        idempotency_key=idempotency_key,
        meta={"service_code": code},
    )
    return msg, code


async def get_services(request: web.Request) -> web.Response:
    return web.json_response(services(request.app[TAXONOMY]), dumps=dumps)


async def post_request(request: web.Request) -> web.Response:
    settings = request.app[SETTINGS]
    try:
        form = await _form(request)
        keys = settings["dispatch"]["open311_api_keys"]
        if keys and not any(hmac.compare_digest(form.get("api_key", ""), k) for k in keys):
            raise Open311Error(403, "api_key 无效。")
        known = {s["service_code"] for s in services(request.app[TAXONOMY])}
        msg, code = message_from_form(form, known, client_address_of(request) or "anon",
                                      request.headers.get("Idempotency-Key", ""))
        result = await request.app[INTAKE].submit(msg)
    except Open311Error as exc:
        return error_response(exc.status, exc.description)
    except IntakeError as exc:
        return error_response(exc.status if exc.status != 422 else 400, exc.message)
    if result.created:
        # The citizen's own choice of service, for the call-taker (the classifier decides nothing here).
        await request.app[STORE].add_event(result.case.id, actor="open311:client", action="open311_service",
                                           data={"service_code": code})
    body = [{"service_request_id": result.case.id, "service_notice": result.reply, "account_id": None}]
    return web.json_response(body, status=201 if result.created else 200, dumps=dumps)


async def get_request(request: web.Request) -> web.Response:
    case_id = request.match_info["case_id"]
    if not valid_case_id(case_id):
        return error_response(404, "未找到该服务请求。")
    try:
        case = await request.app[STORE].get_case(case_id)
    except CaseNotFound:
        return error_response(404, "未找到该服务请求。")
    # Case numbers run in sequence: the content only with the last 4 digits of the contact (as the status page).
    proof = contact_proof(case, request.query.get("last4"))
    if proof is False:
        return error_response(404, "未找到该服务请求。")
    tz = ZoneInfo(request.app[SETTINGS]["intake"]["timezone"])
    return web.json_response([request_view(case, tz, details=proof is True)], dumps=dumps)


def setup(app: web.Application) -> None:
    async def taxonomy_ctx(app: web.Application) -> AsyncIterator[None]:
        dispatcher = app.get(DISPATCHER)
        app[TAXONOMY] = dispatcher.taxonomy if dispatcher is not None else Taxonomy(
            app[SETTINGS].resolve_path("dispatch.taxonomy_file"))
        yield

    app.cleanup_ctx.append(taxonomy_ctx)
    app.router.add_get("/open311/v2/services.json", get_services)
    app.router.add_post("/open311/v2/requests.json", post_request)
    app.router.add_get("/open311/v2/requests/{case_id}.json", get_request)
