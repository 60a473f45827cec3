"""Duplicate scoring: is a new complaint the same concrete problem as an open case?

Pure computation, no I/O at import. A complaint becomes a ``Fingerprint`` (cleaned text, IDF-weighted
character bigrams of its headline and of the whole text, place cores); two fingerprints get a probability
of being the same problem from a small logistic model over six features:

- ``cos``:  IDF-weighted cosine of the bigram vectors of the whole texts (reworded repeats stay close);
- ``cont``: IDF-weighted containment of the bigram sets, so a short follow-up inside a long letter counts;
- ``head``: cosine of the headlines (the title, or the first clause of a spoken/typed complaint);
- ``place``: a place core of one text occurs in the other (same 小区/路/公司);
- ``title``: how much of each headline the other text repeats (IDF-weighted, the smaller of the two). A
  reworded repeat still names its object and problem in its title; a related letter's title names another
  estate, county or problem ("环评" vs "私改电线") even when most of the body is the same template.
- ``age``: how far beyond two weeks the two reports lie (log-days). Repeats mostly come within days of
  each other; a related letter (another estate, another problem at the same place) mostly weeks or
  months apart. Its weight is fitted after the others, so closer reports score as if it did not exist.

Anonymisation runs (``****``, ``0000``, ``XX``) and the anonymised admin names of open data (``A市``) are
removed before anything is counted: they make unrelated letters look alike. The same caller adds a fixed
logit; coordinates far apart subtract one. ``other_place`` (both name places, none shared) is reported
but not weighted: with suffix-based place cores it did not improve the cross-validated F1.
The weights were fitted on the labelled pairs (``hotline nlp fit-dedup``; README: Duplicates, where the
repeated 5-fold cross-validation estimate is reported).

A new complaint is scored against all its candidates at once (``pair_scores``): bigrams are integer codes,
the candidates' texts are one array, and each feature is a weighted count over the bigrams the query
holds (numpy), so a candidate costs no Python loop over its text.
"""

from __future__ import annotations

import math
import operator
import re
from collections import Counter
from collections.abc import Collection, Iterable
from dataclasses import dataclass, field
from itertools import pairwise
from pathlib import Path

import numpy as np

from hotline.nlp.places import distance_m, place_cores, shared_places
from hotline.nlp.tables import write_table
from hotline.nlp.text import nfkc

# Logistic model over FEATURES; fitted on the labelled pairs (dedup_pairs_dev.jsonl and data/dedup_pairs_extra.jsonl)
# by ``hotline nlp fit-dedup``.
FEATURES = ("cos", "cont", "head", "place", "title", "age")
WEIGHTS = {"cos": 2.91, "cont": 2.33, "head": 0.85, "place": 1.20, "title": 2.98, "age": -0.33}
BIAS = -3.75
# Reports closer in time than this are not told apart by their gap; beyond it each log-day lowers the score.
AGE_FREE_DAYS = 14.0
DAY_S = 86400.0
# Same caller (sender or phone) and a clearly different place, as logits.
SAME_CALLER_LOGIT = 1.5
OTHER_PLACE_LOGIT = -1.5
# Coordinates closer than this are one place, farther than FAR_M are different places.
NEAR_M = 300.0
FAR_M = 2000.0
# Only this much of a text is fingerprinted: repeats agree early, and scoring stays fast on long letters.
MAX_CHARS = 600
HEADLINE_CHARS = 60

_MASK = re.compile(r"[*＊]{2,}|0{4,}|[xX×]{2,}|某某|XX")
_ADMIN = re.compile(r"[A-Z]\d{0,2}(?=[市区县镇])")
_KEEP = re.compile(r"[\u4e00-\u9fffa-z0-9]+")
_CLAUSE_END = re.compile(r"[。！？!?\n；;]")


def clean_text(text: str) -> str:
    """Lower-case runs of CJK letters and digits separated by single spaces; masks and punctuation gone."""
    text = nfkc(text or "")[: MAX_CHARS * 2]
    text = _MASK.sub(" ", text)
    text = _ADMIN.sub("", text)
    return " ".join(_KEEP.findall(text.lower()))[:MAX_CHARS]


def bigrams(cleaned: str) -> Counter[str]:
    """Character bigrams within runs (a space separates runs and never enters a bigram)."""
    out = Counter(map(operator.add, cleaned, cleaned[1:]))
    if " " in cleaned:
        for gram in [g for g in out if " " in g]:
            del out[gram]
    return out


def split_headline(text: str) -> tuple[str, str]:
    """A live complaint has no title: its first clause plays that part."""
    text = (text or "").strip()
    m = _CLAUSE_END.search(text)
    end = m.start() if m else len(text)
    end = min(end, HEADLINE_CHARS)
    return text[:end], text


class Idf:
    """Inverse document frequencies of character bigrams, from a table of common bigrams.

    A bigram missing from the table is rare (a name, a place): it gets the weight of ``rare_df``.
    Besides the per-bigram lookup, the table is kept as sorted bigram codes (see ``gram_codes``) so a
    whole text's weights are one vectorised lookup.
    """

    def __init__(self, n_docs: int, df: dict[str, int], rare_df: int = 3) -> None:
        self.n = max(1, n_docs)
        self.df = df
        self.max = math.log((self.n + 1) / (rare_df + 1))
        table = sorted((code_of(g), max(0.0, math.log((self.n + 1) / (d + 1))))
                       for g, d in df.items() if len(g) == 2)
        self._codes = np.fromiter((c for c, _w in table), dtype=np.int64, count=len(table))
        self._weights = np.fromiter((w for _c, w in table), dtype=np.float64, count=len(table))

    def __call__(self, gram: str) -> float:
        d = self.df.get(gram)
        return self.max if d is None else max(0.0, math.log((self.n + 1) / (d + 1)))

    def weights(self, codes: np.ndarray) -> np.ndarray:
        """The weight of each bigram code in ``codes``."""
        if not self._codes.size or not codes.size:
            return np.full(codes.shape, self.max)
        pos = np.minimum(np.searchsorted(self._codes, codes), self._codes.size - 1)
        return np.where(self._codes[pos] == codes, self._weights[pos], self.max)

    @classmethod
    def load(cls, path: Path) -> Idf:
        """Table format: first line ``#docs<TAB>N``, then ``bigram<TAB>df`` lines, each ending in a newline.

        Strict: a table cut off by a full disk or hand-edited wrongly would otherwise give wrong weights in
        silence, so any malformed line raises ``IdfError`` naming it. Raises OSError when unreadable.
        """
        with path.open("rb") as fh:
            data = fh.read()
        try:
            text = data.decode("utf-8-sig")
        except UnicodeDecodeError as exc:
            line = data.count(b"\n", 0, exc.start) + 1
            raise IdfError(f"{path}:{line}: not UTF-8") from exc
        text = text.replace("\r\n", "\n")  # a checkout or an editor on Windows
        if not text:
            raise IdfError(f"{path}: empty (no #docs line)")
        if not text.endswith("\n"):
            raise IdfError(f"{path}:{text.count(chr(10)) + 1}: cut off (the last line has no line end)")
        lines = text[:-1].split("\n")
        head = _IDF_HEADER.fullmatch(lines[0])
        if head is None:
            raise IdfError(f"{path}:1: expected '#docs<TAB>N' with N ≥ 1, found {lines[0][:40]!r}")
        n = int(head.group(1))
        df: dict[str, int] = {}
        for number, line in enumerate(lines[1:], 2):
            row = _IDF_ROW.fullmatch(line)
            if row is None:
                raise IdfError(f"{path}:{number}: expected 'bigram<TAB>count', found {line[:40]!r}")
            gram, count = row.group(1), int(row.group(2))
            if not 1 <= count <= n:
                raise IdfError(f"{path}:{number}: count {count} outside 1..{n} (the #docs line)")
            if gram in df:
                raise IdfError(f"{path}:{number}: bigram {gram!r} listed twice")
            df[gram] = count
        return cls(n, df)

    @classmethod
    def uniform(cls) -> Idf:
        return cls(1, {}, rare_df=0)

    @staticmethod
    def build(texts: Iterable[str], min_df: int = 10) -> tuple[int, dict[str, int]]:
        counts: Counter[str] = Counter()
        n = 0
        for text in texts:
            n += 1
            counts.update(set(bigrams(clean_text(text))))
        return n, {g: c for g, c in counts.items() if c >= min_df}

    @staticmethod
    def dump(path: Path, n_docs: int, df: dict[str, int]) -> None:
        """Write the table through a temporary file beside ``path``, renamed over it when complete: the
        matcher never reads a cut-off table, and a failed write leaves the previous one."""
        if n_docs < 1:
            raise ValueError("a table needs at least one letter")
        write_table(path, [f"#docs\t{n_docs}\n", *(f"{gram}\t{count}\n" for gram, count in
                                                 sorted(df.items(), key=lambda kv: (-kv[1], kv[0])))])


class IdfError(ValueError):
    """The bigram table is malformed; the message names the file and line."""


_IDF_HEADER = re.compile(r"#docs\t([1-9][0-9]*)")
_IDF_ROW = re.compile(r"([^\t\n]{2})\t([0-9]+)")


# A bigram as one integer: first code point << 21 | second (code points fit in 21 bits). Integer order is
# the order of the two-character strings, so sorting codes sorts bigrams.
_SHIFT = 21
_LOW = (1 << _SHIFT) - 1
_OWNER_SHIFT = 2 * _SHIFT
_SPACE = 32


def code_of(gram: str) -> int:
    return (ord(gram[0]) << _SHIFT) | ord(gram[1])


def gram_of(code: int) -> str:
    return chr(code >> _SHIFT) + chr(code & _LOW)


def _text_codes(texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """Bigram codes of cleaned texts, in text order, with the index of the text each came from.

    The texts are joined by a space, and a space never enters a bigram, so none spans two texts."""
    joined = " ".join(texts)
    chars = np.frombuffer(joined.encode("utf-32-le", "surrogatepass"), dtype=np.uint32).astype(np.int64)
    if chars.size < 2:
        return np.empty(0, np.int64), np.empty(0, np.int64)
    lengths = np.fromiter((len(t) + 1 for t in texts), dtype=np.int64, count=len(texts))
    owner = np.repeat(np.arange(len(texts), dtype=np.int64), lengths)[: chars.size - 1]
    first, second = chars[:-1], chars[1:]
    keep = (first != _SPACE) & (second != _SPACE)
    return ((first << _SHIFT) | second)[keep], owner[keep]


@dataclass
class Grams:
    """The distinct bigrams of one text (sorted codes), how often each occurs, and their IDF weights."""

    codes: np.ndarray
    counts: np.ndarray
    weights: np.ndarray

    @classmethod
    def of(cls, cleaned: str, idf: Idf) -> Grams:
        codes, _owner = _text_codes([cleaned])
        codes, counts = np.unique(codes, return_counts=True)
        return cls(codes, counts.astype(np.float64), idf.weights(codes))

    @property
    def norm(self) -> float:
        cw = self.counts * self.weights
        return math.sqrt(float(np.dot(cw, cw)))

    @property
    def mass(self) -> float:
        return float(self.weights.sum())


@dataclass
class Fingerprint:
    text: str  # cleaned whole text (headline included)
    headline: str  # cleaned headline
    head: Grams
    body: Grams
    head_norm: float
    body_norm: float
    body_mass: float  # sum of IDF weights of the distinct bigrams, for containment
    places: list[str] = field(default_factory=list)
    head_mass: float = 0.0  # the same for the headline's bigrams
    _table: _QueryTable | None = field(default=None, repr=False, compare=False)

    def table(self) -> _QueryTable:
        if self._table is None:
            self._table = _QueryTable.of(self)
        return self._table


def _whole(headline: str, body: str, address: str) -> str:
    whole = body if headline and body.startswith(headline) else f"{headline} {body}"
    return f"{whole} {address}" if address else whole


def place_text(headline: str, body: str, address: str = "") -> str:
    """The part of a report its place cores are read from: places come early, and a long letter's later
    pages cite laws and other estates."""
    return f"{headline} {_whole(headline, body, address)[:400]}"


def fingerprint(headline: str, body: str, idf: Idf, address: str = "",
                plain: Collection[str] = frozenset()) -> Fingerprint:
    """``body`` is the whole text; the headline is counted in it unless it is already part of it.
    ``plain``: words the city's letters use as ordinary words, never a place core (``plain_words``)."""
    places = place_cores(place_text(headline, body, address), plain=plain)
    return from_cleaned(clean_text(_whole(headline, body, address)), clean_text(headline), places, idf)


def from_cleaned(text: str, headline: str, places: list[str], idf: Idf,
                 norms: tuple[float, float, float] | None = None) -> Fingerprint:
    """Rebuild a fingerprint from what the candidate index keeps (cleaned text, headline, places, norms)."""
    head = Grams.of(headline, idf)
    body = Grams.of(text, idf)
    if norms is None:
        norms = (head.norm, body.norm, body.mass)
    return Fingerprint(text=text, headline=headline, head=head, body=body, head_norm=norms[0],
                       body_norm=norms[1], body_mass=norms[2], places=list(places), head_mass=head.mass)


def rare_keys(fp: Fingerprint, idf: Idf, k: int) -> list[str]:
    """The k most distinctive bigrams: what a reworded repeat still shares (names, places, objects).
    Highest weight first, ties in bigram order."""
    order = np.lexsort((fp.body.codes, -fp.body.weights))[:k]
    return [gram_of(int(c)) for c in fp.body.codes[order]]


@dataclass(frozen=True)
class Candidate:
    """What scoring needs of the other side of a pair; the candidate index keeps exactly this."""

    text: str
    headline: str
    places: list[str]
    head_norm: float
    body_norm: float
    body_mass: float
    # The bigram counts when already known: a case is the candidate of many lookups, and counting its
    # text was a third of scoring it.
    counted: Counted | None = field(default=None, compare=False, repr=False)

    @classmethod
    def of(cls, fp: Fingerprint) -> Candidate:
        return cls(fp.text, fp.headline, fp.places, fp.head_norm, fp.body_norm, fp.body_mass, Counted.of(fp))


@dataclass(frozen=True)
class Counted:
    """What scoring needs of a candidate's bigrams: its headline's ``Grams`` and its text's distinct codes
    with their counts (the text's weights only ever come from the query's side)."""

    head: Grams
    codes: np.ndarray
    counts: np.ndarray

    @classmethod
    def of(cls, fp: Fingerprint) -> Counted:
        return cls(fp.head, fp.body.codes, fp.body.counts)


def _distinct_many(texts: list[str]) -> list[tuple[np.ndarray, np.ndarray]]:
    """Each cleaned text's distinct bigram codes (sorted) and counts, as ``Grams.of`` counts them."""
    codes, owner = _text_codes(texts)
    # Keys ordered by text, then code. The codes of one text arrive text by text, so a stable sort (a
    # merge of runs) is about twice as fast as the default one.
    key = np.sort((owner << _OWNER_SHIFT) | codes, kind="stable")
    starts = np.flatnonzero(np.concatenate(([True], key[1:] != key[:-1]))) if key.size else key
    counts = np.diff(np.append(starts, key.size)).astype(np.float64)
    key = key[starts]
    bounds = np.searchsorted(key >> _OWNER_SHIFT, np.arange(len(texts) + 1)).tolist()
    key &= (1 << _OWNER_SHIFT) - 1
    return [(key[a:b], counts[a:b]) for a, b in pairwise(bounds)]


def with_counts(others: list[Candidate], idf: Idf) -> list[Candidate]:
    """``others`` with their bigram counts, counting only those not known yet (all at once)."""
    missing = [o for o in others if o.counted is None]
    if not missing:
        return others
    n = len(missing)
    found = _distinct_many([o.headline for o in missing] + [o.text for o in missing])
    head_weights = idf.weights(np.concatenate([c for c, _n in found[:n]]))
    at = 0
    done: dict[int, Candidate] = {}
    for j, o in enumerate(missing):
        (hc, hn), (bc, bn) = found[j], found[n + j]
        head = Grams(hc, hn, head_weights[at : at + hc.size])
        at += hc.size
        done[id(o)] = Candidate(o.text, o.headline, o.places, o.head_norm, o.body_norm, o.body_mass,
                                Counted(head, bc, bn))
    return [done.get(id(o), o) for o in others]


@dataclass
class _QueryTable:
    """The query side of a batch, over the union of its text's and headline's bigrams (sorted codes):
    per code its weight, and what each feature adds when another text holds that bigram."""

    codes: np.ndarray
    body_w: np.ndarray  # weight if in the query's text, else 0          (containment)
    body_cw2: np.ndarray  # count in the query's text × weight²           (cosine of the texts)
    head_w: np.ndarray  # weight if in the query's headline, else 0       (title share)
    head_cw2: np.ndarray  # count in the query's headline × weight²       (cosine of the headlines)

    @classmethod
    def of(cls, fp: Fingerprint) -> _QueryTable:
        codes = np.union1d(fp.body.codes, fp.head.codes)
        in_body = np.searchsorted(codes, fp.body.codes)
        in_head = np.searchsorted(codes, fp.head.codes)
        body_w, body_cw2, head_w, head_cw2 = (np.zeros(codes.size) for _ in range(4))
        body_w[in_body] = fp.body.weights
        body_cw2[in_body] = fp.body.counts * fp.body.weights ** 2
        head_w[in_head] = fp.head.weights
        head_cw2[in_head] = fp.head.counts * fp.head.weights ** 2
        return cls(codes, body_w, body_cw2, head_w, head_cw2)

    def lookup(self, codes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Positions in the table of the codes the query holds, and which of ``codes`` those are."""
        if not self.codes.size or not codes.size:
            return np.empty(0, np.int64), np.zeros(codes.shape, dtype=bool)
        pos = np.minimum(np.searchsorted(self.codes, codes), self.codes.size - 1)
        hit = self.codes[pos] == codes
        return pos[hit], hit


def _concat(parts: list[tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Several texts' distinct codes and counts end to end, with the index of the text of each."""
    owner = np.repeat(np.arange(len(parts), dtype=np.int64), [c.size for c, _n in parts])
    return np.concatenate([c for c, _n in parts]), np.concatenate([n for _c, n in parts]), owner


def features_many(a: Fingerprint, others: list[Candidate], idf: Idf) -> list[dict[str, float]]:
    """The pair features of ``a`` against each of ``others``, computed for all of them at once.

    Every sum runs over the distinct bigrams two texts share: each adds the product of its counts in the
    two texts × weight² to the cosine, and its weight to the containment and title shares."""
    n = len(others)
    if not n:
        return []
    q = a.table()
    counted = [o.counted for o in with_counts(others, idf) if o.counted is not None]
    heads = [c.head for c in counted]
    # The other texts' distinct bigrams: cosine and containment against the query's text, and the
    # query's title inside them.
    codes, counts, owner = _concat([(c.codes, c.counts) for c in counted])
    pos, hit = q.lookup(codes)
    own = owner[hit]
    cos_num = np.bincount(own, weights=counts[hit] * q.body_cw2[pos], minlength=n)
    shared = np.bincount(own, weights=q.body_w[pos], minlength=n)
    a_title = np.bincount(own, weights=q.head_w[pos], minlength=n)
    # Their headlines: cosine with the query's headline, and how much of each the query's text repeats.
    hcodes, hcounts, howner = _concat([(h.codes, h.counts) for h in heads])
    h_w = np.concatenate([h.weights for h in heads])
    hpos, hhit = q.lookup(hcodes)
    head_num = np.bincount(howner[hhit], weights=hcounts[hhit] * q.head_cw2[hpos], minlength=n)
    b_head_mass = np.bincount(howner, weights=h_w, minlength=n)
    in_a_body = np.zeros(hcodes.size)
    in_a_body[np.flatnonzero(hhit)] = q.body_w[hpos] > 0
    b_title = np.bincount(howner, weights=h_w * in_a_body, minlength=n)

    out = []
    for i, b in enumerate(others):
        places = shared_places(a.places, a.text, b.places, b.text)
        mass = min(a.body_mass, b.body_mass)
        head_norms = a.head_norm * b.head_norm
        share_a = float(a_title[i]) / a.head_mass if a.head_mass else 0.0
        share_b = float(b_title[i]) / float(b_head_mass[i]) if b_head_mass[i] else 0.0
        out.append({
            "cos": float(cos_num[i]) / (a.body_norm * b.body_norm) if a.body_norm and b.body_norm else 0.0,
            "cont": float(shared[i]) / mass if mass else 0.0,
            "head": float(head_num[i]) / head_norms if head_norms else 0.0,
            "place": 1.0 if places else 0.0,
            "title": min(share_a, share_b),
            "other_place": 1.0 if (a.places and b.places and not places) else 0.0,
        })
    return out


def features(a: Fingerprint, b: Fingerprint, idf: Idf) -> dict[str, float]:
    return features_many(a, [Candidate.of(b)], idf)[0]


@dataclass
class PairScore:
    score: float  # probability-like, 0..1
    features: dict[str, float]
    reasons: list[str]

    @property
    def anchored(self) -> bool:
        """Evidence beyond wording that both reports are about one spot: a shared place, nearby
        coordinates or the same caller. Two anonymous "垃圾清运不及时" may be two streets apart."""
        return any(r in ANCHOR_REASONS for r in self.reasons)


ANCHOR_REASONS = frozenset({"same_place", "near", "same_caller"})


def age(days: float | None) -> float:
    """How far beyond ``AGE_FREE_DAYS`` two reports lie, as log(1 + days) above log(1 + AGE_FREE_DAYS);
    0 when closer or unknown. A repeat mostly follows within days; a related letter (another estate,
    another problem at the same place) mostly weeks or months later. Closer reports get no bonus:
    two different problems at one estate on the same day must not look alike for it."""
    if days is None or not math.isfinite(days):
        return 0.0
    return max(0.0, math.log1p(abs(days)) - math.log1p(AGE_FREE_DAYS))


def _pair(f: dict[str, float], same_caller: bool, distance: float | None, days: float | None) -> PairScore:
    f["age"] = age(days)
    logit = BIAS + sum(WEIGHTS[k] * f[k] for k in FEATURES)
    reasons = [f"text {f['cos']:.2f}"]
    if f["place"]:
        reasons.append("same_place")
    if same_caller:
        logit += SAME_CALLER_LOGIT
        reasons.append("same_caller")
    if distance is not None:
        if distance <= NEAR_M and not f["place"]:
            logit += WEIGHTS["place"]
            reasons.append("near")
        elif distance >= FAR_M:
            logit += OTHER_PLACE_LOGIT
            reasons.append("far")
    score = 1.0 / (1.0 + math.exp(-logit))
    return PairScore(score=score, features=f, reasons=reasons)


def pair_scores(a: Fingerprint, others: list[Candidate], idf: Idf, *, same_caller: list[bool] | None = None,
                distances: list[float | None] | None = None, days: list[float | None] | None = None,
                ) -> list[PairScore]:
    """``pair_score`` of ``a`` against every one of ``others`` in one vectorised pass."""
    feats = features_many(a, others, idf)
    return [_pair(f, bool(same_caller and same_caller[i]), distances[i] if distances else None,
                  days[i] if days else None)
            for i, f in enumerate(feats)]


def pair_score(a: Fingerprint, b: Fingerprint, idf: Idf, *, same_caller: bool = False,
               distance: float | None = None, days: float | None = None) -> PairScore:
    """``days``: time between the two reports (None: unknown, no age penalty)."""
    return _pair(features(a, b, idf), same_caller, distance, days)


@dataclass(frozen=True)
class Thresholds:
    auto_merge: float
    suggest: float

    def __post_init__(self) -> None:
        if not 0.0 < self.suggest <= self.auto_merge <= 1.0:
            raise ValueError("dedup thresholds need 0 < suggest <= auto_merge <= 1")


def decide(score: float, thresholds: Thresholds, *, anchored: bool = True) -> str:
    """merge | suggest | new. An unanchored pair is at most suggested: merging it would put one
    street's problem into another street's case without anyone looking."""
    if score >= thresholds.auto_merge:
        return "merge" if anchored else "suggest"
    if score >= thresholds.suggest:
        return "suggest"
    return "new"


def location_distance(a: tuple[float, float] | None, b: tuple[float, float] | None) -> float | None:
    if a is None or b is None:
        return None
    return distance_m(a[0], a[1], b[0], b[1])
