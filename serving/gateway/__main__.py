"""`python -m switchboard.serving.gateway [--host H] [--port P]`: the tool-gateway container's
command. A missing or invalid configuration ends it with one line on stderr and exit status 2.
SIGTERM (or Ctrl-C) stops it gracefully: no new connections, calls in flight finish (for up to
GRACEFUL_SHUTDOWN_SECONDS), exit status 0."""

from __future__ import annotations

import argparse
import os
import signal
import sys
from types import FrameType

from ..config import GATEWAY_HTTP_PORT
from .app import (
    DEFAULT_MAX_BODY_BYTES,
    DEFAULT_MAX_RESPONSE_BYTES,
    ConfigError,
    create_app,
    load_config,
)
from .logs import log_config

# Below the pod's 30 s terminationGracePeriodSeconds, so in-flight calls finish before SIGKILL.
GRACEFUL_SHUTDOWN_SECONDS = 20


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m switchboard.serving.gateway",
        description="Tool gateway of one ToolAdapter; config from SWITCHBOARD_GATEWAY_CONFIG.",
    )
    parser.add_argument("--host", default="0.0.0.0")
    parser.add_argument("--port", type=int, default=GATEWAY_HTTP_PORT)
    parser.add_argument("--max-body-bytes", type=_positive, default=DEFAULT_MAX_BODY_BYTES)
    parser.add_argument("--max-response-bytes", type=_positive, default=DEFAULT_MAX_RESPONSE_BYTES)
    parser.add_argument(
        "--log-level", default="info", choices=["debug", "info", "warning", "error"]
    )
    args = parser.parse_args(argv)
    try:
        app = create_app(
            load_config(os.environ),
            max_body_bytes=args.max_body_bytes,
            max_response_bytes=args.max_response_bytes,
        )
    except ConfigError as exc:
        print(f"switchboard gateway: {exc}", file=sys.stderr)
        return 2
    # Imported here: a configuration error is reported without loading the server.
    import uvicorn

    server = uvicorn.Server(
        uvicorn.Config(
            app,
            host=args.host,
            port=args.port,
            log_config=log_config(args.log_level),
            access_log=False,
            server_header=False,
            timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_SECONDS,
        )
    )

    def stop(signum: int, frame: FrameType | None) -> None:
        # uvicorn takes SIGTERM/SIGINT while it serves, drains, then restores these handlers and
        # raises the signal again: Python's defaults would end the process with status -15 (or
        # a KeyboardInterrupt). Here that is a no-op; a signal that comes before uvicorn's
        # handlers are in place makes it shut down as soon as it has started.
        if not server.should_exit:
            server.handle_exit(signum, frame)

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, stop)
    server.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
