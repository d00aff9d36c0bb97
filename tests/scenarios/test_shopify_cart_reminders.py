"""Shopify checkout recovery (``checkout_recovery``) stories the shared ones (test_store_journeys.py) do not tell.

Shopify's checkout asks for the email first and the phone with the shipping address, sending ``checkouts/create``
and then ``checkouts/update`` as she goes; its quiet hours hold a reminder for the morning while she may come back
and change the cart. What reaches the customer's phone is the assertion.
"""

from __future__ import annotations


from tests.scenarios import payloads as p
from tests.scenarios.stores import SHOPIFY
from tests.scenarios.test_store_journeys import LADDER, conversion

ASHA = "+919876543210"
ASHA_NEW = "+919811100011"  # the number she gives on this checkout


def returning_customer(sc) -> None:
    """Asha bought before with her old number: the store knows her (Shopify customer id) as that contact."""
    SHOPIFY.place(sc, SHOPIFY.order(1, ASHA, sc.now, cod=False))
    sc.later(days=3)


def email_step(sc, token: str) -> dict:
    """Shopify's first checkout step: her email, no phone and no address yet."""
    c = p.shopify_checkout(token, ASHA, sc.now)
    c.update(phone=None, buyer_accepts_sms_marketing=False, shipping_address=None, billing_address=None)
    c["customer"]["default_address"] = None
    return c


def test_a_checkout_begun_with_the_email_gets_its_reminders_at_the_phone_she_gives_next(sqlite_url, scenario, world):
    """Before: her checkout was first heard without a phone and taken as her account's contact; the phone she typed
    minutes later (with "Text me with news and offers" ticked) looked like "she corrected it to another number", and
    the ladder ended before its first reminder: nothing reached either number."""
    sc = scenario(sqlite_url, "shopify", journeys={**LADDER, "order_confirmation": {}})
    returning_customer(sc)
    start = sc.now
    sc.shopify("checkouts/create", email_step(sc, "tokN"))
    sc.later(minutes=4)
    shipping = {**p.shopify_checkout("tokN", ASHA_NEW, start), "updated_at": p.iso(sc.now)}
    shipping["customer"].update(id=p.customer_id_for(ASHA), admin_graphql_api_id=f"gid://shopify/Customer/{p.customer_id_for(ASHA)}")
    sc.shopify("checkouts/update", shipping)
    sc.later(hours=7)

    assert sc.templates_to(ASHA_NEW) == ["cart_1_v1", "cart_2_v1"]
    assert sc.templates_to(ASHA) == ["order_thanks_v1"]  # her old number: only the earlier order's thanks
    assert conversion(sc)["checkouts_reminded"] == 1

