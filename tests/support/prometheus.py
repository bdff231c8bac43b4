"""A real Prometheus (Debian's ``prometheus`` 2.42; ``make prometheus`` installs it)."""

from __future__ import annotations

import json
import subprocess
import time
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import yaml

from .binaries import require_binary
from .errors import SetupError
from .ports import pick_ports

INSTALL_HINT = "run `make prometheus` (Debian: prometheus)"


def prometheus_binary(name: str = "prometheus") -> str:
    """``prometheus`` or ``promtool`` (both in Debian's package)."""
    return require_binary(name, INSTALL_HINT)


class PrometheusServer:
    """A real `prometheus` on a free loopback port with a temp TSDB, scraping `targets`
    (host:port, `/metrics`) every second. `stop()`/`start()` play an outage; `set_targets`
    rewrites the config and reloads it."""

    def __init__(self, binary: str, home: Path, targets: list[str], interval: str = "1s") -> None:
        self.binary = binary
        self.home = home
        self.interval = interval
        [self.port] = pick_ports(1)
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
                raise SetupError(f"prometheus did not start:\n{self.log_tail()}")
            time.sleep(0.1)

    def _ready(self) -> bool:
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
        self._write_config(targets, labels)
        request = urllib.request.Request(f"{self.url}/-/reload", method="POST")
        with urllib.request.urlopen(request, timeout=10):
            pass

    def query(self, promql: str) -> list[dict[str, Any]]:
        """The instant vector (or scalar as one sample) of `promql` now."""
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
