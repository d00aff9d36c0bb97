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
instead of messaged.
"""

from __future__ import annotations

import functools
import logging
import time
from collections import defaultdict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Connection, Table, and_, bindparam, exists, func, or_, select, update
from sqlalchemy.dialects import postgresql, sqlite

from connector import events as ev
from connector.journeys.reorder import ReorderConfig
from connector.journeys.runner import JourneyRunner
from connector.reorder.cycles import CycleBook, Purchase, customer_cadence, learned_cycle, product_key, unit_intervals
from connector.storage import models as m
from connector.storage.db import Database
from connector.sync import read_cursor, upsert_cursor

log = logging.getLogger("storeloop.reorder")

JOURNEY = "reorder"
CURSOR = "reorder_windows"
RELEARNED = "reorder_relearned"
RELEARN_EVERY = timedelta(hours=24)
OVERLAP = timedelta(minutes=5)  # rows committed just after a scan started, with an earlier updated_at
WRITE_BATCH = 5000

W: Table = m.ReorderWindow.__table__  # type: ignore[assignment]
O: Table = m.Order.__table__  # type: ignore[assignment]
L: Table = m.OrderLine.__table__  # type: ignore[assignment]
F: Table = m.Fulfillment.__table__  # type: ignore[assignment]
C: Table = m.ProductCycle.__table__  # type: ignore[assignment]
RUNS: Table = m.JourneyRun.__table__  # type: ignore[assignment]


def config_for(store: Any) -> ReorderConfig | None:
    cfg = store.enabled_journeys().get(JOURNEY)
    return cfg if isinstance(cfg, ReorderConfig) else None


def reorder_link(store: Any, config: ReorderConfig, variant_id: str | None, product_id: str | None, quantity: int) -> str | None:
    """Shopify: a cart permalink (platform-facts A9); WooCommerce: the add-to-cart link."""
    qty = max(1, quantity)
    if store.platform == "shopify":
        if not variant_id:
            return None
        variant = variant_id.rsplit("/", 1)[-1]  # a GraphQL gid or a plain id
        base = str(config.storefront_url or f"https://{store.shop_domain}").rstrip("/")
        link = f"{base}/cart/{variant}:{qty}"
        return f"{link}?discount={config.discount_code}" if config.discount_code else link
    item = variant_id or product_id
    if not item:
        return None
    base = str(config.storefront_url or store.site_url).rstrip("/")
    return f"{base}/?add-to-cart={item}&quantity={qty}"


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

    @property
    def key(self) -> str:
        return product_key(self.product_id, self.sku, self.title)


def _history_query(store_id: int, contact_ids: list[int] | None) -> Any:
    delivered = select(func.min(F.c.delivered_at)).where(F.c.store_id == O.c.store_id, F.c.order_external_id == O.c.external_id)
    fulfilled = select(func.min(F.c.created_at)).where(F.c.store_id == O.c.store_id, F.c.order_external_id == O.c.external_id)
    q = (
        select(O.c.contact_id, O.c.external_id, O.c.placed_at, O.c.cancelled_at, L.c.product_id, L.c.variant_id, L.c.sku,
               L.c.title, L.c.quantity, delivered.scalar_subquery().label("delivered_at"),
               fulfilled.scalar_subquery().label("fulfilled_at"))
        .select_from(O.join(L, L.c.order_id == O.c.id))
        .where(O.c.store_id == store_id, O.c.contact_id.is_not(None), O.c.test.is_(False))
        .order_by(O.c.contact_id, O.c.placed_at, O.c.id)
    )
    if contact_ids is not None:
        q = q.where(O.c.contact_id.in_(contact_ids))
    return q


def _per_contact(rows: Iterable[Any]) -> Iterator[tuple[int, list[Line]]]:
    """Group the history (ordered by contact) into one list of lines per customer."""
    current: int | None = None
    lines: list[Line] = []
    for r in rows:
        if r.contact_id != current:
            if current is not None:
                yield current, lines
            current, lines = r.contact_id, []
        lines.append(Line(r.external_id, r.placed_at, r.cancelled_at is not None, r.product_id, r.variant_id, r.sku, r.title or "",
                          max(1, r.quantity or 1), r.delivered_at, r.fulfilled_at))
    if current is not None:
        yield current, lines


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
    return {k: sorted(v.values(), key=lambda x: x.placed_at) for k, v in out.items()}


# -- computing windows -----------------------------------------------------------------------
@dataclass
class Plan:
    """What one scan writes."""

    windows: list[dict[str, Any]] = field(default_factory=list)
    reordered: list[dict[str, Any]] = field(default_factory=list)  # older purchase -> the order that replaced it
    cancelled_orders: set[str] = field(default_factory=set)


def plan_contact(contact_id: int, lines: list[Line], book: CycleBook, config: ReorderConfig, now: datetime, plan: Plan) -> None:
    """Windows for one customer's history (pure apart from filling ``plan``)."""
    plan.cancelled_orders.update(line.order_external_id for line in lines if line.cancelled)
    for key, purchases in _by_product(lines).items():
        latest = purchases[-1]
        for before, after in zip(purchases, purchases[1:]):
            plan.reordered.append({"o": before.order_external_id, "k": key, "by": after.order_external_id, "now": now})
        own = customer_cadence([Purchase(p.placed_at, p.quantity) for p in purchases]) if len(purchases) >= 2 else None
        found = book.resolve(key=key, product_id=latest.product_id, variant_id=latest.variant_id, sku=latest.sku, customer=own)
        if found is None:
            continue  # nothing knows this product's cycle yet
        days, source = found
        if latest.delivered_at is not None:
            anchor, anchor_at = "delivered", latest.delivered_at
        elif latest.fulfilled_at is not None:
            anchor, anchor_at = "fulfilled", latest.fulfilled_at + timedelta(days=config.transit_days)
        else:
            anchor, anchor_at = "placed", latest.placed_at + timedelta(days=config.transit_days)
        opens_at = anchor_at + timedelta(days=days * latest.quantity - config.lead_days)
        plan.windows.append(dict(
            contact_id=contact_id, order_external_id=latest.order_external_id, product_key=key, product_id=latest.product_id,
            variant_id=latest.variant_id, sku=latest.sku, title=latest.title[:255], quantity=latest.quantity,
            placed_at=latest.placed_at, anchor=anchor, anchor_at=anchor_at, cycle_days=round(days, 3), cycle_source=source,
            opens_at=opens_at, status="pending", updated_at=now,
        ))


def learn_cycles(histories: Iterable[tuple[int, list[Line]]], min_repeat_buyers: int) -> dict[str, tuple[float, int]]:
    """Each product's median per-unit interval over its repeat buyers: {key: (days, buyers)}."""
    per_product: dict[str, list[list[float]]] = defaultdict(list)
    for _, lines in histories:
        for key, purchases in _by_product(lines).items():
            if len(purchases) >= 2:
                intervals = unit_intervals([Purchase(p.placed_at, p.quantity) for p in purchases])
                if intervals:
                    per_product[key].append(intervals)
    out: dict[str, tuple[float, int]] = {}
    for key, buyers in per_product.items():
        learned = learned_cycle(buyers, min_repeat_buyers)
        if learned is not None:
            out[key] = learned
    return out


# -- writing ---------------------------------------------------------------------------------
@functools.cache
def _upsert(dialect: str) -> Any:
    ins = (postgresql.insert if dialect == "postgresql" else sqlite.insert)(W)
    changed = {c: ins.excluded[c] for c in ("contact_id", "product_id", "variant_id", "sku", "title", "quantity", "placed_at", "anchor",
                                            "anchor_at", "cycle_days", "cycle_source", "opens_at", "updated_at")}
    # only a window that has not opened yet moves; an opened one keeps what the customer was told
    return ins.on_conflict_do_update(index_elements=["store_id", "order_external_id", "product_key"], set_=changed,
                                     where=W.c.status == "pending")


_MARK_REORDERED = (
    update(W)
    .where(W.c.store_id == bindparam("sid"), W.c.order_external_id == bindparam("o"), W.c.product_key == bindparam("k"),
           or_(W.c.status == "pending", W.c.status == "opened"))  # not in_(): an expanding IN cannot be executemany'd
    .values(status="reordered", reorder_order_id=bindparam("by"), updated_at=bindparam("now"))
)
_MARK_CANCELLED = (
    update(W)
    .where(W.c.store_id == bindparam("sid"), W.c.order_external_id == bindparam("o"), W.c.status == "pending")
    .values(status="cancelled", updated_at=bindparam("now"))
)


def _write(conn: Connection, store_id: int, plan: Plan, now: datetime, *, marks: bool = True) -> None:
    if plan.windows:
        conn.execute(_upsert(conn.dialect.name), [{"store_id": store_id, **w} for w in plan.windows])
    if marks and plan.reordered:
        conn.execute(_MARK_REORDERED, [{"sid": store_id, **r} for r in plan.reordered])
    if plan.cancelled_orders:
        conn.execute(_MARK_CANCELLED, [{"sid": store_id, "o": o, "now": now} for o in plan.cancelled_orders])


def _mark_all_reordered(conn: Connection, store_id: int, now: datetime) -> None:
    """Full scan: any live window with a later window of the same customer and product was reordered."""
    later = W.alias("later")
    newer = (
        select(later.c.order_external_id)
        .where(later.c.store_id == W.c.store_id, later.c.contact_id == W.c.contact_id, later.c.product_key == W.c.product_key,
               later.c.placed_at > W.c.placed_at)
        .order_by(later.c.placed_at)
        .limit(1)
        .scalar_subquery()
    )
    conn.execute(
        update(W)
        .where(W.c.store_id == store_id, W.c.status.in_(("pending", "opened")),
               exists().where(later.c.store_id == W.c.store_id, later.c.contact_id == W.c.contact_id,
                              later.c.product_key == W.c.product_key, later.c.placed_at > W.c.placed_at))
        .values(status="reordered", reorder_order_id=newer, updated_at=now)
    )


def _book(conn: Connection, store_id: int, config: ReorderConfig, learned: dict[str, float] | None = None) -> CycleBook:
    tags: dict[str, float] = {}
    stored: dict[str, float] = {}
    for row in conn.execute(select(C.c.product_key, C.c.source, C.c.cycle_days).where(C.c.store_id == store_id)):
        (tags if row.source == "tag" else stored)[row.product_key] = row.cycle_days
    return CycleBook(config=config.cycles, tags=tags, learned=stored if learned is None else learned,
                     min_days=config.min_cycle_days, max_days=config.max_cycle_days)


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


def refresh_windows(db: Database, store: Any, store_id: int, now: datetime, *, full: bool | None = None) -> ScanReport:
    """Bring the store's windows up to date; a full scan when asked, the first time, or daily."""
    config = config_for(store)
    if config is None:
        return ScanReport("off")
    started = time.perf_counter()
    cursor = read_cursor(db, store_id, CURSOR)
    relearned = read_cursor(db, store_id, RELEARNED)
    if full is None:
        full = cursor is None or relearned is None or now - datetime.fromisoformat(relearned) >= RELEARN_EVERY
    report = _full(db, store_id, config, now) if full else _incremental(db, store_id, config, now, datetime.fromisoformat(cursor))  # type: ignore[arg-type]
    upsert_cursor(db, store_id, CURSOR, now.isoformat())
    if full:
        upsert_cursor(db, store_id, RELEARNED, now.isoformat())
    report.seconds = time.perf_counter() - started
    log.info("reorder windows %s scan", report.mode, extra={"store": store.key, "customers": report.customers, "windows": report.windows,
                                                             "learned": report.learned, "seconds": round(report.seconds, 3)})
    return report


def _full(db: Database, store_id: int, config: ReorderConfig, now: datetime) -> ScanReport:
    report = ScanReport("full")
    with db.engine.connect() as conn:  # pass 1: learn, reading only
        learned = learn_cycles(_per_contact(conn.execute(_history_query(store_id, None))), config.min_repeat_buyers)
        book = _book(conn, store_id, config, {k: d for k, (d, _) in learned.items()})
    with db.write_lock(), db.engine.begin() as conn:
        _store_learned(conn, store_id, learned, now)
    report.learned = len(learned)
    plan = Plan()
    with db.engine.connect() as reader:  # pass 2: windows, written in short transactions
        for contact_id, lines in _per_contact(reader.execution_options(yield_per=2000).execute(_history_query(store_id, None))):
            report.customers += 1
            plan_contact(contact_id, lines, book, config, now, plan)
            if len(plan.windows) >= WRITE_BATCH:
                report.windows += len(plan.windows)
                with db.write_lock(), db.engine.begin() as conn:
                    _write(conn, store_id, plan, now, marks=False)
                plan = Plan()
    with db.write_lock(), db.engine.begin() as conn:
        report.windows += len(plan.windows)
        _write(conn, store_id, plan, now, marks=False)
        _mark_all_reordered(conn, store_id, now)
    return report


def _incremental(db: Database, store_id: int, config: ReorderConfig, now: datetime, since: datetime) -> ScanReport:
    report = ScanReport("incremental")
    since = since - OVERLAP
    with db.write_lock(), db.engine.begin() as conn:
        changed_orders = select(O.c.contact_id).where(O.c.store_id == store_id, O.c.updated_at >= since, O.c.contact_id.is_not(None))
        via_fulfilments = (
            select(O.c.contact_id)
            .select_from(F.join(O, and_(O.c.store_id == F.c.store_id, O.c.external_id == F.c.order_external_id)))
            .where(F.c.store_id == store_id, F.c.updated_at >= since, O.c.contact_id.is_not(None))
        )
        contacts = sorted(set(conn.execute(changed_orders).scalars()) | set(conn.execute(via_fulfilments).scalars()))
        if not contacts:
            return report
        book = _book(conn, store_id, config)
        plan = Plan()
        for i in range(0, len(contacts), 500):
            for contact_id, lines in _per_contact(conn.execute(_history_query(store_id, contacts[i:i + 500]))):
                report.customers += 1
                plan_contact(contact_id, lines, book, config, now, plan)
        report.windows = len(plan.windows)
        _write(conn, store_id, plan, now)
    return report


@dataclass
class OpenReport:
    opened: int = 0
    expired: int = 0


# "In another journey" = a run that still has a step scheduled (a COD ask waiting for its
# answer, a cart ladder) or a person on it; a delivery run that only listens is not busy.
_BUSY = select(RUNS.c.journey).where(
    RUNS.c.store_id == bindparam("sid"), RUNS.c.contact_id == bindparam("cid"), RUNS.c.journey != JOURNEY,
    ((RUNS.c.status == "active") & RUNS.c.next_due_at.is_not(None)) | (RUNS.c.status == "handoff"),
).distinct()


def open_due_windows(db: Database, store: Any, store_id: int, now: datetime, *, limit: int = 500,
                     runner: JourneyRunner | None = None) -> OpenReport:
    """Open up to ``limit`` due windows into the reorder journey; call until it opens none."""
    config = config_for(store)
    report = OpenReport()
    if config is None:
        return report
    runner = runner or JourneyRunner()
    late = now - timedelta(days=config.late_days)
    with db.write_lock(), db.engine.begin() as conn:
        query = (select(W).where(W.c.store_id == store_id, W.c.status == "pending", W.c.opens_at <= now)
                 .order_by(W.c.opens_at).limit(limit))
        if conn.dialect.name == "postgresql":
            query = query.with_for_update(skip_locked=True)
        rows = conn.execute(query).all()
        expired, opened = [], []
        for w in rows:
            if w.opens_at < late:
                expired.append({"_id": w.id})
                continue
            busy = tuple(conn.execute(_BUSY, {"sid": store_id, "cid": w.contact_id}).scalars())
            event = ev.ReorderWindowOpened(
                window_id=w.id, order_external_id=w.order_external_id, product_key=w.product_key, product_id=w.product_id,
                variant_id=w.variant_id, sku=w.sku, title=w.title, quantity=w.quantity, opens_at=w.opens_at, cycle_days=w.cycle_days,
                cycle_source=w.cycle_source, link=reorder_link(store, config, w.variant_id, w.product_id, w.quantity), busy_with=busy,
            )
            runner.on_event(conn, store, store_id, event, w.contact_id, now)
            opened.append({"_id": w.id})
        if expired:
            conn.execute(update(W).where(W.c.id == bindparam("_id")).values(status="expired", updated_at=now), expired)
        if opened:
            conn.execute(update(W).where(W.c.id == bindparam("_id")).values(status="opened", opened_at=now, updated_at=now), opened)
    report.opened, report.expired = len(opened), len(expired)
    return report


def run_reorder_tick(db: Database, store: Any, store_id: int, now: datetime, *, max_open: int = 10_000) -> tuple[ScanReport, OpenReport]:
    """What the scheduled job does each tick: refresh, then open everything due."""
    scan = refresh_windows(db, store, store_id, now)
    total = OpenReport()
    while total.opened + total.expired < max_open:
        step = open_due_windows(db, store, store_id, now)
        total.opened += step.opened
        total.expired += step.expired
        if step.opened + step.expired == 0:
            break
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


