"""Synthetic Shopify day for bench/pipeline.py: orders/create and checkouts/create bodies.

Built from the real samples in shared/fixtures/public/shopify (same keys and nesting),
with fresh ids, Indian customers (valid +91 98... mobiles, shipping country IN), INR
prices and 1-3 line items. Deterministic for a given seed. Everything is serialised
up front, so the timed phases only move bytes.

The day (store time Asia/Kolkata, 00:00-24:00):
  * checkouts: created uniformly over the day, updated 0-10 minutes later; a phone on
    ~85% (shipping address, sometimes also the customer or the SMS marketing phone),
    a marketing opt-in on ~60% (the email box and, where there is a phone, the SMS box: the
    connector takes WhatsApp marketing consent from the phone's opt-in only, since
    2026-12-06; before, the email box alone counted and ~30% of those ticked the SMS box);
    an abandoned_checkout_url on every one;
  * ~40% of checkouts convert: an order 1-15 minutes after the checkout's last update,
    with the checkout's token and the same buyer; the other orders come from checkouts
    we never saw (their own token), ~15% of them from a returning buyer;
  * 30% of orders are COD ("Cash on Delivery (COD)", financial_status pending); the
    others paid by "razorpay" (financial_status paid).
"""

from __future__ import annotations

import json
import random
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path

SAMPLES = Path(__file__).resolve().parents[2] / "shared/fixtures/public/shopify"
SHOP = "bench-naturals.myshopify.com"
SHOP_ID = 74891234567
IST = timezone(timedelta(hours=5, minutes=30))
DAY_START = datetime(2026, 11, 20, tzinfo=IST)  # 00:00 in the store's time zone
COD_GATEWAY = "Cash on Delivery (COD)"
PAID_GATEWAY = "razorpay"

FIRST = ("Asha", "Rahul", "Priya", "Vikram", "Neha", "Arjun", "Kavya", "Rohan", "Ananya", "Siddharth", "Meera", "Karan",
         "Divya", "Aditya", "Pooja", "Nikhil", "Sneha", "Amit", "Isha", "Varun", "Lakshmi", "Manish", "Riya", "Suresh")
LAST = ("Sharma", "Patel", "Iyer", "Reddy", "Nair", "Gupta", "Singh", "Mehta", "Rao", "Das", "Kulkarni", "Joshi",
        "Banerjee", "Menon", "Chopra", "Pillai", "Verma", "Shetty")
CITIES = (("Mumbai", "Maharashtra", "MH", "400050"), ("Pune", "Maharashtra", "MH", "411001"), ("Bengaluru", "Karnataka", "KA", "560034"),
          ("Chennai", "Tamil Nadu", "TN", "600020"), ("Hyderabad", "Telangana", "TG", "500081"), ("New Delhi", "Delhi", "DL", "110017"),
          ("Kolkata", "West Bengal", "WB", "700019"), ("Ahmedabad", "Gujarat", "GJ", "380015"), ("Jaipur", "Rajasthan", "RJ", "302001"),
          ("Kochi", "Kerala", "KL", "682016"), ("Lucknow", "Uttar Pradesh", "UP", "226010"), ("Indore", "Madhya Pradesh", "MP", "452001"))
PRODUCTS = (("Neem face wash", "299.00"), ("Aloe vera gel", "249.00"), ("Onion hair oil", "399.00"), ("Vitamin C serum", "599.00"),
            ("Ubtan face pack", "349.00"), ("Kumkumadi night oil", "899.00"), ("Charcoal soap (pack of 3)", "225.00"),
            ("Rose water toner", "199.00"), ("Sandalwood body lotion", "449.00"), ("Bhringraj shampoo", "379.00"),
            ("Tea tree anti-acne gel", "329.00"), ("Saffron lip balm", "149.00"))


@dataclass(frozen=True, slots=True)
class Webhook:
    topic: str
    at: datetime  # when it happened (and was triggered), tz-aware
    event_id: str
    body: bytes


def _load(name: str) -> dict:
    return json.loads((SAMPLES / f"{name}.sample.json").read_text())


def _ts(dt: datetime) -> str:
    return dt.astimezone(IST).isoformat(timespec="seconds")


class _Buyer:
    __slots__ = ("cid", "first", "last", "email", "phone", "city", "street")

    def __init__(self, rng: random.Random, n: int, phone: str | None):
        self.cid = 7_200_000_000_000 + n
        self.first = rng.choice(FIRST)
        self.last = rng.choice(LAST)
        self.email = f"{self.first.lower()}.{self.last.lower()}{n}@example.in"
        self.phone = phone
        self.city = rng.choice(CITIES)
        self.street = f"{rng.randint(1, 400)}, {rng.choice(('MG Road', 'Link Road', 'Station Road', 'Park Street', '2nd Cross', 'Main Road'))}"


class DayBuilder:
    def __init__(self, seed: int = 20261120):
        self.rng = random.Random(seed)
        self.order_t = _load("orders_create")
        self.checkout_t = _load("checkouts_create")
        self.order_line = self.order_t["line_items"][0]
        self.checkout_line = self.checkout_t["line_items"][0]
        self._buyers = 0
        self._mobiles = self.rng.randrange(10_000_000)  # 8 digits after "+9198", unique per buyer

    # ---- people -----------------------------------------------------------------------

    def _mobile(self) -> str:
        """A valid Indian mobile in one of the forms shoppers type it (parsed with country IN)."""
        self._mobiles = (self._mobiles + 7919) % 100_000_000  # a full cycle: distinct for 10^8 buyers
        digits = f"98{self._mobiles:08d}"
        form = self.rng.random()
        if form < 0.75:
            return f"+91{digits}"
        if form < 0.9:
            return digits
        return f"+91 {digits[:5]} {digits[5:]}"

    def buyer(self, with_phone: bool = True) -> _Buyer:
        self._buyers += 1
        return _Buyer(self.rng, self._buyers, self._mobile() if with_phone else None)

    def _address(self, b: _Buyer, template: dict, phone: str | None) -> dict:
        city, province, code, zipcode = b.city
        return {**template, "first_name": b.first, "last_name": b.last, "name": f"{b.first} {b.last}", "address1": b.street,
                "address2": None, "company": None, "city": city, "province": province, "province_code": code, "zip": zipcode,
                "country": "India", "country_code": "IN", "phone": phone}

    def _customer(self, b: _Buyer, template: dict, phone_on_customer: bool, accepts: bool) -> dict:
        c = {**template, "id": b.cid, "first_name": b.first, "last_name": b.last, "email": b.email, "currency": "INR",
             "phone": b.phone if phone_on_customer else None, "admin_graphql_api_id": f"gid://shopify/Customer/{b.cid}",
             "state": "enabled", "verified_email": True}
        if "default_address" in template:
            c["default_address"] = {**self._address(b, template["default_address"], b.phone), "id": b.cid + 1, "customer_id": b.cid,
                                    "default": True, "country_name": "India"}
        if "email_marketing_consent" in template:
            c["email_marketing_consent"] = {"state": "subscribed" if accepts else "not_subscribed", "opt_in_level": "single_opt_in",
                                            "consent_updated_at": None}
        return c

    def _lines(self, template: dict, order_id: int, n: int) -> tuple[list[dict], int]:
        lines, total = [], 0
        for k in range(n):
            title, price = self.rng.choice(PRODUCTS)
            qty = 1 if self.rng.random() < 0.8 else 2
            pid = 8_100_000_000_000 + PRODUCTS.index((title, price))
            money = {"amount": price, "currency_code": "INR"}
            li = {**template, "id": order_id * 10 + k, "title": title, "name": title, "price": price, "quantity": qty,
                  "product_id": pid, "variant_id": pid + 500, "sku": f"BN-{pid % 10000:04d}", "vendor": "Bench Naturals"}
            if "admin_graphql_api_id" in template:
                li["admin_graphql_api_id"] = f"gid://shopify/LineItem/{li['id']}"
            if "price_set" in template:
                li["price_set"] = {"shop_money": money, "presentment_money": money}
            if "line_price" in template:
                li["line_price"] = f"{float(price) * qty:.2f}"
                li["variant_price"] = price
                li["presentment_title"] = title
            if "current_quantity" in template:
                li["current_quantity"] = li["fulfillable_quantity"] = qty
            lines.append(li)
            total += round(float(price) * 100) * qty
        return lines, total

    # ---- webhooks -------------------------------------------------------------------------

    def _event_id(self) -> str:
        return str(uuid.UUID(int=self.rng.getrandbits(128), version=4))

    def checkout(self, n: int, at: datetime, b: _Buyer, accepts: bool) -> tuple[dict, datetime, str]:
        t = self.checkout_t
        token = f"{self.rng.getrandbits(128):032x}"
        updated = at + timedelta(seconds=self.rng.randint(0, 600))
        lines, cents = self._lines(self.checkout_line, 9_300_000 + n, self.rng.randint(1, 3))
        subtotal = cents / 100
        shipping_phone = b.phone
        body = {
            **t,
            "token": token, "cart_token": f"{self.rng.getrandbits(128):032x}", "id": 3_300_000_000 + n,
            "email": b.email, "buyer_accepts_marketing": accepts, "created_at": _ts(at), "updated_at": _ts(updated),
            "currency": "INR", "presentment_currency": "INR", "phone": None, "customer_locale": "en-IN",
            "line_items": lines, "name": f"#{3_300_000_000 + n}",
            "abandoned_checkout_url": f"https://{SHOP}/{SHOP_ID}/checkouts/{token}/recover?key={self.rng.getrandbits(64):016x}",
            "total_line_items_price": f"{subtotal:.2f}", "subtotal_price": f"{subtotal:.2f}", "total_tax": "0.00", "tax_lines": [],
            "taxes_included": True, "total_discounts": "0.00", "total_price": f"{subtotal:.2f}",
            "buyer_accepts_sms_marketing": accepts and b.phone is not None,
            "sms_marketing_phone": None,
            "billing_address": self._address(b, t["billing_address"], shipping_phone),
            "shipping_address": self._address(b, t["shipping_address"], shipping_phone),
            "customer": self._customer(b, t["customer"], self.rng.random() < 0.5, accepts),
        }
        if body["buyer_accepts_sms_marketing"]:
            body["sms_marketing_phone"] = b.phone
        return body, updated, token

    def order(self, n: int, at: datetime, b: _Buyer, cod: bool, checkout_token: str | None, accepts: bool) -> dict:
        t = self.order_t
        oid = 6_100_000_000_000 + n
        number = 1001 + n
        lines, cents = self._lines(self.order_line, oid, self.rng.randint(1, 3))
        subtotal = cents / 100
        shipping = 0.0 if subtotal >= 499 else 49.0
        total = subtotal + shipping
        gateway = COD_GATEWAY if cod else PAID_GATEWAY
        money = lambda v: {"shop_money": {"amount": f"{v:.2f}", "currency_code": "INR"},  # noqa: E731
                           "presentment_money": {"amount": f"{v:.2f}", "currency_code": "INR"}}
        token = f"{self.rng.getrandbits(128):032x}"
        body = {
            **t,
            "id": oid, "admin_graphql_api_id": f"gid://shopify/Order/{oid}", "app_id": 580111,
            "buyer_accepts_marketing": accepts, "cancel_reason": None, "cancelled_at": None,
            "cart_token": f"{self.rng.getrandbits(128):032x}", "checkout_token": checkout_token or f"{self.rng.getrandbits(128):032x}",
            "checkout_id": 3_300_000_000 + n, "client_details": None, "closed_at": None, "confirmation_number": f"{self.rng.getrandbits(40):X}"[:9],
            "confirmed": True, "contact_email": b.email, "email": b.email, "created_at": _ts(at), "processed_at": _ts(at), "updated_at": _ts(at),
            "currency": "INR", "presentment_currency": "INR", "customer_locale": "en-IN",
            "current_subtotal_price": f"{subtotal:.2f}", "current_subtotal_price_set": money(subtotal),
            "current_total_price": f"{total:.2f}", "current_total_price_set": money(total),
            "current_total_tax": "0.00", "current_total_tax_set": money(0), "current_total_discounts": "0.00",
            "current_total_discounts_set": money(0), "current_shipping_price_set": money(shipping),
            "subtotal_price": f"{subtotal:.2f}", "subtotal_price_set": money(subtotal), "total_price": f"{total:.2f}", "total_price_set": money(total),
            "total_line_items_price": f"{subtotal:.2f}", "total_line_items_price_set": money(subtotal), "total_tax": "0.00",
            "total_tax_set": money(0), "total_discounts": "0.00", "total_discounts_set": money(0), "total_shipping_price_set": money(shipping),
            "total_outstanding": f"{total:.2f}" if cod else "0.00", "tax_lines": [], "taxes_included": True, "discount_codes": [],
            "discount_applications": [], "shipping_lines": [], "estimated_taxes": False,
            "financial_status": "pending" if cod else "paid", "fulfillment_status": None, "fulfillments": [], "refunds": [], "returns": [],
            "gateway": gateway, "payment_gateway_names": [gateway], "name": f"#{number}", "number": number - 1000, "order_number": number,
            "order_status_url": f"https://{SHOP}/{SHOP_ID}/orders/{token}/authenticate?key={self.rng.getrandbits(64):016x}",
            "phone": None, "source_name": "web", "tags": "", "test": False, "token": token, "total_weight": 100 * len(lines),
            "line_items": lines, "line_item_groups": [], "note": None, "note_attributes": [], "payment_terms": None,
            "billing_address": self._address(b, t["billing_address"], b.phone),
            "shipping_address": self._address(b, t["shipping_address"], b.phone),
            "customer": self._customer(b, t["customer"], self.rng.random() < 0.5, accepts),
        }
        return body


def build_day(orders: int, checkouts: int, *, seed: int = 20261120, convert: float = 0.40, cod_share: float = 0.30,
              checkout_phone: float = 0.85, accepts_marketing: float = 0.60, returning: float = 0.15) -> list[Webhook]:
    """The day's webhooks in the order they happened (ties keep checkouts before their order)."""
    d = DayBuilder(seed)
    rng = d.rng
    day = 24 * 3600
    out: list[tuple[datetime, int, Webhook]] = []
    dumps = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode
    seq = 0

    def add(topic: str, at: datetime, body: dict) -> None:
        nonlocal seq
        seq += 1
        out.append((at, seq, Webhook(topic, at, d._event_id(), dumps(body).encode())))

    converting = min(orders, round(checkouts * convert))
    convert_at = set(rng.sample(range(checkouts), converting)) if checkouts else set()
    n_order = 0
    past: list[_Buyer] = []
    for n in range(checkouts):
        at = DAY_START + timedelta(seconds=rng.uniform(0, day - 1200))
        b = d.buyer(with_phone=rng.random() < checkout_phone)
        accepts = rng.random() < accepts_marketing
        body, updated, token = d.checkout(n, at, b, accepts)
        add("checkouts/create", at, body)
        if n in convert_at:
            if b.phone is None:  # the phone is asked for at shipping: the order has one
                b.phone = d._mobile()
            placed = updated + timedelta(seconds=rng.randint(60, 900))
            add("orders/create", placed, d.order(n_order, placed, b, rng.random() < cod_share, token, accepts))
            past.append(b)
            n_order += 1
    while n_order < orders:
        at = DAY_START + timedelta(seconds=rng.uniform(0, day - 1))
        if past and rng.random() < returning:
            b = rng.choice(past)
        else:
            b = d.buyer(with_phone=rng.random() < 0.97)
            past.append(b)
        add("orders/create", at, d.order(n_order, at, b, rng.random() < cod_share, None, rng.random() < accepts_marketing))
        n_order += 1
    out.sort(key=lambda x: (x[0], x[1]))
    return [w for _, _, w in out]
