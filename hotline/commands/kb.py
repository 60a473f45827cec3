"""``hotline kb …``: build the answer knowledge base from past official replies and evaluate retrieval.

    hotline kb build --data FILE.jsonl [FILE2.jsonl …] [--holdout 0.2] [--type 咨询]
    hotline kb eval  --data FILE.jsonl [--holdout 0.2] --json

Rows are JSON objects with ``title`` and ``text`` (the question), ``reply`` (the answer), and where
present ``department`` and ``reply_time``/``time`` (the answer's date). ``--holdout F`` splits every file
deterministically by row id: build skips the held-out part, eval uses only it, so the two commands
with the same F never see the same row. Eval also never lets a question retrieve its own entry.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import re
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from hotline.commands.common import add_settings_args, open_store, settings_from_args
from hotline.commands.jsonl import JsonlError, Skipped, read_jsonl
from hotline.nlp.answers import ACTIVE, AnswerIndex, RetrievalConfig, clean_text, date_ts, parse_date
from hotline.store.kb import KnowledgeBase

# Hit definition (README: Answers for consultations): the retrieved answer is the row's reply when
# their reply similarity is at least SAME_REPLY; it is a same-topic answer of the same department from SAME_TOPIC up.
SAME_REPLY = 0.8
SAME_TOPIC = 0.5
# Greeting handles (UU0081831, 网友“…”), dates and whitespace differ between copies of one reply.
_REPLY_NOISE = re.compile(r"[A-Z]{1,3}\d{3,}|\d{4}年\d{1,2}月\d{1,2}日?|\d{4}[-/]\d{1,2}[-/]\d{1,2}|\s+")


@dataclass
class Row:
    source: str
    source_id: str
    question: str
    answer: str
    department: str
    date: str
    type: str

    @property
    def entry_id(self) -> str:
        return f"{self.source}:{self.source_id}"


def source_name(path: Path) -> str:
    """taidi_replies.jsonl → taidi; dalian_letters_train.jsonl → dalian."""
    return re.sub(r"[^A-Za-z0-9-]", "", path.stem.split("_")[0])[:40] or "import"


def read_rows(path: Path, source: str = "", skipped: Skipped | None = None) -> Iterator[Row]:
    """The question/answer rows of a file. Lines that give none are counted in ``skipped`` by reason (not
    UTF-8, not JSON, no reply …), so a build can say what it left out; an unreadable file is a JsonlError."""
    source = source or source_name(path)
    skip = skipped if skipped is not None else Skipped()
    for where, r in read_jsonl(path, on_bad=skip):
        reply = r.get("reply")
        if reply is None or (isinstance(reply, str) and not reply.strip()):
            skip(where, "no reply")
            continue
        if not isinstance(reply, str):
            skip(where, "reply is not a string")
            continue
        title, text = r.get("title"), r.get("text")
        if not isinstance(title, str | None) or not isinstance(text, str | None):
            skip(where, "title or text is not a string")
            continue
        question = f"{title or ''}\n{text or ''}".strip()
        if not question:
            skip(where, "no question")
            continue
        day = parse_date(r.get("reply_time")) or parse_date(r.get("time"))
        n = where.rpartition(":")[2]
        sid = re.sub(r"[^A-Za-z0-9_.-]", "", str(r.get("id") or r.get("ticket_no") or ""))[:60] or f"line{n}"
        yield Row(source=source, source_id=sid, question=question, answer=reply.strip(),
                  department=str(r.get("department") or "").strip(), date=day.isoformat() if day else "",
                  type=str(r.get("type") or ""))


def held_out(row: Row, fraction: float) -> bool:
    """Deterministic split by row id: the same row is always on the same side."""
    if fraction <= 0:
        return False
    h = int(hashlib.sha256(row.entry_id.encode()).hexdigest()[:12], 16) / float(16**12)
    return h < fraction


def _select(rows: Iterator[Row], args: argparse.Namespace, *, part: str) -> list[Row]:
    out = []
    for row in rows:
        if args.type and args.type not in row.type:
            continue
        if part == "train" and held_out(row, args.holdout):
            continue
        if part == "test" and args.holdout and not held_out(row, args.holdout):
            continue
        out.append(row)
    return out


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("kb", help="build and evaluate the answer knowledge base (智能问答)")
    kb_sub = parser.add_subparsers(dest="kb_command", metavar="KB_COMMAND")
    for name, fn, helptext in (("build", cmd_build, "index question/answer pairs into the knowledge base"),
                               ("eval", cmd_eval, "hit@1 / hit@3 and latency of answer retrieval")):
        p = kb_sub.add_parser(name, help=helptext)
        p.add_argument("--data", type=Path, nargs="+", required=True, help="JSONL files with title, text, reply")
        p.add_argument("--holdout", type=float, default=0.0,
                       help="fraction of rows held out for evaluation (build skips them, eval uses only them)")
        p.add_argument("--type", default="", help="only rows whose type contains this, e.g. 咨询")
        p.add_argument("--json", action="store_true", help="print one JSON object")
        add_settings_args(p)
        p.set_defaults(handler=fn)
        if name == "eval":
            p.add_argument("--now", default="",
                           help="date to age entries from (YYYY-MM-DD); default: each row's own date")
            p.add_argument("--limit", type=int, help="evaluate at most this many rows (≥ 1)")
    parser.set_defaults(handler=lambda _args: parser.print_help() or 2)


def _check(args: argparse.Namespace) -> str:
    if not 0.0 <= args.holdout < 1.0:
        return "--holdout must be in [0, 1)"
    for path in args.data:
        if not path.is_file():
            return f"no such file: {path}"
    return ""


def cmd_build(args: argparse.Namespace) -> int:
    problem = _check(args)
    if problem:
        print(f"hotline kb build: {problem}", file=sys.stderr)
        return 2
    return asyncio.run(_build(args))


async def _build(args: argparse.Namespace) -> int:
    settings = settings_from_args(args)
    totals: dict[str, Any] = {"files": []}
    # Every file is read before the store is touched: a file that cannot be read imports nothing.
    read: list[tuple[Path, str, list[Row], Skipped]] = []
    for path in args.data:
        source, skipped = source_name(path), Skipped()
        try:
            rows = _select(read_rows(path, source, skipped), args, part="train")
        except JsonlError as exc:
            print(f"hotline kb build: {exc}", file=sys.stderr)
            return 1
        _report_skipped("build", skipped)
        read.append((path, source, rows, skipped))
    async with open_store(settings) as store:
        kb = KnowledgeBase(store)
        for path, source, rows, skipped in read:
            counts = await kb.import_many(
                ({"source_id": r.source_id, "question": r.question, "answer": r.answer,
                  "department": r.department, "date": r.date} for r in rows),
                actor="cli:kb-build", source=source)
            # ``skipped``: every line left out, those the import refused (a bad date) and those never read.
            reasons = skipped.as_dict()
            if counts["skipped"]:
                reasons["refused by the import (date out of range, no id)"] = counts["skipped"]
            counts["skipped"] += skipped.total
            totals["files"].append({"file": str(path), "source": source, "rows": len(rows), **counts,
                                    "skipped_reasons": reasons})
        totals["entries"] = await kb.count()
        totals["version"] = await kb.version()
    if args.json:
        print(json.dumps(totals, ensure_ascii=False))
    else:
        for f in totals["files"]:
            print(f"{f['file']}: {f['rows']} rows → {f['created']} new, {f['updated']} updated, "
                  f"{f['unchanged']} unchanged, {f['skipped']} skipped")
        print(f"knowledge base: {totals['entries']} entries (version {totals['version']})")
    return 0


def _report_skipped(command: str, skipped: Skipped) -> None:
    if skipped:
        print(f"hotline kb {command}: skipped {_lines(skipped.total)}: {skipped.describe()}", file=sys.stderr)


def cmd_eval(args: argparse.Namespace) -> int:
    problem = _check(args)
    if not problem and args.now and parse_date(args.now) is None:
        problem = "--now must be a date YYYY-MM-DD"
    if not problem and args.limit is not None and args.limit < 1:
        problem = "--limit must be at least 1"
    if problem:
        print(f"hotline kb eval: {problem}", file=sys.stderr)
        return 2
    result = asyncio.run(_eval(args))
    if "error" in result:
        print(f"hotline kb eval: {result['error']}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(result, ensure_ascii=False))
    else:
        for key, value in result.items():
            print(f"{key}: {value}")
    return 0


def _reply_key(text: str) -> str:
    return _REPLY_NOISE.sub("", clean_text(text))


async def _eval(args: argparse.Namespace) -> dict[str, Any]:
    settings = settings_from_args(args)
    cfg = RetrievalConfig.from_settings(settings["kb"])
    async with open_store(settings) as store:
        _version, records = await KnowledgeBase(store).snapshot()
    records = [r for r in records if r.status == ACTIVE]
    if not records:
        return {"error": "the knowledge base is empty: run `hotline kb build` first"}
    skipped = Skipped()
    try:
        rows = [row for path in args.data for row in _select(read_rows(path, skipped=skipped), args, part="test")]
    except JsonlError as exc:
        return {"error": str(exc)}
    _report_skipped("eval", skipped)
    if args.limit is not None:
        rows = rows[: args.limit]
    if not rows:
        return {"error": "no rows to evaluate"}
    t0 = time.perf_counter()
    index = AnswerIndex.build(r.to_entry() for r in records)
    build_s = time.perf_counter() - t0
    fixed = date_ts(args.now) if args.now else None
    return {**evaluate(index, rows, records, cfg, now=fixed, build_s=build_s), "skipped_lines": skipped.total}


def evaluate(index: AnswerIndex, rows: list[Row], records: list[Any], cfg: RetrievalConfig, *,
             now: float | None = None, build_s: float = 0.0) -> dict[str, Any]:
    """Score every row's question against the index. Entries are aged as of ``now``, or else as of the
    row's own date (the day the question was answered), as they would have been on that day."""
    from sklearn.feature_extraction.text import TfidfVectorizer

    # Reply similarity for the hit test: character-bigram TF-IDF over all answers, so the boilerplate every
    # reply shares (您好，您的留言已收悉…) weighs little and the substance decides.
    rv = TfidfVectorizer(analyzer="char", ngram_range=(2, 2), sublinear_tf=True, preprocessor=_reply_key,
                         dtype=np.float32)
    rv.fit([r.answer for r in records] + [row.answer for row in rows])
    latencies: list[float] = []
    newest = max((date_ts(r.date) or 0.0) for r in records) or time.time()
    hit1 = hit3 = same1 = answered = answered_hit = 0
    consult = consult_hit1 = consult_hit3 = 0
    for row in rows:
        t = time.perf_counter()
        when = now if now is not None else (date_ts(row.date) or newest)
        matches = index.search(row.question, cfg=cfg, now=when, k=3, exclude=(row.entry_id,))
        latencies.append((time.perf_counter() - t) * 1000.0)
        if not matches:
            hits: list[bool] = []
            sims: list[float] = []
        else:
            vecs = rv.transform([row.answer] + [m.entry.answer for m in matches])
            sims = [float(x) for x in (vecs[1:] @ vecs[0].T).toarray().ravel()]
            hits = [s >= SAME_REPLY or (bool(row.department) and m.entry.department == row.department
                                        and s >= SAME_TOPIC) for m, s in zip(matches, sims, strict=True)]
        h1, h3 = bool(hits and hits[0]), any(hits)
        hit1 += h1
        hit3 += h3
        same1 += bool(sims and sims[0] >= SAME_REPLY)
        if matches and matches[0].score >= cfg.threshold:
            answered += 1
            answered_hit += h1
        if "咨询" in row.type:
            consult += 1
            consult_hit1 += h1
            consult_hit3 += h3
    n = len(rows)
    return {
        "n": n,
        "hit_at_1": round(hit1 / n, 4),
        "hit_at_3": round(hit3 / n, 4),
        "p99_ms": round(float(np.percentile(latencies, 99)), 3),
        "p50_ms": round(float(np.percentile(latencies, 50)), 3),
        "same_reply_at_1": round(same1 / n, 4),
        "answered_at_threshold": round(answered / n, 4),
        "precision_at_threshold": round(answered_hit / answered, 4) if answered else None,
        "consultations": consult,
        "consultation_hit_at_1": round(consult_hit1 / consult, 4) if consult else None,
        "consultation_hit_at_3": round(consult_hit3 / consult, 4) if consult else None,
        "entries": len(index),
        "index_build_s": round(build_s, 2),
        "threshold": cfg.threshold,
    }


def _lines(n: int) -> str:
    return "1 line" if n == 1 else f"{n} lines"
