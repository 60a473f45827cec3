"""Answers for consultations in the staff console: the call-taker's 建议答复 panel and the supervisor's KB page.

The panel is part of the confirmation queue's case fragment (``answer_panel`` builds its context); the
page ``/console/kb`` lists, searches and edits the knowledge base. Every change goes through the KB JSON
API (hotline/channels/answers_api.py) from /static/console/kb.js, so it is checked, audited and the
serving index refreshed in exactly one place.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from aiohttp import web

from hotline.access import SUPERVISOR, requires
from hotline.appkeys import ANSWERS
from hotline.console.auth import render_console
from hotline.nlp.answers import ACTIVE, RETIRED, is_consultation
from hotline.records import Case
from hotline.store.kb import KBRecord, valid_entry_id

log = logging.getLogger("hotline.console")

MAX_QUERY = 200
PAGE_ROWS = 50
NO_ANSWER = "暂无合适的答复"


async def answer_panel(request: web.Request, case: Case) -> dict[str, Any] | None:
    """The 建议答复 panel of a case: top suggestions with source and score, or why there are none.

    None when the answer feature is not installed. A failing lookup never breaks the case view: the
    call-taker can still confirm the case by hand.
    """
    service = request.app.get(ANSWERS)
    if service is None:
        return None
    panel: dict[str, Any] = {"answers": [], "message": "", "answered": case.answer or None,
                             "consultation": is_consultation(case.normalized_text or case.text, case.suggestion),
                             "threshold": service.cfg.threshold}
    if not service.ready.is_set():
        panel["message"] = "知识库正在加载，请稍后刷新。"
        return panel
    try:
        decision = await service.suggest_case(case)
    except asyncio.CancelledError:
        raise
    except Exception:
        log.exception("answer suggestions failed", extra={"event": "answer_panel_failed", "case_id": case.id})
        panel["message"] = "暂时无法读取知识库，请稍后重试。"
        return panel
    panel["answers"] = [{**m.to_dict(), "confident": m.score >= service.cfg.threshold}
                        for m in decision.suggestions]
    if not panel["answers"]:
        panel["message"] = NO_ANSWER
    return panel


async def _entries(request: web.Request, q: str, status: str) -> tuple[list[dict[str, Any]], str]:
    """The rows to show and what they are (search hits, one entry by its number, or the latest changes)."""
    service = request.app[ANSWERS]
    kb = service.kb
    if q and valid_entry_id(q):
        found = await kb.get_many([q])
        return [found[q].to_dict()] if q in found else [], f"编号 {q}"
    if q:
        matches = await asyncio.to_thread(service.index.search, q, cfg=service.cfg, k=PAGE_ROWS)
        current = await kb.get_many([m.entry.id for m in matches])
        rows = [{**current[m.entry.id].to_dict(), "score": round(m.score, 4)}
                for m in matches if m.entry.id in current and current[m.entry.id].status == ACTIVE]
        return rows, f"与“{q}”相近的有效条目"
    ids = list(dict.fromkeys(c["entry"] for c in await kb.recent_changes(count=PAGE_ROWS * 4)))
    records = await kb.get_many(ids)
    recs: list[KBRecord] = [records[i] for i in ids if i in records]
    if status != "all":
        recs = [r for r in recs if r.status == status]
    return [r.to_dict() for r in recs[:PAGE_ROWS]], "最近新增或修改的条目"


@requires(SUPERVISOR)
async def kb_page(request: web.Request) -> web.Response:
    if request.app.get(ANSWERS) is None:
        return render_console(request, "console/error.html", status=503, code="unavailable",
                              message="智能问答功能未启用。")
    q = request.query.get("q", "").strip()[:MAX_QUERY]
    status = request.query.get("status", "all")
    if status not in ("all", ACTIVE, RETIRED):
        status = "all"
    kb = request.app[ANSWERS].kb
    rows, what = await _entries(request, q, status)
    return render_console(request, "console/kb.html", rows=rows, what=what, q=q, status_filter=status,
                          total=await kb.count(), statuses={"all": "全部", ACTIVE: "有效", RETIRED: "已停用"})


def setup(app: web.Application) -> None:
    app.router.add_get("/console/kb", kb_page)
