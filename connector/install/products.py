"""Right after install: every product once, for stores that run the reorder journey.

A replenishment cycle named on a product (a ``replenish:30d`` tag, the ``storeloop.replenish``
metafield, WooCommerce's ``_storeloop_replenish`` meta) reaches the connector through a product
webhook, so products nobody edits after install would stay unknown until the worker's daily
product sync (``connector.sync.sync_products``). Install runs that same sync once, after the
webhooks are registered (a product edited meanwhile then comes by webhook as well; the inbox
keeps one row per state).

A failure here does not undo or fail the install: the webhooks are in place and the worker's
daily product sync reads the catalogue again. It is reported, never raised.
"""

from __future__ import annotations

import logging
from datetime import datetime
from typing import Any

from connector.errors import StoreloopError
from connector.storage.db import Database
from connector.sync import ProductSyncReport, sync_products

log = logging.getLogger("storeloop.install")


def wants_products(store: Any) -> bool:
    return "reorder" in store.enabled_journeys()


async def sync_products_at_install(
    db: Database, store: Any, store_id: int, client: Any, now: datetime,
) -> tuple[ProductSyncReport | None, str | None]:
    """``(report, None)`` after reading every product into the inbox, ``(None, why)`` when that
    failed (short, secret-free), ``(None, None)`` for a store without the reorder journey."""
    if not wants_products(store):
        return None, None
    try:
        report = await sync_products(db, store, store_id, client, now=now)
    except StoreloopError as exc:  # RetryableError after its retries, PermanentError (a missing read_products scope), SyncError
        why = f"{type(exc).__name__}: {exc}"
        log.warning("products not read at install", extra={"store": store.key, "reason": why})
        return None, why
    return report, None


def products_line(report: ProductSyncReport | None, error: str | None) -> str | None:
    """What install says about it (None when the store does not run the reorder journey)."""
    if error is not None:
        return f"products not read: {error} (the webhooks are in place; the worker's daily product sync tries again)"
    if report is None:
        return None
    return (f"{report.products_seen} product(s) read for the reorder journey's cycles, {report.new_rows} new or changed"
            + (" (a running worker processes them)" if report.new_rows else ""))


__all__ = ["products_line", "sync_products_at_install", "wants_products"]
