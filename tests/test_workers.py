"""``hotline serve --workers N``: several processes on one port and one embedded store."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from pathlib import Path

import aiohttp
import pytest

from hotline.settings import SettingsError, load_settings
from hotline.workers import MAX_AUTO_WORKERS, check_workers, worker_count
from tests.process_support import free_port, serve_env, start_serve, stop, wait_serving


def _children(pid: int) -> set[int]:
    out = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid:
                out.add(int(entry.name))
    return out


def _workers(pid: int) -> set[int]:
    """Children of the pool that are hotline workers (the embedded store is a child too)."""
    found = set()
    for child in _children(pid):
        try:
            cmd = (Path("/proc") / str(child) / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"hotline.cli" in cmd:
            found.add(child)
    return found


def _alive(pid: int) -> bool:
    """Any thread of the process still running (a zombie leader can outlive its threads' exit)."""
    try:
        tasks = list((Path("/proc") / str(pid) / "task").iterdir())
    except OSError:
        return False
    for task in tasks:
        try:
            if (task / "stat").read_text().rsplit(")", 1)[1].split()[0] != "Z":
                return True
        except OSError:
            continue
    return False


async def _submit(http: aiohttp.ClientSession, url: str, i: int) -> str:
    body = {"text": f"第{i}号反映：小区{i}栋门口的路灯坏了好几天，晚上出行不安全", "contact": f"1390000{i:04d}"}
    async with http.post(f"{url}/api/v1/complaints", json=body) as resp:
        assert resp.status == 201, await resp.text()
        return (await resp.json())["case_id"]


def test_webhook_telegram_needs_one_process(tmp_path: Path) -> None:
    settings = load_settings(overrides={"server": {"data_dir": str(tmp_path)},
                                        "telegram": {"token": "123:abc", "mode": "webhook"}})
    check_workers(settings, 1)
    with pytest.raises(SettingsError, match=r"telegram\.mode"):
        check_workers(settings, 2)
    with pytest.raises(SettingsError, match=r"server\.workers"):
        check_workers(settings, 0)
    # One per core is one process while the webhook needs it, and one per core (at most 8) otherwise.
    assert worker_count(settings, 0) == 1
    assert worker_count(settings, 3) == 3
    free = load_settings(overrides={"server": {"data_dir": str(tmp_path)}})
    assert worker_count(free, 0) == max(1, min(os.cpu_count() or 1, MAX_AUTO_WORKERS))
    check_workers(free, worker_count(free, 0))


async def test_worker_pool_shares_port_and_store_and_replaces_a_dead_worker(tmp_path: Path) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = serve_env()
    log_path = tmp_path / "pool.log"
    pool = start_serve(port, tmp_path / "data", log_path, env, extra=["--workers", "2"])
    try:
        await wait_serving(url, pool, log_path)
        deadline = time.monotonic() + 60
        while len(_workers(pool.pid)) < 2:
            assert time.monotonic() < deadline, "two workers did not start"
            await asyncio.sleep(0.3)
        first = _workers(pool.pid)

        async with aiohttp.ClientSession() as http:
            ids = await asyncio.gather(*(_submit(http, url, i) for i in range(120)))
        assert len(set(ids)) == 120

        # A worker killed outright is replaced; the port keeps answering meanwhile.
        victim = min(first)
        os.kill(victim, signal.SIGKILL)
        # Connections the kernel queued on the dying worker's socket are reset with it (clients retry with
        # their Idempotency-Key); once it is gone the other worker takes every new connection.
        # Reaped by the pool: a zombie leader may still have threads (and the socket) alive.
        deadline = time.monotonic() + 10
        while (Path("/proc") / str(victim)).exists():
            assert time.monotonic() < deadline, "the killed worker was not reaped"
            await asyncio.sleep(0.05)
        async with aiohttp.ClientSession() as http:
            more = [await _submit(http, url, 1000 + i) for i in range(10)]
        deadline = time.monotonic() + 60
        while not (len(_workers(pool.pid)) == 2 and victim not in _workers(pool.pid)):
            assert time.monotonic() < deadline, "the dead worker was not replaced"
            await asyncio.sleep(0.3)

        kids = _children(pool.pid)
        assert len(kids) >= 3  # two workers and the embedded store
        pool.send_signal(signal.SIGTERM)
        assert pool.wait(timeout=60) == 0
        assert not [k for k in kids if _alive(k)], "a worker or the store outlived the pool"
    finally:
        if pool.poll() is None:
            pool.kill()
            pool.wait()
    log = log_path.read_text("utf-8", "replace")
    assert "worker_exited" in log and "Traceback" not in log.split("worker_exited")[0]

    # The pool's store was the embedded one in the data dir: a single process finds every case there.
    single = start_serve(port, tmp_path / "data", tmp_path / "single.log", env)
    try:
        await wait_serving(url, single, tmp_path / "single.log")
        async with aiohttp.ClientSession() as http:
            for case_id in [*ids, *more]:
                async with http.get(f"{url}/api/v1/cases/{case_id}") as resp:
                    assert resp.status == 200, case_id
            # What start-up loaded is kept out of the cyclic collector's full passes.
            async with http.get(f"{url}/metrics") as resp:
                text = await resp.text()
        frozen = next(float(line.split()[-1]) for line in text.splitlines()
                      if line.startswith("hotline_gc_frozen_objects "))
        assert frozen > 50_000
    finally:
        stop(single)
