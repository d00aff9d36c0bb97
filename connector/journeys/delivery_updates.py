"""Delivery updates (utility): shipped, out for delivery, delivered; a failed delivery hands off.

Carrier statuses mean what Shopify documents: ``attempted_delivery`` is a failed delivery
(asked about, handed off), and so are the newer ``returning_to_sender`` (the courier gave up: the parcel
goes back to the store) and ``buyer_action_required`` (the carrier cannot deliver until she acts), each
case saying which (``FAILED_AS``), as is ``not_delivered`` (Shopify's display status for a failed delivery, read
by the reconcile: after a failure the carrier's word told, it is that failure again); ``failure`` is a tracking failure ("something went wrong when
pulling tracking information ... the tracking number was invalid or the shipment was
canceled"), so a person hears of it and the customer is not told anything; ``picked_up``
(collected at a pickup point) is delivered; ``delayed`` and ``carrier_picked_up`` say it has
shipped; ``ready_for_pickup`` (``ready_for_recipient_pickup`` in Shopify's newer API) has its own step,
sent only when the store lists it in ``steps``. A failed parcel whose failure changes (tried, then sent
back to the store) is the same failure: she is not asked again, the case hears of it (``_failure_news``).

An order that does not ship (``OrderFacts.ships``: collected at the store, a sale at the till,
nothing to deliver) gets none of this: its fulfilment is the hand-over, not a parcel.

Each step is sent at most once per order (the outbox key is journey, step, subject), so
repeated or reordered fulfilment webhooks never repeat a message; "shipped" is the exception, once
per parcel and per tracking she was told: the run keeps each parcel's numbers and links
(``tracking``), so another parcel (a second fulfilment, or a number added to one: multi-package
tracking, another Shipment Tracking item) and a corrected number or link get a "shipped" of their
own (``Send.occurrence``) with that parcel's link, once per change, until the parcel arrives. A
fulfilment that comes with several numbers at once gets one per number (a template shows one
link); the further ones only where the "shipped" template shows the number or the link, else they
would repeat the first word for word (``Send.shows``). The news comes from a fulfilment's own
webhook or from an order webhook that lists it (``FulfillmentUpdated.listed_on_order``): either way
once, since a repeat finds the step told and the parcel's status kept.
"Delivered" is said once every parcel heard of has arrived and the order has no part still to
ship (Shopify's ``partial``), not when the first of several arrives (an order whose part still to ship
was dropped, fulfilled with no new parcel, says it then: ``_completed``; a parcel the order lists is one,
though its own news is heard after the order's: ``Order.fulfillments``); a parcel is heard of from its
fulfilment's creation, carrier news or not. One that never gets news (a local courier Shopify does not
track) holds the run ``UNTRACKED_WAIT`` at most once only such parcels are left; then the run ends
without a word to her (``_untracked_wait``, ``_no_news``). A fulfilment the store cancels (or its service fails)
is no parcel: she is not told of it, and "delivered" does not wait for it. Nor is one none of whose
lines ships (``Fulfillment.ships``: Shopify fulfils a gift card or a digital line at once, in a
fulfilment of its own with no carrier status, that never gets carrier news): no "shipped" for it,
and an order with a parcel besides hears "delivered" once the parcel arrives.

A later step (out for delivery, delivered) withdraws what the run still has waiting (held for
quiet hours, a retry) once every parcel is past it: after a night she hears the current news, not
"shipped", "out for delivery" and "delivered" together at 09:00. A cancelled or binned order
withdraws it too. Tracking the store calls off (a corrected number or link, a number removed, a cancelled
fulfilment) withdraws the "shipped" that told it, if still waiting (``_called_off_tracking``), and is told no
more: a number put back is told again, so she gets the number that stands; a failed-delivery
question still waiting is withdrawn once its parcels move on (``_question_moot``).

"Shipped" is used up only by a fulfilment with tracking (a number or a link). A store often
marks an order fulfilled first and adds the tracking later: the first, untracked fulfilment
tries the step once (a template that needs no tracking goes out then; one that names the
courier or the number is skipped for the missing value), and the tracked update sends it,
turning that skipped row into a queued one. Either way the customer hears "shipped" once. The
same holds for a tracked fulfilment that lacks what the template shows (a number without a link,
no courier name): the link or courier added later sends that message again with
``retry_missing_value``, which only revives a row skipped for a missing value.

The failed-delivery (NDR) message asks the customer: reschedule, update the address, or
cancel (quick replies, matched by the message they answer). A courier often tries again: a
failure after the parcel moved on (out for delivery again, back in transit) is a new attempt,
asked about again (``_failed_again``); the same failure reported twice is not. Each answer
is kept on the run (once per choice and attempt) and added to the open hand-off (its owner is told); reschedule and
address also go into the order's notes for the courier desk. A cancel is a request for a
person, never an automatic cancel: the order has shipped. The failed parcel delivered after all
is added to the open case ("no call needed"); an answer once every parcel has arrived, or after the
order was cancelled or refunded (``_called_off_since``), writes no note to the order, and the case
hears it instead. The case names the failed parcel (courier and number): an order may have several.

A tap we cannot tie to one of our messages (the question's send outcome was lost, so its message id
is unknown) reaches her runs not finished (``hears_unmatched_taps``): it is the answer of the one
whose question is open (``_asking``, ``_meant``: one not answered yet before one she answered; a change
of mind is an answer too, each choice once); with several, nothing is written to any order and their
cases hear what she tapped, so a person asks her which order she meant; a run not asking takes none.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any, ClassVar

from pydantic import Field, field_validator, model_validator

from connector import events as ev
from connector.errors import Problems
from connector.journeys._common import cancelled_order, deleted_order, order_context, replied_here, withdraw_for_cancel
from connector.journeys.engine import (
    Command, Facts, Finish, Handoff, JourneyConfig, OrderFacts, Run, Send, Start, TimerFired, Update, Wake, Withdraw, WriteBack,
)

STEP_FOR_STATUS = {
    "in_transit": "shipped",
    "confirmed": "shipped",
    "label_printed": "shipped",
    "label_purchased": "shipped",
    "carrier_picked_up": "shipped",
    "delayed": "shipped",  # on its way, late: "shipped" if not told yet, else only kept as the parcel's news
    "none": "shipped",
    "out_for_delivery": "out_for_delivery",
    "ready_for_pickup": "ready_for_pickup",
    "ready_for_recipient_pickup": "ready_for_pickup",
    "delivered": "delivered",
    "picked_up": "delivered",
    "attempted_delivery": "failed",
    "returning_to_sender": "failed",
    "buyer_action_required": "failed",
    "not_delivered": "failed",
}
# what a failed-delivery case says of each failure (``attempted_delivery``: the courier tried, as it always said)
FAILED_AS = {
    "returning_to_sender": "the parcel is returning to the sender",
    "buyer_action_required": "the carrier needs the customer to act before it can deliver",
    "not_delivered": "Shopify shows it not delivered (the carrier's own word was not heard)",
}
# Shopify's display word for a failed delivery: after a failure known by the carrier's own word it says nothing new
NOT_DELIVERED = ev.ShipmentStatus.NOT_DELIVERED.value
STEPS = tuple(dict.fromkeys(STEP_FOR_STATUS.values()))  # the updates ``steps`` may list
TRACKING_FAILURE = ev.ShipmentStatus.FAILURE.value  # not a step: a person hears of it, the customer does not
ARRIVED = frozenset(s.value for s in ev.DELIVERED_STATUSES)
# a fulfilment's own status (not its carrier's) saying it is no parcel: cancelled by the store, failed by its service
CALLED_OFF = frozenset({"cancelled", "error", "failure"})
NO_NEWS = ev.ShipmentStatus.NONE.value  # a parcel no carrier has reported on (a courier Shopify does not track)
# how long a run whose only parcels left never had carrier news waits for some before it ends quietly
UNTRACKED_WAIT = timedelta(days=7)
UNTRACKED = "untracked_parcel"  # the outcome then: whether it arrived is not known, so she is told nothing
LATER_THAN_SHIPPED = frozenset({"out_for_delivery", "ready_for_pickup", "delivered"})
TRACKING_SHOWN = ("fulfillment.tracking_number", "fulfillment.tracking_url")  # what tells one parcel from another


NOTES = {
    "reschedule": "Failed delivery: the customer asked on WhatsApp to reschedule",
    "update_address": "Failed delivery: the customer wants to update the delivery address (asked on WhatsApp)",
}
TAPPED = {"reschedule": "Reschedule", "update_address": "Update address", "cancel": "Cancel"}  # as a case names her tap
ASKS = {
    "reschedule": "customer asked to reschedule the failed delivery of {name}",
    "update_address": "customer wants to update the address for the failed delivery of {name}",
    "cancel": "customer asked to cancel {name} after the failed delivery: it has shipped, so a person decides (no automatic cancel)",
}


def _as_now_meant(prev: str | None, run: Run | None, parcel: str) -> str | None:
    """A parcel's stored news as it is meant now: ``failure`` stored before it meant a tracking
    failure (runs keep the parcels whose tracking failed in ``tracking_failed``) was a failed
    delivery, WooCommerce's failed-delivery and rto among them; read so, the same failure reported
    again after an upgrade is not asked about twice."""
    if prev == TRACKING_FAILURE and run is not None and parcel not in (run.state.get("tracking_failed") or ()):
        return ev.ShipmentStatus.ATTEMPTED_DELIVERY.value
    return prev


def _all_arrived(parcels: dict[str, str], facts: Facts) -> bool:
    """Every parcel heard of has arrived, and the order, where the store says so, has no part still
    to ship (Shopify's ``partial``): "delivered" is said then, not when the first of several arrives."""
    partial = facts.order is not None and facts.order.fulfillment_state == ev.FulfillmentState.PARTIAL.value
    return bool(parcels) and all(s in ARRIVED for s in parcels.values()) and not partial


def _arrived(run: Run | None, parcels: dict[str, str], everything: bool) -> list[Command]:
    """The run ends once every parcel it heard of is delivered: an open delivery run would be
    the contact's "latest" run for ever, and take their unquoted replies of months later. It
    still hears later news (a parcel it had not heard of, shipped or failed) as a finished run,
    and a failure then asks and hands off as before. A run a person is on (status ``handoff``,
    after a failed delivery) stays theirs: the customer's unquoted replies find its open case
    through it (``handoffs._continued``), delivered or not."""
    if (run is None or run.status == "active") and everything:
        return [Finish("delivered", skip_waiting=False)]
    return []


def _untracked_left(parcels: dict[str, str]) -> bool:
    """Every parcel with carrier news has arrived, and some never had any (a box handed to a local
    courier Shopify does not track): nothing may ever tell the run they arrived."""
    statuses = parcels.values()
    return NO_NEWS in statuses and all(s in ARRIVED or s == NO_NEWS for s in statuses)


def _untracked_wait(run: Run | None, commands: list[Command], now: datetime) -> list[Command]:
    """Bound the wait for parcels that never had carrier news: once only they are left, the run listens
    ``UNTRACKED_WAIT`` for news of them (a timer: no message is planned, so she is not busy); news in
    that time (one of them moving, another parcel) clears it. Without it such a run stayed active for
    ever, her "latest" run, taking her unquoted replies months later."""
    if any(isinstance(c, Finish) for c in commands):
        return commands
    before = dict((run.state.get("parcels") or {}) if run is not None else {})
    after = before
    for c in commands:
        if isinstance(c, Update) and "parcels" in c.state:
            after = dict(c.state["parcels"])
    waits, waited = _untracked_left(after), _untracked_left(before)
    if waits and not waited:
        return [*commands, Wake(now + UNTRACKED_WAIT, listening=True)]
    if waited and not waits:
        return [*commands, Wake(None)]
    return commands


def _started(order: OrderFacts) -> dict[str, Any]:
    """A new run's state: nothing told yet, and the order's name (a tap matched to no message names the
    orders it could answer by it: ``_unmatched``)."""
    return {"sent": [], "order_name": order.name}


Pair = tuple[str | None, str | None]  # a parcel's (tracking number, link)


def _pairs(f: ev.Fulfillment) -> list[Pair]:
    """The fulfilment's parcels as (number, link): every number it carries, each with its link where
    the platform pairs them (as many links as numbers), else the first with the fulfilment's link."""
    numbers = list(f.tracking_numbers)
    if f.tracking_number and f.tracking_number not in numbers:
        numbers.insert(0, f.tracking_number)
    if not numbers:
        return [(None, f.tracking_url)] if f.tracking_url else []
    urls = list(f.tracking_urls) if len(f.tracking_urls) == len(numbers) else [f.tracking_url]
    return [(n, urls[i] if i < len(urls) else None) for i, n in enumerate(numbers)]


def _key(pair: Pair) -> str:
    return pair[0] or pair[1] or ""


def _told(f: ev.Fulfillment, pairs: list[Pair], n: int, before: dict[str, Any] | None = None,
          of: dict[str, int] | None = None, carried: set[str] | None = None) -> dict[str, Any]:
    """A parcel's tracking as told: each number's link, the courier, the "shipped" message (its
    occurrence) that told it, and (``of``) the further numbers told at the same time, each in a
    "shipped" of its own, with that message's occurrence. Only the numbers it carries now (``pairs``,
    and of ``before``'s those in ``carried``): one the store called off (removed, typed over) is no
    longer told, so put back it is news again."""
    kept = {k: v for k, v in ((before or {}).get("told") or {}).items() if k in (carried or ())}
    seen = {**kept, **{_key(p): p[1] for p in pairs}}
    record: dict[str, Any] = {"told": seen, "company": f.tracking_company or (before or {}).get("company"), "n": n}
    if of:
        record["of"] = of
    used = _used(before or {})
    if used > _used(record):  # the message of a number no longer told: its occurrence is not used again
        record["used"] = used
    return record


def _occurrence(record: dict[str, Any], key: str) -> int:
    """The "shipped" message that told this number: its own, or its parcel's."""
    return int((record.get("of") or {}).get(key, record.get("n", 1)))


def _used(record: dict[str, Any]) -> int:
    """The highest "shipped" occurrence this parcel's tracking has used (``used``: one told a number dropped since)."""
    return max([int(record.get("n", 1)), int(record.get("used", 1)), *(record.get("of") or {}).values()])


def _latest(tracking: dict[str, Any]) -> int:
    """The highest "shipped" occurrence the run has used."""
    return max([_used(r) for r in tracking.values() if r] + [1])


def _further(facts: Facts, pairs: list[Pair], first: int) -> tuple[list[Command], dict[str, int]]:
    """A "shipped" for each of ``pairs`` (numbers told at the same time as another), from occurrence
    ``first``, and the occurrence each number was told in. A template shows one number and one link,
    so each parcel needs a message of its own; one that shows neither would repeat the first message
    word for word, so these go out only where the template shows the number or the link
    (``Send.shows``)."""
    sends: list[Command] = [Send("shipped", _showing(facts, p), occurrence=first + i, shows=TRACKING_SHOWN)
                            for i, p in enumerate(pairs)]
    return sends, {_key(p): first + i for i, p in enumerate(pairs)}


def _named(f: ev.Fulfillment) -> str:
    """The parcel as the desk rebooks it with the courier: its courier and number (an order may have several)."""
    return " ".join(p for p in (f.tracking_company, f.tracking_number) if p) or f"fulfilment {f.external_id}"


def _tracking_of(run: Run | None, parcel: str) -> dict[str, Any]:
    """The tracking each parcel was told with. A run from before this was kept has told its parcels
    (None: tracking unknown), so they are not told again; one from before parcels were kept, any."""
    if run is None:
        return {}
    if "tracking" in run.state:
        return dict(run.state["tracking"])
    if "shipped" not in (run.state.get("sent") or []):
        return {}
    known = run.state["parcels"] if "parcels" in run.state else {parcel: None}
    return {p: None for p in known}


def _showing(facts: Facts, pair: Pair) -> dict[str, Any]:
    """The order's values with this parcel's number and link (a template shows one parcel)."""
    return {**order_context(facts), "fulfillment.tracking_number": pair[0], "fulfillment.tracking_url": pair[1]}


def _tracking_news(run: Run, facts: Facts, f: ev.Fulfillment) -> tuple[dict[str, Any] | None, list[Command]]:
    """After "shipped" went out, tracking she was not told: (the run's tracking as told now, the sends).

    Another parcel (a fulfilment not told of, or a number added to one) and a corrected number or link
    get a "shipped" of their own (``Send.occurrence``), once per change, and so does each further number
    that came with it. A link or courier added to the numbers told (they came without, and a template
    that shows it was skipped for the missing value) sends each of those messages again with
    ``retry_missing_value``: only a row skipped so is queued, never a second one."""
    pairs = _pairs(f)
    if not pairs:
        return None, []
    tracking = _tracking_of(run, f.external_id)
    latest = _latest(tracking)
    if f.external_id not in tracking:  # another parcel, with its own tracking
        sends, of = _further(facts, pairs[1:], latest + 2)
        return ({**tracking, f.external_id: _told(f, pairs, latest + 1, of=of)},
                [Send("shipped", _showing(facts, pairs[0]), occurrence=latest + 1), *sends])
    record = tracking[f.external_id]
    if record is None:  # told before its tracking was kept
        return {**tracking, f.external_id: _told(f, pairs, 1)}, []
    seen: dict[str, str | None] = record.get("told") or {}
    # the numbers the parcel carries now; a read that may have left some out (``tracking_complete``) removes none
    carried = {_key(p) for p in pairs} | (set() if f.tracking_complete else set(seen))
    changed = [p for p in pairs if _key(p) not in seen or (p[1] and seen[_key(p)] and seen[_key(p)] != p[1])]
    if changed:  # a number not told (another package, a corrected number, one put back) or a corrected link
        sends, of = _further(facts, changed[1:], latest + 2)
        now_told = {_key(p) for p in changed}
        # the numbers told before and still carried keep the message that told them (the parcel's is this one now)
        before = {k: _occurrence(record, k) for k in seen if k in carried and k not in now_told}
        # the same parcel: where the template shows no tracking, this message would repeat the one she has word for word
        return ({**tracking, f.external_id: _told(f, pairs, latest + 1, record, {**before, **of}, carried)},
                [*_called_off_tracking(record, carried - now_told),
                 Send("shipped", _showing(facts, changed[0]), occurrence=latest + 1, shows=TRACKING_SHOWN), *sends])
    # a number the store removed (added by mistake): its "shipped", if still waiting, is withdrawn and it is told
    # no more; one told in a message that also told a number still carried stands, and stays told
    standing = {_occurrence(record, k) for k in carried if k in seen}
    gone = {k for k in set(seen) - carried if _occurrence(record, k) not in standing}
    carried |= set(seen) - gone
    of = {k: n for k, n in (record.get("of") or {}).items() if k in carried}
    gained = [p for p in pairs if p[1] and not seen.get(_key(p))]
    retries: dict[int, Command] = {}
    if gained or (f.tracking_company and not record.get("company")):
        for p in gained or pairs:  # each message that told one of them, once
            retries.setdefault(_occurrence(record, _key(p)), Send(
                "shipped", _showing(facts, p), occurrence=_occurrence(record, _key(p)), retry_missing_value=True,
                shows=TRACKING_SHOWN if _key(p) in of else ()))
    if not (retries or gone):
        return None, []
    return ({**tracking, f.external_id: _told(f, pairs, int(record.get("n", 1)), record, of, carried)},
            [*(_called_off_tracking(record, carried) if gone else []), *retries.values()])


def _called_off_since(run: Run, facts: Facts) -> str | None:
    """How the order was called off after her failed-delivery question ("cancelled", "refunded"), if it was:
    cancelled (or binned), or all its money returned or its payment voided (``events.NO_MONEY_KEPT``)."""
    order = facts.order
    if run.state.get("cancelled") or (order is not None and order.cancelled):
        return "cancelled"
    if order is not None and order.payment_state in ev.NO_MONEY_KEPT:
        return "refunded" if order.payment_state == ev.PaymentState.REFUNDED.value else "voided"
    return None


def _fulfilled(facts: Facts) -> bool:
    return facts.order is not None and facts.order.fulfillment_state == ev.FulfillmentState.FULFILLED.value


def _all_in(run: Run, facts: Facts, config: DeliveryUpdatesConfig, parcels: dict[str, str]) -> list[Command]:
    """The parcels left are all the order waits for (another was called off, or the rest of the order dropped):
    once they have all arrived, that is "delivered", if she was not told yet; and the run ends."""
    everything = _all_arrived(parcels, facts)
    commands: list[Command] = []
    if everything and "delivered" in config.steps and "delivered" not in (run.state.get("sent") or []):
        commands += [Withdraw(), Update({"sent": sorted({*(run.state.get("sent") or []), "delivered"})}),
                     Send("delivered", {k: v for k, v in order_context(facts).items() if not k.startswith("fulfillment.")})]
    return commands + _arrived(run, parcels, everything)


def _listed(order: ev.Order) -> dict[str, str]:
    """The parcels the order lists with it (``Order.fulfillments``), each with its carrier news: those
    called off or shipping nothing are no parcel (``_no_parcel``)."""
    return {f.external_id: f.shipment_status.value for f in order.fulfillments if f.status not in CALLED_OFF and f.ships}


def _called_off_tracking(record: dict[str, Any] | None, standing: set[str]) -> list[Command]:
    """Withdraw the "shipped" messages still waiting (held for quiet hours, a retry) that tell tracking the store
    called off (a number corrected or removed, a link corrected, the fulfilment cancelled): she gets the link that
    works, not a dead one beside it. ``standing``: the numbers still as told; a message that told one of them
    stands. Only where the template shows the tracking: else the message says nothing that became wrong."""
    if not record:
        return []
    told = record.get("told") or {}
    keep = {_occurrence(record, k) for k in standing if k in told}
    wrong = sorted({_occurrence(record, k) for k in told if k not in standing} - keep)
    return [Withdraw(only=tuple(("shipped", n) for n in wrong), shows=TRACKING_SHOWN)] if wrong else []


def _question_moot(run: Run | None, parcels: dict[str, str], status: str, prev: str | None) -> list[Command]:
    """The failed-delivery question still waiting (held for quiet hours, a retry) once every parcel it asks
    about has moved on (the courier out again, back in transit, delivered): withdrawn, she is not asked to
    rearrange a delivery already on its way; the case a person has stays open."""
    if run is None or STEP_FOR_STATUS.get(status) == "failed" or STEP_FOR_STATUS.get(prev or "") != "failed":
        return []
    asked = run.state.get("ndr_parcels") or list(parcels)
    if any(STEP_FOR_STATUS.get(parcels.get(p) or "") == "failed" for p in asked):
        return []
    return [Withdraw(only=(("failed", int(run.state.get("failed_attempts", 1))),))]


def _failed(status: str) -> str:
    """A failure as its case names it: the carrier's word, and what a newer one means (``FAILED_AS``)."""
    return f"{status}: {FAILED_AS[status]}" if status in FAILED_AS else status


def _failure_news(run: Run | None, facts: Facts, config: DeliveryUpdatesConfig, f: ev.Fulfillment, status: str,
                  prev: str | None) -> list[Command]:
    """A failed parcel's failure changed (the courier tried, then sent it back to the store): the same failure, so she
    is not asked again, but a person hears of it: the open case, or a new one if it was closed (the parcel coming
    back is something to act on)."""
    if (run is None or facts.order is None or not config.handoff_on_failure or status == prev
            or STEP_FOR_STATUS.get(status) != "failed" or STEP_FOR_STATUS.get(prev or "") != "failed"):
        return []
    return [Handoff(f"news of the failed delivery of {facts.order.name} ({_named(f)}): {_failed(status)}", waits=False)]


def _delivered_after_failure(run: Run | None, facts: Facts, parcel: str, status: str, prev: str | None) -> list[Command]:
    """A parcel whose delivery failed has arrived after all: the open case hears it (no call needed);
    the run stays as it is."""
    if run is None or run.status != "handoff" or status not in ARRIVED or (prev or "") in ARRIVED:
        return []
    ndr = run.state.get("ndr_parcels")  # a run from before this was kept: its failure was this parcel's
    if "failed" not in (run.state.get("sent") or []) or (ndr is not None and parcel not in ndr):
        return []
    name = facts.order.name if facts.order is not None else run.subject
    return [Handoff(f"{name} was delivered after the failed attempt: no call needed", waits=False, only_open=True)]


class DeliveryUpdatesConfig(JourneyConfig):
    steps: tuple[str, ...] = Field(("shipped", "out_for_delivery", "delivered", "failed"),
                                   description="which updates to send; also ready_for_pickup (the parcel waits at a pickup point)")

    @field_validator("steps")
    @classmethod
    def _known_steps(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        """A misspelt update would never be sent, without a word."""
        unknown = [s for s in value if s not in STEPS]
        if unknown:
            raise ValueError("; ".join(f"{s!r} is not a delivery step ({', '.join(STEPS)})" for s in unknown))
        return value
    handoff_on_failure: bool = True
    handoff_on_tracking_failure: bool = Field(
        True, description="a parcel whose tracking fails (Shopify's 'failure': an invalid tracking number, a cancelled shipment) "
                          "goes to a person; the customer is not told")
    reschedule_payloads: tuple[str, ...] = ("ndr_reschedule",)
    address_payloads: tuple[str, ...] = ("ndr_update_address",)
    cancel_payloads: tuple[str, ...] = ("ndr_cancel",)
    note_answers: bool = Field(True, description="write a reschedule / new-address answer into the order's notes")
    acknowledge_answers: bool = Field(False, description="answer a tap with step delivery.ndr_<choice> (reschedule, update_address, cancel)")

    @model_validator(mode="after")
    def _answers_mean_one_thing(self) -> "DeliveryUpdatesConfig":
        """A payload in two lists is read as the first (reschedule, then address, then cancel): a
        customer who asks to cancel the parcel would have it rescheduled instead."""
        lists = (("reschedule_payloads", self.reschedule_payloads), ("address_payloads", self.address_payloads),
                 ("cancel_payloads", self.cancel_payloads))
        problems = [(name, f"{p!r} is also in {earlier}: a tap on it would be read as that")
                    for i, (name, payloads) in enumerate(lists) for p in payloads
                    for earlier, before in lists[:i] if p in before]
        if problems:
            raise Problems(problems)
        return self

    def choice(self, payload: str) -> str | None:
        for choice, payloads in (("reschedule", self.reschedule_payloads), ("update_address", self.address_payloads),
                                 ("cancel", self.cancel_payloads)):
            if payload in payloads:
                return choice
        return None


class DeliveryUpdates:
    name: ClassVar[str] = "delivery"
    stage: ClassVar[str] = "post_purchase"  # whose cases its hand-offs are (handoffs.journey_stage)
    config_model: ClassVar[type[JourneyConfig]] = DeliveryUpdatesConfig
    template_steps: ClassVar[tuple[str, ...]] = (*STEPS, "ndr_reschedule", "ndr_update_address", "ndr_cancel")
    # a tap matched to none of our messages (the question's send outcome was lost) reaches her runs not
    # finished, those a person is on too (``facts.extra["reached_runs"]``): an answer must not vanish
    hears_unmatched_taps: ClassVar[bool] = True

    def subject(self, event: Any, facts: Facts) -> str | None:
        if isinstance(event, ev.FulfillmentUpdated):
            return f"order:{event.fulfillment.order_external_id}"
        if isinstance(event, ev.ButtonReplied):
            return replied_here(event, facts, self.name)
        if isinstance(event, ev.OrderDeleted):
            return deleted_order(event)
        if isinstance(event, (ev.OrderCancelled, ev.OrderUpdated)) and cancelled_order(event, facts):
            return f"order:{event.order.external_id}"  # a cancel withdraws what the run has waiting
        if isinstance(event, (ev.OrderUpdated, ev.OrderFulfilled)) and _fulfilled(facts):
            return f"order:{event.order.external_id}"  # the part still to ship dropped: "delivered" may be due (``_completed``)
        return None

    def decide(self, event: Any, run: Run | None, facts: Facts, config: DeliveryUpdatesConfig, now: datetime) -> list[Command]:
        if isinstance(event, ev.ButtonReplied):
            if run is None:
                return []
            if "reached_runs" in facts.extra:
                return self._unmatched(event, run, facts, config)
            return self._answer(event, run, facts, config)
        if isinstance(event, TimerFired):
            return self._no_news(run)
        if cancelled_order(event, facts):
            # an update still waiting must not reach her after the cancel; a run a person is on stays theirs
            return withdraw_for_cancel(run, finish=True) if run is not None else []
        if isinstance(event, (ev.OrderUpdated, ev.OrderFulfilled)):
            return self._completed(run, facts, config, event.order)
        if not isinstance(event, ev.FulfillmentUpdated) or facts.order is None or facts.order.cancelled:
            return []
        if not facts.order.ships:
            return []  # collected at the store, sold at the till, or nothing to deliver: its fulfilment is no parcel
        f = event.fulfillment
        if f.status in CALLED_OFF or not f.ships:
            return _untracked_wait(run, self._no_parcel(run, facts, config, f), now)
        return _untracked_wait(run, self._parcel(run, facts, config, f), now)

    def _parcel(self, run: Run | None, facts: Facts, config: DeliveryUpdatesConfig, f: ev.Fulfillment) -> list[Command]:
        """A parcel's news: the step it brings her, once, and the parcel's status kept."""
        assert facts.order is not None
        if f.status in ("pending", "open") and f.shipment_status.value == "none":
            return []  # not done yet (a fulfilment service still packing): nothing has shipped
        status = f.shipment_status.value
        # each parcel's latest news (an order can ship in several); a run from before kept one status for all
        parcels = dict((run.state.get("parcels") or {}) if run else {})
        stored = parcels.get(f.external_id, run.state.get("last_status") if run is not None and "parcels" not in run.state else None)
        prev = _as_now_meant(stored, run, f.external_id)
        if status == NOT_DELIVERED and STEP_FOR_STATUS.get(prev or "") == "failed":
            status = prev or status  # the failure known by its carrier word, as the reconcile reads it: that word stands
        parcels[f.external_id] = status
        if status == TRACKING_FAILURE:
            return self._tracking_failed(run, facts, config, f, prev, parcels)
        step = STEP_FOR_STATUS.get(status)
        if step is None or step not in config.steps:
            return []
        done = set((run.state.get("sent") or []) if run else [])
        if run is not None and step == "failed" and "failed" in done and STEP_FOR_STATUS.get(prev or "") != "failed":
            return self._failed_again(run, facts, config, status, parcels, f)
        everything = _all_arrived(parcels, facts)
        if step in done or (step == "shipped" and done & LATER_THAN_SHIPPED) or (step == "delivered" and not everything):
            return self._heard(run, facts, config, f, status, prev, step, parcels, everything)
        untracked = step == "shipped" and not _pairs(f)
        # "shipped" still open after a shipped status: it was tried without tracking
        tried = run is not None and STEP_FOR_STATUS.get(run.state.get("last_status") or "") == "shipped"
        if untracked and tried:
            return []  # wait for the tracking
        commands: list[Command] = []
        if run is None:
            if facts.contact_id is None:
                return []
            commands.append(Start(f"order:{facts.order.external_id}", facts.contact_id, _started(facts.order)))
        elif step in LATER_THAN_SHIPPED and all(STEP_FOR_STATUS.get(s) in LATER_THAN_SHIPPED for s in parcels.values()):
            # every parcel is past what the run may still have waiting (held for quiet hours, a retry): the
            # earlier news is withdrawn, so she gets the current one only (this decision's send is queued after)
            commands.append(Withdraw())
        told = done if untracked else done | {step}  # an untracked "shipped" leaves the step open
        state: dict[str, Any] = {"sent": sorted(told), "last_status": status, "parcels": parcels}
        further: list[Command] = []
        if step == "shipped" and not untracked:
            # a fulfilment with several numbers (multi-package tracking): each parcel's link in a "shipped" of its own
            further, of = _further(facts, _pairs(f)[1:], 2)
            state["tracking"] = {**_tracking_of(run, f.external_id), f.external_id: _told(f, _pairs(f), 1, of=of)}
        if step == "failed":
            state["ndr_parcels"] = sorted({*((run.state.get("ndr_parcels") or []) if run else []), f.external_id})
        # after an untracked try, that try may have been skipped for want of the tracking
        commands += [Update(state), *_question_moot(run, parcels, status, prev),
                     Send(step, order_context(facts), retry_missing_value=step == "shipped" and tried), *further]
        if step == "failed" and config.handoff_on_failure:
            commands.append(Handoff(f"delivery failed ({_failed(status)}) for {facts.order.name} ({_named(f)}); call the customer to rearrange"))
        commands += _delivered_after_failure(run, facts, f.external_id, status, prev)
        return commands + _arrived(run, parcels, everything)

    @staticmethod
    def _no_parcel(run: Run | None, facts: Facts, config: DeliveryUpdatesConfig, f: ev.Fulfillment) -> list[Command]:
        """A fulfilment that is no parcel: the store cancelled it (or its service failed it), whatever
        carrier status it still carries (a label bought, even scanned), or none of its lines ships (a gift
        card or a digital line, fulfilled at once in a fulfilment of its own, which never gets carrier
        news). She is told nothing of it, and it leaves the parcels "delivered" waits for (a cancelled one
        is usually shipped again as another fulfilment; a run from before ``ships`` was read may have kept
        a gift card's). Once the parcels left have all arrived, that is "delivered", if she was not told yet."""
        parcels = dict((run.state.get("parcels") or {}) if run else {})
        if run is None or f.external_id not in parcels:
            return []
        del parcels[f.external_id]
        # its "shipped" still waiting would give her a link to a parcel that never comes
        return [Update({"parcels": parcels}), *_called_off_tracking(_tracking_of(run, f.external_id).get(f.external_id), set()),
                *_all_in(run, facts, config, parcels)]

    @staticmethod
    def _completed(run: Run | None, facts: Facts, config: DeliveryUpdatesConfig, order: ev.Order) -> list[Command]:
        """The order is fulfilled with no new parcel: the part it still had to ship was dropped (a line refunded or
        removed by an order edit). Its parcels were all it was waiting for: once they have all arrived that is
        "delivered", if she was not told yet; without this the run waited for ever for a part that never ships.
        A parcel the order lists that the run has not heard of is the rest shipped, not dropped (the order's
        update is heard before the parcel's news it lists): "delivered" waits for it too (``_listed``)."""
        if run is None or run.state.get("cancelled") or facts.order is None or facts.order.cancelled or not facts.order.ships:
            return []
        return _all_in(run, facts, config, {**_listed(order), **(run.state.get("parcels") or {})})

    @staticmethod
    def _heard(run: Run | None, facts: Facts, config: DeliveryUpdatesConfig, f: ev.Fulfillment, status: str, prev: str | None,
               step: str, parcels: dict[str, str], everything: bool) -> list[Command]:
        """News whose step was told already (or "delivered" while another parcel is on its way): the
        parcel's status is kept (so its next failure is a new attempt to ask about, a repeat of this news
        is not, and the run knows when every parcel has arrived), and a "shipped" that brings tracking
        she was not told (another parcel, a corrected number or link, a link added later) tells it."""
        if run is None:
            if step != "delivered" or facts.contact_id is None or facts.order is None:
                return []
            # first heard delivered, another parcel still to come: the run keeps it, "delivered" waits
            return [Start(f"order:{facts.order.external_id}", facts.contact_id, _started(facts.order)),
                    Update({"last_status": status, "parcels": parcels})]
        state: dict[str, Any] = {}
        if status not in (prev, "none"):  # "none" is no carrier news (e.g. tracking added later): the status stands
            state.update(last_status=status, parcels=parcels)
        elif "parcels" in run.state and f.external_id not in run.state["parcels"]:
            # another parcel with no carrier news yet (Shopify's fulfillments/create says none): "delivered" waits for it too
            state["parcels"] = parcels
        sends: list[Command] = []
        if step == "shipped" and "shipped" in (run.state.get("sent") or []) and (prev or "") not in ARRIVED:
            tracking, sends = _tracking_news(run, facts, f)
            if tracking is not None:
                state["tracking"] = tracking
        if not state:
            return []  # already told, or a late "shipped" after later news
        return [Update(state), *_question_moot(run, parcels, status, prev), *sends, *_failure_news(run, facts, config, f, status, prev),
                *_delivered_after_failure(run, facts, f.external_id, status, prev), *_arrived(run, parcels, everything)]

    @staticmethod
    def _tracking_failed(run: Run | None, facts: Facts, config: DeliveryUpdatesConfig, f: ev.Fulfillment, prev: str | None,
                         parcels: dict[str, str]) -> list[Command]:
        """The carrier's tracking failed (Shopify's ``failure``): the parcel may be fine, so the customer
        is not asked about a failed delivery; a person checks with the courier (once per failure of a
        parcel: the same news again says nothing, a failure after the tracking recovered is new)."""
        if prev == TRACKING_FAILURE:
            return []  # the same failure reported again
        failed_tracking = sorted({*((run.state.get("tracking_failed") or []) if run else []), f.external_id})
        kept = Update({"last_status": TRACKING_FAILURE, "parcels": parcels, "tracking_failed": failed_tracking})
        if not config.handoff_on_tracking_failure:
            return [kept] if run is not None else []
        if run is None and facts.contact_id is None:
            return []
        assert facts.order is not None
        parcel = _named(f)
        started = Start(f"order:{facts.order.external_id}", facts.contact_id, _started(facts.order))
        commands: list[Command] = [started] if run is None else []
        return commands + [
            kept,
            Handoff(f"tracking failed for {facts.order.name} ({parcel}): the carrier's tracking could not be read (an invalid "
                    f"tracking number) or the shipment was cancelled; check with the courier (the customer was not told)")]

    @staticmethod
    def _failed_again(run: Run, facts: Facts, config: DeliveryUpdatesConfig, status: str, parcels: dict[str, str],
                      f: ev.Fulfillment) -> list[Command]:
        """Another failed attempt after the parcel moved on (the courier tried again), or another
        parcel's: the customer is asked again (a message of its own, ``Send.occurrence``), may
        answer afresh, and a person hears of it (the open hand-off, or a new one if it was closed)."""
        assert facts.order is not None  # decide reads a fulfilment only with its order
        attempt = int(run.state.get("failed_attempts", 1)) + 1
        ndr_parcels = sorted({*(run.state.get("ndr_parcels") or []), f.external_id})
        commands: list[Command] = [Update({"last_status": status, "parcels": parcels, "failed_attempts": attempt, "ndr_answers": [],
                                           "ndr_parcels": ndr_parcels}),
                                   Send("failed", order_context(facts), occurrence=attempt)]
        if config.handoff_on_failure:
            commands.append(Handoff(f"delivery failed again (attempt {attempt}, {_failed(status)}) for {facts.order.name} ({_named(f)}); "
                                    f"call the customer to rearrange"))
        return commands

    @staticmethod
    def _no_news(run: Run | None) -> list[Command]:
        """The wait for parcels that never had carrier news is over (``_untracked_wait``) and still none
        came: the run ends. She is not told "delivered": nobody knows whether they arrived. A run a
        person is on fires no timer; once they close its case it does, and ends so too."""
        if run is None or run.status != "active" or run.state.get("cancelled"):
            return []
        return [Finish(UNTRACKED, skip_waiting=False)] if _untracked_left(run.state.get("parcels") or {}) else []

    @staticmethod
    def case_closed(run: Run) -> str | None:
        """A person closed the run's case (they rang her, rearranged the delivery): the run waits on
        nobody now (``handoffs._release_run``). With every parcel arrived, or the order cancelled, it
        ends, as an active run would have; else it goes back to following the parcels (None: active):
        their arrival ends it, and another failure asks her and hands off again; with only parcels no carrier
        reports on left, its listening timer (set while the case was open, ``_untracked_wait``) ends it."""
        parcels = run.state.get("parcels") or {}
        if parcels and all(s in ARRIVED for s in parcels.values()):
            return "delivered"
        return "order_cancelled" if run.state.get("cancelled") else None

    @staticmethod
    def _asking(run: Run) -> bool:
        """A run a tap on its failed-delivery question could answer: the question went out (for the
        latest attempt: another attempt asks afresh), the order is not cancelled, and a parcel is still
        to arrive; answered or not, since she may change her mind (Cancel after Reschedule), and a repeat
        is dropped per choice (``_answer``). Not finished: active, or with a person (the question opens its case)."""
        state = run.state
        parcels = state.get("parcels") or {}
        return (run.journey == DeliveryUpdates.name and run.status != "finished" and "failed" in (state.get("sent") or [])
                and not state.get("cancelled") and not (parcels and all(s in ARRIVED for s in parcels.values())))

    @classmethod
    def _meant(cls, runs: list[Run], choice: str) -> list[Run]:
        """The runs a tap matched to no message may answer: those asking (``_asking``) that have not
        taken this choice yet (her same tap again is no news). Of several, the ones still waiting for any
        answer come first: a question she answered has been seen, and one whose message id we know would
        have matched her tap."""
        asking = [r for r in runs if cls._asking(r) and choice not in (r.state.get("ndr_answers") or [])]
        unanswered = [r for r in asking if not r.state.get("ndr_answers")]
        return unanswered or asking

    def _unmatched(self, event: ev.ButtonReplied, run: Run, facts: Facts, config: DeliveryUpdatesConfig) -> list[Command]:
        """A tap on a failed-delivery question the runner could not tie to one message (its send's
        outcome was lost, so its message id is unknown): it reaches all her runs not finished
        (``reached_runs``). With one of them meant (``_meant``), it is that run's answer, a change of
        mind too (Cancel after Reschedule). With several, none is written to any order (a reschedule note
        on the wrong order sends a courier to the wrong door): the first of them (in id order) tells its
        case, or opens one, and the others' open cases hear it too, so a person asks her which order she
        meant; once per kind of tap. A run not asking takes none."""
        choice = config.choice(event.payload)
        if choice is None:
            return []
        meant = self._meant(facts.extra["reached_runs"], choice)
        if run.subject not in {r.subject for r in meant}:
            return []
        if len(meant) == 1:
            return self._answer(event, run, facts, config)
        tapped = f"{choice}:{run.state.get('failed_attempts', 1)}"  # once per kind of tap and failed attempt
        if tapped in (run.state.get("ndr_unmatched") or []):
            return []  # the same tap again: the case has it
        names = ", ".join(r.state.get("order_name") or f"#{r.subject.split(':', 1)[1]}" for r in meant)
        first = run.subject == meant[0].subject
        return [Update({"ndr_unmatched": [*(run.state.get("ndr_unmatched") or []), tapped]}),
                Handoff(f"customer tapped {TAPPED[choice]} on a failed-delivery question we could not match to one of her orders "
                        f"({names}); nothing was written to any order: ask her which order she meant", waits=False, only_open=not first)]

    @staticmethod
    def _answer(event: ev.ButtonReplied, run: Run, facts: Facts, config: DeliveryUpdatesConfig) -> list[Command]:
        """The customer's answer to the failed-delivery message: recorded, noted, and to a person
        (once per choice and failed attempt: after a second failure they may ask to reschedule again).
        Once every parcel has arrived the answer is late: no note is written, the case is told."""
        choice = config.choice(event.payload)
        answers = list(run.state.get("ndr_answers") or [])
        if choice is None or "failed" not in (run.state.get("sent") or []) or choice in answers:
            return []  # not an answer to a failed delivery, or this answer again
        order_id = run.subject.split(":", 1)[1]
        name = facts.order.name if facts.order is not None else f"#{order_id}"
        attempt = int(run.state.get("failed_attempts", 1))
        suffix = f"_{attempt}" if attempt > 1 else ""
        commands: list[Command] = [Update({"ndr_choice": choice, "ndr_answers": [*answers, choice],
                                           "ndr_answered_at": event.occurred_at.isoformat()})]
        parcels = run.state.get("parcels") or {}
        since = _called_off_since(run, facts)
        if since is not None:
            # the order no longer stands (the parcel came back, the store cancelled or refunded it): a reschedule or
            # address note would send the courier desk after an order that is off; the case hears her, a person answers
            return [*commands, Handoff(f"{ASKS[choice].format(name=name)}; the order was {since} since, so nothing was "
                                       f"written to the order", waits=False)]
        if parcels and all(s in ARRIVED for s in parcels.values()):
            # a late tap: every parcel has arrived since, so the courier desk gets no note to act on; the case hears it
            if choice == "cancel" or config.handoff_on_failure:
                commands.append(Handoff(f"{ASKS[choice].format(name=name)}; it has been delivered since, so nothing was "
                                        f"written to the order"))
            return commands
        if choice in NOTES and config.note_answers:
            commands.append(WriteBack("add_note", order_id, {"note": NOTES[choice]}, f"ndr_{choice}{suffix}"))
        if choice == "cancel" or config.handoff_on_failure:
            commands.append(Handoff(ASKS[choice].format(name=name)))
        if config.acknowledge_answers:
            commands.append(Send(f"ndr_{choice}", order_context(facts), occurrence=attempt))
        return commands
