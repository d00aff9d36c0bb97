"""Shopify's newer carrier statuses as a store owner meets them (review of 2026-12-07b).

Shopify's FulfillmentEventStatus (Customer API and Admin unstable) adds ``returning_to_sender``,
``buyer_action_required`` and ``ready_for_recipient_pickup`` to the statuses a tracking app may post;
the fulfilment's ``shipment_status`` then carries them lower-cased. Before, each was "other": the
customer heard nothing and no person was told, though the parcel was on its way back to the store or
waited on her.
"""

from __future__ import annotations

from tests.scenarios import conftest as _fixtures
from tests.scenarios.stores import SHOPIFY
from tests.scenarios.test_delivery_stories import ASHA, DELIVERY_TEMPLATES, JOURNEYS, parcel, start

# the scenarios' fixtures (tests/scenarios/conftest.py), for a test file outside that folder
_world_server, world, sqlite_url, scenario = _fixtures._world_server, _fixtures.world, _fixtures.sqlite_url, _fixtures.scenario

PICKUP_TEMPLATE = {"step": "delivery.ready_for_pickup", "name": "pickup_v1", "category": "utility",
                   "body_text": "Order {{1}} waits for you at the pickup point", "body": ["order.name"]}


def _shipped_then(sc, status: str) -> dict:
    order = SHOPIFY.order(1, ASHA, sc.now, cod=False)
    SHOPIFY.place(sc, order)
    sc.later(hours=1)
    sc.shopify("fulfillments/create", parcel(7001, order, sc.now, "in_transit", "AAA111"))
    sc.later(days=1)
    sc.shopify("fulfillments/update", parcel(7001, order, sc.now, status, "AAA111"))
    sc.later(hours=1)
    return order


def _desk_told(world) -> list[str]:
    return [body.get("text", "") for stage, body in world.notifications if stage == "post_purchase"]


def test_a_parcel_returning_to_the_store_asks_her_and_opens_a_case(sqlite_url, scenario, world):
    """The courier gave up and the parcel is on its way back: she is asked (reschedule, new address, cancel) as for
    a failed attempt, and the delivery desk gets a case saying the parcel is returning."""
    sc = start(scenario, sqlite_url)
    _shipped_then(sc, "returning_to_sender")
    assert sc.templates_to(ASHA).count("ndr_v1") == 1
    [case] = sc.handoffs(status="open")
    assert case["stage"] == "post_purchase"
    assert any("returning to the sender" in t and "#5001" in t and "AAA111" in t for t in _desk_told(world)), _desk_told(world)


def test_a_parcel_that_needs_her_action_asks_her_and_opens_a_case(sqlite_url, scenario, world):
    """The carrier cannot deliver until she acts (a customs payment, an address to confirm): she is asked, and a person
    hears of it to follow up."""
    sc = start(scenario, sqlite_url)
    _shipped_then(sc, "buyer_action_required")
    assert sc.templates_to(ASHA).count("ndr_v1") == 1
    [case] = sc.handoffs(status="open")
    assert any("needs the customer to act" in t and "#5001" in t for t in _desk_told(world)), _desk_told(world)


def test_a_failed_attempt_then_the_return_to_the_store_asks_once_and_tells_the_case(sqlite_url, scenario, world):
    """The courier tried (asked, case opened), then sends the parcel back: the same failure, so she is not asked twice,
    but the open case hears the parcel is now returning (no new case)."""
    sc = start(scenario, sqlite_url)
    order = _shipped_then(sc, "attempted_delivery")
    sc.later(hours=5)
    sc.shopify("fulfillments/update", parcel(7001, order, sc.now, "returning_to_sender", "AAA111"), times=2)
    sc.later(hours=1)
    assert sc.templates_to(ASHA).count("ndr_v1") == 1
    assert len(sc.handoffs()) == 1
    told = _desk_told(world)
    assert sum("returning to the sender" in t for t in told) == 1, told


def test_her_answer_after_a_return_is_noted_and_reaches_the_case(sqlite_url, scenario, world):
    """She taps Update address on the question a returning parcel raised: the store's order gets the note, the case hears it."""
    sc = start(scenario, sqlite_url)
    _shipped_then(sc, "returning_to_sender")
    sc.tap(ASHA, "ndr_update_address", sc.last_to(ASHA, "ndr_v1"))
    sc.later(hours=1)
    assert any("update the address" in t for t in _desk_told(world)), _desk_told(world)
    notes = [op["input"]["note"] for op in world.shopify_ops("orderUpdate") if "note" in op.get("input", {})]
    assert any("update the delivery address" in n for n in notes), notes


def test_ready_for_recipient_pickup_is_the_pickup_step(sqlite_url, scenario, world):
    """Shopify's ``ready_for_recipient_pickup`` is the parcel waiting for her at a pickup point: the pickup message, once."""
    sc = scenario(sqlite_url, "shopify", journeys={**JOURNEYS, "delivery": {"steps": ["shipped", "ready_for_pickup", "delivered", "failed"]}},
                  store_settings={"templates": [*DELIVERY_TEMPLATES, PICKUP_TEMPLATE]})
    order = _shipped_then(sc, "ready_for_recipient_pickup")
    sc.shopify("fulfillments/update", parcel(7001, order, sc.now, "ready_for_recipient_pickup", "AAA111"))
    sc.later(hours=1)
    assert sc.templates_to(ASHA).count("pickup_v1") == 1
    assert sc.handoffs() == []
