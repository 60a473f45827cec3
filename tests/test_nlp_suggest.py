"""The suggestion the intake pipeline stores, from the shipped models in models/."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from aiohttp.test_utils import TestClient

from hotline.classifier import NoModelClassifier, load_classifier
from hotline.nlp.suggest import Suggester
from hotline.settings import PROJECT_ROOT, Settings, load_settings

MODELS = PROJECT_ROOT / "models"
CATEGORIES = {"城乡建设", "劳动和社会保障", "教育文体", "商贸旅游", "环境保护", "卫生计生", "交通运输"}


@pytest.fixture(scope="module")
def suggester() -> Suggester:
    return Suggester.load(MODELS, load_settings(env={}))


def check_top(top: list[dict]) -> None:
    assert len(top) == 3
    assert all(set(t) == {"label", "p"} and isinstance(t["label"], str) and 0 <= t["p"] <= 1 for t in top)
    assert top[0]["p"] >= top[1]["p"] >= top[2]["p"]


def test_shipped_models_are_small_and_complete() -> None:
    for head in ("category", "department", "type"):
        files = list((MODELS / head).iterdir())
        assert {f.name for f in files} == {"head.json", "vocab.txt", "weights.npz", "coef.npz"}
        assert sum(f.stat().st_size for f in files) < 8_000_000, head


def test_suggestion_has_exactly_the_documented_shape(suggester: Suggester) -> None:
    s = suggester.suggest("小区物业乱收停车费，业主不同意还被保安拦着不让进")
    assert set(s) == {"category", "department", "type", "urgency", "needs_confirmation", "reasons", "model"}
    check_top(s["category"]["top"])
    check_top(s["department"]["top"])
    check_top(s["type"]["top"])
    assert {t["label"] for t in s["category"]["top"]} <= CATEGORIES
    assert s["category"]["path"][0] == s["category"]["top"][0]["label"]
    assert s["department"]["source"] == "model"
    assert {t["label"] for t in s["type"]["top"]} <= {"投诉", "咨询", "求助", "建议", "举报", "表扬"}
    assert s["urgency"] == {"level": "normal", "reasons": [], "reason_labels": [], "advice": ""}
    assert isinstance(s["needs_confirmation"], bool) and isinstance(s["reasons"], list)
    assert s["model"] == suggester.name and s["model"].startswith("linear-tfidf")
    json.dumps(s)  # stored as JSON with the case


@pytest.mark.parametrize(("text", "category"), [
    ("公司拖欠工资半年，老板跑路，社保也没交", "劳动和社会保障"),
    ("学校强制学生参加有偿补课，收费很高", "教育文体"),
    ("化工厂夜间偷排废水，河水发黑发臭", "环境保护"),
    ("医院看病收费不透明，乱开检查", "卫生计生"),
    ("出租车司机拒载，还故意绕路多收钱", "交通运输"),
])
def test_clear_complaints_get_the_right_category(suggester: Suggester, text: str, category: str) -> None:
    assert suggester.suggest(text)["category"]["top"][0]["label"] == category


def test_emergency_advice_and_confirmation(suggester: Suggester) -> None:
    s = suggester.suggest("我家楼道里煤气泄漏了，味道很大，怎么办")
    assert s["urgency"]["level"] == "emergency"
    assert all(n in s["urgency"]["advice"] for n in ("110", "119", "120"))
    assert s["needs_confirmation"] is True and "urgency:emergency" in s["reasons"]


def test_confidence_settings_drive_needs_confirmation(tmp_path: Path) -> None:
    text = "公司拖欠工资半年，老板跑路，社保也没交"
    lax = Suggester.load(MODELS, load_settings(overrides={"nlp": {"confirm_threshold": 0.0, "confirm_margin": 0.0}},
                                               env={}))
    strict = Suggester.load(MODELS, load_settings(overrides={"nlp": {"confirm_threshold": 1.0}}, env={}))
    assert lax.suggest(text)["needs_confirmation"] is False
    s = strict.suggest(text)
    assert s["needs_confirmation"] is True and "category:low_confidence" in s["reasons"]


def test_department_falls_back_to_the_category_table(tmp_path: Path) -> None:
    only_category = tmp_path / "models"
    only_category.mkdir()
    (only_category / "category").symlink_to(MODELS / "category")
    s = Suggester.load(only_category, load_settings(env={})).suggest("学校强制学生参加有偿补课")
    assert s["department"]["source"] == "table"
    assert s["department"]["top"][0] == {"label": "教育局", "p": s["category"]["top"][0]["p"]}
    assert s["type"] == {"top": []}
    # With a department model but a threshold it cannot reach, the table is used too.
    forced = Suggester.load(MODELS, load_settings(overrides={"nlp": {"department_fallback_below": 1.01}}, env={}))
    assert forced.suggest("学校强制学生参加有偿补课")["department"]["source"] == "table"


def test_hostile_text_never_crashes(suggester: Suggester) -> None:
    for text in ["", "。。。", "😀" * 500, "a" * 10_000, "\x00\x01\u202e", "小區電話" * 3000]:
        s = suggester.suggest(text)
        assert len(s["category"]["top"]) == 3


def test_load_classifier_without_models_is_the_no_model_classifier(tmp_path: Path) -> None:
    settings = load_settings(overrides={"nlp": {"models_dir": str(tmp_path)}}, env={})
    assert isinstance(load_classifier(settings), NoModelClassifier)
    assert isinstance(load_classifier(load_settings(env={})), Suggester)


async def test_intake_fills_the_suggestion_from_the_shipped_models(client: TestClient, settings: Settings) -> None:
    resp = await client.post("/api/v1/complaints", json={"text": "楼下饭店油烟和噪音扰民，每天到半夜"})
    assert resp.status == 201
    s = (await resp.json())["suggestion"]
    for head in ("category", "department", "type"):
        check_top(s[head]["top"])
    assert s["model"].startswith("linear-tfidf")
    ready = await (await client.get("/readyz")).json()
    assert ready["classifier"].startswith("linear-tfidf")
    resp = await client.post("/api/v1/complaints", json={"text": "隔壁着火了，有人被困在楼上"})
    body = await resp.json()
    assert body["suggestion"]["urgency"]["level"] == "emergency"
    assert body["suggestion"]["needs_confirmation"] is True


def test_models_load_once_per_process_and_reload_when_files_change(tmp_path: Path) -> None:
    import os
    import shutil

    settings = load_settings(env={})
    assert Suggester.load(MODELS, settings) is Suggester.load(MODELS, load_settings(env={}))
    other = load_settings(overrides={"nlp": {"confirm_threshold": 0.9}}, env={})
    assert Suggester.load(MODELS, other) is not Suggester.load(MODELS, settings)
    copy = tmp_path / "models"
    shutil.copytree(MODELS, copy)
    first = Suggester.load(copy, settings)
    head = copy / "type" / "head.json"
    os.utime(head, (head.stat().st_atime, head.stat().st_mtime + 10))
    assert Suggester.load(copy, settings) is not first
