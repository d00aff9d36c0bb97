"""Store journeys end to end (issue #4), each story told once and run for a Shopify and a WooCommerce store.

Signed store webhooks (Shopify ``X-Shopify-Hmac-Sha256``; WooCommerce ``X-WC-Webhook-Signature``,
and the Cart Abandonment Recovery plugin's posts, authenticated by the secret token in the URL as
the plugin signs nothing) and signed WhatsApp webhooks (``X-Hub-Signature-256``) go in over HTTP
to the real app; the real inbox processor, journey timers, WhatsApp dispatcher (live httpx client)
and store write-back dispatcher run on a virtual clock; a fake WhatsApp Cloud API, a fake Shopify
Admin GraphQL API and a fake WooCommerce REST API (OAuth 1.0a checked, order meta kept) on
127.0.0.1 record what reaches them. The assertions are what a merchant or a customer would see:
messages on the phone, tags, notes, statuses and cancellations on the order, hand-offs and the
weekly report in the admin API. What each platform sends for a step of a story is in stores.py.
"""

from __future__ import annotations

import random
from collections import Counter
from datetime import timedelta

import pytest

from tests.scenarios import payloads as p
from tests.scenarios.harness import T0, Delivery
from tests.scenarios.stores import SHOPIFY, WOOCOMMERCE, Store

ASHA = "+919876543210"
RAVI = "+919812345678"
MEERA = "+919900112233"
KIRAN = "+919811122233"
DEV = "+919822233344"
NEHA = "+919833344455"

COD = {"cod_confirmation": {"reminder_hours": [6], "answer_window_hours": 24}}
LADDER = {"checkout_recovery": {"abandon_after_minutes": 30, "ladder_minutes": [0, 360, 1440],
                                "discount_code": "BACK10", "discount_from_step": 3}}


# ---- what reached the store ------------------------------------------------------------------

def gid(order_id: int) -> str:
    return f"gid://shopify/Order/{order_id}"


def writes(world) -> Counter:
    """Every write WooCommerce received, as (method, order, path, body) with the body made hashable."""
    return Counter((c.method, c.order_id, c.path, repr(sorted((c.body or {}).items()))) for c in world.woo_writes())


def note(order_id: int, text: str) -> tuple:
    return ("POST", str(order_id), "/notes", repr(sorted({"note": text, "customer_note": False}.items())))


def put(order_id: int, body: dict) -> tuple:
    return ("PUT", str(order_id), "", repr(sorted(body.items())))


def tags_meta(order_id: int, value: str) -> tuple:
    return put(order_id, {"meta_data": [{"key": "_storeloop_tags", "value": value}]})


def gets(world, order_id: int) -> int:
    return sum(1 for c in world.woo if c.method == "GET" and c.order_id == str(order_id))


def conversion(sc) -> dict:
    return sc.report()["stages"]["conversion"]["metrics"]


# ---- COD confirmation ----------------------------------------------------------------------

def test_cod_confirm_writes_back_once_even_if_the_tap_arrives_twice(db_url, scenario, world, store: Store):
    sc = scenario(db_url, store.platform, journeys={"cod_confirmation": {**COD["cod_confirmation"], **store.confirm_settings}})
    order = store.awaiting_confirmation(1, ASHA, sc.now)
    created, *updated = store.order_deliveries(sc, order)
    sc.post(created, times=2)  # Shopify retries a delivery; WooCommerce may deliver the same state twice within a second
    sc.post(*updated)
    sc.work()
    [ask] = sc.sent(ASHA)
    assert (ask.template, ask.params, ask.buttons) == ("cod_confirm_v1", ("Asha", store.name(1), "INR 1,299.00"), ("cod_confirm", "cod_cancel"))

    sc.later(minutes=20)
    sc.tap(ASHA, "cod_confirm", ask, times=2)  # Meta delivers the same tap twice
    sc.later(minutes=5)
    store.confirmed_echo(sc, order)  # the write-back makes the store send the order again
    sc.later(days=3)  # the reminder and the answer window go by
    sc.tap(ASHA, "cod_confirm", ask)  # days later she taps Confirm again: a new message
    sc.later(hours=1)
    sc.tap(ASHA, "cod_cancel", ask)  # and then Cancel: the choice is locked
    sc.later(days=1)

    if store.platform == "shopify":
        assert world.shopify_ops("tagsAdd") == [{"id": gid(5001), "tags": ["cod-confirmed"]}]
        assert world.shopify_ops("orderCancel") == []
    else:
        assert writes(world) == Counter([note(7301, "storeloop tags: cod-confirmed"), tags_meta(7301, "cod-confirmed"),
                                         put(7301, {"status": "processing"})])
        assert gets(world, 7301) == 2  # the tags' read, and the status read before the move
    assert sc.templates_to(ASHA) == ["cod_confirm_v1"]  # no reminder once confirmed
    qualification = sc.report()["stages"]["qualification"]["metrics"]
    assert (qualification["asked"], qualification["confirmed"], qualification["cancelled"]) == (1, 1, 0)


@pytest.mark.parametrize("action", ["cancel", "tag"])
def test_cod_no_answer_gets_one_reminder_then_the_configured_action(sqlite_url, scenario, world, store: Store, action):
    sc = scenario(sqlite_url, store.platform, journeys={"cod_confirmation": {**COD["cod_confirmation"], "no_answer_action": action}})
    order = store.order(2, ASHA, sc.now)
    store.place(sc, order)
    sc.work()
    assert sc.templates_to(ASHA) == ["cod_confirm_v1"]

    sc.at(T0 + timedelta(hours=5, minutes=45))
    assert sc.templates_to(ASHA) == ["cod_confirm_v1"]
    sc.at(T0 + timedelta(hours=6))
    assert sc.templates_to(ASHA) == ["cod_confirm_v1", "cod_reminder_v1"]
    assert sc.last_to(ASHA, "cod_reminder_v1").params == (store.name(2),)
    sc.at(T0 + timedelta(hours=23, minutes=45))
    assert (world.shopify if store.platform == "shopify" else world.woo) == []  # nothing done to the order inside the answer window
    sc.at(T0 + timedelta(hours=24))
    if action == "cancel":
        store.cancelled_echo(sc, order)
    sc.later(days=3)

    if store.platform == "shopify" and action == "cancel":
        assert world.shopify_ops("orderCancel") == [{
            # not CUSTOMER: she never answered, and Shopify would record "Customer changed/cancelled order"
            "orderId": gid(5002), "reason": "OTHER", "refundMethod": {"originalPaymentMethodsRefund": False}, "restock": True,
            "notifyCustomer": True, "staffNote": "COD order not confirmed on WhatsApp"}]
        assert world.shopify_ops("tagsAdd") == []
    elif store.platform == "shopify":
        assert world.shopify_ops("tagsAdd") == [{"id": gid(5002), "tags": ["cod-unconfirmed"]}]
        assert world.shopify_ops("orderCancel") == []
    elif action == "cancel":
        assert writes(world) == Counter([put(7302, {"status": "cancelled"}), note(7302, "COD order not confirmed on WhatsApp")])
    else:
        assert writes(world) == Counter([note(7302, "storeloop tags: cod-unconfirmed"), tags_meta(7302, "cod-unconfirmed")])
    assert sc.templates_to(ASHA) == ["cod_confirm_v1", "cod_reminder_v1"]
    assert sc.report()["stages"]["qualification"]["metrics"]["no_answer"] == 1


def test_cod_cancel_in_time_cancels_the_order_in_the_store_once(sqlite_url, scenario, world, store: Store):
    sc = scenario(sqlite_url, store.platform, journeys=COD)
    order = store.order(6, ASHA, sc.now)
    store.place(sc, order)
    sc.work()
    [ask] = sc.sent(ASHA)
    sc.later(minutes=40)
    sc.tap(ASHA, "cod_cancel", ask, times=2)  # Meta delivers the same tap twice
    sc.later(minutes=5)
    store.cancelled_echo(sc, order)
    sc.later(days=2)  # the reminder's time and the answer window go by

    if store.platform == "shopify":
        assert world.shopify_ops("orderCancel") == [{
            "orderId": gid(5006), "reason": "CUSTOMER", "refundMethod": {"originalPaymentMethodsRefund": False}, "restock": True,
            "notifyCustomer": False, "staffNote": "Cancelled by the customer on WhatsApp"}]
        assert world.shopify_ops("tagsAdd") == []
    else:
        assert writes(world) == Counter([put(7306, {"status": "cancelled"}), note(7306, "Cancelled by the customer on WhatsApp")])
    assert sc.templates_to(ASHA) == ["cod_confirm_v1"]  # no reminder after her answer
    qualification = sc.report()["stages"]["qualification"]["metrics"]
    assert (qualification["asked"], qualification["confirmed"], qualification["cancelled"]) == (1, 0, 1)


def _cancel_after_fulfilment(sc, world, store: Store, **shipping) -> None:
    order = store.order(3, ASHA, sc.now)
    store.place(sc, order)
    sc.work()
    ask = sc.last_to(ASHA, "cod_confirm_v1")
    sc.later(hours=2)
    sc.post(*store.shipped_deliveries(sc, order, **shipping))  # shipped before she answered
    sc.later(hours=2)
    sc.tap(ASHA, "cod_cancel", ask)
    sc.later(days=2)

    # refused: it has shipped
    if store.platform == "shopify":
        assert world.shopify_ops("orderCancel") == [] and world.shopify_ops("tagsAdd") == []
    else:
        assert world.woo == []  # nothing cancelled, noted or tagged
    [handoff] = sc.handoffs(status="open")
    assert (handoff["journey"], handoff["subject"]) == ("cod_confirmation", f"order:{store.order_id(3)}")
    assert "cancel" in handoff["reason"] and "shipped" in handoff["reason"]
    assert handoff["context"]["phone"] == ASHA
    [(stage, message)] = world.notifications  # the stage owner is told once
    assert stage == handoff["stage"] and store.name(3) in message["text"]
    assert sc.report()["stages"]["qualification"]["metrics"]["cancel_after_fulfilment"] == 1


def test_cancel_after_fulfilment_is_refused_and_handed_off(sqlite_url, scenario, world, store: Store):
    sc = scenario(sqlite_url, store.platform, journeys={"cod_confirmation": {"reminder_hours": [], "answer_window_hours": 48}})
    _cancel_after_fulfilment(sc, world, store)


def test_cancel_after_fulfilment_is_handed_off_when_shopify_also_sends_orders_fulfilled(sqlite_url, scenario, world):
    sc = scenario(sqlite_url, "shopify", journeys={"cod_confirmation": {"reminder_hours": [], "answer_window_hours": 48}})
    _cancel_after_fulfilment(sc, world, SHOPIFY, orders_fulfilled=True)


def test_a_confirm_on_an_order_the_store_cancelled_is_not_written_back_when_the_cancel_webhook_came_late(sqlite_url, scenario, world):
    """Shopify delivers in no set order: the cancel's orders/updated, then a newer update (a restock note), reach us before
    orders/cancelled, which is then older than the stored order and dropped as stale. The run learns of the cancel from
    the update; a Confirm tap after it neither tags the cancelled order nor thanks her for it."""
    sc = scenario(sqlite_url, "shopify", journeys={"cod_confirmation": {**COD["cod_confirmation"], "send_acknowledgement": True}})
    order = SHOPIFY.order(9, ASHA, sc.now)
    SHOPIFY.place(sc, order)
    sc.work()
    [ask] = sc.sent(ASHA)
    sc.later(minutes=30)
    cancelled = {**order, "cancelled_at": p.iso(sc.now), "cancel_reason": "inventory", "updated_at": p.iso(sc.now)}
    sc.shopify("orders/updated", {**cancelled, "updated_at": p.iso(sc.now + timedelta(seconds=5)), "note": "restocked"})
    sc.shopify("orders/cancelled", cancelled)  # older than what is stored now: stale
    sc.later(minutes=5)
    sc.tap(ASHA, "cod_confirm", ask)
    sc.later(days=2)  # the reminder's and the answer window's times go by
    assert world.shopify_ops("tagsAdd") == [] and world.shopify_ops("orderCancel") == []
    assert sc.templates_to(ASHA) == ["cod_confirm_v1"]  # no "confirmed", no reminder


# ---- checkout recovery (WooCommerce: the Cart Abandonment Recovery plugin) ---------------------

def test_checkout_recovered_after_reminder_2_stops_reminder_3_and_is_attributed(sqlite_url, scenario, world, store: Store):
    sc = scenario(sqlite_url, store.platform, journeys=LADDER)
    store.start_checkout(sc, "A", ASHA)
    store.start_checkout(sc, "R", RAVI)  # Ravi never buys: he shows reminder 3 does go out
    sc.work()
    sc.at(T0 + timedelta(minutes=30))
    assert sc.templates_to(ASHA) == sc.templates_to(RAVI) == ["cart_1_v1"]
    sc.at(T0 + timedelta(hours=6, minutes=30))
    assert sc.templates_to(ASHA) == ["cart_1_v1", "cart_2_v1"]  # reminder 2 reached her phone

    sc.at(T0 + timedelta(hours=8))
    store.pay_checkout(sc, 4, ASHA, "A", total="1299.00")
    store.cart_recovered(sc, "A", ASHA)
    sc.later(days=3)

    assert sc.templates_to(ASHA) == ["cart_1_v1", "cart_2_v1"]  # reminder 3 never sent
    assert sc.templates_to(RAVI) == ["cart_1_v1", "cart_2_v1", "cart_3_v1"]
    assert sc.last_to(RAVI, "cart_3_v1").params[1] == "BACK10"
    c = conversion(sc)
    assert (c["checkouts_abandoned"], c["checkouts_reminded"], c["checkouts_recovered"]) == (2, 2, 1)
    assert c["recovered_revenue"] == {"INR": "1299.00"}


def test_a_checkout_changed_after_its_first_reminder_is_quoted_as_it_is_now(sqlite_url, scenario, world):
    """Asha gets the first reminder for her 899 cart, comes back an hour later and fills it up to 2,500, then leaves
    again. The later reminders quote the cart as it is now (the discount reminder names 2,500, not 899), on the ladder's
    own times: her change does not start it over. (Shopify: ``checkouts/update``. The WooCommerce plugin posts a cart
    once per status, so a change after it was abandoned never reaches us there.)"""
    store = SHOPIFY
    sc = scenario(sqlite_url, store.platform, journeys=LADDER)
    store.start_checkout(sc, "A", ASHA)
    sc.at(T0 + timedelta(minutes=30))
    assert sc.templates_to(ASHA) == ["cart_1_v1"]
    sc.at(T0 + timedelta(hours=1))
    store.change_checkout(sc, "A", ASHA, total="2500.00")
    sc.at(T0 + timedelta(hours=6, minutes=30))
    assert sc.templates_to(ASHA) == ["cart_1_v1", "cart_2_v1"]
    sc.later(days=2)

    assert sc.templates_to(ASHA) == ["cart_1_v1", "cart_2_v1", "cart_3_v1"]
    assert sc.last_to(ASHA, "cart_3_v1").params[:2] == ("INR 2,500.00", "BACK10")


def test_a_checkout_given_another_phone_after_its_first_reminder_sends_no_more_reminders_to_the_old_one(sqlite_url, scenario,
                                                                                                           world):
    """Asha gets the first reminder, then comes back and corrects the phone on her checkout (the first number was
    mistyped, or is not hers to use). No later reminder goes to the number she replaced: it may be a stranger's, and
    the recovery link opens her checkout. The run's holdout group and consent were those of the first contact, so the
    ladder is not moved to the new number either: it ends (``contact_changed``). (Shopify, as above.)"""
    store = SHOPIFY
    sc = scenario(sqlite_url, store.platform, journeys=LADDER)
    store.start_checkout(sc, "A", ASHA)
    sc.at(T0 + timedelta(minutes=30))
    sc.at(T0 + timedelta(hours=1))
    store.change_checkout(sc, "A", RAVI, total="899.00")
    sc.later(days=2)

    assert sc.templates_to(ASHA) == ["cart_1_v1"]
    assert sc.sent(RAVI) == []
    c = conversion(sc)
    assert (c["checkouts_abandoned"], c["checkouts_reminded"], c["checkouts_recovered"]) == (1, 1, 0)


def test_a_woocommerce_cart_that_becomes_an_unpaid_order_goes_on_with_its_ladder_and_its_payment_is_recovered(sqlite_url, scenario, world):
    """WooCommerce makes the order before the payment: after two cart reminders Asha orders and the gateway leaves it
    pending, then she pays; Ravi's order stays pending. Neither is reminded from the start again, and Asha's payment
    is credited to the cart's reminders: one checkout, reminded, recovered."""
    sc = scenario(sqlite_url, "woocommerce", journeys=LADDER)
    store = WOOCOMMERCE
    store.start_checkout(sc, "A", ASHA)
    store.start_checkout(sc, "R", RAVI)
    sc.work()
    sc.at(T0 + timedelta(hours=6, minutes=30))
    assert sc.templates_to(ASHA) == sc.templates_to(RAVI) == ["cart_1_v1", "cart_2_v1"]

    sc.at(T0 + timedelta(hours=7))
    unpaid = {n: {**store.order(n, phone, sc.now, cod=False), "status": "pending", "date_paid": None, "date_paid_gmt": None}
              for n, phone in ((4, ASHA), (5, RAVI))}
    unpaid[5]["billing"] = {**unpaid[5]["billing"], "email": "ravi@example.com", "first_name": "Ravi"}  # two customers, two emails
    for order in unpaid.values():
        sc.woo("order.created", order)
    sc.at(T0 + timedelta(hours=8))
    sc.woo("order.updated", {**unpaid[4], "status": "processing", "date_paid_gmt": p.gmt(sc.now), "date_modified_gmt": p.gmt(sc.now)})
    sc.later(days=3)

    assert sc.templates_to(ASHA) == ["cart_1_v1", "cart_2_v1"]  # paid: nothing more
    assert sc.templates_to(RAVI) == ["cart_1_v1", "cart_2_v1", "cart_3_v1"]  # the ladder's last step, not its first again
    assert sc.last_to(RAVI, "cart_3_v1").params[1] == "BACK10"
    c = conversion(sc)
    assert (c["checkouts_abandoned"], c["checkouts_reminded"], c["checkouts_recovered"]) == (2, 2, 1)
    assert c["recovered_revenue"] == {"INR": "1299.00"}


def test_a_woocommerce_cart_reported_completed_before_its_order_arrives_is_still_recovered(sqlite_url, scenario, world):
    """The plugin posts "completed" as the order is made; WooCommerce queues its order.created webhook and delivers it
    minutes later. The order still finds the cart's run and is credited to its two reminders."""
    sc = scenario(sqlite_url, "woocommerce", journeys=LADDER)
    store = WOOCOMMERCE
    store.start_checkout(sc, "A", ASHA)
    store.start_checkout(sc, "R", RAVI)  # completed, and no order ever comes: the run ends, nothing is credited
    sc.work()
    sc.at(T0 + timedelta(hours=6, minutes=30))
    assert sc.templates_to(ASHA) == ["cart_1_v1", "cart_2_v1"]

    sc.at(T0 + timedelta(hours=8))
    sc.cart(p.woo_cart(store.SESSIONS["A"], ASHA, status="completed"))
    sc.cart(p.woo_cart(store.SESSIONS["R"], RAVI, status="completed"))
    sc.later(minutes=12)
    sc.woo("order.created", store.order(4, ASHA, sc.now, cod=False, total="1299.00"))
    sc.later(days=3)

    assert sc.templates_to(ASHA) == sc.templates_to(RAVI) == ["cart_1_v1", "cart_2_v1"]  # no third reminder for either
    c = conversion(sc)
    assert (c["checkouts_abandoned"], c["checkouts_reminded"], c["checkouts_recovered"]) == (2, 2, 1)
    assert c["recovered_revenue"] == {"INR": "1299.00"}


def test_a_cart_reminder_held_for_the_morning_is_withdrawn_when_the_cart_is_completed(sqlite_url, scenario, world):
    """06:30 in Rome is inside the store's quiet hours: the first reminder waits for 09:00. Asha completes the cart at
    07:30; while her run waits (until 09:30) for the order to credit, the held reminder must not reach her at 09:00,
    even though the order's webhook is late (or never comes, as here)."""
    sc = scenario(sqlite_url, "woocommerce", journeys=LADDER, policy={"quiet_hours": "21:00-09:00"})
    store = WOOCOMMERCE
    store.start_checkout(sc, "A", ASHA)
    sc.work()
    sc.at(T0 + timedelta(minutes=40))  # the reminder is queued for 09:00
    assert sc.templates_to(ASHA) == []
    sc.at(T0 + timedelta(hours=1, minutes=30))
    sc.cart(p.woo_cart(store.SESSIONS["A"], ASHA, status="completed"))
    sc.at(T0 + timedelta(hours=3, minutes=15))  # 09:15 in Rome
    assert sc.templates_to(ASHA) == []
    sc.later(days=1)
    assert sc.templates_to(ASHA) == []
    c = conversion(sc)
    assert (c["checkouts_abandoned"], c["checkouts_reminded"], c["checkouts_recovered"]) == (1, 0, 0)


def test_order_placed_before_any_reminder_is_not_attributed(sqlite_url, scenario, world, store: Store):
    sc = scenario(sqlite_url, store.platform, journeys=LADDER)
    store.start_checkout(sc, "A", ASHA)
    store.start_checkout(sc, "R", RAVI)
    sc.work()
    sc.at(T0 + timedelta(minutes=10))  # Asha pays before the first reminder is due
    store.pay_checkout(sc, 5, ASHA, "A", total="1299.00")
    sc.at(T0 + timedelta(hours=2))  # Ravi buys after his first reminder
    store.pay_checkout(sc, 6, RAVI, "R", total="799.00")
    sc.later(days=3)

    assert sc.sent(ASHA) == []
    assert sc.templates_to(RAVI) == ["cart_1_v1"]
    c = conversion(sc)
    # Asha's checkout, bought ten minutes in, was never abandoned
    assert (c["checkouts_abandoned"], c["checkouts_reminded"], c["checkouts_recovered"]) == (1, 1, 1)
    assert c["recovered_revenue"] == {"INR": "799.00"}  # Ravi's order only


def test_order_placed_while_the_first_reminder_waits_for_quiet_hours_gets_no_reminder(sqlite_url, scenario, world, store: Store):
    sc = scenario(sqlite_url, store.platform, journeys=LADDER, policy={"quiet_hours": "21:00-09:00"})  # in the store's time zone
    sc.at(store.local(20, 45))
    store.start_checkout(sc, "A", ASHA)
    sc.at(store.local(23, 0))  # abandoned at 21:15, the first reminder waits for 09:00
    assert sc.sent(ASHA) == []
    store.pay_checkout(sc, 7, ASHA, "A", total="1299.00")
    store.cart_recovered(sc, "A", ASHA)
    sc.later(days=3)

    assert sc.sent(ASHA) == []  # she bought: no "your cart is waiting" the next morning


def test_order_placed_when_the_reminder_was_blocked_is_not_attributed(sqlite_url, scenario, world, store: Store):
    sc = scenario(sqlite_url, store.platform, journeys=LADDER)
    store.start_checkout(sc, "A", ASHA, opt_in=False)  # no marketing consent
    sc.at(T0 + timedelta(hours=2))  # the first reminder was due at +30 min and was not sent
    store.pay_checkout(sc, 8, ASHA, "A", total="1299.00")
    sc.later(days=3)

    assert sc.sent(ASHA) == []
    c = conversion(sc)
    assert (c["checkouts_abandoned"], c["checkouts_reminded"], c["checkouts_recovered"], c["recovered_revenue"]) == (1, 0, 0, {})


# ---- opt-outs --------------------------------------------------------------------------------

def test_opted_out_contacts_get_nothing_from_any_journey(sqlite_url, scenario, world, store: Store):
    sc = scenario(sqlite_url, store.platform, journeys={**COD, "order_confirmation": {},
                                                        "checkout_recovery": {"abandon_after_minutes": 30, "ladder_minutes": [0, 360]}})
    # Ravi wrote STOP before anything happened
    sc.say(RAVI, "STOP")
    # Meera opted in at checkout, then stops marketing before the first reminder
    store.start_checkout(sc, "M", MEERA)
    # Kiran got the COD question, then wrote "Stop" before the reminder
    store.place(sc, store.order(10, KIRAN, sc.now))
    # Asha and Dev do the same and stay subscribed: Asha's COD order, Dev's cart
    store.place(sc, store.order(11, ASHA, sc.now))
    store.start_checkout(sc, "D", DEV)
    sc.work()
    assert sc.templates_to(KIRAN) == ["cod_confirm_v1"]

    sc.at(T0 + timedelta(minutes=10))
    store.revoke_marketing(sc, MEERA)
    sc.at(T0 + timedelta(hours=1))
    sc.say(KIRAN, "Stop")
    store.place(sc, store.order(12, RAVI, sc.now))  # COD
    store.place(sc, store.order(13, RAVI, sc.now, cod=False))  # prepaid
    store.start_checkout(sc, "R", RAVI)
    store.start_checkout(sc, "M2", MEERA)  # opts in again on a new cart
    sc.later(days=3)

    assert sc.sent(RAVI) == []
    assert sc.sent(MEERA) == []
    assert sc.templates_to(KIRAN) == ["cod_confirm_v1"]
    assert sc.templates_to(ASHA) == ["cod_confirm_v1", "cod_reminder_v1"]
    assert sc.templates_to(DEV) == ["cart_1_v1", "cart_2_v1"]
    assert sc.contact(RAVI)["contact"]["opted_out_at"] is not None
    meera = sc.contact(MEERA)["consent"]["marketing"]
    assert meera["state"] == "revoked"
    if store.platform == "shopify":
        assert meera["source"] == "shopify_whatsapp_marketing"


# ---- a duplicate storm -----------------------------------------------------------------------

def storm(sc, deliveries: list[Delivery], seed: int) -> None:
    """Every delivery five times, in shuffled order."""
    copies = [d for d in deliveries for _ in range(5)]
    random.Random(seed).shuffle(copies)
    sc.post(*copies)


def test_duplicate_webhook_storm_sends_each_message_once(db_url, scenario, world, store: Store):
    sc = scenario(db_url, store.platform, journeys={**COD, "order_confirmation": {}, "delivery": {"steps": ["shipped"]},
                                                    "checkout_recovery": {"abandon_after_minutes": 30, "ladder_minutes": [0, 360]}})
    orders = {20: (ASHA, True), 21: (RAVI, True), 22: (MEERA, False), 23: (KIRAN, False)}
    bodies = {n: store.order(n, phone, sc.now, cod=cod) for n, (phone, cod) in orders.items()}
    morning = [d for body in bodies.values() for d in store.order_deliveries(sc, body)]
    morning += [store.checkout_delivery(sc, key, phone) for key, phone in (("D", DEV), ("N", NEHA))]
    storm(sc, morning, seed=1)
    sc.work()

    sc.at(T0 + timedelta(hours=1))  # Asha confirms; WhatsApp reports what it delivered and what was read
    replies = [sc.tap_delivery(ASHA, "cod_confirm", sc.last_to(ASHA, "cod_confirm_v1"))]
    for s in sc.sent():
        replies += [sc.whatsapp_delivery(p.wa_status(sc.phone_number_id, s.to.lstrip("+"), s.wamid, status, sc.now, s.callback))
                    for status in ("sent", "delivered", "read")]
    storm(sc, replies, seed=2)
    sc.work()

    sc.at(T0 + timedelta(hours=3))  # Meera's order ships
    storm(sc, store.shipped_deliveries(sc, bodies[22]), seed=3)
    sc.later(days=2)

    assert sc.templates_to(ASHA) == ["cod_confirm_v1"]
    assert sc.templates_to(RAVI) == ["cod_confirm_v1", "cod_reminder_v1"]
    assert sc.templates_to(MEERA) == ["order_thanks_v1", "shipped_v1"]
    assert sc.templates_to(KIRAN) == ["order_thanks_v1"]
    assert sc.templates_to(DEV) == sc.templates_to(NEHA) == ["cart_1_v1", "cart_2_v1"]
    assert len({s.callback for s in sc.sent()}) == len(sc.sent()) == 10
    if store.platform == "shopify":
        assert sorted((c.operation, c.variables["id"], tuple(c.variables["tags"])) for c in world.shopify) == [
            ("tagsAdd", gid(5020), ("cod-confirmed",)), ("tagsAdd", gid(5021), ("cod-unconfirmed",))]
    else:
        assert writes(world) == Counter([note(7320, "storeloop tags: cod-confirmed"), tags_meta(7320, "cod-confirmed"),
                                         note(7321, "storeloop tags: cod-unconfirmed"), tags_meta(7321, "cod-unconfirmed")])


def test_an_unpaid_order_binned_at_night_gets_no_reminder_in_the_morning(sqlite_url, scenario, world):
    """Asha's cart is reminded once, then she orders and the payment stays pending: the order goes on with the cart's
    ladder. Its next reminder falls due at night and waits for the morning (quiet hours). The merchant moves the
    order to the bin (order.deleted: only its id) before then: its pay link would lead nowhere, so nothing goes out."""
    sc = scenario(sqlite_url, "woocommerce", journeys=LADDER, policy={"quiet_hours": "21:00-09:00"})  # Rome
    sc.at(T0 + timedelta(hours=14))  # 20:00 in Rome
    WOOCOMMERCE.start_checkout(sc, "A", ASHA)
    sc.later(minutes=45, step=timedelta(minutes=15))  # the first reminder went out at 20:30
    order = {**WOOCOMMERCE.order(6, ASHA, sc.now, cod=False), "status": "pending", "date_paid": None, "date_paid_gmt": None}
    sc.woo("order.created", order)
    sc.at(T0 + timedelta(hours=22), step=timedelta(hours=1))  # 04:00: the second step fell due at 02:30, held for 09:00
    sc.woo("order.deleted", {"id": order["id"]})
    sc.later(days=2)
    assert sc.templates_to(ASHA) == ["cart_1_v1"]
