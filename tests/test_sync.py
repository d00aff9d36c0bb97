"""Reconciliation: Shopify GraphQL and WooCommerce REST faked at the HTTP boundary (respx),
the inbox and cursors on SQLite and PostgreSQL (``db_url``), and the outage scenario end to end."""

from __future__ import annotations

import asyncio
import json
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
from connector.storage.inbox import sync_stores
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
    """Orders sorted by (updatedAt, id), ``updated_at:>='…'`` filter, Relay cursors, a leaky bucket."""

    def __init__(self, nodes: list[dict], *, events: list | None = None):
        self.orders = {n["id"]: n for n in nodes}
        self.events = events if events is not None else []
        self.throttle_calls: set[int] = set()
        self.fail_calls: set[int] = set()
        self.calls = 0
        self.queries: list[dict] = []

    def put(self, node: dict) -> None:
        self.orders[node["id"]] = node

    def handler(self, request: httpx.Request) -> httpx.Response:
        self.calls += 1
        body = json.loads(request.content)
        v = body["variables"]
        self.queries.append(v)
        if self.calls in self.throttle_calls:
            self.events.append(("request", self.calls, "throttled"))
            return httpx.Response(200, json={
                "errors": [{"message": "Throttled", "extensions": {"code": "THROTTLED"}}],
                "extensions": {"cost": {"requestedQueryCost": 118, "actualQueryCost": None,
                                        "throttleStatus": {"maximumAvailable": 1000.0, "currentlyAvailable": 18, "restoreRate": 50.0}}}})
        self.events.append(("request", self.calls, v.get("cursor")))
        if self.calls in self.fail_calls:
            return httpx.Response(200, json={"errors": [{"message": "boom", "extensions": {"code": "BAD_REQUEST"}}]})
        since = v["q"].split(">='", 1)[1].rstrip("'")
        rows = sorted((n for n in self.orders.values() if n["updatedAt"] >= since), key=lambda n: (n["updatedAt"], n["id"]))
        if v.get("cursor"):
            after = tuple(v["cursor"].split("|", 1))
            rows = [n for n in rows if (n["updatedAt"], n["id"]) > after]
        page, more = rows[: v["first"]], len(rows) > v["first"]
        end = f"{page[-1]['updatedAt']}|{page[-1]['id']}" if page else None
        return httpx.Response(200, json={
            "data": {"orders": {"pageInfo": {"hasNextPage": more, "endCursor": end}, "nodes": page}},
            "extensions": {"cost": {"requestedQueryCost": 118, "actualQueryCost": 40,
                                    "throttleStatus": {"maximumAvailable": 1000.0, "currentlyAvailable": 900, "restoreRate": 50.0}}}})


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
        return conn.execute(select(m.InboxEvent).where(m.InboxEvent.store_id == store_id).order_by(m.InboxEvent.id)).all()


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
    pages = {"1": [woo_order(1, "2026-11-20T06:10:00"), woo_order(2, "2026-11-20T06:40:00")],
             "2": [woo_order(3, "2026-11-20T06:20:00", "completed")]}
    seen: list = []
    events: list = []

    def handler(request: httpx.Request) -> httpx.Response:
        q = parse_qs(urlparse(str(request.url)).query)
        seen.append(q)
        events.append(("request", q["page"][0]))
        if len(seen) == 1:
            return httpx.Response(429, headers={"Retry-After": "3"}, json={"code": "too_many"})
        return httpx.Response(200, json=pages[q["page"][0]], headers={"X-WP-TotalPages": "2", "X-WP-Total": "3"})

    async def run():
        with respx.mock() as mock:
            mock.get(WOO_URL).mock(side_effect=handler)
            async with WooCommerceClient(store) as client:
                return await reconcile_orders(db, store, sid, client, now=T, sleep=recorder(events))

    report = asyncio.run(run())
    assert events[:3] == [("request", "1"), ("sleep", 3.0), ("request", "1")]
    assert [q["page"][0] for q in seen] == ["1", "1", "2"]
    assert seen[0]["modified_after"] == ["2026-11-20T05:55:00"] and seen[0]["dates_are_gmt"] == ["true"]
    assert (report.pages, report.orders_seen, report.new_rows) == (2, 3, 3)
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
        assert lease.holder == "w1" and fake.calls == 1
        assert len(inbox(runtime.db, runtime.store_ids["shop-a"])) == 1


def test_sync_cli_runs_once_and_prints_the_report(tmp_path: Path):
    from connector.storage.db import make_engine, migrate

    db_path = tmp_path / "x.db"
    engine = make_engine(f"sqlite:///{db_path}")
    migrate(engine)
    engine.dispose()
    cfg = tmp_path / "storeloop.toml"
    cfg.write_text(f"""
[database]
url = "sqlite:///{db_path}"
[whatsapp]
app_secret = "{SECRETS['wa_app']}"
verify_token = "v"
[[stores]]
key = "shop-a"
platform = "shopify"
shop_domain = "shop-a.myshopify.com"
webhook_secret = "s"
access_token = "shpat_x"
api_base_url = "https://shop-a.example"
""")
    now = datetime.now(timezone.utc).replace(microsecond=0)
    fake = FakeShopify([gql_node(n, updated=now - timedelta(days=1, minutes=n), created=now - timedelta(days=5)) for n in (1, 2)])
    with respx.mock() as mock:
        mock.post(SHOP_URL).mock(side_effect=fake.handler)
        result = CliRunner().invoke(cli_app, ["sync", "--config", str(cfg), "--store", "shop-a", "--since", "2d"])
    assert result.exit_code == 0, result.output
    assert "orders_seen" in result.output and "2 new inbox row(s)" in result.output
    asked = datetime.fromisoformat(fake.queries[0]["q"].split("'")[1].replace("Z", "+00:00"))
    assert abs(asked - (now - timedelta(days=2, minutes=5))) < timedelta(seconds=5)


def test_disabled_woocommerce_webhooks_are_switched_back_on():
    from connector.sync import reenable_woocommerce_webhooks

    settings = shop_settings("sqlite://")
    store = settings.stores[2]
    base = WOO_URL.rsplit("/orders", 1)[0]

    async def run():
        with respx.mock(assert_all_called=True) as mock:
            listed = mock.get(f"{base}/webhooks").respond(json=[
                {"id": 11, "topic": "order.updated", "status": "disabled", "delivery_url": "https://c.example/webhooks/woocommerce/woo"}])
            put = mock.put(f"{base}/webhooks/11").respond(json={"id": 11, "status": "active"})
            async with WooCommerceClient(store) as client:
                hooks = await reenable_woocommerce_webhooks(store, client)
            return hooks, listed, put

    hooks, listed, put = asyncio.run(run())
    assert [h["id"] for h in hooks] == [11]
    assert parse_qs(urlparse(str(listed.calls.last.request.url)).query)["status"] == ["disabled"]
    assert json.loads(put.calls.last.request.content) == {"status": "active"}
