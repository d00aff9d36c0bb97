"""The security suite: each attack is tried over HTTP against the real app, and refused.

Also covered elsewhere, and not repeated here: a replayed Shopify install callback, a forged
or expired one (tests/test_install_shopify.py), the dashboard's session and login limits
(tests/test_dashboard.py), forged compliance webhooks (tests/test_compliance.py), and random
or mutated payloads (tests/faults/test_fuzz.py).
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
from urllib.parse import parse_qs, quote, urlencode, urlparse

import pytest
from markupsafe import escape
from sqlalchemy import func, inspect, select
from starlette.routing import Route
from starlette.testclient import TestClient

from connector.config import parse_settings
from connector.logs import LogfmtFormatter
from connector.outbox.dispatcher import Dispatcher
from connector.outbox.senders import DryRunSender
from connector.secrets import SECRET_KEYS_ENV, SecretBox, generate_key, get_credentials
from connector.storage import models as m
from connector.storage.inbox import with_body
from connector.web.webhooks import WHATSAPP_LARGEST_POST
from tests.conftest import FIXTURES, PHONE_ID_A, SECRETS, settings_dict
from tests.helpers import dumps, load_json, meta_signature, running_app, shopify_headers, woo_headers

SQLISH = "Robert'); DROP TABLE orders;-- \" OR 1=1 /*"
ADMIN = {"Authorization": f"Bearer {SECRETS['admin']}"}
CART_TOKEN = "cart-hook-7Qm2xWv9Lr4Tn8Kp3Zs6"
WOO_ORDER = {"id": 4242, "status": "processing", "currency": "USD", "total": "10.00", "payment_method": "bacs",
             "date_created_gmt": "2026-11-20T10:59:00", "date_modified_gmt": "2026-11-20T11:00:00", "date_paid_gmt": "2026-11-20T11:00:00",
             "customer_id": 0, "customer_note": "",
             "billing": {"first_name": "Ada", "last_name": "Lovelace", "address_1": "969 Market", "city": "San Francisco", "state": "CA",
                         "postcode": "94103", "country": "US", "email": "ada@example.com", "phone": "(415) 555-0100"},
             "shipping": {"first_name": "Ada", "last_name": "Lovelace", "address_1": "969 Market", "city": "San Francisco", "state": "CA",
                          "postcode": "94103", "country": "US"},
             "line_items": [{"id": 1, "name": "Woo Single #1", "product_id": 93, "quantity": 1, "price": "10.00"}]}


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


def _paid_order(**kw) -> dict:
    """A prepaid order the order_confirmation journey confirms (when its customer has a phone)."""
    return _order(financial_status="paid", test=False, payment_gateway_names=["razorpay"], cancelled_at=None, cancel_reason=None, **kw)


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
                "{order_id}", "1").replace("{handoff_id}", "1").replace("{request_id}", "1")
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

    # WhatsApp's route never caps below Meta's largest POST (~3 MB): over that it is refused too
    wa_big = b'{"id": 1, "note": "' + b"x" * (WHATSAPP_LARGEST_POST + 5000) + b'"}'
    with running_app(settings) as (client, runtime):
        for body, wa_body, expected in ((big, wa_big, 413), (deep, deep, 400)):
            r1 = client.post("/webhooks/shopify", content=body, headers=shopify_headers(body, SECRETS["shop_a"], "shop-a.myshopify.com", "orders/create"))
            r2 = client.post("/webhooks/woocommerce/woo", content=body, headers=woo_headers(body, SECRETS["woo"], "order.created"))
            r3 = client.post("/webhooks/whatsapp", content=wa_body, headers={"X-Hub-Signature-256": meta_signature(wa_body, SECRETS["wa_app"])})
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
    """A phone carrying CRLF and header text, from a Shopify order, a WooCommerce order and a
    WhatsApp sender: no contact gets the number hidden in it, nothing is sent to anyone, and
    what the admin API answers carries the text only as JSON data."""
    raw = settings_dict(db_url)
    template = [{"step": "order_confirmation.sent", "name": "order_ok_v1", "category": "utility", "body_text": "Order {{1}} is confirmed",
                 "body": ["order.name"]}]
    for store in raw["stores"]:
        store.update(templates=template, journeys={"order_confirmation": {}}, policy={"quiet_hours": ""})
    settings = parse_settings(raw, environ={})
    shopify_phone = "+91 98765 43210\r\nX-Injected: 1"
    woo_phone = "+1 415 555 2671\r\nBcc: attacker@example.com"
    wa_from = "919812345678\r\nX-Injected: 1"
    hidden = {"+919876543210", "+14155552671", "+919812345678"}  # the numbers inside the injected text
    with running_app(settings) as (client, runtime):
        shop = _paid_order(id=6001, phone=shopify_phone, customer={**_order()["customer"], "id": 6001, "phone": shopify_phone})
        for address in ("billing_address", "shipping_address"):
            shop[address] = {**shop[address], "phone": shopify_phone}
        woo = {**WOO_ORDER, "id": 6002, "billing": {**WOO_ORDER["billing"], "phone": woo_phone},
               "shipping": {**WOO_ORDER["shipping"], "phone": woo_phone}}
        # the control: the same order with a clean phone is confirmed, so "nothing sent" means something
        clean = _paid_order(id=6003, phone="+91 98111 22233", customer={"id": 6003, "phone": "+91 98111 22233"})
        for body, headers in ((dumps(shop), None), (dumps(woo), "woo"), (dumps(clean), None)):
            sent = client.post(*(("/webhooks/woocommerce/woo",) if headers else ("/webhooks/shopify",)), content=body,
                               headers=woo_headers(body, SECRETS["woo"], "order.created") if headers else
                               shopify_headers(body, SECRETS["shop_a"], "shop-a.myshopify.com", "orders/create"))
            assert sent.status_code == 200 and _no_injected_header(sent)
        wa = _wa_text(wa_from, "wamid.inj", "hello")
        wa["contacts"][0]["wa_id"] = wa_from
        assert _no_injected_header(_whatsapp(client, wa))
        runtime.processor.drain()
        sender = DryRunSender()
        asyncio.run(Dispatcher(runtime.db, settings, runtime.store_ids, sender).drain())

        with runtime.db.engine.connect() as conn:
            rows = conn.execute(select(m.InboxEvent.topic, m.InboxEvent.status, m.InboxEvent.last_error)).all()
            contacts = conn.execute(select(m.Contact)).all()
        for topic, status, error in rows:  # each handled: done (stored without a phone) or failed with a reason
            assert status == "done" or (status == "failed" and error), (topic, status, error)
        e164s = {c.phone_e164 for c in contacts} - {None}
        assert e164s == {"+919811122233"} and not hidden & e164s
        assert all(re.fullmatch(r"\+\d{8,15}", p) for p in e164s)
        injected = [c for c in contacts if c.phone_raw and "\n" in c.phone_raw]
        assert injected and all(c.phone_e164 is None and not c.reachable for c in injected)
        assert [m_.to for _, m_ in sender.sent] == ["+919811122233"]  # only the control was confirmed

        # the admin API returns the stored text as JSON data: no header, no line break in any header
        looked_up = client.get("/api/stores/shop-a/contacts/" + quote(shopify_phone, safe=""), headers=ADMIN)
        assert looked_up.status_code == 200 and _no_injected_header(looked_up)
        contact = looked_up.json()["contact"]
        assert (contact["phone"], contact["phone_raw"], contact["reachable"]) == (None, shopify_phone, False)
        assert "\r\nX-Injected" not in looked_up.text  # escaped inside the JSON string
        order_view = client.get("/api/stores/shop-a/orders/6001", headers=ADMIN)
        assert order_view.status_code == 200 and order_view.json()["order"]["contact_phone"] is None and _no_injected_header(order_view)


def _no_injected_header(response) -> bool:
    names = {k.lower() for k in response.headers}
    values = " ".join(response.headers.values())
    return not ({"x-injected", "bcc"} & names) and "\r" not in values and "\n" not in values


def test_sql_in_every_free_text_field_is_stored_as_text(db_url):
    raw = settings_dict(db_url)
    raw["stores"][2].update(cart_webhook_token=CART_TOKEN, default_country="IN")
    settings = parse_settings(raw, environ={})
    sql_phone = "x'); DROP TABLE contacts;--"  # a phone field that is no phone at all: kept as its text
    with running_app(settings) as (client, runtime):
        a, b, woo_id = runtime.store_ids["shop-a"], runtime.store_ids["shop-b"], runtime.store_ids["woo"]
        # another store's customer, whose rows must come through untouched
        other = dumps(_order(id=9001, phone="+1 212 555 0147", financial_status="paid", test=False))
        assert client.post("/webhooks/shopify", content=other,
                           headers=shopify_headers(other, SECRETS["shop_b"], "shop-b.myshopify.com", "orders/create")).status_code == 200
        runtime.processor.drain()
        tables_before = set(inspect(runtime.db.engine).get_table_names())
        b_before = _row_counts(runtime.db, b)

        # Shopify: an order (names, email, note, tags, line titles and SKUs), a checkout, an order with a SQL "phone"
        o = _order(id=4242, name=SQLISH[:60], note=SQLISH, tags=SQLISH, email=f"{SQLISH}@example.com", phone="+91 98765 43210",
                   financial_status="paid", test=False)
        o["customer"] = {**o["customer"], "first_name": SQLISH, "last_name": SQLISH, "phone": "+91 98765 43210"}
        for line in o["line_items"]:
            line["title"] = SQLISH
            line["sku"] = SQLISH[:100]
        c = load_json(FIXTURES / "shopify" / "checkouts_create.sample.json")
        c.update(token="sqltok", phone="+91 98765 43211", email=f"{SQLISH}@example.com", note=SQLISH, completed_at=None)
        c["customer"] = {**c["customer"], "id": 4243, "first_name": SQLISH, "last_name": SQLISH, "phone": "+91 98765 43211"}
        for line in c["line_items"]:
            line["title"] = SQLISH
        p = _order(id=4244, phone=sql_phone, financial_status="paid", test=False)
        p["customer"] = {"id": 4244, "first_name": SQLISH, "last_name": SQLISH, "phone": sql_phone}
        for address in ("billing_address", "shipping_address"):
            p[address] = {**p[address], "phone": sql_phone}
        for payload, topic in ((o, "orders/create"), (c, "checkouts/create"), (p, "orders/create")):
            body = dumps(payload)
            assert client.post("/webhooks/shopify", content=body,
                               headers=shopify_headers(body, SECRETS["shop_a"], "shop-a.myshopify.com", topic)).status_code == 200
        # WooCommerce: an order (billing and shipping names and address, the customer's note, a line) and a plugin cart
        w = {**WOO_ORDER, "id": 4245, "customer_note": SQLISH,
             "billing": {**WOO_ORDER["billing"], "first_name": SQLISH, "last_name": SQLISH, "address_1": SQLISH, "city": SQLISH,
                         "company": SQLISH, "email": f"{SQLISH}@example.com"},
             "shipping": {**WOO_ORDER["shipping"], "first_name": SQLISH, "last_name": SQLISH, "address_1": SQLISH},
             "line_items": [{"id": 1, "name": SQLISH, "sku": SQLISH[:100], "product_id": 5, "quantity": 1, "price": "10.00"}]}
        body = dumps(w)
        assert client.post("/webhooks/woocommerce/woo", content=body, headers=woo_headers(body, SECRETS["woo"], "order.created")).status_code == 200
        form = {"first_name": SQLISH, "last_name": SQLISH, "phone_number": "+91 98765 43212", "email": f"{SQLISH}@example.com",
                "billing_address": SQLISH, "shipping_address": SQLISH, "product_names": SQLISH, "coupon_code": SQLISH,
                "checkout_url": "https://bloom.example/checkout/?wcf_ac_token=c3FsLXNlc3Npb24", "order_status": "abandoned",
                "cart_total": "10.00"}
        assert client.post(f"/webhooks/woocommerce/woo/carts/{CART_TOKEN}", content=urlencode(form),
                           headers={"Content-Type": "application/x-www-form-urlencoded"}).status_code == 200
        # WhatsApp: a text and a profile name (the text opens a hand-off for a person)
        assert _whatsapp(client, _wa_text("919876543210", "wamid.sql", SQLISH, profile=SQLISH)).status_code == 200
        runtime.processor.drain()

        # the admin closes the hand-off with SQL-ish text, and searches for SQL-ish customers
        [handoff] = client.get("/api/stores/shop-a/handoffs?status=open", headers=ADMIN).json()["items"]
        closed = client.post(f"/api/stores/shop-a/handoffs/{handoff['id']}/close", json={"by": SQLISH, "resolution": SQLISH}, headers=ADMIN)
        assert closed.json() == {"closed": True}
        found = client.get("/api/stores/shop-a/contacts/" + quote(sql_phone, safe=""), headers=ADMIN)
        assert found.status_code == 200 and found.json()["contact"]["phone_raw"] == sql_phone  # that exact row, by its text
        assert found.json()["contact"]["name"] == f"{SQLISH} {SQLISH}"
        missing = client.get("/api/stores/shop-a/contacts/" + quote("1' OR '1'='1", safe=""), headers=ADMIN)
        assert missing.status_code == 404 and missing.json() == {"error": "no contact with that phone in this store"}
        assert client.post("/dashboard/login", data={"token": SECRETS["admin"]}, follow_redirects=False).status_code == 303
        for search in (sql_phone, "1' OR '1'='1", SQLISH):
            page = client.get("/dashboard/shop-a/customer", params={"phone": search})
            assert page.status_code == (200 if search == sql_phone else 404)
            assert str(escape(search)) in page.text and search not in page.text  # echoed as text, escaped
        assert "+91 98765 43210" not in client.get("/dashboard/shop-a/customer", params={"phone": "1' OR '1'='1"}).text

        with runtime.db.engine.connect() as conn:
            statuses = conn.execute(select(m.InboxEvent.store_id, m.InboxEvent.topic, m.InboxEvent.status)).all()
            orders = conn.execute(select(m.Order.external_id, m.Order.name, m.Order.tags).where(m.Order.store_id == a)).all()
            titles = conn.execute(select(m.OrderLine.title, m.OrderLine.sku).where(m.OrderLine.store_id.in_((a, woo_id)))).all()
            names = conn.execute(select(m.Contact.first_name, m.Contact.last_name, m.Contact.email)
                                 .where(m.Contact.store_id.in_((a, woo_id)), m.Contact.phone_key != "+919876543299")).all()
            checkouts = conn.execute(select(m.Checkout.line_items).where(m.Checkout.store_id.in_((a, woo_id)))).scalars().all()
            bodies = conn.execute(select(m.Message.body).where(m.Message.direction == "in")).scalars().all()
            kept = conn.execute(select(m.Handoff.closed_by, m.Handoff.resolution, m.Handoff.reason)).one()
            woo_raw = conn.execute(with_body().where(m.InboxEvent.topic == "order.created")).one().raw_body
            cart_raw = conn.execute(with_body().where(m.InboxEvent.topic == "cart.abandoned")).one().raw_body
        assert {s for *_, s in statuses} == {"done"}, statuses
        assert sorted(orders) == [("4242", SQLISH, [SQLISH]), ("4244", "#9999", ["tag1", "tag2"])]
        sql_lines = [t for t in titles if SQLISH in t]
        assert sql_lines == [(SQLISH, SQLISH)] * (len(o["line_items"]) + 1)  # the Shopify order's lines and the WooCommerce one
        assert [n[:2] for n in names] == [(SQLISH, SQLISH)] * 5  # order, checkout, SQL "phone", WooCommerce order, plugin cart
        assert sorted(n[2] for n in names) == sorted([f"{SQLISH}@example.com"] * 4 + [_order()["email"]])
        assert sorted(len(lines) for lines in checkouts) == [1, len(c["line_items"])]  # the plugin's cart and Shopify's
        assert {li["title"] for lines in checkouts for li in lines} == {SQLISH}
        assert bodies == [SQLISH] and kept == (SQLISH, SQLISH, f"customer wrote: {SQLISH}")
        woo_doc = json.loads(woo_raw)
        assert (woo_doc["customer_note"], woo_doc["billing"]["address_1"], woo_doc["billing"]["city"], woo_doc["shipping"]["address_1"]) == (SQLISH,) * 4
        assert parse_qs(json.loads(cart_raw)["form"])["billing_address"] == [SQLISH]
        # nothing was altered or dropped: every table is there, and the other store has exactly its rows
        assert set(inspect(runtime.db.engine).get_table_names()) == tables_before >= {t.name for t in m.Base.metadata.sorted_tables}
        assert _row_counts(runtime.db, b) == b_before and b_before["orders"] == 1 and b_before["contacts"] == 1


def _row_counts(db, store_id: int) -> dict[str, int]:
    with db.engine.connect() as conn:
        return {t.name: conn.execute(select(func.count()).select_from(t).where(t.c.store_id == store_id)).scalar_one()
                for t in m.Base.metadata.sorted_tables if "store_id" in t.c}


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
