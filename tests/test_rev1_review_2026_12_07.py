"""Review of 2026-12-07's merges (binned and restored orders, payment recovery): faults a store owner or her customer
would notice, each shown by a scenario (the real app over HTTP, the fake WooCommerce/Shopify and WhatsApp, a virtual
clock). Each test is marked xfail(strict=True) while the fault stands: it documents it, and fails once it is fixed.
"""

from __future__ import annotations

from datetime import timedelta

import pytest

from tests.conftest import sqlite_template  # noqa: F401
from tests.scenarios import payloads as p
from tests.scenarios.conftest import _world_server, scenario, sqlite_url, world  # noqa: F401  (the scenario fixtures)
from tests.scenarios.harness import TEMPLATES
from tests.scenarios.stores import SHOPIFY, WOOCOMMERCE
from tests.scenarios.test_store_journeys import LADDER
from tests.scenarios.test_woo_recovery import unpaid
from tests.test_payment_review_2026_12_07 import A_DAY_ON, PAY_PLAIN, QUIET, bank_transfer, pay_reminders, shopify_unpaid, start
from tests.test_woo_binned_and_restored import COD, asked_then_binned, restored, tagged

ASHA = "+919876543210"


# ---- binned and restored ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("button", ["cod_confirm", "cod_cancel"])
def test_a_tap_on_the_cod_question_while_the_order_is_in_the_bin_is_not_lost_when_it_is_restored(sqlite_url, scenario, world,
                                                                                                 button):
    """Asked at 10:00; the store bins the order by mistake at 11:00; at 11:05 she taps Confirm (or Cancel) on the
    question; at 11:10 the store restores the order. Her answer stands: she is not reminded to confirm an order she
    answered, and the order is not tagged as unanswered at the deadline."""
    sc = scenario(sqlite_url, "woocommerce", journeys={"cod_confirmation": COD})
    order, ask = asked_then_binned(sc, 1)
    sc.later(minutes=5)
    sc.tap(ASHA, button, ask)
    sc.later(minutes=5)
    sc.woo("order.restored", restored(order, sc.now))
    sc.later(days=2)
    assert "cod_reminder_v1" not in sc.templates_to(ASHA)
    assert "cod-unconfirmed" not in tagged(world)


def test_an_unpaid_order_restored_days_later_gets_its_cart_ladder_spaced_as_before(sqlite_url, scenario, world):
    """Her card declined; the cart ladder (0 h, 6 h, 24 h after abandoning) has sent its first step; the store bins the
    order and restores it three days later: the next two steps keep their spacing, not both at once."""
    sc = scenario(sqlite_url, "woocommerce", journeys={"payment_recovery": {}, **LADDER})
    sc.marketing_preference(ASHA, "resume")
    sc.later(minutes=5)
    order = unpaid(1, sc.now)
    sc.woo("order.created", order)
    sc.later(hours=1, step=timedelta(minutes=10))
    assert sc.templates_to(ASHA) == ["cart_1_v1"]
    sc.woo("order.deleted", {"id": order["id"]})
    sc.later(days=3)
    sc.woo("order.restored", restored(order, sc.now))
    sc.later(hours=6, step=timedelta(minutes=10))  # the second step: 6 h after abandoning, 5 h of it left at the bin
    assert sc.templates_to(ASHA) == ["cart_1_v1", "cart_2_v1"]
    sc.later(hours=17, step=timedelta(minutes=30))  # the third: 18 h after the second
    assert sc.templates_to(ASHA) == ["cart_1_v1", "cart_2_v1", "cart_3_v1"]


# ---- payment recovery ---------------------------------------------------------------------------------------------

def test_woocommerce_a_pay_link_held_after_a_day_is_withdrawn_when_she_moves_the_order_to_a_bank_transfer(sqlite_url, scenario,
                                                                                                            world):
    """Rome, 22:00: #7301's card is declined; the store reminds a day later, so its pay link is queued at 22:00 the next day
    and held for 09:00 (the run ends as it queues it). At 23:00 she picks a bank transfer on the pay page (on-hold):
    the morning brings no "your payment has not come through" for an order awaiting her transfer."""
    sc = start(sqlite_url, scenario, "woocommerce", A_DAY_ON, QUIET, pay=PAY_PLAIN)
    sc.at(WOOCOMMERCE.local(22, 0))
    order = unpaid(1, sc.now)
    sc.woo("order.created", order)
    sc.later(hours=25, step=timedelta(minutes=30))
    assert pay_reminders(sc) == []
    sc.woo("order.updated", bank_transfer(order, sc.now))
    sc.later(hours=14)
    assert pay_reminders(sc) == []


def test_shopify_a_pay_link_held_after_a_day_is_withdrawn_when_the_payment_is_authorized(sqlite_url, scenario, world):
    """Mumbai, 22:00: #5001 pending; its pay link a day later waits for 09:00. At 23:00 her card is authorized (the store
    captures at fulfilment): she is not asked in the morning to pay for what she has paid."""
    sc = start(sqlite_url, scenario, "shopify", A_DAY_ON, QUIET)
    sc.at(SHOPIFY.local(22, 0))
    order = shopify_unpaid(1, sc.now)
    SHOPIFY.place(sc, order)
    sc.later(hours=25, step=timedelta(minutes=30))
    assert pay_reminders(sc) == []
    sc.shopify("orders/updated", {**order, "financial_status": "authorized", "updated_at": p.iso(sc.now)})
    sc.later(hours=14)
    assert pay_reminders(sc) == []


# ---- WooCommerce: the AfterShip plugin's older meta ----------------------------------------------------------------

SHIPPED_WITH_LINK = {"step": "delivery.shipped", "name": "shipped_link_v1", "category": "utility",
                     "body_text": "Order {{1}} is on its way with {{2}} ({{3}}): {{4}}",
                     "body": ["order.name", "fulfillment.tracking_company", "fulfillment.tracking_number", "fulfillment.tracking_url"]}


def test_a_parcel_in_the_aftership_plugins_older_meta_links_to_its_couriers_page(sqlite_url, scenario, world):
    """The AfterShip plugin before its tracking items keeps the courier's slug in ``_aftership_tracking_provider`` (the
    meta box's select) and its display name in ``_aftership_tracking_provider_name`` (filled from the courier list:
    "India Post"); its track button uses the slug (aftership.php ``display_track_button``, assets/js/admin.js). Her
    "shipped" links to track.aftership.com/india-post/<number>, not to /India%20Post/<number>, which AfterShip knows
    no courier by."""
    templates = [t for t in TEMPLATES if t["step"] != "delivery.shipped"] + [SHIPPED_WITH_LINK]
    sc = scenario(sqlite_url, "woocommerce", journeys={"delivery": {}}, store_settings={"templates": templates})
    order = WOOCOMMERCE.order(1, ASHA, sc.now, cod=False)
    sc.woo("order.created", order)
    sc.later(hours=1)
    old = [{"id": 770, "key": "_aftership_tracking_provider", "value": "india-post"},
           {"id": 771, "key": "_aftership_tracking_provider_name", "value": "India Post"},
           {"id": 772, "key": "_aftership_tracking_number", "value": "EE123456789IN"}]
    sc.woo("order.updated", {**order, "status": "completed", "date_modified_gmt": p.gmt(sc.now), "date_modified": p.gmt(sc.now),
                             "meta_data": [*order.get("meta_data", []), *old]})
    sc.later(minutes=10)
    [shipped] = [s for s in sc.sent(ASHA) if s.template == "shipped_link_v1"]
    assert shipped.params[3] == "https://track.aftership.com/india-post/EE123456789IN"
