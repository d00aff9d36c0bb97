"""Reorder reminders as the customer meets them: an order binned by mistake and restored, and the other cases a
customer would notice. Each drives the real webhook path, then the reorder tick, and checks what she would get."""

from __future__ import annotations

from datetime import timedelta

import pytest

from connector.reorder.windows import refresh_windows, run_reorder_tick
from tests.test_reorder import T0, _outbox
from tests.test_reorder_products import _wpost
from tests.test_reorder_suppression import _statuses, _woo, _woo_buyer


def _stamp(at) -> str:
    return at.strftime("%Y-%m-%dT%H:%M:%S")


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
    from tests.helpers import running_app
    from tests.test_reorder import Clock, _consent, _order, _post, _settings

    before, after = _settings(db_url, follow_up_days=None), _settings(db_url, follow_up_days=None, cycles={"NEEM-100": "60d"})
    clock = Clock(T0)
    with running_app(before) as (client, runtime):
        runtime.processor.clock = clock
        sid, store = runtime.store_ids["shop-a"], before.stores[0]
        _post(client, "customers_whats_app_marketing_consent/update", _consent())
        _post(client, "orders/create", _order(6601, T0, qty=1))
        runtime.processor.drain()
        run_reorder_tick(runtime.db, store, sid, clock.now)
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
    from connector.config import parse_settings
    from tests.conftest import settings_dict
    from tests.helpers import running_app
    from tests.test_reorder import TEMPLATES, Clock, _consent, _dispatch, _order, _post, _says

    raw = settings_dict(db_url)
    raw["stores"][0].update(templates=TEMPLATES, policy={"quiet_hours": "21:00-09:00"},
                            journeys={"reorder": {"cycles": {"NEEM-100": "30d"}, "lead_days": 3, "follow_up_days": None}})
    settings = parse_settings(raw, environ={})
    clock = Clock(T0)
    with running_app(settings) as (client, runtime):
        runtime.processor.clock = clock
        sid, store = runtime.store_ids["shop-a"], settings.stores[0]
        _post(client, "customers_whats_app_marketing_consent/update", _consent())
        _post(client, "orders/create", _order(6701, T0, qty=1))
        runtime.processor.drain()
        run_reorder_tick(runtime.db, store, sid, clock.now)
        clock.now = T0 + timedelta(days=31, hours=12)  # 23:30 IST: due since 11:30, the first tick after it runs at night
        run_reorder_tick(runtime.db, store, sid, clock.now)
        _dispatch(runtime, settings, clock)
        night = [o.status for o in _outbox(runtime)]
        if stop:
            clock.now = T0 + timedelta(days=31, hours=13, minutes=30)  # 01:00 IST
            assert _says(client, "919876543210", "STOP", clock.now).status_code == 200
            runtime.processor.drain()
        for hours in (22, 23, 30):  # 03:30, 04:30 and 11:30 UTC: 09:00, 10:00 and 17:00 IST
            clock.now = T0 + timedelta(days=31, hours=hours)
            runtime.processor.drain()
            while runtime.processor.process_timers(500):
                pass
            _dispatch(runtime, settings, clock)
        morning = [(o.step, o.status) for o in _outbox(runtime)]
    assert night == ["pending"]
    assert morning == ([("reminder", "skipped")] if stop else [("reminder", "dry_run")])


# ---- 4. several products due the same day -------------------------------------------------------------------

def test_two_products_due_the_same_day_are_each_reminded_with_their_own_link_within_the_marketing_cap(db_url):
    """Her order's two products (93 x2 on a 15-day cycle, 22 x1 on 30 days) come due the same morning (day 31). Each is
    reminded in a message of its own, with its own one-tap link (WooCommerce's add-to-cart takes one item), and each
    counts toward the store's marketing cap: with ``marketing_cap = 1`` the second is skipped (``frequency_cap``), as
    the README says, not sent beside the first."""
    from connector.config import parse_settings
    from tests.conftest import PHONE_ID_WOO, settings_dict
    from tests.helpers import running_app
    from tests.test_reorder import TEMPLATES, Clock, _dispatch, _start

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
    from connector.config import parse_settings
    from tests.conftest import settings_dict
    from tests.helpers import running_app
    from tests.test_reorder import TEMPLATES, Clock, _consent, _dispatch, _order, _post

    raw = settings_dict(db_url)
    raw["stores"][0].update(templates=TEMPLATES, policy={"quiet_hours": "21:00-09:00"},
                            journeys={"reorder": {"cycles": {"NEEM-100": "30d"}, "lead_days": 3, "follow_up_days": None}})
    settings = parse_settings(raw, environ={})
    clock = Clock(T0)
    with running_app(settings) as (client, runtime):
        runtime.processor.clock = clock
        sid, store = runtime.store_ids["shop-a"], settings.stores[0]
        _post(client, "customers_whats_app_marketing_consent/update", _consent())
        _post(client, "orders/create", _order(6801, T0, qty=1))
        runtime.processor.drain()
        run_reorder_tick(runtime.db, store, sid, clock.now)
        clock.now = T0 + timedelta(days=31, hours=12)  # 23:30 IST
        run_reorder_tick(runtime.db, store, sid, clock.now)
        _dispatch(runtime, settings, clock)
        night = [o.status for o in _outbox(runtime)]
        clock.now = T0 + timedelta(days=31, hours=13, minutes=30)  # 01:00 IST
        if gone == "products/delete":
            _post(client, "products/delete", {"id": 9001})
        else:
            _post(client, "products/update", {"id": 9001, "title": "Neem face wash", "tags": "", "status": "archived",
                                               "updated_at": clock.now.isoformat(),
                                               "variants": [{"id": 49001, "product_id": 9001, "sku": "NEEM-100"}]})
        runtime.processor.drain()
        for hours in (22, 23, 30):  # 09:00, 10:00 and 17:00 IST
            clock.now = T0 + timedelta(days=31, hours=hours)
            runtime.processor.drain()
            while runtime.processor.process_timers(500):
                pass
            run_reorder_tick(runtime.db, store, sid, clock.now)
            _dispatch(runtime, settings, clock)
        morning = [(o.step, o.status) for o in _outbox(runtime)]
    assert night == ["pending"]
    assert morning == [("reminder", "skipped")]
