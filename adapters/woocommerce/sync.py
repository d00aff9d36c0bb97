"""Page through WooCommerce orders modified since a time (REST v3, ``X-WP-TotalPages``).

Pages come sorted by id (stable while orders change), not by modification time, so the
core moves the cursor once, after the last page. Entries use the webhook envelope's dedupe
scheme, so a webhook and a sync of the same state are one inbox row.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import AsyncIterator
from datetime import datetime, timezone
from typing import Any

from adapters.envelope import parse_http_time
from adapters.sync_page import Budget, Retrying, SyncedOrder

NOT_PLACED = frozenset({"cancelled", "refunded", "failed", "trash", "checkout-draft"})


def _ts(value: Any) -> datetime | None:
    return parse_http_time(value) if isinstance(value, str) else None


class WooOrderPager:
    source = "woocommerce"
    cursor_per_page = False

    def __init__(self, client: Any):
        self.client = client

    async def pages(self, window_start: datetime, page_size: int, retrying: Retrying, budget: Budget) -> AsyncIterator[list[SyncedOrder]]:
        per_page = max(1, min(100, int(page_size)))
        page, total = 1, 1
        while page <= total:
            orders, total = await retrying(lambda: self.client.get_orders(modified_after=window_start, page=page, per_page=per_page))
            batch = [self._order(o) for o in orders if isinstance(o, dict) and o.get("status") != "checkout-draft"]
            yield batch
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
