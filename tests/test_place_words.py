"""Plain words: cores the suffix rules find but the city's letters use as ordinary words (公布, 选聘, the
city's own name). They never become place cores, so they neither anchor a merge nor key a hotspot."""

from __future__ import annotations

import io
import json
import random
import time
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path
from typing import Any

import pytest

from hotline.cli import main as cli_main
from hotline.dedup import DedupConfig, DedupService, load_idf
from hotline.nlp.dedup import fingerprint, place_text
from hotline.nlp.places import place_cores, plain_words, read_plain_words, shared_places, write_plain_words
from hotline.records import Case
from hotline.settings import SettingsError, load_settings
from hotline.status import Status

ROOT = Path(__file__).resolve().parent.parent
SHARED = ROOT.parent / "shared" / "data"
SHIPPED = ROOT / "config" / "place_words.tsv"
LETTER_FILES = ("dalian_letters_train.jsonl", "jiamusi_letters_train.jsonl", "taidi_hot_messages.jsonl",
                "taidi_labeled_train.jsonl")

# "公布" is found as a core once ("…公布物业收支": 公布 before the suffix 物业) and held by 12 letters;
# "丽发" is named as an estate in every letter holding it; "海昌" is too rare to judge.
CORPUS = (
    ["请大连市政府公布物业收支"]
    + [f"请尽快公布第{i}期收费标准" for i in range(11)]
    + [f"我是丽发新城小区业主，第{i}栋停水" for i in range(12)]
    + ["大连海昌物业乱收费", "海昌物业不作为"]
)


def run_cli(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        try:
            code = cli_main(list(argv))
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 2
            err.write(str(exc.code))
    return code, out.getvalue(), err.getvalue()


def test_plain_words_are_cores_the_letters_mostly_use_without_a_suffix() -> None:
    assert place_cores(CORPUS[0]) == ["公布"]
    table = plain_words(CORPUS, max_share=0.1, min_docs=10)
    assert table == {"公布": (1, 12)}
    # A looser share lets a word through that is named as a place more often; fewer letters are not enough.
    assert plain_words(CORPUS, max_share=0.05, min_docs=10) == {}
    assert "公布" not in plain_words(CORPUS, max_share=0.1, min_docs=13)
    # With a low bar the rare name is judged too: one of the two letters holding 海昌 names it as a company.
    assert "海昌" not in plain_words(CORPUS, max_share=0.5, min_docs=2)
    assert plain_words(CORPUS, max_share=0.6, min_docs=2)["海昌"] == (1, 2)


def test_place_cores_skip_plain_words_only() -> None:
    plain = frozenset({"公布", "大连"})
    assert place_cores("请大连市政府公布物业收支", plain=plain) == []
    cores = place_cores("深圳华业物业管理有限公司大连分公司违法选聘物业", plain=plain)
    assert "深圳华业" in cores and "大连" not in cores
    # A name holding a plain word is still a name.
    assert place_cores("大连海昌物业管理有限公司偷税", plain=plain) == ["大连海昌"]
    assert place_cores("我是丽发新城小区业主", plain=plain) == ["丽发"]


def test_the_table_reads_back_and_refuses_lines_that_are_not_entries(tmp_path: Path) -> None:
    path = tmp_path / "words.tsv"
    write_plain_words(path, 24, {"公布": (1, 12), "大连": (45, 1124)})
    assert path.read_text(encoding="utf-8").splitlines() == ["#docs\t24", "大连\t45\t1124", "公布\t1\t12"]
    assert read_plain_words(path) == {"公布", "大连"}
    for bad in ("公布\t1\n", "公布\tx\t12\n", "\t1\t2\n"):
        path.write_text(f"#docs\t2\n{bad}", encoding="utf-8")
        with pytest.raises(ValueError, match=r"words.tsv:2: expected word<TAB>count<TAB>count"):
            read_plain_words(path)


def test_the_matcher_settings_load_the_table_or_say_what_is_wrong(tmp_path: Path) -> None:
    def config(name: str) -> DedupConfig:
        return DedupConfig.from_settings(load_settings(overrides={"dedup": {"place_words_file": name}}, env={}))

    assert {"大连", "佳木斯", "公布", "规定"} <= config(str(SHIPPED)).plain_places
    assert config("").plain_places == frozenset()
    with pytest.raises(SettingsError, match=r"dedup\.place_words_file: file not found"):
        config(str(tmp_path / "none.tsv"))
    bad = tmp_path / "bad.tsv"
    bad.write_bytes(b"\xff\xfe\x00")
    with pytest.raises(SettingsError, match=r"dedup\.place_words_file"):
        config(str(bad))
    bad.write_text("公布\n", encoding="utf-8")
    with pytest.raises(SettingsError, match=r"bad\.tsv:1"):
        config(str(bad))


def test_build_place_words_command(tmp_path: Path) -> None:
    letters = tmp_path / "letters.jsonl"
    letters.write_text("".join(json.dumps({"title": "", "text": t}, ensure_ascii=False) + "\n" for t in CORPUS),
                       encoding="utf-8")
    out = tmp_path / "words.tsv"
    code, stdout, _ = run_cli("nlp", "build-place-words", "--data", str(letters), "--out", str(out))
    assert code == 0
    assert json.loads(stdout.strip().splitlines()[-1]) == {"docs": len(CORPUS), "words": 1, "out": str(out)}
    assert read_plain_words(out) == {"公布"}
    assert run_cli("nlp", "build-place-words", "--data", str(letters), "--out", str(out), "--max-share", "0")[0] == 2
    code, _, err = run_cli("nlp", "build-place-words", "--data", str(tmp_path / "none.jsonl"), "--out", str(out))
    assert code == 2 and "no such file" in err
    broken = tmp_path / "broken.jsonl"
    broken.write_text('{"text": "丽发新城停水"}\nnot json\n', encoding="utf-8")
    code, _, err = run_cli("nlp", "build-place-words", "--data", str(broken), "--out", str(out))
    assert code != 0 and "broken.jsonl:2: not JSON" in err


def test_pair_commands_refuse_a_missing_table(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text(json.dumps({"a_title": "丽发新城停水", "a_text": "三天没水", "b_title": "丽发新城停水",
                                 "b_text": "还没来水", "label": "dup"}, ensure_ascii=False) + "\n", encoding="utf-8")
    monkeypatch.setenv("HOTLINE_DEDUP__PLACE_WORDS_FILE", str(tmp_path / "none.tsv"))
    for command in ("eval-dedup", "fit-dedup"):
        code, _, err = run_cli("nlp", command, "--data", str(pairs))
        assert code != 0 and "dedup.place_words_file: file not found" in err, command


def _letters() -> list[tuple[str, str]]:
    rows = []
    for name in LETTER_FILES:
        path = SHARED / name
        assert path.is_file(), f"shared letters not present at {path} (set up ../shared/data)"
        rows += [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    return [(str(r.get("title") or "").strip(), str(r.get("text") or "")) for r in rows]


def test_shipped_table_is_the_build_on_the_shared_letters(tmp_path: Path) -> None:
    out = tmp_path / "words.tsv"
    args = [str(SHARED / name) for name in LETTER_FILES]
    assert run_cli("nlp", "build-place-words", "--data", *args, "--out", str(out))[0] == 0
    assert out.read_text(encoding="utf-8") == SHIPPED.read_text(encoding="utf-8")


def test_shipped_table_cuts_false_anchors_and_keeps_the_duplicates() -> None:
    """Random pairs of the shared letters are nearly all unrelated: a shared "place" there is a false
    anchor. The table removes most of them; labelled duplicates keep theirs."""
    plain = read_plain_words(SHIPPED)
    texts = [place_text(t, x) for t, x in _letters()]
    rnd = random.Random(5)
    sample = rnd.sample(texts, 3000)

    def anchors(words: frozenset[str], pairs: list[tuple[str, str]]) -> int:
        return sum(bool(shared_places(place_cores(a, plain=words), a, place_cores(b, plain=words), b))
                   for a, b in pairs)

    pairs = [(rnd.choice(sample), rnd.choice(sample)) for _ in range(8000)]
    pairs = [(a, b) for a, b in pairs if a != b]
    before, after = anchors(frozenset(), pairs), anchors(plain, pairs)
    assert after <= 0.4 * before, (before, after)
    dev = [json.loads(line) for line in (SHARED / "dedup_pairs_dev.jsonl").read_text(encoding="utf-8").splitlines()
           if line.strip()]
    dups = [(place_text(r["a_title"], r["a_text"]), place_text(r["b_title"], r["b_text"]))
            for r in dev if r["label"] == "dup"]
    assert anchors(plain, dups) >= 0.95 * anchors(frozenset(), dups)


async def test_live_cases_are_not_indexed_under_plain_words(store: Any, settings: Any) -> None:
    """A city's own name would otherwise be a place posting holding every case of the city."""
    config = DedupConfig.from_settings(settings)
    assert "大连" in config.plain_places
    service = DedupService(store, config, load_idf(settings))
    now = time.time()
    text = "深圳华业物业管理有限公司大连分公司违法选聘物业，丽发新城业主要求公开账目"
    case = Case(id="20250301-000001", channel="api", sender="api:x", status=Status.CLASSIFIED, created_at=now,
                updated_at=now, text=text, normalized_text=text)
    entry = service.entry(case)
    assert "@深圳华业" in entry.keys and "@丽发" in entry.keys
    assert "@大连" not in entry.keys
    # Without the table the same text is filed under the city's name.
    assert "大连" in fingerprint("", text, load_idf(settings)).places
