"""The citizen web form, the JSON API and the Open311 door under the input a QA pass found harmful: HEAD
look-ups, reused request ids, full-width phone numbers, lone surrogates, too few digits, files where words
belong, and the error answers of aiohttp itself. Whole app, real embedded Valkey, real loopback server."""

from __future__ import annotations

import asyncio
import io
import json
import time
import urllib.parse
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp.test_utils import TestClient

from hotline.app import create_app
from hotline.appkeys import STORE
from hotline.nlp.text import normalize
from hotline.records import Case
from hotline.redis_server import EmbeddedRedis
from hotline.status import Status
from tests.conftest import make_settings
from tests.test_limits import limited_client

API = "/api/v1/complaints"
OPEN311 = "/open311/v2/requests.json"
SERVICE = "城乡建设/城市建设和市政管理"


async def post_json(client: TestClient, body: Any, headers: dict[str, str] | None = None) -> tuple[int, Any]:
    # ensure_ascii keeps a lone surrogate as the escape "\udc00", as a broken client would send it.
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    resp = await client.post(API, data=data, headers={"Content-Type": "application/json", **(headers or {})})
    return resp.status, await resp.json()


async def raw_request(client: TestClient, head: bytes, body: bytes = b"") -> tuple[int, bytes]:
    """One request written byte for byte: aiohttp's client will not send a header that is not UTF-8."""
    reader, writer = await asyncio.open_connection(client.server.host, client.server.port)
    writer.write(head + b"Content-Length: %d\r\nConnection: close\r\n\r\n" % len(body) + body)
    await writer.drain()
    raw = await reader.read()
    writer.close()
    status_line, _, rest = raw.partition(b"\r\n")
    return int(status_line.split()[1]), rest.partition(b"\r\n\r\n")[2]


def assert_chinese(message: str) -> None:
    assert message and any("\u4e00" <= ch <= "\u9fff" for ch in message), message
    assert "Method Not Allowed" not in message and "Maximum request body" not in message


def assert_georeport(body: Any, status: int) -> str:
    assert isinstance(body, list) and len(body) == 1 and set(body[0]) == {"code", "description"}, body
    assert body[0]["code"] == status
    assert_chinese(body[0]["description"])
    return body[0]["description"]


# 1. HEAD look-ups ------------------------------------------------------------------------------------

async def test_head_lookups_spend_the_lookup_budget(aiohttp_client: Any, redis_server: EmbeddedRedis,
                                                    tmp_path: Path, key_prefix: str) -> None:
    client = await limited_client(aiohttp_client, redis_server, tmp_path, key_prefix, lookup_per_minute=5)
    status, made = await post_json(client, {"text": "幸福小区路灯坏了", "contact": "13812345678"})
    assert status == 201
    case_id = made["case_id"]
    # A HEAD answer's status alone tells right digits (200) from wrong (404): each door's HEAD must count.
    heads = [f"/api/v1/cases/{case_id}?last4=0000", f"/api/v1/cases/{case_id}?last4=0001",
             f"/open311/v2/requests/{case_id}.json?last4=0002", f"/open311/v2/requests/{case_id}.json?last4=0003",
             "/status"]
    seen = [(await client.head(path)).status for path in heads]
    assert 429 not in seen, seen
    resp = await client.head(f"/api/v1/cases/{case_id}?last4=5678")
    assert resp.status == 429 and 1 <= int(resp.headers["Retry-After"]) <= 60
    assert (await client.get(f"/api/v1/cases/{case_id}?last4=5678")).status == 429


# 2. Idempotency-Key and form_token tied to the content --------------------------------------------------

async def test_a_reused_idempotency_key_with_other_content_is_refused(client: TestClient) -> None:
    store = client.app[STORE]
    first = {"text": "小区噪音扰民，每晚施工到凌晨", "address": "东风路1号", "contact": "13700001111"}
    s1, b1 = await post_json(client, first, {"Idempotency-Key": "k-42"})
    assert s1 == 201
    other = {"text": "井盖丢失，夜里很危险", "address": "西湖路2号", "contact": "13900002222"}
    s2, b2 = await post_json(client, other, {"Idempotency-Key": "k-42"})
    assert s2 == 422 and b2["error"]["code"] == "idempotency_key_reused", b2
    assert_chinese(b2["error"]["message"])
    assert b1["case_id"] not in json.dumps(b2)  # another citizen's case number is not handed out
    # The same content under another field order is the same request; the first case, as before.
    s3, b3 = await post_json(client, dict(reversed(first.items())), {"Idempotency-Key": "k-42"})
    assert (s3, b3["case_id"], b3["created"]) == (200, b1["case_id"], False)
    # The second complaint under a key of its own is filed.
    s4, b4 = await post_json(client, other, {"Idempotency-Key": "k-43"})
    assert s4 == 201 and b4["case_id"] != b1["case_id"]
    assert await store.count() == 2


async def test_parallel_requests_with_one_key_make_one_case(client: TestClient) -> None:
    same = {"text": "阳光小区停水一整天了", "contact": "13600003333"}

    def body(i: int) -> dict[str, str]:
        return same if i % 2 else {"text": f"第{i}件别的事：路面塌陷", "contact": "13600003333"}

    results = await asyncio.gather(*(post_json(client, body(i), {"Idempotency-Key": "burst-1"}) for i in range(50)))
    assert await client.app[STORE].count() == 1
    ids = {b["case_id"] for s, b in results if s in (200, 201)}
    assert len(ids) == 1
    case = await client.app[STORE].get_case(ids.pop())
    # Whichever content came first owns the key; every other content was refused, none was dropped silently.
    for i, (s, b) in enumerate(results):
        if normalize(body(i)["text"]) == case.normalized_text:
            assert s in (200, 201), b
        else:
            assert s == 422 and b["error"]["code"] == "idempotency_key_reused", b


async def test_open311_reused_key_with_other_content_is_refused(client: TestClient) -> None:
    req = {"service_code": SERVICE, "description": "滨河路人行道地砖松动，老人容易绊倒",
           "address_string": "滨河路", "device_id": "app-9"}
    r1 = await client.post(OPEN311, data=req, headers={"Idempotency-Key": "o-1"})
    assert r1.status == 201
    r2 = await client.post(OPEN311, data={**req, "description": "东门菜市场占道经营"},
                           headers={"Idempotency-Key": "o-1"})
    assert r2.status == 400
    assert "Idempotency-Key" in assert_georeport(await r2.json(), 400)
    r3 = await client.post(OPEN311, data=req, headers={"Idempotency-Key": "o-1"})
    assert r3.status == 200
    assert (await r3.json())[0]["service_request_id"] == (await r1.json())[0]["service_request_id"]


async def test_web_form_back_button_with_another_problem_is_a_new_complaint(client: TestClient) -> None:
    store = client.app[STORE]
    page = {"text": "幸福小区3栋楼下的路灯坏了一个星期", "address": "幸福小区3栋", "form_token": "page-1"}
    r1 = await client.post("/submit", data=page)
    assert r1.status == 201
    # A double click (or a retried post) of the same form is the same case.
    r2 = await client.post("/submit", data=page)
    assert r2.status == 200 and "您已提交过相同的诉求" in await r2.text()
    # Back, then a different problem on the same page: filed, with a case number of its own.
    r3 = await client.post("/submit", data={**page, "text": "东门菜市场门口占道经营，车辆无法通行",
                                            "address": "东门菜市场"})
    text = await r3.text()
    assert r3.status == 201 and "已受理" in text and "您已提交过相同的诉求" not in text
    assert await store.count() == 2
    # Parallel posts of one page still make one case.
    burst = {"text": "西湖路2号井盖丢失", "address": "西湖路2号", "form_token": "page-2"}
    statuses = await asyncio.gather(*(client_status(client, burst) for _ in range(30)))
    assert statuses.count(201) == 1 and statuses.count(200) == 29
    assert await store.count() == 3


async def client_status(client: TestClient, data: dict[str, str]) -> int:
    resp = await client.post("/submit", data=data)
    await resp.read()
    return resp.status


# 3. Resubmission: the place counts, and the real client address -------------------------------------------

async def test_the_same_words_about_another_place_are_a_new_case(client: TestClient) -> None:
    store = client.app[STORE]
    words = "楼下餐馆油烟太大"
    s1, b1 = await post_json(client, {"text": words, "address": "东风路1号", "contact": "13800001234"})
    s2, b2 = await post_json(client, {"text": words, "address": "西湖路2号", "contact": "13800001234"})
    assert (s1, s2) == (201, 201) and b1["case_id"] != b2["case_id"]
    assert (await store.get_case(b2["case_id"])).address == "西湖路2号"
    s3, b3 = await post_json(client, {"text": words, "address": "西湖路2号", "contact": "13800001234"})
    assert (s3, b3["case_id"]) == (200, b2["case_id"])
    # Places given as coordinates: ~2 km apart are two, a few metres apart (the same spot) are one.
    here = {"text": words, "contact": "13800005678", "location": {"lat": 28.2001, "lon": 112.9001}}
    far = {**here, "location": {"lat": 28.2201, "lon": 112.9001}}
    near = {**here, "location": {"lat": 28.20012, "lon": 112.90008}}
    s4, b4 = await post_json(client, here)
    s5, b5 = await post_json(client, far)
    s6, b6 = await post_json(client, near)
    assert (s4, s5, s6) == (201, 201, 200) and b4["case_id"] != b5["case_id"] and b6["case_id"] == b4["case_id"]


async def test_anonymous_citizens_behind_the_proxy_are_told_apart(aiohttp_client: Any, redis_server: EmbeddedRedis,
                                                                  tmp_path: Path, key_prefix: str) -> None:
    settings = make_settings(redis_server.url, tmp_path, key_prefix, limits={"trusted_proxies": ["127.0.0.1/32"]})
    client = await aiohttp_client(create_app(settings))
    words = {"text": "人民公园的长椅坏了好几张"}

    async def send(xff: str, token: str) -> int:
        resp = await client.post("/submit", data={**words, "form_token": token}, headers={"X-Forwarded-For": xff})
        await resp.read()
        return resp.status

    # Two citizens behind the one proxy: two complaints, not one "resubmission".
    assert await send("203.0.113.5", "a1") == 201
    assert await send("198.51.100.8", "b1") == 201
    # The same citizen again from a fresh form: the resubmission it is.
    assert await send("203.0.113.5", "a2") == 200
    assert await client.app[STORE].count() == 2


# 4. Full-width phone numbers ------------------------------------------------------------------------------

async def test_a_full_width_phone_is_stored_as_ascii_and_every_lookup_works(client: TestClient) -> None:
    store = client.app[STORE]
    status, made = await post_json(client, {"text": "幸福小区路灯坏了", "contact": "１３８００１３８０００"})
    assert status == 201
    case_id = made["case_id"]
    assert (await store.get_case(case_id)).contact == "13800138000"
    await assert_lookups(client, case_id, "8000")
    # Open311 phone too.
    resp = await client.post(OPEN311, data={"service_code": SERVICE, "description": "光明小区路灯不亮",
                                            "address_string": "光明小区", "phone": "１３９（0010）２２２２"})
    assert resp.status == 201
    sid = (await resp.json())[0]["service_request_id"]
    assert (await store.get_case(sid)).contact == "139(0010)2222"


async def test_cases_stored_with_a_full_width_contact_are_looked_up_without_error(client: TestClient) -> None:
    # Written before contacts were normalised: the record holds the digits as typed.
    store = client.app[STORE]
    now = time.time()
    case = Case(id=await store.allocate_id(now), channel="web", sender="１３９００１３９０００",
                status=Status.CLASSIFIED, created_at=now, updated_at=now, text="楼道灯坏了",
                normalized_text="楼道灯坏了", contact="１３９００１３９０００")
    assert (await store.create_case(case)).created
    await assert_lookups(client, case.id, "9000")
    view = await (await client.get(f"/api/v1/cases/{case.id}?last4=9000")).json()
    assert view["contact"] == "139****9000"


async def assert_lookups(client: TestClient, case_id: str, digits: str) -> None:
    wide = "".join(chr(ord(d) + 0xFEE0) for d in digits)
    for last4 in (digits, wide):
        resp = await client.get(f"/api/v1/cases/{case_id}", params={"last4": last4})
        assert resp.status == 200 and (await resp.json())["details_hidden"] is False
        resp = await client.get(f"/open311/v2/requests/{case_id}.json", params={"last4": last4})
        assert resp.status == 200 and (await resp.json())[0]["description"]
        resp = await client.post("/status", data={"case_id": case_id, "last4": last4})
        assert resp.status == 200 and case_id in await resp.text()
    for wrong in ("0000", "００００", "²²²²", "١٢٣٤"):
        assert (await client.get(f"/api/v1/cases/{case_id}", params={"last4": wrong})).status == 404
        assert (await client.get(f"/open311/v2/requests/{case_id}.json", params={"last4": wrong})).status == 404
        assert (await client.post("/status", data={"case_id": case_id, "last4": wrong})).status == 404


# 5. Hostile values -----------------------------------------------------------------------------------------

async def test_lone_surrogates_in_api_fields_are_refused_never_a_500(client: TestClient) -> None:
    """Half of a UTF-16 pair (an emoji a client cut in two) is no text: refused as a whole, nothing stored."""
    store = client.app[STORE]
    base = {"text": "路灯坏了一周", "contact": "13712340000"}
    for extra in ({"text": "路灯坏了\udc00一周"}, {"address": "东风路\udc001号"}, {"name": "\ud83c王先生"},
                  {"location": {"lat": 28.2, "lon": 112.9, "label": "光明\udfff小区"}},
                  {"attachments": ["https://img.example.org/\udc00a.jpg"]}):
        status, body = await post_json(client, {**base, **extra})
        assert status == 400 and body["error"]["code"] == "bad_json" and "代理项" in body["error"]["message"]
    assert await store.count() == 0


async def test_lone_surrogates_in_open311_json_are_refused_never_a_500(client: TestClient) -> None:
    store = client.app[STORE]
    base = {"service_code": SERVICE, "description": "光明小区3号楼前路灯不亮", "address_string": "光明小区",
            "phone": "13812345678"}
    for name, value in [("address_string", "光明\udc00小区"), ("first_name", "\udc00明"),
                        ("device_id", "dev\udc00-1"), ("service_code", SERVICE + "\udc00")]:
        resp = await client.post(OPEN311, data=json.dumps({**base, name: value}).encode(),
                                 headers={"Content-Type": "application/json"})
        assert resp.status == 400, (name, await resp.text())
        assert "代理项" in assert_georeport(await resp.json(), 400)
    assert await store.count() == 0


async def test_an_idempotency_key_that_is_not_utf8_is_a_key_like_any_other(client: TestClient) -> None:
    body = json.dumps({"text": "幸福小区路灯坏了一周", "contact": "13812345678"}).encode()
    head = (b"POST /api/v1/complaints HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Idempotency-Key: k\xff\xfe-1\r\n")
    s1, r1 = await raw_request(client, head, body)
    s2, r2 = await raw_request(client, head, body)
    assert (s1, s2) == (201, 200) and json.loads(r1)["case_id"] == json.loads(r2)["case_id"]
    form = urllib.parse.urlencode({"service_code": SERVICE, "description": "路灯不亮", "address_string": "x"}).encode()
    head = (b"POST /open311/v2/requests.json HTTP/1.1\r\nHost: x\r\n"
            b"Content-Type: application/x-www-form-urlencoded\r\nIdempotency-Key: \xc3\x28\x80\r\n")
    s3, _ = await raw_request(client, head, form)
    s4, _ = await raw_request(client, head, form)
    assert (s3, s4) == (201, 200)


async def test_a_huge_integer_coordinate_is_a_422(client: TestClient) -> None:
    for raw in ('{"text": "路灯坏了", "location": {"lat": ' + "9" * 400 + ', "lon": 1}}',
                '{"text": "路灯坏了", "location": {"lat": 1, "lon": -' + "1" * 400 + "}}"):
        status, body = await post_json(client, raw.encode())
        assert status == 422 and body["error"]["code"] == "bad_location", body
    assert await client.app[STORE].count() == 0


# 6. Contacts with too few digits --------------------------------------------------------------------------

async def test_a_contact_needs_at_least_five_digits(client: TestClient) -> None:
    store = client.app[STORE]
    for bad in ("-----", "(((())))", "1 2 3", "1234", "+() - ()"):
        status, body = await post_json(client, {"text": "路灯坏了", "contact": bad})
        assert status == 422 and body["error"]["code"] == "bad_contact", (bad, body)
        assert "联系电话格式不正确" in body["error"]["message"]
        resp = await client.post("/submit", data={"text": "路灯坏了", "contact": bad, "form_token": f"t{bad}"})
        assert resp.status == 422 and "联系电话格式不正确" in await resp.text()
        resp = await client.post(OPEN311, data={"service_code": SERVICE, "description": "路灯坏了",
                                                "address_string": "x", "phone": bad})
        assert resp.status == 400 and "联系电话格式不正确" in assert_georeport(await resp.json(), 400)
    assert await store.count() == 0
    # Real numbers: service numbers, local landlines, with area code and extension, mobiles, +86.
    good = ["12345", "95598", "6543210", "88886666", "0731-88886666", "(010) 6552 9988", "010-12345678-801",
            "13800138000", "+86 138 0013 8000", "＋８６ １３８ ００１３ ８０００"]
    for i, number in enumerate(good):
        status, body = await post_json(client, {"text": f"第{i}处路灯坏了", "contact": number})
        assert status == 201, (number, body)


# 7. Files where words belong --------------------------------------------------------------------------------

async def test_a_form_field_sent_as_a_file_is_refused(client: TestClient) -> None:
    store = client.app[STORE]
    for field in ("text", "address", "contact", "name", "form_token"):
        form = aiohttp.FormData()
        values = {"text": "幸福小区路灯坏了一周", "address": "幸福小区", "contact": "13812345678", "name": "王",
                  "form_token": f"ff-{field}"}
        for k, v in values.items():
            if k == field:
                form.add_field(k, io.BytesIO(v.encode()), filename="t.txt", content_type="text/plain")
            else:
                form.add_field(k, v)
        resp = await client.post("/submit", data=form)
        page = await resp.text()
        assert resp.status == 422, (field, page)
        assert "只有“现场照片”可以上传文件" in page and "FileField" not in page
    # A part of binary type without a file name arrives as bytes: no words either.
    body = ('--x\r\nContent-Disposition: form-data; name="text"\r\nContent-Type: application/octet-stream\r\n\r\n'
            '幸福小区路灯坏了一周\r\n--x\r\nContent-Disposition: form-data; name="form_token"\r\n\r\nff-bytes\r\n'
            '--x--\r\n').encode()
    status, page = await raw_request(
        client, b"POST /submit HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary=x\r\n", body)
    assert status == 422 and b"bytearray" not in page
    assert await store.count() == 0


async def test_a_part_with_an_unknown_charset_is_a_400(client: TestClient) -> None:
    body = (b'--x\r\nContent-Disposition: form-data; name="text"\r\nContent-Type: text/plain; charset=bogus\r\n\r\n'
            b"hello\r\n--x--\r\n")
    for path in ("/submit", "/status", OPEN311):
        head = b"POST %s HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary=x\r\n" % path.encode()
        status, _ = await raw_request(client, head, body)
        assert status == 400, path


# 8. aiohttp's own answers in Chinese, and in the GeoReport form on /open311/ ----------------------------------

async def test_method_not_allowed_is_explained_in_chinese(client: TestClient) -> None:
    resp = await client.get("/submit")
    page = await resp.text()
    assert resp.status == 405 and "POST" in resp.headers["Allow"]
    assert "Method Not Allowed" not in page and "返回首页" in page and "此页面不能直接打开" in page
    resp = await client.delete(API)
    body = await resp.json()
    assert resp.status == 405 and "POST" in resp.headers["Allow"]
    assert body["error"]["code"] == "method_not_allowed"
    assert_chinese(body["error"]["message"])


async def test_open311_errors_of_the_server_itself_are_georeport_lists(aiohttp_client: Any,
                                                                        redis_server: EmbeddedRedis,
                                                                        tmp_path: Path, key_prefix: str) -> None:
    # Two: the oversized request spends one as well (it is counted before its body is read).
    client = await limited_client(aiohttp_client, redis_server, tmp_path, key_prefix, submit_per_minute=2)
    resp = await client.delete(OPEN311)
    assert resp.status == 405 and "POST" in resp.headers["Allow"]
    assert_georeport(await resp.json(), 405)
    resp = await client.post(OPEN311, data=b"x" * 2_000_000,
                             headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert resp.status == 413
    assert_georeport(await resp.json(), 413)
    req = {"service_code": SERVICE, "description": "光明小区路灯不亮", "address_string": "光明小区"}
    assert (await client.post(OPEN311, data=req)).status == 201
    resp = await client.post(OPEN311, data={**req, "description": "滨河路地砖松动"})
    assert resp.status == 429 and int(resp.headers["Retry-After"]) >= 1
    assert "秒后再试" in assert_georeport(await resp.json(), 429)
    resp = await client.get("/open311/v2/nothing.json")
    assert resp.status == 404
    assert_georeport(await resp.json(), 404)
