"""The inbox: every verified delivery is stored once, before the sender gets its 2xx.

``InboxWriter`` is the group-commit writer: request handlers hand it rows and await the
commit; one task drains whatever has queued up meanwhile into a single transaction. Under
load that turns hundreds of single-row commits into a few multi-row ones, while a lone
webhook still commits at once (no timer, no added latency).
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Iterable

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
    """Single writer task with group commit; ``submit`` returns after the commit."""

    def __init__(self, db: Database, *, max_batch: int = 256, on_commit: Any = None):
        self.db = db
        self.max_batch = max_batch
        self.on_commit = on_commit
        self._queue: asyncio.Queue[tuple[list[InboxItem], asyncio.Future[list[bool]]]] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None
        self._waiting = 0  # submissions not answered yet
        self.batches = 0
        self.rows = 0
        self.last_commit = 0.0  # monotonic time of the last commit: "ingest is busy" for the processor

    def busy(self, within: float = 0.1) -> bool:
        """Webhooks are arriving: something is queued or was committed in the last ``within`` s."""
        return not self._queue.empty() or time.monotonic() - self.last_commit < within

    def waiting(self) -> int:
        """Submissions waiting for their commit (a burst queues here)."""
        return self._waiting

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="inbox-writer")

    async def stop(self) -> None:
        """Finish what is queued, then stop: nothing acknowledged is dropped."""
        if self._task is None:
            return
        done: asyncio.Future[list[bool]] = asyncio.get_running_loop().create_future()
        await self._queue.put(([], done))  # sentinel: an empty submission marks the end
        await self._task
        self._task = None

    async def submit(self, items: list[InboxItem]) -> list[bool]:
        if not items:
            return []
        if self._task is None:
            raise RuntimeError("inbox writer is not running")
        fut: asyncio.Future[list[bool]] = asyncio.get_running_loop().create_future()
        self._waiting += 1
        try:
            await self._queue.put((items, fut))
            return await fut
        finally:
            self._waiting -= 1

    async def _run(self) -> None:
        stop: asyncio.Future[list[bool]] | None = None
        while stop is None:
            items, fut = await self._queue.get()
            work: list[tuple[list[InboxItem], asyncio.Future[list[bool]]]] = []
            if items:
                work.append((items, fut))
            else:
                stop = fut
            n = len(items)
            while stop is None and n < self.max_batch and not self._queue.empty():
                items, fut = self._queue.get_nowait()
                if not items:
                    stop = fut
                    break
                work.append((items, fut))
                n += len(items)
            if work:
                await self._commit(work)
        stop.set_result([])

    async def _commit(self, work: list[tuple[list[InboxItem], asyncio.Future[list[bool]]]]) -> None:
        flat = [item for items, _ in work for item in items]
        try:
            results = await anyio.to_thread.run_sync(write_items, self.db, flat)
        except Exception as exc:  # the database is down or broken: every waiter gets a 503
            log.error("inbox write failed for %d item(s): %s", len(flat), exc.__class__.__name__)
            for _, fut in work:
                if not fut.done():
                    fut.set_exception(exc)
            return
        self.batches += 1
        self.rows += len(flat)
        self.last_commit = time.monotonic()
        pos = 0
        for items, fut in work:
            if not fut.done():
                fut.set_result(results[pos : pos + len(items)])
            pos += len(items)
        if self.on_commit is not None:
            self.on_commit()


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
