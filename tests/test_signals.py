"""SIGTERM, the signal a container gets, stops every long-running entrypoint cleanly: the
operator, the tool gateway and `switchboard serve` drain and exit 0 well inside the chart's
30 s terminationGracePeriodSeconds, without Ray's "*** SIGTERM received ... ***" stack dump.

Each entrypoint runs here as a real subprocess with the command line its container would use,
on 127.0.0.1 and free ports, and gets a real SIGTERM: a call in flight, a stop while Ray starts
and Ray's processes left behind are easiest to see from here. tests/test_images.py sends the
same signal to the three images (`podman stop`).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from support.ports import free_port, port_open
from switchboard.serving.config import GATEWAY_CONFIG_ENV

REPO_ROOT = Path(__file__).resolve().parents[1]
SWITCHBOARD = Path(sys.executable).with_name("switchboard")
GRACE_SECONDS = 30  # the chart's terminationGracePeriodSeconds (Kubernetes' default)
RAY_DUMP = "SIGTERM received"


def get(url: str, timeout: float = 5) -> tuple[int, bytes]:
    with urllib.request.urlopen(url, timeout=timeout) as reply:
        return int(reply.status), reply.read()


def answers(url: str) -> bool:
    try:
        return get(url, timeout=2)[0] == 200
    except OSError:
        return False


class Entrypoint:
    """A subprocess with its output (stdout and stderr) in a log file."""

    def __init__(self, args: list[str], log: Path, env: dict[str, str] | None = None) -> None:
        self.log = log
        self.children: set[int] = set()
        self.process = subprocess.Popen(
            args,
            env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
            cwd=REPO_ROOT,
            stdin=subprocess.DEVNULL,
            stdout=log.open("w"),
            stderr=subprocess.STDOUT,
        )

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_until(self, what: str, probe: Callable[[], bool], timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not probe():
            assert self.process.poll() is None, f"exited before {what}:\n{self.output()[-4000:]}"
            assert time.monotonic() < deadline, f"no {what} in {timeout}s:\n{self.output()[-4000:]}"
            time.sleep(0.2)

    def terminate(self) -> tuple[int, float]:
        """SIGTERM; the exit status and how long it took."""
        started = time.monotonic()
        self.process.send_signal(signal.SIGTERM)
        while (code := self.process.poll()) is None:
            # Ray may still start processes while it stops: keep track of all of them.
            self.children |= descendants(self.process.pid)
            if time.monotonic() - started > GRACE_SECONDS:
                self.process.kill()
                self.process.wait()
                pytest.fail(f"running {GRACE_SECONDS}s after SIGTERM:\n{self.output()[-4000:]}")
            time.sleep(0.05)
        return code, time.monotonic() - started

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()


def descendants(pid: int) -> set[int]:
    """Every process below `pid`, from /proc (Ray's gcs_server, raylet, workers, agents)."""
    found: set[int] = set()
    todo = [pid]
    while todo:
        parent = todo.pop()
        for task in Path(f"/proc/{parent}/task").glob("*"):
            with contextlib.suppress(OSError):
                for child in (task / "children").read_text().split():
                    if int(child) not in found:
                        found.add(int(child))
                        todo.append(int(child))
    return found


def alive(pids: set[int]) -> dict[int, str]:
    living = {}
    for pid in pids:
        with contextlib.suppress(OSError):
            stat = Path(f"/proc/{pid}/stat").read_text()
            if stat.split(") ", 1)[1][:1] != "Z":
                living[pid] = Path(f"/proc/{pid}/comm").read_text().strip()
    return living


# --- the tool gateway ----------------------------------------------------------------------


class SlowUpstream(ThreadingHTTPServer):
    """A business system on 127.0.0.1 that answers after `delay` seconds."""

    daemon_threads = True

    def __init__(self, delay: float) -> None:
        self.delay = delay
        self.received = threading.Event()

        class Handler(BaseHTTPRequestHandler):
            def do_GET(handler) -> None:
                self.received.set()
                time.sleep(self.delay)
                body = json.dumps({"state": "shipped"}).encode()
                handler.send_response(200)
                handler.send_header("content-type", "application/json")
                handler.send_header("content-length", str(len(body)))
                handler.end_headers()
                handler.wfile.write(body)

            def log_message(handler, *_: Any) -> None:
                pass

        super().__init__(("127.0.0.1", 0), Handler)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


@pytest.fixture
def slow_upstream() -> Iterator[SlowUpstream]:
    server = SlowUpstream(delay=3.0)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def gateway_config(base_url: str) -> str:
    return json.dumps(
        {
            "adapter": "orders",
            "namespace": "shop",
            "system": "orders",
            "base_url": base_url,
            "timeout_seconds": 10,
            "retries": {"attempts": 1},
            "operations": [{"name": "get_order", "method": "GET", "path": "/orders/{order_id}"}],
        }
    )


def test_gateway_finishes_the_call_in_flight_and_exits_0_on_sigterm(
    slow_upstream: SlowUpstream, tmp_path: Path
) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    gateway = Entrypoint(
        [sys.executable, "-P", "-m", "switchboard.serving.gateway", "--host=127.0.0.1",
         f"--port={port}"],
        tmp_path / "gateway.log",
        env={GATEWAY_CONFIG_ENV: gateway_config(slow_upstream.url)},
    )  # fmt: skip
    try:
        gateway.wait_until("/healthz", lambda: answers(f"{url}/healthz"), timeout=30)
        reply: dict[str, Any] = {}

        def call() -> None:
            request = urllib.request.Request(
                f"{url}/v1/ops/get_order",
                data=json.dumps({"order_id": "A1"}).encode(),
                headers={"content-type": "application/json"},
            )
            with urllib.request.urlopen(request, timeout=20) as answer:
                reply["status"], reply["body"] = answer.status, json.loads(answer.read())

        caller = threading.Thread(target=call)
        caller.start()
        assert slow_upstream.received.wait(10), gateway.output()
        code, seconds = gateway.terminate()
        caller.join(20)
    finally:
        gateway.kill()
    output = gateway.output()
    assert code == 0, output
    assert reply.get("status") == 200, (reply, output)
    assert reply["body"]["result"] == {"state": "shipped"}, (reply, output)
    assert slow_upstream.delay - 1 < seconds < GRACE_SECONDS, (seconds, output)
    assert "Finished server process" in output and "Traceback" not in output
    assert not port_open(port)


def test_gateway_exits_0_on_sigterm_when_idle(tmp_path: Path) -> None:
    port = free_port()
    gateway = Entrypoint(
        [sys.executable, "-P", "-m", "switchboard.serving.gateway", "--host=127.0.0.1",
         f"--port={port}"],
        tmp_path / "gateway.log",
        env={GATEWAY_CONFIG_ENV: gateway_config("http://127.0.0.1:9")},
    )  # fmt: skip
    try:
        gateway.wait_until("/healthz", lambda: answers(f"http://127.0.0.1:{port}/healthz"), 30)
        code, seconds = gateway.terminate()
    finally:
        gateway.kill()
    assert code == 0, gateway.output()
    assert seconds < 5, seconds


# --- the operator --------------------------------------------------------------------------


def test_operator_exits_0_on_sigterm(
    envtest: Any, installed_crds: dict[str, Any], tmp_path: Path
) -> None:
    health = free_port()
    operator = Entrypoint(
        [str(SWITCHBOARD), "operator", "--all-namespaces", f"--metrics-port={free_port()}",
         f"--liveness-port={health}"],
        tmp_path / "operator.log",
        env={"KUBECONFIG": str(envtest.kubeconfig)},
    )  # fmt: skip
    try:
        operator.wait_until(
            "health endpoint", lambda: answers(f"http://127.0.0.1:{health}/healthz"), 60
        )
        code, seconds = operator.terminate()
    finally:
        operator.kill()
    output = operator.output()
    assert code == 0, output
    assert seconds < 10, (seconds, output)
    assert "Traceback" not in output, output


# --- switchboard serve ---------------------------------------------------------------------


def serve_command(model: Path, port: int, state: Path) -> list[str]:
    return [
        str(SWITCHBOARD), "serve", "-f", str(REPO_ROOT / "examples" / "quickstart"),
        "--nlu-model", str(model), "--demo-systems", "--cpus", "2", "--host", "127.0.0.1",
        "--port", str(port), "--state-dir", str(state),
    ]  # fmt: skip


def demo_ports(output: str) -> list[int]:
    line = next(x for x in output.splitlines() if x.startswith("demo systems:"))
    return [int(port) for port in re.findall(r"http://127\.0\.0\.1:(\d+)", line)]


def assert_clean_stop(serve: Entrypoint, code: int, seconds: float) -> str:
    before = serve.children
    output = serve.output()
    assert code == 0, output
    assert seconds < GRACE_SECONDS, (seconds, output)
    assert RAY_DUMP not in output and "Traceback" not in output, output
    assert output.rstrip().endswith("stopped"), output
    deadline = time.monotonic() + 5
    while alive(before) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not alive(before), (alive(before), output)
    for port in demo_ports(output):
        assert not port_open(port), (port, output)
    return output


def test_serve_stops_everything_and_exits_0_on_sigterm(
    demo_nlu_model: Path, tmp_path: Path
) -> None:
    port = free_port()
    serve = Entrypoint(serve_command(demo_nlu_model, port, tmp_path / "state"), tmp_path / "log")
    try:
        serve.wait_until("agent ready", lambda: "agent ready" in serve.output(), timeout=300)
        status, body = 0, b""
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/v1/chat",
            data=json.dumps({"session_id": "s1", "message": "Where is my order?"}).encode(),
            headers={"content-type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=60) as reply:
            status, body = reply.status, reply.read()
        assert status == 200 and json.loads(body)["reply"], body
        # What `make demo` prints and serves besides the chat API: the two pages.
        printed = serve.output()
        for page in ("widget", "console"):
            assert f"http://127.0.0.1:{port}/{page}" in printed, printed
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/{page}", timeout=30) as reply:
                assert reply.status == 200 and b"<html" in reply.read()
        assert "sign in as alice, bob" in printed
        ray = alive(descendants(serve.process.pid))
        assert {"raylet", "gcs_server"} <= set(ray.values()), ray
        code, seconds = serve.terminate()
    finally:
        serve.kill()
    assert_clean_stop(serve, code, seconds)
    assert not port_open(port)


def test_serve_stops_cleanly_on_sigterm_while_ray_starts(
    demo_nlu_model: Path, tmp_path: Path
) -> None:
    """A SIGTERM while Ray is still starting is held until `ray.init` returns (an exception in
    there would strand some of Ray's processes) and then stops everything the same way."""
    serve = Entrypoint(
        serve_command(demo_nlu_model, free_port(), tmp_path / "state"), tmp_path / "log"
    )
    try:
        serve.wait_until("gcs_server", lambda: "gcs_server" in alive(
            descendants(serve.process.pid)).values(), timeout=120)  # fmt: skip
        time.sleep(0.5)
        code, seconds = serve.terminate()
    finally:
        serve.kill()
    output = assert_clean_stop(serve, code, seconds)
    assert "agent ready" not in output, output


@pytest.mark.parametrize(
    ("open_files", "maxconn"), [(1_048_576, None), (10_300, None), (4096, "1280"), (1024, "256")]
)
def test_haproxy_gets_fewer_connections_under_a_low_open_files_limit(
    open_files: int, maxconn: str | None
) -> None:
    """HAProxy refuses to start when its connections need more descriptors than allowed (a
    container's 1024): a local run then gives it fewer. tests/test_images.py runs the runtime
    image so, for real."""
    from switchboard.serving.local import haproxy_connection_limit

    assert haproxy_connection_limit(open_files).get("RAY_SERVE_HAPROXY_MAXCONN") == maxconn


def test_haproxy_ports_avoid_the_ports_the_run_already_chose() -> None:
    """The kernel hands a just-released port out again: HAProxy's stats page once took the
    agent's HTTP port, and its frontend could not bind."""
    from switchboard.serving.local import free_ports

    chosen = frozenset(free_ports(20))
    assert not chosen & set(free_ports(20, chosen))
