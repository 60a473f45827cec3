"""Answer retrieval for consultations (智能问答): find past official answers to a citizen's question.

Pure computation, no I/O. Entries (question, answer, department, date) are indexed as TF-IDF vectors of
character 2–3-grams (Chinese needs no word segmentation for this, and n-grams survive typos and the
anonymisation of the source data); a query is scored against every entry's question by one sparse
matrix product, which stays within a few milliseconds at 50,000 entries.

score = cosine similarity × age factor, where the age factor halves every ``half_life_days`` because an
old answer may describe a policy that has since changed. Entries older than ``max_age_days`` and retired
entries are never returned. Citizens get an answer at once only at ``threshold``; staff see suggestions
from ``suggest_threshold`` up.
"""

from __future__ import annotations

import logging
import math
import re
import time
import unicodedata
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime
from typing import Any

import numpy as np

log = logging.getLogger("hotline.answers")

ACTIVE = "active"
RETIRED = "retired"

DAY_S = 86400.0
# Long letters are cut before indexing: the first part states the question; the rest is narrative that
# only adds noise (and time).
MAX_QUESTION_CHARS = 600
MAX_QUERY_CHARS = 600

# Runs of * and 0 are anonymisation artefacts of the public letters: they make unrelated texts look alike.
_ARTEFACTS = re.compile(r"\*{2,}|0{3,}|X{3,}|x{3,}")
_SPACE = re.compile(r"\s+")

# The citizen asks something (rather than reports a problem): question words and question endings. 几天 asks
# only on its own: 好几天了 / 这几天 / 前几天 / 十几天 tell how long a problem has lasted.
_QUESTION = re.compile(
    r"请问|咨询|问一下|问下|想问|想了解|了解一下|怎么办|怎么|怎样|如何|能否|能不能|可否|可不可以|是否|有没有|"
    r"什么时候|何时|哪里|哪儿|在哪|多少|(?<![好这那前近十过])几天(?![了来])|多久|需要什么|什么条件|什么材料|什么手续|符合.{0,8}条件|"
    r"[吗呢么][?？。!！]*$|[?？]"
)
# A strong complaint signal wins over a question mark: "为什么还不修？" is a complaint, not a consultation.
_COMPLAINT = re.compile(r"投诉|举报|扰民|违建|违章|乱收费|不作为|拖欠|欠薪|漏水|坏了|堵塞|噪音|污染")


def clean_text(text: str) -> str:
    """Canonical text for matching: NFKC, anonymisation artefacts and extra spaces removed."""
    text = unicodedata.normalize("NFKC", text or "")
    text = _ARTEFACTS.sub(" ", text)
    return _SPACE.sub(" ", text).strip()


def is_question(text: str) -> bool:
    """True when the text reads as a question rather than a report of a problem."""
    t = clean_text(text)
    if not t:
        return False
    return bool(_QUESTION.search(t)) and not _COMPLAINT.search(t)


def type_label(suggestion: dict[str, Any] | None) -> tuple[str, float]:
    """The classifier's top type label and its probability ('' when there is no type head)."""
    top = ((suggestion or {}).get("type") or {}).get("top") or []
    if not top or not isinstance(top[0], dict):
        return "", 0.0
    try:
        return str(top[0].get("label", "")), float(top[0].get("p", 0.0))
    except (TypeError, ValueError):
        return str(top[0].get("label", "")), 0.0


def is_consultation(text: str, suggestion: dict[str, Any] | None = None) -> bool:
    """A consultation (咨询): the type head's top label says so, or the citizen asks a question.

    The type labels of the training sets are 咨询 (Dalian) and 咨询问题 (Jiamusi), hence "contains".
    A confident other type (投诉, 举报 …) overrides a question form.
    """
    label, p = type_label(suggestion)
    if "咨询" in label:
        return True
    if label and p >= 0.8:
        return False
    return is_question(text)


def parse_date(value: str | None) -> date | None:
    """Dates as the sources write them: 2019/5/10 14:56:53, 2018-9-28, 2018-09-28T…; None when unreadable."""
    if not value:
        return None
    m = re.match(r"\s*(\d{4})[-/.年](\d{1,2})[-/.月](\d{1,2})", str(value))
    if not m:
        return None
    try:
        return date(int(m.group(1)), int(m.group(2)), int(m.group(3)))
    except ValueError:
        return None


def date_ts(value: str | None) -> float | None:
    """Local midnight of the date as a Unix time; None when undated or when the platform cannot convert it
    (``0001-01-01`` is year 0 in UTC east of Greenwich: ValueError; far dates: OverflowError/OSError)."""
    d = parse_date(value)
    if d is None:
        return None
    try:
        return datetime(d.year, d.month, d.day).timestamp()
    except (ValueError, OverflowError, OSError):
        return None


def _dates_of(entries: Sequence[KBEntry]) -> np.ndarray:
    """Entry timestamps, NaN when undated. A date that reads but cannot be converted (stored before dates
    were range-checked) counts as undated: one such entry must not stop the whole index from building."""
    out = np.full(len(entries), np.nan, dtype=np.float64)
    bad: list[str] = []
    for i, e in enumerate(entries):
        ts = date_ts(e.date)
        if ts is not None:
            out[i] = ts
        elif e.date and parse_date(e.date) is not None:
            bad.append(e.id)
    if bad:
        log.warning("kb entries with unusable dates indexed as undated",
                    extra={"event": "kb_bad_dates", "count": len(bad), "entry_ids": bad[:20]})
    return out


@dataclass(frozen=True)
class KBEntry:
    """One knowledge-base entry as the index sees it."""

    id: str
    question: str
    answer: str
    department: str = ""
    date: str = ""  # YYYY-MM-DD: when the answer was given (policy as of that day)
    status: str = ACTIVE
    source: str = ""


@dataclass(frozen=True)
class RetrievalConfig:
    threshold: float = 0.6
    suggest_threshold: float = 0.2
    half_life_days: float = 730.0
    max_age_days: float = 0.0  # 0: no limit
    suggestions: int = 3

    @classmethod
    def from_settings(cls, section: dict[str, Any]) -> RetrievalConfig:
        cfg = cls(threshold=float(section["threshold"]), suggest_threshold=float(section["suggest_threshold"]),
                  half_life_days=float(section["half_life_days"]), max_age_days=float(section["max_age_days"]),
                  suggestions=int(section["suggestions"]))
        cfg.check()
        return cfg

    def check(self) -> None:
        if not 0.0 < self.threshold <= 1.0:
            raise ValueError("kb.threshold must be in (0, 1]")
        if not 0.0 <= self.suggest_threshold <= self.threshold:
            raise ValueError("kb.suggest_threshold must be in [0, kb.threshold]")
        if self.half_life_days < 0 or self.max_age_days < 0:
            raise ValueError("kb.half_life_days and kb.max_age_days must not be negative")
        if not 1 <= self.suggestions <= 20:
            raise ValueError("kb.suggestions must be in 1..20")


@dataclass(frozen=True)
class Match:
    entry: KBEntry
    similarity: float  # cosine of the question vectors, 0..1
    age_days: float | None  # None: the entry has no date
    age_factor: float
    score: float  # similarity × age_factor: what ranking and thresholds use

    def to_dict(self) -> dict[str, Any]:
        return {"entry_id": self.entry.id, "question": self.entry.question, "answer": self.entry.answer,
                "department": self.entry.department, "date": self.entry.date, "source": self.entry.source,
                "score": round(self.score, 4), "similarity": round(self.similarity, 4),
                "age_days": None if self.age_days is None else round(self.age_days, 1),
                "age_factor": round(self.age_factor, 4)}


@dataclass
class Decision:
    """What to do with one question: the suggestions to show staff and the answer to give a citizen."""

    suggestions: list[Match] = field(default_factory=list)
    answer: Match | None = None  # the top suggestion when it clears the citizen threshold

    @property
    def nothing_fits(self) -> bool:
        return not self.suggestions


def age_factor(age_days: float | None, cfg: RetrievalConfig) -> float:
    """1 for a fresh or undated entry, halving every half-life; 0 beyond the maximum age."""
    if age_days is None:
        return 1.0
    age = max(0.0, age_days)
    if cfg.max_age_days and age > cfg.max_age_days:
        return 0.0
    if not cfg.half_life_days:
        return 1.0
    return math.pow(0.5, age / cfg.half_life_days)


# In a large KB, n-grams found in more than this share of the entries (您好, 请问, 小区 …) are dropped: they
# say little about which answer fits, and their long posting lists are most of a query's cost.
COMMON_DF = 0.05
COMMON_MIN_ENTRIES = 2000


def _vectorizer(n_entries: int = 0) -> Any:
    # Imported here, not at module import: scikit-learn takes a second to load and most callers of this
    # module (the web process before the KB is loaded, the CLI's --help) never need it.
    from sklearn.feature_extraction.text import TfidfVectorizer

    max_df = COMMON_DF if n_entries >= COMMON_MIN_ENTRIES else 1.0
    return TfidfVectorizer(analyzer="char", ngram_range=(2, 3), sublinear_tf=True, min_df=1, max_df=max_df,
                           preprocessor=_prep, dtype=np.float32)


def _prep(text: str) -> str:
    return clean_text(text)[:MAX_QUESTION_CHARS]


class AnswerIndex:
    """An immutable index of the active entries; rebuilt when the knowledge base changes.

    ``retire`` only masks an entry in place, so a retirement takes effect at once, before the rebuild.
    """

    def __init__(self, entries: Sequence[KBEntry], vectorizer: Any, matrix: Any, dates: np.ndarray) -> None:
        self.entries = list(entries)
        self._vec = vectorizer
        self._m = matrix  # CSR, terms × entries (transposed so a query row multiplies postings directly)
        self._dates = dates  # entry timestamps, NaN when undated
        self._alive = np.ones(len(self.entries), dtype=bool)
        self._pos = {e.id: i for i, e in enumerate(self.entries)}
        # Entries changed since the last full build: past a share of the index, a full rebuild refits the IDF.
        self.stale = 0
        self._cache: tuple[tuple[int, float, float], np.ndarray, np.ndarray] | None = None

    @classmethod
    def build(cls, entries: Iterable[KBEntry]) -> AnswerIndex:
        # A question needs two characters to hold one n-gram: a shorter one could never be matched.
        active = [e for e in entries if e.status == ACTIVE and len(clean_text(e.question)) >= 2 and e.answer.strip()]
        if not active:
            return cls([], None, None, np.zeros(0))
        vec = _vectorizer(len(active))
        try:
            matrix = vec.fit_transform([e.question for e in active]).T.tocsr()
        except ValueError:  # every n-gram pruned as too common (many copies of one question): nothing to rank by
            return cls([], None, None, np.zeros(0))
        return cls(active, vec, matrix, _dates_of(active))

    def updated(self, changed: Sequence[KBEntry]) -> AnswerIndex:
        """A new index with ``changed`` entries replaced, added or (when not active) removed.

        New and edited entries are vectorised with the existing vocabulary and IDF (n-grams never seen
        before are ignored until the next full build), which takes milliseconds instead of a full refit.
        """
        changed = list({e.id: e for e in changed}.values())  # the last version of each entry wins
        if self._vec is None:  # an empty index has no vocabulary yet
            return AnswerIndex.build(changed)
        import scipy.sparse as sp

        alive = self._alive.copy()
        for e in changed:
            i = self._pos.get(e.id)
            if i is not None:
                alive[i] = False
        fresh = [e for e in changed if e.status == ACTIVE and clean_text(e.question) and e.answer.strip()]
        entries, matrix, dates = self.entries, self._m, self._dates
        if fresh:
            cols = self._vec.transform([e.question for e in fresh]).T.tocsr()
            matrix = sp.hstack([self._m, cols], format="csr")
            entries = [*self.entries, *fresh]
            dates = np.concatenate([self._dates, _dates_of(fresh)])
            alive = np.concatenate([alive, np.ones(len(fresh), dtype=bool)])
        out = AnswerIndex(entries, self._vec, matrix, dates)
        out._alive = alive
        # Edited entries appear more than once; the position map points at the live copy.
        pos: dict[str, int] = {}
        for i, e in enumerate(entries):
            if alive[i] or e.id not in pos:
                pos[e.id] = i
        out._pos = pos
        out.stale = self.stale + len(changed)
        return out

    def __len__(self) -> int:
        return int(self._alive.sum())

    def __contains__(self, entry_id: str) -> bool:
        i = self._pos.get(entry_id)
        return i is not None and bool(self._alive[i])

    def retire(self, entry_id: str) -> None:
        i = self._pos.get(entry_id)
        if i is not None:
            self._alive[i] = False
            self._cache = None

    def _factors(self, now: float, cfg: RetrievalConfig) -> tuple[np.ndarray, np.ndarray]:
        """Ages (days, NaN when undated) and age factors (0 for retired entries) of every entry.

        Cached per minute: ageing is measured in days, and recomputing 50,000 powers per query would cost
        as much as the search itself.
        """
        key = (int(now // 60), cfg.half_life_days, cfg.max_age_days)
        cache = self._cache
        if cache is not None and cache[0] == key:
            return cache[1], cache[2]
        ages = (now - self._dates) / DAY_S
        factors = np.ones(len(self.entries), dtype=np.float64)
        dated = ~np.isnan(ages)
        if cfg.half_life_days:
            factors[dated] = np.power(0.5, np.maximum(ages[dated], 0.0) / cfg.half_life_days)
        if cfg.max_age_days:
            factors[dated & (ages > cfg.max_age_days)] = 0.0
        factors[~self._alive] = 0.0
        self._cache = (key, ages, factors)
        return ages, factors

    def search(self, text: str, *, cfg: RetrievalConfig, now: float | None = None, k: int = 3,
               exclude: Iterable[str] = ()) -> list[Match]:
        """Top ``k`` entries by score (similarity × age factor), best first; entries scoring 0 left out.

        Entries with the same answer text are shown once (a department's standard reply repeats).
        ``exclude`` leaves entries out (evaluation: a question must not find its own entry).
        """
        if not self.entries or self._vec is None:
            return []
        query = clean_text(text)[:MAX_QUERY_CHARS]
        if not query:
            return []
        q = self._vec.transform([query])
        if q.nnz == 0:
            return []
        sims = np.asarray((q @ self._m).todense()).ravel()
        now = time.time() if now is None else now
        ages, factors = self._factors(now, cfg)
        scores = sims * factors
        for entry_id in exclude:
            i = self._pos.get(entry_id)
            if i is not None:
                scores[i] = 0.0
        want = min(len(scores), max(k * 4, k + 8))  # extra room for answers that repeat
        cand = np.argpartition(-scores, want - 1)[:want] if want < len(scores) else np.arange(len(scores))
        cand = cand[np.argsort(-scores[cand], kind="stable")]
        out: list[Match] = []
        seen: set[str] = set()
        for i in cand:
            if scores[i] <= 0.0 or len(out) >= k:
                break
            entry = self.entries[i]
            key = clean_text(entry.answer)
            if key in seen:
                continue
            seen.add(key)
            age = None if np.isnan(ages[i]) else float(ages[i])
            out.append(Match(entry=entry, similarity=float(min(1.0, sims[i])), age_days=age,
                             age_factor=float(factors[i]), score=float(min(1.0, scores[i]))))
        return out


def decide(matches: Sequence[Match], cfg: RetrievalConfig) -> Decision:
    """Apply the thresholds: staff see what clears ``suggest_threshold``; a citizen only gets ``threshold``."""
    shown = [m for m in matches if m.score >= cfg.suggest_threshold][: cfg.suggestions]
    best = shown[0] if shown and shown[0].score >= cfg.threshold else None
    return Decision(suggestions=shown, answer=best)
