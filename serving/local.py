"""Running agents on one machine: local tool gateways, the Serve applications on an embedded
Ray, and the same pipeline in a single process (no Ray) for comparison.

`switchboard serve` builds a `LocalPlan` (see `config`) from the same manifests the operator
takes, with the operator's renderers, and runs it with these functions.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import copy
import os
import resource
import shutil
import socket
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fastapi import FastAPI

from .agent_api import HandoffService, agent_http_app
from .asgi_thread import ServerThread, serve_in_thread
from .config import (
    SERVE_FRONT_END_ENV,
    AgentAppConfig,
    GatewayAuth,
    LocalAgent,
    LocalGateway,
    LocalPlan,
)
from .nlu_service import NluService, understanding
from .workflow.orchestrator import Orchestrator, Passage, Understanding
from .workflow.sessions import open_store
from .workflow.tools import AsyncioTaskRunner, HttpToolCaller
from .workflow.types import ChatRequest

# --- tool gateways ---------------------------------------------------------------------------


@dataclass
class RunningGateways:
    urls: dict[str, str]
    servers: list[ServerThread]
    secrets: list[tempfile.TemporaryDirectory[str]]

    def stop(self) -> None:
        for server in self.servers:
            server.stop()
        for directory in self.secrets:
            directory.cleanup()


def secret_files(prefix: str, values: Mapping[str, str]) -> tempfile.TemporaryDirectory[str]:
    """A Secret's keys as files in a private (0700) directory, each readable by its owner only:
    what a mounted Secret looks like to the code that reads it."""
    directory = tempfile.TemporaryDirectory(prefix=prefix)
    for key, value in values.items():
        path = Path(directory.name) / key
        path.write_text(value, encoding="utf-8")
        path.chmod(0o400)
    return directory


def start_gateways(gateways: list[LocalGateway], host: str = "127.0.0.1") -> RunningGateways:
    """One gateway per adapter in this process, with its credentials in a 0700 directory."""
    from .gateway.app import create_app

    running = RunningGateways({}, [], [])
    try:
        for gw in gateways:
            secrets = secret_files(f"switchboard-{gw.config.adapter}-", gw.credentials)
            running.secrets.append(secrets)
            auth = GatewayAuth(
                type=gw.config.auth.type,
                header_name=gw.config.auth.header_name,
                credentials_dir=secrets.name,
            )
            config = gw.config.model_copy(update={"auth": auth})
            url, server = serve_in_thread(
                f"gateway-{gw.config.adapter}", create_app(config), host, lifespan="on"
            )
            running.urls[gw.config.adapter] = url
            running.servers.append(server)
    except Exception:
        running.stop()
        raise
    return running


def with_tool_urls(app: AgentAppConfig, urls: Mapping[str, str]) -> AgentAppConfig:
    tools = [t.model_copy(update={"url": urls.get(t.adapter, t.url)}) for t in app.tools]
    return app.model_copy(update={"tools": tools})


def _every_entry(agent: LocalAgent, change: Callable[[Any], Any]) -> LocalAgent:
    """`change` applied to each config that serves the agent's HTTP: the revisions and the
    router."""
    return agent.model_copy(
        update={
            "app": change(agent.app),
            "candidate": change(agent.candidate) if agent.candidate else None,
            "router": change(agent.router),
        }
    )


def with_console_tokens(agent: LocalAgent, directory: str) -> LocalAgent:
    """The agent with its human agents' tokens read from `directory`."""

    def change(config: Any) -> Any:
        handoff = config.handoff.model_copy(update={"console_tokens_dir": directory})
        return config.model_copy(update={"handoff": handoff})

    return _every_entry(agent, change)


def with_session_keys(agent: LocalAgent, directory: str) -> LocalAgent:
    """The agent with the keys that sign session tokens read from `directory`."""

    def change(config: Any) -> Any:
        sessions = config.sessions.model_copy(update={"token_keys_dir": directory})
        return config.model_copy(update={"sessions": sessions})

    return _every_entry(agent, change)


# --- Ray Serve -------------------------------------------------------------------------------


def fit_to_cpus(serve_config: dict[str, Any], cpus: float) -> dict[str, Any]:
    """Scale replica CPU shares down so the minimum replicas of every application fit `cpus`
    (the cluster sizes are for real worker pods; a laptop or CI box has two cores)."""
    fitted = copy.deepcopy(serve_config)
    deployments = [d for app in fitted["applications"] for d in app.get("deployments", [])]
    needed = sum(
        d.get("ray_actor_options", {}).get("num_cpus", 1)
        * max(1, d.get("autoscaling_config", {}).get("min_replicas", 1))
        for d in deployments
    )
    budget = cpus * 0.9  # headroom for Ray's own tasks (long-running tool calls)
    if needed > budget:
        for d in deployments:
            options = d.setdefault("ray_actor_options", {})
            options["num_cpus"] = round(options.get("num_cpus", 1) * budget / needed, 3)
    return fitted


def _options(serve_config: dict[str, Any], app_name: str) -> dict[str, dict[str, Any]]:
    for app in serve_config["applications"]:
        if app["name"] == app_name:
            return {
                d["name"]: {k: v for k, v in d.items() if k != "name"} for d in app["deployments"]
            }
    return {}


def revision_apps(agent: LocalAgent) -> list[AgentAppConfig]:
    """The revisions the agent serves: the stable one, then a ModelRollout's candidate."""
    return [agent.app] + ([agent.candidate] if agent.candidate is not None else [])


def deploy_agent(agent: LocalAgent, route_prefix: str = "/", cpus: float | None = None) -> None:
    """The agent as its serveConfigV2 lays it out, with the rendered deployment options: its
    one revision at `route_prefix`, or during a rollout both revisions behind the router."""
    from ray import serve

    from . import app as agent_app
    from . import router

    config = fit_to_cpus(agent.serve_config, cpus) if cpus else agent.serve_config
    revisions = revision_apps(agent)
    for revision in revisions:
        revision_app = f"{revision.agent}-{revision.revision}"
        serve.run(
            agent_app.build_app(revision.model_dump(), _options(config, revision_app)),
            name=revision_app,
            route_prefix=route_prefix if len(revisions) == 1 else None,
        )
    if len(revisions) > 1:
        serve.run(
            router.build_app(agent.router.model_dump(), _options(config, agent.app.agent)),
            name=agent.app.agent,
            route_prefix=route_prefix,
        )


def free_ports(count: int, taken: frozenset[int] = frozenset()) -> list[int]:
    """Ports free on this machine now, none of them in `taken` (held open together, so they
    differ). A port the caller chose and released a moment ago (the agent's HTTP port) is free
    to the kernel too, and it hands it out again: HAProxy then binds its stats page there and
    its HTTP frontend fails with "Address already in use"."""
    with contextlib.ExitStack() as stack:
        found: list[int] = []
        while len(found) < count:
            sock = stack.enter_context(socket.socket())
            sock.bind(("127.0.0.1", 0))
            port = int(sock.getsockname()[1])
            if port not in taken:
                found.append(port)
        return found


# HAProxy's default, 4096 connections, wants about 10,300 open files; it refuses to start below.
HAPROXY_DEFAULT_OPEN_FILES = 10_300


def _raise_open_files_limit() -> int:
    """Raise this process's open-files limit to its hard limit (Ray's processes inherit it);
    the limit now."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
    return HAPROXY_DEFAULT_OPEN_FILES if soft == resource.RLIM_INFINITY else soft


def haproxy_connection_limit(open_files: int) -> dict[str, str]:
    """HAProxy's connection limit for a process allowed `open_files`: its default where that
    is enough, else about a third of it (two descriptors a connection, and a margin) — a
    container run with the common limit of 1024 gets 256 connections instead of no HAProxy."""
    if open_files >= HAPROXY_DEFAULT_OPEN_FILES:
        return {}
    return {"RAY_SERVE_HAPROXY_MAXCONN": str(max(64, (open_files - 256) // 3))}


def local_front_end_env(taken: frozenset[int] = frozenset()) -> dict[str, str]:
    """Where Serve's HAProxy front end (`SERVE_FRONT_END_ENV`) keeps its files and ports for a
    Ray of its own on this machine.

    HAProxy keeps its configuration, admin socket and state under fixed /tmp paths and binds
    fixed stats and metrics ports by default: fine for one Ray node per pod, a clash for two
    local runs on one machine (tests, a benchmark beside them). Each run gets its own. And
    a replica that stops stays reachable for a drain period so that every node's HAProxy can
    deregister it (30 s by default); here the one HAProxy is on the same node and retries a
    refused connection on another replica, so two seconds lose nothing and let a stop finish
    within a container's grace period. Under a low open-files limit HAProxy gets fewer
    connections rather than none (`haproxy_connection_limit`). The folder is short on
    purpose: Ray adds a 40-character hash under it, and HAProxy refuses socket paths over 97
    characters."""
    base = tempfile.mkdtemp(prefix="sb-haproxy-", dir="/tmp")
    atexit.register(shutil.rmtree, base, True)
    stats, metrics = free_ports(2, taken)
    return {
        **haproxy_connection_limit(_raise_open_files_limit()),
        "RAY_SERVE_HAPROXY_CONFIG_FILE_LOC": os.path.join(base, "haproxy.cfg"),
        "RAY_SERVE_HAPROXY_SOCKET_PATH": os.path.join(base, "admin.sock"),
        "RAY_SERVE_HAPROXY_SERVER_STATE_BASE": base,
        "RAY_SERVE_HAPROXY_SERVER_STATE_FILE": os.path.join(base, "server-state"),
        "RAY_SERVE_HAPROXY_STATS_PORT": str(stats),
        "RAY_SERVE_HAPROXY_METRICS_PORT": str(metrics),
        "RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S": "2",
    }


def start_ray(
    cpus: int,
    temp_dir: str | None = None,
    http_port: int = 8000,
    host: str = "127.0.0.1",
    metrics_port: int | None = None,
) -> None:
    """An embedded Ray with Serve's front end (HAProxy, as in the cluster) on `host:http_port`;
    the seed metrics are served by Ray's metrics agent on `metrics_port` (Prometheus format)."""
    import ray
    from ray import serve

    os.environ.setdefault("RAY_AUTH_MODE", "disabled")  # no token files for a local run
    for name, value in SERVE_FRONT_END_ENV.items():
        os.environ.setdefault(name, value)  # RAY_SERVE_ENABLE_HA_PROXY=0 keeps Serve's proxy
    os.environ.update(local_front_end_env(frozenset({http_port, metrics_port or 0})))
    options: dict[str, Any] = {}
    if metrics_port:
        options["_metrics_export_port"] = metrics_port
    ray.init(
        num_cpus=cpus,
        include_dashboard=False,
        _temp_dir=temp_dir,
        log_to_driver=False,
        configure_logging=False,
        **options,
    )
    serve.start(http_options={"host": host, "port": http_port})


# --- the same pipeline in one process --------------------------------------------------------


class LocalUnderstander:
    def __init__(self, service: NluService) -> None:
        self.service = service

    async def understand(self, text: str) -> Understanding:
        raw = (await asyncio.to_thread(self.service.classify, [text]))[0]
        return understanding(raw)


class LocalRetriever:
    def __init__(self, path: str, top_k: int) -> None:
        from .retriever import KnowledgeBase

        self.kb = KnowledgeBase.load(path, top_k=top_k)

    async def search(self, text: str, k: int) -> list[Passage]:
        return await self.kb.asearch(text, k)


def local_orchestrator(app: AgentAppConfig) -> Orchestrator:
    """The orchestrator with NLU, retriever and LLM as plain objects of this process."""
    tools = HttpToolCaller(app.tools)
    generator = None
    if app.llm is not None:
        from .llm import load_generator

        generator = load_generator(app.llm)
    retriever = (
        LocalRetriever(app.knowledge_base.path, app.knowledge_base.top_k)
        if app.knowledge_base
        else None
    )
    return Orchestrator(
        app,
        understander=LocalUnderstander(NluService(app.nlu)),
        tools=tools,
        sessions=open_store(app.sessions, f"{app.namespace}:{app.agent}"),
        tasks=AsyncioTaskRunner(tools),
        generator=generator,
        retriever=retriever,
    )


def single_process_api(app: AgentAppConfig) -> FastAPI:
    """The agent's HTTP app for one revision, with no Ray at all."""
    orchestrator = local_orchestrator(app)
    understander: Any = orchestrator.understander

    async def dispatch(request: ChatRequest, _headers: Mapping[str, str]) -> dict[str, Any]:
        return (await orchestrator.turn(request)).model_dump()

    async def intents() -> list[str]:
        return list(understander.service.model.labels)

    service = HandoffService.of(
        orchestrator.sessions,
        app.handoff,
        app.namespace,
        intents,
        token_keys_dir=app.sessions.token_keys_dir,
        auth=app.auth,
    )
    return agent_http_app(f"Switchboard agent {app.agent} (single process)", dispatch, service)


# --- `switchboard serve` ---------------------------------------------------------------------


@dataclass(frozen=True)
class LocalRun:
    url: str
    """Base URL of the agent (its router)."""
    gateway_urls: dict[str, str]
    stop: Callable[[], None]


def serve_plan(
    plan: LocalPlan,
    *,
    host: str,
    port: int,
    cpus: int,
    temp_dir: str | None = None,
    metrics_port: int | None = None,
) -> LocalRun:
    """Start gateways, Ray and every agent; `stop()` ends all of it."""
    import ray
    from ray import serve

    gateways = start_gateways(plan.gateways, host)
    try:
        os.environ.update(plan.env)  # Ray's workers inherit the driver's environment
        start_ray(cpus, temp_dir, http_port=port, host=host, metrics_port=metrics_port)
        single = len(plan.agents) == 1
        for agent in plan.agents:
            local = agent.model_copy(
                update={
                    "app": with_tool_urls(agent.app, gateways.urls),
                    "candidate": with_tool_urls(agent.candidate, gateways.urls)
                    if agent.candidate
                    else None,
                }
            )
            if agent.console_tokens:
                prefix = f"switchboard-{agent.app.agent}-console-"
                tokens = secret_files(prefix, agent.console_tokens)
                gateways.secrets.append(tokens)  # removed with the gateways' credentials
                local = with_console_tokens(local, tokens.name)
            if agent.session_keys:
                keys = secret_files(f"switchboard-{agent.app.agent}-keys-", agent.session_keys)
                gateways.secrets.append(keys)
                local = with_session_keys(local, keys.name)
            deploy_agent(local, "/" if single else f"/{agent.app.agent}", cpus=cpus)
    except BaseException:
        gateways.stop()
        if ray.is_initialized():
            ray.shutdown()
        raise

    def stop() -> None:
        try:
            serve.shutdown()  # type: ignore[no-untyped-call]
        finally:
            ray.shutdown()
            gateways.stop()

    return LocalRun(f"http://{host}:{port}", dict(gateways.urls), stop)
