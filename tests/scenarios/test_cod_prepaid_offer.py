"""The optional COD-to-prepaid offer (``cod_confirmation.prepaid_offer``), end to end on a Shopify store.

After she confirms her cash-on-delivery order, the customer is offered to pay now (the order's payment link,
with a discount code). A promotional template waits out the store's quiet hours; what happens to the order
meanwhile decides whether the offer still makes sense. What reaches her phone is the assertion.
"""

from __future__ import annotations

from datetime import timedelta

import pytest

from tests.scenarios import payloads as p
from tests.scenarios.harness import TEMPLATES
from tests.scenarios.stores import SHOPIFY

ASHA = "+919876543210"
OFFER = {"step": "cod_confirmation.prepaid_offer", "name": "prepaid_v1", "category": "marketing",
         "body_text": "Pay now for {{1}} and get {{2}} off: {{3}}", "body": ["order.name", "discount.code", "order.payment_url"]}
JOURNEYS = {"cod_confirmation": {"reminder_hours": [6], "answer_window_hours": 24, "prepaid_offer": True,
                                 "prepaid_discount_code": "PAY5"}}


def confirmed_late_evening(sc) -> dict:
    """Asha orders COD at 20:45 (Kolkata), is asked at once (utility goes in quiet hours) and taps Confirm at 21:10:
    the offer, a marketing template, waits for 09:00."""
    sc.marketing_preference(ASHA, "resume")  # she may get marketing on WhatsApp
    sc.at(SHOPIFY.local(20, 45))
    order = SHOPIFY.order(1, ASHA, sc.now)
    SHOPIFY.place(sc, order)
    sc.work()
    sc.at(SHOPIFY.local(21, 10))
    sc.tap(ASHA, "cod_confirm", sc.last_to(ASHA, "cod_confirm_v1"))
    sc.later(minutes=30)
    assert sc.templates_to(ASHA) == ["cod_confirm_v1"]  # the offer waits for the morning
    return order


def paid(sc, order: dict) -> None:
    """She paid the store's invoice (or the store marked it paid): orders/paid, with its orders/updated."""
    done = {**order, "financial_status": "paid", "updated_at": p.iso(sc.now)}
    sc.shopify("orders/paid", done)
    sc.shopify("orders/updated", done)


def shipped(sc, order: dict) -> None:
    sc.post(*SHOPIFY.shipped_deliveries(sc, order))


@pytest.mark.parametrize("meanwhile", [paid, SHOPIFY.cancelled_echo, shipped], ids=["paid", "cancelled", "shipped"])
def test_a_prepaid_offer_held_for_the_morning_is_not_sent_once_the_order_moved_on(sqlite_url, scenario, world, meanwhile):
    """Before: at 09:00 "pay now and get PAY5 off" reached her for an order she had paid overnight, that the store had
    cancelled, or that had already left the warehouse."""
    sc = scenario(sqlite_url, "shopify", journeys=JOURNEYS, policy={"quiet_hours": "21:00-09:00"},
                  store_settings={"templates": [*TEMPLATES, OFFER]})
    order = confirmed_late_evening(sc)
    meanwhile(sc, order)
    sc.at(SHOPIFY.local(10, 0) + timedelta(days=1))
    assert sc.templates_to(ASHA) == ["cod_confirm_v1"]


def test_a_prepaid_offer_held_for_the_morning_goes_out_when_nothing_changed(sqlite_url, scenario, world):
    sc = scenario(sqlite_url, "shopify", journeys=JOURNEYS, policy={"quiet_hours": "21:00-09:00"},
                  store_settings={"templates": [*TEMPLATES, OFFER]})
    order = confirmed_late_evening(sc)
    SHOPIFY.confirmed_echo(sc, order)  # the confirm tag's echo moves nothing
    sc.at(SHOPIFY.local(10, 0) + timedelta(days=1))
    assert sc.templates_to(ASHA) == ["cod_confirm_v1", "prepaid_v1"]
    assert sc.last_to(ASHA, "prepaid_v1").params == (SHOPIFY.name(1), "PAY5", order["order_status_url"])
