"""Page through Shopify's orders for reconciliation (Admin GraphQL, sorted by update time).

Before each page the rate budget is awaited (the cost bucket), a THROTTLED answer is
retried through the core's policy, an order with more line items than one page carries is
completed with a follow-up query, and a repeated page cursor stops the run.
"""

from __future__ import annotations

import json
from collections import deque
from collections.abc import AsyncIterator
from datetime import datetime, timezone
from typing import Any

from adapters.shopify import graphql as gql
from adapters.envelope import parse_http_time
from adapters.sync_page import Budget, Retrying, SyncedOrder
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


class ShopifyOrderPager:
    source = "shopify"
    cursor_per_page = True

    def __init__(self, client: Any, store_key: str):
        self.client = client
        self.store_key = store_key

    async def pages(self, window_start: datetime, page_size: int, retrying: Retrying, budget: Budget) -> AsyncIterator[list[SyncedOrder]]:
        first = gql.page_size_for(page_size)
        variables = {"first": first, "q": since_filter(window_start), "lines": gql.LINES_PER_ORDER}
        async for nodes in connection_pages(self.client, self.store_key, gql.ORDERS_QUERY, "orders", variables,
                                            gql.query_cost(first), retrying, budget):
            for node in nodes:
                after = gql.lines_truncated(node)
                if after is not None:
                    await self._complete_lines(node, after, retrying, budget)
            yield [self._order(node) for node in nodes]

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
