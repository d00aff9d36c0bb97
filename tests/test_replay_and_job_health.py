"""Failed inbox rows can be replayed after a fix (CLI and admin API), and the dashboard says when
rows failed or a scheduled job (order reconciliation, checkout poll) keeps failing.

A row "fails" here as it would have under an adapter bug since fixed: a processor built with a
normaliser that cannot read the topic (``NormalizationError``, the row is failed at once); the
replay and everything after it run on the app's own processor with the real normalisers.
Platform APIs are faked at the HTTP boundary (respx); time comes from the runtime's clock.
"""

from __future__ import annotations

import asyncio
import json
import logging
import shutil
from datetime import datetime, timedelta, timezone
from pathlib import Path

import httpx
import respx
from sqlalchemy import select
from typer.testing import CliRunner

from adapters.registry import normalizers
from connector.cli import app as cli_app
from connector.config import load_settings, parse_settings
from connector.errors import NormalizationError
from connector.processor import InboxProcessor
from connector.storage import models as m
from tests.conftest import FIXTURES, SECRETS, settings_dict
from tests.helpers import dumps, load_json, running_app, woo_headers
from tests.test_dashboard import login

T = datetime(2026, 11, 20, 7, 0, tzinfo=timezone.utc)
ADMIN = {"Authorization": f"Bearer {SECRETS['admin']}"}
PHONE = "+16502530000"
CONFIRMATION = {"step": "order_confirmation.sent", "name": "order_ok_v1", "category": "utility", "body_text": "Thanks {{1}}",
                "body": ["order.name"]}


def woo_order(status: str = "processing", modified: str = "2026-11-20T06:00:05") -> dict:
    body = load_json(FIXTURES / "woocommerce" / "order.created.rest-v3-docs-example.json")
    body.update(id=4101, number="4101", status=status, date_created="2026-11-20T06:00:00", date_created_gmt="2026-11-20T06:00:00",
                date_modified=modified, date_modified_gmt=modified)
    body["billing"] = {**body["billing"], "phone": PHONE}
    return body


def post_woo(client, body: dict, topic: str) -> None:
    raw = dumps(body)
    assert client.post("/webhooks/woocommerce/woo", content=raw, headers=woo_headers(raw, SECRETS["woo"], topic)).status_code == 200


def fail_with_a_bug(runtime, topic: str) -> None:
    """Process what is due with a processor whose WooCommerce adapter cannot read ``topic``."""
    real = normalizers()

    def buggy(t: str, body: dict, store) -> list:
        if t == topic:
            raise NormalizationError("date_created: unreadable (the adapter bug fixed since)")
        return real["woocommerce"](t, body, store)

    InboxProcessor(runtime.db, runtime.settings, runtime.store_ids, {**real, "woocommerce": buggy}, clock=runtime.clock).drain()


def confirmations(runtime) -> list:
    with runtime.db.engine.connect() as conn:
        return conn.execute(select(m.OutboxMessage.idempotency_key).where(
            m.OutboxMessage.store_id == runtime.store_ids["woo"], m.OutboxMessage.step == "sent",
            m.OutboxMessage.journey == "order_confirmation")).scalars().all()


def inbox(runtime, store: str) -> list:
    with runtime.db.engine.connect() as conn:
        return conn.execute(select(m.InboxEvent).where(m.InboxEvent.store_id == runtime.store_ids[store])
                            .order_by(m.InboxEvent.id)).all()


def config_file(tmp_path: Path, sqlite_template: Path) -> Path:
    """A TOML configuration on its own SQLite file: the WooCommerce store confirms orders; shop-a too."""
    db_path = tmp_path / "storeloop.db"
    shutil.copy(sqlite_template, db_path)
    template = "\n".join(f"{k} = {json.dumps(v)}" for k, v in CONFIRMATION.items())
    stores = ""
    for key, platform, where, secret in (("woo", "woocommerce", 'site_url = "https://bloom.example"', SECRETS["woo"]),
                                         ("shop-a", "shopify", 'shop_domain = "shop-a.myshopify.com"', SECRETS["shop_a"])):
        stores += f"""
[[stores]]
key = "{key}"
platform = "{platform}"
{where}
webhook_secret = "{secret}"
timezone = "Europe/Rome"
default_country = "US"
whatsapp_phone_number_id = "{key}-number"
policy = {{ quiet_hours = "" }}

[[stores.templates]]
{template}

[stores.journeys.order_confirmation]
"""
    cfg = tmp_path / "storeloop.toml"
    cfg.write_text(f"""
[server]
admin_token = "{SECRETS['admin']}"
[database]
url = "sqlite:///{db_path}"
[whatsapp]
app_secret = "{SECRETS['wa_app']}"
verify_token = "v"
{stores}""")
    return cfg


def overview(client, store: str = "woo") -> str:
    page = client.get(f"/dashboard/{store}")
    assert page.status_code == 200
    return page.text


# ---- replay ------------------------------------------------------------------------------------


def test_a_failed_order_is_replayed_from_the_command_line_and_confirmed_once(tmp_path, sqlite_template):
    """An order.created row failed under a bug: the owner sees it on the dashboard with the command to
    run; after the fix `storeloop replay` makes it pending and the order gets its one confirmation;
    another store's failed row is left alone, and a second replay finds nothing to do."""
    cfg = config_file(tmp_path, sqlite_template)
    settings = load_settings(cfg)
    runner = CliRunner()
    with running_app(settings, clock=lambda: T) as (client, runtime):
        post_woo(client, woo_order(), "order.created")
        fail_with_a_bug(runtime, "order.created")
        with runtime.db.engine.begin() as conn:  # shop-a has a failed row of its own (a copy, failed the same way)
            conn.execute(m.InboxEvent.__table__.insert().values(
                store_id=runtime.store_ids["shop-a"], source="shopify", topic="orders/create", dedupe_key="orders/create:9",
                received_at=T, status="failed", attempts=1, last_error="normalisation: bug", headers={}))
        [failed] = inbox(runtime, "woo")
        assert (failed.status, failed.last_error) == ("failed", "normalisation: date_created: unreadable (the adapter bug fixed since)")
        assert confirmations(runtime) == []
        assert login(client).status_code == 303
        before = overview(client)
        assert "1 failed inbox row</strong>" in before and "storeloop replay --store woo" in before
        weekly = runner.invoke(cli_app, ["report", "--config", str(cfg), "--store", "woo"])
        assert weekly.exit_code == 0 and "1 inbox row(s) failed" in weekly.output and "storeloop replay --store woo" in weekly.output

        result = runner.invoke(cli_app, ["replay", "--config", str(cfg), "--store", "woo"])
        assert result.exit_code == 0, result.output
        assert "1 failed row(s) replayed" in result.output and "order.created" in result.output
        [pending] = inbox(runtime, "woo")
        assert (pending.status, pending.attempts) == ("pending", 0)
        runtime.processor.drain()
        [done] = inbox(runtime, "woo")
        assert done.status == "done" and done.subject == "order:4101"
        assert len(confirmations(runtime)) == 1
        assert [r.status for r in inbox(runtime, "shop-a")] == ["failed"]  # another store's rows are not touched

        again = runner.invoke(cli_app, ["replay", "--config", str(cfg), "--store", "woo"])
        assert again.exit_code == 0 and "no failed inbox rows in woo" in again.output
        asked = runner.invoke(cli_app, ["replay", "--config", str(cfg), "--store", "woo", "--id", str(done.id), "--id", "999999"])
        assert asked.exit_code == 1
        assert f"row {done.id} not replayed: done, not failed" in asked.output and "row 999999 not replayed: no such inbox row" in asked.output
        runtime.processor.drain()
        assert len(confirmations(runtime)) == 1
        assert "No failed inbox rows." in overview(client)


def test_replaying_an_order_created_after_the_order_arrived_otherwise_sends_nothing_twice(db_url):
    """order.created failed; its order.updated came later and started the confirmation (first sight of a
    fresh order). Replaying the creation is then stale: still one confirmation."""
    raw = settings_dict(db_url)
    raw["stores"][2].update(templates=[CONFIRMATION], journeys={"order_confirmation": {}}, policy={"quiet_hours": ""})
    settings = parse_settings(raw, environ={})
    with running_app(settings, clock=lambda: T) as (client, runtime):
        post_woo(client, woo_order(), "order.created")
        fail_with_a_bug(runtime, "order.created")
        post_woo(client, woo_order(modified="2026-11-20T06:20:00"), "order.updated")
        runtime.processor.drain()
        assert len(confirmations(runtime)) == 1
        created = inbox(runtime, "woo")[0]
        answer = client.post("/api/stores/woo/inbox/replay", json={"ids": [created.id]}, headers=ADMIN)
        assert answer.status_code == 200 and answer.json()["replayed"] == 1
        runtime.processor.drain()
        rows = inbox(runtime, "woo")
    assert [(r.topic, r.status) for r in rows] == [("order.created", "ignored"), ("order.updated", "done")]
    assert rows[0].last_error == "stale: newer state already stored"
    assert len(confirmations(runtime)) == 1


def test_the_replay_route_is_guarded_and_scoped_to_its_store(db_url):
    raw = settings_dict(db_url)
    raw["stores"][0]["admin_token"] = "brand-a-support-token-0123456789"
    raw["stores"][2].update(admin_token="woo-support-token-9876543210", templates=[CONFIRMATION],
                            journeys={"order_confirmation": {}}, policy={"quiet_hours": ""})
    settings = parse_settings(raw, environ={})
    team_a = {"Authorization": "Bearer brand-a-support-token-0123456789"}
    team_woo = {"Authorization": "Bearer woo-support-token-9876543210"}
    with running_app(settings, clock=lambda: T) as (client, runtime):
        post_woo(client, woo_order(), "order.created")
        fail_with_a_bug(runtime, "order.created")
        [row] = inbox(runtime, "woo")
        assert client.post("/api/stores/woo/inbox/replay", json={}).status_code == 401
        assert client.post("/api/stores/woo/inbox/replay", json={}, headers=team_a).status_code == 401  # another store's token
        assert client.post("/api/stores/nope/inbox/replay", json={}, headers=ADMIN).status_code == 404
        assert client.post("/api/stores/woo/inbox/replay", json={"ids": "all"}, headers=team_woo).status_code == 400
        assert client.post("/api/stores/woo/inbox/replay", json={"status": "done"}, headers=team_woo).status_code == 400
        # shop-a's token replays nothing of woo's even by id: the row is not in its store
        other = client.post("/api/stores/shop-a/inbox/replay", json={"ids": [row.id]}, headers=team_a)
        assert other.status_code == 200 and other.json() == {
            "replayed": 0, "items": [], "not_replayed": {str(row.id): "no such inbox row in this store"}}
        assert inbox(runtime, "woo")[0].status == "failed"
        after = (row.received_at.replace(tzinfo=timezone.utc) + timedelta(seconds=1)).isoformat()
        later = client.post("/api/stores/woo/inbox/replay", json={"since": after}, headers=team_woo)
        assert later.json()["replayed"] == 0 and inbox(runtime, "woo")[0].status == "failed"
        own = client.post("/api/stores/woo/inbox/replay", json={}, headers=team_woo)
        assert own.status_code == 200
        [item] = own.json()["items"]
        assert (item["id"], item["topic"], own.json()["replayed"]) == (row.id, "order.created", 1)
        assert item["error"].startswith("normalisation: date_created")
        runtime.processor.drain()
        assert inbox(runtime, "woo")[0].status == "done" and len(confirmations(runtime)) == 1


# ---- scheduled jobs ---------------------------------------------------------------------------------

SHOP_URL = "https://shop-a.example/admin/api/2026-07/graphql.json"


def shop_settings(db_url: str):
    raw = settings_dict(db_url)
    raw["stores"][0].update(access_token="shpat_secret_token", api_base_url="https://shop-a.example")
    return parse_settings(raw, environ={})


def empty_orders(request: httpx.Request) -> httpx.Response:
    query = json.loads(request.content)["query"]
    key = next((k for k in ("abandonedCheckouts", "customers") if f"{k}(" in query), "orders")  # the poll, the customers pass
    return httpx.Response(200, json={"data": {key: {"pageInfo": {"hasNextPage": False, "endCursor": None}, "nodes": []}},
                                      "extensions": {"cost": {"requestedQueryCost": 10, "actualQueryCost": 2, "throttleStatus": {
                                          "maximumAvailable": 1000.0, "currentlyAvailable": 990, "restoreRate": 50.0}}}})


def test_failing_reconciliation_and_checkout_poll_are_logged_and_shown_on_every_processs_dashboard(db_url, caplog):
    """A revoked token (401) fails the reconciliation tick: logged on the storeloop logger with store
    and job, no exception out of the tick; twice in a row, the dashboard says the credentials are
    lost. A checkout poll whose 503s outlast its retries is shown as failing too. The dashboard of
    another process (a second app on the same database) shows the same; a good tick clears it."""
    from jobs.scheduler import poll_checkouts_store, reconcile_store

    settings = shop_settings(db_url)
    store = settings.stores[0]
    clock = [T]
    with running_app(settings, clock=lambda: clock[0]) as (_client, worker):

        async def tick(job, answer) -> bool:
            with respx.mock(assert_all_called=False) as mock:
                mock.post(SHOP_URL).mock(side_effect=answer)
                return await job(worker, store, "w1", timedelta(minutes=15))

        revoked = httpx.Response(401, json={"errors": "[API] Invalid API key or access token (unrecognized login or wrong password)"})
        with caplog.at_level(logging.INFO, logger="storeloop"):
            assert asyncio.run(tick(reconcile_store, lambda request: revoked)) is True
            clock[0] = T + timedelta(minutes=15)
            assert asyncio.run(tick(reconcile_store, lambda request: revoked)) is True
            down = httpx.Response(503, headers={"Retry-After": "0"}, text="<html>upstream down</html>")
            assert asyncio.run(tick(poll_checkouts_store, lambda request: down)) is True
        failures = [r for r in caplog.records if r.name == "storeloop.jobs" and r.levelno == logging.ERROR]
        assert [(r.store, r.job, r.failures) for r in failures] == [("shop-a", "reconcile", 1), ("shop-a", "reconcile", 2),
                                                                     ("shop-a", "checkout-poll", 1)]
        assert "credentials lost: reinstall or fix the key" in failures[1].getMessage()
        assert "HTTP 401" in failures[0].getMessage() and "HTTP 503" in failures[2].getMessage()
        assert not any("shpat_secret_token" in r.getMessage() or "shop-a.example" in r.getMessage() for r in caplog.records)

        with running_app(settings) as (web, _):  # the dashboard served by another process
            assert login(web).status_code == 303
            page = overview(web, "shop-a")
            assert "credentials lost: reinstall or fix the key" in page
            assert "PermanentError: HTTP 401: access token invalid, expired or revoked" in page
            assert "RetryableError: HTTP 503 from Shopify" in page
            rows = page.split('<table id="jobs">', 1)[1].split("</table>", 1)[0]
            assert "<td>reconcile</td>" in rows and "<td>checkout-poll</td>" in rows and ">2</td>" in rows

            clock[0] = T + timedelta(minutes=30)
            assert asyncio.run(tick(reconcile_store, empty_orders)) is True
            page = overview(web, "shop-a")
            assert "credentials lost" not in page and "HTTP 401" not in page
            assert "2026-11-20 13:00" in page  # the last success (07:30 UTC) in the store's time (Asia/Kolkata)
            assert "RetryableError: HTTP 503 from Shopify" in page  # the poll has not succeeded since
            report = web.get("/api/stores/shop-a/report", headers=ADMIN).json()["connector_health"]
    by_job = {j["job"]: j for j in report["jobs"]}
    assert report["inbox_failed"] == 0
    assert by_job["reconcile"]["status"] == "ok" and by_job["reconcile"]["last_ok_at"] == (T + timedelta(minutes=30)).isoformat()
    assert by_job["checkout-poll"]["failures_in_a_row"] == 1 and by_job["checkout-poll"]["hint"] is None
