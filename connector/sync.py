"""Reconciliation: fetch what changed at the store and feed it through the inbox.

Webhooks are not guaranteed (Shopify, platform-facts.md A1) or not retried at all
(WooCommerce, B3), so a periodic job asks the platform for every order updated since a
stored cursor and writes each one through ``write_items``: the same ingest path as a
webhook, so the processor, the stale-state check and the journeys treat both alike, and
the dedupe keys make re-reading an unchanged order a no-op.

- Shopify: GraphQL ``orders(sortKey: UPDATED_AT, query: "updated_at:>='…'")`` with cursor
  pagination (A6). Before each page ``wait_for_budget`` sleeps until the leaky bucket
  should hold the page's cost; a ``THROTTLED`` answer is slept off (its computed
  ``retry_after``) and retried a bounded number of times (A7). Pages are sorted by
  ``updatedAt``, so after each page's commit the cursor moves to the page's max
  ``updatedAt``: a crash re-reads at most one page.
- WooCommerce: ``GET /orders?modified_after=…`` by offset, each page overlapping the last by one order
  (B1); a 429/5xx is backed off (Retry-After when given). The client orders the list by
  id (stable pages while orders change), not by modification time, so a per-page cursor
  could skip an earlier-modified order on a later page: the cursor moves once, after the
  last page, to ``min(max date_modified seen, run start)``. A crash re-reads the window;
  the dedupe keys make that harmless.

What else a lost webhook would have said comes with the order where the platform's listing
has it: Shopify's order pages carry each order's fulfilments and the customer's marketing
consent (``fulfillments/*``, ``customers_marketing_consent/update`` and the WhatsApp consent
topic are given up after about 4 hours, A1), normalised to the events those webhooks produce;
a parcel heard before is no news, and a consent older than the stored one changes nothing, so a
re-read or a late webhook sends nothing twice. A consent changed on a customer none of whose
orders changed is read by the customers pass that follows the orders (``connector/customer_sync.py``:
``customers`` updated since its own cursor, ``customers_updated_at``); a failure of that pass is
reported (``customers_failed``) and leaves the orders read.

The window starts ``overlap`` before the cursor (clock skew, Shopify's search index lag,
orders committed out of order). The cursor is stored in ``sync_cursors`` and never moves
back (a ``since`` backfill reads from ``since`` but keeps a later stored cursor).

First sight of a fresh order: the journeys start on ``OrderPlaced``, which only an
``orders/create`` / ``order.created`` webhook produces. When the sync job finds an order
we have never stored, created within ``placed_within`` of now and not cancelled, it
stores it so that it normalises to ``OrderPlaced`` (Shopify: marker ``_storeloop.placed``
in the stored node; WooCommerce: topic ``order.created`` with the webhook's own dedupe
scheme), so a lost creation webhook still gets its confirmation / COD ask, exactly once
(journey runs are unique per order). Older unknown orders (backfills) are imported
silently as updates. A backfill that ran to its end is remembered (``orders_backfilled_since``),
so install stops suggesting one; with a ``progress`` callback the pager also learns the run's
total (Shopify ``ordersCount`` with the same search query, WooCommerce ``X-WP-Total``).

WooCommerce disables a webhook after repeated failed deliveries and never retries it: before
each WooCommerce run, the disabled webhooks delivered to this store's own address are switched
back on; others (another plugin's) are left alone; a failure is recorded in the report
(``webhooks_failed``) and the run goes on.

Products (``sync_products``): every product's tags and cycle metafield / meta go through the
inbox as product webhooks, so reorder cycles named on products nobody edited since install
are known (the worker runs it daily for stores with the reorder journey; a backfill runs it first).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any

import anyio.to_thread
from sqlalchemy import Connection, delete, select, update
from sqlalchemy.dialects import postgresql, sqlite

from adapters.sync_page import OrderPager, SyncedOrder
from connector.errors import RetryableError, SyncError  # noqa: F401  (SyncError is part of this module's API)
from connector.reinstall import caught_up_item
from connector.state import PLACED_WITHIN
from connector.storage.db import Database
from connector.storage.inbox import InboxItem, write_items
from connector.storage.models import Lease, Order, SyncCursor

log = logging.getLogger("storeloop.sync")

ORDERS_CURSOR = "orders_updated_at"
BACKFILL_CURSOR = "orders_backfilled_since"  # set when a backfill (``since``) ran to its end
PRODUCTS_CURSOR = "products_synced_at"
DEFAULT_LOOKBACK = timedelta(days=1)
DEFAULT_OVERLAP = timedelta(minutes=5)
MAX_ATTEMPTS = 5  # per page, for throttling / transient failures
MAX_BACKOFF = 60.0

Sleep = Callable[[float], Awaitable[Any]]
Progress = Callable[["SyncReport"], None]


@dataclass(slots=True)
class JobReport:
    """What one run of a cursor-driven sync job did (orders reconciliation, checkout poll)."""

    store_key: str
    platform: str
    pages: int = 0
    new_rows: int = 0
    cursor_before: datetime | None = None
    cursor_after: datetime | None = None
    window_start: datetime | None = None
    throttle_waits: int = 0  # budget waits + throttled/backed-off retries
    throttle_seconds: float = 0.0
    retries: int = 0

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        for key in ("cursor_before", "cursor_after", "window_start"):
            out[key] = out[key].isoformat() if out[key] else None
        out["throttle_seconds"] = round(self.throttle_seconds, 3)
        return out


@dataclass(slots=True)
class SyncReport(JobReport):
    orders_seen: int = 0
    customers_seen: int = 0  # Shopify: customers changed since the customers pass's cursor (their consent; connector/customer_sync.py)
    customers_cursor_after: datetime | None = None
    customers_failed: str | None = None  # why the customers pass failed (the orders pass's work stands)
    orders_total: int | None = None  # what the platform said the run would see (progress bar), when asked and told
    placed: int = 0  # first sight of a fresh order, stored so that it starts the journeys
    webhooks_reenabled: list[str] = field(default_factory=list)  # WooCommerce: "id topic" of ours switched back on
    webhooks_failed: list[str] = field(default_factory=list)  # "id topic: why" (or why none could be checked)
    caught_up: bool = False  # it ended a reinstalled store's wait: its timers and sends resume once that is heard

    def as_dict(self) -> dict[str, Any]:
        out = JobReport.as_dict(self)
        out["customers_cursor_after"] = self.customers_cursor_after.isoformat() if self.customers_cursor_after else None
        return out


# ---- cursors --------------------------------------------------------------------------


def _dialect_insert(conn: Connection, table: Any) -> Any:
    return (postgresql.insert if conn.dialect.name == "postgresql" else sqlite.insert)(table)


def upsert_cursor(db: Database, store_id: int, name: str, value: str | None) -> None:
    """Set a cursor (insert or update on (store_id, name)) in its own transaction."""
    now = datetime.now(timezone.utc)
    with db.write_lock(), db.engine.begin() as conn:
        stmt = _dialect_insert(conn, SyncCursor).values(store_id=store_id, name=name, value=value, updated_at=now)
        conn.execute(stmt.on_conflict_do_update(index_elements=["store_id", "name"], set_={"value": value, "updated_at": now}))


def read_cursor(db: Database, store_id: int, name: str) -> str | None:
    with db.engine.connect() as conn:
        return conn.execute(
            select(SyncCursor.value).where(SyncCursor.store_id == store_id, SyncCursor.name == name)
        ).scalar()


def parse_cursor(value: Any) -> datetime | None:
    """A stored time cursor (ISO 8601 text) as aware UTC; None when absent or unreadable."""
    if not isinstance(value, str) or not value.strip():
        return None
    try:
        dt = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
    except ValueError:
        return None
    return dt.replace(tzinfo=timezone.utc) if dt.tzinfo is None else dt.astimezone(timezone.utc)


def pager_for(store: Any, client: Any, *, count: bool = False) -> OrderPager:
    """The platform's order pager (the composition of core and adapters happens here).

    ``count``: also learn how many orders the run will see (``pager.total``) where that costs
    a request (Shopify's ``ordersCount``); WooCommerce says it on every page anyway.
    """
    if store.platform == "shopify":
        from adapters.shopify.sync import ShopifyOrderPager

        return ShopifyOrderPager(client, store.key, count=count)
    from adapters.woocommerce.sync import WooOrderPager

    return WooOrderPager(client)


def _known_orders(db: Database, store_id: int, external_ids: Iterable[str]) -> set[str]:
    ids = list(set(external_ids))
    if not ids:
        return set()
    with db.engine.connect() as conn:
        rows = conn.execute(select(Order.external_id).where(Order.store_id == store_id, Order.external_id.in_(ids)))
        return {r[0] for r in rows}


# ---- the job --------------------------------------------------------------------------


async def reconcile_orders(
    db: Database,
    store: Any,
    store_id: int,
    client: Any,
    *,
    now: datetime,
    overlap: timedelta = DEFAULT_OVERLAP,
    page_size: int = 100,
    since: datetime | None = None,
    progress: Progress | None = None,
    sleep: Sleep = asyncio.sleep,
    placed_within: timedelta = PLACED_WITHIN,
    max_attempts: int = MAX_ATTEMPTS,
    reenable_webhooks_under: str | None = None,
) -> SyncReport:
    """Fetch every order updated since the stored cursor (or ``since``) into the inbox; on Shopify,
    then the customers updated since their own cursor, for their consent (``connector/customer_sync.py``).

    ``progress`` is called after each committed page (and makes the pager learn the run's
    total, ``report.orders_total``). ``reenable_webhooks_under``: a WooCommerce store's own
    webhook address (``{public_url}/webhooks/woocommerce/{key}``): webhooks there that
    WooCommerce disabled are switched back on first, and the report says which (or why not).
    """
    if now.tzinfo is None:
        raise ValueError("now must be timezone-aware")
    stored = parse_cursor(await anyio.to_thread.run_sync(read_cursor, db, store_id, ORDERS_CURSOR))
    start = since if since is not None else (stored or now - DEFAULT_LOOKBACK)
    report = SyncReport(store_key=store.key, platform=store.platform, cursor_before=stored)
    report.window_start = start - overlap
    if reenable_webhooks_under is not None and store.platform == "woocommerce":
        await reenable_woocommerce_webhooks(store, client, reenable_webhooks_under, report)
    job = _Job(db, store, store_id, client, now, report, progress, sleep, placed_within, max_attempts, stored)
    await job.run(pager_for(store, client, count=progress is not None), report.window_start, page_size)
    await _customers_pass(db, store, store_id, client, report, now=now, overlap=overlap, page_size=page_size, sleep=sleep,
                          max_attempts=max_attempts)
    if since is not None:  # a backfill ran to its end: `storeloop install` stops suggesting one
        await anyio.to_thread.run_sync(upsert_cursor, db, store_id, BACKFILL_CURSOR, since.isoformat())
    if since is None or stored is None or since <= stored:
        # it read every order changed since the cursor, so those changed while the app was uninstalled:
        # a reinstalled store's timers and sends resume once the processor has heard them (connector/reinstall.py)
        caught_up = await anyio.to_thread.run_sync(caught_up_item, db, store_id)
        if caught_up is not None:
            report.caught_up = (await anyio.to_thread.run_sync(write_items, db, [caught_up]))[0]
    log.info("reconciled %s: %d page(s), %d order(s), %d customer(s), %d new, cursor %s -> %s", store.key, report.pages,
             report.orders_seen, report.customers_seen, report.new_rows, report.cursor_before, report.cursor_after)
    return report


async def _customers_pass(db: Database, store: Any, store_id: int, client: Any, report: SyncReport, **kw: Any) -> None:
    """Shopify: the consent of customers none of whose orders changed (connector/customer_sync.py). A failure
    is reported (``customers_failed``, a WARNING) and does not undo the orders read: a reinstalled store
    still resumes, and the scheduled job counts the tick as failed (jobs/scheduler.py)."""
    from connector.customer_sync import reconcile_customers
    from connector.job_health import safe_error

    try:
        await reconcile_customers(db, store, store_id, client, report, **kw)
    except Exception as exc:
        report.customers_failed = safe_error(exc)
        log.warning("customers' consent not read back", extra={"store": store.key, "reason": report.customers_failed})


@dataclass(slots=True)
class _Job:
    db: Database
    store: Any
    store_id: int
    client: Any
    now: datetime
    report: SyncReport
    progress: Progress | None
    sleep: Sleep
    placed_within: timedelta
    max_attempts: int
    cursor: datetime | None

    async def _write(self, items: list[InboxItem]) -> None:
        results = await anyio.to_thread.run_sync(write_items, self.db, items)
        self.report.new_rows += sum(results)

    async def _advance(self, value: datetime) -> None:
        """Move the stored cursor forward (never back); called after a page's commit."""
        if self.cursor is not None and value <= self.cursor:
            self.report.cursor_after = self.cursor
            return
        await anyio.to_thread.run_sync(upsert_cursor, self.db, self.store_id, ORDERS_CURSOR, value.isoformat())
        self.cursor = value
        self.report.cursor_after = value

    def _fresh(self, created_at: datetime | None) -> bool:
        return created_at is not None and created_at >= self.now - self.placed_within

    async def _retrying(self, call: Callable[[], Awaitable[Any]]) -> Any:
        return await retrying(call, self.store.key, self.report, self.max_attempts, self.sleep)

    async def run(self, pager: OrderPager, window_start: datetime, page_size: int) -> None:
        """Write each page through the inbox; move the cursor after each commit when pages are
        sorted by update time, else once at the end (never past the run's start)."""
        newest: datetime | None = None
        async for page in pager.pages(window_start, page_size, self._retrying, self._budget):
            page_newest = await self._store_page(pager, page)
            if page_newest is not None and (newest is None or page_newest > newest):
                newest = page_newest
            if pager.cursor_per_page and page_newest is not None:
                await self._advance(page_newest)
        if not pager.cursor_per_page and newest is not None:
            await self._advance(min(newest, self.now))
        if self.report.cursor_after is None:
            self.report.cursor_after = self.cursor

    async def _budget(self, cost: float) -> None:
        await budget(self.client, cost, self.report)

    async def _store_page(self, pager: OrderPager, page: list[SyncedOrder]) -> datetime | None:
        known = await anyio.to_thread.run_sync(
            _known_orders, self.db, self.store_id, [o.external_id for o in page if o.external_id]
        )
        items: list[InboxItem] = []
        newest: datetime | None = None
        for order in page:
            if order.updated_at is not None and (newest is None or order.updated_at > newest):
                newest = order.updated_at
            placed = order.external_id not in known and order.placeable and self._fresh(order.created_at)
            if placed:
                self.report.placed += 1
            topic, key, body = pager.inbox_entry(order, placed)
            items.append(InboxItem(store_id=self.store_id, source=pager.source, topic=topic, dedupe_key=key[:255],
                                   raw_body=body, headers={"x-storeloop-sync": "orders"}, triggered_at=order.updated_at))
        await self._write(items)
        self.report.pages += 1
        self.report.orders_seen += len(page)
        if pager.total is not None:
            self.report.orders_total = pager.total
        if self.progress is not None:
            self.progress(self.report)
        return newest


# ---- leases: one run per tick across workers ----------------------------------------------


async def retrying(call: Callable[[], Awaitable[Any]], store_key: str, report: Any, max_attempts: int,
                   sleep: Callable[[float], Awaitable[None]]) -> Any:
    """Run ``call``; on RetryableError sleep its retry_after (else exponential) and retry.

    Shared by every paging job (orders, abandoned checkouts); ``report`` counts the retries
    and the time slept (``retries``, ``throttle_waits``, ``throttle_seconds``).
    """
    for attempt in range(1, max_attempts + 1):
        try:
            return await call()
        except RetryableError as exc:
            if attempt >= max_attempts:
                raise
            wait = exc.retry_after if exc.retry_after is not None else min(MAX_BACKOFF, 2.0 ** (attempt - 1))
            wait = max(0.0, min(MAX_BACKOFF, float(wait)))
            log.info("%s: %s; retrying in %.1f s (attempt %d)", store_key, exc, wait, attempt)
            report.retries += 1
            report.throttle_waits += 1
            report.throttle_seconds += wait
            await sleep(wait)
    raise AssertionError("unreachable")  # pragma: no cover


async def budget(client: Any, cost: float, report: Any) -> None:
    """Wait until the platform's rate bucket should hold ``cost`` (Shopify), counting the wait."""
    waited = await client.wait_for_budget(cost)
    if waited > 0:
        report.throttle_waits += 1
        report.throttle_seconds += waited


def acquire_lease(db: Database, name: str, holder: str, ttl: timedelta, now: datetime | None = None) -> bool:
    """Take the named lease for ``ttl`` if it is free, expired, or already ours.

    Insert-if-absent, else a conditional UPDATE (expired or same holder): both are single
    statements, so two workers racing for one lease cannot both win (PostgreSQL re-checks
    the WHERE after the row lock; SQLite serialises writers).
    """
    now = now or datetime.now(timezone.utc)
    expires = now + ttl
    with db.write_lock(), db.engine.begin() as conn:
        stmt = _dialect_insert(conn, Lease).values(name=name, holder=holder, expires_at=expires)
        inserted = conn.execute(stmt.on_conflict_do_nothing(index_elements=["name"]).returning(Lease.name)).first()
        if inserted is not None:
            return True
        result = conn.execute(
            update(Lease)
            .where(Lease.name == name, (Lease.expires_at <= now) | (Lease.holder == holder))
            .values(holder=holder, expires_at=expires)
        )
        return result.rowcount == 1


def release_lease(db: Database, name: str, holder: str) -> None:
    with db.write_lock(), db.engine.begin() as conn:
        conn.execute(delete(Lease).where(Lease.name == name, Lease.holder == holder))


async def run_periodic(
    db: Database, holder: str, name: str, ttl: timedelta, fn: Callable[[], Awaitable[Any]],
    *, now: datetime | None = None,
) -> bool:
    """Run ``fn`` if this worker gets the lease ``name``; False when another holder has it.

    The lease is kept until it expires (not released after the run), so a second worker
    whose timer fires a moment later in the same tick does not run the job again; make
    ``ttl`` a little shorter than the job's interval. While ``fn`` runs the lease is renewed
    every third of ``ttl``, so a run longer than the lease is not joined by a second one. A
    failed run keeps the lease too: the next tick retries.
    """
    got = await anyio.to_thread.run_sync(lambda: acquire_lease(db, name, holder, ttl, now))
    if not got:
        log.debug("%s is held by another worker; skipping this tick", name)
        return False
    done = asyncio.Event()

    async def keep_lease() -> None:
        """A run longer than the lease (a full window scan of a big store) renews it, so no other
        worker starts the same job beside it."""
        while True:
            try:
                await asyncio.wait_for(done.wait(), timeout=max(0.05, ttl.total_seconds() / 3))
                return
            except asyncio.TimeoutError:
                pass
            if not await anyio.to_thread.run_sync(lambda: acquire_lease(db, name, holder, ttl)):
                log.warning("%s: lease lost during a long run", name)
                return

    keeper = asyncio.create_task(keep_lease())
    try:
        await fn()
    finally:
        done.set()
        await keeper
    return True


__all__ = [
    "BACKFILL_CURSOR", "ORDERS_CURSOR", "PRODUCTS_CURSOR", "ProductSyncReport", "SyncError", "SyncReport", "acquire_lease",
    "read_cursor", "reconcile_orders", "reenable_woocommerce_webhooks", "release_lease", "run_periodic", "same_url", "sync_products",
    "upsert_cursor", "woocommerce_delivery_url",
]


def woocommerce_delivery_url(public_base: str, store_key: str) -> str:
    """Where ``storeloop install woocommerce`` points a store's webhooks (connector/install/woocommerce.py)."""
    return f"{public_base.rstrip('/')}/webhooks/woocommerce/{store_key}"


def same_url(delivery_url: Any, ours: str) -> bool:
    """A webhook's ``delivery_url`` is ours (a trailing slash aside)."""
    return isinstance(delivery_url, str) and delivery_url.rstrip("/") == ours.rstrip("/")


async def reenable_woocommerce_webhooks(store: Any, client: Any, delivery_url: str | None, report: Any) -> None:
    """WooCommerce disables a webhook after repeated failures and never retries: switch ours back on.

    Ours = delivered to this store's address (``delivery_url``); a disabled webhook of another
    app or site is left alone. What was switched on goes to ``report.webhooks_reenabled``; a
    webhook that could not be (or a listing that failed) to ``report.webhooks_failed``, and
    the reconciliation that follows runs anyway (it is what fills the gap). Without a public
    URL (``server.public_url``) nothing can be told apart, so nothing is switched on.
    """
    if not delivery_url:
        report.webhooks_failed.append("not checked: server.public_url is not set, so our webhooks cannot be told apart")
        log.warning("disabled WooCommerce webhooks not checked: server.public_url is not set", extra={"store": store.key})
        return
    try:
        hooks = await client.disabled_webhooks()
    except Exception as exc:  # a 401 / 5xx / timeout here must not stop the reconciliation
        report.webhooks_failed.append(f"listing disabled webhooks failed: {exc.__class__.__name__}: {exc}")
        log.warning("could not list disabled WooCommerce webhooks", extra={"store": store.key, "reason": str(exc)})
        return
    for hook in hooks:
        if not same_url(hook.get("delivery_url"), delivery_url):
            continue
        label = f"{hook.get('id')} {hook.get('topic')}"
        try:
            await client.activate_webhook(hook["id"])
        except Exception as exc:
            report.webhooks_failed.append(f"{label}: {exc.__class__.__name__}: {exc}")
            log.warning("could not re-enable a WooCommerce webhook that WooCommerce had disabled",
                        extra={"store": store.key, "webhook_id": hook.get("id"), "topic": hook.get("topic"), "reason": str(exc)})
            continue
        report.webhooks_reenabled.append(label)
        log.warning("re-enabled a WooCommerce webhook that WooCommerce had disabled",
                    extra={"store": store.key, "webhook_id": hook.get("id"), "topic": hook.get("topic")})


# ---- products: their replenishment cycles (tags, metafield / meta) ----------------------------


@dataclass(slots=True)
class ProductSyncReport(JobReport):
    products_seen: int = 0


def product_pager_for(store: Any, client: Any) -> Any:
    if store.platform == "shopify":
        from adapters.shopify.sync import ShopifyProductPager

        return ShopifyProductPager(client, store.key)
    from adapters.woocommerce.sync import WooProductPager

    return WooProductPager(client)


async def sync_products(
    db: Database, store: Any, store_id: int, client: Any, *, now: datetime, page_size: int = 100,
    sleep: Sleep = asyncio.sleep, max_attempts: int = MAX_ATTEMPTS,
) -> ProductSyncReport:
    """Read every product (tags, the ``storeloop.replenish`` metafield / ``_storeloop_replenish``
    meta) into the inbox as a product webhook would bring it, page by page.

    A product's cycle tag is otherwise known only once the product is edited (its webhook).
    Always the whole catalogue (products are few next to orders, and a metafield edit may not
    move ``updatedAt``); a product whose tags and cycle did not change since the last run is
    a duplicate row and costs nothing more.
    """
    report = ProductSyncReport(store_key=store.key, platform=store.platform)
    pager = product_pager_for(store, client)

    async def retry(call: Callable[[], Awaitable[Any]]) -> Any:
        return await retrying(call, store.key, report, max_attempts, sleep)

    async def wait(cost: float) -> None:
        await budget(client, cost, report)

    async for page in pager.pages(page_size, retry, wait):
        items = [InboxItem(store_id=store_id, source=pager.source, topic=topic, dedupe_key=key[:255], raw_body=body,
                           headers={"x-storeloop-sync": "products"}, triggered_at=updated) for topic, key, body, updated in page]
        report.new_rows += sum(await anyio.to_thread.run_sync(write_items, db, items))
        report.pages += 1
        report.products_seen += len(page)
    await anyio.to_thread.run_sync(upsert_cursor, db, store_id, PRODUCTS_CURSOR, now.isoformat())
    log.info("synced products of %s: %d product(s), %d changed", store.key, report.products_seen, report.new_rows)
    return report
