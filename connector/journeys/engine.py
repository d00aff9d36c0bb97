"""The journey engine's vocabulary: what a journey sees and what it may ask for.

A journey is a pure function ``decide(event, run, facts, config, now) -> commands``: no
I/O, no clock. The processor gathers the facts, calls every enabled journey, and applies
the commands (run state, outbox rows, store write-backs) in the same transaction that
marks the inbox row done. One run per (journey, subject): a repeated or reordered event
finds the run it already started, and every send is keyed (journey, step, subject).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Any, ClassVar, Protocol

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator

from connector.toml_values import checked_scalar


class JourneyConfig(BaseModel):
    """Base of every journey's settings block (``[stores.journeys.<name>]``)."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    enabled: bool = True
    holdout_percent: float = Field(0, ge=0, le=50, description="share of contacts kept as a control group (get nothing); "
                                                               "only on a journey that accepts one (see accepts_holdout)")
    # fields the connector sets when the config is loaded, from the store's other settings (why, in words):
    # refused in the file, where they would be overwritten without a word
    set_when_loaded: ClassVar[dict[str, str]] = {}

    @field_validator("*", mode="before")
    @classmethod
    def _as_toml_writes_it(cls, value: Any, info: ValidationInfo) -> Any:
        """A quoted number or boolean is a typo, not a value to convert (``toml_values``)."""
        return checked_scalar(cls, value, info)


@dataclass(frozen=True, slots=True)
class OrderFacts:
    external_id: str
    name: str
    is_cod: bool
    payment_state: str
    fulfillment_state: str
    total: Decimal
    currency: str
    cancelled: bool
    status_url: str | None
    payment_url: str | None
    checkout_token: str | None
    placed_at: datetime
    channel: str = "online"  # events.SalesChannel: "pos" is a sale at the store's till
    delivery: str = "shipping"  # events.Delivery: only "shipping" is a parcel to tell the customer about
    customer_total: Decimal | None = None  # in the customer's currency when not the shop's: what messages show
    customer_currency: str | None = None
    # the terms as stored (events.Order.payment_terms / payment_due_at): kept from the event that carried
    # them, so an update without terms (the reconcile's GraphQL read) still knows the order is on terms
    payment_terms: str | None = None
    payment_due_at: datetime | None = None

    @property
    def ships(self) -> bool:
        """Whether a parcel goes to the customer (not collected at the store, nothing to deliver, or a till sale)."""
        return self.delivery == "shipping"


@dataclass(frozen=True, slots=True)
class Facts:
    """What the processor knows around an event (read from the database, never platform JSON)."""

    store_name: str
    contact_id: int | None = None
    first_name: str | None = None
    order: OrderFacts | None = None
    fulfillment: dict[str, Any] | None = None
    button_payload: str | None = None  # for a ButtonReplied routed to this run
    # what else the runner knows: "stage", "marketing_ok", "opted_out_at" (only while the contact is opted
    # out: STOP), the reply's "reply_journey" / "reply_subject",
    # "handed_off" (the event opened a case for a person, or joined one: handoffs.rules; the case's id),
    # "reminders_sent" (credits_sent_reminders journeys), "open_runs" (follows_contact journeys: the
    # contact's other active runs of the journey, as the event's own run decides), "reached_runs" (a tap
    # that matched none of our messages, reaching several runs of a follows_contact journey, or any of a
    # hears_unmatched_taps journey: all of them, in id order, told alike to each, so they can tell which
    # one it may mean), "order_runs" (an order
    # reaching several runs of a ``credits_one_run`` journey: each (run, when its reminders went out)),
    # "open_cases" (a timer of a journey whose ``needs_cases`` asks: the contact's open hand-offs, ``OpenCase``),
    # "writebacks" (an event for a run whose journey's ``needs_writebacks`` names some of its write-backs: each
    # one's outbox status by ``WriteBack.key``, ``outbox.store.writeback_states``; one never queued is absent)
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class OpenCase:
    """One of the contact's hand-offs still open (no person closed it): what a journey may check its run's case against."""

    id: int
    journey: str | None
    subject: str | None


@dataclass(frozen=True, slots=True)
class Run:
    """A journey run as stored: its status and the small state the journey keeps."""

    journey: str
    subject: str
    status: str  # active | finished | handoff
    state: dict[str, Any]
    next_due_at: datetime | None
    contact_id: int | None
    started_at: datetime


@dataclass(frozen=True, slots=True)
class TimerFired:
    """The run's ``next_due_at`` passed; the journey decides what happens now."""

    at: datetime


# ---- commands -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Start:
    subject: str
    contact_id: int | None
    state: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Send:
    """Queue the template bound to ``<journey>.<step>`` with these values."""

    step: str
    context: dict[str, Any]
    due_at: datetime | None = None
    # this step may be on record as skipped for a missing template value (a "shipped" message
    # tried before the tracking came): if so, that row is queued now with the full message
    retry_missing_value: bool = False
    # this step may be on record as withdrawn before it went (skipped ``journey_ended``: a pay link held for the night
    # when the store cancelled its order, the order since put back): if so, that row is queued again, as queueing it
    # now would (the gate's quiet hours); one that went out, or was skipped for another reason, stays as it is
    retry_withdrawn: bool = False
    # the step's nth time for the subject (a second failed delivery): its own outbox key, so it
    # is sent once again rather than taken for the first one repeated
    occurrence: int = 1
    # sent only if the step's template shows one of these values: a message that exists to tell
    # one of them (a further parcel's tracking) would otherwise repeat an earlier one word for word
    shows: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Refresh:
    """Write the run's message of ``step`` again with these values if it is still waiting (held for quiet
    hours, a retry), at its own time: what it quotes changed meanwhile (the cart she came back to and
    changed). One that went out, is being sent or was skipped stays as it is; none queued: nothing."""

    step: str
    context: dict[str, Any]


@dataclass(frozen=True, slots=True)
class WriteBack:
    """Change the order in the store (tag, cancel, note, status), through the outbox."""

    action: str  # add_tags | cancel_order | add_note | set_status
    order_id: str
    args: dict[str, Any]
    key: str  # unique per run: the same write-back is never queued twice
    # a state change the order's shipping stops (``writebacks.MOVES``) is then skipped; this is what a
    # person must hear of it (the customer's own Cancel: the parcel goes out to someone who asked not to
    # have it). None: skipped quietly (a no-answer cancel, a confirm status: nobody asked for them)
    if_shipped: str | None = None


@dataclass(frozen=True, slots=True)
class Update:
    state: dict[str, Any]


@dataclass(frozen=True, slots=True)
class Wake:
    """Set the run's timer (None clears it). ``listening``: no message is planned for it, the
    timer only ends a run that listens for what its messages earned (a cart ladder's attribution
    window, a pay reminder's last hours): the customer is not busy in such a run, and other
    journeys (the reorder reminder's ``skip_when_busy``) may speak to her. Not part of equality."""

    at: datetime | None
    listening: bool = field(default=False, compare=False)


@dataclass(frozen=True, slots=True)
class Finish:
    """End the run. ``skip_waiting``: the run ends because something happened (the customer
    bought, answered, cancelled; a person took over), so its messages still waiting are skipped
    (``journey_ended``); False for a run that simply ran out of steps. Not part of equality."""

    outcome: str
    skip_waiting: bool = field(default=True, compare=False)


@dataclass(frozen=True, slots=True)
class Withdraw:
    """Skip the run's messages still waiting (held for quiet hours, a retry) while the run goes
    on: what just happened makes them wrong (the cart was bought; the run only waits to credit
    the order). ``Finish`` does the same when the run ends.

    ``only``: just these of them, by (step, occurrence): one message made wrong while the others stand
    (a parcel's "shipped" whose tracking the store called off); with ``shows``, only where the step's
    template shows one of these values (else what the message says is still true)."""

    only: tuple[tuple[str, int], ...] = ()
    shows: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class WithdrawWriteBack:
    """Skip one of the run's store write-backs (by its ``WriteBack.key``) if it is still waiting: what
    just happened makes it wrong (a no-answer cancel of an order she confirmed in time). Only a
    ``pending`` row is skipped, with ``reason``; one the dispatcher has claimed is being made and goes
    on. A journey that must know which it will be asks for the write-back's state first
    (``needs_writebacks``: ``facts.extra["writebacks"]``, the row locked until its decision is applied)."""

    key: str
    reason: str


@dataclass(frozen=True, slots=True)
class Rehome:
    """Move the run to another contact: its messages from now on go to them, and what it queued for the
    old one and is still waiting (a reminder held for quiet hours) is skipped (``contact_moved``). Only
    for a run whose contact was a guess (a cart read that could not see the checkout's phone), once.
    ``regroup``: its holdout group is decided again, for the new contact (nothing was sent, or held
    back, in the old group's name yet); False keeps the group its first step was counted in."""

    contact_id: int
    regroup: bool = True


@dataclass(frozen=True, slots=True)
class Handoff:
    """Hand the conversation to a person (e.g. a failed delivery); the run waits for them.
    ``waits=False``: a person is told, but the run stays as it is (an active run still takes
    the customer's taps and fires its timers)."""

    reason: str
    waits: bool = True
    only_open: bool = False  # news for the run's case if it is still open; none open (a person closed it): nothing
    # with ``only_open``: the case to tell, by id (the one her words joined, say); None: the run's own
    case: int | None = None


@dataclass(frozen=True, slots=True)
class MoveStage:
    """Move the contact to one of the five stages (entry ... retention)."""

    stage: str


Command = Start | Send | Refresh | WriteBack | Update | Wake | Finish | Withdraw | WithdrawWriteBack | Rehome | Handoff | MoveStage


class Journey(Protocol):
    """A journey may also set ``follows_contact = True`` (the customer's orders, replies and taps
    reach all its active runs for them), ``marketing = True`` (any opt-out ends its runs),
    ``accepts_holdout`` (see ``accepts_holdout``), ``stage`` (one of the five: whose owner
    takes its hand-offs and the replies to its messages; else the contact's stage),
    ``credits_sent_reminders = True`` (an order reaching a run: ``facts.extra["reminders_sent"]``;
    with ``may_credit(event, run)``, only for an order that method says can credit the run),
    ``credits_one_run = True`` (an order reaching several runs: ``facts.extra["order_runs"]``,
    so it credits one), ``hears_unmatched_taps = True`` (a tap matched to none of our messages reaches
    the contact's runs of it not finished, those waiting on a person too, each with its order, and
    ``facts.extra["reached_runs"]`` even for one), ``case_closed(run)`` (a person closed the case a run
    waits on: the outcome it ends with, None: it goes on, active; ``handoffs._release_run``),
    ``needs_sends(event, run, config)`` (a timer it says True for:
    ``facts.extra["reminders_sent"]``) and ``needs_cases(event, run, config)`` (a timer it says
    True for: ``facts.extra["open_cases"]``, the contact's hand-offs still open),
    ``needs_writebacks(event, run, config)`` (the keys of the run's write-backs whose state an event's
    decision turns on: ``facts.extra["writebacks"]``, those rows locked until the decision is applied), and
    ``template_steps`` (the steps it sends, regular expressions: a configured template for any other
    step of it is never sent, which ``check-config`` warns of; without it, no such check),
    ``discount_steps(config)`` (the steps whose message carries ``discount.code`` with these settings:
    a template of another step that binds it is skipped as ``missing_value`` every time, which
    ``check-config`` warns of, naming ``discount_setting``, default ``discount_code``), and
    ``customer_words`` (the state keys that can hold what the customer typed: the conversation
    retention empties them in runs finished longer ago than ``worker.conversation_retention_days``), and
    ``resumed(run, paused)`` (the store restored the run's order after ``paused`` in the bin: the runner puts
    the run back as the bin found it, its timer later by ``paused``; this returns the state updates that move
    the times the run keeps of its own by as much; ``runner.on_restored``), and ``warnings(config)``
    (settings that load but fail on many stores: ``check-config`` says them, and the log at start)."""

    name: ClassVar[str]
    config_model: ClassVar[type[JourneyConfig]]

    def subject(self, event: Any, facts: Facts) -> str | None:
        """Which run this event concerns (None: not this journey's business)."""

    def decide(self, event: Any, run: Run | None, facts: Facts, config: Any, now: datetime) -> list[Command]:
        """Pure: the commands for this event given the run's state."""


def accepts_holdout(journey: Any) -> bool:
    """Whether a journey may keep a holdout (``holdout_percent``): a marketing journey, or one
    that says ``accepts_holdout = True``. A control run gets no message but still acts on the
    store, so a journey that acts on the customer's silence (COD confirmation cancels or flags
    an unanswered order) would act on customers who were never asked."""
    declared = getattr(journey, "accepts_holdout", None)
    if declared is not None:
        return bool(declared)
    return bool(getattr(journey, "marketing", False))
