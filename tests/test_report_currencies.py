"""Revenue in several currencies is reported per currency, never added up.

A WooCommerce store with a multi-currency plugin takes orders in the customer's currency (each
order's ``currency``). There are no exchange rates here, so 1,000 INR and 20 USD must read as
"INR 1,000.00 + USD 20.00", not 1,020, in the JSON report, the dashboard and ``storeloop report``.
(A Shopify store's revenue is the shop's money whatever the customer paid in: see
tests/scenarios/test_shopify_stories.py, the recovered revenue stays in the shop's currency.)

Everything is driven through signed webhooks into the real app, on the scenario's virtual clock.
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest
from typer.testing import CliRunner

from connector.cli import app
from connector.config import parse_settings
from connector.errors import ConfigError
from connector.reports import build_report, parse_week
from connector.reorder.windows import run_reorder_tick
from connector.storage import models as m
from tests.conftest import PHONE_ID_WOO, SECRETS, settings_dict
from tests.helpers import running_app
from tests.scenarios import payloads as p
from tests.scenarios.conftest import _world_server, scenario, sqlite_url, world  # noqa: F401 (fixtures)
from tests.scenarios.harness import T0, TEMPLATES, WEEK
from tests.scenarios.stores import WOOCOMMERCE
from tests.test_reorder import Clock, _dispatch
from tests.test_reorder_suppression import _start, _woo, _woo_settings, _wpost

ASHA = "+919876543210"
RAVI = "+919812345678"
LADDER = {"checkout_recovery": {"abandon_after_minutes": 30, "ladder_minutes": [0, 360, 1440]}}
PAY = {"step": "payment_recovery.remind", "name": "pay_v1", "category": "utility",
       "body_text": "Complete payment for {{1}}: {{2}}", "body": ["order.name", "order.payment_url"]}


def conversion(sc) -> dict:
    return sc.report()["stages"]["conversion"]


def woo_order(n: int, phone: str, at, *, total: str, currency: str, status: str = "processing") -> dict:
    """Order #n as a multi-currency plugin leaves it: the order's own ``currency`` is what she paid in."""
    o = WOOCOMMERCE.order(n, phone, at, cod=False, total=total)
    o.update(currency=currency, currency_symbol={"INR": "₹", "USD": "$", "EUR": "€"}[currency], status=status)
    if status != "processing":
        o.update(date_paid=None, date_paid_gmt=None)
    return o


def _two_carts_paid_in_two_currencies(sc) -> None:
    """Asha and Ravi each leave a cart, get its first reminder, and pay: Asha 1,000 in rupees, Ravi 20 in dollars."""
    WOOCOMMERCE.start_checkout(sc, "A", ASHA)
    WOOCOMMERCE.start_checkout(sc, "R", RAVI)
    sc.at(T0 + timedelta(minutes=30))
    assert sc.templates_to(ASHA) == sc.templates_to(RAVI) == ["cart_1_v1"]
    sc.at(T0 + timedelta(hours=2))
    sc.woo("order.created", woo_order(5, ASHA, sc.now, total="1000.00", currency="INR"))
    sc.woo("order.created", woo_order(6, RAVI, sc.now, total="20.00", currency="USD"))
    WOOCOMMERCE.cart_recovered(sc, "A", ASHA)
    WOOCOMMERCE.cart_recovered(sc, "R", RAVI)
    sc.later(days=3)


def test_carts_recovered_in_two_currencies_are_reported_per_currency_in_json_dashboard_and_cli(sqlite_url, scenario, world,
                                                                                                tmp_path: Path):
    """The store's own currency is USD (``currency = "USD"``): it comes first, and is shown even where it earned nothing."""
    sc = scenario(sqlite_url, "woocommerce", journeys=LADDER, store_settings={"currency": "USD"})
    _two_carts_paid_in_two_currencies(sc)

    report = sc.report()
    c = report["stages"]["conversion"]
    assert (c["metrics"]["checkouts_reminded"], c["metrics"]["checkouts_recovered"]) == (2, 2)
    assert c["metrics"]["recovered_revenue"] == {"USD": "20.00", "INR": "1000.00"}
    assert list(c["metrics"]["recovered_revenue"]) == ["USD", "INR"]  # the store's currency first
    assert c["metrics"]["payment_recovered_revenue"] == {"USD": "0"}
    assert c["previous"]["recovered_revenue"] == {"USD": "0"}
    assert c["change"]["recovered_revenue"] == {"USD": "20.00", "INR": "1000.00"}
    assert report["currency"] == "USD"

    # the dashboard's checkout funnel and its figures
    signed_in = sc.client.post("/dashboard/login", data={"token": SECRETS["admin"], "next": "/dashboard"}, follow_redirects=False)
    assert signed_in.status_code == 303
    html = sc.client.get(f"/dashboard/woo?week={WEEK}").text
    assert "recovered revenue USD 20.00 + INR 1,000.00" in html
    assert "1020" not in html and "1,020" not in html

    # ``storeloop report`` on the same database
    config = tmp_path / "storeloop.toml"
    config.write_text(f'[database]\nurl = "{sqlite_url}"\n\n[[stores]]\nkey = "woo"\nplatform = "woocommerce"\n'
                      f'site_url = "https://bloom.example"\nwebhook_secret = "x"\ntimezone = "Europe/Rome"\ncurrency = "USD"\n')
    result = CliRunner().invoke(app, ["report", "--config", str(config), "--store", "woo", "--week", WEEK], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert "USD 20.00 + INR 1,000.00" in result.output
    assert "1020" not in result.output and "1,020" not in result.output
    as_json = CliRunner().invoke(app, ["report", "--config", str(config), "--store", "woo", "--week", WEEK, "--json"])
    assert as_json.exit_code == 0, as_json.output
    assert '"recovered_revenue": {\n' in as_json.output and '"USD": "20.00"' in as_json.output


def test_payments_recovered_in_two_currencies_are_reported_per_currency(sqlite_url, scenario, world):
    """Two unpaid orders, one in rupees and one in dollars, each paid after its pay reminder. With no ``currency``
    configured, the currency most recoveries were in comes first (two in rupees, one in dollars)."""
    sc = scenario(sqlite_url, "woocommerce", journeys={"payment_recovery": {}}, store_settings={"templates": [*TEMPLATES, PAY]})
    orders = [woo_order(1, ASHA, sc.now, total="20.00", currency="USD", status="pending"),
              woo_order(2, RAVI, sc.now, total="1299.00", currency="INR", status="pending"),
              woo_order(3, "+919900112233", sc.now, total="500.50", currency="INR", status="pending")]
    for order in orders:
        sc.woo("order.created", order)
    sc.later(hours=6)
    assert sc.templates_to(ASHA) == sc.templates_to(RAVI) == ["pay_v1"]
    for order in orders:
        sc.woo("order.updated", {**order, "status": "processing", "date_paid_gmt": p.gmt(sc.now), "date_modified_gmt": p.gmt(sc.now)})
    sc.later(days=1)

    c = conversion(sc)["metrics"]
    assert (c["payments_reminded"], c["payments_recovered"]) == (3, 3)
    assert c["payment_recovered_revenue"] == {"INR": "1799.50", "USD": "20.00"}
    assert list(c["payment_recovered_revenue"]) == ["INR", "USD"]
    assert c["recovered_revenue"] == {}  # nothing recovered, and no store currency configured to show a 0 in


def test_reorders_in_two_currencies_are_reported_per_currency(db_url):
    """Two WooCommerce customers, one who buys in dollars and one in rupees, are reminded to reorder and do, each in
    their own currency: the week's retention revenue is each reordered product's lines, per currency."""
    settings = _woo_settings(db_url)
    clock = Clock(T0)
    store = settings.stores[2]
    them = [("+1 650 253 0000", "16502530000", "USD", 8501), ("+91 98765 43210", "919876543210", "INR", 8601)]

    def order(order_id: int, phone: str, currency: str, at) -> dict:
        o = _woo(order_id, at, "processing", phone=phone)
        o.update(currency=currency)
        o["billing"] = {**o["billing"], "email": f"{order_id}@example.com"}  # two customers, not one by the fixture's email
        return o

    with running_app(settings) as (client, runtime):
        runtime.processor.clock = clock
        sid = runtime.store_ids["woo"]
        for phone, wa, currency, first in them:
            _wpost(client, "order.created", order(first, phone, currency, T0))
            _start(client, wa, PHONE_ID_WOO, T0)
        runtime.processor.drain()
        run_reorder_tick(runtime.db, store, sid, clock.now)
        clock.now = T0 + timedelta(days=31)  # product 22 (one bought): 4 d transit + 30 d - 3 d lead
        opened = run_reorder_tick(runtime.db, store, sid, clock.now)[1].opened
        assert opened == 2
        _dispatch(runtime, settings, clock)
        clock.now += timedelta(minutes=5)
        _dispatch(runtime, settings, clock)
        week = clock.now.astimezone(store.tz).isocalendar()
        clock.now += timedelta(days=1)
        for phone, _wa, currency, first in them:
            _wpost(client, "order.created", order(first + 1, phone, currency, clock.now))
        runtime.processor.drain()
        report = build_report(runtime.db, store, sid, parse_week(f"{week.year}-W{week.week:02d}", store.tz, clock.now))
    retention = report["stages"]["retention"]["metrics"]
    assert (retention["reminded"], retention["reordered_in_window"]) == (2, 2)
    assert retention["revenue"] == {"INR": "12", "USD": "12"}  # product 22: one at 12, in each customer's currency (not 24)


def test_the_stores_currency_comes_first_and_each_currency_changes_on_its_own(db):
    """Runs as the journeys keep them (revenue with its order's currency). One kept without a currency counts in the
    store's own (``currency = "EUR"``); last week's pounds show as a fall in pounds, not as a fall of the total."""
    from connector.storage.inbox import sync_stores
    from tests.test_reports import LAST_WEEK, WEEK as HAND_BUILT_WEEK, Week, _raw_settings

    raw = _raw_settings("sqlite://")
    raw["stores"][0]["currency"] = "eur"
    settings = parse_settings(raw, environ={})
    store_id = sync_stores(db, [("shop-a", "shopify")])["shop-a"]
    with db.engine.begin() as conn:
        w = Week(conn, store_id)
        for currency, revenue in (("USD", "20.00"), ("USD", "5.50"), ("USD", "4.50"), ("EUR", "100.00"), (None, "10.00")):
            state = {"reminded": True, "paid": True, "revenue": revenue, **({"currency": currency} if currency else {})}
            if currency is None:
                conn.execute(m.JourneyRun.__table__.insert().values(
                    store_id=store_id, journey="payment_recovery", subject="order:old", status="finished", state=state, holdout=False,
                    started_at=HAND_BUILT_WEEK.start + timedelta(days=1), updated_at=HAND_BUILT_WEEK.start + timedelta(days=1)))
            else:
                w.run("payment_recovery", state)
        w.run("payment_recovery", {"reminded": True, "paid": True, "revenue": "30.00", "currency": "GBP"}, at=LAST_WEEK)
    report = build_report(db, settings.stores[0], store_id, HAND_BUILT_WEEK)
    c = report["stages"]["conversion"]
    assert c["metrics"]["payment_recovered_revenue"] == {"EUR": "110.00", "USD": "30.00"}
    assert list(c["metrics"]["payment_recovered_revenue"]) == ["EUR", "USD"]  # the store's first, though dollars came more often
    assert c["previous"]["payment_recovered_revenue"] == {"EUR": "0", "GBP": "30.00"}
    assert c["change"]["payment_recovered_revenue"] == {"EUR": "110.00", "USD": "30.00", "GBP": "-30.00"}
    assert c["metrics"]["recovered_revenue"] == {"EUR": "0"}
    assert report["currency"] == "EUR"


def test_a_store_currency_that_is_no_currency_code_is_refused_with_its_key():
    raw = settings_dict("sqlite://")
    raw["stores"][2]["currency"] = "rupees"
    with pytest.raises(ConfigError) as refused:
        parse_settings(raw, environ={})
    assert "stores[2].currency" in str(refused.value) and "ISO 4217" in str(refused.value)
