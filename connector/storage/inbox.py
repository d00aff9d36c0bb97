"""The inbox: every verified delivery is stored once, before the sender gets its 2xx.

``InboxWriter`` is the group-commit writer: request handlers hand it rows and await the
commit; one task drains whatever has queued up meanwhile into a single transaction. Under
load that turns hundreds of single-row commits into a few multi-row ones, while a lone
webhook still commits at once (no timer, no added latency).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import sqlite3
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Iterable

import anyio.to_thread
from sqlalchemy import Select, bindparam, select
from sqlalchemy.dialects import postgresql, sqlite

from connector.storage import jsoncodec
from connector.storage.db import Database
from connector.storage.models import InboxBody, InboxEvent, Store, utcnow

log = logging.getLogger("storeloop.inbox")
RATE_HORIZON = 1.0  # seconds of commits the writer remembers for ``arrival_rate``
JOURNAL_MODES = ("burst", "always", "off")


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
    received_at: datetime | None = None  # when it was acknowledged, if before this write (the ingest journal)


@dataclass(frozen=True, slots=True)
class IngestLimits:
    """When the writer journals a batch, and how the journal moves into the inbox. The
    defaults are what ``serve`` runs; a test passes its own to reach a state quickly (a small
    file, a short retry, a burst that never ends)."""

    burst_waiting: int = 8  # submissions waiting for the writer: a burst, journaled
    burst_rate: float = 1000.0  # ... or deliveries acknowledged this fast (per second, over the last 0.25 s)
    import_rows: int = 500  # journaled rows moved into the inbox per transaction after a burst (~25-35 ms of the loop)
    burst_import_rows: int = 128  # ... and while one lasts: shorter stalls for the deliveries still arriving
    max_wait: float = 0.5  # seconds: while a burst lasts, a journaled delivery this old gets imported anyway...
    burst_import_gap: float = 0.05  # ... a batch of burst_import_rows at most this often...
    # ... and only while fewer than burst_import_rows rows are due in the inbox: as fast as the
    # processor takes them. Importing at the full 2,560 rows/s the gap allows took ~15% of the
    # loop while the processor, one short slice per 0.25 s during a burst, used a few percent of them.
    burst_bytes: int = 256 << 20  # journaled and not yet imported beyond this (~22,000 orders): it imports while the burst lasts
    max_bytes: int = 1 << 30  # ... beyond this (imports failing): new batches get a 503, as without a journal
    segment_bytes: int = 64 << 20  # a journal file this large gets a successor, so imported ones go while a long burst lasts
    import_poll: float = 0.05  # seconds between looks at whether a burst is over, while anything is journaled
    import_retry: float = 1.0  # seconds after a failed import before the next try
    orphan_scan: float = 10.0  # seconds between looks for the journals of processes that died


def with_body(*columns: Any) -> Select[Any]:
    """Inbox rows (all their columns, or ``columns``) and their stored body as ``raw_body``
    (None once retention or an erasure deleted it): the one place that joins the two tables."""
    return select(*(columns or (InboxEvent,)), InboxBody.raw_body).outerjoin(InboxBody, InboxBody.id == InboxEvent.id)


_COLUMNS = ("store_id", "source", "topic", "dedupe_key", "received_at", "triggered_at", "headers", "status", "attempts", "last_error")


def _insert_sql(dialect: str) -> str:
    marks = ", ".join(["?" if dialect == "sqlite" else "%s"] * len(_COLUMNS))
    return f"INSERT INTO inbox_events ({', '.join(_COLUMNS)}) VALUES ({marks}) ON CONFLICT (store_id, dedupe_key) DO NOTHING"


def _bodies_sql(dialect: str) -> str:
    """The bodies of rows just inserted; ``DO NOTHING``: on PostgreSQL a concurrent writer
    that stored the same delivery first stored the same bytes."""
    mark = "?" if dialect == "sqlite" else "%s"
    return f"INSERT INTO inbox_bodies (id, raw_body) VALUES ({mark}, {mark}) ON CONFLICT (id) DO NOTHING"


def _db_time(value: datetime | None, sqlite_: bool) -> Any:
    """Encoded as the models' UTCDateTime stores it: naive UTC text with microseconds on SQLite
    (always six digits, so texts compare as the times do), aware on PostgreSQL."""
    if value is None:
        return None
    value = value.astimezone(timezone.utc)
    return value.replace(tzinfo=None).isoformat(" ", "microseconds") if sqlite_ else value


def write_items(db: Database, items: Iterable[InboxItem]) -> list[bool]:
    """Store items in one transaction; True for each item newly stored, False for a duplicate.

    The hot path of every webhook, so it goes to the driver directly, and the values are
    encoded exactly as the models' column types do. SQLite: ``insert_sqlite``. PostgreSQL
    (several workers may write): one query for the keys already stored, one ``executemany``
    (``ON CONFLICT DO NOTHING`` still guards against a concurrent writer), the new rows' ids
    read back by key, and one ``executemany`` of their bodies.

    Every caller is the inbox writer (its thread path while the processor holds SQLite's
    write lock, journal imports), so each SQLite commit here wakes the WAL checkpoint thread
    as the writer's commits on the loop do: the copy of the log into the database happens
    there, not inside a later commit of ours (``Database.note_commit``).
    """
    items = list(items)
    if not items:
        return []
    if db.is_sqlite:
        with db.write_lock(), db.engine.begin() as conn:
            results = insert_sqlite(conn.connection.driver_connection, items)
        db.note_commit()
        return results
    received = _db_time(utcnow(), False)
    by_store: dict[int, list[str]] = {}
    for it in items:
        by_store.setdefault(it.store_id, []).append(it.dedupe_key)
    with db.write_lock(), db.engine.begin() as conn:
        existing: set[tuple[int, str]] = set()
        for store_id, keys in by_store.items():
            for start in range(0, len(keys), 500):
                rows = conn.execute(_EXISTING, {"sid": store_id, "keys": keys[start : start + 500]})
                existing.update((store_id, key) for (key, _id) in rows)
        out: list[bool] = []
        new: list[InboxItem] = []
        for it in items:
            key = (it.store_id, it.dedupe_key)
            if key in existing:
                out.append(False)
                continue
            existing.add(key)  # a second copy in the same batch is a duplicate too
            out.append(True)
            new.append(it)
        if new:
            conn.exec_driver_sql(_insert_sql(conn.dialect.name), [_params(it, received, False) for it in new])
            ids: dict[tuple[int, str], int] = {}
            for store_id in {it.store_id for it in new}:
                keys = [it.dedupe_key for it in new if it.store_id == store_id]
                for start in range(0, len(keys), 500):
                    rows = conn.execute(_EXISTING, {"sid": store_id, "keys": keys[start : start + 500]})
                    ids.update(((store_id, key), row_id) for (key, row_id) in rows)
            conn.exec_driver_sql(_bodies_sql(conn.dialect.name), [(ids[(it.store_id, it.dedupe_key)], it.raw_body) for it in new])
    return out


def _params(it: InboxItem, received: Any, sqlite_: bool) -> tuple[Any, ...]:
    if it.received_at is not None:
        received = _db_time(it.received_at, sqlite_)
    return (it.store_id, it.source, it.topic, it.dedupe_key, received, _db_time(it.triggered_at, sqlite_),
            jsoncodec.dumps(it.headers), it.status, 0, it.last_error)


_SQLITE_INSERT = _insert_sql("sqlite")
_SQLITE_BODIES = _bodies_sql("sqlite")


def insert_sqlite(conn: Any, items: list[InboxItem]) -> list[bool]:
    """Insert into the open SQLite transaction of the DB-API connection ``conn``; True per new row.

    Optimistic: one ``executemany`` whose row count says whether every item was new (nearly
    always; SQLite is a single writer, so nothing else inserts meanwhile). Only when some
    were duplicates is it undone and redone row by row, each row's own count telling which.
    That saves a lookup of the batch's keys before every insert.

    The bodies go to ``inbox_bodies`` under their rows' ids. With every item new, those are
    the ``len(items)`` ids after the largest before the insert: a rowid table without
    AUTOINCREMENT gives each new row the largest rowid plus one, and nothing else writes
    during the transaction. Checked against ``last_insert_rowid()``; where it does not hold
    (a table at the largest rowid, where SQLite picks free ids at random) the ids are read back.
    """
    received = _db_time(utcnow(), True)
    params = [_params(it, received, True) for it in items]
    conn.execute("SAVEPOINT inbox_write")
    before = conn.execute("SELECT max(id) FROM inbox_events").fetchone()[0] or 0
    cur = conn.executemany(_SQLITE_INSERT, params)
    if cur.rowcount == len(params):
        last = conn.execute("SELECT last_insert_rowid()").fetchone()[0]
        if last == before + len(params):
            conn.executemany(_SQLITE_BODIES, zip(range(before + 1, last + 1), (it.raw_body for it in items)))
        else:
            _bodies_by_key(conn, items)
        conn.execute("RELEASE inbox_write")
        return [True] * len(params)
    conn.execute("ROLLBACK TO inbox_write")
    out: list[bool] = []
    bodies: list[tuple[int, bytes]] = []
    for it, row in zip(items, params):
        cur = conn.execute(_SQLITE_INSERT, row)
        out.append(cur.rowcount == 1)
        if cur.rowcount == 1:
            bodies.append((cur.lastrowid, it.raw_body))
    conn.executemany(_SQLITE_BODIES, bodies)
    conn.execute("RELEASE inbox_write")
    return out


def _bodies_by_key(conn: Any, items: list[InboxItem]) -> None:
    """Store the bodies of items just inserted under the ids their keys were given (read back)."""
    for it in items:
        (row_id,) = conn.execute("SELECT id FROM inbox_events WHERE store_id = ? AND dedupe_key = ?",
                                 (it.store_id, it.dedupe_key)).fetchone()
        conn.execute(_SQLITE_BODIES, (row_id, it.raw_body))


def due_rows_sql(stores: tuple[int, ...] | None) -> str:
    """SQLite: how many inbox rows of ``stores`` (None: all) are due for the processor, counted
    up to the second parameter (the first: now, as the models store it). Read by the (status, id)
    index, like the processor's own query."""
    only = "" if stores is None else f" AND store_id IN ({', '.join(str(int(s)) for s in stores) or 'NULL'})"
    return (f"SELECT count(*) FROM (SELECT 1 FROM inbox_events WHERE status = 'pending'{only}"
            " AND (available_at IS NULL OR available_at <= ?) LIMIT ?)")


_EXISTING = select(InboxEvent.dedupe_key, InboxEvent.id).where(
    InboxEvent.store_id == bindparam("sid"), InboxEvent.dedupe_key.in_(bindparam("keys", expanding=True)))


class InboxWriter:
    """Single writer task with group commit; ``submit`` returns after the commit.

    On SQLite the write runs on the event loop itself whenever the write lock is free at
    once: one ``executemany`` and one commit instead of a hop to a worker thread and back.
    This departs from DESIGN.md's "blocking calls go through anyio.to_thread", on purpose:
    SQLite has one writer and the GIL lets one thread run Python, so the thread bought no
    parallelism, only hand-offs (the loop waited for the GIL, the thread for the loop).
    Written inline, ``serve --no-worker`` took about 15% less CPU per delivery (bench/_load.py
    against one server, alternating runs). The loop is never made to wait for anything but
    SQLite's own work: the connection's busy timeout is 0, and while the lock is taken (the
    processor's slice, another process) the write goes to a thread as before. That work is
    80-90 us per 11.6 KB order (bench/_asgi.py): ~6 ms for the 64-row batches of a busy
    minute, ~23 ms at the 256-row cap. PostgreSQL always writes from a thread.

    Under a burst (``limits.burst_waiting`` submissions waiting, or ``limits.burst_rate``
    deliveries a second) a SQLite file's batches go to the ingest journal instead
    (storage/journal.py: one ``os.write`` a batch, a fraction of the inbox write) and move into the inbox in
    batches of ``import_rows`` once the burst is over. While it lasts, a batch of
    ``burst_import_rows`` every ``burst_import_gap`` once the oldest has waited
    ``max_wait``, so the processor still gets rows (a steady stream of status webhooks
    that kept counting as a burst once held COD asks back for 13-30 s), but only while
    fewer than that many rows are due in the inbox for ``stores``: the processor (this
    process's, or a separate worker's: it is read from the inbox) gets rows as fast as it
    takes them, and the rest of the import waits for the end of the burst instead of
    slowing its answers. And every round once it
    holds ``burst_bytes`` not yet imported (acknowledgements then slow to the rate the
    inbox takes rows). Files of ``segment_bytes`` each, deleted once imported,
    keep a long burst's disk bounded; past ``max_bytes`` not imported (the inbox
    refusing the imports) new batches get a 503, as they would without a journal. Journals of
    processes that died are imported at start and every ``orphan_scan`` seconds by a task of
    their own, whatever ``journal`` says. The journal saves no work: the rows are
    written after the burst instead of during it (bench/ingest.py counts the server's CPU
    until they are). While anything is journaled every batch goes there too, so the
    inbox keeps the order deliveries were acknowledged in. ``journal``: "burst" (the
    default), "always" or "off" (``database.ingest_journal``). ``limits``: the figures above
    (``IngestLimits``).
    """

    def __init__(self, db: Database, *, max_batch: int = 256, on_commit: Any = None, journal: str = "burst",
                 limits: IngestLimits | None = None):
        self.db = db
        self.limits = limits or IngestLimits()
        self.max_batch = max_batch
        self.on_commit = on_commit
        self._queue: asyncio.Queue[tuple[list[InboxItem], asyncio.Future[list[bool]]]] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None
        self._waiting = 0  # submissions not answered yet
        self.batches = 0
        self.rows = 0
        self.last_commit = 0.0  # monotonic time of the last commit: "ingest is busy" for the processor
        self._recent: collections.deque[tuple[float, int]] = collections.deque()  # (commit time, rows), last RATE_HORIZON s
        self.inline_batches = 0  # of ``batches``, those written on the event loop
        self.inline_seconds = 0.0  # time the event loop spent in those writes
        self._inline: Any = None  # SQLite: the loop's own connection (detached from the pool), busy timeout 0
        if journal not in JOURNAL_MODES:
            raise ValueError(f"journal must be one of {', '.join(JOURNAL_MODES)}, not {journal!r}")
        self.journal_mode = journal
        # this process's journal files (storage.journal.IngestJournal), oldest first: appends go to
        # the last, imports read the first
        self._segments: collections.deque[Any] = collections.deque()
        self._sqlite_file = db.sqlite_file  # None: no journals here (PostgreSQL, memory)
        self._orphan_task: asyncio.Task[None] | None = None
        self._orphans_stopping = asyncio.Event()  # set by stop(): the orphan task ends after any import under way
        self._arrived = asyncio.Event()  # a submission was queued (the runner's idle wait)
        self.journaled_rows = 0  # acknowledged through the journal...
        self.imported_rows = 0  # ... and moved into the inbox since (duplicates included)
        self._import_after = 0.0  # monotonic: after a failed import, the next try
        self._burst_import_at = 0.0  # monotonic: the next import batch allowed while a burst lasts
        self._frames: collections.deque[tuple[Any, int, float]] = collections.deque()  # (file, end offset, monotonic time) per batch not imported
        self._burst_started, self._burst_rows = 0.0, 0  # since the journal was last empty: for the log
        # the stores whose due rows the processor takes (``serve`` sets them at start; None: all):
        # a removed store's rows stay pending for ever and must not count as the processor's backlog
        self.stores: tuple[int, ...] | None = None

    def busy(self, within: float = 0.1) -> bool:
        """Webhooks are arriving: something is queued or was committed in the last ``within`` s."""
        return not self._queue.empty() or time.monotonic() - self.last_commit < within

    def waiting(self) -> int:
        """Submissions waiting for their commit (a burst queues here)."""
        return self._waiting

    def arrival_rate(self, window: float = 0.25, now: float | None = None) -> float:
        """Deliveries committed per second over the last ``window`` seconds (at most RATE_HORIZON,
        all the writer remembers).

        A burst shows here even when nothing queues in the writer: written on the loop, each
        commit holds the loop, so the next deliveries wait in the sockets, not in ``waiting``."""
        now = time.monotonic() if now is None else now
        window = min(window, RATE_HORIZON)
        rows = 0
        for at, n in reversed(self._recent):
            if now - at > window:
                break
            rows += n
        return rows / window

    def journal_pending(self) -> bool:
        """Acknowledged deliveries are waiting in this process's journal for their inbox rows."""
        return any(segment.pending for segment in self._segments)

    def _pending_bytes(self) -> int:
        return sum(segment.pending_bytes for segment in self._segments)

    def recover(self) -> int:
        """Import the journals of processes that died (nobody holds their lock) into the inbox,
        oldest first, and delete them; the rows imported. Blocking: ``serve`` calls it in a thread
        before it takes webhooks, and a task every ``limits.orphan_scan`` seconds while it runs. Never
        raises: a journal that cannot be read or imported now is logged and left for the next look."""
        if self._sqlite_file is None:
            return 0
        from connector.storage.journal import orphans

        imported = 0
        try:
            found = orphans(self._sqlite_file, own={segment.path for segment in self._segments})
        except Exception as exc:
            log.error("ingest journals could not be listed: %s", exc.__class__.__name__)
            return 0
        for journal in found:
            rows = 0
            try:
                while journal.pending:
                    items, offset = journal.read(self.limits.import_rows)
                    results = write_items(self.db, items)
                    journal.consumed(offset)
                    rows += len(items)
                    log_duplicates(results, "journal of a process that stopped")
            except Exception as exc:  # left in place, from where it stopped, for the next look
                log.error("ingest journal %s could not be imported: %s", journal.path.name, exc.__class__.__name__)
                journal.close()
                continue
            imported += rows
            log.warning("ingest journal of a process that stopped imported", extra={"journal": journal.path.name, "rows": rows})
            journal.close(unlink=True)
        return imported

    async def _recover_forever(self, stopping: asyncio.Event) -> None:
        """Look every ``orphan_scan`` seconds until ``stop`` sets ``stopping``. Not cancelled: a task
        cancelled while it awaits a thread returns at once and leaves the import running in the thread."""
        while True:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(stopping.wait(), self.limits.orphan_scan)
                return
            await anyio.to_thread.run_sync(self.recover)

    def start(self) -> None:
        if self._task is None:
            self._arrived = asyncio.Event()
            self._task = asyncio.create_task(self._run(), name="inbox-writer")
            if self._sqlite_file is not None:
                self._orphans_stopping = asyncio.Event()
                self._orphan_task = asyncio.create_task(self._recover_forever(self._orphans_stopping), name="ingest-journal-orphans")

    async def stop(self) -> None:
        """Finish what is queued and journaled, then stop: nothing acknowledged is dropped."""
        if self._task is None:
            return
        done: asyncio.Future[list[bool]] = asyncio.get_running_loop().create_future()
        await self._queue.put(([], done))  # sentinel: an empty submission marks the end
        self._arrived.set()
        await self._task
        self._task = None
        if self._orphan_task is not None:
            self._orphans_stopping.set()
            await self._orphan_task  # an import under way finishes in its thread first
            self._orphan_task = None
        while self.journal_pending() and await self._import_chunk():
            pass
        for segment in self._segments:
            if segment.pending:
                log.error("inbox: the ingest journal could not be imported; the next start imports it",
                          extra={"journal": segment.path.name})
            segment.close(unlink=not segment.pending)
        self._segments.clear()
        self._frames.clear()
        if self._inline is not None:
            self._inline.close()  # detached from the pool: really closed
            self._inline = None

    async def submit(self, items: list[InboxItem]) -> list[bool]:
        """Store ``items``; True per item newly stored, False per duplicate. Items that went
        through the journal are all True: their duplicates are found (and logged) on import."""
        if not items:
            return []
        if self._task is None:
            raise RuntimeError("inbox writer is not running")
        fut: asyncio.Future[list[bool]] = asyncio.get_running_loop().create_future()
        self._waiting += 1
        try:
            await self._queue.put((items, fut))
            self._arrived.set()
            return await fut
        finally:
            self._waiting -= 1

    def defer_imports(self, until: float) -> None:
        """No journal import before ``until`` (monotonic seconds): after a failed one, the next
        waits ``limits.import_retry``; a test holds imports back with ``math.inf`` and lets
        them go with 0."""
        self._import_after = until

    def _bursting(self) -> bool:
        return self._waiting >= self.limits.burst_waiting or self.arrival_rate() >= self.limits.burst_rate

    async def _run(self) -> None:
        stop: asyncio.Future[list[bool]] | None = None
        limits = self.limits
        while stop is None:
            importing = False
            now = time.monotonic()
            if self.journal_pending() and now >= self._import_after:
                rows = limits.import_rows
                if self._bursting():
                    rows = 0
                    overdue = bool(self._frames) and now - self._frames[0][2] >= limits.max_wait
                    if self._pending_bytes() >= limits.burst_bytes:
                        rows = limits.burst_import_rows
                    elif overdue and now >= self._burst_import_at:
                        self._burst_import_at = now + limits.burst_import_gap
                        if self._due_rows() < limits.burst_import_rows:
                            rows = limits.burst_import_rows
                if rows:
                    importing = await self._import_chunk(rows)
            if self._queue.empty():
                if importing:  # more to import: let the loop answer whoever came meanwhile, then go on
                    await asyncio.sleep(0)
                    continue
                self._arrived.clear()
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(self._arrived.wait(), timeout=limits.import_poll if self.journal_pending() else None)
                continue
            items, fut = self._queue.get_nowait()
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
            started = time.perf_counter()
            if self._journal_now():
                self._journal_append(flat)
                self.journaled_rows += len(flat)
                results: list[bool] | None = [True] * len(flat)
            else:
                results = self._write_now(flat) if self.db.is_sqlite else None
                if results is None:
                    results = await anyio.to_thread.run_sync(write_items, self.db, flat)
                else:
                    self.inline_batches += 1
                    self.inline_seconds += time.perf_counter() - started
        except Exception as exc:  # the database (or the journal's disk) is down or broken: every waiter gets a 503
            log.error("inbox write failed for %d item(s): %s", len(flat), exc.__class__.__name__)
            for _, fut in work:
                if not fut.done():
                    fut.set_exception(exc)
            return
        self.batches += 1
        self.rows += len(flat)
        self.last_commit = now = time.monotonic()
        self._recent.append((now, len(flat)))
        while now - self._recent[0][0] > RATE_HORIZON:
            self._recent.popleft()
        pos = 0
        for items, fut in work:
            if not fut.done():
                fut.set_result(results[pos : pos + len(items)])
            pos += len(items)
        if self.on_commit is not None and not self.journal_pending():
            self.on_commit()

    def _journal_now(self) -> bool:
        """This batch goes to the journal: a burst, or earlier batches are still there."""
        if self.journal_mode == "off" or self._sqlite_file is None:
            return False
        return self.journal_mode == "always" or self.journal_pending() or self._bursting()

    def _journal_append(self, items: list[InboxItem]) -> None:
        """Append a batch to the last journal file (a new one when there is none, or it is full
        or broken); raises, so the senders get a 503, if nothing can be journaled."""
        from connector.storage.journal import IngestJournal, journal_path

        if not self.journal_pending():
            self._burst_started, self._burst_rows = time.monotonic(), 0
        if self._pending_bytes() >= self.limits.max_bytes:
            raise OSError(f"ingest journal holds {self.limits.max_bytes >> 20} MB the inbox has not taken yet")
        tail = self._segments[-1] if self._segments else None
        if tail is None or tail.size >= self.limits.segment_bytes or tail.broken:
            tail = IngestJournal.open(journal_path(self._sqlite_file))
            assert tail is not None  # a new file of our own: nobody else can hold it
            self._segments.append(tail)
            if len(self._segments) == 1:
                log.info("burst: webhooks acknowledged from the ingest journal", extra={"journal": tail.path.name})
        tail.append(items, utcnow())
        self._frames.append((tail, tail.size, time.monotonic()))
        self._burst_rows += len(items)

    async def _import_chunk(self, rows: int | None = None) -> bool:
        """Move the oldest journaled batches (about ``rows`` rows) into the inbox; False if that
        failed (they stay journaled; the next try in ``limits.import_retry`` s)."""
        head = self._segments[0]
        try:
            items, offset = head.read(rows or self.limits.import_rows)
            results = self._write_now(items) if items else []
            if results is None:
                results = await anyio.to_thread.run_sync(write_items, self.db, items)
            head.consumed(offset)
            while self._frames and self._frames[0][0] is head and self._frames[0][1] <= offset:
                self._frames.popleft()
        except Exception as exc:
            log.error("inbox: journaled deliveries could not be imported (kept for the next try): %s", exc.__class__.__name__)
            self.defer_imports(time.monotonic() + self.limits.import_retry)
            return False
        self.imported_rows += len(items)
        log_duplicates(results, "journal")
        if not head.pending and len(self._segments) > 1:  # imported, and no longer written to
            self._segments.popleft()
            head.close(unlink=True)
        if not self.journal_pending():
            log.info("ingest journal imported into the inbox", extra={
                "rows": self._burst_rows, "seconds": round(time.monotonic() - self._burst_started, 2)})
        if self.on_commit is not None:
            self.on_commit()
        return True

    def _due_rows(self) -> int:
        """Inbox rows due for the processor, counted up to ``limits.burst_import_rows``: one
        indexed read (status, id) in autocommit on the loop's connection, which never waits
        for the write lock in WAL mode. If it fails the answer is 0, so the import goes on as
        if the processor were short of rows (the import itself then reports the error)."""
        try:
            sql = due_rows_sql(self.stores)
            return self._loop_connection().execute(sql, (_db_time(utcnow(), True), self.limits.burst_import_rows)).fetchone()[0]
        except Exception as exc:  # the database is unreachable or broken: never the writer task's end
            log.warning("inbox: counting the rows due failed: %s", exc.__class__.__name__)
            return 0

    def _loop_connection(self) -> Any:
        """The loop's own SQLite connection (opened on first use, detached from the pool)."""
        if self._inline is None:
            self._inline = self.db.engine.raw_connection()
            self._inline.detach()  # its busy timeout of 0 must never reach another user of the pool
            self._inline.dbapi_connection.execute("PRAGMA busy_timeout = 0")
        return self._inline.dbapi_connection

    def _write_now(self, items: list[InboxItem]) -> list[bool] | None:
        """Write on the loop if SQLite's write lock is free this instant; None if it is not."""
        lock = self.db.write_lock()
        if not lock.acquire(blocking=False):
            return None  # the processor holds it in its thread
        try:
            conn = self._loop_connection()
            try:
                conn.execute("BEGIN IMMEDIATE")
            except sqlite3.OperationalError:  # another process writes: wait for it in a thread
                return None
            try:
                results = insert_sqlite(conn, items)
                conn.execute("COMMIT")
                self.db.note_commit()
            except BaseException:
                with contextlib.suppress(sqlite3.Error):
                    conn.execute("ROLLBACK")
                self._inline, broken = None, self._inline
                with contextlib.suppress(sqlite3.Error):
                    broken.close()  # the next batch opens a fresh one
                raise
            return results
        finally:
            lock.release()


def log_duplicates(results: list[bool], source: str) -> None:
    """One log line for the duplicates among ``results`` (a submission's, or a journal import's)."""
    dupes = results.count(False)
    if dupes:
        log.info("duplicate delivery", extra={"source": source, "duplicates": dupes, "items": len(results)})


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
