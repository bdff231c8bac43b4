"""`switchboard chat URL`: a terminal chat with a running agent.

Every reply names the model revision that answered it (`revision`); later turns send it back
in the revision header, so the conversation stays on that revision during a canary (see
docs/rollouts.md, "Conversations stick to one revision")."""

from __future__ import annotations

import json
import sys
import urllib.error
import urllib.request
import uuid
from typing import Any, TextIO

from .config import REVISION_HEADER
from .session_tokens import TOKEN_HEADER


def send(
    url: str,
    session_id: str,
    message: str,
    timeout: float = 60,
    revision: str | None = None,
    session_token: str | None = None,
) -> dict[str, Any]:
    """One turn; `revision` (the previous reply's) pins the turn to the revision that served
    the conversation so far; `session_token` (the previous reply's) proves the conversation is
    ours."""
    body = json.dumps({"session_id": session_id, "message": message, "channel": "terminal"})
    headers = {"Content-Type": "application/json"}
    if revision:
        headers[REVISION_HEADER] = revision
    if session_token:
        headers[TOKEN_HEADER] = session_token
    request = urllib.request.Request(
        url.rstrip("/") + "/v1/chat", data=body.encode(), headers=headers, method="POST"
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            answer: dict[str, Any] = json.loads(response.read())
            return answer
    except urllib.error.HTTPError as exc:
        detail = json.loads(exc.read() or b"{}").get("error", {})
        raise RuntimeError(f"HTTP {exc.code}: {detail.get('message', exc.reason)}") from None


class Client:
    """Turns against one agent as a browser tab would take them: each session's latest token
    goes back with its next turn."""

    def __init__(self, url: str, timeout: float = 60) -> None:
        self.url, self.timeout = url, timeout
        self.tokens: dict[str, str] = {}

    def __call__(
        self, session_id: str, message: str, revision: str | None = None
    ) -> dict[str, Any]:
        answer = send(
            self.url, session_id, message, self.timeout, revision, self.tokens.get(session_id)
        )
        if answer.get("session_token"):
            self.tokens[session_id] = answer["session_token"]
        return answer


def describe(answer: dict[str, Any]) -> str:
    lines = [f"agent> {answer['reply']}"]
    meta = f"intent={answer.get('intent')} confidence={answer.get('confidence')}"
    for action in answer.get("actions") or []:
        meta += f" action={action['operation']}:{action['status']}"
    if answer.get("handoff"):
        handoff = answer["handoff"]
        meta += f" handoff={handoff['reason']} ticket={handoff.get('ticket_id')}"
    if answer.get("sources"):
        meta += " sources=" + ",".join(s["id"] for s in answer["sources"])
    if answer.get("revision"):
        meta += f" revision={answer['revision']}"
    lines.append(f"       [{meta} trace={answer['trace_id'][:12]}]")
    return "\n".join(lines)


def chat(url: str, session_id: str | None = None, stdin: TextIO = sys.stdin) -> int:
    session = session_id or f"terminal-{uuid.uuid4().hex[:8]}"
    revision: str | None = None  # the revision that answered the first turn, once known
    client = Client(url)
    print(f"Chatting with {url} (session {session}); Ctrl-D or 'quit' to leave.")
    while True:
        try:
            line = input("you> ") if stdin is sys.stdin else stdin.readline()
        except (EOFError, KeyboardInterrupt):
            print()
            return 0
        if not line or line.strip() in ("quit", "exit"):
            return 0
        if not line.strip():
            continue
        try:
            answer = client(session, line.strip(), revision=revision)
            revision = answer.get("revision") or revision
            print(describe(answer))
        except (RuntimeError, OSError) as exc:
            print(f"error: {exc}", file=sys.stderr)
