"""The data dir's disk fills up while complaints are being submitted.

A real `hotline serve` process runs with its data dir (embedded Valkey, AOF, secret key) on a small
tmpfs mounted for this test, so the AOF writes really fail with ENOSPC. Concurrent clients POST
/api/v1/complaints, each with its own Idempotency-Key, and retry the same request on 503 or a broken
connection. After some acknowledged cases a filler file takes the remaining space; once the outage has
been seen for a while, the filler is deleted again.

Two AOF fsync policies, because the server reacts differently:
- ``always`` (the default): Valkey cannot take back a reply that is already in the client's buffer, so
  it exits; the app's supervisor restarts it once it can run again (hotline/redis_server.py).
- ``everysec``: Valkey keeps running and refuses writes with ``MISCONF`` until its AOF write succeeds.

Checked: during the outage intake answers 503 with a JSON error body and Retry-After, quickly, and
nothing else (no 500); afterwards, straight from Redis, every case acknowledged with 201 is in the
store exactly once (lost = 0, duplicated = 0), every request ended with one case, and every case in the
store is complete (record, all fields, audit events, indexes, idempotency key).

Mounting needs CAP_SYS_ADMIN (root here). Without it the test fails and says so: it does not skip.
"""

from __future__ import annotations

import asyncio
import errno
import hashlib
import json
import os
import shutil
import subprocess
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from hotline.records import Case
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

MOUNT_SIZE = "16m"
REQUESTS = 240
CONCURRENCY = 8
FILL_AFTER_ACKS = 40
# Room left after filling: a few more cases get in, then the AOF write fails.
HEADROOM_BYTES = 48 * 1024
# How long the disk stays full once the first 503 was seen.
FULL_FOR_S = 4.0
MAX_503_S = 3.0


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    mnt = tmp_path / "disk"
    mnt.mkdir()
    res = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={MOUNT_SIZE},mode=0700", "tmpfs", str(mnt)],
                         capture_output=True, text=True, check=False)
    if res.returncode != 0:
        pytest.fail(f"the disk-full test needs to mount a tmpfs (root or CAP_SYS_ADMIN): {res.stderr.strip()}")
    try:
        yield mnt
    finally:
        res = subprocess.run(["umount", str(mnt)], capture_output=True, check=False)
        if res.returncode != 0:
            subprocess.run(["umount", "-l", str(mnt)], check=False)


def fill(mnt: Path, headroom: int) -> Path:
    """Take all free space but ``headroom`` bytes with one file (tmpfs really allocates the pages)."""
    st = os.statvfs(mnt)
    free = st.f_bavail * st.f_frsize
    path = mnt / "filler"
    chunk = b"\0" * (1 << 20)
    left = max(0, free - headroom)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        while left > 0:
            left -= os.write(fd, chunk[:min(len(chunk), left)])
    except OSError as exc:
        # The server's own writes took the headroom meanwhile: the disk is full, which is the point.
        if exc.errno != errno.ENOSPC:
            raise
    finally:
        os.close(fd)
    return path


@dataclass
class Outcome:
    acked_201: dict[str, str] = field(default_factory=dict)  # idempotency key → case id
    replayed_200: dict[str, str] = field(default_factory=dict)
    unavailable: list[float] = field(default_factory=list)  # seconds to answer each 503
    codes_503: Counter[str] = field(default_factory=Counter)
    bad_503: list[str] = field(default_factory=list)  # 503s without Retry-After or a JSON error body
    conn_errors: int = 0
    other: Counter[int] = field(default_factory=Counter)
    other_bodies: list[str] = field(default_factory=list)
    first_503_at: float = 0.0


async def drive(url: str, texts: list[str], out: Outcome, acks: asyncio.Event) -> None:
    async def one(http: aiohttp.ClientSession, i: int) -> None:
        key = f"disk-{i}"
        body = {"text": texts[i], "contact": f"137{i:08d}", "channel": "api"}
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            t0 = time.monotonic()
            try:
                async with http.post(f"{url}/api/v1/complaints", json=body,
                                     headers={"Idempotency-Key": key}) as resp:
                    raw = await resp.read()
                    if resp.status == 201:
                        out.acked_201[key] = json.loads(raw)["case_id"]
                        if len(out.acked_201) >= FILL_AFTER_ACKS:
                            acks.set()
                        return
                    if resp.status == 200:
                        out.replayed_200[key] = json.loads(raw)["case_id"]
                        return
                    if resp.status == 503:
                        out.unavailable.append(time.monotonic() - t0)
                        out.first_503_at = out.first_503_at or time.monotonic()
                        try:
                            err = json.loads(raw)["error"]
                            assert isinstance(err["code"], str) and err["message"]
                            out.codes_503[err["code"]] += 1
                        except (ValueError, KeyError, TypeError, AssertionError):
                            out.bad_503.append(f"body {raw[:200]!r}")
                        if not resp.headers.get("Retry-After", "").isdigit():
                            out.bad_503.append("no Retry-After")
                    else:
                        out.other[resp.status] += 1
                        out.other_bodies.append(raw[:300].decode(errors="replace"))
            except (aiohttp.ClientError, TimeoutError):
                out.conn_errors += 1
            # Retry-After says 5 s; a shorter pause keeps the test short and the same key makes it safe.
            await asyncio.sleep(0.25)
        raise AssertionError(f"request {key} never succeeded")

    await run_clients(len(texts), one, CONCURRENCY)


async def disk_filler(mnt: Path, out: Outcome, acks: asyncio.Event, timeline: dict[str, float]) -> None:
    await asyncio.wait_for(acks.wait(), timeout=120)
    filler = await asyncio.to_thread(fill, mnt, HEADROOM_BYTES)
    timeline["filled_at"] = time.monotonic()
    deadline = time.monotonic() + 60
    while not out.first_503_at:
        if time.monotonic() > deadline:
            raise AssertionError("the disk was full for 60 s and intake never answered 503")
        await asyncio.sleep(0.05)
    await asyncio.sleep(FULL_FOR_S)
    timeline["acked_while_full"] = len(out.acked_201)
    filler.unlink()
    timeline["freed_at"] = time.monotonic()


def idem_key(key: str) -> str:
    return f"req:api:{hashlib.sha256(key.encode()).hexdigest()[:32]}"


async def verify(redis_url: str, out: Outcome, n: int) -> dict[str, Any]:
    store = Store.from_url(redis_url, prefix="hl")
    try:
        ids = await store.case_ids(limit=100_000)
        cases: list[Case] = await store.get_cases(ids)
        per_contact = Counter(c.contact for c in cases)
        duplicated = sum(k - 1 for k in per_contact.values() if k > 1)
        answered = {**out.acked_201, **out.replayed_200}
        lost = sum([not await store.case_exists(cid) for cid in answered.values()])
        incomplete: list[str] = []
        if len(cases) != len(ids):
            incomplete.append(f"{len(ids) - len(cases)} indexed ids without a record")
        trails = await store.events_many(ids)
        for case in cases:
            problems = []
            if not (case.text and case.normalized_text and case.contact and case.suggestion and case.created_at):
                problems.append("missing fields")
            actions = [e.action for e in trails.get(case.id, [])]
            if actions[:2] != ["received", "classified"]:
                problems.append(f"events {actions[:4]}")
            if await store.r.zscore(store.k_status(case.status), case.id) is None:
                problems.append(f"not in status index {case.status}")
            if problems:
                incomplete.append(f"{case.id}: {', '.join(problems)}")
        # Each request's idempotency key names its one case, so a retry can never make a second one.
        keys_wrong = 0
        for key, cid in answered.items():
            if await store.r.get(store.k_idem(idem_key(key))) != cid:
                keys_wrong += 1
        return {"cases_in_store": len(ids), "lost": lost, "duplicated": duplicated,
                "incomplete": incomplete, "idempotency_keys_wrong": keys_wrong,
                "requests_with_a_case": len(set(per_contact) & {f"137{i:08d}" for i in range(n)})}
    finally:
        await store.close()


@pytest.mark.parametrize("appendfsync", ["always", "everysec"])
async def test_disk_full_during_intake(small_disk: Path, tmp_path: Path, appendfsync: str,
                                       fault_report: Any) -> None:
    bench = bench_intake()
    http_port = free_port()
    data_dir = small_disk / "data"
    log_path = tmp_path / "serve.log"
    proc = start_serve(http_port, data_dir, log_path, serve_env(
        HOTLINE_STORE__KEY_PREFIX="hl", HOTLINE_STORE__APPENDFSYNC=appendfsync))
    url = f"http://127.0.0.1:{http_port}"
    redis_url = f"unix://{data_dir / 'redis' / 'redis.sock'}"
    timeline: dict[str, float] = {}
    out = Outcome()
    try:
        await wait_serving(url, proc, log_path)
        acks = asyncio.Event()
        texts = bench.complaint_texts(REQUESTS, seed=23)
        t0 = time.monotonic()
        await asyncio.wait_for(asyncio.gather(drive(url, texts, out, acks),
                                              disk_filler(small_disk, out, acks, timeline)), timeout=150)
        elapsed = time.monotonic() - t0
        async with aiohttp.ClientSession() as http, http.get(f"{url}/readyz") as resp:
            ready = resp.status
        result = await verify(redis_url, out, REQUESTS)
        valkey_log = (data_dir / "redis" / "valkey.log").read_text(errors="replace")
    finally:
        stop(proc)
        serve_log = (tmp_path / "serve.log").read_text(errors="replace")
        shutil.copy(tmp_path / "serve.log", tmp_path / f"serve-{appendfsync}.log")

    report = {
        "appendfsync": appendfsync, "requests": REQUESTS, "acked_201": len(out.acked_201),
        "replayed_200": len(out.replayed_200), "answers_503": len(out.unavailable),
        "codes_503": dict(out.codes_503), "max_503_s": round(max(out.unavailable, default=0.0), 3),
        "conn_errors": out.conn_errors, "other_statuses": dict(out.other),
        "acked_before_full": FILL_AFTER_ACKS, "acked_when_freed": timeline.get("acked_while_full"),
        "full_s": round(timeline["freed_at"] - timeline["filled_at"], 2), "run_s": round(elapsed, 2),
        "valkey_exited": serve_log.count('"redis_exited"'), "valkey_restarted": serve_log.count('"redis_restarted"'),
        **{k: v for k, v in result.items() if k != "incomplete"}, "incomplete": result["incomplete"][:5],
    }
    fault_report(report)
    assert result["lost"] == 0, report
    assert result["duplicated"] == 0, report
    assert not result["incomplete"], report
    assert result["idempotency_keys_wrong"] == 0, report
    assert len(out.acked_201) + len(out.replayed_200) == REQUESTS, report
    assert result["requests_with_a_case"] == REQUESTS == result["cases_in_store"], report
    # The full disk was noticed and answered as 503 with a clear JSON error and Retry-After, fast.
    assert out.unavailable, f"the full disk was never noticed: {report}"
    assert not out.bad_503, (out.bad_503[:5], report)
    assert max(out.unavailable) < MAX_503_S, report
    assert not out.other, (out.other_bodies[:3], report)
    assert ready == 200, report
    if appendfsync == "always":
        # Valkey exits on an AOF write error with appendfsync always; the supervisor brought it back.
        assert "Can't recover from AOF write error" in valkey_log, valkey_log[-2000:]
        assert report["valkey_restarted"] >= 1, report
    else:
        # It keeps running and refuses writes (MISCONF) until the AOF can be written again.
        assert "Error writing to the AOF file" in valkey_log or "Short write while writing to the AOF" in valkey_log, \
            valkey_log[-2000:]
        assert out.codes_503["storage_unavailable"] > 0, report
