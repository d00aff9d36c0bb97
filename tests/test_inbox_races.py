"""The inbox with several workers, and with payloads the database cannot store as they are.

* On PostgreSQL two workers can take two updates of one order or parcel at once (Shopify
  sends ``orders/paid`` and retries an older ``orders/updated``): the older must never
  overwrite the newer, whichever commits last.
* A value in one row that breaks the batch's up-front lookups must cost that row alone, not
  stall every store's inbox.
* A NUL character in a payload's text (PostgreSQL refuses it) is dropped, not fatal; a lone
  UTF-16 surrogate (no database stores one as text) becomes U+FFFD, and its order is stored.
"""

from __future__ import annotations

import asyncio
import json
import logging
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta, timezone
from typing import Any

import httpx
import pytest
import respx
from sqlalchemy import text

from adapters.registry import normalizers
from adapters.woocommerce.client import WooCommerceClient
from connector.logs import LogfmtFormatter
from connector.processor import InboxProcessor
from connector.storage.db import Database, make_engine
from connector.sync import reconcile_orders, upsert_cursor
from tests.conftest import PG_URL, SECRETS, empty_pg_schema, make_settings
from tests.helpers import dumps, running_app, shopify_headers, wait_until
from tests.scenarios import payloads as p
from tests.test_journeys import Clock, cod_order_payload
from tests.test_sync import FakeWoo, woo_order, woo_settings

ADMIN = {"Authorization": f"Bearer {SECRETS['admin']}"}
T0 = datetime(2026, 11, 20, 6, 30, tzinfo=timezone.utc)  # cod_order_payload's created_at
SYNC_T = datetime(2026, 11, 20, 7, 0, tzinfo=timezone.utc)


def _post(client, topic: str, payload: dict, shop: str = "shop-a") -> None:
    """A signed Shopify webhook to the app."""
    body = dumps(payload)
    secret = SECRETS["shop_a" if shop == "shop-a" else "shop_b"]
    response = client.post("/webhooks/shopify", content=body, headers=shopify_headers(body, secret, f"{shop}.myshopify.com", topic))
    assert response.status_code == 200, response.text


def _order(order_id: int, updated: datetime, **changes) -> dict:
    payload = cod_order_payload(updated.isoformat())
    payload.update(id=order_id, order_number=order_id, name=f"#{order_id}", **changes)
    return payload


@contextmanager
def _two_worker_app(pg_schema: str | None) -> Iterator[tuple[Any, Any, str, Any, Clock]]:
    """The app on a fresh PostgreSQL schema, its processor's clock at T0 + 15 min: (client, runtime, url,
    settings, clock) for a story that then has two workers take two rows at once (skipped without PostgreSQL)."""
    if pg_schema is None:
        pytest.skip(f"PostgreSQL not reachable at {PG_URL}")
    url = empty_pg_schema(pg_schema)
    settings = make_settings(url)
    clock = Clock(T0 + timedelta(minutes=15))
    with running_app(settings) as (client, runtime):
        runtime.processor.clock = clock
        yield client, runtime, url, settings, clock


def _two_workers_at_once(url: str, settings, store_ids, clock: Clock) -> None:
    """Worker A takes the first pending row and applies it; before A commits, worker B (its own
    connections) takes the next row; A commits once B waits for a row lock, or is done. Both
    used to read the rows they change as they were before either wrote."""
    worker_b = f"storeloop-test-b-{uuid.uuid4().hex[:8]}"  # B's connections, as pg_stat_activity names them
    observer = make_engine(PG_URL)
    db_a, db_b = Database.from_url(url), Database.from_url(f"{url}&application_name={worker_b}")
    a = InboxProcessor(db_a, settings, store_ids, normalizers(), clock=clock)
    b = InboxProcessor(db_b, settings, store_ids, normalizers(), clock=clock)

    def b_waits_for_a_lock() -> bool:
        with observer.connect() as conn:
            return bool(conn.execute(text("SELECT count(*) FROM pg_stat_activity WHERE application_name = :n "
                                          "AND wait_event_type = 'Lock'"), {"n": worker_b}).scalar())

    calls, b_done = [0], []
    try:
        with ThreadPoolExecutor(1) as pool:
            def after_row() -> bool:  # asked after A parsed its row, then after A applied it (not committed yet)
                calls[0] += 1
                if calls[0] == 2:
                    b_done.append(pool.submit(b.process_batch, None, 1))
                    wait_until(lambda: b_done[0].done() or b_waits_for_a_lock(), 20, "worker B to reach A's rows")
                return False

            assert a.process_batch(None, 1, after_row) == 1
            assert b_done[0].result(timeout=30) == 1
    finally:
        db_a.dispose()
        db_b.dispose()
        observer.dispose()


@pytest.mark.postgres
def test_on_postgresql_an_older_order_update_a_second_worker_applies_meanwhile_never_overwrites_the_paid_order(pg_schema):
    """Worker A takes ``orders/paid`` (updated 06:40) and worker B, at the same moment, a retried
    ``orders/updated`` from 06:35. Both used to read the order as stored at 06:30, both passed the
    stale check, A committed "paid", then B wrote "pending" over it (and its line items next to
    A's, twice over). Now B reads the order after A's commit: its payload is stale, ignored, and
    the order stays paid with its own line items."""
    with _two_worker_app(pg_schema) as (client, runtime, url, settings, clock):
        _post(client, "orders/create", _order(7001, T0))
        runtime.processor.drain()
        lines = client.get("/api/stores/shop-a/orders/7001", headers=ADMIN).json()["line_items"]
        _post(client, "orders/paid", _order(7001, T0 + timedelta(minutes=10), financial_status="paid"))
        _post(client, "orders/updated", _order(7001, T0 + timedelta(minutes=5), tags="gift"))
        _two_workers_at_once(url, settings, runtime.store_ids, clock)  # A: orders/paid, B: orders/updated
        view = client.get("/api/stores/shop-a/orders/7001", headers=ADMIN).json()

    assert view["order"]["payment_state"] == "paid" and "gift" not in view["order"]["tags"]
    assert view["order"]["updated_at"] == (T0 + timedelta(minutes=10)).isoformat()
    assert view["line_items"] == lines  # the order's items once, not once per worker
    assert [(e["topic"], e["status"], e["error"]) for e in view["events"]] == [
        ("orders/create", "done", None), ("orders/paid", "done", None),
        ("orders/updated", "ignored", "stale: newer state already stored")]


@pytest.mark.postgres
def test_on_postgresql_a_parcel_delivered_while_another_worker_applies_its_in_transit_stays_delivered(pg_schema):
    """Shopify sends the parcel's ``in_transit`` (06:35) and, moments later, its ``delivered``
    (06:40); two workers take one each. B used to apply "delivered" and commit while A still held
    "in transit" from before it, which A then wrote over it. Now B waits for A's commit and
    applies "delivered" after it."""
    with _two_worker_app(pg_schema) as (client, runtime, url, settings, clock):
        _post(client, "orders/create", _order(7002, T0))
        _post(client, "fulfillments/update", p.shopify_fulfillment(4001, 7002, T0 + timedelta(minutes=2), "confirmed"))
        runtime.processor.drain()
        for status, minutes in (("in_transit", 5), ("delivered", 10)):
            _post(client, "fulfillments/update", p.shopify_fulfillment(4001, 7002, T0 + timedelta(minutes=minutes), status))
        _two_workers_at_once(url, settings, runtime.store_ids, clock)  # A: in_transit, B: delivered
        view = client.get("/api/stores/shop-a/orders/7002", headers=ADMIN).json()

    assert [(f["id"], f["shipment_status"]) for f in view["fulfillments"]] == [("4001", "delivered")]
    assert [(e["topic"], e["status"]) for e in view["events"]] == [("orders/create", "done")] + [("fulfillments/update", "done")] * 3


def test_an_order_whose_email_holds_a_lone_surrogate_is_stored_with_the_replacement_character(db_url):
    """The WooCommerce reconcile reads an order whose email holds a lone UTF-16 surrogate (a JSON
    ``\\ud800`` escape, valid JSON that no database takes as text). It used to break the batch's
    up-front lookups, then fail its row after every retry: the order was never stored. Now the
    surrogate is replaced with U+FFFD as the answer is read: the order is stored, its customer's
    email reads ``asha.\ufffd@example.com``, and the rest (this store's other order, another
    store's) are done as before."""
    settings = woo_settings(db_url)
    store = settings.stores[2]
    good, bad = woo_order(1, "2026-11-20T06:40:00"), woo_order(2, "2026-11-20T06:45:00")
    bad.update(customer_id=0)  # a guest: her own contact, by her phone
    bad["billing"].update(first_name="Asha", email="asha.SURROGATE@example.com", phone="+91 98765 43299")
    fake = FakeWoo([good, bad])

    def rest_api(request: httpx.Request) -> httpx.Response:
        answer = fake.handler(request)
        headers = {k: v for k, v in answer.headers.items() if k.lower().startswith("x-wp-")}
        return httpx.Response(answer.status_code, headers=headers, content=answer.content.replace(b"SURROGATE", b"\\ud800"))

    async def reconcile(db: Database, store_id: int) -> None:
        with respx.mock() as mock:
            mock.route(host="bloom.example").mock(side_effect=rest_api)
            async with WooCommerceClient(store) as woo:
                await reconcile_orders(db, store, store_id, woo, now=SYNC_T)

    clock = Clock(SYNC_T)
    with running_app(settings) as (client, runtime):
        runtime.processor.clock = clock
        sid = runtime.store_ids["woo"]
        upsert_cursor(runtime.db, sid, "orders_updated_at", (SYNC_T - timedelta(hours=1)).isoformat())
        asyncio.run(reconcile(runtime.db, sid))
        _post(client, "orders/create", _order(8003, T0))
        runtime.processor.drain()
        woo_inbox = client.get("/api/stores/woo/inbox", headers=ADMIN).json()["items"]
        shop_inbox = client.get("/api/stores/shop-a/inbox", headers=ADMIN).json()["items"]
        stored = [client.get(f"/api/stores/{key}/orders/{oid}", headers=ADMIN).status_code
                  for key, oid in (("woo", 1), ("woo", 2), ("shop-a", 8003))]
        asha = client.get("/api/stores/woo/contacts/+919876543299", headers=ADMIN)

    assert {r["subject"]: (r["status"], r["error"]) for r in woo_inbox} == {"order:1": ("done", None), "order:2": ("done", None)}
    assert [(r["subject"], r["status"]) for r in shop_inbox] == [("order:8003", "done")]
    assert stored == [200, 200, 200]
    assert asha.status_code == 200 and asha.json()["contact"]["email"] == "asha.\ufffd@example.com"


def test_a_nul_character_in_an_order_is_dropped_and_the_order_is_stored(db_url):
    """A ``\\u0000`` in a Shopify order's email and name (PostgreSQL refuses NUL in text: every
    statement naming that email failed, and with it the whole inbox) is taken out: the order is
    stored and the customer is "Asha", asha@example.com, on either database."""
    settings = make_settings(db_url)
    payload = _order(9001, T0, email="asha\u0000@example.com", contact_email=None)
    payload["customer"].update(first_name="As\u0000ha", email="asha\u0000@example.com")
    payload["billing_address"]["first_name"] = "As\u0000ha"
    with running_app(settings) as (client, runtime):
        runtime.processor.clock = Clock(T0 + timedelta(minutes=5))
        _post(client, "orders/create", payload)
        _post(client, "orders/create", _order(9002, T0), shop="shop-b")
        runtime.processor.drain()
        order = client.get("/api/stores/shop-a/orders/9001", headers=ADMIN)
        contact = client.get("/api/stores/shop-a/contacts/+919876543210", headers=ADMIN)
        other = client.get("/api/stores/shop-b/orders/9002", headers=ADMIN)

    assert order.status_code == 200 and [e["status"] for e in order.json()["events"]] == ["done"]
    assert contact.json()["contact"]["email"] == "asha@example.com"
    assert contact.json()["contact"]["name"].startswith("Asha")
    assert other.status_code == 200
    assert json.dumps(contact.json()).find("\\u0000") == -1


def test_a_shopify_order_with_a_lone_surrogate_in_the_name_is_accepted_and_stored_with_the_replacement_character(db_url, caplog):
    """A signed ``orders/create`` whose customer's first name holds a lone UTF-16 surrogate (the
    JSON escape ``\\ud800``) and whose last name an emoji written as a surrogate pair. orjson and
    simdjson refuse the lone one: the webhook was answered 400, Shopify retried it until it gave
    up, and the order was lost. Now it is accepted, processed, and the customer is
    "As\ufffdha Rao 😀": the lone surrogate replaced, the pair kept as the emoji it is, and a
    warning names the fields it was in (never their text)."""
    settings = make_settings(db_url)
    payload = _order(9101, T0)
    payload["customer"].update(first_name="As\ud800ha", last_name="Rao \U0001F600")
    payload["billing_address"].update(first_name="As\ud800ha", last_name="Rao \U0001F600")
    body = dumps(payload)
    assert b"As\\ud800ha" in body and b"Rao \\ud83d\\ude00" in body  # JSON escapes, as a platform writes them
    with running_app(settings) as (client, runtime):
        runtime.processor.clock = Clock(T0 + timedelta(minutes=5))
        caplog.set_level(logging.WARNING, logger="storeloop")
        _post(client, "orders/create", payload)  # asserts the 200
        _post(client, "orders/create", _order(9102, T0), shop="shop-b")
        runtime.processor.drain()
        order = client.get("/api/stores/shop-a/orders/9101", headers=ADMIN)
        contact = client.get("/api/stores/shop-a/contacts/+919876543210", headers=ADMIN)
        other = client.get("/api/stores/shop-b/orders/9102", headers=ADMIN)

    assert order.status_code == 200 and [e["status"] for e in order.json()["events"]] == ["done"]
    assert contact.json()["contact"]["name"] == "As\ufffdha Rao \U0001F600"
    assert other.status_code == 200
    warnings = [LogfmtFormatter().format(r) for r in caplog.records if "lone UTF-16 surrogate" in r.getMessage()]
    assert warnings and all("customer.first_name" in w and "billing_address.first_name" in w for w in warnings)
    assert not any("\ufffd" in w or "\ud800" in w or "Rao" in w for w in warnings)  # field names only, never the name
