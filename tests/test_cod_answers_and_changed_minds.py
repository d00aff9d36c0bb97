"""COD confirmation when the customer does not simply tap once: she writes back, changes her mind,
opts out, or taps a button we cannot tie to one of her orders.

Told end to end with the journey scenarios' harness (tests/scenarios): signed store and WhatsApp
webhooks in over HTTP, the real worker rounds on a virtual clock, and assertions on what reached
her phone, the store's API and the hand-off webhook (fake peers on 127.0.0.1).
"""

from __future__ import annotations


import pytest

from tests.scenarios.conftest import _world_server, scenario, sqlite_url, store, world  # noqa: F401  (the scenarios' fixtures)
from tests.scenarios.stores import SHOPIFY, Store
from tests.test_cod_shipped_and_late import cancelled, tagged

ASHA = "+919876543210"
COD = {"reminder_hours": [6], "answer_window_hours": 24}


def told(world, stage: str = "qualification") -> list[str]:
    """The texts of the hand-off notifications a stage's owner got."""
    return [body["text"] for s, body in world.notifications if s == stage]


def qualification(sc) -> dict:
    return sc.report()["stages"]["qualification"]["metrics"]


# ---- she answers the question in words ----------------------------------------------------------

@pytest.mark.parametrize("quotes", [True, False], ids=["quoting the ask", "quoting nothing"])
def test_words_in_answer_to_the_question_go_to_a_person_and_stop_the_reminders_and_the_no_answer_cancel(
        sqlite_url, scenario, world, store: Store, quotes):
    """"Yes I confirm, please deliver after 6 pm" is an answer only a person can read: one case for the COD
    team, and no "please confirm" reminder and no cancel for "no answer" of an order whose customer wrote back."""
    sc = scenario(sqlite_url, store.platform, journeys={"cod_confirmation": {**COD, "no_answer_action": "cancel"}})
    store.place(sc, store.order(21, ASHA, sc.now))
    sc.work()
    ask = sc.last_to(ASHA, "cod_confirm_v1")
    sc.later(minutes=30)
    sc.say(ASHA, "Yes I confirm, please deliver after 6 pm", quoting=ask if quotes else None)
    sc.later(days=2)  # the reminder's time and the deadline go by

    assert sc.templates_to(ASHA) == ["cod_confirm_v1"]  # no reminder after she answered
    # never cancelled for "no answer"; nobody acted on her case by the deadline, so it is tagged for a call
    # (tests/test_cod_late_answers.py), and nothing else
    assert not cancelled(world, store) and tagged(world, store) == ["cod-unconfirmed"]
    [case] = sc.handoffs(status="open")
    assert case["journey"] == "cod_confirmation" and case["stage"] == "qualification"
    assert "please deliver after 6 pm" in case["reason"]
    assert len(told(world)) == 2  # the COD team heard of her words, then of the deadline passing with the case open
    q = qualification(sc)
    assert (q["asked"], q["with_person"], q["no_answer"], q["lost"], q["median_minutes_to_answer"]) == (1, 1, 0, 0, 30.0)


def test_a_tap_after_her_words_still_confirms(sqlite_url, scenario, world):
    sc = scenario(sqlite_url, "shopify", journeys={"cod_confirmation": {**COD, "no_answer_action": "cancel"}})
    SHOPIFY.place(sc, SHOPIFY.order(22, ASHA, sc.now))
    sc.work()
    ask = sc.last_to(ASHA, "cod_confirm_v1")
    sc.later(minutes=10)
    sc.say(ASHA, "Is it the blue one?", quoting=ask)
    sc.later(hours=1)
    sc.tap(ASHA, "cod_confirm", ask)
    sc.later(days=2)
    assert tagged(world, SHOPIFY) == ["cod-confirmed"] and not cancelled(world, SHOPIFY)
    q = qualification(sc)
    assert (q["confirmed"], q["with_person"], q["lost"]) == (1, 0, 0)


# ---- she taps the other button after her choice is locked ------------------------------------------

def _asked(sc, store: Store, n: int):
    store.place(sc, store.order(n, ASHA, sc.now))
    sc.work()
    return sc.last_to(ASHA, "cod_confirm_v1")


def test_cancel_after_confirm_keeps_the_order_and_tells_a_person_once(sqlite_url, scenario, world, store: Store):
    """She confirms, then a minute later taps Cancel on the same message; the parcel has not left. Nothing flips by
    itself (the order stays confirmed, nothing is cancelled), but the COD team hears exactly what she tapped, on which
    order, and that it is not yet fulfilled, so they can call before it ships. Tapping Cancel again adds nothing."""
    sc = scenario(sqlite_url, store.platform, journeys={"cod_confirmation": COD})
    ask = _asked(sc, store, 31)
    sc.tap(ASHA, "cod_confirm", ask)
    sc.later(minutes=1)
    sc.tap(ASHA, "cod_cancel", ask)
    sc.later(minutes=10)
    sc.tap(ASHA, "cod_cancel", ask)
    sc.later(hours=1)

    assert tagged(world, store) == ["cod-confirmed"] and not cancelled(world, store)
    [case] = sc.handoffs(status="open")
    assert case["reason"] == f"customer tapped Cancel on COD order {store.name(31)} after confirming it; not yet fulfilled"
    assert case["stage"] == "qualification"
    assert len(told(world)) == 1


def test_confirm_after_her_own_cancel_does_not_confirm_and_tells_a_person(sqlite_url, scenario, world):
    sc = scenario(sqlite_url, "shopify", journeys={"cod_confirmation": COD})
    ask = _asked(sc, SHOPIFY, 32)
    sc.tap(ASHA, "cod_cancel", ask)
    sc.later(minutes=2)
    sc.tap(ASHA, "cod_confirm", ask)
    sc.later(hours=1)
    assert cancelled(world, SHOPIFY) and tagged(world, SHOPIFY) == []  # the cancel stands; no confirm tag on a cancelled order
    [case] = sc.handoffs(status="open")
    assert f"tapped Confirm on COD order {SHOPIFY.name(32)} after cancelling it" in case["reason"]


def test_confirm_after_the_store_cancelled_tells_a_person(sqlite_url, scenario, world, store: Store):
    sc = scenario(sqlite_url, store.platform, journeys={"cod_confirmation": COD})
    order = store.order(33, ASHA, sc.now)
    store.place(sc, order)
    sc.work()
    ask = sc.last_to(ASHA, "cod_confirm_v1")
    sc.later(hours=1)
    store.cancelled_echo(sc, order)  # the merchant cancels it in the store admin
    sc.later(hours=1)
    sc.tap(ASHA, "cod_confirm", ask)
    sc.later(hours=1)
    assert tagged(world, store) == []
    [case] = sc.handoffs(status="open")
    assert f"tapped Confirm on COD order {store.name(33)} after the store cancelled it" in case["reason"]
    assert len(told(world)) == 1


# ---- she opts out after the question ---------------------------------------------------------------

@pytest.mark.parametrize("action", ["cancel", "tag"])
def test_stop_after_the_question_flags_the_order_for_a_call_and_never_cancels_it(sqlite_url, scenario, world, store: Store, action):
    """She answers the COD question with STOP. Nothing more reaches her (the reminder is held back), and at the deadline
    her silence is not taken for "no answer": the order is tagged for a call and the COD team hears why, even where
    unanswered orders are cancelled. The report counts her apart from those who did not answer."""
    sc = scenario(sqlite_url, store.platform, journeys={"cod_confirmation": {**COD, "no_answer_action": action}})
    ask = _asked(sc, store, 41)
    sc.later(minutes=10)
    sc.say(ASHA, "STOP", quoting=ask)
    sc.later(days=2)

    assert sc.templates_to(ASHA) == ["cod_confirm_v1"]
    assert not cancelled(world, store)
    assert tagged(world, store) == ["cod-unconfirmed"]
    [case] = sc.handoffs(status="open")
    assert case["reason"] == (f"COD order {store.name(41)} was not confirmed: the customer opted out of our WhatsApp messages (STOP) "
                              "after we asked; call them to confirm")
    assert len(told(world)) == 1
    q = qualification(sc)
    assert (q["asked"], q["opted_out"], q["no_answer"], q["not_reached"], q["lost"]) == (1, 1, 0, 0, 1)


# ---- a tap we cannot tie to one order ---------------------------------------------------------------

def test_a_tap_matching_no_message_with_two_orders_open_changes_neither_and_asks_a_person(sqlite_url, scenario, world, store: Store):
    """Two COD orders, both asked; WhatsApp took both questions but its answers were lost, so the connector knows
    neither message's id. Her Cancel tap quotes one of them, which the connector cannot name: cancelling both orders
    (as a tap reaching every open run did) would lose one she may want. Neither is changed, neither is reminded or
    cancelled for no answer, and the COD team gets one case naming both orders. Nobody closes it: at the answer
    deadline both orders are tagged for a call, never cancelled."""
    sc = scenario(sqlite_url, store.platform, journeys={"cod_confirmation": {**COD, "no_answer_action": "cancel"}})
    world.whatsapp_answer_lost = True
    store.place(sc, store.order(51, ASHA, sc.now))
    store.place(sc, store.order(52, ASHA, sc.now))
    sc.work()
    assert sc.templates_to(ASHA) == ["cod_confirm_v1", "cod_confirm_v1"]  # both reached her phone
    sc.later(minutes=20)
    sc.tap(ASHA, "cod_cancel", sc.sent(ASHA)[-1])
    sc.later(minutes=10)
    sc.tap(ASHA, "cod_cancel", sc.sent(ASHA)[-1])  # and again, a little impatient
    sc.later(hours=1)

    assert not cancelled(world, store) and tagged(world, store) == []
    [case] = sc.handoffs(status="open")
    assert "could not match" in case["reason"] and store.name(51) in case["reason"] and store.name(52) in case["reason"]
    assert len(told(world)) == 1
    sc.later(days=2)
    assert sc.templates_to(ASHA) == ["cod_confirm_v1", "cod_confirm_v1"]  # no "please confirm" after she answered
    assert not cancelled(world, store)  # nor a cancel for "no answer"
    assert tagged(world, store) == ["cod-unconfirmed", "cod-unconfirmed"]  # the case still open at the deadline: a call
    assert len(sc.handoffs(status="open")) == 1  # the one case heard it, for each order


def test_a_tap_matching_no_message_with_one_order_open_still_acts_on_it(sqlite_url, scenario, world):
    sc = scenario(sqlite_url, "shopify", journeys={"cod_confirmation": COD})
    world.whatsapp_answer_lost = True
    SHOPIFY.place(sc, SHOPIFY.order(53, ASHA, sc.now))
    sc.work()
    sc.later(minutes=20)
    sc.tap(ASHA, "cod_cancel", sc.last_to(ASHA, "cod_confirm_v1"))
    sc.later(hours=1)
    assert cancelled(world, SHOPIFY) and sc.handoffs(status="open") == []


def test_a_tap_matching_no_message_while_her_only_order_waits_to_be_asked_changes_nothing(sqlite_url, scenario, world, store: Store):
    """The store asks 30 minutes after an order. Her first order was asked (the send's answer lost, so the connector
    does not know that message), then cancelled by the store. Minutes after her second order she taps Cancel on the
    old question: it matches no message, and the only run it reaches has not asked anything yet. Cancelling the new
    order would act on a question she was never sent: nothing is written to the store, and the new order is asked
    at the delay's end, her answer to that question counting as usual."""
    sc = scenario(sqlite_url, store.platform, journeys={"cod_confirmation": {**COD, "delay_minutes": 30}})
    world.whatsapp_answer_lost = True
    first = store.order(54, ASHA, sc.now)
    store.place(sc, first)
    sc.work()
    sc.later(minutes=31)
    old_ask = sc.last_to(ASHA, "cod_confirm_v1")
    store.cancelled_echo(sc, first)  # the store cancels it itself
    world.whatsapp_answer_lost = False
    sc.later(hours=2)
    store.place(sc, store.order(55, ASHA, sc.now))
    sc.work()
    sc.later(minutes=5)
    sc.tap(ASHA, "cod_cancel", old_ask)
    sc.later(minutes=5)

    assert not cancelled(world, store) and tagged(world, store) == []
    assert sc.templates_to(ASHA) == ["cod_confirm_v1"]
    sc.later(minutes=25)  # the delay is over: the new order's question goes out
    assert sc.templates_to(ASHA) == ["cod_confirm_v1", "cod_confirm_v1"]
    sc.tap(ASHA, "cod_confirm", sc.last_to(ASHA, "cod_confirm_v1"))
    sc.later(minutes=5)
    assert not cancelled(world, store) and tagged(world, store) == ["cod-confirmed"]
    assert qualification(sc)["confirmed"] == 1
