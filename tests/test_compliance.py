"""Privacy requests over HTTP (Shopify's mandatory topics), on SQLite and PostgreSQL.

One customer with a checkout, an order, messages both ways, a delivery status and a
hand-off; then customers/data_request (the export, over the admin API and the CLI),
customers/redact (every column of every table scanned afterwards, logs too, aggregates
unchanged), shop/redact (every customer of that store, none of another's), and forged
requests (401, nothing stored).
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
from collections import Counter
from contextlib import contextmanager
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path

import pytest
from sqlalchemy import func, select
from typer.testing import CliRunner

from connector.config import parse_settings
from connector.logs import LogfmtFormatter
from connector.outbox.dispatcher import Dispatcher
from connector.outbox.senders import DryRunSender
from connector.reports import build_report, week_period
from connector.storage import models as m
from connector.storage.inbox import with_body
from tests.conftest import FIXTURES, PHONE_ID_A, PHONE_ID_B, SECRETS, settings_dict
from tests.helpers import dumps, load_json, meta_signature, running_app, shopify_headers

T0 = datetime(2026, 11, 20, 6, 30, tzinfo=timezone.utc)
ADMIN = {"Authorization": f"Bearer {SECRETS['admin']}"}
SHOP_A, SHOP_B = "shop-a.myshopify.com", "shop-b.myshopify.com"


class Person:
    def __init__(self, first: str, last: str, email: str, phone: str, e164: str, customer_id: int):
        self.first, self.last, self.email, self.phone, self.e164, self.customer_id = first, last, email, phone, e164, customer_id
        self.wa_id = e164.lstrip("+")
        # a real wamid is base64 around the sender's number: it is personal data too
        self.inbound_wamid = "wamid." + base64.b64encode(b"\x15\x02\x00\x12\x18\x0c" + self.wa_id.encode() + b"\x15\x02\x00\x12\x18\x16" + b"3EB0C431C26A1916E0").decode()

    def needles(self) -> list[str]:
        national = self.wa_id[2:] if self.e164.startswith("+91") else self.wa_id[1:]
        spaced = f"{national[:5]} {national[5:]}"
        return [self.e164, self.wa_id, national, spaced, self.first, self.last, self.email, self.inbound_wamid]


MEENA = Person("Meenakshi", "Raghunathan", "meenakshi.r@example.org", "+91 98765 43210", "+919876543210", 7720001)
KABIR = Person("Kabirdas", "Venkataraman", "kabir.v@example.net", "098123 45678", "+919812345678", 7720002)

TEMPLATES = [
    {"step": "order_confirmation.sent", "name": "order_ok_v1", "category": "utility",
     "body_text": "Hi {{1}}, order {{2}} is confirmed", "body": ["customer.first_name", "order.name"]},
    {"step": "checkout_recovery.first", "name": "cart_v1", "category": "marketing",
     "body_text": "You left {{1}}: {{2}}", "body": ["reorder.product", "checkout.recovery_url"]},
]


class Clock:
    def __init__(self, now: datetime):
        self.now = now

    def __call__(self) -> datetime:
        return self.now


def make_settings(db_url: str):
    raw = settings_dict(db_url)
    for store in raw["stores"][:2]:
        store.update(templates=TEMPLATES, policy={"quiet_hours": ""},
                     journeys={"order_confirmation": {}, "checkout_recovery": {"abandon_after_minutes": 30, "ladder_minutes": [0]}},
                     stages={"post_purchase": {"owner": "Care desk", "notify_url": "https://hooks.slack.example/services/T0/B0/X"}})
    return parse_settings(raw, environ={})


def _address(p: Person) -> dict:
    return {"first_name": p.first, "last_name": p.last, "name": f"{p.first} {p.last}", "phone": p.phone, "address1": "12 Lake Road",
            "city": "Chennai", "zip": "600001", "country": "India", "country_code": "IN", "province": "Tamil Nadu", "company": None}


def order_payload(p: Person, order_id: int, at: str, checkout_token: str | None = None) -> dict:
    o = load_json(FIXTURES / "shopify" / "orders_create.sample.json")
    o.update(id=order_id, name=f"#{order_id}", financial_status="paid", payment_gateway_names=["razorpay"], cancelled_at=None,
             cancel_reason=None, test=False, created_at=at, updated_at=at, phone=p.phone, email=p.email, contact_email=p.email,
             checkout_token=checkout_token, currency="INR", tags="",
             order_status_url=f"https://shop-a.example/orders/{order_id}/authenticate?key=os-{order_id}")
    o["customer"] = {**o["customer"], "id": p.customer_id, "first_name": p.first, "last_name": p.last, "email": p.email, "phone": p.phone,
                     "default_address": {**_address(p), "customer_id": p.customer_id}}
    o["billing_address"] = o["shipping_address"] = _address(p)
    return o


def recovery_key(token: str) -> str:
    return f"rk-{token}-9f8e7d6c"


def checkout_payload(p: Person, token: str) -> dict:
    c = load_json(FIXTURES / "shopify" / "checkouts_create.sample.json")
    c.update(token=token, phone=p.phone, email=p.email, buyer_accepts_marketing=True, buyer_accepts_sms_marketing=True, completed_at=None, currency="INR",
             created_at="2026-11-20T06:00:00Z", updated_at="2026-11-20T06:00:00Z",
             abandoned_checkout_url=f"https://shop-a.example/checkouts/{token}/recover?key={recovery_key(token)}")
    c["customer"] = {**c["customer"], "id": p.customer_id, "first_name": p.first, "last_name": p.last, "email": p.email, "phone": p.phone,
                     "default_address": _address(p)}
    c["billing_address"] = c["shipping_address"] = _address(p)
    return c


def post_shopify(client, payload: dict, topic: str, shop: str = SHOP_A, secret: str = SECRETS["shop_a"], **kw):
    body = dumps(payload)
    return client.post("/webhooks/shopify", content=body, headers=shopify_headers(body, secret, shop, topic, **kw))


def post_whatsapp(client, value: dict, phone_id: str = PHONE_ID_A):
    env = {"object": "whatsapp_business_account", "entry": [{"id": "1", "changes": [{"field": "messages", "value": {
        "messaging_product": "whatsapp", "metadata": {"display_phone_number": "1", "phone_number_id": phone_id}, **value}}]}]}
    body = json.dumps(env).encode()
    return client.post("/webhooks/whatsapp", content=body, headers={"X-Hub-Signature-256": meta_signature(body, SECRETS["wa_app"])})


def inbound_text(p: Person, text: str, at: datetime, phone_id: str = PHONE_ID_A, wamid: str | None = None) -> dict:
    return {"contacts": [{"profile": {"name": f"{p.first} {p.last}"}, "wa_id": p.wa_id}],
            "messages": [{"from": p.wa_id, "id": wamid or p.inbound_wamid, "timestamp": str(int(at.timestamp())), "type": "text",
                          "text": {"body": text}}]}


def delivered(p: Person, wamid: str, at: datetime) -> dict:
    return {"statuses": [{"id": wamid, "status": "delivered", "timestamp": str(int(at.timestamp())), "recipient_id": p.wa_id}]}


def dispatch(runtime, settings, clock) -> DryRunSender:
    sender = DryRunSender()
    asyncio.run(Dispatcher(runtime.db, settings, runtime.store_ids, sender, clock=clock).drain())
    return sender


def customer_story(client, runtime, settings, clock, p: Person, *, order_id: int, token: str, shop: str = SHOP_A,
                   secret: str = SECRETS["shop_a"], phone_id: str = PHONE_ID_A) -> None:
    """Checkout, a reminder, the order (recovered) and its confirmation, a delivery status, a free-text reply (a hand-off)."""
    clock.now = T0
    assert post_shopify(client, checkout_payload(p, token), "checkouts/create", shop, secret).status_code == 200
    runtime.processor.drain()
    clock.now = T0 + timedelta(minutes=10)
    runtime.processor.process_timers()  # the checkout reminder
    dispatch(runtime, settings, clock)
    clock.now = T0 + timedelta(minutes=30)
    assert post_shopify(client, order_payload(p, order_id, "2026-11-20T07:00:00Z", token), "orders/create", shop, secret).status_code == 200
    runtime.processor.drain()
    dispatch(runtime, settings, clock)  # the order confirmation
    with runtime.db.engine.connect() as conn:
        wamid = conn.execute(select(m.OutboxMessage.wamid).where(m.OutboxMessage.step == "sent",
                                                                 m.OutboxMessage.idempotency_key.endswith(f":order:{order_id}"))).scalar_one()
    clock.now = T0 + timedelta(minutes=40)
    assert post_whatsapp(client, delivered(p, wamid, clock.now), phone_id).status_code == 200
    text = f"Hi, this is {p.first} {p.last}. Please call me on {p.phone} or mail {p.email}"
    assert post_whatsapp(client, inbound_text(p, text, clock.now, phone_id), phone_id).status_code == 200
    runtime.processor.drain()


def request_payload(p: Person, orders: list[int], *, data_request: bool = False, shop: str = SHOP_A) -> dict:
    body = {"shop_id": 954889, "shop_domain": shop, "customer": {"id": p.customer_id, "email": p.email, "phone": p.phone}}
    if data_request:
        return {**body, "orders_requested": orders, "data_request": {"id": 9999}}
    return {**body, "orders_to_redact": orders}


# -- reading everything back ------------------------------------------------------------------------------
def _text(value) -> str:
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value).decode("utf-8", "replace")
    if isinstance(value, (dict, list)):
        return json.dumps(value, default=str, ensure_ascii=False)
    return str(value)


def leaks(db, needles: list[str], store_id: int | None = None) -> list[tuple[str, str, int | None, str]]:
    """(table, column, row id, needle) for every stored value, in every table, that contains a needle."""
    found = []
    with db.engine.connect() as conn:
        for table in m.Base.metadata.sorted_tables:
            query = select(table)
            if store_id is not None and "store_id" in table.c:
                query = query.where(table.c.store_id == store_id)
            elif store_id is not None and table.name == "inbox_bodies":  # a body belongs to its inbox row's store
                query = query.where(table.c.id.in_(select(m.InboxEvent.id).where(m.InboxEvent.store_id == store_id)))
            for row in conn.execute(query):
                for column, value in row._mapping.items():
                    if value is None:
                        continue
                    text = _text(value).lower()
                    found += [(table.name, column, row._mapping.get("id"), n) for n in needles if n.lower() in text]
    return found


def log_text(caplog) -> str:
    fmt = LogfmtFormatter()
    return "\n".join(fmt.format(r) for r in caplog.records)


def aggregates(db, store_id: int) -> dict:
    with db.engine.connect() as conn:
        orders = conn.execute(select(m.Order).where(m.Order.store_id == store_id).order_by(m.Order.external_id)).all()
        outbox = conn.execute(select(m.OutboxMessage).where(m.OutboxMessage.store_id == store_id)).all()
        runs = conn.execute(select(m.JourneyRun).where(m.JourneyRun.store_id == store_id).order_by(m.JourneyRun.id)).all()
        messages = conn.execute(select(m.Message).where(m.Message.store_id == store_id)).all()
        count = lambda model: conn.execute(select(func.count()).select_from(model).where(model.store_id == store_id)).scalar()  # noqa: E731
        return {
            "orders": [(o.external_id, o.total, o.currency, o.payment_state, o.fulfillment_state, o.is_cod, o.placed_at, o.contact_id) for o in orders],
            "order_total": sum((o.total for o in orders), Decimal("0")),
            "lines": count(m.OrderLine), "checkouts": count(m.Checkout), "contacts": count(m.Contact),
            "consent_changes": count(m.ConsentChange), "handoffs": count(m.Handoff), "inbox": count(m.InboxEvent),
            "outbox": Counter((o.channel, o.journey, o.step, o.status) for o in outbox),
            "runs": [(r.journey, r.subject, r.status, r.state.get("outcome"), r.state.get("revenue"), r.state.get("recovered"), r.holdout) for r in runs],
            "messages": Counter((x.direction, x.status, x.occurred_at) for x in messages),
            "consent": [(c.consent_utility, c.consent_marketing) for c in conn.execute(select(m.Contact).where(m.Contact.store_id == store_id))],
        }


def cli_config(tmp_path: Path, db_url: str) -> Path:
    path = tmp_path / "storeloop.toml"
    path.write_text(f'[database]\nurl = "{db_url}"\n\n[[stores]]\nkey = "shop-a"\nplatform = "shopify"\nshop_domain = "{SHOP_A}"\n'
                    f'webhook_secret = "x"\ndefault_country = "IN"\ntimezone = "Asia/Kolkata"\n')
    return path


# -- the tests ------------------------------------------------------------------------------------------------
def test_data_request_exports_the_customer_over_the_api_and_the_cli(db_url, tmp_path, caplog):
    from connector.cli import app

    settings = make_settings(db_url)
    clock = Clock(T0)
    with running_app(settings) as (client, runtime):
        runtime.processor.clock = clock
        customer_story(client, runtime, settings, clock, MEENA, order_id=7001, token="tokM")
        customer_story(client, runtime, settings, clock, KABIR, order_id=7002, token="tokK")
        caplog.set_level(logging.DEBUG)
        caplog.clear()
        assert post_shopify(client, request_payload(MEENA, [7001], data_request=True), "customers/data_request").status_code == 200
        runtime.processor.drain()
        logged = log_text(caplog)
        assert client.get("/api/stores/shop-a/compliance").status_code == 401
        listed = client.get("/api/stores/shop-a/compliance", headers=ADMIN).json()["items"]
        [item] = listed
        assert (item["kind"], item["status"], item["has_export"]) == ("customer_data_request", "done", True)
        assert client.get(f"/api/stores/shop-a/compliance/{item['id']}").status_code == 401
        assert client.get(f"/api/stores/shop-b/compliance/{item['id']}", headers=ADMIN).status_code == 404  # another store's
        export = client.get(f"/api/stores/shop-a/compliance/{item['id']}", headers=ADMIN).json()["export"]
        with runtime.db.engine.connect() as conn:
            request_row = conn.execute(with_body().where(m.InboxEvent.topic == "customers/data_request")).one()
    # what the customer is owed: profile, consent and its history, orders, messages, journeys, hand-offs, deliveries
    [contact] = export["contacts"]
    assert (contact["phone_e164"], contact["first_name"], contact["last_name"], contact["email"]) == (
        MEENA.e164, MEENA.first, MEENA.last, MEENA.email)
    assert contact["consent_marketing"] == "granted" and {h["source"] for h in contact["consent_history"]} >= {"checkout_opt_in", "order_with_phone"}
    [order] = export["orders"]
    assert (order["external_id"], order["total"], order["currency"]) == ("7001", "414.95", "INR") and order["line_items"]
    assert [c["token"] for c in export["checkouts"]] == ["tokM"]
    assert any(msg["direction"] == "in" and MEENA.email in msg["body"] for msg in export["messages"])
    assert {(o["journey"], o["step"]) for o in export["outbox"]} >= {("order_confirmation", "sent"), ("checkout_recovery", "first")}
    assert {r["journey"] for r in export["journey_runs"]} == {"order_confirmation", "checkout_recovery"}
    assert len(export["handoffs"]) == 1 and MEENA.email in export["handoffs"][0]["reason"]
    assert {e["topic"] for e in export["inbox_events"]} >= {"orders/create", "checkouts/create", "message", "status"}
    # ... and nobody else's
    text = json.dumps(export)
    assert not any(n in text for n in KABIR.needles())
    assert export["counts"]["orders"] == 1 and item["counts"]["orders"] == 1
    # the request's own inbox row keeps what was done, not who asked
    assert request_row.raw_body is None and request_row.event[0]["request_id"] == item["id"]
    assert not any(n.lower() in _text(request_row.event).lower() for n in MEENA.needles())
    assert not any(n.lower() in logged.lower() for n in MEENA.needles()), logged
    assert "privacy request customer_data_request answered" in logged

    # the CLI: a live export by phone (any format) or email, or the stored one by request id
    config = cli_config(tmp_path, db_url)
    out = tmp_path / "meena.json"
    by_phone = CliRunner().invoke(app, ["customer", "export", "--config", str(config), "--store", "shop-a", "--phone", "98765 43210", "--out", str(out)])
    assert by_phone.exit_code == 0, by_phone.output
    exported = json.loads(out.read_text())
    assert [o["external_id"] for o in exported["orders"]] == ["7001"] and exported["contacts"][0]["email"] == MEENA.email
    assert any(msg["body"] and MEENA.phone in msg["body"] for msg in exported["messages"])
    assert (out.stat().st_mode & 0o777) == 0o600
    by_email = CliRunner().invoke(app, ["customer", "export", "--config", str(config), "--store", "shop-a", "--email", KABIR.email.upper()])
    assert by_email.exit_code == 0, by_email.output
    assert [o["external_id"] for o in json.loads(by_email.stdout)["orders"]] == ["7002"]
    stored = CliRunner().invoke(app, ["customer", "export", "--config", str(config), "--store", "shop-a", "--request", str(item["id"])])
    assert stored.exit_code == 0 and json.loads(stored.stdout)["contacts"][0]["id"] == contact["id"]
    by_id = CliRunner().invoke(app, ["customer", "export", "--config", str(config), "--store", "shop-a", "--customer-id", str(MEENA.customer_id)])
    assert json.loads(by_id.stdout)["counts"]["orders"] == 1
    two = CliRunner().invoke(app, ["customer", "export", "--config", str(config), "--store", "shop-a", "--phone", "1", "--email", "x@y.z"])
    assert two.exit_code == 2


def test_customer_redact_erases_every_trace_and_keeps_the_numbers(db_url, caplog):
    settings = make_settings(db_url)
    clock = Clock(T0)
    with running_app(settings) as (client, runtime):
        runtime.processor.clock = clock
        sid = runtime.store_ids["shop-a"]
        customer_story(client, runtime, settings, clock, MEENA, order_id=7001, token="tokM")
        customer_story(client, runtime, settings, clock, KABIR, order_id=7002, token="tokK")
        # an earlier data request names her too; its export must go with the rest
        post_shopify(client, request_payload(MEENA, [7001], data_request=True), "customers/data_request")
        # a delivery the adapter could not read (never tied to her contact), and a WhatsApp preference
        # change (its dedupe key carries her number)
        post_shopify(client, {**order_payload(MEENA, 7001, "2026-11-20T07:00:00Z"), "created_at": "yesterday"}, "orders/updated")
        post_whatsapp(client, {"user_preferences": [{"wa_id": MEENA.wa_id, "detail": "resumed", "category": "marketing_messages",
                                                     "value": "resume", "timestamp": str(int((T0 + timedelta(minutes=50)).timestamp()))}]})
        runtime.processor.drain()
        with runtime.db.engine.connect() as conn:
            unread = conn.execute(with_body().where(m.InboxEvent.topic == "orders/updated")).one()
        assert (unread.status, unread.contact_id) == ("failed", None) and MEENA.email.encode() in unread.raw_body
        assert leaks(runtime.db, MEENA.needles(), sid)  # the scan does see her before
        before = aggregates(runtime.db, sid)
        period = week_period(2026, 47, settings.stores[0].tz)
        report_before = build_report(runtime.db, settings.stores[0], sid, period)
        with runtime.db.engine.connect() as conn:
            meena_id = conn.execute(select(m.Contact.id).where(m.Contact.phone_e164 == MEENA.e164)).scalar_one()
            pending_rows = conn.execute(select(m.OutboxMessage).where(m.OutboxMessage.contact_id == meena_id,
                                                                      m.OutboxMessage.status == "pending")).all()
        pending = [o.id for o in pending_rows]
        assert pending  # the hand-off's notification has not gone out yet

        caplog.set_level(logging.DEBUG)
        caplog.clear()
        clock.now = T0 + timedelta(hours=2)
        assert post_shopify(client, request_payload(MEENA, [7001]), "customers/redact").status_code == 200
        runtime.processor.drain()
        logged = log_text(caplog)

        # nothing of hers anywhere: every column of every table, and the logs
        assert leaks(runtime.db, MEENA.needles() + [recovery_key("tokM"), "os-7001"]) == []
        assert not any(n.lower() in logged.lower() for n in MEENA.needles()), logged
        assert "privacy request customer_redact answered" in logged and "contacts=1" in logged
        # the other customer is untouched
        assert {n for *_, n in leaks(runtime.db, KABIR.needles(), sid)} == set(KABIR.needles())

        # the numbers reports need are the same; her one unsent notification is now skipped
        after = aggregates(runtime.db, sid)
        expected_outbox = before["outbox"].copy()
        for o in pending_rows:
            expected_outbox[o.channel, o.journey, o.step, "pending"] -= 1
            expected_outbox[o.channel, o.journey, o.step, "skipped"] += 1
        assert +after["outbox"] == +expected_outbox
        after["outbox"] = before["outbox"]
        assert after == {**before, "inbox": before["inbox"] + 1}
        report_after = build_report(runtime.db, settings.stores[0], sid, period)
        # her failed delivery was erased with the rest: no longer offered for a replay
        assert (report_before.pop("connector_health")["inbox_failed"], report_after.pop("connector_health")["inbox_failed"]) == (1, 0)
        assert report_after == report_before
        with runtime.db.engine.connect() as conn:
            contact = conn.execute(select(m.Contact).where(m.Contact.id == meena_id)).one()
            skipped = conn.execute(select(m.OutboxMessage.skip_reason).where(m.OutboxMessage.id.in_(pending))).scalars().all()
            [answered] = conn.execute(select(m.ComplianceRequest).where(m.ComplianceRequest.kind == "customer_redact")).all()
            [export] = conn.execute(select(m.ComplianceRequest).where(m.ComplianceRequest.kind == "customer_data_request")).all()
            order = conn.execute(select(m.Order).where(m.Order.external_id == "7001")).one()
            checkout = conn.execute(select(m.Checkout).where(m.Checkout.token == "tokM")).one()
            texts = conn.execute(select(m.Message.body).where(m.Message.contact_id == meena_id)).scalars().all()
        assert contact.phone_key == f"redacted:{meena_id}" and not contact.reachable and contact.opted_out_at is not None
        assert (contact.phone_e164, contact.first_name, contact.email, contact.external_customer_id) == (None, None, None, None)
        assert skipped == ["redacted"] * len(pending)
        assert answered.contact_ids == [meena_id] and answered.counts["contacts"] == 1 and answered.export is None
        assert (export.status, export.export) == ("erased", None)
        assert (order.total, order.status_url, order.contact_id) == (Decimal("414.95"), None, meena_id)
        assert checkout.recovery_url is None and texts and set(texts) == {None}
        with runtime.db.engine.connect() as conn:
            unread = conn.execute(with_body().where(m.InboxEvent.id == unread.id)).one()
        assert (unread.status, unread.raw_body, unread.last_error) == ("ignored", None, "redacted: privacy request")

        # the same request again (Shopify retries, or asks twice): nothing breaks, nothing changes
        snapshot = aggregates(runtime.db, sid)
        post_shopify(client, request_payload(MEENA, [7001]), "customers/redact")
        runtime.processor.drain()
        assert {**aggregates(runtime.db, sid), "inbox": snapshot["inbox"]} == snapshot
        with runtime.db.engine.connect() as conn:
            statuses = conn.execute(select(m.InboxEvent.status).where(m.InboxEvent.topic == "customers/redact")).scalars().all()
        assert statuses == ["done", "done"]

        # she orders again: a new relationship (a new contact, normal consent), never the erased one
        clock.now = T0 + timedelta(days=3)
        post_shopify(client, order_payload(MEENA, 7003, "2026-11-23T07:00:00Z"), "orders/create")
        runtime.processor.drain()
        with runtime.db.engine.connect() as conn:
            new = conn.execute(select(m.Contact).where(m.Contact.phone_e164 == MEENA.e164)).one()
            queued = conn.execute(select(m.OutboxMessage.contact_id, m.OutboxMessage.status).where(
                m.OutboxMessage.idempotency_key == "order_confirmation:sent:order:7003")).one()
            old_sends = conn.execute(select(func.count()).select_from(m.OutboxMessage).where(
                m.OutboxMessage.contact_id == meena_id, m.OutboxMessage.created_at > T0 + timedelta(hours=2))).scalar()
            still = conn.execute(select(m.Contact.phone_key).where(m.Contact.id == meena_id)).scalar_one()
        assert new.id != meena_id and queued == (new.id, "pending") and old_sends == 0 and still == f"redacted:{meena_id}"


def personal_data_in_logs(records, needles: list[str]) -> list[str]:
    """Each log record (any logger) whose message, arguments, extra fields or exception text holds a needle."""
    reserved = set(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {"message", "asctime", "taskName"}
    formatter = logging.Formatter()
    found = []
    for record in records:
        parts = [str(record.msg), record.getMessage(), repr(record.args)]
        parts += [f"{k}={v!r}" for k, v in vars(record).items() if k not in reserved]
        if record.exc_info:
            parts.append(formatter.formatException(record.exc_info))
        if record.stack_info:
            parts.append(record.stack_info)
        text = " ".join(parts).lower()
        found += [f"{record.name} {record.levelname} {record.getMessage()[:120]!r}: {n}" for n in needles if n.lower() in text]
    return found


def test_logs_never_hold_a_customers_phone_name_or_email(db_url, caplog):
    """Everything logged while a customer's story runs, at DEBUG, from every logger: ingest of her
    checkout and order, WhatsApp statuses and her message (which quotes her phone and email), an
    unreadable delivery, processing, the sends, her data request and her erasure."""
    caplog.set_level(logging.DEBUG)
    settings = make_settings(db_url)
    clock = Clock(T0)
    with running_app(settings) as (client, runtime):
        runtime.processor.clock = clock
        customer_story(client, runtime, settings, clock, MEENA, order_id=7001, token="tokM")
        post_shopify(client, {**order_payload(MEENA, 7001, "2026-11-20T07:00:00Z"), "created_at": "yesterday"}, "orders/updated")
        post_whatsapp(client, inbound_text(MEENA, f"STOP. {MEENA.first} {MEENA.last}, {MEENA.email}", T0 + timedelta(minutes=45),
                                           wamid="wamid.stop-1"))
        runtime.processor.drain()
        dispatch(runtime, settings, clock)
        with runtime.db.engine.connect() as conn:
            unreadable = conn.execute(select(m.InboxEvent.status).where(m.InboxEvent.topic == "orders/updated")).scalar_one()
        post_shopify(client, request_payload(MEENA, [7001], data_request=True), "customers/data_request")
        runtime.processor.drain()
        clock.now = T0 + timedelta(hours=2)
        post_shopify(client, request_payload(MEENA, [7001]), "customers/redact")
        runtime.processor.drain()
    # the capture saw the whole story: ingest, processing (a failure among it), the sends, both requests
    logged = [r.getMessage() for r in caplog.records]
    assert unreadable == "failed" and any("cannot be normalised" in line for line in logged)
    assert any(line == "dry run: would send" for line in logged)
    for kind in ("customer_data_request", "customer_redact"):
        assert any(line.startswith(f"privacy request {kind} answered: ") for line in logged), kind
    assert len(caplog.records) >= 10
    assert personal_data_in_logs(caplog.records, MEENA.needles()) == []


@contextmanager
def two_shops(db_url: str):
    """The app with its processor on a clock at T0: (settings, clock, client, runtime, shop A's id, shop B's id)."""
    settings = make_settings(db_url)
    clock = Clock(T0)
    with running_app(settings) as (client, runtime):
        runtime.processor.clock = clock
        yield settings, clock, client, runtime, runtime.store_ids["shop-a"], runtime.store_ids["shop-b"]


def test_shop_redact_erases_that_store_only(db_url, caplog):
    with two_shops(db_url) as (settings, clock, client, runtime, a, b):
        customer_story(client, runtime, settings, clock, MEENA, order_id=7001, token="tokM")
        customer_story(client, runtime, settings, clock, KABIR, order_id=7002, token="tokK")
        # the same person also buys from shop B (its own WhatsApp number): that relationship is B's
        customer_story(client, runtime, settings, clock, MEENA, order_id=8001, token="tokB", shop=SHOP_B,
                       secret=SECRETS["shop_b"], phone_id=PHONE_ID_B)
        before_a, before_b = aggregates(runtime.db, a), aggregates(runtime.db, b)
        b_before = leaks(runtime.db, MEENA.needles(), b)
        assert {n for *_, n in b_before} >= {MEENA.e164, MEENA.first, MEENA.email}
        caplog.set_level(logging.DEBUG)
        caplog.clear()
        clock.now = T0 + timedelta(days=2)
        assert post_shopify(client, {"shop_id": 954889, "shop_domain": SHOP_A}, "shop/redact").status_code == 200
        runtime.processor.drain()
        logged = log_text(caplog)
        assert leaks(runtime.db, MEENA.needles() + KABIR.needles() + [recovery_key("tokM"), recovery_key("tokK")], a) == []
        assert leaks(runtime.db, KABIR.needles(), None) == []  # Kabir only ever bought from A
        assert leaks(runtime.db, MEENA.needles(), b) == b_before  # B keeps its customer, byte for byte
        assert not any(n.lower() in logged.lower() for n in MEENA.needles() + KABIR.needles()), logged
        after_a, after_b = aggregates(runtime.db, a), aggregates(runtime.db, b)
        assert after_b == before_b
        assert (after_a["orders"], after_a["order_total"], after_a["runs"], after_a["messages"]) == (
            before_a["orders"], before_a["order_total"], before_a["runs"], before_a["messages"])
        assert after_a["outbox"]["notify", None, "handoff", "skipped"] == 2  # both hand-off notifications stopped
        with runtime.db.engine.connect() as conn:
            stores = dict(conn.execute(select(m.Store.key, m.Store.uninstalled_at)).all())
            contacts_a = conn.execute(select(m.Contact).where(m.Contact.store_id == a)).all()
            contact_b = conn.execute(select(m.Contact).where(m.Contact.store_id == b)).one()
        assert stores["shop-a"] is not None and stores["shop-b"] is None  # nothing more is sent for A
        assert all(c.phone_key == f"redacted:{c.id}" and c.opted_out_at is not None for c in contacts_a) and len(contacts_a) == 2
        assert (contact_b.phone_e164, contact_b.first_name, contact_b.reachable) == (MEENA.e164, MEENA.first, True)


@pytest.mark.parametrize("topic", ["customers/data_request", "customers/redact", "shop/redact"])
def test_a_forged_privacy_request_is_401_and_nothing_is_stored(db_url, topic):
    settings = make_settings(db_url)
    payload = request_payload(MEENA, [7001], data_request=topic == "customers/data_request")
    with running_app(settings) as (client, runtime):
        post_shopify(client, order_payload(MEENA, 7001, "2026-11-20T07:00:00Z"), "orders/create")
        runtime.processor.drain()
        body = dumps(payload)
        forged = [
            shopify_headers(body, SECRETS["shop_b"], SHOP_A, topic),  # another shop's secret
            {**shopify_headers(body, SECRETS["shop_a"], SHOP_A, topic), "X-Shopify-Hmac-Sha256": ""},
            {k: v for k, v in shopify_headers(body, SECRETS["shop_a"], SHOP_A, topic).items() if k != "X-Shopify-Hmac-Sha256"},
        ]
        codes = [client.post("/webhooks/shopify", content=body, headers=h).status_code for h in forged]
        tampered = client.post("/webhooks/shopify", content=body.replace(b"7001", b"7009"),
                               headers=shopify_headers(body, SECRETS["shop_a"], SHOP_A, topic)).status_code
        runtime.processor.drain()
        with runtime.db.engine.connect() as conn:
            topics = conn.execute(select(m.InboxEvent.topic)).scalars().all()
            requests = conn.execute(select(func.count()).select_from(m.ComplianceRequest)).scalar()
            contact = conn.execute(select(m.Contact)).one()
    assert codes == [401, 401, 401] and tampered == 401
    assert topics == ["orders/create"] and requests == 0
    assert (contact.phone_e164, contact.first_name) == (MEENA.e164, MEENA.first)


def test_an_erasure_waits_for_and_erases_what_arrived_before_it(db_url):
    """An order delivered just before the erasure is erased with it: in the same batch, or after a retry it waits for."""
    settings = make_settings(db_url)
    clock = Clock(T0)
    with running_app(settings) as (client, runtime):
        runtime.processor.clock = clock
        sid = runtime.store_ids["shop-a"]
        # same batch: the order's outcome is written before the erasure runs, so the erasure sees it
        post_shopify(client, order_payload(MEENA, 7001, "2026-11-20T07:00:00Z"), "orders/create")
        post_shopify(client, request_payload(MEENA, [7001]), "customers/redact")
        assert runtime.processor.process_batch() == 2
        assert leaks(runtime.db, MEENA.needles(), sid) == []
        # an earlier delivery still waiting for its retry holds the erasure back until it is done
        post_shopify(client, order_payload(KABIR, 7002, "2026-11-20T07:00:00Z"), "orders/create")
        with runtime.db.engine.begin() as conn:
            conn.execute(m.InboxEvent.__table__.update().where(m.InboxEvent.topic == "orders/create", m.InboxEvent.status == "pending")
                         .values(available_at=T0 + timedelta(minutes=5)))
        post_shopify(client, request_payload(KABIR, [7002]), "customers/redact")
        runtime.processor.drain()
        with runtime.db.engine.connect() as conn:
            waiting = conn.execute(select(m.InboxEvent).where(m.InboxEvent.topic == "customers/redact").order_by(m.InboxEvent.id)).all()[-1]
        assert (waiting.status, waiting.available_at) == ("pending", T0 + timedelta(seconds=30))
        clock.now = T0 + timedelta(minutes=10)
        runtime.processor.drain()
        with runtime.db.engine.connect() as conn:
            statuses = conn.execute(select(m.InboxEvent.topic, m.InboxEvent.status).order_by(m.InboxEvent.id)).all()
        assert [s for _, s in statuses] == ["done"] * 4
        assert leaks(runtime.db, MEENA.needles() + KABIR.needles(), sid) == []
        assert aggregates(runtime.db, sid)["order_total"] == Decimal("829.90")  # both orders still count


def test_shop_redact_removes_the_marks_of_that_stores_erased_customers(db_url):
    """Meena was erased from shop A (customers/redact: her order id, checkout and customer id marked, under A's key); then
    Shopify erases the whole shop: its marks and its key go with the rest of its data, shop B's stay."""
    with two_shops(db_url) as (settings, clock, client, runtime, a, b):
        customer_story(client, runtime, settings, clock, MEENA, order_id=7001, token="tokM")
        customer_story(client, runtime, settings, clock, MEENA, order_id=8001, token="tokB", shop=SHOP_B,
                       secret=SECRETS["shop_b"], phone_id=PHONE_ID_B)
        clock.now = T0 + timedelta(days=1)
        assert post_shopify(client, request_payload(MEENA, [7001]), "customers/redact").status_code == 200
        assert post_shopify(client, request_payload(MEENA, [8001], shop=SHOP_B), "customers/redact",
                            shop=SHOP_B, secret=SECRETS["shop_b"]).status_code == 200
        runtime.processor.drain()

        def marks() -> Counter:
            with runtime.db.engine.connect() as conn:
                return Counter(conn.execute(select(m.ErasedRef.store_id, m.ErasedRef.kind)).all())

        # her checkout too: by its token and by its recovery link (hashed)
        assert marks() == Counter({(a, "order"): 1, (a, "customer"): 1, (a, "checkout"): 2, (a, "key"): 1,
                                   (b, "order"): 1, (b, "customer"): 1, (b, "checkout"): 2, (b, "key"): 1})
        clock.now = T0 + timedelta(days=2)
        assert post_shopify(client, {"shop_id": 954889, "shop_domain": SHOP_A}, "shop/redact").status_code == 200
        runtime.processor.drain()
        assert marks() == Counter({(b, "order"): 1, (b, "customer"): 1, (b, "checkout"): 2, (b, "key"): 1})


@pytest.mark.parametrize("topic", ["shop/redact", "customers/redact"])
def test_a_privacy_request_naming_another_shop_erases_nothing_of_this_one(db_url, topic, caplog):
    """The stores of one Shopify app share its secret, and X-Shopify-Shop-Domain is not signed: a request whose
    body names shop A, delivered with B's header (replayed, or a proxy's mistake), must not erase B's customers."""
    raw = settings_dict(db_url)
    raw["stores"][1]["webhook_secret"] = SECRETS["shop_a"]  # one app, two shops
    settings = parse_settings(raw, environ={})
    with running_app(settings) as (client, runtime):
        b = runtime.store_ids["shop-b"]
        order = order_payload(MEENA, 8001, "2026-11-20T07:00:00Z")
        assert post_shopify(client, order, "orders/create", SHOP_B, SECRETS["shop_a"]).status_code == 200
        runtime.processor.drain()
        request = {"shop_id": 954889, "shop_domain": SHOP_A}
        if topic == "customers/redact":
            request = request_payload(MEENA, [8001]) | request
        caplog.set_level(logging.INFO)
        assert post_shopify(client, request, topic, SHOP_B, SECRETS["shop_a"]).status_code == 200
        runtime.processor.drain()
        with runtime.db.engine.connect() as conn:
            contact = conn.execute(select(m.Contact).where(m.Contact.store_id == b)).one()
            store = conn.execute(select(m.Store).where(m.Store.id == b)).one()
            answered = conn.execute(select(func.count()).select_from(m.ComplianceRequest)).scalar()
            row = conn.execute(select(m.InboxEvent.status, m.InboxEvent.last_error).where(m.InboxEvent.topic == topic)).one()
    assert (contact.phone_e164, contact.first_name, contact.email) == (MEENA.e164, MEENA.first, MEENA.email)
    assert store.uninstalled_at is None and answered == 0
    assert row.status != "done" and "another shop" in (row.last_error or "")
    assert "another shop" in caplog.text and MEENA.email not in caplog.text
