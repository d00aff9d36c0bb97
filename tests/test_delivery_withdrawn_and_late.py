"""Delivery updates: a message that became wrong before it went out, and an answer that came too late.

Told end to end with the journey scenarios' harness: signed Shopify webhooks in over HTTP, the real
worker rounds on a virtual clock, and what reached her phone, the order's notes and the case's owner.

- A "shipped" held for the night (quiet hours) whose tracking the store then called off (a fulfilment
  cancelled and shipped again under a new number, a mistyped number corrected) is withdrawn: she gets
  the link that works, not a dead one beside it; a template that shows no tracking is not sent twice.
- A failed-delivery question held for the night is withdrawn once the courier is out again.
- An answer to the question after the order was cancelled or refunded writes nothing to the order.
- The failed-delivery case names the parcel that failed (courier and number), as the tracking-failure
  case does: the desk rearranges it with the courier by that number.
- An order partly shipped whose remaining part the store drops (a refunded or removed line) is
  complete once its parcels have arrived: she hears "delivered".
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from tests.scenarios import payloads as p
from tests.scenarios.conftest import _world_server, scenario, sqlite_url, world  # noqa: F401  (the scenarios' fixtures)
from tests.scenarios.stores import SHOPIFY
from tests.scenarios.test_delivery_stories import ASHA, JOURNEYS, NIGHT_HOLDS_UTILITY, ist, parcel, shipped_links, start

LINK = "https://track.example/"


def _notes(world: Any) -> list[str]:
    """The notes written to the Shopify order."""
    return [c.variables["input"]["note"] for c in world.shopify
            if c.operation == "orderUpdate" and "note" in (c.variables.get("input") or {})]


def _told(world: Any) -> list[str]:
    """What the case's owner was told, in order."""
    return [n[1].get("text", "") for n in world.notifications]


def _packages(fid: int, order: dict[str, Any], at: Any, numbers: list[str], status: str = "in_transit") -> dict[str, Any]:
    """One Shopify fulfilment with several packages (multi-package tracking), each with its link; with one
    number it is ``parcel``'s fulfilment to the letter."""
    f = parcel(fid, order, at, status, numbers[0])
    f.update(tracking_numbers=numbers, tracking_urls=[LINK + n for n in numbers])
    return f


def _shipped(sc: Any, *numbers: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """Asha's paid order (thanked), shipped an hour later as fulfilment 7001 in transit under ``numbers``
    (one package each; AAA111 when none is named). Returns the order and the fulfilment."""
    order = SHOPIFY.order(1, ASHA, sc.now, cod=False)
    SHOPIFY.place(sc, order)
    sc.later(hours=1)
    f = _packages(7001, order, sc.now, list(numbers or ["AAA111"]))
    sc.shopify("fulfillments/create", f)
    return order, f


def _shipped_at_night(sc: Any, *numbers: str, status: str = "in_transit") -> tuple[dict[str, Any], dict[str, Any]]:
    """Asha's paid order (thanked by day), shipped at 22:00 in Kolkata as fulfilment 7001 under ``numbers``
    (one package each), half an hour on: its "shipped" is held for the morning."""
    order = SHOPIFY.order(1, ASHA, sc.now, cod=False)
    SHOPIFY.place(sc, order)
    sc.at(ist(0, 22), step=timedelta(minutes=30))
    f = _packages(7001, order, sc.now, list(numbers), status)
    sc.shopify("fulfillments/create", f)
    sc.later(minutes=30)
    return order, f


def _partly_shipped_and_arrived(sc: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    """``_shipped``, the order's update saying "partial" (a line still to ship); a day later the parcel is
    delivered. Returns the order and the delivered fulfilment."""
    order, f = _shipped(sc)
    sc.shopify("orders/updated", {**order, "fulfillment_status": "partial", "updated_at": p.iso(sc.now), "fulfillments": [f]})
    sc.later(days=1)
    delivered = parcel(7001, order, sc.now, "delivered", "AAA111")
    sc.shopify("fulfillments/update", delivered)
    return order, delivered


def _failed(sc: Any) -> tuple[dict[str, Any], Any]:
    """Asha's paid order ships; a day later the courier cannot deliver it. Returns the order and her question."""
    order, _ = _shipped(sc)
    sc.later(days=1)
    sc.shopify("fulfillments/update", parcel(7001, order, sc.now, "attempted_delivery", "AAA111"))
    sc.later(hours=1)
    return order, sc.last_to(ASHA, "ndr_v1")


# ---- withdrawn before it went out ----------------------------------------------------------------

def test_a_fulfilment_cancelled_and_shipped_again_at_night_tells_only_the_new_link(sqlite_url, scenario, world):
    """Before: shipped at 22:00 as AAA111 (held for the night), the fulfilment cancelled at 22:30 and
    shipped again as BBB222: at 09:00 she got AAA111's dead link and BBB222's together."""
    sc = start(scenario, sqlite_url, policy=NIGHT_HOLDS_UTILITY)
    order, f = _shipped_at_night(sc, "AAA111")
    sc.shopify("fulfillments/update", {**f, "status": "cancelled", "updated_at": p.iso(sc.now)})
    sc.later(minutes=30)
    sc.shopify("fulfillments/create", parcel(7002, order, sc.now, "in_transit", "BBB222"))
    sc.at(ist(1, 10), step=timedelta(minutes=30))
    assert shipped_links(sc) == [LINK + "BBB222"]


def test_a_number_corrected_at_night_tells_only_the_corrected_link(sqlite_url, scenario, world):
    """Before: TYPO111 at 22:00, corrected to RIGHT222 at 22:30 (same fulfilment): both links at 09:00."""
    sc = start(scenario, sqlite_url, policy=NIGHT_HOLDS_UTILITY)
    order, _ = _shipped_at_night(sc, "TYPO111")
    sc.shopify("fulfillments/update", parcel(7001, order, sc.now, "in_transit", "RIGHT222"))
    sc.at(ist(1, 10), step=timedelta(minutes=30))
    assert shipped_links(sc) == [LINK + "RIGHT222"]


def test_a_corrected_number_does_not_repeat_a_shipped_message_that_shows_no_tracking(sqlite_url, scenario, world):
    """Before: the store's "shipped" says only "Order #5001 is on its way"; the store fixed a typo in the
    number and she got that sentence a second time, word for word."""
    sc = scenario(sqlite_url, "shopify", journeys=JOURNEYS)  # the harness's shipped_v1 names only the order
    order, _ = _shipped(sc, "TYPO111")
    sc.later(minutes=20)
    sc.shopify("fulfillments/update", parcel(7001, order, sc.now, "in_transit", "RIGHT222"))
    sc.later(minutes=20)
    assert sc.templates_to(ASHA) == ["order_thanks_v1", "shipped_v1"]


def test_a_number_corrected_at_night_under_a_template_showing_no_tracking_still_says_shipped(sqlite_url, scenario, world):
    """The correction changes nothing such a message shows: the one held for the morning goes out, once."""
    sc = scenario(sqlite_url, "shopify", journeys=JOURNEYS, policy=NIGHT_HOLDS_UTILITY)
    order, _ = _shipped_at_night(sc, "TYPO111")
    sc.shopify("fulfillments/update", parcel(7001, order, sc.now, "in_transit", "RIGHT222"))
    sc.at(ist(1, 10), step=timedelta(minutes=30))
    assert sc.templates_to(ASHA) == ["order_thanks_v1", "shipped_v1"]


def test_a_failed_delivery_question_held_for_the_night_is_not_sent_once_the_courier_is_out_again(sqlite_url, scenario, world):
    """Before: the courier failed at 22:00 (the question held for quiet hours) and was out for delivery
    again at 08:00: at 09:00 she was asked to reschedule a delivery already on the doorstep."""
    sc = start(scenario, sqlite_url, policy=NIGHT_HOLDS_UTILITY)
    order, _ = _shipped(sc)
    sc.later(hours=1)
    sc.shopify("fulfillments/update", parcel(7001, order, sc.now, "out_for_delivery", "AAA111"))
    sc.at(ist(0, 22), step=timedelta(minutes=30))
    sc.shopify("fulfillments/update", parcel(7001, order, sc.now, "attempted_delivery", "AAA111"))
    sc.at(ist(1, 8), step=timedelta(minutes=30))
    sc.shopify("fulfillments/update", parcel(7001, order, sc.now, "out_for_delivery", "AAA111"))
    sc.at(ist(1, 10), step=timedelta(minutes=30))
    assert sc.templates_to(ASHA) == ["order_thanks_v1", "shipped_track_v1", "ofd_v1"]
    [case] = sc.handoffs(status="open")  # the desk still knows of the failed attempt
    assert "delivery failed" in case["reason"]


# ---- the case names the parcel ---------------------------------------------------------------------

def test_the_failed_delivery_case_names_the_parcel_that_failed(sqlite_url, scenario, world):
    """Before: two parcels (AAA111, BBB222); BBB222's delivery failed and the case said only "delivery
    failed for #5001; call the customer to rearrange": the desk could not tell which parcel to rebook."""
    sc = start(scenario, sqlite_url)
    order, _ = _shipped(sc)
    sc.shopify("fulfillments/create", parcel(7002, order, sc.now, "in_transit", "BBB222"))
    sc.later(days=1)
    sc.shopify("fulfillments/update", parcel(7002, order, sc.now, "attempted_delivery", "BBB222"))
    sc.later(hours=1)
    [case] = sc.handoffs(status="open")
    assert "Delhivery BBB222" in case["reason"] and "AAA111" not in case["reason"]
    assert "Delhivery BBB222" in _told(world)[-1]


# ---- an answer after the order was called off --------------------------------------------------------

def test_a_reschedule_tapped_after_the_order_was_cancelled_writes_no_note_and_the_case_hears_why(sqlite_url, scenario, world):
    """Before: the parcel went back, the store cancelled the order; days later she tapped Reschedule and
    "Failed delivery: the customer asked on WhatsApp to reschedule" was written to the cancelled order."""
    sc = start(scenario, sqlite_url)
    order, ndr = _failed(sc)
    sc.later(days=3)
    SHOPIFY.cancelled_echo(sc, order)
    sc.later(hours=1)
    sc.tap(ASHA, "ndr_reschedule", ndr, times=2)
    sc.later(hours=1)
    assert _notes(world) == []
    told = _told(world)
    assert "customer asked to reschedule the failed delivery of #5001; the order was cancelled since" in told[-1]
    assert sum("asked to reschedule" in t for t in told) == 1


def test_a_cancel_tapped_after_the_order_was_refunded_reaches_the_case_without_a_note(sqlite_url, scenario, world):
    """The parcel came back and the store refunded the order; her Cancel two days later is news for the
    case (a person confirms it to her), and an address update then is no note for the courier desk."""
    sc = start(scenario, sqlite_url)
    order, ndr = _failed(sc)
    sc.later(days=2)
    sc.shopify("orders/updated", {**order, "financial_status": "refunded", "updated_at": p.iso(sc.now)})
    sc.later(hours=1)
    sc.tap(ASHA, "ndr_update_address", ndr)
    sc.later(hours=1)
    sc.tap(ASHA, "ndr_cancel", ndr)
    sc.later(hours=1)
    assert _notes(world) == []
    told = _told(world)
    assert "customer asked to cancel #5001" in told[-1] and "the order was refunded since" in told[-1]


# ---- the rest of a partly shipped order dropped ----------------------------------------------------

def test_a_partly_shipped_order_whose_rest_is_dropped_says_delivered_once_its_parcel_arrived(sqlite_url, scenario, world):
    """Before: one parcel of two lines shipped (order "partial") and arrived; the store then refunded
    the line it could not ship, so the order became "fulfilled" with no new parcel: "delivered" never
    came, and the run stayed open for ever."""
    sc = start(scenario, sqlite_url)
    order, delivered = _partly_shipped_and_arrived(sc)
    sc.later(hours=1)
    assert "delivered_v1" not in sc.templates_to(ASHA)  # the rest is still to ship
    sc.later(days=1)
    rest_dropped = {**order, "fulfillment_status": "fulfilled", "updated_at": p.iso(sc.now), "fulfillments": [delivered]}
    sc.shopify("orders/updated", rest_dropped, times=2)
    sc.later(hours=1)
    assert sc.templates_to(ASHA) == ["order_thanks_v1", "shipped_track_v1", "delivered_v1"]
    assert [j["status"] for j in sc.contact(ASHA)["journeys"] if j["journey"] == "delivery"] == ["finished"]
