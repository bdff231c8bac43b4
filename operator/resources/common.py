"""What the per-kind reconcilers share: the status write, events on transitions and the outcome
counted in metrics. One reconcile at a time per object is the caller's promise (one worker per
object, `operator/workers.py`), so nothing here locks."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from ..indexes import ChildView
from ..kube import Kube
from .conditions import READY, Check, condition, failed_spec, merge_conditions, now_rfc3339


def apply_children(kube: Kube, objects: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Server-side apply each child; the live objects by kind."""
    return {obj["kind"]: kube.apply(obj) for obj in objects}


@dataclass(frozen=True)
class Desired:
    """What one reconcile arrived at: the status to write, and the children as the API server
    answered their apply (so the caller knows which child events are only echoes of it)."""

    status: dict[str, Any]
    children: frozenset[ChildView] = frozenset()
    requeue_after: float | None = None
    """Reconcile again this soon even if nothing changes (a scheduled time)."""

    @classmethod
    def applied(cls, status: dict[str, Any], live: dict[str, dict[str, Any]]) -> Desired:
        return cls(status, frozenset(ChildView.of(child) for child in live.values()))


class EventRecorder(Protocol):
    def __call__(self, body: dict[str, Any], *, type: str, reason: str, message: str) -> None: ...


@dataclass(frozen=True)
class Outcome:
    """How a reconcile ended, for metrics and for the caller's retry decision."""

    result: str  # "ready", "progressing", "degraded", "failed", "error"
    ready: bool
    status_written: bool
    children: frozenset[ChildView] = frozenset()
    requeue_after: float | None = None


def build_status(
    body: dict[str, Any], checks: list[Check], phase: str, extra: dict[str, Any]
) -> dict[str, Any]:
    old = body.get("status") or {}
    generation = int(body["metadata"].get("generation") or 0)
    status = {
        "observedGeneration": generation,
        "phase": phase,
        "conditions": merge_conditions(
            list(old.get("conditions") or []), checks, generation, now_rfc3339()
        ),
    }
    status.update({k: v for k, v in extra.items() if v is not None})
    return status


def write_status(
    kube: Kube,
    body: dict[str, Any],
    status: dict[str, Any],
    record: EventRecorder | None,
    advisories: tuple[str, ...] = (),
) -> bool:
    """Patch the status only when it differs, and post an Event when `Ready` changes reason
    (unless `record` is None: the caller posts its own), and a Warning when one of the
    `advisories` conditions turns False or says something new while False (unless the `Ready`
    Event just said the same). Fields that disappeared are removed (merge patch with null)."""
    old = body.get("status") or {}
    if _comparable(old) == _comparable(status):
        return False
    patch: dict[str, Any] = {k: None for k in old if k not in status}
    patch.update(status)
    meta = body["metadata"]
    kube.patch_status(body["apiVersion"], body["kind"], meta["namespace"], meta["name"], patch)
    if record is None:
        return True
    before, after = condition(old.get("conditions"), READY), condition(status["conditions"], READY)
    posted: set[tuple[str, str]] = set()
    if after and (
        before is None or (before["status"], before["reason"]) != (after["status"], after["reason"])
    ):
        posted.add((after["reason"], after["message"]))
        record(
            body,
            # On its way (deploying, rolling out) is normal; only degraded or failed warns.
            type="Warning" if status.get("phase") in ("Degraded", "Failed") else "Normal",
            reason=after["reason"],
            message=after["message"],
        )
    for type_ in advisories:
        before, after = (
            condition(old.get("conditions"), type_),
            condition(status["conditions"], type_),
        )
        if (
            after
            and after["status"] == "False"
            and (
                before is None
                or (before["status"], before["message"]) != ("False", after["message"])
            )
            and (after["reason"], after["message"]) not in posted
        ):
            posted.add((after["reason"], after["message"]))
            record(body, type="Warning", reason=after["reason"], message=after["message"])
    return True


def _comparable(status: dict[str, Any]) -> dict[str, Any]:
    """Status without the keys only kopf owns, so its bookkeeping never forces a write."""
    return {k: v for k, v in status.items() if k != "kopf"}


DesiredStatus = Callable[[Kube, dict[str, Any]], Desired]


def reconcile_object(
    kind: str,
    desired_status: DesiredStatus,
    kube: Kube,
    body: dict[str, Any],
    record: EventRecorder,
    *,
    fresh: bool = False,
    transition_events: bool = True,
    advisories: tuple[str, ...] = (),
) -> Outcome:
    """Apply what `desired_status` renders (it does the applying) and write the status it
    returns. `fresh` re-reads the object first: a state machine must not step twice from a
    status that its own last write has already replaced."""
    meta = body["metadata"]
    if fresh:
        current = kube.get(body["apiVersion"], kind, meta["namespace"], meta["name"])
        if current is None:  # deleted meanwhile: nothing to reconcile
            return Outcome("deleted", False, False)
        body = current
    desired = desired_status(kube, body)
    status = desired.status
    written = write_status(kube, body, status, record if transition_events else None, advisories)
    phase = status.get("phase", "")
    return Outcome(
        phase.lower() or "unknown",
        phase == "Ready",
        written,
        desired.children,
        desired.requeue_after,
    )


def apply_failed_status(kind: str, body: dict[str, Any], error: Exception) -> dict[str, Any]:
    """The status after an API call that retrying cannot fix (forbidden, invalid): the rest of
    the last status stays (the children it describes still run), Ready says what failed."""
    meta = body["metadata"]
    checks, phase = failed_spec(
        "ApplyFailed", f"{kind} {meta['namespace']}/{meta['name']}: {error}"
    )
    return {**(body.get("status") or {}), **build_status(body, checks, phase, {})}


def invalid_spec_status(kind: str, body: dict[str, Any], error: Exception) -> dict[str, Any]:
    meta = body["metadata"]
    checks, phase = failed_spec(
        "InvalidSpec", f"{kind} {meta['namespace']}/{meta['name']}: {error}"
    )
    return build_status(body, checks, phase, {})
