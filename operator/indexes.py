"""What the operator knows of the cluster without asking it: kopf's in-memory indexes.

kopf keeps each index up to date from the watch streams it runs anyway, and starts no handler
before every index has seen its first full listing. The functions here turn one object into its
index entries (pure: body → {key: view}); `Lookup` answers the reconcilers' questions from
those indexes. A reconcile therefore reads ToolAdapters, ModelRollouts, the agent a rollout
targets and its own children from memory, and spends API requests only on what it changes.

Views hold only what a reconciler or a wake-up decision reads, as plain values: kopf compares
an object's new entry with the old one and keeps the old when they are equal.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from .api.base import API_VERSION

# The kinds whose children the operator owns (and indexes by owner).
OWNER_KINDS = frozenset({"SupportAgent", "ToolAdapter", "ModelTraining"})


def plain(obj: Any) -> Any:
    """kopf's body views → plain dicts and lists (for comparison, JSON and safe keeping)."""
    if isinstance(obj, Mapping):
        return {k: plain(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [plain(v) for v in obj]
    return obj


def ready_status(body: Mapping[str, Any]) -> str | None:
    """The status of an object's `Ready` condition ("True", "False", "Unknown"), or None."""
    for condition in (body.get("status") or {}).get("conditions") or []:
        if condition.get("type") == "Ready":
            return str(condition.get("status"))
    return None


def _frozen(value: Any) -> str:
    """A nested value as canonical JSON: hashable, and equal exactly when the value is."""
    return json.dumps(value, sort_keys=True, ensure_ascii=False, default=str)


@dataclass(frozen=True)
class _SpecView:
    """An object by name, its spec kept as canonical JSON (hashable, compared cheaply)."""

    name: str
    spec_json: str

    @property
    def spec(self) -> dict[str, Any]:
        return dict(json.loads(self.spec_json))


@dataclass(frozen=True)
class AdapterView(_SpecView):
    """A ToolAdapter as the agents granted it see it: its spec and whether it is Ready."""

    ready: bool


@dataclass(frozen=True)
class RolloutView(_SpecView):
    """A ModelRollout as its agent sees it: which canary it serves, at what weight."""

    created: str
    phase: str | None
    weight: int
    deleting: bool


@dataclass(frozen=True)
class AgentView(_SpecView):
    """A SupportAgent as its ModelRollouts see it."""

    deleting: bool


@dataclass(frozen=True)
class ChildView:
    """What an owner's reconcile depends on in one of its children: which object it is (a
    re-created child has a new uid), its spec's generation (someone else's edit moves it) and
    its status (what its controller reports)."""

    kind: str
    name: str
    uid: str | None
    generation: int | None
    status_json: str

    @classmethod
    def of(cls, child: Mapping[str, Any]) -> ChildView:
        meta = child["metadata"]
        return cls(
            kind=str(child.get("kind")),
            name=str(meta.get("name")),
            uid=meta.get("uid"),
            generation=meta.get("generation"),
            status_json=_frozen(child.get("status")),
        )


# --- index entries: one object → {key: view} ---------------------------------------------


def adapter_entries(body: Mapping[str, Any]) -> dict[tuple[str, str], AdapterView]:
    """`adapters`: (namespace, name) → the ToolAdapter."""
    meta = body["metadata"]
    view = AdapterView(
        name=meta["name"],
        spec_json=_frozen(plain(body.get("spec") or {})),
        ready=ready_status(body) == "True",
    )
    return {(meta["namespace"], meta["name"]): view}


def grant_entries(body: Mapping[str, Any]) -> dict[tuple[str, str], str]:
    """`grants`: (namespace, ToolAdapter name) → the names of the SupportAgents granted it."""
    meta = body["metadata"]
    tools = (body.get("spec") or {}).get("tools") or []
    return {
        (meta["namespace"], str(tool.get("adapter"))): meta["name"]
        for tool in tools
        if isinstance(tool, Mapping) and tool.get("adapter")
    }


def agent_entries(body: Mapping[str, Any]) -> dict[tuple[str, str], AgentView]:
    """`agents`: (namespace, name) → the SupportAgent (what its rollouts read)."""
    meta = body["metadata"]
    view = AgentView(
        name=meta["name"],
        spec_json=_frozen(plain(body.get("spec") or {})),
        deleting=bool(meta.get("deletionTimestamp")),
    )
    return {(meta["namespace"], meta["name"]): view}


def rollout_entries(body: Mapping[str, Any]) -> dict[tuple[str, str], RolloutView]:
    """`rollouts`: (namespace, agent name) → the ModelRollouts targeting that agent."""
    meta = body["metadata"]
    spec = plain(body.get("spec") or {})
    status = body.get("status") or {}
    view = RolloutView(
        name=meta["name"],
        created=str(meta.get("creationTimestamp") or ""),
        spec_json=_frozen(spec),
        phase=status.get("phase"),
        weight=int(status.get("currentWeight") or 0),
        deleting=bool(meta.get("deletionTimestamp")),
    )
    return {(meta["namespace"], str(spec.get("agentRef"))): view}


def owner_of(child: Mapping[str, Any]) -> tuple[str, str] | None:
    """(kind, name) of the Switchboard object that owns `child`, if any."""
    for ref in child["metadata"].get("ownerReferences") or []:
        if ref.get("apiVersion") == API_VERSION and ref.get("kind") in OWNER_KINDS:
            return str(ref["kind"]), str(ref["name"])
    return None


def child_entries(body: Mapping[str, Any]) -> dict[tuple[str, str, str], ChildView]:
    """`children`: (namespace, owner kind, owner name) → the owner's children."""
    owner = owner_of(body)
    if owner is None:
        return {}
    return {(body["metadata"]["namespace"], *owner): ChildView.of(body)}


# --- answers to the reconcilers' questions -------------------------------------------------

INDEX_NAMES = ("adapters", "grants", "agents", "rollouts", "children")
Indices = Mapping[str, Mapping[Any, Iterable[Any]]]


class Lookup:
    """The reconcilers' read side: answers from kopf's indexes (or, in tests, from the same
    entry functions applied to a list of objects)."""

    def __init__(self, indices: Indices) -> None:
        self._indices = indices

    @classmethod
    def of(cls, objects: Iterable[Mapping[str, Any]]) -> Lookup:
        """Indexes built from whole objects, as kopf would build them from a watch."""
        built: dict[str, dict[Any, list[Any]]] = {name: {} for name in INDEX_NAMES}
        entries = {
            "ToolAdapter": (("adapters", adapter_entries),),
            "SupportAgent": (("agents", agent_entries), ("grants", grant_entries)),
            "ModelRollout": (("rollouts", rollout_entries),),
        }
        for obj in objects:
            pairs = entries.get(str(obj.get("kind")), (("children", child_entries),))
            for index, entry in pairs:
                for key, value in entry(obj).items():
                    built[index].setdefault(key, []).append(value)
        return cls(built)

    def _values(self, index: str, key: Any) -> list[Any]:
        return list(self._indices[index].get(key, ()))

    def adapter(self, namespace: str, name: str) -> AdapterView | None:
        found = self._values("adapters", (namespace, name))
        return found[0] if found else None

    def agents_granted(self, namespace: str, adapter: str) -> list[str]:
        return sorted(self._values("grants", (namespace, adapter)))

    def operations_granted(self, namespace: str, adapter: str) -> dict[str, tuple[str, ...]]:
        """Agent → the operations of `adapter` its `spec.tools` grant (what the gateway checks
        each caller against)."""
        granted: dict[str, tuple[str, ...]] = {}
        for name in self.agents_granted(namespace, adapter):
            view = self.agent(namespace, name)
            tools = (view.spec.get("tools") or []) if view is not None else []
            granted[name] = tuple(
                sorted(
                    {
                        str(op)
                        for tool in tools
                        if isinstance(tool, Mapping) and tool.get("adapter") == adapter
                        for op in tool.get("operations") or []
                    }
                )
            )
        return granted

    def agent(self, namespace: str, name: str) -> AgentView | None:
        found = self._values("agents", (namespace, name))
        return found[0] if found else None

    def rollouts(self, namespace: str, agent: str) -> list[RolloutView]:
        """The agent's ModelRollouts, oldest first (the order that decides which one serves)."""
        return sorted(
            self._values("rollouts", (namespace, agent)), key=lambda r: (r.created, r.name)
        )

    def children(self, namespace: str, kind: str, name: str) -> frozenset[ChildView]:
        return frozenset(self._values("children", (namespace, kind, name)))
