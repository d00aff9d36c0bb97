"""WooCommerce install against a fake WooCommerce on 127.0.0.1 (plain http: OAuth 1.0a signed),
with the connector itself served on 127.0.0.1 so WooCommerce's ping and deliveries reach it;
Basic auth over https (respx); and the wc-auth key provisioning callback."""

from __future__ import annotations

import asyncio
import base64
import json
import logging
from datetime import datetime, timedelta, timezone
from pathlib import Path
from urllib.parse import parse_qs, urlparse

import httpx
import pytest
import respx
from sqlalchemy import select
from starlette.testclient import TestClient
from typer.testing import CliRunner

from connector.cli import app as cli_app
from connector.config import parse_settings
from connector.install import nonces
from connector.install.shopify import InstallRefused
from connector.install.woocommerce import TOPICS, install_woocommerce
from connector.runtime import Runtime
from connector.secrets import (
    SECRET_KEYS_ENV,
    WOO_CONSUMER_KEY,
    WOO_CONSUMER_SECRET,
    WOO_WEBHOOK_SECRET,
    SecretBox,
    generate_key,
    get_credentials,
)
from connector.storage.db import Database
from connector.storage.inbox import sync_stores
from connector.storage.models import InboxEvent, OAuthState, ProductCycle, StoreCredential
from connector.web.app import create_app
from tests.conftest import SECRETS, settings_dict
from tests.helpers import inbox_bodies, mark_backfilled, running_app
from tests.install_fakes import FakeWoo, free_port, serve

CK, CS = "ck_fake_consumer_key_0123456789", "cs_fake_consumer_secret_0123456789"
PUBLIC_HTTPS = "https://connector.example"
T = datetime(2026, 11, 20, 12, 0, tzinfo=timezone.utc)
runner = CliRunner()
ORDER = {"id": 4242, "status": "processing", "date_modified_gmt": "2026-11-20T11:00:00", "currency": "EUR", "total": "10.00",
         "date_created_gmt": "2026-11-20T10:59:00", "billing": {"phone": "+39 312 345 6789", "first_name": "Ada"},
         "payment_method": "cod", "line_items": []}


@pytest.fixture
def key(monkeypatch) -> str:
    value = generate_key()
    monkeypatch.setenv(SECRET_KEYS_ENV, value)
    return value


@pytest.fixture
def woo():
    shop = FakeWoo(CK, CS)
    with serve(shop.app) as base:
        shop.base = base  # type: ignore[attr-defined]
        yield shop


def woo_settings(db_url: str, site_url: str, public_url: str, **woo_store):
    data = settings_dict(db_url)
    data["server"]["public_url"] = public_url
    data["stores"][2] |= {"site_url": site_url, "consumer_key": CK, "consumer_secret": CS, **woo_store}
    return parse_settings(data, environ={})


class Connector:
    """The real app served on 127.0.0.1 (its runtime exposed), so the fake store can reach it."""

    def __init__(self, settings, port: int, **runtime_kw):
        self.runtime = Runtime(settings, Database.from_url(settings.database.url), run_worker=False, **runtime_kw)
        self.runtime.woo_webhook_secrets.min_reload = 0.0  # pick up a CLI install at once (default 2 s)
        self._serve = serve(create_app(settings, self.runtime), port)

    def __enter__(self) -> "Connector":
        self.base = self._serve.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self._serve.__exit__(*exc)


def inbox_count(db: Database) -> int:
    with db.engine.connect() as conn:
        return len(conn.execute(select(InboxEvent.id)).all())


def test_install_creates_repairs_and_the_stored_secret_is_accepted(db_url, woo, key, caplog):
    caplog.set_level(logging.DEBUG)
    port = free_port()
    public = f"http://127.0.0.1:{port}"
    settings = woo_settings(db_url, woo.base, public)
    store = settings.store("woo")
    box = SecretBox([key])
    now = [T]
    with Connector(settings, port, clock=lambda: now[0]) as app:
        db = app.runtime.db
        sid = app.runtime.store_ids["woo"]
        first = asyncio.run(install_woocommerce(db, settings, store, sid, T, box=box))
        assert first.ok, first
        assert first.auth.startswith("OAuth 1.0a") and sorted(first.created) == sorted(TOPICS)
        assert first.secret == "generated and stored encrypted" and first.ping_ok is True
        delivery = f"{public}/webhooks/woocommerce/woo"
        assert {h["delivery_url"] for h in woo.hooks} == {delivery} and {h["topic"] for h in woo.hooks} == set(TOPICS)
        assert woo.pings == [(delivery, 200)] * len(TOPICS)  # WooCommerce's own creation pings were answered 200
        secret = get_credentials(db, box, sid)[WOO_WEBHOOK_SECRET].value
        assert set(woo.secrets.values()) == {secret}
        with db.engine.connect() as conn:
            assert secret not in " ".join(conn.execute(select(StoreCredential.value)).scalars())

        # a delivery signed with the stored secret is accepted (the server had started before the install)
        assert woo.deliver("order.created", ORDER) == 200
        assert inbox_count(db) == 1
        assert woo.deliver("order.updated", ORDER | {"status": "completed"}, secret="someone-elses-secret") == 401
        assert woo.deliver("order.updated", ORDER | {"status": "completed"}, secret=settings.store("woo").webhook_secret.get_secret_value()) == 200

        # run again: nothing to do
        again = asyncio.run(install_woocommerce(db, settings, store, sid, T, box=box))
        assert again.created == [] and sorted(again.present) == sorted(TOPICS) and again.secret == "kept (stored earlier)"
        assert len(woo.hooks) == len(TOPICS)

        # WooCommerce disabled one after failed deliveries: install re-activates it
        woo.hooks[1]["status"] = "disabled"
        woo.hooks[3]["status"] = "paused"
        repaired = asyncio.run(install_woocommerce(db, settings, store, sid, T, box=box))
        assert sorted(repaired.reactivated) == sorted([woo.hooks[1]["topic"], woo.hooks[3]["topic"]])
        assert {h["status"] for h in woo.hooks} == {"active"} and len(woo.hooks) == len(TOPICS)

        # a new secret reaches every webhook, and the endpoint follows
        rotated = asyncio.run(install_woocommerce(db, settings, store, sid, T, box=box, new_secret=True))
        assert sorted(rotated.updated) == sorted(TOPICS)
        new_secret = get_credentials(db, box, sid)[WOO_WEBHOOK_SECRET].value
        assert new_secret != secret and set(woo.secrets.values()) == {new_secret}
        assert woo.deliver("order.updated", ORDER | {"status": "on-hold"}) == 200
        assert woo.deliver("order.updated", ORDER | {"status": "refunded"}, secret=secret) == 200  # one already on its way
        now[0] = T + timedelta(hours=2)
        assert woo.deliver("order.updated", ORDER | {"status": "cancelled"}, secret=secret) == 401  # the old one is gone
    # (the consumer key is OAuth 1.0a's public identifier: on plain http it is in the signed query by design)
    for value in (CS, key, secret, new_secret):
        assert value not in caplog.text


def test_a_new_secret_loses_no_delivery_until_every_webhook_has_it(db_url, woo, key, caplog):
    """``--new-secret``: WooCommerce signs with the old secret until each webhook is updated (and a delivery
    already on its way after that): the old one stays accepted until every webhook is confirmed updated,
    then for a bounded grace period; a failed update says so and keeps it accepted."""
    caplog.set_level(logging.DEBUG)
    now = [T]
    port = free_port()
    settings = woo_settings(db_url, woo.base, f"http://127.0.0.1:{port}")
    store = settings.store("woo")
    box = SecretBox([key])
    with Connector(settings, port, clock=lambda: now[0]) as app:
        db, sid = app.runtime.db, app.runtime.store_ids["woo"]
        assert asyncio.run(install_woocommerce(db, settings, store, sid, T, box=box)).ok
        old = get_credentials(db, box, sid)[WOO_WEBHOOK_SECRET].value
        assert woo.deliver("order.created", ORDER) == 200

        # the webhooks cannot even be listed: the rotation does not start, the old secret still signs everything
        woo.list_status = 500
        with pytest.raises(Exception, match="HTTP 500"):
            asyncio.run(install_woocommerce(db, settings, store, sid, T, box=box, new_secret=True))
        woo.list_status = 200
        assert woo.deliver("order.updated", ORDER, secret="someone-elses-secret") == 401  # (the endpoint re-reads)
        assert woo.deliver("order.updated", ORDER | {"status": "on-hold"}) == 200

        # one webhook cannot be updated: the error says so, and its deliveries (old secret) are still accepted
        woo.failing_updates = {"order.updated"}
        rotated = asyncio.run(install_woocommerce(db, settings, store, sid, T, box=box, new_secret=True))
        assert not rotated.ok and [t for t, _ in rotated.failed] == ["order.updated"]
        assert "previous secret stays accepted until every webhook has the new one" in rotated.secret
        new = get_credentials(db, box, sid)[WOO_WEBHOOK_SECRET].value
        assert new != old and woo.secrets[next(h["id"] for h in woo.hooks if h["topic"] == "order.created")] == new
        assert woo.deliver("order.created", ORDER | {"status": "completed"}) == 200  # signed with the new one
        assert woo.deliver("order.updated", ORDER | {"status": "cancelled"}) == 200  # still the old one
        now[0] = T + timedelta(days=30)  # however long it takes to notice
        assert woo.deliver("order.updated", ORDER | {"status": "refunded"}) == 200

        # run again (no new secret): the pending rotation is finished, every webhook has the new secret
        woo.failing_updates = set()
        finished = asyncio.run(install_woocommerce(db, settings, store, sid, now[0], box=box))
        assert finished.ok and "order.updated" in finished.updated and set(woo.secrets.values()) == {new}
        assert get_credentials(db, box, sid)[WOO_WEBHOOK_SECRET].value == new
        # a delivery signed just before its webhook changed is still accepted for a while, then no more
        now[0] += timedelta(minutes=1)
        assert woo.deliver("order.updated", ORDER | {"status": "failed"}, secret=old) == 200
        now[0] += timedelta(days=1)
        assert woo.deliver("order.updated", ORDER | {"status": "pending"}, secret=old) == 401
        assert woo.deliver("order.updated", ORDER | {"status": "processing", "total": "11.00"}) == 200
    for value in (old, new, key, CS):
        assert value not in caplog.text


def test_cli_new_secret_with_a_failed_update_says_the_old_secret_still_counts(db_url, woo, key, tmp_path: Path):
    cfg = woo_config(tmp_path, db_url, woo)
    assert runner.invoke(cli_app, ["install", "woocommerce", "--config", str(cfg), "--store", "woo", "--no-ping"]).exit_code == 0
    woo.failing_updates = {"customer.created"}
    out = runner.invoke(cli_app, ["install", "woocommerce", "--config", str(cfg), "--store", "woo", "--no-ping", "--new-secret"])
    assert out.exit_code == 1, out.output
    text = " ".join(out.output.split())
    assert "previous secret stays accepted until every webhook has the new one" in text
    assert "storeloop install woocommerce --store woo" in text
    # a second --new-secret before the first is finished would strand the webhooks still on the first secret
    again = runner.invoke(cli_app, ["install", "woocommerce", "--config", str(cfg), "--store", "woo", "--no-ping", "--new-secret"])
    assert again.exit_code == 2 and "not finished" in " ".join(again.output.split())
    woo.failing_updates = set()
    done = runner.invoke(cli_app, ["install", "woocommerce", "--config", str(cfg), "--store", "woo", "--no-ping"])
    assert done.exit_code == 0, done.output
    assert len(set(woo.secrets.values())) == 1
    for value in woo.secrets.values():
        assert value not in out.output + again.output + done.output


def woo_config(tmp_path: Path, db_url: str, woo: FakeWoo, *, reorder: bool = False) -> Path:
    """A config for ``storeloop install woocommerce`` against the fake store (the public URL: nothing listens there);
    ``reorder``: the store runs the reorder journey."""
    cfg = tmp_path / "storeloop.toml"
    cfg.write_text(f"""
[server]
public_url = "http://127.0.0.1:9"
[database]
url = "{db_url}"
[[stores]]
key = "woo"
platform = "woocommerce"
site_url = "{woo.base}"
webhook_secret = "w"
consumer_key = "{CK}"
consumer_secret = "{CS}"
""" + ("[stores.journeys.reorder]\n" if reorder else ""))
    return cfg


def test_cli_install_woocommerce(db_url, woo, key, tmp_path: Path):
    cfg = woo_config(tmp_path, db_url, woo)
    out = runner.invoke(cli_app, ["install", "woocommerce", "--config", str(cfg), "--store", "woo"])
    # nothing listens on the public URL here: the webhooks are made, the ping says so
    assert out.exit_code == 1, out.output
    assert "REST credentials ok (OAuth 1.0a" in out.output and "unreachable" in out.output
    assert f"{len(TOPICS)} created, 0 already present, 0 re-activated" in out.output
    assert len(woo.hooks) == len(TOPICS)
    # no reorder journey here: no product is read; no order history yet: the backfill is suggested
    assert woo.product_requests == [] and "product(s) read" not in out.output
    assert "hint: no order history imported yet for woo: run `storeloop sync --store woo --backfill --since 365d`" in out.output
    quiet = runner.invoke(cli_app, ["install", "woocommerce", "--config", str(cfg), "--store", "woo", "--no-ping"])
    assert quiet.exit_code == 0, quiet.output
    assert f"0 created, {len(TOPICS)} already present" in quiet.output and "ping: not sent" in quiet.output
    for value in (CK, CS, key, *woo.secrets.values()):
        assert value not in out.output and value not in quiet.output
    wrong = cfg.read_text().replace(CS, "cs_wrong")
    cfg.write_text(wrong)
    refused = runner.invoke(cli_app, ["install", "woocommerce", "--config", str(cfg), "--store", "woo"])
    assert refused.exit_code == 2 and "do not work: HTTP 401" in refused.output and "cs_wrong" not in refused.output


WOO_PRODUCTS = [
    {"id": 93, "name": "Rose water", "tags": [], "meta_data": [{"id": 1, "key": "_storeloop_replenish", "value": "6w"}],
     "date_modified_gmt": "2026-05-01T00:00:00", "status": "publish"},
    {"id": 94, "name": "Amla oil", "tags": [{"id": 3, "name": "replenish:10d", "slug": "replenish-10d"}], "meta_data": [],
     "date_modified_gmt": "2026-05-01T00:00:00", "status": "publish"},
    {"id": 95, "name": "Gift card", "tags": [], "meta_data": [], "date_modified_gmt": "2026-05-01T00:00:00", "status": "publish"},
]


def test_cli_install_reads_the_products_of_a_reorder_store_and_the_hint_goes_after_a_backfill(db_url, woo, key, tmp_path: Path):
    woo.products = [dict(p) for p in WOO_PRODUCTS]
    cfg = woo_config(tmp_path, db_url, woo, reorder=True)
    out = runner.invoke(cli_app, ["install", "woocommerce", "--config", str(cfg), "--store", "woo", "--no-ping"])
    assert out.exit_code == 0, out.output
    assert f"{len(TOPICS)} created" in out.output and len(woo.hooks) == len(TOPICS)
    assert "3 product(s) read for the reorder journey's cycles, 3 new or changed" in out.output
    assert len(woo.product_requests) == 1 and {"tags", "meta_data"} <= set(woo.product_requests[0]["_fields"].split(","))
    assert [(p["id"], p["tags"], p["meta_data"]) for p in inbox_bodies(db_url, "product.updated")] == [
        (p["id"], p["tags"], p["meta_data"]) for p in WOO_PRODUCTS]  # in the inbox, for the worker
    assert "hint: no order history imported yet for woo" in out.output

    mark_backfilled(db_url, "woo", "woocommerce", "2025-11-20T12:00:00+00:00")  # `storeloop sync --backfill` ran to its end since
    woo.products[2]["tags"] = [{"id": 4, "name": "replenish:90d", "slug": "replenish-90d"}]  # tagged in the admin meanwhile
    again = runner.invoke(cli_app, ["install", "woocommerce", "--config", str(cfg), "--store", "woo", "--no-ping"])
    assert again.exit_code == 0, again.output
    assert f"0 created, {len(TOPICS)} already present" in again.output
    assert "3 product(s) read for the reorder journey's cycles, 1 new or changed" in again.output
    assert inbox_bodies(db_url, "product.updated")[-1]["tags"] == [{"id": 4, "name": "replenish:90d", "slug": "replenish-90d"}]
    assert "hint:" not in again.output


def test_products_that_cannot_be_read_do_not_fail_the_install(db_url, woo, key, tmp_path: Path):
    woo.products, woo.products_status = [dict(p) for p in WOO_PRODUCTS], 403  # the key's user may not list products
    cfg = woo_config(tmp_path, db_url, woo, reorder=True)
    out = runner.invoke(cli_app, ["install", "woocommerce", "--config", str(cfg), "--store", "woo", "--no-ping"],
                        env={"COLUMNS": "300"})
    assert out.exit_code == 0, out.output
    assert len(woo.hooks) == len(TOPICS) and len(woo.product_requests) == 1  # a 403 is not retried
    assert "products not read: PermanentError: HTTP 403, woocommerce_rest_cannot_view" in out.output
    assert "the worker's daily product sync tries again" in out.output
    assert inbox_bodies(db_url, "product.updated") == [] and "hint: no order history imported yet for woo" in out.output


def test_install_makes_the_cycles_of_existing_products_known(db_url, woo, key):
    """Products tagged (or given the cycle meta) before install never send a webhook: once the
    install has read them and the worker has processed the rows, their cycles are there."""
    settings = woo_settings(db_url, woo.base, PUBLIC_HTTPS, journeys={"reorder": {}})
    woo.products = [dict(p) for p in WOO_PRODUCTS]
    with running_app(settings) as (_client, runtime):
        sid = runtime.store_ids["woo"]
        report = asyncio.run(install_woocommerce(runtime.db, settings, settings.store("woo"), sid, T, box=SecretBox([key]),
                                                 ping=False))
        assert report.ok and report.products is not None and report.products.products_seen == 3
        runtime.processor.drain()
        with runtime.db.engine.connect() as conn:
            cycles = {(r.product_key, r.cycle_days) for r in conn.execute(select(ProductCycle).where(ProductCycle.store_id == sid))}
    assert cycles == {("p:93", 42.0), ("p:94", 10.0)}


def test_https_stores_use_basic_auth(db_url, key):
    settings = woo_settings(db_url, "https://bloom.example", PUBLIC_HTTPS)
    db = Database.from_url(db_url)
    sid = sync_stores(db, [(s.key, s.platform) for s in settings.stores])["woo"]
    api = "https://bloom.example/wp-json/wc/v3"
    try:
        with respx.mock(assert_all_called=False) as mock:
            orders = mock.get(f"{api}/orders").respond(json=[])
            listed = mock.get(f"{api}/webhooks").respond(json=[], headers={"X-WP-TotalPages": "1"})
            created = mock.post(f"{api}/webhooks").mock(side_effect=lambda req: httpx.Response(
                201, json={"id": 7, **{k: v for k, v in json.loads(req.content).items() if k != "secret"}}))
            ping = mock.post(f"{PUBLIC_HTTPS}/webhooks/woocommerce/woo").respond(200)
            report = asyncio.run(install_woocommerce(db, settings, settings.store("woo"), sid, T, box=SecretBox([key])))
        assert report.ok and report.auth == "HTTP Basic over https" and len(report.created) == len(TOPICS)
        for route in (orders, listed, created):
            request = route.calls.last.request
            assert request.headers["authorization"] == "Basic " + base64.b64encode(f"{CK}:{CS}".encode()).decode()
            assert "oauth_signature" not in str(request.url) and CS not in str(request.url)
        assert ping.calls.last.request.content == b"webhook_id=7"
        body = json.loads(created.calls.last.request.content)
        assert body["delivery_url"] == f"{PUBLIC_HTTPS}/webhooks/woocommerce/woo" and body["status"] == "active"
        assert len(body["secret"]) >= 40 and body["secret"].replace("-", "").replace("_", "").isalnum()  # URL-safe (B3)
    finally:
        db.dispose()


def test_install_refuses_without_keys_or_public_url(db_url, key):
    box = SecretBox([key])
    no_keys = woo_settings(db_url, "https://bloom.example", PUBLIC_HTTPS, consumer_key=None, consumer_secret=None)
    db = Database.from_url(db_url)
    sid = sync_stores(db, [(s.key, s.platform) for s in no_keys.stores])["woo"]
    try:
        with pytest.raises(InstallRefused, match="/woocommerce/connect\\?store=woo"):
            asyncio.run(install_woocommerce(db, no_keys, no_keys.store("woo"), sid, T, box=box))
        with pytest.raises(InstallRefused, match=SECRET_KEYS_ENV):
            asyncio.run(install_woocommerce(db, no_keys, no_keys.store("woo"), sid, T, box=None))
        data = settings_dict(db_url)
        unset = parse_settings(data, environ={})
        with pytest.raises(InstallRefused, match="server.public_url is not set"):
            asyncio.run(install_woocommerce(db, unset, unset.store("woo"), sid, T, box=box))
    finally:
        db.dispose()


# ---- wc-auth: keys without copy-paste -----------------------------------------------------------


ADMIN = {"Authorization": f"Bearer {SECRETS['admin']}"}


def connect(client) -> tuple[str, dict[str, list[str]]]:
    answer = client.get("/woocommerce/connect", params={"store": "woo"}, headers=ADMIN, follow_redirects=False)
    assert answer.status_code == 302, answer.text
    location = urlparse(answer.headers["location"])
    assert (location.scheme, location.netloc, location.path) == ("https", "bloom.example", "/wc-auth/v1/authorize")
    query = parse_qs(location.query)
    callback = urlparse(query["callback_url"][0])
    assert callback.scheme == "https" and callback.netloc == "connector.example"
    return callback.path, query


def keys(**over) -> dict:
    return {"key_id": 12, "user_id": "woo", "consumer_key": "ck_provisioned_1234567890",
            "consumer_secret": "cs_provisioned_1234567890", "key_permissions": "read_write"} | over


def test_wc_auth_callback_stores_the_keys_encrypted_once(db_url, key):
    settings = woo_settings(db_url, "https://bloom.example", PUBLIC_HTTPS, consumer_key=None, consumer_secret=None)
    api = "https://bloom.example/wp-json/wc/v3"
    with respx.mock(assert_all_called=False) as mock:  # the webhooks made right after the callback
        orders = mock.get(f"{api}/orders").respond(json=[])
        mock.get(f"{api}/webhooks").respond(json=[])
        made = mock.post(f"{api}/webhooks").mock(side_effect=lambda req: httpx.Response(201, json={"id": 9, "status": "active"}))
        mock.post(f"{PUBLIC_HTTPS}/webhooks/woocommerce/woo").respond(200)
        with running_app(settings) as (client, runtime):
            path, query = connect(client)
            assert query["app_name"] == ["storeloop"] and query["scope"] == ["read_write"] and query["user_id"] == ["woo"]
            assert query["return_url"] == [f"{PUBLIC_HTTPS}/woocommerce/connected?store=woo"]
            answer = client.post(path, content=json.dumps(keys()), headers={"Content-Type": "application/json;charset=UTF-8"})
            assert answer.status_code == 200 and answer.json() == {"ok": True, "store": "woo"}
            sid = runtime.store_ids["woo"]
            stored = get_credentials(runtime.db, SecretBox([key]), sid)
            assert stored[WOO_CONSUMER_KEY].value == "ck_provisioned_1234567890"
            assert stored[WOO_CONSUMER_SECRET].value == "cs_provisioned_1234567890"
            with runtime.db.engine.connect() as conn:
                raw = " ".join(conn.execute(select(StoreCredential.value)).scalars())
            assert "cs_provisioned" not in raw and "ck_provisioned" not in raw
            assert runtime.writers[sid]._ck == "ck_provisioned_1234567890"  # write-backs use them at once
            replay = client.post(path, content=json.dumps(keys(consumer_secret="cs_attacker_00000000")))
            assert replay.status_code == 401
            assert get_credentials(runtime.db, SecretBox([key]), sid)[WOO_CONSUMER_SECRET].value == "cs_provisioned_1234567890"
            back = client.get("/woocommerce/connected", params={"store": "woo", "success": "1"})
            assert back.status_code == 200 and "stored encrypted" in back.text
        # the background install used the new keys (Basic auth) and made the webhooks
        assert orders.calls and orders.calls.last.request.headers["authorization"].startswith("Basic ")
        assert made.call_count == len(TOPICS)


@pytest.mark.parametrize("payload,status", [
    (keys(user_id="another-store"), 400),
    (keys(key_permissions="read"), 400),
    (keys(consumer_secret=""), 400),
    ("not json", 400),
])
def test_wc_auth_callback_refuses_bad_bodies(db_url, key, payload, status):
    settings = woo_settings(db_url, "https://bloom.example", PUBLIC_HTTPS, consumer_key=None, consumer_secret=None)
    with running_app(settings) as (client, runtime):
        path, _ = connect(client)
        body = payload if isinstance(payload, str) else json.dumps(payload)
        assert client.post(path, content=body).status_code == status
        assert get_credentials(runtime.db, SecretBox([key]), runtime.store_ids["woo"]) == {}


def test_wc_auth_needs_a_known_nonce_an_https_public_url_and_a_key(db_url, key, monkeypatch):
    settings = woo_settings(db_url, "https://bloom.example", PUBLIC_HTTPS)
    with running_app(settings) as (client, runtime):
        assert client.post("/woocommerce/callback/made-up-nonce", content=json.dumps(keys())).status_code == 401
        assert client.get("/woocommerce/connect", params={"store": "shop-a"}, headers=ADMIN, follow_redirects=False).status_code == 404
        path, _ = connect(client)
        runtime.clock = lambda: datetime.now(timezone.utc) + timedelta(minutes=20)
        assert client.post(path, content=json.dumps(keys())).status_code == 401  # expired
        big = client.post(path, content=b"x" * 20000)
        assert big.status_code == 413
    plain = woo_settings(db_url, "https://bloom.example", "http://connector.example")
    with running_app(plain) as (client, _runtime):
        refused = client.get("/woocommerce/connect", params={"store": "woo"}, headers=ADMIN, follow_redirects=False)
        assert refused.status_code == 409 and "https" in refused.text
    monkeypatch.delenv(SECRET_KEYS_ENV)
    with running_app(settings) as (client, _runtime):
        path, _ = connect(client)
        assert client.post(path, content=json.dumps(keys())).status_code == 503


def test_only_the_admin_can_start_wc_auth(db_url, key, caplog):
    """Whoever starts wc-auth learns the single-use callback path, and a key pair posted there
    replaces the store's REST keys: an anonymous visitor is sent to sign in and gets no path."""
    caplog.set_level(logging.INFO)
    settings = woo_settings(db_url, "https://bloom.example", PUBLIC_HTTPS)

    def outstanding(runtime) -> int:
        with runtime.db.engine.connect() as conn:
            return len(conn.execute(select(OAuthState.nonce)).all())

    with running_app(settings) as (client, runtime):
        anon = client.get("/woocommerce/connect", params={"store": "woo"}, follow_redirects=False)
        assert anon.status_code == 303 and anon.headers["location"] == "/dashboard/woo/woocommerce/connect"
        form = client.get(anon.headers["location"], follow_redirects=False)
        assert form.status_code == 200 and 'name="token"' in form.text and "wc-auth" not in form.text
        guessed = client.get("/woocommerce/connect", params={"store": "woo"}, headers={"Authorization": "Bearer guess-1"},
                             follow_redirects=False)
        assert guessed.status_code == 401 and "location" not in guessed.headers
        assert outstanding(runtime) == 0  # nothing was made for them

        # signed in on the dashboard, the same link goes on to the store's approval page
        signed = client.post("/dashboard/login", data={"token": SECRETS["admin"], "next": anon.headers["location"]},
                             follow_redirects=False)
        assert signed.status_code == 303 and signed.headers["location"] == "/dashboard/woo/woocommerce/connect"
        started = client.get(signed.headers["location"], follow_redirects=False)
        assert started.status_code == 302
        assert urlparse(started.headers["location"])[1:3] == ("bloom.example", "/wc-auth/v1/authorize")
        assert outstanding(runtime) == 1

        # guessing the token here counts with the admin API's failures, per client address
        for i in range(2, 6):
            assert client.get("/woocommerce/connect", params={"store": "woo"}, headers={"Authorization": f"Bearer guess-{i}"},
                              follow_redirects=False).status_code == 401
        assert client.get("/api/stores/woo/inbox", headers=ADMIN).status_code == 429
        assert client.get("/woocommerce/connect", params={"store": "woo"}, headers=ADMIN, follow_redirects=False).status_code == 429
        other = TestClient(client.app, client=("198.51.100.7", 40000))
        assert other.get("/woocommerce/connect", params={"store": "woo"}, headers=ADMIN, follow_redirects=False).status_code == 302
        assert outstanding(runtime) == 2
    failures = [r for r in caplog.records if r.getMessage() == "admin request without a valid token"]
    assert [(r.route, r.client) for r in failures] == [("/woocommerce/connect", "testclient")] * 5
    assert "guess-" not in caplog.text and SECRETS["admin"] not in caplog.text


def test_outstanding_wc_auth_callbacks_are_capped_per_store(db_url, key):
    settings = woo_settings(db_url, "https://bloom.example", PUBLIC_HTTPS)
    start = datetime.now(timezone.utc)
    with running_app(settings) as (client, runtime):
        ticks = iter(range(1000))
        runtime.clock = lambda: start + timedelta(seconds=next(ticks))
        paths = [connect(client)[0] for _ in range(nonces.MAX_OUTSTANDING + 5)]
        with runtime.db.engine.connect() as conn:
            kept = set(conn.execute(select(OAuthState.nonce).where(OAuthState.used_at.is_(None))).scalars())
        assert kept == {p.rsplit("/", 1)[1] for p in paths[5:]}  # the newest, however often it is started
        for old in paths[:5]:
            assert client.post(old, content=json.dumps(keys())).status_code == 401
        assert get_credentials(runtime.db, SecretBox([key]), runtime.store_ids["woo"]) == {}
