"""WooCommerce store journeys end to end (issue #4): the same stories as the Shopify ones.

Signed WooCommerce webhooks (``X-WC-Webhook-Signature``), the Cart Abandonment Recovery
plugin's posts (authenticated by the secret token in the URL, as the plugin signs nothing)
and signed WhatsApp webhooks go in over HTTP to the real app; the real worker components
run on a virtual clock; a fake WhatsApp Cloud API and a fake WooCommerce REST API (OAuth
1.0a checked, order meta kept) on 127.0.0.1 record what reaches them.
"""

from __future__ import annotations

import random
from collections import Counter
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


def writes(world) -> Counter:
    """Every write the store received, as (method, order, path, body) with the body made hashable."""
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

def test_cod_confirm_writes_back_once_even_if_the_tap_arrives_twice(db_url, scenario, world):
    sc = scenario(db_url, "woocommerce", journeys={"cod_confirmation": {**COD["cod_confirmation"], "confirm_status": "processing"}})
    order = p.woo_order(7301, ASHA, sc.now, status="on-hold")
    sc.woo("order.created", order, times=2)  # WooCommerce may deliver the same state twice within a second
    sc.woo("order.updated", order)
    sc.work()
    [ask] = sc.sent(ASHA)
    assert (ask.template, ask.params, ask.buttons) == ("cod_confirm_v1", ("Asha", "#7301", "INR 1,299.00"), ("cod_confirm", "cod_cancel"))

    sc.later(minutes=20)
    sc.tap(ASHA, "cod_confirm", ask, times=2)  # Meta delivers the same tap twice
    sc.later(minutes=5)
    # the status write-back makes WooCommerce send the order again, now processing
    sc.woo("order.updated", {**order, "status": "processing", "date_modified_gmt": p.gmt(sc.now)})
    sc.later(days=3)
    sc.tap(ASHA, "cod_confirm", ask)  # days later, a second distinct Confirm
    sc.later(hours=1)
    sc.tap(ASHA, "cod_cancel", ask)  # then Cancel: locked
    sc.later(days=1)

    assert writes(world) == Counter([note(7301, "storeloop tags: cod-confirmed"), tags_meta(7301, "cod-confirmed"),
                                     put(7301, {"status": "processing"})])
    assert gets(world, 7301) == 1
    assert sc.templates_to(ASHA) == ["cod_confirm_v1"]
    qualification = sc.report()["stages"]["qualification"]["metrics"]
    assert (qualification["asked"], qualification["confirmed"], qualification["cancelled"]) == (1, 1, 0)


@pytest.mark.parametrize("action", ["cancel", "tag"])
def test_cod_no_answer_gets_one_reminder_then_the_configured_action(sqlite_url, scenario, world, action):
    sc = scenario(sqlite_url, "woocommerce", journeys={"cod_confirmation": {**COD["cod_confirmation"], "no_answer_action": action}})
    order = p.woo_order(7302, ASHA, sc.now)
    sc.woo("order.created", order)
    sc.work()
    assert sc.templates_to(ASHA) == ["cod_confirm_v1"]

    sc.at(T0 + timedelta(hours=5, minutes=45))
    assert sc.templates_to(ASHA) == ["cod_confirm_v1"]
    sc.at(T0 + timedelta(hours=6))
    assert sc.templates_to(ASHA) == ["cod_confirm_v1", "cod_reminder_v1"]
    assert sc.last_to(ASHA, "cod_reminder_v1").params == ("#7302",)
    sc.at(T0 + timedelta(hours=23, minutes=45))
    assert world.woo == []
    sc.at(T0 + timedelta(hours=24))
    if action == "cancel":  # WooCommerce then sends the cancelled order back
        sc.woo("order.updated", {**order, "status": "cancelled", "date_modified_gmt": p.gmt(sc.now)})
    sc.later(days=3)

    if action == "cancel":
        assert writes(world) == Counter([put(7302, {"status": "cancelled"}), note(7302, "COD order not confirmed on WhatsApp")])
    else:
        assert writes(world) == Counter([note(7302, "storeloop tags: cod-unconfirmed"), tags_meta(7302, "cod-unconfirmed")])
    assert sc.templates_to(ASHA) == ["cod_confirm_v1", "cod_reminder_v1"]
    assert sc.report()["stages"]["qualification"]["metrics"]["no_answer"] == 1


def test_cancel_after_fulfilment_is_refused_and_handed_off(sqlite_url, scenario, world):
    sc = scenario(sqlite_url, "woocommerce", journeys={"cod_confirmation": {"reminder_hours": [], "answer_window_hours": 48}})
    order = p.woo_order(7303, ASHA, sc.now)
    sc.woo("order.created", order)
    sc.work()
    ask = sc.last_to(ASHA, "cod_confirm_v1")
    sc.later(hours=2)  # shipped (completed, with Shipment Tracking) before she answered
    sc.woo("order.updated", p.woo_order(7303, ASHA, T0, status="completed", modified=sc.now, tracking=True))
    sc.later(hours=2)
    sc.tap(ASHA, "cod_cancel", ask)
    sc.later(days=2)

    assert world.woo == []  # refused: nothing cancelled, noted or tagged
    [handoff] = sc.handoffs(status="open")
    assert (handoff["journey"], handoff["subject"]) == ("cod_confirmation", "order:7303")
    assert "cancel" in handoff["reason"] and "shipped" in handoff["reason"]
    assert handoff["context"]["phone"] == ASHA
    [(stage, message)] = world.notifications
    assert stage == handoff["stage"] and "#7303" in message["text"]
    assert sc.report()["stages"]["qualification"]["metrics"]["cancel_after_fulfilment"] == 1


# ---- checkout recovery (Cart Abandonment Recovery plugin) --------------------------------------

def test_checkout_recovered_after_reminder_2_stops_reminder_3_and_is_attributed(sqlite_url, scenario, world):
    sc = scenario(sqlite_url, "woocommerce", journeys=LADDER)
    sc.cart(p.woo_cart("a1a1a1a1a1", ASHA))
    sc.cart(p.woo_cart("b2b2b2b2b2", RAVI))  # Ravi never buys: reminder 3 does go out to him
    sc.work()
    sc.at(T0 + timedelta(minutes=30))
    assert sc.templates_to(ASHA) == sc.templates_to(RAVI) == ["cart_1_v1"]
    sc.at(T0 + timedelta(hours=6, minutes=30))
    assert sc.templates_to(ASHA) == ["cart_1_v1", "cart_2_v1"]

    sc.at(T0 + timedelta(hours=8))
    sc.woo("order.created", p.woo_order(7304, ASHA, sc.now, cod=False, total="1299.00"))
    sc.later(minutes=15)
    sc.cart(p.woo_cart("a1a1a1a1a1", ASHA, status="completed"))  # the plugin reports the cart recovered
    sc.later(days=3)

    assert sc.templates_to(ASHA) == ["cart_1_v1", "cart_2_v1"]
    assert sc.templates_to(RAVI) == ["cart_1_v1", "cart_2_v1", "cart_3_v1"]
    assert sc.last_to(RAVI, "cart_3_v1").params[1] == "BACK10"
    c = conversion(sc)
    assert (c["checkouts_abandoned"], c["checkouts_reminded"], c["checkouts_recovered"]) == (2, 2, 1)
    assert c["recovered_revenue"] == "1299.00"


def test_order_placed_before_any_reminder_is_not_attributed(sqlite_url, scenario, world):
    sc = scenario(sqlite_url, "woocommerce", journeys=LADDER)
    sc.cart(p.woo_cart("a1a1a1a1a1", ASHA))
    sc.cart(p.woo_cart("b2b2b2b2b2", RAVI))
    sc.work()
    sc.at(T0 + timedelta(minutes=10))
    sc.woo("order.created", p.woo_order(7305, ASHA, sc.now, cod=False, total="1299.00"))
    sc.at(T0 + timedelta(hours=2))
    sc.woo("order.created", p.woo_order(7306, RAVI, sc.now, cod=False, total="799.00"))
    sc.later(days=3)

    assert sc.sent(ASHA) == []
    assert sc.templates_to(RAVI) == ["cart_1_v1"]
    c = conversion(sc)
    assert (c["checkouts_abandoned"], c["checkouts_reminded"], c["checkouts_recovered"]) == (2, 1, 1)
    assert c["recovered_revenue"] == "799.00"


def test_order_placed_while_the_first_reminder_waits_for_quiet_hours_gets_no_reminder(sqlite_url, scenario, world):
    sc = scenario(sqlite_url, "woocommerce", journeys=LADDER, policy={"quiet_hours": "21:00-09:00"})  # Europe/Rome
    sc.at(T0 + timedelta(hours=14, minutes=45))  # 20:45 in Rome
    sc.cart(p.woo_cart("a1a1a1a1a1", ASHA))
    sc.at(T0 + timedelta(hours=16, minutes=30))  # 22:30: abandoned at 21:15, the first reminder waits for 09:00
    assert sc.sent(ASHA) == []
    sc.woo("order.created", p.woo_order(7307, ASHA, sc.now, cod=False, total="1299.00"))
    sc.later(minutes=15)
    sc.cart(p.woo_cart("a1a1a1a1a1", ASHA, status="completed"))
    sc.later(days=3)

    assert sc.sent(ASHA) == []  # she bought: no "your cart is waiting" the next morning


def test_order_placed_when_the_reminder_was_blocked_is_not_attributed(sqlite_url, scenario, world):
    sc = scenario(sqlite_url, "woocommerce", journeys=LADDER)
    sc.cart(p.woo_cart("a1a1a1a1a1", ASHA, opt_in=False))  # the plugin's default: a captured cart is not consent
    sc.at(T0 + timedelta(hours=2))  # the first reminder was due at +30 min and was not sent
    sc.woo("order.created", p.woo_order(7308, ASHA, sc.now, cod=False, total="1299.00"))
    sc.later(days=3)

    assert sc.sent(ASHA) == []
    c = conversion(sc)
    assert (c["checkouts_abandoned"], c["checkouts_reminded"], c["checkouts_recovered"], c["recovered_revenue"]) == (1, 0, 0, "0")


# ---- opt-outs --------------------------------------------------------------------------------

def test_opted_out_contacts_get_nothing_from_any_journey(sqlite_url, scenario, world):
    sc = scenario(sqlite_url, "woocommerce", journeys={**COD, "order_confirmation": {},
                                                       "checkout_recovery": {"abandon_after_minutes": 30, "ladder_minutes": [0, 360]}})
    sc.say(RAVI, "STOP")  # before anything happened
    sc.cart(p.woo_cart("m3m3m3m3m3", MEERA))  # opted in on the cart, then stops marketing in WhatsApp itself
    sc.woo("order.created", p.woo_order(7310, KIRAN, sc.now))  # gets the COD question, then writes "Stop"
    sc.woo("order.created", p.woo_order(7311, ASHA, sc.now))  # stays subscribed
    sc.cart(p.woo_cart("d4d4d4d4d4", DEV))  # stays subscribed
    sc.work()
    assert sc.templates_to(KIRAN) == ["cod_confirm_v1"]

    # WooCommerce has no consent webhook: the consent signal is WhatsApp's own marketing preference
    sc.at(T0 + timedelta(minutes=10))
    sc.marketing_preference(MEERA, "stop")
    sc.at(T0 + timedelta(hours=1))
    sc.say(KIRAN, "Stop")
    sc.woo("order.created", p.woo_order(7312, RAVI, sc.now))  # COD
    sc.woo("order.created", p.woo_order(7313, RAVI, sc.now, cod=False))  # prepaid
    sc.cart(p.woo_cart("r5r5r5r5r5", RAVI))
    sc.cart(p.woo_cart("m6m6m6m6m6", MEERA))  # opts in again on a new cart
    sc.later(days=3)

    assert sc.sent(RAVI) == []
    assert sc.sent(MEERA) == []
    assert sc.templates_to(KIRAN) == ["cod_confirm_v1"]
    assert sc.templates_to(ASHA) == ["cod_confirm_v1", "cod_reminder_v1"]
    assert sc.templates_to(DEV) == ["cart_1_v1", "cart_2_v1"]
    assert sc.contact(RAVI)["contact"]["opted_out_at"] is not None
    assert sc.contact(MEERA)["consent"]["marketing"]["state"] == "revoked"


# ---- a duplicate storm -----------------------------------------------------------------------

def storm(sc, deliveries: list[Delivery], seed: int) -> None:
    copies = [d for d in deliveries for _ in range(5)]
    random.Random(seed).shuffle(copies)
    sc.post(*copies)


def test_duplicate_webhook_storm_sends_each_message_once(db_url, scenario, world):
    sc = scenario(db_url, "woocommerce", journeys={**COD, "order_confirmation": {}, "delivery": {"steps": ["shipped"]},
                                                   "checkout_recovery": {"abandon_after_minutes": 30, "ladder_minutes": [0, 360]}})
    orders = {7320: (ASHA, True), 7321: (RAVI, True), 7322: (MEERA, False), 7323: (KIRAN, False)}
    morning = []
    for oid, (phone, cod) in orders.items():
        body = p.woo_order(oid, phone, sc.now, cod=cod)
        morning += [sc.woo_delivery("order.created", body), sc.woo_delivery("order.updated", body)]
    morning += [sc.cart_delivery(p.woo_cart(session, phone)) for session, phone in (("d4d4d4d4d4", DEV), ("n7n7n7n7n7", NEHA))]
    storm(sc, morning, seed=1)
    sc.work()

    sc.at(T0 + timedelta(hours=1))
    replies = [sc.tap_delivery(ASHA, "cod_confirm", sc.last_to(ASHA, "cod_confirm_v1"))]
    for s in sc.sent():
        replies += [sc.whatsapp_delivery(p.wa_status(sc.phone_number_id, s.to.lstrip("+"), s.wamid, status, sc.now, s.callback))
                    for status in ("sent", "delivered", "read")]
    storm(sc, replies, seed=2)
    sc.work()

    sc.at(T0 + timedelta(hours=3))  # Meera's order ships
    storm(sc, [sc.woo_delivery("order.updated", p.woo_order(7322, MEERA, T0, cod=False, status="completed", modified=sc.now,
                                                            tracking=True))], seed=3)
    sc.later(days=2)

    assert sc.templates_to(ASHA) == ["cod_confirm_v1"]
    assert sc.templates_to(RAVI) == ["cod_confirm_v1", "cod_reminder_v1"]
    assert sc.templates_to(MEERA) == ["order_thanks_v1", "shipped_v1"]
    assert sc.templates_to(KIRAN) == ["order_thanks_v1"]
    assert sc.templates_to(DEV) == sc.templates_to(NEHA) == ["cart_1_v1", "cart_2_v1"]
    assert len({s.callback for s in sc.sent()}) == len(sc.sent()) == 10
    assert writes(world) == Counter([note(7320, "storeloop tags: cod-confirmed"), tags_meta(7320, "cod-confirmed"),
                                     note(7321, "storeloop tags: cod-unconfirmed"), tags_meta(7321, "cod-unconfirmed")])
