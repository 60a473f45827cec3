"""The suggestion the intake pipeline stores with each case: category, department, type, urgency.

``Suggester.load`` reads everything once at start-up (jieba with the user dictionary, the heads in
``models/``, the taxonomy, the fallback and urgency tables); ``suggest`` is then pure computation,
well under a millisecond for an ordinary message (``bench/classify.py``).
"""

from __future__ import annotations

import json
import logging
import re
import tomllib
from collections import Counter
from collections.abc import Callable
from dataclasses import astuple, dataclass, field, replace
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from hotline.nlp.clean import for_model
from hotline.nlp.model import Doc, FeatureConfig, FeatureIndex, LinearHead, fast_supported, features, softmax
from hotline.nlp.policy import ConfidencePolicy
from hotline.nlp.taxonomy import Taxonomy
from hotline.nlp.tokenize import Tokenizer, is_word
from hotline.nlp.urgency import UrgencyRules
from hotline.settings import PROJECT_ROOT, Settings, SettingsError

log = logging.getLogger("hotline.nlp")

HEADS = ("category", "department", "type")
TITLE_CHARS = 200


class TextPipeline:
    """Cleaning + segmentation shared by training, evaluation and live suggestions."""

    def __init__(self, tokenizer: Tokenizer) -> None:
        self.tokenizer = tokenizer

    def doc(self, title: str = "", text: str = "", tokens: str | list[str] | None = None, *,
            words: bool = True) -> Doc:
        if not isinstance(title, str) or not isinstance(text, str):
            raise TypeError(f"title and text must be strings, not {type(title).__name__}/{type(text).__name__}")
        if tokens is not None and not isinstance(tokens, str) and \
                not (isinstance(tokens, list) and all(isinstance(t, str) for t in tokens)):
            raise TypeError(f"tokens must be a string or a list of strings, not {_kind(tokens)}")
        if tokens:
            # Pre-segmented training rows (stop words already removed): the words as given, and their
            # concatenation stands in for the text of the character n-grams.
            words = tokens.split() if isinstance(tokens, str) else list(tokens)
            words = [w for w in (for_model(_no_surrogates(w), 50) for w in words) if is_word(w)]
            return Doc(title="", body="".join(words)[:2000], words=words[:600])
        t = for_model(_no_surrogates(title), TITLE_CHARS) if title else ""
        b = for_model(_no_surrogates(text))
        if not words:
            return Doc(title=t, body=b, words=[])
        return Doc(title=t, body=b, words=self.tokenizer.words(b),
                   title_words=self.tokenizer.words(t) if t else [])

    def doc_from_row(self, row: dict[str, Any], *, words: bool = True) -> Doc:
        """A JSONL row as a message; a title, text or tokens of another type is a TypeError, not its str()."""
        title, text = row.get("title"), row.get("text")
        for key, value in (("title", title), ("text", text)):
            if value is not None and not isinstance(value, str):
                raise TypeError(f"{key} must be a string, not {_kind(value)}")
        return self.doc(title or "", text or "", row.get("tokens") or None, words=words)


def _kind(value: Any) -> str:
    if isinstance(value, list):
        return "a list holding " + ", ".join(sorted({type(v).__name__ for v in value if not isinstance(v, str)}))
    return type(value).__name__


# A lone surrogate (JSON "\udcff", undecodable bytes of a command line) cannot be encoded: the tokenizer
# would fail on it. It stands for text that was never valid, so it becomes U+FFFD.
_SURROGATE = re.compile("[\ud800-\udfff]")


def _no_surrogates(text: str) -> str:
    return _SURROGATE.sub("\ufffd", text) if _SURROGATE.search(text) else text


def _terms(head: LinearHead) -> list[str]:
    """The vocabulary as a list indexed by feature id."""
    terms = list(head.vocab)
    ids = np.fromiter(head.vocab.values(), dtype=np.int64, count=len(terms))
    if not np.array_equal(ids, np.arange(len(terms))):
        out = [""] * len(terms)
        for term, i in head.vocab.items():
            out[i] = term
        return out
    return terms


def _extraction(cfg: FeatureConfig) -> tuple:
    """What decides a message's feature strings; heads that differ only in tf weighting share them."""
    return astuple(replace(cfg, sublinear=False))


class FeatureGroup:
    """Heads trained on the same feature strings share one feature count and one vocabulary lookup.

    Finding a message's features in the vocabularies was the costliest step of a suggestion. The merged
    ``FeatureIndex`` does it once for all heads, with the char n-grams as integer keys (no string per
    n-gram). Per merged feature id, one table row holds every head's idf and weight row side by side,
    so a message costs two gathers for all heads instead of three per head (the vocabularies are a few
    MB: each gather is mostly cache misses). Configurations the index does not handle (char n-grams
    longer than three) use the string path, ``features`` + one merged dictionary.
    """

    def __init__(self, heads: list[tuple[str, LinearHead]]) -> None:
        self.heads = heads
        self.features = heads[0][1].features
        self.index: FeatureIndex | None = None
        self.vocab: dict[str, int] = {}
        if fast_supported(self.features):
            self.index = FeatureIndex([_terms(head) for _, head in heads], self.features)
            maps = self.index.maps
            size = self.index.size
            # The per-head maps live on only as the tables below.
            self.index.maps = []
        else:
            for _, head in heads:
                for term in head.vocab:
                    self.vocab.setdefault(term, len(self.vocab))
            size = len(self.vocab) + 1  # the last id: unknown features
            maps = []
            for _, head in heads:
                m = np.full(size, -1, dtype=np.int32)
                m[np.fromiter((self.vocab[t] for t in head.vocab), dtype=np.int64, count=len(head.vocab))] = \
                    np.fromiter(head.vocab.values(), dtype=np.int64, count=len(head.vocab))
                maps.append(m)
        # One row per merged feature: every head's weight row (−2: not in its vocabulary), then every
        # head's idf as float32 bits, so that one gather (one cache line) serves all heads.
        n = len(heads)
        self.table = np.zeros((size, 2 * n), dtype=np.int32)
        self.rows = self.table[:, :n]
        self.idf = self.table[:, n:].view(np.float32)
        self.rows[:] = -2
        for h, ((_, head), m) in enumerate(zip(heads, maps, strict=True)):
            present = np.flatnonzero(m >= 0)
            self.idf[present, h] = head.idf[m[present]]
            self.rows[present, h] = head.rows[m[present]]

    def nbytes(self) -> int:
        return self.table.nbytes + (self.index.nbytes() if self.index is not None else 0)

    def ids(self, doc: Doc) -> tuple[np.ndarray, np.ndarray]:
        """Merged ids and counts of the message's features (in ``features`` order)."""
        if self.index is not None:
            return self.index.ids(doc)
        counts = Counter(features(doc, self.features))
        get = self.vocab.get
        unknown = len(self.vocab)
        ids = np.fromiter((get(f, unknown) for f in counts), dtype=np.int64, count=len(counts))
        return ids, np.fromiter(counts.values(), dtype=np.float32, count=len(counts))

    def scores_from(self, ids: np.ndarray, tf: np.ndarray) -> dict[str, np.ndarray]:
        n = len(self.heads)
        t = self.table[ids]
        rows = t[:, :n]
        idf = t[:, n:].view(np.float32)
        return {name: head.scores_gathered(tf, idf[:, h], rows[:, h]) for h, (name, head) in enumerate(self.heads)}

    def found(self, doc: Doc) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        """The message's merged feature ids and counts, and its sorted char n-gram keys when the label names
        can reuse them (None: the names count their own bigrams)."""
        if self.index is None:
            return *self.ids(doc), None
        ids, tf, keys = self.index.ids_keys(doc)
        if not self.features.char_min <= 2 <= self.features.char_max:
            return ids, tf, None  # no bigrams among them
        return ids, tf, keys

    def scores_found(self, doc: Doc, found: tuple[np.ndarray, np.ndarray, np.ndarray | None],
                     ) -> dict[str, np.ndarray]:
        ids, tf, keys = found
        scores = self.scores_from(ids, tf)
        for name, head in self.heads:
            if (extra := head.name_scores(doc, keys)) is not None:
                scores[name] += extra
        return scores

    def scores(self, doc: Doc) -> dict[str, np.ndarray]:
        return self.scores_found(doc, self.found(doc))

    def tops_found(self, doc: Doc, found: tuple[np.ndarray, np.ndarray, np.ndarray | None],
                   ) -> dict[str, list[dict[str, Any]]]:
        """``tops`` from what ``found`` gave (``bench/classify.py --breakdown`` times the two apart)."""
        scores = self.scores_found(doc, found)
        return {name: _top3(head, softmax(scores[name], head.temperature)) for name, head in self.heads}

    def tops(self, doc: Doc) -> dict[str, list[dict[str, Any]]]:
        return self.tops_found(doc, self.found(doc))


def _top3(head: LinearHead, p: np.ndarray) -> list[dict[str, Any]]:
    order = np.argsort(-p)[:3]
    return [{"label": head.labels[i], "p": round(float(p[i]), 4)} for i in order.tolist()]


def config_path(settings: Settings, key: str) -> Path:
    path = Path(settings["nlp"][key]).expanduser()
    if path.is_absolute():
        return path
    # Relative tables are looked up beside hotline.toml first (a site config dir), then in the project.
    beside = settings.config_dir.parent / path
    return beside if beside.exists() else PROJECT_ROOT / path


def load_toml_file(path: Path) -> dict[str, Any]:
    with path.open("rb") as fh:
        return tomllib.load(fh)


T = TypeVar("T")


def read_table(settings: Settings, key: str, read: Callable[[Path], T]) -> T:
    """``read`` the file of the setting ``nlp.<key>``. One that cannot be read or parsed is a SettingsError
    naming the setting and the file, in the words the dedup tables use: one line when the service starts, not
    a bare TOMLDecodeError or UnicodeDecodeError from the middle of start-up."""
    path = config_path(settings, key)
    try:
        return read(path)
    except FileNotFoundError as exc:
        raise SettingsError(f"nlp.{key}: file not found: {path}") from exc
    except UnicodeDecodeError as exc:
        raise SettingsError(f"nlp.{key}: {path} is not UTF-8 text (byte {exc.start}); save it as UTF-8") from exc
    except tomllib.TOMLDecodeError as exc:
        raise SettingsError(f"nlp.{key}: {path} is not valid TOML: {exc}") from exc
    except json.JSONDecodeError as exc:
        raise SettingsError(f"nlp.{key}: {path} is not valid JSON: {exc}") from exc
    except OSError as exc:
        raise SettingsError(f"nlp.{key}: {path}: {exc.strerror or exc}") from exc
    except (ValueError, TypeError, AttributeError) as exc:  # parsed, but not shaped as the table should be
        raise SettingsError(f"nlp.{key}: {path}: {exc}") from exc


def _taxonomy(path: Path) -> Taxonomy | None:
    if not path.is_file():
        return None
    data = json.loads(path.read_text(encoding="utf-8"))
    if not isinstance(data, dict):
        raise ValueError("taxonomy: expected a JSON object with a 'tree'")
    return Taxonomy.from_json(data)


def _department_table(path: Path) -> dict[str, str]:
    if not path.is_file():
        return {}
    table = load_toml_file(path).get("departments", {})
    if not isinstance(table, dict):
        raise ValueError("[departments] must be a table of category = \"department\"")
    return {str(k): str(v) for k, v in table.items()}


_TABLES = ("userdict", "taxonomy_file", "category_departments_file", "urgency_file")
_LOADED: dict[tuple, Suggester] = {}


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:
        return -1.0


def _cache_key(models_dir: Path, settings: Settings) -> tuple:
    models_dir = models_dir.resolve()
    files = [models_dir / h / f for h in HEADS for f in ("head.json", "coef.npz", "weights.npz", "vocab.txt")]
    tables = [config_path(settings, k) for k in _TABLES]
    cfg = settings["nlp"]
    return (str(models_dir), tuple(_mtime(f) for f in files), tuple((str(t), _mtime(t)) for t in tables),
            cfg["confirm_threshold"], cfg["confirm_margin"], cfg["department_fallback_below"],
            tuple(cfg["confirm_heads"]))


@dataclass
class Suggester:
    pipeline: TextPipeline
    heads: dict[str, LinearHead]
    urgency: UrgencyRules
    policy: ConfidencePolicy
    taxonomy: Taxonomy | None = None
    department_table: dict[str, str] = field(default_factory=dict)
    department_fallback_below: float = 0.0
    confirm_heads: tuple[str, ...] = ("category", "department")
    name: str = "linear-tfidf"

    @classmethod
    def load(cls, models_dir: Path, settings: Settings) -> Suggester:
        """Load once per process: an app restarted in the same process (tests, reloads) reuses the models.

        The key holds everything that shapes the result, file modification times included, so retrained
        models or edited tables are picked up; a loaded Suggester is never mutated, so sharing is safe.
        """
        key = _cache_key(models_dir, settings)
        cached = _LOADED.get(key)
        if cached is None:
            cached = cls._load(models_dir, settings)
            if len(_LOADED) >= 4:
                _LOADED.pop(next(iter(_LOADED)))
            _LOADED[key] = cached
        return cached

    @classmethod
    def _load(cls, models_dir: Path, settings: Settings) -> Suggester:
        cfg = settings["nlp"]
        # The small tables first: one that is broken is reported before the models take their seconds.
        tokenizer = read_table(settings, "userdict", Tokenizer)
        taxonomy = read_table(settings, "taxonomy_file", _taxonomy)
        table = read_table(settings, "category_departments_file", _department_table)
        urgency = read_table(settings, "urgency_file", lambda path: UrgencyRules.from_config(load_toml_file(path)))
        heads = {h: LinearHead.load(models_dir / h) for h in HEADS if (models_dir / h / "head.json").is_file()}
        if "category" not in heads:
            raise FileNotFoundError(f"no category model in {models_dir}")
        versions = ",".join(f"{h}:{heads[h].meta.get('version', '?')}" for h in heads)
        log.info("models loaded", extra={"event": "nlp_loaded", "heads": versions})
        return cls(pipeline=TextPipeline(tokenizer), heads=heads, urgency=urgency,
                   policy=ConfidencePolicy(cfg["confirm_threshold"], cfg["confirm_margin"]),
                   taxonomy=taxonomy, department_table=table,
                   department_fallback_below=float(cfg["department_fallback_below"]),
                   confirm_heads=tuple(cfg["confirm_heads"]), name=f"linear-tfidf[{versions}]")

    def _department(self, model_top: list[dict[str, Any]] | None,
                    category_top: list[dict[str, Any]]) -> dict[str, Any]:
        if model_top and model_top[0]["p"] >= self.department_fallback_below:
            return {"top": model_top, "source": "model"}
        # The category's default unit, with the category's probability: as sure as the category is.
        seen: dict[str, float] = {}
        for c in category_top:
            unit = self.department_table.get(c["label"])
            if unit and unit not in seen:
                seen[unit] = c["p"]
        if not seen and model_top:
            return {"top": model_top, "source": "model"}
        return {"top": [{"label": u, "p": p} for u, p in seen.items()][:3], "source": "table"}

    def __post_init__(self) -> None:
        self._needs_words = any(h.features.words for h in self.heads.values())
        groups: dict[tuple, list[str]] = {}
        for name, head in self.heads.items():
            groups.setdefault(_extraction(head.features), []).append(name)
        self._groups = [FeatureGroup([(n, self.heads[n]) for n in names]) for names in groups.values()]

    def _tops(self, doc: Doc) -> dict[str, list[dict[str, Any]]]:
        out: dict[str, list[dict[str, Any]]] = {}
        for group in self._groups:
            out.update(group.tops(doc))
        return out

    def suggest(self, text: str, title: str = "") -> dict[str, Any]:
        doc = self.pipeline.doc(title, text, words=self._needs_words)
        tops = self._tops(doc)
        category_top = tops["category"]
        category: dict[str, Any] = {"top": category_top}
        if self.taxonomy is not None and category_top:
            category["path"] = self.taxonomy.path(category_top[0]["label"], f"{doc.title} {doc.body}")
        department = self._department(tops.get("department"), category_top)
        rtype = {"top": tops.get("type", [])}
        urgency = self.urgency.assess(f"{doc.title} {doc.body}")
        tops = {"category": category_top, "department": department["top"], "type": rtype["top"]}
        needs, reasons = self.policy.decide({h: tops[h] for h in self.confirm_heads if h in tops},
                                            urgency["level"])
        return {"category": category, "department": department, "type": rtype, "urgency": urgency,
                "needs_confirmation": needs, "reasons": reasons, "model": self.name}
