"""What stays of an erased customer so she stays erased: her orders' ids, her checkouts' tokens and her platform customer id.

An erasure (``compliance.redact_customer``: Shopify's ``customers/redact``, a store owner's request)
removes her data from the connector, but the store keeps her orders: a later update of one (a status
change, a refund, a note, a fulfilment; a webhook, the reconcile reading it back, a replayed delivery)
or of her account carries her name, phone, email and address again, and would start a new contact the
journeys may message. So the erasure records, per store, the platform order ids it reached, the tokens
of the checkouts it reached (her contacts' and her orders'), and her platform customer id, and the
processor ignores a later event about them (``erased_on``): the inbox
row is ``ignored`` ("customer erased on <date>"), its body deleted as a privacy request's is, and
nothing is stored or sent; only an opt-out of hers is still applied, to a contact her number already
has (``state.apply_erased_withdrawal``). An order of her customer id placed before the erasure but unknown to it
(its webhooks lost), or a checkout of hers begun before it (an abandoned cart updated later), is hers
too. A checkout of hers the erasure reached stays hers by its token, with or without a customer id (a
guest's abandoned cart updated later, the abandoned-checkout poll reading it back, a replay). A new
order she places after it (or a new checkout she begins: a new token) is a new relationship, processed
as any; it also lifts the mark on her customer id (``returning``), so her account's updates count again.

The abandoned-checkout poll cannot always name a checkout by its token: Shopify's newer recovery links
do not carry it, and the poll matched such a checkout to ours by its stored recovery link, which the
erasure removes. So the erasure also records the identity of each such link (``link_mark``, hashed as a
customer id is), and the poll (``checkout_poll``) keys a checkout whose link is marked by that mark,
which the processor then finds as it finds a token.

What is kept: an order id and a checkout token as they are (the orders and checkouts tables keep them
anyway, for the reports; they name no one without the store's own records; at most 64 characters), a
recovery link only as a hash (it opens her checkout), and the customer id only as an HMAC-SHA256 keyed with the store's
own random key (the row of kind ``key``): the id the erasure removed is not written again, and the
table alone tells nothing. Whoever holds the database and the key can test a candidate id: that is
pseudonymisation, not anonymity, and the least that still recognises her.

The processor reads the marks of a batch's orders, checkouts and customers with one query per store
(``Book.read``), after the batch's orders are read locked, so an erasure committed meanwhile by
another worker is seen.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, Table, delete, select, union_all
from sqlalchemy.dialects import postgresql, sqlite

from connector import events as ev
from connector.storage import models as m

ERASED: Table = m.ErasedRef.__table__  # type: ignore[assignment]
ORDER, CUSTOMER, CHECKOUT, KEY = "order", "customer", "checkout", "key"
_ORDER_EVENTS = (ev.OrderPlaced, ev.OrderUpdated, ev.OrderPaid, ev.OrderCancelled, ev.OrderFulfilled)


def refs_of(event: ev.Event) -> tuple[list[str], list[str], list[str]]:
    """The order ids, platform customer ids and checkout tokens an event is about (an order's or a
    checkout's customer id too: one from before the erasure is hers, a new one lifts the mark)."""
    match event:
        case ev.OrderPlaced() | ev.OrderUpdated() | ev.OrderPaid() | ev.OrderCancelled() | ev.OrderFulfilled():
            customer = event.order.customer.external_id
            return [event.order.external_id], [customer] if customer else [], []
        case ev.FulfillmentUpdated(fulfillment=f):
            return [f.order_external_id], [], []
        case ev.OrderDeleted(order_external_id=oid):
            return [oid], [], []
        case ev.CheckoutUpdated(checkout=checkout):
            customer = checkout.customer.external_id
            return [], [customer] if customer else [], [checkout.token]
        case ev.CustomerUpdated(customer=c):
            return [], [c.external_id] if c.external_id else [], []
        case ev.ConsentChanged(customer_external_id=cid):
            return [], [cid] if cid else [], []
    return [], [], []


def _placed_after(event: ev.Event, erased_at: datetime) -> bool:
    """An order placed, or a checkout begun, after its customer was erased: her new relationship."""
    if isinstance(event, _ORDER_EVENTS):
        return event.order.created_at > erased_at
    return isinstance(event, ev.CheckoutUpdated) and event.checkout.created_at > erased_at


def all_refs(events: Iterable[ev.Event]) -> tuple[set[str], set[str], set[str]]:
    """``refs_of`` of several events, together."""
    orders: set[str] = set()
    customers: set[str] = set()
    checkouts: set[str] = set()
    for event in events:
        o, c, t = refs_of(event)
        orders.update(o)
        customers.update(c)
        checkouts.update(t)
    return orders, customers, checkouts


def new_key() -> str:
    """A store's hashing key (hex), made once, at its first erasure (or migration 0023's marks, made its own way)."""
    return secrets.token_hex(32)


def customer_hash(key: str, customer_id: str) -> str:
    """What is kept of an erased platform customer id: its HMAC-SHA256 under the store's key (hex).
    Never to change: the stored marks were made with it, migration 0023's with a frozen copy of it."""
    return hmac.new(bytes.fromhex(key), customer_id.encode("utf-8"), hashlib.sha256).hexdigest()


def link_mark(key: str, identity: str) -> str:
    """The mark of an erased checkout's recovery link (the platform's link identity, which holds the
    link's secret): a keyed hash, as a customer id's; the poll keys the checkout by it."""
    return customer_hash(key, f"checkout-link:{identity}")


def _insert(conn: Connection) -> Any:
    dialect = postgresql if conn.dialect.name == "postgresql" else sqlite
    return dialect.insert(ERASED).on_conflict_do_nothing(index_elements=["store_id", "kind", "ref"])


def _store_key(conn: Connection, store_id: int, now: datetime) -> str:
    """The store's hashing key, made on its first erasure. One per store (the ``uq_erased_refs_one_key``
    index): two first erasures at once (two workers, an erasure retried) both insert one, the second
    waits for the first and inserts nothing, and both then read the one that won."""
    ensure_key(conn, store_id, new_key(), now)
    return conn.execute(select(ERASED.c.ref).where(ERASED.c.store_id == store_id, ERASED.c.kind == KEY)).scalar_one()


def ensure_key(conn: Connection, store_id: int, key: str, now: datetime) -> None:
    """Insert this key unless the store has one."""
    dialect = postgresql if conn.dialect.name == "postgresql" else sqlite
    conn.execute(dialect.insert(ERASED).on_conflict_do_nothing(index_elements=["store_id"], index_where=ERASED.c.kind == KEY),
                 [dict(store_id=store_id, kind=KEY, ref=key, erased_at=now)])


def remember(conn: Connection, store_id: int, order_ids: Iterable[str], customer_ids: Iterable[str], now: datetime, *,
             checkouts: Iterable[str] = (), links: Iterable[str] = ()) -> int:
    """Mark an erased customer's orders, customer ids, checkout tokens and checkouts' recovery link
    identities (in the erasure's transaction); how many ids."""
    orders, customers = sorted({o[:64] for o in order_ids if o}), sorted({c for c in customer_ids if c})
    tokens, identities = {t[:64] for t in checkouts if t}, sorted({x for x in links if x})
    if not orders and not customers and not tokens and not identities:
        return 0
    rows = [dict(store_id=store_id, kind=ORDER, ref=o, erased_at=now) for o in orders]
    if customers or identities:
        key = _store_key(conn, store_id, now)
        rows += [dict(store_id=store_id, kind=CUSTOMER, ref=customer_hash(key, c), erased_at=now) for c in customers]
        tokens |= {link_mark(key, x) for x in identities}
    rows += [dict(store_id=store_id, kind=CHECKOUT, ref=t, erased_at=now) for t in sorted(tokens)]
    conn.execute(_insert(conn), rows)  # one already there (a repeated erasure) stays as it was
    return len(rows)


def marked_links(conn: Connection, store_id: int, identities: Iterable[str]) -> dict[str, str]:
    """Which of these recovery link identities an erasure marked: identity -> its mark (the poll's
    key for that checkout). Two queries: the store's key, then its marks among them."""
    wanted = sorted({x for x in identities if x})
    if not wanted:
        return {}
    key = conn.execute(select(ERASED.c.ref).where(ERASED.c.store_id == store_id, ERASED.c.kind == KEY)).scalar()
    if key is None:  # the store never erased anyone
        return {}
    hashed = {link_mark(key, x): x for x in wanted}
    found = conn.execute(select(ERASED.c.ref).where(ERASED.c.store_id == store_id, ERASED.c.kind == CHECKOUT,
                                                   ERASED.c.ref.in_(sorted(hashed)))).scalars()
    return {hashed[ref]: ref for ref in found}


def forget_store(conn: Connection, store_id: int) -> int:
    """A whole shop erased (``compliance.redact_shop``): its marks and its key go with the rest of its data."""
    return conn.execute(delete(ERASED).where(ERASED.c.store_id == store_id)).rowcount


def marks_query(store_id: int, orders: list[str], customer_hashes: list[str], *, with_key: bool, checkouts: list[str] = ()) -> Any:
    """The store's marks among these orders, checkout tokens and hashed customer ids (and its key
    row): each part a search of the (store_id, kind, ref) unique index; None when there is nothing to look for."""
    def part(kind: str, *where: Any) -> Any:
        return select(ERASED.c.kind, ERASED.c.ref, ERASED.c.erased_at).where(ERASED.c.store_id == store_id, ERASED.c.kind == kind, *where)

    # a UNION ALL, not an OR: given the OR, SQLite's planner read every mark of the store
    parts = [part(ORDER, ERASED.c.ref.in_(orders))] if orders else []
    parts += [part(CHECKOUT, ERASED.c.ref.in_(list(checkouts)))] if checkouts else []
    parts += [part(CUSTOMER, ERASED.c.ref.in_(customer_hashes))] if customer_hashes else []
    parts += [part(KEY)] if with_key else []
    if not parts:
        return None
    return parts[0] if len(parts) == 1 else union_all(*parts)


@dataclass(frozen=True)
class Erased:
    """An event about an erased customer: when she was erased, and whether it names her customer id
    (its inbox row's dedupe key may spell it: replaced as the erasure replaces such keys)."""

    at: datetime
    names_customer: bool

    @property
    def reason(self) -> str:
        return f"customer erased on {self.at.date().isoformat()}"


@dataclass
class Book:
    """The marks a batch's events meet, read once per store. A store's key is kept across batches, to
    hash a batch's customer ids in its one query, but each such query reads the key row too: the key
    kept may have been read in a transaction that then rolled back (an erasure's, in the same batch),
    or gone with its shop (``forget_store``), and a stale key would miss every mark of hers."""

    keys: dict[int, str] = field(default_factory=dict)
    marks: dict[tuple[int, str, str], datetime] = field(default_factory=dict)

    def clear(self) -> None:
        self.marks.clear()

    def read(self, conn: Connection, store_id: int, order_ids: Iterable[str], customer_ids: Iterable[str],
             checkout_tokens: Iterable[str] = ()) -> None:
        """One query: the marks among these orders, customers and checkouts, and the store's key (a
        second one when the key is new to this book or changed)."""
        orders, customers = sorted({o[:64] for o in order_ids if o}), sorted({c for c in customer_ids if c})
        checkouts = sorted({t[:64] for t in checkout_tokens if t})
        key = self.keys.get(store_id)
        hashed = {customer_hash(key, c): c for c in customers} if key is not None else {}
        query = marks_query(store_id, orders, sorted(hashed), with_key=bool(customers), checkouts=checkouts)
        if query is None:
            return
        stored_key: str | None = None
        found: dict[str, datetime] = {}
        for kind, ref, erased_at in conn.execute(query):
            if kind == KEY:
                stored_key = ref
            elif kind in (ORDER, CHECKOUT):
                self.marks[(store_id, kind, ref)] = erased_at
            else:
                found[ref] = erased_at
        if not customers:
            return
        if stored_key != key:  # first sight of the key, or the one kept is not the store's (rolled back, or gone)
            self.keys.pop(store_id, None)
            if stored_key is not None:
                self.keys[store_id] = stored_key
                self.read(conn, store_id, (), customers)
            return
        for ref, erased_at in found.items():
            self.marks[(store_id, CUSTOMER, hashed[ref])] = erased_at

    def erased_on(self, store_id: int, events: Iterable[ev.Event]) -> Erased | None:
        """Whether the events are about an erased customer: one of her orders or checkouts, her
        account, or an order of her customer id placed before the erasure that it did not know of (not
        stored then); None when they are not. An order she placed after it is a new relationship, and so
        is a checkout she began after it under a new token."""
        if not self.marks:  # the batch met no mark: every row of a store that never erased anyone
            return None
        by_order: list[datetime] = []
        by_customer: list[datetime] = []
        for event in events:
            orders, customers, checkouts = refs_of(event)
            by_order += [at for o in orders if (at := self.marks.get((store_id, ORDER, o[:64]))) is not None]
            by_order += [at for t in checkouts if (at := self.marks.get((store_id, CHECKOUT, t[:64]))) is not None]
            by_customer += [at for c in customers if (at := self.marks.get((store_id, CUSTOMER, c))) is not None
                            and not _placed_after(event, at)]
        if not by_order and not by_customer:
            return None
        return Erased(min(by_order + by_customer), bool(by_customer))

    def returning(self, conn: Connection, store_id: int, events: Iterable[ev.Event]) -> None:
        """An order of an erased customer id placed after the erasure: she is back, a new relationship;
        her account's updates count again (the mark goes)."""
        if not self.marks:
            return
        back = {c for event in events for c in refs_of(event)[1]
                if (at := self.marks.get((store_id, CUSTOMER, c))) is not None and _placed_after(event, at)}
        if not back:
            return
        key = self.keys[store_id]
        conn.execute(delete(ERASED).where(ERASED.c.store_id == store_id, ERASED.c.kind == CUSTOMER,
                                          ERASED.c.ref.in_(sorted(customer_hash(key, c) for c in back))))
        for c in back:
            del self.marks[(store_id, CUSTOMER, c)]
