"""The duplicate service: one problem is one case with many reporters.

``check`` runs inside the intake pipeline before a case is stored: it looks up open cases sharing
distinctive keys with the new complaint (rare character bigrams, place cores) within each case's
category window, scores the best few and answers merge / suggest / new. ``merge`` keeps the new report
as its own case in status ``merged`` (its id, text and contact stay) and adds a ``Report`` to the open
case, whose reporter count and priority rise. Call-takers confirm, reject or undo merges. Every step is
written to the audit trails of both cases.

The candidate index holds open cases only: a case is indexed when it is created open, and removed
when the change feed shows it left the open states (dispatched cases stay; resolved, closed, merged,
answered leave), so merges never land on finished work.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import tomllib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import web

from hotline import fingerprints
from hotline.callers import caller_keys
from hotline.errors import ApiError
from hotline.hotspots import HotspotService
from hotline.intake import DedupDecision
from hotline.nlp.dedup import (
    DAY_S,
    Fingerprint,
    Idf,
    Thresholds,
    decide,
    fingerprint,
    location_distance,
    pair_scores,
    rare_keys,
    split_headline,
)
from hotline.nlp.places import read_plain_words
from hotline.records import Case, Report
from hotline.settings import PROJECT_ROOT, Settings, SettingsError
from hotline.status import LABELS_ZH, OPEN_STATES, IllegalTransition, Status
from hotline.store import CaseNotFound, Store, stored_record
from hotline.store.cases import FEED_BATCH, FEED_BATCH_S, Changes, Claim
from hotline.store.dedup import DedupIndex, IndexEntry
from hotline.store.filing import Filing
from hotline.tasks import stop_tasks

log = logging.getLogger("hotline.dedup")

# A merged repeat raises the open case's priority by one, up to this many steps.
MAX_PRIORITY_BUMP = 3
# Place keys outweigh single bigrams when ranking candidates: they name the object of the complaint.
PLACE_KEY_WEIGHT = 12.0
SUGGESTIONS_KEPT = 3
# duplicate_of links followed to find the case that is worked on (a longer chain is a loop or a fault).
MAX_CHAIN = 8
PENDING_ENTRIES = 1000


class DedupError(ApiError):
    """A merge, reject or undo that the cases' state does not allow (404 unknown case, 409 otherwise)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(code, message, 404 if code == "not_found" else 409)


# A case can become a linked report only before it is confirmed: from then on a work order exists for it.
MERGEABLE = frozenset({Status.RECEIVED, Status.CLASSIFIED})


class _NotThere(Exception):
    """Aborts a case update that would change nothing (the report is not on that case)."""


class _Undone(Exception):
    """Aborts adding a report to a case: the report is no longer marked merged into that case (its merge was
    undone meanwhile)."""


class _ChainMoved(Exception):
    """Aborts an undo computed for the cases a report's links led to: the links have changed since."""


def not_mergeable(case: Case) -> DedupError:
    """Why ``case`` cannot become a linked report, in the call-taker's words."""
    if case.status == Status.MERGED or case.duplicate_of:
        return DedupError("already_merged", f"该案件已并入 {case.duplicate_of}。")
    return DedupError("not_mergeable", f"该案件当前状态为“{LABELS_ZH[case.status]}”，不能合并。")


@dataclass
class DedupConfig:
    thresholds: Thresholds
    default_window_s: float
    windows_s: dict[str, float] = field(default_factory=dict)
    index_keys: int = 24
    posting_cap: int = 200
    max_candidates: int = 30
    enabled: bool = True
    hotspot_min_reporters: int = 5
    hotspot_window_s: float = DAY_S
    hotspot_similarity: float = 0.3
    # Words the city's letters use as ordinary words: never a place core (``hotline nlp build-place-words``).
    plain_places: frozenset[str] = frozenset()

    @property
    def max_window_s(self) -> float:
        return max([self.default_window_s, *self.windows_s.values()])

    def window_for(self, category: str) -> float:
        return self.windows_s.get(category, self.default_window_s)

    @classmethod
    def from_settings(cls, settings: Settings) -> DedupConfig:
        cfg = settings["dedup"]
        try:
            thresholds = Thresholds(cfg["auto_merge"], cfg["suggest"])
        except ValueError as exc:
            raise SettingsError(f"dedup.auto_merge/dedup.suggest: {exc}") from exc
        windows: dict[str, float] = {}
        path = _project_path(cfg["windows_file"])
        if cfg["windows_file"]:
            try:
                with path.open("rb") as fh:
                    table = tomllib.load(fh).get("windows", {})
            except FileNotFoundError as exc:
                raise SettingsError(f"dedup.windows_file: file not found: {path}") from exc
            except tomllib.TOMLDecodeError as exc:
                raise SettingsError(f"dedup.windows_file: {path} is not valid TOML: {exc}") from exc
            for name, days in table.items():
                if not isinstance(days, int | float) or isinstance(days, bool) or days <= 0:
                    raise SettingsError(f"dedup.windows_file: window of {name!r} must be a positive number of days")
                windows[name] = float(days) * DAY_S
        if cfg["default_window_days"] <= 0:
            raise SettingsError("dedup.default_window_days: must be positive")
        return cls(thresholds=thresholds, default_window_s=cfg["default_window_days"] * DAY_S, windows_s=windows,
                   index_keys=max(4, cfg["index_keys"]), posting_cap=max(10, cfg["posting_cap"]),
                   max_candidates=max(1, cfg["max_candidates"]), enabled=cfg["enabled"],
                   hotspot_min_reporters=cfg["hotspot_min_reporters"], hotspot_window_s=cfg["hotspot_window_s"],
                   hotspot_similarity=cfg["hotspot_similarity"], plain_places=load_plain_places(settings))


def load_plain_places(settings: Settings) -> frozenset[str]:
    """The words of ``dedup.place_words_file`` (none when the setting is empty)."""
    name = settings["dedup"]["place_words_file"]
    if not name:
        return frozenset()
    path = _project_path(name)
    try:
        return read_plain_words(path)
    except FileNotFoundError as exc:
        raise SettingsError(f"dedup.place_words_file: file not found: {path}") from exc
    except (ValueError, UnicodeDecodeError) as exc:
        raise SettingsError(f"dedup.place_words_file: {exc}") from exc


def _project_path(value: str) -> Path:
    path = Path(value).expanduser()
    return path if path.is_absolute() else PROJECT_ROOT / path


def load_idf(settings: Settings) -> Idf:
    path = _project_path(settings["dedup"]["idf_file"])
    if not path.is_file():
        log.warning("no dedup idf table at %s; every bigram weighs the same", path)
        return Idf.uniform()
    try:
        return Idf.load(path)
    except (OSError, ValueError) as exc:  # IdfError is a ValueError, naming the file and line
        raise SettingsError(f"dedup.idf_file: {exc}") from exc


def category_of(case: Case) -> str:
    """The confirmed category, else the classifier's top suggestion, else empty."""
    cat = case.classification.get("category") if case.classification else None
    if isinstance(cat, str) and cat:
        return cat
    top = ((case.suggestion or {}).get("category") or {}).get("top") or []
    if top and isinstance(top[0], dict) and isinstance(top[0].get("label"), str):
        return top[0]["label"]
    return ""


class DedupService:
    def __init__(self, store: Store, config: DedupConfig, idf: Idf, *,
                 hotspots: HotspotService | None = None) -> None:
        self.store = store
        self.config = config
        self.idf = idf
        self.index = DedupIndex(store, posting_cap=config.posting_cap)
        self.counts = fingerprints.CandidateCounts(idf)
        self.hotspots = hotspots
        # Entries computed by ``check`` for cases about to be stored, by case id (insertion order = age).
        self._entries: dict[str, IndexEntry] = {}
        # Entries that intake wrote together with their new case (``filing``): the hook need not file them.
        self._filed: dict[str, IndexEntry] = {}

    # fingerprints ----------------------------------------------------------
    def fingerprint(self, case: Case) -> Fingerprint:
        headline, body = split_headline(case.text)
        return fingerprint(headline, body, self.idf, address=case.address, plain=self.config.plain_places)

    def entry(self, case: Case, fp: Fingerprint | None = None, rare: list[str] | None = None) -> IndexEntry:
        fp = fp or self.fingerprint(case)
        category = category_of(case)
        rare = rare if rare is not None else rare_keys(fp, self.idf, self.config.index_keys)
        keys = rare[: self.config.index_keys] + [f"@{p}" for p in fp.places]
        loc = (case.location.lat, case.location.lon) if case.location else None
        return IndexEntry(case_id=case.id, created_at=case.created_at, category=category,
                          window_s=self.config.window_for(category), text=fp.text, headline=fp.headline,
                          places=fp.places, callers=caller_keys(case), location=loc, keys=keys,
                          norms=(fp.head_norm, fp.body_norm, fp.body_mass))

    def query_keys(self, fp: Fingerprint) -> dict[str, float]:
        return self._query_keys(fp, rare_keys(fp, self.idf, max(self.config.index_keys, 4)))

    def _query_keys(self, fp: Fingerprint, rare: list[str]) -> dict[str, float]:
        # A query reads fewer keys than a case is filed under: two thirds of them still find a reworded
        # repeat, and each key read is one posting scan.
        keys = {g: self.idf(g) for g in rare[: max(4, self.config.index_keys * 2 // 3)]}
        for p in fp.places:
            keys[f"@{p}"] = PLACE_KEY_WEIGHT
        return keys

    # the Deduplicator protocol --------------------------------------------
    async def check(self, case: Case, *, remember: bool = True, claim: Claim | None = None) -> DedupDecision:
        """Open cases this one repeats. ``remember=False`` for a case that will not be stored as it is (a
        call-taker's preview). With ``claim``, a new case's id is got in the lookup's round trip and set
        on ``case``; when the claim finds an earlier case, nothing is checked. With matching switched off
        the claim is left to the caller."""
        if not self.config.enabled:
            return DedupDecision(action="new")
        fp = self.fingerprint(case)
        rare = rare_keys(fp, self.idf, max(self.config.index_keys, 4))
        now = case.created_at
        cands, _cut = await self.index.lookup(self._query_keys(fp, rare), now=now, asking=case.id,
                                              max_window_s=self.config.max_window_s,
                                              limit=self.config.max_candidates, claim=claim)
        if claim is not None:
            if claim.earlier:
                return DedupDecision(action="new")
            case.id = claim.case_id
        me = self.entry(case, fp, rare)
        if remember:
            # The intake hook files the case under the same entry once it is stored: no second fingerprint.
            self._entries[case.id] = me
            self.counts.remember(case.id, fp)
            while len(self._entries) > PENDING_ENTRIES:
                self._entries.pop(next(iter(self._entries)))
        loc = (case.location.lat, case.location.lon) if case.location else None
        cands = [c for c in cands if c.case_id != case.id]
        mine = set(me.callers)
        scores = pair_scores(fp, self.counts.candidates(cands), self.idf,
                             same_caller=[bool(mine.intersection(c.callers)) for c in cands],
                             distances=[location_distance(loc, c.location) for c in cands],
                             days=[(now - c.created_at) / DAY_S for c in cands])
        scored = [(s.score, c, s.reasons, s.anchored) for s, c in zip(scores, cands, strict=True)
                  if s.score >= self.config.thresholds.suggest]
        scored.sort(key=lambda t: -t[0])
        # The index can lag the feed by a moment: confirm the best are still open before using them.
        # When the best will be merged into, its record comes along: the merge then writes it without
        # reading it first.
        merging = remember and bool(scored) and \
            decide(scored[0][0], self.config.thresholds, anchored=scored[0][3]) == "merge"
        live, record = await self._still_open([c.case_id for _s, c, _r, _a in scored[:SUGGESTIONS_KEPT]],
                                              record=merging)
        first = scored[0][1].case_id if scored else ""
        scored = [t for t in scored if t[1].case_id in live][:SUGGESTIONS_KEPT]
        if not scored:
            return DedupDecision(action="new")
        best_score, best, _, anchored = scored[0]
        candidates = [{"case_id": c.case_id, "score": round(s, 4), "reasons": r, "places": c.places}
                      for s, c, r, _a in scored]
        action = decide(best_score, self.config.thresholds, anchored=anchored)
        return DedupDecision(action=action, case_id=best.case_id, score=round(best_score, 4),
                             candidates=candidates, record=record if best.case_id == first else None)

    def filing(self, case: Case) -> Filing | None:
        """The index entry of a new case that ``check`` has seen, for intake to write with the case; None
        when there is none (the intake hook files the case then)."""
        entry = self._entries.pop(case.id, None)
        if entry is None or entry.created_at != case.created_at or case.status not in OPEN_STATES:
            return None
        self._filed[case.id] = entry
        while len(self._filed) > PENDING_ENTRIES:
            self._filed.pop(next(iter(self._filed)))
        return self.index.filing(entry)

    async def _still_open(self, case_ids: list[str], *, record: bool = False) -> tuple[set[str], str | None]:
        """The cases still open, and with ``record`` the stored record of the first one if it is open."""
        live = set()
        # The status indexes, not the records: a merged report is in status merged, so no record is read.
        statuses, raw = await self.store.statuses_and_record(case_ids, OPEN_STATES if record else ())
        for case_id, status in statuses.items():
            if status in OPEN_STATES:
                live.add(case_id)
            elif status is None:
                await self.index.remove(case_id)
            else:
                await self.forget(case_id)
        return live, raw

    async def merge(self, report: Case, into: str, score: float, actor: str) -> Case:
        """Fold ``report`` (stored as its own case) into the open case ``into``; returns the report case."""
        master_id = await self.merge_target(into)
        if master_id == report.id:
            raise DedupError("same_case", "不能将案件并入其自身。")
        try:
            report = await self.store.update_case(report.id, lambda c: self.mark_report(c, master_id, score, actor),
                                                  actor=actor, action="merged", target=Status.MERGED)
        except CaseNotFound as exc:
            raise DedupError("not_found", "案件不存在。") from exc
        except IllegalTransition as exc:
            # Confirmed (its work order is on the way) or merged by someone else since it was read.
            raise not_mergeable(await self.store.get_case(report.id)) from exc
        return await self.attach(report, master_id, score, actor)

    async def _repoint(self, moved: list[str], from_id: str, master_id: str, actor: str) -> None:
        """Reports that case ``from_id`` handed on to ``master_id`` (``attach``) then point at the case that is
        worked on, which surveys and notifies them. One undone or moved since keeps its pointer; an undo
        finds a report not yet repointed along the links (``from_id`` is merged into ``master_id``)."""

        def repoint(c: Case) -> dict[str, Any]:
            if c.duplicate_of != from_id:
                raise _NotThere()
            c.duplicate_of = master_id
            return {"from_case": from_id, "into": master_id}

        for report_id in moved:
            with contextlib.suppress(_NotThere, CaseNotFound):
                await self.store.update_case(report_id, repoint, actor=actor, action="report_moved")

    async def merge_target(self, into: str) -> str:
        """The case a report for ``into`` joins: ``into`` itself, or the case it was merged into."""
        return await self._root(into)

    @staticmethod
    def mark_report(c: Case, master_id: str, score: float, actor: str) -> dict[str, Any]:
        """Make ``c`` a linked report of ``master_id``; returns the data of its ``merged`` event.

        Intake marks a new report this way before storing it, so a repeat is written once, already merged."""
        if c.duplicate_of:
            raise DedupError("already_merged", f"该案件已并入 {c.duplicate_of}。")
        c.duplicate_of = master_id
        c.duplicate_candidates = [d for d in c.duplicate_candidates if d.get("case_id") != master_id]
        return {"into": master_id, "score": round(score, 4), "merged_by": "auto" if actor == "system" else actor}

    async def attach(self, report: Case, master_id: str, score: float, actor: str, *, indexed: bool = True,
                     read: str | None = None) -> Case:
        """Add the stored, marked ``report`` to the open case ``master_id``. When that case no longer takes
        reports, the report is put back as its own case and DedupError is raised. ``indexed=False``: the
        report was never in the candidate index (a new one), so there is nothing to take out. ``read``: the
        open case's record as the duplicate check read it (``DedupDecision.record``)."""
        now = time.time()
        merged_by = "auto" if actor == "system" else actor

        moved: list[str] = []

        def add_report(cases: dict[str, Case]) -> Changes:
            # The report as stored now, not as the caller read it: an undo in between has taken it (or one of
            # its own reports) back, and a case must not list a report that is not merged into it.
            rep = cases.get(report.id)
            if rep is None or rep.status != Status.MERGED or rep.duplicate_of != master_id:
                raise _Undone()
            c = cases.get(master_id)
            if c is None:
                raise CaseNotFound(master_id)
            if c.status not in OPEN_STATES or c.duplicate_of:
                raise DedupError("master_not_open", f"案件 {c.id} 已不在办理中，不能并入。")
            moved.clear()
            if any(r.report_id == rep.id for r in c.reports):
                return {master_id: ("report_merged", {"report_id": rep.id, "reporters": c.reporter_count,
                                                      "repeat": True})}
            c.reports.append(Report(report_id=rep.id, channel=rep.channel, sender=rep.sender,
                                    contact=rep.contact, text=rep.text, received_at=rep.created_at,
                                    score=round(score, 4), merged_by=merged_by))
            # A case merged with reports of its own brings its reporters along, and its list is emptied in the
            # same write: a report is never listed by two cases, nor by none while it is merged.
            held = {r.report_id for r in c.reports}
            brought = [r for r in rep.reports if r.report_id not in held and r.report_id != c.id]
            c.reports.extend(brought)
            c.priority = min(MAX_PRIORITY_BUMP, c.priority + 1 + len(brought))
            data = {"report_id": rep.id, "score": round(score, 4), "reporters": c.reporter_count,
                    "merged_by": merged_by}
            if brought:
                data["with_reports"] = [r.report_id for r in brought]
            changes: Changes = {master_id: ("report_merged", data)}
            if rep.reports:
                moved.extend(r.report_id for r in rep.reports)
                rep.reports = []
                rep.priority = 0
                changes[rep.id] = ("reports_moved", {"reports": list(moved), "into": master_id})
            return changes

        try:
            cases = await self.store.update_linked([master_id, report.id], add_report, actor=actor,
                                                   read={master_id: read, report.id: stored_record(report)})
        except _Undone as exc:
            raise DedupError("merge_undone", f"案件 {report.id} 的合并已被撤销，未并入 {master_id}。") from exc
        except (DedupError, CaseNotFound) as exc:
            # The report must never hang on a case that did not take it: put it back as its own case (unless
            # an undo has done so meanwhile).
            def put_back(c: Case) -> dict[str, Any]:
                if c.duplicate_of != master_id:
                    raise _NotThere()
                return _clear_dup(c, "master_not_open")

            with contextlib.suppress(_NotThere, IllegalTransition, CaseNotFound):
                await self.store.update_case(report.id, put_back, actor="system", action="unmerged",
                                             target=Status.CLASSIFIED)
            if isinstance(exc, DedupError):
                raise
            raise DedupError("not_found", f"案件 {master_id} 不存在。") from exc
        report = cases[report.id]
        if moved:
            await self._repoint(moved, report.id, master_id, actor)
        if indexed:
            await self.forget(report.id)
        log.info("report merged", extra={"event": "report_merged", "case_id": master_id, "report": report.id,
                                         "score": round(score, 4), "actor": actor, "ts": now})
        if self.hotspots is not None:
            await self.hotspots.changed_later(master_id)
        return report

    async def confirm_merge(self, case_id: str, into: str, actor: str) -> Case:
        """A call-taker confirms a suggested (or spotted) duplicate."""
        try:
            case = await self.store.get_case(case_id)
        except CaseNotFound as exc:
            raise DedupError("not_found", "案件不存在。") from exc
        if case.status not in MERGEABLE or case.duplicate_of:
            raise not_mergeable(case)
        score = next((float(d.get("score", 0)) for d in case.duplicate_candidates if d.get("case_id") == into), 0.0)
        return await self.merge(case, into, score, actor)

    async def reject(self, case_id: str, candidate_id: str, actor: str) -> Case:
        """Not a duplicate: drop the suggestion and never suggest this pair again."""
        if candidate_id == case_id:
            raise DedupError("same_case", "不能否认案件与其自身的重复关系。")
        if not await self.store.case_exists(candidate_id):
            raise DedupError("not_found", f"候选案件 {candidate_id} 不存在。")

        def drop(c: Case) -> dict[str, Any]:
            # The decision belongs to a case still waiting for one; a merged or dispatched case has had it.
            if c.status not in MERGEABLE or c.duplicate_of:
                raise not_mergeable(c)
            c.duplicate_candidates = [d for d in c.duplicate_candidates if d.get("case_id") != candidate_id]
            return {"candidate": candidate_id}

        try:
            case = await self.store.update_case(case_id, drop, actor=actor, action="duplicate_rejected")
        except CaseNotFound as exc:
            raise DedupError("not_found", "案件不存在。") from exc
        await self.index.add_rejection(case_id, candidate_id)
        return case

    async def unmerge(self, report_case_id: str, actor: str) -> Case:
        """Undo a merge: the report becomes its own open case again, the master loses the reporter."""
        try:
            report = await self.store.get_case(report_case_id)
        except CaseNotFound as exc:
            raise DedupError("not_found", "案件不存在。") from exc
        if report.status != Status.MERGED or not report.duplicate_of:
            raise DedupError("not_merged", "该案件未被合并。")
        linked = report.duplicate_of

        def undo(cases: dict[str, Case]) -> Changes:
            nonlocal linked
            c = cases.get(report_case_id)
            if c is None:
                raise CaseNotFound(report_case_id)
            if c.status != Status.MERGED or not c.duplicate_of:
                raise DedupError("not_merged", "该案件未被合并。")
            if self._links(c.duplicate_of, cases, masters) != masters:
                linked = c.duplicate_of
                raise _ChainMoved()
            # Off every case along the links (a report whose pointer was not yet rewritten after its case was
            # merged on is listed by the case worked on), and back on its own, in one write.
            changes: Changes = {}
            for holder in masters:
                h = cases.get(holder)
                kept = [r for r in h.reports if r.report_id != report_case_id] if h is not None else []
                if h is None or len(kept) == len(h.reports):
                    continue
                h.reports = kept
                if len(h.reports) < MAX_PRIORITY_BUMP:
                    h.priority = max(0, h.priority - 1)
                changes[holder] = ("unmerged", {"report_id": report_case_id, "reporters": h.reporter_count})
            data = _clear_dup(c, "undo")
            c.status = Status.CLASSIFIED
            changes[report_case_id] = ("unmerged", data)
            return changes

        # The report and the cases its links lead to are read and written as one: a merge of one of those
        # cases at the same time (which carries the report along) is either seen whole or waits, and of two
        # undos at once one moves the report back, the other finds it not merged.
        while True:
            masters = await self._chain(linked)
            try:
                cases = await self.store.update_linked([report_case_id, *masters], undo, actor=actor)
                break
            except _ChainMoved:
                continue
            except CaseNotFound as exc:
                raise DedupError("not_found", "案件不存在。") from exc
        report = cases[report_case_id]
        for holder in masters:
            await self.index.add_rejection(report_case_id, holder)
        await self.opened(report)
        return report

    @staticmethod
    def _links(case_id: str, cases: dict[str, Case], read: list[str]) -> list[str]:
        """``_chain`` of ``case_id`` over records read at once (``read``: their ids, including those that do
        not exist); raises _ChainMoved where the links leave them."""
        chain: list[str] = []
        current = case_id
        while current and current not in chain and len(chain) < MAX_CHAIN:
            if current not in read:
                raise _ChainMoved()
            chain.append(current)
            case = cases.get(current)
            if case is None:
                break
            current = case.duplicate_of
        return chain

    async def _chain(self, case_id: str) -> list[str]:
        """``case_id`` and the cases its duplicate_of links lead to, the one actually worked on last."""
        chain: list[str] = []
        current = case_id
        while current and current not in chain and len(chain) < MAX_CHAIN:
            chain.append(current)
            try:
                case = await self.store.get_case(current)
            except CaseNotFound as exc:
                if len(chain) == 1:
                    raise DedupError("not_found", f"案件 {current} 不存在。") from exc
                break
            current = case.duplicate_of
        return chain

    async def _root(self, case_id: str) -> str:
        """Follow duplicate_of links so a report joins the case that is actually worked on."""
        return (await self._chain(case_id))[-1]

    # index upkeep ------------------------------------------------------------
    async def opened(self, case: Case, *, fresh: bool = False) -> None:
        """An open case joins the candidate index (and may raise a hotspot). ``fresh``: intake has just
        created it."""
        if case.status not in OPEN_STATES or case.duplicate_of:
            return
        entry = self._filed.pop(case.id, None)
        if entry is None or entry.created_at != case.created_at:
            entry = self._entries.pop(case.id, None)
            if entry is None or entry.created_at != case.created_at:
                entry = self.entry(case)
            await self.index.add(entry)
        if self.hotspots is not None and entry.places:
            await self.hotspots.opened_later(entry, fresh=fresh)

    async def forget(self, case_id: str) -> None:
        """``case_id`` left the open states: out of the index, and out of its open hotspots."""
        entry = await self.index.get(case_id)
        if entry is not None:
            await self.index.remove(case_id)
        # Even without an index entry: a case open longer than the longest window has been pruned from the
        # index but still holds its hotspot open until it closes.
        if self.hotspots is not None:
            await self.hotspots.case_closed(case_id, entry.places if entry is not None else [])

    async def on_created(self, case: Case) -> None:
        """Intake hook: runs after the case is stored (and merged, when it was)."""
        if case.status not in OPEN_STATES or case.duplicate_of:
            self._entries.pop(case.id, None)
            self._filed.pop(case.id, None)
        await self.opened(case, fresh=True)

    async def on_change(self, case_id: str, status: str) -> None:
        """Change-feed entry: keep the index to open cases."""
        try:
            st = Status(status)
        except ValueError:
            return
        if st in OPEN_STATES:
            if not await self.index.contains(case_id):
                with contextlib.suppress(CaseNotFound):
                    await self.opened(await self.store.get_case(case_id))
        else:
            await self.forget(case_id)

    async def prune(self, now: float | None = None) -> int:
        """Drop cases older than the longest window: they can no longer be anyone's candidate. Their
        hotspots are not told: such a case is still open, and ``forget`` closes its hotspot when it closes."""
        now = time.time() if now is None else now
        removed = 0
        while True:
            ids = await self.index.expired(now - self.config.max_window_s)
            if not ids:
                return removed
            for cid in ids:
                await self.index.remove(cid)
                removed += 1

    async def follow_feed(self, stop: asyncio.Event, *, block_ms: int = 1000) -> None:
        last = await self.store.feed_last_id()
        next_prune = 0.0
        while not stop.is_set():
            try:
                entries = await self.store.feed(last, block_ms=block_ms, count=FEED_BATCH)
                for eid, fields in entries:
                    last = eid
                    if fields.get("action") != "created":
                        await self.on_change(fields.get("case", ""), fields.get("status", ""))
                if entries and len(entries) < FEED_BATCH:
                    await asyncio.sleep(FEED_BATCH_S)
                if time.monotonic() >= next_prune:
                    await self.prune()
                    next_prune = time.monotonic() + 3600
            except asyncio.CancelledError:
                raise
            except Exception:
                # A Redis hiccup must not end the worker; lookups re-check status anyway.
                log.exception("dedup feed worker error", extra={"event": "dedup_feed_error"})
                await asyncio.sleep(1.0)


def _clear_dup(c: Case, reason: str, master_id: str = "") -> dict[str, Any]:
    previous = c.duplicate_of or master_id
    c.duplicate_of = ""
    return {"from_case": previous, "reason": reason}


# aiohttp feature -----------------------------------------------------------

async def dedup_ctx(app: web.Application) -> AsyncIterator[None]:
    from hotline.appkeys import DEDUP, HOTSPOTS, INTAKE, SETTINGS, STORE

    settings = app[SETTINGS]
    config = DedupConfig.from_settings(settings)
    idf = await asyncio.to_thread(load_idf, settings)
    store = app[STORE]
    hotspots = HotspotService(store, DedupIndex(store, posting_cap=config.posting_cap), idf,
                              min_reporters=config.hotspot_min_reporters, window_s=config.hotspot_window_s,
                              similarity=config.hotspot_similarity)
    service = DedupService(store, config, idf, hotspots=hotspots)
    hotspots.query_keys = service.query_keys
    hotspots.counts = service.counts
    app[DEDUP] = service
    app[HOTSPOTS] = hotspots
    intake = app[INTAKE]
    intake.dedup = service
    intake.on_created.append(service.on_created)
    stop = asyncio.Event()
    workers = [asyncio.create_task(service.follow_feed(stop)), asyncio.create_task(hotspots.run(stop))]
    try:
        yield
    finally:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(hotspots.settled(), 2.0)
        stop.set()
        await stop_tasks(workers)
        intake.dedup = None


def setup(app: web.Application) -> None:
    app.cleanup_ctx.append(dedup_ctx)
