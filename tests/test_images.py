"""The three images (`make images`: images/*.Containerfile), run as real containers with podman
and runc (images/podman.sh), on the host network, with the settings the chart and the operator
render for them: their user, read-only root filesystem, dropped capabilities, emptyDir and
Secret volumes and environment are read from the rendered objects and translated into
`podman run` flags, so a change there is tested here.

- operator: `switchboard operator` with the chart's arguments against the envtest API server,
  logged in as a pod is (the chart ServiceAccount's token, CA and namespace mounted at
  /var/run/secrets/kubernetes.io/serviceaccount); brings the quickstart to Ready. KubeRay and
  the Deployment controller do not run here: the test plays their status, as the other envtest
  tests do.
- tool gateway: the quickstart's orders gateway as the operator renders it, Secret mounted,
  calling the demo orders system on 127.0.0.1.
- agent runtime: `switchboard serve` on the quickstart with its NLU model in a real S3 server
  on 127.0.0.1 (rclone), fetched and checksum-verified at replica start; answers /v1/chat.

Each then gets SIGTERM (`podman stop`, the kubelet's signal) and must exit 0 within the chart's
30 s grace period. The images are built by `make images` before the tests run (make test does);
a missing image fails here with that instruction.
"""

from __future__ import annotations

import base64
import contextlib
import functools
import importlib.metadata
import json
import os
import re
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from support.manifests import quickstart_documents
from support.paths import EXAMPLES, QUICKSTART
from support.ports import free_port
from switchboard.operator.api.tooladapter import ToolAdapterSpec
from switchboard.operator.api.validation import validate_spec
from switchboard.operator.main import in_cluster_server
from switchboard.operator.render import Parent
from switchboard.operator.render.gateway import render_deployment, render_grants
from switchboard.serving.config import GATEWAY_CONFIG_ENV
from switchboard.serving.demo import SAMPLE_ORDERS, start_demo_systems

REPO = Path(__file__).resolve().parents[1]
PODMAN = ["bash", str(REPO / "images" / "podman.sh"), "podman"]
VERSION = importlib.metadata.version("switchboard")
IMAGES = {
    name: f"localhost/switchboard/{name}:{VERSION}"
    for name in ("switchboard-operator", "tool-gateway", "agent-runtime")
}
EXAMPLES_NLU = EXAMPLES / "nlu"
GRACE_SECONDS = 30  # the chart's and the rendered pods' terminationGracePeriodSeconds
OPERATOR_BUDGET_BYTES = 250 * 1000 * 1000
SERVICE_ACCOUNT_DIR = "/var/run/secrets/kubernetes.io/serviceaccount"
# runc cannot raise limits without CAP_SYS_RESOURCE, which this machine's root lacks.
RUN_FLAGS = ["--network", "host", "--ulimit", "nofile=1024:1024", "--ulimit", "nproc=1024:1024"]


def record_start(image: str, what: str, seconds: float) -> None:
    """Seconds from `podman run` to `what`, appended as a JSON line to the file that
    $SWITCHBOARD_IMAGE_TIMINGS names (benchmarks/images.py reads them); nothing is asserted."""
    path = os.environ.get("SWITCHBOARD_IMAGE_TIMINGS")
    if path:
        with open(path, "a", encoding="utf-8") as out:
            out.write(json.dumps({"image": image, "until": what, "seconds": round(seconds, 2)}))
            out.write("\n")


def podman(*args: str, timeout: float = 120, check: bool = True) -> str:
    done = subprocess.run(
        [*PODMAN, *args], capture_output=True, text=True, timeout=timeout, check=False
    )
    if check and done.returncode != 0:
        pytest.fail(f"podman {' '.join(args)} failed ({done.returncode}):\n{done.stderr[-3000:]}")
    return done.stdout


def http(
    url: str, body: dict[str, Any] | None = None, timeout: float = 10
) -> tuple[int, dict[str, Any]]:
    request = urllib.request.Request(
        url,
        data=None if body is None else json.dumps(body).encode(),
        headers={"content-type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as reply:
            raw = reply.read()
            return int(reply.status), json.loads(raw) if raw.strip() else {}
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"{}")


def answers(url: str) -> bool:
    try:
        return http(url, timeout=2)[0] == 200
    except (OSError, ValueError):
        return False


class Container:
    """A detached `podman run`; its exit status and log stay until `remove()`."""

    def __init__(self, name: str, image: str, flags: list[str], command: list[str]) -> None:
        self.name = name
        podman("rm", "-f", "--ignore", name, check=False)
        self.started = time.monotonic()
        podman("run", "-d", "--name", name, *RUN_FLAGS, *flags, image, *command)

    def logs(self) -> str:
        done = subprocess.run(
            [*PODMAN, "logs", self.name], capture_output=True, text=True, timeout=30, check=False
        )
        return done.stdout + done.stderr

    def running(self) -> bool:
        state = podman("inspect", "--format", "{{.State.Running}}", self.name, check=False)
        return state.strip() == "true"

    def wait_until(self, what: str, probe: Any, timeout: float) -> float:
        """Seconds from `podman run` until `probe()` is true; fails if the container exits."""
        deadline = time.monotonic() + timeout
        while not probe():
            assert self.running(), f"{self.name} exited before {what}:\n{self.logs()[-4000:]}"
            assert time.monotonic() < deadline, f"no {what} in {timeout}s:\n{self.logs()[-4000:]}"
            time.sleep(0.3)
        return time.monotonic() - self.started

    def stop(self) -> tuple[int, float]:
        """SIGTERM, SIGKILL after the grace period (what the kubelet does); (exit status,
        seconds it took)."""
        started = time.monotonic()
        podman("stop", "--time", str(GRACE_SECONDS), self.name, timeout=GRACE_SECONDS + 30)
        seconds = time.monotonic() - started
        code = podman("inspect", "--format", "{{.State.ExitCode}}", self.name).strip()
        return int(code), seconds

    def remove(self) -> None:
        podman("rm", "-f", "--ignore", self.name, check=False)


@contextlib.contextmanager
def container(name: str, image: str, flags: list[str], command: list[str]) -> Iterator[Container]:
    running = Container(name, image, flags, command)
    try:
        yield running
    except BaseException:
        print(f"--- {name} log ---\n{running.logs()[-6000:]}")  # shown with the failure
        raise
    finally:
        running.remove()


def pod_flags(
    pod: dict[str, Any], container: dict[str, Any], volumes: dict[str, Path]
) -> list[str]:
    """`podman run` flags for a rendered pod's container: user and group (fsGroup as an extra
    group, as the kubelet applies it), read-only root filesystem, capabilities, privilege
    escalation, emptyDirs as tmpfs, and other volumes from `volumes` (name → host folder)."""
    pod_security = pod.get("securityContext") or {}
    security = {**pod_security, **(container.get("securityContext") or {})}
    flags = []
    if "runAsUser" in security:
        flags += ["--user", f"{security['runAsUser']}:{security.get('runAsGroup', 0)}"]
    if "fsGroup" in pod_security:
        flags += ["--group-add", str(pod_security["fsGroup"])]
    if security.get("readOnlyRootFilesystem"):
        flags.append("--read-only")
    for cap in (security.get("capabilities") or {}).get("drop", []):
        flags += ["--cap-drop", cap]
    if security.get("allowPrivilegeEscalation") is False:
        flags += ["--security-opt", "no-new-privileges"]
    declared = {v["name"]: v for v in pod.get("volumes", [])}
    for mount in container.get("volumeMounts", []):
        volume = declared[mount["name"]]
        if "emptyDir" in volume:
            size = volume["emptyDir"].get("sizeLimit", "64Mi").replace("Mi", "m")
            flags += ["--tmpfs", f"{mount['mountPath']}:rw,size={size},mode=1777"]
        else:
            ro = ":ro" if mount.get("readOnly") else ""
            flags += ["-v", f"{volumes[mount['name']]}:{mount['mountPath']}{ro}"]
    return flags


def env_flags(env: dict[str, str]) -> list[str]:
    return [flag for key, value in env.items() for flag in ("--env", f"{key}={value}")]


def secret_volume(folder: Path, data: dict[str, str], mode: int, group: int) -> Path:
    """A Secret volume as the kubelet lays it out: one file per key, `mode`, group `group`."""
    folder.mkdir(parents=True)
    folder.chmod(0o755)
    for key, value in data.items():
        path = folder / key
        path.write_text(value)
        os.chown(path, 0, group)
        path.chmod(mode)
    return folder


@functools.cache
def image(name: str) -> str:
    """The tag `make images` gave image `name`; fails the test when it was not built."""
    tag = IMAGES[name]
    done = subprocess.run([*PODMAN, "image", "exists", tag], timeout=60, check=False)
    if done.returncode != 0:
        pytest.fail(f"image {tag} is not built: run `make images` (make test does)")
    return tag


def inspect(image: str) -> dict[str, Any]:
    found: dict[str, Any] = json.loads(podman("image", "inspect", image))[0]
    return found


def run_once(image: str, *command: str, entrypoint: str | None = None) -> str:
    flags = ["--rm", *RUN_FLAGS, "--read-only"]
    if entrypoint is not None:
        flags += ["--entrypoint", entrypoint]
    return podman("run", *flags, image, *command, timeout=300)


# --- what is in the images ------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(IMAGES))
def test_image_runs_as_65532_with_oci_labels(name: str) -> None:
    found = inspect(image(name))
    assert found["Config"]["User"] == "65532:65532"
    labels = found["Config"]["Labels"]
    assert labels["org.opencontainers.image.title"] == name
    assert labels["org.opencontainers.image.version"] == VERSION
    assert re.fullmatch(r"[0-9a-f]{40}|unknown", labels["org.opencontainers.image.revision"])
    assert labels["org.opencontainers.image.source"].startswith("https://")
    whoami = run_once(image(name), "-c", "id -u; id -g; echo $HOME", entrypoint="/bin/sh")
    assert whoami.split() == ["65532", "65532", "/home/switchboard"]


def imports(image: str, *modules: str) -> dict[str, str | None]:
    """Each module's version in `image` (None where it is not installed)."""
    script = (
        "import importlib.metadata as m, importlib.util as u, json, sys\n"
        "def v(n):\n"
        "    try: return m.version(n)\n"
        "    except m.PackageNotFoundError: return 'present' if u.find_spec(n) else None\n"
        "print(json.dumps({n: v(n) for n in sys.argv[1:]}))\n"
    )
    found: dict[str, str | None] = json.loads(
        run_once(image, "-c", script, *modules, entrypoint="python")
    )
    return found


def test_operator_image_has_no_torch_or_ray_and_fits_its_budget() -> None:
    tag = image("switchboard-operator")
    found = imports(tag, "switchboard", "kopf", "kubernetes", "torch", "ray", "pip")
    assert found["switchboard"] == VERSION and found["kopf"] and found["kubernetes"]
    assert found["torch"] is None and found["ray"] is None and found["pip"] is None, found
    assert inspect(tag)["Size"] <= OPERATOR_BUDGET_BYTES
    assert inspect(tag)["Config"]["Entrypoint"] == ["switchboard"]
    assert "operator" in run_once(tag, "--help")


def test_gateway_image_carries_the_gateway_and_no_more() -> None:
    found = imports(image("tool-gateway"), "switchboard", "uvicorn", "ray", "torch", "kopf")
    assert found["switchboard"] == VERSION and found["uvicorn"]
    assert found["ray"] is None and found["torch"] is None and found["kopf"] is None, found


def test_runtime_image_has_what_kuberay_runs() -> None:
    tag = image("agent-runtime")
    found = imports(tag, "ray", "torch", "onnxruntime", "boto3", "switchboard")
    assert found["ray"] == "2.60.0"
    assert found["torch"] == "2.13.0+cpu", found  # the CPU build: no CUDA libraries
    assert found["onnxruntime"] and found["boto3"] and found["switchboard"] == VERSION
    # KubeRay runs `ray start` through bash and probes with wget.
    tools = run_once(tag, "-c", "command -v ray bash wget", entrypoint="/bin/bash")
    assert tools.split() == ["/opt/switchboard/bin/ray", "/usr/bin/bash", "/usr/bin/wget"]


# --- the operator ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("env", "server"),
    [
        ({"KUBERNETES_SERVICE_HOST": "10.96.0.1", "KUBERNETES_SERVICE_PORT": "443"},
         "https://10.96.0.1:443"),
        ({"KUBERNETES_SERVICE_HOST": "fd00::1", "KUBERNETES_SERVICE_PORT": "6443"},
         "https://[fd00::1]:6443"),
        ({}, "https://kubernetes.default.svc"),
    ],
)  # fmt: skip
def test_in_cluster_server_comes_from_the_kubelets_variables(
    env: dict[str, str], server: str
) -> None:
    assert in_cluster_server(env) == server


def test_operator_image_brings_the_quickstart_to_ready(
    envtest: Any,
    operator_install: Any,
    helm_template: Any,
    cluster: Any,
    tmp_path: Path,
) -> None:
    chart = helm_template()
    deployment = next(d for d in chart if d["kind"] == "Deployment")
    pod = deployment["spec"]["template"]["spec"]
    spec = pod["containers"][0]
    metrics, health = free_port(), free_port()
    args = [
        re.sub(r"^(--metrics-port=).*", rf"\g<1>{metrics}", a) for a in spec["args"]
    ]  # host network: free ports instead of the chart's 8080/8081
    args = [re.sub(r"^(--liveness-port=).*", rf"\g<1>{health}", a) for a in args]
    # What the kubelet mounts for the pod's ServiceAccount (the chart's, via TokenRequest).
    kubeconfig = yaml.safe_load(envtest.kubeconfig.read_text())
    ca = base64.b64decode(kubeconfig["clusters"][0]["cluster"]["certificate-authority-data"])
    account = secret_volume(
        tmp_path / "serviceaccount",
        {"token": operator_install.token, "ca.crt": ca.decode(), "namespace": "switchboard"},
        0o640,
        pod["securityContext"]["fsGroup"],
    )
    host, port = re.fullmatch(r"https://([\d.]+):(\d+)", envtest.server).groups()  # type: ignore[union-attr]
    env = {e["name"]: e.get("value", "") for e in spec["env"]}
    env["POD_ID"] = "switchboard-image-test"  # the downward API's metadata.name
    env |= {"KUBERNETES_SERVICE_HOST": host, "KUBERNETES_SERVICE_PORT": port}
    flags = pod_flags(pod, spec, {}) + env_flags(env)
    flags += ["-v", f"{account}:{SERVICE_ACCOUNT_DIR}:ro"]
    with container(
        f"switchboard-operator-test-{os.getpid()}", image("switchboard-operator"), flags, args
    ) as op:
        healthy = op.wait_until(
            "/healthz", lambda: answers(f"http://127.0.0.1:{health}/healthz"), 90
        )
        record_start("switchboard-operator", "health endpoint answers", healthy)
        ns = cluster.namespace("image-quickstart")
        cluster.apply_dir(QUICKSTART, ns)
        cluster.wait_for(
            "gateway Deployments",
            lambda: len(cluster.list("apps/v1", "Deployment", ns)) == 2,
            timeout=60,
        )
        cluster.make_gateways_available(ns)
        cluster.wait_for(
            "RayService acme", lambda: cluster.get("ray.io/v1", "RayService", ns, "acme")
        )
        cluster.make_rayservice_running(ns, "acme")
        ready = cluster.wait_for(
            "agent Ready",
            cluster.with_gateways_available(
                ns,
                lambda: (
                    (c := cluster.condition("SupportAgent", ns, "acme")) and c["status"] == "True"
                ),
            ),
            timeout=60,
        )
        assert ready
        assert (
            "switchboard_"
            in urllib.request.urlopen(f"http://127.0.0.1:{metrics}/metrics", timeout=5)
            .read()
            .decode()
        )
        code, seconds = op.stop()
        logs = op.logs()
    assert code == 0, logs[-4000:]
    assert seconds < GRACE_SECONDS, (seconds, logs[-4000:])
    assert "Traceback" not in logs, logs[-4000:]


# --- the tool gateway -----------------------------------------------------------------------


def test_gateway_image_serves_an_operation_read_only_with_the_mounted_secret(
    tmp_path: Path,
) -> None:
    docs = quickstart_documents()
    adapter = next(
        d for d in docs if d["kind"] == "ToolAdapter" and d["metadata"]["name"] == "orders"
    )
    spec = validate_spec(ToolAdapterSpec, adapter["spec"])
    secret = next(d for d in docs if d["metadata"]["name"] == spec.credentials.secret_ref)
    parent = Parent("ToolAdapter", "orders", "shop")
    deployment = render_deployment(parent, spec)
    pod = deployment["spec"]["template"]["spec"]
    spec_container = pod["containers"][0]
    secret_volume_spec = next(v for v in pod["volumes"] if "secret" in v)
    credentials = secret_volume(
        tmp_path / "credentials",
        secret["stringData"],
        secret_volume_spec["secret"]["defaultMode"],
        pod["securityContext"]["fsGroup"],
    )
    # The grants ConfigMap as the kubelet mounts it (default mode 0644); unread below, where
    # callers are not checked, but the pod mounts it.
    grants_volume_spec = next(v for v in pod["volumes"] if "configMap" in v)
    grants = secret_volume(
        tmp_path / "grants",
        render_grants(parent, {"acme": ["get_order"]})["data"],
        0o644,
        pod["securityContext"]["fsGroup"],
    )
    port = free_port()
    env = {e["name"]: e["value"] for e in spec_container["env"]}
    with start_demo_systems(tmp_path / "demo.sqlite", orders_port=0, ticketing_port=0) as demo:
        config = json.loads(env[GATEWAY_CONFIG_ENV])
        config["base_url"] = demo.orders_url  # the cluster Service URL, here on 127.0.0.1
        # The per-call agent check asks a Kubernetes API server (TokenReview), which a plain
        # podman run has not: test_gateway.py and test_gateway_callers_envtest.py test it.
        assert config["caller_auth"] == "tokenreview"
        config["caller_auth"] = "none"
        env[GATEWAY_CONFIG_ENV] = json.dumps(config)
        volumes = {secret_volume_spec["name"]: credentials, grants_volume_spec["name"]: grants}
        flags = pod_flags(pod, spec_container, volumes)
        command = [*spec_container["command"], "--host=127.0.0.1", f"--port={port}"]
        with container(
            f"switchboard-gateway-test-{os.getpid()}",
            image("tool-gateway"),
            flags + env_flags(env),
            command,
        ) as gateway:
            gateway.wait_until("/readyz", lambda: answers(f"http://127.0.0.1:{port}/readyz"), 60)
            status, body = http(
                f"http://127.0.0.1:{port}/v1/ops/get_order",
                {"order_id": SAMPLE_ORDERS["shipped"]},
            )
            # The demo system checks the bearer token the gateway read from the mounted file.
            assert status == 200, (body, gateway.logs()[-3000:])
            assert body["result"]["status"] == "shipped", body
            record_start("tool-gateway", "first call answered", time.monotonic() - gateway.started)
            write = podman(
                "exec", gateway.name, "sh", "-c", "touch /opt/x 2>&1; echo $?", check=False
            )
            assert "Read-only file system" in write, write
            code, seconds = gateway.stop()
            logs = gateway.logs()
    assert code == 0, logs[-3000:]
    assert seconds < GRACE_SECONDS, (seconds, logs[-3000:])
    assert "Traceback" not in logs, logs[-3000:]


# --- the agent runtime ----------------------------------------------------------------------


def s3_quickstart(folder: Path, s3: Any, uri: str) -> Path:
    """The quickstart with its NLU model in object storage: `spec.nlu.modelUri: s3://...`,
    `spec.modelStorage` naming the endpoint and a Secret with the keys."""
    folder.mkdir()
    docs = quickstart_documents()
    for doc in docs:
        if doc["kind"] == "SupportAgent":
            doc["spec"]["nlu"]["modelUri"] = uri
            doc["spec"]["modelStorage"] = {
                "endpoint": s3.endpoint,
                "credentialsSecretRef": {"name": "model-store"},
            }
    docs.append(
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": "model-store"},
            "stringData": {"accessKeyId": s3.access_key, "secretAccessKey": s3.secret_key},
        }
    )
    (folder / "quickstart.yaml").write_text(yaml.safe_dump_all(docs))
    folder.chmod(0o755)
    (folder / "quickstart.yaml").chmod(0o644)
    return folder


def test_runtime_image_serves_the_quickstart_with_its_model_from_s3(
    s3_server: Any, demo_nlu_model: Path, tmp_path: Path
) -> None:
    uri = f"s3://{s3_server.bucket}/nlu/quickstart/v1"
    pushed = subprocess.run(
        [sys.executable, "-P", "-m", "switchboard.operator.cli", "nlu", "push",
         str(demo_nlu_model), uri],
        env={**os.environ, **s3_server.env()}, stdin=subprocess.DEVNULL,
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert pushed.returncode == 0, pushed.stderr
    manifests = s3_quickstart(tmp_path / "manifests", s3_server, uri)
    port = free_port()
    flags = [
        "--read-only",
        "--tmpfs", "/tmp:rw,size=2g,mode=1777",  # Ray's sessions, the model cache, demo state
        "--shm-size", "1g",  # Ray's object store
        "--cap-drop", "ALL", "--security-opt", "no-new-privileges",
        "-v", f"{manifests}:/manifests:ro",
        "--env", "RAY_AUTH_MODE=disabled",
    ]  # fmt: skip
    command = [
        "switchboard", "serve", "-f", "/manifests", "--demo-systems", "--cpus", "2",
        "--host", "127.0.0.1", "--port", str(port), "--state-dir", "/tmp/state",
    ]  # fmt: skip
    with container(
        f"switchboard-runtime-test-{os.getpid()}", image("agent-runtime"), flags, command
    ) as agent:
        agent.wait_until("agent ready", lambda: "agent ready" in agent.logs(), timeout=300)
        status, reply = http(
            f"http://127.0.0.1:{port}/v1/chat",
            {"session_id": "image-1", "message": f"Where is my order {SAMPLE_ORDERS['shipped']}?"},
            timeout=60,
        )
        logs = agent.logs()
        assert status == 200, (reply, logs[-4000:])
        assert reply["intent"] == "order_status", reply
        assert reply["actions"][0]["operation"] == "orders.get_order", reply
        assert reply["actions"][0]["status"] == "succeeded", reply
        record_start("agent-runtime", "first chat turn answered", time.monotonic() - agent.started)
        # The replica fetched the artifact from the S3 server into its cache, checked against
        # the manifest's checksums (a corrupt or missing object fails it: test_model_store).
        cached = podman(
            "exec", agent.name, "sh", "-c", "ls /tmp/switchboard-models/*/manifest.json"
        )
        assert cached.strip(), cached
        code, seconds = agent.stop()
        logs = agent.logs()
    assert code == 0, logs[-4000:]
    assert seconds < GRACE_SECONDS, (seconds, logs[-4000:])
    assert "SIGTERM received" not in logs and "Traceback" not in logs, logs[-4000:]
    # `podman logs` gives stdout, then stderr: the last line of stdout says it stopped.
    assert "stopping...\n" in logs and "\nstopped\n" in logs, logs[-2000:]


def test_runtime_image_runs_a_retraining_run_as_its_rayjob_says(
    s3_server: Any, demo_nlu_model: Path
) -> None:
    """The entrypoint of a ModelTraining's RayJob, run in the runtime image with the RayJob's
    environment (Secret references resolved as the kubelet would): the candidate and the report
    land in the bucket. The operator's side of a run is tests/test_training_envtest.py."""
    from support.corrections import corrections_jsonl
    from switchboard.operator.api.modeltraining import ModelTrainingSpec
    from switchboard.operator.api.supportagent import SupportAgentSpec
    from switchboard.operator.render.training import render_rayjob
    from switchboard.serving.training_report import TrainingReport

    base = s3_server.put("image/intents.csv", (EXAMPLES_NLU / "ecommerce-intents.csv").read_bytes())
    heldout = s3_server.put(
        "image/heldout.csv", (EXAMPLES_NLU / "ecommerce-heldout.csv").read_bytes()
    )
    feedback = s3_server.put("image/feedback/1.jsonl", corrections_jsonl())
    s3_server.push_model(demo_nlu_model, "s3://models/image/current")
    storage = {"endpoint": s3_server.endpoint, "credentialsSecretRef": {"name": "storage"}}
    training = validate_spec(
        ModelTrainingSpec,
        {
            "agentRef": "shop",
            "data": {"baseUri": base, "heldoutUri": heldout},
            "feedback": {"uris": [feedback.rsplit("/", 1)[0] + "/"]},
            "outputPrefix": "s3://models/image/runs",
            "storage": storage,
            "gate": {"minHeldoutRows": 60},
            "rollout": {"weight": 0},
        },
    )
    agent = validate_spec(
        SupportAgentSpec,
        {"nlu": {"modelUri": "s3://models/image/current"}, "modelStorage": storage},
    )
    job = render_rayjob(
        Parent("ModelTraining", "shop-nlu", "shop"), training, "image-run",
        "s3://models/image/current", agent,
    )  # fmt: skip
    secret = {"accessKeyId": s3_server.access_key, "secretAccessKey": s3_server.secret_key}
    worker = job["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]["template"]["spec"]
    env_flags: list[str] = []
    for var in worker["containers"][0]["env"]:
        value = var.get("value") or secret[var["valueFrom"]["secretKeyRef"]["key"]]
        env_flags += ["--env", f"{var['name']}={value}"]
    started = time.monotonic()
    output = podman(
        "run", "--rm", *RUN_FLAGS, "--tmpfs", "/tmp:rw,size=2g,mode=1777", *env_flags,
        "--entrypoint", "/bin/bash", image("agent-runtime"), "-c", job["spec"]["entrypoint"],
        timeout=900,
    )  # fmt: skip
    record_start("agent-runtime", "retraining run finished", time.monotonic() - started)
    headline = json.loads(output.strip().splitlines()[-1])
    assert headline["run"] == "image-run", output
    report = TrainingReport.model_validate_json(
        s3_server.object_path("models", "image/runs/image-run/report.json").read_text()
    )
    assert report.candidate_uri == "s3://models/image/runs/image-run/model"
    assert report.device == "cpu" and report.heldout.rows == 76
    assert report.data.corrections == 4
    assert report.candidate.accuracy == headline["candidate_accuracy"]
    assert s3_server.object_path("models", "image/runs/image-run/model/manifest.json").is_file()
