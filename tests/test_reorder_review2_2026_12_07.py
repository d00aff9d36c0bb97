"""Reorder windows, second review (2026-12-07): a tick that stopped after a batch of windows it only
cancelled or held, a past subscription that silenced a product for good, and two variants of one
product offered as a cart of the first one."""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import insert, select

from connector.reorder.windows import run_reorder_tick
from connector.storage import models as m
from tests.helpers import running_app
from tests.test_reorder import NEEM, T0, Clock, _basket, _consent, _links, _order, _outbox, _post, _settings
from tests.test_reorder_suppression import _statuses, _woo, _woo_buyer, _wpost


# ---- 1. a batch of windows that were only cancelled or held does not end the tick ----------------------
def test_due_windows_behind_a_full_batch_of_cancelled_ones_open_in_the_same_tick(db_url):
    """500 windows came due first whose lines are gone from their orders (returned, or taken off by an
    edit): the tick cancelled them, counted nothing as moved and stopped, so Asha's due window waited for
    the next tick (``worker.reorder_minutes``, 15 minutes; a whole batch more for every further 500 such
    windows, and sold-out products' held windows come back due every 6 hours). It opens in this tick now."""
    settings = _settings(db_url, follow_up_days=None)
    clock = Clock(T0)
    with running_app(settings) as (client, runtime):
        runtime.processor.clock = clock
        sid, store = runtime.store_ids["shop-a"], settings.stores[0]
        _post(client, "customers_whats_app_marketing_consent/update", _consent())
        _post(client, "orders/create", _order(5001, T0, qty=1))  # due at T0 + 4 d transit + 30 d - 3 d lead
        runtime.processor.drain()
        clock.now = T0 + timedelta(days=30, hours=12)
        assert run_reorder_tick(runtime.db, store, sid, clock.now)[1].opened == 0  # the daily full scan: nothing due yet
        with runtime.db.engine.begin() as conn:
            contact = conn.execute(select(m.ReorderWindow.contact_id)).scalar_one()
            conn.execute(insert(m.ReorderWindow), [dict(
                store_id=sid, contact_id=contact, order_external_id=f"gone-{n}", product_key="p:9001", product_id="9001",
                variant_id="49001", sku="NEEM-100", title="Neem face wash", quantity=1, placed_at=T0 - timedelta(days=1), anchor="placed",
                anchor_at=T0, cycle_days=30.0, cycle_source="config", opens_at=clock.now, status="pending", updated_at=clock.now)
                for n in range(500)])
        clock.now = T0 + timedelta(days=31, hours=1)  # an incremental tick (the full scan ran 13 hours ago)
        _scan, opened = run_reorder_tick(runtime.db, store, sid, clock.now)
        statuses = _statuses(runtime)
    assert opened.opened == 1
    assert [(o.step, o.status) for o in _outbox(runtime)] == [("reminder", "pending")]
    assert statuses[("5001", "p:9001")] == "opened"
    assert sum(1 for (order, _), status in statuses.items() if order.startswith("gone-") and status == "cancelled") == 500


# ---- 2. a subscription she cancelled does not silence the product for good ----------------------------
def test_a_one_off_purchase_after_her_subscription_ended_gets_its_reminder(db_url):
    """She bought the docs' order at T0, a renewal came a month later (``created_via: subscription``), then
    she cancelled the subscription and, 40 days on, bought product 22 again at the checkout. Any renewal in
    her history kept every window of the product closed, so she was never reminded of it again. Her latest
    purchase of it decides now: a renewal (the store sends the next box itself) opens none; a one-off does."""
    with _woo_buyer(db_url, 8201) as (client, runtime, clock, store, sid):
        clock.now = T0 + timedelta(days=30)
        _wpost(client, "order.created", _woo(8202, clock.now, "processing", created_via="subscription"))
        runtime.processor.drain()
        run_reorder_tick(runtime.db, store, sid, clock.now)
        clock.now = T0 + timedelta(days=70)
        one_off = _woo(8203, clock.now, "processing")
        one_off["line_items"] = [li for li in one_off["line_items"] if li["product_id"] == 22]
        _wpost(client, "order.created", one_off)
        runtime.processor.drain()
        run_reorder_tick(runtime.db, store, sid, clock.now)
        clock.now = T0 + timedelta(days=101, hours=1)  # 4 d transit + 30 d - 3 d lead after the one-off
        opened = run_reorder_tick(runtime.db, store, sid, clock.now)[1]
        statuses = _statuses(runtime)
    assert opened.opened == 1
    assert [o.step for o in _outbox(runtime)] == ["reminder"]
    assert statuses[("8203", "p:22")] == "opened"
    assert statuses[("8201", "p:93")] == "reordered"  # product 93 still renews by itself: no window after the renewal
    assert ("8202", "p:93") not in statuses


def test_an_extra_box_bought_while_subscribed_is_not_reminded_once_the_next_renewal_came(db_url):
    """The other side of the rule: while subscribed she bought one extra box of product 22 at the checkout. Its
    window is planned (the orders cannot tell an extra box from a one-off after cancelling), and the next
    renewal, which comes before it is due, marks it ``reordered``: no reminder."""
    with _woo_buyer(db_url, 8401) as (client, runtime, clock, store, sid):
        for day, order_id, via in ((30, 8402, "subscription"), (35, 8403, "checkout"), (60, 8404, "subscription")):
            clock.now = T0 + timedelta(days=day)
            body = _woo(order_id, clock.now, "processing", created_via=via)
            if via == "checkout":
                body["line_items"] = [li for li in body["line_items"] if li["product_id"] == 22]
            _wpost(client, "order.created", body)
            runtime.processor.drain()
            run_reorder_tick(runtime.db, store, sid, clock.now)
        clock.now = T0 + timedelta(days=66, hours=1)  # the extra box's time: 4 d transit + 30 d - 3 d lead after day 35
        run_reorder_tick(runtime.db, store, sid, clock.now)
        statuses = _statuses(runtime)
    assert _outbox(runtime) == []
    assert statuses[("8403", "p:22")] == "reordered" and ("8404", "p:22") not in statuses


# ---- 3. two variants of one product: each with its own quantity in the link -----------------------------
def test_two_variants_of_one_product_are_offered_each_with_its_own_quantity(db_url):
    """Asha bought one 100 ml and two 200 ml face washes in one order. The window is the product's, its
    cycle by the three units as before; the reminder's cart permalink offered three of the 100 ml
    (``/cart/49001:3``). It now names each variant with its own quantity (``/cart/49001:1,49011:2``)."""
    settings = _settings(db_url, follow_up_days=None, cycles={"9001": "30d"})
    large = {**NEEM, "variant_id": 49011, "sku": "NEEM-200"}
    clock = Clock(T0)
    with running_app(settings) as (client, runtime):
        runtime.processor.clock = clock
        sid, store = runtime.store_ids["shop-a"], settings.stores[0]
        _post(client, "customers_whats_app_marketing_consent/update", _consent())
        _post(client, "orders/create", _basket(5001, T0, (NEEM, 1), (large, 2)))
        runtime.processor.drain()
        clock.now = T0 + timedelta(days=90)  # 4 d transit + 3 x 30 d - 3 d lead = day 91: not yet
        assert run_reorder_tick(runtime.db, store, sid, clock.now)[1].opened == 0
        clock.now = T0 + timedelta(days=91, hours=1)
        assert run_reorder_tick(runtime.db, store, sid, clock.now)[1].opened == 1
        links = _links(runtime, sid)
    assert links == ["https://shop-a.myshopify.com/cart/49001:1,49011:2"]


def test_a_woocommerce_link_offers_the_variation_she_bought_most_of_with_its_own_quantity(db_url):
    """WooCommerce's add-to-cart link takes one item (``add-to-cart`` is read as one id), so two variations
    cannot share it: it offered the first variation with both lines' units (four of variation 23, of which
    she bought one). It now offers the variation she bought most of, with its own quantity."""
    with _woo_buyer(db_url, 8301) as (client, runtime, clock, store, sid):
        order = _woo(8301, T0, "processing")
        first = next(li for li in order["line_items"] if li["product_id"] == 22)
        order["line_items"].append({**first, "id": first["id"] + 1000, "variation_id": 24, "quantity": 3, "sku": "22-L"})
        order["date_modified_gmt"] = (T0 + timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M:%S")
        clock.now = T0 + timedelta(hours=1)
        _wpost(client, "order.updated", order)
        runtime.processor.drain()
        run_reorder_tick(runtime.db, store, sid, clock.now)
        clock.now = T0 + timedelta(days=121, hours=1)  # 4 d transit + 4 x 30 d - 3 d lead
        run_reorder_tick(runtime.db, store, sid, clock.now)
        links = _links(runtime, sid)
    assert "https://bloom.example/?add-to-cart=24&quantity=3" in links
    assert not any("add-to-cart=23" in link for link in links)
