"""One JSON line per request or event, with phone and ID-card numbers masked."""

from __future__ import annotations

import json
import logging
import re
import sys
import time
from typing import Any

from aiohttp.abc import AbstractAccessLogger
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.web import BaseRequest, StreamResponse

from hotline.records import mask_pii

_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {"message", "asctime"}

# Beyond mask_pii (which pages share): numbers as citizens write them, with +86 in front or split by
# spaces and dashes. Logs can afford to over-mask.
# Floors for libraries whose verbose records carry what the service must not log, whatever logging.level
# says: python-telegram-bot writes every Bot API call with its parameters and answer (citizens' messages,
# names, files) at DEBUG, and httpx writes each request URL, which holds the bot token, at INFO.
LIBRARY_FLOORS = {"telegram": logging.INFO, "httpx": logging.WARNING, "httpcore": logging.INFO}

_LOOSE_PHONE = re.compile(r"(?<!\d)(?:\+?86[\s-]?)?(1[3-9]\d)[\s-]?(\d{4})[\s-]?(\d{4})(?!\d)")


def scrub(value: Any) -> Any:
    """Mask PII in a log value, also inside dicts, lists and numbers (a phone may arrive as an int)."""
    if isinstance(value, str):
        return _LOOSE_PHONE.sub(lambda m: f"{m.group(1)}****{m.group(3)}", mask_pii(value))
    if isinstance(value, dict):
        return {k: scrub(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [scrub(v) for v in value]
    if isinstance(value, int) and not isinstance(value, bool) and len(str(abs(value))) in (11, 18):
        return scrub(str(value))
    if isinstance(value, str | int | float | bool) or value is None:
        return value
    return scrub(str(value))


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        data: dict[str, Any] = {
            "ts": round(record.created, 3),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": scrub(record.getMessage()),
        }
        for key, value in vars(record).items():
            if key not in _STANDARD and not key.startswith("_"):
                data[key] = scrub(value)
        if record.exc_info:
            data["exc"] = scrub(self.formatException(record.exc_info))
        return json.dumps(data, ensure_ascii=False, default=str)


class MalformedRequestFilter(logging.Filter):
    """aiohttp logs a request it cannot parse (a request line or header too long, a bad header) at ERROR,
    with a traceback and the start of the raw request line, query string included. The client has already
    had its 400; what the operator needs is one warning saying so. Errors of the service stay as they are."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, HttpProcessingError) and 400 <= (exc.code or 0) < 500:
            record.levelno, record.levelname = logging.WARNING, "WARNING"
            record.msg, record.args = "malformed request answered with %s", (exc.code,)
            record.exc_info, record.exc_text = None, None
            record.event, record.error = "bad_request", type(exc).__name__
        return True


def setup_logging(level: str = "INFO", stream: Any = None) -> None:
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for name, floor in LIBRARY_FLOORS.items():
        logging.getLogger(name).setLevel(max(floor, root.level))
    server = logging.getLogger("aiohttp.server")
    if not any(isinstance(f, MalformedRequestFilter) for f in server.filters):
        server.addFilter(MalformedRequestFilter())


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
