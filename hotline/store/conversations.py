"""Chat conversations in Redis: per-citizen dialogue state, push deduplication, pending questions.

Layout (prefix ``hl``; ``<who>`` is ``<channel>:<sender>``):
- ``hl:conv:<who>``          JSON of the citizen's dialogue (what was said so far, what we asked), TTL
- ``hl:convlock:<who>``      short lock so that two pushes from one citizen are handled one after the other
- ``hl:chatmsg:<channel>:<key>``  a platform message id (WeChat MsgId, Telegram update_id) already taken:
                             "pending" while it is being handled, then JSON of the answer given
- ``hl:chatwin:<who>``       JSON {at, sent}: when the citizen last wrote and how many customer-service
                             messages went out since (WeChat's 48-hour window and its quota)
- ``hl:chatask:<who>``       JSON of the last notification with options waiting for this citizen's answer
- ``hl:chatask:id:<token>``  the same by token (Telegram buttons carry the token in their callback data)
- ``hl:chatcases:<who>``     zset of the citizen's case ids by creation time (for ``查询`` without a number)
- ``hl:wechat:token``        the Official Account's access token, shared by every process
"""

from __future__ import annotations

import asyncio
import json
import secrets
import time
from dataclasses import asdict, dataclass, field
from typing import Any

from hotline.store.cases import Store

PENDING = "pending"
MAX_CASES_PER_CITIZEN = 50


@dataclass
class Dialogue:
    """What one citizen told us so far in the intake conversation."""

    state: str = "idle"  # idle | await_place | await_text | await_confirm
    text: str = ""
    transcript: str = ""
    audio_ref: str = ""
    address: str = ""
    location: dict[str, Any] | None = None
    attachments: list[str] = field(default_factory=list)
    contact: str = ""
    prompt_at: float = 0.0  # when we last asked the citizen something with options (the confirmation)
    updated_at: float = 0.0

    def to_json(self) -> str:
        return json.dumps(asdict(self), ensure_ascii=False)

    @classmethod
    def from_json(cls, raw: str) -> Dialogue:
        data = json.loads(raw)
        known = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in data.items() if k in known})


@dataclass
class PendingQuestion:
    """A notification with options that waits for the citizen's answer."""

    token: str
    case_id: str
    kind: str
    report_id: str
    options: list[tuple[str, str]]
    channel: str
    sender: str
    asked_at: float

    def to_json(self) -> str:
        return json.dumps(asdict(self), ensure_ascii=False)

    @classmethod
    def from_json(cls, raw: str) -> PendingQuestion:
        data = json.loads(raw)
        data["options"] = [(str(v), str(label)) for v, label in data.get("options", [])]
        return cls(**data)


class ConversationStore:
    def __init__(self, store: Store, *, dialogue_ttl_s: int = 86400, dedup_ttl_s: int = 86400,
                 question_ttl_s: int = 7 * 86400) -> None:
        self.r = store.r
        self.p = store.p
        self.dialogue_ttl_s = dialogue_ttl_s
        self.dedup_ttl_s = dedup_ttl_s
        self.question_ttl_s = question_ttl_s

    # dialogue ---------------------------------------------------------------
    def _who(self, channel: str, sender: str) -> str:
        return f"{channel}:{sender}"

    async def dialogue(self, channel: str, sender: str) -> Dialogue:
        raw = await self.r.get(f"{self.p}:conv:{self._who(channel, sender)}")
        return Dialogue.from_json(raw) if raw else Dialogue()

    async def save_dialogue(self, channel: str, sender: str, dialogue: Dialogue) -> None:
        dialogue.updated_at = time.time()
        key = f"{self.p}:conv:{self._who(channel, sender)}"
        if dialogue.state == "idle" and not dialogue.text and not dialogue.location and not dialogue.attachments:
            await self.r.delete(key)
        else:
            await self.r.set(key, dialogue.to_json(), ex=self.dialogue_ttl_s)

    async def lock(self, channel: str, sender: str, *, ttl_ms: int = 30_000, wait_s: float = 10.0) -> str:
        """Serialise one citizen's messages; returns the lock token ('' when waiting timed out)."""
        key = f"{self.p}:convlock:{self._who(channel, sender)}"
        token = secrets.token_hex(8)
        deadline = time.monotonic() + wait_s
        while True:
            if await self.r.set(key, token, nx=True, px=ttl_ms):
                return token
            if time.monotonic() >= deadline:
                return ""
            await asyncio.sleep(0.05)

    async def unlock(self, channel: str, sender: str, token: str) -> None:
        key = f"{self.p}:convlock:{self._who(channel, sender)}"
        # Delete only our own lock: a lock that expired and was taken by another handler stays.
        await self.r.eval("if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) "
                          "end return 0", 1, key, token)

    # push deduplication -------------------------------------------------------
    def _msg_key(self, channel: str, key: str) -> str:
        return f"{self.p}:chatmsg:{channel}:{key}"

    async def claim_message(self, channel: str, key: str) -> bool:
        """True for the first delivery of a platform message; False for a retry or a replay."""
        return bool(await self.r.set(self._msg_key(channel, key), PENDING, nx=True, ex=self.dedup_ttl_s))

    async def finish_message(self, channel: str, key: str, answer: dict[str, Any]) -> None:
        await self.r.set(self._msg_key(channel, key), json.dumps(answer, ensure_ascii=False), ex=self.dedup_ttl_s)

    async def release_message(self, channel: str, key: str) -> None:
        """The handling failed: the platform's next try may do the work again."""
        await self.r.delete(self._msg_key(channel, key))

    async def message_answer(self, channel: str, key: str) -> dict[str, Any] | None:
        """The recorded answer of a handled message, None while it is still being handled."""
        raw = await self.r.get(self._msg_key(channel, key))
        if raw is None or raw == PENDING:
            return None
        return json.loads(raw)

    async def forget(self, channel: str, sender: str) -> None:
        """The citizen left (unsubscribed): drop the dialogue, the window and any open question."""
        who = self._who(channel, sender)
        q = await self.question(channel, sender)
        keys = [f"{self.p}:conv:{who}", f"{self.p}:chatwin:{who}", f"{self.p}:chatask:{who}"]
        if q is not None:
            keys.append(f"{self.p}:chatask:id:{q.token}")
        await self.r.delete(*keys)

    # 48-hour window (WeChat customer-service messages) -------------------------
    async def touch_window(self, channel: str, sender: str, window_s: int) -> None:
        """The citizen wrote to us: the window opens again and the quota starts over."""
        await self.r.set(f"{self.p}:chatwin:{self._who(channel, sender)}",
                         json.dumps({"at": time.time(), "sent": 0}), ex=window_s)

    async def use_window(self, channel: str, sender: str, quota: int) -> bool:
        """Take one message from the window's quota; False when the window is closed or used up."""
        key = f"{self.p}:chatwin:{self._who(channel, sender)}"
        script = """
local raw = redis.call('GET', KEYS[1])
if not raw then return 0 end
local w = cjson.decode(raw)
if w['sent'] >= tonumber(ARGV[1]) then return 0 end
w['sent'] = w['sent'] + 1
redis.call('SET', KEYS[1], cjson.encode(w), 'KEEPTTL')
return 1
"""
        return bool(await self.r.eval(script, 1, key, quota))

    async def window(self, channel: str, sender: str) -> dict[str, Any] | None:
        raw = await self.r.get(f"{self.p}:chatwin:{self._who(channel, sender)}")
        return json.loads(raw) if raw else None

    # pending questions (notifications with options) -----------------------------
    async def put_question(self, q: PendingQuestion) -> None:
        raw = q.to_json()
        async with self.r.pipeline(transaction=True) as pipe:
            pipe.set(f"{self.p}:chatask:{self._who(q.channel, q.sender)}", raw, ex=self.question_ttl_s)
            pipe.set(f"{self.p}:chatask:id:{q.token}", raw, ex=self.question_ttl_s)
            await pipe.execute()

    async def question(self, channel: str, sender: str) -> PendingQuestion | None:
        raw = await self.r.get(f"{self.p}:chatask:{self._who(channel, sender)}")
        return PendingQuestion.from_json(raw) if raw else None

    async def question_by_token(self, token: str) -> PendingQuestion | None:
        raw = await self.r.get(f"{self.p}:chatask:id:{token}")
        return PendingQuestion.from_json(raw) if raw else None

    async def drop_question(self, q: PendingQuestion) -> None:
        """The question was answered: its buttons and number replies stop working."""
        key = f"{self.p}:chatask:{self._who(q.channel, q.sender)}"
        current = await self.r.get(key)
        async with self.r.pipeline(transaction=True) as pipe:
            if current and PendingQuestion.from_json(current).token == q.token:
                pipe.delete(key)
            pipe.delete(f"{self.p}:chatask:id:{q.token}")
            await pipe.execute()

    # the citizen's own cases ------------------------------------------------------
    async def add_case(self, channel: str, sender: str, case_id: str, created_at: float) -> None:
        key = f"{self.p}:chatcases:{self._who(channel, sender)}"
        async with self.r.pipeline(transaction=True) as pipe:
            pipe.zadd(key, {case_id: created_at})
            pipe.zremrangebyrank(key, 0, -MAX_CASES_PER_CITIZEN - 1)
            pipe.expire(key, 365 * 86400)
            await pipe.execute()

    async def cases(self, channel: str, sender: str, limit: int = 5) -> list[str]:
        return await self.r.zrevrange(f"{self.p}:chatcases:{self._who(channel, sender)}", 0, limit - 1)

    # WeChat access token shared by all processes ----------------------------------
    async def access_token(self, name: str) -> str | None:
        return await self.r.get(f"{self.p}:{name}:token")

    async def put_access_token(self, name: str, token: str, ttl_s: int) -> None:
        await self.r.set(f"{self.p}:{name}:token", token, ex=max(1, ttl_s))

    async def drop_access_token(self, name: str, token: str) -> None:
        await self.r.eval("if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) "
                          "end return 0", 1, f"{self.p}:{name}:token", token)
