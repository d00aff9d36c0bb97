"""What a platform's order pager hands the core's reconciliation: neutral, already encoded.

Adapters page through their API and translate; ``connector.sync`` decides (which orders are
new, when the cursor moves) and writes through the inbox. No platform JSON crosses over.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

Retrying = Callable[[Callable[[], Awaitable[Any]]], Awaitable[Any]]  # call with the core's retry policy
Budget = Callable[[float], Awaitable[None]]  # wait for the platform's rate budget


@dataclass(frozen=True, slots=True)
class SyncedOrder:
    external_id: str | None
    updated_at: datetime | None
    created_at: datetime | None
    placeable: bool  # could be a first sight of a placed order (not cancelled, not a draft...)
    body: dict[str, Any]


@dataclass(frozen=True, slots=True)
class SyncedCustomer:
    """One customer the reconcile's customers pass read: when she last changed (the cursor), and her inbox
    entry (topic, dedupe key, raw body), None when she carries nothing the consent path reads (no phone)."""

    updated_at: datetime | None
    entry: tuple[str, str, bytes] | None


class CustomerPager(Protocol):
    source: str

    def pages(self, window_start: datetime, page_size: int, retrying: Retrying, budget: Budget) -> AsyncIterator[list[SyncedCustomer]]:
        """Each page of customers updated since ``window_start``, sorted by update time."""


class OrderPager(Protocol):
    source: str  # the inbox source: "shopify" | "woocommerce"
    cursor_per_page: bool  # True when pages come sorted by update time (cursor may move per page)
    total: int | None  # orders the run will see, once known (read after each page, for progress); None when not asked or not told

    def pages(self, window_start: datetime, page_size: int, retrying: Retrying, budget: Budget) -> AsyncIterator[list[SyncedOrder]]:
        """Each page of orders updated since ``window_start``."""

    def inbox_entry(self, order: SyncedOrder, placed: bool) -> tuple[str, str, bytes]:
        """(topic, dedupe key, raw body) for the inbox; ``placed`` marks a first sight."""
