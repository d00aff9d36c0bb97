"""The ingest journal (connector/storage/journal.py): what a burst's 2xx rests on until its
inbox rows exist. Nothing acknowledged may be lost (a killed process, a failed import, a full
disk), stored twice, or reordered; a damaged tail is dropped with a log line."""

from __future__ import annotations

import asyncio
import errno
import json
import logging
import math
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
from connector.storage.inbox import InboxItem, InboxWriter, IngestLimits, sync_stores, with_body, write_items
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
    assert all(body is not None and json.loads(body)["id"] == key for key, body in stored)  # each row its own body
    assert writer.imported_rows == writer.journaled_rows
    assert list(tmp_path.glob("j.db-ingest-*.journal")) == []
    assert any(r.getMessage() == "duplicate delivery" for r in caplog.records)
    imported = [r for r in caplog.records if r.getMessage() == "ingest journal imported into the inbox"]
    assert imported and sum(r.rows for r in imported) == writer.journaled_rows  # what the operator's log says


def test_deliveries_after_a_burst_queue_behind_the_journaled_ones(file_db):
    """While anything is journaled, a lone delivery goes to the journal too: the inbox keeps
    the order deliveries were acknowledged in (the processor works in id order)."""
    ids = sync_stores(file_db, [("a", "shopify")])

    async def run() -> None:
        writer = InboxWriter(file_db, journal="always")
        writer.defer_imports(math.inf)  # as if the burst went on: nothing imported yet
        writer.start()
        await asyncio.gather(*(writer.submit([_item(ids["a"], f"burst-{i:03d}")]) for i in range(50)))
        assert _stored(file_db) == [] and writer.journal_pending()
        writer.journal_mode = "burst"  # the burst is over, a lone delivery comes
        await writer.submit([_item(ids["a"], "after")])
        assert _stored(file_db) == []  # behind the journaled ones, not before them
        writer.defer_imports(0.0)
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

    async def run() -> InboxWriter:
        writer = InboxWriter(file_db, journal="always", limits=IngestLimits(import_retry=0.05))
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
    assert any("could not be imported (kept for the next try)" in r.getMessage() for r in caplog.records)


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
        writer.defer_imports(math.inf)
        writer.start()
        await writer.submit([_item(ids["a"], "before")])
        (segment,) = writer._segments
        size = segment.size
        fail["on"] = True
        with pytest.raises(OSError):
            await writer.submit([_item(ids["a"], "lost-and-told")])
        fail["on"] = False
        assert os.path.getsize(segment.path) == size  # cut back to the last whole frame
        await writer.submit([_item(ids["a"], "after")])
        writer.defer_imports(0.0)
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
    writer.defer_imports(float("inf"))  # killed in the middle of a burst: nothing imported yet
    writer.start()
    for n in range(5):
        await asyncio.gather(*(writer.submit([InboxItem(store_id=ids["a"], source="shopify", topic="orders/create",
                                                         dedupe_key=f"k{n}-{i}", raw_body=b'{"id": %d}' % i)]) for i in range(40)))
    print("acknowledged", writer.journaled_rows, flush=True)
    await asyncio.Event().wait()

asyncio.run(main())
"""


@pytest.mark.parametrize("restart_mode", ["burst", "off"])
def test_deliveries_acknowledged_by_a_killed_process_are_imported_at_the_next_start(file_db, tmp_path, restart_mode):
    """A process acknowledges 200 deliveries through its journal and is SIGKILLed before any
    import: nothing is in the inbox, the journal holds it all, and the next connector start
    (``Runtime.start``: before it takes webhooks) imports it, in order, and deletes the file;
    also when the operator switched the journal off before restarting."""
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

    data = settings_dict(str(file_db.engine.url))
    data["database"] = {**data.get("database", {}), "ingest_journal": restart_mode}
    settings = parse_settings({**data, "stores": [
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


def test_each_journal_file_has_a_name_of_its_own_beside_the_database(tmp_path):
    """pid and a random part: a process never takes over the file a dead process with the same
    pid left (containers reuse pids); that one is an orphan, imported as such."""
    first, second = journal_path(tmp_path / "shop.db"), journal_path(tmp_path / "shop.db")
    assert first != second and first.parent == tmp_path
    assert first.name.startswith(f"shop.db-ingest-{os.getpid()}-") and first.name.endswith(".journal")
    assert sorted(tmp_path.glob(journal_mod.journal_glob(tmp_path / "shop.db"))) == []
    first.touch()
    assert list(tmp_path.glob(journal_mod.journal_glob(tmp_path / "shop.db"))) == [first]


def test_a_dead_process_journal_with_a_torn_tail_is_imported_up_to_it_and_kept_aside(file_db, tmp_path, caplog):
    """A process died inside a write (its pid may be ours now): its whole frames are imported,
    the file is renamed *.damaged for inspection, and this process journals to a file of its own."""
    ids = sync_stores(file_db, [("a", "shopify")])
    dead_path = tmp_path / f"j.db-ingest-{os.getpid()}-deadbeef.journal"
    dead = IngestJournal.open(dead_path)
    dead.append([_item(ids["a"], "dead-1")], datetime.now(timezone.utc))
    dead.append([_item(ids["a"], "dead-2")], datetime.now(timezone.utc))
    dead.close()
    with open(dead_path, "r+b") as f:
        f.truncate(dead_path.stat().st_size - 10)
    caplog.set_level(logging.ERROR, "storeloop.inbox")

    async def run() -> None:
        writer = InboxWriter(file_db, journal="always")
        assert await anyio_run(writer.recover) == 1
        writer.start()
        await writer.submit([_item(ids["a"], "mine")])
        assert all(segment.path != dead_path for segment in writer._segments)
        await writer.stop()

    asyncio.run(run())
    assert [k for k, _ in _stored(file_db)] == ["dead-1", "mine"]
    assert not dead_path.exists() and dead_path.with_name(dead_path.name + ".damaged").exists()
    assert any("not a whole frame" in r.getMessage() for r in caplog.records)


async def anyio_run(fn):  # type: ignore[no-untyped-def]
    import anyio.to_thread

    return await anyio.to_thread.run_sync(fn)


def test_a_long_burst_spreads_over_files_that_go_once_imported(file_db, tmp_path):
    """Files of ``segment_bytes``: a long burst's imported files are deleted while it goes on, so
    its disk stays bounded; every delivery still lands once, in order."""
    ids = sync_stores(file_db, [("a", "shopify")])

    async def run() -> int:
        writer = InboxWriter(file_db, journal="always", limits=IngestLimits(segment_bytes=20_000))  # ~8 deliveries of 2 KB a file
        writer.defer_imports(math.inf)
        writer.start()
        for n in range(10):
            await asyncio.gather(*(writer.submit([_item(ids["a"], f"k{n}-{i}")]) for i in range(8)))
        files = len(list(tmp_path.glob("j.db-ingest-*.journal")))
        assert files == len(writer._segments) >= 5
        writer.defer_imports(0.0)
        for _ in range(300):  # the writer imports file after file, deleting each once imported
            if len(list(tmp_path.glob("j.db-ingest-*.journal"))) == 1:
                break
            await asyncio.sleep(0.01)
        assert len(list(tmp_path.glob("j.db-ingest-*.journal"))) == 1  # the last one stays, emptied, for the next burst
        await writer.stop()
        return files

    asyncio.run(run())
    assert [k for k, _ in _stored(file_db)] == [f"k{n}-{i}" for n in range(10) for i in range(8)]
    assert list(tmp_path.glob("j.db-ingest-*")) == []


def test_while_the_inbox_refuses_imports_a_full_journal_answers_503(file_db, monkeypatch):
    """The journal does not hide a broken inbox for long: past ``max_bytes`` not imported,
    new batches get an error (the endpoint's 503, the sender retries), as they would without a
    journal; what was acknowledged is imported once the inbox takes writes again."""
    import connector.storage.inbox as inbox

    ids = sync_stores(file_db, [("a", "shopify")])
    refusing = {"on": True}
    real = inbox.insert_sqlite

    def insert(conn, items):  # type: ignore[no-untyped-def]
        if refusing["on"]:
            raise inbox.sqlite3.OperationalError("database or disk is full")
        return real(conn, items)

    monkeypatch.setattr(inbox, "insert_sqlite", insert)

    async def run() -> None:
        writer = InboxWriter(file_db, journal="always", limits=IngestLimits(max_bytes=10_000, import_retry=0.02))
        writer.start()
        acknowledged = 0
        with pytest.raises(OSError, match="has not taken yet"):
            for i in range(20):
                await writer.submit([_item(ids["a"], f"k{i:02d}")])
                acknowledged += 1
        assert 2 <= acknowledged < 20
        refusing["on"] = False
        await writer.stop()
        assert [k for k, _ in _stored(file_db)] == [f"k{i:02d}" for i in range(acknowledged)]

    asyncio.run(run())


def test_a_running_writer_imports_a_dead_process_journal_without_holding_up_webhooks(file_db, tmp_path):
    ids = sync_stores(file_db, [("a", "shopify")])

    async def run() -> None:
        writer = InboxWriter(file_db, journal="off", limits=IngestLimits(orphan_scan=0.05))  # orphans are imported whatever the mode
        writer.start()
        dead = IngestJournal.open(journal_path(tmp_path / "j.db"))
        dead.append([_item(ids["a"], "dead")], datetime.now(timezone.utc))
        dead.close()
        assert await writer.submit([_item(ids["a"], "live")]) == [True]
        for _ in range(200):
            if len(_stored(file_db)) == 2:
                break
            await asyncio.sleep(0.01)
        await writer.stop()

    asyncio.run(run())
    assert sorted(k for k, _ in _stored(file_db)) == ["dead", "live"]
    assert list(tmp_path.glob("j.db-ingest-*")) == []


def test_an_orphan_that_cannot_be_opened_is_logged_and_left(file_db, tmp_path, monkeypatch, caplog):
    (tmp_path / "j.db-ingest-1-00000000.journal").write_bytes(b"")
    real_open = IngestJournal.open.__func__

    def refuse(cls, path, *, create=True):  # type: ignore[no-untyped-def]
        if not create:
            raise OSError(errno.EMFILE, "Too many open files")
        return real_open(cls, path, create=create)

    monkeypatch.setattr(IngestJournal, "open", classmethod(refuse))
    caplog.set_level(logging.ERROR, "storeloop.inbox")
    writer = InboxWriter(file_db)
    assert writer.recover() == 0
    assert (tmp_path / "j.db-ingest-1-00000000.journal").exists()
    assert any("cannot be opened: OSError" in r.getMessage() for r in caplog.records)


def test_a_burst_that_lasts_still_moves_its_oldest_deliveries_into_the_inbox(file_db):
    """While deliveries keep counting as a burst (a steady stream of status webhooks can), the
    journal is not left to grow until the burst ends: a delivery that has waited
    ``max_wait`` is imported, so the processor sees it (COD asks had waited 13-30 s)."""
    ids = sync_stores(file_db, [("a", "shopify")])

    async def run() -> float:
        writer = InboxWriter(file_db, limits=IngestLimits(burst_waiting=0))  # every batch is a burst: it never ends
        writer.start()
        await writer.submit([_item(ids["a"], "first")])
        assert writer.journaled_rows == 1 and _stored(file_db) == []
        started = asyncio.get_running_loop().time()
        while not _stored(file_db):
            await writer.submit([_item(ids["a"], f"more-{asyncio.get_running_loop().time()}")])  # the stream goes on
            await asyncio.sleep(0.01)
            assert asyncio.get_running_loop().time() - started < 5, "the burst's deliveries never reached the inbox"
        waited = asyncio.get_running_loop().time() - started
        await writer.stop()
        return waited

    waited = asyncio.run(run())
    assert IngestLimits().max_wait <= waited + 0.05  # not before it was due (the burst's answers go first)
    assert _stored(file_db)[0][0] == "first"


@pytest.mark.parametrize("backlog", ["due", "other store", "retry later", "none"])
def test_during_a_burst_the_journal_feeds_the_processor_only_as_fast_as_it_takes_rows(file_db, backlog):
    """While a burst lasts the journal moves deliveries into the inbox only while fewer than
    ``burst_import_rows`` rows are due for the processor: with enough waiting (it is behind)
    nothing is imported however long the burst goes on (the import would only slow the
    answers), and the import starts as soon as the processor has taken them. Rows the
    processor will not take now (a store it does not serve, a retry not due yet) do not count
    as its backlog, so they cannot hold the burst's deliveries back."""
    ids = sync_stores(file_db, [("a", "shopify"), ("b", "shopify")])
    later = datetime(2099, 1, 1, tzinfo=timezone.utc)
    if backlog != "none":
        store = ids["b"] if backlog == "other store" else ids["a"]
        write_items(file_db, [_item(store, f"old-{i}") for i in range(4)])  # in the inbox before the burst
        if backlog == "retry later":
            with file_db.engine.begin() as conn:
                conn.execute(m.InboxEvent.__table__.update().values(available_at=later, attempts=1))
    limits = IngestLimits(burst_waiting=0, burst_import_rows=4, max_wait=0.05, burst_import_gap=0.01)

    async def run() -> tuple[list[str], list[str]]:
        writer = InboxWriter(file_db, limits=limits)  # every batch is a burst: it never ends
        writer.stores = (ids["a"],)
        writer.start()
        loop = asyncio.get_running_loop()
        started = loop.time()
        n = 0
        while loop.time() - started < 0.4:  # eight times max_wait, the stream going on
            await writer.submit([_item(ids["a"], f"new-{n:03d}")])
            n += 1
            await asyncio.sleep(0.005)
        during = [k for k, _ in _stored(file_db) if k.startswith("new-")]
        with file_db.engine.begin() as conn:  # the processor takes what was due
            conn.execute(m.InboxEvent.__table__.update().where(m.InboxEvent.dedupe_key.like("old-%")).values(status="done"))
        while not any(k.startswith("new-") for k, _ in _stored(file_db)):
            await writer.submit([_item(ids["a"], f"new-{n:03d}")])
            n += 1
            await asyncio.sleep(0.005)
            assert loop.time() - started < 5, "the processor got nothing after it ran dry"
        after = [k for k, _ in _stored(file_db) if k.startswith("new-")]
        await writer.stop()
        return during, after

    during, after = asyncio.run(run())
    if backlog == "due":
        assert during == []  # the processor was behind: nothing imported ahead of it
    else:
        assert during[:1] == ["new-000"]  # nothing it would take: the oldest imported within the burst
    assert after[0] == "new-000"
    assert [k for k, _ in _stored(file_db) if k.startswith("new-")] == sorted(k for k, _ in _stored(file_db) if k.startswith("new-"))


def test_the_connector_counts_only_its_own_stores_rows_as_the_processors_backlog(file_db):
    """``Runtime.start`` tells the writer which stores its processor takes: rows left pending
    by a store since removed from the config never count as a backlog that holds a burst back."""
    from connector.runtime import Runtime

    sync_stores(file_db, [("removed", "shopify")])
    settings = parse_settings({**settings_dict(str(file_db.engine.url)), "stores": [
        {"key": "a", "platform": "shopify", "shop_domain": "a.myshopify.com", "webhook_secret": "s" * 24},
        {"key": "b", "platform": "shopify", "shop_domain": "b.myshopify.com", "webhook_secret": "t" * 24}]}, environ={})

    async def start_and_stop() -> tuple[tuple[int, ...] | None, dict[str, int]]:
        runtime = Runtime(settings, file_db, run_worker=False)
        await runtime.start()
        try:
            return runtime.writer.stores, dict(runtime.store_ids)
        finally:
            await runtime.stop()

    stores, ids = asyncio.run(start_and_stop())
    assert stores is not None and sorted(stores) == sorted([ids["a"], ids["b"]])
    assert sync_stores(file_db, [])["removed"] not in stores


def test_if_the_backlog_cannot_be_counted_the_burst_is_still_imported(file_db, caplog):
    """A failing look at the processor's backlog (here SQLite itself refuses the read, through
    an authorizer on the database's connections; the import reads nothing it denies) is logged
    and counts as "short of rows": the writer goes on and the deliveries reach the inbox."""
    import sqlite3

    from sqlalchemy import event

    ids = sync_stores(file_db, [("a", "shopify")])
    caplog.set_level(logging.WARNING, "storeloop.inbox")
    file_db.engine.dispose()  # every connection from here on is a new one, with the authorizer

    def deny_available_at(action, table, column, *_):  # type: ignore[no-untyped-def]
        refused = action == sqlite3.SQLITE_READ and (table, column) == ("inbox_events", "available_at")
        return sqlite3.SQLITE_DENY if refused else sqlite3.SQLITE_OK

    event.listen(file_db.engine, "connect", lambda dbapi_conn, _record: dbapi_conn.set_authorizer(deny_available_at))

    async def run() -> None:
        writer = InboxWriter(file_db, limits=IngestLimits(burst_waiting=0, max_wait=0.02, burst_import_gap=0.01))
        writer.start()
        loop = asyncio.get_running_loop()
        started, n = loop.time(), 0
        while not _stored(file_db):
            # a writer task that died on the error would never answer: fail, do not hang
            await asyncio.wait_for(writer.submit([_item(ids["a"], f"k{n:03d}")]), timeout=5)  # a burst that goes on
            n += 1
            await asyncio.sleep(0.005)
            assert loop.time() - started < 5, "nothing imported while the count failed"
        await writer.stop()

    asyncio.run(run())
    assert _stored(file_db)[0][0] == "k000"
    assert any("counting the rows due failed: DatabaseError" in r.getMessage() for r in caplog.records)
