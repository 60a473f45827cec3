"""Knowledge-base entries for answers to consultations, with an audit trail of every change.

Layout (prefix ``hl``; every KB key carries the hash tag ``{kb}`` so a change and its audit event are
written in one MULTI even on a cluster):
- ``hl:{kb}:entries``      hash: entry id → entry JSON
- ``hl:{kb}:events:<id>``  stream, the entry's audit trail (who/what/when, with the fields changed)
- ``hl:{kb}:log``          stream of every change to any entry, capped (the supervisors' change list)
- ``hl:{kb}:version``      counter bumped by every change: serving processes rebuild their index when it moves
- ``hl:{kb}:seq``          counter behind the ids of entries added by hand (kb-000123)
"""

from __future__ import annotations

import dataclasses
import json
import re
import time
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass
from datetime import date, timedelta
from typing import Any

from redis.exceptions import WatchError

from hotline.nlp.answers import ACTIVE, RETIRED, KBEntry, parse_date
from hotline.store.cases import Event, Store

LOG_MAXLEN = 100_000
EVENTS_PER_ENTRY_MAX = 1_000
MAX_QUESTION_CHARS = 5_000
MAX_ANSWER_CHARS = 10_000
MAX_DEPARTMENT_CHARS = 100
MAX_SOURCE_CHARS = 40
# Answer dates an index can age: from 1970 (the Unix epoch; earlier dates are no 12345 answer and some
# platforms cannot convert them) to a year ahead (room for a typo'd month, none for a typo'd century).
MIN_DATE = date(1970, 1, 1)
MAX_DATE_AHEAD = timedelta(days=366)
EDITABLE = ("question", "answer", "department", "date")
# Every id this store makes: kb-000123, and <source ≤ 40>:<source id ≤ 60> from imports.
ENTRY_ID_PATTERN = r"[A-Za-z0-9_-][A-Za-z0-9_.:-]{0,100}"
_ID_OK = re.compile(ENTRY_ID_PATTERN)


class EntryNotFound(KeyError):
    def __init__(self, entry_id: str) -> None:
        super().__init__(entry_id)
        self.entry_id = entry_id


class EntryInvalid(ValueError):
    """A field an editor (or an import file) gave is unusable; the message names it, in Chinese."""


@dataclass
class KBRecord:
    id: str
    question: str
    answer: str
    department: str = ""
    date: str = ""
    status: str = ACTIVE
    source: str = ""  # manual | taidi | dalian | jiamusi | …
    source_id: str = ""
    rev: int = 1
    created_at: float = 0.0
    created_by: str = ""
    updated_at: float = 0.0
    updated_by: str = ""
    retired_at: float = 0.0
    retired_by: str = ""
    retired_reason: str = ""

    def to_entry(self) -> KBEntry:
        return KBEntry(id=self.id, question=self.question, answer=self.answer, department=self.department,
                       date=self.date, status=self.status, source=self.source)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> KBRecord:
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


def valid_entry_id(entry_id: str) -> bool:
    return bool(_ID_OK.fullmatch(entry_id or ""))


def clean_fields(fields: dict[str, Any], *, partial: bool) -> dict[str, str]:
    """Check editor input; returns the fields to write (dates as YYYY-MM-DD)."""
    out: dict[str, str] = {}
    limits = {"question": MAX_QUESTION_CHARS, "answer": MAX_ANSWER_CHARS, "department": MAX_DEPARTMENT_CHARS,
              "date": 32}
    labels = {"question": "问题", "answer": "答复", "department": "答复单位", "date": "答复日期"}
    for name in EDITABLE:
        if name not in fields:
            if not partial and name in ("question", "answer"):
                raise EntryInvalid(f"缺少字段 {name}（{labels[name]}）。")
            continue
        value = fields[name]
        if value is None:
            value = ""
        if not isinstance(value, str):
            raise EntryInvalid(f"字段 {name}（{labels[name]}）必须是字符串。")
        value = value.replace("\x00", "").strip()
        if len(value) > limits[name]:
            raise EntryInvalid(f"字段 {name}（{labels[name]}）过长（上限 {limits[name]} 字）。")
        if name in ("question", "answer") and not value:
            raise EntryInvalid(f"字段 {name}（{labels[name]}）不能为空。")
        if name == "date" and value:
            d = parse_date(value)
            if d is None:
                raise EntryInvalid("字段 date（答复日期）须为 YYYY-MM-DD。")
            latest = date.today() + MAX_DATE_AHEAD
            if not MIN_DATE <= d <= latest:
                raise EntryInvalid(f"字段 date（答复日期）须在 {MIN_DATE.isoformat()} 至 {latest.isoformat()} 之间。")
            value = d.isoformat()
        out[name] = value
    unknown = set(fields) - set(EDITABLE)
    if unknown:
        raise EntryInvalid(f"未知字段：{', '.join(sorted(unknown))[:100]}。")
    return out


class KnowledgeBase:
    def __init__(self, store: Store) -> None:
        self.store = store
        self.r = store.r
        self.p = store.p

    # keys -----------------------------------------------------------------
    @property
    def k_entries(self) -> str:
        return f"{self.p}:{{kb}}:entries"

    @property
    def k_version(self) -> str:
        return f"{self.p}:{{kb}}:version"

    @property
    def k_seq(self) -> str:
        return f"{self.p}:{{kb}}:seq"

    @property
    def k_log(self) -> str:
        return f"{self.p}:{{kb}}:log"

    def k_events(self, entry_id: str) -> str:
        return f"{self.p}:{{kb}}:events:{entry_id}"

    # reading --------------------------------------------------------------
    async def version(self) -> int:
        return int(await self.r.get(self.k_version) or 0)

    async def get(self, entry_id: str) -> KBRecord:
        raw = await self.r.hget(self.k_entries, entry_id)
        if raw is None:
            raise EntryNotFound(entry_id)
        return KBRecord.from_dict(json.loads(raw))

    async def get_many(self, entry_ids: list[str]) -> dict[str, KBRecord]:
        if not entry_ids:
            return {}
        raws = await self.r.hmget(self.k_entries, entry_ids)
        return {eid: KBRecord.from_dict(json.loads(raw)) for eid, raw in zip(entry_ids, raws, strict=True) if raw}

    async def scan(self, count: int = 2000) -> AsyncIterator[KBRecord]:
        async for _eid, raw in self.r.hscan_iter(self.k_entries, count=count):
            yield KBRecord.from_dict(json.loads(raw))

    async def snapshot(self) -> tuple[int, list[KBRecord]]:
        """All entries with the version they were read at (read the version first: a change racing the
        scan then moves the version past it and triggers another load)."""
        version = await self.version()
        return version, [rec async for rec in self.scan()]

    async def count(self) -> int:
        return int(await self.r.hlen(self.k_entries))

    async def events(self, entry_id: str, count: int = 200) -> list[Event]:
        rows = await self.r.xrange(self.k_events(entry_id), count=count)
        return [Event(id=eid, ts=float(f["ts"]), actor=f["actor"], action=f["action"],
                      data=json.loads(f.get("data") or "{}")) for eid, f in rows]

    async def page(self, offset: int, limit: int, status: str = "all") -> tuple[int | None, list[KBRecord]]:
        """Up to ``limit`` entries in id order from position ``offset`` of all ids, those of ``status`` only
        unless "all"; (the offset to continue from, or None at the end; the entries)."""
        ids = sorted(await self.r.hkeys(self.k_entries))
        out: list[KBRecord] = []
        at = offset
        while at < len(ids) and len(out) < limit:
            chunk = ids[at:at + (limit - len(out) if status == "all" else 500)]
            for raw in await self.r.hmget(self.k_entries, chunk):
                at += 1
                if raw is not None:
                    rec = KBRecord.from_dict(json.loads(raw))
                    if status == "all" or rec.status == status:
                        out.append(rec)
                        if len(out) == limit:
                            break
        return (at if at < len(ids) else None), out

    async def last_change(self) -> str:
        """The id of the newest change-log entry ("0-0" when none): where ``changes_since`` continues."""
        rows = await self.r.xrevrange(self.k_log, count=1)
        return rows[0][0] if rows else "0-0"

    async def changes_since(self, log_id: str, count: int) -> list[tuple[str, str]]:
        """(log id, entry id) of up to ``count`` changes after ``log_id``, oldest first."""
        rows = await self.r.xrange(self.k_log, min=f"({log_id}", count=count)
        return [(eid, f["entry"]) for eid, f in rows]

    async def recent_changes(self, count: int = 100) -> list[dict[str, Any]]:
        rows = await self.r.xrevrange(self.k_log, count=count)
        return [{"id": eid, "ts": float(f["ts"]), "actor": f["actor"], "action": f["action"], "entry": f["entry"]}
                for eid, f in rows]

    # writing --------------------------------------------------------------
    def _write(self, pipe: Any, rec: KBRecord, *, actor: str, action: str, data: dict[str, Any], now: float) -> None:
        pipe.hset(self.k_entries, rec.id, json.dumps(rec.to_dict(), ensure_ascii=False))
        pipe.xadd(self.k_events(rec.id), {"ts": f"{now:.6f}", "actor": actor, "action": action,
                                          "data": json.dumps(data, ensure_ascii=False)},
                  maxlen=EVENTS_PER_ENTRY_MAX, approximate=True)
        pipe.xadd(self.k_log, {"ts": f"{now:.6f}", "actor": actor, "action": action, "entry": rec.id},
                  maxlen=LOG_MAXLEN, approximate=True)
        pipe.incr(self.k_version)

    async def add(self, fields: dict[str, Any], *, actor: str, source: str = "manual") -> KBRecord:
        values = clean_fields(fields, partial=False)
        now = time.time()
        n = await self.r.incr(self.k_seq)
        rec = KBRecord(id=f"kb-{int(n):06d}", question=values["question"], answer=values["answer"],
                       department=values.get("department", ""),
                       date=values.get("date") or time.strftime("%Y-%m-%d", time.localtime(now)),
                       source=source[:MAX_SOURCE_CHARS], created_at=now, created_by=actor, updated_at=now,
                       updated_by=actor)
        async with self.r.pipeline(transaction=True) as pipe:
            self._write(pipe, rec, actor=actor, action="created", data=self._public(rec), now=now)
            await pipe.execute()
        return rec

    async def edit(self, entry_id: str, fields: dict[str, Any], *, actor: str,
                   expected_rev: int | None = None) -> KBRecord:
        """Change some fields; the event records each changed field's old and new value."""
        values = clean_fields(fields, partial=True)
        return await self._change(entry_id, actor=actor, action="edited", expected_rev=expected_rev,
                                  change=lambda rec: self._apply(rec, values))

    async def retire(self, entry_id: str, *, actor: str, reason: str = "") -> KBRecord:
        """Retired entries are kept for the audit trail but are never suggested again."""
        def change(rec: KBRecord) -> dict[str, Any] | None:
            if rec.status == RETIRED:
                return None
            rec.status, rec.retired_at, rec.retired_by = RETIRED, time.time(), actor
            rec.retired_reason = reason[:500]
            return {"status": [ACTIVE, RETIRED], "reason": rec.retired_reason}

        return await self._change(entry_id, actor=actor, action="retired", change=change)

    async def restore(self, entry_id: str, *, actor: str) -> KBRecord:
        def change(rec: KBRecord) -> dict[str, Any] | None:
            if rec.status == ACTIVE:
                return None
            rec.status, rec.retired_at, rec.retired_by, rec.retired_reason = ACTIVE, 0.0, "", ""
            return {"status": [RETIRED, ACTIVE]}

        return await self._change(entry_id, actor=actor, action="restored", change=change)

    @staticmethod
    def _apply(rec: KBRecord, values: dict[str, str]) -> dict[str, Any] | None:
        diff = {}
        for name, value in values.items():
            old = getattr(rec, name)
            if old != value:
                diff[name] = [old, value]
                setattr(rec, name, value)
        return diff or None

    async def _change(self, entry_id: str, *, actor: str, action: str, change: Any,
                      expected_rev: int | None = None) -> KBRecord:
        async with self.r.pipeline(transaction=True) as pipe:
            while True:
                try:
                    await pipe.watch(self.k_entries)
                    raw = await pipe.hget(self.k_entries, entry_id)
                    if raw is None:
                        raise EntryNotFound(entry_id)
                    rec = KBRecord.from_dict(json.loads(raw))
                    if expected_rev is not None and rec.rev != expected_rev:
                        raise EntryConflict(rec)
                    diff = change(rec)
                    if diff is None:  # nothing changed: no event, no version bump
                        await pipe.reset()
                        return rec
                    now = time.time()
                    rec.rev += 1
                    rec.updated_at, rec.updated_by = now, actor
                    pipe.multi()
                    self._write(pipe, rec, actor=actor, action=action, data={"rev": rec.rev, **diff}, now=now)
                    await pipe.execute()
                    return rec
                except WatchError:
                    continue

    async def import_many(self, rows: Iterable[dict[str, Any]], *, actor: str, source: str,
                          batch: int = 500) -> dict[str, int]:
        """Upsert imported entries keyed by source + source row id; a re-run changes only what changed.

        Each row: {"source_id", "question", "answer", "department", "date"}. Returns counts.
        """
        counts = {"created": 0, "updated": 0, "unchanged": 0, "skipped": 0}
        chunk: list[KBRecord] = []

        async def flush() -> None:
            existing = await self.get_many([rec.id for rec in chunk])
            now = time.time()
            async with self.r.pipeline(transaction=True) as pipe:
                for rec in chunk:
                    old = existing.get(rec.id)
                    if old is None:
                        rec.created_at = rec.updated_at = now
                        rec.created_by = rec.updated_by = actor
                        self._write(pipe, rec, actor=actor, action="imported", data=self._public(rec), now=now)
                        counts["created"] += 1
                        continue
                    if old.status == RETIRED:
                        # An editor retired it: a re-import must not bring it back.
                        counts["unchanged"] += 1
                        continue
                    diff = self._apply(old, {n: getattr(rec, n) for n in EDITABLE})
                    if diff is None:
                        counts["unchanged"] += 1
                        continue
                    old.rev += 1
                    old.updated_at, old.updated_by = now, actor
                    self._write(pipe, old, actor=actor, action="reimported", data={"rev": old.rev, **diff}, now=now)
                    counts["updated"] += 1
                await pipe.execute()
            chunk.clear()

        src = re.sub(r"[^A-Za-z0-9_-]", "", source)[:MAX_SOURCE_CHARS] or "import"
        for row in rows:
            sid = re.sub(r"[^A-Za-z0-9_.-]", "", str(row.get("source_id", "")))[:60]
            try:
                values = clean_fields({k: row.get(k, "") for k in EDITABLE}, partial=False)
            except EntryInvalid:
                counts["skipped"] += 1
                continue
            if not sid:
                counts["skipped"] += 1
                continue
            chunk.append(KBRecord(id=f"{src}:{sid}", question=values["question"], answer=values["answer"],
                                  department=values.get("department", ""), date=values.get("date", ""),
                                  source=src, source_id=sid))
            if len(chunk) >= batch:
                await flush()
        if chunk:
            await flush()
        return counts

    @staticmethod
    def _public(rec: KBRecord) -> dict[str, Any]:
        return {n: getattr(rec, n) for n in (*EDITABLE, "source", "source_id")}


class EntryConflict(Exception):
    """The entry changed since the editor loaded it (rev mismatch)."""

    def __init__(self, current: KBRecord) -> None:
        super().__init__(current.id)
        self.current = current
