"""Reorder reminders withheld while a product is sold out, and put back (fixes after review rev7b, 2026-12-07).

1. A reminder put back when the product is back in stock is planned as a reminder queued then would be: back in the
   store's quiet hours, it waits for the morning (it was "meant" for the evening and skipped as ``too_late``).
2. A stock flip (WooCommerce sends one each time the last unit sells, and again on restock) pauses and resumes the
   runs of every customer waiting for that product with a bounded number of statements, not a few per customer.

Driven through WooCommerce's signed ``product.updated`` webhook, the reorder tick and the dispatcher.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import event

from connector.config import parse_settings
from connector.reorder.windows import run_reorder_tick
from tests.conftest import PHONE_ID_WOO, empty_pg_schema, settings_dict
from tests import test_query_plans as _plans
from tests.helpers import running_app
from tests.test_reorder import TEMPLATES, T0, Clock, _dispatch, _outbox, _start
from tests.test_reorder_sold_out_2026_12_07b import DUE, MORNING, _held_for_the_morning, _morning, _stock
from tests.test_reorder_suppression import _woo, _wpost

conn = _plans.conn  # tests/test_query_plans.py's SQLite connection, for the plan pins at the end


def test_a_reminder_withheld_while_sold_out_and_restocked_in_the_evening_goes_the_next_morning(db_url):
    """Her reminder waited for 09:00; the product sold out at 08:30 (the reminder withheld at 09:05) and is back in stock
    at 22:00 the same day, in the store's quiet hours (21:00-09:00 Rome), her window still timely. The reminder is
    meant to go from then: it waits for the morning and goes at 09:05, as any reminder queued at 22:00 would."""
    with _held_for_the_morning(db_url) as (client, runtime, clock, store, sid, settings):
        _stock(client, runtime, clock, DUE + timedelta(minutes=30), "outofstock")
        assert _morning(runtime, settings, clock, store, sid) == [("reminder", "skipped")]
        back = DUE + timedelta(hours=14)  # 22:00 in Rome
        _stock(client, runtime, clock, back, "instock")
        night = _morning(runtime, settings, clock, store, sid, at=back + timedelta(minutes=5))
        [row] = _outbox(runtime)
        sent = _morning(runtime, settings, clock, store, sid, at=DUE + timedelta(days=1, hours=1, minutes=5))
    assert (night, sent) == ([("reminder", "pending")], [("reminder", "dry_run")]), row.skip_reason


def test_a_reminder_restocked_in_the_evening_goes_once_in_the_morning_and_not_at_night(db_url):
    """The same evening restock: at 23:00 and 03:00 nothing goes (quiet hours), at 09:05 the reminder goes, once, and
    nothing more goes later that day."""
    with _held_for_the_morning(db_url) as (client, runtime, clock, store, sid, settings):
        _stock(client, runtime, clock, DUE + timedelta(minutes=30), "outofstock")
        _morning(runtime, settings, clock, store, sid)
        _stock(client, runtime, clock, DUE + timedelta(hours=14), "instock")  # 22:00 in Rome
        at_night = [_morning(runtime, settings, clock, store, sid, at=DUE + timedelta(hours=h)) for h in (15, 19)]
        morning = _morning(runtime, settings, clock, store, sid, at=DUE + timedelta(days=1, hours=1, minutes=5))
        evening = _morning(runtime, settings, clock, store, sid, at=DUE + timedelta(days=1, hours=10))
    assert at_night == [[("reminder", "pending")]] * 2
    assert morning == evening == [("reminder", "dry_run")]


def test_a_reminder_restocked_in_the_daytime_still_goes_at_once(db_url):
    """Back in stock at 10:00 the same morning, outside quiet hours: the reminder goes at the next dispatch, as before."""
    with _held_for_the_morning(db_url) as (client, runtime, clock, store, sid, settings):
        _stock(client, runtime, clock, DUE + timedelta(minutes=30), "outofstock")
        _morning(runtime, settings, clock, store, sid)
        back = DUE + timedelta(hours=2)  # 10:00 in Rome
        _stock(client, runtime, clock, back, "instock")
        sent = _morning(runtime, settings, clock, store, sid, at=back + timedelta(minutes=1))
    assert sent == [("reminder", "dry_run")]


# ---- 2. a stock flip with many customers waiting ------------------------------------------------------------------
def _buyer(i: int) -> tuple[str, str]:
    """Customer ``i``'s phone as the store has it, and her WhatsApp id."""
    return f"+1 650 253 {1000 + i}", f"1650253{1000 + i}"


@contextmanager
def _many_held_for_the_morning(db_url: str, customers: int) -> Iterator[tuple[Any, Any, Clock, Any, int, Any]]:
    """``customers`` customers of the WooCommerce store (quiet hours 21:00-09:00 Rome), each with the docs' order (93 x2,
    22 x1) at T0 and a marketing opt-in; at 08:00 Rome on day 31 each one's product 22 reminder waits for 09:00."""
    raw = settings_dict(db_url)
    raw["stores"][2].update(templates=TEMPLATES, policy={"quiet_hours": "21:00-09:00"},
                            journeys={"reorder": {"cycles": {"93": "30d", "22": "30d", "23": "30d"}, "follow_up_days": None}})
    settings = parse_settings(raw, environ={})
    clock = Clock(T0)
    with running_app(settings) as (client, runtime):
        runtime.processor.clock = clock
        sid, store = runtime.store_ids["woo"], settings.stores[2]
        for i in range(customers):
            phone, wa_id = _buyer(i)
            order = _woo(8950 + i, T0, "processing", phone=phone)
            order["billing"] = {**order["billing"], "email": f"buyer{i}@example.com"}
            _wpost(client, "order.created", order)
            _start(client, wa_id, PHONE_ID_WOO, T0)
        runtime.processor.drain()
        run_reorder_tick(runtime.db, store, sid, clock.now)
        clock.now = DUE
        run_reorder_tick(runtime.db, store, sid, clock.now)
        _dispatch(runtime, settings, clock)
        assert [(o.step, o.status) for o in _outbox(runtime)] == [("reminder", "pending")] * customers  # held for 09:00
        yield client, runtime, clock, store, sid, settings


def _statements_for_stock(client, runtime, clock: Clock, at, stock: str) -> list[str]:
    """The statements the processor runs for one ``product.updated`` stock flip of product 22."""
    seen: list[str] = []

    def grab(_conn, _cursor, statement, _params, _context, _many):  # type: ignore[no-untyped-def]
        seen.append(" ".join(statement.split()).lower())

    event.listen(runtime.db.engine, "before_cursor_execute", grab)
    try:
        _stock(client, runtime, clock, at, stock)
    finally:
        event.remove(runtime.db.engine, "before_cursor_execute", grab)
    return [s for s in seen if any(t in s for t in ("journey_runs", "outbox", "reorder_windows"))]


def _flips(db_url: str, customers: int) -> tuple[list[str], list[str], list[tuple[str, str]]]:
    """Sold out at 08:30 and back at 08:50 with ``customers`` reminders held: the statements each flip ran, and what
    went at 09:05."""
    with _many_held_for_the_morning(db_url, customers) as (client, runtime, clock, store, sid, settings):
        out = _statements_for_stock(client, runtime, clock, DUE + timedelta(minutes=30), "outofstock")
        back = _statements_for_stock(client, runtime, clock, DUE + timedelta(minutes=50), "instock")
        sent = _morning(runtime, settings, clock, store, sid)
    return out, back, sent


def _another_database(db_url: str, tmp_path: Path, sqlite_template: Path, request: pytest.FixtureRequest) -> str:
    """An empty database of the same kind as ``db_url`` (a fresh SQLite file; PostgreSQL: the session's schema emptied)."""
    if db_url.startswith("sqlite"):
        path = tmp_path / "another.db"
        shutil.copy(sqlite_template, path)
        return f"sqlite:///{path}"
    return empty_pg_schema(request.getfixturevalue("pg_schema"))


def test_a_stock_flip_pauses_and_resumes_every_waiting_customers_reminder_with_as_many_statements_for_two_as_for_six(
        db_url, tmp_path, sqlite_template, request):
    """Two customers, then (in a store of their own) six, have a reminder held for the morning when the last unit sells
    and it is restocked: each reminder still goes once at 09:05, and the flips touch runs, windows and messages with the
    same statements whatever the number of customers (the work is read and written for all of them together)."""
    out_2, back_2, sent_2 = _flips(db_url, 2)
    out_6, back_6, sent_6 = _flips(_another_database(db_url, tmp_path, sqlite_template, request), 6)
    assert sent_2 == [("reminder", "dry_run")] * 2
    assert sent_6 == [("reminder", "dry_run")] * 6
    assert len(out_6) == len(out_2), (out_2, out_6)
    assert len(back_6) == len(back_2), (back_2, back_6)


def test_a_sold_out_product_withholds_every_waiting_customers_reminder(db_url):
    """Four customers' reminders held for the morning; the last unit sells at 08:30 and is not back: at 09:05 none of
    them gets a link to it, each withheld as ``sold_out``."""
    with _many_held_for_the_morning(db_url, 4) as (client, runtime, clock, store, sid, settings):
        _stock(client, runtime, clock, DUE + timedelta(minutes=30), "outofstock")
        sent = _morning(runtime, settings, clock, store, sid, at=MORNING)
        reasons = [o.skip_reason for o in _outbox(runtime)]
    assert sent == [("reminder", "skipped")] * 4
    assert reasons == ["sold_out"] * 4


# ---- the plans of the flips' lookups (as tests/test_query_plans.py pins the other hot lookups) ----------------------


def test_a_stock_flip_finds_the_products_opened_windows_by_the_stores_status_index(conn: Any) -> None:
    """Once per flip and 500 keys: the store's opened windows by the (store, status, opens_at) index, not every window."""
    from connector.reorder.windows import _OPENED_OF_PRODUCTS

    plan = _plans.plan_of(conn, _OPENED_OF_PRODUCTS, {"sid": 1, "keys": ["p:22", "s:NEEM-100", "t:neem face wash"], "since": _plans.NOW})
    assert "ix_reorder_windows_due (store_id=? AND status=?)" in plan and "SCAN reorder_windows" not in plan, plan


def test_putting_withheld_reminders_back_finds_them_by_key(conn: Any) -> None:
    """Once per resume and 500 keys: the withheld rows by the unique (store, key) index, not every skipped row."""
    from connector.outbox.store import _SKIPPED_BY_KEYS

    keys = [f"reorder:reminder:reorder:{8000 + i}:p:22" for i in range(500)]
    plan = _plans.plan_of(conn, _SKIPPED_BY_KEYS, {"sid": 1, "keys": keys})
    assert "sqlite_autoindex_outbox_1 (store_id=? AND idempotency_key=?)" in plan and "ix_outbox_status_due" not in plan, plan
