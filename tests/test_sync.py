"""Reconciliation: Shopify GraphQL and WooCommerce REST faked at the HTTP boundary (respx),
the inbox and cursors on SQLite and PostgreSQL (``db_url``), and the outage scenario end to end."""

from __future__ import annotations

import asyncio
import json
import logging
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path
from urllib.parse import parse_qs, urlparse

import httpx
import pytest
import respx
from sqlalchemy import func, select
from typer.testing import CliRunner

from adapters.shopify import graphql as gql
from adapters.shopify.client import ShopifyAdminClient
from adapters.shopify.normalize import normalize as shopify_normalize
from adapters.woocommerce.client import WooCommerceClient
from adapters.woocommerce.webhooks import envelope as woo_envelope
from connector import events as ev
from connector import sync as sync_mod
from connector.cli import app as cli_app
from connector.config import parse_settings
from connector.storage import models as m
from connector.storage.db import Database
from connector.storage.inbox import sync_stores, with_body
from connector.sync import SyncError, acquire_lease, read_cursor, reconcile_orders, run_periodic, upsert_cursor
from jobs.scheduler import build_scheduler
from tests.conftest import FIXTURES, SECRETS, settings_dict
from tests.helpers import dumps, load_json, running_app, shopify_headers

T = datetime(2026, 11, 20, 7, 0, tzinfo=timezone.utc)
SHOP_URL = "https://shop-a.example/admin/api/2026-07/graphql.json"
WOO_URL = "https://bloom.example/wp-json/wc/v3/orders"


def iso(dt: datetime) -> str:
    return dt.strftime("%Y-%m-%dT%H:%M:%SZ")


def gql_node(n: int, *, updated: datetime, created: datetime | None = None, cod: bool = False, paid: bool = False,
             cancelled: datetime | None = None, phone: str | None = None, oid: int | None = None) -> dict:
    created = created or updated - timedelta(minutes=30)
    return {
        "id": f"gid://shopify/Order/{oid or n}", "name": f"#{1000 + n}", "createdAt": iso(created), "updatedAt": iso(updated),
        "cancelledAt": iso(cancelled) if cancelled else None,
        "displayFinancialStatus": "PAID" if paid else "PENDING", "displayFulfillmentStatus": "UNFULFILLED",
        "paymentGatewayNames": ["Cash on Delivery (COD)"] if cod else (["shopify_payments"] if paid else ["bogus"]),
        "email": f"buyer{n}@example.com", "phone": phone or f"+91 98765 4{n:04d}", "currencyCode": "INR",
        "statusPageUrl": f"https://shop-a.example/orders/{n}/status", "tags": ["vip"], "test": False,
        "checkoutToken": f"tok{n}", "customerLocale": "en",
        "currentTotalPriceSet": {"shopMoney": {"amount": "1299.00", "currencyCode": "INR"}},
        "customer": {"id": f"gid://shopify/Customer/{500 + n}", "firstName": "Asha", "lastName": "K", "email": None, "phone": None},
        "shippingAddress": {"phone": None, "countryCodeV2": "IN", "firstName": "Asha", "lastName": "K"},
        "billingAddress": None,
        "lineItems": {"pageInfo": {"hasNextPage": False, "endCursor": None}, "nodes": [
            {"id": f"gid://shopify/LineItem/{9000 + n}", "quantity": 2, "title": "Tea", "sku": "TEA-1",
             "variant": {"id": "gid://shopify/ProductVariant/77"}, "product": {"id": "gid://shopify/Product/66"},
             "originalUnitPriceSet": {"shopMoney": {"amount": "649.50"}}}]},
    }


class FakeShopify:
    """Orders sorted by (updatedAt, id), ``updated_at:>='…'`` filter, Relay cursors, a leaky bucket; the
    customers pass's ``customers`` query the same way, from ``customers``."""

    def __init__(self, nodes: list[dict], *, events: list | None = None):
        self.orders = {n["id"]: n for n in nodes}
        self.customers: dict[str, dict] = {}  # Customer nodes: id, updatedAt, defaultPhoneNumber
        self.customer_queries: list[dict] = []
        self.events = events if events is not None else []
        self.throttle_calls: set[int] = set()
        self.fail_calls: set[int] = set()
        self.calls = 0
        self.queries: list[dict] = []
        self.counts: list[dict] = []  # ordersCount requests
        self.products: list[dict] = []  # Product nodes: id, title, tags, updatedAt, metafield
        self.product_queries: list[dict] = []
        self.on_page = None  # called with the variables before a page of orders is answered
        self.available = 900  # the bucket's level each answered page reports (throttleStatus.currentlyAvailable)

    def put(self, node: dict) -> None:
        self.orders[node["id"]] = node

    def handler(self, request: httpx.Request) -> httpx.Response:
        self.calls += 1
        body = json.loads(request.content)
        v = body["variables"]
        if "orders(" in body["query"]:
            self.queries.append(v)
        if self.calls in self.throttle_calls:
            self.events.append(("request", self.calls, "throttled"))
            return httpx.Response(200, json={
                "errors": [{"message": "Throttled", "extensions": {"code": "THROTTLED"}}],
                "extensions": {"cost": {"requestedQueryCost": 118, "actualQueryCost": None,
                                        "throttleStatus": {"maximumAvailable": 1000.0, "currentlyAvailable": 18, "restoreRate": 50.0}}}})
        if "products(" in body["query"]:  # products by id, Relay cursors
            self.product_queries.append(v)
            rows = sorted(self.products, key=lambda p: int(p["id"].rsplit("/", 1)[1]))
            if v.get("cursor"):
                rows = [p for p in rows if int(p["id"].rsplit("/", 1)[1]) > int(v["cursor"])]
            page, more = rows[: v["first"]], len(rows) > v["first"]
            end = page[-1]["id"].rsplit("/", 1)[1] if page else None
            return httpx.Response(200, json={"data": {"products": {"pageInfo": {"hasNextPage": more, "endCursor": end}, "nodes": page}}})
        if "ordersCount(" in body["query"]:  # the backfill's total: same search query, uncapped
            self.counts.append(v)
            assert "limit: null" in body["query"]
            since = v["q"].split(">='", 1)[1].rstrip("'")
            return httpx.Response(200, json={"data": {"ordersCount": {
                "count": sum(1 for n in self.orders.values() if n["updatedAt"] >= since), "precision": "EXACT"}}})
        self.events.append(("request", self.calls, v.get("cursor")))
        if self.calls in self.fail_calls:
            return httpx.Response(200, json={"errors": [{"message": "boom", "extensions": {"code": "BAD_REQUEST"}}]})
        since = v["q"].split(">='", 1)[1].rstrip("'")
        field, source = ("customers", self.customers) if "customers(" in body["query"] else ("orders", self.orders)
        if field == "customers":
            self.customer_queries.append(v)
        elif self.on_page is not None:
            self.on_page(v)
        rows = sorted((n for n in source.values() if n["updatedAt"] >= since), key=lambda n: (n["updatedAt"], n["id"]))
        if v.get("cursor"):
            after = tuple(v["cursor"].split("|", 1))
            rows = [n for n in rows if (n["updatedAt"], n["id"]) > after]
        page, more = rows[: v["first"]], len(rows) > v["first"]
        end = f"{page[-1]['updatedAt']}|{page[-1]['id']}" if page else None
        return httpx.Response(200, json={
            "data": {field: {"pageInfo": {"hasNextPage": more, "endCursor": end}, "nodes": page}},
            "extensions": {"cost": {"requestedQueryCost": 118, "actualQueryCost": 40,
                                    "throttleStatus": {"maximumAvailable": 1000.0, "currentlyAvailable": self.available, "restoreRate": 50.0}}}})


def shop_settings(db_url: str, **store: object):
    raw = settings_dict(db_url)
    raw["stores"][0].update(access_token="shpat_test", api_base_url="https://shop-a.example", **store)
    raw["stores"][2].update(consumer_key="ck_test", consumer_secret="cs_test")
    return parse_settings(raw, environ={})


def setup(db_url: str, **store: object):
    settings = shop_settings(db_url, **store)
    db = Database.from_url(db_url)
    ids = sync_stores(db, [(s.key, s.platform) for s in settings.stores])
    return settings, db, ids


def inbox(db: Database, store_id: int) -> list:
    with db.engine.connect() as conn:
        return conn.execute(with_body().where(m.InboxEvent.store_id == store_id).order_by(m.InboxEvent.id)).all()


def recorder(events: list):
    async def sleep(seconds: float) -> None:
        events.append(("sleep", round(seconds, 3)))
    return sleep


# ---- the normaliser ------------------------------------------------------------------------


def test_graphql_node_normalises_like_the_webhook():
    settings = shop_settings("sqlite://")
    store = settings.stores[0]
    node = gql_node(7, updated=T, cod=True)
    [event] = shopify_normalize("sync/order", node, store)
    assert isinstance(event, ev.OrderUpdated)
    o = event.order
    assert (o.external_id, o.name, o.is_cod, o.payment_state, o.platform_status) == ("7", "#1007", True, ev.PaymentState.PENDING, "pending")
    assert o.customer.phone.e164 == "+919876540007" and o.customer.external_id == "507" and o.customer.country == "IN"
    assert o.total == Decimal("1299.00") and o.currency == "INR" and o.checkout_token == "tok7" and o.tags == ("vip",)
    assert o.status_url == o.payment_url == "https://shop-a.example/orders/7/status"
    [li] = o.line_items
    assert (li.external_id, li.variant_id, li.product_id, li.price, li.quantity) == ("9007", "77", "66", Decimal("649.50"), 2)
    assert li.discount == 0
    # what was taken off a line (its own discount and its share of the order's code) counts as the webhook's does
    discounted = gql_node(10, updated=T)
    discounted["lineItems"]["nodes"][0]["discountAllocations"] = [
        {"allocatedAmountSet": {"shopMoney": {"amount": "100.00"}, "presentmentMoney": {"amount": "1.20"}}},
        {"allocatedAmountSet": {"shopMoney": {"amount": "29.90"}}}]
    [e3] = gql.normalize_node(discounted, store)
    assert e3.order.line_items[0].discount == Decimal("129.90")
    assert "discountAllocations { allocatedAmountSet { shopMoney { amount } } }" in gql.ORDERS_QUERY + gql.ORDER_LINES_QUERY
    expired = gql_node(8, updated=T) | {"displayFinancialStatus": "EXPIRED", "displayFulfillmentStatus": "PARTIALLY_FULFILLED"}
    [e2] = gql.normalize_node(expired, store)
    assert e2.order.payment_state is ev.PaymentState.OTHER and e2.order.fulfillment_state is ev.FulfillmentState.PARTIAL
    [cancelled] = gql.normalize_node(gql_node(9, updated=T, cancelled=T) | {gql.MARKER: {"placed": True}}, store)
    assert isinstance(cancelled, ev.OrderCancelled)
    [placed] = gql.normalize_node(gql_node(9, updated=T) | {gql.MARKER: {"placed": True}}, store)
    assert isinstance(placed, ev.OrderPlaced)
    # the page query stays under Shopify's single-query ceiling
    assert gql.query_cost(gql.page_size_for(100)) <= gql.MAX_QUERY_COST < gql.query_cost(gql.page_size_for(100) + 1)


# ---- Shopify -------------------------------------------------------------------------------


def test_shopify_pages_throttles_and_a_second_run_reads_only_what_changed(db_url):
    settings, db, ids = setup(db_url)
    store, sid = settings.stores[0], ids["shop-a"]
    base = T - timedelta(hours=2)
    nodes = [gql_node(n, updated=base + timedelta(minutes=10 * n), created=base - timedelta(days=3)) for n in range(1, 7)]
    events: list = []
    fake = FakeShopify(nodes, events=events)
    fake.throttle_calls = {2}  # the second page is throttled once
    sleep = recorder(events)

    async def run(now: datetime):
        with respx.mock(assert_all_called=True) as mock:
            mock.post(SHOP_URL).mock(side_effect=fake.handler)
            async with ShopifyAdminClient(store, sleep=sleep, clock=lambda: 0.0) as client:
                return await reconcile_orders(db, store, sid, client, now=now, page_size=2, sleep=sleep)

    first = asyncio.run(run(T))
    assert (first.pages, first.orders_seen, first.new_rows, first.placed) == (3, 6, 6, 0)
    assert fake.queries[0]["q"] == f"updated_at:>='{iso(T - timedelta(days=1, minutes=5))}'"
    # throttled -> slept (118 - 18) / 50 = 2 s, and only then asked again
    throttled = events.index(("request", 2, "throttled"))
    assert events[throttled + 1] == ("sleep", 2.0) and events[throttled + 2][0] == "request"
    assert first.throttle_waits == 1 and first.throttle_seconds == pytest.approx(2.0)
    assert first.cursor_before is None and first.cursor_after == base + timedelta(minutes=60)
    assert read_cursor(db, sid, "orders_updated_at") == datetime.fromisoformat(nodes[-1]["updatedAt"].replace("Z", "+00:00")).isoformat()

    # order 3 changes; order 6 sits inside the overlap and is re-read (deduped)
    later = base + timedelta(minutes=58)
    changed = gql_node(3, updated=later, created=base - timedelta(days=3)) | {"displayFinancialStatus": "PAID"}
    fake.put(changed)
    fake.queries.clear()
    second = asyncio.run(run(T + timedelta(minutes=15)))
    assert fake.queries[0]["q"] == f"updated_at:>='{iso(base + timedelta(minutes=55))}'"
    assert (second.orders_seen, second.new_rows, second.pages) == (2, 1, 1)
    rows = inbox(db, sid)
    keys = [r.dedupe_key for r in rows]
    assert len(rows) == 7 and len(set(keys)) == 7 and f"shopify:sync:3:{iso(later)}" in keys
    assert all(r.topic == "sync/order" and r.source == "shopify" for r in rows)
    assert read_cursor(db, sid, "orders_updated_at") == (base + timedelta(minutes=60)).isoformat()  # never back
    db.dispose()


def test_shopify_repeated_cursor_is_refused(db_url):
    settings, db, ids = setup(db_url)
    store, sid = settings.stores[0], ids["shop-a"]
    page = {"data": {"orders": {"pageInfo": {"hasNextPage": True, "endCursor": "same"},
                                "nodes": [gql_node(1, updated=T - timedelta(hours=1))]}}}

    async def run():
        with respx.mock() as mock:
            route = mock.post(SHOP_URL).respond(json=page)
            async with ShopifyAdminClient(store) as client:
                with pytest.raises(SyncError, match="repeated"):
                    await reconcile_orders(db, store, sid, client, now=T)
            return route.call_count

    assert asyncio.run(run()) == 2
    db.dispose()


def test_cursor_moves_only_after_the_page_is_committed(db_url, monkeypatch):
    settings, db, ids = setup(db_url)
    store, sid = settings.stores[0], ids["shop-a"]
    base = T - timedelta(hours=2)
    nodes = [gql_node(n, updated=base + timedelta(minutes=n)) for n in range(1, 7)]
    fake = FakeShopify(nodes)
    real_write = sync_mod.write_items
    writes = []

    def failing_write(database, items):
        writes.append(len(items))
        if len(writes) == 2:
            raise RuntimeError("database went away")
        return real_write(database, items)

    monkeypatch.setattr(sync_mod, "write_items", failing_write)

    async def run():
        with respx.mock() as mock:
            mock.post(SHOP_URL).mock(side_effect=fake.handler)
            async with ShopifyAdminClient(store) as client:
                return await reconcile_orders(db, store, sid, client, now=T, page_size=2)

    with pytest.raises(RuntimeError, match="went away"):
        asyncio.run(run())
    page1_max = datetime.fromisoformat(nodes[1]["updatedAt"].replace("Z", "+00:00"))
    assert read_cursor(db, sid, "orders_updated_at") == page1_max.isoformat()
    assert len(inbox(db, sid)) == 2
    # a platform failure on page 2 (a GraphQL error) also leaves the cursor at page 1's max
    monkeypatch.setattr(sync_mod, "write_items", real_write)
    fake.calls, fake.fail_calls = 0, {2}
    upsert_cursor(db, sid, "orders_updated_at", None)
    with pytest.raises(Exception, match="boom"):
        asyncio.run(run())
    assert read_cursor(db, sid, "orders_updated_at") == page1_max.isoformat()
    # the rerun reads from page 1's max (minus the overlap) and finishes; nothing is stored twice
    fake.fail_calls = set()
    report = asyncio.run(run())
    assert report.cursor_before == page1_max and report.new_rows == 4
    assert len(inbox(db, sid)) == 6
    db.dispose()


def test_an_order_with_many_lines_is_completed_before_it_is_stored(db_url):
    settings, db, ids = setup(db_url)
    store, sid = settings.stores[0], ids["shop-a"]
    node = gql_node(1, updated=T - timedelta(hours=1))
    node["lineItems"]["pageInfo"] = {"hasNextPage": True, "endCursor": "L1"}
    fake = FakeShopify([node])
    extra = [{"id": f"gid://shopify/LineItem/{i}", "quantity": 1, "title": f"x{i}", "sku": None, "variant": None,
              "product": None, "originalUnitPriceSet": {"shopMoney": {"amount": "1.00"}}} for i in range(3)]

    def handler(request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content)
        if "StoreloopOrderLines" in body["query"]:
            assert body["variables"]["after"] == "L1"
            return httpx.Response(200, json={"data": {"order": {"id": node["id"], "lineItems": {
                "pageInfo": {"hasNextPage": False, "endCursor": "L2"}, "nodes": extra}}}})
        return fake.handler(request)

    async def run():
        with respx.mock() as mock:
            mock.post(SHOP_URL).mock(side_effect=handler)
            async with ShopifyAdminClient(store) as client:
                return await reconcile_orders(db, store, sid, client, now=T)

    asyncio.run(run())
    [row] = inbox(db, sid)
    [event] = shopify_normalize("sync/order", json.loads(row.raw_body), store)
    assert len(event.order.line_items) == 4
    db.dispose()


# ---- WooCommerce ---------------------------------------------------------------------------


def woo_order(n: int, modified: str, status: str = "processing") -> dict:
    o = load_json(FIXTURES / "woocommerce" / "order.created.rest-v3-docs-example.json")
    o.update(id=n, number=str(n), status=status, date_modified_gmt=modified, date_created_gmt="2026-11-10T06:30:00",
             payment_method="cod", date_paid=None, date_paid_gmt=None)
    return o


def test_woocommerce_pages_backs_off_on_429_and_uses_the_webhook_dedupe_key(db_url):
    settings, db, ids = setup(db_url)
    store, sid = settings.stores[2], ids["woo"]
    upsert_cursor(db, sid, "orders_updated_at", (T - timedelta(hours=1)).isoformat())
    orders = [woo_order(1, "2026-11-20T06:10:00"), woo_order(2, "2026-11-20T06:40:00"), woo_order(3, "2026-11-20T06:20:00", "completed")]
    seen: list = []
    events: list = []

    def handler(request: httpx.Request) -> httpx.Response:
        q = parse_qs(urlparse(str(request.url)).query)
        seen.append(q)
        events.append(("request", q["offset"][0]))
        if len(seen) == 1:
            return httpx.Response(429, headers={"Retry-After": "3"}, json={"code": "too_many"})
        if q.get("status") == ["trash"]:  # the bin's listing: empty
            return httpx.Response(200, json=[], headers={"X-WP-TotalPages": "0", "X-WP-Total": "0"})
        start, per = int(q["offset"][0]), int(q["per_page"][0])
        return httpx.Response(200, json=orders[start:start + per], headers={"X-WP-TotalPages": "2", "X-WP-Total": "3"})

    async def run():
        with respx.mock() as mock:
            mock.get(WOO_URL).mock(side_effect=handler)
            async with WooCommerceClient(store) as client:
                return await reconcile_orders(db, store, sid, client, now=T, page_size=2, sleep=recorder(events))

    report = asyncio.run(run())
    assert events[:3] == [("request", "0"), ("sleep", 3.0), ("request", "0")]
    # pages of two by offset, each starting on the last order read: [1, 2], then [2, 3] (all 3 read); then the bin's listing
    assert [(q["offset"][0], q.get("status")) for q in seen] == [("0", None), ("0", None), ("1", None), ("0", ["trash"])]
    assert seen[0]["modified_after"] == ["2026-11-20T05:55:00"] and seen[0]["dates_are_gmt"] == ["true"]
    assert (report.orders_seen, report.new_rows) == (3, 3)
    # ordered by id, not by date: the cursor moves once, to the newest modification seen
    assert read_cursor(db, sid, "orders_updated_at") == datetime(2026, 11, 20, 6, 40, tzinfo=timezone.utc).isoformat()
    rows = inbox(db, sid)
    assert {r.topic for r in rows} == {"order.updated"}  # created 10 days ago: not a lost creation
    for r in rows:
        body = json.loads(r.raw_body)
        webhook = woo_envelope({"x-wc-webhook-topic": "order.updated"}, r.raw_body, body)
        assert r.dedupe_key == webhook.dedupe_key
    # again: everything deduped, no new rows
    seen.clear()
    assert asyncio.run(run()).new_rows == 0
    db.dispose()


# ---- the outage scenario -------------------------------------------------------------------

TEMPLATES = [
    {"step": "cod_confirmation.ask", "name": "cod_confirm_v1", "category": "utility",
     "body_text": "Hi {{1}}, confirm order {{2}} of {{3}}?", "body": ["customer.first_name", "order.name", "order.total"],
     "buttons": [{"type": "quick_reply", "text": "Confirm", "payload": "cod_confirm"}, {"type": "quick_reply", "text": "Cancel", "payload": "cod_cancel"}]},
    {"step": "order_confirmation.sent", "name": "order_ok_v1", "category": "utility", "body_text": "Thanks {{1}}", "body": ["order.name"]},
]


def rest_order(node: dict) -> dict:
    """The orders/create webhook body for the same order state as a GraphQL node."""
    o = load_json(FIXTURES / "shopify" / "orders_create.sample.json")
    oid = int(node["id"].rsplit("/", 1)[1])
    o.update(id=oid, name=node["name"], created_at=node["createdAt"], updated_at=node["updatedAt"], cancelled_at=None,
             cancel_reason=None, test=False, phone=node["phone"], financial_status=node["displayFinancialStatus"].lower(),
             payment_gateway_names=node["paymentGatewayNames"], admin_graphql_api_id=node["id"])
    return o


def test_outage_orders_are_reconciled_into_exactly_the_journeys_webhooks_would_start(db_url):
    settings = shop_settings(db_url, templates=TEMPLATES, journeys={"cod_confirmation": {}, "order_confirmation": {}},
                             policy={"quiet_hours": ""})
    store = settings.stores[0]
    placed = T - timedelta(minutes=30)
    nodes = [
        gql_node(1, updated=placed, cod=True), gql_node(2, updated=placed + timedelta(minutes=1), cod=True),
        gql_node(3, updated=placed + timedelta(minutes=2), paid=True), gql_node(4, updated=placed + timedelta(minutes=3), paid=True),
        # placed days ago (a backfill finds it): imported, no message
        gql_node(5, updated=placed, created=T - timedelta(days=3), cod=True),
        # placed and cancelled during the outage: nothing to ask
        gql_node(6, updated=placed, cod=True, cancelled=placed),
    ]
    fake = FakeShopify(nodes)
    with running_app(settings) as (client, runtime):
        sid = runtime.store_ids["shop-a"]

        async def reconcile():
            with respx.mock() as mock:
                mock.post(SHOP_URL).mock(side_effect=fake.handler)
                async with ShopifyAdminClient(store) as api:
                    return await reconcile_orders(runtime.db, store, sid, api, now=T)

        report = asyncio.run(reconcile())
        assert (report.orders_seen, report.new_rows, report.placed) == (6, 6, 4)
        runtime.processor.drain()

        def journey_rows():
            with runtime.db.engine.connect() as conn:
                return sorted((r.journey, r.step, r.payload["subject"]) for r in conn.execute(
                    select(m.OutboxMessage).where(m.OutboxMessage.channel == "whatsapp")))

        expected = [("cod_confirmation", "ask", "order:1"), ("cod_confirmation", "ask", "order:2"),
                    ("order_confirmation", "sent", "order:3"), ("order_confirmation", "sent", "order:4")]
        assert journey_rows() == expected
        # the webhooks turn up late (same order state): no second message
        for node in nodes[:4]:
            body = dumps(rest_order(node))
            r = client.post("/webhooks/shopify", content=body, headers=shopify_headers(
                body, SECRETS["shop_a"], "shop-a.myshopify.com", "orders/create"))
            assert r.status_code == 200
        runtime.processor.drain()
        # and the next reconcile run finds nothing new
        assert asyncio.run(reconcile()).new_rows == 0
        runtime.processor.drain()
        assert journey_rows() == expected
        with runtime.db.engine.connect() as conn:
            orders = conn.execute(select(func.count()).select_from(m.Order).where(m.Order.store_id == sid)).scalar()
            failed = conn.execute(select(func.count()).select_from(m.InboxEvent).where(m.InboxEvent.status == "failed")).scalar()
        assert orders == 6 and failed == 0


# ---- leases and the scheduler --------------------------------------------------------------


def test_two_workers_racing_for_one_lease_run_the_job_once(db_url):
    db1, db2 = Database.from_url(db_url), Database.from_url(db_url)
    runs: list[str] = []

    def job(name: str):
        async def fn() -> None:
            runs.append(name)
            await asyncio.sleep(0.05)
        return fn

    async def race():
        return await asyncio.gather(
            run_periodic(db1, "w1", "job:reconcile:shop-a", timedelta(minutes=12), job("w1"), now=T),
            run_periodic(db2, "w2", "job:reconcile:shop-a", timedelta(minutes=12), job("w2"), now=T),
        )

    results = asyncio.run(race())
    assert sorted(results) == [False, True] and len(runs) == 1
    winner = runs[0]
    loser = "w2" if winner == "w1" else "w1"
    assert acquire_lease(db1, "job:reconcile:shop-a", loser, timedelta(minutes=12), T + timedelta(minutes=5)) is False
    assert acquire_lease(db1, "job:reconcile:shop-a", winner, timedelta(minutes=12), T + timedelta(minutes=5)) is True
    assert acquire_lease(db2, "job:reconcile:shop-a", loser, timedelta(minutes=12), T + timedelta(minutes=18)) is True
    assert acquire_lease(db2, "job:reconcile:shop-b", loser, timedelta(minutes=12), T) is True  # another job, another lease
    db1.dispose()
    db2.dispose()


def test_a_run_longer_than_its_lease_keeps_the_lease_until_it_ends(db_url):
    db1, db2 = Database.from_url(db_url), Database.from_url(db_url)
    ttl = timedelta(seconds=0.3)
    second: list[bool] = []

    async def scenario() -> bool:
        started, finish = asyncio.Event(), asyncio.Event()

        async def long_job() -> None:
            started.set()
            await finish.wait()

        first = asyncio.create_task(run_periodic(db1, "w1", "job:reorder:shop-a", ttl, long_job))
        await started.wait()
        await asyncio.sleep(1.0)  # wall time must pass: three lease lengths while the job runs
        second.append(acquire_lease(db2, "job:reorder:shop-a", "w2", ttl))
        finish.set()
        return await first

    assert asyncio.run(scenario()) is True
    assert second == [False]  # the running job renewed its lease; nobody started a second run
    db1.dispose()
    db2.dispose()


def test_scheduler_has_one_reconcile_job_per_store_with_credentials():
    from types import SimpleNamespace

    settings = shop_settings("sqlite://")
    runtime = SimpleNamespace(settings=settings, store_ids={}, db=None, clock=lambda: T)
    scheduler = build_scheduler(runtime, holder="w1")
    jobs = {j.id: j for j in scheduler.get_jobs()}
    assert set(jobs) == {"reconcile:shop-a", "reconcile:woo", "purge:raw-bodies",  # shop-b has no access token
                         "checkout-poll:shop-a"}  # the abandoned-checkout poll (tests/test_checkout_poll.py)
    job = jobs["reconcile:shop-a"]
    assert job.trigger.interval == timedelta(minutes=15)  # worker.reconcile_minutes default
    assert job.coalesce is True and job.max_instances == 1


# ---- CLI -----------------------------------------------------------------------------------


SHOP_A_WITH_TOKEN = """
[[stores]]
key = "shop-a"
platform = "shopify"
shop_domain = "shop-a.myshopify.com"
webhook_secret = "s"
access_token = "shpat_x"
api_base_url = "https://shop-a.example"
"""


def _cli_config(tmp_path: Path, store_block: str, *, public_url: str | None = "https://connector.example") -> tuple[Path, Path]:
    """A config for ``storeloop sync`` with ``store_block`` (TOML) on a migrated SQLite file: (config, database)."""
    from connector.storage.db import make_engine, migrate

    db_path = tmp_path / "x.db"
    engine = make_engine(f"sqlite:///{db_path}")
    migrate(engine)
    engine.dispose()
    server = f'[server]\npublic_url = "{public_url}"\n' if public_url else ""
    cfg = tmp_path / "storeloop.toml"
    cfg.write_text(f"""
{server}[database]
url = "sqlite:///{db_path}"
[whatsapp]
app_secret = "{SECRETS['wa_app']}"
verify_token = "v"
{store_block}
""")
    return cfg, db_path


def test_sync_cli_explains_unknown_stores_and_missing_credentials(tmp_path: Path):
    cfg = tmp_path / "storeloop.toml"
    cfg.write_text(f"""
[database]
url = "sqlite:///{tmp_path / 'x.db'}"
[whatsapp]
app_secret = "{SECRETS['wa_app']}"
verify_token = "v"
[[stores]]
key = "shop-a"
platform = "shopify"
shop_domain = "shop-a.myshopify.com"
webhook_secret = "s"
""")
    runner = CliRunner()
    unknown = runner.invoke(cli_app, ["sync", "--config", str(cfg), "--store", "nope"])
    assert unknown.exit_code == 2 and "unknown store 'nope'" in unknown.output and "shop-a" in unknown.output
    bare = runner.invoke(cli_app, ["sync", "--config", str(cfg), "--store", "shop-a", "--since", "30d"])
    assert bare.exit_code == 2 and "no API credentials" in bare.output and "access_token" in bare.output


def test_since_accepts_days_hours_and_dates():
    from connector.cli import _parse_since

    assert _parse_since("365d", T) == T - timedelta(days=365)
    assert _parse_since("12h", T) == T - timedelta(hours=12)
    assert _parse_since("2026-01-31", T) == datetime(2026, 1, 31, tzinfo=timezone.utc)
    with pytest.raises(Exception):
        _parse_since("yesterday", T)


def test_the_scheduled_job_takes_the_lease_and_reconciles(db_url):
    from jobs.scheduler import reconcile_store

    settings = shop_settings(db_url)
    store = settings.stores[0]
    fake = FakeShopify([gql_node(1, updated=T - timedelta(hours=1))])
    with running_app(settings) as (_client, runtime):
        runtime.clock = lambda: T

        async def tick(holder: str) -> bool:
            with respx.mock(assert_all_called=False) as mock:
                mock.post(SHOP_URL).mock(side_effect=fake.handler)
                return await reconcile_store(runtime, store, holder, timedelta(minutes=15))

        assert asyncio.run(tick("w1")) is True
        assert asyncio.run(tick("w2")) is False  # same tick, another worker: skipped
        with runtime.db.engine.connect() as conn:
            lease = conn.execute(select(m.Lease).where(m.Lease.name == "job:reconcile:shop-a")).one()
        assert lease.holder == "w1" and (len(fake.queries), len(fake.customer_queries)) == (1, 1)  # the orders, the customers pass
        assert len(inbox(runtime.db, runtime.store_ids["shop-a"])) == 1


def test_sync_cli_runs_once_and_prints_the_report(tmp_path: Path):
    cfg, _ = _cli_config(tmp_path, SHOP_A_WITH_TOKEN, public_url=None)
    now = datetime.now(timezone.utc).replace(microsecond=0)
    fake = FakeShopify([gql_node(n, updated=now - timedelta(days=1, minutes=n), created=now - timedelta(days=5)) for n in (1, 2)])
    with respx.mock() as mock:
        mock.post(SHOP_URL).mock(side_effect=fake.handler)
        result = CliRunner().invoke(cli_app, ["sync", "--config", str(cfg), "--store", "shop-a", "--since", "2d"])
    assert result.exit_code == 0, result.output
    assert "orders_seen" in result.output and "2 new inbox row(s)" in result.output
    asked = datetime.fromisoformat(fake.queries[0]["q"].split("'")[1].replace("Z", "+00:00"))
    assert abs(asked - (now - timedelta(days=2, minutes=5))) < timedelta(seconds=5)


# ---- a fake WooCommerce: pages with X-WP-Total(Pages), 503s, data changing, webhooks, products ----

WOO_BASE = WOO_URL.rsplit("/orders", 1)[0]
OUR_HOOKS = "https://connector.example/webhooks/woocommerce/woo"


class FakeWoo:
    """WooCommerce REST v3 behind respx: ``/orders`` filtered by ``modified_after`` (exclusive, GMT),
    ordered by id, ``per_page`` capped at ``max_per_page``, ``page`` or ``offset``, ``X-WP-Total`` / ``X-WP-TotalPages``;
    trashed orders leave the list and are the ``status=trash`` listing; ``/webhooks`` (``status=disabled``, PUT); ``/products``.
    ``changes[n]`` runs before the n-th orders request is answered, ``failures[n]`` answers it."""

    def __init__(self, orders: list[dict], *, max_per_page: int = 100):
        self.orders = {o["id"]: o for o in orders}
        self.max_per_page = max_per_page
        self.hooks: dict[int, dict] = {}
        self.put_fails: dict[int, httpx.Response] = {}
        self.products: list[dict] = []
        self.changes: dict[int, object] = {}
        self.failures: dict[int, httpx.Response] = {}
        self.order_calls = 0
        self.requests: list[tuple[str, str, dict]] = []
        self.on_page = None

    def put(self, order: dict) -> None:
        self.orders[order["id"]] = order

    @staticmethod
    def _paged(rows: list[dict], q: dict, cap: int) -> httpx.Response:
        per = min(int(q.get("per_page", ["10"])[0]), cap)
        if "offset" in q:  # WordPress: offset wins over page
            start = int(q["offset"][0])
            chunk = rows[start: start + per]
        else:
            page = int(q.get("page", ["1"])[0])
            chunk = rows[(page - 1) * per: page * per]
        return httpx.Response(200, json=chunk, headers={"X-WP-Total": str(len(rows)), "X-WP-TotalPages": str(-(-len(rows) // per))})

    def handler(self, request: httpx.Request) -> httpx.Response:
        path = request.url.path.removeprefix("/wp-json/wc/v3")
        q = parse_qs(urlparse(str(request.url)).query)
        self.requests.append((request.method, path, q))
        if path == "/orders":
            self.order_calls += 1
            change = self.changes.get(self.order_calls)
            if change is not None:
                change(self)
            if self.order_calls in self.failures:
                return self.failures[self.order_calls]
            if self.on_page is not None:
                self.on_page(q)
            since = q["modified_after"][0]
            binned = q.get("status") == ["trash"]  # the default listing (any) leaves the bin out; status=trash is the bin
            rows = sorted((o for o in self.orders.values() if (o["status"] == "trash") == binned and o["date_modified_gmt"] > since),
                          key=lambda o: o["id"])
            return self._paged(rows, q, self.max_per_page)
        if path == "/products":
            return self._paged(sorted(self.products, key=lambda p: p["id"]), q, self.max_per_page)
        if path == "/webhooks" and request.method == "GET":
            status = q.get("status", [None])[0]
            return httpx.Response(200, json=[h for h in self.hooks.values() if status is None or h["status"] == status])
        if path.startswith("/webhooks/") and request.method == "PUT":
            hook_id = int(path.rsplit("/", 1)[1])
            if hook_id in self.put_fails:
                return self.put_fails[hook_id]
            self.hooks[hook_id].update(json.loads(request.content))
            return httpx.Response(200, json=self.hooks[hook_id])
        return httpx.Response(404, json={"code": "rest_no_route"})

    def puts(self) -> list[int]:
        return [int(p.rsplit("/", 1)[1]) for m_, p, _ in self.requests if m_ == "PUT"]


def woo_settings(db_url: str, **store: object):
    raw = settings_dict(db_url)
    raw["server"]["public_url"] = "https://connector.example"
    raw["stores"][2].update(consumer_key="ck_test", consumer_secret="cs_test", **store)
    return parse_settings(raw, environ={})


def test_the_scheduled_woocommerce_tick_re_enables_only_our_disabled_webhooks_and_reports_it(db_url, caplog):
    """Two of our webhooks and one of another plugin are disabled: ours are switched back on (one
    PUT fails: reported, not fatal), the other plugin's is left alone, the orders are reconciled
    anyway, and the job log says what happened."""
    from jobs.scheduler import reconcile_store

    settings = woo_settings(db_url)
    store = settings.stores[2]
    fake = FakeWoo([woo_order(1, "2026-11-20T06:10:00"), woo_order(2, "2026-11-20T06:40:00")])
    fake.hooks = {
        11: {"id": 11, "topic": "order.updated", "status": "disabled", "delivery_url": OUR_HOOKS},
        12: {"id": 12, "topic": "order.created", "status": "disabled", "delivery_url": "https://crm.example/hooks/orders"},
        13: {"id": 13, "topic": "order.created", "status": "active", "delivery_url": OUR_HOOKS},
        14: {"id": 14, "topic": "product.updated", "status": "disabled", "delivery_url": OUR_HOOKS + "/"},
    }
    fake.put_fails = {14: httpx.Response(403, json={"code": "woocommerce_rest_cannot_edit"})}
    with running_app(settings) as (_client, runtime):
        runtime.clock = lambda: T

        async def tick() -> bool:
            with respx.mock() as mock:
                mock.route(host="bloom.example").mock(side_effect=fake.handler)
                return await reconcile_store(runtime, store, "w1", timedelta(minutes=15))

        with caplog.at_level(logging.INFO, logger="storeloop"):
            assert asyncio.run(tick()) is True
        rows = inbox(runtime.db, runtime.store_ids["woo"])
    assert sorted(fake.puts()) == [11, 14]  # never 12: it is not ours
    assert (fake.hooks[11]["status"], fake.hooks[12]["status"], fake.hooks[14]["status"]) == ("active", "disabled", "disabled")
    assert len(rows) == 2  # the failed PUT did not stop the reconciliation
    [line] = [r for r in caplog.records if r.name == "storeloop.jobs" and r.getMessage().startswith("reconcile woo")]
    assert line.levelno == logging.WARNING
    assert "re-enabled WooCommerce webhook(s) 11 order.updated" in line.getMessage()
    assert "14 product.updated: PermanentError: HTTP 403" in line.getMessage()
    assert line.report["webhooks_reenabled"] == ["11 order.updated"] and line.report["new_rows"] == 2


def test_a_failing_webhook_listing_is_reported_and_the_orders_are_still_reconciled(db_url):
    settings = woo_settings(db_url)
    store = settings.stores[2]
    fake = FakeWoo([woo_order(1, "2026-11-20T06:10:00")])
    db = Database.from_url(db_url)
    sid = sync_stores(db, [(s.key, s.platform) for s in settings.stores])["woo"]

    def broken(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/webhooks"):
            return httpx.Response(401, json={"code": "woocommerce_rest_cannot_view"})
        return fake.handler(request)

    async def run():
        with respx.mock() as mock:
            mock.route(host="bloom.example").mock(side_effect=broken)
            async with WooCommerceClient(store) as client:
                return await reconcile_orders(db, store, sid, client, now=T, reenable_webhooks_under=OUR_HOOKS)

    report = asyncio.run(run())
    assert report.new_rows == 1 and report.webhooks_reenabled == []
    assert report.webhooks_failed == ["listing disabled webhooks failed: PermanentError: HTTP 401, woocommerce_rest_cannot_view "
                                      "(authentication failed (consumer key/secret wrong, revoked, or the Authorization header stripped))"]
    db.dispose()


def woo_world(db_url: str):
    """The WooCommerce store of ``woo_settings``, its database and id, its cursor three hours back."""
    settings = woo_settings(db_url)
    db = Database.from_url(db_url)
    sid = sync_stores(db, [(s.key, s.platform) for s in settings.stores])["woo"]
    upsert_cursor(db, sid, "orders_updated_at", (T - timedelta(hours=3)).isoformat())
    return settings.stores[2], db, sid


def stamp(minutes: float) -> str:
    """A WooCommerce GMT modification time, ``minutes`` after two hours before T."""
    return (T - timedelta(hours=2) + timedelta(minutes=minutes)).strftime("%Y-%m-%dT%H:%M:%S")


def stored_versions(db: Database, sid: int) -> set[tuple[int, str]]:
    """(order id, date_modified_gmt) of every WooCommerce order row in the inbox."""
    out = set()
    for r in inbox(db, sid):
        _, _, oid, rest = r.dedupe_key.split(":", 3)
        out.add((int(oid), rest.rsplit(":", 1)[0]))
    return out


def test_woocommerce_reconcile_reads_the_bin_so_a_binned_order_whose_webhook_was_lost_is_called_off(db_url):
    """WooCommerce's order listing leaves the bin out and never retries a lost ``order.deleted``: the
    reconcile reads the bin as a listing of its own, so an order binned in the window reaches the core as
    called off (an ``order.updated`` saying ``trash``: ``OrderCancelled``) and no journey goes on with it."""
    from adapters.woocommerce.normalize import normalize as woo_normalize
    from connector.events import OrderCancelled

    store, db, sid = woo_world(db_url)
    fake = FakeWoo([woo_order(1, stamp(10)), woo_order(2, stamp(20), "trash")], max_per_page=10)

    async def run():
        with respx.mock() as mock:
            mock.route(host="bloom.example").mock(side_effect=fake.handler)
            async with WooCommerceClient(store) as client:
                return await reconcile_orders(db, store, sid, client, now=T, page_size=10, sleep=recorder([]))

    asyncio.run(run())
    assert [q.get("status") for m_, p, q in fake.requests if p == "/orders"] == [None, ["trash"]]
    [binned] = [r for r in inbox(db, sid) if r.dedupe_key.split(":")[2] == "2"]
    assert binned.topic == "order.updated"
    [event] = woo_normalize(binned.topic, json.loads(binned.raw_body), store)
    assert isinstance(event, OrderCancelled) and event.order.external_id == "2"
    db.dispose()


@pytest.mark.parametrize("retry_after", ["7", None], ids=["retry-after", "no-retry-after"])
def test_woocommerce_data_changing_between_and_during_runs_and_a_503_never_make_the_cursor_skip_an_order(db_url, retry_after):
    """Pages of two orders, ten minutes of modification apart. Run 1: the second page answers 503
    once (slept off: Retry-After, else the first backoff step), an order already read changes, and
    an order on page 1 is trashed before page 2 is read, which pulls the next order onto page 1 (the
    pager finds a later order on the overlap place and steps back). Between runs orders change and
    new ones arrive. No run skips an order, the inbox ends with every live order's newest version,
    nothing twice, and the cursor never moves back."""
    store, db, sid = woo_world(db_url)
    fake = FakeWoo([woo_order(n, stamp(10 * n)) for n in range(1, 8)], max_per_page=2)
    headers = {"Retry-After": retry_after} if retry_after else {}
    fake.failures = {2: httpx.Response(503, headers=headers, json={"code": "service_unavailable"})}

    def during_run(f: FakeWoo) -> None:
        f.put(woo_order(1, stamp(95)) | {"status": "completed"})  # read on page 1; changes now
        f.put(woo_order(2, stamp(20)) | {"status": "trash"})  # leaves the list: order 3 slides onto page 1

    fake.changes = {2: during_run}
    events: list = []

    async def run(now: datetime):
        with respx.mock() as mock:
            mock.route(host="bloom.example").mock(side_effect=fake.handler)
            async with WooCommerceClient(store) as client:
                return await reconcile_orders(db, store, sid, client, now=now, page_size=2, sleep=recorder(events))

    def stored() -> dict[int, set[str]]:
        rows = inbox(db, sid)
        assert len({r.dedupe_key for r in rows}) == len(rows)  # nothing twice
        out: dict[int, set[str]] = {}
        for r in rows:
            _, _, oid, rest = r.dedupe_key.split(":", 3)
            out.setdefault(int(oid), set()).add(rest.rsplit(":", 1)[0])
        return out

    before = {o["id"]: o["date_modified_gmt"] for o in fake.orders.values()}
    first = asyncio.run(run(T))
    assert ("sleep", 7.0 if retry_after else 1.0) in events and first.retries == 1
    seen = stored()
    for oid, modified in before.items():  # every order that was in the window when the run began (2 was trashed)
        assert oid == 2 or max(seen.get(oid, {""})) >= modified, (oid, seen)
    # between runs: an old order changes, two new ones arrive (one with a lower id than the newest)
    fake.put(woo_order(4, stamp(130)) | {"status": "completed"})
    fake.put(woo_order(9, stamp(125)))
    fake.put(woo_order(8, stamp(131)))
    second = asyncio.run(run(T + timedelta(minutes=15)))
    seen = stored()
    for o in fake.orders.values():
        if o["status"] != "trash":
            assert o["date_modified_gmt"] in seen.get(o["id"], set()), (o["id"], seen)
    assert second.cursor_after >= first.cursor_after
    assert read_cursor(db, sid, "orders_updated_at") == datetime(2026, 11, 20, 7, 11, tzinfo=timezone.utc).isoformat()
    db.dispose()


def test_woocommerce_an_order_trashed_and_one_added_between_two_pages_never_hide_the_next_order(db_url):
    """Between two pages an order already read is trashed and a new one arrives: ``X-WP-Total``
    stays the same, but every later order moves one place forward, so page 2 by number would
    start one order late. Each page starts on the last order read instead: the pager sees a
    later order there, steps back, and reads every order that was in the window. Later an old
    order modified during the run joins the list before the pager's place (a re-read, never a gap)."""
    store, db, sid = woo_world(db_url)
    old = woo_order(1, (T - timedelta(days=30)).strftime("%Y-%m-%dT%H:%M:%S"))  # outside the window at first
    fake = FakeWoo([old, *[woo_order(n, stamp(10 * n)) for n in range(2, 9)]], max_per_page=2)
    in_window = {o["id"]: o["date_modified_gmt"] for o in fake.orders.values() if o["id"] != 1}

    def trash_one_add_one(f: FakeWoo) -> None:  # after page 1 ([2, 3]) was read
        f.put(woo_order(2, stamp(20)) | {"status": "trash"})
        f.put(woo_order(9, stamp(95)))

    def old_order_changes(f: FakeWoo) -> None:
        f.put(old | {"date_modified_gmt": stamp(100), "status": "completed"})

    totals: list[int] = []
    fake.changes = {2: trash_one_add_one, 5: old_order_changes}
    fake.on_page = lambda q: totals.append(len([o for o in fake.orders.values() if o["status"] != "trash"
                                                and o["date_modified_gmt"] > q["modified_after"][0]]))

    async def run(now: datetime):
        with respx.mock() as mock:
            mock.route(host="bloom.example").mock(side_effect=fake.handler)
            async with WooCommerceClient(store) as client:
                return await reconcile_orders(db, store, sid, client, now=now, page_size=2, sleep=recorder([]))

    report = asyncio.run(run(T))
    assert totals[0] == totals[1] == 7  # the total did not change across the two pages
    rows = inbox(db, sid)
    assert len({r.dedupe_key for r in rows}) == len(rows)  # nothing twice
    stored = stored_versions(db, sid)
    for oid, modified in in_window.items():  # every order in the window when the run began (2 was trashed)
        assert oid == 2 or (oid, modified) in stored, (oid, sorted(stored))
    offsets = [int(q["offset"][0]) for m_, p, q in fake.requests if p == "/orders"]
    assert any(b < a for a, b in zip(offsets, offsets[1:]))  # it stepped back at least once
    assert report.orders_seen >= len(in_window) - 1
    # the old order modified during the run: read now or by the next run (the cursor never passes the run's start)
    asyncio.run(run(T + timedelta(minutes=15)))
    assert (1, stamp(100)) in stored_versions(db, sid)
    db.dispose()


# ---- products: cycle tags and metafields of products nobody edited since install -------------------


def product_node(n: int, tags: list[str], replenish: str | None = None, updated: datetime = T - timedelta(days=90)) -> dict:
    return {"id": f"gid://shopify/Product/{n}", "title": f"Product {n}", "tags": tags, "updatedAt": iso(updated),
            "metafield": {"value": replenish} if replenish else None}


def test_the_daily_product_sync_brings_existing_tags_metafields_and_meta_into_the_reorder_cycles(db_url):
    """Products tagged or given a cycle metafield before install never sent a webhook: the product
    job reads them all (Shopify GraphQL ``products``, WooCommerce ``/products`` in pages) through the
    inbox, and the cycles appear. A second run stores nothing; a metafield changed without a new
    ``updatedAt`` still gets through."""
    from types import SimpleNamespace

    from jobs.scheduler import product_sync_store

    raw = settings_dict(db_url)
    raw["server"]["public_url"] = "https://connector.example"
    raw["stores"][0].update(access_token="shpat_test", api_base_url="https://shop-a.example", journeys={"reorder": {}})
    raw["stores"][2].update(consumer_key="ck_test", consumer_secret="cs_test", journeys={"reorder": {}})
    settings = parse_settings(raw, environ={})
    shop, woo = settings.stores[0], settings.stores[2]
    jobs = {j.id: j for j in build_scheduler(SimpleNamespace(settings=settings, store_ids={}, db=None, clock=lambda: T), holder="w").get_jobs()}
    assert {"products:shop-a", "products:woo"} <= set(jobs) and "products:shop-b" not in jobs  # shop-b: no credentials, no reorder
    assert jobs["products:shop-a"].trigger.interval == timedelta(days=1)
    assert jobs["products:shop-a"].next_run_time < datetime.now(timezone.utc) + timedelta(minutes=2)  # soon after start, then daily

    shopify = FakeShopify([])
    shopify.products = [product_node(9001, ["vegan", "replenish:3w"]), product_node(9002, ["replenish:3w"], "45d"),
                        product_node(9003, ["soap"])]
    wc = FakeWoo([], max_per_page=2)
    wc.products = [
        {"id": 93, "name": "Rose water", "tags": [], "meta_data": [{"id": 1, "key": "_storeloop_replenish", "value": "6w"}],
         "date_modified_gmt": "2026-05-01T00:00:00", "status": "publish"},
        {"id": 94, "name": "Amla oil", "tags": [{"id": 3, "name": "replenish:10d", "slug": "replenish-10d"}], "meta_data": [],
         "date_modified_gmt": "2026-05-01T00:00:00", "status": "publish"},
        {"id": 95, "name": "Gift card", "tags": [], "meta_data": [], "date_modified_gmt": "2026-05-01T00:00:00", "status": "publish"},
    ]
    with running_app(settings) as (_client, runtime):
        runtime.clock = lambda: T

        def tick(holder: str, ran: bool = True) -> list[int]:
            async def both() -> None:
                with respx.mock(assert_all_called=ran) as mock:
                    mock.post(SHOP_URL).mock(side_effect=shopify.handler)
                    mock.route(host="bloom.example").mock(side_effect=wc.handler)
                    assert await product_sync_store(runtime, shop, holder, timedelta(days=1)) is ran
                    assert await product_sync_store(runtime, woo, holder, timedelta(days=1)) is ran
            before = [len(inbox(runtime.db, runtime.store_ids[k])) for k in ("shop-a", "woo")]
            asyncio.run(both())
            runtime.processor.drain()
            return [len(inbox(runtime.db, runtime.store_ids[k])) - b for k, b in zip(("shop-a", "woo"), before)]

        def cycles() -> dict:
            with runtime.db.engine.connect() as conn:
                return {(r.store_id, r.product_key): (r.source, r.cycle_days) for r in conn.execute(select(m.ProductCycle))}

        assert tick("w1") == [3, 3]
        sid, wid = runtime.store_ids["shop-a"], runtime.store_ids["woo"]
        assert cycles() == {(sid, "p:9001"): ("tag", 21.0), (sid, "p:9002"): ("tag", 45.0),  # the metafield wins over the tag
                            (wid, "p:93"): ("tag", 42.0), (wid, "p:94"): ("tag", 10.0)}
        assert sum(1 for m_, p, _ in wc.requests if p == "/products") == 2  # three products, two a page
        assert shopify.product_queries[0]["first"] == 100
        assert tick("w2", ran=False) == [0, 0]  # the lease: one run a day, whoever asks
        assert tick("w1") == [0, 0]  # nothing changed: nothing stored
        shopify.products[1]["metafield"] = {"value": "60d"}  # same updatedAt
        assert tick("w1") == [1, 0]
        assert cycles()[(sid, "p:9002")] == ("tag", 60.0)
        statuses = {r.status for r in inbox(runtime.db, sid)} | {r.status for r in inbox(runtime.db, wid)}
    assert statuses == {"done"}


# ---- storeloop sync --backfill, end to end ---------------------------------------------------------


def _inbox_count(db_path: Path, source: str) -> int:
    import sqlite3

    with sqlite3.connect(db_path) as conn:
        return conn.execute("SELECT count(*) FROM inbox_events WHERE source = ? AND topic NOT LIKE 'product%'", (source,)).fetchone()[0]


def test_backfill_from_the_cli_counts_first_streams_page_by_page_and_stops_the_install_hint(tmp_path: Path):
    cfg, db_path = _cli_config(tmp_path, SHOP_A_WITH_TOKEN + "[stores.journeys.reorder]\nlead_days = 3\n")
    now = datetime.now(timezone.utc).replace(microsecond=0)
    fake = FakeShopify([gql_node(n, updated=now - timedelta(days=300) + timedelta(hours=n), created=now - timedelta(days=301)) for n in range(1, 41)]
                       + [gql_node(99, updated=now - timedelta(days=400), created=now - timedelta(days=401))])  # before --since
    fake.products = [product_node(9001, ["replenish:3w"]), product_node(9002, [], "45d")]
    stored_before_page: list[int] = []
    fake.on_page = lambda v: stored_before_page.append(_inbox_count(db_path, "shopify"))

    def cli(*args: str):
        with respx.mock() as mock:
            mock.post(SHOP_URL).mock(side_effect=fake.handler)
            return CliRunner().invoke(cli_app, ["sync", "--config", str(cfg), "--store", "shop-a", *args], env={"COLUMNS": "200"})

    plain = cli()
    assert plain.exit_code == 0, plain.output
    assert "no order history imported yet for shop-a" in plain.output and "--backfill --since 365d" in plain.output
    assert "read_all_orders" in plain.output
    stored_before_page.clear()
    fake.queries.clear()
    result = cli("--backfill", "--since", "365d")
    assert result.exit_code == 0, result.output
    # the total came from ordersCount with the pages' own search query
    [count] = fake.counts[-1:]
    assert count["q"] == fake.queries[0]["q"] and count["q"].startswith("updated_at:>='")
    assert "40 of 40 order(s) read in 5 page(s); 40 new inbox row(s)" in result.output
    assert "2 product(s) read, 2 with new tags or cycle" in result.output
    # each page was committed before the next was asked for: 8 orders a page (the query cost ceiling,
    # with each order's fulfilments and the customer's consent)
    assert stored_before_page == [0, 8, 16, 24, 32]
    assert [q["cursor"] is None for q in fake.queries] == [True, False, False, False, False]
    assert "hint:" not in result.output
    again = cli()
    assert again.exit_code == 0 and "hint:" not in again.output


def test_backfill_of_a_woocommerce_store_shows_its_total_and_the_webhooks_it_switched_back_on(tmp_path: Path):
    cfg, db_path = _cli_config(tmp_path, """
[[stores]]
key = "woo"
platform = "woocommerce"
site_url = "https://bloom.example"
webhook_secret = "s"
consumer_key = "ck_test"
consumer_secret = "cs_test"
""")
    fake = FakeWoo([woo_order(n, f"2026-0{n}-01T00:00:00") for n in range(1, 6)], max_per_page=2)
    fake.hooks = {11: {"id": 11, "topic": "order.updated", "status": "disabled", "delivery_url": OUR_HOOKS},
                  12: {"id": 12, "topic": "order.updated", "status": "disabled", "delivery_url": "https://crm.example/hook"}}
    stored_before_page: list[int] = []
    fake.on_page = lambda q: stored_before_page.append(_inbox_count(db_path, "woocommerce"))
    with respx.mock() as mock:
        mock.route(host="bloom.example").mock(side_effect=fake.handler)
        result = CliRunner().invoke(cli_app, ["sync", "--config", str(cfg), "--store", "woo", "--backfill", "--since", "2025-12-01"],
                                    env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    # the fake serves two a page and each page starts on the last order read: [1, 2], [2, 3], [3, 4], [4, 5]
    assert "5 of 5 order(s) read in 4 page(s); 5 new inbox row(s)" in result.output
    assert "re-enabled WooCommerce webhook 11 order.updated" in result.output and "12 order.updated" not in result.output
    assert fake.puts() == [11] and stored_before_page == [0, 2, 3, 4, 5]  # the last: the bin's listing (empty)
    assert [q["modified_after"] for m_, p, q in fake.requests if p == "/orders"][0] == ["2025-11-30T23:55:00"]
