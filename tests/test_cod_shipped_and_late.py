"""COD confirmation once the order has shipped, and taps that come after the no-answer step.

Told end to end with the journey scenarios' harness (tests/scenarios): signed store and
WhatsApp webhooks in over HTTP, the real worker rounds on a virtual clock, and assertions on
what reached the customer's phone and the store's API (fake peers on 127.0.0.1).
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from decimal import Decimal
from typing import Any

import pytest

from adapters.woocommerce.normalize import normalize
from connector import events as ev
from connector.config import parse_settings
from connector.journeys.cod_confirmation import CodConfirmation, CodConfirmationConfig
from connector.journeys.engine import Facts, OrderFacts, Run, Send, Update
from tests.conftest import settings_dict
from tests.scenarios import payloads as p
from tests.scenarios.conftest import _world_server, scenario, sqlite_url, store, world  # noqa: F401  (the scenarios' fixtures)
from tests.scenarios.harness import T0, wa_id
from tests.scenarios.stores import SHOPIFY, WOOCOMMERCE, Store

ASHA = "+919876543210"
COD = {"reminder_hours": [6], "answer_window_hours": 24}


def status_puts(world) -> list[str]:
    """Every status WooCommerce was told to take (cancel included)."""
    return [c.body["status"] for c in world.woo_writes() if c.method == "PUT" and c.path == "" and "status" in (c.body or {})]


def notes(world) -> list[str]:
    return [c.body["note"] for c in world.woo_writes() if c.path == "/notes"]


def tagged(world, store: Store) -> list[str]:
    """Tags written to the order, in order."""
    if store.platform == "shopify":
        return [t for op in world.shopify_ops("tagsAdd") for t in op["tags"]]
    return [n.removeprefix("storeloop tags: ") for n in notes(world) if n.startswith("storeloop tags: ")]


def cancelled(world, store: Store) -> bool:
    if store.platform == "shopify":
        return bool(world.shopify_ops("orderCancel"))
    return "cancelled" in status_puts(world)


# ---- once the order has shipped, the COD run is over ------------------------------------------

def _on_hold_and_asked(sqlite_url, scenario, n: int) -> tuple[Any, dict[str, Any], Any]:
    """A WooCommerce store whose COD orders wait on hold until Confirm moves them to processing, and whose
    unanswered ones are cancelled; order ``n`` placed and asked. Returns the scenario, the order and the ask."""
    sc = scenario(sqlite_url, "woocommerce", journeys={"cod_confirmation": {
        **COD, "no_answer_action": "cancel", **WOOCOMMERCE.confirm_settings}})
    order = WOOCOMMERCE.awaiting_confirmation(n, ASHA, sc.now)
    WOOCOMMERCE.place(sc, order)
    sc.work()
    return sc, order, sc.last_to(ASHA, "cod_confirm_v1")


@pytest.mark.parametrize("status", ["completed", "shipped", "out-for-delivery"])
def test_a_shipped_woocommerce_order_gets_no_reminder_no_cancel_and_keeps_its_status(sqlite_url, scenario, world, status):
    sc, order, ask = _on_hold_and_asked(sqlite_url, scenario, 1)
    sc.later(hours=2)
    sc.woo("order.updated", {**p.woo_shipped(order, sc.now), "status": status})  # the merchant ships it (core or plugin status)
    sc.later(days=2)  # the reminder and the answer window go by
    assert sc.templates_to(ASHA) == ["cod_confirm_v1"]  # never asked to confirm a shipped order again
    assert status_puts(world) == []  # not cancelled for "no answer"

    sc.tap(ASHA, "cod_confirm", ask)  # she confirms days later
    sc.later(hours=1)
    assert status_puts(world) == []  # a completed order is never moved back to processing
    assert sc.report()["stages"]["qualification"]["metrics"]["no_answer"] == 0


@pytest.mark.parametrize("status", ["shipped", "delivered"])
def test_a_cancel_tap_after_a_plugin_shipping_status_goes_to_a_person(sqlite_url, scenario, world, status):
    sc = scenario(sqlite_url, "woocommerce", journeys={"cod_confirmation": {"reminder_hours": [], "answer_window_hours": 48}})
    order = WOOCOMMERCE.order(3, ASHA, sc.now)
    WOOCOMMERCE.place(sc, order)
    sc.work()
    ask = sc.last_to(ASHA, "cod_confirm_v1")
    sc.later(hours=2)
    sc.woo("order.updated", {**order, "status": status, "date_modified_gmt": p.gmt(sc.now)})
    sc.later(hours=2)
    sc.tap(ASHA, "cod_cancel", ask)
    sc.later(hours=1)
    assert world.woo_writes() == []  # nothing cancelled, noted or tagged
    [handoff] = sc.handoffs(status="open")
    assert "shipped" in handoff["reason"] and "cancel" in handoff["reason"]


def test_a_partly_shipped_shopify_order_ends_the_run_and_a_cancel_goes_to_a_person(sqlite_url, scenario, world):
    sc = scenario(sqlite_url, "shopify", journeys={"cod_confirmation": COD})
    order = SHOPIFY.order(4, ASHA, sc.now)
    SHOPIFY.place(sc, order)
    sc.work()
    ask = sc.last_to(ASHA, "cod_confirm_v1")
    sc.later(hours=2)
    partial = {**order, "fulfillment_status": "partial", "updated_at": p.iso(sc.now)}
    sc.shopify("fulfillments/create", p.shopify_fulfillment(order["id"] + 2000, order["id"], sc.now))
    sc.shopify("orders/updated", partial)  # one parcel of two is on its way
    sc.later(hours=12)
    assert sc.templates_to(ASHA) == ["cod_confirm_v1"]  # no reminder at 6 h
    sc.tap(ASHA, "cod_cancel", ask)
    sc.later(hours=1)
    assert world.shopify_ops("orderCancel") == [] and world.shopify_ops("tagsAdd") == []
    [handoff] = sc.handoffs(status="open")
    assert "shipped" in handoff["reason"]


def test_a_cancel_tap_whose_order_ships_before_the_cancel_is_made_goes_to_a_person(sqlite_url, scenario, world, store: Store):
    """She taps Cancel while the warehouse ships the order: both webhooks reach the worker in one round, her tap
    first (the order is still open: the cancel is queued), the shipment after. The cancel is not made on a shipped
    order, but she asked for it: a person hears, or the parcel goes out to a customer who will refuse it at the door."""
    sc = scenario(sqlite_url, store.platform, journeys={"cod_confirmation": COD})
    order = store.order(13, ASHA, sc.now)
    store.place(sc, order)
    sc.work()
    ask = sc.last_to(ASHA, "cod_confirm_v1")
    sc.later(hours=2)
    sc.post(sc.tap_delivery(ASHA, "cod_cancel", ask), *store.shipped_deliveries(sc, order))
    sc.later(hours=1)
    assert not cancelled(world, store)  # a shipped order's status is the store's
    [case] = sc.handoffs(status="open")
    assert case["journey"] == "cod_confirmation" and case["stage"] == "qualification"
    assert store.name(13) in case["reason"] and "cancel" in case["reason"] and "shipped" in case["reason"]
    sc.later(days=2)
    assert len(sc.handoffs()) == 1  # once


@pytest.mark.parametrize("gateways", [["Cash on Delivery (COD)", "shopify_payments"], ["shopify_payments"]],
                         ids=["cod_and_card", "card_only"])
def test_a_cod_order_paid_before_its_answer_is_neither_reminded_nor_cancelled_nor_flagged(sqlite_url, scenario, world, gateways):
    """The merchant sent Shopify's invoice for a pending COD order (Collect payment > Send invoice) and she paid it
    online before tapping anything: the order is prepaid now. No "please confirm your COD order" reminder, and at
    the answer deadline no "no answer" cancel of a paid order (Shopify would keep her money: no refund) and no flag
    for a call. Her Cancel tap after paying goes to a person (a cancel now needs a refund)."""
    sc = scenario(sqlite_url, "shopify", journeys={"cod_confirmation": {**COD, "no_answer_action": "cancel"}})
    order = SHOPIFY.order(14, ASHA, sc.now)
    SHOPIFY.place(sc, order)
    sc.work()
    sc.later(hours=2)
    paid = {**order, "financial_status": "paid", "payment_gateway_names": gateways, "updated_at": p.iso(sc.now)}
    sc.shopify("orders/paid", paid)
    sc.shopify("orders/updated", paid)
    sc.later(days=2)
    assert sc.templates_to(ASHA) == ["cod_confirm_v1"]  # no reminder at 6 h
    assert world.shopify_ops("orderCancel") == [] and world.shopify_ops("tagsAdd") == []
    metrics = sc.report()["stages"]["qualification"]["metrics"]
    assert (metrics["paid"], metrics["no_answer"], metrics["lost"]) == (1, 0, 0)  # prepaid now: not a lost COD order
    sc.tap(ASHA, "cod_cancel", sc.last_to(ASHA, "cod_confirm_v1"))  # she wants out after paying: a refund, a person's call
    sc.later(hours=1)
    assert world.shopify_ops("orderCancel") == []
    [case] = sc.handoffs(status="open")
    assert SHOPIFY.name(14) in case["reason"] and "after paying" in case["reason"]


def test_a_cancel_while_a_reminder_waits_for_its_retry_withdraws_the_reminder(sqlite_url, scenario, world):
    """WhatsApp was down when the 6-hour reminder fell due, so it waits for a retry; she taps Cancel meanwhile
    (and is asked why, the run staying open for her answer). "Please confirm" must not reach her after that."""
    sc = scenario(sqlite_url, "shopify", journeys={"cod_confirmation": {**COD, "cancel_reason_minutes": 60}})
    order = SHOPIFY.order(7, ASHA, sc.now)
    SHOPIFY.place(sc, order)
    sc.work()
    ask = sc.last_to(ASHA, "cod_confirm_v1")
    world.whatsapp_down = True
    sc.later(hours=6)  # the reminder's send fails: it waits for its retry
    world.whatsapp_down = False
    sc.tap(ASHA, "cod_cancel", ask)
    sc.later(hours=2)
    assert sc.templates_to(ASHA) == ["cod_confirm_v1"]
    assert cancelled(world, SHOPIFY)


def test_an_order_the_store_confirmed_by_phone_is_neither_reminded_nor_cancelled_for_no_answer(sqlite_url, scenario, world):
    """COD orders wait on hold; Confirm moves them to processing. The merchant phones her and moves the order to
    processing himself: no reminder, no "no answer" cancel of an order she confirmed; the report counts it apart.
    Her Cancel tap after that goes to a person."""
    sc, order, ask = _on_hold_and_asked(sqlite_url, scenario, 8)
    sc.later(hours=2)
    sc.woo("order.updated", {**order, "status": "processing", "date_modified_gmt": p.gmt(sc.now)})  # confirmed on the phone
    sc.later(days=2)
    assert sc.templates_to(ASHA) == ["cod_confirm_v1"]
    assert status_puts(world) == [] and world.woo_writes() == []
    metrics = sc.report()["stages"]["qualification"]["metrics"]
    assert (metrics["confirmed_by_store"], metrics["no_answer"], metrics["lost"]) == (1, 0, 0)
    sc.tap(ASHA, "cod_cancel", ask)
    sc.later(hours=1)
    assert status_puts(world) == []
    [case] = sc.handoffs(status="open")
    assert "after the store confirmed it" in case["reason"]


@pytest.mark.parametrize("delay", [0, 30], ids=["asked at once", "asked after a delay"])
def test_an_order_first_seen_pending_that_checkout_moves_to_processing_is_still_asked_reminded_and_cancelled(
        sqlite_url, scenario, world, delay):
    """WooCommerce's COD gateway moves a new order from pending to processing at checkout; a synchronous webhook
    shows it pending first. That move is the checkout's, not the store confirming the order on a call: she is
    asked (after the delay, too), reminded, and her silence gets the no-answer cancel; none of it counts as
    confirmed by the store."""
    sc = scenario(sqlite_url, "woocommerce", journeys={"cod_confirmation": {
        **COD, "delay_minutes": delay, "no_answer_action": "cancel", **WOOCOMMERCE.confirm_settings}})
    order = p.woo_order(WOOCOMMERCE.order_id(9), ASHA, sc.now, status="pending")
    WOOCOMMERCE.place(sc, order)
    sc.work()
    sc.later(seconds=2)
    sc.woo("order.updated", {**order, "status": "processing", "date_modified_gmt": p.gmt(sc.now), "date_modified": p.gmt(sc.now)})
    sc.later(minutes=delay + 1)
    assert sc.templates_to(ASHA) == ["cod_confirm_v1"]
    sc.later(hours=6)
    assert sc.templates_to(ASHA) == ["cod_confirm_v1", "cod_reminder_v1"]
    assert status_puts(world) == []
    sc.later(days=1)
    assert status_puts(world) == ["cancelled"]  # no answer by the deadline: cancelled, as configured
    metrics = sc.report()["stages"]["qualification"]["metrics"]
    assert (metrics["asked"], metrics["confirmed_by_store"], metrics["no_answer"]) == (1, 0, 1)


def test_an_order_the_merchant_binned_is_neither_reminded_nor_cancelled_out_of_the_bin(sqlite_url, scenario, world):
    """A spam COD order goes to the bin (order.deleted, whose body is only its id): no reminder, and no "no answer"
    cancel, whose status write would take it out of the bin."""
    sc = scenario(sqlite_url, "woocommerce", journeys={"cod_confirmation": {**COD, "no_answer_action": "cancel"}})
    order = WOOCOMMERCE.order(9, ASHA, sc.now)
    WOOCOMMERCE.place(sc, order)
    sc.work()
    sc.later(hours=1)
    sc.woo("order.deleted", {"id": order["id"]})
    sc.later(days=2)
    assert sc.templates_to(ASHA) == ["cod_confirm_v1"]
    assert world.woo_writes() == []


def test_an_unquoted_question_goes_to_the_journey_whose_message_she_got_not_to_a_silent_one(sqlite_url, scenario, world):
    """She got the COD ask; an hour later she left a cart without the marketing opt-in, so its reminder was not sent
    (though the cart's run moved last). "Can I change the address for my COD order?", quoting nothing, is about the
    COD order: its case is the COD journey's (the qualification desk's), not the cart's."""
    sc = scenario(sqlite_url, "shopify", journeys={"cod_confirmation": COD, "checkout_recovery": {
        "abandon_after_minutes": 30, "ladder_minutes": [0, 360, 1440]}})
    SHOPIFY.place(sc, SHOPIFY.order(10, ASHA, sc.now))
    sc.work()
    sc.later(hours=1)
    SHOPIFY.start_checkout(sc, "Q", ASHA, opt_in=False)
    sc.later(hours=1, step=timedelta(minutes=30))  # the cart's first reminder falls due and is not sent
    sc.say(ASHA, "Can I change the address for my COD order?")
    sc.later(minutes=5)
    assert sc.templates_to(ASHA) == ["cod_confirm_v1"]
    [case] = sc.handoffs(status="open")
    assert case["journey"] == "cod_confirmation" and case["stage"] == "qualification"


def test_an_unquoted_question_goes_to_the_message_she_got_last_whatever_order_her_read_receipts_came_in(sqlite_url, scenario,
                                                                                                           world):
    """Order A's parcel was announced on Monday, order B's COD ask went out on Tuesday. Meta's read receipts come in no
    set order: the ask's first, the shipped message's after. Her unquoted question is about the ask she got last."""
    sc = scenario(sqlite_url, "shopify", journeys={"cod_confirmation": COD, "delivery": {}})
    first = SHOPIFY.order(11, ASHA, sc.now, cod=False)
    SHOPIFY.place(sc, first)
    sc.shopify("fulfillments/create", p.shopify_fulfillment(first["id"] + 2000, first["id"], sc.now))
    sc.work()
    shipped = sc.last_to(ASHA, "shipped_v1")
    sc.later(days=1)
    SHOPIFY.place(sc, SHOPIFY.order(12, ASHA, sc.now))
    sc.work()
    ask = sc.last_to(ASHA, "cod_confirm_v1")
    sc.later(hours=1)
    for sent in (ask, shipped):  # she opens the chat: the receipts arrive newest message first
        sc.post(sc.whatsapp_delivery(p.wa_status(sc.phone_number_id, wa_id(ASHA), sent.wamid, "read", sc.now, sent.callback)))
        sc.later(minutes=1)
    sc.say(ASHA, "I want to change the address of my new order")
    sc.later(minutes=5)
    [case] = sc.handoffs(status="open")
    assert (case["journey"], case["stage"]) == ("cod_confirmation", "qualification")


# ---- taps after the no-answer step -----------------------------------------------------------

def _unanswered(sc, store: Store, n: int) -> Any:
    """Order ``n`` placed and asked (on WooCommerce on hold, until Confirm moves it on); the answer window goes by.
    Returns the ask she can still tap."""
    order = store.awaiting_confirmation(n, ASHA, sc.now)
    store.place(sc, order)
    sc.work()
    ask = sc.last_to(ASHA, "cod_confirm_v1")
    sc.at(T0 + timedelta(hours=25))
    return ask


def test_a_late_cancel_after_the_call_flag_cancels_the_order(sqlite_url, scenario, world, store: Store):
    sc = scenario(sqlite_url, store.platform, journeys={"cod_confirmation": {**COD, "no_answer_action": "tag"}})
    ask = _unanswered(sc, store, 5)
    assert tagged(world, store) == ["cod-unconfirmed"] and not cancelled(world, store)
    sc.later(days=1)
    sc.tap(ASHA, "cod_cancel", ask)  # the order has not shipped: she does not want it
    sc.later(hours=1)
    assert cancelled(world, store)
    assert sc.report()["stages"]["qualification"]["metrics"]["cancelled"] == 1


def test_a_late_confirm_is_honoured_when_nothing_was_done_for_no_answer(sqlite_url, scenario, world, store: Store):
    sc = scenario(sqlite_url, store.platform, journeys={"cod_confirmation": {**COD, "no_answer_action": "none", **store.confirm_settings}})
    ask = _unanswered(sc, store, 6)
    assert tagged(world, store) == []
    sc.tap(ASHA, "cod_confirm", ask)
    sc.later(hours=1)
    assert tagged(world, store) == ["cod-confirmed"]
    if store.platform == "woocommerce":
        assert status_puts(world) == ["processing"]
    assert sc.report()["stages"]["qualification"]["metrics"]["confirmed"] == 1


def test_a_late_confirm_after_the_call_flag_sets_the_confirm_status_and_says_the_flag_is_stale(sqlite_url, scenario, world):
    sc = scenario(sqlite_url, "woocommerce", journeys={"cod_confirmation": {**COD, "no_answer_action": "tag", "confirm_status": "processing"}})
    ask = _unanswered(sc, WOOCOMMERCE, 7)
    sc.tap(ASHA, "cod_confirm", ask)
    sc.later(hours=1)
    assert tagged(world, WOOCOMMERCE) == ["cod-unconfirmed", "cod-confirmed"]
    assert status_puts(world) == ["processing"]
    assert any("cod-unconfirmed" in n and "confirmed" in n for n in notes(world) if not n.startswith("storeloop tags:"))


def test_a_tap_made_before_the_deadline_wins_over_the_call_flag(sqlite_url, scenario, world):
    sc = scenario(sqlite_url, "woocommerce", journeys={"cod_confirmation": {**COD, "no_answer_action": "tag", "confirm_status": "processing"}})
    order = WOOCOMMERCE.awaiting_confirmation(8, ASHA, sc.now)
    WOOCOMMERCE.place(sc, order)
    sc.work()
    ask = sc.last_to(ASHA, "cod_confirm_v1")
    sc.at(T0 + timedelta(hours=23, minutes=50))
    tap = sc.tap_delivery(ASHA, "cod_confirm", ask)  # she taps 10 minutes before the deadline...
    sc.at(T0 + timedelta(hours=24))  # ...but the webhook reaches us after the no-answer step ran
    sc.post(tap)
    sc.later(hours=1)
    assert tagged(world, WOOCOMMERCE) == ["cod-unconfirmed", "cod-confirmed"]
    assert status_puts(world) == ["processing"]  # confirmed as if on time
    assert any("cod-unconfirmed" in n for n in notes(world) if not n.startswith("storeloop tags:"))  # the call flag is stale
    q = sc.report()["stages"]["qualification"]["metrics"]
    assert (q["confirmed"], q["no_answer"]) == (1, 0)


def test_a_tap_made_before_the_deadline_after_a_no_answer_cancel_goes_to_a_person(sqlite_url, scenario, world, store: Store):
    sc = scenario(sqlite_url, store.platform, journeys={"cod_confirmation": {**COD, "no_answer_action": "cancel", **store.confirm_settings}})
    order = store.awaiting_confirmation(9, ASHA, sc.now)
    store.place(sc, order)
    sc.work()
    ask = sc.last_to(ASHA, "cod_confirm_v1")
    sc.at(T0 + timedelta(hours=23, minutes=50))
    tap = sc.tap_delivery(ASHA, "cod_confirm", ask)
    sc.at(T0 + timedelta(hours=24))  # the deadline: the no-answer cancel is made at once
    assert cancelled(world, store)
    store.cancelled_echo(sc, order)
    sc.post(tap)
    sc.later(hours=1)
    [handoff] = sc.handoffs(status="open")  # a cancel cannot be undone by us: a person decides
    assert "confirm" in handoff["reason"] and "cancel" in handoff["reason"]
    assert tagged(world, store) == []  # a cancelled order is not tagged confirmed
    if store.platform == "woocommerce":
        assert status_puts(world) == ["cancelled"]  # nor moved to processing


@pytest.mark.parametrize("waiting", ["store_down", "not_dispatched"])
def test_a_confirm_made_in_time_withdraws_the_no_answer_cancel_still_waiting(db_url, scenario, world, store: Store, waiting):
    """She taps Confirm ten minutes before the deadline, and her tap's webhook reaches us only after the
    deadline queued the no-answer cancel, which is not made yet: the store's API was down as it was tried
    (it waits for a retry), or the write-back dispatcher had not run. That cancel is never made, and her
    order is confirmed as in time, with no person needed. PostgreSQL too: the cancel's row is locked while
    her tap is decided, so the write-back dispatcher cannot claim it in between."""
    sc = scenario(db_url, store.platform, journeys={"cod_confirmation": {**COD, "no_answer_action": "cancel", **store.confirm_settings}})
    order = store.awaiting_confirmation(10, ASHA, sc.now)
    store.place(sc, order)
    sc.work()
    ask = sc.last_to(ASHA, "cod_confirm_v1")
    sc.at(T0 + timedelta(hours=23, minutes=50))
    tap = sc.tap_delivery(ASHA, "cod_confirm", ask)
    if waiting == "store_down":
        world.store_down = True
        sc.at(T0 + timedelta(hours=24))  # the no-answer cancel is tried: 503, it waits for a retry
        world.store_down = False
    else:
        sc.clock.now = T0 + timedelta(hours=24)  # the deadline fires, the write-back dispatcher has not run yet
        assert sc.runtime.processor is not None and sc.runtime.processor.process_timers(limit=500)
    sc.post(tap)
    sc.later(days=2)
    assert not cancelled(world, store)
    assert tagged(world, store) == ["cod-confirmed"]
    if store.platform == "woocommerce":
        assert status_puts(world) == ["processing"]
    assert sc.handoffs() == []
    q = sc.report()["stages"]["qualification"]["metrics"]
    assert (q["confirmed"], q["no_answer"]) == (1, 0)


# ---- WooCommerce: cancelled orders, and the pay-now link -------------------------------------

def woo_store() -> Any:
    settings = parse_settings(settings_dict("sqlite://"), environ={})
    return next(s for s in settings.stores if s.key == "woo")


def test_a_woocommerce_order_created_already_cancelled_is_not_asked_to_confirm(sqlite_url, scenario, world):
    sc = scenario(sqlite_url, "woocommerce", journeys={"cod_confirmation": COD})
    sc.woo("order.created", p.woo_order(7310, ASHA, sc.now, status="cancelled"))
    sc.later(days=2)
    assert sc.templates_to(ASHA) == []
    [event] = normalize("order.created", p.woo_order(7310, ASHA, T0, status="cancelled"), woo_store())
    assert event.order.cancelled_at == T0


@pytest.mark.parametrize(("status", "payable"), [("on-hold", False), ("processing", False), ("pending", True), ("failed", True)])
def test_a_woocommerce_cod_order_has_a_pay_link_only_where_woocommerce_takes_payment(status, payable):
    [event] = normalize("order.created", p.woo_order(7311, ASHA, T0, status=status), woo_store())
    assert (event.order.payment_url is not None) == payable


def test_no_pay_now_offer_without_a_pay_link_and_the_run_says_why():
    at = datetime(2026, 11, 20, tzinfo=timezone.utc)
    order = OrderFacts("7312", "#7312", True, "pending", "unfulfilled", Decimal("1299"), "INR", False, None, None, None, at)
    facts = Facts(store_name="Bloom", contact_id=7, order=order, extra={"reply_journey": "cod_confirmation", "reply_subject": "order:7312"})
    asked = Run("cod_confirmation", "order:7312", "active", {"phase": "asked", "asked_at": at.isoformat(), "reminders": 0}, None, 7, at)
    tap = ev.ButtonReplied(phone_number_id="1", message_id="wamid.t", wa_id="919876543210", payload="cod_confirm", occurred_at=at)
    commands = CodConfirmation().decide(tap, asked, facts, CodConfirmationConfig(prepaid_offer=True), at)
    assert not any(isinstance(c, Send) and c.step == "prepaid_offer" for c in commands)
    assert any(isinstance(c, Update) and c.state.get("prepaid_offer_skipped") == "no_payment_link" for c in commands)


# ---- nobody could be asked ---------------------------------------------------------------------

def _undeliverable(sc, phone: str, sent) -> None:
    """WhatsApp took the message, then reports it could not deliver it (131026: not on WhatsApp, say)."""
    status = p.wa_status(sc.phone_number_id, wa_id(phone), sent.wamid, "failed", sc.now, sent.callback)
    status["entry"][0]["changes"][0]["value"]["statuses"][0]["errors"] = [
        {"code": 131026, "title": "Message undeliverable", "message": "Message undeliverable"}]
    sc.post(sc.whatsapp_delivery(status))


@pytest.mark.parametrize("action", ["cancel", "tag"])
def test_an_order_whose_customer_no_message_reached_is_flagged_for_a_call_never_cancelled(sqlite_url, scenario, world,
                                                                                         store: Store, action):
    """Her number is not on WhatsApp: the question comes back undeliverable (and the reminder is not
    tried). She could not answer, so the deadline does not cancel her order for "no answer": it is
    tagged for a call and a person hears of it; the report tells it apart from a customer who did not
    answer."""
    sc = scenario(sqlite_url, store.platform, journeys={"cod_confirmation": {**COD, "no_answer_action": action}})
    order = store.order(8, ASHA, sc.now)
    store.place(sc, order)
    sc.work()
    _undeliverable(sc, ASHA, sc.last_to(ASHA, "cod_confirm_v1"))
    sc.later(days=2)

    assert not cancelled(world, store)
    assert tagged(world, store) == ["cod-unconfirmed"]
    [handoff] = sc.handoffs(status="open")
    assert "none of our WhatsApp messages reached" in handoff["reason"] and store.name(8) in handoff["reason"]
    metrics = sc.report()["stages"]["qualification"]["metrics"]
    assert (metrics["no_answer"], metrics["not_reached"]) == (0, 1)
    # she could not answer: not one of the asked, nor lost, nor in the confirmation rate
    assert (metrics["cod_orders"], metrics["asked"], metrics["lost"], metrics["confirmation_rate"]) == (1, 0, 0, None)


def test_an_order_whose_customer_got_the_question_is_still_cancelled_for_no_answer(sqlite_url, scenario, world):
    """Only the reminder failed: the question reached her, so no answer is her answer."""
    sc = scenario(sqlite_url, "shopify", journeys={"cod_confirmation": {**COD, "no_answer_action": "cancel"}})
    order = SHOPIFY.order(9, ASHA, sc.now)
    SHOPIFY.place(sc, order)
    sc.work()
    sc.later(hours=6)
    _undeliverable(sc, ASHA, sc.last_to(ASHA, "cod_reminder_v1"))
    sc.later(days=2)
    assert cancelled(world, SHOPIFY)
    assert sc.handoffs(status="open") == []
