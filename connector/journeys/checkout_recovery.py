"""Checkout recovery (marketing): a ladder of up to three reminders for an abandoned checkout.

A checkout is abandoned after ``abandon_after_minutes`` without an update. Each reminder
goes ``ladder_minutes[i]`` after abandonment (a discount code can be offered on a later
step). A run starts with the checkout, so one bought minutes later was never abandoned:
``was_abandoned`` tells the runs that were (a ladder step fired while it was open, or it
was bought or completed only after its abandonment time), and only those are the report's
abandoned checkouts and enter its lift. A change to the checkout before the first reminder
pushes the ladder back; after it, the ladder keeps its times and its reminders quote the
checkout as it is now (link, total, product), the one still held for quiet hours too (``engine.Refresh``). A checkout that now gives a phone that is
another contact's ends the run (``contact_changed``): no more reminders to the number she
replaced, and a run's contact (its holdout group, its consent) is fixed when it starts, so
the ladder does not move to the new one. Except once, for a run a read that could not see the
checkout's phone started (Shopify's poll, before the checkout's late webhook), or a checkout that gave
none yet (her email first, the phone with the address): both are on the customer's account phone, and
the first read that sees the checkout's phone moves the run to that number (``_to_checkout_phone``).
The run stops the moment an order arrives for that checkout or from the same customer (phone,
customer id, or email for a phone-less order: ``state.upsert_contact``; or her email under another phone, for an order
matching no run by its checkout or phone: ``runner._one_email_contacts_runs``), or the customer replies to it (a tap, words, a photo or
voice note quoting one of its reminders, or quoting nothing while no other journey's message
is what she answers:
``_common.answers_run``; a reaction or a sticker is no reply, ``_common.NOT_A_REPLY``); any opt-out
ends it too (``state.end_marketing_runs``). An order after a reminder that went out (WhatsApp
took it: sent, delivered, read) and within ``attribution_days`` of the last one before it is
recorded as recovered, with its revenue; a reminder still waiting (quiet hours), skipped (the
frequency cap, a recent order, no consent) or failed at Meta is no reminder. The runner tells
which went out, and when, as the order arrives (``facts.extra["reminders_sent"]``, from the
run's outbox rows).

One order credits one run. A customer with several open carts (two checkouts, one order) has
the order credited to its own checkout's run (``_credited``: the checkout the order names, or
on WooCommerce the cart the plugin reported completed), else to the run whose reminder went
out last; her other runs end ``converted_elsewhere``, with no revenue, and their waiting
reminders are skipped.

WooCommerce has no abandoned checkout of its own: its order exists before the payment, so a
``pending`` or ``failed`` order is the abandoned checkout (``unpaid_orders``, on by default).
It runs the same ladder with the order's pay link, and ends as recovered when the order
is paid. When the order is cancelled (WooCommerce cancels one left unpaid after its hold-stock
minutes) its reminders stop; once one was queued, the run listens out its attribution window, so
the order she places and pays instead is credited to it (``_cancelled``); one she places instead that still waits
for its payment (pending at a redirect gateway, a bank transfer) goes on with its ladder and its reminders, as an
order from a reminded cart does (``_cart_reminded``), and the cancelled order's run ends uncredited. Each such order has exactly one home: with ``payment_recovery`` taking them too, this
ladder takes the order of a customer it can reach (marketing consent), the pay reminder
everyone else's (``settle_woocommerce_settings``, ``_common.cart_ladder_takes``). A cart is
recovered only by a purchase: an order paid, or cash on delivery (credited as placed); an
order whose payment failed or waits credits nothing and ends the cart's ladder, and when this
ladder does not take it a silent run waits for its payment with the cart's reminders
(``_waits_for_payment``). So does an order she checked out whose money is still to come by
other means than cash on delivery (``_common.awaits_payment``: WooCommerce's ``on-hold`` bank
transfer, which WooCommerce never cancels; Shopify's ``pending`` bank deposit): no more
reminders, and the cart's run (on Shopify, or the order's on WooCommerce) waits out the window of
its last reminder for the payment, which credits it then (``_waits_here``). The plugin keeps a cart until its order
is paid, so it posts "abandoned" the cart she checked out with while its order waits for her money: a cart posted
while her unpaid order runs the ladder, or within a day of her order that waits for its payment (a bank transfer,
a declined card left to the pay reminder) and naming no product the order lacks, starts none (``_cart_of_her_order``).
"""

from __future__ import annotations

import html
import re
from dataclasses import replace
from datetime import datetime, timedelta, timezone
from typing import Any, ClassVar

from pydantic import Field, model_validator

from connector import events as ev
from connector.journeys._common import (
    answers_run, awaits_payment, cart_ladder_takes, continued, deleted_order, end_for_deleted_order, is_reply, unpaid_order,
)
from connector.journeys.engine import (
    Command, Facts, Finish, JourneyConfig, Refresh, Rehome, Run, Send, Start, TimerFired, Update, Wake, Withdraw,
)

STEPS = ("first", "second", "third")
# run state: the run's contact is the one a read that could not see the checkout's phone named (Shopify's poll, or a
# checkout with no phone yet: the customer's account phone); the first read that sees one moves the run there
# (``_to_checkout_phone``)
ACCOUNT_PHONE = "account_phone"
CONTINUE_WITHIN = timedelta(days=1)  # a pending order goes on from a cart whose last reminder is this recent (``_cart_reminded``)
ORDER_EVENTS = (ev.OrderPlaced, ev.OrderUpdated, ev.OrderPaid, ev.OrderCancelled)
_NEVER = datetime.min.replace(tzinfo=timezone.utc)  # ranks a run with no reminder below any that had one (``_credited``)
_VARIATION = re.compile(r"^(.+)\s[-\u2013]\s")  # WooCommerce names a variation "Shirt - Blue, M" (old versions: an en dash)
_NAME_SEPARATORS = re.compile(r"[\s,&]+")  # how the cart plugin joins its product names: "A, B & C"


def ladder_step(state: dict[str, Any]) -> int:
    """How many ladder steps fired (runs from before ``step`` was kept: ``sent``)."""
    return int(state.get("step", state.get("sent", 0)))


def was_abandoned(state: dict[str, Any]) -> bool:
    """Whether a run's checkout was abandoned, not just started: still open when the ladder's first step
    came (``step``, for a holdout run too), or bought or completed after its abandonment time but before a
    first step that comes later (``abandoned``, ``ladder_minutes[0]`` > 0). Runs from before ``abandoned``
    was kept count by their steps. The report's abandoned checkouts and its lift count these runs only:
    a checkout bought five minutes in would have been bought in either group."""
    return bool(state.get("abandoned")) or ladder_step(state) > 0


class CheckoutRecoveryConfig(JourneyConfig):
    set_when_loaded: ClassVar[dict[str, str]] = {"unpaid_orders_by_consent": "both journeys taking unpaid orders",
                                                 "order_before_payment": "the store's platform"}
    abandon_after_minutes: float = Field(30, gt=0)
    ladder_minutes: tuple[float, ...] = Field((0, 360, 1440), min_length=1, max_length=3, description="after abandonment, per reminder")
    discount_code: str | None = None
    discount_from_step: int = Field(3, ge=1, le=3, description="first reminder (1-3) that carries the discount code")
    attribution_days: float = Field(7, gt=0)
    unpaid_orders: bool = Field(True, description="WooCommerce only: a pending/failed order runs this ladder with its pay link "
                                                  "(with payment_recovery taking them too, only for a customer with marketing "
                                                  "consent; the pay reminder takes the others)")
    unpaid_orders_by_consent: bool = Field(False, description="set when the config is loaded: payment_recovery takes unpaid "
                                                              "orders too, so this ladder takes only those of customers with "
                                                              "marketing consent (``_common.cart_ladder_takes``)")
    order_before_payment: bool = Field(True, description="set when the config is loaded: WooCommerce makes the order before "
                                                         "the payment, so a pending/failed one recovers no cart (on other "
                                                         "platforms a pending order is a placed one)")
    completed_wait_minutes: float = Field(120, ge=0, description="WooCommerce only: how long a reminded cart the Cart Abandonment "
                                                                 "Recovery plugin reports completed waits for its order, to credit "
                                                                 "it (WooCommerce queues its order webhooks, and its order names "
                                                                 "no cart); 0: end at once")

    @model_validator(mode="after")
    def _a_ladder_in_order(self) -> "CheckoutRecoveryConfig":
        """Each reminder after the one before (a later one that is due earlier goes out right after it),
        and a discount on a step the ladder has (else it is silently never offered)."""
        steps = self.ladder_minutes
        if any(m < 0 for m in steps) or any(b <= a for a, b in zip(steps, steps[1:])):
            raise ValueError(f"ladder_minutes must be zero or more and increasing, got {list(steps)}")
        if self.discount_code and self.discount_from_step > len(steps):
            raise ValueError(f"discount_from_step {self.discount_from_step}: the ladder has {len(steps)} reminder(s), so "
                             f"discount_code {self.discount_code!r} would never be offered")
        return self


def settle_woocommerce_settings(platform: str, configs: dict[str, Any]) -> list[str]:
    """Settle the WooCommerce-only journey settings when a store's config is loaded; first, give
    each of WooCommerce's pending/failed orders one home.

    When this journey (``unpaid_orders``) and ``payment_recovery`` (its ``unpaid_orders``) both
    take them, the order's customer decides (``unpaid_orders_by_consent``): the cart ladder, a
    marketing journey, takes the order of a customer it can reach; the utility pay reminder
    takes everyone else's (WooCommerce asks no marketing opt-in: most customers), never both
    (``_common.cart_ladder_takes``). When only one takes them, it takes them all. On other
    platforms the WooCommerce-only settings are turned off (and ``order_confirmation`` confirms
    every prepaid order as placed), and ``cod_confirmation.confirm_status`` is refused. Settings are
    replaced in ``configs``; returns the problems (a WooCommerce setting on another platform).
    """
    checkout, payment = configs.get("checkout_recovery"), configs.get("payment_recovery")
    confirmation = configs.get("order_confirmation")
    if platform != "woocommerce":
        explicit = [f"{name}.unpaid_orders" for name, cfg in (("checkout_recovery", checkout), ("payment_recovery", payment))
                    if cfg is not None and "unpaid_orders" in cfg.model_fields_set]
        if checkout is not None:
            if "completed_wait_minutes" in checkout.model_fields_set:
                explicit.append("checkout_recovery.completed_wait_minutes")
            # (a Shopify order names its checkout: it finds the run however that ended, no wait needed;
            # a pending Shopify order is a placed one)
            configs["checkout_recovery"] = checkout.model_copy(update={"unpaid_orders": False, "completed_wait_minutes": 0,
                                                                       "unpaid_orders_by_consent": False,
                                                                       "order_before_payment": False})
        if payment is not None:
            configs["payment_recovery"] = payment.model_copy(update={"unpaid_orders_by_consent": False})
        problems = [f"{key}: a WooCommerce setting (Shopify's abandoned checkouts come from checkouts/*)" for key in explicit]
        if confirmation is not None and "after_payment" in confirmation.model_fields_set:
            problems.append("order_confirmation.after_payment: a WooCommerce setting (a Shopify order exists once its checkout "
                            "is complete, and is confirmed as placed)")
        if confirmation is not None:
            configs["order_confirmation"] = confirmation.model_copy(update={"after_payment": False})
        cod = configs.get("cod_confirmation")
        if cod is not None and getattr(cod, "confirm_status", None):
            # every Confirm would queue a status Shopify cannot take: a failed write-back and a hand-off each
            problems.append("cod_confirmation.confirm_status: a WooCommerce setting (a Shopify order has no status to set; "
                            "Confirm tags it with confirm_tag)")
        return problems
    shared = bool(checkout is not None and checkout.enabled and checkout.unpaid_orders
                  and payment is not None and payment.enabled and payment.unpaid_orders)
    if checkout is not None:
        configs["checkout_recovery"] = checkout.model_copy(update={"unpaid_orders_by_consent": shared, "order_before_payment": True})
    if payment is not None:
        configs["payment_recovery"] = payment.model_copy(update={"unpaid_orders_by_consent": shared})
    return []


class CheckoutRecovery:
    name: ClassVar[str] = "checkout_recovery"
    stage: ClassVar[str] = "conversion"  # whose cases its hand-offs are (handoffs.journey_stage)
    config_model: ClassVar[type[JourneyConfig]] = CheckoutRecoveryConfig
    template_steps: ClassVar[tuple[str, ...]] = STEPS
    follows_contact: ClassVar[bool] = True  # an order by the same customer, or a reply, also ends a run
    marketing: ClassVar[bool] = True  # any opt-out ends its runs (state.end_marketing_runs)
    credits_sent_reminders: ClassVar[bool] = True  # an order reaching a run: facts.extra["reminders_sent"]
    credits_one_run: ClassVar[bool] = True  # an order reaching several runs: facts.extra["order_runs"] (``_credited``)

    def subject(self, event: Any, facts: Facts) -> str | None:
        if isinstance(event, ev.OrderDeleted):
            return deleted_order(event)
        if isinstance(event, ev.CheckoutUpdated):
            return f"checkout:{event.checkout.token}"
        if isinstance(event, (ev.OrderPlaced, ev.OrderPaid)) and event.order.checkout_token:
            return f"checkout:{event.order.checkout_token}"
        if isinstance(event, ORDER_EVENTS) and not event.order.checkout_token and not event.order.is_cod:
            return f"order:{event.order.external_id}"  # a WooCommerce order: its own checkout (unpaid_orders)
        return None

    def decide(self, event: Any, run: Run | None, facts: Facts, config: CheckoutRecoveryConfig, now: datetime) -> list[Command]:
        if isinstance(event, ev.OrderDeleted):
            return end_for_deleted_order(run)
        if isinstance(event, ev.CheckoutUpdated):
            return self._checkout(event.checkout, run, facts, config, now)
        if isinstance(event, ORDER_EVENTS) and (run is None or run.subject == f"order:{event.order.external_id}"):
            return self._unpaid_order(event, run, facts, config, now)
        if isinstance(event, (ev.OrderPlaced, ev.OrderPaid)) and run is not None:
            # orders/paid: it counts when it was paid (a bank deposit the store marks received days later)
            return self._converted(event.order, run, facts, config, now,
                                   at=event.order.updated_at if isinstance(event, ev.OrderPaid) else None)
        if is_reply(event) and run is not None and run.status == "active" and not run.state.get("waits_for_payment") \
                and not run.state.get("holds_cart") and answers_run(run, facts, self.name):  # (a silent run asks nothing: it waits on)
            return [Update({"replied": True}), Wake(None), Finish("replied")]  # a person answers from here
        if isinstance(event, TimerFired) and run is not None and run.status == "active":
            if run.state.get("completed_at"):  # the completed cart's order never reached us
                return [Wake(None), Finish("completed")]
            if run.state.get("order_cancelled"):  # the window after her cancelled order's reminders is over
                return [Wake(None), Finish("order_cancelled")]
            o = facts.order  # an unpaid order's run: the order as stored now
            if run.subject.startswith("order:") and o is not None and (o.cancelled or o.payment_state not in ("pending", "failed")):
                return [Wake(None), Finish("order_closed")]
            if run.state.get("waits_for_payment"):  # the cart's window is over and the order is still not paid
                return [Wake(None), Finish("not_paid")]
            if run.state.get("pay_reminder"):  # the pay reminder's order: no cart of hers stands beside it any more
                return [Wake(None), Finish("pay_reminder")]
            if run.state.get("holds_cart"):  # a day on, a cart the plugin posts is no longer the one she checked out with
                return [Wake(None), Finish("held_cart")]
            return self._remind(run, facts, config, now)
        return []

    @staticmethod
    def resumed(run: Run, paused: timedelta) -> dict[str, Any]:
        """The order was restored after ``paused`` in the bin (``runner.on_restored``): the ladder's steps are
        reckoned from ``abandoned_at`` (``_remind``), which moves by as much as the run's timer does, so the steps
        still to come keep their spacing (not two due at once, the first of them skipped as ``superseded``)."""
        if not run.state.get("abandoned_at"):
            return {}
        return {"abandoned_at": (datetime.fromisoformat(run.state["abandoned_at"]) + paused).isoformat()}

    @staticmethod
    def discount_steps(config: CheckoutRecoveryConfig) -> frozenset[str]:
        """The steps whose reminder carries ``discount.code`` (``_remind``): from ``discount_from_step`` on,
        and none without a ``discount_code``. A template of another step that binds it is never sent (each
        reminder is skipped as ``missing_value``): ``check-config`` warns of it."""
        if not config.discount_code:
            return frozenset()
        return frozenset(STEPS[i] for i in range(config.discount_from_step - 1, len(config.ladder_minutes)))

    @staticmethod
    def _step(run: Run) -> int:
        return ladder_step(run.state)

    @staticmethod
    def _abandoned_by(run: Run, at: datetime) -> dict[str, Any]:
        """``abandoned`` for a run bought or completed at ``at``, past its abandonment time, before its first
        step fired (with ``ladder_minutes[0]`` > 0, or a late timer): it was abandoned though never reminded."""
        if was_abandoned(run.state) or "abandoned_at" not in run.state or at < datetime.fromisoformat(run.state["abandoned_at"]):
            return {}
        return {"abandoned": True}

    @staticmethod
    def _ladder_start(updated_at: datetime, config: CheckoutRecoveryConfig) -> tuple[datetime, datetime]:
        abandoned_at = updated_at + timedelta(minutes=config.abandon_after_minutes)
        return abandoned_at, abandoned_at + timedelta(minutes=config.ladder_minutes[0])

    def _checkout(self, c: ev.Checkout, run: Run | None, facts: Facts, config: CheckoutRecoveryConfig, now: datetime) -> list[Command]:
        if run is not None and run.state.get("waits_for_payment"):
            return []  # she checked out: her order is what the run waits on, not the checkout (``_waits_here``)
        if c.completed_at is not None:
            if run is None or run.status != "active" or run.state.get("completed_at"):
                return []
            if int(run.state.get("sent", 0)) and config.completed_wait_minutes > 0:
                # reminded: wait a while for the order, so it can be credited. The Cart Abandonment
                # Recovery plugin posts "completed" at once while WooCommerce queues its order webhooks,
                # and a WooCommerce order names no cart: it finds this run only while it is active.
                # A reminder still waiting (quiet hours, a retry) is withdrawn now: the cart was bought
                return [Update({"completed_at": c.completed_at.isoformat()}), Withdraw(),
                        Wake(now + timedelta(minutes=config.completed_wait_minutes))]
            late = self._abandoned_by(run, c.completed_at)
            return [*([Update(late)] if late else []), Wake(None), Finish("completed")]
        abandoned_at, first = self._ladder_start(c.updated_at, config)
        state = {"abandoned_at": abandoned_at.isoformat(), **self._cart(c)}
        if run is None:
            if facts.contact_id is None or not c.recovery_url or self._cart_of_her_order(c, facts, config, now):
                return []
            # a checkout that names no phone of its own (Shopify's poll; her first step, the email, before the phone
            # she types with the address) is on her account's contact: a guess the first phone it gives corrects
            guessed = {} if c.phone_on_checkout and c.customer.phone is not None else {ACCOUNT_PHONE: True}
            return [Start(f"checkout:{c.token}", facts.contact_id, {**state, "sent": 0, **guessed}), Wake(first)]
        if run.status != "active":
            return []
        moved = self._to_checkout_phone(c, run, facts)
        if moved:
            return moved + (self._checkout(c, replace(run, contact_id=facts.contact_id, state={**run.state, ACCOUNT_PHONE: False}),
                                           facts, config, now))
        if self._another_contact(c, run, facts):
            # her checkout now gives another number: nothing more to the one she replaced (a typo may be a
            # stranger's, and the link opens her checkout); the run's contact (its holdout group, its consent)
            # is fixed, so the ladder ends rather than moving to the new number
            return [Update({"contact_changed_to": facts.contact_id}), Wake(None), Finish("contact_changed")]
        if self._step(run) == 0:
            return [Update(state), Wake(first)]  # still shopping: push back
        if not c.recovery_url:
            return []
        # back after a reminder: the next ones quote the cart as it is now, on the ladder's own times, and so does
        # the last one if it still waits to go out (held for quiet hours: written when it was queued)
        step = self._step(run) - 1
        return [Update(self._cart(c)), Refresh(STEPS[step], self._context({**run.state, **self._cart(c)}, step, config))]

    @staticmethod
    def _cart(c: ev.Checkout) -> dict[str, Any]:
        """What the reminders quote: the checkout's link, total and first product, as last heard."""
        return {"recovery_url": c.recovery_url, "total": str(c.total), "currency": c.currency,
                "product": c.line_items[0].title if c.line_items else None}

    def _to_checkout_phone(self, c: ev.Checkout, run: Run, facts: Facts) -> list[Command]:
        """A run started by a read that could not see the checkout's phone (Shopify's poll, before the
        checkout's webhook came: a late or retried delivery) is on the customer's account phone, maybe an
        old number. The first read that sees the checkout's phone moves it there, once (a later change is
        ``contact_changed``): that is the number she typed for this checkout. Before its first step the
        run is as if it had started there (its holdout group decided again; consent is the new contact's
        at each step anyway). After it, the ladder goes on to the new number from its next step and keeps
        its group; a reminder still waiting for the old number is not sent (``engine.Rehome``)."""
        if not run.state.get(ACCOUNT_PHONE) or not c.phone_on_checkout or c.customer.phone is None or facts.contact_id is None:
            return []
        if facts.contact_id == run.contact_id:  # the same number: the run's contact is hers now
            return [Update({ACCOUNT_PHONE: False})]
        return [Update({ACCOUNT_PHONE: False, "moved_from_contact": run.contact_id}),
                Rehome(facts.contact_id, regroup=self._step(run) == 0)]

    @staticmethod
    def _another_contact(c: ev.Checkout, run: Run, facts: Facts) -> bool:
        """Whether the checkout now gives a phone that is another contact's than the run's (she corrected it)."""
        return c.customer.phone is not None and facts.contact_id is not None and run.contact_id is not None \
            and facts.contact_id != run.contact_id

    def _unpaid_order(self, event: Any, run: Run | None, facts: Facts, config: CheckoutRecoveryConfig, now: datetime) -> list[Command]:
        """A WooCommerce pending/failed order as a checkout: ladder while unpaid, recovered once paid.

        An order placed from a cart whose ladder had begun (the plugin's cart, reminded, and now
        an order waiting for its payment) goes on with that ladder, not a new one: the next
        reminder is the cart's next step, and the cart's reminders count for attribution
        (``continues``; the cart run ends ``order_pending``, ``_converted``)."""
        o = event.order
        if run is None:
            if config.order_before_payment and awaits_payment(o) and not unpaid_order(o) and isinstance(event, ev.OrderPlaced) \
                    and facts.contact_id is not None:
                # on-hold (a bank transfer): she checked out, and her reminded cart waits for the money (no pay link to offer)
                return self._waits_for_payment(o, facts, config, now, placed=True, checked_out=True)
            if not config.order_before_payment or not unpaid_order(o) or o.checkout_token or not o.payment_url \
                    or facts.contact_id is None or isinstance(event, (ev.OrderPaid, ev.OrderCancelled)) \
                    or o.channel != ev.SalesChannel.ONLINE:  # staff's, a renewal, a till's: no cart left (the pay reminder's)
                return []
            if not self._takes(event, facts, config):
                return self._waits_for_payment(o, facts, config, now, placed=isinstance(event, ev.OrderPlaced))
            abandoned_at, first = self._ladder_start(o.updated_at, config)
            state: dict[str, Any] = {
                "abandoned_at": abandoned_at.isoformat(), "recovery_url": o.payment_url, "total": str(o.total), "currency": o.currency,
                "product": o.line_items[0].title if o.line_items else None, "unpaid_order": o.external_id, "sent": 0}
            cart = self._cart_reminded(facts, config, now)
            if cart is not None:
                step = self._step(cart)
                state.update({k: cart.state[k] for k in ("sent", "first_sent_at", "last_sent_at") if k in cart.state},
                             step=step, **self._continuing(cart))
                if step < len(config.ladder_minutes):
                    first = abandoned_at + timedelta(minutes=config.ladder_minutes[step])
                else:  # the cart's ladder is over: only its attribution window is left
                    last = cart.state.get("last_sent_at")
                    first = (datetime.fromisoformat(last) if last else now) + timedelta(days=config.attribution_days)
            return [Start(f"order:{o.external_id}", facts.contact_id, state), Wake(first)]
        if run.status != "active":
            return []
        if isinstance(event, ev.OrderCancelled) or o.cancelled_at is not None:
            return self._cancelled(run, config, now)
        if awaits_payment(o):
            if run.state.get("pay_reminder") or run.state.get("holds_cart") or run.state.get("waits_for_payment") \
                    or run.state.get("order_cancelled"):
                return []  # a silent run: it keeps its own time
            if not unpaid_order(o):  # on-hold (a bank transfer): she checked out, the money is still to come
                return self._waits_here(o, run, config, now)
            if self._step(run) == 0:  # another try at paying: the customer is still at it
                abandoned_at, first = self._ladder_start(o.updated_at, config)
                return [Update({"abandoned_at": abandoned_at.isoformat()}), Wake(first)]
            return []
        return self._converted(o, run, facts, config, now, at=o.updated_at)  # paid (or moved on some other way)

    @staticmethod
    def _cancelled(run: Run, config: CheckoutRecoveryConfig, now: datetime) -> list[Command]:
        """Her unpaid order was cancelled (WooCommerce cancels one left unpaid after its hold-stock minutes):
        no more reminders, its pay link is dead, and one still waiting is withdrawn. A run whose reminders
        (its own, or the cart's it went on from) were queued listens out their attribution window, as the
        ladder does after its last step: the order she places instead, paid, is what they recovered (one that
        waits for its payment first goes on from this run: ``_cart_reminded``)."""
        if run.state.get("order_cancelled"):
            return []  # the cancel heard again (its update echoes it)
        last = run.state.get("last_sent_at")
        ends = datetime.fromisoformat(last) + timedelta(days=config.attribution_days) if last else None
        if not int(run.state.get("sent", 0)) or ends is None or ends <= now:
            return [Wake(None), Finish("order_cancelled")]
        return [Update({"order_cancelled": True}), Withdraw(), Wake(ends, listening=True)]

    @staticmethod
    def _takes(event: Any, facts: Facts, config: CheckoutRecoveryConfig) -> bool:
        """Whether this ladder takes an unpaid order: with ``unpaid_orders``, and when payment_recovery
        takes them too, only a customer the ladder can reach (``_common.cart_ladder_takes``)."""
        return config.unpaid_orders and (not config.unpaid_orders_by_consent or cart_ladder_takes(event, facts))

    def _waits_for_payment(self, o: ev.Order, facts: Facts, config: CheckoutRecoveryConfig, now: datetime,
                           placed: bool = False, checked_out: bool = False) -> list[Command]:
        """An unpaid order this ladder leaves to the pay reminder (or to nobody), placed from a cart
        whose reminders went out: a run that sends nothing and waits out the cart's attribution
        window for the payment, so a payment that comes still credits the cart's reminders
        (``continues``), and an order that is never paid credits nothing. ``checked_out``: an order on hold
        for its money (a bank transfer), not left at the payment step: a cart whose ladder ended days ago
        and still listens out its window waits for it too (paid at once, the order would have been its).

        With no reminded cart, an order she ``placed`` still gets a silent run, for a day: the plugin posts the cart
        she checked out with "abandoned" minutes later (it keeps a cart until its order is paid), and that cart
        must start no ladder beside the order's own home, the pay reminder or the wait (``_cart_of_her_order``)."""
        cart = self._cart_reminded(facts, config, now)
        if cart is None and checked_out:
            cart = max((r for r in facts.extra.get("open_runs", ()) if r.subject.startswith("checkout:") and r.status == "active"
                        and int(r.state.get("sent", 0))), key=self._step, default=None)
        bought = {"unpaid_order": o.external_id, "products": _titles(o)}
        if cart is None or not int(cart.state.get("sent", 0)):
            if not placed or not config.order_before_payment:
                return []
            # the pay reminder has it (decided as it was placed), or it waits for her money: a silent run keeps the cart the plugin
            # posts minutes later (with an opt-in that now lets the ladder reach her) from starting a ladder
            silent = "pay_reminder" if config.unpaid_orders and config.unpaid_orders_by_consent and not checked_out else "holds_cart"
            return [Start(f"order:{o.external_id}", facts.contact_id, {**bought, silent: True, "sent": 0}),
                    Wake(now + CONTINUE_WITHIN, listening=True)]  # (it plans no message: no reason to hold a reorder reminder)
        state = {k: cart.state[k] for k in ("abandoned_at", "sent", "first_sent_at", "last_sent_at") if k in cart.state}
        last = cart.state.get("last_sent_at")
        ends = (datetime.fromisoformat(last) if last else now) + timedelta(days=config.attribution_days)
        return [Start(f"order:{o.external_id}", facts.contact_id, {**state, **bought, "step": self._step(cart), **self._continuing(cart),
                                                                 "waits_for_payment": True}),
                Wake(ends)]

    def _waits_here(self, o: ev.Order, run: Run, config: CheckoutRecoveryConfig, now: datetime) -> list[Command]:
        """She checked out, but the money is still to come (a bank transfer, a money order): her ladder ends
        (no more reminders, one still waiting is withdrawn), and the run waits silently, as
        ``_waits_for_payment`` does, out the attribution window of its last reminder: paid in it, the order
        is credited then, with its revenue; never paid (cancelled, or the window passes), it credits nothing."""
        last = run.state.get("last_sent_at")
        ends = (datetime.fromisoformat(last) if last else now) + timedelta(days=config.attribution_days)
        waiting = {"waits_for_payment": True, "awaits_order": o.external_id, "products": _titles(o),
                   **self._abandoned_by(run, o.created_at)}
        if ends <= now:
            return [Update(waiting), Wake(None), Finish("not_paid")]
        return [Update(waiting), Withdraw(), Wake(ends, listening=True)]

    @staticmethod
    def new_cart_sees_open_runs(config: CheckoutRecoveryConfig) -> bool:
        """The runner's hook: a cart heard for the first time decides beside her open runs of this journey
        (``facts.extra["open_runs"]``) only where an order exists before its payment (WooCommerce), so a
        Shopify checkout costs no lookup of her runs."""
        return config.order_before_payment

    def _cart_of_her_order(self, c: ev.Checkout, facts: Facts, config: CheckoutRecoveryConfig, now: datetime) -> bool:
        """Whether a cart heard now is the one her unpaid order came from (``facts.extra["open_runs"]``), so it
        starts no ladder. The Cart Abandonment Recovery plugin clears a cart only once its order is processing
        or completed (platform-facts B4), so the cart she left at the payment step, paid by bank transfer
        (``on-hold``) or whose card was declined (``failed``) is posted "abandoned" after its order:
        - her order runs this ladder, still on it or reminded within ``CONTINUE_WITHIN``: one ladder each would
          remind her twice of one checkout (an order ladder that ended days ago is no reason: another purchase);
        - her order waits for its payment (the wait, the pay reminder's order, or one nobody reminds of), placed
          within ``CONTINUE_WITHIN`` before the cart, and the cart names no product the order lacks: "you left
          something in your cart" to a customer who checked out and is paying. The post names no order and the
          order no cart session, so her contact, the time and the products are all that link them; a cart
          posted a day later, or with a product she did not order, is another purchase and gets its ladder."""
        for r in facts.extra.get("open_runs", ()):
            if not (r.subject.startswith("order:") and r.status == "active" and r.state.get("unpaid_order")) \
                    or r.state.get("order_cancelled"):
                continue
            if not any(r.state.get(k) for k in ("waits_for_payment", "holds_cart", "pay_reminder")):
                if self._current(r, config, now):
                    return True
            elif now - r.started_at <= CONTINUE_WITHIN and not _another_product(c, r.state.get("products")):
                return True
        return False

    def _current(self, r: Run, config: CheckoutRecoveryConfig, now: datetime) -> bool:
        """A run still on its ladder, or whose last reminder is within ``CONTINUE_WITHIN``."""
        if self._step(r) < len(config.ladder_minutes):
            return True
        last = r.state.get("last_sent_at")
        return last is not None and now - datetime.fromisoformat(last) <= CONTINUE_WITHIN

    def _cart_reminded(self, facts: Facts, config: CheckoutRecoveryConfig, now: datetime) -> Run | None:
        """The customer's open run furthest up its ladder (``facts.extra["open_runs"]``) that this order goes on
        from: a checkout with a reminder queued, and still reminding or reminded within ``CONTINUE_WITHIN`` (a
        cart whose ladder ended days ago and only waits out its attribution window is another purchase); or her
        cancelled unpaid order whose reminders went out, which listens out their window for the order she places
        instead (``_cancelled``): this is that order, whenever in the window it comes."""
        carts = [r for r in facts.extra.get("open_runs", ()) if r.status == "active" and (
                 (r.subject.startswith("checkout:") and self._step(r) and self._current(r, config, now))
                 or (r.subject.startswith("order:") and r.state.get("order_cancelled") and int(r.state.get("sent", 0))))]
        return max(carts, key=self._step, default=None)

    @staticmethod
    def _continuing(run: Run) -> dict[str, Any]:
        """What a run that goes on with ``run``'s ladder keeps, so ``run``'s reminders (and those of the ladders it
        went on from itself: a cart, then her cancelled order) count as its own: in attribution, in the report's
        one checkout, and for a reply quoting them (``_common.continued``)."""
        chain = continued(run.state)
        return {"continues": run.subject, **({"continues_also": list(chain)} if chain else {})}

    def _remind(self, run: Run, facts: Facts, config: CheckoutRecoveryConfig, now: datetime) -> list[Command]:
        """The next step of the ladder. ``step`` is the ladder position; ``sent`` (and the times) count
        reminders queued for a customer who can get them: one the policy gate will skip for consent
        (no marketing opt-in, opted out, unreachable: ``facts.extra["marketing_ok"]``) is still
        queued, so the skip and its reason are on record, but not counted. Queued is not sent:
        attribution asks what went out (``_attributed``)."""
        step = self._step(run)
        if step >= len(config.ladder_minutes):
            return [Wake(None), Finish("no_conversion", skip_waiting=False)]
        ctx = self._context(run.state, step, config)
        abandoned_at = datetime.fromisoformat(run.state["abandoned_at"])
        progress: dict[str, Any] = {"step": step + 1}
        if facts.extra.get("marketing_ok", True):
            sent = int(run.state.get("sent", 0))
            progress.update(sent=sent + 1, last_sent_at=now.isoformat(), **({} if sent else {"first_sent_at": now.isoformat()}))
        commands: list[Command] = [Update(progress), Send(STEPS[step], ctx)]
        if step + 1 < len(config.ladder_minutes):
            commands.append(Wake(abandoned_at + timedelta(minutes=config.ladder_minutes[step + 1])))
        else:
            commands.append(Wake(now + timedelta(days=config.attribution_days), listening=True))  # the window after the last reminder
        return commands

    @staticmethod
    def _context(state: dict[str, Any], step: int, config: CheckoutRecoveryConfig) -> dict[str, Any]:
        """What ladder step ``step`` (0-based) quotes: the cart as the run keeps it, and the discount from its step on."""
        ctx: dict[str, Any] = {"checkout.recovery_url": state.get("recovery_url"), "checkout.total": (state.get("total"), state.get("currency")),
                               "reorder.product": state.get("product") or "your items"}
        if config.discount_code and step + 1 >= config.discount_from_step:
            ctx["discount.code"] = config.discount_code
        return ctx

    @staticmethod
    def _attributed(run: Run, facts: Facts, config: CheckoutRecoveryConfig, at: datetime) -> bool:
        """An order at ``at`` counts as recovered: after a reminder that went out, and within
        ``attribution_days`` of the last one before it. What went out is ``facts.extra["reminders_sent"]``
        (the runner's look at the outbox); without it (a caller that did not look) the run's own
        record of what it queued, and for runs from before those times were kept the planned ladder's end."""
        if int(run.state.get("sent", 0)) == 0:
            return False
        window = timedelta(days=config.attribution_days)
        sent = facts.extra.get("reminders_sent")
        if sent is not None:
            before = [t for t in sent if t <= at]
            return bool(before) and at <= max(before) + window
        first, last = run.state.get("first_sent_at"), run.state.get("last_sent_at")
        if last:
            return datetime.fromisoformat(first or last) <= at <= datetime.fromisoformat(last) + window
        abandoned_at = datetime.fromisoformat(run.state["abandoned_at"])
        return at <= abandoned_at + timedelta(minutes=config.ladder_minutes[-1]) + window

    def _credited(self, order: ev.Order, facts: Facts) -> str | None:
        """The one run an order credits when it reaches several of the customer's runs
        (``facts.extra["order_runs"]``: each with when its reminders went out), so one order is
        never recovered twice. Its own checkout's run when a reminder of it went out before the
        order (the checkout the order names; on WooCommerce, which names none, a cart the plugin
        reported completed); else the run whose reminder went out last before the order (then the
        one that queued one last, then the newest). An own checkout never reminded gives way to
        the cart that was: whether its run exists depends only on whether Shopify delivered its
        checkout before the order (a checkout heard after its order starts none), and the credit
        must not. None: the order reaches one run only, which it credits."""
        runs = facts.extra.get("order_runs") or ()
        if len(runs) < 2:
            return None
        own = self.subject(ev.OrderPlaced(order=order), facts)
        if any(r.subject == own and any(t <= order.created_at for t in sent or ()) for r, sent in runs):
            return own

        def rank(item: tuple[int, tuple[Run, tuple[datetime, ...] | None]]) -> tuple[bool, datetime, datetime, int]:
            i, (r, sent) = item
            went = [t for t in sent or () if t <= order.created_at]
            queued = r.state.get("last_sent_at")
            return (bool(r.state.get("completed_at")), max(went, default=_NEVER),
                    datetime.fromisoformat(queued) if queued else _NEVER, i)

        return max(enumerate(runs), key=rank)[1][0].subject

    def _converted(self, order: ev.Order, run: Run, facts: Facts, config: CheckoutRecoveryConfig, now: datetime,
                   at: datetime | None = None) -> list[Command]:
        """The customer ordered: recovered when it came inside the attribution window, once it is paid
        (or cash on delivery: credited as placed).

        ``at`` is when the order counts (an order whose payment came after it: when it was paid).
        """
        if run.state.get("order_id"):
            return []
        if awaits_payment(order) and (run.status != "active" or any(run.state.get(k) for k in ("waits_for_payment", "holds_cart",
                                                                                                "pay_reminder"))):
            # no purchase yet, and this run has nothing to wait on or already waits on hers; a silent run keeps its day,
            # so the plugin's later post of the cart its own order came from still finds it (``_cart_of_her_order``)
            return []
        if config.order_before_payment and awaits_payment(order):
            # not bought yet (WooCommerce makes the order before the payment): no credit. The order's
            # own run takes it from here: the ladder with its pay link, the pay reminder (``_takes``),
            # or the wait for its payment (on-hold, a bank transfer: ``_waits_for_payment``)
            return [Update({"superseded_by": order.external_id}), Wake(None), Finish("order_pending")]
        if self._credited(order, facts) not in (None, run.subject):
            # the order is another checkout's (a customer with several carts buys once): no revenue here
            if run.status != "active":
                return []
            return [Update({"converted_elsewhere": order.external_id}), Wake(None), Finish("converted_elsewhere")]
        if awaits_payment(order):  # Shopify's pending (a bank deposit): her payment, heard on this checkout, credits it
            return self._waits_here(order, run, config, now)
        at = at or order.created_at
        recovered = self._attributed(run, facts, config, at)
        commands: list[Command] = [Update({"order_id": order.external_id, "recovered": recovered, **self._abandoned_by(run, at),
                                           "revenue": str(order.total) if recovered else "0", "currency": order.currency})]
        if run.status == "active":
            commands += [Wake(None), Finish("recovered" if recovered else "converted")]
        return commands


def _titles(o: ev.Order) -> list[str]:
    """The order's product names, kept on its run to tell the cart she checked out with from a new one."""
    return [li.title for li in o.line_items if li.title]


def _another_product(c: ev.Checkout, ordered: list[str] | None) -> bool:
    """Whether the cart names a product her order does not have. The plugin names a cart's products in one text
    ("A, B & C": the parent products' titles) that cannot be split safely (a name may hold either separator), so
    the order's titles (and a variation's product, "Shirt" of "Shirt - Blue, M") are taken out of it, longest
    first: anything but separators left is another product. Names missing on either side tell nothing apart."""
    left = html.unescape(" ".join(li.title for li in c.line_items if li.title)).casefold()
    if not left.strip() or not ordered:
        return False
    names = {html.unescape(t).casefold().strip() for t in ordered}
    names |= {m.group(1) for n in names if (m := _VARIATION.match(n))}
    for name in sorted((n for n in names if n), key=len, reverse=True):
        left = left.replace(name, " ")
    return bool(_NAME_SEPARATORS.sub("", left))
