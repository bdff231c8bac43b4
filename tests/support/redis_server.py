"""A real ``redis-server`` (Debian's package; ``make redis`` installs it) for the shared
session store."""

from __future__ import annotations

import contextlib
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from .binaries import require_binary
from .errors import SetupError
from .ports import pick_ports

START_TIMEOUT_S = 10.0


@dataclass(frozen=True)
class RedisServer:
    url: str
    port: int
    process: subprocess.Popen[bytes]


def _answers_ping(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(16).startswith(b"+PONG")
    except OSError:
        return False


@contextlib.contextmanager
def running_redis(data_dir: Path) -> Iterator[RedisServer]:
    """A redis-server on a free loopback port, no persistence, stopped on the way out."""
    binary = require_binary("redis-server", "run `make redis` (Debian: redis-server)")
    [port] = pick_ports(1)
    process = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
         "--dir", str(data_dir), "--protected-mode", "yes"],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT,
    )  # fmt: skip
    deadline = time.monotonic() + START_TIMEOUT_S
    while not _answers_ping(port):
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            raise SetupError(f"redis-server did not start on port {port}")
        time.sleep(0.05)
    try:
        yield RedisServer(f"redis://127.0.0.1:{port}/0", port, process)
    finally:
        process.terminate()
        process.wait(timeout=10)
