"""One agent replica for HTTP tests: the orchestrator with scripted parts
(support.scripted_agent) behind the app every replica builds (`agent_http_app`), served by
uvicorn on 127.0.0.1, with a `requests` client."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import requests

from switchboard.serving.agent_api import HandoffService, agent_http_app
from switchboard.serving.asgi_thread import serve_in_thread
from switchboard.serving.config import AuthConfig, HandoffConfig
from switchboard.serving.session_tokens import TOKEN_HEADER
from switchboard.serving.workflow.orchestrator import Orchestrator
from switchboard.serving.workflow.sessions import SessionStore
from switchboard.serving.workflow.types import ChatRequest

from .scripted_agent import RecordingTools, scripted_orchestrator


def with_console(orchestrator: Orchestrator, tokens: Path | None = None) -> Orchestrator:
    handoff = HandoffConfig(adapter="ticketing", console_tokens_dir=str(tokens or "/nowhere"))
    orchestrator.config = orchestrator.config.model_copy(update={"handoff": handoff})
    return orchestrator


class Http:
    """requests with the replica's base URL."""

    def __init__(self, base: str) -> None:
        self.base, self.session = base, requests.Session()

    def get(self, path: str, **kwargs: Any) -> requests.Response:
        return self.session.get(self.base + path, timeout=10, **kwargs)

    def post(self, path: str, **kwargs: Any) -> requests.Response:
        return self.session.post(self.base + path, timeout=10, **kwargs)

    def stream(self, path: str) -> requests.Response:
        return self.session.get(self.base + path, stream=True, timeout=10)

    def close(self) -> None:
        self.session.close()


class Replica:
    """One agent replica: the orchestrator and the HTTP app over a session store, served by
    uvicorn on 127.0.0.1."""

    def __init__(
        self,
        store: SessionStore,
        tokens: Path,
        tools: RecordingTools | None = None,
        session_keys: Path | None = None,
        auth: AuthConfig | None = None,
    ) -> None:
        orchestrator, self.tools = scripted_orchestrator()
        if tools is not None:
            orchestrator.tools = self.tools = tools
        with_console(orchestrator, tokens)
        orchestrator.sessions = store
        self.store = store
        self.session_tokens: dict[str, str] = {}

        async def dispatch(request: ChatRequest, _headers: Mapping[str, str]) -> dict[str, Any]:
            return (await orchestrator.turn(request)).model_dump()

        async def intents() -> list[str]:
            return ["order_status", "payment_failed", "talk_to_human", "oos"]

        service = HandoffService.of(
            store,
            orchestrator.config.handoff,
            "shop",
            intents,
            token_keys_dir=str(session_keys) if session_keys else None,
            auth=auth,
        )
        self.url, self.server = serve_in_thread("agent", agent_http_app("t", dispatch, service))
        self.http = Http(self.url)

    def chat(self, message: str, session: str = "s1") -> dict[str, Any]:
        """A turn as a client takes it: with the session's last token, keeping the new one."""
        token = self.session_tokens.get(session)
        answer = self.http.post(
            "/v1/chat",
            json={"session_id": session, "message": message},
            headers={TOKEN_HEADER: token} if token else {},
        )
        assert answer.status_code == 200, answer.text
        body: dict[str, Any] = answer.json()
        if body.get("session_token"):
            self.session_tokens[session] = body["session_token"]
        return body

    def call(
        self, who: str | None, action: str, handoff: str, **body: Any
    ) -> tuple[int, dict[str, Any]]:
        headers = {"Authorization": f"Bearer token-of-{who}"} if who else {}
        answer = self.http.post(f"/v1/handoffs/{handoff}/{action}", json=body, headers=headers)
        return answer.status_code, answer.json()

    def stop(self) -> None:
        self.http.close()
        self.server.stop()
