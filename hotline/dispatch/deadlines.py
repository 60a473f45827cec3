"""Time limits (办理时限) of work orders, with working-day arithmetic.

Each category belongs to a time-limit class (config/dispatch.toml): urgent 2 hours, utilities 3 hours,
consultations 1 working day, everything else 15 days. Urgency comes first: an emergency, and an urgency a
call-taker chose, get the urgent class; an `urgent` that only intake's utility-outage rules raised (停水, 停电 …,
``[urgency_group_limits]``) gets the class those rules name (utilities). Working days skip weekends and public holidays
and count the make-up working days (调休) on weekends; the table lists both.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from hotline.dispatch.tables import DispatchTables, TimeLimit
from hotline.records import Case

URGENT_LEVELS = ("emergency", "urgent")
# ``classification.urgency_by``: who set ``classification.urgency``. Absent (人工受理, records from before it
# was kept) counts as a call-taker.
BY_CALL_TAKER = "call_taker"
BY_RULES = "rules"


@dataclass(frozen=True)
class WorkCalendar:
    tz: ZoneInfo
    holidays: frozenset[date] = frozenset()
    workdays: frozenset[date] = frozenset()
    day_start_hour: int = 9
    warn_days: int = 45

    @classmethod
    def from_tables(cls, tables: DispatchTables, timezone: str) -> WorkCalendar:
        return cls(ZoneInfo(timezone), tables.holidays, tables.workdays, tables.day_start_hour,
                   tables.calendar_warn_days)

    def is_working_day(self, d: date) -> bool:
        if d in self.workdays:
            return True
        if d in self.holidays:
            return False
        return d.weekday() < 5

    def add_working_days(self, start: float, n: int) -> float:
        """``n`` working days after ``start``, at the same clock time.

        A case that arrives on a day off starts its clock at the beginning of the next working day
        (a Saturday consultation is due Tuesday 09:00, not Monday at the Saturday hour)."""
        dt = datetime.fromtimestamp(start, self.tz)
        day, clock = dt.date(), dt.time()
        if not self.is_working_day(day):
            while not self.is_working_day(day):
                day += timedelta(days=1)
            clock = time(self.day_start_hour)
        counted = 0
        while counted < n:
            day += timedelta(days=1)
            if self.is_working_day(day):
                counted += 1
        return datetime.combine(day, clock, tzinfo=self.tz).timestamp()

    def missing_years(self, now: float, ahead_days: int | None = None) -> list[int]:
        """Years from ``now`` to ``ahead_days`` later (default ``warn_days``) with no holiday in the table.

        The holidays of a year are announced by the State Council late in the year before; until the table
        has them, working days are only weekdays and a consultation can fall due on a holiday. Every year
        has at least New Year's Day off, so a year without any listed holiday is a year not yet entered."""
        first = datetime.fromtimestamp(now, self.tz).year
        ahead = self.warn_days if ahead_days is None else ahead_days
        last = datetime.fromtimestamp(now + ahead * 86400, self.tz).year
        listed = {d.year for d in self.holidays}
        return [year for year in range(first, last + 1) if year not in listed]

    def deadline(self, start: float, limit: TimeLimit) -> float:
        if limit.unit == "hours":
            return start + limit.amount * 3600
        if limit.unit == "days":
            return start + limit.amount * 86400
        return self.add_working_days(start, int(limit.amount))


def urgency_choice(case: Case, classification: dict[str, Any]) -> tuple[str, bool]:
    """(urgency, True when a call-taker chose it). The call-taker's urgency when given: in ``classification``,
    else the one kept on the case (chosen in 人工受理, or in the round before a return); else what intake's
    rules flagged."""
    for source in (classification, case.classification or {}):
        chosen = str(source.get("urgency") or "")
        if chosen and source.get("urgency_by") != BY_RULES:
            return chosen, True
    if case.emergency:
        return "emergency", False
    # Not the priority that merged repeats raise: more reporters move a case up the queue, but the same
    # broken street lamp reported twice is not a 2-hour emergency.
    level = str((case.suggestion.get("urgency") or {}).get("level") or "")
    return (level if level in URGENT_LEVELS else "normal"), False


def urgency_of(case: Case, classification: dict[str, Any]) -> str:
    return urgency_choice(case, classification)[0]


def rule_groups(case: Case) -> list[str]:
    """The rule groups of config/urgency.toml that intake's urgency rules matched (reasons ``group:words``)."""
    reasons = (case.suggestion.get("urgency") or {}).get("reasons") or []
    return [str(r).partition(":")[0] for r in reasons if isinstance(r, str) and r]


def limit_for(tables: DispatchTables, case: Case, classification: dict[str, Any],
              category_path: list[str]) -> TimeLimit:
    """The time-limit class of a case: urgency first, then the category, then the request type. An ``urgent``
    that only intake's rules raised takes the class ``[urgency_group_limits]`` gives their groups, if any."""
    urgency, chosen = urgency_choice(case, classification)
    if urgency in URGENT_LEVELS:
        by_rules = None if chosen or urgency != "urgent" else tables.rule_group_limit(rule_groups(case))
        return tables.limit(by_rules or tables.urgent_limit)
    by_category = DispatchTables.lookup(tables.category_limits, category_path)
    if by_category:
        return tables.limit(by_category)
    by_type = tables.type_limits.get(str(classification.get("type") or ""))
    if by_type:
        return tables.limit(by_type)
    return tables.limit(tables.default_limit)
