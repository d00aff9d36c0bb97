"""WooCommerce webhooks over HTTP into a real database (SQLite and PostgreSQL)."""

from __future__ import annotations

from sqlalchemy import select

from connector.storage import models as m
from tests.conftest import FIXTURES, SECRETS, make_settings
from tests.helpers import dumps, load_json, running_app, woo_headers

ADMIN = {"Authorization": f"Bearer {SECRETS['admin']}"}
URL = "/webhooks/woocommerce/woo"


def order(**changes) -> dict:
    body = load_json(FIXTURES / "woocommerce" / "order.created.rest-v3-docs-example.json")
    body.update(changes)
    return body


def cod_order(**changes) -> dict:
    fields = {"payment_method": "cod", "payment_method_title": "Cash on delivery", "status": "processing",
              "date_paid": None, "date_paid_gmt": None}
    return order(**{**fields, **changes})


def post(client, payload, topic="order.created", *, secret=SECRETS["woo"], url=URL, raw: bytes | None = None):
    body = raw if raw is not None else dumps(payload)
    return client.post(url, content=body, headers=woo_headers(body, secret, topic))


def rows(runtime) -> list:
    with runtime.db.engine.connect() as conn:
        return list(conn.execute(select(m.InboxEvent).order_by(m.InboxEvent.id)))


def test_creation_ping_gets_exactly_200_and_stores_nothing(db_url):
    with running_app(make_settings(db_url)) as (client, runtime):
        resp = client.post(URL, content=b"webhook_id=15", headers={"Content-Type": "application/x-www-form-urlencoded"})
        stored = rows(runtime)
    assert resp.status_code == 200 and resp.content == b""
    assert stored == []


def test_the_docs_example_order_is_verified_stored_and_normalised(db_url):
    raw = (FIXTURES / "woocommerce" / "order.created.rest-v3-docs-example.json").read_bytes()
    with running_app(make_settings(db_url)) as (client, runtime):
        assert post(client, None, raw=raw).status_code == 200
        runtime.processor.drain()
        view = client.get("/api/stores/woo/orders/727", headers=ADMIN).json()
        stored = rows(runtime)
    assert [r.status for r in stored] == ["done"]
    assert view["order"]["name"] == "#727"
    assert view["order"]["is_cod"] is False and view["order"]["payment_state"] == "paid"
    assert view["order"]["contact_phone"] is None  # "(555) 555-5555" is not a real number: kept, unreachable


def test_cod_order_is_detected(db_url):
    with running_app(make_settings(db_url)) as (client, runtime):
        billing = {**order()["billing"], "phone": "+1 415 555 2671"}
        assert post(client, cod_order(billing=billing)).status_code == 200
        runtime.processor.drain()
        view = client.get("/api/stores/woo/orders/727", headers=ADMIN).json()
    assert view["order"]["is_cod"] is True
    assert view["order"]["payment_state"] == "pending"
    assert view["order"]["contact_phone"] == "+14155552671"


def test_bad_signature_and_unknown_store_are_401(db_url):
    with running_app(make_settings(db_url)) as (client, runtime):
        wrong = post(client, cod_order(), secret="not-the-secret")
        other_store = post(client, cod_order(), url="/webhooks/woocommerce/shop-a")  # a Shopify store's key
        unknown = post(client, cod_order(), url="/webhooks/woocommerce/nope")
        body = dumps(cod_order())
        unsigned = client.post(URL, content=body, headers={"X-WC-Webhook-Topic": "order.created"})
        stored = rows(runtime)
    assert [r.status_code for r in (wrong, other_store, unknown, unsigned)] == [401, 401, 401, 401]
    assert stored == []


def test_dedupe_survives_repeated_delivery_ids(db_url):
    """Two deliveries in one second share X-WC-Webhook-Delivery-ID; only a changed order is a new event."""
    first = cod_order(date_modified_gmt="2026-11-20T10:00:00")
    again = cod_order(date_modified_gmt="2026-11-20T10:00:00")
    changed = cod_order(date_modified_gmt="2026-11-20T10:00:01", status="cancelled")
    with running_app(make_settings(db_url)) as (client, runtime):
        codes = [post(client, p, "order.updated").status_code for p in (first, again, changed)]
        runtime.processor.drain()
        stored = rows(runtime)
        view = client.get("/api/stores/woo/orders/727", headers=ADMIN).json()
    assert codes == [200, 200, 200]
    assert len(stored) == 2
    assert [e["types"] for e in view["events"]] == [["order.updated"], ["order.cancelled"]]


def test_checkout_draft_orders_are_ignored(db_url):
    with running_app(make_settings(db_url)) as (client, runtime):
        assert post(client, cod_order(status="checkout-draft"), "order.updated").status_code == 200
        runtime.processor.drain()
        stored = rows(runtime)
        view = client.get("/api/stores/woo/orders/727", headers=ADMIN)
    assert [(r.status, r.last_error) for r in stored] == [("ignored", "checkout-draft order (block checkout in progress)")]
    assert view.status_code == 404


def test_malformed_json_is_400(db_url):
    with running_app(make_settings(db_url)) as (client, runtime):
        resp = post(client, None, raw=b'{"id": 727,')
        stored = rows(runtime)
    assert resp.status_code == 400
    assert stored == []


def test_an_order_with_a_lone_surrogate_in_the_name_is_stored_and_a_malformed_one_still_refused(db_url):
    """A signed order whose billing first name holds a lone low surrogate (the JSON escape
    ``\\udfff``) and whose last name an emoji as a surrogate pair used to be answered 400: a
    failed delivery WooCommerce never retries (and enough in a row disable the webhook). Now it
    is stored; the customer is "Jo\ufffdhn Doe 😀". A body that is malformed besides is still 400."""
    billing = {**order()["billing"], "first_name": "Jo\udfffhn", "last_name": "Doe \U0001F600", "phone": "+1 415 555 2671"}
    body = dumps(cod_order(billing=billing))
    assert b"Jo\\udfffhn" in body and b"Doe \\ud83d\\ude00" in body  # JSON escapes, as PHP's json_encode writes them
    with running_app(make_settings(db_url)) as (client, runtime):
        accepted = post(client, None, raw=body)
        malformed = post(client, None, raw=b'{"id": 728, "billing": {"first_name": "Jo\\udfffhn"},', topic="order.updated")
        runtime.processor.drain()
        view = client.get("/api/stores/woo/contacts/+14155552671", headers=ADMIN).json()
        stored = rows(runtime)
    assert accepted.status_code == 200 and malformed.status_code == 400
    assert [(r.topic, r.status) for r in stored] == [("order.created", "done")]
    assert view["contact"]["name"] == "Jo\ufffdhn Doe \U0001F600"


def test_an_order_binned_twice_is_two_events_and_a_repeated_delivery_is_one(db_url):
    """``order.deleted`` carries only the id, the same each time: binned, restored and binned again must reach the
    journeys twice (the second bin stops a COD reminder again), while the same delivery posted twice is stored once."""
    def deleted(delivery_id: str):
        body = dumps({"id": 727})
        return client.post(URL, content=body, headers={**woo_headers(body, SECRETS["woo"], "order.deleted"),
                                                         "X-WC-Webhook-Delivery-ID": delivery_id})

    with running_app(make_settings(db_url)) as (client, runtime):
        codes = [deleted("d1").status_code, deleted("d1").status_code]
        post(client, cod_order(date_modified_gmt="2026-11-20T11:00:00"), "order.restored")
        codes.append(deleted("d2").status_code)
        stored = [r.topic for r in rows(runtime)]
    assert codes == [200, 200, 200]
    assert stored == ["order.deleted", "order.restored", "order.deleted"]


def test_a_staging_clone_of_the_site_signing_with_the_same_secret_is_refused(db_url, caplog):
    """A copy of the shop (a host's staging site, a clone made for testing) carries the live shop's webhooks with
    their secret, so its test orders come correctly signed; ``X-WC-Webhook-Source`` (the sending site's
    ``home_url('/')``) names the copy. Such an order must not start a COD ask to a real customer, nor overwrite the
    live order of the same id: 401, nothing stored, a warning naming the site. The live site is known by its host
    and path whatever the scheme, a ``www.`` or a trailing slash; a WooCommerce older than 2.6 sends no source."""
    import logging

    caplog.set_level(logging.WARNING, logger="storeloop")

    def from_site(source: str | None, order_id: int):
        body = dumps(cod_order(id=order_id))
        headers = woo_headers(body, SECRETS["woo"], "order.created")
        if source is None:
            del headers["X-WC-Webhook-Source"]
        else:
            headers["X-WC-Webhook-Source"] = source
        return client.post(URL, content=body, headers=headers).status_code

    with running_app(make_settings(db_url)) as (client, runtime):
        copies = [from_site("https://staging.bloom.example/", 801), from_site("https://bloom.example/staging/", 802),
                  from_site("https://bloom-example.wpstage.net/", 803)]
        live = [from_site("https://bloom.example/", 901), from_site("http://www.Bloom.example", 902), from_site(None, 903)]
        stored = [r.dedupe_key.split(":")[2] for r in rows(runtime)]
    assert copies == [401, 401, 401]
    assert live == [200, 200, 200]
    assert stored == ["901", "902", "903"]
    warned = [r for r in caplog.records if r.getMessage() == "woocommerce webhook from another site refused"]
    assert [r.source for r in warned] == ["https://staging.bloom.example/", "https://bloom.example/staging/",
                                          "https://bloom-example.wpstage.net/"]
    assert all(r.store == "woo" and SECRETS["woo"] not in r.getMessage() for r in warned)


def test_deliveries_refused_as_another_site_are_shown_where_the_owner_looks(db_url, caplog):
    """A shop whose home address is not its site_url (a language directory WPML adds, a new domain) has every order
    refused as "another site": before, only a log line said so, and the dashboard and the report showed a healthy
    store while no order reached a journey. Now its connector health names the site, since when and the fix (the
    log line too), for a week after the last refusal. A flood costs no write storm: the count is written at most
    once a minute per store, and what came meanwhile is added at the next write."""
    import logging
    from datetime import datetime, timedelta, timezone

    from rich.console import Console

    from connector.report_view import render_health

    caplog.set_level(logging.WARNING, logger="storeloop")
    t0 = datetime(2026, 11, 20, 6, 30, tzinfo=timezone.utc)
    now = [t0]

    def from_site(source: str, order_id: int) -> int:
        body = dumps(cod_order(id=order_id))
        headers = {**woo_headers(body, SECRETS["woo"], "order.created"), "X-WC-Webhook-Source": source}
        return client.post(URL, content=body, headers=headers).status_code

    def health() -> dict:
        return client.get("/api/stores/woo/report", headers=ADMIN).json()["connector_health"]

    def report_lines() -> str:
        out = Console(record=True, width=400, color_system=None)
        render_health(health(), out, "woo")
        return out.export_text()

    with running_app(make_settings(db_url), clock=lambda: now[0]) as (client, runtime):
        assert health()["refused_sites"] == []
        codes = [from_site("https://bloom.example/en/", 700 + n) for n in range(30)]  # one minute's orders
        first = health()["refused_sites"]
        now[0] = t0 + timedelta(seconds=61)
        codes.append(from_site("https://bloom.example/en/", 800))
        later = health()["refused_sites"]
        said = report_lines()
        assert client.post("/dashboard/login", data={"token": SECRETS["admin"], "next": "/dashboard"}).status_code == 200
        page = client.get("/dashboard/woo").text
        now[0] = t0 + timedelta(days=8)  # the copy or the address fixed: nothing refused for a week
        gone = health()["refused_sites"], client.get("/dashboard/woo").text
    assert codes == [401] * 31
    # one write for the first minute's 30 refusals, the next one adds them up
    assert [(s["site"], s["count"], s["first_at"], s["last_at"]) for s in first] == [
        ("https://bloom.example/en/", 1, t0.isoformat(), t0.isoformat())]
    assert [(s["site"], s["count"], s["last_at"]) for s in later] == [
        ("https://bloom.example/en/", 31, (t0 + timedelta(seconds=61)).isoformat())]
    assert "Deliveries from another site refused" in said and "https://bloom.example/en/ (31 since" in said
    assert "webhook_sources" in said
    callout = page.split('id="refused-sites"')[1].split("</div>")[0]
    assert "https://bloom.example/en/: 31 since" in callout and "webhook_sources" in callout
    assert gone[0] == [] and 'id="refused-sites"' not in gone[1]
    warned = [r for r in caplog.records if r.getMessage() == "woocommerce webhook from another site refused"]
    assert len(warned) == 31 and all(r.source == "https://bloom.example/en/" and "webhook_sources" in r.hint for r in warned)
