"""Knowledge-base dates no index can age (0001-01-01, 9999-12-31): refused at the door, and an entry stored
with one before the check (old data) must not stop the index, later edits or searches."""

from __future__ import annotations

import logging
import time
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from hotline.access import SUPERVISOR
from hotline.appkeys import ANSWERS
from hotline.nlp.answers import AnswerIndex, KBEntry, RetrievalConfig, date_ts
from hotline.redis_server import EmbeddedRedis
from hotline.store import Store
from hotline.store.kb import EntryInvalid, KBRecord, KnowledgeBase, clean_fields
from tests.answers_support import ENTRIES, TODAY, add_entries, answers_client, staff_headers

Headers = dict[str, str]
BAD_DATES = ("0001-01-01", "1969-12-31", "9999-12-31", "2200-01-01")
CFG = RetrievalConfig(threshold=0.5, suggest_threshold=0.1)


@pytest.fixture
async def app_client(aiohttp_client: Any, redis_server: EmbeddedRedis, tmp_path: Path, key_prefix: str) -> TestClient:
    return await answers_client(aiohttp_client, redis_server.url, tmp_path, key_prefix)


@pytest.fixture
async def sup(app_client: TestClient) -> Headers:
    return await staff_headers(app_client, "wang", SUPERVISOR)


async def store_as_old_code_did(kb: KnowledgeBase, entry_id: str, question: str, answer: str, day: str) -> None:
    """An entry written before dates were range-checked: straight into the store, with its change-log entry
    and version bump, as ``add`` wrote it."""
    now = time.time()
    rec = KBRecord(id=entry_id, question=question, answer=answer, department="民政局", date=day, source="manual",
                   created_at=now, created_by="staff:old", updated_at=now, updated_by="staff:old")
    async with kb.r.pipeline(transaction=True) as pipe:
        kb._write(pipe, rec, actor="staff:old", action="created", data={"date": day}, now=now)
        await pipe.execute()


def test_date_bounds_of_editor_input() -> None:
    for bad in BAD_DATES:
        with pytest.raises(EntryInvalid, match="答复日期"):
            clean_fields({"question": "问题", "answer": "答复", "date": bad}, partial=False)
    ahead = (date.today() + timedelta(days=400)).isoformat()
    with pytest.raises(EntryInvalid, match="答复日期"):
        clean_fields({"date": ahead}, partial=True)
    assert clean_fields({"date": "1970-1-1"}, partial=True) == {"date": "1970-01-01"}
    assert clean_fields({"date": TODAY}, partial=True) == {"date": TODAY}


async def test_out_of_range_dates_are_refused_with_422_and_not_stored(app_client: TestClient, sup: Headers) -> None:
    kb = app_client.app[ANSWERS].kb
    for bad in BAD_DATES:
        resp = await app_client.post("/api/v1/kb", json={**ENTRIES[0], "date": bad}, headers=sup)
        body = await resp.json()
        assert resp.status == 422 and body["error"]["code"] == "bad_entry", (bad, body)
        assert "答复日期" in body["error"]["message"]
    assert await kb.count() == 0
    [entry_id] = await add_entries(app_client, sup, ENTRIES[:1])
    resp = await app_client.put(f"/api/v1/kb/{entry_id}", json={"date": "0001-01-01", "rev": 1}, headers=sup)
    assert resp.status == 422 and (await resp.json())["error"]["code"] == "bad_entry"
    assert (await kb.get(entry_id)).date == TODAY and (await kb.get(entry_id)).rev == 1


async def test_an_imported_row_with_an_impossible_date_is_skipped(store: Store) -> None:
    kb = KnowledgeBase(store)
    rows = [{"source_id": "1", "question": "低保怎么申请", "answer": "到街道办申请。", "date": "0001-01-01"},
            {"source_id": "2", "question": "居住证怎么办理", "answer": "到派出所办理。", "date": "2019-05-10"}]
    assert await kb.import_many(rows, actor="cli", source="taidi") == {"created": 1, "updated": 0,
                                                                       "unchanged": 0, "skipped": 1}


async def test_a_stored_entry_with_a_bad_date_does_not_stop_the_index(app_client: TestClient, sup: Headers,
                                                                      caplog: pytest.LogCaptureFixture) -> None:
    service = app_client.app[ANSWERS]
    await store_as_old_code_did(service.kb, "kb-000900", "低保申请需要哪些条件和材料",
                                "持户口簿和收入证明到街道办申请。", "0001-01-01")
    with caplog.at_level(logging.WARNING, logger="hotline.answers"):
        assert await service.refresh() is True
    assert any(getattr(r, "event", "") == "kb_bad_dates" and r.entry_ids == ["kb-000900"] for r in caplog.records)
    # Later additions and edits answer as usual, and search finds them.
    ids = await add_entries(app_client, sup)
    put = await app_client.put(f"/api/v1/kb/{ids[2]}", json={"answer": "报名需户口簿和房产证明。", "rev": 1},
                               headers=sup)
    assert put.status == 200, await put.text()
    found = await service.suggest_text("请问小学入学报名需要准备哪些材料")
    assert found.answer is not None and found.answer.entry.id == ids[2] and "房产证明" in found.answer.entry.answer
    # The old entry is still found, as an undated one (no age factor), and can be given a good date.
    old = await service.suggest_text("低保申请需要哪些条件和材料")
    assert old.answer is not None and old.answer.entry.id == "kb-000900" and old.answer.age_days is None
    fixed = await app_client.put("/api/v1/kb/kb-000900", json={"date": "2019-05-10", "rev": 1}, headers=sup)
    assert fixed.status == 200 and (await fixed.json())["entry"]["date"] == "2019-05-10"
    # A restart builds the whole index from the store again.
    assert await service.load() == 4


def test_index_build_and_update_treat_unconvertible_dates_as_undated() -> None:
    assert date_ts("0001-01-01") is None and date_ts("") is None and date_ts("2019-05-10") is not None
    good = KBEntry("a", "新生儿医保怎么办理", "到社区医保窗口办理。", date="2019-05-10")
    bad = KBEntry("b", "供暖费什么时候开始收", "9月起缴纳。", date="0001-01-01")
    index = AnswerIndex.build([good, bad])
    assert len(index) == 2
    [match] = index.search("供暖费什么时候开始收", cfg=CFG, k=1)
    assert match.entry.id == "b" and match.age_days is None and match.age_factor == 1.0
    # Incremental updates use the built vocabulary: the new question reuses its n-grams.
    later = index.updated([KBEntry("c", "新生儿医保怎么办理", "凭出生医学证明办理。", date="0001-01-01")])
    [match] = later.search("新生儿医保怎么办理", cfg=CFG, k=1)
    assert len(later) == 3 and match.entry.id == "c" and match.age_days is None
