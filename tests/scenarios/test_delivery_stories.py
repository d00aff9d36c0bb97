"""Delivery updates and the order's thanks, end to end over HTTP (Shopify webhooks, the fake WhatsApp).

What the customer's phone receives is the assertion: nothing after a cancel, "shipped" with the
link of every parcel (and of a corrected number), "delivered" once all of them have arrived, and
only the current news after quiet hours; what the store and the case's owner hear is the other.
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import Any
from zoneinfo import ZoneInfo

from tests.scenarios import payloads as p
from tests.scenarios.harness import TEMPLATES
from tests.scenarios.stores import SHOPIFY

ASHA = "+919876543210"
IST = ZoneInfo("Asia/Kolkata")
JOURNEYS = {"order_confirmation": {}, "delivery": {}}
NDR_BUTTONS = [{"type": "quick_reply", "text": "Reschedule", "payload": "ndr_reschedule"},
               {"type": "quick_reply", "text": "Update address", "payload": "ndr_update_address"},
               {"type": "quick_reply", "text": "Cancel", "payload": "ndr_cancel"}]
# the harness's templates, with the shipped message showing the tracking link and the later steps bound
DELIVERY_TEMPLATES = [t for t in TEMPLATES if t["step"] != "delivery.shipped"] + [
    {"step": "delivery.shipped", "name": "shipped_track_v1", "category": "utility", "body_text": "Order {{1}} shipped: {{2}}",
     "body": ["order.name", "fulfillment.tracking_url"]},
    {"step": "delivery.out_for_delivery", "name": "ofd_v1", "category": "utility", "body_text": "Order {{1}} is out", "body": ["order.name"]},
    {"step": "delivery.delivered", "name": "delivered_v1", "category": "utility", "body_text": "Order {{1}} delivered", "body": ["order.name"]},
    {"step": "delivery.failed", "name": "ndr_v1", "category": "utility", "body_text": "Order {{1}}: delivery failed", "body": ["order.name"],
     "buttons": NDR_BUTTONS},
]
NIGHT_HOLDS_UTILITY = {"quiet_hours": "21:00-09:00", "utility_in_quiet_hours": False}


def start(scenario: Any, sqlite_url: str, **kw: Any) -> Any:
    return scenario(sqlite_url, "shopify", journeys=JOURNEYS, store_settings={"templates": DELIVERY_TEMPLATES}, **kw)


def parcel(fid: int, order: dict[str, Any], at: datetime, status: str | None, number: str | None,
           url: str | None = "", company: str | None = "Delhivery") -> dict[str, Any]:
    """Shopify's fulfilment ``fid`` of ``order`` with one tracking number (``url`` "": the courier's usual link)."""
    link = f"https://track.example/{number}" if url == "" else url
    f = p.shopify_fulfillment(fid, order["id"], at, shipment_status=status)
    f.update(tracking_company=company, tracking_number=number, tracking_numbers=[number] if number else [],
             tracking_url=link, tracking_urls=[link] if link else [])
    return f


def ist(day: int, hour: int, minute: int = 0) -> datetime:
    """That time in Kolkata, ``day`` days after the scenario's first day, in UTC."""
    from tests.scenarios.harness import T0
    midnight = datetime.combine(T0.astimezone(IST).date(), datetime.min.time(), IST)
    return (midnight + timedelta(days=day, hours=hour, minutes=minute)).astimezone(timezone.utc)


def shipped_links(sc: Any) -> list[str]:
    return [s.params[1] for s in sc.sent(ASHA) if s.template == "shipped_track_v1"]


# ---- a cancel withdraws what still waits ---------------------------------------------------------

def test_the_thanks_waiting_behind_a_whatsapp_outage_is_not_sent_after_the_order_is_cancelled(sqlite_url, scenario, world):
    """Before: WhatsApp down, the order placed and cancelled 10 minutes later: after the outage she
    still got "Thanks for order #5001"."""
    sc = start(scenario, sqlite_url)
    world.whatsapp_down = True
    order = SHOPIFY.order(1, ASHA, sc.now, cod=False)
    SHOPIFY.place(sc, order)
    sc.later(minutes=10)
    SHOPIFY.cancelled_echo(sc, order)
    sc.later(minutes=10)
    world.whatsapp_down = False
    sc.later(hours=2, step=timedelta(minutes=5))
    assert sc.templates_to(ASHA) == []


def test_the_thanks_and_shipped_held_for_the_night_are_not_sent_after_the_order_is_cancelled(sqlite_url, scenario, world):
    """Before: placed and shipped at night (utility held until 09:00), cancelled at 07:00: at 09:00
    she got the thanks and "shipped" for an order that no longer stands."""
    sc = start(scenario, sqlite_url, policy=NIGHT_HOLDS_UTILITY)
    sc.at(ist(0, 23))
    order = SHOPIFY.order(1, ASHA, sc.now, cod=False)
    SHOPIFY.place(sc, order)
    sc.later(minutes=30)
    sc.shopify("fulfillments/create", parcel(7001, order, sc.now, "in_transit", "AAA111"))
    sc.at(ist(1, 7), step=timedelta(hours=1))
    assert sc.templates_to(ASHA) == []  # both held for the morning
    SHOPIFY.cancelled_echo(sc, order)
    sc.at(ist(1, 10), step=timedelta(minutes=30))
    assert sc.templates_to(ASHA) == []
