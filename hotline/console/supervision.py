"""督办: what a supervisor chases each day — orders past their time limit, orders about to pass it,
returned orders (退单) waiting to be re-routed, and orders the work-order system never took (dead letters);
and what a supervisor decides: the units' extension requests (延期申请).
"""

from __future__ import annotations

import time
from typing import Any

from aiohttp import web

from hotline import appkeys
from hotline.access import SUPERVISOR, requires
from hotline.console.auth import render_console
from hotline.dispatch.extensions import Extensions, extension_row
from hotline.records import Case, mask_pii
from hotline.status import LABELS_ZH, Status

ROWS = 100  # per list; a supervisor acts on the top of each list, the JSON API pages through the rest


def span_text(seconds: float) -> str:
    """A duration as a supervisor says it: 3 天 4 小时, 5 小时 10 分, 25 分."""
    minutes = max(0, int(seconds // 60))
    days, rest = divmod(minutes, 24 * 60)
    hours, mins = divmod(rest, 60)
    if days:
        return f"{days} 天 {hours} 小时" if hours else f"{days} 天"
    if hours:
        return f"{hours} 小时 {mins} 分" if mins else f"{hours} 小时"
    return f"{mins} 分"


def order_row(case: Case, now: float, limit_labels: dict[str, str]) -> dict[str, Any]:
    d = case.dispatch or {}
    cls = case.classification or {}
    limit = str(d.get("time_limit") or "")
    return {
        "id": case.id, "status_label": LABELS_ZH.get(case.status, str(case.status)),
        "department": str(cls.get("department") or ""), "street": str(cls.get("street") or ""),
        "limit": limit_labels.get(limit, limit), "deadline_at": case.deadline_at,
        "late": span_text(now - case.deadline_at) if case.deadline_at < now else "",
        "left": span_text(case.deadline_at - now) if case.deadline_at >= now else "",
        "round": int(d.get("round") or 1), "flagged": bool(d.get("overdue_flagged")),
        "text": mask_pii(case.text)[:80],
    }


def returned_row(case: Case) -> dict[str, Any]:
    returns = (case.dispatch or {}).get("returns") or []
    last = returns[-1] if returns and isinstance(returns[-1], dict) else {}
    return {"id": case.id, "department": str(last.get("department") or ""), "reason": mask_pii(str(
        last.get("reason") or ""))[:200], "at": float(last.get("at") or case.updated_at), "times": len(returns),
        "text": mask_pii(case.text)[:80]}


async def overview(app: web.Application, due_soon_h: float) -> dict[str, Any]:
    """The page's lists, each up to ROWS rows, and the true number of cases in each (the summary line)."""
    store = app[appkeys.STORE]
    returned_ids = await store.case_ids(status=Status.RETURNED, offset=0, limit=ROWS)
    returned = [returned_row(c) for c in await store.get_cases(returned_ids)]
    returned_total = max(await store.count(Status.RETURNED), len(returned))
    dispatcher = app.get(appkeys.DISPATCHER)
    if dispatcher is None:
        return {"enabled": False, "calendar_missing": [], "overdue": [], "due_soon": [], "returned": returned,
                "dead": [], "dead_total": 0, "overdue_total": 0, "due_soon_total": 0,
                "returned_total": returned_total}
    now = time.time()
    within = due_soon_h * 3600
    labels = {name: (lim.label or name) for name, lim in dispatcher.tables.limits.items()}
    overdue = [order_row(c, now, labels) for c in await dispatcher.overdue(limit=ROWS)]
    due = [order_row(c, now, labels) for c in await dispatcher.due_soon(within, limit=ROWS)]
    dead = [{"dead_id": d.dead_id, "case_id": d.case_id, "order_id": d.key, "attempts": d.attempts,
             "error": mask_pii(d.error)[:200], "failed_at": d.failed_at}
            for d in await dispatcher.outbox.dead_letters(ROWS)]
    # Counted in the deadline index (ZCOUNT), not from the rows shown.
    return {"enabled": True, "calendar_missing": dispatcher.calendar.missing_years(now), "overdue": overdue,
            "due_soon": due, "returned": returned, "dead": dead,
            "dead_total": await dispatcher.outbox.dead_count(),
            "overdue_total": max(await dispatcher.outbox.overdue_count(now), len(overdue)),
            "due_soon_total": max(await dispatcher.outbox.due_count(now, now + within), len(due)),
            "returned_total": returned_total}


@requires(SUPERVISOR)
async def supervision_page(request: web.Request) -> web.Response:
    due_soon_h = min(max(float(request.app[appkeys.SETTINGS]["console"]["supervision_due_soon_h"]), 0.0), 720.0)
    data = await overview(request.app, due_soon_h)
    extensions = await extension_rows(request.app)
    dispatcher = request.app.get(appkeys.DISPATCHER)
    # The index may still hold a request decided by a process that died before taking it off: never fewer
    # than the rows read (which drop such entries).
    total = max(await dispatcher.extension_index.count(), len(extensions)) if dispatcher is not None else 0
    return render_console(request, "console/supervision.html", due_soon_h=due_soon_h, extensions=extensions,
                          extensions_total=total, **data)


async def extension_rows(app: web.Application) -> list[dict[str, Any]]:
    """Pending extension requests (延期申请), oldest first: what the supervisor approves or refuses here."""
    dispatcher = app.get(appkeys.DISPATCHER)
    if dispatcher is None:
        return []
    now = time.time()
    rows = [extension_row(c, now) for c in await Extensions(dispatcher).pending(limit=ROWS)]
    return [{**r, "requested_text": span_text(r["requested_hours"] * 3600)} for r in rows]
