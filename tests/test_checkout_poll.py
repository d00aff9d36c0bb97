"""The abandoned-checkout poll: Shopify GraphQL faked at the HTTP boundary (respx), the inbox,
cursors and journeys on SQLite and PostgreSQL (``db_url``), the processor driven with an
injected clock. A checkout seen by webhook and by poll is one checkout and one journey run."""

from __future__ import annotations

import asyncio
import json
from contextlib import contextmanager
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from types import SimpleNamespace

import httpx
import pytest
import respx
from sqlalchemy import select

from adapters.shopify import graphql as gql
from adapters.shopify.client import ShopifyAdminClient
from adapters.shopify.normalize import normalize as shopify_normalize
from connector import events as ev
from connector.checkout_poll import CHECKOUTS_CURSOR, poll_abandoned_checkouts
from connector.config import parse_settings
from connector.errors import PermanentError, SyncError
from connector.outbox.dispatcher import Dispatcher
from connector.outbox.senders import DryRunSender
from connector.storage import models as m
from connector.storage.db import Database
from connector.storage.inbox import sync_stores, with_body
from connector.sync import read_cursor, upsert_cursor
from jobs.scheduler import build_scheduler, poll_checkouts_store
from tests.conftest import FIXTURES, SECRETS, settings_dict
from tests.helpers import dumps, load_json, running_app, shopify_headers

T = datetime(2026, 11, 20, 7, 0, tzinfo=timezone.utc)
SHOP_URL = "https://shop-a.example/admin/api/2026-07/graphql.json"
FIXTURE_ID = 981820079255243537  # the sample's name is "#981820079255243537": Shopify names a checkout "#" + its id
AC_URL = "https://shop-a.myshopify.com/7001/checkouts/ac/hWN9BnOsWHe9H8pVWYacHHG5/recover?key=8a0dccedfd237694"


def iso(dt: datetime) -> str:
    return dt.strftime("%Y-%m-%dT%H:%M:%SZ")


class Clock:
    def __init__(self, now: datetime):
        self.now = now

    def __call__(self) -> datetime:
        return self.now


def node(n: int, *, updated: datetime, url: str | None = None, completed: datetime | None = None,
         phone: str | None = None, whatsapp: str = "SUBSCRIBED") -> dict:
    """An ``abandonedCheckouts`` node as the 2026-07 Admin API returns it for our query."""
    return {
        "id": f"gid://shopify/AbandonedCheckout/{n}", "name": f"#{n}",
        "abandonedCheckoutUrl": url or f"https://shop-a.example/7001/checkouts/tok{n}/recover?key=k{n}&locale=en-IN",
        "createdAt": iso(updated - timedelta(minutes=10)), "updatedAt": iso(updated),
        "completedAt": iso(completed) if completed else None,
        "totalPriceSet": {"shopMoney": {"amount": "899.00", "currencyCode": "INR"}},
        "customer": {"id": f"gid://shopify/Customer/{500 + n % 1000}", "firstName": "Asha", "lastName": "K",
                     "defaultEmailAddress": {"emailAddress": f"buyer{n}@example.com", "marketingState": "NOT_SUBSCRIBED"},
                     "defaultPhoneNumber": {"phoneNumber": phone or f"+91 98765 4{n % 10000:04d}", "marketingState": "NOT_SUBSCRIBED",
                                            "whatsAppMarketingConsent": {"state": whatsapp}}},
        "shippingAddress": {"phone": None, "countryCodeV2": "IN", "firstName": "Asha", "lastName": "K"},
        "billingAddress": None,
        "lineItems": {"pageInfo": {"hasNextPage": False, "endCursor": None}, "nodes": [
            {"id": f"gid://shopify/AbandonedCheckoutLineItem/{n}1", "quantity": 2, "title": "Neem wash", "sku": "NW-1",
             "variant": {"id": "gid://shopify/ProductVariant/77"}, "product": {"id": "gid://shopify/Product/66"},
             "originalUnitPriceSet": {"shopMoney": {"amount": "449.50"}}}]},
    }


def gid_number(n: dict) -> int:
    return int(n["id"].rsplit("/", 1)[1])


class FakeCheckouts:
    """``abandonedCheckouts(first, after, query: "updated_at:>='…'", sortKey: ID)`` with Relay cursors and a cost answer."""

    def __init__(self, nodes: list[dict], *, events: list | None = None):
        self.nodes = {n["id"]: n for n in nodes}
        self.events = events if events is not None else []
        self.throttle_calls: set[int] = set()
        self.fail_calls: set[int] = set()
        self.repeat_cursor = False
        self.calls = 0
        self.queries: list[dict] = []

    def put(self, n: dict) -> None:
        self.nodes[n["id"]] = n

    def handler(self, request: httpx.Request) -> httpx.Response:
        self.calls += 1
        body = json.loads(request.content)
        assert "abandonedCheckouts(" in body["query"]
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
        rows = sorted((n for n in self.nodes.values() if n["updatedAt"] >= since), key=gid_number)
        if v.get("cursor"):
            rows = [n for n in rows if gid_number(n) > int(v["cursor"])]
        page, more = rows[: v["first"]], len(rows) > v["first"]
        end = "1" if self.repeat_cursor else (str(gid_number(page[-1])) if page else None)
        return httpx.Response(200, json={
            "data": {"abandonedCheckouts": {"pageInfo": {"hasNextPage": more, "endCursor": end}, "nodes": page}},
            "extensions": {"cost": {"requestedQueryCost": gql.checkout_query_cost(v["first"]), "actualQueryCost": 40,
                                    "throttleStatus": {"maximumAvailable": 1000.0, "currentlyAvailable": 900, "restoreRate": 50.0}}}})


def shop_settings(db_url: str, *, second_reminder: bool = False, **worker: object):
    """``second_reminder``: the ladder's second step (6 hours after abandonment) has a template too."""
    raw = settings_dict(db_url)
    raw["worker"].update(worker)
    steps = ("first", "second") if second_reminder else ("first",)
    raw["stores"][0].update(
        access_token="shpat_test", api_base_url="https://shop-a.example", policy={"quiet_hours": ""},
        templates=[{"step": f"checkout_recovery.{step}", "name": f"cart_{step}", "category": "marketing",
                    "body_text": "You left {{1}}: {{2}}", "body": ["reorder.product", "checkout.recovery_url"]} for step in steps],
        journeys={"checkout_recovery": {"abandon_after_minutes": 30, "ladder_minutes": [0, 360]}})
    return parse_settings(raw, environ={})


def recorder(events: list):
    async def sleep(seconds: float) -> None:
        events.append(("sleep", round(seconds, 3)))
    return sleep


async def poll(db: Database, store, store_id: int, fake: FakeCheckouts, now: datetime, sleep=None, **kw):
    sleep = sleep or recorder([])
    with respx.mock() as mock:
        mock.post(SHOP_URL).mock(side_effect=fake.handler)
        async with ShopifyAdminClient(store, sleep=sleep, clock=lambda: 0.0) as client:
            return await poll_abandoned_checkouts(db, store, store_id, client, now=now, sleep=sleep, **kw)


def inbox(db: Database, store_id: int) -> list:
    with db.engine.connect() as conn:
        return conn.execute(with_body().where(m.InboxEvent.store_id == store_id).order_by(m.InboxEvent.id)).all()


def runs(db: Database) -> dict:
    with db.engine.connect() as conn:
        return {r.subject: r for r in conn.execute(select(m.JourneyRun).where(m.JourneyRun.journey == "checkout_recovery"))}


def reminders(db: Database) -> list[tuple[str, str, str]]:
    with db.engine.connect() as conn:
        return [(o.payload["subject"], o.step, o.status) for o in conn.execute(
            select(m.OutboxMessage).where(m.OutboxMessage.journey == "checkout_recovery").order_by(m.OutboxMessage.id))]


def fixture_checkout(**changes: object) -> dict:
    """The real checkouts/create sample, brought to the test's time with a reachable phone and the opt-in ticked."""
    c = load_json(FIXTURES / "shopify" / "checkouts_create.sample.json")
    c.update(phone="+91 98765 43210", buyer_accepts_marketing=True, buyer_accepts_sms_marketing=True, completed_at=None,
             created_at=iso(T - timedelta(minutes=15)), updated_at=iso(T - timedelta(minutes=5)))
    c.update(changes)
    return c


def post_webhook(client, payload: dict, topic: str = "checkouts/create") -> None:
    body = dumps(payload)
    r = client.post("/webhooks/shopify", content=body, headers=shopify_headers(body, SECRETS["shop_a"], "shop-a.myshopify.com", topic))
    assert r.status_code == 200


def polled_twin(webhook: dict, n: int, url: str | None = None) -> dict:
    """The same checkout as the Admin API shows it: id = the number in its name, the recovery URL with a locale."""
    twin = node(n, updated=datetime.fromisoformat(webhook["updated_at"].replace("Z", "+00:00")), phone=webhook["phone"],
                url=url or webhook["abandoned_checkout_url"] + "&locale=en-IN", whatsapp="NOT_SUBSCRIBED")
    twin["createdAt"] = webhook["created_at"]
    return twin


def classic_and_newer() -> tuple[dict, dict, FakeCheckouts]:
    """Two checkouts as webhooks, and the Admin API showing both: the sample (token 123123123, a
    classic recovery URL) and one with a newer-style recovery URL (token 84ad…, no token in the link)."""
    classic = fixture_checkout()
    newer = fixture_checkout(token="84ad78572dae52a8cbea7d55371afe89", phone="+91 98123 45678", abandoned_checkout_url=AC_URL,
                             cart_token="hWN9BnOsWHe9H8pVWYacHHG5")
    fake = FakeCheckouts([polled_twin(classic, FIXTURE_ID),
                          polled_twin(newer, 35550298931313, url=AC_URL.replace("shop-a.myshopify.com", "shop-a.example") + "&locale=en-IN")])
    return classic, newer, fake


# ---- the normaliser and the recovery link --------------------------------------------------


def test_a_polled_node_normalises_to_the_webhooks_checkout_event():
    store = shop_settings("sqlite://").stores[0]
    n = node(42, updated=T) | {gql.MARKER: {"token": "tokX", "via": "known"}}
    [event] = shopify_normalize("sync/checkout", n, store)
    assert isinstance(event, ev.CheckoutUpdated)
    c = event.checkout
    assert (c.token, c.updated_at, c.created_at, c.completed_at) == ("tokX", T, T - timedelta(minutes=10), None)
    assert (c.total, c.currency, c.accepts_marketing) == (Decimal("899.00"), "INR", True)  # WhatsApp consent SUBSCRIBED
    assert c.recovery_url == "https://shop-a.example/7001/checkouts/tok42/recover?key=k42&locale=en-IN"
    assert c.customer.phone.e164 == "+919876540042" and c.customer.external_id == "542" and c.customer.email == "buyer42@example.com"
    [li] = c.line_items
    assert (li.title, li.quantity, li.variant_id, li.product_id, li.price) == ("Neem wash", 2, "77", "66", Decimal("449.50"))
    # stored without a key: the token in a classic URL, else the checkout id
    assert gql.normalize_checkout_node(node(42, updated=T), store)[0].checkout.token == "tok42"
    [unmatched] = gql.normalize_checkout_node(node(43, updated=T, url=AC_URL, whatsapp="NOT_SUBSCRIBED"), store)
    assert unmatched.checkout.token == "id:43" and unmatched.checkout.accepts_marketing is False
    # an email opt-in alone is no WhatsApp marketing consent; the phone's SMS opt-in is
    email_only = node(45, updated=T, whatsapp="NOT_SUBSCRIBED")
    email_only["customer"]["defaultEmailAddress"]["marketingState"] = "SUBSCRIBED"
    assert gql.normalize_checkout_node(email_only, store)[0].checkout.accepts_marketing is False
    sms = node(46, updated=T, whatsapp="NOT_SUBSCRIBED")
    sms["customer"]["defaultPhoneNumber"]["marketingState"] = "SUBSCRIBED"
    assert gql.normalize_checkout_node(sms, store)[0].checkout.accepts_marketing is True
    [done] = gql.normalize_checkout_node(node(44, updated=T, completed=T), store)
    assert done.checkout.completed_at == T
    # the page query stays under Shopify's single-query ceiling
    first = gql.checkout_page_size_for(100)
    assert gql.checkout_query_cost(first) <= gql.MAX_QUERY_COST < gql.checkout_query_cost(first + 1)


def test_recovery_links_of_both_shapes_identify_their_checkout():
    classic = gql.recovery_link(load_json(FIXTURES / "shopify" / "checkouts_create.sample.json")["abandoned_checkout_url"])
    assert (classic.form, classic.ref, classic.key) == ("token", "123123123", "example-secret-token")  # the sample's token
    ac = gql.recovery_link(AC_URL)
    assert (ac.form, ac.ref) == ("ac", "hWN9BnOsWHe9H8pVWYacHHG5")
    same = gql.recovery_link(AC_URL.replace("shop-a.myshopify.com", "shop-a.example") + "&locale=en-IN")
    assert same.identity == ac.identity
    assert gql.recovery_link(AC_URL.replace("key=8a0d", "key=9a0d")).identity != ac.identity
    for junk in (None, "", "not a url", "https://x.example/cart/1:2", "https://x.example/checkouts/a%20b/recover"):
        assert gql.recovery_link(junk) is None


# ---- paging, throttling, cursor ------------------------------------------------------------


def setup(db_url: str):
    settings = shop_settings(db_url)
    db = Database.from_url(db_url)
    ids = sync_stores(db, [(s.key, s.platform) for s in settings.stores])
    return settings.stores[0], db, ids["shop-a"]


def test_pages_are_read_throttling_is_slept_off_and_the_cursor_moves_after_the_last_page(db_url):
    store, db, sid = setup(db_url)
    nodes = [node(n, updated=T - timedelta(minutes=60 - 5 * n)) for n in range(1, 6)]
    events: list = []
    fake = FakeCheckouts(nodes, events=events)
    fake.throttle_calls = {2}  # the second page is throttled once
    report = asyncio.run(poll(db, store, sid, fake, T, sleep=recorder(events), page_size=2))
    assert (report.pages, report.checkouts_seen, report.new_rows, report.by_link) == (3, 5, 5, 5)
    assert fake.queries[0] == {"first": 2, "cursor": None, "q": f"updated_at:>='{iso(T - timedelta(days=1, minutes=5))}'",
                               "lines": gql.CHECKOUT_LINES}
    throttled = events.index(("request", 2, "throttled"))
    assert events[throttled + 1] == ("sleep", 2.0) and events[throttled + 2] == ("request", 3, "2")  # (118 - 18) / 50 s
    assert report.throttle_waits == 1 and report.retries == 1
    assert report.cursor_after == T - timedelta(minutes=35)
    assert read_cursor(db, sid, CHECKOUTS_CURSOR) == (T - timedelta(minutes=35)).isoformat()
    rows = inbox(db, sid)
    assert [r.topic for r in rows] == ["sync/checkout"] * 5 and {r.source for r in rows} == {"shopify"}
    assert rows[0].dedupe_key == f"shopify:sync-checkout:1:{iso(T - timedelta(minutes=55))}"
    assert json.loads(rows[0].raw_body)[gql.MARKER] == {"token": "tok1", "via": "link"}
    # the next run reads from the cursor minus the overlap; unchanged checkouts are not stored again
    fake.queries.clear()
    again = asyncio.run(poll(db, store, sid, fake, T + timedelta(minutes=15), page_size=2))
    assert fake.queries[0]["q"] == f"updated_at:>='{iso(T - timedelta(minutes=40))}'"
    assert (again.checkouts_seen, again.new_rows) == (2, 0)
    db.dispose()


def test_a_failure_mid_run_leaves_the_cursor_and_a_rerun_stores_nothing_twice(db_url):
    store, db, sid = setup(db_url)
    before = T - timedelta(hours=2)
    upsert_cursor(db, sid, CHECKOUTS_CURSOR, before.isoformat())
    nodes = [node(n, updated=T - timedelta(minutes=60 - n)) for n in range(1, 7)]
    fake = FakeCheckouts(nodes)
    fake.fail_calls = {2}  # page 2 answers a GraphQL error
    with pytest.raises(PermanentError, match="boom"):
        asyncio.run(poll(db, store, sid, fake, T, page_size=2))
    assert read_cursor(db, sid, CHECKOUTS_CURSOR) == before.isoformat()  # page 1 is committed, but pages come in id order
    assert len(inbox(db, sid)) == 2
    fake.fail_calls = set()
    report = asyncio.run(poll(db, store, sid, fake, T, page_size=2))
    assert (report.cursor_before, report.checkouts_seen, report.new_rows) == (before, 6, 4)
    assert len(inbox(db, sid)) == 6 and len({r.dedupe_key for r in inbox(db, sid)}) == 6
    assert read_cursor(db, sid, CHECKOUTS_CURSOR) == (T - timedelta(minutes=54)).isoformat()
    db.dispose()


def test_a_repeated_page_cursor_is_refused(db_url):
    store, db, sid = setup(db_url)
    fake = FakeCheckouts([node(n, updated=T - timedelta(minutes=n)) for n in range(1, 4)])
    fake.repeat_cursor = True
    with pytest.raises(SyncError, match="repeated"):
        asyncio.run(poll(db, store, sid, fake, T, page_size=1))
    assert fake.calls == 2 and read_cursor(db, sid, CHECKOUTS_CURSOR) is None
    db.dispose()


# ---- one checkout, one run: webhook and poll together ----------------------------------------


def test_a_checkout_seen_by_webhook_and_by_poll_gets_one_run_and_one_first_reminder(db_url):
    settings = shop_settings(db_url)
    store = settings.stores[0]
    classic, newer, fake = classic_and_newer()
    clock = Clock(T)
    with running_app(settings) as (client, runtime):
        runtime.processor.clock = clock
        sid = runtime.store_ids["shop-a"]
        post_webhook(client, classic)
        post_webhook(client, newer)
        runtime.processor.drain()
        report = asyncio.run(poll(runtime.db, store, sid, fake, T + timedelta(minutes=10)))
        assert (report.checkouts_seen, report.new_rows, report.known, report.held_back) == (2, 2, 2, 0)
        clock.now = T + timedelta(minutes=10)
        runtime.processor.drain()
        assert reminders(runtime.db) == []  # abandoned at 06:55 + 30 minutes
        clock.now = T + timedelta(minutes=26)
        runtime.processor.process_timers()
        # the webhooks come again and the next poll finds the same state: still one of each
        post_webhook(client, classic, "checkouts/update")
        assert asyncio.run(poll(runtime.db, store, sid, fake, T + timedelta(minutes=30))).new_rows == 0
        runtime.processor.drain()
        runtime.processor.process_timers()
        found = runs(runtime.db)
        sent = reminders(runtime.db)
        rows = [r for r in inbox(runtime.db, sid) if r.topic == "sync/checkout"]
    assert set(found) == {"checkout:123123123", "checkout:84ad78572dae52a8cbea7d55371afe89"}
    assert sent == [("checkout:123123123", "first", "pending"), ("checkout:84ad78572dae52a8cbea7d55371afe89", "first", "pending")]
    assert all(r.status == "done" for r in rows)
    assert sorted(json.loads(r.raw_body)[gql.MARKER]["via"] for r in rows) == ["known", "known"]


def test_a_lost_webhook_is_recovered_by_the_poll_after_the_quiet_minutes(db_url):
    settings = shop_settings(db_url)
    store = settings.stores[0]
    classic = node(7, updated=T - timedelta(minutes=5))  # token tok7 in its recovery URL
    newer = node(4242, updated=T - timedelta(minutes=10), url=AC_URL)  # no token to be had: keyed by its id, after a grace
    fake = FakeCheckouts([classic, newer])
    clock = Clock(T)
    with running_app(settings) as (_client, runtime):
        runtime.processor.clock = clock
        sid = runtime.store_ids["shop-a"]
        first = asyncio.run(poll(runtime.db, store, sid, fake, T))
        assert (first.by_link, first.held_back, first.new_rows) == (1, 1, 1)
        assert first.cursor_after == T - timedelta(minutes=10)  # not past the checkout held back
        runtime.processor.drain()
        assert set(runs(runtime.db)) == {"checkout:tok7"}
        clock.now = T + timedelta(minutes=24)
        runtime.processor.process_timers()
        assert reminders(runtime.db) == []  # quiet: updated 06:55, abandoned at 07:25
        clock.now = T + timedelta(minutes=26)
        runtime.processor.process_timers()
        assert reminders(runtime.db) == [("checkout:tok7", "first", "pending")]
        # an hour on, no webhook came for the other one: it is keyed by its id and starts too
        later = asyncio.run(poll(runtime.db, store, sid, fake, T + timedelta(minutes=55)))
        assert (later.by_id, later.held_back, later.new_rows) == (1, 0, 1)
        assert later.cursor_after == T - timedelta(minutes=5)
        clock.now = T + timedelta(minutes=55)
        runtime.processor.drain()
        runtime.processor.process_timers()
        sent = reminders(runtime.db)
        with runtime.db.engine.connect() as conn:
            consent = conn.execute(select(m.Contact.consent_marketing)).scalars().all()
    assert sent == [("checkout:tok7", "first", "pending"), ("checkout:id:4242", "first", "pending")]
    assert consent == ["granted", "granted"]  # the customer's WhatsApp marketing consent, as the checkout's opt-in


def test_a_completed_checkout_starts_nothing_and_ends_a_running_ladder(db_url):
    settings = shop_settings(db_url)
    store = settings.stores[0]
    webhook = fixture_checkout()
    fake = FakeCheckouts([node(9, updated=T - timedelta(minutes=5), completed=T - timedelta(minutes=5))])
    clock = Clock(T)
    with running_app(settings) as (client, runtime):
        runtime.processor.clock = clock
        sid = runtime.store_ids["shop-a"]
        report = asyncio.run(poll(runtime.db, store, sid, fake, T))
        assert (report.skipped_completed, report.new_rows) == (1, 0)  # never seen and already bought: nothing to do
        post_webhook(client, webhook)
        runtime.processor.drain()
        assert runs(runtime.db)["checkout:123123123"].status == "active"
        # the buyer completes it; the completion webhook is lost, the poll sees it
        done = polled_twin(webhook, FIXTURE_ID) | {"updatedAt": iso(T + timedelta(minutes=8)), "completedAt": iso(T + timedelta(minutes=8))}
        fake.put(done)
        asyncio.run(poll(runtime.db, store, sid, fake, T + timedelta(minutes=10)))
        clock.now = T + timedelta(minutes=10)
        runtime.processor.drain()
        clock.now = T + timedelta(hours=8)
        runtime.processor.process_timers()
        run = runs(runtime.db)["checkout:123123123"]
        sent = reminders(runtime.db)
    assert (run.status, run.state["outcome"]) == ("finished", "completed")
    assert sent == []


def test_a_poll_that_shows_the_customers_account_phone_leaves_the_checkouts_own_phone_its_reminders(db_url):
    """Asha is signed in with the number on her account (an old one) and types her current number on the
    checkout: the webhook names the checkout's phone. The Admin API has no checkout phone, only the
    customer's: before, the poll's read made her checkout name another contact and her ladder ended
    (``contact_changed``) before its first reminder; and the checkout went to the old number's contact."""
    settings = shop_settings(db_url)
    store = settings.stores[0]
    account_phone = "+91 99000 11111"
    webhook = fixture_checkout()  # phone: +91 98765 43210, the opt-in ticked
    webhook["customer"] = {**webhook["customer"], "phone": account_phone}
    twin = polled_twin(webhook, FIXTURE_ID)
    twin["customer"]["defaultPhoneNumber"]["phoneNumber"] = account_phone
    fake = FakeCheckouts([twin])
    clock = Clock(T)
    with running_app(settings) as (client, runtime):
        runtime.processor.clock = clock
        sid = runtime.store_ids["shop-a"]
        post_webhook(client, webhook)
        runtime.processor.drain()
        assert asyncio.run(poll(runtime.db, store, sid, fake, T + timedelta(minutes=10))).known == 1
        clock.now = T + timedelta(minutes=10)
        runtime.processor.drain()
        clock.now = T + timedelta(minutes=26)  # abandoned at 07:25
        runtime.processor.process_timers()
        run = runs(runtime.db)["checkout:123123123"]
        with runtime.db.engine.connect() as conn:
            phones = dict(conn.execute(select(m.Contact.id, m.Contact.phone_e164)).all())
            queued = [(phones[o.contact_id], o.step) for o in conn.execute(
                select(m.OutboxMessage).where(m.OutboxMessage.journey == "checkout_recovery"))]
            checkout_contact = conn.execute(select(m.Checkout.contact_id)).scalar_one()
    assert run.status == "active" and "contact_changed_to" not in run.state
    assert queued == [("+919876543210", "first")]  # to the number on the checkout, nothing to the account's
    assert phones[checkout_contact] == "+919876543210"


def account_phone_twin(webhook: dict, account_phone: str, *, whatsapp: str = "NOT_SUBSCRIBED") -> dict:
    """The webhook's checkout as the poll shows it: the customer's account phone in place of the checkout's."""
    twin = polled_twin(webhook, FIXTURE_ID)
    twin["customer"]["defaultPhoneNumber"].update(phoneNumber=account_phone, whatsAppMarketingConsent={"state": whatsapp})
    return twin


def sent_to(db: Database) -> tuple[list[tuple[str, str, str]], dict[int, str]]:
    """The cart reminders as (phone, step, status), and every contact's phone by id."""
    with db.engine.connect() as conn:
        phones = dict(conn.execute(select(m.Contact.id, m.Contact.phone_e164)).all())
        queued = [(phones[o.contact_id], o.step, o.status) for o in conn.execute(
            select(m.OutboxMessage).where(m.OutboxMessage.journey == "checkout_recovery").order_by(m.OutboxMessage.id))]
    return queued, phones


def test_a_checkout_the_poll_saw_first_moves_to_the_phone_its_late_webhook_names(db_url):
    """The poll reads Asha's checkout before its webhook (delayed; Shopify retries for up to 48 hours) and
    can only name her account phone, an old number. When the webhook comes with the number she typed on
    the checkout, her run moves there before its first reminder: before, it ended ``contact_changed`` and
    she got no reminder at all."""
    settings = shop_settings(db_url)
    store = settings.stores[0]
    webhook = fixture_checkout()  # the checkout's phone: +91 98765 43210, the opt-in ticked
    webhook["customer"] = {**webhook["customer"], "phone": "+91 99000 11111"}
    fake = FakeCheckouts([account_phone_twin(webhook, "+91 99000 11111")])
    clock = Clock(T)
    with running_app(settings) as (client, runtime):
        runtime.processor.clock = clock
        sid = runtime.store_ids["shop-a"]
        assert asyncio.run(poll(runtime.db, store, sid, fake, T)).new_rows == 1
        runtime.processor.drain()
        with runtime.db.engine.connect() as conn:
            first_contact = conn.execute(select(m.Contact.phone_e164).join(m.JourneyRun, m.JourneyRun.contact_id == m.Contact.id)).scalar_one()
        assert first_contact == "+919900011111"  # all the poll can know
        clock.now = T + timedelta(minutes=2)
        post_webhook(client, webhook, "checkouts/update")  # the same checkout, at last with its own phone
        runtime.processor.drain()
        clock.now = T + timedelta(minutes=26)  # abandoned at 07:25
        runtime.processor.process_timers()
        run = runs(runtime.db)["checkout:123123123"]
        queued, phones = sent_to(runtime.db)
        with runtime.db.engine.connect() as conn:
            checkout_contact = conn.execute(select(m.Checkout.contact_id)).scalar_one()
    assert run.status == "active" and "contact_changed_to" not in run.state
    assert phones[run.contact_id] == "+919876543210"
    assert queued == [("+919876543210", "first", "pending")]  # nothing to the account's number
    assert phones[checkout_contact] == "+919876543210"


@contextmanager
def _polled_first_and_due_for_the_account_phone(db_url):
    """The poll saw the checkout first (only the account phone, opted in) and its first reminder came due at 07:25;
    the checkout's webhook, naming her own phone, has not come yet. Yields what the late-webhook tests go on with."""
    settings = shop_settings(db_url, second_reminder=True)
    store = settings.stores[0]
    webhook = fixture_checkout()
    webhook["customer"] = {**webhook["customer"], "phone": "+91 99000 11111"}
    fake = FakeCheckouts([account_phone_twin(webhook, "+91 99000 11111", whatsapp="SUBSCRIBED")])
    clock = Clock(T)
    with running_app(settings) as (client, runtime):
        runtime.processor.clock = clock
        sid = runtime.store_ids["shop-a"]
        asyncio.run(poll(runtime.db, store, sid, fake, T))
        runtime.processor.drain()
        clock.now = T + timedelta(minutes=26)
        runtime.processor.process_timers()
        yield settings, webhook, clock, client, runtime


def test_after_a_reminder_to_the_account_phone_the_late_webhook_moves_the_rest_of_the_ladder_there_once(db_url):
    """The poll's run reminded the account phone (it has the WhatsApp opt-in) before the checkout's webhook
    came: the next reminder goes to the checkout's phone. That move happens once: when the checkout then
    gives yet another phone, that is a real change, and the ladder ends (``contact_changed``)."""
    with _polled_first_and_due_for_the_account_phone(db_url) as (settings, webhook, clock, client, runtime):
        asyncio.run(Dispatcher(runtime.db, settings, runtime.store_ids, DryRunSender(), clock=clock).drain())
        assert sent_to(runtime.db)[0] == [("+919900011111", "first", "dry_run")]
        clock.now = T + timedelta(hours=1)
        post_webhook(client, webhook, "checkouts/update")  # Shopify's retry, an hour late
        runtime.processor.drain()
        clock.now = T + timedelta(hours=6, minutes=26)  # the second step: 6 hours after 07:25
        runtime.processor.process_timers()
        queued, _ = sent_to(runtime.db)
        assert runs(runtime.db)["checkout:123123123"].status == "active"
        clock.now = T + timedelta(hours=7)
        post_webhook(client, {**webhook, "phone": "+91 98111 22222", "updated_at": iso(T + timedelta(hours=7))}, "checkouts/update")
        runtime.processor.drain()
        run = runs(runtime.db)["checkout:123123123"]
        _, phones = sent_to(runtime.db)
    assert queued == [("+919900011111", "first", "dry_run"), ("+919876543210", "second", "pending")]
    assert run.status == "finished" and run.state["outcome"] == "contact_changed"
    assert phones[run.state["contact_changed_to"]] == "+919811122222"


def test_a_reminder_still_waiting_for_the_account_phone_is_dropped_when_the_late_webhook_moves_the_run(db_url):
    """The first reminder was queued for the account phone but had not gone out (held: quiet hours, a retry)
    when the checkout's webhook named her own phone: it never goes to the old number, and the ladder goes
    on at the checkout's phone from its next step."""
    with _polled_first_and_due_for_the_account_phone(db_url) as (settings, webhook, clock, client, runtime):
        # the first reminder is queued for the account phone, not sent yet
        clock.now = T + timedelta(minutes=27)
        post_webhook(client, webhook, "checkouts/update")
        runtime.processor.drain()
        sender = DryRunSender()
        asyncio.run(Dispatcher(runtime.db, settings, runtime.store_ids, sender, clock=clock).drain())
        clock.now = T + timedelta(hours=6, minutes=26)
        runtime.processor.process_timers()
        queued, _ = sent_to(runtime.db)
        with runtime.db.engine.connect() as conn:
            reasons = conn.execute(select(m.OutboxMessage.skip_reason).where(m.OutboxMessage.step == "first")).scalars().all()
    assert queued == [("+919900011111", "first", "skipped"), ("+919876543210", "second", "pending")]
    assert reasons == ["contact_moved"]


# ---- the periodic job ----------------------------------------------------------------------


def test_the_poll_is_scheduled_per_shopify_store_with_credentials_and_can_be_turned_off():
    runtime = SimpleNamespace(settings=shop_settings("sqlite://", checkout_poll_minutes=5), store_ids={}, db=None, clock=lambda: T)
    jobs = {j.id: j for j in build_scheduler(runtime, holder="w1").get_jobs()}
    assert "checkout-poll:shop-a" in jobs and "checkout-poll:shop-b" not in jobs and "checkout-poll:woo" not in jobs
    job = jobs["checkout-poll:shop-a"]
    assert job.trigger.interval == timedelta(minutes=5) and job.coalesce is True and job.max_instances == 1
    off = SimpleNamespace(settings=shop_settings("sqlite://", checkout_poll_minutes=0), store_ids={}, db=None, clock=lambda: T)
    assert not [j for j in build_scheduler(off, holder="w1").get_jobs() if j.id.startswith("checkout-poll:")]


def test_the_scheduled_poll_takes_the_lease_once_per_tick_and_skips_an_uninstalled_shop(db_url):
    settings = shop_settings(db_url)
    store = settings.stores[0]
    fake = FakeCheckouts([node(1, updated=T - timedelta(minutes=5))])
    with running_app(settings) as (client, runtime):
        runtime.clock = lambda: T

        async def tick(holder: str) -> bool:
            with respx.mock(assert_all_called=False) as mock:
                mock.post(SHOP_URL).mock(side_effect=fake.handler)
                return await poll_checkouts_store(runtime, store, holder, timedelta(minutes=15))

        assert asyncio.run(tick("w1")) is True
        assert asyncio.run(tick("w2")) is False  # same tick, another worker
        assert fake.calls == 1 and len(inbox(runtime.db, runtime.store_ids["shop-a"])) == 1
        with runtime.db.engine.connect() as conn:
            lease = conn.execute(select(m.Lease).where(m.Lease.name == "job:checkout-poll:shop-a")).one()
        assert lease.holder == "w1"
        shop = load_json(FIXTURES / "shopify" / "app_uninstalled.sample.json") | {"myshopify_domain": "shop-a.myshopify.com"}
        post_webhook(client, shop, "app/uninstalled")
        runtime.processor.drain()
        assert asyncio.run(tick("w1")) is False and fake.calls == 1  # w1 holds the lease: only the uninstall stops it


def test_a_checkout_polled_before_its_webhook_arrives_gets_one_run_and_one_first_reminder(db_url):
    """The poll sees the checkouts first: the classic one is keyed by the token in its recovery
    link (the token its webhook carries), the newer-link one is held back for its webhook's grace.
    Then the webhooks arrive, then another poll: still one run and one first reminder each."""
    settings = shop_settings(db_url)
    store = settings.stores[0]
    classic, newer, fake = classic_and_newer()
    clock = Clock(T)
    with running_app(settings) as (client, runtime):
        runtime.processor.clock = clock
        sid = runtime.store_ids["shop-a"]
        first = asyncio.run(poll(runtime.db, store, sid, fake, T))
        assert (first.by_link, first.held_back, first.new_rows) == (1, 1, 1)
        runtime.processor.drain()
        assert set(runs(runtime.db)) == {"checkout:123123123"}
        clock.now = T + timedelta(minutes=2)  # the webhooks turn up late
        post_webhook(client, classic)
        post_webhook(client, newer)
        runtime.processor.drain()
        later = asyncio.run(poll(runtime.db, store, sid, fake, T + timedelta(minutes=10)))
        assert (later.known, later.held_back) == (2, 0)
        clock.now = T + timedelta(minutes=10)
        runtime.processor.drain()
        assert reminders(runtime.db) == []  # quiet since 06:55: abandoned at 07:25
        clock.now = T + timedelta(minutes=26)
        runtime.processor.process_timers()
        clock.now = T + timedelta(hours=2)
        runtime.processor.process_timers()  # the ladder's second step is 6 hours on: nothing more yet
        found = runs(runtime.db)
        sent = reminders(runtime.db)
    assert set(found) == {"checkout:123123123", "checkout:84ad78572dae52a8cbea7d55371afe89"}
    assert sent == [("checkout:123123123", "first", "pending"), ("checkout:84ad78572dae52a8cbea7d55371afe89", "first", "pending")]
