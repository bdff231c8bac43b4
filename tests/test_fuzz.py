"""schemathesis against the agent's and a tool gateway's HTTP APIs, from the OpenAPI documents
they serve (tests/test_openapi.py checks those are valid): generated requests, valid and
invalid, to the chat API, the customer session routes, the human agents' handoff API (with a
valid bearer token) and the quickstart orders gateway's operations (in front of the demo orders
system). Every answer must be no server error (a 5xx the document does not declare, or a crash)
and conform to the document: a declared status, and a body matching its schema.

The apps are served for real on 127.0.0.1: the agent's as every replica builds it around the
scripted orchestrator (no Ray; support/agent_replica.py), the gateway by the code `switchboard
serve` runs. Examples are bounded per operation so the file runs in well under a minute.

The two Server-Sent Events streams (`.../events`) are left out: a stream that stays open for
minutes is not a response schemathesis can read. tests/test_handoffs.py covers them.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import Case, GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from support.agent_replica import Replica
from support.manifests import quickstart_documents
from switchboard.operator.localrun import LocalOverrides, local_plan
from switchboard.serving import local
from switchboard.serving.demo import start_demo_systems
from switchboard.serving.workflow.sessions import MemorySessionStore

CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]
MAX_EXAMPLES = 15
"""Per operation and test: 17 operations, valid and invalid: ~20 s in all on 2 cores."""
FUZZ = settings(
    max_examples=MAX_EXAMPLES,
    deadline=None,
    derandomize=True,  # the same cases every run: a failure here reproduces
    suppress_health_check=list(HealthCheck),
    database=None,
)
CONSOLE = {"Authorization": "Bearer token-of-alice"}


def _schema(url: str) -> Any:
    schema = schemathesis.openapi.from_url(url + "/openapi.json")
    schema.config.generation.update(modes=list(GenerationMode), max_examples=MAX_EXAMPLES)
    return schema


@pytest.fixture(scope="module")
def agent(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Replica]:
    tokens = tmp_path_factory.mktemp("console-tokens")
    for name in ("alice", "bob"):
        (tokens / name).write_text(f"token-of-{name}\n")
    replica = Replica(MemorySessionStore(3600), tokens)
    # A conversation handed off, so that generated session and handoff ids can meet real ones.
    replica.chat("gibberish, get me a human", session="s1")
    try:
        yield replica
    finally:
        replica.stop()


@pytest.fixture(scope="module")
def agent_api(agent: Replica) -> Any:
    return _schema(agent.url).exclude(path_regex=r"/events$")


@pytest.fixture(scope="module")
def gateway_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    state = tmp_path_factory.mktemp("fuzz-gateway")
    (state / "nlu").mkdir()
    demo = start_demo_systems(state / "demo.sqlite")
    try:
        plan = local_plan(
            quickstart_documents(),
            LocalOverrides(
                nlu_model=str(state / "nlu"),
                knowledge_dir=str(state / "kb"),
                system_urls={"orders": demo.orders_url, "ticketing": demo.ticketing_url},
            ),
        )
        orders = [gw for gw in plan.gateways if gw.config.adapter == "orders"]
        gateways = local.start_gateways(orders)
        try:
            yield gateways.urls["orders"]
        finally:
            gateways.stop()
    finally:
        demo.stop()


@pytest.fixture(scope="module")
def gateway_api(gateway_url: str) -> Any:
    return _schema(gateway_url)


def fuzz(schema: Any, headers: dict[str, str] | None = None, examples: int = MAX_EXAMPLES) -> int:
    """Every operation of `schema`, with valid and then invalid requests; raises on the first
    failing case of an operation (hypothesis shrinks it first), after trying them all. Returns
    how many operations were fuzzed."""
    failures: list[str] = []
    operations = [result.ok() for result in schema.get_all_operations()]
    for operation in operations:
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):

            @given(case=operation.as_strategy(generation_mode=mode))
            @settings(FUZZ, max_examples=examples)
            def run(case: Case) -> None:
                case.call_and_validate(headers=headers, checks=CHECKS, timeout=10)

            try:
                run()
            except Unsatisfiable:  # nothing to make invalid (no parameters, no body)
                assert mode is GenerationMode.NEGATIVE
            except (Exception, BaseExceptionGroup) as exc:  # schemathesis' FailureGroup too
                failures.append(f"{operation.label} ({mode.value}): {exc}")
    assert failures == [], "\n\n".join(failures)
    return len(operations)


def test_chat_and_session_routes(agent_api: Any) -> None:
    assert fuzz(agent_api.include(path_regex=r"^/v1/(chat|sessions/)")) == 3


def test_handoff_api_with_a_valid_token(agent_api: Any) -> None:
    assert fuzz(agent_api.include(path_regex=r"^/v1/handoffs"), CONSOLE) == 8


def test_gateway_operations(gateway_api: Any) -> None:
    assert fuzz(gateway_api) == 6


# Found by probing beyond the bound above (500s with a stack trace before the fix): pinned.
MISSED: list[tuple[str, str, bytes | None]] = [
    ("get", "/v1/sessions/s1/messages?after=%C2%B2", None),  # '²'.isdigit(), int('²') fails
    ("get", "/v1/sessions/s1/messages?after=%D9%A3", None),  # Arabic-Indic 3: was taken as 3
    ("get", "/v1/handoffs?limit=%C2%B2", None),
    ("post", "/v1/chat", b"[" * 5000 + b"]" * 5000),  # RecursionError in json.loads
    ("post", "/v1/handoffs/s1~1/reply", b'{"a":' * 2000),
]


@pytest.mark.parametrize(("method", "path", "body"), MISSED)
def test_what_fuzzing_missed_is_a_json_4xx(
    agent: Replica, method: str, path: str, body: bytes | None
) -> None:
    answer = requests.request(method, agent.url + path, data=body, headers=CONSOLE, timeout=10)
    assert answer.status_code in (400, 422), answer.text
    assert set(answer.json()["error"]) >= {"code", "message"}
