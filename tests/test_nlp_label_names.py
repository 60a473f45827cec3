"""The label-name prior: a unit named in the letter scores higher, with a weight fitted on held-out rows."""

from __future__ import annotations

import json
import math
import random
from pathlib import Path

import numpy as np
import pytest

from hotline.cli import main
from hotline.nlp.model import (
    Doc,
    FeatureConfig,
    LabelNames,
    LinearHead,
    ModelError,
    TrainConfig,
    doc_text,
    features,
    fit_name_weight,
    softmax,
    train_head,
)
from hotline.nlp.suggest import FeatureGroup
from tests.nlp_support import FILLER, write_jsonl

DISTRICTS = ["甘井子区", "沙河口区", "西岗区", "中山区", "旅顺口区", "金州区"]
UNITS = ["城建局", "教育局", "民政局", "供热办"]
CENTRE = "公共行政服务中心"


def unit_rows(seed: int) -> list[dict[str, str]]:
    """24 district units with two letters each that name them, and a busy centre whose letters name nobody.

    Two letters per unit are too few for the linear weights; the names in the letters are what routes them.
    """
    rng = random.Random(seed)
    rows = []
    for d in DISTRICTS:
        for u in UNITS:
            for mention in (f"请{d}{u}处理", f"{d}{u[:2]}管一管"):
                words = [*rng.sample(FILLER, 5), mention]
                rng.shuffle(words)
                rows.append({"text": "，".join(words), "department": d + u})
    rows += [{"text": "，".join(rng.sample(FILLER, 6)), "department": CENTRE} for _ in range(40)]
    rng.shuffle(rows)
    return rows


def _doc(text: str) -> Doc:
    return Doc(title="", body=text, words=text.split("，"))


def _train(rows: list[dict[str, str]], name_match: bool = True) -> LinearHead:
    docs = [_doc(r["text"]) for r in rows]
    cfg = TrainConfig(c=0.5, class_weight=None, min_df=1, max_features=None, calibration_folds=5,
                      name_match=name_match)
    return train_head([features(d, FeatureConfig()) for d in docs], [r["department"] for r in rows], cfg,
                      FeatureConfig(), texts=[doc_text(d) for d in docs])


def test_a_label_scores_the_idf_weighted_share_of_its_name_bigrams() -> None:
    names = LabelNames(["甘井子区城建局", "沙河口区城建局", "供热办"])
    # 区城, 城建, 建局 are in two of the three names (idf log 4/2), the others in one (log 4/1).
    rare, common = math.log(4), math.log(2)
    s = names.scores("甘井子区的违建")
    assert s[0] == pytest.approx(3 * rare / (3 * rare + 3 * common))
    assert s[1] == 0.0 and s[2] == 0.0
    # A bigram shared by names counts for each of them, and little.
    s = names.scores("找城建局")
    assert s[0] == pytest.approx(s[1]) == pytest.approx(2 * common / (3 * rare + 3 * common))  # 城建, 建局
    assert names.scores("供热办说下周供热").tolist()[2] == pytest.approx(1.0)


def test_name_bigrams_never_span_punctuation_or_spaces() -> None:
    names = LabelNames(["甘井子区城建局", "供热办"])
    whole = names.scores("甘井子区")[0]
    assert names.scores("甘井，子区")[0] == pytest.approx(whole * 2 / 3)  # 甘井 and 子区, not 井子
    assert names.scores("甘 井 子 区")[0] == 0.0
    assert names.scores("")[0] == 0.0 and names.scores("🙂🙂").shape == (2,)
    assert names.matrix(["供热办", "甘井子区"]).shape == (2, 2)


def test_label_names_are_read_like_the_letters() -> None:
    # Full-width letters and traditional characters are normalised like the message text.
    names = LabelNames(["ＡＢ區教育局"])
    assert names.scores("ab区教育局")[0] == pytest.approx(1.0)


def test_the_weight_is_zero_when_the_names_mislead_and_positive_when_they_help() -> None:
    y = np.array([0, 1, 2, 0, 1, 2])
    scores = np.eye(3)[[0, 0, 2, 0, 0, 2]] * 0.5  # rows 1 and 4 wrong: label 0 instead of 1
    helpful = np.zeros((6, 3))
    helpful[[1, 4], 1] = 1.0  # the text names label 1 where it is the truth
    assert fit_name_weight(scores, helpful, y) > 0
    s = scores + fit_name_weight(scores, helpful, y) * helpful
    assert (s.argmax(axis=1) == y).all()
    misleading = np.zeros((6, 3))
    misleading[[0, 2, 3, 5], 1] = 1.0  # names label 1 where another label is right
    assert fit_name_weight(scores, misleading, y) == 0.0


def test_training_fits_the_weight_and_every_prediction_path_applies_it(tmp_path: Path) -> None:
    head = _train(unit_rows(1))
    assert head.name_weight > 0 and head.meta["name_match"] is True
    cv = head.meta["cv"]
    assert cv["accuracy"] > cv["without_names"]["accuracy"] + 0.1
    head.save(tmp_path / "h")
    loaded = LinearHead.load(tmp_path / "h")
    assert loaded.name_weight == head.name_weight
    # A new letter to a unit that two letters in the history went to.
    doc = _doc("我们，小区，最近，西岗区民政局，尽快，解决")
    linear = loaded.scores(features(doc, loaded.features))
    group = FeatureGroup([("department", loaded)])
    expected = linear + loaded.name_weight * LabelNames(loaded.labels).scores(doc_text(doc))
    assert np.allclose(group.scores(doc)["department"], expected, atol=1e-6)
    assert group.tops(doc)["department"] == loaded.top(doc)
    assert loaded.top(doc)[0]["label"] == "西岗区民政局"
    unit = loaded.labels.index("西岗区民政局")
    assert loaded.proba(doc)[unit] > softmax(linear, loaded.temperature)[unit]


def test_name_matching_can_be_turned_off() -> None:
    head = _train(unit_rows(2), name_match=False)
    assert head.name_weight == 0.0 and head.names is None and "without_names" not in head.meta["cv"]
    doc = _doc("西岗区民政局")
    group = FeatureGroup([("department", head)])
    assert np.array_equal(group.scores(doc)["department"], head.scores(features(doc, head.features)))
    # Training without the texts (a caller that has only feature lists) leaves the names out as well.
    docs = [_doc(r["text"]) for r in unit_rows(2)]
    plain = train_head([features(d, FeatureConfig()) for d in docs], [r["department"] for r in unit_rows(2)],
                       TrainConfig(min_df=1, calibration_folds=5), FeatureConfig())
    assert plain.name_weight == 0.0


def test_cli_reports_the_weight_and_honours_no_name_match(tmp_path: Path,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    data = write_jsonl(tmp_path / "units.jsonl", unit_rows(3))
    base = ["nlp", "train", "--head", "department", "--data", str(data), "--label", "department", "--json"]
    assert main([*base, "--out", str(tmp_path / "on")]) == 0
    on = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert on["name_weight"] > 0
    assert json.loads((tmp_path / "on" / "head.json").read_text("utf-8"))["name_weight"] == on["name_weight"]
    assert main([*base, "--no-name-match", "--out", str(tmp_path / "off")]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["name_weight"] == 0.0
    assert main(["nlp", "predict", "--model", str(tmp_path / "on"), "--json", "请金州区供热办看看，暖气不热"]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["top"][0]["label"] == "金州区供热办"


@pytest.mark.parametrize("bad", [-1, "x", 1e9, float("nan")])
def test_a_model_with_a_bad_name_weight_is_refused(tmp_path: Path, bad: object) -> None:
    head = _train(unit_rows(4))
    head.save(tmp_path / "h")
    meta = json.loads((tmp_path / "h" / "head.json").read_text("utf-8"))
    meta["name_weight"] = bad
    (tmp_path / "h" / "head.json").write_text(json.dumps(meta), encoding="utf-8")
    with pytest.raises(ModelError, match="name_weight"):
        LinearHead.load(tmp_path / "h")


@pytest.mark.parametrize("char_min,char_max", [(1, 3), (2, 2), (3, 3), (1, 4)])
def test_the_serving_path_finds_the_names_whatever_n_grams_the_head_uses(char_min: int, char_max: int) -> None:
    """Heads with bigrams reuse the message's n-gram keys; the others (no bigrams, or n-grams the index does
    not handle) count the names' bigrams themselves. Both must give the scores of the plain text."""
    feat = FeatureConfig(char_min=char_min, char_max=char_max)
    rows = unit_rows(5)
    docs = [_doc(r["text"]) for r in rows]
    head = train_head([features(d, feat) for d in docs], [r["department"] for r in rows],
                      TrainConfig(c=0.5, class_weight=None, min_df=1, calibration_folds=0), feat)
    head.name_weight = 0.5
    head.__post_init__()
    group = FeatureGroup([("department", head)])
    for text in ("甘井子区城建局，违建", "找城建局", "", "🙂 xyz"):
        doc = _doc(text)
        expected = head.scores(features(doc, feat)) + 0.5 * LabelNames(head.labels).scores(doc_text(doc))
        assert np.allclose(group.scores(doc)["department"], expected, atol=1e-6)


def test_many_units_keep_a_small_sparse_table() -> None:
    """A city with thousands of units: memory grows with the names' bigrams, not bigrams × units."""
    rng = random.Random(7)
    chars = "东西南北中山河湖海林松柏桥港湾新华兴光明安宁平和泰康"
    units = sorted({"".join(rng.choice(chars) for _ in range(4)) + rng.choice(UNITS) for _ in range(3000)})
    names = LabelNames(units)
    table = names.keys.nbytes + names.indptr.nbytes + names.cols.nbytes + names.vals.nbytes
    assert len(units) > 2500 and table < 1_000_000  # a dense float32 table: 9 MB
    s = names.scores(f"请{units[123]}处理")
    assert s.shape == (len(units),) and s[123] == pytest.approx(1.0)
    assert int(np.argmax(s)) == 123
