"""The inbox: every verified delivery is stored once, before the sender gets its 2xx.

``InboxWriter`` is the group-commit writer: request handlers hand it rows and await the
commit; one thread drains whatever has queued up meanwhile into a single transaction. Under
load that turns hundreds of single-row commits into a few multi-row ones, while a lone
webhook still commits at once (no timer, no added latency).
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Callable, Iterable, NamedTuple

import anyio.to_thread
from sqlalchemy import bindparam, insert, select
from sqlalchemy.dialects import postgresql, sqlite

from connector.storage import jsoncodec
from connector.storage.db import Database
from connector.storage.models import InboxEvent, Store, utcnow

log = logging.getLogger("storeloop.inbox")


@dataclass(frozen=True, slots=True)
class InboxItem:
    store_id: int
    source: str
    topic: str
    dedupe_key: str
    raw_body: bytes
    headers: dict[str, str] = field(default_factory=dict)
    triggered_at: datetime | None = None
    status: str = "pending"
    last_error: str | None = None


_COLUMNS = ("store_id", "source", "topic", "dedupe_key", "received_at", "triggered_at", "headers", "raw_body", "status", "attempts", "last_error")


def _insert_sql(dialect: str) -> str:
    marks = ", ".join(["?" if dialect == "sqlite" else "%s"] * len(_COLUMNS))
    return f"INSERT INTO inbox_events ({', '.join(_COLUMNS)}) VALUES ({marks}) ON CONFLICT (store_id, dedupe_key) DO NOTHING"


def _db_time(value: datetime | None, sqlite_: bool) -> Any:
    """Encoded as the models' UTCDateTime stores it: naive UTC text on SQLite, aware on PostgreSQL."""
    if value is None:
        return None
    value = value.astimezone(timezone.utc)
    return value.replace(tzinfo=None).isoformat(sep=" ") if sqlite_ else value


def write_items(db: Database, items: Iterable[InboxItem]) -> list[bool]:
    """Store items in one transaction; True for each item newly stored, False for a duplicate.

    The hot path of every webhook, so it goes to the driver directly: one query for the keys
    already stored, then one ``executemany`` (``ON CONFLICT DO NOTHING`` still guards against
    a concurrent writer). The values are encoded exactly as the models' column types do.
    """
    items = list(items)
    if not items:
        return []
    sqlite_ = db.is_sqlite
    received = _db_time(utcnow(), sqlite_)
    by_store: dict[int, list[str]] = {}
    for it in items:
        by_store.setdefault(it.store_id, []).append(it.dedupe_key)
    with db.write_lock(), db.engine.begin() as conn:
        existing: set[tuple[int, str]] = set()
        for store_id, keys in by_store.items():
            for start in range(0, len(keys), 500):
                rows = conn.execute(_EXISTING, {"sid": store_id, "keys": keys[start : start + 500]})
                existing.update((store_id, key) for (key,) in rows)
        out: list[bool] = []
        params: list[tuple[Any, ...]] = []
        for it in items:
            key = (it.store_id, it.dedupe_key)
            if key in existing:
                out.append(False)
                continue
            existing.add(key)  # a second copy in the same batch is a duplicate too
            out.append(True)
            params.append((it.store_id, it.source, it.topic, it.dedupe_key, received, _db_time(it.triggered_at, sqlite_),
                           jsoncodec.dumps(it.headers), it.raw_body, it.status, 0, it.last_error))
        if params:
            conn.exec_driver_sql(_insert_sql(conn.dialect.name), params)
    return out


_EXISTING = select(InboxEvent.dedupe_key).where(
    InboxEvent.store_id == bindparam("sid"), InboxEvent.dedupe_key.in_(bindparam("keys", expanding=True)))


class InboxWriter:
    """Group commit on one long-lived writer thread; ``submit`` returns after the commit.

    The thread takes whatever has queued up since its last commit (up to ``max_batch``
    rows) into one transaction, hands the results back to the event loop and goes straight
    on to the next batch. A thread of its own rather than one ``to_thread`` call per batch:
    under load each call waited ~2.5 ms for a worker to start and ~2 ms for the busy event
    loop to resume the writer, more than the ~3.5 ms the write itself took, and the
    writer sat idle meanwhile (bench/ingest.py).
    """

    def __init__(self, db: Database, *, max_batch: int = 256, on_commit: Any = None):
        self.db = db
        self.max_batch = max_batch
        self.on_commit = on_commit
        self._queue: queue.SimpleQueue[_Submission | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._waiting = 0  # submissions not answered yet; read and written on the event loop only
        self.batches = 0
        self.rows = 0
        self.last_commit = 0.0  # monotonic time of the last commit: "ingest is busy" for the processor

    def busy(self, within: float = 0.1) -> bool:
        """Webhooks are arriving: something waits for its commit or was committed in the last ``within`` s."""
        return self._waiting > 0 or time.monotonic() - self.last_commit < within

    def waiting(self) -> int:
        """Submissions waiting for their commit (a burst queues here)."""
        return self._waiting

    def start(self) -> None:
        if self._thread is None:
            self._loop = asyncio.get_running_loop()
            self._thread = threading.Thread(target=self._run, name="inbox-writer", daemon=True)
            self._thread.start()

    async def stop(self) -> None:
        """Finish what is queued, then stop: nothing acknowledged is dropped, and a submission
        that arrives after the stop gets an error (a 503 to the sender), never silence."""
        thread = self._thread
        if thread is None:
            return
        self._queue.put(None)  # the end mark: everything submitted before it is committed first
        await anyio.to_thread.run_sync(thread.join)
        self._thread = None
        while True:
            try:
                late = self._queue.get_nowait()
            except queue.Empty:
                break
            if late is not None:
                self._settle([(late.future, None, RuntimeError("inbox writer stopped"))], False)

    async def submit(self, items: list[InboxItem] | Callable[[], Any]) -> Any:
        """Store ``items``; True for each row newly stored, False for a duplicate.

        ``items`` may instead be a function the writer thread calls just before the batch's
        insert, to build the rows there: work that would otherwise hold the event loop (the
        Shopify route's HMAC over the body and JSON check). If it returns something other
        than a list (an answer for a delivery that is not to be stored), ``submit`` returns
        that unchanged; if it raises, ``submit`` raises the same exception.
        """
        if not callable(items) and not items:
            return []
        if self._thread is None or self._loop is None:
            raise RuntimeError("inbox writer is not running")
        fut: asyncio.Future[Any] = self._loop.create_future()
        self._waiting += 1
        self._queue.put(_Submission(items, fut))
        return await fut

    def _run(self) -> None:
        """The writer thread: block for the first submission, then take what else is queued."""
        stop = False
        while not stop:
            first = self._queue.get()
            if first is None:
                break
            work = [first]
            n = _size(first)
            while n < self.max_batch:
                try:
                    more = self._queue.get_nowait()
                except queue.Empty:
                    break
                if more is None:
                    stop = True
                    break
                work.append(more)
                n += _size(more)
            self._commit(work)

    def _commit(self, work: list[_Submission]) -> None:
        answers: list[tuple[asyncio.Future[Any], Any, BaseException | None]] = []
        stored: list[tuple[asyncio.Future[Any], list[InboxItem]]] = []
        for sub in work:
            items = sub.items
            if callable(items):
                try:
                    items = items()
                except Exception as exc:
                    log.exception("preparing a delivery for the inbox failed")
                    answers.append((sub.future, None, exc))
                    continue
                if not isinstance(items, list):
                    answers.append((sub.future, items, None))
                    continue
            stored.append((sub.future, items))
        flat = [item for _, items in stored for item in items]
        committed = False
        try:
            results = write_items(self.db, flat) if flat else []
            committed = bool(flat)
        except Exception as exc:  # the database is down or broken: every waiter gets a 503
            log.error("inbox write failed for %d item(s): %s", len(flat), exc.__class__.__name__)
            answers.extend((fut, None, exc) for fut, _ in stored)
        else:
            pos = 0
            for fut, items in stored:
                answers.append((fut, results[pos : pos + len(items)], None))
                pos += len(items)
            if committed:
                self.batches += 1
                self.rows += len(flat)
        self._call_loop(self._settle, answers, committed)

    def _call_loop(self, fn: Any, *args: Any) -> None:
        assert self._loop is not None
        try:
            self._loop.call_soon_threadsafe(fn, *args)
        except RuntimeError:  # the loop is closed: nobody is waiting any more
            log.warning("inbox writer finished a batch after its event loop closed")

    def _settle(self, answers: list[tuple[asyncio.Future[Any], Any, BaseException | None]], committed: bool) -> None:
        """On the event loop: answer each waiting submission."""
        if committed:
            self.last_commit = time.monotonic()
        for fut, value, exc in answers:
            self._waiting -= 1
            if not fut.done():
                if exc is not None:
                    fut.set_exception(exc)
                else:
                    fut.set_result(value)
        if committed and self.on_commit is not None:
            self.on_commit()


def _size(sub: _Submission) -> int:
    return 1 if callable(sub.items) else len(sub.items)


class _Submission(NamedTuple):
    items: list[InboxItem] | Callable[[], Any]
    future: asyncio.Future[Any]


def sync_stores(db: Database, stores: Iterable[tuple[str, str]]) -> dict[str, int]:
    """Make sure every configured store has its row; return key -> id."""
    stores = list(stores)
    with db.write_lock(), db.engine.begin() as conn:
        existing = {r.key: (r.id, r.platform) for r in conn.execute(select(Store.id, Store.key, Store.platform))}
        for key, platform in stores:
            if key not in existing:
                # two workers starting together both see it missing: the second insert is a no-op
                dialect_insert = postgresql.insert if conn.dialect.name == "postgresql" else sqlite.insert
                conn.execute(dialect_insert(Store).values(key=key, platform=platform, created_at=utcnow())
                             .on_conflict_do_nothing(index_elements=["key"]))
            elif existing[key][1] != platform:
                raise ValueError(f"store {key!r} is recorded as {existing[key][1]}, config says {platform}")
        return {r.key: r.id for r in conn.execute(select(Store.id, Store.key))}
