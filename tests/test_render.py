"""The pure renderers: golden manifests of the examples, table tests of the builders, and
offline validation of every rendered object against the schemas real clusters enforce.

Golden files (`tests/golden/<set>.yaml`) are `yamlio.dump_all` of the rendered objects:
- `quickstart`: everything `switchboard render -f examples/quickstart` prints;
- `gpu-llm`: examples/quickstart and examples/gpu-llm rendered together (the agent uses the
  quickstart's ToolAdapters), keeping only the objects of the custom resources defined in
  examples/gpu-llm (the `acme-llm` agent), so a change to the quickstart shows in one file.
- `secure`: examples/secure alone: agents with `spec.auth` (Istio's RequestAuthentication and
  AuthorizationPolicy; a JWKS Secret mounted for an agent that verifies tokens itself).
Refresh them after an intended change with `SWITCHBOARD_UPDATE_GOLDEN=1 pytest tests/test_render.py`
and review the diff.

Schema validation needs the upstream CRDs in the project's shared folder (`../shared`, or
`SWITCHBOARD_SHARED_DIR`); see ../shared/schemas/crds/SOURCES.md for where they come from.
"""

from __future__ import annotations

import copy
import difflib
import json
import os
import subprocess
import sys
import typing
from collections.abc import Callable, Iterator
from functools import cache
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from pydantic import BaseModel
from pydantic.fields import FieldInfo

from support.manifests import example_documents
from support.schemas import K8S_VERSIONS
from switchboard.operator import yamlio
from switchboard.operator.api.base import API_VERSION
from switchboard.operator.api.supportagent import SupportAgentSpec
from switchboard.operator.api.tooladapter import ToolAdapterSpec
from switchboard.operator.api.validation import SpecError, validate_spec
from switchboard.operator.render import (
    GatewayAccess,
    Parent,
    RenderError,
    render_adapter,
    render_agent,
    render_manifests,
)
from switchboard.operator.render.names import (
    ADAPTER_LABEL,
    AGENT_LABEL,
    TRAINING_LABEL,
    gateway_name,
    revision_app_name,
    serve_service_name,
)
from switchboard.operator.render.rayservice import GPU_RESOURCE, GPU_TOLERATION
from switchboard.operator.render.serve_config import (
    KNOWLEDGE_BASE_DIR,
    LLM_API_KEY_ENV,
    MODELS_ROOT,
    REDIS_URL_ENV,
    agent_revision,
    model_path,
)
from switchboard.serving import config as contract

REPO = Path(__file__).resolve().parents[1]
GOLDEN_DIR = Path(__file__).resolve().parent / "golden"
UPDATE_GOLDEN = os.environ.get("SWITCHBOARD_UPDATE_GOLDEN") == "1"

# Example set → example folders rendered together; the last one's resources are goldened.
EXAMPLE_SETS: dict[str, tuple[str, ...]] = {
    "quickstart": ("quickstart",),
    "gpu-llm": ("quickstart", "gpu-llm"),
    "rollout": ("quickstart", "rollout"),
    "secure": ("secure",),
    "retraining": ("retraining",),
}
# The last Kubernetes that serves `autoscaling/v2beta2`.
K8S_WITH_HPA_V2BETA2 = "1.25.0"
# Validated against the upstream CRDs (tests/support/schemas.py CRD_FILES, from ../shared).
UPSTREAM_KINDS = {
    ("ray.io/v1", "RayService"),
    ("ray.io/v1", "RayJob"),
    ("networking.istio.io/v1", "VirtualService"),
    ("security.istio.io/v1", "RequestAuthentication"),
    ("security.istio.io/v1", "AuthorizationPolicy"),
}
BUILTIN_KINDS = {
    ("apps/v1", "Deployment"),
    ("v1", "Service"),
    ("autoscaling/v2", "HorizontalPodAutoscaler"),
    ("autoscaling/v2beta2", "HorizontalPodAutoscaler"),
    ("networking.k8s.io/v1", "NetworkPolicy"),
    ("v1", "ServiceAccount"),
    ("v1", "ConfigMap"),
}


# --------------------------------------------------------------------------------------------
# Helpers


def own_resources(documents: list[dict[str, Any]]) -> set[tuple[str, str]]:
    """(kind, name) of the switchboard custom resources among `documents`; a ModelRollout
    stands for the agent it changes (it has no children of its own)."""
    return {
        ("SupportAgent", d["spec"]["agentRef"])
        if d["kind"] == "ModelRollout"
        else (d["kind"], d["metadata"]["name"])
        for d in documents
        if d.get("apiVersion") == API_VERSION
    }


def parent_of(obj: dict[str, Any]) -> tuple[str, str]:
    labels = obj["metadata"]["labels"]
    if AGENT_LABEL in labels:
        return "SupportAgent", labels[AGENT_LABEL]
    if TRAINING_LABEL in labels:
        return "ModelTraining", labels[TRAINING_LABEL]
    return "ToolAdapter", labels[ADAPTER_LABEL]


def render_set(name: str, hpa_api_version: str = "autoscaling/v2") -> list[dict[str, Any]]:
    """All objects rendered from an example set (its folders together)."""
    documents = example_documents(*EXAMPLE_SETS[name])
    objects: list[dict[str, Any]] = render_manifests(documents, hpa_api_version=hpa_api_version)
    return objects


def golden_objects(name: str) -> list[dict[str, Any]]:
    """The objects of an example set that its golden file holds (see the module docstring)."""
    wanted = own_resources(example_documents(EXAMPLE_SETS[name][-1]))
    return [obj for obj in render_set(name) if parent_of(obj) in wanted]


def golden_text(name: str, objects: list[dict[str, Any]]) -> str:
    folders = " ".join(f"-f examples/{f}" for f in EXAMPLE_SETS[name])
    header = (
        f"# Golden output of `switchboard render {folders}`"
        + (" (objects of examples/gpu-llm only)" if len(EXAMPLE_SETS[name]) > 1 else "")
        + ".\n# Regenerate: SWITCHBOARD_UPDATE_GOLDEN=1 pytest tests/test_render.py\n"
    )
    body: str = yamlio.dump_all(objects)
    return header + body


def object_id(obj: dict[str, Any]) -> str:
    meta = obj["metadata"]
    return f"{obj['kind']}/{meta['namespace']}/{meta['name']}"


def rayservice_containers(rs: dict[str, Any]) -> list[dict[str, Any]]:
    cluster = rs["spec"]["rayClusterConfig"]
    pods = [cluster["headGroupSpec"]["template"]] + [
        g["template"] for g in cluster["workerGroupSpecs"]
    ]
    return [c for pod in pods for c in pod["spec"]["containers"]]


def rayservice_pods(rs: dict[str, Any]) -> list[dict[str, Any]]:
    cluster = rs["spec"]["rayClusterConfig"]
    return [cluster["headGroupSpec"]["template"]["spec"]] + [
        g["template"]["spec"] for g in cluster["workerGroupSpecs"]
    ]


def serve_doc(rs: dict[str, Any]) -> dict[str, Any]:
    doc: dict[str, Any] = yaml.safe_load(rs["spec"]["serveConfigV2"])
    return doc


def agent_app(rs: dict[str, Any]) -> dict[str, Any]:
    apps = serve_doc(rs)["applications"]
    return next(a for a in apps if a["import_path"] == contract.AGENT_APP_IMPORT_PATH)


def deployments_of(rs: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {d["name"]: d for d in agent_app(rs)["deployments"]}


def env_of(container: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {e["name"]: e for e in container.get("env", [])}


def patched(base: dict[str, Any], patch: dict[str, Any]) -> dict[str, Any]:
    """`base` deep-merged with `patch`; a None value removes the key."""
    out = copy.deepcopy(base)
    for key, value in patch.items():
        if value is None:
            out.pop(key, None)
        elif isinstance(value, dict):
            out[key] = patched(out[key] if isinstance(out.get(key), dict) else {}, value)
        else:
            out[key] = copy.deepcopy(value)
    return out


# A small world of its own for the builder tests, independent of the examples.
NAMESPACE = "support"
ADAPTER_SPECS: dict[str, dict[str, Any]] = {
    "orders": {
        "system": "orders",
        "baseURL": "http://orders.shop.svc:8080",
        "credentials": {"type": "bearer", "secretRef": "orders-creds"},
        "operations": [
            {"name": "get_order", "path": "/orders/{id}"},
            {"name": "refund_order", "method": "POST", "path": "/refunds", "mutating": True},
        ],
        "gateway": {"minReplicas": 2, "maxReplicas": 7},
    },
    "ticketing": {
        "system": "ticketing",
        "baseURL": "https://helpdesk.example.com/api",
        "credentials": {"type": "header", "secretRef": "helpdesk-key", "headerName": "X-Key"},
        "operations": [{"name": "create_ticket", "method": "POST", "path": "/tickets"}],
    },
    "weather": {
        "system": "other",
        "baseURL": "https://weather.example.com",
        "operations": [{"name": "forecast", "path": "/forecast"}],
        "gateway": {"minReplicas": 1, "maxReplicas": 1},
    },
}
BASE_AGENT: dict[str, Any] = {
    "nlu": {"modelUri": "file:///models/nlu/v1"},
    "tools": [
        {"adapter": "orders", "operations": ["get_order", "refund_order"]},
        {"adapter": "ticketing", "operations": ["create_ticket"]},
    ],
    "handoff": {"adapter": "ticketing"},
}
GPU_POOL = {"gpu": {"maxWorkers": 2, "gpusPerWorker": 2}}
OPENAI = {
    "backend": "openai",
    "endpoint": "https://llm.example.com/v1",
    "modelName": "support-large",
    "apiKeySecretRef": {"name": "llm-key", "key": "token"},
}
REDIS = {"store": "redis", "redis": {"urlSecretRef": {"name": "redis-url", "key": "url"}}}


def adapters() -> dict[str, ToolAdapterSpec]:
    return {name: validate_spec(ToolAdapterSpec, s) for name, s in ADAPTER_SPECS.items()}


def agent(patch: dict[str, Any] | None = None) -> SupportAgentSpec:
    return validate_spec(SupportAgentSpec, patched(BASE_AGENT, patch or {}))


def rayservice(patch: dict[str, Any] | None = None) -> dict[str, Any]:
    children = render_agent(Parent("SupportAgent", "acme", NAMESPACE), agent(patch), adapters())
    rs: dict[str, Any] = children[0]
    return rs


# Agent variants beyond the examples, rendered and schema-checked like them.
VARIANTS: dict[str, dict[str, Any]] = {
    "minimal": {"tools": [], "handoff": None},
    "openai": {"llm": OPENAI, "sessions": REDIS},
    "vllm-pvc": {
        "nlu": {"modelUri": "pvc://models/nlu/v1"},
        "llm": {"backend": "vllm", "modelUri": "pvc://llm-weights/mistral", "gpusPerReplica": 2},
        "workerPools": GPU_POOL,
        "knowledgeBase": {"volume": {"claimName": "kb-docs", "path": "/docs"}},
        "ingress": {"hosts": ["help.example.com"]},
    },
    "cpu-llm-configmap-kb": {
        "llm": {"modelUri": "file:///models/llm/tiny", "quantization": "int8"},
        "knowledgeBase": {"configMap": {"name": "kb"}},
        "ingress": {"hosts": ["a.example.com", "b.example.com"], "gateways": ["istio/gw"]},
        "workerPools": {
            "cpu": {
                "nodeSelector": {"pool": "cpu"},
                "tolerations": [{"key": "spot", "operator": "Exists"}],
            }
        },
    },
}


def variant_objects() -> list[dict[str, Any]]:
    objects = []
    for name, spec in sorted(ADAPTER_SPECS.items()):
        objects += render_adapter(
            Parent("ToolAdapter", name, NAMESPACE, uid="u-" + name),
            spec=(validate_spec(ToolAdapterSpec, spec)),
        )
    for name, patch in VARIANTS.items():
        parent = Parent("SupportAgent", name, NAMESPACE, uid="u-" + name)
        objects += render_agent(parent, agent(patch), adapters())
    return objects


def all_rendered() -> list[tuple[str, dict[str, Any]]]:
    """(id, object) of everything rendered from every example set and every variant."""
    found: dict[str, dict[str, Any]] = {}
    for name in EXAMPLE_SETS:
        for obj in render_set(name):
            found.setdefault(f"{name}:{object_id(obj)}", obj)
    for obj in variant_objects():
        found[f"variant:{object_id(obj)}"] = obj
    return sorted(found.items())


RENDERED = all_rendered()


def rendered_of(*kinds: str) -> list[Any]:
    return [pytest.param(obj, id=oid) for oid, obj in RENDERED if obj["kind"] in kinds]


# --------------------------------------------------------------------------------------------
# Golden files


def check_golden(name: str, text: str) -> None:
    path = GOLDEN_DIR / f"{name}.yaml"
    if UPDATE_GOLDEN:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
        return
    if not path.is_file():
        pytest.fail(f"{path} is missing; create it with SWITCHBOARD_UPDATE_GOLDEN=1")
    expected = path.read_text(encoding="utf-8")
    if expected != text:
        diff = "".join(
            difflib.unified_diff(
                expected.splitlines(keepends=True),
                text.splitlines(keepends=True),
                fromfile=str(path.relative_to(REPO)),
                tofile="rendered",
            )
        )
        pytest.fail(
            f"rendered {name} differs from {path.name} (if intended, refresh with "
            f"SWITCHBOARD_UPDATE_GOLDEN=1 and review):\n{diff}",
            pytrace=False,
        )


@pytest.mark.parametrize("name", sorted(EXAMPLE_SETS))
def test_golden(name: str) -> None:
    objects = golden_objects(name)
    assert objects, f"example set {name} rendered nothing of its own"
    check_golden(name, golden_text(name, objects))


def test_rendering_is_deterministic() -> None:
    first = yamlio.dump_all(render_set("gpu-llm"))
    again = yamlio.dump_all(
        render_manifests(list(reversed(example_documents("quickstart", "gpu-llm"))))
    )
    assert first == again


def test_cli_render_matches_golden_files() -> None:
    """`switchboard render` of both folders prints the two golden files' objects, in order."""
    result = subprocess.run(
        [
            sys.executable, "-m", "switchboard.operator.cli", "render",
            "-f", "examples/quickstart", "-f", "examples/gpu-llm",
        ],
        cwd=REPO, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    printed = list(yaml.safe_load_all(result.stdout))
    golden = [
        doc
        for name in ("quickstart", "gpu-llm")
        for doc in yaml.safe_load_all((GOLDEN_DIR / f"{name}.yaml").read_text(encoding="utf-8"))
    ]
    assert [object_id(o) for o in printed] == [object_id(o) for o in golden]

    def gateway_access(obj: dict[str, Any]) -> bool:
        # The gateway's grants ConfigMap too: it carries the referencing agents' grants (the
        # Deployment does not: it stays the same whoever references the adapter).
        policy = obj["kind"] in ("NetworkPolicy", "AuthorizationPolicy", "ConfigMap")
        return policy and parent_of(obj)[0] == "ToolAdapter"

    assert [o for o in printed if not gateway_access(o)] == [
        o for o in golden if not gateway_access(o)
    ]
    # The quickstart's gateways admit examples/gpu-llm's agent too (it references them); the
    # quickstart golden, rendered alone, shows its own agent only.
    for obj in filter(gateway_access, printed):
        if obj["kind"] == "ConfigMap":
            grants = json.loads(obj["data"][contract.GATEWAY_GRANTS_KEY])["grants"]
            assert {"acme", "acme-llm"} <= set(grants), object_id(obj)
            continue
        text = json.dumps(obj["spec"])
        assert '"acme"' in text or "/acme-ray" in text, object_id(obj)
        assert '"acme-llm"' in text or "/acme-llm-ray" in text, object_id(obj)


def test_hpa_v2beta2_differs_only_in_api_version() -> None:
    v2 = render_set("quickstart")
    beta = render_set("quickstart", hpa_api_version="autoscaling/v2beta2")
    assert len(v2) == len(beta)
    hpas = 0
    for a, b in zip(v2, beta, strict=True):
        if a["kind"] == "HorizontalPodAutoscaler":
            hpas += 1
            assert (a["apiVersion"], b["apiVersion"]) == ("autoscaling/v2", "autoscaling/v2beta2")
            assert {**b, "apiVersion": a["apiVersion"]} == a
            assert kubernetes_validate.validate(b, K8S_WITH_HPA_V2BETA2, strict=True)
        else:
            assert a == b
    assert hpas == 2


def test_unsupported_hpa_version_is_refused() -> None:
    with pytest.raises(ValueError, match="autoscaling/v1"):
        render_set("quickstart", hpa_api_version="autoscaling/v1")


# --------------------------------------------------------------------------------------------
# Builders: names and revisions


@pytest.mark.parametrize(
    ("func", "args", "expected"),
    [
        (gateway_name, ("orders",), "orders-gateway"),
        (gateway_name, ("crm-eu",), "crm-eu-gateway"),
        (serve_service_name, ("acme",), "acme-serve-svc"),
        (revision_app_name, ("acme", "0123abcd"), "acme-0123abcd"),
    ],
)
def test_names(func: Any, args: tuple[str, ...], expected: str) -> None:
    assert func(*args) == expected


REVISION_BASE = {"llm": {"modelUri": "file:///models/llm/v1"}}


@pytest.mark.parametrize(
    ("case", "patch", "same"),
    [
        ("identical", {}, True),
        ("nlu-cache", {"nlu": {"cacheSize": 10}}, True),
        ("router-scaling", {"router": {"autoscaling": {"maxReplicas": 5}}}, True),
        ("llm-scaling", {"llm": {"autoscaling": {"maxReplicas": 8}}}, True),
        (
            "orchestrator-scaling",
            {"orchestrator": {"autoscaling": {"targetOngoingRequests": 9}}},
            True,
        ),
        ("worker-pools", {"workerPools": {"cpu": {"maxWorkers": 10}}}, True),
        ("ray-image", {"ray": {"image": "registry.example/agent:2"}}, True),
        ("tools-and-handoff", {"tools": [], "handoff": None}, True),
        ("console-tokens", {"handoff": {"consoleTokensSecret": "tokens"}}, True),
        ("sessions", {"sessions": REDIS}, True),
        ("nlu-model-uri", {"nlu": {"modelUri": "file:///models/nlu/v2"}}, False),
        ("nlu-quantization", {"nlu": {"quantization": "none"}}, False),
        ("llm-model-uri", {"llm": {"modelUri": "pvc://models/llm/v2"}}, False),
        ("llm-quantization", {"llm": {"quantization": "int8"}}, False),
        ("llm-removed", {"llm": None}, False),
    ],
)
def test_revision(case: str, patch: dict[str, Any], same: bool) -> None:
    base = agent(REVISION_BASE)
    changed = validate_spec(SupportAgentSpec, patched(patched(BASE_AGENT, REVISION_BASE), patch))
    rev = agent_revision(base)
    assert len(rev) == 8 and int(rev, 16) >= 0
    assert (agent_revision(changed) == rev) is same
    # The revision names the Serve application, and (with ingress) the VirtualService header.
    assert agent_app(render_agent(Parent("SupportAgent", "a", "ns"), changed, adapters())[0])[
        "name"
    ] == revision_app_name("a", agent_revision(changed))


def test_revision_is_stable_across_renders() -> None:
    first, second = rayservice(REVISION_BASE), rayservice(copy.deepcopy(REVISION_BASE))
    assert agent_app(first)["args"]["revision"] == agent_app(second)["args"]["revision"]
    assert first == second


# --------------------------------------------------------------------------------------------
# Builders: models, pools, LLM, sessions, knowledge base


@pytest.mark.parametrize(
    ("uri", "path"),
    [
        ("file:///models/nlu/acme-v1", "/models/nlu/acme-v1"),
        ("file:///m", "/m"),
        ("pvc://models/nlu/acme-v1", f"{MODELS_ROOT}/models/nlu/acme-v1"),
        ("pvc://weights/llm/support-1b/", f"{MODELS_ROOT}/weights/llm/support-1b"),
        ("pvc://weights/", f"{MODELS_ROOT}/weights"),
    ],
)
def test_model_path(uri: str, path: str) -> None:
    assert model_path(uri) == path


@pytest.mark.parametrize(
    ("nlu", "llm", "claims"),
    [
        ("file:///models/nlu", None, []),
        ("pvc://models/nlu", None, ["models"]),
        ("pvc://models/nlu", "pvc://models/llm", ["models"]),
        ("pvc://nlu-store/v1", "pvc://llm-store/v1", ["llm-store", "nlu-store"]),
        ("file:///models/nlu", "pvc://llm-store/v1", ["llm-store"]),
    ],
)
def test_pvc_models_are_mounted_read_only(nlu: str, llm: str | None, claims: list[str]) -> None:
    patch: dict[str, Any] = {"nlu": {"modelUri": nlu}}
    if llm:
        patch["llm"] = {"modelUri": llm}
    rs = rayservice(patch)
    for pod in rayservice_pods(rs):
        volumes = [v for v in pod.get("volumes", []) if "persistentVolumeClaim" in v]
        assert [v["persistentVolumeClaim"]["claimName"] for v in volumes] == claims
        assert all(v["persistentVolumeClaim"]["readOnly"] for v in volumes)
        mounts = {m["mountPath"]: m for m in pod["containers"][0].get("volumeMounts", [])}
        for claim in claims:
            assert mounts[f"{MODELS_ROOT}/{claim}"]["readOnly"] is True
    args = agent_app(rs)["args"]
    assert args["nlu"]["model_path"] == model_path(nlu)
    if llm:
        assert args["llm"]["model_path"] == model_path(llm)


GPU_PLACEMENT = {
    "nodeSelector": {"gpu": "h100"},
    "tolerations": [{"key": "team", "value": "ml", "effect": "NoSchedule"}],
}


@pytest.mark.parametrize(
    ("gpu_pool", "groups"),
    [
        (None, {"cpu": 0}),
        (GPU_PLACEMENT, {"cpu": 0, "gpu": 1}),
        ({**GPU_POOL["gpu"], **GPU_PLACEMENT}, {"cpu": 0, "gpu": 2}),
    ],
)
def test_worker_groups(gpu_pool: dict[str, Any] | None, groups: dict[str, int]) -> None:
    pools: dict[str, Any] = {"cpu": {"minWorkers": 2, "maxWorkers": 5}}
    if gpu_pool is not None:
        pools["gpu"] = gpu_pool
    patch = {"workerPools": pools}
    spec = agent(patch)
    rs = rayservice(patch)
    workers = {g["groupName"]: g for g in rs["spec"]["rayClusterConfig"]["workerGroupSpecs"]}
    assert list(workers) == list(groups)
    for name, gpus in groups.items():
        group = workers[name]
        pool = spec.worker_pools.cpu if name == "cpu" else spec.worker_pools.gpu
        assert pool is not None
        assert (group["replicas"], group["minReplicas"], group["maxReplicas"]) == (
            pool.min_workers,
            pool.min_workers,
            pool.max_workers,
        )
        pod = group["template"]["spec"]
        resources = pod["containers"][0]["resources"]
        tolerations = pod.get("tolerations", [])
        if gpus:
            assert resources["requests"][GPU_RESOURCE] == str(gpus)
            assert resources["limits"][GPU_RESOURCE] == str(gpus)
            assert GPU_TOLERATION in tolerations
            assert GPU_TOLERATION == {
                "key": "nvidia.com/gpu",
                "operator": "Exists",
                "effect": "NoSchedule",
            }
            assert {"key": "team", "operator": "Equal", "value": "ml", "effect": "NoSchedule"} in (
                tolerations
            )
            assert pod["nodeSelector"] == {"gpu": "h100"}
        else:
            assert GPU_RESOURCE not in resources.get("requests", {})
            assert GPU_RESOURCE not in resources.get("limits", {})
            assert GPU_TOLERATION not in tolerations
    head = rs["spec"]["rayClusterConfig"]["headGroupSpec"]
    assert head["rayStartParams"]["num-cpus"] == "0"
    assert GPU_RESOURCE not in json.dumps(head)


@pytest.mark.parametrize(
    ("llm", "pools", "num_gpus", "device"),
    [
        ({"modelUri": "file:///llm"}, {}, None, "cpu"),
        ({"modelUri": "file:///llm", "gpusPerReplica": 1}, {"gpu": {}}, 1, "cuda"),
        ({"backend": "vllm", "modelUri": "file:///llm", "gpusPerReplica": 2}, GPU_POOL, 2, "cuda"),
    ],
)
def test_llm_gpus_per_replica(
    llm: dict[str, Any], pools: dict[str, Any], num_gpus: int | None, device: str
) -> None:
    rs = rayservice({"llm": llm, "workerPools": pools})
    deployments = deployments_of(rs)
    actor = deployments[contract.LLM_DEPLOYMENT]["ray_actor_options"]
    assert actor.get("num_gpus") == num_gpus
    assert agent_app(rs)["args"]["llm"]["device"] == device
    # Only the LLM asks for GPUs.
    others = [d for n, d in deployments.items() if n != contract.LLM_DEPLOYMENT]
    assert all("num_gpus" not in d["ray_actor_options"] for d in others)
    if num_gpus:
        gpu_group = rs["spec"]["rayClusterConfig"]["workerGroupSpecs"][1]
        limits = gpu_group["template"]["spec"]["containers"][0]["resources"]["limits"]
        assert int(limits[GPU_RESOURCE]) >= num_gpus, "an LLM replica would not fit a GPU worker"


def test_openai_backend_has_no_llm_deployment_and_reads_the_key_from_the_secret() -> None:
    rs = rayservice({"llm": OPENAI})
    assert contract.LLM_DEPLOYMENT not in deployments_of(rs)
    llm_args = agent_app(rs)["args"]["llm"]
    assert llm_args["backend"] == "openai"
    assert llm_args["endpoint"] == OPENAI["endpoint"]
    assert llm_args["model_name"] == OPENAI["modelName"]
    assert llm_args["api_key_env"] == LLM_API_KEY_ENV
    assert "model_path" not in llm_args
    for container in rayservice_containers(rs):
        assert env_of(container)[LLM_API_KEY_ENV] == {
            "name": LLM_API_KEY_ENV,
            "valueFrom": {"secretKeyRef": {"name": "llm-key", "key": "token"}},
        }


@pytest.mark.parametrize(
    ("llm", "has_key_env"),
    [(None, False), ({"modelUri": "file:///llm"}, False), (OPENAI, True)],
)
def test_llm_key_env_only_for_openai(llm: dict[str, Any] | None, has_key_env: bool) -> None:
    rs = rayservice({"llm": llm} if llm else {})
    for container in rayservice_containers(rs):
        assert (LLM_API_KEY_ENV in env_of(container)) is has_key_env


@pytest.mark.parametrize("sessions", [None, {"store": "memory"}, REDIS])
def test_sessions(sessions: dict[str, Any] | None) -> None:
    rs = rayservice({"sessions": sessions} if sessions else {})
    args = agent_app(rs)["args"]["sessions"]
    redis = bool(sessions and sessions["store"] == "redis")
    assert args["store"] == ("redis" if redis else "memory")
    assert args.get("redis_url_env") == (REDIS_URL_ENV if redis else None)
    for container in rayservice_containers(rs):
        env = env_of(container)
        if redis:
            assert env[REDIS_URL_ENV]["valueFrom"] == {
                "secretKeyRef": {"name": "redis-url", "key": "url"}
            }
            assert "value" not in env[REDIS_URL_ENV]
        else:
            assert REDIS_URL_ENV not in env


@pytest.mark.parametrize(
    ("kb", "volume", "path"),
    [
        (None, None, None),
        (
            {"configMap": {"name": "acme-kb"}},
            {"configMap": {"name": "acme-kb"}},
            KNOWLEDGE_BASE_DIR,
        ),
        (
            {"volume": {"claimName": "kb-docs"}},
            {"persistentVolumeClaim": {"claimName": "kb-docs", "readOnly": True}},
            KNOWLEDGE_BASE_DIR,
        ),
        (
            {
                "volume": {"claimName": "kb-docs", "path": "/support/en/"},
                "topK": 7,
                "minRelevance": 0.52,
            },
            {"persistentVolumeClaim": {"claimName": "kb-docs", "readOnly": True}},
            f"{KNOWLEDGE_BASE_DIR}/support/en",
        ),
    ],
)
def test_knowledge_base(
    kb: dict[str, Any] | None, volume: dict[str, Any] | None, path: str | None
) -> None:
    rs = rayservice({"knowledgeBase": kb} if kb else {})
    for pod in rayservice_pods(rs):
        kb_volumes = [v for v in pod.get("volumes", []) if v["name"] == "knowledge-base"]
        mounts = [
            m for m in pod["containers"][0].get("volumeMounts", []) if m["name"] == "knowledge-base"
        ]
        if volume is None:
            assert kb_volumes == [] and mounts == []
        else:
            assert kb_volumes == [{"name": "knowledge-base", **volume}]
            assert mounts == [
                {"name": "knowledge-base", "mountPath": KNOWLEDGE_BASE_DIR, "readOnly": True}
            ]
    args = agent_app(rs)["args"]
    # The knowledge base is searched inside the orchestrator's replicas: no deployment of its own.
    assert set(deployments_of(rs)) == {contract.ORCHESTRATOR_DEPLOYMENT}
    if path is None:
        assert "knowledge_base" not in args
    else:
        assert args["knowledge_base"] == {
            "path": path,
            "top_k": (kb or {}).get("topK", 3),
            "min_relevance": (kb or {}).get("minRelevance", contract.DEFAULT_MIN_RELEVANCE),
        }


def test_tools_and_policy_reach_the_agent_args() -> None:
    rs = rayservice({"policy": {"approvalRequired": ["orders.refund_order"]}})
    args = agent_app(rs)["args"]
    assert args["tools"] == [
        {
            "adapter": "orders",
            "system": "orders",
            "url": f"http://orders-gateway.{NAMESPACE}.svc.cluster.local:8080",
            "operations": [
                {"name": "get_order", "mutating": False, "long_running": False},
                {"name": "refund_order", "mutating": True, "long_running": False},
            ],
        },
        {
            "adapter": "ticketing",
            "system": "ticketing",
            "url": f"http://ticketing-gateway.{NAMESPACE}.svc.cluster.local:8080",
            "operations": [{"name": "create_ticket", "mutating": False, "long_running": False}],
        },
    ]
    assert args["policy"]["approval_required"] == ["orders.refund_order"]
    assert "handoff_adapter" not in args["policy"]
    assert args["handoff"] == {
        "adapter": "ticketing",
        "operation": "create_ticket",
        "fields": contract.DEFAULT_HANDOFF_FIELDS,
    }


# --------------------------------------------------------------------------------------------
# Builders: handoff


def router_and_revisions(spec: SupportAgentSpec) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The router's args and the revisions' args of `spec` during an NLU canary."""
    from switchboard.operator.render import Canary

    canary = Canary(component="nlu", model_uri="file:///models/nlu/v2", quantization=None, weight=5)
    rs = render_agent(Parent("SupportAgent", "acme", NAMESPACE), spec, adapters(), canary)[0]
    apps = serve_doc(rs)["applications"]
    routers = [a for a in apps if a["import_path"] == contract.ROUTER_APP_IMPORT_PATH]
    revisions = [a for a in apps if a["import_path"] == contract.AGENT_APP_IMPORT_PATH]
    assert len(routers) == 1 and len(revisions) == 2
    return routers[0]["args"], [a["args"] for a in revisions]


@pytest.mark.parametrize("sessions", [None, REDIS])
def test_the_router_gets_the_revisions_handoff_and_session_store(
    sessions: dict[str, Any] | None,
) -> None:
    """The router serves the agent API during a rollout: same namespace, session store and
    handoff settings as every revision behind it."""
    handoff = {
        "adapter": "ticketing",
        "operation": "create_ticket",
        "fields": {"title": "subject", "description": "transcript", "ref": "handoff_id"},
        "consoleTokensSecret": "acme-console",
    }
    spec = agent({"handoff": handoff} | ({"sessions": sessions} if sessions else {}))
    router, revisions = router_and_revisions(spec)
    expected = {
        "adapter": "ticketing",
        "operation": "create_ticket",
        "fields": handoff["fields"],
        "console_tokens_dir": contract.CONSOLE_TOKENS_DIR,
    }
    for args in (router, *revisions):
        assert args["namespace"] == NAMESPACE
        assert contract.HandoffConfig.model_validate(args["handoff"]).model_dump() == expected
    stores = [contract.SessionConfig.model_validate(a["sessions"]) for a in (router, *revisions)]
    assert stores[0] == stores[1] == stores[2]
    assert stores[0].store == ("redis" if sessions else "memory")
    contract.RouterConfig.model_validate(router)


def test_without_a_ticket_adapter_handoffs_stay_in_the_console() -> None:
    args = agent_app(rayservice({"handoff": None}))["args"]
    assert args["handoff"] == {
        "operation": "create_ticket",
        "fields": {"subject": "subject", "body": "body", "priority": "priority"},
    }
    for container in rayservice_containers(rayservice({"handoff": None})):
        assert contract.CONSOLE_TOKENS_DIR not in json.dumps(container)


def test_console_tokens_are_mounted_read_only_in_every_ray_container() -> None:
    rs = rayservice({"handoff": {"consoleTokensSecret": "acme-console"}})
    assert agent_app(rs)["args"]["handoff"]["console_tokens_dir"] == contract.CONSOLE_TOKENS_DIR
    pods = rayservice_pods(rs)
    assert len(pods) == 2  # head and the CPU pool
    for pod in pods:
        [volume] = [v for v in pod["volumes"] if v["name"] == "console-tokens"]
        assert volume["secret"]["secretName"] == "acme-console"
        # Readable by the image's non-root user without an fsGroup; nobody writes them.
        assert volume["secret"]["defaultMode"] == 0o444
    containers = rayservice_containers(rs)
    assert len(containers) == 2
    for container in containers:
        [mount] = [m for m in container["volumeMounts"] if m["name"] == "console-tokens"]
        assert mount == {
            "name": "console-tokens",
            "mountPath": contract.CONSOLE_TOKENS_DIR,
            "readOnly": True,
        }
        # Files, not variables: tokens rotate without a restart, and never show in `env`.
        assert "acme-console" not in json.dumps(container.get("env", []))


TICKETS = {
    "system": "ticketing",
    "baseURL": "https://helpdesk.example.com/api",
    "operations": [
        {
            "name": "open_case",
            "method": "POST",
            "path": "/cases",
            "inputSchema": {
                "type": "object",
                "required": ["title"],
                "properties": {"title": {"type": "string"}, "details": {"type": "string"}},
            },
        },
        {"name": "free_form", "method": "POST", "path": "/any"},
    ],
}


@pytest.mark.parametrize(
    ("handoff", "adapters_present", "reason", "fragments"),
    [
        (
            {"adapter": "helpdesk", "operation": "open_case", "fields": {"title": "subject"}},
            False,
            "HandoffAdapterMissing",
            ["SupportAgent support/acme", "spec.handoff.adapter", "ToolAdapter support/helpdesk"],
        ),
        (
            {"adapter": "helpdesk", "operation": "create_ticket"},
            True,
            "HandoffOperationUnknown",
            ["ToolAdapter support/helpdesk declares no operation create_ticket", "open_case"],
        ),
        (
            {
                "adapter": "helpdesk",
                "operation": "open_case",
                "fields": {"title": "subject", "summary": "transcript", "prio": "priority"},
            },
            True,
            "HandoffFieldUnknown",
            ["fills prio, summary", "helpdesk.open_case", "details, title"],
        ),
        (
            {"adapter": "helpdesk", "operation": "open_case", "fields": {"details": "body"}},
            True,
            "HandoffFieldMissing",
            ["helpdesk.open_case requires title"],
        ),
    ],
    ids=["adapter-missing", "operation-unknown", "field-unknown", "required-field-unfilled"],
)
def test_unresolved_handoff(
    handoff: dict[str, Any], adapters_present: bool, reason: str, fragments: list[str]
) -> None:
    from switchboard.operator.render import UnresolvedReference
    from switchboard.operator.render.serve_config import handoff_config

    spec = agent(
        {
            "tools": [{"adapter": "helpdesk", "operations": [handoff["operation"]]}],
            "handoff": handoff,
        }
    )
    found = {"helpdesk": validate_spec(ToolAdapterSpec, TICKETS)} if adapters_present else {}
    with pytest.raises(UnresolvedReference) as caught:
        handoff_config(Parent("SupportAgent", "acme", NAMESPACE), spec, found)
    assert caught.value.reason == reason
    for fragment in fragments:
        assert fragment in caught.value.message
    if adapters_present and reason != "HandoffOperationUnknown":
        # `switchboard render` names the object as the operator's condition does.
        docs = manifests(
            patched(BASE_AGENT, {"tools": spec.to_wire()["tools"], "handoff": handoff})
        )
        docs.append(
            {
                "apiVersion": API_VERSION,
                "kind": "ToolAdapter",
                "metadata": {"name": "helpdesk"},
                "spec": TICKETS,
            }
        )
        with pytest.raises(RenderError, match=f"SupportAgent default/acme: .*{fragments[0]}"):
            render_manifests(docs)


@pytest.mark.parametrize(
    "fields",
    [{"title": "subject"}, {"title": "subject", "details": "transcript"}],
)
def test_handoff_fields_within_the_schema_resolve(fields: dict[str, str]) -> None:
    from switchboard.operator.render.serve_config import handoff_config

    spec = agent(
        {
            "tools": [{"adapter": "helpdesk", "operations": ["open_case"]}],
            "handoff": {"adapter": "helpdesk", "operation": "open_case", "fields": fields},
        }
    )
    found = {"helpdesk": validate_spec(ToolAdapterSpec, TICKETS)}
    config = handoff_config(Parent("SupportAgent", "acme", NAMESPACE), spec, found)
    assert config.fields == fields and config.console_tokens_dir is None


def test_an_operation_without_listed_inputs_takes_any_fields() -> None:
    from switchboard.operator.render.serve_config import handoff_config

    fields = {"anything": "conversation_url"}
    spec = agent(
        {
            "tools": [{"adapter": "helpdesk", "operations": ["free_form"]}],
            "handoff": {"adapter": "helpdesk", "operation": "free_form", "fields": fields},
        }
    )
    found = {"helpdesk": validate_spec(ToolAdapterSpec, TICKETS)}
    config = handoff_config(Parent("SupportAgent", "acme", NAMESPACE), spec, found)
    assert config.adapter == "helpdesk" and config.fields == fields


@pytest.mark.parametrize(
    ("ingress", "gateways"),
    [
        (None, None),
        ({"hosts": ["help.example.com"]}, None),
        ({"hosts": ["help.example.com"], "gateways": ["istio/public"]}, ["istio/public", "mesh"]),
    ],
)
def test_virtualservice(ingress: dict[str, Any] | None, gateways: list[str] | None) -> None:
    spec = agent({"ingress": ingress} if ingress else {})
    children = render_agent(Parent("SupportAgent", "acme", NAMESPACE), spec, adapters())
    assert [c["kind"] for c in children] == ["RayService"] + (
        ["VirtualService"] if ingress else []
    ) + ["ServiceAccount"]
    if not ingress:
        return
    vs = children[1]
    assert vs["spec"]["hosts"] == ingress["hosts"]
    assert vs["spec"].get("gateways") == gateways
    [route] = vs["spec"]["http"][0]["route"]
    assert route["destination"]["host"] == (
        f"{serve_service_name('acme')}.{NAMESPACE}.svc.cluster.local"
    )
    assert route["destination"]["port"]["number"] == contract.SERVE_HTTP_PORT
    assert route["weight"] == 100
    assert route["headers"]["request"]["set"] == {contract.REVISION_HEADER: agent_revision(spec)}


def canary_virtualservice(**canary: Any) -> tuple[dict[str, Any], str, str]:
    """The VirtualService of an agent with ingress during a canary, its stable and candidate
    revisions."""
    from switchboard.operator.render import Canary
    from switchboard.operator.render.serve_config import candidate_spec

    spec = agent({"ingress": {"hosts": ["help.example.com"]}})
    options: dict[str, Any] = {
        "component": "nlu",
        "model_uri": "file:///models/nlu/v2",
        "quantization": None,
        "weight": 30,
    }
    rollout = Canary(**(options | canary))
    _, vs, _ = render_agent(Parent("SupportAgent", "acme", NAMESPACE), spec, adapters(), rollout)
    return vs, agent_revision(spec), agent_revision(candidate_spec(spec, rollout))


def revision_set(route: dict[str, Any]) -> list[tuple[str, int]]:
    return [
        (d["headers"]["request"]["set"][contract.REVISION_HEADER], d["weight"])
        for d in route["route"]
    ]


def test_canary_pins_each_served_revision_before_the_weighted_split(schemas: Any) -> None:
    """Testers first, then one route per served revision matching the revision header a client
    echoes (it keeps that header), then Istio's weighted split: a conversation stays on the
    revision of its first reply while that revision serves."""
    from switchboard.operator.api.modelrollout import HeaderMatch

    tester = HeaderMatch.model_validate({"name": "x-canary", "exact": "true"})
    vs, stable, candidate = canary_virtualservice(testers=(tester,))
    http = vs["spec"]["http"]
    assert [r["name"] for r in http] == [
        "testers",
        f"revision-{stable}",
        f"revision-{candidate}",
        "canary",
    ]
    assert revision_set(http[0]) == [(candidate, 100)]
    for route, pinned in zip(http[1:3], (stable, candidate), strict=True):
        assert route["match"] == [{"headers": {contract.REVISION_HEADER: {"exact": pinned}}}]
        assert revision_set(route) == [(pinned, 100)]
        assert route["route"][0]["destination"] == http[-1]["route"][0]["destination"]
        assert route["retries"] == http[-1]["retries"] and route["timeout"] == http[-1]["timeout"]
    assert "match" not in http[-1]
    assert revision_set(http[-1]) == [(stable, 70), (candidate, 30)]
    assert schemas.crd_errors(vs) == []


@pytest.mark.parametrize("weight", [0, 100])
def test_a_revision_at_weight_zero_still_serves_its_conversations(weight: int) -> None:
    """At 0% or 100% both applications run: conversations begun on either keep their pin."""
    vs, stable, candidate = canary_virtualservice(weight=weight)
    http = vs["spec"]["http"]
    assert [r["name"] for r in http] == [f"revision-{stable}", f"revision-{candidate}", "canary"]
    assert revision_set(http[-1]) == [(stable, 100 - weight), (candidate, weight)]


@pytest.mark.parametrize(
    "canary",
    [
        pytest.param(None, id="no-rollout"),
        pytest.param({"traffic_provider": "none"}, id="router-splits"),
        pytest.param({"model_uri": "file:///models/nlu/v1"}, id="candidate-is-stable"),
    ],
)
def test_no_pin_routes_without_an_istio_canary(canary: dict[str, Any] | None) -> None:
    """One revision needs no pin (an echoed revision no longer served falls into the split);
    with `trafficProvider: none` the router honours the echoed header itself."""
    if canary is None:
        spec = agent({"ingress": {"hosts": ["help.example.com"]}})
        _, vs, _ = render_agent(Parent("SupportAgent", "acme", NAMESPACE), spec, adapters())
    else:
        vs, _, _ = canary_virtualservice(**canary)
    [route] = vs["spec"]["http"]
    assert "match" not in route


# --------------------------------------------------------------------------------------------
# Builders: tool gateway


def gateway_objects(name: str, uid: str | None = None) -> dict[str, dict[str, Any]]:
    parent = Parent("ToolAdapter", name, NAMESPACE, uid=uid)
    spec = validate_spec(ToolAdapterSpec, ADAPTER_SPECS[name])
    return {o["kind"]: o for o in render_adapter(parent, spec)}


@pytest.mark.parametrize(
    ("adapter", "secret"),
    [("orders", "orders-creds"), ("ticketing", "helpdesk-key"), ("weather", None)],
)
def test_gateway_deployment(adapter: str, secret: str | None) -> None:
    deploy = gateway_objects(adapter)["Deployment"]
    assert deploy["metadata"]["name"] == gateway_name(adapter)
    assert "replicas" not in deploy["spec"], "the HPA owns the replica count"
    pod = deploy["spec"]["template"]["spec"]
    [container] = pod["containers"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] != 0
    # The gateways' shared ServiceAccount (the chart's), whose token asks for TokenReviews.
    assert pod["serviceAccountName"] == contract.GATEWAY_SERVICE_ACCOUNT
    assert pod["automountServiceAccountToken"] is True
    config = contract.ToolGatewayConfig.model_validate_json(container["env"][0]["value"])
    assert config.caller_auth == "tokenreview"
    # The grants come from the mounted ConfigMap (rendered without access: nobody granted).
    assert config.grants == {} and config.grants_file == contract.GATEWAY_GRANTS_FILE
    grants = gateway_objects(adapter)["ConfigMap"]
    assert grants["metadata"]["name"] == f"{gateway_name(adapter)}-grants"
    assert json.loads(grants["data"][contract.GATEWAY_GRANTS_KEY]) == {"grants": {}}
    [volume] = [v for v in pod["volumes"] if "configMap" in v]
    assert volume["configMap"] == {"name": grants["metadata"]["name"]}
    assert mounts_of(container)[volume["name"]] == {
        "name": volume["name"],
        "mountPath": contract.GATEWAY_GRANTS_DIR,
        "readOnly": True,
    }
    security = container["securityContext"]
    assert security["readOnlyRootFilesystem"] is True
    assert security["allowPrivilegeEscalation"] is False
    assert security["runAsNonRoot"] is True
    assert security["capabilities"]["drop"] == ["ALL"]
    secret_volumes = [v for v in pod["volumes"] if "secret" in v]
    mounts = {m["name"]: m for m in container["volumeMounts"]}
    if secret:
        [volume] = secret_volumes
        assert volume["secret"]["secretName"] == secret
        mount = mounts[volume["name"]]
        assert mount == {
            "name": volume["name"],
            "mountPath": contract.GATEWAY_CREDENTIALS_DIR,
            "readOnly": True,
        }
    else:
        assert secret_volumes == []
    # The config the gateway reads is the contract, and carries no secret material.
    config = contract.ToolGatewayConfig.model_validate_json(
        env_of(container)[contract.GATEWAY_CONFIG_ENV]["value"]
    )
    assert config.adapter == adapter and config.namespace == NAMESPACE
    assert [op.name for op in config.operations] == [
        op["name"] for op in ADAPTER_SPECS[adapter]["operations"]
    ]
    if secret:
        assert secret not in env_of(container)[contract.GATEWAY_CONFIG_ENV]["value"]


def mounts_of(container: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {m["name"]: m for m in container["volumeMounts"]}


def test_agents_coming_and_going_change_the_grants_not_the_deployment() -> None:
    """The regression of BENCHMARKS.md: every new agent rolled the gateway. Now only the
    ConfigMap the pods mount changes, and the gateway re-reads it (test_gateway.py)."""
    parent = Parent("ToolAdapter", "orders", NAMESPACE, uid="u-1")
    spec = validate_spec(ToolAdapterSpec, ADAPTER_SPECS["orders"])

    def rendered(grants: dict[str, list[str]]) -> dict[str, dict[str, Any]]:
        access = GatewayAccess.of(grants, grants=grants)
        return {o["kind"]: o for o in render_adapter(parent, spec, access=access)}

    none, one = rendered({}), rendered({"acme": ["get_order"]})
    two = rendered({"acme": ["get_order"], "beta": ["get_order", "cancel_order"]})
    assert none["Deployment"] == one["Deployment"] == two["Deployment"]
    tables = [json.loads(r["ConfigMap"]["data"][contract.GATEWAY_GRANTS_KEY]) for r in (one, two)]
    assert tables == [
        {"grants": {"acme": ["get_order"]}},
        {"grants": {"acme": ["get_order"], "beta": ["cancel_order", "get_order"]}},
    ]
    # Owned by the adapter, so it goes with it; applied before the pods that mount it.
    assert two["ConfigMap"]["metadata"]["ownerReferences"][0]["uid"] == "u-1"
    assert [o["kind"] for o in render_adapter(parent, spec)][:2] == ["ConfigMap", "Deployment"]


@pytest.mark.parametrize("adapter", sorted(ADAPTER_SPECS))
def test_gateway_service_and_hpa_target_the_deployment(adapter: str) -> None:
    objs = gateway_objects(adapter)
    deploy, service, hpa = objs["Deployment"], objs["Service"], objs["HorizontalPodAutoscaler"]
    assert hpa["spec"]["scaleTargetRef"] == {
        "apiVersion": deploy["apiVersion"],
        "kind": deploy["kind"],
        "name": deploy["metadata"]["name"],
    }
    gateway = validate_spec(ToolAdapterSpec, ADAPTER_SPECS[adapter]).gateway
    assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (
        gateway.min_replicas,
        gateway.max_replicas,
    )
    pod_labels = deploy["spec"]["template"]["metadata"]["labels"]
    selector = deploy["spec"]["selector"]["matchLabels"]
    assert selector.items() <= pod_labels.items()
    assert service["spec"]["selector"].items() <= pod_labels.items()
    assert service["metadata"]["name"] == gateway_name(adapter)
    [port] = service["spec"]["ports"]
    assert port["port"] == contract.GATEWAY_HTTP_PORT
    container_ports = {
        p["name"] for p in deploy["spec"]["template"]["spec"]["containers"][0]["ports"]
    }
    assert port["targetPort"] in container_ports
    # The selector may never change (it is immutable): only the adapter's identity is in it.
    assert set(selector) == {"app.kubernetes.io/name", ADAPTER_LABEL}


def test_adapter_secrets_appear_only_in_their_gateway() -> None:
    """Credentials never enter the Ray cluster: no Secret of a ToolAdapter is named anywhere in
    a RayService or VirtualService, and each is mounted only by its own gateway."""
    checked = 0
    cases: list[tuple[list[dict[str, Any]], list[dict[str, Any]]]] = [
        (render_set("gpu-llm"), example_documents("quickstart", "gpu-llm")),
        (variant_objects(), [{"kind": "ToolAdapter", "spec": s} for s in ADAPTER_SPECS.values()]),
    ]
    for objects, docs in cases:
        secrets = {
            d["spec"]["credentials"]["secretRef"]
            for d in docs
            if d.get("kind") == "ToolAdapter" and d["spec"].get("credentials", {}).get("secretRef")
        }
        assert secrets
        for obj in objects:
            text = json.dumps(obj)
            mentioned = {s for s in secrets if s in text}
            if obj["kind"] in ("RayService", "VirtualService"):
                assert not mentioned, f"{object_id(obj)} names adapter Secrets {mentioned}"
                checked += 1
            elif obj["kind"] == "Deployment":
                volumes = obj["spec"]["template"]["spec"]["volumes"]
                mounted = {v["secret"]["secretName"] for v in volumes if "secret" in v}
                assert mentioned == mounted and len(mounted) <= 1
            else:
                assert not mentioned, f"{object_id(obj)} names adapter Secrets {mentioned}"
    assert checked >= 4


# --------------------------------------------------------------------------------------------
# Builders: errors, owners, namespaces


def manifests(agent_spec: dict[str, Any], **meta: str) -> list[dict[str, Any]]:
    docs: list[dict[str, Any]] = [
        {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "orders-creds"}},
        {
            "apiVersion": API_VERSION,
            "kind": "SupportAgent",
            "metadata": {"name": "acme", **meta},
            "spec": agent_spec,
        },
    ]
    for name, spec in ADAPTER_SPECS.items():
        docs.append(
            {"apiVersion": API_VERSION, "kind": "ToolAdapter", "metadata": {"name": name, **meta},
             "spec": spec}
        )  # fmt: skip
    return docs


@pytest.mark.parametrize(
    ("tools", "fragments"),
    [
        (
            [{"adapter": "helpdesk", "operations": ["create_ticket"]}],
            ["SupportAgent default/acme", "ToolAdapter default/helpdesk does not exist"],
        ),
        (
            [{"adapter": "orders", "operations": ["get_order", "delete_everything"]}],
            ["SupportAgent default/acme", "orders", "delete_everything"],
        ),
    ],
    ids=["missing-adapter", "unknown-operation"],
)
def test_unresolved_references(tools: list[dict[str, Any]], fragments: list[str]) -> None:
    spec = patched(BASE_AGENT, {"tools": tools, "handoff": None})
    with pytest.raises(RenderError) as caught:
        render_manifests(manifests(spec))
    for fragment in fragments:
        assert fragment in str(caught.value)


def test_plan_calling_an_ungranted_operation_is_unresolved() -> None:
    plan = {"intent": "refund", "operation": "orders.refund_order"}
    spec = patched(BASE_AGENT, {"tools": BASE_AGENT["tools"][:1], "handoff": None})
    spec["tools"] = [{"adapter": "orders", "operations": ["get_order"]}]
    spec["intents"] = [plan]
    with pytest.raises(RenderError) as caught:
        render_manifests(manifests(spec))
    assert "intent refund calls orders.refund_order, which is not granted" in str(caught.value)


def test_adapter_in_another_namespace_does_not_resolve() -> None:
    docs = manifests(patched(BASE_AGENT, {"tools": BASE_AGENT["tools"][:1], "handoff": None}))
    for doc in docs:
        if doc["kind"] == "ToolAdapter":
            doc["metadata"]["namespace"] = "elsewhere"
    with pytest.raises(RenderError, match="ToolAdapter default/orders does not exist"):
        render_manifests(docs)


def test_invalid_spec_is_a_render_error_naming_the_object() -> None:
    spec = patched(BASE_AGENT, {"workerPools": {"cpu": {"minWorkers": 9, "maxWorkers": 1}}})
    with pytest.raises(RenderError) as caught:
        render_manifests(manifests(spec, namespace="shop"))
    assert str(caught.value) == (
        "SupportAgent shop/acme: spec.workerPools.cpu: "
        "minWorkers must be less than or equal to maxWorkers"
    )


def test_other_kinds_are_skipped_and_namespaces_kept() -> None:
    objects = render_manifests(manifests(BASE_AGENT, namespace="shop"))
    assert {o["metadata"]["namespace"] for o in objects} == {"shop"}
    assert "Secret" not in {o["kind"] for o in objects}
    defaulted = render_manifests(manifests(BASE_AGENT), default_namespace="team-a")
    assert {o["metadata"]["namespace"] for o in defaulted} == {"team-a"}


def test_render_errors_survive_context_managers() -> None:
    """Regression: `RenderError` and `SpecError` were frozen dataclasses, so code that sets an
    attribute on them in flight (`contextlib.contextmanager.__exit__` sets `__traceback__`,
    `add_note` sets `__notes__`; kopf, pytest and ExceptionGroups do both) raised
    `FrozenInstanceError` instead, hiding the message that names the object at fault."""
    import contextlib

    @contextlib.contextmanager
    def passthrough() -> Iterator[None]:
        yield

    spec = patched(BASE_AGENT, {"tools": [{"adapter": "helpdesk", "operations": ["x"]}]})
    outcomes = []
    producers: list[Callable[[], object]] = [
        lambda: render_manifests(manifests(spec)),  # RenderError
        lambda: validate_spec(SupportAgentSpec, spec),  # SpecError
    ]
    for produce in producers:
        try:
            with passthrough():
                produce()
        except Exception as exc:
            outcomes.append(type(exc).__name__)
    assert outcomes == ["RenderError", "SpecError"], (
        f"got {outcomes}: make RenderError and SpecError plain (non-frozen) exceptions, e.g. "
        "`class RenderError(Exception): def __init__(self, message: str) -> None: "
        "super().__init__(message); self.message = message`"
    )


@pytest.mark.parametrize("uid", [None, "2d5e8f5a-4b4e-4a55-9e0b-3f1c0c6d9a11"])
def test_owner_references(uid: str | None) -> None:
    spec = agent({"ingress": {"hosts": ["help.example.com"]}})
    agent_parent = Parent("SupportAgent", "acme", NAMESPACE, uid=uid)
    adapter_parent = Parent("ToolAdapter", "orders", NAMESPACE, uid=uid)
    children = render_agent(agent_parent, spec, adapters()) + render_adapter(
        adapter_parent, adapters()["orders"]
    )
    # RayService, VirtualService, ServiceAccount; the gateway's grants and 3 + policy.
    assert len(children) == 8
    for child, parent in zip(children, [agent_parent] * 3 + [adapter_parent] * 5, strict=True):
        meta = child["metadata"]
        assert meta["namespace"] == NAMESPACE
        if uid is None:
            assert "ownerReferences" not in meta
        else:
            assert meta["ownerReferences"] == [
                {
                    "apiVersion": API_VERSION,
                    "kind": parent.kind,
                    "name": parent.name,
                    "uid": uid,
                    "controller": True,
                    "blockOwnerDeletion": True,
                }
            ]


@pytest.mark.parametrize(("oid", "obj"), RENDERED, ids=[oid for oid, _ in RENDERED])
def test_labels(oid: str, obj: dict[str, Any]) -> None:
    labels = obj["metadata"]["labels"]
    assert labels["app.kubernetes.io/managed-by"] == "switchboard"
    assert labels["app.kubernetes.io/part-of"] == "switchboard"
    kind, name = parent_of(obj)
    assert labels["app.kubernetes.io/instance"] == name
    if obj["kind"] != "AuthorizationPolicy":  # agents and tool gateways both have them
        agent_kinds = ("RayService", "VirtualService", "RequestAuthentication", "ServiceAccount")
        assert (kind == "SupportAgent") == (obj["kind"] in agent_kinds)


# --------------------------------------------------------------------------------------------
# Schema validation: upstream CRDs (strict), built-in kinds, metadata


@pytest.mark.parametrize(
    "obj",
    rendered_of(
        "RayService", "RayJob", "VirtualService", "RequestAuthentication", "AuthorizationPolicy"
    ),
)
def test_custom_kinds_match_upstream_crds(obj: dict[str, Any], schemas: Any) -> None:
    assert schemas.crd_errors(obj) == []
    assert schemas.metadata_errors(obj) == []


@pytest.mark.parametrize("version", K8S_VERSIONS)
@pytest.mark.parametrize(
    "obj",
    rendered_of(
        "Deployment",
        "Service",
        "HorizontalPodAutoscaler",
        "NetworkPolicy",
        "ServiceAccount",
        "ConfigMap",
    ),
)
def test_builtin_kinds_match_kubernetes_schemas(
    obj: dict[str, Any], version: str, schemas: Any
) -> None:
    assert (obj["apiVersion"], obj["kind"]) in BUILTIN_KINDS
    assert schemas.builtin_errors(obj, version) == []


def test_every_rendered_kind_is_validated() -> None:
    kinds = {(o["apiVersion"], o["kind"]) for _, o in RENDERED}
    assert kinds <= BUILTIN_KINDS | UPSTREAM_KINDS
    assert kinds >= UPSTREAM_KINDS


def first_of(kind: str) -> dict[str, Any]:
    return copy.deepcopy(next(o for _, o in RENDERED if o["kind"] == kind))


@pytest.mark.parametrize(
    ("kind", "path", "key", "value", "error"),
    [
        (
            "RayService",
            ["spec", "rayClusterConfig", "headGroupSpec"],
            "rayStartParamz",
            {"num-cpus": "0"},
            "spec.rayClusterConfig.headGroupSpec: Additional properties are not allowed "
            "('rayStartParamz' was unexpected)",
        ),
        (
            "RayService",
            ["spec", "rayClusterConfig"],
            "enableInTreeAutoscaler",
            True,
            "'enableInTreeAutoscaler' was unexpected",
        ),
        (
            "RayService",
            [
                "spec",
                "rayClusterConfig",
                "workerGroupSpecs",
                0,
                "template",
                "spec",
                "containers",
                0,
            ],
            "imagePulPolicy",
            "Always",
            "'imagePulPolicy' was unexpected",
        ),
        ("RayService", ["spec"], "serveConfigV2", {"applications": []}, "is not of type 'string'"),
        (
            "VirtualService",
            ["spec", "http", 0, "retries"],
            "retryon",
            "5xx",
            "'retryon' was unexpected",
        ),
        (
            "VirtualService",
            ["spec", "http", 0, "route", 0, "destination", "port"],
            "number",
            "8000",
            "is not of type 'integer'",
        ),
    ],
)
def test_upstream_validation_catches_mistakes(
    kind: str, path: list[Any], key: str, value: Any, error: str, schemas: Any
) -> None:
    obj = first_of(kind)
    node = obj
    for step in path:
        node = node[step]
    node[key] = value
    errors = schemas.crd_errors(obj)
    assert len(errors) == 1 and error in errors[0], errors


@pytest.mark.parametrize(
    ("value", "ok"),
    [("2", True), (2, True), ("500m", True), ("4Gi", True), (2.5, False), ("lots", False)],
)
def test_upstream_int_or_string_quantities(value: Any, ok: bool, schemas: Any) -> None:
    rs = first_of("RayService")
    rs["spec"]["rayClusterConfig"]["headGroupSpec"]["template"]["spec"]["containers"][0][
        "resources"
    ]["limits"]["cpu"] = value
    assert (schemas.crd_errors(rs) == []) is ok


@pytest.mark.parametrize(
    ("kind", "mutate", "error"),
    [
        (
            "Deployment",
            lambda o: o["spec"]["template"]["spec"]["containers"][0].update(securityContxt={}),
            "'securityContxt' was unexpected",
        ),
        (
            "Deployment",
            lambda o: o["spec"].update(replica=2),
            "'replica' was unexpected",
        ),
        (
            "HorizontalPodAutoscaler",
            lambda o: o["spec"]["scaleTargetRef"].update(Kind="Deployment"),
            "'Kind' was unexpected",
        ),
        ("Service", lambda o: o["spec"]["ports"][0].update(port="http"), "is not of type"),
    ],
)
def test_builtin_validation_catches_mistakes(
    kind: str, mutate: Any, error: str, schemas: Any
) -> None:
    obj = first_of(kind)
    mutate(obj)
    errors = schemas.builtin_errors(obj, K8S_VERSIONS[-1])
    assert len(errors) == 1 and error in errors[0], errors


def test_metadata_validation_catches_mistakes(schemas: Any) -> None:
    rs = first_of("RayService")
    rs["metadata"]["labelz"] = {"a": "b"}
    assert "'labelz' was unexpected" in " ".join(schemas.metadata_errors(rs))
    rs = first_of("VirtualService")
    rs["metadata"]["labels"]["bad"] = 1
    assert schemas.metadata_errors(rs)


# --------------------------------------------------------------------------------------------
# serveConfigV2: Ray's own schema, plus what it lets through


@cache
def ray_schema() -> Any:
    import warnings

    with warnings.catch_warnings():  # Ray's own pydantic-v1-style Field() deprecations
        warnings.simplefilter("ignore", DeprecationWarning)
        from ray.serve import schema  # a few seconds: import only when these tests run
    return schema


def model_classes(annotation: Any) -> list[type[BaseModel]]:
    """Pydantic models inside a field annotation (`Optional`, `Union`, `List`, ...)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    return [m for arg in typing.get_args(annotation) for m in model_classes(arg)]


def unknown_keys(value: dict[str, Any], model: type[BaseModel], path: str) -> Iterator[str]:
    """Keys Ray's schema would drop silently, walking nested models by their fields."""
    fields: dict[str, FieldInfo] = {}
    for name, field in model.model_fields.items():
        fields[name] = field
        for alias in (field.alias, field.validation_alias):
            if isinstance(alias, str):
                fields[alias] = field
    for key, sub in value.items():
        found = fields.get(key)
        if found is None:
            yield f"{path}.{key} (not a field of {model.__name__})"
            continue
        nested = model_classes(found.annotation)
        if not nested:
            continue
        items = sub if isinstance(sub, list) else [sub]
        for i, item in enumerate(items):
            if isinstance(item, dict):
                where = f"{path}.{key}[{i}]" if isinstance(sub, list) else f"{path}.{key}"
                yield from unknown_keys(item, nested[0], where)


def serve_config_problems(rs: dict[str, Any], rendered: list[dict[str, Any]]) -> list[str]:
    """Everything wrong with one RayService's serveConfigV2, as messages."""
    schema = ray_schema()
    doc = serve_doc(rs)
    problems = list(unknown_keys(doc, schema.ServeDeploySchema, "serveConfigV2"))
    parsed = schema.ServeDeploySchema.model_validate(doc)
    name, namespace = rs["metadata"]["name"], rs["metadata"]["namespace"]
    apps = {a["name"]: a for a in doc["applications"]}
    if len(apps) != len(doc["applications"]):
        problems.append("duplicate application names")
    prefixes = [a.route_prefix for a in parsed.applications if a.route_prefix]
    if len(set(prefixes)) != len(prefixes):
        problems.append(f"duplicate route prefixes {prefixes}")
    for app in doc["applications"]:
        for dep in app["deployments"]:
            scaling = dep.get("autoscaling_config") or {}
            if scaling.get("min_replicas", 1) > scaling.get("max_replicas", 1):
                problems.append(f"{app['name']}/{dep['name']}: min_replicas > max_replicas")
    routers = [a for a in apps.values() if a["import_path"] == contract.ROUTER_APP_IMPORT_PATH]
    agents = [a for a in apps.values() if a["import_path"] == contract.AGENT_APP_IMPORT_PATH]
    if len(routers) + len(agents) != len(apps) or not agents:
        return [*problems, f"expected agent apps and at most one router, got {list(apps)}"]
    containers = rayservice_containers(rs)
    gpu_limits = [int(c["resources"]["limits"].get(GPU_RESOURCE, 0)) for c in containers]
    services = {
        f"http://{o['metadata']['name']}.{o['metadata']['namespace']}.svc.cluster.local:"
        f"{o['spec']['ports'][0]['port']}"
        for o in rendered
        if o["kind"] == "Service"
    }
    known = {contract.ORCHESTRATOR_DEPLOYMENT, contract.LLM_DEPLOYMENT}
    if not routers:  # one revision: it is the agent's entry at `/`, with no hop in front
        [only] = agents
        if only["route_prefix"] != "/":
            problems.append(f"{only['name']}: the only revision must answer at /")
        routes = [(only["name"], None)]
    else:
        [router_app] = routers
        router = contract.RouterConfig.model_validate(router_app["args"])
        if (router_app["name"], router_app["route_prefix"], router.agent) != (name, "/", name):
            problems.append(f"router app {router_app['name']} is not the agent's entry at /")
        if [d["name"] for d in router_app["deployments"]] != [contract.ROUTER_DEPLOYMENT]:
            problems.append("router app deployments")
        if sum(r.weight for r in router.revisions) != 100:
            problems.append("router weights do not sum to 100")
        if len(router.revisions) < 2:
            problems.append("a router in front of a single revision")
        routes = [(r.app_name, r.revision) for r in router.revisions]
    for app_name, revision in routes:
        app = apps.get(app_name)
        if app is None or app["import_path"] != contract.AGENT_APP_IMPORT_PATH:
            problems.append(f"router route to missing app {app_name}")
            continue
        args = contract.AgentAppConfig.model_validate(app["args"])
        if (args.agent, args.namespace) != (name, namespace):
            problems.append(f"{app['name']}: args name another agent")
        if app["name"] != revision_app_name(name, args.revision) or revision not in (
            None,
            args.revision,
        ):
            problems.append(f"{app['name']}: revision {args.revision} does not match its name")
        if revision is not None and app.get("route_prefix") is not None:
            problems.append(f"{app['name']}: revisions behind the router must not have a route")
        names = {d["name"] for d in app["deployments"]}
        if not names <= known or contract.ORCHESTRATOR_DEPLOYMENT not in names:
            problems.append(f"{app['name']}: deployments {sorted(names)}")
        for dep in app["deployments"]:
            if not 0 < dep.get("max_queued_requests", -1) <= 10 * dep["max_ongoing_requests"]:
                problems.append(f"{app['name']}/{dep['name']}: unbounded or odd queue")
        for dep in app["deployments"]:
            gpus = dep["ray_actor_options"].get("num_gpus", 0)
            if gpus and max(gpu_limits) < gpus:
                problems.append(f"{app['name']}/{dep['name']}: no worker with {gpus} GPUs")
        # Every path the app reads must be in the image or on a volume mounted in every pod.
        paths = [args.nlu.model_path]
        if args.llm and args.llm.model_path:
            paths.append(args.llm.model_path)
        if args.knowledge_base:
            paths.append(args.knowledge_base.path)
        for path in paths:
            if not path.startswith((MODELS_ROOT, KNOWLEDGE_BASE_DIR)):
                continue
            for container in containers:
                mounts = [m["mountPath"] for m in container.get("volumeMounts", [])]
                if not any(path == m or path.startswith(m + "/") for m in mounts):
                    problems.append(f"{path} is not mounted in {container['name']}")
        envs = [args.sessions.redis_url_env, args.llm.api_key_env if args.llm else None]
        for var in filter(None, envs):
            for container in containers:
                if var not in env_of(container):
                    problems.append(f"{var} is not set in {container['name']}")
        for tool in args.tools:
            if tool.url not in services:
                problems.append(f"tool {tool.adapter}: no rendered Service answers {tool.url}")
    return problems


RENDERED_SETS = {name: render_set(name) for name in EXAMPLE_SETS} | {"variants": variant_objects()}


@pytest.mark.parametrize(
    ("rs", "rendered"),
    [
        pytest.param(o, objs, id=f"{name}:{object_id(o)}")
        for name, objs in RENDERED_SETS.items()
        for o in objs
        if o["kind"] == "RayService"
    ],
)
def test_serve_config(rs: dict[str, Any], rendered: list[dict[str, Any]]) -> None:
    assert serve_config_problems(rs, rendered) == []


def test_serve_config_checks_catch_what_ray_lets_through() -> None:
    rs = first_of("RayService")
    doc = serve_doc(rs)
    orchestrator = doc["applications"][0]["deployments"][0]
    orchestrator["autoscaling_config"].update(max_replica=3, min_replicas=9, max_replicas=2)
    orchestrator["ray_actor_options"]["num_gpu"] = 1
    del orchestrator["max_queued_requests"]
    doc["http_options"]["hots"] = "0.0.0.0"
    rs["spec"]["serveConfigV2"] = yaml.safe_dump(doc)
    # Ray's own schema accepts all of it...
    ray_schema().ServeDeploySchema.model_validate(doc)
    # ...these checks do not.
    problems = serve_config_problems(rs, RENDERED_SETS["quickstart"])
    app = doc["applications"][0]["name"]
    assert sorted(problems) == sorted(
        [
            "serveConfigV2.http_options.hots (not a field of HTTPOptionsSchema)",
            "serveConfigV2.applications[0].deployments[0].autoscaling_config.max_replica "
            "(not a field of AutoscalingConfig)",
            "serveConfigV2.applications[0].deployments[0].ray_actor_options.num_gpu "
            "(not a field of RayActorOptionsSchema)",
            f"{app}/Orchestrator: min_replicas > max_replicas",
            f"{app}/Orchestrator: unbounded or odd queue",
        ]
    )


def test_serve_config_checks_catch_broken_args() -> None:
    rs = first_of("RayService")
    doc = serve_doc(rs)
    doc["applications"][0]["args"]["nlu"]["modelPath"] = "/x"
    rs["spec"]["serveConfigV2"] = yaml.safe_dump(doc)
    with pytest.raises(ValueError, match="modelPath"):
        serve_config_problems(rs, RENDERED_SETS["quickstart"])


def test_policy_limits_reach_the_data_plane() -> None:
    """`spec.policy.rateLimit` and `budgets` in the agent's Serve args (docs/data-plane.md,
    "Limits and budgets"); unset, the args carry neither."""
    policy = {
        "rateLimit": {"session": {"perMinute": 20, "burst": 5}},
        "budgets": {
            "window": "30m",
            "agent": {"llmTokens": 1000, "toolCalls": 10},
            "customer": {"toolCalls": 2},
            "onExhausted": "handoff",
        },
    }
    args = agent_app(rayservice({"policy": policy}))["args"]
    rendered = contract.AgentAppConfig.model_validate(args).policy
    assert rendered.rate_limit == contract.RateLimitsConfig(
        session=contract.RateLimitConfig(per_minute=20, burst=5)
    )
    budgets = rendered.budgets
    assert budgets is not None and budgets.window_seconds == 1800
    assert budgets.agent == contract.BudgetLimitConfig(llm_tokens=1000, tool_calls=10)
    assert budgets.customer == contract.BudgetLimitConfig(tool_calls=2)
    assert budgets.on_exhausted == "handoff" and budgets.reply == contract.DEFAULT_BUDGET_REPLY
    plain = agent_app(rayservice())["args"]["policy"]
    assert "rate_limit" not in plain and "budgets" not in plain
    with pytest.raises(SpecError, match="window"):
        agent({"policy": {"budgets": {"window": "1x"}}})
