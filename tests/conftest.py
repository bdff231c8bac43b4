"""Fixtures for the whole suite, wired from the helpers in ``tests/support`` (see there for
what each does; the benchmarks use the same helpers).

What the envtest fixtures need, and how to get it:

* The binaries: ``make envtest`` runs ``tests/envtest/build.sh``, which compiles kube-apiserver
  v1.20.2 from Debian bookworm's ``kubernetes`` source package and takes etcd 3.4.23 from Debian
  (about 10 minutes once, then cached in ``~/.cache/switchboard/envtest-1.20``). Point
  ``SWITCHBOARD_ENVTEST_BIN`` at another folder holding ``kube-apiserver`` and ``etcd`` to use
  that instead. Missing binaries, or a server that does not start, fail the tests: never skipped.
* Upstream Istio CRDs: ``installed_crds`` reads them from the project's shared data folder
  ``../shared`` (it sits beside the checkout, locally and in CI), at
  ``schemas/crds/networking.istio.io/{virtualservices,destinationrules}.yaml``. Those two files
  are unmodified documents of ``manifests/charts/base/files/crd-all.gen.yaml`` in istio/istio at
  tag 1.30.3 (commit 56df41f63e513f834c9a3af33d8aed82d1d961f2): the
  ``virtualservices.networking.istio.io`` and ``destinationrules.networking.istio.io``
  documents, split on the ``---`` lines (see ``schemas/crds/SOURCES.md`` there). Without
  ``../shared``, save those two documents in that layout under any folder and set
  ``SWITCHBOARD_SHARED_DIR`` to it.
* KubeRay's RayService CRD does not install into a 1.20 server, so ``installed_crds`` uses the
  permissive stand-in ``tests/envtest/rayservice-standin-crd.yaml`` (same group/version/kind).

The server knows the bearer token ``admin-token`` (``system:masters``) and signs service-account
tokens (TokenRequest): ``operator_install`` installs the Helm chart and acts as the operator with
a token of the chart's ServiceAccount (``operator_install.user``). Every request is audited;
``envtest.audit_events()`` returns the events (user, verb, URI, status code).

Tests that use these fixtures are marked ``envtest`` automatically (``-m "not envtest"`` skips
them deliberately). A helper that cannot set something up raises ``SetupError``; the test
fails (never skips) with its message alone.
"""

from __future__ import annotations

import contextlib
import subprocess
from collections.abc import Callable, Generator, Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from support import helm as helm_support
from support.cluster import Cluster
from support.crds import install_envtest_crds
from support.envtest import EnvTest, new_api_client, running_envtest
from support.errors import SetupError
from support.helm import CHART_RELEASE, OPERATOR_NAMESPACE, OperatorInstall
from support.nlu import train_demo_nlu_model
from support.operator_in_process import operator_in_process
from support.polling import wait_for
from support.prometheus import PrometheusServer, prometheus_binary
from support.redis_server import RedisServer, running_redis
from support.s3 import S3Server, running_s3
from support.schemas import Schemas
from support.serving import ServedAgent, serve_documents

ENVTEST_FIXTURES = frozenset({"envtest", "kube_admin", "installed_crds"})

HelmTemplate = Callable[..., list[dict[str, Any]]]
ServeManifests = Callable[[list[dict[str, Any]]], contextlib.AbstractContextManager[ServedAgent]]
RunOperator = Callable[..., contextlib.AbstractContextManager[dict[str, Any]]]


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark every test that needs the API server ``envtest``, whether or not it says so."""
    for item in items:
        if ENVTEST_FIXTURES.intersection(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.envtest)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    call: pytest.CallInfo[None],
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """A helper that could not set up its server or tool fails the test with its message
    alone, as ``pytest.fail(..., pytrace=False)`` did, not a traceback through the helper.
    (Here, not in ``pytest_fixture_setup``: this file's hooks do not reach session fixtures'
    setup, which runs at the rootdir's level.)"""
    report = yield
    if call.excinfo is not None and call.excinfo.errisinstance(SetupError):
        report.longrepr = str(call.excinfo.value)
    return report


# --------------------------------------------------------------------------------------------
# Schemas and Helm


@pytest.fixture(scope="session")
def schemas() -> Schemas:
    return Schemas()


@pytest.fixture(scope="session")
def helm() -> Path:
    """A real helm binary (``make helm`` / ``tests/helm/get-helm.sh``; or ``SWITCHBOARD_HELM``)."""
    return helm_support.helm_binary()


@pytest.fixture(scope="session")
def run_helm(helm: Path) -> Callable[..., subprocess.CompletedProcess[str]]:
    """``run_helm("lint", ...)``: helm's exit status and output, for tests that look at both."""
    return lambda *args: helm_support.run_helm(helm, *args)


@pytest.fixture(scope="session")
def helm_template(helm: Path) -> HelmTemplate:
    """``helm template`` of charts/switchboard → its objects (CRDs included with ``crds=True``).

    ``helm_template("rbac.scope=namespace", ...)`` passes each argument to ``--set``;
    ``values={...}`` goes through a values file. A failing render fails the test with helm's
    message; use the ``run_helm`` fixture to look at a failure on purpose.
    """
    return lambda *sets, **options: helm_support.helm_template(helm, *sets, **options)


# --------------------------------------------------------------------------------------------
# The API server and its CRDs


@pytest.fixture(scope="session")
def envtest(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EnvTest]:
    """Start etcd + kube-apiserver for the session (``tests/envtest/start.sh``); stop them after."""
    with running_envtest(tmp_path_factory.mktemp("envtest")) as server:
        yield server


@pytest.fixture(scope="session")
def kube_admin(envtest: EnvTest) -> Iterator[client.ApiClient]:
    """A ``kubernetes`` ApiClient for the session's server, as ``system:masters``."""
    with new_api_client(envtest.kubeconfig) as api:
        yield api


@pytest.fixture(scope="session")
def installed_crds(kube_admin: client.ApiClient) -> dict[str, dict[str, Any]]:
    """Install the project's CRDs (``crds/*.yaml``), Istio's VirtualService and
    DestinationRule, and the RayService stand-in; wait until all are served.

    Returns the CRDs as installed (after ``support.crds.envtest_crd``), by name.
    """
    return install_envtest_crds(kube_admin)


# --------------------------------------------------------------------------------------------
# Servers: Redis (shared sessions), Prometheus, S3


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """A real `redis-server` on a free loopback port (Debian's package; `make test` installs
    it). Missing or failing to start fails the tests, never skips them."""
    with running_redis(tmp_path_factory.mktemp("redis")) as server:
        yield server


@pytest.fixture(scope="session")
def promtool() -> str:
    """Debian's `promtool` (package `prometheus`); missing fails the tests, never skips them."""
    return prometheus_binary("promtool")


@pytest.fixture
def start_prometheus(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Callable[[list[str]], PrometheusServer]]:
    """`start_prometheus(["127.0.0.1:PORT", ...])`: a started server, stopped after the test."""
    binary = prometheus_binary()
    servers: list[PrometheusServer] = []

    def start(targets: list[str]) -> PrometheusServer:
        server = PrometheusServer(binary, tmp_path_factory.mktemp("prometheus"), targets)
        servers.append(server)
        server.start()
        return server

    yield start
    for server in servers:
        server.stop()


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    """rclone's S3 server with the bucket `models`; objects are plain files under its root."""
    with running_s3(tmp_path_factory.mktemp("s3")) as server:
        yield server


# --------------------------------------------------------------------------------------------
# The data plane: the demo NLU model, agents on an embedded Ray Serve


@pytest.fixture(scope="session")
def demo_nlu_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`switchboard nlu train` on the demo e-commerce intents: a real fine-tuned, int8 model."""
    return train_demo_nlu_model(tmp_path_factory.mktemp("demo-nlu") / "model")


@pytest.fixture(scope="session")
def serve_manifests(
    demo_nlu_model: Path, tmp_path_factory: pytest.TempPathFactory
) -> ServeManifests:
    """`with serve_manifests(documents) as agent:` runs the documents' agent with the demo NLU
    model and fresh demo systems; one at a time (one Ray per process)."""
    return lambda documents: serve_documents(
        documents, demo_nlu_model, tmp_path_factory.mktemp("served")
    )


# --------------------------------------------------------------------------------------------
# The operator against the envtest server: admin-side helpers and a runner under the shipped RBAC


@pytest.fixture(scope="session")
def poll() -> Callable[..., Any]:
    """`wait_for` for tests that have no `cluster`: poll(what, probe, timeout)."""
    return wait_for


@pytest.fixture(scope="session")
def cluster(kube_admin: client.ApiClient, installed_crds: dict[str, Any]) -> Cluster:
    return Cluster(kube_admin)


@pytest.fixture(scope="session")
def operator_install(
    envtest: EnvTest, helm: Path, installed_crds: dict[str, Any]
) -> OperatorInstall:
    """The chart with its default values (cluster-wide RBAC), as a platform team installs it."""
    return helm_support.install_chart(envtest, helm, CHART_RELEASE, OPERATOR_NAMESPACE)


@pytest.fixture(scope="session")
def install_chart(
    envtest: EnvTest, helm: Path, installed_crds: dict[str, Any]
) -> Callable[..., OperatorInstall]:
    """``install_chart(release, namespace, "key=value", ...)``: another install of the chart
    (name releases ``switchboard-*`` so the account is named after the release)."""
    return lambda release, namespace, *sets: helm_support.install_chart(
        envtest, helm, release, namespace, *sets
    )


@pytest.fixture(scope="session")
def run_operator(envtest: EnvTest, operator_install: OperatorInstall) -> RunOperator:
    """Runs kopf with `switchboard.operator.main` in-process under the chart's ServiceAccount
    token, as the chart runs it (peering on): `with run_operator(env={...}) as running: ...`.
    ``install=`` and ``namespaces=`` run it as another install of the chart (e.g. namespaced)."""

    def run(
        env: dict[str, str] | None = None,
        *,
        install: OperatorInstall | None = None,
        namespaces: tuple[str, ...] = (),
    ) -> contextlib.AbstractContextManager[dict[str, Any]]:
        kubeconfig = (install or operator_install).kubeconfig
        return operator_in_process(envtest, kubeconfig, env, namespaces)

    return run
