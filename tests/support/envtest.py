"""A real etcd + kube-apiserver 1.20 on loopback, started by ``tests/envtest/start.sh``.

The binaries come from ``make envtest`` (``~/.cache/switchboard/envtest-1.20``) or the folder
``SWITCHBOARD_ENVTEST_BIN`` names. The server knows the bearer token :data:`ADMIN_TOKEN`
(``system:masters``), signs service-account tokens (TokenRequest), and audits every request to
``audit.log`` in its run folder.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from kubernetes import client, config

from .errors import SetupError
from .paths import ENVTEST_SCRIPTS
from .ports import pick_ports, port_is_free

ADMIN_TOKEN = "admin-token"
DEFAULT_ENVTEST_BIN = Path.home() / ".cache" / "switchboard" / "envtest-1.20"
START_TIMEOUT_S = 120.0
STOP_TIMEOUT_S = 90.0


@dataclass(frozen=True)
class EnvTest:
    """A running etcd + kube-apiserver pair, its state in ``run_dir``."""

    run_dir: Path
    server: str
    kubeconfig: Path
    admin_token: str
    bin_dir: Path

    @property
    def api_port(self) -> int:
        return int(self.server.rsplit(":", 1)[1])

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

    def server_pids(self) -> dict[str, int]:
        """The PIDs of ``etcd`` and ``apiserver`` (gone once stopped: stop.sh removes them)."""
        pids = {}
        for name in ("etcd", "apiserver"):
            with contextlib.suppress(OSError, ValueError):
                pids[name] = int((self.run_dir / f"{name}.pid").read_text().strip())
        return pids

    def log_tail(self, lines: int = 30) -> str:
        """The last lines of the API server's and etcd's logs, for failure messages."""
        return log_tail(self.run_dir, lines)


def new_api_client(kubeconfig: Path, *, pool_size: int | None = None) -> client.ApiClient:
    """An ApiClient for one kubeconfig file; ``pool_size`` for clients used from many
    threads at once (urllib3 keeps 4 connections otherwise, and warns)."""
    configuration = client.Configuration()
    config.load_kube_config(config_file=str(kubeconfig), client_configuration=configuration)
    if pool_size is not None:
        configuration.connection_pool_maxsize = pool_size
    return client.ApiClient(configuration)


def envtest_bin_dir() -> Path:
    """The folder with ``kube-apiserver`` and ``etcd``; missing ones are a SetupError."""
    bin_dir = Path(os.environ.get("SWITCHBOARD_ENVTEST_BIN") or DEFAULT_ENVTEST_BIN).expanduser()
    missing = [b for b in ("kube-apiserver", "etcd") if not os.access(bin_dir / b, os.X_OK)]
    if missing:
        raise SetupError(
            f"envtest binaries missing in {bin_dir}: {', '.join(missing)}. Build them with "
            "`make envtest` (or set SWITCHBOARD_ENVTEST_BIN to a folder that has them)."
        )
    return bin_dir


def log_tail(run_dir: Path, lines: int = 30) -> str:
    parts = []
    for name in ("apiserver.log", "etcd.log"):
        log = run_dir / name
        if log.exists():
            tail = log.read_text(errors="replace").splitlines()[-lines:]
            parts.append(f"--- {log} (last {len(tail)} lines)\n" + "\n".join(tail))
    return "\n".join(parts) or f"(no logs in {run_dir})"


def _script(name: str, env: dict[str, str], timeout: float) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", str(ENVTEST_SCRIPTS / name)],
        env={**os.environ, **env},
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def _pick_server_ports() -> tuple[int, int]:
    """Free ``(api_port, etcd_port)`` with ``etcd_port + 1`` free too (etcd's peer port)."""
    for _ in range(200):
        api, etcd = pick_ports(2)
        if etcd + 1 != api and port_is_free(etcd + 1):
            return api, etcd
    raise SetupError("no free loopback ports for etcd + kube-apiserver")


def start_envtest(run_dir: Path, timeout: float = START_TIMEOUT_S) -> EnvTest:
    """Start etcd + kube-apiserver with their state in ``run_dir`` (which must exist); a server
    that does not start is a SetupError with its log tail. Stop it with :func:`stop_envtest`
    (also after a failed start: it stops whatever is left)."""
    bin_dir = envtest_bin_dir()
    (run_dir / "tokens.csv").write_text(f'{ADMIN_TOKEN},admin,admin,"system:masters"\n')
    api_port, etcd_port = _pick_server_ports()
    env = {
        "BIN": str(bin_dir),
        "RUN": str(run_dir),
        "API_PORT": str(api_port),
        "ETCD_PORT": str(etcd_port),
    }
    try:
        started = _script("start.sh", env, timeout)
    except subprocess.TimeoutExpired:
        raise SetupError(
            f"envtest start.sh timed out after {timeout:.0f}s\n" + log_tail(run_dir)
        ) from None
    if started.returncode != 0:
        raise SetupError(
            f"envtest start.sh failed (exit {started.returncode}):\n{started.stderr.strip()}\n"
            + log_tail(run_dir)
        )
    return EnvTest(
        run_dir=run_dir,
        server=f"https://127.0.0.1:{api_port}",
        kubeconfig=Path(started.stdout.strip().splitlines()[-1]),
        admin_token=ADMIN_TOKEN,
        bin_dir=bin_dir,
    )


def stop_envtest(run_dir: Path) -> None:
    """Stop what ``start.sh`` started in ``run_dir`` and remove etcd's data."""
    _script("stop.sh", {"RUN": str(run_dir)}, STOP_TIMEOUT_S)


@contextlib.contextmanager
def running_envtest(run_dir: Path) -> Iterator[EnvTest]:
    """``with running_envtest(run_dir) as envtest:`` the servers, stopped on the way out."""
    try:
        yield start_envtest(run_dir)
    finally:
        stop_envtest(run_dir)
