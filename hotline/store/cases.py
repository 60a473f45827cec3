"""Case records, their audit trails and indexes in Redis.

Layout (prefix ``hl`` by default; a case's own keys share the hash tag ``{case_id}``):
- ``hl:case:{id}``      the case record as JSON
- ``hl:events:{id}``    stream, the case's append-only audit trail (who/what/when)
- ``hl:seq:YYYYMMDD``   counter behind the day's case numbers
- ``hl:idem:<key>``     idempotency keys (client request ids, exact resubmissions) → case id
- ``hl:cases``          zset of every case by creation time
- ``hl:status:<s>``     zset of the cases in status s by creation time
- ``hl:queue:confirm``  zset of cases waiting for a call-taker, most urgent and oldest first
- ``hl:feed``           stream of every change, capped, for live consoles and background workers
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import time
import weakref
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

import redis.asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from hotline.callers import caller_keys
from hotline.jsontext import dumps
from hotline.records import Case
from hotline.status import Status, check_move
from hotline.store.connection import connection_pool
from hotline.store.filing import FILE_ENTRY_LUA, Filing

FEED_MAXLEN = 100_000
# A citizen's newest cases kept in the caller index (repeat callers are shown to call-takers).
CASES_PER_CALLER = 200
FEED_POLL_S = 0.1
# A follower whose read found fewer entries than it asked for waits this long before the next read. Under
# load each read then takes the entries of a moment instead of one or two: a read per entry per follower
# would cost the service as much as a case's own writes. Followers react within this delay.
FEED_BATCH_S = 0.05
FEED_BATCH = 200  # entries a follower asks for per read
EVENTS_PER_CASE_MAX = 10_000
# Within a tier of the confirmation queue priority outranks age: one priority step is worth this many seconds.
PRIORITY_WEIGHT_S = 10 * 24 * 3600.0
# The tiers (emergencies, then returned 退单 and reopened orders, then the rest) are this far apart: about
# 317 years, more than any age and priority inside a tier, so no boost carries a case into the tier above.
TIER_WEIGHT_S = 1e10
MAX_QUEUE_PRIORITY = 100  # a runaway priority still stays inside its tier
# Reopened cases wait here too until they are re-dispatched (automatically when a dispatcher runs).
CONFIRM_QUEUE_STATES = frozenset({Status.CLASSIFIED, Status.RETURNED, Status.REOPENED})

StoreUnavailable = (RedisConnectionError, RedisTimeoutError, OSError)

# Error replies with which a running server refuses work it cannot do safely right now: MISCONF when
# it cannot write its AOF/RDB (disk full, with appendfsync everysec/no), READONLY on a replica after a
# failover, LOADING while it replays its AOF, OOM at maxmemory. None of them is the client's fault.
_REFUSAL = re.compile(r"(?:^|caused error: \(')(?:MISCONF|READONLY|LOADING|OOM|MASTERDOWN|NOREPLICAS|TRYAGAIN"
                      r"|CLUSTERDOWN)\b")
STORE_REFUSED_MESSAGE = "系统暂时无法保存数据，请稍后再试（重试时请使用相同的 Idempotency-Key，不会重复登记）。"


def store_refused(exc: BaseException) -> bool:
    """True for a Redis error reply that means "not now" (see _REFUSAL), not a bug of ours.

    The code opens the reply, also inside a Lua script; redis-py puts a failed pipeline command's reply
    after "caused error: ('".
    """
    return isinstance(exc, RedisError) and _REFUSAL.search(str(exc)) is not None


class CaseNotFound(KeyError):
    def __init__(self, case_id: str) -> None:
        super().__init__(case_id)
        self.case_id = case_id


class CaseChanged(Exception):
    """An update made on a condition refused: ``case_id`` was no longer in the status it required."""

    def __init__(self, case_id: str) -> None:
        super().__init__(case_id)
        self.case_id = case_id


@dataclass
class Event:
    id: str
    ts: float
    actor: str
    action: str
    data: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "ts": self.ts, "actor": self.actor, "action": self.action, "data": self.data}


@dataclass
class CreateResult:
    case_id: str
    created: bool  # False: an idempotency key matched and case_id is the earlier case


SEQ_TTL_S = 3 * 86400
# One command instead of MULTI/INCR/EXPIRE/EXEC: every intake waits for this write's fsync.
_NEXT_SEQ_LUA = """
local n = redis.call('INCR', KEYS[1])
if n == 1 then redis.call('EXPIRE', KEYS[1], ARGV[1]) end
return n
"""

# A case id, as a Lua function other scripts include (the duplicate lookup runs it in its round trip).
# KEYS[k0]: the day's sequence, KEYS[k0 + 1 .. k1]: idempotency keys. Returns {1, earlier case id} when an
# idempotency key is taken, else {0, new case id}: a retry spends no number. The number and the keys are
# taken together: a new id is written under every key at once, so a copy of the request arriving before the
# case is written finds the key taken and gets that id (and writes the case under it itself, should the first
# request never do it: ``Intake.submit``). Only the request that takes the keys spends a number.
CLAIM_LUA = """
local function claim(k0, k1, ttl, idem_ttl, day)
  for i = k0 + 1, k1 do
    local earlier = redis.call('GET', KEYS[i])
    if earlier then return {1, earlier} end
  end
  local n = redis.call('INCR', KEYS[k0])
  if n == 1 then redis.call('EXPIRE', KEYS[k0], ttl) end
  local id = string.format('%s-%06d', day, n)
  for i = k0 + 1, k1 do
    redis.call('SET', KEYS[i], id, 'EX', idem_ttl)
  end
  return {0, id}
end
"""
_CLAIM_LUA = CLAIM_LUA + "return claim(1, #KEYS, ARGV[1], ARGV[2], ARGV[3])"


@dataclass
class Claim:
    """Getting a case id, as script input (``keys``: the day's sequence, then the idempotency keys; ``args``);
    once a script ran it, ``settle`` fills in the id and whether an idempotency key named an earlier case.

    A new id is written under the idempotency keys by the same script: a copy of the request that comes
    meanwhile is told about it (``earlier``) even before the case is written (``create_case`` accepts keys
    that name the case being created)."""

    day: str
    keys: list[str]
    ttl: int
    idem_ttl: int = 86400
    case_id: str = ""
    earlier: bool = False
    settled: bool = False

    @property
    def args(self) -> list[str | int]:
        """The claim's ARGV, in the order of the Lua ``claim`` function's parameters after the key range."""
        return [self.ttl, self.idem_ttl, self.day]

    def settle(self, reply: list[Any]) -> Claim:
        taken, value = reply
        self.earlier = bool(int(taken))
        self.case_id = str(value)
        self.settled = True
        return self


# KEYS: the status indexes, in the order of Status. ARGV: the case record key prefix and suffix, the number
# of leading status indexes whose cases' records are wanted, then case ids. Returns, per id, the 1-based
# number of the first index holding it (0 for none), then the record of the first id when its status is
# one of those (else false). One script is one snapshot: a move between two indexes is never seen half.
_STATUSES_LUA = """
local n_read = tonumber(ARGV[3])
local out = {}
for i = 4, #ARGV do
  out[i - 3] = 0
  for k = 1, #KEYS do
    if redis.call('ZSCORE', KEYS[k], ARGV[i]) then out[i - 3] = k; break end
  end
end
local first = out[1]
if first and first > 0 and first <= n_read then
  out[#out + 1] = redis.call('GET', ARGV[1] .. ARGV[4] .. ARGV[2])
else
  out[#out + 1] = false
end
return out
"""

# Creates a case with its events and index entries in one atomic step, unless one of the
# idempotency keys is already taken by another case (then that case id is returned and nothing is written).
# A key naming this very id was taken with the number (``CLAIM_LUA``): when the case exists already, a copy of
# the same request wrote it and its id is returned as an earlier case; a case that exists while no key names
# it is a number given twice, and refused. With a
# filing, the case's entry in the candidate index (hotline/store/filing.py) is written in the same step.
# KEYS: case, events, all-cases, status index, confirm queue, feed, caller keys..., idem keys...,
#       filing keys...
# ARGV: case id, case json, created ts, idem ttl, events json, queue score ('' = not queued), status,
#       feed maxlen, number of caller keys, cases kept per caller, number of filing keys (0: none),
#       posting cap, the filing's field/value pairs...
_CREATE_LUA = FILE_ENTRY_LUA + """
local n_callers = tonumber(ARGV[9])
local n_fixed = 6 + n_callers
local n_file = tonumber(ARGV[11])
local last_idem = #KEYS - n_file
local claimed = false
for i = n_fixed + 1, last_idem do
  local existing = redis.call('GET', KEYS[i])
  if existing == ARGV[1] then
    claimed = true
  elseif existing then
    return {0, existing}
  end
end
if redis.call('EXISTS', KEYS[1]) == 1 then
  if claimed then return {0, ARGV[1]} end
  return redis.error_reply('case id already used: ' .. ARGV[1])
end
redis.call('SET', KEYS[1], ARGV[2])
for _, ev in ipairs(cjson.decode(ARGV[5])) do
  redis.call('XADD', KEYS[2], '*', 'ts', ev[1], 'actor', ev[2], 'action', ev[3], 'data', ev[4])
end
redis.call('ZADD', KEYS[3], ARGV[3], ARGV[1])
redis.call('ZADD', KEYS[4], ARGV[3], ARGV[1])
if ARGV[6] ~= '' then redis.call('ZADD', KEYS[5], ARGV[6], ARGV[1]) end
redis.call('XADD', KEYS[6], 'MAXLEN', '~', ARGV[8], '*', 'case', ARGV[1], 'action', 'created', 'status', ARGV[7])
for i = 7, n_fixed do
  redis.call('ZADD', KEYS[i], ARGV[3], ARGV[1])
  redis.call('ZREMRANGEBYRANK', KEYS[i], 0, -tonumber(ARGV[10]) - 1)
end
for i = n_fixed + 1, last_idem do
  redis.call('SET', KEYS[i], ARGV[1], 'EX', ARGV[4])
end
if n_file > 0 then file_entry(last_idem + 1, ARGV[1], ARGV[3], tonumber(ARGV[12]), 13) end
return {1, ARGV[1]}
"""

# Writes one case's new record with its event, index moves and feed entry, as a Lua function the update scripts
# share. KEYS[kc]: case, KEYS[ke]: its events, KEYS[ks0]/KEYS[ks1]: status index before/after, KEYS[kq]: confirm
# queue, KEYS[kf]: feed. ARGV[a ..]: new record, case id, created ts, queue score ('' = not queued), event ts,
# actor, action, event data json, events maxlen, new status, feed maxlen.
WRITE_CASE_LUA = """
local function write_case(kc, ke, ks0, ks1, kq, kf, a)
  redis.call('SET', KEYS[kc], ARGV[a])
  if KEYS[ks0] ~= KEYS[ks1] then
    redis.call('ZREM', KEYS[ks0], ARGV[a + 1])
    redis.call('ZADD', KEYS[ks1], ARGV[a + 2], ARGV[a + 1])
  end
  if ARGV[a + 3] == '' then
    redis.call('ZREM', KEYS[kq], ARGV[a + 1])
  else
    redis.call('ZADD', KEYS[kq], ARGV[a + 3], ARGV[a + 1])
  end
  redis.call('XADD', KEYS[ke], 'MAXLEN', '~', ARGV[a + 8], '*', 'ts', ARGV[a + 4], 'actor', ARGV[a + 5],
             'action', ARGV[a + 6], 'data', ARGV[a + 7])
  redis.call('XADD', KEYS[kf], 'MAXLEN', '~', ARGV[a + 10], '*', 'case', ARGV[a + 1], 'action', ARGV[a + 6],
             'status', ARGV[a + 9])
end
"""

# Writes an updated case with its event, index moves and feed entry, if the stored record is still the one
# the update was computed from: the check and the write in one round trip, where WATCH/GET/MULTI/EXEC took
# three. KEYS: case, events, status index before, status index after, confirm queue, feed, then the status
# index of each required case. ARGV: record read, then what write_case takes (new record ... feed maxlen), then
# the required cases' ids (one per extra key: that case must be in that index for the write to happen).
# Returns 1 written, 0 the record changed meanwhile (read it again), -1 no such case, -2 - i the i-th
# required case is not in its status (nothing written).
_UPDATE_LUA = WRITE_CASE_LUA + """
local current = redis.call('GET', KEYS[1])
if not current then return -1 end
if current ~= ARGV[1] then return 0 end
for i = 7, #KEYS do
  if not redis.call('ZSCORE', KEYS[i], ARGV[i + 6]) then return -2 - (i - 7) end
end
write_case(1, 2, 3, 4, 5, 6, 2)
return 1
"""

# Writes several cases at once, if none of the cases read (written or not) has changed since: a change that
# spans cases (a report taken off one case and put back on its own, a case and its reports moved onto
# another) is written whole or not at all. KEYS: the n cases read, confirm queue, feed, then per case written
# its events, status index before and after. ARGV: n, the number of cases written, the n records read ('' for
# a case that did not exist), then per case written the position of its record among the n and what
# write_case takes (12 values each). Returns 1 written, 0 a case changed meanwhile (read them again).
_UPDATE_MANY_LUA = WRITE_CASE_LUA + """
local n, w = tonumber(ARGV[1]), tonumber(ARGV[2])
for i = 1, n do
  if (redis.call('GET', KEYS[i]) or '') ~= ARGV[2 + i] then return 0 end
end
for j = 0, w - 1 do
  local b, k = n + 3 + 12 * j, n + 3 + 3 * j
  write_case(tonumber(ARGV[b]), k, k + 1, k + 2, n + 1, n + 2, b + 1)
end
return 1
"""

# What ``update_linked``'s mutate returns: for each case it changed, the action and data of its event.
Changes = dict[str, tuple[str, dict[str, Any]]]


def stored_record(case: Case) -> str:
    """The record of ``case`` as the store writes it: what ``read=`` of the updates compares with."""
    return dumps(case.to_dict())


def queue_score(case: Case) -> float | None:
    """Position in the confirmation queue (lower first), or None when the case does not wait there.

    Strict tiers: emergencies, then returned 退单 and reopened orders, then the rest. Inside a tier each
    priority step (a merged report, intake's urgent rules) counts as ``PRIORITY_WEIGHT_S`` of age; then the
    oldest first. The plain tier keeps the scores of before the tiers, so entries written then still sort
    among it (the console orders what it reads by this function, too).
    """
    if case.status not in CONFIRM_QUEUE_STATES:
        return None
    tier = 2 if case.emergency else 1 if case.status in (Status.RETURNED, Status.REOPENED) else 0
    priority = min(max(int(case.priority), 0), MAX_QUEUE_PRIORITY)
    return case.created_at - priority * PRIORITY_WEIGHT_S - tier * TIER_WEIGHT_S


class Store:
    def __init__(self, client: aioredis.Redis, *, prefix: str = "hl", timezone: str = "Asia/Shanghai",
                 idempotency_ttl_s: int = 86400) -> None:
        self.r = client
        self.p = prefix
        self.tz = ZoneInfo(timezone)
        self.idem_ttl = idempotency_ttl_s
        self._create = self.r.register_script(_CREATE_LUA)
        self._next_seq = self.r.register_script(_NEXT_SEQ_LUA)
        self._statuses = self.r.register_script(_STATUSES_LUA)
        self._claim = self.r.register_script(_CLAIM_LUA)
        self._update = self.r.register_script(_UPDATE_LUA)
        self._update_many = self.r.register_script(_UPDATE_MANY_LUA)
        # Concurrent updates of one case in this process queue here instead of racing for the same record:
        # a burst of 200 reports merged into one case would otherwise retry O(n²) times.
        self._case_locks: weakref.WeakValueDictionary[str, asyncio.Lock] = weakref.WeakValueDictionary()

    @classmethod
    def from_url(cls, url: str, **kwargs: Any) -> Store:
        # A bounded pool that waits for a free connection: bursts queue instead of failing.
        pool = connection_pool(
            url, decode_responses=True, socket_timeout=5, socket_connect_timeout=2,
            health_check_interval=30, max_connections=64, timeout=5,
        )
        return cls(aioredis.Redis(connection_pool=pool), **kwargs)

    async def close(self) -> None:
        await self.r.aclose(close_connection_pool=True)

    async def ping(self) -> bool:
        try:
            return bool(await self.r.ping())
        except (RedisError, OSError):
            return False

    # keys -----------------------------------------------------------------
    def k_case(self, case_id: str) -> str:
        return f"{self.p}:case:{{{case_id}}}"

    def k_events(self, case_id: str) -> str:
        return f"{self.p}:events:{{{case_id}}}"

    def k_status(self, status: Status | str) -> str:
        return f"{self.p}:status:{status}"

    def k_caller(self, key: str) -> str:
        return f"{self.p}:caller:{key}"

    def k_idem(self, key: str) -> str:
        return f"{self.p}:idem:{key}"

    @property
    def k_all(self) -> str:
        return f"{self.p}:cases"

    @property
    def k_confirm(self) -> str:
        return f"{self.p}:queue:confirm"

    @property
    def k_feed(self) -> str:
        return f"{self.p}:feed"

    # ids ------------------------------------------------------------------
    async def allocate_id(self, now: float | None = None) -> str:
        """Date + day sequence, e.g. 20261122-000123: short enough to read out on the phone."""
        day = datetime.fromtimestamp(now or time.time(), self.tz).strftime("%Y%m%d")
        n = await self._next_seq(keys=[f"{self.p}:seq:{day}"], args=[SEQ_TTL_S])
        return f"{day}-{int(n):06d}"

    def claim(self, idempotency_keys: list[str], now: float | None = None) -> Claim:
        """A case id to get: run by ``settle``, or inside another script (the duplicate lookup)."""
        day = datetime.fromtimestamp(now or time.time(), self.tz).strftime("%Y%m%d")
        return Claim(day, [f"{self.p}:seq:{day}", *(self.k_idem(k) for k in idempotency_keys)], SEQ_TTL_S,
                     self.idem_ttl)

    async def settle(self, claim: Claim) -> Claim:
        return claim.settle(await self._claim(keys=claim.keys, args=claim.args))

    async def claim_id(self, idempotency_keys: list[str], now: float | None = None) -> tuple[str, bool]:
        """The case an idempotency key already names (id, True), else a new id as ``allocate_id`` (id, False),
        which the keys name from then on."""
        claim = await self.settle(self.claim(idempotency_keys, now))
        return claim.case_id, claim.earlier

    # cases ----------------------------------------------------------------
    async def create_case(self, case: Case, *, idempotency_keys: Iterable[str] = (),
                          events: Iterable[tuple[str, str, dict[str, Any]]] = (),
                          filing: Filing | None = None) -> CreateResult:
        """Store a new case atomically with its first events and its caller index entries, unless an
        idempotency key matched; with ``filing``, its candidate index entry too."""
        evs = [[f"{case.created_at:.6f}", actor, action, dumps(data)]
               for actor, action, data in events]
        score = queue_score(case)
        callers = [self.k_caller(k) for k in caller_keys(case)]
        keys = [self.k_case(case.id), self.k_events(case.id), self.k_all, self.k_status(case.status),
                self.k_confirm, self.k_feed, *callers, *(self.k_idem(k) for k in idempotency_keys)]
        args = [case.id, stored_record(case), f"{case.created_at:.6f}",
                self.idem_ttl, dumps(evs), "" if score is None else f"{score:.6f}",
                str(case.status), FEED_MAXLEN, len(callers), CASES_PER_CALLER]
        if filing is None:
            args.append(0)
        else:
            keys.extend(filing.keys)
            args.extend([len(filing.keys), filing.posting_cap, *filing.fields])
        created, case_id = await self._create(keys=keys, args=args)
        return CreateResult(case_id=case_id, created=bool(int(created)))

    async def caller_history(self, case: Case, limit: int = 10) -> list[Case]:
        """The same citizen's other cases (by phone, or by chat/phone sender id), newest first."""
        return await self.cases_of_callers(caller_keys(case), exclude=case.id, limit=limit)

    async def forget_callers(self, case_id: str, callers: list[str]) -> None:
        """Take a case out of the caller index (its citizen's data was purged)."""
        if callers:
            async with self.r.pipeline(transaction=False) as pipe:
                for key in callers:
                    pipe.zrem(self.k_caller(key), case_id)
                await pipe.execute()

    async def cases_of_callers(self, callers: list[str], *, exclude: str = "", limit: int = 10) -> list[Case]:
        """Cases filed under any of the caller hashes (hotline/callers.py), newest first."""
        keys = [self.k_caller(k) for k in callers if k]
        if not keys:
            return []
        async with self.r.pipeline(transaction=False) as pipe:
            for key in keys:
                pipe.zrevrange(key, 0, limit, withscores=True)
            rows = await pipe.execute()
        newest: dict[str, float] = {}
        for row in rows:
            for case_id, ts in row:
                if case_id != exclude:
                    newest[case_id] = max(ts, newest.get(case_id, 0.0))
        ids = sorted(newest, key=lambda c: -newest[c])[:limit]
        return await self.get_cases(ids)

    async def idempotency_cases(self, keys: list[str]) -> list[str | None]:
        """The case each idempotency key names (None: the key was never taken or has expired)."""
        if not keys:
            return []
        return list(await self.r.mget([self.k_idem(k) for k in keys]))

    async def get_case(self, case_id: str) -> Case:
        raw = await self.r.get(self.k_case(case_id))
        if raw is None:
            raise CaseNotFound(case_id)
        return Case.from_dict(json.loads(raw))

    async def get_cases(self, case_ids: list[str]) -> list[Case]:
        if not case_ids:
            return []
        raws = await self.r.mget([self.k_case(c) for c in case_ids])
        return [Case.from_dict(json.loads(r)) for r in raws if r is not None]

    async def statuses(self, case_ids: list[str]) -> dict[str, Status | None]:
        """Each case's status read from the status indexes (None: no such case), in one round trip and
        without parsing a record."""
        return (await self.statuses_and_record(case_ids))[0]

    async def statuses_and_record(self, case_ids: list[str], read_in: Iterable[Status] = ()
                                  ) -> tuple[dict[str, Status | None], str | None]:
        """``statuses``, and in the same round trip the stored record of the first case when its status is
        in ``read_in`` (for ``update_case(read=...)``), else None."""
        out: dict[str, Status | None] = dict.fromkeys(case_ids)
        if not case_ids:
            return out, None
        wanted = set(read_in)
        # The wanted statuses first: the script reads the record when the first case is in one of them.
        order = [s for s in Status if s in wanted] + [s for s in Status if s not in wanted]
        pre, _, post = self.k_case("\x00").partition("\x00")
        *found, record = await self._statuses(keys=[self.k_status(s) for s in order],
                                              args=[pre, post, len(wanted), *case_ids])
        for case_id, k in zip(case_ids, found, strict=True):
            if k:
                out[case_id] = order[int(k) - 1]
        return out, record or None

    async def case_exists(self, case_id: str) -> bool:
        return bool(await self.r.exists(self.k_case(case_id)))

    async def update_case(self, case_id: str, mutate: Callable[[Case], dict[str, Any] | None], *,
                          actor: str, action: str, target: Status | None = None, read: str | None = None,
                          require: Mapping[str, Status] | None = None) -> Case:
        """Read-modify-write one case, with its event, indexes and feed entry.

        ``mutate`` changes the case in place and returns the event's data. A ``target`` status is
        checked against the status machine before anything is written. The write happens only if the
        record is still the one read (optimistic concurrency); otherwise the case is read and changed again.
        ``read``: the record as the caller has just read it (``statuses_and_record``), to start from
        without reading it again; if it has changed since, the write is refused and the case read anew.
        ``require``: other cases and the status each must be in when the write happens, checked in the same
        step as the write; if one is not, nothing is written and ``CaseChanged`` names it.
        """
        required = list((require or {}).items())
        key = self.k_case(case_id)
        async with self._lock(case_id):
            while True:
                raw, read = (read, None) if read is not None else (await self.r.get(key), None)
                if raw is None:
                    raise CaseNotFound(case_id)
                case = Case.from_dict(json.loads(raw))
                before = case.status
                if target is not None:
                    check_move(case.status, target)
                    case.status = target
                data = mutate(case) or {}
                now = time.time()
                written = await self._update(
                    keys=[*self._write_keys(case_id, before, case.status), self.k_confirm, self.k_feed,
                          *(self.k_status(st) for _other, st in required)],
                    args=[raw, *self._write_args(case, before, now, actor, action, data),
                          *(other for other, _st in required)])
                if int(written) == 1:
                    return case
                if int(written) == -1:
                    raise CaseNotFound(case_id)
                if int(written) <= -2:
                    raise CaseChanged(required[-2 - int(written)][0])

    async def update_linked(self, case_ids: Sequence[str], mutate: Callable[[dict[str, Case]], Changes | None], *,
                            actor: str, read: Mapping[str, str | None] | None = None) -> dict[str, Case]:
        """Read-modify-write several cases as one change (``update_case`` for a change that spans cases).

        ``mutate`` gets the cases by id (one that does not exist is left out), changes some of them in place
        and returns, for each case it changed, the action and data of its event; a status it sets is checked
        against the status machine. The changed cases are written with their events, indexes and feed
        entries only if none of the cases read, changed or not, is different from what was read; otherwise
        all are read and changed again. An exception from ``mutate`` writes nothing. ``read``: records as the
        caller knows them (``stored_record``), to start from without reading them again. Returns the cases
        as read and changed.
        """
        ids = list(dict.fromkeys(case_ids))
        keys = [self.k_case(c) for c in ids]
        known = {c: raw for c, raw in (read or {}).items() if raw is not None and c in ids}
        async with contextlib.AsyncExitStack() as stack:
            for case_id in sorted(ids):  # one order for every caller: no two wait for each other
                await stack.enter_async_context(self._lock(case_id))
            while True:
                missing = [i for i, c in enumerate(ids) if c not in known]
                raws: list[str | None] = [known.get(c) for c in ids]
                if missing:
                    for i, raw in zip(missing, await self.r.mget([keys[i] for i in missing]), strict=True):
                        raws[i] = raw
                known = {}
                cases = {c: Case.from_dict(json.loads(raw)) for c, raw in zip(ids, raws, strict=True)
                         if raw is not None}
                before = {c: case.status for c, case in cases.items()}
                changes = mutate(cases) or {}
                if not changes:
                    return cases
                now = time.time()
                w_keys: list[str] = []
                w_args: list[Any] = []
                for case_id, (action, data) in changes.items():
                    case = cases[case_id]
                    if case.status != before[case_id]:
                        check_move(before[case_id], case.status)
                    w_keys.extend(self._write_keys(case_id, before[case_id], case.status)[1:])
                    w_args.extend([ids.index(case_id) + 1,
                                   *self._write_args(case, before[case_id], now, actor, action, data)])
                written = await self._update_many(
                    keys=[*keys, self.k_confirm, self.k_feed, *w_keys],
                    args=[len(ids), len(changes), *(raw or "" for raw in raws), *w_args])
                if int(written) == 1:
                    return cases

    def _lock(self, case_id: str) -> asyncio.Lock:
        lock = self._case_locks.get(case_id)
        if lock is None:
            lock = self._case_locks[case_id] = asyncio.Lock()
        return lock

    def _write_keys(self, case_id: str, before: Status, after: Status) -> list[str]:
        """The keys ``write_case`` takes for one case, but the confirm queue and the feed: case, events,
        status index before and after."""
        return [self.k_case(case_id), self.k_events(case_id), self.k_status(before), self.k_status(after)]

    @staticmethod
    def _write_args(case: Case, before: Status, now: float, actor: str, action: str,
                    data: dict[str, Any]) -> list[Any]:
        """What ``write_case`` takes for ``case`` changed from status ``before``: stamps it updated at ``now``."""
        case.updated_at = now
        if case.status != before:
            data = {"from": str(before), "to": str(case.status), **data}
        score = queue_score(case)
        return [stored_record(case), case.id, f"{case.created_at:.6f}", "" if score is None else f"{score:.6f}",
                f"{now:.6f}", actor, action, dumps(data), EVENTS_PER_CASE_MAX, str(case.status), FEED_MAXLEN]

    async def add_event(self, case_id: str, *, actor: str, action: str, data: dict[str, Any]) -> str:
        """An audit entry that does not change the case (a view, a note, a notification sent)."""
        if not await self.case_exists(case_id):
            raise CaseNotFound(case_id)
        return await self.r.xadd(self.k_events(case_id),
                                 {"ts": f"{time.time():.6f}", "actor": actor, "action": action,
                                  "data": dumps(data)},
                                 maxlen=EVENTS_PER_CASE_MAX, approximate=True)

    async def events(self, case_id: str, count: int = 1000) -> list[Event]:
        rows = await self.r.xrange(self.k_events(case_id), count=count)
        return [Event(id=eid, ts=float(f["ts"]), actor=f["actor"], action=f["action"],
                      data=json.loads(f.get("data") or "{}")) for eid, f in rows]

    async def events_many(self, case_ids: list[str], count: int = 1000) -> dict[str, list[Event]]:
        """Audit trails of many cases in one round trip (reports over thousands of cases)."""
        async with self.r.pipeline(transaction=False) as pipe:
            for case_id in case_ids:
                pipe.xrange(self.k_events(case_id), count=count)
            results = await pipe.execute()
        return {case_id: [Event(id=eid, ts=float(f["ts"]), actor=f["actor"], action=f["action"],
                                data=json.loads(f.get("data") or "{}")) for eid, f in rows]
                for case_id, rows in zip(case_ids, results, strict=True)}

    # listings -------------------------------------------------------------
    async def case_ids_between(self, start: float, end: float, limit: int = 100_000) -> list[str]:
        """Cases created in [start, end), oldest first."""
        return await self.r.zrangebyscore(self.k_all, start, f"({end}", start=0, num=limit)

    async def case_ids(self, *, status: Status | None = None, offset: int = 0, limit: int = 50,
                       newest_first: bool = True) -> list[str]:
        key = self.k_status(status) if status else self.k_all
        if newest_first:
            return await self.r.zrevrange(key, offset, offset + limit - 1)
        return await self.r.zrange(key, offset, offset + limit - 1)

    async def count(self, status: Status | None = None) -> int:
        return int(await self.r.zcard(self.k_status(status) if status else self.k_all))

    async def counts(self) -> tuple[int, dict[Status, int]]:
        """All cases, and the cases in each status, in one round trip."""
        async with self.r.pipeline(transaction=False) as pipe:
            pipe.zcard(self.k_all)
            for status in Status:
                pipe.zcard(self.k_status(status))
            total, *by_status = await pipe.execute()
        return int(total), {s: int(n) for s, n in zip(Status, by_status, strict=True)}

    async def confirm_queue(self, limit: int = 100) -> list[str]:
        return await self.r.zrange(self.k_confirm, 0, limit - 1)

    async def feed(self, last_id: str = "$", block_ms: int = 0, count: int = 100) -> list[tuple[str, dict]]:
        """Feed entries after ``last_id``, waiting up to ``block_ms`` for one.

        Waiting is done by polling, not with XREAD BLOCK: a task cancelled while redis-py waits on a
        blocking read can lose the cancellation and hang shutdown.
        """
        if last_id == "$":
            last_id = await self.feed_last_id()
        deadline = time.monotonic() + block_ms / 1000
        while True:
            res = await self.r.xread({self.k_feed: last_id}, count=count)
            entries = [(eid, fields) for _stream, items in res for eid, fields in items]
            if entries or time.monotonic() >= deadline:
                return entries
            await asyncio.sleep(min(FEED_POLL_S, max(0.0, deadline - time.monotonic())))

    async def feed_last_id(self) -> str:
        info = await self.r.xrevrange(self.k_feed, count=1)
        return info[0][0] if info else "0-0"
