"""What the management commands share: settings from the command line and a store connection."""

from __future__ import annotations

import argparse
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import redis.asyncio as aioredis

from hotline.redis_server import EmbeddedRedis
from hotline.settings import Settings, load_settings
from hotline.store import Store


def add_settings_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data-dir", help="data directory of the service (server.data_dir)")
    parser.add_argument("--config", type=Path, help="a site TOML file overriding config/hotline.toml")


def settings_from_args(args: argparse.Namespace) -> Settings:
    overrides: dict[str, Any] = {}
    if getattr(args, "data_dir", None):
        overrides["server"] = {"data_dir": args.data_dir}
    return load_settings(overrides=overrides, extra_file=getattr(args, "config", None))


async def _answers(url: str) -> bool:
    client = aioredis.Redis.from_url(url, socket_connect_timeout=1)
    try:
        return bool(await client.ping())
    except (OSError, aioredis.RedisError):
        return False
    finally:
        await client.aclose()


@asynccontextmanager
async def open_store(settings: Settings) -> AsyncIterator[Store]:
    """The configured Redis; else the embedded server of a running ``hotline serve``; else start it."""
    url = settings["store"]["redis_url"]
    embedded: EmbeddedRedis | None = None
    if not url:
        candidate = EmbeddedRedis(settings.data_dir, settings["store"]["appendfsync"])
        running = f"unix://{candidate.socket_path}"
        if candidate.socket_path.exists() and await _answers(running):
            url = running
        else:
            embedded = candidate
            url = embedded.start()
    store = Store.from_url(url, prefix=settings["store"]["key_prefix"], timezone=settings["intake"]["timezone"],
                           idempotency_ttl_s=settings["store"]["idempotency_ttl_s"])
    try:
        yield store
    finally:
        await store.close()
        if embedded is not None:
            embedded.stop()
