"""Undoing a merge while its case is merged on, or while the report itself is being merged.

Report R is merged into case A; one call-taker merges A (and so R) into case B while another undoes R's
merge. Each test runs the competing action entirely at one precise point of the other (right after one of
its writes, or between its reads and its first write), so every order is tried on every run. Whatever the
order, R ends either merged and listed by exactly the case its ``duplicate_of`` links lead to, or free and
listed by no case; an undo afterwards works or is a 409 ``not_merged`` that agrees with the record.

The competing action runs in a second service on its own connections, as in a second worker process: the
first one may be waiting in the middle of a write of its own.
"""

from __future__ import annotations

import asyncio
import contextvars
import random
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from redis.exceptions import NoScriptError

from hotline.appkeys import DEDUP, STORE
from hotline.dedup import MAX_PRIORITY_BUMP, DedupError, DedupService
from hotline.records import Case
from hotline.status import OPEN_STATES, Status
from hotline.store import Store

TEXT = "翠湖苑小区5号楼电梯停运三天了，老人上下楼很困难，请尽快维修。"

# Which action the current task runs ("merge", "undo", ...): the interleavings below act on its writes only.
ACTING: contextvars.ContextVar[str] = contextvars.ContextVar("acting", default="")


@pytest.fixture
def other(client: Any, store: Store) -> DedupService:
    """The duplicate service of a second worker process: same Redis keys, its own connections and queues."""
    dedup: DedupService = client.app[DEDUP]
    return DedupService(store, dedup.config, dedup.idf)


async def open_cases(store: Store, n: int) -> list[Case]:
    """``n`` classified cases, written straight to the store (the intake's duplicate check would merge
    repeats of one text)."""
    out = []
    for _ in range(n):
        now = time.time()
        case = Case(id=await store.allocate_id(now), channel="web", sender="", status=Status.CLASSIFIED,
                    created_at=now, updated_at=now, text=TEXT, normalized_text=TEXT)
        assert (await store.create_case(case)).created
        out.append(case)
    return out


@contextmanager
def at_call(store: Store, acting: str, then: Callable[[], Awaitable[Any]], *, case_id: str = "", nth: int = 1,
            after: bool = True, command: str = "EVALSHA") -> Iterator[list[Any]]:
    """Run ``then`` entirely, once, at the ``nth`` ``command`` that the action ``acting`` sends for
    ``case_id``'s record (any record when empty): right ``after`` it, or else just before it. The commands
    are script calls (the writes; the record written is the script's first key) or record reads (GET, MGET:
    the first record read).
    Yields a list that receives what ``then`` returned or raised."""
    original = store.r.execute_command
    wanted = store.k_case(case_id) if case_id else ""
    seen = 0
    done: list[Any] = []

    async def run_then() -> None:
        token = ACTING.set("")
        try:
            done.append(await then())
        except DedupError as exc:
            done.append(exc)
        finally:
            ACTING.reset(token)

    async def execute_command(*args: Any, **kwargs: Any) -> Any:
        nonlocal seen
        hit = False
        name = str(args[0]).upper()
        if not done and ACTING.get() == acting and name == command:
            key = args[3] if name == "EVALSHA" else args[1]
            if not wanted or key == wanted:
                seen += 1
                hit = seen == nth
        if hit and not after:
            await run_then()
        try:
            result = await original(*args, **kwargs)
        except NoScriptError:
            seen -= hit  # redis-py loads the script and sends it again: that call is the one
            raise
        if hit and after:
            await run_then()
        return result

    store.r.execute_command = execute_command  # type: ignore[method-assign]
    try:
        yield done
    finally:
        store.r.execute_command = original  # type: ignore[method-assign]


async def acting(name: str, action: Awaitable[Any]) -> Any:
    ACTING.set(name)  # this coroutine's own context: the caller's is untouched once it is awaited as a task
    try:
        return await action
    except DedupError as exc:
        return exc


async def act(name: str, action: Awaitable[Any]) -> Any:
    """``action`` run as the action ``name`` (what ``at_call`` watches); a DedupError is returned."""
    return await asyncio.create_task(acting(name, action))


async def assert_consistent(store: Store, ids: list[str]) -> None:
    """A merged report is listed by exactly one case, the one its links lead to and which is open; a free
    case is listed by none; each case's priority counts its reporters."""
    by_id = {c.id: c for c in await store.get_cases(ids)}

    def root(case_id: str) -> str:
        seen: list[str] = []
        while by_id[case_id].duplicate_of and case_id not in seen:
            seen.append(case_id)
            case_id = by_id[case_id].duplicate_of
        return case_id

    states = {c.id: (str(c.status), c.duplicate_of, [r.report_id for r in c.reports]) for c in by_id.values()}
    for case_id, case in by_id.items():
        holders = [c.id for c in by_id.values() if case_id in [r.report_id for r in c.reports]]
        if case.status == Status.MERGED:
            assert case.duplicate_of and holders == [root(case_id)], (case_id, states)
            assert by_id[root(case_id)].status in OPEN_STATES, (case_id, states)
        else:
            assert case.duplicate_of == "" and holders == [], (case_id, states)
            assert case.status in OPEN_STATES, (case_id, states)
        assert case.priority == min(MAX_PRIORITY_BUMP, len(case.reports)), (case_id, states)
        assert len({r.report_id for r in case.reports}) == len(case.reports), (case_id, states)


async def assert_undo_agrees(dedup: DedupService, store: Store, report_id: str, ids: list[str]) -> None:
    """Undoing the report now works if it is merged, else it is a 409 not_merged; either way it ends free."""
    before = await store.get_case(report_id)
    try:
        await dedup.unmerge(report_id, "staff:ct3")
    except DedupError as exc:
        assert exc.status == 409 and exc.code == "not_merged", exc
        assert before.status != Status.MERGED, before
    else:
        assert before.status == Status.MERGED
    after = await store.get_case(report_id)
    assert after.status == Status.CLASSIFIED and after.duplicate_of == ""
    await assert_consistent(store, ids)


def settled(result: Any) -> None:
    """An action that lost the race is a 409 with a reason, never something else."""
    assert isinstance(result, Case) or (isinstance(result, DedupError) and result.status == 409), result


# R merged into A; A merged into B; R undone -------------------------------------------------------

# (what runs as "merge", when the undo runs: at which write of the merge, before or after it)
MERGE_THEN_UNDO = {
    # The undo runs between A's own merge write and A's arrival on B (A's reports are read by then).
    "undo after A is marked": ("a", 1, True),
    # ...right after B took A and its reporters.
    "undo after B took A": ("b", 1, True),
    # ...after B took A and R, before R's own record points at B.
    "undo before R points at B": ("r", 1, False),
}


@pytest.mark.parametrize("point", list(MERGE_THEN_UNDO))
async def test_an_undo_during_a_merge_of_its_case_leaves_the_report_on_one_side(client: Any, other: DedupService,
                                                                                 point: str) -> None:
    store: Store = client.app[STORE]
    dedup: DedupService = client.app[DEDUP]
    b, a, r = await open_cases(store, 3)
    await dedup.confirm_merge(r.id, a.id, "staff:ct1")
    which, nth, after = MERGE_THEN_UNDO[point]
    with at_call(store, "merge", lambda: other.unmerge(r.id, "staff:ct2"),
                 case_id={"a": a.id, "b": b.id, "r": r.id}[which], nth=nth, after=after) as undone:
        merged = await act("merge", dedup.confirm_merge(a.id, b.id, "staff:ct1"))
    assert len(undone) == 1, "the undo did not run"
    settled(merged)
    settled(undone[0])
    ids = [a.id, b.id, r.id]
    await assert_consistent(store, ids)
    await assert_undo_agrees(dedup, store, r.id, ids)


async def test_a_merge_between_the_undos_reads_and_its_write_is_seen(client: Any, other: DedupService) -> None:
    """The undo has read R and the cases R's links lead to (A alone); A is then merged into B, carrying R."""
    store: Store = client.app[STORE]
    dedup: DedupService = client.app[DEDUP]
    b, a, r = await open_cases(store, 3)
    await dedup.confirm_merge(r.id, a.id, "staff:ct1")
    with at_call(store, "undo", lambda: other.confirm_merge(a.id, b.id, "staff:ct1"), after=False) as merged:
        undone = await act("undo", dedup.unmerge(r.id, "staff:ct2"))
    assert len(merged) == 1 and isinstance(merged[0], Case), merged
    settled(undone)
    ids = [a.id, b.id, r.id]
    await assert_consistent(store, ids)
    await assert_undo_agrees(dedup, store, r.id, ids)
    # The merge itself stands: A is B's report.
    assert (await store.get_case(a.id)).duplicate_of == b.id


async def test_undoing_the_case_being_merged_leaves_it_on_one_side(client: Any, other: DedupService) -> None:
    """A (holding R) is undone right after it was marked merged into B, before B took it."""
    store: Store = client.app[STORE]
    dedup: DedupService = client.app[DEDUP]
    b, a, r = await open_cases(store, 3)
    await dedup.confirm_merge(r.id, a.id, "staff:ct1")
    with at_call(store, "merge", lambda: other.unmerge(a.id, "staff:ct2"), case_id=a.id) as undone:
        merged = await act("merge", dedup.confirm_merge(a.id, b.id, "staff:ct1"))
    assert len(undone) == 1
    settled(merged)
    settled(undone[0])
    ids = [a.id, b.id, r.id]
    await assert_consistent(store, ids)
    await assert_undo_agrees(dedup, store, a.id, ids)
    await assert_undo_agrees(dedup, store, r.id, ids)


# a report merged (merge accepted) or its suggestion rejected while it is undone -------------------------

async def test_undoing_a_report_while_it_is_being_merged(client: Any, other: DedupService) -> None:
    """R is marked merged into A; before A takes it, R's merge is undone."""
    store: Store = client.app[STORE]
    dedup: DedupService = client.app[DEDUP]
    a, r = await open_cases(store, 2)
    with at_call(store, "merge", lambda: other.unmerge(r.id, "staff:ct2"), case_id=r.id) as undone:
        merged = await act("merge", dedup.confirm_merge(r.id, a.id, "staff:ct1"))
    assert len(undone) == 1 and isinstance(undone[0], Case), undone
    settled(merged)
    ids = [a.id, r.id]
    await assert_consistent(store, ids)
    await assert_undo_agrees(dedup, store, r.id, ids)
    # The pair is one the call-taker took apart: it is not proposed again.
    assert a.id in await dedup.index.rejected(r.id)


async def test_another_merge_into_the_case_during_an_undo(client: Any, other: DedupService) -> None:
    """X is merged into A while R is taken off A: both writes of A count."""
    store: Store = client.app[STORE]
    dedup: DedupService = client.app[DEDUP]
    a, r, x = await open_cases(store, 3)
    await dedup.confirm_merge(r.id, a.id, "staff:ct1")
    with at_call(store, "merge", lambda: other.unmerge(r.id, "staff:ct2"), case_id=x.id) as undone:
        merged = await act("merge", dedup.confirm_merge(x.id, a.id, "staff:ct1"))
    assert isinstance(merged, Case) and len(undone) == 1 and isinstance(undone[0], Case), (merged, undone)
    ids = [a.id, r.id, x.id]
    await assert_consistent(store, ids)
    assert [rep.report_id for rep in (await store.get_case(a.id)).reports] == [x.id]


@pytest.mark.parametrize("after", [False, True], ids=["undo-first", "reject-first"])
async def test_a_rejection_racing_an_undo(client: Any, other: DedupService, after: bool) -> None:
    """The call-taker rejects a suggestion for R while R's merge is undone, just before or just after the
    rejection reads R: the rejection counts only if R was waiting for its decision when it was read."""
    store: Store = client.app[STORE]
    dedup: DedupService = client.app[DEDUP]
    a, r, cand = await open_cases(store, 3)
    await dedup.confirm_merge(r.id, a.id, "staff:ct1")
    with at_call(store, "reject", lambda: other.unmerge(r.id, "staff:ct2"), case_id=r.id, command="GET",
                 after=after) as undone:
        rejected = await act("reject", dedup.reject(r.id, cand.id, "staff:ct1"))
    assert len(undone) == 1 and isinstance(undone[0], Case), undone
    settled(rejected)
    ids = [a.id, r.id, cand.id]
    await assert_consistent(store, ids)
    trail = [e.action for e in await store.events(r.id)]
    if after:
        assert isinstance(rejected, DedupError) and rejected.code == "already_merged"
        assert "duplicate_rejected" not in trail
    else:
        assert isinstance(rejected, Case) and trail.index("duplicate_rejected") > trail.index("unmerged")


# no fixed point: both at once, many times ------------------------------------------------------------

async def test_merge_and_undo_at_once_many_times(client: Any, other: DedupService,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """The two actions run concurrently, each store call delayed a little at random (seeded), for a few
    seconds: every round ends consistent."""
    store: Store = client.app[STORE]
    dedup: DedupService = client.app[DEDUP]
    rng = random.Random(20260525)

    def jitter(r: Any) -> None:
        original = r.execute_command

        async def jittered(*args: Any, **kwargs: Any) -> Any:
            if ACTING.get():
                await asyncio.sleep(rng.random() * 0.004)
            return await original(*args, **kwargs)

        monkeypatch.setattr(r, "execute_command", jittered)

    jitter(store.r)
    jitter(other.store.r)
    deadline = time.monotonic() + 3.0
    rounds = 0
    while rounds < 60 and time.monotonic() < deadline:
        b, a, r = await open_cases(store, 3)
        await dedup.confirm_merge(r.id, a.id, "staff:ct1")
        undo_a = rng.random() < 0.25
        results = await asyncio.gather(act("merge", dedup.confirm_merge(a.id, b.id, "staff:ct1")),
                                       act("undo", other.unmerge(a.id if undo_a else r.id, "staff:ct2")))
        for result in results:
            settled(result)
        ids = [a.id, b.id, r.id]
        await assert_consistent(store, ids)
        await assert_undo_agrees(dedup, store, r.id, ids)
        rounds += 1
    assert rounds >= 10


# the store's write of several cases -------------------------------------------------------------------

async def test_a_write_of_linked_cases_is_computed_again_when_one_read_changed(client: Any, store: Store) -> None:
    """``update_linked`` writes only if every case it read (also those it does not write) is unchanged: a
    change of one of them between the read and the write makes it read and compute again."""
    mine: Store = client.app[STORE]
    x, y = await open_cases(mine, 2)
    calls = []

    def copy_priority(cases: dict[str, Case]) -> dict[str, tuple[str, dict[str, Any]]]:
        calls.append(cases[y.id].priority)
        cases[x.id].priority = cases[y.id].priority
        return {x.id: ("test_copied", {"priority": cases[y.id].priority})}

    def bump(c: Case) -> None:
        c.priority = 2

    with at_call(mine, "linked", lambda: store.update_case(y.id, bump, actor="system", action="test_bumped"),
                 case_id=x.id, command="MGET") as bumped:
        written = await act("linked", mine.update_linked([x.id, y.id], copy_priority, actor="system"))
    assert len(bumped) == 1 and calls == [0, 2]
    assert written[x.id].priority == (await mine.get_case(x.id)).priority == 2
    assert [e.action for e in await mine.events(x.id)] == ["test_copied"]
    assert [e.action for e in await mine.events(y.id)] == ["test_bumped"]
