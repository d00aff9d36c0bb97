"""Reorder reminders as the customer meets them: an order binned by mistake and restored, and the other cases a
customer would notice. Each drives the real webhook path, then the reorder tick, and checks what she would get."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from typing import Any

import pytest

from connector.config import parse_settings
from connector.reorder.windows import refresh_windows, run_reorder_tick
from tests.conftest import settings_dict
from tests.helpers import running_app
from tests.test_reorder import TEMPLATES, T0, Clock, _dispatch, _outbox, _post
from tests.test_reorder_products import _neem, _wpost
from tests.test_reorder_suppression import _shopify_buyer, _statuses, _woo, _woo_buyer


def _stamp(at) -> str:
    return at.strftime("%Y-%m-%dT%H:%M:%S")


@contextmanager
def _neem_buyer(db_url: str, order_id: int, *, quiet_hours: str = "21:00-09:00") -> Iterator[tuple[Any, Any, Clock, Any, int, Any]]:
    """The Shopify store (Neem face wash on a 30-day cycle, 3 days' lead, no follow-up; quiet hours ``quiet_hours``
    IST) with Asha (WhatsApp marketing consent) who bought one as ``order_id`` at T0, its window planned:
    (client, runtime, clock, store, store id, settings). Shared so each story below shows only what differs."""
    raw = settings_dict(db_url)
    raw["stores"][0].update(templates=TEMPLATES, policy={"quiet_hours": quiet_hours},
                            journeys={"reorder": {"cycles": {"NEEM-100": "30d"}, "lead_days": 3, "follow_up_days": None}})
    settings = parse_settings(raw, environ={})
    with _shopify_buyer(db_url, order_id, settings=settings) as (client, runtime, clock, store, sid, _):
        yield client, runtime, clock, store, sid, settings


def _held_for_the_night(runtime, settings, clock: Clock, store, sid: int) -> list[str]:
    """Day 31, 23:30 IST (due since 11:30, the first tick after it runs in quiet hours): the window opens and its
    reminder waits for 09:00. The outbox's statuses then."""
    clock.now = T0 + timedelta(days=31, hours=12)
    run_reorder_tick(runtime.db, store, sid, clock.now)
    _dispatch(runtime, settings, clock)
    return [o.status for o in _outbox(runtime)]


def _the_morning(runtime, settings, clock: Clock, store, sid: int, *, tick: bool = True) -> list[tuple[str, str]]:
    """09:00, 10:00 and 17:00 IST (03:30, 04:30 and 11:30 UTC) of day 32: timers run, (with ``tick``) the reorder
    tick, and the dispatcher's round. What the outbox holds then, as (step, status)."""
    for hours in (22, 23, 30):
        clock.now = T0 + timedelta(days=31, hours=hours)
        runtime.processor.drain()
        while runtime.processor.process_timers(500):
            pass
        if tick:
            run_reorder_tick(runtime.db, store, sid, clock.now)
        _dispatch(runtime, settings, clock)
    return [(o.step, o.status) for o in _outbox(runtime)]


# ---- 1. an order binned by mistake and restored ----------------------------------------------------------------

@pytest.mark.parametrize("full", [False, True], ids=["incremental tick", "daily full scan"])
def test_a_woocommerce_order_binned_by_mistake_and_restored_gets_its_reorder_reminders(db_url, full):
    """Her order (93 x2, 22 x1) is moved to the bin on day 2 and a scan runs (its windows are cancelled: no purchase);
    the store restores it on day 3. It is her purchase again: product 22's reminder goes on day 31 (4 d transit + 30 d
    - 3 d lead) and 93's on day 61. Before, the windows cancelled at the bin stayed cancelled: no reminder ever."""
    with _woo_buyer(db_url, 8701) as (client, runtime, clock, store, sid):
        order = _woo(8701, T0, "processing")
        clock.now = T0 + timedelta(days=2)
        _wpost(client, "order.deleted", {"id": 8701}, delivery="bin1")
        runtime.processor.drain()
        refresh_windows(runtime.db, store, sid, clock.now, full=full)
        binned = _statuses(runtime)
        clock.now = T0 + timedelta(days=3)
        _wpost(client, "order.restored", {**order, "date_modified_gmt": _stamp(clock.now), "date_modified": _stamp(clock.now)})
        runtime.processor.drain()
        refresh_windows(runtime.db, store, sid, clock.now, full=full)
        for day in (31, 32, 61, 62):
            clock.now = T0 + timedelta(days=day, hours=1)
            run_reorder_tick(runtime.db, store, sid, clock.now)
        sent = [(o.step, o.payload["subject"]) for o in _outbox(runtime)]
    assert binned == {("8701", "p:22"): "cancelled", ("8701", "p:93"): "cancelled"}
    assert sent == [("reminder", "reorder:8701:p:22"), ("reminder", "reorder:8701:p:93")]
    assert _statuses(runtime) == {("8701", "p:22"): "opened", ("8701", "p:93"): "opened"}



# ---- 2. the cycle changed in the config after the windows were planned -----------------------------------------

def test_a_cycle_lengthened_in_the_config_is_not_reminded_on_the_old_cycle_before_the_next_full_scan(db_url):
    """The merchant lengthens the face wash's cycle from 30 to 60 days (customers said the reminder came a month early)
    and restarts, the day before Asha's window on the old cycle (day 31: 4 d transit + 30 d - 3 d lead). The daily full
    scan ran that morning, so the ticks until the next one are incremental: her window, planned on 30 days, opened the
    next morning, a month early. It goes on day 61 (4 + 60 - 3), once."""
    from tests.test_reorder import _settings

    before, after = _settings(db_url, follow_up_days=None), _settings(db_url, follow_up_days=None, cycles={"NEEM-100": "60d"})
    with _shopify_buyer(db_url, 6601, settings=before) as (client, runtime, clock, store, sid, _):
        clock.now = T0 + timedelta(days=30, hours=1)
        assert refresh_windows(runtime.db, store, sid, clock.now).mode == "full"  # the daily full scan, old cycle
        store = after.stores[0]  # restarted with the new cycle at noon
        sent = []
        for at in (T0 + timedelta(days=30, hours=6), T0 + timedelta(days=31), T0 + timedelta(days=61, hours=1),
                   T0 + timedelta(days=62)):
            clock.now = at
            run_reorder_tick(runtime.db, store, sid, clock.now)
            sent.append(len(_outbox(runtime)))
    assert sent == [0, 0, 1, 1]



# ---- 3. a window due at night, and her opt-out while its reminder waits ------------------------------------------

@pytest.mark.parametrize("stop", [False, True], ids=["held to the morning", "STOP in the night"])
def test_a_reminder_due_in_quiet_hours_goes_in_the_morning_unless_she_opts_out_meanwhile(db_url, stop):
    """Her window comes due while the store's quiet hours (21:00-09:00 IST) run: the reminder waits for 09:00 and goes
    then, once. If she writes STOP at 01:00 while it waits, nothing goes in the morning."""
    from tests.test_reorder import _says

    with _neem_buyer(db_url, 6701) as (client, runtime, clock, store, sid, settings):
        night = _held_for_the_night(runtime, settings, clock, store, sid)
        if stop:
            clock.now = T0 + timedelta(days=31, hours=13, minutes=30)  # 01:00 IST
            assert _says(client, "919876543210", "STOP", clock.now).status_code == 200
            runtime.processor.drain()
        morning = _the_morning(runtime, settings, clock, store, sid, tick=False)
    assert night == ["pending"]
    assert morning == ([("reminder", "skipped")] if stop else [("reminder", "dry_run")])


# ---- 4. several products due the same day -------------------------------------------------------------------

def test_two_products_due_the_same_day_are_each_reminded_with_their_own_link_within_the_marketing_cap(db_url):
    """Her order's two products (93 x2 on a 15-day cycle, 22 x1 on 30 days) come due the same morning (day 31). Each is
    reminded in a message of its own, with its own one-tap link (WooCommerce's add-to-cart takes one item), and each
    counts toward the store's marketing cap: with ``marketing_cap = 1`` the second is skipped (``frequency_cap``), as
    the README says, not sent beside the first."""
    from tests.conftest import PHONE_ID_WOO
    from tests.test_reorder import _start

    raw = settings_dict(db_url)
    raw["stores"][2].update(templates=TEMPLATES, policy={"quiet_hours": "", "marketing_cap": 1},
                            journeys={"reorder": {"cycles": {"93": "15d", "22": "30d"}, "follow_up_days": None}})
    settings = parse_settings(raw, environ={})
    clock = Clock(T0)
    with running_app(settings) as (client, runtime):
        runtime.processor.clock = clock
        sid, store = runtime.store_ids["woo"], settings.stores[2]
        _wpost(client, "order.created", _woo(8801, T0, "processing"))
        _start(client, "16502530000", PHONE_ID_WOO, T0)
        runtime.processor.drain()
        for day in (0, 31, 32):
            clock.now = T0 + timedelta(days=day, hours=1)
            run_reorder_tick(runtime.db, store, sid, clock.now)
            _dispatch(runtime, settings, clock)
        sent = [(o.payload["subject"], o.status, o.skip_reason, o.payload["message"]["body"][2]["text"]) for o in _outbox(runtime)]
    assert sent == [("reorder:8801:p:22", "dry_run", None, "https://bloom.example/?add-to-cart=23&quantity=1"),
                    ("reorder:8801:p:93", "skipped", "frequency_cap", "https://bloom.example/?add-to-cart=93&quantity=2")]


# ---- 5. a product the store stops selling while its reminder waits -----------------------------------------------

@pytest.mark.parametrize("gone", ["products/delete", "archived"])
def test_a_reminder_held_for_the_night_is_not_sent_for_a_product_deleted_or_archived_meanwhile(db_url, gone):
    """Her window opened at 23:30 IST, in quiet hours: the reminder waits for 09:00. At 01:00 the merchant deletes (or
    archives) the face wash. In the morning she must not get a one-tap link to a product no longer for sale."""
    with _neem_buyer(db_url, 6801) as (client, runtime, clock, store, sid, settings):
        night = _held_for_the_night(runtime, settings, clock, store, sid)
        clock.now = T0 + timedelta(days=31, hours=13, minutes=30)  # 01:00 IST
        if gone == "products/delete":
            _post(client, "products/delete", {"id": 9001})
        else:
            _post(client, "products/update", _neem("archived", clock.now))
        runtime.processor.drain()
        morning = _the_morning(runtime, settings, clock, store, sid)
    assert night == ["pending"]
    assert morning == [("reminder", "skipped")]
