"""Polling of Open311 ``GET /requests/{id}.json`` for backends that cannot call us back.

GeoReport v2 knows only ``open`` and ``closed``; many city systems report finer states in the same
field. Mapped: acknowledged/accepted → accepted, in_progress → in_progress, closed → resolved (the
``status_notes`` are the reply to the citizen), returned/rejected → returned (the notes are the
reason). ``open`` says nothing new. The event id is built from the order, the status and the
backend's ``updated_datetime``, so polling the same state again is a harmless repeat.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from hotline.dispatch.backends import DeliveryError, Open311Backend
from hotline.dispatch.service import Dispatcher, DispatchError, StatusEvent
from hotline.status import Status

log = logging.getLogger("hotline.dispatch.poller")

STATUS_MAP = {"acknowledged": "accepted", "accepted": "accepted", "in_progress": "in_progress",
              "closed": "resolved", "resolved": "resolved", "returned": "returned", "rejected": "returned"}
MAX_PER_ROUND = 500


def event_from_open311(case_id: str, order_id: str, ref: str, record: dict[str, Any]) -> StatusEvent | None:
    status = str(record.get("status") or "").strip().lower()
    etype = STATUS_MAP.get(status)
    if etype is None:
        return None
    notes = str(record.get("status_notes") or "").strip()[:5000]
    if etype == "resolved" and not notes:
        notes = "承办单位已办结。"
    if etype == "returned" and not notes:
        notes = "承办单位退回，未说明原因。"
    updated = str(record.get("updated_datetime") or "")[:40]
    return StatusEvent(event_id=f"poll:{order_id}:{status}:{updated}", case_id=case_id, type=etype,
                       order_id=order_id, reply=notes if etype == "resolved" else "",
                       reason=notes if etype == "returned" else "", ref=ref, source="poll")


async def poll_once(dispatcher: Dispatcher, backend: Open311Backend, concurrency: int = 4) -> int:
    """One pass over the open orders; the number of events applied."""
    ids = await dispatcher.outbox.open_ids(0, MAX_PER_ROUND)
    cases = [c for c in await dispatcher.store.get_cases(ids)
             if c.status in (Status.DISPATCHED, Status.IN_PROGRESS) and c.dispatch.get("ref")]
    sem = asyncio.Semaphore(concurrency)
    applied = 0

    async def one(case_id: str, order_id: str, ref: str) -> None:
        nonlocal applied
        async with sem:
            try:
                record = await backend.fetch(ref)
            except DeliveryError as exc:
                # The backend's messages carry no query string or key (backends._scrub).
                log.info("poll failed", extra={"event": "poll_failed", "case_id": case_id, "error": str(exc)[:200]})
                return
            except Exception as exc:
                # Not one order's failure: without this it would end the whole round in gather. Its text
                # may hold the request URL with api_key, so the type only.
                log.warning("poll failed unexpectedly", extra={"event": "poll_failed", "case_id": case_id,
                                                               "error": f"unexpected {type(exc).__name__}"})
                return
        if record is None:
            return
        ev = event_from_open311(case_id, order_id, ref, record)
        if ev is None:
            return
        try:
            outcome = await dispatcher.handle_event(ev)
        except DispatchError as exc:
            log.warning("polled status not applied", extra={"event": "poll_event_refused", "case_id": case_id,
                                                            "code": exc.code})
            return
        if outcome.result == "applied":
            applied += 1

    await asyncio.gather(*(one(c.id, c.dispatch.get("order_id", ""), c.dispatch["ref"]) for c in cases))
    return applied


async def poll_forever(dispatcher: Dispatcher, backend: Open311Backend, interval_s: float) -> None:
    while True:
        try:
            if await dispatcher.outbox.take_poll_turn(interval_s):
                await poll_once(dispatcher, backend)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("poller error", extra={"event": "poller_error"})
        await asyncio.sleep(interval_s)
