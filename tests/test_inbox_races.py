"""The inbox with several workers.

* On PostgreSQL two workers can take two updates of one order or parcel at once (Shopify
  sends ``orders/paid`` and retries an older ``orders/updated``): the older must never
  overwrite the newer, whichever commits last.
"""

from __future__ import annotations

import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta, timezone

import pytest
from sqlalchemy import text

from adapters.registry import normalizers
from connector.processor import InboxProcessor
from connector.storage.db import Database, make_engine
from tests.conftest import PG_URL, SECRETS, empty_pg_schema, make_settings
from tests.helpers import dumps, running_app, shopify_headers, wait_until
from tests.scenarios import payloads as p
from tests.test_journeys import Clock, cod_order_payload

ADMIN = {"Authorization": f"Bearer {SECRETS['admin']}"}
T0 = datetime(2026, 11, 20, 6, 30, tzinfo=timezone.utc)  # cod_order_payload's created_at


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
    if pg_schema is None:
        pytest.skip(f"PostgreSQL not reachable at {PG_URL}")
    url = empty_pg_schema(pg_schema)
    settings = make_settings(url)
    clock = Clock(T0 + timedelta(minutes=15))
    with running_app(settings) as (client, runtime):
        runtime.processor.clock = clock
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
    if pg_schema is None:
        pytest.skip(f"PostgreSQL not reachable at {PG_URL}")
    url = empty_pg_schema(pg_schema)
    settings = make_settings(url)
    clock = Clock(T0 + timedelta(minutes=15))
    with running_app(settings) as (client, runtime):
        runtime.processor.clock = clock
        _post(client, "orders/create", _order(7002, T0))
        _post(client, "fulfillments/update", p.shopify_fulfillment(4001, 7002, T0 + timedelta(minutes=2), "confirmed"))
        runtime.processor.drain()
        for status, minutes in (("in_transit", 5), ("delivered", 10)):
            _post(client, "fulfillments/update", p.shopify_fulfillment(4001, 7002, T0 + timedelta(minutes=minutes), status))
        _two_workers_at_once(url, settings, runtime.store_ids, clock)  # A: in_transit, B: delivered
        view = client.get("/api/stores/shop-a/orders/7002", headers=ADMIN).json()

    assert [(f["id"], f["shipment_status"]) for f in view["fulfillments"]] == [("4001", "delivered")]
    assert [(e["topic"], e["status"]) for e in view["events"]] == [("orders/create", "done")] + [("fulfillments/update", "done")] * 3
