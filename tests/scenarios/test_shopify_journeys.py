"""Shopify store journeys end to end (issue #4).

Signed Shopify webhooks (``X-Shopify-Hmac-Sha256``) and signed WhatsApp webhooks
(``X-Hub-Signature-256``) go in over HTTP to the real app; the real inbox processor,
journey timers, WhatsApp dispatcher (live httpx client) and store write-back dispatcher
run on a virtual clock; a fake WhatsApp Cloud API and a fake Shopify Admin GraphQL API on
127.0.0.1 record what reaches them. The assertions are what a merchant or a customer
would see: messages on the phone, tags and cancellations on the order, hand-offs and
the weekly report in the admin API.
"""

from __future__ import annotations

import random
from datetime import timedelta

import pytest

from tests.scenarios import payloads as p
from tests.scenarios.harness import T0, Delivery

ASHA = "+919876543210"
RAVI = "+919812345678"
MEERA = "+919900112233"
KIRAN = "+919811122233"
DEV = "+919822233344"
NEHA = "+919833344455"

COD = {"cod_confirmation": {"reminder_hours": [6], "answer_window_hours": 24}}
LADDER = {"checkout_recovery": {"abandon_after_minutes": 30, "ladder_minutes": [0, 360, 1440],
                                "discount_code": "BACK10", "discount_from_step": 3}}


def gid(order_id: int) -> str:
    return f"gid://shopify/Order/{order_id}"


def place(sc, order: dict, *, tag: str) -> None:
    """A new order: Shopify sends ``orders/create`` and ``orders/updated`` with the same body."""
    sc.shopify("orders/create", order, event_id=f"{tag}-create")
    sc.shopify("orders/updated", order, event_id=f"{tag}-updated")


def conversion(sc) -> dict:
    return sc.report()["stages"]["conversion"]["metrics"]


# ---- COD confirmation ----------------------------------------------------------------------

def test_cod_confirm_tags_the_order_once_even_if_the_tap_arrives_twice(db_url, scenario, world):
    sc = scenario(db_url, "shopify", journeys=COD)
    order = p.shopify_order(5001, ASHA, sc.now)
    sc.shopify("orders/create", order, event_id="o5001", times=2)  # Shopify retries a delivery
    sc.shopify("orders/updated", order, event_id="o5001-u")
    sc.work()
    [ask] = sc.sent(ASHA)
    assert (ask.template, ask.params, ask.buttons) == ("cod_confirm_v1", ("Asha", "#5001", "INR 1,299.00"), ("cod_confirm", "cod_cancel"))

    sc.later(minutes=20)
    sc.tap(ASHA, "cod_confirm", ask, times=2)  # Meta delivers the same tap twice
    sc.later(minutes=5)
    # tagsAdd makes Shopify send the order again, now tagged
    sc.shopify("orders/updated", {**order, "tags": "cod-confirmed", "updated_at": p.iso(sc.now)})
    sc.later(days=3)  # the reminder and the answer window go by
    sc.tap(ASHA, "cod_confirm", ask)  # days later she taps Confirm again: a new message
    sc.later(hours=1)
    sc.tap(ASHA, "cod_cancel", ask)  # and then Cancel: the choice is locked
    sc.later(days=1)

    assert world.shopify_ops("tagsAdd") == [{"id": gid(5001), "tags": ["cod-confirmed"]}]
    assert world.shopify_ops("orderCancel") == []
    assert sc.templates_to(ASHA) == ["cod_confirm_v1"]  # no reminder once confirmed
    qualification = sc.report()["stages"]["qualification"]["metrics"]
    assert (qualification["asked"], qualification["confirmed"], qualification["cancelled"]) == (1, 1, 0)


@pytest.mark.parametrize("action", ["cancel", "tag"])
def test_cod_no_answer_gets_one_reminder_then_the_configured_action(sqlite_url, scenario, world, action):
    sc = scenario(sqlite_url, "shopify", journeys={"cod_confirmation": {**COD["cod_confirmation"], "no_answer_action": action}})
    order = p.shopify_order(5002, ASHA, sc.now)
    place(sc, order, tag="o5002")
    sc.work()
    assert sc.templates_to(ASHA) == ["cod_confirm_v1"]

    sc.at(T0 + timedelta(hours=5, minutes=45))
    assert sc.templates_to(ASHA) == ["cod_confirm_v1"]
    sc.at(T0 + timedelta(hours=6))
    assert sc.templates_to(ASHA) == ["cod_confirm_v1", "cod_reminder_v1"]
    assert sc.last_to(ASHA, "cod_reminder_v1").params == ("#5002",)
    sc.at(T0 + timedelta(hours=23, minutes=45))
    assert world.shopify == []  # nothing done to the order inside the answer window
    sc.at(T0 + timedelta(hours=24))
    if action == "cancel":  # Shopify then sends the cancelled order back
        cancelled = {**order, "cancelled_at": p.iso(sc.now), "cancel_reason": "customer", "updated_at": p.iso(sc.now)}
        sc.shopify("orders/cancelled", cancelled)
        sc.shopify("orders/updated", cancelled)
    sc.later(days=3)

    if action == "cancel":
        assert world.shopify_ops("orderCancel") == [{
            "orderId": gid(5002), "reason": "CUSTOMER", "refundMethod": {"originalPaymentMethodsRefund": False}, "restock": True,
            "notifyCustomer": True, "staffNote": "COD order not confirmed on WhatsApp"}]
        assert world.shopify_ops("tagsAdd") == []
    else:
        assert world.shopify_ops("tagsAdd") == [{"id": gid(5002), "tags": ["cod-unconfirmed"]}]
        assert world.shopify_ops("orderCancel") == []
    assert sc.templates_to(ASHA) == ["cod_confirm_v1", "cod_reminder_v1"]
    assert sc.report()["stages"]["qualification"]["metrics"]["no_answer"] == 1


def _fulfil(sc, order: dict, at, *, orders_fulfilled: bool) -> None:
    """What Shopify sends when the whole order ships: the fulfilment, the updated order, and ``orders/fulfilled``."""
    sc.shopify("fulfillments/create", p.shopify_fulfillment(7001, order["id"], at))
    shipped = {**order, "fulfillment_status": "fulfilled", "updated_at": p.iso(at)}
    sc.shopify("orders/updated", shipped)
    if orders_fulfilled:
        sc.shopify("orders/fulfilled", shipped)


def _cancel_after_fulfilment(sc, world, *, orders_fulfilled: bool) -> None:
    order = p.shopify_order(5003, ASHA, sc.now)
    place(sc, order, tag="o5003")
    sc.work()
    ask = sc.last_to(ASHA, "cod_confirm_v1")
    sc.later(hours=2)
    _fulfil(sc, order, sc.now, orders_fulfilled=orders_fulfilled)  # shipped before she answered
    sc.later(hours=2)
    sc.tap(ASHA, "cod_cancel", ask)
    sc.later(days=2)

    assert world.shopify_ops("orderCancel") == [] and world.shopify_ops("tagsAdd") == []  # refused: it has shipped
    [handoff] = sc.handoffs(status="open")
    assert (handoff["journey"], handoff["subject"]) == ("cod_confirmation", "order:5003")
    assert "cancel" in handoff["reason"] and "shipped" in handoff["reason"]
    assert handoff["context"]["phone"] == ASHA
    [(stage, note)] = world.notifications  # the stage owner is told once
    assert stage == handoff["stage"] and "#5003" in note["text"]
    assert sc.report()["stages"]["qualification"]["metrics"]["cancel_after_fulfilment"] == 1


def test_cancel_after_fulfilment_is_refused_and_handed_off(sqlite_url, scenario, world):
    sc = scenario(sqlite_url, "shopify", journeys={"cod_confirmation": {"reminder_hours": [], "answer_window_hours": 48}})
    _cancel_after_fulfilment(sc, world, orders_fulfilled=False)


def test_cancel_after_fulfilment_is_handed_off_when_shopify_also_sends_orders_fulfilled(sqlite_url, scenario, world):
    sc = scenario(sqlite_url, "shopify", journeys={"cod_confirmation": {"reminder_hours": [], "answer_window_hours": 48}})
    _cancel_after_fulfilment(sc, world, orders_fulfilled=True)


# ---- checkout recovery -----------------------------------------------------------------------

def test_checkout_recovered_after_reminder_2_stops_reminder_3_and_is_attributed(sqlite_url, scenario, world):
    sc = scenario(sqlite_url, "shopify", journeys=LADDER)
    sc.shopify("checkouts/create", p.shopify_checkout("tokA", ASHA, sc.now))
    sc.shopify("checkouts/create", p.shopify_checkout("tokR", RAVI, sc.now))  # Ravi never buys: he shows reminder 3 does go out
    sc.work()
    sc.at(T0 + timedelta(minutes=30))
    assert sc.templates_to(ASHA) == sc.templates_to(RAVI) == ["cart_1_v1"]
    sc.at(T0 + timedelta(hours=6, minutes=30))
    assert sc.templates_to(ASHA) == ["cart_1_v1", "cart_2_v1"]  # reminder 2 reached her phone

    sc.at(T0 + timedelta(hours=8))
    place(sc, p.shopify_order(5004, ASHA, sc.now, cod=False, total="1299.00", checkout_token="tokA"), tag="o5004")
    sc.later(days=3)

    assert sc.templates_to(ASHA) == ["cart_1_v1", "cart_2_v1"]  # reminder 3 never sent
    assert sc.templates_to(RAVI) == ["cart_1_v1", "cart_2_v1", "cart_3_v1"]
    assert sc.last_to(RAVI, "cart_3_v1").params[1] == "BACK10"
    c = conversion(sc)
    assert (c["checkouts_abandoned"], c["checkouts_reminded"], c["checkouts_recovered"]) == (2, 2, 1)
    assert c["recovered_revenue"] == "1299.00"


def test_order_placed_before_any_reminder_is_not_attributed(sqlite_url, scenario, world):
    sc = scenario(sqlite_url, "shopify", journeys=LADDER)
    sc.shopify("checkouts/create", p.shopify_checkout("tokA", ASHA, sc.now))
    sc.shopify("checkouts/create", p.shopify_checkout("tokR", RAVI, sc.now))
    sc.work()
    sc.at(T0 + timedelta(minutes=10))  # Asha pays before the first reminder is due
    place(sc, p.shopify_order(5005, ASHA, sc.now, cod=False, total="1299.00", checkout_token="tokA"), tag="o5005")
    sc.at(T0 + timedelta(hours=2))  # Ravi buys after his first reminder
    place(sc, p.shopify_order(5006, RAVI, sc.now, cod=False, total="799.00", checkout_token="tokR"), tag="o5006")
    sc.later(days=3)

    assert sc.sent(ASHA) == []
    assert sc.templates_to(RAVI) == ["cart_1_v1"]
    c = conversion(sc)
    assert (c["checkouts_abandoned"], c["checkouts_reminded"], c["checkouts_recovered"]) == (2, 1, 1)
    assert c["recovered_revenue"] == "799.00"  # Ravi's order only


def test_order_placed_while_the_first_reminder_waits_for_quiet_hours_gets_no_reminder(sqlite_url, scenario, world):
    sc = scenario(sqlite_url, "shopify", journeys=LADDER, policy={"quiet_hours": "21:00-09:00"})  # Asia/Kolkata
    sc.at(T0 + timedelta(hours=10, minutes=15))  # 20:45 in Kolkata
    sc.shopify("checkouts/create", p.shopify_checkout("tokA", ASHA, sc.now))
    sc.at(T0 + timedelta(hours=12, minutes=30))  # 23:00: abandoned at 21:15, the first reminder waits for 09:00
    assert sc.sent(ASHA) == []
    place(sc, p.shopify_order(5007, ASHA, sc.now, cod=False, total="1299.00", checkout_token="tokA"), tag="o5007")
    sc.later(days=3)

    assert sc.sent(ASHA) == []  # she bought: no "your cart is waiting" the next morning


def test_order_placed_when_the_reminder_was_blocked_is_not_attributed(sqlite_url, scenario, world):
    sc = scenario(sqlite_url, "shopify", journeys=LADDER)
    sc.shopify("checkouts/create", p.shopify_checkout("tokA", ASHA, sc.now, accepts_marketing=False))  # no marketing consent
    sc.at(T0 + timedelta(hours=2))  # the first reminder was due at +30 min and was not sent
    place(sc, p.shopify_order(5008, ASHA, sc.now, cod=False, total="1299.00", checkout_token="tokA"), tag="o5008")
    sc.later(days=3)

    assert sc.sent(ASHA) == []
    c = conversion(sc)
    assert (c["checkouts_abandoned"], c["checkouts_reminded"], c["checkouts_recovered"], c["recovered_revenue"]) == (1, 0, 0, "0")


# ---- opt-outs --------------------------------------------------------------------------------

def test_opted_out_contacts_get_nothing_from_any_journey(sqlite_url, scenario, world):
    sc = scenario(sqlite_url, "shopify", journeys={**COD, "order_confirmation": {},
                                                   "checkout_recovery": {"abandon_after_minutes": 30, "ladder_minutes": [0, 360]}})
    # Ravi wrote STOP before anything happened
    sc.say(RAVI, "STOP")
    # Meera opted in at checkout, then unsubscribed in the store before the first reminder
    sc.shopify("checkouts/create", p.shopify_checkout("tokM", MEERA, sc.now))
    # Kiran got the COD question, then wrote "Stop" before the reminder
    place(sc, p.shopify_order(5010, KIRAN, sc.now), tag="o5010")
    # Asha and Dev do the same and stay subscribed: Asha's COD order, Dev's cart
    place(sc, p.shopify_order(5011, ASHA, sc.now), tag="o5011")
    sc.shopify("checkouts/create", p.shopify_checkout("tokD", DEV, sc.now))
    sc.work()
    assert sc.templates_to(KIRAN) == ["cod_confirm_v1"]

    sc.at(T0 + timedelta(minutes=10))
    sc.shopify("customers_whats_app_marketing_consent/update",
               p.shopify_whatsapp_consent(p.customer_id_for(MEERA), MEERA, "unsubscribed", sc.now))
    sc.at(T0 + timedelta(hours=1))
    sc.say(KIRAN, "Stop")
    place(sc, p.shopify_order(5012, RAVI, sc.now), tag="o5012")  # COD
    place(sc, p.shopify_order(5013, RAVI, sc.now, cod=False), tag="o5013")  # prepaid
    sc.shopify("checkouts/create", p.shopify_checkout("tokR", RAVI, sc.now))
    sc.shopify("checkouts/create", p.shopify_checkout("tokM2", MEERA, sc.now))  # ticks "accept marketing" again on a new cart
    sc.later(days=3)

    assert sc.sent(RAVI) == []
    assert sc.sent(MEERA) == []
    assert sc.templates_to(KIRAN) == ["cod_confirm_v1"]
    assert sc.templates_to(ASHA) == ["cod_confirm_v1", "cod_reminder_v1"]
    assert sc.templates_to(DEV) == ["cart_1_v1", "cart_2_v1"]
    assert sc.contact(RAVI)["contact"]["opted_out_at"] is not None
    meera = sc.contact(MEERA)["consent"]["marketing"]
    assert (meera["state"], meera["source"]) == ("revoked", "shopify_whatsapp_marketing")


# ---- a duplicate storm -----------------------------------------------------------------------

def storm(sc, deliveries: list[Delivery], seed: int) -> None:
    """Every delivery five times, in shuffled order."""
    copies = [d for d in deliveries for _ in range(5)]
    random.Random(seed).shuffle(copies)
    sc.post(*copies)


def test_duplicate_webhook_storm_sends_each_message_once(db_url, scenario, world):
    sc = scenario(db_url, "shopify", journeys={**COD, "order_confirmation": {}, "delivery": {"steps": ["shipped"]},
                                               "checkout_recovery": {"abandon_after_minutes": 30, "ladder_minutes": [0, 360]}})
    orders = {5020: (ASHA, True), 5021: (RAVI, True), 5022: (MEERA, False), 5023: (KIRAN, False)}
    morning = []
    for oid, (phone, cod) in orders.items():
        body = p.shopify_order(oid, phone, sc.now, cod=cod)
        morning += [sc.shopify_delivery("orders/create", body, event_id=f"c{oid}"), sc.shopify_delivery("orders/updated", body, event_id=f"u{oid}")]
    morning += [sc.shopify_delivery("checkouts/create", p.shopify_checkout(f"tok{i}", phone, sc.now), event_id=f"k{i}")
                for i, phone in enumerate((DEV, NEHA))]
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
    shipped = {**p.shopify_order(5022, MEERA, T0, cod=False), "fulfillment_status": "fulfilled", "updated_at": p.iso(sc.now)}
    storm(sc, [sc.shopify_delivery("fulfillments/create", p.shopify_fulfillment(7022, 5022, sc.now), event_id="f7022"),
               sc.shopify_delivery("orders/updated", shipped, event_id="u5022-shipped")], seed=3)
    sc.later(days=2)

    assert sc.templates_to(ASHA) == ["cod_confirm_v1"]
    assert sc.templates_to(RAVI) == ["cod_confirm_v1", "cod_reminder_v1"]
    assert sc.templates_to(MEERA) == ["order_thanks_v1", "shipped_v1"]
    assert sc.templates_to(KIRAN) == ["order_thanks_v1"]
    assert sc.templates_to(DEV) == sc.templates_to(NEHA) == ["cart_1_v1", "cart_2_v1"]
    assert len({s.callback for s in sc.sent()}) == len(sc.sent()) == 10
    assert sorted((c.operation, c.variables["id"], tuple(c.variables["tags"])) for c in world.shopify) == [
        ("tagsAdd", gid(5020), ("cod-confirmed",)), ("tagsAdd", gid(5021), ("cod-unconfirmed",))]
