"""人工受理: a call-taker registers the complaint of a caller on the line.

Most calls to a 12345 centre are taken by people, not by the phone menu. While the call-taker types, the
page shows what the pipeline would do with the words so far (category, unit, urgency, open cases it
repeats, the caller's earlier cases, knowledge-base answers to a question), so the caller can be told at
once "this is already case …", "call 110 now" or the answer itself. Registering hands the complaint to
the one intake pipeline as a phone complaint (channel ``voice``), with the call-taker in the audit trail.
The PBX or CTI screen-pop opens ``/console/intake?phone=<caller number>``.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from hotline.access import CALL_TAKER, SUPERVISOR, requires
from hotline.appkeys import INTAKE, STORE
from hotline.channels.web import api_case_body, read_json_object
from hotline.console.auth import current_user, render_console
from hotline.console.kb_pages import answer_panel
from hotline.console.views import URGENCY_LEVELS, case_view, history_rows, json_response, match_reasons
from hotline.intake import EMERGENCY_ADVICE, PHONE_PATTERN, IntakeError
from hotline.pages import format_ts, page_zone
from hotline.records import InboundMessage, mask_pii
from hotline.status import LABELS_ZH

CHANNEL = "voice"
NO_CALLER_ID = "unknown"  # the sender of a call without caller id, as the phone menu records it
FIELDS = ("phone", "name", "address", "text")
DUPLICATES_SHOWN = 3
ANSWERS_SHOWN = 2


def _fields(body: dict[str, Any]) -> dict[str, str]:
    if "text" not in body:
        raise IntakeError("missing_field", "缺少字段 text。")
    out = {}
    for name in FIELDS:
        value = body.get(name, "")
        if not isinstance(value, str):
            raise IntakeError("bad_field", f"字段 {name} 必须是字符串。")
        out[name] = value.strip()
    return out


def _message(request: web.Request, body: dict[str, Any]) -> InboundMessage:
    f = _fields(body)
    confidential = body.get("confidential", False)
    if not isinstance(confidential, bool):
        raise IntakeError("bad_field", "字段 confidential 必须是 true 或 false。")
    # The urgency the call-taker chose (the AI's is pre-selected on the page); absent: intake's rules decide.
    urgency = body.get("urgency")
    urgency = "" if urgency is None else urgency
    if not isinstance(urgency, str) or urgency not in ("", *URGENCY_LEVELS):
        raise IntakeError("bad_field", "字段 urgency 须为 emergency（紧急）、urgent（加急）或 normal（一般）。")
    user = current_user(request)
    return InboundMessage(channel=CHANNEL, sender=f["phone"] or NO_CALLER_ID, contact=f["phone"], name=f["name"],
                          address=f["address"], text=f["text"],
                          idempotency_key=request.headers.get("Idempotency-Key", ""),
                          taken_by=user.name if user is not None else "", confidential=confidential,
                          urgency=urgency)


@requires(CALL_TAKER, SUPERVISOR)
async def intake_page(request: web.Request) -> web.Response:
    phone = request.query.get("phone", "").strip()
    # A screen-pop passes the caller's number; anything else in the link is dropped, not echoed.
    return render_console(request, "console/intake.html", phone=phone if PHONE_PATTERN.match(phone) else "")


@requires(CALL_TAKER, SUPERVISOR)
async def preview(request: web.Request) -> web.Response:
    """What registering these words now would give; nothing is stored. ``ready: false`` while the text is
    still too short to say anything. A number still being typed does not hold the rest back: the preview
    runs without it (no caller history) and says so with ``phone_ok: false``."""
    body = await read_json_object(request)
    msg = _message(request, body)
    msg.urgency = ""  # the pane shows what the rules make of the words; the call-taker's choice is theirs
    phone_ok = not msg.contact or bool(PHONE_PATTERN.match(msg.contact))
    if not phone_ok:
        msg.contact, msg.sender = "", NO_CALLER_ID
    try:
        case, decision = await request.app[INTAKE].preview(msg)
    except IntakeError as exc:
        if exc.code == "empty_text":
            return json_response({"ready": False})
        raise
    user = request["user"]
    tz = page_zone(request.app)
    view = case_view(case, user, tz)
    candidates = (decision.candidates if decision is not None else [])[:DUPLICATES_SHOWN]
    open_cases = {c.id: c for c in await request.app[STORE].get_cases([d["case_id"] for d in candidates])}
    duplicates = []
    for d in candidates:
        other = open_cases.get(d["case_id"])
        if other is None:
            continue
        duplicates.append({"case_id": other.id, "score": d["score"], "reason_text": match_reasons(d["reasons"]),
                           "status_label": LABELS_ZH.get(other.status, str(other.status)),
                           "created_at": other.created_at, "created": format_ts(other.created_at, tz),
                           "reporter_count": other.reporter_count,
                           "text": mask_pii(other.text)[:80],
                           "merge": decision is not None and decision.action == "merge"
                           and d["case_id"] == decision.case_id})
    history = [{**h, "created": format_ts(h["created_at"], tz)}
               for h in history_rows(await request.app[STORE].caller_history(case))] if msg.contact else []
    # A consultation is mostly answered on the call from the knowledge base (直接答复).
    panel = await answer_panel(request, case)
    answers = [{k: a[k] for k in ("entry_id", "question", "answer", "department", "date", "score", "confident")}
               for a in (panel or {}).get("answers", [])[:ANSWERS_SHOWN]]
    return json_response({
        "ready": True, "phone_ok": phone_ok, "emergency": case.emergency,
        "advice": EMERGENCY_ADVICE if case.emergency else "",
        "urgency": view["urgency"], "heads": view["heads"], "category_path": view["category_path"],
        "duplicates": duplicates, "history": history,
        "consultation": bool(panel and panel["consultation"]), "answers": answers,
    })


@requires(CALL_TAKER, SUPERVISOR)
async def register(request: web.Request) -> web.Response:
    body = await read_json_object(request)
    result = await request.app[INTAKE].submit(_message(request, body))
    out = api_case_body(result)
    out["case_url"] = f"/console/cases/{result.case.id}"
    out["queue_url"] = f"/console/queue?case={result.case.id}"
    return json_response(out, status=201 if result.created else 200)


def setup(app: web.Application, api: str) -> None:
    app.router.add_get("/console/intake", intake_page)
    app.router.add_post(f"{api}/intake/preview", preview)
    app.router.add_post(f"{api}/intake", register)
