"""Shopify stories the platform-neutral ones (test_store_journeys.py) do not tell, end to end.

A sale at the store's till (Shopify POS) and an order the customer collects at the store are
no parcel: the customer must not hear "your order has shipped". A checkout's SMS opt-in is for
the number typed beside the checkbox, not for the checkout's contact phone. On a Shopify Markets
store the customer sees their own currency while revenue stays in the shop's. What reaches the
customer's phone, and what the admin API shows, is the assertion.
"""

from __future__ import annotations

from datetime import timedelta

from tests.scenarios import payloads as p
from tests.scenarios.harness import T0
from tests.scenarios.stores import SHOPIFY
from tests.scenarios.test_store_journeys import LADDER, conversion

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


def test_a_checkout_sms_opt_in_is_recorded_for_the_number_it_was_given_for(sqlite_url, scenario, world):
    """Checkout phone ...0100, "Text me with news and offers" ticked with ...0199: before, ...0100 got
    marketing consent (and the cart reminders) though the opt-in was for ...0199."""
    contact, opted_in = "+14155550100", "+14155550199"
    sc = scenario(sqlite_url, "shopify", journeys=LADDER)
    checkout = p.shopify_checkout("tokSMS", contact, sc.now)
    checkout.update(sms_marketing_phone=opted_in, buyer_accepts_sms_marketing=True)
    sc.shopify("checkouts/create", checkout)
    sc.later(days=2)  # the whole ladder's time
    assert sc.templates_to(contact) == []  # no marketing consent for this number: no cart reminder
    assert sc.contact(contact)["consent"]["marketing"]["state"] == "unknown"
    assert (sc.contact(opted_in)["consent"]["marketing"]["state"], sc.contact(opted_in)["consent"]["marketing"]["source"]) == (
        "granted", "checkout_opt_in")


def test_a_checkout_sms_opt_in_for_the_checkout_phone_itself_still_counts(sqlite_url, scenario, world):
    sc = scenario(sqlite_url, "shopify", journeys=LADDER)
    checkout = p.shopify_checkout("tokSMS", ASHA, sc.now)
    checkout.update(sms_marketing_phone="+91 98765-43210", buyer_accepts_sms_marketing=True)  # the same number, written otherwise
    sc.shopify("checkouts/create", checkout)
    sc.later(hours=1)
    assert sc.templates_to(ASHA) == ["cart_1_v1"]
    assert sc.contact(ASHA)["consent"]["marketing"]["state"] == "granted"


# ---- a Shopify Markets store: the shop counts in USD, this customer pays in EUR -------------------

def in_euros(order: dict, shop: str = "100.00", charged: str = "92.50") -> dict:
    """``order`` placed by a customer shopping in EUR on a USD shop (Shopify Markets)."""
    def money(amount_shop: str, amount_charged: str) -> dict:
        return {"shop_money": {"amount": amount_shop, "currency_code": "USD"},
                "presentment_money": {"amount": amount_charged, "currency_code": "EUR"}}
    return {**order, "currency": "USD", "presentment_currency": "EUR", "total_price": shop, "current_total_price": shop,
            "total_price_set": money(shop, charged), "current_total_price_set": money(shop, charged)}


def test_a_customer_paying_in_euros_is_asked_for_the_euros_to_have_ready(sqlite_url, scenario, world):
    """Before: the COD ask said "USD 100.00" to a customer who will hand the courier EUR 92.50."""
    sc = scenario(sqlite_url, "shopify", journeys={**ORDER_JOURNEYS})
    SHOPIFY.place(sc, in_euros(SHOPIFY.order(1, ASHA, sc.now)))
    SHOPIFY.place(sc, in_euros(SHOPIFY.order(2, RAVI, sc.now, cod=False)))
    sc.work()
    assert sc.last_to(ASHA, "cod_confirm_v1").params == ("Asha", SHOPIFY.name(1), "EUR 92.50")
    assert sc.last_to(RAVI, "order_thanks_v1").params == (SHOPIFY.name(2), "EUR 92.50")


def test_cart_reminders_show_the_customers_currency_and_the_recovered_revenue_stays_in_the_shops(sqlite_url, scenario, world):
    """Shopify's checkout webhook gives ``total_price`` in the presentment currency and ``currency`` as the
    shop's: before, the last reminder offered "USD 92.50". The order it recovers counts 100.00 (USD) in
    the report, so every revenue figure of the store adds up in one currency."""
    sc = scenario(sqlite_url, "shopify", journeys=LADDER)
    checkout = {**p.shopify_checkout("tokEU", ASHA, sc.now, total="92.50"), "currency": "USD", "presentment_currency": "EUR"}
    sc.shopify("checkouts/create", checkout)
    sc.later(hours=25)
    assert sc.templates_to(ASHA) == ["cart_1_v1", "cart_2_v1", "cart_3_v1"]
    assert sc.last_to(ASHA, "cart_3_v1").params[0] == "EUR 92.50"
    SHOPIFY.place(sc, in_euros({**SHOPIFY.order(1, ASHA, sc.now, cod=False), "checkout_token": "tokEU"}))
    sc.later(days=8)
    assert conversion(sc)["recovered_revenue"] == {"USD": "100.00"}  # the shop's dollars, not her 92.50 euros


# ---- a manual payment (bank deposit) is no sale until the store marks it paid -------------------------------------

def test_a_bank_deposit_order_after_cart_reminders_is_recovered_only_once_it_is_paid(sqlite_url, scenario, world):
    """Reminded twice, Asha completes her checkout with the store's manual "Bank Deposit" method: Shopify makes the
    order with financial_status pending. Before, the report counted the cart recovered with its 1,299 at once. Now
    the reminders stop and the cart counts as recovered when the store marks the order paid (orders/paid)."""
    sc = scenario(sqlite_url, "shopify", journeys=LADDER)
    SHOPIFY.start_checkout(sc, "A", ASHA)
    sc.at(T0 + timedelta(hours=7))  # two cart reminders went out
    order = {**SHOPIFY.order(1, ASHA, sc.now, cod=False, checkout="A"), "financial_status": "pending",
             "payment_gateway_names": ["Bank Deposit"]}
    SHOPIFY.place(sc, order)
    sc.later(days=2)
    assert sc.templates_to(ASHA) == ["cart_1_v1", "cart_2_v1"]
    c = conversion(sc)
    assert (c["checkouts_reminded"], c["checkouts_recovered"], c["recovered_revenue"]) == (1, 0, {})
    sc.shopify("orders/paid", {**order, "financial_status": "paid", "updated_at": p.iso(sc.now)})
    sc.later(days=1)
    c = conversion(sc)
    assert (c["checkouts_recovered"], c["recovered_revenue"], c["lost"]) == (1, {"INR": "1299.00"}, 0)


def test_a_bank_deposit_never_paid_recovers_nothing(sqlite_url, scenario, world):
    sc = scenario(sqlite_url, "shopify", journeys=LADDER)
    SHOPIFY.start_checkout(sc, "A", ASHA)
    sc.at(T0 + timedelta(hours=7))
    SHOPIFY.place(sc, {**SHOPIFY.order(1, ASHA, sc.now, cod=False, checkout="A"), "financial_status": "pending",
                       "payment_gateway_names": ["Bank Deposit"]})
    sc.later(days=9)
    c = conversion(sc)
    assert (c["checkouts_recovered"], c["recovered_revenue"], c["lost"]) == (0, {}, 1)

