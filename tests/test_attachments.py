"""Photos on the web form: kept on disk by content, only real images, shown to staff and nobody else."""

from __future__ import annotations

import struct
import time
import zlib
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestClient

from hotline.app import create_app
from hotline.appkeys import DISPATCHER, SETTINGS, STORE
from hotline.attachments import AttachmentError, AttachmentStore, name_of, sniff
from hotline.console.views import attachment_views
from hotline.redis_server import EmbeddedRedis
from tests.conftest import make_settings
from tests.console_support import staff_login
from tests.dispatch_support import CLASSIFICATION, Open311Receiver, wait_for
from tests.test_dispatch_app import dispatch_settings


def png(width: int = 2, height: int = 2, shade: int = 0) -> bytes:
    """A real PNG image (grey pixels): what a phone camera gives, minus the size."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    rows = b"".join(b"\x00" + bytes([shade]) * width for _ in range(height))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b""))


JPEG = b"\xff\xd8\xff\xe0\x00\x10JFIF\x00" + bytes(200) + b"\xff\xd9"


@pytest.fixture
async def client(aiohttp_client: Any, redis_server: EmbeddedRedis, tmp_path: Path, key_prefix: str) -> TestClient:
    settings = make_settings(redis_server.url, tmp_path, key_prefix)
    settings["intake"]["max_photo_bytes"] = 4096
    return await aiohttp_client(create_app(settings))


def form(text: str, *photos: tuple[str, bytes, str], token: str = "") -> aiohttp.FormData:
    data = aiohttp.FormData()
    data.add_field("text", text)
    data.add_field("contact", "13812345678")
    data.add_field("form_token", token)
    for filename, body, ctype in photos:
        data.add_field("photos", body, filename=filename, content_type=ctype)
    return data


def test_store_keeps_photos_by_content_and_refuses_everything_else(tmp_path: Path) -> None:
    store = AttachmentStore(tmp_path / "att", max_bytes=4096)
    ref = store.save(png())
    assert ref.startswith("upload:") and ref.endswith(".png") and store.save(png()) == ref
    name = name_of(ref)
    path = store.path(name)
    assert path is not None and path.read_bytes() == png()
    assert not list(path.parent.glob(".part-*"))  # no temporary file left behind
    assert sniff(JPEG) == "jpg" and sniff(b"RIFF\x00\x00\x00\x00WEBPVP8 ") == "webp"
    for bad, reason in ((b"", "not_a_photo"), (b"<svg onload=alert(1)>", "not_a_photo"),
                        (b"<html><script>x</script>", "not_a_photo"), (b"\xff\xd8\xff" + bytes(5000), "too_large")):
        with pytest.raises(AttachmentError, match=reason):
            store.save(bad)
    for hostile in ("../secret_key", "..%2Fsecret", name.upper(), name[:-4] + ".svg", "", name + "/x"):
        assert store.path(hostile) is None
    assert name_of("upload:../../etc/passwd") == "" and name_of("wechat:image?media_id=1") == ""


def test_staff_see_what_each_kind_of_attachment_can_open() -> None:
    shown = attachment_views([
        "upload:" + "a" * 64 + ".jpg", "wechat:image?media_id=M1&pic_url=http%3A%2F%2Fmmbiz.qpic.cn%2Fx",
        "wechat:image?media_id=M2&pic_url=javascript%3Aalert(1)", "telegram:photo?file_id=F",
        "https://city.example/media/1.jpg", "javascript:alert(1)"])
    assert [a["kind"] for a in shown] == ["photo", "link", "text", "text", "link", "text"]
    assert shown[0]["url"] == "/console/attachments/" + "a" * 64 + ".jpg"
    assert shown[1]["url"] == "http://mmbiz.qpic.cn/x" and shown[2]["url"] == ""  # never a script link


async def test_web_form_photos_reach_the_case_and_only_staff_open_them(client: TestClient) -> None:
    resp = await client.post("/submit", data=form("幸福小区门口路灯坏了，附上照片", ("a.png", png(), "image/png"),
                                                  ("b.jpg", JPEG, "image/jpeg"), token="t-photos"))
    assert resp.status == 201, await resp.text()
    store = client.app[STORE]
    case = await store.get_case(sorted(await store.case_ids(offset=0, limit=10))[-1])
    names = [name_of(a) for a in case.attachments]
    assert len(names) == 2 and all(names) and names[0].endswith(".png") and names[1].endswith(".jpg")

    url = f"/console/attachments/{names[0]}"
    assert (await client.get(url, allow_redirects=False)).status in (302, 303, 401)  # not for the public
    async with staff_login(client, "call_taker") as staff:
        got = await staff.get(url)
        assert got.status == 200 and await got.read() == png()
        assert got.headers["Content-Type"] == "image/png" and got.headers["X-Content-Type-Options"] == "nosniff"
        for bad in ("../secret_key", "%2E%2E%2Fsecret_key", "0" * 64 + ".png"):
            assert (await staff.get(f"/console/attachments/{bad}")).status == 404, bad
        page = await (await staff.page(f"/console/cases/{case.id}")).text()
        assert f'<img src="{url}"' in page


async def test_bad_photos_are_refused_and_no_case_is_filed(client: TestClient) -> None:
    store = client.app[STORE]
    before = await store.case_ids(offset=0, limit=100)
    cases = [
        (form("路灯坏了", ("x.jpg", b"<html><script>alert(1)</script></html>", "image/jpeg")), "JPEG、PNG 或 WebP"),
        (form("路灯坏了", ("big.jpg", b"\xff\xd8\xff" + bytes(5000), "image/jpeg")), "不能超过 4 KB"),
        (form("路灯坏了", *[(f"{i}.png", png(shade=i), "image/png") for i in range(4)]), "最多上传 3 张"),
    ]
    for data, message in cases:
        resp = await client.post("/submit", data=data)
        assert resp.status == 422 and message in await resp.text()
    # A refused complaint stores no photo; an empty file part (no photo chosen) is no photo.
    resp = await client.post("/submit", data=form("", ("a.png", png(shade=9), "image/png")))
    assert resp.status == 422 and "请描述" in await resp.text()
    assert not list((client.app[SETTINGS].data_dir / "attachments").rglob("*.png"))
    assert await store.case_ids(offset=0, limit=100) == before
    resp = await client.post("/submit", data=form("路灯坏了没人修", ("", b"", "application/octet-stream")))
    assert resp.status == 201
    # The JSON API cannot point a case at a stored photo: only the form names them.
    forged = {"text": "路灯坏了", "attachments": ["upload:" + "a" * 64 + ".png"]}
    resp = await client.post("/api/v1/complaints", json=forged)
    assert resp.status == 422 and (await resp.json())["error"]["code"] == "bad_attachments"


async def test_work_order_carries_signed_photo_links_the_department_can_open(
        aiohttp_client: Any, redis_server: EmbeddedRedis, tmp_path: Path, key_prefix: str,
        receiver: Open311Receiver) -> None:
    settings = dispatch_settings(redis_server, tmp_path, key_prefix, receiver.url)
    settings["server"]["public_url"] = "https://12345.example.gov.cn"
    app_client = await aiohttp_client(create_app(settings))
    resp = await app_client.post("/submit", data=form("幸福小区门口路灯坏了", ("a.png", png(), "image/png")))
    assert resp.status == 201
    store = app_client.app[STORE]
    case = await store.get_case(sorted(await store.case_ids(offset=0, limit=10))[-1])
    await app_client.app[DISPATCHER].confirm(case.id, CLASSIFICATION, "staff:a")
    await wait_for(lambda: any(a.case_id == case.id for a in receiver.orders))
    link = next(a for a in receiver.orders if a.case_id == case.id).form["media_url"]
    assert link.startswith("https://12345.example.gov.cn/media/") and name_of(case.attachments[0]) in link
    path = link.removeprefix("https://12345.example.gov.cn")
    got = await app_client.get(path)  # no login: the link itself is the permission
    assert got.status == 200 and await got.read() == png() and got.headers["Content-Type"] == "image/png"
    name, query = path.removeprefix("/media/").split("?")
    exp, sig = (p.split("=")[1] for p in query.split("&"))
    for bad in (f"/media/{name}?exp={exp}&sig={'0' * 32}", f"/media/{name}?exp={int(exp) + 1}&sig={sig}",
                f"/media/{name}", f"/media/{name}?exp=%C2%B2&sig={sig}", f"/media/../secret_key?exp={exp}&sig={sig}"):
        assert (await app_client.get(bad)).status == 404, bad
    media = app_client.app[DISPATCHER].media
    assert media is not None and media.valid(name, exp, sig, now=time.time())
    assert not media.valid(name, exp, sig, now=int(exp) + 1)  # expired


async def test_unwritable_photo_store_files_nothing_and_says_try_again(client: TestClient) -> None:
    root = client.app[SETTINGS].data_dir / "attachments"
    root.parent.mkdir(parents=True, exist_ok=True)
    root.write_text("a file where the photo directory should be")  # every write below it fails
    store = client.app[STORE]
    before = await store.case_ids(offset=0, limit=100)
    resp = await client.post("/submit", data=form("井盖丢了", ("a.png", png(), "image/png"), token="t-disk"))
    assert resp.status == 503 and resp.headers["Retry-After"] == "30" and "稍后再试" in await resp.text()
    assert await store.case_ids(offset=0, limit=100) == before
    # Without a photo the complaint still goes through.
    assert (await client.post("/submit", data=form("井盖丢了", token="t-disk2"))).status == 201
