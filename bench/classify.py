"""Latency of the full suggestion (all heads + urgency + policy) per message, one at a time, one core.

    .venv/bin/python bench/classify.py [--models models] [--data FILE.jsonl] [--n 2000] [--json]

Messages are the ``title``+``text`` (or ``tokens``) of the data file, in file order; the default file is
the Taidi letters beside the project (../shared/data), else made-up sentences. Prints one JSON object
as the last line: load time, p50/p90/p99/max per message, messages per second.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from hotline.nlp.suggest import Suggester  # noqa: E402
from hotline.settings import load_settings  # noqa: E402

DEFAULT_DATA = ROOT.parent / "shared" / "data" / "taidi_labeled_train.jsonl"
SAMPLES = ["小区物业乱收费，楼道垃圾没人清理", "楼下烧烤店油烟扰民，每晚到凌晨", "公司拖欠工资三个月，老板失联",
           "孩子入学报名需要什么材料", "公交车司机态度恶劣，不按站停车", "家里停水两天了，也没有通知"]


def messages(path: Path | None, n: int) -> list[str]:
    out: list[str] = []
    if path is not None and path.is_file():
        with path.open(encoding="utf-8") as fh:
            for line in fh:
                if line.strip():
                    row = json.loads(line)
                    text = row.get("tokens") or f"{row.get('title') or ''}。{row.get('text') or ''}"
                    out.append(text)
                if len(out) >= n:
                    break
    while len(out) < n:
        out.append(SAMPLES[len(out) % len(SAMPLES)])
    return out


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", type=Path, default=ROOT / "models")
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--n", type=int, default=2000)
    parser.add_argument("--cpu", type=int, default=0, help="pin to this CPU (one core); -1: do not pin")
    parser.add_argument("--json", action="store_true", help="print only the JSON result line")
    args = parser.parse_args()
    if args.cpu >= 0 and hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {args.cpu})
    settings = load_settings()
    t0 = time.perf_counter()
    suggester = Suggester.load(args.models, settings)
    load_s = time.perf_counter() - t0
    texts = messages(args.data, args.n)
    for text in texts[:50]:  # warm caches (jieba's, numpy's) as a running service has them
        suggester.suggest(text)
    gc.collect()
    lat: list[float] = []
    started = time.perf_counter()
    for text in texts:
        t = time.perf_counter()
        suggester.suggest(text)
        lat.append((time.perf_counter() - t) * 1000)
    wall = time.perf_counter() - started
    result = {
        "n": len(texts), "heads": sorted(suggester.heads), "load_s": round(load_s, 2),
        "mean_ms": round(statistics.fmean(lat), 3), "p50_ms": round(pct(lat, 50), 3),
        "p90_ms": round(pct(lat, 90), 3), "p99_ms": round(pct(lat, 99), 3), "max_ms": round(max(lat), 3),
        "messages_per_s": round(len(texts) / wall, 1), "data": args.data.name if args.data.is_file() else "samples",
    }
    if not args.json:
        print(f"{result['n']} messages: p50 {result['p50_ms']} ms, p99 {result['p99_ms']} ms, "
              f"{result['messages_per_s']} msg/s (load {result['load_s']} s)")
    print(json.dumps(result, ensure_ascii=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
