"""Reorder reminders that must not go out: a refunded order, a subscription's renewal, a product the
store no longer sells, a customer who already reordered (under another number, or awaiting payment).
Each drives the real webhook path, then the reorder tick, and checks what the customer would get."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import select

from connector.config import parse_settings
from connector.reorder.windows import refresh_windows, run_reorder_tick
from connector.storage import models as m
from tests.conftest import FIXTURES, PHONE_ID_WOO, SECRETS, settings_dict
from tests.helpers import dumps, load_json, running_app, woo_headers
from tests.test_reorder import TEMPLATES, T0, Clock, _consent, _order, _outbox, _post, _settings, _start


def _statuses(runtime) -> dict[tuple[str, str], str]:
    with runtime.db.engine.connect() as conn:
        return {(w.order_external_id, w.product_key): w.status for w in conn.execute(select(m.ReorderWindow))}


def _woo(order_id: int, at: datetime, status: str, *, created_via: str = "checkout", phone: str = "+1 650 253 0000",
         paid: bool = True) -> dict:
    """The docs' example order (products 93 x2 and 22 x1) as ``order_id``, placed at ``at``."""
    woo = load_json(FIXTURES / "woocommerce" / "order.created.rest-v3-docs-example.json")
    stamp = at.strftime("%Y-%m-%dT%H:%M:%S")
    woo.update(id=order_id, number=str(order_id), status=status, created_via=created_via, date_created_gmt=stamp, date_modified_gmt=stamp,
               date_paid_gmt=stamp if paid else None, date_paid=stamp if paid else None)
    woo["billing"] = {**woo["billing"], "phone": phone}
    return woo


def _wpost(client, topic: str, body: dict) -> None:
    raw = dumps(body)
    r = client.post("/webhooks/woocommerce/woo", content=raw, headers=woo_headers(raw, SECRETS["woo"], topic))
    assert r.status_code == 200, r.text


def _woo_settings(db_url: str, **journey):
    raw = settings_dict(db_url)
    raw["stores"][2].update(templates=TEMPLATES, policy={"quiet_hours": ""},
                            journeys={"reorder": {"cycles": {"93": "30d", "22": "30d", "23": "30d"}, "follow_up_days": None, **journey}})
    return parse_settings(raw, environ={})


# ---- 7. a refunded order is no purchase -------------------------------------------------------
@pytest.mark.parametrize("full", [False, True], ids=["incremental tick", "daily full scan"])
def test_a_refunded_woocommerce_order_gets_no_reorder_reminder(db_url, full):
    """WooCommerce keeps a refunded order's lines (the refund is an object of its own): the order,
    returned and refunded five days after it was placed, still read as two products bought, and the
    customer was asked to reorder them. Its windows, planned before the refund, are cancelled."""
    with _woo_buyer(db_url, 8101) as (client, runtime, clock, store, sid):
        assert set(_statuses(runtime).values()) == {"pending"}
        clock.now += timedelta(days=5)
        refunded = _woo(8101, T0, "refunded")
        refunded["date_modified_gmt"] = clock.now.strftime("%Y-%m-%dT%H:%M:%S")
        _wpost(client, "order.updated", refunded)
        runtime.processor.drain()
        refresh_windows(runtime.db, store, sid, clock.now, full=full)
        clock.now = T0 + timedelta(days=31, hours=1)  # product 22's window (4 d transit + 30 d - 3 d lead)
        run_reorder_tick(runtime.db, store, sid, clock.now)
        clock.now = T0 + timedelta(days=61, hours=1)  # and two packs of 93
        run_reorder_tick(runtime.db, store, sid, clock.now)
    assert _outbox(runtime) == []
    assert _statuses(runtime) == {("8101", "p:22"): "cancelled", ("8101", "p:93"): "cancelled"}


def test_a_fully_refunded_shopify_order_whose_lines_stay_gets_no_reorder_reminder(db_url):
    """A Shopify refund of the money alone (no line refunded or restocked) leaves ``current_quantity``
    as it was; ``financial_status: refunded`` is what says the purchase was undone."""
    with _shopify_buyer(db_url, 6301) as (client, runtime, clock, store, sid, order):
        clock.now += timedelta(days=6)
        _post(client, "orders/updated", {**order, "financial_status": "refunded", "updated_at": clock.now.isoformat()})
        runtime.processor.drain()
        clock.now = T0 + timedelta(days=32)
        run_reorder_tick(runtime.db, store, sid, clock.now)
    assert _outbox(runtime) == []
    assert _statuses(runtime) == {("6301", "p:9001"): "cancelled"}


# ---- 6. a subscription renews by itself -------------------------------------------------------
def test_a_woocommerce_subscriber_is_not_asked_to_reorder_what_renews_by_itself(db_url):
    """The first box is a checkout order, the next a renewal the store raises itself (``created_via:
    subscription``): no window for the renewal, so no "reorder in one tap" three days before the next one."""
    with _woo_buyer(db_url, 8201) as (client, runtime, clock, store, sid):
        clock.now = T0 + timedelta(days=30)
        _wpost(client, "order.created", _woo(8202, clock.now, "processing", created_via="subscription"))
        runtime.processor.drain()
        for day in (30, 61, 62, 92):
            clock.now = T0 + timedelta(days=day, hours=1)
            run_reorder_tick(runtime.db, store, sid, clock.now)
        with runtime.db.engine.connect() as conn:
            runs = conn.execute(select(m.JourneyRun).where(m.JourneyRun.journey == "reorder")).all()
    assert _outbox(runtime) == [] and runs == []
    assert _statuses(runtime) == {("8201", "p:22"): "reordered", ("8201", "p:93"): "reordered"}


def test_a_shopify_order_raised_by_a_subscription_contract_gets_no_reorder_reminder(db_url):
    settings = _settings(db_url)
    clock = Clock(T0)
    with running_app(settings) as (client, runtime):
        runtime.processor.clock = clock
        sid, store = runtime.store_ids["shop-a"], settings.stores[0]
        _post(client, "customers_whats_app_marketing_consent/update", _consent())
        renewal = _order(6101, T0, qty=1)
        renewal["source_name"] = "subscription_contract_checkout_one"
        _post(client, "orders/create", renewal)
        runtime.processor.drain()
        for day in (0, 32, 33):
            clock.now = T0 + timedelta(days=day)
            run_reorder_tick(runtime.db, store, sid, clock.now)
        with runtime.db.engine.connect() as conn:
            channel = conn.execute(select(m.Order.channel)).scalar_one()
    assert channel == "subscription"
    assert _outbox(runtime) == [] and _statuses(runtime) == {}


@pytest.mark.parametrize("source, channel", [("subscription_contract", "subscription"), ("subscription_contract_checkout_one", "subscription"),
                                             ("pos", "pos"), ("web", "online"), (None, "online")])
def test_shopify_source_name_names_the_sales_channel_in_webhooks_and_the_reconcile(source, channel):
    from adapters.shopify import graphql
    from adapters.shopify.normalize import normalize

    store = parse_settings(settings_dict("sqlite://"), environ={}).stores[0]
    [event] = normalize("orders/create", {**_order(6101, T0), "source_name": source}, store)
    assert event.order.channel.value == channel
    assert graphql.sales_channel(source).value == channel  # the reconcile's ``sourceName`` reads the same


# ---- 5. a product the store no longer sells ---------------------------------------------------
def _neem(status: str = "active", tags: str = "replenish:30d", at: datetime = T0) -> dict:
    return {"id": 9001, "title": "Neem face wash", "tags": tags, "status": status, "updated_at": at.isoformat()}


@pytest.mark.parametrize("change", ["archived", "draft", "tag removed"])
def test_no_reorder_reminder_for_a_product_archived_or_whose_replenish_tag_was_removed(db_url, change):
    """The window was planned from the product's ``replenish:30d`` tag; two days later the merchant
    archives the product (or makes it a draft, or takes the tag off). Before, the window stayed
    pending and the customer got a cart link to a product no longer for sale."""
    raw = settings_dict(db_url)
    raw["stores"][0].update(templates=TEMPLATES, policy={"quiet_hours": ""}, journeys={"reorder": {"lead_days": 3}})
    settings = parse_settings(raw, environ={})
    clock = Clock(T0)
    with running_app(settings) as (client, runtime):
        runtime.processor.clock = clock
        sid, store = runtime.store_ids["shop-a"], settings.stores[0]
        _post(client, "customers_whats_app_marketing_consent/update", _consent())
        _post(client, "products/update", _neem())
        _post(client, "orders/create", _order(6001, T0, qty=1))
        runtime.processor.drain()
        run_reorder_tick(runtime.db, store, sid, clock.now)
        assert _statuses(runtime) == {("6001", "p:9001"): "pending"}
        clock.now += timedelta(days=2)
        _post(client, "products/update", _neem(tags="", at=clock.now) if change == "tag removed" else _neem(change, at=clock.now))
        runtime.processor.drain()
        for day in (3, 32, 33):
            clock.now = T0 + timedelta(days=day)
            run_reorder_tick(runtime.db, store, sid, clock.now)
    assert _outbox(runtime) == []
    assert _statuses(runtime) == {("6001", "p:9001"): "cancelled"}


@contextmanager
def _shopify_buyer(db_url: str, order_id: int, *, settings: Any = None) -> Iterator[tuple[Any, Any, Clock, Any, int, dict]]:
    """The Shopify store (``settings``, or the reorder tests' own) with one customer (WhatsApp marketing consent)
    who bought one Neem face wash as ``order_id`` at T0, its window planned: (client, runtime, clock, store,
    store id, the order's body)."""
    settings = settings or _settings(db_url)
    clock = Clock(T0)
    with running_app(settings) as (client, runtime):
        runtime.processor.clock = clock
        sid, store = runtime.store_ids["shop-a"], settings.stores[0]
        _post(client, "customers_whats_app_marketing_consent/update", _consent())
        order = _order(order_id, T0, qty=1)
        _post(client, "orders/create", order)
        runtime.processor.drain()
        run_reorder_tick(runtime.db, store, sid, clock.now)
        yield client, runtime, clock, store, sid, order


@contextmanager
def _woo_buyer(db_url: str, order_id: int) -> Iterator[tuple[Any, Any, Clock, Any, int]]:
    """The WooCommerce store with one customer (opted in by START) who bought the docs' example order
    (products 93 x2 and 22 x1) as ``order_id`` at T0, its windows planned: (client, runtime, clock, store, store id)."""
    settings = _woo_settings(db_url)
    clock = Clock(T0)
    with running_app(settings) as (client, runtime):
        runtime.processor.clock = clock
        sid, store = runtime.store_ids["woo"], settings.stores[2]
        _wpost(client, "order.created", _woo(order_id, T0, "processing"))
        _start(client, "16502530000", PHONE_ID_WOO, T0)
        runtime.processor.drain()
        run_reorder_tick(runtime.db, store, sid, clock.now)
        yield client, runtime, clock, store, sid


def _woo_product(pid: int, status: str = "publish", stock: str = "instock", at: datetime = T0) -> dict:
    return {"id": pid, "name": f"Product {pid}", "tags": [], "status": status, "stock_status": stock,
            "date_modified_gmt": at.strftime("%Y-%m-%dT%H:%M:%S")}


def test_a_woocommerce_product_binned_gets_no_reminder_and_one_sold_out_waits_until_it_is_back(db_url):
    """Product 22 is moved to the bin: its window is cancelled at once. Product 93 is sold out when its
    window comes: nothing goes out while it is; back in stock a day later, the reminder goes."""
    with _woo_buyer(db_url, 8401) as (client, runtime, clock, store, sid):
        clock.now += timedelta(days=10)
        _wpost(client, "product.updated", _woo_product(22, status="trash", at=clock.now))
        _wpost(client, "product.updated", _woo_product(93, stock="outofstock", at=clock.now))
        runtime.processor.drain()
        assert _statuses(runtime) == {("8401", "p:22"): "cancelled", ("8401", "p:93"): "pending"}
        clock.now = T0 + timedelta(days=61, hours=1)  # 93's window: 4 d transit + 2 x 30 d - 3 d lead
        run_reorder_tick(runtime.db, store, sid, clock.now)
        clock.now += timedelta(hours=7)
        run_reorder_tick(runtime.db, store, sid, clock.now)
        held = (_outbox(runtime), _statuses(runtime))
        clock.now += timedelta(hours=17)
        _wpost(client, "product.updated", _woo_product(93, at=clock.now))  # restocked
        runtime.processor.drain()
        clock.now += timedelta(hours=6)
        run_reorder_tick(runtime.db, store, sid, clock.now)
    assert held == ([], {("8401", "p:22"): "cancelled", ("8401", "p:93"): "pending"})
    assert [(o.payload["subject"], o.status) for o in _outbox(runtime)] == [("reorder:8401:p:93", "pending")]
    assert _statuses(runtime) == {("8401", "p:22"): "cancelled", ("8401", "p:93"): "opened"}


# ---- 8. she already reordered -----------------------------------------------------------------
@pytest.mark.parametrize("same", ["customer account", "email"])
def test_no_reminder_when_she_already_reordered_under_another_phone_number(db_url, same):
    """Her reorder came with another phone number (so another contact), but the same Shopify customer
    account, or only the same email (a guest checkout). Before, the first window opened anyway and she was
    asked to reorder what she bought twelve days earlier."""
    with _shopify_buyer(db_url, 6201) as (client, runtime, clock, store, sid, _order_body):
        clock.now = T0 + timedelta(days=19)
        again = _order(6202, clock.now, qty=1, phone="+91 99000 11111",
                       customer_id=115310627314723954 if same == "customer account" else 4242)
        again["customer"]["phone"] = None
        _post(client, "orders/create", again)
        runtime.processor.drain()
        for day in (19, 32, 33):
            clock.now = T0 + timedelta(days=day, hours=1)
            run_reorder_tick(runtime.db, store, sid, clock.now)
        with runtime.db.engine.connect() as conn:
            contacts = conn.execute(select(m.Order.external_id, m.Order.contact_id).order_by(m.Order.id)).all()
            first = conn.execute(select(m.ReorderWindow).where(m.ReorderWindow.order_external_id == "6201")).one()
    assert contacts[0][1] != contacts[1][1]  # two contacts: the phone numbers differ
    assert _outbox(runtime) == []
    assert (first.status, first.reorder_order_id) == ("reordered", "6202")


def test_no_reminder_while_her_bank_transfer_reorder_is_on_hold_and_nothing_is_credited(db_url):
    """A WooCommerce reorder paid by bank transfer waits ``on-hold`` (unpaid) until the money comes: it is
    no purchase for the scans yet, but she has reordered, so no reminder goes out while it waits (the
    window is held, checked again later); once the money comes the window is ``reordered``. With no
    reminder, no run exists to credit the reorder's revenue to."""
    with _woo_buyer(db_url, 8301) as (client, runtime, clock, store, sid):
        clock.now = T0 + timedelta(days=25)
        bacs = _woo(8302, clock.now, "on-hold", paid=False)
        bacs["payment_method"], bacs["payment_method_title"] = "bacs", "Direct bank transfer"
        _wpost(client, "order.created", bacs)
        runtime.processor.drain()
        for hours in range(25 * 24, 32 * 24, 6):  # the scheduled tick, every few hours here (the window is due on day 31)
            clock.now = T0 + timedelta(hours=hours + 1)
            run_reorder_tick(runtime.db, store, sid, clock.now)
        waiting = _statuses(runtime)
        paid_at = T0 + timedelta(days=32, hours=6)  # the money comes a day later (a window held longer than late_days expires)
        _wpost(client, "order.updated", {**bacs, "status": "processing", "date_paid_gmt": paid_at.strftime("%Y-%m-%dT%H:%M:%S"),
                                         "date_modified_gmt": paid_at.strftime("%Y-%m-%dT%H:%M:%S")})
        clock.now = paid_at
        runtime.processor.drain()
        for hours in (7, 13, 19):
            clock.now = T0 + timedelta(days=32, hours=hours)
            run_reorder_tick(runtime.db, store, sid, clock.now)
        with runtime.db.engine.connect() as conn:
            runs = conn.execute(select(m.JourneyRun).where(m.JourneyRun.journey == "reorder")).all()
            by = {w.product_key: w.reorder_order_id for w in conn.execute(select(m.ReorderWindow)) if w.order_external_id == "8301"}
    assert waiting[("8301", "p:22")] == "pending"  # due on day 31, held while the transfer is on hold
    assert _outbox(runtime) == [] and runs == []
    assert _statuses(runtime)[("8301", "p:22")] == "reordered" and by["p:22"] == "8302"


def test_a_checkout_she_left_at_the_payment_page_holds_the_reminder_only_until_it_is_cancelled(db_url):
    """A WooCommerce order left ``pending`` at the card page for the same products is no reorder yet: the
    window waits while it stands, and once the store cancels it (its hold-stock time ran out) her reminder
    goes out. It used to mark the window reordered for good, so she never heard of it."""
    with _woo_buyer(db_url, 8301) as (client, runtime, clock, store, sid):
        clock.now = T0 + timedelta(days=25)
        left = _woo(8302, clock.now, "pending", paid=False)
        _wpost(client, "order.created", left)
        runtime.processor.drain()
        for day in (25, 31):
            clock.now = T0 + timedelta(days=day, hours=1)
            run_reorder_tick(runtime.db, store, sid, clock.now)
        before = _outbox(runtime)
        cancelled_at = (T0 + timedelta(days=31, hours=2)).strftime("%Y-%m-%dT%H:%M:%S")
        _wpost(client, "order.updated", {**left, "status": "cancelled", "date_modified_gmt": cancelled_at})
        clock.now = T0 + timedelta(days=31, hours=2)
        runtime.processor.drain()
        for hours in (8, 14):
            clock.now = T0 + timedelta(days=31, hours=hours)
            run_reorder_tick(runtime.db, store, sid, clock.now)
    assert before == []
    assert len(_outbox(runtime)) >= 1  # her reminder, once the unpaid order was cancelled


def test_a_product_selling_out_and_coming_back_forces_no_full_rescan(db_url):
    """WooCommerce sends a product update each time the last unit sells and when stock returns. A sold-out product's
    windows are only held as they come due, so the flip is recorded but must not make the next tick a full scan of
    the store's history (it did, every time); a product that stops being sold does."""
    settings = _woo_settings(db_url)
    clock = Clock(T0)
    modes = []
    with running_app(settings) as (client, runtime):
        runtime.processor.clock = clock
        sid, store = runtime.store_ids["woo"], settings.stores[2]
        _wpost(client, "order.created", _woo(8401, T0, "processing"))
        _start(client, "16502530000", PHONE_ID_WOO, T0)
        runtime.processor.drain()
        modes.append(refresh_windows(runtime.db, store, sid, clock.now).mode)
        for stock in ("outofstock", "instock", "outofstock", "instock"):
            clock.now += timedelta(minutes=15)
            _wpost(client, "product.updated", _woo_product(555, stock=stock, at=clock.now))
            runtime.processor.drain()
            clock.now += timedelta(minutes=1)
            modes.append(refresh_windows(runtime.db, store, sid, clock.now).mode)
    assert modes == ["full", "incremental", "incremental", "incremental", "incremental"]
