"""Faults a review of 2026-12-06's changes found, each told as the story that showed it (the scenario harness:
real app over HTTP, fake store and WhatsApp on 127.0.0.1, virtual clock).

1. a COD tap on a question whose send answer was lost is not guessed by phone: with another order's question
   the last she got, the tap used to cancel that other order;
2. a STOP by business-scoped id reaches the contact with her number, not one made from the id alone when she
   first wrote with her number hidden;
3. a WooCommerce order left at the payment step goes to the pay reminder (no consent yet); the cart the plugin
   posts minutes later, with the site's opt-in, starts no second ladder;
4. WooCommerce's usual second try (a new order created pending, then paid by an update) replaces the first
   order's pay reminder;
5. a Shopify checkout of a customer known by id only costs no lookup of her runs (the first-seen cart's look
   at her open runs is for WooCommerce's unpaid orders).
"""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import event, select

from connector.storage import models as m
from tests.conftest import sqlite_template  # noqa: F401
from tests.scenarios import payloads as p
from tests.scenarios.conftest import _world_server, scenario, sqlite_url, store, world  # noqa: F401
from tests.scenarios.stores import SHOPIFY, WOOCOMMERCE
from tests.scenarios.test_store_journeys import LADDER
from tests.scenarios.test_woo_recovery import BOTH, from_cart, paid, unpaid
from tests.scenarios.test_woo_recovery import store as woo_store
from tests.test_bsuid_and_send_errors import BSUID, bsuid_only_text
from tests.test_cod_shipped_and_late import cancelled, tagged
from tests.test_consent_and_spacing_fixes import _text

ASHA = "+919876543210"
COD = {"reminder_hours": [6], "answer_window_hours": 24}


def test_a_tap_on_a_question_whose_send_answer_was_lost_does_not_cancel_her_other_order(sqlite_url, scenario, world):
    sc = scenario(sqlite_url, "shopify", journeys={"cod_confirmation": {**COD, "no_answer_action": "cancel"}})
    world.whatsapp_answer_lost = True  # #5051's question went out, but its message id never came back
    SHOPIFY.place(sc, SHOPIFY.order(51, ASHA, sc.now))
    sc.work()
    world.whatsapp_answer_lost = False
    sc.later(minutes=2)
    SHOPIFY.place(sc, SHOPIFY.order(52, ASHA, sc.now))  # #5052's question: the message she got last
    sc.work()
    sc.later(minutes=20)
    sc.tap(ASHA, "cod_cancel", sc.sent(ASHA)[0])  # she cancels #5051
    sc.later(hours=1)
    assert world.shopify_ops("orderCancel") == []  # #5052 used to be cancelled here
    [case] = sc.handoffs(status="open")
    assert "#5051" in case["reason"] and "#5052" in case["reason"]  # a person asks her which order she meant


def test_one_open_question_whose_send_answer_was_lost_still_takes_her_tap(sqlite_url, scenario, world):
    sc = scenario(sqlite_url, "shopify", journeys={"cod_confirmation": {**COD, "no_answer_action": "cancel"}, "order_confirmation": {}})
    world.whatsapp_answer_lost = True
    SHOPIFY.place(sc, SHOPIFY.order(51, ASHA, sc.now))
    sc.work()
    world.whatsapp_answer_lost = False
    sc.later(minutes=2)
    SHOPIFY.place(sc, SHOPIFY.order(52, ASHA, sc.now, cod=False))  # a prepaid order: thanked, last to reach her
    sc.work()
    sc.later(minutes=20)
    sc.tap(ASHA, "cod_confirm", sc.sent(ASHA)[0])
    sc.later(days=2)
    assert tagged(world, SHOPIFY) == ["cod-confirmed"] and not cancelled(world, SHOPIFY)


def test_a_stop_by_business_scoped_id_reaches_the_contact_with_her_number(sqlite_url, scenario, world):
    sc = scenario(sqlite_url, "shopify", journeys=LADDER)
    bsuid_only_text(sc, "Do you ship to Pune?", "wamid.Q1", name="Asha")  # first message: number hidden (a contact from the id)
    sc.later(minutes=5)
    _text(sc, ASHA, "Ok thanks", sc.now, "wamid.HI", user_id=BSUID)  # later, her number and the id together
    sc.later(minutes=5)
    SHOPIFY.start_checkout(sc, "A", ASHA)
    sc.later(hours=1)
    assert sc.templates_to(ASHA) == ["cart_1_v1"]
    bsuid_only_text(sc, "STOP", "wamid.STOP", name="Asha")  # number hidden again
    sc.later(days=2)
    assert sc.templates_to(ASHA) == ["cart_1_v1"]  # no second or third reminder
    assert sc.contact(ASHA)["contact"]["opted_out_at"] is not None


def test_an_order_left_at_the_payment_step_and_its_cart_posted_with_an_opt_in_remind_her_once(sqlite_url, scenario, world):
    sc = woo_store(sqlite_url, scenario, BOTH)
    order = from_cart(unpaid(1, sc.now, status="pending"))  # no consent yet: the pay reminder takes it (the cart's products)
    sc.woo("order.created", order)
    sc.later(minutes=15)
    sc.cart(p.woo_cart(WOOCOMMERCE.SESSIONS["A"], ASHA))  # the plugin posts her cart abandoned, with the site's opt-in
    sc.later(hours=30, step=timedelta(minutes=10))
    assert sc.templates_to(ASHA) == ["pay_v1"]  # it used to add cart_1_v1 and cart_2_v1 for the same checkout


def test_a_second_try_created_pending_then_paid_replaces_the_first_orders_pay_reminder(sqlite_url, scenario, world):
    sc = woo_store(sqlite_url, scenario, {"payment_recovery": {}, "order_confirmation": {}})
    sc.woo("order.created", unpaid(1, sc.now))
    sc.later(minutes=20)
    second = unpaid(2, sc.now, status="pending")  # WooCommerce makes #7302 before the card is charged
    sc.woo("order.created", second)
    sc.later(minutes=2)
    sc.woo("order.updated", paid(second, sc.now))  # ...and she pays it
    sc.later(days=1)
    assert "pay_v1" not in sc.templates_to(ASHA)
    assert "order_thanks_v1" in sc.templates_to(ASHA)


def test_a_shopify_checkout_of_a_customer_known_by_id_only_reads_none_of_her_runs(sqlite_url, scenario, world):
    phones = ["+919876543210", "+919876543211", "+919876543212", "+919876543213"]
    sc = scenario(sqlite_url, "shopify", journeys=LADDER)
    for i, phone in enumerate(phones):
        SHOPIFY.place(sc, SHOPIFY.order(60 + i, phone, sc.now, cod=False))
    sc.work()
    sc.later(hours=1)
    lookups: list[str] = []

    def count(conn, cursor, statement, params, context, executemany):
        s = " ".join(statement.split()).lower()
        if "from journey_runs" in s and "contact_id in" in s:
            lookups.append(s)

    event.listen(sc.runtime.db.engine, "before_cursor_execute", count)
    for i, phone in enumerate(phones):
        c = p.shopify_checkout(f"tok{i}", phone, sc.now)
        c["phone"] = None
        for k in ("billing_address", "shipping_address"):
            if c.get(k):
                c[k]["phone"] = None
        c["customer"]["phone"] = None
        c["customer"]["default_address"]["phone"] = None
        sc.shopify("checkouts/create", c)
    sc.work()
    event.remove(sc.runtime.db.engine, "before_cursor_execute", count)
    assert lookups == []
    with sc.runtime.db.engine.connect() as conn:
        assert conn.execute(select(m.JourneyRun.subject).where(m.JourneyRun.subject.like("checkout:tok%"))).scalars().all()
