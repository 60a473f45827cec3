"""Removing citizens' personal data from old, finished cases (个人信息保护法: keep it no longer than needed).

What a case keeps for statistics and the record of the city's work stays: the problem (with phone and ID
numbers masked), the place, the category, the department, the dates and the audit trail. What identifies
or records the citizen goes: phone, name, the channel's sender id, merged reporters' numbers, photos and the
call recording, the case's entries in the caller index, and the numbers its satisfaction survey called
(phone and ID numbers typed into survey comments are masked).

A merged report keeps a case record of its own (status merged) with the citizen's number: it goes once the
case it was merged into (the end of its duplicate_of chain) is finished, as its number is then of no more use
than the master's own.

Finished is decided on each case as it is when it is written, never on the batch it was listed in: a case
reopened (重办, by a merged reporter's 不满意 or by staff) or a merge undone while the purge runs keeps
everything. A closed case whose satisfaction round still waits for a reporter's answer is not finished either:
that answer may reopen it.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hotline.attachments import AttachmentStore, name_of
from hotline.callers import caller_keys
from hotline.records import Case, mask_pii
from hotline.status import Status
from hotline.store import CaseChanged, CaseNotFound, Store
from hotline.store.surveys import Recipient, Survey, SurveyStore
from hotline.surveys import WAITING_STATES

log = logging.getLogger("hotline.retention")

FINISHED = frozenset({Status.CLOSED})
# A listed case in another status is not looked at again: it is not finished (a case that closes meanwhile
# is taken by the next run).
CANDIDATES = FINISHED | {Status.MERGED}
ACTOR = "system:retention"
MAX_CHAIN = 8  # as hotline/dedup.py follows duplicate_of links
# Reads and writes of one case that found it changed each time: it is left for the next run.
ATTEMPTS = 3


@dataclass
class PurgeResult:
    scanned: int = 0
    purged: list[str] = field(default_factory=list)
    files_removed: int = 0
    files_failed: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {"scanned": self.scanned, "purged": len(self.purged), "files_removed": self.files_removed,
                "files_failed": self.files_failed}


def _survey_answers(case: Case) -> list[dict[str, Any]]:
    """The stored survey answers of the case: its own reporter's and each merged reporter's."""
    survey = case.survey if isinstance(case.survey, dict) else {}
    reports = survey.get("reports")
    return [survey, *(a for a in (reports.values() if isinstance(reports, dict) else ()) if isinstance(a, dict))]


def holds_personal_data(case: Case) -> bool:
    return bool(case.contact or case.name or case.sender or case.audio_ref
                or any(name_of(a) for a in case.attachments)
                or any(r.contact or r.sender for r in case.reports)
                or any(isinstance(a.get("comment"), str) and mask_pii(a["comment"]) != a["comment"]
                       for a in _survey_answers(case)))


def scrub(case: Case) -> dict[str, Any]:
    """Blank what identifies the citizen, in place; the event data of the purge."""
    photos = [a for a in case.attachments if name_of(a)]
    case.contact = case.name = case.sender = ""
    case.text = mask_pii(case.text)
    case.normalized_text = mask_pii(case.normalized_text)
    case.transcript = mask_pii(case.transcript)
    case.attachments = [a for a in case.attachments if not name_of(a)]
    had_audio = bool(case.audio_ref)
    case.audio_ref = ""
    for r in case.reports:
        r.contact = r.sender = ""
        r.text = mask_pii(r.text)
    # The answers stay for the 三率; a number the citizen typed into the comment does not.
    for answer in _survey_answers(case):
        if isinstance(answer.get("comment"), str):
            answer["comment"] = mask_pii(answer["comment"])
    return {"photos": len(photos), "recording": had_audio, "reports": len(case.reports)}


def scrub_recipient(rec: Recipient, _survey: Survey) -> None:
    """A survey recipient without the number to call: the answers stay for the 三率."""
    rec.contact = rec.sender = ""
    rec.comment = mask_pii(rec.comment)
    for note in rec.notes:
        if isinstance(note.get("note"), str):
            note["note"] = mask_pii(note["note"])


@dataclass
class _Decision:
    """Why a case may be purged, as read just before its write: the survey round seen (its recipients' numbers
    go too) and, for a merged report, the statuses its chain must still have when the write happens."""

    survey: Survey | None
    require: dict[str, Status] = field(default_factory=dict)


class _Changed(Exception):
    """The case is no longer the record the purge decided on."""


def _waiting(survey: Survey | None) -> bool:
    """A recipient of the round may still answer, and an unhappy answer reopens the case."""
    return survey is not None and any(r.state in WAITING_STATES for r in survey.recipients.values())


class Retention:
    def __init__(self, store: Store, data_dir: Path, attachments: AttachmentStore) -> None:
        self.store = store
        self.surveys = SurveyStore(store)
        self.data_dir = Path(data_dir).resolve()
        self.attachments = attachments

    async def purge(self, older_than_s: float, *, dry_run: bool = False, now: float | None = None) -> PurgeResult:
        """Purge every finished case created more than ``older_than_s`` ago; idempotent.

        The cases are listed 500 at a time, but a listed copy only picks the candidates: whether a case is
        finished is decided on the case as it is read just before its write, and the write happens only while
        the case (and, for a merged report, its chain up to the closed case) is still as read. A case reopened,
        undone or otherwise changed while the purge runs is decided again, and an open one is left alone.
        """
        cutoff = (time.time() if now is None else now) - older_than_s
        result = PurgeResult()
        ids = await self.store.case_ids_between(0, cutoff, limit=10_000_000)
        for start in range(0, len(ids), 500):
            for listed in await self.store.get_cases(ids[start:start + 500]):
                result.scanned += 1
                if not holds_personal_data(listed) or listed.status not in CANDIDATES:
                    continue
                if await self._purge_case(listed.id, result, dry_run=dry_run):
                    result.purged.append(listed.id)
        return result

    async def _purge_case(self, case_id: str, result: PurgeResult, *, dry_run: bool) -> bool:
        """Purge one case if it is finished now; True when it was (would be, for a dry run) purged."""
        for _attempt in range(ATTEMPTS):
            try:
                case = await self.store.get_case(case_id)
            except CaseNotFound:
                return False
            if not holds_personal_data(case):
                return False
            decision = await self._finished(case)
            if decision is None:
                return False
            if dry_run:
                return True
            try:
                return await self._purge_one(case, decision, result)
            except (_Changed, CaseChanged):
                continue  # changed since it was read: decide again on the case as it is now
        log.info("retention: case left for the next run", extra={"event": "retention_case_busy",
                                                                  "case_id": case_id})
        return False

    async def _finished(self, case: Case) -> _Decision | None:
        """A closed case whose survey round waits for nobody, or a merged report whose master (the end of its
        duplicate_of chain) is one; None when the case is to be left alone."""
        if case.status not in FINISHED and (case.status != Status.MERGED or not case.duplicate_of):
            return None
        survey = await self.surveys.get(case.id)
        if _waiting(survey):
            return None
        if case.status in FINISHED:
            return _Decision(survey)
        require = await self._finished_chain(case)
        return None if require is None else _Decision(survey, require)

    async def _finished_chain(self, case: Case) -> dict[str, Status] | None:
        """The statuses of the cases along the report's duplicate_of chain, when it ends in a finished case:
        each link merged, the end closed with no survey answer outstanding. None otherwise (also for a broken
        or overlong chain: keep the data rather than guess)."""
        seen = {case.id}
        require: dict[str, Status] = {}
        current = case.duplicate_of
        while current and current not in seen and len(seen) <= MAX_CHAIN:
            seen.add(current)
            try:
                master = await self.store.get_case(current)
            except CaseNotFound:
                return None
            if not master.duplicate_of:
                if master.status not in FINISHED or _waiting(await self.surveys.get(master.id)):
                    return None
                require[master.id] = master.status
                return require
            if master.status != Status.MERGED:
                return None
            require[master.id] = Status.MERGED
            current = master.duplicate_of
        return None

    async def _purge_one(self, case: Case, decision: _Decision, result: PurgeResult) -> bool:
        """Write the purge, only onto the record ``case`` was read as (``_Changed`` otherwise) and only while
        the chain above a merged report is as decided (``CaseChanged`` otherwise); then the caller index, the
        survey round's numbers and the files."""
        callers = caller_keys(case)
        files = self._files(case)

        def purge(current: Case) -> dict[str, Any]:
            if current != case:
                raise _Changed(case.id)
            return scrub(current)

        try:
            await self.store.update_case(case.id, purge, actor=ACTOR, action="personal_data_purged",
                                         require=decision.require)
        except CaseNotFound:
            return False
        await self.store.forget_callers(case.id, callers)
        if decision.survey is not None:
            # The round that was seen finished, and only that one: a later round asks the citizens of a case
            # handled again, from its (purged) record.
            seen_round = decision.survey.round

            def scrub_seen(rec: Recipient, survey: Survey) -> None:
                if survey.round != seen_round:
                    raise _Changed(case.id)
                scrub_recipient(rec, survey)

            try:
                for rid in decision.survey.recipients:
                    await self.surveys.update(case.id, rid, scrub_seen)
            except (_Changed, KeyError):
                log.info("retention: survey round changed", extra={"event": "retention_survey_changed",
                                                                   "case_id": case.id})
        # Files go after the record stops naming them: a crash in between leaves a file, never a dangling name
        # that a later run could not find again (the log names what failed).
        for path in files:
            try:
                path.unlink(missing_ok=True)
                result.files_removed += 1
            except OSError:
                result.files_failed += 1
                log.exception("retention: file not removed", extra={"event": "retention_file_failed",
                                                                   "case_id": case.id})
        return True

    def _files(self, case: Case) -> list[Path]:
        out = []
        for ref in case.attachments:
            path = self.attachments.path(name_of(ref)) if name_of(ref) else None
            if path is not None:
                out.append(path)
        if case.audio_ref:
            path = (self.data_dir / case.audio_ref).resolve()
            # Only a file inside the data directory: a record never makes us delete anything else.
            if path.is_relative_to(self.data_dir) and path.is_file():
                out.append(path)
        return out
