"""Latency of the full suggestion (all heads + urgency + policy) per message, one at a time, one core.

    .venv/bin/python bench/classify.py [--models models] [--data FILE.jsonl] [--n 2000] [--breakdown] [--json]

Messages are the ``title``+``text`` (or ``tokens``) of the data file, in file order; the default file is
the Taidi letters beside the project (../shared/data), else made-up sentences. Prints one JSON object
as the last line: load time and the memory the models add, p50/p90/p99/max per message (wall clock, and
CPU time of the thread: on a shared machine the CPU figures move less with other jobs), messages per
second. ``--breakdown`` adds p50/p99 per step of a suggestion (the steps of ``Suggester.suggest``
timed one by one on the same messages).
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

from hotline.nlp.model import Doc  # noqa: E402
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


def rss_mb() -> float:
    """Resident memory of this process (Linux), 0 elsewhere."""
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
    except (OSError, ValueError, IndexError):
        return 0.0
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def breakdown(suggester: Suggester, texts: list[str]) -> dict[str, dict[str, float]]:
    """Per-step latency: the steps of ``Suggester.suggest`` one by one (wall clock, ms)."""
    from hotline.nlp.clean import for_model

    steps: dict[str, list[float]] = {k: [] for k in
                                      ("clean", "segment", "features", "heads", "taxonomy", "urgency_policy")}
    clock = time.perf_counter
    tokenizer = suggester.pipeline.tokenizer
    for text in texts:
        t0 = clock()
        body = for_model(text)
        t1 = clock()
        words = tokenizer.words(body)
        t2 = clock()
        doc = Doc(title="", body=body, words=words)
        tops: dict = {}
        t_feat = t_heads = 0.0
        for group in suggester._groups:
            a = clock()
            found = group.found(doc)
            b = clock()
            tops.update(group.tops_found(doc, found))
            t_feat += b - a
            t_heads += clock() - b
        t3 = clock()
        if suggester.taxonomy is not None:
            suggester.taxonomy.path(tops["category"][0]["label"], f" {body}")
        t4 = clock()
        urgency = suggester.urgency.assess(f" {body}")
        suggester.policy.decide({h: tops[h] for h in suggester.confirm_heads if h in tops}, urgency["level"])
        t5 = clock()
        for key, value in zip(steps, (t1 - t0, t2 - t1, t_feat, t_heads, t4 - t3, t5 - t4), strict=True):
            steps[key].append(value * 1000)
    return {k: {"p50_ms": round(pct(v, 50), 3), "p99_ms": round(pct(v, 99), 3)} for k, v in steps.items()}


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", type=Path, default=ROOT / "models")
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--n", type=int, default=2000)
    parser.add_argument("--cpu", type=int, default=0, help="pin to this CPU (one core); -1: do not pin")
    parser.add_argument("--breakdown", action="store_true", help="also time each step of a suggestion")
    parser.add_argument("--json", action="store_true", help="print only the JSON result line")
    args = parser.parse_args()
    if args.cpu >= 0 and hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {args.cpu})
    settings = load_settings()
    import numpy  # noqa: F401  (imported before measuring: its memory is not the models')
    import scipy.sparse  # noqa: F401

    rss0 = rss_mb()
    t0 = time.perf_counter()
    suggester = Suggester.load(args.models, settings)
    load_s = time.perf_counter() - t0
    models_mb = rss_mb() - rss0
    texts = messages(args.data, args.n)
    for text in texts[:50]:  # warm caches (jieba's, numpy's) as a running service has them
        suggester.suggest(text)
    gc.collect()
    lat: list[float] = []
    cpu: list[float] = []
    started = time.perf_counter()
    for text in texts:
        t = time.perf_counter()
        c = time.thread_time()
        suggester.suggest(text)
        cpu.append((time.thread_time() - c) * 1000)
        lat.append((time.perf_counter() - t) * 1000)
    wall = time.perf_counter() - started
    result = {
        "n": len(texts), "heads": sorted(suggester.heads), "load_s": round(load_s, 2),
        "mean_ms": round(statistics.fmean(lat), 3), "p50_ms": round(pct(lat, 50), 3),
        "p90_ms": round(pct(lat, 90), 3), "p99_ms": round(pct(lat, 99), 3), "max_ms": round(max(lat), 3),
        "messages_per_s": round(len(texts) / wall, 1), "data": args.data.name if args.data.is_file() else "samples",
        "cpu_p50_ms": round(pct(cpu, 50), 3), "cpu_p99_ms": round(pct(cpu, 99), 3),
        "models_mb": round(models_mb, 1), "rss_mb": round(rss_mb(), 1),
    }
    if args.breakdown:
        result["steps"] = breakdown(suggester, texts)
    if not args.json:
        print(f"{result['n']} messages: p50 {result['p50_ms']} ms, p99 {result['p99_ms']} ms, "
              f"{result['messages_per_s']} msg/s (load {result['load_s']} s)")
    print(json.dumps(result, ensure_ascii=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
