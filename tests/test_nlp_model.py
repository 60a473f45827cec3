"""Training, saving, loading and evaluating a head through the CLI forms of the issue."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from hotline.cli import main
from hotline.nlp.model import Doc, FeatureConfig, LinearHead, ModelError, TrainConfig, features, train_head
from tests.nlp_support import make_rows, write_jsonl


def run_json(capsys: pytest.CaptureFixture[str], argv: list[str]) -> dict:
    assert main(argv) == 0
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("model")
    a = write_jsonl(tmp / "a.jsonl", make_rows(20, seed=1))
    # A second file, with rows lacking a label that must be skipped.
    unlabelled = [{"title": "无标签", "text": "没有标签的行", "label1": ""}, {"text": "也没有", "label1": None}]
    b = write_jsonl(tmp / "b.jsonl", [*make_rows(10, seed=2), *unlabelled])
    out = tmp / "head"
    assert main(["nlp", "train", "--head", "topic", "--data", str(a), "--data", str(b), "--label", "label1",
                 "--out", str(out), "--json"]) == 0
    return out


def test_train_writes_a_small_loadable_head(trained: Path) -> None:
    head = LinearHead.load(trained)
    assert head.labels == ["交通", "供水", "教育"]
    assert head.meta["rows"] == 90  # 60 + 30 labelled rows, the 2 unlabelled skipped
    assert 0.01 < head.temperature < 10
    assert set(head.meta["cv"]) >= {"accuracy", "macro_f1", "top3_accuracy"}
    size = sum(f.stat().st_size for f in trained.iterdir())
    assert size < 1_000_000


def test_predict_cli_gives_the_top_three(trained: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = run_json(capsys, ["nlp", "predict", "--model", str(trained), "--json", "家里停水了，水管也漏水"])
    assert out["top"][0]["label"] == "供水"
    assert len(out["top"]) == 3
    assert abs(sum(t["p"] for t in out["top"]) - 1.0) < 0.01
    assert out["top"][0]["p"] > out["top"][1]["p"] >= out["top"][2]["p"]
    assert main(["nlp", "predict", "--model", str(trained), "老师乱收补课费"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 3 and lines[0].endswith("教育")


def test_eval_numbers_come_from_the_data_given(trained: Path, tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    rows = make_rows(10, seed=7)
    good = write_jsonl(tmp_path / "good.jsonl", rows)
    result = run_json(capsys, ["nlp", "eval", "--model", str(trained), "--data", str(good), "--label", "label1",
                               "--json"])
    assert set(result) == {"n", "accuracy", "macro_f1", "top3_accuracy", "p50_ms", "p99_ms"}
    assert result["n"] == 30 and result["accuracy"] >= 0.9 and result["top3_accuracy"] == 1.0
    assert 0 < result["p50_ms"] <= result["p99_ms"]
    # The same texts with rotated labels: every prediction is now wrong, top-3 still covers all 3 labels.
    rotate = {"供水": "教育", "教育": "交通", "交通": "供水"}
    bad = write_jsonl(tmp_path / "bad.jsonl", [{**r, "label1": rotate[r["label1"]]} for r in rows])
    result = run_json(capsys, ["nlp", "eval", "--model", str(trained), "--data", str(bad), "--label", "label1",
                               "--json"])
    assert result["n"] == 30 and result["accuracy"] <= 0.1 and result["top3_accuracy"] == 1.0
    # A label the model never saw is counted wrong, in top-3 too; only the labelled rows count.
    other = write_jsonl(tmp_path / "other.jsonl", [{**r, "label1": "未知"} for r in rows[:5]] + [{"text": "x"}])
    result = run_json(capsys, ["nlp", "eval", "--model", str(trained), "--data", str(other), "--label", "label1",
                               "--json"])
    assert result["n"] == 5 and result["accuracy"] == 0.0 and result["top3_accuracy"] == 0.0


def test_cli_errors_are_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["nlp", "eval", "--model", str(tmp_path), "--data", str(tmp_path / "x.jsonl"),
                 "--label", "label1"]) == 2
    assert "not a trained model" in capsys.readouterr().err
    broken = tmp_path / "broken.jsonl"
    broken.write_text('{"text": "a", "label1": "x"}\nnot json\n', encoding="utf-8")
    assert main(["nlp", "train", "--head", "h", "--data", str(broken), "--label", "label1",
                 "--out", str(tmp_path / "o")]) == 2
    assert "broken.jsonl:2: not JSON" in capsys.readouterr().err
    one = write_jsonl(tmp_path / "one.jsonl", [{"text": "只有一个类", "label1": "a"}] * 5)
    assert main(["nlp", "train", "--head", "h", "--data", str(one), "--label", "label1",
                 "--out", str(tmp_path / "o")]) == 2
    assert "two different values" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("sublinear", [True, False])
def test_fast_path_matches_scikit_learn_exactly(sublinear: bool) -> None:
    """The hand-written predict path equals TfidfVectorizer + LinearSVC decision scores."""
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.svm import LinearSVC

    rows = make_rows(15, seed=3)
    docs = [features(Doc(title="", body=r["text"], words=r["text"].split("，")), FeatureConfig()) for r in rows]
    labels = [r["label1"] for r in rows]
    cfg = TrainConfig(c=0.5, class_weight=None, min_df=1, max_features=None, prune=0.0, calibration_folds=0)
    head = train_head(docs, labels, cfg, FeatureConfig(sublinear=sublinear))
    vec = TfidfVectorizer(analyzer=lambda d: d, sublinear_tf=sublinear, min_df=1, dtype=np.float32)
    svm = LinearSVC(C=0.5, random_state=0).fit(vec.fit_transform(docs), labels)
    probe_doc = Doc(title="", body="停水停水了学校学校门口", words=["停水", "停水", "学校", "门口", "未见过的词"])
    probe = features(probe_doc, FeatureConfig())
    want = svm.decision_function(vec.transform([probe]))[0]
    assert np.allclose(head.scores(probe), want, atol=1e-4)
    assert head.scores([]).shape == (3,)


def test_damped_class_weights_are_the_fourth_root_of_the_imbalance() -> None:
    """`--class-weight damped` trains exactly LinearSVC with weights (max count / count) ** 0.25."""
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.svm import LinearSVC

    rows = make_rows(15, seed=4)
    rows = rows + [r for r in rows if r["label1"] == rows[0]["label1"]] * 3  # one label 4× as frequent
    docs = [features(Doc(title="", body=r["text"], words=r["text"].split("，")), FeatureConfig()) for r in rows]
    labels = [r["label1"] for r in rows]
    cfg = TrainConfig(c=0.5, class_weight="damped", min_df=1, max_features=None, prune=0.0, calibration_folds=0)
    head = train_head(docs, labels, cfg, FeatureConfig())
    counts = {k: labels.count(k) for k in set(labels)}
    weights = {k: (max(counts.values()) / n) ** 0.25 for k, n in counts.items()}
    assert max(weights.values()) > 1.3 and min(weights.values()) == 1.0
    vec = TfidfVectorizer(analyzer=lambda d: d, sublinear_tf=True, min_df=1, dtype=np.float32)
    svm = LinearSVC(C=0.5, class_weight=weights, random_state=0).fit(vec.fit_transform(docs), labels)
    probe = features(Doc(title="", body="路灯不亮", words=["路灯", "不亮"]), FeatureConfig())
    assert np.allclose(head.scores(probe), svm.decision_function(vec.transform([probe]))[0], atol=1e-4)
    assert head.meta["class_weight"] == "damped"


def test_loading_a_corrupt_model_fails_clearly(trained: Path, tmp_path: Path) -> None:
    bad = tmp_path / "bad"
    bad.mkdir()
    for f in trained.iterdir():
        (bad / f.name).write_bytes(f.read_bytes())
    (bad / "vocab.txt").write_text("only\nthree\nterms\n", encoding="utf-8")
    with pytest.raises(ModelError, match="do not match"):
        LinearHead.load(bad)
    (bad / "head.json").write_text("{", encoding="utf-8")
    with pytest.raises(ModelError, match="not JSON"):
        LinearHead.load(bad)


def test_extra_rows_are_trained_on_but_not_scored() -> None:
    """Prior-knowledge rows (the category tree) join every fit exactly; the CV figures count letters only."""
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.svm import LinearSVC

    rows = make_rows(12, seed=5)
    docs = [features(Doc(title="", body=r["text"], words=r["text"].split("，")), FeatureConfig()) for r in rows]
    labels = [r["label1"] for r in rows]
    extra = [(features(Doc(title="", body="窨井盖", words=["窨井盖"]), FeatureConfig()), "交通")] * 2
    cfg = TrainConfig(c=1.0, class_weight=None, min_df=1, max_features=None, prune=0.0, calibration_folds=3)
    head = train_head(docs, labels, cfg, FeatureConfig(), extra=extra)
    plain = train_head(docs, labels, cfg, FeatureConfig())
    assert head.meta["rows"] == len(docs) and head.meta["extra_rows"] == 2
    assert "w:窨井盖" in head.vocab and "w:窨井盖" not in plain.vocab
    vec = TfidfVectorizer(analyzer=lambda d: d, sublinear_tf=True, min_df=1, dtype=np.float32)
    svm = LinearSVC(C=1.0, random_state=0).fit(vec.fit_transform(docs + [d for d, _ in extra]),
                                               labels + [v for _, v in extra])
    probe = features(Doc(title="", body="窨井盖丢了", words=["窨井盖", "丢", "了"]), FeatureConfig())
    assert np.allclose(head.scores(probe), svm.decision_function(vec.transform([probe]))[0], atol=1e-4)
    assert head.labels[int(np.argmax(head.scores(probe)))] == "交通"
    # Labels the letters do not have cannot come in through extra rows.
    with pytest.raises(ValueError, match="不存在的类"):
        train_head(docs, labels, cfg, FeatureConfig(), extra=[(["w:x"], "不存在的类")])


def test_category_head_also_learns_the_category_tree(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from hotline.nlp.taxonomy import Taxonomy

    tree = Taxonomy.from_json(json.loads((Path(__file__).resolve().parent.parent / "config" / "taxonomy.json")
                                         .read_text(encoding="utf-8")))
    wanted = tree.training_rows({"交通运输", "城乡建设", "没有的类"})
    assert {label for _, label in wanted} == {"交通运输", "城乡建设"}
    assert len(wanted) == sum(len(l3s) for l1 in ("交通运输", "城乡建设") for l3s in tree.tree[l1].values())
    assert all(set(row) == {"title", "text"} and row["title"] in tree.tree[label] for row, label in wanted)

    rows = [{**r, "label1": {"交通": "交通运输", "供水": "城乡建设", "教育": "教育文体"}[r["label1"]]}
            for r in make_rows(10, seed=6)]
    data = write_jsonl(tmp_path / "taidi.jsonl", rows)
    base = ["nlp", "train", "--data", str(data), "--label", "label1", "--folds", "0", "--json"]
    on = run_json(capsys, [*base, "--head", "category", "--out", str(tmp_path / "c1")])
    expected = len(tree.training_rows({"交通运输", "城乡建设", "教育文体"}))
    assert on["rows"] == 30 and on["taxonomy_rows"] == expected > 0
    assert LinearHead.load(tmp_path / "c1").meta["extra_rows"] == expected
    off = run_json(capsys, [*base, "--head", "category", "--no-taxonomy", "--out", str(tmp_path / "c2")])
    assert off["taxonomy_rows"] == 0
    other = run_json(capsys, [*base, "--head", "topic", "--out", str(tmp_path / "c3")])
    assert other["taxonomy_rows"] == 0
    forced = run_json(capsys, [*base, "--head", "topic", "--taxonomy", "--out", str(tmp_path / "c4")])
    assert forced["taxonomy_rows"] == expected


# saving and loading: failures leave the model whole and are one-line errors ------------------------------

def _train(out: Path, rows: list[dict], data_dir: Path) -> int:
    data = write_jsonl(data_dir / "rows.jsonl", rows)
    return main(["nlp", "train", "--head", "topic", "--data", str(data), "--label", "label1", "--out", str(out),
                 "--folds", "0", "--min-df", "1"])


def test_a_failed_save_leaves_the_previous_model_whole(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    import errno

    import scipy.sparse

    out = tmp_path / "head"
    assert _train(out, make_rows(4, seed=1), tmp_path) == 0
    before = LinearHead.load(out)

    def disk_full(file: Path, *_args: object, **_kwargs: object) -> None:
        Path(file).write_bytes(b"PK\x03\x04 cut off")
        raise OSError(errno.EFBIG, "File too large")

    # A second model (other rows, another vocabulary) whose save fails half-way, as under `ulimit -f`.
    monkeypatch.setattr(scipy.sparse, "save_npz", disk_full)
    capsys.readouterr()
    assert _train(out, make_rows(9, seed=2), tmp_path) == 2
    err = capsys.readouterr().err.strip()
    assert "File too large" in err and "unchanged" in err and len(err.splitlines()) == 1
    after = LinearHead.load(out)
    assert after.vocab == before.vocab and np.array_equal(after.idf, before.idf)
    assert sorted(p.name for p in out.iterdir()) == ["coef.npz", "head.json", "vocab.txt", "weights.npz"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["head", "rows.jsonl"]  # no temporary left
    # A save that works replaces the model as a whole.
    monkeypatch.undo()
    assert _train(out, make_rows(9, seed=2), tmp_path) == 0
    assert LinearHead.load(out).vocab != before.vocab


def test_an_out_that_cannot_hold_a_model_is_refused_before_training(tmp_path: Path,
                                                                    capsys: pytest.CaptureFixture[str]) -> None:
    afile = tmp_path / "afile"
    afile.write_text("x", encoding="utf-8")
    models = tmp_path / "models"
    (models / "category").mkdir(parents=True)
    for out, says in ((afile, "is a file"), (afile / "sub", "is a file"), (models, "holds other files")):
        assert _train(out, make_rows(3, seed=1), tmp_path) == 2
        assert says in capsys.readouterr().err
    assert afile.read_text(encoding="utf-8") == "x" and [p.name for p in models.iterdir()] == ["category"]


def test_a_damaged_model_is_a_model_error(trained: Path, tmp_path: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    def copy(name: str) -> Path:
        d = tmp_path / name
        d.mkdir()
        for f in trained.iterdir():
            (d / f.name).write_bytes(f.read_bytes())
        return d

    cut = copy("cut")
    (cut / "coef.npz").write_bytes((trained / "coef.npz").read_bytes()[:100])
    with pytest.raises(ModelError, match=r"coef\.npz: damaged or cut off"):
        LinearHead.load(cut)
    novocab = copy("novocab")
    (novocab / "vocab.txt").unlink()
    with pytest.raises(ModelError, match=r"vocab\.txt: missing"):
        LinearHead.load(novocab)
    array = copy("array")
    (array / "head.json").write_text("[1, 2]", encoding="utf-8")
    with pytest.raises(ModelError, match="not a JSON object"):
        LinearHead.load(array)
    head = json.loads((trained / "head.json").read_text(encoding="utf-8"))
    badfeat = copy("badfeat")
    (badfeat / "head.json").write_text(json.dumps({**head, "features": {"char_max": "3"}}), encoding="utf-8")
    with pytest.raises(ModelError, match="char_max must be int"):
        LinearHead.load(badfeat)
    afile = tmp_path / "small.jsonl"
    afile.write_text("{}\n", encoding="utf-8")
    with pytest.raises(ModelError, match="not a model directory"):
        LinearHead.load(afile)
    for model in (cut, afile):
        assert main(["nlp", "eval", "--model", str(model), "--data", str(afile), "--label", "label1"]) == 2
        assert len(capsys.readouterr().err.strip().splitlines()) == 1


def test_train_counts_the_rows_it_leaves_out(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rows = make_rows(4, seed=1)
    odd = [{"text": "停水了", "label1": True}, {"text": "停水了", "label1": 1}, {"text": "停水了", "label1": 2.0},
           {"text": "停水了", "label1": ["供水"]}, {"text": "停水了", "label1": None}, {"text": "停水了"},
           {"text": {"x": 1}, "label1": "供水"}, {"title": 5, "text": "停水", "label1": "供水"},
           {"tokens": 5, "label1": "供水"}, {"tokens": [1, 2], "label1": "供水"}, {"title": "", "label1": "供水"}]
    data = write_jsonl(tmp_path / "rows.jsonl", rows + odd)
    result = run_json(capsys, ["nlp", "train", "--head", "topic", "--data", str(data), "--label", "label1",
                               "--out", str(tmp_path / "m"), "--folds", "0", "--json"])
    assert result["rows"] == len(rows)
    assert result["skipped"] == {"label is not a string": 4, "no label": 2, "text is not a string": 1,
                                 "title is not a string": 1, "tokens is neither a string nor a list of strings": 2,
                                 "no text": 1}
    assert set(LinearHead.load(tmp_path / "m").labels) == {"供水", "教育", "交通"}  # no "True", "1", "2.0"
    main(["nlp", "train", "--head", "topic", "--data", str(data), "--label", "label1",
          "--out", str(tmp_path / "m"), "--folds", "0"])
    assert f"skipped 11 rows: 4 label is not a string ({data}:{len(rows) + 1}," in capsys.readouterr().err


def test_eval_refuses_another_label_field_the_model_knows_nothing_of(trained: Path, tmp_path: Path,
                                                                     capsys: pytest.CaptureFixture[str]) -> None:
    # The model learnt label1 (供水/教育/交通); the rows' `type` holds request types it has never seen.
    rows = [{**r, "type": "投诉"} for r in make_rows(3, seed=8)]
    data = write_jsonl(tmp_path / "typed.jsonl", rows)
    assert main(["nlp", "eval", "--model", str(trained), "--data", str(data), "--label", "type", "--json"]) == 2
    err = capsys.readouterr().err
    assert "trained on the field 'label1'" in err and "--label label1" in err
    # The model's own field with labels it does not know: measured, with a warning.
    unknown = write_jsonl(tmp_path / "unknown.jsonl", [{**r, "label1": "未知"} for r in rows])
    assert main(["nlp", "eval", "--model", str(trained), "--data", str(unknown), "--label", "label1"]) == 0
    assert "9 of 9 rows have a label the model does not know" in capsys.readouterr().err


# a model directory that cannot be swapped (a volume mounted at models/category) ---------------------------

def _head(c: float) -> LinearHead:
    """Heads of the same rows: the same vocabulary for every ``c``, other weights."""
    rows = make_rows(4, seed=1)
    docs = [features(Doc(title="", body=r["text"], words=r["text"].split("，")), FeatureConfig()) for r in rows]
    cfg = TrainConfig(c=c, class_weight=None, min_df=1, max_features=None, prune=0.0, calibration_folds=0)
    return train_head(docs, [r["label1"] for r in rows], cfg, FeatureConfig())


def _same(a: LinearHead, b: LinearHead) -> bool:
    return a.vocab == b.vocab and np.array_equal(a.coef, b.coef) and np.array_equal(a.intercept, b.intercept)


def _refuse_swap(monkeypatch: pytest.MonkeyPatch, out: Path, how: str) -> None:
    """What the kernel does to a save that swaps directories when ``out`` is a mount point or the like."""
    import errno
    import os

    from hotline.nlp import model

    def fail(code: int) -> Callable[..., None]:
        def raise_(*_args: object) -> None:
            raise OSError(code, os.strerror(code))
        return raise_

    if how == "mount point":
        real = os.path.ismount
        monkeypatch.setattr(os.path, "ismount", lambda p: Path(p) == out or real(p))
        monkeypatch.setattr(model, "_swap_in", fail(errno.EBUSY))
    elif how == "bind mount":  # not seen by ismount: the rename is what fails
        monkeypatch.setattr(model, "_swap_in", fail(errno.EBUSY))
    elif how == "other file system":
        monkeypatch.setattr(model, "_swap_in", fail(errno.EXDEV))
    else:  # a parent directory the user cannot write
        monkeypatch.setattr(model, "_new_sibling", fail(errno.EACCES))


@pytest.mark.parametrize("how", ["mount point", "bind mount", "other file system", "read-only parent"])
def test_a_directory_that_cannot_be_swapped_gets_its_files_replaced(tmp_path: Path, how: str,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    import os
    import stat

    import scipy.sparse

    out = tmp_path / "category"
    old, new = _head(0.5), _head(5.0)
    old.save(out)
    (out / "weights.npz").chmod(0o640)
    inode = out.stat().st_ino
    _refuse_swap(monkeypatch, out, how)
    new.save(out)
    assert _same(LinearHead.load(out), new) and not _same(new, old)
    assert out.stat().st_ino == inode  # the files were replaced, not the directory
    assert sorted(p.name for p in out.iterdir()) == ["coef.npz", "head.json", "vocab.txt", "weights.npz"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["category"]
    assert stat.S_IMODE((out / "weights.npz").stat().st_mode) == 0o640

    # A save that fails while writing leaves the model there whole, and no temporary files.
    def disk_full(file: Path, *_args: object, **_kwargs: object) -> None:
        Path(file).write_bytes(b"PK\x03\x04 cut off")
        raise OSError(28, os.strerror(28))

    monkeypatch.setattr(scipy.sparse, "save_npz", disk_full)
    with pytest.raises(ModelError, match="unchanged"):
        old.save(out)
    assert _same(LinearHead.load(out), new)
    assert sorted(p.name for p in out.iterdir()) == ["coef.npz", "head.json", "vocab.txt", "weights.npz"]


@pytest.mark.parametrize("legacy", [False, True], ids=["digests", "saved-before-digests"])
def test_a_loader_during_an_in_place_save_gets_the_old_model_or_a_clear_error(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, legacy: bool) -> None:
    import os

    out = tmp_path / "category"
    old, new = _head(0.5), _head(5.0)
    old.save(out)
    if legacy:  # a model saved before head.json recorded digests, such as the shipped ones
        head = json.loads((out / "head.json").read_text(encoding="utf-8"))
        del head["sha256"]
        (out / "head.json").write_text(json.dumps(head), encoding="utf-8")
    _refuse_swap(monkeypatch, out, "mount point")
    seen: list[str] = []
    real_replace = os.replace

    def replace_then_load(src: object, dst: object) -> None:
        real_replace(src, dst)
        if Path(dst).parent == out:
            try:
                seen.append("old" if _same(LinearHead.load(out), old) else "new")
            except ModelError as exc:
                assert "being written" in str(exc)
                seen.append("refused")

    monkeypatch.setattr(os, "replace", replace_then_load)
    new.save(out)
    # Whatever a loader finds mid-save: never the new weights with the old head.json.
    assert seen[-1] == "new" and "refused" in seen and set(seen[:-1]) <= {"old", "refused"}


def test_a_mix_of_new_weights_and_an_old_head_json_is_refused(tmp_path: Path) -> None:
    old, new = tmp_path / "old", tmp_path / "new"
    _head(0.5).save(old)
    _head(5.0).save(new)
    # The same vocabulary and shapes: without a content check this loads as a model no one trained.
    (old / "coef.npz").write_bytes((new / "coef.npz").read_bytes())
    with pytest.raises(ModelError, match=r"do not match head\.json \(coef\.npz\): the model is being written"):
        LinearHead.load(old)


def test_a_volume_root_with_lost_and_found_takes_a_model(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "category"
    (out / "lost+found").mkdir(parents=True)  # a fresh ext4 volume
    _refuse_swap(monkeypatch, out, "mount point")
    assert _train(out, make_rows(4, seed=1), tmp_path) == 0, capsys.readouterr().err
    assert _train(out, make_rows(5, seed=2), tmp_path) == 0, capsys.readouterr().err
    assert LinearHead.load(out).labels == ["交通", "供水", "教育"]
    assert sorted(p.name for p in out.iterdir()) == ["coef.npz", "head.json", "lost+found", "vocab.txt",
                                                     "weights.npz"]
    (out / ".0123abcd.tmp.coef.npz").write_bytes(b"PK")  # left by a save killed while writing in place
    assert _train(out, make_rows(4, seed=1), tmp_path) == 0, capsys.readouterr().err
    (out / "notes.txt").write_text("x", encoding="utf-8")  # anything else is still refused
    assert _train(out, make_rows(4, seed=1), tmp_path) == 2
    assert "holds other files than a model (notes.txt)" in capsys.readouterr().err
