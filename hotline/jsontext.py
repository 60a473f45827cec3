"""JSON text of case records, audit events and API replies.

orjson writes it several times faster than the standard library: a case's record, its events and the
reply to the citizen are encoded on every submission, and that was 3 % of the service's time. What
orjson refuses (an integer beyond 64 bits) still goes through ``json``, so nothing that could be
stored before is refused now.
"""

from __future__ import annotations

import json
from typing import Any

import orjson

_OPTIONS = orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_NON_STR_KEYS


def dumps(value: Any) -> str:
    """Compact JSON with non-ASCII characters as they are."""
    try:
        return orjson.dumps(value, option=_OPTIONS).decode()
    except orjson.JSONEncodeError:
        return json.dumps(value, ensure_ascii=False, separators=(",", ":"))
