from __future__ import annotations

import asyncio
import json
from typing import Any

from aiohttp.test_utils import TestClient

from hotline.appkeys import STORE

URL = "/api/v1/complaints"


async def post(client: TestClient, body: Any, headers: dict[str, str] | None = None) -> tuple[int, dict]:
    data = body if isinstance(body, bytes | str) else json.dumps(body, ensure_ascii=False)
    hdrs = {"Content-Type": "application/json", **(headers or {})}
    resp = await client.post(URL, data=data, headers=hdrs)
    return resp.status, await resp.json()


def assert_error(status: int, body: dict, want_status: int, want_code: str | None = None) -> None:
    assert status == want_status, body
    assert set(body) == {"error"} and isinstance(body["error"]["message"], str) and body["error"]["message"]
    if want_code:
        assert body["error"]["code"] == want_code


async def test_create_and_fetch(client: TestClient) -> None:
    status, body = await post(client, {"text": "幸福小区3栋门口路灯坏了一周，晚上很黑", "address": "幸福小区3栋",
                                       "contact": "13812345678", "channel": "web"})
    assert status == 201
    assert body["status"] == "classified"
    assert body["case_id"] in body["reply"] and "手机号后四位" in body["reply"]
    assert {"category", "department", "type", "urgency", "needs_confirmation"} <= set(body["suggestion"])
    resp = await client.get(f"/api/v1/cases/{body['case_id']}?last4=5678")
    assert resp.status == 200
    case = await resp.json()
    assert case["contact"] == "138****5678" and case["details_hidden"] is False
    assert "13812345678" not in json.dumps(case)
    assert case["address"] == "幸福小区3栋" and case["channel"] == "web" and "路灯" in case["text"]
    # The case number alone shows progress, not what was reported or where (numbers run in sequence).
    bare = await (await client.get(f"/api/v1/cases/{body['case_id']}")).json()
    assert bare["status"] == "classified" and bare["details_hidden"] is True and bare["text"] == ""
    assert "幸福小区" not in json.dumps(bare, ensure_ascii=False) and "5678" not in json.dumps(bare)
    # Wrong or malformed digits: the same 404 as an unknown case, so numbers cannot be probed.
    for digits in ("1234", "567", "²²²²", "５６７"):
        resp = await client.get(f"/api/v1/cases/{body['case_id']}", params={"last4": digits})
        assert_error(resp.status, await resp.json(), 404)
    # Digits typed with a Chinese input method are the same digits.
    resp = await client.get(f"/api/v1/cases/{body['case_id']}", params={"last4": "５６７８"})
    assert resp.status == 200 and (await resp.json())["details_hidden"] is False


async def test_a_citizen_without_a_phone_is_not_sent_to_the_status_page(client: TestClient) -> None:
    status, body = await post(client, {"text": "人民公园的长椅坏了好几张"})
    assert status == 201
    # The status page checks the phone's last four digits: without a phone, only the hotline can answer.
    assert "未留联系电话" in body["reply"] and "致电热线" in body["reply"] and "后四位" not in body["reply"]


async def test_phone_numbers_inside_the_text_are_masked_when_shown(client: TestClient) -> None:
    _, body = await post(client, {"text": "我的电话13912345678，身份证110101199003071234，请回电",
                                  "contact": "13700001111"})
    case = await (await client.get(f"/api/v1/cases/{body['case_id']}?last4=1111")).json()
    assert "13912345678" not in case["text"] and "139****5678" in case["text"]
    assert "110101199003071234" not in case["text"]


async def test_idempotency_key(client: TestClient) -> None:
    body = {"text": "小区噪音扰民，每晚施工到凌晨"}
    s1, b1 = await post(client, body, {"Idempotency-Key": "abc-123"})
    s2, b2 = await post(client, body, {"Idempotency-Key": "abc-123"})
    assert (s1, s2) == (201, 200)
    assert b1["case_id"] == b2["case_id"] and b2["created"] is False
    # Other content under a used key is refused, not answered with the first complaint's case
    # (tests/test_web_hostile.py covers this in depth).
    assert_error(*await post(client, {"text": "完全不同的内容"}, {"Idempotency-Key": "abc-123"}), 422,
                 "idempotency_key_reused")
    s3, b3 = await post(client, {"text": "另一件事：井盖丢失"}, {"Idempotency-Key": "other"})
    assert s3 == 201 and b3["case_id"] != b1["case_id"]


async def test_exact_resubmission_by_the_same_caller_is_one_case(client: TestClient) -> None:
    body = {"text": "楼道灯坏了", "contact": "13700001111"}
    s1, b1 = await post(client, body)
    s2, b2 = await post(client, {**body, "text": "  楼道灯坏了 "})
    assert (s1, s2) == (201, 200) and b1["case_id"] == b2["case_id"]
    s3, b3 = await post(client, {**body, "contact": "13700002222"})
    assert s3 == 201 and b3["case_id"] != b1["case_id"]


async def test_thousand_parallel_submissions_get_distinct_ids(client: TestClient) -> None:
    results = await asyncio.gather(*(post(client, {"text": f"第{i}号投诉：垃圾清运不及时"}) for i in range(1000)))
    assert all(s == 201 for s, _ in results)
    ids = {b["case_id"] for _, b in results}
    assert len(ids) == 1000
    assert await client.app[STORE].count() == 1000


async def test_a_burst_of_parallel_repeats_lands_in_one_case(client: TestClient) -> None:
    text = "阳光花园小区3栋停水了，从早上到现在都没有水，第{}位反映"
    status, first = await post(client, {"text": text.format(0), "address": "阳光花园小区3栋"})
    assert status == 201
    results = await asyncio.gather(*(post(client, {"text": text.format(i)}) for i in range(1, 201)))
    assert {s for s, _ in results} == {201}
    assert all(b.get("merged_into") == first["case_id"] for _, b in results)
    primary = await client.app[STORE].get_case(first["case_id"])
    assert primary is not None and len(primary.reports) == 200
    assert {r.report_id for r in primary.reports} == {b["case_id"] for _, b in results}


async def test_empty_body(client: TestClient) -> None:
    assert_error(*await post(client, b""), 400, "empty_body")


async def test_not_json(client: TestClient) -> None:
    assert_error(*await post(client, b"{not json"), 400, "bad_json")
    assert_error(*await post(client, b"\xff\xfe\x00garbage"), 400, "bad_json")
    # Deeper than the parser's recursion limit, far below the body limit.
    assert_error(*await post(client, b"[" * 50_000), 400, "bad_json")
    assert_error(*await post(client, b'{"text": ' + b"[" * 50_000), 400, "bad_json")


async def test_wrong_content_type(client: TestClient) -> None:
    resp = await client.post(URL, data="text=hi", headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert_error(resp.status, await resp.json(), 415, "unsupported_media_type")


async def test_wrong_types(client: TestClient) -> None:
    assert_error(*await post(client, [1, 2]), 422, "bad_body")
    assert_error(*await post(client, {"text": 42}), 422, "bad_field")
    assert_error(*await post(client, {"text": ["a"]}), 422, "bad_field")
    assert_error(*await post(client, {"address": "x"}), 422, "missing_field")
    assert_error(*await post(client, {"text": "路灯坏了", "contact": {"a": 1}}), 422, "bad_field")
    assert_error(*await post(client, {"text": "路灯坏了", "contact": "not a phone"}), 422, "bad_contact")
    assert_error(*await post(client, {"text": "路灯坏了", "location": {"lat": "x", "lon": 1}}), 422, "bad_location")
    assert_error(*await post(client, {"text": "路灯坏了", "location": {"lat": 95, "lon": 1}}), 422, "bad_location")
    assert_error(*await post(client, {"text": "路灯坏了", "channel": "wechat"}), 422, "bad_channel")
    assert_error(*await post(client, {"text": "路灯坏了", "attachments": "x"}), 422, "bad_attachments")


async def test_too_big(client: TestClient) -> None:
    status, body = await post(client, {"text": "长" * 30000})  # 90,000 bytes of UTF-8 > 64 KiB
    assert_error(status, body, 413, "too_large")
    resp = await client.post(URL, data=b"{" + b" " * 2_000_000 + b"}", headers={"Content-Type": "application/json"})
    assert_error(resp.status, await resp.json(), 413, "too_large")


async def test_control_characters(client: TestClient) -> None:
    assert_error(*await post(client, {"text": "\x00\x01\x02\x1b\x7f\u200b"}), 422, "empty_text")
    status, body = await post(client, {"text": "路\x00灯\x1b坏\x07了\u202e", "contact": "13700002222"})
    assert status == 201
    case = await (await client.get(f"/api/v1/cases/{body['case_id']}?last4=2222")).json()
    assert case["text"] == "路灯坏了"


async def test_unknown_case_and_bad_ids(client: TestClient) -> None:
    for case_id in ("20990101-999999", "../../etc", "x" * 300):
        resp = await client.get(f"/api/v1/cases/{case_id}")
        assert_error(resp.status, await resp.json(), 404)


async def test_unknown_route_and_method(client: TestClient) -> None:
    resp = await client.get("/api/v1/nothing")
    assert_error(resp.status, await resp.json(), 404, "not_found")
    resp = await client.delete(URL)
    assert_error(resp.status, await resp.json(), 405)


async def test_openapi_document(client: TestClient) -> None:
    resp = await client.get("/api/v1/openapi.json")
    assert resp.status == 200
    doc = await resp.json()
    assert doc["openapi"].startswith("3.")
    assert "/api/v1/complaints" in doc["paths"] and "/api/v1/cases/{case_id}" in doc["paths"]


async def test_health(client: TestClient) -> None:
    assert (await client.get("/healthz")).status == 200
    resp = await client.get("/readyz")
    assert resp.status == 200 and (await resp.json())["redis"] is True


async def test_pages_carry_security_headers(client: TestClient) -> None:
    resp = await client.get("/")
    assert resp.status == 200
    assert "default-src 'self'" in resp.headers["Content-Security-Policy"]
    assert resp.headers["X-Content-Type-Options"] == "nosniff"
    assert "我要反映" in await resp.text()
