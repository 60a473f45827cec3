"""Numbers that arrive as text from outside: query strings, headers, chat messages, XML fields."""

from __future__ import annotations

import math
import re
import unicodedata
from typing import Any

_NOT_ASCII_DIGIT = re.compile(r"[^0-9]")


def ascii_digits(text: str) -> bool:
    """Only 0-9, at least one. ``str.isdigit`` also accepts "²" and "①", which ``int()`` then refuses."""
    return text.isascii() and text.isdigit()


def digits_of(text: str) -> str:
    """The ASCII digits of ``text`` once NFKC has made full-width digits (１３８, typed with a Chinese input
    method) plain: ``re.sub(r"\\D", …)`` would keep them, and ``hmac.compare_digest`` refuses non-ASCII."""
    return _NOT_ASCII_DIGIT.sub("", unicodedata.normalize("NFKC", text or ""))


def typed_digits(text: str, max_chars: int = 40) -> str:
    """A short run of digits a citizen typed (the phone's last 4), full-width folded to ASCII; "" unless the
    whole of it is digits."""
    if len(text) > max_chars:
        return ""
    folded = unicodedata.normalize("NFKC", text).strip()
    return folded if ascii_digits(folded) else ""


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
