"""Real `hotline serve` processes for tests: start one on a free loopback port, wait for it, stop it.

The load generator and readiness probe are bench/intake.py's own, so the fault tests drive the service
exactly as the benchmark does.
"""

from __future__ import annotations

import asyncio
import functools
import importlib.util
import os
import subprocess
import sys
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent


@functools.cache
def bench_intake() -> Any:
    spec = importlib.util.spec_from_file_location("bench_intake", ROOT / "bench" / "intake.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def free_port() -> int:
    return bench_intake().free_port()


def serve_env(**settings: str) -> dict[str, str]:
    """This environment without a store choice of its own, plus ``HOTLINE_*`` settings."""
    env = {k: v for k, v in os.environ.items() if k != "REDIS_URL" and not k.startswith("HOTLINE_")}
    env.update({"HOTLINE_LOGGING__LEVEL": "WARNING", "HOTLINE_VOICE__AUDIOSOCKET_PORT": "0"})
    env.update(settings)
    return env


def start_serve(port: int, data_dir: Path, log_path: Path, env: dict[str, str],
                extra: Sequence[str] = ()) -> subprocess.Popen[bytes]:
    """`hotline serve` with its output in ``log_path`` (a pipe nobody reads would fill and stall it)."""
    with log_path.open("wb") as log_fh:
        return subprocess.Popen(
            [sys.executable, "-m", "hotline", "serve", "--port", str(port), "--data-dir", str(data_dir), *extra],
            cwd=ROOT, env=env, stdout=log_fh, stderr=subprocess.STDOUT)


async def wait_serving(url: str, proc: subprocess.Popen[bytes], log_path: Path, timeout: float = 120.0) -> None:
    """Ready, or a failure that shows why `hotline serve` did not come up."""
    waiter = asyncio.ensure_future(bench_intake().wait_ready(url, timeout=timeout))
    while not waiter.done():
        if proc.poll() is not None:
            waiter.cancel()
            raise AssertionError(f"hotline serve exited with {proc.returncode}: "
                                 f"{log_path.read_text(errors='replace')[-3000:]}")
        await asyncio.sleep(0.2)
    if waiter.exception() is not None:
        raise AssertionError(f"{waiter.exception()}: {log_path.read_text(errors='replace')[-3000:]}")


def stop(proc: subprocess.Popen[bytes], timeout: float = 20.0) -> int:
    """SIGTERM, then SIGKILL after ``timeout``; the exit code."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return proc.returncode


async def run_clients(n: int, one: Callable[[Any, int], Awaitable[None]], concurrency: int,
                      timeout_s: float = 15.0) -> None:
    """Requests 0..n-1, each through ``one(http, i)``, from ``concurrency`` clients sharing one session."""
    import aiohttp

    queue: asyncio.Queue[int] = asyncio.Queue()
    for i in range(n):
        queue.put_nowait(i)

    async def worker(http: aiohttp.ClientSession) -> None:
        while True:
            try:
                i = queue.get_nowait()
            except asyncio.QueueEmpty:
                return
            await one(http, i)

    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=timeout_s)) as http:
        await asyncio.gather(*(worker(http) for _ in range(concurrency)))
