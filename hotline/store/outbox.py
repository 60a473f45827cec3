"""The dispatch outbox: work orders on a Redis Stream with a consumer group, retries and dead letters.

Layout (prefix ``hl``):
- ``hl:dispatch:outbox``                 stream of orders waiting for delivery (fields key, case, order)
- ``hl:dispatch:order:{case}:<key>``     hash, one order's state: entry, status (queued | sending | retrying
                                         | delivered | dead), attempts, next_at, error, ref, timestamps
- ``hl:dispatch:retry``                  zset of outbox entry ids waiting for their next attempt, by due time
- ``hl:dispatch:dead``                   stream of orders that failed max_attempts times (dead letters)
- ``hl:dispatch:open``                   zset of dispatched, unfinished cases by deadline (督办, polling)
- ``hl:dispatch:unflagged``              zset of the same cases whose ``overdue`` entry is not written yet, by
                                         deadline: the overdue sweep reads only these
- ``hl:dispatch:unflagged_ready``        set once ``unflagged`` was filled from ``open`` (orders that were open
                                         before the index existed)
- ``hl:dispatch:repair_cursor``          hash: where the open-index repair goes on in each status index
- ``hl:dispatch:poll_lock``              one process polls the backend per interval

Every order has an idempotency key (case id + dispatch round). Enqueueing the same key twice adds
nothing; the backend receives the key with every attempt. An entry is acknowledged only after the
backend accepted it, so a forwarder that dies mid-delivery leaves it pending for another to claim.
Streams are never trimmed by length: an entry leaves the stream when it is acknowledged or buried.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any

from redis.exceptions import ResponseError

from hotline.store.cases import Store

DELIVERED_TTL_S = 30 * 86400

# KEYS: order hash, stream. ARGV: key, case id, order json, now
_ENQUEUE_LUA = """
local e = redis.call('HGET', KEYS[1], 'entry')
if e then return {0, e} end
local id = redis.call('XADD', KEYS[2], '*', 'key', ARGV[1], 'case', ARGV[2], 'order', ARGV[3])
redis.call('HSET', KEYS[1], 'entry', id, 'status', 'queued', 'attempts', 0, 'case', ARGV[2], 'key', ARGV[1],
           'queued_at', ARGV[4])
return {1, id}
"""

# Only the holder of the current entry may finish it: a slow forwarder whose entry was claimed and
# finished by another does nothing. KEYS: order, stream, retry. ARGV: group, entry, ref, now, ttl
_DELIVERED_LUA = """
local st = redis.call('HMGET', KEYS[1], 'entry', 'status')
redis.call('XACK', KEYS[2], ARGV[1], ARGV[2])
redis.call('XDEL', KEYS[2], ARGV[2])
redis.call('ZREM', KEYS[3], ARGV[2])
if st[1] ~= ARGV[2] or st[2] == 'delivered' then return 0 end
redis.call('HSET', KEYS[1], 'status', 'delivered', 'ref', ARGV[3], 'delivered_at', ARGV[4], 'error', '')
redis.call('EXPIRE', KEYS[1], ARGV[5])
return 1
"""

# KEYS: order, stream, dead, retry. ARGV: group, entry, key, case, order, attempts, error, now
_BURY_LUA = """
local st = redis.call('HMGET', KEYS[1], 'entry', 'status')
redis.call('XACK', KEYS[2], ARGV[1], ARGV[2])
redis.call('XDEL', KEYS[2], ARGV[2])
redis.call('ZREM', KEYS[4], ARGV[2])
if st[1] ~= ARGV[2] or st[2] == 'delivered' or st[2] == 'dead' then return '' end
local dead = redis.call('XADD', KEYS[3], '*', 'key', ARGV[3], 'case', ARGV[4], 'order', ARGV[5],
                        'attempts', ARGV[6], 'error', ARGV[7], 'failed_at', ARGV[8], 'entry', ARGV[2])
redis.call('HSET', KEYS[1], 'status', 'dead', 'dead_entry', dead, 'error', ARGV[7], 'attempts', ARGV[6])
return dead
"""

# Change an unflagged entry only when it still has the deadline that was read: a new round's deadline written
# meanwhile stays. KEYS: unflagged. ARGV: case id, score read, new score ('' removes the entry)
_UNFLAGGED_LUA = """
local s = redis.call('ZSCORE', KEYS[1], ARGV[1])
if not s or tonumber(s) ~= tonumber(ARGV[2]) then return 0 end
if ARGV[3] == '' then return redis.call('ZREM', KEYS[1], ARGV[1]) end
redis.call('ZADD', KEYS[1], ARGV[3], ARGV[1])
return 1
"""

# KEYS: dead, stream, order. ARGV: dead id, now
_REDRIVE_LUA = """
local rows = redis.call('XRANGE', KEYS[1], ARGV[1], ARGV[1])
if #rows == 0 then return '' end
local f = rows[1][2]
local fields = {}
for i = 1, #f, 2 do fields[f[i]] = f[i + 1] end
local id = redis.call('XADD', KEYS[2], '*', 'key', fields['key'], 'case', fields['case'], 'order', fields['order'])
redis.call('HSET', KEYS[3], 'entry', id, 'status', 'queued', 'attempts', 0, 'error', '', 'next_at', 0,
           'case', fields['case'], 'key', fields['key'], 'redriven_at', ARGV[2])
redis.call('XDEL', KEYS[1], ARGV[1])
return id
"""


@dataclass
class OutboxEntry:
    entry_id: str
    key: str
    case_id: str
    order_json: str

    @property
    def order(self) -> dict[str, Any]:
        return json.loads(self.order_json)

    @classmethod
    def from_fields(cls, entry_id: str, fields: dict[str, str] | None) -> OutboxEntry | None:
        if not fields or "key" not in fields:
            return None
        return cls(entry_id, fields["key"], fields.get("case", ""), fields.get("order", "{}"))


@dataclass
class DeadLetter:
    dead_id: str
    key: str
    case_id: str
    attempts: int
    error: str
    failed_at: float
    order: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        return {"dead_id": self.dead_id, "key": self.key, "case_id": self.case_id, "attempts": self.attempts,
                "error": self.error, "failed_at": self.failed_at, "order": self.order}


class Outbox:
    def __init__(self, store: Store, *, group: str = "forwarder") -> None:
        self.store = store
        self.r = store.r
        self.p = store.p
        self.group = group
        self._enqueue = self.r.register_script(_ENQUEUE_LUA)
        self._delivered = self.r.register_script(_DELIVERED_LUA)
        self._bury = self.r.register_script(_BURY_LUA)
        self._redrive = self.r.register_script(_REDRIVE_LUA)
        self._unflagged = self.r.register_script(_UNFLAGGED_LUA)

    # keys -----------------------------------------------------------------
    @property
    def k_stream(self) -> str:
        return f"{self.p}:dispatch:outbox"

    @property
    def k_dead(self) -> str:
        return f"{self.p}:dispatch:dead"

    @property
    def k_retry(self) -> str:
        return f"{self.p}:dispatch:retry"

    @property
    def k_open(self) -> str:
        return f"{self.p}:dispatch:open"

    @property
    def k_unflagged(self) -> str:
        return f"{self.p}:dispatch:unflagged"

    def k_order(self, key: str, case_id: str) -> str:
        return f"{self.p}:dispatch:order:{{{case_id}}}:{key}"

    # producing ------------------------------------------------------------
    async def ensure_group(self) -> None:
        try:
            await self.r.xgroup_create(self.k_stream, self.group, id="0", mkstream=True)
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    async def enqueue(self, key: str, case_id: str, order: dict[str, Any]) -> tuple[str, bool]:
        """Add an order unless its key is already known; (entry id, newly added)."""
        created, entry = await self._enqueue(
            keys=[self.k_order(key, case_id), self.k_stream],
            args=[key, case_id, json.dumps(order, ensure_ascii=False), f"{time.time():.6f}"])
        return entry, bool(int(created))

    async def order_state(self, key: str, case_id: str) -> dict[str, str]:
        return await self.r.hgetall(self.k_order(key, case_id))

    # consuming ------------------------------------------------------------
    @staticmethod
    def _entries(rows: list[Any]) -> list[OutboxEntry]:
        out = []
        for entry_id, fields in rows or []:
            e = OutboxEntry.from_fields(entry_id, fields)
            if e is not None:
                out.append(e)
        return out

    async def read_new(self, consumer: str, count: int, block_ms: int) -> list[OutboxEntry]:
        # block_ms 0 = answer at once (redis-py treats block=None as "do not block").
        res = await self.r.xreadgroup(self.group, consumer, {self.k_stream: ">"}, count=count,
                                      block=block_ms or None)
        return [e for _stream, rows in res or [] for e in self._entries(rows)]

    async def claim_stale(self, consumer: str, min_idle_ms: int, start: str = "0-0",
                          count: int = 50) -> tuple[str, list[OutboxEntry]]:
        """Entries another (crashed) forwarder took and never finished; (next cursor, entries).

        Entries only waiting for their retry time are left to the retry schedule."""
        res = await self.r.xautoclaim(self.k_stream, self.group, consumer, min_idle_ms, start_id=start,
                                      count=count)
        cursor, rows = res[0], res[1]
        entries = self._entries(rows)
        if entries:
            async with self.r.pipeline(transaction=False) as pipe:
                for e in entries:
                    pipe.zscore(self.k_retry, e.entry_id)
                scores = await pipe.execute()
            entries = [e for e, s in zip(entries, scores, strict=True) if s is None]
        return cursor, entries

    async def due_retries(self, consumer: str, now: float, count: int = 50) -> list[OutboxEntry]:
        ids = await self.r.zrangebyscore(self.k_retry, "-inf", now, start=0, num=count)
        out: list[OutboxEntry] = []
        for entry_id in ids:
            # ZREM decides which of several forwarders takes the retry.
            if not await self.r.zrem(self.k_retry, entry_id):
                continue
            rows = await self.r.xclaim(self.k_stream, self.group, consumer, 0, [entry_id])
            out += self._entries(rows)
        return out

    async def begin_attempt(self, entry: OutboxEntry) -> int:
        """Count the attempt before sending: an attempt cut short by a crash still counts."""
        key = self.k_order(entry.key, entry.case_id)
        async with self.r.pipeline(transaction=True) as pipe:
            pipe.hincrby(key, "attempts", 1)
            pipe.hset(key, mapping={"status": "sending", "last_attempt_at": f"{time.time():.6f}"})
            attempts, _ = await pipe.execute()
        return int(attempts)

    async def schedule_retry(self, entry: OutboxEntry, next_at: float, error: str) -> None:
        async with self.r.pipeline(transaction=True) as pipe:
            pipe.hset(self.k_order(entry.key, entry.case_id),
                      mapping={"status": "retrying", "next_at": f"{next_at:.6f}", "error": error[:500]})
            pipe.zadd(self.k_retry, {entry.entry_id: next_at})
            await pipe.execute()

    async def mark_delivered(self, entry: OutboxEntry, ref: str) -> bool:
        """Acknowledge an order the backend accepted; False when another forwarder had finished it."""
        done = await self._delivered(
            keys=[self.k_order(entry.key, entry.case_id), self.k_stream, self.k_retry],
            args=[self.group, entry.entry_id, ref, f"{time.time():.6f}", DELIVERED_TTL_S])
        return bool(int(done))

    async def ack_only(self, entry: OutboxEntry) -> None:
        """Drop a stale copy of an order that is already delivered or buried."""
        async with self.r.pipeline(transaction=True) as pipe:
            pipe.xack(self.k_stream, self.group, entry.entry_id)
            pipe.xdel(self.k_stream, entry.entry_id)
            pipe.zrem(self.k_retry, entry.entry_id)
            await pipe.execute()

    async def bury(self, entry: OutboxEntry, attempts: int, error: str) -> str:
        """Move an order to the dead-letter stream; the dead entry id, '' if it was already finished."""
        return await self._bury(
            keys=[self.k_order(entry.key, entry.case_id), self.k_stream, self.k_dead, self.k_retry],
            args=[self.group, entry.entry_id, entry.key, entry.case_id, entry.order_json, attempts, error[:1000],
                  f"{time.time():.6f}"])

    # dead letters ---------------------------------------------------------
    async def dead_letters(self, limit: int = 100, start: str = "-") -> list[DeadLetter]:
        rows = await self.r.xrange(self.k_dead, start, "+", count=limit)
        return [DeadLetter(dead_id=i, key=f.get("key", ""), case_id=f.get("case", ""),
                           attempts=int(f.get("attempts") or 0), error=f.get("error", ""),
                           failed_at=float(f.get("failed_at") or 0), order=json.loads(f.get("order") or "{}"))
                for i, f in rows]

    async def dead_count(self) -> int:
        return int(await self.r.xlen(self.k_dead))

    async def redrive(self, dead_id: str) -> str:
        """Put a dead letter back into the outbox with a fresh attempt count; the new entry id or ''."""
        rows = await self.r.xrange(self.k_dead, dead_id, dead_id)
        if not rows:
            return ""
        fields = rows[0][1]
        return await self._redrive(keys=[self.k_dead, self.k_stream, self.k_order(fields["key"], fields["case"])],
                                   args=[dead_id, f"{time.time():.6f}"])

    # supervision ----------------------------------------------------------
    async def stats(self) -> dict[str, int]:
        async with self.r.pipeline(transaction=False) as pipe:
            pipe.xlen(self.k_stream)
            pipe.zcard(self.k_retry)
            pipe.xlen(self.k_dead)
            pipe.zcard(self.k_open)
            waiting, retrying, dead, open_ = await pipe.execute()
        pending = 0
        try:
            info = await self.r.xpending(self.k_stream, self.group)
            pending = int(info.get("pending", 0)) if isinstance(info, dict) else 0
        except ResponseError:
            pass  # no group yet (stream backend, or nothing sent)
        return {"outbox": int(waiting), "pending": pending, "retrying": int(retrying), "dead": int(dead),
                "open_orders": int(open_)}

    # open orders by deadline ----------------------------------------------
    async def set_open(self, case_id: str, deadline_at: float) -> None:
        """Put a case under supervision with its deadline (again: a no-op but for a changed deadline). It waits
        in ``unflagged`` too until the overdue sweep has written its entry."""
        async with self.r.pipeline(transaction=True) as pipe:
            pipe.zadd(self.k_open, {case_id: deadline_at})
            pipe.zadd(self.k_unflagged, {case_id: deadline_at})
            await pipe.execute()

    async def clear_open(self, case_id: str) -> None:
        async with self.r.pipeline(transaction=True) as pipe:
            pipe.zrem(self.k_open, case_id)
            pipe.zrem(self.k_unflagged, case_id)
            await pipe.execute()

    async def overdue_ids(self, now: float, limit: int = 100, offset: int = 0) -> list[str]:
        return await self.r.zrangebyscore(self.k_open, "-inf", f"({now}", start=offset, num=limit)

    async def overdue_count(self, now: float) -> int:
        """How many open orders are past their deadline (all of them, not one page)."""
        return int(await self.r.zcount(self.k_open, "-inf", f"({now}"))

    async def due_ids(self, now: float, until: float, limit: int = 100) -> list[str]:
        """Open orders whose deadline falls in [now, until), soonest first."""
        return await self.r.zrangebyscore(self.k_open, now, f"({until}", start=0, num=limit)

    async def due_count(self, now: float, until: float) -> int:
        return int(await self.r.zcount(self.k_open, now, f"({until}"))

    async def open_ids(self, offset: int = 0, limit: int = 500) -> list[str]:
        return await self.r.zrange(self.k_open, offset, offset + limit - 1)

    async def not_open(self, case_ids: list[str]) -> list[str]:
        """Those of ``case_ids`` that are not in the open index."""
        if not case_ids:
            return []
        scores = await self.r.zmscore(self.k_open, case_ids)
        return [cid for cid, score in zip(case_ids, scores, strict=True) if score is None]

    # the overdue sweep's worklist --------------------------------------------
    async def fill_unflagged(self) -> bool:
        """Once per store: orders opened before ``unflagged`` existed join it (the sweep drops those it has
        flagged already). True when this call filled it. Two processes doing it at once do no harm."""
        ready = f"{self.p}:dispatch:unflagged_ready"
        if await self.r.exists(ready):
            return False
        await self.r.zunionstore(self.k_unflagged, [self.k_unflagged, self.k_open], aggregate="MAX")
        await self.r.set(ready, "1")
        return True

    async def unflagged_due(self, now: float, limit: int) -> list[tuple[str, float]]:
        """Open orders past their deadline whose overdue entry is not written yet, oldest deadline first."""
        rows = await self.r.zrangebyscore(self.k_unflagged, "-inf", f"({now}", start=0, num=limit,
                                          withscores=True)
        return [(str(cid), float(score)) for cid, score in rows]

    async def settle_unflagged(self, case_id: str, read_score: float, deadline_at: float | None = None) -> bool:
        """Take a case off the sweep's worklist (``deadline_at`` None), or wait for a later deadline; only while
        it still has the deadline the sweep read."""
        new = "" if deadline_at is None else repr(float(deadline_at))
        return bool(await self._unflagged(keys=[self.k_unflagged], args=[case_id, repr(float(read_score)), new]))

    async def repair_window(self, status_key: str, field: str, limit: int) -> list[str]:
        """The next ``limit`` ids of a status index for the open-index repair, going round it sweep by sweep."""
        cursor_key = f"{self.p}:dispatch:repair_cursor"
        start = int(await self.r.hget(cursor_key, field) or 0)
        ids = await self.r.zrange(status_key, start, start + limit - 1)
        await self.r.hset(cursor_key, field, start + limit if len(ids) == limit else 0)
        return list(ids)

    async def take_poll_turn(self, interval_s: float) -> bool:
        """True for the one process that polls the backend in this interval."""
        ms = max(1, int(interval_s * 1000 * 0.9))
        return bool(await self.r.set(f"{self.p}:dispatch:poll_lock", "1", nx=True, px=ms))
