"""What the reconcile makes of Shopify's ``Fulfillment.displayStatus`` (FulfillmentDisplayStatus, Admin GraphQL
2026-10) when a parcel's webhook was lost (review of 2026-12-07b).

The display enum has no ``RETURNING_TO_SENDER`` or ``BUYER_ACTION_REQUIRED`` (the carrier event statuses the
webhook's ``shipment_status`` carries); Shopify shows a delivery that failed so as ``NOT_DELIVERED``. The
reconcile read that as "other": a failed delivery seen only by the reconcile never asked the customer nor
opened a case, while the same failure from the webhook did. Told with the reconcile's own harness
(tests/test_reconcile_parcels.py): the real ``reconcile_orders`` reads the fake Admin GraphQL API.
"""

from __future__ import annotations

from typing import Any

import pytest

from adapters.shopify.graphql import normalize_node
from adapters.shopify.normalize import normalize
from connector.events import FulfillmentUpdated, ShipmentStatus
from tests.adapters.test_shopify_normalize import STORE, load
from tests.scenarios import conftest as _fixtures
from tests.scenarios.stores import SHOPIFY
from tests.scenarios.test_delivery_stories import ASHA, parcel, start
from tests.test_reconcile_parcels import in_shopify, reconcile

# the scenarios' fixtures (tests/scenarios/conftest.py), for a test file outside that folder
_world_server, world, sqlite_url, scenario = _fixtures._world_server, _fixtures.world, _fixtures.sqlite_url, _fixtures.scenario


def shown_in_shopify(world, order: dict[str, Any], at, fulfilment: dict[str, Any], display: str) -> None:
    """The order as the Admin API has it, its one parcel shown with ``display`` (what Shopify's admin shows)."""
    in_shopify(world, order, at, fulfilment)
    [node] = [n for n in world.shopify_orders.values() if n["name"] == order["name"]]
    node["fulfillments"][0]["displayStatus"] = display


def desk_told(world) -> list[str]:
    return [body.get("text", "") for stage, body in world.notifications if stage == "post_purchase"]


def shipped(sc, world) -> dict[str, Any]:
    order = SHOPIFY.order(1, ASHA, sc.now, cod=False)
    SHOPIFY.place(sc, order)
    sc.later(hours=1)
    on_its_way = parcel(7001, order, sc.now, "in_transit", "AAA111")
    sc.shopify("fulfillments/create", on_its_way)
    in_shopify(world, order, sc.now, on_its_way)
    sc.later(days=1)
    return order


def test_a_delivery_shopify_shows_not_delivered_only_the_reconcile_saw_asks_her_and_opens_a_case(sqlite_url, scenario, world):
    """Before: the parcel's failure reached Shopify while the connector was down (webhook given up): the reconcile
    read "Not delivered" as nothing; Asha was never asked to rearrange, no one at the store heard of it."""
    sc = start(scenario, sqlite_url)
    order = shipped(sc, world)
    shown_in_shopify(world, order, sc.now, parcel(7001, order, sc.now, "returning_to_sender", "AAA111"), "NOT_DELIVERED")
    sc.later(hours=5)
    reconcile(sc)
    sc.later(minutes=15)
    reconcile(sc)  # the next tick re-reads it inside its overlap: nothing twice
    assert sc.templates_to(ASHA).count("ndr_v1") == 1
    [case] = sc.handoffs(status="open")
    assert (case["journey"], case["subject"]) == ("delivery", f"order:{order['id']}")
    told = desk_told(world)
    assert len(told) == 1 and "#5001" in told[0] and "AAA111" in told[0] and "not delivered" in told[0], told

    # the carrier's own word heard later (a webhook that got through): the same failure, she is not asked again,
    # the case hears what it is
    sc.later(hours=2)
    sc.shopify("fulfillments/update", parcel(7001, order, sc.now, "returning_to_sender", "AAA111"))
    sc.later(hours=1)
    assert sc.templates_to(ASHA).count("ndr_v1") == 1
    assert len(sc.handoffs()) == 1
    assert sum("returning to the sender" in t for t in desk_told(world)) == 1, desk_told(world)


@pytest.mark.parametrize("word", ["returning_to_sender", "buyer_action_required", "attempted_delivery"])
def test_a_failure_the_webhook_told_is_not_news_again_when_the_reconcile_reads_it_as_not_delivered(sqlite_url, scenario, world, word):
    """The webhook said what failed (asked, case opened); the order's next change has the reconcile re-read it, Shopify
    showing the parcel "Not delivered": the same failure, no second question, no word to the case."""
    sc = start(scenario, sqlite_url)
    order = shipped(sc, world)
    failed = parcel(7001, order, sc.now, word, "AAA111")
    sc.shopify("fulfillments/update", failed)
    sc.later(hours=1)
    assert sc.templates_to(ASHA).count("ndr_v1") == 1
    told = desk_told(world)
    shown_in_shopify(world, order, sc.now, failed, "NOT_DELIVERED")
    sc.later(minutes=15)
    reconcile(sc)
    sc.later(hours=1)
    assert sc.templates_to(ASHA).count("ndr_v1") == 1
    assert len(sc.handoffs()) == 1
    assert desk_told(world) == told


def test_a_parcel_out_again_then_not_delivered_is_a_new_attempt(sqlite_url, scenario, world):
    """The courier took it out again after the first failure and failed again: she is asked again, as the webhook's
    second attempted_delivery would have done."""
    sc = start(scenario, sqlite_url)
    order = shipped(sc, world)
    sc.shopify("fulfillments/update", parcel(7001, order, sc.now, "attempted_delivery", "AAA111"))
    sc.later(days=1)
    sc.shopify("fulfillments/update", parcel(7001, order, sc.now, "out_for_delivery", "AAA111"))
    sc.later(hours=6)
    shown_in_shopify(world, order, sc.now, parcel(7001, order, sc.now, "returning_to_sender", "AAA111"), "NOT_DELIVERED")
    sc.later(hours=5)
    reconcile(sc)
    assert sc.templates_to(ASHA).count("ndr_v1") == 2


# ---- each documented display status, as the webhook would say the same -------------------------------------

# FulfillmentDisplayStatus values whose webhook shipment_status is the same word, lower-cased
SAME_WORD = ["ATTEMPTED_DELIVERY", "CARRIER_PICKED_UP", "CONFIRMED", "DELAYED", "DELIVERED", "FAILURE", "IN_TRANSIT",
             "LABEL_PRINTED", "LABEL_PURCHASED", "OUT_FOR_DELIVERY", "PICKED_UP", "READY_FOR_PICKUP"]
# the fulfilment's own state, no carrier news: the webhook's shipment_status null
NO_CARRIER_NEWS = ["FULFILLED", "MARKED_AS_FULFILLED", "SUBMITTED", "CANCELED"]


def _read(display: str) -> ShipmentStatus:
    f = {"id": "gid://shopify/Fulfillment/9", "status": "SUCCESS", "displayStatus": display, "createdAt": "2026-11-20T06:00:00Z",
         "updatedAt": "2026-11-20T06:00:00Z", "requiresShipping": True, "trackingInfo": []}
    node = {"id": "gid://shopify/Order/77", "name": "#1077", "createdAt": "2026-11-20T06:00:00Z", "updatedAt": "2026-11-20T06:00:00Z",
            "displayFinancialStatus": "PAID", "paymentGatewayNames": ["shopify_payments"], "currencyCode": "INR",
            "currentTotalPriceSet": {"shopMoney": {"amount": "1299.00", "currencyCode": "INR"}},
            "lineItems": {"nodes": [{"id": "gid://shopify/LineItem/1", "quantity": 1, "title": "Tea", "requiresShipping": True}]},
            "fulfillments": [f]}
    [event] = [e for e in normalize_node(node, STORE) if isinstance(e, FulfillmentUpdated)]
    return event.fulfillment.shipment_status


def _webhook(word: str | None) -> ShipmentStatus:
    body = load("fulfillments_update")
    [event] = normalize("fulfillments/update", {**body, "shipment_status": word}, STORE)
    return event.fulfillment.shipment_status


@pytest.mark.parametrize("display", SAME_WORD + NO_CARRIER_NEWS)
def test_the_reconcile_reads_a_display_status_as_the_webhook_says_it(display):
    assert _read(display) == _webhook(None if display in NO_CARRIER_NEWS else display.lower())


def test_a_voided_label_is_left_to_the_fulfilments_own_status():
    """LABEL_VOIDED: whether the parcel still goes (another label) or was called off is the fulfilment's ``status``
    (CANCELLED: no parcel); the display word alone moves no step."""
    assert _read("LABEL_VOIDED") == ShipmentStatus.OTHER


def test_not_delivered_and_an_unknown_display_status_never_fail_the_order():
    assert _read("NOT_DELIVERED") == ShipmentStatus.NOT_DELIVERED
    assert _read("SOMETHING_NEW") == ShipmentStatus.OTHER

