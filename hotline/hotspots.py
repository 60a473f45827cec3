"""Hotspots (未诉先办): many reporters of one problem at one place within a sliding window.

A hotspot is keyed by place core and category. It is raised when the open cases naming that place and
similar to the case that just came in (or just gained a merged reporter) count at least
``hotspot_min_reporters`` reporters in the last ``hotspot_window_s`` seconds — a case's own reporter and
each merged report count once each. It is closed when none of its cases is open any more. Raising and
closing are written to the hotspot event stream and to each member case's audit trail.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable

from hotline import fingerprints
from hotline.nlp.dedup import DAY_S, Fingerprint, Idf, pair_scores
from hotline.records import Case
from hotline.status import OPEN_STATES
from hotline.store import CaseNotFound, Store
from hotline.store.dedup import DedupIndex, IndexEntry
from hotline.store.hotspots import Hotspot, HotspotStore

log = logging.getLogger("hotline.hotspots")

# Candidate cases scored per evaluation: a cluster's own reports rank first in the candidate index, and
# the count of an open hotspot also keeps every case it already holds.
SIMILAR_SCAN = 12


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
        # Raising a hotspot is a supervisor's signal, not part of the citizen's answer: while ``run`` is
        # working, intake only schedules the evaluation. Pending seeds by case id, with whether the seed is
        # a case that intake has just created (no merged reports yet, in no hotspot yet), and its index
        # entry, or None when the entry is read from the index at evaluation time.
        self._pending: dict[str, tuple[bool, IndexEntry | None]] = {}
        self._wake = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._running = False
        # The duplicate matcher's lookup keys for a fingerprint (set by the dedup feature); without it
        # the places alone are looked up.
        self.query_keys: Callable[[Fingerprint], dict[str, float]] | None = None
        # The duplicate matcher's kept bigram counts of recent cases (set by the dedup feature too).
        self.counts: fingerprints.CandidateCounts | None = None

    async def opened_later(self, entry: IndexEntry, *, fresh: bool = False) -> None:
        """A case joined the open index: evaluate its place's hotspot, in the background. ``fresh``: the
        case was created a moment ago (not reopened or unmerged)."""
        await self._schedule(entry.case_id, fresh, entry)

    async def changed_later(self, case_id: str) -> None:
        """A case gained a merged reporter: evaluate its hotspot, in the background. Its index entry is
        read then, so the citizen whose report was merged does not wait for it."""
        await self._schedule(case_id, False, None)

    async def _schedule(self, case_id: str, fresh: bool, entry: IndexEntry | None) -> None:
        if not self._running:
            await self._evaluate_seed(case_id, fresh, entry)
            return
        earlier = self._pending.get(case_id)
        if earlier is not None:
            fresh = fresh and earlier[0]
            entry = entry or earlier[1]
        self._pending[case_id] = (fresh, entry)
        self._idle.clear()
        self._wake.set()

    async def _evaluate_seed(self, case_id: str, fresh: bool, entry: IndexEntry | None) -> None:
        if entry is None:
            entry = await self.index.get(case_id)
            if entry is None:  # left the open index meanwhile
                return
        await self.evaluate(entry, fresh=fresh)

    async def settled(self) -> None:
        """Wait until every scheduled evaluation has run (tests, orderly shutdown)."""
        await self._idle.wait()

    async def run(self, stop: asyncio.Event) -> None:
        """The background evaluator: drains the pending seeds, oldest first."""
        self._running = True
        try:
            while not stop.is_set():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), 1.0)
                self._wake.clear()
                while self._pending:
                    batch, self._pending = self._pending, {}
                    for case_id, (fresh, entry) in batch.items():
                        if stop.is_set():
                            return
                        try:
                            await self._evaluate_seed(case_id, fresh, entry)
                        except asyncio.CancelledError:
                            raise
                        except Exception:
                            # A Redis hiccup loses one evaluation; the place's next report evaluates again.
                            log.exception("hotspot evaluation failed",
                                          extra={"event": "hotspot_failed", "case_id": case_id})
                self._idle.set()
        finally:
            self._running = False
            self._idle.set()

    async def evaluate(self, seed: IndexEntry, now: float | None = None, *, fresh: bool = False) -> Hotspot | None:
        """Raise or refresh the hotspot of the seed case: similar open cases at the places it names.

        The similar cases come from the duplicate matcher's candidate index within the hotspot window: the
        postings of the seed's places, or, at a place with more than ``SIMILAR_SCAN`` cases, the cases
        sharing most of the seed's distinctive bigrams and places. A bounded read and at most
        ``SIMILAR_SCAN`` pair scores however many cases a popular place has.
        """
        now = time.time() if now is None else now
        since = now - self.window_s
        if not seed.places:
            return None
        # A hotspot's cases all name one of the seed's places, so the place postings are read first: a
        # small read that holds every such case unless the place is busy. Only a busy place needs the
        # seed's distinctive bigrams too, to bring its most similar cases to the top.
        cands, cut = await self.index.lookup({f"@{p}": 1.0 for p in seed.places}, now=now,
                                             max_window_s=self.window_s, limit=SIMILAR_SCAN + 1)
        seed_fp: Fingerprint | None = None
        if cut and self.query_keys is not None:
            seed_fp = fingerprints.query(seed, self.idf)
            cands = await self.index.candidates(self.query_keys(seed_fp), now=now, max_window_s=self.window_s,
                                                limit=SIMILAR_SCAN)
        else:
            cands = cands[:SIMILAR_SCAN]
        at_place: dict[str, set[str]] = {core: {seed.case_id} for core in seed.places}
        near: list[tuple[IndexEntry, list[str]]] = []
        for entry in cands:
            if entry.case_id == seed.case_id or entry.created_at < since:
                continue
            shared = [core for core in seed.places if core in entry.places]
            if shared:
                near.append((entry, shared))
        if near:
            seed_fp = seed_fp or fingerprints.query(seed, self.idf)
            entries = [e for e, _s in near]
            others = (self.counts.candidates(entries) if self.counts is not None
                      else [fingerprints.candidate(e, self.idf) for e in entries])
            scores = pair_scores(seed_fp, others, self.idf,
                                 days=[(seed.created_at - e.created_at) / DAY_S for e in entries])
            for (entry, shared), s in zip(near, scores, strict=True):
                if s.score >= self.similarity:
                    for core in shared:
                        at_place[core].add(entry.case_id)
        members: set[str] = set().union(*at_place.values())
        if fresh and len(members) == 1 and self.min_reporters > 1:
            # A case created a moment ago with nothing similar at its places: one reporter, no hotspot to
            # join or refresh. Nothing is read.
            return None
        best_place, best_n = "", 0
        for core in seed.places:
            if len(at_place[core]) > best_n:
                best_place, best_n = core, len(at_place[core])
        if not best_place:
            return None
        # One cluster is one hotspot, whichever of its places a later report names first.
        existing = None
        for spots in await self.hs.of_cases(sorted(members)):
            existing = next((h for h in spots if h.status == "open"), None)
            if existing is not None:
                break
        if existing is not None:
            members |= set(existing.open_case_ids)
        cases = await self.store.get_cases(sorted(members))
        # Open by the records, not by the candidate index: a case open longer than the index keeps cases
        # (the longest category window) is pruned from it, yet holds its hotspot open until it closes.
        open_ids = [c.id for c in cases if c.status in OPEN_STATES and not c.duplicate_of]
        reporters = sum(self._reporters(c, since) for c in cases if c.id in open_ids)
        if existing is not None:
            existing.case_ids = sorted(set(existing.case_ids) | set(open_ids))
            existing.open_case_ids = open_ids
            existing.reporters = max(existing.reporters, reporters)
            existing.updated_at = now
            if not open_ids:
                # Its cases closed after the seed was read. Saved as open with none open, no later
                # case_closed would find a case to close it with.
                await self._close(existing, now)
            else:
                await self.hs.save(existing, event="updated")
                await self._closed_meanwhile(existing, now)
            return existing
        if reporters < self.min_reporters:
            return None
        hs = self.hs.new(best_place, seed.category, now)
        hs.case_ids, hs.open_case_ids, hs.reporters = open_ids, list(open_ids), reporters
        await self.hs.save(hs, event="raised")
        for cid in open_ids:
            await self._audit(cid, "hotspot_raised", hs)
        log.info("hotspot raised", extra={"event": "hotspot_raised", "hotspot": hs.id, "reporters": reporters})
        await self._closed_meanwhile(hs, now)
        return hs

    async def _closed_meanwhile(self, hs: Hotspot, now: float) -> None:
        """A member case that closed between the read above and the save was passed to ``case_closed``
        before the save made it a member, so nothing took it out: the hotspot would list it open for good.
        Its status changed before that ``case_closed`` ran, so reading the records after the save finds it."""
        cases = await self.store.get_cases(list(hs.open_case_ids))
        for case in cases:
            if case.status not in OPEN_STATES or case.duplicate_of:
                await self.case_closed(case.id, [], now)

    @staticmethod
    def _reporters(case: Case, since: float) -> int:
        return int(case.created_at >= since) + sum(1 for r in case.reports if r.received_at >= since)

    async def case_closed(self, case_id: str, places: list[str], now: float | None = None) -> list[Hotspot]:
        """A member case is no longer open: the hotspot closes when none of its cases is."""
        now = time.time() if now is None else now
        changed = []
        for hs in await self.hs.of_case(case_id):
            if hs.status != "open" or case_id not in hs.open_case_ids:
                continue
            hs.open_case_ids = [c for c in hs.open_case_ids if c != case_id]
            hs.updated_at = now
            if not hs.open_case_ids:
                await self._close(hs, now)
            else:
                await self.hs.save(hs, event="updated")
            changed.append(hs)
        return changed

    async def _close(self, hs: Hotspot, now: float) -> None:
        hs.status, hs.closed_at = "closed", now
        await self.hs.save(hs, event="closed")
        for cid in hs.case_ids:
            await self._audit(cid, "hotspot_closed", hs)

    async def _audit(self, case_id: str, action: str, hs: Hotspot) -> None:
        with contextlib.suppress(CaseNotFound):
            await self.store.add_event(case_id, actor="system", action=action,
                                       data={"hotspot": hs.id, "place": hs.place, "reporters": hs.reporters})
