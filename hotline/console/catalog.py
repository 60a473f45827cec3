"""What a call-taker can pick from: the category tree, the departments and the request types.

Read from the files the classifier uses (nlp.taxonomy_file, nlp.category_departments_file, the label
lists of the trained heads in nlp.models_dir), reloaded when one of them changes. Every file is
optional: without them the console accepts any label a call-taker types.
"""

from __future__ import annotations

import json
import logging
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hotline.settings import PROJECT_ROOT, Settings

log = logging.getLogger("hotline.console")

# Request types of 12345 letters (the type head's labels when no model is installed).
DEFAULT_TYPES = ["投诉", "咨询", "求助", "建议", "举报", "表扬"]


@dataclass
class Catalog:
    # Every node of the tree: {"label", "path": [l1, l2?, l3?], "level"}; category = path[0] (the level the
    # models predict), the full path is kept as category_path.
    categories: list[dict[str, Any]] = field(default_factory=list)
    departments: list[str] = field(default_factory=list)
    types: list[str] = field(default_factory=list)
    default_department: dict[str, str] = field(default_factory=dict)

    def as_json(self) -> dict[str, Any]:
        return {"categories": self.categories, "departments": self.departments, "types": self.types,
                "default_department": self.default_department}

    @property
    def category_paths(self) -> set[tuple[str, ...]]:
        return {tuple(c["path"]) for c in self.categories}


def _path(settings: Settings, key: str, default: str) -> Path:
    try:
        value = settings.get(key)
    except KeyError:
        value = default
    path = Path(str(value)).expanduser()
    if path.is_absolute():
        return path
    beside = settings.config_dir.parent / path
    return beside if beside.exists() else PROJECT_ROOT / path


def _tree_nodes(tree: Any) -> list[dict[str, Any]]:
    """Accepts {"tree": {l1: {l2: [l3]}}} and a bare {l1: {l2: [l3]}}."""
    if isinstance(tree, dict) and isinstance(tree.get("tree"), dict):
        tree = tree["tree"]
    out: list[dict[str, Any]] = []
    if not isinstance(tree, dict):
        return out
    for l1, subs in tree.items():
        out.append({"label": str(l1), "path": [str(l1)], "level": 1})
        if isinstance(subs, dict):
            for l2, l3s in subs.items():
                out.append({"label": str(l2), "path": [str(l1), str(l2)], "level": 2})
                for l3 in l3s if isinstance(l3s, list) else []:
                    out.append({"label": str(l3), "path": [str(l1), str(l2), str(l3)], "level": 3})
    return out


def _head_labels(models_dir: Path, head: str) -> list[str]:
    path = models_dir / head / "head.json"
    try:
        labels = json.loads(path.read_text(encoding="utf-8")).get("labels", [])
    except (OSError, ValueError, AttributeError):
        return []
    return [str(x) for x in labels if isinstance(x, str)]


class CatalogSource:
    """Loads the catalog once and again whenever one of its files changes (checked on use)."""

    def __init__(self, settings: Settings) -> None:
        models_dir = _path(settings, "nlp.models_dir", "models")
        self.taxonomy_file = _path(settings, "nlp.taxonomy_file", "config/taxonomy.json")
        self.table_file = _path(settings, "nlp.category_departments_file", "config/category_departments.toml")
        self.head_files = {h: models_dir / h / "head.json" for h in ("category", "department", "type")}
        self._stamp: tuple[float, ...] | None = None
        self._catalog = Catalog()

    def _mtimes(self) -> tuple[float, ...]:
        out = []
        for path in (self.taxonomy_file, self.table_file, *self.head_files.values()):
            try:
                out.append(path.stat().st_mtime)
            except OSError:
                out.append(0.0)
        return tuple(out)

    def get(self) -> Catalog:
        stamp = self._mtimes()
        if stamp != self._stamp:
            self._catalog = self._load()
            self._stamp = stamp
        return self._catalog

    def _load(self) -> Catalog:
        nodes: list[dict[str, Any]] = []
        try:
            nodes = _tree_nodes(json.loads(self.taxonomy_file.read_text(encoding="utf-8")))
        except FileNotFoundError:
            pass
        except (OSError, ValueError) as exc:
            log.warning("category tree %s not readable: %s", self.taxonomy_file, exc)
        known = {tuple(n["path"]) for n in nodes}
        models_dir = self.head_files["category"].parent.parent
        for label in _head_labels(models_dir, "category"):
            if (label,) not in known:
                nodes.append({"label": label, "path": [label], "level": 1})
        table: dict[str, str] = {}
        try:
            with self.table_file.open("rb") as fh:
                raw = tomllib.load(fh).get("departments", {})
            table = {str(k): str(v) for k, v in raw.items() if isinstance(v, str)}
        except FileNotFoundError:
            pass
        except (OSError, tomllib.TOMLDecodeError) as exc:
            log.warning("department table %s not readable: %s", self.table_file, exc)
        departments = list(dict.fromkeys([*_head_labels(models_dir, "department"), *table.values()]))
        types = _head_labels(models_dir, "type") or list(DEFAULT_TYPES)
        return Catalog(categories=nodes, departments=departments, types=types, default_department=table)
