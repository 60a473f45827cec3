"""Duplicate scoring: is a new complaint the same concrete problem as an open case?

Pure computation, no I/O at import. A complaint becomes a ``Fingerprint`` (cleaned text, IDF-weighted
character bigrams of its headline and of the whole text, place cores); two fingerprints get a probability
of being the same problem from a small logistic model over five features:

- ``cos``:  IDF-weighted cosine of the bigram vectors of the whole texts (reworded repeats stay close);
- ``cont``: IDF-weighted containment of the bigram sets, so a short follow-up inside a long letter counts;
- ``head``: cosine of the headlines (the title, or the first clause of a spoken/typed complaint);
- ``place``: a place core of one text occurs in the other (same 小区/路/公司);
- ``title``: how much of each headline the other text repeats (IDF-weighted, the smaller of the two). A
  reworded repeat still names its object and problem in its title; a related letter's title names another
  estate, county or problem ("环评" vs "私改电线") even when most of the body is the same template.

Anonymisation runs (``****``, ``0000``, ``XX``) and the anonymised admin names of open data (``A市``) are
removed before anything is counted: they make unrelated letters look alike. The same caller adds a fixed
logit; coordinates far apart subtract one. ``other_place`` (both name places, none shared) is reported
but not weighted: with suffix-based place cores it did not improve the cross-validated F1.
The weights were fitted on the labelled dev pairs (``hotline nlp fit-dedup``; README: Duplicates, where the
repeated 5-fold cross-validation estimate is reported).
"""

from __future__ import annotations

import math
import operator
import re
import unicodedata
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from hotline.nlp.places import distance_m, place_cores, shared_places

# Logistic model over FEATURES; fitted on dedup_pairs_dev.jsonl by ``hotline nlp fit-dedup``.
FEATURES = ("cos", "cont", "head", "place", "title")
WEIGHTS = {"cos": 2.63, "cont": 2.03, "head": 1.37, "place": 0.92, "title": 2.16}
BIAS = -3.45
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
    text = unicodedata.normalize("NFKC", text or "")[: MAX_CHARS * 2]
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
    """

    def __init__(self, n_docs: int, df: dict[str, int], rare_df: int = 3) -> None:
        self.n = max(1, n_docs)
        self.df = df
        self.max = math.log((self.n + 1) / (rare_df + 1))
        self._cache: dict[str, float] = {}

    def __call__(self, gram: str) -> float:
        w = self._cache.get(gram)
        if w is None:
            d = self.df.get(gram)
            w = self.max if d is None else max(0.0, math.log((self.n + 1) / (d + 1)))
            if len(self._cache) < 200_000:
                self._cache[gram] = w
        return w

    @classmethod
    def load(cls, path: Path) -> Idf:
        """Table format: first line ``#docs<TAB>N``, then ``bigram<TAB>df`` lines."""
        df: dict[str, int] = {}
        n = 1
        with path.open(encoding="utf-8") as fh:
            for line in fh:
                gram, _, count = line.rstrip("\n").partition("\t")
                if gram == "#docs":
                    n = int(count)
                elif gram and count.isdigit():
                    df[gram] = int(count)
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
        with path.open("w", encoding="utf-8") as fh:
            fh.write(f"#docs\t{n_docs}\n")
            for gram, count in sorted(df.items(), key=lambda kv: (-kv[1], kv[0])):
                fh.write(f"{gram}\t{count}\n")


@dataclass
class Fingerprint:
    text: str  # cleaned whole text (headline included)
    headline: str  # cleaned headline
    head: Counter[str]
    body: Counter[str]
    head_norm: float
    body_norm: float
    body_mass: float  # sum of IDF weights of the distinct bigrams, for containment
    places: list[str] = field(default_factory=list)
    head_mass: float = 0.0  # the same for the headline's bigrams


def _norm(vec: Counter[str], idf: Idf) -> float:
    return math.sqrt(sum((v * idf(g)) ** 2 for g, v in vec.items()))


def fingerprint(headline: str, body: str, idf: Idf, address: str = "") -> Fingerprint:
    """``body`` is the whole text; the headline is counted in it unless it is already part of it."""
    whole = body if headline and body.startswith(headline) else f"{headline} {body}"
    if address:
        whole = f"{whole} {address}"
    return from_cleaned(clean_text(whole), clean_text(headline), place_cores(f"{headline} {whole[:400]}"), idf)


def from_cleaned(text: str, headline: str, places: list[str], idf: Idf,
                 norms: tuple[float, float, float] | None = None) -> Fingerprint:
    """Rebuild a fingerprint from what the candidate index keeps (cleaned text, headline, places, norms)."""
    head = bigrams(headline)
    vec = bigrams(text)
    if norms is None:
        norms = (_norm(head, idf), _norm(vec, idf), sum(idf(g) for g in vec))
    return Fingerprint(text=text, headline=headline, head=head, body=vec, head_norm=norms[0],
                       body_norm=norms[1], body_mass=norms[2], places=list(places),
                       head_mass=sum(idf(g) for g in head))


def rare_keys(fp: Fingerprint, idf: Idf, k: int) -> list[str]:
    """The k most distinctive bigrams: what a reworded repeat still shares (names, places, objects)."""
    ranked = sorted(fp.body, key=lambda g: (-idf(g), g))
    return ranked[:k]


# Pairs are scored for every candidate of every new complaint: the loops run over the bigrams two texts
# share (a set intersection in C), not over all bigrams of either text.

def _cos(a: Counter[str], na: float, b: Counter[str], nb: float, idf: Idf) -> float:
    if not na or not nb:
        return 0.0
    return sum(a[g] * b[g] * idf(g) ** 2 for g in a.keys() & b.keys()) / (na * nb)


def _share(grams: Counter[str], mass: float, other: Counter[str], idf: Idf) -> float:
    """IDF-weighted share of ``grams`` (whose weights sum to ``mass``) that also occur in ``other``."""
    return sum(idf(g) for g in grams.keys() & other.keys()) / mass if mass else 0.0


def features(a: Fingerprint, b: Fingerprint, idf: Idf) -> dict[str, float]:
    common = a.body.keys() & b.body.keys()
    shared = cos = 0.0
    for g in common:
        w = idf(g)
        shared += w
        cos += a.body[g] * b.body[g] * w * w
    mass = min(a.body_mass, b.body_mass)
    places = shared_places(a.places, a.text, b.places, b.text)
    return {
        "cos": cos / (a.body_norm * b.body_norm) if a.body_norm and b.body_norm else 0.0,
        "cont": shared / mass if mass else 0.0,
        "head": _cos(a.head, a.head_norm, b.head, b.head_norm, idf),
        "place": 1.0 if places else 0.0,
        "title": min(_share(a.head, a.head_mass, b.body, idf), _share(b.head, b.head_mass, a.body, idf)),
        "other_place": 1.0 if (a.places and b.places and not places) else 0.0,
    }


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


def pair_score(a: Fingerprint, b: Fingerprint, idf: Idf, *, same_caller: bool = False,
               distance: float | None = None) -> PairScore:
    f = features(a, b, idf)
    logit = BIAS + sum(WEIGHTS[k] * f[k] for k in WEIGHTS)
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
