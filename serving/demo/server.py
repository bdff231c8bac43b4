"""Runs the two demo systems with uvicorn in background threads of the calling process.

Each server gets a socket bound here, before its thread starts: a port conflict raises in the
caller, and port 0 yields a free port whose number is known at once. Servers in non-main threads
install no signal handlers, so the host process (`switchboard serve`, a test, `__main__`) keeps
control of SIGINT/SIGTERM.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from ..asgi_thread import STARTUP_TIMEOUT_SECONDS, ServerThread, listen, url_of
from .apps import DEFAULT_TICKETING_PREFIX, build_orders_app, build_ticketing_app, normalize_prefix
from .faults import FaultInjector
from .store import DemoStore

# The quickstart Secrets' placeholder values (examples/quickstart/10-secrets.yaml), so gateways
# configured from those manifests authenticate against the demo systems as they are.
DEFAULT_ORDERS_TOKEN = "replace-me-orders-token"
DEFAULT_TICKETING_USERNAME = "switchboard"
DEFAULT_TICKETING_PASSWORD = "replace-me-ticketing-password"


@dataclass(frozen=True)
class DemoCredentials:
    orders_token: str = DEFAULT_ORDERS_TOKEN
    ticketing_username: str = DEFAULT_TICKETING_USERNAME
    ticketing_password: str = DEFAULT_TICKETING_PASSWORD


class DemoSystems:
    """Handle on the running demo systems; `stop()` (or leaving a `with` block) ends them."""

    def __init__(
        self,
        store: DemoStore,
        credentials: DemoCredentials,
        orders_url: str,
        ticketing_url: str,
        orders_faults: FaultInjector,
        ticketing_faults: FaultInjector,
        threads: list[ServerThread],
    ) -> None:
        self.store = store
        self.credentials = credentials
        self.orders_url = orders_url
        """Base URL of the orders API (the orders ToolAdapter's baseURL)."""
        self.ticketing_url = ticketing_url
        """Base URL of the ticketing API, prefix included (the ticketing ToolAdapter's)."""
        self.orders_faults = orders_faults
        self.ticketing_faults = ticketing_faults
        self._threads = threads
        self._stopped = False

    def alive(self) -> bool:
        return not self._stopped and all(t.thread.is_alive() for t in self._threads)

    def stop(self, timeout: float = 10.0) -> None:
        if self._stopped:
            return
        self._stopped = True
        for t in self._threads:  # both at once: each takes a few main-loop ticks to wind down
            t.signal_stop()
        for t in self._threads:
            t.join(timeout)
        self.store.close()

    def __enter__(self) -> DemoSystems:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def start_demo_systems(
    db_path: str | Path,
    *,
    host: str = "127.0.0.1",
    orders_port: int = 0,
    ticketing_port: int = 0,
    credentials: DemoCredentials | None = None,
    ticketing_prefix: str = DEFAULT_TICKETING_PREFIX,
    log_level: str = "warning",
    access_log: bool = False,
) -> DemoSystems:
    """Creates (and seeds) the SQLite file if needed and starts both systems; port 0 picks a
    free port. Returns once both accept connections."""
    credentials = credentials or DemoCredentials()
    store = DemoStore(db_path)
    orders_faults, ticketing_faults = FaultInjector(), FaultInjector()
    threads: list[ServerThread] = []
    try:
        orders_app = build_orders_app(store, token=credentials.orders_token, faults=orders_faults)
        ticketing_app = build_ticketing_app(
            store,
            username=credentials.ticketing_username,
            password=credentials.ticketing_password,
            prefix=ticketing_prefix,
            faults=ticketing_faults,
        )
        orders_sock = listen(host, orders_port)
        threads.append(ServerThread("demo-orders", orders_app, orders_sock, log_level, access_log))
        ticketing_sock = listen(host, ticketing_port)
        threads.append(
            ServerThread("demo-ticketing", ticketing_app, ticketing_sock, log_level, access_log)
        )
        for t in threads:
            t.start(STARTUP_TIMEOUT_SECONDS)
    except BaseException:
        for t in threads:
            t.signal_stop()
        for t in threads:
            t.join(STARTUP_TIMEOUT_SECONDS)
        store.close()
        raise
    return DemoSystems(
        store=store,
        credentials=credentials,
        orders_url=url_of(orders_sock, host),
        ticketing_url=url_of(ticketing_sock, host) + normalize_prefix(ticketing_prefix),
        orders_faults=orders_faults,
        ticketing_faults=ticketing_faults,
        threads=threads,
    )
