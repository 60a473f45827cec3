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
from collections import defaultdict
from dataclasses import dataclass, field

from hotline.store.cases import Store

POSTING_READ = 25  # newest entries read per key and lookup


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
        loc = h.get("loc") or ""
        lat, _, lon = loc.partition(",")
        norms = [float(v) for v in (h.get("norms") or "").split(",") if v]
        return cls(
            case_id=case_id, created_at=float(h.get("at") or 0), category=h.get("cat") or "",
            window_s=float(h.get("win") or 0), text=h.get("text") or "", headline=h.get("head") or "",
            places=json.loads(h.get("places") or "[]"), callers=json.loads(h.get("callers") or "[]"),
            location=(float(lat), float(lon)) if loc else None, keys=json.loads(h.get("keys") or "[]"),
            norms=(norms[0], norms[1], norms[2]) if len(norms) == 3 else None,
        )


class DedupIndex:
    def __init__(self, store: Store, *, posting_cap: int = 200) -> None:
        self.store = store
        self.r = store.r
        self.p = store.p
        self.posting_cap = posting_cap

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
        async with self.r.pipeline(transaction=False) as pipe:
            pipe.hset(self.k_meta(entry.case_id), mapping=entry.to_hash())
            pipe.zadd(self.k_open, {entry.case_id: entry.created_at})
            for key in entry.keys:
                pipe.zadd(self.k_key(key), {entry.case_id: entry.created_at})
                # Keep the newest only: a key shared by thousands of cases says little about any one.
                pipe.zremrangebyrank(self.k_key(key), 0, -self.posting_cap - 1)
            await pipe.execute()

    async def add_many(self, entries: list[IndexEntry]) -> None:
        async with self.r.pipeline(transaction=False) as pipe:
            for entry in entries:
                pipe.hset(self.k_meta(entry.case_id), mapping=entry.to_hash())
                pipe.zadd(self.k_open, {entry.case_id: entry.created_at})
                for key in entry.keys:
                    pipe.zadd(self.k_key(key), {entry.case_id: entry.created_at})
                    pipe.zremrangebyrank(self.k_key(key), 0, -self.posting_cap - 1)
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
                         limit: int) -> list[IndexEntry]:
        """Open cases sharing the most key weight with the query, each inside its own category window."""
        names = list(keys)
        async with self.r.pipeline(transaction=False) as pipe:
            for key in names:
                pipe.zrevrangebyscore(self.k_key(key), "+inf", now - max_window_s, start=0, num=POSTING_READ)
            postings = await pipe.execute()
        weight: dict[str, float] = defaultdict(float)
        for key, ids in zip(names, postings, strict=True):
            for cid in ids:
                weight[cid] += keys[key]
        ranked = sorted(weight, key=lambda c: (-weight[c], c))[:limit]
        out = []
        for entry in await self.get_many(ranked):
            if entry.created_at < now - entry.window_s or entry.created_at > now + 1:
                continue
            entry.hits = weight[entry.case_id]
            out.append(entry)
        out.sort(key=lambda e: -e.hits)
        return out[:limit]

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
