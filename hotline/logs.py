"""One JSON line per request or event, with phone and ID-card numbers masked."""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any

from aiohttp.abc import AbstractAccessLogger
from aiohttp.web import BaseRequest, StreamResponse

from hotline.records import mask_pii

_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        data: dict[str, Any] = {
            "ts": round(record.created, 3),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": mask_pii(record.getMessage()),
        }
        for key, value in vars(record).items():
            if key not in _STANDARD and not key.startswith("_"):
                data[key] = mask_pii(value) if isinstance(value, str) else value
        if record.exc_info:
            data["exc"] = mask_pii(self.formatException(record.exc_info))
        return json.dumps(data, ensure_ascii=False, default=str)


def setup_logging(level: str = "INFO", stream: Any = None) -> None:
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())


class AccessLogger(AbstractAccessLogger):
    """Path only, never the query string: status-page look-ups carry phone digits."""

    def log(self, request: BaseRequest, response: StreamResponse, elapsed: float) -> None:
        self.logger.info(
            "request",
            extra={
                "event": "http",
                "method": request.method,
                "path": request.path,
                "status": response.status,
                "ms": round(elapsed * 1000, 2),
                "remote": request.remote or "",
                "at": round(time.time(), 3),
            },
        )
