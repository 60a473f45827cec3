"""Intake throughput: N concurrent clients POST complaints to a real `hotline serve` over loopback.

Starts `hotline serve` (embedded Valkey in a temporary data dir, unless --url points at a running
service), drives POST /api/v1/complaints, then checks every acknowledged case id in the store.
Prints one JSON object as the last line: cases_per_s, p50_ms, p99_ms, errors, lost.

By default the service runs as it would be deployed on the machine, one serving process per core
(`hotline serve --workers N`), and 16 clients keep it busy: enough to hold both cores at their limit
while each request still waits behind few others.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from urllib.parse import urlsplit

import aiohttp

ROOT = Path(__file__).resolve().parent.parent
SHARED = Path(os.environ.get("HOTLINE_SHARED_DATA", ROOT.parent / "shared" / "data"))


def complaint_texts(n: int, seed: int = 7) -> list[str]:
    """Real citizen messages when the shared data is there, else varied synthetic ones."""
    texts: list[str] = []
    path = SHARED / "taidi_labeled_train.jsonl"
    if path.exists():
        with path.open(encoding="utf-8") as fh:
            for line in fh:
                row = json.loads(line)
                text = f"{row.get('title') or ''}。{row.get('text') or ''}".strip("。")
                if text:
                    texts.append(text[:1500])
    if not texts:
        places = ["幸福小区", "建设路", "阳光花园", "东湖村", "实验小学", "人民医院"]
        problems = ["夜间施工噪音扰民", "路灯不亮", "垃圾无人清运", "停水三天", "占道经营", "井盖破损"]
        texts = [f"{p}{q}，请尽快处理" for p in places for q in problems]
    rnd = random.Random(seed)
    # A unique suffix per request: the exact-resubmission guard must not fold them together.
    return [f"{rnd.choice(texts)}（第{i}号反映）" for i in range(n)]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def wait_ready(url: str, timeout: float = 90.0) -> None:
    deadline = time.monotonic() + timeout
    async with aiohttp.ClientSession() as http:
        while time.monotonic() < deadline:
            try:
                async with http.get(f"{url}/readyz") as resp:
                    if resp.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.2)
    raise RuntimeError(f"service at {url} not ready after {timeout}s")


class Connection:
    """One keep-alive HTTP/1.1 connection speaking just what the benchmark needs (a POST with a JSON body
    and a Content-Length response). A load generator sharing two cores with the service should spend as
    little of them as it can: this costs about half the CPU per request that aiohttp's client does."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def post(self, path: str, body: bytes, headers: dict[str, str]) -> tuple[int, bytes]:
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        head = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
        self.writer.write(f"POST {path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\n"
                          f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n{head}\r\n"
                          .encode() + body)
        assert self.reader is not None
        raw = await self.reader.readuntil(b"\r\n\r\n")
        lines = raw.decode("latin-1").split("\r\n")
        status = int(lines[0].split(" ", 2)[1])
        fields = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:] if line)}
        if "content-length" not in fields:
            raise ValueError("response without Content-Length")
        data = await self.reader.readexactly(int(fields["content-length"]))
        if fields.get("connection", "").lower() == "close":
            self.close()
        return status, data

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.reader = self.writer = None


async def drive(url: str, texts: list[str], concurrency: int,
                tag: str) -> tuple[list[float], list[str], int, float]:
    latencies: list[float] = []
    acked: list[str] = []
    errors = 0
    queue: asyncio.Queue[tuple[int, str]] = asyncio.Queue()
    for i, text in enumerate(texts):
        queue.put_nowait((i, text))
    target = urlsplit(url)

    async def worker() -> None:
        nonlocal errors
        conn = Connection(target.hostname or "127.0.0.1", target.port or 80)
        try:
            while True:
                try:
                    i, text = queue.get_nowait()
                except asyncio.QueueEmpty:
                    return
                body = {"text": text, "contact": f"139{i:08d}", "address": "", "channel": "api"}
                payload = json.dumps(body, ensure_ascii=False).encode()
                t0 = time.perf_counter()
                try:
                    status, data = await asyncio.wait_for(
                        conn.post("/api/v1/complaints", payload, {"Idempotency-Key": f"bench-{tag}-{i}"}), 30)
                    if status == 201:
                        acked.append(json.loads(data)["case_id"])
                    else:
                        errors += 1
                except (TimeoutError, OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError,
                        ValueError, KeyError):
                    errors += 1
                    conn.close()
                latencies.append((time.perf_counter() - t0) * 1000)
        finally:
            conn.close()

    t0 = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    elapsed = time.perf_counter() - t0
    return latencies, acked, errors, elapsed


async def count_lost(url: str, acked: list[str]) -> int:
    """Ask the service for every acknowledged case: an acknowledged complaint must be readable."""
    lost = 0
    sem = asyncio.Semaphore(32)
    async with aiohttp.ClientSession() as http:

        async def check(case_id: str) -> None:
            nonlocal lost
            async with sem, http.get(f"{url}/api/v1/cases/{case_id}") as resp:
                if resp.status != 200:
                    lost += 1

        await asyncio.gather(*(check(c) for c in acked))
    return lost


def _proc_tree(root: int) -> list[tuple[int, str, float, float]]:
    """(pid, command name, resident MB, CPU seconds used) of ``root`` and every process below it."""
    parents: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            parents.setdefault(ppid, []).append(int(entry.name))
    tick = os.sysconf("SC_CLK_TCK")
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        todo += parents.get(pid, [])
        try:
            status = (Path("/proc") / str(pid) / "status").read_text()
            # utime and stime: the 12th and 13th fields after the command name.
            stat = (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
        rss_kb = int(fields.get("VmRSS", "0 kB").split()[0])
        out.append((pid, fields.get("Name", "").strip(), rss_kb / 1024, (int(stat[11]) + int(stat[12])) / tick))
    return out


def _is_store(name: str) -> bool:
    return name.startswith(("valkey", "redis"))


def cpu_snapshot(root: int | None) -> dict[int, tuple[bool, float]]:
    """CPU seconds so far of every process of the service (pid → (is the store, seconds)), and of this
    client under pid 0."""
    snap = {0: (False, time.process_time())}
    if root is not None:
        snap.update({pid: (_is_store(name), cpu) for pid, name, _mb, cpu in _proc_tree(root)})
    return snap


def cpu_per_case(before: dict[int, tuple[bool, float]], after: dict[int, tuple[bool, float]],
                 cases: int) -> dict[str, float]:
    """CPU milliseconds each part spent per acknowledged case while the clients ran, and the rate the
    machine's cores could carry at that cost (all cores busy with nothing else): where the time goes."""
    if not cases:
        return {}
    parts = {"serve": 0.0, "store": 0.0, "client": after[0][1] - before[0][1]}
    for pid, (store, cpu) in after.items():
        if pid and pid in before:
            parts["store" if store else "serve"] += cpu - before[pid][1]
    out = {f"cpu_ms_per_case_{k}": round(v * 1000 / cases, 2) for k, v in parts.items()}
    total = sum(parts.values()) / cases
    out["cpu_bound_cases_per_s"] = round((os.cpu_count() or 1) / total, 1) if total else 0.0
    return out


def serving_memory(root: int) -> dict[str, float]:
    """Resident memory of the serving processes (largest and total) and of the embedded store."""
    procs = _proc_tree(root)
    serving = [mb for _pid, name, mb, _cpu in procs if not _is_store(name)]
    if len(serving) > 1:
        serving = serving[1:] if procs and procs[0][0] == root else serving  # the pool parent only waits
    store = [mb for _pid, name, mb, _cpu in procs if _is_store(name)]
    return {"serve_rss_mb": round(max(serving, default=0.0), 1),
            "serve_rss_total_mb": round(sum(serving), 1),
            "store_rss_mb": round(sum(store), 1)}


def percentile(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


async def run(args: argparse.Namespace) -> dict:
    load_before = os.getloadavg()[0]  # other work on the machine, before this benchmark adds its own
    texts = complaint_texts(args.requests)
    proc = None
    tmp = None
    url = args.url
    if not url:
        tmp = tempfile.TemporaryDirectory(prefix="hotline-bench-")
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        env = {**os.environ, "HOTLINE_LOGGING__LEVEL": "WARNING"}
        env.pop("REDIS_URL", None)
        proc = subprocess.Popen(
            [sys.executable, "-m", "hotline", "serve", "--port", str(port), "--data-dir", tmp.name,
             "--workers", str(args.workers)],
            cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL if not args.verbose else None,
        )
    try:
        await wait_ready(url)
        # Warm-up: connection pools, model caches.
        await drive(url, complaint_texts(50, seed=1), 8, "warmup")
        root = proc.pid if proc is not None else None
        cpu_before = cpu_snapshot(root)
        latencies, acked, errors, elapsed = await drive(url, texts, args.concurrency, "run")
        cpu = cpu_per_case(cpu_before, cpu_snapshot(root), len(acked))
        memory = serving_memory(proc.pid) if proc is not None else {}
        lost = await count_lost(url, acked)
    finally:
        if proc is not None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
        if tmp is not None:
            tmp.cleanup()
    return {
        "requests": args.requests,
        "concurrency": args.concurrency,
        "workers": args.workers if not args.url else None,
        "cpu_count": os.cpu_count(),
        "loadavg_1m_before": round(load_before, 2),
        "cases_per_s": round(len(acked) / elapsed, 1) if elapsed else 0.0,
        "p50_ms": round(statistics.median(latencies), 2) if latencies else 0.0,
        "p99_ms": round(percentile(latencies, 0.99), 2),
        "errors": errors,
        "lost": lost,
        **cpu,
        **memory,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--url", help="drive an already running service instead of starting one")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1,
                        help="serving processes (hotline serve --workers; default: one per core)")
    parser.add_argument("--verbose", action="store_true", help="show the service's log")
    parser.add_argument("--json", action="store_true", help="print only the JSON result")
    args = parser.parse_args()
    result = asyncio.run(run(args))
    if not args.json:
        for key, value in result.items():
            print(f"{key:>12}: {value}")
    print(json.dumps(result))
    return 0 if result["lost"] == 0 and result["errors"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
