"""The chart's installs on a real kube-apiserver, beyond the default one that
tests/test_operator_envtest.py runs the whole scenario under:

* a namespace-scoped install (`rbac.scope=namespace`): the operator serves its namespace with
  Roles only, makes no forbidden call, and holds no right anywhere else;
* several replicas (`--peering`, as the chart's Deployment runs them): one acts, the other
  stands by (still live for its probes) and takes over when the first stops.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from support.cluster import GROUP, VERSION, Cluster
from support.envtest import EnvTest
from support.helm import OperatorInstall
from support.paths import QUICKSTART
from support.ports import free_port

# An agent with no tools and no knowledge base: only its RayService and routes to wait for.
AGENT: dict[str, Any] = {
    "apiVersion": f"{GROUP}/{VERSION}",
    "kind": "SupportAgent",
    "spec": {"nlu": {"modelUri": "file:///models/nlu/banking77-int8"}},
}


def agent(name: str) -> dict[str, Any]:
    return {**AGENT, "metadata": {"name": name}}


def denied_requests(envtest: EnvTest, user: str, since: int) -> tuple[int, list[str]]:
    """How many requests `user` made since audit event `since`, and the forbidden ones."""
    mine = [e for e in envtest.audit_events()[since:] if e["user"]["username"] == user]
    denied = [f"{e['verb']} {e['requestURI']}" for e in mine if e["responseStatus"]["code"] == 403]
    return len(mine), denied


def can(api: client.ApiClient, user: str, verb: str, resource: str, namespace: str = "") -> bool:
    """Asked as the admin (SubjectAccessReview), so no denied request lands in the audit log."""
    review = client.V1SubjectAccessReview(
        spec=client.V1SubjectAccessReviewSpec(
            user=user,
            resource_attributes=client.V1ResourceAttributes(
                verb=verb, group=GROUP, resource=resource, namespace=namespace or None
            ),
        )
    )
    answer = client.AuthorizationV1Api(api).create_subject_access_review(review)
    return bool(answer.status.allowed)


# --------------------------------------------------------------------------------------------
# Namespace-scoped install


@pytest.fixture(scope="module")
def team_namespaces(cluster: Cluster) -> tuple[str, str]:
    return cluster.namespace("team-a"), cluster.namespace("team-b")


@pytest.fixture(scope="module")
def namespaced_install(install_chart: Any, team_namespaces: tuple[str, str]) -> OperatorInstall:
    return install_chart(
        "switchboard-team-a",
        "team-a-system",
        "rbac.scope=namespace",
        f"operator.watchNamespaces={{{team_namespaces[0]}}}",
    )


def test_namespaced_install_serves_its_namespace_with_roles_only(
    envtest: EnvTest,
    cluster: Cluster,
    run_operator: Any,
    namespaced_install: OperatorInstall,
    team_namespaces: tuple[str, str],
) -> None:
    served, other = team_namespaces
    user = namespaced_install.user
    rbac = client.RbacAuthorizationV1Api(cluster.api)
    bindings = rbac.list_cluster_role_binding(label_selector="app.kubernetes.io/instance")
    assert not [b for b in bindings.items if b.metadata.name == namespaced_install.release]
    assert can(cluster.api, user, "patch", "supportagents/status", served)
    assert not can(cluster.api, user, "list", "supportagents", other)
    assert not can(cluster.api, user, "list", "supportagents")  # cluster-wide
    peering = cluster.get("kopf.dev/v1", "KopfPeering", served, "switchboard")
    assert peering is not None

    cluster.apply_dir(QUICKSTART, served)
    cluster.create(agent("acme"), other)  # not this install's: left alone
    with run_operator(install=namespaced_install, namespaces=(served,)) as running:
        cluster.wait_for(
            "gateway Deployments", lambda: len(cluster.list("apps/v1", "Deployment", served)) == 2
        )
        cluster.make_gateways_available(served)
        cluster.wait_for(
            "RayService acme", lambda: cluster.get("ray.io/v1", "RayService", served, "acme")
        )
        cluster.make_rayservice_running(served, "acme")
        cluster.wait_for(
            "agent Ready",
            cluster.with_gateways_available(
                served,
                lambda: (
                    (cluster.condition("SupportAgent", served, "acme") or {}).get("status")
                    == "True"
                ),
            ),
        )
        # kopf registered this replica in the namespace's peering object.
        peers = (cluster.get("kopf.dev/v1", "KopfPeering", served, "switchboard") or {}).get(
            "status"
        )
        assert peers
        requests, denied = denied_requests(envtest, user, running["audit_start"])
    assert requests > 30
    assert denied == []
    assert cluster.get("ray.io/v1", "RayService", other, "acme") is None
    assert "status" not in cluster.agent(other, "acme")


# --------------------------------------------------------------------------------------------
# Replicas with peering (the chart's default: two)


class OperatorProcess:
    """`switchboard operator` as the chart's container runs it, in a subprocess."""

    def __init__(self, name: str, kubeconfig: Path, priority: int, log: Path) -> None:
        self.name = name
        self.health_port = free_port()
        self.log = log
        switchboard = Path(sys.executable).with_name("switchboard")
        self.process = subprocess.Popen(
            [
                str(switchboard),
                "operator",
                "--all-namespaces",
                "--peering=switchboard",
                f"--priority={priority}",
                f"--metrics-port={free_port()}",
                f"--liveness-port={self.health_port}",
            ],
            env={
                **os.environ,
                "KUBECONFIG": str(kubeconfig),
                "POD_ID": name,
                "PYTHONUNBUFFERED": "1",
            },
            stdout=log.open("w"),
            stderr=subprocess.STDOUT,
        )

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def healthy(self) -> bool:
        try:
            url = f"http://127.0.0.1:{self.health_port}/healthz"
            with urllib.request.urlopen(url, timeout=2) as reply:
                return bool(reply.status == 200)
        except OSError:
            return False

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout=30)


@pytest.fixture()
def replicas(operator_install: OperatorInstall, tmp_path: Path) -> Iterator[list[OperatorProcess]]:
    procs = [
        OperatorProcess(name, operator_install.kubeconfig, priority, tmp_path / f"{name}.log")
        for name, priority in (("operator-a", 200), ("operator-b", 100))
    ]
    try:
        yield procs
    finally:
        for proc in procs:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.stop()
            if proc.process.poll() is None:
                proc.process.kill()
            print(f"--- {proc.name} ---\n{proc.output()}")  # shown when the test fails


def test_replicas_elect_one_operator_and_fail_over(
    envtest: EnvTest,
    cluster: Cluster,
    operator_install: OperatorInstall,
    replicas: list[OperatorProcess],
) -> None:
    ns = cluster.namespace("ha")
    active, standby = replicas
    audit_start = len(envtest.audit_events())
    cluster.wait_for("both replicas live", lambda: active.healthy() and standby.healthy(), 60)
    peers = cluster.wait_for(
        "both peers registered",
        lambda: (
            (s := (cluster.get("kopf.dev/v1", "ClusterKopfPeering", "", "switchboard") or {})
             .get("status") or {})
            and {"operator-a", "operator-b"} <= set(s)
            and s
        ),
        timeout=30,
    )  # fmt: skip
    assert {peers["operator-a"]["priority"], peers["operator-b"]["priority"]} == {200, 100}

    cluster.create(agent("first"), ns)
    # The leader's first reconcile waits for kopf's peering handshake: generous on a busy box.
    cluster.wait_for(
        "RayService first", lambda: cluster.get("ray.io/v1", "RayService", ns, "first"), 90
    )
    cluster.wait_for("the active replica's handler log", lambda: "[ha/first]" in active.output())
    # kopf starts a peered replica paused until the peering says it leads (so the standby may
    # never log "Pausing"): what shows it stands by is that it reconciles nothing. (Its kopf
    # still runs the handlers that only index and mark objects; they log nothing.)
    time.sleep(2)
    assert "[ha/first]" not in standby.output()

    # The active replica stops (a rolling update, a drained node): the standby takes over.
    assert active.stop() == 0, active.output()
    cluster.create(agent("second"), ns)
    cluster.wait_for(
        "RayService second", lambda: cluster.get("ray.io/v1", "RayService", ns, "second")
    )
    cluster.wait_for("the new active's handler log", lambda: "[ha/second]" in standby.output())
    assert standby.healthy()
    time.sleep(1)
    requests, denied = denied_requests(envtest, operator_install.user, audit_start)
    assert requests > 20
    assert denied == []


# --------------------------------------------------------------------------------------------
# A refusal that retrying cannot fix is reported in status, not only in the log


def test_a_refused_apply_is_a_condition_and_an_event(
    cluster: Cluster, run_operator: Any, install_chart: Any
) -> None:
    """A cluster policy narrower than the chart's (here: its Role edited to deny HPAs) makes
    the API server refuse a child with 403 → Ready=False ApplyFailed, phase Failed, an Event."""
    ns = cluster.namespace("team-c")
    install = install_chart(
        "switchboard-team-c",
        "team-c-system",
        "rbac.scope=namespace",
        f"operator.watchNamespaces={{{ns}}}",
    )
    rbac = client.RbacAuthorizationV1Api(cluster.api)
    role = rbac.read_namespaced_role(install.release, ns)
    role.rules = [r for r in role.rules if "horizontalpodautoscalers" not in r.resources]
    rbac.replace_namespaced_role(install.release, ns, role)
    for name in ("10-secrets.yaml", "20-tooladapter-orders.yaml"):
        cluster.apply_dir(QUICKSTART / name, ns)
    with run_operator(install=install, namespaces=(ns,)):
        ready = cluster.wait_for_reason("ToolAdapter", ns, "orders", "ApplyFailed")
        assert ready["status"] == "False"
        assert "ToolAdapter team-c/orders" in ready["message"]
        assert "horizontalpodautoscalers" in ready["message"]
        adapter = cluster.get(f"{GROUP}/{VERSION}", "ToolAdapter", ns, "orders")
        assert adapter["status"]["phase"] == "Failed"
        cluster.wait_for(
            "ApplyFailed event", lambda: ("Warning", "ApplyFailed") in cluster.events(ns, "orders")
        )
