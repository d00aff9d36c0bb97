"""An order first seen through a later event is still a new order to the journeys.

Shopify does not deliver webhooks in order, and an app that tags new orders makes Shopify send
``orders/updated`` seconds after the creation. When the ``orders/create`` delivery fails once,
its retry carries the original body, now older than the stored order, and is dropped as stale;
and a creation webhook can be lost outright. Either way the first thing the connector hears of
the order is an update, and the customer must still get the COD ask or the confirmation, the
checkout she came from must stop reminding her, and all of it once. Orders that are not news
(created days ago, cancelled, or imported by the sync job) stay silent.
"""

from __future__ import annotations

import json
from datetime import timedelta

from connector.storage.inbox import InboxItem, write_items
from tests.scenarios import payloads as p
from tests.scenarios.stores import SHOPIFY, WOOCOMMERCE
from tests.scenarios.test_store_journeys import COD, LADDER
from tests.test_sync import gql_node

ASHA = "+919876543210"
RAVI = "+919812345678"
CONFIRMATION = {"order_confirmation": {}}


def test_a_cod_order_whose_creation_webhook_arrives_after_a_newer_update_still_gets_one_ask(sqlite_url, scenario, world):
    sc = scenario(sqlite_url, "shopify", journeys=COD)
    order = SHOPIFY.order(1, ASHA, sc.now)
    tagged = {**order, "tags": "fraud-checked", "updated_at": p.iso(sc.now + timedelta(seconds=8))}
    sc.shopify("orders/updated", tagged)  # an app tagged it before orders/create got through
    sc.work()
    sc.later(seconds=30)
    sc.shopify("orders/create", order, times=2)  # the retry of the first delivery: the original, older body
    sc.work()
    assert sc.templates_to(ASHA) == ["cod_confirm_v1"]
    assert sc.sent(ASHA)[0].params == ("Asha", SHOPIFY.name(1), "INR 1,299.00")


def test_a_paid_order_seen_first_by_its_update_is_confirmed_once_and_ends_the_cart_reminders(sqlite_url, scenario, world):
    sc = scenario(sqlite_url, "shopify", journeys={**LADDER, **CONFIRMATION})
    SHOPIFY.start_checkout(sc, "A", ASHA)
    sc.work()
    sc.later(minutes=10)
    order = SHOPIFY.order(1, ASHA, sc.now, cod=False, total="899.00", checkout="A")
    newer = {**order, "tags": "gift", "updated_at": p.iso(sc.now + timedelta(seconds=5))}
    sc.shopify("orders/updated", newer)
    sc.work()
    sc.later(minutes=1)
    sc.shopify("orders/create", order)  # stale by now: dropped
    sc.shopify("orders/paid", order)
    sc.later(days=2)  # the whole ladder's time goes by
    assert sc.templates_to(ASHA) == ["order_thanks_v1"]


def test_a_cod_order_whose_creation_webhook_never_comes_gets_its_ask_from_the_update(sqlite_url, scenario, world):
    sc = scenario(sqlite_url, "shopify", journeys=COD)
    order = SHOPIFY.order(2, RAVI, sc.now)
    sc.shopify("orders/updated", order, times=3)
    sc.work()
    assert sc.templates_to(RAVI) == ["cod_confirm_v1"]


def test_an_update_and_then_the_creation_with_the_same_state_ask_once(sqlite_url, scenario, world):
    """The usual pair arriving the other way round: both are news, the run is one."""
    sc = scenario(sqlite_url, "shopify", journeys={**COD, **CONFIRMATION, "payment_recovery": {}})
    order = SHOPIFY.order(3, ASHA, sc.now)
    created, updated = SHOPIFY.order_deliveries(sc, order)
    sc.post(updated, created)
    sc.later(hours=1)
    assert sc.templates_to(ASHA) == ["cod_confirm_v1"]


def test_a_woocommerce_order_seen_first_by_order_updated_gets_one_ask(sqlite_url, scenario, world):
    sc = scenario(sqlite_url, "woocommerce", journeys=COD)
    order = WOOCOMMERCE.order(1, ASHA, sc.now)
    sc.woo("order.updated", order)
    sc.work()
    sc.woo("order.created", order)
    sc.later(hours=1)
    assert sc.templates_to(ASHA) == ["cod_confirm_v1"]


def test_orders_that_are_not_news_stay_silent_when_first_seen_by_an_update(sqlite_url, scenario, world):
    sc = scenario(sqlite_url, "shopify", journeys={**COD, **CONFIRMATION})
    old = SHOPIFY.order(4, ASHA, sc.now - timedelta(days=3))  # placed before the store installed us
    old["updated_at"] = p.iso(sc.now)
    sc.shopify("orders/updated", old)
    cancelled = SHOPIFY.order(5, RAVI, sc.now)
    cancelled.update(cancelled_at=p.iso(sc.now), cancel_reason="customer")
    sc.shopify("orders/updated", cancelled)
    sc.later(hours=2)
    assert sc.sent() == []


def test_an_order_a_backfill_imports_as_an_update_stays_silent(sqlite_url, scenario, world):
    """A backfill imports even fresh unknown orders silently (the sync job itself writes the ones
    it counts as placed as creations): the processor must not place them behind its back."""
    sc = scenario(sqlite_url, "shopify", journeys={**COD, **CONFIRMATION})
    node = gql_node(7, updated=sc.now, created=sc.now - timedelta(minutes=30), cod=True, phone=ASHA)
    store_id = sc.runtime.store_ids[sc.key]
    item = InboxItem(store_id=store_id, source="shopify", topic="sync/order", dedupe_key=f"shopify:sync:7:{node['updatedAt']}",
                     raw_body=json.dumps(node).encode(), headers={"x-storeloop-sync": "orders"})
    assert write_items(sc.runtime.db, [item]) == [True]
    sc.later(hours=2)
    assert sc.sent() == []
    # the same order's webhook then arrives as an update: the order is known by now, so not news either
    sc.shopify("orders/updated", {**SHOPIFY.order(7, ASHA, sc.now), "id": 7, "admin_graphql_api_id": "gid://shopify/Order/7"})
    sc.later(hours=1)
    assert sc.sent() == []


def test_a_parcel_shipped_before_its_order_reached_us_is_still_announced_once(sqlite_url, scenario, world):
    """Shopify's fulfillments/create can beat orders/create (or the order's delivery fails once and comes later): the
    fulfilment waits for its order, then "on its way" goes out, once, though the parcel's webhook came twice."""
    sc = scenario(sqlite_url, "shopify", journeys={"delivery": {}})
    order = SHOPIFY.order(5, ASHA, sc.now, cod=False)
    sc.shopify("fulfillments/create", p.shopify_fulfillment(order["id"] + 2000, order["id"], sc.now), times=2)
    sc.work()
    assert sc.templates_to(ASHA) == []
    sc.later(seconds=20)
    sc.shopify("orders/create", order)
    sc.later(minutes=2, step=timedelta(seconds=30))
    assert sc.templates_to(ASHA) == ["shipped_v1"]


def test_a_fulfilment_waits_for_its_order_ten_minutes_without_using_up_its_retries(sqlite_url, scenario, world):
    """Waiting is not failing: the row keeps its attempts (a later database hiccup still gets every retry), says
    why it waits, and after ten minutes without its order it is done (nothing is sent for an order never seen)."""
    sc = scenario(sqlite_url, "shopify", journeys={"delivery": {}})
    sc.shopify("fulfillments/create", p.shopify_fulfillment(9_000_001, 9_000_000, sc.now))
    sc.later(minutes=5, step=timedelta(seconds=30))
    waiting = _inbox_row(sc)
    sc.later(minutes=6, step=timedelta(seconds=30))
    done = _inbox_row(sc)
    assert (waiting.status, waiting.attempts, waiting.last_error) == ("pending", 0, "waiting for its order to arrive")
    assert (done.status, done.attempts) == ("done", 1)
    assert sc.sent() == []


def _inbox_row(sc):
    from sqlalchemy import select

    from connector.storage import models as m

    with sc.runtime.db.engine.connect() as conn:
        return conn.execute(select(m.InboxEvent).where(m.InboxEvent.topic == "fulfillments/create")).one()


def test_a_checkout_heard_after_its_order_starts_no_cart_reminders(sqlite_url, scenario, world):
    """She checks out and pays within minutes; Shopify's ``checkouts/create`` for that checkout failed
    once and its retry (the original body: not completed) comes after the order. Reminding her to finish
    a cart she has paid for is the worst message a store can send; the checkout is kept as completed."""
    sc = scenario(sqlite_url, "shopify", journeys={**LADDER, **CONFIRMATION})
    started = sc.now
    checkout = p.shopify_checkout(SHOPIFY.token("A"), ASHA, started)
    sc.later(minutes=10)
    sc.shopify("orders/create", SHOPIFY.order(1, ASHA, sc.now, cod=False, total="899.00", checkout="A"))
    sc.work()
    sc.later(minutes=2)
    sc.shopify("checkouts/create", checkout)  # the retry of the first delivery
    sc.shopify("checkouts/update", {**checkout, "updated_at": p.iso(started + timedelta(minutes=1))})
    sc.later(days=2)  # the whole ladder's time goes by
    assert sc.templates_to(ASHA) == ["order_thanks_v1"]
    assert sc.report()["stages"]["conversion"]["metrics"]["checkouts_abandoned"] == 0


def test_a_checkout_and_its_order_in_one_batch_in_the_wrong_order_start_no_cart_reminders(sqlite_url, scenario, world):
    """The same, with both deliveries waiting for the same batch (the worker was busy): the order
    written earlier in the batch completes the checkout heard after it."""
    sc = scenario(sqlite_url, "shopify", journeys={**LADDER, **CONFIRMATION})
    checkout = p.shopify_checkout(SHOPIFY.token("B"), RAVI, sc.now)
    sc.later(minutes=10)
    sc.post(sc.shopify_delivery("orders/create", SHOPIFY.order(2, RAVI, sc.now, cod=False, total="899.00", checkout="B")),
            sc.shopify_delivery("checkouts/create", checkout))
    sc.work()
    sc.later(days=2)
    assert sc.templates_to(RAVI) == ["order_thanks_v1"]
