"""Reading the JSONL files the management commands take (training rows, pairs, letters, replies).

One reader for all of them, so that every command treats a file the same way: a UTF-8 byte order mark is
accepted (editors on Windows write one), and a line that is not UTF-8, not JSON or not a JSON object is
named by ``file:line`` — either as an error that stops the command or as a counted, reported skip.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

# Places listed per reason in a report: enough to find the lines, short enough for one stderr line.
EXAMPLES = 3


class JsonlError(Exception):
    """A file cannot be read, or one of its lines is not a JSON object; the message names file:line."""


def read_jsonl(path: Path, on_bad: Callable[[str, str], None] | None = None) -> Iterator[tuple[str, dict[str, Any]]]:
    """(``file:line``, object) for each non-blank line of ``path``.

    A line that is not UTF-8, not JSON or not an object raises ``JsonlError`` naming it; with ``on_bad`` the
    line is passed to it as (where, reason) instead and reading goes on. Lines are decoded one by one, so a
    stray byte costs its own line only and is reported with its line number.
    """
    try:
        fh = path.open("rb")
    except OSError as exc:
        raise JsonlError(f"cannot read {path}: {exc.strerror or exc}") from exc
    with fh:
        try:
            for n, raw in enumerate(fh, 1):
                where = f"{path}:{n}"
                reason = detail = ""
                row: Any = None
                try:
                    # utf-8-sig on the first line only: elsewhere U+FEFF is text, not a byte order mark.
                    line = raw.decode("utf-8-sig" if n == 1 else "utf-8")
                except UnicodeDecodeError as exc:
                    reason, detail = "not UTF-8", f"byte {exc.start + 1} of the line"
                else:
                    if not line.strip():
                        continue
                    try:
                        row = json.loads(line)
                    except ValueError as exc:
                        reason, detail = "not JSON", str(exc)
                    else:
                        if not isinstance(row, dict):
                            reason = "not a JSON object"
                if reason:
                    if on_bad is None:
                        raise JsonlError(f"{where}: {reason}" + (f": {detail}" if detail else ""))
                    on_bad(where, reason)
                    continue
                yield where, row
        except OSError as exc:
            raise JsonlError(f"cannot read {path}: {exc.strerror or exc}") from exc


class Skipped:
    """Lines or rows left out, counted by reason, with the first few places of each for the report."""

    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()
        self.places: dict[str, list[str]] = {}

    def __call__(self, where: str, reason: str) -> None:
        self.counts[reason] += 1
        places = self.places.setdefault(reason, [])
        if len(places) < EXAMPLES:
            places.append(where)

    def __bool__(self) -> bool:
        return bool(self.counts)

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def as_dict(self) -> dict[str, int]:
        return dict(self.counts.most_common())

    def describe(self) -> str:
        """``3 no label (a.jsonl:4, a.jsonl:9, …), 1 not JSON (a.jsonl:7)``."""
        parts = []
        for reason, count in self.counts.most_common():
            places = self.places.get(reason, [])
            more = ", …" if count > len(places) else ""
            parts.append(f"{count} {reason} ({', '.join(places)}{more})")
        return ", ".join(parts)
