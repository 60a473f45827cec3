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

import json
import math
import re
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from itertools import pairwise
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
    out = char_ngrams(f"{doc.title} {doc.body}", cfg.char_min, cfg.char_max)
    if not cfg.words:
        return out
    words = doc.title_words + doc.words
    out.extend("w:" + w for w in words)
    if cfg.word_bigrams:
        out.extend(f"b:{a}_{b}" for a, b in pairwise(words))
    if cfg.title_words:
        out.extend("t:" + w for w in doc.title_words)
    return out


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

    def proba(self, doc: Doc, counts: Counter[str] | None = None) -> np.ndarray:
        if counts is None:
            counts = Counter(features(doc, self.features))
        return softmax(self.scores_counted(counts), self.temperature)

    def top(self, doc: Doc, k: int = 3, counts: Counter[str] | None = None) -> list[dict[str, Any]]:
        p = self.proba(doc, counts)
        order = np.argsort(-p)[:k]
        return [{"label": self.labels[i], "p": round(float(p[i]), 4)} for i in order]

    # files --------------------------------------------------------------------
    def save(self, out: Path) -> None:
        import scipy.sparse as sp

        out.mkdir(parents=True, exist_ok=True)
        terms = [""] * len(self.vocab)
        for term, i in self.vocab.items():
            terms[i] = term
        np.savez_compressed(out / "weights.npz", idf=self.idf.astype(np.float32),
                            intercept=self.intercept.astype(np.float32))
        full = np.zeros((len(self.vocab), len(self.labels)), dtype=np.float32)
        has = self.rows >= 0
        full[has] = self.coef[self.rows[has]]
        sp.save_npz(out / "coef.npz", sp.csr_matrix(full), compressed=True)
        (out / "vocab.txt").write_text("\n".join(terms) + "\n", encoding="utf-8")
        head = {"format": FORMAT, "labels": self.labels, "temperature": self.temperature,
                "features": asdict(self.features), "meta": self.meta}
        (out / "head.json").write_text(json.dumps(head, ensure_ascii=False, indent=1), encoding="utf-8")

    @classmethod
    def load(cls, path: Path) -> LinearHead:
        import scipy.sparse as sp

        try:
            head = json.loads((path / "head.json").read_text(encoding="utf-8"))
        except FileNotFoundError as exc:
            raise ModelError(f"{path}: not a trained model (no head.json)") from exc
        except ValueError as exc:
            raise ModelError(f"{path}/head.json: not JSON: {exc}") from exc
        if head.get("format") != FORMAT:
            raise ModelError(f"{path}: unknown model format {head.get('format')!r}")
        terms = (path / "vocab.txt").read_text(encoding="utf-8").split("\n")[:-1]
        arrays = np.load(path / "weights.npz")
        sparse = sp.load_npz(path / "coef.npz").tocsr()
        labels = list(head["labels"])
        if sparse.shape != (len(terms), len(labels)) or arrays["idf"].shape != (len(terms),):
            raise ModelError(f"{path}: weights do not match vocabulary/labels")
        coef, rows = _compact(sparse)
        return cls(labels=labels, vocab={t: i for i, t in enumerate(terms)},
                   idf=arrays["idf"].astype(np.float32), coef=coef, rows=rows,
                   intercept=arrays["intercept"].astype(np.float32), temperature=float(head["temperature"]),
                   features=FeatureConfig(**head["features"]), meta=dict(head.get("meta") or {}))


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


def _vectorize(docs: Sequence[list[str]], cfg: TrainConfig) -> tuple[Any, Any]:
    from sklearn.feature_extraction.text import TfidfVectorizer

    vec = TfidfVectorizer(analyzer=_identity, sublinear_tf=cfg.sublinear, min_df=cfg.min_df,
                          max_features=cfg.max_features, dtype=np.float32)
    return vec, vec.fit_transform(docs)


def _identity(doc: list[str]) -> list[str]:
    return doc


def _svm(cfg: TrainConfig) -> Any:
    from sklearn.svm import LinearSVC

    return LinearSVC(C=cfg.c, class_weight=cfg.class_weight, random_state=cfg.seed)


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
                       folds: list[tuple[Any, Any]], tick: Callable[[], None] = lambda: None) -> np.ndarray:
    """Decision scores of every row from a model trained without its fold (vocabulary refitted too)."""
    scores = np.zeros((len(docs), n_labels), dtype=np.float32)
    for tr, te in folds:
        vec, xtr = _vectorize([docs[i] for i in tr], cfg)
        model = _svm(cfg).fit(xtr, y[tr])
        s = np.full((len(te), n_labels), -1e3, dtype=np.float32)
        # A fold may lack a rare label: its score stays very low (never predicted) for that fold.
        s[:, model.classes_] = _decision(model, vec.transform([docs[i] for i in te]), len(model.classes_))
        scores[te] = s
        tick()
    return scores


def train_head(docs: Sequence[list[str]], labels: Sequence[str], cfg: TrainConfig, feat: FeatureConfig,
               tick: Callable[[], None] = lambda: None, groups: np.ndarray | None = None) -> LinearHead:
    """Fit a head on feature lists; ``tick`` is called once per fitted model (progress bars)."""
    import warnings
    from dataclasses import replace

    cfg = replace(cfg, sublinear=feat.sublinear)  # the saved head computes tf the way it was trained

    from sklearn.exceptions import ConvergenceWarning

    names = sorted(set(labels))
    if len(names) < 2:
        raise ValueError("need at least two different labels to train")
    index = {n: i for i, n in enumerate(names)}
    y = np.array([index[v] for v in labels])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        temperature = 1.0
        cv_metrics: dict[str, float] = {}
        if cfg.calibration_folds >= 2 and len(docs) >= 5 * cfg.calibration_folds:
            folds = cv_folds(y, cfg.calibration_folds, cfg.seed, groups)
            oof = out_of_fold_scores(docs, y, len(names), cfg, folds, tick)
            temperature = fit_temperature(oof, y)
            cv_metrics = _metrics(oof, y, temperature, cfg.calibration_folds)
        vec, x = _vectorize(docs, cfg)
        model = _svm(cfg).fit(x, y)
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
                      intercept=b, temperature=temperature, features=feat,
                      meta={"rows": len(docs), "c": cfg.c, "class_weight": cfg.class_weight,
                            "min_df": cfg.min_df, "max_features": cfg.max_features, "prune": cfg.prune,
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
