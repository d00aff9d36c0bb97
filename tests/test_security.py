"""The security suite: each attack is tried over HTTP against the real app, and refused.

Also covered elsewhere, and not repeated here: a replayed Shopify install callback, a forged
or expired one (tests/test_install_shopify.py), the dashboard's session and login limits
(tests/test_dashboard.py), forged compliance webhooks (tests/test_compliance.py), and random
or mutated payloads (tests/faults/test_fuzz.py).
"""

from __future__ import annotations

import json

import pytest
from sqlalchemy import func, select
from starlette.routing import Route

from connector.config import parse_settings
from connector.storage import models as m
from tests.conftest import FIXTURES, PHONE_ID_A, SECRETS, settings_dict
from tests.helpers import dumps, load_json, meta_signature, running_app, shopify_headers, woo_headers

SQLISH = "Robert'); DROP TABLE orders;-- \" OR 1=1 /*"
INJECTED_PHONE = "+91 98765 43210\r\nX-Injected: 1"


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


def test_a_webhook_for_one_store_signed_with_anothers_secret_is_refused(db_url):
    with running_app(_settings(db_url)) as (client, runtime):
        body = dumps(_order())
        # shop A's domain, shop B's secret; and the WooCommerce store signed with a Shopify secret
        r1 = client.post("/webhooks/shopify", content=body, headers=shopify_headers(body, SECRETS["shop_b"], "shop-a.myshopify.com", "orders/create"))
        r2 = client.post("/webhooks/woocommerce/woo", content=body, headers=woo_headers(body, SECRETS["shop_a"], "order.created"))
        r3 = client.post("/webhooks/whatsapp", content=body, headers={"X-Hub-Signature-256": meta_signature(body, SECRETS["shop_a"])})
        assert (r1.status_code, r2.status_code, r3.status_code) == (401, 401, 401)
        assert _inbox_count(runtime) == 0


def test_every_admin_route_needs_the_token_and_failed_attempts_are_limited(db_url, caplog):
    with running_app(_settings(db_url)) as (client, _runtime):
        routes = [r for r in client.app.routes if isinstance(r, Route) and r.path.startswith("/api/")]
        assert len(routes) >= 6
        for route in routes:
            path = route.path.replace("{store_key}", "shop-a").replace("{phone}", "+919876543210").replace(
                "{order_id}", "1").replace("{handoff_id:int}", "1").replace("{request_id:int}", "1").replace("{request_id}", "1")
            method = sorted(route.methods - {"HEAD"})[0]
            assert "{" not in path, path
            for headers in ({}, {"Authorization": "Bearer nope"}, {"Authorization": f"Basic {SECRETS['admin']}"},
                            {"Authorization": f"Bearer {SECRETS['admin']}x"}):
                r = client.request(method, path, headers=headers)
                assert r.status_code in (401, 429), (method, path, headers, r.status_code)
                assert SECRETS["admin"] not in r.text
    assert SECRETS["admin"] not in caplog.text
    with running_app(_settings(db_url)) as (client, _runtime):
        codes = [client.get("/api/stores/shop-a/inbox", headers={"Authorization": "Bearer wrong"}).status_code for _ in range(6)]
        assert codes == [401] * 5 + [429]
        locked = client.get("/api/stores/shop-a/inbox", headers={"Authorization": f"Bearer {SECRETS['admin']}"})
        assert locked.status_code == 429 and int(locked.headers["Retry-After"]) > 0  # guessing does not pay


def test_oversized_and_deeply_nested_bodies_are_refused_on_every_webhook(db_url):
    with running_app(_settings(db_url, max_body_bytes=65536)) as (client, runtime):
        big = b'{"id": 1, "note": "' + b"x" * 70000 + b'"}'
        deep = b'{"a":' * 5000 + b"1" + b"}" * 5000
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
