"""The fast prediction path (integer char n-grams, merged tables) against the reference string path.

The reference is what training uses: ``features()`` gives feature strings, ``Counter`` counts them and
each head's own vocabulary dictionary maps them to ids (``LinearHead.scores``). The fast path must give
the same feature ids and counts in the same order, hence bit-identical scores, for every head.
"""

from __future__ import annotations

import json
import re
import unicodedata
import warnings
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hotline.nlp.clean import _ADMIN, _EMAIL, _MASK, _SPACE, _T2S, _URL, MAX_MODEL_CHARS, for_model
from hotline.nlp.model import (
    Doc,
    FeatureConfig,
    FeatureIndex,
    LinearHead,
    TrainConfig,
    char_ngram_counts,
    char_ngrams,
    fast_supported,
    features,
    pack_ngram,
    softmax,
    train_head,
)
from hotline.nlp.suggest import FeatureGroup, Suggester, _terms
from hotline.nlp.text import _NEWLINES, _SPACES, nfkc, sanitize
from hotline.settings import PROJECT_ROOT, load_settings
from tests.nlp_support import make_rows

MODELS = PROJECT_ROOT / "models"
SHARED = PROJECT_ROOT.parent / "shared" / "data"
LETTER_FILES = ("taidi_labeled_train.jsonl", "dalian_letters_train.jsonl", "jiamusi_letters_train.jsonl")
PER_FILE = 400

# Characters at and around every boundary of the run class [\u4e00-\u9fffa-z0-9], plus what real text
# brings: full-width forms, upper case, punctuation, emoji and CJK outside the BMP (never in a run).
EDGES = ("\u4dff\u4e00\u4e01\u9fa5\u9ffe\u9fff\ua000`az{AZ/09:_-, \n\t\u3000，。！？"
         "０９ＡＺａｚ😀𠀀\U0010ffff小区物业噪音扰民停水停电拖欠工资")
text_st = st.text(alphabet=st.one_of(st.sampled_from(EDGES), st.characters()), max_size=120)

FIXED = [
    "小区物业乱收费，楼道垃圾没人清理", "楼下烧烤店油烟扰民，每晚到凌晨", "公司拖欠工资三个月，老板失联",
    "孩子入学报名需要什么材料", "公交车司机态度恶劣，不按站停车", "家里停水两天了，也没有通知",
    "我家楼道里煤气泄漏了，味道很大，怎么办", "ABC小区3号楼2单元 电梯坏了 已经一周 😡😡",
    "反映：xx路与yy路交叉口红绿灯故障！！！请尽快维修（2024年5月）", "關於區政府電話無人接聽的問題",
    "", "。。。！！！", "😀" * 30, "物业" * 5000,
    "市民来电反映" + "，".join(f"第{i}栋楼下水道堵塞" for i in range(80)),
]


def ref_counts(text: str, lo: int = 1, hi: int = 3) -> tuple[list[int], list[int]]:
    c = Counter(char_ngrams(text, lo, hi))
    return [pack_ngram(g) for g in c], list(c.values())


def ref_ids(doc: Doc, head: LinearHead) -> tuple[np.ndarray, np.ndarray]:
    """Known feature ids of one head and their counts, the way ``LinearHead.scores`` finds them."""
    counts = Counter(features(doc, head.features))
    pairs = [(head.vocab[f], n) for f, n in counts.items() if f in head.vocab]
    return (np.array([i for i, _ in pairs], dtype=np.int64), np.array([n for _, n in pairs], dtype=np.float32))


def real_letters() -> list[str]:
    """Letters from the shared data when it is beside the project, else the fixed sentences (with a warning)."""
    out: list[str] = []
    for name in LETTER_FILES:
        path = SHARED / name
        if not path.is_file():
            continue
        with path.open(encoding="utf-8") as fh:
            for n, line in enumerate(fh):
                if n >= PER_FILE:
                    break
                row = json.loads(line)
                out.append(f"{row.get('title') or ''}。{row.get('text') or ''}")
    if not out:
        warnings.warn(f"no letters in {SHARED}: checking the fixed sentences only", stacklevel=1)
    return out + FIXED


@pytest.fixture(scope="module")
def suggester() -> Suggester:
    return Suggester.load(MODELS, load_settings(env={}))


@pytest.fixture(scope="module")
def letters(suggester: Suggester) -> list[Doc]:
    return [suggester.pipeline.doc("", t) for t in real_letters()]


# char n-grams -----------------------------------------------------------------
@given(text=text_st, lo=st.integers(1, 3), span=st.integers(0, 2))
@settings(max_examples=400, deadline=None)
def test_integer_ngrams_are_the_counted_strings_in_order(text: str, lo: int, span: int) -> None:
    hi = min(3, lo + span)
    keys, counts = char_ngram_counts(text, lo, hi)
    want_keys, want_counts = ref_counts(text, lo, hi)
    assert keys.tolist() == want_keys
    assert counts.tolist() == want_counts


def test_ngram_keys_are_unique_across_lengths() -> None:
    # The smallest bigram and trigram of run characters lie above every shorter key.
    assert pack_ngram("00") > pack_ngram("\u9fff")
    assert pack_ngram("000") > pack_ngram("\u9fff\u9fff")
    assert pack_ngram("\u9fff\u9fff\u9fff") < 2**64


@pytest.mark.parametrize("text", ["", " ", "，。", "😀😀", "\ud800abc\udfff", "AB cd", "a", "ab", "\u4e00" * 3])
def test_ngram_edge_cases(text: str) -> None:
    keys, counts = char_ngram_counts(text, 1, 3)
    want_keys, want_counts = ref_counts(text)
    assert keys.tolist() == want_keys and counts.tolist() == want_counts


def test_long_text_ngrams() -> None:
    text = "物业" * 5000 + "，" + "".join(chr(0x4E00 + (i * 7919) % 20000) for i in range(3000))
    keys, counts = char_ngram_counts(text, 1, 3)
    want_keys, want_counts = ref_counts(text)
    assert keys.tolist() == want_keys and counts.tolist() == want_counts
    assert int(counts[0]) == 5000  # 物


# the merged index over synthetic vocabularies -----------------------------------------
words_st = st.lists(st.text(alphabet=st.sampled_from("小区物业abc_1"), min_size=1, max_size=4), max_size=12)


@given(title=text_st, body=text_st, words=words_st, title_words=words_st, seed=st.integers(0, 2**16),
       cfg=st.builds(FeatureConfig, char_min=st.integers(1, 2), char_max=st.just(3), words=st.booleans(),
                     word_bigrams=st.booleans(), title_words=st.booleans()))
@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_index_ids_equal_the_string_lookup(title: str, body: str, words: list[str], title_words: list[str],
                                           seed: int, cfg: FeatureConfig) -> None:
    doc = Doc(title=title, body=body, words=words, title_words=title_words)
    feats = sorted(set(features(doc, cfg)))
    rng = np.random.default_rng(seed)
    # Two vocabularies, each a random part of the message's features plus terms it never has (and
    # strings that look like n-grams of other lengths or scripts, which must not match anything).
    extra = ["w:不在", "b:小_区", "小区物业", "AB", "ｚ", "x:", "0" * 3, "一二三四", "w:a_1", "b:a__1", "b:a_1_b",
             "b:_小", "b:区_", "b:", "w:", "t:小区", "b:a_b_c_d"]
    vocabs = []
    for _ in range(2):
        keep = [f for f in feats if rng.random() < 0.6] + [e for e in extra if rng.random() < 0.5]
        vocabs.append(list(dict.fromkeys(rng.permutation(np.array(keep, dtype=object)).tolist())) if keep else [])
    index = FeatureIndex(vocabs, cfg)
    ids, tf = index.ids(doc)
    counts = Counter(features(doc, cfg))
    for terms, m in zip(vocabs, index.maps, strict=True):
        vocab = {t: i for i, t in enumerate(terms)}
        want = [(vocab[f], n) for f, n in counts.items() if f in vocab]
        got = [(int(i), float(n)) for i, n in zip(m[ids].tolist(), tf.tolist(), strict=True) if i >= 0]
        assert got == [(i, float(n)) for i, n in want]
    # Nothing outside both vocabularies comes back.
    assert len(ids) == len({f for f in counts if any(f in v for v in vocabs)})


def test_index_refuses_what_it_cannot_pack() -> None:
    assert not fast_supported(FeatureConfig(char_max=4))
    with pytest.raises(ValueError, match="up to 3"):
        FeatureIndex([["abcd"]], FeatureConfig(char_max=4))


# the shipped models --------------------------------------------------------------
def test_shipped_heads_share_one_fast_group(suggester: Suggester) -> None:
    # category (raw tf) and department/type (sublinear tf) see the same feature strings: one lookup.
    assert len(suggester._groups) == 1
    group = suggester._groups[0]
    assert group.index is not None and not group.vocab
    assert {n for n, _ in group.heads} == set(suggester.heads)


def test_shipped_ids_and_counts_equal_the_reference(suggester: Suggester, letters: list[Doc]) -> None:
    group = suggester._groups[0]
    # The serving group keeps only the gathered tables; a fresh index has the per-head maps to compare.
    index = FeatureIndex([_terms(h) for _, h in group.heads], group.features)
    checked = 0
    for doc in letters:
        ids, tf = index.ids(doc)
        gids, gtf = group.ids(doc)
        assert np.array_equal(ids, gids) and np.array_equal(tf, gtf)
        for h, ((_, head), m) in enumerate(zip(group.heads, index.maps, strict=True)):
            want_ids, want_tf = ref_ids(doc, head)
            mine = m[ids]
            known = mine >= 0
            assert np.array_equal(mine[known], want_ids)
            assert np.array_equal(tf[known], want_tf)
            # The tables the serving path gathers from hold the same idf and weight rows.
            assert np.array_equal(group.idf[ids[known], h], head.idf[want_ids])
            assert np.array_equal(group.rows[ids[known], h], head.rows[want_ids])
            assert (group.rows[ids[~known], h] == -2).all()
            checked += int(known.sum())
    assert checked > 1000 * len(group.heads) or len(letters) == len(FIXED)


def test_shipped_scores_and_top3_equal_the_reference(suggester: Suggester, letters: list[Doc]) -> None:
    group = suggester._groups[0]
    assert any(head.name_weight > 0 for _, head in group.heads)  # the label names are part of the check
    for doc in letters:
        fast = group.scores(doc)
        tops = group.tops(doc)
        for name, head in group.heads:
            ref = head.scores(features(doc, head.features))
            if (names := head.name_scores(doc)) is not None:  # from the text, not the index's keys
                ref = ref + names
            assert np.array_equal(fast[name], ref), name
            p_ref = softmax(ref, head.temperature)
            order = np.argsort(-p_ref)[:3]
            assert [t["label"] for t in tops[name]] == [head.labels[i] for i in order]
            assert np.allclose([t["p"] for t in tops[name]], p_ref[order], atol=1e-4 / 2 + 1e-6)
            assert tops[name] == head.top(doc)


def test_suggestion_uses_the_fast_path_end_to_end(suggester: Suggester) -> None:
    text = "公司拖欠工资半年，老板跑路，社保也没交"
    doc = suggester.pipeline.doc("", text)
    s = suggester.suggest(text)
    assert s["category"]["top"] == suggester.heads["category"].top(doc)
    assert s["type"]["top"] == suggester.heads["type"].top(doc)
    assert s["category"]["top"][0]["label"] == "劳动和社会保障"


# heads the index does not handle, and mixed groups ------------------------------------
def _train(cfg: FeatureConfig, label: str, seed: int) -> LinearHead:
    rows = make_rows(12, seed=seed, label=label)
    docs = [features(Doc(title=r["title"], body=r["text"], words=r["text"].split("，")), cfg) for r in rows]
    return train_head(docs, [r[label] for r in rows], TrainConfig(calibration_folds=0, min_df=1), cfg)


@pytest.mark.parametrize("char_max", [3, 4])
def test_groups_of_trained_heads_match_their_reference(char_max: int) -> None:
    heads = [("a", _train(FeatureConfig(char_max=char_max, sublinear=True), "label1", 1)),
             ("b", _train(FeatureConfig(char_max=char_max, sublinear=False), "label1", 2))]
    group = FeatureGroup(heads)
    assert (group.index is not None) == (char_max == 3)
    docs = [Doc(title="停水的问题", body="小区停水，自来水水压低，希望尽快解决", words=["小区", "停水", "自来水"]),
            Doc(title="", body="", words=[]), Doc(title="", body="完全无关的句子xyz", words=["无关"])]
    for doc in docs:
        scores = group.scores(doc)
        for name, head in heads:
            assert np.array_equal(scores[name], head.scores(features(doc, head.features)))
        assert group.tops(doc) == {name: head.top(doc) for name, head in heads}


def test_saved_and_loaded_head_gives_the_same_fast_scores(tmp_path: Path) -> None:
    head = _train(FeatureConfig(), "label1", 3)
    head.save(tmp_path / "h")
    loaded = LinearHead.load(tmp_path / "h")
    group = FeatureGroup([("h", loaded)])
    doc = Doc(title="", body="学校老师补课，学费太高", words=["学校", "老师", "补课", "学费"])
    assert np.array_equal(group.scores(doc)["h"], head.scores(features(doc, head.features)))


def test_unknown_word_next_to_a_known_one_matches_no_bigram() -> None:
    # Word ids 甲=0, 乙=1: the pair key of (乙, unknown −1) is 1·2 − 1 = 1, the key of (甲, 乙).
    cfg = FeatureConfig()
    index = FeatureIndex([["w:甲", "w:乙", "b:甲_乙"]], cfg)
    ids, tf = index.ids(Doc(title="", body="", words=["乙", "未知", "甲", "乙"]))
    assert index.maps[0][ids].tolist() == [1, 0, 2] and tf.tolist() == [2.0, 1.0, 1.0]
    ids, _ = index.ids(Doc(title="", body="", words=["乙", "未知"]))
    assert index.maps[0][ids].tolist() == [1]


# cleaning: the faster forms against the plain ones ----------------------------------------
PLAIN_URL = re.compile(r"(?:https?://|ftp://|www\.)[^\s\u4e00-\u9fff]*", re.IGNORECASE)
PLAIN_MASK = re.compile(r"[*＊]{2,}|0{5,}|[xX×]{2,}|某某")
PLAIN_ADMIN = re.compile(r"(?<![A-Za-z])[A-Z]\d{0,2}(?=[市区县镇乡])")
CLEAN_EDGES = ("*＊0xX×某AZaz市区县镇乡@.-_:/hHtTpPsSfFwWſK \n\t\u3000\xa0…，：（）ＡＺａｚ０９＠"
               "\u0301\u0308\u3099か區電話乡镇ﬁ①㎡")
clean_st = st.text(alphabet=st.one_of(st.sampled_from(CLEAN_EDGES), st.characters(exclude_categories=("Cs",))),
                   max_size=80)


def plain_for_model(text: str, max_chars: int = MAX_MODEL_CHARS) -> str:
    """``for_model`` as first written: every step on every text, in the plain forms."""
    text = unicodedata.normalize("NFKC", sanitize(text[: max_chars * 3]))
    text = _NEWLINES.sub("\n\n", _SPACES.sub(" ", text)).strip()
    text = text.translate(_T2S)
    text = PLAIN_URL.sub(" ", text)
    text = _EMAIL.sub(" ", text)
    text = PLAIN_MASK.sub(" ", text)
    text = PLAIN_ADMIN.sub("", text)
    return _SPACE.sub(" ", text).strip().lower()[:max_chars]


@given(text=clean_st)
@settings(max_examples=1500, deadline=None)
def test_fast_cleaning_equals_the_plain_steps(text: str) -> None:
    assert nfkc(text) == unicodedata.normalize("NFKC", text)
    assert _URL.sub("~", text) == PLAIN_URL.sub("~", text)
    assert _MASK.sub("~", text) == PLAIN_MASK.sub("~", text)
    assert _ADMIN.sub("~", text) == PLAIN_ADMIN.sub("~", text)
    assert for_model(text) == plain_for_model(text)
    assert for_model(text, 20) == plain_for_model(text, 20)


@pytest.mark.parametrize("text", [
    "Ａ\u0301", "，\u0308", "\xa0\u0301", "…", "www.ＡＢＣ.com/x 小区", "HTTPS://a.b 小区", "联系a.b@c.com投诉",
    "＊＊＊＊小区", "0000000号", "A市B3区C12县", "XA市", "某某路×× 号", "區電話號" * 3,
])
def test_fast_cleaning_cases(text: str) -> None:
    assert nfkc(text) == unicodedata.normalize("NFKC", text)
    assert for_model(text) == plain_for_model(text)


def test_fast_cleaning_on_real_letters() -> None:
    for text in real_letters():
        assert for_model(text) == plain_for_model(text)
