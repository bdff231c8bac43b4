"""The agent's HTTP entry at `/`: picks a model revision per request and forwards it to that
revision's Serve application.

Istio sets the revision header per weighted destination (or keeps the one a client echoes), so
with Istio the choice is already made; without it (`trafficProvider: none`) the router applies
the weights itself, by a stable hash of the session id so that a conversation stays on one
revision (docs/rollouts.md, "Conversations stick to one revision")."""

import hashlib
import random
import re
from collections.abc import Mapping
from typing import Any

from fastapi import FastAPI
from ray import serve
from ray.serve import Application, Deployment
from ray.serve.exceptions import BackPressureError
from ray.serve.handle import DeploymentHandle

from .agent_api import HandoffService, agent_http_app
from .config import ROUTER_DEPLOYMENT, RevisionRoute, RouterConfig
from .http import Overloaded
from .workflow.sessions import open_store
from .workflow.types import ChatRequest


def is_tester(config: RouterConfig, headers: Mapping[str, str]) -> bool:
    for match in config.testers:
        value = headers.get(match.name)
        if value is None:
            continue
        if match.exact is not None and value == match.exact:
            return True
        if match.regex is not None and re.search(match.regex, value):
            return True
    return False


# A session's place on the 0..99 scale the weights split (`session_bucket`).
BUCKETS = 100


def session_bucket(session_id: str) -> int:
    """A stable number in 0..99 for a session: the same in every replica, process and release
    (sha256, not Python's salted `hash`)."""
    digest = hashlib.sha256(session_id.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") % BUCKETS


def by_bucket(routes: list[RevisionRoute], bucket: int) -> RevisionRoute:
    """The revision whose share of the scale holds `bucket`. Shares are laid out from the last
    revision (the candidate) at 0 upwards, so raising the candidate's weight only moves
    sessions from stable to candidate, never back."""
    total = sum(r.weight for r in routes)
    if total == 0:
        return routes[0]
    covered = 0
    for route in reversed(routes):
        covered += route.weight
        if bucket * total < covered * BUCKETS:  # weights that do not add up to 100 scale
            return route
    return routes[0]  # unreachable: the last share ends at the top of the scale


def pick_revision(
    config: RouterConfig,
    headers: Mapping[str, str],
    rng: random.Random,
    session_id: str | None = None,
) -> RevisionRoute:
    """The revision named in the revision header if it is served (Istio's choice, or the
    revision a client echoes to keep its conversation where it started); the tester revision
    for requests matching a tester header; else by weight: by the session id's stable bucket
    when there is one, so every turn of a conversation lands on the same revision, drawn from
    `rng` otherwise. The first revision when every weight is 0 (a rollout never leaves that for
    long)."""
    routes = config.revisions
    served = {route.revision: route for route in routes}
    requested = headers.get(config.header)
    if requested is not None and requested in served:
        return served[requested]
    tester = config.tester_revision
    if tester is not None and tester in served and is_tester(config, headers):
        return served[tester]
    if session_id is not None:
        return by_bucket(routes, session_bucket(session_id))
    weighted = [r for r in routes if r.weight > 0]
    if not weighted:
        return routes[0]
    return rng.choices(weighted, weights=[r.weight for r in weighted])[0]


@serve.ingress()
class Router:
    def __init__(self, config: dict[str, Any]) -> None:
        from .app import ServeHandoffMetrics

        self.config = RouterConfig.model_validate(config)
        self._handles: dict[str, DeploymentHandle[Any]] = {}
        self._rng = random.Random()
        sessions = open_store(self.config.sessions, f"{self.config.namespace}:{self.config.agent}")
        self.handoffs = HandoffService.of(
            sessions,
            self.config.handoff,
            self.config.namespace,
            self._intents,
            ServeHandoffMetrics(),
            self.config.sessions.token_keys_dir,
            self.config.auth,
        )

    async def _intents(self) -> list[str]:
        """The stable revision's labels (the first route)."""
        labels: list[str] = await self._handle(self.config.revisions[0].app_name).intents.remote()
        return labels

    def _handle(self, app_name: str) -> DeploymentHandle[Any]:
        if app_name not in self._handles:
            self._handles[app_name] = serve.get_app_handle(app_name)
        return self._handles[app_name]

    async def _dispatch(self, request: ChatRequest, headers: Mapping[str, str]) -> dict[str, Any]:
        route = pick_revision(self.config, headers, self._rng, session_id=request.session_id)
        # The request object itself: validated once here, not again by the revision.
        try:
            response: dict[str, Any] = await self._handle(route.app_name).chat.remote(request)
        except BackPressureError:  # the revision's queue is full: refuse, as the revision would
            raise Overloaded() from None
        return response

    def __serve_build_asgi_app__(self) -> FastAPI:
        """Serve calls this in the replica after `__init__`: the routes need its state."""
        title = f"Switchboard agent {self.config.agent}"
        return agent_http_app(title, self._dispatch, self.handoffs)


RouterDeployment: Deployment = serve.deployment(name=ROUTER_DEPLOYMENT)(Router)


def build_app(
    args: dict[str, Any], options: dict[str, dict[str, Any]] | None = None
) -> Application:
    """Serve entry point (`switchboard.serving.router:build_app`); `args` is a RouterConfig."""
    config = RouterConfig.model_validate(args)
    deployment = RouterDeployment
    if options and ROUTER_DEPLOYMENT in options:
        deployment = deployment.options(**options[ROUTER_DEPLOYMENT])
    return deployment.bind(config.model_dump())
