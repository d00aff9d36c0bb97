"""Stopping the inbox writer while it imports a dead process's journal (``InboxWriter.stop``)."""

from __future__ import annotations

import asyncio
import threading
from datetime import datetime, timezone

from connector.storage.inbox import InboxWriter, IngestLimits, sync_stores
from connector.storage.journal import IngestJournal, journal_path
from tests.test_ingest_journal import _item, _stored, file_db  # noqa: F401 (a fixture)


def test_stop_waits_for_an_import_under_way_and_the_dead_journal_is_gone_when_it_returns(file_db, tmp_path, monkeypatch):
    """``stop`` used to cancel the orphan task, which returned at once while the import went on in its thread:
    the process could close its database under it, and the imported journal was still on disk after stop."""
    ids = sync_stores(file_db, [("a", "shopify")])
    started, release, finished = threading.Event(), threading.Event(), threading.Event()
    real = InboxWriter.recover

    def slow_recover(self):  # type: ignore[no-untyped-def]
        started.set()
        release.wait(10)  # a large journal: the import goes on until the test lets it finish
        try:
            return real(self)
        finally:
            finished.set()

    monkeypatch.setattr(InboxWriter, "recover", slow_recover)

    async def run() -> None:
        writer = InboxWriter(file_db, journal="off", limits=IngestLimits(orphan_scan=0.01))
        dead = IngestJournal.open(journal_path(tmp_path / "j.db"))
        dead.append([_item(ids["a"], "dead")], datetime.now(timezone.utc))
        dead.close()
        writer.start()
        assert await writer.submit([_item(ids["a"], "live")]) == [True]
        while not started.is_set():
            await asyncio.sleep(0.005)
        stopping = asyncio.create_task(writer.stop())  # mid-import
        done, _ = await asyncio.wait({stopping}, timeout=0.2)
        assert not done  # stop is still waiting for the import under way
        release.set()
        await stopping
        assert finished.is_set()  # it waited for the import
        assert list(tmp_path.glob("j.db-ingest-*")) == []  # imported and deleted before stop returned

    asyncio.run(run())
    assert sorted(k for k, _ in _stored(file_db)) == ["dead", "live"]
