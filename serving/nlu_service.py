"""The NLU model as the orchestrator sees it, shared by the Serve deployment and the
single-process server: batches of texts in, plain dicts out (they cross Ray handles)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from .config import NluConfig
from .workflow.orchestrator import Understanding


class NluService:
    def __init__(self, config: NluConfig, num_threads: int = 1) -> None:
        from .model_store import resolve
        from .nlu.runtime import IntentClassifier

        self.config = config
        # An s3:// model is downloaded and verified here: a missing or corrupt one raises, which
        # fails the replica (and the Serve application) with the URI and the file in the message.
        path = resolve(config.model_path, config.storage)
        self.model = IntentClassifier.load(
            path, quantization=config.quantization, num_threads=num_threads
        )
        self.extractable = sorted(p.name for p in self.model.slots.patterns)

    def classify(self, texts: Sequence[str]) -> list[dict[str, Any]]:
        out = []
        for p in self.model.predict(list(texts)):
            slots: dict[str, str] = {}
            for slot in p.slots:
                slots.setdefault(slot.name, slot.value)  # the first mention wins
            out.append(
                {
                    "intent": p.intent,
                    "confidence": p.confidence,
                    "is_oos": p.is_oos,
                    "slots": slots,
                    "extractable": self.extractable,
                }
            )
        return out


def understanding(raw: dict[str, Any]) -> Understanding:
    return Understanding(
        intent=raw["intent"],
        confidence=float(raw["confidence"]),
        is_oos=bool(raw["is_oos"]),
        slots=dict(raw["slots"]),
        extractable=frozenset(raw["extractable"]),
    )
