"""The outbox end to end on SQLite and PostgreSQL, against a sandbox Cloud API on 127.0.0.1."""

from __future__ import annotations

import asyncio
import json
from datetime import datetime, timedelta, timezone

import pytest
from sqlalchemy import select

from adapters.whatsapp.client import WhatsAppClient
from connector import events as ev
from connector.outbox import store as ob
from connector.outbox.dispatcher import Dispatcher
from connector.outbox.queue import queue_template
from connector.outbox.senders import DryRunSender
from connector.processor import InboxProcessor
from connector.sandbox.whatsapp import SandboxServer, SandboxWhatsApp, ScriptedResponse
from connector.state import record_consent, upsert_contact
from connector.storage import models as m
from connector.storage.db import Database
from connector.storage.inbox import sync_stores
from connector.config import parse_settings
from tests.conftest import FIXTURES, PHONE_ID_A, SECRETS, settings_dict
from tests.helpers import load_json, meta_signature, running_app, shopify_headers

NOON_IST = datetime(2026, 11, 20, 6, 30, tzinfo=timezone.utc)
PHONE = "+919876543210"
TEMPLATES = [
    {
        "step": "cod_confirmation.ask", "name": "cod_confirm_v1", "category": "utility", "language": "en",
        "body_text": "Hi {{1}}, please confirm order {{2}} of {{3}}.",
        "body": ["customer.first_name", "order.name", "order.total"],
        "buttons": [{"type": "quick_reply", "text": "Confirm", "payload": "cod_confirm"},
                    {"type": "quick_reply", "text": "Cancel", "payload": "cod_cancel"}],
    },
    {
        "step": "reorder.remind", "name": "reorder_v1", "category": "marketing",
        "body_text": "Time to restock {{1}}? {{2}}", "body": ["reorder.product", "reorder.link"],
    },
    {
        "step": "checkout_recovery.first", "name": "cart_v1", "category": "marketing",
        "body_text": "You left {{1}} in your cart: {{2}}", "body": ["reorder.product", "checkout.recovery_url"],
    },
]
CONTEXT = {"customer.first_name": "Asha", "order.name": "#1042", "order.total": ("1299.00", "INR"),
           "reorder.product": "Neem face wash", "reorder.link": "https://shop-a.example/cart/1:1",
           "checkout.recovery_url": "https://shop-a.example/recover/abc"}


class Clock:
    def __init__(self, now: datetime):
        self.now = now

    def __call__(self) -> datetime:
        return self.now


def settings_for(db_url: str, base_url: str | None, **whatsapp):
    raw = settings_dict(db_url)
    if base_url is not None:
        raw["whatsapp"].update({"access_token": "sandbox-token", "graph_base_url": base_url, "pair_spacing_seconds": 0, **whatsapp})
    raw["stores"][0]["templates"] = TEMPLATES
    return parse_settings(raw, environ={})


def seed_contact(db: Database, store_id: int, *, marketing: bool = True, utility: bool = True, phone: str = PHONE) -> int:
    with db.engine.begin() as conn:
        cid = upsert_contact(conn, store_id, NOON_IST, phone=ev.Phone(raw=phone, e164=phone), customer=ev.Customer(first_name="Asha"))
        assert cid is not None
        if utility:
            record_consent(conn, store_id, cid, "utility", "granted", "order_with_phone", NOON_IST - timedelta(days=1), None)
        if marketing:
            record_consent(conn, store_id, cid, "marketing", "granted", "checkout_opt_in", NOON_IST - timedelta(days=1), None)
        return cid


def queue(db, settings, store_id, contact_id, step="cod_confirmation.ask", subject="order:1042", now=NOON_IST, context=CONTEXT):
    journey, _, name = step.partition(".")
    with db.engine.begin() as conn:
        return queue_template(conn, store=settings.stores[0], store_id=store_id, contact_id=contact_id, journey=journey,
                              step=name, subject=subject, context=context, now=now)


def outbox_rows(db) -> list:
    with db.engine.connect() as conn:
        return list(conn.execute(select(m.OutboxMessage).order_by(m.OutboxMessage.id)))


def attempts(db) -> list:
    with db.engine.connect() as conn:
        return list(conn.execute(select(m.OutboxAttempt).order_by(m.OutboxAttempt.id)))


@pytest.fixture
def sandbox():
    fake = SandboxWhatsApp()
    with SandboxServer(fake.app) as server:
        yield fake, server.url


def dispatch(db, settings, ids, clock, base_url, token: str = "sandbox-token", **kw) -> int:
    async def run() -> int:
        client = WhatsAppClient(base_url, settings.whatsapp.api_version, token)
        try:
            return await Dispatcher(db, settings, ids, client, clock=clock, **kw).drain()
        finally:
            await client.aclose()

    return asyncio.run(run())


def test_a_queued_template_is_sent_once_with_its_outbox_id(db, db_url, sandbox):
    fake, url = sandbox
    settings = settings_for(db_url, url)
    ids = sync_stores(db, [(s.key, s.platform) for s in settings.stores])
    cid = seed_contact(db, ids["shop-a"])
    first = queue(db, settings, ids["shop-a"], cid)
    again = queue(db, settings, ids["shop-a"], cid)  # the same event processed twice
    assert first.status == "pending" and again.status == "duplicate"
    clock = Clock(NOON_IST)
    assert dispatch(db, settings, ids, clock, url) == 1
    assert dispatch(db, settings, ids, clock, url) == 0  # nothing left: never sent twice
    [call] = fake.accepted()
    assert (call.phone_number_id, call.to, call.template) == (PHONE_ID_A, PHONE, "cod_confirm_v1")
    assert call.callback_data == f"outbox:{first.outbox_id}"
    [row] = outbox_rows(db)
    assert (row.status, row.attempts, row.wamid) == ("sent", 1, call.wamid)
    assert [(a.outcome, a.error_code) for a in attempts(db)] == [("sent", None)]
    with db.engine.connect() as conn:
        msg = conn.execute(select(m.Message)).one()
    assert (msg.direction, msg.wamid, msg.contact_id, msg.body) == ("out", call.wamid, cid, "cod_confirm_v1")


def test_retryable_errors_back_off_durably_and_honour_retry_after(db, db_url, sandbox):
    fake, url = sandbox
    settings = settings_for(db_url, url)
    ids = sync_stores(db, [(s.key, s.platform) for s in settings.stores])
    cid = seed_contact(db, ids["shop-a"])
    queue(db, settings, ids["shop-a"], cid)
    fake.script.extend([
        ScriptedResponse(429, {"error": {"code": 130429, "message": "rate", "fbtrace_id": "T1"}}, {"Retry-After": "30"}),
        ScriptedResponse(502, "<html><body>Bad gateway</body></html>"),
    ])
    clock = Clock(NOON_IST)
    dispatch(db, settings, ids, clock, url)
    [row] = outbox_rows(db)
    assert row.status == "pending" and row.due_at >= NOON_IST + timedelta(seconds=30)  # a due time, not a sleep
    clock.now = row.due_at
    dispatch(db, settings, ids, clock, url)
    [row] = outbox_rows(db)
    assert row.status == "pending" and row.attempts == 1  # the 130429 (throttling) spent none of its tries
    clock.now = row.due_at
    dispatch(db, settings, ids, clock, url)
    [row] = outbox_rows(db)
    assert row.status == "sent" and row.attempts == 2
    assert [(a.outcome, a.error_code) for a in attempts(db)] == [("retry", 130429), ("retry", None), ("sent", None)]
    assert len(fake.accepted()) == 1


def test_permanent_errors_fail_without_retry(db, db_url, sandbox):
    fake, url = sandbox
    settings = settings_for(db_url, url)
    ids = sync_stores(db, [(s.key, s.platform) for s in settings.stores])
    cid = seed_contact(db, ids["shop-a"])
    queue(db, settings, ids["shop-a"], cid)
    fake.script.append(ScriptedResponse(400, {"error": {"code": 131026, "message": "Message undeliverable", "fbtrace_id": "T2"}}))
    clock = Clock(NOON_IST)
    dispatch(db, settings, ids, clock, url)
    clock.now += timedelta(days=1)
    dispatch(db, settings, ids, clock, url)
    [row] = outbox_rows(db)
    assert (row.status, row.attempts) == ("failed", 1)
    assert [(a.outcome, a.error_code) for a in attempts(db)] == [("failed", 131026)]
    assert fake.accepted() == []


def test_policy_is_checked_again_at_send_time(db, db_url, sandbox):
    fake, url = sandbox
    settings = settings_for(db_url, url)
    ids = sync_stores(db, [(s.key, s.platform) for s in settings.stores])
    cid = seed_contact(db, ids["shop-a"])
    queued = queue(db, settings, ids["shop-a"], cid, step="reorder.remind", subject="window:1")
    assert queued.status == "pending"
    with db.engine.begin() as conn:  # the customer opts out between queueing and sending
        record_consent(conn, ids["shop-a"], cid, "marketing", "revoked", "whatsapp_preference_stop", NOON_IST, None)
    dispatch(db, settings, ids, Clock(NOON_IST + timedelta(minutes=1)), url)
    [row] = outbox_rows(db)
    assert (row.status, row.skip_reason) == ("skipped", "no_marketing_consent")
    assert fake.accepted() == [] and attempts(db) == []


def test_queue_time_gate_records_why_a_message_was_not_sent(db, db_url, sandbox):
    _, url = sandbox
    settings = settings_for(db_url, url)
    ids = sync_stores(db, [(s.key, s.platform) for s in settings.stores])
    no_marketing = seed_contact(db, ids["shop-a"], marketing=False)
    late = datetime(2026, 11, 20, 17, 0, tzinfo=timezone.utc)  # 22:30 in Kolkata
    skipped = queue(db, settings, ids["shop-a"], no_marketing, step="reorder.remind", subject="window:1")
    missing = queue(db, settings, ids["shop-a"], no_marketing, subject="order:2", context={**CONTEXT, "order.name": None})
    unconfigured = queue(db, settings, ids["shop-a"], no_marketing, step="delivery.shipped", subject="order:3")
    other = seed_contact(db, ids["shop-a"], phone="+919812345678")
    deferred = queue(db, settings, ids["shop-a"], other, step="reorder.remind", subject="window:2", now=late)
    assert (skipped.status, skipped.reason) == ("skipped", "no_marketing_consent")
    assert missing.reason == "missing_value: no value for order.name"
    assert unconfigured.reason == "no_template_configured"
    assert deferred.status == "pending"
    row = next(r for r in outbox_rows(db) if r.id == deferred.outbox_id)
    assert row.due_at == datetime(2026, 11, 21, 3, 30, tzinfo=timezone.utc)  # 09:00 next morning in the store's zone


def test_frequency_cap_spans_two_journeys(db, db_url, sandbox):
    fake, url = sandbox
    settings = settings_for(db_url, url)
    ids = sync_stores(db, [(s.key, s.platform) for s in settings.stores])
    cid = seed_contact(db, ids["shop-a"])
    clock = Clock(NOON_IST)
    for n, step in enumerate(["reorder.remind", "checkout_recovery.first", "reorder.remind", "checkout_recovery.first"]):
        r = queue(db, settings, ids["shop-a"], cid, step=step, subject=f"s:{n}", now=clock.now)
        dispatch(db, settings, ids, clock, url)
        clock.now += timedelta(hours=1)
    statuses = [(r.journey, r.status, r.skip_reason) for r in outbox_rows(db)]
    assert statuses == [("reorder", "sent", None), ("checkout_recovery", "sent", None), ("reorder", "sent", None),
                        ("checkout_recovery", "skipped", "frequency_cap")]  # 3 a week by default
    assert len(fake.accepted()) == 3


def test_lost_outcome_is_never_resent_and_is_settled_by_the_status_webhook(db_url, sandbox):
    """The worker dies after the Cloud API call and before recording it."""
    fake, url = sandbox
    settings = settings_for(db_url, url)
    with running_app(settings) as (client, runtime):
        db = runtime.db
        ids = runtime.store_ids
        cid = seed_contact(db, ids["shop-a"])
        queued = queue(db, settings, ids["shop-a"], cid)
        clock = Clock(NOON_IST)
        # what a dispatcher does before it dies: claim (committed) and call the API...
        [claimed] = ob.claim(db, store_ids=[ids["shop-a"]], now=clock.now, limit=10, lease=timedelta(seconds=60), worker="w1", history_window=timedelta(days=7))
        from connector.messages import TemplateMessage

        message = TemplateMessage.model_validate(claimed.payload["message"]).model_copy(update={"callback_data": ob.callback_for(claimed.id)})

        async def call_then_die() -> str:
            wa = WhatsAppClient(url, settings.whatsapp.api_version, "sandbox-token")
            try:
                return (await wa.send(PHONE_ID_A, message)).wamid
            finally:
                await wa.aclose()

        wamid = asyncio.run(call_then_die())
        # ...a new worker comes up after the lease expired: the row is uncertain, not resent
        clock.now += timedelta(minutes=5)
        dispatch(db, settings, ids, clock, url)
        [row] = outbox_rows(db)
        assert (row.status, row.attempts) == ("uncertain", 1)  # the lost call counts as an attempt
        assert len(fake.accepted()) == 1
        # Meta's status webhook carries the outbox id and settles it
        for status in ("delivered", "sent"):
            envelope = {"object": "whatsapp_business_account", "entry": [{"id": "1", "changes": [{"field": "messages", "value": {
                "messaging_product": "whatsapp", "metadata": {"display_phone_number": "1", "phone_number_id": PHONE_ID_A},
                "statuses": [{"id": wamid, "status": status, "timestamp": "1795158000", "recipient_id": PHONE.lstrip("+"),
                              "biz_opaque_callback_data": f"outbox:{queued.outbox_id}"}]}}]}]}
            body = json.dumps(envelope).encode()
            assert client.post("/webhooks/whatsapp", content=body, headers={"X-Hub-Signature-256": meta_signature(body, SECRETS["wa_app"])}).status_code == 200
        runtime.processor.drain()
        [row] = outbox_rows(db)
        dispatch(db, settings, ids, clock, url)
    assert (row.status, row.wamid) == ("delivered", wamid)  # the late "sent" did not move it back
    assert len(fake.accepted()) == 1
    assert [a.outcome for a in attempts(db)] == ["uncertain"]


def test_failed_status_webhooks_change_the_contact(db_url, sandbox):
    fake, url = sandbox
    settings = settings_for(db_url, url)
    with running_app(settings) as (client, runtime):
        db, ids = runtime.db, runtime.store_ids
        contacts = [seed_contact(db, ids["shop-a"], phone=p) for p in ("+919876543210", "+919812345678", "+919898989898")]
        queued = [queue(db, settings, ids["shop-a"], c, step="reorder.remind", subject=f"w:{n}") for n, c in enumerate(contacts)]
        clock = Clock(NOON_IST)
        dispatch(db, settings, ids, clock, url)
        sent = {c.callback_data: c.wamid for c in fake.accepted()}
        for q, code in zip(queued, (131026, 131050, 131049)):
            envelope = {"object": "whatsapp_business_account", "entry": [{"id": "1", "changes": [{"field": "messages", "value": {
                "messaging_product": "whatsapp", "metadata": {"display_phone_number": "1", "phone_number_id": PHONE_ID_A},
                "statuses": [{"id": sent[f"outbox:{q.outbox_id}"], "status": "failed", "timestamp": "1795158000",
                              "biz_opaque_callback_data": f"outbox:{q.outbox_id}",
                              "errors": [{"code": code, "title": f"error {code}"}]}]}}]}]}
            body = json.dumps(envelope).encode()
            client.post("/webhooks/whatsapp", content=body, headers={"X-Hub-Signature-256": meta_signature(body, SECRETS["wa_app"])})
        runtime.processor.drain()
        rows = {r.id: r for r in outbox_rows(db)}
        with db.engine.connect() as conn:
            people = {r.id: r for r in conn.execute(select(m.Contact))}
    assert people[contacts[0]].reachable is False
    assert people[contacts[1]].consent_marketing == "revoked" and people[contacts[1]].consent_marketing_source == "whatsapp_error_131050"
    assert rows[queued[0].outbox_id].status == "failed" and rows[queued[1].outbox_id].status == "failed"
    later = rows[queued[2].outbox_id]
    assert later.status == "pending" and later.due_at == datetime.fromtimestamp(1795158000, timezone.utc) + timedelta(hours=24)


def test_a_message_held_back_for_the_marketing_limit_is_tried_on_three_days_at_most_and_only_while_its_run_goes_on(db_url, sandbox):
    """131049 (the user's marketing limit): the same message again a day later, but not a fourth time, and not for a
    run that has ended meanwhile (a cart reminder days after the cart's ladder and attribution window are over)."""
    fake, url = sandbox
    settings = settings_for(db_url, url)
    with running_app(settings) as (client, runtime):
        db, ids = runtime.db, runtime.store_ids
        sid = ids["shop-a"]
        people = {s: seed_contact(db, sid, phone=p) for s, p in (("w:ended", "+919876543210"), ("w:going", "+919812345678"),
                                                                 ("w:third", "+919898989898"))}  # one each: the marketing cap
        queued = {s: queue(db, settings, sid, cid, step="reorder.remind", subject=s) for s, cid in people.items()}
        with db.engine.begin() as conn:
            for subject, status in (("w:ended", "finished"), ("w:going", "active"), ("w:third", "active")):
                conn.execute(m.JourneyRun.__table__.insert().values(
                    store_id=sid, journey="reorder", subject=subject, contact_id=people[subject], status=status, state={}, holdout=False,
                    started_at=NOON_IST, updated_at=NOON_IST))
        dispatch(db, settings, ids, Clock(NOON_IST), url)
        with db.engine.begin() as conn:  # the third one has been tried on three days already
            conn.execute(m.OutboxMessage.__table__.update().where(m.OutboxMessage.id == queued["w:third"].outbox_id).values(attempts=3))
        sent = {c.callback_data: c.wamid for c in fake.accepted()}
        for q in queued.values():
            envelope = {"object": "whatsapp_business_account", "entry": [{"id": "1", "changes": [{"field": "messages", "value": {
                "messaging_product": "whatsapp", "metadata": {"display_phone_number": "1", "phone_number_id": PHONE_ID_A},
                "statuses": [{"id": sent[f"outbox:{q.outbox_id}"], "status": "failed", "timestamp": "1795158000",
                              "biz_opaque_callback_data": f"outbox:{q.outbox_id}", "errors": [{"code": 131049, "title": "limit"}]}]}}]}]}
            body = json.dumps(envelope).encode()
            client.post("/webhooks/whatsapp", content=body, headers={"X-Hub-Signature-256": meta_signature(body, SECRETS["wa_app"])})
        runtime.processor.drain()
        rows = {r.id: r for r in outbox_rows(db)}
    assert {s: rows[q.outbox_id].status for s, q in queued.items()} == {"w:ended": "failed", "w:going": "pending", "w:third": "failed"}


def test_only_a_reminder_ladders_earlier_messages_are_superseded_when_several_wait(db, db_url):
    """After a hold, a cart run's first reminder waits beside its second: the claim skips the first as
    superseded. Two parcels' "shipped" messages (a store that bound delivery updates to a marketing
    template) are not a ladder: both are claimed, neither skipped."""
    settings = settings_for(db_url, None)
    with running_app(settings) as (_client, runtime):
        sid = runtime.store_ids["shop-a"]
        cid = seed_contact(runtime.db, sid)
        with runtime.db.engine.begin() as conn:
            for key, journey, step in (("checkout_recovery:first:checkout:tok1", "checkout_recovery", "first"),
                                       ("checkout_recovery:second:checkout:tok1", "checkout_recovery", "second"),
                                       ("delivery_updates:shipped:order:1001", "delivery_updates", "shipped"),
                                       ("delivery_updates:shipped#2:order:1001", "delivery_updates", "shipped")):
                ob.enqueue(conn, store_id=sid, key=key, contact_id=cid, journey=journey, step=step, category="marketing",
                           payload={"subject": key.split(":", 2)[2]}, due_at=NOON_IST - timedelta(hours=5), now=NOON_IST - timedelta(hours=5))
        went = []
        for _ in range(6):  # her messages go one at a time (each waits for the one before it to settle)
            claimed = ob.claim(runtime.db, store_ids=[sid], now=NOON_IST, limit=10, lease=timedelta(seconds=60), worker="w1",
                               history_window=timedelta(days=7))
            if not claimed:
                break
            with runtime.db.engine.begin() as conn:  # as the dispatcher records a send
                conn.execute(m.OutboxMessage.__table__.update().where(m.OutboxMessage.id.in_([c.id for c in claimed])).values(status="sent"))
            went += [c.id for c in claimed]
        rows = {r.idempotency_key: (r.id, r.status, r.skip_reason) for r in outbox_rows(runtime.db)}
    assert rows["checkout_recovery:first:checkout:tok1"][1:] == ("skipped", "superseded")
    assert [key for key, (rid, _, _) in sorted(rows.items(), key=lambda kv: kv[1][0]) if rid in went] == [
        "checkout_recovery:second:checkout:tok1", "delivery_updates:shipped:order:1001", "delivery_updates:shipped#2:order:1001"]


def test_stop_keyword_opts_out_at_once(db_url, sandbox):
    fake, url = sandbox
    settings = settings_for(db_url, url)
    with running_app(settings) as (client, runtime):
        db, ids = runtime.db, runtime.store_ids
        cid = seed_contact(db, ids["shop-a"])
        envelope = {"object": "whatsapp_business_account", "entry": [{"id": "1", "changes": [{"field": "messages", "value": {
            "messaging_product": "whatsapp", "metadata": {"display_phone_number": "1", "phone_number_id": PHONE_ID_A},
            "contacts": [{"profile": {"name": "Asha"}, "wa_id": "919876543210"}],
            "messages": [{"from": "919876543210", "id": "wamid.IN1", "timestamp": "1795158000", "type": "text", "text": {"body": "STOP"}}]}}]}]}
        body = json.dumps(envelope).encode()
        client.post("/webhooks/whatsapp", content=body, headers={"X-Hub-Signature-256": meta_signature(body, SECRETS["wa_app"])})
        runtime.processor.drain()
        after = queue(db, settings, ids["shop-a"], cid, subject="order:9")
        view = client.get("/api/stores/shop-a/contacts/+919876543210", headers={"Authorization": f"Bearer {SECRETS['admin']}"}).json()
    assert (after.status, after.reason) == ("skipped", "opted_out")
    assert view["contact"]["opted_out_at"] is not None
    assert view["consent"]["marketing"]["source"] == "whatsapp_keyword_stop"


def test_dry_run_sender_records_without_sending(db, db_url, caplog):
    caplog.set_level("INFO", logger="storeloop")
    settings = settings_for(db_url, None)
    assert settings.whatsapp.dry_run
    ids = sync_stores(db, [(s.key, s.platform) for s in settings.stores])
    cid = seed_contact(db, ids["shop-a"])
    queue(db, settings, ids["shop-a"], cid)
    sender = DryRunSender()
    asyncio.run(Dispatcher(db, settings, ids, sender, clock=Clock(NOON_IST)).drain())
    [row] = outbox_rows(db)
    assert row.status == "dry_run" and row.wamid.startswith("dryrun.")
    assert [m_.name for _, m_ in sender.sent] == ["cod_confirm_v1"]
    [line] = [r for r in caplog.records if r.name == "storeloop.sender"]
    assert line.to == "+91********10" and "9876543210" not in caplog.text  # logged, with the phone redacted


def test_free_form_replies_only_inside_the_service_window(db, db_url, sandbox):
    from connector.messages import InteractiveButtons, ReplyButton
    from connector.outbox.queue import queue_free_form

    fake, url = sandbox
    settings = settings_for(db_url, url)
    ids = sync_stores(db, [(s.key, s.platform) for s in settings.stores])
    cid = seed_contact(db, ids["shop-a"])
    buttons = InteractiveButtons(to=PHONE, body="Want to pay online instead?", buttons=(ReplyButton(id="pay_now", title="Pay now"),))

    def ask(subject: str, now: datetime):
        with db.engine.begin() as conn:
            return queue_free_form(conn, store=settings.stores[0], store_id=ids["shop-a"], contact_id=cid, journey="cod_confirmation",
                                   step="prepaid_offer", subject=subject, message=buttons, category="utility", now=now)

    outside = ask("order:1", NOON_IST)  # the customer never wrote to us
    with db.engine.begin() as conn:
        conn.execute(m.Contact.__table__.update().where(m.Contact.id == cid).values(last_inbound_at=NOON_IST - timedelta(hours=2)))
    inside = ask("order:2", NOON_IST)
    dispatch(db, settings, ids, Clock(NOON_IST), url)
    assert (outside.status, outside.reason) == ("skipped", "outside_service_window")
    assert inside.status == "pending"
    [call] = fake.accepted()
    assert call.type == "interactive" and call.callback_data == f"outbox:{inside.outbox_id}"


def test_131047_resends_the_step_as_its_template(db_url, sandbox):
    """The window closed between our check and Meta's: the step goes out again as the journey's template."""
    from connector.messages import TextMessage
    from connector.outbox.queue import queue_free_form

    fake, url = sandbox
    settings = settings_for(db_url, url)
    with running_app(settings) as (client, runtime):
        db, ids = runtime.db, runtime.store_ids
        cid = seed_contact(db, ids["shop-a"])
        with db.engine.begin() as conn:
            conn.execute(m.Contact.__table__.update().where(m.Contact.id == cid).values(last_inbound_at=NOON_IST - timedelta(hours=23)))
            q = queue_free_form(conn, store=settings.stores[0], store_id=ids["shop-a"], contact_id=cid, journey="cod_confirmation",
                                step="ask", subject="order:1042", message=TextMessage(to=PHONE, body="Confirm order #1042?"),
                                category="utility", now=NOON_IST, fallback_context=CONTEXT)
        dispatch(db, settings, ids, Clock(NOON_IST), url)
        [text_call] = fake.accepted()
        envelope = {"object": "whatsapp_business_account", "entry": [{"id": "1", "changes": [{"field": "messages", "value": {
            "messaging_product": "whatsapp", "metadata": {"display_phone_number": "1", "phone_number_id": PHONE_ID_A},
            "statuses": [{"id": text_call.wamid, "status": "failed", "timestamp": "1795158000", "biz_opaque_callback_data": f"outbox:{q.outbox_id}",
                          "errors": [{"code": 131047, "title": "Re-engagement message"}]}]}}]}]}
        for _ in range(2):  # Meta retries the webhook: still one fallback
            body = json.dumps(envelope).encode()
            client.post("/webhooks/whatsapp", content=body, headers={"X-Hub-Signature-256": meta_signature(body, SECRETS["wa_app"])})
        runtime.processor.drain()
        dispatch(db, settings, ids, Clock(datetime.now(timezone.utc)), url)  # the fallback is due at processing time
        rows = outbox_rows(db)
    assert [(r.step, r.status) for r in rows] == [("ask", "failed"), ("ask", "sent")]
    assert [(c.type, c.template) for c in fake.accepted()] == [("text", None), ("template", "cod_confirm_v1")]


def test_an_uninstalled_shop_gets_no_more_sends(db_url, sandbox):
    fake, url = sandbox
    settings = settings_for(db_url, url)
    with running_app(settings) as (client, runtime):
        db, ids = runtime.db, runtime.store_ids
        cid = seed_contact(db, ids["shop-a"])
        queue(db, settings, ids["shop-a"], cid)
        body = json.dumps(load_json(FIXTURES / "shopify" / "app_uninstalled.sample.json")).encode()
        client.post("/webhooks/shopify", content=body,
                    headers=shopify_headers(body, SECRETS["shop_a"], "shop-a.myshopify.com", "app/uninstalled"))
        runtime.processor.drain()
        dispatch(db, settings, ids, Clock(NOON_IST), url)
        [row] = outbox_rows(db)
    assert row.status == "pending" and fake.accepted() == []  # kept, never sent


def test_pair_spacing_is_per_sending_number_so_another_store_is_not_held_back(db, db_url, sandbox):
    """Meta spaces one business number's messages to one user (error 131056), not every
    number's: two stores, each with its own number, send their COD asks to the same customer
    at once; a second message from the same store to that customer waits for the spacing."""
    fake, url = sandbox
    raw = settings_dict(db_url)
    raw["whatsapp"].update({"access_token": "sandbox-token", "graph_base_url": url, "pair_spacing_seconds": 6})
    for store in raw["stores"][:2]:
        store["templates"] = TEMPLATES
    settings = parse_settings(raw, environ={})
    ids = sync_stores(db, [(s.key, s.platform) for s in settings.stores])
    contacts = {key: seed_contact(db, ids[key]) for key in ("shop-a", "shop-b")}
    with db.engine.begin() as conn:
        for key, subject in (("shop-a", "order:1"), ("shop-b", "order:1"), ("shop-a", "order:2")):
            queue_template(conn, store=settings.stores[0 if key == "shop-a" else 1], store_id=ids[key], contact_id=contacts[key],
                           journey="cod_confirmation", step="ask", subject=subject, context=CONTEXT, now=NOON_IST)
    dispatch(db, settings, ids, Clock(NOON_IST), url)
    rows = outbox_rows(db)
    sent_from = sorted(call.phone_number_id for call in fake.accepted())
    assert sent_from == sorted([settings.stores[0].whatsapp_phone_number_id, settings.stores[1].whatsapp_phone_number_id])
    assert [(r.store_id, r.status) for r in rows] == [(ids["shop-a"], "sent"), (ids["shop-b"], "sent"), (ids["shop-a"], "pending")]
    assert rows[2].due_at > NOON_IST  # deferred by the spacing, not dropped


def test_the_sandbox_stops_cleanly_with_status_webhooks_still_on_their_way():
    """The sandbox Cloud API (demo, benches) answers each accepted message with status
    webhooks 10 ms apart. Stopped with some still on their way, it used to close its HTTP
    client under them: each then ended in "Cannot send a request, as the client has been
    closed", logged by asyncio as a task exception nobody retrieved (dozens per bench run).
    They are now dropped, as a stopped process drops them."""
    import httpx

    fake = SandboxWhatsApp(app_secret="s", statuses=("sent", "delivered", "read"), webhook_url="http://127.0.0.1:9/webhooks/whatsapp")

    async def run() -> list:
        async with fake.app.router.lifespan_context(fake.app):  # what uvicorn runs around the server
            async with httpx.AsyncClient(transport=httpx.ASGITransport(app=fake.app), base_url="http://sandbox") as client:
                for n in range(3):
                    r = await client.post(f"/v23.0/{PHONE_ID_A}/messages", headers={"Authorization": "Bearer sandbox-token"},
                                          json={"messaging_product": "whatsapp", "to": f"+9198765432{n:02d}", "type": "text",
                                                "text": {"body": "hi"}})
                    assert r.status_code == 200
            posting = [t for t in asyncio.all_tasks() if "_post_statuses" in repr(t.get_coro())]
            assert len(posting) == 3
            await asyncio.sleep(0.001)  # they have started: their first status waits its 10 ms
        await asyncio.sleep(0.05)  # the server has stopped; what is left of its tasks runs now
        return [t.exception() for t in posting if t.done() and not t.cancelled()]

    errors = asyncio.run(run())
    assert len(fake.accepted()) == 3
    assert not [e for e in errors if e is not None]
