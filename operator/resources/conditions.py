"""Status conditions following the Kubernetes API conventions, as pure functions.

A condition's `lastTransitionTime` moves only when its status flips, so recomputing the same
facts yields an identical status and no write.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

Status = Literal["True", "False", "Unknown"]

READY = "Ready"
PROGRESSING = "Progressing"
DEGRADED = "Degraded"


@dataclass(frozen=True)
class Check:
    """The verdict on one part of a resource, before it becomes a condition."""

    type: str
    status: Status
    reason: str
    message: str

    @property
    def ok(self) -> bool:
        return self.status == "True"


def now_rfc3339() -> str:
    return datetime.now(UTC).replace(microsecond=0).strftime("%Y-%m-%dT%H:%M:%SZ")


def merge_conditions(
    previous: list[dict[str, Any]], checks: list[Check], generation: int, now: str
) -> list[dict[str, Any]]:
    """Conditions for `checks`, keeping each one's transition time while its status holds.
    Conditions of types not in `checks` are kept as they were (their observedGeneration tells
    readers how fresh they are)."""
    by_type = {c.get("type"): c for c in previous}
    merged = []
    for check in checks:
        old = by_type.pop(check.type, None)
        unchanged = old is not None and old.get("status") == check.status
        merged.append(
            {
                "type": check.type,
                "status": check.status,
                "reason": check.reason,
                "message": check.message,
                "lastTransitionTime": old["lastTransitionTime"] if unchanged and old else now,
                "observedGeneration": generation,
            }
        )
    merged.extend(by_type.values())
    return merged


def summarize(
    parts: list[Check], *, progressing_reasons: frozenset[str]
) -> tuple[Check, Check, Check, str]:
    """`Ready`, `Progressing`, `Degraded` and the phase from the per-part checks.

    A part that is not yet True counts as progressing when its reason says it is on its way
    (e.g. KubeRay still deploying), and as degraded otherwise. The first failing part names
    the reason and message of `Ready`, so `kubectl get` shows what is wrong."""
    failing = [p for p in parts if not p.ok]
    if not failing:
        return (
            Check(READY, "True", "Ready", "All parts are ready"),
            Check(PROGRESSING, "False", "Stable", "Nothing is changing"),
            Check(DEGRADED, "False", "Healthy", "No part is degraded"),
            "Ready",
        )
    first = failing[0]
    waiting = [p for p in failing if p.reason in progressing_reasons or p.status == "Unknown"]
    broken = [p for p in failing if p not in waiting]
    ready = Check(READY, "False", first.reason, first.message)
    progressing = (
        Check(PROGRESSING, "True", waiting[0].reason, waiting[0].message)
        if waiting
        else Check(PROGRESSING, "False", "Stalled", "Waiting for a problem to be fixed")
    )
    degraded = (
        Check(DEGRADED, "True", broken[0].reason, broken[0].message)
        if broken
        else Check(DEGRADED, "False", "Healthy", "No part is degraded")
    )
    return ready, progressing, degraded, "Degraded" if broken else "Progressing"


def failed_spec(reason: str, message: str) -> tuple[list[Check], str]:
    """Summary conditions for a spec the operator cannot act on (invalid, or a reference that
    does not resolve): the phase is `Failed` until the user or a missing object fixes it."""
    return (
        [
            Check(READY, "False", reason, message),
            Check(PROGRESSING, "False", reason, "Waiting for the spec or a referenced object"),
            Check(DEGRADED, "True", reason, message),
        ],
        "Failed",
    )


def condition(conditions: list[dict[str, Any]] | None, type_: str) -> dict[str, Any] | None:
    return next((c for c in conditions or [] if c.get("type") == type_), None)
