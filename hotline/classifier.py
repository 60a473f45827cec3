"""The classifier the intake pipeline calls: loaded once at start-up from the shipped models.

A suggestion is a plain dict:
    {"category":   {"top": [{"label": str, "p": float} x3], "path": [label1, label2, label3]?},
     "department": {"top": [...], "source": "model" | "table"},
     "type":       {"top": [...]},
     "urgency":    {"level": "emergency" | "urgent" | "normal", "reasons": [str], "advice": str},
     "needs_confirmation": bool, "reasons": [str], "model": str}
"""

from __future__ import annotations

import logging
from typing import Any, Protocol

from hotline.settings import Settings

log = logging.getLogger("hotline.classifier")


class Classifier(Protocol):
    name: str

    def suggest(self, text: str) -> dict[str, Any]: ...


class NoModelClassifier:
    """Used only when no trained model is installed: every case goes to a call-taker."""

    name = "none"

    def suggest(self, text: str) -> dict[str, Any]:
        return {
            "category": {"top": []},
            "department": {"top": []},
            "type": {"top": []},
            "urgency": {"level": "normal", "reasons": [], "advice": ""},
            "needs_confirmation": True,
            "reasons": ["no_model"],
            "model": self.name,
        }


def load_classifier(settings: Settings) -> Classifier:
    models_dir = settings.resolve_path("nlp.models_dir")
    from hotline.nlp.suggest import Suggester

    if not (models_dir / "category" / "head.json").is_file():
        log.warning("no trained models in %s; all cases need confirmation", models_dir)
        return NoModelClassifier()
    return Suggester.load(models_dir, settings)
