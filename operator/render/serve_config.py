"""SupportAgent spec → the Serve side of the contract: `AgentAppConfig` and `serveConfigV2`.

Each model revision runs as its own Serve application (`<agent>-<revision>`, no HTTP route),
and a small router application at `/` sends each request to a revision: the one named in the
revision header (which Istio sets per destination), else by weight. A canary is thus one more
application in the same Ray cluster, not a second cluster.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from switchboard.serving import config as contract

from ..api.base import ReplicaAutoscaling
from ..api.modelrollout import HeaderMatch
from ..api.supportagent import LlmSpec, NluSpec, PolicySpec, SupportAgentSpec, window_seconds
from ..api.tooladapter import ToolAdapterSpec
from .names import Parent, gateway_name, revision, revision_app_name, service_url

MODELS_ROOT = "/mnt/models"
KNOWLEDGE_BASE_DIR = "/var/lib/switchboard/knowledge-base"
REDIS_URL_ENV = "SWITCHBOARD_REDIS_URL"
LLM_API_KEY_ENV = "SWITCHBOARD_LLM_API_KEY"
# S3 credentials of `spec.modelStorage`, filled from its Secret in every Ray container.
MODEL_STORAGE_ACCESS_KEY_ENV = "SWITCHBOARD_MODEL_STORAGE_ACCESS_KEY_ID"
MODEL_STORAGE_SECRET_KEY_ENV = "SWITCHBOARD_MODEL_STORAGE_SECRET_ACCESS_KEY"
CONSOLE_TOKENS_VOLUME = "console-tokens"
SESSION_KEYS_VOLUME = "session-token-keys"
JWKS_VOLUME = "jwks"
AGENT_TOKEN_VOLUME = "agent-token"
# The file `spec.auth.jwksSecret`'s key becomes inside `contract.JWKS_DIR`.
JWKS_FILE = "jwks.json"

# CPU share of one replica of each deployment. The head runs no replicas (num-cpus 0), so
# these decide how many replicas fit a worker and when Ray's autoscaler adds one.
# The orchestrator runs the NLU and the knowledge-base search in its own replicas: a full CPU.
ACTOR_CPUS = {
    contract.ROUTER_DEPLOYMENT: 0.1,
    contract.ORCHESTRATOR_DEPLOYMENT: 1.0,
    contract.LLM_DEPLOYMENT: 1.0,
}


class UnresolvedReference(ValueError):
    """The spec names something that does not exist (a ToolAdapter, an operation)."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


@dataclass(frozen=True)
class PodRuntime:
    """What every Ray container needs for the agent's config to resolve: volumes and env."""

    volumes: list[dict[str, Any]] = field(default_factory=list)
    volume_mounts: list[dict[str, Any]] = field(default_factory=list)
    env: list[dict[str, Any]] = field(default_factory=list)


def model_path(uri: str) -> str:
    """Where a model URI is found inside the Ray pods (`s3://` URIs are passed on as they are:
    each replica downloads them into its local cache)."""
    if uri.startswith("s3://"):
        return uri
    if uri.startswith("file://"):
        return uri.removeprefix("file://")
    claim, _, rest = uri.removeprefix("pvc://").partition("/")
    return f"{MODELS_ROOT}/{claim}/{rest}".rstrip("/")


def _model_claims(spec: SupportAgentSpec, extra_uris: Sequence[str] = ()) -> list[str]:
    uris = [spec.nlu.model_uri, *extra_uris]
    uris += [spec.llm.model_uri] if spec.llm and spec.llm.model_uri else []
    return sorted(
        {u.removeprefix("pvc://").split("/", 1)[0] for u in uris if u.startswith("pvc://")}
    )


def pod_runtime(spec: SupportAgentSpec, extra_model_uris: Sequence[str] = ()) -> PodRuntime:
    """Volumes and env of every Ray container; a rollout's candidate model is mounted too."""
    volumes: list[dict[str, Any]] = []
    mounts: list[dict[str, Any]] = []
    # Every Ray process reads the front-end switch, so every container gets it.
    env: list[dict[str, Any]] = [
        {"name": name, "value": value} for name, value in contract.SERVE_FRONT_END_ENV.items()
    ]
    for claim in _model_claims(spec, extra_model_uris):
        volumes.append(
            {
                "name": f"models-{claim}",
                "persistentVolumeClaim": {"claimName": claim, "readOnly": True},
            }
        )
        mounts.append(
            {"name": f"models-{claim}", "mountPath": f"{MODELS_ROOT}/{claim}", "readOnly": True}
        )
    kb = spec.knowledge_base
    if kb and kb.config_map:
        volumes.append({"name": "knowledge-base", "configMap": {"name": kb.config_map.name}})
        mounts.append({"name": "knowledge-base", "mountPath": KNOWLEDGE_BASE_DIR, "readOnly": True})
    elif kb and kb.volume:
        volumes.append(
            {
                "name": "knowledge-base",
                "persistentVolumeClaim": {"claimName": kb.volume.claim_name, "readOnly": True},
            }
        )
        mounts.append({"name": "knowledge-base", "mountPath": KNOWLEDGE_BASE_DIR, "readOnly": True})
    if spec.sessions.redis:
        ref = spec.sessions.redis.url_secret_ref
        env.append(secret_env(REDIS_URL_ENV, ref.name, ref.key))
    if spec.llm and spec.llm.api_key_secret_ref:
        ref = spec.llm.api_key_secret_ref
        env.append(secret_env(LLM_API_KEY_ENV, ref.name, ref.key))
    creds = spec.model_storage.credentials_secret_ref if spec.model_storage else None
    if creds:
        env.append(secret_env(MODEL_STORAGE_ACCESS_KEY_ENV, creds.name, creds.access_key_id_key))
        env.append(
            secret_env(MODEL_STORAGE_SECRET_KEY_ENV, creds.name, creds.secret_access_key_key)
        )
    tokens = spec.handoff.console_tokens_secret
    if tokens:
        # Files, not env: a token added or revoked reaches the replicas without a restart.
        # Readable by the image's non-root user (the Ray pods set no fsGroup), written by none.
        volumes.append(
            {"name": CONSOLE_TOKENS_VOLUME, "secret": {"secretName": tokens, "defaultMode": 0o444}}
        )
        mounts.append(
            {
                "name": CONSOLE_TOKENS_VOLUME,
                "mountPath": contract.CONSOLE_TOKENS_DIR,
                "readOnly": True,
            }
        )
    keys = spec.sessions.token_secret
    if keys:  # files too: a key added for a rotation reaches the replicas in place
        volumes.append(
            {"name": SESSION_KEYS_VOLUME, "secret": {"secretName": keys, "defaultMode": 0o444}}
        )
        mounts.append(
            {
                "name": SESSION_KEYS_VOLUME,
                "mountPath": contract.SESSION_TOKEN_KEYS_DIR,
                "readOnly": True,
            }
        )
    auth = spec.auth
    if auth and auth.jwks_secret:
        # One key as a file, no subPath: a rotated key set reaches the replicas in place.
        volumes.append(
            {
                "name": JWKS_VOLUME,
                "secret": {
                    "secretName": auth.jwks_secret.name,
                    "items": [{"key": auth.jwks_secret.key, "path": JWKS_FILE}],
                    "defaultMode": 0o444,
                },
            }
        )
        mounts.append({"name": JWKS_VOLUME, "mountPath": contract.JWKS_DIR, "readOnly": True})
    if spec.tools:
        volumes.append(agent_token_volume())
        mounts.append(
            {"name": AGENT_TOKEN_VOLUME, "mountPath": contract.AGENT_TOKEN_DIR, "readOnly": True}
        )
    return PodRuntime(volumes, mounts, env)


def agent_token_volume() -> dict[str, Any]:
    """The Ray pods' ServiceAccount token for the gateways' audience only (useless against the
    API server), short-lived and rotated by the kubelet; the tool caller re-reads it per call."""
    return {
        "name": AGENT_TOKEN_VOLUME,
        "projected": {
            # Readable by the image's non-root user (the Ray pods set no fsGroup).
            "defaultMode": 0o444,
            "sources": [
                {
                    "serviceAccountToken": {
                        "audience": contract.AGENT_TOKEN_AUDIENCE,
                        "expirationSeconds": contract.AGENT_TOKEN_EXPIRATION_SECONDS,
                        "path": contract.AGENT_TOKEN_PATH.rsplit("/", 1)[1],
                    }
                }
            ],
        },
    }


def istio_verifies(spec: SupportAgentSpec) -> bool:
    """Whether Istio verifies the customers' tokens at the edge: the agent has ingress and a
    `jwksUri` Istio can fetch (a JWKS in a Secret is verified by the agent itself)."""
    return bool(spec.auth and spec.ingress and spec.auth.jwks_uri)


def auth_config(spec: SupportAgentSpec) -> contract.AuthConfig | None:
    auth = spec.auth
    if auth is None:
        return None
    return contract.AuthConfig(
        mode="istio" if istio_verifies(spec) else "verify",
        issuer=auth.issuer,
        audiences=list(auth.audiences),
        customer_id_claim=auth.customer_id_claim,
        required=auth.required,
        jwks_uri=auth.jwks_uri,
        jwks_path=f"{contract.JWKS_DIR}/{JWKS_FILE}" if auth.jwks_secret else None,
    )


def model_storage(spec: SupportAgentSpec, uri: str | None) -> contract.ModelStorageConfig | None:
    """How the data plane reaches `uri`: only `s3://` URIs need (and get) storage settings."""
    if not uri or not uri.startswith("s3://"):
        return None
    storage = spec.model_storage
    if storage is None:  # a rollout's candidate on s3 for an agent without modelStorage
        raise UnresolvedReference(
            "ModelStorageMissing",
            f"model {uri} is in object storage, but the SupportAgent has no spec.modelStorage",
        )
    creds = storage.credentials_secret_ref
    return contract.ModelStorageConfig(
        endpoint=storage.endpoint,
        region=storage.region,
        access_key_id_env=MODEL_STORAGE_ACCESS_KEY_ENV if creds else None,
        secret_access_key_env=MODEL_STORAGE_SECRET_KEY_ENV if creds else None,
    )


def secret_env(name: str, secret: str, key: str) -> dict[str, Any]:
    return {"name": name, "valueFrom": {"secretKeyRef": {"name": secret, "key": key}}}


def model_identity(nlu: NluSpec, llm: LlmSpec | None) -> dict[str, Any]:
    """The fields that make a model revision (see `names.revision`)."""
    identity: dict[str, Any] = {
        "nlu": {"modelUri": nlu.model_uri, "quantization": nlu.quantization}
    }
    if llm:
        identity["llm"] = llm.model_dump(
            by_alias=True,
            exclude_none=True,
            include={"backend", "model_uri", "endpoint", "model_name", "quantization"},
        )
    return identity


def agent_revision(spec: SupportAgentSpec) -> str:
    return revision(model_identity(spec.nlu, spec.llm))


def tool_configs(
    parent: Parent, spec: SupportAgentSpec, adapters: Mapping[str, ToolAdapterSpec]
) -> list[contract.ToolConfig]:
    """Resolve the agent's tool grants against the ToolAdapters that exist."""
    tools = []
    for grant in spec.tools:
        adapter = adapters.get(grant.adapter)
        if adapter is None:
            raise UnresolvedReference(
                "ToolAdapterNotFound",
                f"ToolAdapter {parent.namespace}/{grant.adapter} does not exist",
            )
        declared = {op.name: op for op in adapter.operations}
        unknown = [op for op in grant.operations if op not in declared]
        if unknown:
            raise UnresolvedReference(
                "UnknownOperation",
                f"ToolAdapter {parent.namespace}/{grant.adapter} declares no operation "
                f"{', '.join(sorted(unknown))} (it has {', '.join(sorted(declared))})",
            )
        tools.append(
            contract.ToolConfig(
                adapter=grant.adapter,
                system=adapter.system,
                url=service_url(
                    gateway_name(grant.adapter), parent.namespace, contract.GATEWAY_HTTP_PORT
                ),
                operations=[
                    contract.ToolOperationConfig(
                        name=op,
                        mutating=declared[op].mutating,
                        long_running=declared[op].long_running,
                    )
                    for op in grant.operations
                ],
            )
        )
    return tools


def check_plan_operations(parent: Parent, spec: SupportAgentSpec) -> None:
    """Every operation a plan calls must be granted to the agent in `tools`."""
    granted = {f"{g.adapter}.{op}" for g in spec.tools for op in g.operations}
    for plan in spec.intents:
        if plan.operation and plan.operation not in granted:
            raise UnresolvedReference(
                "UnknownOperation",
                f"SupportAgent {parent.namespace}/{parent.name}: intent {plan.intent} calls "
                f"{plan.operation}, which is not granted in spec.tools",
            )


def handoff_config(
    parent: Parent, spec: SupportAgentSpec, adapters: Mapping[str, ToolAdapterSpec]
) -> contract.HandoffConfig:
    """`spec.handoff` resolved against the ToolAdapters that exist: the adapter must declare
    the operation, the operation every input that `fields` fills (when its schema lists them),
    and `fields` must fill every input the operation requires."""
    handoff = spec.handoff
    agent = f"SupportAgent {parent.namespace}/{parent.name}"
    config = contract.HandoffConfig(
        adapter=handoff.adapter,
        operation=handoff.operation,
        fields=dict(handoff.fields),
        console_tokens_dir=contract.CONSOLE_TOKENS_DIR if handoff.console_tokens_secret else None,
    )
    if handoff.adapter is None:
        return config
    where = f"ToolAdapter {parent.namespace}/{handoff.adapter}"
    adapter = adapters.get(handoff.adapter)
    if adapter is None:
        raise UnresolvedReference(
            "HandoffAdapterMissing",
            f"{agent}: spec.handoff.adapter names {where}, which does not exist",
        )
    declared = {op.name: op for op in adapter.operations}
    operation = declared.get(handoff.operation)
    if operation is None:
        raise UnresolvedReference(
            "HandoffOperationUnknown",
            f"{agent}: {where} declares no operation {handoff.operation} "
            f"(spec.handoff.operation; it has {', '.join(sorted(declared))})",
        )
    schema = operation.input_schema
    properties = schema.get("properties")
    if isinstance(properties, Mapping) and properties:
        unknown = sorted(set(handoff.fields) - set(properties))
        if unknown:
            raise UnresolvedReference(
                "HandoffFieldUnknown",
                f"{agent}: spec.handoff.fields fills {', '.join(unknown)}, which operation "
                f"{handoff.adapter}.{handoff.operation} does not take (its inputs: "
                f"{', '.join(sorted(properties))})",
            )
    required = schema.get("required")
    if isinstance(required, list):
        unfilled = sorted(str(r) for r in required if r not in handoff.fields)
        if unfilled:
            raise UnresolvedReference(
                "HandoffFieldMissing",
                f"{agent}: operation {handoff.adapter}.{handoff.operation} requires "
                f"{', '.join(unfilled)}, which spec.handoff.fields does not fill",
            )
    return config


def session_config(spec: SupportAgentSpec) -> contract.SessionConfig:
    return contract.SessionConfig(
        store=spec.sessions.store,
        redis_url_env=REDIS_URL_ENV if spec.sessions.redis else None,
        ttl_seconds=spec.sessions.ttl_seconds,
        token_keys_dir=contract.SESSION_TOKEN_KEYS_DIR if spec.sessions.token_secret else None,
    )


def agent_app_config(
    parent: Parent, spec: SupportAgentSpec, adapters: Mapping[str, ToolAdapterSpec]
) -> contract.AgentAppConfig:
    check_plan_operations(parent, spec)
    # Tools first: a missing adapter is named as a tool, then the handoff's own checks.
    tools = tool_configs(parent, spec, adapters)
    handoff = handoff_config(parent, spec, adapters)
    rev = agent_revision(spec)
    llm = None
    if spec.llm:
        llm = contract.LlmConfig(
            backend=spec.llm.backend,
            model_path=model_path(spec.llm.model_uri) if spec.llm.model_uri else None,
            storage=model_storage(spec, spec.llm.model_uri),
            endpoint=spec.llm.endpoint,
            model_name=spec.llm.model_name,
            api_key_env=LLM_API_KEY_ENV if spec.llm.api_key_secret_ref else None,
            quantization=spec.llm.quantization,
            device="cuda" if spec.llm.gpus_per_replica > 0 else "cpu",
            max_tokens=spec.llm.max_tokens,
            revision=revision(model_identity(spec.nlu, spec.llm)["llm"]),
        )
    kb = spec.knowledge_base
    kb_path = None
    if kb and kb.config_map:
        kb_path = KNOWLEDGE_BASE_DIR
    elif kb and kb.volume:
        kb_path = f"{KNOWLEDGE_BASE_DIR}/{kb.volume.path.strip('/')}".rstrip("/")
    policy = spec.policy
    return contract.AgentAppConfig(
        agent=parent.name,
        namespace=parent.namespace,
        revision=rev,
        nlu=contract.NluConfig(
            model_path=model_path(spec.nlu.model_uri),
            storage=model_storage(spec, spec.nlu.model_uri),
            quantization=spec.nlu.quantization,
            revision=revision(model_identity(spec.nlu, None)["nlu"]),
            cache_size=spec.nlu.cache_size,
        ),
        llm=llm,
        knowledge_base=(
            contract.KnowledgeBaseConfig(
                path=kb_path, top_k=kb.top_k, min_relevance=kb.min_relevance
            )
            if kb and kb_path
            else None
        ),
        tools=tools,
        intents=[
            contract.IntentPlanConfig(
                intent=plan.intent,
                required_slots=list(plan.required_slots),
                slot_prompts=dict(plan.slot_prompts),
                operation=plan.operation,
                parameters=dict(plan.parameters),
                answer_template=plan.answer_template,
                use_knowledge_base=plan.use_knowledge_base,
                handoff=plan.handoff,
            )
            for plan in spec.intents
        ],
        policy=contract.PolicyConfig(
            handoff_confidence_threshold=policy.handoff_confidence_threshold,
            approval_required=list(policy.approval_required),
            pii_redaction=policy.pii_redaction,
            max_tool_calls_per_turn=policy.max_tool_calls_per_turn,
            rephrase_attempts=policy.rephrase_attempts,
            rate_limit=rate_limit_config(policy),
            budgets=budgets_config(policy),
        ),
        fallback=fallback_config(spec),
        max_turns_in_flight=turns_in_flight(spec.orchestrator.autoscaling),
        small_talk=contract.SmallTalkConfig(
            **spec.small_talk.model_dump(include={"enabled", "greeting", "thanks", "goodbye"})
        ),
        sessions=session_config(spec),
        handoff=handoff,
        auth=auth_config(spec),
    )


_FALLBACK_ACTIONS: dict[str, Literal["knowledge_base", "reply", "clarify", "handoff"]] = {
    "knowledgeBase": "knowledge_base",
    "reply": "reply",
    "clarify": "clarify",
    "handoff": "handoff",
}


def fallback_config(spec: SupportAgentSpec) -> contract.FallbackConfig:
    action = spec.fallback.action or ("knowledgeBase" if spec.knowledge_base else "handoff")
    return contract.FallbackConfig(action=_FALLBACK_ACTIONS[action], reply=spec.fallback.reply)


def turns_in_flight(scaling: ReplicaAutoscaling) -> int:
    """Requests one replica takes at once: headroom above the autoscaling target. The
    orchestrator batches the NLU across the turns in flight in one replica, so it needs at
    least two full batches of them: below its batch size, throughput collapses (measured: 13
    req/s at 16 in flight against 327 req/s at 64; BENCHMARKS.md, Serving)."""
    return max(2 * contract.NLU_MAX_BATCH_SIZE, math.ceil(2 * scaling.target_ongoing_requests))


def _deployment(
    name: str, scaling: ReplicaAutoscaling, gpus: int = 0, admission: int = 0
) -> dict[str, Any]:
    """One deployment entry. `admission`: turns the replica itself refuses past (JSON 503);
    Serve then lets as many again in, so that a burst reaches the replica and gets that answer
    at once instead of waiting in Serve's queue for a turn to finish (a refusal is quick)."""
    actor: dict[str, Any] = {"num_cpus": ACTOR_CPUS[name]}
    if gpus:
        actor["num_gpus"] = gpus
    ongoing = 2 * admission if admission else max(8, turns_in_flight(scaling))
    return {
        "name": name,
        "max_ongoing_requests": ongoing,
        # A bounded queue at each caller (proxy or handle), one replica's worth: past it Serve
        # refuses at once (503 with Retry-After) instead of letting waits grow without end.
        "max_queued_requests": ongoing,
        "backpressure_config": {"status_code": 503, "retry_after_s": contract.RETRY_AFTER_SECONDS},
        "autoscaling_config": {
            "min_replicas": scaling.min_replicas,
            "max_replicas": scaling.max_replicas,
            "target_ongoing_requests": scaling.target_ongoing_requests,
        },
        "ray_actor_options": actor,
    }


def agent_application(
    spec: SupportAgentSpec, app: contract.AgentAppConfig, route_prefix: str | None
) -> dict[str, Any]:
    """One revision's Serve application: the orchestrator takes the request and runs the whole
    turn (NLU and retrieval in its replicas); an in-cluster LLM is the only other deployment.
    At `/` when it is the agent's only revision; behind the router (no route) during a rollout."""
    scaling = spec.orchestrator.autoscaling
    deployments = [
        _deployment(contract.ORCHESTRATOR_DEPLOYMENT, scaling, admission=app.max_turns_in_flight)
    ]
    if spec.llm and spec.llm.backend != "openai":
        deployments.append(
            _deployment(contract.LLM_DEPLOYMENT, spec.llm.autoscaling, spec.llm.gpus_per_replica)
        )
    return {
        "name": revision_app_name(app.agent, app.revision),
        "route_prefix": route_prefix,
        "import_path": contract.AGENT_APP_IMPORT_PATH,
        # One thread per replica: on small CPU shares, intra-op parallelism only adds contention.
        "runtime_env": {"env_vars": {"OMP_NUM_THREADS": "1"}},
        "args": app.model_dump(mode="json", exclude_none=True),
        "deployments": deployments,
    }


def router_application(
    router: contract.RouterConfig, scaling: ReplicaAutoscaling
) -> dict[str, Any]:
    return {
        "name": router.agent,
        "route_prefix": "/",
        "import_path": contract.ROUTER_APP_IMPORT_PATH,
        "args": router.model_dump(mode="json"),
        "deployments": [_deployment(contract.ROUTER_DEPLOYMENT, scaling)],
    }


@dataclass(frozen=True)
class Canary:
    """A ModelRollout's candidate as the renderers need it: which model, how much traffic,
    which testers, and who splits (Istio, or the agent's router)."""

    component: Literal["nlu", "llm"]
    model_uri: str
    quantization: str | None
    weight: int
    testers: tuple[HeaderMatch, ...] = ()
    traffic_provider: Literal["istio", "none"] = "istio"


def candidate_spec(spec: SupportAgentSpec, canary: Canary) -> SupportAgentSpec:
    """The agent's spec with the rollout's component swapped for the candidate model."""
    if canary.component == "nlu":
        nlu = {"model_uri": canary.model_uri}
        if canary.quantization in ("int8", "none"):
            nlu["quantization"] = canary.quantization
        return spec.model_copy(update={"nlu": spec.nlu.model_copy(update=nlu)})
    if spec.llm is None:
        raise UnresolvedReference("ComponentNotFound", "the agent has no llm to roll out")
    llm = {"model_uri": canary.model_uri}
    if canary.quantization:
        llm["quantization"] = canary.quantization
    return spec.model_copy(update={"llm": spec.llm.model_copy(update=llm)})


def traffic(stable: str, candidate: str | None, weight: int) -> list[tuple[str, int]]:
    """(revision, percent) per served revision; a candidate equal to stable is no canary."""
    if candidate is None or candidate == stable:
        return [(stable, 100)]
    return [(stable, 100 - weight), (candidate, weight)]


def serve_config(
    parent: Parent,
    spec: SupportAgentSpec,
    adapters: Mapping[str, ToolAdapterSpec],
    canary: Canary | None = None,
) -> dict[str, Any]:
    """The `serveConfigV2` document (as a dict): the stable revision's application at `/` or,
    while a rollout serves a candidate, the router at `/` in front of both revisions."""
    stable = agent_app_config(parent, spec, adapters)
    apps = [stable]
    if canary is not None:
        candidate = agent_app_config(parent, candidate_spec(spec, canary), adapters)
        if candidate.revision != stable.revision:
            apps.append(candidate)
    weights = traffic(stable.revision, apps[-1].revision, canary.weight if canary else 0)
    routes = [
        contract.RevisionRoute(
            revision=rev, app_name=revision_app_name(parent.name, rev), weight=percent
        )
        for rev, percent in weights
    ]
    testers = list(canary.testers) if canary and len(apps) > 1 else []
    router = contract.RouterConfig(
        agent=parent.name,
        revisions=routes,
        testers=[contract.TesterMatch(name=t.name, exact=t.exact, regex=t.regex) for t in testers],
        tester_revision=apps[-1].revision if testers else None,
        # The router serves the agent API and pages during a rollout: from the same session
        # store, with the same handoff settings, as the revisions behind it.
        namespace=parent.namespace,
        sessions=stable.sessions,
        handoff=stable.handoff,
        auth=stable.auth,
    )
    if len(apps) == 1:  # no rollout: the revision itself answers at `/`, no hop in front
        applications = [agent_application(spec, stable, "/")]
    else:
        applications = [
            router_application(router, spec.router.autoscaling),
            *(agent_application(spec, app, None) for app in apps),
        ]
    return {
        "proxy_location": "EveryNode",
        "http_options": {"host": "0.0.0.0", "port": contract.SERVE_HTTP_PORT},
        "applications": applications,
    }


def rate_limit_config(policy: PolicySpec) -> contract.RateLimitsConfig | None:
    spec = policy.rate_limit
    if spec is None:
        return None
    return contract.RateLimitsConfig(
        **{
            scope: contract.RateLimitConfig(per_minute=limit.per_minute, burst=limit.burst)
            for scope, limit in (("session", spec.session), ("customer", spec.customer))
            if limit is not None
        }
    )


def budgets_config(policy: PolicySpec) -> contract.BudgetsConfig | None:
    spec = policy.budgets
    if spec is None:
        return None
    limits = {
        scope: contract.BudgetLimitConfig(llm_tokens=limit.llm_tokens, tool_calls=limit.tool_calls)
        for scope, limit in (("agent", spec.agent), ("customer", spec.customer))
        if limit is not None
    }
    return contract.BudgetsConfig(
        window_seconds=window_seconds(spec.window),
        on_exhausted=spec.on_exhausted,
        reply=spec.reply,
        **limits,
    )
