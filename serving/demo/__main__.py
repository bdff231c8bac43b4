"""`python -m switchboard.serving.demo --db PATH`: both demo systems on loopback until SIGINT or
SIGTERM.

Credentials default to the quickstart Secrets' values; the environment variables below override
them without putting secrets on the command line (where `ps` shows them).
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
from types import FrameType

from .apps import DEFAULT_TICKETING_PREFIX
from .server import (
    DEFAULT_ORDERS_TOKEN,
    DEFAULT_TICKETING_PASSWORD,
    DEFAULT_TICKETING_USERNAME,
    DemoCredentials,
    start_demo_systems,
)

ORDERS_TOKEN_ENV = "SWITCHBOARD_DEMO_ORDERS_TOKEN"
TICKETING_USER_ENV = "SWITCHBOARD_DEMO_TICKETING_USER"
TICKETING_PASSWORD_ENV = "SWITCHBOARD_DEMO_TICKETING_PASSWORD"


def _parser() -> argparse.ArgumentParser:
    env = os.environ.get
    p = argparse.ArgumentParser(
        prog="python -m switchboard.serving.demo",
        description="Run the demo orders and ticketing systems (SQLite-backed) on loopback.",
    )
    p.add_argument("--db", required=True, help="SQLite file; created and seeded if new")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--orders-port", type=int, default=8081, help="0 picks a free port")
    p.add_argument("--ticketing-port", type=int, default=8082, help="0 picks a free port")
    p.add_argument(
        "--orders-token",
        default=env(ORDERS_TOKEN_ENV, DEFAULT_ORDERS_TOKEN),
        help=f"bearer token the orders API accepts (env {ORDERS_TOKEN_ENV})",
    )
    p.add_argument(
        "--ticketing-user",
        default=env(TICKETING_USER_ENV, DEFAULT_TICKETING_USERNAME),
        help=f"basic-auth user of the ticketing API (env {TICKETING_USER_ENV})",
    )
    p.add_argument(
        "--ticketing-password",
        default=env(TICKETING_PASSWORD_ENV, DEFAULT_TICKETING_PASSWORD),
        help=f"basic-auth password of the ticketing API (env {TICKETING_PASSWORD_ENV})",
    )
    p.add_argument("--ticketing-prefix", default=DEFAULT_TICKETING_PREFIX)
    p.add_argument("--log-level", default="warning", choices=["debug", "info", "warning", "error"])
    p.add_argument("--access-log", action="store_true", help="log every request (info level)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    level = "info" if args.access_log and args.log_level == "warning" else args.log_level
    logging.basicConfig(level=level.upper(), format="%(asctime)s %(name)s %(message)s")
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    # Installed before the servers start so that an early Ctrl-C still exits cleanly.
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, on_signal)
    try:
        systems = start_demo_systems(
            args.db,
            host=args.host,
            orders_port=args.orders_port,
            ticketing_port=args.ticketing_port,
            credentials=DemoCredentials(
                orders_token=args.orders_token,
                ticketing_username=args.ticketing_user,
                ticketing_password=args.ticketing_password,
            ),
            ticketing_prefix=args.ticketing_prefix,
            log_level=level,
            access_log=args.access_log,
        )
    except (OSError, RuntimeError, ValueError) as exc:
        print(f"demo systems failed to start: {exc}", file=sys.stderr)
        return 1
    print(f"orders     {systems.orders_url}", flush=True)
    print(f"ticketing  {systems.ticketing_url}", flush=True)
    print(f"database   {systems.store.path}  (Ctrl-C stops)", flush=True)
    crashed = False
    with systems:
        while not stop.wait(0.5):
            if not systems.alive():
                crashed = True
                break
    if crashed:
        print("a demo system stopped unexpectedly", file=sys.stderr)
        return 1
    print("stopped", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
