"""Fault tests report what they counted (lost, duplicated, the rest of the run) in the session's summary,
which also works when the suite runs in several processes."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest

from tests.conftest import FAULT_REPORT


@pytest.fixture
def fault_report(record_property: Callable[[str, object], None]) -> Callable[[dict[str, Any]], None]:
    def report(figures: dict[str, Any]) -> None:
        record_property(FAULT_REPORT, json.dumps(figures, ensure_ascii=False, default=str))

    return report
