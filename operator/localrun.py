"""The operator's view of a local run: the same manifests, rendered by the same pure functions,
with cluster-only paths and URLs swapped for local ones (`switchboard serve`).

Pure: it returns contract objects; `switchboard.serving.local` runs them.
"""

from __future__ import annotations

import base64
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from switchboard.serving import config as contract
from switchboard.serving.config import is_remote

from .api.base import API_VERSION
from .api.modelrollout import ModelRolloutSpec
from .api.supportagent import SupportAgentSpec
from .api.tooladapter import ToolAdapterSpec
from .api.validation import SpecError, validate_spec
from .feedback import DEFAULT_STATE_DIR, default_feedback_path
from .render import Canary, Parent, RenderError, UnresolvedReference
from .render.gateway import gateway_config
from .render.names import revision_app_name
from .render.rollout import canary_of, initial_weight
from .render.serve_config import (
    LLM_API_KEY_ENV,
    MODEL_STORAGE_ACCESS_KEY_ENV,
    MODEL_STORAGE_SECRET_KEY_ENV,
    REDIS_URL_ENV,
    model_path,
    serve_config,
)


@dataclass(frozen=True)
class LocalOverrides:
    nlu_model: str | None = None
    """Local NLU artifact directory for every agent (the manifests name cluster paths)."""
    llm_model: str | None = None
    """Local LLM directory for agents with an in-cluster LLM."""
    knowledge_dir: str | None = None
    """Where ConfigMap knowledge bases from the manifests are written."""
    tool_urls: Mapping[str, str] = field(default_factory=dict)
    """ToolAdapter name → the business system's local base URL."""
    system_urls: Mapping[str, str] = field(default_factory=dict)
    """ToolAdapter `system` (orders, ticketing, ...) → local base URL, for the demo systems."""
    candidate_model: str | None = None
    """Local directory of a ModelRollout's candidate model (NLU or LLM, per its `component`);
    unset, the candidate's `file://` path is used when it is a local directory."""
    state_dir: str = DEFAULT_STATE_DIR
    """`switchboard serve --state-dir`: agents with the memory session store append their
    feedback log under it (`feedback/<namespace>-<agent>.jsonl`, as `feedback export` reads)."""


# A key of a Secret mounted as files (console tokens, session keys) becomes a file name: a
# Secret key's characters (a manifest read locally is not checked by an API server), and no
# leading dot: the data plane skips dot files, the kubelet's own entries in a mounted Secret.
_FILE_NAME = re.compile(r"^[-_a-zA-Z0-9][-._a-zA-Z0-9]{0,252}$")


def _secrets(documents: list[dict[str, Any]]) -> dict[str, dict[str, str]]:
    found: dict[str, dict[str, str]] = {}
    for doc in documents:
        if doc.get("kind") == "Secret" and doc.get("apiVersion") == "v1":
            values = {k: base64.b64decode(v).decode() for k, v in (doc.get("data") or {}).items()}
            values.update({k: str(v) for k, v in (doc.get("stringData") or {}).items()})
            found[doc["metadata"]["name"]] = values
    return found


def _config_maps(documents: list[dict[str, Any]]) -> dict[str, dict[str, str]]:
    return {
        doc["metadata"]["name"]: {k: str(v) for k, v in (doc.get("data") or {}).items()}
        for doc in documents
        if doc.get("kind") == "ConfigMap" and doc.get("apiVersion") == "v1"
    }


def _ours(documents: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [d for d in documents if d.get("apiVersion") == API_VERSION and d.get("kind") == kind]


@dataclass(frozen=True)
class _Rollout:
    name: str
    canary: Canary


def _rollouts(documents: list[dict[str, Any]]) -> dict[str, _Rollout]:
    """Agent name → the canary of the ModelRollout that names it (the first, as the renderer
    takes it), at its status weight if the manifest has one, else its manual weight or first
    step. No Istio runs locally: the agent's router splits, whatever `trafficProvider` says."""
    found: dict[str, _Rollout] = {}
    for doc in _ours(documents, "ModelRollout"):
        spec: ModelRolloutSpec = _validated(ModelRolloutSpec, doc)
        status_weight = (doc.get("status") or {}).get("currentWeight")
        weight = initial_weight(spec) if status_weight is None else int(status_weight)
        canary = replace(canary_of(spec, weight), traffic_provider="none")
        found.setdefault(spec.agent_ref, _Rollout(doc["metadata"]["name"], canary))
    return found


def local_plan(
    documents: list[dict[str, Any]], overrides: LocalOverrides, namespace: str = "default"
) -> contract.LocalPlan:
    """Every agent and adapter in `documents`, ready for `switchboard.serving.local`; an agent
    named by a ModelRollout serves its stable and candidate revisions behind its router."""
    secrets, config_maps = _secrets(documents), _config_maps(documents)
    rollouts = _rollouts(documents)
    adapters: dict[str, ToolAdapterSpec] = {}
    gateways = []
    for doc in _ours(documents, "ToolAdapter"):
        name = doc["metadata"]["name"]
        spec = _validated(ToolAdapterSpec, doc)
        base_url = overrides.tool_urls.get(name) or overrides.system_urls.get(spec.system)
        if base_url is None:
            raise RenderError(
                f"ToolAdapter {name}: no local URL for system {spec.system} "
                f"(pass --tool-url {name}=URL, or --demo-systems)"
            )
        adapters[name] = spec
        config = gateway_config(Parent("ToolAdapter", name, namespace), spec)
        credentials: dict[str, str] = {}
        if spec.credentials.secret_ref:
            if spec.credentials.secret_ref not in secrets:
                raise RenderError(
                    f"ToolAdapter {name}: Secret {spec.credentials.secret_ref} is not among "
                    "the manifests"
                )
            credentials = secrets[spec.credentials.secret_ref]
        gateways.append(
            contract.LocalGateway(
                config=config.model_copy(update={"base_url": base_url}), credentials=credentials
            )
        )

    agents = []
    env: dict[str, str] = {}
    for doc in _ours(documents, "SupportAgent"):
        name = doc["metadata"]["name"]
        spec = _validated(SupportAgentSpec, doc)
        parent = Parent("SupportAgent", name, namespace)
        rollout = rollouts.get(name)
        canary = rollout.canary if rollout else None
        try:
            rendered = serve_config(parent, spec, adapters, canary)
        except UnresolvedReference as exc:
            where = f"ModelRollout {rollout.name}" if rollout else f"SupportAgent {name}"
            raise RenderError(f"{where}: {exc.message}") from None
        # The revision applications as the operator renders them: the stable one, then the
        # candidate when the rollout's model differs (a candidate equal to stable is no canary).
        revisions = [
            contract.AgentAppConfig.model_validate(application["args"])
            for application in rendered["applications"]
            if application["import_path"] == contract.AGENT_APP_IMPORT_PATH
        ]
        app = _localize(name, namespace, spec, revisions[0], overrides, config_maps)
        candidate = None
        if rollout and len(revisions) > 1:
            local = _candidate_overrides(rollout, overrides)
            candidate = _localize(name, namespace, spec, revisions[1], local, config_maps)
        env.update(_secret_env(name, spec, secrets))
        router = _router(name, rendered).model_copy(
            update={"namespace": namespace, "sessions": app.sessions, "handoff": app.handoff}
        )
        for application in rendered["applications"]:
            for localized in (app, candidate):
                if localized and application["name"] == revision_app_name(name, localized.revision):
                    application["args"] = localized.model_dump(mode="json", exclude_none=True)
            if application["import_path"] == contract.ROUTER_APP_IMPORT_PATH:
                application["args"] = router.model_dump(mode="json")
        agents.append(
            contract.LocalAgent(
                app=app,
                candidate=candidate,
                router=router,
                serve_config=rendered,
                console_tokens=_console_tokens(name, spec, secrets),
                session_keys=_session_keys(name, spec, secrets),
            )
        )
    if not agents:
        raise RenderError("no SupportAgent among the manifests")
    return contract.LocalPlan(agents=agents, gateways=gateways, env=env)


def _router(name: str, rendered: dict[str, Any]) -> contract.RouterConfig:
    """The rendered router's config; with one revision (no router app) the trivial split."""
    for application in rendered["applications"]:
        if application["import_path"] == contract.ROUTER_APP_IMPORT_PATH:
            return contract.RouterConfig.model_validate(application["args"])
    (only,) = rendered["applications"]
    revision = only["args"]["revision"]
    return contract.RouterConfig(
        agent=name,
        revisions=[contract.RevisionRoute(revision=revision, app_name=only["name"], weight=100)],
    )


def _candidate_overrides(rollout: _Rollout, overrides: LocalOverrides) -> LocalOverrides:
    """`overrides` with the rollout's component pointing at the candidate's local model."""
    uri = rollout.canary.model_uri
    path = overrides.candidate_model or (model_path(uri) if uri.startswith("file://") else None)
    if path is None or not Path(path).is_dir():
        raise RenderError(
            f"ModelRollout {rollout.name}: candidate model {path or uri} is not a local "
            "directory (point candidate.modelUri at one with file://)"
        )
    if rollout.canary.component == "nlu":
        return replace(overrides, nlu_model=path)
    return replace(overrides, llm_model=path)


def _secret_env(
    name: str, spec: SupportAgentSpec, secrets: dict[str, dict[str, str]]
) -> dict[str, str]:
    """The variables the operator would fill from Secrets in the Ray pods."""
    refs: list[tuple[str, str, str]] = []
    if spec.sessions.redis:
        ref = spec.sessions.redis.url_secret_ref
        refs.append((REDIS_URL_ENV, ref.name, ref.key))
    if spec.llm and spec.llm.api_key_secret_ref:
        ref = spec.llm.api_key_secret_ref
        refs.append((LLM_API_KEY_ENV, ref.name, ref.key))
    creds = spec.model_storage.credentials_secret_ref if spec.model_storage else None
    if creds:
        refs.append((MODEL_STORAGE_ACCESS_KEY_ENV, creds.name, creds.access_key_id_key))
        refs.append((MODEL_STORAGE_SECRET_KEY_ENV, creds.name, creds.secret_access_key_key))
    env = {}
    for variable, secret, key in refs:
        value = secrets.get(secret, {}).get(key)
        if value is None:
            raise RenderError(
                f"SupportAgent {name}: Secret {secret} key {key} is not among the manifests"
            )
        env[variable] = value
    return env


def _secret_files(
    name: str, field: str, secret: str | None, secrets: dict[str, dict[str, str]]
) -> dict[str, str]:
    """The keys of the Secret that `spec.<field>` names, from among the manifests; a Secret
    mounted as files, so every key must be a plain file name."""
    if secret is None:
        return {}
    if secret not in secrets:
        raise RenderError(
            f"SupportAgent {name}: Secret {secret} (spec.{field}) is not among the manifests"
        )
    values = secrets[secret]
    bad = sorted(key for key in values if not _FILE_NAME.match(key))
    if bad:
        raise RenderError(
            f"SupportAgent {name}: Secret {secret} (spec.{field}) has keys that cannot be file "
            f"names: {', '.join(repr(k) for k in bad)}"
        )
    return dict(values)


def _console_tokens(
    name: str, spec: SupportAgentSpec, secrets: dict[str, dict[str, str]]
) -> dict[str, str]:
    """The human agents' console tokens (name → token)."""
    secret = spec.handoff.console_tokens_secret
    return _secret_files(name, "handoff.consoleTokensSecret", secret, secrets)


def _session_keys(
    name: str, spec: SupportAgentSpec, secrets: dict[str, dict[str, str]]
) -> dict[str, str]:
    """The keys that sign session tokens (key id → key)."""
    return _secret_files(name, "sessions.tokenSecret", spec.sessions.token_secret, secrets)


def _validated(model: type[Any], doc: dict[str, Any]) -> Any:
    try:
        return validate_spec(model, doc.get("spec"))
    except SpecError as exc:
        raise RenderError(f"{doc['kind']} {doc['metadata']['name']}: {exc}") from None


def _localize(
    name: str,
    namespace: str,
    spec: SupportAgentSpec,
    app: contract.AgentAppConfig,
    overrides: LocalOverrides,
    config_maps: dict[str, dict[str, str]],
) -> contract.AgentAppConfig:
    # The console tokens are in `LocalAgent.console_tokens`; the local run writes them to a
    # private directory of its own and points `console_tokens_dir` there.
    update: dict[str, Any] = {
        "handoff": app.handoff.model_copy(update={"console_tokens_dir": None}),
    }
    # The session keys are in `LocalAgent.session_keys`, written out like the console tokens.
    sessions = app.sessions.model_copy(update={"token_keys_dir": None})
    if app.sessions.store == "memory":
        # Corrections and escalations outlive the run (Redis keeps them on clusters).
        path = default_feedback_path(namespace, name, overrides.state_dir).resolve()
        sessions = sessions.model_copy(update={"feedback_path": str(path)})
    update["sessions"] = sessions
    # A model in object storage (spec.modelStorage) is fetched and verified by the replica, as on
    # a cluster; an override always names a local directory.
    if overrides.nlu_model or not is_remote(app.nlu.model_path):
        nlu_path = overrides.nlu_model or app.nlu.model_path
        if not Path(nlu_path).is_dir():
            raise RenderError(
                f"SupportAgent {name}: NLU model {nlu_path} is not a local directory "
                "(train one with `switchboard nlu train` and pass --nlu-model)"
            )
        update["nlu"] = app.nlu.model_copy(
            update={"model_path": str(Path(nlu_path).resolve()), "storage": None}
        )
    if app.llm is not None and app.llm.backend != "openai":
        llm_update: dict[str, Any] = {"device": "cpu"}
        if overrides.llm_model or not is_remote(app.llm.model_path or ""):
            llm_path = overrides.llm_model or app.llm.model_path or ""
            if not Path(llm_path).is_dir():
                raise RenderError(f"SupportAgent {name}: LLM {llm_path} is not local (--llm-model)")
            llm_update |= {"model_path": str(Path(llm_path).resolve()), "storage": None}
        update["llm"] = app.llm.model_copy(update=llm_update)
    if spec.knowledge_base and app.knowledge_base:
        root = write_knowledge_base(
            name, spec, config_maps, Path(overrides.knowledge_dir or ".switchboard/knowledge")
        )
        update["knowledge_base"] = app.knowledge_base.model_copy(
            update={"path": str(root.resolve())}
        )
    return app.model_copy(update=update)


def write_knowledge_base(
    name: str, spec: SupportAgentSpec, config_maps: Mapping[str, Mapping[str, str]], under: Path
) -> Path:
    """The agent's ConfigMap knowledge base from the manifests, as files in `under/<name>`."""
    kb = spec.knowledge_base
    if kb is None or kb.config_map is None:
        raise RenderError(f"SupportAgent {name}: only ConfigMap knowledge bases run locally")
    documents = config_maps.get(kb.config_map.name)
    if documents is None:
        raise RenderError(
            f"SupportAgent {name}: ConfigMap {kb.config_map.name} is not among the manifests"
        )
    root = under / name
    root.mkdir(parents=True, exist_ok=True)
    for key, text in documents.items():
        (root / key).write_text(text, encoding="utf-8")
    return root


def agent_knowledge_base(documents: list[dict[str, Any]], agent: str | None, under: Path) -> Path:
    """`write_knowledge_base` for the agent named `agent` (or the only agent) in `documents`."""
    agents = _ours(documents, "SupportAgent")
    chosen = [a for a in agents if agent in (None, a["metadata"]["name"])]
    if len(chosen) != 1:
        names = ", ".join(a["metadata"]["name"] for a in agents) or "none"
        raise RenderError(f"name one SupportAgent with --agent (found: {names})")
    name = chosen[0]["metadata"]["name"]
    spec = _validated(SupportAgentSpec, chosen[0])
    return write_knowledge_base(name, spec, _config_maps(documents), under)
