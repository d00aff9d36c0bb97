"""A row cache that lives for one processing transaction.

Why: for one event the state code, the journey facts and the policy gate look up the same
contact, order, checkout and journey run several times, and every lookup is a statement
(about 80 µs of SQLAlchemy each, far more than SQLite's own work). The processor installs
a cache on its connection for one batch, loads the batch's rows with a few ``IN`` queries,
and the lookups below are answered from memory.

Correctness rests on these rules:

* every write to a cached table goes through ``storage/sql.py``, which updates the cached
  row the way the database would store it (aware UTC datetimes, JSON round-tripped); a
  value the cache cannot reproduce exactly (a ``Numeric`` with another scale) is written
  at once and evicts the row instead, so the next lookup reads it;
* a key is recorded as absent only from a query that would have returned it;
* the cache is dropped whenever the transaction (or a savepoint in it) rolls back, and is
  never installed around code that writes these tables behind its back (privacy requests).

It also holds writes back, to send them as a few executemany statements: INSERTs of the
cached tables (with ids allocated up front, so callers still get an id at once), UPDATEs
of cached rows (coalesced per row, or folded into the row's held INSERT), and INSERTs
nobody reads inside the batch (consent history, order lines, outbox rows).
``storage.sql.flush`` writes them; it runs when the batch ends and before any query that
could miss a held-back write. A conflict that only shows at the flush (another worker
inserted the same contact or run) fails the batch, which the processor then redoes row
by row without the cache.

Without an installed cache, ``current(conn)`` is None and callers query as before.
"""

from __future__ import annotations

import contextlib
import functools
import operator
from collections.abc import Callable, Iterator, Mapping
from datetime import datetime, timezone
from decimal import Decimal
from typing import Any

from sqlalchemy import JSON, Connection, Numeric, Row, Table

from connector.storage import jsoncodec
from connector.contacts import email_key
from connector.storage.models import UTCDateTime

EVICT = object()

# table -> the columns of the natural key (after store_id) lookups use
NATURAL_KEYS: dict[str, tuple[str, ...]] = {
    "contacts": ("store_id", "phone_key"),
    "orders": ("store_id", "external_id"),
    "checkouts": ("store_id", "token"),
    "journey_runs": ("store_id", "journey", "subject"),
    "fulfillments": ("store_id", "external_id"),
}


class CachedRow(dict[str, Any]):
    """A row as the database would return it, readable like a SQLAlchemy ``Row`` (``row.col``).

    The cache makes one subclass per table (``_row_class``) whose columns are properties
    reading the dict in C. Through ``__getattr__`` alone the column reads were 7% of the
    processor's instructions: Python 3.11 tries the normal lookup first and builds, formats
    and drops an AttributeError for every one before it calls ``__getattr__``.
    """

    __slots__ = ()

    def __getattr__(self, name: str) -> Any:
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None


@functools.cache
def _row_class(table: Table) -> type[CachedRow]:
    """``CachedRow`` with a read-only property per column of ``table`` (but none that would hide a dict method)."""
    columns = {c.name: property(operator.itemgetter(c.name)) for c in table.columns if not hasattr(dict, c.name)}
    return type(f"CachedRow[{table.name}]", (CachedRow,), {"__slots__": (), **columns})


_PLAIN_JSON = (str, int, float, bool)


def _json_copy(value: Any) -> Any:
    """What a JSON column gives back for ``value`` (a fresh copy; tuples become lists)."""
    kind = type(value)
    if kind in _PLAIN_JSON or value is None:
        return value
    if kind is dict and all(type(k) is str for k in value):
        return {k: _json_copy(v) for k, v in value.items()}
    if kind is list or kind is tuple:
        return [_json_copy(v) for v in value]
    return jsoncodec.loads(jsoncodec.dumps(value))  # anything else: as the column's codec does


def _kind(column: Any) -> Any:
    """How a column's value reads back: a function of the written value (EVICT: not known here)."""
    kind = column.type
    if isinstance(kind, UTCDateTime):
        return lambda v: v.astimezone(timezone.utc) if isinstance(v, datetime) else EVICT
    if isinstance(kind, JSON):
        return _json_copy
    if isinstance(kind, Numeric):
        scale = kind.scale

        def numeric(v: Any) -> Any:
            if isinstance(v, Decimal) and scale is not None and v.is_finite() and v.as_tuple().exponent == -scale:
                return v
            return EVICT
        return numeric
    return None  # as written


def _stored(kind: Any, value: Any) -> Any:
    """``value`` as reading it back would give it, or EVICT when that cannot be known here."""
    if value is None or kind is None:
        return value
    return kind(value)


@functools.lru_cache(maxsize=512)  # bounded: statements built on the fly bring new metadata
def _keys_of(metadata: Any) -> tuple[str, ...]:
    return tuple(metadata.keys)


def _items(row: Any) -> Any:
    """A row's (key, value) pairs. For a SQLAlchemy ``Row`` the keys come from its result's
    metadata, which a cached statement shares across executions: zipping them with the row
    is about four times faster than ``dict(row._mapping)``, which the timers and the batch
    prefetches did for every row they loaded."""
    return zip(_keys_of(row._parent), row) if isinstance(row, Row) else row


class TxCache:
    """Rows of the cached tables by id, natural keys to ids (None: no such row), send histories."""

    def __init__(self, tables: Mapping[str, Table]):
        self.tables = dict(tables)
        self.kinds = {name: _kinds(t) for name, t in tables.items()}
        self.defaults = {name: _defaults(t) for name, t in tables.items()}
        self.rows: dict[str, dict[int, CachedRow]] = {name: {} for name in tables}
        self.row_types = {name: _row_class(t) for name, t in tables.items()}
        self.keys: dict[tuple[Any, ...], int | None] = {}
        # (store_id, contact_id) whose every active journey run is in rows["journey_runs"]
        self.active_runs_known: set[tuple[int, int]] = set()
        self.history: dict[tuple[int, datetime], Any] = {}
        # held-back writes: table -> id -> row to insert / column values to update; statement -> rows to insert
        self.held: dict[str, dict[int, dict[str, Any]]] = {name: {} for name in tables}
        self.dirty: dict[str, dict[int, dict[str, Any]]] = {name: {} for name in tables}
        self.later: dict[Any, list[dict[str, Any]]] = {}
        # statement -> a caller's key -> its rows held in ``later`` (outbox: (store_id, idempotency key)),
        # so a held row is found without scanning the batch's every held row
        self.later_keys: dict[Any, dict[Any, list[dict[str, Any]]]] = {}
        # statements that read or change rows already in the database, gathered per kind and run
        # once at the start of the next ``flush`` (before that flush's held INSERTs): kind -> (run, items)
        self.deferred: dict[str, tuple[Callable[[Connection, list[Any]], None], list[Any]]] = {}
        self.ids: dict[str, Iterator[int]] = {}  # ids allocated for held INSERTs, per table
        self._emails: dict[str, set[int]] = {}  # contacts by email key, as they were cached (candidates)
        self._customers: dict[str, set[int]] = {}  # contacts by the platform's customer id (candidates)
        # (column, store_id, key) whose every stored contact was loaded (rows.prefetch_contacts):
        # then ``matching_contacts`` answers alone; void once a contact is written past the cache
        self.loaded: set[tuple[str, int, str]] = set()
        self._runs: dict[tuple[int, int], set[int]] = {}  # journey runs by (store_id, contact_id)
        self._order_tokens: dict[tuple[int, str], set[int]] = {}  # orders by (store_id, checkout_token) (candidates)
        # the batch's inbox rows applied so far, by (store_id, subject): (row id, its events). Their outcome (subject,
        # events) is written when the batch ends; a later row of the batch finds them here, as it finds an earlier
        # batch's rows by their stored subject (``applied_rows``)
        self._applied: dict[tuple[int, str], list[tuple[int, Any]]] = {}

    # ---- reads -------------------------------------------------------------------------------
    def lookup(self, key: tuple[Any, ...]) -> tuple[bool, CachedRow | None]:
        """(known, row): known is False when the database has to be asked."""
        if key not in self.keys:
            return False, None
        row_id = self.keys[key]
        if row_id is None:
            return True, None
        row = self.rows[key[0]].get(row_id)
        return (row is not None), row

    def get(self, table: str, row_id: int) -> CachedRow | None:
        return self.rows[table].get(row_id)

    # ---- filling ------------------------------------------------------------------------------
    def put(self, table: str, row: Any) -> CachedRow:
        """Remember a row just read (a SQLAlchemy Row or a mapping); a cached copy wins."""
        cached = self.row_types[table](_items(row))
        current = self.rows[table].get(cached["id"])
        if current is not None:
            return current
        self.rows[table][cached["id"]] = cached
        self.keys[self._key(table, cached)] = cached["id"]
        self._note_secondary_keys(table, cached["id"], cached)
        return cached

    def contacts_by_email(self, key: str) -> set[int]:
        """Ids of cached contacts that had this email key (trimmed, lower case) when cached or
        changed in this transaction: candidates, so a caller re-checks each row's email."""
        return self._emails.get(key, set())

    def matching_contacts(self, column: str, store_id: int, key: str) -> list[CachedRow]:
        """The cached contacts of a store whose ``email`` (``key`` as ``email_key`` gives it) or
        ``external_customer_id`` is ``key`` now, in id order. All of them, held INSERTs included,
        once ``(column, store_id, key)`` is in ``loaded``."""
        if column == "email":
            ids, same = self._emails.get(key, ()), (lambda r: email_key(r.get("email")) == key)
        else:
            ids, same = self._customers.get(key, ()), (lambda r: r.get("external_customer_id") == key)
        rows = (self.rows["contacts"].get(i) for i in ids)
        return sorted((r for r in rows if r is not None and r["store_id"] == store_id and same(r)), key=lambda r: r["id"])

    def runs_of_contact(self, store_id: int, contact_id: int) -> list[CachedRow]:
        """The cached journey runs of a contact, in id order. A run moved to another contact
        (``engine.Rehome``) stays filed under its old one too: its current contact decides."""
        runs = self.rows["journey_runs"]
        return [runs[i] for i in sorted(self._runs.get((store_id, contact_id), ())) if i in runs and runs[i]["contact_id"] == contact_id]

    def orders_of_checkout(self, store_id: int, token: str) -> list[CachedRow]:
        """The cached orders of a store that name this checkout now; all of them, held INSERTs
        included, once ``("checkout_token", store_id, token)`` is in ``loaded`` (``rows.prefetch``)."""
        rows = (self.rows["orders"].get(i) for i in self._order_tokens.get((store_id, token), ()))
        return [r for r in rows if r is not None and r["store_id"] == store_id and r["checkout_token"] == token]

    def _note_secondary_keys(self, table: str, row_id: int, values: Mapping[str, Any]) -> None:
        if table == "orders":
            if values.get("checkout_token") and values.get("store_id") is not None:
                self._order_tokens.setdefault((values["store_id"], values["checkout_token"]), set()).add(row_id)
            return
        if table == "journey_runs":
            if values.get("contact_id") is not None:  # an UPDATE of the contact (``engine.Rehome``) carries no store_id
                store_id = values["store_id"] if "store_id" in values else self.rows[table][row_id]["store_id"]
                self._runs.setdefault((store_id, values["contact_id"]), set()).add(row_id)
            return
        if table != "contacts":
            return
        if values.get("email"):
            key = email_key(values["email"])
            if key is not None:
                self._emails.setdefault(key, set()).add(row_id)
        if values.get("external_customer_id"):
            self._customers.setdefault(values["external_customer_id"], set()).add(row_id)

    def absent(self, key: tuple[Any, ...]) -> None:
        """The database has no row under this key (from a query that would have found it)."""
        self.keys.setdefault(key, None)

    # ---- write-through ----------------------------------------------------------------------
    def hold_insert(self, table: str, row_id: int, values: Mapping[str, Any]) -> bool:
        """Cache a new row and hold its INSERT for ``flush``; False if the row cannot be cached."""
        if not self.inserted(table, row_id, values):
            return False
        self.held[table][row_id] = {**values, "id": row_id}
        return True

    def inserted(self, table: str, row_id: int, values: Mapping[str, Any]) -> bool:
        """A row was inserted with these values; columns not given take their scalar defaults."""
        defaults, unknown = self.defaults[table]
        kinds = self.kinds[table]
        row = self.row_types[table](defaults)
        row["id"] = row_id
        for name, value in values.items():
            value = _stored(kinds[name], value)
            if value is EVICT:
                break
            row[name] = value
        else:
            if unknown <= values.keys():
                self.rows[table][row_id] = row
                self.keys[self._key(table, row)] = row_id
                self._note_secondary_keys(table, row_id, row)
                if table == "contacts":  # a contact new in this transaction has no runs but the ones written through
                    self.active_runs_known.add((row["store_id"], row_id))
                return True
        self.forget(table, values)
        return False

    def hold_update(self, table: str, row_id: int, values: Mapping[str, Any]) -> bool:
        """Apply an UPDATE to the cached row and hold it back for ``flush`` (folded into the row's
        held INSERT if it has one); False if the row is not cached or a value cannot be
        reproduced (then the caller flushes and writes it now)."""
        row = self.rows[table].get(row_id)
        new = self._as_stored(table, values) if row is not None else None
        if row is None or new is None:
            return False
        row.update(new)
        self._note_secondary_keys(table, row_id, new)
        pending = self.held[table].get(row_id)
        if pending is None:
            pending = self.dirty[table].setdefault(row_id, {})
        pending.update(new)  # copies: a caller's later change cannot leak in
        return True

    def updates_column(self, table: str, column: str) -> bool:
        """Whether a held-back UPDATE of a stored row of ``table`` changes ``column``."""
        return any(column in values for values in self.dirty[table].values())

    def applied_rows(self, store_id: int, subject: str) -> list[tuple[int, Any]]:
        """The batch's inbox rows applied so far with this subject, as (row id, events), oldest first."""
        return self._applied.get((store_id, subject), [])

    def applied(self, store_id: int, subject: str | None, row_id: int, events: Any) -> None:
        """The processor applied this inbox row; its outcome names ``subject`` (written when the batch ends)."""
        if subject:
            self._applied.setdefault((store_id, subject), []).append((row_id, events))

    def held_rows(self, table: str) -> list[CachedRow]:
        """The cached rows of ``table`` whose INSERT is held back."""
        return [self.rows[table][row_id] for row_id in self.held[table]]

    def hold_later(self, stmt: Any, rows: list[dict[str, Any]], key: Any = None) -> None:
        """Hold rows for one executemany of ``stmt`` at the next flush; ``key`` files them for
        ``held_later`` (a lookup instead of a scan of every row the batch holds)."""
        self.later.setdefault(stmt, []).extend(rows)
        if key is not None:
            self.later_keys.setdefault(stmt, {}).setdefault(key, []).extend(rows)

    def held_later(self, stmt: Any, key: Any) -> list[dict[str, Any]]:
        """The rows held for ``stmt`` under ``key`` (the same dicts: a change to one is what is written)."""
        return self.later_keys.get(stmt, {}).get(key, [])

    def take_later(self) -> dict[Any, list[dict[str, Any]]]:
        """The held rows per statement, for the flush that writes them; none are held after."""
        later, self.later, self.later_keys = self.later, {}, {}
        return later

    def has_held(self) -> bool:
        return bool(self.later) or bool(self.deferred) or any(self.dirty.values()) or any(self.held.values())

    def defer(self, kind: str, run: Callable[[Connection, list[Any]], None], item: Any) -> None:
        """Gather ``item`` for one ``run(conn, items)`` at the next flush, before its held INSERTs:
        many small statements of one kind become one, and rows inserted after the request
        (held now, written by that flush) are out of its reach, as they would be if it ran now."""
        self.deferred.setdefault(kind, (run, []))[1].append(item)

    def updated(self, table: str, row_id: int, values: Mapping[str, Any]) -> None:
        if table == "contacts":  # written past the cache: an email or customer id may now match what was loaded
            self.loaded.clear()
        row = self.rows[table].get(row_id)
        if row is None:
            return
        new = self._as_stored(table, values)
        if new is None:
            self.evict(table, row_id)
            return
        row.update(new)
        self._note_secondary_keys(table, row_id, new)

    def _as_stored(self, table: str, values: Mapping[str, Any]) -> dict[str, Any] | None:
        """``values`` as the database would give them back; None when the cache cannot say
        (a value it cannot reproduce, or a change of the row's natural key)."""
        natural = NATURAL_KEYS[table]
        kinds = self.kinds[table]
        new: dict[str, Any] = {}
        for name, value in values.items():
            stored = _stored(kinds[name], value)
            if stored is EVICT or name in natural:
                return None
            new[name] = stored
        return new

    def forget(self, table: str, values: Mapping[str, Any]) -> None:
        """A row was written without its id: whatever the cache knew under its key is void."""
        if table == "contacts":
            self.loaded.clear()
        key = (table, *(values[c] for c in NATURAL_KEYS[table]))  # every natural key column is NOT NULL
        row_id = self.keys.pop(key, None)
        if row_id is not None:
            self.evict(table, row_id)

    def evict(self, table: str, row_id: int) -> None:
        assert row_id not in self.dirty[table] and row_id not in self.held[table], "flush held-back writes before evicting their row"
        if table == "contacts":  # its email and customer id are no longer known here
            self.loaded.clear()
        row = self.rows[table].pop(row_id, None)
        if row is not None:
            self.keys.pop(self._key(table, row), None)
        if table == "journey_runs":
            self.active_runs_known.clear()

    @staticmethod
    def _key(table: str, row: Mapping[str, Any]) -> tuple[Any, ...]:
        return (table, *(row[c] for c in NATURAL_KEYS[table]))


@functools.cache
def _kinds(table: Table) -> dict[str, Any]:
    """Per column: how a written value reads back (see ``_kind``)."""
    return {col.name: _kind(col) for col in table.columns}


@functools.cache
def _defaults(table: Table) -> tuple[dict[str, Any], frozenset[str]]:
    """What an omitted column reads back as, and the columns whose default is not known here
    (a callable or server-side one: an INSERT without them is not cached)."""
    known: dict[str, Any] = {}
    unknown: set[str] = set()
    for col in table.columns:
        if col.name == "id":
            continue
        value = EVICT  # a callable or server-side default: not known here
        if col.default is not None and col.default.is_scalar:
            value = _stored(_kind(col), col.default.arg)
        elif col.default is None and col.server_default is None:
            value = None
        if value is EVICT:
            unknown.add(col.name)
        else:
            known[col.name] = value
    return known, frozenset(unknown)


# id(Connection) -> its installed cache. Not ``conn.info`` (the pooled DBAPI connection's
# dict): ``current`` runs a score of times per processed event, and the three properties
# behind ``conn.info`` cost more than the rest of it. The entry lives exactly as long as
# the ``with`` block that installed it, on that Connection object.
_INSTALLED: dict[int, TxCache] = {}


def current(conn: Connection) -> TxCache | None:
    """The cache of the transaction running on ``conn``, if the processor installed one."""
    return _INSTALLED.get(id(conn)) if _INSTALLED else None


@contextlib.contextmanager
def installed(conn: Connection) -> Iterator[TxCache]:
    """Cache rows on ``conn`` for the ``with`` block (one transaction, or one savepoint in it)."""
    from connector.storage.sql import CACHED_TABLES

    cache = TxCache(CACHED_TABLES)
    _INSTALLED[id(conn)] = cache
    try:
        yield cache
    finally:
        _INSTALLED.pop(id(conn), None)  # held-back writes not flushed by now belong to a rollback


def by_key(conn: Connection, table: str, key: tuple[Any, ...], stmt: Any, params: Mapping[str, Any]) -> Any:
    """The row under a natural key: from the cache, else ``stmt`` (which selects the whole row by that key)."""
    cache = current(conn)
    if cache is not None:
        known, row = cache.lookup((table, *key))
        if known:
            return row
    found = conn.execute(stmt, params).first()
    if cache is None:
        return found
    if found is None:
        cache.absent((table, *key))
        return None
    return cache.put(table, found)


def by_id(conn: Connection, table: str, row_id: int, stmt: Any, params: Mapping[str, Any]) -> Any:
    """The row with this id: from the cache, else ``stmt`` (which selects the whole row by id)."""
    cache = current(conn)
    if cache is not None:
        row = cache.get(table, row_id)
        if row is not None:
            return row
    found = conn.execute(stmt, params).first()
    return cache.put(table, found) if cache is not None and found is not None else found
