"""The citizens' HTML doors (forms and pages outside the OpenAPI document) under hostile input.

A seeded sweep: each request picks a route, a body encoding (form, multipart, JSON, raw bytes) and field
values from a pool of troublemakers — digit look-alikes, control and surrogate characters, huge and deeply
nested values, path tricks — mixed with real values (an existing case number, its phone digits, a valid
answer token) so that some requests get past the first checks. No answer may be a 5xx, nothing may be
logged as an unhandled error, and no case may be left half-written.
"""

from __future__ import annotations

import io
import logging
import random
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestClient

from hotline.appkeys import ANSWERS, STORE

REQUESTS = 1500
SEED = 20261124

TROUBLE = ["", " ", "²", "١٢٣٤", "①", "0" * 40, "9" * 400, "\x00", "\x1b[31m", "\u202e", "\ufeff", "é" * 3000,
           "../../etc/passwd", "%00", "%2e%2e%2f", "<script>alert(1)</script>", "{{7*7}}", "[" * 2000, "1e999",
           "-1", "NaN", "true", "null", "13800138000", "110101199003071234", "a" * 70_000, "😀" * 50]

ROUTES: list[tuple[str, str, list[str]]] = [
    ("POST", "/submit", ["text", "address", "contact", "name", "lat", "lon", "form_token", "website", "photos"]),
    ("POST", "/status", ["case_id", "last4"]),
    ("GET", "/status", ["case_id", "last4"]),
    ("POST", "/answer/feedback", ["case_id", "token", "resolved"]),
    ("GET", "/survey/{v}", []),
    ("POST", "/survey/{v}", ["resolved", "satisfaction", "comment", "report_id"]),
    ("GET", "/", ["lang"]),
    ("GET", "/console/login", ["next", "expired"]),
    ("POST", "/console/login", ["name", "password", "csrf_token", "next"]),
    ("GET", "/open311/v2/services.json", ["jurisdiction_id"]),
    ("GET", "/media/{v}", ["exp", "sig"]),
    ("GET", "/console/attachments/{v}", []),
    ("GET", "/open311/v2/requests/{v}.json", ["last4", "jurisdiction_id"]),
    ("POST", "/open311/v2/requests.json", ["service_code", "description", "lat", "long", "address_string", "phone",
                                           "first_name", "last_name", "media_url", "device_id", "api_key"]),
]


def _body(rnd: random.Random, fields: dict[str, str]) -> dict[str, Any]:
    kind = rnd.random()
    if kind < 0.5:
        return {"data": fields}
    if kind < 0.7:
        form = aiohttp.FormData()
        for k, v in fields.items():
            # Every other field a file upload where text is expected.
            if rnd.random() < 0.5:
                form.add_field(k, io.BytesIO(v.encode("utf-8", "surrogatepass")), filename="x.txt")
            else:
                form.add_field(k, v)
        return {"data": form}
    if kind < 0.9:
        return {"json": fields}
    raw = rnd.choice([b"\xff\xfe\x00", b"[" * 5000, b"a=%ZZ&b=%", b"--x\r\nContent-Disposition: form-data\r\n\r\n"])
    return {"data": raw, "headers": {"Content-Type": rnd.choice(["application/x-www-form-urlencoded",
                                                                  "multipart/form-data; boundary=x",
                                                                  "application/json", "text/plain"])}}


async def test_forms_never_answer_5xx(client: TestClient, caplog: pytest.LogCaptureFixture) -> None:
    store = client.app[STORE]
    made = await client.post("/api/v1/complaints", json={"text": "请问新生儿医保怎么办理？", "contact": "13912345678"})
    case_id = (await made.json())["case_id"]
    real = [case_id, "5678", client.app[ANSWERS].token(case_id), "yes", "no", "满意", "1",
            "城乡建设/城市建设和市政管理"]
    rnd = random.Random(SEED)
    statuses: dict[int, int] = {}
    caplog.set_level(logging.ERROR, logger="hotline")
    for _ in range(REQUESTS):
        method, path, names = rnd.choice(ROUTES)
        pool = TROUBLE if rnd.random() < 0.7 else real
        path = path.replace("{v}", rnd.choice(pool).replace("/", "_")[:300] or "x")
        fields = {n: rnd.choice(TROUBLE if rnd.random() < 0.6 else real) for n in names if rnd.random() < 0.7}
        headers = {"Accept": "text/html"} if rnd.random() < 0.5 else {}
        if method == "GET":
            resp = await client.get(path, params=fields, headers=headers, allow_redirects=False)
        else:
            kwargs = _body(rnd, fields)
            resp = await client.post(path, headers={**headers, **kwargs.pop("headers", {})}, allow_redirects=False,
                                     **kwargs)
        await resp.read()
        statuses[resp.status] = statuses.get(resp.status, 0) + 1
        assert resp.status < 500, (method, path, {k: v[:40] for k, v in fields.items()}, resp.status)
    print("\n", dict(sorted(statuses.items())))
    assert not [r for r in caplog.records if getattr(r, "event", "") == "error"]
    # The sweep got past the first checks, not only refusals.
    assert statuses.get(200, 0) >= 50 and sum(n for s, n in statuses.items() if 400 <= s < 500) >= 100
    # Every case the sweep created is whole: readable, with text.
    for cid in await store.case_ids(offset=0, limit=10_000):
        case = await store.get_case(cid)
        assert case.text.strip()
