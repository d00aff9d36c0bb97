"""Delivery updates: "delivered" waits for every parcel, and only for parcels on their way.

Shopify creates a fulfilment with no carrier status (``shipment_status: null``): it is a parcel
"delivered" waits for all the same. A merchant often cancels a fulfilment (wrong items packed, a
label for the wrong courier) and creates another: Shopify sends ``fulfillments/update`` with
``status: cancelled``; the cancelled one never arrives, so "delivered" must not wait for it. Told with the journey scenarios' harness:
signed Shopify webhooks in over HTTP, the real workers on a virtual clock, what reached her phone.
"""

from __future__ import annotations

from typing import Any

from alembic import command
from sqlalchemy import select, update

from connector.reorder.windows import busy_with
from connector.storage import models as m
from connector.storage.db import alembic_config, migrate
from tests.scenarios import payloads as p
from tests.scenarios.conftest import _world_server, scenario, sqlite_url, world  # noqa: F401  (the scenarios' fixtures)
from tests.scenarios.stores import SHOPIFY
from tests.test_delivery_parcels import ASHA, JOURNEYS, fulfilment, links, order_listing, start, templates
from tests.test_erased_orders import own_db_url  # noqa: F401  (a database of the test's own, which it may downgrade)


def cancelled(f: dict[str, Any]) -> dict[str, Any]:
    return {**f, "status": "cancelled"}


def test_a_cancelled_fulfilment_replaced_by_another_does_not_hold_back_delivered(sqlite_url, scenario, world):
    """Before: the store cancelled fulfilment 7001 (AAA111) and shipped the order again as 7002
    (BBB222); 7002 was delivered and she never heard "delivered": the run waited for 7001 for ever."""
    sc = start(scenario, sqlite_url)
    order = SHOPIFY.order(1, ASHA, sc.now, cod=False)
    SHOPIFY.place(sc, order)
    sc.later(hours=1)
    first = fulfilment(7001, order, sc.now, None, "AAA111")
    sc.shopify("fulfillments/create", first)
    sc.later(hours=1)
    sc.shopify("fulfillments/update", cancelled(first))
    sc.later(hours=1)
    sc.shopify("fulfillments/create", fulfilment(7002, order, sc.now, None, "BBB222"))
    sc.later(days=1)
    sc.shopify("fulfillments/update", fulfilment(7002, order, sc.now, "delivered", "BBB222"))
    sc.later(hours=1)
    assert links(sc) == ["https://track.example/AAA111", "https://track.example/BBB222"]
    assert sc.templates_to(ASHA).count("delivered_v1") == 1


def test_a_fulfilment_cancelled_before_she_heard_of_it_does_not_tell_her_it_shipped(sqlite_url, scenario, world):
    """Before: a label was bought (``label_purchased``) and the fulfilment cancelled before anything
    left; the cancel carried the label's status, and she was told her order had shipped."""
    sc = start(scenario, sqlite_url)
    order = SHOPIFY.order(1, ASHA, sc.now, cod=False)
    SHOPIFY.place(sc, order)
    sc.later(hours=1)
    sc.shopify("fulfillments/update", cancelled(fulfilment(7001, order, sc.now, "label_purchased", "AAA111")))
    sc.later(hours=1)
    assert sc.templates_to(ASHA) == ["order_thanks_v1"]


def _paid_order_shipped_in_two_parcels(sc: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    """Asha's paid order, shipped an hour later as two fulfilments (7001, 7002) with no carrier news yet; a day on.
    Returns the order and the second fulfilment, which the tests go on to fail or cancel."""
    order = SHOPIFY.order(1, ASHA, sc.now, cod=False)
    SHOPIFY.place(sc, order)
    sc.later(hours=1)
    sc.shopify("fulfillments/create", fulfilment(7001, order, sc.now, None, "AAA111"))
    second = fulfilment(7002, order, sc.now, None, "BBB222")
    sc.shopify("fulfillments/create", second)
    sc.later(days=1)
    return order, second


def test_delivered_waiting_for_a_parcel_the_store_then_cancels_is_told(sqlite_url, scenario, world):
    """Before: 7001 arrived while 7002 was still listed, so "delivered" waited; the store then cancelled
    7002 (the item was out of stock) and she never heard her order was delivered."""
    sc = start(scenario, sqlite_url)
    order, second = _paid_order_shipped_in_two_parcels(sc)
    sc.shopify("fulfillments/update", fulfilment(7001, order, sc.now, "delivered", "AAA111"))
    sc.later(hours=1)
    assert "delivered_v1" not in sc.templates_to(ASHA)  # 7002 is still on its way
    sc.shopify("fulfillments/update", cancelled({**second, "updated_at": p.iso(sc.now)}))
    sc.later(hours=1)
    sc.shopify("fulfillments/update", cancelled({**second, "updated_at": p.iso(sc.now)}))  # Shopify repeats itself
    sc.later(hours=1)
    assert sc.templates_to(ASHA).count("delivered_v1") == 1


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


def test_delivered_is_told_when_the_parcel_that_failed_is_cancelled_and_the_other_has_arrived(sqlite_url, scenario, world):
    """The run waits on a person (box 7002's delivery failed), box 7001 arrives, and the store cancels
    7002 (it will refund it): she is told her order was delivered, once."""
    failed = {"step": "delivery.failed", "name": "ndr_v1", "category": "utility", "body_text": "We missed you with {{1}}",
              "body": ["order.name"]}
    sc = scenario(sqlite_url, "shopify", journeys=JOURNEYS, store_settings={"templates": [*templates(), failed]})
    order, second = _paid_order_shipped_in_two_parcels(sc)
    sc.shopify("fulfillments/update", {**second, "shipment_status": "attempted_delivery", "updated_at": p.iso(sc.now)})
    sc.later(hours=1)
    sc.shopify("fulfillments/update", fulfilment(7001, order, sc.now, "delivered", "AAA111"))
    sc.later(hours=1)
    assert "ndr_v1" in sc.templates_to(ASHA) and "delivered_v1" not in sc.templates_to(ASHA)
    sc.shopify("fulfillments/update", cancelled({**second, "shipment_status": "attempted_delivery", "updated_at": p.iso(sc.now)}))
    sc.later(hours=1)
    assert sc.templates_to(ASHA).count("delivered_v1") == 1


# ---- a gift card (or a digital line) is fulfilled at once, in a fulfilment that ships nothing --------

def test_a_gift_card_fulfilled_first_neither_says_shipped_nor_holds_back_delivered(sqlite_url, scenario, world):
    """Before: the gift card was fulfilled (emailed) the moment she paid; the run took it for the first
    parcel: the box arrived and she never heard her order was delivered, the run waiting for the gift
    card's carrier news for ever. Told as Shopify sends it: each fulfilment, and the order listing them."""
    sc = start(scenario, sqlite_url)
    order = p.with_gift_card(SHOPIFY.order(1, ASHA, sc.now, cod=False))
    SHOPIFY.place(sc, order)
    gift = p.shopify_gift_card_fulfillment(7000, order, sc.now)
    sc.shopify("fulfillments/create", gift)
    sc.shopify("orders/updated", order_listing(order, sc.now, gift, fulfillment_status="partial"))
    sc.later(hours=1)
    assert links(sc) == []
    sc.later(days=1)
    box = fulfilment(7001, order, sc.now, "in_transit", "AAA111")
    sc.shopify("fulfillments/create", box)
    sc.shopify("orders/updated", order_listing(order, sc.now, gift, box))
    sc.later(days=1)
    delivered = fulfilment(7001, order, sc.now, "delivered", "AAA111")
    sc.shopify("fulfillments/update", delivered)
    sc.shopify("orders/updated", order_listing(order, sc.now, gift, delivered))
    sc.later(hours=1)
    assert links(sc) == ["https://track.example/AAA111"]
    assert sc.templates_to(ASHA).count("delivered_v1") == 1


def test_a_gift_card_fulfilled_first_does_not_tell_her_the_order_shipped(sqlite_url, scenario, world):
    """Before: with a "shipped" message that shows no tracking, the gift card's fulfilment told her her
    order had shipped a day before the box left (and the box's own "shipped" was then used up)."""
    plain = {"step": "delivery.shipped", "name": "shipped_plain_v1", "category": "utility", "body_text": "Order {{1}} has shipped",
             "body": ["order.name"]}
    sc = start(scenario, sqlite_url, shipped=plain)
    order = p.with_gift_card(SHOPIFY.order(1, ASHA, sc.now, cod=False))
    SHOPIFY.place(sc, order)
    sc.shopify("fulfillments/create", p.shopify_gift_card_fulfillment(7000, order, sc.now))
    sc.later(days=1)
    assert "shipped_plain_v1" not in sc.templates_to(ASHA)
    sc.shopify("fulfillments/create", fulfilment(7001, order, sc.now, "in_transit", "AAA111"))
    sc.later(hours=1)
    assert sc.templates_to(ASHA).count("shipped_plain_v1") == 1


def test_a_gift_card_fulfilled_after_the_box_shipped_does_not_hold_back_delivered(sqlite_url, scenario, world):
    """Before: the box shipped, then the store fulfilled the gift card line by hand; the box arrived and
    "delivered" waited for the gift card, which no carrier ever reports on."""
    sc = start(scenario, sqlite_url)
    order = p.with_gift_card(SHOPIFY.order(1, ASHA, sc.now, cod=False))
    SHOPIFY.place(sc, order)
    sc.later(hours=1)
    sc.shopify("fulfillments/create", fulfilment(7001, order, sc.now, "in_transit", "AAA111"))
    sc.later(hours=2)
    sc.shopify("fulfillments/create", p.shopify_gift_card_fulfillment(7002, order, sc.now))
    sc.later(days=1)
    sc.shopify("fulfillments/update", fulfilment(7001, order, sc.now, "delivered", "AAA111"))
    sc.later(hours=1)
    assert links(sc) == ["https://track.example/AAA111"]
    assert sc.templates_to(ASHA).count("delivered_v1") == 1


def test_an_order_whose_only_fulfilment_ships_nothing_hears_nothing_of_delivery(sqlite_url, scenario, world):
    """A gift card fulfilled on an order whose box is not fulfilled yet: no "shipped", no "delivered"
    (nothing has left the store), and the box is told of when it ships."""
    plain = {"step": "delivery.shipped", "name": "shipped_plain_v1", "category": "utility", "body_text": "Order {{1}} has shipped",
             "body": ["order.name"]}
    sc = start(scenario, sqlite_url, shipped=plain)
    order = p.with_gift_card(SHOPIFY.order(1, ASHA, sc.now, cod=False))
    SHOPIFY.place(sc, order)
    gift = p.shopify_gift_card_fulfillment(7000, order, sc.now)
    sc.shopify("fulfillments/create", gift)
    sc.later(hours=1)
    sc.shopify("fulfillments/update", {**gift, "updated_at": p.iso(sc.now)})  # Shopify repeats itself
    sc.later(days=2)
    assert sc.templates_to(ASHA) == ["order_thanks_v1"]


# ---- a parcel no carrier ever reports on (a local courier Shopify does not track) ----------------

def _delivery_runs(sc: Any) -> dict[str, str]:
    return {j["subject"]: j["status"] for j in sc.contact(ASHA)["journeys"] if j["journey"] == "delivery"}


def _delivery_in_her_new_case(sc: Any) -> list[dict[str, Any]]:
    """She writes a question of her own, quoting nothing: the delivery runs her new case lists as active."""
    sc.say(ASHA, "Do you have the kurta in blue?")
    sc.later(minutes=10)
    case = next(c for c in sc.handoffs(status="open") if "in blue" in str(c["context"]))
    return [j for j in case["context"]["active_journeys"] if j["journey"] == "delivery"]


def test_a_second_box_no_carrier_reports_on_ends_the_run_quietly_a_week_after_the_first_arrived(sqlite_url, scenario, world):
    """Before: the second box went with a local courier Shopify does not track (LOCAL1: it never gets a
    carrier status); the tracked box arrived and the run waited for LOCAL1's news for ever, her "latest"
    run, taking her unquoted replies months later. Whether LOCAL1 arrived is not known: she is not told
    "delivered"; the run ends a week after the tracked box arrived."""
    sc = start(scenario, sqlite_url)
    order = SHOPIFY.order(1, ASHA, sc.now, cod=False)
    SHOPIFY.place(sc, order)
    sc.later(hours=1)
    sc.shopify("fulfillments/create", fulfilment(7001, order, sc.now, "in_transit", "AAA111"))
    sc.later(hours=1)
    sc.shopify("fulfillments/create", fulfilment(7002, order, sc.now, None, "LOCAL1"))
    sc.later(days=1)
    sc.shopify("fulfillments/update", fulfilment(7001, order, sc.now, "delivered", "AAA111"))
    subject = f"order:{SHOPIFY.order_id(1)}"
    sc.later(days=6)
    assert _delivery_runs(sc) == {subject: "active"}  # a week for LOCAL1's news
    sc.later(days=2)
    assert _delivery_runs(sc) == {subject: "finished"}
    assert "delivered_v1" not in sc.templates_to(ASHA)
    assert _delivery_in_her_new_case(sc) == []


def test_an_only_parcel_no_carrier_reports_on_ends_the_run_quietly_after_a_week(sqlite_url, scenario, world):
    """Before: the order's one box went with a courier Shopify does not track; she heard "shipped" with
    its number, and the run stayed active for ever."""
    sc = start(scenario, sqlite_url)
    order = SHOPIFY.order(1, ASHA, sc.now, cod=False)
    SHOPIFY.place(sc, order)
    sc.later(hours=1)
    sc.shopify("fulfillments/create", fulfilment(7001, order, sc.now, None, "LOCAL1"))
    subject = f"order:{SHOPIFY.order_id(1)}"
    sc.later(days=6)
    assert links(sc) == ["https://track.example/LOCAL1"]
    assert _delivery_runs(sc) == {subject: "active"}
    sc.later(days=2)
    assert _delivery_runs(sc) == {subject: "finished"}
    assert "delivered_v1" not in sc.templates_to(ASHA)
    assert _delivery_in_her_new_case(sc) == []


def test_news_of_the_untracked_box_within_the_week_is_followed_to_its_arrival(sqlite_url, scenario, world):
    """The courier starts reporting on LOCAL1 three days after the tracked box arrived: the run follows it
    past the week and tells her "delivered" when it arrives, as for any parcel."""
    sc = start(scenario, sqlite_url)
    order = SHOPIFY.order(1, ASHA, sc.now, cod=False)
    SHOPIFY.place(sc, order)
    sc.later(hours=1)
    sc.shopify("fulfillments/create", fulfilment(7001, order, sc.now, "in_transit", "AAA111"))
    sc.shopify("fulfillments/create", fulfilment(7002, order, sc.now, None, "LOCAL1"))
    sc.later(days=1)
    sc.shopify("fulfillments/update", fulfilment(7001, order, sc.now, "delivered", "AAA111"))
    sc.later(days=3)
    sc.shopify("fulfillments/update", fulfilment(7002, order, sc.now, "in_transit", "LOCAL1"))
    sc.later(days=7)
    subject = f"order:{SHOPIFY.order_id(1)}"
    assert _delivery_runs(sc) == {subject: "active"}
    sc.shopify("fulfillments/update", fulfilment(7002, order, sc.now, "delivered", "LOCAL1"))
    sc.later(hours=1)
    assert sc.templates_to(ASHA).count("delivered_v1") == 1
    assert _delivery_runs(sc) == {subject: "finished"}


def test_a_run_left_waiting_on_an_untracked_parcel_before_the_week_rule_ends_a_week_after_the_upgrade(own_db_url, scenario, world):  # noqa: F811
    """Before: the week's timer is set when only parcels without carrier news are left; a run already so
    before that rule (its box with a courier Shopify does not track, no timer) never met that moment and
    stayed active for ever, her "latest" run. The upgrade (migration 0028) gives it its timer, a week after
    its last news, marked as listening (the reorder does not count her busy); then it ends quietly as any."""
    sc = start(scenario, own_db_url)
    order = SHOPIFY.order(1, ASHA, sc.now, cod=False)
    SHOPIFY.place(sc, order)
    sc.later(hours=1)
    sc.shopify("fulfillments/create", fulfilment(7001, order, sc.now, None, "LOCAL1"))
    sc.later(hours=1)
    subject = f"order:{SHOPIFY.order_id(1)}"
    db, store_id = sc.runtime.db, sc.runtime.store_ids[sc.key]

    command.downgrade(alembic_config(db.engine), "0027")
    with db.engine.begin() as conn:  # the run as the code before the rule left it: no timer, nothing listening
        [(run_id, contact_id, state)] = conn.execute(select(m.JourneyRun.id, m.JourneyRun.contact_id, m.JourneyRun.state).where(
            m.JourneyRun.store_id == store_id, m.JourneyRun.journey == "delivery", m.JourneyRun.subject == subject)).all()
        assert state["parcels"] == {"7001": "none"}
        conn.execute(update(m.JourneyRun).where(m.JourneyRun.id == run_id).values(
            next_due_at=None, state={k: v for k, v in state.items() if k != "_listening"}))
    migrate(db.engine)

    with db.engine.connect() as conn:
        assert busy_with(conn, store_id, contact_id, sc.now) == ()  # only listening: no reorder held back for it
    sc.later(days=5)
    assert _delivery_runs(sc) == {subject: "active"}  # a week for LOCAL1's news
    sc.later(days=2)
    assert _delivery_runs(sc) == {subject: "finished"}
    assert "delivered_v1" not in sc.templates_to(ASHA)
    assert _delivery_in_her_new_case(sc) == []
