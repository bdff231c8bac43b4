"""Tool gateway (`switchboard.serving.gateway`).

First table tests of the pieces that need no server: backoff schedule, Retry-After parsing,
circuit breaker, token bucket (all on a hand-driven clock), path templating and request building,
credentials files, configuration errors. Then the real gateway served by uvicorn in a thread —
and once through `python -m switchboard.serving.gateway` — in front of a real scripted upstream
HTTP server on 127.0.0.1 that can be told to be slow, fail n times, rate-limit, and that records
every request it gets (path as sent, headers, body).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from email.message import Message
from pathlib import Path
from typing import Any

import pytest
import uvicorn
from prometheus_client.parser import text_string_to_metric_families
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from support.ports import free_port
from switchboard.serving.config import GATEWAY_CONFIG_ENV, GatewayAuth, ToolGatewayConfig
from switchboard.serving.gateway import ConfigError, ToolGateway, create_app, load_config
from switchboard.serving.gateway.app import compile_operations
from switchboard.serving.gateway.credentials import Credentials, CredentialsUnavailable
from switchboard.serving.gateway.logs import JsonFormatter
from switchboard.serving.gateway.resilience import (
    Backoff,
    BreakerState,
    CircuitBreaker,
    TokenBucket,
    parse_retry_after,
)
from switchboard.serving.gateway.templating import (
    InputError,
    PathTemplate,
    TemplateError,
    build_request,
)


class FakeClock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


# --- backoff -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("initial_ms", "max_ms", "multiplier", "jitter", "expected"),
    [
        # jitter is the rng draw: 0 gives the lower bound c/2, 1 the ceiling c
        (100, 2000, 2.0, 1.0, [0.1, 0.2, 0.4, 0.8, 1.6, 2.0, 2.0]),
        (100, 2000, 2.0, 0.0, [0.05, 0.1, 0.2, 0.4, 0.8, 1.0, 1.0]),
        (100, 2000, 2.0, 0.5, [0.075, 0.15, 0.3, 0.6, 1.2, 1.5, 1.5]),
        (100, 1000, 1.0, 1.0, [0.1] * 7),  # multiplier 1: constant
        (0, 1000, 2.0, 1.0, [0.0] * 7),  # no backoff at all
        (500, 200, 3.0, 1.0, [0.2] * 7),  # initial above max: max wins
    ],
)
def test_backoff_schedule(
    initial_ms: int, max_ms: int, multiplier: float, jitter: float, expected: list[float]
) -> None:
    backoff = Backoff(initial_ms / 1000, max_ms / 1000, multiplier, rng=lambda: jitter)
    assert [backoff.delay(n) for n in range(1, 8)] == pytest.approx(expected)


def test_backoff_large_retry_numbers_stay_capped() -> None:
    backoff = Backoff(0.1, 2.0, 10.0, rng=lambda: 1.0)
    assert backoff.ceiling(5000) == 2.0
    with pytest.raises(ValueError):
        backoff.ceiling(0)


@pytest.mark.parametrize(
    ("retry_after", "expected"),
    [(0.0, 0.0), (0.5, 0.5), (30.0, 2.0), (-3.0, 0.0)],  # capped at max_s, never negative
)
def test_backoff_honours_retry_after_up_to_max(retry_after: float, expected: float) -> None:
    backoff = Backoff(0.1, 2.0, 2.0, rng=lambda: 0.0)
    assert backoff.delay(1, retry_after=retry_after) == expected


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        (None, None),
        ("", None),
        ("7", 7.0),
        (" 12 ", 12.0),
        ("soon", None),
        ("-1", None),
        ("Wed, 21 Oct 2015 07:28:10 GMT", 10.0),  # now = 07:28:00
        ("Wed, 21 Oct 2015 07:27:00 GMT", 0.0),  # in the past
    ],
)
def test_parse_retry_after(header: str | None, expected: float | None) -> None:
    now = 1445412480.0  # Wed, 21 Oct 2015 07:28:00 GMT
    assert parse_retry_after(header, now=lambda: now) == expected


# --- circuit breaker -----------------------------------------------------------------------

CLOSED, HALF, OPEN = BreakerState.CLOSED, BreakerState.HALF_OPEN, BreakerState.OPEN
STATES = {"C": CLOSED, "H": HALF, "O": OPEN}


@pytest.mark.parametrize(
    "script",
    [
        # Threshold 3, open 10 s, one trial call. Each step is "action state-after": ok / fail =
        # an admitted call with that result, hold = an admitted call still running, refused = a
        # call turned away, a number = seconds passing.
        pytest.param("fail C, fail C, ok C, fail C, fail C", id="success-resets-count"),
        pytest.param(
            "fail C, fail C, fail O, refused O, 9.9 O, refused O, 0.1 H, ok C, fail C",
            id="opens-then-trial-closes",
        ),
        pytest.param(
            "fail C, fail C, fail O, 10 H, fail O, refused O, 10 H, ok C",
            id="failed-trial-reopens",
        ),
        pytest.param("fail C, fail C, fail O, 30 H, hold H, refused H", id="one-trial-at-a-time"),
    ],
)
def test_breaker_state_machine(script: str) -> None:
    clock = FakeClock()
    breaker = CircuitBreaker(failure_threshold=3, open_seconds=10, clock=clock)
    for step in script.split(", "):
        action, expected = step.split()
        if action in {"ok", "fail"}:
            permit = breaker.acquire()
            assert permit is not None, step
            breaker.record(permit, success=action == "ok")
        elif action == "hold":
            assert breaker.acquire() is not None, step
        elif action == "refused":
            assert breaker.acquire() is None, step
        else:
            clock.advance(float(action))
        assert breaker.state is STATES[expected], step


def test_breaker_half_open_admits_limited_trials_and_reports_wait() -> None:
    clock = FakeClock()
    breaker = CircuitBreaker(
        failure_threshold=1, open_seconds=5, half_open_max_calls=2, clock=clock
    )
    first = breaker.acquire()
    assert first is not None
    breaker.record(first, success=False)
    assert breaker.retry_after() == 5
    clock.advance(2)
    assert breaker.retry_after() == 3
    clock.advance(3)
    trials = [breaker.acquire(), breaker.acquire()]
    assert all(p is not None and p.trial for p in trials)
    assert breaker.acquire() is None  # both trial slots taken
    assert breaker.retry_after() == 0
    # A trial that never reached upstream (rate-limited, cancelled) frees its slot.
    assert trials[0] is not None
    breaker.release(trials[0])
    again = breaker.acquire()
    assert again is not None
    breaker.record(again, success=True)
    assert breaker.state is CLOSED


def test_breaker_ignores_outcomes_from_an_older_state() -> None:
    clock = FakeClock()
    breaker = CircuitBreaker(failure_threshold=1, open_seconds=5, clock=clock)
    slow = breaker.acquire()  # admitted while closed, answers late
    failing = breaker.acquire()
    assert slow is not None and failing is not None
    breaker.record(failing, success=False)
    assert breaker.state is OPEN
    breaker.record(slow, success=True)  # must not close an open breaker
    assert breaker.state is OPEN
    clock.advance(5)
    trial = breaker.acquire()
    assert trial is not None
    breaker.record(slow, success=True)  # nor decide the half-open trial
    assert breaker.state is HALF
    breaker.record(trial, success=True)
    assert breaker.state is CLOSED


# --- token bucket --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("rate", "burst", "script"),
    [
        # (seconds passing before the call, wait returned: 0 = admitted)
        (2.0, 3, [(0, 0), (0, 0), (0, 0), (0, 0.5), (0.25, 0.25), (0.25, 0), (0, 0.5)]),
        (1.0, 1, [(0, 0), (0, 1.0), (0.5, 0.5), (100, 0), (0, 1.0)]),  # refill capped at burst
        (10.0, 2, [(0, 0), (0, 0), (0, 0.1), (1, 0), (0, 0), (0, 0.1)]),
    ],
)
def test_token_bucket(rate: float, burst: int, script: list[tuple[float, float]]) -> None:
    clock = FakeClock()
    bucket = TokenBucket(rate, burst, clock)
    for step, (elapsed, wait) in enumerate(script):
        clock.advance(elapsed)
        assert bucket.try_acquire() == pytest.approx(wait), step
    assert bucket.tokens <= burst


# --- path templating and request building --------------------------------------------------


@pytest.mark.parametrize(
    ("template", "values", "expected"),
    [
        ("/orders/{order_id}", {"order_id": "A-1"}, "/orders/A-1"),
        ("/orders/{order_id}", {"order_id": "a/b"}, "/orders/a%2Fb"),  # stays one segment
        ("/orders/{order_id}", {"order_id": "é x?#%"}, "/orders/%C3%A9%20x%3F%23%25"),
        ("/orders/{order_id}", {"order_id": "..."}, "/orders/..."),
        ("/orders/{n}/items", {"n": 42}, "/orders/42/items"),
        ("/flags/{on}", {"on": True}, "/flags/true"),
        ("/a/{x}/b/{x}", {"x": "y"}, "/a/y/b/y"),
        ("/v1/{a}-{b}", {"a": 1, "b": "c"}, "/v1/1-c"),
        ("/static", {"extra": 1}, "/static"),
    ],
)
def test_path_template_renders(template: str, values: dict[str, Any], expected: str) -> None:
    assert PathTemplate.parse(template).render(values) == expected


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({}, "missing path parameter 'order_id'"),
        ({"order_id": None}, "must be a string, number or boolean"),
        ({"order_id": {"a": 1}}, "must be a string, number or boolean"),
        ({"order_id": ["a"]}, "must be a string, number or boolean"),
        ({"order_id": ""}, "must not be empty"),
        ({"order_id": "."}, "must not be empty, '.' or '..'"),
        ({"order_id": ".."}, "must not be empty, '.' or '..'"),
    ],
)
def test_path_template_refuses_input(values: dict[str, Any], message: str) -> None:
    with pytest.raises(InputError, match=re.escape(message)):
        PathTemplate.parse("/orders/{order_id}").render(values)


@pytest.mark.parametrize(
    "template", ["orders/{id}", "/a/{", "/a/}", "/a/{1x}", "/a/{}", "/a/{b c}", "/a?x=1", "/a#f"]
)
def test_path_template_refuses_bad_templates(template: str) -> None:
    with pytest.raises(TemplateError):
        PathTemplate.parse(template)


@pytest.mark.parametrize(
    ("method", "base", "template", "payload", "url", "body"),
    [
        (
            "GET",
            "http://h:8080",
            "/orders/{id}",
            {"id": "A1", "verbose": True, "tags": ["x", "y z"], "skip": None, "f": {"a": 1}},
            "http://h:8080/orders/A1?verbose=true&tags=x&tags=y%20z&f=%7B%22a%22%3A1%7D",
            None,
        ),
        ("DELETE", "http://h/api/", "/orders/{id}", {"id": 7}, "http://h/api/orders/7", None),
        ("GET", "http://h", "/search", {"q": "a&b=c"}, "http://h/search?q=a%26b%3Dc", None),
        (
            "POST",
            "https://h/api",
            "/orders/{id}/refunds",
            {"id": "A1", "amount": 5, "note": None},
            "https://h/api/orders/A1/refunds",
            {"amount": 5, "note": None},
        ),
        ("PUT", "http://h", "/x", {}, "http://h/x", {}),
        ("PATCH", "http://h", "/x/{id}", {"id": "1", "a": [1]}, "http://h/x/1", {"a": [1]}),
    ],
)
def test_build_request(
    method: str,
    base: str,
    template: str,
    payload: dict[str, Any],
    url: str,
    body: dict[str, Any] | None,
) -> None:
    request = build_request(base, method, PathTemplate.parse(template), payload)
    assert (request.method, request.url, request.body) == (method, url, body)


# --- credentials files ---------------------------------------------------------------------


def write_secret(directory: Path, values: dict[str, str]) -> None:
    """Lays keys out as the kubelet does for a mounted Secret, and rotates them the same way:
    a new timestamped directory, then an atomic swap of the `..data` symlink."""
    directory.mkdir(parents=True, exist_ok=True)
    version = directory / f"..{time.time_ns()}"
    version.mkdir()
    for key, value in values.items():
        (version / key).write_text(value)
    staging = directory / "..data_tmp"
    os.symlink(version.name, staging)
    os.replace(staging, directory / "..data")
    for key in values:
        link = directory / key
        if not link.is_symlink():
            os.symlink(f"..data/{key}", link)


def auth_config(kind: str, directory: Path, header: str | None = None) -> GatewayAuth:
    return GatewayAuth.model_validate(
        {"type": kind, "header_name": header, "credentials_dir": str(directory)}
    )


@pytest.mark.parametrize(
    ("kind", "header", "files", "expected"),
    [
        ("none", None, {}, {}),
        ("bearer", None, {"token": "s3cret\n"}, {"Authorization": "Bearer s3cret"}),
        (
            "basic",
            None,
            {"username": "svc", "password": "p:ss wd\r\n"},
            {"Authorization": "Basic " + base64.b64encode(b"svc:p:ss wd").decode()},
        ),
        ("header", "X-Api-Key", {"value": "k-123"}, {"X-Api-Key": "k-123"}),
    ],
)
def test_credentials_headers(
    tmp_path: Path, kind: str, header: str | None, files: dict[str, str], expected: Any
) -> None:
    write_secret(tmp_path, files)
    assert Credentials(auth_config(kind, tmp_path, header)).headers() == expected


@pytest.mark.parametrize(
    ("files", "reason"),
    [
        ({}, "token is missing"),
        ({"token": ""}, "token is empty"),
        ({"token": "\n"}, "token is empty"),
        ({"token": "a\nb"}, "token contains a line break"),
    ],
)
def test_credentials_problems_name_the_file_never_the_value(
    tmp_path: Path, files: dict[str, str], reason: str
) -> None:
    write_secret(tmp_path, files)
    credentials = Credentials(auth_config("bearer", tmp_path))
    with pytest.raises(CredentialsUnavailable, match=reason) as caught:
        credentials.headers()
    assert str(tmp_path) in str(caught.value)
    assert "a\nb" not in str(caught.value)
    assert credentials.problem() == str(caught.value)


def test_credentials_follow_secret_rotation(tmp_path: Path) -> None:
    write_secret(tmp_path, {"username": "svc", "password": "one"})
    credentials = Credentials(auth_config("basic", tmp_path))
    first = credentials.headers()
    assert credentials.headers() is first  # unchanged files are not read again
    write_secret(tmp_path, {"username": "svc", "password": "two"})
    assert (
        credentials.headers()["Authorization"] == "Basic " + base64.b64encode(b"svc:two").decode()
    )


# --- configuration -------------------------------------------------------------------------

OPERATIONS: list[dict[str, Any]] = [
    {
        "name": "get_order",
        "method": "GET",
        "path": "/orders/{order_id}",
        "input_schema": {
            "type": "object",
            "required": ["order_id"],
            "properties": {"order_id": {"type": "string", "minLength": 1}},
        },
    },
    {
        "name": "create_ticket",
        "method": "POST",
        "path": "/tickets",
        "mutating": True,
        "input_schema": {
            "type": "object",
            "required": ["subject"],
            "properties": {
                "subject": {"type": "string", "minLength": 3},
                "priority": {"enum": ["low", "normal", "high"]},
            },
        },
    },
    {"name": "lookup", "method": "POST", "path": "/lookup"},  # non-mutating POST
    {"name": "cancel_order", "method": "DELETE", "path": "/orders/{order_id}", "mutating": True},
]


def make_config(base_url: str, **overrides: Any) -> ToolGatewayConfig:
    raw: dict[str, Any] = {
        "adapter": "orders",
        "namespace": "shop",
        "system": "orders",
        "base_url": base_url,
        "operations": OPERATIONS,
        "timeout_seconds": 2,
        "retries": {"attempts": 3, "initial_backoff_ms": 5, "max_backoff_ms": 20},
        "rate_limit": {"requests_per_second": 1000, "burst": 1000},
    }
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(raw.get(key), dict):
            raw[key] = {**raw[key], **value}
        else:
            raw[key] = value
    return ToolGatewayConfig.model_validate(raw)


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({}, "SWITCHBOARD_GATEWAY_CONFIG is not set"),
        ({GATEWAY_CONFIG_ENV: "  "}, "is not set"),
        ({GATEWAY_CONFIG_ENV: "{nope"}, "Invalid JSON"),
        ({GATEWAY_CONFIG_ENV: '{"adapter": "a"}'}, "base_url: Field required"),
        (
            {GATEWAY_CONFIG_ENV: json.dumps({**make_config("http://x").model_dump(), "x": 1})},
            "x: Extra inputs are not permitted",
        ),
    ],
)
def test_load_config_errors_are_one_line(env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)) as caught:
        load_config(env)
    assert "\n" not in str(caught.value)


def test_load_config_round_trips() -> None:
    config = make_config("http://x")
    assert load_config({GATEWAY_CONFIG_ENV: config.model_dump_json()}) == config


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"base_url": "ftp://x"}, "must be an http(s) URL"),
        ({"base_url": "http://x?a=1"}, "must not carry a query"),
        ({"auth": {"type": "header"}}, "needs auth.header_name"),
        ({"idempotency_header": "Bad Header"}, "not a valid header name"),
        ({"operations": []}, "no operations declared"),
        ({"operations": [OPERATIONS[0], OPERATIONS[0]]}, "declared twice"),
        (
            {"operations": [{"name": "a", "method": "GET", "path": "/a/{"}]},
            "operation 'a': path '/a/{'",
        ),
        (
            {
                "operations": [
                    {"name": "a", "method": "GET", "path": "/a", "input_schema": {"type": 5}}
                ]
            },
            "operation 'a': invalid input_schema",
        ),
    ],
)
def test_compile_operations_reports_config_problems(
    overrides: dict[str, Any], message: str
) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)):
        compile_operations(make_config(**{"base_url": "http://x", **overrides}))


# --- servers for the integration tests -----------------------------------------------------


class ServerThread:
    """An ASGI app under a real uvicorn on a free 127.0.0.1 port, in a daemon thread."""

    def __init__(self, app: Any) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        config = uvicorn.Config(
            app, log_config=None, access_log=False, lifespan="on", timeout_graceful_shutdown=1
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(
            target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True
        )

    def start(self) -> ServerThread:
        self.thread.start()
        deadline = time.monotonic() + 10
        while not self.server.started:
            assert self.thread.is_alive() and time.monotonic() < deadline, "server did not start"
            time.sleep(0.005)
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(10)
        self.sock.close()


@dataclass
class Step:
    """What the upstream answers one request with (the next in its script)."""

    status: int = 200
    body: Any = None
    """JSON answered; None: `{"ok": true}`."""
    text: str | None = None
    delay: float = 0.0
    headers: dict[str, str] = field(default_factory=dict)


@dataclass
class Seen:
    method: str
    raw_path: str
    query: str
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


class Upstream:
    """The business system stand-in: answers scripted steps in order, then 200s."""

    def __init__(self) -> None:
        self.steps: deque[Step] = deque()
        self.seen: list[Seen] = []
        self.app = Starlette(
            routes=[
                Route(
                    "/{path:path}",
                    self.handle,
                    methods=["GET", "POST", "PUT", "PATCH", "DELETE"],
                )
            ]
        )

    def script(self, *steps: Step) -> None:
        self.steps.extend(steps)

    def reset(self) -> None:
        self.steps.clear()
        self.seen.clear()

    async def handle(self, request: Request) -> Response:
        self.seen.append(
            Seen(
                request.method,
                request.scope["raw_path"].decode(),
                request.scope["query_string"].decode(),
                {k.lower(): v for k, v in request.headers.items()},
                await request.body(),
            )
        )
        step = self.steps.popleft() if self.steps else Step()
        if step.delay:
            await asyncio.sleep(step.delay)
        if step.text is not None:
            return PlainTextResponse(step.text, step.status, headers=step.headers)
        body = {"ok": True} if step.body is None else step.body
        return JSONResponse(body, step.status, headers=step.headers)


@pytest.fixture(scope="module")
def upstream_server() -> Iterator[tuple[Upstream, str]]:
    upstream = Upstream()
    server = ServerThread(upstream.app).start()
    yield upstream, server.url
    server.stop()


@pytest.fixture
def upstream(upstream_server: tuple[Upstream, str]) -> Iterator[Upstream]:
    upstream_server[0].reset()
    yield upstream_server[0]
    upstream_server[0].reset()


@dataclass
class Gateway:
    url: str
    gateway: ToolGateway

    def call(self, operation: str, payload: Any = None, **kwargs: Any) -> Reply:
        return http("POST", f"{self.url}/v1/ops/{operation}", payload, **kwargs)

    def get(self, path: str) -> Reply:
        return http("GET", self.url + path)

    def sample(self, name: str, **labels: str) -> float | None:
        return self.gateway.metrics.registry.get_sample_value(name, {"tool": "orders", **labels})


@pytest.fixture
def start_gateway(upstream_server: tuple[Upstream, str]) -> Iterator[Callable[..., Gateway]]:
    servers: list[ServerThread] = []

    def start(clock: Callable[[], float] | None = None, **overrides: Any) -> Gateway:
        overrides.setdefault("base_url", upstream_server[1])
        config = make_config(**overrides)
        app = create_app(config, **({"clock": clock} if clock else {}))
        servers.append(ServerThread(app).start())
        return Gateway(servers[-1].url, app.state.gateway)

    yield start
    for server in servers:
        server.stop()


@pytest.fixture(scope="module")
def default_gateway(upstream_server: tuple[Upstream, str]) -> Iterator[Gateway]:
    """One gateway with the default test config, for tests that leave no state in it (no
    upstream failures, no metric assertions): starting and stopping uvicorn costs ~0.2 s."""
    app = create_app(make_config(upstream_server[1]))
    server = ServerThread(app).start()
    yield Gateway(server.url, app.state.gateway)
    server.stop()


@dataclass
class Reply:
    status: int
    headers: Message
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


# Tests talk to 127.0.0.1 only: no proxy from the environment.
_opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def http(
    method: str,
    url: str,
    payload: Any = None,
    *,
    raw: bytes | None = None,
    headers: dict[str, str] | None = None,
) -> Reply:
    data = raw if raw is not None else None if payload is None else json.dumps(payload).encode()
    request = urllib.request.Request(url, data=data, method=method, headers=headers or {})
    if data is not None:
        request.add_header("Content-Type", "application/json")
    try:
        with _opener.open(request, timeout=10) as response:
            return Reply(response.status, response.headers, response.read())
    except urllib.error.HTTPError as error:
        return Reply(error.code, error.headers, error.read())


UUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$")


# --- integration: requests and validation --------------------------------------------------


def test_get_with_path_parameter_and_query(upstream: Upstream, default_gateway: Gateway) -> None:
    gw = default_gateway
    upstream.script(Step(body={"order_id": "A-1/2 x", "state": "shipped"}))
    reply = gw.call("get_order", {"order_id": "A-1/2 x", "verbose": True, "fields": ["a", "b"]})
    assert reply.status == 200
    body = reply.json()
    assert body == {
        "operation": "get_order",
        "status": 200,
        "result": {"order_id": "A-1/2 x", "state": "shipped"},
        "attempts": 1,
        "idempotency_key": None,
        "duration_ms": body["duration_ms"],
    }
    assert isinstance(body["duration_ms"], float)
    [seen] = upstream.seen
    assert (seen.method, seen.raw_path, seen.query) == (
        "GET",
        "/orders/A-1%2F2%20x",
        "verbose=true&fields=a&fields=b",
    )
    assert seen.body == b""
    assert "idempotency-key" not in seen.headers
    assert "authorization" not in seen.headers


def test_post_sends_the_rest_as_json_with_an_idempotency_key(
    upstream: Upstream, default_gateway: Gateway
) -> None:
    gw = default_gateway
    upstream.script(Step(status=201, body={"id": "T-1"}), Step(status=201, text="created"))
    reply = gw.call("create_ticket", {"subject": "Broken lid", "priority": "high"})
    assert reply.status == 200
    body = reply.json()
    assert (body["status"], body["result"], body["attempts"]) == (201, {"id": "T-1"}, 1)
    assert UUID.match(body["idempotency_key"])
    # The caller's own key is used instead of a generated one; a text answer stays text.
    second = gw.call("create_ticket", {"subject": "Again"}, headers={"Idempotency-Key": "k-42"})
    assert (second.json()["idempotency_key"], second.json()["result"]) == ("k-42", "created")
    first_seen, second_seen = upstream.seen
    assert first_seen.method == "POST" and first_seen.raw_path == "/tickets"
    assert first_seen.json() == {"subject": "Broken lid", "priority": "high"}
    assert first_seen.headers["content-type"].startswith("application/json")
    assert first_seen.headers["idempotency-key"] == body["idempotency_key"]
    assert second_seen.headers["idempotency-key"] == "k-42"


@pytest.mark.parametrize(
    ("operation", "payload", "raw", "status", "code"),
    [
        ("get_order", {}, None, 400, "invalid_input"),
        ("create_ticket", {"subject": 5, "priority": "urgent"}, None, 400, "invalid_input"),
        ("get_order", [1, 2], None, 400, "invalid_input"),
        ("get_order", None, b'{"order_id": "A1",', 400, "invalid_json"),
        ("get_order", None, b'{"order_id": NaN}', 400, "invalid_json"),
        ("get_order", None, b"[" * 5000 + b"]" * 5000, 400, "invalid_json"),
        ("get_order", None, b"\xff\xfe\xfa", 400, "invalid_json"),
        ("get_order", {"order_id": ".."}, None, 400, "invalid_input"),
        ("create_ticket", {"subject": "abc"}, None, 400, "invalid_idempotency_key"),
        ("nope", {}, None, 404, "unknown_operation"),
        ("lookup", {"blob": "x" * 65536}, None, 413, "payload_too_large"),
    ],
)
def test_bad_calls_get_json_errors_and_never_reach_upstream(
    upstream: Upstream,
    default_gateway: Gateway,
    operation: str,
    payload: Any,
    raw: bytes | None,
    status: int,
    code: str,
) -> None:
    gw = default_gateway
    headers = {"Idempotency-Key": "has space"} if code == "invalid_idempotency_key" else None
    reply = gw.call(operation, payload, raw=raw, headers=headers)
    assert reply.status == status
    error = reply.json()["error"]
    assert error["code"] == code and error["message"]
    assert upstream.seen == []


def test_schema_violations_are_listed(default_gateway: Gateway) -> None:
    reply = default_gateway.call("create_ticket", {"subject": 5, "priority": "urgent"})
    assert reply.status == 400
    assert reply.json()["error"]["violations"] == [
        {"path": "$.priority", "message": "'urgent' is not one of ['low', 'normal', 'high']"},
        {"path": "$.subject", "message": "5 is not of type 'string'"},
    ]


def test_body_size_limit_is_exact(upstream: Upstream, default_gateway: Gateway) -> None:
    gw = default_gateway
    envelope = len(json.dumps({"blob": ""}))
    at_limit = json.dumps({"blob": "x" * (64 * 1024 - envelope)}).encode()
    assert len(at_limit) == 64 * 1024
    assert gw.call("lookup", raw=at_limit).status == 200
    assert gw.call("lookup", raw=at_limit + b" ").status == 413
    # An empty body is an empty input, so operations without input need none.
    assert gw.call("lookup", raw=b"").status == 200
    assert len(upstream.seen) == 2


def test_non_call_routes_answer_json(default_gateway: Gateway) -> None:
    gw = default_gateway
    assert gw.get("/healthz").json() == {"status": "ok"}
    wrong_method = gw.get("/v1/ops/get_order")
    assert wrong_method.status == 405 and wrong_method.json()["error"]["code"] == (
        "method_not_allowed"
    )
    missing = gw.get("/v2/anything")
    assert missing.status == 404 and missing.json()["error"]["code"] == "not_found"


def test_internal_errors_are_json_without_internals(
    upstream: Upstream, start_gateway: Callable[..., Gateway], monkeypatch: pytest.MonkeyPatch
) -> None:
    gw = start_gateway(circuit_breaker={"failure_threshold": 1})

    async def broken(*args: Any) -> None:
        raise RuntimeError("kaboom in app.py line 42")

    monkeypatch.setattr(gw.gateway, "_attempt", broken)
    reply = gw.call("get_order", {"order_id": "A1"})
    assert reply.status == 500
    assert reply.json() == {"error": {"code": "internal", "message": "internal gateway error"}}
    assert upstream.seen == []
    # A gateway bug says nothing about the upstream: the breaker (threshold 1) did not open.
    monkeypatch.undo()
    assert gw.gateway.breaker.state is BreakerState.CLOSED
    assert gw.call("get_order", {"order_id": "A1"}).status == 200


# --- integration: retries, idempotency, timeouts -------------------------------------------


def test_5xx_then_success_retries_with_the_same_idempotency_key(
    upstream: Upstream, start_gateway: Callable[..., Gateway]
) -> None:
    gw = start_gateway()
    upstream.script(Step(status=500), Step(status=503), Step(status=201, body={"id": "T-9"}))
    reply = gw.call("create_ticket", {"subject": "Refund"})
    assert reply.status == 200
    body = reply.json()
    assert (body["attempts"], body["result"]) == (3, {"id": "T-9"})
    keys = [seen.headers["idempotency-key"] for seen in upstream.seen]
    assert keys == [body["idempotency_key"]] * 3
    assert [seen.json() for seen in upstream.seen] == [{"subject": "Refund"}] * 3
    assert gw.sample("tool_call_retries_total", operation="create_ticket") == 2


def test_mutating_call_without_idempotency_is_never_retried(
    upstream: Upstream, start_gateway: Callable[..., Gateway]
) -> None:
    gw = start_gateway(idempotency_header=None)
    upstream.script(Step(status=500))
    reply = gw.call("cancel_order", {"order_id": "A1"}, headers={"Idempotency-Key": "k-1"})
    assert reply.status == 502
    body = reply.json()
    assert body["error"] == {
        "code": "upstream_error",
        "message": "upstream answered 500, after 1 attempt",
        "upstream_status": 500,
    }
    assert (body["attempts"], body["idempotency_key"]) == (1, None)
    [seen] = upstream.seen
    assert seen.method == "DELETE" and "idempotency-key" not in seen.headers
    # Read-only operations are still retried under the same configuration.
    upstream.reset()
    upstream.script(Step(status=502), Step(body={"found": 1}))
    retried = gw.call("lookup", {"q": "x"})
    assert (retried.status, retried.json()["attempts"]) == (200, 2)


def test_5xx_on_every_attempt_is_a_502_with_attempts(
    upstream: Upstream, start_gateway: Callable[..., Gateway]
) -> None:
    gw = start_gateway()
    upstream.script(*[Step(status=500, body={"trace": "internal detail"})] * 3)
    reply = gw.call("get_order", {"order_id": "A1"})
    assert reply.status == 502
    body = reply.json()
    assert body["attempts"] == 3 and body["error"]["code"] == "upstream_error"
    assert "internal detail" not in reply.body.decode()
    assert len(upstream.seen) == 3


def test_timeout_is_a_504_after_retries(
    upstream: Upstream, start_gateway: Callable[..., Gateway]
) -> None:
    gw = start_gateway(timeout_seconds=0.15, retries={"attempts": 2})
    upstream.script(Step(delay=1.5), Step(delay=1.5))
    started = time.monotonic()
    reply = gw.call("get_order", {"order_id": "A1"})
    elapsed = time.monotonic() - started
    assert reply.status == 504
    body = reply.json()
    assert body["error"]["code"] == "upstream_timeout" and body["attempts"] == 2
    assert 0.3 <= elapsed < 1.2  # two 0.15 s attempts, not the upstream's 1.5 s
    assert gw.sample("tool_call_total", operation="get_order", outcome="timeout") == 1


def test_unreachable_upstream_is_a_502_after_retries(start_gateway: Callable[..., Gateway]) -> None:
    gw = start_gateway(base_url=f"http://127.0.0.1:{free_port()}", retries={"attempts": 2})
    reply = gw.call("get_order", {"order_id": "A1"})
    assert reply.status == 502
    body = reply.json()
    assert body["error"]["code"] == "upstream_unreachable" and body["attempts"] == 2


def test_upstream_429_honours_retry_after_up_to_the_max_backoff(
    upstream: Upstream, start_gateway: Callable[..., Gateway]
) -> None:
    gw = start_gateway(retries={"attempts": 2, "max_backoff_ms": 50})
    # Retry-After of 30 s is cut to the 50 ms max backoff.
    upstream.script(Step(status=429, headers={"Retry-After": "30"}), Step(body={"id": 1}))
    started = time.monotonic()
    reply = gw.call("get_order", {"order_id": "A1"})
    assert (reply.status, reply.json()["attempts"]) == (200, 2)
    assert time.monotonic() - started < 1
    # Still rate-limited on the last attempt: 429 to the caller, with the upstream's advice.
    upstream.script(*[Step(status=429, headers={"Retry-After": "7"})] * 2)
    limited = gw.call("get_order", {"order_id": "A1"})
    assert limited.status == 429 and limited.headers["Retry-After"] == "7"
    assert limited.json()["error"]["code"] == "upstream_rate_limited"


def test_upstream_4xx_is_passed_back_and_keeps_the_breaker_closed(
    upstream: Upstream, start_gateway: Callable[..., Gateway]
) -> None:
    gw = start_gateway(circuit_breaker={"failure_threshold": 1})
    upstream.script(*[Step(status=404, body={"detail": "no such order"})] * 2)
    for _ in range(2):
        reply = gw.call("get_order", {"order_id": "A404"})
        assert reply.status == 404
        assert reply.json()["result"] == {"detail": "no such order"}
        assert reply.json()["attempts"] == 1
    assert len(upstream.seen) == 2
    assert gw.gateway.breaker.state is BreakerState.CLOSED


# --- integration: breaker and rate limit ---------------------------------------------------


def test_breaker_opens_fails_fast_and_recovers(
    upstream: Upstream, start_gateway: Callable[..., Gateway]
) -> None:
    # 0.4 s open: short for the test, long enough that a loaded machine's pause between two
    # calls does not let the breaker go half-open before the test looks.
    gw = start_gateway(
        retries={"attempts": 1}, circuit_breaker={"failure_threshold": 2, "open_seconds": 0.4}
    )
    upstream.script(Step(status=500), Step(status=500))
    assert [gw.call("get_order", {"order_id": "A1"}).status for _ in range(2)] == [502, 502]
    rejected = gw.call("get_order", {"order_id": "A1"})
    assert rejected.status == 503 and rejected.headers["Retry-After"] == "1"
    assert rejected.json()["error"]["code"] == "circuit_open"
    assert len(upstream.seen) == 2  # the refused call never left the gateway
    # An open breaker is reported but keeps the pod ready (see handle_ready).
    ready = gw.get("/readyz")
    assert (ready.status, ready.json()["circuit"]) == (200, "open")
    assert gw.sample("tool_gateway_circuit_state") == 2

    time.sleep(0.45)
    assert gw.get("/readyz").json()["circuit"] == "half-open"
    upstream.script(Step(status=500))  # the trial fails: open again
    assert gw.call("get_order", {"order_id": "A1"}).status == 502
    assert gw.call("get_order", {"order_id": "A1"}).status == 503
    time.sleep(0.45)
    recovered = gw.call("get_order", {"order_id": "A1"})  # the trial succeeds: closed
    assert recovered.status == 200
    assert gw.sample("tool_gateway_circuit_state") == 0
    assert gw.call("get_order", {"order_id": "A1"}).status == 200
    assert gw.sample("tool_call_total", operation="get_order", outcome="rejected_breaker") == 2


def test_rate_limit_answers_429_with_retry_after(
    upstream: Upstream, start_gateway: Callable[..., Gateway]
) -> None:
    gw = start_gateway(rate_limit={"requests_per_second": 0.5, "burst": 2})
    statuses = [gw.call("get_order", {"order_id": "A1"}).status for _ in range(2)]
    limited = gw.call("get_order", {"order_id": "A1"})
    assert statuses == [200, 200]
    # One token per 2 s, and the bucket is empty: back in (at most) 2 s.
    assert limited.status == 429 and limited.headers["Retry-After"] in {"1", "2"}
    assert limited.json()["error"]["code"] == "rate_limited"
    assert len(upstream.seen) == 2
    # Invalid input is refused before the bucket: it costs no token.
    assert gw.call("get_order", {}).status == 400


# --- integration: credentials --------------------------------------------------------------


@pytest.mark.parametrize(
    ("auth", "files", "header", "expected"),
    [
        ({"type": "bearer"}, {"token": "tok-1\n"}, "authorization", "Bearer tok-1"),
        (
            {"type": "basic"},
            {"username": "svc", "password": "pw"},
            "authorization",
            "Basic " + base64.b64encode(b"svc:pw").decode(),
        ),
        ({"type": "header", "header_name": "X-Api-Key"}, {"value": "key-1"}, "x-api-key", "key-1"),
    ],
)
def test_credentials_are_sent_upstream(
    upstream: Upstream,
    start_gateway: Callable[..., Gateway],
    tmp_path: Path,
    auth: dict[str, str],
    files: dict[str, str],
    header: str,
    expected: str,
) -> None:
    write_secret(tmp_path, files)
    gw = start_gateway(auth={**auth, "credentials_dir": str(tmp_path)})
    assert gw.call("get_order", {"order_id": "A1"}).status == 200
    assert upstream.seen[0].headers[header] == expected


def test_rotated_token_is_used_on_the_next_call(
    upstream: Upstream, start_gateway: Callable[..., Gateway], tmp_path: Path
) -> None:
    write_secret(tmp_path, {"token": "old"})
    gw = start_gateway(auth={"type": "bearer", "credentials_dir": str(tmp_path)})
    assert gw.call("get_order", {"order_id": "A1"}).status == 200
    write_secret(tmp_path, {"token": "new"})
    assert gw.call("get_order", {"order_id": "A1"}).status == 200
    assert [seen.headers["authorization"] for seen in upstream.seen] == ["Bearer old", "Bearer new"]


def test_missing_credentials_make_the_gateway_unready_until_they_appear(
    upstream: Upstream, start_gateway: Callable[..., Gateway], tmp_path: Path
) -> None:
    gw = start_gateway(auth={"type": "bearer", "credentials_dir": str(tmp_path)})
    ready = gw.get("/readyz")
    assert ready.status == 503
    assert ready.json()["error"]["code"] == "not_ready"
    assert f"{tmp_path}/token is missing" in ready.json()["error"]["message"]
    assert gw.get("/healthz").status == 200  # alive: a restart would not help
    call = gw.call("get_order", {"order_id": "A1"})
    assert call.status == 503 and call.json()["error"]["code"] == "credentials_unavailable"
    assert upstream.seen == []
    write_secret(tmp_path, {"token": "late"})
    assert gw.get("/readyz").status == 200
    assert gw.call("get_order", {"order_id": "A1"}).status == 200
    assert upstream.seen[0].headers["authorization"] == "Bearer late"
    assert gw.sample("tool_call_total", operation="get_order", outcome="unavailable") == 1


# --- integration: metrics and logs ---------------------------------------------------------


def test_metrics_count_every_outcome(
    upstream: Upstream, start_gateway: Callable[..., Gateway]
) -> None:
    # The breaker and bucket run on a hand-driven clock so both can be exercised in one gateway.
    clock = FakeClock()
    gw = start_gateway(
        clock=clock,
        timeout_seconds=0.15,
        retries={"attempts": 2, "initial_backoff_ms": 0},
        circuit_breaker={"failure_threshold": 2, "open_seconds": 30},
        rate_limit={"requests_per_second": 0.001, "burst": 5},
    )
    order = {"order_id": "A1"}
    upstream.script(
        Step(),  # success
        Step(status=404),  # client_error
        Step(status=500),  # upstream_error after 2 attempts
        Step(status=500),
        Step(delay=0.4),  # timeout after 2 attempts: second failure, the breaker opens
        Step(delay=0.4),
    )
    expected_statuses = [200, 404, 400, 502, 504, 503]
    statuses = [gw.call("get_order", order if s != 400 else {}).status for s in expected_statuses]
    assert statuses == expected_statuses
    text = gw.get("/metrics").body.decode()
    assert 'tool_gateway_circuit_state{tool="orders"} 2.0' in text
    clock.advance(30)  # half-open: the trial succeeds and closes it, using the last token
    assert gw.call("get_order", order).status == 200
    assert gw.call("get_order", order).status == 429  # rejected_rate_limit

    reply = gw.get("/metrics")
    assert reply.headers["Content-Type"].startswith("text/plain")
    families = {f.name: f for f in text_string_to_metric_families(reply.body.decode())}
    assert {"tool_call", "tool_call_latency_seconds", "tool_gateway_circuit_state"} <= set(families)
    assert "tool_call_retries" in families
    calls = {
        s.labels["outcome"]: s.value
        for s in families["tool_call"].samples
        if s.name == "tool_call_total" and s.labels["operation"] == "get_order"
    }
    assert calls == {
        "success": 2,
        "client_error": 1,
        "upstream_error": 1,
        "timeout": 1,
        "rejected_breaker": 1,
        "rejected_rate_limit": 1,
        "invalid_input": 1,
        "unavailable": 0,
    }
    assert gw.sample("tool_call_retries_total", operation="get_order") == 2
    # Latency is observed for the calls that reached upstream.
    assert gw.sample("tool_call_latency_seconds_count", operation="get_order") == 5
    assert gw.sample("tool_gateway_circuit_state") == 0
    # Every declared operation has its series from the start.
    assert gw.sample("tool_call_total", operation="cancel_order", outcome="success") == 0


def test_call_logs_are_json_without_credentials_or_input(
    upstream: Upstream,
    start_gateway: Callable[..., Gateway],
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    write_secret(tmp_path, {"token": "tok-SECRET"})
    gw = start_gateway(auth={"type": "bearer", "credentials_dir": str(tmp_path)})
    upstream.script(Step(status=500), Step(body={"email": "jane@example.com"}))
    with caplog.at_level("INFO", logger="switchboard.serving.gateway"):
        gw.call("create_ticket", {"subject": "jane@example.com card 4111111111111111"})
        gw.call("get_order", {})
    lines = [JsonFormatter().format(r) for r in caplog.records if r.name.endswith("gateway")]
    entries = [json.loads(line) for line in lines]
    assert [(e["operation"], e["outcome"], e["status"], e["attempts"]) for e in entries] == [
        ("create_ticket", "success", 200, 2),
        ("get_order", "invalid_input", 400, 0),
    ]
    assert entries[0]["upstream_status"] == 200 and entries[0]["duration_ms"] >= 0
    assert entries[1]["error"] == "invalid_input"
    for line in lines:
        assert "SECRET" not in line and "jane@" not in line and "4111" not in line


# --- the real entry point ------------------------------------------------------------------


def test_python_m_entry_point_serves_and_stops_on_sigterm(
    upstream: Upstream, upstream_server: tuple[Upstream, str], tmp_path: Path
) -> None:
    secrets = tmp_path / "credentials"
    write_secret(secrets, {"token": "tok-SECRET"})
    config = make_config(
        upstream_server[1], auth={"type": "bearer", "credentials_dir": str(secrets)}
    )
    port = free_port()
    env = {**os.environ, GATEWAY_CONFIG_ENV: config.model_dump_json()}
    process = subprocess.Popen(
        [sys.executable, "-m", "switchboard.serving.gateway", "--host=127.0.0.1", f"--port={port}"],
        env=env,
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            assert process.poll() is None, process.communicate()
            try:
                if http("GET", f"{url}/readyz").status == 200:
                    break
            except OSError:
                pass
            assert time.monotonic() < deadline, "gateway did not become ready"
            time.sleep(0.05)
        upstream.script(Step(body={"state": "shipped"}))
        reply = http("POST", f"{url}/v1/ops/get_order", {"order_id": "A1", "email": "j@x.io"})
        assert reply.status == 200 and reply.json()["result"] == {"state": "shipped"}
        assert upstream.seen[0].headers["authorization"] == "Bearer tok-SECRET"
        assert upstream.seen[0].query == "email=j%40x.io"
        assert "tool_call_total" in http("GET", f"{url}/metrics").body.decode()
    finally:
        process.send_signal(signal.SIGTERM)
        stdout, stderr = process.communicate(timeout=15)
    # uvicorn shuts down gracefully; the entrypoint then exits 0 (tests/test_signals.py).
    assert process.returncode == 0, stderr
    entries = [json.loads(line) for line in stdout.splitlines() if line.strip()]
    assert entries[-1]["message"].startswith("Finished server process"), stdout
    assert all(e["level"] in {"info", "warning"} for e in entries), stdout
    [call] = [e for e in entries if e.get("event") == "tool_call"]
    assert (call["operation"], call["outcome"], call["status"]) == ("get_order", "success", 200)
    assert "SECRET" not in stdout + stderr and "j@x.io" not in stdout + stderr


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (None, "SWITCHBOARD_GATEWAY_CONFIG is not set"),
        ('{"adapter": "a", "base_url": 3}', "is not a valid ToolGatewayConfig"),
    ],
)
def test_python_m_entry_point_rejects_bad_config_in_one_line(
    tmp_path: Path, value: str | None, message: str
) -> None:
    env = {k: v for k, v in os.environ.items() if k != GATEWAY_CONFIG_ENV}
    if value is not None:
        env[GATEWAY_CONFIG_ENV] = value
    result = subprocess.run(
        [sys.executable, "-m", "switchboard.serving.gateway"],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and message in result.stderr
    assert "Traceback" not in result.stderr and result.stdout == ""


# --- which agent calls: TokenReview of the agent's ServiceAccount token --------------------


class TokenReviewServer:
    """The API server's TokenReview endpoint, as far as the gateway uses it: tokens it knows
    are authenticated as their user for the audiences given, others are not; each review is
    recorded, and requests without the gateway's own bearer token are refused (403)."""

    def __init__(self, own_token: str) -> None:
        self.own_token = own_token
        self.users: dict[str, str] = {}
        self.reviews: list[dict[str, Any]] = []
        self.app = Starlette(
            routes=[
                Route("/apis/authentication.k8s.io/v1/tokenreviews", self.handle, methods=["POST"])
            ]
        )

    async def handle(self, request: Request) -> Response:
        if request.headers.get("authorization") != f"Bearer {self.own_token}":
            return JSONResponse({"kind": "Status", "code": 403}, 403)
        review = await request.json()
        self.reviews.append(review)
        spec = review["spec"]
        user = self.users.get(spec["token"])
        audiences = spec.get("audiences") or []
        status: dict[str, Any] = (
            {"authenticated": True, "user": {"username": user}, "audiences": audiences}
            if user and audiences == ["switchboard-gateway"]
            else {"authenticated": False, "error": "invalid bearer token"}
        )
        return JSONResponse({**review, "status": status}, 201)


def fake_jwt(exp: float) -> str:
    def part(obj: dict[str, Any]) -> str:
        return base64.urlsafe_b64encode(json.dumps(obj).encode()).decode().rstrip("=")

    return f"{part({'alg': 'RS256'})}.{part({'exp': int(exp), 'sub': 'x'})}.sig"


@contextlib.contextmanager
def reviewing_gateway(
    upstream_url: str, tmp_path: Path, **grants: Any
) -> Iterator[tuple[Gateway, TokenReviewServer]]:
    """A gateway checking callers (`grants` or `grants_file`) against a TokenReviewServer."""
    from switchboard.serving.gateway.caller_auth import TokenReviewer

    api = TokenReviewServer("gateway-own-token")
    api_server = ServerThread(api.app).start()
    own = tmp_path / "token"
    own.write_text("gateway-own-token\n")
    reviewer = TokenReviewer(api_server.url, str(own), None)
    config = make_config(upstream_url, caller_auth="tokenreview", **grants)
    app = create_app(config, review=reviewer.review)
    server = ServerThread(app).start()
    try:
        yield Gateway(server.url, app.state.gateway), api
    finally:
        server.stop()
        api_server.stop()


@pytest.fixture
def reviewed_gateway(
    upstream_server: tuple[Upstream, str], tmp_path: Path
) -> Iterator[tuple[Gateway, TokenReviewServer]]:
    grants = {"acme": ["get_order"], "beta": ["create_ticket"]}
    with reviewing_gateway(upstream_server[1], tmp_path, grants=grants) as reviewed:
        yield reviewed


def test_caller_token_is_reviewed_and_checked_against_the_grants(
    upstream: Upstream, reviewed_gateway: tuple[Gateway, TokenReviewServer]
) -> None:
    from switchboard.serving.config import AGENT_TOKEN_HEADER

    gw, api = reviewed_gateway
    acme, beta = fake_jwt(time.time() + 600), fake_jwt(time.time() + 601)
    api.users[acme] = "system:serviceaccount:shop:acme-ray"
    api.users[beta] = "system:serviceaccount:shop:beta-ray"
    api.users["other-namespace"] = "system:serviceaccount:elsewhere:acme-ray"
    api.users["not-a-ray-account"] = "system:serviceaccount:shop:default"

    # Granted: proxied upstream, one review for any number of calls with the same token.
    for _ in range(3):
        reply = gw.call("get_order", {"order_id": "A1"}, headers={AGENT_TOKEN_HEADER: acme})
        assert reply.status == 200, reply.body
    assert len(upstream.seen) == 3
    assert AGENT_TOKEN_HEADER.lower() not in upstream.seen[0].headers, "never sent upstream"
    assert [r["spec"]["token"] for r in api.reviews] == [acme]
    assert api.reviews[0]["spec"]["audiences"] == ["switchboard-gateway"]

    # Verified, but not granted this operation: 403, upstream never called.
    reply = gw.call("get_order", {"order_id": "A1"}, headers={AGENT_TOKEN_HEADER: beta})
    assert reply.status == 403
    assert reply.json()["error"]["code"] == "not_granted"
    assert "'beta'" in reply.json()["error"]["message"]
    reply = gw.call("create_ticket", {"subject": "hello"}, headers={AGENT_TOKEN_HEADER: acme})
    assert reply.status == 403

    # Missing, unknown, or another namespace's / a non-agent account's token: 401.
    for headers in (
        {},
        {AGENT_TOKEN_HEADER: "forged"},
        {AGENT_TOKEN_HEADER: "other-namespace"},
        {AGENT_TOKEN_HEADER: "not-a-ray-account"},
    ):
        reply = gw.call("get_order", {"order_id": "A1"}, headers=headers)
        assert reply.status == 401, headers
        assert reply.json()["error"]["code"] == "unauthenticated"
        assert reply.headers["WWW-Authenticate"] == "Bearer"
    assert len(upstream.seen) == 3

    def refusals(reason: str) -> float | None:
        return gw.sample("tool_gateway_caller_refusals_total", reason=reason)

    assert refusals("not_granted") == 2
    assert refusals("missing_token") == 1
    assert refusals("invalid_token") == 3
    assert refusals("unavailable") == 0
    # Refused calls are not tool calls.
    assert gw.sample("tool_call_total", operation="get_order", outcome="success") == 3
    assert gw.sample("tool_call_total", operation="get_order", outcome="invalid_input") == 0


def test_caller_check_without_the_api_server_is_a_503(
    upstream: Upstream, reviewed_gateway: tuple[Gateway, TokenReviewServer]
) -> None:
    from switchboard.serving.config import AGENT_TOKEN_HEADER

    gw, api = reviewed_gateway
    api.own_token = "rotated-elsewhere"  # the API server refuses the gateway's own token
    reply = gw.call("get_order", {"order_id": "A1"}, headers={AGENT_TOKEN_HEADER: "t"})
    assert reply.status == 503
    assert reply.json()["error"]["code"] == "caller_check_unavailable"
    assert gw.sample("tool_gateway_caller_refusals_total", reason="unavailable") == 1
    assert upstream.seen == []


def test_caller_log_line_names_the_agent(
    upstream: Upstream,
    reviewed_gateway: tuple[Gateway, TokenReviewServer],
    caplog: pytest.LogCaptureFixture,
) -> None:
    from switchboard.serving.config import AGENT_TOKEN_HEADER

    gw, api = reviewed_gateway
    token = fake_jwt(time.time() + 600)
    api.users[token] = "system:serviceaccount:shop:beta-ray"
    with caplog.at_level("INFO", logger="switchboard.serving.gateway"):
        gw.call("get_order", {"order_id": "A1"}, headers={AGENT_TOKEN_HEADER: token})
        gw.call("create_ticket", {"subject": "hello"}, headers={AGENT_TOKEN_HEADER: token})
    lines = [JsonFormatter().format(r) for r in caplog.records if r.name.endswith("gateway")]
    entries = [json.loads(line) for line in lines]
    assert [(e["agent"], e["operation"], e["outcome"], e["status"]) for e in entries] == [
        ("beta", "get_order", "refused_caller", 403),
        ("beta", "create_ticket", "success", 200),
    ]
    assert entries[0]["error"] == "not_granted"
    assert all(token not in line for line in lines)


def test_caller_reviews_are_cached_until_shortly_before_expiry() -> None:
    from switchboard.serving.gateway.caller_auth import Caller, CallerAuth

    now = [1_000_000.0]
    calls: list[str] = []

    def review(token: str) -> dict[str, Any]:
        calls.append(token)
        return {
            "authenticated": True,
            "user": {"username": "system:serviceaccount:shop:acme-ray"},
            "audiences": ["switchboard-gateway"],
        }

    auth = CallerAuth("shop", {"acme": ["get_order"]}, review, clock=lambda: now[0])
    token = fake_jwt(now[0] + 600)

    async def scenario() -> None:
        # Concurrent first calls share one review.
        results = await asyncio.gather(*(auth.check(token, "get_order") for _ in range(5)))
        assert all(isinstance(r, Caller) and r.agent == "acme" for r in results)
        assert len(calls) == 1
        now[0] += 560  # 40 s before expiry: still cached
        assert isinstance(await auth.check(token, "get_order"), Caller)
        assert len(calls) == 1
        now[0] += 15  # 25 s before expiry: reviewed again
        assert isinstance(await auth.check(token, "get_order"), Caller)
        assert len(calls) == 2

    asyncio.run(scenario())


def test_review_without_our_audience_is_not_trusted() -> None:
    from switchboard.serving.gateway.caller_auth import CallerAuth, Refusal

    def review(token: str) -> dict[str, Any]:
        # An API server that ignores audiences authenticates any of the account's tokens.
        return {"authenticated": True, "user": {"username": "system:serviceaccount:shop:a-ray"}}

    result = asyncio.run(CallerAuth("shop", {"a": ["x"]}, review).check("t", "x"))
    assert isinstance(result, Refusal) and result.status == 401


# --- the grants table from the operator's ConfigMap, mounted as a file ----------------------


def write_grants(directory: Path, grants: dict[str, list[str]] | str) -> Path:
    """The grants ConfigMap as the kubelet lays it out and updates it (`write_secret`); a
    string is written as is (a broken file)."""
    from switchboard.serving.config import GATEWAY_GRANTS_KEY, GatewayGrants

    raw = grants if isinstance(grants, str) else GatewayGrants(grants=grants).model_dump_json()
    write_secret(directory, {GATEWAY_GRANTS_KEY: raw})
    return directory / GATEWAY_GRANTS_KEY


def test_gateway_rereads_the_grants_file_when_the_kubelet_swaps_it(
    upstream: Upstream, upstream_server: tuple[Upstream, str], tmp_path: Path
) -> None:
    """An agent granted (or no longer granted) an operation is answered accordingly on the
    next call after the kubelet syncs the ConfigMap: no restart, no new pod."""
    from switchboard.serving.config import AGENT_TOKEN_HEADER

    grants_dir = tmp_path / "grants"
    path = write_grants(grants_dir, {"acme": ["get_order"]})
    with reviewing_gateway(upstream_server[1], tmp_path, grants_file=str(path)) as (gw, api):
        acme, beta = fake_jwt(time.time() + 600), fake_jwt(time.time() + 601)
        api.users[acme] = "system:serviceaccount:shop:acme-ray"
        api.users[beta] = "system:serviceaccount:shop:beta-ray"

        def status(token: str) -> int:
            headers = {AGENT_TOKEN_HEADER: token}
            return gw.call("get_order", {"order_id": "A1"}, headers=headers).status

        assert (status(acme), status(beta)) == (200, 403)
        write_grants(grants_dir, {"acme": ["get_order"], "beta": ["get_order"]})
        assert (status(acme), status(beta)) == (200, 200)
        write_grants(grants_dir, {"beta": ["get_order"]})
        assert (status(acme), status(beta)) == (403, 200)
        assert len(upstream.seen) == 4
        assert gw.get("/readyz").status == 200


def test_a_broken_grants_file_keeps_the_last_good_table(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from switchboard.serving.gateway.grants import GrantsFile

    grants_dir = tmp_path / "grants"
    grants = GrantsFile(write_grants(grants_dir, {"acme": ["get_order"]}))
    assert grants.table() == {"acme": frozenset({"get_order"})}
    with caplog.at_level("WARNING", logger="switchboard.serving.gateway"):
        write_grants(grants_dir, '{"grants": {"acme": "get_order"')
        for _ in range(3):
            assert grants.table() == {"acme": frozenset({"get_order"})}
            assert grants.problem() is None, "ready: the last good table is in force"
    [warning] = [r for r in caplog.records if r.levelname == "WARNING"]
    assert "is not valid" in warning.getMessage()
    assert "keeping the last good grants" in warning.getMessage()
    write_grants(grants_dir, {"beta": ["x"]})
    assert grants.table() == {"beta": frozenset({"x"})}


@pytest.mark.parametrize("content", [None, "not json", '{"grants": {"acme": [1]}}'])
def test_without_a_good_grants_file_every_call_is_refused(
    content: str | None, tmp_path: Path
) -> None:
    """Fail closed: no table to go by (missing or invalid from the start) → 503, not 403 (the
    gateway cannot tell whether the agent is granted), and the pod is not ready."""
    from switchboard.serving.gateway.caller_auth import Caller, CallerAuth, Refusal
    from switchboard.serving.gateway.grants import GrantsFile

    path = tmp_path / "grants" / "grants.json"
    if content is not None:
        path = write_grants(path.parent, content)
    grants = GrantsFile(path)

    def review(token: str) -> dict[str, Any]:
        user = {"username": "system:serviceaccount:shop:acme-ray"}
        return {"authenticated": True, "user": user, "audiences": ["switchboard-gateway"]}

    result = asyncio.run(CallerAuth("shop", grants, review).check("t", "get_order"))
    assert isinstance(result, Refusal)
    assert (result.status, result.code, result.reason) == (503, "grants_unavailable", "unavailable")
    assert str(path) in result.message
    assert grants.problem() is not None
    # A good file later is used at once.
    write_grants(path.parent, {"acme": ["get_order"]})
    assert asyncio.run(CallerAuth("shop", grants, review).check("t", "get_order")) == Caller(
        "acme", "system:serviceaccount:shop:acme-ray"
    )


def test_tokenreview_without_a_cluster_is_a_config_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    with pytest.raises(ConfigError, match="KUBERNETES_SERVICE_HOST"):
        ToolGateway(make_config("http://x", caller_auth="tokenreview"))


def test_agent_tool_caller_sends_its_current_token(
    upstream: Upstream, reviewed_gateway: tuple[Gateway, TokenReviewServer], tmp_path: Path
) -> None:
    """The agent's side: HttpToolCaller re-reads the projected token on every call (the kubelet
    rotates it), so a rotated token is used at once; without the file it sends none."""
    from switchboard.serving.config import ToolConfig
    from switchboard.serving.workflow.tools import HttpToolCaller

    gw, api = reviewed_gateway
    first, second = fake_jwt(time.time() + 600), fake_jwt(time.time() + 900)
    api.users[first] = api.users[second] = "system:serviceaccount:shop:acme-ray"
    token_file = tmp_path / "agent-token"
    tools = [ToolConfig(adapter="orders", system="orders", url=gw.url, operations=[])]

    async def scenario() -> list[int]:
        statuses = []
        caller = HttpToolCaller(tools, token_path=str(token_file))
        try:
            for token in (first, second, None):
                if token is None:
                    token_file.unlink()
                else:
                    token_file.write_text(token + "\n")
                result = await caller.call("orders", "get_order", {"order_id": "A1"}, None)
                statuses.append(result.status)
        finally:
            await caller.close()
        return statuses

    assert asyncio.run(scenario()) == [200, 200, 401]
    assert [r["spec"]["token"] for r in api.reviews] == [first, second]
