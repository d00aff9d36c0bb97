"""Payment recovery (utility): an order whose payment stays pending or failed gets its pay link.

A WooCommerce ``pending`` / ``failed`` order is an abandoned checkout too. When
``checkout_recovery`` takes those as well (its ``unpaid_orders``), the customer decides where
each one goes, when it is placed: the cart ladder (marketing) for a customer it can reach, the
pay reminder here for everyone else (``_common.cart_ladder_takes``; WooCommerce asks no
marketing opt-in, so that is most customers), and never both (``unpaid_orders_by_consent``,
set when the config is loaded).

A customer who gives up on an order and buys the same things in another one (WooCommerce
makes a new order when she checks out again from another session or with a changed cart; a
second Shopify checkout) is not asked to pay for the first: the journey follows the contact,
and her later order, paid (or cash on delivery, or to pay by bank transfer: WooCommerce's
``on-hold``), placed within ``REPLACED_WITHIN`` of this one and sharing a product with it, ends the run
(``replaced_by_order``). Before the reminder went out that is no revenue; after it, her new try paid (or her card
authorised) is the payment the reminder asked for: the run is paid by that order (``order_id``) and recovered
with its revenue, within ``attribution_days`` of the reminder, as her paying this order would be (``_credit_try``).
Her new try placed cash on delivery is a sale as a cart's COD order is one: credited as placed (the report leaves it
out once the store cancels it: refused at the door, a Cancel tap). Her new try placed to pay by bank transfer is no
sale until the money comes: the run withdraws a reminder still held and waits out the reminder's ``attribution_days``
for it (``_await_transfer``), crediting the order once the store marks it paid. Once a reminder is queued the run
listens for such a try out the attribution window of the reminder as it went out (``_listens_until``), not only
``REPLACED_WITHIN``: a reminder sent a day after the order (``after_minutes``) would otherwise never be credited with
her coming back. Her later unpaid try at it (placed pending again, in that
time, a try this journey chases) replaces it too (``replaced``): only her newest try is chased,
and an older one heard after it starts finished. A newer try that replaces one whose reminder was queued goes on
from it (``continues``, as ``checkout_recovery`` has it: one purchase, counted once by the report), so her paying
it, even before its own reminder, is the older reminder's recovery (``_taking_over``). Her paying the older try itself then
ends the newer one (``replaced_by_order``, its reminder withdrawn): she has paid (``_older_try_paid``). The run keeps listening after its reminder is
queued, until that time is up, so a reminder still held (quiet hours, the one-message line) is
withdrawn when she replaces the order before it goes. Whatever ends an active run (a cancel or a bin, a payment
authorized, an order moved to a bank transfer) withdraws a reminder still held after the run has ended too, once
(``_withdraw_held``). A newer try cancelled before its reminder
does not bring the older one back: she or the store called the purchase off, and the older try
is as stale (WooCommerce cancels unpaid orders after its hold-stock minutes, the oldest first). Its own
reminder never goes, but its run, which went on from the older try's reminder, listens on out that reminder's
window as a reminded order cancelled does (``_called_off``), so her third try, paid, is the reminder's recovery.
An order the store puts back after a cancel (pending again) is chased as before it (``_restored``): a reminder the
cancel withdrew before it went (held for quiet hours) is queued again.

A WooCommerce order she moves to a bank transfer or cheque on the pay page (``on-hold``) has no pay link any
more, as one placed so, which this journey never chases: it ends the run unpaid (``closed``), its reminder
withdrawn if still held, so she is not told her payment has not come through next to the order's thanks.

An ``authorized`` payment is not stalled: the customer has paid, the store captures later
(Shopify manual capture, at fulfilment). It starts no run, and ends an active one, so nobody is asked
to pay twice. Authorised before the reminder, the run ends unpaid (``closed``); after a reminder that
went out, she paid as the reminder asked: recovered then, within ``attribution_days`` of it, however long
the store takes to capture, and the capture is not counted again (a voided authorisation, as the report
reads the order, recovers nothing).

A payment is credited to the reminder only if the reminder went out (WhatsApp took it), as
the runner tells from the run's outbox row (``credits_sent_reminders``). A payment that
arrives while the reminder still waits (quiet hours, a retry, the send rate) skips it, so
nobody is asked to pay for what they have paid, and a reminder the gate blocked or Meta
refused earns nothing: ``paid_before_reminder``, not recovered (``recovered: false``), also when
the dispatcher had already taken the reminder and it reached her after she paid. A payment counts as recovered only within ``attribution_days`` of
the reminder (when the store saw the order paid): one weeks later was not the reminder's
doing. It is still recorded as paid (the lift compares payments, treated or not), as
``recovered: false`` with no revenue.

An order on payment terms (Shopify B2B / draft orders: Net 30, a fixed date, due on fulfilment)
is not chased before its payment is due (``payment_terms.chase_from``), by the terms as stored:
the reconcile's read of the order carries none. Terms the store gives the order (or changes) while its
reminder waits move the reminder (``_rescheduled``).

An order taken at the store's till (Shopify POS) is settled in person: no reminder unless
``include_pos``.
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import Any, ClassVar

from pydantic import Field

from connector import events as ev
from connector.journeys._common import (
    awaits_payment, cancelled_order, continued, deleted_order, end_for_deleted_order, order_context, pay_reminder_takes, unpaid_order,
    withdraw_for_cancel,
)
from connector.journeys.engine import (
    Command, Facts, Finish, JourneyConfig, OrderFacts, Run, Send, Start, TimerFired, Update, Wake, Withdraw,
)
from connector.journeys.payment_terms import chase_from, terms_of

STALLED = ("pending", "failed")  # not "authorized": paid as far as the customer knows
_NEVER = datetime.min.replace(tzinfo=timezone.utc)  # ranks a run with no reminder out below any that had one (``_credited``)
REPLACED_WITHIN = timedelta(days=1)  # a later order this soon after this one, with a product of it, is her second try


class PaymentRecoveryConfig(JourneyConfig):
    set_when_loaded: ClassVar[dict[str, str]] = {"unpaid_orders_by_consent": "both journeys taking unpaid orders"}
    after_minutes: float = Field(60, gt=0, description="how long a payment may stay pending before the reminder")
    unpaid_orders: bool = Field(True, description="WooCommerce only: pending/failed orders (when checkout_recovery takes "
                                                  "them too, those of customers its ladder cannot reach)")
    attribution_days: float = Field(3, gt=0, description="a payment this long after the reminder went out is recovered by it")
    unpaid_orders_by_consent: bool = Field(False, description="set when the config is loaded: checkout_recovery takes unpaid "
                                                              "orders too, so this takes only those of customers without "
                                                              "marketing consent (``_common.cart_ladder_takes``)")
    include_pos: bool = Field(False, description="also remind about unpaid orders taken at the store's till (Shopify POS): "
                                                 "by default the shop settles those with the customer in person")


class PaymentRecovery:
    name: ClassVar[str] = "payment_recovery"
    stage: ClassVar[str] = "conversion"  # whose cases its hand-offs are (handoffs.journey_stage)
    config_model: ClassVar[type[JourneyConfig]] = PaymentRecoveryConfig
    template_steps: ClassVar[tuple[str, ...]] = ("remind",)
    accepts_holdout: ClassVar[bool] = True  # a control run only misses its reminder: lift can be measured
    credits_sent_reminders: ClassVar[bool] = True  # a payment reaching a reminded run: facts.extra["reminders_sent"]
    credits_one_run: ClassVar[bool] = True  # a paid order reaching several runs: facts.extra["order_runs"] (``_credited``)
    follows_contact: ClassVar[bool] = True  # her later order reaches her waiting runs: it may replace theirs (``_replaced``)
    # placed, and paid later: a WooCommerce retry is created pending and paid by an update (replies are not this journey's)
    contact_events: ClassVar[tuple[type, ...]] = (ev.OrderPlaced, ev.OrderUpdated, ev.OrderPaid)

    def subject(self, event: Any, facts: Facts) -> str | None:
        if isinstance(event, ev.OrderDeleted):
            return deleted_order(event)
        if isinstance(event, (ev.OrderPlaced, ev.OrderUpdated, ev.OrderPaid, ev.OrderCancelled)) and not event.order.is_cod:
            return f"order:{event.order.external_id}"
        return None

    def may_credit(self, event: Any, run: Run) -> bool:
        """The run's own order credits its reminder, and so does her paid later try at the same purchase
        (``_paid_try``); her other orders, which reach a run still listening for her replacement, cost no
        lookup of its sends. Her later try placed to pay by bank transfer asks too: the run waits for its money
        out the attribution window of the reminder as it went out (``_await_transfer``)."""
        return _about(event, run) or _paid_try(event, run) or _transfer_try(event, run)

    @staticmethod
    def needs_sends(event: Any, run: Run, config: PaymentRecoveryConfig) -> bool:
        """When the timer of a run that queued its reminder fires, the runner tells when it went out
        (``facts.extra["reminders_sent"]``): the run listens out ``attribution_days`` from the reminder as sent,
        not as queued (quiet hours may hold it till morning)."""
        return isinstance(event, TimerFired) and run.status == "active" and bool(run.state.get("reminded") or run.state.get("order_cancelled"))

    def decide(self, event: Any, run: Run | None, facts: Facts, config: PaymentRecoveryConfig, now: datetime) -> list[Command]:
        if isinstance(event, ev.OrderDeleted):
            return end_for_deleted_order(run) if run is None or run.status == "active" else _withdraw_held(event, run, facts)
        if run is not None and not _about(event, run):
            return _replaced(event, run, facts, config, now)  # another order of hers, or a reply: not this order's news
        o = facts.order
        if run is None:
            due = _chase_from(event, facts, config) if isinstance(event, (ev.OrderPlaced, ev.OrderUpdated)) else None
            if due is None or o is None:
                return []
            state = {"placed_at": event.order.created_at.isoformat(), "products": sorted(_products(event.order))}
            newer = _newer_try(event, facts)
            if newer is not None:  # heard after her newer try at the same purchase, which is chased instead
                return [Start(f"order:{o.external_id}", facts.contact_id, {**state, "replaced_by": newer}), Finish("replaced")]
            return [Start(f"order:{o.external_id}", facts.contact_id, {**state, **_taking_over(event, facts, config)}), Wake(due)]
        active = run.status == "active"
        if _paid(event) and _reminded(run) and not run.state.get("paid"):
            # ``order_id``, as checkout recovery records the order that converted a run: the runner
            # looks up the run's sends no more
            paid = {"paid": True, "order_id": event.order.external_id}
            # no ``reminders_sent``: a run stored before reminders kept ``sent``, whose own record counts
            sent = facts.extra.get("reminders_sent")
            if sent is None or sent:
                recovered = _within_window(sent, event.order.updated_at, config)
                return [Update({**paid, "recovered": recovered, "revenue": str(event.order.total) if recovered else "0",
                                "currency": event.order.currency}), *([Wake(None), Finish("reminded", skip_waiting=False)] if active else [])]
            # paid before the reminder could have moved her: not recovered, even when the dispatcher had it on its
            # way already and it reached her after the payment (the report counts ``recovered`` only)
            return [Update({**paid, "paid_before_reminder": True, "recovered": False}), *([Wake(None)] if active else []),
                    Finish("paid_before_reminder", skip_waiting=True)]
        if not active:
            return _withdraw_held(event, run, facts)
        if _stops(event, o):
            if run.state.get("awaits_order") and not _paid(event):
                return []  # she pays by transfer on her new try: this order's cancel (a stale try) ends no wait
            if _reminded(run) and cancelled_order(event, facts):
                # its reminder, or that of the older try it went on from, was queued: she may still buy it anew, and
                # the run listens on (``_called_off``)
                return _called_off(run)
            if run.state.get("reminded"):  # the reminder, if still held, goes no further
                return [Wake(None), Finish("closed")]
            if isinstance(event, TimerFired) and run.state.get("order_cancelled"):
                return _window_over(run, facts, config, now)  # her newer try, cancelled before its own reminder
            paid = isinstance(event, ev.OrderPaid) or (o is not None and o.payment_state == "paid")
            return [Wake(None), Update({"paid": paid}), Finish("paid_without_reminder" if paid else "closed")]
        if run.state.get("order_cancelled") and isinstance(event, ev.OrderUpdated) and o is not None:
            return _restored(event, run, facts, config, now)  # the store put the cancelled order back (not cancelled, unpaid)
        if isinstance(event, (ev.OrderPlaced, ev.OrderUpdated)) and o is not None and not run.state.get("reminded"):
            return _rescheduled(event, run, o, config)
        if isinstance(event, TimerFired):
            # her time to replace the order, or to pay her new try, is up; or, for a newer try cancelled before its own
            # reminder, that of the older try's reminder (``_called_off``): its own reminder never goes
            if run.state.get("reminded") or run.state.get("order_cancelled"):
                return _window_over(run, facts, config, now)
            # the run listens until she can no longer replace the order (``_replaced``), and out the attribution
            # window of its reminder, for her new try at the purchase (``_paid_try``): a reminder held for the
            # morning is withdrawn, not sent after she paid her second try
            listen = max(_placed(run) + REPLACED_WITHIN, now + timedelta(days=config.attribution_days))
            return [Update({"reminded": True, "sent": 1}), Send("remind", order_context(facts)), Wake(listen, listening=True)]
        return []


def _stops(event: Any, o: OrderFacts | None) -> bool:
    """Whether the event ends the chase of its order: cancelled, paid as she knows (authorized), or no longer
    payable by its link (a WooCommerce order she moved to a bank transfer or cheque on the pay page: on-hold,
    as one placed so, which is never chased)."""
    return isinstance(event, (ev.OrderPaid, ev.OrderCancelled)) or (
        o is not None and (o.payment_state not in STALLED or o.cancelled or not o.payment_url))


def _called_off(run: Run) -> list[Command]:
    """The store (or she) cancelled the order after its reminder was queued (WooCommerce's hold-stock minutes, a
    Shopify cancel), or after that of the older try the run went on from (``continues``: her newer unpaid try,
    cancelled before its own reminder): its pay link is dead, so a reminder still held is withdrawn (and a run's own
    reminder not queued yet never goes), but the run listens on as it did (its timer: out the attribution window of
    the reminder that went out, its own or the older try's, ``_listens_until``), so her new try at the purchase, paid
    after the reminder, is still its recovery (``_credit_try``), as ``checkout_recovery``'s ``_cancelled`` has it for
    a cart's unpaid order. Never bought anew, it ends ``closed`` as before. A newer try whose own reminder had no
    time planned (terms given without a date: due on fulfilment) listens from when it could have replaced the older
    try no more, and on out that reminder's window (``_window_over``), not for ever."""
    if run.state.get("order_cancelled"):
        return []  # the cancel heard again (its update echoes it)
    # a run whose own reminder was still to come plans no message any more: its timer only listens
    listens = [] if run.state.get("reminded") else [Wake(run.next_due_at or _placed(run) + REPLACED_WITHIN, listening=True)]
    return [Update({"order_cancelled": True}), Withdraw(), *listens]


def _window_over(run: Run, facts: Facts, config: PaymentRecoveryConfig, now: datetime) -> list[Command]:
    """The timer of a run that listens after a reminder was queued (its own, or the older try's it went on from): the
    reminder went out later than queued (held for the morning), so its window runs on; or it is over, and the run ends
    unpaid (``not_paid`` for her bank transfer that never came, ``closed`` for an order cancelled, else ``reminded``)."""
    ends = _listens_until(run, facts.extra.get("reminders_sent"), config)
    if ends > now:
        return [Wake(ends, listening=True)]
    outcome = "not_paid" if run.state.get("awaits_order") else "closed" if run.state.get("order_cancelled") else "reminded"
    return [Finish(outcome, skip_waiting=False)]


def _restored(event: Any, run: Run, facts: Facts, config: PaymentRecoveryConfig, now: datetime) -> list[Command]:
    """News of an order the run heard cancelled (``_called_off``): still cancelled (an echo), nothing; put back by the
    store (a WooCommerce order moved from cancelled back to pending payment), it is her order again, unpaid: the run
    goes on as before the cancel, so it ends ``reminded``, not ``closed``, if she never pays; a run whose own reminder
    was still to come at the cancel (her newer try) has it planned again, from when the order is chased
    (``_chase_from``). A run whose reminder was queued but never went out (held for quiet hours when the cancel
    withdrew it: ``facts.extra["reminders_sent"]`` none) has that reminder queued again (``retry_withdrawn``: the
    same row, so once; the gate holds it for the morning), and listens out its window from now, as when it was first
    queued, unless she is paying her new try by bank transfer meanwhile (``awaits_order``: asked once, not twice).
    Paid, authorised or moved to a bank transfer on the way back: ``_stops`` had it first."""
    if facts.order is None or facts.order.cancelled:
        return []
    back: list[Command] = [Update({"order_cancelled": False})]
    if not run.state.get("reminded"):
        back.append(Wake(_chase_from(event, facts, config)))  # none while its terms give no date, as before the cancel
    elif run.state.get("awaits_order"):
        pass  # she pays her new try by bank transfer meanwhile: no link to pay this one too (``_await_transfer``)
    elif not facts.extra.get("reminders_sent") and (due := _chase_from(event, facts, config)) is not None:
        listen = max(_placed(run) + REPLACED_WITHIN, max(due, now) + timedelta(days=config.attribution_days), run.next_due_at or now)
        back += [Send("remind", order_context(facts), due_at=due if due > now else None, retry_withdrawn=True),
                 Wake(listen, listening=True)]
    return back


def _withdraw_held(event: Any, run: Run, facts: Facts) -> list[Command]:
    """An event about the order reaching a run that has ended unpaid after its reminder was queued: the reminder
    may still be held past the run's last day (an ``after_minutes`` of a day or more, so the run ends as it queues
    it, then quiet hours; the one-message line; a restriction). For every reason an active run stops (``_stops``:
    a cancel or a bin, a payment authorized, an order moved to a bank transfer) it is withdrawn, once, so she is
    not asked to pay for an order she called off, has paid or pays otherwise."""
    if not run.state.get("reminded") or run.state.get("paid") or run.state.get("withdrawn"):
        return []
    if cancelled_order(event, facts):
        return withdraw_for_cancel(run)
    if not run.state.get("cancelled") and _stops(event, facts.order):
        return [Update({"withdrawn": True}), Withdraw()]
    return []


def _rescheduled(event: Any, run: Run, o: OrderFacts, config: PaymentRecoveryConfig) -> list[Command]:
    """Terms the store gave the order, or changed, while its reminder waits (Net 30 put on a B2B order after it
    was placed, Net 30 extended to Net 60): the reminder moves to when they make the payment due (``chase_from``;
    none while they give no date yet). Only an event that carries terms: the reconcile's read has none, and
    the stored ones decided already."""
    if event.order.payment_terms is None and event.order.payment_due_at is None:
        return []
    due = chase_from(event.order.payment_terms, event.order.payment_due_at, o.placed_at + timedelta(minutes=config.after_minutes))
    return [] if due == run.next_due_at else [Wake(due)]


def _chase_from(event: Any, facts: Facts, config: PaymentRecoveryConfig) -> datetime | None:
    """When this journey reminds her of the event's order (``facts.order``), or None if it does not chase
    it: a stalled, open, prepaid order with a pay link, of a contact, that this journey takes (not the cart
    ladder's; not the till's unless ``include_pos``), not before its payment terms make it due: the event's,
    else the stored ones (the reconcile's GraphQL read carries none; an order on terms first seen by it
    alone is chased as one without)."""
    o = facts.order
    if o is None or o.payment_state not in STALLED or o.cancelled or not o.payment_url or facts.contact_id is None \
            or (unpaid_order(event.order) and not _takes(event, facts, config)) \
            or (o.channel == ev.SalesChannel.POS and not config.include_pos):
        return None
    return chase_from(*terms_of(event.order, o), o.placed_at + timedelta(minutes=config.after_minutes))


def _takes(event: Any, facts: Facts, config: PaymentRecoveryConfig) -> bool:
    """Whether this journey takes a WooCommerce unpaid order: with ``unpaid_orders``, and when the cart
    ladder takes them too, only a customer it cannot reach (``_common.pay_reminder_takes``), or an
    order that was no cart (made by staff in wp-admin, a subscription renewal: the ladder leaves those)."""
    return config.unpaid_orders and (not config.unpaid_orders_by_consent or pay_reminder_takes(event, facts)
                                     or (isinstance(event, ev.OrderPlaced) and event.order.channel != ev.SalesChannel.ONLINE))


def _about(event: Any, run: Run) -> bool:
    """Whether an event reaching a run is its own order's (or its timer), not another order or a reply
    of the customer's that reached it because the journey follows her."""
    if isinstance(event, (ev.OrderPlaced, ev.OrderUpdated, ev.OrderPaid, ev.OrderCancelled)):
        return run.subject == f"order:{event.order.external_id}"
    return isinstance(event, TimerFired)


def _products(order: ev.Order) -> set[str]:
    """What an order is for, to tell a second try at the same purchase from another purchase."""
    return {str(li.product_id or li.variant_id or li.sku or li.title) for li in order.line_items}


def _placed(run: Run) -> datetime:
    """When the run's order was placed (a run stored before it kept that: its start)."""
    return datetime.fromisoformat(run.state["placed_at"]) if run.state.get("placed_at") else run.started_at


def _later_try(placed: datetime, products: set[str] | None, later: datetime, its_products: set[str] | None) -> bool:
    """Whether an order placed at ``later`` for ``its_products`` is a later try at the purchase of one placed
    at ``placed`` for ``products``: after it, within ``REPLACED_WITHIN``, sharing a product (any, for a run's
    products unknown: None)."""
    return placed < later <= placed + REPLACED_WITHIN and (products is None or its_products is None or bool(products & its_products))


def _run_products(run: Run) -> set[str] | None:
    """The products of a run's order; None for a run stored before runs kept them."""
    return set(run.state.get("products") or ()) or None


def _replaced(event: Any, run: Run, facts: Facts, config: PaymentRecoveryConfig, now: datetime) -> list[Command]:
    """Another order of hers reached this run, still waiting or listening after its reminder: a later
    try at this purchase (``_later_try``) that she paid for (or chose cash on delivery for, or a bank
    transfer: ``_paid_otherwise``) ends the run (``replaced_by_order``), and so does one she left unpaid again, which this journey chases
    instead (``replaced``): only her newest try is chased. What the run has waiting (its reminder, held
    for quiet hours or the one-message line) is withdrawn, so nobody is asked to pay twice; no revenue, unless the
    later try is paid after the reminder went out (``_credit_try``). ``facts`` are the other order's."""
    if run.status != "active" or not isinstance(event, (ev.OrderPlaced, ev.OrderUpdated, ev.OrderPaid)):
        return []
    o = event.order
    if _older_try_paid(o, run):
        return [Update({"replaced_by": o.external_id}), Wake(None), Finish("replaced_by_order", skip_waiting=True)]
    if run.state.get("awaits_order") == o.external_id and o.cancelled_at is not None:  # the transfer will not come
        return [Wake(None), Finish("not_paid")]
    credit = _credit_try(event, run, facts, config)
    if credit:  # her new try, bought after the reminder was queued: its recovery (or another reminded try's)
        return [Update({"replaced_by": o.external_id, **credit}), Wake(None), Finish("replaced_by_order", skip_waiting=True)]
    if _transfer_try(event, run):
        waits = _await_transfer(run, o, facts, config, now)
        if waits is not None:
            return waits
    if o.cancelled_at is not None or not _later_try(_placed(run), _run_products(run), o.created_at, _products(o)):
        return []
    if o.is_cod or o.payment_state in ev.PAID_AS_SHE_KNOWS or _paid_otherwise(o):
        return [Update({"replaced_by": o.external_id}), Wake(None), Finish("replaced_by_order", skip_waiting=True)]
    if isinstance(event, (ev.OrderPlaced, ev.OrderUpdated)) and _same_phone(run, facts) and _chase_from(event, facts, config) is not None:
        return [Update({"replaced_by": o.external_id}), Wake(None), Finish("replaced", skip_waiting=True)]
    return []


def _same_phone(run: Run, facts: Facts) -> bool:
    """Whether the event's order is of the run's contact (her phone), not of another with her email: an unpaid order
    is chased on its own phone, so it replaces (``replaced``), or goes on from, only her own older try. Two people
    sharing an address (a family's one store account) each leaving the same product unpaid both get their pay link."""
    return facts.contact_id is not None and facts.contact_id == run.contact_id


def _older_try_paid(o: ev.Order, run: Run) -> bool:
    """Whether ``o`` is the older try this run goes on from (``continues``), now paid (or her card authorised):
    she paid the reminded order itself after placing this newer one, so nobody asks her to pay this one too
    (the older run records the recovery; the report counts the purchase once, as that run)."""
    return f"order:{o.external_id}" in continued(run.state) and o.cancelled_at is None and not o.is_cod \
        and o.payment_state in ev.PAID_AS_SHE_KNOWS


def _try_after_reminder(event: Any, run: Run) -> bool:
    """Whether the event is her later try at this run's purchase, not cancelled, reaching the run while it listens
    after queuing its reminder (``_reminded``): placed after this order and sharing a product with it. Within
    ``REPLACED_WITHIN`` of this order, as ``_later_try``, or later while the run listens out the attribution window
    of its reminder (``_listens_until``): the reminder may go out a day after the order, and her coming back
    the next day is still its doing (``attribution_days``)."""
    if run.status != "active" or not _reminded(run) or run.state.get("paid") \
            or not isinstance(event, (ev.OrderPlaced, ev.OrderUpdated, ev.OrderPaid)) or _about(event, run):
        return False
    o, products = event.order, _run_products(run)
    return o.cancelled_at is None and _placed(run) < o.created_at and (products is None or bool(products & _products(o)))


def _paid_try(event: Any, run: Run) -> bool:
    """Whether the event is her later try at this run's purchase (``_try_after_reminder``) that is a purchase: paid
    (or her card authorised), the payment the reminder asked for made on a new order; or cash on delivery, a sale
    as a cart's COD order is one (credited as placed; the report leaves it out once the store cancels it)."""
    o = getattr(event, "order", None)
    return o is not None and (o.is_cod or o.payment_state in ev.PAID_AS_SHE_KNOWS) and _try_after_reminder(event, run)


def _transfer_try(event: Any, run: Run) -> bool:
    """Whether the event is her later try at this run's purchase placed to pay by other means than a pay link (a
    WooCommerce bank transfer or cheque, ``on-hold``: ``_paid_otherwise``), whose money is still to come."""
    o = getattr(event, "order", None)
    return o is not None and not o.is_cod and _paid_otherwise(o) and _try_after_reminder(event, run)


def _await_transfer(run: Run, o: ev.Order, facts: Facts, config: PaymentRecoveryConfig, now: datetime) -> list[Command] | None:
    """Her new try waits for a bank transfer after the reminder was queued: no sale yet, so nothing is credited, but
    the run (its reminder withdrawn if still held, so she is not asked to pay twice) waits for the money as long as
    it listens (``awaits_order``; out the attribution window of the reminder that went out): paid in that time, the
    new try is paid, and the reminder's recovery, with its revenue, if it went out before (``_credit_try``);
    cancelled, or not paid by then, nothing (``not_paid``). A holdout run, whose reminder never goes, waits the same
    way: the lift compares payments, treated or not. None: the run's time is over."""
    if run.state.get("awaits_order") == o.external_id:
        return []  # the same wait, heard again
    ends = max(t for t in (run.next_due_at, _listens_until(run, facts.extra.get("reminders_sent"), config)) if t is not None)
    if ends <= now:
        return None
    return [Update({"replaced_by": o.external_id, "awaits_order": o.external_id}), Withdraw(), Wake(ends, listening=True)]


def _listens_until(run: Run, sent: tuple[datetime, ...] | None, config: PaymentRecoveryConfig) -> datetime:
    """Until when a run that queued its reminder listens: for her replacing the order (``REPLACED_WITHIN``), and for
    her new try at the purchase, or its money, out the attribution window of the reminder that went out last."""
    ends = _placed(run) + REPLACED_WITHIN
    return max(ends, max(sent) + timedelta(days=config.attribution_days)) if sent else ends


def _credit_try(event: Any, run: Run, facts: Facts, config: PaymentRecoveryConfig) -> dict[str, Any]:
    """What a run records of her paid later try at its purchase (``_paid_try``): paid, by that order (``order_id``,
    which the report reads for whether it still stands), and recovered with its revenue, as her paying this
    order would be, when a reminder went out before it and within ``attribution_days`` (``reminders_sent``,
    the runner's look for this run). Paid for a holdout run too: the lift compares payments, treated or not."""
    if not _paid_try(event, run):
        return {}
    o = event.order
    credited = _credited(event, facts)
    if credited not in (None, run.subject):  # one order, one recovery: another reminded try of hers takes it
        return {"credited_to": credited}
    sent = facts.extra.get("reminders_sent")
    recovered = _within_window(sent, o.created_at if o.is_cod else o.updated_at, config)  # COD: a sale as placed
    return {"paid": True, "order_id": o.external_id, "recovered": recovered, "revenue": str(o.total) if recovered else "0",
            "currency": o.currency, **({"cod": True} if o.is_cod else {})}


def _credited(event: Any, facts: Facts) -> str | None:
    """The one run a paid order credits when it reaches several of her reminded runs (``facts.extra["order_runs"]``,
    as ``checkout_recovery._credited``: one order pays for her two unpaid orders, each reminded): its own order's run
    when she paid the reminded order itself; else the run whose reminder went out last before the payment (the one
    that brought her back, as the report gives a cart's order to the pay reminder that came after it), then the
    newest. None: the order reaches one run that it can credit, which it credits."""
    o = event.order
    own = f"order:{o.external_id}"
    runs = [(r, sent) for r, sent in facts.extra.get("order_runs") or ()
            if (r.subject == own and _reminded(r) and not r.state.get("paid")) or _paid_try(event, r)]
    if len(runs) < 2:
        return None
    if any(r.subject == own for r, _sent in runs):
        return own

    def rank(item: tuple[int, tuple[Run, tuple[datetime, ...] | None]]) -> tuple[datetime, int]:
        i, (_r, sent) = item
        return max((t for t in sent or () if t <= o.updated_at), default=_NEVER), i

    return max(enumerate(runs), key=rank)[1][0].subject


def _reminded(run: Run) -> bool:
    """Whether the run's reminder was queued, or that of the older try at the purchase it took over (``continues``)."""
    return bool(run.state.get("reminded") or run.state.get("continues"))


def _taking_over(event: Any, facts: Facts, config: PaymentRecoveryConfig) -> dict[str, Any]:
    """A new unpaid try that replaces her older one whose reminder was queued (``_replaced``: ``replaced``) goes on
    from it: one purchase, whose reminders are both runs' (``continues``, read as ``checkout_recovery`` reads it, by
    the runner for attribution and by the report's one stalled payment), so her paying the newer try before its own
    reminder is the older reminder's recovery. ``sent``: the runner looks up those reminders' sends."""
    o = event.order
    for r in facts.extra.get("open_runs", ()):
        if r.status == "active" and r.subject.startswith("order:") and _reminded(r) and not r.state.get("paid") and _same_phone(r, facts) \
                and _later_try(_placed(r), _run_products(r), o.created_at, _products(o)):
            chain = continued(r.state)
            return {"continues": r.subject, **({"continues_also": list(chain)} if chain else {}),
                    "sent": int(r.state.get("sent", 0)) or 1}
    return {}


def _paid_otherwise(order: ev.Order) -> bool:
    """An order she placed to pay by other means than a pay link (a WooCommerce bank transfer or cheque,
    ``on-hold``, which the store's pay page refuses: no ``payment_url``): its money is on its way, and the pay
    link of her earlier try would have her pay twice. An unpaid order (``_common.unpaid_order``: pending or
    failed) replaces the older try only if this journey chases it instead."""
    return awaits_payment(order) and not order.payment_url and not unpaid_order(order)


def _newer_try(event: Any, facts: Facts) -> str | None:
    """The order of her open run (``facts.extra["open_runs"]``, this journey's) that is a newer try at the
    purchase of the event's order, heard first (webhooks come in any order): that one is chased."""
    o = event.order
    for r in facts.extra.get("open_runs", ()):
        if r.subject.startswith("order:") and _same_phone(r, facts) and _later_try(o.created_at, _products(o), _placed(r), _run_products(r)):
            return r.subject.split(":", 1)[1]
    return None


def stalled(state: dict[str, Any]) -> bool:
    """Whether a run's payment stalled: still pending when the reminder came (``reminded``, kept since the
    journey began, for a holdout run too, whose reminder the runner skips), or the run goes on from her older
    try whose did (``continues``: the report counts the purchase once, as this run). An order paid minutes after it
    was placed was never stalled: the report's stalled payments and its lift count these runs only."""
    return bool(state.get("reminded") or state.get("continues"))


def _within_window(sent: tuple[datetime, ...] | None, paid_at: datetime, config: PaymentRecoveryConfig) -> bool:
    """Whether a payment at ``paid_at`` came within ``attribution_days`` of the reminder that went out
    last before it (its time unknown, a run stored before sends were told: it counts, as it did)."""
    if sent is None:
        return True
    before = [t for t in sent if t <= paid_at]
    return bool(before) and paid_at <= max(before) + timedelta(days=config.attribution_days)


def _paid(event: Any) -> bool:
    """The payment arrived: Shopify's orders/paid, or an order update that shows it paid (WooCommerce
    has no paid event: processing/completed with a ``date_paid`` comes as an update), or her card
    authorised (Shopify manual capture: she has paid; the store captures when it ships)."""
    return isinstance(event, ev.OrderPaid) or (isinstance(event, ev.OrderUpdated)
                                               and event.order.payment_state in (ev.PaymentState.PAID, ev.PaymentState.AUTHORIZED))


def recovered(state: dict[str, Any]) -> bool:
    """Whether a run's payment is the reminder's recovery, as the report counts it: ``recovered`` as the run
    recorded it; a run stored before that was kept counts when paid, unless paid before its reminder went out."""
    if "recovered" in state:
        return state["recovered"] is True
    return bool(state.get("paid")) and not state.get("paid_before_reminder")
