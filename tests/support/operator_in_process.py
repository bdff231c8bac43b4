"""The operator (``switchboard.operator.main``) run by kopf in this process, against the envtest
server, as the chart runs it: peering on, under a ServiceAccount token's kubeconfig."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from kopf.testing import KopfRunner

from .envtest import EnvTest
from .ports import free_port


@contextlib.contextmanager
def environ(values: dict[str, str]) -> Iterator[None]:
    """``os.environ`` with ``values`` set, restored on the way out (kopf and the operator
    read their settings from the environment of this process)."""
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@contextlib.contextmanager
def operator_in_process(
    envtest: EnvTest,
    kubeconfig: Path,
    env: dict[str, str] | None = None,
    namespaces: tuple[str, ...] = (),
) -> Iterator[dict[str, Any]]:
    """Yields ``{"runner", "metrics_port", "audit_start"}`` (the audit log's length when it
    started); all namespaces unless ``namespaces``. It must stop cleanly: an exception or a
    non-zero exit fails the caller with kopf's output."""
    metrics_port = free_port()
    wanted = {
        "KUBECONFIG": str(kubeconfig),
        "SWITCHBOARD_METRICS_PORT": str(metrics_port),
        **(env or {}),
    }
    peering = ["--peering", "switchboard", "--priority", "100"]
    scope = [f"--namespace={ns}" for ns in namespaces] or ["-A"]
    args = ["run", *scope, *peering, "-m", "switchboard.operator.main"]
    audit_start = len(envtest.audit_events())
    with environ(wanted), KopfRunner(args, timeout=60) as runner:
        yield {"runner": runner, "metrics_port": metrics_port, "audit_start": audit_start}
    assert runner.exception is None, runner.output
    assert runner.exit_code == 0, runner.output
