"""Reorder reminders and the product's life in the store: deleted (Shopify ``products/delete``, WooCommerce
``product.deleted``, both bodies only the id), archived and sold again, and order lines that name no product
id (keyed by SKU or title). Each drives the real webhook path, then the reorder tick, and checks what the
customer would get."""

from __future__ import annotations

from datetime import datetime, timedelta

import pytest
from sqlalchemy import select

from adapters.shopify.subscriptions import TOPICS as SHOPIFY_SUBSCRIPTIONS
from connector.config import parse_settings
from connector.install.woocommerce import TOPICS as WOO_SUBSCRIPTIONS
from connector.reorder.windows import run_reorder_tick
from connector.storage import models as m
from tests.conftest import SECRETS, settings_dict
from tests.helpers import dumps, running_app, woo_headers
from tests.test_reorder import T0, Clock, _consent, _order, _outbox, _post, _settings
from tests.test_reorder_suppression import _shopify_buyer, _statuses, _woo_buyer, _woo_product


def _wpost(client, topic: str, body: dict, *, delivery: str = "b4c1d0f1e2") -> None:
    raw = dumps(body)
    headers = {**woo_headers(raw, SECRETS["woo"], topic), "X-WC-Webhook-Delivery-ID": delivery}
    r = client.post("/webhooks/woocommerce/woo", content=raw, headers=headers)
    assert r.status_code == 200, r.text


def _neem(status: str, at: datetime) -> dict:
    """Shopify's products/update body for the Neem face wash (product 9001, its one variant NEEM-100)."""
    return {"id": 9001, "title": "Neem face wash", "tags": "", "status": status, "updated_at": at.isoformat(),
            "variants": [{"id": 49001, "product_id": 9001, "sku": "NEEM-100"}]}


def _tick(runtime, store, sid, clock: Clock, at: datetime) -> None:
    clock.now = at
    run_reorder_tick(runtime.db, store, sid, at)


# ---- 1. a deleted product ----------------------------------------------------------------------
def test_a_product_deleted_in_shopify_gets_no_reminder_even_once_its_order_lines_lose_the_product_id(db_url):
    """The merchant deletes the Neem face wash three days after Asha bought it. ``products/delete`` was not
    subscribed, so her window stayed pending; and Shopify then sends her order's lines with ``product_id``
    and ``variant_id`` null, which planned a new window under the line's SKU: she was reminded to reorder a
    product that no longer exists."""
    assert "PRODUCTS_DELETE" in SHOPIFY_SUBSCRIPTIONS and "product.deleted" in WOO_SUBSCRIPTIONS  # install subscribes them
    with _shopify_buyer(db_url, 6001) as (client, runtime, clock, store, sid, order):
        clock.now = T0 + timedelta(days=3)
        _post(client, "products/delete", {"id": 9001})
        runtime.processor.drain()
        deleted = _statuses(runtime)
        clock.now = T0 + timedelta(days=4)
        unlinked = {**order["line_items"][0], "product_id": None, "variant_id": None}
        _post(client, "orders/updated", {**order, "line_items": [unlinked], "updated_at": clock.now.isoformat(), "tags": "gift"})
        runtime.processor.drain()
        for at in (T0 + timedelta(days=4, hours=1), T0 + timedelta(days=31, hours=1), T0 + timedelta(days=32)):
            _tick(runtime, store, sid, clock, at)
    assert deleted == {("6001", "p:9001"): "cancelled"}
    assert _outbox(runtime) == []
    assert _statuses(runtime) == {("6001", "p:9001"): "cancelled"}


def test_a_woocommerce_product_binned_loses_its_reminder_and_gets_it_back_when_restored_and_published(db_url):
    """Product 22 goes to the bin (``product.deleted``, body only the id), comes back as a draft
    (``product.restored``), is published, binned again (the same body, another delivery) and restored as
    published: her window follows each step, and the reminder goes on its day."""
    with _woo_buyer(db_url, 8601) as (client, runtime, clock, store, sid):
        steps = []
        for day, topic, body, delivery in (
            (3, "product.deleted", {"id": 22}, "d1"),
            (5, "product.restored", _woo_product(22, status="draft", at=T0 + timedelta(days=5)), "d2"),
            (6, "product.updated", _woo_product(22, at=T0 + timedelta(days=6)), "d3"),
            (8, "product.deleted", {"id": 22}, "d4"),
            (9, "product.restored", _woo_product(22, at=T0 + timedelta(days=9)), "d5"),
        ):
            clock.now = T0 + timedelta(days=day)
            _wpost(client, topic, body, delivery=delivery)
            runtime.processor.drain()
            _tick(runtime, store, sid, clock, clock.now + timedelta(minutes=5))
            steps.append(_statuses(runtime)[("8601", "p:22")])
        _tick(runtime, store, sid, clock, T0 + timedelta(days=31, hours=1))  # 22's window: 4 d transit + 30 d - 3 d lead
    assert steps == ["cancelled", "cancelled", "pending", "cancelled", "pending"]
    assert [o.payload["subject"] for o in _outbox(runtime)] == ["reorder:8601:p:22"]
    assert _statuses(runtime) == {("8601", "p:22"): "opened", ("8601", "p:93"): "pending"}


# ---- 2. a product sold again -------------------------------------------------------------------
@pytest.mark.parametrize("back_days, reminded", [(20, True), (32.5, True), (36, False)],
                         ids=["back before it was due", "back a day after it was due", "back too late"])
def test_an_archived_product_sold_again_brings_back_the_reminder_if_it_is_still_timely(db_url, back_days, reminded):
    """Archived on day 2, the Neem face wash is active again later. Her window (due on day 31) had been
    cancelled for good, so she was never reminded. Back before the day, the reminder goes on the day; back
    within late_days (2) of it, at once; later than that, never (a reminder that late is not sent at all)."""
    back = T0 + timedelta(days=back_days)
    with _shopify_buyer(db_url, 6001) as (client, runtime, clock, store, sid, _order_body):
        clock.now = T0 + timedelta(days=2)
        _post(client, "products/update", _neem("archived", clock.now))
        runtime.processor.drain()
        sent_while_archived = []
        for at in sorted([back, *(T0 + timedelta(days=d, hours=1) for d in (10, 31, 32, 33, 36, 37))]):
            clock.now = at
            if at == back:
                _post(client, "products/update", _neem("active", at))
                runtime.processor.drain()
            elif at < back:
                sent_while_archived += _outbox(runtime)
            _tick(runtime, store, sid, clock, at)
        with runtime.db.engine.connect() as conn:
            window = conn.execute(select(m.ReorderWindow)).one()
    assert sent_while_archived == []
    if reminded:
        assert [(o.payload["subject"], o.step) for o in _outbox(runtime)] == [("reorder:6001:p:9001", "reminder")]
        assert window.status == "opened" and window.opened_at == max(back, T0 + timedelta(days=31, hours=1))
    else:
        assert _outbox(runtime) == [] and window.status == "cancelled"


def test_a_product_sold_again_does_not_bring_back_the_reminder_of_an_order_refunded_meanwhile(db_url):
    """Two customers bought the Neem face wash; it is archived, and while it is, Asha's order is refunded.
    Active again, Bela's reminder comes back; Asha's stays cancelled: her order is no purchase now."""
    settings = _settings(db_url)
    clock = Clock(T0)
    with running_app(settings) as (client, runtime):
        runtime.processor.clock = clock
        sid, store = runtime.store_ids["shop-a"], settings.stores[0]
        _post(client, "customers_whats_app_marketing_consent/update", _consent())
        _post(client, "customers_whats_app_marketing_consent/update", _consent(4242, "+919900022222"))
        asha = _order(6001, T0, qty=1)
        _post(client, "orders/create", asha)
        _post(client, "orders/create", _order(6002, T0, qty=1, phone="+91 99000 22222", customer_id=4242))
        runtime.processor.drain()
        _tick(runtime, store, sid, clock, T0)
        clock.now = T0 + timedelta(days=2)
        _post(client, "products/update", _neem("archived", clock.now))
        runtime.processor.drain()
        _tick(runtime, store, sid, clock, T0 + timedelta(days=10))
        clock.now = T0 + timedelta(days=15)
        _post(client, "orders/updated", {**asha, "financial_status": "refunded", "updated_at": clock.now.isoformat()})
        runtime.processor.drain()
        clock.now = T0 + timedelta(days=20)
        _post(client, "products/update", _neem("active", clock.now))
        runtime.processor.drain()
        for day in (20, 31, 32):
            _tick(runtime, store, sid, clock, T0 + timedelta(days=day, hours=1))
    assert [o.payload["subject"] for o in _outbox(runtime)] == ["reorder:6002:p:9001"]
    assert _statuses(runtime) == {("6001", "p:9001"): "cancelled", ("6002", "p:9001"): "opened"}


# ---- 3. lines that name no product id ----------------------------------------------------------
NO_LINK = [  # a store whose reminder asks for a reply (a line with no product id has no cart link)
    {"step": "reorder.reminder", "name": "reorder_reply_v1", "category": "marketing",
     "body_text": "Hi {{1}}, running low on {{2}}? Reply YES and we will send it again.", "body": ["customer.first_name", "reorder.product"]},
]


@pytest.mark.parametrize("keyed_by", ["sku", "title"])
def test_an_archived_product_also_stops_the_reminder_for_lines_that_name_it_only_by_sku_or_title(db_url, keyed_by):
    """Her line names no product (a custom item, or one Shopify unlinked): its window is kept under the
    line's SKU, else its title. Archiving the product (whose variant has that SKU, and that title)
    cancelled only windows under its id, so she was reminded of it on day 31; back on day 32, she is."""
    raw = settings_dict(db_url)
    raw["stores"][0].update(templates=NO_LINK, policy={"quiet_hours": ""},
                            journeys={"reorder": {"cycles": {"NEEM-100": "30d"}, "lead_days": 3, "follow_up_days": None}})
    settings = parse_settings(raw, environ={})
    clock = Clock(T0)
    key = "s:NEEM-100" if keyed_by == "sku" else "t:neem face wash"
    with running_app(settings) as (client, runtime):
        runtime.processor.clock = clock
        sid, store = runtime.store_ids["shop-a"], settings.stores[0]
        _post(client, "customers_whats_app_marketing_consent/update", _consent())
        # by title: no SKU and so no configured cycle; bought twice, 30 days apart, her own cadence is the cycle
        for order_id, placed in ([(6001, T0)] if keyed_by == "sku" else [(6000, T0 - timedelta(days=30)), (6001, T0)]):
            order = _order(order_id, placed, qty=1)
            order["line_items"][0].update(product_id=None, variant_id=None, sku="NEEM-100" if keyed_by == "sku" else None)
            _post(client, "orders/create", order)
        runtime.processor.drain()
        _tick(runtime, store, sid, clock, T0)
        planned = _statuses(runtime)[("6001", key)]
        clock.now = T0 + timedelta(days=2)
        _post(client, "products/update", _neem("archived", clock.now))
        runtime.processor.drain()
        _tick(runtime, store, sid, clock, T0 + timedelta(days=31, hours=1))
        while_archived = (_outbox(runtime), _statuses(runtime)[("6001", key)])
        clock.now = T0 + timedelta(days=32)
        _post(client, "products/update", _neem("active", clock.now))
        runtime.processor.drain()
        _tick(runtime, store, sid, clock, T0 + timedelta(days=32, hours=1))
    assert planned == "pending"
    assert while_archived == ([], "cancelled")
    assert [(o.payload["subject"], o.status) for o in _outbox(runtime)] == [(f"reorder:6001:{key}", "pending")]
