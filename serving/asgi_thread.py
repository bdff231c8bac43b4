"""ASGI apps served by uvicorn in background threads of the calling process: the demo systems,
local tool gateways, and the single-process agent server.

Each server gets a socket bound before its thread starts: a port conflict raises in the caller,
and port 0 yields a free port whose number is known at once. Servers in non-main threads install
no signal handlers, so the host process keeps control of SIGINT/SIGTERM.
"""

from __future__ import annotations

import socket
import threading
import time
from typing import Any, Literal

import uvicorn

STARTUP_TIMEOUT_SECONDS = 10.0
# In-flight requests (a long injected delay, say) are cancelled after this on stop().
GRACEFUL_SHUTDOWN_SECONDS = 2


def listen(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    return socket.create_server((host, port), family=family, backlog=2048)


def url_of(sock: socket.socket, host: str) -> str:
    port = sock.getsockname()[1]
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


class ServerThread:
    def __init__(
        self,
        name: str,
        app: Any,
        sock: socket.socket,
        log_level: str = "warning",
        access_log: bool = False,
        lifespan: Literal["auto", "on", "off"] = "off",
    ) -> None:
        config = uvicorn.Config(
            app,
            lifespan=lifespan,
            # The host process owns logging: uvicorn's loggers propagate to its handlers.
            log_config=None,
            log_level=log_level,
            access_log=access_log,
            timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_SECONDS,
        )
        self.server = uvicorn.Server(config)
        self.sock = sock
        self.thread = threading.Thread(
            target=self.server.run, kwargs={"sockets": [sock]}, name=name, daemon=True
        )

    def start(self, timeout: float = STARTUP_TIMEOUT_SECONDS) -> None:
        self.thread.start()
        deadline = time.monotonic() + timeout
        while not self.server.started:
            if not self.thread.is_alive():
                raise RuntimeError(f"{self.thread.name} server exited during startup")
            if time.monotonic() > deadline:
                raise RuntimeError(f"{self.thread.name} server did not start in {timeout}s")
            time.sleep(0.01)

    def signal_stop(self) -> None:
        self.server.should_exit = True

    def join(self, timeout: float) -> None:
        if self.thread.is_alive():
            self.thread.join(timeout)
        # uvicorn closes the socket on a normal shutdown; this covers a failed startup.
        self.sock.close()

    def stop(self, timeout: float = 10.0) -> None:
        self.signal_stop()
        self.join(timeout)


def serve_in_thread(
    name: str,
    app: Any,
    host: str = "127.0.0.1",
    port: int = 0,
    lifespan: Literal["auto", "on", "off"] = "off",
) -> tuple[str, ServerThread]:
    """Start `app` and return its base URL and the thread handle (call `.stop()`)."""
    sock = listen(host, port)
    server = ServerThread(name, app, sock, lifespan=lifespan)
    try:
        server.start()
    except Exception:
        server.stop(1)
        raise
    return url_of(sock, host), server
