"""Numbers that arrive as text from outside: query strings, headers, chat messages, XML fields."""

from __future__ import annotations


def ascii_digits(text: str) -> bool:
    """Only 0-9, at least one. ``str.isdigit`` also accepts "²" and "①", which ``int()`` then refuses."""
    return text.isascii() and text.isdigit()
