"""``hotline nlp eval-dedup`` and ``hotline nlp build-dedup-idf``: evaluate the duplicate matcher."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from hotline.nlp.dedup import Idf, Thresholds, decide, fingerprint, pair_score
from hotline.settings import PROJECT_ROOT, load_settings

LABELS = ("dup", "related", "distinct")


def register(sub: argparse._SubParsersAction) -> None:
    ev = sub.add_parser("eval-dedup", help="precision/recall/F1 of the duplicate matcher on labelled pairs")
    ev.add_argument("--data", type=Path, required=True, help="JSONL of pairs: a_title, a_text, b_title, b_text, label")
    ev.add_argument("--json", action="store_true", help="print one JSON object")
    ev.add_argument("--errors", action="store_true", help="list the misjudged pairs (not with --json)")
    ev.add_argument("--config", type=Path, help="a site TOML file overriding config/hotline.toml")
    ev.set_defaults(handler=run_eval)

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


def evaluate(pairs: list[dict[str, Any]], idf: Idf, thresholds: Thresholds) -> dict[str, Any]:
    """Positive = the live matcher would merge or suggest (score ≥ suggest threshold); ``dup`` is positive."""
    tp = fp = fn = 0
    errors = []
    for row in pairs:
        a = fingerprint(str(row.get("a_title") or ""), str(row.get("a_text") or ""), idf)
        b = fingerprint(str(row.get("b_title") or ""), str(row.get("b_text") or ""), idf)
        s = pair_score(a, b, idf)
        predicted = decide(s.score, thresholds) != "new"
        actual = row["label"] == "dup"
        tp += predicted and actual
        fp += predicted and not actual
        fn += actual and not predicted
        if predicted != actual:
            errors.append({"pair_id": row.get("pair_id", ""), "label": row["label"], "score": round(s.score, 3)})
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"n": len(pairs), "precision": round(precision, 4), "recall": round(recall, 4), "f1": round(f1, 4),
            "tp": tp, "fp": fp, "fn": fn, "errors": errors}


def run_eval(args: argparse.Namespace) -> int:
    if not args.data.is_file():
        print(f"hotline: no such file: {args.data}", file=sys.stderr)
        return 2
    settings = load_settings(extra_file=args.config)
    cfg = settings["dedup"]
    result = evaluate(read_pairs(args.data), load_idf(settings), Thresholds(cfg["auto_merge"], cfg["suggest"]))
    errors = result.pop("errors")
    if args.json:
        print(json.dumps(result, ensure_ascii=False))
    else:
        print(f"pairs {result['n']}: precision {result['precision']:.3f} recall {result['recall']:.3f} "
              f"F1 {result['f1']:.3f}")
        if args.errors:
            for e in errors:
                print(f"  {e['pair_id']}\t{e['label']}\t{e['score']}")
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
