"""``hotline nlp eval-dedup``, ``fit-dedup`` and ``build-dedup-idf``: measure and refit the duplicate matcher."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from hotline.nlp.dedup import (
    BIAS,
    FEATURES,
    WEIGHTS,
    Fingerprint,
    Idf,
    Thresholds,
    decide,
    features,
    fingerprint,
    pair_score,
    split_headline,
)
from hotline.settings import PROJECT_ROOT, load_settings

LABELS = ("dup", "related", "distinct")


def register(sub: argparse._SubParsersAction) -> None:
    ev = sub.add_parser("eval-dedup", help="precision/recall/F1 of the duplicate matcher on labelled pairs")
    ev.add_argument("--data", type=Path, required=True, help="JSONL of pairs: a_title, a_text, b_title, b_text, label")
    ev.add_argument("--json", action="store_true", help="print one JSON object")
    ev.add_argument("--errors", action="store_true", help="list the misjudged pairs (not with --json)")
    ev.add_argument("--config", type=Path, help="a site TOML file overriding config/hotline.toml")
    ev.add_argument("--cv", type=int, default=0, metavar="SEEDS",
                    help="also refit the model in 5-fold cross-validation repeated with SEEDS shuffles and report "
                         "that estimate for unseen pairs (cv_precision, cv_recall, cv_f1, cv_f1_sd)")
    ev.set_defaults(handler=run_eval)

    fi = sub.add_parser("fit-dedup", help="fit the matcher's logistic weights on labelled pairs (prints them)")
    fi.add_argument("--data", type=Path, required=True, help="JSONL of labelled pairs, as for eval-dedup")
    fi.add_argument("--c", type=float, default=1.0, help="inverse L2 regularisation strength")
    fi.add_argument("--config", type=Path, help="a site TOML file overriding config/hotline.toml")
    fi.set_defaults(handler=run_fit)

    bi = sub.add_parser("build-dedup-idf", help="rebuild the bigram document-frequency table of the matcher")
    bi.add_argument("--data", type=Path, nargs="+", required=True, help="JSONL files with title/text fields")
    bi.add_argument("--out", type=Path, required=True)
    bi.add_argument("--min-df", type=int, default=10)
    bi.set_defaults(handler=run_build_idf)


def load_idf(settings: Any) -> Idf:
    path = Path(settings["dedup"]["idf_file"])
    path = path if path.is_absolute() else PROJECT_ROOT / path
    return Idf.load(path) if path.is_file() else Idf.uniform()


def read_pairs(path: Path) -> list[dict[str, Any]]:
    pairs = []
    with path.open(encoding="utf-8") as fh:
        for n, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except ValueError as exc:
                raise SystemExit(f"{path}:{n}: not JSON: {exc}") from exc
            if not isinstance(row, dict) or row.get("label") not in LABELS:
                raise SystemExit(f"{path}:{n}: needs a label in {LABELS}")
            pairs.append(row)
    return pairs


def side(row: dict[str, Any], prefix: str, idf: Idf) -> Fingerprint:
    """One letter of a pair. Without a title its first clause is the headline, as for a live complaint."""
    title = str(row.get(f"{prefix}_title") or "").strip()
    text = str(row.get(f"{prefix}_text") or "")
    if not title:
        title, text = split_headline(text)
    return fingerprint(title, text, idf)


def _prf(tp: int, fp: int, fn: int) -> tuple[float, float, float]:
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return precision, recall, f1


def evaluate(pairs: list[dict[str, Any]], idf: Idf, thresholds: Thresholds) -> dict[str, Any]:
    """Positive = the live matcher would merge or suggest (score ≥ suggest threshold); ``dup`` is positive."""
    tp = fp = fn = 0
    errors = []
    for row in pairs:
        a, b = side(row, "a", idf), side(row, "b", idf)
        s = pair_score(a, b, idf)
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


def feature_matrix(pairs: list[dict[str, Any]], idf: Idf) -> tuple[Any, Any]:
    import numpy as np

    rows = []
    for row in pairs:
        f = features(side(row, "a", idf), side(row, "b", idf), idf)
        rows.append([f[k] for k in FEATURES])
    return np.array(rows, dtype=float), np.array([row["label"] == "dup" for row in pairs], dtype=int)


def fit(x: Any, y: Any, c: float = 1.0) -> tuple[dict[str, float], float]:
    """Logistic regression with a mild L2 penalty: five weights from a few hundred pairs must not chase noise."""
    from sklearn.linear_model import LogisticRegression

    if len(set(y.tolist())) < 2:
        raise SystemExit("hotline: fitting needs both dup and non-dup pairs")
    model = LogisticRegression(C=c, max_iter=2000).fit(x, y)
    return dict(zip(FEATURES, (float(w) for w in model.coef_[0]), strict=True)), float(model.intercept_[0])


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


def run_eval(args: argparse.Namespace) -> int:
    if not args.data.is_file():
        print(f"hotline: no such file: {args.data}", file=sys.stderr)
        return 2
    settings = load_settings(extra_file=args.config)
    cfg = settings["dedup"]
    if args.cv < 0:
        print("hotline: --cv needs a positive number of seeds", file=sys.stderr)
        return 2
    pairs = read_pairs(args.data)
    idf = load_idf(settings)
    result = evaluate(pairs, idf, Thresholds(cfg["auto_merge"], cfg["suggest"]))
    errors = result.pop("errors")
    if args.cv:
        x, y = feature_matrix(pairs, idf)
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
    if not args.data.is_file():
        print(f"hotline: no such file: {args.data}", file=sys.stderr)
        return 2
    if args.c <= 0:
        print("hotline: --c must be positive", file=sys.stderr)
        return 2
    settings = load_settings(extra_file=args.config)
    x, y = feature_matrix(read_pairs(args.data), load_idf(settings))
    weights, bias = fit(x, y, args.c)
    print(json.dumps({"n": len(y), "weights": {k: round(v, 2) for k, v in weights.items()}, "bias": round(bias, 2),
                      "shipped": {"weights": WEIGHTS, "bias": BIAS}}, ensure_ascii=False))
    return 0


def run_build_idf(args: argparse.Namespace) -> int:
    def texts():
        for path in args.data:
            with path.open(encoding="utf-8") as fh:
                for line in fh:
                    if line.strip():
                        row = json.loads(line)
                        yield f"{row.get('title') or ''} {row.get('text') or ''}"

    n, df = Idf.build(texts(), min_df=args.min_df)
    Idf.dump(args.out, n, df)
    print(json.dumps({"docs": n, "bigrams": len(df), "out": str(args.out)}))
    return 0
