"""An operator restarted in the middle of a progressive ModelRollout resumes at the same step,
from the rollout's status: no step lost, none repeated. (Its own module, so that no other
operator is running while this one stops.)"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
import yaml

pytestmark = pytest.mark.envtest

REPO = Path(__file__).resolve().parents[1]
API = "switchboard.dev/v1alpha1"


def rollout_status(cluster: Any, ns: str, name: str) -> dict[str, Any]:
    body = cluster.get(API, "ModelRollout", ns, name) or {}
    return dict(body.get("status") or {})


def test_operator_restart_resumes_at_the_same_step(cluster: Any, run_operator: Any) -> None:
    ns = "rollout-restart"
    cluster.namespace(ns)
    cluster.apply_dir(REPO / "examples" / "quickstart", ns)
    body = yaml.safe_load((REPO / "examples" / "rollout" / "10-modelrollout.yaml").read_text())
    body["spec"]["progressive"] = {"steps": [10, 40, 70, 100], "intervalSeconds": 6}
    # An empty Prometheus answer would hold the rollout: this one has no analysis metrics.
    cluster.create(body, ns)
    name = body["metadata"]["name"]
    with run_operator():
        cluster.wait_for(
            "step 2", lambda: rollout_status(cluster, ns, name).get("stepIndex") == 1, timeout=40
        )
        before = rollout_status(cluster, ns, name)
    time.sleep(2)  # no operator: nothing moves
    assert rollout_status(cluster, ns, name) == before
    with run_operator():
        time.sleep(3)
        during = rollout_status(cluster, ns, name)
        assert during["stepIndex"] == 1
        assert during["stepStartedAt"] == before["stepStartedAt"]
        cluster.wait_for(
            "Succeeded",
            lambda: rollout_status(cluster, ns, name).get("phase") == "Succeeded",
            timeout=60,
        )
    steps = [e for e in cluster.events(ns, name) if e == ("Normal", "StepStarted")]
    assert len(steps) == 4  # each step once: none lost, none repeated
