"""Delivery updates tell the tracking as it stands, and "delivered" waits for every parcel the order lists.

Told end to end with the journey scenarios' harness (signed Shopify webhooks over HTTP, the real worker
rounds on a virtual clock, what reached her phone):

- The store ships the rest of a partly shipped order: Shopify's orders/updated ("fulfilled", listing the
  new parcel) is heard before the parcel's own webhook. "Delivered" waits for that parcel too.
- A "shipped" held for the night tells the number that stands at 09:00: a number typed over and put back
  is told once, under its own number; a number removed is not told.
- A genuine further package still gets its own "shipped", once; and a reconcile read that sees only the
  first few of a fulfilment's numbers (its query is capped) does not take the rest as removed.
"""

from __future__ import annotations

from datetime import timedelta
from functools import partial
from typing import Any

from tests.scenarios import payloads as p
from tests.scenarios.conftest import _world_server, scenario, sqlite_url, world  # noqa: F401  (the scenarios' fixtures)
from tests.scenarios.test_delivery_stories import ASHA, NIGHT_HOLDS_UTILITY, ist, parcel, shipped_links, start
from tests.test_delivery_withdrawn_and_late import LINK, _packages, _partly_shipped_and_arrived, _shipped, _shipped_at_night

PUBLIC = {"public_url": "https://connector.example"}


def _typed_over_and_put_back_at_night(sc: Any) -> None:
    """Shipped at 22:00 as AAA111 (its "shipped" held for the night); at 22:30 the store types the number over as
    BBB222, at 23:00 puts AAA111 back. The morning runs to 10:00."""
    order, _ = _shipped_at_night(sc, "AAA111")
    sc.shopify("fulfillments/update", parcel(7001, order, sc.now, "in_transit", "BBB222"))
    sc.later(minutes=30)
    sc.shopify("fulfillments/update", parcel(7001, order, sc.now, "in_transit", "AAA111"))
    sc.at(ist(1, 10), step=timedelta(minutes=30))


def test_the_rest_shipped_later_is_told_delivered_once_both_parcels_have_arrived(sqlite_url, scenario, world):
    """Before: "delivered" went out when the order's update listed the second parcel (its first parcel had
    arrived), and the second parcel's arrival was never told."""
    sc = start(scenario, sqlite_url)
    order, d1 = _partly_shipped_and_arrived(sc)
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


def test_a_number_typed_over_and_put_back_at_night_is_told_once_under_its_own_number(sqlite_url, scenario, world):
    """Before: at 09:00 she got only BBB222's link, the number the store had called off."""
    sc = start(scenario, sqlite_url, policy=NIGHT_HOLDS_UTILITY)
    _typed_over_and_put_back_at_night(sc)
    assert shipped_links(sc) == [LINK + "AAA111"]


def test_a_package_added_after_another_was_removed_gets_its_own_shipped_once(sqlite_url, scenario, world):
    """By day: both packages told; the store removes one (nothing to withdraw: she has it), then adds a
    real second package, which the order's update lists again: its link reaches her once."""
    sc = start(scenario, sqlite_url)
    order, _ = _shipped(sc, "AAA111", "BBB222")
    sc.later(minutes=20)
    sc.shopify("fulfillments/update", _packages(7001, order, sc.now, ["AAA111"]))
    sc.later(minutes=20)
    assert shipped_links(sc) == [LINK + "AAA111", LINK + "BBB222"]
    added = _packages(7001, order, sc.now, ["AAA111", "CCC333"])
    sc.shopify("fulfillments/update", added)
    sc.shopify("orders/updated", {**order, "fulfillment_status": "fulfilled", "updated_at": p.iso(sc.now), "fulfillments": [added]},
               times=2)
    sc.later(hours=1)
    assert shipped_links(sc) == [LINK + "AAA111", LINK + "BBB222", LINK + "CCC333"]


def test_a_reconcile_reading_three_of_four_packages_withdraws_none_of_them(sqlite_url, scenario, world):
    """The reconcile reads three tracking numbers a fulfilment (its query's cap): the fourth package it did
    not read is not removed, so her four links held for the night all reach her at 09:00, and the next
    webhook, with all four, tells none of them again."""
    from jobs.scheduler import reconcile_store

    sc = start(scenario, sqlite_url, policy=NIGHT_HOLDS_UTILITY, server=PUBLIC)
    numbers = ["AAA111", "BBB222", "CCC333", "DDD444"]
    order, _ = _shipped_at_night(sc, *numbers, status="confirmed")
    # the carrier's pick-up reached Shopify, its webhook did not reach us: the reconcile reads it
    moved = _packages(7001, order, sc.now, numbers, status="in_transit")
    updated = {**order, "fulfillment_status": "fulfilled", "updated_at": p.iso(sc.now)}
    node = p.shopify_order_node(updated, fulfillments=[moved])
    world.shopify_orders[node["id"]] = node
    assert sc.client.portal.call(partial(reconcile_store, sc.runtime, sc.settings.store(sc.key), "worker-1", timedelta(minutes=15)))
    sc.at(ist(1, 10), step=timedelta(minutes=30))
    assert shipped_links(sc) == [LINK + n for n in numbers]
    sc.shopify("fulfillments/update", _packages(7001, order, sc.now, numbers, status="delayed"))  # every number again
    sc.later(hours=1)
    assert shipped_links(sc) == [LINK + n for n in numbers]  # none twice
