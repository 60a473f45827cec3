"""Duplicate lookup latency against 100,000 open cases in the real embedded store.

Generates open cases from the shared citizen messages (every message several times, each copy with a
sentence dropped and its own caller and time within the last 25 days), stores them as case records
and in the candidate index of a fresh embedded Valkey, then times ``DedupService.check`` — fingerprint,
index lookup, scoring, open-status check — for reworded complaints. Prints one JSON object last:
p50_ms, p99_ms, max_ms, decisions, redis_used_memory_mb, index_memory_mb, bench_rss_mb.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import re
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from hotline.dedup import DedupConfig, DedupService, load_idf  # noqa: E402
from hotline.records import Case  # noqa: E402
from hotline.redis_server import EmbeddedRedis  # noqa: E402
from hotline.settings import load_settings  # noqa: E402
from hotline.status import Status  # noqa: E402
from hotline.store import Store  # noqa: E402

SHARED = Path(os.environ.get("HOTLINE_SHARED_DATA", ROOT.parent / "shared" / "data"))
FILES = ("taidi_hot_messages.jsonl", "taidi_labeled_train.jsonl", "taidi_replies.jsonl",
         "dalian_letters_train.jsonl", "jiamusi_letters_train.jsonl")
_SENT = re.compile(r"(?<=[。！？!?；;])")


def load_texts() -> list[str]:
    texts = []
    for name in FILES:
        path = SHARED / name
        if not path.exists():
            continue
        with path.open(encoding="utf-8") as fh:
            for line in fh:
                row = json.loads(line)
                text = f"{row.get('title') or ''}。{row.get('text') or ''}".strip("。")
                if len(text) >= 10:
                    texts.append(text[:2000])
    if not texts:
        raise SystemExit(f"no shared data under {SHARED} (set HOTLINE_SHARED_DATA)")
    return texts


def reword(text: str, rnd: random.Random) -> str:
    """Drop one sentence (not the first) and trim the tail: a citizen telling the same story again."""
    parts = [p for p in _SENT.split(text) if p]
    if len(parts) > 2:
        del parts[rnd.randrange(1, len(parts))]
    out = "".join(parts)
    return out[: max(20, int(len(out) * rnd.uniform(0.7, 1.0)))]


async def run(args: argparse.Namespace) -> dict:
    rnd = random.Random(args.seed)
    texts = load_texts()
    settings = load_settings(env={})
    config = DedupConfig.from_settings(settings)
    idf = load_idf(settings)
    with tempfile.TemporaryDirectory(prefix="bench-dedup-") as tmp:
        server = EmbeddedRedis(Path(tmp), appendfsync="everysec")
        url = await asyncio.to_thread(server.start)
        store = Store.from_url(url, prefix="bench")
        try:
            service = DedupService(store, config, idf)
            base_mem = int((await store.r.info("memory"))["used_memory"])
            now = time.time()
            t0 = time.perf_counter()
            batch: list[Case] = []
            for i in range(args.cases):
                src = texts[i % len(texts)]
                text = src if i < len(texts) else reword(src, rnd)
                created = now - rnd.uniform(0, 25 * 86400)
                batch.append(Case(id=f"b{i:07d}", channel="api", sender=f"api:u{rnd.randrange(10**9)}",
                                  status=Status.CLASSIFIED, created_at=created, updated_at=created, text=text,
                                  normalized_text=text, contact=f"139{rnd.randrange(10**8):08d}"))
                if len(batch) == 500 or i == args.cases - 1:
                    await asyncio.gather(*(store.create_case(c) for c in batch))
                    await service.index.add_many([service.entry(c) for c in batch])
                    batch = []
            load_s = time.perf_counter() - t0
            info = await store.r.info("memory")
            full_mem = int(info["used_memory"])
            # The index alone: the case records are what the store holds anyway.
            case_bytes = 0
            for i in range(0, 200):
                case_bytes += int(await store.r.memory_usage(store.k_case(f"b{i * (args.cases // 200):07d}")) or 0)
                case_bytes += int(await store.r.memory_usage(store.k_events(f"b{i * (args.cases // 200):07d}")) or 0)
            records_mem = case_bytes / 200 * args.cases

            latencies = []
            decisions: dict[str, int] = {}
            for q in range(args.queries):
                src = texts[rnd.randrange(len(texts))]
                text = reword(src, rnd)
                case = Case(id=f"q{q:06d}", channel="web", sender="web:bench", status=Status.CLASSIFIED,
                            created_at=time.time(), updated_at=time.time(), text=text, normalized_text=text)
                t = time.perf_counter()
                decision = await service.check(case)
                latencies.append((time.perf_counter() - t) * 1000)
                decisions[decision.action] = decisions.get(decision.action, 0) + 1
            latencies.sort()
            return {
                "open_cases": await service.index.size(),
                "queries": args.queries,
                "p50_ms": round(statistics.median(latencies), 2),
                "p99_ms": round(latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))], 2),
                "max_ms": round(latencies[-1], 2),
                "decisions": decisions,
                "load_s": round(load_s, 1),
                "redis_used_memory_mb": round(full_mem / 2**20, 1),
                "index_memory_mb": round((full_mem - base_mem - records_mem) / 2**20, 1),
                "case_records_memory_mb": round(records_mem / 2**20, 1),
                "bench_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
            }
        finally:
            await store.close()
            await asyncio.to_thread(server.stop)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=100_000)
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=11)
    parser.add_argument("--json", action="store_true", help="print only the JSON result")
    args = parser.parse_args()
    result = asyncio.run(run(args))
    if not args.json:
        for key, value in result.items():
            print(f"{key}: {value}")
    print(json.dumps(result, ensure_ascii=False))


if __name__ == "__main__":
    main()
