"""The Helm chart, offline: `helm lint` and `helm template` (a real helm 3.6.2, `make helm`) with
default and variant values, every rendered object valid against its schema, the values schema
refusing bad input with a message, and the chart's CRDs identical to the top-level `crds/`.
`helm template --kube-version` for 1.20, 1.25, 1.30 and the newest Kubernetes kubernetes-validate
knows renders only APIs that version serves, each object valid for it.

The chart's RBAC and Deployment arguments are proven against the real API server in
tests/test_operator_envtest.py (cluster-wide) and tests/test_chart_envtest.py (namespaced,
replicas with peering).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import kubernetes_validate
import kubernetes_validate.utils
import pytest
import yaml

from support.manifests import quickstart_documents

REPO = Path(__file__).resolve().parents[1]
CHART = REPO / "charts" / "switchboard"
NS = "switchboard-system"

# Values variants a platform team uses; each must lint, render and validate.
VARIANTS: dict[str, dict[str, Any]] = {
    "defaults": {},
    "everything-on": {
        "metrics": {"serviceMonitor": {"enabled": True, "labels": {"release": "prom"}}},
        "podMonitors": {"rayPods": {"enabled": True}, "toolGateways": {"enabled": True}},
        "prometheusRule": {"enabled": True, "labels": {"release": "prom"}},
        "grafanaDashboard": {"enabled": True, "namespace": "monitoring"},
        "operator": {"prometheusUrl": "http://prometheus-operated.monitoring:9090"},
    },
    "namespaced": {
        "rbac": {"scope": "namespace"},
        "operator": {"watchNamespaces": ["support", "support-eu"]},
        "podMonitors": {"rayPods": {"enabled": True}},
    },
    "cluster-role-some-namespaces": {"operator": {"watchNamespaces": ["support"]}},
    "single-replica-own-account": {
        "replicaCount": 1,
        "serviceAccount": {"create": False, "name": "platform-operator"},
        "image": {"tag": "0.1.0-rc1", "pullPolicy": "Always"},
        "imagePullSecrets": [{"name": "regcred"}],
        "operator": {"verbose": True},
    },
}


def kinds(objects: list[dict[str, Any]]) -> list[str]:
    return sorted(o["kind"] for o in objects)


def one(objects: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    [found] = [o for o in objects if o["kind"] == kind]
    return found


def operator_container(objects: list[dict[str, Any]]) -> dict[str, Any]:
    [container] = one(objects, "Deployment")["spec"]["template"]["spec"]["containers"]
    return container


# --------------------------------------------------------------------------------------------
# helm lint / template


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_helm_lint(run_helm: Any, variant: str, tmp_path: Path) -> None:
    values = tmp_path / "values.yaml"
    values.write_text(yaml.safe_dump(VARIANTS[variant]))
    done = run_helm("lint", "--strict", str(CHART), "--values", str(values))
    assert done.returncode == 0, done.stdout + done.stderr
    assert "1 chart(s) linted, 0 chart(s) failed" in done.stdout


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_every_rendered_object_is_valid(helm_template: Any, schemas: Any, variant: str) -> None:
    objects = helm_template(values=VARIANTS[variant], crds=True)
    errors = {
        f"{o['kind']}/{o['metadata']['name']}": schemas.errors(o)
        for o in objects
        if o["kind"] != "CustomResourceDefinition"
    }
    assert {name: e for name, e in errors.items() if e} == {}
    # Namespaced objects say where they go (`kubectl apply` of the output works too).
    cluster_scoped = {"ClusterRole", "ClusterRoleBinding", "ClusterKopfPeering"}
    for o in objects:
        if o["kind"] not in cluster_scoped | {"CustomResourceDefinition"}:
            assert o["metadata"].get("namespace"), o["kind"]


def test_default_install(helm_template: Any) -> None:
    objects = helm_template()
    assert kinds(objects) == [
        "ClusterKopfPeering",
        "ClusterRole",
        "ClusterRoleBinding",
        "Deployment",
        "PodDisruptionBudget",
        "Service",
        "ServiceAccount",
    ]
    deployment = one(objects, "Deployment")
    assert deployment["spec"]["replicas"] == 2
    pod = deployment["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == "switchboard-operator"
    assert pod["securityContext"]["runAsNonRoot"] is True
    container = operator_container(objects)
    assert container["image"] == "ghcr.io/switchboard-dev/switchboard-operator:0.1.0"
    assert container["args"] == [
        "operator",
        "--all-namespaces",
        "--peering=switchboard",
        "--metrics-port=8080",
        "--liveness-port=8081",
        # The tool gateways' NetworkPolicies admit Prometheus (any namespace) for metrics.
        "--scraper-pod-labels=app.kubernetes.io/name=prometheus",
        "--scraper-namespace-labels=",
    ]
    security = container["securityContext"]
    assert security["readOnlyRootFilesystem"] is True
    assert security["allowPrivilegeEscalation"] is False
    assert security["capabilities"]["drop"] == ["ALL"]
    assert container["resources"]["requests"] and container["resources"]["limits"]["memory"]
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        assert container[probe]["httpGet"] == {"path": "/healthz", "port": "health"}
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"metrics": 8080, "health": 8081}
    env = {e["name"]: e for e in container["env"]}
    assert env["POD_ID"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
    # The read-only root filesystem leaves /tmp writable only through its own volume.
    assert {"name": "tmp", "mountPath": "/tmp"} in container["volumeMounts"]
    assert one(objects, "ClusterKopfPeering")["metadata"]["name"] == "switchboard"
    service = one(objects, "Service")
    assert service["spec"]["selector"] == deployment["spec"]["selector"]["matchLabels"]


def test_disruption_budget_follows_the_cluster(helm_template: Any) -> None:
    # The 1.20 test server accepts the old one (tests/test_chart_envtest.py installs it).
    current = one(helm_template(), "PodDisruptionBudget")
    old = one(helm_template(api_versions=()), "PodDisruptionBudget")
    assert (current["apiVersion"], old["apiVersion"]) == ("policy/v1", "policy/v1beta1")
    assert current["spec"]["minAvailable"] == 1


# --------------------------------------------------------------------------------------------
# `helm template --kube-version`: what README's "Without Helm" path applies to a cluster

# Under `helm template` the chart sees helm's compiled-in API list, not the cluster's (helm
# 3.6.2's has no policy/v1), so only `--kube-version` tells it the target. 1.20 is the envtest
# server's (tests/test_chart_envtest.py installs the chart there: its strict check), 1.25 the
# first without policy/v1beta1, and the newest that kubernetes-validate bundles.
KUBE_VERSIONS = tuple(
    dict.fromkeys(("1.20.0", "1.25.0", "1.30.0", kubernetes_validate.latest_version()))
)
# Built-in API versions the chart may render: (first Kubernetes serving it, first not serving
# it). A new one fails the test below until it is listed here.
BUILTIN_APIS: dict[str, tuple[str, str | None]] = {
    "v1": ("1.0.0", None),
    "apps/v1": ("1.9.0", None),
    "rbac.authorization.k8s.io/v1": ("1.8.0", None),
    "apiextensions.k8s.io/v1": ("1.16.0", None),
    "policy/v1": ("1.21.0", None),
    "policy/v1beta1": ("1.5.0", "1.25.0"),
    "autoscaling/v2": ("1.23.0", None),
    "autoscaling/v2beta2": ("1.12.0", "1.26.0"),
}
# Groups of custom resources: validated against their CRDs, served by whatever installs them.
CUSTOM_GROUPS = {"monitoring.coreos.com", "argoproj.io", "kopf.dev", "switchboard.dev"}


def version_tuple(version: str) -> tuple[int, ...]:
    return tuple(int(part) for part in version.lstrip("v").split("-")[0].split("."))


def served(api_version: str, kube_version: str) -> bool:
    since, removed = BUILTIN_APIS[api_version]
    at = version_tuple(kube_version)
    return version_tuple(since) <= at and (removed is None or at < version_tuple(removed))


def template_for(
    run_helm: Any, tmp_path: Path, kube_version: str, values: dict[str, Any]
) -> list[dict[str, Any]]:
    """README's `helm template ... --include-crds`, for a cluster of ``kube_version``."""
    file = tmp_path / "values.yaml"
    file.write_text(yaml.safe_dump(values))
    args = ["template", "switchboard-operator", str(CHART), "--namespace", NS]
    args += ["--include-crds", "--kube-version", kube_version, "--values", str(file)]
    done = run_helm(*args)
    assert done.returncode == 0, done.stderr
    return [doc for doc in yaml.safe_load_all(done.stdout) if doc]


def test_kube_versions_include_the_newest_validator_schemas() -> None:
    assert "1.30.0" in KUBE_VERSIONS and len(KUBE_VERSIONS) >= 3
    assert version_tuple(KUBE_VERSIONS[-1]) >= version_tuple("1.30.0")


@pytest.mark.parametrize("variant", sorted(VARIANTS))
@pytest.mark.parametrize("kube_version", KUBE_VERSIONS)
def test_renders_only_apis_the_cluster_serves(
    run_helm: Any, schemas: Any, tmp_path: Path, kube_version: str, variant: str
) -> None:
    objects = template_for(run_helm, tmp_path, kube_version, VARIANTS[variant])
    builtin = [o for o in objects if o["apiVersion"].split("/")[0] not in CUSTOM_GROUPS]
    unknown = {o["apiVersion"] for o in builtin} - set(BUILTIN_APIS)
    assert unknown == set(), f"add {unknown} to BUILTIN_APIS"
    unserved = [
        f"{o['apiVersion']} {o['kind']}"
        for o in builtin
        if not served(o["apiVersion"], kube_version)
    ]
    assert unserved == []
    if kube_version not in kubernetes_validate.utils.all_versions():
        return  # older than the validator's schemas: the envtest install checks 1.20
    errors = {
        f"{o['kind']}/{o['metadata']['name']}": schemas.errors(o, kube_version) for o in objects
    }
    assert {name: e for name, e in errors.items() if e} == {}


@pytest.mark.parametrize(
    ("kube_version", "api_version"),
    [
        ("1.20.0", "policy/v1beta1"),
        ("v1.20.15-gke.100", "policy/v1beta1"),
        ("1.21.0", "policy/v1"),
        ("1.25.0", "policy/v1"),
        ("1.30.0", "policy/v1"),
        ("v1.30.0-eks-a1b2c3", "policy/v1"),  # vendor suffixes compare as their release
        (kubernetes_validate.latest_version(), "policy/v1"),
    ],
)
def test_disruption_budget_follows_the_kube_version(
    run_helm: Any, tmp_path: Path, kube_version: str, api_version: str
) -> None:
    pdb = one(template_for(run_helm, tmp_path, kube_version, {}), "PodDisruptionBudget")
    assert pdb["apiVersion"] == api_version
    assert pdb["spec"]["minAvailable"] == 1


def rules_of(role: dict[str, Any]) -> dict[tuple[str, str], set[str]]:
    out: dict[tuple[str, str], set[str]] = {}
    for rule in role["rules"]:
        for group in rule["apiGroups"]:
            for resource in rule["resources"]:
                out.setdefault((group, resource), set()).update(rule["verbs"])
    return out


# What the operator may do; tests/test_operator_envtest.py proves it is also enough.
OPERATOR_RULES = {
    ("switchboard.dev", "supportagents"): {"get", "list", "watch", "patch"},
    ("switchboard.dev", "tooladapters"): {"get", "list", "watch", "patch"},
    # ...and creates the ModelRollouts of retraining runs that pass their gate.
    ("switchboard.dev", "modelrollouts"): {"get", "list", "watch", "patch", "create"},
    ("switchboard.dev", "modeltrainings"): {"get", "list", "watch", "patch"},
    ("switchboard.dev", "supportagents/status"): {"get", "patch"},
    ("switchboard.dev", "tooladapters/status"): {"get", "patch"},
    ("switchboard.dev", "modelrollouts/status"): {"get", "patch"},
    ("switchboard.dev", "modeltrainings/status"): {"get", "patch"},
    ("ray.io", "rayservices"): {"get", "list", "watch", "create", "patch"},
    # One RayJob per retraining run; runs past historyLimit are deleted (the only delete).
    ("ray.io", "rayjobs"): {"get", "list", "watch", "create", "patch", "delete"},
    ("networking.istio.io", "virtualservices"): {"get", "list", "watch", "create", "patch"},
    ("apps", "deployments"): {"get", "list", "watch", "create", "patch"},
    ("", "services"): {"get", "list", "watch", "create", "patch"},
    ("autoscaling", "horizontalpodautoscalers"): {"get", "list", "watch", "create", "patch"},
    ("security.istio.io", "requestauthentications"): {"create", "patch"},
    ("networking.k8s.io", "networkpolicies"): {"get", "list", "watch", "create", "patch"},
    ("security.istio.io", "authorizationpolicies"): {"get", "list", "watch", "create", "patch"},
    ("", "serviceaccounts"): {"get", "list", "watch", "create", "patch"},
    ("", "secrets"): {"get"},
    ("", "configmaps"): {"get", "list", "watch", "create", "patch"},
    ("", "events"): {"create", "patch"},
    ("events.k8s.io", "events"): {"create", "patch"},
}


def test_cluster_role_is_exact_and_deletes_only_old_rayjobs(helm_template: Any) -> None:
    role = one(helm_template(), "ClusterRole")
    assert rules_of(role) == {
        **OPERATOR_RULES,
        ("kopf.dev", "clusterkopfpeerings"): {"get", "list", "watch", "patch"},
        ("apiextensions.k8s.io", "customresourcedefinitions"): {"get", "list", "watch"},
    }
    for rule in role["rules"]:
        assert "*" not in rule["verbs"] + rule["resources"] + rule["apiGroups"]
        assert not {"deletecollection", "update", "escalate", "bind"} & set(rule["verbs"])
        assert "delete" not in rule["verbs"] or rule["resources"] == ["rayjobs"]
        assert "resourceNames" not in rule


def test_namespaced_install_has_no_cluster_permission(helm_template: Any) -> None:
    objects = helm_template(values=VARIANTS["namespaced"])
    # The only cluster-wide grant is the tool gateways' (TokenReview is cluster-scoped): create
    # tokenreviews, bound to the gateways' ServiceAccount of each watched namespace.
    gateway_rbac = [o for o in objects if o["metadata"]["name"].endswith("-gateway-tokenreview")]
    assert sorted(kinds(gateway_rbac)) == ["ClusterRole", "ClusterRoleBinding"]
    role = one(gateway_rbac, "ClusterRole")
    assert rules_of(role) == {("authentication.k8s.io", "tokenreviews"): {"create"}}
    binding = one(gateway_rbac, "ClusterRoleBinding")
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": "switchboard-tool-gateway", "namespace": ns}
        for ns in ("support", "support-eu")
    ]
    accounts = [o for o in objects if o["metadata"]["name"] == "switchboard-tool-gateway"]
    assert sorted(o["metadata"]["namespace"] for o in accounts) == ["support", "support-eu"]
    objects = [o for o in objects if o not in gateway_rbac]
    assert not {"ClusterRole", "ClusterRoleBinding", "ClusterKopfPeering"} & set(kinds(objects))
    roles = [o for o in objects if o["kind"] == "Role"]
    bindings = [o for o in objects if o["kind"] == "RoleBinding"]
    peerings = [o for o in objects if o["kind"] == "KopfPeering"]
    for group in (roles, bindings, peerings):
        assert sorted(o["metadata"]["namespace"] for o in group) == ["support", "support-eu"]
    for role in roles:
        assert rules_of(role) == {
            **OPERATOR_RULES,
            ("kopf.dev", "kopfpeerings"): {"get", "list", "watch", "patch"},
        }
    for binding in bindings:
        assert binding["subjects"] == [
            {"kind": "ServiceAccount", "name": "switchboard-operator", "namespace": NS}
        ]
    args = operator_container(objects)["args"]
    assert "--namespace=support" in args and "--namespace=support-eu" in args
    assert "--all-namespaces" not in args
    monitor = one(objects, "PodMonitor")
    assert monitor["spec"]["namespaceSelector"] == {"matchNames": ["support", "support-eu"]}


def test_cluster_role_watching_a_list_meets_on_namespaced_peerings(helm_template: Any) -> None:
    # kopf peers per namespace whenever it watches a list, whatever the RBAC scope.
    objects = helm_template(values=VARIANTS["cluster-role-some-namespaces"])
    assert [o["metadata"]["namespace"] for o in objects if o["kind"] == "KopfPeering"] == [
        "support"
    ]
    [role] = [
        o
        for o in objects
        if o["kind"] == "ClusterRole" and not o["metadata"]["name"].endswith("-gateway-tokenreview")
    ]
    rules = rules_of(role)
    assert ("kopf.dev", "kopfpeerings") in rules
    assert ("kopf.dev", "clusterkopfpeerings") not in rules


def test_single_replica_with_an_existing_account(helm_template: Any) -> None:
    objects = helm_template(values=VARIANTS["single-replica-own-account"])
    assert "ServiceAccount" not in kinds(objects)
    assert "PodDisruptionBudget" not in kinds(objects)  # it would block every drain
    pod = one(objects, "Deployment")["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == "platform-operator"
    assert pod["imagePullSecrets"] == [{"name": "regcred"}]
    container = operator_container(objects)
    assert container["image"].endswith(":0.1.0-rc1")
    assert "--verbose" in container["args"]
    binding = one(objects, "ClusterRoleBinding")
    assert binding["subjects"][0]["name"] == "platform-operator"


def test_monitors_select_what_the_operator_renders(helm_template: Any) -> None:
    objects = helm_template(values=VARIANTS["everything-on"])
    service_monitor = one(objects, "ServiceMonitor")
    assert service_monitor["metadata"]["labels"]["release"] == "prom"
    assert service_monitor["spec"]["endpoints"][0]["honorLabels"] is True
    monitors = {o["metadata"]["name"]: o for o in objects if o["kind"] == "PodMonitor"}
    ray = monitors["switchboard-operator-ray"]["spec"]
    gateways = monitors["switchboard-operator-tool-gateways"]["spec"]
    assert ray["selector"]["matchLabels"]["app.kubernetes.io/component"] == "ray"
    assert gateways["selector"]["matchLabels"]["app.kubernetes.io/component"] == "tool-gateway"
    assert ray["podMetricsEndpoints"][0]["port"] == "metrics"
    assert gateways["podMetricsEndpoints"][0]["port"] == "http"
    assert (
        "--prometheus-url=http://prometheus-operated.monitoring:9090"
        in (operator_container(objects)["args"])
    )


def test_pod_monitors_match_rendered_children(helm_template: Any) -> None:
    """The PodMonitors' selectors and ports match the pods `switchboard render` produces."""
    from switchboard.operator.render import render_manifests

    rendered = render_manifests(quickstart_documents())
    monitors = [
        o["spec"]
        for o in helm_template(values=VARIANTS["everything-on"])
        if o["kind"] == "PodMonitor"
    ]
    pods: list[dict[str, Any]] = []
    for obj in rendered:
        if obj["kind"] == "Deployment":
            pods.append(obj["spec"]["template"])
        elif obj["kind"] == "RayService":
            cluster = obj["spec"]["rayClusterConfig"]
            pods.append(cluster["headGroupSpec"]["template"])
            pods += [g["template"] for g in cluster["workerGroupSpecs"]]
    for pod in pods:
        labels = pod["metadata"]["labels"]
        ports = {p["name"] for c in pod["spec"]["containers"] for p in c.get("ports", [])}
        matching = [
            m
            for m in monitors
            if m["selector"]["matchLabels"].items() <= labels.items()
            and m["podMetricsEndpoints"][0]["port"] in ports
        ]
        assert len(matching) == 1, labels


# --------------------------------------------------------------------------------------------
# values.schema.json and the templates' own checks: clear refusals


@pytest.mark.parametrize(
    ("sets", "message"),
    [
        (["replicaCount=0"], "replicaCount: Must be greater than or equal to 1"),
        (["rbac.scope=everywhere"], "rbac.scope: rbac.scope must be one of the following"),
        (["replicas=2"], "Additional property replicas is not allowed"),
        (["operator.watchNamespaces={Bad_NS}"], "operator.watchNamespaces.0: Does not match"),
        (["operator.prometheusUrl=prometheus:9090"], "operator.prometheusUrl: Does not match"),
        (["prometheusRule.latencySloSeconds=3"], "prometheusRule.latencySloSeconds"),
        (["prometheusRule.agentNotReadyFor=soon"], "prometheusRule.agentNotReadyFor"),
        (
            ["rbac.scope=namespace"],
            "rbac.scope=namespace needs operator.watchNamespaces",
        ),
        (
            ["serviceAccount.create=false"],
            "serviceAccount.name is required when serviceAccount.create is false",
        ),
        (
            ["metrics.service.enabled=false", "metrics.serviceMonitor.enabled=true"],
            "metrics.serviceMonitor.enabled needs metrics.service.enabled",
        ),
    ],
)
def test_bad_values_are_refused_with_a_message(
    run_helm: Any, sets: list[str], message: str
) -> None:
    args = ["template", "switchboard-operator", str(CHART)]
    for item in sets:
        args += ["--set", item]
    done = run_helm(*args)
    assert done.returncode != 0
    assert message in done.stderr, done.stderr


def test_every_value_is_described_by_the_schema() -> None:
    """values.yaml and values.schema.json name the same keys (the schema forbids others)."""
    import json

    schema = json.loads((CHART / "values.schema.json").read_text())
    values = yaml.safe_load((CHART / "values.yaml").read_text())

    def walk(value: Any, node: dict[str, Any], path: str) -> None:
        props = node.get("properties")
        if isinstance(value, dict) and props is not None:
            assert set(value) <= set(props), f"{path}: {set(value) - set(props)} not in schema"
            for key, sub in value.items():
                walk(sub, props[key], f"{path}.{key}")

    walk(values, schema, "")
    assert set(schema["properties"]) - {"global"} == set(values)


# --------------------------------------------------------------------------------------------
# CRDs


def test_chart_crds_are_the_projects_crds() -> None:
    top = {p.name: p.read_bytes() for p in (REPO / "crds").glob("*.yaml")}
    chart = {p.name: p.read_bytes() for p in (CHART / "crds").glob("*.yaml")}
    assert set(chart) == set(top) | {"kopf-peerings.yaml"}
    stale = [name for name in top if chart[name] != top[name]]
    assert stale == [], f"copy crds/{stale} to charts/switchboard/crds/ (`make crds` does both)"


def test_peering_crds_define_what_kopf_watches() -> None:
    docs = list(yaml.safe_load_all((CHART / "crds" / "kopf-peerings.yaml").read_text()))
    names = {(d["spec"]["group"], d["spec"]["names"]["plural"], d["spec"]["scope"]) for d in docs}
    assert names == {
        ("kopf.dev", "clusterkopfpeerings", "Cluster"),
        ("kopf.dev", "kopfpeerings", "Namespaced"),
    }


def test_decimal_values_work_from_the_command_line(helm_template: Any) -> None:
    # `--set` hands helm 3 decimals as strings; the schema accepts numeric strings for them.
    objects = helm_template(
        "prometheusRule.enabled=true",
        "prometheusRule.latencySloTarget=0.995",
        "prometheusRule.latencySloSeconds=2.5",
    )
    groups = one(objects, "PrometheusRule")["spec"]["groups"]
    exprs = " ".join(str(rule["expr"]) for group in groups for rule in group["rules"])
    assert "(1 - 0.995)" in exprs and 'le=~"2[.]50*"' in exprs
