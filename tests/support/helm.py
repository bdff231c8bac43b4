"""The Helm chart (``charts/switchboard``) through a real helm binary: templates, and installs
into the envtest server whose operator then acts with its ServiceAccount's token."""

from __future__ import annotations

import contextlib
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from kubernetes import client

from .binaries import executable_from_env
from .envtest import EnvTest
from .paths import CHART_DIR

DEFAULT_HELM = Path.home() / ".cache" / "switchboard" / "helm-3.6.2" / "helm"
OPERATOR_NAMESPACE = "switchboard-system"
# The release the envtest suite installs: its full name is the operator's service account.
CHART_RELEASE = "switchboard-operator"
# `helm template` knows no cluster: these make it render for a current one (helm 3.6's own
# defaults predate policy/v1). `api_versions=()` renders as for an old cluster.
MODERN_API_VERSIONS = ("policy/v1/PodDisruptionBudget",)
TOKEN_LIFETIME_S = 24 * 3600


class HelmError(RuntimeError):
    """helm failed where the caller expected it to succeed (its stderr in the message)."""


def helm_binary() -> Path:
    """``make helm`` / ``tests/helm/get-helm.sh`` put helm 3.6.2 here; or ``SWITCHBOARD_HELM``."""
    return executable_from_env("SWITCHBOARD_HELM", DEFAULT_HELM, "run `make helm`")


def run_helm(helm: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """helm's exit status and output, for callers that look at both."""
    return subprocess.run(
        [str(helm), *args], capture_output=True, text=True, timeout=120, check=False
    )


def _check(helm: Path, *args: str) -> subprocess.CompletedProcess[str]:
    done = run_helm(helm, *args)
    if done.returncode != 0:
        raise HelmError(f"helm {' '.join(args)} failed:\n{done.stderr}")
    return done


def helm_template(
    helm: Path,
    *sets: str,
    values: dict[str, Any] | None = None,
    namespace: str = OPERATOR_NAMESPACE,
    release: str = CHART_RELEASE,
    crds: bool = False,
    api_versions: tuple[str, ...] = MODERN_API_VERSIONS,
) -> list[dict[str, Any]]:
    """``helm template`` of the chart → its objects (CRDs included with ``crds=True``).

    Each of ``sets`` goes to ``--set``; ``values`` through a values file. A failing render
    raises :class:`HelmError` with helm's message.
    """
    args = ["template", release, str(CHART_DIR), "--namespace", namespace]
    for api_version in api_versions:
        args += ["--api-versions", api_version]
    if crds:
        args.append("--include-crds")
    for item in sets:
        args += ["--set", item]
    with contextlib.ExitStack() as stack:
        if values is not None:
            tmp = stack.enter_context(tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=True))
            yaml.safe_dump(values, tmp)
            tmp.flush()
            args += ["--values", tmp.name]
        done = _check(helm, *args)
    return [doc for doc in yaml.safe_load_all(done.stdout) if doc]


@dataclass(frozen=True)
class OperatorInstall:
    """The chart installed by ``helm install`` into the test server, and a token of its
    ServiceAccount (a real TokenRequest: the API server signs it and RBAC sees the account)."""

    release: str
    namespace: str
    token: str
    kubeconfig: Path

    @property
    def user(self) -> str:
        """The ServiceAccount's user name (the chart names the account after the release)."""
        return f"system:serviceaccount:{self.namespace}:{self.release}"


def install_chart(
    envtest: EnvTest, helm: Path, release: str, namespace: str, *sets: str
) -> OperatorInstall:
    """``helm install`` the chart (its CRDs must be installed already, stripped for the 1.20
    server: :func:`support.crds.install_envtest_crds`) and request a token for its
    ServiceAccount. Name releases ``switchboard-*`` so the account is named after the release.
    """
    args = ["install", release, str(CHART_DIR), "--namespace", namespace, "--create-namespace"]
    args += ["--skip-crds", "--wait=false", "--kubeconfig", str(envtest.kubeconfig)]
    for item in sets:
        args += ["--set", item]
    _check(helm, *args)
    with contextlib.closing(envtest.client_for(envtest.admin_token)) as admin:
        request = client.CoreV1Api(admin).create_namespaced_service_account_token(
            release, namespace, {"spec": {"expirationSeconds": TOKEN_LIFETIME_S}}
        )
    token = request.status.token
    return OperatorInstall(release, namespace, token, envtest.kubeconfig_for(token, release))
