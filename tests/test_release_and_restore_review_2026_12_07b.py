"""Two faults a review found in today's fixes (rev7d), fixed:

1. A pay link withdrawn at the cancel came back when the store restored the order, even though she had meanwhile
   placed the same purchase again by bank transfer (the run waits for that money): she was asked to pay twice.
2. Releasing the messages held for the messaging limit read every pending message due later (SQLite planned it on
   the (status, due_at) index), not the customer's own rows: once per inbound WhatsApp message, and once per claim
   near the limit. Her rows are now read by her contact, and the held ones updated by id.
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import Any

from sqlalchemy import event

from connector.outbox.store import release_held, release_of_contacts
from connector.storage.sql import CONTACTS, STORES
from tests.scenarios.stores import WOOCOMMERCE
from tests.scenarios.test_woo_recovery import unpaid
from tests.test_payment_restore_fixes_2026_12_07b import _cancelled_in_the_night, _put_back
from tests.test_payment_review2_2026_12_07 import pay_reminders
from tests.test_payment_review_2026_12_07 import bank_transfer
from tests.scenarios import conftest as _fixtures
from tests.test_query_plans import conn  # noqa: F401 (fixture: a migrated SQLite file of its own)

# the scenarios' fixtures (tests/scenarios/conftest.py), for a test file outside that folder
_world_server, world, sqlite_url, scenario = _fixtures._world_server, _fixtures.world, _fixtures.sqlite_url, _fixtures.scenario


# ---- 1. a restored order's pay link while she pays the same purchase by bank transfer ---------------------------

def test_a_restored_order_gets_no_pay_link_while_she_pays_its_new_try_by_bank_transfer(sqlite_url, scenario, world):
    """Rome: #7301 left pending at 20:30, its pay link held for the morning; at 22:00 WooCommerce's hold-stock timeout
    cancels it (the link withdrawn). At 22:30 she checks out again (#7302, the same products) and picks a bank
    transfer: the run waits for that money (README: "the run withdraws a reminder still held", so she is not asked to
    pay twice). At 08:00 the store puts #7301 back to pending payment. She must not be sent #7301's pay link."""
    sc, first = _cancelled_in_the_night(sqlite_url, scenario)
    sc.later(minutes=30)  # 22:30
    sc.woo("order.created", bank_transfer(unpaid(2, sc.now, status="pending"), sc.now))
    sc.later(minutes=10)  # the run now waits for #7302's money (awaits_order)
    sc.at(WOOCOMMERCE.local(22, 0) + timedelta(hours=10), step=timedelta(minutes=30))  # 08:00
    _put_back(sc, first)
    sc.later(hours=4, step=timedelta(minutes=30))  # past 09:00
    assert pay_reminders(sc) == []


# ---- 2. releasing held messages reads the customer's rows, not every pending one --------------------------------

NOW = datetime(2026, 12, 1, tzinfo=timezone.utc)


def _plans(conn: Any, run: Any) -> list[str]:
    """Run the code's statement(s), then ask SQLite how it ran each exact statement on the outbox."""
    sent: list[tuple[str, Any]] = []

    def grab(_conn: Any, _cursor: Any, sql: str, parameters: Any, _context: Any, _many: bool) -> None:
        sent.append((sql, parameters))

    event.listen(conn, "before_cursor_execute", grab)
    try:
        run()
    finally:
        event.remove(conn, "before_cursor_execute", grab)
    return [" | ".join(row[-1] for row in conn.exec_driver_sql("EXPLAIN QUERY PLAN " + sql, params[0] if isinstance(params, list) else params))
            for sql, params in sent if "outbox" in sql]


def test_an_inbound_messages_release_reads_the_customers_rows_only(conn: Any) -> None:
    plans = _plans(conn, lambda: release_of_contacts(conn, [5, 6], NOW))
    assert plans and all("ix_outbox_status_due" not in p for p in plans), plans
    assert any("ix_outbox_contact_updated" in p for p in plans), plans


def test_a_claims_release_of_newly_counted_customers_reads_their_rows_only(conn: Any) -> None:
    with conn.begin():
        for sid in (1, 2):
            conn.execute(STORES.insert().values(id=sid, key=f"shop-{sid}", platform="shopify"))
            conn.execute(CONTACTS.insert().values(store_id=sid, phone_key="+919800000001", phone_e164="+919800000001"))
        plans = _plans(conn, lambda: release_held(conn, NOW, store_ids=[1, 2], recipients=["+919800000001", "+919800000002"]))
    assert plans and all("ix_outbox_status_due" not in p for p in plans), plans
    assert any("ix_outbox_contact_updated" in p for p in plans), plans
