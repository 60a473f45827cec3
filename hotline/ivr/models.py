"""Fetching the official Vosk Chinese models: download, verify size and sha256, unpack atomically.

Nothing is installed unless every check passed: the zip is written to a temporary file next to the
target, checked, unpacked into a temporary directory there, checked again (it must hold a Vosk model)
and only then renamed into place, so a crash or a bad download never leaves a half model behind.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import shutil
import tempfile
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import aiohttp

from hotline.ivr.stt import looks_like_model


@dataclass(frozen=True)
class ModelSpec:
    key: str
    name: str  # directory name inside the zip and under the models directory
    url: str
    size: int
    sha256: str  # empty: not published here; the operator must pass --sha256


MODELS = {
    "small-cn": ModelSpec(
        key="small-cn",
        name="vosk-model-small-cn-0.22",
        url="https://alphacephei.com/vosk/models/vosk-model-small-cn-0.22.zip",
        size=43_898_754,
        sha256="3af8b0e7e0f835ae9d414ce5df580237a3cfb08d586c9fbbb0f7ff29ad5b14ba",
    ),
    # The big model (~1.3 GB unpacked, up to 16 GB RAM with its rnnlm): size as published; no checksum is
    # published with it, so `hotline models fetch cn` asks for one.
    "cn": ModelSpec(
        key="cn",
        name="vosk-model-cn-0.22",
        url="https://alphacephei.com/vosk/models/vosk-model-cn-0.22.zip",
        size=1_358_736_686,
        sha256="",
    ),
}

CHUNK = 1 << 16
MAX_UNPACKED_FACTOR = 8  # a zip that inflates beyond 8× its size and beyond 20 GiB is refused as a bomb


class FetchError(Exception):
    """The model could not be installed; nothing was changed. The message says why."""


Progress = Callable[[int, int], None]


async def download(url: str, dest: Path, spec: ModelSpec, *, timeout_s: float = 3600.0,
                   progress: Progress | None = None) -> None:
    """Stream ``url`` to ``dest`` while counting bytes and hashing; raise FetchError on any mismatch."""
    digest = hashlib.sha256()
    got = 0
    timeout = aiohttp.ClientTimeout(total=timeout_s, sock_connect=30, sock_read=120)
    try:
        async with aiohttp.ClientSession(timeout=timeout) as session, session.get(url) as resp:
            if resp.status != 200:
                raise FetchError(f"download failed: HTTP {resp.status} from {url}")
            announced = resp.content_length
            if announced is not None and announced != spec.size:
                raise FetchError(f"size mismatch: server announces {announced} bytes, expected {spec.size}")
            with dest.open("wb") as fh:
                async for chunk in resp.content.iter_chunked(CHUNK):
                    got += len(chunk)
                    if got > spec.size:
                        raise FetchError(f"size mismatch: more than the expected {spec.size} bytes")
                    digest.update(chunk)
                    fh.write(chunk)
                    if progress is not None:
                        progress(got, spec.size)
                fh.flush()
                os.fsync(fh.fileno())
    except (aiohttp.ClientError, TimeoutError, OSError) as exc:
        raise FetchError(f"download failed: {exc.__class__.__name__}: {exc}") from exc
    if got != spec.size:
        raise FetchError(f"size mismatch: got {got} bytes, expected {spec.size}")
    if spec.sha256 and digest.hexdigest() != spec.sha256.lower():
        raise FetchError(f"sha256 mismatch: got {digest.hexdigest()}, expected {spec.sha256.lower()}")


def _safe_members(zf: zipfile.ZipFile, zip_size: int) -> list[zipfile.ZipInfo]:
    members = zf.infolist()
    total = sum(m.file_size for m in members)
    if total > max(zip_size * MAX_UNPACKED_FACTOR, 20 << 30):
        raise FetchError("the archive inflates to an implausible size")
    for m in members:
        path = PurePosixPath(m.filename)
        if path.is_absolute() or ".." in path.parts or "\\" in m.filename:
            raise FetchError(f"unsafe path in the archive: {m.filename!r}")
        mode = (m.external_attr >> 16) & 0o170000
        if mode == 0o120000:
            raise FetchError(f"symbolic link in the archive: {m.filename!r}")
    return members


def unpack(zip_path: Path, models_dir: Path, spec: ModelSpec, *, force: bool = False) -> Path:
    """Unpack into a temp dir beside the target, check it is a Vosk model, then rename it into place."""
    target = models_dir / spec.name
    staging = Path(tempfile.mkdtemp(prefix=f".{spec.name}.", dir=models_dir))
    try:
        try:
            with zipfile.ZipFile(zip_path) as zf:
                zf.extractall(staging, members=_safe_members(zf, zip_path.stat().st_size))
        except zipfile.BadZipFile as exc:
            raise FetchError(f"not a zip archive: {exc}") from exc
        root = staging / spec.name
        if not root.is_dir():
            entries = [p for p in staging.iterdir() if p.is_dir()]
            root = entries[0] if len(entries) == 1 else staging
        if not looks_like_model(root):
            raise FetchError("the archive does not contain a Vosk model (am/final.mdl, conf/model.conf)")
        old: Path | None = None
        if target.exists():
            if not force:
                raise FetchError(f"{target} already exists (use --force to replace it)")
            old = target.with_name(f".{spec.name}.old-{os.getpid()}")
            target.rename(old)
        root.rename(target)  # same filesystem: atomic
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
        return target
    finally:
        shutil.rmtree(staging, ignore_errors=True)


async def fetch(spec: ModelSpec, models_dir: Path, *, url: str | None = None, force: bool = False,
                progress: Progress | None = None, timeout_s: float = 3600.0) -> Path:
    """Download, verify and install ``spec`` under ``models_dir``; returns the model directory."""
    if not spec.sha256:
        raise FetchError(f"no published sha256 for {spec.key}: pass --sha256 with the checksum you trust")
    models_dir.mkdir(parents=True, exist_ok=True)
    target = models_dir / spec.name
    if looks_like_model(target) and not force:
        return target
    fd, tmp = tempfile.mkstemp(prefix=f".{spec.name}.", suffix=".zip.part", dir=models_dir)
    os.close(fd)
    zip_path = Path(tmp)
    try:
        await download(url or spec.url, zip_path, spec, timeout_s=timeout_s, progress=progress)
        return await asyncio.to_thread(unpack, zip_path, models_dir, spec, force=force)
    finally:
        with contextlib.suppress(FileNotFoundError):
            zip_path.unlink()
