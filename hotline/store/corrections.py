"""Call-taker confirmations and corrections of the suggestion, kept as labelled training examples.

- ``hl:nlp:corrections``  stream, one entry per confirmation: case_id, text, labels, suggested, actor, ts

Besides the classifier's heads a decision may carry ``urgency`` (emergency / urgent / normal): the call-taker's
level next to the one config/urgency.toml's rules gave, for reviewing those rules (it trains no model).

A case confirmed twice (the call-taker changed their mind) is exported once, with the last labels.
``hotline nlp export-corrections`` writes them as training rows, so that ``hotline nlp train --data
history.jsonl --data corrections.jsonl`` learns the city's own routing.
"""

from __future__ import annotations

import json
import time
from typing import Any

from hotline.store.cases import Store

HEADS = ("category", "department", "type")
URGENCY = "urgency"
LABEL_KEYS = (*HEADS, URGENCY)
MAX_TEXT_CHARS = 20_000
MAX_LABEL_CHARS = 200
# Far beyond any city's yearly volume; a bound only so that a runaway client cannot fill the memory.
STREAM_MAXLEN = 2_000_000
EXPORT_BATCH = 1000


class Corrections:
    def __init__(self, store: Store) -> None:
        self.store = store

    @property
    def key(self) -> str:
        return f"{self.store.p}:nlp:corrections"

    @staticmethod
    def _labels(value: Any, what: str) -> dict[str, str]:
        if not isinstance(value, dict):
            raise ValueError(f"{what}: expected a mapping of head → label")
        out: dict[str, str] = {}
        for head, label in value.items():
            if head not in LABEL_KEYS:
                raise ValueError(f"{what}: unknown head {head!r} (expected one of {', '.join(LABEL_KEYS)})")
            if label is None or label == "":
                continue
            if not isinstance(label, str) or len(label) > MAX_LABEL_CHARS:
                raise ValueError(f"{what}.{head}: expected a label of at most {MAX_LABEL_CHARS} characters")
            out[head] = label.strip()
        return out

    async def record(self, case_id: str, text: str, labels: dict[str, str], suggested: dict[str, str],
                     actor: str) -> None:
        """Store what the call-taker chose (``labels``) next to what was suggested, per head."""
        if not isinstance(case_id, str) or not case_id.strip():
            raise ValueError("case_id is required")
        if not isinstance(text, str) or not text.strip():
            raise ValueError("text is required")
        chosen = self._labels(labels, "labels")
        if not chosen:
            raise ValueError("labels: at least one head needs a label")
        proposed = self._labels(suggested or {}, "suggested")
        await self.store.r.xadd(self.key, {
            "case_id": case_id.strip()[:100],
            "text": text[:MAX_TEXT_CHARS],
            "labels": json.dumps(chosen, ensure_ascii=False),
            "suggested": json.dumps(proposed, ensure_ascii=False),
            "actor": str(actor)[:100],
            "ts": f"{time.time():.3f}",
        }, maxlen=STREAM_MAXLEN, approximate=True)

    async def count(self) -> int:
        return int(await self.store.r.xlen(self.key))

    async def export(self) -> list[dict[str, Any]]:
        """Training rows (title, text, category, department, type, case_id, actor, ts), last per case."""
        latest: dict[str, dict[str, Any]] = {}
        start = "-"
        while True:
            batch = await self.store.r.xrange(self.key, min=start, max="+", count=EXPORT_BATCH)
            for _entry_id, fields in batch:
                row = _row(fields)
                if row is not None:
                    # Re-inserting moves the case to the end: rows come out in order of last decision.
                    latest.pop(row["case_id"], None)
                    latest[row["case_id"]] = row
            if len(batch) < EXPORT_BATCH:
                break
            start = "(" + batch[-1][0]
        return list(latest.values())


def _row(fields: dict[str, str]) -> dict[str, Any] | None:
    try:
        labels = json.loads(fields.get("labels") or "{}")
        suggested = json.loads(fields.get("suggested") or "{}")
    except ValueError:
        return None
    if not isinstance(labels, dict) or not fields.get("case_id"):
        return None
    row: dict[str, Any] = {"title": "", "text": fields.get("text", "")}
    for head in LABEL_KEYS:
        row[head] = str(labels.get(head) or "")
    row["suggested"] = {h: str(v) for h, v in suggested.items()} if isinstance(suggested, dict) else {}
    row["corrected"] = [h for h in LABEL_KEYS if row[h] and row["suggested"].get(h) not in (None, "", row[h])]
    row.update(case_id=fields["case_id"], actor=fields.get("actor", ""), ts=float(fields.get("ts") or 0))
    return row
