"""The reconcile reads back a consent change whose webhook Shopify gave up on, for a customer with no order changed.

Shopify stops retrying a webhook after about 4 hours. The reconcile's order pages carry the consent of the
customers of the orders that changed; a customer who unsubscribed in the store while the connector was down,
and bought nothing since, was never read: her cart reminders went on against her word. The reconcile now also
pages through the customers changed since its own cursor (``customers_updated_at``).

Stories first (tests/scenarios harness: signed webhooks over HTTP, the real ``reconcile_orders`` with the real
``ShopifyAdminClient`` against the fake Admin GraphQL on 127.0.0.1, assertions on what reached her phone and what
the store owner sees); then the pass itself at the HTTP boundary (respx, the fake of tests/test_sync.py).
"""

from __future__ import annotations

import asyncio
import json
import logging
from datetime import datetime, timedelta
from typing import Any

import httpx
import pytest
import respx
from sqlalchemy import select

from adapters.shopify import graphql as gql
from adapters.shopify.client import ShopifyAdminClient
from connector.customer_sync import CUSTOMERS_CURSOR
from connector.storage import models as m
from connector.storage.db import Database
from connector.sync import SyncReport, read_cursor, reconcile_orders, upsert_cursor
from tests.conftest import SECRETS
from tests.helpers import dumps, running_app, shopify_headers
from tests.scenarios import payloads as p
from tests.scenarios.conftest import _world_server, scenario, sqlite_url, world  # noqa: F401  (the scenarios' fixtures)
from tests.scenarios.fakes import FakeWorld
from tests.scenarios.harness import Scenario
from tests.scenarios.stores import SHOPIFY
from tests.scenarios.test_store_journeys import LADDER
from tests.test_reconcile_parcels import reconcile
from tests.test_sync import SHOP_URL, T, FakeShopify, gql_node, inbox, iso, recorder, setup, shop_settings

ASHA = "+919876543210"


def consent_in_shopify(world: FakeWorld, phone: str, at: datetime, *, whatsapp: str, sms: tuple[str, datetime | None] | None = None,
                       updated: datetime | None = None) -> None:
    """Her WhatsApp marketing consent as Shopify's Admin API has it from ``at`` on (``updated``: when the customer
    last changed, if later), whether or not its webhook reached the connector."""
    consent = p.shopify_phone_consent(phone, sms=sms, whatsapp=(whatsapp, at))
    node = p.shopify_customer_node(phone, consent, updated or at)
    world.shopify_customers[node["id"]] = node


def opted_in_with_a_cart(sc: Scenario, world: FakeWorld) -> None:
    """Asha subscribes to the store's WhatsApp marketing (its webhook arrives), then leaves a cart: the first reminder."""
    sc.shopify("customers_whats_app_marketing_consent/update", p.shopify_whatsapp_consent(p.customer_id_for(ASHA), ASHA, "subscribed", sc.now))
    consent_in_shopify(world, ASHA, sc.now, whatsapp="subscribed")
    SHOPIFY.start_checkout(sc, "A", ASHA)
    sc.later(minutes=30)
    assert sc.templates_to(ASHA) == ["cart_1_v1"]


def ladder(sc: Scenario) -> dict[str, Any]:
    [run] = [r for r in sc.contact(ASHA)["journeys"] if r["journey"] == "checkout_recovery"]
    return run


def test_an_opt_out_whose_webhook_was_lost_stops_her_cart_reminders_though_she_ordered_nothing(sqlite_url, scenario, world):
    """Before: Asha unsubscribed from the store's WhatsApp marketing while the connector was down; she has no
    order, so the reconcile (orders only) never read it: reminders 2 and 3 of her cart still went. Now the
    reconcile reads her back from the customers changed since its last run: her consent is revoked, as the
    webhook would have said, and her cart's ladder ends (opted out) with nothing more sent."""
    sc = scenario(sqlite_url, "shopify", journeys=LADDER)
    opted_in_with_a_cart(sc, world)
    sc.later(minutes=30)
    consent_in_shopify(world, ASHA, sc.now, whatsapp="unsubscribed")  # its webhook never reaches the connector
    sc.later(hours=1)
    report = reconcile(sc)
    sc.later(days=2)
    assert sc.templates_to(ASHA) == ["cart_1_v1"]
    seen = sc.contact(ASHA)["consent"]["marketing"]
    assert (seen["state"], seen["source"]) == ("revoked", "shopify_whatsapp_marketing")
    assert ladder(sc)["status"] == "finished"
    assert (report.orders_seen, report.customers_seen) == (0, 1)
    # the next ticks read her again inside their overlap, and later with an unrelated edit: nothing changes
    sc.later(minutes=15)
    assert reconcile(sc).new_rows == 0


@pytest.mark.parametrize("newer", ["store_webhook", "whatsapp_stop"])
def test_a_newer_opt_out_heard_by_webhook_is_not_undone_by_an_older_consent_the_reconcile_reads(sqlite_url, scenario, world, newer):
    """Asha opts out, and the connector hears it (the store's consent webhook, or her STOP on WhatsApp); the
    reconcile then reads the opt-in she gave earlier, as Shopify's search still serves it. The older state
    changes nothing: her next cart, which she leaves without ticking the opt-in, gets no reminder."""
    sc = scenario(sqlite_url, "shopify", journeys=LADDER)
    opted_in_with_a_cart(sc, world)  # Shopify keeps: subscribed, dated then
    sc.later(minutes=30)
    if newer == "store_webhook":
        sc.shopify("customers_whats_app_marketing_consent/update",
                   p.shopify_whatsapp_consent(p.customer_id_for(ASHA), ASHA, "unsubscribed", sc.now))
    else:
        sc.say(ASHA, "STOP")
    sc.later(minutes=15)
    report = reconcile(sc)
    assert report.customers_seen == 1 and report.new_rows == 1  # the old opt-in was read and stored: it is old news
    SHOPIFY.start_checkout(sc, "B", ASHA, opt_in=False)
    sc.later(days=2)
    assert sc.templates_to(ASHA) == ["cart_1_v1"]
    seen = sc.contact(ASHA)
    if newer == "store_webhook":
        assert seen["consent"]["marketing"]["state"] == "revoked"
    else:
        assert seen["contact"]["opted_out_at"] is not None


def test_an_opt_in_given_in_the_store_while_the_connector_was_down_is_read_back_too(sqlite_url, scenario, world):
    """The other way: Asha, who never ticked an opt-in, subscribes to the store's WhatsApp marketing while its
    webhook is lost. The reconcile reads it, as the webhook would have said it: her cart, left unticked, is
    reminded (the store's WhatsApp consent is hers to give)."""
    sc = scenario(sqlite_url, "shopify", journeys=LADDER)
    SHOPIFY.start_checkout(sc, "A", ASHA, opt_in=False)
    sc.later(minutes=5)
    consent_in_shopify(world, ASHA, sc.now, whatsapp="subscribed")
    sc.later(minutes=10)
    reconcile(sc)
    sc.later(minutes=30)
    assert sc.contact(ASHA)["consent"]["marketing"]["state"] == "granted"
    assert sc.templates_to(ASHA) == ["cart_1_v1"]


# ---- the pass at the HTTP boundary: cursor, cost, stores ----------------------------------------------

def customer_node(n: int, *, updated: datetime, whatsapp: str = "UNSUBSCRIBED", consent_at: datetime | None = None,
                  phone: str | None = "+919876543210") -> dict[str, Any]:
    """A ``customers`` node as CUSTOMERS_QUERY reads it (API 2026-07); ``phone`` None: she gave none."""
    node: dict[str, Any] = {"id": f"gid://shopify/Customer/{700 + n}", "updatedAt": iso(updated), "defaultPhoneNumber": None}
    if phone:
        node["defaultPhoneNumber"] = {"phoneNumber": phone, "marketingState": "NOT_SUBSCRIBED", "marketingUpdatedAt": None,
                                      "whatsAppMarketingConsent": {"state": whatsapp, "updatedAt": iso(consent_at or updated)}}
    return node


def run_reconcile(db: Database, store: Any, sid: int, fake: FakeShopify, *, now: datetime, events: list | None = None, **kw: Any) -> SyncReport:
    sleep = recorder(events if events is not None else [])

    async def run() -> SyncReport:
        with respx.mock() as mock:
            mock.post(SHOP_URL).mock(side_effect=fake.handler)
            async with ShopifyAdminClient(store, sleep=sleep, clock=lambda: 0.0) as client:
                return await reconcile_orders(db, store, sid, client, now=now, sleep=sleep, **kw)

    return asyncio.run(run())


def asked_from(query: dict[str, Any]) -> str:
    return query["q"].split("'")[1]


def test_the_customers_cursor_moves_page_by_page_and_survives_a_restart(db_url):
    """The first pass reads a day back (never every customer of the shop); its cursor moves after each page to
    the newest ``updatedAt`` read and is kept in ``sync_cursors``: after a restart the next run starts there
    (minus the overlap). A customer read again unchanged, or changed in a way that leaves her consent as it
    was, stores nothing; her consent changed does, once."""
    settings, db, ids = setup(db_url)
    store, sid = settings.stores[0], ids["shop-a"]
    base = T - timedelta(hours=3)
    fake = FakeShopify([])
    nodes = [customer_node(n, updated=base + timedelta(minutes=10 * n), phone=f"+9198765430{n:02d}") for n in range(1, 5)]
    nodes.append(customer_node(5, updated=base + timedelta(minutes=50), phone=None))  # no phone: read, nothing to store
    nodes.append(customer_node(6, updated=T - timedelta(days=3)))  # changed before the first window
    fake.customers = {c["id"]: c for c in nodes}

    first = run_reconcile(db, store, sid, fake, now=T, page_size=2)
    assert asked_from(fake.customer_queries[0]) == iso(T - timedelta(days=1, minutes=5))
    assert [q["cursor"] is None for q in fake.customer_queries] == [True, False, False]  # pages of 2: 5 customers
    assert (first.customers_seen, first.new_rows, first.customers_failed) == (5, 4, None)
    newest = base + timedelta(minutes=50)
    assert read_cursor(db, sid, CUSTOMERS_CURSOR) == newest.isoformat() and first.customers_cursor_after == newest
    assert {r.topic for r in inbox(db, sid)} == {"sync/customer"}
    db.dispose()

    # a restart: a new process, the same database
    db = Database.from_url(db_url)
    fake.customer_queries.clear()
    fake.customers[nodes[1]["id"]] = {**nodes[1], "updatedAt": iso(T + timedelta(minutes=5))}  # a new address: consent as it was
    changed = customer_node(3, updated=T + timedelta(minutes=6), whatsapp="SUBSCRIBED", phone="+919876543003")
    fake.customers[changed["id"]] = changed  # she opted in again
    second = run_reconcile(db, store, sid, fake, now=T + timedelta(minutes=15), page_size=2)
    assert asked_from(fake.customer_queries[0]) == iso(newest - timedelta(minutes=5))
    assert (second.customers_seen, second.new_rows) == (3, 1)  # customer 5 again (in the overlap), 2 and 3
    assert read_cursor(db, sid, CUSTOMERS_CURSOR) == (T + timedelta(minutes=6)).isoformat()
    third = run_reconcile(db, store, sid, fake, now=T + timedelta(minutes=30), page_size=2)
    assert (third.customers_seen, third.new_rows) == (2, 0)  # customers 2 and 3 again, inside the overlap: duplicates
    assert read_cursor(db, sid, CUSTOMERS_CURSOR) == (T + timedelta(minutes=6)).isoformat()  # not moved, never back
    db.dispose()


def test_a_first_pass_after_a_long_outage_starts_at_the_older_orders_cursor_and_a_backfill_does_not_move_it(db_url):
    """A store whose orders cursor is three days old (the connector was down) reads its customers from there
    too: the outage the orders pass makes up for. A backfill (``--since 365d``) reads a year of orders but
    the customers from their own cursor only."""
    settings, db, ids = setup(db_url)
    store, sid = settings.stores[0], ids["shop-a"]
    upsert_cursor(db, sid, "orders_updated_at", (T - timedelta(days=3)).isoformat())
    fake = FakeShopify([])
    fake.customers = {c["id"]: c for c in [customer_node(1, updated=T - timedelta(days=2))]}
    run_reconcile(db, store, sid, fake, now=T)
    assert asked_from(fake.customer_queries[0]) == iso(T - timedelta(days=3, minutes=5))
    run_reconcile(db, store, sid, fake, now=T + timedelta(minutes=15), since=T - timedelta(days=365))
    assert asked_from(fake.customer_queries[1]) == iso(T - timedelta(days=2, minutes=5))
    db.dispose()


def test_the_customers_pass_waits_for_the_cost_budget_and_sleeps_off_a_throttle_as_the_orders_pass_does(db_url):
    """Each customers page waits until the bucket should hold its requested cost (2 + 3 a customer: under the
    single-query ceiling at any page size), and a THROTTLED answer is slept off for its computed wait and
    asked again: the orders pass's own budget and retry code, with the waits counted in the run's report."""
    settings, db, ids = setup(db_url)
    store, sid = settings.stores[0], ids["shop-a"]
    events: list = []
    fake = FakeShopify([], events=events)
    fake.customers = {c["id"]: c for c in [customer_node(1, updated=T - timedelta(hours=1))]}
    fake.available = 100  # what the orders page leaves in the bucket
    fake.throttle_calls = {2}  # the customers page (call 2, after the orders page) is throttled once

    report = run_reconcile(db, store, sid, fake, now=T, events=events)
    first = fake.customer_queries[0]["first"]
    assert first == 100 and gql.customers_query_cost(first) == 302
    assert gql.customers_query_cost(gql.customers_page_size_for(10_000)) <= gql.MAX_QUERY_COST
    # before the page: (302 - 100) / 50 s for the bucket; throttled: (118 - 18) / 50 s; then asked again
    assert events == [("request", 1, None), ("sleep", 4.04), ("request", 2, "throttled"), ("sleep", 2.0), ("request", 3, None)]
    assert (report.throttle_waits, report.retries, report.throttle_seconds) == (2, 1, pytest.approx(6.04))
    assert (report.customers_seen, report.new_rows, report.customers_failed) == (1, 1, None)
    db.dispose()


def test_one_stores_customers_pass_never_touches_another_stores_contacts(db_url):
    """The same customer (same Shopify id, same phone) shops at shop-a and shop-b, opted in at both. Her
    opt-out read back by shop-a's reconcile revokes her consent at shop-a only: shop-b's contact, cursor and
    reminders are untouched."""
    settings = shop_settings(db_url)
    store = settings.stores[0]
    phone, customer_id = "+919876543210", 701
    fake = FakeShopify([])
    fake.customers = {c["id"]: c for c in [customer_node(1, updated=T - timedelta(minutes=30))]}
    with running_app(settings) as (client, runtime):
        for shop, secret in (("shop-a", SECRETS["shop_a"]), ("shop-b", SECRETS["shop_b"])):
            body = dumps(p.shopify_whatsapp_consent(customer_id, phone, "subscribed", T - timedelta(hours=2)))
            r = client.post("/webhooks/shopify", content=body, headers=shopify_headers(
                body, secret, f"{shop}.myshopify.com", "customers_whats_app_marketing_consent/update"))
            assert r.status_code == 200
        runtime.processor.drain()
        report = run_reconcile(runtime.db, store, runtime.store_ids["shop-a"], fake, now=T)
        runtime.processor.drain()
        assert (report.customers_seen, report.new_rows) == (1, 1)

        def consent(shop: str) -> dict[str, Any]:
            r = client.get(f"/api/stores/{shop}/contacts/{phone}", headers={"Authorization": f"Bearer {SECRETS['admin']}"})
            assert r.status_code == 200
            return r.json()["consent"]["marketing"]

        assert consent("shop-a")["state"] == "revoked"
        assert consent("shop-b")["state"] == "granted"
        assert read_cursor(runtime.db, runtime.store_ids["shop-b"], CUSTOMERS_CURSOR) is None
        with runtime.db.engine.connect() as conn:
            rows = conn.execute(select(m.InboxEvent.store_id).where(m.InboxEvent.topic == "sync/customer")).scalars().all()
        assert rows == [runtime.store_ids["shop-a"]]


def test_a_failing_customers_pass_keeps_the_orders_read_and_fails_the_scheduled_tick(db_url, caplog):
    """A store whose token cannot read customers (its scopes were narrowed to orders): the orders are read
    and stored all the same, and the report says why the consent was not; the scheduled tick is recorded as
    failed, so the dashboard shows it, and the customers cursor stays where it was."""
    from jobs.scheduler import reconcile_store

    settings = shop_settings(db_url)
    store = settings.stores[0]
    fake = FakeShopify([gql_node(1, updated=T - timedelta(hours=1))])

    def handler(request: httpx.Request) -> httpx.Response:
        if "customers(" in json.loads(request.content)["query"]:
            return httpx.Response(200, json={"errors": [{"message": "Access denied for customers field. Required access: `read_customers` "
                                                                    "access scope.", "extensions": {"code": "ACCESS_DENIED"}}]})
        return fake.handler(request)

    with running_app(settings, clock=lambda: T) as (_client, runtime):
        sid = runtime.store_ids["shop-a"]

        async def direct() -> SyncReport:
            with respx.mock() as mock:
                mock.post(SHOP_URL).mock(side_effect=handler)
                async with ShopifyAdminClient(store) as api:
                    return await reconcile_orders(runtime.db, store, sid, api, now=T)

        report = asyncio.run(direct())
        assert report.orders_seen == 1 and report.new_rows == 1
        assert report.customers_failed is not None and "read_customers" in report.customers_failed
        assert read_cursor(runtime.db, sid, "orders_updated_at") is not None
        assert read_cursor(runtime.db, sid, CUSTOMERS_CURSOR) is None

        async def tick() -> bool:
            with respx.mock() as mock:
                mock.post(SHOP_URL).mock(side_effect=handler)
                return await reconcile_store(runtime, store, "w1", timedelta(minutes=15))

        with caplog.at_level(logging.INFO, logger="storeloop"):
            assert asyncio.run(tick()) is True
        [failed] = [r for r in caplog.records if r.name == "storeloop.jobs" and r.levelno == logging.ERROR]
        assert (failed.store, failed.job) == ("shop-a", "reconcile") and "customers' consent not read back" in failed.getMessage()
        from connector import job_health

        with runtime.db.engine.connect() as conn:
            value = conn.execute(select(m.SyncCursor.value).where(m.SyncCursor.store_id == sid,
                                                                  m.SyncCursor.name == f"{job_health.PREFIX}reconcile")).scalar()
        assert "read_customers" in json.loads(value)["last_error"]


def test_a_customer_whose_consent_cannot_be_read_fails_alone_with_a_reason(db_url):
    """One customer in the page comes back in a shape we cannot read (her WhatsApp consent not an object):
    her row fails with a reason a person can read and keeps its body for a replay; the customers beside her
    are applied, and the cursor moves past the page."""
    settings = shop_settings(db_url)
    store = settings.stores[0]
    good = customer_node(1, updated=T - timedelta(minutes=40))
    bad = customer_node(2, updated=T - timedelta(minutes=30), phone="+919876543211")
    bad["defaultPhoneNumber"]["whatsAppMarketingConsent"] = "UNSUBSCRIBED"
    fake = FakeShopify([])
    fake.customers = {c["id"]: c for c in (good, bad)}
    with running_app(settings) as (client, runtime):
        sid = runtime.store_ids["shop-a"]
        report = run_reconcile(runtime.db, store, sid, fake, now=T)
        runtime.processor.drain()
        assert (report.customers_seen, report.new_rows) == (2, 2)
        assert read_cursor(runtime.db, sid, CUSTOMERS_CURSOR) == (T - timedelta(minutes=30)).isoformat()
        with runtime.db.engine.connect() as conn:
            rows = conn.execute(select(m.InboxEvent).where(m.InboxEvent.store_id == sid, m.InboxEvent.topic == "sync/customer")).all()
        by_customer = {c["id"]: r for r in rows for c in (good, bad) if f"{c['id']}:" in r.dedupe_key}
        assert by_customer[good["id"]].status == "done"
        assert by_customer[bad["id"]].status == "failed" and "whatsAppMarketingConsent" in by_customer[bad["id"]].last_error
        r = client.get("/api/stores/shop-a/contacts/+919876543210", headers={"Authorization": f"Bearer {SECRETS['admin']}"})
        assert r.json()["consent"]["marketing"]["state"] == "revoked"


def test_a_changed_customer_with_no_dated_consent_is_not_stored():
    """The customers pass reads every changed customer; one whose phone carries no dated consent (nothing
    the consent path would read) becomes no inbox row, so her number is not kept for nothing. Her cursor
    still moves (``updated_at``)."""
    from adapters.shopify.sync import ShopifyCustomerPager

    at = "2026-11-20T06:40:00Z"
    bare = {"id": "gid://shopify/Customer/7", "updatedAt": at,
            "defaultPhoneNumber": {"phoneNumber": "+919876543210", "marketingState": "NOT_SUBSCRIBED", "marketingUpdatedAt": None,
                                   "whatsAppMarketingConsent": None}}
    dated = {**bare, "defaultPhoneNumber": {**bare["defaultPhoneNumber"], "whatsAppMarketingConsent": {"state": "SUBSCRIBED", "updatedAt": at}}}
    none, some = ShopifyCustomerPager._customer(bare), ShopifyCustomerPager._customer(dated)
    assert none.entry is None and none.updated_at is not None
    assert some.entry is not None and some.entry[0] == "sync/customer"
