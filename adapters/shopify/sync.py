"""Page through Shopify's orders for reconciliation (Admin GraphQL, sorted by update time), through
its customers changed since the last run for their consent (the customers pass), and through its
products for their replenishment cycles (tags, ``storeloop.replenish``).

Before each page the rate budget is awaited (the cost bucket), a THROTTLED answer is
retried through the core's policy, an order with more line items or fulfilments than one
page carries is completed with a follow-up query, and a repeated page cursor stops the run.
A backfill first asks ``ordersCount`` with the same search query, for its progress bar.
"""

from __future__ import annotations

import hashlib
import json
from collections import deque
from collections.abc import AsyncIterator
from datetime import datetime, timezone
from typing import Any

from adapters.shopify import graphql as gql
from adapters.envelope import parse_http_time
from adapters.shopify.normalize import SYNC_CUSTOMER_TOPIC
from adapters.sync_page import Budget, Retrying, SyncedCustomer, SyncedOrder
from connector.errors import PermanentError, SyncError


def timestamp(value: Any) -> datetime | None:
    """A GraphQL DateTime field (``updatedAt``...) as aware UTC; None when absent."""
    return parse_http_time(value) if isinstance(value, str) else None


RECENT_CURSORS = 256


async def connection_pages(client: Any, store_key: str, query: str, field: str, variables: dict[str, Any], cost: float,
                           retrying: Retrying, budget: Budget) -> AsyncIterator[list[dict[str, Any]]]:
    """The nodes of a cursor-paged Admin GraphQL connection, page by page.

    Waits for ``cost`` in the throttle budget before each request; refuses an empty or
    repeated page cursor (a server looping back) instead of paging forever. The cursors of
    the last pages are enough to catch that, in bounded memory (a set of every cursor grew
    by about 200 bytes a page: ~20 MB over a million orders).
    """
    variables = dict(variables, cursor=None)
    seen: deque[str] = deque(maxlen=RECENT_CURSORS)
    while True:
        await budget(cost)
        data = await retrying(lambda: client.graphql(query, dict(variables)))
        connection = data.get(field) if isinstance(data, dict) else None
        if not isinstance(connection, dict):
            raise PermanentError(f"{field}: no connection in the response")
        nodes = [n for n in (connection.get("nodes") or []) if isinstance(n, dict)]
        yield nodes
        info = connection.get("pageInfo") or {}
        end = info.get("endCursor")
        if not info.get("hasNextPage") or not nodes:
            return
        if not isinstance(end, str) or not end or end in seen:
            raise SyncError(f"{store_key}: Shopify returned a repeated or empty page cursor; stopping")
        seen.append(end)
        variables["cursor"] = end


def since_filter(window_start: datetime) -> str:
    """The search query of records updated at or after ``window_start``."""
    return f"updated_at:>='{window_start.astimezone(timezone.utc).strftime('%Y-%m-%dT%H:%M:%SZ')}'"


# ``ordersCount`` (Admin GraphQL since 2024-07; every count takes ``limit``, default 10,000,
# ``null`` for an uncapped count since 2025-07): the same search query as the pages, so the
# backfill's progress bar has a real total. ``precision`` is EXACT or AT_LEAST.
ORDERS_COUNT_QUERY = """
query StoreloopOrdersCount($q: String) {
  ordersCount(query: $q, limit: null) { count precision }
}
"""
ORDERS_COUNT_COST = 1


class ShopifyOrderPager:
    source = "shopify"
    cursor_per_page = True

    def __init__(self, client: Any, store_key: str, *, count: bool = False):
        self.client = client
        self.store_key = store_key
        self.want_total = count
        self.total: int | None = None  # orders the run will see, when asked for (count=True) and Shopify says

    async def count(self, window_start: datetime, retrying: Retrying, budget: Budget) -> int | None:
        """How many orders the pages will hold (``ordersCount`` with the pages' own query); None if Shopify does not say."""
        await budget(ORDERS_COUNT_COST)
        data = await retrying(lambda: self.client.graphql(ORDERS_COUNT_QUERY, {"q": since_filter(window_start)}))
        found = data.get("ordersCount") if isinstance(data, dict) else None
        value = found.get("count") if isinstance(found, dict) else None
        return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else None

    async def pages(self, window_start: datetime, page_size: int, retrying: Retrying, budget: Budget) -> AsyncIterator[list[SyncedOrder]]:
        if self.want_total:
            self.total = await self.count(window_start, retrying, budget)
        first = gql.page_size_for(page_size)
        variables = {"first": first, "q": since_filter(window_start), "lines": gql.LINES_PER_ORDER,
                     "fulfillments": gql.FULFILLMENTS_PER_ORDER, "tracking": gql.TRACKING_PER_FULFILLMENT}
        async for nodes in connection_pages(self.client, self.store_key, gql.ORDERS_QUERY, "orders", variables,
                                            gql.query_cost(first), retrying, budget):
            for node in nodes:
                after = gql.lines_truncated(node)
                if after is not None:
                    await self._complete_lines(node, after, retrying, budget)
                if gql.fulfillments_truncated(node):
                    await self._complete_fulfillments(node, retrying, budget)
            yield [self._order(node) for node in nodes]

    async def _complete_fulfillments(self, node: dict[str, Any], retrying: Retrying, budget: Budget) -> None:
        """Ask again for all of an order's fulfilments (one that lists as many as the page asked for):
        a plain list has no cursor, so the second ask reads up to FULFILLMENTS_PAGE at once."""
        await budget(gql.FULFILLMENTS_QUERY_COST)
        variables = {"id": node.get("id"), "fulfillments": gql.FULFILLMENTS_PAGE, "tracking": gql.TRACKING_PER_FULFILLMENT}
        data = await retrying(lambda: self.client.graphql(gql.ORDER_FULFILLMENTS_QUERY, variables))
        listed = ((data or {}).get("order") or {}).get("fulfillments")
        if isinstance(listed, list):
            node["fulfillments"] = listed

    async def _complete_lines(self, node: dict[str, Any], after: str, retrying: Retrying, budget: Budget) -> None:
        """Fetch the rest of an order's line items (orders with more than LINES_PER_ORDER)."""
        nodes = list((node.get("lineItems") or {}).get("nodes") or [])
        seen: set[str] = set()
        cursor: str | None = after
        while cursor:
            if cursor in seen:
                raise SyncError(f"{self.store_key}: repeated line item cursor for {node.get('id')}")
            seen.add(cursor)
            await budget(gql.LINES_QUERY_COST)
            variables = {"id": node.get("id"), "after": cursor, "lines": gql.LINES_PAGE}
            data = await retrying(lambda: self.client.graphql(gql.ORDER_LINES_QUERY, variables))
            conn = ((data or {}).get("order") or {}).get("lineItems") or {}
            nodes += [n for n in conn.get("nodes") or [] if isinstance(n, dict)]
            info = conn.get("pageInfo") or {}
            cursor = info.get("endCursor") if info.get("hasNextPage") else None
        node["lineItems"] = {"pageInfo": {"hasNextPage": False, "endCursor": None}, "nodes": nodes}

    @staticmethod
    def _order(node: dict[str, Any]) -> SyncedOrder:
        try:
            oid: str | None = gql.order_id_of(node)
        except Exception:
            oid = None  # stored anyway: the processor marks it failed with a reason a human can read
        return SyncedOrder(external_id=oid, updated_at=timestamp(node.get("updatedAt")), created_at=timestamp(node.get("createdAt")),
                           placeable=not node.get("cancelledAt"), body=node)

    @staticmethod
    def inbox_entry(order: SyncedOrder, placed: bool) -> tuple[str, str, bytes]:
        body = dict(order.body)
        if placed:
            body[gql.MARKER] = {"placed": True}
        updated_raw = order.body.get("updatedAt") if isinstance(order.body.get("updatedAt"), str) else None
        key = f"shopify:sync:{order.external_id or 'unknown'}:{updated_raw}"
        return "sync/order", key, json.dumps(body, separators=(",", ":")).encode()


# ---- customers: the consent of those none of whose orders changed --------------------------------


class ShopifyCustomerPager:
    """The customers updated since the window's start (``customers(sortKey: UPDATED_AT)``), each as a
    ``sync/customer`` inbox entry that normalises to the ``ConsentChanged`` her consent webhooks bring.

    The dedupe key holds a digest of what the consent path reads (the phone and its consent states and
    dates), not ``updatedAt``: a customer read again in the next window's overlap, or changed in some other
    way (an address, a tag), is a duplicate row, and only a consent change is new. Pages are sorted by
    update time, so the core may move its cursor after each one."""

    source = "shopify"

    def __init__(self, client: Any, store_key: str):
        self.client = client
        self.store_key = store_key

    async def pages(self, window_start: datetime, page_size: int, retrying: Retrying, budget: Budget) -> AsyncIterator[list[SyncedCustomer]]:
        first = gql.customers_page_size_for(page_size)
        variables = {"first": first, "q": since_filter(window_start)}
        async for nodes in connection_pages(self.client, self.store_key, gql.CUSTOMERS_QUERY, "customers", variables,
                                            gql.customers_query_cost(first), retrying, budget):
            yield [self._customer(node) for node in nodes]

    @staticmethod
    def _customer(node: dict[str, Any]) -> SyncedCustomer:
        updated = timestamp(node.get("updatedAt"))
        phone = node.get("defaultPhoneNumber")
        if not phone:
            return SyncedCustomer(updated, None)
        if isinstance(phone, dict):
            whatsapp = phone.get("whatsAppMarketingConsent")
            if not phone.get("marketingUpdatedAt") and (whatsapp is None or isinstance(whatsapp, dict) and not whatsapp.get("updatedAt")):
                return SyncedCustomer(updated, None)  # no dated consent, nothing the consent path reads: her number is not kept for nothing
        # (a shape that cannot be read is stored: its row fails with the reason, for a person to see)
        digest = hashlib.sha256(json.dumps(phone, separators=(",", ":"), sort_keys=True).encode()).hexdigest()[:24]
        body = json.dumps(node, separators=(",", ":"), sort_keys=True).encode()
        return SyncedCustomer(updated, (SYNC_CUSTOMER_TOPIC, f"shopify:sync-customer:{node.get('id')}:{digest}", body))


# ---- products: tags and the storeloop.replenish metafield (reorder cycles) -------------------

PRODUCTS_PAGE = 100
PRODUCTS_QUERY = """
query StoreloopProducts($first: Int!, $cursor: String) {
  products(first: $first, after: $cursor, sortKey: ID) {
    pageInfo { hasNextPage endCursor }
    nodes { id title tags status updatedAt metafield(namespace: "storeloop", key: "replenish") { value } }
  }
}
"""


def products_query_cost(first: int) -> int:
    """The connection (2) plus, per product, the node and its metafield object (A7's cost rules)."""
    return 2 + first * 2


def product_webhook_body(node: dict[str, Any]) -> dict[str, Any]:
    """A GraphQL ``Product`` node in the shape of the ``products/update`` webhook body (REST), so it
    goes through the webhook's own normaliser: numeric ``id``, ``tags`` as one comma-separated
    string, the metafield as the subscription with ``metafieldNamespaces: ["storeloop"]`` sends it."""
    gid = node.get("id")
    legacy = gid.rsplit("/", 1)[-1] if isinstance(gid, str) else gid
    tags = node.get("tags")
    body: dict[str, Any] = {
        "id": int(legacy) if isinstance(legacy, str) and legacy.isdigit() else legacy,
        "admin_graphql_api_id": gid,
        "title": node.get("title"),
        "tags": ", ".join(t for t in tags if isinstance(t, str)) if isinstance(tags, list) else "",
        "updated_at": node.get("updatedAt"),
    }
    if isinstance(node.get("status"), str):  # ProductStatus ACTIVE / ARCHIVED / DRAFT; the webhook's is lower case
        body["status"] = node["status"].lower()
    metafield = node.get("metafield")
    if isinstance(metafield, dict) and metafield.get("value") is not None:
        body["metafields"] = [{"namespace": "storeloop", "key": "replenish", "value": metafield.get("value")}]
    return body


class ShopifyProductPager:
    """Every product of the shop, page by page (ID order), as ``products/update`` inbox entries.

    The dedupe key holds a digest of what the cycle is read from (tags, metafield), not only
    ``updatedAt``: whether a metafield edit moves the product's ``updatedAt`` is not documented
    [VERIFY], and a changed cycle must not be taken for a duplicate.
    """

    source = "shopify"

    def __init__(self, client: Any, store_key: str):
        self.client = client
        self.store_key = store_key

    async def pages(self, page_size: int, retrying: Retrying, budget: Budget) -> AsyncIterator[list[tuple[str, str, bytes, datetime | None]]]:
        first = max(1, min(int(page_size), 250))
        async for nodes in connection_pages(self.client, self.store_key, PRODUCTS_QUERY, "products", {"first": first},
                                            products_query_cost(first), retrying, budget):
            yield [self._entry(n) for n in nodes]

    @staticmethod
    def _entry(node: dict[str, Any]) -> tuple[str, str, bytes, datetime | None]:
        body = json.dumps(product_webhook_body(node), separators=(",", ":"), sort_keys=True).encode()
        digest = hashlib.sha256(body).hexdigest()[:24]
        return "products/update", f"shopify:sync-product:{node.get('id')}:{digest}", body, timestamp(node.get("updatedAt"))
