"""Delivery updates: "delivered" waits for every parcel the order lists.

Told end to end with the journey scenarios' harness (signed Shopify webhooks over HTTP, the real worker
rounds on a virtual clock, what reached her phone):

- The store ships the rest of a partly shipped order: Shopify's orders/updated ("fulfilled", listing the
  new parcel) is heard before the parcel's own webhook. "Delivered" waits for that parcel too.
"""

from __future__ import annotations

from tests.scenarios import payloads as p
from tests.scenarios.conftest import _world_server, scenario, sqlite_url, world  # noqa: F401  (the scenarios' fixtures)
from tests.scenarios.stores import SHOPIFY
from tests.scenarios.test_delivery_stories import ASHA, parcel, shipped_links, start

LINK = "https://track.example/"


def test_the_rest_shipped_later_is_told_delivered_once_both_parcels_have_arrived(sqlite_url, scenario, world):
    """Before: "delivered" went out when the order's update listed the second parcel (its first parcel had
    arrived), and the second parcel's arrival was never told."""
    sc = start(scenario, sqlite_url)
    order = SHOPIFY.order(1, ASHA, sc.now, cod=False)
    SHOPIFY.place(sc, order)
    sc.later(hours=1)
    f1 = parcel(7001, order, sc.now, "in_transit", "AAA111")
    sc.shopify("fulfillments/create", f1)
    sc.shopify("orders/updated", {**order, "fulfillment_status": "partial", "updated_at": p.iso(sc.now), "fulfillments": [f1]})
    sc.later(days=1)
    d1 = parcel(7001, order, sc.now, "delivered", "AAA111")
    sc.shopify("fulfillments/update", d1)
    sc.later(days=1)
    f2 = parcel(7002, order, sc.now, "in_transit", "BBB222")
    sc.shopify("orders/updated", {**order, "fulfillment_status": "fulfilled", "updated_at": p.iso(sc.now), "fulfillments": [d1, f2]})
    sc.shopify("fulfillments/create", f2)
    sc.later(days=1)
    d2 = parcel(7002, order, sc.now, "delivered", "BBB222")
    sc.shopify("fulfillments/update", d2)
    sc.shopify("orders/updated", {**order, "fulfillment_status": "fulfilled", "updated_at": p.iso(sc.now), "fulfillments": [d1, d2]})
    sc.later(hours=1)
    assert sc.templates_to(ASHA) == ["order_thanks_v1", "shipped_track_v1", "shipped_track_v1", "delivered_v1"]
    assert shipped_links(sc) == [LINK + "AAA111", LINK + "BBB222"]
    assert [j["status"] for j in sc.contact(ASHA)["journeys"] if j["journey"] == "delivery"] == ["finished"]
