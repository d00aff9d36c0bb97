"""Hot lookups use the index made for them on SQLite, not one that reads a whole status.

SQLite has no statistics here (nothing runs ANALYZE), so its planner picks an index by
shape: given ``status = ?`` beside an ``IN (...)`` list it preferred the status index,
and each lookup then read every pending message, every sent message or every active run
of the store - cheap in a test, a full scan per batch in a store with months of history
or a queue backed up behind a WhatsApp outage. These tests pin the plans.
"""

from __future__ import annotations

import shutil
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import event

from connector.outbox.store import _BY_KEYS, _DUE_MARKETING, _HISTORY
from connector.state import RUNS_OF_CONTACTS
from connector.storage.db import make_engine
from connector.storage.inbox import due_rows_sql


@pytest.fixture
def conn(tmp_path: Path, sqlite_template: Path) -> Any:
    path = tmp_path / "plans.db"
    shutil.copy(sqlite_template, path)
    engine = make_engine(f"sqlite:///{path}")
    with engine.connect() as c:
        yield c
    engine.dispose()


def plan_of(conn: Any, statement: Any, params: dict[str, Any]) -> str:
    """Run ``statement`` as the code does, then ask SQLite how it ran that exact SQL."""
    sent: list[tuple[str, Any]] = []

    def grab(_conn: Any, _cursor: Any, sql: str, parameters: Any, _context: Any, _many: bool) -> None:
        sent.append((sql, parameters))

    event.listen(conn, "before_cursor_execute", grab)
    try:
        conn.execute(statement, params).all()
    finally:
        event.remove(conn, "before_cursor_execute", grab)
    sql, parameters = sent[-1]
    return " | ".join(row[-1] for row in conn.exec_driver_sql("EXPLAIN QUERY PLAN " + sql, parameters))


NOW = datetime(2026, 12, 1, tzinfo=timezone.utc)


def test_send_history_reads_the_contacts_rows_only(conn: Any) -> None:
    plan = plan_of(conn, _HISTORY, {"cids": list(range(1, 40)), "since": NOW})
    assert "ix_outbox_contact_updated" in plan, plan
    # when each went out: its own outbound message rows, by their index
    assert "ix_messages_store_outbox" in plan and "SCAN messages" not in plan, plan


def test_a_claims_look_for_later_reminders_reads_the_contacts_rows_only(conn: Any) -> None:
    plan = plan_of(conn, _DUE_MARKETING, {"cids": list(range(1, 40))})
    assert "ix_outbox_contact_updated" in plan and "ix_outbox_status_due" not in plan, plan


def test_skipping_waiting_messages_finds_them_by_key(conn: Any) -> None:
    keys = [f"checkout_recovery:first:checkout:{i}" for i in range(200)]
    plan = plan_of(conn, _BY_KEYS, {"sid": 1, "keys": keys})
    assert "sqlite_autoindex_outbox_1 (store_id=? AND idempotency_key=?)" in plan, plan


def test_a_contacts_runs_are_found_by_contact(conn: Any) -> None:
    plan = plan_of(conn, RUNS_OF_CONTACTS, {"sid": 1, "cids": list(range(1, 40))})
    assert "ix_journey_runs_contact (store_id=? AND contact_id=?)" in plan, plan


def test_the_weekly_reports_failure_codes_read_the_failed_sends_rows_only(conn: Any) -> None:
    from connector.reports import ATTEMPT_CODES, STATUS_CODES

    oids = list(range(1, 200))
    assert "ix_outbox_attempts_outbox_id" in plan_of(conn, ATTEMPT_CODES, {"sid": 1, "oids": oids})
    plan = plan_of(conn, STATUS_CODES, {"sid": 1, "oids": oids})
    assert "ix_messages_store_outbox" in plan and "SCAN messages" not in plan, plan


def test_the_weekly_reports_opt_outs_read_the_weeks_revocations_only(conn: Any) -> None:
    from connector.reports import MARKETING_REVOKED

    plan = plan_of(conn, MARKETING_REVOKED, {"sid": 1, "start": NOW, "end": NOW})
    assert "ix_consent_changes_store_state_time" in plan and "SCAN consent_changes" not in plan, plan


def test_the_weekly_reports_look_at_the_credited_orders_reads_them_by_store_and_id(conn: Any) -> None:
    from connector.reports import ORDERS_NOW

    plan = plan_of(conn, ORDERS_NOW, {"sid": 1, "ids": [str(5000 + i) for i in range(200)]})
    assert "(store_id=? AND external_id=?)" in plan and "SCAN orders" not in plan, plan  # the unique (store, id) index


def test_a_batchs_emails_and_customer_ids_find_their_contacts_by_index(conn: Any) -> None:
    """One query per batch matches its orders' emails (and phone-less customers' ids) to
    contacts: it must read the (store, lower(trim(email))) and (store, customer id) indexes,
    not every contact of the store."""
    from connector.rows import _CONTACTS_BY_MANY

    plan = plan_of(conn, _CONTACTS_BY_MANY["email"], {"sid": 1, "keys": [f"buyer{i}@example.in" for i in range(100)]})
    assert "ix_contacts_store_email (store_id=? AND <expr>=?)" in plan, plan
    plan = plan_of(conn, _CONTACTS_BY_MANY["external_customer_id"], {"sid": 1, "keys": [str(7_000_000 + i) for i in range(100)]})
    assert "ix_contacts_store_customer (store_id=? AND external_customer_id=?)" in plan, plan


def test_the_journals_look_at_the_processors_backlog_reads_the_pending_rows_only(conn: Any) -> None:
    """While a burst lasts the writer counts the rows due every 50 ms at most: by the (status,
    id) index, never a scan of every row the inbox ever stored."""
    sql = due_rows_sql((1, 2))
    plan = " | ".join(row[-1] for row in conn.exec_driver_sql("EXPLAIN QUERY PLAN " + sql, ("2026-12-01 00:00:00.000000", 128)))
    assert "ix_inbox_events_status_id" in plan, plan


def test_an_unquoted_reply_reads_the_customers_own_recent_messages_only(conn: Any) -> None:
    """Which journey an unquoted reply answers: the customer's messages of the last days, by the (contact,
    updated_at) index, not every message the store sent (a status index would read every sent one)."""
    from connector.journeys.runner import _REACHED_LATELY

    plan = plan_of(conn, _REACHED_LATELY, {"sid": 1, "cid": 7, "since": NOW})
    assert "ix_outbox_contact_updated (contact_id=? AND updated_at>?)" in plan, plan


def test_whether_a_customer_is_busy_reads_their_own_runs_and_open_cases_only(conn: Any) -> None:
    """Once per reorder window opened: by the (store, contact) index, not the timers' (store, status, next_due_at)
    index, which SQLite took while the status and timer were in the SQL and which reads every scheduled run of the store."""
    from connector.reorder.windows import _BUSY

    plan = plan_of(conn, _BUSY, {"sid": 1, "cid": 7, "since": NOW})
    assert "ix_journey_runs_contact (store_id=? AND contact_id=?)" in plan and "ix_journey_runs_due" not in plan, plan


def test_the_orders_that_name_a_batchs_checkouts_are_found_by_token(conn: Any) -> None:
    from connector.rows import _ORDERS_BY_CHECKOUT, _ORDERS_BY_CHECKOUTS

    plan = plan_of(conn, _ORDERS_BY_CHECKOUTS, {"sid": 1, "tokens": [f"tok{i}" for i in range(300)]})
    assert "ix_orders_store_checkout (store_id=? AND checkout_token=?)" in plan, plan
    plan = plan_of(conn, _ORDERS_BY_CHECKOUT, {"sid": 1, "token": "tok1"})
    assert "ix_orders_store_checkout (store_id=? AND checkout_token=?)" in plan, plan


def test_what_went_out_of_a_timer_batchs_runs_is_found_by_key(conn: Any) -> None:
    from connector.outbox.store import SENT_STEPS  # the runner's and the weekly report's one look at when steps went out

    keys = [f"cod_confirmation:ask:order:{i}" for i in range(500)]
    plan = plan_of(conn, SENT_STEPS, {"sid": 1, "keys": keys})
    assert "sqlite_autoindex_outbox_1 (store_id=? AND idempotency_key=?)" in plan, plan


def test_the_dashboards_count_of_parked_timers_reads_the_stores_active_runs_only(conn: Any) -> None:
    """Runs whose timer raised are found among the store's active runs (by the timers' index), not by
    reading every run of every store."""
    from connector.journeys.timer_failures import PARKED_COUNT

    plan = plan_of(conn, PARKED_COUNT, {"sid": 1})
    assert "ix_journey_runs_due (store_id=? AND status=?" in plan and "SCAN journey_runs" not in plan, plan


def test_the_reorder_scans_find_a_stores_erased_contacts_by_the_phone_key_index(conn: Any) -> None:
    """Once per scan (and per batch of due windows): a range of the (store, phone_key) unique index, not every contact."""
    from connector.compliance import ERASED_CONTACTS
    from connector.storage.models import Contact

    plan = plan_of(conn, ERASED_CONTACTS, {"sid": 1})
    assert "(store_id=? AND phone_key>? AND phone_key<?)" in plan and "SCAN contacts" not in plan, plan
    plan = plan_of(conn, ERASED_CONTACTS.where(Contact.id.in_(list(range(1, 40)))), {"sid": 1})
    assert "SCAN contacts" not in plan, plan


def test_a_batchs_look_at_erased_customers_orders_searches_the_marks_index(conn: Any) -> None:
    """Once per store and batch (connector/erased.py): the marks of the batch's orders, checkouts and customers,
    and the store's key, each a search of the (store, kind, ref) unique index, not every mark of the store."""
    from connector.erased import marks_query

    query = marks_query(1, [str(5000 + i) for i in range(300)], [f"{i:064x}" for i in range(50)], with_key=True,
                        checkouts=[f"cart-{i}" for i in range(200)])
    plan = plan_of(conn, query, {})
    assert "SCAN erased_refs" not in plan and plan.count("(store_id=? AND kind=? AND ref=?)") == 3, plan
    assert "(store_id=? AND kind=?)" in plan, plan
