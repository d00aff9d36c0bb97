"""Reorder reminders (marketing): when a product should be running out, a one-tap reorder link.

The window scan (connector/reorder/windows.py) raises ``ReorderWindowOpened`` when
delivery (or fulfilment, or the order date, plus transit) plus the product's cycle times
the quantity, minus ``lead_days``, has passed. The journey sends the reminder with the
cart link, optionally one follow-up, and keeps listening until the attribution window
ends: a reorder of the same product inside it is attributed (with its revenue: that
product's lines in the order, price x quantity, ``line_revenue``) when a
reminder went out before it (WhatsApp took it, as the runner tells from the run's outbox rows:
``credits_sent_reminders``); one the gate skipped (no marketing consent, the cap), one still
held for quiet hours when the order came, or one Meta refused earns nothing. A reply
stops the follow-up. A customer busy in another journey (a COD ask, a cart reminder, a
delivery hand-off) is skipped and the reason kept. The marketing cap, quiet hours and the
holdout are the policy gate's and the runner's business, as for every marketing step; an
opt-out (of any kind) ends the run at once (``state.end_marketing_runs``).

This block also carries the cycle settings, since windows only exist for stores that
run the journey.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any, ClassVar

from pydantic import AnyHttpUrl, Field, field_validator, model_validator

from connector import events as ev
from connector.errors import Problems
from connector.journeys._common import answers_run, is_reply
from connector.journeys.engine import Command, Facts, Finish, JourneyConfig, MoveStage, Run, Send, Start, TimerFired, Update, Wake, Withdraw
from connector.reorder.cycles import parse_cycle, product_key


STEPS = ("reminder", "follow_up")  # its messages, in order (the report reads what became of them)
# run state while its product is not sold (reorder.windows: paused, not ended, so being sold again brings it back):
NOT_SOLD = "not_sold"  # when it stopped being sold; also the outcome of a run whose reminder never went out because of it
WITHHELD = "withheld"  # its steps whose messages were still waiting then (skipped, reason ``not_sold``)
RESUME_AT = "resume_at"  # its timer before the pause (a follow-up's), put back when the product is sold again
# why it is paused when not for ``not_sold`` (absent): ``sold_out``, still sold but out of stock; its messages were
# skipped with that reason, and a run whose reminder never went out because of it ends with it as its outcome
PAUSED_FOR = "paused_for"


class ReorderConfig(JourneyConfig):
    cycles: dict[str, float] = Field(
        default_factory=dict, description="per variant id, SKU or product id: '30d', '4w', '2m'; wins over tags and history",
    )
    lead_days: float = Field(3, ge=0, description="open the window this long before the customer should run out")
    transit_days: float = Field(4, ge=0, description="assumed delivery time when only fulfilment or the order date is known")
    min_repeat_buyers: int = Field(5, ge=1, description="repeat buyers needed before a product's cycle is learned from history")
    min_cycle_days: float = Field(3, gt=0)
    max_cycle_days: float = Field(365, gt=0)
    follow_up_days: float | None = Field(3, gt=0, description="one follow-up this long after the reminder; omit for none")
    discount_code: str | None = None
    attribution_days: float = Field(14, gt=0, description="a reorder this long after the reminder counts as recovered")
    late_days: float = Field(2, ge=0, description="windows that opened longer ago than this (history backfills) are not messaged")
    storefront_url: AnyHttpUrl | None = Field(None, description="base of the reorder link; default the shop's own domain")
    skip_when_busy: bool = Field(True, description="no reminder while another journey has a message still to come for the customer, or a person is on her case")

    @field_validator("cycles", mode="before")
    @classmethod
    def _cycles(cls, value: Any) -> dict[str, float]:
        if not isinstance(value, dict):
            raise ValueError("must be a table of product -> cycle, e.g. { \"NEEM-100\" = \"30d\" }")
        return {str(k): parse_cycle(str(v)) for k, v in value.items()}

    @model_validator(mode="after")
    def _bounds_in_order(self) -> "ReorderConfig":
        """A learned cycle is held between the bounds: with them crossed, every one would come out
        as max_cycle_days, whatever the customers' reorders said."""
        if self.min_cycle_days > self.max_cycle_days:
            raise Problems([("min_cycle_days", f"{self.min_cycle_days:g} is above max_cycle_days ({self.max_cycle_days:g}): "
                                               "every learned cycle would be max_cycle_days")])
        return self


class Reorder:
    name: ClassVar[str] = "reorder"
    stage: ClassVar[str] = "retention"  # whose cases its hand-offs are (handoffs.journey_stage)
    config_model: ClassVar[type[JourneyConfig]] = ReorderConfig
    template_steps: ClassVar[tuple[str, ...]] = STEPS
    follows_contact: ClassVar[bool] = True  # a later order or a reply by the customer reaches the run
    marketing: ClassVar[bool] = True  # any opt-out ends its runs (state.end_marketing_runs)
    credits_sent_reminders: ClassVar[bool] = True  # a reorder reaching a run: facts.extra["reminders_sent"]

    @staticmethod
    def discount_steps(config: ReorderConfig) -> frozenset[str]:
        """The steps whose message carries ``discount.code`` (``_context``): both, or none without a
        ``discount_code``. A template that binds it without one is never sent: ``check-config`` warns."""
        return frozenset(STEPS) if config.discount_code else frozenset()

    def subject(self, event: Any, facts: Facts) -> str | None:
        if isinstance(event, ev.ReorderWindowOpened):
            return f"reorder:{event.order_external_id}:{event.product_key}"
        return None

    def decide(self, event: Any, run: Run | None, facts: Facts, config: ReorderConfig, now: datetime) -> list[Command]:
        if isinstance(event, ev.ReorderWindowOpened):
            return self._opened(event, run, facts, config, now) if run is None else []
        if run is None or run.status != "active":
            return []
        if isinstance(event, ev.OrderPlaced):
            return self._reordered(event.order, run, facts)
        if isinstance(event, (ev.MessageReceived, ev.ButtonReplied)):
            if not is_reply(event) or not answers_run(run, facts, self.name):
                return []  # a reaction or a sticker, or an answer to another journey's message: the follow-up still goes
            # they wrote (this run hears all their replies): no follow-up, and one already queued (held for
            # quiet hours, a retry) is withdrawn; the reminder itself, if it still waits, goes on, for a word
            # about another order says nothing about restocking. The run stays to credit a reorder.
            ends = Wake(datetime.fromisoformat(run.state["attribution_ends"]))
            return [Update({"replied": True}), *([Withdraw()] if int(run.state.get("sent", 0)) >= 2 else []), ends]
        if isinstance(event, TimerFired):
            return self._timer(run, facts, config, now)
        return []

    def _opened(self, e: ev.ReorderWindowOpened, run: Run | None, facts: Facts, config: ReorderConfig, now: datetime) -> list[Command]:
        if facts.contact_id is None:
            return []
        subject = f"reorder:{e.order_external_id}:{e.product_key}"
        ends = now + timedelta(days=config.attribution_days)
        state = {"window_id": e.window_id, "product_key": e.product_key, "product": e.title, "quantity": e.quantity,
                 "link": e.link, "cycle_days": e.cycle_days, "cycle_source": e.cycle_source, "attribution_ends": ends.isoformat()}
        if e.busy_with and config.skip_when_busy:
            return [Start(subject, facts.contact_id, {**state, "skipped": ",".join(e.busy_with)}), Finish("skipped_busy", skip_waiting=False)]
        commands: list[Command] = [Start(subject, facts.contact_id, {**state, "sent": 1}), Send("reminder", self._context(state, facts, config))]
        if not e.ordered_since:  # a newer order (paid, waiting to ship) keeps her in its stage, with its owner
            commands.append(MoveStage("retention"))
        if config.follow_up_days:
            commands.append(Wake(min(ends, now + timedelta(days=config.follow_up_days))))
        else:
            commands.append(Wake(ends))
        return commands

    @staticmethod
    def _context(state: dict[str, Any], facts: Facts, config: ReorderConfig) -> dict[str, Any]:
        ctx: dict[str, Any] = {"customer.first_name": facts.first_name, "store.name": facts.store_name,
                               "reorder.link": state.get("link"), "reorder.product": state.get("product")}
        if config.discount_code:
            ctx["discount.code"] = config.discount_code
        return ctx

    def _timer(self, run: Run, facts: Facts, config: ReorderConfig, now: datetime) -> list[Command]:
        ends = datetime.fromisoformat(run.state["attribution_ends"])
        sent = int(run.state.get("sent", 0))
        paused = bool(run.state.get(NOT_SOLD))  # no follow-up may link to a product not sold (or sold out)
        if now < ends and sent == 1 and config.follow_up_days and not run.state.get("replied") and not paused:
            return [Update({"sent": 2}), Send("follow_up", self._context(run.state, facts, config)), Wake(ends)]
        if now < ends:
            return [Wake(ends)]
        # its reminder withdrawn while the product was not sold, never sold again in time: no reminder, for that reason
        withheld = paused and "reminder" in run.state.get(WITHHELD, ())
        return [Finish((run.state.get(PAUSED_FOR) or NOT_SOLD) if withheld else "no_reorder", skip_waiting=False)]

    @staticmethod
    def _reminded_before(run: Run, facts: Facts, at: datetime) -> bool:
        """Whether a reminder went out before ``at``: ``facts.extra["reminders_sent"]`` (the runner's look
        at the run's outbox rows); without it (a caller that did not look) the run's record of what it queued."""
        sent = facts.extra.get("reminders_sent")
        if sent is None:
            return int(run.state.get("sent", 0)) > 0
        return any(t <= at for t in sent)

    @staticmethod
    def _lines(order: ev.Order, run: Run) -> list[ev.LineItem]:
        """The order's lines of the run's product."""
        key = run.state.get("product_key")
        return [li for li in order.line_items if product_key(li.product_id, li.sku, li.title) == key]

    def may_credit(self, event: Any, run: Run) -> bool:
        """Whether an order event can credit this run (it buys the run's product): the runner looks
        up which reminders went out only then, not for every order a customer with open reorder
        runs places."""
        order = getattr(event, "order", None)
        return order is not None and bool(self._lines(order, run))

    def _reordered(self, order: ev.Order, run: Run, facts: Facts) -> list[Command]:
        lines = self._lines(order, run)
        if not lines:
            return []  # another product: still waiting for this one
        attributed = order.created_at <= datetime.fromisoformat(run.state["attribution_ends"]) \
            and self._reminded_before(run, facts, order.created_at)
        return [Update({"order_id": order.external_id, "reordered": True, "attributed": attributed,
                        "revenue": str(line_revenue(lines)) if attributed else "0", "currency": order.currency}),
                Wake(None), Finish("reordered")]


def line_revenue(lines: list[ev.LineItem]) -> Decimal:
    """What a reordered product brought: its lines' price x quantity, less their discounts (the reminder's
    own code among them). Not the order's total: one order can reorder several reminded products (each
    run would count the whole order again) and carry other items, shipping and taxes the reminder did not
    sell."""
    return sum((max(li.price * li.quantity - li.discount, Decimal("0")) for li in lines), Decimal("0"))
