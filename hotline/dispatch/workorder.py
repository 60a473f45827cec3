"""The work order (工单) handed to the city's dispatch system, built from a confirmed case.

It carries everything a department needs without calling back into the hotline: the category with its
taxonomy path, the lead department (主办) and co-handling departments (协办), the street/township (属地)
— when known both the department and the street get the order (双派) — request type, urgency, deadline,
the citizen's words, address and location, how many citizens reported it, and attachment references.
Departments phone citizens back, so the order carries the contact; it never leaves the city's systems.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

from hotline.records import Case, mask_pii

ORDER_VERSION = 1


def order_key(case_id: str, round_: int) -> str:
    """Idempotency key of one dispatch round of a case: a retry of the same round is the same order."""
    return f"{case_id}-R{round_}"


def iso(ts: float, tz: ZoneInfo) -> str:
    return datetime.fromtimestamp(ts, tz).isoformat(timespec="seconds")


def build_work_order(case: Case, tz: ZoneInfo, link: Callable[[str], str] = str) -> dict[str, Any]:
    """The order for ``case``; ``link`` turns a stored photo's reference into a URL the department can open.

    A confidential case (保密) goes out without the citizen's name, number and voice recording, with phone
    and ID numbers in the text masked: the unit contacts the citizen through the hotline."""
    cls = case.classification
    secret = case.confidential
    recording = [case.audio_ref] if case.audio_ref and not secret else []
    d = case.dispatch
    lead = str(cls.get("department") or "")
    co = [str(x) for x in cls.get("co_departments") or []]
    street = str(cls.get("street") or "")
    recipients = [lead, *co]
    if street and street not in recipients:
        recipients.append(street)
    return {
        "version": ORDER_VERSION,
        "order_id": d["order_id"],
        "case_id": case.id,
        "round": d["round"],
        "redo": bool(d.get("redo")),  # 重办: the citizen was not satisfied with the last handling
        "redo_reason": str(d.get("redo_reason") or ""),
        "category": str(cls.get("category") or ""),
        "category_path": list(cls.get("category_path") or []),
        "lead_department": lead,
        "co_departments": co,
        "street": street,
        "dual_dispatch": bool(street),
        "recipients": recipients,
        "request_type": str(cls.get("type") or ""),
        "urgency": str(cls.get("urgency") or "normal"),
        "time_limit": str(d.get("time_limit") or ""),
        "deadline_at": case.deadline_at,
        "deadline": iso(case.deadline_at, tz) if case.deadline_at else "",
        "description": mask_pii(case.text) if secret else case.text,
        "transcript": mask_pii(case.transcript) if secret else case.transcript,
        "address": case.address,
        "location": {"lat": case.location.lat, "lon": case.location.lon, "label": case.location.label}
        if case.location else None,
        "reporters": case.reporter_count,
        "attachments": [link(a) for a in case.attachments] + recording,
        "channel": case.channel,
        "confidential": secret,
        "citizen": {"name": "", "contact": ""} if secret else {"name": case.name, "contact": case.contact},
        "received_at": iso(case.created_at, tz),
        "dispatched_at": iso(float(d.get("confirmed_at") or case.updated_at), tz),
        "previous_returns": [{"department": r.get("department", ""), "reason": r.get("reason", "")}
                             for r in d.get("returns") or []],
    }
