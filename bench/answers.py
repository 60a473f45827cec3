"""Answer retrieval latency with a large knowledge base (default 50,000 entries).

Entries are made from the real letters in ../shared/data (title of one letter + text of another, with a
real reply, department and a date spread over six years), so n-gram statistics are those of real citizen
text. Queries are real letters. Measures the index build and ``AnswerIndex.search`` per query (what a
consultation waits for; the service adds one Redis HMGET to check the entries are still active).

    .venv/bin/python bench/answers.py --entries 50000 --queries 1000 --json
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from hotline.nlp.answers import AnswerIndex, KBEntry, RetrievalConfig  # noqa: E402

DATA = ROOT.parent / "shared" / "data"
FILES = ("taidi_replies.jsonl", "dalian_letters_train.jsonl", "jiamusi_letters_train.jsonl")


def load_letters(data_dir: Path) -> list[dict]:
    rows = []
    for name in FILES:
        path = data_dir / name
        if not path.is_file():
            continue
        with path.open(encoding="utf-8") as fh:
            for line in fh:
                r = json.loads(line)
                if (r.get("reply") or "").strip():
                    rows.append(r)
    return rows


def make_entries(rows: list[dict], n: int, rng: random.Random) -> list[KBEntry]:
    out = []
    for i in range(n):
        a = rows[i % len(rows)]
        b = a if i < len(rows) else rng.choice(rows)
        question = f"{a.get('title') or ''}\n{(b.get('text') or '')[:600]}"
        day = f"{rng.randint(2014, 2020)}-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}"
        out.append(KBEntry(id=f"e{i}", question=question, answer=a["reply"],
                           department=str(a.get("department") or ""), date=day))
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--entries", type=int, default=50_000)
    ap.add_argument("--queries", type=int, default=1000)
    ap.add_argument("--data", type=Path, default=DATA)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    rows = load_letters(args.data)
    if not rows:
        print(f"no letters found in {args.data}", file=sys.stderr)
        return 2
    rng = random.Random(args.seed)
    entries = make_entries(rows, args.entries, rng)
    t0 = time.perf_counter()
    index = AnswerIndex.build(entries)
    build_s = time.perf_counter() - t0
    cfg = RetrievalConfig()
    now = time.mktime((2021, 1, 1, 0, 0, 0, 0, 0, -1))
    queries = [f"{r.get('title') or ''}\n{r.get('text') or ''}" for r in rng.sample(rows, min(args.queries, len(rows)))]
    index.search(queries[0], cfg=cfg, now=now)  # first call pays one-off allocations
    lat = []
    found = 0
    for q in queries:
        t = time.perf_counter()
        matches = index.search(q, cfg=cfg, now=now, k=3)
        lat.append((time.perf_counter() - t) * 1000.0)
        found += bool(matches)
    result = {
        "entries": len(index), "queries": len(queries), "build_s": round(build_s, 2),
        "p50_ms": round(float(np.percentile(lat, 50)), 3), "p99_ms": round(float(np.percentile(lat, 99)), 3),
        "max_ms": round(max(lat), 3), "with_results": found,
    }
    if not args.json:
        for k, v in result.items():
            print(f"{k}: {v}")
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
