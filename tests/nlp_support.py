"""Small labelled data sets for the NLP tests (made up here; the shared data never enters the repo)."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

TOPICS = {
    "供水": ["停水", "自来水", "水管", "水压低", "水费", "漏水", "水表"],
    "教育": ["学校", "老师", "补课", "学生", "幼儿园", "学费", "入学"],
    "交通": ["公交车", "红绿灯", "堵车", "停车位", "司机", "站点", "线路"],
}
FILLER = ["我们", "小区", "附近", "最近", "一直", "希望", "有关部门", "尽快", "解决", "问题", "反映", "情况"]


def make_rows(n_per_label: int, seed: int = 1, label: str = "label1") -> list[dict]:
    rng = random.Random(seed)
    rows = []
    for name, words in TOPICS.items():
        for i in range(n_per_label):
            picked = rng.sample(words, 3) + rng.sample(FILLER, 4)
            rng.shuffle(picked)
            rows.append({"id": f"{name}-{seed}-{i}", "title": f"{picked[0]}的问题", "text": "，".join(picked),
                         label: name})
    rng.shuffle(rows)
    return rows


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


def count_recounts(monkeypatch: Any) -> list[str]:
    """The texts of duplicate candidates whose bigrams get counted from here on (none kept for them), wherever
    that happens: in the kept-counts path or inside scoring."""
    from hotline import fingerprints
    from hotline.nlp import dedup

    counted: list[str] = []
    real = dedup.with_counts

    def spy(others: list[Any], idf: Any) -> list[Any]:
        counted.extend(o.text for o in others if o.counted is None)
        return real(others, idf)

    monkeypatch.setattr(fingerprints, "with_counts", spy)
    monkeypatch.setattr(dedup, "with_counts", spy)
    return counted
