"""Urgency by rules: emergencies (call 110/119/120 now) and time-critical utilities.

Keyword rules rather than a model: emergencies are rare in letters (nothing to learn from) and a missed
one is the costliest error, so the rules are deliberately broad and the tables live in
``config/urgency.toml`` where a city can extend them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

EMERGENCY = "emergency"
URGENT = "urgent"
NORMAL = "normal"
DEFAULT_EMERGENCY_ADVICE = "情况紧急，请立即拨打110（报警）、119（火警）、120（急救）！"
NEGATION_WINDOW = 4


@dataclass
class UrgencyRules:
    emergency: dict[str, list[str]]
    urgent: dict[str, list[str]]
    negations: list[str] = field(default_factory=list)
    emergency_advice: str = DEFAULT_EMERGENCY_ADVICE
    urgent_advice: str = ""
    labels: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self._emergency = [(g, _alternation(ws)) for g, ws in self.emergency.items() if ws]
        self._urgent = [(g, _alternation(ws)) for g, ws in self.urgent.items() if ws]
        self._negation = _alternation(self.negations) if self.negations else None

    @classmethod
    def from_config(cls, table: dict[str, Any]) -> UrgencyRules:
        """From the parsed ``config/urgency.toml``; a malformed table raises ValueError naming the key."""
        em = table.get("emergency") or {}
        ur = table.get("urgent") or {}
        return cls(
            emergency=_groups(em.get("groups"), "emergency.groups"),
            urgent=_groups(ur.get("groups"), "urgent.groups"),
            negations=_words((em.get("negations") or {}).get("words", []), "emergency.negations.words"),
            emergency_advice=str(em.get("advice") or DEFAULT_EMERGENCY_ADVICE),
            urgent_advice=str(ur.get("advice") or ""),
            labels=_labels(table.get("labels")),
        )

    def _hits(self, text: str, groups: list[tuple[str, re.Pattern[str]]], negate: bool) -> list[str]:
        reasons = []
        for name, pattern in groups:
            for m in pattern.finditer(text):
                if negate and self._negated(text, m.start()):
                    continue
                reasons.append(f"{name}:{m.group(0)}")
                break
        return reasons

    def _negated(self, text: str, start: int) -> bool:
        if self._negation is None:
            return False
        window = text[max(0, start - NEGATION_WINDOW - 4) : start]
        return any(m.end() >= len(window) - NEGATION_WINDOW for m in self._negation.finditer(window))

    def assess(self, cleaned: str) -> dict[str, Any]:
        """``{"level", "reasons", "reason_labels", "advice"}`` for cleaned (simplified, lower-case) text.

        A reason is ``group:matched words`` (stable, for software); its label is the staff wording.
        """
        reasons = self._hits(cleaned, self._emergency, negate=True)
        if reasons:
            return {"level": EMERGENCY, "reasons": reasons, "reason_labels": self._labelled(reasons),
                    "advice": self.emergency_advice}
        reasons = self._hits(cleaned, self._urgent, negate=False)
        if reasons:
            return {"level": URGENT, "reasons": reasons, "reason_labels": self._labelled(reasons),
                    "advice": self.urgent_advice}
        return {"level": NORMAL, "reasons": [], "reason_labels": [], "advice": ""}

    def _labelled(self, reasons: list[str]) -> list[str]:
        out = []
        for reason in reasons:
            group, _, words = reason.partition(":")
            label = self.labels.get(group, group)
            out.append(words if label in words else f"{label}「{words}」")
        return out


def _alternation(words: list[str]) -> re.Pattern[str]:
    # Longest first so that 燃气泄漏 wins over a shorter keyword at the same place.
    return re.compile("|".join(re.escape(w) for w in sorted(set(words), key=len, reverse=True)))


def _words(value: Any, key: str) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(w, str) and w for w in value):
        raise ValueError(f"{key}: expected a list of non-empty strings")
    return list(value)


def _labels(value: Any) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, dict) or not all(isinstance(v, str) and v for v in value.values()):
        raise ValueError("labels: expected a table of non-empty strings")
    return {str(k): v for k, v in value.items()}


def _groups(value: Any, key: str) -> dict[str, list[str]]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ValueError(f"{key}: expected a table of keyword lists")
    return {str(name): _words(words, f"{key}.{name}") for name, words in value.items()}
