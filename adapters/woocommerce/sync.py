"""Page through WooCommerce orders modified since a time, and through its products (REST v3).

Orders: ``GET /orders?modified_after=…&orderby=id&order=asc`` (B1), read by ``offset``, each
page starting on the last order of the one before (one place of overlap). Pages are sorted by
id (stable while orders change), not by modification time, so the core moves the cursor once,
after the last page, and never past the run's start. ``X-WP-Total`` of the first page is the
run's total (the backfill's progress bar). An order that is modified while we page stays in
the list (only its data changes); one newly modified joins it, which pushes later orders one
place back (read twice, stored once). An order trashed or deleted meanwhile leaves the list
and pulls every later order one place forward: then the overlap place no longer holds the
last order read but a later one, and the pager steps back a page and reads on from there
(at most ``MAX_STEPS_BACK`` times in a run, then it fails and the cursor stays). The overlap
sees every such shift, also a removal and an addition between the same two pages, which
leave ``X-WP-Total`` unchanged.

Orders in the bin are not in that listing (WooCommerce's default ``status=any`` leaves out
``trash``): a second listing, ``status=trash`` with the same window, reads them, so an order
binned while its ``order.deleted`` was lost is known as called off (its ``order.updated`` body
says ``trash``: ``OrderCancelled``).

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
MAX_STEPS_BACK = 20  # a list that keeps shrinking under us: give up, the cursor stays
PRODUCT_FIELDS = "id,name,sku,tags,meta_data,date_modified_gmt,status,stock_status"


def _ts(value: Any) -> datetime | None:
    return parse_http_time(value) if isinstance(value, str) else None


def _order_id(o: dict[str, Any]) -> int | None:
    value = o.get("id")
    return value if isinstance(value, int) and not isinstance(value, bool) else None


class WooOrderPager:
    source = "woocommerce"
    cursor_per_page = False

    def __init__(self, client: Any, *, count: bool = False):
        self.client = client
        self.total: int | None = None  # X-WP-Total of the run's first page (free: every page says it)
        self.steps_back = 0  # times the list shrank before our place and we stepped back

    async def pages(self, window_start: datetime, page_size: int, retrying: Retrying, budget: Budget) -> AsyncIterator[list[SyncedOrder]]:
        per_page = max(2, min(MAX_PER_PAGE, int(page_size)))  # one place is the overlap
        params = {"modified_after": window_start.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S"), "dates_are_gmt": "true",
                  "orderby": "id", "order": "asc", "per_page": str(per_page)}
        async for page in self._listing(params, per_page, retrying, count=True):
            yield page
        # The listing's default (``any``) leaves out the bin: binned orders are a listing of their own
        # (``status=trash``), so a lost ``order.deleted`` is repaired too and the order known as called off
        async for page in self._listing({**params, "status": "trash"}, per_page, retrying, count=False):
            if page:  # usually none: no empty page to report
                yield page

    async def _listing(self, params: dict[str, str], per_page: int, retrying: Retrying, *, count: bool) -> AsyncIterator[list[SyncedOrder]]:
        """One listing of orders (``params``), page by page by offset; ``count``: its X-WP-Total is the run's."""
        read, last_id = 0, None  # places of the list read so far; the id of the last order read
        self.steps_back = 0
        while True:
            offset = read - 1 if last_id is not None else read  # each page starts on the last order read
            query = {**params, "offset": str(offset)}
            orders, total, _pages = await retrying(lambda: self.client.get_page("/orders", query))
            if count and self.total is None and total is not None:
                self.total = total
            if last_id is not None:
                first = _order_id(orders[0]) if orders else None
                if first is None or first > last_id:
                    # The place of the last order read now holds a later one: orders before it
                    # left the list (trashed, deleted) and the rest moved forward, so the next
                    # unread one may sit before this page. Step back a page and read on from there.
                    if self.steps_back >= MAX_STEPS_BACK:
                        raise SyncError(f"WooCommerce orders kept leaving the list while paging ({self.steps_back} steps back); "
                                        "the cursor stays, the next run reads the window again")
                    self.steps_back += 1
                    read = max(0, read - (per_page - 1))
                    last_id = None if read == 0 else last_id
                    continue
            before, read = read, offset + len(orders)
            fresh = orders[1:] if last_id is not None and orders and _order_id(orders[0]) == last_id else orders
            yield [self._order(o) for o in fresh if o.get("status") != "checkout-draft"]
            # the end: a page that brought no new place (empty, or only the overlap), every place
            # of the list as WordPress counts it now (a server may cap per_page below ours), or
            # without a count a short page
            if read <= before or (read >= total if total is not None else len(orders) < per_page):
                return
            last_id = _order_id(orders[-1])

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
