"""Knowledge-base entries in the real embedded store: add/edit/retire with audit events, import, versions."""

from __future__ import annotations

import pytest

from hotline.store import Store
from hotline.store.kb import EntryConflict, EntryInvalid, EntryNotFound, KnowledgeBase, valid_entry_id

Q = {"question": "新生儿医保怎么办理", "answer": "到社区医保窗口办理。", "department": "医疗保障局", "date": "2026-3-1"}


async def test_add_edit_retire_are_audited_and_bump_the_version(store: Store) -> None:
    kb = KnowledgeBase(store)
    v0 = await kb.version()
    rec = await kb.add(Q, actor="staff:王班长")
    assert rec.id == "kb-000001" and rec.date == "2026-03-01" and rec.status == "active" and rec.rev == 1
    edited = await kb.edit(rec.id, {"answer": "凭出生医学证明到社区医保窗口办理。"}, actor="staff:王班长")
    assert edited.rev == 2 and edited.answer.startswith("凭出生")
    same = await kb.edit(rec.id, {"answer": "凭出生医学证明到社区医保窗口办理。"}, actor="staff:李")
    assert same.rev == 2  # nothing changed: no event, no version bump
    retired = await kb.retire(rec.id, actor="staff:王班长", reason="政策已调整")
    assert retired.status == "retired" and retired.retired_by == "staff:王班长"
    again = await kb.retire(rec.id, actor="staff:王班长")
    assert again.rev == retired.rev
    events = await kb.events(rec.id)
    assert [e.action for e in events] == ["created", "edited", "retired"]
    assert all(e.actor == "staff:王班长" for e in events)
    assert events[1].data["answer"] == ["到社区医保窗口办理。", "凭出生医学证明到社区医保窗口办理。"]
    assert events[2].data["reason"] == "政策已调整"
    assert await kb.version() == v0 + 3
    changes = await kb.recent_changes()
    assert [c["action"] for c in changes] == ["retired", "edited", "created"]
    restored = await kb.restore(rec.id, actor="staff:王班长")
    assert restored.status == "active" and (await kb.events(rec.id))[-1].action == "restored"


async def test_edit_conflict_and_validation(store: Store) -> None:
    kb = KnowledgeBase(store)
    rec = await kb.add(Q, actor="a")
    await kb.edit(rec.id, {"department": "医保局"}, actor="a", expected_rev=1)
    with pytest.raises(EntryConflict):
        await kb.edit(rec.id, {"department": "医疗保障局"}, actor="b", expected_rev=1)
    with pytest.raises(EntryNotFound):
        await kb.edit("kb-999999", {"answer": "x"}, actor="a")
    for bad in ({"question": "q"}, {"question": "", "answer": "a"}, {"question": "q", "answer": 3},
                {"question": "q", "answer": "a", "date": "昨天"}, {"question": "q", "answer": "a", "x": 1},
                {"question": "q" * 6000, "answer": "a"}):
        with pytest.raises(EntryInvalid):
            await kb.add(bad, actor="a")
    assert await kb.count() == 1


async def test_import_is_idempotent_and_never_revives_retired_entries(store: Store) -> None:
    kb = KnowledgeBase(store)
    rows = [{"source_id": f"r{i}", "question": f"问题{i}怎么办", "answer": f"答复{i}", "department": "甲局",
             "date": "2018-09-28"} for i in range(1200)]
    rows.append({"source_id": "bad", "question": "", "answer": "x"})
    counts = await kb.import_many(rows, actor="cli", source="dalian", batch=500)
    assert counts == {"created": 1200, "updated": 0, "unchanged": 0, "skipped": 1}
    assert await kb.count() == 1200
    rec = await kb.get("dalian:r7")
    assert rec.source == "dalian" and rec.date == "2018-09-28" and rec.created_by == "cli"
    await kb.retire("dalian:r7", actor="staff:王")
    rows[3]["answer"] = "新答复3"
    rows[7]["answer"] = "新答复7"
    counts = await kb.import_many(rows, actor="cli", source="dalian")
    assert counts == {"created": 0, "updated": 1, "unchanged": 1199, "skipped": 1}
    assert (await kb.get("dalian:r3")).answer == "新答复3"
    assert (await kb.get("dalian:r7")).status == "retired"
    assert [e.action for e in await kb.events("dalian:r3")] == ["imported", "reimported"]
    version, records = await kb.snapshot()
    assert len(records) == 1200 and version == await kb.version()
    assert all(valid_entry_id(r.id) for r in records)


async def test_pages_hold_exactly_limit_entries_in_id_order(store: Store) -> None:
    kb = KnowledgeBase(store)
    ids = [(await kb.add({**Q, "question": f"问题{i}怎么办理"}, actor="t")).id for i in range(7)]
    for gone in (ids[1], ids[4]):
        await kb.retire(gone, actor="t")

    async def walk(limit: int, status: str) -> list[list[str]]:
        pages, cursor = [], 0
        while cursor is not None:
            cursor, records = await kb.page(cursor, limit, status)
            pages.append([r.id for r in records])
        return pages

    assert await walk(3, "all") == [ids[0:3], ids[3:6], ids[6:7]]
    active = [i for i in ids if i not in (ids[1], ids[4])]
    assert await walk(2, "active") == [active[0:2], active[2:4], active[4:5]]
    assert await walk(5, "retired") == [[ids[1], ids[4]]]
    assert await kb.page(7, 3) == (None, [])


async def test_every_imported_id_is_a_valid_entry_id(store: Store) -> None:
    # The longest source and source id, and a source starting with "_": reachable by the API's id check.
    kb = KnowledgeBase(store)
    rows = [{"source_id": "9" * 80, "question": "居住证怎么办理", "answer": "到派出所办理。"}]
    await kb.import_many(rows, actor="cli", source="_" + "s" * 50)
    (record,) = (await kb.snapshot())[1]
    assert len(record.id) == 101 and valid_entry_id(record.id)
    assert not valid_entry_id(record.id + "\n") and not valid_entry_id("../kb") and not valid_entry_id("")
