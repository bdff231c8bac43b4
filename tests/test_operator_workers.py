"""The operator's per-object workers and indexes, without kopf or an API server: which marks
make a worker reconcile, and what the indexes answer. (The envtest tiers run the same code
under kopf against a real API server.)"""

from __future__ import annotations

import asyncio
import copy
import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from switchboard.operator.indexes import ChildView, Lookup, child_entries, grant_entries
from switchboard.operator.resources.common import Outcome
from switchboard.operator.workers import Marks, Retry, Worker, agent_references

NS = "support"
AGENT_KEY = ("SupportAgent", NS, "acme")


def agent(generation: int = 1, tools: tuple[str, ...] = ("orders",)) -> dict[str, Any]:
    return {
        "apiVersion": "switchboard.dev/v1alpha1",
        "kind": "SupportAgent",
        "metadata": {"name": "acme", "namespace": NS, "generation": generation, "uid": "a1"},
        "spec": {"tools": [{"adapter": t} for t in tools]},
    }


def adapter(name: str = "orders", ready: bool = True) -> dict[str, Any]:
    status = "True" if ready else "False"
    return {
        "apiVersion": "switchboard.dev/v1alpha1",
        "kind": "ToolAdapter",
        "metadata": {"name": name, "namespace": NS, "generation": 1},
        "spec": {"operations": []},
        "status": {"conditions": [{"type": "Ready", "status": status}]},
    }


def rayservice(status: str | None = None) -> dict[str, Any]:
    owner = {"apiVersion": "switchboard.dev/v1alpha1", "kind": "SupportAgent", "name": "acme"}
    return {
        "apiVersion": "ray.io/v1",
        "kind": "RayService",
        "metadata": {
            "name": "acme",
            "namespace": NS,
            "uid": "r1",
            "generation": 1,
            "ownerReferences": [owner],
        },
        "status": {"serviceStatus": status} if status else None,
    }


class World:
    """The objects the indexes would hold, changeable between a worker's wake-ups."""

    def __init__(self, *objects: dict[str, Any]) -> None:
        self.objects = {(o["kind"], o["metadata"]["name"]): o for o in objects}

    def put(self, obj: dict[str, Any]) -> None:
        """Add or change an object in place (kopf's live body of a worker's object follows)."""
        existing = self.objects.setdefault((obj["kind"], obj["metadata"]["name"]), obj)
        if existing is not obj:
            existing.clear()
            existing.update(copy.deepcopy(obj))

    def lookup(self) -> Lookup:
        return Lookup.of(copy.deepcopy(list(self.objects.values())))


class LiveLookup(Lookup):
    """A Lookup that reads the world as it is at each question (as kopf's indexes are)."""

    def __init__(self, world: World) -> None:
        self.world = world

    def __getattribute__(self, name: str) -> Any:
        if name in ("adapter", "agent", "rollouts", "children", "agents_granted"):
            return getattr(object.__getattribute__(self, "world").lookup(), name)
        return object.__getattribute__(self, name)


class Stop:
    def __init__(self) -> None:
        self.stopped = False

    def __bool__(self) -> bool:
        return self.stopped


def run_worker(
    world: World,
    steps: list[Callable[[Marks, World], None]],
    reconcile: Callable[[dict[str, Any]], Outcome] | None = None,
    interval: float = 3600.0,
    refreshed: list[dict[str, Any]] | None = None,
) -> list[dict[str, Any]]:
    """Start the agent's worker, then run each step (a change and a mark) and let the worker
    settle; the bodies it reconciled in full, in order (with `refreshed`, the worker refreshes
    too, and the bodies it refreshed go there)."""
    reconciled: list[dict[str, Any]] = []

    def refresh(body: dict[str, Any]) -> Outcome:
        assert refreshed is not None
        refreshed.append(body)
        return Outcome("ready", True, True)

    def record(body: dict[str, Any]) -> Outcome:
        reconciled.append(body)
        if reconcile is not None:
            return reconcile(body)
        # The RayService as the API server answers its apply, and as its watch event then
        # brings it into the index.
        applied = world.objects.setdefault(("RayService", "acme"), rayservice())
        return Outcome("progressing", False, True, frozenset({ChildView.of(applied)}))

    async def scenario() -> None:
        marks, stop = Marks(), Stop()
        body = world.objects[("SupportAgent", "acme")]
        with ThreadPoolExecutor(2) as executor:
            worker = Worker(
                key=AGENT_KEY,
                body=body,
                lookup=LiveLookup(world),
                marks=marks,
                executor=executor,
                reconcile=record,
                references=agent_references,
                interval=interval,
                logger=logging.getLogger("test"),
                refresh=refresh if refreshed is not None else None,
            )
            task = asyncio.create_task(worker.run(stop))
            await asyncio.sleep(0.05)
            for step in steps:
                step(marks, world)
                await asyncio.sleep(0.05)
            stop.stopped = True
            marks.mark(AGENT_KEY)
            await asyncio.wait_for(task, 5)
            assert len(marks) == 0, "a stopped worker leaves no mark entry behind"

    asyncio.run(scenario())
    return reconciled


def mark_only(marks: Marks, world: World) -> None:
    marks.mark(AGENT_KEY)


def change(obj: dict[str, Any], forced: bool = False) -> Callable[[Marks, World], None]:
    def step(marks: Marks, world: World) -> None:
        world.put(obj)
        marks.mark(AGENT_KEY, forced)

    return step


def forced(marks: Marks, world: World) -> None:
    marks.mark(AGENT_KEY, forced=True)


@pytest.mark.parametrize(
    ("case", "steps", "reconciles"),
    [
        ("a worker reconciles once when it starts", [], 1),
        ("a mark that changes nothing (its own status write) costs nothing", [mark_only] * 3, 1),
        ("the echo of its own apply costs nothing", [change(rayservice())], 1),
        ("a child's new status reconciles", [change(rayservice("Running"))], 2),
        ("a granted adapter turning unready reconciles", [change(adapter(ready=False))], 2),
        ("an adapter it is not granted does not", [change(adapter("billing", ready=False))], 1),
        ("a spec edit (new generation) reconciles", [change(agent(generation=2))], 2),
        ("a forced mark reconciles whatever the inputs", [forced], 2),
        (
            "a burst of marks with one change costs one reconcile",
            [change(rayservice("Running")), mark_only, mark_only],
            2,
        ),
    ],
)
def test_what_makes_a_worker_reconcile(
    case: str, steps: list[Callable[[Marks, World], None]], reconciles: int
) -> None:
    world = World(agent(), adapter(), adapter("billing"))
    assert len(run_worker(world, steps)) == reconciles, case


def renamed(obj: dict[str, Any], **meta: Any) -> dict[str, Any]:
    return {**obj, "metadata": {**obj["metadata"], **meta}}


@pytest.mark.parametrize(
    ("case", "steps", "full", "refreshes"),
    [
        ("a child's new status only refreshes", [change(rayservice("Running"))], 1, 1),
        (
            "and so does the next one",
            [change(rayservice("Running")), change(rayservice("Failed"))],
            1,
            2,
        ),
        (
            "someone else's edit of the child (a new generation) reconciles in full",
            [change(renamed(rayservice("Running"), generation=2))],
            2,
            0,
        ),
        (
            "a re-created child (a new uid) reconciles in full",
            [change(renamed(rayservice(), uid="r2"))],
            2,
            0,
        ),
        ("a spec edit reconciles in full", [change(agent(generation=2))], 2, 0),
        ("an adapter's change reconciles in full", [change(adapter(ready=False))], 2, 0),
        ("a forced mark reconciles in full", [forced], 2, 0),
    ],
)
def test_a_childs_status_alone_only_refreshes(
    case: str, steps: list[Callable[[Marks, World], None]], full: int, refreshes: int
) -> None:
    """What the worker last applied stands when only its controller's report changed: the
    reconcile then applies nothing the index shows (supportagent's `refresh`)."""
    world = World(agent(), adapter())
    refreshed: list[dict[str, Any]] = []
    assert len(run_worker(world, steps, refreshed=refreshed)) == full, case
    assert len(refreshed) == refreshes, case


def test_refreshes_never_postpone_the_full_reconcile() -> None:
    world = World(agent(), adapter())
    refreshed: list[dict[str, Any]] = []
    statuses = [change(rayservice(s)) for s in ("A", "B", "C", "D", "E", "F")]
    reconciled = run_worker(world, statuses, interval=0.12, refreshed=refreshed)
    assert refreshed and len(reconciled) >= 2


def test_no_refresh_after_a_failed_reconcile() -> None:
    """What failed to apply must be applied again, not taken as standing."""
    world = World(agent(), adapter())
    refreshed: list[dict[str, Any]] = []

    def failing(body: dict[str, Any]) -> Outcome:
        raise Retry("503 unavailable", delay=3600)

    steps = [change(rayservice("Running"))]
    assert len(run_worker(world, steps, reconcile=failing, refreshed=refreshed)) == 2
    assert refreshed == []


def test_a_child_the_index_does_not_show_yet_is_no_news() -> None:
    """A child's watch event can lag far behind its apply's answer (and a kind no index shows
    never comes): its absence meanwhile, and its arrival as applied, cost no reconcile."""
    world = World(agent(), adapter())
    account = renamed(rayservice(), name="acme-ray", uid="s1")
    account["kind"] = "ServiceAccount"

    def applies_an_account(body: dict[str, Any]) -> Outcome:
        world.objects.setdefault(("RayService", "acme"), rayservice())
        views = {ChildView.of(world.objects[("RayService", "acme")]), ChildView.of(account)}
        return Outcome("progressing", False, True, frozenset(views))

    echo = change(account)
    assert len(run_worker(world, [mark_only, mark_only, echo], applies_an_account)) == 1


def test_the_deadline_reconciles_when_nothing_marks() -> None:
    world = World(agent(), adapter())
    reconciled = run_worker(world, [mark_only] * 4, interval=0.06)
    assert len(reconciled) >= 3


def test_a_failed_reconcile_waits_its_delay_unless_the_inputs_change() -> None:
    world = World(agent(), adapter())
    outcomes: list[Outcome | Exception] = [Retry("403 forbidden", delay=3600)]

    def flaky(body: dict[str, Any]) -> Outcome:
        result = outcomes.pop(0) if outcomes else Outcome("ready", True, True)
        if isinstance(result, Exception):
            raise result
        return result

    # The failure is not retried on every mark (no retry storm)...
    assert len(run_worker(world, [mark_only] * 3, reconcile=flaky)) == 1
    # ...but a fix (a spec edit) is tried at once.
    outcomes[:] = [Retry("403 forbidden", delay=3600)]
    assert len(run_worker(world, [mark_only, change(agent(generation=2))], reconcile=flaky)) == 2


def test_a_bug_in_a_reconcile_does_not_stop_the_worker() -> None:
    world = World(agent(), adapter())

    def broken(body: dict[str, Any]) -> Outcome:
        raise KeyError("spec")

    assert len(run_worker(world, [change(agent(generation=2))], reconcile=broken)) == 2


def test_index_entries() -> None:
    assert grant_entries(agent(tools=("orders", "billing"))) == {
        (NS, "orders"): "acme",
        (NS, "billing"): "acme",
    }
    assert child_entries(rayservice()) == {(NS, "SupportAgent", "acme"): ChildView.of(rayservice())}
    foreign = rayservice()
    foreign["metadata"]["ownerReferences"] = [{"apiVersion": "v1", "kind": "Pod", "name": "x"}]
    assert child_entries(foreign) == {}
    lookup = World(agent(), adapter(ready=False), rayservice()).lookup()
    view = lookup.adapter(NS, "orders")
    assert view is not None and not view.ready and view.spec == {"operations": []}
    assert lookup.agents_granted(NS, "orders") == ["acme"]
    assert lookup.children(NS, "SupportAgent", "acme") == {ChildView.of(rayservice())}
    assert lookup.adapter(NS, "missing") is None
