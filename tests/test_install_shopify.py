"""Shopify install against a fake Shopify served on 127.0.0.1: the client credentials grant with
renewal, the authorization-code dance through the real app's routes (and every way it must
refuse), token refresh with a rotated refresh token, and idempotent webhook registration."""

from __future__ import annotations

import asyncio
import json
import logging
from datetime import datetime, timedelta, timezone
from pathlib import Path
from urllib.parse import parse_qs, parse_qsl, urlparse

import httpx
import pytest
from sqlalchemy import select, update
from typer.testing import CliRunner

from adapters.shopify import oauth
from adapters.shopify.subscriptions import TOPICS, SubscriptionReport, register_webhooks
from connector.cli import app as cli_app
from connector.config import DEFAULT_SHOPIFY_SCOPES, parse_settings
from connector.install.credentials import RenewingShopifyClient, ensure_shopify_token, obtain_shopify_token
from connector.install.shopify import webhook_rows, webhook_summary
from connector.secrets import SECRET_KEYS_ENV, SHOPIFY_ACCESS_TOKEN, SHOPIFY_REFRESH_TOKEN, SecretBox, generate_key, get_credentials
from connector.storage.db import Database
from connector.storage.inbox import sync_stores
from connector.storage.models import ProductCycle, Store, StoreCredential
from jobs.scheduler import has_credentials, make_client
from tests.conftest import settings_dict
from tests.helpers import dumps, inbox_bodies, mark_backfilled, running_app, shopify_headers
from tests.install_fakes import FakeShopify, serve

CLIENT_ID = "client-id-shop-a"
CLIENT_SECRET = "shpss_client_secret_of_shop_a_0001"
PUBLIC = "https://connector.example"
SHOP = "shop-a.myshopify.com"
HOST = "YWRtaW4uc2hvcGlmeS5jb20vc3RvcmUvc2hvcC1h"
T = datetime(2026, 11, 20, 12, 0, tzinfo=timezone.utc)
runner = CliRunner()


@pytest.fixture
def fake():
    shop = FakeShopify(CLIENT_ID, CLIENT_SECRET)
    with serve(shop.app) as base:
        shop.base = base  # type: ignore[attr-defined]
        yield shop


@pytest.fixture
def key(monkeypatch) -> str:
    value = generate_key()
    monkeypatch.setenv(SECRET_KEYS_ENV, value)
    return value


def shop_settings(db_url: str, fake: FakeShopify, **shop_a):
    data = settings_dict(db_url)
    data["server"]["public_url"] = PUBLIC
    data["stores"][0] |= {"client_id": CLIENT_ID, "client_secret": CLIENT_SECRET, "api_base_url": fake.base, **shop_a}
    return parse_settings(data, environ={})


def signed(params: dict[str, str], secret: str = CLIENT_SECRET) -> dict[str, str]:
    return {**params, "hmac": oauth.calculate_hmac(params, secret)}


def raw_values(db: Database) -> str:
    with db.engine.connect() as conn:
        return " ".join(conn.execute(select(StoreCredential.value)).scalars())


# ---- the query HMAC and the shop host (pure) ---------------------------------------------------------


def test_hmac_matches_shopifys_documented_example():
    # shopify.dev "Verify the installation request": secret "hush"
    query = [("code", "0907a61c0c8d55e99db179b68161bc00"), ("hmac", "700e2dadb827fcc8609e9d5ce208b2e9cdaab9df07390d2cbca10d7c328fc4bf"),
             ("shop", "some-shop.myshopify.com"), ("state", "0.6784241404160823"), ("timestamp", "1337178173")]
    assert oauth.hmac_message(query) == ("code=0907a61c0c8d55e99db179b68161bc00&shop=some-shop.myshopify.com"
                                         "&state=0.6784241404160823&timestamp=1337178173")
    assert oauth.verify_hmac(query, "hush")
    assert not oauth.verify_hmac(query, "hush!")
    tampered = [(k, "evil.myshopify.com" if k == "shop" else v) for k, v in query]
    assert not oauth.verify_hmac(tampered, "hush")
    assert not oauth.verify_hmac([p for p in query if p[0] != "hmac"], "hush")


def test_hmac_escaping_and_arrays_follow_the_python_library():
    # shopify_python_api: foo[] -> foo=["1", "2"]; % -> %25; = in keys -> %3D; & -> %26
    params = [("ids[]", "1"), ("ids[]", "2"), ("a=b", "x&y"), ("p", "100%"), ("shop", SHOP)]
    assert oauth.hmac_message(params) == 'a%3Db=x%26y&ids=["1", "2"]&p=100%25&shop=shop-a.myshopify.com'
    assert oauth.verify_hmac(params + [("hmac", oauth.calculate_hmac(params, "s"))], "s")
    # a pair smuggled through an unescaped & would otherwise sign the same string
    assert oauth.calculate_hmac([("a", "1&b=2")], "s") != oauth.calculate_hmac([("a", "1"), ("b", "2")], "s")


@pytest.mark.parametrize("shop,ok", [
    ("shop-a.myshopify.com", True), ("a1.myshopify.com", True), ("evil.com", False), ("shop-a.myshopify.com.evil.com", False),
    ("https://shop-a.myshopify.com", False), ("shop-a.myshopify.com:443", False), ("-a.myshopify.com", False),
    ("shop_a.myshopify.com", False), ("", False), ("shop-a.myshopify.com/admin", False), ("SHOP-A.myshopify.com", False),
])
def test_only_myshopify_hosts(shop, ok):
    assert oauth.is_myshopify_host(shop) is ok


def test_timestamps_older_than_a_day_or_from_the_future_are_refused():
    now = T
    assert oauth.timestamp_ok(str(int(now.timestamp()) - 3600), now)
    assert not oauth.timestamp_ok(str(int((now - timedelta(hours=25)).timestamp())), now)
    assert not oauth.timestamp_ok(str(int((now + timedelta(hours=1)).timestamp())), now)
    assert not oauth.timestamp_ok("12ab", now) and not oauth.timestamp_ok(None, now)


# ---- own store: client credentials grant, renewal ----------------------------------------------------


def test_client_credentials_token_is_stored_encrypted_and_renewed_only_near_expiry(db_url, fake, key):
    settings = shop_settings(db_url, fake)
    store = settings.store("shop-a")
    db = Database.from_url(db_url)
    sid = sync_stores(db, [(s.key, s.platform) for s in settings.stores])["shop-a"]
    box = SecretBox([key])
    try:
        first = asyncio.run(ensure_shopify_token(db, store, T))  # the key from the environment
        assert fake.grants == ["client_credentials"] and first in fake.valid_tokens
        stored = get_credentials(db, box, sid)[SHOPIFY_ACCESS_TOKEN]
        assert stored.value == first and stored.expires_at == T + timedelta(seconds=86399)
        assert first not in raw_values(db)
        for later in (timedelta(minutes=1), timedelta(hours=12), timedelta(hours=23, minutes=45)):
            assert asyncio.run(ensure_shopify_token(db, store, T + later, box=box)) == first  # fresh: no call
        assert fake.grants == ["client_credentials"]
        near = T + timedelta(seconds=86399) - timedelta(minutes=5)
        second = asyncio.run(ensure_shopify_token(db, store, near, box=box))
        assert second != first and fake.grants == ["client_credentials"] * 2
        assert get_credentials(db, box, sid)[SHOPIFY_ACCESS_TOKEN].expires_at == near + timedelta(seconds=86399)
        assert asyncio.run(ensure_shopify_token(db, store, near + timedelta(hours=1), box=box)) == second
        expired = near + timedelta(days=2)
        assert asyncio.run(ensure_shopify_token(db, store, expired, box=box)) not in (first, second)
        assert len(fake.grants) == 3
    finally:
        db.dispose()


def test_a_refused_token_is_renewed_once_by_the_client(db_url, fake, key):
    settings = shop_settings(db_url, fake)
    store = settings.store("shop-a")
    db = Database.from_url(db_url)
    sync_stores(db, [(s.key, s.platform) for s in settings.stores])
    try:
        assert has_credentials(store) and has_credentials(store, db)

        async def go() -> None:
            async with make_client(store, db) as client:  # what the jobs use
                assert isinstance(client, RenewingShopifyClient)
                await client.graphql("query { webhookSubscriptions(first: 1) { nodes { id } } }", {"first": 1})
                fake.revoke_all()  # e.g. the token was revoked in the admin
                await client.graphql("query { webhookSubscriptions(first: 1) { nodes { id } } }", {"first": 1})

        asyncio.run(go())
        assert fake.grants == ["client_credentials", "client_credentials"]
    finally:
        db.dispose()


def test_a_legacy_access_token_still_works_and_needs_no_key(db_url, fake, monkeypatch):
    monkeypatch.delenv(SECRET_KEYS_ENV, raising=False)
    fake.valid_tokens.add("shpat_legacy_custom_app_token")
    settings = shop_settings(db_url, fake, client_id=None, client_secret=None, access_token="shpat_legacy_custom_app_token")
    db = Database.from_url(db_url)
    sync_stores(db, [(s.key, s.platform) for s in settings.stores])
    try:
        token = asyncio.run(obtain_shopify_token(db, settings.store("shop-a"), T))
        assert (token.value, token.source, token.expires_at) == ("shpat_legacy_custom_app_token", "config", None)
        assert fake.grants == []
    finally:
        db.dispose()


def write_config(tmp_path: Path, db_url: str, fake: FakeShopify, **extra: str) -> Path:
    lines = "\n".join(f'{k} = "{v}"' for k, v in extra.items())
    cfg = tmp_path / "storeloop.toml"
    cfg.write_text(f"""
[server]
public_url = "{PUBLIC}"
[database]
url = "{db_url}"
[[stores]]
key = "shop-a"
platform = "shopify"
shop_domain = "{SHOP}"
webhook_secret = "whsec"
api_base_url = "{fake.base}"
{lines}
""")
    return cfg


def test_cli_install_registers_webhooks_once(db_url, fake, key, tmp_path):
    cfg = write_config(tmp_path, db_url, fake, client_id=CLIENT_ID, client_secret=CLIENT_SECRET)
    first = runner.invoke(cli_app, ["install", "shopify", "--config", str(cfg), "--store", "shop-a"])
    assert first.exit_code == 0, first.output
    assert "client credentials grant" in first.output and f"{len(TOPICS)} created, 0 already present, 0 failed" in first.output
    assert "compliance topics" in first.output and "shopify.app.toml" in first.output
    assert {s["topic"] for s in fake.subscriptions} == set(TOPICS)
    assert {s["uri"] for s in fake.subscriptions} == {f"{PUBLIC}/webhooks/shopify"}
    again = runner.invoke(cli_app, ["install", "shopify", "--config", str(cfg), "--store", "shop-a"])
    assert again.exit_code == 0, again.output
    assert f"0 created, {len(TOPICS)} already present, 0 failed" in again.output and "stored token" in again.output
    assert fake.creates == len(TOPICS) and len(fake.subscriptions) == len(TOPICS)  # no duplicates
    assert fake.grants == ["client_credentials"]  # the stored token was reused
    for secret in [CLIENT_SECRET, key, *fake.issued]:
        assert secret not in first.output and secret not in again.output
    # no reorder journey here: no product is read; no order history yet: the backfill is suggested
    assert fake.product_queries == [] and "product(s) read" not in first.output
    assert "hint: no order history imported yet for shop-a: run `storeloop sync --store shop-a --backfill --since 365d`" in again.output


def product_node(n: int, tags: list[str], replenish: str | None = None) -> dict:
    return {"id": f"gid://shopify/Product/{n}", "title": f"Product {n}", "tags": tags, "updatedAt": "2026-08-01T00:00:00Z",
            "metafield": {"value": replenish} if replenish else None}


def test_cli_install_of_a_reorder_store_reads_the_products_and_adds_the_metafield_namespace(db_url, fake, key, tmp_path):
    uri = f"{PUBLIC}/webhooks/shopify"
    fake.products = [product_node(9001, ["vegan", "replenish:3w"]), product_node(9002, ["soap"], "45d"), product_node(9003, [])]
    # subscribed by an earlier version, without the metafield namespace: product deliveries lack the cycle
    fake.subscriptions.append({"id": "gid://shopify/WebhookSubscription/1", "topic": "PRODUCTS_UPDATE", "uri": uri,
                               "metafieldNamespaces": []})
    cfg = write_config(tmp_path, db_url, fake, client_id=CLIENT_ID, client_secret=CLIENT_SECRET)
    cfg.write_text(cfg.read_text() + "[stores.journeys.reorder]\n")
    args = ["install", "shopify", "--config", str(cfg), "--store", "shop-a"]
    first = runner.invoke(cli_app, args, env={"COLUMNS": "200"})
    assert first.exit_code == 0, first.output
    [row] = [line for line in first.output.splitlines() if "PRODUCTS_UPDATE" in line]
    assert "updated" in row and "metafield namespace 'storeloop' added" in row and "already present" not in row
    assert f"{len(TOPICS) - 1} created, 0 already present, 1 updated, 0 failed" in first.output
    assert {s["topic"]: s.get("metafieldNamespaces") for s in fake.subscriptions if s["topic"].startswith("PRODUCTS_")} == {
        "PRODUCTS_UPDATE": ["storeloop"], "PRODUCTS_CREATE": ["storeloop"], "PRODUCTS_DELETE": None}  # a deletion's body is only the id
    assert [q["first"] for q in fake.product_queries] == [100]  # after the webhooks, the whole catalogue
    assert "3 product(s) read for the reorder journey's cycles, 3 new or changed" in first.output
    assert [(p["id"], p["tags"], p.get("metafields")) for p in inbox_bodies(db_url, "products/update")] == [
        (9001, "vegan, replenish:3w", None), (9002, "soap", [{"namespace": "storeloop", "key": "replenish", "value": "45d"}]),
        (9003, "", None)]  # in the inbox as product webhooks, for the worker
    assert "hint: no order history imported yet for shop-a: run `storeloop sync --store shop-a --backfill --since 365d`" in first.output

    mark_backfilled(db_url, "shop-a", "shopify", "2025-11-20T12:00:00+00:00")  # `storeloop sync --backfill` ran to its end since
    again = runner.invoke(cli_app, args, env={"COLUMNS": "200"})
    assert again.exit_code == 0, again.output
    assert f"0 created, {len(TOPICS)} already present, 0 failed" in again.output and len(fake.updates) == 1
    assert "3 product(s) read for the reorder journey's cycles, 0 new or changed" in again.output and len(inbox_bodies(db_url, "products/update")) == 3
    assert "hint:" not in again.output


def test_each_topic_is_counted_once_in_the_install_table():
    hooks = SubscriptionReport(uri="https://x", created=["ORDERS_PAID"], present=["ORDERS_CREATE", "PRODUCTS_CREATE", "PRODUCTS_UPDATE"],
                               updated=["PRODUCTS_CREATE"], failed=[("PRODUCTS_UPDATE", "Invalid namespace")])
    assert webhook_rows(hooks) == [("ORDERS_PAID", "created", ""), ("ORDERS_CREATE", "already present", ""),
                                   ("PRODUCTS_CREATE", "updated", "metafield namespace 'storeloop' added"),
                                   ("PRODUCTS_UPDATE", "failed", "Invalid namespace")]
    assert webhook_summary(hooks) == "1 created, 1 already present, 1 updated, 1 failed"


def test_cli_install_with_a_legacy_token_and_a_partial_failure(db_url, fake, key, tmp_path):
    fake.valid_tokens.add("shpat_legacy_token_value")
    fake.subscriptions.append({"id": "gid://shopify/WebhookSubscription/1", "topic": "ORDERS_CREATE", "uri": f"{PUBLIC}/webhooks/shopify"})
    fake.subscriptions.append({"id": "gid://shopify/WebhookSubscription/2", "topic": "ORDERS_PAID", "uri": "https://old.example/hooks"})
    cfg = write_config(tmp_path, db_url, fake, access_token="shpat_legacy_token_value")
    out = runner.invoke(cli_app, ["install", "shopify", "--config", str(cfg), "--store", "shop-a"])
    assert out.exit_code == 0, out.output
    assert "legacy" in out.output and f"{len(TOPICS) - 1} created, 1 already present" in out.output
    assert "https://old.example/hooks" in out.output  # the stale subscription is pointed out
    assert "shpat_legacy_token_value" not in out.output


def test_cli_install_explains_what_is_missing(db_url, fake, key, tmp_path):
    cfg = write_config(tmp_path, db_url, fake)
    out = runner.invoke(cli_app, ["install", "shopify", "--config", str(cfg), "--store", "shop-a"])
    assert out.exit_code == 2 and "client_id + client_secret" in out.output and "/shopify/install?shop=" in out.output
    bad = write_config(tmp_path, db_url, fake, client_id=CLIENT_ID, client_secret="shpss_wrong")
    failed = runner.invoke(cli_app, ["install", "shopify", "--config", str(bad), "--store", "shop-a"])
    assert failed.exit_code == 1 and "client credentials grant: HTTP 401 (invalid_client)" in failed.output
    assert "shpss_wrong" not in failed.output


def test_every_subscribed_topic_says_what_scope_it_needs_and_the_default_scopes_cover_them_all():
    from adapters.shopify.subscriptions import TOPIC_SCOPES, missing_scopes

    assert set(TOPIC_SCOPES) >= set(TOPICS)  # a new topic gets its row, or install cannot explain its refusal
    assert {t: missing_scopes(t, DEFAULT_SHOPIFY_SCOPES) for t in TOPICS} == {t: () for t in TOPICS}
    assert missing_scopes("FULFILLMENTS_UPDATE", ("read_orders", "write_orders")) == ("read_fulfillments", "read_marketplace_orders")
    assert missing_scopes("FULFILLMENTS_UPDATE", ("write_fulfillments",)) == ()  # a write scope grants its read scope
    assert missing_scopes("PRODUCTS_UPDATE", (" READ_PRODUCTS ",)) == () and missing_scopes("APP_UNINSTALLED", ()) == ()


def test_cli_install_names_the_scope_a_refused_topic_needs(db_url, fake, key, tmp_path):
    """Scopes from before delivery updates needed read_fulfillments: Shopify refuses the fulfilment topics
    with a bare "Invalid topic"; the install says, per topic, which scope to add and what stops working."""
    old_scopes = ["read_orders", "write_orders", "read_customers", "write_customers", "read_products"]
    fake.granted_scopes = set(old_scopes)
    cfg = write_config(tmp_path, db_url, fake, client_id=CLIENT_ID, client_secret=CLIENT_SECRET)
    cfg.write_text(cfg.read_text() + f"scopes = {json.dumps(old_scopes)}\n")
    out = runner.invoke(cli_app, ["install", "shopify", "--config", str(cfg), "--store", "shop-a"], env={"COLUMNS": "400"})
    assert out.exit_code == 1, out.output
    assert f"{len(TOPICS) - 2} created, 0 already present, 2 failed" in out.output
    rows = {line.split()[1]: " ".join(line.split()) for line in out.output.splitlines() if "FULFILLMENTS_" in line}  # │ topic │ ...
    for topic in ("FULFILLMENTS_CREATE", "FULFILLMENTS_UPDATE"):
        assert "failed" in rows[topic] and "needs scope read_fulfillments (or read_marketplace_orders)" in rows[topic]
        assert "delivery updates will not work" in rows[topic] and f"Invalid topic specified: {topic}" in rows[topic]
    assert "ORDERS_CREATE" not in " ".join(rows)  # the topics its scopes cover are not flagged


def test_cli_install_notes_a_topic_the_token_allows_but_the_scopes_lack(db_url, fake, key, tmp_path):
    cfg = write_config(tmp_path, db_url, fake, client_id=CLIENT_ID, client_secret=CLIENT_SECRET)
    cfg.write_text(cfg.read_text() + 'scopes = ["read_orders", "write_orders", "read_customers", "write_customers", "read_products"]\n')
    out = runner.invoke(cli_app, ["install", "shopify", "--config", str(cfg), "--store", "shop-a"], env={"COLUMNS": "400"})
    assert out.exit_code == 0, out.output
    notes = [" ".join(line.split()) for line in out.output.splitlines() if line.startswith("note: FULFILLMENTS_")]
    assert len(notes) == 2 and all("lack read_fulfillments or read_marketplace_orders: add read_fulfillments" in n for n in notes)


def test_registration_is_idempotent_and_pages_through_existing_subscriptions(db_url, fake, key):
    settings = shop_settings(db_url, fake)
    store = settings.store("shop-a")
    for i in range(130):  # other subscriptions of this app, more than one page
        fake.subscriptions.append({"id": f"gid://shopify/WebhookSubscription/x{i}", "topic": "PRODUCTS_UPDATE",
                                   "uri": f"https://elsewhere.example/{i}"})
    db = Database.from_url(db_url)
    sync_stores(db, [(s.key, s.platform) for s in settings.stores])
    uri = f"{PUBLIC}/webhooks/shopify"
    try:
        async def run():
            async with make_client(store, db) as client:
                return await register_webhooks(client, uri), await register_webhooks(client, uri)

        first, second = asyncio.run(run())
    finally:
        db.dispose()
    assert sorted(first.created) == sorted(TOPICS) and first.present == [] and first.failed == []
    assert second.created == [] and sorted(second.present) == sorted(TOPICS)
    assert fake.creates == len(TOPICS)


# ---- agency / many stores: the authorization code grant through the app's routes -------------------------


def begin(client, now: datetime, **extra: str):
    params = signed({"shop": SHOP, "timestamp": str(int(now.timestamp())), "host": HOST, **extra})
    return client.get("/shopify/install", params=params, follow_redirects=False)


def state_from(response) -> str:
    assert response.status_code == 302, response.text
    location = urlparse(response.headers["location"])
    assert (location.scheme, location.netloc, location.path) == ("https", SHOP, "/admin/oauth/authorize")
    query = parse_qs(location.query)
    assert query["client_id"] == [CLIENT_ID]
    assert query["scope"] == ["read_orders,write_orders,read_customers,write_customers,read_products,read_fulfillments"]
    assert query["redirect_uri"] == [f"{PUBLIC}/shopify/callback"]
    assert "grant_options[]" not in query  # offline token
    return query["state"][0]


def callback_params(fake: FakeShopify, state: str, now: datetime, **override: str) -> dict[str, str]:
    params = {"code": fake.issue_code(), "host": HOST, "shop": SHOP, "state": state, "timestamp": str(int(now.timestamp()))}
    params |= override
    return signed(params)


@pytest.fixture
def now() -> datetime:
    return datetime.now(timezone.utc).replace(microsecond=0)


def test_authorization_code_install_end_to_end(db_url, fake, key, now, caplog):
    caplog.set_level(logging.DEBUG)
    settings = shop_settings(db_url, fake)
    with running_app(settings) as (client, runtime):
        runtime.clock = lambda: now
        sid = runtime.store_ids["shop-a"]
        with runtime.db.write_lock(), runtime.db.engine.begin() as conn:  # an earlier app/uninstalled
            conn.execute(update(Store).where(Store.id == sid).values(uninstalled_at=now - timedelta(days=3)))
        started = begin(client, now)
        assert started.headers["referrer-policy"] == "no-referrer" and started.headers["cache-control"] == "no-store"
        state = state_from(started)
        params = callback_params(fake, state, now)
        done = client.get("/shopify/callback", params=params)
        assert done.status_code == 200, done.text
        assert "storeloop installed" in done.text and f"{len(TOPICS)} created, 0 already present, 0 failed" in done.text
        assert "compliance topics" in done.text
        assert done.headers["content-security-policy"].startswith("default-src 'none'")
        box = SecretBox([key])
        creds = get_credentials(runtime.db, box, sid)
        assert creds[SHOPIFY_ACCESS_TOKEN].value in fake.valid_tokens
        assert creds[SHOPIFY_ACCESS_TOKEN].expires_at == now + timedelta(seconds=3600)
        assert creds[SHOPIFY_REFRESH_TOKEN].value in fake.refresh_tokens
        assert fake.grants == ["authorization_code"] and {s["topic"] for s in fake.subscriptions} == set(TOPICS)
        for token in fake.issued:
            assert token not in raw_values(runtime.db) and token not in done.text
        assert isinstance(runtime.writers[sid], RenewingShopifyClient)  # write-backs go live
        with runtime.db.engine.connect() as conn:
            assert conn.execute(select(Store.uninstalled_at).where(Store.id == sid)).scalar() is None

        replay = client.get("/shopify/callback", params=params)  # the same callback again
        assert replay.status_code == 401 and "state" in replay.text
        assert fake.grants == ["authorization_code"]  # refused before any exchange

        # deliveries of the subscriptions the app created are signed with its client secret
        body = dumps({"id": 1, "email": None})
        hook = client.post("/webhooks/shopify", content=body, headers=shopify_headers(body, CLIENT_SECRET, SHOP, "customers/update"))
        assert hook.status_code == 200
    for secret in [CLIENT_SECRET, key, *fake.issued]:
        assert secret not in caplog.text


def test_an_install_from_the_admin_with_the_default_scopes_subscribes_to_delivery_news(db_url, fake, key, now):
    """Shopify grants what the authorize page asked for (the default ``scopes``) and refuses the
    fulfilment topics without read_fulfillments: with the defaults, delivery updates get their webhooks."""
    settings = shop_settings(db_url, fake)
    with running_app(settings) as (client, runtime):
        runtime.clock = lambda: now
        started = begin(client, now)
        fake.granted_scopes = set(parse_qs(urlparse(started.headers["location"]).query)["scope"][0].split(","))
        done = client.get("/shopify/callback", params=callback_params(fake, state_from(started), now))
        assert done.status_code == 200 and f"{len(TOPICS)} created, 0 already present, 0 failed" in done.text
    assert {"FULFILLMENTS_CREATE", "FULFILLMENTS_UPDATE"} <= {s["topic"] for s in fake.subscriptions}


def test_an_authorization_code_install_reads_the_products_after_the_page(db_url, fake, key, now):
    settings = shop_settings(db_url, fake, journeys={"reorder": {}})
    fake.products = [product_node(9001, ["replenish:3w"]), product_node(9002, [], "45d")]
    with running_app(settings) as (client, runtime):
        runtime.clock = lambda: now
        done = client.get("/shopify/callback", params=callback_params(fake, state_from(begin(client, now)), now))
        assert done.status_code == 200 and "products: being read now" in done.text
        assert [q["first"] for q in fake.product_queries] == [100]  # with the token the callback stored
        runtime.processor.drain()
        sid = runtime.store_ids["shop-a"]
        with runtime.db.engine.connect() as conn:
            cycles = {(r.product_key, r.cycle_days) for r in conn.execute(select(ProductCycle).where(ProductCycle.store_id == sid))}
    assert cycles == {("p:9001", 21.0), ("p:9002", 45.0)}


def test_a_reinstall_from_the_admin_reads_the_orders_back_before_anything_decided_in_the_gap_reaches_the_store(db_url, fake, key):
    """Uninstalled for a day and a half; the staff cancelled the COD order meanwhile. Installed again from the
    admin: the page says the orders are being read back, and no "not confirmed" cancel goes to Shopify."""
    from connector.outbox.dispatcher import Dispatcher
    from connector.outbox.senders import DryRunSender
    from connector.outbox.writebacks import WriteBackDispatcher
    from tests.test_journeys import TEMPLATES, T0, Clock, cod_order_payload
    from tests.test_sync import gql_node

    cod = {"cod_confirmation": {"reminder_hours": [6], "answer_window_hours": 24, "no_answer_action": "cancel"}}
    settings = shop_settings(db_url, fake, templates=TEMPLATES, journeys=cod, policy={"quiet_hours": ""})
    clock = Clock(T0)
    with running_app(settings) as (client, runtime):
        runtime.clock = runtime.processor.clock = clock
        for topic, body in (("orders/create", dumps(cod_order_payload())), ("app/uninstalled", dumps({"myshopify_domain": SHOP}))):
            assert client.post("/webhooks/shopify", content=body, headers=shopify_headers(body, CLIENT_SECRET, SHOP, topic)).status_code == 200
            runtime.processor.drain()
            client.portal.call(Dispatcher(runtime.db, settings, runtime.store_ids, DryRunSender(), clock=clock).drain)  # the question
        fake.orders = [gql_node(1, oid=820982911946154508, created=T0, updated=T0 + timedelta(hours=20), cancelled=T0 + timedelta(hours=20),
                                cod=True, phone="+91 98765 43210")]
        for hours in (6, 24, 36):  # the reminder and the answer deadline come while the app is uninstalled
            clock.now = T0 + timedelta(hours=hours)
            runtime.processor.process_timers()
        done = client.get("/shopify/callback", params=callback_params(fake, state_from(begin(client, clock.now)), clock.now))
        assert done.status_code == 200 and "orders: reading back those changed while the app was uninstalled" in done.text
        for _ in range(2):
            runtime.processor.drain()
            runtime.processor.process_timers()
            client.portal.call(WriteBackDispatcher(runtime.db, settings, runtime.store_ids, runtime.writers, clock=clock).drain)
            clock.now += timedelta(hours=30)
    assert [name for name, _ in fake.writes] == []


def test_refresh_before_expiry_stores_the_rotated_refresh_token(db_url, fake, key, now):
    settings = shop_settings(db_url, fake)
    box = SecretBox([key])
    with running_app(settings) as (client, runtime):
        runtime.clock = lambda: now
        sid = runtime.store_ids["shop-a"]
        assert client.get("/shopify/callback", params=callback_params(fake, state_from(begin(client, now)), now)).status_code == 200
        first = get_credentials(runtime.db, box, sid)
        store = settings.store("shop-a")
        same = asyncio.run(ensure_shopify_token(runtime.db, store, now + timedelta(minutes=30), box=box))
        assert same == first[SHOPIFY_ACCESS_TOKEN].value and fake.grants == ["authorization_code"]
        near = now + timedelta(minutes=55)
        renewed = asyncio.run(ensure_shopify_token(runtime.db, store, near, box=box))
        second = get_credentials(runtime.db, box, sid)
        assert fake.grants == ["authorization_code", "refresh_token"]
        assert renewed == second[SHOPIFY_ACCESS_TOKEN].value != first[SHOPIFY_ACCESS_TOKEN].value
        assert second[SHOPIFY_REFRESH_TOKEN].value != first[SHOPIFY_REFRESH_TOKEN].value  # rotated, and stored
        assert first[SHOPIFY_REFRESH_TOKEN].value not in fake.refresh_tokens  # the old one is spent
        assert second[SHOPIFY_ACCESS_TOKEN].expires_at == near + timedelta(hours=1)
        third = asyncio.run(ensure_shopify_token(runtime.db, store, near + timedelta(minutes=55), box=box))
        assert third not in (renewed, first[SHOPIFY_ACCESS_TOKEN].value)  # the stored rotated token worked
        assert fake.grants == ["authorization_code", "refresh_token", "refresh_token"]
        assert fake.grants.count("client_credentials") == 0


def test_forged_hmac_is_refused_and_does_not_burn_the_state(db_url, fake, key, now):
    data = settings_dict(db_url)  # an agency: one app, two shops
    data["server"]["public_url"] = PUBLIC
    for i in (0, 1):
        data["stores"][i] |= {"client_id": CLIENT_ID, "client_secret": CLIENT_SECRET, "api_base_url": fake.base}
    settings = parse_settings(data, environ={})
    with running_app(settings) as (client, runtime):
        runtime.clock = lambda: now
        forged = signed({"shop": SHOP, "timestamp": str(int(now.timestamp()))}, secret="not-the-client-secret")
        refused = client.get("/shopify/install", params=forged, follow_redirects=False)
        assert refused.status_code == 401 and "invalid hmac" in refused.text and "location" not in refused.headers
        state = state_from(begin(client, now))
        good = callback_params(fake, state, now)
        tampered = dict(good, shop="shop-b.myshopify.com")  # same hmac, another shop
        assert client.get("/shopify/callback", params=tampered).status_code == 401
        wrong_key = signed({k: v for k, v in good.items() if k != "hmac"}, secret="not-the-client-secret")
        assert client.get("/shopify/callback", params=wrong_key).status_code == 401
        no_hmac = {k: v for k, v in good.items() if k != "hmac"}
        assert client.get("/shopify/callback", params=no_hmac).status_code == 401
        assert fake.grants == []
        assert client.get("/shopify/callback", params=good).status_code == 200  # the real one still works


def test_expired_timestamp_is_refused(db_url, fake, key, now):
    settings = shop_settings(db_url, fake)
    with running_app(settings) as (client, runtime):
        runtime.clock = lambda: now
        old = now - timedelta(hours=25)
        assert begin(client, old).status_code == 401
        state = state_from(begin(client, now))
        stale = client.get("/shopify/callback", params=callback_params(fake, state, now, timestamp=str(int(old.timestamp()))))
        assert stale.status_code == 401 and "timestamp" in stale.text
        assert fake.grants == []


def test_a_state_that_expired_or_belongs_to_another_shop_is_refused(db_url, fake, key, now):
    settings = shop_settings(db_url, fake)
    with running_app(settings) as (client, runtime):
        runtime.clock = lambda: now
        state = state_from(begin(client, now))
        runtime.clock = lambda: now + timedelta(minutes=16)  # the merchant took too long
        assert client.get("/shopify/callback", params=callback_params(fake, state, now + timedelta(minutes=16))).status_code == 401
        runtime.clock = lambda: now
        assert client.get("/shopify/callback", params=callback_params(fake, "made-up-state", now)).status_code == 401
        assert fake.grants == []


def test_non_myshopify_or_unknown_shops_are_refused(db_url, fake, key, now):
    settings = shop_settings(db_url, fake)
    with running_app(settings) as (client, runtime):
        runtime.clock = lambda: now
        ts = str(int(now.timestamp()))
        for shop, status in (("evil.example.com", 400), ("shop-a.myshopify.com.evil.com", 400),
                             ("https://shop-a.myshopify.com", 400), ("other.myshopify.com", 404)):
            answer = client.get("/shopify/install", params=signed({"shop": shop, "timestamp": ts}), follow_redirects=False)
            assert answer.status_code == status, (shop, answer.text)
            assert "location" not in answer.headers
        # shop-b is configured without client credentials: no install for it
        assert client.get("/shopify/install", params=signed({"shop": "shop-b.myshopify.com", "timestamp": ts}),
                          follow_redirects=False).status_code == 409
        duplicated = [("shop", SHOP), ("shop", "evil.myshopify.com"), ("timestamp", ts)]
        assert client.get("/shopify/install", params=duplicated, follow_redirects=False).status_code == 400


def test_callback_without_a_key_refuses_before_using_the_code(db_url, fake, monkeypatch, now):
    monkeypatch.delenv(SECRET_KEYS_ENV, raising=False)
    settings = shop_settings(db_url, fake)
    with running_app(settings) as (client, runtime):
        runtime.clock = lambda: now
        state = state_from(begin(client, now))
        answer = client.get("/shopify/callback", params=callback_params(fake, state, now))
        assert answer.status_code == 503 and SECRET_KEYS_ENV in answer.text
        assert fake.grants == []


# ---- the token requests against Shopify's own library ----------------------------------------------


def _recorder(answer: dict) -> tuple[list[httpx.Request], httpx.AsyncClient]:
    """An HTTP client whose every request is kept and answered with ``answer`` (the Shopify edge)."""
    seen: list[httpx.Request] = []

    def handle(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json=answer)

    return seen, httpx.AsyncClient(transport=httpx.MockTransport(handle))


def _fields(request: httpx.Request) -> dict[str, str]:
    if request.headers["content-type"].startswith("application/json"):
        return json.loads(request.content)
    return dict(parse_qsl(request.content.decode(), strict_parsing=True))


def test_token_requests_carry_what_shopifyapp_sends():
    """Our client credentials and refresh requests carry the same fields to the same endpoint as
    Shopify's ``shopifyapp`` builds for the same inputs (it sends JSON, we send the form encoding
    shopify.dev documents), and read the same token, scope and lifetime from the answer.

    Why we do not call it (see adapters/shopify/oauth.py): it posts to ``https://{shop}.myshopify.com``
    only, dates expiry by its own wall clock, skips a refresh its clock thinks is early, and has no
    authorization-code exchange at all."""
    import shopify_app

    config = {"client_id": CLIENT_ID, "client_secret": CLIENT_SECRET}
    cc_answer = {"access_token": "shpat_cc_0001", "scope": "read_orders,write_orders", "expires_in": 86399}
    refresh_answer = {"access_token": "shpat_exp_0002", "scope": "read_orders", "expires_in": 3600,
                      "refresh_token": "shprt_0003", "refresh_token_expires_in": 7776000}
    base = f"https://{SHOP}"

    async def both(answer: dict, ours, theirs):
        mine, http = _recorder(answer)
        async with http:
            now = datetime.now(timezone.utc)
            grant = await ours(http, now)
        lib, http = _recorder(answer)
        async with http:
            result = await theirs(http)
        return mine, grant, lib, result, now

    def stamped(value: str) -> datetime:
        return datetime.strptime(value, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=timezone.utc)

    mine, grant, lib, result, now = asyncio.run(both(
        cc_answer,
        lambda http, now: oauth.client_credentials_grant(http, base, CLIENT_ID, CLIENT_SECRET, now),
        lambda http: shopify_app.exchange_using_client_credentials_async("shop-a", config, http_client=http)))
    refreshed = asyncio.run(both(
        refresh_answer,
        lambda http, now: oauth.refresh_grant(http, base, CLIENT_ID, CLIENT_SECRET, "shprt_old", now),
        lambda http: shopify_app.refresh_access_token_async(
            {"shop": "shop-a", "refresh_token": "shprt_old", "expires": "", "refresh_token_expires": "", "access_mode": "offline"},
            config, http_client=http)))

    for ours, theirs in ((mine, lib), (refreshed[0], refreshed[2])):
        [a], [b] = ours, theirs
        assert (a.method, a.url.scheme, a.url.host, a.url.path) == (b.method, b.url.scheme, b.url.host, b.url.path) == (
            "POST", "https", SHOP, "/admin/oauth/access_token")
        assert _fields(a) == _fields(b)
        assert a.headers["accept"] == b.headers["accept"] == "application/json"
        assert a.headers["content-type"] == "application/x-www-form-urlencoded" and b.headers["content-type"] == "application/json"
    assert _fields(mine[0]) == {"grant_type": "client_credentials", "client_id": CLIENT_ID, "client_secret": CLIENT_SECRET}
    assert _fields(refreshed[0][0])["refresh_token"] == "shprt_old"

    assert result.ok and (grant.access_token, grant.scope) == (result.access_token.token, result.access_token.scope)
    assert abs(stamped(result.access_token.expires) - grant.expires_at) <= timedelta(seconds=2)
    _, rgrant, _, rresult, _ = refreshed
    assert rresult.ok and (rgrant.access_token, rgrant.refresh_token) == (rresult.access_token.token, rresult.access_token.refresh_token)
    assert abs(stamped(rresult.access_token.refresh_token_expires) - rgrant.refresh_token_expires_at) <= timedelta(seconds=2)

    # its refresh decides by its own clock: 5 minutes before expiry (inside our RENEW_BEFORE) it makes no request
    early, http = _recorder(refresh_answer)

    async def early_refresh():
        async with http:
            soon = (datetime.now(timezone.utc) + timedelta(minutes=5)).strftime("%Y-%m-%dT%H:%M:%SZ")
            return await shopify_app.refresh_access_token_async(
                {"shop": "shop-a", "refresh_token": "shprt_old", "expires": soon, "refresh_token_expires": "", "access_mode": "offline"},
                config, http_client=http)

    skipped = asyncio.run(early_refresh())
    assert early == [] and skipped.access_token is None and skipped.log.code == "token_still_valid"
