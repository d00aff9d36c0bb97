"""Delivery updates (utility): shipped, out for delivery, delivered; a failed delivery hands off.

Each step is sent at most once per order (the outbox key is journey, step, subject), so
repeated or reordered fulfilment webhooks never repeat a message.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, ClassVar

from pydantic import Field

from connector import events as ev
from connector.journeys._common import order_context
from connector.journeys.engine import Command, Facts, Handoff, JourneyConfig, Run, Send, Start, Update

STEP_FOR_STATUS = {
    "in_transit": "shipped",
    "confirmed": "shipped",
    "label_printed": "shipped",
    "label_purchased": "shipped",
    "carrier_picked_up": "shipped",
    "none": "shipped",
    "out_for_delivery": "out_for_delivery",
    "delivered": "delivered",
    "attempted_delivery": "failed",
    "failure": "failed",
}


class DeliveryUpdatesConfig(JourneyConfig):
    steps: tuple[str, ...] = Field(("shipped", "out_for_delivery", "delivered", "failed"), description="which updates to send")
    handoff_on_failure: bool = True


class DeliveryUpdates:
    name: ClassVar[str] = "delivery"
    config_model: ClassVar[type[JourneyConfig]] = DeliveryUpdatesConfig

    def subject(self, event: Any, facts: Facts) -> str | None:
        if isinstance(event, ev.FulfillmentUpdated):
            return f"order:{event.fulfillment.order_external_id}"
        return None

    def decide(self, event: Any, run: Run | None, facts: Facts, config: DeliveryUpdatesConfig, now: datetime) -> list[Command]:
        if not isinstance(event, ev.FulfillmentUpdated) or facts.order is None or facts.order.cancelled:
            return []
        f = event.fulfillment
        if f.status in ("cancelled", "error", "failure") and f.shipment_status.value == "none":
            return []
        step = STEP_FOR_STATUS.get(f.shipment_status.value)
        if step is None or step not in config.steps:
            return []
        done = set((run.state.get("sent") or []) if run else [])
        if step in done or (step == "shipped" and done & {"out_for_delivery", "delivered"}):
            return []  # already told, or a late "shipped" after later news
        commands: list[Command] = []
        if run is None:
            if facts.contact_id is None:
                return []
            commands.append(Start(f"order:{facts.order.external_id}", facts.contact_id, {"sent": []}))
        commands += [Update({"sent": sorted(done | {step}), "last_status": f.shipment_status.value}), Send(step, order_context(facts))]
        if step == "failed" and config.handoff_on_failure:
            commands.append(Handoff(f"delivery failed ({f.shipment_status.value}); call the customer to rearrange"))
        return commands
