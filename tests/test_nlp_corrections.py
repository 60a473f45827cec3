"""Call-taker corrections in Redis (the real embedded Valkey), exported as training rows."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from hotline.cli import main
from hotline.nlp.model import LinearHead
from hotline.redis_server import EmbeddedRedis
from hotline.store import Store
from hotline.store.corrections import Corrections
from tests.nlp_support import make_rows, write_jsonl


async def test_record_and_export_rows_shaped_like_training_rows(store: Store) -> None:
    c = Corrections(store)
    await c.record("20261122-000001", "小区停水三天", {"category": "城乡建设", "department": "供水公司",
                                                    "type": "投诉"},
                   {"category": "城乡建设", "department": "住建局", "type": "投诉"}, actor="agent:li")
    await c.record("20261122-000002", "学校乱收费", {"category": "教育文体"}, {"category": "教育文体"},
                   actor="agent:wang")
    rows = await c.export()
    assert [r["case_id"] for r in rows] == ["20261122-000001", "20261122-000002"]
    first = rows[0]
    assert {k: first[k] for k in ("title", "text", "category", "department", "type", "actor")} == {
        "title": "", "text": "小区停水三天", "category": "城乡建设", "department": "供水公司", "type": "投诉",
        "actor": "agent:li"}
    assert first["corrected"] == ["department"] and first["ts"] > 0
    # A head the call-taker left open is exported empty, so training on that label skips the row.
    assert rows[1]["department"] == "" and rows[1]["corrected"] == []


async def test_a_second_decision_on_a_case_replaces_the_first(store: Store) -> None:
    c = Corrections(store)
    await c.record("c1", "路灯坏了", {"department": "城管局"}, {"department": "城管局"}, actor="a")
    await c.record("c2", "噪音扰民", {"department": "环保局"}, {}, actor="a")
    await c.record("c1", "路灯坏了", {"department": "路灯管理处"}, {"department": "城管局"}, actor="b")
    rows = await c.export()
    assert [(r["case_id"], r["department"], r["actor"]) for r in rows] == [("c2", "环保局", "a"),
                                                                            ("c1", "路灯管理处", "b")]
    assert await c.count() == 3


async def test_export_pages_through_a_long_stream(store: Store) -> None:
    c = Corrections(store)
    for i in range(1205):
        await c.record(f"case-{i}", f"第{i}件", {"type": "咨询"}, {}, actor="a")
    rows = await c.export()
    assert len(rows) == 1205 and rows[-1]["case_id"] == "case-1204"


@pytest.mark.parametrize(("args", "message"), [
    (("", "t", {"category": "x"}, {}), "case_id"),
    (("c", "  ", {"category": "x"}, {}), "text"),
    (("c", "t", {}, {}), "at least one head"),
    (("c", "t", {"colour": "red"}, {}), "unknown head"),
    (("c", "t", {"category": 5}, {}), "labels.category"),
    (("c", "t", {"category": "x" * 300}, {}), "labels.category"),
    (("c", "t", {"category": "x"}, {"type": ["a"]}), "suggested.type"),
    (("c", "t", "城建", {}), "mapping"),
])
async def test_hostile_input_is_refused_and_nothing_written(store: Store, args: tuple, message: str) -> None:
    c = Corrections(store)
    with pytest.raises(ValueError, match=message):
        await c.record(*args, actor="a")
    assert await c.count() == 0


async def test_export_cli_then_train_on_history_plus_corrections(
        store: Store, redis_server: EmbeddedRedis, key_prefix: str, tmp_path: Path,
        capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    # The city's history routes 停水 to 供水; call-takers corrected it to a new unit, 水务集团, many times.
    c = Corrections(store)
    for i, row in enumerate(r for r in make_rows(12, seed=5, label="department") if r["department"] == "供水"):
        await c.record(f"k{i}", row["text"], {"department": "水务集团"}, {"department": "供水"}, actor="agent")
    monkeypatch.setenv("HOTLINE_STORE__REDIS_URL", redis_server.url)
    monkeypatch.setenv("HOTLINE_STORE__KEY_PREFIX", key_prefix)
    out = tmp_path / "corrections.jsonl"
    # The command runs its own event loop, as from a shell.
    argv = ["nlp", "export-corrections", "--out", str(out), "--data-dir", str(tmp_path), "--json"]
    assert await asyncio.to_thread(main, argv) == 0
    assert json.loads(capsys.readouterr().out.strip()) == {"rows": 12, "out": str(out)}
    exported = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert {r["department"] for r in exported} == {"水务集团"}

    history = write_jsonl(tmp_path / "history.jsonl",
                          [r for r in make_rows(15, seed=6, label="department") if r["department"] != "供水"])
    model = tmp_path / "dept"
    assert main(["nlp", "train", "--head", "department", "--data", str(history), "--data", str(out),
                 "--label", "department", "--out", str(model), "--min-df", "1"]) == 0
    head = LinearHead.load(model)
    assert "水务集团" in head.labels and "供水" not in head.labels
    assert main(["nlp", "predict", "--model", str(model), "--json", "停水好几天了，水压低"]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["top"][0]["label"] == "水务集团"
