"""The demo business systems' data: orders (with their refunds, cancellations, change requests
and item issues) and tickets in one SQLite file.

One connection guarded by a lock serves both apps (they run in separate threads); every write is
a `BEGIN IMMEDIATE` transaction, so another process on the same file (WAL mode) stays consistent.
Money is stored in integer cents and rendered as numbers with two decimals.
"""

from __future__ import annotations

import hashlib
import json
import re
import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any, Literal

JSONObject = dict[str, Any]
OrderStatus = Literal["processing", "shipped", "delivered", "cancelled"]
Priority = Literal["low", "normal", "high"]
IssueKind = Literal["damaged", "wrong_item"]

# Public ids are a prefix plus the row's sequence number shifted by a base, so they look like a
# real system's ids (TCK-1001, RFD-5001) while SQLite's AUTOINCREMENT hands out the numbers.
TICKET_ID_BASE = 1000
REFUND_ID_BASE = 5000
CHANGE_ID_BASE = 1000
ISSUE_ID_BASE = 1000
_TICKET_ID = re.compile(r"^TCK-(\d{1,12})$")
_REFUND_ID = re.compile(r"^RFD-(\d{1,12})$")
_CHANGE_ID = re.compile(r"^CHG-(\d{1,12})$")
_ISSUE_ID = re.compile(r"^ISS-(\d{1,12})$")
RETURN_LABEL_URL = "https://returns.example.com/labels/{issue_id}"

# Seeded orders by status, for sample requests and tests that need an order in a given state.
SAMPLE_ORDERS: dict[OrderStatus, str] = {
    "processing": "ORD-10001",
    "shipped": "ORD-10004",
    "delivered": "ORD-10007",
    "cancelled": "ORD-10010",
}

_SCHEMA_V1 = """
CREATE TABLE orders (
    order_id TEXT PRIMARY KEY,
    customer_id TEXT NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('processing', 'shipped', 'delivered', 'cancelled')),
    eta TEXT,
    items TEXT NOT NULL,
    total_cents INTEGER NOT NULL CHECK (total_cents >= 0),
    currency TEXT NOT NULL,
    shipping_address TEXT NOT NULL,
    carrier TEXT,
    tracking_number TEXT,
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL
);
CREATE TABLE refunds (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    order_id TEXT NOT NULL REFERENCES orders (order_id),
    amount_cents INTEGER NOT NULL CHECK (amount_cents > 0),
    status TEXT NOT NULL CHECK (status IN ('pending', 'completed', 'failed')),
    idempotency_key TEXT UNIQUE,
    request_fingerprint TEXT,
    created_at TEXT NOT NULL
);
CREATE INDEX refunds_by_order ON refunds (order_id);
CREATE TABLE tickets (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    subject TEXT NOT NULL,
    body TEXT NOT NULL,
    priority TEXT NOT NULL CHECK (priority IN ('low', 'normal', 'high')),
    status TEXT NOT NULL CHECK (status IN ('open', 'pending', 'solved', 'closed')),
    metadata TEXT NOT NULL,
    idempotency_key TEXT UNIQUE,
    request_fingerprint TEXT,
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL
);
"""

# Only cancellations made through the API have a row: it holds the request's idempotency key.
_SCHEMA_V2 = """
CREATE TABLE cancellations (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    order_id TEXT NOT NULL UNIQUE REFERENCES orders (order_id),
    reason TEXT,
    idempotency_key TEXT UNIQUE,
    request_fingerprint TEXT,
    created_at TEXT NOT NULL
);
CREATE TABLE change_requests (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    order_id TEXT NOT NULL REFERENCES orders (order_id),
    request TEXT NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('pending', 'accepted', 'rejected')),
    idempotency_key TEXT UNIQUE,
    request_fingerprint TEXT,
    created_at TEXT NOT NULL
);
CREATE INDEX change_requests_by_order ON change_requests (order_id);
CREATE TABLE issues (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    order_id TEXT NOT NULL REFERENCES orders (order_id),
    kind TEXT NOT NULL CHECK (kind IN ('damaged', 'wrong_item')),
    description TEXT,
    resolution TEXT NOT NULL CHECK (resolution IN ('replacement')),
    status TEXT NOT NULL CHECK (status IN ('open', 'resolved')),
    idempotency_key TEXT UNIQUE,
    request_fingerprint TEXT,
    created_at TEXT NOT NULL
);
CREATE INDEX issues_by_order ON issues (order_id);
"""

# Schema version N is reached by running _MIGRATIONS[N - 1]; a file at version 0 is also seeded.
_MIGRATIONS = (_SCHEMA_V1, _SCHEMA_V2)
SCHEMA_VERSION = len(_MIGRATIONS)


class DemoError(Exception):
    """A request the system refuses; `status` is the HTTP status the apps answer with."""

    status = 400

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class NotFoundError(DemoError):
    status = 404


class ConflictError(DemoError):
    status = 409


class UnprocessableError(DemoError):
    status = 422


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def _money(cents: int) -> float:
    return round(cents / 100, 2)


def _cents(amount: float) -> int:
    value = Decimal(str(amount))
    if not value.is_finite():
        raise UnprocessableError("amount must be a finite number")
    exponent = value.as_tuple().exponent
    if isinstance(exponent, int) and exponent < -2:
        raise UnprocessableError("amount must have at most two decimals")
    return int(value * 100)


def _fingerprint(request: JSONObject) -> str:
    canonical = json.dumps(request, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()


def _item(sku: str, name: str, quantity: int, unit_cents: int) -> JSONObject:
    return {"sku": sku, "name": name, "quantity": quantity, "unit_price_cents": unit_cents}


# (order_id, customer_id, status, eta offset in days or None, created offset in days, items,
#  shipping address, carrier, tracking number)
_SEED_ORDERS: tuple[
    tuple[str, str, OrderStatus, int | None, int, list[JSONObject], str, str | None, str | None],
    ...,
] = (
    (
        "ORD-10001",
        "CUST-2001",
        "processing",
        5,
        -1,
        [_item("HDP-220", "Wireless noise-cancelling headphones", 1, 14900)],
        "18 Maple Avenue, Springfield, IL 62704, USA",
        None,
        None,
    ),
    (
        "ORD-10002",
        "CUST-2002",
        "processing",
        4,
        -1,
        [
            _item("BTL-750", "Stainless steel water bottle 750 ml", 2, 2450),
            _item("LBX-110", "Insulated lunch box", 1, 3200),
        ],
        "4 Harbour Road, Portland, ME 04101, USA",
        None,
        None,
    ),
    (
        "ORD-10003",
        "CUST-2003",
        "processing",
        7,
        0,
        [_item("CHR-900", "Ergonomic office chair", 1, 28900)],
        "1200 Market Street, Apt 5B, San Francisco, CA 94102, USA",
        None,
        None,
    ),
    (
        "ORD-10004",
        "CUST-2001",
        "shipped",
        2,
        -3,
        [
            _item("CBL-C2M", "USB-C charging cable 2 m", 3, 1299),
            _item("CHG-65W", "65 W USB-C charger", 1, 3990),
        ],
        "18 Maple Avenue, Springfield, IL 62704, USA",
        "UPS",
        "1Z999AA10123456784",
    ),
    (
        "ORD-10005",
        "CUST-2004",
        "shipped",
        1,
        -4,
        [_item("SHO-TR42", "Trail running shoes, size 42", 1, 11995)],
        "77 Elm Street, Austin, TX 78701, USA",
        "DHL",
        "JD014600006281230417",
    ),
    (
        "ORD-10006",
        "CUST-2005",
        "shipped",
        3,
        -2,
        [
            _item("SKL-28", "Cast iron skillet 28 cm", 1, 5400),
            _item("SPT-SET", "Silicone spatula set", 1, 1850),
        ],
        "350 Fifth Avenue, Floor 12, New York, NY 10118, USA",
        "FedEx",
        "794644790132",
    ),
    (
        "ORD-10007",
        "CUST-2002",
        "delivered",
        -6,
        -12,
        [_item("KBD-MX", "Mechanical keyboard", 1, 12900)],
        "4 Harbour Road, Portland, ME 04101, USA",
        "UPS",
        "1Z999AA10123456791",
    ),
    (
        "ORD-10008",
        "CUST-2006",
        "delivered",
        -12,
        -18,
        [
            _item("YGM-6MM", "Yoga mat 6 mm", 1, 3500),
            _item("FRL-45", "Foam roller 45 cm", 1, 2200),
        ],
        "9 Lakeview Drive, Madison, WI 53703, USA",
        "USPS",
        "9400111899223100012345",
    ),
    (
        "ORD-10009",
        "CUST-2003",
        "delivered",
        -3,
        -8,
        [_item("LMP-LED", "LED desk lamp", 1, 4550)],
        "1200 Market Street, Apt 5B, San Francisco, CA 94102, USA",
        "FedEx",
        "794644790150",
    ),
    (
        "ORD-10010",
        "CUST-2007",
        "cancelled",
        None,
        -8,
        [_item("WCH-S2", "Smart watch", 1, 19900)],
        "61 Oak Lane, Denver, CO 80202, USA",
        None,
        None,
    ),
)

_SEED_TICKETS: tuple[tuple[str, str, Priority, str], ...] = (
    (
        "Damaged keyboard in ORD-10007",
        "Customer reports two keycaps broken on arrival; replacement keycaps sent.",
        "normal",
        "solved",
    ),
    (
        "Invoice address for ORD-10008",
        "Customer asks for an invoice with their company name; waiting for the company details.",
        "low",
        "pending",
    ),
)


class DemoStore:
    """Orders and what hangs off them, and tickets; created and seeded when the file is new,
    migrated when it is older."""

    def __init__(self, path: str | Path, *, seed_date: date | None = None) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        # isolation_level=None: transactions are explicit (BEGIN IMMEDIATE in _write).
        self._conn = sqlite3.connect(
            self.path, check_same_thread=False, isolation_level=None, timeout=5.0
        )
        self._conn.row_factory = sqlite3.Row
        self._conn.execute("PRAGMA journal_mode=WAL")
        self._conn.execute("PRAGMA synchronous=NORMAL")
        self._conn.execute("PRAGMA foreign_keys=ON")
        self._conn.execute("PRAGMA busy_timeout=5000")
        self._migrate(seed_date or date.today())

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                yield self._conn
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
            self._conn.execute("COMMIT")

    @contextmanager
    def _read(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            yield self._conn

    def _migrate(self, seed_date: date) -> None:
        with self._write() as conn:
            (version,) = conn.execute("PRAGMA user_version").fetchone()
            if version >= SCHEMA_VERSION:
                return
            for schema in _MIGRATIONS[version:]:
                # executescript would commit the open transaction; run the statements one by one.
                for statement in schema.split(";"):
                    if statement.strip():
                        conn.execute(statement)
            if version == 0:
                self._seed(conn, seed_date)
            conn.execute(f"PRAGMA user_version={SCHEMA_VERSION}")

    @staticmethod
    def _seed(conn: sqlite3.Connection, seed_date: date) -> None:
        midday = datetime.combine(seed_date, datetime.min.time(), UTC) + timedelta(hours=12)
        for (
            oid,
            cid,
            status,
            eta_days,
            created_days,
            items,
            address,
            carrier,
            tracking,
        ) in _SEED_ORDERS:
            created = (midday + timedelta(days=created_days)).isoformat().replace("+00:00", "Z")
            eta = None if eta_days is None else (seed_date + timedelta(days=eta_days)).isoformat()
            total = sum(i["quantity"] * i["unit_price_cents"] for i in items)
            conn.execute(
                "INSERT INTO orders VALUES (?, ?, ?, ?, ?, ?, 'USD', ?, ?, ?, ?, ?)",
                (
                    oid,
                    cid,
                    status,
                    eta,
                    json.dumps(items),
                    total,
                    address,
                    carrier,
                    tracking,
                    created,
                    created,
                ),
            )
            if status == "cancelled":
                # A cancelled order was refunded in full when it was cancelled.
                conn.execute(
                    "INSERT INTO refunds (order_id, amount_cents, status, created_at)"
                    " VALUES (?, ?, 'completed', ?)",
                    (oid, total, created),
                )
        for subject, body, priority, ticket_status in _SEED_TICKETS:
            created = (midday - timedelta(days=2)).isoformat().replace("+00:00", "Z")
            conn.execute(
                "INSERT INTO tickets (subject, body, priority, status, metadata, created_at,"
                " updated_at) VALUES (?, ?, ?, ?, '{}', ?, ?)",
                (subject, body, priority, ticket_status, created, created),
            )

    @staticmethod
    def _earlier(
        conn: sqlite3.Connection, table: str, key: str | None, fingerprint: str, what: str
    ) -> sqlite3.Row | None:
        """The row an earlier request under this idempotency key created, if any; a different
        request under the same key is refused. `table` is always one of ours, never input."""
        if key is None:
            return None
        earlier: sqlite3.Row | None = conn.execute(
            f"SELECT * FROM {table} WHERE idempotency_key = ?", (key,)
        ).fetchone()
        if earlier is not None and earlier["request_fingerprint"] != fingerprint:
            raise UnprocessableError(f"Idempotency-Key was already used for a different {what}")
        return earlier

    def _by_public_id(
        self, table: str, pattern: re.Pattern[str], base: int, what: str, public_id: str
    ) -> sqlite3.Row:
        match = pattern.match(public_id.strip().upper())
        with self._read() as conn:
            row: sqlite3.Row | None = None
            if match:
                seq = int(match.group(1)) - base
                row = conn.execute(f"SELECT * FROM {table} WHERE seq = ?", (seq,)).fetchone()
            if row is None:
                raise NotFoundError(f"{what} {public_id} not found")
            return row

    # --- orders ---------------------------------------------------------------------------

    @staticmethod
    def _order_row(conn: sqlite3.Connection, order_id: str) -> sqlite3.Row:
        row: sqlite3.Row | None = conn.execute(
            "SELECT * FROM orders WHERE order_id = ?", (order_id.strip().upper(),)
        ).fetchone()
        if row is None:
            raise NotFoundError(f"order {order_id} not found")
        return row

    @staticmethod
    def _refunded_cents(conn: sqlite3.Connection, order_id: str) -> int:
        (cents,) = conn.execute(
            "SELECT COALESCE(SUM(amount_cents), 0) FROM refunds"
            " WHERE order_id = ? AND status != 'failed'",
            (order_id,),
        ).fetchone()
        return int(cents)

    @classmethod
    def _order_json(cls, conn: sqlite3.Connection, row: sqlite3.Row) -> JSONObject:
        items = [
            {
                "sku": i["sku"],
                "name": i["name"],
                "quantity": i["quantity"],
                "unit_price": _money(i["unit_price_cents"]),
            }
            for i in json.loads(row["items"])
        ]
        return {
            "order_id": row["order_id"],
            "customer_id": row["customer_id"],
            "status": row["status"],
            "eta": row["eta"],
            "items": items,
            "total": _money(row["total_cents"]),
            "currency": row["currency"],
            "refunded": _money(cls._refunded_cents(conn, row["order_id"])),
            "shipping_address": row["shipping_address"],
            "carrier": row["carrier"],
            "tracking_number": row["tracking_number"],
            "created_at": row["created_at"],
            "updated_at": row["updated_at"],
        }

    def get_order(self, order_id: str) -> JSONObject:
        with self._read() as conn:
            return self._order_json(conn, self._order_row(conn, order_id))

    def update_shipping_address(self, order_id: str, address: str) -> JSONObject:
        with self._write() as conn:
            row = self._order_row(conn, order_id)
            if row["status"] in ("shipped", "delivered"):
                raise ConflictError(
                    f"order {row['order_id']} has already {row['status']}; "
                    "its address can no longer change"
                )
            if row["status"] == "cancelled":
                raise ConflictError(f"order {row['order_id']} is cancelled")
            conn.execute(
                "UPDATE orders SET shipping_address = ?, updated_at = ? WHERE order_id = ?",
                (address, _now(), row["order_id"]),
            )
            return self._order_json(conn, self._order_row(conn, row["order_id"]))

    # --- refunds --------------------------------------------------------------------------

    @staticmethod
    def _refund_json(row: sqlite3.Row) -> JSONObject:
        return {
            "refund_id": f"RFD-{REFUND_ID_BASE + row['seq']}",
            "order_id": row["order_id"],
            "amount": _money(row["amount_cents"]),
            "status": row["status"],
            "created_at": row["created_at"],
        }

    def create_refund(
        self, order_id: str, amount: float | None, idempotency_key: str | None = None
    ) -> tuple[JSONObject, bool]:
        """Returns the refund and whether it is a replay of an earlier request with the same
        idempotency key (then nothing new was created)."""
        with self._write() as conn:
            row = self._order_row(conn, order_id)
            oid = row["order_id"]
            requested = None if amount is None else _cents(amount)
            fingerprint = _fingerprint({"order_id": oid, "amount_cents": requested})
            earlier = self._earlier(conn, "refunds", idempotency_key, fingerprint, "refund request")
            if earlier is not None:
                return self._refund_json(earlier), True
            total = int(row["total_cents"])
            remaining = total - self._refunded_cents(conn, oid)
            if requested is None:
                requested = remaining
                if requested <= 0:
                    raise UnprocessableError(f"order {oid} has nothing left to refund")
            elif requested <= 0:
                raise UnprocessableError("amount must be greater than 0")
            elif requested > total:
                raise UnprocessableError(
                    f"amount {_money(requested):.2f} exceeds the order total {_money(total):.2f}"
                )
            elif requested > remaining:
                raise UnprocessableError(
                    f"amount {_money(requested):.2f} exceeds the refundable balance "
                    f"{_money(max(remaining, 0)):.2f}"
                )
            cursor = conn.execute(
                "INSERT INTO refunds (order_id, amount_cents, status, idempotency_key,"
                " request_fingerprint, created_at) VALUES (?, ?, 'pending', ?, ?, ?)",
                (oid, requested, idempotency_key, fingerprint, _now()),
            )
            created = conn.execute(
                "SELECT * FROM refunds WHERE seq = ?", (cursor.lastrowid,)
            ).fetchone()
            return self._refund_json(created), False

    def _of_order(self, table: str, order_id: str) -> list[sqlite3.Row]:
        """Rows of `table` (refunds, change_requests, issues) for one order, oldest first."""
        with self._read() as conn:
            oid = self._order_row(conn, order_id)["order_id"]
            # `table` is one of ours, never input.
            query = f"SELECT * FROM {table} WHERE order_id = ? ORDER BY seq"
            return list(conn.execute(query, (oid,)))

    def list_refunds(self, order_id: str) -> list[JSONObject]:
        return [self._refund_json(r) for r in self._of_order("refunds", order_id)]

    def get_refund(self, refund_id: str) -> JSONObject:
        row = self._by_public_id("refunds", _REFUND_ID, REFUND_ID_BASE, "refund", refund_id)
        return self._refund_json(row)

    # --- cancellations, change requests, item issues ---------------------------------------

    @staticmethod
    def _past_processing(row: sqlite3.Row) -> str:
        """The start of a refusal for an order past `processing`: "order X has already shipped"."""
        oid, status = row["order_id"], row["status"]
        if status == "shipped":
            return f"order {oid} has already shipped"
        if status == "delivered":
            return f"order {oid} has already been delivered"
        return f"order {oid} is cancelled"

    def cancel_order(
        self, order_id: str, reason: str | None = None, idempotency_key: str | None = None
    ) -> tuple[JSONObject, bool]:
        """Cancels a `processing` order and refunds what is left of its total (as the seeded
        cancelled order was); returns the order and whether it is a replay (see
        `create_refund`)."""
        reason = reason or None  # "" (a blank reason, stripped) is no reason
        with self._write() as conn:
            row = self._order_row(conn, order_id)
            oid = row["order_id"]
            fingerprint = _fingerprint({"order_id": oid, "reason": reason})
            # Before the state checks: a retried cancellation finds the order cancelled.
            earlier = self._earlier(
                conn, "cancellations", idempotency_key, fingerprint, "cancellation"
            )
            if earlier is not None:
                return self._order_json(conn, row), True
            if row["status"] == "shipped":
                raise ConflictError(
                    f"{self._past_processing(row)}; it can be returned after delivery"
                )
            if row["status"] == "delivered":
                raise ConflictError(
                    f"{self._past_processing(row)}; it can no longer be cancelled, only returned"
                )
            if row["status"] == "cancelled":
                raise ConflictError(f"order {oid} is already cancelled")
            now = _now()
            conn.execute(
                "UPDATE orders SET status = 'cancelled', eta = NULL, updated_at = ?"
                " WHERE order_id = ?",
                (now, oid),
            )
            conn.execute(
                "INSERT INTO cancellations (order_id, reason, idempotency_key,"
                " request_fingerprint, created_at) VALUES (?, ?, ?, ?, ?)",
                (oid, reason, idempotency_key, fingerprint, now),
            )
            remaining = int(row["total_cents"]) - self._refunded_cents(conn, oid)
            if remaining > 0:
                conn.execute(
                    "INSERT INTO refunds (order_id, amount_cents, status, created_at)"
                    " VALUES (?, ?, 'pending', ?)",
                    (oid, remaining, now),
                )
            return self._order_json(conn, self._order_row(conn, oid)), False

    @staticmethod
    def _change_json(row: sqlite3.Row) -> JSONObject:
        return {
            "change_id": f"CHG-{CHANGE_ID_BASE + row['seq']}",
            "order_id": row["order_id"],
            "request": row["request"],
            "status": row["status"],
            "created_at": row["created_at"],
        }

    def create_change_request(
        self, order_id: str, request: str, idempotency_key: str | None = None
    ) -> tuple[JSONObject, bool]:
        """Records a `pending` change request for a `processing` order; returns it and whether
        it is a replay (see `create_refund`)."""
        with self._write() as conn:
            row = self._order_row(conn, order_id)
            oid = row["order_id"]
            fingerprint = _fingerprint({"order_id": oid, "request": request})
            earlier = self._earlier(
                conn, "change_requests", idempotency_key, fingerprint, "change request"
            )
            if earlier is not None:
                return self._change_json(earlier), True
            if row["status"] != "processing":
                raise ConflictError(f"{self._past_processing(row)}; it can no longer be changed")
            cursor = conn.execute(
                "INSERT INTO change_requests (order_id, request, status, idempotency_key,"
                " request_fingerprint, created_at) VALUES (?, ?, 'pending', ?, ?, ?)",
                (oid, request, idempotency_key, fingerprint, _now()),
            )
            created = conn.execute(
                "SELECT * FROM change_requests WHERE seq = ?", (cursor.lastrowid,)
            ).fetchone()
            return self._change_json(created), False

    def list_change_requests(self, order_id: str) -> list[JSONObject]:
        return [self._change_json(r) for r in self._of_order("change_requests", order_id)]

    def get_change_request(self, change_id: str) -> JSONObject:
        row = self._by_public_id(
            "change_requests", _CHANGE_ID, CHANGE_ID_BASE, "change request", change_id
        )
        return self._change_json(row)

    @staticmethod
    def _issue_json(row: sqlite3.Row) -> JSONObject:
        issue_id = f"ISS-{ISSUE_ID_BASE + row['seq']}"
        return {
            "issue_id": issue_id,
            "order_id": row["order_id"],
            "kind": row["kind"],
            "description": row["description"],
            "resolution": row["resolution"],
            "return_label": RETURN_LABEL_URL.format(issue_id=issue_id),
            "status": row["status"],
            "created_at": row["created_at"],
        }

    def create_issue(
        self,
        order_id: str,
        kind: IssueKind,
        description: str | None = None,
        idempotency_key: str | None = None,
    ) -> tuple[JSONObject, bool]:
        """Opens a damaged or wrong item case on a `delivered` order, resolved by a replacement
        against a return label; returns it and whether it is a replay (see `create_refund`)."""
        description = description or None
        with self._write() as conn:
            row = self._order_row(conn, order_id)
            oid = row["order_id"]
            fingerprint = _fingerprint({"order_id": oid, "kind": kind, "description": description})
            earlier = self._earlier(conn, "issues", idempotency_key, fingerprint, "issue report")
            if earlier is not None:
                return self._issue_json(earlier), True
            if row["status"] == "cancelled":
                raise ConflictError(f"order {oid} is cancelled; it was never delivered")
            if row["status"] != "delivered":
                raise ConflictError(f"order {oid} has not been delivered yet")
            cursor = conn.execute(
                "INSERT INTO issues (order_id, kind, description, resolution, status,"
                " idempotency_key, request_fingerprint, created_at)"
                " VALUES (?, ?, ?, 'replacement', 'open', ?, ?, ?)",
                (oid, kind, description, idempotency_key, fingerprint, _now()),
            )
            created = conn.execute(
                "SELECT * FROM issues WHERE seq = ?", (cursor.lastrowid,)
            ).fetchone()
            return self._issue_json(created), False

    def list_issues(self, order_id: str) -> list[JSONObject]:
        return [self._issue_json(r) for r in self._of_order("issues", order_id)]

    def get_issue(self, issue_id: str) -> JSONObject:
        row = self._by_public_id("issues", _ISSUE_ID, ISSUE_ID_BASE, "issue", issue_id)
        return self._issue_json(row)

    # --- tickets --------------------------------------------------------------------------

    @staticmethod
    def _ticket_json(row: sqlite3.Row) -> JSONObject:
        return {
            "ticket_id": f"TCK-{TICKET_ID_BASE + row['seq']}",
            "subject": row["subject"],
            "body": row["body"],
            "priority": row["priority"],
            "status": row["status"],
            "metadata": json.loads(row["metadata"]),
            "created_at": row["created_at"],
            "updated_at": row["updated_at"],
        }

    def create_ticket(
        self,
        subject: str,
        body: str,
        priority: Priority = "normal",
        metadata: JSONObject | None = None,
        idempotency_key: str | None = None,
    ) -> tuple[JSONObject, bool]:
        """Returns the ticket and whether it is a replay (see `create_refund`)."""
        metadata = metadata or {}
        fingerprint = _fingerprint(
            {"subject": subject, "body": body, "priority": priority, "metadata": metadata}
        )
        with self._write() as conn:
            earlier = self._earlier(conn, "tickets", idempotency_key, fingerprint, "ticket")
            if earlier is not None:
                return self._ticket_json(earlier), True
            now = _now()
            cursor = conn.execute(
                "INSERT INTO tickets (subject, body, priority, status, metadata, idempotency_key,"
                " request_fingerprint, created_at, updated_at)"
                " VALUES (?, ?, ?, 'open', ?, ?, ?, ?, ?)",
                (
                    subject,
                    body,
                    priority,
                    json.dumps(metadata, default=str),
                    idempotency_key,
                    fingerprint,
                    now,
                    now,
                ),
            )
            created = conn.execute(
                "SELECT * FROM tickets WHERE seq = ?", (cursor.lastrowid,)
            ).fetchone()
            return self._ticket_json(created), False

    def get_ticket(self, ticket_id: str) -> JSONObject:
        row = self._by_public_id("tickets", _TICKET_ID, TICKET_ID_BASE, "ticket", ticket_id)
        return self._ticket_json(row)

    def list_tickets(self, limit: int = 20) -> list[JSONObject]:
        """Newest first."""
        with self._read() as conn:
            rows = conn.execute("SELECT * FROM tickets ORDER BY seq DESC LIMIT ?", (limit,))
            return [self._ticket_json(r) for r in rows]
