"""Removing citizens' personal data from old, finished cases (个人信息保护法: keep it no longer than needed).

What a case keeps for statistics and the record of the city's work stays: the problem (with phone and ID
numbers masked), the place, the category, the department, the dates and the audit trail. What identifies
or records the citizen goes: phone, name, the channel's sender id, merged reporters' numbers, photos and the
call recording, the case's entries in the caller index, and the numbers its satisfaction survey called
(phone and ID numbers typed into survey comments are masked).

A merged report keeps a case record of its own (status merged) with the citizen's number: it goes once the
case it was merged into (the end of its duplicate_of chain) is finished, as its number is then of no more use
than the master's own.
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
from hotline.store import CaseNotFound, Store
from hotline.store.surveys import Recipient, Survey, SurveyStore

log = logging.getLogger("hotline.retention")

FINISHED = frozenset({Status.CLOSED})
ACTOR = "system:retention"
MAX_CHAIN = 8  # as hotline/dedup.py follows duplicate_of links


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


class Retention:
    def __init__(self, store: Store, data_dir: Path, attachments: AttachmentStore) -> None:
        self.store = store
        self.surveys = SurveyStore(store)
        self.data_dir = Path(data_dir).resolve()
        self.attachments = attachments

    async def purge(self, older_than_s: float, *, dry_run: bool = False, now: float | None = None) -> PurgeResult:
        """Purge every finished case created more than ``older_than_s`` ago; idempotent."""
        cutoff = (time.time() if now is None else now) - older_than_s
        result = PurgeResult()
        ids = await self.store.case_ids_between(0, cutoff, limit=10_000_000)
        roots: dict[str, Status | None] = {}
        for start in range(0, len(ids), 500):
            for case in await self.store.get_cases(ids[start:start + 500]):
                result.scanned += 1
                if not holds_personal_data(case) or not await self._finished(case, roots):
                    continue
                result.purged.append(case.id)
                if not dry_run:
                    await self._purge_one(case, result)
        return result

    async def _finished(self, case: Case, roots: dict[str, Status | None]) -> bool:
        """A closed case, or a merged report whose master (the end of its duplicate_of chain) is closed."""
        if case.status in FINISHED:
            return True
        if case.status != Status.MERGED or not case.duplicate_of:
            return False
        if case.duplicate_of not in roots:
            roots[case.duplicate_of] = await self._root_status(case)
        return roots[case.duplicate_of] in FINISHED

    async def _root_status(self, case: Case) -> Status | None:
        seen = {case.id}
        current = case.duplicate_of
        while current and current not in seen and len(seen) <= MAX_CHAIN:
            seen.add(current)
            try:
                master = await self.store.get_case(current)
            except CaseNotFound:
                return None  # a broken chain: keep the data rather than guess
            if not master.duplicate_of:
                return master.status
            current = master.duplicate_of
        return None

    async def _purge_one(self, case: Case, result: PurgeResult) -> None:
        callers = caller_keys(case)
        files = self._files(case)
        try:
            await self.store.update_case(case.id, scrub, actor=ACTOR, action="personal_data_purged")
        except CaseNotFound:
            return
        await self.store.forget_callers(case.id, callers)
        survey = await self.surveys.get(case.id)
        for rid in survey.recipients if survey else {}:
            await self.surveys.update(case.id, rid, scrub_recipient)
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
