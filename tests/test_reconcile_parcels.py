"""The reconcile replaces lost parcel and consent webhooks (Shopify gives a webhook up after about 4 hours).

Told with the journey scenarios' harness (tests/scenarios): signed webhooks in over HTTP while the
connector is up, nothing while it is down; then the real ``reconcile_orders`` with the real
``ShopifyAdminClient`` reads the fake Admin GraphQL API on 127.0.0.1 (``FakeWorld.shopify_orders``,
built from the public webhook samples), on the scenario's clock. Assertions are on what reached the
customer's phone and what the store owner sees.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from adapters.shopify.client import ShopifyAdminClient
from connector.sync import SyncReport, reconcile_orders
from tests.scenarios import payloads as p
from tests.scenarios.conftest import _world_server, scenario, sqlite_url, world  # noqa: F401  (the scenarios' fixtures)
from tests.scenarios.fakes import FakeWorld
from tests.scenarios.harness import Scenario
from tests.scenarios.stores import SHOPIFY
from tests.scenarios.test_delivery_stories import ASHA, parcel, shipped_links, start
from tests.scenarios.test_store_journeys import LADDER


def in_shopify(world: FakeWorld, order: dict[str, Any], at: datetime | None = None, *fulfilments: dict[str, Any],
               consent: dict[str, Any] | None = None) -> None:
    """The order as Shopify's Admin API has it from ``at`` on (updated then; fulfilled when it lists parcels),
    whether or not its webhooks reached the connector."""
    changed = {**order, "updated_at": p.iso(at)} if at else order
    if fulfilments:
        changed["fulfillment_status"] = "fulfilled"
    node = p.shopify_order_node(changed, fulfillments=list(fulfilments), phone_consent=consent)
    world.shopify_orders[node["id"]] = node


def reconcile(sc: Scenario) -> SyncReport:
    """One scheduled reconcile at the scenario's time, then the worker's round."""
    store = next(s for s in sc.settings.stores if s.key == sc.key)

    async def no_wait(_seconds: float) -> None:
        return None

    async def run() -> SyncReport:
        async with ShopifyAdminClient(store, sleep=no_wait, clock=lambda: 0.0) as client:
            return await reconcile_orders(sc.runtime.db, store, sc.runtime.store_ids[sc.key], client, now=sc.now, sleep=no_wait)

    report = sc.client.portal.call(run)
    sc.work()
    return report


# ---- parcels -------------------------------------------------------------------------------------

def test_a_parcel_shipped_and_delivered_while_the_connector_was_down_is_told_by_the_reconcile_once(sqlite_url, scenario, world):
    """Before: the connector was down the afternoon Asha's order shipped, and again the evening it was
    delivered; Shopify gave up its fulfilment webhooks after 4 hours and the reconcile read the orders only:
    after the thanks she heard nothing. Now each reconcile tells her what changed, once, however often it
    (or the webhook of a state it already told) repeats it."""
    sc = start(scenario, sqlite_url)
    order = SHOPIFY.order(1, ASHA, sc.now, cod=False)
    SHOPIFY.place(sc, order)
    in_shopify(world, order)
    sc.later(hours=1)
    in_shopify(world, order, sc.now, parcel(7001, order, sc.now, "in_transit", "AAA111"))  # shipped; its webhooks lost
    sc.later(hours=5)
    reconcile(sc)
    assert shipped_links(sc) == ["https://track.example/AAA111"]
    sc.later(minutes=15)
    reconcile(sc)  # the next tick re-reads the order inside its overlap
    sc.later(days=1)
    out = parcel(7001, order, sc.now, "out_for_delivery", "AAA111")
    sc.shopify("fulfillments/update", out)  # up again: heard as it happens
    in_shopify(world, order, sc.now, out)
    sc.later(minutes=15)
    reconcile(sc)
    sc.later(hours=3)
    in_shopify(world, order, sc.now, parcel(7001, order, sc.now, "delivered", "AAA111"))  # down again
    sc.later(hours=5)
    reconcile(sc)
    sc.later(minutes=15)
    reconcile(sc)
    assert sc.templates_to(ASHA) == ["order_thanks_v1", "shipped_track_v1", "ofd_v1", "delivered_v1"]


def test_a_parcel_the_reconcile_told_first_is_not_told_again_by_its_late_webhook(sqlite_url, scenario, world):
    """A shorter outage: the reconcile (every 15 minutes) reads the shipment before Shopify's retry of
    fulfillments/create gets through. She hears "shipped" then, and not again when the retry comes."""
    sc = start(scenario, sqlite_url)
    order = SHOPIFY.order(1, ASHA, sc.now, cod=False)
    SHOPIFY.place(sc, order)
    sc.later(hours=1)
    shipped = parcel(7001, order, sc.now, "in_transit", "AAA111")
    in_shopify(world, order, sc.now, shipped)
    sc.later(minutes=15)
    reconcile(sc)
    assert shipped_links(sc) == ["https://track.example/AAA111"]
    sc.later(hours=1)
    sc.shopify("fulfillments/create", shipped)  # Shopify's retry, once the connector answers again
    sc.shopify("orders/updated", {**order, "fulfillment_status": "fulfilled", "updated_at": shipped["updated_at"], "fulfillments": [shipped]})
    sc.later(hours=1)
    assert sc.templates_to(ASHA) == ["order_thanks_v1", "shipped_track_v1"]


def test_a_failed_delivery_only_the_reconcile_saw_asks_her_and_opens_a_case(sqlite_url, scenario, world):
    """Before: the courier's failed attempt reached Shopify while the connector was down: no one asked
    Asha to reschedule and no case opened for the store; the parcel went back to the store."""
    sc = start(scenario, sqlite_url)
    order = SHOPIFY.order(1, ASHA, sc.now, cod=False)
    SHOPIFY.place(sc, order)
    sc.later(hours=1)
    shipped = parcel(7001, order, sc.now, "in_transit", "AAA111")
    sc.shopify("fulfillments/create", shipped)
    in_shopify(world, order, sc.now, shipped)
    sc.later(days=1)
    in_shopify(world, order, sc.now, parcel(7001, order, sc.now, "attempted_delivery", "AAA111"))
    sc.later(hours=5)
    reconcile(sc)
    sc.later(minutes=15)
    reconcile(sc)
    ndr = sc.last_to(ASHA, "ndr_v1")
    assert ndr.buttons == ("ndr_reschedule", "ndr_update_address", "ndr_cancel")
    assert sc.templates_to(ASHA).count("ndr_v1") == 1
    [case] = sc.handoffs(status="open")
    assert (case["journey"], case["subject"]) == ("delivery", f"order:{order['id']}")
    assert [stage for stage, _ in world.notifications] == [case["stage"]]  # the owner is told, once


def test_an_order_with_more_parcels_than_the_page_reads_gets_each_parcels_link(sqlite_url, scenario, world):
    """A big order shipped in seven boxes from different warehouses while the connector was down: the
    page reads five fulfilments an order, so the order is asked again for all of them and each box's
    link reaches her."""
    sc = start(scenario, sqlite_url)
    order = SHOPIFY.order(1, ASHA, sc.now, cod=False)
    SHOPIFY.place(sc, order)
    sc.later(hours=1)
    boxes = [parcel(7001 + i, order, sc.now, "in_transit", f"BOX{i}") for i in range(7)]
    in_shopify(world, order, sc.now, *boxes)
    sc.later(hours=5)
    reconcile(sc)
    assert sorted(shipped_links(sc)) == [f"https://track.example/BOX{i}" for i in range(7)]


def test_a_gift_card_fulfilment_only_the_reconcile_read_does_not_hold_back_delivered(sqlite_url, scenario, world):
    """Before: down while the order's gift card was fulfilled and its box shipped and arrived; the reconcile
    took the gift card's fulfilment (it ships nothing, so no carrier ever reports on it) for a parcel still
    on its way, and she never heard her order was delivered."""
    sc = start(scenario, sqlite_url)
    order = p.with_gift_card(SHOPIFY.order(1, ASHA, sc.now, cod=False))
    SHOPIFY.place(sc, order)
    gift = p.shopify_gift_card_fulfillment(7000, order, sc.now)
    sc.later(hours=1)
    in_shopify(world, order, sc.now, gift, parcel(7001, order, sc.now, "in_transit", "AAA111"))
    sc.later(hours=5)
    reconcile(sc)
    assert shipped_links(sc) == ["https://track.example/AAA111"]
    sc.later(days=1)
    in_shopify(world, order, sc.now, gift, parcel(7001, order, sc.now, "delivered", "AAA111"))
    sc.later(hours=5)
    reconcile(sc)
    assert sc.templates_to(ASHA).count("delivered_v1") == 1


# ---- consent ---------------------------------------------------------------------------------------

def test_a_marketing_opt_out_given_in_the_store_while_the_connector_was_down_stops_the_cart_reminders(sqlite_url, scenario, world):
    """Before: Asha unsubscribed from the store's WhatsApp marketing while the connector was down (the consent
    webhook given up after 4 hours): her cart reminders kept coming. The reconcile reads her consent with her
    order, which shipped meanwhile. Her old SMS opt-in, which Shopify kept without a date, and the same
    consent read again with the next update of her order, do not opt her back in."""
    sc = scenario(sqlite_url, "shopify", journeys=LADDER)
    order = SHOPIFY.order(1, ASHA, sc.now, cod=False)
    SHOPIFY.place(sc, order)
    sc.later(days=1)
    SHOPIFY.start_checkout(sc, "A", ASHA)  # another cart, "text me with news and offers" ticked
    sc.later(hours=1)
    assert sc.templates_to(ASHA) == ["cart_1_v1"]
    unsubscribed = sc.now
    consent = p.shopify_phone_consent(ASHA, sms=("subscribed", None), whatsapp=("unsubscribed", unsubscribed))
    in_shopify(world, order, sc.now, parcel(7001, order, sc.now, "in_transit", "AAA111"), consent=consent)
    sc.later(hours=5)
    reconcile(sc)
    seen = sc.contact(ASHA)["consent"]["marketing"]
    assert (seen["state"], seen["source"]) == ("revoked", "shopify_whatsapp_marketing")
    sc.later(hours=10)
    in_shopify(world, {**order, "tags": "vip"}, sc.now, parcel(7001, order, unsubscribed, "in_transit", "AAA111"), consent=consent)
    reconcile(sc)
    sc.later(days=2)
    assert sc.templates_to(ASHA) == ["cart_1_v1"]
    assert sc.contact(ASHA)["consent"]["marketing"]["state"] == "revoked"
