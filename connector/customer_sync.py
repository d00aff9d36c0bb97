"""The reconcile's customers pass: consent changed on a customer none of whose orders changed.

Shopify gives a webhook up after about 4 hours (platform-facts.md A1). The order pages of the
reconcile (``connector.sync``) carry the consent of the customers of the orders that changed;
an opt-out given in the store by a customer who bought nothing since was never read, and her
marketing went on against her word. So each Shopify reconcile also reads the customers updated
since their own cursor (``customers_updated_at`` in ``sync_cursors``) and writes each one
through ``write_items``, the same inbox path as the consent webhooks: the adapter turns her
into the ``ConsentChanged`` events those webhooks produce (``adapters/shopify/graphql.py``
``phone_consents``, the one reading of Shopify's consent fields), so

- a customer read again unchanged is a duplicate row (the dedupe key is a digest of her consent);
- an older state never overrides a newer one heard meanwhile (a consent webhook, her STOP on
  WhatsApp): ``record_consent`` keeps the newest by the consent's own date, and an undated
  state is not read at all.

Paging, cost and throttling are the orders pass's (``sync.retrying`` / ``sync.budget``); pages
come sorted by update time, so the cursor moves after each committed page, never back. The
window starts ``overlap`` before the cursor. A store's first pass starts where the orders pass
starts on a first run (a day back), or at the orders cursor when that is older (the outage it
reads orders for): never at the beginning of the shop's customers.

WooCommerce has no consent webhook to lose (it keeps no marketing consent of its own): no pass there.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta
from typing import Any

import anyio.to_thread

from adapters.sync_page import CustomerPager, SyncedCustomer
from connector.storage.db import Database
from connector.storage.inbox import InboxItem, write_items
from connector.sync import DEFAULT_LOOKBACK, Sleep, SyncReport, budget, parse_cursor, read_cursor, retrying, upsert_cursor

log = logging.getLogger("storeloop.sync")

CUSTOMERS_CURSOR = "customers_updated_at"


def customer_pager_for(store: Any, client: Any) -> CustomerPager | None:
    """The platform's customers pager; None where consent is not the store's to give (WooCommerce)."""
    if store.platform != "shopify":
        return None
    from adapters.shopify.sync import ShopifyCustomerPager

    return ShopifyCustomerPager(client, store.key)


def first_start(orders_cursor: datetime | None, now: datetime) -> datetime:
    """Where a store's first pass starts: a day back, or the orders cursor when older."""
    lookback = now - DEFAULT_LOOKBACK
    return min(orders_cursor, lookback) if orders_cursor is not None else lookback


async def reconcile_customers(
    db: Database, store: Any, store_id: int, client: Any, report: SyncReport, *, now: datetime, overlap: timedelta,
    page_size: int, sleep: Sleep, max_attempts: int,
) -> None:
    """Read the customers updated since the stored cursor into the inbox; counts go to ``report``
    (``customers_seen``, ``customers_cursor_after``, ``new_rows``, the throttle figures)."""
    pager = customer_pager_for(store, client)
    if pager is None:
        return
    cursor = parse_cursor(await anyio.to_thread.run_sync(read_cursor, db, store_id, CUSTOMERS_CURSOR))
    start = cursor if cursor is not None else first_start(report.cursor_before, now)
    report.customers_cursor_after = cursor

    async def retry(call: Callable[[], Awaitable[Any]]) -> Any:
        return await retrying(call, store.key, report, max_attempts, sleep)

    async def wait(cost: float) -> None:
        await budget(client, cost, report)

    async for page in pager.pages(start - overlap, page_size, retry, wait):
        items = _items(store_id, pager.source, page)
        if items:
            report.new_rows += sum(await anyio.to_thread.run_sync(write_items, db, items))
        report.customers_seen += len(page)
        newest = max((c.updated_at for c in page if c.updated_at is not None), default=None)
        if newest is not None and (cursor is None or newest > cursor):  # after the page's commit; never back
            await anyio.to_thread.run_sync(upsert_cursor, db, store_id, CUSTOMERS_CURSOR, newest.isoformat())
            cursor = newest
            report.customers_cursor_after = newest
    log.info("read back customers of %s: %d customer(s), cursor %s", store.key, report.customers_seen, report.customers_cursor_after)


def _items(store_id: int, source: str, page: list[SyncedCustomer]) -> list[InboxItem]:
    """The page's inbox rows: one per customer with something the consent path reads."""
    items = []
    for customer in page:
        if customer.entry is None:
            continue
        topic, key, body = customer.entry
        items.append(InboxItem(store_id=store_id, source=source, topic=topic, dedupe_key=key[:255], raw_body=body,
                               headers={"x-storeloop-sync": "customers"}, triggered_at=customer.updated_at))
    return items


__all__ = ["CUSTOMERS_CURSOR", "customer_pager_for", "first_start", "reconcile_customers"]
