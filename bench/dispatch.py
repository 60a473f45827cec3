"""Dispatch throughput: work orders through the Redis-stream outbox to a loopback Open311 receiver.

Starts an embedded Valkey (temporary data dir, ``appendfsync always`` like production), an aiohttp
Open311 GeoReport v2 receiver on 127.0.0.1 and N forwarders (each its own consumer in the group, as
separate processes would be). Enqueues ``--orders`` realistic work orders, then measures until every
order is acknowledged. ``--fail-rate`` makes the receiver answer 503 to that share of POSTs, so retries
with backoff are part of the measurement. Checks exactly-once at the end: ``lost`` orders never
accepted, ``duplicates`` accepted more than once.
Prints one JSON object as the last line.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import random
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import aiohttp
from aiohttp import web

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from hotline.dispatch.backends import Open311Backend  # noqa: E402
from hotline.dispatch.forwarder import Forwarder, ForwarderConfig  # noqa: E402
from hotline.dispatch.tables import load_tables  # noqa: E402
from hotline.redis_server import EmbeddedRedis  # noqa: E402
from hotline.store import Store  # noqa: E402
from hotline.store.outbox import Outbox  # noqa: E402


def make_order(i: int) -> dict:
    case_id = f"20260314-{i:06d}"
    return {"version": 1, "order_id": f"{case_id}-R1", "case_id": case_id, "round": 1, "redo": False,
            "category": "城乡建设", "category_path": ["城乡建设", "城市建设和市政管理", "园林绿化"],
            "lead_department": "园林局", "co_departments": ["城市管理局"], "street": "A3区人民政府",
            "dual_dispatch": True, "request_type": "投诉", "urgency": "normal", "time_limit": "default",
            "deadline": "2026-03-29T10:00:00+08:00",
            "description": f"光明小区{i}号楼前的树枝遮挡路灯，晚上很黑，请修剪。",
            "address": f"A3区光明小区{i}号楼", "location": {"lat": 28.19, "lon": 112.97, "label": "光明小区"},
            "reporters": 1, "attachments": [], "channel": "api", "citizen": {"name": "", "contact": ""}}


async def run(args: argparse.Namespace) -> dict:
    received: Counter = Counter()
    rng = random.Random(11)
    posts = 0

    async def post(request: web.Request) -> web.Response:
        nonlocal posts
        posts += 1
        form = await request.post()
        if rng.random() < args.fail_rate:
            return web.json_response([{"code": 503, "description": "busy"}], status=503)
        key = str(form.get("attribute[hotline_order_id]", ""))
        received[key] += 1
        return web.json_response([{"service_request_id": f"SR-{key}"}], status=201)

    app = web.Application()
    app.router.add_post("/open311/v2/requests.json", post)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    url = f"http://127.0.0.1:{runner.addresses[0][1]}/open311/v2"

    with tempfile.TemporaryDirectory(prefix="hl-bench-dispatch-") as tmp:
        server = EmbeddedRedis(Path(tmp), appendfsync=args.appendfsync)
        redis_url = await asyncio.to_thread(server.start)
        store = Store.from_url(redis_url, prefix="bench")
        outbox = Outbox(store)
        tables = load_tables(ROOT / "config" / "dispatch.toml")
        try:
            await outbox.ensure_group()
            t0 = time.perf_counter()
            for start in range(0, args.orders, 200):
                await asyncio.gather(*(outbox.enqueue(f"20260314-{i:06d}-R1", f"20260314-{i:06d}", make_order(i))
                                       for i in range(start, min(args.orders, start + 200))))
            enqueue_s = time.perf_counter() - t0
            cfg = ForwarderConfig(max_attempts=50, backoff_base_s=0.01, backoff_max_s=0.1, claim_idle_s=30,
                                  concurrency=args.concurrency, block_ms=20)
            async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=200)) as session:
                backend = Open311Backend(session, url, "bench", tables, 10.0)
                forwarders = [Forwarder(outbox, backend, cfg, consumer=f"bench-{n}") for n in range(args.forwarders)]
                t1 = time.perf_counter()
                tasks = [asyncio.create_task(f.run()) for f in forwarders]
                deadline = time.monotonic() + args.timeout
                while time.monotonic() < deadline:
                    if sum(f.delivered for f in forwarders) >= args.orders:
                        break
                    await asyncio.sleep(0.01)
                deliver_s = time.perf_counter() - t1
                await asyncio.sleep(0.3)  # a wrongly repeated delivery would show up here
                for t in tasks:
                    t.cancel()
                for t in tasks:
                    with contextlib.suppress(asyncio.CancelledError):
                        await t
            stats = await outbox.stats()
            delivered = sum(f.delivered for f in forwarders)
        finally:
            await store.close()
            await asyncio.to_thread(server.stop)
            await runner.cleanup()
    keys = {f"20260314-{i:06d}-R1" for i in range(args.orders)}
    return {
        "bench": "dispatch", "orders": args.orders, "forwarders": args.forwarders, "concurrency": args.concurrency,
        "fail_rate": args.fail_rate, "appendfsync": args.appendfsync,
        "enqueue_per_s": round(args.orders / enqueue_s, 1),
        "orders_per_s": round(delivered / deliver_s, 1) if deliver_s > 0 else 0.0,
        "deliver_s": round(deliver_s, 3), "posts": posts, "delivered": delivered,
        "lost": len(keys - set(received)), "duplicates": sum(c - 1 for c in received.values() if c > 1),
        "left_pending": stats["pending"], "left_in_outbox": stats["outbox"], "dead": stats["dead"],
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--orders", type=int, default=2000)
    parser.add_argument("--forwarders", type=int, default=2, help="forwarders (consumers) sharing the outbox")
    parser.add_argument("--concurrency", type=int, default=16, help="deliveries in flight per forwarder")
    parser.add_argument("--fail-rate", type=float, default=0.0, help="share of POSTs answered 503")
    parser.add_argument("--appendfsync", default="always", choices=("always", "everysec", "no"))
    parser.add_argument("--timeout", type=float, default=300.0)
    parser.add_argument("--json", action="store_true", help="print only the JSON result")
    args = parser.parse_args()
    result = asyncio.run(run(args))
    if not args.json:
        print(f"{result['delivered']} orders in {result['deliver_s']} s: {result['orders_per_s']} orders/s "
              f"({result['posts']} POSTs, lost {result['lost']}, duplicates {result['duplicates']})")
    print(json.dumps(result))
    return 0 if result["lost"] == 0 and result["duplicates"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
