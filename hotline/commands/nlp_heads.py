"""``hotline nlp train|eval|predict|export-corrections``: the classification heads' toolkit.

- ``train --head NAME --data A.jsonl [--data B.jsonl …] --label FIELD --out DIR``
- ``eval --model DIR --data FILE.jsonl --label FIELD [--json]``
- ``predict --model DIR "文本"`` (DIR is one head, or a models directory → the whole suggestion)
- ``export-corrections --out FILE.jsonl``

Rows are JSON objects; the text is ``title`` + ``text``, or ``tokens`` (pre-segmented) when present.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from hotline.commands.common import add_settings_args, open_store, settings_from_args
from hotline.commands.jsonl import JsonlError, Skipped, read_jsonl
from hotline.settings import Settings, load_settings

# Training defaults per head, chosen by 5-fold cross-validation on the shared data (README: Complaint understanding).
HEAD_DEFAULTS: dict[str, dict[str, Any]] = {
    "category": {"c": 1.0, "class_weight": "balanced", "min_df": 1, "max_features": 300_000, "words": True,
                 "sublinear": False, "taxonomy": True},
    "department": {"c": 0.5, "class_weight": "damped", "min_df": 2, "max_features": 120_000, "words": True},
    "type": {"c": 0.3, "class_weight": "balanced", "min_df": 2, "max_features": 120_000, "words": True},
}
GENERIC_DEFAULTS: dict[str, Any] = {"c": 0.5, "class_weight": "balanced", "min_df": 2, "max_features": 150_000,
                                    "words": True}


def register(sub: argparse._SubParsersAction) -> None:
    tr = sub.add_parser("train", help="train one classification head (category, department, type …)")
    tr.add_argument("--head", required=True, help="head name: category, department, type or your own")
    tr.add_argument("--data", type=Path, action="append", required=True, help="JSONL training file (repeatable)")
    tr.add_argument("--label", required=True, help="the field holding the label (rows without one are skipped)")
    tr.add_argument("--out", type=Path, required=True, help="model directory to write")
    tr.add_argument("--c", type=float, help="regularisation C of the linear SVM")
    tr.add_argument("--class-weight", choices=["balanced", "damped", "none"],
                    help="weight rare labels up: fully (balanced), by the fourth root (damped) or not at all")
    tr.add_argument("--min-df", type=int, help="drop features seen in fewer rows")
    tr.add_argument("--max-features", type=int, help="keep at most this many features")
    tr.add_argument("--words", action=argparse.BooleanOptionalAction, default=None,
                    help="add jieba word features (default per head, chosen by cross-validation)")
    tr.add_argument("--sublinear", action=argparse.BooleanOptionalAction, default=None,
                    help="1 + log(tf) instead of raw term counts (default per head)")
    tr.add_argument("--taxonomy", action=argparse.BooleanOptionalAction, default=None,
                    help="also train on the category tree's topic names (config/taxonomy.json) under their "
                         "first-level label (default: on for the category head)")
    tr.add_argument("--name-match", action=argparse.BooleanOptionalAction, default=True,
                    help="fit a weight for the labels' own names found in the text (default: on; the fit "
                         "sets it to 0 where the names do not help)")
    tr.add_argument("--folds", type=int, default=5, help="folds of the probability calibration (0: none)")
    tr.add_argument("--json", action="store_true", help="print one JSON object")
    tr.add_argument("--config", type=Path, help="a site TOML file overriding config/hotline.toml")
    tr.set_defaults(handler=run_train)

    ev = sub.add_parser("eval", help="accuracy, macro-F1, top-3 accuracy and latency of a head on labelled data")
    ev.add_argument("--model", type=Path, required=True, help="model directory (one head)")
    ev.add_argument("--data", type=Path, required=True, help="JSONL file with the label field")
    ev.add_argument("--label", required=True)
    ev.add_argument("--json", action="store_true", help="print one JSON object")
    ev.add_argument("--config", type=Path, help="a site TOML file overriding config/hotline.toml")
    ev.set_defaults(handler=run_eval)

    pr = sub.add_parser("predict", help="top 3 labels with probabilities for one text")
    pr.add_argument("--model", type=Path, required=True, help="one head, or a models directory (all heads)")
    pr.add_argument("text", help="the complaint text")
    pr.add_argument("--title", default="", help="an optional title")
    pr.add_argument("--json", action="store_true", help="print one JSON object")
    pr.add_argument("--config", type=Path, help="a site TOML file overriding config/hotline.toml")
    pr.set_defaults(handler=run_predict)

    ex = sub.add_parser("export-corrections", help="write call-taker confirmations as training rows (JSONL)")
    ex.add_argument("--out", type=Path, required=True)
    ex.add_argument("--json", action="store_true", help="print one JSON object")
    add_settings_args(ex)
    ex.set_defaults(handler=run_export)


# data -------------------------------------------------------------------------
class DataError(Exception):
    pass


def read_rows(path: Path) -> Iterator[tuple[str, dict[str, Any]]]:
    """(``file:line``, row) of each JSON object; a line that is not one stops the command, naming it."""
    try:
        yield from read_jsonl(path)
    except JsonlError as exc:
        raise DataError(str(exc)) from exc


def row_problem(row: dict[str, Any]) -> str:
    """Why a row's text cannot be read as text ('' when it can); str() of a number or a dict is no text."""
    for key in ("title", "text"):
        value = row.get(key)
        if value is not None and not isinstance(value, str):
            return f"{key} is not a string"
    tokens = row.get("tokens")
    if tokens is not None and not isinstance(tokens, str) and \
            not (isinstance(tokens, list) and all(isinstance(t, str) for t in tokens)):
        return "tokens is neither a string nor a list of strings"
    return ""


def labelled(rows: Iterator[tuple[str, dict[str, Any]]], label: str,
             skipped: Skipped | None = None) -> Iterator[tuple[dict[str, Any], str]]:
    """(row, label) of the rows with a label and a text; the others are counted in ``skipped`` by reason."""
    skip = skipped if skipped is not None else Skipped()
    for where, row in rows:
        value = row.get(label)
        if value is None or (isinstance(value, str) and not value.strip()):
            skip(where, "no label")
            continue
        if not isinstance(value, str):
            # True, 1 and 2.0 would become labels "True", "1" and "2.0"; a list or object none at all.
            skip(where, "label is not a string")
            continue
        if problem := row_problem(row):
            skip(where, problem)
            continue
        if not (row.get("text") or row.get("title") or row.get("tokens")):
            skip(where, "no text")
            continue
        yield row, value.strip()


def _report_skipped(skipped: Skipped) -> None:
    if skipped:
        print(f"hotline: skipped {skipped.total} row{'' if skipped.total == 1 else 's'}: {skipped.describe()}",
              file=sys.stderr)


def progress(iterable: Any = None, **kwargs: Any) -> Any:
    from tqdm import tqdm

    # A bar on a terminal only: logs and pipes get the result line, not carriage returns.
    return tqdm(iterable, disable=not sys.stderr.isatty(), file=sys.stderr, dynamic_ncols=True, **kwargs)


def _pipeline(settings: Settings) -> Any:
    from hotline.nlp.suggest import TextPipeline, config_path
    from hotline.nlp.tokenize import Tokenizer

    return TextPipeline(Tokenizer(config_path(settings, "userdict")))


def _fail(message: str) -> int:
    print(f"hotline: {message}", file=sys.stderr)
    return 2


# train ------------------------------------------------------------------------
def run_train(args: argparse.Namespace) -> int:
    import numpy as np

    from hotline.nlp.model import FeatureConfig, ModelError, TrainConfig, check_out, doc_text, features, train_head
    from hotline.nlp.suggest import config_path
    from hotline.nlp.taxonomy import Taxonomy

    settings = load_settings(extra_file=args.config)
    params = dict(HEAD_DEFAULTS.get(args.head, GENERIC_DEFAULTS))
    if args.c is not None:
        params["c"] = args.c
    if args.class_weight:
        params["class_weight"] = None if args.class_weight == "none" else args.class_weight
    if args.min_df is not None:
        params["min_df"] = args.min_df
    if args.max_features is not None:
        params["max_features"] = args.max_features
    if params["c"] <= 0 or params["min_df"] < 1 or (params["max_features"] or 1) < 1 or args.folds < 0:
        return _fail("--c must be > 0, --min-df and --max-features ≥ 1, --folds ≥ 0")
    default_taxonomy = bool(params.pop("taxonomy", False))
    use_taxonomy = default_taxonomy if args.taxonomy is None else args.taxonomy
    default_words = bool(params.pop("words", True))
    default_sublinear = bool(params.pop("sublinear", True))
    feat = FeatureConfig(words=default_words if args.words is None else args.words,
                         sublinear=default_sublinear if args.sublinear is None else args.sublinear)
    cfg = TrainConfig(calibration_folds=args.folds, name_match=args.name_match, **params)
    try:
        check_out(args.out)
    except ModelError as exc:
        return _fail(str(exc))
    skipped = Skipped()
    try:
        rows = [pair for path in args.data for pair in labelled(read_rows(path), args.label, skipped)]
    except DataError as exc:
        return _fail(str(exc))
    _report_skipped(skipped)
    labels = [v for _, v in rows]
    if len(set(labels)) < 2:
        return _fail(f"need rows with at least two different values of {args.label!r} (found {len(set(labels))})")
    started = time.monotonic()
    pipeline = _pipeline(settings)
    docs = []
    texts = []
    groups = []
    for row, _ in progress(rows, desc="features", unit="row"):
        doc = pipeline.doc_from_row(row, words=feat.words)
        docs.append(features(doc, feat))
        texts.append(doc_text(doc))
        # The same letter twice (two exports, a resubmission) stays in one calibration fold.
        groups.append(hashlib.blake2b(doc.body[:80].encode(), digest_size=8).hexdigest())
    _, group_ids = np.unique(np.array(groups), return_inverse=True)
    extra = []
    if use_taxonomy:
        try:
            taxonomy = Taxonomy.from_json(json.loads(config_path(settings, "taxonomy_file").read_text("utf-8")))
        except (OSError, ValueError) as exc:
            return _fail(f"cannot read the category tree: {exc}")
        extra = [(features(pipeline.doc_from_row(row, words=feat.words), feat), label)
                 for row, label in taxonomy.training_rows(set(labels))]
    steps = (args.folds if args.folds >= 2 else 0) + 1
    with progress(total=steps, desc=f"train {args.head}", unit="fit") as bar:
        head = train_head(docs, labels, cfg, feat, tick=lambda: bar.update(1), groups=group_ids, extra=extra,
                          texts=texts)
    head.meta.update(head=args.head, label=args.label, data=[p.name for p in args.data],
                     version=time.strftime("%Y%m%d%H%M%S"))
    try:
        head.save(args.out)
    except ModelError as exc:
        return _fail(str(exc))
    size = sum(f.stat().st_size for f in args.out.iterdir() if f.is_file())
    result = {"head": args.head, "rows": len(docs), "skipped": skipped.as_dict(), "taxonomy_rows": len(extra),
              "labels": len(head.labels),
              "features": len(head.vocab),
              "weighted_features": int(head.coef.shape[0]), "temperature": round(head.temperature, 4),
              "name_weight": head.name_weight, "bytes": size, "seconds": round(time.monotonic() - started, 1),
              "out": str(args.out)}
    print(json.dumps(result, ensure_ascii=False) if args.json else
          f"trained {args.head}: {result['rows']} rows, {result['labels']} labels, "
          f"{result['weighted_features']} weighted features, {size / 1e6:.1f} MB → {args.out}")
    return 0


# eval -------------------------------------------------------------------------
def evaluate(head: Any, pipeline: Any, rows: list[tuple[dict[str, Any], str]], show: bool = True) -> dict[str, Any]:
    """Metrics of one head on labelled rows; latency per message with cleaning and tokenising included."""
    import numpy as np
    from sklearn.metrics import f1_score

    from hotline.nlp.model import softmax
    from hotline.nlp.suggest import FeatureGroup

    index = {label: i for i, label in enumerate(head.labels)}
    # The serving path (integer n-grams, merged index): the latency is what a suggestion costs live.
    group = FeatureGroup([("head", head)])
    y_true: list[str] = []
    y_pred: list[str] = []
    top3 = 0
    latencies = np.zeros(len(rows))
    iterable = progress(rows, desc="eval", unit="row") if show else rows
    for n, (row, want) in enumerate(iterable):
        t0 = time.perf_counter()
        doc = pipeline.doc_from_row(row, words=head.features.words)
        p = softmax(group.scores(doc)["head"], head.temperature)
        best = np.argpartition(-p, min(3, len(p)) - 1)[:3]
        latencies[n] = time.perf_counter() - t0
        best = best[np.argsort(-p[best])]
        y_true.append(want)
        y_pred.append(head.labels[best[0]])
        top3 += index.get(want, -1) in best.tolist()
    n = len(rows)
    return {
        "n": n,
        "accuracy": round(sum(a == b for a, b in zip(y_true, y_pred, strict=True)) / n, 4),
        "macro_f1": round(float(f1_score(y_true, y_pred, average="macro", zero_division=0)), 4),
        "top3_accuracy": round(top3 / n, 4),
        "p50_ms": round(float(np.percentile(latencies, 50)) * 1000, 3),
        "p99_ms": round(float(np.percentile(latencies, 99)) * 1000, 3),
    }


def run_eval(args: argparse.Namespace) -> int:
    from hotline.nlp.model import LinearHead, ModelError

    settings = load_settings(extra_file=args.config)
    skipped = Skipped()
    try:
        head = LinearHead.load(args.model)
        rows = list(labelled(read_rows(args.data), args.label, skipped))
    except (ModelError, DataError) as exc:
        return _fail(str(exc))
    _report_skipped(skipped)
    if not rows:
        return _fail(f"{args.data}: no rows with a {args.label!r} label")
    if problem := _label_mismatch(head, args.label, rows):
        return _fail(problem)
    result = evaluate(head, _pipeline(settings), rows)
    if args.json:
        print(json.dumps(result, ensure_ascii=False))
    else:
        print(f"{result['n']} rows: accuracy {result['accuracy']:.4f}  macro-F1 {result['macro_f1']:.4f}  "
              f"top-3 {result['top3_accuracy']:.4f}  latency p50 {result['p50_ms']} ms p99 {result['p99_ms']} ms")
    return 0


def _label_mismatch(head: Any, label: str, rows: list[tuple[dict[str, Any], str]]) -> str:
    """An error when ``--label`` names another field than the model learnt and none of its values is one
    of the model's labels: every row would count as wrong, an accuracy of 0 that measures nothing.
    Rows whose label the model does not know are otherwise counted wrong, with a warning."""
    known = set(head.labels)
    values = Counter(v for _, v in rows)
    unknown = sum(n for v, n in values.items() if v not in known)
    trained_on = head.meta.get("label")
    other_field = isinstance(trained_on, str) and trained_on and trained_on != label
    sample = ", ".join(sorted(values)[:3]) + (", …" if len(values) > 3 else "")
    if unknown == len(rows) and other_field:
        return (f"--label {label}: the model was trained on the field {trained_on!r}, and none of the "
                f"{len(values)} values of {label!r} in the data ({sample}) is one of its labels; "
                f"use --label {trained_on}")
    if other_field:
        print(f"hotline: warning: the model was trained on the field {trained_on!r}, not {label!r}",
              file=sys.stderr)
    if unknown:
        print(f"hotline: warning: {unknown} of {len(rows)} rows have a label the model does not know "
              "(counted wrong)", file=sys.stderr)
    return ""


# predict ----------------------------------------------------------------------
def run_predict(args: argparse.Namespace) -> int:
    from hotline.nlp.model import LinearHead, ModelError
    from hotline.nlp.suggest import Suggester

    settings = load_settings(extra_file=args.config)
    text, title = argv_text(args.text), argv_text(args.title)
    if not text.strip():
        return _fail("empty text")
    try:
        if (args.model / "head.json").is_file():
            head = LinearHead.load(args.model)
            doc = _pipeline(settings).doc(title, text, words=head.features.words)
            out: dict[str, Any] = {"top": head.top(doc)}
        elif (args.model / "category").is_dir():
            out = Suggester.load(args.model, settings).suggest(text, title=title)
        else:
            return _fail(f"{args.model}: neither a trained head nor a models directory")
    except ModelError as exc:
        return _fail(str(exc))
    except FileNotFoundError as exc:  # a models directory whose category head is missing
        return _fail(str(exc))
    if args.json:
        print(json.dumps(out, ensure_ascii=False))
    elif "top" in out:
        for item in out["top"]:
            print(f"{item['p']:.3f}  {item['label']}")
    else:
        print(json.dumps(out, ensure_ascii=False, indent=1))
    return 0


def argv_text(value: str) -> str:
    """Text from the command line as Unicode: bytes that were not valid UTF-8 reach Python as lone
    surrogates (PEP 383), which no encoder accepts; they become U+FFFD like any undecodable byte."""
    try:
        raw = os.fsencode(value)
    except UnicodeEncodeError:  # a surrogate that is no escaped byte (not from argv)
        raw = value.encode("utf-8", "surrogatepass")
    return raw.decode("utf-8", "replace")


# export-corrections -------------------------------------------------------------
def run_export(args: argparse.Namespace) -> int:
    settings = settings_from_args(args)
    out: Path = args.out
    if out.is_dir():
        return _fail(f"--out {out}: is a directory; give the file to write")

    async def export() -> list[dict[str, Any]]:
        from hotline.store.corrections import Corrections

        async with open_store(settings) as store:
            return await Corrections(store).export()

    rows = asyncio.run(export())
    try:
        _write_jsonl(out, rows)
    except OSError as exc:
        return _fail(f"cannot write {out}: {exc.strerror or exc}")
    result = {"rows": len(rows), "out": str(out)}
    print(json.dumps(result, ensure_ascii=False) if args.json else f"{len(rows)} corrections → {out}")
    return 0


def _write_jsonl(out: Path, rows: list[dict[str, Any]]) -> None:
    """Write through a temporary file beside ``out``, removed when anything fails: a reader never sees
    half an export, and a failed one leaves nothing behind."""
    import tempfile

    out.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=out.parent, prefix=f".{out.name}.", suffix=".tmp")
    tmp = Path(name)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            for row in rows:
                fh.write(json.dumps(row, ensure_ascii=False) + "\n")
        # mkstemp makes the file private to the user; an export is an ordinary file of the umask's mode.
        umask = os.umask(0)
        os.umask(umask)
        tmp.chmod(0o666 & ~umask)
        tmp.replace(out)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
