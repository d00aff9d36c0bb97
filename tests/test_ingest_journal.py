"""The ingest journal (connector/storage/journal.py): what a burst's 2xx rests on until its
inbox rows exist. Nothing acknowledged may be lost (a killed process, a failed import, a full
disk), stored twice, or reordered; a damaged tail is dropped with a log line."""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import shutil
import signal
import subprocess
import sys
import textwrap
from dataclasses import replace
from datetime import datetime, timezone
from pathlib import Path

import pytest

from connector.config import ConfigError, parse_settings
from connector.storage import journal as journal_mod
from connector.storage import models as m
from connector.storage.db import Database
from connector.storage.inbox import InboxItem, InboxWriter, sync_stores, with_body
from connector.storage.journal import IngestJournal, journal_path, orphans
from tests.conftest import settings_dict
from tests.helpers import dumps

ROOT = Path(__file__).resolve().parents[1]


def _item(store_id: int, key: str, **extra) -> InboxItem:  # type: ignore[no-untyped-def]
    return InboxItem(store_id=store_id, source="shopify", topic="orders/create", dedupe_key=key,
                     raw_body=dumps({"id": key, "note": "x" * 2_000}), headers={"x-shopify-topic": "orders/create"}, **extra)


def _stored(db: Database) -> list[tuple[str, bytes | None]]:
    """(dedupe key, body) of every inbox row, in id order."""
    with db.engine.connect() as conn:
        return [(r.dedupe_key, r.raw_body) for r in conn.execute(with_body(m.InboxEvent.dedupe_key).order_by(m.InboxEvent.id))]


@pytest.fixture
def file_db(tmp_path: Path, sqlite_template: Path):  # type: ignore[no-untyped-def]
    shutil.copy(sqlite_template, tmp_path / "j.db")
    database = Database.from_url(f"sqlite:///{tmp_path / 'j.db'}")
    yield database
    database.dispose()


def test_a_burst_is_acknowledged_from_the_journal_and_lands_in_the_inbox_once_in_order(file_db, tmp_path, caplog):
    """2,000 concurrent deliveries (each key twice): the burst goes through the journal, every
    key ends up stored once with its body, in the order first acknowledged, and the journal
    file is gone after stop. The duplicates are logged on import."""
    ids = sync_stores(file_db, [("a", "shopify")])
    caplog.set_level(logging.INFO, "storeloop.inbox")

    async def run() -> InboxWriter:
        writer = InboxWriter(file_db, max_batch=64)
        writer.start()
        await asyncio.gather(*(writer.submit([_item(ids["a"], f"k{i % 1000:04d}")]) for i in range(2000)))
        assert writer.journaled_rows > 0  # the burst went through the journal
        await writer.stop()
        return writer

    writer = asyncio.run(run())
    stored = _stored(file_db)
    assert [k for k, _ in stored] == [f"k{i:04d}" for i in range(1000)]  # once each, in acknowledgement order
    assert all(body is not None and b'"note"' in body for _, body in stored)
    assert writer.imported_rows == writer.journaled_rows
    assert list(tmp_path.glob("j.db-ingest-*.journal")) == []
    assert any(r.getMessage() == "duplicate delivery" for r in caplog.records)


def test_deliveries_after_a_burst_queue_behind_the_journaled_ones(file_db):
    """While anything is journaled, a lone delivery goes to the journal too: the inbox keeps
    the order deliveries were acknowledged in (the processor works in id order)."""
    ids = sync_stores(file_db, [("a", "shopify")])

    async def run() -> None:
        writer = InboxWriter(file_db, journal="always")
        writer._import_after = float("inf")  # as if the burst went on: nothing imported yet
        writer.start()
        await asyncio.gather(*(writer.submit([_item(ids["a"], f"burst-{i:03d}")]) for i in range(50)))
        assert _stored(file_db) == [] and writer.journal_pending()
        writer.journal_mode = "burst"  # the burst is over, a lone delivery comes
        await writer.submit([_item(ids["a"], "after")])
        assert _stored(file_db) == []  # behind the journaled ones, not before them
        writer._import_after = 0.0
        await writer.stop()

    asyncio.run(run())
    assert [k for k, _ in _stored(file_db)] == [f"burst-{i:03d}" for i in range(50)] + ["after"]


def test_a_failed_import_keeps_the_rows_journaled_and_retries(file_db, monkeypatch, caplog):
    ids = sync_stores(file_db, [("a", "shopify")])
    import connector.storage.inbox as inbox

    real = inbox.insert_sqlite
    calls = {"n": 0}

    def flaky(conn, items):  # type: ignore[no-untyped-def]
        calls["n"] += 1
        if calls["n"] == 1:
            raise inbox.sqlite3.OperationalError("disk I/O error")
        return real(conn, items)

    monkeypatch.setattr(inbox, "insert_sqlite", flaky)
    monkeypatch.setattr(inbox, "IMPORT_RETRY", 0.05)

    async def run() -> InboxWriter:
        writer = InboxWriter(file_db, journal="always")
        writer.start()
        assert await writer.submit([_item(ids["a"], "k1"), _item(ids["a"], "k2")]) == [True, True]
        for _ in range(200):
            if not writer.journal_pending():
                break
            await asyncio.sleep(0.01)
        await writer.stop()
        return writer

    writer = asyncio.run(run())
    assert calls["n"] >= 2
    assert [k for k, _ in _stored(file_db)] == ["k1", "k2"]
    assert writer.imported_rows == 2
    assert any("could not be imported (2 rows kept)" in r.getMessage() for r in caplog.records)


def test_a_full_disk_answers_503_and_leaves_the_journal_whole(file_db, tmp_path, monkeypatch):
    """``os.write`` fails half way (ENOSPC): that batch's senders get the error (the endpoint
    answers 503), the half frame is cut off, and the batches before and after are stored."""
    ids = sync_stores(file_db, [("a", "shopify")])
    real_writev = os.writev
    fail = {"on": False}

    def writev(fd: int, buffers: list[bytes]) -> int:
        if fail["on"]:
            data = b"".join(buffers)
            os.write(fd, data[: len(data) // 2])
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_writev(fd, buffers)

    monkeypatch.setattr(journal_mod.os, "writev", writev)

    async def run() -> None:
        writer = InboxWriter(file_db, journal="always")
        writer._import_after = float("inf")
        writer.start()
        await writer.submit([_item(ids["a"], "before")])
        size = writer._journal._size
        fail["on"] = True
        with pytest.raises(OSError):
            await writer.submit([_item(ids["a"], "lost-and-told")])
        fail["on"] = False
        assert os.path.getsize(writer._journal.path) == size  # cut back to the last whole frame
        await writer.submit([_item(ids["a"], "after")])
        writer._import_after = 0.0
        await writer.stop()

    asyncio.run(run())
    assert [k for k, _ in _stored(file_db)] == ["before", "after"]


def test_a_journal_keeps_every_field_and_drops_a_torn_or_damaged_tail(tmp_path, caplog):
    path = tmp_path / "x.db-ingest-1.journal"
    journal = IngestJournal.open(path)
    assert journal is not None
    received = datetime(2026, 12, 6, 9, 30, 15, 123456, tzinfo=timezone.utc)
    triggered = datetime(2026, 12, 6, 9, 30, 14, tzinfo=timezone.utc)
    first = InboxItem(store_id=7, source="whatsapp", topic="field:account_update", dedupe_key="wa:1", raw_body=b"\x00{}\xff",
                      headers={"phone_number_id": "123"}, triggered_at=triggered, status="ignored", last_error="field not handled")
    journal.append([first], received)
    journal.append([_item(7, "second"), _item(7, "third")], received)
    journal.append([_item(7, "fourth")], received)
    items, offset = journal.read(100)
    assert [i.dedupe_key for i in items] == ["wa:1", "second", "third", "fourth"]
    assert items[0] == replace(first, received_at=received)
    assert items[1].received_at == received and items[1].triggered_at is None and items[1].status == "pending"
    journal.close()  # the process "dies" with all of it journaled

    size = path.stat().st_size
    with open(path, "r+b") as f:  # killed inside the last write: its frame is cut short
        f.truncate(size - 100)
    caplog.set_level(logging.ERROR, "storeloop.inbox")
    (orphan,) = orphans(tmp_path / "x.db")
    items, _ = orphan.read(100)
    assert [i.dedupe_key for i in items] == ["wa:1", "second", "third"]
    assert any("not a whole frame" in r.getMessage() for r in caplog.records)
    orphan.close()

    with open(path, "r+b") as f:  # a flipped byte inside the second frame: its CRC fails
        data = bytearray(f.read())
        data[len(data) // 2] ^= 0xFF
        f.seek(0)
        f.write(data)
    (orphan,) = orphans(tmp_path / "x.db")
    items, _ = orphan.read(100)
    assert [i.dedupe_key for i in items] == ["wa:1"]
    orphan.close()


def test_a_journal_held_by_a_live_process_is_left_alone(file_db, tmp_path):
    ids = sync_stores(file_db, [("a", "shopify")])
    live = IngestJournal.open(tmp_path / "j.db-ingest-999999.journal")
    assert live is not None
    live.append([_item(ids["a"], "theirs")], datetime.now(timezone.utc))
    writer = InboxWriter(file_db)
    assert writer.recover() == 0  # its owner imports it
    assert _stored(file_db) == [] and live.path.exists()
    live.close()  # the owner dies without importing
    assert writer.recover() == 1
    assert [k for k, _ in _stored(file_db)] == ["theirs"]
    assert not live.path.exists()


_KILLED = """
import asyncio, sys
from connector.storage.db import Database
from connector.storage.inbox import InboxItem, InboxWriter, sync_stores

db = Database.from_url(sys.argv[1])
ids = sync_stores(db, [("a", "shopify")])

async def main():
    writer = InboxWriter(db, journal="always")
    writer._import_after = float("inf")  # killed in the middle of a burst: nothing imported yet
    writer.start()
    for n in range(5):
        await asyncio.gather(*(writer.submit([InboxItem(store_id=ids["a"], source="shopify", topic="orders/create",
                                                         dedupe_key=f"k{n}-{i}", raw_body=b'{"id": %d}' % i)]) for i in range(40)))
    print("acknowledged", writer.journaled_rows, flush=True)
    await asyncio.Event().wait()

asyncio.run(main())
"""


def test_deliveries_acknowledged_by_a_killed_process_are_imported_at_the_next_start(file_db, tmp_path):
    """A process acknowledges 200 deliveries through its journal and is SIGKILLed before any
    import: nothing is in the inbox, the journal holds it all, and the next connector start
    (``Runtime.start``: before it takes webhooks) imports it, in order, and deletes the file."""
    script = tmp_path / "killed.py"
    script.write_text(textwrap.dedent(_KILLED))
    proc = subprocess.Popen([sys.executable, str(script), str(file_db.engine.url)], cwd=ROOT, stdout=subprocess.PIPE,
                            env={**os.environ, "PYTHONPATH": str(ROOT)}, text=True)
    try:
        line = proc.stdout.readline()
        assert line.strip() == "acknowledged 200"
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
        proc.stdout.close()
    assert _stored(file_db) == []
    (journal,) = tmp_path.glob("j.db-ingest-*.journal")
    assert journal.stat().st_size > 0

    from connector.runtime import Runtime

    settings = parse_settings({**settings_dict(str(file_db.engine.url)), "stores": [
        {"key": "a", "platform": "shopify", "shop_domain": "a.myshopify.com", "webhook_secret": "s" * 24}]}, environ={})

    async def start_and_stop() -> None:
        runtime = Runtime(settings, file_db, run_worker=False)
        await runtime.start()
        await runtime.stop()

    asyncio.run(start_and_stop())
    db = Database.from_url(str(file_db.engine.url))
    try:
        stored = _stored(db)
    finally:
        db.dispose()
    assert [k for k, _ in stored] == [f"k{n}-{i}" for n in range(5) for i in range(40)]
    assert not journal.exists()


def test_only_a_sqlite_file_journals(db):
    """PostgreSQL (shared by several hosts, written from threads) never journals, even "always"."""
    ids = sync_stores(db, [("a", "shopify")])

    async def run() -> InboxWriter:
        writer = InboxWriter(db, journal="always")
        writer.start()
        await asyncio.gather(*(writer.submit([_item(ids["a"], f"k{i}")]) for i in range(100)))
        await writer.stop()
        return writer

    writer = asyncio.run(run())
    assert writer.journaled_rows == (100 if db.is_sqlite else 0) and writer.rows == 100
    assert len(_stored(db)) == 100


def test_a_mistyped_journal_mode_is_a_config_error():
    data = settings_dict("sqlite:///x.db")
    data["database"] = {**data.get("database", {}), "ingest_journal": "sometimes"}
    with pytest.raises(ConfigError) as err:
        parse_settings(data, environ={})
    assert "ingest_journal" in str(err.value) and "burst" in str(err.value)


def test_the_journal_lives_beside_the_database_named_for_the_process(tmp_path):
    assert journal_path(tmp_path / "shop.db") == tmp_path / f"shop.db-ingest-{os.getpid()}.journal"
