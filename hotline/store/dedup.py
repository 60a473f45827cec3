"""The candidate index of the duplicate matcher: open cases only, looked up by distinctive keys.

Layout (prefix ``hl``):
- ``hl:dd:k:<key>``     zset case id → created_at: the newest open cases holding one key (a rare
                        character bigram of the text, or ``@<place core>``), capped at ``posting_cap``
- ``hl:dd:m:{id}``      hash: what scoring needs without reading the case (cleaned text, headline,
                        places, norms, category, window, caller hashes, coordinates) and the keys it holds
- ``hl:dd:open``        zset case id → created_at of every indexed case (pruning, counting)
- ``hl:dd:no:{id}``     set of case ids a call-taker said are not duplicates of this case

A lookup reads a bounded slice of a bounded number of postings, so it never touches all cases.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from hotline.store.cases import CLAIM_LUA, Claim, Store
from hotline.store.filing import FILE_ENTRY_LUA, Filing

POSTING_READ = 25  # newest entries read per key and lookup

# KEYS: meta hash, open zset, posting zsets. ARGV: case id, created_at, posting cap, hash field/value pairs.
_ADD_LUA = FILE_ENTRY_LUA + """
file_entry(1, ARGV[1], ARGV[2], tonumber(ARGV[3]), 4)
return #KEYS - 2
"""

# What a lookup returns of each candidate's meta hash, in this order (its key list is not needed).
_LOOKUP_FIELDS = ("at", "cat", "win", "text", "head", "places", "callers", "loc", "norms")

# KEYS[k0]: the asking case's rejection set, KEYS[k0 + 1 ..]: the posting zsets (to the last key).
# ARGV[a0 ..]: oldest created_at, entries read per posting, how many to return, the meta hash key's prefix
# and suffix, the number of fields and the fields to read, then one weight per posting. Returns how many
# cases the postings named, and {id, weight, field values} of the best by falling weight (ties by id),
# leaving out the cases a call-taker said are not duplicates of the asking case. The meta hashes are read
# here too, by name (this index lives on one Redis node): one round trip for the whole lookup.
RANK_LUA = """
local function rank(k0, a0)
  local since, per, limit = ARGV[a0], tonumber(ARGV[a0 + 1]), tonumber(ARGV[a0 + 2])
  local meta_pre, meta_post, nfields = ARGV[a0 + 3], ARGV[a0 + 4], tonumber(ARGV[a0 + 5])
  local fields = {}
  for i = 1, nfields do fields[i] = ARGV[a0 + 5 + i] end
  local w0 = a0 + 5 + nfields - k0
  local rejected = {}
  for _, id in ipairs(redis.call('SMEMBERS', KEYS[k0])) do rejected[id] = true end
  local weight, ids = {}, {}
  for i = k0 + 1, #KEYS do
    local w = tonumber(ARGV[w0 + i])
    for _, id in ipairs(redis.call('ZREVRANGEBYSCORE', KEYS[i], '+inf', since, 'LIMIT', 0, per)) do
      if not rejected[id] then
        local old = weight[id]
        if old == nil then ids[#ids + 1] = id; weight[id] = w else weight[id] = old + w end
      end
    end
  end
  -- The best `limit` by falling weight (ties by id), picked in one pass: sorting every named case with a Lua
  -- comparator cost more than the rest of the lookup.
  local best = {}
  for _, id in ipairs(ids) do
    local w, n = weight[id], #best
    local take = n < limit
    if not take and n > 0 then
      local last = best[n]
      take = w > weight[last] or (w == weight[last] and id < last)
    end
    if take then
      local j = n < limit and n + 1 or n
      while j > 1 do
        local prev = best[j - 1]
        local pw = weight[prev]
        if pw > w or (pw == w and prev < id) then break end
        best[j] = prev
        j = j - 1
      end
      best[j] = id
    end
  end
  local out = {}
  for _, id in ipairs(best) do
    -- A meta hash gone (the case left the index) reads as all nils.
    local values = redis.call('HMGET', meta_pre .. id .. meta_post, unpack(fields))
    if values[1] then
      out[#out + 1] = {id, tostring(weight[id]), values}
    end
  end
  return {#ids, out}
end
"""
_RANK_LUA = RANK_LUA + "return rank(1, 1)"

# The claim of a new case's id (``Claim``) and the lookup of its candidates in one round trip. KEYS: the
# claim's keys, then the lookup's. ARGV: the number of claim keys, the claim's three arguments (``Claim.args``),
# then the lookup's. Returns {claim reply} when an idempotency key named an earlier case, else
# {claim reply, lookup reply}.
_CLAIM_RANK_LUA = CLAIM_LUA + RANK_LUA + """
local n = tonumber(ARGV[1])
local claimed = claim(1, n, ARGV[2], ARGV[3], ARGV[4])
if claimed[1] == 1 then return {claimed} end
return {claimed, rank(n + 1, 5)}
"""


@dataclass
class IndexEntry:
    case_id: str
    created_at: float
    category: str
    window_s: float
    text: str  # cleaned text
    headline: str  # cleaned headline
    places: list[str]
    callers: list[str]
    location: tuple[float, float] | None
    keys: list[str] = field(default_factory=list)
    # Head norm, text norm and text IDF mass of the fingerprint: kept so scoring need not recompute them.
    norms: tuple[float, float, float] | None = None
    hits: float = 0.0  # weight of the keys it shares with the query

    def to_hash(self) -> dict[str, str]:
        return {
            "at": f"{self.created_at:.6f}", "cat": self.category, "win": f"{self.window_s:.0f}",
            "text": self.text, "head": self.headline, "places": json.dumps(self.places, ensure_ascii=False),
            "callers": json.dumps(self.callers), "keys": json.dumps(self.keys, ensure_ascii=False),
            "loc": "" if self.location is None else f"{self.location[0]:.6f},{self.location[1]:.6f}",
            "norms": "" if self.norms is None else ",".join(f"{v:.6f}" for v in self.norms),
        }

    @classmethod
    def from_hash(cls, case_id: str, h: dict[str, str]) -> IndexEntry:
        entry = cls.from_fields(case_id, [h.get(name) for name in _LOOKUP_FIELDS])
        entry.keys = json.loads(h.get("keys") or "[]")
        return entry

    @classmethod
    def from_fields(cls, case_id: str, values: list[str | None]) -> IndexEntry:
        """From the values of ``_LOOKUP_FIELDS``, in that order."""
        at, cat, win, text, head, places, callers, loc, norms = values
        lat, _, lon = (loc or "").partition(",")
        nums = (norms or "").split(",")
        return cls(
            case_id=case_id, created_at=float(at or 0), category=cat or "", window_s=float(win or 0),
            text=text or "", headline=head or "", places=json.loads(places or "[]"),
            callers=json.loads(callers or "[]"), location=(float(lat), float(lon)) if loc else None,
            norms=(float(nums[0]), float(nums[1]), float(nums[2])) if len(nums) == 3 else None,
        )


class DedupIndex:
    def __init__(self, store: Store, *, posting_cap: int = 200) -> None:
        self.store = store
        self.r = store.r
        self.p = store.p
        self.posting_cap = posting_cap
        self._add = self.r.register_script(_ADD_LUA)
        self._rank = self.r.register_script(_RANK_LUA)
        self._claim_rank = self.r.register_script(_CLAIM_RANK_LUA)

    def k_key(self, key: str) -> str:
        return f"{self.p}:dd:k:{key}"

    def k_meta(self, case_id: str) -> str:
        return f"{self.p}:dd:m:{{{case_id}}}"

    def k_no(self, case_id: str) -> str:
        return f"{self.p}:dd:no:{{{case_id}}}"

    @property
    def k_open(self) -> str:
        return f"{self.p}:dd:open"

    async def add(self, entry: IndexEntry) -> None:
        await self.add_many([entry])

    def filing(self, entry: IndexEntry) -> Filing:
        """``entry`` as input of a script that files it (this index's own, or the one creating its case)."""
        return Filing(keys=[self.k_meta(entry.case_id), self.k_open, *(self.k_key(k) for k in entry.keys)],
                      posting_cap=self.posting_cap, fields=[x for kv in entry.to_hash().items() for x in kv])

    async def add_many(self, entries: list[IndexEntry]) -> None:
        # One script call per case: a pipeline of 50 ZADD/ZREMRANGEBYRANK costs more to build and parse
        # in the client than the server spends running them.
        def call(entry: IndexEntry) -> tuple[list[str], list[object]]:
            f = self.filing(entry)
            return f.keys, [entry.case_id, f"{entry.created_at:.6f}", f.posting_cap, *f.fields]

        if len(entries) == 1:  # the live path: a pipeline would first ask SCRIPT EXISTS, a second round trip
            keys, args = call(entries[0])
            await self._add(keys=keys, args=args)
            return
        async with self.r.pipeline(transaction=False) as pipe:
            for entry in entries:
                keys, args = call(entry)
                await self._add(keys=keys, args=args, client=pipe)
            await pipe.execute()

    async def remove(self, case_id: str) -> bool:
        raw = await self.r.hget(self.k_meta(case_id), "keys")
        async with self.r.pipeline(transaction=False) as pipe:
            for key in json.loads(raw or "[]"):
                pipe.zrem(self.k_key(key), case_id)
            pipe.delete(self.k_meta(case_id))
            pipe.zrem(self.k_open, case_id)
            await pipe.execute()
        return raw is not None

    async def contains(self, case_id: str) -> bool:
        return bool(await self.r.exists(self.k_meta(case_id)))

    async def contains_many(self, case_ids: list[str]) -> set[str]:
        async with self.r.pipeline(transaction=False) as pipe:
            for cid in case_ids:
                pipe.exists(self.k_meta(cid))
            found = await pipe.execute()
        return {cid for cid, n in zip(case_ids, found, strict=True) if n}

    async def get(self, case_id: str) -> IndexEntry | None:
        h = await self.r.hgetall(self.k_meta(case_id))
        return IndexEntry.from_hash(case_id, h) if h else None

    async def get_many(self, case_ids: list[str]) -> list[IndexEntry]:
        if not case_ids:
            return []
        async with self.r.pipeline(transaction=False) as pipe:
            for cid in case_ids:
                pipe.hgetall(self.k_meta(cid))
            rows = await pipe.execute()
        return [IndexEntry.from_hash(cid, h) for cid, h in zip(case_ids, rows, strict=True) if h]

    async def candidates(self, keys: dict[str, float], *, now: float, max_window_s: float,
                         limit: int, asking: str = "") -> list[IndexEntry]:
        """Open cases sharing the most key weight with the query, each inside its own category window;
        never one that a call-taker said is not a duplicate of the ``asking`` case."""
        return (await self.lookup(keys, now=now, max_window_s=max_window_s, limit=limit, asking=asking))[0]

    async def lookup(self, keys: dict[str, float], *, now: float, max_window_s: float,
                     limit: int, asking: str = "", claim: Claim | None = None) -> tuple[list[IndexEntry], bool]:
        """``candidates``, and whether the ranking was cut at ``limit`` (more cases share a key).

        With ``claim`` (a new case's id, not yet known) the same round trip gets the id first and settles
        ``claim``; when an idempotency key names an earlier case, nothing is looked up."""
        names = list(keys)
        if not names and claim is None:
            return [], False
        # The posting scan, the weighting and reading the best entries run inside the server.
        pre, _, post = self.k_meta("\x00").partition("\x00")
        args = [f"{now - max_window_s:.6f}", POSTING_READ, limit, pre, post, len(_LOOKUP_FIELDS),
                *_LOOKUP_FIELDS, *(repr(keys[k]) for k in names)]
        lookup_keys = [self.k_no(asking), *(self.k_key(k) for k in names)]
        if claim is None:
            found, rows = await self._rank(keys=lookup_keys, args=args)
        else:
            reply = await self._claim_rank(keys=[*claim.keys, *lookup_keys],
                                           args=[len(claim.keys), *claim.args, *args])
            if claim.settle(reply[0]).earlier:
                return [], False
            found, rows = reply[1]
        out = []
        for case_id, hits, values in rows:
            entry = IndexEntry.from_fields(case_id, values)
            if entry.created_at < now - entry.window_s or entry.created_at > now + 1:
                continue
            entry.hits = float(hits)
            out.append(entry)
        out.sort(key=lambda e: -e.hits)
        return out[:limit], int(found) > limit

    async def expired(self, before: float, count: int = 500) -> list[str]:
        return await self.r.zrangebyscore(self.k_open, "-inf", before, start=0, num=count)

    async def size(self) -> int:
        return int(await self.r.zcard(self.k_open))

    async def add_rejection(self, case_id: str, other_id: str) -> None:
        async with self.r.pipeline(transaction=False) as pipe:
            pipe.sadd(self.k_no(case_id), other_id)
            pipe.sadd(self.k_no(other_id), case_id)
            await pipe.execute()

    async def rejected(self, case_id: str) -> set[str]:
        return set(await self.r.smembers(self.k_no(case_id)))
