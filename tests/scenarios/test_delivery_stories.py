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


# ---- "shipped": every parcel's link, told once ---------------------------------------------------

def test_shipped_skipped_for_want_of_its_link_goes_out_once_the_store_adds_the_link(sqlite_url, scenario, world):
    """Before: a courier Shopify does not know gives a number but no link; the "shipped" template that
    shows the link was skipped, and the link the store added later (then in_transit) changed nothing."""
    sc = start(scenario, sqlite_url)
    order = SHOPIFY.order(1, ASHA, sc.now, cod=False)
    SHOPIFY.place(sc, order)
    sc.later(hours=1)
    sc.shopify("fulfillments/create", parcel(7001, order, sc.now, None, "XYZ999", url=None, company="Other"))
    sc.later(minutes=30)
    assert shipped_links(sc) == []
    link = "https://courier.example/t/XYZ999"
    sc.shopify("fulfillments/update", parcel(7001, order, sc.now, None, "XYZ999", url=link, company="Other"))
    sc.later(minutes=30)
    sc.shopify("fulfillments/update", parcel(7001, order, sc.now, "in_transit", "XYZ999", url=link, company="Other"))
    sc.later(hours=1)
    assert shipped_links(sc) == [link]  # exactly one "shipped", with the link


def test_a_split_shipment_tells_each_parcels_link_and_delivered_only_once_both_arrived(sqlite_url, scenario, world):
    """Before: two parcels (fulfilments 7001, 7002): only AAA111's link was sent, and "delivered" went out
    when AAA111 arrived while BBB222 was still on its way; nothing at all when BBB222 arrived."""
    sc = start(scenario, sqlite_url)
    order = SHOPIFY.order(1, ASHA, sc.now, cod=False)
    SHOPIFY.place(sc, order)
    sc.later(hours=1)
    sc.shopify("fulfillments/create", parcel(7001, order, sc.now, "in_transit", "AAA111"))
    sc.shopify("orders/updated", {**order, "fulfillment_status": "partial", "updated_at": p.iso(sc.now)})
    sc.later(hours=1)
    sc.shopify("fulfillments/create", parcel(7002, order, sc.now, "in_transit", "BBB222"))
    sc.shopify("orders/updated", {**order, "fulfillment_status": "fulfilled", "updated_at": p.iso(sc.now)})
    sc.later(days=1)
    sc.shopify("fulfillments/update", parcel(7001, order, sc.now, "delivered", "AAA111"))
    sc.later(hours=1)
    assert shipped_links(sc) == ["https://track.example/AAA111", "https://track.example/BBB222"]
    assert "delivered_v1" not in sc.templates_to(ASHA)  # BBB222 is still on its way
    sc.later(days=2)
    sc.shopify("fulfillments/update", parcel(7002, order, sc.now, "delivered", "BBB222"), times=2)
    sc.later(hours=1)
    assert sc.templates_to(ASHA).count("delivered_v1") == 1
    assert sc.templates_to(ASHA)[-1] == "delivered_v1"


def test_a_corrected_tracking_number_reaches_the_customer_once(sqlite_url, scenario, world):
    """Before: the store fixed a typo in the number (same fulfilment); she kept only the dead TYPO111 link."""
    sc = start(scenario, sqlite_url)
    order = SHOPIFY.order(1, ASHA, sc.now, cod=False)
    SHOPIFY.place(sc, order)
    sc.later(hours=1)
    sc.shopify("fulfillments/create", parcel(7001, order, sc.now, "in_transit", "TYPO111"))
    sc.later(minutes=20)
    sc.shopify("fulfillments/update", parcel(7001, order, sc.now, "in_transit", "RIGHT222"), times=2)
    sc.later(minutes=20)
    sc.shopify("fulfillments/update", parcel(7001, order, sc.now, "in_transit", "RIGHT222"))
    sc.later(minutes=20)
    assert shipped_links(sc) == ["https://track.example/TYPO111", "https://track.example/RIGHT222"]


# ---- a failed delivery, then delivered after all ---------------------------------------------------

def test_the_ndr_case_hears_of_the_delivery_and_a_late_answer_writes_no_note(sqlite_url, scenario, world):
    """Before: the case kept saying "call the customer to rearrange" after the parcel was delivered, and
    her "Update address" tap two days after delivery wrote a failed-delivery note to the Shopify order."""
    sc = start(scenario, sqlite_url)
    order = SHOPIFY.order(1, ASHA, sc.now, cod=False)
    SHOPIFY.place(sc, order)
    sc.later(hours=1)
    sc.shopify("fulfillments/create", parcel(7001, order, sc.now, "in_transit", "AAA111"))
    sc.later(days=1)
    sc.shopify("fulfillments/update", parcel(7001, order, sc.now, "attempted_delivery", "AAA111"))
    sc.later(hours=1)
    ndr = sc.last_to(ASHA, "ndr_v1")
    sc.later(days=1)
    sc.shopify("fulfillments/update", parcel(7001, order, sc.now, "out_for_delivery", "AAA111"))
    sc.later(hours=2)
    sc.shopify("fulfillments/update", parcel(7001, order, sc.now, "delivered", "AAA111"))
    sc.later(hours=1)
    told = [n[1].get("text", "") for n in world.notifications]
    assert any("#5001 was delivered after the failed attempt: no call needed" in t for t in told), told
    [case] = sc.handoffs()
    assert case["status"] == "open"  # the same case, told; a person closes it
    sc.later(days=2)
    sc.tap(ASHA, "ndr_update_address", ndr)
    sc.later(hours=1)
    assert [c for c in world.shopify if c.operation == "orderUpdate"] == []  # no note written to the order
    told = [n[1].get("text", "") for n in world.notifications]
    assert "it has been delivered since, so nothing was written to the order" in told[-1]


def test_a_failed_parcel_delivered_after_staff_closed_its_case_opens_no_new_case(sqlite_url, scenario, world):
    """Staff rang her and closed the failed-delivery case; the parcel is delivered the next day. That is news
    for an open case only: no second case "delivered after the failed attempt" for anyone to close."""
    from tests.conftest import SECRETS

    sc = start(scenario, sqlite_url)
    order = SHOPIFY.order(1, ASHA, sc.now, cod=False)
    SHOPIFY.place(sc, order)
    sc.later(hours=1)
    sc.shopify("fulfillments/create", parcel(7001, order, sc.now, "in_transit", "AAA111"))
    sc.later(days=1)
    sc.shopify("fulfillments/update", parcel(7001, order, sc.now, "attempted_delivery", "AAA111"))
    sc.later(hours=1)
    [case] = sc.handoffs(status="open")
    closed = sc.client.post(f"/api/stores/{sc.key}/handoffs/{case['id']}/close", json={"by": "Ravi", "resolution": "rang her"},
                            headers={"Authorization": f"Bearer {SECRETS['admin']}"})
    assert closed.status_code == 200, closed.text
    told_before = len(world.notifications)
    sc.later(days=1)
    sc.shopify("fulfillments/update", parcel(7001, order, sc.now, "delivered", "AAA111"))
    sc.later(hours=1)
    assert sc.handoffs(status="open") == []
    assert len(world.notifications) == told_before


# ---- quiet hours: the current news only ----------------------------------------------------------

def test_after_a_night_of_updates_held_for_quiet_hours_only_the_latest_goes_out(sqlite_url, scenario, world):
    """Before (utility held in quiet hours): shipped at 22:00, out for delivery at 07:00, delivered at
    08:30: at 09:00 she got "shipped", "out for delivery" and "delivered" together."""
    sc = start(scenario, sqlite_url, policy=NIGHT_HOLDS_UTILITY)
    order = SHOPIFY.order(1, ASHA, sc.now, cod=False)
    SHOPIFY.place(sc, order)
    sc.at(ist(0, 22), step=timedelta(minutes=30))
    sc.shopify("fulfillments/create", parcel(7001, order, sc.now, "in_transit", "AAA111"))
    sc.at(ist(1, 7), step=timedelta(minutes=30))
    sc.shopify("fulfillments/update", parcel(7001, order, sc.now, "out_for_delivery", "AAA111"))
    sc.at(ist(1, 8, 30), step=timedelta(minutes=30))
    sc.shopify("fulfillments/update", parcel(7001, order, sc.now, "delivered", "AAA111"))
    sc.later(minutes=1)
    assert sc.templates_to(ASHA) == ["order_thanks_v1"]  # thanked by day; the rest held
    sc.at(ist(1, 9, 30), step=timedelta(minutes=15))
    assert sc.templates_to(ASHA) == ["order_thanks_v1", "delivered_v1"]


def test_out_for_delivery_after_a_daytime_shipped_still_goes_out(sqlite_url, scenario, world):
    """What was already sent is not touched, and the step being sent is not withdrawn with the old ones."""
    sc = start(scenario, sqlite_url, policy=NIGHT_HOLDS_UTILITY)
    order = SHOPIFY.order(1, ASHA, sc.now, cod=False)
    SHOPIFY.place(sc, order)
    sc.later(hours=1)
    sc.shopify("fulfillments/create", parcel(7001, order, sc.now, "in_transit", "AAA111"))
    sc.later(hours=1)
    sc.shopify("fulfillments/update", parcel(7001, order, sc.now, "out_for_delivery", "AAA111"))
    sc.later(minutes=10)
    assert sc.templates_to(ASHA) == ["order_thanks_v1", "shipped_track_v1", "ofd_v1"]


def test_a_second_woocommerce_tracking_item_gets_its_own_shipped(sqlite_url, scenario, world):
    """Before: WooCommerce kept only the last Shipment Tracking item under the order's one fulfilment, so a
    second parcel's item replaced the first silently and she never got its link."""
    from tests.scenarios.stores import WOOCOMMERCE
    sc = scenario(sqlite_url, "woocommerce", journeys=JOURNEYS, store_settings={"templates": DELIVERY_TEMPLATES})
    order = WOOCOMMERCE.order(1, ASHA, sc.now, cod=False)
    WOOCOMMERCE.place(sc, order)
    sc.later(hours=1)

    def item(number: str) -> dict[str, str]:
        return {"tracking_provider": "", "custom_tracking_provider": "Delhivery", "tracking_number": number,
                "custom_tracking_link": f"https://track.example/{number}"}

    def shipped(*numbers: str) -> dict[str, Any]:
        meta = {"id": 99, "key": "_wc_shipment_tracking_items", "value": [item(n) for n in numbers]}
        return {**order, "status": "completed", "date_modified_gmt": p.gmt(sc.now), "date_modified": p.gmt(sc.now),
                "meta_data": [*order.get("meta_data", []), meta]}

    sc.woo("order.updated", shipped("DL1"))
    sc.later(hours=1)
    sc.woo("order.updated", shipped("DL1", "DL2"))
    sc.later(hours=1)
    assert [s.params[1] for s in sc.sent(ASHA) if s.template == "shipped_track_v1"] == [
        "https://track.example/DL1", "https://track.example/DL2"]
