"""Hotspots (未诉先办): many reporters of one problem at one place within a sliding window.

A hotspot is keyed by place core and category. It is raised when the open cases naming that place and
similar to the case that just came in (or just gained a merged reporter) count at least
``hotspot_min_reporters`` reporters in the last ``hotspot_window_s`` seconds — a case's own reporter and
each merged report count once each. It is closed when none of its cases is open any more. Raising and
closing are written to the hotspot event stream and to each member case's audit trail.
"""

from __future__ import annotations

import contextlib
import logging
import time

from hotline.nlp.dedup import Fingerprint, Idf, from_cleaned, pair_score
from hotline.records import Case
from hotline.store import CaseNotFound, Store
from hotline.store.dedup import DedupIndex, IndexEntry
from hotline.store.hotspots import Hotspot, HotspotStore

log = logging.getLogger("hotline.hotspots")


class HotspotService:
    def __init__(self, store: Store, index: DedupIndex, idf: Idf, *, min_reporters: int, window_s: float,
                 similarity: float) -> None:
        self.store = store
        self.index = index
        self.hs = HotspotStore(store)
        self.idf = idf
        self.min_reporters = max(1, min_reporters)
        self.window_s = window_s
        self.similarity = similarity

    def _fp(self, entry: IndexEntry) -> Fingerprint:
        return from_cleaned(entry.text, entry.headline, entry.places, self.idf, entry.norms)

    async def case_opened(self, entry: IndexEntry, now: float | None = None) -> Hotspot | None:
        await self.hs.add_place_case(entry.places, entry.case_id, entry.created_at)
        return await self.evaluate(entry, now)

    async def evaluate(self, seed: IndexEntry, now: float | None = None) -> Hotspot | None:
        """Raise or refresh the hotspot of the seed case: similar open cases at the places it names."""
        now = time.time() if now is None else now
        since = now - self.window_s
        seed_fp = self._fp(seed)
        members: set[str] = {seed.case_id}
        best_place, best_n = "", 0
        for core in seed.places:
            at_place = {seed.case_id}
            ids = [i for i in await self.hs.place_cases(core, since) if i != seed.case_id]
            for entry in await self.index.get_many(ids):
                if pair_score(seed_fp, self._fp(entry), self.idf).score >= self.similarity:
                    at_place.add(entry.case_id)
            members |= at_place
            if len(at_place) > best_n:
                best_place, best_n = core, len(at_place)
        if not best_place:
            return None
        # One cluster is one hotspot, whichever of its places a later report names first.
        existing = None
        for cid in sorted(members):
            existing = next((h for h in await self.hs.of_case(cid) if h.status == "open"), None)
            if existing is not None:
                break
        if existing is not None:
            members |= set(existing.open_case_ids)
        cases = await self.store.get_cases(sorted(members))
        open_ids = [c.id for c in cases if await self.index.contains(c.id)]
        reporters = sum(self._reporters(c, since) for c in cases if c.id in open_ids)
        if existing is not None:
            existing.case_ids = sorted(set(existing.case_ids) | set(open_ids))
            existing.open_case_ids = open_ids
            existing.reporters = max(existing.reporters, reporters)
            existing.updated_at = now
            await self.hs.save(existing, event="updated")
            return existing
        if reporters < self.min_reporters:
            return None
        hs = self.hs.new(best_place, seed.category, now)
        hs.case_ids, hs.open_case_ids, hs.reporters = open_ids, list(open_ids), reporters
        await self.hs.save(hs, event="raised")
        for cid in open_ids:
            await self._audit(cid, "hotspot_raised", hs)
        log.info("hotspot raised", extra={"event": "hotspot_raised", "hotspot": hs.id, "reporters": reporters})
        return hs

    @staticmethod
    def _reporters(case: Case, since: float) -> int:
        return int(case.created_at >= since) + sum(1 for r in case.reports if r.received_at >= since)

    async def case_closed(self, case_id: str, places: list[str], now: float | None = None) -> list[Hotspot]:
        """A member case is no longer open: the hotspot closes when none of its cases is."""
        now = time.time() if now is None else now
        await self.hs.remove_place_case(places, case_id)
        changed = []
        for hs in await self.hs.of_case(case_id):
            if hs.status != "open" or case_id not in hs.open_case_ids:
                continue
            hs.open_case_ids = [c for c in hs.open_case_ids if c != case_id]
            hs.updated_at = now
            if not hs.open_case_ids:
                hs.status, hs.closed_at = "closed", now
                await self.hs.save(hs, event="closed")
                for cid in hs.case_ids:
                    await self._audit(cid, "hotspot_closed", hs)
            else:
                await self.hs.save(hs, event="updated")
            changed.append(hs)
        return changed

    async def _audit(self, case_id: str, action: str, hs: Hotspot) -> None:
        with contextlib.suppress(CaseNotFound):
            await self.store.add_event(case_id, actor="system", action=action,
                                       data={"hotspot": hs.id, "place": hs.place, "reporters": hs.reporters})
