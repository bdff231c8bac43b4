"""The demo orders and ticketing systems over real HTTP: started on free loopback ports with a
temporary SQLite file, as `make demo` and the serving tests use them."""

from __future__ import annotations

import base64
import json
import os
import queue
import re
import signal
import sqlite3
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import date
from pathlib import Path
from typing import Any

import pytest
import yaml

from switchboard.operator.api.tooladapter import ToolAdapterSpec
from switchboard.operator.api.validation import validate_spec
from switchboard.operator.render import Parent
from switchboard.operator.render.gateway import gateway_config
from switchboard.serving.config import LocalGateway
from switchboard.serving.demo import (
    SAMPLE_ORDERS,
    DemoCredentials,
    DemoStore,
    DemoSystems,
    start_demo_systems,
)
from switchboard.serving.local import start_gateways

REPO_ROOT = Path(__file__).resolve().parents[1]
TOKEN = "test-orders-token"
USER, PASSWORD = "helpdesk-bot", "s3cret:with-colon"
CREDENTIALS = DemoCredentials(
    orders_token=TOKEN, ticketing_username=USER, ticketing_password=PASSWORD
)
BEARER = {"Authorization": f"Bearer {TOKEN}"}
BASIC = {"Authorization": "Basic " + base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()}
ORDER_STATUS_TEMPLATE = (
    "Order {slots[order_id]} is {result[status]}; expected delivery {result[eta]}."
)


class Reply:
    def __init__(self, status: int, body: Any, headers: dict[str, str]) -> None:
        self.status, self.body, self.headers = status, body, headers


def call(
    method: str,
    url: str,
    body: Any = None,
    headers: dict[str, str] | None = None,
    raw: bytes | None = None,
    timeout: float = 5.0,
) -> Reply:
    data = raw if raw is not None else None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method=method, headers=headers or {})
    if data is not None:
        request.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            status, payload, got = response.status, response.read(), response.headers
    except urllib.error.HTTPError as error:
        status, payload, got = error.code, error.read(), error.headers
    return Reply(status, json.loads(payload), {k.lower(): v for k, v in got.items()})


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "demo.sqlite"


@pytest.fixture
def systems(db_path: Path) -> Iterator[DemoSystems]:
    with start_demo_systems(db_path, credentials=CREDENTIALS) as running:
        yield running


def order_url(systems: DemoSystems, order_id: str, suffix: str = "") -> str:
    return f"{systems.orders_url}/orders/{order_id}{suffix}"


def refused_in_states(
    systems: Any, method: str, path: str, body: dict[str, Any] | None, states: tuple[str, ...]
) -> dict[str, str]:
    """The operation on the sample order in each of `states` answers 409 naming the order;
    the error message by state."""
    errors = {}
    for status in states:
        conflict = call(method, order_url(systems, SAMPLE_ORDERS[status], path), body, BEARER)
        assert conflict.status == 409, status
        assert SAMPLE_ORDERS[status] in conflict.body["error"]
        errors[status] = conflict.body["error"]
    return errors


# --- orders ------------------------------------------------------------------------------


def test_get_order_returns_what_the_answer_template_needs(systems: DemoSystems) -> None:
    reply = call("GET", order_url(systems, SAMPLE_ORDERS["shipped"]), headers=BEARER)
    assert reply.status == 200
    order = reply.body
    assert order["order_id"] == SAMPLE_ORDERS["shipped"]
    assert order["status"] == "shipped"
    assert date.fromisoformat(order["eta"]) >= date.today()
    assert order["currency"] == "USD" and order["shipping_address"]
    assert order["items"] and all(
        {"sku", "name", "quantity", "unit_price"} <= set(i) for i in order["items"]
    )
    assert order["total"] == pytest.approx(
        sum(i["quantity"] * i["unit_price"] for i in order["items"])
    )
    answer = ORDER_STATUS_TEMPLATE.format(slots={"order_id": order["order_id"]}, result=order)
    assert answer == f"Order {order['order_id']} is shipped; expected delivery {order['eta']}."


def test_seeded_orders_cover_every_status(systems: DemoSystems) -> None:
    seen = set()
    for n in range(10001, 10011):
        reply = call("GET", order_url(systems, f"ORD-{n}"), headers=BEARER)
        assert reply.status == 200
        seen.add(reply.body["status"])
        assert (reply.body["eta"] is None) == (reply.body["status"] == "cancelled")
    assert seen == {"processing", "shipped", "delivered", "cancelled"}
    for status, order_id in SAMPLE_ORDERS.items():
        assert call("GET", order_url(systems, order_id), headers=BEARER).body["status"] == status


def test_unknown_order_and_route_are_json_errors(systems: DemoSystems) -> None:
    missing = call("GET", order_url(systems, "ORD-99999"), headers=BEARER)
    assert missing.status == 404 and "ORD-99999" in missing.body["error"]
    # Lookups are case-insensitive: the NLU may hand over a lower-case slot.
    assert call("GET", order_url(systems, "ord-10001"), headers=BEARER).body["order_id"] == (
        "ORD-10001"
    )
    nowhere = call("GET", f"{systems.orders_url}/nowhere", headers=BEARER)
    assert nowhere.status == 404 and "error" in nowhere.body
    wrong_method = call("DELETE", order_url(systems, "ORD-10001"), headers=BEARER)
    assert wrong_method.status == 405 and "error" in wrong_method.body


def test_update_shipping_address(systems: DemoSystems) -> None:
    order_id = SAMPLE_ORDERS["processing"]
    url = order_url(systems, order_id, "/shipping-address")
    new_address = "  221B Baker Street, London NW1 6XE, UK  "
    reply = call("PATCH", url, {"address": new_address, "order_id": order_id}, headers=BEARER)
    assert reply.status == 200
    assert reply.body["shipping_address"] == new_address.strip()
    assert reply.body["status"] == "processing" and reply.body["eta"]
    assert call("GET", order_url(systems, order_id), headers=BEARER).body["shipping_address"] == (
        new_address.strip()
    )

    refused_in_states(
        systems, "PATCH", "/shipping-address", {"address": "1 Main Street, Springfield"},
        ("shipped", "delivered", "cancelled"),
    )  # fmt: skip

    too_short = call("PATCH", url, {"address": "x"}, headers=BEARER)
    assert too_short.status == 422 and too_short.body["error"].startswith("address")
    assert call("PATCH", url, {"address": 12345}, headers=BEARER).status == 422
    assert call("PATCH", url, {}, headers=BEARER).status == 422
    assert call("PATCH", url, raw=b"{not json", headers=BEARER).status == 400
    assert call("PATCH", url, ["a list"], headers=BEARER).status == 400
    missing = order_url(systems, "ORD-99999", "/shipping-address")
    assert call("PATCH", missing, {"address": "1 Main Street"}, headers=BEARER).status == 404


def test_refunds(systems: DemoSystems) -> None:
    order_id = SAMPLE_ORDERS["delivered"]
    url = order_url(systems, order_id, "/refunds")
    total = call("GET", order_url(systems, order_id), headers=BEARER).body["total"]

    too_much = call("POST", url, {"amount": total + 0.01}, headers=BEARER)
    assert too_much.status == 422 and "exceeds the order total" in too_much.body["error"]
    for bad in (0, -5, "10", True, 1.001):
        assert call("POST", url, {"amount": bad}, headers=BEARER).status == 422, bad

    partial = call("POST", url, {"amount": 20}, headers=BEARER)
    assert partial.status == 201
    assert partial.body["order_id"] == order_id
    assert partial.body["amount"] == 20.0 and partial.body["status"] == "pending"
    assert re.fullmatch(r"RFD-\d+", partial.body["refund_id"])
    assert partial.headers["location"] == f"/refunds/{partial.body['refund_id']}"
    fetched = call("GET", f"{systems.orders_url}{partial.headers['location']}", headers=BEARER)
    assert fetched.body == partial.body

    # More than what is left after the first refund, though less than the total.
    assert call("POST", url, {"amount": total - 10}, headers=BEARER).status == 422
    # No amount (and no body at all): the rest of the balance.
    rest = call("POST", url, headers=BEARER)
    assert rest.status == 201 and rest.body["amount"] == pytest.approx(total - 20)
    nothing_left = call("POST", url, {}, headers=BEARER)
    assert nothing_left.status == 422 and "nothing left" in nothing_left.body["error"]

    listed = call("GET", url, headers=BEARER).body["refunds"]
    assert [r["refund_id"] for r in listed] == [partial.body["refund_id"], rest.body["refund_id"]]
    order = call("GET", order_url(systems, order_id), headers=BEARER).body
    assert order["refunded"] == pytest.approx(total)
    assert call("POST", order_url(systems, "ORD-99999", "/refunds"), headers=BEARER).status == 404


def test_refund_idempotency_key(systems: DemoSystems) -> None:
    url = order_url(systems, SAMPLE_ORDERS["processing"], "/refunds")
    keyed = {**BEARER, "Idempotency-Key": "refund-attempt-1"}
    first = call("POST", url, {"amount": 15.5}, headers=keyed)
    again = call("POST", url, {"amount": 15.5}, headers=keyed)
    assert first.status == again.status == 201
    assert again.body == first.body
    assert first.headers["idempotent-replayed"] == "false"
    assert again.headers["idempotent-replayed"] == "true"
    assert len(call("GET", url, headers=BEARER).body["refunds"]) == 1

    different = call("POST", url, {"amount": 16}, headers=keyed)
    assert different.status == 422 and "Idempotency-Key" in different.body["error"]

    # Concurrent retries with one key (a gateway retrying after a timeout) create one refund.
    racing = {**BEARER, "Idempotency-Key": "refund-attempt-2"}
    with ThreadPoolExecutor(8) as pool:
        replies = list(
            pool.map(lambda _: call("POST", url, {"amount": 1}, headers=racing), range(8))
        )
    assert {r.status for r in replies} == {201}
    assert len({r.body["refund_id"] for r in replies}) == 1
    assert len(call("GET", url, headers=BEARER).body["refunds"]) == 2

    # Without a key every call is a new refund.
    call("POST", url, {"amount": 1}, headers=BEARER)
    call("POST", url, {"amount": 1}, headers=BEARER)
    assert len(call("GET", url, headers=BEARER).body["refunds"]) == 4
    empty_key = {**BEARER, "Idempotency-Key": " "}
    assert call("POST", url, {"amount": 1}, headers=empty_key).status == 400


def test_cancel_order(systems: DemoSystems) -> None:
    order_id = SAMPLE_ORDERS["processing"]
    url = order_url(systems, order_id, "/cancellation")
    total = call("GET", order_url(systems, order_id), headers=BEARER).body["total"]

    reply = call("POST", url, {"reason": "  Ordered the wrong colour  "}, headers=BEARER)
    assert reply.status == 200 and reply.headers["idempotent-replayed"] == "false"
    order = reply.body
    assert order["order_id"] == order_id and order["status"] == "cancelled"
    # Like the seeded cancelled order: no delivery estimate, and refunded in full.
    assert order["eta"] is None and order["refunded"] == pytest.approx(total)
    assert call("GET", order_url(systems, order_id), headers=BEARER).body == order
    refunds = call("GET", order_url(systems, order_id, "/refunds"), headers=BEARER).body
    assert [(r["amount"], r["status"]) for r in refunds["refunds"]] == [(total, "pending")]
    nothing_left = call("POST", order_url(systems, order_id, "/refunds"), headers=BEARER)
    assert nothing_left.status == 422

    again = call("POST", url, headers=BEARER)
    assert again.status == 409 and again.body["error"] == f"order {order_id} is already cancelled"
    errors = {}
    for status in ("shipped", "delivered", "cancelled"):
        conflict = call(
            "POST", order_url(systems, SAMPLE_ORDERS[status], "/cancellation"), headers=BEARER
        )
        assert conflict.status == 409, status
        errors[status] = conflict.body["error"]
    shipped, delivered = SAMPLE_ORDERS["shipped"], SAMPLE_ORDERS["delivered"]
    assert errors["shipped"] == (
        f"order {shipped} has already shipped; it can be returned after delivery"
    )
    assert errors["delivered"].startswith(f"order {delivered} has already been delivered")
    assert "can no longer be cancelled" in errors["delivered"]
    assert errors["cancelled"] == f"order {SAMPLE_ORDERS['cancelled']} is already cancelled"
    # Nothing changed on the refused orders.
    for status in ("shipped", "delivered"):
        assert (
            call("GET", order_url(systems, SAMPLE_ORDERS[status]), headers=BEARER).body["status"]
            == status
        )

    # A partly refunded order gets the rest of its total back; an empty body needs no reason.
    partly = order_url(systems, "ORD-10002")
    call("POST", f"{partly}/refunds", {"amount": 10}, headers=BEARER)
    assert call("POST", f"{partly}/cancellation", headers=BEARER).status == 200
    amounts = [
        r["amount"] for r in call("GET", f"{partly}/refunds", headers=BEARER).body["refunds"]
    ]
    assert amounts[0] == 10 and sum(amounts) == pytest.approx(
        call("GET", partly, headers=BEARER).body["total"]
    )

    processing = order_url(systems, "ORD-10003", "/cancellation")
    for bad in ({"reason": "x" * 501}, {"reason": 42}):
        assert call("POST", processing, bad, headers=BEARER).status == 422, bad
    assert call("POST", processing, ["a list"], headers=BEARER).status == 400
    assert call("GET", order_url(systems, "ORD-10003"), headers=BEARER).body["status"] == (
        "processing"
    )
    missing = call("POST", order_url(systems, "ORD-99999", "/cancellation"), headers=BEARER)
    assert missing.status == 404 and "ORD-99999" in missing.body["error"]


def test_cancel_order_idempotency_key(systems: DemoSystems) -> None:
    order_id = SAMPLE_ORDERS["processing"]
    url = order_url(systems, order_id, "/cancellation")
    keyed = {**BEARER, "Idempotency-Key": "cancel-attempt-1"}
    first = call("POST", url, {"reason": "duplicate order"}, headers=keyed)
    # A gateway retry after a lost answer: the same order back, not "already cancelled".
    again = call("POST", url, {"reason": "duplicate order"}, headers=keyed)
    assert first.status == again.status == 200 and again.body == first.body
    assert first.body["status"] == "cancelled"
    assert again.headers["idempotent-replayed"] == "true"
    assert call("POST", url, {"reason": "other"}, headers=keyed).status == 422
    other_order = order_url(systems, "ORD-10002", "/cancellation")
    reused = call("POST", other_order, {"reason": "duplicate order"}, headers=keyed)
    assert reused.status == 422 and "Idempotency-Key" in reused.body["error"]
    assert call("POST", url, headers={**BEARER, "Idempotency-Key": "fresh"}).status == 409
    refunds = call("GET", order_url(systems, order_id, "/refunds"), headers=BEARER).body
    assert len(refunds["refunds"]) == 1

    racing = {**BEARER, "Idempotency-Key": "cancel-attempt-2"}
    with ThreadPoolExecutor(8) as pool:
        replies = list(pool.map(lambda _: call("POST", other_order, headers=racing), range(8)))
    assert {r.status for r in replies} == {200}
    assert sum(r.headers["idempotent-replayed"] == "false" for r in replies) == 1
    refunds = call("GET", order_url(systems, "ORD-10002", "/refunds"), headers=BEARER).body
    assert len(refunds["refunds"]) == 1


def test_change_requests(systems: DemoSystems) -> None:
    order_id = SAMPLE_ORDERS["processing"]
    url = order_url(systems, order_id, "/change-requests")
    before = call("GET", order_url(systems, order_id), headers=BEARER).body

    created = call("POST", url, {"request": "  Swap the headphones for the black ones  "}, BEARER)
    assert created.status == 201 and created.headers["idempotent-replayed"] == "false"
    change = created.body
    assert set(change) == {"change_id", "order_id", "request", "status", "created_at"}
    assert re.fullmatch(r"CHG-\d{4,}", change["change_id"])
    assert change["order_id"] == order_id and change["status"] == "pending"
    assert change["request"] == "Swap the headphones for the black ones"
    assert created.headers["location"] == f"/change-requests/{change['change_id']}"
    fetched = call("GET", f"{systems.orders_url}{created.headers['location']}", headers=BEARER)
    assert fetched.status == 200 and fetched.body == change
    second = call("POST", url, {"request": "Gift wrap, please"}, headers=BEARER).body
    assert int(second["change_id"][4:]) == int(change["change_id"][4:]) + 1
    listed = call("GET", url, headers=BEARER).body["change_requests"]
    assert listed == [change, second]
    # Recorded for a person to handle: the order itself is untouched.
    assert call("GET", order_url(systems, order_id), headers=BEARER).body == before

    errors = refused_in_states(
        systems, "POST", "/change-requests", {"request": "Add a second cable"},
        ("shipped", "delivered", "cancelled"),
    )  # fmt: skip
    assert all("can no longer be changed" in e for e in errors.values())

    for bad in (
        {"request": "ab"},
        {"request": "   ab  "},
        {},
        {"request": 7},
        {"request": "x" * 1001},
    ):
        assert call("POST", url, bad, headers=BEARER).status == 422, bad
    assert call("POST", url, headers=BEARER).status == 400
    missing = order_url(systems, "ORD-99999", "/change-requests")
    assert call("POST", missing, {"request": "Add a cable"}, headers=BEARER).status == 404
    assert call("GET", missing, headers=BEARER).status == 404
    for unknown in ("CHG-999999", "not-a-change"):
        assert (
            call("GET", f"{systems.orders_url}/change-requests/{unknown}", headers=BEARER).status
            == 404
        )
    assert len(call("GET", url, headers=BEARER).body["change_requests"]) == 2


def test_change_request_idempotency_key(systems: DemoSystems) -> None:
    url = order_url(systems, SAMPLE_ORDERS["processing"], "/change-requests")
    keyed = {**BEARER, "Idempotency-Key": "change-attempt-1"}
    payload = {"request": "Deliver to the back door"}
    first = call("POST", url, payload, headers=keyed)
    again = call("POST", url, payload, headers=keyed)
    assert first.status == again.status == 201 and again.body == first.body
    assert again.headers["idempotent-replayed"] == "true"
    assert again.headers["location"] == first.headers["location"]
    assert call("POST", url, {"request": "Something else"}, headers=keyed).status == 422
    assert len(call("GET", url, headers=BEARER).body["change_requests"]) == 1


def test_item_issues(systems: DemoSystems) -> None:
    order_id = SAMPLE_ORDERS["delivered"]
    url = order_url(systems, order_id, "/issues")

    damaged = {"kind": "damaged", "description": "Two keycaps snapped off in the box."}
    created = call("POST", url, damaged, headers=BEARER)
    assert created.status == 201 and created.headers["idempotent-replayed"] == "false"
    issue = created.body
    assert re.fullmatch(r"ISS-\d{4,}", issue["issue_id"])
    assert issue["order_id"] == order_id and issue["kind"] == "damaged"
    assert issue["description"] == damaged["description"]
    assert issue["resolution"] == "replacement" and issue["status"] == "open"
    assert issue["return_label"] == f"https://returns.example.com/labels/{issue['issue_id']}"
    assert created.headers["location"] == f"/issues/{issue['issue_id']}"
    fetched = call("GET", f"{systems.orders_url}{created.headers['location']}", headers=BEARER)
    assert fetched.status == 200 and fetched.body == issue
    wrong = call("POST", url, {"kind": "wrong_item", "description": "   "}, headers=BEARER)
    assert wrong.status == 201 and wrong.body["description"] is None
    assert int(wrong.body["issue_id"][4:]) == int(issue["issue_id"][4:]) + 1
    assert call("GET", url, headers=BEARER).body["issues"] == [issue, wrong.body]

    refused_in_states(
        systems, "POST", "/issues", {"kind": "damaged"}, ("processing", "shipped", "cancelled")
    )
    not_yet = call(
        "POST", order_url(systems, SAMPLE_ORDERS["shipped"], "/issues"), {"kind": "damaged"}, BEARER
    )
    assert not_yet.body["error"] == f"order {SAMPLE_ORDERS['shipped']} has not been delivered yet"

    for bad in (
        {"kind": "lost"},
        {"description": "no kind"},
        {"kind": "damaged", "description": "x" * 1001},
        {"kind": "damaged", "description": 3},
    ):
        assert call("POST", url, bad, headers=BEARER).status == 422, bad
    assert call("POST", url, headers=BEARER).status == 400
    missing = call("POST", order_url(systems, "ORD-99999", "/issues"), {"kind": "damaged"}, BEARER)
    assert missing.status == 404 and "ORD-99999" in missing.body["error"]
    assert call("GET", f"{systems.orders_url}/issues/ISS-999999", headers=BEARER).status == 404
    assert len(call("GET", url, headers=BEARER).body["issues"]) == 2


def test_item_issue_idempotency_key(systems: DemoSystems) -> None:
    url = order_url(systems, SAMPLE_ORDERS["delivered"], "/issues")
    keyed = {**BEARER, "Idempotency-Key": "issue-attempt-1"}
    payload = {"kind": "wrong_item", "description": "Got a trackball instead"}
    first = call("POST", url, payload, headers=keyed)
    again = call("POST", url, payload, headers=keyed)
    assert first.status == again.status == 201 and again.body == first.body
    assert again.headers["idempotent-replayed"] == "true"
    assert call("POST", url, {**payload, "kind": "damaged"}, headers=keyed).status == 422
    assert len(call("GET", url, headers=BEARER).body["issues"]) == 1


def test_the_quickstart_orders_adapter_drives_the_new_operations(systems: DemoSystems) -> None:
    """Through a real gateway built from the example ToolAdapter: the order id fills the path,
    the rest of the input is the body these endpoints validate, and the gateway's own
    idempotency key reaches them."""
    manifest = REPO_ROOT / "examples" / "quickstart" / "20-tooladapter-orders.yaml"
    doc = yaml.safe_load(manifest.read_text())
    config = gateway_config(
        Parent("ToolAdapter", doc["metadata"]["name"], "default"),
        validate_spec(ToolAdapterSpec, doc["spec"]),
    ).model_copy(update={"base_url": systems.orders_url})
    gateways = start_gateways([LocalGateway(config=config, credentials={"token": TOKEN})])
    try:
        ops = f"{gateways.urls['orders']}/v1/ops"
        processing, delivered = SAMPLE_ORDERS["processing"], SAMPLE_ORDERS["delivered"]

        change = call(
            "POST",
            f"{ops}/request_order_change",
            {"order_id": processing, "request": "Size 44, please"},
        )
        assert change.status == 200 and change.body["status"] == 201
        assert change.body["result"]["request"] == "Size 44, please"
        cancelled = call(
            "POST", f"{ops}/cancel_order", {"order_id": processing, "reason": "Too late"}
        )
        assert cancelled.status == 200 and cancelled.body["result"]["status"] == "cancelled"
        # A retry of the same call under the gateway's key is answered, not refused.
        key = {"Idempotency-Key": cancelled.body["idempotency_key"]}
        retried = call(
            "POST", f"{ops}/cancel_order", {"order_id": processing, "reason": "Too late"}, key
        )
        assert retried.body["result"] == cancelled.body["result"]
        again = call("POST", f"{ops}/cancel_order", {"order_id": processing})
        assert again.status == 409 and "already cancelled" in again.body["result"]["error"]
        issue = call(
            "POST", f"{ops}/report_item_issue", {"order_id": delivered, "kind": "wrong_item"}
        )
        assert issue.status == 200 and issue.body["result"]["resolution"] == "replacement"

        # The input schemas refuse what the endpoints would refuse, before any call.
        for name, payload in (
            ("cancel_order", {}),
            ("request_order_change", {"order_id": processing, "request": "ab"}),
            ("report_item_issue", {"order_id": delivered, "kind": "lost"}),
            ("report_item_issue", {"order_id": delivered}),
        ):
            assert call("POST", f"{ops}/{name}", payload).status == 400, (name, payload)
        assert len(systems.store.list_issues(delivered)) == 1
    finally:
        gateways.stop()


# --- ticketing ---------------------------------------------------------------------------


def test_tickets(systems: DemoSystems) -> None:
    assert systems.ticketing_url.endswith("/api")
    url = f"{systems.ticketing_url}/tickets"
    handoff = {
        "subject": "[acme] low confidence: refund request",
        "body": "Customer asks for a refund of ORD-10007.",
        "priority": "high",
        "intent": "refund_request",
        "slots": {"order_id": "ORD-10007"},
    }
    created = call("POST", url, handoff, headers=BASIC)
    assert created.status == 201
    ticket = created.body
    assert re.fullmatch(r"TCK-\d{4,}", ticket["ticket_id"])
    assert ticket["status"] == "open" and ticket["priority"] == "high"
    assert ticket["subject"] == handoff["subject"] and ticket["body"] == handoff["body"]
    # Fields beyond the schema (the handoff's context) are kept, not dropped.
    assert ticket["metadata"] == {"intent": "refund_request", "slots": {"order_id": "ORD-10007"}}
    assert created.headers["location"] == f"/api/tickets/{ticket['ticket_id']}"

    fetched = call("GET", f"{url}/{ticket['ticket_id']}", headers=BASIC)
    assert fetched.status == 200 and fetched.body == ticket
    default = call(
        "POST", url, {"subject": "Question", "body": "Where is my parcel?"}, headers=BASIC
    )
    assert default.body["priority"] == "normal"
    assert int(default.body["ticket_id"][4:]) == int(ticket["ticket_id"][4:]) + 1
    newest = call("GET", f"{url}?limit=2", headers=BASIC).body["tickets"]
    assert [t["ticket_id"] for t in newest] == [default.body["ticket_id"], ticket["ticket_id"]]
    assert call("GET", f"{url}?limit=0", headers=BASIC).status == 400

    assert call("GET", f"{url}/TCK-999999", headers=BASIC).status == 404
    assert call("GET", f"{url}/not-a-ticket", headers=BASIC).status == 404
    seeded = call("GET", f"{url}/TCK-1001", headers=BASIC)
    assert seeded.status == 200 and seeded.body["status"] == "solved"
    for bad in (
        {"subject": "s", "body": "b", "priority": "urgent"},
        {"body": "no subject"},
        {"subject": "no body"},
        {"subject": "   ", "body": "blank subject"},
    ):
        assert call("POST", url, bad, headers=BASIC).status == 422, bad
    # The API lives under the prefix only.
    assert (
        call("POST", systems.ticketing_url[: -len("/api")] + "/tickets", handoff, BASIC).status
        == 404
    )


def test_ticket_idempotency_key(systems: DemoSystems) -> None:
    url = f"{systems.ticketing_url}/tickets"
    keyed = {**BASIC, "Idempotency-Key": "handoff-trace-42"}
    payload = {"subject": "Handoff", "body": "Context", "priority": "normal"}
    first = call("POST", url, payload, headers=keyed)
    again = call("POST", url, payload, headers=keyed)
    assert first.status == again.status == 201 and again.body == first.body
    assert again.headers["idempotent-replayed"] == "true"
    assert call("POST", url, {**payload, "body": "Other"}, headers=keyed).status == 422
    tickets = call("GET", url, headers=BASIC).body["tickets"]
    assert sum(t["subject"] == "Handoff" for t in tickets) == 1


def test_custom_ticketing_prefix(db_path: Path) -> None:
    with start_demo_systems(db_path, credentials=CREDENTIALS, ticketing_prefix="helpdesk/") as s:
        assert s.ticketing_url.endswith("/helpdesk")
        assert call("GET", f"{s.ticketing_url}/tickets/TCK-1001", headers=BASIC).status == 200
    with start_demo_systems(db_path, credentials=CREDENTIALS, ticketing_prefix="") as s:
        assert re.fullmatch(r"http://127\.0\.0\.1:\d+", s.ticketing_url)
        assert call("GET", f"{s.ticketing_url}/tickets/TCK-1001", headers=BASIC).status == 200


# --- auth --------------------------------------------------------------------------------


def test_orders_require_the_bearer_token(systems: DemoSystems) -> None:
    url = order_url(systems, SAMPLE_ORDERS["shipped"])
    for headers in (
        {},
        {"Authorization": "Bearer wrong-token"},
        {"Authorization": TOKEN},
        {"Authorization": BASIC["Authorization"]},
    ):
        reply = call("GET", url, headers=headers)
        assert reply.status == 401, headers
        assert reply.body == {"error": "missing or invalid credentials"}
        assert reply.headers["www-authenticate"].startswith("Bearer")
    # Writes are refused before anything changes.
    refund = call("POST", order_url(systems, SAMPLE_ORDERS["shipped"], "/refunds"), {"amount": 1})
    assert refund.status == 401
    listed = call("GET", order_url(systems, SAMPLE_ORDERS["shipped"], "/refunds"), headers=BEARER)
    assert listed.body["refunds"] == []
    processing = SAMPLE_ORDERS["processing"]
    assert call("POST", order_url(systems, processing, "/cancellation")).status == 401
    order = call("GET", order_url(systems, processing), headers=BEARER).body
    assert order["status"] == "processing"
    assert call("GET", url, headers={"Authorization": f"bearer {TOKEN}"}).status == 200
    assert call("GET", f"{systems.orders_url}/healthz").body == {"status": "ok"}


def test_ticketing_requires_basic_auth(systems: DemoSystems) -> None:
    url = f"{systems.ticketing_url}/tickets/TCK-1001"

    def basic(text: str) -> dict[str, str]:
        return {"Authorization": "Basic " + base64.b64encode(text.encode()).decode()}

    for headers in (
        {},
        basic(f"{USER}:wrong"),
        basic(f"intruder:{PASSWORD}"),
        basic(USER),
        {"Authorization": "Basic !!not-base64!!"},
        BEARER,
    ):
        reply = call("GET", url, headers=headers)
        assert reply.status == 401, headers
        assert reply.headers["www-authenticate"].startswith("Basic")
    assert (
        call("POST", f"{systems.ticketing_url}/tickets", {"subject": "s", "body": "b"}).status
        == 401
    )
    assert call("GET", url, headers=BASIC).status == 200
    assert call("GET", url.replace("/api/tickets/TCK-1001", "/healthz")).status == 200


# --- fault injection ---------------------------------------------------------------------


def test_fail_next_requests(systems: DemoSystems) -> None:
    url = order_url(systems, SAMPLE_ORDERS["shipped"])
    assert call("GET", f"{systems.orders_url}/_faults").body["fail_next"] == 0
    setting = call("POST", f"{systems.orders_url}/_faults", {"fail_next": 2, "status": 500})
    assert setting.status == 200 and setting.body["fail_next"] == 2
    # Unauthenticated calls are refused first and use up no failure.
    assert call("GET", url).status == 401
    first, second = call("GET", url, headers=BEARER), call("GET", url, headers=BEARER)
    assert first.status == second.status == 500
    assert "injected fault" in first.body["error"]
    assert call("GET", url, headers=BEARER).status == 200
    state = call("GET", f"{systems.orders_url}/_faults").body
    assert state["requests_seen"] == 3 and state["requests_failed"] == 2 and state["fail_next"] == 0

    # A failed mutating call changes nothing.
    call("POST", f"{systems.orders_url}/_faults", {"fail_next": 1})
    refunds_url = order_url(systems, SAMPLE_ORDERS["shipped"], "/refunds")
    assert call("POST", refunds_url, {"amount": 5}, headers=BEARER).status == 503
    assert call("GET", refunds_url, headers=BEARER).body["refunds"] == []

    cleared = call("DELETE", f"{systems.orders_url}/_faults").body
    assert cleared["requests_seen"] == 0 and cleared["fail_next"] == 0
    for bad in ({"fail_next": -1}, {"status": 200}, {"delay": 1}, {"delay_seconds": "slow"}):
        assert call("POST", f"{systems.orders_url}/_faults", bad).status == 422, bad


def test_delay_and_python_api(systems: DemoSystems) -> None:
    url = order_url(systems, SAMPLE_ORDERS["shipped"])
    call("POST", f"{systems.orders_url}/_faults", {"delay_seconds": 0.5, "delay_next": 1})
    started = time.monotonic()
    assert call("GET", url, headers=BEARER).status == 200
    assert time.monotonic() - started >= 0.5
    started = time.monotonic()
    assert call("GET", url, headers=BEARER).status == 200
    assert time.monotonic() - started < 0.5

    # A client timeout against a slow system, as a gateway with a short timeout sees it.
    systems.orders_faults.configure(delay_seconds=0.6)
    with pytest.raises(TimeoutError):
        call("GET", url, headers=BEARER, timeout=0.2)
    systems.orders_faults.clear()

    # The ticketing system has its own injector.
    systems.ticketing_faults.configure(fail_next=1)
    tickets = f"{systems.ticketing_url}/tickets"
    assert call("POST", tickets, {"subject": "s", "body": "b"}, headers=BASIC).status == 503
    assert call("POST", tickets, {"subject": "s", "body": "b"}, headers=BASIC).status == 201
    assert systems.ticketing_faults.snapshot()["requests_failed"] == 1
    assert call("GET", url, headers=BEARER).status == 200


# --- persistence and the process entry point ---------------------------------------------


def test_state_survives_a_restart(db_path: Path) -> None:
    with start_demo_systems(db_path, credentials=CREDENTIALS) as first:
        order_id = SAMPLE_ORDERS["processing"]
        call(
            "PATCH",
            order_url(first, order_id, "/shipping-address"),
            {"address": "5 New Road, Leeds LS1 4AP, UK"},
            headers=BEARER,
        )
        refund = call("POST", order_url(first, order_id, "/refunds"), {"amount": 9.99}, BEARER)
        ticket = call(
            "POST", f"{first.ticketing_url}/tickets", {"subject": "s", "body": "b"}, BASIC
        )
    assert not first.alive()
    with sqlite3.connect(db_path) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone() == ("wal",)
        assert conn.execute("SELECT COUNT(*) FROM orders").fetchone() == (10,)

    with start_demo_systems(db_path, credentials=CREDENTIALS) as second:
        order = call("GET", order_url(second, order_id), headers=BEARER).body
        assert order["shipping_address"] == "5 New Road, Leeds LS1 4AP, UK"
        assert order["refunded"] == 9.99
        refunds = call("GET", order_url(second, order_id, "/refunds"), headers=BEARER).body
        assert refunds["refunds"] == [refund.body]
        tickets_url = f"{second.ticketing_url}/tickets"
        assert call("GET", f"{tickets_url}/{ticket.body['ticket_id']}", headers=BASIC).body == (
            ticket.body
        )
        later = call("POST", tickets_url, {"subject": "s2", "body": "b2"}, headers=BASIC).body
        assert int(later["ticket_id"][4:]) == int(ticket.body["ticket_id"][4:]) + 1
    # Not re-seeded: still the ten orders and two seeded tickets plus the two created.
    with sqlite3.connect(db_path) as conn:
        assert conn.execute("SELECT COUNT(*) FROM orders").fetchone() == (10,)
        assert conn.execute("SELECT COUNT(*) FROM tickets").fetchone() == (4,)


def test_store_seeds_relative_to_the_seed_date(tmp_path: Path) -> None:
    store = DemoStore(tmp_path / "dated.sqlite", seed_date=date(2025, 3, 10))
    try:
        assert store.get_order(SAMPLE_ORDERS["shipped"])["eta"] == "2025-03-12"
        assert store.get_order(SAMPLE_ORDERS["delivered"])["eta"] == "2025-03-04"
        assert (
            store.get_order(SAMPLE_ORDERS["cancelled"])["refunded"]
            == (store.get_order(SAMPLE_ORDERS["cancelled"])["total"])
        )
    finally:
        store.close()


def test_a_version_1_file_gains_the_new_tables(db_path: Path) -> None:
    store = DemoStore(db_path)
    store.create_refund(SAMPLE_ORDERS["delivered"], 5)
    store.close()
    # Back to how a file written before cancellations, change requests and issues looks.
    with sqlite3.connect(db_path) as conn:
        for table in ("cancellations", "change_requests", "issues"):
            conn.execute(f"DROP TABLE {table}")
        conn.execute("PRAGMA user_version=1")

    store = DemoStore(db_path)
    try:
        assert len(store.list_refunds(SAMPLE_ORDERS["delivered"])) == 1
        change, _ = store.create_change_request(SAMPLE_ORDERS["processing"], "Add a gift note")
        issue, _ = store.create_issue(SAMPLE_ORDERS["delivered"], "damaged")
        order, replayed = store.cancel_order(SAMPLE_ORDERS["processing"], idempotency_key="k")
        assert (change["change_id"], issue["issue_id"]) == ("CHG-1001", "ISS-1001")
        assert order["status"] == "cancelled" and not replayed
        assert store.list_change_requests(SAMPLE_ORDERS["processing"]) == [change]
        assert store.list_issues(SAMPLE_ORDERS["delivered"]) == [issue]
    finally:
        store.close()
    with sqlite3.connect(db_path) as conn:
        assert conn.execute("PRAGMA user_version").fetchone() == (2,)
        # Migrated, not re-seeded.
        assert conn.execute("SELECT COUNT(*) FROM orders").fetchone() == (10,)
        assert conn.execute("SELECT COUNT(*) FROM tickets").fetchone() == (2,)


def test_port_in_use_fails_cleanly(systems: DemoSystems, db_path: Path) -> None:
    busy = int(systems.orders_url.rsplit(":", 1)[1])
    with pytest.raises(OSError):
        start_demo_systems(db_path, orders_port=busy)
    # The running systems are unaffected.
    assert call("GET", order_url(systems, "ORD-10001"), headers=BEARER).status == 200


def _lines(proc: subprocess.Popen[str]) -> queue.Queue[str | None]:
    """stdout lines through a reader thread (None at EOF): select() cannot see lines already
    buffered by the text wrapper."""
    assert proc.stdout is not None
    stdout, lines = proc.stdout, queue.Queue[str | None]()

    def pump() -> None:
        for line in stdout:
            lines.put(line)
        lines.put(None)

    threading.Thread(target=pump, daemon=True).start()
    return lines


def _next_line(lines: queue.Queue[str | None], deadline: float) -> str | None:
    try:
        return lines.get(timeout=max(deadline - time.monotonic(), 0.01))
    except queue.Empty:
        raise AssertionError("the entry point printed nothing in time") from None


@pytest.mark.parametrize("stop_signal", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_module_entry_point(db_path: Path, stop_signal: signal.Signals) -> None:
    env = {**os.environ, "SWITCHBOARD_DEMO_ORDERS_TOKEN": TOKEN}
    command = [sys.executable, "-m", "switchboard.serving.demo", "--db", str(db_path)]
    command += ["--orders-port", "0", "--ticketing-port", "0", "--ticketing-user", USER]
    command += ["--ticketing-password", PASSWORD]
    proc = subprocess.Popen(
        command, cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        lines, deadline = _lines(proc), time.monotonic() + 15
        urls: dict[str, str] = {}
        while len(urls) < 2:
            line = _next_line(lines, deadline)
            assert line is not None, f"exited early: {proc.wait()}"
            name, _, url = line.partition(" ")
            if name in ("orders", "ticketing"):
                urls[name] = url.strip()
        order = call("GET", f"{urls['orders']}/orders/{SAMPLE_ORDERS['shipped']}", headers=BEARER)
        assert order.status == 200 and order.body["status"] == "shipped"
        assert urls["ticketing"].endswith("/api")
        ticket = call("GET", f"{urls['ticketing']}/tickets/TCK-1001", headers=BASIC)
        assert ticket.status == 200

        proc.send_signal(stop_signal)
        assert proc.wait(timeout=10) == 0
        rest = []
        while (line := _next_line(lines, time.monotonic() + 5)) is not None:
            rest.append(line)
        assert "stopped\n" in rest
        err = proc.stderr.read() if proc.stderr else ""
        assert "Traceback" not in err
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.communicate()
    assert db_path.exists()
