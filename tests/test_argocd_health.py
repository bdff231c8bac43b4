"""Argo CD health checks (charts/switchboard/argocd) and the GitOps example (examples/gitops).

The Lua runs as Argo CD runs it: Lua 5.1 (lupa's bundled Lua 5.1; Argo CD embeds gopher-lua, a
Lua 5.1), with only the libraries Argo CD loads for a health check from argocd-cm (base and
table: no string, math, io or debug), and `obj` decoded from the object's JSON. Each script is
read from argocd-cm.yaml, the snippet users apply, which must carry the .lua files' exact bytes
(`SWITCHBOARD_UPDATE_GOLDEN=1` rewrites its `data` from health.lua).

The statuses it judges come from two places:
- the operator itself: the real reconcilers (`reconcile` of each kind) over `InMemoryKube`, a
  stand-in for the API server that plays KubeRay and the Deployment controller, so a renamed
  reason, a new phase or a changed condition breaks these tests. It is the fast tier, there on
  purpose (dozens of scenarios, milliseconds each); the end of this file judges objects that the
  real operator reconciled on the real API server (envtest), and KubeRay's controller and a
  kubelet, which cannot run here, stay played there too;
- hand-written statuses for what a reconcile does not produce on its own: no status yet, a
  status older than the spec, reasons or phases of another operator version.

The Argo CD Applications are validated against the upstream Application CRD in the project's
shared folder (`../shared`, or `SWITCHBOARD_SHARED_DIR`; see ../shared/schemas/crds/SOURCES.md).
"""

from __future__ import annotations

import copy
import json
import os
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from functools import cache
from pathlib import Path
from textwrap import indent
from typing import Any, cast

import jsonschema
import kubernetes_validate
import pytest
import yaml
from lupa.lua51 import LuaRuntime, lua_type

from support.cluster import Cluster
from support.manifests import example_documents
from support.paths import EXAMPLES
from support.schemas import K8S_VERSIONS, Schemas
from switchboard.operator import prometheus
from switchboard.operator.api.base import API_VERSION
from switchboard.operator.indexes import Lookup
from switchboard.operator.kube import Kube
from switchboard.operator.resources import modelrollout, supportagent, tooladapter

REPO = Path(__file__).resolve().parents[1]
ARGOCD_DIR = REPO / "charts" / "switchboard" / "argocd"
CONFIGMAP = ARGOCD_DIR / "argocd-cm.yaml"
GITOPS = EXAMPLES / "gitops"
UPDATE_GOLDEN = os.environ.get("SWITCHBOARD_UPDATE_GOLDEN") == "1"

KINDS = ("SupportAgent", "ToolAdapter", "ModelRollout", "ModelTraining")
KEY_PREFIX = "resource.customizations.health.switchboard.dev_"
# What Argo CD accepts from a health script (gitops-engine's HealthStatusCode).
HEALTH_CODES = {"Healthy", "Progressing", "Degraded", "Suspended", "Missing", "Unknown"}
NAMESPACE = "support"
REPO_URL = "https://github.com/switchboard-dev/switchboard.git"


# --------------------------------------------------------------------------------------------
# Running the Lua as Argo CD does


def lua_file(kind: str) -> Path:
    """One script serves every kind (it dispatches on `obj.kind`); argocd-cm has it per key."""
    return ARGOCD_DIR / "health.lua"


def configmap() -> dict[str, Any]:
    doc: dict[str, Any] = yaml.safe_load(CONFIGMAP.read_text(encoding="utf-8"))
    return doc


@cache
def script(kind: str) -> str:
    """The health check of `kind` as users apply it: from argocd-cm.yaml."""
    text: str = configmap()["data"][KEY_PREFIX + kind]
    return text


def sandbox() -> LuaRuntime:
    """Lua 5.1 with what Argo CD opens for an argocd-cm script: base and table (and a safe `os`,
    which the scripts do not need). lupa opens every library, so the rest goes, strings' methods
    included (they are the string library, reached through the strings' metatable)."""
    lua = LuaRuntime(register_eval=False, register_builtins=False)
    lua.execute(
        """
        debug.setmetatable("", nil)
        for _, name in ipairs({"string", "math", "io", "os", "debug", "coroutine"}) do
          package.loaded[name] = nil
          _G[name] = nil
        end
        python = nil
        """
    )
    return lua


def to_lua(lua: LuaRuntime, value: Any) -> Any:
    """JSON → Lua as Argo CD decodes it: objects and arrays become tables (arrays 1-based),
    numbers are doubles, null is nil (the key is absent)."""
    if isinstance(value, Mapping):
        table = lua.table()
        for key, item in value.items():
            if item is not None:
                table[key] = to_lua(lua, item)
        return table
    if isinstance(value, list | tuple):
        table = lua.table()
        for index, item in enumerate(value, start=1):
            table[index] = to_lua(lua, item)
        return table
    if isinstance(value, bool | str):
        return value
    if isinstance(value, int | float):
        return float(value)
    raise TypeError(f"not JSON: {value!r}")


def run_lua(source: str, obj: Mapping[str, Any]) -> dict[str, str]:
    """Run a health script with global `obj`; its verdict, checked the way Argo CD reads it."""
    lua = sandbox()
    names_before = set(lua.globals())
    lua.globals().obj = to_lua(lua, json.loads(json.dumps(obj)))
    result = lua.execute(source)
    # Everything stays local: a stray global would be a typo waiting to read nil.
    assert set(lua.globals()) == names_before | {"obj"}
    assert lua_type(result) == "table", f"the script returned {result!r}, not a table"
    verdict = {str(k): v for k, v in result.items()}
    assert set(verdict) == {"status", "message"}, verdict
    assert all(isinstance(v, str) and v for v in verdict.values()), verdict
    assert verdict["status"] in HEALTH_CODES
    return verdict


def health(kind: str, status: Mapping[str, Any] | None, generation: int = 1) -> dict[str, str]:
    """The verdict of argocd-cm's script for a `kind` object with `status`."""
    obj: dict[str, Any] = {
        "apiVersion": API_VERSION,
        "kind": kind,
        "metadata": {"name": "acme", "namespace": NAMESPACE, "generation": generation},
        "spec": {},
    }
    if status is not None:
        obj["status"] = status
    return run_lua(script(kind), obj)


def health_of(obj: Mapping[str, Any]) -> dict[str, str]:
    return run_lua(script(str(obj["kind"])), obj)


# --------------------------------------------------------------------------------------------
# ModelTraining: statuses the operator builds (training_checks + build_status)


def training_status(result: str | None, running: bool = False) -> dict[str, Any]:
    from switchboard.operator.api.modeltraining import RunRecord
    from switchboard.operator.resources.common import build_status
    from switchboard.operator.resources.modeltraining import training_checks

    def record(outcome: str) -> RunRecord:
        return RunRecord(name="r", trigger="schedule", started_at="t", result=outcome,
                         message=f"run r: {outcome}")  # fmt: skip

    body = {"metadata": {"generation": 1}, "status": {}}
    checks, phase = training_checks(
        record("Running") if running else None, record(result) if result else None, None
    )
    return build_status(body, checks, phase, {})


@pytest.mark.parametrize(
    ("result", "running", "verdict"),
    [
        (None, False, "Healthy"),
        (None, True, "Healthy"),
        ("Passed", False, "Healthy"),
        ("Refused", False, "Healthy"),
        ("Refused", True, "Healthy"),
        ("Failed", False, "Degraded"),
        ("BadData", False, "Degraded"),
    ],
)
def test_modeltraining_health_like_a_cronjob(
    result: str | None, running: bool, verdict: str
) -> None:
    """Waiting, running, and a refused candidate are normal work; a failed run needs a human."""
    status = training_status(result, running)
    got = health("ModelTraining", status)
    assert got["status"] == verdict, got
    if result and not running:
        assert f"run r: {result}" in got["message"]


def test_modeltraining_without_status_waits_for_the_operator() -> None:
    assert health("ModelTraining", None)["status"] == "Progressing"


# --------------------------------------------------------------------------------------------
# The operator without an API server


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386, as the API server applies the operator's status patches."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    out = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            out.pop(key, None)
        else:
            out[key] = merge_patch(out.get(key), value)
    return out


ChildStatus = Callable[[dict[str, Any]], dict[str, Any] | None]


def rayservice_status(app_status: str | None) -> ChildStatus:
    """What KubeRay 1.x reports for a RayService: nothing before it has seen it (None), else
    every Serve application of serveConfigV2 in `app_status`, Ready once they all run."""

    def status(rs: dict[str, Any]) -> dict[str, Any] | None:
        if app_status is None:
            return None
        config = yaml.safe_load(rs["spec"]["serveConfigV2"])
        running = app_status == "RUNNING"
        return {
            "observedGeneration": rs["metadata"]["generation"],
            "serviceStatus": "Running" if running else "",
            "conditions": [
                {
                    "type": "Ready",
                    "status": "True" if running else "False",
                    "reason": "NonZeroServeEndpoints" if running else "Initializing",
                    "message": "",
                }
            ],
            "activeServiceStatus": {
                "applicationStatuses": {
                    app["name"]: {"status": app_status} for app in config["applications"]
                }
            },
        }

    return status


def deployment_status(available: int, updated: int | None = None, seen: bool = True) -> ChildStatus:
    """What the Deployment controller reports; `seen=False`: not yet observed the template."""

    def status(deployment: dict[str, Any]) -> dict[str, Any] | None:
        if not seen:
            return {}
        return {
            "observedGeneration": deployment["metadata"]["generation"],
            "replicas": max(available, 2),
            "updatedReplicas": available if updated is None else updated,
            "availableReplicas": available,
        }

    return status


SERVING = rayservice_status("RUNNING")
AVAILABLE = deployment_status(2)


class InMemoryKube:
    """Just enough of `switchboard.operator.kube.Kube` for the reconcilers: objects in a dict,
    server-side apply that hands back each child with the status its controller would report
    (`children`: kind → ChildStatus), status merge patches, and generations that move with the
    spec."""

    def __init__(self, docs: list[dict[str, Any]], children: dict[str, ChildStatus]) -> None:
        self.objects: dict[tuple[str, str], dict[str, Any]] = {}
        self.children = children
        for doc in docs:
            self.add(doc)

    def add(self, doc: dict[str, Any]) -> None:
        obj = copy.deepcopy(doc)
        meta = obj["metadata"]
        meta.setdefault("namespace", NAMESPACE)
        meta.setdefault("generation", 1)
        meta.setdefault("uid", f"uid-{obj['kind']}-{meta['name']}")
        meta.setdefault("creationTimestamp", "2026-11-22T00:00:00Z")
        self.objects[(obj["kind"], meta["name"])] = obj

    def remove(self, kind: str, name: str) -> None:
        del self.objects[(kind, name)]

    def edit_spec(self, kind: str, name: str, change: Callable[[dict[str, Any]], None]) -> None:
        """A user's edit: the spec changes and the generation moves, the status stays."""
        obj = self.objects[(kind, name)]
        change(obj["spec"])
        obj["metadata"]["generation"] += 1

    # The reads and writes of Kube that the reconcilers use.

    def get(self, api_version: str, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
        obj = self.objects.get((kind, name))
        return copy.deepcopy(obj) if obj is not None else None

    def exists(self, api_version: str, kind: str, namespace: str, name: str) -> bool:
        return (kind, name) in self.objects

    def list_objects(self, api_version: str, kind: str, namespace: str) -> list[dict[str, Any]]:
        return [copy.deepcopy(o) for (k, _), o in sorted(self.objects.items()) if k == kind]

    def apply(self, obj: dict[str, Any]) -> dict[str, Any]:
        live = copy.deepcopy(obj)
        live["metadata"].setdefault("generation", 1)
        report = self.children.get(live["kind"])
        status = report(live) if report else None
        if status is not None:
            live["status"] = status
        self.objects[(live["kind"], live["metadata"]["name"])] = live
        return copy.deepcopy(live)

    def patch_status(
        self, api_version: str, kind: str, namespace: str, name: str, status: dict[str, Any]
    ) -> dict[str, Any]:
        obj = self.objects[(kind, name)]
        obj["status"] = merge_patch(obj.get("status") or {}, status)
        return copy.deepcopy(obj)

    def hpa_api_version(self) -> str:
        return "autoscaling/v2"

    def served_versions(self, group: str) -> list[str]:
        return []  # no Istio here

    def lookup(self) -> Lookup:
        """What the operator's indexes would hold of these objects."""
        return Lookup.of(copy.deepcopy(list(self.objects.values())))


def record_nothing(body: dict[str, Any], *, type: str, reason: str, message: str) -> None:
    """Events are the reconcilers' business, not the health checks'."""


def reconcile(kube: InMemoryKube, kind: str, name: str) -> dict[str, Any]:
    """One reconcile of a SupportAgent or ToolAdapter; the object as the API server then has it."""
    body = kube.get(API_VERSION, kind, NAMESPACE, name)
    assert body is not None
    if kind == "SupportAgent":
        supportagent.reconcile(cast(Kube, kube), body, record_nothing, kube.lookup())
    else:
        tooladapter.reconcile(cast(Kube, kube), body, record_nothing)
    found = kube.get(API_VERSION, kind, NAMESPACE, name)
    assert found is not None
    return found


def quickstart(children: dict[str, ChildStatus]) -> InMemoryKube:
    """examples/quickstart in memory, its ToolAdapters reconciled once."""
    kube = InMemoryKube(example_documents("quickstart"), children)
    for adapter in ("orders", "ticketing"):
        reconcile(kube, "ToolAdapter", adapter)
    return kube


# --------------------------------------------------------------------------------------------
# The sandbox itself


def test_the_sandbox_has_only_what_argo_cd_loads() -> None:
    lua = sandbox()
    assert lua.eval("string == nil and math == nil and io == nil and debug == nil")
    assert lua.eval("type(ipairs) == 'function' and type(table.insert) == 'function'")
    assert lua.eval("_VERSION") == "Lua 5.1"
    with pytest.raises(Exception, match="index a string value"):
        lua.execute("return ('x'):upper()")


def test_objects_reach_lua_as_argo_cd_decodes_them() -> None:
    lua = sandbox()
    lua.globals().obj = to_lua(lua, {"status": {"conditions": [{"type": "Ready"}], "x": None}})
    assert lua.eval("obj.status.conditions[1].type") == "Ready"
    assert lua.eval("#obj.status.conditions") == 1
    assert lua.eval("obj.status.x == nil")


# --------------------------------------------------------------------------------------------
# argocd-cm.yaml: what users apply


def configmap_text(current: str) -> str:
    """argocd-cm.yaml with its `data` rebuilt from the .lua files (comments and metadata kept)."""
    head, sep, _ = current.partition("\ndata:\n")
    assert sep, "argocd-cm.yaml has no top-level `data:`"
    data = "".join(
        f"  {KEY_PREFIX}{kind}: |\n" + indent(lua_file(kind).read_text(encoding="utf-8"), "    ")
        for kind in KINDS
    )
    return f"{head}\ndata:\n{data}"


def test_configmap_carries_the_lua_files_byte_for_byte() -> None:
    current = CONFIGMAP.read_text(encoding="utf-8")
    expected = configmap_text(current)
    if UPDATE_GOLDEN and current != expected:
        CONFIGMAP.write_text(expected, encoding="utf-8")
        script.cache_clear()
        current = expected
    data = configmap()["data"]
    assert set(data) == {KEY_PREFIX + kind for kind in KINDS}
    for kind in KINDS:
        assert data[KEY_PREFIX + kind] == lua_file(kind).read_text(encoding="utf-8"), (
            f"argocd-cm.yaml differs from {lua_file(kind).name}: "
            "SWITCHBOARD_UPDATE_GOLDEN=1 pytest tests/test_argocd_health.py"
        )
    assert current == expected


@pytest.mark.parametrize("kind", KINDS)
def test_lua_files_give_the_configmaps_verdicts(kind: str) -> None:
    obj = {"kind": kind, "metadata": {"generation": 1}, "status": {"observedGeneration": 1}}
    source = lua_file(kind).read_text(encoding="utf-8")
    assert run_lua(source, obj) == run_lua(script(kind), obj)


def test_another_kind_is_unknown_not_healthy() -> None:
    obj = {"kind": "Other", "metadata": {"generation": 1}, "status": {"observedGeneration": 1}}
    assert run_lua(lua_file("Other").read_text(encoding="utf-8"), obj)["status"] == "Unknown"


@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_configmap_is_a_valid_argocd_cm(version: str) -> None:
    doc = configmap()
    kubernetes_validate.validate(doc, version, strict=True)
    assert (doc["apiVersion"], doc["kind"]) == ("v1", "ConfigMap")
    assert doc["metadata"]["name"] == "argocd-cm"
    assert doc["metadata"]["namespace"] == "argocd"
    assert doc["metadata"]["labels"]["app.kubernetes.io/part-of"] == "argocd"


# --------------------------------------------------------------------------------------------
# SupportAgent and ToolAdapter: statuses the operator writes


def add_redis_sessions(kube: InMemoryKube) -> None:
    kube.edit_spec(
        "SupportAgent",
        "acme",
        lambda spec: spec.update(
            sessions={
                "store": "redis",
                "redis": {"urlSecretRef": {"name": "acme-redis", "key": "url"}},
            }
        ),
    )


def grant_unknown_operation(kube: InMemoryKube) -> None:
    kube.edit_spec(
        "SupportAgent", "acme", lambda spec: spec["tools"][0]["operations"].append("cancel_all")
    )


def map_unknown_handoff_field(kube: InMemoryKube) -> None:
    """The quickstart's create_ticket takes subject, body and priority: not `summary`."""
    kube.edit_spec(
        "SupportAgent", "acme", lambda spec: spec["handoff"]["fields"].update(summary="transcript")
    )


def break_agent_spec(kube: InMemoryKube) -> None:
    kube.edit_spec("SupportAgent", "acme", lambda spec: spec["nlu"].update(modelUri="ftp://x"))


def start_canary(kube: InMemoryKube) -> None:
    """examples/rollout's ModelRollout, reconciled once: its first step, 10%."""
    kube.add(example_documents("rollout")[0])
    rollout = drive_rollout(kube, "acme-nlu-v2", [Tick(0)])
    assert rollout["status"]["currentWeight"] == 10


@dataclass(frozen=True)
class Scenario:
    """What exists and what the children's controllers report; the health Argo CD should show
    and the reason its message names."""

    id: str
    health: str
    reason: str
    children: dict[str, ChildStatus] = field(
        default_factory=lambda: {"RayService": SERVING, "Deployment": AVAILABLE}
    )
    change: Callable[[InMemoryKube], None] = lambda kube: None


AGENT_SCENARIOS = [
    Scenario("serving", "Healthy", "All parts are ready"),
    Scenario(
        "kuberay-not-reported-yet",
        "Progressing",
        "RayServiceDeploying",
        {"RayService": rayservice_status(None), "Deployment": AVAILABLE},
    ),
    Scenario(
        "serve-apps-deploying",
        "Progressing",
        "RayServiceDeploying",
        {"RayService": rayservice_status("DEPLOYING"), "Deployment": AVAILABLE},
    ),
    Scenario(
        "serve-app-failed",
        "Degraded",
        "ServeApplicationFailed",
        {"RayService": rayservice_status("DEPLOY_FAILED"), "Deployment": AVAILABLE},
    ),
    Scenario(
        "tooladapters-starting",
        "Progressing",
        "ToolAdapterNotReady",
        {"RayService": SERVING, "Deployment": deployment_status(0)},
    ),
    Scenario(
        "tooladapter-missing",
        "Degraded",
        "ToolAdapterNotFound",
        change=lambda kube: kube.remove("ToolAdapter", "ticketing"),
    ),
    Scenario("unknown-operation", "Degraded", "UnknownOperation", change=grant_unknown_operation),
    Scenario(
        "configmap-missing",
        "Degraded",
        "ConfigMapNotFound",
        change=lambda kube: kube.remove("ConfigMap", "acme-kb"),
    ),
    Scenario("secret-missing", "Degraded", "SecretNotFound", change=add_redis_sessions),
    Scenario(
        "console-tokens-missing",
        "Degraded",
        "SecretNotFound",
        change=lambda kube: kube.remove("Secret", "acme-console-tokens"),
    ),
    Scenario(
        "handoff-field-unknown", "Degraded", "HandoffFieldUnknown", change=map_unknown_handoff_field
    ),
    Scenario("invalid-spec", "Degraded", "InvalidSpec", change=break_agent_spec),
    Scenario("canary", "Healthy", "ModelRollout acme-nlu-v2 sends 10% to", change=start_canary),
]

ADAPTER_SCENARIOS = [
    Scenario("available", "Healthy", "All parts are ready; 2 gateway replica(s) available"),
    Scenario(
        "template-not-observed",
        "Progressing",
        "GatewayRollingOut",
        {"Deployment": deployment_status(0, seen=False)},
    ),
    Scenario("starting", "Progressing", "GatewayStarting", {"Deployment": deployment_status(0)}),
    Scenario(
        "rolling-out", "Progressing", "GatewayRollingOut", {"Deployment": deployment_status(2, 1)}
    ),
    Scenario(
        "under-replicated",
        "Degraded",
        "GatewayUnderReplicated",
        {"Deployment": deployment_status(1)},
    ),
    Scenario(
        "secret-missing",
        "Degraded",
        "SecretNotFound",
        change=lambda kube: kube.remove("Secret", "orders-api-credentials"),
    ),
    Scenario(
        "invalid-spec",
        "Degraded",
        "InvalidSpec",
        change=lambda kube: kube.edit_spec(
            "ToolAdapter", "orders", lambda spec: spec.update(baseURL="not a url")
        ),
    ),
]


def agent_after(scenario: Scenario) -> dict[str, Any]:
    kube = quickstart(scenario.children)
    scenario.change(kube)
    return reconcile(kube, "SupportAgent", "acme")


def adapter_after(scenario: Scenario) -> dict[str, Any]:
    kube = InMemoryKube(example_documents("quickstart"), scenario.children)
    scenario.change(kube)
    return reconcile(kube, "ToolAdapter", "orders")


def operator_statuses() -> Iterator[tuple[str, dict[str, Any]]]:
    for scenario in AGENT_SCENARIOS:
        yield f"SupportAgent-{scenario.id}", agent_after(scenario)
    for scenario in ADAPTER_SCENARIOS:
        yield f"ToolAdapter-{scenario.id}", adapter_after(scenario)


@pytest.mark.parametrize(
    ("kind", "scenario"),
    [("SupportAgent", s) for s in AGENT_SCENARIOS]
    + [("ToolAdapter", s) for s in ADAPTER_SCENARIOS],
    ids=lambda v: v if isinstance(v, str) else v.id,
)
def test_health_from_the_operators_status(kind: str, scenario: Scenario) -> None:
    obj = (agent_after if kind == "SupportAgent" else adapter_after)(scenario)
    verdict = health_of(obj)
    assert verdict["status"] == scenario.health, (verdict, obj["status"])
    assert scenario.reason in verdict["message"]
    # The message carries the operator's own words from `Ready`, for SREs in the Argo CD UI.
    ready = next(c for c in obj["status"]["conditions"] if c["type"] == "Ready")
    assert ready["message"] in verdict["message"]


Event = tuple[str, str, str]


def reconcile_recording(kube: InMemoryKube) -> tuple[dict[str, Any], list[Event]]:
    """One reconcile of the quickstart agent: the agent after it, and the Events it posted."""
    events: list[Event] = []

    def record(body: dict[str, Any], *, type: str, reason: str, message: str) -> None:
        events.append((type, reason, message))

    body = kube.get(API_VERSION, "SupportAgent", NAMESPACE, "acme")
    assert body is not None
    supportagent.reconcile(cast(Kube, kube), body, record, kube.lookup())
    found = kube.get(API_VERSION, "SupportAgent", NAMESPACE, "acme")
    assert found is not None
    return found, events


def conditions_of(obj: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {c["type"]: c for c in obj["status"]["conditions"]}


def rename_ticket_operation(kube: InMemoryKube) -> None:
    def rename(spec: dict[str, Any]) -> None:
        spec["operations"][0]["name"] = "open_ticket"

    kube.edit_spec("ToolAdapter", "ticketing", rename)


def drop_ticket_adapter(kube: InMemoryKube) -> None:
    kube.edit_spec("SupportAgent", "acme", lambda spec: spec["handoff"].pop("adapter"))


@pytest.mark.parametrize(
    ("change", "ready_reason", "handoff_reason", "fragment"),
    [
        (
            map_unknown_handoff_field,
            "HandoffFieldUnknown",
            "HandoffFieldUnknown",
            "spec.handoff.fields fills summary, which operation ticketing.create_ticket does not "
            "take (its inputs: body, priority, subject)",
        ),
        (
            lambda kube: kube.remove("ToolAdapter", "ticketing"),
            "ToolAdapterNotFound",
            "HandoffAdapterMissing",
            "spec.handoff.adapter names ToolAdapter support/ticketing, which does not exist",
        ),
        (
            rename_ticket_operation,
            "UnknownOperation",
            "HandoffOperationUnknown",
            "ToolAdapter support/ticketing declares no operation create_ticket "
            "(spec.handoff.operation; it has get_ticket, open_ticket)",
        ),
        (
            lambda kube: kube.remove("Secret", "acme-console-tokens"),
            "SecretNotFound",
            "SecretNotFound",
            "Secret support/acme-console-tokens (spec.handoff.consoleTokensSecret) does not exist",
        ),
    ],
    ids=["field-unknown", "adapter-missing", "operation-unknown", "console-tokens-missing"],
)
def test_a_broken_handoff_is_conditioned_warned_and_leaves_the_agent_running(
    change: Callable[[InMemoryKube], None], ready_reason: str, handoff_reason: str, fragment: str
) -> None:
    """`HandoffReady` says what is wrong with `spec.handoff`, a Warning Event says it once,
    and as for any reference that does not resolve the agent is Failed and what runs stays."""
    kube = quickstart({"RayService": SERVING, "Deployment": AVAILABLE})
    serving, events = reconcile_recording(kube)
    handoff = conditions_of(serving)["HandoffReady"]
    assert (handoff["status"], handoff["reason"]) == ("True", "TicketAdapterResolved")
    assert "ticketing.create_ticket" in handoff["message"]
    assert "Secret support/acme-console-tokens" in handoff["message"]
    assert [e[:2] for e in events] == [("Normal", "Ready")]
    running = kube.get("ray.io/v1", "RayService", NAMESPACE, "acme")

    change(kube)
    broken, events = reconcile_recording(kube)
    conditions = conditions_of(broken)
    assert broken["status"]["phase"] == "Failed"
    assert (conditions["Ready"]["status"], conditions["Ready"]["reason"]) == ("False", ready_reason)
    handoff = conditions["HandoffReady"]
    assert (handoff["status"], handoff["reason"]) == ("False", handoff_reason)
    assert fragment in handoff["message"]
    warnings = [e for e in events if e[0] == "Warning"]
    assert ("Warning", handoff_reason, handoff["message"]) in warnings
    # Ready's own Warning and the advisory one are posted once each, never twice alike.
    assert len(warnings) == len(set(warnings)) == (1 if ready_reason == handoff_reason else 2)
    assert kube.get("ray.io/v1", "RayService", NAMESPACE, "acme") == running

    again, events = reconcile_recording(kube)
    assert events == [] and again["status"] == broken["status"]


def test_handoffs_without_a_ticket_adapter_are_console_only() -> None:
    kube = quickstart({"RayService": SERVING, "Deployment": AVAILABLE})
    drop_ticket_adapter(kube)
    agent, events = reconcile_recording(kube)
    handoff = conditions_of(agent)["HandoffReady"]
    assert (handoff["status"], handoff["reason"]) == ("True", "ConsoleOnly")
    assert agent["status"]["phase"] == "Ready"
    assert [e[0] for e in events] == ["Normal"]


def test_without_phase_the_reasons_give_the_same_verdict() -> None:
    """The scripts' own lists of progressing reasons (used when `phase` is missing, e.g. a status
    from another operator version) agree with the operator on every reason it writes."""
    for name, obj in operator_statuses():
        phaseless = copy.deepcopy(obj)
        del phaseless["status"]["phase"]
        assert health_of(phaseless)["status"] == health_of(obj)["status"], name


@pytest.mark.parametrize(
    ("kind", "reason"),
    [("SupportAgent", r) for r in sorted(supportagent.PROGRESSING_REASONS)]
    + [("ToolAdapter", r) for r in sorted(tooladapter.PROGRESSING_REASONS)],
)
def test_every_progressing_reason_of_the_operator_is_progress(kind: str, reason: str) -> None:
    status = {
        "observedGeneration": 1,
        "conditions": [{"type": "Ready", "status": "False", "reason": reason, "message": "m"}],
    }
    assert health(kind, status) == {"status": "Progressing", "message": f"{reason}: m"}


# --------------------------------------------------------------------------------------------
# SupportAgent and ToolAdapter: hand-written statuses


def ready(status: str, reason: str, message: str = "", type_: str = "Ready") -> dict[str, Any]:
    return {"type": type_, "status": status, "reason": reason, "message": message}


COMMON_CASES: list[tuple[str, dict[str, Any] | None, int, str, str]] = [
    # (id, status, metadata.generation, health, message)
    ("no-status", None, 1, "Progressing", "Waiting for the operator to report status"),
    ("empty-status", {}, 1, "Progressing", "Waiting for the operator to report status"),
    (
        "status-of-an-older-spec",
        {"observedGeneration": 2, "phase": "Ready", "conditions": [ready("True", "Ready", "ok")]},
        3,
        "Progressing",
        "Waiting for the operator to observe generation 3",
    ),
    (
        "conditions-without-observed-generation",
        {"conditions": [ready("True", "Ready", "ok")]},
        1,
        "Progressing",
        "Waiting for the operator to observe generation 1",
    ),
    (
        "no-ready-condition",
        {"observedGeneration": 1, "phase": "Progressing", "conditions": []},
        1,
        "Progressing",
        "Waiting for the operator to report the Ready condition",
    ),
    (
        "failed",
        {
            "observedGeneration": 4,
            "phase": "Failed",
            "conditions": [ready("False", "InvalidSpec", "spec.nlu: bad")],
        },
        4,
        "Degraded",
        "InvalidSpec: spec.nlu: bad",
    ),
    (
        "degraded-names-the-broken-part",
        {
            "observedGeneration": 1,
            "phase": "Degraded",
            "conditions": [
                ready("False", "Waiting", "part A on its way"),
                ready("True", "Broken", "part B broken", type_="Degraded"),
            ],
        },
        1,
        "Degraded",
        "Waiting: part A on its way; Broken: part B broken",
    ),
    (
        "unknown-reason-without-phase",
        {"observedGeneration": 1, "conditions": [ready("False", "SomethingNew", "m")]},
        1,
        "Degraded",
        "SomethingNew: m",
    ),
    (
        "unknown-reason-while-progressing",
        {
            "observedGeneration": 1,
            "phase": "Progressing",
            "conditions": [ready("False", "SomethingNew", "m")],
        },
        1,
        "Progressing",
        "SomethingNew: m",
    ),
    (
        "ready-unknown",
        {"observedGeneration": 1, "conditions": [ready("Unknown", "Checking", "m")]},
        1,
        "Progressing",
        "Checking: m",
    ),
    (
        "reason-without-message",
        {"observedGeneration": 1, "phase": "Failed", "conditions": [ready("False", "X")]},
        1,
        "Degraded",
        "X",
    ),
]


@pytest.mark.parametrize("kind", ["SupportAgent", "ToolAdapter"])
@pytest.mark.parametrize(
    ("status", "generation", "expected", "message"),
    [case[1:] for case in COMMON_CASES],
    ids=[case[0] for case in COMMON_CASES],
)
def test_supportagent_and_tooladapter_hand_written(
    kind: str, status: dict[str, Any] | None, generation: int, expected: str, message: str
) -> None:
    assert health(kind, status, generation) == {"status": expected, "message": message}


def test_supportagent_healthy_message_is_ready_and_the_traffic_split() -> None:
    status = {
        "observedGeneration": 1,
        "phase": "Ready",
        "conditions": [ready("True", "Ready", "All parts are ready")],
        "rollout": "acme-llm-v3",
        "traffic": [
            {"revision": "aaaa1111", "percent": 75, "tag": "stable"},
            {"revision": "bbbb2222", "percent": 25, "tag": "candidate"},
        ],
    }
    assert health("SupportAgent", status)["message"] == (
        "All parts are ready; ModelRollout acme-llm-v3 sends 25% to revision bbbb2222"
    )


# --------------------------------------------------------------------------------------------
# ModelRollout: statuses the operator writes, driven through time


T0 = datetime(2026, 11, 22, 12, 0, tzinfo=UTC)
PROMETHEUS = "http://prometheus.monitoring:9090"


@dataclass(frozen=True)
class Tick:
    """At `at` seconds: `change` the world (a user's edit), Prometheus answers `error_rate`
    for the one analysis metric and `requests` for the candidate's traffic during the step,
    and the operator reconciles the rollout."""

    at: float
    error_rate: float | None = None
    change: Callable[[InMemoryKube], None] | None = None
    requests: float | None = 1000.0


def drive_rollout(
    kube: InMemoryKube, name: str, ticks: list[Tick], prometheus_url: str | None = PROMETHEUS
) -> dict[str, Any]:
    """Reconcile the ModelRollout at each tick; the object afterwards."""
    answer: dict[str, float | None] = {"value": None, "requests": None}
    clock = {"now": T0}
    context = modelrollout.RolloutContext(prometheus_url, clock=lambda: clock["now"])
    original = prometheus.query

    def query(base_url: str, promql: str, timeout: float = 10.0) -> float | None:
        assert base_url == prometheus_url
        return answer["requests" if promql.startswith("sum(increase(") else "value"]

    prometheus.query = query  # the reconciler imports it at call time
    try:
        for tick in ticks:
            if tick.change is not None:
                tick.change(kube)
            answer["value"], answer["requests"] = tick.error_rate, tick.requests
            clock["now"] = T0 + timedelta(seconds=tick.at)
            body = kube.get(API_VERSION, "ModelRollout", NAMESPACE, name)
            assert body is not None
            modelrollout.reconcile(cast(Kube, kube), body, record_nothing, kube.lookup(), context)
    finally:
        prometheus.query = original
    found = kube.get(API_VERSION, "ModelRollout", NAMESPACE, name)
    assert found is not None
    return found


def rollout_world(**spec: Any) -> InMemoryKube:
    """The quickstart agent and examples/rollout's ModelRollout, analysed on one metric
    (error rate at most 2%), with `spec` merged in (None removes a field)."""
    doc = copy.deepcopy(example_documents("rollout")[0])
    doc["spec"]["progressive"]["analysis"]["metrics"] = [
        {"name": "errors", "builtin": "errorRate", "thresholdRange": {"max": 0.02}}
    ]
    doc["spec"] = merge_patch(doc["spec"], spec)
    return InMemoryKube([*example_documents("quickstart"), doc], {})


def set_rollout(**changes: Any) -> Callable[[InMemoryKube], None]:
    """A user's edit of the rollout's spec (None removes a field)."""

    def edit(spec: dict[str, Any]) -> None:
        merged = merge_patch(spec, changes)
        spec.clear()
        spec.update(merged)

    return lambda kube: kube.edit_spec("ModelRollout", "acme-nlu-v2", edit)


def commit_candidate(kube: InMemoryKube) -> None:
    """The Git flow's first step: the SupportAgent now names the candidate model."""
    kube.edit_spec(
        "SupportAgent", "acme", lambda s: s["nlu"].update(modelUri="file:///models/nlu/acme-v2")
    )


GOOD, BAD = 0.001, 0.5
STEPS = [Tick(0), Tick(300, GOOD), Tick(600, GOOD), Tick(900, GOOD), Tick(1200, GOOD)]
MANUAL: dict[str, Any] = {"progressive": None}


@dataclass(frozen=True)
class RolloutScenario:
    id: str
    ticks: list[Tick]
    health: str
    reason: str
    spec: dict[str, Any] = field(default_factory=dict)
    prometheus_url: str | None = PROMETHEUS


ROLLOUT_SCENARIOS = [
    RolloutScenario("first-step", [Tick(0)], "Progressing", "StepStarted: Step 1/4: 10%"),
    RolloutScenario("next-step", STEPS[:2], "Progressing", "StepStarted: Step 2/4: 25%"),
    RolloutScenario(
        "no-traffic-yet",
        [Tick(0), Tick(300, GOOD, requests=None)],
        "Progressing",
        "NotEnoughTraffic: Holding at 10%: the candidate served 0 request(s)",
    ),
    RolloutScenario(
        "too-little-traffic",
        [Tick(0), Tick(300, GOOD, requests=4)],
        "Progressing",
        "NotEnoughTraffic: Holding at 10%: the candidate served 4 request(s)",
    ),
    RolloutScenario("no-data", [Tick(0), Tick(300)], "Progressing", "WaitingForData"),
    RolloutScenario(
        "analysis-failed-within-limit", [Tick(0), Tick(300, BAD)], "Progressing", "AnalysisFailed"
    ),
    RolloutScenario(
        "rolled-back-on-analysis",
        [Tick(0), Tick(300, BAD), Tick(600, BAD), Tick(900, BAD)],
        "Degraded",
        "AnalysisFailed: Rolled back",
    ),
    RolloutScenario(
        "rolled-back-on-deadline",
        [Tick(0), Tick(7201)],
        "Degraded",
        "ProgressDeadlineExceeded: Rolled back",
    ),
    RolloutScenario("paused-from-the-start", [Tick(0)], "Suspended", "Paused", {"paused": True}),
    RolloutScenario(
        "paused-mid-way",
        [*STEPS[:2], Tick(400, change=set_rollout(paused=True))],
        "Suspended",
        "Paused: Holding at 25%",
    ),
    RolloutScenario(
        "resumed",
        [
            *STEPS[:2],
            Tick(400, change=set_rollout(paused=True)),
            Tick(500, change=set_rollout(paused=False)),
        ],
        "Progressing",
        "Resumed",
    ),
    RolloutScenario(
        "succeeded",
        STEPS,
        "Healthy",
        "Succeeded: Every step passed; the candidate serves all traffic; to finish, commit",
    ),
    RolloutScenario(
        "promoted-through-git",
        [*STEPS, Tick(1300, change=commit_candidate)],
        "Healthy",
        "Promoted: SupportAgent support/acme now runs revision",
    ),
    RolloutScenario(
        "manual-split",
        [Tick(0), Tick(3600)],
        "Healthy",
        "ManualWeight: Candidate receives 30% of traffic",
        {**MANUAL, "weight": 30},
    ),
    RolloutScenario("manual-full", [Tick(0)], "Healthy", "ManualWeight", {**MANUAL, "weight": 100}),
    RolloutScenario(
        "manual-paused",
        [Tick(0)],
        "Suspended",
        "ManualWeight",
        {**MANUAL, "weight": 30, "paused": True},
    ),
    RolloutScenario(
        "no-prometheus",
        [Tick(0), Tick(300)],
        "Degraded",
        "PrometheusUnavailable: no Prometheus URL",
        prometheus_url=None,
    ),
    RolloutScenario(
        "agent-missing", [Tick(0)], "Degraded", "AgentNotFound", {"agentRef": "nobody"}
    ),
    RolloutScenario(
        "agent-deleted-mid-way",
        [*STEPS[:2], Tick(400, change=lambda kube: kube.remove("SupportAgent", "acme"))],
        "Degraded",
        "AgentNotFound",
    ),
    RolloutScenario(
        "component-missing", [Tick(0)], "Degraded", "ComponentNotFound", {"component": "llm"}
    ),
    RolloutScenario(
        "invalid-spec",
        [Tick(0)],
        "Degraded",
        "InvalidSpec",
        {"progressive": {"steps": [50, 10]}},
    ),
]


def rollout_after(scenario: RolloutScenario) -> dict[str, Any]:
    kube = rollout_world(**scenario.spec)
    return drive_rollout(kube, "acme-nlu-v2", scenario.ticks, scenario.prometheus_url)


@pytest.mark.parametrize("scenario", ROLLOUT_SCENARIOS, ids=lambda s: s.id)
def test_modelrollout_health_from_the_operators_status(scenario: RolloutScenario) -> None:
    rollout = rollout_after(scenario)
    verdict = health_of(rollout)
    assert verdict["status"] == scenario.health, (verdict, rollout["status"])
    assert scenario.reason in verdict["message"], verdict
    ready_condition = next(c for c in rollout["status"]["conditions"] if c["type"] == "Ready")
    assert ready_condition["message"] in verdict["message"]


def test_modelrollout_failed_on_references_rewrites_every_condition() -> None:
    """When the agent goes away mid-way, all three summary conditions say so (none is left
    from the last step) and the health is Degraded."""
    rollout = rollout_after(next(s for s in ROLLOUT_SCENARIOS if s.id == "agent-deleted-mid-way"))
    conditions = {c["type"]: c for c in rollout["status"]["conditions"]}
    assert rollout["status"]["phase"] == "Failed"
    assert {t: (c["status"], c["reason"]) for t, c in conditions.items()} == {
        "Ready": ("False", "AgentNotFound"),
        "Progressing": ("False", "AgentNotFound"),
        "Degraded": ("True", "AgentNotFound"),
    }
    assert health_of(rollout)["status"] == "Degraded"


def test_a_manual_split_is_holding_not_progressing() -> None:
    """A manual weight below 100 is where the spec wants the rollout to stay: phase Holding,
    no condition claims progress, and Argo CD calls it Healthy (Progressing would spin the
    Application forever, Suspended would keep `argocd app wait --health` waiting)."""
    rollout = rollout_after(next(s for s in ROLLOUT_SCENARIOS if s.id == "manual-split"))
    assert (rollout["status"]["phase"], rollout["status"]["currentWeight"]) == ("Holding", 30)
    conditions = {c["type"]: (c["status"], c["reason"]) for c in rollout["status"]["conditions"]}
    assert conditions == {
        "Ready": ("False", "ManualWeight"),
        "Progressing": ("False", "ManualWeight"),
        "Degraded": ("False", "ManualWeight"),
    }


def test_a_spec_edit_is_progressing_until_the_operator_sees_it() -> None:
    kube = rollout_world()
    drive_rollout(kube, "acme-nlu-v2", STEPS[:2])
    set_rollout(paused=True)(kube)
    rollout = kube.get(API_VERSION, "ModelRollout", NAMESPACE, "acme-nlu-v2")
    assert rollout is not None
    assert health_of(rollout) == {
        "status": "Progressing",
        "message": "Waiting for the operator to observe generation 2",
    }
    assert health_of(drive_rollout(kube, "acme-nlu-v2", [Tick(400)]))["status"] == "Suspended"


ROLLOUT_CASES: list[tuple[str, dict[str, Any] | None, int, str, str]] = [
    # (id, status, metadata.generation, health, message)
    ("no-status", None, 1, "Progressing", "Waiting for the operator to start the rollout"),
    (
        "status-of-an-older-spec",
        {"observedGeneration": 1, "phase": "Failed", "conditions": [ready("False", "X", "m")]},
        2,
        "Progressing",
        "Waiting for the operator to observe generation 2",
    ),
    (
        "initializing",
        {"observedGeneration": 1, "phase": "Initializing", "conditions": []},
        1,
        "Progressing",
        "Phase Initializing",
    ),
    (
        "unknown-phase-not-ready",
        {"observedGeneration": 1, "phase": "Aborted", "conditions": [ready("False", "X", "m")]},
        1,
        "Progressing",
        "X: m",
    ),
    (
        "unknown-phase-ready",
        {"observedGeneration": 1, "phase": "Done", "conditions": [ready("True", "Y", "m")]},
        1,
        "Healthy",
        "Y: m",
    ),
    (
        # An operator from before the Holding phase wrote a manual split as Progressing.
        "manual-split-of-an-older-operator",
        {
            "observedGeneration": 1,
            "phase": "Progressing",
            "conditions": [ready("False", "ManualWeight", "Candidate receives 30% of traffic")],
        },
        1,
        "Healthy",
        "ManualWeight: Candidate receives 30% of traffic",
    ),
    (
        "promoted-needs-no-hint",
        {
            "observedGeneration": 1,
            "phase": "Succeeded",
            "conditions": [ready("True", "Promoted", "delete this ModelRollout")],
        },
        1,
        "Healthy",
        "Promoted: delete this ModelRollout",
    ),
]


@pytest.mark.parametrize(
    ("status", "generation", "expected", "message"),
    [case[1:] for case in ROLLOUT_CASES],
    ids=[case[0] for case in ROLLOUT_CASES],
)
def test_modelrollout_hand_written(
    status: dict[str, Any] | None, generation: int, expected: str, message: str
) -> None:
    assert health("ModelRollout", status, generation) == {"status": expected, "message": message}


# --------------------------------------------------------------------------------------------
# examples/gitops: Argo CD Applications


def application(name: str) -> dict[str, Any]:
    doc: dict[str, Any] = yaml.safe_load((GITOPS / name).read_text(encoding="utf-8"))
    return doc


APPLICATIONS = ("application-operator.yaml", "application-quickstart.yaml")


@pytest.mark.parametrize("name", APPLICATIONS)
def test_applications_match_the_upstream_crd(name: str, schemas: Schemas) -> None:
    app = application(name)
    assert (app["apiVersion"], app["kind"]) == ("argoproj.io/v1alpha1", "Application")
    assert schemas.errors(app) == []  # the upstream CRD, strictly, and ObjectMeta
    assert app["metadata"]["namespace"] == "argocd"


def test_the_validator_rejects_a_misspelled_field(schemas: Schemas) -> None:
    app = application("application-quickstart.yaml")
    app["spec"]["syncPolicy"]["automated"]["selfHeals"] = True
    assert schemas.errors(app)


@pytest.mark.parametrize("name", APPLICATIONS)
def test_applications_sync_automatically_with_server_side_apply(name: str) -> None:
    app = application(name)
    source, policy = app["spec"]["source"], app["spec"]["syncPolicy"]
    assert (source["repoURL"], source["targetRevision"]) == (REPO_URL, "main")
    assert (REPO / source["path"]).is_dir()
    assert policy["automated"]["prune"] is True and policy["automated"]["selfHeal"] is True
    assert {"CreateNamespace=true", "ServerSideApply=true"} <= set(policy["syncOptions"])
    assert app["spec"]["destination"]["server"] == "https://kubernetes.default.svc"


def test_quickstart_application_syncs_the_quickstart_into_support() -> None:
    spec = application("application-quickstart.yaml")["spec"]
    assert spec["source"]["path"] == "examples/quickstart"
    assert spec["destination"]["namespace"] == "support"


def merged_values(defaults: Mapping[str, Any], values: Mapping[str, Any]) -> dict[str, Any]:
    """`values` over the chart's defaults, as Helm merges them (maps merge, the rest replaces)."""
    out = dict(defaults)
    for key, value in values.items():
        base = out.get(key)
        if isinstance(value, Mapping) and isinstance(base, Mapping):
            out[key] = merged_values(base, value)
        else:
            out[key] = value
    return out


def test_operator_application_installs_the_chart() -> None:
    spec = application("application-operator.yaml")["spec"]
    chart = REPO / "charts" / "switchboard"
    assert spec["source"]["path"] == "charts/switchboard"
    assert (chart / "Chart.yaml").is_file()
    assert spec["destination"]["namespace"] == "switchboard-system"
    values = spec["source"]["helm"]["valuesObject"]
    assert values["prometheusRule"]["enabled"] is True
    # Helm checks the merged values against values.schema.json (unknown keys are errors there).
    schema = json.loads((chart / "values.schema.json").read_text(encoding="utf-8"))
    defaults = yaml.safe_load((chart / "values.yaml").read_text(encoding="utf-8"))
    validator = jsonschema.validators.validator_for(schema)(schema)
    assert [e.message for e in validator.iter_errors(merged_values(defaults, values))] == []


def test_gitops_folder_holds_no_custom_resources() -> None:
    """Tests that read every example's custom resources (tests/test_crds.py) skip this folder's
    Applications by their apiVersion; nothing here is a switchboard.dev object."""
    for path in sorted(GITOPS.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text(encoding="utf-8")):
            assert doc["apiVersion"] == "argoproj.io/v1alpha1", path


# --------------------------------------------------------------------------------------------
# The same script against live objects: the real operator on the real API server


def test_health_of_live_objects(cluster: Cluster, run_operator: Any) -> None:
    """What Argo CD would show for objects the operator reconciled on a real API server."""
    ns = cluster.namespace("argocd-health")

    def live(kind: str, name: str) -> dict[str, str]:
        obj = cluster.get(API_VERSION, kind, ns, name)
        assert obj is not None
        return health_of(obj)

    def shows(kind: str, name: str, health: str) -> Callable[[], bool]:
        return lambda: live(kind, name)["status"] == health

    with run_operator():
        cluster.apply_dir(EXAMPLES / "quickstart", ns)
        cluster.wait_for("a Progressing agent", shows("SupportAgent", "acme", "Progressing"))
        cluster.wait_for(
            "both gateway Deployments", lambda: len(cluster.list("apps/v1", "Deployment", ns)) == 2
        )

        cluster.wait_for(
            "a Healthy adapter",
            cluster.with_gateways_available(ns, shows("ToolAdapter", "orders", "Healthy")),
        )
        cluster.make_rayservice_running(ns, "acme")
        cluster.wait_for("a Healthy agent", shows("SupportAgent", "acme", "Healthy"))

        broken = {
            "apiVersion": API_VERSION,
            "kind": "SupportAgent",
            "metadata": {"name": "broken"},
            "spec": {
                "nlu": {"modelUri": "file:///models/nlu"},
                "tools": [{"adapter": "crm", "operations": ["lookup_customer"]}],
            },
        }
        cluster.create(broken, ns)
        cluster.wait_for("a Degraded agent", shows("SupportAgent", "broken", "Degraded"))
        assert "ToolAdapterNotFound" in live("SupportAgent", "broken")["message"]

        rollout = yaml.safe_load((EXAMPLES / "rollout" / "10-modelrollout.yaml").read_text())
        rollout["spec"]["paused"] = True
        cluster.create(rollout, ns)
        name = rollout["metadata"]["name"]
        cluster.wait_for("a Suspended rollout", shows("ModelRollout", name, "Suspended"))
