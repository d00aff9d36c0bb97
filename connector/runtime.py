"""The composition root: settings, database, adapters, writer and processor, built once.

The web app and the worker both run on a ``Runtime``; tests build one on a temporary
database and drive it over HTTP.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import time
from collections.abc import Callable
from typing import Any
from datetime import datetime

import anyio.to_thread

from adapters.registry import normalizers
from adapters.shopify.webhooks import ShopifyWebhooks
from adapters.woocommerce import site as woo_site
from connector.config import Settings, ShopifyStore, WooCommerceStore
from connector.messages import MessageSender
from connector.outbox.dispatcher import Dispatcher
from connector.outbox.notify import NotifyDispatcher
from connector.outbox.senders import DryRunSender
from connector.outbox.writebacks import DryRunWriter, WriteBackDispatcher
from connector.store_writer import StoreWriter
from connector.processor import InboxProcessor
from connector.storage.db import Database, ensure_schema
from connector.storage.inbox import InboxWriter, sync_stores
from connector.storage.models import utcnow

log = logging.getLogger("storeloop.runtime")
GC_GEN0_THRESHOLD = 20_000
BUSY_SLICE = 0.005  # seconds of processing per batch while webhooks arrive
BUSY_PAUSE = 0.02  # at most this long after a slice, while deliveries wait for the writer: they go first
IDLE_SLICE = 0.25  # ... and while none arrive: a backlog goes in batches of up to worker.inbox_batch_size
DRAIN_SLICE = 2.5  # ... where whoever waits for the write lock ends the transaction at the next row (serve, one process), or on PostgreSQL
BUSY_ROWS = 4  # do not even load more raw bodies than a slice can process
BUSY_GROWTH_MAX = 16  # a backlog that outlasts full slices while webhooks keep arriving: slices double up to 16x (64 rows, 80 ms)
SATURATED = 8  # deliveries waiting for their commit: a burst the writer is working through
SATURATED_RATE = 1000.0  # ... or arriving this fast (per second): more than slices could keep up with
SATURATED_GAP = 0.25  # seconds between slices meanwhile, so processing never stops for a whole burst
IDLE_TIMERS = 1000  # journey timers fired per transaction when no webhooks arrive, within the idle slice
BUSY_TIMERS = 20  # ... and while they arrive (~4 ms of work, like a busy slice)
TIMERS_EVERY = 1.0  # seconds: under an inbox backlog, timers still get a batch this often


_gc_tuned = False


def tune_gc() -> None:
    """What every long-running connector process does at startup (serve, worker, benchmarks)."""
    _tune_gc_once()


def _tune_gc_once() -> None:
    global _gc_tuned
    if not _gc_tuned:
        gc.freeze()
        gc.set_threshold(GC_GEN0_THRESHOLD, 20, 20)
        _gc_tuned = True


class Runtime:
    def __init__(
        self,
        settings: Settings,
        db: Database | None = None,
        *,
        clock: Callable[[], datetime] = utcnow,
        run_worker: bool = True,
        sender: MessageSender | None = None,
        writers: dict[int, StoreWriter] | None = None,
        secret_box: Any = None,
        ingest_here: bool = False,
    ):
        """``ingest_here``: this process takes every webhook for its database (``serve`` with one
        uvicorn process), so its processor sees each delivery that waits for SQLite's write lock."""
        self.settings = settings
        self.ingest_here = ingest_here
        self.db = db or Database.from_url(settings.database.url, pool_size=settings.database.pool_size)
        self.clock = clock
        self.run_worker = run_worker
        self.stores_by_key = {s.key: s for s in settings.stores}
        self.stores_by_phone_id = {s.whatsapp_phone_number_id: s for s in settings.stores if s.whatsapp_phone_number_id}
        self.shopify = ShopifyWebhooks(s for s in settings.stores if isinstance(s, ShopifyStore))
        self.store_ids: dict[str, int] = {}
        self.writer = InboxWriter(self.db, max_batch=settings.database.group_commit_max, on_commit=self.wake,
                                  journal=settings.database.ingest_journal)
        self.processor: InboxProcessor | None = None
        self.dispatcher: Dispatcher | None = None
        self.sender = sender or self._default_sender()
        self._dispatch_stop = asyncio.Event()
        self._dispatch_task: asyncio.Task[None] | None = None
        self._writeback_task: asyncio.Task[None] | None = None
        self._notify_task: asyncio.Task[None] | None = None
        self.notifier: NotifyDispatcher | None = None
        self.scheduler: Any = None
        self.writers = writers
        # Install credentials (connector/install): the key that decrypts them (STORELOOP_SECRET_KEYS),
        # one token source per Shopify store, and the stored WooCommerce webhook secrets.
        from connector.install.credentials import WooWebhookSecrets
        from connector.secrets import SecretBox

        self.secret_box = secret_box if secret_box is not None else SecretBox.from_env()
        self.shopify_tokens: dict[str, Any] = {}
        self.woo_webhook_secrets = WooWebhookSecrets(self.db, self.secret_box, clock=lambda: self.clock())
        # deliveries refused as sent by another site than the store's, for the dashboard (connector/refused_sites.py)
        from connector.refused_sites import RefusedSites

        self.refused_sites = RefusedSites(self.db)
        self._wakeup = asyncio.Event()
        self._worker_task: asyncio.Task[None] | None = None
        self._stopping = False

    def stores_of_account(self, business_account_id: str) -> tuple[ShopifyStore | WooCommerceStore, ...]:
        """The stores an update about a WhatsApp Business Account itself (a template paused)
        concerns. A deployment has one account (``whatsapp.business_account_id``): its stores are
        every store sending through a WhatsApp number; another account's update concerns none.
        Unset, the account is taken to be ours: Meta sends the app's webhooks only for the
        accounts subscribed to it."""
        ours = self.settings.whatsapp.business_account_id
        if ours and ours.strip() != business_account_id:
            return ()
        return tuple(self.stores_by_phone_id.values())

    def stores_of_number(self, business_account_id: str, display_phone_number: str | None) -> tuple[ShopifyStore | WooCommerceStore, ...]:
        """The stores that news of one of the account's numbers (``phone_number_quality_update``,
        which names it only as displayed) concerns: the store whose ``whatsapp_display_phone_number``
        it is; else, when no store claims it, those of the account that name no number (one of
        them sends from it, and a deployment with one number need not say which it is)."""
        stores = self.stores_of_account(business_account_id)
        digits = "".join(c for c in display_phone_number or "" if c.isdigit())
        claimed = tuple(s for s in stores if digits and s.display_digits == digits)
        return claimed or tuple(s for s in stores if s.display_digits is None)

    def woocommerce_store(self, key: str) -> WooCommerceStore | None:
        store = self.stores_by_key.get(key)
        return store if isinstance(store, WooCommerceStore) else None

    def _default_sender(self) -> MessageSender:
        wa = self.settings.whatsapp
        if wa.dry_run:
            return DryRunSender()
        from adapters.whatsapp.client import WhatsAppClient

        assert wa.access_token is not None
        return WhatsAppClient(
            str(wa.graph_base_url).rstrip("/"), wa.api_version, wa.access_token.get_secret_value(), max_connections=wa.send_concurrency
        )

    def _default_writers(self) -> dict[int, StoreWriter]:
        """One client per store with API credentials (stored by install first, else configured;
        connector/install/credentials.py); a dry-run writer for the others. Sync: runs in a thread."""
        from connector.install.credentials import writer_for

        writers: dict[int, StoreWriter] = {}
        for store in self.settings.stores:
            sid = self.store_ids[store.key]
            writers[sid] = writer_for(self.db, store, self.shopify_tokens, self.secret_box, lambda: self.clock()) or DryRunWriter()
        return writers

    def wake(self) -> None:
        self._wakeup.set()

    async def start(self) -> None:
        self._wakeup = asyncio.Event()
        status = await anyio.to_thread.run_sync(
            lambda: ensure_schema(self.db.engine, auto_migrate=self.settings.database.auto_migrate)
        )
        log.info("database schema %s", status)
        self.db.start_checkpoints()  # SQLite: WAL checkpoints in a thread, not in the webhook writer's commits
        self.store_ids = await anyio.to_thread.run_sync(
            sync_stores, self.db, [(s.key, s.platform) for s in self.settings.stores]
        )
        self.processor = InboxProcessor(self.db, self.settings, self.store_ids, normalizers(), clock=self.clock)
        self.dispatcher = Dispatcher(self.db, self.settings, self.store_ids, self.sender, clock=self.clock)
        self.writers = self.writers or await anyio.to_thread.run_sync(self._default_writers)
        await anyio.to_thread.run_sync(
            self.woo_webhook_secrets.preload, [s.key for s in self.settings.stores if isinstance(s, WooCommerceStore)])
        for woo in (s for s in self.settings.stores if isinstance(s, WooCommerceStore)):  # sites listed since they were refused
            await self.refused_sites.forget(self.store_ids[woo.key], lambda sent, store=woo: woo_site.is_own_site(store, sent), self.clock())
        self.writebacks = WriteBackDispatcher(self.db, self.settings, self.store_ids, self.writers, clock=self.clock)
        self.notifier = NotifyDispatcher(self.db, self.settings, self.store_ids, clock=self.clock)
        # journals of a process that was killed mid-burst: acknowledged, so into the inbox first
        await anyio.to_thread.run_sync(self.writer.recover)
        self.writer.stores = tuple(self.store_ids[s.key] for s in self.settings.stores)  # the processor's, not a removed store's
        self.writer.start()
        # Startup objects (SQLAlchemy, pydantic models, config) never die: freeze them out of the
        # cyclic GC, and collect less often. Each webhook's JSON allocates ~1,000 objects, which
        # otherwise triggers full collections over this whole heap (measured: JSON parsing took
        # a third of the event loop under load).
        _tune_gc_once()
        if self.run_worker:
            self._worker_task = asyncio.create_task(self._process_loop(), name="inbox-processor")
            self._dispatch_stop = asyncio.Event()
            self._dispatch_task = asyncio.create_task(self.dispatcher.run_forever(self._dispatch_stop), name="outbox-dispatcher")
            self._writeback_task = asyncio.create_task(self.writebacks.run_forever(self._dispatch_stop), name="store-writebacks")
            self._notify_task = asyncio.create_task(self.notifier.run_forever(self._dispatch_stop), name="handoff-notify")
            from jobs.scheduler import build_scheduler

            self.scheduler = build_scheduler(self)
            self.scheduler.start()

    async def stop(self) -> None:
        self._stopping = True
        if self.scheduler is not None:
            self.scheduler.shutdown(wait=False)
        await self.writer.stop()
        if self._worker_task is not None:
            self._worker_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._worker_task
        if self._dispatch_task is not None:
            self._dispatch_stop.set()
            await self._dispatch_task
        if self._writeback_task is not None:
            await self._writeback_task
        if self._notify_task is not None:
            await self._notify_task
        if self.notifier is not None:
            await self.notifier.aclose()
        for writer in (self.writers or {}).values():
            await writer.aclose()
        close = getattr(self.sender, "aclose", None)
        if close is not None:
            await close()
        self.db.dispose()

    async def _process_loop(self) -> None:
        """Process as soon as a commit lands; otherwise poll (rows retried after a backoff).

        Ingest has priority: while webhooks are arriving the processor works in short
        slices, and after each one the deliveries that arrived meanwhile are committed
        before the next slice starts (``_after_busy_slice``). A steady stream that never
        queues therefore leaves the processor nearly all of the time: with a fixed 20 ms
        pause after every slice it was capped near 160 rows/s (less on a slow machine), and
        a steady 150 COD orders/s fell further behind every second (bench/latency.py: p95
        5.0-5.5 s, now ~0.55 s; 70/s did too in a slow hour). The price: a delivery that
        arrives during a slice waits for it (2xx p99 ~45 ms instead of ~25 at 150/s). While
        webhooks are queueing for the writer (a burst beyond what it commits at once) only
        one slice runs per ``SATURATED_GAP``: each slice holds SQLite's write lock and the
        GIL, and at 20% duty the processor cut ingest to about 60% of the ``--no-worker``
        rate (bench/ingest.py). Nothing is lost meanwhile: it is all in the inbox. A burst
        also counts when deliveries commit at ``SATURATED_RATE`` or faster: the writer commits
        on the loop, so a burst waits in the sockets and ``waiting`` seldom reaches 8; the
        processor then ran ~25 slices a second, each ~4 ms of CPU for its 4 rows, and took
        ~40-60 us of server CPU per delivery (bench/HISTORY.md). Rows cost half as much in the
        large batches after the burst.

        A steady stream below the burst rate can still outgrow 4-row slices: each COD ask
        brings back three status webhooks (sent, delivered, read), and at 150 orders/s the
        600 rows/s fell behind by seconds (bench/latency.py with statuses: p95 3.6 s). While
        slices keep leaving due rows behind (``processor.more_due``), each is twice the last,
        up to ``BUSY_GROWTH_MAX`` (64 rows, 80 ms); a slice that took every due row, a burst,
        or no traffic starts again at 4 rows. A delivery arriving meanwhile waits up to one
        such slice for its commit.

        Journey timers fire when no inbox row is due, a batch per transaction; a full batch
        means more are due, so the loop goes round again at once instead of waiting for the
        next poll: a wave of reminders coming due together (the morning after quiet hours, a
        sale's abandoned checkouts) used to go out at one batch of 100 per poll interval.
        With no webhooks arriving a batch is up to ``IDLE_TIMERS`` runs under the idle slice's
        time budget and yield test (``_idle_slice``), as the inbox's batches are; while they
        arrive, ``BUSY_TIMERS``. Under a backlog that lasts (a burst, a backfill) they still get a batch every
        ``TIMERS_EVERY``: they used to wait until the inbox was empty.
        """
        assert self.processor is not None
        poll = self.settings.worker.inbox_poll_seconds
        last_slice = last_timers = 0.0
        growth = 1  # busy slices are BUSY_SLICE x growth and BUSY_ROWS x growth
        while not self._stopping:
            saturated = self.writer.waiting() >= SATURATED or self.writer.arrival_rate() >= SATURATED_RATE
            if saturated and time.monotonic() - last_slice < SATURATED_GAP:
                await asyncio.sleep(BUSY_PAUSE)  # webhooks queue for the writer: they go first
                continue
            last_slice = time.monotonic()
            busy = self.writer.busy()
            if saturated or not busy:
                growth = 1
            rows = BUSY_ROWS * growth
            if busy:
                budget, limit, yield_to = BUSY_SLICE * growth, rows, None
            else:
                (budget, yield_to), limit = self._idle_slice(), None
            try:
                handled = await anyio.to_thread.run_sync(self.processor.process_batch, budget, limit, yield_to)
            except Exception:
                log.exception("inbox processing failed; retrying")
                handled = 0
                await asyncio.sleep(poll)
            # a slice that left due rows behind while webhooks keep arriving (not a burst): the
            # backlog outgrows short slices, so the next is twice as long; one that took every
            # due row ends the growth. Not "handled its row limit": on a slow or shared machine
            # the time budget ends a 4-row slice after 2 or 3 rows, and slices that never grew
            # spent their time on per-slice overhead while the backlog grew by seconds
            growth = min(growth * 2, BUSY_GROWTH_MAX) if busy and not saturated and self.processor.more_due else 1
            if handled and busy:
                await self._after_busy_slice()
            if handled and time.monotonic() - last_timers < TIMERS_EVERY:
                continue  # inbox rows first; timers when it is empty, or their turn under a backlog
            last_timers = time.monotonic()
            if busy:
                limit, budget, yield_to = BUSY_TIMERS, None, None
            else:
                limit, (budget, yield_to) = IDLE_TIMERS, self._idle_slice()
            try:
                fired = await anyio.to_thread.run_sync(self.processor.process_timers, limit, budget, yield_to)
            except Exception:
                log.exception("journey timers failed; retrying")
                fired = 0
            # a full batch means more are due (a wave of reminders); so may an idle batch its
            # slice or a waiting writer ended: the next round's due check is one indexed read
            if fired >= limit or handled or (fired and not busy):
                if busy and fired:
                    await self._after_busy_slice()
                continue
            self._wakeup.clear()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._wakeup.wait(), timeout=poll)

    def _idle_slice(self) -> tuple[float, Callable[[], bool] | None]:
        """Time budget and yield test of a transaction while no webhooks arrive (a backlog after a
        burst, a backfill, a worker on its own); it loads batches of up to ``worker.inbox_batch_size``
        rows until the budget is spent (``InboxProcessor.process_batch``).

        Longer transactions are cheaper per row once the database is large: each commit writes every
        page its rows touched, and the unique keys (delivery, step, run, phone, checkout token)
        are random, so rows share index pages only within a transaction. Batches of up to
        2,000 rows in a 1 s slice took the issue's day from 62 to 51 s of processing against
        500 rows in 0.25 s; transactions of 2.5 s made of such batches halved what it writes
        again (5.3 to 2.3 GB) while holding no more rows at once (bench/pipeline.py,
        bench/HISTORY.md). On SQLite a transaction holds the one write lock, so it may run that
        long only where whoever waits for the lock ends it at the next row: a delivery, or any
        thread of this process (the dispatcher recording a send, an admin request), in the process
        that takes every webhook (``ingest_here``). A separate ``storeloop worker`` cannot see
        another process's deliveries and keeps to ``IDLE_SLICE``. PostgreSQL's processing does not
        hold ingest up.
        """
        if not self.db.is_sqlite:
            return DRAIN_SLICE, None
        if self.ingest_here:
            writer, db = self.writer, self.db
            return DRAIN_SLICE, lambda: writer.waiting() > 0 or db.write_lock_wanted()
        return IDLE_SLICE, None

    async def _after_busy_slice(self) -> None:
        """Let the deliveries that arrived during a slice commit first, then go on at once.

        Always yields to the event loop once; then waits in 1 ms steps while submissions are
        waiting for the writer, at most ``BUSY_PAUSE``. A delivery waits at most one slice
        for the write lock, and the processor no longer sits out a fixed pause when nobody
        is waiting.
        """
        deadline = time.monotonic() + BUSY_PAUSE
        await asyncio.sleep(0)
        while self.writer.waiting() and time.monotonic() < deadline:
            await asyncio.sleep(0.001)
