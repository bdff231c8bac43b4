"""Corrections human agents made in the console, as the data plane logs them: texts the demo
model (tests/conftest.py `demo_nlu_model`) gets wrong, with the intent they mean. Measured in
tests/test_retrain_loop.py; the retraining tests (entrypoint and operator) reuse them."""

from __future__ import annotations

from typing import Any

# Texts the demo model misclassifies (what it predicted in one run beside each), with the
# intent a human agent corrected them to in the console.
CORRECTIONS = {
    "where is my money for the return I sent": ("return_item", "refund_request"),
    "my parcel was stolen from my porch": ("damaged_item", "track_package"),
    "put my order on hold until I'm back from holiday": ("cancel_order", "change_order"),
    "the courier left my parcel at the wrong house": ("oos", "track_package"),
}
ESCALATION = "I need to talk to someone about a charge from last year"


def feedback_record(text: str, predicted: str, corrected: str | None, n: int) -> dict[str, Any]:
    """What the data plane appends on a correction (or, corrected None, an escalation)."""
    return {
        "text": text,
        "corrected_intent": corrected,
        "predicted_intent": predicted,
        "confidence": 0.61,
        "trace_id": f"{n:032x}",
        "timestamp": f"2025-05-04T10:{n:02d}:00Z",
        "model_revision": "demo",
        "agent": "acme",
        "namespace": "default",
        "source": "correction" if corrected else "escalation",
        "session_id": f"session-{n}",
        "handoff_id": f"handoff-{n}",
        "by": "alice" if corrected else None,
    }


def feedback_jsonl(records: list[dict[str, Any]]) -> str:
    """Records as an export's JSON Lines."""
    import json

    return "".join(json.dumps(r) + "\n" for r in records)


def corrections_jsonl() -> str:
    """Every correction above, as one export."""
    return feedback_jsonl(
        [
            feedback_record(text, predicted, corrected, n)
            for n, (text, (predicted, corrected)) in enumerate(CORRECTIONS.items())
        ]
    )
