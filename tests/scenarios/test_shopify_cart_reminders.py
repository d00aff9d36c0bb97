"""Shopify checkout recovery (``checkout_recovery``) stories the shared ones (test_store_journeys.py) do not tell.

Shopify's checkout asks for the email first and the phone with the shipping address, sending ``checkouts/create``
and then ``checkouts/update`` as she goes; its quiet hours hold a reminder for the morning while she may come back
and change the cart. What reaches the customer's phone is the assertion.
"""

from __future__ import annotations

from datetime import timedelta

from tests.scenarios import payloads as p
from tests.scenarios.harness import T0
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


def test_a_reminder_held_for_the_morning_quotes_the_cart_she_changed_overnight(db_url, scenario, world):
    """Asha leaves an iPod in her checkout at 20:45; its first reminder (due 21:15) waits for 09:00. At 21:30 she comes
    back and swaps it for a silk scarf. Before: at 09:00 "IPod Nano - 8GB is still in your cart", a product she had
    taken out; the message was written when it was queued."""
    sc = scenario(db_url, "shopify", journeys={"checkout_recovery": {"ladder_minutes": [0, 900, 1440]}},
                  policy={"quiet_hours": "21:00-09:00"})
    sc.at(SHOPIFY.local(20, 45))
    start = sc.now
    SHOPIFY.start_checkout(sc, "A", ASHA)
    sc.at(SHOPIFY.local(21, 20))  # the first reminder is queued for 09:00
    sc.at(SHOPIFY.local(21, 30))
    changed = {**p.shopify_checkout("tokA", ASHA, start, total="2500.00"), "updated_at": p.iso(sc.now)}
    changed["line_items"] = [{**changed["line_items"][0], "title": "Silk scarf", "presentment_title": "Silk scarf",
                              "product_id": 777, "variant_id": 778, "price": "2500.00"}]
    sc.shopify("checkouts/update", changed)
    sc.at(SHOPIFY.local(9, 30) + timedelta(days=1))

    assert sc.templates_to(ASHA) == ["cart_1_v1"]
    assert sc.last_to(ASHA, "cart_1_v1").params == ("Silk scarf", changed["abandoned_checkout_url"])


def test_a_reminder_that_went_out_is_not_written_again_when_the_cart_changes(sqlite_url, scenario, world):
    """The same change after the reminder reached her: nothing is sent again; the next reminder quotes the new cart."""
    sc = scenario(sqlite_url, "shopify", journeys=LADDER)
    SHOPIFY.start_checkout(sc, "A", ASHA)
    sc.at(T0 + timedelta(minutes=40))
    first = sc.last_to(ASHA, "cart_1_v1")
    SHOPIFY.change_checkout(sc, "A", ASHA, total="2500.00")
    sc.at(T0 + timedelta(hours=7))
    assert sc.templates_to(ASHA) == ["cart_1_v1", "cart_2_v1"]
    assert sc.last_to(ASHA, "cart_1_v1") == first


def test_an_sms_opt_in_she_unticks_before_leaving_the_checkout_sends_no_cart_reminder(sqlite_url, scenario, world):
    """Asha ticks "Text me with news and offers", then unticks it and leaves: Shopify's checkouts/update says
    buyer_accepts_sms_marketing false. Before: the tick's marketing consent stood, and the cart reminders went to
    someone who had just declined them."""
    sc = scenario(sqlite_url, "shopify", journeys=LADDER)
    SHOPIFY.start_checkout(sc, "A", ASHA)  # ticked
    sc.later(minutes=3)
    unticked = {**p.shopify_checkout("tokA", ASHA, T0, accepts_marketing=False), "updated_at": p.iso(sc.now)}
    sc.shopify("checkouts/update", unticked)
    sc.later(days=2)

    assert sc.templates_to(ASHA) == []
    assert sc.contact(ASHA)["consent"]["marketing"]["state"] == "unknown"


def test_a_consent_given_elsewhere_stands_when_the_checkout_box_is_left_unticked(sqlite_url, scenario, world):
    """Her WhatsApp "resume marketing" is hers to give: a checkout whose box she ticked and unticked takes back only
    what that tick gave."""
    sc = scenario(sqlite_url, "shopify", journeys=LADDER)
    sc.marketing_preference(ASHA, "resume")
    sc.later(minutes=1)
    SHOPIFY.start_checkout(sc, "A", ASHA)
    sc.later(minutes=3)
    sc.shopify("checkouts/update", {**p.shopify_checkout("tokA", ASHA, T0, accepts_marketing=False), "updated_at": p.iso(sc.now)})
    sc.later(hours=1)

    assert sc.templates_to(ASHA) == ["cart_1_v1"]
