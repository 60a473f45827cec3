"""Management commands on files that are not what they should be: one line saying what, never a traceback,
and a file they write is either complete or left as it was."""

from __future__ import annotations

import asyncio
import errno
import json
from pathlib import Path

import pytest

from hotline.cli import main
from hotline.commands.jsonl import JsonlError, Skipped, read_jsonl
from hotline.dedup import load_idf
from hotline.nlp.dedup import Idf, IdfError
from hotline.nlp.places import read_plain_words, write_plain_words
from hotline.redis_server import EmbeddedRedis
from hotline.settings import SettingsError, load_settings
from tests.nlp_support import make_rows, write_jsonl

ROOT = Path(__file__).resolve().parent.parent
PAIR = {"pair_id": "p1", "a_title": "阳光花园烧烤店油烟扰民", "a_text": "阳光花园小区烧烤店油烟很大。",
        "b_title": "阳光花园烧烤油烟", "b_text": "阳光花园小区楼下烧烤油烟扰民。", "label": "dup"}


@pytest.fixture(scope="module")
def head(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("head")
    data = write_jsonl(tmp / "rows.jsonl", make_rows(4, seed=1))
    assert main(["nlp", "train", "--head", "topic", "--data", str(data), "--label", "label1",
                 "--out", str(tmp / "m"), "--folds", "0", "--min-df", "1"]) == 0
    return tmp / "m"


# JSONL input ----------------------------------------------------------------------------------------------

def test_jsonl_lines_take_a_bom_and_name_a_bad_byte(tmp_path: Path) -> None:
    path = tmp_path / "rows.jsonl"
    path.write_bytes(b'\xef\xbb\xbf{"a": 1}\n\n{"b": "\xff"}\n[1]\n{"c": "\xef\xbb\xbfx"}\n')
    with pytest.raises(JsonlError, match=r"rows\.jsonl:3: not UTF-8"):
        list(read_jsonl(path))
    skipped = Skipped()
    rows = list(read_jsonl(path, on_bad=skipped))
    assert rows == [(f"{path}:1", {"a": 1}), (f"{path}:5", {"c": "\ufeffx"})]  # U+FEFF inside a line is text
    assert skipped.as_dict() == {"not UTF-8": 1, "not a JSON object": 1}
    assert skipped.describe() == f"1 not UTF-8 ({path}:3), 1 not a JSON object ({path}:4)"


def test_train_and_eval_dedup_name_a_line_that_is_not_utf8(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rows = tmp_path / "rows.jsonl"
    good = [json.dumps(r, ensure_ascii=False).encode() for r in make_rows(3, seed=1)]
    rows.write_bytes(b"\xef\xbb\xbf" + b"\n".join([*good, b'{"text": "\xff\xfe", "label1": "x"}']) + b"\n")
    assert main(["nlp", "train", "--head", "h", "--data", str(rows), "--label", "label1",
                 "--out", str(tmp_path / "m"), "--folds", "0"]) == 2
    assert f"{rows}:10: not UTF-8" in capsys.readouterr().err
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_bytes(b"\xef\xbb\xbf" + json.dumps(PAIR).encode() + b'\n{"a_text": "\xff"}\n')
    with pytest.raises(SystemExit, match=r"pairs\.jsonl:2: not UTF-8"):
        main(["nlp", "eval-dedup", "--data", str(pairs), "--json"])


def test_text_fields_must_be_text(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from hotline.nlp.suggest import TextPipeline
    from hotline.nlp.tokenize import Tokenizer

    pipeline = TextPipeline(Tokenizer(ROOT / "config" / "userdict.txt"))
    with pytest.raises(TypeError, match="tokens must be a string or a list of strings"):
        pipeline.doc(tokens=[1, 2])
    with pytest.raises(TypeError, match="text must be a string"):
        pipeline.doc_from_row({"text": {"x": 1}})
    assert pipeline.doc_from_row({"tokens": ["小区", "停水"]}).words == ["小区", "停水"]
    # A pre-segmented file whose tokens are numbers trains on nothing, and says why.
    data = write_jsonl(tmp_path / "tokens.jsonl", [{"tokens": 5, "label1": "a"}, {"tokens": [1], "label1": "b"}])
    assert main(["nlp", "train", "--head", "h", "--data", str(data), "--label", "label1",
                 "--out", str(tmp_path / "m"), "--folds", "0"]) == 2
    assert "2 tokens is neither a string nor a list of strings" in capsys.readouterr().err


def test_predict_takes_bytes_that_are_not_utf8(head: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # What Python makes of `hotline nlp predict $'\xff\xfe停水'`: the bytes as lone surrogates (PEP 383).
    assert main(["nlp", "predict", "--model", str(head), "--title", "\udcff", "\udcff\udcfe家里停水了水管漏水"]) == 0
    assert capsys.readouterr().out.splitlines()[0].endswith("供水")


# eval-dedup and the bigram table -----------------------------------------------------------------------------

def test_eval_dedup_refuses_no_pairs_and_non_text_and_counts_bad_times(tmp_path: Path,
                                                                       capsys: pytest.CaptureFixture[str]) -> None:
    empty = tmp_path / "empty.jsonl"
    empty.write_bytes(b"")
    with pytest.raises(SystemExit, match="no labelled pairs"):
        main(["nlp", "eval-dedup", "--data", str(empty), "--json"])
    nontext = write_jsonl(tmp_path / "nontext.jsonl", [PAIR, {**PAIR, "a_text": 123}])
    with pytest.raises(SystemExit, match=r"nontext\.jsonl:2: a_text must be a string"):
        main(["nlp", "eval-dedup", "--data", str(nontext), "--json"])
    times = write_jsonl(tmp_path / "times.jsonl", [{**PAIR, "a_time": "2019-13-45 99:99", "b_time": 12345},
                                                   {**PAIR, "a_time": "", "b_time": "2019-02-28"}])
    assert main(["nlp", "eval-dedup", "--data", str(times), "--json"]) == 0
    captured = capsys.readouterr()
    assert json.loads(captured.out)["unparsed_times"] == 2
    assert f"1 a_time is no time ({times}:1)" in captured.err


def test_the_bigram_table_loads_strictly(tmp_path: Path) -> None:
    shipped = Idf.load(ROOT / "config" / "dedup_idf.tsv")
    assert shipped.n == 9974 and len(shipped.df) > 20_000
    lines = (ROOT / "config" / "dedup_idf.tsv").read_text(encoding="utf-8").splitlines(keepends=True)[:100]
    table = tmp_path / "idf.tsv"
    for text, says in (("".join(lines)[:-3], r"idf\.tsv:100: cut off"),
                       ("".join(lines[:50]) + "问\n" + "".join(lines[50:]),
                        r"idf\.tsv:51: expected 'bigram<TAB>count'"),
                       ("#docs\t0\n", r"idf\.tsv:1: expected '#docs<TAB>N'"),
                       ("".join(lines[:5]) + "问题\t99999\n", r"idf\.tsv:6: count 99999 outside 1\.\.9974"),
                       ("".join(lines) + lines[3], r"idf\.tsv:101: bigram .* listed twice"),
                       ("", "empty")):
        table.write_text(text, encoding="utf-8")
        with pytest.raises(IdfError, match=says):
            Idf.load(table)
    # eval-dedup says so instead of scoring with a wrong table.
    table.write_text("".join(lines)[:-3], encoding="utf-8")
    config = tmp_path / "site.toml"
    config.write_text(f'[dedup]\nidf_file = "{table}"\n', encoding="utf-8")
    pairs = write_jsonl(tmp_path / "pairs.jsonl", [PAIR])
    with pytest.raises(SystemExit, match=r"dedup\.idf_file: .*cut off"):
        main(["nlp", "eval-dedup", "--data", str(pairs), "--config", str(config)])
    # So do the service's start-up and `hotline check`: a configuration error, not a traceback.
    with pytest.raises(SettingsError, match=r"dedup\.idf_file: .*cut off"):
        load_idf(load_settings(overrides={"dedup": {"idf_file": str(table)}}, env={}))


def test_a_failed_table_write_leaves_the_old_table(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    table = tmp_path / "idf.tsv"
    Idf.dump(table, 3, {"停水": 2, "小区": 1})
    before = table.read_bytes()

    class DiskFull(dict):
        def items(self):  # type: ignore[no-untyped-def]
            raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(OSError, match="No space"):
        Idf.dump(table, 5, DiskFull({"路灯": 1}))
    assert table.read_bytes() == before and [p.name for p in tmp_path.iterdir()] == ["idf.tsv"]
    # The plain place-word table the same way.
    words = tmp_path / "words" / "pw.tsv"
    words.parent.mkdir()
    write_plain_words(words, 20, {"丽发": (19, 20)})
    kept = words.read_bytes()
    with pytest.raises(OSError, match="No space"):
        write_plain_words(words, 30, DiskFull({"友谊路": (9, 10)}))
    assert words.read_bytes() == kept and read_plain_words(words) == {"丽发"}
    assert [p.name for p in words.parent.iterdir()] == ["pw.tsv"]
    # build-dedup-idf: no letters, --min-df 0 and a directory as --out are refused; the table stays.
    empty = tmp_path / "empty.jsonl"
    empty.write_bytes(b"")
    letters = write_jsonl(tmp_path / "letters.jsonl", make_rows(2, seed=1))
    assert main(["nlp", "build-dedup-idf", "--data", str(empty), "--out", str(table)]) == 1
    assert main(["nlp", "build-dedup-idf", "--data", str(letters), "--out", str(table), "--min-df", "0"]) == 2
    assert main(["nlp", "build-dedup-idf", "--data", str(letters), "--out", str(tmp_path)]) == 2
    assert main(["nlp", "build-place-words", "--data", str(empty), "--out", str(tmp_path / "pw.tsv")]) == 1
    assert not (tmp_path / "pw.tsv").exists()
    assert table.read_bytes() == before
    assert main(["nlp", "build-dedup-idf", "--data", str(letters), "--out", str(table), "--min-df", "1"]) == 0
    assert Idf.load(table).n == 6
    err = capsys.readouterr().err
    assert "no letters" in err and "--min-df must be at least 1" in err and "is a directory" in err


# other files given on the command line ------------------------------------------------------------------------

def test_model_eval_and_fetch_refuse_a_file_for_a_directory(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    afile = write_jsonl(tmp_path / "small.jsonl", make_rows(1, seed=1))
    assert main(["nlp", "eval", "--model", str(afile), "--data", str(afile), "--label", "label1"]) == 2
    assert "not a model directory" in capsys.readouterr().err
    # Refused before anything is downloaded.
    assert main(["models", "fetch", "--dest", str(afile), "--data-dir", str(tmp_path)]) == 2
    assert "is a file, not a directory" in capsys.readouterr().err


@pytest.fixture
def redis_env(monkeypatch: pytest.MonkeyPatch, redis_server: EmbeddedRedis, key_prefix: str) -> None:
    monkeypatch.setenv("HOTLINE_STORE__REDIS_URL", redis_server.url)
    monkeypatch.setenv("HOTLINE_STORE__KEY_PREFIX", key_prefix)


@pytest.mark.usefixtures("redis_env")
def test_export_corrections_to_a_directory_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out"
    out.mkdir()
    assert main(["nlp", "export-corrections", "--out", str(out), "--data-dir", str(tmp_path)]) == 2
    assert "is a directory" in capsys.readouterr().err
    assert [p.name for p in tmp_path.iterdir() if p.name != "logs"] == ["out"]  # no out.tmp left behind
    good = out / "corrections.jsonl"
    assert main(["nlp", "export-corrections", "--out", str(good), "--data-dir", str(tmp_path), "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == {"rows": 0, "out": str(good)}
    assert [p.name for p in out.iterdir()] == ["corrections.jsonl"]


@pytest.mark.usefixtures("redis_env")
def test_dispatch_dead_letter_ids_and_limits_from_a_person(tmp_path: Path, redis_server: EmbeddedRedis,
                                                           key_prefix: str, capsys: pytest.CaptureFixture[str]) -> None:
    from hotline.dispatch.feature import build_dispatcher
    from hotline.dispatch.service import DispatchError
    from hotline.notify import Notifications
    from hotline.store import Store
    from tests.conftest import make_settings

    for dead_id in ("nope", "", "*", "-", "+", "7" * 10_000, "1-1"):
        assert main(["dispatch", "redrive", dead_id, "--data-dir", str(tmp_path)]) == 1, dead_id
        err = capsys.readouterr().err
        assert "不存在" in err and len(err) < 300 and "Traceback" not in err
    for limit in ("0", "-1"):
        assert main(["dispatch", "dead", "--limit", limit, "--data-dir", str(tmp_path)]) == 2
        assert "--limit must be at least 1" in capsys.readouterr().err
    assert main(["dispatch", "dead", "--json", "--data-dir", str(tmp_path)]) == 0
    captured = capsys.readouterr()
    assert captured.out == "" and "no dead letters" in captured.err

    async def service() -> None:
        store = Store.from_url(redis_server.url, prefix=key_prefix)
        try:
            dispatcher = build_dispatcher(make_settings(redis_server.url, tmp_path, key_prefix), store,
                                          Notifications(store))
            for dead_id in ("nope", "18446744073709551616-0", "١-١"):
                with pytest.raises(DispatchError) as caught:
                    await dispatcher.redrive(dead_id, "staff:sup")
                assert caught.value.status == 404
        finally:
            await store.close()

    asyncio.run(service())
