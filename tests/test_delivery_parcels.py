"""Delivery updates: every parcel's tracking link, and "delivered" however the store's news comes.

Told end to end with the journey scenarios' harness (tests/scenarios): signed store webhooks in
over HTTP, the real worker rounds on a virtual clock, and assertions on what reached the
customer's phone (the fake WhatsApp on 127.0.0.1).

- A fulfilment can carry several tracking numbers at once (Shopify's ``tracking_numbers`` /
  ``tracking_urls``, several WooCommerce Shipment Tracking items): each parcel's link reaches her.
- Shopify's order webhooks list the order's fulfilments (``fulfillments[]``, the same Fulfillment
  resource as fulfillments/*): a carrier status seen only there moves the delivery run, once.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import event, text

from tests.scenarios import payloads as p
from tests.scenarios.conftest import _world_server, scenario, sqlite_url, world  # noqa: F401  (the scenarios' fixtures)
from tests.scenarios.harness import TEMPLATES
from tests.scenarios.stores import SHOPIFY, WOOCOMMERCE

ASHA = "+919876543210"
JOURNEYS = {"order_confirmation": {}, "delivery": {}}
SHIPPED_WITH_LINK = {"step": "delivery.shipped", "name": "shipped_track_v1", "category": "utility",
                     "body_text": "Order {{1}} shipped: {{2}}", "body": ["order.name", "fulfillment.tracking_url"]}
LATER_STEPS = [
    {"step": "delivery.out_for_delivery", "name": "ofd_v1", "category": "utility", "body_text": "Order {{1}} is out", "body": ["order.name"]},
    {"step": "delivery.delivered", "name": "delivered_v1", "category": "utility", "body_text": "Order {{1}} delivered", "body": ["order.name"]},
]


def templates(shipped: dict[str, Any] = SHIPPED_WITH_LINK) -> list[dict[str, Any]]:
    """The harness's templates with this "shipped" and the later steps bound."""
    return [t for t in TEMPLATES if t["step"] != "delivery.shipped"] + [shipped, *LATER_STEPS]


def start(scenario: Any, sqlite_url: str, platform: str = "shopify", shipped: dict[str, Any] = SHIPPED_WITH_LINK) -> Any:
    return scenario(sqlite_url, platform, journeys=JOURNEYS, store_settings={"templates": templates(shipped)})


def fulfilment(fid: int, order: dict[str, Any], at: datetime, status: str | None, *numbers: str) -> dict[str, Any]:
    """Shopify's fulfilment ``fid`` of ``order`` (the fixture's shape) with these tracking numbers, each with its link."""
    links = [f"https://track.example/{n}" for n in numbers]
    f = p.shopify_fulfillment(fid, order["id"], at, shipment_status=status)
    f.update(tracking_company="Delhivery", tracking_number=numbers[0] if numbers else None, tracking_numbers=list(numbers),
             tracking_url=links[0] if links else None, tracking_urls=links)
    return f


def order_listing(order: dict[str, Any], at: datetime, *fulfilments: dict[str, Any], **changes: Any) -> dict[str, Any]:
    """``order`` as Shopify's order webhooks send it at ``at``: fulfilled, with its ``fulfillments[]``."""
    return {**order, "fulfillment_status": "fulfilled", "updated_at": p.iso(at), "fulfillments": list(fulfilments), **changes}


def links(sc: Any) -> list[str]:
    """The tracking links of the "shipped" messages she got, in order."""
    return [s.params[1] for s in sc.sent(ASHA) if s.template == "shipped_track_v1"]


# ---- several tracking numbers at once ------------------------------------------------------------

def test_a_fulfilment_with_two_tracking_numbers_tells_both_links_and_delivered_waits_for_every_parcel(sqlite_url, scenario, world):
    """Before: the store shipped two boxes under one fulfilment (AAA111, AAA112): she got one "shipped"
    with AAA111's link and never learnt AAA112's."""
    sc = start(scenario, sqlite_url)
    order = SHOPIFY.order(1, ASHA, sc.now, cod=False)
    SHOPIFY.place(sc, order)
    sc.later(hours=1)
    sc.shopify("fulfillments/create", fulfilment(7001, order, sc.now, "in_transit", "AAA111", "AAA112"), times=2)
    sc.later(hours=1)
    assert links(sc) == ["https://track.example/AAA111", "https://track.example/AAA112"]
    sc.shopify("fulfillments/create", fulfilment(7002, order, sc.now, "in_transit", "BBB222"))  # a third box, later
    sc.later(days=1)
    sc.shopify("fulfillments/update", fulfilment(7001, order, sc.now, "delivered", "AAA111", "AAA112"))
    sc.later(hours=1)
    assert links(sc) == ["https://track.example/AAA111", "https://track.example/AAA112", "https://track.example/BBB222"]
    assert "delivered_v1" not in sc.templates_to(ASHA)  # BBB222 is still on its way
    sc.shopify("fulfillments/update", fulfilment(7002, order, sc.now, "delivered", "BBB222"))
    sc.later(hours=1)
    assert sc.templates_to(ASHA).count("delivered_v1") == 1


def test_a_shipped_template_that_shows_no_tracking_is_not_repeated_for_each_number(sqlite_url, scenario, world):
    """The store's "shipped" names only the order ("Order #5001 is on its way"): two numbers at once
    must not send her that sentence twice."""
    sc = start(scenario, sqlite_url, shipped=next(t for t in TEMPLATES if t["step"] == "delivery.shipped"))
    order = SHOPIFY.order(1, ASHA, sc.now, cod=False)
    SHOPIFY.place(sc, order)
    sc.later(hours=1)
    sc.shopify("fulfillments/create", fulfilment(7001, order, sc.now, "in_transit", "AAA111", "AAA112"))
    sc.later(hours=1)
    assert sc.templates_to(ASHA) == ["order_thanks_v1", "shipped_v1"]


def test_two_woocommerce_tracking_items_added_at_once_each_get_their_link(sqlite_url, scenario, world):
    """Before: the store completed the order with two Shipment Tracking items (two boxes): she got DL1's
    link only."""
    sc = start(scenario, sqlite_url, "woocommerce")
    order = WOOCOMMERCE.order(1, ASHA, sc.now, cod=False)
    WOOCOMMERCE.place(sc, order)
    sc.later(hours=1)
    items = [{"tracking_provider": "", "custom_tracking_provider": "Delhivery", "tracking_number": n,
              "custom_tracking_link": f"https://track.example/{n}"} for n in ("DL1", "DL2")]
    sc.woo("order.updated", {**order, "status": "completed", "date_modified_gmt": p.gmt(sc.now), "date_modified": p.gmt(sc.now),
                             "meta_data": [*order.get("meta_data", []), {"id": 99, "key": "_wc_shipment_tracking_items", "value": items}]})
    sc.later(hours=1)
    assert links(sc) == ["https://track.example/DL1", "https://track.example/DL2"]


# ---- news that only the order webhook carries ------------------------------------------------------

def test_shipped_out_for_delivery_and_delivered_seen_only_on_the_order_reach_her_once(sqlite_url, scenario, world):
    """Before: a store whose tracking app updates Shopify's fulfilment events, and whose fulfilment
    webhooks never reached us, sends its parcel's news only in the order (fulfillments[].shipment_status):
    she heard nothing after the thanks. Each order update that repeats it (an app tagging the order) is
    no news."""
    sc = start(scenario, sqlite_url)
    order = SHOPIFY.order(1, ASHA, sc.now, cod=False)
    SHOPIFY.place(sc, order)
    sc.later(hours=1)
    shipped = fulfilment(7001, order, sc.now, "in_transit", "AAA111")
    sc.shopify("orders/fulfilled", order_listing(order, sc.now, shipped))
    sc.shopify("orders/updated", order_listing(order, sc.now, shipped))
    sc.later(days=1)
    sc.shopify("orders/updated", order_listing(order, sc.now, fulfilment(7001, order, sc.now, "out_for_delivery", "AAA111")))
    sc.later(hours=3)
    delivered = fulfilment(7001, order, sc.now, "delivered", "AAA111")
    sc.shopify("orders/updated", order_listing(order, sc.now, delivered))
    sc.later(hours=1)
    sc.shopify("orders/updated", order_listing(order, sc.now, delivered, tags="reviewed"))
    sc.later(hours=1)
    assert sc.templates_to(ASHA) == ["order_thanks_v1", "shipped_track_v1", "ofd_v1", "delivered_v1"]
    assert links(sc) == ["https://track.example/AAA111"]


def test_a_fulfilment_listed_on_the_order_that_cannot_be_read_leaves_the_order_update_and_the_other_parcels_intact(sqlite_url, scenario, world):
    """An order update whose fulfillments[] holds one entry of a shape we cannot read (no id) is still
    the order's news: the good parcel beside it is told, and the order's own change is stored."""
    sc = start(scenario, sqlite_url)
    order = SHOPIFY.order(1, ASHA, sc.now, cod=False)
    SHOPIFY.place(sc, order)
    sc.later(hours=1)
    unreadable = {k: v for k, v in fulfilment(7002, order, sc.now, "in_transit", "ZZZ999").items() if k != "id"}
    sc.shopify("orders/updated", order_listing(order, sc.now, fulfilment(7001, order, sc.now, "in_transit", "AAA111"), unreadable,
                                               note="gift wrap"))
    sc.later(hours=1)
    assert links(sc) == ["https://track.example/AAA111"]
    with sc.runtime.db.engine.connect() as conn:
        statuses = conn.execute(text("SELECT status FROM inbox_events WHERE topic = 'orders/updated'")).scalars().all()
    assert statuses and set(statuses) == {"done"}  # not failed: the order's update was applied


def test_a_carrier_name_longer_than_its_column_fails_neither_the_order_update_nor_the_parcel(db_url, scenario, world):
    """PostgreSQL refuses text longer than its column, and with it the whole row: since order webhooks list
    their fulfilments, a 130-character carrier name failed the order's own update (its note, a cancel)."""
    sc = start(scenario, db_url)
    order = SHOPIFY.order(1, ASHA, sc.now, cod=False)
    SHOPIFY.place(sc, order)
    sc.later(hours=1)
    long_named = fulfilment(7001, order, sc.now, "in_transit", "AAA111")
    long_named["tracking_company"] = "Shree Maruti Integrated Logistics " * 4  # 136 characters
    sc.shopify("orders/updated", order_listing(order, sc.now, long_named, note="please leave at the door"))
    sc.later(hours=1)
    assert links(sc) == ["https://track.example/AAA111"]
    with sc.runtime.db.engine.connect() as conn:
        statuses = conn.execute(text("SELECT status FROM inbox_events WHERE topic = 'orders/updated'")).scalars().all()
        company = conn.execute(text("SELECT tracking_company FROM fulfillments")).scalar_one()
    assert statuses and set(statuses) == {"done"}
    assert company == long_named["tracking_company"][:120]


def test_delivered_heard_from_the_order_and_from_the_fulfilment_is_told_once_whichever_comes_first(sqlite_url, scenario, world):
    """Order 1's update says delivered before its fulfilments/update does; order 2's the other way round.
    Before: order 1 got no "delivered" until the fulfilment webhook came (never, when it does not)."""
    sc = start(scenario, sqlite_url)
    first, second = SHOPIFY.order(1, ASHA, sc.now, cod=False), SHOPIFY.order(2, ASHA, sc.now, cod=False)
    for order in (first, second):
        SHOPIFY.place(sc, order)
    sc.later(hours=1)
    for fid, order in ((7001, first), (7002, second)):
        sc.shopify("fulfillments/create", fulfilment(fid, order, sc.now, "in_transit", f"AWB{fid}"))
    sc.later(days=1)
    one, two = fulfilment(7001, first, sc.now, "delivered", "AWB7001"), fulfilment(7002, second, sc.now, "delivered", "AWB7002")
    sc.shopify("orders/updated", order_listing(first, sc.now, one))  # order 1: its update first
    sc.shopify("fulfillments/update", two)  # order 2: its fulfilment first
    sc.later(hours=1)

    def delivered() -> list[str]:
        return [s.params[0] for s in sc.sent(ASHA) if s.template == "delivered_v1"]

    assert delivered() == [SHOPIFY.name(1), SHOPIFY.name(2)]
    sc.shopify("fulfillments/update", one)
    sc.shopify("orders/updated", order_listing(second, sc.now, two))
    sc.later(hours=1)
    assert delivered() == [SHOPIFY.name(1), SHOPIFY.name(2)]


def test_an_old_orders_update_seen_since_the_install_tells_her_nothing_of_its_long_delivered_parcel(sqlite_url, scenario, world):
    """The connector is installed today; a month-old order, delivered weeks ago, is refunded in part
    (orders/updated). Its listed fulfilment is old news: no "delivered" for a parcel she had long ago."""
    sc = start(scenario, sqlite_url)
    placed = sc.now - timedelta(days=30)
    order = SHOPIFY.order(1, ASHA, placed, cod=False)
    delivered = fulfilment(7001, order, placed + timedelta(days=5), "delivered", "AAA111")
    sc.shopify("orders/updated", order_listing(order, sc.now, delivered, financial_status="partially_refunded"))
    sc.later(hours=1)
    assert sc.templates_to(ASHA) == []


def test_a_batch_of_parcel_news_reads_its_fulfilments_in_one_query_and_rewrites_none_an_order_repeats(sqlite_url, scenario, world):
    """Every update of a shipped Shopify order now lists its fulfilments (orders/updated is the busiest
    topic): a batch reads them with one query, not one per fulfilment (as each fulfilment webhook did),
    and an order update that changes no parcel writes none."""
    phones = ["+919876543210", "+919876543211", "+919876543212", "+919876543213"]
    sc = start(scenario, sqlite_url)
    orders = [SHOPIFY.order(10 + i, phone, sc.now, cod=False) for i, phone in enumerate(phones)]
    for order in orders:
        SHOPIFY.place(sc, order)
    sc.later(hours=1)
    shipped = [fulfilment(7100 + i, order, sc.now, "in_transit", f"AWB{i}") for i, order in enumerate(orders)]
    for f in shipped:
        sc.shopify("fulfillments/create", f)
    sc.later(hours=1)
    statements: list[str] = []

    def seen(conn, cursor, statement, params, context, executemany):  # type: ignore[no-untyped-def]
        s = " ".join(statement.split()).lower()
        if "fulfillments" in s:
            statements.append(s)

    event.listen(sc.runtime.db.engine, "before_cursor_execute", seen)
    for i, order in enumerate(orders):
        sc.shopify("fulfillments/update", fulfilment(7100 + i, order, sc.now, "out_for_delivery", f"AWB{i}"))
        sc.shopify("orders/updated", order_listing(order, sc.now, shipped[i], tags="packed"))  # its parcel as before
    sc.work()
    event.remove(sc.runtime.db.engine, "before_cursor_execute", seen)
    selects, updates = ([s for s in statements if s.startswith(verb)] for verb in ("select", "update"))
    assert len(selects) == 1, statements  # the batch's eight fulfilments, read together
    assert len(updates) == 1, statements  # the four that changed, in one executemany; the orders' repeats not at all
    assert [sc.templates_to(phone).count("ofd_v1") for phone in phones] == [1, 1, 1, 1]
