"""Answers for consultations as an app feature: staff JSON endpoints, the KB editor API, citizen 是/否.

Staff (marked with ``@requires``; the console's auth middleware enforces the roles):
- ``GET  /api/v1/cases/{id}/answers``   top suggestions for a case (call-taker)
- ``POST /api/v1/cases/{id}/answer``    {"entry_id"} send one to the citizen, close as 直接答复 (call-taker)
- ``GET  /api/v1/kb``                   list (cursor paging) or search (?q=) entries
- ``GET  /api/v1/kb/{entry_id}``        one entry with its audit trail
- ``POST /api/v1/kb``, ``PUT /api/v1/kb/{entry_id}``, ``DELETE /api/v1/kb/{entry_id}`` (retire) — supervisor
Citizens (authorised by the token they got with the answer):
- ``POST /api/v1/cases/{id}/answer/feedback``  {"token", "resolved": true|false}
- ``POST /answer/feedback``                    the web page's 是/否 form
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
from collections.abc import AsyncIterator
from typing import Any

from aiohttp import web

from hotline.access import CALL_TAKER, SUPERVISOR, requires
from hotline.answers import KIND, AnswerError, AnswerService
from hotline.appkeys import ANSWERS, INTAKE, NOTIFICATIONS, SETTINGS, STORE
from hotline.bodies import read_form
from hotline.errors import decode_json_object
from hotline.nlp.answers import RetrievalConfig, is_consultation
from hotline.pages import render
from hotline.secret import service_secret
from hotline.settings import SettingsError
from hotline.store import CaseNotFound
from hotline.store.kb import EntryConflict, EntryInvalid, EntryNotFound, KBRecord, valid_entry_id
from hotline.tasks import stop_tasks

log = logging.getLogger("hotline.answers")
dumps = functools.partial(json.dumps, ensure_ascii=False)

MAX_LIST = 200
CASE_ID_CHARS = set("0123456789-")


def _valid_case_id(case_id: str) -> bool:
    return 8 <= len(case_id) <= 20 and set(case_id) <= CASE_ID_CHARS


def staff_actor(request: web.Request) -> str:
    """The logged-in staff member as the console's auth middleware sets it (``request["user"]``)."""
    user = request.get("user")
    if user is None:
        return "staff"
    name = user.get("name") if isinstance(user, dict) else getattr(user, "name", None)
    return f"staff:{name}" if name else "staff"


async def _json_body(request: web.Request, *, allow_empty: bool = False) -> dict[str, Any]:
    return decode_json_object(await request.read(), request.content_type, allow_empty=allow_empty)


def _case_id(request: web.Request) -> str:
    case_id = request.match_info["case_id"]
    if not _valid_case_id(case_id):
        raise AnswerError("not_found", "案件不存在。", 404)
    return case_id


def _entry_id(request: web.Request) -> str:
    entry_id = request.match_info["entry_id"]
    if not valid_entry_id(entry_id):
        raise AnswerError("not_found", "知识库中没有该条目。", 404)
    return entry_id


def _entry_view(rec: KBRecord) -> dict[str, Any]:
    return rec.to_dict()


async def _get_case(request: web.Request, case_id: str) -> Any:
    try:
        return await request.app[STORE].get_case(case_id)
    except CaseNotFound as exc:
        raise AnswerError("not_found", "案件不存在。", 404) from exc


# staff: suggestions and sending ------------------------------------------------

@requires(CALL_TAKER, SUPERVISOR)
async def case_answers(request: web.Request) -> web.Response:
    service = request.app[ANSWERS]
    case = await _get_case(request, _case_id(request))
    decision = await service.suggest_case(case)
    body = {
        "case_id": case.id,
        "consultation": is_consultation(case.normalized_text or case.text, case.suggestion),
        "answers": [{**m.to_dict(), "confident": m.score >= service.cfg.threshold} for m in decision.suggestions],
        "threshold": service.cfg.threshold,
        "message": "" if decision.suggestions else "知识库中没有合适的答复，请按普通诉求办理。",
        "answered": case.answer or None,
    }
    return web.json_response(body, dumps=dumps)


@requires(CALL_TAKER, SUPERVISOR)
async def case_send_answer(request: web.Request) -> web.Response:
    service = request.app[ANSWERS]
    case_id = _case_id(request)
    body = await _json_body(request)
    entry_id = body.get("entry_id")
    if not isinstance(entry_id, str) or not valid_entry_id(entry_id):
        raise AnswerError("bad_entry_id", "entry_id 须为知识库条目编号。")
    channel, recipient = body.get("channel", ""), body.get("recipient", "")
    if not isinstance(channel, str) or not isinstance(recipient, str) or bool(channel) != bool(recipient):
        raise AnswerError("bad_recipient", "channel 和 recipient 须同时给出（字符串），或都不给。")
    if channel and request.app[NOTIFICATIONS].notifier(channel) is None:
        raise AnswerError("bad_channel", f"渠道 {channel[:40]} 不可用。")
    await _get_case(request, case_id)
    try:
        case, delivered = await service.send(case_id, entry_id, actor=staff_actor(request), channel=channel,
                                             recipient=recipient[:200])
    except CaseNotFound as exc:
        raise AnswerError("not_found", "案件不存在。", 404) from exc
    return web.json_response({"case_id": case.id, "status": str(case.status), "answer": case.answer,
                              "delivered": delivered}, dumps=dumps)


# staff: the knowledge base ------------------------------------------------------

def _int_param(request: web.Request, name: str, default: int, lo: int, hi: int) -> int:
    raw = request.query.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError as exc:
        raise AnswerError("bad_param", f"参数 {name} 须为整数。", 400) from exc
    if not lo <= value <= hi:
        raise AnswerError("bad_param", f"参数 {name} 须在 {lo}–{hi} 之间。", 400)
    return value


@requires(CALL_TAKER, SUPERVISOR)
async def kb_list(request: web.Request) -> web.Response:
    service = request.app[ANSWERS]
    kb = service.kb
    limit = _int_param(request, "limit", 50, 1, MAX_LIST)
    q = request.query.get("q", "").strip()[:1000]
    if q:
        decision_matches = await asyncio.to_thread(service.index.search, q, cfg=service.cfg, k=limit)
        current = await kb.get_many([m.entry.id for m in decision_matches])
        entries = [{**current[m.entry.id].to_dict(), "score": round(m.score, 4)}
                   for m in decision_matches if m.entry.id in current and current[m.entry.id].status == "active"]
        return web.json_response({"entries": entries, "next_cursor": None, "total": await kb.count(),
                                  "version": await kb.version()}, dumps=dumps)
    cursor = _int_param(request, "cursor", 0, 0, 10**9)
    status = request.query.get("status", "all")
    if status not in ("all", "active", "retired"):
        raise AnswerError("bad_param", "参数 status 须为 all、active 或 retired。", 400)
    next_cursor, records = await kb.page(cursor, limit, status)
    entries = [_entry_view(r) for r in records]
    return web.json_response({"entries": entries, "next_cursor": next_cursor,
                              "total": await kb.count(), "version": await kb.version()}, dumps=dumps)


@requires(CALL_TAKER, SUPERVISOR)
async def kb_get(request: web.Request) -> web.Response:
    kb = request.app[ANSWERS].kb
    entry_id = _entry_id(request)
    try:
        rec = await kb.get(entry_id)
    except EntryNotFound as exc:
        raise AnswerError("not_found", "知识库中没有该条目。", 404) from exc
    events = [e.to_dict() for e in await kb.events(entry_id)]
    return web.json_response({"entry": _entry_view(rec), "events": events}, dumps=dumps)


@requires(SUPERVISOR)
async def kb_create(request: web.Request) -> web.Response:
    service = request.app[ANSWERS]
    body = await _json_body(request)
    try:
        rec = await service.kb.add(body, actor=staff_actor(request))
    except EntryInvalid as exc:
        raise AnswerError("bad_entry", str(exc)) from exc
    await service.refresh()
    return web.json_response({"entry": _entry_view(rec)}, status=201, dumps=dumps)


@requires(SUPERVISOR)
async def kb_update(request: web.Request) -> web.Response:
    service = request.app[ANSWERS]
    entry_id = _entry_id(request)
    body = await _json_body(request)
    rev = body.pop("rev", None)
    if rev is not None and (not isinstance(rev, int) or isinstance(rev, bool)):
        raise AnswerError("bad_rev", "rev 须为整数。")
    try:
        rec = await service.kb.edit(entry_id, body, actor=staff_actor(request), expected_rev=rev)
    except EntryNotFound as exc:
        raise AnswerError("not_found", "知识库中没有该条目。", 404) from exc
    except EntryInvalid as exc:
        raise AnswerError("bad_entry", str(exc)) from exc
    except EntryConflict as exc:
        raise AnswerError("conflict", f"该条目已被他人修改（当前版本 {exc.current.rev}），请刷新后再改。", 409) from exc
    await service.refresh()
    return web.json_response({"entry": _entry_view(rec)}, dumps=dumps)


@requires(SUPERVISOR)
async def kb_retire(request: web.Request) -> web.Response:
    service = request.app[ANSWERS]
    entry_id = _entry_id(request)
    body = await _json_body(request, allow_empty=True)
    reason = body.get("reason", "")
    if not isinstance(reason, str):
        raise AnswerError("bad_reason", "reason 须为字符串。")
    try:
        rec = await service.kb.retire(entry_id, actor=staff_actor(request), reason=reason)
    except EntryNotFound as exc:
        raise AnswerError("not_found", "知识库中没有该条目。", 404) from exc
    service.index.retire(entry_id)  # at once, before the refresh below
    await service.refresh()
    return web.json_response({"entry": _entry_view(rec)}, dumps=dumps)


# citizens: 是否解决了您的问题? ---------------------------------------------------

async def api_feedback(request: web.Request) -> web.Response:
    service = request.app[ANSWERS]
    case_id = _case_id(request)
    body = await _json_body(request)
    resolved, token = body.get("resolved"), body.get("token")
    if not isinstance(resolved, bool):
        raise AnswerError("bad_resolved", "resolved 须为 true 或 false。")
    if not isinstance(token, str) or not service.check_token(case_id, token):
        raise AnswerError("forbidden", "无效的答复凭证。", 403)
    try:
        case, message = await service.feedback(case_id, resolved, actor="web:citizen")
    except CaseNotFound as exc:
        raise AnswerError("not_found", "案件不存在。", 404) from exc
    return web.json_response({"case_id": case.id, "status": str(case.status), "message": message,
                              "feedback": case.answer.get("feedback", "")}, dumps=dumps)


async def web_feedback(request: web.Request) -> web.Response:
    service = request.app[ANSWERS]
    form = await read_form(request)
    case_id = str(form.get("case_id", ""))[:20]
    token = str(form.get("token", ""))[:64]
    choice = str(form.get("resolved", ""))
    if not _valid_case_id(case_id) or not service.check_token(case_id, token) or choice not in ("yes", "no"):
        return render(request, "answer_feedback.html", status=403, case=None,
                      message="该链接无效或已过期。如需反映问题，请重新提交。")
    try:
        case, message = await service.feedback(case_id, choice == "yes", actor="web:citizen")
    except CaseNotFound:
        return render(request, "answer_feedback.html", status=404, case=None, message="案件不存在。")
    return render(request, "answer_feedback.html", case=case, message=message)


# wiring -----------------------------------------------------------------------

async def answers_ctx(app: web.Application) -> AsyncIterator[None]:
    settings = app[SETTINGS]
    try:
        cfg = RetrievalConfig.from_settings(settings["kb"])
    except ValueError as exc:
        raise SettingsError(str(exc)) from exc
    service = AnswerService(app[STORE], app[NOTIFICATIONS], cfg, service_secret(settings))
    app[ANSWERS] = service
    app[INTAKE].on_created.append(service.on_case_created)
    app[NOTIFICATIONS].on_reply(KIND, service.handle_reply)

    async def keep_fresh() -> None:
        # The first build runs in the background: at 50,000 entries it takes a while, and until it is
        # done consultations are simply handled as normal cases.
        while True:
            try:
                await service.load()
                break
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("kb load failed", extra={"event": "kb_load_failed"})
                await asyncio.sleep(2)
        service.ready.set()
        await service.refresh_loop(settings["kb"]["refresh_s"])

    task = asyncio.create_task(keep_fresh(), name="kb-refresh")
    try:
        yield
    finally:
        await stop_tasks([task])


def setup(app: web.Application) -> None:
    app.cleanup_ctx.append(answers_ctx)
    r = app.router
    r.add_get("/api/v1/cases/{case_id}/answers", case_answers)
    r.add_post("/api/v1/cases/{case_id}/answer", case_send_answer)
    r.add_post("/api/v1/cases/{case_id}/answer/feedback", api_feedback)
    r.add_get("/api/v1/kb", kb_list)
    r.add_post("/api/v1/kb", kb_create)
    r.add_get("/api/v1/kb/{entry_id}", kb_get)
    r.add_put("/api/v1/kb/{entry_id}", kb_update)
    r.add_delete("/api/v1/kb/{entry_id}", kb_retire)
    r.add_post("/answer/feedback", web_feedback)
