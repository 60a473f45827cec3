"""Pending extension requests (延期申请) by the time they arrived: ``<prefix>:dispatch:extensions``.

A sorted set of case ids scored by the pending request's arrival time. The request itself lives on the
case (``case.dispatch.extension_request``); the set only says which cases to look at, oldest request
first. It is written after the case, so an entry is removed only when its score is still the one of the
request that was decided: a newer request that arrived meanwhile keeps its place.
"""

from __future__ import annotations

from hotline.store.cases import Store

# KEYS: the set. ARGV: case id, the score read. Removes the entry only if it still has that score.
_REMOVE_IF_LUA = """
local s = redis.call('ZSCORE', KEYS[1], ARGV[1])
if s and tonumber(s) == tonumber(ARGV[2]) then return redis.call('ZREM', KEYS[1], ARGV[1]) end
return 0
"""


class ExtensionIndex:
    def __init__(self, store: Store) -> None:
        self.r = store.r
        self.p = store.p
        self._remove_if = self.r.register_script(_REMOVE_IF_LUA)

    @property
    def key(self) -> str:
        return f"{self.p}:dispatch:extensions"

    async def add(self, case_id: str, requested_at: float) -> None:
        await self.r.zadd(self.key, {case_id: requested_at})

    async def remove(self, case_id: str, requested_at: float | None = None) -> None:
        """Drop the case's entry; with ``requested_at``, only while it still stands for that request."""
        if requested_at is None:
            await self.r.zrem(self.key, case_id)
        else:
            await self._remove_if(keys=[self.key], args=[case_id, repr(float(requested_at))])

    async def entries(self, offset: int = 0, limit: int = 100) -> list[tuple[str, float]]:
        """(case id, request time), oldest request first."""
        rows = await self.r.zrange(self.key, offset, offset + limit - 1, withscores=True)
        return [(str(case_id), float(score)) for case_id, score in rows]

    async def count(self) -> int:
        return int(await self.r.zcard(self.key))
