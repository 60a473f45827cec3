"""Text cleaning for citizen messages."""

from __future__ import annotations

import re
import unicodedata

# C0/C1 control characters and other invisible format characters, except tab and newline.
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f\u200b-\u200f\u2028-\u202e\u2060-\u206f\ufeff]")
_SPACES = re.compile(r"[ \t\u3000]+")
_NEWLINES = re.compile(r"\n{3,}")


def sanitize(text: str) -> str:
    """What we keep as the citizen's own words: control characters removed, nothing else changed."""
    return _CONTROL.sub("", text.replace("\r\n", "\n").replace("\r", "\n")).strip()


def normalize(text: str) -> str:
    """Canonical form for matching and classification: NFKC (full-width → half-width), one space."""
    text = unicodedata.normalize("NFKC", sanitize(text))
    text = _SPACES.sub(" ", text)
    return _NEWLINES.sub("\n\n", text).strip()
