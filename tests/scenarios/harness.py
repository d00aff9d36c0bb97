"""A small scenario harness: the real connector, a virtual clock, and the fake world.

``Scenario`` builds the real Starlette app on a real database (SQLite or PostgreSQL) with
a live WhatsApp client and live store clients pointed at ``FakeWorld`` on 127.0.0.1, and
an injected clock. Each ``at()``/``later()`` moves the clock and does what the worker
does on a tick (``connector/demo.py`` ``Connector.tick``): process the inbox, fire due
journey timers, send due messages, make store write-backs, post hand-off notifications.

Stores and customers act only through signed webhooks over HTTP; the assertions read
what the fake peers received and what the admin API answers.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any

from starlette.testclient import TestClient

from connector.config import parse_settings
from connector.runtime import Runtime
from connector.storage.db import Database
from connector.web.app import create_app
from tests.conftest import PHONE_ID_A, PHONE_ID_WOO, SECRETS, settings_dict
from tests.helpers import dumps, meta_signature, shopify_headers, woo_headers
from tests.scenarios import payloads as p
from tests.scenarios.fakes import SHOP_TOKEN, WA_TOKEN, WOO_KEY, WOO_SECRET, FakeWorld, WhatsAppSend

T0 = datetime(2026, 11, 16, 5, 0, tzinfo=timezone.utc)  # Monday of ISO week 2026-W47: 10:30 in Kolkata, 06:00 in Rome
WEEK = "2026-W47"
STAGES = ("entry", "qualification", "conversion", "post_purchase", "retention")

QUICK_REPLIES = [{"type": "quick_reply", "text": "Confirm", "payload": "cod_confirm"},
                 {"type": "quick_reply", "text": "Cancel", "payload": "cod_cancel"}]
TEMPLATES: list[dict[str, Any]] = [
    {"step": "cod_confirmation.ask", "name": "cod_confirm_v1", "category": "utility",
     "body_text": "Hi {{1}}, please confirm your cash-on-delivery order {{2}} of {{3}}.",
     "body": ["customer.first_name", "order.name", "order.total"], "buttons": QUICK_REPLIES},
    {"step": "cod_confirmation.reminder_1", "name": "cod_reminder_v1", "category": "utility",
     "body_text": "Reminder: please confirm order {{1}}.", "body": ["order.name"], "buttons": QUICK_REPLIES},
    {"step": "order_confirmation.sent", "name": "order_thanks_v1", "category": "utility",
     "body_text": "Thanks for order {{1}} ({{2}}).", "body": ["order.name", "order.total"]},
    {"step": "checkout_recovery.first", "name": "cart_1_v1", "category": "marketing",
     "body_text": "{{1}} is still in your cart: {{2}}", "body": ["reorder.product", "checkout.recovery_url"]},
    {"step": "checkout_recovery.second", "name": "cart_2_v1", "category": "marketing",
     "body_text": "Your cart is waiting: {{1}}", "body": ["checkout.recovery_url"]},
    {"step": "checkout_recovery.third", "name": "cart_3_v1", "category": "marketing",
     "body_text": "Last call, {{1}} off with {{2}}: {{3}}", "body": ["checkout.total", "discount.code", "checkout.recovery_url"]},
    {"step": "delivery.shipped", "name": "shipped_v1", "category": "utility",
     "body_text": "Order {{1}} is on its way", "body": ["order.name"]},
]


class Clock:
    def __init__(self, now: datetime):
        self.now = now

    def __call__(self) -> datetime:
        return self.now


@dataclass(frozen=True)
class Delivery:
    """One signed HTTP delivery, ready to be posted (again)."""

    path: str
    body: bytes
    headers: dict[str, str]
    what: str


def wa_id(phone: str) -> str:
    return phone.lstrip("+")


class Scenario:
    """The real connector for one store, ``platform`` ``shopify`` (store ``shop-a``) or ``woocommerce`` (store ``woo``)."""

    def __init__(self, world: FakeWorld, db_url: str, platform: str, *, journeys: dict[str, Any], policy: dict[str, Any] | None = None,
                 store_settings: dict[str, Any] | None = None, server: dict[str, Any] | None = None):
        raw = settings_dict(db_url)
        raw["server"].update(server or {})  # e.g. public_url, which install needs
        raw["whatsapp"].update(access_token=WA_TOKEN, graph_base_url=world.url, pair_spacing_seconds=0)
        if platform == "shopify":
            store = raw["stores"][0]
            store.update(access_token=SHOP_TOKEN, api_base_url=world.url)
            self.phone_number_id = PHONE_ID_A
        else:
            store = raw["stores"][2]
            store.update(consumer_key=WOO_KEY, consumer_secret=WOO_SECRET, api_base_url=f"{world.url}/wp-json/wc/v3",
                         cart_webhook_token=p.CART_TOKEN, default_country="IN")
            self.phone_number_id = PHONE_ID_WOO
        store.update(templates=TEMPLATES, journeys=journeys,
                     policy={"quiet_hours": "", "marketing_cap": 5, **(policy or {})},
                     stages={s: {"owner": f"{s} desk", "notify_url": f"{world.url}/hooks/{s}"} for s in STAGES})
        store.update(store_settings or {})  # e.g. Shopify's pickup_lines
        self.platform = platform
        self.key = store["key"]
        self.world = world
        self.settings = parse_settings(raw, environ={})
        self.clock = Clock(T0)
        self.runtime = Runtime(self.settings, Database.from_url(db_url), clock=self.clock, run_worker=False)
        self.client = TestClient(create_app(self.settings, self.runtime), raise_server_exceptions=True)
        self._messages = 0

    def __enter__(self) -> "Scenario":
        self.client.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self.client.__exit__(*exc)

    # ---- time and the worker ---------------------------------------------------------------
    @property
    def now(self) -> datetime:
        return self.clock.now

    def at(self, when: datetime, *, step: timedelta = timedelta(hours=3)) -> None:
        """Move the clock to ``when``, doing the worker's rounds at least every ``step`` on the way
        (a due timer fires at the first round at or after its time, as with a real worker)."""
        assert when >= self.clock.now, f"time runs forward: {when} < {self.clock.now}"
        while self.clock.now + step < when:
            self.clock.now += step
            self.work()
        self.clock.now = when
        self.work()

    def later(self, *, step: timedelta = timedelta(hours=3), **delta: float) -> None:
        self.at(self.clock.now + timedelta(**delta), step=step)

    def work(self) -> None:
        """One worker round at the clock's time."""
        rt = self.runtime
        assert rt.processor is not None and rt.dispatcher is not None and rt.notifier is not None
        portal = self.client.portal
        assert portal is not None
        rt.processor.drain()
        while rt.processor.process_timers(limit=500):
            pass
        rt.processor.drain()
        portal.call(rt.dispatcher.drain)
        portal.call(rt.writebacks.drain)
        while portal.call(rt.notifier.run_once):
            pass

    # ---- signed deliveries -----------------------------------------------------------------
    def shopify_delivery(self, topic: str, payload: dict[str, Any], *, event_id: str | None = None) -> Delivery:
        body = dumps(payload)
        headers = shopify_headers(body, SECRETS["shop_a"], "shop-a.myshopify.com", topic, event_id=event_id or str(uuid.uuid4()))
        return Delivery("/webhooks/shopify", body, headers, f"shopify {topic}")

    def woo_delivery(self, topic: str, payload: dict[str, Any]) -> Delivery:
        if topic.startswith("order.") and "id" in payload and isinstance(payload.get("status"), str):
            self.world.woo_status[str(payload["id"])] = payload["status"]  # the store has the order as its webhook says
            self.world.woo_orders[str(payload["id"])] = payload
        body = dumps(payload)
        return Delivery(f"/webhooks/woocommerce/{self.key}", body, woo_headers(body, SECRETS["woo"], topic), f"woocommerce {topic}")

    def cart_delivery(self, fields: dict[str, str]) -> Delivery:
        # the plugin signs nothing: the secret token in the URL is the authentication
        return Delivery(f"/webhooks/woocommerce/{self.key}/carts/{p.CART_TOKEN}", p.http_build_query(fields),
                        {"User-Agent": "WordPress/6.8; https://bloom.example"}, "woocommerce cart")

    def whatsapp_delivery(self, envelope: dict[str, Any]) -> Delivery:
        body = json.dumps(envelope).encode()
        return Delivery("/webhooks/whatsapp", body, {"Content-Type": "application/json",
                                                      "X-Hub-Signature-256": meta_signature(body, SECRETS["wa_app"])}, "whatsapp")

    def post(self, *deliveries: Delivery, times: int = 1) -> None:
        for d in deliveries:
            for _ in range(times):
                r = self.client.post(d.path, content=d.body, headers=d.headers)
                assert r.status_code == 200, f"{d.what}: {r.status_code} {r.text}"

    def shopify(self, topic: str, payload: dict[str, Any], *, event_id: str | None = None, times: int = 1) -> None:
        self.post(self.shopify_delivery(topic, payload, event_id=event_id), times=times)

    def woo(self, topic: str, payload: dict[str, Any], *, times: int = 1) -> None:
        self.post(self.woo_delivery(topic, payload), times=times)

    def cart(self, fields: dict[str, str], *, times: int = 1) -> None:
        self.post(self.cart_delivery(fields), times=times)

    # ---- customers on WhatsApp ---------------------------------------------------------------
    def _message_id(self) -> str:
        self._messages += 1
        return f"wamid.IN{self._messages:05d}"

    def tap_delivery(self, phone: str, payload: str, quoting: WhatsAppSend, message_id: str | None = None) -> Delivery:
        return self.whatsapp_delivery(p.wa_button_tap(self.phone_number_id, wa_id(phone), message_id or self._message_id(), payload,
                                                      quoting.wamid, self.now))

    def tap(self, phone: str, payload: str, quoting: WhatsAppSend, *, times: int = 1) -> None:
        """The customer taps a quick reply of ``quoting``; ``times`` > 1: Meta delivers the same tap again."""
        self.post(self.tap_delivery(phone, payload, quoting), times=times)

    def say(self, phone: str, text: str, quoting: WhatsAppSend | None = None) -> None:
        """The customer writes; ``quoting``: the message of ours she replies to (else she quotes nothing)."""
        self.post(self.whatsapp_delivery(p.wa_text(self.phone_number_id, wa_id(phone), self._message_id(), text, self.now,
                                                   quoting.wamid if quoting else None)))

    def marketing_preference(self, phone: str, value: str) -> None:
        self.post(self.whatsapp_delivery(p.wa_marketing_preference(self.phone_number_id, wa_id(phone), value, self.now)))

    # ---- the admin API -----------------------------------------------------------------------
    def api(self, path: str) -> Any:
        r = self.client.get(f"/api/stores/{self.key}{path}", headers={"Authorization": f"Bearer {SECRETS['admin']}"})
        assert r.status_code == 200, f"GET {path}: {r.status_code} {r.text}"
        return r.json()

    def handoffs(self, status: str | None = None) -> list[dict[str, Any]]:
        return self.api("/handoffs" + (f"?status={status}" if status else ""))["items"]

    def report(self, week: str = WEEK) -> dict[str, Any]:
        return self.api(f"/report?week={week}")

    def contact(self, phone: str) -> dict[str, Any]:
        return self.api(f"/contacts/{phone}")

    # ---- what reached WhatsApp -----------------------------------------------------------------
    def sent(self, to: str | None = None) -> list[WhatsAppSend]:
        return [s for s in self.world.sent(to) if s.phone_number_id == self.phone_number_id]

    def templates_to(self, phone: str) -> list[str]:
        return [s.template or "?" for s in self.sent(phone)]

    def last_to(self, phone: str, template: str) -> WhatsAppSend:
        found = [s for s in self.sent(phone) if s.template == template]
        assert found, f"no {template} reached {phone}; it got {self.templates_to(phone)}"
        return found[-1]
