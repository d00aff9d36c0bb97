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
- WooCommerce: ``GET /orders?modified_after=…`` page by page until ``X-WP-TotalPages``
  (B1); a 429/5xx is backed off (Retry-After when given). The client orders the list by
  id (stable pages while orders change), not by modification time, so a per-page cursor
  could skip an earlier-modified order on a later page: the cursor moves once, after the
  last page, to ``min(max date_modified seen, run start)``. A crash re-reads the window;
  the dedupe keys make that harmless.

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
silently as updates.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any

import anyio.to_thread
from sqlalchemy import Connection, delete, select, update
from sqlalchemy.dialects import postgresql, sqlite

from adapters.shopify import graphql as gql
from connector.errors import PermanentError, RetryableError
from connector.storage.db import Database
from connector.storage.inbox import InboxItem, write_items
from connector.storage.models import Lease, Order, SyncCursor

log = logging.getLogger("storeloop.sync")

ORDERS_CURSOR = "orders_updated_at"
DEFAULT_LOOKBACK = timedelta(days=1)
DEFAULT_OVERLAP = timedelta(minutes=5)
PLACED_WITHIN = timedelta(hours=24)
MAX_ATTEMPTS = 5  # per page, for throttling / transient failures
MAX_BACKOFF = 60.0
WOO_NOT_PLACED = frozenset({"cancelled", "refunded", "failed", "trash", "checkout-draft"})

Sleep = Callable[[float], Awaitable[Any]]
Progress = Callable[["SyncReport"], None]


class SyncError(RuntimeError):
    """The platform answered something the sync cannot continue from (e.g. a repeated cursor)."""


@dataclass(slots=True)
class SyncReport:
    store_key: str
    platform: str
    pages: int = 0
    orders_seen: int = 0
    new_rows: int = 0
    placed: int = 0  # first sight of a fresh order, stored so that it starts the journeys
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


def _parse_ts(value: Any) -> datetime | None:
    if not isinstance(value, str) or not value.strip():
        return None
    try:
        dt = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
    except ValueError:
        return None
    return dt.replace(tzinfo=timezone.utc) if dt.tzinfo is None else dt.astimezone(timezone.utc)


def _iso(dt: datetime) -> str:
    return dt.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


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
) -> SyncReport:
    """Fetch every order updated since the stored cursor (or ``since``) into the inbox."""
    if now.tzinfo is None:
        raise ValueError("now must be timezone-aware")
    stored = _parse_ts(await anyio.to_thread.run_sync(read_cursor, db, store_id, ORDERS_CURSOR))
    start = since if since is not None else (stored or now - DEFAULT_LOOKBACK)
    report = SyncReport(store_key=store.key, platform=store.platform, cursor_before=stored)
    report.window_start = start - overlap
    job = _Job(db, store, store_id, client, now, report, progress, sleep, placed_within, max_attempts, stored)
    if store.platform == "shopify":
        await job.shopify(report.window_start, page_size)
    elif store.platform == "woocommerce":
        await job.woocommerce(report.window_start, page_size)
    else:  # pragma: no cover - config only allows the two
        raise ValueError(f"no reconciliation for platform {store.platform!r}")
    log.info("reconciled %s: %d page(s), %d order(s), %d new, cursor %s -> %s", store.key, report.pages,
             report.orders_seen, report.new_rows, report.cursor_before, report.cursor_after)
    return report


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
    _seen_cursors: set[str] = field(default_factory=set)

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
        """Run ``call``; on RetryableError sleep its retry_after (else exponential) and retry."""
        for attempt in range(1, self.max_attempts + 1):
            try:
                return await call()
            except RetryableError as exc:
                if attempt >= self.max_attempts:
                    raise
                wait = exc.retry_after if exc.retry_after is not None else min(MAX_BACKOFF, 2.0 ** (attempt - 1))
                wait = max(0.0, min(MAX_BACKOFF, float(wait)))
                log.info("%s: %s; retrying in %.1f s (attempt %d)", self.store.key, exc, wait, attempt)
                self.report.retries += 1
                self.report.throttle_waits += 1
                self.report.throttle_seconds += wait
                await self.sleep(wait)
        raise AssertionError("unreachable")  # pragma: no cover

    # ---- Shopify ----------------------------------------------------------------------

    async def shopify(self, window_start: datetime, page_size: int) -> None:
        first = gql.page_size_for(page_size)
        cost = gql.query_cost(first)
        variables: dict[str, Any] = {"first": first, "cursor": None, "q": f"updated_at:>='{_iso(window_start)}'",
                                     "lines": gql.LINES_PER_ORDER}
        while True:
            await self._budget(cost)
            data = await self._retrying(lambda: self.client.graphql(gql.ORDERS_QUERY, dict(variables)))
            connection = data.get("orders") if isinstance(data, dict) else None
            if not isinstance(connection, dict):
                raise PermanentError("orders: no connection in the response")
            nodes = [n for n in (connection.get("nodes") or []) if isinstance(n, dict)]
            for node in nodes:
                after = gql.lines_truncated(node)
                if after is not None:
                    await self._complete_lines(node, after)
            await self._store_shopify_page(nodes)
            info = connection.get("pageInfo") or {}
            end = info.get("endCursor")
            if not info.get("hasNextPage") or not nodes:
                return
            if not isinstance(end, str) or not end or end in self._seen_cursors:
                raise SyncError(f"{self.store.key}: Shopify returned a repeated or empty page cursor; stopping")
            self._seen_cursors.add(end)
            variables["cursor"] = end

    async def _budget(self, cost: float) -> None:
        waited = await self.client.wait_for_budget(cost)
        if waited > 0:
            self.report.throttle_waits += 1
            self.report.throttle_seconds += waited

    async def _complete_lines(self, node: dict[str, Any], after: str) -> None:
        """Fetch the rest of an order's line items (orders with more than LINES_PER_ORDER)."""
        nodes = list((node.get("lineItems") or {}).get("nodes") or [])
        seen: set[str] = set()
        while after:
            if after in seen:
                raise SyncError(f"{self.store.key}: repeated line item cursor for {node.get('id')}")
            seen.add(after)
            await self._budget(gql.LINES_QUERY_COST)
            variables = {"id": node.get("id"), "after": after, "lines": gql.LINES_PAGE}
            data = await self._retrying(lambda: self.client.graphql(gql.ORDER_LINES_QUERY, variables))
            conn = ((data or {}).get("order") or {}).get("lineItems") or {}
            nodes += [n for n in conn.get("nodes") or [] if isinstance(n, dict)]
            info = conn.get("pageInfo") or {}
            after = info.get("endCursor") if info.get("hasNextPage") else None
        node["lineItems"] = {"pageInfo": {"hasNextPage": False, "endCursor": None}, "nodes": nodes}

    async def _store_shopify_page(self, nodes: list[dict[str, Any]]) -> None:
        ids = []
        for node in nodes:
            try:
                ids.append(gql.order_id_of(node))
            except Exception:
                ids.append(None)
        known = await anyio.to_thread.run_sync(_known_orders, self.db, self.store_id, [i for i in ids if i])
        items: list[InboxItem] = []
        newest: datetime | None = None
        for node, oid in zip(nodes, ids):
            updated_raw = node.get("updatedAt") if isinstance(node.get("updatedAt"), str) else None
            updated = _parse_ts(updated_raw)
            if updated is not None and (newest is None or updated > newest):
                newest = updated
            if oid is None or updated_raw is None:
                # stored anyway: the processor marks it failed with a reason a human can read
                oid = oid or "unknown"
            body = dict(node)
            created = _parse_ts(node.get("createdAt") if isinstance(node.get("createdAt"), str) else None)
            if oid not in known and not node.get("cancelledAt") and self._fresh(created):
                body[gql.MARKER] = {"placed": True}
                self.report.placed += 1
            items.append(InboxItem(
                store_id=self.store_id, source="shopify", topic="sync/order",
                dedupe_key=f"shopify:sync:{oid}:{updated_raw}"[:255],
                raw_body=json.dumps(body, separators=(",", ":")).encode(),
                headers={"x-storeloop-sync": "orders"}, triggered_at=updated,
            ))
        await self._write(items)
        self.report.pages += 1
        self.report.orders_seen += len(nodes)
        if newest is not None:
            await self._advance(newest)
        elif self.report.cursor_after is None:
            self.report.cursor_after = self.cursor
        if self.progress is not None:
            self.progress(self.report)

    # ---- WooCommerce ------------------------------------------------------------------

    async def woocommerce(self, window_start: datetime, page_size: int) -> None:
        per_page = max(1, min(100, int(page_size)))
        page, total = 1, 1
        newest: datetime | None = None
        while page <= total:
            orders, total = await self._retrying(
                lambda: self.client.get_orders(modified_after=window_start, page=page, per_page=per_page)
            )
            page_newest = await self._store_woo_page(orders)
            if page_newest is not None and (newest is None or page_newest > newest):
                newest = page_newest
            if not orders:
                break
            page += 1
        if newest is not None:
            await self._advance(min(newest, self.now))
        else:
            self.report.cursor_after = self.cursor

    async def _store_woo_page(self, orders: list[dict[str, Any]]) -> datetime | None:
        orders = [o for o in orders if isinstance(o, dict)]
        known = await anyio.to_thread.run_sync(
            _known_orders, self.db, self.store_id, [str(o.get("id")) for o in orders if o.get("id") is not None]
        )
        items: list[InboxItem] = []
        newest: datetime | None = None
        for o in orders:
            rid, status = o.get("id"), o.get("status")
            modified = o.get("date_modified_gmt") or o.get("date_modified")
            if status == "checkout-draft":  # block checkout in progress (B3): not an order yet
                continue
            updated = _parse_ts(modified if isinstance(modified, str) else None)
            if updated is not None and (newest is None or updated > newest):
                newest = updated
            created = _parse_ts(o.get("date_created_gmt") or o.get("date_created") or None)
            topic = "order.updated"
            if str(rid) not in known and status not in WOO_NOT_PLACED and self._fresh(created):
                topic = "order.created"
                self.report.placed += 1
            # the webhook envelope's scheme (adapters/woocommerce/webhooks.py), so a webhook
            # and a sync of the same state dedupe against each other
            key = f"woocommerce:{topic}:{rid}:{modified}:{status}" if rid is not None and modified else None
            body = json.dumps(o, separators=(",", ":")).encode()
            if key is None:
                key = f"woocommerce:{topic}:sha256:{hashlib.sha256(body).hexdigest()}"
            items.append(InboxItem(
                store_id=self.store_id, source="woocommerce", topic=topic, dedupe_key=key[:255], raw_body=body,
                headers={"x-storeloop-sync": "orders"}, triggered_at=updated,
            ))
        await self._write(items)
        self.report.pages += 1
        self.report.orders_seen += len(orders)
        if self.progress is not None:
            self.progress(self.report)
        return newest


# ---- leases: one run per tick across workers ----------------------------------------------


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
    ``ttl`` a little shorter than the job's interval. A failed run keeps the lease too:
    the next tick retries.
    """
    got = await anyio.to_thread.run_sync(lambda: acquire_lease(db, name, holder, ttl, now))
    if not got:
        log.debug("%s is held by another worker; skipping this tick", name)
        return False
    await fn()
    return True


__all__ = [
    "ORDERS_CURSOR", "SyncError", "SyncReport", "acquire_lease", "read_cursor", "reconcile_orders", "release_lease",
    "run_periodic", "upsert_cursor",
]
