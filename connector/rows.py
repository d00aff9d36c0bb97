"""Whole-row lookups of contacts, orders, checkouts and fulfilments, and a batch's prefetch of them.

They go through the processor's transaction cache (``storage/txcache.py``) when one is
installed, so the state code, the journey facts and the policy gate share one read of
each row per batch; without it they query as before.
"""

from __future__ import annotations

from collections.abc import Collection
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, bindparam, func, select

from connector import events as ev
from connector.contacts import email_key
from connector.storage.sql import CHECKOUTS, CONTACTS, FULFILLMENTS, ORDERS, flush
from connector.storage.txcache import by_id, by_key, current


def phone_key(phone: ev.Phone) -> str:
    return phone.e164 or f"raw:{phone.raw}"[:80]


# prebuilt (see storage/sql.py), and whole rows, so the transaction cache can answer the next lookup
_CONTACT_BY_PHONE = select(CONTACTS).where(CONTACTS.c.store_id == bindparam("sid"), CONTACTS.c.phone_key == bindparam("key"))
_CONTACT_BY_ID = select(CONTACTS).where(CONTACTS.c.id == bindparam("cid"))
_ORDER_BY_ID = select(ORDERS).where(ORDERS.c.store_id == bindparam("sid"), ORDERS.c.external_id == bindparam("oid"))
_FULFILLMENT_BY_ID = select(FULFILLMENTS).where(FULFILLMENTS.c.store_id == bindparam("sid"), FULFILLMENTS.c.external_id == bindparam("fid"))
_FULFILLMENTS_BY_IDS = select(FULFILLMENTS).where(FULFILLMENTS.c.store_id == bindparam("sid"),
                                                  FULFILLMENTS.c.external_id.in_(bindparam("ids", expanding=True)))
_CHECKOUT_BY_TOKEN = select(CHECKOUTS).where(CHECKOUTS.c.store_id == bindparam("sid"), CHECKOUTS.c.token == bindparam("token"))
_CONTACT_BY = {c.name: select(CONTACTS).where(CONTACTS.c.store_id == bindparam("sid"), c == bindparam("v"))
               for c in (CONTACTS.c.wa_id, CONTACTS.c.external_customer_id)}
_CONTACTS_BY_PHONES = select(CONTACTS).where(CONTACTS.c.store_id == bindparam("sid"), CONTACTS.c.phone_key.in_(bindparam("keys", expanding=True)))
_ORDERS_BY_IDS = select(ORDERS).where(ORDERS.c.store_id == bindparam("sid"), ORDERS.c.external_id.in_(bindparam("ids", expanding=True)))
_ORDERS_BY_CHECKOUTS = select(ORDERS).where(  # the (store_id, checkout_token) index
    ORDERS.c.store_id == bindparam("sid"), ORDERS.c.checkout_token.in_(bindparam("tokens", expanding=True)))
_ORDERS_BY_CHECKOUT = select(ORDERS).where(ORDERS.c.store_id == bindparam("sid"), ORDERS.c.checkout_token == bindparam("token"))
_CHECKOUTS_BY_TOKENS = select(CHECKOUTS).where(
    CHECKOUTS.c.store_id == bindparam("sid"), CHECKOUTS.c.token.in_(bindparam("tokens", expanding=True)))


# Rows a payload may change (orders, checkouts, fulfilments) are read locked on PostgreSQL, as
# their UPDATE would lock them (FOR NO KEY UPDATE), in id order: another worker whose batch has
# the same order waits for this transaction, then reads what it wrote. Read without the lock,
# both saw the old row, both passed the stale check (``state.apply_order``), and the older
# payload, written last, overwrote the newer. SQLite needs none: our transactions hold its one
# write lock from their first statement.
def _for_update(stmt: Any, table: Any) -> Any:
    return stmt.order_by(table.c.id).with_for_update(key_share=True)


_ORDER_BY_ID_LOCKED = _for_update(_ORDER_BY_ID, ORDERS)
_CHECKOUT_BY_TOKEN_LOCKED = _for_update(_CHECKOUT_BY_TOKEN, CHECKOUTS)
_FULFILLMENT_BY_ID_LOCKED = _for_update(_FULFILLMENT_BY_ID, FULFILLMENTS)
# a batch's prefetch: (table, statement, its parameter), unlocked and locked
_PREFETCH = (("contacts", _CONTACTS_BY_PHONES, "keys"), ("orders", _ORDERS_BY_IDS, "ids"),
             ("checkouts", _CHECKOUTS_BY_TOKENS, "tokens"), ("fulfillments", _FULFILLMENTS_BY_IDS, "ids"))
_PREFETCH_LOCKED = (("contacts", _CONTACTS_BY_PHONES, "keys"), ("orders", _for_update(_ORDERS_BY_IDS, ORDERS), "ids"),
                    ("checkouts", _for_update(_CHECKOUTS_BY_TOKENS, CHECKOUTS), "tokens"),
                    ("fulfillments", _for_update(_FULFILLMENTS_BY_IDS, FULFILLMENTS), "ids"))
_CONTACTS_BY_MANY = {  # the (store_id, lower(trim(email))) and (store_id, external_customer_id) indexes
    "email": select(CONTACTS).where(
        CONTACTS.c.store_id == bindparam("sid"), func.lower(func.trim(CONTACTS.c.email)).in_(bindparam("keys", expanding=True))),
    "external_customer_id": select(CONTACTS).where(
        CONTACTS.c.store_id == bindparam("sid"), CONTACTS.c.external_customer_id.in_(bindparam("keys", expanding=True))),
}


def contact_row(conn: Connection, contact_id: int) -> Any:
    """The whole contact row (from the transaction cache when the processor installed one)."""
    return by_id(conn, "contacts", contact_id, _CONTACT_BY_ID, {"cid": contact_id})


def contact_by_phone(conn: Connection, store_id: int, phone: ev.Phone) -> Any:
    """The whole contact row for a phone, or None."""
    key = phone_key(phone)
    return by_key(conn, "contacts", (store_id, key), _CONTACT_BY_PHONE, {"sid": store_id, "key": key})


def _locks(conn: Connection) -> bool:
    return conn.dialect.name != "sqlite"


def order_row(conn: Connection, store_id: int, external_id: str, *, for_update: bool = False) -> Any:
    """The whole order row by its platform id, or None; ``for_update``: read locked on PostgreSQL
    (a payload is about to be compared with it and written: see ``_for_update``)."""
    stmt = _ORDER_BY_ID_LOCKED if for_update and _locks(conn) else _ORDER_BY_ID
    return by_key(conn, "orders", (store_id, external_id), stmt, {"sid": store_id, "oid": external_id})


def fulfillment_row(conn: Connection, store_id: int, external_id: str, *, for_update: bool = False) -> Any:
    """The whole fulfilment row by its platform id, or None (``for_update``: as for ``order_row``)."""
    stmt = _FULFILLMENT_BY_ID_LOCKED if for_update and _locks(conn) else _FULFILLMENT_BY_ID
    return by_key(conn, "fulfillments", (store_id, external_id), stmt, {"sid": store_id, "fid": external_id})


def checkout_row(conn: Connection, store_id: int, token: str, *, for_update: bool = False) -> Any:
    stmt = _CHECKOUT_BY_TOKEN_LOCKED if for_update and _locks(conn) else _CHECKOUT_BY_TOKEN
    return by_key(conn, "checkouts", (store_id, token), stmt, {"sid": store_id, "token": token})


def keys_of(event: ev.Event) -> tuple[list[str], list[str], list[str]]:
    """The contacts (phone keys), orders and checkouts ``apply_event`` will look up for an event."""
    match event:
        case ev.OrderPlaced() | ev.OrderUpdated() | ev.OrderPaid() | ev.OrderCancelled() | ev.OrderFulfilled():
            o = event.order
            phone = o.customer.phone
            return ([phone_key(phone)] if phone else [], [o.external_id], [o.checkout_token] if o.checkout_token else [])
        case ev.CheckoutUpdated(checkout=c):
            phones = [phone_key(p) for p in (c.customer.phone, c.marketing_phone if c.accepts_marketing else None) if p is not None]
            return (phones, [], [c.token])
        case ev.FulfillmentUpdated(fulfillment=f):
            return [], [f.order_external_id], []
        case ev.OrderDeleted(order_external_id=oid):
            return [], [oid], []
        case ev.CustomerUpdated() | ev.ConsentChanged() | ev.MessageReceived() | ev.ButtonReplied() | ev.MarketingPreferenceChanged():
            phone = event.customer.phone if isinstance(event, ev.CustomerUpdated) else event.phone
            return [phone_key(phone)] if phone else [], [], []
    return [], [], []


def fulfillment_keys_of(event: ev.Event) -> list[str]:
    """The fulfilments ``apply_event`` will look up for an event (every order update of a shipped
    Shopify order lists its fulfilments: read with the batch, not one query each)."""
    return [event.fulfillment.external_id] if isinstance(event, ev.FulfillmentUpdated) else []


def prefetch(conn: Connection, store_id: int, phone_keys: set[str], order_ids: set[str], tokens: set[str],
             fulfillment_ids: Collection[str] = ()) -> None:
    """Load a batch's contacts, orders, checkouts and fulfilments into the transaction cache: a query
    per table instead of one per lookup. On PostgreSQL the orders, checkouts and fulfilments are
    read locked (``_for_update``): call it for the batch's stores in store order, before the batch
    writes anything, so workers take these locks in one order."""
    cache = current(conn)
    if cache is None:
        return
    for (table, stmt, param), keys in zip(_PREFETCH_LOCKED if _locks(conn) else _PREFETCH,
                                          (phone_keys, order_ids, tokens, fulfillment_ids)):
        todo = sorted(k for k in keys if not cache.lookup((table, store_id, k))[0])
        if not todo:
            continue
        for row in conn.execute(stmt, {"sid": store_id, param: todo}):
            cache.put(table, row)
        for k in todo:
            cache.absent((table, store_id, k))
    todo = sorted(t for t in tokens if ("checkout_token", store_id, t) not in cache.loaded)
    if todo:  # the orders that name the batch's checkouts (a checkout heard after its order)
        for row in conn.execute(_ORDERS_BY_CHECKOUTS, {"sid": store_id, "tokens": todo}):
            cache.put("orders", row)
        cache.loaded.update(("checkout_token", store_id, t) for t in todo)


def checkout_ordered_at(conn: Connection, store_id: int, token: str) -> datetime | None:
    """When the first order of the store that names this checkout was placed; None if none has.
    From the batch's prefetch when it loaded the token (orders written in the batch included)."""
    cache = current(conn)
    if cache is None:
        rows = conn.execute(_ORDERS_BY_CHECKOUT, {"sid": store_id, "token": token}).all()
    else:
        if ("checkout_token", store_id, token) not in cache.loaded:  # not prefetched, or the mark was cleared
            for row in conn.execute(_ORDERS_BY_CHECKOUT, {"sid": store_id, "token": token}):
                cache.put("orders", row)
        rows = cache.orders_of_checkout(store_id, token)  # the stored ones and those the batch holds back
    times = [r.placed_at for r in rows]
    return min(times) if times else None


def contact_keys_of(event: ev.Event) -> tuple[list[str], list[str]]:
    """The email keys and platform customer ids ``state.upsert_contact`` looks a customer up by
    when the event has no phone (``prefetch_contacts`` loads them for the batch)."""
    customer, by_email = None, False
    match event:
        case ev.OrderPlaced() | ev.OrderUpdated() | ev.OrderPaid() | ev.OrderCancelled() | ev.OrderFulfilled():
            customer, by_email = event.order.customer, True
        case ev.CheckoutUpdated(checkout=c):
            customer = c.customer
        case ev.CustomerUpdated():
            customer = event.customer
        case ev.ConsentChanged():
            return [], [event.customer_external_id] if event.phone is None and event.customer_external_id else []
    if customer is None or customer.phone is not None:
        return [], []
    key = email_key(customer.email) if by_email else None
    return [key] if key else [], [customer.external_id] if customer.external_id else []


def prefetch_contacts(conn: Connection, store_id: int, column: str, keys: set[str]) -> None:
    """Load every contact of the store whose ``column`` (``email``, trimmed and any case, or
    ``external_customer_id``) is one of ``keys`` into the transaction cache: one query per
    batch instead of one per event (on PostgreSQL each is a round trip). Call it before the
    batch writes anything."""
    cache = current(conn)
    if cache is None:
        return
    todo = sorted(k for k in keys if (column, store_id, k) not in cache.loaded)
    if not todo:
        return
    for row in conn.execute(_CONTACTS_BY_MANY[column], {"sid": store_id, "keys": todo}):
        cache.put("contacts", row)
    cache.loaded.update((column, store_id, k) for k in todo)


def contact_where(conn: Connection, store_id: int, column: Any, value: str) -> Any:
    """A contact by another identifier (WhatsApp id, the platform's customer id); the cached copy if there is one.

    Contacts whose INSERT is held back are newer than every stored one, so they are looked
    at only when the database has no match (as a query after the INSERTs would return).
    """
    cache = current(conn)
    if cache is not None and (column.name, store_id, value) in cache.loaded:  # the batch's prefetch read them all
        rows = cache.matching_contacts(column.name, store_id, value)
        stored = [r for r in rows if r.id not in cache.held["contacts"]]
        return (stored or rows)[0] if rows else None  # as below: a stored match first, the oldest
    if cache is not None and cache.updates_column("contacts", column.name):
        flush(conn)  # a held-back change of that identifier must be visible to the query
    row = conn.execute(_CONTACT_BY[column.name], {"sid": store_id, "v": value}).first()
    if cache is None:
        return row
    if row is not None:
        return cache.put("contacts", row)
    held = [r for r in cache.held_rows("contacts") if r.store_id == store_id and r[column.name] == value]
    return min(held, key=lambda r: r.id) if held else None
