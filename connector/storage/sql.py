"""Fast Core statements for the hot paths (processing, queueing).

Values are passed as execution parameters, never baked into the statement with
``.values(...)``: the statement then has one shape, SQLAlchemy compiles it once, and a
row costs a dict instead of a fresh statement (measured: 3-5x faster per processed order).
"""

from __future__ import annotations

import functools
from typing import Any

from sqlalchemy import Connection, Table, bindparam

from connector.storage import models as m

STORES: Table = m.Store.__table__  # type: ignore[assignment]
INBOX: Table = m.InboxEvent.__table__  # type: ignore[assignment]
CONTACTS: Table = m.Contact.__table__  # type: ignore[assignment]
CONSENT: Table = m.ConsentChange.__table__  # type: ignore[assignment]
ORDERS: Table = m.Order.__table__  # type: ignore[assignment]
LINES: Table = m.OrderLine.__table__  # type: ignore[assignment]
CHECKOUTS: Table = m.Checkout.__table__  # type: ignore[assignment]
FULFILLMENTS: Table = m.Fulfillment.__table__  # type: ignore[assignment]
MESSAGES: Table = m.Message.__table__  # type: ignore[assignment]
OUTBOX: Table = m.OutboxMessage.__table__  # type: ignore[assignment]
ATTEMPTS: Table = m.OutboxAttempt.__table__  # type: ignore[assignment]
RUNS: Table = m.JourneyRun.__table__  # type: ignore[assignment]
HANDOFFS: Table = m.Handoff.__table__  # type: ignore[assignment]
LEASES: Table = m.Lease.__table__  # type: ignore[assignment]


@functools.cache
def _insert(table: Table) -> Any:
    return table.insert()


@functools.cache
def _insert_returning(table: Table) -> Any:
    return table.insert().returning(table.c.id)


@functools.cache
def _update(table: Table, fields: tuple[str, ...]) -> Any:
    return table.update().where(table.c.id == bindparam("_pk")).values({f: bindparam(f) for f in fields})


def insert_row(conn: Connection, table: Table, row: dict[str, Any]) -> None:
    conn.execute(_insert(table), row)


def insert_id(conn: Connection, table: Table, row: dict[str, Any]) -> int:
    return conn.execute(_insert_returning(table), row).scalar_one()


def update_by_id(conn: Connection, table: Table, row_id: int, values: dict[str, Any]) -> None:
    if values:
        conn.execute(_update(table, tuple(sorted(values))), {"_pk": row_id, **values})

