"""Payment recovery, order confirmation and the holdout, as a store owner and her customer see them (review of 2026-12-07).

The scenario harness: the real app over HTTP, the fake store and WhatsApp on 127.0.0.1, a virtual clock.

1. A pay reminder still held after its run ended (``after_minutes`` of a day: the run ends as it queues the reminder,
   which then waits for the end of the store's quiet hours) is withdrawn when the store cancels or bins the order:
   she is never asked to pay for a cancelled order.
2. A WooCommerce order she moves to a bank transfer on the pay page (``on-hold``: no pay link any more, like an order
   placed so, which is never chased) gets no "your payment has not come through" an hour on, next to its thanks.
3. Her second try at the purchase placed to pay by bank transfer (WooCommerce ``on-hold``) ends the first try's pay
   reminder, as a paid or cash-on-delivery one does: she is not asked to pay twice.
4. Payment terms the store gives a pending order after it was placed (Net 30 on a B2B order), or extends, move its
   pay reminder to the new due date: the buyer is not chased for money not owed yet.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest

from tests.conftest import sqlite_template  # noqa: F401
from tests.scenarios import payloads as p
from tests.scenarios.conftest import _world_server, scenario, sqlite_url, world  # noqa: F401
from tests.scenarios.harness import TEMPLATES, Scenario
from tests.scenarios.stores import SHOPIFY, WOOCOMMERCE
from tests.scenarios.test_store_journeys import conversion
from tests.scenarios.test_woo_recovery import PAY, unpaid

ASHA = "+919876543210"
QUIET = {"quiet_hours": "21:00-09:00", "utility_in_quiet_hours": False}  # the pay link waits for the morning
A_DAY_ON = {"payment_recovery": {"after_minutes": 1440}}  # "remind them a day later"
# a pay reminder that names the order and asks (the store's e-mail carries the link)
PAY_PLAIN = {"step": "payment_recovery.remind", "name": "pay_plain_v1", "category": "utility",
             "body_text": "Your payment for {{1}} has not come through yet.", "body": ["order.name"]}


def start(sqlite_url: str, scenario: Any, platform: str, journeys: dict[str, Any], policy: dict[str, Any] | None = None,
          pay: dict[str, Any] = PAY) -> Scenario:
    return scenario(sqlite_url, platform, journeys=journeys, policy=policy, store_settings={"templates": [*TEMPLATES, pay]})


def shopify_unpaid(n: int, at: Any) -> dict[str, Any]:
    """Asha's Shopify order #500n, its card payment still pending (the pay link: the order status page)."""
    return {**SHOPIFY.order(n, ASHA, at, cod=False), "financial_status": "pending"}


def pay_reminders(sc: Scenario) -> list[str]:
    """The orders her pay reminders name, in the order they reached her."""
    return [s.params[0] for s in sc.sent(ASHA) if s.template in ("pay_v1", "pay_plain_v1")]


# ---- 1. a pay reminder held past its run's end is withdrawn by a cancel ----------------------------------------

def test_shopify_a_pay_link_held_after_a_day_is_withdrawn_when_the_store_cancels_the_order(sqlite_url, scenario, world):
    """Mumbai, 22:00: #5001 is left pending. The store reminds a day later: 22:00 the next day, held for 09:00. At
    23:00 the store cancels #5001. The morning brings her no "complete your payment" for the cancelled order."""
    sc = start(sqlite_url, scenario, "shopify", A_DAY_ON, QUIET)
    sc.at(SHOPIFY.local(22, 0))
    order = shopify_unpaid(1, sc.now)
    SHOPIFY.place(sc, order)
    sc.later(hours=25, step=timedelta(minutes=30))  # 23:00 the next day: queued at 22:00, held for the morning
    assert pay_reminders(sc) == []
    SHOPIFY.cancelled_echo(sc, order)
    sc.later(hours=14)
    assert pay_reminders(sc) == []


@pytest.mark.parametrize("called_off", ["cancelled", "binned"])
def test_woocommerce_a_pay_link_held_after_a_day_is_withdrawn_when_the_order_is_cancelled_or_binned(sqlite_url, scenario, world,
                                                                                                      called_off):
    """Rome, 22:00: #7301's card is declined; its pay link a day later waits for 09:00. The store cancels the order at
    23:00 (or moves it to the bin: ``order.deleted``): it never goes."""
    sc = start(sqlite_url, scenario, "woocommerce", A_DAY_ON, QUIET)
    sc.at(WOOCOMMERCE.local(22, 0))
    order = unpaid(1, sc.now)
    sc.woo("order.created", order)
    sc.later(hours=25, step=timedelta(minutes=30))
    assert pay_reminders(sc) == []
    if called_off == "cancelled":
        WOOCOMMERCE.cancelled_echo(sc, order)
    else:
        sc.woo("order.deleted", {"id": order["id"]})
    sc.later(hours=14)
    assert pay_reminders(sc) == []


def test_a_pay_link_that_went_out_is_still_credited_when_she_pays_after_the_run_ended(sqlite_url, scenario, world):
    """The other side: the reminder that went out at 09:00 is hers to act on; she pays at 10:00, and the report credits it."""
    sc = start(sqlite_url, scenario, "shopify", A_DAY_ON, QUIET)
    sc.at(SHOPIFY.local(22, 0))
    order = shopify_unpaid(1, sc.now)
    SHOPIFY.place(sc, order)
    sc.later(hours=36, step=timedelta(minutes=30))  # 10:00 the second morning: the 09:00 reminder went out
    assert pay_reminders(sc) == ["#5001"]
    sc.shopify("orders/paid", {**order, "financial_status": "paid", "updated_at": p.iso(sc.now)})
    sc.later(minutes=10)
    c = conversion(sc)
    assert (c["payments_reminded"], c["payments_recovered"]) == (1, 1)


# ---- 2. a WooCommerce order moved to a bank transfer gets no pay reminder ----------------------------------------

def bank_transfer(order: dict[str, Any], at: Any) -> dict[str, Any]:
    """She goes back to the pay page and picks a bank transfer: WooCommerce puts the order on hold, awaiting the money."""
    return {**order, "status": "on-hold", "payment_method": "bacs", "payment_method_title": "Direct bank transfer",
            "date_modified_gmt": p.gmt(at), "date_modified": p.gmt(at)}


@pytest.mark.parametrize("pay", [PAY_PLAIN, PAY], ids=["plain", "with link"])
def test_woocommerce_an_order_moved_to_a_bank_transfer_gets_its_thanks_and_no_pay_reminder(sqlite_url, scenario, world, pay):
    """#7301 is left at the card page (pending); 20 minutes later she picks a bank transfer on the pay page (on-hold).
    She is thanked for the order and not told an hour on that her payment has not come through (a template with the
    pay link: no reminder skipped for the missing link either); the report counts no stalled payment."""
    sc = start(sqlite_url, scenario, "woocommerce", {"payment_recovery": {}, "order_confirmation": {}}, pay=pay)
    order = unpaid(1, sc.now, status="pending")
    sc.woo("order.created", order)
    sc.later(minutes=20)
    sc.woo("order.updated", bank_transfer(order, sc.now))
    sc.later(days=2)
    assert sc.templates_to(ASHA) == ["order_thanks_v1"]
    skipped = sc.report()["message_health"]["templates"].get("payment_recovery.remind", {}).get("skipped_by_reason", {})
    assert skipped == {}
    assert conversion(sc)["payments_stalled"] == 0


def test_woocommerce_a_held_pay_link_is_withdrawn_when_she_moves_the_order_to_a_bank_transfer(sqlite_url, scenario, world):
    """Rome, 20:30: #7301 declined; its pay link (21:30) waits for 09:00. At 22:00 she picks a bank transfer: it never goes."""
    sc = start(sqlite_url, scenario, "woocommerce", {"payment_recovery": {}}, QUIET, pay=PAY_PLAIN)
    sc.at(WOOCOMMERCE.local(20, 30))
    order = unpaid(1, sc.now)
    sc.woo("order.created", order)
    sc.later(hours=1, minutes=30, step=timedelta(minutes=10))
    assert pay_reminders(sc) == []  # queued, held
    sc.woo("order.updated", bank_transfer(order, sc.now))
    sc.later(hours=14)
    assert pay_reminders(sc) == []


# ---- 3. her second try by bank transfer replaces the unpaid first one ----------------------------------------------

@pytest.mark.parametrize("pay", [PAY_PLAIN, PAY], ids=["plain", "with link"])
def test_woocommerce_no_pay_reminder_for_an_order_she_placed_again_by_bank_transfer(sqlite_url, scenario, world, pay):
    """Her card is left at the payment page on #7301; 20 minutes later she checks out again (#7302, the same products)
    and picks a bank transfer (on-hold). She is thanked for #7302 and never asked to pay for #7301 as well: with the
    pay link she could have paid twice."""
    sc = start(sqlite_url, scenario, "woocommerce", {"payment_recovery": {}, "order_confirmation": {}}, pay=pay)
    sc.woo("order.created", unpaid(1, sc.now, status="pending"))
    sc.later(minutes=20)
    sc.woo("order.created", bank_transfer(unpaid(2, sc.now, status="pending"), sc.now))
    sc.later(days=2)
    assert sc.templates_to(ASHA) == ["order_thanks_v1"]
    assert sc.last_to(ASHA, "order_thanks_v1").params[0] == "#7302"
    c = conversion(sc)
    assert (c["payments_stalled"], c["payments_reminded"]) == (0, 0)


def test_woocommerce_a_held_pay_link_is_withdrawn_when_she_places_the_order_again_by_bank_transfer(sqlite_url, scenario, world):
    """Rome, 20:30: #7301 declined; its pay link (21:30) waits for 09:00. At 22:00 she orders again by bank transfer: it never goes."""
    sc = start(sqlite_url, scenario, "woocommerce", {"payment_recovery": {}}, QUIET, pay=PAY_PLAIN)
    sc.at(WOOCOMMERCE.local(20, 30))
    sc.woo("order.created", unpaid(1, sc.now))
    sc.later(hours=1, minutes=30, step=timedelta(minutes=10))
    assert pay_reminders(sc) == []  # queued, held
    sc.woo("order.created", bank_transfer(unpaid(2, sc.now, status="pending"), sc.now))
    sc.later(hours=14)
    assert pay_reminders(sc) == []


def test_woocommerce_an_order_by_bank_transfer_for_another_product_leaves_the_unpaid_one_chased(sqlite_url, scenario, world):
    """The other side: a bank transfer order for something else is another purchase; #7301 still gets its pay link."""
    sc = start(sqlite_url, scenario, "woocommerce", {"payment_recovery": {}}, pay=PAY_PLAIN)
    sc.woo("order.created", unpaid(1, sc.now, status="pending"))
    sc.later(minutes=20)
    other = bank_transfer(unpaid(2, sc.now, status="pending"), sc.now)
    other["line_items"] = [{**other["line_items"][0], "product_id": 999, "variation_id": 0, "sku": "OTHER-1", "name": "Soap"}]
    sc.woo("order.created", other)
    sc.later(days=2)
    assert pay_reminders(sc) == ["#7301"]


# ---- 4. terms the store gives the order after it was placed move its pay reminder ----------------------------------

def net(days: int, issued: Any) -> dict[str, Any]:
    """Shopify's ``payment_terms`` of an order on Net ``days``, issued at ``issued``."""
    return {"payment_terms_name": f"Net {days}", "payment_terms_type": "net", "due_in_days": days,
            "payment_schedules": [{"issued_at": p.iso(issued), "due_at": p.iso(issued + timedelta(days=days)), "completed_at": None}]}


@pytest.mark.parametrize("terms", ["given after the order", "extended"])
def test_shopify_terms_given_or_extended_after_the_order_move_its_pay_reminder_to_the_new_due_date(sqlite_url, scenario, world,
                                                                                                   terms):
    """A B2B buyer's order #5001 is pending. Twenty minutes on the store puts it on Net 30 (or extends its Net 30 to
    Net 60): the pay link does not go an hour after the order (or on day 30), only once the payment is due."""
    sc = start(sqlite_url, scenario, "shopify", {"payment_recovery": {}})
    placed = sc.now
    order = shopify_unpaid(1, placed)
    first, then, due = (None, net(30, placed), 30) if terms == "given after the order" else (net(30, placed), net(60, placed), 60)
    if first is not None:
        order["payment_terms"] = first
    SHOPIFY.place(sc, order)
    sc.later(minutes=20)
    sc.shopify("orders/updated", {**order, "payment_terms": then, "updated_at": p.iso(sc.now)})
    sc.at(placed + timedelta(days=due) - timedelta(hours=1), step=timedelta(hours=12))
    assert pay_reminders(sc) == []
    sc.later(hours=3)
    assert pay_reminders(sc) == ["#5001"]
