"""Reorder windows: computed from orders, lines and fulfilments, opened into the reorder journey.

``refresh_windows`` keeps one window per (order, product) for the customer's latest
purchase of each product: it opens at the anchor (delivery, else fulfilment + transit,
else the order date + transit) plus the cycle times the quantity, minus the lead time.
An earlier purchase's window becomes ``reordered`` once a later order of the product
exists; a cancelled order's window is ``cancelled``. Run incrementally (orders and
fulfilments changed since a cursor: only the customers concerned are recomputed) or in
full (every customer, and the product cycles relearned from the whole history). A full
scan reads with no write lock held and writes in short batches, so webhooks keep being
acknowledged while it runs.

``open_due_windows`` hands each due window to the journey runner in the same transaction
that marks it opened (``FOR UPDATE SKIP LOCKED`` on PostgreSQL, so several workers never
open one twice; the run and outbox keys make a second try harmless anyway). A window that
came due more than ``late_days`` ago (history imported after the fact) is ``expired``
instead of messaged, and one whose product is no longer a line of its order (an order edit
removed it, or it was refunded and restocked) or is no longer sold is ``cancelled``. One whose
product is sold out is held: checked again ``SOLD_OUT_RECHECK`` later, so it opens once the
product is back in stock, or expires when that comes more than ``late_days`` after the window's
time (the daily full scan puts its time back).

A refunded or voided order is no purchase, like a cancelled one; a product the customer gets on
a subscription (her latest purchase of it is a renewal the store raised) opens no window. At the end of a full scan, a
pending window it did not plan (no cycle names its product any more, the product is not sold)
is cancelled. A due window whose customer ordered the product again since (under another number
with the same email or platform customer id, or an order still awaiting payment, such as a bank
transfer on hold) is ``reordered`` without a reminder.

A product that stops being sold (archived, a draft, binned or deleted) has its pending windows
cancelled at once (``product_not_sold``, with ``cancel_reason`` ``not_sold``), and the runs of its opened
windows are paused: what they still have waiting (a reminder held for quiet hours, a follow-up) is skipped, and a
run whose reminder went out still credits her reorder; sold again, pending windows still ahead, or due within
``late_days``, are pending again, and the paused runs go on, a withheld reminder queued again if it is still that
timely (``product_sold_again``). A product still sold that runs out of stock pauses those runs the same way
(``product_sold_out``: skipped as ``sold_out``), and back in stock they go on (``product_back_in_stock``). A window cancelled because
its order was called off (``cancel_reason`` ``called_off``) is planned again by the next scan if the order
counts again (a WooCommerce order restored from the bin) and is still her latest purchase of the product.
Windows cancelled for any other reason (the line returned) stay cancelled.

A contact a privacy erasure left (``compliance``: no phone, ``phone_key`` ``redacted:<id>``) is
planned no window by either scan (her purchases still teach the products' cycles, as counts do
the reports), and a pending window of hers that comes due is closed (``redacted``) unopened.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import logging
import operator
import sys
import time
from collections import defaultdict
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any

from sqlalchemy import Connection, String, Table, and_, bindparam, case, exists, func, literal, or_, select, true, tuple_, type_coerce, union_all, update
from sqlalchemy.exc import DBAPIError

from connector import events as ev
from connector.compliance import REDACTED, erased_contacts
from connector.contacts import email_key
from connector.errors import StoreloopError, describe_error
from connector.handoffs import REPLY_CASE
from connector.journeys.reorder import ReorderConfig
from connector.journeys.runner import LISTENING, JourneyRunner
from connector.reorder.cycles import CycleBook, cadence, intervals_in_order, learn_all, one_purchase, product_key, units_in_hand
from connector.storage import models as m
from connector.storage.db import Database
from connector.sync import read_cursor, upsert_cursor

log = logging.getLogger("storeloop.reorder")

JOURNEY = "reorder"
CURSOR = "reorder_windows"
RELEARNED = "reorder_relearned"
PLANNED_ON = "reorder_planned_on"  # the digest of the planning settings of the last full scan
RELEARN_EVERY = timedelta(hours=24)
OVERLAP = timedelta(minutes=5)  # rows committed just after a scan started, with an earlier updated_at
WRITE_BATCH = 5000

W: Table = m.ReorderWindow.__table__  # type: ignore[assignment]
O: Table = m.Order.__table__  # type: ignore[assignment]
L: Table = m.OrderLine.__table__  # type: ignore[assignment]
F: Table = m.Fulfillment.__table__  # type: ignore[assignment]
C: Table = m.ProductCycle.__table__  # type: ignore[assignment]
PA: Table = m.ProductAvailability.__table__  # type: ignore[assignment]
RUNS: Table = m.JourneyRun.__table__  # type: ignore[assignment]
HANDOFFS: Table = m.Handoff.__table__  # type: ignore[assignment]


def config_for(store: Any) -> ReorderConfig | None:
    cfg = store.enabled_journeys().get(JOURNEY)
    return cfg if isinstance(cfg, ReorderConfig) else None


def reorder_link(store: Any, config: ReorderConfig, variant_id: str | None, product_id: str | None, quantity: int,
                 variants: Sequence[tuple[str | None, int]] = ()) -> str | None:
    """Shopify: a cart permalink (platform-facts A9); WooCommerce: the add-to-cart link.

    ``variants``: (variant, quantity) of each variant she bought of the product in the window's order, when
    there were several (a 100 ml and two 200 ml). Shopify's permalink names each with its own quantity
    (``/cart/v1:q1,v2:q2``); WooCommerce's ``add-to-cart`` takes one item, so the link offers the variation
    she bought most of, with its own quantity (not all the units, of a size she may not use)."""
    if len([v for v, _ in variants if v]) < 2:
        variants = ((variant_id, quantity),)
    if store.platform == "shopify":
        items = [(v.rsplit("/", 1)[-1], max(1, q)) for v, q in variants if v]  # a GraphQL gid or a plain id
        if not items:
            return None
        base = str(config.storefront_url or f"https://{store.shop_domain}").rstrip("/")
        link = f"{base}/cart/{','.join(f'{v}:{q}' for v, q in items)}"
        return f"{link}?discount={config.discount_code}" if config.discount_code else link
    variant, qty = max(variants, key=operator.itemgetter(1))  # the first of the largest
    item = variant or product_id
    if not item:
        return None
    base = str(config.storefront_url or store.site_url).rstrip("/")
    return f"{base}/?add-to-cart={item}&quantity={max(1, qty)}"


# -- reading history -------------------------------------------------------------------------
@dataclass(slots=True)
class Line:
    order_external_id: str
    placed_at: datetime
    cancelled: bool
    product_id: str | None
    variant_id: str | None
    sku: str | None
    title: str
    quantity: int
    delivered_at: datetime | None
    fulfilled_at: datetime | None
    subscription: bool = False  # a subscription's order (a renewal the store raises itself)
    delivery: str = ev.Delivery.SHIPPING.value  # pickup, or none: no parcel on its way (a sale at the till), no transit time

    @property
    def key(self) -> str:
        return product_key(self.product_id, self.sku, self.title)


def _history_query(store_id: int, contact_ids: list[int] | None, *, sqlite_scan: bool = False, raw_times: bool = False) -> Any:
    """Every order line of the store's (or the given) customers, ordered by customer, with the
    order's first delivery and first fulfilment.

    The full scan joins the fulfilments grouped per order (one pass over the table); a few
    customers look theirs up per order (correlated, by the order's index). The correlated
    form over a whole store costs two index searches per line, and on PostgreSQL without
    statistics (a freshly loaded table) it was planned as a walk over every fulfilment of the
    store per line: 24 s for 10,000 orders.
    """
    placed = type_coerce(O.c.placed_at, String) if raw_times else O.c.placed_at
    # called off: cancelled, or its money returned or never taken (a WooCommerce refund keeps the
    # order's lines; they are no purchase, and a window planned on them is cancelled)
    called_off = or_(O.c.cancelled_at.is_not(None), *(O.c.payment_state == state for state in CALLED_OFF_STATES)).label("called_off")
    cols = (O.c.contact_id, O.c.external_id, placed, called_off, (O.c.channel == ev.SalesChannel.SUBSCRIPTION.value).label("subscription"),
            O.c.delivery, L.c.product_id, L.c.variant_id, L.c.sku, L.c.title, L.c.quantity)
    source = O.join(L, L.c.order_id == O.c.id)
    if contact_ids is None:
        per_order = (select(F.c.order_external_id, func.min(F.c.delivered_at).label("delivered_at"),
                            func.min(F.c.created_at).label("fulfilled_at"))
                     .where(F.c.store_id == store_id).group_by(F.c.order_external_id).subquery("per_order"))
        q = select(*cols, per_order.c.delivered_at, per_order.c.fulfilled_at).select_from(
            source.outerjoin(per_order, per_order.c.order_external_id == O.c.external_id))
        shipped = per_order.c.fulfilled_at.is_not(None)
    else:
        delivered = select(func.min(F.c.delivered_at)).where(F.c.store_id == O.c.store_id, F.c.order_external_id == O.c.external_id)
        fulfilled = select(func.min(F.c.created_at)).where(F.c.store_id == O.c.store_id, F.c.order_external_id == O.c.external_id)
        delivered_at, fulfilled_at = delivered.scalar_subquery(), fulfilled.scalar_subquery()
        if raw_times:  # the driver's text, parsed by _per_contact (SQLAlchemy's per-value processing cost more than the query)
            delivered_at, fulfilled_at = type_coerce(delivered_at, String), type_coerce(fulfilled_at, String)
        q = select(*cols, delivered_at.label("delivered_at"), fulfilled_at.label("fulfilled_at")).select_from(
            source).where(O.c.contact_id.in_(contact_ids))
        shipped = fulfilled.scalar_subquery().is_not(None)  # an aggregate row always exists: its value says
    # SQLite, whole store: the store is compared through an expression so that no index on
    # it is used; SQLite then reads the lines in table order and sorts (5 s for 1,270,000
    # lines) instead of walking the orders by customer through an index (13 s).
    in_store = (O.c.store_id + 0) == store_id if sqlite_scan else O.c.store_id == store_id
    # a purchase: COD (paid at the door), paid, or shipped; a prepaid order left unpaid never
    # reaches the customer, so it opens no window and learns no cycle (until it is paid). Orders
    # called off are read too (as no purchase), so that a window planned before is cancelled.
    bought = or_(O.c.is_cod.is_(True), and_(*(O.c.payment_state != state for state in UNPAID_STATES)), shipped, called_off)
    return q.where(in_store, O.c.contact_id.is_not(None), O.c.test.is_(False), bought).order_by(
        O.c.contact_id, O.c.placed_at, O.c.id, L.c.id)


UNPAID_STATES = ("pending", "failed", "voided")
CALLED_OFF_STATES = ("refunded", "voided")  # the money went back (a return) or was never taken


def _per_contact(rows: Iterable[Any], parse: Any = None) -> Iterator[tuple[int, list[Line]]]:
    """Group the history (ordered by contact) into one list of lines per customer.

    Rows are positional, as ``_history_query`` selects them; ``parse`` turns the driver's
    time values into aware datetimes when the rows come straight from the driver.
    """
    current: int | None = None
    lines: list[Line] = []
    for (contact_id, external_id, placed_at, called_off, subscription, delivery, product_id, variant_id, sku, title, quantity, delivered_at,
         fulfilled_at) in rows:
        if contact_id != current:
            if current is not None:
                yield current, lines
            current, lines = contact_id, []
        if parse is not None:
            placed_at, delivered_at, fulfilled_at = parse(placed_at), parse(delivered_at), parse(fulfilled_at)
        lines.append(Line(external_id, placed_at, bool(called_off), product_id, variant_id, sku, title or "",
                          max(1, quantity or 1), delivered_at, fulfilled_at, bool(subscription), delivery or ev.Delivery.SHIPPING.value))
    if current is not None:
        yield current, lines


def _sqlite_time(value: str | None) -> datetime | None:
    """UTCDateTime's SQLite text (naive UTC) -> an aware UTC datetime, as the column type reads it (one C call)."""
    return None if value is None else datetime.fromisoformat(value + "+00:00")


@contextmanager
def _history(db: Database, store_id: int) -> Iterator[Iterator[tuple[int, list[Line]]]]:
    """Stream every customer's history without holding a transaction that blocks writers.

    SQLite: the engine begins every transaction ``IMMEDIATE`` (the write lock), so a scan
    read through it would block webhooks for its whole length, and the scan's own batch
    writes would wait on it until the busy timeout. The read goes to the driver outside any
    transaction instead, and first copies the sorted history into a TEMP table (one
    statement, a few seconds): streaming from the main database would hold one read
    snapshot for the whole scan, and no checkpoint can pass it, so the WAL grew by every
    batch written (to 940 MB for 1,000,000 orders). PostgreSQL: a server-side cursor.
    """
    with db.engine.connect() as conn:
        if conn.dialect.name != "sqlite":
            yield _per_contact(conn.execution_options(yield_per=2000).execute(_history_query(store_id, None)))
            return
        compiled = _history_query(store_id, None, sqlite_scan=True).compile(dialect=conn.dialect)
        params = compiled.construct_params()
        raw = conn.connection.driver_connection  # autocommit: each statement on its own
        assert raw is not None
        raw.execute("DROP TABLE IF EXISTS temp.reorder_scan")
        cursor = raw.cursor()
        try:
            raw.execute(f"CREATE TEMP TABLE reorder_scan AS {compiled}", [params[name] for name in compiled.positiontup or ()])
            cursor.arraysize = 2000
            cursor.execute("SELECT * FROM temp.reorder_scan ORDER BY rowid")
            yield _per_contact((row for batch in iter(cursor.fetchmany, []) for row in batch), _sqlite_time)
        finally:
            cursor.close()
            raw.execute("DROP TABLE IF EXISTS temp.reorder_scan")


_PLACED = operator.attrgetter("placed_at")


def _by_product(lines: list[Line]) -> dict[str, list[Line]]:
    """Live (not cancelled) purchases per product, oldest first, one per order."""
    out: dict[str, dict[str, Line]] = defaultdict(dict)
    for line in lines:
        if line.cancelled:
            continue
        per_order = out[line.key]
        seen = per_order.get(line.order_external_id)
        if seen is None:
            per_order[line.order_external_id] = line
        else:  # the same product twice in one order: one purchase of the summed quantity
            seen.quantity += line.quantity
    return {k: sorted(v.values(), key=_PLACED) for k, v in out.items()}


# -- computing windows -----------------------------------------------------------------------
@dataclass
class Plan:
    """What one scan writes."""

    windows: list[tuple[Any, ...]] = field(default_factory=list)  # WINDOW_COLUMNS
    reordered: list[dict[str, Any]] = field(default_factory=list)  # older purchase -> the order that replaced it
    cancelled_orders: set[str] = field(default_factory=set)


def _products(lines: list[Line]) -> Iterator[tuple[str, list[Line], list[float]]]:
    """Each product the customer bought: (key, live purchases oldest first, per-unit intervals).

    The one place a customer's intervals are taken (``cycles.intervals_in_order``): the
    incremental tick, the full scan and ``learn_cycles`` all read them from here.
    """
    for key, purchases in _by_product(lines).items():
        yield key, purchases, intervals_in_order(purchases) if len(purchases) >= 2 else []


def _latest(purchases: list[Line]) -> Line:
    """The purchase a window is planned on: the latest, with the units of the orders placed less than a day
    before it (``cycles.units_in_hand``: a second pack ordered an hour later lasts with the first)."""
    latest = purchases[-1]
    if len(purchases) < 2 or (latest.placed_at - purchases[-2].placed_at).total_seconds() >= 86400:
        return latest  # the usual case: nothing copied
    return dataclasses.replace(latest, quantity=units_in_hand(purchases))


def _on_subscription(purchases: list[Line]) -> bool:
    """Whether the customer gets this product on a subscription now: the store sends the next one by
    itself, so "reorder in one tap" days before a renewal would ask for a second box.

    The platforms' orders say only which order a renewal raised (not whether the subscription is still
    on), so her latest purchase of it decides (with the orders less than a day before it: one purchase,
    as ``_latest`` counts them): a renewal, no window; a one-off bought at the checkout after she ended
    the subscription, a window as for anyone. A one-off extra box while subscribed gets one too, and the
    next renewal, a later order of the product, marks it ``reordered`` (or ``_reordered_since`` does as
    it comes due), so no reminder goes unless her supply runs out before that renewal comes."""
    latest = purchases[-1]
    for p in reversed(purchases):
        if (latest.placed_at - p.placed_at).total_seconds() >= 86400:
            return False
        if p.subscription:
            return True
    return False


def plan_contact(contact_id: int, lines: list[Line], book: CycleBook, config: ReorderConfig, now: datetime, plan: Plan) -> None:
    """Windows for one customer's history (pure apart from filling ``plan``)."""
    plan.cancelled_orders.update(line.order_external_id for line in lines if line.cancelled)
    for key, purchases, gaps in _products(lines):
        latest = _latest(purchases)
        for before, after in zip(purchases, purchases[1:]):
            plan.reordered.append({"o": before.order_external_id, "k": key, "by": after.order_external_id, "now": now})
        if _on_subscription(purchases):
            continue
        found = book.resolve(key=key, product_id=latest.product_id, variant_id=latest.variant_id, sku=latest.sku, customer=cadence(gaps))
        if found is None:
            continue  # nothing knows this product's cycle yet
        plan.windows.append(_window(contact_id, key, latest, found, config, now))


WINDOW_COLUMNS = ("contact_id", "order_external_id", "product_key", "product_id", "variant_id", "sku", "title", "quantity", "placed_at",
                  "anchor", "anchor_at", "cycle_days", "cycle_source", "opens_at", "status", "updated_at")


HANDED_OVER = "handed_over"  # the anchor of an order that ships nothing: no transit time is added


def _window(contact_id: int, key: str, latest: Line, found: tuple[float, str], config: ReorderConfig, now: datetime) -> tuple[Any, ...]:
    """One window's row, in WINDOW_COLUMNS order (a tuple: the full scan makes one per customer and product).

    ``transit_days`` is a parcel's assumed time on the way: a sale taken home from the till, or an order she
    collected, was in her hands at its fulfilment (else its placing), so nothing is added."""
    days, source = found
    if latest.delivered_at is not None:
        anchor, anchor_at = "delivered", latest.delivered_at
    elif latest.delivery == ev.Delivery.NONE.value:  # taken home from the till (or nothing shipped): hers when handed over
        anchor, anchor_at = HANDED_OVER, latest.fulfilled_at or latest.placed_at
    elif latest.delivery == ev.Delivery.PICKUP.value and latest.fulfilled_at is not None:  # collected: the fulfilment is the hand-over
        anchor, anchor_at = HANDED_OVER, latest.fulfilled_at
    elif latest.fulfilled_at is not None:
        anchor, anchor_at = "fulfilled", latest.fulfilled_at + timedelta(days=config.transit_days)
    else:
        anchor, anchor_at = "placed", latest.placed_at + timedelta(days=config.transit_days)
    opens_at = anchor_at + timedelta(days=days * latest.quantity - config.lead_days)
    return (contact_id, latest.order_external_id, key, latest.product_id, latest.variant_id, latest.sku, latest.title[:255],
            latest.quantity, latest.placed_at, anchor, anchor_at, round(days, 3), source, opens_at, "pending", now)


def _scan_contact(contact_id: int, lines: list[Line], book: CycleBook, config: ReorderConfig, now: datetime, plan: Plan,
                  intervals: dict[str, list[list[float]]], deferred: list[tuple[int, str, Line]]) -> None:
    """The full scan's ``plan_contact`` and ``learn_cycles`` in one go, for one customer.

    ``book`` has no learned cycles yet (they need every customer): a window that config, a
    tag or the customer's own cadence already decides is planned now (learned cycles come
    last in the precedence, so they could not change it); the others wait in ``deferred``.
    Each product's per-unit intervals go to ``intervals``, as ``learn_cycles`` collects them.
    Earlier purchases are not listed as reordered: the full scan marks those in SQL, from the later
    window; a product on subscription has none, so the purchase before its latest is listed.
    """
    plan.cancelled_orders.update(line.order_external_id for line in lines if line.cancelled)
    for key, purchases, gaps in _products(lines):
        latest = _latest(purchases)
        if gaps:
            intervals[key].append(gaps)
        if _on_subscription(purchases):
            if len(purchases) >= 2:  # no later window to mark it in SQL: the purchase before is marked here
                before = purchases[-2]
                plan.reordered.append({"o": before.order_external_id, "k": key, "by": latest.order_external_id, "now": now})
            continue
        found = book.resolve(key=key, product_id=latest.product_id, variant_id=latest.variant_id, sku=latest.sku, customer=cadence(gaps))
        if found is None:
            deferred.append((contact_id, sys.intern(key), _compact(latest)))
        else:
            plan.windows.append(_window(contact_id, key, latest, found, config, now))


def _compact(line: Line) -> Line:
    """A purchase kept until the end of the scan, its product's strings shared with the other customers'."""
    intern = sys.intern
    return Line(line.order_external_id, line.placed_at, line.cancelled, line.product_id and intern(line.product_id),
                line.variant_id and intern(line.variant_id), line.sku and intern(line.sku), intern(line.title), line.quantity,
                line.delivered_at, line.fulfilled_at, line.subscription, intern(line.delivery))


def learn_cycles(histories: Iterable[tuple[int, list[Line]]], min_repeat_buyers: int) -> dict[str, tuple[float, int]]:
    """Each product's median per-unit interval over its repeat buyers: {key: (days, buyers)}.

    What the full scan learns, from the same intervals (``_products``) and the same rule
    (``cycles.learn_all``), without planning windows.
    """
    per_product: dict[str, list[list[float]]] = defaultdict(list)
    for _, lines in histories:
        for key, _purchases, gaps in _products(lines):
            if gaps:
                per_product[key].append(gaps)
    return learn_all(per_product, min_repeat_buyers)


# -- writing ---------------------------------------------------------------------------------
_MOVES = ("contact_id", "product_id", "variant_id", "sku", "title", "quantity", "placed_at", "anchor", "anchor_at", "cycle_days",
          "cycle_source", "opens_at", "updated_at")


@functools.cache
def _upsert_sql(dialect: str, rows: int = 1) -> str:
    """The window upsert for the driver: only a window that has not opened yet moves; an opened
    one keeps what the customer was told.

    Written to the driver directly (as the inbox writer does): the full scan writes one row per
    customer and product, and SQLAlchemy's per-row parameter processing cost more than the
    insert itself (about 40 us a row). ``rows`` rows a statement on PostgreSQL, where a
    statement per row spent about half the time on per-statement work (100,000 windows in
    14.3 s; 7.5 s at 100 rows a statement, 8.9 s at 500).
    """
    mark = "?" if dialect == "sqlite" else "%s"
    cols = ("store_id", *WINDOW_COLUMNS)
    one = f"({', '.join([mark] * len(cols))})"
    moves = ", ".join(f"{c} = excluded.{c}" for c in _MOVES)
    no_reorder = ", ".join(f"'{state}'" for state in _NOT_A_REORDER)
    # A window never opened, marked reordered by an order that no longer buys the product (a second pack ordered
    # the same day, then cancelled, refunded or edited out of it), is hers again: the scan plans it as her latest
    # purchase, so it is pending again on the plan's times. Her own order: the scan read it and found no later
    # purchase in it; another contact's (``_reordered_since``, a number she shares an email with): only once it
    # is called off, as the scan never reads it. Evaluated only for a conflicting row that is not pending.
    # Unless that order's own window of the product opened: she was reminded of it, a purchase as the full scan counts
    # it (``_mark_all_reordered``), so a refund after does not bring back the earlier one (a second reminder that day).
    revived = (f"(reorder_windows.status = 'reordered' AND reorder_windows.opened_at IS NULL AND EXISTS (SELECT 1 FROM orders "
               f"WHERE orders.store_id = reorder_windows.store_id AND orders.external_id = reorder_windows.reorder_order_id "
               f"AND (orders.contact_id = reorder_windows.contact_id OR orders.cancelled_at IS NOT NULL "
               f"OR orders.payment_state IN ({no_reorder}))) AND NOT EXISTS (SELECT 1 FROM reorder_windows AS reorder "
               f"WHERE reorder.store_id = reorder_windows.store_id AND reorder.order_external_id = reorder_windows.reorder_order_id "
               f"AND reorder.product_key = reorder_windows.product_key AND reorder.opened_at IS NOT NULL))")
    # A window cancelled because its order was called off, whose order counts again (a WooCommerce order restored
    # from the bin): the scan plans it as her latest purchase, so it is pending again. The order is read again here,
    # as it stands now: the full scan read it outside this transaction.
    called_off = ", ".join(f"'{state}'" for state in CALLED_OFF_STATES)
    restored = (f"(reorder_windows.status = 'cancelled' AND reorder_windows.cancel_reason = '{CALLED_OFF}' "
                f"AND reorder_windows.opened_at IS NULL AND EXISTS (SELECT 1 FROM orders "
                f"WHERE orders.store_id = reorder_windows.store_id AND orders.external_id = reorder_windows.order_external_id "
                f"AND orders.cancelled_at IS NULL AND (orders.payment_state IS NULL OR orders.payment_state NOT IN ({called_off}))))")
    return (f"INSERT INTO reorder_windows ({', '.join(cols)}) VALUES {', '.join([one] * rows)} "
            f"ON CONFLICT (store_id, order_external_id, product_key) DO UPDATE SET {moves}, status = 'pending', reorder_order_id = NULL, "
            f"cancel_reason = NULL WHERE reorder_windows.status = 'pending' OR {revived} OR {restored}")


PG_ROWS_PER_STATEMENT = 100  # 1,700 parameters a statement


def _sqlite_text(value: datetime) -> str:
    """What UTCDateTime stores on SQLite: naive UTC text, always with microseconds (so text order is time order)."""
    if value.tzinfo is timezone.utc:  # what the scan reads and computes: one C call
        return value.isoformat(" ", "microseconds")[:-6]
    return value.astimezone(timezone.utc).replace(tzinfo=None).isoformat(" ", "microseconds")


def _utc(value: datetime) -> datetime:
    return value.astimezone(timezone.utc)


_MARK_REORDERED = (
    update(W)
    .where(W.c.store_id == bindparam("sid"), W.c.order_external_id == bindparam("o"), W.c.product_key == bindparam("k"),
           or_(W.c.status == "pending", W.c.status == "opened"))  # not in_(): an expanding IN cannot be executemany'd
    .values(status="reordered", reorder_order_id=bindparam("by"), updated_at=bindparam("now"))
)
# status is compared through an expression on purpose: SQLite (no ANALYZE statistics) would
# otherwise search ix_reorder_windows_due (store_id, status), i.e. walk every pending window of
# the store once per cancelled order, instead of looking the order up by the unique key. A window
# already cancelled because its product was not sold takes the order's reason: it must not come back
# when the product does.
NOT_SOLD = "not_sold"  # cancel_reason of a window whose product stopped being sold: planned again if it is sold again
SOLD_OUT = "sold_out"  # skip_reason of a run's message withheld while its product is sold out (its window is only held)
CALLED_OFF = "called_off"  # cancel_reason of a window whose order was called off: planned again if the order counts again (restored)
_MARK_CANCELLED = (
    update(W)
    .where(W.c.store_id == bindparam("sid"), W.c.order_external_id == bindparam("o"),
           or_(func.coalesce(W.c.status, "") == "pending", W.c.cancel_reason == NOT_SOLD))
    .values(status="cancelled", cancel_reason=CALLED_OFF, updated_at=bindparam("now"))
)


def _write(conn: Connection, store_id: int, plan: Plan, now: datetime) -> None:
    if plan.windows:
        dialect = conn.dialect.name
        t = _sqlite_text if dialect == "sqlite" else _utc
        stamp = t(now)  # every window's updated_at
        params = [(store_id, w[0], w[1], w[2], w[3], w[4], w[5], w[6], w[7], t(w[8]), w[9], t(w[10]), w[11], w[12], t(w[13]), w[14],
                   stamp if w[15] is now else t(w[15])) for w in plan.windows]
        if dialect == "sqlite":
            conn.exec_driver_sql(_upsert_sql(dialect), params)
        else:  # several rows a statement (a window's key is unique within a plan: one per customer and product)
            for i in range(0, len(params), PG_ROWS_PER_STATEMENT):
                chunk = params[i:i + PG_ROWS_PER_STATEMENT]
                conn.exec_driver_sql(_upsert_sql(dialect, len(chunk)), tuple(v for row in chunk for v in row))
    if plan.reordered:
        conn.execute(_MARK_REORDERED, [{"sid": store_id, **r} for r in plan.reordered])
    if plan.cancelled_orders:
        conn.execute(_MARK_CANCELLED, [{"sid": store_id, "o": o, "now": now} for o in plan.cancelled_orders])


NO_PURCHASE = (CALLED_OFF, "not_a_line", "unplanned")  # cancel reasons of a window that may be no purchase now


def _mark_all_reordered(conn: Connection, store_id: int, now: datetime) -> None:
    """Full scan: any live window with a later window of the same customer and product was reordered.

    A later window that may be no purchase now is no reorder: its order called off, the product no longer a
    line of it (cancelled when due, or ``unplanned`` by a full scan), or still pending though this scan did not
    plan it (stamped before ``now``: ``_cancel_unplanned`` is about to cancel it). It must not take back the
    window the scan has just planned (or made pending again) on the purchase before."""
    later = W.alias("later")
    status = func.coalesce(later.c.status, "")
    a_purchase = and_(or_(status != "cancelled", func.coalesce(later.c.cancel_reason, "").not_in(NO_PURCHASE)),
                      or_(status != "pending", later.c.updated_at >= now))
    newer = (
        select(later.c.order_external_id)
        .where(later.c.store_id == W.c.store_id, later.c.contact_id == W.c.contact_id, later.c.product_key == W.c.product_key,
               later.c.placed_at > W.c.placed_at, a_purchase)
        .order_by(later.c.placed_at)
        .limit(1)
        .scalar_subquery()
    )
    # Only customers with more than one window of a product can have one to mark: found with
    # one pass over ix_reorder_windows_contact, so the per-window search for a later window
    # (which reads the table for placed_at) runs for those only (2.1 s -> 0.6 s at 456,000 windows).
    repeated = (select(W.c.contact_id, W.c.product_key).where(W.c.store_id == store_id)
                .group_by(W.c.contact_id, W.c.product_key).having(func.count() > 1))
    conn.execute(
        update(W)
        .where(W.c.store_id == store_id, W.c.status.in_(("pending", "opened")),
               tuple_(W.c.contact_id, W.c.product_key).in_(repeated),
               exists().where(later.c.store_id == W.c.store_id, later.c.contact_id == W.c.contact_id,
                              later.c.product_key == W.c.product_key, later.c.placed_at > W.c.placed_at, a_purchase))
        .values(status="reordered", reorder_order_id=newer, updated_at=now)
    )


def _cancel_unplanned(conn: Connection, store_id: int, now: datetime) -> None:
    """Full scan, last: a window still pending that this scan did not plan (every planned one was
    stamped ``now``) belongs to a purchase no cycle names any more (a ``replenish:`` tag removed, a
    product no longer sold) or that is no purchase now: it is cancelled, not left to remind."""
    not_sold = W.c.product_key.in_(select(PA.c.product_key).where(PA.c.store_id == store_id, PA.c.available.is_(False)))
    conn.execute(update(W).where(W.c.store_id == store_id, W.c.status == "pending", W.c.updated_at < now)
                 .values(status="cancelled", cancel_reason=case((not_sold, NOT_SOLD), else_="unplanned"), updated_at=now))


def _book(conn: Connection, store_id: int, config: ReorderConfig, learned: dict[str, float] | None = None) -> CycleBook:
    tags: dict[str, float] = {}
    stored: dict[str, float] = {}
    for row in conn.execute(select(C.c.product_key, C.c.source, C.c.cycle_days).where(C.c.store_id == store_id)):
        (tags if row.source == "tag" else stored)[row.product_key] = row.cycle_days
    unavailable = frozenset(conn.execute(select(PA.c.product_key).where(PA.c.store_id == store_id, PA.c.available.is_(False))).scalars())
    return CycleBook(config=config.cycles, tags=tags, learned=stored if learned is None else learned,
                     min_days=config.min_cycle_days, max_days=config.max_cycle_days, unavailable=unavailable)


def _store_learned(conn: Connection, store_id: int, learned: dict[str, tuple[float, int]], now: datetime) -> None:
    conn.execute(C.delete().where(C.c.store_id == store_id, C.c.source == "learned"))
    if learned:
        conn.execute(C.insert(), [dict(store_id=store_id, product_key=k, source="learned", cycle_days=round(d, 3), samples=n, updated_at=now)
                                  for k, (d, n) in learned.items()])


# -- the two entry points ------------------------------------------------------------------------
@dataclass
class ScanReport:
    mode: str  # full | incremental | off
    customers: int = 0
    windows: int = 0
    learned: int = 0
    seconds: float = 0.0


def _planning_settings(config: ReorderConfig) -> str:
    """A digest of the settings every pending window's time was computed from (the config's cycles, lead and
    transit days, the learning bounds): a restart with any of them changed replans every window at the next tick,
    not up to a day later (a cycle lengthened in the TOML must not remind anyone on the old one meanwhile)."""
    planned = {"cycles": sorted(config.cycles.items()), "lead_days": config.lead_days, "transit_days": config.transit_days,
               "min_repeat_buyers": config.min_repeat_buyers, "min_cycle_days": config.min_cycle_days,
               "max_cycle_days": config.max_cycle_days}
    return hashlib.sha256(json.dumps(planned, sort_keys=True).encode()).hexdigest()


def refresh_windows(db: Database, store: Any, store_id: int, now: datetime, *, full: bool | None = None) -> ScanReport:
    """Bring the store's windows up to date; a full scan when asked, the first time, daily, or when the
    settings the windows were planned on changed (``_planning_settings``)."""
    config = config_for(store)
    if config is None:
        return ScanReport("off")
    started = time.perf_counter()
    cursor = read_cursor(db, store_id, CURSOR)
    relearned = read_cursor(db, store_id, RELEARNED)
    planned_on = _planning_settings(config)
    if full is None:
        full = (cursor is None or relearned is None or now - datetime.fromisoformat(relearned) >= RELEARN_EVERY
                or read_cursor(db, store_id, PLANNED_ON) != planned_on)
    report = _full(db, store_id, config, now) if full else _incremental(db, store_id, config, now, datetime.fromisoformat(cursor))  # type: ignore[arg-type]
    upsert_cursor(db, store_id, CURSOR, now.isoformat())
    if full:
        upsert_cursor(db, store_id, RELEARNED, now.isoformat())
        upsert_cursor(db, store_id, PLANNED_ON, planned_on)
    report.seconds = time.perf_counter() - started
    log.info("reorder windows %s scan", report.mode, extra={"store": store.key, "customers": report.customers, "windows": report.windows,
                                                             "learned": report.learned, "seconds": round(report.seconds, 3)})
    return report


def _full(db: Database, store_id: int, config: ReorderConfig, now: datetime) -> ScanReport:
    """One pass over the history: learn the cycles and plan the windows together.

    Windows that need a learned cycle (a product the customer bought once, with no config or
    tag cycle) are kept until the pass ends and the cycles are known; the others are written
    in short batches as the scan goes.
    """
    report = ScanReport("full")
    with db.engine.connect() as conn:
        book = _book(conn, store_id, config, {})
        erased = erased_contacts(conn, store_id)
    intervals: dict[str, list[list[float]]] = defaultdict(list)
    deferred: list[tuple[int, str, Line]] = []
    learned: dict[str, tuple[float, int]] = {}
    plan = Plan()

    def flush(writer: Connection, final: bool = False) -> None:
        nonlocal plan
        report.windows += len(plan.windows)
        plan.windows.sort(key=_UNIQUE)  # in the unique index's order: each batch touches its pages once, in order
        with db.write_lock(), writer.begin():
            _write(writer, store_id, plan, now)
            if final:
                _store_learned(writer, store_id, learned, now)
                _mark_all_reordered(writer, store_id, now)
                _cancel_unplanned(writer, store_id, now)
        plan = Plan()

    with _history(db, store_id) as histories, _scan_writer(db) as writer:
        for contact_id, lines in histories:
            if contact_id in erased:  # her intervals still count for the cycles; nothing is planned for her
                _scan_contact(contact_id, lines, book, config, now, Plan(), intervals, [])
                continue
            report.customers += 1
            _scan_contact(contact_id, lines, book, config, now, plan, intervals, deferred)
            if len(plan.windows) >= WRITE_BATCH:
                flush(writer)
        learned = learn_all(intervals, config.min_repeat_buyers)
        report.learned = len(learned)
        del intervals
        book = dataclasses.replace(book, learned={k: d for k, (d, _) in learned.items()})
        for contact_id, key, latest in deferred:
            found = book.resolve(key=key, product_id=latest.product_id, variant_id=latest.variant_id, sku=latest.sku)
            if found is not None:
                plan.windows.append(_window(contact_id, key, latest, found, config, now))
                if len(plan.windows) >= WRITE_BATCH:
                    flush(writer)
        flush(writer, final=True)
    return report


_UNIQUE = operator.itemgetter(1, 2)  # (order_external_id, product_key): the unique index's order


SCAN_CACHE_KIB = 32 * 1024


@contextmanager
def _scan_writer(db: Database) -> Iterator[Connection]:
    """One connection for all of a full scan's write batches (each its own short transaction).

    On SQLite it gets a larger page cache for the scan (restored after): the windows' indexes
    are written all over, and with the default 2 MB cache every batch re-read and re-wrote
    most of their pages (12.6 s of a 35 s scan of 1,000,000 orders went to the inserts; 4.2 s
    with the cache and batches in index order).
    """
    with db.engine.connect() as writer:
        raw = writer.connection.driver_connection if db.is_sqlite else None
        before = None
        if raw is not None:
            before = raw.execute("PRAGMA cache_size").fetchone()[0]
            raw.execute(f"PRAGMA cache_size = -{SCAN_CACHE_KIB}")
        try:
            yield writer
        finally:
            if raw is not None and before is not None:
                raw.execute(f"PRAGMA cache_size = {int(before)}")


def _incremental(db: Database, store_id: int, config: ReorderConfig, now: datetime, since: datetime) -> ScanReport:
    report = ScanReport("incremental")
    since = since - OVERLAP
    with db.write_lock(), db.engine.begin() as conn:
        # SQLite (no statistics) takes an equality on store_id for the selective part and walks
        # every order / fulfilment of the store through the store's index (1.75 s and 0.16 s at
        # 1,000,000 orders); compared through an expression, the store is only a filter:
        # fulfilments are then found by ix_fulfillments_updated_at (0.1 ms) and orders by
        # ix_orders_updated_at (a range search; without that index, a 0.3 s table scan a tick).
        sqlite_ = conn.dialect.name == "sqlite"
        order_store = (O.c.store_id + 0) if sqlite_ else O.c.store_id
        fulfilment_store = (F.c.store_id + 0) if sqlite_ else F.c.store_id
        changed_orders = select(O.c.contact_id).where(order_store == store_id, O.c.updated_at >= since, O.c.contact_id.is_not(None))
        via_fulfilments = (
            select(O.c.contact_id)
            .select_from(F.join(O, and_(O.c.store_id == F.c.store_id, O.c.external_id == F.c.order_external_id)))
            .where(fulfilment_store == store_id, F.c.updated_at >= since, O.c.contact_id.is_not(None))
        )
        contacts = sorted(set(conn.execute(changed_orders).scalars()) | set(conn.execute(via_fulfilments).scalars()))
        if contacts:  # an erased customer's old order may still change (shipped, paid): nothing is planned for her
            erased = erased_contacts(conn, store_id, contacts)
            contacts = [c for c in contacts if c not in erased]
        if not contacts:
            return report
        book = _book(conn, store_id, config)
        plan = Plan()
        live: set[tuple[str, str]] = set()  # (order, product) of the customers' windows that are still pending or opened
        parse = _sqlite_time if sqlite_ else None
        for i in range(0, len(contacts), 500):
            chunk = contacts[i:i + 500]
            # status is filtered here, not in SQL: with it there SQLite walks ix_reorder_windows_due (every pending window)
            live.update((o, k) for o, k, status in conn.execute(select(W.c.order_external_id, W.c.product_key, W.c.status).where(
                W.c.store_id == store_id, W.c.contact_id.in_(chunk))) if status in ("pending", "opened"))
            for contact_id, lines in _per_contact(conn.execute(_history_query(store_id, chunk, raw_times=sqlite_)), parse):
                report.customers += 1
                plan_contact(contact_id, lines, book, config, now, plan)
        # every earlier purchase is listed; only those with a live window have anything to mark
        plan.reordered = [r for r in plan.reordered if (r["o"], r["k"]) in live]
        report.windows = len(plan.windows)
        _write(conn, store_id, plan, now)
    return report


@dataclass
class OpenReport:
    opened: int = 0
    expired: int = 0
    reordered: int = 0  # due, but she had already ordered it again (another number, a payment awaited)
    redacted: int = 0  # due, but its customer was erased: closed unopened
    cancelled: int = 0  # due, but no longer a line of its order or no longer sold
    held: int = 0  # due, but sold out or her reorder awaits its payment: checked again SOLD_OUT_RECHECK later
    failed: dict[int, str] = field(default_factory=dict)  # window id -> why opening it raised (it stays pending)


class WindowsNotOpened(StoreloopError):
    """Some due windows raised as they were opened (the others were): the reorder job's tick fails
    with this, so the dashboard's job health shows it until they open."""

    def __init__(self, store_key: str, failed: dict[int, str]):
        first = min(failed)
        more = f" and {len(failed) - 1} more" if len(failed) > 1 else ""
        super().__init__(f"{len(failed)} due reorder window(s) of {store_key} could not be opened, tried again next tick: "
                         f"window {first}: {failed[first]}{more}")
        self.failed = failed


# "In another journey" = a run that still has a step scheduled (a COD ask waiting for its
# answer, a cart ladder) or a person on it; a run that only listens (a delivery run, a ladder
# after its last reminder) is not busy.
# The customer's runs by the (store, contact) index, their status and timer checked in Python on
# the few rows found: with ``status = 'active' AND next_due_at IS NOT NULL`` in SQL, SQLite took the
# timers' (store, status, next_due_at) index and read every scheduled run of the store, per window.
# No DISTINCT either: with it SQLite walked the store's (store, journey, subject) index.
# A run whose timer only listens (``Wake.listening``: a cart ladder's attribution window after its
# last reminder, a pay reminder's last hours) plans no message: not busy.
_SCHEDULED = select(RUNS.c.journey, RUNS.c.status, and_(RUNS.c.next_due_at.is_not(None),
                                                       func.coalesce(RUNS.c.state[LISTENING].as_boolean(), False).is_(False)).label("due")).where(
    RUNS.c.store_id == bindparam("sid"), RUNS.c.contact_id == bindparam("cid"), RUNS.c.journey != JOURNEY)
# "A person on it" is an open hand-off, not a run left in status "handoff": a run stays so after
# its case is closed (a failed delivery rearranged, a COD cancel dealt with), and the customer
# was never reminded to reorder again. A conversation counts: a journey's case, or the customer's
# own question (``reply:`` cases); a note for the team that no one answers (a high-value order)
# does not. And only a recent one (BUSY_CASE_DAYS): many stores never close a "thanks, got it"
# case, which would have kept that customer from every reorder reminder for good.
BUSY_CASE_DAYS = 7
_WITH_A_PERSON = select(func.coalesce(HANDOFFS.c.journey, "handoff"), literal("case"), true()).where(
    HANDOFFS.c.store_id == bindparam("sid"), HANDOFFS.c.status == "open", HANDOFFS.c.contact_id == bindparam("cid"),
    HANDOFFS.c.journey.is_not(None) | HANDOFFS.c.key.startswith(REPLY_CASE, autoescape=True),
    HANDOFFS.c.opened_at >= bindparam("since"))
_BUSY = union_all(_SCHEDULED, _WITH_A_PERSON)  # one round trip per window: a tick opens its windows one by one


def busy_with(conn: Connection, store_id: int, contact_id: int | None, now: datetime) -> tuple[str, ...]:
    """What keeps a customer from a reorder reminder now: journeys with a step scheduled, and
    the journeys of their recent open hand-offs ("handoff" for a case no journey opened)."""
    if contact_id is None:
        return ()
    params = {"sid": store_id, "cid": contact_id, "since": now - timedelta(days=BUSY_CASE_DAYS)}
    return tuple(sorted({journey for journey, status, due in conn.execute(_BUSY, params) if status == "case" or (status == "active" and due)}))


# no ORDER BY (a planner without statistics could walk the lines' primary key for it): sorted in Python, by line id
_LINES_OF_ORDERS = (select(L.c.id, O.c.external_id, L.c.product_id, L.c.sku, L.c.title, L.c.variant_id, L.c.quantity)
                    .select_from(L.join(O, L.c.order_id == O.c.id))
                    .where(O.c.store_id == bindparam("sid"), O.c.external_id.in_(bindparam("oids", expanding=True))))


def _still_bought(conn: Connection, store_id: int, windows: list[Any]) -> dict[tuple[str, str], dict[str | None, int]]:
    """{(order, product key): {variant: units}} of these windows' orders as their lines stand now: a product
    an order edit removed, or the customer returned (refunded and restocked), is no longer a line of its
    order, and its window, planned before, must not remind anyone to buy it again. One query for the lot;
    the daily full scan leaves such a window pending, so this is checked as windows open. The variants (in
    line order) are the reorder link's (``_cart``)."""
    orders = sorted({w.order_external_id for w in windows})
    found: dict[tuple[str, str], dict[str | None, int]] = {}
    for i in range(0, len(orders), 500):
        rows = sorted(conn.execute(_LINES_OF_ORDERS, {"sid": store_id, "oids": orders[i:i + 500]}).all())
        for _line, oid, pid, sku, title, variant_id, quantity in rows:
            units = found.setdefault((oid, product_key(pid, sku, title)), {})
            units[variant_id] = units.get(variant_id, 0) + max(1, quantity or 1)
    return found


def _one_purchase_units(conn: Connection, store_id: int, windows: list[Any]) -> dict[int, dict[str | None, int]]:
    """{window id: {variant: units}} for windows planned on a purchase split over orders less than a day apart
    (``cycles.one_purchase``: a neem face wash, and three hours later a rose one): each variant of each of those
    orders with its own units, in the order she bought them, so her cart is one of each, not two of the last.
    Read from her history as the scans read it (``_history_query``: lines as they stand, orders called off
    left out); one query per 500 customers, and only for such windows (their quantity exceeds their order's)."""
    by_contact: dict[int, list[Any]] = defaultdict(list)
    for w in windows:
        by_contact[w.contact_id].append(w)
    contacts = sorted(by_contact)
    out: dict[int, dict[str | None, int]] = {}
    for i in range(0, len(contacts), 500):
        for contact_id, lines in _per_contact(conn.execute(_history_query(store_id, contacts[i:i + 500]))):
            variants: dict[tuple[str, str], dict[str | None, int]] = {}  # (order, product) -> {variant: units}
            for line in lines:  # before _by_product, which adds an order's lines of a product into its first
                if not line.cancelled:
                    units = variants.setdefault((line.order_external_id, line.key), {})
                    units[line.variant_id] = units.get(line.variant_id, 0) + line.quantity
            purchases = _by_product(lines)
            for w in by_contact[contact_id]:
                mine = purchases.get(w.product_key, [])
                at = next((j for j, p in enumerate(mine) if p.order_external_id == w.order_external_id), None)
                if at is None:
                    continue
                cart: dict[str | None, int] = {}
                for p in one_purchase(mine[:at + 1]):
                    for variant, units in variants[(p.order_external_id, w.product_key)].items():
                        cart[variant] = cart.get(variant, 0) + units
                out[w.id] = cart
    return out


def _cart(w: Any, units: dict[str | None, int]) -> list[tuple[str | None, int]]:
    """(variant, quantity) to offer for a window whose purchase holds several variants of its product: each
    with its own units (``units``: its order's, or ``_one_purchase_units`` for one split over orders). The
    window's units beyond them (its orders changed since the scan counted them) go to the window's variant."""
    cart = dict(units)
    extra = w.quantity - sum(cart.values())
    if extra > 0:
        cart[w.variant_id] = cart.get(w.variant_id, 0) + extra
    return list(cart.items())


CT: Table = m.Contact.__table__  # type: ignore[assignment]
_EMAIL = func.lower(func.trim(CT.c.email))  # as ix_contacts_store_email indexes it
# An order that says she restocked: not called off, and paid, paying at the door, or awaiting her
# payment (a bank transfer on hold, a checkout left at the card page): she will not be asked to buy
# what she has just ordered. An unpaid one only holds the window (``_reordered_since``).
_NOT_A_REORDER = ("failed", "voided", "refunded")
_SETTLED = sorted(state.value for state in ev.PAID_AS_SHE_KNOWS)


def _customers(conn: Connection, store_id: int, contact_ids: list[int]) -> dict[int, set[int]]:
    """Each contact's customer: every contact of the store sharing her email or platform customer id
    (a reorder placed under another phone number is another contact). Two queries by index for the lot."""
    mine = conn.execute(select(CT.c.id, CT.c.email, CT.c.external_customer_id).where(CT.c.id.in_(contact_ids))).all()
    emails = {c.id: email_key(c.email) for c in mine}
    accounts = {c.id: c.external_customer_id for c in mine}
    by_email: dict[str, set[int]] = defaultdict(set)
    by_account: dict[str, set[int]] = defaultdict(set)
    wanted_emails, wanted_accounts = sorted({e for e in emails.values() if e}), sorted({a for a in accounts.values() if a})
    if wanted_emails:
        for cid, email in conn.execute(select(CT.c.id, _EMAIL).where(CT.c.store_id == store_id, _EMAIL.in_(wanted_emails))):
            by_email[email].add(cid)
    if wanted_accounts:
        for cid, account in conn.execute(select(CT.c.id, CT.c.external_customer_id).where(
                CT.c.store_id == store_id, CT.c.external_customer_id.in_(wanted_accounts))):
            by_account[account].add(cid)
    return {cid: {cid} | by_email.get(emails.get(cid) or "", set()) | by_account.get(accounts.get(cid) or "", set()) for cid in contact_ids}


def _reordered_since(conn: Connection, store_id: int, windows: list[Any]) -> tuple[dict[int, str], set[int]]:
    """({window id: the order}, {window id}) for windows whose customer already ordered the product again
    after the window's order, under any of her contacts (``_customers``): paid, authorised or cash on
    delivery (the first: the window is ``reordered``), or still unpaid (the second: a bank transfer on
    hold, or a checkout she may yet abandon, so the window waits, and opens if that order is cancelled).
    The scans only see a paid (or COD, or shipped) order of the same contact. Three queries for the lot,
    however many windows."""
    if not windows:
        return {}, set()
    customers = _customers(conn, store_id, sorted({w.contact_id for w in windows}))
    everyone = sorted(set().union(*customers.values()))
    orders = (select(O.c.contact_id, O.c.external_id, O.c.placed_at, L.c.product_id, L.c.sku, L.c.title,
                     (O.c.payment_state.in_(_SETTLED) | O.c.is_cod).label("settled"))
              .select_from(O.join(L, L.c.order_id == O.c.id))
              .where(O.c.store_id == store_id, O.c.contact_id.in_(everyone), O.c.placed_at > min(w.placed_at for w in windows),
                     O.c.cancelled_at.is_(None), O.c.test.is_(False), O.c.payment_state.not_in(_NOT_A_REORDER))
              .order_by(O.c.placed_at))
    later: dict[tuple[int, str], list[tuple[datetime, str, bool]]] = defaultdict(list)  # (contact, product) -> [(placed, order, settled)]
    for contact_id, external_id, placed_at, product_id, sku, title, settled in conn.execute(orders):
        later[(contact_id, product_key(product_id, sku, title))].append((placed_at, external_id, bool(settled)))
    found: dict[int, str] = {}
    waiting: set[int] = set()
    for w in windows:
        hits = [(at, oid, settled) for cid in customers[w.contact_id] for at, oid, settled in later.get((cid, w.product_key), ())
                if at > w.placed_at and oid != w.order_external_id]
        paid = [(at, oid) for at, oid, settled in hits if settled]
        if paid:
            found[w.id] = min(paid)[1]
        elif hits:
            waiting.add(w.id)
    return found, waiting


SOLD_OUT_RECHECK = timedelta(hours=6)


def _not_buyable(conn: Connection, store_id: int, windows: list[Any]) -> dict[str, bool]:
    """{product key: available} of these windows' products that cannot be bought now (no longer
    sold, or sold out); one query for the lot."""
    keys = sorted({w.product_key for w in windows})
    found: dict[str, bool] = {}
    for i in range(0, len(keys), 500):
        rows = conn.execute(select(PA.c.product_key, PA.c.available).where(PA.c.store_id == store_id, PA.c.product_key.in_(keys[i:i + 500])))
        found.update((key, bool(available)) for key, available in rows)
    return found


def open_due_windows(db: Database, store: Any, store_id: int, now: datetime, *, limit: int = 500,
                     runner: JourneyRunner | None = None, skip: Iterable[int] = ()) -> OpenReport:
    """Open up to ``limit`` due windows into the reorder journey; call until it opens none.

    The windows open in one savepoint; if opening one raises (a journey's bug, a value the
    database refuses), that savepoint is rolled back and they open again one savepoint each:
    the one that raises stays pending (logged, in ``failed``) and the others open, instead of
    the whole batch failing tick after tick. ``skip``: windows that failed earlier in this tick."""
    config = config_for(store)
    report = OpenReport()
    if config is None:
        return report
    runner = runner or JourneyRunner()
    late = now - timedelta(days=config.late_days)
    skip = sorted(set(skip))
    with db.write_lock(), db.engine.begin() as conn:
        query = (select(W).where(W.c.store_id == store_id, W.c.status == "pending", W.c.opens_at <= now)
                 .order_by(W.c.opens_at).limit(limit))
        if skip:
            query = query.where(W.c.id.not_in(skip))
        if conn.dialect.name == "postgresql":
            query = query.with_for_update(skip_locked=True)
        rows = conn.execute(query).all()
        # a window planned before her erasure closed it (earlier versions planned some after it): never opened
        erased = erased_contacts(conn, store_id, {w.contact_id for w in rows}) if rows else set()
        redacted = [{"_id": w.id} for w in rows if w.contact_id in erased]
        rows = [w for w in rows if w.contact_id not in erased]
        bought = _still_bought(conn, store_id, rows)
        not_buyable = _not_buyable(conn, store_id, rows) if rows else {}
        expired, gone, held, due = [], [], [], []
        for w in rows:
            if (w.order_external_id, w.product_key) not in bought:
                gone.append({"_id": w.id, "why": "not_a_line"})
                continue
            if not not_buyable.get(w.product_key, True):
                gone.append({"_id": w.id, "why": NOT_SOLD})
                continue
            if w.opens_at < late:
                expired.append({"_id": w.id})
                continue
            if w.product_key in not_buyable:  # sold out: held (checked again later) until it is back or the window is too late
                held.append({"_id": w.id})
                continue
            due.append(w)
        reordered, unpaid = _reordered_since(conn, store_id, due)
        to_open: list[Any] = []
        for w in due:
            if w.id in reordered:  # no reminder: it never ran, so nothing can be credited to it
                continue
            if w.id in unpaid:  # her reorder waits for its payment: ask again later (it opens if that order is cancelled)
                held.append({"_id": w.id})
                continue
            to_open.append(w)
        later = _ordered_since(conn, store_id, to_open) if to_open else set()
        split = _one_purchase_units(conn, store_id, [w for w in to_open if w.quantity > sum(bought[(w.order_external_id, w.product_key)].values())])
        carts = {w.id: _cart(w, split.get(w.id) or bought[(w.order_external_id, w.product_key)]) for w in to_open}
        try:
            with conn.begin_nested():
                for w in to_open:
                    _open_window(conn, runner, store, store_id, config, w, now, w.id in later, carts[w.id])
            opened = [{"_id": w.id} for w in to_open]
        except Exception:  # rolled back: again, one savepoint per window
            opened = []
            for w in to_open:
                try:
                    with conn.begin_nested():
                        _open_window(conn, runner, store, store_id, config, w, now, w.id in later, carts[w.id])
                except Exception as exc:
                    report.failed[w.id] = (describe_error(exc).splitlines() or [""])[0][:300]
                    log.error("reorder window %s of store %s could not be opened, left pending for the next tick: %s",
                              w.id, store.key, report.failed[w.id], exc_info=None if isinstance(exc, DBAPIError) else exc,
                              extra={"store": store.key, "window": w.id})
                else:
                    opened.append({"_id": w.id})
        if redacted:
            conn.execute(update(W).where(W.c.id == bindparam("_id")).values(status=REDACTED, updated_at=now), redacted)
        if gone:
            conn.execute(update(W).where(W.c.id == bindparam("_id")).values(status="cancelled", cancel_reason=bindparam("why"), updated_at=now), gone)
        if expired:
            conn.execute(update(W).where(W.c.id == bindparam("_id")).values(status="expired", updated_at=now), expired)
        if reordered:
            conn.execute(update(W).where(W.c.id == bindparam("_id")).values(status="reordered", reorder_order_id=bindparam("by"), updated_at=now),
                         [{"_id": wid, "by": oid} for wid, oid in reordered.items()])
        if held:
            conn.execute(update(W).where(W.c.id == bindparam("_id")).values(opens_at=now + SOLD_OUT_RECHECK, updated_at=now), held)
        if opened:
            conn.execute(update(W).where(W.c.id == bindparam("_id")).values(status="opened", opened_at=now, updated_at=now), opened)
    report.opened, report.expired, report.reordered, report.redacted = len(opened), len(expired), len(reordered), len(redacted)
    report.cancelled, report.held = len(gone), len(held)
    return report


_ORDERS_OF_WINDOWS = select(O.c.contact_id, O.c.external_id, O.c.placed_at, O.c.cancelled_at, O.c.payment_state).where(
    O.c.store_id == bindparam("sid"),
    or_(O.c.contact_id.in_(bindparam("cids", expanding=True)), O.c.external_id.in_(bindparam("oids", expanding=True))))


def _ordered_since(conn: Connection, store_id: int, windows: list[Any]) -> set[int]:
    """The windows whose customer placed an order after the window's that still counts (not called off):
    its stage is hers (a paid order waiting to ship: post-purchase), and the reminder must not move her to
    retention. One read of the batch's customers' orders (a tick's, not the processor's batch path)."""
    placed: dict[str, Any] = {}  # the windows' orders' placing, by external id
    standing: dict[int, list[Any]] = {}  # the placing of each customer's orders that still count
    for i in range(0, len(windows), 500):
        part = windows[i:i + 500]
        params = {"sid": store_id, "cids": sorted({w.contact_id for w in part if w.contact_id is not None}),
                  "oids": sorted({w.order_external_id for w in part})}
        for r in conn.execute(_ORDERS_OF_WINDOWS, params):
            placed[r.external_id] = r.placed_at
            if r.contact_id is not None and not ev.called_off(r.cancelled_at, r.payment_state):
                standing.setdefault(r.contact_id, []).append(r.placed_at)
    out: set[int] = set()
    for w in windows:
        at = placed.get(w.order_external_id)
        if w.contact_id is not None and at is not None and any(later > at for later in standing.get(w.contact_id, ())):
            out.add(w.id)
    return out


def _open_window(conn: Connection, runner: JourneyRunner, store: Any, store_id: int, config: ReorderConfig, w: Any,
                 now: datetime, ordered_since: bool, cart: Sequence[tuple[str | None, int]] = ()) -> None:
    """Hand one due window to the journeys (``ReorderWindowOpened``); ``ordered_since``: ``_ordered_since``;
    ``cart``: the variants its link offers (``_cart``)."""
    busy = busy_with(conn, store_id, w.contact_id, now)
    event = ev.ReorderWindowOpened(
        window_id=w.id, order_external_id=w.order_external_id, product_key=w.product_key, product_id=w.product_id,
        variant_id=w.variant_id, sku=w.sku, title=w.title, quantity=w.quantity, opens_at=w.opens_at, cycle_days=w.cycle_days,
        cycle_source=w.cycle_source, link=reorder_link(store, config, w.variant_id, w.product_id, w.quantity, cart), busy_with=busy,
        ordered_since=ordered_since,
    )
    runner.on_event(conn, store, store_id, event, w.contact_id, now)


# -- a product that stops being sold, and is sold again ---------------------------------------------
def product_not_sold(conn: Connection, store: Any, store_id: int, keys: Iterable[str], now: datetime) -> None:
    """Cancel the pending windows of a product the store stopped selling (by any of its keys), at once:
    no reminder may link to it. No full scan is needed: every scan's ``CycleBook`` plans none for it.
    The runs of its windows already opened are paused (``_pause_runs_not_sold``)."""
    keys = sorted(set(keys))
    if keys:
        conn.execute(update(W).where(W.c.store_id == store_id, W.c.status == "pending", W.c.product_key.in_(keys))
                     .values(status="cancelled", cancel_reason=NOT_SOLD, updated_at=now))
        _pause_runs_not_sold(conn, store, store_id, keys, now)


def product_sold_out(conn: Connection, store: Any, store_id: int, keys: Iterable[str], now: datetime) -> None:
    """A product still sold ran out of stock: its pending windows stay (each is held as it comes due, until the
    product is back), but the runs of its windows already opened are paused as for a product no longer sold, their
    waiting messages skipped as ``sold_out``: a reminder held for quiet hours when the last unit sold must not give
    her a one-tap link to a product she cannot buy. Back in stock, they go on (``product_back_in_stock``)."""
    keys = sorted(set(keys))
    if keys:
        _pause_runs_not_sold(conn, store, store_id, keys, now, SOLD_OUT)


def product_back_in_stock(conn: Connection, store: Any, store_id: int, keys: Iterable[str], now: datetime) -> None:
    """A sold-out product still sold is back in stock: the runs paused meanwhile go on (``_resume_runs_sold_again``)."""
    keys = sorted(set(keys))
    if keys:
        _resume_runs_sold_again(conn, store, store_id, keys, now)


# the opened windows of a product's keys still within attribution (their runs may be active); by the (store, status,
# opens_at) index: the product keys and the opening time are checked on the store's opened windows
_OPENED_OF_PRODUCTS = select(W.c.contact_id, W.c.order_external_id, W.c.product_key).where(
    W.c.store_id == bindparam("sid"), W.c.status == "opened", W.c.product_key.in_(bindparam("keys", expanding=True)),
    W.c.opened_at >= bindparam("since"))


def _runs_of_opened(conn: Connection, store: Any, store_id: int, keys: list[str], now: datetime) -> list[Any]:
    """The active reorder runs of the product's opened windows, in id order. Runs live ``attribution_days`` from
    their window's opening, so only windows opened since then are looked at. One read of the windows per 500 keys
    and one of the runs per 500 of their customers (``state.active_runs_of``), not one per customer: a stock flip,
    which WooCommerce sends each time the last unit sells, runs in the inbox batch."""
    from connector.state import active_runs_of

    config = config_for(store)
    since = now - timedelta(days=config.attribution_days if config is not None else 0)
    subjects: dict[int, set[str]] = defaultdict(set)
    for i in range(0, len(keys), 500):
        for contact_id, order_id, key in conn.execute(_OPENED_OF_PRODUCTS, {"sid": store_id, "keys": keys[i:i + 500], "since": since}):
            if contact_id is not None:
                subjects[contact_id].add(f"reorder:{order_id}:{key}"[:160])
    return [run for run in active_runs_of(conn, store_id, subjects)
            if run.journey == JOURNEY and run.subject in subjects.get(run.contact_id, ())]


def _pause_runs_not_sold(conn: Connection, store: Any, store_id: int, keys: list[str], now: datetime, why: str = NOT_SOLD) -> None:
    """Pause the reorder runs of a product no longer sold (``why``: ``not_sold``; ``sold_out``: still sold, out of
    stock): what they still have waiting (a reminder held for the morning by quiet hours, its follow-up) is skipped
    (as ``why``), for it must not link her to a product she cannot buy, and their timer waits for the end of
    attribution (no follow-up while it is so). Paused, not ended: a product drafted for a two-minute edit comes back
    (``_resume_runs_sold_again``), and a run whose reminder went out goes on listening, so her reorder is still
    credited to it. One whose product never comes back ends with its attribution (``why`` if its reminder never
    went out). A run already paused stays as it was (sold out, then unpublished: its messages were skipped as the
    first, and are put back as that). All the runs together: their messages skipped in one pass (``skip_waiting``),
    their states written as one batch."""
    from connector.journeys.reorder import NOT_SOLD as PAUSED, PAUSED_FOR, RESUME_AT, STEPS, WITHHELD
    from connector.outbox.queue import step_key
    from connector.outbox.store import skip_waiting
    from connector.storage.sql import update_by_ids

    runs = [r for r in _runs_of_opened(conn, store, store_id, keys, now) if not (r.state or {}).get(PAUSED)]
    if not runs:
        return
    step_keys = {run.id: {step: step_key(JOURNEY, step, run.subject)[:255] for step in STEPS} for run in runs}
    waiting = skip_waiting(conn, store_id, sorted(k for theirs in step_keys.values() for k in theirs.values()), why, now)
    changes = []
    for run in runs:
        state = run.state or {}
        due = run.next_due_at.isoformat() if run.next_due_at is not None else None
        ends = datetime.fromisoformat(state["attribution_ends"]) if state.get("attribution_ends") else run.next_due_at
        withheld = [step for step, key in step_keys[run.id].items() if key in waiting]
        paused = {**state, PAUSED: now.isoformat(), WITHHELD: withheld, RESUME_AT: due, **({PAUSED_FOR: why} if why != NOT_SOLD else {})}
        changes.append((run.id, {"state": paused, "next_due_at": ends, "updated_at": now}))
    update_by_ids(conn, RUNS, changes)


def _resume_runs_sold_again(conn: Connection, store: Any, store_id: int, keys: list[str], now: datetime) -> None:
    """The product can be bought again (sold again, in stock): its paused runs (``_pause_runs_not_sold``) go on. What
    they had waiting is queued again (the same rows, put back, planned as a message queued now would be:
    ``queue.put_back``) and their timer is what it was (a follow-up whose time passed goes now); a reminder withdrawn
    before it went out only if it is still timely, as a window not yet opened would be (due within ``late_days``):
    one no longer timely ends its run (``not_sold``, or ``sold_out``). All the runs together: their messages put back
    in one pass per reason withheld, their states written as one batch."""
    from connector.journeys.reorder import NOT_SOLD as PAUSED, PAUSED_FOR, RESUME_AT, WITHHELD
    from connector.outbox.queue import put_back, step_key
    from connector.storage.sql import update_by_ids

    runs = [r for r in _runs_of_opened(conn, store, store_id, keys, now) if (r.state or {}).get(PAUSED)]
    if not runs:
        return
    config = config_for(store)
    late = now - timedelta(days=config.late_days if config is not None else 0)
    window_ids = sorted({int(r.state["window_id"]) for r in runs if r.state.get("window_id") is not None})
    opens = {r.id: r.opens_at for i in range(0, len(window_ids), 500)
             for r in conn.execute(select(W.c.id, W.c.opens_at).where(W.c.id.in_(window_ids[i:i + 500])))}
    changes = []
    to_put_back: dict[str, list[str]] = defaultdict(list)  # by what their messages were skipped as
    for run in runs:
        state = {k: v for k, v in run.state.items() if k not in (PAUSED, WITHHELD, RESUME_AT, PAUSED_FOR)}
        why = run.state.get(PAUSED_FOR) or NOT_SOLD  # what its messages were skipped as
        withheld = list(run.state.get(WITHHELD) or ())
        at = opens.get(run.state.get("window_id"))
        if "reminder" in withheld and (at is None or at < late):
            changes.append((run.id, {"status": "finished", "state": {**state, "outcome": why}, "next_due_at": None, "updated_at": now}))
            continue
        to_put_back[why].extend(step_key(JOURNEY, step, run.subject) for step in withheld)
        resume = run.state.get(RESUME_AT)
        due = max(datetime.fromisoformat(resume), now) if resume else run.next_due_at
        changes.append((run.id, {"state": state, "next_due_at": due, "updated_at": now}))
    for why, step_keys in sorted(to_put_back.items()):
        put_back(conn, store=store, store_id=store_id, keys=step_keys, reason=why, now=now)
    update_by_ids(conn, RUNS, changes)


def product_sold_again(conn: Connection, store: Any, store_id: int, keys: Iterable[str], now: datetime, *, in_stock: bool = True) -> int:
    """Make pending again the windows cancelled only because the product was not sold, that are still
    ahead or came due within ``late_days`` (as ``open_due_windows`` would still message them); older ones,
    and those whose order has been called off since, stay cancelled. The runs of its opened windows paused
    meanwhile go on (``_resume_runs_sold_again``), once it is ``in_stock`` too (sold again but sold out, they wait
    for the stock, ``product_back_in_stock``). The number of windows made pending.

    Found through ix_reorder_windows_due (cancelled windows from the cut-off on), not a scan; the full
    scan that being sold again forces next replans them on the cycles of the day, and plans what was
    bought while the product was not sold."""
    keys = sorted(set(keys))
    if not keys:
        return 0
    config = config_for(store)
    since = now - timedelta(days=config.late_days if config is not None else 0)
    called_off = exists().where(O.c.store_id == W.c.store_id, O.c.external_id == W.c.order_external_id,
                                or_(O.c.cancelled_at.is_not(None), O.c.payment_state.in_(CALLED_OFF_STATES)))
    made_pending = conn.execute(
        update(W).where(W.c.store_id == store_id, W.c.status == "cancelled", W.c.opens_at >= since, W.c.product_key.in_(keys),
                        W.c.cancel_reason == NOT_SOLD, ~called_off)
        .values(status="pending", cancel_reason=None, updated_at=now)).rowcount
    if in_stock:
        _resume_runs_sold_again(conn, store, store_id, keys, now)
    return made_pending


def run_reorder_tick(db: Database, store: Any, store_id: int, now: datetime, *, max_open: int = 10_000) -> tuple[ScanReport, OpenReport]:
    """What the scheduled job does each tick: refresh, then open everything due (``failed``: the
    windows whose opening raised; they stay pending, and the job reports them). It goes on while a batch
    moves any window (a batch of 500 that were only cancelled or held must not keep the due ones behind
    it waiting for the next tick), up to ``max_open`` opened or expired."""
    scan = refresh_windows(db, store, store_id, now)
    total = OpenReport()
    while total.opened + total.expired < max_open:
        step = open_due_windows(db, store, store_id, now, skip=total.failed)  # one that raised is tried again next tick
        total.opened += step.opened
        total.expired += step.expired
        total.reordered += step.reordered
        total.redacted += step.redacted
        total.cancelled += step.cancelled
        total.held += step.held
        total.failed.update(step.failed)
        if step.opened + step.expired + step.reordered + step.redacted + step.cancelled + step.held == 0:
            break  # nothing moved (at most windows that raised): the next tick tries them again
        # a batch that only cancelled or held windows moved them out of the due ones: those behind it go now, not a tick later
    return scan, total


def upcoming(db: Database, store_id: int, until: datetime, *, limit: int = 500) -> list[Any]:
    """Windows not yet opened (and those due now), soonest first, with the customer's name."""
    CT: Table = m.Contact.__table__  # type: ignore[assignment]
    with db.engine.connect() as conn:
        return list(conn.execute(
            select(W, CT.c.first_name, CT.c.phone_e164)
            .select_from(W.join(CT, CT.c.id == W.c.contact_id))
            .where(W.c.store_id == store_id, W.c.status == "pending", W.c.opens_at <= until)
            .order_by(W.c.opens_at).limit(limit)
        ))


