"""bench/intake.py's CPU accounting: the per-case split and the rate the cores could carry at that cost."""

from __future__ import annotations

import os
import time
from typing import Any

from aiohttp import web

from tests.process_support import bench_intake


def test_cpu_per_case_splits_serve_store_and_client() -> None:
    bench = bench_intake()
    before = {0: (False, 1.0), 101: (False, 10.0), 102: (False, 20.0), 103: (True, 5.0), 104: (False, 3.0)}
    # 104 exited during the run (a replaced worker): only processes seen at both ends are counted.
    after = {0: (False, 1.5), 101: (False, 13.0), 102: (False, 22.0), 103: (True, 6.0), 105: (False, 9.0)}
    out = bench.cpu_per_case(before, after, 1000)
    assert out["cpu_ms_per_case_serve"] == 5.0
    assert out["cpu_ms_per_case_store"] == 1.0
    assert out["cpu_ms_per_case_client"] == 0.5
    assert out["cpu_bound_cases_per_s"] == round((os.cpu_count() or 1) / 0.0065, 1)
    assert bench.cpu_per_case(before, after, 0) == {}


def test_cpu_snapshot_reads_the_process_tree() -> None:
    bench = bench_intake()
    first = bench.cpu_snapshot(os.getpid())
    deadline = time.process_time() + 0.2
    while time.process_time() < deadline:
        pass
    second = bench.cpu_snapshot(os.getpid())
    assert first[os.getpid()][0] is False
    assert second[os.getpid()][1] - first[os.getpid()][1] >= 0.15
    assert second[0][1] - first[0][1] >= 0.15


async def test_drive_posts_over_keep_alive_and_counts_refusals(aiohttp_server: Any) -> None:
    """The benchmark's own HTTP client against a real aiohttp server: bodies and keys arrive intact,
    201s are acknowledged ids, anything else is an error, and a server closing the connection is
    followed by a new one."""
    bench = bench_intake()
    seen: list[tuple[str, dict[str, Any]]] = []

    async def complaints(request: web.Request) -> web.Response:
        body = await request.json()
        seen.append((request.headers["Idempotency-Key"], body))
        n = len(seen)
        if "拒绝" in body["text"]:
            return web.json_response({"error": {"code": "bad_text"}}, status=422)
        headers = {"Connection": "close"} if n % 3 == 0 else None
        return web.json_response({"case_id": f"20261124-{n:06d}"}, status=201, headers=headers)

    app = web.Application()
    app.router.add_post("/api/v1/complaints", complaints)
    server = await aiohttp_server(app)
    texts = [f"路灯不亮（第{i}号反映）" for i in range(10)] + ["拒绝这条"]
    latencies, acked, errors, elapsed = await bench.drive(str(server.make_url("")), texts, 3, "t")
    assert errors == 1
    assert len(acked) == 10 and len(set(acked)) == 10
    assert len(latencies) == 11 and elapsed > 0
    assert sorted(key for key, _ in seen) == sorted(f"bench-t-{i}" for i in range(11))
    assert {b["text"] for _, b in seen} == set(texts)
    assert all(b["channel"] == "api" and b["contact"].startswith("139") for _, b in seen)
