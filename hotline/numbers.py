"""Numbers that arrive as text from outside: query strings, headers, chat messages, XML fields."""

from __future__ import annotations

import math
from typing import Any


def ascii_digits(text: str) -> bool:
    """Only 0-9, at least one. ``str.isdigit`` also accepts "²" and "①", which ``int()`` then refuses."""
    return text.isascii() and text.isdigit()


def finite_number(value: Any) -> float | None:
    """A JSON number as a finite float, else None (also for booleans, and for integers too large for a
    float: ``float(10**400)`` and ``math.isfinite(10**400)`` raise OverflowError)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    try:
        number = float(value)
    except OverflowError:
        return None
    return number if math.isfinite(number) else None
