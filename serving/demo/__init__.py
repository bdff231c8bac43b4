"""Demo business systems for `make demo` and the tests: an orders API and a ticketing API backed
by one SQLite file, with real credentials checks and switchable fault injection.

`start_demo_systems(db_path)` runs both in background threads of this process;
`python -m switchboard.serving.demo` runs them standalone.
"""

from .apps import DEFAULT_TICKETING_PREFIX, build_orders_app, build_ticketing_app
from .faults import FaultInjector, FaultSettings
from .server import (
    DEFAULT_ORDERS_TOKEN,
    DEFAULT_TICKETING_PASSWORD,
    DEFAULT_TICKETING_USERNAME,
    DemoCredentials,
    DemoSystems,
    start_demo_systems,
)
from .store import SAMPLE_ORDERS, DemoStore

__all__ = [
    "DEFAULT_ORDERS_TOKEN",
    "DEFAULT_TICKETING_PASSWORD",
    "DEFAULT_TICKETING_PREFIX",
    "DEFAULT_TICKETING_USERNAME",
    "SAMPLE_ORDERS",
    "DemoCredentials",
    "DemoStore",
    "DemoSystems",
    "FaultInjector",
    "FaultSettings",
    "build_orders_app",
    "build_ticketing_app",
    "start_demo_systems",
]
