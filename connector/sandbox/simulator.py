"""A simulated D2C store and its customers, for the demo: real webhooks, known true effects.

Over an accelerated (virtual) clock the store places orders (a COD share), customers
abandon checkouts, prepaid payments stall (a UPI or card payment left pending; the store
cancels the order if it is still unpaid two days later), parcels ship and are delivered
(some fail: NDR), and people come back to reorder on each product's cycle. Customers react to what actually reaches them on the sandbox WhatsApp:
they tap Confirm or Cancel on a COD ask, read updates, sometimes ask a question in free
text after a shipping update (a hand-off for a person) or write STOP, and buy or pay after
a reminder more often than without one.

The effects are set here, so the demo knows the true lift of each journey with a holdout
(checkout recovery, payment recovery, reorder): a reminded customer converts with
``*_reminded`` probability, anyone else with ``*_base``, and decides only after the
reminder would have reached them. Every customer in the simulation has opted in and the
sends that the sandbox refuses are utility updates only, so a treated (non-holdout)
customer is reminded unless they wrote STOP earlier. The report measures intent to treat:
those few stay in the treated group unreached, and a customer's unrelated repeat order (a
fifth of orders come from earlier customers) can count in either group, so the measured
lift sits slightly below the difference on average; the interval must still hold it.

Everything goes over real HTTP: signed Shopify webhooks and signed WhatsApp webhooks to
the connector; the connector's sends and write-backs go to the sandbox peers.
"""

from __future__ import annotations

import base64
import hashlib
import heapq
import hmac
import itertools
import json
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import httpx

from connector.sandbox.whatsapp import SandboxWhatsApp

PRODUCTS = [  # (product id, variant id, title, price, cycle days)
    (1001, 2001, "Neem face wash 100 ml", 249, 10),
    (1002, 2002, "Hair oil 200 ml", 399, 14),
    (1003, 2003, "Protein bar x6", 540, 7),
    (1004, 2004, "Green tea 100 bags", 450, 12),
]
PRODUCT_TITLES = {p[2] for p in PRODUCTS}
FIRST_NAMES = ["Asha", "Ravi", "Meera", "Kabir", "Isha", "Arjun", "Zoya", "Dev", "Nila", "Omar"]
QUESTIONS = ["Can the courier come after 6 pm?", "Please leave it with the guard at the gate", "Is it coming before Friday?",
             "Can I change the delivery address to my office?"]


@dataclass
class Plan:
    """The store's week and the customers' true behaviour."""

    days: int = 21
    orders_per_day: float = 14
    checkouts_per_day: float = 28
    cod_share: float = 0.3
    cod_confirm: float = 0.7
    cod_cancel: float = 0.1
    ndr_share: float = 0.08
    read_share: float = 0.6
    stop_share: float = 0.01
    question_share: float = 0.06  # writes a question after the shipping update: a hand-off
    checkout_base: float = 0.08  # buys anyway, without a reminder
    checkout_reminded: float = 0.30  # buys after a reminder
    stalled_payments_per_day: float = 12  # prepaid orders whose payment stays pending
    payment_base: float = 0.25  # pays anyway
    payment_reminded: float = 0.55  # pays after the pay-link reminder
    reorder_base: float = 0.10
    reorder_reminded: float = 0.40
    seed: int = 7

    @property
    def true_lift(self) -> dict[str, float]:
        return {"checkout_recovery": round(self.checkout_reminded - self.checkout_base, 4),
                "payment_recovery": round(self.payment_reminded - self.payment_base, 4),
                "reorder": round(self.reorder_reminded - self.reorder_base, 4)}


@dataclass
class Customer:
    phone: str  # national number, 10 digits
    customer_id: int
    first_name: str

    @property
    def wa_id(self) -> str:
        return "91" + self.phone


@dataclass(order=True)
class _Due:
    at: datetime
    seq: int
    action: Callable[[], None] = field(compare=False)


class Store:
    """Plays the store and its customers against the connector at ``base``."""

    def __init__(self, base: str, *, shop: str, shopify_secret: str, app_secret: str, phone_number_id: str,
                 whatsapp: SandboxWhatsApp, plan: Plan, start: datetime, templates: dict[str, str]):
        self.http = httpx.Client(base_url=base, timeout=30)
        self.shop, self.shopify_secret, self.app_secret, self.phone_number_id = shop, shopify_secret, app_secret, phone_number_id
        self.wa, self.plan, self.start = whatsapp, plan, start
        self.templates = templates  # journey step -> template name, to read what reached a customer
        self.rng = random.Random(plan.seed)
        self.queue: list[_Due] = []
        self._seq = itertools.count()
        self._ids = itertools.count(1)
        self._seen_calls = 0
        self.customers: list[Customer] = []
        self.by_wa: dict[str, Customer] = {}
        self.received: dict[str, list[tuple[str, str]]] = {}  # wa_id -> [(template, wamid)]
        self.reorder_reminders: dict[str, list[str]] = {}  # wa_id -> products her reorder reminders named, not yet decided on
        self.stats = {"webhooks": 0, "refused": 0, "retries": 0, "orders": 0, "checkouts": 0, "recovered": 0, "reorders": 0,
                      "stalled": 0, "paid": 0, "questions": 0}
        self._pending_orders: dict[int, tuple[Customer, dict[str, Any], bool, tuple, int]] = {}
        self._cod_open: dict[str, int] = {}  # wa_id -> the COD order waiting for an answer
        self._cancelled: set[int] = set()
        self.queue_now = start
        self.outcomes: dict[str, dict[str, list[int]]] = {j: {"reminded": [], "not": []} for j in plan.true_lift}

    # -- scheduling -----------------------------------------------------------------------
    def at(self, when: datetime, action: Callable[[], None]) -> None:
        heapq.heappush(self.queue, _Due(when, next(self._seq), action))

    def run_until(self, now: datetime) -> int:
        """Do everything due by ``now``; returns how many actions ran."""
        n = 0
        while self.queue and self.queue[0].at <= now:
            due = heapq.heappop(self.queue)
            self.queue_now = due.at
            due.action()
            n += 1
        self.queue_now = now
        return n

    def plan_days(self) -> None:
        """Schedule every order and checkout of the simulated period."""
        for day in range(self.plan.days):
            for _ in range(self._poisson(self.plan.orders_per_day)):
                self.at(self._moment(day), self._new_order)
            for _ in range(self._poisson(self.plan.checkouts_per_day)):
                self.at(self._moment(day), self._new_checkout)
            for _ in range(self._poisson(self.plan.stalled_payments_per_day)):
                self.at(self._moment(day), self._new_stalled_payment)

    def _moment(self, day: int) -> datetime:
        # shoppers in India: mostly 09:00-23:00 IST (03:30-17:30 UTC)
        return self.start + timedelta(days=day, hours=3.5 + self.rng.random() * 14)

    def _poisson(self, mean: float) -> int:
        # Knuth's method is fine for small means
        limit, k, p = pow(2.718281828459045, -mean), 0, 1.0
        while True:
            p *= self.rng.random()
            if p <= limit:
                return k
            k += 1

    # -- people ---------------------------------------------------------------------------
    def _customer(self) -> Customer:
        n = next(self._ids)
        c = Customer(f"9{self.rng.randint(100000000, 999999999)}", 7_000_000 + n, self.rng.choice(FIRST_NAMES))
        while c.wa_id in self.by_wa:
            c.phone = f"9{self.rng.randint(100000000, 999999999)}"
        self.customers.append(c)
        self.by_wa[c.wa_id] = c
        return c

    # -- the store's webhooks -------------------------------------------------------------------
    def _shopify(self, topic: str, payload: dict[str, Any], *, retry: bool = False, secret: str | None = None) -> int:
        body = json.dumps(payload).encode()
        sig = base64.b64encode(hmac.new((secret or self.shopify_secret).encode(), body, hashlib.sha256).digest()).decode()
        headers = {"Content-Type": "application/json", "X-Shopify-Topic": topic, "X-Shopify-Hmac-Sha256": sig,
                   "X-Shopify-Shop-Domain": self.shop, "X-Shopify-Event-Id": f"ev-{next(self._ids)}",
                   "X-Shopify-Webhook-Id": f"wh-{next(self._ids)}", "X-Shopify-API-Version": "2026-07"}
        code = self.http.post("/webhooks/shopify", content=body, headers=headers).status_code
        self.stats["webhooks"] += 1
        if code != 200:
            self.stats["refused"] += 1
            if secret is None:
                raise RuntimeError(f"the connector answered {code} to a valid {topic} webhook")
        if retry:  # the platform did not hear the 200 and delivers again: same event id
            self.http.post("/webhooks/shopify", content=body, headers=headers)
            self.stats["retries"] += 1
        return code

    def _whatsapp(self, value: dict[str, Any]) -> None:
        envelope = {"object": "whatsapp_business_account", "entry": [{"id": "1", "changes": [{"field": "messages", "value": {
            "messaging_product": "whatsapp", "metadata": {"display_phone_number": "15550000000", "phone_number_id": self.phone_number_id},
            **value}}]}]}
        body = json.dumps(envelope).encode()
        sig = "sha256=" + hmac.new(self.app_secret.encode(), body, hashlib.sha256).hexdigest()
        code = self.http.post("/webhooks/whatsapp", content=body, headers={"Content-Type": "application/json", "X-Hub-Signature-256": sig}).status_code
        self.stats["webhooks"] += 1
        if code != 200:
            raise RuntimeError(f"the connector answered {code} to a signed WhatsApp webhook")

    def _order_payload(self, c: Customer, when: datetime, *, product: tuple, qty: int, cod: bool, checkout_token: str | None,
                       stalled: bool = False) -> dict[str, Any]:
        pid, vid, title, price, _cycle = product
        oid = 5_000_000 + next(self._ids)
        stamp = when.isoformat()
        return {
            "id": oid, "name": f"#{oid - 4_990_000}", "created_at": stamp, "updated_at": stamp, "processed_at": stamp, "cancelled_at": None,
            "financial_status": "pending" if cod or stalled else "paid", "fulfillment_status": None,
            "payment_gateway_names": ["Cash on Delivery (COD)"] if cod else ["razorpay"],
            "total_price": f"{price * qty}.00", "currency": "INR", "phone": "+91" + c.phone, "email": None,
            "customer": {"id": c.customer_id, "first_name": c.first_name, "last_name": "Demo", "phone": "+91" + c.phone},
            "shipping_address": {"phone": "+91" + c.phone, "country_code": "IN"},
            "line_items": [{"id": oid * 10, "product_id": pid, "variant_id": vid, "title": title, "quantity": qty, "price": f"{price}.00",
                            "sku": f"SKU-{pid}"}],
            "tags": "", "test": False, "checkout_token": checkout_token, "order_status_url": f"https://{self.shop}/orders/{oid}",
            "buyer_accepts_marketing": True,
        }

    def _place_order(self, c: Customer, when: datetime, product: tuple, *, cod: bool | None = None, checkout_token: str | None = None,
                     qty: int | None = None, stalled: bool = False) -> None:
        cod = self.rng.random() < self.plan.cod_share if cod is None else cod
        qty = qty or self.rng.choice([1, 1, 1, 2])
        order = self._order_payload(c, when, product=product, qty=qty, cod=cod, checkout_token=checkout_token, stalled=stalled)
        self._consent(c, when)
        self._shopify("orders/create", order, retry=self.rng.random() < 0.1)
        self.stats["orders"] += 1
        if cod:
            self._cod_open[c.wa_id] = order["id"]  # answered when the ask reaches them (see react)
        self._pending_orders[order["id"]] = (c, order, cod, product, qty)
        if stalled:  # the customer decides whether to pay after the pay-link reminder (60 minutes) would have reached them
            self.at(when + timedelta(hours=3 + self.rng.random() * 6), lambda: self._payment_decision(order["id"]))
            return
        self.at(when + timedelta(days=1, hours=self.rng.random() * 6), lambda: self._ship(order["id"]))

    @property
    def first_buyer(self) -> Customer | None:
        """The customer of the first order placed (for showing one customer's context); None
        when the simulation placed none (a short run at a small ``--scale``)."""
        first = next(iter(self._pending_orders.values()), None)
        return first[0] if first is not None else None

    def _consent(self, c: Customer, when: datetime) -> None:
        if getattr(c, "_consented", False):
            return
        c._consented = True  # type: ignore[attr-defined]
        self._shopify("customers_whats_app_marketing_consent/update", {
            "customer_id": c.customer_id, "phone_number": "+91" + c.phone,
            "whats_app_marketing_consent": {"state": "subscribed", "opt_in_level": "single_opt_in", "updated_at": when.isoformat(),
                                            "collected_from": "other"}})

    def _new_order(self) -> None:
        now = self.queue_now
        c = self.rng.choice(self.customers) if self.customers and self.rng.random() < 0.2 else self._customer()
        self._place_order(c, now, self.rng.choice(PRODUCTS))

    def _new_checkout(self) -> None:
        now = self.queue_now
        c = self._customer()
        self._consent(c, now)
        product = self.rng.choice(PRODUCTS)
        token = f"chk{next(self._ids):06d}"
        stamp = now.isoformat()
        self._shopify("checkouts/create", {
            "id": 9_000_000 + next(self._ids), "token": token, "created_at": stamp, "updated_at": stamp, "completed_at": None,
            "phone": "+91" + c.phone, "email": None, "abandoned_checkout_url": f"https://{self.shop}/checkouts/{token}/recover",
            "total_price": f"{product[3]}.00", "currency": "INR", "buyer_accepts_marketing": True, "buyer_accepts_sms_marketing": True,
            "customer": {"id": c.customer_id, "first_name": c.first_name, "phone": "+91" + c.phone},
            "line_items": [{"product_id": product[0], "variant_id": product[1], "title": product[2], "quantity": 1, "price": f"{product[3]}.00"}],
            "shipping_address": {"country_code": "IN", "phone": "+91" + c.phone},
        })
        self.stats["checkouts"] += 1
        # the customer decides after the first two reminders would have reached them
        self.at(now + timedelta(hours=9), lambda: self._checkout_decision(c, token, product))

    def _new_stalled_payment(self) -> None:
        now = self.queue_now
        c = self._customer()
        self.stats["stalled"] += 1
        self._place_order(c, now, self.rng.choice(PRODUCTS), cod=False, stalled=True)

    def _payment_decision(self, order_id: int) -> None:
        c, order, _cod, _product, _qty = self._pending_orders[order_id]
        remind = self.templates["payment_recovery.remind"]
        reminded = any(t == remind for t, _ in self.received.get(c.wa_id, []))
        paid = self.rng.random() < (self.plan.payment_reminded if reminded else self.plan.payment_base)
        self.outcomes["payment_recovery"]["reminded" if reminded else "not"].append(int(paid))
        if reminded:
            self.received[c.wa_id] = [(t, w) for t, w in self.received[c.wa_id] if t != remind]
        if not paid:  # the store cancels an order left unpaid for two days
            self.at(datetime.fromisoformat(order["created_at"]) + timedelta(days=2), lambda: self._order_cancelled(order_id, "other"))
            return
        self.stats["paid"] += 1
        stamp = self.queue_now.isoformat()
        self._shopify("orders/paid", {**order, "financial_status": "paid", "updated_at": stamp})
        self.at(self.queue_now + timedelta(days=1, hours=self.rng.random() * 6), lambda: self._ship(order_id))

    def _checkout_decision(self, c: Customer, token: str, product: tuple) -> None:
        reminded = any(t == self.templates["checkout_recovery.first"] for t, _ in self.received.get(c.wa_id, []))
        p = self.plan.checkout_reminded if reminded else self.plan.checkout_base
        bought = self.rng.random() < p
        self.outcomes["checkout_recovery"]["reminded" if reminded else "not"].append(int(bought))
        if bought:
            self.stats["recovered"] += 1
            self._place_order(c, self.queue_now, product, cod=False, checkout_token=token, qty=1)

    def _order_cancelled(self, order_id: int, reason: str = "customer") -> None:
        _c, order, _cod, _product, _qty = self._pending_orders[order_id]
        stamp = self.queue_now.isoformat()
        self._cancelled.add(order_id)
        self._shopify("orders/cancelled", {**order, "cancelled_at": stamp, "updated_at": stamp, "cancel_reason": reason})

    def _ship(self, order_id: int) -> None:
        c, order, cod, product, qty = self._pending_orders[order_id]
        if order_id in self._cancelled:
            return
        now = self.queue_now
        fid = 8_000_000 + next(self._ids)
        base = {"id": fid, "order_id": order_id, "status": "success", "tracking_company": "Delhivery", "tracking_number": f"DL{fid}",
                "tracking_url": f"https://track.example/DL{fid}", "created_at": now.isoformat()}
        self._shopify("fulfillments/create", {**base, "shipment_status": "in_transit", "updated_at": now.isoformat()})
        failed = self.rng.random() < self.plan.ndr_share
        done = now + timedelta(days=2, hours=self.rng.random() * 12)

        def deliver() -> None:
            self._shopify("fulfillments/update", {**base, "shipment_status": "attempted_delivery" if failed else "delivered",
                                                  "updated_at": self.queue_now.isoformat()})
            # on the product's cycle the customer runs low and decides whether to reorder (after a
            # failed delivery the parcel comes on the second try, about when the connector assumes)
            cycle = product[4] * qty
            self.at(self.queue_now + timedelta(days=cycle + 1), lambda: self._reorder_decision(c, product))

        self.at(done, deliver)

    def _reorder_decision(self, c: Customer, product: tuple) -> None:
        # a reminder about this product moves her (one about another product she also buys does not,
        # and is still there when that product's turn comes)
        waiting = self.reorder_reminders.get(c.wa_id, [])
        reminded = product[2] in waiting
        p = self.plan.reorder_reminded if reminded else self.plan.reorder_base
        bought = self.rng.random() < p
        self.outcomes["reorder"]["reminded" if reminded else "not"].append(int(bought))
        if reminded:
            waiting.remove(product[2])
        if bought:
            self.stats["reorders"] += 1
            self._place_order(c, self.queue_now, product, cod=False)

    # -- customers react to what reached them -----------------------------------------------------
    def react(self, now: datetime) -> int:
        """Read the sandbox WhatsApp's new accepted messages; schedule each customer's reaction."""
        calls = self.wa.accepted()
        new, self._seen_calls = calls[self._seen_calls:], len(calls)
        # the dispatcher sends concurrently, so the order calls arrive in varies from run to run;
        # reacting in a stable order keeps the random draws, and so the whole run, fixed for a seed
        new.sort(key=lambda call: (call.to, call.template or "", call.callback_data or ""))
        for call in new:
            c = self.by_wa.get(call.to.lstrip("+"))
            if c is None or call.wamid is None:
                continue
            self.received.setdefault(c.wa_id, []).append((call.template or "", call.wamid))
            if call.template == self.templates.get("reorder.reminder"):
                self.reorder_reminders.setdefault(c.wa_id, []).extend(p for p in call.params if p in PRODUCT_TITLES)
            self.at(now + timedelta(minutes=5), lambda call=call: self._status(call, "delivered"))
            if self.rng.random() < self.plan.read_share:
                self.at(now + timedelta(minutes=20), lambda call=call: self._status(call, "read"))
            if call.template == self.templates.get("cod_confirmation.ask"):
                r = self.rng.random()
                if r < self.plan.cod_confirm:
                    self.at(now + timedelta(minutes=30), lambda c=c, call=call: self._tap(c, call, "cod_confirm"))
                elif r < self.plan.cod_confirm + self.plan.cod_cancel:
                    order_id = self._cod_open.get(c.wa_id)
                    self.at(now + timedelta(minutes=45), lambda c=c, call=call: self._tap(c, call, "cod_cancel"))
                    if order_id is not None:  # the connector's write-back cancels it; Shopify then says so
                        self._cancelled.add(order_id)
                        self.at(now + timedelta(hours=2), lambda order_id=order_id: self._order_cancelled(order_id))
            elif call.template == self.templates.get("delivery.shipped") and self.rng.random() < self.plan.question_share:
                question = self.rng.choice(QUESTIONS)
                self.stats["questions"] += 1
                self.at(now + timedelta(hours=1 + self.rng.random() * 2), lambda c=c, question=question: self._text(c, question))
            elif self.rng.random() < self.plan.stop_share:
                self.at(now + timedelta(minutes=10), lambda c=c: self._text(c, "STOP"))
        return len(new)

    def _status(self, call: Any, status: str) -> None:
        item = {"id": call.wamid, "status": status, "timestamp": str(int(self.queue_now.timestamp())), "recipient_id": call.to.lstrip("+")}
        if call.callback_data:
            item["biz_opaque_callback_data"] = call.callback_data
        self._whatsapp({"statuses": [item]})

    def _tap(self, c: Customer, call: Any, payload: str) -> None:
        self._whatsapp({"contacts": [{"profile": {"name": c.first_name}, "wa_id": c.wa_id}],
                        "messages": [{"from": c.wa_id, "id": f"wamid.in{next(self._ids)}", "timestamp": str(int(self.queue_now.timestamp())),
                                      "type": "button", "button": {"payload": payload, "text": payload},
                                      "context": {"from": "15550000000", "id": call.wamid}}]})

    def _text(self, c: Customer, text: str) -> None:
        self._whatsapp({"contacts": [{"profile": {"name": c.first_name}, "wa_id": c.wa_id}],
                        "messages": [{"from": c.wa_id, "id": f"wamid.in{next(self._ids)}", "timestamp": str(int(self.queue_now.timestamp())),
                                      "type": "text", "text": {"body": text}}]})

    def forged(self) -> int:
        """A delivery the connector must refuse: signed with the wrong secret."""
        c = self._customer()
        order = self._order_payload(c, self.queue_now, product=PRODUCTS[0], qty=1, cod=False, checkout_token=None)
        return self._shopify("orders/create", order, secret="not-the-secret")

    def close(self) -> None:
        self.http.close()
