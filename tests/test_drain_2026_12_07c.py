"""A backlog drains in long transactions made of several bounded batches (``InboxProcessor.process_batch``).

While no webhooks arrive, a transaction goes on loading batches of up to ``worker.inbox_batch_size`` rows until its
time budget is spent: fewer commits (each writes every random index page its rows touched) while no more rows are held
in memory at once than one batch. What a store's engineer would notice: every row done once, a backlog committed in
few transactions, a waiting writer or a row limit still ending a transaction at the next row.
"""

from __future__ import annotations

from datetime import datetime, timezone

from sqlalchemy import event, func, select

import connector.processor as processor_module
from connector.processor import InboxProcessor
from connector.storage import models as m
from connector.storage.db import Database
from connector.storage.inbox import sync_stores, write_items
from tests.conftest import make_settings
from tests.test_storage import _consent_normalizer, _consent_rows

AT = datetime(2026, 11, 20, tzinfo=timezone.utc)


def _backlog(db_url: str, n: int, batch_size: int, on_row=None) -> tuple[Database, InboxProcessor, list[int]]:
    settings = make_settings(db_url)
    db = Database.from_url(db_url)
    ids = sync_stores(db, [(s.key, s.platform) for s in settings.stores])
    write_items(db, _consent_rows(ids["shop-a"], n))
    seen: list[int] = []
    proc = InboxProcessor(db, settings, ids, {"shopify": _consent_normalizer(seen, AT, on_row=on_row)}, clock=lambda: AT,
                          batch_size=batch_size)
    return db, proc, seen


def _commits(db: Database) -> list[int]:
    commits: list[int] = []
    event.listen(db.engine, "commit", lambda conn: commits.append(1))
    return commits


def _marked(monkeypatch) -> list[int]:
    """How many rows each batch marked (what it held at once)."""
    sizes: list[int] = []
    real = processor_module._mark_rows

    def mark(conn, marks):
        sizes.append(len(marks))
        return real(conn, marks)

    monkeypatch.setattr(processor_module, "_mark_rows", mark)
    return sizes


def _rows(db: Database) -> list[tuple[str, int]]:
    with db.engine.connect() as conn:
        return [tuple(r) for r in conn.execute(select(m.InboxEvent.status, m.InboxEvent.attempts).order_by(m.InboxEvent.id))]


def _contacts(db: Database) -> int:
    with db.engine.connect() as conn:
        return conn.execute(select(func.count()).select_from(m.Contact)).scalar_one()


def test_an_idle_backlog_goes_in_one_commit_of_several_batches_none_larger_than_the_batch_size(db_url, monkeypatch):
    db, proc, seen = _backlog(db_url, 25, batch_size=10)
    sizes, commits = _marked(monkeypatch), _commits(db)
    try:
        assert proc.process_batch(60.0) == 25
        assert not proc.more_due  # every due row taken
        assert len(commits) == 1  # the whole backlog in one transaction
        assert max(sizes) <= 10 and sum(sizes) == 25 and len(sizes) >= 3  # never more than a batch held at once
        assert sorted(seen) == list(range(25))  # each row parsed once
        assert _rows(db) == [("done", 1)] * 25 and _contacts(db) == 25
        assert proc.process_batch(60.0) == 0 and not proc.more_due
    finally:
        db.dispose()


def test_without_a_time_budget_a_transaction_is_one_batch(db_url):
    """``drain()`` and the CLI: one batch per call, as many as the batch size, and it says more may be due."""
    db, proc, _ = _backlog(db_url, 25, batch_size=10)
    commits = _commits(db)
    try:
        assert proc.process_batch() == 10 and proc.more_due
        assert len(commits) == 1
        assert proc.drain() == 15
        assert _rows(db) == [("done", 1)] * 25
    finally:
        db.dispose()


def test_a_row_limit_ends_the_transaction_however_much_budget_is_left(db_url):
    """serve's busy slices (4 rows while webhooks arrive) stay that small."""
    db, proc, seen = _backlog(db_url, 25, batch_size=10)
    try:
        assert proc.process_batch(60.0, limit=4) == 4 and proc.more_due
        assert sorted(seen) == [0, 1, 2, 3]
        assert [s for s, _ in _rows(db)].count("done") == 4
    finally:
        db.dispose()


def test_a_writer_waiting_during_a_later_batch_ends_the_transaction_at_the_next_row(db_url):
    """The first batch is committed with the one row of the second that was applied; the rows parsed but not applied
    stay pending, and the next transaction does each of them once."""
    db, proc, seen = _backlog(db_url, 25, batch_size=10)
    commits = _commits(db)
    try:
        assert proc.process_batch(60.0, yield_to=lambda: len(seen) >= 13) == 11
        assert proc.more_due and len(commits) == 1
        assert [s for s, _ in _rows(db)] == ["done"] * 11 + ["pending"] * 14
        assert proc.process_batch(60.0) == 14 and not proc.more_due
        assert _rows(db) == [("done", 1)] * 25 and _contacts(db) == 25
    finally:
        db.dispose()


def test_a_row_that_fails_in_an_early_batch_is_tried_once_and_the_later_batches_go_on(db_url):
    """A failed row waits for its retry (``available_at``): the transaction's later batches neither load it again
    nor stop for it."""

    def fail_row_4(count: int) -> None:
        if count == 4:  # the fourth row parsed (n == 3)
            raise RuntimeError("a bug in one delivery")

    db, proc, seen = _backlog(db_url, 25, batch_size=10, on_row=fail_row_4)
    try:
        assert proc.process_batch(60.0) == 25
        rows = _rows(db)
        assert rows[3] == ("pending", 1)  # waits for its retry, one attempt spent
        assert rows[:3] + rows[4:] == [("done", 1)] * 24
        assert seen.count(3) == 1 and sorted(set(seen)) == list(range(25))
        with db.engine.connect() as conn:
            retry_at = conn.execute(select(m.InboxEvent.available_at).where(m.InboxEvent.status == "pending")).scalar_one()
        assert retry_at.replace(tzinfo=timezone.utc) > AT
        assert _contacts(db) == 24
    finally:
        db.dispose()
