"""Small helpers shared by the built-in journeys."""

from __future__ import annotations

from typing import Any

from connector import events as ev
from connector.journeys.engine import Command, Facts, Finish, Run, Update, Wake, Withdraw


def order_context(facts: Facts) -> dict[str, Any]:
    """Template values every order-related step can use. ``order.total`` is what the customer was
    charged in their own currency (Shopify Markets: the presentment money), else the shop's."""
    ctx: dict[str, Any] = {"customer.first_name": facts.first_name, "store.name": facts.store_name}
    o = facts.order
    if o is not None:
        charged = (str(o.customer_total), o.customer_currency) if o.customer_total is not None and o.customer_currency else None
        ctx.update({
            "order.name": o.name,
            "order.total": charged or (str(o.total), o.currency),
            "order.status_url": o.status_url,
            "order.payment_url": o.payment_url,
        })
    if facts.fulfillment:
        ctx.update({f"fulfillment.{k}": v for k, v in facts.fulfillment.items() if k in ("tracking_company", "tracking_number", "tracking_url")})
    return ctx


def deleted_order(event: Any) -> str | None:
    """The subject of the order the store binned or deleted (``OrderDeleted``), for a journey whose runs are orders'."""
    return f"order:{event.order_external_id}" if isinstance(event, ev.OrderDeleted) else None


def end_for_deleted_order(run: Run | None) -> list[Command]:
    """The store binned or deleted the order: its active run ends, and what it still has waiting (a
    reminder held for quiet hours, a retry) is skipped; its pay link would lead nowhere."""
    return [Wake(None), Finish("order_deleted")] if run is not None and run.status == "active" else []


def cancelled_order(event: Any, facts: Facts) -> bool:
    """The event says the order is called off: cancelled, binned, or an update showing it cancelled
    (its ``orders/cancelled`` may have been dropped as older)."""
    return isinstance(event, (ev.OrderCancelled, ev.OrderDeleted)) or (
        isinstance(event, ev.OrderUpdated) and facts.order is not None and facts.order.cancelled)


def withdraw_for_cancel(run: Run, *, finish: bool = False) -> list[Command]:
    """The order was cancelled or binned: what the run still has waiting (a message held for quiet
    hours, a retry behind an outage) is withdrawn, so it never reaches her after the cancel; once
    (the cancel and the update that echoes it both arrive: the second finds ``cancelled`` kept).
    ``finish``: an active run also ends (``Finish`` withdraws the same way)."""
    if run.state.get("cancelled"):
        return []
    end: Command = Finish("order_cancelled") if finish and run.status == "active" else Withdraw()
    return [Update({"cancelled": True}), end]


def replied_here(event: Any, facts: Facts, journey: str) -> str | None:
    """The subject of this journey's run that a button tap answers (routed by the tapped message)."""
    if facts.extra.get("reply_journey") == journey:
        return facts.extra.get("reply_subject")
    return None


def answers_run(run: Any, facts: Facts, journey: str) -> bool:
    """Whether a reply (which reaches all of a follow-the-contact journey's runs for her) is this
    run's: it quotes one of this run's messages (or of the run whose ladder it took over,
    ``continues``), or, quoting nothing, it answers no other journey (the runner's
    ``reply_journey``: the run whose message reached her last). A Confirm tap on a COD question,
    or words after a delivery update, leave a cart ladder or a reorder follow-up to go on."""
    answered, subject = facts.extra.get("reply_journey"), facts.extra.get("reply_subject")
    if facts.extra.get("reply_quoted"):
        return answered == journey and subject in (run.subject, *continued(run.state))
    return answered in (None, journey)


def continued(state: dict[str, Any]) -> tuple[str, ...]:
    """The runs whose ladder a run went on with, so whose reminders are its own: the one it took over
    (``continues``) and those that one had taken over (``continues_also``: a cart, then the order she left
    unpaid, cancelled, then the order she placed instead)."""
    first = state.get("continues")
    return (first, *state.get("continues_also", ())) if first else ()


UNPAID_STATUSES = ("pending", "failed")


def unpaid_order(order: Any) -> bool:
    """A prepaid order whose payment never completed: WooCommerce's ``pending`` / ``failed``
    (its order exists before the payment). Only WooCommerce stores may route these to
    checkout recovery (``checkout_recovery.settle_woocommerce_settings``): on Shopify the platform
    status is the financial status, and a pending Shopify order is a placed order."""
    return (order.platform_status in UNPAID_STATUSES and not order.is_cod and order.cancelled_at is None
            and order.payment_state in (ev.PaymentState.PENDING, ev.PaymentState.FAILED))


def awaits_payment(order: Any) -> bool:
    """An order she placed whose money has not come, by a means that is no cash on delivery: WooCommerce's
    ``on-hold`` (a bank transfer or cheque: "awaiting payment"; never cancelled by WooCommerce on its own),
    Shopify's ``pending`` with a manual method (a bank deposit, a money order), and every ``unpaid_order``.
    She checked out, but it is no purchase yet: a cart credits it only once it is paid. A COD order is
    (its money comes with the parcel: credited as placed), whatever status its gateway gives it. Reads only
    ``is_cod``, ``cancelled_at`` and ``payment_state`` (a string enum): an event's order and a stored orders row
    alike, so the reports judge a cart's order by this same rule (``reports._awaits_payment``)."""
    return (not order.is_cod and order.cancelled_at is None
            and order.payment_state in (ev.PaymentState.PENDING, ev.PaymentState.FAILED))


def cart_ladder_takes(event: Any, facts: Facts) -> bool:
    """Whether a WooCommerce unpaid order runs the cart ladder (checkout_recovery, marketing) rather
    than the pay reminder (payment_recovery, utility), when both journeys take unpaid orders
    (``unpaid_orders_by_consent``): only for a customer the ladder can reach (marketing consent,
    not opted out, reachable: the runner's ``marketing_ok``), else the gate would skip every step
    and she would get nothing. Decided once, on the order's arrival (``OrderPlaced``): an update
    starts neither journey, so a change of consent later never hands one order to both."""
    return isinstance(event, ev.OrderPlaced) and bool(facts.extra.get("marketing_ok"))


def pay_reminder_takes(event: Any, facts: Facts) -> bool:
    """The other half of ``cart_ladder_takes``: the unpaid order of a customer the ladder cannot reach."""
    return isinstance(event, ev.OrderPlaced) and not facts.extra.get("marketing_ok")


# what a customer sends that answers nothing (adapters/whatsapp/normalize.py): a reaction to one
# of our messages (or taking it back), a sticker, WhatsApp's own notices (``system``: the user
# changed number; ``request_welcome``: a chat opened for the first time). A run that follows the
# contact goes on as if nothing came; a photo, a voice note or a document is an answer (and
# opens a hand-off, connector/handoffs.rules).
NOT_A_REPLY = frozenset({"reaction", "sticker", "system", "request_welcome"})


def is_reply(event: Any) -> bool:
    """Whether an inbound WhatsApp event answers us (a tap, words, a photo…), not just a reaction."""
    if isinstance(event, ev.ButtonReplied):
        return True
    return isinstance(event, ev.MessageReceived) and event.message_type not in NOT_A_REPLY
