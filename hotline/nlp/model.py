"""One classification head: sparse TF-IDF features → linear model → temperature-scaled softmax.

Training uses scikit-learn (``TfidfVectorizer`` over pre-computed feature strings, ``LinearSVC``); the
saved head is only the vocabulary, the IDF vector and the weight matrix, and prediction is a few numpy
gathers over the features present in one message. That keeps a message under a millisecond (no
scikit-learn pipeline at predict time) and the files small (vocabulary pruned by ``min_df`` and
``max_features``, near-zero weights dropped, float32 stored sparse).

Probabilities: the decision scores of the linear model, divided by a temperature fitted on
cross-validated (out-of-fold) scores to minimise log-loss, then softmax. So the top-3 probabilities are
calibrated in the sense that matters for the confidence policy: a 0.8 is right about 80 % of the time.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import hashlib
import io
import json
import math
import os
import re
import secrets
import shutil
import stat
import zipfile
import zlib
from array import array
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from itertools import pairwise, repeat
from pathlib import Path
from typing import Any

import numpy as np

FORMAT = "hotline-linear-head/1"
_RUN = re.compile(r"[\u4e00-\u9fffa-z0-9]+")


@dataclass
class FeatureConfig:
    """Which feature strings a document yields; stored with the head so prediction matches training."""

    char_min: int = 1
    char_max: int = 3
    # jieba words (and their bigrams): off where cross-validation shows no gain, saving the segmentation.
    words: bool = True
    word_bigrams: bool = True
    # 1 + log(tf) instead of raw counts.
    sublinear: bool = True
    title_words: bool = False


@dataclass
class Doc:
    """A message as the features see it: cleaned headline and body and their words."""

    title: str
    body: str
    words: list[str]
    title_words: list[str] = field(default_factory=list)


def char_ngrams(text: str, lo: int, hi: int) -> list[str]:
    """Character n-grams inside runs of CJK letters and digits (never across punctuation or spaces)."""
    out: list[str] = []
    for run in _RUN.findall(text):
        n = len(run)
        for k in range(lo, hi + 1):
            out.extend(run[i : i + k] for i in range(n - k + 1))
    return out


def features(doc: Doc, cfg: FeatureConfig) -> list[str]:
    # Prefixes keep a word apart from the same string as a character n-gram.
    out = char_ngrams(doc_text(doc), cfg.char_min, cfg.char_max)
    if not cfg.words:
        return out
    words = doc.title_words + doc.words
    out.extend("w:" + w for w in words)
    if cfg.word_bigrams:
        out.extend(f"b:{a}_{b}" for a, b in pairwise(words))
    if cfg.title_words:
        out.extend("t:" + w for w in doc.title_words)
    return out


# fast feature path ------------------------------------------------------------
# Character n-grams as integers instead of strings: a code point fits in 21 bits, so an n-gram of up to
# three code points packs into one uint64 (c1<<42 | c2<<21 | c3). Every character of a run is ≥ "0"
# (0x30), so a longer n-gram always packs to a larger number than any shorter one: keys are unique across
# lengths, and one sorted key array holds the char n-grams of a vocabulary.
_BITS = 21
FAST_CHAR_MAX = 3
# Which BMP code points belong to a run (the _RUN class). Code points above U+FFFF never do: they are
# looked up as U+FFFF, which is not in the class.
_IN_RUN = np.zeros(0x10000, dtype=bool)
_IN_RUN[0x4E00:0xA000] = True
_IN_RUN[ord("a") : ord("z") + 1] = True
_IN_RUN[ord("0") : ord("9") + 1] = True
_EMPTY_U64 = np.zeros(0, dtype=np.uint64)
_EMPTY_I64 = np.zeros(0, dtype=np.int64)


def fast_supported(cfg: FeatureConfig) -> bool:
    return 1 <= cfg.char_min <= cfg.char_max <= FAST_CHAR_MAX


def _codes(text: str) -> np.ndarray:
    return np.frombuffer(text.encode("utf-32-le", "surrogatepass"), dtype=np.uint32)


def char_term_keys(terms: Sequence[str], lo: int, hi: int) -> tuple[np.ndarray, np.ndarray]:
    """(positions in ``terms`` of the char n-gram terms, their uint64 keys); other terms are word features.

    A term is a char n-gram when ``char_ngrams`` could have produced it: lo..hi characters, all of a run.
    Vectorised because a vocabulary holds hundreds of thousands of terms and this runs at start-up.
    """
    if not terms:
        return _EMPTY_I64, _EMPTY_U64
    lengths = np.fromiter(map(len, terms), dtype=np.int64, count=len(terms))
    codes = _codes("".join(terms))
    inrun = _IN_RUN[np.minimum(codes, 0xFFFF)]  # above the BMP: clipped to U+FFFF, not in a run
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    # Characters outside a run per term: a term is a char n-gram when it has none (and a fitting length).
    outside = np.concatenate([[0], np.cumsum(~inrun, dtype=np.int64)])
    bad = outside[starts + lengths] - outside[starts]
    pick = np.flatnonzero((bad == 0) & (lengths >= lo) & (lengths <= hi))
    u = codes.astype(np.uint64)
    keys = np.zeros(len(pick), dtype=np.uint64)
    first = starts[pick]
    for k in range(hi):
        has = lengths[pick] > k
        keys[has] = (keys[has] << np.uint64(_BITS)) | u[first[has] + k]
    return pick, keys


def _unique(keys: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``np.unique(keys, return_index=True, return_counts=True)`` of a non-empty array, without the
    generality (a quarter of its time on a message's few thousand keys)."""
    perm = np.argsort(keys, kind="stable")  # stable: ``perm[start]`` is a key's first occurrence
    ordered = keys[perm]
    flag = np.empty(len(ordered), dtype=bool)
    flag[0] = True
    np.not_equal(ordered[1:], ordered[:-1], out=flag[1:])
    starts = np.flatnonzero(flag)
    counts = np.empty_like(starts)
    counts[:-1] = starts[1:] - starts[:-1]
    counts[-1] = len(ordered) - starts[-1]
    return ordered[starts], perm[starts], counts


def _char_ngrams_sorted(text: str, lo: int, hi: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(distinct keys sorted, their counts, the permutation putting them in first-occurrence order)."""
    codes = _codes(text)
    n = len(codes)
    if n == 0:
        return _EMPTY_U64, _EMPTY_I64, _EMPTY_I64
    inrun = _IN_RUN[np.minimum(codes, 0xFFFF)]  # above the BMP: clipped to U+FFFF, not in a run
    u = codes.astype(np.uint64)
    keys_k: list[np.ndarray] = []
    pos_k: list[np.ndarray] = []
    ok = inrun
    key = u
    for k in range(1, hi + 1):
        if k > 1:
            # An n-gram starting at i lies inside one run when its first n−1 and its last character do.
            ok = ok[:-1] & inrun[k - 1 :]
            key = (key[:-1] << np.uint64(_BITS)) | u[k - 1 :]
        if k >= lo:
            p = np.flatnonzero(ok)
            pos_k.append(p)
            keys_k.append(key[p])
        if not len(ok):
            break
    keys = np.concatenate(keys_k) if keys_k else _EMPTY_U64  # none: the text is shorter than ``lo``
    if not len(keys):
        return _EMPTY_U64, _EMPTY_I64, _EMPTY_I64
    uniq, first, counts = _unique(keys)
    # Reference order of a distinct n-gram: its run, then its length, then its position. Within one
    # length the concatenation is in position order, so ``first`` is the earliest occurrence.
    pos = np.concatenate(pos_k)[first]
    run = np.cumsum(inrun & ~np.concatenate([[False], inrun[:-1]]))
    length = np.searchsorted(np.cumsum([len(p) for p in pos_k]), first, side="right")
    order = np.argsort((run[pos] * (hi + 1) + length) * n + pos)
    return uniq, counts, order


def char_ngram_counts(text: str, lo: int, hi: int) -> tuple[np.ndarray, np.ndarray]:
    """The distinct char n-grams of ``text`` as uint64 keys with their counts, in first-occurrence order.

    The integer twin of ``Counter(char_ngrams(text, lo, hi))``: the same n-grams, the same counts and the
    same order (run by run, within a run by length, then by position), without a string per n-gram.
    The order matters only to reproduce the reference scores bit for bit (float sums depend on order).
    """
    uniq, counts, order = _char_ngrams_sorted(text, lo, hi)
    return uniq[order], counts[order]


def pack_ngram(gram: str) -> int:
    """The key of one char n-gram (tests and debugging)."""
    key = 0
    for ch in gram:
        key = (key << _BITS) | ord(ch)
    return key


def word_features(doc: Doc, cfg: FeatureConfig) -> list[str]:
    """The non-character features of ``features`` (the same strings in the same order)."""
    if not cfg.words:
        return []
    words = doc.title_words + doc.words
    out = ["w:" + w for w in words]
    if cfg.word_bigrams:
        out.extend(f"b:{a}_{b}" for a, b in pairwise(words))
    if cfg.title_words:
        out.extend("t:" + w for w in doc.title_words)
    return out


class FeatureIndex:
    """Feature string → id for one or more vocabularies, with char n-grams looked up as integer keys.

    ``ids(doc)`` gives what ``Counter(features(doc, cfg))`` looked up in the vocabularies gives — ids of
    the known features in first-occurrence order and their counts — but the char n-grams (nine in ten of a
    message's features) never become Python strings: one ``np.unique`` counts them and one
    ``np.searchsorted`` in a sorted key array finds them. Each word is looked up once in a dictionary of
    words, and a word bigram ``b:a_b`` is the pair of word ids (a sorted integer key array again); only
    the rare bigram of a word holding "_" (whose string is ambiguous) is built as a string.

    The ids are of the merged vocabulary (a feature of any vocabulary); ``maps[v][id]`` is the id in
    vocabulary ``v`` or −1, so heads sharing features look a message up once.
    """

    def __init__(self, vocabs: Sequence[Sequence[str]], cfg: FeatureConfig) -> None:
        if not fast_supported(cfg):
            raise ValueError(f"char n-grams up to {FAST_CHAR_MAX} characters only (got {cfg.char_max})")
        self.cfg = cfg
        picks, keys = zip(*(char_term_keys(terms, cfg.char_min, cfg.char_max) for terms in vocabs), strict=True)
        self.keys, inverse = np.unique(np.concatenate(keys), return_inverse=True)
        inverse = inverse.reshape(-1)
        n_char = len(self.keys)
        merged: dict[str, int] = {}  # every other term → merged id
        word_terms: list[list[str]] = []
        for terms, pick in zip(vocabs, picks, strict=True):
            is_char = np.zeros(len(terms), dtype=bool)
            is_char[pick] = True
            wt = [terms[i] for i in np.flatnonzero(~is_char).tolist()]
            for t in wt:
                merged.setdefault(t, n_char + len(merged))
            word_terms.append(wt)
        self.size = n_char + len(merged)
        self.maps: list[np.ndarray] = []
        at = 0
        for terms, pick, wt in zip(vocabs, picks, word_terms, strict=True):
            m = np.full(self.size, -1, dtype=np.int32)
            m[inverse[at : at + len(pick)]] = pick
            at += len(pick)
            is_word = np.ones(len(terms), dtype=bool)
            is_word[pick] = False
            m[np.fromiter(map(merged.__getitem__, wt), dtype=np.int64, count=len(wt))] = np.flatnonzero(is_word)
            self.maps.append(m)
        self._index_words(merged)

    def _index_words(self, merged: dict[str, int]) -> None:
        self.word_ids: dict[str, int] = {}
        self.other: dict[str, int] = {}  # "t:" terms and bigrams whose split at "_" is ambiguous
        wid = self.word_ids.setdefault
        # Flat int arrays rather than lists of tuples: a hundred thousand short-lived objects would leave
        # the process's memory fragmented for good.
        uni, pairs = array("q"), array("q")
        for term, mid in merged.items():
            if term.startswith("w:"):
                uni.extend((wid(term[2:], len(self.word_ids)), mid))
            elif term.startswith("b:") and term.count("_") == 1:
                # Exactly one "_": the only split into two words without "_", the words of a message
                # bigram without "_" (a bigram with a "_" word has two or more and goes to ``other``).
                a, b = term[2:].split("_")
                pairs.extend((wid(a, len(self.word_ids)), wid(b, len(self.word_ids)), mid))
            else:
                self.other[term] = mid
        self.n_words = len(self.word_ids)
        self.unigram = np.full(self.n_words + 1, -1, dtype=np.int64)  # the last slot: unknown words (id −1)
        u = np.frombuffer(uni, dtype=np.int64).reshape(-1, 2)
        self.unigram[u[:, 0]] = u[:, 1]
        p = np.frombuffer(pairs, dtype=np.int64).reshape(-1, 3)
        keys = p[:, 0] * self.n_words + p[:, 1]
        order = np.argsort(keys)
        self.pair_keys = keys[order]
        self.pair_ids = p[order, 2]

    def nbytes(self) -> int:
        return sum(a.nbytes for a in (self.keys, self.unigram, self.pair_keys, self.pair_ids, *self.maps))

    def _word_feature_ids(self, doc: Doc) -> np.ndarray:
        """Merged id (−1: unknown) of each of ``word_features(doc, cfg)``, in that order."""
        cfg = self.cfg
        words = doc.title_words + doc.words
        n = len(words)
        if not cfg.words or not n:
            return _EMPTY_I64
        wid = np.fromiter(map(self.word_ids.get, words, repeat(-1, n)), dtype=np.int64, count=n)
        parts = [self.unigram[wid]]
        if cfg.word_bigrams and n > 1:
            a, b = wid[:-1], wid[1:]
            big = np.full(n - 1, -1, dtype=np.int64)
            if len(self.pair_keys):
                key = a * self.n_words + b
                j = np.searchsorted(self.pair_keys, key)
                j[j == len(self.pair_keys)] = 0
                hit = (self.pair_keys[j] == key) & (a >= 0) & (b >= 0)
                big[hit] = self.pair_ids[j[hit]]
            if "_" in "".join(words):
                get = self.other.get
                for at in {p for i, w in enumerate(words) if "_" in w for p in (i - 1, i) if 0 <= p < n - 1}:
                    big[at] = get(f"b:{words[at]}_{words[at + 1]}", -1)
            parts.append(big)
        if cfg.title_words and doc.title_words:
            parts.append(np.fromiter((self.other.get("t:" + w, -1) for w in doc.title_words), dtype=np.int64,
                                     count=len(doc.title_words)))
        return np.concatenate(parts) if len(parts) > 1 else parts[0]

    def ids(self, doc: Doc) -> tuple[np.ndarray, np.ndarray]:
        """(merged ids, counts as float32) of the known features of ``doc``; unknown ones are left out."""
        return self.ids_keys(doc)[:2]

    def ids_keys(self, doc: Doc) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``ids`` and the sorted distinct char n-gram keys of the message, known or not."""
        uniq, counts, order = _char_ngrams_sorted(doc_text(doc), self.cfg.char_min, self.cfg.char_max)
        if len(uniq) and len(self.keys):
            # Sorted queries: each search starts near the last one's path, about twice as fast.
            j = np.searchsorted(self.keys, uniq)
            j[j == len(self.keys)] = 0
            hit = self.keys[j] == uniq
            keep = order[hit[order]]
            ids = j[keep]
            tf = counts[keep]
        else:
            ids, tf = _EMPTY_I64, _EMPTY_I64
        wid = self._word_feature_ids(doc)
        if len(wid):
            # Distinct features have distinct ids: counted by id, in first-occurrence order.
            wid = wid[wid >= 0]
            if len(wid):
                wu, wfirst, wc = _unique(wid)
                wo = np.argsort(wfirst)
                ids = np.concatenate([ids, wu[wo]])
                tf = np.concatenate([tf, wc[wo]])
        return ids, tf.astype(np.float32), uniq


class LabelNames:
    """How much of each label's own name a message contains: a prior the training data cannot give.

    A routing history names its units, and citizens often name the unit or its district themselves
    (``向甘井子区城建局反映``, ``兴工街道``). A unit with one or two letters in the history has almost no
    weights of its own, but its name is still evidence. Each label scores the IDF-weighted share of its
    name's character bigrams that occur in the message, IDF taken over the label names, so that ``人民``,
    ``政府`` or ``管理`` shared by many units count little. Bigrams are those of ``char_ngrams`` (inside runs
    of letters and digits), for training and prediction alike.
    """

    def __init__(self, labels: Sequence[str]) -> None:
        grams = [set(char_ngrams(_label_text(label), 2, 2)) for label in labels]
        df = Counter(g for gs in grams for g in gs)
        n = len(labels)
        by_gram: dict[str, list[tuple[int, float]]] = {g: [] for g in sorted(df)}
        for j, gs in enumerate(grams):
            w = {g: math.log((n + 1) / df[g]) for g in gs}
            total = sum(w.values()) or 1.0
            for g, v in w.items():
                by_gram[g].append((j, v / total))
        self.n_labels = n
        self.keys = np.array([pack_ngram(g) for g in by_gram], dtype=np.uint64)  # sorted: grams are sorted
        # Sparse rows (a city may have thousands of units): the labels and weights of gram i are
        # cols/vals[indptr[i]:indptr[i + 1]].
        self.indptr = np.cumsum([0, *(len(v) for v in by_gram.values())]).astype(np.int64)
        self.cols = np.array([j for v in by_gram.values() for j, _ in v], dtype=np.int64)
        self.vals = np.array([x for v in by_gram.values() for _, x in v], dtype=np.float64)

    def scores(self, text: str) -> np.ndarray:
        """(n_labels,) in [0, 1]: the weighted share of each label's name bigrams found in ``text``."""
        return self.scores_keys(_char_ngrams_sorted(text, 2, 2)[0])

    def scores_keys(self, keys: np.ndarray) -> np.ndarray:
        """``scores`` from the sorted distinct char n-gram keys of a text (other lengths are ignored:
        keys are unique across lengths), so that the serving path reuses the keys it has computed."""
        if not len(keys) or not len(self.keys):
            return np.zeros(self.n_labels, dtype=np.float32)
        j = np.searchsorted(keys, self.keys)
        j[j == len(keys)] = 0
        hit = np.flatnonzero(keys[j] == self.keys)
        starts, lens = self.indptr[hit], self.indptr[hit + 1] - self.indptr[hit]
        pos = np.repeat(starts - np.cumsum(lens) + lens, lens) + np.arange(int(lens.sum()))
        return np.bincount(self.cols[pos], weights=self.vals[pos], minlength=self.n_labels).astype(np.float32)

    def matrix(self, texts: Iterable[str]) -> np.ndarray:
        rows = [self.scores(t) for t in texts]
        return np.stack(rows) if rows else np.zeros((0, self.n_labels), dtype=np.float32)


def _label_text(label: str) -> str:
    from hotline.nlp.clean import for_model

    return for_model(label, 200)


def doc_text(doc: Doc) -> str:
    """The text a head's character features and label names are read from."""
    return f"{doc.title} {doc.body}"


# Candidate weights of the label-name scores, added to the linear scores (which lie mostly within ±1.5).
NAME_WEIGHTS = tuple(round(0.05 * k, 2) for k in range(21))


def fit_name_weight(scores: np.ndarray, names: np.ndarray, y: np.ndarray) -> float:
    """The weight of the label-name scores that ranks held-out rows best (top-1 + top-3 accuracy).

    ``scores`` are out-of-fold decision scores; ties go to the smaller weight. 0 turns the prior off for
    label sets whose names tell nothing (the fit decides, per head and per city).
    """
    best, best_w = -1.0, 0.0
    rows = np.arange(len(y))
    for w in NAME_WEIGHTS:
        s = scores + w * names
        truth = s[rows, y][:, None]
        rank = (s >= truth).sum(axis=1) - 1  # labels scored above the truth, or level with it
        quality = float((rank == 0).mean() + (rank < 3).mean())
        if quality > best + 1e-9:
            best, best_w = quality, w
    return best_w


def softmax(scores: np.ndarray, temperature: float) -> np.ndarray:
    z = scores / temperature
    z = z - z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def fit_temperature(scores: np.ndarray, y: np.ndarray) -> float:
    """Temperature minimising the log-loss of softmax(scores / T) on held-out scores."""
    from scipy.optimize import minimize_scalar

    def nll(log_t: float) -> float:
        p = softmax(scores, math.exp(log_t))
        return float(-np.mean(np.log(np.clip(p[np.arange(len(y)), y], 1e-12, None))))

    res = minimize_scalar(nll, bounds=(math.log(0.01), math.log(10.0)), method="bounded")
    return float(math.exp(res.x))


@dataclass
class LinearHead:
    labels: list[str]
    vocab: dict[str, int]
    idf: np.ndarray  # (n_features,) float32
    coef: np.ndarray  # (n_weighted, n_labels) float32: only the rows of features with a non-zero weight
    rows: np.ndarray  # (n_features,) int32: row of a feature in ``coef``, or -1 (counts for the norm only)
    intercept: np.ndarray  # (n_labels,) float32
    temperature: float
    features: FeatureConfig
    meta: dict[str, Any] = field(default_factory=dict)
    # Weight of the label-name scores (``LabelNames``) added to the linear scores; 0: not used.
    name_weight: float = 0.0
    names: LabelNames | None = field(default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.name_weight > 0 and self.names is None:
            self.names = LabelNames(self.labels)

    def name_scores(self, doc: Doc, keys: np.ndarray | None = None) -> np.ndarray | None:
        """What the label names add to the linear scores of ``doc`` (None: nothing).

        ``keys``: the sorted char n-gram keys of ``doc_text(doc)`` when the caller has them (bigrams included).
        """
        if self.names is None or self.name_weight <= 0:
            return None
        if keys is None:
            return self.name_weight * self.names.scores(doc_text(doc))
        return self.name_weight * self.names.scores_keys(keys)

    # prediction ---------------------------------------------------------------
    def scores(self, feats: Iterable[str]) -> np.ndarray:
        return self.scores_counted(Counter(feats))

    def scores_counted(self, counts: Counter[str]) -> np.ndarray:
        """Scores from feature counts (heads with the same features share one count)."""
        if not counts:
            return self.intercept.copy()
        get = self.vocab.get
        n = len(counts)
        ids = np.fromiter((get(f, -1) for f in counts), dtype=np.int64, count=n)
        tf = np.fromiter(counts.values(), dtype=np.float32, count=n)
        return self.scores_ids(ids, tf)

    def scores_ids(self, ids: np.ndarray, tf: np.ndarray) -> np.ndarray:
        """Scores from vocabulary ids (−1: unknown) and raw counts of a message's features."""
        known = ids >= 0
        ia = ids[known]
        if not len(ia):
            return self.intercept.copy()
        # Sublinear tf × idf, L2-normalised over every known feature: what TfidfVectorizer computes.
        v = ((1.0 + np.log(tf[known])) if self.features.sublinear else tf[known]) * self.idf[ia]
        v /= np.sqrt(float(v @ v)) or 1.0
        r = self.rows[ia]
        has = r >= 0
        return v[has] @ self.coef[r[has]] + self.intercept

    def scores_gathered(self, tf: np.ndarray, idf: np.ndarray, rows: np.ndarray) -> np.ndarray:
        """``scores_ids`` with the per-feature lookups already done by the caller (``HeadTables``).

        ``idf`` and ``rows`` hold this head's idf and weight row of each feature, row −2 for a feature
        outside its vocabulary. The arithmetic and its order are those of ``scores_ids``, so the scores
        are the same to the last bit.
        """
        known = rows > -2
        if not known.any():
            return self.intercept.copy()
        v = ((1.0 + np.log(tf[known])) if self.features.sublinear else tf[known]) * idf[known]
        v /= np.sqrt(float(v @ v)) or 1.0
        r = rows[known]
        has = r >= 0
        return v[has] @ self.coef[r[has]] + self.intercept

    def proba(self, doc: Doc, counts: Counter[str] | None = None) -> np.ndarray:
        if counts is None:
            counts = Counter(features(doc, self.features))
        s = self.scores_counted(counts)
        if (extra := self.name_scores(doc)) is not None:
            s = s + extra
        return softmax(s, self.temperature)

    def top(self, doc: Doc, k: int = 3, counts: Counter[str] | None = None) -> list[dict[str, Any]]:
        p = self.proba(doc, counts)
        order = np.argsort(-p)[:k]
        return [{"label": self.labels[i], "p": round(float(p[i]), 4)} for i in order]

    # files --------------------------------------------------------------------
    def save(self, out: Path) -> None:
        """Write the head to the directory ``out``, replacing a model there as a whole.

        The files go into a new directory beside ``out`` that is then swapped in, so a save that fails
        (disk full, a file size limit, the process killed) leaves the previous model as it was: a model
        directory never holds new files next to old or cut-off ones.

        Where ``out`` cannot be swapped (a mount point, a parent the user cannot write), the files are
        replaced one by one instead (``_save_in_place``). Raises ``ModelError``.
        """
        out = check_out(out)
        if os.path.ismount(out):
            self._save_in_place(out)  # renaming a mount point fails with EBUSY after the files are written
            return
        try:
            out.parent.mkdir(parents=True, exist_ok=True)
            tmp = _new_sibling(out)
        except OSError as exc:
            if exc.errno in _NO_SWAP and out.is_dir():
                self._save_in_place(out)
                return
            raise ModelError(f"cannot write the model to {out}: {_reason(exc)}") from exc
        try:
            try:
                self._write(tmp)
                if out.is_dir():
                    _keep_mode(tmp, out)
                _fsync(tmp)
            except OSError as exc:
                raise ModelError(f"cannot write the model to {out}: {_reason(exc)}; the model there is "
                                 "unchanged") from exc
            try:
                _swap_in(tmp, out)
                swapped = True
            except OSError as exc:
                # _swap_in puts ``out`` back when it fails, so the files can still be replaced inside it.
                if exc.errno not in _NO_SWAP or not out.is_dir():
                    raise ModelError(f"cannot write the model to {out}: {_reason(exc)}; the model there is "
                                     "unchanged") from exc
                swapped = False
        finally:
            # The new files after a failure, or the previous model after the swap.
            shutil.rmtree(tmp, ignore_errors=True)
        if not swapped:
            self._save_in_place(out)
            return
        with contextlib.suppress(OSError):  # the model is in place; this only hurries it to the disk
            _fsync(out.parent)

    def _save_in_place(self, out: Path) -> None:
        """Replace the files of the model directory ``out`` one by one, head.json last.

        Every file is written and flushed under a temporary name first, so a failure before the renames
        (disk full, a kill) leaves the previous model as it was. The renames themselves are not one step:
        a loader may meet new weights beside the old head.json, whose digests then refuse the mix (see
        ``_load``) until head.json, renamed last, makes the set whole again.
        """
        _record_digests(out)
        staged: dict[str, Path] = {}
        try:
            try:
                for name in MODEL_FILES:
                    staged[name] = _in_place_name(out, name)
                self._write(out, staged)
                for name, tmp in staged.items():
                    _keep_mode(tmp, out / name)
            except OSError as exc:
                raise ModelError(f"cannot write the model to {out}: {_reason(exc)}; the model there is "
                                 "unchanged") from exc
            try:
                for name in DATA_FILES:
                    os.replace(staged.pop(name), out / name)
                # The data files' new names reach the disk before head.json vouches for them: after a power
                # cut the directory holds the old model, or a mix a loader refuses, never a wrong model.
                _fsync(out)
                os.replace(staged.pop("head.json"), out / "head.json")
            except OSError as exc:
                raise ModelError(f"cannot write the model to {out}: {_reason(exc)}; some of its files were "
                                 "replaced, so it will not load until a save succeeds") from exc
        finally:
            for tmp in staged.values():
                with contextlib.suppress(OSError):
                    tmp.unlink()
        with contextlib.suppress(OSError):  # the model is in place; this only hurries it to the disk
            _fsync(out)

    def _write(self, out: Path, paths: dict[str, Path] | None = None) -> None:
        """Write the model files into ``out``, or to ``paths`` (model file name → where) when given."""
        import scipy.sparse as sp

        def to(name: str) -> Path:
            return paths[name] if paths is not None else out / name

        terms = [""] * len(self.vocab)
        for term, i in self.vocab.items():
            terms[i] = term
        np.savez_compressed(to("weights.npz"), idf=self.idf.astype(np.float32),
                            intercept=self.intercept.astype(np.float32))
        full = np.zeros((len(self.vocab), len(self.labels)), dtype=np.float32)
        has = self.rows >= 0
        full[has] = self.coef[self.rows[has]]
        sp.save_npz(to("coef.npz"), sp.csr_matrix(full), compressed=True)
        to("vocab.txt").write_text("\n".join(terms) + "\n", encoding="utf-8")
        head = {"format": FORMAT, "labels": self.labels, "temperature": self.temperature,
                "name_weight": self.name_weight, "features": asdict(self.features), "meta": self.meta,
                # Read back from the disk: these are the bytes a loader will check against.
                DIGESTS: {name: _sha256(to(name)) for name in DATA_FILES}}
        to("head.json").write_text(json.dumps(head, ensure_ascii=False, indent=1), encoding="utf-8")
        for name in MODEL_FILES:
            _fsync(to(name))

    @classmethod
    def load(cls, path: Path) -> LinearHead:
        """Read a saved head; anything missing, cut off or malformed is a ``ModelError`` naming the file."""
        if not path.is_dir():
            raise ModelError(f"{path}: not a model directory" if path.exists() else f"{path}: no such model")
        try:
            # Every file through one handle on the directory: a save swapping a new model in meanwhile
            # cannot make this read half of each.
            dir_fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
        except OSError as exc:
            raise ModelError(f"{path}: {_reason(exc)}") from exc
        try:
            return cls._load(path, dir_fd)
        finally:
            os.close(dir_fd)

    @classmethod
    def _load(cls, path: Path, dir_fd: int) -> LinearHead:
        import scipy.sparse as sp

        def read(name: str) -> bytes:
            with os.fdopen(os.open(name, os.O_RDONLY, dir_fd=dir_fd), "rb") as fh:
                return fh.read()

        with _reading(path / "head.json"):
            try:
                head = json.loads(read("head.json").decode("utf-8"))
            except FileNotFoundError as exc:
                raise ModelError(f"{path}: not a trained model (no head.json)") from exc
            except ValueError as exc:
                raise ModelError(f"{path}/head.json: not JSON: {exc}") from exc
            if not isinstance(head, dict):
                raise ModelError(f"{path}/head.json: not a JSON object")
            if head.get("format") != FORMAT:
                raise ModelError(f"{path}: unknown model format {head.get('format')!r}")
            labels, temperature, name_weight, feat, meta = _head_fields(head, path / "head.json")
            digests = _digests(head, path / "head.json")
        # Each file is parsed from the very bytes whose digest is checked: read once, kept in memory.
        data: dict[str, bytes] = {}
        with _reading(path / "vocab.txt"):
            data["vocab.txt"] = read("vocab.txt")
            terms = data["vocab.txt"].decode("utf-8").split("\n")[:-1]
        with _reading(path / "weights.npz"):
            data["weights.npz"] = read("weights.npz")
            fh = io.BytesIO(data["weights.npz"])
            _npz(fh, path / "weights.npz")
            with np.load(fh) as arrays:
                idf = np.asarray(arrays["idf"], dtype=np.float32)
                intercept = np.asarray(arrays["intercept"], dtype=np.float32)
        with _reading(path / "coef.npz"):
            data["coef.npz"] = read("coef.npz")
            fh = io.BytesIO(data["coef.npz"])
            _npz(fh, path / "coef.npz")
            sparse = sp.load_npz(fh).tocsr()
        if digests is not None:
            # Checked before the shapes: a save replacing the files one by one (a model directory that is
            # a mount point) can pair new weights with the old head.json, which may even fit in shape.
            changed = [n for n in DATA_FILES if hashlib.sha256(data[n]).hexdigest() != digests[n]]
            if changed:
                raise ModelError(f"{path}: files do not match head.json ({', '.join(changed)}): the model is being "
                                 "written (try again when the save has finished) or a file was changed by hand")
        if sparse.shape != (len(terms), len(labels)) or idf.shape != (len(terms),) or \
                intercept.shape != (len(labels),):
            raise ModelError(f"{path}: weights do not match vocabulary/labels")
        coef, rows = _compact(sparse)
        return cls(labels=labels, vocab={t: i for i, t in enumerate(terms)}, idf=idf, coef=coef, rows=rows,
                   intercept=intercept, temperature=temperature, features=feat, meta=meta,
                   name_weight=name_weight)


MODEL_FILES = ("weights.npz", "coef.npz", "vocab.txt", "head.json")
DATA_FILES = MODEL_FILES[:-1]  # what head.json vouches for
# The head.json field holding the SHA-256 of each data file. Models saved before it have none and load
# unchecked.
DIGESTS = "sha256"


def _digests(head: dict[str, Any], file: Path) -> dict[str, str] | None:
    given = head.get(DIGESTS)
    if given is None:
        return None
    if not isinstance(given, dict) or set(given) != set(DATA_FILES) or \
            not all(isinstance(v, str) and re.fullmatch(r"[0-9a-f]{64}", v) for v in given.values()):
        raise ModelError(f"{file}: {DIGESTS} must map {', '.join(DATA_FILES)} to SHA-256 hex digests")
    return given


def _reason(exc: BaseException) -> str:
    """One line for a message: the OS's words for an OSError, else the exception's first line."""
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


@contextmanager
def _reading(file: Path) -> Iterator[None]:
    """Turn whatever a missing, cut-off or hand-edited model file raises into a ``ModelError`` naming it."""
    try:
        yield
    except ModelError:
        raise
    except FileNotFoundError as exc:
        raise ModelError(f"{file}: missing (an incomplete model)") from exc
    except (zipfile.BadZipFile, EOFError, zlib.error) as exc:
        raise ModelError(f"{file}: damaged or cut off ({_reason(exc)})") from exc
    except (OSError, KeyError, ValueError, TypeError, AttributeError, IndexError) as exc:
        # ValueError covers UnicodeDecodeError and numpy's refusals; KeyError an archive without an array.
        raise ModelError(f"{file}: unreadable ({type(exc).__name__}: {_reason(exc)})") from exc


def _npz(fh: Any, file: Path) -> None:
    """An .npz is a zip archive. Checked first: numpy would take anything else for a pickle and refuse it
    with a message about pickled data, which tells nothing about a cut-off file."""
    if not zipfile.is_zipfile(fh):
        raise ModelError(f"{file}: damaged or cut off (not a complete .npz archive)")
    fh.seek(0)


def _head_fields(head: dict[str, Any], file: Path) -> tuple[list[str], float, float, FeatureConfig, dict[str, Any]]:
    """The checked fields of head.json (a hand-edited file must fail here, not at the first prediction)."""
    def bad(what: str) -> ModelError:
        return ModelError(f"{file}: {what}")

    labels = head.get("labels")
    if not isinstance(labels, list) or len(labels) < 2 or not all(isinstance(v, str) for v in labels):
        raise bad("labels must be a list of at least two strings")
    temperature = head.get("temperature")
    if isinstance(temperature, bool) or not isinstance(temperature, int | float) or \
            not 0 < temperature < math.inf:
        raise bad("temperature must be a positive number")
    try:
        name_weight = float(head.get("name_weight") or 0.0)
    except (TypeError, ValueError) as exc:
        raise bad("name_weight is not a number") from exc
    if not 0.0 <= name_weight < 100.0:
        raise bad("name_weight must be a number from 0 to 100")
    given = head.get("features")
    if not isinstance(given, dict):
        raise bad("features must be a JSON object")
    defaults = asdict(FeatureConfig())
    for key, value in given.items():
        if key not in defaults:
            raise bad(f"features: unknown field {key!r}")
        want = type(defaults[key])
        if type(value) is not want:  # exact: a bool is an int, and 1.0 is no char_max
            raise bad(f"features.{key} must be {want.__name__}, not {type(value).__name__}")
    meta = head.get("meta") or {}
    if not isinstance(meta, dict):
        raise bad("meta must be a JSON object")
    return list(labels), float(temperature), name_weight, FeatureConfig(**given), dict(meta)


def check_out(out: Path) -> Path:
    """The directory a model will be saved to (absolute), or a ``ModelError`` saying why it cannot be.

    Checked before training, which takes minutes: a file in the way, and a directory holding anything
    but a model (such as ``models/`` with its heads), which a save would replace as a whole.
    """
    given = out
    out = Path(os.path.abspath(out))
    if out.is_symlink():
        out = out.resolve()  # the link keeps pointing at the directory; its target is replaced
    if not out.name:
        raise ModelError(f"{given}: not a directory a model can be written to")
    for parent in out.parents:
        if parent.exists():
            if not parent.is_dir():
                raise ModelError(f"{given}: {parent} is a file, not a directory")
            break
    if out.exists() and not out.is_dir():
        raise ModelError(f"{given}: is a file, not a model directory")
    if out.is_dir():
        try:
            other = sorted(p.name for p in out.iterdir() if not _belongs(p.name))
        except OSError as exc:
            raise ModelError(f"{given}: {_reason(exc)}") from exc
        if other:
            listed = ", ".join(other[:3]) + (", …" if len(other) > 3 else "")
            raise ModelError(f"{given}: holds other files than a model ({listed}); a save replaces the "
                             "directory as a whole, so give a new directory or one that holds a model")
    return out


# What a model directory may hold besides the model: the root of an ext4 volume mounted there has
# lost+found, and a save killed while writing in place leaves its temporary files (see _in_place_name).
_IN_PLACE_TMP = re.compile(r"\.[0-9a-f]{8}\.tmp\.(?:weights\.npz|coef\.npz|vocab\.txt|head\.json)")


def _belongs(name: str) -> bool:
    return name in MODEL_FILES or name == "lost+found" or _IN_PLACE_TMP.fullmatch(name) is not None


# Why ``out`` cannot be swapped for a new directory, while its files can still be replaced one by one:
# a mount point (EBUSY), a directory mounted from another file system (EXDEV), or a parent the user
# cannot write (EACCES, EPERM, EROFS), as with a Docker or Kubernetes volume mounted at models/category.
_NO_SWAP = frozenset({errno.EBUSY, errno.EXDEV, errno.EACCES, errno.EPERM, errno.EROFS})


def _in_place_name(out: Path, name: str) -> Path:
    """A new temporary name inside ``out`` for the file ``name`` (same directory, so replacing is a rename).

    The name keeps its suffix: numpy appends ".npz" to a file name without one.
    """
    while True:
        tmp = out / f".{secrets.token_hex(4)}.tmp.{name}"
        if not tmp.exists():
            return tmp


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _record_digests(out: Path) -> None:
    """Give the head.json of a model saved before head.json carried digests a record of its files.

    Best effort, before an in-place save starts writing: a loader that reads this head.json and then a
    file the save has already replaced refuses the mix, instead of loading new weights against an old
    vocabulary without noticing.
    """
    try:
        head = json.loads((out / "head.json").read_text(encoding="utf-8"))
        if not isinstance(head, dict) or DIGESTS in head:
            return
        head[DIGESTS] = {name: _sha256(out / name) for name in DATA_FILES}
        tmp = _in_place_name(out, "head.json")
        try:
            tmp.write_text(json.dumps(head, ensure_ascii=False, indent=1), encoding="utf-8")
            _fsync(tmp)
            _keep_mode(tmp, out / "head.json")
            os.replace(tmp, out / "head.json")
        finally:
            tmp.unlink(missing_ok=True)
    except (OSError, ValueError):
        return  # no model there, or not one this can vouch for: nothing a loader could mix up with


def _keep_mode(new: Path, old: Path) -> None:
    """Whoever could read the old file or directory (the service's user) can read its replacement."""
    with contextlib.suppress(FileNotFoundError):
        new.chmod(stat.S_IMODE(old.stat().st_mode))


def _new_sibling(out: Path) -> Path:
    """A new empty directory beside ``out`` (same file system, so the swap is a rename)."""
    while True:
        tmp = out.parent / f".{out.name}.{secrets.token_hex(4)}.tmp"
        try:
            tmp.mkdir()  # the umask decides the mode, as for any directory the user makes
            return tmp
        except FileExistsError:
            continue


def _fsync(path: Path) -> None:
    """Flush a file or a directory listing to disk: the swapped-in model must survive a power cut whole."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


_RENAME_EXCHANGE = 2
_AT_FDCWD = -100


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths in one step (Linux ``renameat2(RENAME_EXCHANGE)``); False where that is not available."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    renameat2.restype = ctypes.c_int
    if renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP):
        return False  # an old kernel or a file system without exchange
    raise OSError(err, os.strerror(err), str(b))


def _swap_in(new: Path, out: Path) -> None:
    """Put the directory ``new`` at ``out``; a model already there ends up at ``new`` (to be removed).

    With an exchange no reader ever finds ``out`` missing or half-written; without it (not Linux, or a file
    system that cannot exchange), ``out`` is missing between two renames only.
    """
    if not out.exists():
        os.rename(new, out)
        return
    if _exchange(new, out):
        return
    old = _new_sibling(out)
    os.rmdir(old)
    os.rename(out, old)
    try:
        os.rename(new, out)
    except OSError:
        os.rename(old, out)
        raise
    os.rename(old, new)  # where the caller removes it


def _compact(matrix: Any) -> tuple[np.ndarray, np.ndarray]:
    """Dense rows of the weighted features only: a row gather is far cheaper than sparse slicing."""
    nnz_rows = np.flatnonzero(np.diff(matrix.indptr) > 0) if hasattr(matrix, "indptr") else \
        np.flatnonzero(np.abs(matrix).sum(axis=1) > 0)
    rows = np.full(matrix.shape[0], -1, dtype=np.int32)
    rows[nnz_rows] = np.arange(len(nnz_rows), dtype=np.int32)
    dense = matrix[nnz_rows]
    dense = dense.toarray() if hasattr(dense, "toarray") else dense
    return np.ascontiguousarray(dense, dtype=np.float32), rows


class ModelError(Exception):
    """A model directory is missing or unreadable; the message names it."""


# "damped": rare labels weighted (max count / count) ** DAMPED_POWER. "balanced" (power 1) over-predicts
# units with a handful of letters; none lets the busiest unit swallow the top-1. Cross-validated on both
# cities' routing histories, the fourth root raised department top-1 by 0.5-2.3 points, top-3 unchanged.
DAMPED_POWER = 0.25
CLASS_WEIGHTS = ("balanced", "damped", None)


@dataclass
class TrainConfig:
    c: float = 0.5
    class_weight: str | None = "balanced"
    min_df: int = 2
    max_features: int | None = 200_000
    # Weights smaller than this fraction of a label's largest weight are dropped from the saved file.
    prune: float = 0.02
    calibration_folds: int = 5
    seed: int = 0
    sublinear: bool = True
    # Fit a weight for the label names (``LabelNames``) on the out-of-fold scores; needs the texts.
    name_match: bool = True


def _vectorize(docs: Sequence[list[str]], cfg: TrainConfig) -> tuple[Any, Any]:
    from sklearn.feature_extraction.text import TfidfVectorizer

    vec = TfidfVectorizer(analyzer=_identity, sublinear_tf=cfg.sublinear, min_df=cfg.min_df,
                          max_features=cfg.max_features, dtype=np.float32)
    return vec, vec.fit_transform(docs)


def _identity(doc: list[str]) -> list[str]:
    return doc


def _svm(cfg: TrainConfig, y: np.ndarray) -> Any:
    from sklearn.svm import LinearSVC

    weight: str | dict[int, float] | None = cfg.class_weight
    if weight == "damped":
        labels, counts = np.unique(y, return_counts=True)
        weight = {int(k): float((counts.max() / n) ** DAMPED_POWER) for k, n in zip(labels, counts, strict=True)}
    return LinearSVC(C=cfg.c, class_weight=weight, random_state=cfg.seed)


def _decision(model: Any, x: Any, n_labels: int) -> np.ndarray:
    s = model.decision_function(x)
    if n_labels == 2:
        # A binary LinearSVC gives one score; as two logits it is (−s/2, s/2).
        s = np.stack([-s / 2, s / 2], axis=1)
    return s


def _fit_coef(model: Any, n_labels: int) -> tuple[np.ndarray, np.ndarray]:
    coef = np.asarray(model.coef_, dtype=np.float32).T
    b = np.asarray(model.intercept_, dtype=np.float32)
    if n_labels == 2:
        coef = np.concatenate([-coef / 2, coef / 2], axis=1)
        b = np.array([-b[0] / 2, b[0] / 2], dtype=np.float32)
    return coef, b


def cv_folds(y: np.ndarray, folds: int, seed: int, groups: np.ndarray | None = None) -> list[tuple[Any, Any]]:
    """Stratified folds; labels too rare to stratify are spread as one pooled class.

    ``groups`` keeps near-identical rows (the same letter in two files) in one fold, so that a letter is
    never scored by a model that saw it.
    """
    from sklearn.model_selection import StratifiedGroupKFold, StratifiedKFold

    counts = Counter(y.tolist())
    strat = np.array([v if counts[v] >= folds else -1 for v in y.tolist()], dtype=np.int64)
    if groups is not None:
        return list(StratifiedGroupKFold(folds, shuffle=True, random_state=seed).split(y, strat, groups))
    return list(StratifiedKFold(folds, shuffle=True, random_state=seed).split(y, strat))


def out_of_fold_scores(docs: Sequence[list[str]], y: np.ndarray, n_labels: int, cfg: TrainConfig,
                       folds: list[tuple[Any, Any]], tick: Callable[[], None] = lambda: None,
                       extra: tuple[Sequence[list[str]], np.ndarray] = ((), np.zeros(0, dtype=np.int64)),
                       ) -> np.ndarray:
    """Decision scores of every row from a model trained without its fold (vocabulary refitted too).

    ``extra`` rows (prior knowledge such as the category tree) join every training fold and are never scored.
    """
    scores = np.zeros((len(docs), n_labels), dtype=np.float32)
    extra_docs, extra_y = extra
    for tr, te in folds:
        ytr = np.concatenate([y[tr], extra_y])
        vec, xtr = _vectorize([*(docs[i] for i in tr), *extra_docs], cfg)
        model = _svm(cfg, ytr).fit(xtr, ytr)
        s = np.full((len(te), n_labels), -1e3, dtype=np.float32)
        # A fold may lack a rare label: its score stays very low (never predicted) for that fold.
        s[:, model.classes_] = _decision(model, vec.transform([docs[i] for i in te]), len(model.classes_))
        scores[te] = s
        tick()
    return scores


def train_head(docs: Sequence[list[str]], labels: Sequence[str], cfg: TrainConfig, feat: FeatureConfig,
               tick: Callable[[], None] = lambda: None, groups: np.ndarray | None = None,
               extra: Sequence[tuple[list[str], str]] = (), texts: Sequence[str] | None = None) -> LinearHead:
    """Fit a head on feature lists; ``tick`` is called once per fitted model (progress bars).

    ``extra``: (features, label) rows trained on but not counted in the cross-validated figures; their labels
    must be among ``labels``. ``texts`` (``doc_text`` of each row): with them, the weight of the label
    names is fitted on the out-of-fold scores (``cfg.name_match``).
    """
    import warnings
    from dataclasses import replace

    cfg = replace(cfg, sublinear=feat.sublinear)  # the saved head computes tf the way it was trained

    from sklearn.exceptions import ConvergenceWarning

    names = sorted(set(labels))
    if len(names) < 2:
        raise ValueError("need at least two different labels to train")
    index = {n: i for i, n in enumerate(names)}
    y = np.array([index[v] for v in labels])
    if unknown := {v for _, v in extra} - set(names):
        raise ValueError(f"extra rows with labels the data does not have: {sorted(unknown)}")
    extra_docs = [d for d, _ in extra]
    extra_y = np.array([index[v] for _, v in extra], dtype=np.int64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        temperature = 1.0
        name_weight = 0.0
        cv_metrics: dict[str, Any] = {}
        if cfg.calibration_folds >= 2 and len(docs) >= 5 * cfg.calibration_folds:
            folds = cv_folds(y, cfg.calibration_folds, cfg.seed, groups)
            oof = out_of_fold_scores(docs, y, len(names), cfg, folds, tick, extra=(extra_docs, extra_y))
            without: dict[str, float] = {}
            if cfg.name_match and texts is not None:
                if len(texts) != len(docs):
                    raise ValueError("one text per training row is needed for the label names")
                by_name = LabelNames(names).matrix(texts)
                name_weight = fit_name_weight(oof, by_name, y)
                if name_weight > 0:
                    without = _metrics(oof, y, fit_temperature(oof, y), cfg.calibration_folds)
                    oof = oof + name_weight * by_name
            temperature = fit_temperature(oof, y)
            cv_metrics = _metrics(oof, y, temperature, cfg.calibration_folds)
            if without:
                cv_metrics["without_names"] = {k: without[k] for k in ("accuracy", "macro_f1", "top3_accuracy")}
        y_all = np.concatenate([y, extra_y])
        vec, x = _vectorize([*docs, *extra_docs], cfg)
        model = _svm(cfg, y_all).fit(x, y_all)
        tick()
    coef, b = _fit_coef(model, len(names))
    if cfg.prune > 0:
        # Tiny weights barely move a score but dominate the file size.
        limit = cfg.prune * np.abs(coef).max(axis=0, keepdims=True)
        coef[np.abs(coef) < limit] = 0.0
    compact, rows = _compact(coef)
    terms = vec.get_feature_names_out()
    vocab = {str(t): n for n, t in enumerate(terms)}
    return LinearHead(labels=names, vocab=vocab, idf=vec.idf_.astype(np.float32), coef=compact, rows=rows,
                      intercept=b, temperature=temperature, features=feat, name_weight=name_weight,
                      meta={"rows": len(docs), "extra_rows": len(extra_docs), "c": cfg.c,
                            "class_weight": cfg.class_weight,
                            "min_df": cfg.min_df, "max_features": cfg.max_features, "prune": cfg.prune,
                            "name_match": cfg.name_match,
                            "cv": cv_metrics})


def _metrics(scores: np.ndarray, y: np.ndarray, temperature: float, folds: int) -> dict[str, float]:
    """Cross-validated figures from the out-of-fold scores the calibration needs anyway."""
    from sklearn.metrics import f1_score

    p = softmax(scores, temperature)
    order = np.argsort(-p, axis=1)[:, :3]
    pred = order[:, 0]
    conf = p[np.arange(len(y)), pred]
    confident = conf >= 0.6
    return {
        "folds": folds,
        "accuracy": round(float((pred == y).mean()), 4),
        "macro_f1": round(float(f1_score(y, pred, average="macro", zero_division=0)), 4),
        "top3_accuracy": round(float((order == y[:, None]).any(axis=1).mean()), 4),
        "log_loss": round(float(-np.mean(np.log(np.clip(p[np.arange(len(y)), y], 1e-12, None)))), 4),
        # How the confidence policy would behave: share of rows at p ≥ 0.6 and their accuracy.
        "share_p_ge_0_6": round(float(confident.mean()), 4),
        "accuracy_p_ge_0_6": round(float((pred[confident] == y[confident]).mean()) if confident.any() else 0.0, 4),
    }
