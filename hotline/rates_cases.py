"""Turn stored cases and their audit trails into the rows the 三率 are computed from."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from hotline.dispatch.deadlines import URGENT_LEVELS, urgency_of
from hotline.rates import RateRow, Weights, citizen_keys, same_citizen
from hotline.records import Case
from hotline.status import Status
from hotline.store import Event

OWN = ""  # the case's own reporter among its reports' ids (a report id is never empty)


@dataclass(frozen=True)
class RateSettings:
    weights: Weights
    response_hours: float
    urgent_response_hours: float
    min_cases: int

    @classmethod
    def from_settings(cls, section: dict[str, Any]) -> RateSettings:
        return cls(
            weights=Weights(basic_satisfied=section["basic_weight"], response=section["weight_response"],
                            resolution=section["weight_resolution"], satisfaction=section["weight_satisfaction"]),
            response_hours=section["response_hours"], urgent_response_hours=section["urgent_response_hours"],
            min_cases=section["min_cases_for_ranking"])


def _top(head: dict[str, Any] | None) -> str:
    top = (head or {}).get("top") or []
    return str(top[0].get("label", "")) if top else ""


def _answer(entry: Any) -> tuple[bool, str | None] | None:
    """(resolved, satisfaction) of one stored survey answer; None when it holds no evaluation."""
    if not isinstance(entry, dict) or not isinstance(entry.get("resolved"), bool):
        return None
    return entry["resolved"], entry.get("satisfaction") or None


def _answers(case: Case) -> tuple[tuple[bool, str | None] | None, tuple[tuple[bool, str | None], ...]]:
    """The case's own reporter's answer and those of the other citizens merged into it: one per citizen.

    A citizen who reported the case more than once is surveyed once, but rounds scheduled before that rule
    (or promoted after an unmerge) may hold an answer for more than one of their reports; only the first of
    those, in the order the reports came, counts. A report unmerged since it answered has its own case now
    and is counted there."""
    stored = (case.survey or {}).get("reports")
    stored = stored if isinstance(stored, dict) else {}
    given: dict[str, tuple[bool, str | None] | None] = {OWN: _answer(case.survey or {})}
    for report in case.reports:
        given[report.report_id] = _answer(stored.get(report.report_id))
    reporters = [(OWN, citizen_keys(case.channel, case.sender, case.contact))]
    reporters += [(r.report_id, citizen_keys(r.channel, r.sender, r.contact)) for r in case.reports]
    counted = set()
    for group in same_citizen(reporters):
        answered = [rid for rid in group if given[rid] is not None]
        if answered:
            counted.add(answered[0])
    own = given[OWN] if OWN in counted else None
    return own, tuple(a for r in case.reports if r.report_id in counted and (a := given[r.report_id]) is not None)


def rate_row(case: Case, events: list[Event], cfg: RateSettings) -> RateRow | None:
    """None for cases that are not units of work: merged repeats and cases never confirmed."""
    if case.status == Status.MERGED:
        return None
    cls = case.classification or {}
    department = str(cls.get("department") or "")
    category = str(cls.get("category") or _top(case.suggestion.get("category")))
    street = str(cls.get("street") or "")
    answered = case.status == Status.ANSWERED or any(e.data.get("to") == str(Status.ANSWERED) for e in events)
    dispatched_at = next((e.ts for e in events if e.data.get("to") == str(Status.DISPATCHED)), None)
    # The unit accepted (接单) when it reported acceptance, started work or resolved, whichever came first.
    accepted_at = None
    if dispatched_at is not None:
        accepted_at = next((e.ts for e in events if e.ts >= dispatched_at and (
            e.action == "accepted" or e.data.get("to") in (str(Status.IN_PROGRESS), str(Status.RESOLVED)))), None)
    if not answered and dispatched_at is None:
        return None
    # The urgency the case was dispatched with: the call-taker's, else intake's rules.
    urgent = urgency_of(case, cls) in URGENT_LEVELS
    limit_h = cfg.urgent_response_hours if urgent else cfg.response_hours
    own, reports = _answers(case)
    return RateRow(
        case_id=case.id, department=department, street=street, category=category, created_at=case.created_at,
        dispatched=dispatched_at is not None,
        accept_delay_s=None if accepted_at is None or dispatched_at is None else accepted_at - dispatched_at,
        response_limit_s=limit_h * 3600, answered_at_intake=answered and dispatched_at is None,
        resolved=own[0] if own else None, satisfaction=own[1] if own else None, reports=reports)
