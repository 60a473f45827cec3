"""Writing the tab-separated tables the matcher reads (bigram IDF, plain place words)."""

from __future__ import annotations

import os
import secrets
import stat
from collections.abc import Iterable
from pathlib import Path


def write_table(path: Path, lines: Iterable[str]) -> None:
    """Write ``lines`` through a temporary file beside ``path``, renamed over it when complete: the service
    never reads a cut-off table, and a failed write (disk full, a file size limit) leaves the previous one."""
    tmp = _new_file_beside(path)
    try:
        with tmp.open("w", encoding="utf-8", newline="\n") as fh:
            for line in lines:
                fh.write(line)
            fh.flush()
            os.fsync(fh.fileno())
        if path.is_file():
            # Whoever could read the old table (the service's user) can read the new one.
            tmp.chmod(stat.S_IMODE(path.stat().st_mode))
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _new_file_beside(path: Path) -> Path:
    """A new empty file in ``path``'s directory (same file system, so ``os.replace`` is atomic), with the
    mode the umask gives any new file."""
    while True:
        tmp = path.parent / f".{path.name}.{secrets.token_hex(4)}.tmp"
        try:
            os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
            return tmp
        except FileExistsError:
            continue
