"""The category tree shipped in config/taxonomy.json and the path below a predicted first level."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from hotline.nlp.taxonomy import Taxonomy

TAXONOMY = Path(__file__).resolve().parent.parent / "config" / "taxonomy.json"


@pytest.fixture(scope="module")
def taxonomy() -> Taxonomy:
    return Taxonomy.from_json(json.loads(TAXONOMY.read_text(encoding="utf-8")))


def test_the_tree_has_the_three_levels_of_the_source(taxonomy: Taxonomy) -> None:
    assert len(taxonomy.tree) == 15
    assert sum(len(subs) for subs in taxonomy.tree.values()) == 118
    assert sum(len(l3) for subs in taxonomy.tree.values() for l3 in subs.values()) == 517
    assert {"城乡建设", "劳动和社会保障", "教育文体", "商贸旅游", "环境保护", "卫生计生", "交通运输"} <= \
        set(taxonomy.level1)


def test_path_follows_the_best_matching_node(taxonomy: Taxonomy) -> None:
    assert taxonomy.path("环境保护", "楼下烧烤店噪音污染严重") == ["环境保护", "环境污染", "噪音污染"]
    path = taxonomy.path("交通运输", "网约车司机绕路")
    assert path[:2] == ["交通运输", "出租车管理"] and path[2] == "网约车问题"
    for l1, l2, l3 in [taxonomy.path("城乡建设", "小区物业管理混乱")]:
        assert l3 in taxonomy.tree[l1][l2]


def test_no_matching_node_or_unknown_label_stops_at_level_one(taxonomy: Taxonomy) -> None:
    assert taxonomy.path("教育文体", "嗯嗯嗯") == ["教育文体"]
    assert taxonomy.path("不存在的类", "噪音污染") == ["不存在的类"]
    assert taxonomy.path("环境保护", "") == ["环境保护"]


def test_malformed_tree_is_refused() -> None:
    with pytest.raises(ValueError, match="tree"):
        Taxonomy.from_json({"levels": []})
    with pytest.raises(ValueError, match="level-2"):
        Taxonomy.from_json({"tree": {"城乡建设": ["x"]}})
