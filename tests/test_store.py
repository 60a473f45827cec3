from __future__ import annotations

import asyncio
import dataclasses
import json
import re
import time
from typing import Any

import pytest

from hotline.records import Case, Location, Report
from hotline.status import IllegalTransition, Status
from hotline.store import CaseNotFound, Store


def new_case(case_id: str, status: Status = Status.CLASSIFIED, **kw: object) -> Case:
    now = time.time()
    return Case(id=case_id, channel="web", sender="13800001111", status=status, created_at=now, updated_at=now,
                text="路灯坏了", normalized_text="路灯坏了", contact="13800001111", **kw)  # type: ignore[arg-type]


def test_case_record_round_trips_and_matches_a_full_conversion() -> None:
    case = Case(id="20261123-000001", channel="web", sender="web:x", status=Status.CLASSIFIED, created_at=1.5,
                updated_at=2.5, text="路灯坏了", normalized_text="路灯坏了", location=Location(39.9, 116.4, "东门"),
                reports=[Report("20261123-000002", "wechat", "wx:o", "", "路灯又坏了", 3.5, 0.93)],
                suggestion={"category": {"top": [{"label": "城乡建设", "p": 0.9}]}},
                duplicate_candidates=[{"case_id": "x"}])
    reference = dataclasses.asdict(case)
    reference["status"] = "classified"
    data = case.to_dict()
    assert data == reference and list(data) == list(reference)
    assert Case.from_dict(json.loads(json.dumps(data, ensure_ascii=False))) == case
    assert Case.from_dict(json.loads(json.dumps(Case(**{**case.__dict__, "location": None,
                                                         "reports": []}).to_dict()))).location is None


async def test_ids_are_date_and_sequence(store: Store) -> None:
    first = await store.allocate_id()
    second = await store.allocate_id()
    assert re.fullmatch(r"\d{8}-\d{6}", first)
    assert first[:8] == second[:8]
    assert int(second[9:]) == int(first[9:]) + 1


async def test_ids_are_unique_under_concurrency(store: Store) -> None:
    ids = await asyncio.gather(*(store.allocate_id() for _ in range(1000)))
    assert len(set(ids)) == 1000


async def test_create_get_and_events(store: Store) -> None:
    case = new_case(await store.allocate_id())
    result = await store.create_case(case, events=[("web:citizen", "received", {"channel": "web"})])
    assert result.created and result.case_id == case.id
    loaded = await store.get_case(case.id)
    assert loaded.text == "路灯坏了" and loaded.status is Status.CLASSIFIED
    events = await store.events(case.id)
    assert [e.action for e in events] == ["received"]
    assert await store.confirm_queue() == [case.id]
    assert await store.count(Status.CLASSIFIED) == 1


async def test_idempotency_key_returns_the_first_case(store: Store) -> None:
    a = new_case(await store.allocate_id())
    b = new_case(await store.allocate_id())
    first = await store.create_case(a, idempotency_keys=["req:x"])
    second = await store.create_case(b, idempotency_keys=["req:x"])
    assert first.created and not second.created
    assert second.case_id == a.id
    with pytest.raises(CaseNotFound):
        await store.get_case(b.id)
    assert await store.count() == 1


async def test_claim_id_returns_the_case_a_key_names_and_spends_no_number_on_it(store: Store) -> None:
    first, earlier = await store.claim_id(["req:claim"])
    assert not earlier
    await store.create_case(new_case(first), idempotency_keys=["req:claim"])
    again, earlier = await store.claim_id(["resub:other", "req:claim"])
    assert earlier and again == first
    # The repeat took no sequence number: the next new message gets the very next one.
    following, earlier = await store.claim_id(["req:fresh"])
    assert not earlier
    assert int(following.split("-")[1]) == int(first.split("-")[1]) + 1
    ids = await asyncio.gather(*(store.claim_id([f"req:{i}"]) for i in range(200)))
    assert len({i for i, _e in ids}) == 200 and not any(e for _i, e in ids)


async def test_racing_idempotent_creates_make_one_case(store: Store) -> None:
    cases = [new_case(await store.allocate_id()) for _ in range(50)]
    results = await asyncio.gather(*(store.create_case(c, idempotency_keys=["req:race"]) for c in cases))
    assert sum(r.created for r in results) == 1
    assert len({r.case_id for r in results}) == 1


async def test_statuses_come_from_the_indexes_and_follow_moves(store: Store) -> None:
    a, b = new_case(await store.allocate_id()), new_case(await store.allocate_id(), status=Status.RESOLVED)
    await store.create_case(a)
    await store.create_case(b)
    assert await store.statuses([a.id, b.id, "20000101-000001"]) == {
        a.id: Status.CLASSIFIED, b.id: Status.RESOLVED, "20000101-000001": None}
    await store.update_case(a.id, lambda c: None, actor="t", action="confirm", target=Status.CONFIRMED)
    assert await store.statuses([a.id]) == {a.id: Status.CONFIRMED}
    assert await store.statuses([]) == {}


async def test_a_record_read_with_the_statuses_is_written_without_reading_it_again(store: Store,
                                                                                    monkeypatch: Any) -> None:
    a, b = new_case(await store.allocate_id()), new_case(await store.allocate_id(), status=Status.RESOLVED)
    await store.create_case(a)
    await store.create_case(b)
    open_states = {Status.CLASSIFIED, Status.CONFIRMED}
    statuses, raw = await store.statuses_and_record([a.id, b.id], open_states)
    assert statuses == {a.id: Status.CLASSIFIED, b.id: Status.RESOLVED}
    assert raw == await store.r.get(store.k_case(a.id))
    # Only the first case's record, and only in a status asked for.
    assert (await store.statuses_and_record([b.id, a.id], open_states))[1] is None
    assert (await store.statuses_and_record([a.id], ()))[1] is None
    assert (await store.statuses_and_record(["20000101-000001"], open_states)) == ({"20000101-000001": None}, None)
    reads: list[str] = []
    get = store.r.get

    async def spy(key: str) -> Any:
        reads.append(key)
        return await get(key)

    monkeypatch.setattr(store.r, "get", spy)
    def report(n: int) -> Any:
        return lambda c: c.reports.append(Report(f"r{n}", "web", "s", "", "t", float(n)))

    first = await store.update_case(a.id, report(1), actor="t", action="report_merged", read=raw)
    assert reads == [] and [r.report_id for r in first.reports] == ["r1"]
    # A record changed since it was read: the write is refused, the case read anew and changed again.
    second = await store.update_case(a.id, report(2), actor="t", action="report_merged", read=raw)
    assert reads == [store.k_case(a.id)]
    assert [r.report_id for r in second.reports] == ["r1", "r2"]
    assert [r.report_id for r in (await store.get_case(a.id)).reports] == ["r1", "r2"]
    assert [e.action for e in await store.events(a.id)].count("report_merged") == 2


async def test_transition_updates_indexes_and_log(store: Store) -> None:
    case = new_case(await store.allocate_id())
    await store.create_case(case)

    def confirm(c: Case) -> dict:
        c.classification = {"category": "城乡建设"}
        return {"category": "城乡建设"}

    updated = await store.update_case(case.id, confirm, actor="agent:li", action="confirmed",
                                      target=Status.CONFIRMED)
    assert updated.status is Status.CONFIRMED
    assert await store.count(Status.CLASSIFIED) == 0
    assert await store.count(Status.CONFIRMED) == 1
    assert await store.confirm_queue() == []
    last = (await store.events(case.id))[-1]
    assert last.actor == "agent:li" and last.data["from"] == "classified" and last.data["to"] == "confirmed"


async def test_illegal_transition_writes_nothing(store: Store) -> None:
    case = new_case(await store.allocate_id())
    await store.create_case(case)
    with pytest.raises(IllegalTransition):
        await store.update_case(case.id, lambda c: None, actor="x", action="resolved", target=Status.RESOLVED)
    assert (await store.get_case(case.id)).status is Status.CLASSIFIED
    assert await store.events(case.id) == []


async def test_concurrent_updates_are_not_lost(store: Store) -> None:
    case = new_case(await store.allocate_id())
    await store.create_case(case)

    def add_attachment(n: int):
        def mutate(c: Case) -> dict:
            c.attachments.append(f"a{n}")
            return {}
        return mutate

    await asyncio.gather(*(store.update_case(case.id, add_attachment(n), actor="t", action="note")
                           for n in range(30)))
    assert sorted((await store.get_case(case.id)).attachments) == sorted(f"a{n}" for n in range(30))


async def test_updates_from_two_processes_are_not_lost(store: Store, redis_server: Any, key_prefix: str) -> None:
    """Two stores (two serving processes: separate connections, no shared lock) racing on one case: a write
    computed from a record that changed meanwhile is refused and redone, never applied over the other."""
    other = Store.from_url(redis_server.url, prefix=key_prefix)
    case = new_case(await store.allocate_id())
    await store.create_case(case)
    redone: list[str] = []

    def add_attachment(name: str):
        def mutate(c: Case) -> dict:
            redone.append(name)
            c.attachments.append(name)
            return {"added": name}
        return mutate

    try:
        await asyncio.gather(*(s.update_case(case.id, add_attachment(f"{tag}{n}"), actor="t", action="note")
                               for n in range(20) for tag, s in (("a", store), ("b", other))))
    finally:
        await other.close()
    final = await store.get_case(case.id)
    assert sorted(final.attachments) == sorted(f"{t}{n}" for n in range(20) for t in "ab")
    assert len(redone) > 40  # some writes did meet a changed record and were computed again
    events = [e for e in await store.events(case.id) if e.action == "note"]
    assert sorted(e.data["added"] for e in events) == sorted(final.attachments)  # one event per write


async def test_update_of_a_case_deleted_meanwhile_is_not_found(store: Store, monkeypatch: Any) -> None:
    case = new_case(await store.allocate_id())
    await store.create_case(case)

    get = store.r.get

    async def get_then_delete(key: str) -> Any:
        raw = await get(key)
        await store.r.delete(key)  # purged between the read and the write
        return raw

    monkeypatch.setattr(store.r, "get", get_then_delete)
    with pytest.raises(CaseNotFound):
        await store.update_case(case.id, lambda c: None, actor="x", action="y")
    monkeypatch.undo()
    assert await store.r.exists(store.k_case(case.id)) == 0
    assert await store.events(case.id) == []


async def test_unknown_case(store: Store) -> None:
    with pytest.raises(CaseNotFound):
        await store.get_case("20990101-000001")
    with pytest.raises(CaseNotFound):
        await store.update_case("20990101-000001", lambda c: None, actor="x", action="y")


async def test_queue_puts_emergencies_and_returns_first(store: Store) -> None:
    plain = new_case(await store.allocate_id())
    await store.create_case(plain)
    urgent = new_case(await store.allocate_id(), emergency=True)
    await store.create_case(urgent)
    assert await store.confirm_queue() == [urgent.id, plain.id]
