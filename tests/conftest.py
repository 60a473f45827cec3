"""Shared fixtures: one real embedded Valkey server per test session, a fresh key prefix per test."""

from __future__ import annotations

import json
import logging
import os
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from hotline.app import create_app
from hotline.logs import JsonFormatter
from hotline.redis_server import EmbeddedRedis
from hotline.settings import Settings, load_settings
from hotline.store import Store
from tests.dispatch_support import Open311Receiver

ARTIFACTS = Path(os.environ.get("HOTLINE_TEST_ARTIFACTS", Path(__file__).resolve().parent.parent / "test-artifacts"))


# The key under which a fault test records its counts (tests/faults/conftest.py), shown in the summary.
FAULT_REPORT = "fault_report"


def pytest_terminal_summary(terminalreporter: Any) -> None:
    """The fault tests' counts (lost, duplicated, ...) in CI's output; see tests/faults/conftest.py."""
    lines = []
    for outcome in ("passed", "failed"):
        for rep in terminalreporter.stats.get(outcome, []):
            for key, value in getattr(rep, "user_properties", ()):
                if key == FAULT_REPORT and rep.when == "call":
                    figures = json.loads(value)
                    lines.append(f"{outcome.upper()} {rep.nodeid}: lost = {figures.get('lost')}, "
                                 f"duplicated = {figures.get('duplicated')}")
                    lines.append(f"  {value}")
    if lines:
        terminalreporter.write_sep("-", "fault tests")
        for line in lines:
            terminalreporter.write_line(line)


class StrictJsonHandler(logging.Handler):
    """Formats every record as the service's log handler does, and lets a failure raise instead of being
    printed and forgotten: a log call that cannot be formatted (an ``extra`` key that overwrites a
    LogRecord attribute, a value JSON cannot hold) fails the test that made it."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.setFormatter(JsonFormatter())

    def emit(self, record: logging.LogRecord) -> None:
        if not isinstance(json.loads(self.format(record)), dict):
            raise AssertionError(f"log line is not one JSON object: {record!r}")


@pytest.fixture(autouse=True)
def strict_log_handler() -> Iterator[None]:
    """Per test, since a test of ``setup_logging`` replaces the root handlers. pytest's ``log_level``
    (pyproject.toml) is the shipped INFO, so info-level calls are made and formatted too."""
    handler = StrictJsonHandler()
    root = logging.getLogger()
    root.addHandler(handler)
    yield
    root.removeHandler(handler)


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedRedis]:
    server = EmbeddedRedis(tmp_path_factory.mktemp("valkey"), appendfsync="everysec")
    server.start()
    yield server
    server.stop()


@pytest.fixture
def key_prefix() -> str:
    return f"t{uuid.uuid4().hex[:10]}"


def make_settings(redis_url: str, data_dir: Path, prefix: str = "hl", **sections: dict[str, Any]) -> Settings:
    overrides: dict[str, Any] = {
        "server": {"data_dir": str(data_dir)},
        "store": {"redis_url": redis_url, "key_prefix": prefix},
        # Many apps run side by side in one test session: each PBX listener takes a free port. Warming
        # recognizers at start would take the cores from the real-time calls (tests/test_stt.py covers it).
        "voice": {"audiosocket_port": 0, "prewarm_s": 0.0},
    }
    for name, values in sections.items():
        overrides.setdefault(name, {}).update(values)
    return load_settings(overrides=overrides, env={})


@pytest.fixture
def settings(redis_server: EmbeddedRedis, tmp_path: Path, key_prefix: str) -> Settings:
    return make_settings(redis_server.url, tmp_path, key_prefix)


@pytest.fixture
async def store(redis_server: EmbeddedRedis, key_prefix: str) -> AsyncIterator[Store]:
    s = Store.from_url(redis_server.url, prefix=key_prefix)
    yield s
    await s.close()


@pytest.fixture
async def hs_client(aiohttp_client: Any, redis_server: EmbeddedRedis, tmp_path: Path, key_prefix: str) -> TestClient:
    """The app with merging made rare, so each similar report stays its own case and a hotspot (3 reporters in
    a day) gathers several cases."""
    settings = make_settings(redis_server.url, tmp_path, key_prefix,
                             dedup={"auto_merge": 0.99, "suggest": 0.4, "hotspot_min_reporters": 3,
                                    "hotspot_window_s": 86400})
    return await aiohttp_client(create_app(settings))


@pytest.fixture
async def client(aiohttp_client: Any, settings: Settings) -> TestClient:
    """The whole application on a real loopback server."""
    return await aiohttp_client(create_app(settings))


@pytest.fixture
def artifacts() -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    return ARTIFACTS


@pytest.fixture
async def receiver() -> AsyncIterator[Open311Receiver]:
    """The city's work-order system: a real Open311 receiver on 127.0.0.1 (tests/dispatch_support.py)."""
    r = await Open311Receiver().start()
    yield r
    await r.close()
