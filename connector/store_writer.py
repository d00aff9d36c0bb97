"""The port the core uses to write back to a store (tags, cancel, notes, status).

Implemented by ``adapters.shopify.client.ShopifyAdminClient`` and
``adapters.woocommerce.client.WooCommerceClient``. ``order_id`` is the platform's numeric
order id as a string (a Shopify REST id such as ``"820982911946154508"``; the Shopify
client turns it into ``gid://shopify/Order/<id>``).

Every method makes its own HTTP call(s) and raises ``connector.errors.RetryableError`` or
``PermanentError``; none retries by itself (the outbox retries durably).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Protocol, runtime_checkable


@runtime_checkable
class StoreWriter(Protocol):
    async def add_tags(self, order_id: str, tags: Sequence[str]) -> None: ...

    async def cancel_order(self, order_id: str, *, reason: str, notify_customer: bool, staff_note: str | None,
                           unless_since: datetime | None = None) -> None: ...

    async def add_note(self, order_id: str, note: str, *, unless_since: datetime | None = None) -> None:
        """``unless_since`` (a retry): the same note already on the order, written since then, is
        the earlier try's, which landed though its answer was lost; it is not written again."""
        ...

    async def set_status(self, order_id: str, status: str) -> None:
        """A WooCommerce order status; Shopify raises PermanentError (no settable status)."""
        ...

    async def aclose(self) -> None: ...
