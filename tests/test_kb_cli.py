"""``hotline kb build`` / ``hotline kb eval`` on small files against the real embedded store."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from hotline.cli import main
from hotline.commands.kb import held_out, read_rows
from hotline.redis_server import EmbeddedRedis

TOPICS = [
    ("新生儿医保怎么办理", "新生儿凭出生医学证明到社区医保窗口办理参保登记。", "医疗保障局"),
    ("供暖费什么时候开始收", "供暖费每年9月起在供热公司营业厅缴纳。", "供热办"),
    ("小学入学报名需要什么材料", "报名需户口簿、房产证明和预防接种证。", "教育局"),
    ("公积金提取需要哪些手续", "提取公积金请携带身份证和购房合同到公积金中心办理。", "公积金中心"),
]


def write_letters(path: Path, copies: int = 6) -> None:
    """Each topic asked several times in other words and answered the same way (as real repeats are)."""
    lines = []
    n = 0
    for q, a, dep in TOPICS:
        for i in range(copies):
            n += 1
            lines.append(json.dumps({"id": f"r{n}", "title": f"咨询{q}", "text": f"您好，第{i}次想问{q}？谢谢",
                                     "reply": f"网友UU00{n:04d}您好：{a}2018年9月{i + 1}日", "department": dep,
                                     "reply_time": f"2018-9-{i + 1} 10:00:00", "type": "咨询"},
                                    ensure_ascii=False))
    lines.append("not json")
    lines.append(json.dumps({"id": "empty", "title": "t", "text": "x", "reply": ""}))
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch, redis_server: EmbeddedRedis, key_prefix: str, tmp_path: Path) -> Path:
    monkeypatch.setenv("REDIS_URL", redis_server.url)
    monkeypatch.setenv("HOTLINE_STORE__KEY_PREFIX", key_prefix)
    data = tmp_path / "dalian_letters_train.jsonl"
    write_letters(data)
    return data


def test_read_rows_and_split(env: Path) -> None:
    rows = list(read_rows(env))
    assert len(rows) == 24 and rows[0].source == "dalian" and rows[0].date == "2018-09-01"
    assert rows[0].question.startswith("咨询新生儿医保怎么办理\n")
    test = [r for r in rows if held_out(r, 0.3)]
    assert 0 < len(test) < len(rows)
    assert [r for r in rows if held_out(r, 0.3)] == test  # deterministic


def test_build_then_eval_on_the_held_out_part(env: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["kb", "build", "--data", str(env), "--holdout", "0.3", "--json"]) == 0
    built = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    n_test = sum(held_out(r, 0.3) for r in read_rows(env))
    assert built["files"][0]["created"] == 24 - n_test and built["entries"] == 24 - n_test
    # Building again changes nothing.
    assert main(["kb", "build", "--data", str(env), "--holdout", "0.3", "--json"]) == 0
    again = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert again["files"][0]["unchanged"] == 24 - n_test and again["version"] == built["version"]
    assert main(["kb", "eval", "--data", str(env), "--holdout", "0.3", "--json"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert {"n", "hit_at_1", "hit_at_3", "p99_ms"} <= set(result)
    assert result["n"] == n_test
    # Every held-out question has same-topic answers of the same department in the KB.
    assert result["hit_at_1"] == 1.0 and result["hit_at_3"] == 1.0 and result["p99_ms"] > 0


def test_eval_never_retrieves_the_row_itself(env: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # One letter per topic, each with a different department: only the row itself would be a hit.
    lone = tmp_path / "lone.jsonl"
    lone.write_text("\n".join(json.dumps({"id": f"x{i}", "title": q, "text": q, "reply": a, "department": f"单位{i}"},
                                         ensure_ascii=False) for i, (q, a, _d) in enumerate(TOPICS)), encoding="utf-8")
    assert main(["kb", "build", "--data", str(lone)]) == 0
    capsys.readouterr()
    assert main(["kb", "eval", "--data", str(lone), "--json"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["n"] == 4 and result["hit_at_1"] == 0.0 and result["hit_at_3"] == 0.0


def test_errors(env: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["kb", "eval", "--data", str(env), "--json"]) == 1  # empty KB
    assert "empty" in capsys.readouterr().err
    assert main(["kb", "build", "--data", str(tmp_path / "missing.jsonl")]) == 2
    assert main(["kb", "build", "--data", str(env), "--holdout", "1.5"]) == 2
    assert main(["kb", "eval", "--data", str(env), "--now", "soon"]) == 2


def test_build_counts_and_names_the_lines_it_leaves_out(env: Path, tmp_path: Path,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    good = [json.dumps({"id": f"g{i}", "title": q, "text": q, "reply": a, "department": d}, ensure_ascii=False)
            for i, (q, a, d) in enumerate(TOPICS)]
    lines = [("\ufeff" + good[0]).encode(), good[1].encode(), b'{"title": "\xff\xfe", "reply": "x"}', b"not json",
             b"[1, 2]", b'{"title": "t", "text": "x", "reply": 123}', b'{"title": "t", "text": "x"}',
             b'{"title": {"a": 1}, "reply": "r"}', good[2].encode(), good[3].encode()]
    data = tmp_path / "mixed.jsonl"
    data.write_bytes(b"\n".join(lines) + b"\n")
    assert main(["kb", "build", "--data", str(data), "--json"]) == 0
    captured = capsys.readouterr()
    built = json.loads(captured.out.strip().splitlines()[-1])["files"][0]
    # The first row keeps its byte order mark out of the JSON: all four good rows are in.
    assert built["rows"] == 4 and built["created"] == 4
    assert built["skipped"] == 6
    assert built["skipped_reasons"] == {"not UTF-8": 1, "not JSON": 1, "not a JSON object": 1,
                                        "reply is not a string": 1, "no reply": 1,
                                        "title or text is not a string": 1}
    assert "skipped 6 lines" in captured.err and f"not UTF-8 ({data}:3)" in captured.err


def test_eval_limit_must_be_positive(env: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["kb", "build", "--data", str(env)]) == 0
    for limit in ("-1", "0"):
        assert main(["kb", "eval", "--data", str(env), "--json", "--limit", limit]) == 2
        assert "--limit must be at least 1" in capsys.readouterr().err
    assert main(["kb", "eval", "--data", str(env), "--json", "--limit", "5"]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["n"] == 5
