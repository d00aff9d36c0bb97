"""A reorder reminder already queued when its product sells out (review of 2026-12-07b).

A window that comes due while the product is sold out is held until it is back (``SOLD_OUT_RECHECK``); but a
reminder already queued (held for the store's quiet hours) when the last unit sold went out in the morning anyway:
a one-tap link to a product she cannot buy. It is withheld now, and queued again if the product is back in stock
while the reminder is still timely. Driven through WooCommerce's signed ``product.updated`` webhook
(``stock_status``), the reorder tick and the dispatcher.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from typing import Any

import pytest

from connector.config import parse_settings
from connector.reorder.windows import run_reorder_tick
from tests.conftest import PHONE_ID_WOO, settings_dict
from tests.helpers import running_app
from tests.test_reorder import TEMPLATES, T0, Clock, _dispatch, _outbox, _start
from tests.test_reorder_suppression import _woo, _woo_product, _wpost

# product 22's window: T0 (06:00 UTC) + 4 d transit + 30 d cycle - 3 d lead = day 31, 08:00 in Rome, in quiet hours
DUE = T0 + timedelta(days=31)
MORNING = T0 + timedelta(days=31, hours=1, minutes=5)  # 09:05 in Rome: quiet hours over


@contextmanager
def _held_for_the_morning(db_url: str, follow_up_days: int | None = None) -> Iterator[tuple[Any, Any, Clock, Any, int, Any]]:
    """The WooCommerce store (quiet hours 21:00-09:00 Rome) whose customer bought the docs' order (93 x2, 22 x1) at T0;
    at 08:00 Rome on day 31 product 22's window opens and its reminder waits for 09:00."""
    raw = settings_dict(db_url)
    raw["stores"][2].update(templates=TEMPLATES, policy={"quiet_hours": "21:00-09:00"},
                            journeys={"reorder": {"cycles": {"93": "30d", "22": "30d", "23": "30d"}, "follow_up_days": follow_up_days}})
    settings = parse_settings(raw, environ={})
    clock = Clock(T0)
    with running_app(settings) as (client, runtime):
        runtime.processor.clock = clock
        sid, store = runtime.store_ids["woo"], settings.stores[2]
        _wpost(client, "order.created", _woo(8901, T0, "processing"))
        _start(client, "16502530000", PHONE_ID_WOO, T0)
        runtime.processor.drain()
        run_reorder_tick(runtime.db, store, sid, clock.now)
        clock.now = DUE
        run_reorder_tick(runtime.db, store, sid, clock.now)
        _dispatch(runtime, settings, clock)
        assert [(o.step, o.status) for o in _outbox(runtime)] == [("reminder", "pending")]  # held for 09:00
        yield client, runtime, clock, store, sid, settings


def _stock(client, runtime, clock: Clock, at, stock: str) -> None:
    clock.now = at
    _wpost(client, "product.updated", _woo_product(22, stock=stock, at=at))
    runtime.processor.drain()


def _morning(runtime, settings, clock: Clock, store, sid: int, at=MORNING) -> list[tuple[str, str]]:
    clock.now = at
    runtime.processor.drain()
    while runtime.processor.process_timers(500):
        pass
    run_reorder_tick(runtime.db, store, sid, clock.now)
    _dispatch(runtime, settings, clock)
    return [(o.step, o.status) for o in _outbox(runtime)]


def test_a_reminder_waiting_for_the_morning_is_not_sent_once_its_product_sold_out(db_url):
    """The last unit sells at 08:30: at 09:05 she gets no link to a product she cannot buy."""
    with _held_for_the_morning(db_url) as (client, runtime, clock, store, sid, settings):
        _stock(client, runtime, clock, DUE + timedelta(minutes=30), "outofstock")
        sent = _morning(runtime, settings, clock, store, sid)
        [row] = _outbox(runtime)
    assert sent == [("reminder", "skipped")]
    assert row.skip_reason == "sold_out"


def test_a_reminder_withheld_while_sold_out_goes_once_the_product_is_back_in_stock(db_url):
    """Sold out at 08:30, restocked at 08:50: the reminder goes at 09:05 as planned, once."""
    with _held_for_the_morning(db_url) as (client, runtime, clock, store, sid, settings):
        _stock(client, runtime, clock, DUE + timedelta(minutes=30), "outofstock")
        _stock(client, runtime, clock, DUE + timedelta(minutes=50), "instock")
        sent = _morning(runtime, settings, clock, store, sid)
    assert sent == [("reminder", "dry_run")]


@pytest.mark.parametrize(("back_days", "reminded"), [(1, True), (3, False)], ids=["back the next day", "back too late"])
def test_a_reminder_withheld_while_sold_out_goes_when_restocked_only_while_still_timely(db_url, back_days, reminded):
    """Restocked the next day: the reminder goes then (within the store's ``late_days``, 2 by default); three days
    later a window would no longer be messaged (``late_days``), nor is the reminder withheld: nothing goes."""
    with _held_for_the_morning(db_url) as (client, runtime, clock, store, sid, settings):
        _stock(client, runtime, clock, DUE + timedelta(minutes=30), "outofstock")
        assert _morning(runtime, settings, clock, store, sid) == [("reminder", "skipped")]
        back = DUE + timedelta(days=back_days, hours=2)  # 10:00 in Rome
        _stock(client, runtime, clock, back, "instock")
        sent = _morning(runtime, settings, clock, store, sid, at=back + timedelta(minutes=5))
        sent = _morning(runtime, settings, clock, store, sid, at=back + timedelta(days=1))
    assert sent == [("reminder", "dry_run" if reminded else "skipped")]


def test_a_stock_flip_of_a_product_whose_reminder_went_out_withholds_nothing_and_credits_her_reorder(db_url):
    """Her reminder went at 09:05; the product sells out at noon and is back the next day, when she reorders: nothing
    more is sent, and the reorder is still the reminder's."""
    from sqlalchemy import select

    from connector.storage import models as m

    with _held_for_the_morning(db_url) as (client, runtime, clock, store, sid, settings):
        assert _morning(runtime, settings, clock, store, sid) == [("reminder", "dry_run")]
        _stock(client, runtime, clock, MORNING + timedelta(hours=3), "outofstock")
        _stock(client, runtime, clock, MORNING + timedelta(days=1), "instock")
        clock.now = MORNING + timedelta(days=1, hours=1)
        _wpost(client, "order.created", _woo(8902, clock.now, "processing"))
        runtime.processor.drain()
        sent = _morning(runtime, settings, clock, store, sid, at=MORNING + timedelta(days=2))
        with runtime.db.engine.connect() as conn:
            runs = conn.execute(select(m.JourneyRun).where(m.JourneyRun.journey == "reorder")).all()
    assert sent == [("reminder", "dry_run")]
    [run] = [r for r in runs if r.subject == "reorder:8901:p:22"]
    assert run.state.get("attributed") is True


def test_a_reminder_withheld_while_a_product_was_unpublished_goes_when_it_is_back_the_next_evening(db_url):
    """The same put-back for a product drafted (not sold) at 01:00 IST and published again at 17:00 the next day: the
    reminder held for the night goes then. Before, it was put back still "meant" for the night before, and the
    dispatcher skipped it as ``too_late`` (a marketing message held more than 6 hours)."""
    from tests.test_reorder import _post
    from tests.test_reorder_customer_faults import _held_for_the_night, _neem_buyer
    from tests.test_reorder_products import _neem

    with _neem_buyer(db_url, 6951) as (client, runtime, clock, store, sid, settings):
        assert _held_for_the_night(runtime, settings, clock, store, sid) == ["pending"]  # day 31, 23:30 IST
        clock.now = T0 + timedelta(days=31, hours=13, minutes=30)  # 01:00 IST
        _post(client, "products/update", _neem("draft", clock.now))
        runtime.processor.drain()
        clock.now = T0 + timedelta(days=32, hours=5, minutes=30)  # 17:00 IST the next day
        _post(client, "products/update", _neem("active", clock.now))
        runtime.processor.drain()
        sent = _morning(runtime, settings, clock, store, sid, at=clock.now + timedelta(minutes=5))
        [row] = _outbox(runtime)
    assert sent == [("reminder", "dry_run")], row.skip_reason


@pytest.mark.parametrize("first", ["sold out", "drafted"])
def test_a_reminder_waits_while_its_product_is_either_sold_out_or_unpublished_and_goes_once_it_is_neither(db_url, first):
    """Sold out at 08:30 and drafted at 08:35 (or the other way round), published again at 08:40 still sold out: nothing
    at 09:05; back in stock at 09:30: the reminder goes, once."""
    with _held_for_the_morning(db_url) as (client, runtime, clock, store, sid, settings):
        steps = [("publish", "outofstock"), ("draft", "outofstock")] if first == "sold out" else [("draft", "instock"), ("draft", "outofstock")]
        for minutes, (status, stock) in zip((30, 35), steps):
            clock.now = DUE + timedelta(minutes=minutes)
            _wpost(client, "product.updated", _woo_product(22, status=status, stock=stock, at=clock.now))
            runtime.processor.drain()
        _stock(client, runtime, clock, DUE + timedelta(minutes=40), "outofstock")  # published, still sold out
        waiting = _morning(runtime, settings, clock, store, sid)
        _stock(client, runtime, clock, DUE + timedelta(hours=1, minutes=30), "instock")
        sent = _morning(runtime, settings, clock, store, sid, at=DUE + timedelta(hours=1, minutes=35))
        sent = _morning(runtime, settings, clock, store, sid, at=DUE + timedelta(hours=5))
    assert waiting == [("reminder", "skipped")]
    assert sent == [("reminder", "dry_run")]
