"""Retention and weekly-report review (2026-12-07): faults a store owner would see in the reorder
reminders and in what the weekly report says about them."""

from __future__ import annotations

import json
from datetime import timedelta

import pytest
from sqlalchemy import select
from typer.testing import CliRunner

from connector.cli import app
from connector.config import parse_settings
from connector.reorder.windows import refresh_windows, run_reorder_tick
from connector.reports import build_report, parse_week
from connector.storage import models as m
from tests.helpers import running_app
from tests.test_reorder import T0, Clock, _consent, _delivered, _dispatch, _order, _outbox, _post
from tests.test_reorder import _settings as _shopify_settings
from tests.test_reports import MON, WEEK, Week, _raw_settings, _toml


# ---- 1. a lift on a handful of customers is not "significant" -----------------------------------
def test_a_lift_measured_on_a_handful_of_customers_is_not_called_significant(db_url, tmp_path):
    """Three treated customers reordered after their reminder and the one held out did not: +100 points. The normal
    approximation's interval collapsed to a point ([+100, +100]: every rate 0 or 1 has no spread), so the report called
    it significant and `storeloop report` said "yes" to the owner, on four customers. Now it says too few to tell."""
    raw = _raw_settings(db_url)
    raw["stores"][0]["journeys"] = {"reorder": {"cycles": {"NEEM-100": "30d"}, "holdout_percent": 10}}
    settings = parse_settings(raw, environ={})
    ends = (MON + timedelta(days=8)).isoformat()
    with running_app(settings) as (_client, runtime):
        sid = runtime.store_ids["shop-a"]
        with runtime.db.engine.begin() as conn:
            w = Week(conn, sid)
            for _ in range(3):
                cid = w.contact(MON - timedelta(days=40), consent="granted")
                order = w.order(cid, MON + timedelta(days=2), "249.50")
                w.run("reorder", {"sent": 1, "attribution_ends": ends, "reordered": True, "attributed": True, "order_id": order,
                                  "revenue": "249.50"})
            w.run("reorder", {"sent": 1, "attribution_ends": ends}, holdout=True)
        report = build_report(runtime.db, settings.stores[0], sid, WEEK)
    x = report["lift"]["reorder"]
    assert (x["treated_converted"], x["treated"], x["control_converted"], x["control"], x["lift"]) == (3, 3, 0, 1, 1.0)
    assert x["significant"] is False and x["too_few"] is True
    config = tmp_path / "storeloop.toml"
    config.write_text("".join(f"{key} = {_toml(value)}\n" for key, value in raw.items()))
    table = CliRunner().invoke(app, ["report", "--config", str(config), "--store", "shop-a", "--week", WEEK.label], env={"COLUMNS": "200"})
    assert table.exit_code == 0, table.output
    row = next(line for line in table.output.splitlines() if line.strip("│ ").startswith("reorder ") and "/" in line)
    assert "too few to tell" in row and " yes " not in row
    as_json = json.loads(CliRunner().invoke(app, ["report", "--config", str(config), "--store", "shop-a", "--week", WEEK.label,
                                                  "--json"]).stdout)
    assert as_json["lift"]["reorder"]["significant"] is False


# ---- 2. a reorder still waiting for its bank transfer is no reorder in the report yet -------------
def test_a_reorder_whose_bank_deposit_never_came_is_not_counted_in_the_weeks_retention(db_url):
    """Asha's reminder went out and she reordered two face washes, paying by bank deposit (a manual method: the
    order stays ``pending``). The scans hold a window for such an order until it is paid, yet the report counted
    it at once as reordered inside the window, with 499.00 of revenue, and kept counting it while the money never
    came. It now counts once the order is paid (as a checkout's order waiting for a transfer recovers its cart
    only once paid), for the funnel and the lift alike."""
    settings = _shopify_settings(db_url)
    clock = Clock(T0)
    with running_app(settings) as (client, runtime):
        runtime.processor.clock = clock
        sid, store = runtime.store_ids["shop-a"], settings.stores[0]
        _post(client, "customers_whats_app_marketing_consent/update", _consent())
        _post(client, "orders/create", _order(5001, T0, qty=1))
        runtime.processor.drain()
        clock.now = T0 + timedelta(days=32)
        assert run_reorder_tick(runtime.db, store, sid, clock.now)[1].opened == 1
        week = clock.now.astimezone(store.tz).isocalendar()
        period = parse_week(f"{week.year}-W{week.week:02d}", store.tz, clock.now)
        _dispatch(runtime, settings, clock)
        clock.now += timedelta(days=1)
        deposit = _order(5002, clock.now, qty=2)
        deposit.update(financial_status="pending", payment_gateway_names=["Bank Deposit"], gateway="Bank Deposit")
        _post(client, "orders/create", deposit)
        runtime.processor.drain()
        waiting = build_report(runtime.db, store, sid, period)["stages"]["retention"]["metrics"]
        clock.now += timedelta(days=1)
        _post(client, "orders/updated", {**deposit, "financial_status": "paid", "updated_at": clock.now.isoformat()})
        runtime.processor.drain()
        paid = build_report(runtime.db, store, sid, period)["stages"]["retention"]["metrics"]
    assert [(o.step, o.status) for o in _outbox(runtime)] == [("reminder", "dry_run")]
    assert (waiting["reminded"], waiting["reordered_in_window"], waiting["revenue"]) == (1, 0, {})
    assert (paid["reminded"], paid["reordered_in_window"], paid["revenue"]) == (1, 1, {"USD": "499.00"})


# ---- 3. a sale at the till is in her hands at once: no transit time ----------------------------
def _till_sale(order_id: int, at) -> dict:
    """Asha buys one face wash at the shop's till (Shopify POS, no shipping line), fulfilled there and then."""
    o = _order(order_id, at, qty=1)
    o.update(source_name="pos", shipping_lines=[])
    return o


def _handed_over(order_id: int, at) -> dict:
    f = _delivered(order_id, at)
    f.update(created_at=at.isoformat(), updated_at=at.isoformat(), shipment_status=None)
    return f


@pytest.mark.parametrize("full", [False, True], ids=["incremental tick", "daily full scan"])
def test_a_face_wash_bought_at_the_till_is_reminded_on_its_cycle_not_four_transit_days_later(db_url, full):
    """A 30-day face wash bought at the till on 1 September runs out on 1 October; with 3 days' lead her reminder is
    due on 28 September. The window was anchored as if a parcel were on its way (the till's fulfilment, or the order,
    plus ``transit_days``, 4), so the reminder came on 2 October, a day after she ran out."""
    settings = _shopify_settings(db_url, follow_up_days=None)
    clock = Clock(T0)
    with running_app(settings) as (client, runtime):
        runtime.processor.clock = clock
        sid, store = runtime.store_ids["shop-a"], settings.stores[0]
        run_reorder_tick(runtime.db, store, sid, clock.now - timedelta(hours=1))  # the job ran before: later ticks are incremental
        _post(client, "customers_whats_app_marketing_consent/update", _consent())
        _post(client, "orders/create", _till_sale(5101, T0))
        _post(client, "fulfillments/create", _handed_over(5101, T0 + timedelta(minutes=2)))
        runtime.processor.drain()
        assert refresh_windows(runtime.db, store, sid, clock.now, full=full).mode == ("full" if full else "incremental")
        clock.now = T0 + timedelta(days=27, hours=1)
        run_reorder_tick(runtime.db, store, sid, clock.now)
        _dispatch(runtime, settings, clock)
        with runtime.db.engine.connect() as conn:
            window = conn.execute(select(m.ReorderWindow)).one()
    assert window.opens_at == T0 + timedelta(minutes=2, days=27)
    assert [(o.step, o.status) for o in _outbox(runtime)] == [("reminder", "dry_run")]


# ---- 4. a second order the same day adds to what she has ---------------------------------------
@pytest.mark.parametrize("full", [False, True], ids=["incremental tick", "daily full scan"])
def test_a_second_pack_ordered_the_same_day_lasts_as_long_as_two_packs(db_url, full):
    """Asha ordered a 30-day face wash, and three hours later a second one in an order of its own. She has two packs:
    her reminder is due on day 61 (4 days' transit, 60 days, 3 days' lead), for two. The first order's window was
    replaced by the second's, which counted only its own pack, so she was asked to reorder on day 31 with a month's
    supply still unopened."""
    settings = _shopify_settings(db_url, follow_up_days=None)
    clock = Clock(T0)
    with running_app(settings) as (client, runtime):
        runtime.processor.clock = clock
        sid, store = runtime.store_ids["shop-a"], settings.stores[0]
        run_reorder_tick(runtime.db, store, sid, clock.now - timedelta(hours=1))  # the job ran before: later ticks are incremental
        _post(client, "customers_whats_app_marketing_consent/update", _consent())
        _post(client, "orders/create", _order(6001, T0, qty=1))
        runtime.processor.drain()
        refresh_windows(runtime.db, store, sid, T0 + timedelta(hours=1), full=full)  # its window planned, for one pack
        clock.now = T0 + timedelta(hours=3)
        _post(client, "orders/create", _order(6002, clock.now, qty=1))
        runtime.processor.drain()
        refresh_windows(runtime.db, store, sid, clock.now, full=full)
        for day in (31, 45):
            clock.now = T0 + timedelta(days=day, hours=4)
            run_reorder_tick(runtime.db, store, sid, clock.now)
        early = _outbox(runtime)
        clock.now = T0 + timedelta(days=61, hours=4)
        run_reorder_tick(runtime.db, store, sid, clock.now)
        with runtime.db.engine.connect() as conn:
            windows = {w.order_external_id: (w.status, w.quantity) for w in conn.execute(select(m.ReorderWindow))}
            due = conn.execute(select(m.ReorderWindow.opens_at).where(m.ReorderWindow.order_external_id == "6002")).scalar_one()
    assert early == []
    assert due == T0 + timedelta(hours=3, days=61)
    assert windows == {"6001": ("reordered", 1), "6002": ("opened", 2)}
    assert [o.payload["message"]["body"][2]["text"].rsplit("/", 1)[-1] for o in _outbox(runtime)] == ["49001:2"]  # the cart: two packs


def test_a_customers_cadence_counts_both_packs_of_a_split_order():
    """One pack, another an hour later, the next order 60 days on: 30 days a pack, not 60 (the first pack was dropped)."""
    from datetime import datetime, timezone

    from connector.reorder.cycles import Purchase, customer_cadence

    t = datetime(2026, 1, 1, tzinfo=timezone.utc)
    split = [Purchase(t, 1), Purchase(t + timedelta(hours=1), 1), Purchase(t + timedelta(days=60, hours=1), 1)]
    assert customer_cadence(split) == 30
    assert customer_cadence([Purchase(t, 2), Purchase(t + timedelta(days=60), 1)]) == 30  # as two packs in one order
