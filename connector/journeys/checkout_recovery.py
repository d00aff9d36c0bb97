"""Checkout recovery (marketing): a ladder of up to three reminders for an abandoned checkout.

A checkout is abandoned after ``abandon_after_minutes`` without an update. Each reminder
goes ``ladder_minutes[i]`` after abandonment (a discount code can be offered on a later
step). The run stops the moment an order arrives for that checkout; an order within the
attribution window after a reminder is recorded as recovered, with its revenue.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any, ClassVar

from pydantic import Field

from connector import events as ev
from connector.journeys.engine import Command, Facts, Finish, JourneyConfig, Run, Send, Start, TimerFired, Update, Wake

STEPS = ("first", "second", "third")


class CheckoutRecoveryConfig(JourneyConfig):
    abandon_after_minutes: float = Field(30, gt=0)
    ladder_minutes: tuple[float, ...] = Field((0, 360, 1440), min_length=1, max_length=3, description="after abandonment, per reminder")
    discount_code: str | None = None
    discount_from_step: int = Field(3, ge=1, le=3, description="first reminder (1-3) that carries the discount code")
    attribution_days: float = Field(7, gt=0)


class CheckoutRecovery:
    name: ClassVar[str] = "checkout_recovery"
    config_model: ClassVar[type[JourneyConfig]] = CheckoutRecoveryConfig
    follows_contact: ClassVar[bool] = True  # an order by the same customer, or a reply, also ends a run
    marketing: ClassVar[bool] = True  # any opt-out ends its runs (state.end_marketing_runs)

    def subject(self, event: Any, facts: Facts) -> str | None:
        if isinstance(event, ev.CheckoutUpdated):
            return f"checkout:{event.checkout.token}"
        if isinstance(event, (ev.OrderPlaced, ev.OrderPaid)) and event.order.checkout_token:
            return f"checkout:{event.order.checkout_token}"
        return None

    def decide(self, event: Any, run: Run | None, facts: Facts, config: CheckoutRecoveryConfig, now: datetime) -> list[Command]:
        if isinstance(event, ev.CheckoutUpdated):
            return self._checkout(event.checkout, run, facts, config)
        if isinstance(event, (ev.OrderPlaced, ev.OrderPaid)) and run is not None:
            return self._converted(event.order, run, config)
        if isinstance(event, (ev.MessageReceived, ev.ButtonReplied)) and run is not None and run.status == "active":
            return [Update({"replied": True}), Wake(None), Finish("replied")]  # a person answers from here
        if isinstance(event, TimerFired) and run is not None and run.status == "active":
            return self._remind(run, config)
        return []

    def _checkout(self, c: ev.Checkout, run: Run | None, facts: Facts, config: CheckoutRecoveryConfig) -> list[Command]:
        if c.completed_at is not None:
            return [Wake(None), Finish("completed")] if run is not None and run.status == "active" else []
        abandoned_at = c.updated_at + timedelta(minutes=config.abandon_after_minutes)
        state = {"abandoned_at": abandoned_at.isoformat(), "recovery_url": c.recovery_url, "total": str(c.total),
                 "currency": c.currency, "product": c.line_items[0].title if c.line_items else None}
        if run is None:
            if facts.contact_id is None or not c.recovery_url:
                return []
            return [Start(f"checkout:{c.token}", facts.contact_id, {**state, "sent": 0}), Wake(abandoned_at + timedelta(minutes=config.ladder_minutes[0]))]
        if run.status == "active" and int(run.state.get("sent", 0)) == 0:
            return [Update(state), Wake(abandoned_at + timedelta(minutes=config.ladder_minutes[0]))]  # still shopping: push back
        return []

    def _remind(self, run: Run, config: CheckoutRecoveryConfig) -> list[Command]:
        sent = int(run.state.get("sent", 0))
        if sent >= len(config.ladder_minutes):
            return [Wake(None), Finish("no_conversion")]
        ctx = {"checkout.recovery_url": run.state.get("recovery_url"), "checkout.total": (run.state.get("total"), run.state.get("currency")),
               "reorder.product": run.state.get("product") or "your items"}
        if config.discount_code and sent + 1 >= config.discount_from_step:
            ctx["discount.code"] = config.discount_code
        abandoned_at = datetime.fromisoformat(run.state["abandoned_at"])
        commands: list[Command] = [Update({"sent": sent + 1, "last_sent_at": None}), Send(STEPS[sent], ctx)]
        if sent + 1 < len(config.ladder_minutes):
            commands.append(Wake(abandoned_at + timedelta(minutes=config.ladder_minutes[sent + 1])))
        else:
            commands.append(Wake(abandoned_at + timedelta(minutes=config.ladder_minutes[-1]) + timedelta(days=config.attribution_days)))
        return commands

    def _converted(self, order: ev.Order, run: Run, config: CheckoutRecoveryConfig) -> list[Command]:
        if run.state.get("order_id"):
            return []
        sent = int(run.state.get("sent", 0))
        abandoned_at = datetime.fromisoformat(run.state["abandoned_at"])
        window_end = abandoned_at + timedelta(minutes=config.ladder_minutes[-1]) + timedelta(days=config.attribution_days)
        recovered = sent > 0 and order.created_at <= window_end
        commands: list[Command] = [Update({"order_id": order.external_id, "recovered": recovered,
                                           "revenue": str(order.total) if recovered else "0", "currency": order.currency})]
        if run.status == "active":
            commands += [Wake(None), Finish("recovered" if recovered else "converted")]
        return commands
