"""Several serving processes on one port (``hotline serve --workers N``).

Python runs one request at a time per process; a city's hotline on a multi-core host runs one worker per
core. The parent starts the embedded Redis-protocol server once (unless ``REDIS_URL`` is set), then N
copies of ``hotline serve`` that share the listening port through SO_REUSEPORT and the one store:
case ids, idempotency, the outbox and every background worker are already safe across processes. A worker
that dies is started again; SIGTERM/SIGINT stop the workers first and the store last.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import sys
import time
from collections.abc import Sequence

from hotline.redis_server import EmbeddedRedis
from hotline.settings import Settings, SettingsError

log = logging.getLogger("hotline.workers")

RESTART_BACKOFF_S = (1.0, 2.0, 5.0, 10.0, 30.0)
STOP_GRACE_S = 30.0


# ``workers = 0`` starts one serving process per core, up to this many: each one holds the models (about
# 350 MB), so a large machine is better used with an explicit count.
MAX_AUTO_WORKERS = 8


def worker_count(settings: Settings, workers: int) -> int:
    """``workers``, or for 0 one per core: one only when the Telegram webhook needs a single process."""
    if workers != 0:
        return workers
    tg = settings["telegram"]
    if tg["token"] and tg["mode"] == "webhook":
        return 1
    return max(1, min(os.cpu_count() or 1, MAX_AUTO_WORKERS))


def check_workers(settings: Settings, workers: int) -> None:
    """Refuse set-ups that cannot run on several processes, before anything starts."""
    if workers < 1 or workers > 64:
        raise SettingsError(f"setting server.workers: must be 0 (one per core) or from 1 to 64, got {workers}")
    tg = settings["telegram"]
    if workers > 1 and tg["token"] and tg["mode"] == "webhook":
        # The Telegram conversation runs in one process; the kernel would spread its updates over all.
        raise SettingsError("telegram.mode: the webhook needs one process; with --workers > 1 run the bot "
                            "with `hotline telegram poll` or on its own `hotline serve --workers 1`")


def port_is_free(host: str, port: int) -> None:
    """Raise the OSError (address in use) a worker would meet: the pool would otherwise restart workers that
    can never bind, with backoff, for ever. Bound as the workers bind, with SO_REUSEPORT, so a port held by
    workers of this service's own kind is not reported."""
    for family, kind, proto, _name, address in socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM,
                                                                 flags=socket.AI_PASSIVE):
        with socket.socket(family, kind, proto) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            probe.bind(address)


class WorkerPool:
    def __init__(self, settings: Settings, argv: Sequence[str], workers: int) -> None:
        """``argv``: the ``hotline serve`` options each worker gets (host, port, data dir, config)."""
        self.settings = settings
        self.argv = list(argv)
        self.n = workers
        self.procs: dict[int, asyncio.subprocess.Process] = {}
        self.stopping = asyncio.Event()

    def _child_argv(self) -> list[str]:
        return [sys.executable, "-m", "hotline.cli", "serve", *self.argv, "--workers", "1"]

    async def _spawn(self, index: int, env: dict[str, str]) -> None:
        env = {**env, "HOTLINE_WORKER": str(index)}
        if index > 0:
            # A call is one TCP connection to one process: the first worker answers the PBX for the pool.
            env["HOTLINE_VOICE__AUDIOSOCKET_ENABLED"] = "false"
        proc = await asyncio.create_subprocess_exec(*self._child_argv(), env=env)
        self.procs[index] = proc
        log.info("worker started", extra={"event": "worker_started", "worker": index, "pid": proc.pid})

    async def _keep(self, index: int, env: dict[str, str]) -> None:
        failures = 0
        while not self.stopping.is_set():
            started = time.monotonic()
            await self._spawn(index, env)
            code = await self.procs[index].wait()
            if self.stopping.is_set():
                return
            # A worker that ran for a while and died gets a quick restart; one that keeps dying backs off.
            failures = 0 if time.monotonic() - started > 60 else failures + 1
            delay = RESTART_BACKOFF_S[min(failures, len(RESTART_BACKOFF_S) - 1)]
            log.error("worker exited", extra={"event": "worker_exited", "worker": index, "exit_code": code,
                                              "restart_in_s": delay})
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.stopping.wait(), delay)

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.stopping.set)
        settings = self.settings
        port_is_free(settings["server"]["host"], settings["server"]["port"])
        url = settings["store"]["redis_url"]
        embedded: EmbeddedRedis | None = None
        supervisor: asyncio.Task | None = None
        if not url:
            embedded = EmbeddedRedis(settings.data_dir, settings["store"]["appendfsync"])
            url = await asyncio.to_thread(embedded.start)
            supervisor = asyncio.create_task(embedded.supervise())
        env = {**os.environ, "REDIS_URL": url, "HOTLINE_SERVER__REUSE_PORT": "true"}
        keepers = [asyncio.create_task(self._keep(i, env)) for i in range(self.n)]
        log.info("serving", extra={"event": "serving", "workers": self.n, "host": settings["server"]["host"],
                                   "port": settings["server"]["port"]})
        try:
            await self.stopping.wait()
        finally:
            self.stopping.set()
            await self._stop_children()
            await asyncio.gather(*keepers, return_exceptions=True)
            await self._stop_children()  # one a keeper was starting at that moment
            if supervisor is not None:
                supervisor.cancel()
                await asyncio.gather(supervisor, return_exceptions=True)
            if embedded is not None:
                await asyncio.to_thread(embedded.stop)
        return 0

    async def _stop_children(self) -> None:
        live = [p for p in self.procs.values() if p.returncode is None]
        for proc in live:
            proc.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(asyncio.gather(*(p.wait() for p in live)), STOP_GRACE_S)
        except TimeoutError:
            for proc in live:
                if proc.returncode is None:
                    proc.kill()
            await asyncio.gather(*(p.wait() for p in live))
