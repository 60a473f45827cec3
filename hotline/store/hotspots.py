"""Hotspot records (未诉先办): clusters of similar open cases at one place.

Layout (prefix ``hl``):
- ``hl:hs:rec:<id>``       the hotspot as JSON
- ``hl:hs:open`` / ``hl:hs:all``  zsets hotspot id → opened_at
- ``hl:hs:key:<place>|<category>``  id of the open hotspot of that place and category
- ``hl:hs:case:{id}``      set of hotspot ids a case belongs to
- ``hl:hs:events``         stream of raised / updated / closed hotspots (capped)
"""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import asdict, dataclass, field
from typing import Any

from hotline.store.cases import Store

EVENTS_MAXLEN = 10_000


@dataclass
class Hotspot:
    id: str
    place: str
    category: str
    case_ids: list[str]
    reporters: int
    status: str  # open | closed
    opened_at: float
    updated_at: float
    closed_at: float = 0.0
    open_case_ids: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class HotspotStore:
    def __init__(self, store: Store) -> None:
        self.r = store.r
        self.p = store.p

    def k_rec(self, hid: str) -> str:
        return f"{self.p}:hs:rec:{hid}"

    def k_key(self, place: str, category: str) -> str:
        return f"{self.p}:hs:key:{place}|{category}"

    def k_case(self, case_id: str) -> str:
        return f"{self.p}:hs:case:{{{case_id}}}"

    @property
    def k_open(self) -> str:
        return f"{self.p}:hs:open"

    @property
    def k_all(self) -> str:
        return f"{self.p}:hs:all"

    @property
    def k_events(self) -> str:
        return f"{self.p}:hs:events"

    async def get(self, hid: str) -> Hotspot | None:
        raw = await self.r.get(self.k_rec(hid))
        return Hotspot(**json.loads(raw)) if raw else None

    async def open_for(self, place: str, category: str) -> Hotspot | None:
        hid = await self.r.get(self.k_key(place, category))
        return await self.get(hid) if hid else None

    async def of_case(self, case_id: str) -> list[Hotspot]:
        return (await self.of_cases([case_id]))[0]

    async def of_cases(self, case_ids: list[str]) -> list[list[Hotspot]]:
        """The hotspots of each case, in two round trips however many cases."""
        if not case_ids:
            return []
        async with self.r.pipeline(transaction=False) as pipe:
            for cid in case_ids:
                pipe.smembers(self.k_case(cid))
            id_sets = [sorted(ids) for ids in await pipe.execute()]
        wanted = sorted({h for ids in id_sets for h in ids})
        raws = await self.r.mget([self.k_rec(h) for h in wanted]) if wanted else []
        found = {h: Hotspot(**json.loads(raw)) for h, raw in zip(wanted, raws, strict=True) if raw}
        return [[found[h] for h in ids if h in found] for ids in id_sets]

    async def save(self, hs: Hotspot, *, event: str = "") -> None:
        async with self.r.pipeline(transaction=True) as pipe:
            pipe.set(self.k_rec(hs.id), json.dumps(hs.to_dict(), ensure_ascii=False))
            pipe.zadd(self.k_all, {hs.id: hs.opened_at})
            if hs.status == "open":
                pipe.zadd(self.k_open, {hs.id: hs.opened_at})
                pipe.set(self.k_key(hs.place, hs.category), hs.id)
            else:
                pipe.zrem(self.k_open, hs.id)
                pipe.delete(self.k_key(hs.place, hs.category))
            for cid in hs.case_ids:
                pipe.sadd(self.k_case(cid), hs.id)
            if event:
                pipe.xadd(self.k_events, {"hotspot": hs.id, "action": event, "place": hs.place,
                                          "category": hs.category, "reporters": str(hs.reporters),
                                          "ts": f"{time.time():.6f}"},
                          maxlen=EVENTS_MAXLEN, approximate=True)
            await pipe.execute()

    @staticmethod
    def new(place: str, category: str, now: float) -> Hotspot:
        return Hotspot(id=f"hs-{uuid.uuid4().hex[:12]}", place=place, category=category, case_ids=[],
                       reporters=0, status="open", opened_at=now, updated_at=now)

    async def listing(self, *, status: str = "open", limit: int = 50) -> list[Hotspot]:
        """Up to ``limit`` hotspots of ``status`` (open, closed or all), newest first."""
        if status == "open":
            key, page = self.k_open, limit
        else:
            # Closed hotspots have no index of their own: they are the ones of the full list that are not
            # open. Among the newest limit + (open count) at least ``limit`` are closed, so one page mostly does.
            key, page = self.k_all, limit + (await self.r.zcard(self.k_open) if status == "closed" else 0)
        out: list[Hotspot] = []
        start = 0
        while len(out) < limit:
            ids = await self.r.zrevrange(key, start, start + page - 1)
            if not ids:
                break
            start += len(ids)
            for raw in await self.r.mget([self.k_rec(hid) for hid in ids]):
                hs = Hotspot(**json.loads(raw)) if raw else None
                if hs is not None and status in ("all", hs.status):
                    out.append(hs)
                    if len(out) == limit:
                        break
        return out

    async def events(self, count: int = 100) -> list[dict[str, str]]:
        rows = await self.r.xrange(self.k_events, count=count)
        return [fields for _id, fields in rows]
