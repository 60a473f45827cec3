"""The confidence policy and the urgency rules (emergencies → 110/119/120, utilities → urgent)."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from hotline.nlp.clean import for_model
from hotline.nlp.policy import ConfidencePolicy
from hotline.nlp.urgency import UrgencyRules

CONFIG = Path(__file__).resolve().parent.parent / "config"


@pytest.fixture(scope="module")
def rules() -> UrgencyRules:
    with (CONFIG / "urgency.toml").open("rb") as fh:
        return UrgencyRules.from_config(tomllib.load(fh))


def top(*ps: float) -> list[dict]:
    return [{"label": f"l{i}", "p": p} for i, p in enumerate(ps)]


def test_confident_and_clear_needs_no_confirmation() -> None:
    policy = ConfidencePolicy(threshold=0.6, margin=0.15)
    assert policy.decide({"category": top(0.9, 0.05, 0.05), "department": top(0.7, 0.2, 0.1)}, "normal") == \
        (False, [])


def test_low_top_probability_needs_confirmation() -> None:
    policy = ConfidencePolicy(threshold=0.6, margin=0.15)
    needs, reasons = policy.decide({"category": top(0.55, 0.2, 0.1)}, "normal")
    assert needs and reasons == ["category:low_confidence"]


def test_close_runner_up_needs_confirmation_even_above_threshold() -> None:
    policy = ConfidencePolicy(threshold=0.4, margin=0.15)
    needs, reasons = policy.decide({"department": top(0.5, 0.4, 0.1)}, "normal")
    assert needs and reasons == ["department:close_call"]
    # Exactly at the margin is no longer close.
    assert policy.decide({"department": top(0.55, 0.3, 0.15)}, "normal") == (False, [])


def test_thresholds_come_from_the_policy_not_constants() -> None:
    strict = ConfidencePolicy(threshold=0.95, margin=0.0)
    lax = ConfidencePolicy(threshold=0.1, margin=0.0)
    heads = {"category": top(0.9, 0.1)}
    assert strict.decide(heads, "normal")[0] is True
    assert lax.decide(heads, "normal")[0] is False


def test_emergency_and_missing_predictions_always_need_a_call_taker() -> None:
    policy = ConfidencePolicy()
    assert policy.decide({"category": top(0.99, 0.01)}, "emergency") == (True, ["urgency:emergency"])
    assert policy.decide({"department": []}, "normal") == (True, ["department:no_prediction"])


def test_policy_rejects_out_of_range_settings() -> None:
    with pytest.raises(ValueError):
        ConfidencePolicy(threshold=1.5)
    with pytest.raises(ValueError):
        ConfidencePolicy(margin=-0.1)


@pytest.mark.parametrize(("text", "group"), [
    ("楼道里有很大的煤气味，邻居家可能燃气泄漏了", "gas_leak"),
    ("对面楼着火了，冒着浓烟", "fire"),
    ("电梯困人了，我妈妈被困在电梯里半小时", "trapped"),
    ("有人在小区门口持刀打人", "violence"),
    ("老人晕倒在路边，不省人事", "medical"),
    ("工地围墙倒塌砸到了人", "collapse"),
])
def test_emergencies_tell_the_citizen_to_call_110_119_120(rules: UrgencyRules, text: str, group: str) -> None:
    result = rules.assess(for_model(text))
    assert result["level"] == "emergency"
    assert any(r.startswith(group + ":") for r in result["reasons"]), result
    assert all(n in result["advice"] for n in ("110", "119", "120"))
    # Staff read the rule's Chinese name with the words that matched, never the rule's id.
    assert len(result["reason_labels"]) == len(result["reasons"])
    assert not any(group in label for label in result["reason_labels"])


@pytest.mark.parametrize(("text", "group"), [
    ("我们小区停水三天了，一直没有通知", "water_outage"),
    ("整栋楼停电了，冰箱里的东西都坏了", "power_outage"),
    ("暖气不热，家里室温只有十二度", "heating"),
    ("燃气停供两天了，做不了饭", "gas_supply"),
    ("路口井盖丢失，很危险", "hazard"),
])
def test_time_critical_utilities_are_urgent(rules: UrgencyRules, text: str, group: str) -> None:
    result = rules.assess(for_model(text))
    assert result["level"] == "urgent", result
    assert any(r.startswith(group + ":") for r in result["reasons"])


@pytest.mark.parametrize("text", [
    "小区路灯坏了一个月没人修",
    "学校组织消防演练，防止火灾发生，建议多搞",
    "去年着火的那栋楼到现在还没有修好",
    "咨询一下社保卡怎么补办",
    "",
])
def test_ordinary_and_negated_texts_are_normal(rules: UrgencyRules, text: str) -> None:
    assert rules.assess(for_model(text)) == {"level": "normal", "reasons": [], "reason_labels": [], "advice": ""}


def test_traditional_and_full_width_emergencies_are_found(rules: UrgencyRules) -> None:
    assert rules.assess(for_model("ＸＸ路有人被困，快來人"))["level"] == "emergency"


def test_reason_labels_name_the_group_and_quote_the_words(rules: UrgencyRules) -> None:
    result = rules.assess(for_model("老人晕倒在路边，大出血"))
    assert result["reasons"][0].startswith("medical:")
    words = result["reasons"][0].partition(":")[2]
    assert result["reason_labels"][0] == f"医疗急救「{words}」"
    # A group the labels table does not name keeps its id, so a city's new rule still shows.
    # Words that already say what the rule is are not repeated (燃气泄漏, not 燃气泄漏「燃气泄漏」).
    assert rules.assess(for_model("楼道里燃气泄漏了"))["reason_labels"] == ["燃气泄漏"]
    bare = UrgencyRules.from_config({"emergency": {"groups": {"flood": ["洪水"]}}})
    assert bare.assess("洪水进村了")["reason_labels"] == ["flood「洪水」"]


def test_every_shipped_rule_group_has_a_label(rules: UrgencyRules) -> None:
    assert set(rules.emergency) | set(rules.urgent) <= set(rules.labels)


def test_malformed_urgency_table_is_refused() -> None:
    with pytest.raises(ValueError, match=r"labels"):
        UrgencyRules.from_config({"labels": {"fire": 3}})
    with pytest.raises(ValueError, match=r"emergency\.groups\.fire"):
        UrgencyRules.from_config({"emergency": {"groups": {"fire": "着火"}}})
    with pytest.raises(ValueError, match=r"urgent\.groups"):
        UrgencyRules.from_config({"urgent": {"groups": ["停水"]}})
