"""Journeys as a third party would publish them (``storeloop.journeys`` entry points), for tests/test_journey_plugins.py."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any, ClassVar

from pydantic import Field

from connector import events as ev
from connector.journeys.engine import Command, Facts, Finish, JourneyConfig, MoveStage, Run, Send, Start, TimerFired, Update, Wake


class LoyaltyThanksConfig(JourneyConfig):
    points_per_order: int = Field(10, ge=0)


class LoyaltyThanks:
    """A plugin journey: one "you earned points" message per prepaid order."""

    name: ClassVar[str] = "loyalty_thanks"
    config_model: ClassVar[type[JourneyConfig]] = LoyaltyThanksConfig

    def subject(self, event: Any, facts: Facts) -> str | None:
        if isinstance(event, ev.OrderPlaced) and not event.order.is_cod:
            return f"order:{event.order.external_id}"
        return None

    def decide(self, event: Any, run: Run | None, facts: Facts, config: LoyaltyThanksConfig, now: datetime) -> list[Command]:
        if run is not None or facts.contact_id is None or not isinstance(event, ev.OrderPlaced):
            return []
        return [Start(f"order:{event.order.external_id}", facts.contact_id, {"points": config.points_per_order}),
                Send("points", {"customer.first_name": facts.first_name}), Finish("sent", skip_waiting=False)]


class Impostor(LoyaltyThanks):
    """Takes a built-in journey's name: must not replace it."""

    name: ClassVar[str] = "order_confirmation"


class SecondLoyalty(LoyaltyThanks):
    """Another package's journey under a name a plugin already has."""


class FailsToStart(LoyaltyThanks):
    name: ClassVar[str] = "fails_to_start"

    def __init__(self) -> None:
        raise RuntimeError("no licence key")


class NotAJourney:
    name: ClassVar[str] = "not_a_journey"
    config_model: ClassVar[type[JourneyConfig]] = JourneyConfig


class Exploding(LoyaltyThanks):
    """A plugin with a bug that shows on one order only (for the processor's all-or-nothing rows)."""

    name: ClassVar[str] = "exploding"

    def decide(self, event: Any, run: Run | None, facts: Facts, config: LoyaltyThanksConfig, now: datetime) -> list[Command]:
        if isinstance(event, ev.OrderPlaced) and event.order.external_id == "1002":
            raise RuntimeError("plugin bug on order 1002")
        return []


class TimerBomb(LoyaltyThanks):
    """Thanks an hour after the order; its timer has a bug that shows on order 1002 only."""

    name: ClassVar[str] = "timer_bomb"

    def decide(self, event: Any, run: Run | None, facts: Facts, config: LoyaltyThanksConfig, now: datetime) -> list[Command]:
        if isinstance(event, ev.OrderPlaced) and run is None and facts.contact_id is not None:
            return [Start(f"order:{event.order.external_id}", facts.contact_id, {}), Wake(now + timedelta(hours=1))]
        if isinstance(event, TimerFired) and run is not None:
            if run.subject == "order:1002":
                raise RuntimeError("plugin bug in the timer of order 1002")
            return [Send("points", {"customer.first_name": facts.first_name}), Finish("sent")]
        return []


class TimerLostStage(LoyaltyThanks):
    """Thanks an hour after the order; on order 1002 its timer moves the customer to a stage it looked
    up and did not find (None), which the database refuses (the stage is required) only when the
    timer batch's held writes are flushed."""

    name: ClassVar[str] = "timer_lost_stage"

    def decide(self, event: Any, run: Run | None, facts: Facts, config: LoyaltyThanksConfig, now: datetime) -> list[Command]:
        if isinstance(event, ev.OrderPlaced) and run is None and facts.contact_id is not None:
            return [Start(f"order:{event.order.external_id}", facts.contact_id, {}), Wake(now + timedelta(hours=1))]
        if isinstance(event, TimerFired) and run is not None:
            if run.subject == "order:1002":
                return [MoveStage({"vip": "retention"}.get(str(facts.extra.get("tier")))), Wake(now + timedelta(hours=1))]  # type: ignore[arg-type]
            return [Send("points", {"customer.first_name": facts.first_name}), Finish("sent")]
        return []


class TimerOddState(LoyaltyThanks):
    """Thanks an hour after the order; on order 1002 its timer keeps a value no JSON column can store
    (a set), which raises while the run's update is applied. ``broken`` off: the bug is fixed."""

    name: ClassVar[str] = "timer_odd_state"
    broken: ClassVar[bool] = True

    def decide(self, event: Any, run: Run | None, facts: Facts, config: LoyaltyThanksConfig, now: datetime) -> list[Command]:
        if isinstance(event, ev.OrderPlaced) and run is None and facts.contact_id is not None:
            return [Start(f"order:{event.order.external_id}", facts.contact_id, {"points": 10}), Wake(now + timedelta(hours=1))]
        if isinstance(event, TimerFired) and run is not None:
            if run.subject == "order:1002" and type(self).broken:
                return [Update({"seen": {1, 2}}), Wake(now + timedelta(hours=1))]
            return [Send("points", {"customer.first_name": facts.first_name}), Update({"thanked": True}), Finish("sent")]
        return []


class TimerThenWeek(TimerOddState):
    """As ``TimerOddState``; besides, the order's payment (``orders/updated``, paid) plans the thanks a
    week later: an event moving a parked run's timer."""

    name: ClassVar[str] = "timer_then_week"

    def subject(self, event: Any, facts: Facts) -> str | None:
        if isinstance(event, ev.OrderUpdated):
            return f"order:{event.order.external_id}"
        return super().subject(event, facts)

    def decide(self, event: Any, run: Run | None, facts: Facts, config: LoyaltyThanksConfig, now: datetime) -> list[Command]:
        if isinstance(event, ev.OrderUpdated) and run is not None and not run.state.get("paid"):
            return [Update({"paid": True}), Wake(now + timedelta(days=7))]
        return super().decide(event, run, facts, config, now)


class WindowBomb(LoyaltyThanks):
    """Hears reorder windows opening (a "reorder bonus" plugin); its bug shows on order 7001's window
    only. ``broken`` off: the bug is fixed."""

    name: ClassVar[str] = "window_bomb"
    broken: ClassVar[bool] = True

    def subject(self, event: Any, facts: Facts) -> str | None:
        return f"window:{event.window_id}" if isinstance(event, ev.ReorderWindowOpened) else None

    def decide(self, event: Any, run: Run | None, facts: Facts, config: LoyaltyThanksConfig, now: datetime) -> list[Command]:
        if isinstance(event, ev.ReorderWindowOpened) and event.order_external_id == "7001" and type(self).broken:
            raise RuntimeError("plugin bug on the window of order 7001")
        return []
