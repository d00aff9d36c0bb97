"""A store's hashing key for erased customer ids (``connector/erased.py``) is one, whoever makes it.

The key is made at the store's first customer erasure. Two first erasures at once (two workers on
PostgreSQL) must not leave two keys, and a key read inside a transaction that then rolled back must not
stay in the processor's memory: either would hash one customer's id under the wrong key, and her later
account updates would no longer be recognised (or every later erasure would fail). Driven through the
functions the inbox processor calls: ``compliance.redact_customer`` in a transaction, ``erased.Book``
reading a batch's marks. SQLite and PostgreSQL.
"""

from __future__ import annotations

import threading
import time
from datetime import datetime, timezone

import pytest
from sqlalchemy import func, insert, select, text

from connector import compliance, erased
from connector import events as ev
from connector.storage import models as m

T0 = datetime(2026, 11, 2, 9, 0, tzinfo=timezone.utc)
LUCIA, RAVI = "4242", "5151"


@pytest.fixture
def store(db):
    with db.engine.begin() as conn:
        sid = conn.execute(insert(m.Store).values(key="shop-a", platform="shopify").returning(m.Store.id)).scalar_one()
    return sid


def account_update(customer_id: str) -> list[ev.Event]:
    return [ev.CustomerUpdated(customer=ev.Customer(external_id=customer_id, first_name="Someone"))]


def keys_of(db, store_id: int) -> int:
    with db.engine.connect() as conn:
        return conn.execute(select(func.count()).select_from(m.ErasedRef)
                            .where(m.ErasedRef.store_id == store_id, m.ErasedRef.kind == erased.KEY)).scalar_one()


def both_ignored(db, store_id: int, book: erased.Book) -> None:
    """A later batch with both customers' account updates: each is recognised as erased."""
    with db.engine.connect() as conn:
        book.clear()
        book.read(conn, store_id, (), [LUCIA, RAVI])
    assert book.erased_on(store_id, account_update(LUCIA)) is not None
    assert book.erased_on(store_id, account_update(RAVI)) is not None


def test_a_key_read_in_a_batch_that_rolled_back_is_not_kept(db, store):
    """Lucia's erasure is the store's first: a later row of the same batch reads her key, then the batch
    rolls back. Ravi's erasure makes the store's key anew, Lucia's is answered again: both their later
    account updates are ignored."""
    book = erased.Book()
    with db.engine.connect() as conn:
        tx = conn.begin()
        compliance.redact_customer(conn, store, customer_external_id=LUCIA, now=T0)
        book.read(conn, store, (), [LUCIA])
        assert book.erased_on(store, account_update(LUCIA)) is not None
        tx.rollback()
    for customer in (RAVI, LUCIA):
        with db.engine.begin() as conn:
            compliance.redact_customer(conn, store, customer_external_id=customer, now=T0)
    assert keys_of(db, store) == 1
    both_ignored(db, store, book)


def test_two_first_erasures_at_once_make_one_key(db, store):
    """Two workers answer Lucia's and Ravi's erasures at the same time, the store's first: one key is
    made; the second erasure waits for the first and hashes under its key."""
    if db.is_sqlite:
        pytest.skip("SQLite has one writer at a time: no two first erasures overlap")
    first = db.engine.connect()
    tx = first.begin()
    compliance.redact_customer(first, store, customer_external_id=LUCIA, now=T0)  # its key not yet committed
    failed: list[BaseException] = []

    def second() -> None:
        try:
            with db.engine.begin() as conn:
                conn.execute(text("SET application_name = 'second_erasure'"))
                compliance.redact_customer(conn, store, customer_external_id=RAVI, now=T0)
        except BaseException as exc:  # noqa: BLE001  (reported by the test's thread below)
            failed.append(exc)

    worker = threading.Thread(target=second)
    worker.start()
    deadline = time.monotonic() + 30
    with db.engine.connect() as watch:  # until the second erasure waits on the first's key, or is done
        while worker.is_alive() and time.monotonic() < deadline:
            waiting = watch.execute(text("SELECT 1 FROM pg_stat_activity WHERE application_name = 'second_erasure' "
                                         "AND wait_event_type = 'Lock'")).first()
            watch.rollback()  # pg_stat_activity is a snapshot per transaction
            if waiting:
                break
            worker.join(0.01)
    tx.commit()
    first.close()
    worker.join(30)
    assert not worker.is_alive() and not failed, failed
    assert keys_of(db, store) == 1
    both_ignored(db, store, erased.Book())
    with db.engine.begin() as conn:  # a later erasure of the store still finds its one key
        compliance.redact_customer(conn, store, customer_external_id="6161", now=T0)
    assert keys_of(db, store) == 1
