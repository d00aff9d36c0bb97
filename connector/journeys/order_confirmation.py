"""Order confirmation (utility): one message when a prepaid order is placed.

A WooCommerce order exists before its payment: a ``pending`` or ``failed`` order is a
customer who went to the payment page and has not paid (``_common.unpaid_order``), so
thanking them for the order would be premature, and contradict the cart or pay reminder
they get for it. Such an order is confirmed when it is paid or otherwise moves on (on-hold
for a bank transfer, as one created so is): ``after_payment``, on for WooCommerce stores.
A Shopify order exists only once its checkout is complete, so a pending one (a bank
deposit) is confirmed as placed. The run records the wait
(outcome ``awaiting_payment``), so the payment confirms it once and an update of an order
the connector never saw placed confirms nothing.

A sale at the store's till (Shopify POS) is not confirmed unless ``include_pos``: the customer
has the goods and the receipt in hand.

An order cancelled (or binned), refunded in full or its payment voided while its thanks still waits (held for
quiet hours, a retry behind a WhatsApp outage) withdraws it: "thanks for your order" must not reach her after
the cancel or the refund. A partial refund leaves the order standing, and its thanks goes.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, ClassVar

from pydantic import Field

from connector import events as ev
from connector.journeys._common import cancelled_order, deleted_order, order_context, unpaid_order, withdraw_for_cancel
from connector.journeys.engine import Command, Facts, Finish, JourneyConfig, Run, Send, Start

AWAITING = "awaiting_payment"


class OrderConfirmationConfig(JourneyConfig):
    after_payment: bool = Field(True, description="WooCommerce only: a pending/failed order (made before its payment) is "
                                                  "confirmed once it is paid, not when it is created")
    include_pos: bool = Field(False, description="also thank for sales at the store's till (Shopify POS): the customer "
                                                 "is in the shop with the receipt, so by default they get nothing")


class OrderConfirmation:
    name: ClassVar[str] = "order_confirmation"
    stage: ClassVar[str] = "post_purchase"  # whose cases its hand-offs are (handoffs.journey_stage)
    config_model: ClassVar[type[JourneyConfig]] = OrderConfirmationConfig
    template_steps: ClassVar[tuple[str, ...]] = ("sent",)

    def subject(self, event: Any, facts: Facts) -> str | None:
        if isinstance(event, ev.OrderDeleted):
            return deleted_order(event)
        if isinstance(event, (ev.OrderPlaced, ev.OrderUpdated, ev.OrderPaid, ev.OrderCancelled)) and facts.order and not facts.order.is_cod:
            return f"order:{event.order.external_id}"
        return None

    def decide(self, event: Any, run: Run | None, facts: Facts, config: OrderConfirmationConfig, now: datetime) -> list[Command]:
        if run is not None and run.state.get("outcome") != AWAITING and (cancelled_order(event, facts) or _no_money_kept(event)):
            return withdraw_for_cancel(run)  # its thanks may still wait (quiet hours, an outage's retry)
        if facts.contact_id is None or facts.order is None or facts.order.cancelled or _no_money_kept(event):
            return []
        if run is None:
            if not isinstance(event, ev.OrderPlaced):
                return []  # an order first seen placed decides; later updates of an unknown order confirm nothing
            if facts.order.channel == ev.SalesChannel.POS and not config.include_pos:
                return []
            start = Start(f"order:{facts.order.external_id}", facts.contact_id)
            if config.after_payment and unpaid_order(event.order):
                return [start, Finish(AWAITING, skip_waiting=False)]
            return [start, Send("sent", order_context(facts)), Finish("sent", skip_waiting=False)]
        if run.state.get("outcome") == AWAITING and isinstance(event, (ev.OrderUpdated, ev.OrderPaid)) and not unpaid_order(event.order):
            # paid, or moved on without a payment yet (on-hold for a bank transfer, processing): confirmed as
            # such an order is when it is created that way
            return [Send("sent", order_context(facts)), Finish("sent", skip_waiting=False)]
        return []


def _no_money_kept(event: Any) -> bool:
    """The event shows the order refunded in full or its payment voided, without a cancel (a Shopify refund of
    every line, a WooCommerce ``refunded`` order): no purchase of hers any more (``events.called_off``)."""
    order = getattr(event, "order", None)
    return isinstance(order, ev.Order) and order.payment_state in ev.NO_MONEY_KEPT
