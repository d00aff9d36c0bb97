"""Shopify orders that are not an online parcel in the shop's own currency, end to end.

A sale at the store's till (Shopify POS) and an order the customer collects at the store are
no parcel: the customer must not hear "your order has shipped". What reaches the customer's
phone is the assertion, as in test_store_journeys.py.
"""

from __future__ import annotations

from tests.scenarios import payloads as p
from tests.scenarios.stores import SHOPIFY

ASHA = "+919876543210"
RAVI = "+919812345678"
ORDER_JOURNEYS = {"order_confirmation": {}, "cod_confirmation": {"reminder_hours": [6], "answer_window_hours": 24}, "delivery": {}}
PICKUP_LINE = {"id": 7001, "code": "MG Road Store", "title": "MG Road Store", "source": "shopify", "price": "0.00",
               "carrier_identifier": None, "delivery_category": None, "is_removed": False}


def hand_over(sc, order: dict) -> None:
    """The store fulfils the order: for a till sale at once, for a pickup when it is marked picked up.
    Shopify sends a successful fulfilment with no carrier status, and the order, now fulfilled."""
    sc.shopify("fulfillments/create", p.shopify_fulfillment(order["id"] + 2000, order["id"], sc.now, shipment_status=None))
    sc.shopify("orders/updated", {**order, "fulfillment_status": "fulfilled", "updated_at": p.iso(sc.now)})


def test_a_sale_at_the_till_sends_the_customer_nothing(sqlite_url, scenario, world):
    """Before: "order confirmed" and then "your order has shipped" to a customer standing at the counter."""
    sc = scenario(sqlite_url, "shopify", journeys=ORDER_JOURNEYS)
    till = {**SHOPIFY.order(1, ASHA, sc.now, cod=False), "source_name": "pos", "shipping_lines": []}
    cash_at_till = {**SHOPIFY.order(2, RAVI, sc.now), "source_name": "pos", "shipping_lines": []}  # a COD-named gateway at the till
    for order in (till, cash_at_till):
        SHOPIFY.place(sc, order)
    sc.later(minutes=1)
    for order in (till, cash_at_till):
        hand_over(sc, order)
    sc.later(days=2)
    assert sc.templates_to(ASHA) == [] and sc.templates_to(RAVI) == []


def test_an_online_order_collected_at_the_store_is_thanked_but_never_shipped(sqlite_url, scenario, world):
    """Before: "your order has shipped" when the store marked it picked up."""
    sc = scenario(sqlite_url, "shopify", journeys=ORDER_JOURNEYS, store_settings={"pickup_lines": ["MG Road Store"]})
    pickup = {**SHOPIFY.order(1, ASHA, sc.now, cod=False), "shipping_lines": [PICKUP_LINE]}
    parcel = SHOPIFY.order(2, RAVI, sc.now, cod=False)
    for order in (pickup, parcel):
        SHOPIFY.place(sc, order)
    sc.later(hours=4)
    for order in (pickup, parcel):
        hand_over(sc, order)
    sc.later(hours=1)
    assert sc.templates_to(ASHA) == ["order_thanks_v1"]
    assert sc.templates_to(RAVI) == ["order_thanks_v1", "shipped_v1"]  # the same steps for a parcel still tell it
