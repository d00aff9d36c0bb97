"""COD confirmation (utility): Confirm / Cancel quick replies that write back to the store.

Placed COD order -> (optional delay, skipped if cancelled meanwhile) ask -> reminders at the
configured intervals -> no answer: the configured action (tag for a call, or cancel). A reminder
sent late (its timer waited while the app was uninstalled) moves what follows by as much.
Confirm tags the order and locks the choice; Cancel cancels it (or only tags it) unless it
has been fulfilled. A tap days later, or twice, changes nothing once the choice is locked; the
opposite tap (Cancel after Confirm, Confirm after her Cancel or after the store cancelled the
order) changes nothing either, but a person hears what she tapped, once.

Once the order has shipped, fully or partly (an order event or a fulfilment saying so, or the
order as stored when a timer fires), the run ends: no more asks or reminders, no no-answer
action, and no write-back ever changes its status; a late Confirm only tags it, a late Cancel
goes to a person (so does a Cancel whose order ships before its cancel reaches the store: the
write-back is then skipped, ``WriteBack.if_shipped``). A tap after the no-answer step is still
honoured while the order is open: Confirm confirms (and notes that the unconfirmed tag is stale: the store clients cannot
remove a tag), Cancel cancels per ``cancel_action``; a tap made before the deadline counts as
answered in time. A Confirm after a no-answer cancel goes to a person (we cannot undo one), unless
it was made in time and the cancel is still waiting to be made (the store was down): that cancel is
withdrawn and the order confirmed.
An order paid in full before she answered (she paid the store's invoice, the merchant marked it
paid: an event saying so, or the order as stored when a timer fires) is prepaid now: the run ends
(``choice`` "paid"), with no reminder and no no-answer action (a cancel of a paid order refunds
nothing); her Cancel tap after it goes to a person. An advance on a COD order is still COD.
A customer who opted out (STOP) after the question is not one who did not answer: at the
deadline her order is flagged for a call and a person hears of it, never cancelled. The same
for one none of our messages had reached by the deadline (``not_reached``). A tap after either
(a question delivered late: her phone was off for two days) is honoured as after the no-answer
step, and the case that asked for a call hears what she tapped and what was done, if still open.

A typed answer to the question (a message quoting the ask or a reminder, or quoting nothing while
the question is the message she got last), a photo or a voice note, goes to a person
(handoffs.rules opens the case; the runner says so, ``handed_off``, with the case's id): the run
stops reminding and takes no no-answer action, since only a person can read what she wrote
(``phase`` "with_person"; a Confirm or Cancel tap after it still counts).
An order whose customer wrote back is never cancelled for no answer. But it is not left waiting
on a person for ever: at the answer deadline, if her case is still open (nobody closed it) and the
order has not moved on (cancelled, shipped, confirmed: each ends the run), it is tagged
``unconfirmed_tag`` for a call and the case hears so (``deadline`` "flagged"); a case a person
closed was dealt with (``deadline`` "case_closed"), and the order is left as they left it.

A cancel with a reason goes to a person (a hand-off for the contact's stage owner, the
COD team): the reason comes with the tap (a ``cancel_reasons`` button), or, with
``cancel_reason_minutes``, as the customer's next message after a plain Cancel (the run
waits for it, ``awaiting_reply``, and the general free-text hand-off stands back): one
quoting nothing or this order's own message; words quoting another journey's or order's
message answer that one instead. The
cancel itself follows ``cancel_action`` at the tap, whatever the reason.

A tap the runner cannot tie to one of our messages (the ask's send outcome was lost, so its
message id is unknown) reaches all of her open COD runs (``reached_runs``): it acts only when one
of them has an open question (a run still in its delay has none, even alone); with several, none
is changed, they stop asking, and a person asks her which order she meant.

An order taken at the store's till (Shopify POS) is not asked about unless ``include_pos``.

With ``prepaid_offer``, Confirm also offers to pay now (the order's payment link, ``prepaid_discount_code``). A
promotional template waits out quiet hours; the order paid, cancelled or shipped before it goes out withdraws it
(``prepaid_offer_withdrawn``), and an opt-out stops it at the gate.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any, ClassVar, Literal

from pydantic import Field, field_validator, model_validator

from connector import events as ev
from connector.errors import Problems
from connector.journeys._common import deleted_order, end_for_deleted_order, order_context, replied_here
from connector.journeys.engine import (
    Command, Facts, Finish, Handoff, JourneyConfig, MoveStage, Run, Send, Start, TimerFired, Update, Wake, Withdraw, WithdrawWriteBack,
    WriteBack,
)
from connector.policy import PolicyRules, keyword_intent

KEYWORDS = PolicyRules()  # STOP / START are never a cancel reason (the store's own extra words are not known here)
SHIPPED = ("fulfilled", "partial")  # fully or partly shipped: too late to cancel by tap, or to move its status
# ``closed_by`` of a run the order's shipping ended (the timer writes "order.shipped"); the other one is "order.cancelled"
SHIPPED_BY = ("order.fulfilled", "order.updated", "fulfillment.updated", "order.shipped")
CONFIRMED = ("confirmed", "confirmed_late", "confirmed_by_store")  # locked choices a Cancel tap goes against
CANCELLED = ("cancelled", "cancel_too_late")  # locked choices a Confirm tap goes against
# the deadline's choices a tap still overrides while the order is open (not reached: a message delivered late, say)
AFTER_DEADLINE = ("no_answer", "opted_out", "not_reached")
CALL_ASKED = ("opted_out", "not_reached")  # of those, the ones a hand-off asked a person to call her about
# WooCommerce statuses of an order whose checkout is not done: the COD gateway moves it on (``_checkout_done``)
BEFORE_CHECKOUT = ("pending", "checkout-draft")
# WooCommerce statuses before processing, where the COD gateway puts its orders (on-hold with a downloadable item): a
# status write-back never moves an order back (adapters/woocommerce/client.py ``refusal``), so a confirm_status among
# them works only for COD orders that arrive before it (pending, a plugin's own status): ``check-config`` warns
BEFORE_PROCESSING = ("pending", "on-hold")


def _choice_in(commands: list[Command]) -> str | None:
    """The choice a decision records (its ``Update``'s ``choice``: confirmed, cancelled...), for a case's note."""
    return next((c.state["choice"] for c in commands if isinstance(c, Update) and "choice" in c.state), None)


def shipped_event(event: Any) -> bool:
    """A store event saying the order has left the warehouse, at least in part."""
    if isinstance(event, ev.OrderFulfilled):
        return True
    if isinstance(event, ev.OrderUpdated):
        return event.order.fulfillment_state.value in SHIPPED and event.order.cancelled_at is None
    if isinstance(event, ev.FulfillmentUpdated):
        return event.fulfillment.status == "success"
    return False


def paid_event(event: Any) -> bool:
    """A store event saying the order is paid in full before it shipped (she paid the store's invoice
    online, the merchant marked it paid): cash on delivery no longer. An advance on a COD order
    (``partially_paid``) is still COD and still asked about."""
    return (isinstance(event, (ev.OrderPaid, ev.OrderUpdated)) and event.order.payment_state is ev.PaymentState.PAID
            and event.order.cancelled_at is None)


class CodConfirmationConfig(JourneyConfig):
    delay_minutes: float = Field(0, ge=0, description="wait before asking (skipped if the order is cancelled meanwhile)")
    reminder_hours: tuple[float, ...] = Field((6.0, 24.0), description="reminders, hours after the first ask")
    answer_window_hours: float = Field(48, gt=0, description="after this with no answer: no_answer_action")
    no_answer_action: Literal["tag", "cancel", "none"] = "tag"
    confirm_tag: str = "cod-confirmed"
    unconfirmed_tag: str = "cod-unconfirmed"
    cancel_action: Literal["cancel", "tag"] = "cancel"
    cancelled_tag: str = "cod-cancelled-by-customer"
    confirm_status: str | None = Field(None, description="WooCommerce: status to set on confirm, e.g. 'processing'")
    include_pos: bool = Field(False, description="also ask about COD orders taken at the store's till (Shopify POS): "
                                                 "by default a customer who ordered in the shop is not asked to confirm")

    @field_validator("confirm_status")
    @classmethod
    def _status_as_woocommerce_reports_it(cls, value: str | None) -> str | None:
        """'wc-Processing' and 'processing' are one status: kept as an order's status reads (``_store_confirmed``)."""
        return (value.strip().lower().removeprefix("wc-") or None) if value is not None else None
    confirm_payloads: tuple[str, ...] = ("cod_confirm",)
    cancel_payloads: tuple[str, ...] = ("cod_cancel",)
    cancel_reasons: dict[str, str] = Field(
        default_factory=dict, description="buttons that cancel with a reason: payload -> reason, e.g. { cod_cancel_mistake = \"ordered by mistake\" }")
    cancel_reason_minutes: float = Field(0, ge=0, description="after a plain Cancel, wait this long for a reason (the next message, or a "
                                                              "cancel_reasons button; step cod_confirmation.cancel_reason asks); 0: no wait")
    send_acknowledgement: bool = Field(False, description="send cod_confirmation.confirmed / .cancelled after a tap")
    prepaid_offer: bool = Field(False, description="after Confirm, offer to pay now (step cod_confirmation.prepaid_offer)")
    prepaid_discount_code: str | None = Field(None, description="an incentive for paying now, bound as discount.code")

    @model_validator(mode="after")
    def _reminders_inside_the_window(self) -> "CodConfirmationConfig":
        """Reminders in order and before the answer deadline: one due after it would reach the
        customer as the no-answer action runs (a "please confirm" for an order being cancelled)."""
        hours = self.reminder_hours
        if any(h <= 0 for h in hours) or any(b <= a for a, b in zip(hours, hours[1:])):
            raise ValueError(f"reminder_hours must be positive and increasing, got {list(hours)}")
        if hours and hours[-1] >= self.answer_window_hours:
            raise ValueError(f"reminder_hours: the last reminder ({hours[-1]:g} h) must come before answer_window_hours "
                             f"({self.answer_window_hours:g} h), when no_answer_action runs")
        return self

    @model_validator(mode="after")
    def _buttons_mean_one_thing(self) -> "CodConfirmationConfig":
        """A button payload that both confirms and cancels is read as Confirm: the customer who
        taps Cancel would have her order confirmed (and, with a reason, the reason dropped)."""
        confirm = set(self.confirm_payloads)
        problems = [("cancel_payloads", f"{p!r} is also in confirm_payloads: a tap on it would confirm the order")
                    for p in self.cancel_payloads if p in confirm]
        problems += [("cancel_reasons", f"{p!r} is also in confirm_payloads: a tap on it would confirm the order")
                     for p in self.cancel_reasons if p in confirm]
        if problems:
            raise Problems(problems)
        return self


class CodConfirmation:
    name: ClassVar[str] = "cod_confirmation"
    stage: ClassVar[str] = "qualification"  # whose cases its hand-offs are (handoffs.journey_stage)
    config_model: ClassVar[type[JourneyConfig]] = CodConfirmationConfig
    template_steps: ClassVar[tuple[str, ...]] = ("ask", r"reminder_\d+", "confirmed", "prepaid_offer", "cancelled", "cancel_reason")
    follows_contact: ClassVar[bool] = True  # an unquoted message can be the cancel reason a run waits for
    # state keys that can hold what the customer typed (her cancel reason): the conversation retention empties them
    customer_words: ClassVar[tuple[str, ...]] = ("cancel_reason",)
    discount_setting: ClassVar[str] = "prepaid_discount_code"  # what check-config names when a template's code is never given

    @staticmethod
    def discount_steps(config: CodConfirmationConfig) -> frozenset[str]:
        """The steps whose message carries ``discount.code`` (``_confirm``): the prepaid offer, only with a
        ``prepaid_discount_code``. A template that binds it without one is never sent: ``check-config`` warns."""
        return frozenset({"prepaid_offer"}) if config.prepaid_discount_code else frozenset()

    @staticmethod
    def warnings(config: CodConfirmationConfig) -> list[str]:
        """Settings that load but fail on many stores (``check-config``, the log at start): a ``confirm_status``
        before processing. Warned, not refused: a store whose COD orders arrive pending or in a plugin's status
        moves them forward to it, which works."""
        if config.confirm_status not in BEFORE_PROCESSING:
            return []
        return [f"confirm_status {config.confirm_status!r} comes before processing: a COD order that arrives in processing "
                "(WooCommerce's Cash on Delivery gateway's default) cannot be moved back to it, so each Confirm of one is a "
                "failed status write-back and a hand-off for the COD desk" + (", and an order already on hold is left as it "
                "is" if config.confirm_status == "on-hold" else "") + ". It works only when your COD orders arrive pending or "
                "in a status a plugin adds; otherwise use 'processing' (with COD orders kept on hold until confirmed: the "
                "gateway's woocommerce_cod_process_payment_order_status filter), or leave it unset (Confirm tags the order)"]

    @staticmethod
    def resumed(run: Run, paused: timedelta) -> dict[str, Any]:
        """The order was restored after ``paused`` in the bin (``runner.on_restored``): an asked run's reminders and
        answer deadline, reckoned from the question, move by as much (``slipped``), as the run's timer does."""
        if run.state.get("asked_at") is None:
            return {}
        return {"slipped": float(run.state.get("slipped", 0)) + paused.total_seconds()}

    def subject(self, event: Any, facts: Facts) -> str | None:
        if isinstance(event, ev.OrderDeleted):
            return deleted_order(event)
        if isinstance(event, (ev.OrderPlaced, ev.OrderUpdated, ev.OrderCancelled, ev.OrderFulfilled, ev.OrderPaid)):
            return f"order:{event.order.external_id}" if event.order.is_cod else None
        if isinstance(event, ev.FulfillmentUpdated):  # the event names no payment method: the stored order does
            return f"order:{facts.order.external_id}" if facts.order is not None and facts.order.is_cod else None
        if isinstance(event, (ev.ButtonReplied, ev.MessageReceived)):
            return replied_here(event, facts, self.name)
        return None

    def decide(self, event: Any, run: Run | None, facts: Facts, config: CodConfirmationConfig, now: datetime) -> list[Command]:
        if isinstance(event, ev.OrderDeleted):
            return end_for_deleted_order(run)
        if run is None:
            return self._start(event, facts, config, now)
        if run.status != "active" and run.state.get("prepaid_offered") and not run.state.get("prepaid_offer_withdrawn"):
            moved = self._moved_on(event)
            if moved is not None:  # an offer still waiting (quiet hours, a retry) no longer makes sense
                return [Update({"prepaid_offer_withdrawn": moved}), Withdraw()]
        waiting = run.status == "active" and run.state.get("phase") == "cancel_reason"
        if run.status == "active" and not waiting:
            if isinstance(event, ev.OrderCancelled) or (isinstance(event, ev.OrderUpdated) and event.order.cancelled_at is not None):
                # an update can be the first (or only) word of it: Shopify's orders/cancelled is dropped as
                # stale when the orders/updated it came with was newer
                return [Update({"closed_by": "order.cancelled"}), Wake(None), Finish("order_cancelled")]
            if shipped_event(event):
                return [Update({"closed_by": event.type}), Wake(None), Finish("fulfilled_unanswered")]
            if paid_event(event):
                return self._paid_meanwhile()
            if isinstance(event, ev.OrderUpdated) and self._checkout_done(event.order, run, config):
                # the COD gateway took it out of pending at checkout: the status it sat in after that is its placed one
                return [Update({"placed_status": event.order.platform_status})]
            if isinstance(event, ev.OrderUpdated) and self._store_confirmed(event.order, run, config):
                # the store moved it to the confirm status itself (a call, say): no reminder, and above all
                # no "no answer" cancel of an order the customer has confirmed
                return [Update({"choice": "confirmed_by_store", "closed_by": "store.status"}), Wake(None),
                        MoveStage("post_purchase"), Finish("confirmed_by_store")]
        if isinstance(event, ev.ButtonReplied):
            if facts.extra.get("reply_journey") is not None and replied_here(event, facts, self.name) != run.subject:
                return []  # a tap on another message (this run hears all of the contact's taps)
            if self._unmatched_tap(event, run, facts, config):
                # only a run with an open question can be meant: one still waiting to ask (``delay_minutes``) is
                # about an order she was never asked about, even when it is the only run the tap reached
                meant = [r for r in facts.extra.get("reached_runs", (run,)) if self._open_question(r)]
                if len(meant) > 1:
                    return self._unmatched(event, run, config, meant)
                if not meant or meant[0].subject != run.subject:
                    return []  # it matched no message, and this is not the one order it can mean
            if waiting and event.payload in config.cancel_reasons:
                return self._with_reason(run, facts, config.cancel_reasons[event.payload])
            commands = self._reply(event, run, facts, config, now)
            return commands + self._restored_news(event, run, facts, config, commands)
        if isinstance(event, ev.MessageReceived) and self._answers_question(event, run, facts):
            case = facts.extra.get("handed_off")  # the case her words opened or joined (the runner's id for it)
            known = {"case_id": case} if type(case) is int else {}
            # no reminder, no no-answer action; the deadline stays, for a person who never acts (``_unhandled``)
            return [Update({"phase": "with_person", "replied_at": event.occurred_at.isoformat(), **known}), Withdraw(),
                    Wake(self._deadline(run, config))]
        if isinstance(event, ev.MessageReceived) and waiting:
            if facts.extra.get("reply_quoted") and replied_here(event, facts, self.name) != run.subject:
                return []  # it quotes another journey's or order's message: it answers that, not why they cancelled
            text = " ".join((event.text or "").split())
            if text and keyword_intent(text, KEYWORDS) is None:
                return self._with_reason(run, facts, text[:300])
            return []
        if isinstance(event, TimerFired) and waiting:
            return [Update({"awaiting_reply": False}), Finish("cancelled")]  # no reason given: nothing for a person
        if isinstance(event, TimerFired) and run.status == "active":
            return self._timer(run, facts, config, now)
        return []

    @staticmethod
    def _moved_on(event: Any) -> str | None:
        """What a store event says happened to a confirmed order that makes its offer to pay now wrong: it was
        paid (by her, or marked paid), cancelled, or shipped. None: nothing of the kind."""
        if isinstance(event, ev.OrderCancelled) or (isinstance(event, ev.OrderUpdated) and event.order.cancelled_at is not None):
            return "order_cancelled"
        if paid_event(event):
            return "paid"
        if shipped_event(event):
            return "shipped"
        return None

    @staticmethod
    def _answer_payload(event: ev.ButtonReplied, config: CodConfirmationConfig) -> bool:
        return event.payload in config.confirm_payloads or event.payload in config.cancel_payloads or event.payload in config.cancel_reasons

    def _unmatched_tap(self, event: ev.ButtonReplied, run: Run, facts: Facts, config: CodConfirmationConfig) -> bool:
        """A Confirm or Cancel the runner tied to none of our messages (no ``reply_journey``: the question's send
        outcome was lost, so its message id is unknown). It reaches her active runs only: all of them told
        which (``reached_runs``) when there are several, the one alone by itself."""
        unrouted = "reached_runs" in facts.extra or (facts.extra.get("reply_journey") is None and run.status == "active")
        return unrouted and self._answer_payload(event, config)

    @staticmethod
    def _open_question(run: Run) -> bool:
        """A run a tap could answer: its question went out and no choice closed it (or it waits for her reason)."""
        return run.status == "active" and run.state.get("phase") in ("asked", "with_person", "cancel_reason")

    def _unmatched(self, event: ev.ButtonReplied, run: Run, config: CodConfirmationConfig, meant: list[Run]) -> list[Command]:
        """A Confirm or Cancel tap the runner could not tie to one message, while several of her COD
        questions are open: acting on all would confirm or cancel every order, so none is changed. Each
        open question stops asking (she did answer one of them) and a person asks her which order she
        meant: the first run (in id order) opens one case naming them all, once per kind of tap."""
        asking = run.state.get("phase") == "asked"
        speaks = run.subject == meant[0].subject and run.state.get("unmatched_tap") != event.payload
        # the case is the first run's (keyed by its subject): the others' deadlines look for it (``_persons_case``)
        case = {"case_subject": meant[0].subject} if asking and run.subject != meant[0].subject else {}
        state = {**({"phase": "with_person", "replied_at": event.occurred_at.isoformat(), **case} if asking else {}),
                 **({"unmatched_tap": event.payload} if speaks else {})}
        commands: list[Command] = ([Update(state)] if state else []) + ([Withdraw(), Wake(self._deadline(run, config))] if asking else [])
        if speaks:
            tapped = "Confirm" if event.payload in config.confirm_payloads else "Cancel"
            names = ", ".join(r.state.get("order_name") or f"#{r.subject.split(':', 1)[1]}" for r in meant)
            commands.append(Handoff(f"customer tapped {tapped} on a COD question we could not match to one of her open COD orders "
                                    f"({names}); none was changed: ask her which order she meant", waits=False))
        return commands

    def _answers_question(self, event: ev.MessageReceived, run: Run, facts: Facts) -> bool:
        """Words (a photo, a voice note) that answer this run's open question and went to a person:
        they quote its message, or quote nothing while its message is the one she got last."""
        return (run.status == "active" and run.state.get("phase") == "asked" and bool(facts.extra.get("handed_off"))
                and replied_here(event, facts, self.name) == run.subject)

    @staticmethod
    def _checkout_done(order: ev.Order, run: Run, config: CodConfirmationConfig) -> bool:
        """WooCommerce: an order first seen before its checkout was done (``pending``: a synchronous webhook,
        an order created in the admin; a block checkout's ``checkout-draft``) now shows another status. That
        move is the COD gateway's (processing, or on-hold with downloadable items), not the store confirming
        it: whether it comes before the question or after (with no delay the question goes out as
        order.created arrives, and the gateway's update seconds later), it only says where the order sits
        now. (WooCommerce cancels a checkout order left pending after *Hold stock*: no store waits there.)"""
        if not config.confirm_status or order.platform_status is None:
            return False
        return run.state.get("placed_status") in BEFORE_CHECKOUT and order.platform_status not in BEFORE_CHECKOUT

    @staticmethod
    def _store_confirmed(order: ev.Order, run: Run, config: CodConfirmationConfig) -> bool:
        """WooCommerce: the order reached ``confirm_status`` from another status it sat in once placed
        (``_checkout_done``; a run from before ``placed_status`` was kept cannot tell, and goes on)."""
        if not config.confirm_status or order.platform_status is None:
            return False
        placed = run.state.get("placed_status")
        return order.platform_status == config.confirm_status and placed is not None and placed != config.confirm_status

    @staticmethod
    def _order_name(run: Run, facts: Facts) -> str:
        order_id = run.subject.split(":", 1)[1]
        if facts.order is not None and facts.order.external_id == order_id:
            return facts.order.name
        return run.state.get("order_name") or f"#{order_id}"

    def _with_reason(self, run: Run, facts: Facts, reason: str) -> list[Command]:
        """The reason a customer gave for cancelling: onto the run, and to a person."""
        return [Update({"cancel_reason": reason, "awaiting_reply": False}), Wake(None),
                Handoff(f"customer cancelled COD order {self._order_name(run, facts)}: {reason}"), Finish("cancelled")]

    def _start(self, event: Any, facts: Facts, config: CodConfirmationConfig, now: datetime) -> list[Command]:
        if not isinstance(event, ev.OrderPlaced) or facts.contact_id is None or facts.order is None or facts.order.cancelled:
            return []
        if facts.order.channel == ev.SalesChannel.POS and not config.include_pos:
            return []  # ordered at the till, face to face: nothing to confirm on WhatsApp
        subject = f"order:{facts.order.external_id}"
        known = {"order_name": facts.order.name, "placed_status": event.order.platform_status}
        if config.delay_minutes > 0:
            return [Start(subject, facts.contact_id, {"phase": "waiting", **known}), Wake(now + timedelta(minutes=config.delay_minutes))]
        return [Start(subject, facts.contact_id, {"phase": "asked", "asked_at": now.isoformat(), "reminders": 0, **known}),
                Send("ask", order_context(facts)), Wake(self._next_wake(now, 0, config))]

    @staticmethod
    def _deadline(run: Run, config: CodConfirmationConfig) -> datetime:
        """The answer deadline of an asked run: ``answer_window_hours`` after the question, later by
        as much as its reminders went out late (``slipped``, seconds)."""
        return datetime.fromisoformat(run.state["asked_at"]) + timedelta(hours=config.answer_window_hours,
                                                                         seconds=float(run.state.get("slipped", 0)))

    @staticmethod
    def _next_wake(asked_at: datetime, reminders_sent: int, config: CodConfirmationConfig) -> datetime:
        if reminders_sent < len(config.reminder_hours):
            return asked_at + timedelta(hours=config.reminder_hours[reminders_sent])
        return asked_at + timedelta(hours=config.answer_window_hours)

    def _timer(self, run: Run, facts: Facts, config: CodConfirmationConfig, now: datetime) -> list[Command]:
        state = run.state
        if facts.order is not None and facts.order.cancelled:
            return [Wake(None), Finish("order_cancelled")]
        if self._shipped(run, facts):  # shipped while we waited and its event never reached us: never ask, never cancel
            return [Update({"closed_by": "order.shipped"}), Wake(None), Finish("fulfilled_unanswered")]
        if self._stored(run, facts) and facts.order.payment_state == ev.PaymentState.PAID:  # type: ignore[union-attr]
            # its paid event did not reach the run (it no longer names a COD gateway, say): paid is paid
            return self._paid_meanwhile()
        if state.get("phase") == "with_person":
            return self._unhandled(run, facts, config, now)
        if state.get("phase") == "waiting":
            return [Update({"phase": "asked", "asked_at": now.isoformat(), "reminders": 0}), Send("ask", order_context(facts)),
                    Wake(self._next_wake(now, 0, config))]
        asked_at = datetime.fromisoformat(state["asked_at"])
        sent = int(state.get("reminders", 0))
        if sent < len(config.reminder_hours):
            # a reminder that goes out late (its timer held while the app was uninstalled, the worker down)
            # moves what follows by as much: she has as long after it to answer as the configuration gives
            slipped = float(state.get("slipped", 0))
            planned = asked_at + timedelta(hours=config.reminder_hours[sent], seconds=slipped)
            slipped += max((now - planned).total_seconds(), 0.0)
            return [Update({"reminders": sent + 1, **({"slipped": slipped} if slipped else {})}),
                    Send(f"reminder_{sent + 1}", order_context(facts)),
                    Wake(self._next_wake(asked_at, sent + 1, config) + timedelta(seconds=slipped))]
        order_id = run.subject.split(":", 1)[1]
        if "reminders_sent" in facts.extra and not facts.extra["reminders_sent"]:
            return self._not_reached(run, facts, config, order_id)
        if facts.extra.get("opted_out_at") is not None:
            return self._opted_out(run, facts, config, order_id)
        commands: list[Command] = [Update({"choice": "no_answer"}), Wake(None)]
        if config.no_answer_action == "tag":
            commands.append(WriteBack("add_tags", order_id, {"tags": [config.unconfirmed_tag]}, "no_answer_tag"))
        elif config.no_answer_action == "cancel":
            # "other", not "customer": the customer never asked (Shopify would record "Customer changed/cancelled order")
            commands.append(WriteBack("cancel_order", order_id, {"reason": "other", "notify_customer": True,
                                                                 "staff_note": "COD order not confirmed on WhatsApp"}, "no_answer_cancel"))
        return commands + [Finish("no_answer")]

    def _not_reached(self, run: Run, facts: Facts, config: CodConfirmationConfig, order_id: str) -> list[Command]:
        """The deadline came and none of our messages reached the customer (not on WhatsApp, a
        number that is not one, opted out, a template WhatsApp refused): she could not answer, so
        her order is never cancelled for it; it is flagged for a call and a person hears of it."""
        commands: list[Command] = [Update({"choice": "not_reached"}), Wake(None)]
        if config.no_answer_action != "none":
            commands += [WriteBack("add_tags", order_id, {"tags": [config.unconfirmed_tag]}, "no_answer_tag"),
                         Handoff(f"COD order {self._order_name(run, facts)} could not be confirmed: none of our WhatsApp "
                                 "messages reached the customer; call them to confirm")]
        return commands + [Finish("not_reached")]

    def _opted_out(self, run: Run, facts: Facts, config: CodConfirmationConfig, order_id: str) -> list[Command]:
        """The deadline came and the customer is opted out (STOP). The question reached her, so she
        opted out after it (nothing reaches an opted-out contact): that is no "no answer", and her
        order is never cancelled for it; it is flagged for a call and a person hears of it."""
        commands: list[Command] = [Update({"choice": "opted_out"}), Wake(None)]
        if config.no_answer_action != "none":
            commands += [WriteBack("add_tags", order_id, {"tags": [config.unconfirmed_tag]}, "no_answer_tag"),
                         Handoff(f"COD order {self._order_name(run, facts)} was not confirmed: the customer opted out of our "
                                 "WhatsApp messages (STOP) after we asked; call them to confirm")]
        return commands + [Finish("opted_out")]

    def _unhandled(self, run: Run, facts: Facts, config: CodConfirmationConfig, now: datetime) -> list[Command]:
        """The answer deadline of an order whose customer answered in words (``with_person``). If a
        person closed her case (or the order moved on: cancelled, shipped, confirmed, each of which
        ends the run first), nothing. If her case is still open, nobody acted on what she wrote: the
        order is tagged for a call as an unanswered one is (``unconfirmed_tag``), never cancelled
        (she did answer), whatever ``no_answer_action`` says but "none"; and the case hears it. The
        run stays with the person: a Confirm or Cancel tap after it still counts (``_after_no_answer``)."""
        deadline = self._deadline(run, config)
        if now < deadline:
            return [Wake(deadline)]  # woken early (a run from before this timer was kept: migration 0018)
        still_open, case = self._persons_case(run, facts)
        if not still_open:
            return [Update({"deadline": "case_closed"})]  # a person dealt with it
        if config.no_answer_action == "none":
            return []
        order_id = run.subject.split(":", 1)[1]
        return [Update({"deadline": "flagged", **({"case_id": case} if case is not None else {})}), Wake(None),
                WriteBack("add_tags", order_id, {"tags": [config.unconfirmed_tag]}, "unhandled_tag"),
                Handoff(f"COD order {self._order_name(run, facts)}: the customer answered the question in words and no one has "
                        f"acted on it by the answer deadline; tagged {config.unconfirmed_tag}: call them to confirm",
                        waits=False, only_open=True, case=case)]

    def _persons_case(self, run: Run, facts: Facts) -> tuple[bool, int | None]:
        """Whether the case a person has about her words is still open, and its id (None: the run's own
        case, by its key). Hers: the case her words went to (``case_id``), else one about this order
        (or, for a tap we could not match, the order whose run asked a person: ``case_subject``).
        Without the runner's ``open_cases`` (a caller that does not look), taken as still open."""
        cases = facts.extra.get("open_cases")
        mine = run.state.get("case_id")
        if cases is None:
            return True, mine
        about = (run.subject, run.state.get("case_subject") or run.subject)
        found = next((c for c in cases if c.id == mine), None) or next(
            (c for c in cases if c.journey == self.name and c.subject in about), None)
        return found is not None, (found.id if found is not None else None)

    @staticmethod
    def needs_cases(event: Any, run: Run, config: CodConfirmationConfig) -> bool:
        """At the answer deadline of a run her words went to a person, the runner tells which of her
        hand-offs are still open (``facts.extra["open_cases"]``): one a person closed was dealt with."""
        return isinstance(event, TimerFired) and run.status == "active" and run.state.get("phase") == "with_person"

    @staticmethod
    def needs_sends(event: Any, run: Run, config: CodConfirmationConfig) -> bool:
        """At the answer deadline the runner tells which of the run's messages went out
        (``facts.extra["reminders_sent"]``): an order nobody could ask is not one nobody answered."""
        return (isinstance(event, TimerFired) and run.status == "active" and run.state.get("phase") == "asked"
                and int(run.state.get("reminders", 0)) >= len(config.reminder_hours))

    def needs_writebacks(self, event: Any, run: Run, config: CodConfirmationConfig) -> tuple[str, ...]:
        """A Confirm made before the deadline that reaches a run the deadline cancelled for no answer (its
        webhook came late): whether that cancel is still waiting (``facts.extra["writebacks"]``) decides
        whether it is withdrawn and the order confirmed, or a person restores it (``_after_no_answer``)."""
        return ("no_answer_cancel",) if self._confirmed_before_a_no_answer_cancel(event, run, config) else ()

    def _confirmed_before_a_no_answer_cancel(self, event: Any, run: Run, config: CodConfirmationConfig) -> bool:
        return (isinstance(event, ev.ButtonReplied) and event.payload in config.confirm_payloads
                and run.state.get("choice") == "no_answer" and config.no_answer_action == "cancel"
                and run.state.get("asked_at") is not None and event.occurred_at < self._deadline(run, config))

    @staticmethod
    def _cancelled(run: Run, facts: Facts) -> bool:
        """Cancelled: as the run heard it, or as the order is stored now (its cancel event may never have reached the run)."""
        order_id = run.subject.split(":", 1)[1]
        stored = facts.order is not None and facts.order.external_id == order_id and facts.order.cancelled
        return stored or run.state.get("closed_by") == "order.cancelled"

    @staticmethod
    def _shipped(run: Run, facts: Facts) -> bool:
        """Shipped, fully or partly: as the run heard it, or as the order is stored now."""
        order_id = run.subject.split(":", 1)[1]
        stored = facts.order is not None and facts.order.external_id == order_id and facts.order.fulfillment_state in SHIPPED
        return stored or run.state.get("closed_by") in SHIPPED_BY

    def _reply(self, event: ev.ButtonReplied, run: Run, facts: Facts, config: CodConfirmationConfig, now: datetime) -> list[Command]:
        choice = run.state.get("choice")
        confirm = event.payload in config.confirm_payloads
        if not confirm and event.payload not in config.cancel_payloads and event.payload not in config.cancel_reasons:
            return []
        against = self._against(run, facts, confirm)
        if against is not None:
            return self._changed_mind(event, run, facts, config, confirm, against)
        if choice not in (None, *AFTER_DEADLINE) or (choice is None and self._cancelled(run, facts)):
            return []  # locked: the same tap again, or a Cancel of a cancelled order, changes nothing
        commands = self._answer(event, run, facts, config, now, confirm)
        return commands + self._case_news(event, run, facts, config, confirm, commands)

    def _answer(self, event: ev.ButtonReplied, run: Run, facts: Facts, config: CodConfirmationConfig, now: datetime,
                confirm: bool) -> list[Command]:
        """What her Confirm or Cancel does to an order no choice has locked."""
        if self._shipped(run, facts):
            # it shipped before they answered: a Confirm only tags it (its status is the store's now), a Cancel goes to a person
            if not confirm:
                return self._cancel(event, run, facts, config, now)
            order_id = run.subject.split(":", 1)[1]
            commands: list[Command] = [Update({"choice": "confirmed_late", "answered_at": event.occurred_at.isoformat()}),
                                       WriteBack("add_tags", order_id, {"tags": [config.confirm_tag]}, "late_confirm_tag")]
            return commands + ([Wake(None), Finish("confirmed")] if run.status == "active" else [])
        if run.state.get("choice") in AFTER_DEADLINE or run.state.get("deadline") == "flagged":
            return self._after_no_answer(event, run, facts, config, now, confirm)
        if run.status != "active":
            return []
        return self._confirm(event, run, facts, config, "confirmed") if confirm else self._cancel(event, run, facts, config, now)

    def _case_news(self, event: ev.ButtonReplied, run: Run, facts: Facts, config: CodConfirmationConfig, confirm: bool,
                   commands: list[Command]) -> list[Command]:
        """A tap that settled an order the deadline asked a person to call her about (not reached, opted
        out, her words flagged) tells that case what she tapped and what was done, if it is still open
        (its owner is alerted), so nobody calls her for nothing. Nothing when the tap did nothing, or
        already hands the order to a person (a Cancel of a shipped order, a Confirm of a cancelled one).
        A tap before the deadline on words a person has needs no call called off: the order's tag says it."""
        if not commands or any(isinstance(c, Handoff) for c in commands):
            return []
        state = run.state
        called = (state.get("choice") in CALL_ASKED and config.no_answer_action != "none") or state.get("deadline") == "flagged"
        if not called:
            return []
        chosen = _choice_in(commands)
        if chosen in ("confirmed", "confirmed_late"):
            done = f"confirmed (tagged {config.confirm_tag})"
        elif chosen == "cancelled":
            done = "cancelled" if config.cancel_action == "cancel" else f"tagged {config.cancelled_tag}"
        else:
            return []
        tapped = "Confirm" if confirm else "Cancel"
        reason = f"customer tapped {tapped} on WhatsApp: COD order {self._order_name(run, facts)} {done}; no need to call them"
        return [Handoff(reason, waits=False, only_open=True, case=state.get("case_id"))]

    def _restored_news(self, event: ev.ButtonReplied, run: Run, facts: Facts, config: CodConfirmationConfig,
                       commands: list[Command]) -> list[Command]:
        """A tap she made while the order lay in the bin, decided again now the store restored it
        (``heard_in_bin``; ``runner.on_restored``): then it met a cancelled order (a Confirm went to a person, "after
        the store cancelled it"; a Cancel did nothing). The run's case, if a person still has it open, hears what the
        tap does now, so nobody calls her or re-creates the order for nothing. Nothing when it hands off anew."""
        if not facts.extra.get("heard_in_bin") or any(isinstance(c, Handoff) for c in commands):
            return []
        chosen = _choice_in(commands)
        if chosen in ("confirmed", "confirmed_late"):
            done = f"it is confirmed now (tagged {config.confirm_tag}): nothing to restore or re-create"
        elif chosen == "cancelled":
            done = "it is cancelled now" if config.cancel_action == "cancel" else f"it is tagged {config.cancelled_tag} now"
        else:
            done = "it changes nothing now"
        tapped = "Confirm" if event.payload in config.confirm_payloads else "Cancel"
        return [Handoff(f"COD order {self._order_name(run, facts)} was restored from the bin: the customer's {tapped} tap, made "
                        f"while it was there, counts: {done}", waits=False, only_open=True)]

    def _against(self, run: Run, facts: Facts, confirm: bool) -> str | None:
        """What a tap goes against, as a person reads it: a Cancel after a Confirm (hers or the
        store's) of an order still standing, a Confirm after a Cancel (hers or the store's). None: not that."""
        choice = run.state.get("choice")
        if not confirm and choice in CONFIRMED and not self._cancelled(run, facts):
            return "after the store confirmed it" if choice == "confirmed_by_store" else "after confirming it"
        if not confirm and choice == "paid" and not self._cancelled(run, facts):
            return "after paying for it (a cancel needs a refund)"
        if confirm and choice in CANCELLED:
            return "after asking to cancel it" if choice == "cancel_too_late" else "after cancelling it"
        if confirm and choice is None and self._cancelled(run, facts):
            return "after the store cancelled it"
        return None

    def _changed_mind(self, event: ev.ButtonReplied, run: Run, facts: Facts, config: CodConfirmationConfig, confirm: bool,
                      against: str) -> list[Command]:
        """A tap against the locked choice: the choice stands (no flip, nothing written to the store), and
        a person hears what she tapped on which order; the same change of mind again adds nothing."""
        tapped = "confirm" if confirm else "cancel"
        if run.state.get("changed_mind") == tapped:
            return []  # her second such tap: the case has it
        reason = f"customer tapped {tapped.capitalize()} on COD order {self._order_name(run, facts)} {against}"
        if not confirm and self._shipped(run, facts):
            reason += "; it has already shipped"
        elif not confirm and self._stored(run, facts):
            reason += "; not yet fulfilled"
        elif run.state.get("choice") == "cancelled" and config.cancel_action == "tag":
            reason += f" (her Cancel only tagged it {config.cancelled_tag})"
        commands: list[Command] = [Update({"changed_mind": tapped, "changed_mind_at": event.occurred_at.isoformat(),
                                           **({"awaiting_reply": False} if run.state.get("awaiting_reply") else {})})]
        if run.status == "active":  # asked and cancelled by the store meanwhile, or waiting for her cancel reason: over
            outcome = "order_cancelled" if run.state.get("choice") is None else "cancelled"
            commands += [Wake(None), Finish(outcome)]
        return commands + [Handoff(reason)]  # last: the run waits on the person (her next words join the case)

    @staticmethod
    def _paid_meanwhile() -> list[Command]:
        """Paid in full before she answered: no reminder, no no-answer action (a cancel would keep her
        money: the store's cancel refunds nothing), no flag for a call; her Cancel after it goes to a person."""
        return [Update({"choice": "paid", "closed_by": "order.paid"}), Wake(None), MoveStage("post_purchase"), Finish("paid")]

    @staticmethod
    def _stored(run: Run, facts: Facts) -> bool:
        """Whether the facts carry this run's order as stored (so its fulfilment is known)."""
        return facts.order is not None and facts.order.external_id == run.subject.split(":", 1)[1]

    def _after_no_answer(self, event: ev.ButtonReplied, run: Run, facts: Facts, config: CodConfirmationConfig, now: datetime,
                         confirm: bool) -> list[Command]:
        """A tap after the no-answer step (or the opted-out or not-reached one, or the flag of her words
        no person acted on), on an order that has not shipped: still the customer's choice.

        A tap made before the deadline (its webhook came after the timer) counts as answered in time.
        A cancelled order cannot be confirmed back by us: that goes to a person. But a Confirm made in
        time finds the no-answer cancel not yet made (the store was down, the write-back dispatcher had
        not run: ``facts.extra["writebacks"]`` says it is still ``pending``): it is withdrawn
        (``answered_in_time``) and the order confirmed as in time; one being made (claimed: ``sending``),
        made, or tried with its outcome unknown goes to a person as a made one. The order of a
        customer who opted out, whom nothing reached, or whose words no person acted on, was only
        flagged (``no_answer_action`` other than "none"), never cancelled; a Confirm notes the flag is stale.
        """
        asked_at = run.state.get("asked_at")
        in_time = asked_at is not None and event.occurred_at < self._deadline(run, config)
        no_answer = run.state.get("choice") == "no_answer"
        stored_cancelled = facts.order is not None and facts.order.cancelled
        withdrawn = (confirm and not stored_cancelled and self._confirmed_before_a_no_answer_cancel(event, run, config)
                     and (facts.extra.get("writebacks") or {}).get("no_answer_cancel") == "pending")
        if withdrawn:
            return [WithdrawWriteBack("no_answer_cancel", "answered_in_time"),
                    *self._confirm(event, run, facts, config, "confirmed", tag_key="late_confirm_tag")]
        cancelled = stored_cancelled or (no_answer and config.no_answer_action == "cancel")
        flagged = config.no_answer_action == "tag" if no_answer else config.no_answer_action != "none"
        if not confirm:  # cancelled already, or by the no-answer write-back on its way: nothing more to do
            return [] if cancelled else self._cancel(event, run, facts, config, now, late=True)
        choice = "confirmed" if in_time else "confirmed_late"
        if cancelled:
            when = "before the answer deadline" if in_time else "after the answer window"
            return [Update({"choice": choice, "answered_at": event.occurred_at.isoformat()}),
                    Handoff(f"customer confirmed COD order {self._order_name(run, facts)} {when}, but it was cancelled"
                            f"{' for no answer' if no_answer else ''}: restore or re-create it if they still want it")]
        commands = self._confirm(event, run, facts, config, choice, tag_key="late_confirm_tag")
        if flagged:
            note = f"COD order confirmed on WhatsApp after it was tagged {config.unconfirmed_tag}: that tag no longer applies"
            commands.insert(-2, WriteBack("add_note", run.subject.split(":", 1)[1], {"note": note}, "unflag_note"))
        return commands

    def _confirm(self, event: ev.ButtonReplied, run: Run, facts: Facts, config: CodConfirmationConfig, choice: str,
                 tag_key: str = "confirm_tag") -> list[Command]:
        """Tag (and set ``confirm_status``) an open order the customer confirmed; acknowledge, offer to pay now."""
        order_id = run.subject.split(":", 1)[1]
        commands: list[Command] = [Update({"choice": choice, "answered_at": event.occurred_at.isoformat()}), Wake(None),
                                   WriteBack("add_tags", order_id, {"tags": [config.confirm_tag]}, tag_key)]
        if config.confirm_status:
            commands.append(WriteBack("set_status", order_id, {"status": config.confirm_status}, "confirm_status"))
        if config.send_acknowledgement:
            commands.append(Send("confirmed", order_context(facts)))
        if config.prepaid_offer and facts.order is not None and facts.order.payment_url:
            offer = order_context(facts)
            if config.prepaid_discount_code:
                offer["discount.code"] = config.prepaid_discount_code
            # kept, so an order paid, cancelled or shipped before it goes out (held for quiet hours) withdraws it
            commands += [Update({"prepaid_offered": True}), Send("prepaid_offer", offer)]
        elif config.prepaid_offer:  # e.g. a WooCommerce COD order in processing: its pay page would refuse payment
            commands.append(Update({"prepaid_offer_skipped": "no_payment_link"}))
        return commands + [MoveStage("post_purchase"), Finish("confirmed")]

    @staticmethod
    def _reason_until(event: ev.ButtonReplied, facts: Facts, config: CodConfirmationConfig, now: datetime) -> datetime | None:
        """Until when a plain Cancel waits for her reason (``cancel_reason_minutes``); None: it does not ask.
        A Cancel she tapped while the order lay in the bin, decided again at the restore (``heard_in_bin``), has its
        window from her tap, not from the restore: days later "why did you cancel?" is no question to ask. Nor is it
        asked when she wrote to us after the tap, in the bin (``heard_after``): those words went to a person then."""
        if config.cancel_reason_minutes <= 0:
            return None
        if not facts.extra.get("heard_in_bin"):
            return now + timedelta(minutes=config.cancel_reason_minutes)
        until = event.occurred_at + timedelta(minutes=config.cancel_reason_minutes)
        wrote = any(isinstance(e, ev.MessageReceived) for e in facts.extra.get("heard_after", ()))
        return until if until > now and not wrote else None

    def _cancel(self, event: ev.ButtonReplied, run: Run, facts: Facts, config: CodConfirmationConfig, now: datetime,
                late: bool = False) -> list[Command]:
        """Cancel per ``cancel_action`` (a shipped order goes to a person instead); a reason goes to a person too.

        ``late``: after the no-answer step the run is closed, so it does not wait for a reason."""
        order_id = run.subject.split(":", 1)[1]
        reason = config.cancel_reasons.get(event.payload)
        given = {"cancel_reason": reason} if reason else {}
        if self._shipped(run, facts):
            return [Update({"choice": "cancel_too_late", **given}), Wake(None),
                    Handoff("customer asked to cancel a COD order that has already shipped" + (f": {reason}" if reason else "")),
                    Finish("cancel_after_fulfilment")]
        until = self._reason_until(event, facts, config, now)
        wait = reason is None and until is not None and not late
        commands: list[Command] = [
            Update({"choice": "cancelled", "answered_at": event.occurred_at.isoformat(), **given,
                    **({"phase": "cancel_reason", "awaiting_reply": True} if wait else {})}),
            Wake(until if wait else None)]
        if config.cancel_action == "cancel":
            # the order can ship between her tap and the call to the store (both webhooks in one round, a
            # store that was down): the cancel is then not made, and a person hears she asked for it
            shipped = (f"customer tapped Cancel on COD order {self._order_name(run, facts)} on WhatsApp, but it shipped before "
                       "the cancel could be made: stop the parcel or call them")
            commands.append(WriteBack("cancel_order", order_id, {"reason": "customer", "notify_customer": False,
                                                                 "staff_note": "Cancelled by the customer on WhatsApp"}, "cancel",
                                      if_shipped=shipped))
        else:
            commands.append(WriteBack("add_tags", order_id, {"tags": [config.cancelled_tag]}, "cancel_tag"))
        if config.send_acknowledgement:
            commands.append(Send("cancelled", order_context(facts)))
        if wait:
            # the run stays open for the answer; a reminder still waiting (a retry) must not ask her to confirm now
            return commands + [Withdraw(), Send("cancel_reason", order_context(facts))]
        if reason:
            commands.append(Handoff(f"customer cancelled COD order {self._order_name(run, facts)}: {reason}"))
        return commands + [Finish("cancelled")]
