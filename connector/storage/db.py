"""Engine construction, migrations and the schema check ``serve`` runs before it starts.

SQLite is the embedded default: WAL, a busy timeout, and ``BEGIN IMMEDIATE`` so a
transaction takes the write lock up front (a deferred one that upgrades fails at once
with "database is locked"; see shared/docs/libraries.md §5). PostgreSQL is chosen by URL.
"""

from __future__ import annotations

import threading
from contextlib import nullcontext
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config as AlembicConfig
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, Engine, create_engine, event
from sqlalchemy.exc import InterfaceError, OperationalError

from connector.errors import DatabaseUnavailableError, SchemaNotReadyError
from connector.storage.checkpoint import WalCheckpointer
from connector.storage import jsoncodec

MIGRATIONS = Path(__file__).with_name("migrations")
# New SQLite files use 8 KB pages (SQLite's default is 4 KB): a webhook's 7-12 KB body spans
# fewer pages, each a WAL frame at commit and again at the checkpoint. Measured on 2026-12-04
# (bench/HISTORY.md): the pipeline's CPU time -6% in five of five pairs, a webhook's server
# CPU -6% in the mean of three (noisy); the reorder window scan +2-9% and its tick +10 ms.
# A file keeps the page size it was created with (SQLite cannot change it in WAL mode), so
# existing files stay at 4 KB.
SQLITE_PAGE_SIZE = 8192
# SQLite copies the write-ahead log into the database once it passes this many pages (its
# default: 1,000, 8 MB here), inside the commit that passed it. A busy database's random index
# pages (delivery, step, run, phone and token keys) are written again by commit after commit;
# a longer log copies each of them once per checkpoint instead of once per commit. The issue's
# day (bench/pipeline.py, 150,000 events) at 10,000 pages: 12.96 GB written against 15.58 GB,
# 73.6 CPU s against 78.3, 1,951 events/s against 1,775 (bench/HISTORY.md). The log file grows
# to about 80 MB plus the largest transaction; ``serve`` and ``worker`` still checkpoint from a
# thread after the webhook writer's commits (storage/checkpoint.py), as before.
SQLITE_AUTOCHECKPOINT = 10_000
READ_ONLY = "storeloop_read_only"  # the execution option of ``Database.reading``'s connections


def make_engine(url: str, *, pool_size: int = 5, connect_args: dict[str, Any] | None = None) -> Engine:
    """``hide_parameters``: a database error's text (logged, and kept as an inbox row's
    ``last_error``) never carries the statement's values, which hold phones, names, emails."""
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"timeout": 30, "check_same_thread": False, **(connect_args or {})},
                               json_serializer=jsoncodec.dumps, json_deserializer=jsoncodec.loads, hide_parameters=True)

        @event.listens_for(engine, "connect")
        def _pragmas(dbapi_conn: Any, _record: Any) -> None:
            dbapi_conn.isolation_level = None  # let SQLAlchemy emit BEGIN (documented recipe)
            cur = dbapi_conn.cursor()
            pragmas = (f"page_size={SQLITE_PAGE_SIZE}", "journal_mode=WAL", "synchronous=NORMAL", "busy_timeout=30000", "foreign_keys=ON",
                       f"wal_autocheckpoint={SQLITE_AUTOCHECKPOINT}")
            for pragma in pragmas:  # page_size first: it only takes on a file with nothing in it yet
                cur.execute(f"PRAGMA {pragma}")
            cur.close()

        @event.listens_for(engine, "begin")
        def _begin(conn: Any) -> None:
            conn.exec_driver_sql("BEGIN" if conn.get_execution_options().get(READ_ONLY) else "BEGIN IMMEDIATE")

        return engine
    return create_engine(
        url, pool_size=pool_size, max_overflow=pool_size, pool_pre_ping=True, connect_args=connect_args or {},
        json_serializer=jsoncodec.dumps, json_deserializer=jsoncodec.loads, hide_parameters=True,
    )


def alembic_config(engine: Engine) -> AlembicConfig:
    cfg = AlembicConfig()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.attributes["engine"] = engine
    return cfg


def head_revision() -> str:
    cfg = AlembicConfig()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    head = ScriptDirectory.from_config(cfg).get_current_head()
    assert head is not None
    return head


def connect(engine: Engine) -> Connection:
    """The engine's first connection, or ``DatabaseUnavailableError`` saying in one line what
    the driver said, with the URL whose password is hidden: a command that cannot reach its
    database says so instead of printing a traceback."""
    try:
        return engine.connect()
    except (OperationalError, InterfaceError) as exc:
        url = engine.url
        reason = " ".join(str(exc.orig or exc).split()).removeprefix("connection failed: ")
        if url.password:
            reason = reason.replace(str(url.password), "***")
        if engine.dialect.name == "sqlite" and url.database and url.database != ":memory:":
            folder = Path(url.database).resolve().parent
            if not folder.is_dir():
                reason += f" (the folder {folder} does not exist)"
            else:
                reason += f" (may this user write to {folder}?)"
        raise DatabaseUnavailableError(
            f"cannot open the database {url.render_as_string(hide_password=True)}: {reason}") from None


def current_revision(engine: Engine) -> str | None:
    with connect(engine) as conn:
        return MigrationContext.configure(conn).get_current_revision()


def _refuse_unknown(current: str | None) -> None:
    """A revision this code has no migration for was written by a newer release (the code was
    rolled back after its ``storeloop migrate``): no upgrade can start from it, and Alembic's own
    answer is a traceback."""
    if current is None:
        return
    cfg = AlembicConfig()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    if current not in {script.revision for script in ScriptDirectory.from_config(cfg).walk_revisions()}:
        raise SchemaNotReadyError(
            f"database schema is at {current}, which this version does not know (its newest is {head_revision()}): "
            "a newer storeloop release migrated it; run that release, or restore the backup taken before its migrate")


def migrate(engine: Engine, revision: str = "head") -> None:
    """Upgrade to ``revision``; on SQLite the WAL is then copied in and truncated, or a
    migration that rewrote a large table would leave a log file of that size on disk."""
    _refuse_unknown(current_revision(engine))
    command.upgrade(alembic_config(engine), revision)
    if engine.dialect.name == "sqlite":
        raw = engine.raw_connection()
        try:
            raw.dbapi_connection.execute("PRAGMA wal_checkpoint(TRUNCATE)")  # autocommit: see make_engine
        finally:
            raw.close()


def ensure_schema(engine: Engine, *, auto_migrate: bool) -> str:
    """Refuse to run on a database that is not at the head revision.

    SQLite files are migrated in place when ``auto_migrate`` is on (the embedded default
    should just work); PostgreSQL is never migrated implicitly: with several workers the
    operator runs ``storeloop migrate`` once.
    """
    current = current_revision(engine)
    head = head_revision()
    if current == head:
        return "up to date"
    _refuse_unknown(current)
    if auto_migrate and engine.dialect.name == "sqlite":
        migrate(engine)
        return f"migrated {current or 'empty database'} -> {head}"
    raise SchemaNotReadyError(
        f"database schema is at {current or 'nothing (empty database)'}, this version needs {head}; "
        "run `storeloop migrate --config PATH` first"
    )


class WriteLock:
    """SQLite's in-process write lock, which also tells whether a thread is waiting for it.

    A long batch (the processor draining a backlog) asks ``waiting()`` after each row and
    commits early for whoever waits: a webhook's insert, the dispatcher recording a send, an
    admin request. The waiters are a set of thread ids: ``set.add`` and ``discard`` are atomic
    under the GIL, where a counter's ``+= 1`` from two threads is not.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._waiters: set[int] = set()

    def acquire(self, blocking: bool = True) -> bool:
        if self._lock.acquire(blocking=False):
            return True
        if not blocking:
            return False
        me = threading.get_ident()
        self._waiters.add(me)
        try:
            return self._lock.acquire()
        finally:
            self._waiters.discard(me)

    def release(self) -> None:
        self._lock.release()

    def waiting(self) -> bool:
        return bool(self._waiters)

    def __enter__(self) -> "WriteLock":
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self._lock.release()


class Database:
    """The engine plus the one in-process write lock SQLite needs.

    SQLite has a single writer; letting many threads race on ``BEGIN IMMEDIATE`` makes the
    busy handler back off and p99 latency explode (libraries.md §8). Serialising writers in
    the process keeps latency flat. PostgreSQL needs no such lock.
    """

    def __init__(self, engine: Engine):
        self.engine = engine
        self.is_sqlite = engine.dialect.name == "sqlite"
        self._lock = WriteLock() if self.is_sqlite else None
        self._nolock = nullcontext()
        self.checkpointer: WalCheckpointer | None = None

    @property
    def sqlite_file(self) -> str | None:
        """The SQLite database's file (what its WAL checkpoints and ingest journals go with);
        None for PostgreSQL and in-memory databases."""
        path = self.engine.url.database
        if not self.is_sqlite or not path or path == ":memory:" or "mode=memory" in str(self.engine.url):
            return None
        return path

    def start_checkpoints(self) -> bool:
        """``serve`` and ``worker``: SQLite's WAL checkpoints from a thread of their own
        (storage/checkpoint.py). False where there is no file to do it for."""
        path = self.sqlite_file
        if path is None:
            return False
        if self.checkpointer is None:
            self.checkpointer = WalCheckpointer(path)
        self.checkpointer.start()
        return True

    def note_commit(self) -> None:
        """The inbox writer committed (on the event loop, or in a thread through ``write_items``):
        time for a checkpoint in the background.

        Only that writer asks: its commits are the ones a checkpoint must stay out of. The
        processor commits in a worker thread, where SQLite's own checkpoint costs the loop
        nothing, and waking this thread after each of its small transactions made the
        journey timers a quarter slower (bench/pipeline.py)."""
        if self.checkpointer is not None:
            self.checkpointer.notify()

    @classmethod
    def from_url(cls, url: str, **kwargs: Any) -> "Database":
        return cls(make_engine(url, **kwargs))

    def write_lock(self) -> Any:
        return self._lock if self._lock is not None else self._nolock

    def reading(self) -> Connection:
        """A connection for reads only. On SQLite its transactions begin deferred: in WAL mode a read
        neither waits for the writer nor holds it up, where ``BEGIN IMMEDIATE`` (every other transaction
        here) takes SQLite's write lock even to read. A write through it fails: use ``write_lock`` and
        ``engine.begin``."""
        return self.engine.connect().execution_options(**{READ_ONLY: True})

    def write_lock_wanted(self) -> bool:
        """SQLite: another thread of this process waits for the write lock."""
        return self._lock is not None and self._lock.waiting()

    def dispose(self) -> None:
        if self.checkpointer is not None:
            self.checkpointer.stop()
        self.engine.dispose()
