"""What decide cannot see alone, through the app: which contact an order belongs to (its
email, when it has no phone), and opt-outs that come from outside the chat."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone
from typing import Any

from sqlalchemy import select

from connector.config import parse_settings
from connector.reorder.windows import refresh_windows, run_reorder_tick
from connector.storage import models as m
from tests.conftest import FIXTURES, PHONE_ID_A, SECRETS, settings_dict
from tests.helpers import dumps, load_json, meta_signature, running_app, shopify_headers

T0 = datetime(2026, 11, 20, 6, 30, tzinfo=timezone.utc)
H, D, MIN = timedelta(hours=1), timedelta(days=1), timedelta(minutes=1)


# ---- through the app: the facts decide is given ---------------------------------------------------

class Clock:
    def __init__(self, now: datetime):
        self.now = now

    def __call__(self) -> datetime:
        return self.now


CART_TEMPLATES = [
    {"step": "checkout_recovery.first", "name": "cart_v1", "category": "marketing", "body_text": "You left {{1}}: {{2}}",
     "body": ["reorder.product", "checkout.recovery_url"]},
    {"step": "checkout_recovery.second", "name": "cart_v2", "category": "marketing", "body_text": "Still there: {{1}}",
     "body": ["checkout.recovery_url"]},
]
CART_JOURNEY = {"checkout_recovery": {"abandon_after_minutes": 30, "ladder_minutes": [0, 360]}}
SHOPS = {"shop-a": ("shop-a.myshopify.com", SECRETS["shop_a"]), "shop-b": ("shop-b.myshopify.com", SECRETS["shop_b"])}


def shopify_app(db_url: str, *stores: int, **store: Any):
    raw = settings_dict(db_url)
    for i in stores:
        raw["stores"][i].update(policy={"quiet_hours": ""}, **store)
    return parse_settings(raw, environ={})


def post(client, topic: str, payload: dict, shop: str = "shop-a") -> None:
    domain, secret = SHOPS[shop]
    body = dumps(payload)
    assert client.post("/webhooks/shopify", content=body, headers=shopify_headers(body, secret, domain, topic)).status_code == 200


def post_wa(client, value: dict, phone_number_id: str = PHONE_ID_A) -> None:
    env = {"object": "whatsapp_business_account", "entry": [{"id": "1", "changes": [{"field": next(iter(value)), "value": {
        "messaging_product": "whatsapp", "metadata": {"display_phone_number": "1", "phone_number_id": phone_number_id}, **value}}]}]}
    env["entry"][0]["changes"][0]["field"] = "user_preferences" if "user_preferences" in value else "messages"
    body = json.dumps(env).encode()
    assert client.post("/webhooks/whatsapp", content=body, headers={"X-Hub-Signature-256": meta_signature(body, SECRETS["wa_app"])}).status_code == 200


def abandoned(token: str, phone: str | None, email: str) -> dict:
    c = load_json(FIXTURES / "shopify" / "checkouts_create.sample.json")
    c.update(token=token, phone=phone, email=email, buyer_accepts_marketing=True, completed_at=None,
             created_at="2026-11-20T06:00:00Z", updated_at="2026-11-20T06:00:00Z")
    return c


def runs(runtime) -> dict[tuple[int, str, str], Any]:
    with runtime.db.engine.connect() as conn:
        return {(r.store_id, r.journey, r.subject): r for r in conn.execute(select(m.JourneyRun))}


def steps(runtime, journey: str | None = None) -> list[tuple[str, str, str]]:
    with runtime.db.engine.connect() as conn:
        q = select(m.OutboxMessage).where(m.OutboxMessage.channel == "whatsapp").order_by(m.OutboxMessage.id)
        return [(o.journey, o.payload["subject"], o.step) for o in conn.execute(q) if journey in (None, o.journey)]


def test_a_phone_less_order_with_the_same_email_ends_the_checkout_run_as_recovered(db_url):
    settings = shopify_app(db_url, 0, 1, templates=CART_TEMPLATES, journeys=CART_JOURNEY)
    clock = Clock(T0)
    with running_app(settings) as (client, runtime):
        runtime.processor.clock = clock
        post(client, "checkouts/create", abandoned("tokA", "+91 98765 43210", "Asha.Rao@Example.com"))
        post(client, "checkouts/create", abandoned("tokB", "+91 98765 43210", "Asha.Rao@Example.com"), shop="shop-b")  # same person, other store
        runtime.processor.drain()
        clock.now = T0 + 10 * MIN  # ten minutes after abandonment: the first reminders
        runtime.processor.process_timers()
        o = load_json(FIXTURES / "shopify" / "orders_create.sample.json")
        o.pop("customer")  # a guest order: no customer id, and no phone anywhere
        o["shipping_address"]["phone"] = o["billing_address"]["phone"] = None
        o.update(id=5555, name="#5555", phone=None, email="  asha.rao@EXAMPLE.com ", contact_email=None, checkout_token="another",
                 financial_status="paid", payment_gateway_names=["razorpay"], cancelled_at=None, test=False,
                 created_at="2026-11-20T07:00:00Z", updated_at="2026-11-20T07:00:00Z")
        post(client, "orders/create", o)
        runtime.processor.drain()
        clock.now = T0 + 8 * H  # the second reminders would be due
        runtime.processor.process_timers()
        found = runs(runtime)
        with runtime.db.engine.connect() as conn:
            placed = conn.execute(select(m.Order.contact_id, m.Order.total)).one()
        sent = steps(runtime)
    a, b = runtime.store_ids["shop-a"], runtime.store_ids["shop-b"]
    mine = found[(a, "checkout_recovery", "checkout:tokA")]
    assert (mine.status, mine.state["outcome"], mine.state["recovered"], mine.state["order_id"]) == ("finished", "recovered", True, "5555")
    assert mine.state["revenue"] == str(placed.total) and placed.contact_id == mine.contact_id
    other = found[(b, "checkout_recovery", "checkout:tokB")]
    assert other.status == "active" and "order_id" not in other.state  # shop-b's customer never ordered there
    assert sent.count(("checkout_recovery", "checkout:tokA", "second")) == 0
    assert ("checkout_recovery", "checkout:tokB", "second") in sent


def test_opt_outs_from_outside_the_chat_end_checkout_runs_with_their_reason(db_url):
    settings = shopify_app(db_url, 0, templates=CART_TEMPLATES, journeys=CART_JOURNEY)
    clock = Clock(T0)
    with running_app(settings) as (client, runtime):
        runtime.processor.clock = clock
        post(client, "checkouts/create", abandoned("tokA", "+91 98765 43210", "asha@example.com"))  # customer 603851970716743426
        other = abandoned("tokB", "+91 98123 45678", "ravi@example.com")
        other["customer"] = {**other["customer"], "id": 7001}
        post(client, "checkouts/create", other)
        runtime.processor.drain()
        clock.now = T0 + 10 * MIN
        runtime.processor.process_timers()
        # A unsubscribes in the store (SMS marketing consent webhook: no phone, the customer id); B texts STOP
        post(client, "customers_marketing_consent/update", {"id": 603851970716743426, "phone": None, "sms_marketing_consent": {
            "state": "unsubscribed", "opt_in_level": "single_opt_in", "consent_updated_at": "2026-11-20T06:45:00Z",
            "consent_collected_from": "OTHER"}})
        post_wa(client, {"contacts": [{"profile": {"name": "Ravi"}, "wa_id": "919812345678"}], "messages": [
            {"from": "919812345678", "id": "wamid.S1", "timestamp": "1795158000", "type": "text", "text": {"body": "Stop"}}]})
        runtime.processor.drain()
        clock.now = T0 + 8 * H
        runtime.processor.process_timers()
        found = runs(runtime)
        sent = steps(runtime)
    sid = runtime.store_ids["shop-a"]
    a, b = found[(sid, "checkout_recovery", "checkout:tokA")], found[(sid, "checkout_recovery", "checkout:tokB")]
    assert (a.status, a.state["outcome"], a.state["opted_out_via"]) == ("finished", "opted_out", "shopify_sms_marketing")
    assert (b.status, b.state["outcome"], b.state["opted_out_via"]) == ("finished", "opted_out", "whatsapp_keyword_stop")
    assert a.next_due_at is None and b.next_due_at is None
    assert [s for _, _, s in sent] == ["first", "first"]  # no second reminder for either


def test_whatsapps_own_marketing_stop_ends_a_reorder_run_before_its_follow_up(db_url):
    templates = [
        {"step": "reorder.reminder", "name": "reorder_v1", "category": "marketing", "body_text": "Restock {{1}}: {{2}}",
         "body": ["reorder.product", "reorder.link"]},
        {"step": "reorder.follow_up", "name": "reorder_nudge_v1", "category": "marketing", "body_text": "Still time: {{1}}", "body": ["reorder.link"]},
    ]
    settings = shopify_app(db_url, 0, templates=templates, journeys={"reorder": {"cycles": {"NEEM-100": "30d"}, "follow_up_days": 3}})
    clock = Clock(T0)
    with running_app(settings) as (client, runtime):
        runtime.processor.clock = clock
        consent = load_json(FIXTURES / "shopify" / "customers_whats_app_marketing_consent_update.sample.json")
        consent.update(customer_id=115310627314723954, phone_number="+919876543210")
        consent["whats_app_marketing_consent"] = {"state": "subscribed", "opt_in_level": "single_opt_in", "updated_at": "2026-08-01T00:00:00Z",
                                                  "collected_from": "other"}
        post(client, "customers_whats_app_marketing_consent/update", consent)
        o = load_json(FIXTURES / "shopify" / "orders_create.sample.json")
        o.update(id=1001, name="#1001", financial_status="paid", payment_gateway_names=["razorpay"], cancelled_at=None, test=False,
                 created_at=T0.isoformat(), updated_at=T0.isoformat(), phone="+91 98765 43210", checkout_token="tok1001")
        o["line_items"] = [{**o["line_items"][0], "id": 10010, "product_id": 9001, "variant_id": 49001, "sku": "NEEM-100",
                            "title": "Neem face wash", "quantity": 1, "price": "249.50"}]
        post(client, "orders/create", o)
        f = load_json(FIXTURES / "shopify" / "fulfillments_update.sample.json")
        f.update(id=77, order_id=1001, status="success", shipment_status="delivered", created_at=T0.isoformat(), updated_at=(T0 + 4 * D).isoformat())
        post(client, "fulfillments/update", f)
        runtime.processor.drain()
        store, sid = settings.stores[0], runtime.store_ids["shop-a"]
        clock.now = T0 + 31 * D + H  # delivered (T0 + 4 days) + 30 days - 3 days lead
        refresh_windows(runtime.db, store, sid, clock.now)
        run_reorder_tick(runtime.db, store, sid, clock.now)
        post_wa(client, {"contacts": [{"profile": {"name": "Asha"}, "wa_id": "919876543210"}], "user_preferences": [
            {"wa_id": "919876543210", "detail": "User requested to stop marketing messages", "category": "marketing_messages",
             "value": "stop", "timestamp": int((clock.now + H).timestamp())}]})
        runtime.processor.drain()
        clock.now += 4 * D  # the follow-up would be due
        runtime.processor.process_timers()
        [r] = [r for k, r in runs(runtime).items() if k[1] == "reorder"]
        sent = steps(runtime, "reorder")
    assert (r.status, r.state["outcome"], r.state["opted_out_via"]) == ("finished", "opted_out", "whatsapp_preference_stop")
    assert [s for _, _, s in sent] == ["reminder"]
