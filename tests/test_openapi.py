"""The OpenAPI documents the agent and the tool gateways serve (`GET /openapi.json`) are valid
OpenAPI 3.1 and every reference in them resolves in the document itself: client generators and
tests/test_fuzz.py (schemathesis) read them. Both apps are served for real on 127.0.0.1.

The agent's routes read their bodies by hand (JSON errors, the Idempotency-Key header), so
their request and answer schemas are declared from the pydantic models (serving/http.py):
these tests pin that every body, answer and error is described, from those models."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from openapi_spec_validator import validate
from openapi_spec_validator.validation.exceptions import OpenAPIValidationError
from referencing.exceptions import Unresolvable

from support.agent_replica import Replica
from support.manifests import quickstart_documents
from switchboard.operator.localrun import LocalOverrides, local_plan
from switchboard.serving.agent_api import (
    ClaimBody,
    CorrectionBody,
    RatingBody,
    ReplyBody,
    TransferBody,
)
from switchboard.serving.asgi_thread import serve_in_thread
from switchboard.serving.config import ToolGatewayConfig
from switchboard.serving.gateway import create_app
from switchboard.serving.workflow.handoffs import HandoffRecord
from switchboard.serving.workflow.sessions import MemorySessionStore
from switchboard.serving.workflow.types import ChatRequest, ChatResponse

COMPONENTS = "#/components/schemas/"


def refs(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        if isinstance(node.get("$ref"), str):
            yield node["$ref"]
        for value in node.values():
            yield from refs(value)
    elif isinstance(node, list):
        for value in node:
            yield from refs(value)


def resolve(document: dict[str, Any], ref: str) -> Any:
    """A local reference (`#/a/b~1c`) in `document`; KeyError when it names nothing."""
    assert ref.startswith("#"), f"{ref}: not a reference within the document"
    node: Any = document
    for token in filter(None, ref[1:].split("/")):
        token = token.replace("~1", "/").replace("~0", "~")
        node = node[int(token)] if isinstance(node, list) else node[token]
    return node


def assert_valid(document: dict[str, Any]) -> None:
    validate(document)  # OpenAPI 3.1 (from the document's `openapi`), references followed
    unresolved = [r for r in set(refs(document)) if not _resolves(document, r)]
    assert unresolved == [], unresolved


def _resolves(document: dict[str, Any], ref: str) -> bool:
    try:
        resolve(document, ref)
    except (KeyError, IndexError, ValueError):
        return False
    return True


@pytest.fixture(scope="module")
def agent_document(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    replica = Replica(MemorySessionStore(3600), tmp_path_factory.mktemp("console-tokens"))
    try:
        answer = requests.get(replica.url + "/openapi.json", timeout=10)
        assert answer.status_code == 200
        yield answer.json()
    finally:
        replica.stop()


def operations(document: dict[str, Any]) -> Iterator[tuple[str, str, dict[str, Any]]]:
    for path, item in document["paths"].items():
        for method, operation in item.items():
            yield method, path, operation


def test_the_agent_document_is_valid_and_resolvable(agent_document: dict[str, Any]) -> None:
    assert agent_document["openapi"].startswith("3.1")
    assert_valid(agent_document)


def test_a_document_with_a_dangling_reference_is_refused() -> None:
    """The validator would catch what the agent served before: pydantic's `#/$defs/Action`."""
    pydantic_schema = ChatResponse.model_json_schema()  # with "$defs" and "#/$defs/..." refs
    broken = {
        "openapi": "3.1.0",
        "info": {"title": "t", "version": "v1"},
        "paths": {
            "/v1/chat": {
                "post": {
                    "responses": {
                        "200": {
                            "description": "reply",
                            "content": {"application/json": {"schema": pydantic_schema}},
                        }
                    }
                }
            }
        },
    }
    with pytest.raises((OpenAPIValidationError, Unresolvable)):
        validate(broken)


@pytest.mark.parametrize(
    ("path", "model"),
    [
        ("/v1/chat", ChatRequest),
        ("/v1/sessions/{session_id}/rating", RatingBody),
        ("/v1/handoffs/{record_id}/claim", ClaimBody),
        ("/v1/handoffs/{record_id}/reply", ReplyBody),
        ("/v1/handoffs/{record_id}/transfer", TransferBody),
        ("/v1/handoffs/{record_id}/resolve", ClaimBody),
        ("/v1/handoffs/{record_id}/correction", CorrectionBody),
        ("/v1/handoffs/{record_id}/rating", RatingBody),
    ],
)
def test_request_bodies_are_the_models(
    agent_document: dict[str, Any], path: str, model: type[Any]
) -> None:
    body = agent_document["paths"][path]["post"]["requestBody"]
    schema = body["content"]["application/json"]["schema"]
    assert body["required"] is True and schema == {"$ref": COMPONENTS + model.__name__}
    component = resolve(agent_document, schema["$ref"])
    # From the model, field for field (a field added to the model is documented by itself).
    assert sorted(component["properties"]) == sorted(model.model_fields)
    assert component["additionalProperties"] is False


def test_answers_are_the_models_and_errors_are_json(agent_document: dict[str, Any]) -> None:
    chat = agent_document["paths"]["/v1/chat"]["post"]["responses"]
    ok = chat["200"]["content"]["application/json"]["schema"]
    assert ok == {"$ref": COMPONENTS + "ChatResponse"}
    # Fields added to the model (the session token) are documented without another change.
    assert set(ChatResponse.model_fields) <= set(resolve(agent_document, ok["$ref"])["properties"])
    record = resolve(agent_document, COMPONENTS + "HandoffRecord")
    assert set(HandoffRecord.model_fields) <= set(record["properties"])
    error = {"$ref": COMPONENTS + "ErrorBody"}
    for _, path, operation in operations(agent_document):
        for status, answer in operation["responses"].items():
            if status.startswith(("4", "5")):
                assert answer["content"]["application/json"]["schema"] == error, (path, status)
    assert "HTTPValidationError" not in agent_document["components"]["schemas"]  # FastAPI's own


def test_the_console_routes_declare_the_bearer_scheme(agent_document: dict[str, Any]) -> None:
    schemes = agent_document["components"]["securitySchemes"]
    assert schemes == {
        "consoleToken": {
            "type": "http",
            "scheme": "bearer",
            "description": "A human agent's token: a file of the console tokens Secret.",
        }
    }
    for method, path, operation in operations(agent_document):
        console = path.startswith("/v1/handoffs")
        assert (operation.get("security") == [{"consoleToken": []}]) == console, (method, path)
        if console:
            assert "401" in operation["responses"]


def test_streams_are_documented_as_event_streams(agent_document: dict[str, Any]) -> None:
    for path in ("/v1/sessions/{session_id}/events", "/v1/handoffs/events"):
        ok = agent_document["paths"][path]["get"]["responses"]["200"]
        assert list(ok["content"]) == ["text/event-stream"]


# --- the gateways --------------------------------------------------------------------------


def quickstart_gateways(state: Path) -> list[ToolGatewayConfig]:
    """The quickstart's ToolAdapters as local gateways (the systems' URLs are not called)."""
    nlu = state / "nlu"
    nlu.mkdir(exist_ok=True)
    plan = local_plan(
        quickstart_documents(),
        LocalOverrides(
            nlu_model=str(nlu),
            knowledge_dir=str(state / "kb"),
            system_urls={"orders": "http://127.0.0.1:9", "ticketing": "http://127.0.0.1:9/api"},
        ),
    )
    return [gw.config for gw in plan.gateways]


def served_document(config: ToolGatewayConfig) -> dict[str, Any]:
    url, server = serve_in_thread("gateway", create_app(config), lifespan="on")
    try:
        answer = requests.get(url + "/openapi.json", timeout=10)
    finally:
        server.stop()
    assert answer.status_code == 200
    document: dict[str, Any] = answer.json()
    return document


def test_the_quickstart_gateways_documents_are_valid(tmp_path: Path) -> None:
    configs = quickstart_gateways(tmp_path)
    assert sorted(c.adapter for c in configs) == ["orders", "ticketing"]
    for config in configs:
        document = served_document(config)
        assert_valid(document)
        assert sorted(document["paths"]) == sorted(f"/v1/ops/{op.name}" for op in config.operations)
        for op in config.operations:
            post = document["paths"][f"/v1/ops/{op.name}"]["post"]
            schema = post["requestBody"]["content"]["application/json"]["schema"]
            assert resolve(document, schema["$ref"]) == op.input_schema  # from the config


def test_an_input_schema_with_its_own_definitions_stays_resolvable(tmp_path: Path) -> None:
    (base,) = [c for c in quickstart_gateways(tmp_path) if c.adapter == "ticketing"]
    nested = {
        "type": "object",
        "properties": {"contact": {"$ref": "#/$defs/contact"}, "again": {"$ref": "#"}},
        "$defs": {"contact": {"type": "object", "properties": {"email": {"type": "string"}}}},
    }
    odd = base.operations[0].model_copy(update={"name": "open case/2", "input_schema": nested})
    document = served_document(base.model_copy(update={"operations": [odd]}))
    assert_valid(document)
    post = document["paths"]["/v1/ops/open%20case%2F2"]["post"]
    ref = post["requestBody"]["content"]["application/json"]["schema"]["$ref"]
    component = resolve(document, ref)
    assert resolve(document, component["properties"]["contact"]["$ref"]) == {
        "type": "object",
        "properties": {"email": {"type": "string"}},
    }
    assert resolve(document, component["properties"]["again"]["$ref"]) is component


def test_a_gateway_checking_its_callers_documents_the_agent_token(tmp_path: Path) -> None:
    from switchboard.serving.gateway.openapi import openapi_document

    (base,) = [c for c in quickstart_gateways(tmp_path) if c.adapter == "orders"]
    assert "security" not in served_document(base), "local runs check no caller"
    checked = base.model_copy(update={"caller_auth": "tokenreview", "grants": {"acme": []}})
    document = openapi_document(checked)
    assert_valid(document)
    assert document["security"] == [{"agentToken": []}]
    scheme = document["components"]["securitySchemes"]["agentToken"]
    assert (scheme["type"], scheme["in"], scheme["name"]) == (
        "apiKey",
        "header",
        "X-Switchboard-Agent-Token",
    )
