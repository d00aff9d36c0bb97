"""``storeloop demo``: the real connector on SQLite, fed by a sandbox store and WhatsApp.

The sandbox plays a D2C store over real HTTP on 127.0.0.1: it signs Shopify and
WooCommerce webhooks with the store's secret and WhatsApp updates with the app secret,
retries some deliveries (as the platforms do), and sends a few things the connector must
refuse. Nothing leaves this machine; the WhatsApp sender is in dry-run mode.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import random
import secrets
import socket
import tempfile
import threading
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import httpx
import uvicorn
from rich.console import Console
from rich.progress import Progress
from rich.table import Table

from connector.config import Settings, parse_settings
from connector.contacts import normalize_phone
from connector.web.app import create_app

SHOP = "demo-naturals.myshopify.com"
PHONE_ID = "100000000000001"
PRODUCTS = [("Neem face wash 100 ml", 249), ("Hair oil 200 ml", 399), ("Protein bar x6", 540), ("Green tea 100 bags", 450)]
console = Console()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _settings(workdir: Path, port: int, secrets_: dict[str, str]) -> Settings:
    return parse_settings(
        {
            "server": {"host": "127.0.0.1", "port": port, "admin_token": secrets_["admin"], "log_level": "warning"},
            "database": {"url": f"sqlite:///{workdir / 'demo.db'}"},
            "whatsapp": {"app_secret": secrets_["meta"], "verify_token": secrets_["verify"]},
            "stores": [
                {
                    "key": "demo-shop", "platform": "shopify", "name": "Demo Naturals", "shop_domain": SHOP,
                    "webhook_secret": secrets_["shopify"], "timezone": "Asia/Kolkata", "default_country": "IN",
                    "whatsapp_phone_number_id": PHONE_ID,
                },
                {
                    "key": "demo-woo", "platform": "woocommerce", "name": "Demo Botanics (WooCommerce)",
                    "site_url": "http://127.0.0.1/woo", "webhook_secret": secrets_["woo"],
                    "timezone": "Asia/Kolkata", "default_country": "IN",
                },
            ],
        },
        environ={},
    )


def _phone(rng: random.Random) -> str:
    while True:
        candidate = f"9{rng.randint(100000000, 999999999)}"
        if normalize_phone(candidate, "IN") and normalize_phone(candidate, "IN").e164:  # type: ignore[union-attr]
            return candidate


class Sandbox:
    """A store and a WhatsApp account that talk to the connector the way the platforms do."""

    def __init__(self, base: str, secrets_: dict[str, str], seed: int = 7):
        self.http = httpx.Client(base_url=base, timeout=10)
        self.secrets = secrets_
        self.rng = random.Random(seed)
        self.now = datetime(2026, 11, 16, 9, 0, tzinfo=timezone.utc)
        self.sent = {"accepted": 0, "rejected": 0, "duplicates": 0}

    def _post(self, path: str, body: bytes, headers: dict[str, str], *, expect_ok: bool = True) -> int:
        code = self.http.post(path, content=body, headers=headers).status_code
        self.sent["accepted" if code == 200 else "rejected"] += 1
        if expect_ok and code != 200:
            raise RuntimeError(f"connector answered {code} to a valid delivery on {path}")
        return code

    def shopify(self, topic: str, payload: dict[str, Any], *, event_id: str | None = None, secret: str | None = None) -> int:
        body = json.dumps(payload).encode()
        sig = base64.b64encode(hmac.new((secret or self.secrets["shopify"]).encode(), body, hashlib.sha256).digest()).decode()
        headers = {
            "Content-Type": "application/json", "X-Shopify-Topic": topic, "X-Shopify-Hmac-Sha256": sig,
            "X-Shopify-Shop-Domain": SHOP, "X-Shopify-Event-Id": event_id or secrets.token_hex(8),
            "X-Shopify-Webhook-Id": secrets.token_hex(8), "X-Shopify-API-Version": "2026-07",
        }
        return self._post("/webhooks/shopify", body, headers, expect_ok=secret is None)

    def woo(self, topic: str, payload: dict[str, Any]) -> int:
        body = json.dumps(payload).encode()
        sig = base64.b64encode(hmac.new(self.secrets["woo"].encode(), body, hashlib.sha256).digest()).decode()
        headers = {"Content-Type": "application/json", "X-WC-Webhook-Topic": topic, "X-WC-Webhook-Signature": sig}
        return self._post("/webhooks/woocommerce/demo-woo", body, headers)

    def whatsapp(self, value: dict[str, Any], field: str = "messages") -> int:
        envelope = {"object": "whatsapp_business_account", "entry": [{"id": "1", "changes": [{"field": field, "value": value}]}]}
        body = json.dumps(envelope).encode()
        sig = "sha256=" + hmac.new(self.secrets["meta"].encode(), body, hashlib.sha256).hexdigest()
        return self._post("/webhooks/whatsapp", body, {"Content-Type": "application/json", "X-Hub-Signature-256": sig})

    def shopify_order(self, n: int, phone: str, cod: bool) -> dict[str, Any]:
        title, price = self.rng.choice(PRODUCTS)
        qty = self.rng.choice([1, 1, 2])
        at = (self.now + timedelta(minutes=17 * n)).isoformat()
        return {
            "id": 5_000_000 + n, "name": f"#{1000 + n}", "created_at": at, "updated_at": at, "cancelled_at": None,
            "financial_status": "pending" if cod else "paid", "fulfillment_status": None,
            "payment_gateway_names": ["Cash on Delivery (COD)"] if cod else ["razorpay"],
            "total_price": f"{price * qty}.00", "currency": "INR", "phone": phone, "email": f"buyer{n}@example.in",
            "customer": {"id": 7_000_000 + n, "first_name": self.rng.choice(["Asha", "Ravi", "Meera", "Kabir"]), "last_name": "Demo"},
            "shipping_address": {"phone": phone, "country_code": "IN"},
            "line_items": [{"id": 9_000_000 + n, "product_id": 111, "variant_id": 222 + PRODUCTS.index((title, price)), "title": title, "quantity": qty, "price": f"{price}.00", "sku": None}],
            "tags": "", "test": False, "order_status_url": f"https://{SHOP}/orders/{n}",
        }

    def play(self, orders: int, progress: Progress) -> None:
        task = progress.add_task("sandbox store and customers", total=orders)
        for n in range(orders):
            phone = _phone(self.rng)
            cod = self.rng.random() < 0.6
            if self.rng.random() < 0.3:  # started a checkout first
                at = (self.now + timedelta(minutes=17 * n - 5)).isoformat()
                self.shopify("checkouts/create", {
                    "token": f"chk{n}", "created_at": at, "updated_at": at, "completed_at": None, "phone": phone,
                    "abandoned_checkout_url": f"https://{SHOP}/checkouts/chk{n}/recover", "total_price": "399.00",
                    "currency": "INR", "buyer_accepts_marketing": self.rng.random() < 0.5, "line_items": [],
                    "shipping_address": {"country_code": "IN", "phone": phone},
                })
            order = self.shopify_order(n, phone, cod)
            event = secrets.token_hex(8)
            self.shopify("orders/create", order, event_id=event)
            if self.rng.random() < 0.15:  # Shopify retries a delivery it thinks failed
                self.shopify("orders/create", order, event_id=event)
                self.sent["duplicates"] += 1
            if cod and self.rng.random() < 0.7:  # the customer taps Confirm on the COD template
                self.whatsapp({
                    "messaging_product": "whatsapp", "metadata": {"display_phone_number": "15550000000", "phone_number_id": PHONE_ID},
                    "contacts": [{"profile": {"name": "Demo"}, "wa_id": "91" + phone}],
                    "messages": [{"from": "91" + phone, "id": f"wamid.demo{n}", "timestamp": str(int(time.time())),
                                  "type": "button", "button": {"payload": f"cod_confirm:{5_000_000 + n}", "text": "Confirm"},
                                  "context": {"from": "15550000000", "id": f"wamid.out{n}"}}],
                })
            if self.rng.random() < 0.5:
                at = (self.now + timedelta(days=2, minutes=17 * n)).isoformat()
                self.shopify("fulfillments/create", {
                    "id": 8_000_000 + n, "order_id": 5_000_000 + n, "status": "success",
                    "shipment_status": self.rng.choice(["in_transit", "out_for_delivery", "delivered", "failure"]),
                    "tracking_company": "Delhivery", "tracking_number": f"DL{n:06d}",
                    "tracking_url": f"https://track.example/DL{n:06d}", "created_at": at, "updated_at": at,
                })
            if n % 5 == 0:
                at = (self.now + timedelta(minutes=17 * n)).strftime("%Y-%m-%dT%H:%M:%S")
                self.woo("order.created", {
                    "id": 300 + n, "number": str(300 + n), "order_key": f"wc_order_{n}", "status": "processing",
                    "currency": "INR", "total": "499.00", "date_created_gmt": at, "date_modified_gmt": at,
                    "payment_method": "cod", "payment_method_title": "Cash on delivery", "date_paid_gmt": None,
                    "customer_id": 0, "billing": {"first_name": "Woo", "last_name": "Buyer", "phone": phone, "country": "IN", "email": ""},
                    "shipping": {}, "line_items": [{"id": n, "product_id": 93, "variation_id": 0, "quantity": 1, "name": "Rose water", "price": 499, "sku": ""}],
                })
            progress.advance(task)
        # a delivery the connector must refuse: signed with the wrong secret
        self.shopify("orders/create", self.shopify_order(orders + 1, _phone(self.rng), False), secret="not-the-secret")


def _wait_until_processed(client: httpx.Client, headers: dict[str, str], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        pending = sum(
            len(client.get(f"/api/stores/{key}/inbox", params={"status": "pending", "limit": 1}, headers=headers).json()["items"])
            for key in ("demo-shop", "demo-woo")
        )
        if pending == 0:
            return
        time.sleep(0.1)
    raise RuntimeError("the connector did not process the inbox within a minute")


def _report(settings: Settings, sandbox: Sandbox, client: httpx.Client, headers: dict[str, str], phone: str) -> None:
    from sqlalchemy import create_engine, func, select

    from connector.storage import models as m

    engine = create_engine(settings.database.url)
    with engine.connect() as conn:
        inbox = conn.execute(
            select(m.Store.key, m.InboxEvent.source, m.InboxEvent.status, func.count())
            .join(m.Store, m.Store.id == m.InboxEvent.store_id)
            .group_by(m.Store.key, m.InboxEvent.source, m.InboxEvent.status)
            .order_by(m.Store.key, m.InboxEvent.source, m.InboxEvent.status)
        ).all()
        orders = conn.execute(
            select(m.Store.key, m.Order.is_cod, func.count(), func.sum(m.Order.total))
            .join(m.Store, m.Store.id == m.Order.store_id)
            .group_by(m.Store.key, m.Order.is_cod)
        ).all()
        contacts = conn.execute(select(func.count()).select_from(m.Contact)).scalar()
        replies = conn.execute(select(func.count()).select_from(m.Message).where(m.Message.direction == "in")).scalar()
    engine.dispose()
    t = Table("store", "source", "inbox status", "rows", title="What the connector stored")
    for row in inbox:
        t.add_row(row[0], row[1], row[2], str(row[3]))
    console.print(t)
    t = Table("store", "payment", "orders", "value", title="Orders")
    for key, is_cod, count, total in orders:
        t.add_row(key, "COD" if is_cod else "prepaid", str(count), f"INR {total:,.2f}")
    console.print(t)
    console.print(
        f"deliveries accepted {sandbox.sent['accepted']} (of which platform retries {sandbox.sent['duplicates']}, stored once), "
        f"refused {sandbox.sent['rejected']}; contacts {contacts}; WhatsApp replies {replies}"
    )
    view = client.get(f"/api/stores/demo-shop/contacts/{phone}", headers=headers).json()
    console.print(f"[bold]One customer's context[/] (GET /api/stores/demo-shop/contacts/{phone}):")
    console.print_json(json.dumps({k: view[k] for k in ("contact", "consent", "orders")}))


def run_demo(orders: int = 40, keep_running: bool = False, port: int = 0) -> int:
    secrets_ = {k: secrets.token_hex(16) for k in ("shopify", "woo", "meta", "verify", "admin")}
    workdir = Path(tempfile.mkdtemp(prefix="storeloop-demo-"))
    port = port or _free_port()
    settings = _settings(workdir, port, secrets_)
    server = uvicorn.Server(uvicorn.Config(create_app(settings), host="127.0.0.1", port=port, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, name="storeloop-server", daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{port}"
    headers = {"Authorization": f"Bearer {secrets_['admin']}"}
    deadline = time.monotonic() + 20
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            console.print("[red]the connector did not start[/]")
            return 1
        time.sleep(0.05)
    console.print(f"connector listening on {base} (SQLite at {workdir / 'demo.db'}, WhatsApp dry-run)")
    sandbox = Sandbox(base, secrets_)
    started = time.perf_counter()
    with Progress(console=console) as progress:
        sandbox.play(orders, progress)
    with httpx.Client(base_url=base, timeout=10) as client:
        _wait_until_processed(client, headers)
        elapsed = time.perf_counter() - started
        console.print(f"played {orders} orders in {elapsed:.1f} s")
        first_phone = "+91" + _phone(random.Random(7))
        _report(settings, sandbox, client, headers, first_phone)
    console.print(f"\nadmin API: {base}/api/stores/demo-shop/inbox  (Authorization: Bearer {secrets_['admin']})")
    if keep_running:
        console.print("serving until Ctrl-C")
        try:
            while thread.is_alive():
                time.sleep(0.5)
        except KeyboardInterrupt:
            pass
    server.should_exit = True
    thread.join(timeout=10)
    return 0
