"""Model fetching against a real aiohttp server on 127.0.0.1 serving small zips (nothing is downloaded)."""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import io
import subprocess
import sys
import zipfile
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from hotline.ivr.models import MODELS, FetchError, ModelSpec, fetch

ROOT = Path(__file__).resolve().parent.parent
NAME = "vosk-model-test-0.1"


def model_zip(name: str = NAME, extra: dict[str, bytes] | None = None, model: bool = True) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        if model:
            zf.writestr(f"{name}/am/final.mdl", b"\x00" * 4096)
            zf.writestr(f"{name}/conf/model.conf", b"--beam=10.0\n")
            zf.writestr(f"{name}/conf/mfcc.conf", b"--sample-frequency=16000\n")
            zf.writestr(f"{name}/README", b"test model\n")
        for path, data in (extra or {}).items():
            zf.writestr(path, data)
    return buf.getvalue()


def spec_for(data: bytes, **over: object) -> ModelSpec:
    spec = ModelSpec(key="test", name=NAME, url="", size=len(data), sha256=hashlib.sha256(data).hexdigest())
    return dataclasses.replace(spec, **over)


class Mirror:
    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.hits: dict[str, int] = {}
        self.server: TestServer | None = None

    def url(self, name: str) -> str:
        assert self.server is not None
        return str(self.server.make_url(f"/{name}"))

    async def handle(self, request: web.Request) -> web.StreamResponse:
        name = request.match_info["name"]
        self.hits[name] = self.hits.get(name, 0) + 1
        if name not in self.files:
            raise web.HTTPNotFound()
        return web.Response(body=self.files[name], content_type="application/zip")


@pytest.fixture
async def mirror() -> AsyncIterator[Mirror]:
    m = Mirror()
    app = web.Application()
    app.router.add_get("/{name}", m.handle)
    m.server = TestServer(app, host="127.0.0.1")
    await m.server.start_server()
    yield m
    await m.server.close()


def leftovers(models_dir: Path) -> list[str]:
    return sorted(p.name for p in models_dir.iterdir() if p.name.startswith("."))


async def test_fetch_verifies_and_installs_atomically(mirror: Mirror, tmp_path: Path) -> None:
    data = model_zip()
    mirror.files["m.zip"] = data
    path = await fetch(spec_for(data), tmp_path, url=mirror.url("m.zip"))
    assert path == tmp_path / NAME
    assert (path / "am" / "final.mdl").is_file() and (path / "conf" / "model.conf").is_file()
    assert leftovers(tmp_path) == []
    # Installed already: no second download.
    await fetch(spec_for(data), tmp_path, url=mirror.url("m.zip"))
    assert mirror.hits["m.zip"] == 1
    # --force replaces it with the new content.
    newer = model_zip(extra={f"{NAME}/NEW": b"2"})
    mirror.files["m.zip"] = newer
    await fetch(spec_for(newer), tmp_path, url=mirror.url("m.zip"), force=True)
    assert (path / "NEW").is_file()
    assert leftovers(tmp_path) == []


@pytest.mark.parametrize("case", ["sha256", "size_short", "size_long", "http_404", "not_zip", "no_model",
                                  "zip_slip", "no_checksum"])
async def test_bad_downloads_install_nothing(mirror: Mirror, tmp_path: Path, case: str) -> None:
    data = model_zip()
    mirror.files["m.zip"] = data
    spec = spec_for(data)
    name = "m.zip"
    expect = ""
    if case == "sha256":
        spec, expect = spec_for(data, sha256="0" * 64), "sha256 mismatch"
    elif case == "size_short":
        spec, expect = spec_for(data, size=len(data) + 10), "size mismatch"
    elif case == "size_long":
        spec, expect = spec_for(data, size=len(data) - 10), "size mismatch"
    elif case == "http_404":
        name, expect = "missing.zip", "HTTP 404"
    elif case == "not_zip":
        mirror.files[name] = b"<html>not a zip</html>"
        spec, expect = spec_for(mirror.files[name]), "not a zip"
    elif case == "no_model":
        mirror.files[name] = model_zip(model=False, extra={"something/else.txt": b"x"})
        spec, expect = spec_for(mirror.files[name]), "does not contain a Vosk model"
    elif case == "zip_slip":
        mirror.files[name] = model_zip(extra={"../../evil.txt": b"x"})
        spec, expect = spec_for(mirror.files[name]), "unsafe path"
    elif case == "no_checksum":
        spec, expect = spec_for(data, sha256=""), "--sha256"
    with pytest.raises(FetchError, match=expect):
        await fetch(spec, tmp_path, url=mirror.url(name))
    assert not (tmp_path / NAME).exists()
    assert leftovers(tmp_path) == []
    assert not (tmp_path.parent / "evil.txt").exists()


def test_official_model_parameters() -> None:
    small = MODELS["small-cn"]
    assert small.url == "https://alphacephei.com/vosk/models/vosk-model-small-cn-0.22.zip"
    assert small.size == 43_898_754
    assert small.sha256 == "3af8b0e7e0f835ae9d414ce5df580237a3cfb08d586c9fbbb0f7ff29ad5b14ba"


async def test_cli_fetch_refuses_a_wrong_file(mirror: Mirror, tmp_path: Path) -> None:
    # The official size and checksum are checked against what the mirror serves: a small zip is refused.
    mirror.files["small.zip"] = model_zip(name=MODELS["small-cn"].name)
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "hotline", "models", "fetch", "small-cn", "--data-dir", str(tmp_path),
        "--url", mirror.url("small.zip"), cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    _out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 1
    # Exactly one line on stderr, no blank line before it.
    assert err.decode().startswith("hotline: model not installed: size mismatch") and err.decode().count("\n") == 1
    assert not (tmp_path / "models" / MODELS["small-cn"].name).exists()
    assert leftovers(tmp_path / "models") == []


class Stderr(io.StringIO):
    def __init__(self, tty: bool) -> None:
        super().__init__()
        self.tty = tty

    def isatty(self) -> bool:
        return self.tty


@pytest.mark.parametrize("tty", [False, True])
async def test_cli_fetch_failure_is_one_line_and_ends_the_progress_line(
        mirror: Mirror, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, tty: bool) -> None:
    from hotline.cli import main

    # A download that completes (so a terminal sees the progress bar) and then fails its checksum.
    data = model_zip(name=MODELS["small-cn"].name)
    mirror.files["small.zip"] = data
    monkeypatch.setitem(MODELS, "small-cn", spec_for(data, name=MODELS["small-cn"].name, sha256="0" * 64))
    err = Stderr(tty)
    monkeypatch.setattr(sys, "stderr", err)
    argv = ["models", "fetch", "small-cn", "--data-dir", str(tmp_path), "--url", mirror.url("small.zip")]
    assert await asyncio.to_thread(main, argv) == 1
    lines = err.getvalue().split("\n")
    assert lines[-1] == "" and lines[-2].startswith("hotline: model not installed: sha256 mismatch")
    if tty:  # the bar's line is ended, then the one line of the failure
        assert len(lines) == 3 and lines[0].startswith("\r" + MODELS["small-cn"].name + ": 100%")
    else:
        assert len(lines) == 2
    assert not (tmp_path / "models" / MODELS["small-cn"].name).exists()


async def test_cli_fetch_into_a_file_exits_2(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from hotline.cli import main

    dest = tmp_path / "models"
    dest.write_text("not a directory")
    err = Stderr(False)
    monkeypatch.setattr(sys, "stderr", err)
    argv = ["models", "fetch", "small-cn", "--data-dir", str(tmp_path), "--dest", str(dest)]
    assert await asyncio.to_thread(main, argv) == 2
    assert err.getvalue() == f"hotline: --dest {dest}: is a file, not a directory\n"
