"""Operator benchmark: render time, and N SupportAgents from create to Ready on a real API server.

    .venv/bin/python benchmarks/operator.py [--agents 200] [--json-out FILE]

Prints one JSON document to stdout (progress goes to stderr). In one run it measures:

1. Render time: ``render_agent`` for the quickstart agent and for the benchmark's CPU-only agent,
   ``validate_spec`` of the quickstart agent (every reconcile runs it), and the full
   ``render_manifests`` of ``examples/quickstart``: median and p95 in ms.
2. Scale: etcd + kube-apiserver 1.20 from ``tests/envtest/start.sh`` (binaries as for the tests:
   ``SWITCHBOARD_ENVTEST_BIN`` or ``~/.cache/switchboard/envtest-1.20``) in a temporary RUN dir,
   the CRDs the envtest suite installs, the chart (``charts/switchboard``) installed by ``helm
   install``, and the operator as a subprocess (``switchboard operator -A``) under a token of the
   chart's ServiceAccount (TokenRequest), so it holds exactly the chart's RBAC: all set up by
   the envtest suite's own helpers (``tests/support``). One shared ToolAdapter (2 operations)
   is created and made Ready by patching its gateway Deployment's status; then N SupportAgents
   (CPU-only, granted that adapter) are created from a thread pool while a fake KubeRay thread
   marks each RayService running as soon as it appears.
   Reported: wall time from the first create to all agents Ready, agents/s, per-agent latencies,
   the operator's peak RSS (VmHWM, its process tree included) and CPU time, its own reconcile
   metrics from ``/metrics``, and the API requests it made (from the server's audit log).
   Then (``--no-adapter-fanout`` skips it) the shared adapter's gateway loses its replicas and
   gets them back: the time until every agent's Ready condition follows. ``--profile FILE``
   samples the operator with py-spy during the load (a separate run: it slows the operator).
3. Clean-up, always: operator SIGINT → wait → SIGKILL, then ``tests/envtest/stop.sh``.

Targets (from the issue): 200 agents Ready in at most 30 s, operator peak RSS at most 250 MB. They
are reported with pass/fail; a miss does not change the exit status.
"""

from __future__ import annotations

import argparse
import copy
import datetime
import itertools
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

from kubernetes import client, watch
from kubernetes.client.exceptions import ApiException
from prometheus_client.parser import text_string_to_metric_families

# The helpers the test suite uses (tests/support): tests/ goes on the path, never the repository
# root, whose operator/ would shadow the stdlib module (hence `python -P` too).
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from support.cluster import (
    API_VERSION,
    GROUP,
    VERSION,
    Cluster,
    condition_of,
    running_rayservice_status,
)
from support.crds import install_envtest_crds
from support.envtest import EnvTest, new_api_client, start_envtest, stop_envtest
from support.errors import SetupError
from support.helm import CHART_RELEASE, OPERATOR_NAMESPACE, helm_binary, install_chart
from support.manifests import quickstart_documents
from support.paths import REPO_ROOT
from support.ports import pick_ports
from support.report import concurrent_pytest, machine_facts, percentile, summary_ms, time_calls
from switchboard.operator.api.supportagent import SupportAgentSpec
from switchboard.operator.api.tooladapter import ToolAdapterSpec
from switchboard.operator.api.validation import validate_spec
from switchboard.operator.render import Parent, render_agent, render_manifests

REPO = REPO_ROOT
NAMESPACE = "bench"
ADAPTER = "crm"
ADAPTER_OPERATIONS = ("lookup_customer", "create_ticket")
GATEWAY_REPLICAS = 2

TARGET_SECONDS = 30.0
TARGET_RSS_MB = 250.0
TARGET_AGENTS = 200


def log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------------------------
# Small helpers


def summary_s(seconds: list[float]) -> dict[str, float | int]:
    if not seconds:
        return {"n": 0}
    return {
        "n": len(seconds),
        "p50_s": round(statistics.median(seconds), 3),
        "p95_s": round(percentile(seconds, 95), 3),
        "max_s": round(max(seconds), 3),
    }


def _all_cpu_ticks() -> dict[int, tuple[int, str]]:
    ticks: dict[int, tuple[int, str]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with suppress(OSError, ValueError, IndexError):
            head, _, rest = (entry / "stat").read_text().rpartition(")")
            fields = rest.split()
            ticks[int(entry.name)] = (int(fields[11]) + int(fields[12]), head.split("(", 1)[1])
    return ticks


def busy_processes(interval: float = 2.0, threshold_pct: float = 10.0) -> list[dict[str, Any]]:
    """Other processes using CPU right now (the benchmark's figures share the machine)."""
    before = _all_cpu_ticks()
    time.sleep(interval)
    after = _all_cpu_ticks()
    hz = os.sysconf("SC_CLK_TCK")
    busy = []
    for pid, (ticks, name) in after.items():
        if pid == os.getpid() or pid not in before:
            continue
        pct = 100 * (ticks - before[pid][0]) / hz / interval
        if pct >= threshold_pct:
            busy.append({"pid": pid, "name": name, "cpu_pct": round(pct)})
    return sorted(busy, key=lambda b: -b["cpu_pct"])


def git_revision() -> dict[str, Any]:
    """The commit measured, and whether the operator's sources differ from it."""

    def git(*args: str) -> str:
        return subprocess.run(
            ["git", *args], cwd=REPO, capture_output=True, text=True, check=False
        ).stdout.rstrip("\n")

    changed = git("status", "--porcelain", "--", "operator", "crds").splitlines()
    return {"commit": git("rev-parse", "--short", "HEAD"), "operator_changes_uncommitted": changed}


# --------------------------------------------------------------------------------------------
# 1. Render time


def bench_agent_spec() -> dict[str, Any]:
    """The benchmark's SupportAgent: CPU-only (defaults), granted the shared adapter."""
    return {
        "nlu": {"modelUri": "file:///models/nlu/bench-v1", "quantization": "int8"},
        "tools": [{"adapter": ADAPTER, "operations": list(ADAPTER_OPERATIONS)}],
    }


def bench_adapter_spec() -> dict[str, Any]:
    return {
        "system": "crm",
        "baseURL": "http://crm.example.com/api",
        "operations": [
            {"name": "lookup_customer", "method": "GET", "path": "/customers/{id}"},
            {"name": "create_ticket", "method": "POST", "path": "/tickets", "mutating": True},
        ],
    }


def bench_render(iterations: int) -> dict[str, Any]:
    documents = quickstart_documents()
    agent_doc = next(d for d in documents if d["kind"] == "SupportAgent")
    adapters = {
        d["metadata"]["name"]: validate_spec(ToolAdapterSpec, d["spec"])
        for d in documents
        if d["kind"] == "ToolAdapter"
    }
    quickstart_spec = validate_spec(SupportAgentSpec, agent_doc["spec"])
    quickstart_parent = Parent("SupportAgent", "acme", "quickstart", "uid-acme")
    cpu_spec = validate_spec(SupportAgentSpec, bench_agent_spec())
    cpu_adapters = {ADAPTER: validate_spec(ToolAdapterSpec, bench_adapter_spec())}
    cpu_parent = Parent("SupportAgent", "agent-0000", NAMESPACE, "uid-bench")
    slow = max(20, iterations // 10)
    # A spec never validated before (a memo, if validate_spec has one, cannot answer it).
    fresh_specs = (
        {**agent_doc["spec"], "nlu": {**agent_doc["spec"]["nlu"], "modelUri": f"file:///m/{i}"}}
        for i in itertools.count()
    )
    log(f"render: {iterations} iterations (render_manifests and validate_spec: {slow})")
    return {
        "render_agent_quickstart": summary_ms(
            time_calls(
                lambda: render_agent(quickstart_parent, quickstart_spec, adapters), iterations, 50
            )
        ),
        "render_agent_cpu_only": summary_ms(
            time_calls(lambda: render_agent(cpu_parent, cpu_spec, cpu_adapters), iterations, 50)
        ),
        "validate_spec_quickstart_agent_new_spec": summary_ms(
            time_calls(lambda: validate_spec(SupportAgentSpec, next(fresh_specs)), slow, 5)
        ),
        "validate_spec_quickstart_agent_same_spec": summary_ms(
            time_calls(lambda: validate_spec(SupportAgentSpec, agent_doc["spec"]), slow, 5)
        ),
        "render_manifests_quickstart": summary_ms(
            time_calls(lambda: render_manifests(copy.deepcopy(documents)), slow, 5)
        ),
        "notes": (
            "render_agent takes validated specs (pure rendering); validate_spec is pydantic + the "
            "CRD's CEL rules, run once per reconcile (new_spec: a different spec every call; "
            "same_spec: the same one again); render_manifests = validate + render of "
            "examples/quickstart (2 ToolAdapters, 1 SupportAgent: 8 objects; the same documents "
            "every iteration, so a memoising validate_spec answers from its memo)"
        ),
    }


# --------------------------------------------------------------------------------------------
# 2b. The operator process


def _proc_status(pid: int) -> dict[str, str]:
    out: dict[str, str] = {}
    with suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            key, _, value = line.partition(":")
            out[key] = value.strip()
    return out


def _kb(value: str | None) -> int:
    return int(value.split()[0]) if value else 0


def descendants(pid: int) -> list[int]:
    found: list[int] = []
    stack = [pid]
    while stack:
        current = stack.pop()
        with suppress(OSError):
            for task in Path(f"/proc/{current}/task").iterdir():
                with suppress(OSError, ValueError):
                    kids = [int(k) for k in (task / "children").read_text().split()]
                    found += kids
                    stack += kids
    return found


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process (its reaped children's too), in seconds."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    ticks = sum(int(f) for f in fields[11:15])  # utime stime cutime cstime
    return ticks / os.sysconf("SC_CLK_TCK")


class OperatorProcess:
    """`switchboard operator -A` as a subprocess; samples its process tree's memory."""

    def __init__(
        self,
        kubeconfig: Path,
        run_dir: Path,
        metrics_port: int,
        liveness_port: int,
        pythonpath: Path | None = None,
    ) -> None:
        self.metrics_port = metrics_port
        self.liveness_port = liveness_port
        self.log_path = run_dir / "operator.log"
        self._log = self.log_path.open("wb")
        self.proc = subprocess.Popen(
            [
                str(REPO / ".venv" / "bin" / "switchboard"),
                "operator",
                "-A",
                "--metrics-port",
                str(metrics_port),
                "--liveness-port",
                str(liveness_port),
            ],
            env={
                **os.environ,
                "KUBECONFIG": str(kubeconfig),
                # Another build of the package first on the path: an earlier commit's operator.
                **({"PYTHONPATH": str(pythonpath)} if pythonpath else {}),
            },
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            cwd=REPO,
        )
        self.children_seen: set[int] = set()
        self.child_hwm_kb: dict[int, int] = {}
        self.tree_rss_peak_kb = 0
        self._stop = threading.Event()
        self._sampler = threading.Thread(target=self._sample, name="rss-sampler", daemon=True)
        self._sampler.start()

    @property
    def pid(self) -> int:
        return self.proc.pid

    def _sample(self) -> None:
        while not self._stop.wait(0.2) and self.proc.poll() is None:
            kids = descendants(self.pid)
            self.children_seen.update(kids)
            tree = _kb(_proc_status(self.pid).get("VmRSS"))
            for kid in kids:
                status = _proc_status(kid)
                tree += _kb(status.get("VmRSS"))
                hwm = _kb(status.get("VmHWM"))
                self.child_hwm_kb[kid] = max(self.child_hwm_kb.get(kid, 0), hwm)
            self.tree_rss_peak_kb = max(self.tree_rss_peak_kb, tree)

    def memory(self) -> dict[str, Any]:
        status = _proc_status(self.pid)
        hwm_kb = _kb(status.get("VmHWM"))
        children_kb = sum(self.child_hwm_kb.values())
        return {
            "pid": self.pid,
            "vm_hwm_mb": round(hwm_kb / 1024, 1),
            "vm_rss_mb": round(_kb(status.get("VmRSS")) / 1024, 1),
            "threads": int(status.get("Threads", "0") or 0),
            "child_processes": sorted(self.children_seen),
            "children_vm_hwm_mb": round(children_kb / 1024, 1),
            "peak_rss_mb": round((hwm_kb + children_kb) / 1024, 1),
            "tree_rss_sampled_peak_mb": round(self.tree_rss_peak_kb / 1024, 1),
        }

    def alive(self) -> bool:
        return self.proc.poll() is None

    def wait_live(self, timeout: float) -> None:
        url = f"http://127.0.0.1:{self.liveness_port}/healthz"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.alive():
                raise RuntimeError(f"operator exited ({self.proc.returncode}):\n{self.log_tail()}")
            with (
                suppress(OSError, urllib.error.URLError),
                urllib.request.urlopen(url, timeout=2) as response,
            ):
                if response.status == 200:
                    return
            time.sleep(0.2)
        raise RuntimeError(f"operator not live after {timeout:.0f} s:\n{self.log_tail()}")

    def scrape(self) -> str:
        url = f"http://127.0.0.1:{self.metrics_port}/metrics"
        with urllib.request.urlopen(url, timeout=10) as response:
            text: str = response.read().decode()
        return text

    def log_tail(self, lines: int = 40) -> str:
        with suppress(OSError):
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        return ""

    def stop(self, grace: float = 20.0) -> dict[str, Any]:
        """SIGINT (kopf's graceful stop), then SIGKILL; the same for any child left over."""
        self._stop.set()
        self.children_seen.update(descendants(self.pid))
        how = "already exited"
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(grace)
                how = "SIGINT"
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
                how = "SIGKILL"
        for kid in self.children_seen:
            with suppress(OSError):
                if Path(f"/proc/{kid}").exists():
                    os.kill(kid, signal.SIGKILL)
        self._log.close()
        return {"stopped_by": how, "exit_code": self.proc.returncode}


class Profiler:
    """py-spy sampling the operator while it holds the GIL (its Python CPU time), as raw
    collapsed stacks; `stop` summarises them. It slows the operator down: figures of a
    profiled run are for finding hot spots, not for the table."""

    def __init__(self, pid: int, out: Path) -> None:
        self.out = out
        self.proc = subprocess.Popen(
            [
                str(REPO / ".venv" / "bin" / "py-spy"),
                "record",
                "--pid",
                str(pid),
                "--gil",
                "--nonblocking",
                "--rate",
                "100",
                "--format",
                "raw",
                "--output",
                str(out),
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )

    def stop(self, top: int = 25) -> dict[str, Any]:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        if not self.out.exists():
            stderr = self.proc.stderr.read().decode() if self.proc.stderr else ""
            return {"error": f"py-spy wrote nothing: {stderr[-500:]}"}
        own: Counter[str] = Counter()
        inclusive: Counter[str] = Counter()
        total = 0
        for line in self.out.read_text().splitlines():
            stack, _, count_text = line.rpartition(" ")
            if not stack or not count_text.isdigit():
                continue
            count = int(count_text)
            frames = [_frame_name(f) for f in stack.split(";")]
            total += count
            own[frames[-1]] += count
            for frame in set(frames):
                inclusive[frame] += count
        share = {"samples": total, "rate_hz": 100, "file": str(self.out)}

        def pct(counter: Counter[str]) -> dict[str, float]:
            return {k: round(100 * v / total, 1) for k, v in counter.most_common(top)}

        return {**share, "self_pct": pct(own), "inclusive_pct": pct(inclusive)}


def _frame_name(frame: str) -> str:
    """`fn (path/to/module.py:123)` → `fn (module.py)`: lines merged, paths shortened."""
    name, _, where = frame.partition(" (")
    path = where.rstrip(")").rsplit(":", 1)[0]
    parts = Path(path).parts
    short = "/".join(parts[-2:]) if len(parts) > 1 else path
    return f"{name} ({short})"


def parse_metrics(text: str) -> dict[str, Any]:
    reconciles: dict[str, dict[str, float]] = {}
    durations: dict[str, dict[str, Any]] = {}
    agents: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = sample.labels
            if sample.name == "switchboard_reconcile_total":
                reconciles.setdefault(labels["kind"], {})[labels["outcome"]] = sample.value
            elif sample.name.startswith("switchboard_reconcile_duration_seconds"):
                entry = durations.setdefault(labels["kind"], {"buckets": {}})
                suffix = sample.name.removeprefix("switchboard_reconcile_duration_seconds")
                if suffix == "_sum":
                    entry["sum_s"] = round(sample.value, 3)
                elif suffix == "_count":
                    entry["count"] = int(sample.value)
                elif suffix == "_bucket":
                    entry["buckets"][labels["le"]] = int(sample.value)
            elif sample.name == "switchboard_agents":
                agents[labels["ready"]] = sample.value
    for entry in durations.values():
        if entry.get("count"):
            entry["mean_ms"] = round(entry["sum_s"] / entry["count"] * 1000, 1)
    return {
        "switchboard_reconcile_total": reconciles,
        "switchboard_reconcile_duration_seconds": durations,
        "switchboard_agents": agents,
    }


# --------------------------------------------------------------------------------------------
# 2c. The load: fake KubeRay, a Ready watcher, the creates


def ready_status(body: dict[str, Any]) -> str | None:
    status: str | None = (condition_of(body) or {}).get("status")
    return status


class Watcher(threading.Thread):
    """Watches one custom resource in the namespace, calling `on_event(type, object)`."""

    def __init__(
        self,
        api: client.ApiClient,
        group: str,
        version: str,
        plural: str,
        on_event: Callable[[str, dict[str, Any]], None],
    ) -> None:
        super().__init__(name=f"watch-{plural}", daemon=True)
        self.objects = client.CustomObjectsApi(api)
        self.args = (group, version, NAMESPACE, plural)
        self.on_event = on_event
        self.stopping = threading.Event()
        self.started_watching = threading.Event()
        self.errors: list[str] = []
        self._watch: watch.Watch | None = None

    def run(self) -> None:
        resource_version: str | None = None
        while not self.stopping.is_set():
            self._watch = watch.Watch()
            kwargs: dict[str, Any] = {"timeout_seconds": 30}
            if resource_version:
                kwargs["resource_version"] = resource_version
            try:
                stream = self._watch.stream(
                    self.objects.list_namespaced_custom_object, *self.args, **kwargs
                )
                self.started_watching.set()
                for event in stream:
                    obj = event["raw_object"]
                    if event["type"] == "ERROR":
                        resource_version = None  # expired: start over from "now" + synthetic ADDs
                        break
                    resource_version = obj["metadata"]["resourceVersion"]
                    self.on_event(event["type"], obj)
                    if self.stopping.is_set():
                        break
            except ApiException as exc:
                if exc.status == 410:
                    resource_version = None
                    continue
                self.errors.append(f"{exc.status} {exc.reason}")
                time.sleep(0.5)
            except Exception as exc:
                if self.stopping.is_set():
                    return
                self.errors.append(repr(exc))
                time.sleep(0.5)

    def stop(self) -> None:
        self.stopping.set()
        if self._watch is not None:
            self._watch.stop()


@dataclass
class AgentTimes:
    create_sent: float = 0.0
    create_done: float = 0.0
    rayservice_seen: float = 0.0
    rayservice_running: float = 0.0
    ready: float = 0.0


class Load:
    """N SupportAgents created at once, KubeRay played, readiness timed per agent."""

    def __init__(self, cluster: Cluster, agents: int, workers: int) -> None:
        self.cluster = cluster
        api = cluster.api
        self.objects = client.CustomObjectsApi(api)
        self.names = [f"agent-{i:04d}" for i in range(agents)]
        self.times = {name: AgentTimes() for name in self.names}
        self.workers = workers
        self.lock = threading.Lock()
        self.all_ready = threading.Event()
        self.ready_count = 0
        self.listed_ready = 0
        self.kuberay_patched: set[tuple[str, int]] = set()
        self.kuberay_errors: list[str] = []
        self.create_errors: list[str] = []
        self.current: dict[str, str | None] = {}  # Ready condition status, as last watched
        self.changes: list[tuple[float, str, str | None]] = []
        self.kuberay_pool = ThreadPoolExecutor(max_workers=4, thread_name_prefix="kuberay")
        self.rs_watch = Watcher(api, "ray.io", "v1", "rayservices", self._rayservice_event)
        self.agent_watch = Watcher(api, GROUP, VERSION, "supportagents", self._agent_event)

    # fake KubeRay: a RayService whose generation is not observed yet is reported running
    def _rayservice_event(self, kind: str, rayservice: dict[str, Any]) -> None:
        if kind == "DELETED":
            return
        meta = rayservice["metadata"]
        name, generation = meta["name"], int(meta.get("generation") or 0)
        observed = (rayservice.get("status") or {}).get("observedGeneration")
        now = time.monotonic()
        with self.lock:
            times = self.times.get(name)
            if times and not times.rayservice_seen:
                times.rayservice_seen = now
            if observed == generation or (name, generation) in self.kuberay_patched:
                return
            self.kuberay_patched.add((name, generation))
        self.kuberay_pool.submit(self._mark_running, rayservice)

    def _mark_running(self, rayservice: dict[str, Any]) -> None:
        name = rayservice["metadata"]["name"]
        try:
            self.objects.patch_namespaced_custom_object_status(
                "ray.io",
                "v1",
                NAMESPACE,
                "rayservices",
                name,
                {"status": running_rayservice_status(rayservice)},
                _content_type="application/merge-patch+json",
            )
        except ApiException as exc:
            self.kuberay_errors.append(f"{name}: {exc.status} {exc.reason}")
            return
        with self.lock:
            times = self.times.get(name)
            if times and not times.rayservice_running:
                times.rayservice_running = time.monotonic()

    def _agent_event(self, kind: str, agent: dict[str, Any]) -> None:
        name = agent["metadata"]["name"]
        status = None if kind == "DELETED" else ready_status(agent)
        now = time.monotonic()
        with self.lock:
            if name in self.current and self.current[name] != status:
                self.changes.append((now, name, status))
            self.current[name] = status
        if status != "True":
            return
        with self.lock:
            times = self.times.get(name)
            if times is None or times.ready:
                return
            times.ready = now
            self.ready_count += 1
            if self.ready_count == len(self.names):
                self.all_ready.set()

    def _create(self, name: str) -> None:
        body = {
            "apiVersion": API_VERSION,
            "kind": "SupportAgent",
            "metadata": {"name": name},
            "spec": bench_agent_spec(),
        }
        times = self.times[name]
        times.create_sent = time.monotonic()
        try:
            self.objects.create_namespaced_custom_object(
                GROUP, VERSION, NAMESPACE, "supportagents", body
            )
        except ApiException as exc:
            self.create_errors.append(f"{name}: {exc.status} {exc.reason}")
        times.create_done = time.monotonic()

    def start_watching(self) -> None:
        for watcher in (self.rs_watch, self.agent_watch):
            watcher.start()
        for watcher in (self.rs_watch, self.agent_watch):
            if not watcher.started_watching.wait(30):
                raise RuntimeError(f"{watcher.name} did not start")
        time.sleep(0.5)  # let both watch requests reach the server before the first create

    def run(self, timeout: float) -> dict[str, Any]:
        log(f"creating {len(self.names)} SupportAgents from {self.workers} threads")
        started = time.monotonic()
        with ThreadPoolExecutor(max_workers=self.workers, thread_name_prefix="create") as pool:
            list(pool.map(self._create, self.names))
        created = time.monotonic()
        log(
            f"all created in {created - started:.2f} s; waiting for Ready (timeout {timeout:.0f} s)"
        )
        last_report = created
        while not self.all_ready.wait(1.0):
            # As the Deployment controller would: a rolled gateway is reported available
            # again. (Since the grants live in a ConfigMap, new agents roll nothing: the patch
            # changes nothing, and the API server sends no event for it.)
            set_gateway_available(self.cluster, GATEWAY_REPLICAS)
            now = time.monotonic()
            if now - started > timeout:
                break
            if now - last_report >= 5:
                log(f"  {self.ready_count}/{len(self.names)} Ready after {now - started:.1f} s")
                last_report = now
        finished = time.monotonic()
        self.confirm_by_listing()
        return self.report(started, created, finished)

    def confirm_by_listing(self) -> None:
        """Cross-check the watch with one list (an agent the watch missed counts as Ready now)."""
        found = self.objects.list_namespaced_custom_object(
            GROUP, VERSION, NAMESPACE, "supportagents"
        )
        now = time.monotonic()
        for item in found.get("items", []):
            if ready_status(item) == "True":
                self.listed_ready += 1
                times = self.times.get(item["metadata"]["name"])
                if times and not times.ready:
                    times.ready = now

    def report(self, started: float, created: float, finished: float) -> dict[str, Any]:
        ready = [t for t in self.times.values() if t.ready]
        first_create = min(t.create_sent for t in self.times.values())
        last_ready = max((t.ready for t in ready), default=finished)
        total = last_ready - first_create
        complete = len(ready) == len(self.names)
        return {
            "agents": len(self.names),
            "agents_ready": len(ready),
            "agents_ready_by_list": self.listed_ready,
            "all_ready": complete,
            "create_threads": self.workers,
            "create_phase_s": round(created - started, 3),
            "total_s": round(total, 3) if complete else None,
            "agents_per_s": round(len(ready) / total, 2) if ready and total > 0 else None,
            "per_agent_create_to_ready": summary_s([t.ready - t.create_sent for t in ready]),
            "per_agent_create_request": summary_s([t.create_done - t.create_sent for t in ready]),
            "per_agent_create_to_rayservice_applied": summary_s(
                [t.rayservice_seen - t.create_sent for t in ready if t.rayservice_seen]
            ),
            "per_agent_rayservice_running_to_ready": summary_s(
                [t.ready - t.rayservice_running for t in ready if t.rayservice_running]
            ),
            "first_ready_after_s": round(min(t.ready for t in ready) - first_create, 3)
            if ready
            else None,
            "kuberay_status_patches": len(self.kuberay_patched),
            "errors": {
                "create": self.create_errors[:20],
                "kuberay": self.kuberay_errors[:20],
                "watch": (self.rs_watch.errors + self.agent_watch.errors)[:20],
            },
        }

    def adapter_fanout(self, timeout: float) -> dict[str, Any]:
        """The shared adapter's gateway loses its replicas, then gets them back: how long until
        every agent granted it reports that (Ready False, then True again)?"""
        phases: dict[str, Any] = {}
        for phase, replicas, wanted in (("down", 0, "False"), ("up", GATEWAY_REPLICAS, "True")):
            log(f"adapter fan-out: gateway replicas -> {replicas}; waiting for Ready={wanted}")
            started = time.monotonic()
            set_gateway_available(self.cluster, replicas)
            deadline = started + timeout
            while time.monotonic() < deadline:
                with self.lock:
                    done = all(self.current.get(n) == wanted for n in self.names)
                if done:
                    break
                time.sleep(0.05)
            with self.lock:
                reached = {
                    name: at - started
                    for at, name, status in reversed(self.changes)
                    if at >= started and status == wanted
                }
                count = sum(self.current.get(n) == wanted for n in self.names)
            latencies = [reached[n] for n in self.names if n in reached]
            phases[phase] = {
                "gateway_available_replicas": replicas,
                "agents_reached": count,
                "all_reached": count == len(self.names),
                "last_agent_s": round(max(latencies), 3) if latencies else None,
                "first_agent_s": round(min(latencies), 3) if latencies else None,
                "per_agent": summary_s(latencies),
            }
            took = time.monotonic() - started
            log(f"  {count}/{len(self.names)} Ready={wanted} after {took:.1f} s")
        return phases

    def stop(self) -> None:
        for watcher in (self.rs_watch, self.agent_watch):
            watcher.stop()
        self.kuberay_pool.shutdown(wait=True, cancel_futures=True)


def set_gateway_available(cluster: Cluster, available: int) -> bool:
    """Play the Deployment controller for the adapter's gateway; False while it does not exist."""
    gateway = f"{ADAPTER}-gateway"
    return cluster.make_deployment_available(NAMESPACE, gateway, available, GATEWAY_REPLICAS)


def prepare_adapter(cluster: Cluster, timeout: float = 60) -> None:
    """One shared ToolAdapter, Ready: its gateway Deployment's status patched to available."""
    adapter = {
        "apiVersion": API_VERSION,
        "kind": "ToolAdapter",
        "metadata": {"name": ADAPTER},
        "spec": bench_adapter_spec(),
    }
    cluster.create(adapter, NAMESPACE)
    cluster.wait_for(
        f"the gateway of ToolAdapter {NAMESPACE}/{ADAPTER}",
        lambda: set_gateway_available(cluster, GATEWAY_REPLICAS),
        timeout,
    )

    def ready() -> bool:
        return (
            ready_status(cluster.get(API_VERSION, "ToolAdapter", NAMESPACE, ADAPTER) or {})
            == "True"
        )

    cluster.wait_for(f"ToolAdapter {NAMESPACE}/{ADAPTER} Ready", ready, timeout)


def audit_summary(
    envtest: EnvTest, user: str, since: str, until: str | None, agents: int
) -> dict[str, Any]:
    """``user``'s API requests between two audit timestamps (RFC 3339, microseconds)."""
    by_call: Counter[str] = Counter()
    codes: Counter[str] = Counter()
    total = watches = 0
    for event in envtest.audit_events():
        if event.get("user", {}).get("username") != user:
            continue
        stamp = event.get("requestReceivedTimestamp", "")
        if stamp < since or (until and stamp > until):
            continue
        if event.get("verb") == "watch":  # long-lived streams, not per-agent work
            watches += 1
            continue
        ref = event.get("objectRef") or {}
        resource = ref.get("resource", "?") + (
            f"/{ref['subresource']}" if ref.get("subresource") else ""
        )
        by_call[f"{event.get('verb')} {resource}"] += 1
        codes[str((event.get("responseStatus") or {}).get("code", "?"))] += 1
        total += 1
    return {
        "operator_requests": total,
        "watch_requests_not_counted": watches,
        "per_agent": round(total / agents, 2) if agents else None,
        "by_verb_and_resource": dict(by_call.most_common()),
        "by_response_code": dict(codes.most_common()),
    }


def audit_now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


# --------------------------------------------------------------------------------------------
# Orchestration


@contextmanager
def terminate_as_exit() -> Iterator[None]:
    """SIGTERM/SIGHUP → SystemExit, so the clean-up in `finally` runs."""

    def handler(signum: int, _frame: FrameType | None) -> None:
        raise SystemExit(128 + signum)

    previous = {s: signal.signal(s, handler) for s in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def self_cpu_seconds() -> float:
    times = os.times()
    return times.user + times.system


def pid_running(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def bench_scale(args: argparse.Namespace) -> dict[str, Any]:
    helm = helm_binary()
    run_dir = Path(tempfile.mkdtemp(prefix="switchboard-bench-"))
    server_pids: dict[str, int] = {}
    operator: OperatorProcess | None = None
    load: Load | None = None
    profiler: Profiler | None = None
    helper_pids: dict[str, int] = {}
    result: dict[str, Any] = {"run_dir": str(run_dir) if args.keep else None}
    cleanup: dict[str, Any] = {}
    try:
        log(f"starting etcd + kube-apiserver in {run_dir}")
        envtest = start_envtest(run_dir, timeout=180)
        server_pids = envtest.server_pids()  # stop.sh removes the pid files
        admin = new_api_client(envtest.kubeconfig, pool_size=args.create_workers + 8)
        install_envtest_crds(admin)
        cluster = Cluster(admin)
        cluster.namespace(NAMESPACE)
        install = install_chart(envtest, helm, CHART_RELEASE, OPERATOR_NAMESPACE)
        log(f"CRDs and the chart installed; starting the operator as {install.user}")

        metrics_port, liveness_port = pick_ports(2, taken={envtest.api_port})
        operator = OperatorProcess(
            install.kubeconfig, run_dir, metrics_port, liveness_port, args.operator_pythonpath
        )
        operator.wait_live(60)
        prepare_adapter(cluster)
        time.sleep(1.0)  # let the adapter's follow-up events settle before measuring
        idle = operator.memory()
        idle_cpu = cpu_seconds(operator.pid)
        log(f"operator live (pid {operator.pid}, {idle['vm_rss_mb']} MB RSS); ToolAdapter Ready")

        load = Load(cluster, args.agents, args.create_workers)
        load.start_watching()
        if args.profile:
            profiler = Profiler(operator.pid, args.profile.resolve())
            helper_pids["py-spy"] = profiler.proc.pid
            time.sleep(1.0)  # py-spy attaches
        servers_before = {n: cpu_seconds(p) for n, p in server_pids.items()}
        self_before = self_cpu_seconds()
        since = audit_now()
        scale = load.run(args.timeout)
        until = audit_now()
        busy_cpu = cpu_seconds(operator.pid) - idle_cpu
        cpu_until_ready = {
            "operator": round(busy_cpu, 2),
            **{n: round(cpu_seconds(p) - servers_before[n], 2) for n, p in server_pids.items()},
            "benchmark_client": round(self_cpu_seconds() - self_before, 2),
        }
        log(
            f"{scale['agents_ready']}/{scale['agents']} Ready; total {scale['total_s']} s; "
            f"settling {args.settle:.0f} s"
        )
        time.sleep(args.settle)  # follow-up events (status writes, child events) land now
        settled_cpu = cpu_seconds(operator.pid) - idle_cpu
        if profiler is not None:
            result["profile"] = profiler.stop()
            profiler = None
        memory = operator.memory()
        total_s = scale["total_s"]
        peak = memory["peak_rss_mb"]
        result.update(
            {
                "scale": scale,
                "operator_memory": {"idle_before_load": idle, "after_load": memory},
                "cpu_s": {
                    "until_all_ready": cpu_until_ready,
                    "operator_including_settle": round(settled_cpu, 2),
                    "note": (
                        "user+system CPU seconds from the first create until all Ready; "
                        f"the machine has {os.cpu_count()} cores"
                    ),
                },
                "operator_metrics": parse_metrics(operator.scrape()),
                "api_requests": {
                    "until_all_ready": audit_summary(
                        envtest, install.user, since, until, args.agents
                    ),
                    "including_settle": audit_summary(
                        envtest, install.user, since, None, args.agents
                    ),
                },
                "targets": {
                    "agents": TARGET_AGENTS,
                    "max_seconds": TARGET_SECONDS,
                    "max_rss_mb": TARGET_RSS_MB,
                    "seconds_pass": (
                        total_s is not None
                        and total_s <= TARGET_SECONDS
                        and args.agents >= TARGET_AGENTS
                    ),
                    "rss_pass": peak <= TARGET_RSS_MB,
                    "measured_seconds": total_s,
                    "measured_peak_rss_mb": peak,
                },
            }
        )
        if args.adapter_fanout and scale["all_ready"]:
            fanout_since = audit_now()
            fanout_cpu = cpu_seconds(operator.pid)
            phases = load.adapter_fanout(args.timeout)
            result["adapter_fanout"] = {
                **phases,
                "operator_cpu_s": round(cpu_seconds(operator.pid) - fanout_cpu, 2),
                "api_requests": audit_summary(
                    envtest, install.user, fanout_since, None, args.agents
                ),
                "operator_metrics_after": parse_metrics(operator.scrape()),
                "operator_memory_after": operator.memory(),
                "note": (
                    "after the scale run: the shared ToolAdapter's gateway Deployment status is "
                    "patched to 0 available replicas, then back; times from each patch until "
                    "every agent's Ready condition followed (each agent granted the adapter is "
                    "marked and reconciles in its own worker). Not part of the targets."
                ),
            }
        result["operator_alive_at_end"] = operator.alive()
    finally:
        if profiler is not None:
            profiler.stop()
        if load is not None:
            load.stop()
        if operator is not None:
            cleanup["operator"] = operator.stop()
            if not result.get("scale") or not result["scale"].get("all_ready"):
                log("operator log tail:\n" + operator.log_tail())
        log("stopping the servers")
        stop_envtest(run_dir)
        pids = {**server_pids, **helper_pids}
        if operator is not None:
            pids["operator"] = operator.pid
            pids.update({f"operator-child-{p}": p for p in operator.children_seen})
        cleanup["leftover_processes"] = sorted(n for n, p in pids.items() if pid_running(p))
        if args.keep:
            log(f"kept {run_dir} (audit.log, operator.log)")
        else:
            shutil.rmtree(run_dir, ignore_errors=True)
        result["cleanup"] = cleanup
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--agents", type=int, default=TARGET_AGENTS, help="SupportAgents to create")
    parser.add_argument("--create-workers", type=int, default=16, help="threads creating agents")
    parser.add_argument("--render-iterations", type=int, default=2000)
    parser.add_argument("--timeout", type=float, default=300, help="max seconds to wait for Ready")
    parser.add_argument("--settle", type=float, default=5, help="seconds to wait after all Ready")
    parser.add_argument("--skip-scale", action="store_true", help="render benchmark only")
    parser.add_argument(
        "--no-adapter-fanout",
        dest="adapter_fanout",
        action="store_false",
        help="skip flipping the shared adapter's readiness after the scale run",
    )
    parser.add_argument("--keep", action="store_true", help="keep the RUN dir (logs, audit log)")
    parser.add_argument(
        "--operator-pythonpath",
        type=Path,
        metavar="DIR",
        help="run the operator with DIR first on PYTHONPATH: another commit's package, e.g. "
        "`git worktree add /tmp/old REV && pip install --no-deps --target DIR /tmp/old`, for a "
        "before/after comparison on the same machine (the chart and CRDs stay this commit's)",
    )
    parser.add_argument("--json-out", type=Path, help="also write the JSON document here")
    parser.add_argument(
        "--profile",
        type=Path,
        metavar="FILE",
        help="py-spy the operator during the load (raw stacks to FILE, summary in the JSON); "
        "slows it down, so do not quote that run's timings",
    )
    args = parser.parse_args(argv)

    document: dict[str, Any] = {
        "benchmark": "switchboard operator",
        "command": " ".join([".venv/bin/python", "benchmarks/operator.py", *sys.argv[1:]]),
        "git": git_revision(),
        "machine": machine_facts(),
        "concurrent_pytest_at_start": concurrent_pytest(),
        "busy_processes_at_start": busy_processes(),
    }
    with terminate_as_exit():
        document["render"] = bench_render(args.render_iterations)
        if not args.skip_scale:
            try:
                document.update(bench_scale(args))
            except SetupError as exc:  # a missing binary or a server that did not start
                raise SystemExit(f"benchmark: {exc}") from None
    document["concurrent_pytest_at_end"] = concurrent_pytest()
    document["busy_processes_at_end"] = busy_processes()
    document["machine"]["load_avg_at_end"] = [round(x, 2) for x in os.getloadavg()]
    text = json.dumps(document, indent=2)
    print(text)
    if args.json_out:
        args.json_out.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
