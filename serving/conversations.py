"""Scripted conversations run against a live agent: does each turn end the way it should?

A suite is a folder of YAML files; each holds conversations with a category and turns, and each
turn what the customer says and what must come of it:

```yaml
conversations:
  - name: cancel, then the order number alone
    category: slot_filling
    turns:
      - say: cancel my order
        expect: {intent: cancel_order, reply_kind: slot_prompt, action: none}
      - say: ORD-10001
        expect: {intent: cancel_order, action: orders.cancel_order, handoff: false}
```

Checks (all optional): `intent`, `reply_kind` (see `ChatResponse.reply_kind`), `action` (an
`adapter.operation` the turn ran, or `none`), `action_status`, `handoff` (false, or the reason),
`source` (the document the answer cites, e.g. `payments.md`), `reply_contains` (text or list),
`resolved`. A turn may set `fault: {system: orders, fail_next: 3, status: 503}` to make that
business system fail while the turn runs; that needs its fault-control URL (the demo systems
have one), and without it the conversation is reported as not run rather than passed.

`switchboard eval-conversations URL --suite DIR` runs a suite and prints the success rate per
category; tests run the demo suite (tests/conversations/) the same way.
"""

from __future__ import annotations

import json
import urllib.request
import uuid
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from .workflow.grounding import document_of

Chat = Callable[[str, str], dict[str, Any]]
"""(session id, message) → the agent's response body."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Expectation(_Strict):
    intent: str | None = None
    reply_kind: str | None = None
    action: str | None = None
    """`adapter.operation` the turn ran, started or proposed, or `none`."""
    action_status: Literal["succeeded", "failed", "started", "proposed"] | None = None
    handoff: bool | str | None = None
    """False: no handoff; a string: a handoff with that reason; True: any handoff."""
    source: str | None = None
    reply_contains: str | list[str] | None = None
    resolved: bool | None = None


class Fault(_Strict):
    system: str
    fail_next: int = Field(default=0, ge=0)
    status: int = Field(default=503, ge=400, le=599)
    delay_seconds: float = Field(default=0, ge=0, le=60)


class Turn(_Strict):
    say: str = Field(min_length=1)
    expect: Expectation = Field(default_factory=Expectation)
    fault: Fault | None = None


class Conversation(_Strict):
    name: str
    category: str
    turns: list[Turn] = Field(min_length=1)
    file: str = ""


class SuiteError(ValueError):
    """A suite file that cannot be read; the message names the file and the problem."""


def load_suite(paths: Iterable[str | Path]) -> list[Conversation]:
    """Every conversation in the YAML files of the given files or folders, in path order."""
    files: list[Path] = []
    for raw in paths:
        path = Path(raw)
        files += sorted(path.glob("*.yaml")) if path.is_dir() else [path]
    conversations: list[Conversation] = []
    for file in files:
        try:
            data = yaml.safe_load(file.read_text(encoding="utf-8"))
        except (OSError, yaml.YAMLError) as exc:
            raise SuiteError(f"{file}: {exc}") from None
        items = data.get("conversations") if isinstance(data, dict) else None
        if not isinstance(items, list):
            raise SuiteError(f"{file}: expected a `conversations:` list")
        for n, item in enumerate(items):
            try:
                conversation = Conversation.model_validate({**item, "file": file.name})
            except (ValidationError, TypeError) as exc:
                raise SuiteError(f"{file}: conversations[{n}]: {exc}") from None
            conversations.append(conversation)
    names = [c.name for c in conversations]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise SuiteError(f"conversation names must be unique: {', '.join(duplicates)}")
    if not conversations:
        raise SuiteError("the suite has no conversations")
    return conversations


def check_turn(expect: Expectation, response: Mapping[str, Any]) -> list[str]:
    """What in `response` differs from `expect`, one line per difference."""
    problems = []

    def differs(what: str, wanted: Any, got: Any) -> None:
        if wanted is not None and wanted != got:
            problems.append(f"{what}: expected {wanted!r}, got {got!r}")

    differs("intent", expect.intent, response.get("intent"))
    differs("reply_kind", expect.reply_kind, response.get("reply_kind"))
    actions = response.get("actions") or []
    if expect.action == "none":
        if actions:
            problems.append(f"action: expected none, got {[a['operation'] for a in actions]}")
    elif expect.action is not None:
        mine = [a for a in actions if a.get("operation") == expect.action]
        if not mine:
            problems.append(
                f"action: expected {expect.action}, got {[a['operation'] for a in actions]}"
            )
        elif expect.action_status:
            differs("action_status", expect.action_status, mine[0].get("status"))
    handoff = response.get("handoff")
    if expect.handoff is False and handoff:
        problems.append(f"handoff: expected none, got {handoff.get('reason')!r}")
    elif expect.handoff is True and not handoff:
        problems.append("handoff: expected one, got none")
    elif isinstance(expect.handoff, str):
        differs("handoff", expect.handoff, handoff.get("reason") if handoff else None)
    if expect.source is not None:
        sources = [document_of(s["id"]) for s in response.get("sources") or []]
        differs("source", expect.source, sources[0] if sources else None)
    wanted = [expect.reply_contains] if isinstance(expect.reply_contains, str) else []
    wanted += expect.reply_contains if isinstance(expect.reply_contains, list) else []
    reply = str(response.get("reply", ""))
    for text in wanted:
        if text.lower() not in reply.lower():
            problems.append(f"reply: expected it to contain {text!r}, got {reply!r}")
    differs("resolved", expect.resolved, response.get("resolved"))
    return problems


@dataclass
class TurnResult:
    say: str
    response: dict[str, Any]
    problems: list[str]


@dataclass
class ConversationResult:
    conversation: Conversation
    session_id: str
    turns: list[TurnResult] = field(default_factory=list)
    not_run: str | None = None
    """Why the conversation could not run here (a fault it needs cannot be injected)."""

    @property
    def passed(self) -> bool:
        return self.not_run is None and all(not t.problems for t in self.turns)


class FaultControl:
    """Switches faults of business systems that expose a `/_faults` endpoint (the demo
    systems do): system name → base URL."""

    def __init__(self, urls: Mapping[str, str]) -> None:
        self.urls = dict(urls)

    def _call(self, system: str, method: str, body: dict[str, Any] | None = None) -> None:
        request = urllib.request.Request(
            self.urls[system].rstrip("/") + "/_faults",
            data=json.dumps(body).encode() if body is not None else None,
            headers={"Content-Type": "application/json"},
            method=method,
        )
        with urllib.request.urlopen(request, timeout=10):
            pass

    def set(self, fault: Fault) -> None:
        settings = fault.model_dump(exclude={"system"})
        self._call(fault.system, "POST", settings)

    def clear(self, system: str) -> None:
        self._call(system, "DELETE")


def run_conversation(
    conversation: Conversation, chat: Chat, faults: FaultControl | None = None
) -> ConversationResult:
    """Play the conversation in a fresh session; every turn runs, even after a failed one, so
    a report shows all that went wrong."""
    session_id = f"eval-{uuid.uuid4().hex[:12]}"
    result = ConversationResult(conversation, session_id)
    needed = {t.fault.system for t in conversation.turns if t.fault}
    missing = sorted(needed - set(faults.urls if faults else ()))
    if missing:
        result.not_run = f"needs fault control of {', '.join(missing)}"
        return result
    for turn in conversation.turns:
        if turn.fault and faults:
            faults.set(turn.fault)
        try:
            response = chat(session_id, turn.say)
        finally:
            if turn.fault and faults:
                faults.clear(turn.fault.system)
        result.turns.append(TurnResult(turn.say, response, check_turn(turn.expect, response)))
    return result


def run_suite(
    conversations: Iterable[Conversation], chat: Chat, faults: FaultControl | None = None
) -> list[ConversationResult]:
    return [run_conversation(c, chat, faults) for c in conversations]


def summarize(results: Iterable[ConversationResult]) -> dict[str, Any]:
    """Success rate per category and overall; conversations not run are counted apart."""
    by_category: dict[str, list[ConversationResult]] = defaultdict(list)
    for r in results:
        by_category[r.conversation.category].append(r)

    def rate(rs: list[ConversationResult]) -> dict[str, Any]:
        ran = [r for r in rs if r.not_run is None]
        passed = sum(r.passed for r in ran)
        return {
            "passed": passed,
            "run": len(ran),
            "not_run": len(rs) - len(ran),
            "success_rate": round(passed / len(ran), 4) if ran else None,
        }

    every = [r for rs in by_category.values() for r in rs]
    return {
        "categories": {name: rate(rs) for name, rs in sorted(by_category.items())},
        "overall": rate(every),
        "failures": [
            {
                "conversation": r.conversation.name,
                "file": r.conversation.file,
                "turns": [
                    {"say": t.say, "problems": t.problems, "reply": t.response.get("reply")}
                    for t in r.turns
                    if t.problems
                ],
            }
            for r in every
            if r.not_run is None and not r.passed
        ],
        "not_run": {r.conversation.name: r.not_run for r in every if r.not_run},
    }


def format_summary(summary: Mapping[str, Any]) -> str:
    lines = [f"{'category':<22}{'passed':>8}{'run':>6}{'rate':>9}"]
    rows = [*summary["categories"].items(), ("overall", summary["overall"])]
    for name, row in rows:
        rate = row["success_rate"]
        shown = f"{rate:.1%}" if rate is not None else "-"
        lines.append(f"{name:<22}{row['passed']:>8}{row['run']:>6}{shown:>9}")
    for failure in summary["failures"]:
        lines.append(f"FAILED {failure['conversation']} ({failure['file']})")
        for turn in failure["turns"]:
            lines.append(f"  you> {turn['say']}")
            lines.extend(f"    {p}" for p in turn["problems"])
    for name, why in summary["not_run"].items():
        lines.append(f"NOT RUN {name}: {why}")
    return "\n".join(lines)
