"""Shopify webhooks over HTTP into a real database (SQLite and PostgreSQL)."""

from __future__ import annotations

import json

import pytest
from sqlalchemy import func, select

from connector.storage import models as m
from connector.storage.inbox import with_body
from tests.conftest import FIXTURES, SECRETS, make_settings
from tests.helpers import dumps, load_json, running_app, shopify_headers

SHOP_A = "shop-a.myshopify.com"
SHOP_B = "shop-b.myshopify.com"
ADMIN = {"Authorization": f"Bearer {SECRETS['admin']}"}

TOPIC_OF_FIXTURE = {
    "orders_create": "orders/create",
    "checkouts_create": "checkouts/create",
    "fulfillments_update": "fulfillments/update",
    "app_uninstalled": "app/uninstalled",
    "customers_data_request": "customers/data_request",
    "customers_redact": "customers/redact",
    "shop_redact": "shop/redact",
    "customers_marketing_consent_update": "customers_marketing_consent/update",
    "customers_whats_app_marketing_consent_update": "customers_whats_app_marketing_consent/update",
}


def post(client, payload, topic, *, shop=SHOP_A, secret=SECRETS["shop_a"], raw: bytes | None = None, **kw):
    body = raw if raw is not None else dumps(payload)
    return client.post("/webhooks/shopify", content=body, headers=shopify_headers(body, secret, shop, topic, **kw))


def inbox_rows(runtime) -> list:
    with runtime.db.engine.connect() as conn:
        return list(conn.execute(with_body().order_by(m.InboxEvent.id)))


def indian_order(updated_at: str = "2026-11-20T10:00:00+05:30", **changes) -> dict:
    order = load_json(FIXTURES / "shopify" / "orders_create.sample.json")
    order.update(
        financial_status="pending", payment_gateway_names=["Cash on Delivery (COD)"], gateway="Cash on Delivery (COD)",
        processing_method="manual", cancelled_at=None, cancel_reason=None, test=False,
        updated_at=updated_at, created_at="2026-11-20T10:00:00+05:30", phone="098765 43210",
    )
    order["shipping_address"]["country_code"] = "IN"
    order.update(changes)
    return order


def fixture_bytes(name: str) -> bytes:
    """The exact bytes, as Shopify would sign them: the reference's ``{shop}`` placeholder is the shop's own name."""
    return (FIXTURES / "shopify" / f"{name}.sample.json").read_bytes().replace(b"{shop}.myshopify.com", SHOP_A.encode())


def test_every_shopify_fixture_is_verified_stored_and_normalised(db_url):
    erasures = {"customers_redact": "customers/redact", "shop_redact": "shop/redact"}  # last: they erase what came before
    with running_app(make_settings(db_url)) as (client, runtime):
        for name, topic in TOPIC_OF_FIXTURE.items():
            if name in erasures:
                continue
            raw = fixture_bytes(name)
            assert post(client, None, topic, raw=raw).status_code == 200, name
        runtime.processor.drain()
        rows = {r.topic: r for r in inbox_rows(runtime)}
        after = {}
        for name, topic in erasures.items():
            raw = fixture_bytes(name)
            assert post(client, None, topic, raw=raw).status_code == 200, name
            runtime.processor.drain()
            after[topic] = {r.topic: r for r in inbox_rows(runtime)}
    assert set(rows) | set(erasures.values()) == set(TOPIC_OF_FIXTURE.values())
    assert rows["orders/create"].status == "done"
    assert rows["orders/create"].event[0]["type"] == "order.placed"
    assert rows["orders/create"].subject == "order:820982911946154508"
    assert rows["checkouts/create"].event[0]["checkout"]["token"]
    assert rows["fulfillments/update"].status == "done"
    assert rows["app/uninstalled"].status == "done"
    # a privacy request is answered; its row keeps what was done, not the customer it names
    request = rows["customers/data_request"]
    assert (request.status, request.raw_body, request.event[0]["type"]) == ("done", None, "compliance.requested")
    assert all(r.raw_body for t, r in rows.items() if t != "customers/data_request")
    # the fixtures' order belongs to john@example.com, the customer customers/redact names
    redacted = after["customers/redact"]
    assert redacted["customers/redact"].status == "done" and redacted["orders/create"].raw_body is None
    assert redacted["orders/create"].event is None and redacted["fulfillments/update"].raw_body is not None  # another customer's
    assert after["shop/redact"]["shop/redact"].status == "done" and not any(r.raw_body for r in after["shop/redact"].values())


def test_order_state_contact_and_admin_views(db_url):
    with running_app(make_settings(db_url)) as (client, runtime):
        assert post(client, indian_order(), "orders/create").status_code == 200
        runtime.processor.drain()
        contact = client.get("/api/stores/shop-a/contacts/+919876543210", headers=ADMIN)
        order = client.get("/api/stores/shop-a/orders/820982911946154508", headers=ADMIN)
        # the same phone and order looked up under the other store find nothing
        other_contact = client.get("/api/stores/shop-b/contacts/+919876543210", headers=ADMIN)
        other_order = client.get("/api/stores/shop-b/orders/820982911946154508", headers=ADMIN)
        no_token = client.get("/api/stores/shop-a/orders/820982911946154508")
        bad_token = client.get("/api/stores/shop-a/orders/820982911946154508", headers={"Authorization": "Bearer nope"})
    assert contact.status_code == 200, contact.text
    body = contact.json()
    assert body["contact"]["phone"] == "+919876543210"
    assert body["consent"]["utility"] == {"state": "granted", "source": "order_with_phone", "at": body["consent"]["utility"]["at"]}
    assert body["consent"]["marketing"]["state"] == "unknown"
    assert body["orders"][0]["name"] == "#9999"
    assert [t["topic"] for t in body["timeline"] if t["kind"] == "event"] == ["orders/create"]
    assert order.status_code == 200
    o = order.json()
    assert o["order"]["is_cod"] is True and o["order"]["payment_state"] == "pending"
    assert o["order"]["total"] == "414.95" and o["order"]["contact_phone"] == "+919876543210"
    assert len(o["line_items"]) == 5
    assert [e["types"] for e in o["events"]] == [["order.placed"]]
    assert other_contact.status_code == 404 and other_order.status_code == 404
    assert no_token.status_code == 401 and bad_token.status_code == 401


def test_signature_for_one_store_cannot_write_to_another(db_url):
    with running_app(make_settings(db_url)) as (client, runtime):
        forged = post(client, indian_order(), "orders/create", shop=SHOP_B, secret=SECRETS["shop_a"])
        unknown = post(client, indian_order(), "orders/create", shop="evil.myshopify.com", secret=SECRETS["shop_a"])
        rows = inbox_rows(runtime)
    assert forged.status_code == 401 and unknown.status_code == 401
    assert rows == []


def test_missing_or_wrong_signature_is_401_and_nothing_is_stored(db_url):
    body = dumps(indian_order())
    with running_app(make_settings(db_url)) as (client, runtime):
        headers = shopify_headers(body, SECRETS["shop_a"], SHOP_A, "orders/create")
        missing = client.post("/webhooks/shopify", content=body, headers={k: v for k, v in headers.items() if k != "X-Shopify-Hmac-Sha256"})
        wrong = client.post("/webhooks/shopify", content=body, headers={**headers, "X-Shopify-Hmac-Sha256": "AAAA" + headers["X-Shopify-Hmac-Sha256"][4:]})
        non_ascii = client.post("/webhooks/shopify", content=body, headers={**headers, "X-Shopify-Hmac-Sha256": "é".encode("latin-1") * 8})
        tampered = client.post("/webhooks/shopify", content=body.replace(b"#9999", b"#9998"), headers=headers)
        rows = inbox_rows(runtime)
    assert [r.status_code for r in (missing, wrong, non_ascii, tampered)] == [401, 401, 401, 401]
    assert rows == []


def test_duplicate_deliveries_are_acknowledged_and_stored_once(db_url):
    payload = indian_order()
    with running_app(make_settings(db_url)) as (client, runtime):
        codes = [post(client, payload, "orders/create", event_id="evt-1").status_code for _ in range(3)]
        # a second subscription's delivery of the same event has another webhook id but the same event id
        codes.append(post(client, payload, "orders/create", event_id="evt-1", webhook_id="other").status_code)
        # the same event id on another topic is a different fact
        codes.append(post(client, payload, "orders/paid", event_id="evt-1").status_code)
        runtime.processor.drain()
        rows = inbox_rows(runtime)
        with runtime.db.engine.connect() as conn:
            orders = conn.execute(select(func.count()).select_from(m.Order)).scalar()
    assert codes == [200] * 5
    assert [r.topic for r in rows] == ["orders/create", "orders/paid"]
    assert orders == 1


def test_unknown_topic_is_acknowledged_and_recorded_as_ignored(db_url):
    with running_app(make_settings(db_url)) as (client, runtime):
        resp = post(client, {"id": 1, "title": "Hat"}, "inventory_levels/update")
        runtime.processor.drain()
        rows = inbox_rows(runtime)
    assert resp.status_code == 200
    assert [(r.topic, r.status) for r in rows] == [("inventory_levels/update", "ignored")]
    assert "unknown topic" in rows[0].last_error


def test_malformed_json_with_valid_signature_is_400(db_url, caplog):
    raw = b'{"id": 1, "name": '
    with running_app(make_settings(db_url)) as (client, runtime):
        resp = post(client, None, "orders/create", raw=raw)
        not_object = post(client, None, "orders/create", raw=b"[1, 2]")
        rows = inbox_rows(runtime)
    assert resp.status_code == 400 and "malformed JSON" in resp.json()["error"]
    assert not_object.status_code == 400
    assert rows == []
    assert any("not valid JSON" in r.getMessage() for r in caplog.records)


def test_oversized_body_is_413(db_url):
    big = {"id": 1, "note": "x" * 70_000}  # the test settings cap bodies at 64 KiB
    with running_app(make_settings(db_url)) as (client, runtime):
        resp = post(client, big, "orders/create")
        rows = inbox_rows(runtime)
    assert resp.status_code == 413
    assert rows == []


def test_stale_update_never_overwrites_newer_state(db_url):
    newer = indian_order(updated_at="2026-11-21T12:00:00+00:00", financial_status="paid", tags="vip")
    older = indian_order(updated_at="2026-11-20T12:00:00+00:00", financial_status="pending", tags="")
    with running_app(make_settings(db_url)) as (client, runtime):
        post(client, newer, "orders/updated")
        post(client, older, "orders/updated")  # a retry carrying the original, older payload
        runtime.processor.drain()
        order = client.get("/api/stores/shop-a/orders/820982911946154508", headers=ADMIN).json()
        rows = inbox_rows(runtime)
    assert order["order"]["payment_state"] == "paid" and order["order"]["tags"] == ["vip"]
    assert [(r.status, r.last_error) for r in rows] == [("done", None), ("ignored", "stale: newer state already stored")]


def test_inbox_api_filters_by_status_and_shows_failures(db_url):
    broken = indian_order()
    broken["created_at"] = "not a date"
    with running_app(make_settings(db_url)) as (client, runtime):
        post(client, indian_order(), "orders/create")
        post(client, broken, "orders/updated")
        runtime.processor.drain()
        failed = client.get("/api/stores/shop-a/inbox", params={"status": "failed"}, headers=ADMIN).json()["items"]
        everything = client.get("/api/stores/shop-a/inbox", headers=ADMIN).json()["items"]
        other_store = client.get("/api/stores/shop-b/inbox", headers=ADMIN).json()["items"]
        bad_filter = client.get("/api/stores/shop-a/inbox", params={"status": "nope"}, headers=ADMIN)
    assert [i["topic"] for i in failed] == ["orders/updated"]
    assert failed[0]["error"].startswith("normalisation:") and "created_at" in failed[0]["error"]
    assert len(everything) == 2 and other_store == []
    assert bad_filter.status_code == 400


@pytest.mark.parametrize("fixture", ["customers_whats_app_marketing_consent_update"])
def test_consent_webhook_records_history(db_url, fixture):
    payload = load_json(FIXTURES / "shopify" / f"{fixture}.sample.json")
    payload.update(phone_number="+91 98765 43210")
    payload["whats_app_marketing_consent"].update(state="subscribed", updated_at="2026-11-20T10:00:00Z")
    with running_app(make_settings(db_url)) as (client, runtime):
        post(client, payload, "customers_whats_app_marketing_consent/update")
        runtime.processor.drain()
        view = client.get("/api/stores/shop-a/contacts/+919876543210", headers=ADMIN).json()
        with runtime.db.engine.connect() as conn:
            history = conn.execute(select(m.ConsentChange.category, m.ConsentChange.state, m.ConsentChange.source)).all()
    assert view["consent"]["marketing"]["state"] == "granted"
    assert view["consent"]["marketing"]["source"] == "shopify_whatsapp_marketing"
    assert [tuple(h) for h in history] == [("marketing", "granted", "shopify_whatsapp_marketing")]


def test_our_hmac_check_agrees_with_shopifys_own_library():
    """Shopify's shopifyapp.verify_webhook_req is the reference for the algorithm."""
    from shopify_app import ShopifyApp

    from adapters.shopify.webhooks import ShopifyWebhooks
    from connector.config import ShopifyStore
    from connector.errors import VerificationError

    store = ShopifyStore.model_validate({"key": "a", "platform": "shopify", "shop_domain": "a.myshopify.com",
                                         "webhook_secret": "new-secret", "previous_webhook_secret": "old-secret"})
    ours = ShopifyWebhooks([store])
    theirs = ShopifyApp(client_id="x", client_secret="new-secret", old_client_secret="old-secret")
    for path in sorted((FIXTURES / "shopify").glob("*.json")):
        body = path.read_bytes()
        for secret in ("new-secret", "old-secret", "wrong-secret"):
            headers = {k.lower(): v for k, v in shopify_headers(body, secret, "a.myshopify.com", "orders/create").items()}
            reference = theirs.verify_webhook_req({"method": "POST", "headers": headers, "url": "/", "body": body.decode()}).ok
            try:
                ours.verify(headers, body)
                accepted = True
            except VerificationError:
                accepted = False
            assert accepted is reference is (secret != "wrong-secret"), (path.name, secret)


def test_webhook_paths_answer_the_same_behind_a_path_prefix_and_refuse_other_methods(db_url):
    """Webhook POSTs skip Starlette's middleware and router (the hot path); what a sender sees must not change."""
    body = dumps(indian_order())

    def headers(secret: str = SECRETS["shop_a"]) -> dict[str, str]:
        return shopify_headers(body, secret, SHOP_A, "orders/create")

    with running_app(make_settings(db_url)) as (client, runtime):
        direct = client.post("/webhooks/shopify", content=body, headers=headers())
        forged = client.post("/webhooks/shopify", content=body, headers=headers("wrong"))
        get = client.get("/webhooks/shopify")
        unknown = client.post("/webhooks/shopify/extra", content=body, headers=headers())
        rows = inbox_rows(runtime)
    with running_app(make_settings(db_url), root_path="/hooks") as (proxied, runtime):  # behind a proxy at /hooks
        prefixed = proxied.post("/hooks/webhooks/shopify", content=body, headers=headers())
        prefixed_get = proxied.get("/hooks/webhooks/shopify")
        prefixed_rows = inbox_rows(runtime)
    assert direct.status_code == 200 and prefixed.status_code == 200
    assert forged.status_code == 401 and get.status_code == 405 and prefixed_get.status_code == 405 and unknown.status_code == 404
    assert [r.topic for r in rows] == ["orders/create"] and len(prefixed_rows) == 2  # same database: one more row
