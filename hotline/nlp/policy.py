"""The confidence policy: the model only suggests; a call-taker confirms when it is unsure.

Like Rasa's fallback policy: a head is unsure when its top probability is below ``threshold`` or the
runner-up is within ``margin`` of it. Any unsure head, and any emergency, sends the case to a call-taker.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class ConfidencePolicy:
    threshold: float = 0.6
    margin: float = 0.15

    def __post_init__(self) -> None:
        if not 0.0 <= self.threshold <= 1.0 or not 0.0 <= self.margin <= 1.0:
            raise ValueError("confidence threshold and margin must lie in [0, 1]")

    def head_reasons(self, head: str, top: list[dict[str, Any]]) -> list[str]:
        if not top:
            return [f"{head}:no_prediction"]
        p1 = float(top[0]["p"])
        p2 = float(top[1]["p"]) if len(top) > 1 else 0.0
        reasons = []
        if p1 < self.threshold:
            reasons.append(f"{head}:low_confidence")
        if p1 - p2 < self.margin:
            reasons.append(f"{head}:close_call")
        return reasons

    def decide(self, heads: dict[str, list[dict[str, Any]]], urgency_level: str) -> tuple[bool, list[str]]:
        """(needs_confirmation, reasons) over the heads' top-k lists."""
        reasons: list[str] = []
        for head, top in heads.items():
            reasons.extend(self.head_reasons(head, top))
        if urgency_level == "emergency":
            reasons.append("urgency:emergency")
        return bool(reasons), reasons
