"""The Cart Abandonment Recovery plugin's webhook (WooCommerce) over HTTP into a real database.

The plugin POSTs ``http_build_query`` of its fields with no signature; the URL carries the
store's ``cart_webhook_token``. Runs on SQLite and PostgreSQL (the ``db_url`` fixture); time
comes from a clock injected into the runtime, never from sleeping.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from urllib.parse import quote_plus

import pytest
from sqlalchemy import select
from starlette.testclient import TestClient

from connector.config import Settings, parse_settings
from connector.errors import ConfigError
from connector.outbox.dispatcher import Dispatcher
from connector.outbox.senders import DryRunSender
from connector.runtime import Runtime
from connector.storage import models as m
from connector.storage.db import Database
from connector.storage.inbox import with_body
from connector.web.app import create_app
from tests.conftest import FIXTURES, SECRETS, settings_dict
from tests.helpers import dumps, load_json, woo_headers

TOKEN = "cart-hook-7Qm2xWv9Lr4Tn8Kp3Zs6"
URL = f"/webhooks/woocommerce/woo/carts/{TOKEN}"
T0 = datetime(2026, 11, 20, 6, 30, tzinfo=timezone.utc)
SESSION = "5f1c0a9e3b7d4c2a8e6f0b1d9c3a7e5f"
RECOVERY = "https://bloom.example/checkout/?wcf_ac_token={token}&utm_source=whatsapp"


class Clock:
    def __init__(self, now: datetime):
        self.now = now

    def __call__(self) -> datetime:
        return self.now


def make_settings(db_url: str, *, token: str | None = TOKEN) -> Settings:
    raw = settings_dict(db_url)
    woo = raw["stores"][2]
    woo.update(
        default_country="IN",
        policy={"quiet_hours": ""},
        templates=[{"step": "checkout_recovery.first", "name": "cart_v1", "category": "marketing",
                    "body_text": "You left {{1}}: {{2}}", "body": ["reorder.product", "checkout.recovery_url"]},
                   {"step": "checkout_recovery.second", "name": "cart_v2", "category": "marketing",
                    "body_text": "Still thinking about {{1}}? {{2}}", "body": ["reorder.product", "checkout.recovery_url"]}],
        journeys={"checkout_recovery": {"abandon_after_minutes": 30, "ladder_minutes": [0, 360]}},
    )
    if token is not None:
        woo["cart_webhook_token"] = token
    return parse_settings(raw, environ={})


@contextlib.contextmanager
def running(settings: Settings, clock: Clock) -> Iterator[tuple[TestClient, Runtime]]:
    """The real app; the clock is the runtime's (webhook arrival times and the processor's now)."""
    runtime = Runtime(settings, Database.from_url(settings.database.url), clock=clock, run_worker=False)
    with TestClient(create_app(settings, runtime), raise_server_exceptions=True) as client:
        yield client, runtime


def php_urlencode(value: str) -> str:
    """PHP's ``urlencode``: like ``quote_plus`` with nothing safe but ``-_.`` (``~`` is escaped too)."""
    return quote_plus(value, safe="").replace("~", "%7E")


def http_build_query(fields: dict[str, str]) -> bytes:
    return "&".join(f"{php_urlencode(k)}={php_urlencode(v)}" for k, v in fields.items()).encode("ascii")


def wcf_token(session: str) -> str:
    """The plugin's ``wcf_generate_token``: urlencode(base64(http_build_query(['wcf_session_id' => ...])))."""
    return php_urlencode(base64.b64encode(f"wcf_session_id={session}".encode()).decode())


def cart(status: str = "abandoned", *, session: str = SESSION, phone: str = "098765 43210", **extra: str) -> dict[str, str]:
    """The fields ``trigger_zapier_webhook`` posts, in its order; ``esc_url`` wrote ``&`` as ``&#038;``."""
    return {
        "first_name": "Asha",
        "last_name": "Rao",
        "phone_number": phone,
        "billing_address": "Bloom Co 12 MG Road, KA, IN, Bengaluru, 560001",
        "shipping_address": "Bloom Co 12 MG Road, Bengaluru, KA, 560001",
        "email": "asha@example.in",
        "checkout_url": RECOVERY.format(token=wcf_token(session)).replace("&", "&#038;"),
        "product_names": "Neem face wash & Rose toner",
        "coupon_code": "",
        "order_status": status,
        "cart_total": "899.00",
        "product_table": "<table><tr><td>Neem face wash</td><td>1</td><td>&#8377;499.00</td></tr></table>",
        **extra,
    }


def post(client: TestClient, fields: dict[str, str] | None = None, *, url: str = URL, raw: bytes | None = None):
    body = raw if raw is not None else http_build_query(fields or cart())
    # WordPress's wp_remote_post with a string body sends no Content-Type of its own
    return client.post(url, content=body, headers={"User-Agent": "WordPress/6.8; https://bloom.example"})


def inbox(runtime: Runtime) -> list:
    with runtime.db.engine.connect() as conn:
        return list(conn.execute(with_body().order_by(m.InboxEvent.id)))


def outbox(runtime: Runtime) -> list:
    with runtime.db.engine.connect() as conn:
        return list(conn.execute(select(m.OutboxMessage).order_by(m.OutboxMessage.id)))


def runs(runtime: Runtime) -> list:
    with runtime.db.engine.connect() as conn:
        return list(conn.execute(select(m.JourneyRun).order_by(m.JourneyRun.id)))


def test_a_plugin_post_is_stored_once_even_when_sent_twice(db_url):
    body = http_build_query(cart())
    with running(make_settings(db_url), Clock(T0)) as (client, runtime):
        codes = [post(client, raw=body).status_code for _ in range(2)]
        stored = inbox(runtime)
        runtime.processor.drain()
        [row] = inbox(runtime)
        with runtime.db.engine.connect() as conn:
            [checkout] = conn.execute(select(m.Checkout)).all()
            [contact] = conn.execute(select(m.Contact)).all()
    assert codes == [200, 200]
    assert len(stored) == 1
    assert (stored[0].source, stored[0].topic, stored[0].status) == ("woocommerce", "cart.abandoned", "pending")
    assert stored[0].dedupe_key == f"woocommerce:cart:wcf-{SESSION}:cart.abandoned"
    assert body.decode() in stored[0].raw_body.decode()  # the form is kept verbatim for replay
    assert (row.status, row.subject) == ("done", f"checkout:wcf-{SESSION}")
    assert checkout.token == f"wcf-{SESSION}" and checkout.total == 899 and checkout.completed_at is None
    assert checkout.recovery_url == RECOVERY.format(token=wcf_token(SESSION))  # &#038; undone
    assert checkout.accepts_marketing is False
    assert (contact.phone_e164, contact.first_name, contact.email) == ("+919876543210", "Asha", "asha@example.in")


def test_wrong_or_missing_token_is_401_and_stores_nothing(db_url, caplog):
    wrong = "cart-hook-WRONG-WRONG-WRONG-000"
    with caplog.at_level(logging.INFO, logger="storeloop"):
        with running(make_settings(db_url), Clock(T0)) as (client, runtime):
            answers = [
                post(client, url=f"/webhooks/woocommerce/woo/carts/{wrong}"),
                post(client, url="/webhooks/woocommerce/woo/carts"),  # no token at all
                post(client, url=f"/webhooks/woocommerce/woo/carts/{TOKEN[:-1]}"),  # a prefix is not enough
                post(client, url=f"/webhooks/woocommerce/woo/carts/{TOKEN}%C3%A9"),  # non-ASCII
                post(client, url=f"/webhooks/woocommerce/shop-a/carts/{TOKEN}"),  # a Shopify store's key
                post(client, url=f"/webhooks/woocommerce/nope/carts/{TOKEN}"),  # unknown store
            ]
            stored = inbox(runtime)
        with running(make_settings(db_url, token=None), Clock(T0)) as (client, runtime):
            not_enabled = post(client)  # the store has no cart_webhook_token: the endpoint is off
            stored += inbox(runtime)
    assert [a.status_code for a in answers + [not_enabled]] == [401] * 7
    assert {a.json()["error"] for a in answers} == {"unauthorized"}
    assert stored == []
    logged = "\n".join(f"{r.getMessage()} {r.__dict__}" for r in caplog.records)
    assert "cart webhook rejected" in logged and "cart_webhook_token is not configured" in logged
    assert TOKEN not in logged and wrong not in logged and TOKEN[:-1] not in logged


def test_a_staging_copy_s_cart_posts_are_refused_and_the_shop_s_own_are_stored(db_url, caplog):
    """A copy of the shop (a staging host, WP Staging's subfolder) posts its carts with the live token it was cloned
    with: its recovery link opens the copy, so none may start a reminder. WordPress names its home_url() in the
    User-Agent and the link is a page of the sending site: another site than site_url (or a webhook_sources
    address) is 401, nothing stored, a warning naming the site and the setting, never the link's cart token. The
    shop's own posts pass whatever the scheme, a www., a listed language directory or a checkout on its own host."""
    raw = settings_dict(db_url)
    woo = raw["stores"][2]
    woo.update(cart_webhook_token=TOKEN, webhook_sources=["https://bloom.example/en/"],
               checkout_url="https://pay.bloom.example/kasse/")

    def send(n: int, agent: str | None, site: str = "https://bloom.example"):
        fields = cart(session=f"s{n:031d}")
        fields["checkout_url"] = fields["checkout_url"].replace("https://bloom.example", site)
        headers = {"User-Agent": agent} if agent is not None else {}
        return client.post(URL, content=http_build_query(fields), headers=headers).status_code

    caplog.set_level(logging.WARNING, logger="storeloop")
    with running(parse_settings(raw, environ={}), Clock(T0)) as (client, runtime):
        copies = [send(1, "WordPress/6.8; https://staging.bloom.example", "https://staging.bloom.example"),
                  send(2, "WordPress/6.8; https://bloom.example/staging", "https://bloom.example/staging"),
                  send(3, None, "https://bloom-example.wpstage.net"),  # its User-Agent filtered away: the link names it
                  send(4, "WordPress/6.8; https://bloom.example", "https://bloom-example.wpstage.net")]
        own = [send(5, "WordPress/6.8; https://bloom.example"), send(6, "WordPress/6.8; http://www.bloom.example"),
               send(7, "WordPress/6.8; https://bloom.example/en", "https://bloom.example/en"), send(8, None),
               send(9, "WordPress/6.8; https://bloom.example", "https://pay.bloom.example"),
               send(10, "Mozilla/5.0 (a site's own agent)")]
        stored = [r.dedupe_key.split(":")[2] for r in inbox(runtime)]
    assert copies == [401] * 4
    assert own == [200] * 6
    assert stored == [f"wcf-s{n:031d}" for n in range(5, 11)]
    warned = [r for r in caplog.records if r.getMessage() == "woocommerce cart webhook from another site refused"]
    assert [r.source for r in warned] == ["https://staging.bloom.example", "https://bloom.example/staging",
                                          "https://bloom-example.wpstage.net", "https://bloom-example.wpstage.net"]
    assert all("webhook_sources" in r.hint and "wcf_ac_token" not in str(r.__dict__) for r in warned)


@pytest.mark.parametrize(
    ("raw", "error"),
    [
        (b"", "empty body"),
        (b'{"phone_number": "+919876543210", "order_status": "abandoned"}', "not a form-encoded body"),
        (b"first_name=Asha&broken&order_status=abandoned", "not a form-encoded body"),
        (b"first_name=\xff\xfe&order_status=abandoned", "not UTF-8"),
        (b"first_name=%FF%FE&order_status=abandoned", "percent-encoded value is not UTF-8"),
        (http_build_query({k: v for k, v in cart().items() if k != "checkout_url"}), "missing checkout_url"),
        (http_build_query({**cart(), "order_status": " "}), "missing order_status"),
        (http_build_query({**cart(), "phone_number": "", "email": ""}), "missing phone_number or email"),
        (http_build_query({**cart(), "checkout_url": "javascript:alert(1)"}), "checkout_url is not an http(s) link"),
    ],
)
def test_malformed_body_is_400_with_a_clear_error(db_url, raw, error):
    with running(make_settings(db_url), Clock(T0)) as (client, runtime):
        resp = post(client, raw=raw)
        stored = inbox(runtime)
    assert resp.status_code == 400
    assert error in resp.json()["error"]
    assert stored == []


def test_statuses_the_journeys_do_not_use_are_stored_as_ignored(db_url):
    with running(make_settings(db_url), Clock(T0)) as (client, runtime):
        assert post(client, cart("lost")).status_code == 200
        runtime.processor.drain()
        stored = inbox(runtime)
    assert [(r.topic, r.status, r.last_error) for r in stored] == [("cart.lost", "ignored", "cart status 'lost' is not handled")]


def test_a_phone_that_is_not_a_phone_fails_the_row_and_nothing_is_sent(db_url):
    clock = Clock(T0)
    with running(make_settings(db_url), clock) as (client, runtime):
        assert post(client, cart(phone="call after 6pm 12", whatsapp_opt_in="1")).status_code == 200
        runtime.processor.drain()
        clock.now = T0 + timedelta(days=2)
        runtime.processor.process_timers()
        runtime.processor.drain()
        [row] = inbox(runtime)
        sent, started = outbox(runtime), runs(runtime)
    assert row.status == "failed"
    assert "phone_number: not a valid phone number (read with default_country IN)" in row.last_error
    assert "call after" not in row.last_error  # the reason names the field, never the value
    assert sent == [] and started == []


def test_plugin_cart_gets_its_first_reminder_after_the_quiet_minutes(db_url):
    """30 quiet minutes, then the first rung (0 min): queued at 07:00, not a minute earlier.

    The opted-in cart's reminder is pending; the other cart's is recorded as skipped, because
    a captured cart is not WhatsApp marketing consent.
    """
    clock = Clock(T0)
    other = "0c9b8a7f6e5d4c3b2a1f0e9d8c7b6a5f"
    with running(make_settings(db_url), clock) as (client, runtime):
        assert post(client, cart(whatsapp_opt_in="1")).status_code == 200
        assert post(client, cart(session=other, phone="+91 98123 45678")).status_code == 200
        runtime.processor.drain()
        clock.now = T0 + timedelta(minutes=29)
        runtime.processor.process_timers()
        early = outbox(runtime)
        clock.now = T0 + timedelta(minutes=30)
        runtime.processor.process_timers()
        queued = outbox(runtime)
        with runtime.db.engine.connect() as conn:
            consent = dict(conn.execute(select(m.Contact.phone_e164, m.Contact.consent_marketing)).all())
    assert early == []
    assert [(o.payload["subject"], o.step, o.status, o.skip_reason) for o in queued] == [
        (f"checkout:wcf-{SESSION}", "first", "pending", None),
        (f"checkout:wcf-{other}", "first", "skipped", "no_marketing_consent"),
    ]
    assert consent == {"+919876543210": "granted", "+919812345678": "unknown"}
    message = queued[0].payload["message"]
    assert message["to"] == "+919876543210" and message["name"] == "cart_v1"
    assert [p["text"] for p in message["body"]] == ["Neem face wash & Rose toner", RECOVERY.format(token=wcf_token(SESSION))]
    assert queued[0].due_at == T0 + timedelta(minutes=30)


def test_a_cart_with_only_an_email_is_kept_but_starts_no_run(db_url):
    clock = Clock(T0)
    with running(make_settings(db_url), clock) as (client, runtime):
        assert post(client, cart(phone="")).status_code == 200
        runtime.processor.drain()
        clock.now = T0 + timedelta(days=1)
        runtime.processor.process_timers()
        [row] = inbox(runtime)
        with runtime.db.engine.connect() as conn:
            [checkout] = conn.execute(select(m.Checkout)).all()
        sent, started = outbox(runtime), runs(runtime)
    assert row.status == "done" and checkout.contact_id is None
    assert sent == [] and started == []


@pytest.mark.parametrize("status", ["completed", "recovered"])
def test_a_recovered_cart_after_the_first_reminder_stops_the_later_ones(db_url, status):
    clock = Clock(T0)
    settings = make_settings(db_url)
    with running(settings, clock) as (client, runtime):
        post(client, cart(whatsapp_opt_in="1"))
        runtime.processor.drain()
        clock.now = T0 + timedelta(minutes=30)
        runtime.processor.process_timers()  # reminder 1
        asyncio.run(Dispatcher(runtime.db, settings, runtime.store_ids, DryRunSender(), clock=clock).drain())  # and it goes out
        clock.now = T0 + timedelta(hours=2)
        done = cart(status)
        codes = [post(client, done).status_code for _ in range(2)]  # the plugin may post it twice
        runtime.processor.drain()
        clock.now = T0 + timedelta(hours=7)  # reminder 2 would be due (30 min + 360 min)
        runtime.processor.process_timers()
        runtime.processor.drain()
        stored = inbox(runtime)
        sent, [run] = outbox(runtime), runs(runtime)
        with runtime.db.engine.connect() as conn:
            [checkout] = conn.execute(select(m.Checkout)).all()
    assert codes == [200, 200]
    assert [(r.topic, r.status) for r in stored] == [("cart.abandoned", "done"), (f"cart.{status}", "done")]
    assert [o.step for o in sent] == ["first"]
    assert (run.status, run.state["sent"], run.state["outcome"], run.next_due_at) == ("finished", 1, "completed", None)
    assert checkout.completed_at == T0 + timedelta(hours=2)


def test_a_woocommerce_order_from_the_same_customer_ends_the_run_as_recovered(db_url):
    """The store's own signed order webhook usually comes first: the journey attributes it by phone."""
    clock = Clock(T0)
    order = load_json(FIXTURES / "woocommerce" / "order.created.rest-v3-docs-example.json")
    order.update(date_created_gmt="2026-11-20T07:30:00", date_modified_gmt="2026-11-20T07:30:00",
                 billing={**order["billing"], "phone": "+91 98765 43210"})
    body = dumps(order)
    settings = make_settings(db_url)
    with running(settings, clock) as (client, runtime):
        post(client, cart(whatsapp_opt_in="1"))
        runtime.processor.drain()
        clock.now = T0 + timedelta(minutes=30)
        runtime.processor.process_timers()  # reminder 1
        asyncio.run(Dispatcher(runtime.db, settings, runtime.store_ids, DryRunSender(), clock=clock).drain())  # and it goes out
        clock.now = T0 + timedelta(hours=1)
        assert client.post("/webhooks/woocommerce/woo", content=body, headers=woo_headers(body, SECRETS["woo"], "order.created")).status_code == 200
        runtime.processor.drain()
        clock.now = T0 + timedelta(hours=7)
        runtime.processor.process_timers()
        sent = [(o.journey, o.step) for o in outbox(runtime) if o.journey == "checkout_recovery"]
        [run] = [r for r in runs(runtime) if r.journey == "checkout_recovery"]
    assert sent == [("checkout_recovery", "first")]
    assert (run.status, run.state["outcome"], run.state["recovered"], run.state["revenue"]) == ("finished", "recovered", True, order["total"])


def test_the_token_is_a_secret_from_the_environment_and_must_be_long():
    raw = settings_dict("sqlite:///unused.db")
    raw["stores"][2]["cart_webhook_token"] = "env:BLOOM_CART_TOKEN"
    settings = parse_settings(raw, environ={"BLOOM_CART_TOKEN": TOKEN})
    woo = settings.store("woo")
    assert woo.cart_webhook_token is not None and woo.cart_webhook_token.get_secret_value() == TOKEN  # type: ignore[union-attr]
    assert TOKEN not in repr(woo) and settings.summary()["stores"][2]["cart_webhook_token"] == "<set>"
    for bad, problem in (("short", "at least 24 characters"), ("a/b?c=" + "x" * 30, "only letters, digits")):
        raw["stores"][2]["cart_webhook_token"] = bad
        with pytest.raises(ConfigError) as err:
            parse_settings(raw, environ={})
        assert any(p.startswith("stores[2].cart_webhook_token:") and problem in p for p in err.value.problems)
        assert bad not in "\n".join(err.value.problems)
