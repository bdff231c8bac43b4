"""The agent's HTTP entry at `/`: picks a model revision per request and forwards it to that
revision's Serve application.

Istio sets the revision header per weighted destination, so with Istio the choice is already
made; without it (`trafficProvider: none`) the router applies the weights itself."""

import random
import re
from collections.abc import Mapping
from typing import Any

from fastapi import Request
from fastapi.responses import JSONResponse
from ray import serve
from ray.serve import Application, Deployment
from ray.serve.handle import DeploymentHandle

from .config import ROUTER_DEPLOYMENT, RevisionRoute, RouterConfig
from .http import CHAT_OPENAPI, handle_chat, new_api
from .workflow.types import ChatRequest

api = new_api("Switchboard agent")


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


def pick_revision(
    config: RouterConfig, headers: Mapping[str, str], rng: random.Random
) -> RevisionRoute:
    """The revision named in the revision header if it is served; the tester revision for
    requests matching a tester header; else one drawn by weight (the first when every weight
    is 0, which a rollout never leaves for long)."""
    routes = config.revisions
    requested = headers.get(config.header)
    wanted = requested or (config.tester_revision if is_tester(config, headers) else None)
    if wanted:
        for route in routes:
            if route.revision == wanted:
                return route
    weighted = [r for r in routes if r.weight > 0]
    if not weighted:
        return routes[0]
    return rng.choices(weighted, weights=[r.weight for r in weighted])[0]


@serve.ingress(api)
class Router:
    def __init__(self, config: dict[str, Any]) -> None:
        self.config = RouterConfig.model_validate(config)
        self._handles: dict[str, DeploymentHandle[Any]] = {}
        self._rng = random.Random()

    def _handle(self, app_name: str) -> DeploymentHandle[Any]:
        if app_name not in self._handles:
            self._handles[app_name] = serve.get_app_handle(app_name)
        return self._handles[app_name]

    async def _dispatch(self, request: ChatRequest, headers: Mapping[str, str]) -> dict[str, Any]:
        route = pick_revision(self.config, headers, self._rng)
        response: dict[str, Any] = await self._handle(route.app_name).chat.remote(
            request.model_dump()
        )
        return response

    @api.post("/v1/chat", openapi_extra=CHAT_OPENAPI)
    async def chat(self, request: Request) -> JSONResponse:
        return await handle_chat(request, self._dispatch)


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
