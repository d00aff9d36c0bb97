"""The security suite: each attack is tried over HTTP against the real app, and refused.

Also covered elsewhere, and not repeated here: a replayed Shopify install callback, a forged
or expired one (tests/test_install_shopify.py), the dashboard's session and login limits
(tests/test_dashboard.py), forged compliance webhooks (tests/test_compliance.py), and random
or mutated payloads (tests/faults/test_fuzz.py).
"""

from __future__ import annotations

import json
import logging
from urllib.parse import parse_qs, urlparse

import pytest
from sqlalchemy import func, select
from starlette.routing import Route
from starlette.testclient import TestClient

from connector.config import parse_settings
from connector.logs import LogfmtFormatter
from connector.secrets import SECRET_KEYS_ENV, SecretBox, generate_key, get_credentials
from connector.storage import models as m
from tests.conftest import FIXTURES, PHONE_ID_A, SECRETS, settings_dict
from tests.helpers import dumps, load_json, meta_signature, running_app, shopify_headers, woo_headers

SQLISH = "Robert'); DROP TABLE orders;-- \" OR 1=1 /*"
INJECTED_PHONE = "+91 98765 43210\r\nX-Injected: 1"
ADMIN = {"Authorization": f"Bearer {SECRETS['admin']}"}


@pytest.fixture
def key(monkeypatch) -> str:
    value = generate_key()
    monkeypatch.setenv(SECRET_KEYS_ENV, value)
    return value


def _settings(db_url: str, **server):
    raw = settings_dict(db_url)
    raw["server"].update(server)
    return parse_settings(raw, environ={})


def _inbox_count(runtime) -> int:
    with runtime.db.engine.connect() as conn:
        return conn.execute(select(func.count()).select_from(m.InboxEvent)).scalar_one()


def _order(**kw) -> dict:
    o = load_json(FIXTURES / "shopify" / "orders_create.sample.json")
    o.update(kw)
    return o


def _wa_text(sender: str, wamid: str, text: str, *, profile: str = "Asha") -> dict:
    return {"contacts": [{"profile": {"name": profile}, "wa_id": sender}],
            "messages": [{"from": sender, "id": wamid, "timestamp": "1795158000", "type": "text", "text": {"body": text}}]}


def _whatsapp(client, value: dict, phone_id: str = PHONE_ID_A):
    env = {"object": "whatsapp_business_account", "entry": [{"id": "1", "changes": [{"field": "messages", "value": {
        "messaging_product": "whatsapp", "metadata": {"display_phone_number": "1", "phone_number_id": phone_id}, **value}}]}]}
    raw = json.dumps(env).encode()
    return client.post("/webhooks/whatsapp", content=raw, headers={"X-Hub-Signature-256": meta_signature(raw, SECRETS["wa_app"])})


def test_a_webhook_for_one_store_signed_with_anothers_secret_is_refused(db_url):
    with running_app(_settings(db_url)) as (client, runtime):
        body = dumps(_order())
        # shop A's domain, shop B's secret; and the WooCommerce store signed with a Shopify secret
        r1 = client.post("/webhooks/shopify", content=body, headers=shopify_headers(body, SECRETS["shop_b"], "shop-a.myshopify.com", "orders/create"))
        r2 = client.post("/webhooks/woocommerce/woo", content=body, headers=woo_headers(body, SECRETS["shop_a"], "order.created"))
        r3 = client.post("/webhooks/whatsapp", content=body, headers={"X-Hub-Signature-256": meta_signature(body, SECRETS["shop_a"])})
        assert (r1.status_code, r2.status_code, r3.status_code) == (401, 401, 401)
        assert _inbox_count(runtime) == 0


def _admin_paths(client) -> list[tuple[str, str, str]]:
    """(method, template, a concrete path) for every admin API route."""
    out = []
    for route in client.app.routes:
        if isinstance(route, Route) and route.path.startswith("/api/"):
            path = route.path.replace("{store_key}", "shop-a").replace("{phone}", "+919876543210").replace(
                "{order_id}", "1").replace("{handoff_id:int}", "1").replace("{request_id:int}", "1")
            assert "{" not in path, path
            out.append((sorted(route.methods - {"HEAD"})[0], route.path, path))
    return out


def test_every_admin_route_needs_the_token_and_failed_attempts_are_limited(db_url, caplog):
    caplog.set_level(logging.INFO)
    with running_app(_settings(db_url)) as (client, _runtime):
        routes = _admin_paths(client)
        assert len(routes) >= 8
        for method, _template, path in routes:
            for headers in ({}, {"Authorization": "Bearer nope"}, {"Authorization": f"Basic {SECRETS['admin']}"},
                            {"Authorization": f"Bearer {SECRETS['admin']}x"}):
                r = client.request(method, path, headers=headers, json={"by": "Ravi"} if method == "POST" else None)
                assert r.status_code in (401, 429), (method, path, headers, r.status_code)
                assert SECRETS["admin"] not in r.text
    assert SECRETS["admin"] not in caplog.text
    # each failure is a warning naming the route's template and the client, never the token or the concrete path
    failed = [r for r in caplog.records if r.getMessage() == "admin request without a valid token"]
    assert len(failed) == 5 and all(r.levelno == logging.WARNING and r.client == "testclient" for r in failed)
    assert [r.route for r in failed] == [routes[0][1]] * 4 + [routes[1][1]]
    ours = "\n".join(LogfmtFormatter().format(r) for r in caplog.records if r.name.startswith("storeloop"))
    assert "+919876543210" not in ours and "route=/api/stores/{store_key}/contacts/{phone}" in ours
    locked_out = [r for r in caplog.records if r.getMessage() == "admin request refused: too many failed attempts"]
    assert len(locked_out) == 4 * len(routes) - 5

    with running_app(_settings(db_url)) as (client, _runtime):
        auth = {"Authorization": f"Bearer {SECRETS['admin']}"}
        codes = [client.get("/api/stores/shop-a/inbox", headers={"Authorization": "Bearer wrong"}).status_code for _ in range(6)]
        assert codes == [401] * 5 + [429]
        locked = client.get("/api/stores/shop-a/inbox", headers=auth)
        assert locked.status_code == 429 and int(locked.headers["Retry-After"]) > 0  # guessing does not pay
        # the limit is per client address: another client is neither locked out nor sharing the count
        other = TestClient(client.app, client=("203.0.113.50", 40000))
        assert other.get("/api/stores/shop-a/inbox", headers=auth).status_code == 200
        assert [other.get("/api/stores/shop-a/inbox", headers={"Authorization": "Bearer wrong"}).status_code
                for _ in range(6)] == [401] * 5 + [429]
        assert TestClient(client.app, client=("203.0.113.51", 40000)).get("/api/stores/shop-a/inbox", headers=auth).status_code == 200


def _open_handoff(client, runtime) -> int:
    """A customer's order and then a free-text WhatsApp reply: a hand-off for a person."""
    body = dumps(_order(id=5151, phone="+91 98765 43299", financial_status="paid", test=False))
    assert client.post("/webhooks/shopify", content=body,
                       headers=shopify_headers(body, SECRETS["shop_a"], "shop-a.myshopify.com", "orders/create")).status_code == 200
    _whatsapp(client, _wa_text("919876543299", "wamid.handoff", "Can someone call me about my parcel?"))
    runtime.processor.drain()
    [opened] = client.get("/api/stores/shop-a/handoffs?status=open", headers=ADMIN).json()["items"]
    return opened["id"]


def test_oversized_and_deeply_nested_bodies_are_refused_on_every_route_that_takes_one(db_url, key):
    cap = 65536
    settings = _settings(db_url, max_body_bytes=cap, public_url="https://connector.example")
    big = b'{"id": 1, "note": "' + b"x" * (cap + 5000) + b'"}'
    deep = b'{"a":' * 2000 + b"1" + b"}" * 2000  # 12 KB, under every cap; orjson stops at 1,024 levels
    deep_list = b"[" * 100_000 + b"]" * 100_000  # 200 KB: over the cap too, refused before it is parsed

    def chunked(body: bytes):  # no Content-Length: the cap must hold while the body streams in
        for i in range(0, len(body), 4096):
            yield body[i:i + 4096]

    with running_app(settings) as (client, runtime):
        for body, expected in ((big, 413), (deep, 400)):
            r1 = client.post("/webhooks/shopify", content=body, headers=shopify_headers(body, SECRETS["shop_a"], "shop-a.myshopify.com", "orders/create"))
            r2 = client.post("/webhooks/woocommerce/woo", content=body, headers=woo_headers(body, SECRETS["woo"], "order.created"))
            r3 = client.post("/webhooks/whatsapp", content=body, headers={"X-Hub-Signature-256": meta_signature(body, SECRETS["wa_app"])})
            assert (r1.status_code, r2.status_code, r3.status_code) == (expected, expected, expected)
        # a body that only claims to be small is cut off at the cap as it streams in
        r = client.post("/webhooks/shopify", content=big, headers={**shopify_headers(big, SECRETS["shop_a"], "shop-a.myshopify.com", "orders/create"),
                                                                   "Content-Length": "10"})
        assert r.status_code in (400, 413)
        assert _inbox_count(runtime) == 0

        # the admin API (with a valid token) and the wc-auth callback read under a cap and parse with limits
        handoff = _open_handoff(client, runtime)
        inbox_rows = _inbox_count(runtime)
        close = f"/api/stores/shop-a/handoffs/{handoff}/close"
        started = client.get("/woocommerce/connect", params={"store": "woo"}, headers=ADMIN, follow_redirects=False)
        callback = urlparse(parse_qs(urlparse(started.headers["location"]).query)["callback_url"][0]).path
        for path, headers in ((close, ADMIN), (callback, {})):
            for body, status, reason in ((big, 413, "larger than"), (chunked(big), 413, "larger than"), (deep_list, 413, "larger than"),
                                         (deep, 400, "JSON"), (b'{"by": "Ravi"', 400, "JSON")):
                r = client.post(path, content=body, headers={**headers, "Content-Type": "application/json"})
                assert r.status_code == status and reason in r.json()["error"], (path, status, r.status_code, r.text[:200])
        for body in ({"by": "R" * 121}, {"by": ["Ravi"]}, {"by": "Ravi", "resolution": {"a": 1}}, ["Ravi"]):
            r = client.post(close, json=body, headers=ADMIN)  # (a 121-character name was a database error on PostgreSQL)
            assert r.status_code == 400 and r.json()["error"], body
        # nothing was closed, stored or used up: the same hand-off and callback still work
        assert client.post(close, json={"by": "Ravi", "resolution": "called back"}, headers=ADMIN).json() == {"closed": True}
        assert client.post(callback, json={"user_id": "woo", "key_permissions": "read"}).status_code == 400  # the nonce was live
        assert _inbox_count(runtime) == inbox_rows
        assert get_credentials(runtime.db, SecretBox([key]), runtime.store_ids["woo"]) == {}


def test_header_injection_in_a_phone_field_goes_nowhere(db_url):
    with running_app(_settings(db_url)) as (client, runtime):
        body = dumps(_order(phone=INJECTED_PHONE, customer={"id": 1, "phone": INJECTED_PHONE, "first_name": "Asha"}))
        r = client.post("/webhooks/shopify", content=body, headers=shopify_headers(body, SECRETS["shop_a"], "shop-a.myshopify.com", "orders/create"))
        assert r.status_code == 200 and "x-injected" not in {k.lower() for k in r.headers}
        runtime.processor.drain()
        with runtime.db.engine.connect() as conn:
            phones = conn.execute(select(m.Contact.phone_e164)).scalars().all()
            status = conn.execute(select(m.InboxEvent.status)).scalar_one()
        # the phone parser keeps only the number: what is stored and used for sending is clean E.164
        assert status in ("done", "failed") and all(p is None or p.lstrip("+").isdigit() for p in phones)
        auth = {"Authorization": f"Bearer {SECRETS['admin']}"}
        looked_up = client.get("/api/stores/shop-a/contacts/+91 98765 43210%0D%0AX-Injected: 1", headers=auth)
        assert looked_up.status_code in (200, 400, 404) and "x-injected" not in {k.lower() for k in looked_up.headers}
        assert "\r\nX-Injected" not in looked_up.headers.get("content-type", "")


def test_sql_in_every_free_text_field_is_stored_as_text(db_url):
    with running_app(_settings(db_url)) as (client, runtime):
        o = _order(id=4242, name=SQLISH[:60], note=SQLISH, tags=SQLISH, email=f"{SQLISH}@example.com", phone="+91 98765 43210",
                   financial_status="paid", test=False)
        o["customer"] = {**o["customer"], "first_name": SQLISH, "last_name": SQLISH, "phone": "+91 98765 43210"}
        for line in o["line_items"]:
            line["title"] = SQLISH
            line["sku"] = SQLISH[:100]
        body = dumps(o)
        assert client.post("/webhooks/shopify", content=body,
                           headers=shopify_headers(body, SECRETS["shop_a"], "shop-a.myshopify.com", "orders/create")).status_code == 200
        text = {"object": "whatsapp_business_account", "entry": [{"id": "1", "changes": [{"field": "messages", "value": {
            "messaging_product": "whatsapp", "metadata": {"display_phone_number": "1", "phone_number_id": PHONE_ID_A},
            "contacts": [{"profile": {"name": SQLISH}, "wa_id": "919876543210"}],
            "messages": [{"from": "919876543210", "id": "wamid.sql", "timestamp": "1795158000", "type": "text", "text": {"body": SQLISH}}]}}]}]}
        raw = json.dumps(text).encode()
        assert client.post("/webhooks/whatsapp", content=raw, headers={"X-Hub-Signature-256": meta_signature(raw, SECRETS["wa_app"])}).status_code == 200
        runtime.processor.drain()
        view = client.get("/api/stores/shop-a/contacts/+919876543210", headers={"Authorization": f"Bearer {SECRETS['admin']}"}).json()
        with runtime.db.engine.connect() as conn:
            orders = conn.execute(select(func.count()).select_from(m.Order)).scalar_one()
            titles = conn.execute(select(m.OrderLine.title)).scalars().all()
            bodies = conn.execute(select(m.Message.body).where(m.Message.direction == "in")).scalars().all()
    assert orders == 1 and set(titles) == {SQLISH} and bodies == [SQLISH]
    assert view["contact"]["name"].startswith(SQLISH)


@pytest.mark.parametrize("path", ["/webhooks/shopify", "/webhooks/woocommerce/woo", "/webhooks/whatsapp"])
def test_no_signature_at_all_is_401_and_nothing_is_stored(db_url, path):
    with running_app(_settings(db_url)) as (client, runtime):
        r = client.post(path, content=dumps(_order()), headers={"Content-Type": "application/json", "X-Shopify-Topic": "orders/create",
                                                               "X-Shopify-Shop-Domain": "shop-a.myshopify.com", "X-WC-Webhook-Topic": "order.created"})
        assert r.status_code == 401 and _inbox_count(runtime) == 0


def test_app_uninstalled_drops_the_shops_stored_tokens(db_url):
    from datetime import datetime, timezone

    with running_app(_settings(db_url)) as (client, runtime):
        sid, other = runtime.store_ids["shop-a"], runtime.store_ids["shop-b"]
        with runtime.db.write_lock(), runtime.db.engine.begin() as conn:
            for store_id in (sid, other):
                conn.execute(m.StoreCredential.__table__.insert().values(
                    store_id=store_id, kind="shopify_access_token", value="gAAAA-encrypted", updated_at=datetime.now(timezone.utc)))
        body = (FIXTURES / "shopify" / "app_uninstalled.sample.json").read_bytes()
        assert client.post("/webhooks/shopify", content=body,
                           headers=shopify_headers(body, SECRETS["shop_a"], "shop-a.myshopify.com", "app/uninstalled")).status_code == 200
        runtime.processor.drain()
        with runtime.db.engine.connect() as conn:
            left = conn.execute(select(m.StoreCredential.store_id)).scalars().all()
            uninstalled = conn.execute(select(m.Store.uninstalled_at).where(m.Store.id == sid)).scalar()
    assert left == [other] and uninstalled is not None  # only that shop's, and only after it said so
