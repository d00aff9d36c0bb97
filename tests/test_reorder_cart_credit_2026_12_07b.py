"""One order credited once when it reaches a reorder reminder and a cart reminder (the scenario harness: the real app
over HTTP, fake store and WhatsApp on 127.0.0.1, virtual clock; the reorder tick run as the worker runs it).

Asha's reorder reminder goes out; she taps its link, leaves the checkout, gets the cart reminder, then orders. Both
runs credited the order: the weekly report counted it as a recovered checkout (its total) and as a reorder (the
product's lines), its revenue in both stages. One order has one home: the journey whose reminder reached her last
before the order (as a pay reminder after a cart reminder takes the order). The other run is neither credited nor lost.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from connector.reorder.windows import run_reorder_tick
from connector.outbox.store import SENT_STEPS
from connector.reports import _CREDITING_RUNS, _EMAILS, _SAME_EMAIL
from tests.conftest import sqlite_template  # noqa: F401
from tests.scenarios import payloads as p
from tests.scenarios.conftest import _world_server, scenario, world  # noqa: F401
from tests.scenarios.harness import TEMPLATES, Scenario
from tests.scenarios.stores import SHOPIFY
from tests.scenarios.test_store_journeys import LADDER
from tests.scenarios.test_woo_recovery import PAY
from tests.test_query_plans import conn, plan_of  # noqa: F401

ASHA = "+919876543210"
REORDER_TEMPLATES = [
    {"step": "reorder.reminder", "name": "reorder_v1", "category": "marketing",
     "body_text": "Running low on {{1}}? Reorder in one tap: {{2}}", "body": ["reorder.product", "reorder.link"]},
]
JOURNEYS = {**LADDER, "reorder": {"cycles": {"SKU2006-001": "30d"}, "lead_days": 3, "follow_up_days": None}}


def sunglasses(n: int, at: Any, **kw: Any) -> dict[str, Any]:
    """Asha's paid order #500n of one pair of sunglasses (89.99; the fixture's other lines taken off)."""
    o = SHOPIFY.order(n, ASHA, at, cod=False, **kw)
    return {**o, "line_items": [{**o["line_items"][0], "variant_id": 49001}]}


def start(db_url: str, scenario: Any, journeys: dict[str, Any] | None = None, policy: dict[str, Any] | None = None,
          templates: tuple[dict[str, Any], ...] = ()) -> Scenario:
    """Asha, subscribed to WhatsApp marketing, bought the sunglasses 30 days before T0: their window opens a day on."""
    sc = scenario(db_url, "shopify", journeys={**JOURNEYS, **(journeys or {})}, policy=policy,
                  store_settings={"templates": [*TEMPLATES, *REORDER_TEMPLATES, PAY, *templates]})
    sc.shopify("customers_whats_app_marketing_consent/update",
               p.shopify_whatsapp_consent(p.customer_id_for(ASHA), ASHA, "subscribed", sc.now))
    SHOPIFY.place(sc, sunglasses(1, sc.now - timedelta(days=30)))
    sc.work()
    return sc


def reorder_tick(sc: Scenario) -> None:
    """The worker's reorder job (``worker.reorder_minutes``): windows refreshed and the due ones opened."""
    store = next(s for s in sc.settings.stores if s.key == sc.key)
    run_reorder_tick(sc.runtime.db, store, sc.runtime.store_ids[sc.key], sc.now)
    sc.work()


def stages(sc: Scenario) -> tuple[dict[str, Any], dict[str, Any]]:
    report = sc.report()["stages"]
    return report["conversion"]["metrics"], report["retention"]["metrics"]


def test_an_order_after_the_reorder_reminder_and_then_a_cart_reminder_is_the_cart_reminders_only(db_url, scenario, world):
    """Day 1: the reorder reminder. Day 2: she taps it, leaves the checkout; the cart reminder reaches her half an hour
    on; an hour later she completes that checkout (#5002). The cart reminder came last: a recovered checkout with
    #5002's total; the reorder run is not also credited its lines, and neither run is counted lost."""
    sc = start(db_url, scenario)
    sc.later(days=1, hours=1)
    reorder_tick(sc)
    assert sc.templates_to(ASHA) == ["reorder_v1"]
    sc.later(days=1)
    SHOPIFY.start_checkout(sc, "A", ASHA)
    sc.later(minutes=40, step=timedelta(minutes=10))
    assert sc.templates_to(ASHA) == ["reorder_v1", "cart_1_v1"]
    sc.later(hours=1)
    SHOPIFY.place(sc, sunglasses(2, sc.now, checkout="A"))  # 1299.00
    sc.later(hours=1)
    conversion, retention = stages(sc)
    assert (conversion["checkouts_recovered"], conversion["recovered_revenue"]) == (1, {"INR": "1299.00"})
    assert (retention["reminded"], retention["reordered_in_window"], retention["revenue"]) == (1, 0, {})
    assert (conversion["lost"], retention["lost"]) == (0, 0)


def test_an_order_after_the_cart_ladder_and_then_the_reorder_reminder_is_the_reorder_reminders_only(db_url, scenario, world):
    """The other way round: she leaves a checkout of the sunglasses at T0; its three reminders go out over the next day
    (the cart then listens out its 7 days). On day 2 the reorder reminder reaches her, and she reorders with its link
    (#5002, a new checkout). The reorder reminder came last: a reorder with the sunglasses' line; the cart is not also
    recovered with #5002's total, and neither run is counted lost."""
    sc = start(db_url, scenario)
    SHOPIFY.start_checkout(sc, "A", ASHA)
    sc.later(days=1, hours=1, step=timedelta(minutes=30))
    assert sc.templates_to(ASHA) == ["cart_1_v1", "cart_2_v1", "cart_3_v1"]
    sc.later(days=1)
    reorder_tick(sc)
    assert sc.templates_to(ASHA) == ["cart_1_v1", "cart_2_v1", "cart_3_v1", "reorder_v1"]
    sc.later(hours=2)
    SHOPIFY.place(sc, sunglasses(2, sc.now, checkout="R"))
    sc.later(hours=1)
    conversion, retention = stages(sc)
    assert (retention["reordered_in_window"], retention["revenue"]) == (1, {"INR": "89.99"})
    assert (conversion["checkouts_reminded"], conversion["checkouts_recovered"], conversion["recovered_revenue"]) == (1, 0, {})
    assert (conversion["lost"], retention["lost"]) == (0, 0)


def test_an_order_reordered_with_its_card_pending_then_paid_after_the_pay_reminder_is_the_pay_reminders_only(db_url, scenario, world):
    """Day 1: the reorder reminder. Day 2: she reorders with its link (#5002), her card payment pending; the pay link
    reaches her an hour on and she pays. The pay reminder came last (as it takes a cart's order): a recovered payment
    with #5002's total; the reorder run is not also credited its lines, and neither run is counted lost."""
    sc = start(db_url, scenario, {"payment_recovery": {}})
    sc.later(days=1, hours=1)
    reorder_tick(sc)
    sc.later(days=1)
    pending = {**sunglasses(2, sc.now, checkout="R"), "financial_status": "pending"}
    SHOPIFY.place(sc, pending)
    sc.later(hours=1, step=timedelta(minutes=10))
    assert sc.templates_to(ASHA) == ["reorder_v1", "pay_v1"]
    sc.later(minutes=20)
    sc.shopify("orders/paid", {**pending, "financial_status": "paid", "updated_at": p.iso(sc.now)})
    sc.later(hours=1)
    conversion, retention = stages(sc)
    assert (conversion["payments_recovered"], conversion["payment_recovered_revenue"]) == (1, {"INR": "1299.00"})
    assert (retention["reminded"], retention["reordered_in_window"], retention["revenue"]) == (1, 0, {})
    assert (conversion["lost"], retention["lost"]) == (0, 0)


def test_the_reports_look_at_the_other_journeys_credits_reads_by_contact_and_by_key(conn: Any) -> None:
    """Which other journey's run credited the same order: the order's customer's contacts by id and by email, her runs
    by the (store, contact) index, when their reminders went out by the outbox's (store, key) one: never every contact,
    run or message of the store."""
    plan = plan_of(conn, _EMAILS, {"cids": list(range(1, 40))})
    assert "SCAN contacts" not in plan, plan
    plan = plan_of(conn, _SAME_EMAIL, {"sid": 1, "keys": [f"buyer{i}@example.in" for i in range(40)]})
    assert "ix_contacts_store_email (store_id=? AND <expr>=?)" in plan, plan
    plan = plan_of(conn, _CREDITING_RUNS, {"sid": 1, "js": ["reorder", "checkout_recovery", "payment_recovery"], "cids": list(range(1, 40))})
    assert "ix_journey_runs_contact (store_id=? AND contact_id=?)" in plan, plan
    plan = plan_of(conn, SENT_STEPS, {"sid": 1, "keys": [f"reorder:reminder:reorder:{i}:p:1" for i in range(200)]})
    assert "sqlite_autoindex_outbox_1 (store_id=? AND idempotency_key=?)" in plan, plan
