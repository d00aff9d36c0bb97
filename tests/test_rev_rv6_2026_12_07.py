"""Review rv6 (2026-12-07) of 076e906 "Merge priv" and 6ba4ee1 "Merge rv3": faults proven as strict xfails.

Each test asserts what a store owner or customer should see; it fails on main for the reason its mark states.
"""

from __future__ import annotations

import json
import threading
from datetime import timedelta

import anyio
import pytest
from sqlalchemy import text, update

from connector.config import parse_settings
from connector.refused_sites import RefusedSites, refused_sites
from connector.storage import models as m
from connector.storage.db import Database
from jobs.scheduler import purge_job
from tests.conftest import SECRETS, empty_pg_schema, settings_dict
from tests.helpers import dumps, running_app, woo_headers
from tests.test_compliance import ADMIN, MEENA, T0, Clock, Person, order_payload, post_shopify, request_payload
from tests.test_privacy_completeness import drain, make_settings
from tests.test_privacy_requests_exact import gift, guest_order_written_nationally, inbox_row, row_by_id
from tests.test_webhooks_woocommerce import URL, cod_order


# ---- 076e906 "Merge priv": stored exports expire -----------------------------------------------------------------
def _requests(client) -> dict[str, dict]:
    return {r["kind"]: r for r in client.get("/api/stores/shop-a/compliance", headers=ADMIN).json()["items"]}


def test_an_erasure_request_is_not_listed_as_an_expired_export(db_url):
    settings = make_settings(db_url)
    days = settings.worker.raw_body_retention_days
    clock = Clock(T0)
    with running_app(settings, clock=clock) as (client, runtime):
        runtime.processor.clock = clock
        assert post_shopify(client, request_payload(MEENA, [7001]), "customers/redact").status_code == 200
        drain(runtime)
        before = _requests(client)["customer_redact"]
        clock.now = T0 + timedelta(days=days, hours=1)
        done = anyio.run(purge_job, runtime, "test-worker")
        after = _requests(client)["customer_redact"]
    assert (before["status"], before["has_export"]) == ("done", False)
    assert (after["status"], after["erased_at"]) == ("done", None)
    assert done["exports_expired"] == 0


def test_an_expired_export_keeps_the_time_it_expired(db_url):
    settings = make_settings(db_url)
    days = settings.worker.raw_body_retention_days
    clock = Clock(T0)
    with running_app(settings, clock=clock) as (client, runtime):
        runtime.processor.clock = clock
        assert post_shopify(client, request_payload(MEENA, [7001], data_request=True), "customers/data_request").status_code == 200
        drain(runtime)
        clock.now = expired_at = T0 + timedelta(days=days, hours=1)
        first = anyio.run(purge_job, runtime, "test-worker")
        clock.now = expired_at + timedelta(hours=1, minutes=1)  # the next hourly run (its lease is 50 minutes)
        second = anyio.run(purge_job, runtime, "test-worker")
        view = _requests(client)["customer_data_request"]
    assert first["exports_expired"] == 1
    assert view["status"] == "expired" and view["erased_at"] == expired_at.isoformat()
    assert second["exports_expired"] == 0


# ---- 076e906 "Merge priv": her number as people write it ----------------------------------------------------------
def _erase_meena_after(client, runtime, payload: dict, topic: str, needle: str):
    assert post_shopify(client, payload, topic).status_code == 200
    drain(runtime)
    unread = inbox_row(runtime.db, topic, needle)
    assert unread.status == "failed"
    assert post_shopify(client, request_payload(MEENA, [7001]), "customers/redact").status_code == 200
    drain(runtime)
    row = row_by_id(runtime.db, unread.id)
    return (row.raw_body or b"").decode() + json.dumps(row.event)


def test_her_number_written_with_the_country_code_and_the_trunk_zero_is_erased(db_url):
    settings = make_settings(db_url)
    with running_app(settings) as (client, runtime):
        runtime.processor.clock = Clock(T0)
        assert post_shopify(client, order_payload(MEENA, 7001, "2026-11-20T07:00:00Z"), "orders/create").status_code == 200
        left = _erase_meena_after(client, runtime, guest_order_written_nationally(MEENA, 7003, "+91 098765 43210"),
                                  "orders/updated", "098765 43210")
    assert not [n for n in ("98765 43210", MEENA.first, MEENA.last, "12 Lake Road") if n in left], left[:300]


def test_her_number_written_after_another_number_is_erased(db_url):
    settings = make_settings(db_url)
    with running_app(settings) as (client, runtime):
        runtime.processor.clock = Clock(T0)
        assert post_shopify(client, order_payload(MEENA, 7001, "2026-11-20T07:00:00Z"), "orders/create").status_code == 200
        left = _erase_meena_after(client, runtime, guest_order_written_nationally(MEENA, 7003, "044 2345 6789 / 98765 43210"),
                                  "orders/updated", "98765 43210")
    assert not [n for n in ("98765 43210", MEENA.first, MEENA.last, "12 Lake Road") if n in left], left[:300]


# ---- 076e906 "Merge priv": another customer's row, kept without her -----------------------------------------------
KABIR_R = Person("Kabirdas", "Raghunathan", "kabir.r@example.net", "098123 45678", "+919812345678", 7720003)  # her brother


def test_erasing_her_keeps_the_surname_of_a_relative_whose_gift_order_names_her(db_url):
    settings = make_settings(db_url)
    with running_app(settings) as (client, runtime):
        runtime.processor.clock = Clock(T0)
        assert post_shopify(client, order_payload(MEENA, 7001, "2026-11-20T07:00:00Z"), "orders/create").status_code == 200
        his = gift(KABIR_R, MEENA, 7002)
        his["note"] = "Birthday gift: please call my sister on 98765 43210 before delivery"
        assert post_shopify(client, his, "orders/create").status_code == 200
        drain(runtime)
        before = inbox_row(runtime.db, "orders/create", KABIR_R.email)
        assert before.status == "failed"
        assert post_shopify(client, request_payload(MEENA, [7001]), "customers/redact").status_code == 200
        drain(runtime)
        after = row_by_id(runtime.db, before.id)
    body = json.loads(after.raw_body)
    assert after.status == "failed"
    assert "98765 43210" not in after.raw_body.decode() and body["shipping_address"]["address1"] == "12 Lake Road"
    assert (body["billing_address"]["last_name"], body["customer"]["last_name"]) == ("Raghunathan", "Raghunathan")


# ---- 6ba4ee1 "Merge rv3": sites refused, on the dashboard --------------------------------------------------------
def _woo(db_url: str, **extra):
    data = settings_dict(db_url)
    [woo] = [s for s in data["stores"] if s["key"] == "woo"]
    woo.update(site_url="https://bloom.example", **extra)
    return parse_settings(data, environ={})


def _order_from(client, source: str, order_id: int) -> int:
    body = dumps(cod_order(id=order_id))
    headers = {**woo_headers(body, SECRETS["woo"], "order.created"), "X-WC-Webhook-Source": source}
    return client.post(URL, content=body, headers=headers).status_code


def test_the_refused_site_notice_clears_once_the_owner_lists_the_site(db_url):
    now = [T0]
    with running_app(_woo(db_url), clock=lambda: now[0]) as (client, runtime):
        assert _order_from(client, "https://bloom.example/en/", 1001) == 401
        refused = client.get("/api/stores/woo/report", headers=ADMIN).json()["connector_health"]["refused_sites"]
    assert [s["site"] for s in refused] == ["https://bloom.example/en/"]
    now[0] = T0 + timedelta(hours=1)
    with running_app(_woo(db_url, webhook_sources=["https://bloom.example/en/"]), clock=lambda: now[0]) as (client, runtime):
        accepted = _order_from(client, "https://bloom.example/en/", 1002)
        health = client.get("/api/stores/woo/report", headers=ADMIN).json()["connector_health"]
    assert accepted == 200
    assert health["refused_sites"] == []


@pytest.fixture
def pg_url(request: pytest.FixtureRequest) -> str:
    schema = request.getfixturevalue("pg_schema")
    if schema is None:
        pytest.skip("PostgreSQL not reachable")
    return empty_pg_schema(schema)


@pytest.mark.postgres
def test_two_workers_refusing_at_once_both_sites_reach_the_notice(pg_url):
    with running_app(_woo(pg_url)) as (client, runtime):
        store_id = runtime.store_ids["woo"]
        anyio.run(runtime.refused_sites.note, store_id, "https://staging.bloom.example/", T0)
    # three worker processes, each with its own database pool
    third, en, fr = (Database.from_url(pg_url) for _ in range(3))
    at = T0 + timedelta(minutes=2)
    try:
        blocker = third.engine.connect()
        tx = blocker.begin()
        holder = blocker.execute(text("SELECT pg_backend_pid()")).scalar()
        # the third worker is writing the row right now: its lock makes the two writers below meet
        blocker.execute(update(m.SyncCursor).where(m.SyncCursor.name == "webhooks:refused-sites").values(updated_at=at))
        workers = [threading.Thread(target=anyio.run, args=(RefusedSites(db).note, store_id, site, at))
                   for db, site in ((en, "https://bloom.example/en/"), (fr, "https://bloom.example/fr/"))]
        for w in workers:
            w.start()
        waiting, tick = 0, threading.Event()
        with third.engine.connect() as watch:
            for _ in range(200):  # until both writers wait on the row (at most ~10 s)
                waiting = watch.execute(text("SELECT count(*) FROM pg_stat_activity WHERE :holder = ANY(pg_blocking_pids(pid))"),
                                        {"holder": holder}).scalar()
                watch.rollback()  # pg_stat_activity is read once per transaction
                if waiting == 2:
                    break
                tick.wait(0.05)
        tx.rollback()
        blocker.close()
        for w in workers:
            w.join(timeout=30)
        with third.engine.connect() as conn:
            shown = sorted(s["site"] for s in refused_sites(conn, store_id, at))
    finally:
        for db in (third, en, fr):
            db.dispose()
    assert waiting == 2
    assert shown == ["https://bloom.example/en/", "https://bloom.example/fr/", "https://staging.bloom.example/"]
