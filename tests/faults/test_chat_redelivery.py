"""Chat platforms deliver the same message more than once and out of order: still one case per citizen.

tests/test_wechat.py and tests/test_telegram.py cover a repeated confirmation (×3, two racing) and two
updates swapped. Here whole conversations of several citizens run at once, as the platforms really
deliver them: WeChat pushes every message again when it had no answer within 5 s (3 tries, same MsgId,
fresh signature), Telegram re-sends an update it got no 200 for, and those repeats land anywhere later —
after the citizen's next messages, between other citizens' messages, or racing the original.

Each citizen's own messages go out in order (a person reads the answer before typing on); everything
else is shuffled with a fixed seed. A control citizen without repeats gives the expected answers.
Checked: exactly one case per citizen with their own words and place, every repeat of a push got the
same answer as the push itself (WeChat), and each chat got the same messages as the control (Telegram).
"""

from __future__ import annotations

import asyncio
import random
from collections import Counter, defaultdict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hotline.appkeys import STORE
from hotline.records import Case
from hotline.redis_server import EmbeddedRedis
from tests.chat_support import tg_message, wx_xml
from tests.test_telegram import make_tg
from tests.test_wechat import make_wx

CITIZENS = 6
SEED = 20261123
PROBLEMS = ["小区门口的路灯坏了半个月", "菜市场门口占道经营堵塞交通", "楼道里堆满杂物存在消防隐患",
            "公园健身器材螺丝松动很危险", "路口红绿灯晚上不亮", "河道里漂着大量垃圾发臭", "地下车库漏水严重"]
PLACES = ["幸福里3栋", "光明小区北门", "建设路与解放街路口", "滨河公园东门", "和平巷12号", "东湖花园地库", "南门社区"]


@dataclass(frozen=True)
class Push:
    citizen: int
    step: int
    ident: int  # WeChat MsgId / Telegram update_id: the same on every repeat
    text: str


def conversation(citizen: int, first_id: int) -> list[Push]:
    texts = [f"{PROBLEMS[citizen % len(PROBLEMS)]}（{citizen}号市民）", PLACES[citizen % len(PLACES)], "确认"]
    return [Push(citizen, k, first_id + k, t) for k, t in enumerate(texts)]


def delivery_plan(convs: list[list[Push]], rng: random.Random, repeats: int = 2) -> list[list[Push]]:
    """Batches sent one after another; the pushes of one batch race each other.

    Every push goes out once in its citizen's order, then ``repeats`` more times: racing the original or
    at a random later point, also after the citizen's own later messages.
    """
    cursors = [0] * len(convs)
    firsts: list[list[Push]] = []
    while any(cursors[c] < len(conv) for c, conv in enumerate(convs)):
        c = rng.choice([c for c, conv in enumerate(convs) if cursors[c] < len(conv)])
        firsts.append([convs[c][cursors[c]]])
        cursors[c] += 1
    later: dict[int, list[Push]] = defaultdict(list)
    for i, batch in enumerate(firsts):
        push = batch[0]
        for _ in range(repeats):
            if rng.random() < 0.3:
                batch.append(push)
            else:
                later[rng.randrange(i, len(firsts))].append(push)
    plan: list[list[Push]] = []
    for i, batch in enumerate(firsts):
        plan.append(batch)
        plan.extend([p] for p in later[i])
    return plan


def plan_shape(plan: list[list[Push]]) -> dict[str, int]:
    """How hostile a plan is: repeats racing their original, and repeats arriving after a later step."""
    sent: set[Push] = set()
    last_step: dict[int, int] = {}
    races = stale = 0
    for batch in plan:
        races += len(batch) - 1
        for push in batch:
            if push in sent and last_step[push.citizen] > push.step:
                stale += 1
            sent.add(push)
            last_step[push.citizen] = max(last_step.get(push.citizen, -1), push.step)
    return {"races": races, "stale_repeats": stale}


async def run_plan(plan: list[list[Push]], send: Callable[[Push], Awaitable[Any]]) -> dict[Push, list[Any]]:
    answers: dict[Push, list[Any]] = defaultdict(list)
    for batch in plan:
        results = await asyncio.gather(*(send(p) for p in batch))
        for push, result in zip(batch, results, strict=True):
            answers[push].append(result)
    return answers


async def all_cases(app: Any) -> list[Case]:
    store = app[STORE]
    return await store.get_cases(await store.case_ids(limit=1000))


def check_one_case_each(cases: list[Case], convs: list[list[Push]]) -> None:
    by_text = Counter(c.text for c in cases)
    assert len(cases) == len(convs), [(c.id, c.text) for c in cases]
    for conv in convs:
        mine = [c for c in cases if c.text == conv[0].text]
        assert by_text[conv[0].text] == 1 and len(mine) == 1, (conv[0].text, by_text)
        assert mine[0].address == conv[1].text, (mine[0].address, conv[1].text)


async def test_wechat_repeated_and_reordered_pushes(aiohttp_client: Any, aiohttp_server: Any,
                                                    redis_server: EmbeddedRedis, tmp_path: Path,
                                                    key_prefix: str) -> None:
    wx = await make_wx(aiohttp_client, aiohttp_server, redis_server, tmp_path, key_prefix)
    openid = {c: f"oRedelivery{c:017d}" for c in range(CITIZENS + 1)}

    async def send(p: Push) -> str:
        status, reply, raw = await wx.post(wx_xml(openid[p.citizen], "text", msg_id=p.ident, Content=p.text))
        assert status == 200, raw
        return reply.get("Content", "")

    control = conversation(CITIZENS, 7_000_000_000_000_000_000)
    control_answers = [await send(p) for p in control]
    assert "案件编号" in control_answers[-1], control_answers
    convs = [conversation(c, 7_100_000_000_000_000_000 + 10 * c) for c in range(CITIZENS)]
    plan = delivery_plan(convs, random.Random(SEED))
    shape = plan_shape(plan)
    assert shape["races"] >= 3 and shape["stale_repeats"] >= 3, shape
    answers = await run_plan(plan, send)

    assert sum(len(b) for b in plan) == 3 * sum(len(c) for c in convs)
    for push, got in answers.items():
        # WeChat shows the citizen the answer to whichever try it got through with: all must be the same.
        assert len(set(got)) == 1 and got[0], (push, got)
    for conv in convs:
        assert "地点" in answers[conv[0]][0] and "请确认" in answers[conv[1]][0], [answers[p] for p in conv]
        assert "案件编号" in answers[conv[2]][0], answers[conv[2]]
    check_one_case_each(await all_cases(wx.app), [*convs, control])
    # Everything was answered in the passive reply: nothing extra went out as customer-service messages.
    assert wx.api.sent == []


async def test_telegram_repeated_and_reordered_updates(aiohttp_client: Any, aiohttp_server: Any,
                                                       redis_server: EmbeddedRedis, tmp_path: Path,
                                                       key_prefix: str) -> None:
    tg = await make_tg(aiohttp_client, aiohttp_server, redis_server, tmp_path, key_prefix)
    chat = {c: 910_000 + c for c in range(CITIZENS + 1)}

    async def send(p: Push) -> int:
        return await tg.post(tg_message(p.ident, chat[p.citizen], text=p.text))

    control = conversation(CITIZENS, 70_000)
    assert [await send(p) for p in control] == [200, 200, 200]
    expected = [m["text"] for m in tg.api.sent(chat_id=chat[CITIZENS])]
    assert len(expected) == 3 and "案件编号" in expected[-1], expected
    convs = [conversation(c, 71_000 + 10 * c) for c in range(CITIZENS)]
    plan = delivery_plan(convs, random.Random(SEED + 1))
    shape = plan_shape(plan)
    assert shape["races"] >= 3 and shape["stale_repeats"] >= 3, shape
    answers = await run_plan(plan, send)

    assert all(set(got) == {200} for got in answers.values()), answers
    for c, conv in enumerate(convs):
        texts = [m["text"] for m in tg.api.sent(chat_id=chat[c])]
        # One answer per update, in the citizen's order, whatever came twice or late.
        assert len(texts) == len(expected), texts
        assert "地点" in texts[0] and conv[1].text in texts[1] and "案件编号" in texts[2], texts
        assert sum("案件编号" in t for t in texts) == 1, texts
    check_one_case_each(await all_cases(tg.app), [*convs, control])
