"""Every built-in journey's ``decide`` as a table: (event, run state, now) -> commands.

A case names the situation (its pytest id), builds the event, the run as stored (or None),
the facts and the config, and lists the commands expected, each written short:
``start:<subject>``, ``send:<step>``, ``wake:+6h`` (from T0; ``wake:none`` clears the timer),
``add_tags:<tags>`` / ``cancel_order`` / ``add_note`` / ``set_status:<status>``,
``update(<keys>)``, ``handoff``, ``stage:<stage>``, ``finish:<outcome>``. ``state`` checks
values the updates write and ``says`` a phrase the hand-off reason must contain.

The end of the file drives the app for what decide cannot see alone: which contact an order
belongs to (email), opt-outs from outside the chat, and WooCommerce's unpaid orders.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from typing import Any

import pytest
from sqlalchemy import select

from connector import events as ev
from connector.config import parse_settings
from connector.journeys.checkout_recovery import CheckoutRecovery, CheckoutRecoveryConfig
from connector.journeys.cod_confirmation import CodConfirmation, CodConfirmationConfig
from connector.journeys.delivery_updates import DeliveryUpdates, DeliveryUpdatesConfig
from connector.journeys.engine import (
    Facts, Finish, Handoff, MoveStage, OpenCase, OrderFacts, Refresh, Rehome, Run, Send, Start, TimerFired, Update, Wake, Withdraw,
    WithdrawWriteBack, WriteBack,
)
from connector.journeys.order_confirmation import OrderConfirmation, OrderConfirmationConfig
from connector.journeys.payment_recovery import PaymentRecovery, PaymentRecoveryConfig
from connector.journeys.reorder import Reorder, ReorderConfig
from connector.outbox.dispatcher import Dispatcher
from connector.outbox.senders import DryRunSender
from connector.reorder.windows import refresh_windows, run_reorder_tick
from connector.storage import models as m
from tests.conftest import FIXTURES, PHONE_ID_A, SECRETS, settings_dict
from tests.helpers import dumps, load_json, meta_signature, running_app, shopify_headers, woo_headers

T0 = datetime(2026, 11, 20, 6, 30, tzinfo=timezone.utc)
H, D, MIN = timedelta(hours=1), timedelta(days=1), timedelta(minutes=1)


# ---- builders -------------------------------------------------------------------------------

def order(**kw: Any) -> ev.Order:
    """A Shopify-like COD order #1042 placed at T0 (override anything)."""
    base = dict(external_id="1042", name="#1042", created_at=T0, updated_at=T0, payment_state=ev.PaymentState.PENDING,
                is_cod=True, total=Decimal("1299"), currency="INR", customer=ev.Customer(first_name="Asha"), checkout_token="tok1",
                payment_url="https://pay.example/1042", line_items=(ev.LineItem(product_id="9001", title="Neem face wash"),))
    return ev.Order(**{**base, **kw})


def prepaid(**kw: Any) -> ev.Order:
    return order(is_cod=False, **kw)


def woo(status: str, **kw: Any) -> ev.Order:
    """A WooCommerce order #727 (no checkout token; platform_status is the order status)."""
    paid = status in ("processing", "completed")
    state = ev.PaymentState.PAID if paid else ev.PaymentState.FAILED if status == "failed" else ev.PaymentState.PENDING
    return order(external_id="727", name="#727", is_cod=False, checkout_token=None, platform_status=status, payment_state=state,
                 payment_url="https://bloom.example/checkout/order-pay/727/?pay_for_order=true&key=wc_order_k", **kw)


def facts(o: ev.Order | None = None, contact: int | None = 7, **extra: Any) -> Facts:
    of = None
    if o is not None:
        of = OrderFacts(o.external_id, o.name, o.is_cod, o.payment_state.value, o.fulfillment_state.value, o.total, o.currency,
                        o.cancelled_at is not None, None, o.payment_url, o.checkout_token, o.created_at,
                        channel=o.channel.value, delivery=o.delivery.value, payment_terms=o.payment_terms,
                        payment_due_at=o.payment_due_at)
    return Facts(store_name="Acme", contact_id=contact, first_name="Asha", order=of, extra=extra)


def routed(journey: str, subject: str = "order:1042") -> dict[str, str]:
    """What the runner puts in facts.extra for a reply it matched to a sent message."""
    return {"reply_journey": journey, "reply_subject": subject}


def run(journey: str, state: dict[str, Any], status: str = "active", subject: str = "order:1042") -> Run:
    return Run(journey, subject, status, state, None, 7, T0)


def tap(payload: str, at: datetime = T0) -> ev.ButtonReplied:
    return ev.ButtonReplied(phone_number_id="1", message_id=f"wamid.{payload}", wa_id="919876543210", payload=payload, occurred_at=at)


def text(body: str, at: datetime = T0) -> ev.MessageReceived:
    return ev.MessageReceived(phone_number_id="1", message_id="wamid.txt", wa_id="919876543210", message_type="text", text=body, occurred_at=at)


def shipment(status: str, parcel: str = "9") -> ev.FulfillmentUpdated:
    return ev.FulfillmentUpdated(fulfillment=ev.Fulfillment(external_id=parcel, order_external_id="1042", status="success",
                                                            shipment_status=ev.ShipmentStatus(status), created_at=T0, updated_at=T0))


def tracked(status: str, parcel: str = "9", numbers: tuple[str, ...] = ("AAA111",), urls: tuple[str, ...] | None = None,
            company: str | None = "Delhivery") -> ev.FulfillmentUpdated:
    """A fulfilment with tracking: ``numbers`` with ``urls`` (default: each number's link; () none)."""
    links = tuple(f"https://track.example/{n}" for n in numbers) if urls is None else urls
    return ev.FulfillmentUpdated(fulfillment=ev.Fulfillment(
        external_id=parcel, order_external_id="1042", status="success", shipment_status=ev.ShipmentStatus(status),
        tracking_company=company, tracking_number=numbers[0] if numbers else None, tracking_url=links[0] if links else None,
        tracking_numbers=numbers, tracking_urls=links, created_at=T0, updated_at=T0))


def digital(parcel: str = "10") -> ev.FulfillmentUpdated:
    """A fulfilment none of whose lines ships (Shopify fulfils a gift card at once): done, no carrier news, no tracking."""
    return ev.FulfillmentUpdated(fulfillment=ev.Fulfillment(external_id=parcel, order_external_id="1042", status="success",
                                                            shipment_status=ev.ShipmentStatus("none"), ships=False,
                                                            created_at=T0, updated_at=T0))


def pending_fulfilment(status: str) -> ev.FulfillmentUpdated:
    """A Shopify fulfilment not done yet (``status`` open or pending), with no carrier news."""
    return ev.FulfillmentUpdated(fulfillment=ev.Fulfillment(external_id="9", order_external_id="1042", status=status,
                                                            shipment_status=ev.ShipmentStatus("none"), created_at=T0, updated_at=T0))


def checkout(updated: datetime = T0, url: str | None = "https://shop.example/recover/tok1", completed: datetime | None = None,
             total: str = "899", product: str = "Neem face wash", phone: str | None = None, polled: bool = False) -> ev.CheckoutUpdated:
    """``polled``: read by Shopify's abandoned-checkout poll, which sees the customer's account phone, not the checkout's."""
    customer = ev.Customer(phone=ev.Phone(raw=phone, e164=phone) if phone else None)
    return ev.CheckoutUpdated(checkout=ev.Checkout(token="tok1", created_at=T0, updated_at=updated, completed_at=completed, recovery_url=url,
                                                   total=Decimal(total), currency="INR", customer=customer,
                                                   line_items=(ev.LineItem(title=product),), phone_on_checkout=not polled))


def opened(**kw: Any) -> ev.ReorderWindowOpened:
    base = dict(window_id=1, order_external_id="1001", product_key="p:9001", product_id="9001", title="Neem face wash", quantity=1,
                opens_at=T0, cycle_days=30, cycle_source="config", link="https://shop.example/cart/49001:1")
    return ev.ReorderWindowOpened(**{**base, **kw})


# ---- rendering ------------------------------------------------------------------------------

def _offset(at: datetime | None) -> str:
    if at is None:
        return "none"
    minutes = int((at - T0).total_seconds() // 60)
    if minutes % 1440 == 0:
        return f"+{minutes // 1440}d"
    return f"+{minutes // 60}h" if minutes % 60 == 0 else f"+{minutes}m"


def short(c: Any) -> str:
    match c:
        case Start():
            return f"start:{c.subject}"
        case Send():
            return f"send:{c.step}"
        case Wake():
            return f"wake:{_offset(c.at)}"
        case WriteBack(action="add_tags"):
            return f"add_tags:{','.join(c.args['tags'])}"
        case WriteBack(action="set_status"):
            return f"set_status:{c.args['status']}"
        case WriteBack():
            return c.action
        case Update():
            return f"update({','.join(sorted(c.state))})"
        case Finish():
            return f"finish:{c.outcome}"
        case Withdraw(only=()):
            return "withdraw"
        case Withdraw():
            return "withdraw:" + ",".join(f"{step}#{n}" for step, n in c.only)
        case WithdrawWriteBack():
            return f"withdraw_writeback:{c.key}:{c.reason}"
        case Rehome():
            return f"rehome:{c.contact_id}" + ("" if c.regroup else ",keeps_group")
        case Refresh():
            return f"refresh:{c.step}"
        case Handoff():
            return "handoff"
        case MoveStage():
            return f"stage:{c.stage}"
    raise AssertionError(f"unknown command {c!r}")


@dataclass
class Case:
    id: str
    event: Any
    run: Run | None
    facts: Facts
    config: Any
    expect: list[str]
    now: datetime = T0
    state: dict[str, Any] = field(default_factory=dict)  # values the updates must write
    says: str | None = None  # in the hand-off's reason
    sends: list[tuple[str, int, bool, str | None]] | None = None  # (step, occurrence, retry_missing_value, its tracking link)


def check(journey: Any, case: Case) -> None:
    commands = journey.decide(case.event, case.run, case.facts, case.config, case.now)
    assert [short(c) for c in commands] == case.expect
    written: dict[str, Any] = {}
    for c in commands:
        if isinstance(c, (Update, Start)):
            written.update(c.state)
    assert {k: written.get(k) for k in case.state} == case.state
    if case.says is not None:
        [handoff] = [c for c in commands if isinstance(c, Handoff)]
        assert case.says in handoff.reason
    if case.sends is not None:
        assert [(c.step, c.occurrence, c.retry_missing_value, c.context.get("fulfillment.tracking_url"))
                for c in commands if isinstance(c, Send)] == case.sends


def table(cases: list[Case]) -> Any:
    return pytest.mark.parametrize("case", cases, ids=[c.id for c in cases])


# ---- order confirmation ---------------------------------------------------------------------

OC = OrderConfirmationConfig()
TILL = prepaid(payment_state=ev.PaymentState.PAID, channel=ev.SalesChannel.POS, delivery=ev.Delivery.NONE)  # a Shopify POS sale
PICKUP = prepaid(payment_state=ev.PaymentState.PAID, delivery=ev.Delivery.PICKUP)  # bought online, collected at the store

ORDER_CONFIRMATION = [
    Case("prepaid order: one message, done", ev.OrderPlaced(order=prepaid()), None, facts(prepaid()), OC,
         ["start:order:1042", "send:sent", "finish:sent"]),
    Case("the same order again: nothing", ev.OrderPlaced(order=prepaid()), run("order_confirmation", {"outcome": "sent"}, "finished"),
         facts(prepaid()), OC, []),
    Case("cancelled before we heard of it: nothing", ev.OrderPlaced(order=prepaid(cancelled_at=T0)), None,
         facts(prepaid(cancelled_at=T0)), OC, []),
    Case("no phone, no contact: nothing", ev.OrderPlaced(order=prepaid()), None, facts(prepaid(), contact=None), OC, []),
    Case("WooCommerce order still pending: wait for the payment", ev.OrderPlaced(order=woo("pending")), None, facts(woo("pending")), OC,
         ["start:order:727", "finish:awaiting_payment"]),
    Case("WooCommerce order whose payment failed: wait too", ev.OrderPlaced(order=woo("failed")), None, facts(woo("failed")), OC,
         ["start:order:727", "finish:awaiting_payment"]),
    Case("WooCommerce order placed paid: one message", ev.OrderPlaced(order=woo("processing")), None, facts(woo("processing")), OC,
         ["start:order:727", "send:sent", "finish:sent"]),
    Case("the waiting order is paid: confirm it now", ev.OrderUpdated(order=woo("processing")),
         run("order_confirmation", {"outcome": "awaiting_payment"}, "finished", "order:727"), facts(woo("processing")), OC,
         ["send:sent", "finish:sent"], state={}),
    Case("the waiting order goes on hold (the customer chose a bank transfer instead): confirm it as one made so",
         ev.OrderUpdated(order=woo("on-hold")), run("order_confirmation", {"outcome": "awaiting_payment"}, "finished", "order:727"),
         facts(woo("on-hold")), OC, ["send:sent", "finish:sent"]),
    Case("the waiting order is updated but unpaid: nothing", ev.OrderUpdated(order=woo("pending")),
         run("order_confirmation", {"outcome": "awaiting_payment"}, "finished", "order:727"), facts(woo("pending")), OC, []),
    Case("the waiting order is cancelled: nothing", ev.OrderUpdated(order=woo("cancelled")),
         run("order_confirmation", {"outcome": "awaiting_payment"}, "finished", "order:727"),
         facts(woo("cancelled", cancelled_at=T0)), OC, []),
    Case("paid again after the confirmation: nothing", ev.OrderUpdated(order=woo("completed")),
         run("order_confirmation", {"outcome": "sent"}, "finished", "order:727"), facts(woo("completed")), OC, []),
    Case("an update of an order never seen placed: nothing", ev.OrderUpdated(order=woo("processing")), None,
         facts(woo("processing")), OC, []),
    Case("Shopify (after_payment off): a pending order is placed, confirm it", ev.OrderPlaced(order=prepaid(platform_status="pending")),
         None, facts(prepaid(platform_status="pending")), OrderConfirmationConfig(after_payment=False),
         ["start:order:1042", "send:sent", "finish:sent"]),
    Case("a sale at the store's till (POS): the customer has the receipt, nothing", ev.OrderPlaced(order=TILL), None, facts(TILL), OC, []),
    Case("a till sale, the store asks to thank those too: one message", ev.OrderPlaced(order=TILL), None, facts(TILL),
         OrderConfirmationConfig(include_pos=True), ["start:order:1042", "send:sent", "finish:sent"]),
    Case("an online order collected at the store: thanked like any other", ev.OrderPlaced(order=PICKUP), None, facts(PICKUP), OC,
         ["start:order:1042", "send:sent", "finish:sent"]),
    Case("cancelled after the thanks was queued: the thanks still waiting is withdrawn", ev.OrderCancelled(order=prepaid(cancelled_at=T0)),
         run("order_confirmation", {"outcome": "sent"}, "finished"), facts(prepaid(cancelled_at=T0)), OC,
         ["update(cancelled)", "withdraw"], state={"cancelled": True}),
    Case("the update echoing the cancel: withdrawn once only", ev.OrderUpdated(order=prepaid(cancelled_at=T0)),
         run("order_confirmation", {"outcome": "sent", "cancelled": True}, "finished"), facts(prepaid(cancelled_at=T0)), OC, []),
    Case("a cancel known only from the order update (orders/cancelled dropped): withdrawn", ev.OrderUpdated(order=prepaid(cancelled_at=T0)),
         run("order_confirmation", {"outcome": "sent"}, "finished"), facts(prepaid(cancelled_at=T0)), OC, ["update(cancelled)", "withdraw"]),
    Case("the order binned (WooCommerce order.deleted): withdrawn", ev.OrderDeleted(order_external_id="1042"),
         run("order_confirmation", {"outcome": "sent"}, "finished"), facts(), OC, ["update(cancelled)", "withdraw"]),
]


@table(ORDER_CONFIRMATION)
def test_order_confirmation(case: Case) -> None:
    check(OrderConfirmation(), case)


def test_order_confirmation_is_for_prepaid_orders_only() -> None:
    j = OrderConfirmation()
    assert j.subject(ev.OrderPlaced(order=prepaid()), facts(prepaid())) == "order:1042"
    assert j.subject(ev.OrderPlaced(order=order()), facts(order())) is None  # COD: cod_confirmation asks instead
    assert j.subject(ev.OrderUpdated(order=prepaid()), facts(prepaid())) == "order:1042"  # a waiting order is confirmed when paid
    assert j.subject(ev.OrderUpdated(order=order()), facts(order())) is None


# ---- COD confirmation -----------------------------------------------------------------------

COD = CodConfirmationConfig(reminder_hours=(6, 24), answer_window_hours=48)
COD_REASONS = CodConfirmationConfig(cancel_reasons={"cod_cancel_mistake": "ordered by mistake"}, cancel_reason_minutes=60)
COD_CANCEL_ACK = CodConfirmationConfig(reminder_hours=(6, 24), answer_window_hours=48, no_answer_action="cancel", send_acknowledgement=True)
ASKED = {"phase": "asked", "asked_at": T0.isoformat(), "reminders": 0, "order_name": "#1042"}
WAITING = {**ASKED, "choice": "cancelled", "phase": "cancel_reason", "awaiting_reply": True}
HERE = routed("cod_confirmation")

WOO_COD = CodConfirmationConfig(confirm_status="wc-processing", no_answer_action="cancel")
NOT_REACHED = {**ASKED, "reminders": 2, "choice": "not_reached", "outcome": "not_reached"}  # the deadline found none had reached her
# her words went to a person (case 31), who has not acted by the deadline (T0 + 48 h), or has
WITH_PERSON = {**ASKED, "reminders": 0, "phase": "with_person", "replied_at": (T0 + H).isoformat(), "case_id": 31}
FLAGGED = {**WITH_PERSON, "deadline": "flagged"}
CASE_31 = OpenCase(31, None, None)  # the contact's reply case her words joined (no journey's own)
# two COD runs of one customer a tap matching none of our messages reaches (the runner's ``reached_runs``)
OPEN_1042 = run("cod_confirmation", ASKED)
OPEN_2000 = run("cod_confirmation", {**ASKED, "order_name": "#2000"}, subject="order:2000")
NOT_ASKED_2000 = run("cod_confirmation", {"phase": "waiting", "order_name": "#2000"}, subject="order:2000")


def woo_cod(status: str) -> ev.Order:
    return order(external_id="727", name="#727", platform_status=status)


COD_CASES = [
    Case("the store binned the order: the run ends, what it has waiting is skipped", ev.OrderDeleted(order_external_id="1042"), run("cod_confirmation", ASKED), facts(),
         COD, ["wake:none", "finish:order_deleted"]),
    Case("a binned order with no run: nothing", ev.OrderDeleted(order_external_id="1042"), None, facts(), COD, []),
    Case("the store moved it to the confirm status itself (a call): no more asks, no no-answer cancel",
         ev.OrderUpdated(order=woo_cod("processing")), run("cod_confirmation", {**ASKED, "placed_status": "on-hold"}, subject="order:727"),
         facts(woo_cod("processing")), WOO_COD, ["update(choice,closed_by)", "wake:none", "stage:post_purchase", "finish:confirmed_by_store"],
         state={"choice": "confirmed_by_store"}),
    Case("placed in the confirm status already (COD orders come in processing): an update of it confirms nothing",
         ev.OrderUpdated(order=woo_cod("processing")), run("cod_confirmation", {**ASKED, "placed_status": "processing"}, subject="order:727"),
         facts(woo_cod("processing")), WOO_COD, []),
    Case("first seen pending, the COD gateway moves it to processing at checkout: no confirmation, the run goes on from there",
         ev.OrderUpdated(order=woo_cod("processing")), run("cod_confirmation", {**ASKED, "placed_status": "pending"}, subject="order:727"),
         facts(woo_cod("processing")), WOO_COD, ["update(placed_status)"], state={"placed_status": "processing"}),
    Case("first seen pending, the gateway puts it on hold (downloadable items): on hold is where it was placed",
         ev.OrderUpdated(order=woo_cod("on-hold")), run("cod_confirmation", {**ASKED, "placed_status": "pending"}, subject="order:727"),
         facts(woo_cod("on-hold")), WOO_COD, ["update(placed_status)"], state={"placed_status": "on-hold"}),
    Case("first seen pending, still waiting to ask when the gateway moves it: asked all the same",
         ev.OrderUpdated(order=woo_cod("processing")),
         run("cod_confirmation", {"phase": "waiting", "order_name": "#727", "placed_status": "pending"}, subject="order:727"),
         facts(woo_cod("processing")), WOO_COD, ["update(placed_status)"], state={"placed_status": "processing"}),
    Case("a run from before the placed status was kept: goes on", ev.OrderUpdated(order=woo_cod("processing")),
         run("cod_confirmation", ASKED, subject="order:727"), facts(woo_cod("processing")), WOO_COD, []),
    Case("placed: ask now, remind at 6 h", ev.OrderPlaced(order=order()), None, facts(order()), COD,
         ["start:order:1042", "send:ask", "wake:+6h"], state={"phase": "asked", "order_name": "#1042"}),
    Case("placed with a delay: wait first", ev.OrderPlaced(order=order()), None, facts(order()), CodConfirmationConfig(delay_minutes=30),
         ["start:order:1042", "wake:+30m"], state={"phase": "waiting"}),
    Case("a COD order taken at the store's till (POS): not asked", ev.OrderPlaced(order=order(channel=ev.SalesChannel.POS)), None,
         facts(order(channel=ev.SalesChannel.POS)), COD, []),
    Case("a till COD order, the store asks about those too: asked", ev.OrderPlaced(order=order(channel=ev.SalesChannel.POS)), None,
         facts(order(channel=ev.SalesChannel.POS)), CodConfirmationConfig(include_pos=True), ["start:order:1042", "send:ask", "wake:+6h"]),
    Case("placed but already cancelled: nothing", ev.OrderPlaced(order=order(cancelled_at=T0)), None, facts(order(cancelled_at=T0)), COD, []),
    Case("delay over: ask", TimerFired(T0), run("cod_confirmation", {"phase": "waiting"}), facts(), COD,
         ["update(asked_at,phase,reminders)", "send:ask", "wake:+6h"]),
    Case("delay over but cancelled meanwhile: close", TimerFired(T0), run("cod_confirmation", {"phase": "waiting"}),
         facts(order(cancelled_at=T0)), COD, ["wake:none", "finish:order_cancelled"]),
    Case("paid in full before she answered (the store's invoice): no reminder, no no-answer action",
         ev.OrderPaid(order=order(payment_state=ev.PaymentState.PAID)), run("cod_confirmation", ASKED),
         facts(order(payment_state=ev.PaymentState.PAID)), COD, ["update(choice,closed_by)", "wake:none", "stage:post_purchase", "finish:paid"],
         state={"choice": "paid"}),
    Case("the answer window ends on an order stored paid (its paid event named no COD gateway): no cancel",
         TimerFired(T0 + 48 * H), run("cod_confirmation", {**ASKED, "reminders": 2}), facts(prepaid(payment_state=ev.PaymentState.PAID)),
         CodConfirmationConfig(reminder_hours=(6, 24), answer_window_hours=48, no_answer_action="cancel"),
         ["update(choice,closed_by)", "wake:none", "stage:post_purchase", "finish:paid"], now=T0 + 48 * H),
    Case("Cancel after she paid: nothing cancelled, a person hears (a refund)", tap("cod_cancel"),
         run("cod_confirmation", {**ASKED, "choice": "paid"}, "finished"), facts(order(payment_state=ev.PaymentState.PAID), **routed("cod_confirmation")),
         COD, ["update(changed_mind,changed_mind_at)", "handoff"], says="after paying for it"),
    Case("6 h without an answer: first reminder", TimerFired(T0 + 6 * H), run("cod_confirmation", ASKED), facts(), COD,
         ["update(reminders)", "send:reminder_1", "wake:+1d"], now=T0 + 6 * H, state={"reminders": 1}),
    Case("24 h without an answer: the second reminder, then the answer window's end", TimerFired(T0 + 24 * H),
         run("cod_confirmation", {**ASKED, "reminders": 1}), facts(), COD, ["update(reminders)", "send:reminder_2", "wake:+2d"],
         now=T0 + 24 * H, state={"reminders": 2}),
    Case("window over: tag for a call", TimerFired(T0 + 48 * H), run("cod_confirmation", {**ASKED, "reminders": 2}), facts(), COD,
         ["update(choice)", "wake:none", "add_tags:cod-unconfirmed", "finish:no_answer"], now=T0 + 48 * H, state={"choice": "no_answer"}),
    Case("window over, configured to cancel", TimerFired(T0), run("cod_confirmation", ASKED), facts(),
         CodConfirmationConfig(reminder_hours=(), no_answer_action="cancel"), ["update(choice)", "wake:none", "cancel_order", "finish:no_answer"]),
    Case("window over, the question reached her (the runner says which messages went out): cancel", TimerFired(T0),
         run("cod_confirmation", ASKED), facts(reminders_sent=(T0,)),
         CodConfirmationConfig(reminder_hours=(), no_answer_action="cancel"), ["update(choice)", "wake:none", "cancel_order", "finish:no_answer"]),
    Case("window over and none of our messages reached her: never cancelled, tagged for a call, a person hears",
         TimerFired(T0), run("cod_confirmation", ASKED), facts(reminders_sent=()),
         CodConfirmationConfig(reminder_hours=(), no_answer_action="cancel"),
         ["update(choice)", "wake:none", "add_tags:cod-unconfirmed", "handoff", "finish:not_reached"], state={"choice": "not_reached"},
         says="none of our WhatsApp messages reached"),
    Case("none reached her, configured to do nothing: nothing", TimerFired(T0), run("cod_confirmation", ASKED), facts(reminders_sent=()),
         CodConfirmationConfig(reminder_hours=(), no_answer_action="none"), ["update(choice)", "wake:none", "finish:not_reached"]),
    Case("window over, she opted out (STOP) after the question reached her: never cancelled, flagged for a call, a person hears",
         TimerFired(T0 + 48 * H), run("cod_confirmation", {**ASKED, "reminders": 2}), facts(reminders_sent=(T0,), opted_out_at=T0 + H),
         CodConfirmationConfig(no_answer_action="cancel"),
         ["update(choice)", "wake:none", "add_tags:cod-unconfirmed", "handoff", "finish:opted_out"], now=T0 + 48 * H,
         state={"choice": "opted_out"}, says="COD order #1042 was not confirmed: the customer opted out"),
    Case("opted out after the question, the store only flags: flagged, a person hears", TimerFired(T0), run("cod_confirmation", ASKED),
         facts(reminders_sent=(T0,), opted_out_at=T0), CodConfirmationConfig(reminder_hours=()),
         ["update(choice)", "wake:none", "add_tags:cod-unconfirmed", "handoff", "finish:opted_out"]),
    Case("opted out after the question, configured to do nothing: nothing", TimerFired(T0), run("cod_confirmation", ASKED),
         facts(reminders_sent=(T0,), opted_out_at=T0), CodConfirmationConfig(reminder_hours=(), no_answer_action="none"),
         ["update(choice)", "wake:none", "finish:opted_out"]),
    Case("opted out before anything reached her: not reached", TimerFired(T0), run("cod_confirmation", ASKED),
         facts(reminders_sent=(), opted_out_at=T0 - D), CodConfirmationConfig(reminder_hours=(), no_answer_action="cancel"),
         ["update(choice)", "wake:none", "add_tags:cod-unconfirmed", "handoff", "finish:not_reached"]),
    Case("Confirm after the opted-out flag: confirmed, a note that the flag is stale, and the call case hears it",
         tap("cod_confirm", T0 + 3 * D),
         run("cod_confirmation", {**ASKED, "choice": "opted_out"}, "finished"), facts(**HERE), CodConfirmationConfig(no_answer_action="cancel"),
         ["update(answered_at,choice)", "wake:none", "add_tags:cod-confirmed", "add_note", "stage:post_purchase", "finish:confirmed",
          "handoff"], state={"choice": "confirmed_late"},
         says="customer tapped Confirm on WhatsApp: COD order #1042 confirmed (tagged cod-confirmed); no need to call them"),
    Case("Confirm after the opted-out flag, the store cancelled it since (after a call): a person, not 'for no answer'",
         tap("cod_confirm", T0 + 3 * D), run("cod_confirmation", {**ASKED, "choice": "opted_out"}, "finished"),
         facts(order(cancelled_at=T0 + D), **HERE), CodConfirmationConfig(no_answer_action="cancel"), ["update(answered_at,choice)", "handoff"],
         says="after the answer window, but it was cancelled: restore or re-create it"),
    Case("Cancel after the opted-out flag (never cancelled for it): cancelled, the call case hears it", tap("cod_cancel", T0 + 3 * D),
         run("cod_confirmation", {**ASKED, "choice": "opted_out"}, "finished"), facts(**HERE), CodConfirmationConfig(no_answer_action="cancel"),
         ["update(answered_at,choice)", "wake:none", "cancel_order", "finish:cancelled", "handoff"], state={"choice": "cancelled"},
         says="tapped Cancel on WhatsApp: COD order #1042 cancelled; no need to call them"),
    # ---- a tap after the deadline found that none of our messages had reached her (delivered late) ----
    Case("Confirm after 'not reached' (the question delivered late): confirmed, the flag noted stale, the call case hears it",
         tap("cod_confirm", T0 + 4 * D), run("cod_confirmation", NOT_REACHED, "finished"), facts(order(), **HERE), COD,
         ["update(answered_at,choice)", "wake:none", "add_tags:cod-confirmed", "add_note", "stage:post_purchase", "finish:confirmed",
          "handoff"], state={"choice": "confirmed_late"},
         says="customer tapped Confirm on WhatsApp: COD order #1042 confirmed (tagged cod-confirmed); no need to call them"),
    Case("the same Confirm again after that: nothing", tap("cod_confirm", T0 + 4 * D),
         run("cod_confirmation", {**NOT_REACHED, "choice": "confirmed_late"}, "finished"), facts(order(), **HERE), COD, []),
    Case("Cancel after 'not reached': cancelled as an in-time Cancel, the call case hears it", tap("cod_cancel", T0 + 4 * D),
         run("cod_confirmation", NOT_REACHED, "finished"), facts(order(), **HERE), COD,
         ["update(answered_at,choice)", "wake:none", "cancel_order", "finish:cancelled", "handoff"], state={"choice": "cancelled"},
         says="customer tapped Cancel on WhatsApp: COD order #1042 cancelled; no need to call them"),
    Case("Cancel after 'not reached', the store only tags cancels: tagged", tap("cod_cancel", T0 + 4 * D),
         run("cod_confirmation", NOT_REACHED, "finished"), facts(order(), **HERE), CodConfirmationConfig(cancel_action="tag"),
         ["update(answered_at,choice)", "wake:none", "add_tags:cod-cancelled-by-customer", "finish:cancelled", "handoff"],
         says="COD order #1042 tagged cod-cancelled-by-customer; no need to call them"),
    Case("Cancel after 'not reached', with reasons wanted: cancelled at once, no wait for a reason (the run is over)",
         tap("cod_cancel", T0 + 4 * D), run("cod_confirmation", NOT_REACHED, "finished"), facts(order(), **HERE), COD_REASONS,
         ["update(answered_at,choice)", "wake:none", "cancel_order", "finish:cancelled", "handoff"]),
    Case("Cancel again after that: nothing", tap("cod_cancel", T0 + 4 * D),
         run("cod_confirmation", {**NOT_REACHED, "choice": "cancelled"}, "finished"), facts(order(cancelled_at=T0 + 4 * D), **HERE), COD, []),
    Case("Confirm after her own late Cancel: the cancel stands, a person hears it", tap("cod_confirm", T0 + 4 * D),
         run("cod_confirmation", {**NOT_REACHED, "choice": "cancelled"}, "finished"), facts(order(cancelled_at=T0 + 4 * D), **HERE), COD,
         ["update(changed_mind,changed_mind_at)", "handoff"], says="tapped Confirm on COD order #1042 after cancelling it"),
    Case("Confirm after 'not reached', the store cancelled it since (no one could call her): a person, nothing written",
         tap("cod_confirm", T0 + 4 * D), run("cod_confirmation", NOT_REACHED, "finished"), facts(order(cancelled_at=T0 + 3 * D), **HERE),
         COD, ["update(answered_at,choice)", "handoff"], says="after the answer window, but it was cancelled: restore or re-create it"),
    Case("Cancel after 'not reached' of an order the store cancelled: nothing", tap("cod_cancel", T0 + 4 * D),
         run("cod_confirmation", NOT_REACHED, "finished"), facts(order(cancelled_at=T0 + 3 * D), **HERE), COD, []),
    Case("Cancel after 'not reached' of an order shipped since: a person (one case update), no cancel", tap("cod_cancel", T0 + 4 * D),
         run("cod_confirmation", NOT_REACHED, "finished"), facts(order(fulfillment_state=ev.FulfillmentState.FULFILLED), **HERE), COD,
         ["update(choice)", "wake:none", "handoff", "finish:cancel_after_fulfilment"], says="already shipped"),
    Case("Confirm after 'not reached' of an order shipped since: only tagged, the call case hears it", tap("cod_confirm", T0 + 4 * D),
         run("cod_confirmation", NOT_REACHED, "finished"), facts(order(fulfillment_state=ev.FulfillmentState.FULFILLED), **HERE), COD,
         ["update(answered_at,choice)", "add_tags:cod-confirmed", "handoff"], state={"choice": "confirmed_late"}),
    Case("Confirm after 'not reached', the store asked for no action (no flag, no case): confirmed, nothing to note",
         tap("cod_confirm", T0 + 4 * D), run("cod_confirmation", NOT_REACHED, "finished"), facts(order(), **HERE),
         CodConfirmationConfig(no_answer_action="none"),
         ["update(answered_at,choice)", "wake:none", "add_tags:cod-confirmed", "stage:post_purchase", "finish:confirmed"]),
    Case("Confirm: tag, status, next stage", tap("cod_confirm"), run("cod_confirmation", ASKED), facts(**HERE),
         CodConfirmationConfig(confirm_status="processing"),
         ["update(answered_at,choice)", "wake:none", "add_tags:cod-confirmed", "set_status:processing", "stage:post_purchase", "finish:confirmed"]),
    Case("Confirm with the pay-now offer", tap("cod_confirm"), run("cod_confirmation", ASKED), facts(order(), **HERE),
         CodConfirmationConfig(prepaid_offer=True, send_acknowledgement=True),
         ["update(answered_at,choice)", "wake:none", "add_tags:cod-confirmed", "send:confirmed", "update(prepaid_offered)", "send:prepaid_offer",
          "stage:post_purchase", "finish:confirmed"]),
    Case("Cancel: cancel in the store", tap("cod_cancel"), run("cod_confirmation", ASKED), facts(**HERE), COD,
         ["update(answered_at,choice)", "wake:none", "cancel_order", "finish:cancelled"], state={"choice": "cancelled"}),
    Case("Cancel, configured to tag only", tap("cod_cancel"), run("cod_confirmation", ASKED), facts(**HERE),
         CodConfirmationConfig(cancel_action="tag"), ["update(answered_at,choice)", "wake:none", "add_tags:cod-cancelled-by-customer",
                                                      "finish:cancelled"]),
    Case("Cancel after it shipped: a person, no cancel", tap("cod_cancel"), run("cod_confirmation", ASKED),
         facts(order(fulfillment_state=ev.FulfillmentState.FULFILLED), **HERE), COD,
         ["update(choice)", "wake:none", "handoff", "finish:cancel_after_fulfilment"], says="already shipped"),
    Case("Cancel with a reason button: cancel and a person", tap("cod_cancel_mistake"), run("cod_confirmation", ASKED), facts(**HERE),
         COD_REASONS, ["update(answered_at,cancel_reason,choice)", "wake:none", "cancel_order", "handoff", "finish:cancelled"],
         state={"cancel_reason": "ordered by mistake"}, says="cancelled COD order #1042: ordered by mistake"),
    Case("plain Cancel, reasons wanted: cancel, withdraw what waits (a reminder's retry), ask why, wait an hour", tap("cod_cancel"),
         run("cod_confirmation", ASKED), facts(**HERE), COD_REASONS,
         ["update(answered_at,awaiting_reply,choice,phase)", "wake:+1h", "cancel_order", "withdraw", "send:cancel_reason"],
         state={"choice": "cancelled", "phase": "cancel_reason", "awaiting_reply": True}),
    Case("the reason comes as a message: a person gets it", text("ordered twice by mistake"), run("cod_confirmation", WAITING), facts(),
         COD_REASONS, ["update(awaiting_reply,cancel_reason)", "wake:none", "handoff", "finish:cancelled"],
         state={"cancel_reason": "ordered twice by mistake"}, says="cancelled COD order #1042: ordered twice by mistake"),
    Case("the reason comes as a reason button", tap("cod_cancel_mistake"), run("cod_confirmation", WAITING), facts(**HERE), COD_REASONS,
         ["update(awaiting_reply,cancel_reason)", "wake:none", "handoff", "finish:cancelled"], says="ordered by mistake"),
    Case("STOP while we wait is no reason", text("STOP"), run("cod_confirmation", WAITING), facts(), COD_REASONS, []),
    Case("Confirm while we wait for her reason: the cancel stands, the wait ends, a person hears she changed her mind", tap("cod_confirm"),
         run("cod_confirmation", WAITING), facts(**HERE), COD_REASONS,
         ["update(awaiting_reply,changed_mind,changed_mind_at)", "wake:none", "finish:cancelled", "handoff"],
         state={"choice": None, "changed_mind": "confirm", "awaiting_reply": False}, says="tapped Confirm on COD order #1042 after cancelling it"),
    Case("our own cancel comes back as a webhook: keep waiting", ev.OrderCancelled(order=order(cancelled_at=T0)),
         run("cod_confirmation", WAITING), facts(order(cancelled_at=T0)), COD_REASONS, []),
    Case("no reason within the hour: done, nobody bothered", TimerFired(T0 + H), run("cod_confirmation", WAITING),
         facts(order(cancelled_at=T0)), COD_REASONS, ["update(awaiting_reply)", "finish:cancelled"], now=T0 + H),
    Case("the same tap again after Confirm: nothing", tap("cod_confirm"), run("cod_confirmation", {**ASKED, "choice": "confirmed"}, "finished"),
         facts(**HERE), COD, []),
    Case("Cancel after Confirm: the choice stands, nothing written, a person hears what she tapped", tap("cod_cancel"),
         run("cod_confirmation", {**ASKED, "choice": "confirmed"}, "finished"), facts(order(), **HERE), COD,
         ["update(changed_mind,changed_mind_at)", "handoff"], state={"changed_mind": "cancel"},
         says="customer tapped Cancel on COD order #1042 after confirming it; not yet fulfilled"),
    Case("Cancel with a reason after Confirm: the same", tap("cod_cancel_mistake"),
         run("cod_confirmation", {**ASKED, "choice": "confirmed"}, "finished"), facts(**HERE), COD_REASONS,
         ["update(changed_mind,changed_mind_at)", "handoff"], says="tapped Cancel on COD order #1042 after confirming it"),
    Case("Cancel after Confirm of an order that has shipped: a person, told so", tap("cod_cancel"),
         run("cod_confirmation", {**ASKED, "choice": "confirmed"}, "finished"),
         facts(order(fulfillment_state=ev.FulfillmentState.FULFILLED), **HERE), COD, ["update(changed_mind,changed_mind_at)", "handoff"],
         says="after confirming it; it has already shipped"),
    Case("Cancel again after she changed her mind once: the case has it", tap("cod_cancel"),
         run("cod_confirmation", {**ASKED, "choice": "confirmed", "changed_mind": "cancel"}, "handoff"), facts(order(), **HERE), COD, []),
    Case("Cancel after Confirm of an order the store cancelled since: nothing to tell", tap("cod_cancel"),
         run("cod_confirmation", {**ASKED, "choice": "confirmed"}, "finished"), facts(order(cancelled_at=T0), **HERE), COD, []),
    Case("Confirm after her own Cancel: the cancel stands, a person hears it", tap("cod_confirm"),
         run("cod_confirmation", {**ASKED, "choice": "cancelled"}, "finished"), facts(**HERE), CodConfirmationConfig(cancel_action="tag"),
         ["update(changed_mind,changed_mind_at)", "handoff"],
         says="tapped Confirm on COD order #1042 after cancelling it (her Cancel only tagged it cod-cancelled-by-customer)"),
    Case("Cancel after her own Cancel: nothing", tap("cod_cancel"), run("cod_confirmation", {**ASKED, "choice": "cancelled"}, "finished"),
         facts(**HERE), COD, []),
    Case("Confirm after she asked to cancel a shipped order: the person is told", tap("cod_confirm"),
         run("cod_confirmation", {**ASKED, "choice": "cancel_too_late"}, "handoff"), facts(**HERE), COD,
         ["update(changed_mind,changed_mind_at)", "handoff"], says="after asking to cancel it"),
    Case("Confirm after the store cancelled it (the run heard it): a person", tap("cod_confirm"),
         run("cod_confirmation", {**ASKED, "closed_by": "order.cancelled", "outcome": "order_cancelled"}, "finished"), facts(**HERE), COD,
         ["update(changed_mind,changed_mind_at)", "handoff"], says="tapped Confirm on COD order #1042 after the store cancelled it"),
    Case("Confirm days after the call flag: confirmed, and a note that the flag is stale", tap("cod_confirm", T0 + 3 * D),
         run("cod_confirmation", {**ASKED, "choice": "no_answer"}, "finished"), facts(**HERE), COD,
         ["update(answered_at,choice)", "wake:none", "add_tags:cod-confirmed", "add_note", "stage:post_purchase", "finish:confirmed"],
         state={"choice": "confirmed_late"}),
    # ---- a Confirm made before the deadline, heard after its no-answer cancel was queued (Meta delivered it late) ----
    Case("Confirm made in time, the no-answer cancel still waiting (the store was down): withdrawn, confirmed as in time, acknowledged",
         tap("cod_confirm", T0 + 47 * H), run("cod_confirmation", {**ASKED, "choice": "no_answer"}, "finished"),
         facts(order(), writebacks={"no_answer_cancel": "pending"}, **HERE), COD_CANCEL_ACK,
         ["withdraw_writeback:no_answer_cancel:answered_in_time", "update(answered_at,choice)", "wake:none", "add_tags:cod-confirmed",
          "send:confirmed", "stage:post_purchase", "finish:confirmed"], now=T0 + 48 * H + 5 * MIN, state={"choice": "confirmed"}),
    Case("Confirm made in time, the no-answer cancel being made (claimed by the dispatcher): not half-withdrawn, a person",
         tap("cod_confirm", T0 + 47 * H), run("cod_confirmation", {**ASKED, "choice": "no_answer"}, "finished"),
         facts(order(), writebacks={"no_answer_cancel": "sending"}, **HERE), COD_CANCEL_ACK, ["update(answered_at,choice)", "handoff"],
         now=T0 + 48 * H + 5 * MIN, says="before the answer deadline, but it was cancelled for no answer: restore or re-create it"),
    Case("Confirm made after the deadline, the no-answer cancel still waiting: the deadline's cancel stands, a person",
         tap("cod_confirm", T0 + 48 * H + MIN), run("cod_confirmation", {**ASKED, "choice": "no_answer"}, "finished"),
         facts(order(), writebacks={"no_answer_cancel": "pending"}, **HERE), COD_CANCEL_ACK, ["update(answered_at,choice)", "handoff"],
         now=T0 + 48 * H + 5 * MIN, says="after the answer window, but it was cancelled for no answer"),
    Case("a tap on another order's message: not this run", tap("cod_cancel"), run("cod_confirmation", ASKED),
         facts(**routed("cod_confirmation", "order:2000")), COD, []),
    Case("a tap matching none of our messages, two questions open: none changed, the first run asks a person which order",
         tap("cod_cancel"), run("cod_confirmation", ASKED), facts(reached_runs=(OPEN_1042, OPEN_2000)), COD,
         ["update(phase,replied_at,unmatched_tap)", "withdraw", "wake:+2d", "handoff"], state={"phase": "with_person"},
         says="tapped Cancel on a COD question we could not match to one of her open COD orders (#1042, #2000); none was changed"),
    Case("... and the other run: stops asking (its deadline stays), no second case; the first run's case is its case",
         tap("cod_cancel"), OPEN_2000, facts(reached_runs=(OPEN_1042, OPEN_2000)),
         COD, ["update(case_subject,phase,replied_at)", "withdraw", "wake:+2d"], state={"case_subject": "order:1042"}),
    Case("the same unmatched tap again: the case has it", tap("cod_cancel"),
         run("cod_confirmation", {**ASKED, "phase": "with_person", "unmatched_tap": "cod_cancel"}),
         facts(reached_runs=(OPEN_1042, OPEN_2000)), COD, []),
    Case("a tap matching no message, one question open (the other order not asked yet): that one acts", tap("cod_cancel"),
         run("cod_confirmation", ASKED), facts(reached_runs=(OPEN_1042, NOT_ASKED_2000)), COD,
         ["update(answered_at,choice)", "wake:none", "cancel_order", "finish:cancelled"]),
    Case("... and the order not asked yet: nothing", tap("cod_cancel"), NOT_ASKED_2000, facts(reached_runs=(OPEN_1042, NOT_ASKED_2000)),
         COD, []),
    Case("a tap matching no message, her only run still waiting to ask (the delay): nothing, it asks when the delay ends",
         tap("cod_cancel"), run("cod_confirmation", {"phase": "waiting", "order_name": "#1042"}), facts(), COD, []),
    Case("a message while we only asked: the reply rule's business", text("deliver after 6 pm?"), run("cod_confirmation", ASKED), facts(),
         COD_REASONS, []),
    Case("words answering the question went to a person: no more reminders, no no-answer action; the deadline stays, for the case",
         text("yes I confirm, deliver after 6"), run("cod_confirmation", ASKED), facts(handed_off=31, **HERE), COD,
         ["update(case_id,phase,replied_at)", "withdraw", "wake:+2d"],
         state={"phase": "with_person", "replied_at": T0.isoformat(), "case_id": 31}),
    Case("words answering another order's question: this run goes on", text("yes I confirm"), run("cod_confirmation", ASKED),
         facts(handed_off=True, reply_quoted=True, **routed("cod_confirmation", "order:2000")), COD, []),
    Case("words that went to no person (a keyword, free-text hand-offs off): the run goes on", text("STOP"), run("cod_confirmation", ASKED),
         facts(**HERE), COD, []),
    Case("a Confirm tap after her words: confirmed", tap("cod_confirm"), run("cod_confirmation", {**ASKED, "phase": "with_person"}),
         facts(**HERE), COD, ["update(answered_at,choice)", "wake:none", "add_tags:cod-confirmed", "stage:post_purchase", "finish:confirmed"]),
    Case("more words while a person has it: the case's business", text("hello?"), run("cod_confirmation", {**ASKED, "phase": "with_person"}),
         facts(handed_off=True, **HERE), COD, []),
    # ---- the answer deadline of an order whose customer answered in words ----
    Case("her words' case still open at the deadline: tagged for a call (never cancelled: she answered), the case hears it",
         TimerFired(T0 + 2 * D), run("cod_confirmation", WITH_PERSON), facts(order(), open_cases=(CASE_31,)),
         CodConfirmationConfig(no_answer_action="cancel"), ["update(case_id,deadline)", "wake:none", "add_tags:cod-unconfirmed", "handoff"],
         now=T0 + 2 * D, state={"deadline": "flagged", "case_id": 31},
         says="COD order #1042: the customer answered the question in words and no one has acted on it by the answer deadline; "
              "tagged cod-unconfirmed: call them to confirm"),
    Case("a person closed her case before the deadline: dealt with, nothing written", TimerFired(T0 + 2 * D),
         run("cod_confirmation", WITH_PERSON), facts(order(), open_cases=(OpenCase(40, "delivery", "order:77"),)), COD,
         ["update(deadline)"], now=T0 + 2 * D, state={"deadline": "case_closed"}),
    Case("her case closed, but she wrote again and a new case about this order is open: tagged, that case hears it",
         TimerFired(T0 + 2 * D), run("cod_confirmation", WITH_PERSON), facts(order(), open_cases=(OpenCase(52, "cod_confirmation", "order:1042"),)),
         COD, ["update(case_id,deadline)", "wake:none", "add_tags:cod-unconfirmed", "handoff"], now=T0 + 2 * D, state={"case_id": 52}),
    Case("the other order of a tap we could not match: its case is the first order's, still open: tagged", TimerFired(T0 + 2 * D),
         run("cod_confirmation", {**ASKED, "phase": "with_person", "case_subject": "order:1042"}, subject="order:2000"),
         facts(open_cases=(OpenCase(60, "cod_confirmation", "order:1042"),)), COD,
         ["update(case_id,deadline)", "wake:none", "add_tags:cod-unconfirmed", "handoff"], now=T0 + 2 * D, state={"case_id": 60}),
    Case("her case still open, the store asked for no action at the deadline: nothing", TimerFired(T0 + 2 * D),
         run("cod_confirmation", WITH_PERSON), facts(order(), open_cases=(CASE_31,)), CodConfirmationConfig(no_answer_action="none"), [],
         now=T0 + 2 * D),
    Case("woken before the deadline (a run from before the timer, migration 0016): set for the deadline", TimerFired(T0 + D),
         run("cod_confirmation", WITH_PERSON), facts(order(), open_cases=(CASE_31,)), COD, ["wake:+2d"], now=T0 + D),
    Case("the order cancelled by then (its event never reached the run): over, nothing written", TimerFired(T0 + 2 * D),
         run("cod_confirmation", WITH_PERSON), facts(order(cancelled_at=T0 + D), open_cases=(CASE_31,)), COD,
         ["wake:none", "finish:order_cancelled"], now=T0 + 2 * D),
    Case("the order shipped by then: over, nothing written", TimerFired(T0 + 2 * D), run("cod_confirmation", WITH_PERSON),
         facts(order(fulfillment_state=ev.FulfillmentState.PARTIAL), open_cases=(CASE_31,)), COD,
         ["update(closed_by)", "wake:none", "finish:fulfilled_unanswered"], now=T0 + 2 * D),
    Case("Confirm after the deadline flagged her words: confirmed late, the flag noted stale, her case hears it",
         tap("cod_confirm", T0 + 3 * D), run("cod_confirmation", FLAGGED), facts(order(), **HERE), COD,
         ["update(answered_at,choice)", "wake:none", "add_tags:cod-confirmed", "add_note", "stage:post_purchase", "finish:confirmed",
          "handoff"], state={"choice": "confirmed_late"}, says="COD order #1042 confirmed (tagged cod-confirmed); no need to call them"),
    Case("Cancel after the deadline flagged her words: cancelled, her case hears it", tap("cod_cancel", T0 + 3 * D),
         run("cod_confirmation", FLAGGED), facts(order(), **HERE), COD_REASONS,
         ["update(answered_at,choice)", "wake:none", "cancel_order", "finish:cancelled", "handoff"], says="cancelled; no need to call them"),
    Case("Confirm after the deadline flagged her words, the store cancelled it since: a person", tap("cod_confirm", T0 + 3 * D),
         run("cod_confirmation", FLAGGED), facts(order(cancelled_at=T0 + 2 * D), **HERE), COD,
         ["update(changed_mind,changed_mind_at)", "wake:none", "finish:order_cancelled", "handoff"], says="after the store cancelled it"),
    Case("shipped while asked: stop asking", ev.OrderFulfilled(order=order(fulfillment_state=ev.FulfillmentState.FULFILLED)),
         run("cod_confirmation", ASKED), facts(order(fulfillment_state=ev.FulfillmentState.FULFILLED)), COD,
         ["update(closed_by)", "wake:none", "finish:fulfilled_unanswered"]),
    Case("Cancel after it shipped unanswered: still a person", tap("cod_cancel"),
         run("cod_confirmation", {**ASKED, "closed_by": "order.fulfilled"}, "finished"), facts(**HERE), COD,
         ["update(choice)", "wake:none", "handoff", "finish:cancel_after_fulfilment"], state={"choice": "cancel_too_late"}, says="shipped"),
    Case("Confirm after it shipped unanswered: tagged late", tap("cod_confirm"),
         run("cod_confirmation", {**ASKED, "closed_by": "order.fulfilled"}, "finished"), facts(**HERE), COD,
         ["update(answered_at,choice)", "add_tags:cod-confirmed"], state={"choice": "confirmed_late"}),
    Case("cancelled in the store while asked: close", ev.OrderCancelled(order=order(cancelled_at=T0)), run("cod_confirmation", ASKED),
         facts(order(cancelled_at=T0)), COD, ["update(closed_by)", "wake:none", "finish:order_cancelled"],
         state={"closed_by": "order.cancelled"}),
    Case("an update shows it cancelled (its cancel event dropped as older): close", ev.OrderUpdated(order=order(cancelled_at=T0)),
         run("cod_confirmation", ASKED), facts(order(cancelled_at=T0)), COD, ["update(closed_by)", "wake:none", "finish:order_cancelled"],
         state={"closed_by": "order.cancelled"}),
    Case("Confirm on an order the store cancelled (the run never heard it): not confirmed, the run ends, a person hears",
         tap("cod_confirm"), run("cod_confirmation", ASKED), facts(order(cancelled_at=T0), **HERE),
         CodConfirmationConfig(prepaid_offer=True, send_acknowledgement=True),
         ["update(changed_mind,changed_mind_at)", "wake:none", "finish:order_cancelled", "handoff"], says="after the store cancelled it"),
    Case("Cancel on an order the store cancelled: nothing", tap("cod_cancel"), run("cod_confirmation", ASKED),
         facts(order(cancelled_at=T0), **HERE), COD, []),
]


@table(COD_CASES)
def test_cod_confirmation(case: Case) -> None:
    check(CodConfirmation(), case)


def test_a_no_answer_cancel_is_not_recorded_as_the_customers_own_cancel() -> None:
    """Shopify records the reason: CUSTOMER reads "Customer changed/cancelled order"; a customer who never
    answered did not. Her own Cancel tap is hers."""
    config = CodConfirmationConfig(reminder_hours=(), no_answer_action="cancel", cancel_action="cancel")
    silent = CodConfirmation().decide(TimerFired(T0), run("cod_confirmation", ASKED), facts(), config, T0)
    tapped = CodConfirmation().decide(tap("cod_cancel"), run("cod_confirmation", ASKED), facts(**HERE), config, T0)
    [no_answer] = [c for c in silent if isinstance(c, WriteBack) and c.action == "cancel_order"]
    [own] = [c for c in tapped if isinstance(c, WriteBack) and c.action == "cancel_order"]
    assert (no_answer.args["reason"], no_answer.key) == ("other", "no_answer_cancel")
    assert (own.args["reason"], own.key) == ("customer", "cancel")


# ---- delivery updates -----------------------------------------------------------------------

DELIVERY = DeliveryUpdatesConfig()
NDR = {"sent": ["failed", "shipped"], "last_status": "attempted_delivery"}
RETRIED = {**NDR, "sent": ["failed", "out_for_delivery", "shipped"], "ndr_answers": ["reschedule"], "last_status": "out_for_delivery"}
PAID = prepaid(payment_state=ev.PaymentState.PAID)
HERE_DELIVERY = routed("delivery")

DELIVERY_CASES = [
    Case("shipped: start and tell", shipment("in_transit"), None, facts(PAID), DELIVERY,
         ["start:order:1042", "update(last_status,parcels,sent)", "send:shipped"], state={"parcels": {"9": "in_transit"}}),
    Case("a pickup order marked picked up (a fulfilment, no carrier news): no 'shipped'", shipment("none"), None, facts(PICKUP),
         DELIVERY, []),
    Case("a pickup order's fulfilment with carrier-like news: still nothing", shipment("delivered"), None, facts(PICKUP), DELIVERY, []),
    Case("a till sale fulfilled at once: no 'shipped'", shipment("none"), None, facts(TILL), DELIVERY, []),
    Case("nothing to deliver (a gift card): no 'shipped'", shipment("none"), None,
         facts(prepaid(payment_state=ev.PaymentState.PAID, delivery=ev.Delivery.NONE)), DELIVERY, []),
    Case("a gift card fulfilled at once on an order that ships a box too: no run, no 'shipped'", digital(), None, facts(PAID),
         DELIVERY, []),
    Case("a gift card fulfilled after the box shipped: 'delivered' does not wait for it", digital(),
         run("delivery", {"sent": ["shipped"], "parcels": {"9": "in_transit"}}), facts(PAID), DELIVERY, []),
    Case("the box arrived while a run kept a gift card's fulfilment among its parcels: dropped, 'delivered' told", digital(),
         run("delivery", {"sent": ["shipped"], "parcels": {"9": "delivered", "10": "none"}}), facts(PAID), DELIVERY,
         ["update(parcels)", "withdraw", "update(sent)", "send:delivered", "finish:delivered"],
         state={"parcels": {"9": "delivered"}, "sent": ["delivered", "shipped"]}),
    Case("a till sale shipped to the customer: told like any parcel", shipment("in_transit"), None,
         facts(prepaid(payment_state=ev.PaymentState.PAID, channel=ev.SalesChannel.POS)), DELIVERY,
         ["start:order:1042", "update(last_status,parcels,sent)", "send:shipped"]),
    Case("shipped again: nothing", shipment("in_transit"), run("delivery", {"sent": ["shipped"], "last_status": "in_transit"}), facts(PAID),
         DELIVERY, []),
    Case("out for delivery (what still waits, held for the night, is out of date: withdrawn first)", shipment("out_for_delivery"),
         run("delivery", {"sent": ["shipped"]}), facts(PAID), DELIVERY,
         ["withdraw", "update(last_status,parcels,sent)", "send:out_for_delivery"], state={"sent": ["out_for_delivery", "shipped"]}),
    Case("out for delivery twice: once", shipment("out_for_delivery"),
         run("delivery", {"sent": ["out_for_delivery", "shipped"], "parcels": {"9": "out_for_delivery"}}), facts(PAID), DELIVERY, []),
    Case("a late 'shipped' after out for delivery: nothing said, the parcel's news kept", shipment("in_transit"),
         run("delivery", {"sent": ["out_for_delivery", "shipped"], "parcels": {"9": "out_for_delivery"}}), facts(PAID), DELIVERY,
         ["update(last_status,parcels)"], state={"parcels": {"9": "in_transit"}}),
    Case("delivered: told, and the run ends (its only parcel has arrived)", shipment("delivered"),
         run("delivery", {"sent": ["out_for_delivery", "shipped"], "parcels": {"9": "out_for_delivery"}}), facts(PAID), DELIVERY,
         ["withdraw", "update(last_status,parcels,sent)", "send:delivered", "finish:delivered"]),
    Case("two parcels, one delivered: kept, 'delivered' waits for the other", shipment("delivered"),
         run("delivery", {"sent": ["out_for_delivery", "shipped"], "parcels": {"9": "out_for_delivery", "10": "in_transit"}}), facts(PAID),
         DELIVERY, ["update(last_status,parcels)"], state={"parcels": {"9": "delivered", "10": "in_transit"}}),
    Case("two parcels, the other one delivered too: 'delivered' now, and the run ends", shipment("delivered", "10"),
         run("delivery", {"sent": ["out_for_delivery", "shipped"], "parcels": {"9": "delivered", "10": "out_for_delivery"}}),
         facts(PAID), DELIVERY, ["withdraw", "update(last_status,parcels,sent)", "send:delivered", "finish:delivered"]),
    Case("every parcel heard of delivered, but the order is only partly fulfilled: 'delivered' waits", shipment("delivered"),
         run("delivery", {"sent": ["shipped"], "parcels": {"9": "in_transit"}}),
         facts(prepaid(payment_state=ev.PaymentState.PAID, fulfillment_state=ev.FulfillmentState.PARTIAL)), DELIVERY,
         ["update(last_status,parcels)"]),
    Case("two parcels, the other delivered too: nothing more to say, the run ends", shipment("delivered", "10"),
         run("delivery", {"sent": ["delivered", "out_for_delivery", "shipped"], "parcels": {"9": "delivered", "10": "in_transit"}}),
         facts(PAID), DELIVERY, ["update(last_status,parcels)", "finish:delivered"]),
    Case("delivered after a failed delivery a person handles: told, the run stays theirs (replies find the open case)",
         shipment("delivered"), run("delivery", {"sent": ["failed", "shipped"], "parcels": {"9": "out_for_delivery"}}, "handoff"),
         facts(PAID), DELIVERY, ["withdraw", "update(last_status,parcels,sent)", "send:delivered", "handoff"],
         says="#1042 was delivered after the failed attempt: no call needed"),
    Case("delivered after the failed attempt, another parcel still on its way: the case hears it", shipment("delivered"),
         run("delivery", {"sent": ["failed", "shipped"], "parcels": {"9": "out_for_delivery", "10": "in_transit"}, "ndr_parcels": ["9"]},
             "handoff"), facts(PAID), DELIVERY, ["update(last_status,parcels)", "handoff"], says="delivered after the failed attempt"),
    Case("another parcel than the one that failed is delivered: the case hears nothing", shipment("delivered", "10"),
         run("delivery", {"sent": ["failed", "shipped"], "parcels": {"9": "attempted_delivery", "10": "in_transit"}, "ndr_parcels": ["9"]},
             "handoff"), facts(PAID), DELIVERY, ["update(last_status,parcels)"]),
    Case("an ended run hears of a parcel it did not know, which fails: ask and hand off", shipment("attempted_delivery", "10"),
         run("delivery", {"sent": ["delivered", "shipped"], "parcels": {"9": "delivered"}}, "finished"), facts(PAID), DELIVERY,
         ["update(last_status,ndr_parcels,parcels,sent)", "send:failed", "handoff"], state={"parcels": {"9": "delivered", "10": "attempted_delivery"}}),
    Case("news of an ended run's parcel again: nothing", shipment("delivered"),
         run("delivery", {"sent": ["delivered", "shipped"], "parcels": {"9": "delivered"}}, "finished"), facts(PAID), DELIVERY, []),
    Case("out for delivery not wanted by this store", shipment("out_for_delivery"), run("delivery", {"sent": ["shipped"]}), facts(PAID),
         DeliveryUpdatesConfig(steps=("shipped", "delivered")), []),
    Case("failed delivery: ask and hand off", shipment("attempted_delivery"), run("delivery", {"sent": ["shipped"]}), facts(PAID), DELIVERY,
         ["update(last_status,ndr_parcels,parcels,sent)", "send:failed", "handoff"], says="delivery failed (attempted_delivery)"),
    Case("failed delivery, no hand-off configured", shipment("attempted_delivery"), run("delivery", {"sent": ["shipped"]}), facts(PAID),
         DeliveryUpdatesConfig(handoff_on_failure=False), ["update(last_status,ndr_parcels,parcels,sent)", "send:failed"]),
    Case("cancelled order: no updates", shipment("in_transit"), None, facts(prepaid(cancelled_at=T0)), DELIVERY, []),
    Case("the order cancelled with an update still waiting: withdrawn, and the run ends", ev.OrderCancelled(order=prepaid(cancelled_at=T0)),
         run("delivery", {"sent": ["shipped"], "parcels": {"9": "in_transit"}}), facts(prepaid(cancelled_at=T0)), DELIVERY,
         ["update(cancelled)", "finish:order_cancelled"]),
    Case("the order cancelled while a person handles a failed delivery: withdrawn, the run stays theirs",
         ev.OrderCancelled(order=prepaid(cancelled_at=T0)), run("delivery", NDR, "handoff"), facts(prepaid(cancelled_at=T0)), DELIVERY,
         ["update(cancelled)", "withdraw"]),
    Case("the order binned: withdrawn", ev.OrderDeleted(order_external_id="1042"),
         run("delivery", {"sent": ["shipped"], "parcels": {"9": "in_transit"}}), facts(), DELIVERY, ["update(cancelled)", "finish:order_cancelled"]),
    Case("a cancel before anything shipped: nothing", ev.OrderCancelled(order=prepaid(cancelled_at=T0)), None,
         facts(prepaid(cancelled_at=T0)), DELIVERY, []),
    Case("a fulfilment still open (a fulfilment service packing): not shipped yet", pending_fulfilment("open"), None, facts(PAID), DELIVERY, []),
    Case("a fulfilment pending: not shipped yet", pending_fulfilment("pending"), None, facts(PAID), DELIVERY, []),
    Case("NDR answer: reschedule -> run, note, hand-off", tap("ndr_reschedule"), run("delivery", NDR, "handoff"), facts(PAID, **HERE_DELIVERY),
         DELIVERY, ["update(ndr_answered_at,ndr_answers,ndr_choice)", "add_note", "handoff"],
         state={"ndr_choice": "reschedule", "ndr_answers": ["reschedule"]}, says="reschedule the failed delivery of #1042"),
    Case("NDR answer: new address", tap("ndr_update_address"), run("delivery", NDR, "handoff"), facts(PAID, **HERE_DELIVERY), DELIVERY,
         ["update(ndr_answered_at,ndr_answers,ndr_choice)", "add_note", "handoff"], says="update the address"),
    Case("NDR answer: cancel goes to a person only", tap("ndr_cancel"), run("delivery", {**NDR, "ndr_answers": ["reschedule"]}, "handoff"),
         facts(PAID, **HERE_DELIVERY), DELIVERY, ["update(ndr_answered_at,ndr_answers,ndr_choice)", "handoff"],
         state={"ndr_choice": "cancel", "ndr_answers": ["reschedule", "cancel"]}, says="no automatic cancel"),
    Case("the same answer twice: once", tap("ndr_reschedule"), run("delivery", {**NDR, "ndr_answers": ["reschedule"]}, "handoff"),
         facts(PAID, **HERE_DELIVERY), DELIVERY, []),
    Case("acknowledged when configured", tap("ndr_reschedule"), run("delivery", NDR, "handoff"), facts(PAID, **HERE_DELIVERY),
         DeliveryUpdatesConfig(acknowledge_answers=True, note_answers=False),
         ["update(ndr_answered_at,ndr_answers,ndr_choice)", "handoff", "send:ndr_reschedule"]),
    Case("no hand-off configured: the note only", tap("ndr_update_address"), run("delivery", NDR),
         facts(PAID, **HERE_DELIVERY), DeliveryUpdatesConfig(handoff_on_failure=False), ["update(ndr_answered_at,ndr_answers,ndr_choice)", "add_note"]),
    Case("no hand-off configured: a cancel still reaches a person", tap("ndr_cancel"), run("delivery", NDR),
         facts(PAID, **HERE_DELIVERY), DeliveryUpdatesConfig(handoff_on_failure=False), ["update(ndr_answered_at,ndr_answers,ndr_choice)", "handoff"]),
    Case("a tap before any failed delivery: nothing", tap("ndr_reschedule"), run("delivery", {"sent": ["shipped"]}), facts(PAID, **HERE_DELIVERY),
         DELIVERY, []),
    Case("the same failure reported again: once", shipment("attempted_delivery"), run("delivery", NDR, "handoff"),
         facts(PAID), DELIVERY, []),
    Case("out for delivery again after a failure: remembered, not told twice", shipment("out_for_delivery"),
         run("delivery", {**RETRIED, "last_status": "attempted_delivery"}, "handoff"), facts(PAID), DELIVERY,
         ["update(last_status,parcels)", "withdraw:failed#1"],  # her question, if still held for the night, is moot now
         state={"last_status": "out_for_delivery"}),
    Case("it fails again after going out again: ask again (a message of its own) and tell a person", shipment("attempted_delivery"),
         run("delivery", RETRIED, "handoff"), facts(PAID), DELIVERY,
         ["update(failed_attempts,last_status,ndr_answers,ndr_parcels,parcels)", "send:failed", "handoff"],
         state={"failed_attempts": 2, "ndr_answers": [], "last_status": "attempted_delivery"}, says="delivery failed again (attempt 2"),
    Case("two parcels: the first one's failure reported again after the second moved on: nothing", shipment("attempted_delivery", "9"),
         run("delivery", {**NDR, "parcels": {"9": "attempted_delivery", "10": "in_transit"}, "last_status": "in_transit"}, "handoff"), facts(PAID),
         DELIVERY, []),
    Case("two parcels: the second one fails too: ask about it", shipment("attempted_delivery", "10"),
         run("delivery", {**NDR, "parcels": {"9": "attempted_delivery", "10": "in_transit"}, "last_status": "in_transit"}, "handoff"),
         facts(PAID), DELIVERY, ["update(failed_attempts,last_status,ndr_answers,ndr_parcels,parcels)", "send:failed", "handoff"],
         state={"parcels": {"9": "attempted_delivery", "10": "attempted_delivery"}}),
    Case("after the second failure the customer may ask to reschedule again", tap("ndr_reschedule"),
         run("delivery", {**RETRIED, "failed_attempts": 2, "ndr_answers": [], "last_status": "attempted_delivery"}, "handoff"),
         facts(PAID, **HERE_DELIVERY), DELIVERY, ["update(ndr_answered_at,ndr_answers,ndr_choice)", "add_note", "handoff"],
         state={"ndr_answers": ["reschedule"]}),
    # Shopify's `failure` is a tracking failure ("something went wrong when pulling tracking information ...
    # the tracking number was invalid or the shipment was canceled"), not a failed delivery attempt
    Case("tracking failed: a person checks with the courier, the customer is asked nothing", shipment("failure"),
         run("delivery", {"sent": ["shipped"], "parcels": {"9": "in_transit"}}), facts(PAID), DELIVERY,
         ["update(last_status,parcels,tracking_failed)", "handoff"], state={"parcels": {"9": "failure"}, "tracking_failed": ["9"]},
         says="tracking failed for #1042"),
    Case("tracking failed as the first news: a run for the person, no message", shipment("failure"), None, facts(PAID), DELIVERY,
         ["start:order:1042", "update(last_status,parcels,tracking_failed)", "handoff"], state={"sent": []}, says="the customer was not told"),
    Case("tracking failed again: once", shipment("failure"),
         run("delivery", {"sent": ["shipped"], "parcels": {"9": "failure"}, "tracking_failed": ["9"]}, "handoff"), facts(PAID), DELIVERY, []),
    Case("tracking failed, no hand-off configured: kept as the parcel's news, nothing else", shipment("failure"),
         run("delivery", {"sent": ["shipped"], "parcels": {"9": "in_transit"}}), facts(PAID),
         DeliveryUpdatesConfig(handoff_on_tracking_failure=False), ["update(last_status,parcels,tracking_failed)"]),
    Case("a failed delivery after the tracking failed: asked about", shipment("attempted_delivery"),
         run("delivery", {"sent": ["shipped"], "parcels": {"9": "failure"}, "tracking_failed": ["9"]}, "handoff"), facts(PAID), DELIVERY,
         ["update(last_status,ndr_parcels,parcels,sent)", "send:failed", "handoff"]),
    Case("a failed delivery asked about again after the tracking failed: a new attempt", shipment("attempted_delivery"),
         run("delivery", {**NDR, "parcels": {"9": "failure"}, "tracking_failed": ["9"]}, "handoff"), facts(PAID), DELIVERY,
         ["update(failed_attempts,last_status,ndr_answers,ndr_parcels,parcels)", "send:failed", "handoff"]),
    Case("a failed delivery stored as 'failure' before it meant a tracking failure, reported again: once", shipment("attempted_delivery"),
         run("delivery", {"sent": ["failed", "shipped"], "parcels": {"9": "failure"}}, "handoff"), facts(PAID), DELIVERY, []),
    Case("picked up at the pickup point: delivered, and the run ends", shipment("picked_up"),
         run("delivery", {"sent": ["shipped"], "parcels": {"9": "ready_for_pickup"}}), facts(PAID), DELIVERY,
         ["withdraw", "update(last_status,parcels,sent)", "send:delivered", "finish:delivered"]),
    Case("ready for pickup, step not listed: nothing", shipment("ready_for_pickup"),
         run("delivery", {"sent": ["shipped"], "parcels": {"9": "in_transit"}}), facts(PAID), DELIVERY, []),
    Case("ready for pickup, step listed: told", shipment("ready_for_pickup"),
         run("delivery", {"sent": ["shipped"], "parcels": {"9": "in_transit"}}), facts(PAID),
         DeliveryUpdatesConfig(steps=("shipped", "ready_for_pickup", "delivered", "failed")),
         ["withdraw", "update(last_status,parcels,sent)", "send:ready_for_pickup"]),
    Case("picked up by the carrier: shipped", shipment("carrier_picked_up"), None, facts(PAID), DELIVERY,
         ["start:order:1042", "update(last_status,parcels,sent)", "send:shipped"]),
    Case("delayed as the first news: it has shipped", shipment("delayed"), None, facts(PAID), DELIVERY,
         ["start:order:1042", "update(last_status,parcels,sent)", "send:shipped"]),
    # tracking told: each parcel's numbers and links are kept, so another parcel, a correction, or a link added later is told
    Case("shipped with tracking: the parcel's number and link kept", tracked("in_transit"), None, facts(PAID), DELIVERY,
         ["start:order:1042", "update(last_status,parcels,sent,tracking)", "send:shipped"],
         state={"tracking": {"9": {"told": {"AAA111": "https://track.example/AAA111"}, "company": "Delhivery", "n": 1}}},
         sends=[("shipped", 1, False, None)]),  # its values are the event's fulfilment's (the runner's facts)
    Case("the link added to the number told (its template was skipped without it): that message is sent again, once",
         tracked("none", numbers=("XYZ999",), urls=("https://courier.example/XYZ999",)),
         run("delivery", {"sent": ["shipped"], "parcels": {"9": "none"},
                          "tracking": {"9": {"told": {"XYZ999": None}, "company": "Other", "n": 1}}}), facts(PAID), DELIVERY,
         ["update(tracking)", "send:shipped"], sends=[("shipped", 1, True, "https://courier.example/XYZ999")]),
    Case("the courier's name added later: the message is tried again the same way", tracked("in_transit", company="Delhivery"),
         run("delivery", {"sent": ["shipped"], "parcels": {"9": "in_transit"},
                          "tracking": {"9": {"told": {"AAA111": "https://track.example/AAA111"}, "company": None, "n": 1}}}),
         facts(PAID), DELIVERY, ["update(tracking)", "send:shipped"], sends=[("shipped", 1, True, "https://track.example/AAA111")]),
    Case("the same tracking again: nothing", tracked("in_transit"),
         run("delivery", {"sent": ["shipped"], "parcels": {"9": "in_transit"},
                          "tracking": {"9": {"told": {"AAA111": "https://track.example/AAA111"}, "company": "Delhivery", "n": 1}}}),
         facts(PAID), DELIVERY, []),
    Case("another parcel (fulfilment) with its own tracking: a 'shipped' of its own with its link", tracked("in_transit", "10", ("BBB222",)),
         run("delivery", {"sent": ["shipped"], "parcels": {"9": "in_transit"},
                          "tracking": {"9": {"told": {"AAA111": "https://track.example/AAA111"}, "company": "Delhivery", "n": 1}}}),
         facts(PAID), DELIVERY, ["update(last_status,parcels,tracking)", "send:shipped"],
         sends=[("shipped", 2, False, "https://track.example/BBB222")]),
    Case("another parcel after the first went out for delivery: still told", tracked("in_transit", "10", ("BBB222",)),
         run("delivery", {"sent": ["out_for_delivery", "shipped"], "parcels": {"9": "out_for_delivery"},
                          "tracking": {"9": {"told": {"AAA111": "https://track.example/AAA111"}, "company": "Delhivery", "n": 1}}}),
         facts(PAID), DELIVERY, ["update(last_status,parcels,tracking)", "send:shipped"],
         sends=[("shipped", 2, False, "https://track.example/BBB222")]),
    Case("a number added to the fulfilment (multi-package): the new package's 'shipped'", tracked("in_transit", numbers=("AAA111", "AAA112")),
         run("delivery", {"sent": ["shipped"], "parcels": {"9": "in_transit"},
                          "tracking": {"9": {"told": {"AAA111": "https://track.example/AAA111"}, "company": "Delhivery", "n": 1}}}),
         facts(PAID), DELIVERY, ["update(tracking)", "send:shipped"], sends=[("shipped", 2, False, "https://track.example/AAA112")]),
    Case("a corrected number: told again with the new link", tracked("in_transit", numbers=("RIGHT222",)),
         run("delivery", {"sent": ["shipped"], "parcels": {"9": "in_transit"},
                          "tracking": {"9": {"told": {"TYPO111": "https://track.example/TYPO111"}, "company": "Delhivery", "n": 1}}}),
         facts(PAID), DELIVERY, ["update(tracking)", "withdraw:shipped#1", "send:shipped"],  # the dead link, if still waiting
         sends=[("shipped", 2, False, "https://track.example/RIGHT222")]),
    Case("a corrected link for the same number: told again", tracked("in_transit", urls=("https://courier.example/AAA111",)),
         run("delivery", {"sent": ["shipped"], "parcels": {"9": "in_transit"},
                          "tracking": {"9": {"told": {"AAA111": "https://track.example/AAA111"}, "company": "Delhivery", "n": 2}}}),
         facts(PAID), DELIVERY, ["update(tracking)", "withdraw:shipped#2", "send:shipped"],
         sends=[("shipped", 3, False, "https://courier.example/AAA111")]),
    Case("the correction reported again: once", tracked("in_transit", numbers=("RIGHT222",)),
         run("delivery", {"sent": ["shipped"], "parcels": {"9": "in_transit"},
                          "tracking": {"9": {"told": {"TYPO111": "https://track.example/TYPO111", "RIGHT222": "https://track.example/RIGHT222"},
                                             "company": "Delhivery", "n": 2}}}), facts(PAID), DELIVERY, []),
    Case("a run from before tracking was kept: its parcel's tracking is kept, not told again", tracked("in_transit"),
         run("delivery", {"sent": ["shipped"], "parcels": {"9": "in_transit"}}), facts(PAID), DELIVERY, ["update(tracking)"]),
    Case("a late 'shipped' with other tracking after the parcel arrived: nothing", tracked("in_transit", numbers=("RIGHT222",)),
         run("delivery", {"sent": ["delivered", "shipped"], "parcels": {"9": "delivered"},
                          "tracking": {"9": {"told": {"TYPO111": None}, "company": "Delhivery", "n": 1}}}, "finished"),
         facts(PAID), DELIVERY, ["update(last_status,parcels)"]),
    Case("a late NDR answer after the parcel was delivered: no note for the courier desk, the case hears it", tap("ndr_update_address"),
         run("delivery", {**NDR, "sent": ["delivered", "failed", "shipped"], "parcels": {"9": "delivered"}}, "handoff"),
         facts(PAID, **HERE_DELIVERY), DELIVERY, ["update(ndr_answered_at,ndr_answers,ndr_choice)", "handoff"],
         says="it has been delivered since, so nothing was written to the order"),
    Case("delayed after shipped: kept as the parcel's news, no message", shipment("delayed"),
         run("delivery", {"sent": ["shipped"], "parcels": {"9": "in_transit"}}), facts(PAID), DELIVERY,
         ["update(last_status,parcels)"], state={"parcels": {"9": "delayed"}}),
]


@table(DELIVERY_CASES)
def test_delivery_updates(case: Case) -> None:
    check(DeliveryUpdates(), case)


# ---- checkout recovery ----------------------------------------------------------------------

CR = CheckoutRecoveryConfig(abandon_after_minutes=30, ladder_minutes=(0, 360, 1440), discount_code="BACK10", discount_from_step=2,
                            attribution_days=7)
ABANDONED = T0 + 30 * MIN
LADDER = {"abandoned_at": ABANDONED.isoformat(), "recovery_url": "https://shop.example/recover/tok1", "total": "899", "currency": "INR",
          "product": "Neem face wash", "sent": 0}
ONE_SENT = {**LADDER, "sent": 1, "first_sent_at": ABANDONED.isoformat(), "last_sent_at": ABANDONED.isoformat()}
TWO_SENT = {**ONE_SENT, "sent": 2, "step": 2, "last_sent_at": (ABANDONED + 6 * H).isoformat()}
ALL_SENT = {**ONE_SENT, "sent": 3, "last_sent_at": (ABANDONED + 24 * H).isoformat()}
CART = "checkout:tok1"
SHARED = CR.model_copy(update={"unpaid_orders_by_consent": True})  # payment_recovery takes unpaid orders too
CR_NO_UNPAID = CR.model_copy(update={"unpaid_orders": False})
UNPAID = {**LADDER, "recovery_url": woo("pending").payment_url, "unpaid_order": "727"}
CR_SHOPIFY = CR.model_copy(update={"order_before_payment": False, "unpaid_orders": False})  # as settled for a Shopify store
# a Shopify order placed with a manual payment method: pending, no cash on delivery
BANK_DEPOSIT = prepaid(platform_status="pending", gateway_names=("Bank Deposit",), created_at=T0 + 3 * H, updated_at=T0 + 3 * H)
SHOPIFY_WAITING = {**ONE_SENT, "waits_for_payment": True, "awaits_order": "1042"}
# her unpaid order #726, from a cart reminded once, cancelled by WooCommerce (hold stock): it listens out the reminder's window
CANCELLED = {**UNPAID, **ONE_SENT, "unpaid_order": "726", "step": 1, "continues": CART, "order_cancelled": True}
REORDERED = woo("pending", created_at=T0 + 3 * H, updated_at=T0 + 3 * H)  # the order she places instead (#727), left at the card page


def deposit_paid(at: datetime) -> ev.Order:
    """``BANK_DEPOSIT``, marked paid by the store at ``at`` (orders/paid)."""
    return BANK_DEPOSIT.model_copy(update={"platform_status": "paid", "payment_state": ev.PaymentState.PAID, "updated_at": at})


def bought(at: datetime) -> ev.OrderPlaced:
    return ev.OrderPlaced(order=prepaid(created_at=at, updated_at=at, payment_state=ev.PaymentState.PAID))


def bought_for(token: str | None, at: datetime) -> ev.OrderPlaced:
    """A paid order naming checkout ``token`` (None: none, as a WooCommerce order or one from a new checkout with no run)."""
    return ev.OrderPlaced(order=prepaid(checkout_token=token, created_at=at, updated_at=at, payment_state=ev.PaymentState.PAID))


CHECKOUT_CASES = [
    Case("the store binned the order: the run ends, what it has waiting is skipped", ev.OrderDeleted(order_external_id="1042"), run("checkout_recovery", LADDER), facts(),
         CR, ["wake:none", "finish:order_deleted"]),
    Case("a binned order with no run: nothing", ev.OrderDeleted(order_external_id="1042"), None, facts(), CR, []),
    Case("abandoned: first reminder 30 min after the last update", checkout(), None, facts(), CR, [f"start:{CART}", "wake:+30m"],
         state={"sent": 0, "abandoned_at": ABANDONED.isoformat()}),
    Case("no recovery link: nothing to send", checkout(url=None), None, facts(), CR, []),
    Case("still shopping: the ladder moves back", checkout(updated=T0 + 20 * MIN), run("checkout_recovery", LADDER, subject=CART), facts(), CR,
         ["update(abandoned_at,currency,product,recovery_url,total)", "wake:+50m"]),
    Case("an update after the first reminder: the ladder goes on from its abandonment, no restart, quoting the cart as it is now",
         checkout(updated=T0 + H, url="https://shop.example/recover/tok1-v2", total="2500", product="Rose toner"),
         run("checkout_recovery", {**LADDER, "step": 1}, subject=CART), facts(), CR,
         ["update(currency,product,recovery_url,total)", "refresh:first"],
         state={"total": "2500", "product": "Rose toner", "recovery_url": "https://shop.example/recover/tok1-v2", "abandoned_at": None}),
    Case("her checkout now gives a phone that is another contact's: no more reminders to the number she replaced",
         checkout(updated=T0 + H, phone="+919811111111"), run("checkout_recovery", ONE_SENT, subject=CART), facts(contact=8), CR,
         ["update(contact_changed_to)", "wake:none", "finish:contact_changed"], state={"contact_changed_to": 8}),
    Case("the poll sees it first: the run starts on the account phone's contact, marked as a guess",
         checkout(phone="+919811111111", polled=True), None, facts(), CR, [f"start:{CART}", "wake:+30m"],
         state={"sent": 0, "account_phone": True}),
    Case("a poll-started run hears the checkout's own phone (its late webhook), no reminder yet: the run moves there, group decided anew",
         checkout(updated=T0 + 20 * MIN, phone="+919876543210"), run("checkout_recovery", {**LADDER, "account_phone": True}, subject=CART),
         facts(contact=8), CR, ["update(account_phone,moved_from_contact)", "rehome:8",
                                "update(abandoned_at,currency,product,recovery_url,total)", "wake:+50m"],
         state={"account_phone": False, "moved_from_contact": 7}),
    Case("the late webhook after a reminder went to the account phone: the next ones go to the checkout's phone, the group stays",
         checkout(updated=T0 + H, phone="+919876543210"), run("checkout_recovery", {**ONE_SENT, "step": 1, "account_phone": True}, subject=CART),
         facts(contact=8), CR, ["update(account_phone,moved_from_contact)", "rehome:8,keeps_group",
                                "update(currency,product,recovery_url,total)", "refresh:first"]),
    Case("the late webhook names the account phone's own contact: nothing moves, and the contact is hers from now on",
         checkout(updated=T0 + 20 * MIN, phone="+919876543210"), run("checkout_recovery", {**LADDER, "account_phone": True}, subject=CART),
         facts(), CR, ["update(account_phone)", "update(abandoned_at,currency,product,recovery_url,total)", "wake:+50m"],
         state={"account_phone": False}),
    Case("the same phone again (the same contact): only the cart is kept current", checkout(updated=T0 + H, phone="+919876543210"),
         run("checkout_recovery", ONE_SENT, subject=CART), facts(), CR, ["update(currency,product,recovery_url,total)", "refresh:first"]),
    Case("completed before it was abandoned: stop, never abandoned", checkout(completed=T0 + 20 * MIN),
         run("checkout_recovery", LADDER, subject=CART), facts(), CR, ["wake:none", "finish:completed"], state={"abandoned": None}),
    Case("completed after its abandonment time, before the first step fired: stop, it was abandoned", checkout(completed=T0 + H),
         run("checkout_recovery", LADDER, subject=CART), facts(), CR, ["update(abandoned)", "wake:none", "finish:completed"],
         state={"abandoned": True}),
    Case("completed after a reminder: wait a while for its order (the plugin posts before WooCommerce's queued order webhook)",
         checkout(completed=T0 + H), run("checkout_recovery", ONE_SENT, subject=CART), facts(), CR,
         ["update(completed_at)", "withdraw", "wake:+3h"], now=T0 + H, state={"completed_at": (T0 + H).isoformat()}),
    Case("completed after a reminder on Shopify (its order names the checkout): stop at once", checkout(completed=T0 + H),
         run("checkout_recovery", ONE_SENT, subject=CART), facts(), CheckoutRecoveryConfig(completed_wait_minutes=0),
         ["wake:none", "finish:completed"]),
    Case("completed again while waiting: nothing", checkout(completed=T0 + H),
         run("checkout_recovery", {**ONE_SENT, "completed_at": (T0 + H).isoformat()}, subject=CART), facts(), CR, [], now=T0 + 2 * H),
    Case("the order comes while the completed cart waits: recovered", bought(T0 + H),
         run("checkout_recovery", {**ONE_SENT, "completed_at": (T0 + H).isoformat()}, subject=CART), facts(), CR,
         ["update(currency,order_id,recovered,revenue)", "wake:none", "finish:recovered"], state={"recovered": True}),
    Case("no order came for the completed cart: completed", TimerFired(T0 + 3 * H),
         run("checkout_recovery", {**ONE_SENT, "completed_at": (T0 + H).isoformat()}, subject=CART), facts(), CR,
         ["wake:none", "finish:completed"], now=T0 + 3 * H),
    Case("first reminder, the second at +6 h", TimerFired(ABANDONED), run("checkout_recovery", LADDER, subject=CART), facts(), CR,
         ["update(first_sent_at,last_sent_at,sent,step)", "send:first", "wake:+390m"], now=ABANDONED,
         state={"step": 1, "sent": 1, "first_sent_at": ABANDONED.isoformat(), "last_sent_at": ABANDONED.isoformat()}),
    Case("a reminder the gate will skip (no marketing opt-in): queued for the record, not counted", TimerFired(ABANDONED),
         run("checkout_recovery", LADDER, subject=CART), facts(marketing_ok=False), CR, ["update(step)", "send:first", "wake:+390m"],
         now=ABANDONED, state={"step": 1, "sent": None}),
    Case("bought after only skipped reminders: converted, not recovered", bought(T0 + 2 * H),
         run("checkout_recovery", {**LADDER, "step": 1}, subject=CART), facts(), CR,
         ["update(currency,order_id,recovered,revenue)", "wake:none", "finish:converted"], state={"recovered": False, "revenue": "0"}),
    Case("last reminder: wait out the attribution window from now", TimerFired(T0 + D),
         run("checkout_recovery", {**ONE_SENT, "sent": 2}, subject=CART), facts(), CR,
         ["update(last_sent_at,sent,step)", "send:third", "wake:+8d"], now=T0 + D, state={"last_sent_at": (T0 + D).isoformat()}),
    Case("window over: no conversion", TimerFired(ABANDONED + 8 * D), run("checkout_recovery", ALL_SENT, subject=CART), facts(), CR,
         ["wake:none", "finish:no_conversion"], now=ABANDONED + 8 * D),
    Case("order after a reminder: recovered with its revenue", bought(T0 + 8 * H), run("checkout_recovery", ONE_SENT, subject=CART),
         facts(), CR, ["update(currency,order_id,recovered,revenue)", "wake:none", "finish:recovered"],
         state={"recovered": True, "revenue": "1299", "order_id": "1042"}),
    Case("order before any reminder: converted, not recovered", bought(T0 + 10 * MIN), run("checkout_recovery", LADDER, subject=CART),
         facts(), CR, ["update(currency,order_id,recovered,revenue)", "wake:none", "finish:converted"],
         state={"recovered": False, "revenue": "0", "abandoned": None}),
    Case("order after the abandonment time, before a first step that comes later: converted, and it was abandoned",
         bought(ABANDONED + 10 * MIN), run("checkout_recovery", LADDER, subject=CART), facts(), CR,
         ["update(abandoned,currency,order_id,recovered,revenue)", "wake:none", "finish:converted"],
         state={"recovered": False, "abandoned": True}),
    Case("order outside the window: not attributed", bought(ABANDONED + 24 * H + 7 * D + H), run("checkout_recovery", ALL_SENT, subject=CART),
         facts(), CR, ["update(currency,order_id,recovered,revenue)", "wake:none", "finish:converted"], state={"recovered": False}),
    Case("window counts from the reminder actually sent, not the planned ladder", bought(ABANDONED + 7 * D + H),
         run("checkout_recovery", ONE_SENT, subject=CART), facts(), CR,
         ["update(currency,order_id,recovered,revenue)", "wake:none", "finish:converted"], state={"recovered": False}),
    Case("inside 7 days of the last reminder sent", bought(ABANDONED + 24 * H + 6 * D), run("checkout_recovery", ALL_SENT, subject=CART),
         facts(), CR, ["update(currency,order_id,recovered,revenue)", "wake:none", "finish:recovered"], state={"recovered": True}),
    Case("placed before the reminder, heard after: not recovered", bought(ABANDONED - MIN), run("checkout_recovery", ONE_SENT, subject=CART),
         facts(), CR, ["update(currency,order_id,recovered,revenue)", "wake:none", "finish:converted"], state={"recovered": False}),
    Case("one order reaching two of her reminded carts, for the other one: this one ends without revenue, its reminders skipped",
         bought_for("tok2", T0 + 3 * H), run("checkout_recovery", ONE_SENT, subject=CART),
         facts(order_runs=((run("checkout_recovery", ONE_SENT, subject=CART), (ABANDONED,)),
                           (run("checkout_recovery", ONE_SENT, subject="checkout:tok2"), (ABANDONED + H,)))), CR,
         ["update(converted_elsewhere)", "wake:none", "finish:converted_elsewhere"], state={"converted_elsewhere": "1042", "revenue": None}),
    Case("the same order reaching its own checkout's run: recovered there, whichever was reminded last", bought_for("tok1", T0 + 3 * H),
         run("checkout_recovery", ONE_SENT, subject=CART),
         facts(order_runs=((run("checkout_recovery", ONE_SENT, subject=CART), (ABANDONED,)),
                           (run("checkout_recovery", ONE_SENT, subject="checkout:tok2"), (ABANDONED + H,))), reminders_sent=(ABANDONED,)),
         CR, ["update(currency,order_id,recovered,revenue)", "wake:none", "finish:recovered"], state={"recovered": True, "revenue": "1299"}),
    Case("an order for a checkout never reminded (a new one): the cart whose reminder went out is credited, as when that "
         "checkout's webhook comes after the order and it has no run", bought_for("tok2", T0 + 3 * H),
         run("checkout_recovery", ONE_SENT, subject=CART),
         facts(order_runs=((run("checkout_recovery", ONE_SENT, subject=CART), (ABANDONED,)),
                           (run("checkout_recovery", {"abandoned_at": ABANDONED.isoformat(), "sent": 0}, subject="checkout:tok2"), None)),
               reminders_sent=(ABANDONED,)),
         CR, ["update(currency,order_id,recovered,revenue)", "wake:none", "finish:recovered"], state={"recovered": True}),
    Case("... and the never-reminded checkout the order names ends without revenue", bought_for("tok2", T0 + 3 * H),
         run("checkout_recovery", {"abandoned_at": ABANDONED.isoformat(), "sent": 0}, subject="checkout:tok2"),
         facts(order_runs=((run("checkout_recovery", ONE_SENT, subject=CART), (ABANDONED,)),
                           (run("checkout_recovery", {"abandoned_at": ABANDONED.isoformat(), "sent": 0}, subject="checkout:tok2"), None))),
         CR, ["update(converted_elsewhere)", "wake:none", "finish:converted_elsewhere"]),
    Case("an order naming none of her checkouts: the cart whose reminder went out last is credited", bought_for(None, T0 + 3 * H),
         run("checkout_recovery", ONE_SENT, subject="checkout:tok2"),
         facts(order_runs=((run("checkout_recovery", TWO_SENT, subject=CART), (ABANDONED,)),
                           (run("checkout_recovery", ONE_SENT, subject="checkout:tok2"), (ABANDONED + H,))), reminders_sent=(ABANDONED + H,)),
         CR, ["update(currency,order_id,recovered,revenue)", "wake:none", "finish:recovered"], state={"recovered": True}),
    Case("... and the cart reminded earlier ends without revenue", bought_for(None, T0 + 3 * H),
         run("checkout_recovery", TWO_SENT, subject=CART),
         facts(order_runs=((run("checkout_recovery", TWO_SENT, subject=CART), (ABANDONED,)),
                           (run("checkout_recovery", ONE_SENT, subject="checkout:tok2"), (ABANDONED + H,)))), CR,
         ["update(converted_elsewhere)", "wake:none", "finish:converted_elsewhere"]),
    Case("a WooCommerce order while one of her carts is reported completed: that cart is its own", ev.OrderPlaced(order=woo("processing")),
         run("checkout_recovery", ONE_SENT, subject="checkout:tok2"),
         facts(woo("processing"), order_runs=((run("checkout_recovery", {**ONE_SENT, "completed_at": T0.isoformat()}, subject=CART), (ABANDONED,)),
                                              (run("checkout_recovery", ONE_SENT, subject="checkout:tok2"), (ABANDONED + H,)))), CR,
         ["update(converted_elsewhere)", "wake:none", "finish:converted_elsewhere"]),
    Case("the customer replies: a person answers, the ladder stops", text("is COD available?"), run("checkout_recovery", ONE_SENT, subject=CART),
         facts(), CR, ["update(replied)", "wake:none", "finish:replied"]),
    Case("she answers this cart's reminder (quoting it): the ladder stops", text("is COD available?"),
         run("checkout_recovery", ONE_SENT, subject=CART), facts(**routed("checkout_recovery", CART), reply_quoted=True), CR,
         ["update(replied)", "wake:none", "finish:replied"]),
    Case("she taps Confirm on a COD question: not this cart's answer, the ladder goes on", tap("cod_confirm"),
         run("checkout_recovery", ONE_SENT, subject=CART), facts(**routed("cod_confirmation"), reply_quoted=True), CR, []),
    Case("she quotes another cart's reminder: this ladder goes on", text("still there?"),
         run("checkout_recovery", ONE_SENT, subject=CART), facts(**routed("checkout_recovery", "checkout:tok2"), reply_quoted=True), CR, []),
    Case("typed, quoting nothing, after a delivery update reached her last: that answers the delivery, the ladder goes on",
         text("where is my parcel?"), run("checkout_recovery", ONE_SENT, subject=CART), facts(**routed("delivery")), CR, []),
    Case("typed, quoting nothing, and this journey's message reached her last: the ladder stops", text("is COD available?"),
         run("checkout_recovery", ONE_SENT, subject=CART), facts(**routed("checkout_recovery", CART)), CR,
         ["update(replied)", "wake:none", "finish:replied"]),
    Case("WooCommerce pending order: its own ladder, with its pay link", ev.OrderPlaced(order=woo("pending")), None, facts(woo("pending")), CR,
         ["start:order:727", "wake:+30m"], state={"recovery_url": woo("pending").payment_url, "unpaid_order": "727", "sent": 0}),
    Case("WooCommerce failed payment starts one too", ev.OrderUpdated(order=woo("failed")), None, facts(woo("failed")), CR,
         ["start:order:727", "wake:+30m"]),
    Case("unpaid orders left to payment_recovery: no ladder; a silent run keeps the cart the plugin posts for it from starting one",
         ev.OrderPlaced(order=woo("pending")), None, facts(woo("pending")), CheckoutRecoveryConfig(unpaid_orders=False),
         ["start:order:727", "wake:+1d"], state={"holds_cart": True, "sent": 0, "unpaid_order": "727"}),
    Case("... an update of it starts nothing (decided when it was placed)", ev.OrderUpdated(order=woo("pending")), None,
         facts(woo("pending")), CheckoutRecoveryConfig(unpaid_orders=False), []),
    Case("... the silent run's day is over: it ends, having sent nothing", TimerFired(T0 + D),
         run("checkout_recovery", {"unpaid_order": "727", "holds_cart": True, "sent": 0}, subject="order:727"), facts(woo("pending")),
         CheckoutRecoveryConfig(unpaid_orders=False), ["wake:none", "finish:held_cart"], now=T0 + D),
    Case("an order on hold for a bank transfer, no cart reminded: a silent run for the cart the plugin posts after it",
         ev.OrderPlaced(order=woo("on-hold")), None, facts(woo("on-hold")), CR, ["start:order:727", "wake:+1d"],
         state={"holds_cart": True, "sent": 0}),
    Case("a paid WooCommerce order is no checkout", ev.OrderPlaced(order=woo("processing")), None, facts(woo("processing")), CR, []),
    Case("the unpaid order is paid after a reminder: recovered", ev.OrderUpdated(order=woo("processing", updated_at=T0 + 5 * H)),
         run("checkout_recovery", {**UNPAID, "sent": 1, "first_sent_at": ABANDONED.isoformat(), "last_sent_at": ABANDONED.isoformat()},
             subject="order:727"), facts(woo("processing")), CR,
         ["update(currency,order_id,recovered,revenue)", "wake:none", "finish:recovered"], state={"recovered": True, "revenue": "1299"}),
    Case("another payment attempt fails before any reminder: wait again", ev.OrderUpdated(order=woo("failed", updated_at=T0 + 20 * MIN)),
         run("checkout_recovery", UNPAID, subject="order:727"), facts(woo("failed")), CR, ["update(abandoned_at)", "wake:+50m"]),
    Case("the unpaid order is cancelled: stop", ev.OrderCancelled(order=woo("cancelled", cancelled_at=T0 + H)),
         run("checkout_recovery", UNPAID, subject="order:727"), facts(woo("cancelled")), CR, ["wake:none", "finish:order_cancelled"]),
    Case("the unpaid order is cancelled after a reminder (WooCommerce's hold stock): no more reminders, and the run listens out the "
         "reminder's window for the order she places instead", ev.OrderCancelled(order=woo("cancelled", cancelled_at=T0 + H)),
         run("checkout_recovery", {**UNPAID, **ONE_SENT, "step": 1}, subject="order:727"), facts(woo("cancelled")), CR,
         ["update(order_cancelled)", "withdraw", "wake:+10110m"], now=T0 + H, state={"order_cancelled": True}),
    Case("... the update echoing the cancel: nothing", ev.OrderUpdated(order=woo("cancelled", cancelled_at=T0 + H)),
         run("checkout_recovery", {**UNPAID, **ONE_SENT, "step": 1, "order_cancelled": True}, subject="order:727"),
         facts(woo("cancelled")), CR, [], now=T0 + H),
    Case("... the window over: the run ends", TimerFired(ABANDONED + 7 * D),
         run("checkout_recovery", {**UNPAID, **ONE_SENT, "step": 1, "order_cancelled": True}, subject="order:727"),
         facts(woo("cancelled")), CR, ["wake:none", "finish:order_cancelled"], now=ABANDONED + 7 * D),
    # the order she places instead of the cancelled one, still waiting for its payment, goes on from its reminders
    Case("a pending order after her reminded unpaid order was cancelled: it goes on with that ladder (its next step, the "
         "cart's and the cancelled order's reminders its own), not a first reminder again",
         ev.OrderPlaced(order=REORDERED), None, facts(REORDERED, open_runs=(run("checkout_recovery", CANCELLED, subject="order:726"),)), CR,
         ["start:order:727", "wake:+570m"], now=T0 + 3 * H,
         state={"step": 1, "sent": 1, "last_sent_at": ABANDONED.isoformat(), "continues": "order:726", "continues_also": [CART]}),
    Case("... the cancelled order's ladder was over days ago: still its order (it listens out the window for it), only the window "
         "is left", ev.OrderPlaced(order=REORDERED), None,
         facts(REORDERED, open_runs=(run("checkout_recovery", {**CANCELLED, **ALL_SENT, "step": 3}, subject="order:726"),)), CR,
         ["start:order:727", "wake:+11550m"], now=T0 + 4 * D, state={"step": 3, "sent": 3, "continues": "order:726"}),
    Case("... a bank transfer instead (on-hold): it waits for the money with those reminders", ev.OrderPlaced(order=woo("on-hold")), None,
         facts(woo("on-hold"), open_runs=(run("checkout_recovery", CANCELLED, subject="order:726"),)), CR,
         ["start:order:727", "wake:+10110m"], now=T0 + 3 * H,
         state={"waits_for_payment": True, "sent": 1, "continues": "order:726", "continues_also": [CART]}),
    Case("... she answers the cart's reminder while the new order's ladder runs: it is this run's, the ladder stops", text("is COD available?"),
         run("checkout_recovery", {**UNPAID, **ONE_SENT, "step": 1, "continues": "order:726", "continues_also": [CART]}, subject="order:727"),
         facts(**routed("checkout_recovery", CART), reply_quoted=True), CR, ["update(replied)", "wake:none", "finish:replied"]),
    # a silent run (the pay reminder's order, or one nobody reminds of) keeps its day when she places another unpaid order
    Case("the silent run of her unpaid order hears her second order, left pending too: it keeps waiting, so the cart the plugin "
         "posts for the first starts no ladder", ev.OrderPlaced(order=woo("pending")),
         run("checkout_recovery", {"unpaid_order": "726", "holds_cart": True, "sent": 0}, subject="order:726"), facts(woo("pending")), CR, []),
    Case("... the pay reminder's order hears her next order on hold (a bank transfer): it keeps waiting", ev.OrderPlaced(order=woo("on-hold")),
         run("checkout_recovery", {"unpaid_order": "726", "pay_reminder": True, "sent": 0}, subject="order:726"), facts(woo("on-hold")),
         SHARED, []),
    Case("the cart becomes a pending order: the order's ladder takes over", ev.OrderPlaced(order=woo("pending")),
         run("checkout_recovery", ONE_SENT, subject=CART), facts(woo("pending")), CR,
         ["update(superseded_by)", "wake:none", "finish:order_pending"], state={"superseded_by": "727"}),
    Case("a pending order from a cart reminded twice: it goes on with the cart's ladder (its third step next)",
         ev.OrderPlaced(order=woo("pending")), None, facts(woo("pending"), open_runs=(run("checkout_recovery", TWO_SENT, subject=CART),)), CR,
         ["start:order:727", "wake:+1470m"],
         state={"step": 2, "sent": 2, "continues": CART, "first_sent_at": ABANDONED.isoformat(), "last_sent_at": TWO_SENT["last_sent_at"]}),
    Case("a pending order from a cart not reminded yet: a ladder of its own", ev.OrderPlaced(order=woo("pending")), None,
         facts(woo("pending"), open_runs=(run("checkout_recovery", LADDER, subject=CART),)), CR, ["start:order:727", "wake:+30m"],
         state={"sent": 0, "continues": None}),
    Case("a pending order from a cart whose ladder just ended: only the attribution window is left", ev.OrderPlaced(order=woo("pending")),
         None, facts(woo("pending"), open_runs=(run("checkout_recovery", ALL_SENT, subject=CART),)), CR, ["start:order:727", "wake:+11550m"],
         now=T0 + 30 * H, state={"sent": 3, "continues": CART}),
    Case("a pending order days after a cart's ladder ended: another purchase, a ladder of its own", ev.OrderPlaced(order=woo("pending")),
         None, facts(woo("pending"), open_runs=(run("checkout_recovery", ALL_SENT, subject=CART),)), CR, ["start:order:727", "wake:+30m"],
         now=T0 + 4 * D, state={"sent": 0, "continues": None}),
    Case("the order that went on with a cart's ladder is paid: the cart's reminders recovered it",
         ev.OrderUpdated(order=woo("processing", updated_at=T0 + 8 * H)),
         run("checkout_recovery", {**UNPAID, **TWO_SENT, "step": 2, "continues": CART}, subject="order:727"),
         facts(woo("processing"), reminders_sent=(ABANDONED, ABANDONED + 6 * H)), CR,
         ["update(currency,order_id,recovered,revenue)", "wake:none", "finish:recovered"], state={"recovered": True, "revenue": "1299"}),
    Case("timer on an unpaid order that is paid by now: no reminder", TimerFired(ABANDONED), run("checkout_recovery", UNPAID, subject="order:727"),
         facts(woo("processing")), CR, ["wake:none", "finish:order_closed"], now=ABANDONED),
    # payment_recovery takes unpaid orders too (issue #4 item 5): the customer's consent, when the order is placed, decides
    Case("both take unpaid orders, she has marketing consent: the cart ladder", ev.OrderPlaced(order=woo("failed")), None,
         facts(woo("failed"), marketing_ok=True), SHARED, ["start:order:727", "wake:+30m"]),
    Case("both take unpaid orders, no marketing consent: left to the pay reminder (the ladder could not reach her); a silent "
         "run keeps the cart the plugin posts for it from starting a ladder", ev.OrderPlaced(order=woo("failed")), None,
         facts(woo("failed"), marketing_ok=False), SHARED, ["start:order:727", "wake:+1d"]),
    Case("both take unpaid orders: an update starts no ladder (decided when the order was placed)", ev.OrderUpdated(order=woo("failed")),
         None, facts(woo("failed"), marketing_ok=True), SHARED, []),
    # one checkout, one ladder (issue #4 item 3; the runner must pass open_runs with a checkout)
    Case("her unpaid order runs the ladder: the plugin's cart for it, posted abandoned later, starts no second one", checkout(),
         None, facts(open_runs=(run("checkout_recovery", UNPAID, subject="order:727"),)), CR, []),
    Case("... her unpaid order went to the pay reminder (a silent run): the cart posted with an opt-in starts no ladder", checkout(),
         None, facts(open_runs=(run("checkout_recovery", {"unpaid_order": "727", "pay_reminder": True, "sent": 0}, subject="order:727"),)),
         CR, []),
    Case("... her order waits for its payment (a bank transfer): the cart she checked out with, posted after it, starts none",
         checkout(T0 + H), None, facts(open_runs=(run("checkout_recovery", {**UNPAID, "waits_for_payment": True, "products": ["Neem face wash"]},
                                                    subject="order:727"),)), CR, [], now=T0 + H),
    Case("... the same with the silent run of an order nobody reminds of (its products unknown: the time decides)", checkout(T0 + H), None,
         facts(open_runs=(run("checkout_recovery", {"unpaid_order": "727", "holds_cart": True, "sent": 0}, subject="order:727"),)),
         CR, [], now=T0 + H),
    Case("... a cart naming a product her waiting order lacks is a new one: its ladder", checkout(T0 + H, product="Neem face wash & Rose toner"),
         None, facts(open_runs=(run("checkout_recovery", {**UNPAID, "waits_for_payment": True, "products": ["Neem face wash"]},
                                    subject="order:727"),)), CR, ["start:checkout:tok1", "wake:+90m"], now=T0 + H),
    Case("... a variation she ordered is her cart's product", checkout(T0 + H, product="Rose toner & Neem face wash"), None,
         facts(open_runs=(run("checkout_recovery", {**UNPAID, "holds_cart": True, "products": ["Neem face wash - 100 ml", "Rose toner"]},
                              subject="order:727"),)), CR, [], now=T0 + H),
    Case("... a cart posted more than a day after her waiting order: another purchase, its ladder", checkout(T0 + 2 * D), None,
         facts(open_runs=(run("checkout_recovery", {**UNPAID, "waits_for_payment": True, "products": ["Neem face wash"]},
                              subject="order:727"),)), CR, ["start:checkout:tok1", "wake:+2910m"], now=T0 + 2 * D),
    Case("... an order ladder over days ago: a new cart is another purchase", checkout(T0 + 9 * D), None,
         facts(open_runs=(run("checkout_recovery", {**UNPAID, **ALL_SENT, "step": 3}, subject="order:727"),)), CR,
         ["start:checkout:tok1", "wake:+12990m"], now=T0 + 9 * D),
    # a cart is recovered by a purchase, not by an order whose payment failed or waits (issue #4 item 6)
    Case("unpaid orders off, the reminded cart becomes a failed order: no credit, the cart's ladder ends",
         ev.OrderPlaced(order=woo("failed")), run("checkout_recovery", ONE_SENT, subject=CART), facts(woo("failed")), CR_NO_UNPAID,
         ["update(superseded_by)", "wake:none", "finish:order_pending"], state={"superseded_by": "727", "revenue": None, "order_id": None}),
    Case("... and the order waits for its payment with the cart's reminders, sending nothing", ev.OrderPlaced(order=woo("failed")), None,
         facts(woo("failed"), open_runs=(run("checkout_recovery", TWO_SENT, subject=CART),)), CR_NO_UNPAID, ["start:order:727", "wake:+10470m"],
         state={"waits_for_payment": True, "continues": CART, "sent": 2, "step": 2}),
    Case("... an order from a cart none of whose reminders went out: nothing waits to be credited (a silent day against a second ladder)",
         ev.OrderPlaced(order=woo("failed")), None,
         facts(woo("failed"), open_runs=(run("checkout_recovery", {**LADDER, "step": 1}, subject=CART),)), CR_NO_UNPAID,
         ["start:order:727", "wake:+1d"], state={"holds_cart": True, "sent": 0, "continues": None, "waits_for_payment": None}),
    Case("... paid later: the cart's reminders recovered it", ev.OrderUpdated(order=woo("processing", updated_at=T0 + 8 * H)),
         run("checkout_recovery", {**TWO_SENT, "continues": CART, "unpaid_order": "727", "waits_for_payment": True}, subject="order:727"),
         facts(woo("processing"), reminders_sent=(ABANDONED, ABANDONED + 6 * H)), CR_NO_UNPAID,
         ["update(currency,order_id,recovered,revenue)", "wake:none", "finish:recovered"], state={"recovered": True, "revenue": "1299"}),
    Case("... never paid: it ends with the cart's window, no reminder, no credit", TimerFired(ABANDONED + 8 * D),
         run("checkout_recovery", {**TWO_SENT, "continues": CART, "unpaid_order": "727", "waits_for_payment": True}, subject="order:727"),
         facts(woo("failed")), CR_NO_UNPAID, ["wake:none", "finish:not_paid"], now=ABANDONED + 8 * D),
    # an order waiting for a payment that is no cash on delivery (a bank transfer) recovers nothing until it is paid
    Case("a pending Shopify order paid by bank deposit (a manual method): no credit yet; the ladder ends (a reminder still "
         "waiting is withdrawn) and the run waits out the window of its last reminder for the payment",
         ev.OrderPlaced(order=BANK_DEPOSIT), run("checkout_recovery", ONE_SENT, subject=CART), facts(), CR_SHOPIFY,
         ["update(awaits_order,products,waits_for_payment)", "withdraw", "wake:+10110m"], now=T0 + 3 * H,
         state={"waits_for_payment": True, "awaits_order": "1042", "order_id": None, "recovered": None, "revenue": None}),
    Case("... orders/paid two days later, inside the window: recovered then, with its revenue", ev.OrderPaid(order=deposit_paid(T0 + 2 * D)),
         run("checkout_recovery", SHOPIFY_WAITING, subject=CART), facts(reminders_sent=(ABANDONED,)), CR_SHOPIFY,
         ["update(currency,order_id,recovered,revenue)", "wake:none", "finish:recovered"], now=T0 + 2 * D,
         state={"order_id": "1042", "recovered": True, "revenue": "1299"}),
    Case("... paid after the window (the ladder's run ended): converted, no revenue", ev.OrderPaid(order=deposit_paid(T0 + 9 * D)),
         run("checkout_recovery", {**SHOPIFY_WAITING, "outcome": "not_paid"}, "finished", subject=CART), facts(reminders_sent=(ABANDONED,)),
         CR_SHOPIFY, ["update(currency,order_id,recovered,revenue)"], now=T0 + 9 * D, state={"recovered": False, "revenue": "0"}),
    Case("... never paid: the window ends the run, nothing credited", TimerFired(ABANDONED + 7 * D),
         run("checkout_recovery", SHOPIFY_WAITING, subject=CART), facts(), CR_SHOPIFY, ["wake:none", "finish:not_paid"], now=ABANDONED + 7 * D),
    Case("... the checkout's completion, heard after the order, changes nothing (the run waits on the order)",
         checkout(completed=T0 + 3 * H), run("checkout_recovery", SHOPIFY_WAITING, subject=CART), facts(), CR_SHOPIFY, [], now=T0 + 3 * H),
    Case("... she writes to ask for the bank details: the run waits on (a reply ends no wait for a payment)", text("account number?"),
         run("checkout_recovery", SHOPIFY_WAITING, subject=CART), facts(**routed("checkout_recovery", CART), reply_quoted=True), CR_SHOPIFY, []),
    Case("... a checkout completed before its pending order arrived (the run ended): the order credits nothing yet",
         ev.OrderPlaced(order=BANK_DEPOSIT), run("checkout_recovery", {**ONE_SENT, "outcome": "completed"}, "finished", subject=CART), facts(),
         CR_SHOPIFY, [], now=T0 + 3 * H),
    Case("a pending Shopify COD order is credited as placed", ev.OrderPlaced(order=order(created_at=T0 + 3 * H, updated_at=T0 + 3 * H)),
         run("checkout_recovery", ONE_SENT, subject=CART), facts(), CR_SHOPIFY,
         ["update(currency,order_id,recovered,revenue)", "wake:none", "finish:recovered"], state={"recovered": True, "revenue": "1299"}),
    Case("the reminded cart becomes a WooCommerce on-hold order (a bank transfer): no credit, the cart's ladder ends",
         ev.OrderPlaced(order=woo("on-hold")), run("checkout_recovery", ONE_SENT, subject=CART), facts(woo("on-hold")), CR,
         ["update(superseded_by)", "wake:none", "finish:order_pending"], state={"superseded_by": "727", "order_id": None, "revenue": None}),
    Case("... and the on-hold order waits for its money with the cart's reminders, sending nothing", ev.OrderPlaced(order=woo("on-hold")), None,
         facts(woo("on-hold"), open_runs=(run("checkout_recovery", TWO_SENT, subject=CART),)), CR, ["start:order:727", "wake:+10470m"],
         state={"waits_for_payment": True, "continues": CART, "sent": 2, "step": 2}),
    Case("... from a cart whose ladder ended days ago, still inside its window: it waits too", ev.OrderPlaced(order=woo("on-hold")), None,
         facts(woo("on-hold"), open_runs=(run("checkout_recovery", ALL_SENT, subject=CART),)), CR, ["start:order:727", "wake:+11550m"],
         now=T0 + 4 * D, state={"waits_for_payment": True, "continues": CART, "sent": 3}),
    Case("... the order sent again, still on hold: nothing credited", ev.OrderUpdated(order=woo("on-hold", updated_at=T0 + 9 * H)),
         run("checkout_recovery", {**TWO_SENT, "continues": CART, "unpaid_order": "727", "waits_for_payment": True}, subject="order:727"),
         facts(woo("on-hold"), reminders_sent=(ABANDONED, ABANDONED + 6 * H)), CR, [], now=T0 + 9 * H),
    Case("her unpaid order's ladder: she picks bank transfer on the pay page (on-hold): no more reminders, no credit, the run waits for the money",
         ev.OrderUpdated(order=woo("on-hold", updated_at=T0 + 2 * H)), run("checkout_recovery", {**UNPAID, **ONE_SENT, "step": 1}, subject="order:727"),
         facts(woo("on-hold"), reminders_sent=(ABANDONED,)), CR, ["update(awaits_order,products,waits_for_payment)", "withdraw", "wake:+10110m"],
         now=T0 + 2 * H, state={"waits_for_payment": True, "order_id": None, "recovered": None, "revenue": None}),
    Case("a WooCommerce on-hold COD order (downloadable items: the COD gateway's on-hold) is credited as placed",
         ev.OrderPlaced(order=woo_cod("on-hold").model_copy(update={"created_at": T0 + 3 * H, "updated_at": T0 + 3 * H})),
         run("checkout_recovery", ONE_SENT, subject=CART), facts(), CR,
         ["update(currency,order_id,recovered,revenue)", "wake:none", "finish:recovered"], state={"recovered": True, "revenue": "1299"}),
]


@table(CHECKOUT_CASES)
def test_checkout_recovery(case: Case) -> None:
    check(CheckoutRecovery(), case)


def test_checkout_recovery_reminders_carry_the_link_and_the_discount_from_its_step() -> None:
    j = CheckoutRecovery()
    first = j.decide(TimerFired(ABANDONED), run("checkout_recovery", LADDER, subject=CART), facts(), CR, ABANDONED)
    second = j.decide(TimerFired(ABANDONED), run("checkout_recovery", ONE_SENT, subject=CART), facts(), CR, ABANDONED)
    [s1], [s2] = [c for c in first if isinstance(c, Send)], [c for c in second if isinstance(c, Send)]
    assert s1.context["checkout.recovery_url"] == "https://shop.example/recover/tok1" and "discount.code" not in s1.context
    assert s2.context["discount.code"] == "BACK10"


@pytest.mark.parametrize(("event", "subject"), [
    (checkout(), "checkout:tok1"),
    (ev.OrderPlaced(order=prepaid()), "checkout:tok1"),
    (ev.OrderUpdated(order=prepaid()), None),
    (ev.OrderPlaced(order=woo("pending")), "order:727"),
    (ev.OrderUpdated(order=woo("processing")), "order:727"),
    (ev.OrderPlaced(order=order(checkout_token=None)), None),  # COD
], ids=["checkout", "shopify order", "shopify update", "woo order", "woo update", "cod without token"])
def test_checkout_recovery_subjects(event: Any, subject: str | None) -> None:
    assert CheckoutRecovery().subject(event, facts()) == subject


# ---- payment recovery -----------------------------------------------------------------------

PR = PaymentRecoveryConfig(after_minutes=60)
PR_SHARED = PaymentRecoveryConfig(after_minutes=60, unpaid_orders_by_consent=True)
WAITING = {"placed_at": T0.isoformat(), "products": ["9001"]}  # a run waiting to remind about order #1042
RETRY = prepaid(external_id="1043", name="#1043", payment_state=ev.PaymentState.PAID, created_at=T0 + 20 * MIN)  # her second try, paid
NEWER = prepaid(external_id="1043", name="#1043", created_at=T0 + 20 * MIN)  # her second try, left pending too
WOO_NEWER = woo("pending", created_at=T0 + 20 * MIN)  # WooCommerce #727, her second try after #726, left at the card page
PENDING = prepaid()
NET_30 = prepaid(payment_terms="net", payment_due_at=T0 + 30 * D)  # as stored from the webhook
ON_FULFILMENT = prepaid(payment_terms="fulfillment")  # due once fulfilled: no date yet

def paid_at(at: datetime) -> ev.Order:
    """Order #1042, paid at ``at`` (its last change, as the store reports it)."""
    return prepaid(payment_state=ev.PaymentState.PAID, updated_at=at)


PAYMENT_CASES = [
    Case("the store binned the order: the run ends, what it has waiting is skipped", ev.OrderDeleted(order_external_id="1042"), run("payment_recovery", {}), facts(),
         PR, ["wake:none", "finish:order_deleted"]),
    Case("a binned order with no run: nothing", ev.OrderDeleted(order_external_id="1042"), None, facts(), PR, []),
    Case("payment pending: remind after an hour", ev.OrderPlaced(order=PENDING), None, facts(PENDING), PR, ["start:order:1042", "wake:+1h"]),
    Case("pending at the store's till (POS): settled in person, no reminder", ev.OrderPlaced(order=prepaid(channel=ev.SalesChannel.POS)), None,
         facts(prepaid(channel=ev.SalesChannel.POS)), PR, []),
    Case("pending at the till, the store asks to remind those too", ev.OrderPlaced(order=prepaid(channel=ev.SalesChannel.POS)), None,
         facts(prepaid(channel=ev.SalesChannel.POS)), PaymentRecoveryConfig(include_pos=True), ["start:order:1042", "wake:+1h"]),
    Case("the hour is up: the pay link, once; the run listens for her second try out the attribution window (3 days)",
         TimerFired(T0 + H), run("payment_recovery", {}), facts(PENDING), PR,
         ["update(reminded,sent)", "send:remind", "wake:+73h"], now=T0 + H, state={"reminded": True, "sent": 1}),
    Case("reminded on payment terms, a month on: it listens out the attribution window for her new try",
         TimerFired(T0 + 30 * D), run("payment_recovery", WAITING),
         facts(NET_30), PR, ["update(reminded,sent)", "send:remind", "wake:+33d"], now=T0 + 30 * D),
    Case("the day is out after the reminder: done", TimerFired(T0 + D), run("payment_recovery", {**WAITING, "reminded": True, "sent": 1}),
         facts(PENDING), PR, ["finish:reminded"], now=T0 + D),
    Case("the window is up, but the reminder went out the next morning (quiet hours): it listens out the reminder's window",
         TimerFired(T0 + 3 * D + H), run("payment_recovery", {**WAITING, "reminded": True, "sent": 1}),
         facts(PENDING, reminders_sent=(T0 + 20 * H,)), PR, ["wake:+92h"], now=T0 + 3 * D + H),
    Case("paid after the reminder went out, while the run listens: attributed, done", ev.OrderPaid(order=paid_at(T0 + 2 * H)),
         run("payment_recovery", {"reminded": True, "sent": 1}), facts(paid_at(T0 + 2 * H), reminders_sent=(T0 + H,)), PR,
         ["update(currency,order_id,paid,recovered,revenue)", "wake:none", "finish:reminded"], state={"recovered": True, "revenue": "1299"}),
    Case("paid while the reminder still waits and the run listens: the reminder skipped",
         ev.OrderPaid(order=paid_at(T0 + 2 * H)), run("payment_recovery", {"reminded": True, "sent": 1}),
         facts(paid_at(T0 + 2 * H), reminders_sent=()), PR, ["update(order_id,paid,paid_before_reminder,recovered)", "wake:none", "finish:paid_before_reminder"],
         state={"recovered": False}),
    Case("cancelled while the reminder may still wait: the reminder goes no further, the run listens on for her new try",
         ev.OrderCancelled(order=prepaid(cancelled_at=T0 + 2 * H)), run("payment_recovery", {"reminded": True, "sent": 1}),
         facts(prepaid(cancelled_at=T0 + 2 * H)), PR, ["update(order_cancelled)", "withdraw"], state={"order_cancelled": True}),
    Case("the cancel heard again (its update): nothing more",
         ev.OrderUpdated(order=prepaid(cancelled_at=T0 + 2 * H)), run("payment_recovery", {"reminded": True, "sent": 1, "order_cancelled": True}),
         facts(prepaid(cancelled_at=T0 + 2 * H)), PR, []),
    Case("put back to pending after a cancel withdrew its held reminder: the reminder queued again, listening from now",
         ev.OrderUpdated(order=PENDING), run("payment_recovery", {**WAITING, "reminded": True, "sent": 1, "order_cancelled": True}),
         facts(PENDING, reminders_sent=()), PR, ["update(order_cancelled)", "send:remind", "wake:+84h"], now=T0 + 12 * H,
         state={"order_cancelled": False}),
    Case("put back to pending after its reminder went out: chased as before, no second reminder",
         ev.OrderUpdated(order=PENDING), run("payment_recovery", {**WAITING, "reminded": True, "sent": 1, "order_cancelled": True}),
         facts(PENDING, reminders_sent=(T0 + H,)), PR, ["update(order_cancelled)"], now=T0 + 12 * H),
    Case("her newer try, its reminder not planned (terms with no date), cancelled: it listens out the day, not for ever",
         ev.OrderCancelled(order=prepaid(cancelled_at=T0 + 2 * H)), run("payment_recovery", {**WAITING, "continues": "order:1041", "sent": 1}),
         facts(prepaid(cancelled_at=T0 + 2 * H)), PR, ["update(order_cancelled)", "withdraw", "wake:+1d"], now=T0 + 2 * H),
    Case("that newer try put back, its terms still with no date: no reminder planned, as before the cancel",
         ev.OrderUpdated(order=ON_FULFILMENT), run("payment_recovery", {**WAITING, "continues": "order:1041", "sent": 1, "order_cancelled": True}),
         facts(ON_FULFILMENT), PR, ["update(order_cancelled)", "wake:none"], now=T0 + 3 * H),
    Case("a cancelled order's window is up with no new try: closed",
         TimerFired(T0 + 3 * D + H), run("payment_recovery", {**WAITING, "reminded": True, "sent": 1, "order_cancelled": True}),
         facts(prepaid(cancelled_at=T0 + 2 * H), reminders_sent=(T0 + H,)), PR, ["wake:none", "finish:closed"], now=T0 + 4 * D + H),
    Case("a cancelled order's window is up, its order row gone: closed all the same",
         TimerFired(T0 + 3 * D + H), run("payment_recovery", {**WAITING, "reminded": True, "sent": 1, "order_cancelled": True}),
         facts(reminders_sent=(T0 + H,)), PR, ["finish:closed"], now=T0 + 4 * D + H),
    Case("paid before the reminder", ev.OrderPaid(order=prepaid(payment_state=ev.PaymentState.PAID)), run("payment_recovery", {}),
         facts(prepaid(payment_state=ev.PaymentState.PAID)), PR, ["wake:none", "update(paid)", "finish:paid_without_reminder"]),
    Case("paid after the reminder went out: attributed", ev.OrderPaid(order=paid_at(T0 + 2 * H)),
         run("payment_recovery", {"reminded": True, "sent": 1}, "finished"),
         facts(paid_at(T0 + 2 * H), reminders_sent=(T0 + H,)), PR,
         ["update(currency,order_id,paid,recovered,revenue)"], state={"paid": True, "recovered": True, "revenue": "1299", "order_id": "1042"}),
    Case("paid on the last day of the attribution window: attributed", ev.OrderPaid(order=paid_at(T0 + H + 3 * D)),
         run("payment_recovery", {"reminded": True, "sent": 1}, "finished"), facts(paid_at(T0 + H + 3 * D), reminders_sent=(T0 + H,)), PR,
         ["update(currency,order_id,paid,recovered,revenue)"], state={"recovered": True, "revenue": "1299"}),
    Case("paid a month after the reminder: paid, but not recovered by it (no revenue)", ev.OrderPaid(order=paid_at(T0 + 30 * D)),
         run("payment_recovery", {"reminded": True, "sent": 1}, "finished"), facts(paid_at(T0 + 30 * D), reminders_sent=(T0 + H,)), PR,
         ["update(currency,order_id,paid,recovered,revenue)"], state={"paid": True, "recovered": False, "revenue": "0"}),
    Case("paid before the reminder went out, heard after: not recovered", ev.OrderPaid(order=paid_at(T0 + 30 * MIN)),
         run("payment_recovery", {"reminded": True, "sent": 1}, "finished"), facts(paid_at(T0 + 30 * MIN), reminders_sent=(T0 + H,)), PR,
         ["update(currency,order_id,paid,recovered,revenue)"], state={"paid": True, "recovered": False, "revenue": "0"}),
    Case("paid while the reminder still waits: not attributed, the reminder skipped",
         ev.OrderPaid(order=prepaid(payment_state=ev.PaymentState.PAID)), run("payment_recovery", {"reminded": True, "sent": 1}, "finished"),
         facts(prepaid(payment_state=ev.PaymentState.PAID), reminders_sent=()), PR,
         ["update(order_id,paid,paid_before_reminder,recovered)", "finish:paid_before_reminder"], state={"paid": True, "recovered": False, "revenue": None}),
    Case("a run stored before sends were told (no reminders_sent): its record counts",
         ev.OrderUpdated(order=woo("processing")), run("payment_recovery", {"reminded": True}, "finished", "order:727"),
         facts(woo("processing")), PR, ["update(currency,order_id,paid,recovered,revenue)"], state={"paid": True, "revenue": "1299"}),
    Case("cancelled: closed", ev.OrderCancelled(order=prepaid(cancelled_at=T0)), run("payment_recovery", {}), facts(prepaid(cancelled_at=T0)), PR,
         ["wake:none", "update(paid)", "finish:closed"]),
    Case("WooCommerce pending order, checkout_recovery takes those: nothing", ev.OrderPlaced(order=woo("pending")), None, facts(woo("pending")),
         PaymentRecoveryConfig(unpaid_orders=False), []),
    Case("WooCommerce pending order, no checkout_recovery: reminded here", ev.OrderPlaced(order=woo("pending")), None, facts(woo("pending")),
         PR, ["start:order:727", "wake:+1h"]),
    Case("WooCommerce on-hold (bank transfer) stays here either way", ev.OrderPlaced(order=woo("on-hold")), None, facts(woo("on-hold")),
         PaymentRecoveryConfig(unpaid_orders=False), ["start:order:727", "wake:+1h"]),
    Case("on Net 30 terms: not chased before the payment is due", ev.OrderPlaced(order=prepaid(payment_terms="net", payment_due_at=T0 + 30 * D)),
         None, facts(PENDING), PR, ["start:order:1042", "wake:+30d"]),
    Case("terms due within the hour: the usual hour", ev.OrderPlaced(order=prepaid(payment_terms="fixed", payment_due_at=T0 + 10 * MIN)),
         None, facts(PENDING), PR, ["start:order:1042", "wake:+1h"]),
    Case("due on fulfilment, not fulfilled yet: nothing to chase", ev.OrderPlaced(order=prepaid(payment_terms="fulfillment")),
         None, facts(PENDING), PR, []),
    Case("due on receipt: owed at once, the usual hour", ev.OrderPlaced(order=prepaid(payment_terms="receipt")),
         None, facts(PENDING), PR, ["start:order:1042", "wake:+1h"]),
    # the reconcile's read (Admin GraphQL) carries no terms: the ones stored from the webhook decide
    Case("reconcile update, stored due on fulfilment: nothing to chase", ev.OrderUpdated(order=PENDING),
         None, facts(ON_FULFILMENT), PR, []),
    Case("reconcile update, stored Net 30: not chased before the payment is due", ev.OrderUpdated(order=PENDING),
         None, facts(NET_30), PR, ["start:order:1042", "wake:+30d"]),
    Case("reconcile update, stored due on receipt: the usual hour", ev.OrderUpdated(order=PENDING),
         None, facts(prepaid(payment_terms="receipt")), PR, ["start:order:1042", "wake:+1h"]),
    Case("reconcile update, no terms stored: the usual hour", ev.OrderUpdated(order=PENDING),
         None, facts(PENDING), PR, ["start:order:1042", "wake:+1h"]),
    Case("fulfilled on terms, the update dates the payment: chased from that date, not the stored undated terms",
         ev.OrderUpdated(order=prepaid(payment_terms="fulfillment", payment_due_at=T0 + 40 * D)),
         None, facts(ON_FULFILMENT), PR, ["start:order:1042", "wake:+40d"]),
    Case("an order on terms first seen by the reconcile alone (its webhook lost): no terms known, the usual hour",
         ev.OrderPlaced(order=PENDING), None, facts(PENDING), PR, ["start:order:1042", "wake:+1h"]),
    Case("a reconcile update while a Net 30 run waits for its date: nothing changes", ev.OrderUpdated(order=PENDING),
         run("payment_recovery", {}), facts(NET_30), PR, []),
    Case("a new run keeps its order's time and products (to tell her second try)", ev.OrderPlaced(order=PENDING), None, facts(PENDING), PR,
         ["start:order:1042", "wake:+1h"], state={"placed_at": T0.isoformat(), "products": ["9001"]}),
    # checkout_recovery takes unpaid orders too (issue #4 item 5): the customer's consent, when the order is placed, decides
    Case("both take unpaid orders, no marketing consent: the pay reminder", ev.OrderPlaced(order=woo("failed")), None,
         facts(woo("failed"), marketing_ok=False), PR_SHARED, ["start:order:727", "wake:+1h"]),
    Case("both take unpaid orders, she has marketing consent: the cart ladder's", ev.OrderPlaced(order=woo("failed")), None,
         facts(woo("failed"), marketing_ok=True), PR_SHARED, []),
    Case("both take unpaid orders: an update starts no reminder (decided when the order was placed)", ev.OrderUpdated(order=woo("failed")),
         None, facts(woo("failed"), marketing_ok=False), PR_SHARED, []),
    Case("both take unpaid orders: on-hold (bank transfer) is no abandoned checkout, it stays here", ev.OrderPlaced(order=woo("on-hold")),
         None, facts(woo("on-hold"), marketing_ok=True), PR_SHARED, ["start:order:727", "wake:+1h"]),
    # her second try (issue #4 item 2): another order of hers reaches the waiting run (the journey follows the contact)
    Case("she pays another order for the same product 20 minutes later: no reminder for this one", ev.OrderPlaced(order=RETRY),
         run("payment_recovery", WAITING), facts(RETRY), PR, ["update(replaced_by)", "wake:none", "finish:replaced_by_order"],
         state={"replaced_by": "1043", "revenue": None}),
    Case("... or takes it cash on delivery instead", ev.OrderPlaced(order=order(external_id="1043", created_at=T0 + 20 * MIN)),
         run("payment_recovery", WAITING), facts(), PR, ["update(replaced_by)", "wake:none", "finish:replaced_by_order"]),
    Case("... a run stored before it kept its products: any later paid order of hers that day", ev.OrderPlaced(order=RETRY),
         run("payment_recovery", {}), facts(RETRY), PR, ["update(replaced_by)", "wake:none", "finish:replaced_by_order"]),
    Case("... paid as an update (once the runner routes it): the same", ev.OrderUpdated(order=RETRY),
         run("payment_recovery", WAITING), facts(RETRY), PR, ["update(replaced_by)", "wake:none", "finish:replaced_by_order"]),
    Case("her other order is for another product: another purchase, this one is still chased",
         ev.OrderPlaced(order=RETRY.model_copy(update={"line_items": (ev.LineItem(product_id="9002", title="Soap"),)})),
         run("payment_recovery", WAITING), facts(), PR, []),
    Case("she leaves another order for the same product unpaid too: only the newer try is chased",
         ev.OrderPlaced(order=NEWER), run("payment_recovery", WAITING), facts(NEWER), PR,
         ["update(replaced_by)", "wake:none", "finish:replaced"], state={"replaced_by": "1043"}),
    Case("... also when this one's reminder is queued already (held for the morning)", ev.OrderPlaced(order=NEWER),
         run("payment_recovery", {**WAITING, "reminded": True, "sent": 1}), facts(NEWER), PR, ["update(replaced_by)", "wake:none", "finish:replaced"]),
    Case("her newer unpaid order is the cart ladder's (she has marketing consent): this one is still chased",
         ev.OrderPlaced(order=WOO_NEWER), run("payment_recovery", WAITING, subject="order:726"), facts(WOO_NEWER, marketing_ok=True), PR_SHARED, []),
    Case("... she has none: the pay reminder takes it, and only the newer try is chased", ev.OrderPlaced(order=WOO_NEWER),
         run("payment_recovery", WAITING, subject="order:726"), facts(WOO_NEWER, marketing_ok=False), PR_SHARED,
         ["update(replaced_by)", "wake:none", "finish:replaced"]),
    Case("her newer unpaid order has no pay link: this one is still chased",
         ev.OrderPlaced(order=NEWER.model_copy(update={"payment_url": None, "platform_status": "pending"})),
         run("payment_recovery", WAITING), facts(NEWER.model_copy(update={"payment_url": None, "platform_status": "pending"})), PR, []),
    Case("her newer order is to be paid by bank transfer (WooCommerce on-hold: no pay link): this one is not chased as well",
         ev.OrderPlaced(order=woo("on-hold", created_at=T0 + 20 * MIN).model_copy(update={"payment_url": None})),
         run("payment_recovery", WAITING, subject="order:726"), facts(woo("on-hold").model_copy(update={"payment_url": None})), PR, ["update(replaced_by)", "wake:none", "finish:replaced_by_order"]),
    Case("her newer unpaid order is for another product: both chased",
         ev.OrderPlaced(order=NEWER.model_copy(update={"line_items": (ev.LineItem(product_id="9002", title="Soap"),)})),
         run("payment_recovery", WAITING), facts(NEWER.model_copy(update={"line_items": (ev.LineItem(product_id="9002", title="Soap"),)})), PR, []),
    Case("an older unpaid try heard after the newer one: started finished, not chased", ev.OrderPlaced(order=PENDING), None,
         facts(PENDING, open_runs=(run("payment_recovery", {"placed_at": (T0 + 20 * MIN).isoformat(), "products": ["9001"]}, subject="order:1043"),)),
         PR, ["start:order:1042", "finish:replaced"], state={"replaced_by": "1043"}),
    Case("an open run of hers for another purchase: this order is chased as usual", ev.OrderPlaced(order=PENDING), None,
         facts(PENDING, open_runs=(run("payment_recovery", {"placed_at": (T0 + 20 * MIN).isoformat(), "products": ["9002"]}, subject="order:1043"),)),
         PR, ["start:order:1042", "wake:+1h"]),
    Case("her other order came two days later: another purchase", ev.OrderPlaced(order=RETRY.model_copy(update={"created_at": T0 + 2 * D})),
         run("payment_recovery", WAITING), facts(), PR, []),
    Case("an older order of hers (heard late) replaces nothing", ev.OrderPlaced(order=RETRY.model_copy(update={"created_at": T0 - H})),
         run("payment_recovery", WAITING), facts(), PR, []),
    Case("a reply reaching the run (it follows her): not this order's news", text("hello"), run("payment_recovery", WAITING),
         facts(PENDING), PR, []),
    Case("a paid order of hers reaching a finished run: nothing", ev.OrderPlaced(order=RETRY),
         run("payment_recovery", {**WAITING, "reminded": True}, "finished"), facts(RETRY), PR, []),
]


@table(PAYMENT_CASES)
def test_payment_recovery(case: Case) -> None:
    check(PaymentRecovery(), case)


# ---- reorder --------------------------------------------------------------------------------

RO = ReorderConfig(follow_up_days=3, attribution_days=14)
REMINDED = {"product_key": "p:9001", "product": "Neem face wash", "link": "https://shop.example/cart/49001:1", "sent": 1,
            "attribution_ends": (T0 + 14 * D).isoformat()}
REORDER = "reorder:1001:p:9001"


def reordered(at: datetime, product: str = "9001") -> ev.OrderPlaced:
    """Order #2002 (total 1299): two packs of ``product`` at 499.50, and a soap at 300."""
    return ev.OrderPlaced(order=prepaid(external_id="2002", created_at=at, updated_at=at, payment_state=ev.PaymentState.PAID,
                                        line_items=(ev.LineItem(product_id=product, title="x", quantity=2, price=Decimal("499.50")),
                                                    ev.LineItem(product_id="31", title="soap", price=Decimal("300")))))


REORDER_CASES = [
    Case("window opens: remind, follow up in 3 days", opened(), None, facts(), RO,
         [f"start:{REORDER}", "send:reminder", "stage:retention", "wake:+3d"], state={"sent": 1}),
    Case("busy in another journey: skipped, reason kept", opened(busy_with=("cod_confirmation",)), None, facts(), RO,
         [f"start:{REORDER}", "finish:skipped_busy"], state={"skipped": "cod_confirmation"}),
    Case("opened twice: nothing", opened(), run("reorder", REMINDED, subject=REORDER), facts(), RO, []),
    Case("3 days on: the one follow-up", TimerFired(T0 + 3 * D), run("reorder", REMINDED, subject=REORDER), facts(), RO,
         ["update(sent)", "send:follow_up", "wake:+14d"], now=T0 + 3 * D),
    Case("they replied: no follow-up, keep listening", TimerFired(T0 + 3 * D), run("reorder", {**REMINDED, "replied": True}, subject=REORDER),
         facts(), RO, ["wake:+14d"], now=T0 + 3 * D),
    Case("window over: no reorder", TimerFired(T0 + 14 * D), run("reorder", {**REMINDED, "sent": 2}, subject=REORDER), facts(), RO,
         ["finish:no_reorder"], now=T0 + 14 * D),
    Case("reordered inside the window: attributed, with the product's lines as its revenue (not the order's total)",
         reordered(T0 + 5 * D), run("reorder", REMINDED, subject=REORDER), facts(), RO,
         ["update(attributed,currency,order_id,reordered,revenue)", "wake:none", "finish:reordered"],
         state={"attributed": True, "revenue": "999.00"}),
    Case("reordered after the window: not attributed", reordered(T0 + 15 * D), run("reorder", REMINDED, subject=REORDER), facts(), RO,
         ["update(attributed,currency,order_id,reordered,revenue)", "wake:none", "finish:reordered"], state={"attributed": False, "revenue": "0"}),
    Case("reordered after the reminder went out: attributed", reordered(T0 + 5 * D), run("reorder", REMINDED, subject=REORDER),
         facts(reminders_sent=(T0 + H,)), RO, ["update(attributed,currency,order_id,reordered,revenue)", "wake:none", "finish:reordered"],
         state={"attributed": True, "revenue": "999.00"}),
    Case("reordered though the reminder never went out (skipped: no consent; or still held): not attributed", reordered(T0 + 5 * D),
         run("reorder", REMINDED, subject=REORDER), facts(reminders_sent=()), RO,
         ["update(attributed,currency,order_id,reordered,revenue)", "wake:none", "finish:reordered"], state={"attributed": False, "revenue": "0"}),
    Case("reordered before the only reminder that went out: not attributed", reordered(T0 + 5 * D),
         run("reorder", REMINDED, subject=REORDER), facts(reminders_sent=(T0 + 5 * D + H,)), RO,
         ["update(attributed,currency,order_id,reordered,revenue)", "wake:none", "finish:reordered"], state={"attributed": False}),
    Case("another product: keep waiting", reordered(T0 + 5 * D, product="777"), run("reorder", REMINDED, subject=REORDER), facts(), RO, []),
    Case("a reply (this run hears all of them): no follow-up; a reminder still waiting goes on", text("thanks!"),
         run("reorder", REMINDED, subject=REORDER), facts(), RO, ["update(replied)", "wake:+14d"]),
    Case("a reply after the follow-up was queued: the follow-up, if it still waits, is withdrawn", text("thanks!"),
         run("reorder", {**REMINDED, "sent": 2}, subject=REORDER), facts(), RO, ["update(replied)", "withdraw", "wake:+14d"]),
    Case("a Confirm tap on a COD question of another order: the follow-up still goes", tap("cod_confirm"),
         run("reorder", REMINDED, subject=REORDER), facts(**routed("cod_confirmation"), reply_quoted=True), RO, []),
    Case("words quoting nothing, while a delivery update is what reached her last: the follow-up still goes", text("where is it?"),
         run("reorder", REMINDED, subject=REORDER), facts(**routed("delivery")), RO, []),
    Case("a reply quoting this reminder: no follow-up", text("not now"),
         run("reorder", REMINDED, subject=REORDER), facts(**routed("reorder", REORDER), reply_quoted=True), RO,
         ["update(replied)", "wake:+14d"]),
]


@table(REORDER_CASES)
def test_reorder(case: Case) -> None:
    check(Reorder(), case)


# ---- through the app: the facts decide is given ---------------------------------------------------

class Clock:
    def __init__(self, now: datetime):
        self.now = now

    def __call__(self) -> datetime:
        return self.now


CART_TEMPLATES = [
    {"step": "checkout_recovery.first", "name": "cart_v1", "category": "marketing", "body_text": "You left {{1}}: {{2}}",
     "body": ["reorder.product", "checkout.recovery_url"]},
    {"step": "checkout_recovery.second", "name": "cart_v2", "category": "marketing", "body_text": "Still there: {{1}}",
     "body": ["checkout.recovery_url"]},
]
CART_JOURNEY = {"checkout_recovery": {"abandon_after_minutes": 30, "ladder_minutes": [0, 360]}}
SHOPS = {"shop-a": ("shop-a.myshopify.com", SECRETS["shop_a"]), "shop-b": ("shop-b.myshopify.com", SECRETS["shop_b"])}


def shopify_app(db_url: str, *stores: int, **store: Any):
    raw = settings_dict(db_url)
    for i in stores:
        raw["stores"][i].update(policy={"quiet_hours": ""}, **store)
    return parse_settings(raw, environ={})


def post(client, topic: str, payload: dict, shop: str = "shop-a") -> None:
    domain, secret = SHOPS[shop]
    body = dumps(payload)
    assert client.post("/webhooks/shopify", content=body, headers=shopify_headers(body, secret, domain, topic)).status_code == 200


def post_wa(client, value: dict, phone_number_id: str = PHONE_ID_A) -> None:
    env = {"object": "whatsapp_business_account", "entry": [{"id": "1", "changes": [{"field": next(iter(value)), "value": {
        "messaging_product": "whatsapp", "metadata": {"display_phone_number": "1", "phone_number_id": phone_number_id}, **value}}]}]}
    env["entry"][0]["changes"][0]["field"] = "user_preferences" if "user_preferences" in value else "messages"
    body = json.dumps(env).encode()
    assert client.post("/webhooks/whatsapp", content=body, headers={"X-Hub-Signature-256": meta_signature(body, SECRETS["wa_app"])}).status_code == 200


def abandoned(token: str, phone: str | None, email: str) -> dict:
    c = load_json(FIXTURES / "shopify" / "checkouts_create.sample.json")
    c.update(token=token, phone=phone, email=email, buyer_accepts_marketing=True, buyer_accepts_sms_marketing=True, completed_at=None,
             created_at="2026-11-20T06:00:00Z", updated_at="2026-11-20T06:00:00Z")
    return c


def runs(runtime) -> dict[tuple[int, str, str], Any]:
    with runtime.db.engine.connect() as conn:
        return {(r.store_id, r.journey, r.subject): r for r in conn.execute(select(m.JourneyRun))}


def steps(runtime, journey: str | None = None) -> list[tuple[str, str, str]]:
    with runtime.db.engine.connect() as conn:
        q = select(m.OutboxMessage).where(m.OutboxMessage.channel == "whatsapp").order_by(m.OutboxMessage.id)
        return [(o.journey, o.payload["subject"], o.step) for o in conn.execute(q) if journey in (None, o.journey)]


def test_a_phone_less_order_with_the_same_email_ends_the_checkout_run_as_recovered(db_url):
    settings = shopify_app(db_url, 0, 1, templates=CART_TEMPLATES, journeys=CART_JOURNEY)
    clock = Clock(T0)
    with running_app(settings) as (client, runtime):
        runtime.processor.clock = clock
        post(client, "checkouts/create", abandoned("tokA", "+91 98765 43210", "Asha.Rao@Example.com"))
        post(client, "checkouts/create", abandoned("tokB", "+91 98765 43210", "Asha.Rao@Example.com"), shop="shop-b")  # same person, other store
        runtime.processor.drain()
        clock.now = T0 + 10 * MIN  # ten minutes after abandonment: the first reminders
        runtime.processor.process_timers()
        asyncio.run(Dispatcher(runtime.db, settings, runtime.store_ids, DryRunSender(), clock=clock).drain())
        o = load_json(FIXTURES / "shopify" / "orders_create.sample.json")
        o.pop("customer")  # a guest order: no customer id, and no phone anywhere
        o["shipping_address"]["phone"] = o["billing_address"]["phone"] = None
        o.update(id=5555, name="#5555", phone=None, email="  asha.rao@EXAMPLE.com ", contact_email=None, checkout_token="another",
                 financial_status="paid", payment_gateway_names=["razorpay"], cancelled_at=None, test=False,
                 created_at="2026-11-20T07:00:00Z", updated_at="2026-11-20T07:00:00Z")
        post(client, "orders/create", o)
        runtime.processor.drain()
        clock.now = T0 + 8 * H  # the second reminders would be due
        runtime.processor.process_timers()
        found = runs(runtime)
        with runtime.db.engine.connect() as conn:
            placed = conn.execute(select(m.Order.contact_id, m.Order.total)).one()
        sent = steps(runtime)
    a, b = runtime.store_ids["shop-a"], runtime.store_ids["shop-b"]
    mine = found[(a, "checkout_recovery", "checkout:tokA")]
    assert (mine.status, mine.state["outcome"], mine.state["recovered"], mine.state["order_id"]) == ("finished", "recovered", True, "5555")
    assert mine.state["revenue"] == str(placed.total) and placed.contact_id == mine.contact_id
    other = found[(b, "checkout_recovery", "checkout:tokB")]
    assert other.status == "active" and "order_id" not in other.state  # shop-b's customer never ordered there
    assert sent.count(("checkout_recovery", "checkout:tokA", "second")) == 0
    assert ("checkout_recovery", "checkout:tokB", "second") in sent


def test_a_phone_less_order_with_an_address_two_customers_typed_is_tied_to_neither(db_url):
    """Asha and Ravi both typed the placeholder "noemail@gmail.com" at checkout (two phones, two
    contacts). A guest's order with no phone and that address used to be tied to the newest of them:
    she got its confirmation and COD question, and her cart counted as recovered by a stranger's
    order. Now the order stays without a contact, and both carts go on."""
    settings = shopify_app(db_url, 0, templates=CART_TEMPLATES, journeys=CART_JOURNEY)
    clock = Clock(T0)
    with running_app(settings) as (client, runtime):
        runtime.processor.clock = clock
        post(client, "checkouts/create", abandoned("tokA", "+91 98765 43210", "noemail@gmail.com"))
        ravi = abandoned("tokB", "+91 98123 45678", "NoEmail@gmail.com ")
        ravi["customer"] = {**ravi["customer"], "id": 7001}
        post(client, "checkouts/create", ravi)
        runtime.processor.drain()
        o = load_json(FIXTURES / "shopify" / "orders_create.sample.json")
        o.pop("customer")
        o["shipping_address"]["phone"] = o["billing_address"]["phone"] = None
        o.update(id=5556, name="#5556", phone=None, email="noemail@gmail.com", contact_email=None, checkout_token="another",
                 financial_status="paid", payment_gateway_names=["razorpay"], cancelled_at=None, test=False,
                 created_at="2026-11-20T07:00:00Z", updated_at="2026-11-20T07:00:00Z")
        post(client, "orders/create", o)
        clock.now = T0 + 10 * MIN
        runtime.processor.drain()
        found = runs(runtime)
        with runtime.db.engine.connect() as conn:
            placed = conn.execute(select(m.Order.contact_id)).scalar_one()
    a = runtime.store_ids["shop-a"]
    assert placed is None
    assert [(found[(a, "checkout_recovery", f"checkout:{t}")].status, "order_id" in found[(a, "checkout_recovery", f"checkout:{t}")].state)
            for t in ("tokA", "tokB")] == [("active", False), ("active", False)]


def test_opt_outs_from_outside_the_chat_end_checkout_runs_with_their_reason(db_url):
    settings = shopify_app(db_url, 0, templates=CART_TEMPLATES, journeys=CART_JOURNEY)
    clock = Clock(T0)
    with running_app(settings) as (client, runtime):
        runtime.processor.clock = clock
        post(client, "checkouts/create", abandoned("tokA", "+91 98765 43210", "asha@example.com"))  # customer 603851970716743426
        other = abandoned("tokB", "+91 98123 45678", "ravi@example.com")
        other["customer"] = {**other["customer"], "id": 7001}
        post(client, "checkouts/create", other)
        runtime.processor.drain()
        clock.now = T0 + 10 * MIN
        runtime.processor.process_timers()
        # A unsubscribes in the store (SMS marketing consent webhook: no phone, the customer id); B texts STOP
        post(client, "customers_marketing_consent/update", {"id": 603851970716743426, "phone": None, "sms_marketing_consent": {
            "state": "unsubscribed", "opt_in_level": "single_opt_in", "consent_updated_at": "2026-11-20T06:45:00Z",
            "consent_collected_from": "OTHER"}})
        post_wa(client, {"contacts": [{"profile": {"name": "Ravi"}, "wa_id": "919812345678"}], "messages": [
            {"from": "919812345678", "id": "wamid.S1", "timestamp": "1795158000", "type": "text", "text": {"body": "Stop"}}]})
        runtime.processor.drain()
        clock.now = T0 + 8 * H
        runtime.processor.process_timers()
        found = runs(runtime)
        sent = steps(runtime)
    sid = runtime.store_ids["shop-a"]
    a, b = found[(sid, "checkout_recovery", "checkout:tokA")], found[(sid, "checkout_recovery", "checkout:tokB")]
    assert (a.status, a.state["outcome"], a.state["opted_out_via"]) == ("finished", "opted_out", "shopify_sms_marketing")
    assert (b.status, b.state["outcome"], b.state["opted_out_via"]) == ("finished", "opted_out", "whatsapp_keyword_stop")
    assert a.next_due_at is None and b.next_due_at is None
    assert [s for _, _, s in sent] == ["first", "first"]  # no second reminder for either


def test_a_phone_less_opt_out_in_the_same_batch_finds_the_customer_by_id(db_url):
    """The checkout (phone and customer id) and the store's SMS unsubscribe (no phone, the
    customer id) arrive together and are processed in one batch: the batch's lookup by
    customer id finds the contact created moments earlier in it, not only stored ones."""
    settings = shopify_app(db_url, 0, templates=CART_TEMPLATES, journeys=CART_JOURNEY)
    clock = Clock(T0)
    with running_app(settings) as (client, runtime):
        runtime.processor.clock = clock
        post(client, "checkouts/create", abandoned("tokA", "+91 98765 43210", "asha@example.com"))  # customer 603851970716743426
        post(client, "customers_marketing_consent/update", {"id": 603851970716743426, "phone": None, "sms_marketing_consent": {
            "state": "unsubscribed", "opt_in_level": "single_opt_in", "consent_updated_at": "2026-11-20T06:45:00Z",
            "consent_collected_from": "OTHER"}})
        assert runtime.processor.drain() == 2
        clock.now = T0 + 8 * H
        runtime.processor.process_timers()
        found = runs(runtime)
        sent = steps(runtime)
        with runtime.db.engine.connect() as conn:
            contacts = conn.execute(select(m.Contact.id, m.Contact.consent_marketing)).all()
    run = found[(runtime.store_ids["shop-a"], "checkout_recovery", "checkout:tokA")]
    assert len(contacts) == 1 and contacts[0].consent_marketing == "revoked"
    assert (run.status, run.state["outcome"], run.state["opted_out_via"]) == ("finished", "opted_out", "shopify_sms_marketing")
    assert not [s for s in sent if s[0] == "checkout_recovery"]


def test_whatsapps_own_marketing_stop_ends_a_reorder_run_before_its_follow_up(db_url):
    templates = [
        {"step": "reorder.reminder", "name": "reorder_v1", "category": "marketing", "body_text": "Restock {{1}}: {{2}}",
         "body": ["reorder.product", "reorder.link"]},
        {"step": "reorder.follow_up", "name": "reorder_nudge_v1", "category": "marketing", "body_text": "Still time: {{1}}", "body": ["reorder.link"]},
    ]
    settings = shopify_app(db_url, 0, templates=templates, journeys={"reorder": {"cycles": {"NEEM-100": "30d"}, "follow_up_days": 3}})
    clock = Clock(T0)
    with running_app(settings) as (client, runtime):
        runtime.processor.clock = clock
        consent = load_json(FIXTURES / "shopify" / "customers_whats_app_marketing_consent_update.sample.json")
        consent.update(customer_id=115310627314723954, phone_number="+919876543210")
        consent["whats_app_marketing_consent"] = {"state": "subscribed", "opt_in_level": "single_opt_in", "updated_at": "2026-08-01T00:00:00Z",
                                                  "collected_from": "other"}
        post(client, "customers_whats_app_marketing_consent/update", consent)
        o = load_json(FIXTURES / "shopify" / "orders_create.sample.json")
        o.update(id=1001, name="#1001", financial_status="paid", payment_gateway_names=["razorpay"], cancelled_at=None, test=False,
                 created_at=T0.isoformat(), updated_at=T0.isoformat(), phone="+91 98765 43210", checkout_token="tok1001")
        o["line_items"] = [{**o["line_items"][0], "id": 10010, "product_id": 9001, "variant_id": 49001, "sku": "NEEM-100",
                            "title": "Neem face wash", "quantity": 1, "price": "249.50"}]
        post(client, "orders/create", o)
        f = load_json(FIXTURES / "shopify" / "fulfillments_update.sample.json")
        f.update(id=77, order_id=1001, status="success", shipment_status="delivered", created_at=T0.isoformat(), updated_at=(T0 + 4 * D).isoformat())
        post(client, "fulfillments/update", f)
        runtime.processor.drain()
        store, sid = settings.stores[0], runtime.store_ids["shop-a"]
        clock.now = T0 + 31 * D + H  # delivered (T0 + 4 days) + 30 days - 3 days lead
        refresh_windows(runtime.db, store, sid, clock.now)
        run_reorder_tick(runtime.db, store, sid, clock.now)
        post_wa(client, {"contacts": [{"profile": {"name": "Asha"}, "wa_id": "919876543210"}], "user_preferences": [
            {"wa_id": "919876543210", "detail": "User requested to stop marketing messages", "category": "marketing_messages",
             "value": "stop", "timestamp": int((clock.now + H).timestamp())}]})
        runtime.processor.drain()
        clock.now += 4 * D  # the follow-up would be due
        runtime.processor.process_timers()
        [r] = [r for k, r in runs(runtime).items() if k[1] == "reorder"]
        sent = steps(runtime, "reorder")
    assert (r.status, r.state["outcome"], r.state["opted_out_via"]) == ("finished", "opted_out", "whatsapp_preference_stop")
    assert [s for _, _, s in sent] == ["reminder"]


WOO_TEMPLATES = [
    {"step": "checkout_recovery.first", "name": "woo_cart_v1", "category": "marketing", "body_text": "Finish your order: {{1}}",
     "body": ["checkout.recovery_url"]},
    {"step": "payment_recovery.remind", "name": "woo_pay_v1", "category": "utility", "body_text": "Pay for {{1}}: {{2}}",
     "body": ["order.name", "order.payment_url"]},
    {"step": "order_confirmation.sent", "name": "woo_thanks_v1", "category": "utility", "body_text": "Thank you for order {{1}}",
     "body": ["order.name"]},
]


def woo_app(db_url: str, journeys: dict):
    raw = settings_dict(db_url)
    raw["stores"][2].update(templates=WOO_TEMPLATES, journeys=journeys, policy={"quiet_hours": ""})
    return parse_settings(raw, environ={})


def post_woo(client, status: str, modified: str, *, paid: bool = False, topic: str = "order.created") -> None:
    o = load_json(FIXTURES / "woocommerce" / "order.created.rest-v3-docs-example.json")
    o.update(status=status, payment_method="stripe", payment_method_title="Card", date_created_gmt="2026-11-20T06:30:00", date_modified_gmt=modified,
             date_paid=modified if paid else None, date_paid_gmt=modified if paid else None)
    o["billing"]["phone"] = "+1 415 555 2671"
    body = dumps(o)
    assert client.post("/webhooks/woocommerce/woo", content=body, headers=woo_headers(body, SECRETS["woo"], topic)).status_code == 200


def test_a_woocommerce_pending_order_runs_the_cart_ladder_with_its_pay_link_and_nothing_else(db_url):
    settings = woo_app(db_url, {"checkout_recovery": {"abandon_after_minutes": 30, "ladder_minutes": [0]}, "payment_recovery": {"after_minutes": 60}})
    clock = Clock(T0)
    with running_app(settings) as (client, runtime):
        runtime.processor.clock = clock
        post_wa(client, {"contacts": [{"profile": {"name": "John"}, "wa_id": "14155552671"}], "user_preferences": [
            {"wa_id": "14155552671", "detail": "resume", "category": "marketing_messages", "value": "resume", "timestamp": 1795000000}]},
            phone_number_id="1122334455667")
        post_woo(client, "pending", "2026-11-20T06:30:00")
        runtime.processor.drain()
        sender = DryRunSender()
        for minutes in (31, 120, 180):  # the cart reminder is due; payment_recovery's hour is long past
            clock.now = T0 + minutes * MIN
            runtime.processor.process_timers()
            asyncio.run(Dispatcher(runtime.db, settings, runtime.store_ids, sender, clock=clock).drain())
        post_woo(client, "processing", "2026-11-20T09:00:00", paid=True, topic="order.updated")
        runtime.processor.drain()
        found = runs(runtime)
    sid = runtime.store_ids["woo"]
    [(_, message)] = sender.sent
    assert message.name == "woo_cart_v1"
    assert message.body[0].text == "https://bloom.example/checkout/order-pay/727/?pay_for_order=true&key=wc_order_58d2d042d1d"
    r = found[(sid, "checkout_recovery", "order:727")]
    assert (r.status, r.state["outcome"], r.state["recovered"], r.state["revenue"]) == ("finished", "recovered", True, "29.35")
    assert not any(k[1] == "payment_recovery" for k in found)  # one home: no pay reminder on top


def dispatcher(runtime, settings, clock: Clock, sender: DryRunSender) -> Callable[[], list[str]]:
    """Send what is due now (dry run); returns the names of every template sent so far."""
    def dispatch() -> list[str]:
        asyncio.run(Dispatcher(runtime.db, settings, runtime.store_ids, sender, clock=clock).drain())
        return [message.name for _, message in sender.sent]
    return dispatch


def test_a_woocommerce_order_is_thanked_for_once_it_is_paid_not_while_its_cart_reminder_goes_out(db_url):
    settings = woo_app(db_url, {"order_confirmation": {}, "checkout_recovery": {"abandon_after_minutes": 30, "ladder_minutes": [0]}})
    clock = Clock(T0)
    sender = DryRunSender()
    with running_app(settings) as (client, runtime):
        runtime.processor.clock = clock
        dispatch = dispatcher(runtime, settings, clock, sender)
        post_wa(client, {"contacts": [{"profile": {"name": "John"}, "wa_id": "14155552671"}], "user_preferences": [
            {"wa_id": "14155552671", "detail": "resume", "category": "marketing_messages", "value": "resume", "timestamp": 1795000000}]},
            phone_number_id="1122334455667")
        post_woo(client, "pending", "2026-11-20T06:30:00")  # gone to the payment page, not paid
        runtime.processor.drain()
        assert dispatch() == []
        clock.now = T0 + 31 * MIN
        runtime.processor.process_timers()
        assert dispatch() == ["woo_cart_v1"]  # the pay link: no "thank you for your order" beside it
        clock.now = T0 + 150 * MIN
        post_woo(client, "processing", "2026-11-20T09:00:00", paid=True, topic="order.updated")
        runtime.processor.drain()
        assert dispatch() == ["woo_cart_v1", "woo_thanks_v1"]
        post_woo(client, "completed", "2026-11-20T10:00:00", paid=True, topic="order.updated")
        runtime.processor.drain()
        assert dispatch() == ["woo_cart_v1", "woo_thanks_v1"]  # thanked once
        found = runs(runtime)
    sid = runtime.store_ids["woo"]
    assert found[(sid, "order_confirmation", "order:727")].state["outcome"] == "sent"
    assert found[(sid, "checkout_recovery", "order:727")].state["outcome"] == "recovered"


def test_without_checkout_recovery_a_woocommerce_pending_order_gets_the_pay_reminder(db_url):
    settings = woo_app(db_url, {"payment_recovery": {"after_minutes": 60}})
    clock = Clock(T0)
    with running_app(settings) as (client, runtime):
        runtime.processor.clock = clock
        post_woo(client, "pending", "2026-11-20T06:30:00")
        runtime.processor.drain()
        clock.now = T0 + 61 * MIN
        runtime.processor.process_timers()
        sent = steps(runtime)
    assert sent == [("payment_recovery", "order:727", "remind")]


def paid_order_by_email(order_id: int, email: str, at: str) -> dict:
    """A paid Shopify order from a phone no checkout used (+91 98123 45678) and ``email``, no checkout token of ours."""
    o = load_json(FIXTURES / "shopify" / "orders_create.sample.json")
    o["customer"] = {**o["customer"], "id": 99001, "phone": None, "email": email}
    o["shipping_address"]["phone"] = o["billing_address"]["phone"] = None
    o.update(id=order_id, name=f"#{order_id}", phone="+91 98123 45678", email=email, checkout_token="another",
             financial_status="paid", payment_gateway_names=["razorpay"], cancelled_at=None, test=False,
             created_at=at, updated_at=at)
    return o


def test_an_order_under_another_phone_with_the_same_email_ends_the_checkout_run(db_url):
    """The issue: the run stops when an order arrives for that checkout, phone OR email. Asha
    checked out with one number and bought with another; the email is the same (any case)."""
    settings = shopify_app(db_url, 0, templates=CART_TEMPLATES, journeys=CART_JOURNEY)
    clock = Clock(T0)
    with running_app(settings) as (client, runtime):
        runtime.processor.clock = clock
        post(client, "checkouts/create", abandoned("tokA", "+91 98765 43210", "asha.rao@example.com"))
        post(client, "checkouts/create", abandoned("tokC", "+91 99000 11111", "chitra@example.com"))  # a control
        runtime.processor.drain()
        clock.now = T0 + 10 * MIN
        runtime.processor.process_timers()  # both first reminders
        asyncio.run(Dispatcher(runtime.db, settings, runtime.store_ids, DryRunSender(), clock=clock).drain())
        post(client, "orders/create", paid_order_by_email(5556, " Asha.Rao@Example.COM", "2026-11-20T07:00:00Z"))
        runtime.processor.drain()
        clock.now = T0 + 8 * H
        runtime.processor.process_timers()
        found = runs(runtime)
        with runtime.db.engine.connect() as conn:
            buyer = conn.execute(select(m.Order.contact_id)).scalar_one()
        sent = steps(runtime)
    sid = runtime.store_ids["shop-a"]
    mine, control = found[(sid, "checkout_recovery", "checkout:tokA")], found[(sid, "checkout_recovery", "checkout:tokC")]
    assert buyer != mine.contact_id  # another phone: another contact
    assert (mine.status, mine.state["outcome"], mine.state["order_id"]) == ("finished", "recovered", "5556")
    assert sent.count(("checkout_recovery", "checkout:tokA", "second")) == 0
    assert control.status == "active" and ("checkout_recovery", "checkout:tokC", "second") in sent


def test_a_strangers_order_with_the_placeholder_address_she_typed_does_not_end_her_cart(db_url):
    """Asha typed "noemail@gmail.com" at checkout and got her first reminder. Ravi, another phone and
    another name, typed the same placeholder and bought. His order is not hers: her run goes on (no
    false recovery credited, her next reminder still due)."""
    settings = shopify_app(db_url, 0, templates=CART_TEMPLATES, journeys=CART_JOURNEY)
    clock = Clock(T0)
    with running_app(settings) as (client, runtime):
        runtime.processor.clock = clock
        post(client, "checkouts/create", abandoned("tokA", "+91 98765 43210", "noemail@gmail.com"))
        runtime.processor.drain()
        clock.now = T0 + 10 * MIN
        runtime.processor.process_timers()
        asyncio.run(Dispatcher(runtime.db, settings, runtime.store_ids, DryRunSender(), clock=clock).drain())
        ravi = paid_order_by_email(5557, "noemail@gmail.com", "2026-11-20T07:00:00Z")
        ravi["customer"].update(first_name="Ravi", last_name="Kumar")
        post(client, "orders/create", ravi)
        runtime.processor.drain()
        clock.now = T0 + 8 * H
        runtime.processor.process_timers()
        found = runs(runtime)
        sent = steps(runtime)
    mine = found[(runtime.store_ids["shop-a"], "checkout_recovery", "checkout:tokA")]
    assert mine.status == "active" and "order_id" not in mine.state
    assert ("checkout_recovery", "checkout:tokA", "second") in sent


def test_an_order_with_the_checkouts_email_in_the_same_batch_ends_its_run(db_url):
    """Checkout and order (another phone, the same email) processed in one batch: the email
    match finds the contact created moments earlier in that batch, not only stored ones."""
    settings = shopify_app(db_url, 0, templates=CART_TEMPLATES, journeys=CART_JOURNEY)
    clock = Clock(T0)
    with running_app(settings) as (client, runtime):
        runtime.processor.clock = clock
        post(client, "checkouts/create", abandoned("tokA", "+91 98765 43210", "asha.rao@example.com"))
        post(client, "orders/create", paid_order_by_email(5557, "ASHA.RAO@example.com ", "2026-11-20T06:40:00Z"))
        assert runtime.processor.drain() == 2
        clock.now = T0 + 8 * H
        runtime.processor.process_timers()
        found = runs(runtime)
        sent = steps(runtime)
    run = found[(runtime.store_ids["shop-a"], "checkout_recovery", "checkout:tokA")]
    assert run.status == "finished" and run.state["order_id"] == "5557"
    assert not [s for s in sent if s[0] == "checkout_recovery"]
