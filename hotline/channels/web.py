"""Web door: the citizen form, the case-status page and the JSON API.

The adapter only turns HTTP into an InboundMessage and the pipeline's answer back into HTTP.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import secrets
from typing import Any

from aiohttp import web
from aiohttp.web_request import FileField

from hotline.answers import intake_offer
from hotline.appkeys import ANSWERS, ATTACHMENTS, INTAKE, SETTINGS, STORE, SURVEYS
from hotline.attachments import PREFIX as UPLOAD_PREFIX
from hotline.attachments import AttachmentError, AttachmentStore
from hotline.bodies import read_form
from hotline.channels.openapi import openapi_document
from hotline.errors import decode_json_object
from hotline.intake import IntakeError, IntakeResult, drop_surrogates, normalise_contact
from hotline.jsontext import dumps
from hotline.limits import LIMITS, client_address
from hotline.numbers import finite_number, typed_digits
from hotline.pages import render
from hotline.progress import PUBLIC_EVENTS, citizen_progress
from hotline.records import Case, InboundMessage, Location, last4, mask_pii
from hotline.status import LABELS_ZH
from hotline.store import CaseNotFound

log = logging.getLogger("hotline.web")

CASE_ID_CHARS = set("0123456789-")


def valid_case_id(case_id: str) -> bool:
    return 8 <= len(case_id) <= 20 and set(case_id) <= CASE_ID_CHARS


def client_address_of(request: web.Request) -> str:
    """The citizen's address as the rate limits see it: behind the documented reverse proxy
    ``request.remote`` is the proxy, the same for every citizen."""
    cfg = request.app.get(LIMITS)
    return client_address(request, cfg.trusted_proxies if cfg is not None else ())


def client_sender(request: web.Request, contact: str) -> str:
    """Who sent an anonymous web complaint: the phone if given, else a hash of the client's address."""
    if contact:
        return normalise_contact(contact)
    digest = hashlib.sha256(f"web\x00{client_address_of(request)}".encode()).hexdigest()[:16]
    return f"web:{digest}"


def api_case_body(result: IntakeResult) -> dict[str, Any]:
    case = result.case
    return {
        "case_id": case.id,
        "status": str(case.status),
        "created": result.created,
        "merged_into": result.merged_into,
        "reply": result.reply,
        "emergency": case.emergency,
        "needs_confirmation": case.needs_confirmation,
        "suggestion": case.suggestion,
    }


def public_case(case: Case) -> dict[str, Any]:
    view = case.public_view()
    view["text"] = mask_pii(view["text"])
    view["normalized_text"] = mask_pii(view["normalized_text"])
    view["transcript"] = mask_pii(view["transcript"])
    view["status_label"] = LABELS_ZH[case.status]
    view.pop("duplicate_candidates", None)
    return view


# JSON API ------------------------------------------------------------------

def _field(body: dict[str, Any], name: str, *, required: bool = False) -> str:
    value = body.get(name)
    if value is None:
        if required:
            raise IntakeError("missing_field", f"缺少字段 {name}。")
        return ""
    if not isinstance(value, str):
        raise IntakeError("bad_field", f"字段 {name} 必须是字符串。")
    return drop_surrogates(value)


def _location(body: dict[str, Any]) -> Location | None:
    loc = body.get("location")
    if loc is None:
        return None
    if not isinstance(loc, dict):
        raise IntakeError("bad_location", "location 必须是包含 lat 和 lon 的对象。")
    lat, lon = finite_number(loc.get("lat")), finite_number(loc.get("lon"))
    if lat is None or lon is None:
        raise IntakeError("bad_location", "location.lat 和 location.lon 必须是数字。")
    label = loc.get("label", "")
    if not isinstance(label, str):
        # Refused rather than dropped: the client should learn its place name did not arrive.
        raise IntakeError("bad_location", "location.label 必须是字符串。")
    return Location(lat, lon, drop_surrogates(label))


async def read_json_object(request: web.Request) -> dict[str, Any]:
    # Content type first: a wrong type is the clearer error even for an empty body.
    if request.content_type != "application/json":
        raise IntakeError("unsupported_media_type", "请求须为 application/json。", 415)
    return decode_json_object(await request.read(), request.content_type)


async def post_complaint(request: web.Request) -> web.Response:
    body = await read_json_object(request)
    channel = _field(body, "channel") or "api"
    if channel not in ("web", "api"):
        raise IntakeError("bad_channel", "本接口只接受 web 或 api 渠道。")
    attachments = body.get("attachments", [])
    if not isinstance(attachments, list) or not all(isinstance(a, str) and len(a) <= 500 for a in attachments):
        raise IntakeError("bad_attachments", "attachments 须为字符串数组。")
    # Cleaned before the check below, which "\udc00upload:…" would otherwise pass.
    attachments = [drop_surrogates(a) for a in attachments]
    if any(a.startswith(UPLOAD_PREFIX) for a in attachments):
        # Stored photos are named by the service when they arrive through the form, never by a client.
        raise IntakeError("bad_attachments", "attachments 不能引用本服务保存的照片。")
    contact = _field(body, "contact")
    confidential = body.get("confidential", False)
    if not isinstance(confidential, bool):
        raise IntakeError("bad_field", "字段 confidential 必须是 true 或 false。")
    msg = InboundMessage(
        channel=channel,
        sender=client_sender(request, contact),
        text=_field(body, "text", required=True),
        contact=contact,
        name=_field(body, "name"),
        address=_field(body, "address"),
        location=_location(body),
        attachments=attachments,
        idempotency_key=request.headers.get("Idempotency-Key", ""),
        confidential=confidential,
    )
    result = await request.app[INTAKE].submit(msg)
    body = api_case_body(result)
    # A confident consultation is answered at once (直接答复), with 是否解决了您的问题?
    # (README: Answers for consultations).
    offer = await intake_offer(request.app.get(ANSWERS), result.case, created=result.created)
    body["answer"] = offer.public() if offer else None
    if offer:
        body["status"] = "answered"
    return web.json_response(body, status=201 if result.created else 200, dumps=dumps)


# What a case number alone shows: progress only. Case numbers run in sequence, so anyone could read the
# content of every case one by one.
_PROGRESS_FIELDS = ("id", "status", "status_label", "channel", "created_at", "updated_at", "deadline_at",
                    "priority", "reporter_count", "reports", "duplicate_of")


def contact_proof(case: Case | None, digits: str | None) -> bool | None:
    """None: no ``last4`` given; True: they are the last 4 digits of the case's contact; False: anything else
    (no such case, no contact, other digits), which callers answer like an unknown case number. Full-width
    digits (５６７８) count as the digits they are."""
    if digits is None:
        return None
    typed = typed_digits(digits)
    if case is None or not case.contact or len(typed) != 4:
        return False
    return hmac.compare_digest(last4(case.contact), typed)


async def get_case(request: web.Request) -> web.Response:
    """The case's progress; its content (text, address, place) only with the caller's phone's last 4 digits
    (``?last4=``), as on the status page. Wrong digits and unknown numbers get the same 404."""
    case_id = request.match_info["case_id"]
    if not valid_case_id(case_id):
        raise IntakeError("not_found", "案件不存在。", 404)
    try:
        case = await request.app[STORE].get_case(case_id)
    except CaseNotFound as exc:
        raise IntakeError("not_found", "案件不存在。", 404) from exc
    proof = contact_proof(case, request.query.get("last4"))
    if proof is False:
        raise IntakeError("not_found", "案件不存在。", 404)
    view = public_case(case)
    if proof is None:
        view = {**{k: view[k] for k in _PROGRESS_FIELDS}, "text": "", "details_hidden": True}
    else:
        view["details_hidden"] = False
    return web.json_response(view, dumps=dumps)


async def get_openapi(request: web.Request) -> web.Response:
    return web.json_response(openapi_document(), dumps=dumps)


# Pages ---------------------------------------------------------------------

async def index_page(request: web.Request) -> web.Response:
    return render(request, "index.html", form_token=secrets.token_urlsafe(16), values={}, error="",
                  max_photos=int(request.app[SETTINGS]["intake"]["max_photos"]))


PHOTO_ERRORS = {"too_large": "每张照片不能超过 {size}。", "not_a_photo": "照片须为 JPEG、PNG 或 WebP 格式。"}


def size_text(n: int) -> str:
    return f"{n / 1048576:g} MB" if n >= 1048576 else f"{max(1, n // 1024)} KB"


def _photos(form: Any, limit: int) -> list[bytes]:
    """The photos of the form (file fields named ``photos``); a browser sends an empty part for none."""
    out = []
    for field in form.getall("photos", []):
        if not isinstance(field, FileField):
            continue
        data = field.file.read(limit + 1)
        if data or field.filename:
            out.append(data)
    return out


NOT_A_FILE = "只有“现场照片”可以上传文件；问题描述、地址、联系电话和称呼请直接填写文字。"


async def _save_photos(request: web.Request, photos: list[bytes]) -> list[str]:
    """Keep the photos on disk before the case that names them is created; AttachmentError for a bad one."""
    attachments = request.app[ATTACHMENTS]
    for data in photos:
        attachments.check(data)
    return [await asyncio.to_thread(attachments.save, data) for data in photos]


async def submit_form(request: web.Request) -> web.Response:
    intake_cfg = request.app[SETTINGS]["intake"]
    max_photos, photo_bytes = int(intake_cfg["max_photos"]), int(intake_cfg["max_photo_bytes"])
    # Photos make this one form larger than any other body the service accepts.
    form = await read_form(request.clone(client_max_size=max_photos * photo_bytes + 256 * 1024))

    def text(name: str) -> str:
        # Surrogates too: a part may declare a charset (unicode_escape) that makes them, and the page echoes it.
        value = form.get(name, "")
        return drop_surrogates(value) if isinstance(value, str) else ""

    values = {k: text(k) for k in ("text", "address", "contact", "name")}
    values["confidential"] = "1" if text("confidential") == "1" else ""
    token = text("form_token")

    def again(status: int, error: str) -> web.Response:
        return render(request, "index.html", status=status, form_token=token, values=values, error=error,
                      max_photos=max_photos)

    # A file (or a part of binary type) where words belong would be filed as its Python repr.
    if any(not isinstance(v, str) for k, v in form.items() if k != "photos"):
        return again(422, NOT_A_FILE)

    msg = InboundMessage(
        channel="web",
        sender=client_sender(request, values["contact"]),
        text=values["text"],
        contact=values["contact"],
        name=values["name"],
        address=values["address"],
        idempotency_key=token[:100],
        confidential=values["confidential"] == "1",
        # The token is made per form page: after the browser's Back button it arrives again with whatever the
        # citizen typed next, and a different problem must not be answered with the first one's number.
        key_reuse="new",
    )
    try:
        request.app[INTAKE].validate(msg)  # nothing is written for a complaint that would be refused
        photos = _photos(form, photo_bytes)
        if len(photos) > max_photos:
            return again(422, f"最多上传 {max_photos} 张照片。")
        try:
            msg.attachments = await _save_photos(request, photos)
        except OSError:
            # Disk full or unwritable: nothing is filed, and the citizen is asked to try again shortly.
            log.exception("photo not stored", extra={"event": "photo_store_failed"})
            resp = again(503, "照片暂时无法保存，请稍后再试，或先不附照片提交。")
            resp.headers["Retry-After"] = "30"
            return resp
        result = await request.app[INTAKE].submit(msg)
    except AttachmentError as exc:
        return again(422, PHOTO_ERRORS.get(str(exc), "照片无法读取。").format(size=size_text(photo_bytes)))
    except IntakeError as exc:
        if exc.status == 413:
            raise
        return again(exc.status, exc.message)
    offer = await intake_offer(request.app.get(ANSWERS), result.case, created=result.created)
    if offer is not None:
        return render(request, "answer.html", status=201 if result.created else 200, case=result.case,
                      offer=offer)
    return render(request, "submitted.html", status=201 if result.created else 200, case=result.case,
                  reply=result.reply)


async def status_page(request: web.Request) -> web.Response:
    return render(request, "status.html", case=None, events=[], error="", case_id="", survey_url="")


async def status_lookup(request: web.Request) -> web.Response:
    form = await read_form(request)
    raw_id, raw_digits = form.get("case_id", ""), form.get("last4", "")
    case_id = raw_id.strip() if isinstance(raw_id, str) else ""
    digits = raw_digits if isinstance(raw_digits, str) else ""
    not_found = "未找到该案件，请核对案件编号和手机号后四位。"
    if not valid_case_id(case_id) or len(typed_digits(digits)) != 4:
        return render(request, "status.html", status=404, case=None, events=[], error=not_found,
                      case_id=drop_surrogates(case_id[:20]), survey_url="")
    try:
        case = await request.app[STORE].get_case(case_id)
    except CaseNotFound:
        case = None
    # The same answer for "no such case" and "wrong digits", so numbers cannot be probed.
    if not contact_proof(case, digits) or case is None:
        return render(request, "status.html", status=404, case=None, events=[], error=not_found,
                      case_id=case_id, survey_url="")
    events = [
        {"ts": e.ts, "label": PUBLIC_EVENTS[e.action]}
        for e in await request.app[STORE].events(case.id)
        if e.action in PUBLIC_EVENTS
    ]
    surveys = request.app.get(SURVEYS)
    survey_url = await surveys.pending_link(case.id) if surveys is not None else ""
    return render(request, "status.html", case=public_case(case), events=events, error="", case_id=case_id,
                  survey_url=survey_url, progress=citizen_progress(case))


def setup(app: web.Application) -> None:
    settings = app[SETTINGS]
    app[ATTACHMENTS] = AttachmentStore(settings.data_dir / "attachments",
                                       max_bytes=int(settings["intake"]["max_photo_bytes"]))
    app.router.add_get("/", index_page)
    app.router.add_post("/submit", submit_form)
    app.router.add_get("/status", status_page)
    app.router.add_post("/status", status_lookup)
    app.router.add_post("/api/v1/complaints", post_complaint)
    app.router.add_get("/api/v1/cases/{case_id}", get_case)
    app.router.add_get("/api/v1/openapi.json", get_openapi)
