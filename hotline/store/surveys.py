"""Satisfaction surveys (回访) in Redis.

- ``hl:survey:{case_id}``   JSON: one entry per recipient (``main`` = the case's reporter, else a merged
                            report's id) with its state, tries and answers
- ``hl:surveys:due``        zset "case_id|rid" → when the worker should try (again)
- ``hl:surveys:followup``   zset "case_id|rid" → since when (or call-back time) it waits for an agent
- the change feed ``hl:feed`` is read with the consumer group ``surveys`` to notice resolved cases
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from redis.exceptions import ResponseError, WatchError

from hotline.store.cases import Store

MAIN = "main"
FEED_GROUP = "surveys"

# Recipient states.
SCHEDULED = "scheduled"  # waiting for its time
ASKED = "asked"  # an automated question is out
FOLLOWUP = "followup"  # on the follow-up agents' worklist
ANSWERED = "answered"
UNREACHABLE = "unreachable"
WITHDRAWN = "withdrawn"  # a merged report taken off the case again (unmerged): not this case's reporter now


@dataclass
class Recipient:
    rid: str
    channel: str
    sender: str
    contact: str
    state: str = SCHEDULED
    attempts: int = 0  # automated tries
    agent_attempts: int = 0  # calls logged by follow-up agents
    question: str = ""  # q1 | q2 while a chat question is out
    resolved: bool | None = None
    satisfaction: str = ""
    comment: str = ""
    answered_at: float = 0.0
    answered_by: str = ""
    next_at: float = 0.0
    notes: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class Survey:
    case_id: str
    created_at: float
    round: int = 1  # a reopened and re-resolved case is surveyed again
    trigger: str = ""  # id of the audit event that resolved the case for this round
    recipients: dict[str, Recipient] = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps(asdict(self), ensure_ascii=False)

    @classmethod
    def from_json(cls, raw: str) -> Survey:
        data = json.loads(raw)
        recips = {k: Recipient(**v) for k, v in data.pop("recipients", {}).items()}
        return cls(recipients=recips, **data)


def member(case_id: str, rid: str) -> str:
    return f"{case_id}|{rid}"


def split_member(value: str) -> tuple[str, str]:
    case_id, _, rid = value.partition("|")
    return case_id, rid


class SurveyStore:
    def __init__(self, store: Store) -> None:
        self.s = store
        self.r = store.r
        self.p = store.p

    def k_survey(self, case_id: str) -> str:
        return f"{self.p}:survey:{{{case_id}}}"

    @property
    def k_due(self) -> str:
        return f"{self.p}:surveys:due"

    @property
    def k_followup(self) -> str:
        return f"{self.p}:surveys:followup"

    async def get(self, case_id: str) -> Survey | None:
        raw = await self.r.get(self.k_survey(case_id))
        return Survey.from_json(raw) if raw else None

    async def _watched(self, case_id: str, plan: Callable[[Survey | None], Callable[[Any], None] | None]) -> bool:
        """Read the survey under WATCH and hand it to ``plan``, whose returned function queues the writes that run
        in one MULTI; retried from the read when the survey changed meanwhile. ``plan`` returning None writes
        nothing (False)."""
        key = self.k_survey(case_id)
        async with self.r.pipeline(transaction=True) as pipe:
            while True:
                try:
                    await pipe.watch(key)
                    raw = await pipe.get(key)
                    queue = plan(Survey.from_json(raw) if raw is not None else None)
                    if queue is None:
                        return False
                    pipe.multi()
                    queue(pipe)
                    await pipe.execute()
                    return True
                except WatchError:
                    continue

    async def create(self, survey: Survey) -> bool:
        """Store a new survey round and schedule its recipients; False when this round already exists."""

        def plan(earlier: Survey | None) -> Callable[[Any], None] | None:
            if earlier is not None and (earlier.round >= survey.round or earlier.trigger == survey.trigger):
                return None

            def queue(pipe: Any) -> None:
                pipe.set(self.k_survey(survey.case_id), survey.to_json())
                for rid, rec in survey.recipients.items():
                    pipe.zadd(self.k_due, {member(survey.case_id, rid): rec.next_at})
                    pipe.zrem(self.k_followup, member(survey.case_id, rid))
            return queue

        return await self._watched(survey.case_id, plan)

    async def update(self, case_id: str, rid: str, mutate: Callable[[Recipient, Survey], None]) -> Recipient:
        """Change one recipient under WATCH and keep the due/follow-up indexes in step with its state."""
        changed: list[Recipient] = []

        def plan(survey: Survey | None) -> Callable[[Any], None]:
            if survey is None:
                raise KeyError(case_id)
            rec = survey.recipients.get(rid)
            if rec is None:
                raise KeyError(f"{case_id}|{rid}")
            mutate(rec, survey)
            changed[:] = [rec]
            m = member(case_id, rid)

            def queue(pipe: Any) -> None:
                pipe.set(self.k_survey(case_id), survey.to_json())
                if rec.state in (SCHEDULED, ASKED):
                    pipe.zadd(self.k_due, {m: rec.next_at})
                    pipe.zrem(self.k_followup, m)
                elif rec.state == FOLLOWUP:
                    pipe.zrem(self.k_due, m)
                    pipe.zadd(self.k_followup, {m: rec.next_at})
                else:
                    pipe.zrem(self.k_due, m)
                    pipe.zrem(self.k_followup, m)
            return queue

        await self._watched(case_id, plan)
        return changed[0]

    async def claim_due(self, now: float | None = None, limit: int = 50) -> list[tuple[str, str]]:
        """Take due entries off the schedule; ZREM decides which process owns each one."""
        now = time.time() if now is None else now
        due = await self.r.zrangebyscore(self.k_due, "-inf", now, start=0, num=limit)
        claimed = []
        for m in due:
            if await self.r.zrem(self.k_due, m):
                claimed.append(split_member(m))
        return claimed

    async def reschedule(self, case_id: str, rid: str, at: float) -> None:
        await self.r.zadd(self.k_due, {member(case_id, rid): at})

    async def renew(self, case_id: str, rid: str, until: float) -> None:
        """Extend a lease on an entry still on the schedule (XX: one answered or moved off meanwhile stays
        off; GT: never brings a later time forward)."""
        await self.r.zadd(self.k_due, {member(case_id, rid): until}, xx=True, gt=True)

    async def release(self, case_id: str, rid: str, round_: int) -> None:
        """Take a lease of round ``round_`` off the schedule; a round started meanwhile keeps its entry."""

        def plan(survey: Survey | None) -> Callable[[Any], None] | None:
            if survey is not None and survey.round != round_:
                return None
            return lambda pipe: pipe.zrem(self.k_due, member(case_id, rid))

        await self._watched(case_id, plan)

    async def followup_list(self, limit: int = 200, now: float | None = None) -> list[tuple[str, str, float]]:
        """Worklist of the follow-up agents, earliest first; call-backs set for later are left out."""
        now = time.time() if now is None else now
        rows = await self.r.zrangebyscore(self.k_followup, "-inf", now, start=0, num=limit, withscores=True)
        return [(*split_member(m), score) for m, score in rows]

    async def counts(self) -> dict[str, int]:
        return {"due": int(await self.r.zcard(self.k_due)), "followup": int(await self.r.zcard(self.k_followup))}

    # change feed ----------------------------------------------------------
    async def ensure_feed_group(self) -> None:
        try:
            # From the start of the feed: cases resolved while no worker ran are still surveyed.
            await self.r.xgroup_create(self.s.k_feed, FEED_GROUP, id="0", mkstream=True)
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    async def read_feed(self, consumer: str, count: int = 100) -> list[tuple[str, dict[str, str]]]:
        # Pending entries of this consumer first (a crash between read and ack), then new ones.
        # No BLOCK: a task cancelled inside a blocking XREADGROUP can hang shutdown; the worker polls.
        for start in ("0", ">"):
            res = await self.r.xreadgroup(FEED_GROUP, consumer, {self.s.k_feed: start}, count=count)
            entries = [(eid, fields) for _s, items in (res or []) for eid, fields in items if fields]
            if entries:
                return entries
        return []

    async def ack_feed(self, ids: list[str]) -> None:
        if ids:
            await self.r.xack(self.s.k_feed, FEED_GROUP, *ids)
