"""Configuration tables of dispatch: config/dispatch.toml and the category tree (config/taxonomy.json).

The tables are data a city edits: time-limit classes, category → time-limit class, category → lead and
co-handling departments (fallback when the call-taker or the model names none), street hints and the
Open311 service codes of the backend. The taxonomy file may be rewritten while we run (the NLP tools
produce it), so it is read by mtime and a missing or half-written file leaves the last good tree.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import Any

from hotline.settings import SettingsError, load_toml

log = logging.getLogger("hotline.dispatch")

TIME_UNITS = ("hours", "days", "working_days")


@dataclass(frozen=True)
class TimeLimit:
    name: str
    amount: float
    unit: str  # hours | days | working_days
    label: str = ""

    @property
    def nominal_s(self) -> float:
        """Roughly how long the limit is, for comparing classes (a working day counted as a day)."""
        return self.amount * (3600.0 if self.unit == "hours" else 86400.0)


@dataclass
class DispatchTables:
    limits: dict[str, TimeLimit]
    default_limit: str
    urgent_limit: str
    category_limits: dict[str, str] = field(default_factory=dict)
    type_limits: dict[str, str] = field(default_factory=dict)
    # Rule group of config/urgency.toml → time-limit class, for an `urgent` that only those rules raised.
    urgency_group_limits: dict[str, str] = field(default_factory=dict)
    departments: dict[str, str] = field(default_factory=dict)
    co_handling: dict[str, list[str]] = field(default_factory=dict)
    streets: dict[str, str] = field(default_factory=dict)
    service_codes: dict[str, str] = field(default_factory=dict)
    default_service_code: str = "other"
    holidays: frozenset[date] = frozenset()
    workdays: frozenset[date] = frozenset()
    day_start_hour: int = 9
    calendar_warn_days: int = 45

    def limit(self, name: str) -> TimeLimit:
        return self.limits.get(name) or self.limits[self.default_limit]

    def rule_group_limit(self, groups: list[str]) -> str | None:
        """The class ``[urgency_group_limits]`` gives intake's urgent rule groups, when it names every one of
        them (a utility outage found together with a safety hazard stays urgent); of two classes, the shorter."""
        if not groups or not all(g in self.urgency_group_limits for g in groups):
            return None
        names = {self.urgency_group_limits[g] for g in groups}
        return min(sorted(names), key=lambda n: self.limit(n).nominal_s)

    def street_for(self, *texts: str) -> str:
        """The first street hint whose keyword appears in the address (then the text): 属地."""
        for text in texts:
            if not text:
                continue
            # Longest keyword first so 中山路东段 beats 中山路.
            for keyword in sorted(self.streets, key=len, reverse=True):
                if keyword in text:
                    return self.streets[keyword]
        return ""

    @staticmethod
    def lookup(table: dict[str, Any], path: list[str]) -> Any:
        """Deepest label of the category path that the table knows."""
        for label in reversed(path):
            if label in table:
                return table[label]
        return None


def _dates(values: Any, key: str) -> frozenset[date]:
    if not isinstance(values, list):
        raise SettingsError(f"{key}: expected a list of dates")
    out = set()
    for v in values:
        if isinstance(v, date):
            out.add(v)
        elif isinstance(v, str):
            try:
                out.add(date.fromisoformat(v))
            except ValueError as exc:
                raise SettingsError(f"{key}: not a date: {v!r}") from exc
        else:
            raise SettingsError(f"{key}: not a date: {v!r}")
    return frozenset(out)


def _str_map(data: Any, key: str) -> dict[str, str]:
    if not isinstance(data, dict) or not all(isinstance(v, str) for v in data.values()):
        raise SettingsError(f"{key}: expected a table of strings")
    return dict(data)


def load_tables(path: Path, extra_departments: Path | None = None) -> DispatchTables:
    data = load_toml(path)
    limits: dict[str, TimeLimit] = {}
    for name, spec in (data.get("time_limits") or {}).items():
        if not isinstance(spec, dict) or spec.get("unit") not in TIME_UNITS:
            raise SettingsError(f"{path.name}: time_limits.{name}: unit must be one of {', '.join(TIME_UNITS)}")
        amount = spec.get("amount")
        if not isinstance(amount, int | float) or isinstance(amount, bool) or amount <= 0:
            raise SettingsError(f"{path.name}: time_limits.{name}.amount must be a positive number")
        if spec["unit"] == "working_days" and int(amount) != amount:
            raise SettingsError(f"{path.name}: time_limits.{name}.amount must be whole working days")
        limits[name] = TimeLimit(name, float(amount), spec["unit"], str(spec.get("label", "")))
    classes = data.get("classes") or {}
    default, urgent = classes.get("default", "default"), classes.get("urgent", "urgent")
    for k in (default, urgent):
        if k not in limits:
            raise SettingsError(f"{path.name}: time limit class {k!r} is not defined in [time_limits]")
    category_limits = _str_map(data.get("category_limits") or {}, f"{path.name}: category_limits")
    type_limits = _str_map(data.get("type_limits") or {}, f"{path.name}: type_limits")
    group_limits = _str_map(data.get("urgency_group_limits") or {}, f"{path.name}: urgency_group_limits")
    for table, name in ((category_limits, "category_limits"), (type_limits, "type_limits"),
                        (group_limits, "urgency_group_limits")):
        for label, cls in table.items():
            if cls not in limits:
                raise SettingsError(f"{path.name}: {name}.{label}: unknown time limit class {cls!r}")
    departments: dict[str, str] = {}
    if extra_departments is not None and extra_departments.exists():
        # The classifier's category → department table is the base; dispatch.toml may override entries.
        try:
            departments.update(_str_map(load_toml(extra_departments).get("departments") or {},
                                        extra_departments.name))
        except SettingsError as exc:
            log.warning("ignoring %s: %s", extra_departments, exc)
    departments.update(_str_map(data.get("departments") or {}, f"{path.name}: departments"))
    co: dict[str, list[str]] = {}
    for label, units in (data.get("co_handling") or {}).items():
        if not isinstance(units, list) or not all(isinstance(u, str) for u in units):
            raise SettingsError(f"{path.name}: co_handling.{label}: expected a list of department names")
        co[label] = list(units)
    cal = data.get("calendar") or {}
    start = cal.get("day_start_hour", 9)
    if not isinstance(start, int) or not 0 <= start <= 23:
        raise SettingsError(f"{path.name}: calendar.day_start_hour must be 0..23")
    warn_days = cal.get("warn_days_ahead", 45)
    if not isinstance(warn_days, int) or isinstance(warn_days, bool) or not 0 <= warn_days <= 366:
        raise SettingsError(f"{path.name}: calendar.warn_days_ahead must be a whole number of days, 0..366")
    open311 = data.get("open311") or {}
    return DispatchTables(
        limits=limits, default_limit=default, urgent_limit=urgent,
        category_limits=category_limits, type_limits=type_limits, urgency_group_limits=group_limits,
        departments=departments, co_handling=co,
        streets=_str_map(data.get("streets") or {}, f"{path.name}: streets"),
        service_codes=_str_map(open311.get("service_codes") or {}, f"{path.name}: open311.service_codes"),
        default_service_code=str(open311.get("default_service_code", "other")),
        holidays=_dates(cal.get("holidays", []), f"{path.name}: calendar.holidays"),
        workdays=_dates(cal.get("workdays", []), f"{path.name}: calendar.workdays"),
        day_start_hour=start, calendar_warn_days=warn_days,
    )


class Taxonomy:
    """The category tree {label1: {label2: [label3, …]}}, re-read when its file changes."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._mtime: float | None = None
        self._tree: dict[str, dict[str, list[str]]] = {}
        self._paths: dict[str, list[str]] = {}
        self._lock = threading.Lock()

    def tree(self) -> dict[str, dict[str, list[str]]]:
        self._refresh()
        return self._tree

    def path_of(self, label: str) -> list[str]:
        """Full path of a label at any level ("a/b/c" paths accepted); [label] when the tree lacks it."""
        self._refresh()
        if not label:
            return []
        if "/" in label:
            parts = [p for p in label.split("/") if p]
            return parts
        return list(self._paths.get(label, [label]))

    def _refresh(self) -> None:
        try:
            mtime = os.stat(self.path).st_mtime
        except OSError:
            if self._mtime is None and not self._tree:
                log.warning("no category tree at %s; Open311 services list is empty", self.path)
                self._mtime = -1.0
            return
        if mtime == self._mtime:
            return
        with self._lock:
            try:
                raw = json.loads(self.path.read_text(encoding="utf-8"))
                tree = self._parse(raw)
            except (OSError, ValueError, TypeError, AttributeError) as exc:
                # Being rewritten right now, or broken: keep the last good tree and try again later.
                log.warning("category tree %s unreadable (%s); keeping the previous one", self.path, exc)
                return
            self._tree = tree
            paths: dict[str, list[str]] = {}
            for l1, subs in tree.items():
                paths.setdefault(l1, [l1])
                for l2, leaves in subs.items():
                    paths.setdefault(l2, [l1, l2])
                    for l3 in leaves:
                        # Leaf names repeat under different parents (其他); the first one wins.
                        paths.setdefault(l3, [l1, l2, l3])
            self._paths = paths
            self._mtime = mtime

    @staticmethod
    def _parse(raw: Any) -> dict[str, dict[str, list[str]]]:
        tree = raw.get("tree", raw) if isinstance(raw, dict) else None
        if not isinstance(tree, dict):
            raise ValueError("expected an object with a 'tree'")
        out: dict[str, dict[str, list[str]]] = {}
        for l1, subs in tree.items():
            if isinstance(subs, list):
                out[str(l1)] = {str(s): [] for s in subs}
            elif isinstance(subs, dict):
                out[str(l1)] = {str(l2): [str(x) for x in leaves] if isinstance(leaves, list) else []
                                for l2, leaves in subs.items()}
            else:
                raise ValueError(f"bad subtree under {l1!r}")
        return out
