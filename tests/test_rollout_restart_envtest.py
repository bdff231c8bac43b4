"""An operator restarted in the middle of a progressive ModelRollout resumes at the same step,
from the rollout's status: no step lost, none repeated. (Its own module, so that no other
operator is running while this one stops.)"""

from __future__ import annotations

import time
from typing import Any

import pytest
import yaml

from support.cluster import Cluster
from support.paths import EXAMPLES, QUICKSTART

pytestmark = pytest.mark.envtest

API = "switchboard.dev/v1alpha1"


def rollout_status(cluster: Cluster, ns: str, name: str) -> dict[str, Any]:
    body = cluster.get(API, "ModelRollout", ns, name) or {}
    return dict(body.get("status") or {})


def test_operator_restart_resumes_at_the_same_step(cluster: Cluster, run_operator: Any) -> None:
    ns = "rollout-restart"
    cluster.namespace(ns)
    cluster.apply_dir(QUICKSTART, ns)
    body = yaml.safe_load((EXAMPLES / "rollout" / "10-modelrollout.yaml").read_text())
    body["spec"]["progressive"] = {"steps": [10, 40, 70, 100], "intervalSeconds": 6}
    # No analysis metrics: the steps go by time alone, with no Prometheus to ask.
    cluster.create(body, ns)
    name = body["metadata"]["name"]
    with run_operator():
        cluster.wait_for(
            "step 2", lambda: rollout_status(cluster, ns, name).get("stepIndex") == 1, timeout=40
        )
    before = rollout_status(cluster, ns, name)  # as the stopped operator left it
    assert before["phase"] == "Progressing"
    time.sleep(2)  # no operator: nothing moves
    assert rollout_status(cluster, ns, name) == before
    with run_operator():
        time.sleep(2)  # within the step's 6 s interval
        during = rollout_status(cluster, ns, name)
        if during["stepIndex"] == before["stepIndex"]:  # same step, same start: resumed
            assert during["stepStartedAt"] == before["stepStartedAt"]
        cluster.wait_for(
            "Succeeded",
            lambda: rollout_status(cluster, ns, name).get("phase") == "Succeeded",
            timeout=60,
        )
    events = cluster.core.list_namespaced_event(ns).items
    steps = sorted(
        (e.message, e.count or 1)
        for e in events
        if e.involved_object.name == name and e.reason == "StepStarted"
    )
    # Each step once: none lost, none repeated.
    assert [message for message, _ in steps] == [
        "Step 1/4: 10%",
        "Step 2/4: 40%",
        "Step 3/4: 70%",
        "Step 4/4: 100%",
    ], steps
    assert all(count == 1 for _, count in steps), steps
