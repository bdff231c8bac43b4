"""The operator, run in-process by kopf, against a real kube-apiserver — installed by `helm
install` of charts/switchboard and run under a token of the chart's ServiceAccount, so it holds
exactly the chart's least-privilege RBAC (peering on, as the chart runs it).

KubeRay, Istio and the Deployment controller do not run on the test server; where the operator
waits on them, the tests patch the children's `status` as those controllers would.
"""

from __future__ import annotations

import json
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes.client.rest import ApiException

from support.cluster import GROUP, VERSION, Cluster
from support.envtest import EnvTest
from support.helm import OperatorInstall
from support.paths import EXAMPLES, QUICKSTART

pytestmark = pytest.mark.envtest


def owned_by(obj: dict[str, Any], owner: dict[str, Any]) -> bool:
    refs = obj["metadata"].get("ownerReferences") or []
    return any(r["uid"] == owner["metadata"]["uid"] and r.get("controller") for r in refs)


def applied_by_switchboard(obj: dict[str, Any]) -> bool:
    return any(
        m.get("manager") == "switchboard" and m.get("operation") == "Apply"
        for m in obj["metadata"].get("managedFields") or []
    )


# ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def operator(run_operator: Any) -> Iterator[dict[str, Any]]:
    """kopf running `switchboard.operator.main` under the operator's own, least-privilege token."""
    with run_operator() as running:
        yield running


# ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def quickstart(cluster: Cluster, operator: dict[str, Any]) -> str:
    namespace = cluster.namespace("quickstart")
    cluster.apply_dir(QUICKSTART, namespace)
    return namespace


def test_quickstart_creates_every_child_with_owner_and_field_manager(
    cluster: Cluster, quickstart: str
) -> None:
    ns = quickstart
    agent = cluster.agent(ns, "acme")
    rs = cluster.wait_for(
        "RayService acme", lambda: cluster.get("ray.io/v1", "RayService", ns, "acme")
    )
    vs = cluster.wait_for(
        "VirtualService acme",
        lambda: cluster.get("networking.istio.io/v1", "VirtualService", ns, "acme"),
    )
    for child in (rs, vs):
        assert owned_by(child, agent)
        assert applied_by_switchboard(child)
    for adapter_name in ("orders", "ticketing"):
        adapter = cluster.wait_for(
            adapter_name,
            lambda n=adapter_name: cluster.get(f"{GROUP}/{VERSION}", "ToolAdapter", ns, n),
        )
        for api_version, kind in (
            ("apps/v1", "Deployment"),
            ("v1", "Service"),
            ("autoscaling/v2beta2", "HorizontalPodAutoscaler"),
        ):
            child = cluster.wait_for(
                f"{kind} {adapter_name}-gateway",
                lambda a=api_version, k=kind, n=adapter_name: cluster.get(a, k, ns, f"{n}-gateway"),
            )
            assert owned_by(child, adapter), kind
            assert applied_by_switchboard(child), kind
        # The HPA owns the replica count: the operator never sets it.
        deployment = cluster.get("apps/v1", "Deployment", ns, f"{adapter_name}-gateway")
        assert deployment is not None
        owned = [
            json.dumps(m.get("fieldsV1"))
            for m in deployment["metadata"]["managedFields"]
            if m["manager"] == "switchboard"
        ]
        assert owned and all('"f:replicas"' not in f for f in owned)

    # Nothing reports ready yet, and the status says why — honestly, not "applied".
    ready = cluster.wait_for(
        "agent Ready condition", lambda: cluster.condition("SupportAgent", ns, "acme")
    )
    assert ready["status"] == "False"
    assert ready["reason"] in ("RayServiceDeploying", "ToolAdapterNotReady")
    assert ready["observedGeneration"] == agent["metadata"]["generation"]
    assert {
        "type",
        "status",
        "reason",
        "message",
        "lastTransitionTime",
        "observedGeneration",
    } <= set(ready)
    # kopf's bookkeeping lives under switchboard.dev, and no handler result lands in status.
    agent = cluster.agent(ns, "acme")
    annotations = agent["metadata"].get("annotations") or {}
    assert not any("kopf.zalando.org" in k for k in annotations)
    assert not any("kopf.zalando.org" in f for f in agent["metadata"].get("finalizers") or [])
    assert set(agent["status"]) <= {
        "observedGeneration",
        "phase",
        "conditions",
        "revision",
        "endpoint",
        "traffic",
        "readyTools",
    }


def test_agent_ready_once_kuberay_and_gateways_report(cluster: Cluster, quickstart: str) -> None:
    ns = quickstart
    cluster.wait_for(
        "gateway Deployments", lambda: len(cluster.list("apps/v1", "Deployment", ns)) == 2
    )
    cluster.make_gateways_available(ns)
    for adapter in ("orders", "ticketing"):
        cluster.wait_for(
            f"ToolAdapter {adapter} Ready",
            cluster.with_gateways_available(
                ns,
                lambda a=adapter: (
                    (cluster.condition("ToolAdapter", ns, a) or {}).get("status") == "True"
                ),
            ),
        )
    assert (cluster.condition("SupportAgent", ns, "acme") or {}).get("status") != "True"

    cluster.make_rayservice_running(ns, "acme")
    cluster.wait_for(
        "agent Ready",
        lambda: (cluster.condition("SupportAgent", ns, "acme") or {}).get("status") == "True",
    )
    agent = cluster.agent(ns, "acme")
    status = agent["status"]
    assert status["phase"] == "Ready"
    assert status["readyTools"] == "2/2"
    assert status["traffic"] == [{"revision": status["revision"], "percent": 100, "tag": "stable"}]
    types = {c["type"]: c["status"] for c in status["conditions"]}
    assert types == {
        "Ready": "True",
        "Progressing": "False",
        "Degraded": "False",
        "RayServiceReady": "True",
        "RoutesReady": "True",
        "ToolsReady": "True",
        "HandoffReady": "True",
        # Advisory, outside Ready: the quickstart's model is in the Ray image, not here.
        "IntentsCovered": "Unknown",
    }
    cluster.wait_for("Ready event", lambda: ("Normal", "Ready") in cluster.events(ns, "acme"))

    # Status is written only on change: a drift pass over unchanged facts leaves it alone.
    version = agent["metadata"]["resourceVersion"]
    cluster.patch(
        f"{GROUP}/{VERSION}",
        "SupportAgent",
        ns,
        "acme",
        {"metadata": {"labels": {"touched": "yes"}}},
    )
    time.sleep(2)
    after = cluster.agent(ns, "acme")
    assert after["status"] == agent["status"]
    assert int(after["metadata"]["resourceVersion"]) > int(version)  # only the label moved it


def test_spec_edit_updates_children_in_place(cluster: Cluster, quickstart: str) -> None:
    ns = quickstart
    cluster.patch(
        f"{GROUP}/{VERSION}",
        "SupportAgent",
        ns,
        "acme",
        {
            "spec": {
                "orchestrator": {"autoscaling": {"targetOngoingRequests": 6}},
                "ingress": {"hosts": ["support.acme.example.com", "help.acme.example.com"]},
            }
        },
    )

    def updated() -> bool:
        rs = cluster.get("ray.io/v1", "RayService", ns, "acme") or {}
        vs = cluster.get("networking.istio.io/v1", "VirtualService", ns, "acme") or {}
        config = yaml.safe_load(rs.get("spec", {}).get("serveConfigV2", "{}"))
        orchestrator = [
            d
            for app in config.get("applications", [])
            for d in app.get("deployments", [])
            if d["name"] == "Orchestrator"
        ]
        return (
            bool(orchestrator)
            and orchestrator[0]["autoscaling_config"]["target_ongoing_requests"] == 6
            and "help.acme.example.com" in vs.get("spec", {}).get("hosts", [])
        )

    cluster.wait_for("children updated", updated)
    assert len(cluster.list("ray.io/v1", "RayService", ns)) == 1
    assert len(cluster.list("networking.istio.io/v1", "VirtualService", ns)) == 1
    # A new RayService generation that KubeRay has not reported yet is not Ready.
    cluster.wait_for(
        "agent back to deploying",
        lambda: (
            (cluster.condition("SupportAgent", ns, "acme") or {}).get("reason")
            == "RayServiceDeploying"
        ),
    )
    agent = cluster.agent(ns, "acme")
    assert agent["status"]["observedGeneration"] == agent["metadata"]["generation"]
    cluster.make_rayservice_running(ns, "acme")
    cluster.wait_for(
        "agent Ready again",
        lambda: (cluster.condition("SupportAgent", ns, "acme") or {}).get("status") == "True",
    )


def test_deleted_children_are_recreated(cluster: Cluster, quickstart: str) -> None:
    ns = quickstart
    for api_version, kind, name in (
        ("networking.istio.io/v1", "VirtualService", "acme"),
        ("v1", "Service", "orders-gateway"),
        ("ray.io/v1", "RayService", "acme"),
    ):
        before = cluster.get(api_version, kind, ns, name)
        assert before is not None
        cluster.delete(api_version, kind, ns, name)
        again = cluster.wait_for(
            f"{kind} {name} re-created",
            lambda a=api_version, k=kind, n=name, uid=before["metadata"]["uid"]: (
                (o := cluster.get(a, k, ns, n)) is not None and o["metadata"]["uid"] != uid and o
            ),
        )
        assert applied_by_switchboard(again)


def test_missing_tooladapter_condition_clears_when_created(
    cluster: Cluster, operator: dict[str, Any]
) -> None:
    ns = cluster.namespace("late-adapter")
    agent = {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "SupportAgent",
        "metadata": {"name": "early"},
        "spec": {
            "nlu": {"modelUri": "file:///models/nlu"},
            "tools": [{"adapter": "crm", "operations": ["lookup_customer"]}],
        },
    }
    cluster.create(agent, ns)
    ready = cluster.wait_for_reason("SupportAgent", ns, "early", "ToolAdapterNotFound")
    assert ready["status"] == "False"
    assert f"ToolAdapter {ns}/crm does not exist" in ready["message"]
    assert cluster.agent(ns, "early")["status"]["phase"] == "Failed"
    cluster.wait_for(
        "Warning event", lambda: ("Warning", "ToolAdapterNotFound") in cluster.events(ns, "early")
    )
    assert cluster.get("ray.io/v1", "RayService", ns, "early") is None

    cluster.create(
        {
            "apiVersion": f"{GROUP}/{VERSION}",
            "kind": "ToolAdapter",
            "metadata": {"name": "crm"},
            "spec": {
                "system": "crm",
                "baseURL": "http://crm.example.com",
                "operations": [{"name": "lookup_customer", "path": "/customers/{id}"}],
            },
        },
        ns,
    )
    cluster.wait_for(
        "condition cleared",
        lambda: (
            (cluster.condition("SupportAgent", ns, "early") or {}).get("reason")
            not in (None, "ToolAdapterNotFound")
        ),
    )
    cluster.wait_for(
        "RayService created", lambda: cluster.get("ray.io/v1", "RayService", ns, "early")
    )


def test_handoff_is_conditioned_until_its_ticket_operation_fits(
    cluster: Cluster, operator: dict[str, Any]
) -> None:
    """`HandoffReady` and a Warning Event name what is wrong with `spec.handoff`: the ticket
    adapter missing, then fields its operation does not take; fixed, the RayService mounts the
    console tokens and every application gets the handoff settings."""
    ns = cluster.namespace("handoff")
    cluster.create(
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": "desk-tokens"},
            "stringData": {"alice": "a-token", "bob": "b-token"},
        },
        ns,
    )
    agent = {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "SupportAgent",
        "metadata": {"name": "desk"},
        "spec": {
            "nlu": {"modelUri": "file:///models/nlu"},
            "tools": [{"adapter": "tickets", "operations": ["create_ticket"]}],
            "handoff": {"adapter": "tickets", "consoleTokensSecret": "desk-tokens"},
        },
    }
    cluster.create(agent, ns)

    def handoff(reason: str) -> dict[str, Any]:
        return cluster.wait_for(
            f"HandoffReady {reason}",
            lambda: (
                found
                if (found := cluster.condition("SupportAgent", ns, "desk", "HandoffReady"))
                and found["reason"] == reason
                else None
            ),
        )

    missing = handoff("HandoffAdapterMissing")
    assert missing["status"] == "False"
    assert f"spec.handoff.adapter names ToolAdapter {ns}/tickets" in missing["message"]
    assert cluster.condition("SupportAgent", ns, "desk")["reason"] == "ToolAdapterNotFound"
    cluster.wait_for(
        "Warning HandoffAdapterMissing",
        lambda: ("Warning", "HandoffAdapterMissing") in cluster.events(ns, "desk"),
    )

    # The adapter appears; its create_ticket takes a title and a body, not the default fields.
    cluster.create(
        {
            "apiVersion": f"{GROUP}/{VERSION}",
            "kind": "ToolAdapter",
            "metadata": {"name": "tickets"},
            "spec": {
                "system": "ticketing",
                "baseURL": "http://helpdesk.example.com",
                "operations": [
                    {
                        "name": "create_ticket",
                        "method": "POST",
                        "path": "/tickets",
                        "mutating": True,
                        "inputSchema": {
                            "type": "object",
                            "required": ["title"],
                            "properties": {"title": {"type": "string"}, "body": {"type": "string"}},
                        },
                    }
                ],
            },
        },
        ns,
    )
    unknown = handoff("HandoffFieldUnknown")
    assert "fills priority, subject" in unknown["message"]
    assert "tickets.create_ticket" in unknown["message"]
    ready = cluster.wait_for_reason("SupportAgent", ns, "desk", "HandoffFieldUnknown")
    assert ready["message"] == unknown["message"]
    assert cluster.agent(ns, "desk")["status"]["phase"] == "Failed"
    cluster.wait_for(
        "Warning HandoffFieldUnknown",
        lambda: ("Warning", "HandoffFieldUnknown") in cluster.events(ns, "desk"),
    )
    assert cluster.get("ray.io/v1", "RayService", ns, "desk") is None

    cluster.patch(
        f"{GROUP}/{VERSION}",
        "SupportAgent",
        ns,
        "desk",
        # A merge patch merges maps: the default's subject and priority go only when nulled.
        {
            "spec": {
                "handoff": {
                    "fields": {
                        "title": "subject",
                        "body": "transcript",
                        "subject": None,
                        "priority": None,
                    }
                }
            }
        },
    )
    resolved = handoff("TicketAdapterResolved")
    assert resolved["status"] == "True"
    assert f"Secret {ns}/desk-tokens" in resolved["message"]
    rs = cluster.wait_for(
        "RayService desk", lambda: cluster.get("ray.io/v1", "RayService", ns, "desk")
    )
    head = rs["spec"]["rayClusterConfig"]["headGroupSpec"]["template"]["spec"]
    assert {
        "name": "console-tokens",
        "secret": {"secretName": "desk-tokens", "defaultMode": 0o444},
    } in head["volumes"]
    serve = yaml.safe_load(rs["spec"]["serveConfigV2"])
    [app] = serve["applications"]
    assert app["args"]["handoff"] == {
        "adapter": "tickets",
        "operation": "create_ticket",
        "fields": {"title": "subject", "body": "transcript"},
        "console_tokens_dir": "/var/run/secrets/switchboard/console-tokens",
    }


@pytest.mark.parametrize(
    ("name", "spec", "reason", "fragment"),
    [
        (
            "min-over-max",
            {
                "nlu": {"modelUri": "file:///m"},
                "workerPools": {"cpu": {"minWorkers": 5, "maxWorkers": 2}},
            },
            "InvalidSpec",
            "spec.workerPools.cpu: minWorkers must be less than or equal to maxWorkers",
        ),
        (
            "gpu-llm-no-pool",
            {
                "nlu": {"modelUri": "file:///m"},
                "llm": {"modelUri": "file:///l", "gpusPerReplica": 1},
            },
            "InvalidSpec",
            "needs workerPools.gpu",
        ),
        (
            "missing-secret",
            {
                "nlu": {"modelUri": "file:///m"},
                "sessions": {
                    "store": "redis",
                    "redis": {"urlSecretRef": {"name": "nope", "key": "url"}},
                },
            },
            "SecretNotFound",
            "Secret invalid/nope",
        ),
        (
            "missing-kb",
            {"nlu": {"modelUri": "file:///m"}, "knowledgeBase": {"configMap": {"name": "nokb"}}},
            "ConfigMapNotFound",
            "ConfigMap invalid/nokb",
        ),
    ],
)
def test_wrong_but_schema_valid_agent_is_conditioned(
    cluster: Cluster,
    operator: dict[str, Any],
    invalid_ns: str,
    name: str,
    spec: dict[str, Any],
    reason: str,
    fragment: str,
) -> None:
    cluster.create(
        {
            "apiVersion": f"{GROUP}/{VERSION}",
            "kind": "SupportAgent",
            "metadata": {"name": name},
            "spec": spec,
        },
        invalid_ns,
    )
    ready = cluster.wait_for_reason("SupportAgent", invalid_ns, name, reason)
    assert ready["status"] == "False"
    assert fragment in ready["message"]
    cluster.wait_for(
        f"{reason} event", lambda: ("Warning", reason) in cluster.events(invalid_ns, name)
    )


def test_unknown_operation_is_conditioned(cluster: Cluster, quickstart: str) -> None:
    spec = {
        "nlu": {"modelUri": "file:///m"},
        "tools": [{"adapter": "orders", "operations": ["get_order", "drop_tables"]}],
    }
    cluster.create(
        {
            "apiVersion": f"{GROUP}/{VERSION}",
            "kind": "SupportAgent",
            "metadata": {"name": "greedy"},
            "spec": spec,
        },
        quickstart,
    )
    ready = cluster.wait_for_reason("SupportAgent", quickstart, "greedy", "UnknownOperation")
    assert "drop_tables" in ready["message"] and f"{quickstart}/orders" in ready["message"]


def test_intent_coverage_is_reported_from_the_model_manifest(
    cluster: Cluster, operator: dict[str, Any], tmp_path: Path
) -> None:
    """The operator reads the NLU manifest's labels (a file:// model it can reach: the
    operator runs in this process) and reports plans for unknown intents, then intents without
    a plan, as the IntentsCovered condition with a Warning Event; Ready is not affected."""
    model = tmp_path / "nlu"
    model.mkdir()
    labels = ["order_status", "cancel_order", "payment_failed", "oos"]
    (model / "manifest.json").write_text(
        json.dumps({"format": "switchboard-nlu", "labels": labels})
    )
    ns = cluster.namespace("coverage")
    plans = [
        {"intent": "order_status", "answerTemplate": "Checking."},
        {"intent": "gift_cards", "handoff": True},
    ]
    cluster.create(
        {
            "apiVersion": f"{GROUP}/{VERSION}",
            "kind": "SupportAgent",
            "metadata": {"name": "partial"},
            "spec": {"nlu": {"modelUri": f"file://{model}"}, "intents": plans},
        },
        ns,
    )

    def coverage(reason: str) -> dict[str, Any] | None:
        found = cluster.condition("SupportAgent", ns, "partial", "IntentsCovered")
        return found if found and found["reason"] == reason else None

    unknown = cluster.wait_for("UnknownIntents", lambda: coverage("UnknownIntents"))
    assert unknown["status"] == "False"
    assert f"SupportAgent {ns}/partial" in unknown["message"] and "gift_cards" in unknown["message"]
    cluster.wait_for(
        "Warning UnknownIntents",
        lambda: ("Warning", "UnknownIntents") in cluster.events(ns, "partial"),
    )
    cluster.patch(
        f"{GROUP}/{VERSION}", "SupportAgent", ns, "partial", {"spec": {"intents": plans[:1]}}
    )
    uncovered = cluster.wait_for("UncoveredIntents", lambda: coverage("UncoveredIntents"))
    # oos needs no plan; the fallback (no knowledge base: a handoff) is named.
    assert "2 of 3 intents" in uncovered["message"]
    assert "cancel_order, payment_failed" in uncovered["message"]
    assert "(handoff)" in uncovered["message"]
    cluster.wait_for(
        "Warning UncoveredIntents",
        lambda: ("Warning", "UncoveredIntents") in cluster.events(ns, "partial"),
    )
    full = [*plans[:1], *({"intent": i, "handoff": True} for i in labels[1:3])]
    cluster.patch(f"{GROUP}/{VERSION}", "SupportAgent", ns, "partial", {"spec": {"intents": full}})
    covered = cluster.wait_for("AllIntentsCovered", lambda: coverage("AllIntentsCovered"))
    assert covered["status"] == "True"
    assert cluster.condition("SupportAgent", ns, "partial")["reason"] != "UnknownIntents"


def test_model_labels_out_of_reach_are_unknown_not_guessed(
    cluster: Cluster, quickstart: str
) -> None:
    # The quickstart's model lives in the Ray image (file:///models/...), not here.
    found = cluster.wait_for(
        "IntentsCovered",
        lambda: cluster.condition("SupportAgent", quickstart, "acme", "IntentsCovered"),
    )
    assert (found["status"], found["reason"]) == ("Unknown", "ModelLabelsUnavailable")
    assert "/models/nlu/acme-v1/manifest.json" in found["message"]


def test_schema_rejects_invalid_agent(cluster: Cluster, invalid_ns: str) -> None:
    body = {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "SupportAgent",
        "metadata": {"name": "int4"},
        "spec": {"nlu": {"modelUri": "file:///m", "quantization": "int4"}},
    }
    with pytest.raises(ApiException) as raised:
        cluster.objects.create_namespaced_custom_object(
            GROUP, VERSION, invalid_ns, "supportagents", body
        )
    assert raised.value.status == 422
    assert "quantization" in raised.value.body


def test_every_example_is_accepted_and_reconciled(
    cluster: Cluster, operator: dict[str, Any]
) -> None:
    ns = cluster.namespace("examples")
    cluster.apply_dir(QUICKSTART, ns)
    cluster.apply_dir(EXAMPLES / "gpu-llm", ns)
    rs = cluster.wait_for(
        "RayService acme-llm", lambda: cluster.get("ray.io/v1", "RayService", ns, "acme-llm")
    )
    groups = {g["groupName"] for g in rs["spec"]["rayClusterConfig"]["workerGroupSpecs"]}
    assert groups == {"cpu", "gpu"}


def test_operator_metrics_are_exported(operator: dict[str, Any], quickstart: str) -> None:
    url = f"http://127.0.0.1:{operator['metrics_port']}/metrics"
    text = urllib.request.urlopen(url, timeout=5).read().decode()
    assert 'switchboard_reconcile_total{kind="SupportAgent",outcome="ready"}' in text
    assert "switchboard_reconcile_duration_seconds_bucket" in text
    assert 'switchboard_agents{ready="true"}' in text
    assert f'switchboard_agent_ready{{agent="acme",namespace="{quickstart}"}}' in text


def gateway_callers(cluster: Cluster, ns: str, adapter: str) -> list[str] | None:
    """The agents the adapter's NetworkPolicy admits by name ([] none; None: no policy)."""
    policy = cluster.get("networking.k8s.io/v1", "NetworkPolicy", ns, f"{adapter}-gateway")
    if policy is None:
        return None
    for rule in policy["spec"]["ingress"]:
        for peer in rule["from"]:
            for expr in peer.get("podSelector", {}).get("matchExpressions", []):
                if expr["key"] == "switchboard.dev/agent":
                    return sorted(expr["values"])
    return []


def test_gateway_admits_exactly_the_agents_that_reference_it(
    cluster: Cluster, operator: dict[str, Any]
) -> None:
    """Two agents, one referencing `orders`: its NetworkPolicy (and Istio AuthorizationPolicy)
    admits that agent's pods only; the second starts referencing it → both; the second is
    deleted → one again."""
    ns = cluster.namespace("gateway-access")
    cluster.apply_dir(QUICKSTART, ns)  # `acme` references orders and ticketing
    acme = next(
        d for d in yaml.safe_load_all((QUICKSTART / "50-supportagent.yaml").read_text()) if d
    )
    beta = json.loads(json.dumps(acme))
    beta["metadata"] = {"name": "beta"}
    beta["spec"]["tools"] = [t for t in acme["spec"]["tools"] if t["adapter"] == "ticketing"]
    cluster.create(beta, ns)

    def callers_are(adapter: str, expected: list[str]) -> bool:
        return gateway_callers(cluster, ns, adapter) == expected

    def granted(adapter: str) -> list[str] | None:
        grants = cluster.get("v1", "ConfigMap", ns, f"{adapter}-gateway-grants")
        return (
            None if grants is None else sorted(json.loads(grants["data"]["grants.json"])["grants"])
        )

    cluster.wait_for("orders admits acme", lambda: callers_are("orders", ["acme"]))
    cluster.wait_for("ticketing admits both", lambda: callers_are("ticketing", ["acme", "beta"]))
    cluster.wait_for("orders grants acme", lambda: granted("orders") == ["acme"])
    adapter = cluster.get(f"{GROUP}/{VERSION}", "ToolAdapter", ns, "orders")
    policy = cluster.get("networking.k8s.io/v1", "NetworkPolicy", ns, "orders-gateway")
    grants = cluster.get("v1", "ConfigMap", ns, "orders-gateway-grants")
    assert adapter is not None and policy is not None and grants is not None
    assert owned_by(policy, adapter) and applied_by_switchboard(policy)
    assert owned_by(grants, adapter) and applied_by_switchboard(grants)
    gateway = cluster.get("apps/v1", "Deployment", ns, "orders-gateway")
    assert gateway is not None
    # The agents' pods run as their own ServiceAccount, which the agent owns. (`beta`, whose
    # intents use operations of `orders` it is not granted yet, renders nothing: the gateways
    # follow what agents reference, valid or not.)
    account = cluster.get("v1", "ServiceAccount", ns, "acme-ray")
    assert account is not None and owned_by(account, cluster.agent(ns, "acme"))
    # Applied once, not on every reconcile; deleted, it is applied again.
    cluster.delete("v1", "ServiceAccount", ns, "acme-ray")

    def recreated() -> bool:
        again = cluster.get("v1", "ServiceAccount", ns, "acme-ray")
        return again is not None and again["metadata"]["uid"] != account["metadata"]["uid"]

    cluster.wait_for("acme-ray re-created", recreated)

    def principals() -> list[str] | None:
        ap = cluster.get("security.istio.io/v1", "AuthorizationPolicy", ns, "orders-gateway")
        if ap is None:
            return None
        return [
            p
            for r in ap["spec"]["rules"]
            for f in r.get("from", [])
            for p in f["source"]["principals"]
        ]

    assert cluster.wait_for("orders' AuthorizationPolicy", principals) == [
        f"cluster.local/ns/{ns}/sa/acme-ray"
    ]

    cluster.patch(
        f"{GROUP}/{VERSION}", "SupportAgent", ns, "beta", {"spec": {"tools": acme["spec"]["tools"]}}
    )
    cluster.wait_for("orders admits both", lambda: callers_are("orders", ["acme", "beta"]))
    cluster.wait_for("orders' principals: both", lambda: len(principals() or []) == 2)
    cluster.wait_for("orders grants both", lambda: granted("orders") == ["acme", "beta"])
    # Only the grants changed: the gateway's pods were not rolled for a new agent.
    again = cluster.get("apps/v1", "Deployment", ns, "orders-gateway")
    assert again is not None
    assert again["metadata"]["generation"] == gateway["metadata"]["generation"]

    cluster.delete(f"{GROUP}/{VERSION}", "SupportAgent", ns, "beta")
    cluster.wait_for("orders admits acme again", lambda: callers_are("orders", ["acme"]))
    cluster.wait_for("ticketing admits acme again", lambda: callers_are("ticketing", ["acme"]))
    assert principals() == [f"cluster.local/ns/{ns}/sa/acme-ray"]
    cluster.wait_for("orders grants acme again", lambda: granted("orders") == ["acme"])
    # A deleted grants table is re-created by its adapter.
    cluster.delete("v1", "ConfigMap", ns, "orders-gateway-grants")
    cluster.wait_for("orders' grants re-created", lambda: granted("orders") == ["acme"])


def test_no_forbidden_call_under_the_charts_role(
    envtest: EnvTest, operator_install: OperatorInstall, operator: dict[str, Any], quickstart: str
) -> None:
    """Runs last in this module: every request the operator made so far was allowed."""
    events = envtest.audit_events()[operator["audit_start"] :]
    mine = [e for e in events if e.get("user", {}).get("username") == operator_install.user]
    denied = [
        f"{e['verb']} {e['requestURI']}"
        for e in mine
        if e.get("responseStatus", {}).get("code") == 403
    ]
    assert len(mine) > 50, "the audit log shows (almost) no requests from the operator"
    assert denied == []


@pytest.fixture(scope="module")
def invalid_ns(cluster: Cluster, operator: dict[str, Any]) -> str:
    return cluster.namespace("invalid")
