"""WeChat door against hostile and unusual pushes: citizen text that would end a CDATA section, numeric fields
too long for int(), and events that must not open the 48-hour customer-service window."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
from wechatpy import parse_message

from hotline.channels.wechat import CHANNEL, WECHAT_DOOR, PushContext, render_outgoing
from hotline.redis_server import EmbeddedRedis
from tests.chat_support import wx_sign, wx_xml
from tests.test_wechat import OPENID, OTHER, TOKEN, WX, case_of, make_wx

# Ends the CDATA section around the reply's Content and starts a <MsgType> of its own.
BREAKOUT = "路灯坏了很久了 ]]></Content><MsgType><![CDATA[news"
REPLY_TAGS = {"ToUserName", "FromUserName", "CreateTime", "MsgType", "Content"}


def escaped(value: str) -> str:
    """The value as WeChat puts it into a push's CDATA (wx_xml wraps values as they are)."""
    return value.replace("]]>", "]]]]><![CDATA[>")


@pytest.fixture(params=[False, True], ids=["plain", "aes"])
async def wx_any(request: pytest.FixtureRequest, aiohttp_client: Any, aiohttp_server: Any,
               redis_server: EmbeddedRedis, tmp_path: Path, key_prefix: str) -> WX:
    return await make_wx(aiohttp_client, aiohttp_server, redis_server, tmp_path, key_prefix,
                         encrypted=request.param)


@pytest.fixture
async def wx(aiohttp_client: Any, aiohttp_server: Any, redis_server: EmbeddedRedis, tmp_path: Path,
             key_prefix: str) -> WX:
    return await make_wx(aiohttp_client, aiohttp_server, redis_server, tmp_path, key_prefix)


async def reply_of(wx: WX, xml: str) -> dict[str, str]:
    status, reply, raw = await wx.post(xml)
    assert status == 200, raw
    assert set(reply) == REPLY_TAGS and reply["MsgType"] == "text", raw
    return reply


async def say(wx: WX, text: str, openid: str = OPENID) -> str:
    return (await reply_of(wx, wx_xml(openid, "text", msg_id=wx.next_id(), Content=escaped(text))))["Content"]


# ---------------------------------------------------------------------------- "]]>" in reply text


async def test_problem_text_and_address_with_cdata_end_come_back_exactly(wx_any: WX) -> None:
    wx = wx_any
    address = "人民路]]>88号<![CDATA[ & <b>对面"
    # The same dialogue with harmless words gives the reply the hostile one must equal, character for character.
    plain_problem, plain_address = "路灯坏了很久了 一二三四五六七八九十", "人民路八十八号对面"
    expected_ask = (await say(wx, plain_problem, OTHER)).replace(plain_problem, BREAKOUT)
    expected_confirm = (await say(wx, plain_address, OTHER)).replace(plain_problem, BREAKOUT).replace(
        plain_address, address)
    assert await say(wx, BREAKOUT) == expected_ask
    confirm = await say(wx, address)
    assert confirm == expected_confirm and BREAKOUT in confirm and address in confirm
    case = await case_of(wx, await say(wx, "1"))
    assert case.text == BREAKOUT and case.address == address
    # 查询 lists the case with the start of its text.
    listing = render_outgoing([await wx.app[WECHAT_DOOR].engine.status(CHANNEL, OPENID, "")])
    assert "]]>" in listing and await say(wx, "查询") == listing


async def test_location_label_with_cdata_end_comes_back_exactly(wx_any: WX) -> None:
    wx = wx_any
    label, harmless = "东长安街]]></Content></xml>", "东长安街某某某某某某某某"

    def share(openid: str, text: str) -> str:
        return wx_xml(openid, "location", msg_id=wx.next_id(), Location_X="39.908823", Location_Y="116.397470",
                      Scale="15", Label=escaped(text))

    expected = (await reply_of(wx, share(OTHER, harmless)))["Content"].replace(harmless, label)
    assert (await reply_of(wx, share(OPENID, label)))["Content"] == expected
    assert label in expected


async def test_every_passive_reply_is_well_formed_xml(wx_any: WX) -> None:
    """The reply path itself, with text no push can carry but stored case data might (control characters, a
    lone surrogate): XML 1.0 cannot hold those at all, so they are left out and everything else stays."""
    wx = wx_any
    target = "gh_]]>hotline"  # ToUserName is not covered by a plain-mode signature either
    message = parse_message(wx_xml(OPENID, "text", msg_id=1, to=escaped(target), Content="x"))
    ctx = PushContext(message, wx.encrypted, "n0nce", str(int(time.time())))
    door = wx.app[WECHAT_DOOR]
    for text, expected in [
        ("]]>", "]]>"),
        ("a]]>b]]]>c]]>]]>d", "a]]>b]]]>c]]>]]>d"),
        ("]]]]><![CDATA[>", "]]]]><![CDATA[>"),
        ("<![CDATA[ &amp; <Content/> ]]", "<![CDATA[ &amp; <Content/> ]]"),
        ("行1\n行2\t制表\x00\x01\x0b\x1f\ufffe\ud800完", "行1\n行2\t制表完"),
        ("表情😀\U0010fffd", "表情😀\U0010fffd"),
    ]:
        resp = door._reply(ctx, text)
        assert resp.text is not None
        reply = wx.pusher.read_reply(resp.text, encrypted=wx.encrypted)
        assert set(reply) == REPLY_TAGS and reply["MsgType"] == "text"
        assert reply["Content"] == expected
        assert reply["ToUserName"] == OPENID and reply["FromUserName"] == target


# ---------------------------------------------------------------------------- oversized numbers


@pytest.mark.parametrize("digits", [400, 4400])
async def test_oversized_timestamp_is_403(wx_any: WX, digits: int) -> None:
    wx = wx_any
    ts, nonce = "1" * digits, "n0nce"
    resp = await wx.client.get("/wechat", params={"signature": wx_sign(TOKEN, ts, nonce), "timestamp": ts,
                                                  "nonce": nonce, "echostr": "x"})
    assert resp.status == 403
    status, _r, _raw = await wx.post(wx_xml(OPENID, "text", msg_id=wx.next_id(), Content="你好"), timestamp=ts)
    assert status == 403


@pytest.mark.parametrize("field", ["MsgId", "CreateTime"])
@pytest.mark.parametrize("digits", [21, 4400])
async def test_oversized_message_numbers_are_400(wx_any: WX, field: str, digits: int) -> None:
    wx = wx_any
    now = int(time.time())
    if field == "MsgId":
        xml, old = wx_xml(OPENID, "text", create_time=now, msg_id=1, Content="你好"), "<MsgId>1</MsgId>"
    else:  # an event: its CreateTime is part of the key that claims the push
        xml = wx_xml(OPENID, "event", create_time=now, Event="CLICK", EventKey="K")
        old = f"<CreateTime>{now}</CreateTime>"
    assert old in xml
    status, _r, raw = await wx.post(xml.replace(old, f"<{field}>{'9' * digits}</{field}>"))
    assert status == 400, raw
    assert await wx.app[WECHAT_DOOR].conv.window(CHANNEL, OPENID) is None


# ---------------------------------------------------------------------------- the 48-hour window


PLATFORM_EVENTS = {
    "TEMPLATESENDJOBFINISH": {"MsgID": "200163836", "Status": "success"},
    "MASSSENDJOBFINISH": {"MsgID": "1000001625", "Status": "send success", "TotalCount": "100"},
    "PUBLISHJOBFINISH": {"PublishEventInfo": "x"},  # unknown to wechatpy 1.8
    "VIEW": {"EventKey": "https://12345.example/"},
    "LOCATION": {"Latitude": "23.137466", "Longitude": "113.352425", "Precision": "119.385040"},
}
CITIZEN_EVENTS = {
    "subscribe": {"EventKey": ""},
    "SCAN": {"EventKey": "123", "Ticket": "TICKET"},
    "CLICK": {"EventKey": "V1001_HELP"},
    "scancode_push": {"EventKey": "rselfmenu_0_1"},
    "scancode_waitmsg": {"EventKey": "rselfmenu_0_0"},
}


async def test_only_citizen_actions_open_the_window(wx: WX) -> None:
    conv = wx.app[WECHAT_DOOR].conv
    for event, extra in PLATFORM_EVENTS.items():
        status, _r, raw = await wx.post(wx_xml(OPENID, "event", Event=event, **extra))
        assert status == 200 and raw == "success", event
        assert await conv.window(CHANNEL, OPENID) is None, event
    for event, extra in CITIZEN_EVENTS.items():
        await conv.r.delete(f"{conv.p}:chatwin:wechat:{OPENID}")
        status, _r, _raw = await wx.post(wx_xml(OPENID, "event", Event=event, **extra))
        assert status == 200
        assert (await conv.window(CHANNEL, OPENID) or {}).get("sent") == 0, event
    await conv.r.delete(f"{conv.p}:chatwin:wechat:{OPENID}")
    await wx.say("你好")
    window = await conv.window(CHANNEL, OPENID)
    assert window is not None and window["sent"] == 0 and time.time() - window["at"] < 60


async def test_template_job_finish_keeps_the_window_and_its_quota(wx: WX) -> None:
    conv = wx.app[WECHAT_DOOR].conv
    await wx.say("你好")
    assert await conv.use_window(CHANNEL, OPENID, 5) and await conv.use_window(CHANNEL, OPENID, 5)
    before = await conv.window(CHANNEL, OPENID)
    ttl = await conv.r.ttl(f"{conv.p}:chatwin:wechat:{OPENID}")
    await wx.post(wx_xml(OPENID, "event", Event="TEMPLATESENDJOBFINISH", MsgID="200163836", Status="success"))
    assert await conv.window(CHANNEL, OPENID) == before and before is not None and before["sent"] == 2
    assert await conv.r.ttl(f"{conv.p}:chatwin:wechat:{OPENID}") <= ttl
