"""One worker per object: it reconciles when something marked the object, and on a deadline.

kopf runs one daemon per SupportAgent, ToolAdapter and ModelRollout (`main.py`); each daemon runs
`work`. Watch events — the object's own, its children's, a ToolAdapter's for the agents granted
it, a ModelRollout's for its agent — only *mark* the objects they concern (`Marks`); the worker
then decides whether anything it reconciles from has changed (`Inputs`), and reconciles the whole
object if so. One worker per object means one reconcile at a time per object without locks, a
burst of events costs one reconcile, and a worker's memory goes with its object.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import functools
import logging
import time
from collections.abc import Callable, Hashable, Iterator, Mapping
from concurrent.futures import Executor
from dataclasses import dataclass, replace
from typing import Any, Protocol

from .indexes import ChildView, Lookup, plain
from .resources.common import Outcome

Key = tuple[str, str, str]
"""(kind, namespace, name) of a reconciled object."""


class Wake:
    """One worker's alarm: set by a mark; `forced` when the marker knows a reconcile is due
    whatever the inputs say (a child gone that no index shows)."""

    def __init__(self) -> None:
        self._event = asyncio.Event()
        self.forced = False

    def set(self, forced: bool = False) -> None:
        self.forced = self.forced or forced
        self._event.set()

    def take(self) -> bool:
        """Re-arm; whether a forced mark came since the last call."""
        forced, self.forced = self.forced, False
        self._event.clear()
        return forced

    async def sleep(self, seconds: float) -> None:
        """Until marked, or `seconds` passed."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._event.wait(), timeout=max(seconds, 0.0))


class Marks:
    """Wake-ups for the workers, by object. An entry exists exactly while its worker runs, so
    nothing here outlives the object; marking an object without a worker (not started yet,
    or gone) does nothing — a starting worker reconciles first anyway."""

    def __init__(self) -> None:
        self._wakes: dict[Key, Wake] = {}

    def mark(self, key: Key, forced: bool = False) -> None:
        wake = self._wakes.get(key)
        if wake is not None:
            wake.set(forced)

    def mark_namespace(self, kind: str, namespace: str) -> None:
        """Every `kind` object of `namespace` (each worker decides whether its inputs changed):
        for what concerns objects no index names any more, such as the adapters an agent
        stopped referencing."""
        for (k, ns, _), wake in list(self._wakes.items()):
            if k == kind and ns == namespace:
                wake.set()

    @contextlib.contextmanager
    def registered(self, key: Key) -> Iterator[Wake]:
        wake = self._wakes[key] = Wake()
        try:
            yield wake
        finally:
            if self._wakes.get(key) is wake:
                del self._wakes[key]

    def __len__(self) -> int:
        return len(self._wakes)


@dataclass(frozen=True)
class Inputs:
    """Everything a reconcile of one object depends on, other than its own status: a worker
    reconciles when these differ from the last reconcile's (or when its deadline passes)."""

    generation: int | None
    references: Hashable
    """What other objects the reconcile reads (from the indexes) contribute."""
    children: frozenset[ChildView]


def agent_references(body: Mapping[str, Any], lookup: Lookup) -> Hashable:
    """A SupportAgent reads the ToolAdapters it is granted and its ModelRollouts."""
    meta = body["metadata"]
    namespace, name = meta["namespace"], meta["name"]
    tools = (body.get("spec") or {}).get("tools") or []
    adapters = tuple(
        (str(t.get("adapter")), lookup.adapter(namespace, str(t.get("adapter"))))
        for t in tools
        if isinstance(t, Mapping)
    )
    return adapters, tuple(lookup.rollouts(namespace, name))


def adapter_references(body: Mapping[str, Any], lookup: Lookup) -> Hashable:
    """A ToolAdapter reads which SupportAgents reference it and the operations each is
    granted: its gateway admits only them, and only to those operations."""
    meta = body["metadata"]
    return tuple(sorted(lookup.operations_granted(meta["namespace"], meta["name"]).items()))


def rollout_references(body: Mapping[str, Any], lookup: Lookup) -> Hashable:
    """A ModelRollout reads the SupportAgent it targets."""
    meta = body["metadata"]
    return lookup.agent(meta["namespace"], str((body.get("spec") or {}).get("agentRef")))


def no_references(body: Mapping[str, Any], lookup: Lookup) -> Hashable:
    return None


References = Callable[[Mapping[str, Any], Lookup], Hashable]


def inputs_of(key: Key, body: Mapping[str, Any], lookup: Lookup, references: References) -> Inputs:
    kind, namespace, name = key
    return Inputs(
        generation=body["metadata"].get("generation"),
        references=references(body, lookup),
        children=lookup.children(namespace, kind, name),
    )


class Retry(Exception):
    """A reconcile failed in a way worth retrying after `delay` seconds."""

    def __init__(self, message: str, delay: float) -> None:
        super().__init__(message)
        self.delay = delay


class Stopped(Protocol):
    def __bool__(self) -> bool: ...


Reconcile = Callable[[dict[str, Any]], Outcome]
"""A blocking reconcile of one object's body (it makes API calls); raises `Retry`."""


@dataclass
class Worker:
    """What one object's worker needs; `run` is its loop."""

    key: Key
    body: Mapping[str, Any]
    """kopf's live view of the object: always its latest state."""
    lookup: Lookup
    marks: Marks
    executor: Executor
    reconcile: Reconcile
    references: References
    interval: float
    """Reconcile at least this often even when nothing marked the object."""
    logger: logging.Logger | logging.LoggerAdapter[Any]
    on_outcome: Callable[[Outcome], None] = lambda outcome: None
    clock: Callable[[], float] = time.monotonic

    async def run(self, stopped: Stopped) -> None:
        with self.marks.registered(self.key) as wake:
            last: Inputs | None = None
            due = self.clock()
            while not stopped:
                forced = wake.take()
                body = plain(self.body)
                inputs = inputs_of(self.key, body, self.lookup, self.references)
                if forced or last is None or inputs != last or self.clock() >= due:
                    last, delay = await self._reconcile(body, inputs)
                    due = self.clock() + delay
                await wake.sleep(due - self.clock())

    async def _reconcile(self, body: dict[str, Any], inputs: Inputs) -> tuple[Inputs, float]:
        """Reconcile once; the inputs it reconciled from and the delay until the next forced
        reconcile. Applied children count as the API server answered the apply: their watch
        events, mere echoes of it, then change nothing."""
        call = functools.partial(contextvars.copy_context().run, self.reconcile, body)
        try:
            outcome = await asyncio.get_running_loop().run_in_executor(self.executor, call)
        except Retry as exc:
            self.logger.warning(f"Reconcile failed, retrying in {exc.delay:.0f}s: {exc}")
            return inputs, exc.delay
        except Exception:  # a bug must not stop the worker: it says so, and tries again later
            self.logger.exception(f"Reconcile failed, retrying in {self.interval:.0f}s")
            return inputs, self.interval
        self.on_outcome(outcome)
        if outcome.status_written:  # news only: a reconcile that changed nothing stays quiet
            self.logger.info(f"Reconciled: {outcome.result}")
        if outcome.children:
            applied = {(c.kind, c.name): c for c in outcome.children}
            others = {c for c in inputs.children if (c.kind, c.name) not in applied}
            inputs = replace(inputs, children=frozenset(applied.values()) | others)
        return inputs, self.interval
