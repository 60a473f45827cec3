"""Answer retrieval (pure): thresholds, ageing, retirement, empty KB, consultation detection."""

from __future__ import annotations

import time

import pytest

from hotline.nlp.answers import (
    RETIRED,
    AnswerIndex,
    KBEntry,
    RetrievalConfig,
    age_factor,
    decide,
    is_consultation,
    is_question,
)

DAY = 86400.0
NOW = time.mktime((2026, 6, 1, 12, 0, 0, 0, 0, -1))

BABY = KBEntry("e-baby", "新生儿医保怎么办理？需要什么材料",
               "新生儿出生后凭出生医学证明和户口簿到社区医保窗口办理参保。", "医疗保障局", "2026-03-01")
HEAT = KBEntry("e-heat", "供暖费什么时候开始收，在哪里交", "供暖费每年9月起在供热公司营业厅和网上缴纳。", "供热办",
               "2026-02-01")
SCHOOL = KBEntry("e-school", "小学入学报名需要准备哪些材料",
                 "适龄儿童入学报名需户口簿、房产证明和预防接种证。", "教育局", "2026-04-01")
CFG = RetrievalConfig(threshold=0.6, suggest_threshold=0.15, half_life_days=730, max_age_days=0, suggestions=3)


def test_best_match_first_and_thresholds() -> None:
    index = AnswerIndex.build([BABY, HEAT, SCHOOL])
    matches = index.search("请问新生儿医保怎么办理，需要什么材料？", cfg=CFG, now=NOW)
    assert matches[0].entry.id == "e-baby"
    assert matches == sorted(matches, key=lambda m: -m.score)
    d = decide(matches, CFG)
    assert d.answer is not None and d.answer.entry.id == "e-baby" and d.answer.score >= CFG.threshold
    # The same question under a stricter citizen threshold: staff still see it, the citizen gets nothing.
    strict = RetrievalConfig(threshold=0.99, suggest_threshold=0.15, half_life_days=730)
    d2 = decide(matches, strict)
    assert d2.answer is None and d2.suggestions[0].entry.id == "e-baby"


def test_unrelated_question_gets_nothing() -> None:
    index = AnswerIndex.build([BABY, HEAT, SCHOOL])
    d = decide(index.search("公园的健身器材晚上能用吗", cfg=CFG, now=NOW), CFG)
    assert d.answer is None
    assert all(m.score < CFG.threshold for m in d.suggestions)


def test_empty_kb_says_nothing_fits() -> None:
    index = AnswerIndex.build([])
    assert len(index) == 0
    d = decide(index.search("新生儿医保怎么办理", cfg=CFG, now=NOW), CFG)
    assert d.nothing_fits and d.answer is None
    assert index.search("", cfg=CFG) == []


def test_retired_entries_are_never_returned() -> None:
    retired = KBEntry("e-old", BABY.question, "旧政策：到区医保中心办理。", "医疗保障局", "2026-03-01", status=RETIRED)
    index = AnswerIndex.build([retired, HEAT])
    assert "e-old" not in index
    assert all(m.entry.id != "e-old" for m in index.search(BABY.question, cfg=CFG, now=NOW, k=5))
    # Retiring in place takes effect at once.
    index2 = AnswerIndex.build([BABY, HEAT])
    assert index2.search(BABY.question, cfg=CFG, now=NOW)[0].entry.id == "e-baby"
    index2.retire("e-baby")
    assert all(m.entry.id != "e-baby" for m in index2.search(BABY.question, cfg=CFG, now=NOW, k=5))


def test_older_entries_rank_below_newer_ones() -> None:
    old = KBEntry("e-2019", "新生儿医保怎么办理？需要什么材料呢", "2019年的答复：到区医保中心办理。", "医疗保障局",
                  "2019-03-01")
    new = KBEntry("e-2026", "新生儿医保如何办理，要带什么", "2026年的答复：社区医保窗口办理。", "医疗保障局",
                  "2026-03-01")
    index = AnswerIndex.build([old, new])
    q = "新生儿医保怎么办理？需要什么材料"
    no_ageing = RetrievalConfig(threshold=0.6, suggest_threshold=0.0, half_life_days=0)
    plain = index.search(q, cfg=no_ageing, now=NOW)
    assert plain[0].entry.id == "e-2019"  # textually the closer one
    aged = index.search(q, cfg=CFG, now=NOW)
    assert aged[0].entry.id == "e-2026"
    older = next(m for m in aged if m.entry.id == "e-2019")
    assert older.age_factor == pytest.approx(0.5 ** (older.age_days / 730), rel=1e-6)
    assert older.score == pytest.approx(older.similarity * older.age_factor, rel=1e-5)
    # Past the maximum age an entry is not shown at all.
    capped = RetrievalConfig(threshold=0.6, suggest_threshold=0.0, half_life_days=730, max_age_days=1000)
    assert [m.entry.id for m in index.search(q, cfg=capped, now=NOW)] == ["e-2026"]


def test_age_factor() -> None:
    assert age_factor(None, CFG) == 1.0
    assert age_factor(0, CFG) == 1.0
    assert age_factor(730, CFG) == pytest.approx(0.5)
    assert age_factor(-5, CFG) == 1.0  # an entry dated in the future is not boosted
    assert age_factor(5000, RetrievalConfig(max_age_days=365)) == 0.0


def test_same_answer_shown_once() -> None:
    a = KBEntry("a", "新生儿医保怎么办理", "到社区医保窗口办理。", "医疗保障局", "2026-01-01")
    b = KBEntry("b", "新生儿医保怎么办理呢", "到社区医保窗口办理。", "医疗保障局", "2026-01-02")
    index = AnswerIndex.build([a, b, HEAT])
    ids = [m.entry.id for m in index.search("新生儿医保怎么办理", cfg=CFG, now=NOW, k=3)]
    assert len([i for i in ids if i in ("a", "b")]) == 1


def test_incremental_update_adds_edits_and_removes() -> None:
    index = AnswerIndex.build([BABY, HEAT])
    edited = KBEntry("e-heat", HEAT.question, "新答复：供暖费10月起缴纳。", "供热办", "2026-05-01")
    index2 = index.updated([edited, SCHOOL, KBEntry("e-baby", "", "", status=RETIRED)])
    assert len(index2) == 2 and "e-baby" not in index2 and "e-school" in index2
    top = index2.search(HEAT.question, cfg=CFG, now=NOW)[0]
    assert top.entry.answer.startswith("新答复")
    assert index2.search("小学入学报名需要准备哪些材料", cfg=CFG, now=NOW)[0].entry.id == "e-school"
    assert len(index) == 2 and "e-baby" in index  # the old index is unchanged
    # From empty: the first entries build a vocabulary.
    assert AnswerIndex.build([]).updated([BABY]).search(BABY.question, cfg=CFG, now=NOW)[0].entry.id == "e-baby"


def test_exclude() -> None:
    index = AnswerIndex.build([BABY, HEAT])
    assert all(m.entry.id != "e-baby" for m in index.search(BABY.question, cfg=CFG, now=NOW, exclude=["e-baby"]))


@pytest.mark.parametrize(("text", "suggestion", "want"), [
    ("请问新生儿医保怎么办理？", None, True),
    ("供暖费什么时候开始收", None, True),
    ("小区门口路灯坏了一周，晚上很黑", None, False),
    ("楼上装修噪音扰民，为什么没人管？", None, False),
    ("低保申请条件", {"type": {"top": [{"label": "咨询", "p": 0.9}]}}, True),
    ("低保申请条件", {"type": {"top": [{"label": "咨询问题", "p": 0.7}]}}, True),
    ("请问这个怎么办", {"type": {"top": [{"label": "投诉", "p": 0.95}]}}, False),
    ("请问这个怎么办", {"type": {"top": [{"label": "投诉", "p": 0.4}]}}, True),
    ("", None, False),
])
def test_is_consultation(text: str, suggestion: dict | None, want: bool) -> None:
    assert is_consultation(text, suggestion) is want


def test_is_question_ignores_anonymisation_artefacts() -> None:
    assert not is_question("*****")


@pytest.mark.parametrize(("text", "want"), [
    ("解放路路灯不亮好几天了，晚上很黑，请尽快维修", False),
    ("这几天小区一直停电", False),
    ("前几天反映的井盖还没有盖上", False),
    ("垃圾十几天没人清运", False),
    ("办理居住证需要几天", True),
    ("社保卡补办几天能拿到", True),
])
def test_how_long_a_problem_lasted_is_no_question(text: str, want: bool) -> None:
    assert is_question(text) is want


def test_config_checks() -> None:
    with pytest.raises(ValueError):
        RetrievalConfig(threshold=0).check()
    with pytest.raises(ValueError):
        RetrievalConfig(threshold=0.5, suggest_threshold=0.6).check()
    with pytest.raises(ValueError):
        RetrievalConfig(half_life_days=-1).check()
    RetrievalConfig().check()
