"""The shared body readers: what every JSON and form endpoint refuses before a handler sees it."""

from __future__ import annotations

from typing import Any

import pytest

from hotline.app import create_app
from hotline.bodies import parse_json
from tests.conftest import make_settings
from tests.console_support import staff_login
from tests.dispatch_support import SECRET, signed


@pytest.mark.parametrize("raw", [b'{"a": "\\udc00"}', b'{"a": ["ok", {"b": "x\\ud800"}]}', '{"a": "\udc00"}',
                                 b'{"\\udfff": 1}'])
def test_a_lone_surrogate_is_unreadable_json(raw: bytes | str) -> None:
    with pytest.raises(ValueError):
        parse_json(raw)


@pytest.mark.parametrize("raw,value", [(b'{"a": "\\ud83d\\ude00"}', {"a": "😀"}),
                                       (b'{"a": "\\\\udc00"}', {"a": "\\udc00"}),
                                       ('{"a": "中文"}'.encode(), {"a": "中文"})])
def test_pairs_escaped_backslashes_and_plain_text_are_read(raw: bytes, value: Any) -> None:
    assert parse_json(raw) == value


async def test_lone_surrogates_are_a_400_on_every_json_door(aiohttp_client: Any, redis_server: Any, tmp_path: Any,
                                                             key_prefix: str) -> None:
    client = await aiohttp_client(create_app(make_settings(redis_server.url, tmp_path, key_prefix,
                                                           dispatch={"secret": SECRET})))
    body = '{"text": "\\udc00 小区路灯坏了", "contact": "13800000000"}'.encode()
    resp = await client.post("/api/v1/complaints", data=body, headers={"Content-Type": "application/json"})
    assert resp.status == 400 and (await resp.json())["error"]["code"] == "bad_json"
    raw, headers = signed(b'{"event_id": "e\\udc00", "case_id": "20261125-000001", "order_id": "x", '
                          b'"type": "accepted"}')
    resp = await client.post("/api/v1/dispatch/events", data=raw, headers=headers)
    assert resp.status == 400  # a signed event too: the backend is told its body is unreadable
    async with staff_login(client, "supervisor") as staff:
        resp = await staff.request("POST", "/api/v1/kb", data=b'{"question": "\\udc00 abc", "answer": "x"}',
                                   headers={"Content-Type": "application/json"})
        assert resp.status == 400


async def test_a_form_in_an_unknown_charset_is_a_400(client: Any) -> None:
    resp = await client.post("/answer/feedback", data="case_id=1&token=x&resolved=1",
                             headers={"Content-Type": "application/x-www-form-urlencoded; charset=bogus"})
    assert resp.status == 400
