"""python-telegram-bot persistence in Redis: the Telegram bot's conversation states and chat/user data.

PTB keeps ``ConversationHandler`` states and ``context.chat_data`` in memory and hands changes to a
``BasePersistence``; this one writes each change to Redis at once (no buffering, ``flush`` has nothing
left to do), so a restart resumes every citizen's conversation where it was.

Layout (prefix ``hl``):
- ``hl:tg:conv:<name>``     hash: JSON conversation key (``[chat_id, user_id]``) → JSON ``{"state", "at"}``
- ``hl:tg:chat:<chat_id>``  JSON of that chat's ``chat_data`` (the intake draft), TTL
- ``hl:tg:user:<user_id>``  JSON of that user's ``user_data``, TTL

Chat and user data are not all loaded at start-up: they are read for the one chat and user of each update
(``refresh_*_data``), so memory holds only the chats being talked to and every update sees what Redis has.
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any

from telegram.ext import BasePersistence, PersistenceInput

from hotline.store.cases import Store

log = logging.getLogger("hotline.store.telegram")

Data = dict[Any, Any]
# PTB's own aliases live in a private module: the same shapes, spelled out.
ConversationKey = tuple[int | str, ...]
ConversationDict = dict[ConversationKey, object]
CDCData = Any


class TelegramStatePersistence(BasePersistence[Data, Data, Data]):
    """Conversation states never older than ``max_age_s`` are loaded: an older one belongs to a
    conversation whose timeout passed while no process was running to end it."""

    def __init__(self, store: Store, *, max_age_s: float, data_ttl_s: int = 7 * 86400,
                 update_interval: float = 5.0) -> None:
        # Bot-wide data and callback-data caches are not used by the bot; nothing to keep for them.
        super().__init__(store_data=PersistenceInput(bot_data=False, chat_data=True, user_data=True,
                                                     callback_data=False),
                         update_interval=update_interval)
        self.r = store.r
        self.p = store.p
        self.max_age_s = max_age_s
        self.data_ttl_s = data_ttl_s

    # keys ------------------------------------------------------------------------------
    def _conv_key(self, name: str) -> str:
        return f"{self.p}:tg:conv:{name}"

    def _data_key(self, kind: str, ident: int) -> str:
        return f"{self.p}:tg:{kind}:{int(ident)}"

    # conversations ----------------------------------------------------------------------
    async def get_conversations(self, name: str) -> ConversationDict:
        raw = await self.r.hgetall(self._conv_key(name))
        out: dict[ConversationKey, object] = {}
        stale: list[str] = []
        now = time.time()
        for field, value in raw.items():
            try:
                key = tuple(json.loads(field))
                entry = json.loads(value)
                state, at = entry["state"], float(entry["at"])
            except (ValueError, KeyError, TypeError):
                stale.append(field)
                continue
            if self.max_age_s and now - at > self.max_age_s:
                stale.append(field)
                continue
            out[key] = state
        if stale:
            await self.r.hdel(self._conv_key(name), *stale)
            log.info("telegram conversations expired while down", extra={"event": "tg_conv_expired",
                                                                         "count": len(stale)})
        return out

    async def update_conversation(self, name: str, key: ConversationKey, new_state: object | None) -> None:
        field = json.dumps(list(key))
        if new_state is None:
            await self.r.hdel(self._conv_key(name), field)
        else:
            await self.r.hset(self._conv_key(name), field,
                              json.dumps({"state": new_state, "at": time.time()}, ensure_ascii=False))

    async def conversation(self, name: str, key: ConversationKey) -> object | None:
        """One stored state (for tests and operators; PTB itself reads them all at start-up)."""
        raw = await self.r.hget(self._conv_key(name), json.dumps(list(key)))
        return json.loads(raw)["state"] if raw else None

    # chat and user data ------------------------------------------------------------------
    async def _load(self, kind: str, ident: int) -> Data:
        raw = await self.r.get(self._data_key(kind, ident))
        if not raw:
            return {}
        try:
            data = json.loads(raw)
        except ValueError:
            log.warning("telegram data unreadable, dropped", extra={"event": "tg_data_bad", "kind": kind})
            return {}
        return data if isinstance(data, dict) else {}

    async def _save(self, kind: str, ident: int, data: Data) -> None:
        if data:
            await self.r.set(self._data_key(kind, ident), json.dumps(data, ensure_ascii=False), ex=self.data_ttl_s)
        else:
            await self.r.delete(self._data_key(kind, ident))

    async def get_chat_data(self) -> dict[int, Data]:
        return {}

    async def get_user_data(self) -> dict[int, Data]:
        return {}

    async def refresh_chat_data(self, chat_id: int, chat_data: Data) -> None:
        chat_data.clear()
        chat_data.update(await self._load("chat", chat_id))

    async def refresh_user_data(self, user_id: int, user_data: Data) -> None:
        user_data.clear()
        user_data.update(await self._load("user", user_id))

    async def update_chat_data(self, chat_id: int, data: Data) -> None:
        await self._save("chat", chat_id, data)

    async def update_user_data(self, user_id: int, data: Data) -> None:
        await self._save("user", user_id, data)

    async def drop_chat_data(self, chat_id: int) -> None:
        await self.r.delete(self._data_key("chat", chat_id))

    async def drop_user_data(self, user_id: int) -> None:
        await self.r.delete(self._data_key("user", user_id))

    async def chat_data(self, chat_id: int) -> Data:
        return await self._load("chat", chat_id)

    # not kept ------------------------------------------------------------------------------
    async def get_bot_data(self) -> Data:
        return {}

    async def update_bot_data(self, data: Data) -> None:
        return None

    async def refresh_bot_data(self, bot_data: Data) -> None:
        return None

    async def get_callback_data(self) -> CDCData | None:
        return None

    async def update_callback_data(self, data: CDCData) -> None:
        return None

    async def flush(self) -> None:
        # Every change was written when it was handed over.
        return None
