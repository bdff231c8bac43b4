"""Plays KubeRay's RayJob controller against the envtest server, for retraining runs.

KubeRay cannot run here (no kubelet to start a Ray cluster), so this thread does what it and
Ray's job submission would: it finds each new RayJob, reports it Initializing then Running,
runs the job's `spec.entrypoint` for real in a subprocess — `switchboard ...` is this checkout's
CLI (`python -P -m switchboard.operator.cli`), with the environment the RayJob gives its Ray
containers, Secret references resolved from the cluster — and reports the outcome as KubeRay
1.x does (`jobStatus` SUCCEEDED/FAILED, `jobDeploymentStatus` Complete/Failed, the entrypoint's
last output in `message`). A test may `hold` a job instead: it stays Running until `release`d.
"""

from __future__ import annotations

import base64
import os
import shlex
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from .cluster import Cluster

API = "ray.io/v1"
# The standard AWS variables come only from the RayJob (as on a cluster), never from the test's
# own environment.
AMBIENT_DROPPED = ("AWS_",)
ENTRYPOINT_TIMEOUT_S = 900


@dataclass
class Played:
    name: str
    command: list[str]
    env: dict[str, str]
    returncode: int | None = None
    output: str = ""


@dataclass
class RayJobPlayer:
    cluster: Cluster
    namespace: str
    hold: bool = False
    """New jobs stay Running (their entrypoint not run) until released."""
    played: dict[str, Played] = field(default_factory=dict)
    _held: dict[str, bool | None] = field(default_factory=dict)
    _stop: threading.Event = field(default_factory=threading.Event)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _errors: list[BaseException] = field(default_factory=list)

    def __enter__(self) -> RayJobPlayer:
        self._thread = threading.Thread(target=self._loop, name="rayjob-player", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=ENTRYPOINT_TIMEOUT_S)
        if self._errors:
            raise self._errors[0]

    def release(self, name: str, succeeded: bool) -> None:
        """End a held job as KubeRay would report it (without running its entrypoint)."""
        with self._lock:
            self._held[name] = succeeded

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                for job in self.cluster.list(API, "RayJob", self.namespace):
                    self._step(job)
            except BaseException as exc:  # surfaced by __exit__, with the test's own failure
                self._errors.append(exc)
                return
            time.sleep(0.3)

    def _status(self, name: str, status: dict[str, Any]) -> None:
        self.cluster.patch_status(API, "RayJob", self.namespace, name, status)

    def _step(self, job: dict[str, Any]) -> None:
        name = job["metadata"]["name"]
        status = job.get("status") or {}
        if not status:
            self._status(name, {"jobDeploymentStatus": "Initializing", "jobId": name})
            return
        if status.get("jobDeploymentStatus") != "Initializing":
            self._finish_held(name)
            return
        self._status(name, {"jobDeploymentStatus": "Running", "jobStatus": "RUNNING"})
        if self.hold:
            with self._lock:  # a release may have come first
                self._held.setdefault(name, None)
            return
        played = self._run(job)
        self.played[name] = played
        self._report(name, played.returncode == 0, played.output, played.returncode)

    def _finish_held(self, name: str) -> None:
        with self._lock:
            outcome = self._held.get(name)
            if outcome is None:
                return
            del self._held[name]
        self._report(name, outcome, "released by the test", 0 if outcome else 1)

    def _report(self, name: str, succeeded: bool, output: str, code: int | None) -> None:
        if succeeded:
            self._status(
                name,
                {
                    "jobStatus": "SUCCEEDED",
                    "jobDeploymentStatus": "Complete",
                    "message": "Job finished successfully.",
                },
            )
            return
        self._status(
            name,
            {
                "jobStatus": "FAILED",
                "jobDeploymentStatus": "Failed",
                "reason": "AppFailed",
                "message": f"Job entrypoint command failed with exit code {code}, last available "
                f"logs (truncated to 20,000 chars):\n{output[-20000:]}",
            },
        )

    def _env(self, job: dict[str, Any]) -> dict[str, str]:
        head = job["spec"]["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]["containers"][0]
        env = {k: v for k, v in os.environ.items() if not k.startswith(AMBIENT_DROPPED)}
        for var in head.get("env") or []:
            if "value" in var:
                env[var["name"]] = var["value"]
                continue
            ref = var["valueFrom"]["secretKeyRef"]
            secret = self.cluster.get("v1", "Secret", self.namespace, ref["name"])
            assert secret is not None, f"Secret {ref['name']} of RayJob missing"
            env[var["name"]] = base64.b64decode(secret["data"][ref["key"]]).decode()
        return env

    def _run(self, job: dict[str, Any]) -> Played:
        command = shlex.split(job["spec"]["entrypoint"])
        assert command[0] == "switchboard", command
        argv = [sys.executable, "-P", "-m", "switchboard.operator.cli", *command[1:]]
        env = self._env(job)
        result = subprocess.run(
            argv, env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True,
            timeout=ENTRYPOINT_TIMEOUT_S, check=False,
        )  # fmt: skip
        return Played(
            job["metadata"]["name"], command, env, result.returncode, result.stdout + result.stderr
        )
