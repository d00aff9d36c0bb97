"""Periodic jobs on APScheduler 3 (in-memory job store).

Thin wiring only. ``build_scheduler(runtime)`` returns an unstarted ``AsyncIOScheduler``
with, per store that has API credentials, ``reconcile:<store key>`` every
``worker.reconcile_minutes`` (WooCommerce: our disabled webhooks switched back on first;
Shopify: the customers changed are read for their consent after the orders, and a tick whose
customers pass failed counts as failed),
``checkout-poll:<key>`` (Shopify), and for stores running the reorder journey
``products:<key>`` (daily, first a minute after start) and ``reorder:<key>``; per store with a
WhatsApp number (not in dry run) ``number-quality:<key>`` every ``worker.number_quality_hours``; plus the
hourly raw-body and conversation purge. Each run logs its report (the job log); a run that fails is logged on the
storeloop logger with its store and job, and each store job's last outcome (last success, last
error, failures in a row) is kept in the database for the dashboard (``connector/job_health.py``).
Every worker may run a scheduler: each tick takes the database lease
``job:reconcile:<store key>`` first, so the job runs once per tick across workers.
Start it after ``runtime.start()`` (it needs ``runtime.store_ids``) and shut it down
before ``runtime.stop()``.
"""

from __future__ import annotations

import logging
import os
import socket
import uuid
from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta, timezone
from typing import Any

import anyio.to_thread
import httpx
from apscheduler.jobstores.memory import MemoryJobStore
from apscheduler.schedulers.asyncio import AsyncIOScheduler

from connector import job_health
from connector.config import ShopifyStore
from connector.errors import StoreloopError, SyncError
from connector.job_health import safe_error
from connector.sync import acquire_lease, reconcile_orders, run_periodic, sync_products, woocommerce_delivery_url

log = logging.getLogger("storeloop.jobs")

LEASE_FRACTION = 0.8  # the lease outlives most of the interval, not the next tick


def worker_id() -> str:
    return f"{socket.gethostname()[:32]}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def has_credentials(store: Any, db: Any = None) -> bool:
    """TOML credentials, own-store client credentials, or (given ``db``) ones stored by install."""
    from connector.install.credentials import has_credentials as _has

    return _has(store, db)


def make_client(store: Any, db: Any = None, *, tokens: Any = None) -> Any:
    """The platform API client for a store with credentials (the caller closes it: ``async with``).

    With ``db``: credentials stored by install come first and Shopify tokens are renewed ahead
    of expiry (connector/install/credentials.py); ``tokens`` shares the runtime's token cache.
    """
    if db is not None:
        from connector.install.credentials import StoreClient

        return StoreClient(store, db, tokens=tokens)
    if isinstance(store, ShopifyStore):
        from adapters.shopify.client import ShopifyAdminClient

        return ShopifyAdminClient(store)
    from adapters.woocommerce.client import WooCommerceClient

    return WooCommerceClient(store)


def reconcile_minutes(settings: Any) -> float:
    return float(settings.worker.reconcile_minutes)


def delivery_url_for(runtime: Any, store: Any) -> str | None:
    """A WooCommerce store's own webhook address (None without ``server.public_url``)."""
    base = runtime.settings.server.public_base_url
    return woocommerce_delivery_url(base, store.key) if base else None


async def reconcile_store(runtime: Any, store: Any, holder: str, interval: timedelta) -> bool:
    """One tick for one store: take the lease ``job:reconcile:<key>``, (WooCommerce) switch our
    disabled webhooks back on, reconcile, log the run, wake the processor."""

    async def work(client: Any, store_id: int) -> Any:
        report = await reconcile_orders(runtime.db, store, store_id, client, now=runtime.clock(),
                                        reenable_webhooks_under=delivery_url_for(runtime, store) if store.platform == "woocommerce" else None)
        log_report("reconcile", report)
        if report.customers_failed:  # the orders are in; a consent left unread is a failed tick on the dashboard
            if report.new_rows or report.caught_up:
                _wake(runtime)
            raise SyncError(f"customers' consent not read back: {report.customers_failed}")
        return report

    return await _sync_tick(runtime, store, holder, interval, "reconcile", work)


def log_report(job_name: str, report: Any) -> None:
    """The job log: one line per run with its report (``extra["report"]``); WARNING when webhooks were
    re-enabled or could not be, else DEBUG (the job's own INFO line already gives the figures)."""
    data = report.as_dict()
    reenabled, failed = data.get("webhooks_reenabled") or [], data.get("webhooks_failed") or []
    customers_failed = data.get("customers_failed")
    level = logging.WARNING if reenabled or failed or customers_failed else logging.DEBUG
    note = ""
    if customers_failed:
        note += f"; customers' consent not read back: {customers_failed}"
    if reenabled:
        note += f"; re-enabled WooCommerce webhook(s) {', '.join(reenabled)}"
    if failed:
        note += f"; webhook re-enable failed: {'; '.join(failed)}"
    log.log(level, "%s %s: %d page(s), %d new row(s)%s", job_name, report.store_key, report.pages, report.new_rows, note,
            extra={"job": job_name, "report": data})


async def _sync_tick(runtime: Any, store: Any, holder: str, interval: timedelta, job_name: str,
                     work: Callable[[Any, int], Awaitable[Any]]) -> bool:
    """What every store sync job does around its work: skip a store not registered yet or
    uninstalled, hold the lease ``job:<name>:<key>`` for the tick, wake the processor when
    new rows came in. False when another worker had the tick (or it was skipped)."""
    store_id = runtime.store_ids.get(store.key)
    if store_id is None:
        log.warning("%s %s: store not registered yet (runtime not started?)", job_name, store.key)
        return False

    async def job() -> None:
        async with make_client(store, runtime.db, tokens=getattr(runtime, "shopify_tokens", None)) as client:
            report = await work(client, store_id)
        if report.new_rows or getattr(report, "caught_up", False):
            _wake(runtime)

    return await _tracked_tick(runtime, store, store_id, holder, interval, job_name, job)


def _wake(runtime: Any) -> None:
    """Tell the processor new rows are in (a runtime without a worker has nothing to wake)."""
    wake = getattr(runtime, "wake", None)
    if wake is not None:
        wake()


async def _tracked_tick(runtime: Any, store: Any, store_id: int, holder: str, interval: timedelta, job_name: str,
                        job: Callable[[], Awaitable[Any]]) -> bool:
    """Run one tick of a store's job under its lease, and record how it went (``connector/job_health.py``).

    A job that raises is logged here, on the storeloop logger with the store and job (the error's
    class and message, never a URL), and the tick ends normally: APScheduler's own logger, outside
    the structured logs, used to be the only one to hear of a revoked key or a platform down for
    hours. The outcome is stored per store and job, so the dashboard (possibly another process) shows it.
    """
    try:
        if await anyio.to_thread.run_sync(_uninstalled, runtime.db, store_id):
            return False  # app/uninstalled: its token no longer works, and nothing more is sent
    except Exception as exc:  # the database itself is unreachable: nothing to record it in either
        log.error("%s %s: could not start: %s", job_name, store.key, safe_error(exc), extra={"store": store.key, "job": job_name})
        return False

    async def tracked() -> None:
        try:
            await job()
        except Exception as exc:
            await _record(runtime, store, store_id, job_name, exc)
        else:
            await _record(runtime, store, store_id, job_name, None)

    try:
        return await run_periodic(runtime.db, holder, f"job:{job_name}:{store.key}", interval * LEASE_FRACTION, tracked)
    except Exception as exc:  # the lease could not be taken (database unavailable)
        log.error("%s %s: could not take the job's lease: %s", job_name, store.key, safe_error(exc),
                  extra={"store": store.key, "job": job_name})
        return False


async def _record(runtime: Any, store: Any, store_id: int, job_name: str, error: Exception | None) -> None:
    """Log a failed tick and store the tick's outcome (a failure to store it is logged, not raised)."""
    now = runtime.clock()
    state: dict[str, Any] | None = None
    try:
        state = await anyio.to_thread.run_sync(job_health.record, runtime.db, store_id, job_name, now, error)
    except Exception as exc:
        log.error("%s %s: outcome not recorded: %s", job_name, store.key, safe_error(exc), extra={"store": store.key, "job": job_name})
    if error is None:
        return
    failures = state["failures_in_a_row"] if state else None
    hint = state["hint"] if state else None
    expected = isinstance(error, (StoreloopError, httpx.HTTPError))  # said by the platform or the network: no traceback
    log.error("%s %s failed%s: %s%s", job_name, store.key, f" ({failures} in a row)" if failures else "", safe_error(error),
              f"; {hint}" if hint else "", exc_info=None if expected else error,
              extra={"store": store.key, "job": job_name, "failures": failures, "http_status": getattr(error, "http_status", None)})


def _uninstalled(db: Any, store_id: int) -> bool:
    from sqlalchemy import select

    from connector.storage.sql import STORES

    with db.engine.connect() as conn:
        return conn.execute(select(STORES.c.uninstalled_at).where(STORES.c.id == store_id)).scalar() is not None


def build_scheduler(runtime: Any, *, holder: str | None = None) -> AsyncIOScheduler:
    scheduler = AsyncIOScheduler(
        jobstores={"default": MemoryJobStore()},
        job_defaults={"coalesce": True, "max_instances": 1, "misfire_grace_time": 60},
        timezone=timezone.utc,
    )
    holder = holder or worker_id()
    minutes = reconcile_minutes(runtime.settings)
    interval = timedelta(minutes=minutes)
    skipped = []
    for store in runtime.settings.stores:
        if not has_credentials(store, getattr(runtime, "db", None)):
            skipped.append(store.key)
            continue
        scheduler.add_job(
            reconcile_store, "interval", minutes=minutes, id=f"reconcile:{store.key}", name=f"reconcile {store.key}",
            args=[runtime, store, holder, interval], replace_existing=True, coalesce=True, max_instances=1,
        )
    if skipped:
        log.info("order reconciliation off for %s: no API credentials", ", ".join(skipped))
    add_checkout_poll_jobs(scheduler, runtime, holder)
    add_product_sync_jobs(scheduler, runtime, holder)
    add_number_quality_jobs(scheduler, runtime, holder)
    for store in runtime.settings.stores:
        if "reorder" in store.enabled_journeys():
            minutes_r = float(runtime.settings.worker.reorder_minutes)
            scheduler.add_job(
                reorder_job, "interval", minutes=minutes_r, id=f"reorder:{store.key}", name=f"reorder windows {store.key}",
                args=[runtime, store, holder, timedelta(minutes=minutes_r)], replace_existing=True, coalesce=True, max_instances=1,
            )
    scheduler.add_job(purge_job, "interval", hours=1, id="purge:raw-bodies", name="purge raw bodies",
                      args=[runtime, holder], replace_existing=True, coalesce=True, max_instances=1)
    return scheduler


async def reorder_job(runtime: Any, store: Any, holder: str, interval: timedelta) -> bool:
    """Under the store's lease: refresh reorder windows, open the due ones into the journey."""
    from connector.reorder.windows import WindowsNotOpened, run_reorder_tick

    store_id = runtime.store_ids.get(store.key)
    if store_id is None:
        return False

    async def job() -> None:
        scan, opened = await anyio.to_thread.run_sync(lambda: run_reorder_tick(runtime.db, store, store_id, runtime.clock()))
        if opened.opened or opened.expired:
            log.info("reorder windows opened", extra={"store": store.key, "opened": opened.opened, "expired": opened.expired})
        if opened.failed:  # the others opened and are committed; the tick is failing until these open too
            raise WindowsNotOpened(store.key, opened.failed)

    return await _tracked_tick(runtime, store, store_id, holder, interval, "reorder", job)


PRODUCT_SYNC_EVERY = timedelta(hours=24)
PRODUCT_SYNC_FIRST_AFTER = timedelta(minutes=1)  # the first run soon after the worker starts (then daily)


def add_product_sync_jobs(scheduler: AsyncIOScheduler, runtime: Any, holder: str) -> list[str]:
    """``products:<store key>`` daily, and once a minute after start, for each store with credentials that
    runs the reorder journey: the products' cycle tags and metafields, including products nobody edited
    since install (their webhooks never came). The lease keeps it to one run a day across workers and restarts."""
    added = []
    for store in runtime.settings.stores:
        if "reorder" not in store.enabled_journeys() or not has_credentials(store, getattr(runtime, "db", None)):
            continue
        scheduler.add_job(
            product_sync_store, "interval", seconds=PRODUCT_SYNC_EVERY.total_seconds(), id=f"products:{store.key}",
            name=f"sync products {store.key}", args=[runtime, store, holder, PRODUCT_SYNC_EVERY],
            next_run_time=datetime.now(timezone.utc) + PRODUCT_SYNC_FIRST_AFTER, replace_existing=True, coalesce=True, max_instances=1,
        )
        added.append(store.key)
    return added


async def product_sync_store(runtime: Any, store: Any, holder: str, interval: timedelta) -> bool:
    """One run for one store: take the lease ``job:products:<key>``, read every product into the inbox."""

    async def work(client: Any, store_id: int) -> Any:
        report = await sync_products(runtime.db, store, store_id, client, now=runtime.clock())
        log_report("products", report)
        return report

    return await _sync_tick(runtime, store, holder, interval, "products", work)


async def purge_job(runtime: Any, holder: str) -> dict[str, int]:
    """Hourly, under a lease: raw webhook bodies and data-request exports past ``worker.raw_body_retention_days``
    are dropped, and conversation content and the numbers customers changed from past
    ``worker.conversation_retention_days`` are emptied or forgotten (``connector/retention.py``).
    The time is the runtime's clock, as every other job's. Returns the rows purged or emptied per kind."""
    from connector.retention import expire_exports, purge_conversations, purge_previous_numbers, purge_raw_bodies

    now = runtime.clock()
    worker = runtime.settings.worker
    if not await anyio.to_thread.run_sync(lambda: acquire_lease(runtime.db, "job:purge:raw-bodies", holder, timedelta(minutes=50), now)):
        return {}
    purged = await anyio.to_thread.run_sync(purge_raw_bodies, runtime.db, now, worker.raw_body_retention_days)
    if purged:
        log.info("purged raw bodies past retention", extra={"rows": purged})
    emptied = await anyio.to_thread.run_sync(purge_conversations, runtime.db, now, worker.conversation_retention_days)
    if any(emptied.values()):  # counts only: never what was removed
        log.info("emptied conversation content past retention",
                 extra={"days": worker.conversation_retention_days, **{f"{k}_emptied": v for k, v in emptied.items()}})
    expired = await anyio.to_thread.run_sync(expire_exports, runtime.db, now, worker.raw_body_retention_days)
    forgotten = await anyio.to_thread.run_sync(purge_previous_numbers, runtime.db, now, worker.conversation_retention_days)
    if expired or forgotten:  # counts only
        log.info("expired data-request exports and forgot changed numbers past retention",
                 extra={"exports_expired": expired, "previous_numbers_forgotten": forgotten})
    return {"raw_bodies": purged, **emptied, "exports_expired": expired, "previous_numbers": forgotten}


# ---- the WhatsApp number's quality rating (Meta's webhooks say RED and GREEN, never YELLOW) ----

NUMBER_QUALITY_FIRST_AFTER = timedelta(minutes=2)  # the first read soon after the worker starts (the lease spaces restarts)


def add_number_quality_jobs(scheduler: AsyncIOScheduler, runtime: Any, holder: str) -> list[str]:
    """``number-quality:<store key>`` every ``worker.number_quality_hours`` (0 turns it off) for each
    store with a ``whatsapp_phone_number_id``, unless WhatsApp runs dry (no token to ask Meta with)."""
    hours = float(runtime.settings.worker.number_quality_hours)
    if hours <= 0 or runtime.settings.whatsapp.dry_run:
        return []
    interval = timedelta(hours=hours)
    added = []
    for store in runtime.settings.stores:
        if store.whatsapp_phone_number_id:
            scheduler.add_job(
                number_quality_store, "interval", seconds=interval.total_seconds(), id=f"number-quality:{store.key}",
                name=f"read WhatsApp number quality {store.key}", args=[runtime, store, holder, interval],
                next_run_time=datetime.now(timezone.utc) + NUMBER_QUALITY_FIRST_AFTER, replace_existing=True, coalesce=True,
                max_instances=1,
            )
            added.append(store.key)
    return added


async def number_quality_store(runtime: Any, store: Any, holder: str, interval: timedelta) -> bool:
    """One read for one store, under the lease ``job:number-quality:<key>`` (one worker asks): the
    number's rating and limit from Meta, kept and told as Meta's news is (``number_health.note_reading``).
    A failed read is logged and shown in the job's health; it never raises. False: not run."""
    from adapters.whatsapp.client import WhatsAppClient
    from connector.number_health import note_reading

    wa = runtime.settings.whatsapp
    store_id = runtime.store_ids.get(store.key)
    if wa.dry_run or not store.whatsapp_phone_number_id or store_id is None:
        return False
    assert wa.access_token is not None

    async def job() -> None:
        async with WhatsAppClient(str(wa.graph_base_url).rstrip("/"), wa.api_version, wa.access_token.get_secret_value(),
                                  max_connections=1) as client:
            reading = await client.number_quality(store.whatsapp_phone_number_id)
        told = await anyio.to_thread.run_sync(note_reading, runtime.db, store, store_id, reading, runtime.clock())
        log.log(logging.INFO if told else logging.DEBUG, "number-quality %s: rating %s, limit %s%s", store.key, reading.rating,
                reading.limit, f"; {told} news for the number's case" if told else "", extra={"store": store.key, "job": "number-quality"})

    return await _tracked_tick(runtime, store, store_id, holder, interval, "number-quality", job)


# ---- abandoned-checkout poll (Shopify has no "abandoned" webhook, and checkout webhooks get lost) ----


def add_checkout_poll_jobs(scheduler: AsyncIOScheduler, runtime: Any, holder: str) -> list[str]:
    """``checkout-poll:<store key>`` every ``worker.checkout_poll_minutes`` (0 turns it off) for
    each Shopify store with an access token; returns the store keys it was added for."""
    minutes = float(runtime.settings.worker.checkout_poll_minutes)
    if minutes <= 0:
        return []
    interval = timedelta(minutes=minutes)
    added = []
    for store in runtime.settings.stores:
        if isinstance(store, ShopifyStore) and has_credentials(store, getattr(runtime, "db", None)):
            scheduler.add_job(
                poll_checkouts_store, "interval", minutes=minutes, id=f"checkout-poll:{store.key}",
                name=f"poll abandoned checkouts {store.key}", args=[runtime, store, holder, interval],
                replace_existing=True, coalesce=True, max_instances=1,
            )
            added.append(store.key)
    return added


async def poll_checkouts_store(runtime: Any, store: Any, holder: str, interval: timedelta) -> bool:
    """One tick for one Shopify store: take the lease ``job:checkout-poll:<key>``, poll, wake the processor."""
    from connector.checkout_poll import poll_abandoned_checkouts

    async def work(client: Any, store_id: int) -> Any:
        return await poll_abandoned_checkouts(runtime.db, store, store_id, client, now=runtime.clock())

    return await _sync_tick(runtime, store, holder, interval, "checkout-poll", work)


__all__ = ["build_scheduler", "has_credentials", "make_client", "number_quality_store", "product_sync_store", "reconcile_store",
           "reorder_job", "worker_id"]
