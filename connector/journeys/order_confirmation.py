"""Order confirmation (utility): one message when a prepaid order is placed."""

from __future__ import annotations

from datetime import datetime
from typing import Any, ClassVar

from connector import events as ev
from connector.journeys._common import order_context
from connector.journeys.engine import Command, Facts, Finish, JourneyConfig, Run, Send, Start


class OrderConfirmationConfig(JourneyConfig):
    pass


class OrderConfirmation:
    name: ClassVar[str] = "order_confirmation"
    config_model: ClassVar[type[JourneyConfig]] = OrderConfirmationConfig

    def subject(self, event: Any, facts: Facts) -> str | None:
        if isinstance(event, ev.OrderPlaced) and facts.order and not facts.order.is_cod:
            return f"order:{event.order.external_id}"
        return None

    def decide(self, event: Any, run: Run | None, facts: Facts, config: OrderConfirmationConfig, now: datetime) -> list[Command]:
        if run is not None or facts.contact_id is None or facts.order is None or facts.order.cancelled:
            return []
        return [Start(f"order:{facts.order.external_id}", facts.contact_id), Send("sent", order_context(facts)), Finish("sent", skip_waiting=False)]
