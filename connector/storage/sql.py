"""Fast Core statements for the hot paths (processing, queueing).

Values are passed as execution parameters, never baked into the statement with
``.values(...)``: the statement then has one shape, SQLAlchemy compiles it once, and a
row costs a dict instead of a fresh statement (measured: 3-5x faster per processed order).

The writers below also keep the processor's transaction cache (``storage/txcache.py``)
in step, so a cached contact, order, checkout or journey run is never stale.
"""

from __future__ import annotations

import functools
import itertools
import operator
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

from sqlalchemy import Connection, Table, bindparam, func, select, text

from connector.storage import models as m
from connector.storage.txcache import TxCache, current

STORES: Table = m.Store.__table__  # type: ignore[assignment]
INBOX: Table = m.InboxEvent.__table__  # type: ignore[assignment]
BODIES: Table = m.InboxBody.__table__  # type: ignore[assignment]
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

# the tables the transaction cache holds rows of (by id and by natural key)
# (in foreign-key order: held INSERTs are flushed parents first)
CACHED_TABLES: dict[str, Table] = {t.name: t for t in (CONTACTS, ORDERS, CHECKOUTS, RUNS, FULFILLMENTS)}
_NEXTVALS = text("SELECT nextval(pg_get_serial_sequence(:t, 'id')) FROM generate_series(1, :n)")


@functools.cache
def _insert(table: Table) -> Any:
    return table.insert()


@functools.cache
def _insert_returning(table: Table) -> Any:
    return table.insert().returning(table.c.id)


@functools.cache
def _update(table: Table, fields: tuple[str, ...]) -> Any:
    return table.update().where(table.c.id == bindparam("_pk")).values({f: bindparam(f) for f in fields})


update_statement = _update  # UPDATE table SET fields WHERE id = :_pk, one object per shape (``execute_many`` caches its plan)


def execute_many(conn: Connection, stmt: Any, rows: Sequence[dict[str, Any]]) -> None:
    """``conn.execute(stmt, rows)`` for an INSERT or UPDATE without RETURNING whose rows share
    one set of keys (every caller here groups them so).

    On SQLite the statement is compiled once per set of keys and the rows go to the driver
    as tuples, each value through its column type's own bind processor and each missing
    column's Python default as SQLAlchemy would apply it: the same SQL and the same stored
    values, without SQLAlchemy's per-row parameter assembly, which was a fifth of the
    processor's time (bench/pipeline.py). Anything the plan does not cover goes to
    ``conn.execute`` as before.
    """
    if not rows:
        return
    plan = _plan(stmt, conn.dialect, tuple(rows[0])) if conn.dialect.name == "sqlite" else None
    if plan is None:
        conn.execute(stmt, rows)
        return
    sql_text, encode = plan
    try:
        params = [encode(row) for row in rows]
    except KeyError:  # a row without a key the first one had: let SQLAlchemy say what is wrong
        conn.execute(stmt, rows)
        return
    conn.exec_driver_sql(sql_text, params)


@functools.cache
def _plan(stmt: Any, dialect: Any, keys: tuple[str, ...]) -> tuple[str, Callable[[dict[str, Any]], tuple[Any, ...]]] | None:
    """The driver SQL and a function from a row with these keys to its ``?`` values (None: not covered)."""
    compiled = stmt.compile(dialect=dialect, column_keys=list(keys))
    if compiled.returning or compiled.postfetch or not compiled.positional or compiled.positiontup is None:
        return None
    defaults: dict[str, Any] = {}
    for col in (*compiled.insert_prefetch, *compiled.update_prefetch):
        default = col.onupdate if col in compiled.update_prefetch else col.default
        if default is None or not (default.is_scalar or default.is_callable):
            return None
        defaults[col.key] = default
    getters: list[Callable[[dict[str, Any]], Any]] = []
    positions: list[tuple[str | None, Any]] = []  # per ``?``: the row's key that fills it (None: not the row) and its processor
    for name in compiled.positiontup:
        bind = compiled.binds[name]
        if bind.expanding or bind.callable is not None:
            return None
        process = bind.type.dialect_impl(dialect).bind_processor(dialect)
        default = defaults.get(name)
        positions.append((name if name in keys else None, process))
        if name in keys:
            key = name
            getters.append((lambda r, k=key, p=process: p(r[k])) if process else operator.itemgetter(key))
        elif default is not None:
            make = (lambda d=default: d.arg) if default.is_scalar else (lambda d=default: d.arg(None))
            getters.append((lambda r, m=make, p=process: p(m())) if process else (lambda r, m=make: m()))
        elif bind.value is not None or not bind.required:
            value = process(bind.value) if process else bind.value
            getters.append(lambda r, v=value: v)
        else:
            return None
    return compiled.string, _encoder(getters, positions)


def _encoder(getters: list[Callable[[dict[str, Any]], Any]], positions: list[tuple[str | None, Any]]) -> Callable[[dict[str, Any]], tuple[Any, ...]]:
    """Every ``?`` filled from the row itself (no default, no constant): one C-level
    ``itemgetter`` picks them all, and only the columns with a bind processor are passed
    through it. Otherwise a getter per ``?``."""
    if len(positions) < 2 or any(name is None for name, _ in positions):
        return lambda row: tuple([get(row) for get in getters])
    pick = operator.itemgetter(*(name for name, _ in positions))
    fixes = [(i, process) for i, (_, process) in enumerate(positions) if process is not None]
    if not fixes:
        return pick  # type: ignore[return-value]

    def encode(row: dict[str, Any]) -> tuple[Any, ...]:
        values = list(pick(row))
        for i, process in fixes:
            values[i] = process(values[i])
        return tuple(values)
    return encode


def insert_row(conn: Connection, table: Table, row: dict[str, Any]) -> None:
    if current(conn) is not None and table.name in CACHED_TABLES:
        insert_id(conn, table, row)  # an id from the allocator, never one a held row already has
    else:
        conn.execute(_insert(table), row)


def insert_later(conn: Connection, table: Table, rows: list[dict[str, Any]], key: Any = None) -> None:
    """INSERT rows nobody reads back inside the batch: with the batch's executemany when the
    processor's transaction cache is installed, else now. ``key`` files them for ``held_later``."""
    if not rows:
        return
    cache = current(conn)
    if cache is None:
        execute_many(conn, _insert(table), rows)
    else:
        cache.hold_later(_insert(table), rows, key)


def held_later(conn: Connection, table: Table, key: Any) -> list[dict[str, Any]]:
    """The rows ``insert_later`` holds for ``table`` under ``key`` in this transaction (none
    without a cache): a lookup, not a scan of the batch's every held row."""
    cache = current(conn)
    return cache.held_later(_insert(table), key) if cache is not None else []


def insert_id(conn: Connection, table: Table, row: dict[str, Any]) -> int:
    """INSERT a row and return its id; inside a transaction cache the id is allocated here and
    the INSERT is held for ``flush``."""
    cache = current(conn)
    if cache is None or table.name not in CACHED_TABLES:
        new_id: int = conn.execute(_insert_returning(table), row).scalar_one()
        return new_id
    new_id = _next_id(conn, cache, table)
    if not cache.hold_insert(table.name, new_id, row):
        flush(conn)
        conn.execute(_insert(table), {**row, "id": new_id})
    return new_id


def _next_id(conn: Connection, cache: TxCache, table: Table) -> int:
    """Ids as the database would give them: max + 1 on SQLite (the write lock is ours for the
    whole transaction, and a rowid table without AUTOINCREMENT takes max + 1 itself), the
    table's sequence on PostgreSQL (fetched in growing blocks; an unused one is a gap)."""
    ids = cache.ids.get(table.name)
    if ids is None:
        if conn.dialect.name == "sqlite":
            ids = itertools.count((conn.execute(select(func.max(table.c.id))).scalar() or 0) + 1)
        else:
            ids = _sequence(conn, table.name)
        cache.ids[table.name] = ids
    return next(ids)


_TAKEN: dict[str, int] = {}  # table -> ids the last transaction took from its sequence


def _sequence(conn: Connection, name: str) -> Iterator[int]:
    """A batch of new rows needs about as many ids as the one before it: the first block is
    that many (16 to 512), so a steady stream of batches costs one round trip per table each,
    not 16, 32, 64... again every batch. A block's unused ids are gaps, as any sequence has."""
    block = min(max(_TAKEN.get(name, 16), 16), 512)
    taken = 0
    while True:
        for new_id in conn.execute(_NEXTVALS, {"t": name, "n": block}).scalars().all():
            taken += 1
            _TAKEN[name] = taken
            yield new_id
        block = min(block * 2, 512)


def update_by_id(conn: Connection, table: Table, row_id: int, values: dict[str, Any]) -> None:
    """UPDATE one row; inside a transaction cache a cached row is updated in memory and written
    by ``flush`` (all of a row's changes in one UPDATE, or in its INSERT)."""
    if not values:
        return
    cache = current(conn)
    if cache is not None and table.name in CACHED_TABLES:
        if cache.hold_update(table.name, row_id, values):
            return
        flush(conn)  # the row may be held: its INSERT and earlier changes go first
    conn.execute(_update(table, tuple(sorted(values))), {"_pk": row_id, **values})
    if cache is not None:
        if table.name in CACHED_TABLES:
            cache.updated(table.name, row_id, values)
        elif table is OUTBOX:
            cache.history.clear()  # a status moved: what counts as sent may have changed


def update_by_ids(conn: Connection, table: Table, changes: Iterable[tuple[int, dict[str, Any]]]) -> None:
    """``update_by_id`` for many rows: inside a transaction cache each as it does (a cached row in memory, written
    by ``flush``); without one, one executemany per set of columns, in id order."""
    changes = [(row_id, values) for row_id, values in changes if values]
    if current(conn) is not None:
        for row_id, values in changes:
            update_by_id(conn, table, row_id, values)
        return
    for fields, rows in _shapes({"_pk": row_id, **values} for row_id, values in sorted(changes, key=lambda c: c[0])).items():
        execute_many(conn, _update(table, tuple(f for f in fields if f != "_pk")), rows)


def flush(conn: Connection) -> None:
    """Write the transaction cache's held-back writes: the cached tables' INSERTs (parents
    first), their UPDATEs (rows in id order, so concurrent workers lock rows in the same
    order), each as one executemany per set of columns; then the other INSERTs in the order
    they were first queued (each table's rows in queue order, so their ids are too)."""
    cache = current(conn)
    if cache is None or not cache.has_held():
        return
    deferred, cache.deferred = cache.deferred, {}
    for run, items in deferred.values():
        run(conn, items)
    for name, table in CACHED_TABLES.items():
        for rows in _shapes(row for _, row in sorted(cache.held[name].items())).values():
            execute_many(conn, _insert(table), rows)
        cache.held[name].clear()
    for name, table in CACHED_TABLES.items():
        for fields, rows in _shapes({"_pk": row_id, **values} for row_id, values in sorted(cache.dirty[name].items())).items():
            execute_many(conn, _update(table, tuple(f for f in fields if f != "_pk")), rows)
        cache.dirty[name].clear()
    for stmt, rows in cache.take_later().items():
        for run in _runs_of_one_shape(rows):
            execute_many(conn, stmt, run)


def _runs_of_one_shape(rows: list[dict[str, Any]]) -> Iterator[list[dict[str, Any]]]:
    """Consecutive rows with the same keys, in order (ids keep the queue's order)."""
    for _, run in itertools.groupby(rows, key=lambda row: row.keys()):
        yield list(run)


def _shapes(rows: Iterable[dict[str, Any]]) -> dict[tuple[str, ...], list[dict[str, Any]]]:
    """Rows grouped by their set of columns: one executemany each."""
    out: dict[tuple[str, ...], list[dict[str, Any]]] = {}
    for row in rows:
        out.setdefault(tuple(sorted(row)), []).append(row)
    return out
