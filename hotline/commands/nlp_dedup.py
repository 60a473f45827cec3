"""``hotline nlp eval-dedup``, ``fit-dedup``, ``build-dedup-idf`` and ``build-place-words``: measure and refit
the duplicate matcher."""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

from hotline.commands.jsonl import JsonlError, Skipped, read_jsonl
from hotline.nlp.dedup import (
    BIAS,
    FEATURES,
    WEIGHTS,
    Fingerprint,
    Idf,
    Thresholds,
    age,
    decide,
    features,
    fingerprint,
    pair_score,
    place_text,
    split_headline,
)
from hotline.nlp.places import plain_words, write_plain_words
from hotline.settings import PROJECT_ROOT, load_settings

LABELS = ("dup", "related", "distinct")


def register(sub: argparse._SubParsersAction) -> None:
    ev = sub.add_parser("eval-dedup", help="precision/recall/F1 of the duplicate matcher on labelled pairs")
    ev.add_argument("--data", type=Path, action="append", required=True,
                    help="JSONL of pairs: a_title, a_text, a_time, b_title, b_text, b_time, label (repeatable)")
    ev.add_argument("--letters", type=Path, action="append", default=[],
                    help="JSONL letters (id, title, text, time) that pairs given as a_id/b_id refer to (repeatable)")
    ev.add_argument("--json", action="store_true", help="print one JSON object")
    ev.add_argument("--errors", action="store_true", help="list the misjudged pairs (not with --json)")
    ev.add_argument("--config", type=Path, help="a site TOML file overriding config/hotline.toml")
    ev.add_argument("--cv", type=int, default=0, metavar="SEEDS",
                    help="also refit the model in 5-fold cross-validation repeated with SEEDS shuffles and report "
                         "that estimate for unseen pairs (cv_precision, cv_recall, cv_f1, cv_f1_sd)")
    ev.set_defaults(handler=run_eval)

    fi = sub.add_parser("fit-dedup", help="fit the matcher's logistic weights on labelled pairs (prints them)")
    fi.add_argument("--data", type=Path, action="append", required=True,
                    help="JSONL of labelled pairs, as for eval-dedup (repeatable)")
    fi.add_argument("--letters", type=Path, action="append", default=[],
                    help="JSONL letters that pairs given as a_id/b_id refer to (repeatable)")
    fi.add_argument("--c", type=float, default=1.0, help="inverse L2 regularisation strength")
    fi.add_argument("--config", type=Path, help="a site TOML file overriding config/hotline.toml")
    fi.set_defaults(handler=run_fit)

    bi = sub.add_parser("build-dedup-idf", help="rebuild the bigram document-frequency table of the matcher")
    bi.add_argument("--data", type=Path, nargs="+", required=True, help="JSONL files with title/text fields")
    bi.add_argument("--out", type=Path, required=True)
    bi.add_argument("--min-df", type=int, default=10)
    bi.set_defaults(handler=run_build_idf)

    pw = sub.add_parser("build-place-words",
                        help="rebuild the table of words the letters use as ordinary words, never as a place")
    pw.add_argument("--data", type=Path, nargs="+", required=True, help="JSONL files with title/text fields")
    pw.add_argument("--out", type=Path, required=True)
    pw.add_argument("--max-share", type=float, default=0.1,
                    help="listed when fewer than this share of the letters holding it name it as a place")
    pw.add_argument("--min-docs", type=int, default=10, help="listed only when at least this many letters hold it")
    pw.set_defaults(handler=run_build_place_words)


def load_idf(settings: Any) -> Idf:
    path = Path(settings["dedup"]["idf_file"])
    path = path if path.is_absolute() else PROJECT_ROOT / path
    if not path.is_file():
        return Idf.uniform()
    try:
        return Idf.load(path)
    except (OSError, ValueError) as exc:
        raise SystemExit(f"hotline: dedup.idf_file: {exc}") from exc


def load_plain(settings: Any) -> frozenset[str]:
    """The live matcher's plain words, so pairs are scored as cases are."""
    from hotline.dedup import load_plain_places

    return load_plain_places(settings)


def _jsonl(path: Path) -> list[dict[str, Any]]:
    try:
        return [{**row, "_where": where} for where, row in read_jsonl(path)]
    except JsonlError as exc:
        raise SystemExit(f"hotline: {exc}") from exc


def _text_fields(row: dict[str, Any], keys: Sequence[str], where: str) -> None:
    """A title or text that is not a string would be scored as its str() ("123", "['x']"): refused."""
    for key in keys:
        value = row.get(key)
        if value is not None and not isinstance(value, str):
            raise SystemExit(f"hotline: {where}: {key} must be a string, not {type(value).__name__}")


def read_pairs(paths: Sequence[Path], letters: Sequence[Path] = ()) -> list[dict[str, Any]]:
    """Labelled pairs. A pair may name its letters by ``a_id``/``b_id`` instead of carrying their texts: they
    are then taken (title, text, time) from the ``letters`` files, so a label set can be shared without the
    letters themselves. No pairs at all, or a title or text that is not a string, is an error."""
    by_id: dict[str, dict[str, Any]] = {}
    for path in letters:
        for row in _jsonl(path):
            if row.get("id") is not None:
                by_id[str(row["id"])] = row
    pairs = []
    for path in paths:
        for row in _jsonl(path):
            where = row.pop("_where")
            if row.get("label") not in LABELS:
                raise SystemExit(f"hotline: {where}: needs a label in {LABELS}")
            _text_fields(row, ("a_title", "a_text", "b_title", "b_text"), where)
            for side_ in ("a", "b"):
                if row.get(f"{side_}_text") or row.get(f"{side_}_title"):
                    continue
                ref = row.get(f"{side_}_id")
                if ref is None:
                    raise SystemExit(f"hotline: {where}: needs {side_}_title/{side_}_text or {side_}_id")
                letter = by_id.get(str(ref))
                if letter is None:
                    raise SystemExit(f"hotline: {where}: letter {ref} is in none of the --letters files")
                _text_fields(letter, ("title", "text"), letter["_where"])
                for field in ("title", "text", "time"):
                    row[f"{side_}_{field}"] = letter.get(field) or ""
            row["_where"] = where
            pairs.append(row)
    if not pairs:
        raise SystemExit(f"hotline: no labelled pairs in {', '.join(map(str, paths))}")
    return pairs


_TIME = re.compile(r"(\d{4})[-/.](\d{1,2})[-/.](\d{1,2})(?:[ T](\d{1,2}):(\d{1,2})(?::(\d{1,2}))?)?")


def parse_time(value: Any) -> datetime | None:
    """The times of open data: ``2018-02-09 19:43:53``, ``2019/2/28 11:25:05``, a date alone; else None."""
    m = _TIME.match(str(value or "").strip())
    if not m:
        return None
    try:
        return datetime(*(int(g) for g in m.groups(default="0")))
    except ValueError:
        return None


def gap_days(row: dict[str, Any]) -> float | None:
    a, b = parse_time(row.get("a_time")), parse_time(row.get("b_time"))
    return abs((a - b).total_seconds()) / 86400 if a and b else None


def unparsed_times(pairs: list[dict[str, Any]]) -> Skipped:
    """Pairs with a time given that is no time: scored as if it were missing (no age), so counted and
    reported rather than passed over in silence."""
    bad = Skipped()
    for row in pairs:
        for key in ("a_time", "b_time"):
            value = row.get(key)
            if str(value if value is not None else "").strip() and parse_time(value) is None:
                bad(row.get("_where", "?"), f"{key} is no time")
    return bad


def _warn_times(bad: Skipped) -> None:
    if bad:
        print(f"hotline: warning: times that are no time, scored as missing: {bad.describe()}", file=sys.stderr)


def side(row: dict[str, Any], prefix: str, idf: Idf, plain: frozenset[str] = frozenset()) -> Fingerprint:
    """One letter of a pair. Without a title its first clause is the headline, as for a live complaint."""
    title = str(row.get(f"{prefix}_title") or "").strip()
    text = str(row.get(f"{prefix}_text") or "")
    if not title:
        title, text = split_headline(text)
    return fingerprint(title, text, idf, plain=plain)


def _prf(tp: int, fp: int, fn: int) -> tuple[float, float, float]:
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return precision, recall, f1


def evaluate(pairs: list[dict[str, Any]], idf: Idf, thresholds: Thresholds,
             plain: frozenset[str] = frozenset()) -> dict[str, Any]:
    """Positive = the live matcher would merge or suggest (score ≥ suggest threshold); ``dup`` is positive."""
    tp = fp = fn = 0
    errors = []
    for row in pairs:
        a, b = side(row, "a", idf, plain), side(row, "b", idf, plain)
        s = pair_score(a, b, idf, days=gap_days(row))
        predicted = decide(s.score, thresholds) != "new"
        actual = row["label"] == "dup"
        tp += predicted and actual
        fp += predicted and not actual
        fn += actual and not predicted
        if predicted != actual:
            errors.append({"pair_id": row.get("pair_id", ""), "label": row["label"], "score": round(s.score, 3),
                           "features": {k: round(v, 3) for k, v in s.features.items()}})
    precision, recall, f1 = _prf(tp, fp, fn)
    return {"n": len(pairs), "precision": round(precision, 4), "recall": round(recall, 4), "f1": round(f1, 4),
            "tp": tp, "fp": fp, "fn": fn, "errors": errors}


def feature_matrix(pairs: list[dict[str, Any]], idf: Idf, plain: frozenset[str] = frozenset()) -> tuple[Any, Any]:
    import numpy as np

    rows = []
    for row in pairs:
        f = features(side(row, "a", idf, plain), side(row, "b", idf, plain), idf)
        f["age"] = age(gap_days(row))
        rows.append([f[k] for k in FEATURES])
    return np.array(rows, dtype=float), np.array([row["label"] == "dup" for row in pairs], dtype=int)


def fit(x: Any, y: Any, c: float = 1.0) -> tuple[dict[str, float], float]:
    """Logistic regression with a mild L2 penalty over the text and place features (a handful of weights
    from a few hundred pairs must not chase noise); then the weight of ``age`` alone, with the others held.
    Fitted jointly, ``age`` would also lift the bias, so that two different problems at one estate reported
    the same day would look alike."""
    import numpy as np
    from scipy.optimize import minimize_scalar
    from sklearn.linear_model import LogisticRegression

    if len(set(y.tolist())) < 2:
        raise SystemExit("hotline: fitting needs both dup and non-dup pairs")
    text = x[:, :-1]  # FEATURES ends with age
    model = LogisticRegression(C=c, max_iter=2000).fit(text, y)
    z, gap = model.decision_function(text), x[:, -1]

    def nll(w: float) -> float:
        s = z + w * gap
        return float(np.sum(np.logaddexp(0.0, s) - y * s))

    w_age = float(minimize_scalar(nll, bounds=(-5.0, 0.0), method="bounded").x) if gap.any() else 0.0
    weights = [*(float(w) for w in model.coef_[0]), w_age]
    return dict(zip(FEATURES, weights, strict=True)), float(model.intercept_[0])


def cross_validate(x: Any, y: Any, threshold: float, seeds: int, c: float = 1.0) -> dict[str, float]:
    """Repeated stratified 5-fold CV: every pair is scored by weights fitted without it, once per seed."""
    import numpy as np
    from sklearn.model_selection import StratifiedKFold

    folds = min(5, int(min(np.bincount(y, minlength=2))))
    if folds < 2:
        raise SystemExit("hotline: cross-validation needs at least two pairs of each class")
    runs = []
    for seed in range(seeds):
        predicted = np.zeros(len(y), dtype=bool)
        for train, test in StratifiedKFold(folds, shuffle=True, random_state=seed).split(x, y):
            weights, bias = fit(x[train], y[train], c)
            logit = bias + x[test] @ np.array([weights[k] for k in FEATURES])
            predicted[test] = 1.0 / (1.0 + np.exp(-logit)) >= threshold
        actual = y == 1
        runs.append(_prf(int((predicted & actual).sum()), int((predicted & ~actual).sum()),
                         int((~predicted & actual).sum())))
    arr = np.array(runs)
    return {"cv_precision": round(float(arr[:, 0].mean()), 4), "cv_recall": round(float(arr[:, 1].mean()), 4),
            "cv_f1": round(float(arr[:, 2].mean()), 4), "cv_f1_sd": round(float(arr[:, 2].std()), 4),
            "cv_seeds": seeds}


def _missing(args: argparse.Namespace) -> int:
    for path in [*args.data, *getattr(args, "letters", [])]:
        if not path.is_file():
            print(f"hotline: no such file: {path}", file=sys.stderr)
            return 2
    return 0


def run_eval(args: argparse.Namespace) -> int:
    if _missing(args):
        return 2
    settings = load_settings(extra_file=args.config)
    cfg = settings["dedup"]
    if args.cv < 0:
        print("hotline: --cv needs a positive number of seeds", file=sys.stderr)
        return 2
    pairs = read_pairs(args.data, args.letters)
    bad_times = unparsed_times(pairs)
    _warn_times(bad_times)
    idf, plain = load_idf(settings), load_plain(settings)
    result = evaluate(pairs, idf, Thresholds(cfg["auto_merge"], cfg["suggest"]), plain)
    result["unparsed_times"] = bad_times.total
    errors = result.pop("errors")
    if args.cv:
        x, y = feature_matrix(pairs, idf, plain)
        result.update(cross_validate(x, y, cfg["suggest"], args.cv))
    if args.json:
        print(json.dumps(result, ensure_ascii=False))
    else:
        print(f"pairs {result['n']}: precision {result['precision']:.3f} recall {result['recall']:.3f} "
              f"F1 {result['f1']:.3f}")
        if args.cv:
            print(f"cross-validated ({args.cv} × 5-fold): precision {result['cv_precision']:.3f} "
                  f"recall {result['cv_recall']:.3f} F1 {result['cv_f1']:.3f} ± {result['cv_f1_sd']:.3f}")
        if args.errors:
            for e in errors:
                feats = " ".join(f"{k}={v}" for k, v in e["features"].items())
                print(f"  {e['pair_id']}\t{e['label']}\t{e['score']}\t{feats}")
    return 0


def run_fit(args: argparse.Namespace) -> int:
    if _missing(args):
        return 2
    if args.c <= 0:
        print("hotline: --c must be positive", file=sys.stderr)
        return 2
    settings = load_settings(extra_file=args.config)
    pairs = read_pairs(args.data, args.letters)
    _warn_times(unparsed_times(pairs))
    x, y = feature_matrix(pairs, load_idf(settings), load_plain(settings))
    weights, bias = fit(x, y, args.c)
    print(json.dumps({"n": len(y), "weights": {k: round(v, 2) for k, v in weights.items()}, "bias": round(bias, 2),
                      "shipped": {"weights": WEIGHTS, "bias": BIAS}}, ensure_ascii=False))
    return 0


def _letters(paths: list[Path]) -> list[tuple[str, str]]:
    """(title, text) of every letter; a line that is not a JSON object, or a title or text that is not a
    string, stops the build, naming it."""
    out = []
    for path in paths:
        for row in _jsonl(path):
            _text_fields(row, ("title", "text"), row["_where"])
            out.append((row.get("title") or "", row.get("text") or ""))
    return out


def run_build_idf(args: argparse.Namespace) -> int:
    if _missing(args):
        return 2
    if args.min_df < 1:
        print("hotline: --min-df must be at least 1", file=sys.stderr)
        return 2
    if args.out.is_dir():
        print(f"hotline: --out {args.out}: is a directory; give the table file to write", file=sys.stderr)
        return 2
    n, df = Idf.build((f"{title} {text}" for title, text in _letters(args.data)), min_df=args.min_df)
    if not n:
        # A table of no letters would weigh every bigram the same and replace a good one.
        print(f"hotline: no letters in {', '.join(map(str, args.data))}; {args.out} left as it was", file=sys.stderr)
        return 1
    if not df:
        print(f"hotline: no bigram is in {args.min_df} or more of the {n} letters; {args.out} left as it was "
              "(lower --min-df)", file=sys.stderr)
        return 1
    try:
        Idf.dump(args.out, n, df)
    except OSError as exc:
        print(f"hotline: cannot write {args.out}: {exc.strerror or exc}; the table there is unchanged",
              file=sys.stderr)
        return 1
    print(json.dumps({"docs": n, "bigrams": len(df), "out": str(args.out)}))
    return 0


def run_build_place_words(args: argparse.Namespace) -> int:
    if _missing(args):
        return 2
    if not 0 < args.max_share <= 1 or args.min_docs < 1:
        print("hotline: --max-share must lie in (0, 1] and --min-docs be at least 1", file=sys.stderr)
        return 2
    if args.out.is_dir():
        print(f"hotline: --out {args.out}: is a directory; give the table file to write", file=sys.stderr)
        return 2
    # The window the live matcher reads places from, so a core counts here as it would there.
    texts = [place_text(title.strip(), text) for title, text in _letters(args.data)]
    if not texts:
        print(f"hotline: no letters in {', '.join(map(str, args.data))}; {args.out} left as it was", file=sys.stderr)
        return 1
    table = plain_words(texts, max_share=args.max_share, min_docs=args.min_docs)
    write_plain_words(args.out, len(texts), table)
    print(json.dumps({"docs": len(texts), "words": len(table), "out": str(args.out)}))
    return 0
