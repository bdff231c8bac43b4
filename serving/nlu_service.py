"""The NLU model as the orchestrator sees it, shared by the Serve deployment and the
single-process server: batches of texts in, plain dicts out.

Repeated messages ("where is my order", "hi") are frequent in support traffic: a per-replica
least-recently-used cache keeps the model's decision for a message's folded text (case and
spacing folded, as the uncased encoder reads it), while slots are still extracted from each
message as written, so a cached decision never carries another message's order number."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from .config import NluConfig
from .workflow.orchestrator import Understanding


def cache_key(text: str) -> str:
    """The message as the uncased encoder reads it: case and runs of white space folded."""
    return " ".join(text.casefold().split())


@dataclass(frozen=True)
class Decision:
    intent: str
    confidence: float
    is_oos: bool


class DecisionCache:
    """A bounded LRU map of folded text → the model's decision, with hit and miss counts."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.hits = 0
        self.misses = 0
        self._entries: OrderedDict[str, Decision] = OrderedDict()

    def get(self, key: str) -> Decision | None:
        found = self._entries.get(key)
        if found is None:
            self.misses += 1
            return None
        self.hits += 1
        self._entries.move_to_end(key)
        return found

    def put(self, key: str, decision: Decision) -> None:
        if self.size <= 0:
            return
        self._entries[key] = decision
        self._entries.move_to_end(key)
        while len(self._entries) > self.size:
            self._entries.popitem(last=False)

    def __len__(self) -> int:
        return len(self._entries)


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
        self.cache = DecisionCache(config.cache_size)

    def classify(self, texts: Sequence[str]) -> list[dict[str, Any]]:
        keys = [cache_key(t) for t in texts]
        decisions: dict[str, Decision] = {}
        if self.cache.size:
            for key in dict.fromkeys(keys):  # distinct, in order
                if (found := self.cache.get(key)) is not None:
                    decisions[key] = found
        # One model row per distinct uncached message (a batch may repeat one).
        todo = {k: t for k, t in zip(keys, texts, strict=True) if k not in decisions}
        if todo:
            for key, p in zip(todo, self.model.predict(list(todo.values())), strict=True):
                decisions[key] = Decision(p.intent, p.confidence, p.is_oos)
                self.cache.put(key, decisions[key])
        out = []
        for key, text in zip(keys, texts, strict=True):
            decision = decisions[key]
            slots: dict[str, str] = {}
            for slot in self.model.slots.extract(text):
                slots.setdefault(slot.name, slot.value)  # the first mention wins
            out.append(
                {
                    "intent": decision.intent,
                    "confidence": decision.confidence,
                    "is_oos": decision.is_oos,
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
