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

from .api.modeltraining import RUN_NOW_ANNOTATION
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


def training_references(body: Mapping[str, Any], lookup: Lookup) -> Hashable:
    """A ModelTraining reads its agent (the current model) and the run-by-hand annotation,
    which moves no generation."""
    meta = body["metadata"]
    agent = lookup.agent(meta["namespace"], str((body.get("spec") or {}).get("agentRef")))
    return agent, (meta.get("annotations") or {}).get(RUN_NOW_ANNOTATION)


def no_references(body: Mapping[str, Any], lookup: Lookup) -> Hashable:
    return None


References = Callable[[Mapping[str, Any], Lookup], Hashable]


def status_news_only(last: Inputs, now: Inputs) -> bool:
    """Whether the only news since `last` is what the children's controllers report: the same
    spec and references (so a render comes out the same), and every child the index shows is
    the object last applied or seen, at the same generation (nobody else edited it, so an apply
    would change nothing). A child gone from the index was deleted, which forces a full
    reconcile (main.child_event)."""
    if (now.generation, now.references) != (last.generation, last.references):
        return False
    seen = {(c.kind, c.name): (c.uid, c.generation) for c in last.children}
    return all(seen.get((c.kind, c.name)) == (c.uid, c.generation) for c in now.children)


ChildKey = tuple[str, str]
"""(kind, name) of a child."""


def with_echoes_awaited(
    last: Inputs, now: Inputs, awaited: frozenset[ChildKey]
) -> tuple[Inputs, frozenset[ChildKey]]:
    """`now`, with the `awaited` children (applied by the last reconcile, not yet shown by the
    index) taken as that apply answered, and those still awaited. A child's watch event can lag
    far behind the apply's answer, and a kind no index shows never comes: its absence is no
    news. (A deletion marks the owner forced, whether the index showed the child or not.)"""
    shown = {(c.kind, c.name) for c in now.children}
    still = frozenset(key for key in awaited if key not in shown)
    answered = {c for c in last.children if (c.kind, c.name) in still}
    return replace(now, children=now.children | answered), still


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
    refresh: Reconcile | None = None
    """A reconcile that applies nothing again, only updates the status, for when the only news
    is a child's status (`status_news_only`) after a reconcile that succeeded; the deadline, a
    forced mark and every other change still reconcile in full. None: always in full."""

    async def run(self, stopped: Stopped) -> None:
        with self.marks.registered(self.key) as wake:
            last: Inputs | None = None
            settled = False  # the last reconcile succeeded: what it applied stands
            awaited: frozenset[ChildKey] = frozenset()
            due = self.clock()
            while not stopped:
                forced = wake.take()
                body = plain(self.body)
                inputs = inputs_of(self.key, body, self.lookup, self.references)
                if last is not None:
                    inputs, awaited = with_echoes_awaited(last, inputs, awaited)
                full = forced or self.clock() >= due
                news_only = last is not None and status_news_only(last, inputs)
                if not (full or last is None or inputs != last):
                    await wake.sleep(due - self.clock())
                    continue
                if self.refresh and settled and not full and news_only:
                    # The full reconcile stays due when it was: refreshes never postpone it.
                    last, delay, settled = await self._reconcile(body, inputs, self.refresh)
                    due = min(due, self.clock() + delay)
                else:
                    last, delay, settled = await self._reconcile(body, inputs, self.reconcile)
                    due = self.clock() + delay
                before = {(c.kind, c.name) for c in inputs.children}
                awaited = frozenset((c.kind, c.name) for c in last.children) - before
                await wake.sleep(due - self.clock())

    async def _reconcile(
        self, body: dict[str, Any], inputs: Inputs, reconcile: Reconcile
    ) -> tuple[Inputs, float, bool]:
        """Reconcile once; the inputs it reconciled from, the delay until the next forced
        reconcile, and whether it succeeded. Applied children count as the API server answered
        the apply: their watch events, mere echoes of it, then change nothing."""
        call = functools.partial(contextvars.copy_context().run, reconcile, body)
        try:
            outcome = await asyncio.get_running_loop().run_in_executor(self.executor, call)
        except Retry as exc:
            self.logger.warning(f"Reconcile failed, retrying in {exc.delay:.0f}s: {exc}")
            return inputs, exc.delay, False
        except Exception:  # a bug must not stop the worker: it says so, and tries again later
            self.logger.exception(f"Reconcile failed, retrying in {self.interval:.0f}s")
            return inputs, self.interval, False
        self.on_outcome(outcome)
        if outcome.status_written:  # news only: a reconcile that changed nothing stays quiet
            self.logger.info(f"Reconciled: {outcome.result}")
        if outcome.children:
            applied = {(c.kind, c.name): c for c in outcome.children}
            others = {c for c in inputs.children if (c.kind, c.name) not in applied}
            inputs = replace(inputs, children=frozenset(applied.values()) | others)
        if outcome.requeue_after is not None:
            return inputs, min(self.interval, max(outcome.requeue_after, 0.0)), True
        return inputs, self.interval, True
