"""Several serving processes on one port (``hotline serve --workers N``).

Python runs one request at a time per process; a city's hotline on a multi-core host runs one worker per
core. The parent starts the embedded Redis-protocol server once (unless ``REDIS_URL`` is set), then N
copies of ``hotline serve`` that share the listening port through SO_REUSEPORT and the one store:
case ids, idempotency, the outbox and every background worker are already safe across processes. A worker
that dies is started again; SIGTERM/SIGINT stop the workers first and the store last.

Each worker tells the pool through a pipe of its own (``HOTLINE_WORKER_STATUS_FD``) once it listens, or why it
could not start. A worker that fails before it ever served (a damaged model, a store that stopped answering)
stops the pool with that one line: started again it would only fail again, for ever.
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
from dataclasses import dataclass

import redis.asyncio as aioredis

from hotline.redis_server import EmbeddedRedis
from hotline.settings import Settings, SettingsError

log = logging.getLogger("hotline.workers")

RESTART_BACKOFF_S = (1.0, 2.0, 5.0, 10.0, 30.0)
STOP_GRACE_S = 30.0

# The environment variable naming a pool worker's end of its status pipe.
STATUS_FD_ENV = "HOTLINE_WORKER_STATUS_FD"
READY = "ready"


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


def port_is_free(host: str, port: int, reuse_port: bool = True) -> None:
    """Raise the OSError (address in use) the server would meet, before anything starts: the pool would
    otherwise restart workers that can never bind, with backoff, for ever, and one process would load its
    models and start its background tasks first. Bound as the server binds: with SO_REUSEPORT for workers,
    so a port held by workers of this service's own kind is not reported."""
    if port == 0:
        return
    for family, kind, proto, _name, address in socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM,
                                                                 flags=socket.AI_PASSIVE):
        with socket.socket(family, kind, proto) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if reuse_port:
                probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            probe.bind(address)


async def store_answers(url: str) -> None:
    """Raise the RedisError (or OSError) of a store that does not answer PING at ``url``."""
    client = aioredis.Redis.from_url(url, socket_connect_timeout=2, socket_timeout=5)
    try:
        await client.ping()
    finally:
        await client.aclose()


@dataclass
class StartFailure:
    """Why the pool could not start: ``kind`` is ``settings`` (a configuration error) or ``start``."""
    kind: str
    message: str


class WorkerStatus:
    """A pool worker's end of its status pipe: says once that it listens, or why it could not start."""

    def __init__(self, fd: int) -> None:
        self.fd: int | None = fd

    @classmethod
    def from_env(cls) -> WorkerStatus | None:
        """This process's status pipe when a pool started it, else None."""
        value = os.environ.pop(STATUS_FD_ENV, "")
        if not value.isdigit():
            return None
        fd = int(value)
        # Not for the worker's own children: one holding it would keep the pool waiting after the worker died.
        with contextlib.suppress(OSError):
            os.set_inheritable(fd, False)
        return cls(fd)

    def _send(self, line: str) -> bool:
        fd, self.fd = self.fd, None
        if fd is None:
            return False
        try:
            os.write(fd, (" ".join(line.splitlines()) + "\n").encode("utf-8", "replace"))
        except OSError:
            return False
        finally:
            with contextlib.suppress(OSError):
                os.close(fd)
        return True

    def ready(self) -> None:
        self._send(READY)

    def failed(self, kind: str, message: str) -> bool:
        """Tell the pool instead of printing; False when it could not be told (then print as usual)."""
        return self._send(f"{kind}\t{message}")


async def _read_status(fd: int) -> str:
    """All a worker writes to its status pipe, up to its end (the worker closed it, or exited)."""
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    transport, _ = await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader),
                                                os.fdopen(fd, "rb", buffering=0))
    try:
        return (await reader.read()).decode("utf-8", "replace").strip()
    finally:
        transport.close()


class WorkerPool:
    def __init__(self, settings: Settings, argv: Sequence[str], workers: int) -> None:
        """``argv``: the ``hotline serve`` options each worker gets (host, port, data dir, config)."""
        self.settings = settings
        self.argv = list(argv)
        self.n = workers
        self.procs: dict[int, asyncio.subprocess.Process] = {}
        self.stopping = asyncio.Event()
        # Workers that have listened at least once; the first failure of one that never did ends the pool.
        self.served: set[int] = set()
        self.failure: StartFailure | None = None

    def _child_argv(self) -> list[str]:
        return [sys.executable, "-m", "hotline.cli", "serve", *self.argv, "--workers", "1"]

    async def _spawn(self, index: int, env: dict[str, str]) -> asyncio.Task[str]:
        """Start worker ``index``; the task reads what it says on its status pipe."""
        read_fd, write_fd = os.pipe()
        env = {**env, "HOTLINE_WORKER": str(index), STATUS_FD_ENV: str(write_fd)}
        if index > 0:
            # A call is one TCP connection to one process: the first worker answers the PBX for the pool.
            env["HOTLINE_VOICE__AUDIOSOCKET_ENABLED"] = "false"
        try:
            proc = await asyncio.create_subprocess_exec(*self._child_argv(), env=env, pass_fds=(write_fd,))
        except BaseException:
            os.close(read_fd)
            raise
        finally:
            os.close(write_fd)  # the worker holds the only writing end: its exit ends the reading
        self.procs[index] = proc
        log.info("worker started", extra={"event": "worker_started", "worker": index, "pid": proc.pid})
        return asyncio.create_task(_read_status(read_fd))

    async def _keep(self, index: int, env: dict[str, str]) -> None:
        failures = 0
        while not self.stopping.is_set():
            started = time.monotonic()
            status = await (await self._spawn(index, env))
            if status == READY and index not in self.served:
                self.served.add(index)
                if len(self.served) == self.n:
                    settings = self.settings
                    log.info("serving", extra={"event": "serving", "workers": self.n,
                                               "host": settings["server"]["host"], "port": settings["server"]["port"]})
            code = await self.procs[index].wait()
            if self.stopping.is_set():
                return
            kind, _, reason = status.partition("\t")
            # Started again, a worker that never came up would fail again, for ever; one killed by a signal
            # (the OOM killer, an operator) is started again.
            if index not in self.served and (reason or code > 0):
                self._start_failed(index, code, kind, reason)
                return
            # A worker that ran for a while and died gets a quick restart; one that keeps dying backs off.
            failures = 0 if time.monotonic() - started > 60 else failures + 1
            delay = RESTART_BACKOFF_S[min(failures, len(RESTART_BACKOFF_S) - 1)]
            extra = {"event": "worker_exited", "worker": index, "exit_code": code, "restart_in_s": delay}
            if reason:
                extra["error"] = reason
            log.error("worker exited", extra=extra)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.stopping.wait(), delay)

    def _start_failed(self, index: int, code: int | None, kind: str, reason: str) -> None:
        if self.failure is None:
            if kind not in ("settings", "start") or not reason:
                # Not one of the failures serve explains (a traceback of the worker's own is above).
                kind, reason = "start", f"worker {index} exited with status {code} before it was serving"
            self.failure = StartFailure(kind, reason)
        self.stopping.set()

    async def run(self) -> int:
        """Serve until SIGTERM/SIGINT: 0. When the pool could not start, ``failure`` says why: 1."""
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.stopping.set)
        settings = self.settings
        port_is_free(settings["server"]["host"], settings["server"]["port"])
        url = settings["store"]["redis_url"]
        embedded: EmbeddedRedis | None = None
        supervisor: asyncio.Task | None = None
        if url:
            # Every worker would load its models and then find the store silent.
            await store_answers(url)
        else:
            embedded = EmbeddedRedis(settings.data_dir, settings["store"]["appendfsync"])
            url = await asyncio.to_thread(embedded.start)
            supervisor = asyncio.create_task(embedded.supervise())
        env = {**os.environ, "REDIS_URL": url, "HOTLINE_SERVER__REUSE_PORT": "true"}
        keepers = [asyncio.create_task(self._keep(i, env)) for i in range(self.n)]
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
        return 0 if self.failure is None else 1

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
