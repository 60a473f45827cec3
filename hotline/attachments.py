"""Photos citizens attach to a complaint, kept on disk under the data directory.

A case holds only a reference (``upload:<sha256>.<ext>``); the bytes live in ``<data_dir>/attachments``,
named by their hash, so a retried form stores nothing twice and a name can never point outside the
directory. The type is decided from the file's first bytes, never from the name or the browser's claim:
only JPEG, PNG and WebP are kept, and they are served back to staff with that type and ``nosniff``.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path

PREFIX = "upload:"
CONTENT_TYPES = {"jpg": "image/jpeg", "png": "image/png", "webp": "image/webp"}
_NAME = re.compile(r"^[0-9a-f]{64}\.(jpg|png|webp)$")


class AttachmentError(ValueError):
    """A file that is not a photo we keep (wrong type, empty, too large)."""


def sniff(data: bytes) -> str:
    """The extension of a JPEG, PNG or WebP image by its magic bytes; '' for anything else."""
    if data[:3] == b"\xff\xd8\xff":
        return "jpg"
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        return "png"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "webp"
    return ""


def photo_headers(name: str, cache: str) -> dict[str, str]:
    """Headers for serving a stored photo: the type its bytes showed, never sniffed again by the browser."""
    return {"Content-Type": CONTENT_TYPES[name.rsplit(".", 1)[1]], "X-Content-Type-Options": "nosniff",
            "Cache-Control": cache, "Content-Disposition": "inline"}


def name_of(ref: str) -> str:
    """The stored file name of an ``upload:`` reference; '' when ``ref`` is not one of ours."""
    if not ref.startswith(PREFIX):
        return ""
    name = ref[len(PREFIX):]
    return name if _NAME.match(name) else ""


@dataclass(frozen=True)
class AttachmentStore:
    root: Path
    max_bytes: int = 5 * 1024 * 1024

    def check(self, data: bytes) -> str:
        """The extension ``data`` will be stored under; AttachmentError when it is not a photo we keep."""
        if len(data) > self.max_bytes:
            raise AttachmentError("too_large")
        ext = sniff(data)
        if not ext:
            raise AttachmentError("not_a_photo")
        return ext

    def save(self, data: bytes) -> str:
        """Keep one photo durably (written, fsynced, renamed into place) and return its reference.

        Blocking file I/O: call it in a thread from the event loop.
        """
        ext = self.check(data)
        name = f"{hashlib.sha256(data).hexdigest()}.{ext}"
        target = self.root / name[:2] / name
        if not target.exists():
            target.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=".part-")
            try:
                with os.fdopen(fd, "wb") as fh:
                    fh.write(data)
                    fh.flush()
                    os.fsync(fh.fileno())
                os.replace(tmp, target)
            except BaseException:
                Path(tmp).unlink(missing_ok=True)
                raise
            # The rename itself must survive a crash before the case that names the file is acknowledged.
            dir_fd = os.open(target.parent, os.O_RDONLY)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)
        return PREFIX + name

    def path(self, name: str) -> Path | None:
        """The file of a stored name, or None for a malformed or unknown name."""
        if not _NAME.match(name):
            return None
        target = self.root / name[:2] / name
        return target if target.is_file() else None


@dataclass(frozen=True)
class MediaLinks:
    """Signed, expiring links to stored photos for the work-order system, which has no staff login.

    ``{base}/media/<name>?exp=<unix time>&sig=<hmac>``: the link names one file and is worthless after
    ``exp``; anything else about the request is ignored, so a department can forward it inside its system.
    """

    base_url: str
    secret: bytes
    ttl_s: float

    def _sig(self, name: str, exp: int) -> str:
        return hmac.new(self.secret, f"media:{name}:{exp}".encode(), hashlib.sha256).hexdigest()[:32]

    def link(self, ref: str, now: float) -> str:
        """The link for an ``upload:`` reference; other references are returned as they are."""
        name = name_of(ref)
        if not name:
            return ref
        exp = int(now + self.ttl_s)
        return f"{self.base_url.rstrip('/')}/media/{name}?exp={exp}&sig={self._sig(name, exp)}"

    def valid(self, name: str, exp: str, sig: str, now: float) -> bool:
        if not (_NAME.match(name) and exp.isascii() and exp.isdigit() and len(exp) <= 12 and sig.isascii()):
            return False
        return int(exp) >= now and hmac.compare_digest(sig, self._sig(name, int(exp)))
