"""The case status machine, following the 7-step closed loop of 接诉即办.

受理 received → 立案 classified/confirmed → 派遣 dispatched → 处置 in_progress → 反馈 resolved
→ 核实结案 closed → 评价 (the survey, recorded on the closed case). Side states: returned (退单, back to
the call-taker for re-routing), reopened (重办 after an unsatisfied survey), merged (a repeat report
folded into another case), answered (直接答复: a consultation answered at intake, no dispatch).
"""

from __future__ import annotations

from enum import StrEnum


class Status(StrEnum):
    RECEIVED = "received"
    CLASSIFIED = "classified"
    CONFIRMED = "confirmed"
    DISPATCHED = "dispatched"
    IN_PROGRESS = "in_progress"
    RESOLVED = "resolved"
    CLOSED = "closed"
    RETURNED = "returned"
    REOPENED = "reopened"
    MERGED = "merged"
    ANSWERED = "answered"


S = Status

TRANSITIONS: dict[Status, frozenset[Status]] = {
    S.RECEIVED: frozenset({S.CLASSIFIED, S.MERGED}),
    S.CLASSIFIED: frozenset({S.CONFIRMED, S.MERGED, S.ANSWERED}),
    # Confirmed means a work order is on its way: such a case can no longer become a merged report.
    S.CONFIRMED: frozenset({S.DISPATCHED, S.CLASSIFIED}),
    S.DISPATCHED: frozenset({S.IN_PROGRESS, S.RETURNED, S.RESOLVED}),
    S.IN_PROGRESS: frozenset({S.RESOLVED, S.RETURNED}),
    S.RETURNED: frozenset({S.CONFIRMED, S.CLASSIFIED}),
    S.RESOLVED: frozenset({S.CLOSED, S.REOPENED}),
    S.CLOSED: frozenset({S.REOPENED}),
    S.REOPENED: frozenset({S.CONFIRMED, S.DISPATCHED}),
    S.MERGED: frozenset({S.CLASSIFIED}),
    S.ANSWERED: frozenset({S.CLOSED, S.CLASSIFIED}),
}

# States in which a case is still being worked on: candidates for merging repeats and for overdue checks.
OPEN_STATES: frozenset[Status] = frozenset(
    {S.RECEIVED, S.CLASSIFIED, S.CONFIRMED, S.DISPATCHED, S.IN_PROGRESS, S.RETURNED, S.REOPENED}
)

# What a citizen sees on the status page.
LABELS_ZH: dict[Status, str] = {
    S.RECEIVED: "已受理",
    S.CLASSIFIED: "已立案，待确认",
    S.CONFIRMED: "已立案",
    S.DISPATCHED: "已派遣至承办单位",
    S.IN_PROGRESS: "承办单位处理中",
    S.RESOLVED: "已办理，待回访",
    S.CLOSED: "已办结",
    S.RETURNED: "重新派遣中",
    S.REOPENED: "重新办理中",
    S.MERGED: "已并入相同诉求案件",
    S.ANSWERED: "已直接答复",
}


class IllegalTransition(Exception):
    def __init__(self, current: Status, target: Status) -> None:
        super().__init__(f"cannot move a case from {current} to {target}")
        self.current = current
        self.target = target


def parse_status(value: str) -> Status:
    try:
        return Status(value)
    except ValueError as exc:
        raise ValueError(f"unknown status {value!r}") from exc


def can_move(current: Status, target: Status) -> bool:
    return target in TRANSITIONS[current]


def check_move(current: Status, target: Status) -> None:
    if not can_move(current, target):
        raise IllegalTransition(current, target)
