"""The generated CustomResourceDefinitions: freshness, `kubectl explain` quality, structural
rules the API server enforces, and every CEL rule against valid and invalid objects.

The CRDs under test are the committed files in `crds/` (what users install); the CEL tables run
the rules from those files and, separately, through `validate_spec` (what the operator runs on
servers that ignore `x-kubernetes-validations`), so both enforcers are held to one expectation.
"""

from __future__ import annotations

import copy
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import celpy
import pytest
import yaml
from openapi_schema_validator import OAS30Validator
from pydantic import BaseModel

from switchboard.operator.api.base import API_VERSION
from switchboard.operator.api.modelrollout import ModelRolloutSpec
from switchboard.operator.api.modeltraining import ModelTrainingSpec
from switchboard.operator.api.supportagent import SupportAgentSpec
from switchboard.operator.api.tooladapter import ToolAdapterSpec
from switchboard.operator.api.validation import SpecError, cel_violations, validate_spec
from switchboard.serving.config import HANDOFF_VALUES

REPO = Path(__file__).resolve().parents[1]
CRD_DIR = REPO / "crds"
EXAMPLES = REPO / "examples"
SPEC_MODELS: dict[str, type[BaseModel]] = {
    "SupportAgent": SupportAgentSpec,
    "ToolAdapter": ToolAdapterSpec,
    "ModelRollout": ModelRolloutSpec,
    "ModelTraining": ModelTrainingSpec,
}

# Short names of kubectl's built-in resources, and of CRDs commonly installed beside ours
# (Istio, Prometheus Operator, Argo CD, cert-manager, KubeRay, Knative): a collision makes
# `kubectl get <short>` ambiguous.
BUILTIN_SHORT_NAMES = (
    "cs cm ep ev limits ns no pvc pv po rc quota sa svc "  # core/v1
    "crd crds deploy ds rs sts hpa cj csr ing netpol pdb psp pc sc ingclass vac"
)
ECOSYSTEM_SHORT_NAMES = (
    "vs dr gw se pa ra sidecar wg we ef ap smon pmon prb promrule am prom amcfg "
    "app apps appproj appprojs appset appsets cert certs cr crs issuer clusterissuer "
    "rayservice raycluster rayjob ksvc kcfg rt rev"
)
TAKEN_SHORT_NAMES = frozenset(BUILTIN_SHORT_NAMES.split() + ECOSYSTEM_SHORT_NAMES.split())


# --------------------------------------------------------------------------------------------
# Helpers (kept here: test modules cannot import each other)


def load_crds() -> dict[str, dict[str, Any]]:
    """The committed CRDs, by kind."""
    crds = {}
    for path in sorted(CRD_DIR.glob("*.yaml")):
        doc = yaml.safe_load(path.read_text(encoding="utf-8"))
        crds[doc["spec"]["names"]["kind"]] = doc
    return crds


CRDS = load_crds()
KINDS = sorted(CRDS)


def root_schema(kind: str) -> dict[str, Any]:
    versions = CRDS[kind]["spec"]["versions"]
    storage = next(v for v in versions if v.get("storage"))
    schema: dict[str, Any] = storage["schema"]["openAPIV3Schema"]
    return schema


def spec_schema(kind: str) -> dict[str, Any]:
    schema: dict[str, Any] = root_schema(kind)["properties"]["spec"]
    return schema


def walk(node: dict[str, Any], path: str) -> Iterator[tuple[str, dict[str, Any]]]:
    """Every schema node under `node` (properties, items, map values, combinators)."""
    yield path, node
    for name, sub in node.get("properties", {}).items():
        yield from walk(sub, f"{path}.{name}")
    if isinstance(node.get("items"), dict):
        yield from walk(node["items"], f"{path}[]")
    if isinstance(node.get("additionalProperties"), dict):
        yield from walk(node["additionalProperties"], f"{path}{{}}")
    for key in ("anyOf", "oneOf", "allOf"):
        for i, sub in enumerate(node.get(key, ())):
            yield from walk(sub, f"{path}<{key}{i}>")
    if isinstance(node.get("not"), dict):
        yield from walk(node["not"], f"{path}<not>")


def own_nodes() -> Iterator[tuple[str, dict[str, Any]]]:
    """Every node of every CRD's spec and status schema, named `Kind.spec.a.b[]...`."""
    for kind in KINDS:
        props = root_schema(kind)["properties"]
        for part in ("spec", "status"):
            yield from walk(props[part], f"{kind}.{part}")


def apply_defaults(value: Any, schema: dict[str, Any]) -> Any:
    """Structural defaulting as the API server does it before running CEL rules."""
    if isinstance(value, dict) and "properties" in schema:
        props = schema["properties"]
        out = dict(value)
        for name, sub in props.items():
            if name not in out and "default" in sub:
                out[name] = copy.deepcopy(sub["default"])
        return {k: apply_defaults(v, props[k]) if k in props else v for k, v in out.items()}
    if isinstance(value, dict) and isinstance(schema.get("additionalProperties"), dict):
        return {k: apply_defaults(v, schema["additionalProperties"]) for k, v in value.items()}
    if isinstance(value, list) and isinstance(schema.get("items"), dict):
        return [apply_defaults(v, schema["items"]) for v in value]
    return value


DELETE = object()


def patched(base: dict[str, Any], patch: dict[str, Any]) -> dict[str, Any]:
    """`base` deep-merged with `patch`; a `DELETE` value removes the key."""
    out = copy.deepcopy(base)
    for key, value in patch.items():
        if value is DELETE:
            out.pop(key, None)
        elif isinstance(value, dict):
            out[key] = patched(out[key] if isinstance(out.get(key), dict) else {}, value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def example_specs() -> list[tuple[str, str, dict[str, Any]]]:
    """(id, kind, spec) of every custom resource in examples/."""
    found = []
    for path in sorted(EXAMPLES.rglob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text(encoding="utf-8")):
            if doc and doc.get("apiVersion") == API_VERSION:
                rel = path.relative_to(EXAMPLES)
                found.append((f"{rel}:{doc['metadata']['name']}", doc["kind"], doc["spec"]))
    return found


def cel_rules() -> list[tuple[str, str, str, dict[str, Any]]]:
    """(kind, schema path, rule, schema node) of every `x-kubernetes-validations` entry."""
    rules = []
    for kind in KINDS:
        for path, node in walk(root_schema(kind), kind):
            for entry in node.get("x-kubernetes-validations", ()):
                rules.append((kind, path, entry["rule"], node))
    return rules


# --------------------------------------------------------------------------------------------
# Freshness: `switchboard crds --check`


def run_crds(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "switchboard.operator.cli", "crds", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_committed_crds_are_up_to_date() -> None:
    result = run_crds("--check", "--out", str(CRD_DIR))
    assert result.returncode == 0, (
        f"crds/ is stale; run `switchboard crds` and commit the result.\n{result.stderr}"
    )


def test_check_fails_on_a_modified_or_missing_file(tmp_path: Path) -> None:
    written = run_crds("--out", str(tmp_path))
    assert written.returncode == 0, written.stderr
    files = sorted(tmp_path.glob("*.yaml"))
    assert [f.name for f in files] == sorted(p.name for p in CRD_DIR.glob("*.yaml"))
    assert run_crds("--check", "--out", str(tmp_path)).returncode == 0

    edited = tmp_path / "tooladapters.switchboard.dev.yaml"
    edited.write_text(edited.read_text(encoding="utf-8") + "# hand edit\n", encoding="utf-8")
    result = run_crds("--check", "--out", str(tmp_path))
    assert result.returncode == 1
    assert "tooladapters.switchboard.dev.yaml" in result.stderr

    (tmp_path / "modelrollouts.switchboard.dev.yaml").unlink()
    result = run_crds("--check", "--out", str(tmp_path))
    assert result.returncode == 1
    assert "modelrollouts.switchboard.dev.yaml" in result.stderr


# --------------------------------------------------------------------------------------------
# Names, printer columns, categories


def test_every_kind_has_a_crd_file() -> None:
    assert sorted(SPEC_MODELS) == KINDS
    for kind, crd in CRDS.items():
        names = crd["spec"]["names"]
        assert crd["metadata"]["name"] == f"{names['plural']}.{crd['spec']['group']}"
        assert names["singular"] == kind.lower()
        assert names["listKind"] == f"{kind}List"
        assert crd["spec"]["scope"] == "Namespaced"
        versions = crd["spec"]["versions"]
        assert sum(1 for v in versions if v.get("storage")) == 1
        for version in versions:
            assert version["subresources"] == {"status": {}}, f"{kind} needs the status subresource"


@pytest.mark.parametrize("kind", KINDS)
def test_short_names_and_categories(kind: str) -> None:
    names = CRDS[kind]["spec"]["names"]
    assert names.get("shortNames"), f"{kind} has no short name"
    for short in names["shortNames"]:
        assert short not in TAKEN_SHORT_NAMES, f"{kind} short name {short!r} is taken"
        assert re.fullmatch(r"[a-z][a-z0-9]*", short), short
    assert "switchboard" in names.get("categories", [])
    # `kubectl delete all` must not take the agents with it.
    assert "all" not in names.get("categories", [])


def test_short_names_are_unique_across_kinds() -> None:
    shorts = [s for kind in KINDS for s in CRDS[kind]["spec"]["names"]["shortNames"]]
    plurals = [CRDS[kind]["spec"]["names"]["plural"] for kind in KINDS]
    assert len(set(shorts)) == len(shorts)
    assert not set(shorts) & set(plurals)


def resolve_json_path(kind: str, json_path: str) -> dict[str, Any] | None:
    """The schema node a printer column's JSONPath reads (filters dropped), None for metadata."""
    segments = [s for s in re.sub(r"\[[^\]]*\]", "", json_path).split(".") if s]
    if segments[0] == "metadata":
        return None
    node = root_schema(kind)
    for segment in segments:
        while "items" in node:
            node = node["items"]
        props = node.get("properties", {})
        assert segment in props, f"{kind} column path {json_path}: no field {segment!r}"
        node = props[segment]
    return node


@pytest.mark.parametrize("kind", KINDS)
def test_printer_columns(kind: str) -> None:
    columns = CRDS[kind]["spec"]["versions"][0]["additionalPrinterColumns"]
    names = [c["name"] for c in columns]
    assert len(set(names)) == len(names)
    assert "Age" in names
    if kind in ("SupportAgent", "ToolAdapter"):
        default_view = [c["name"] for c in columns if not c.get("priority")]
        assert {"Ready", "Reason", "Age"} <= set(default_view), default_view
    for column in columns:
        node = resolve_json_path(kind, column["jsonPath"])
        if node is None:
            continue
        expected = {"integer": "integer", "number": "number", "string": "string"}.get(
            column["type"]
        )
        if expected and "type" in node:
            assert node["type"] == expected, f"{kind} column {column['name']}: {node['type']}"


# --------------------------------------------------------------------------------------------
# Schema quality: descriptions and structural rules


def test_every_property_has_a_description() -> None:
    missing = []
    for kind in KINDS:
        props = root_schema(kind)["properties"]
        for part in ("spec", "status"):
            if not str(props[part].get("description", "")).strip():
                missing.append(f"{kind}.{part}")
    for path, node in own_nodes():
        for name, sub in node.get("properties", {}).items():
            if not str(sub.get("description", "")).strip():
                missing.append(f"{path}.{name}")
    assert not missing, "properties without a description (kubectl explain):\n" + "\n".join(missing)


def test_descriptions_are_single_line_prose() -> None:
    bad = [
        path
        for path, node in own_nodes()
        if "description" in node and (node["description"] != " ".join(node["description"].split()))
    ]
    assert not bad, bad


FORBIDDEN_KEYS = ("$ref", "$defs", "definitions", "title", "const", "allOf", "oneOf", "not")


@pytest.mark.parametrize("kind", KINDS)
def test_schema_is_structural(kind: str) -> None:
    problems = []
    for path, node in walk(root_schema(kind), kind):
        for key in FORBIDDEN_KEYS:
            if key in node:
                problems.append(f"{path}: has {key}")
        for branch in node.get("anyOf", ()):
            if branch.get("type") == "null":
                problems.append(f"{path}: anyOf with null")
        if node.get("additionalProperties") is False:
            problems.append(f"{path}: additionalProperties: false")
        if "properties" in node and "additionalProperties" in node:
            problems.append(f"{path}: both properties and additionalProperties")
        int_or_string = node.get("x-kubernetes-int-or-string")
        preserve = node.get("x-kubernetes-preserve-unknown-fields")
        if "<anyOf" in path:
            continue  # branches of int-or-string may omit everything
        if "type" not in node and not int_or_string and not preserve:
            problems.append(f"{path}: no type")
        if int_or_string and node.get("type"):
            problems.append(f"{path}: int-or-string with a type")
        if path == f"{kind}.metadata":
            continue  # `metadata: {type: object}` is the one allowed (and usual) root form
        if node.get("type") == "object" and not (
            "properties" in node or "additionalProperties" in node or preserve
        ):
            problems.append(f"{path}: object without properties/additionalProperties")
        if node.get("type") == "array" and "items" not in node:
            problems.append(f"{path}: array without items")
        for bound in ("exclusiveMinimum", "exclusiveMaximum"):
            if bound in node and not isinstance(node[bound], bool):
                problems.append(f"{path}: {bound} must be a boolean in OpenAPI v3.0")
        if node.get("x-kubernetes-list-type") == "map":
            keys = node.get("x-kubernetes-list-map-keys", [])
            item = node.get("items", {})
            for key in keys:
                if key not in item.get("required", []) and "default" not in item.get(
                    "properties", {}
                ).get(key, {}):
                    problems.append(f"{path}: list-map key {key} is neither required nor defaulted")
    assert not problems, "\n".join(problems)


def test_status_has_no_defaults() -> None:
    # Defaults in status would be written on every update and mask what the operator reports.
    for kind in KINDS:
        status = root_schema(kind)["properties"]["status"]
        assert not [p for p, n in walk(status, f"{kind}.status") if "default" in n]


def test_defaults_satisfy_their_own_schema() -> None:
    """The API server rejects a CRD whose defaults do not validate."""
    problems = []
    for path, node in own_nodes():
        if "default" not in node:
            continue
        schema = {k: v for k, v in node.items() if k != "default"}
        for error in OAS30Validator(schema).iter_errors(node["default"]):
            problems.append(f"{path}: default {node['default']!r}: {error.message}")
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize(("example", "kind", "spec"), example_specs(), ids=lambda v: str(v)[:40])
def test_crd_defaults_match_the_models(example: str, kind: str, spec: dict[str, Any]) -> None:
    """What the API server stores (CRD defaults applied) is what the operator parses."""
    from_server = apply_defaults(spec, spec_schema(kind))
    from_model = (
        SPEC_MODELS[kind]
        .model_validate(spec)
        .model_dump(by_alias=True, exclude_none=True, mode="json")
    )
    assert from_server == from_model


# --------------------------------------------------------------------------------------------
# CEL rules: compile, reference real fields, and behave as the tables say

CEL_RULES = cel_rules()


@pytest.mark.parametrize(
    ("kind", "path", "rule"),
    [(k, p, r) for k, p, r, _ in CEL_RULES],
    ids=[f"{p}:{r[:30]}" for _, p, r, _ in CEL_RULES],
)
def test_cel_rule_compiles(kind: str, path: str, rule: str) -> None:
    celpy.Environment().compile(rule)


SELF_REF = re.compile(r"(has\()?self((?:\.[A-Za-z_]\w*)+)(\s*\()?")


@pytest.mark.parametrize(
    ("kind", "path", "rule", "node"), CEL_RULES, ids=[f"{p}:{r[:30]}" for _, p, r, _ in CEL_RULES]
)
def test_cel_rule_references_existing_fields(
    kind: str, path: str, rule: str, node: dict[str, Any]
) -> None:
    """A typo in a rule fails CRD creation on a real server; `has()` on a defaulted field is
    always true, and lists used in rules need maxItems to stay within the CEL cost budget."""
    for match in SELF_REF.finditer(rule):
        segments = match.group(2).strip(".").split(".")
        if match.group(3):  # `self.steps.isSorted()`: the last segment is a method
            segments = segments[:-1]
        current = node
        for segment in segments:
            props = current.get("properties", {})
            assert segment in props, f"{path}: rule {rule!r} reads unknown field {segment!r}"
            current = props[segment]
            if current.get("type") == "array":
                assert "maxItems" in current, f"{path}.{segment} needs maxItems for CEL cost"
                break
        else:
            if match.group(1):
                assert "default" not in current, (
                    f"{path}: has(self.{'.'.join(segments)}) is always true: it has a default"
                )


# Valid bases: each invalid case changes exactly one thing.
AGENT = {
    "nlu": {"modelUri": "file:///models/nlu/v1"},
    "tools": [
        {"adapter": "orders", "operations": ["get_order"]},
        {"adapter": "ticketing", "operations": ["create_ticket"]},
    ],
    "handoff": {"adapter": "ticketing", "consoleTokensSecret": "console-tokens"},
}
GPU_POOL = {"gpu": {"minWorkers": 0, "maxWorkers": 2}}
ADAPTER = {
    "system": "orders",
    "baseURL": "http://orders.shop.svc:8080",
    "operations": [
        {"name": "get_order", "method": "GET", "path": "/orders/{id}"},
        {"name": "refund", "method": "POST", "path": "/refunds", "mutating": True},
    ],
    "credentials": {"type": "bearer", "secretRef": "orders-creds"},
}
ROLLOUT = {
    "agentRef": "acme",
    "component": "nlu",
    "candidate": {"modelUri": "file:///models/nlu/v2"},
    "weight": 10,
}
PROGRESSIVE = {
    "weight": DELETE,
    "progressive": {
        "steps": [5, 25, 50, 100],
        "analysis": {
            "metrics": [{"name": "errors", "builtin": "errorRate", "thresholdRange": {"max": 0.01}}]
        },
    },
    "testers": [{"name": "x-switchboard-canary", "exact": "1"}],
}
TRAINING = {
    "agentRef": "acme",
    "schedule": "0 3 * * 1",
    "data": {"baseUri": "s3://models/data/base.csv", "heldoutUri": "s3://models/data/ho.csv"},
    "outputPrefix": "s3://models/runs",
    "storage": {"credentialsSecretRef": {"name": "model-storage"}},
    "rollout": {"weight": 0},
}
BASES: dict[str, dict[str, Any]] = {
    "SupportAgent": AGENT,
    "ToolAdapter": ADAPTER,
    "ModelRollout": ROLLOUT,
    "ModelTraining": TRAINING,
}


def steps(values: list[int]) -> dict[str, Any]:
    return {**PROGRESSIVE, "progressive": {"steps": values}}


def metric(**fields: Any) -> dict[str, Any]:
    return {**PROGRESSIVE, "progressive": {"steps": [50], "analysis": {"metrics": [fields]}}}


OPENAI = {
    "backend": "openai",
    "endpoint": "https://llm.example.com/v1",
    "apiKeySecretRef": {"name": "llm", "key": "api-key"},
}
KEY = {"name": "llm", "key": "api-key"}

VALID_CASES: list[tuple[str, str, dict[str, Any]]] = [
    ("training-base", "ModelTraining", {}),
    ("training-by-hand-only", "ModelTraining", {"schedule": DELETE}),
    (
        "training-progressive-gpu",
        "ModelTraining",
        {
            "rollout": {"weight": DELETE, "progressive": {"steps": [10, 100]}, "paused": True},
            "job": {"workers": {"gpus": 1}},
            "feedback": {"uris": ["s3://models/feedback/"], "fromAgent": True},
        },
    ),
    ("agent-minimal", "SupportAgent", {"tools": DELETE, "handoff": DELETE}),
    (
        "agent-handoff-console-only",
        "SupportAgent",
        {"tools": DELETE, "handoff": {"adapter": DELETE}},
    ),
    (
        "agent-handoff-fields",
        "SupportAgent",
        {
            "handoff": {
                "fields": {"title": "subject", "text": "transcript", "url": "conversation_url"}
            }
        },
    ),
    ("agent-base", "SupportAgent", {}),
    ("agent-scale-to-zero", "SupportAgent", {"router": {"autoscaling": {"minReplicas": 0}}}),
    ("agent-equal-bounds", "SupportAgent", {"workerPools": {"cpu": {"minWorkers": 4}}}),
    ("agent-openai", "SupportAgent", {"llm": OPENAI}),
    ("agent-transformers-cpu", "SupportAgent", {"llm": {"modelUri": "file:///m"}}),
    (
        "agent-vllm-gpu",
        "SupportAgent",
        {
            "llm": {"backend": "vllm", "modelUri": "pvc://m/llm", "gpusPerReplica": 1},
            "workerPools": GPU_POOL,
        },
    ),
    ("agent-gpu-pool-unused", "SupportAgent", {"workerPools": GPU_POOL}),
    ("agent-kb-configmap", "SupportAgent", {"knowledgeBase": {"configMap": {"name": "kb"}}}),
    (
        "agent-plans",
        "SupportAgent",
        {
            "intents": [
                {"intent": "human", "handoff": True},
                {
                    "intent": "status",
                    "requiredSlots": ["order_id"],
                    "slotPrompts": {"order_id": "Which order?"},
                    "operation": "orders.get_order",
                },
            ]
        },
    ),
    ("agent-kb-volume", "SupportAgent", {"knowledgeBase": {"volume": {"claimName": "kb"}}}),
    (
        "agent-redis",
        "SupportAgent",
        {"sessions": {"store": "redis", "redis": {"urlSecretRef": {"name": "r", "key": "url"}}}},
    ),
    (
        "agent-s3-models",
        "SupportAgent",
        {
            "nlu": {"modelUri": "s3://models/nlu/v1"},
            "llm": {"modelUri": "s3://models/llm"},
            "modelStorage": {
                "endpoint": "http://minio:9000",
                "credentialsSecretRef": {"name": "s3"},
            },
        },
    ),
    (
        "agent-s3-ambient-credentials",
        "SupportAgent",
        {"nlu": {"modelUri": "s3://models/nlu/v1"}, "modelStorage": {"region": "eu-west-1"}},
    ),
    ("adapter-base", "ToolAdapter", {}),
    ("adapter-no-auth", "ToolAdapter", {"credentials": {"type": "none", "secretRef": DELETE}}),
    (
        "adapter-header-auth",
        "ToolAdapter",
        {"credentials": {"type": "header", "headerName": "X-Api-Key"}},
    ),
    ("adapter-equal-backoff", "ToolAdapter", {"retries": {"initialBackoffMs": 2000}}),
    ("adapter-one-replica", "ToolAdapter", {"gateway": {"minReplicas": 1, "maxReplicas": 1}}),
    ("rollout-manual", "ModelRollout", {}),
    ("rollout-manual-zero", "ModelRollout", {"weight": 0}),
    ("rollout-progressive", "ModelRollout", PROGRESSIVE),
    ("rollout-step-weight", "ModelRollout", {**PROGRESSIVE, "progressive": {"stepWeight": 20}}),
    (
        "rollout-step-weight-max",
        "ModelRollout",
        {**PROGRESSIVE, "progressive": {"stepWeight": 20, "maxWeight": 20}},
    ),
    ("rollout-single-step", "ModelRollout", steps([100])),
    ("rollout-steps-from-zero", "ModelRollout", steps([0, 100])),
    (
        "rollout-query-metric",
        "ModelRollout",
        metric(name="p95", query="histogram_quantile(0.95, x)", thresholdRange={"min": 0}),
    ),
    (
        "rollout-range-equal",
        "ModelRollout",
        metric(name="e", builtin="errorRate", thresholdRange={"min": 0.5, "max": 0.5}),
    ),
    ("rollout-regex-tester", "ModelRollout", {"testers": [{"name": "user-agent", "regex": "^b"}]}),
    (
        "rollout-traffic-guard-off",
        "ModelRollout",
        {**PROGRESSIVE, "progressive": {"steps": [50], "analysis": {"minRequests": 0}}},
    ),
]

INVALID_CASES: list[tuple[str, str, dict[str, Any], str]] = [
    # ModelTraining
    (
        "training-without-storage-credentials",
        "ModelTraining",
        {"storage": {"credentialsSecretRef": DELETE, "endpoint": "http://minio:9000"}},
        "spec: storage.credentialsSecretRef is required: the runs write with it and the operator "
        "reads each run's report with it",
    ),
    (
        "training-rollout-without-mode",
        "ModelTraining",
        {"rollout": {"weight": DELETE}},
        "spec.rollout: set exactly one of weight (manual) and progressive",
    ),
    (
        "training-rollout-both-modes",
        "ModelTraining",
        {"rollout": {"progressive": {"steps": [10, 100]}}},
        "spec.rollout: set exactly one of weight (manual) and progressive",
    ),
    # SupportAgent
    (
        "cpu-pool-min-gt-max",
        "SupportAgent",
        {"workerPools": {"cpu": {"minWorkers": 5, "maxWorkers": 2}}},
        "spec.workerPools.cpu: minWorkers must be less than or equal to maxWorkers",
    ),
    (
        "gpu-pool-min-gt-max",
        "SupportAgent",
        {"workerPools": {"gpu": {"minWorkers": 3}}},  # default maxWorkers 2
        "spec.workerPools.gpu: minWorkers must be less than or equal to maxWorkers",
    ),
    (
        "router-autoscaling-min-gt-max",
        "SupportAgent",
        {"router": {"autoscaling": {"minReplicas": 5, "maxReplicas": 2}}},
        "spec.router.autoscaling: minReplicas must be less than or equal to maxReplicas",
    ),
    (
        "router-autoscaling-min-gt-default-max",
        "SupportAgent",
        {"router": {"autoscaling": {"minReplicas": 5}}},  # default maxReplicas 2
        "spec.router.autoscaling: minReplicas must be less than or equal to maxReplicas",
    ),
    (
        "orchestrator-autoscaling-min-gt-max",
        "SupportAgent",
        {
            "orchestrator": {"autoscaling": {"minReplicas": 9, "maxReplicas": 8}},
            "sessions": {"store": "redis", "redis": {"urlSecretRef": {"name": "r", "key": "url"}}},
        },
        "spec.orchestrator.autoscaling: minReplicas must be less than or equal to maxReplicas",
    ),
    (
        "memory-sessions-with-replicas",
        "SupportAgent",
        {"orchestrator": {"autoscaling": {"maxReplicas": 3}}},
        "spec: sessions.store memory keeps conversations in one orchestrator replica: set "
        "orchestrator.autoscaling.maxReplicas to 1, or use sessions.store redis",
    ),
    (
        "llm-openai-without-endpoint",
        "SupportAgent",
        {"llm": {**OPENAI, "endpoint": DELETE}},
        "spec.llm: backend openai needs endpoint and apiKeySecretRef; other backends take none",
    ),
    (
        "llm-openai-without-key",
        "SupportAgent",
        {"llm": {**OPENAI, "apiKeySecretRef": DELETE}},
        "spec.llm: backend openai needs endpoint and apiKeySecretRef; other backends take none",
    ),
    (
        "llm-openai-with-model-uri",
        "SupportAgent",
        {"llm": {**OPENAI, "modelUri": "file:///m"}},
        "spec.llm: exactly one model source: modelUri (transformers, vllm) or endpoint (openai)",
    ),
    (
        "llm-transformers-with-endpoint-and-key",
        "SupportAgent",
        {"llm": {"modelUri": "file:///m", "endpoint": "https://x.example", "apiKeySecretRef": KEY}},
        "spec.llm: backend openai needs endpoint and apiKeySecretRef; other backends take none",
    ),
    (
        "llm-transformers-without-model-uri",
        "SupportAgent",
        {"llm": {"backend": "transformers"}},
        "spec.llm: exactly one model source: modelUri (transformers, vllm) or endpoint (openai)",
    ),
    (
        "llm-vllm-without-gpus",
        "SupportAgent",
        {"llm": {"backend": "vllm", "modelUri": "file:///m"}, "workerPools": GPU_POOL},
        "spec.llm: backend vllm needs gpusPerReplica of at least 1",
    ),
    (
        "auth-two-key-sources",
        "SupportAgent",
        {
            "auth": {
                "issuer": "https://login.example.com/",
                "jwksUri": "https://login.example.com/jwks",
                "jwksSecret": {"name": "jwks", "key": "keys"},
                "audiences": ["support"],
            }
        },
        "spec.auth: set exactly one key source: jwksUri or jwksSecret",
    ),
    (
        "auth-no-key-source",
        "SupportAgent",
        {"auth": {"issuer": "https://login.example.com/", "audiences": ["support"]}},
        "spec.auth: set exactly one key source: jwksUri or jwksSecret",
    ),
    (
        "llm-gpu-without-gpu-pool",
        "SupportAgent",
        {"llm": {"modelUri": "file:///m", "gpusPerReplica": 1}},
        "spec: an LLM with gpusPerReplica above 0 needs workerPools.gpu",
    ),
    (
        "plan-handoff-and-operation",
        "SupportAgent",
        {"intents": [{"intent": "x", "handoff": True, "operation": "orders.get_order"}]},
        "spec.intents[0]: a plan either hands off or calls an operation, not both",
    ),
    (
        "plan-slot-without-prompt",
        "SupportAgent",
        {"intents": [{"intent": "x", "requiredSlots": ["order_id"]}]},
        "spec.intents[0]: every required slot needs a prompt in slotPrompts",
    ),
    (
        "plan-parameters-without-operation",
        "SupportAgent",
        {"intents": [{"intent": "x", "parameters": {"kind": "damaged"}}]},
        "spec.intents[0]: parameters are inputs of an operation: set operation too",
    ),
    (
        "fallback-reply-without-text",
        "SupportAgent",
        {"fallback": {"action": "reply"}},
        "spec.fallback: action reply needs the reply text",
    ),
    (
        "fallback-knowledge-base-without-one",
        "SupportAgent",
        {"fallback": {"action": "knowledgeBase"}},
        "spec: fallback.action knowledgeBase needs spec.knowledgeBase",
    ),
    (
        "handoff-adapter-not-in-tools",
        "SupportAgent",
        {"handoff": {"adapter": "helpdesk"}},
        "spec: handoff.adapter and handoff.operation must be granted in tools",
    ),
    (
        "handoff-adapter-without-tools",
        "SupportAgent",
        {"tools": DELETE},
        "spec: handoff.adapter and handoff.operation must be granted in tools",
    ),
    (
        "handoff-operation-not-granted",
        "SupportAgent",
        {"handoff": {"operation": "open_case"}},
        "spec: handoff.adapter and handoff.operation must be granted in tools",
    ),
    (
        "knowledge-base-both-sources",
        "SupportAgent",
        {"knowledgeBase": {"configMap": {"name": "kb"}, "volume": {"claimName": "kb"}}},
        "spec.knowledgeBase: set exactly one knowledge base source: configMap or volume",
    ),
    (
        "knowledge-base-no-source",
        "SupportAgent",
        {"knowledgeBase": {"topK": 3}},
        "spec.knowledgeBase: set exactly one knowledge base source: configMap or volume",
    ),
    (
        "sessions-redis-without-section",
        "SupportAgent",
        {"sessions": {"store": "redis"}},
        "spec.sessions: store redis needs the redis section, and only it",
    ),
    (
        "sessions-memory-with-redis-section",
        "SupportAgent",
        {"sessions": {"redis": {"urlSecretRef": {"name": "r", "key": "url"}}}},
        "spec.sessions: store redis needs the redis section, and only it",
    ),
    (
        "nlu-s3-without-model-storage",
        "SupportAgent",
        {"nlu": {"modelUri": "s3://models/nlu/v1"}},
        "spec: s3:// model URIs need spec.modelStorage",
    ),
    (
        "llm-s3-without-model-storage",
        "SupportAgent",
        {"llm": {"modelUri": "s3://models/llm"}},
        "spec: s3:// model URIs need spec.modelStorage",
    ),
    # ToolAdapter
    (
        "get-operation-mutating",
        "ToolAdapter",
        {"operations": [{"name": "get_order", "method": "GET", "path": "/o", "mutating": True}]},
        "spec.operations[0]: a GET operation cannot be mutating",
    ),
    (
        "bearer-without-secret",
        "ToolAdapter",
        {"credentials": {"secretRef": DELETE}},
        "spec.credentials: auth types bearer, basic and header need secretRef; "
        "type none takes none",
    ),
    (
        "none-with-secret",
        "ToolAdapter",
        {"credentials": {"type": "none"}},
        "spec.credentials: auth types bearer, basic and header need secretRef; "
        "type none takes none",
    ),
    (
        "header-auth-without-header-name",
        "ToolAdapter",
        {"credentials": {"type": "header"}},
        "spec.credentials: headerName is required for auth type header, and only for it",
    ),
    (
        "bearer-with-header-name",
        "ToolAdapter",
        {"credentials": {"headerName": "X-Api-Key"}},
        "spec.credentials: headerName is required for auth type header, and only for it",
    ),
    (
        "retries-initial-gt-max-backoff",
        "ToolAdapter",
        {"retries": {"initialBackoffMs": 500, "maxBackoffMs": 100}},
        "spec.retries: initialBackoffMs must be less than or equal to maxBackoffMs",
    ),
    (
        "gateway-min-gt-max",
        "ToolAdapter",
        {"gateway": {"minReplicas": 4, "maxReplicas": 3}},
        "spec.gateway: minReplicas must be less than or equal to maxReplicas",
    ),
    # ModelRollout
    (
        "weight-and-progressive",
        "ModelRollout",
        {**PROGRESSIVE, "weight": 10},
        "spec: set exactly one of weight (manual) and progressive",
    ),
    (
        "neither-weight-nor-progressive",
        "ModelRollout",
        {"weight": DELETE},
        "spec: set exactly one of weight (manual) and progressive",
    ),
    (
        "steps-descending",
        "ModelRollout",
        steps([10, 5]),
        "spec.progressive: step weights must be strictly ascending",
    ),
    (
        "steps-duplicate",
        "ModelRollout",
        steps([10, 10]),
        "spec.progressive: step weights must be strictly ascending",
    ),
    (
        "steps-above-100",
        "ModelRollout",
        steps([10, 150]),
        "spec.progressive: step weights must be between 0 and 100",
    ),
    (
        "steps-negative",
        "ModelRollout",
        steps([-5, 10]),
        "spec.progressive: step weights must be between 0 and 100",
    ),
    (
        "steps-and-step-weight",
        "ModelRollout",
        {**PROGRESSIVE, "progressive": {"steps": [50], "stepWeight": 10}},
        "spec.progressive: set either steps or stepWeight (with maxWeight), not both",
    ),
    (
        "neither-steps-nor-step-weight",
        "ModelRollout",
        {**PROGRESSIVE, "progressive": {"intervalSeconds": 60}},
        "spec.progressive: set either steps or stepWeight (with maxWeight), not both",
    ),
    (
        "step-weight-above-max-weight",
        "ModelRollout",
        {**PROGRESSIVE, "progressive": {"stepWeight": 50, "maxWeight": 40}},
        "spec.progressive: stepWeight must be less than or equal to maxWeight",
    ),
    (
        "metric-builtin-and-query",
        "ModelRollout",
        metric(name="e", builtin="errorRate", query="up", thresholdRange={"max": 1}),
        "spec.progressive.analysis.metrics[0]: set exactly one of builtin and query",
    ),
    (
        "metric-neither-builtin-nor-query",
        "ModelRollout",
        metric(name="e", thresholdRange={"max": 1}),
        "spec.progressive.analysis.metrics[0]: set exactly one of builtin and query",
    ),
    (
        "threshold-min-gt-max",
        "ModelRollout",
        metric(name="e", builtin="errorRate", thresholdRange={"min": 2, "max": 1}),
        "spec.progressive.analysis.metrics[0].thresholdRange: "
        "thresholdRange min must be less than or equal to max",
    ),
    (
        "threshold-empty",
        "ModelRollout",
        metric(name="e", builtin="errorRate", thresholdRange={}),
        "spec.progressive.analysis.metrics[0].thresholdRange: "
        "thresholdRange needs min, max or both",
    ),
    (
        "tester-exact-and-regex",
        "ModelRollout",
        {"testers": [{"name": "x-canary", "exact": "1", "regex": "^1$"}]},
        "spec.testers[0]: set exactly one of exact and regex",
    ),
    (
        "tester-neither-exact-nor-regex",
        "ModelRollout",
        {"testers": [{"name": "x-canary"}]},
        "spec.testers[0]: set exactly one of exact and regex",
    ),
]


def server_violations(kind: str, spec: dict[str, Any]) -> list[str]:
    """The committed CRD's rules on the defaulted object, as a ≥1.25 API server runs them."""
    schema = spec_schema(kind)
    violations: list[str] = cel_violations(apply_defaults(spec, schema), schema)
    return violations


@pytest.mark.parametrize(("case", "kind", "patch"), VALID_CASES, ids=[c[0] for c in VALID_CASES])
def test_cel_accepts_valid_objects(case: str, kind: str, patch: dict[str, Any]) -> None:
    spec = patched(BASES[kind], patch)
    assert server_violations(kind, spec) == []
    validate_spec(SPEC_MODELS[kind], spec)


@pytest.mark.parametrize(
    ("case", "kind", "patch", "expected"), INVALID_CASES, ids=[c[0] for c in INVALID_CASES]
)
def test_cel_rejects_invalid_objects(
    case: str, kind: str, patch: dict[str, Any], expected: str
) -> None:
    spec = patched(BASES[kind], patch)
    # Pydantic alone must accept it: the case exercises a CEL rule, not a type or bound.
    SPEC_MODELS[kind].model_validate(spec)
    assert server_violations(kind, spec) == [expected]
    with pytest.raises(SpecError) as caught:
        validate_spec(SPEC_MODELS[kind], spec)
    assert str(caught.value) == expected


@pytest.mark.parametrize(
    "handoff",
    [
        {"fields": {"title": "headline"}},
        {"fields": {}},
        {"consoleTokensSecret": "Console_Tokens"},
        {"operation": "Create-Ticket"},
    ],
    ids=["unknown-handoff-value", "no-fields", "secret-name", "operation-name"],
)
def test_schema_rejects_invalid_handoff(handoff: dict[str, Any]) -> None:
    """Types and enums, not CEL: the API server's schema and the model both refuse them."""
    spec = patched(AGENT, {"handoff": handoff})
    assert list(OAS30Validator(spec_schema("SupportAgent")).iter_errors(spec))
    with pytest.raises(SpecError, match=r"spec\.handoff\."):
        validate_spec(SupportAgentSpec, spec)


def test_handoff_values_are_the_contracts() -> None:
    """The schema's enum of handoff values is the data plane's list, in its order."""
    fields = spec_schema("SupportAgent")["properties"]["handoff"]["properties"]["fields"]
    assert fields["additionalProperties"]["enum"] == list(HANDOFF_VALUES)
    every = {f"f{i}": value for i, value in enumerate(HANDOFF_VALUES)}
    validate_spec(SupportAgentSpec, patched(AGENT, {"handoff": {"fields": every}}))


@pytest.mark.parametrize("min_requests", [-1, 1_000_001])
def test_min_requests_is_bounded(min_requests: int) -> None:
    """`analysis.minRequests` is a count: the schema and the model hold it to 0..1,000,000."""
    patch = {
        **PROGRESSIVE,
        "progressive": {"steps": [50], "analysis": {"minRequests": min_requests}},
    }
    spec = patched(ROLLOUT, patch)
    assert list(OAS30Validator(spec_schema("ModelRollout")).iter_errors(spec))
    with pytest.raises(SpecError):
        validate_spec(ModelRolloutSpec, spec)


def test_cel_rejects_external_endpoint_fields_on_in_cluster_backends() -> None:
    """KNOWN BUG (operator/api/supportagent.py, LlmSpec, first CEL rule): its message promises
    that backends other than openai take neither endpoint nor apiKeySecretRef, but the rule
    `(backend == 'openai') == (has(endpoint) && has(apiKeySecretRef))` only rejects the two
    together: either one alone on an in-cluster backend is accepted and silently ignored."""
    expected = (
        "spec.llm: backend openai needs endpoint and apiKeySecretRef; other backends take none"
    )
    accepted = []
    for field, value in (("endpoint", "https://x.example"), ("apiKeySecretRef", KEY)):
        spec = patched(AGENT, {"llm": {"backend": "transformers", "modelUri": "file:///m"}})
        spec["llm"][field] = value
        if server_violations("SupportAgent", spec) != [expected]:
            accepted.append(field)
    assert not accepted, (
        f"backend transformers with only {' / only '.join(accepted)} set was accepted. Fix: make "
        "LlmSpec's first rule `self.backend == 'openai' ? (has(self.endpoint) && "
        "has(self.apiKeySecretRef)) : (!has(self.endpoint) && !has(self.apiKeySecretRef))`"
    )


def test_every_cel_rule_is_exercised() -> None:
    """Each rule in the CRDs is broken by at least one invalid case above."""
    expected_messages = {e.split(": ", 1)[1] for *_, e in INVALID_CASES}
    rule_messages = set()
    for kind in KINDS:
        for _, node in walk(root_schema(kind), kind):
            for entry in node.get("x-kubernetes-validations", ()):
                rule_messages.add(entry["message"])
    assert rule_messages - expected_messages == set()


@pytest.mark.parametrize(("example", "kind", "spec"), example_specs(), ids=lambda v: str(v)[:40])
def test_examples_are_valid(example: str, kind: str, spec: dict[str, Any]) -> None:
    validate_spec(SPEC_MODELS[kind], spec)
    assert server_violations(kind, spec) == []


def test_examples_cover_the_kinds_users_start_with() -> None:
    kinds = {kind for _, kind, _ in example_specs()}
    assert {"SupportAgent", "ToolAdapter"} <= kinds
