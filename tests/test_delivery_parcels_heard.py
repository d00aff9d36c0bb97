"""Delivery updates: "delivered" waits for every parcel, and only for parcels on their way.

Shopify creates a fulfilment with no carrier status (``shipment_status: null``): it is a parcel
"delivered" waits for all the same. Told with the journey scenarios' harness:
signed Shopify webhooks in over HTTP, the real workers on a virtual clock, what reached her phone.
"""

from __future__ import annotations

from tests.scenarios.conftest import _world_server, scenario, sqlite_url, world  # noqa: F401  (the scenarios' fixtures)
from tests.scenarios.stores import SHOPIFY
from tests.test_delivery_parcels import ASHA, fulfilment, links, start


def test_a_second_parcel_with_no_carrier_news_yet_holds_back_delivered(sqlite_url, scenario, world):
    """Before: the store shipped two boxes as two fulfilments, each created (as Shopify sends them) with
    no carrier status yet; the first box arrived and she was told her order was delivered while the
    second was still on its way."""
    sc = start(scenario, sqlite_url)
    order = SHOPIFY.order(1, ASHA, sc.now, cod=False)
    SHOPIFY.place(sc, order)
    sc.later(hours=1)
    sc.shopify("fulfillments/create", fulfilment(7001, order, sc.now, None, "AAA111"))
    sc.shopify("fulfillments/create", fulfilment(7002, order, sc.now, None, "BBB222"))
    sc.later(days=1)
    sc.shopify("fulfillments/update", fulfilment(7001, order, sc.now, "delivered", "AAA111"))
    sc.later(hours=1)
    assert links(sc) == ["https://track.example/AAA111", "https://track.example/BBB222"]
    assert "delivered_v1" not in sc.templates_to(ASHA)
    sc.later(days=1)
    sc.shopify("fulfillments/update", fulfilment(7002, order, sc.now, "delivered", "BBB222"))
    sc.later(hours=1)
    assert sc.templates_to(ASHA).count("delivered_v1") == 1
