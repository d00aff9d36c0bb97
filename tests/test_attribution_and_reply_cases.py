"""What a store owner reads after a reminder that never reached the customer, and where a typed answer goes.

- Checkout recovery credits an order to a reminder only when the reminder went out (WhatsApp
  took it: sent, delivered or read) before the order: one held for the night and then dropped
  because the customer bought, or one Meta failed, is no reminder and recovers nothing.
- A customer who types an answer to a failed delivery continues the hand-off a person already
  has for it: no second case, no second notification.
"""

from __future__ import annotations

import asyncio
import json
from datetime import timedelta

import respx

from tests.helpers import running_app
from tests.scenarios import payloads as p
from tests.scenarios.conftest import _world_server, scenario, sqlite_url, store, world  # noqa: F401 (fixtures)
from tests.scenarios.harness import T0, wa_id
from tests.scenarios.stores import Store
from tests.test_handoffs import ADMIN, HOOK, NDR_TEMPLATES, failed_delivery, post_wa, store_settings

ASHA = "+919876543210"
RAVI = "+919812345678"
LADDER = {"checkout_recovery": {"abandon_after_minutes": 30, "ladder_minutes": [0, 360, 1440],
                                "discount_code": "BACK10", "discount_from_step": 3}}


def conversion(sc) -> dict:
    return sc.report()["stages"]["conversion"]["metrics"]


# ---- finding 1: attribution counts only reminders that went out ---------------------------------

def test_a_reminder_held_for_the_night_and_dropped_when_she_bought_recovers_nothing(sqlite_url, scenario, world, store: Store):
    sc = scenario(sqlite_url, store.platform, journeys=LADDER, policy={"quiet_hours": "21:00-09:00"})
    sc.at(store.local(20, 45))
    store.start_checkout(sc, "A", ASHA)
    sc.at(store.local(23, 0))  # abandoned at 21:15: the first reminder is queued for 09:00
    store.pay_checkout(sc, 7, ASHA, "A", total="1299.00")  # she buys at 23:00, before any reminder
    store.cart_recovered(sc, "A", ASHA)
    sc.later(days=3)

    assert sc.sent(ASHA) == []
    c = conversion(sc)
    assert (c["checkouts_abandoned"], c["checkouts_reminded"], c["checkouts_recovered"], c["recovered_revenue"]) == (1, 0, 0, {})


def test_only_a_reminder_whatsapp_took_before_the_order_makes_it_recovered(sqlite_url, scenario, world, store: Store):
    sc = scenario(sqlite_url, store.platform, journeys=LADDER)
    store.start_checkout(sc, "A", ASHA)
    store.start_checkout(sc, "R", RAVI)
    sc.at(T0 + timedelta(minutes=30))
    assert sc.templates_to(ASHA) == sc.templates_to(RAVI) == ["cart_1_v1"]
    # Meta could not deliver Asha's reminder (her status webhook says failed); Ravi's arrived
    failed = sc.last_to(ASHA, "cart_1_v1")
    sc.post(sc.whatsapp_delivery(p.wa_status(sc.phone_number_id, wa_id(ASHA), failed.wamid, "failed", sc.now)))
    sc.at(T0 + timedelta(hours=2))
    store.pay_checkout(sc, 5, ASHA, "A", total="1299.00")
    store.pay_checkout(sc, 6, RAVI, "R", total="799.00")
    store.cart_recovered(sc, "A", ASHA)
    store.cart_recovered(sc, "R", RAVI)
    sc.later(days=3)

    c = conversion(sc)
    assert (c["checkouts_abandoned"], c["checkouts_reminded"], c["checkouts_recovered"]) == (2, 1, 1)
    assert c["recovered_revenue"] == {"INR": "799.00"}  # Ravi's order only


def test_one_order_after_two_reminded_checkouts_is_recovered_once(sqlite_url, scenario, world, store: Store):
    """Asha leaves checkout A (reminded), then checkout R two hours later (reminded), then buys once, from R. The order
    credits one checkout: R's (Shopify: the order names it; WooCommerce: the cart reminded last). A ends without
    revenue and sends her nothing more."""
    sc = scenario(sqlite_url, store.platform, journeys=LADDER)
    store.start_checkout(sc, "A", ASHA)
    sc.at(T0 + timedelta(minutes=30))
    sc.at(T0 + timedelta(hours=2))
    store.start_checkout(sc, "R", ASHA)
    sc.at(T0 + timedelta(hours=2, minutes=30))
    assert sc.templates_to(ASHA) == ["cart_1_v1", "cart_1_v1"]
    sc.at(T0 + timedelta(hours=3))
    store.pay_checkout(sc, 1, ASHA, "R", total="1000.00")
    store.cart_recovered(sc, "R", ASHA)
    sc.later(days=3)

    assert sc.templates_to(ASHA) == ["cart_1_v1", "cart_1_v1"]  # A's second reminder (due at +6 h 30) never went
    c = conversion(sc)
    assert (c["checkouts_abandoned"], c["checkouts_reminded"], c["checkouts_recovered"]) == (2, 2, 1)
    assert c["recovered_revenue"] == {"INR": "1000.00"}


def test_a_recovered_order_the_store_cancels_later_leaves_the_recovered_revenue(sqlite_url, scenario, world, store: Store):
    """Asha buys after the first cart reminder, and the store cancels the order the next day: the week's report no
    longer counts it as recovered, nor its revenue."""
    sc = scenario(sqlite_url, store.platform, journeys=LADDER)
    store.start_checkout(sc, "A", ASHA)
    sc.at(T0 + timedelta(hours=2))
    order = store.order(1, ASHA, sc.now, cod=False, total="1299.00", **({"checkout": "A"} if store.platform == "shopify" else {}))
    store.place(sc, order)
    store.cart_recovered(sc, "A", ASHA)
    sc.later(hours=2)
    assert conversion(sc)["recovered_revenue"] == {"INR": "1299.00"}
    sc.later(days=1)
    store.cancelled_echo(sc, order)
    sc.later(hours=1)

    assert sc.templates_to(ASHA) == ["cart_1_v1"]
    c = conversion(sc)
    assert (c["checkouts_reminded"], c["checkouts_recovered"], c["recovered_revenue"]) == (1, 0, {})


def test_a_confirm_tap_on_a_cod_question_leaves_an_unrelated_cart_ladder_going(sqlite_url, scenario, world, store: Store):
    """Asha was asked to confirm a COD order; a day later she leaves a new cart and gets its first reminder. Then she
    taps Confirm on the COD question: that answers the COD journey, not the cart, so the cart's ladder goes on. (The
    store lets cart reminders follow an order confirmation at once, so only the journeys decide what goes out.)"""
    cod = {"cod_confirmation": {"reminder_hours": [], "answer_window_hours": 72, **store.confirm_settings}}
    sc = scenario(sqlite_url, store.platform, journeys={**cod, **LADDER}, policy={"cart_quiet_after_order_hours": 0})
    store.place(sc, store.awaiting_confirmation(1, ASHA, sc.now))
    sc.later(minutes=5)
    ask = sc.last_to(ASHA, "cod_confirm_v1")
    sc.later(hours=25)
    store.start_checkout(sc, "R", ASHA)
    sc.later(minutes=31)
    assert sc.templates_to(ASHA) == ["cod_confirm_v1", "cart_1_v1"]
    sc.tap(ASHA, "cod_confirm", ask)
    sc.later(days=2)

    assert sc.templates_to(ASHA) == ["cod_confirm_v1", "cart_1_v1", "cart_2_v1", "cart_3_v1"]
    assert sc.report()["stages"]["qualification"]["metrics"]["confirmed"] == 1


# ---- a checkout bought before it was abandoned was never abandoned ------------------------------

BUYERS = (("A", ASHA), ("R", RAVI), ("M", "+919900112233"))  # they pay five minutes after starting their checkout
LEAVERS = (("D", "+919811122233"), ("M2", "+919822233344"), ("N", "+919833344455"))  # they never come back


def test_checkouts_bought_before_they_were_abandoned_count_neither_as_abandoned_nor_in_the_lift(sqlite_url, scenario, world,
                                                                                               store: Store):
    """Six customers start a checkout; three pay five minutes later (before the 30 minutes that make a checkout
    abandoned), three leave. Half the contacts are in the holdout. The report counts three abandoned checkouts, and
    the lift compares only those three: the buyers, who would have bought in either group, no longer water it down."""
    journeys = {"checkout_recovery": {**LADDER["checkout_recovery"], "holdout_percent": 50}}
    sc = scenario(sqlite_url, store.platform, journeys=journeys)
    for key, phone in BUYERS + LEAVERS:
        store.start_checkout(sc, key, phone)
    sc.at(T0 + timedelta(minutes=5))
    for n, (key, phone) in enumerate(BUYERS, start=1):
        store.pay_checkout(sc, n, phone, key, total="899.00")
    for key, phone in BUYERS:
        store.cart_recovered(sc, key, phone)
    sc.later(days=2)

    assert all(sc.sent(phone) == [] for _, phone in BUYERS)
    report = sc.report()
    c = report["stages"]["conversion"]["metrics"]
    reminded = sum(1 for _, phone in LEAVERS if sc.sent(phone))  # the leavers outside the holdout
    assert (c["checkouts_abandoned"], c["checkouts_reminded"], c["checkouts_recovered"]) == (3, reminded, 0)
    lift = report["lift"]["checkout_recovery"]
    assert (lift["treated"], lift["control"]) == (reminded, 3 - reminded)
    assert lift["treated_converted"] == lift["control_converted"] == 0


# ---- finding 2: a typed answer continues the open hand-off ---------------------------------------

def test_a_typed_answer_to_a_failed_delivery_joins_its_hand_off_without_a_second_case_or_alert(db_url):
    settings = store_settings(db_url, {"delivery": {}}, NDR_TEMPLATES)
    with running_app(settings) as (client, runtime):
        ndr = failed_delivery(client, runtime, settings)
        # as people type: no quoted message; then one quoting the failed-delivery message
        post_wa(client, {"messages": [{"from": "919876543210", "id": "wamid.T1", "timestamp": "1795158000", "type": "text",
                                       "text": {"body": "deliver tomorrow please"}}]})
        post_wa(client, {"messages": [{"from": "919876543210", "id": "wamid.T2", "timestamp": "1795158060", "type": "text",
                                       "text": {"body": "after 6 pm is best"}, "context": {"from": "1", "id": ndr}}]})
        runtime.processor.drain()
        with respx.mock(assert_all_called=True) as slack:
            hook = slack.post(HOOK).respond(200, text="ok")
            while asyncio.run(runtime.notifier.run_once()):
                pass
        cases = client.get("/api/stores/shop-a/handoffs", headers=ADMIN).json()["items"]
        # once the desk closes it, the next message is a new conversation: a case of its own
        assert client.post(f"/api/stores/shop-a/handoffs/{cases[0]['id']}/close", headers=ADMIN, json={"by": "Ravi"}).status_code == 200
        post_wa(client, {"messages": [{"from": "919876543210", "id": "wamid.T3", "timestamp": "1795158120", "type": "text",
                                       "text": {"body": "thanks, got it!"}}]})
        runtime.processor.drain()
        reopened = client.get("/api/stores/shop-a/handoffs", params={"status": "open"}, headers=ADMIN).json()["items"]
    [h] = cases  # one case: the failed delivery's, still open
    assert (h["status"], h["journey"], h["subject"], h["owner"]) == ("open", "delivery", "order:820982911946154508", "Delivery desk")
    updates = [u["reason"] for u in h["context"]["updates"]]
    assert len(updates) == 2 and "deliver tomorrow please" in updates[0] and "after 6 pm is best" in updates[1]
    assert "deliver tomorrow please" in [m_["text"] for m_ in h["context"]["recent_messages"]]
    texts = [json.loads(c.request.content)["text"] for c in hook.calls]
    assert len(texts) == 1 and "delivery failed" in texts[0]  # the desk was told once, when the case opened
    [new] = reopened
    assert "thanks, got it!" in new["reason"] and new["id"] != h["id"]
