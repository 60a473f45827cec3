from __future__ import annotations

import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hotline.status import (
    OPEN_STATES,
    TRANSITIONS,
    IllegalTransition,
    Status,
    can_move,
    check_move,
    parse_status,
)


def test_the_closed_loop_is_a_legal_path() -> None:
    path = [Status.RECEIVED, Status.CLASSIFIED, Status.CONFIRMED, Status.DISPATCHED, Status.IN_PROGRESS,
            Status.RESOLVED, Status.CLOSED]
    for a, b in itertools.pairwise(path):
        check_move(a, b)


@pytest.mark.parametrize(
    ("current", "target"),
    [
        (Status.RECEIVED, Status.DISPATCHED),
        (Status.CLASSIFIED, Status.RESOLVED),
        (Status.CLOSED, Status.DISPATCHED),
        (Status.RESOLVED, Status.IN_PROGRESS),
        (Status.MERGED, Status.DISPATCHED),
        (Status.DISPATCHED, Status.CLASSIFIED),
    ],
)
def test_illegal_moves_are_refused(current: Status, target: Status) -> None:
    with pytest.raises(IllegalTransition):
        check_move(current, target)


def test_side_paths() -> None:
    assert can_move(Status.DISPATCHED, Status.RETURNED)  # 退单
    assert can_move(Status.RETURNED, Status.CONFIRMED)  # re-routed by the call-taker
    assert can_move(Status.RESOLVED, Status.REOPENED)  # 重办 after 不满意
    assert can_move(Status.CLOSED, Status.REOPENED)
    assert can_move(Status.MERGED, Status.CLASSIFIED)  # undo of a merge


def test_every_state_is_reachable_and_has_a_way_on() -> None:
    reachable = {Status.RECEIVED}
    frontier = [Status.RECEIVED]
    while frontier:
        for nxt in TRANSITIONS[frontier.pop()]:
            if nxt not in reachable:
                reachable.add(nxt)
                frontier.append(nxt)
    assert reachable == set(Status)
    assert all(TRANSITIONS[s] for s in Status)
    assert Status.CLOSED not in OPEN_STATES and Status.MERGED not in OPEN_STATES


def test_parse_status_rejects_unknown() -> None:
    assert parse_status("closed") is Status.CLOSED
    with pytest.raises(ValueError):
        parse_status("deleted")


@given(st.lists(st.sampled_from(list(Status)), min_size=1, max_size=40))
def test_random_walks_only_follow_the_table(steps: list[Status]) -> None:
    current = Status.RECEIVED
    for target in steps:
        if target in TRANSITIONS[current]:
            check_move(current, target)
            current = target
        else:
            with pytest.raises(IllegalTransition):
                check_move(current, target)
