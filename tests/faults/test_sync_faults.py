"""Shopify throttles and times out during reconciliation while orders keep changing: the cursor never skips one.

The fake Admin GraphQL API (tests/test_sync.py's FakeShopify behind respx) answers some
requests with a read timeout, some with THROTTLED, and changes orders while the sync is
paging. After the runs every order's latest version is in the inbox, nothing twice.
"""

from __future__ import annotations

import asyncio
from datetime import datetime, timedelta

import httpx
import respx

from adapters.shopify.client import ShopifyAdminClient
from connector.sync import read_cursor, reconcile_orders
from tests.test_sync import SHOP_URL, T, FakeShopify, gql_node, inbox, iso, recorder, setup


class FlakyShopify(FakeShopify):
    """Timeouts on some calls; an order changes under the sync at others."""

    def __init__(self, nodes: list[dict], *, timeouts: set[int], changes: dict[int, dict]):
        super().__init__(nodes)
        self.timeouts = timeouts
        self.changes = changes  # call number -> a node's new version, put before that call is answered

    def handler(self, request: httpx.Request) -> httpx.Response:
        if self.calls + 1 in self.changes:
            self.put(self.changes[self.calls + 1])
        if self.calls + 1 in self.timeouts:
            self.calls += 1
            raise httpx.ReadTimeout("timed out", request=request)
        return super().handler(request)


def test_timeouts_throttles_and_changes_mid_sync_never_skip_an_order(db_url):
    settings, db, ids = setup(db_url)
    store, sid = settings.stores[0], ids["shop-a"]
    base = T - timedelta(hours=3)
    nodes = [gql_node(n, updated=base + timedelta(minutes=5 * n), created=base - timedelta(days=2)) for n in range(1, 13)]
    # while the sync pages, order 2 (already read) and order 11 (not yet read) change
    changes = {4: gql_node(2, updated=base + timedelta(minutes=100), created=base - timedelta(days=2)) | {"displayFinancialStatus": "PAID"},
               6: gql_node(11, updated=base + timedelta(minutes=101), created=base - timedelta(days=2)) | {"displayFinancialStatus": "PAID"}}
    fake = FlakyShopify(nodes, timeouts={2, 5, 9}, changes=changes)
    fake.throttle_calls = {3, 7}
    events: list = []
    sleep = recorder(events)

    async def run(now: datetime):
        with respx.mock() as mock:
            mock.post(SHOP_URL).mock(side_effect=fake.handler)
            async with ShopifyAdminClient(store, sleep=sleep, clock=lambda: 0.0) as client:
                return await reconcile_orders(db, store, sid, client, now=now, page_size=2, sleep=sleep)

    first = asyncio.run(run(T))
    assert first.retries >= 5  # three timeouts and two THROTTLED answers were slept off and retried
    second = asyncio.run(run(T + timedelta(minutes=15)))  # the next tick
    rows = inbox(db, sid)
    latest = {n["id"].rsplit("/", 1)[1]: n["updatedAt"] for n in fake.orders.values()}
    stored = {r.dedupe_key for r in rows}
    # every order's newest version is stored, each version once
    assert all(f"shopify:sync:{oid}:{updated}" in stored for oid, updated in latest.items()), sorted(stored)
    assert len(stored) == len(rows)
    assert read_cursor(db, sid, "orders_updated_at") == datetime.fromisoformat(
        max(latest.values()).replace("Z", "+00:00")).isoformat()
    assert second.cursor_after >= first.cursor_after  # never back
    assert iso(base + timedelta(minutes=101)) in {n["updatedAt"] for n in fake.orders.values()}
    db.dispose()
