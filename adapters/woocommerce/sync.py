"""Page through WooCommerce orders modified since a time, and through its products (REST v3).

Orders: ``GET /orders?modified_after=…`` page by page until ``X-WP-TotalPages`` (B1). Pages
come sorted by id (stable while orders change), not by modification time, so the core moves
the cursor once, after the last page. ``X-WP-Total`` of the first page is the run's total
(the backfill's progress bar). An order that is modified while we page stays in the list
(only its data changes) and one newly modified joins it, which pushes later orders to a later
page (read twice, stored once); but an order trashed or deleted meanwhile leaves it and pulls
every later order one place forward, so the first order of the next page would be skipped.
When ``X-WP-Total`` falls between two pages, the run starts again from page 1 (a few times at
most, then it fails and the cursor stays). [A removal and an addition between the same two
pages cancel out in the total: not detected; the next run's overlap does not cover it either.]

Products: every product (``_fields`` keeps the answer small), as ``product.updated`` entries,
so their tags and ``_storeloop_replenish`` meta reach the reorder cycles through the webhook's
own normaliser.

Entries use the webhook envelope's dedupe scheme, so a webhook and a sync of the same order
state are one inbox row.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import AsyncIterator
from datetime import datetime, timezone
from typing import Any

from adapters.envelope import parse_http_time
from adapters.sync_page import Budget, Retrying, SyncedOrder
from adapters.woocommerce.client import MAX_PER_PAGE
from connector.errors import SyncError

NOT_PLACED = frozenset({"cancelled", "refunded", "failed", "trash", "checkout-draft"})
MAX_RESTARTS = 3
PRODUCT_FIELDS = "id,name,tags,meta_data,date_modified_gmt,status"


def _ts(value: Any) -> datetime | None:
    return parse_http_time(value) if isinstance(value, str) else None


class WooOrderPager:
    source = "woocommerce"
    cursor_per_page = False

    def __init__(self, client: Any, *, count: bool = False):
        self.client = client
        self.total: int | None = None  # X-WP-Total of the run's first page (free: every page says it)
        self.restarts = 0

    async def pages(self, window_start: datetime, page_size: int, retrying: Retrying, budget: Budget) -> AsyncIterator[list[SyncedOrder]]:
        per_page = max(1, min(MAX_PER_PAGE, int(page_size)))
        params = {"modified_after": window_start.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S"), "dates_are_gmt": "true",
                  "orderby": "id", "order": "asc", "per_page": str(per_page)}
        page, last_page, lowest = 1, 1, None
        while page <= last_page:
            query = {**params, "page": str(page)}
            orders, total, pages = await retrying(lambda: self.client.get_page("/orders", query))
            if total is not None:
                if lowest is not None and total < lowest:  # orders left the list: a later one may have moved onto a page already read
                    if self.restarts >= MAX_RESTARTS:
                        raise SyncError(f"WooCommerce orders kept leaving the list while paging ({self.restarts} restarts); "
                                        "the cursor stays, the next run reads the window again")
                    self.restarts += 1
                    page, last_page, lowest = 1, 1, total
                    continue
                lowest = total if lowest is None else min(lowest, total)
                if self.total is None:
                    self.total = total
            last_page = pages if pages is not None else (page if len(orders) < per_page else page + 1)
            yield [self._order(o) for o in orders if o.get("status") != "checkout-draft"]
            if not orders:
                return
            page += 1

    @staticmethod
    def _order(o: dict[str, Any]) -> SyncedOrder:
        modified = o.get("date_modified_gmt") or o.get("date_modified")
        return SyncedOrder(
            external_id=str(o["id"]) if o.get("id") is not None else None,
            updated_at=_ts(modified),
            created_at=_ts(o.get("date_created_gmt") or o.get("date_created")),
            placeable=o.get("status") not in NOT_PLACED,
            body=o,
        )

    @staticmethod
    def inbox_entry(order: SyncedOrder, placed: bool) -> tuple[str, str, bytes]:
        o = order.body
        topic = "order.created" if placed else "order.updated"
        modified = o.get("date_modified_gmt") or o.get("date_modified")
        body = json.dumps(o, separators=(",", ":")).encode()
        if order.external_id is not None and modified:
            key = f"woocommerce:{topic}:{order.external_id}:{modified}:{o.get('status')}"
        else:
            key = f"woocommerce:{topic}:sha256:{hashlib.sha256(body).hexdigest()}"
        return topic, key, body


class WooProductPager:
    """Every product, page by page (id order), as ``product.updated`` inbox entries keyed by a
    digest of the body (tags and meta can change without anything else changing)."""

    source = "woocommerce"

    def __init__(self, client: Any):
        self.client = client

    async def pages(self, page_size: int, retrying: Retrying, budget: Budget) -> AsyncIterator[list[tuple[str, str, bytes, datetime | None]]]:
        per_page = max(1, min(MAX_PER_PAGE, int(page_size)))
        page, last_page = 1, 1
        while page <= last_page:
            query = {"orderby": "id", "order": "asc", "per_page": str(per_page), "page": str(page), "_fields": PRODUCT_FIELDS}
            products, _total, pages = await retrying(lambda: self.client.get_page("/products", query))
            last_page = pages if pages is not None else (page if len(products) < per_page else page + 1)
            yield [self._entry(p) for p in products]
            if not products:
                return
            page += 1

    @staticmethod
    def _entry(p: dict[str, Any]) -> tuple[str, str, bytes, datetime | None]:
        body = json.dumps(p, separators=(",", ":"), sort_keys=True).encode()
        digest = hashlib.sha256(body).hexdigest()[:24]
        return "product.updated", f"woocommerce:sync-product:{p.get('id')}:{digest}", body, _ts(p.get("date_modified_gmt"))
