"""Text outside the Basic Multilingual Plane (emoji, mathematical letters) in user strings that
reach applied objects as they are, against the real API server.

Server-side apply sends `application/apply-patch+yaml`; a JSON body with `\\ud83d\\ude9a`
surrogate escapes (what `json.dumps` writes by default) is rejected by the server's YAML decoder
with `400 ... found invalid Unicode character escape code`, and no retry can heal that. The
operator sends UTF-8 instead, and treats a 400 as ApplyFailed, not as a temporary failure.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
import yaml

from support.cluster import Cluster
from support.manifests import quickstart_documents
from switchboard.operator.kube import KubeError

pytestmark = pytest.mark.envtest

# A truck, Fraktur letters and a face: all above U+FFFF.
ASTRAL = "\U0001f69a \U0001d518\U0001d52b\U0001d526 \U0001f600"


@pytest.fixture(scope="module")
def operator(run_operator: Any) -> Iterator[dict[str, Any]]:
    with run_operator() as running:
        yield running


def quickstart_with_astral_text() -> list[dict[str, Any]]:
    docs = quickstart_documents()
    for doc in docs:
        if doc["kind"] == "ToolAdapter" and doc["metadata"]["name"] == "orders":
            # An input schema travels as it is in the gateway's configuration (an env var).
            order_id = doc["spec"]["operations"][0]["inputSchema"]["properties"]["order_id"]
            order_id["description"] = f"Order number {ASTRAL}"
        if doc["kind"] == "SupportAgent":
            plan = doc["spec"]["intents"][0]
            plan["answerTemplate"] = f"{ASTRAL} " + plan["answerTemplate"]
    return docs


def test_astral_plane_text_reaches_the_applied_children(
    cluster: Cluster, operator: dict[str, Any]
) -> None:
    ns = cluster.namespace("unicode")
    for doc in quickstart_with_astral_text():
        cluster.create(doc, ns)
    deployment = cluster.wait_for(
        "orders gateway Deployment",
        lambda: cluster.get("apps/v1", "Deployment", ns, "orders-gateway"),
    )
    env = deployment["spec"]["template"]["spec"]["containers"][0]["env"]
    config = json.loads(next(e["value"] for e in env if e["name"] == "SWITCHBOARD_GATEWAY_CONFIG"))
    schema = config["operations"][0]["input_schema"]
    assert schema["properties"]["order_id"]["description"] == f"Order number {ASTRAL}"
    rayservice = cluster.wait_for(
        "RayService acme", lambda: cluster.get("ray.io/v1", "RayService", ns, "acme")
    )
    assert ASTRAL in rayservice["spec"]["serveConfigV2"] or ASTRAL in json.dumps(
        yaml.safe_load(rayservice["spec"]["serveConfigV2"]), ensure_ascii=False
    )
    cluster.make_gateways_available(ns)
    cluster.make_rayservice_running(ns, "acme")
    for kind, name in (("ToolAdapter", "orders"), ("SupportAgent", "acme")):
        ready = cluster.wait_for(
            f"{kind} {name} Ready",
            cluster.with_gateways_available(
                ns,
                lambda k=kind, n=name: (c := cluster.condition(k, ns, n)) and c["status"] == "True",
            ),
        )
        assert ready
    assert ("Warning", "ApplyFailed") not in cluster.events(ns, "orders")


@pytest.mark.parametrize(
    ("status", "retryable"), [(400, False), (403, False), (422, False), (409, True), (503, True)]
)
def test_a_bad_request_is_not_retried_like_a_temporary_failure(
    status: int, retryable: bool
) -> None:
    assert KubeError(status, "x", "y").retryable is retryable
