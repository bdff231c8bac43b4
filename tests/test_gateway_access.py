"""Who may call a tool gateway (issue 15, item 3), without an API server: the NetworkPolicy and
Istio AuthorizationPolicy each ToolAdapter renders from the agents that reference it, their
offline validation (built-in schema; upstream Istio CRD), the agents' Ray ServiceAccount, the
operator's scraper settings, and which marks wake an adapter's worker when an agent starts or
stops referencing it. The envtest tier (tests/test_operator_envtest.py) runs the same on a real
API server under the chart's Role."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from typing import Any

import pytest
import yaml

from support.manifests import example_documents
from support.paths import QUICKSTART
from support.schemas import K8S_VERSIONS
from switchboard.operator.api.tooladapter import ToolAdapterSpec
from switchboard.operator.api.validation import validate_spec
from switchboard.operator.config import OperatorConfig, parse_labels, scrapers_of
from switchboard.operator.indexes import Lookup
from switchboard.operator.render import GatewayAccess, Parent, Scrapers, render_manifests
from switchboard.operator.render.access import (
    principal,
    render_authorizationpolicy,
    render_networkpolicy,
    render_service_account,
)
from switchboard.operator.render.names import AGENT_LABEL, ray_service_account_name
from switchboard.operator.workers import Marks, adapter_references
from switchboard.serving.config import GATEWAY_HTTP_PORT

NS = "shop"
ORDERS = Parent("ToolAdapter", "orders", NS, uid="u-orders")


def callers(policy: dict[str, Any]) -> list[str]:
    """The agents a NetworkPolicy admits by name (empty: none)."""
    for rule in policy["spec"]["ingress"]:
        for peer in rule["from"]:
            for expr in peer.get("podSelector", {}).get("matchExpressions", []):
                if expr["key"] == AGENT_LABEL:
                    assert expr["operator"] == "In"
                    return list(expr["values"])
    return []


@pytest.mark.parametrize("agents", [(), ("acme",), ("beta", "acme", "acme")])
def test_networkpolicy_admits_the_referencing_agents_and_scrapers_only(
    agents: tuple[str, ...],
) -> None:
    policy = render_networkpolicy(ORDERS, GatewayAccess.of(agents))
    spec = policy["spec"]
    assert policy["metadata"]["name"] == "orders-gateway"
    assert policy["metadata"]["ownerReferences"][0]["uid"] == "u-orders"
    assert spec["podSelector"] == {
        "matchLabels": {
            "app.kubernetes.io/name": "tool-gateway",
            "switchboard.dev/tool-adapter": "orders",
        }
    }
    assert spec["policyTypes"] == ["Ingress"]  # egress untouched: the gateway calls out
    assert callers(policy) == sorted(set(agents))
    # One rule for the agents (when any), one for the scrapers; each only the HTTP port.
    assert len(spec["ingress"]) == (2 if agents else 1)
    for rule in spec["ingress"]:
        assert rule["ports"] == [{"protocol": "TCP", "port": GATEWAY_HTTP_PORT}]
        [peer] = rule["from"]
        assert "ipBlock" not in peer
    if agents:
        assert spec["ingress"][0]["from"][0]["podSelector"]["matchLabels"] == {
            "app.kubernetes.io/component": "ray"
        }
    # Prometheus, in any namespace, by default.
    assert spec["ingress"][-1]["from"] == [
        {
            "namespaceSelector": {},
            "podSelector": {"matchLabels": {"app.kubernetes.io/name": "prometheus"}},
        }
    ]


def test_scrapers_are_configurable() -> None:
    scrapers = Scrapers(pod_labels={}, namespace_labels={"team": "monitoring"})
    policy = render_networkpolicy(ORDERS, GatewayAccess.of(["acme"], scrapers))
    assert policy["spec"]["ingress"][-1]["from"] == [
        {"namespaceSelector": {"matchLabels": {"team": "monitoring"}}, "podSelector": {}}
    ]


def test_scraper_settings_parse() -> None:
    assert parse_labels("") == {}
    assert parse_labels("a=b, c.io/d=e") == {"a": "b", "c.io/d": "e"}
    with pytest.raises(ValueError):
        parse_labels("novalue")
    assert scrapers_of(None, None) == Scrapers()
    assert scrapers_of("app=prom", "kubernetes.io/metadata.name=monitoring") == Scrapers(
        {"app": "prom"}, {"kubernetes.io/metadata.name": "monitoring"}
    )
    env = {"SWITCHBOARD_SCRAPER_NAMESPACE_LABELS": "team=mon"}
    assert OperatorConfig.from_environment(env).scrapers == Scrapers(
        {"app.kubernetes.io/name": "prometheus"}, {"team": "mon"}
    )


@pytest.mark.parametrize("agents", [(), ("acme", "beta")])
def test_authorizationpolicy_allows_the_agents_principals_and_metrics(
    agents: tuple[str, ...], schemas: Any
) -> None:
    policy = render_authorizationpolicy(ORDERS, GatewayAccess.of(agents, istio=True))
    spec = policy["spec"]
    assert spec["action"] == "ALLOW"
    assert spec["selector"]["matchLabels"]["switchboard.dev/tool-adapter"] == "orders"
    principals = [
        p for r in spec["rules"] for f in r.get("from", []) for p in f["source"]["principals"]
    ]
    assert principals == [f"cluster.local/ns/{NS}/sa/{a}-ray" for a in agents]
    # Anything else only GET /metrics (deny by default: no rule, no access).
    assert spec["rules"][-1] == {"to": [{"operation": {"methods": ["GET"], "paths": ["/metrics"]}}]}
    assert schemas.crd_errors(policy) == []
    assert schemas.metadata_errors(policy) == []


@pytest.mark.parametrize("version", K8S_VERSIONS)
@pytest.mark.parametrize("agents", [(), ("acme", "beta")])
def test_networkpolicy_matches_the_builtin_schema(
    agents: tuple[str, ...], version: str, schemas: Any
) -> None:
    policy = render_networkpolicy(ORDERS, GatewayAccess.of(agents))
    assert schemas.builtin_errors(policy, version) == []


def test_agents_ray_pods_run_as_their_own_service_account() -> None:
    objects = render_manifests(example_documents("quickstart"))
    [sa] = [o for o in objects if o["kind"] == "ServiceAccount"]
    assert sa["metadata"]["name"] == ray_service_account_name("acme") == "acme-ray"
    [rs] = [o for o in objects if o["kind"] == "RayService"]
    cluster = rs["spec"]["rayClusterConfig"]
    templates = [cluster["headGroupSpec"]["template"]] + [
        g["template"] for g in cluster["workerGroupSpecs"]
    ]
    for template in templates:
        assert template["spec"]["serviceAccountName"] == "acme-ray"
        # What the NetworkPolicy selects the pods by.
        labels = template["metadata"]["labels"]
        assert labels[AGENT_LABEL] == "acme"
        assert labels["app.kubernetes.io/component"] == "ray"
    assert principal("default", "acme") == "cluster.local/ns/default/sa/acme-ray"


def test_render_prints_the_gateways_policies() -> None:
    """`switchboard render -f examples/quickstart`: a NetworkPolicy and an AuthorizationPolicy per
    ToolAdapter, each admitting the quickstart's agent; `--no-istio` drops the latter."""
    command = [sys.executable, "-P", "-m", "switchboard.operator.cli", "render", "-f"]
    out = subprocess.run([*command, str(QUICKSTART)], capture_output=True, text=True, check=True)
    objects = list(yaml.safe_load_all(out.stdout))
    policies = {(o["kind"], o["metadata"]["name"]): o for o in objects}
    for adapter in ("orders", "ticketing"):
        assert callers(policies["NetworkPolicy", f"{adapter}-gateway"]) == ["acme"]
        ap = policies["AuthorizationPolicy", f"{adapter}-gateway"]
        assert ap["spec"]["rules"][0]["from"][0]["source"]["principals"] == [
            "cluster.local/ns/default/sa/acme-ray"
        ]
    plain = subprocess.run(
        [*command, str(QUICKSTART), "--no-istio"], capture_output=True, text=True, check=True
    )
    names = {(o["kind"], o["metadata"]["name"]) for o in yaml.safe_load_all(plain.stdout)}
    assert ("NetworkPolicy", "orders-gateway") in names
    assert ("AuthorizationPolicy", "orders-gateway") not in names


def test_an_adapter_no_agent_references_admits_only_scrapers() -> None:
    docs = [d for d in example_documents("quickstart") if d.get("kind") != "SupportAgent"]
    objects = render_manifests(docs)
    policies = [o for o in objects if o["kind"] == "NetworkPolicy"]
    assert len(policies) == 2
    assert all(callers(p) == [] and len(p["spec"]["ingress"]) == 1 for p in policies)


# --- the adapter's worker follows the agents that reference it ----------------------------


def agent(name: str, tools: tuple[str, ...]) -> dict[str, Any]:
    return {
        "apiVersion": "switchboard.dev/v1alpha1",
        "kind": "SupportAgent",
        "metadata": {"name": name, "namespace": NS},
        "spec": {"tools": [{"adapter": t, "operations": ["x"]} for t in tools]},
    }


ADAPTER = {"kind": "ToolAdapter", "metadata": {"name": "orders", "namespace": NS}}


def test_adapter_references_are_the_agents_that_reference_it() -> None:
    one = Lookup.of([agent("acme", ("orders",)), agent("beta", ("ticketing",))])
    both = Lookup.of([agent("acme", ("orders",)), agent("beta", ("orders", "ticketing"))])
    gone = Lookup.of([agent("beta", ("orders",))])
    assert adapter_references(ADAPTER, one) == (("acme", ("x",)),)
    assert adapter_references(ADAPTER, both) == (("acme", ("x",)), ("beta", ("x",)))
    assert adapter_references(ADAPTER, gone) == (("beta", ("x",)),)
    # A change of the operations granted re-renders the gateway's grants table too.
    more = Lookup.of(
        [
            {
                **agent("beta", ()),
                "spec": {"tools": [{"adapter": "orders", "operations": ["y", "x"]}]},
            }
        ]
    )
    assert adapter_references(ADAPTER, more) == (("beta", ("x", "y")),)
    # What the reconciler renders from the same lookup.
    assert callers(
        render_networkpolicy(ORDERS, GatewayAccess.of(both.agents_granted(NS, "orders")))
    ) == [
        "acme",
        "beta",
    ]


def test_an_agent_applies_its_service_account_only_while_the_index_lacks_it() -> None:
    """Its content depends only on the agent: applied once, not on every reconcile; the
    index's view of it counts as seen by the reconcile (no second reconcile for its event)."""
    from switchboard.operator.indexes import ChildView
    from switchboard.operator.render.names import metadata
    from switchboard.operator.resources.supportagent import APPLY_ONCE_KINDS, present_children

    parent = Parent("SupportAgent", "acme", NS, uid="u-acme")
    account = render_service_account(parent)
    rayservice = {"apiVersion": "ray.io/v1", "kind": "RayService"}
    rayservice["metadata"] = metadata(parent, "acme", "ray")
    children = [rayservice, account]
    assert present_children(Lookup.of([]), parent, children, APPLY_ONCE_KINDS) == (
        children,
        frozenset(),
    )
    live = [{**child, "metadata": {**child["metadata"], "uid": "u-child"}} for child in children]
    assert present_children(Lookup.of(live), parent, children, APPLY_ONCE_KINDS) == (
        [rayservice],  # rendered from the spec: always applied
        frozenset({ChildView.of(live[1])}),
    )
    # Another agent's account is no reason to skip this one's.
    other = render_service_account(Parent("SupportAgent", "beta", NS, uid="u-beta"))
    assert present_children(Lookup.of([other]), parent, children, APPLY_ONCE_KINDS) == (
        children,
        frozenset(),
    )


def test_an_agent_event_marks_every_adapter_of_its_namespace() -> None:
    """An agent that stops referencing an adapter is no longer in the index that would name
    the adapter: its event marks all adapters of the namespace, and each worker compares."""

    async def scenario() -> list[bool]:
        marks = Marks()
        keys = [
            ("ToolAdapter", NS, "orders"),
            ("ToolAdapter", "other", "orders"),
            ("SupportAgent", NS, "acme"),
        ]
        with (
            marks.registered(keys[0]) as a,
            marks.registered(keys[1]) as b,
            marks.registered(keys[2]) as c,
        ):
            marks.mark_namespace("ToolAdapter", NS)
            return [w._event.is_set() for w in (a, b, c)]

    assert asyncio.run(scenario()) == [True, False, False]


def test_validated_adapter_spec_renders_policies_with_the_gateway() -> None:
    from switchboard.operator.render import render_adapter

    spec = validate_spec(
        ToolAdapterSpec,
        next(d for d in example_documents("quickstart") if d.get("kind") == "ToolAdapter")["spec"],
    )
    kinds = [o["kind"] for o in render_adapter(ORDERS, spec)]
    assert kinds == [
        "ConfigMap",
        "Deployment",
        "Service",
        "HorizontalPodAutoscaler",
        "NetworkPolicy",
    ]
    kinds = [
        o["kind"] for o in render_adapter(ORDERS, spec, access=GatewayAccess.of(["a"], istio=True))
    ]
    assert kinds[-2:] == ["NetworkPolicy", "AuthorizationPolicy"]
