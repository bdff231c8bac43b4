"""Agents on a real embedded Ray Serve, from manifests, as ``switchboard serve`` runs them.

``switchboard.serving`` (ray, torch) is imported only when an agent starts: the other helpers
stay light for the tests and benchmarks that never serve.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from switchboard.serving.session_tokens import TOKEN_HEADER

from .ports import free_port


@dataclass(frozen=True)
class EmbeddedServe:
    """``local.serve_plan`` running: its ``LocalRun``, Ray's temp dir, its metrics port."""

    run: Any
    ray_dir: Path
    metrics_port: int


@contextlib.contextmanager
def embedded_serve(plan: Any, *, cpus: int = 2, prefix: str = "sbray-") -> Iterator[EmbeddedServe]:
    """``local.serve_plan(plan)`` on an embedded Ray with ``cpus`` CPUs, its own temp dir and
    free ports; stopped and removed on the way out."""
    from switchboard.serving import local

    # Ray's socket paths must stay short (AF_UNIX limit): a temp dir directly under /tmp.
    ray_dir = Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))
    # Metrics every second, so a test or benchmark reads them without waiting 10 s.
    os.environ["RAY_metrics_report_interval_ms"] = "1000"  # noqa: SIM112 - Ray's name
    metrics_port = free_port()
    try:
        run = local.serve_plan(
            plan, host="127.0.0.1", port=free_port(), cpus=cpus, temp_dir=str(ray_dir),
            metrics_port=metrics_port,
        )  # fmt: skip
        try:
            yield EmbeddedServe(run, ray_dir, metrics_port)
        finally:
            run.stop()
    finally:
        shutil.rmtree(ray_dir, ignore_errors=True)


class ServedAgent:
    """An agent from manifests on a real embedded Ray Serve (2 CPUs, its own temp dir and
    ports, `RAY_AUTH_MODE=disabled`), with local tool gateways in front of the demo orders and
    ticketing systems (SQLite): the code path of `switchboard serve --demo-systems`."""

    def __init__(self, run: Any, ray_dir: Path, metrics_port: int, demo: Any, plan: Any) -> None:
        self.url: str = run.url
        self.gateway_urls: dict[str, str] = run.gateway_urls
        self.ray_dir = ray_dir
        self.metrics_port = metrics_port
        self.demo = demo
        self.plan = plan
        self.session_tokens: dict[str, str] = {}

    def raw(self, body: bytes, headers: dict[str, str] | None = None) -> tuple[int, dict[str, Any]]:
        request = urllib.request.Request(
            f"{self.url}/v1/chat", data=body, method="POST",
            headers={"Content-Type": "application/json", **(headers or {})},
        )  # fmt: skip
        try:
            with urllib.request.urlopen(request, timeout=60) as response:
                return response.status, json.loads(response.read())
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read() or b"{}")

    def chat(self, session: str, message: str) -> dict[str, Any]:
        """One turn, sending back the session's token as a client must (`session_tokens`)."""
        token = self.session_tokens.get(session)
        status, body = self.raw(
            json.dumps({"session_id": session, "message": message}).encode(),
            {TOKEN_HEADER: token} if token else None,
        )
        assert status == 200, body
        if body.get("session_token"):
            self.session_tokens[session] = body["session_token"]
        return body

    def api(
        self, method: str, path: str, body: dict[str, Any] | None = None, token: str | None = None
    ) -> tuple[int, dict[str, Any]]:
        """A call of the agent API or the customer's session API (docs/handoffs.md)."""
        headers = {"Content-Type": "application/json"}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        if path.startswith("/v1/sessions/"):  # a conversation's own reads take its token
            session = path.split("/")[3]
            if session in self.session_tokens:
                headers[TOKEN_HEADER] = self.session_tokens[session]
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(
            f"{self.url}{path}", data=data, method=method, headers=headers
        )
        try:
            with urllib.request.urlopen(request, timeout=60) as response:
                return response.status, json.loads(response.read())
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read() or b"{}")

    def ticket(self, ticket_id: str) -> dict[str, Any]:
        ticket: dict[str, Any] = self.demo.store.get_ticket(ticket_id)
        return ticket

    def audit_lines(self) -> list[dict[str, Any]]:
        lines = []
        for log in (self.ray_dir / "session_latest" / "logs").rglob("*.out"):
            for line in log.read_text(errors="replace").splitlines():
                if line.startswith('{"audit":'):
                    lines.append(json.loads(line)["audit"])
        return lines

    def gateway_metrics(self, adapter: str) -> str:
        with urllib.request.urlopen(f"{self.gateway_urls[adapter]}/metrics", timeout=5) as r:
            return str(r.read().decode())


@contextlib.contextmanager
def serve_documents(
    documents: list[dict[str, Any]], nlu_model: Path, state: Path
) -> Iterator[ServedAgent]:
    """The documents' agent with ``nlu_model`` and fresh demo systems (their state and the
    knowledge base under ``state``); one at a time (one Ray per process)."""
    from switchboard.operator.localrun import LocalOverrides, local_plan
    from switchboard.serving.demo import start_demo_systems

    with contextlib.ExitStack() as stack:
        demo = start_demo_systems(state / "demo.sqlite", orders_port=0, ticketing_port=0)
        stack.callback(demo.stop)
        overrides = LocalOverrides(
            nlu_model=str(nlu_model),
            knowledge_dir=str(state / "knowledge"),
            system_urls={"orders": demo.orders_url, "ticketing": demo.ticketing_url},
            state_dir=str(state),
        )
        plan = local_plan(documents, overrides)
        served = stack.enter_context(embedded_serve(plan))
        yield ServedAgent(served.run, served.ray_dir, served.metrics_port, demo, plan)
