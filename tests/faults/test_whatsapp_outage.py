"""The WhatsApp API is down (connection refused, then 5xx, then 130429) and comes back.

Everything queued goes out exactly once, in order per contact (a later message never
overtakes an earlier one that is retrying), and nothing goes out inside quiet hours. Time
is a virtual clock; the Cloud API is the sandbox on a real 127.0.0.1 port that first has
nobody listening, then answers scripted failures, then works.
"""

from __future__ import annotations

import asyncio
import socket
from collections import defaultdict
from datetime import datetime, timedelta, timezone

from sqlalchemy import select

from adapters.whatsapp.client import WhatsAppClient
from connector.config import parse_settings
from connector.outbox import store as ob
from connector.outbox.dispatcher import Dispatcher
from connector.sandbox.seed import CONTEXT, TEMPLATE, seed_due_messages
from connector.sandbox.whatsapp import SandboxServer, SandboxWhatsApp, ScriptedResponse
from connector.storage import models as m
from connector.storage.db import Database
from connector.storage.inbox import sync_stores
from connector.templates import render
from tests.conftest import settings_dict

T0 = datetime(2026, 11, 20, 14, 50, tzinfo=timezone.utc)  # 20:20 in Kolkata; quiet hours start at 21:00
CONTACTS = 20
REMINDER = {**TEMPLATE, "step": "cod_confirmation.reminder_1", "name": "cod_reminder_v1"}


class Clock:
    def __init__(self, now: datetime):
        self.now = now

    def __call__(self) -> datetime:
        return self.now


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _queue_reminders(db: Database, store, store_id: int, now: datetime) -> None:
    """A second message for every contact, queued after the first and due at the same time."""
    tpl = store.template_for("cod_confirmation.reminder_1")
    with db.write_lock(), db.engine.begin() as conn:
        for i, (cid, phone) in enumerate(conn.execute(select(m.Contact.id, m.Contact.phone_e164).where(m.Contact.store_id == store_id)
                                                      .order_by(m.Contact.id))):
            payload = {"subject": f"order:{i}", "message": render(tpl, CONTEXT, to=phone, callback_data=None).model_dump(mode="json")}
            assert ob.enqueue(conn, store_id=store_id, key=f"cod_confirmation:reminder_1:order:{i}", contact_id=cid, journey="cod_confirmation",
                              step="reminder_1", category="utility", payload=payload, due_at=now, now=now) is not None


def test_an_outage_then_recovery_sends_everything_once_in_order_and_never_in_quiet_hours(db_url):
    port = _free_port()
    raw = settings_dict(db_url)
    raw["whatsapp"].update(access_token="sandbox-token", graph_base_url=f"http://127.0.0.1:{port}", pair_spacing_seconds=0,
                           backoff_base_seconds=10, backoff_cap_seconds=600, max_attempts=10)
    raw["stores"][0].update(templates=[TEMPLATE, REMINDER], policy={"quiet_hours": "21:00-09:00", "utility_in_quiet_hours": False})
    settings = parse_settings(raw, environ={})
    store = settings.stores[0]
    db = Database.from_url(db_url)
    store_ids = sync_stores(db, [(s.key, s.platform) for s in settings.stores])
    sid = store_ids[store.key]
    seed_due_messages(db, store, sid, CONTACTS, T0)
    _queue_reminders(db, store, sid, T0)
    clock = Clock(T0)
    fake = SandboxWhatsApp()
    accepted_at: dict[str, datetime] = {}  # callback -> the virtual time it was accepted

    def drain(at: datetime) -> None:
        clock.now = at
        before = len(fake.accepted())

        async def go() -> None:
            client = WhatsAppClient(f"http://127.0.0.1:{port}", settings.whatsapp.api_version, "sandbox-token")
            try:
                await Dispatcher(db, settings, store_ids, client, clock=clock).drain()
            finally:
                await client.aclose()

        asyncio.run(go())
        for call in fake.accepted()[before:]:
            accepted_at.setdefault(call.callback_data or "", at)

    try:
        # 1. nobody listens: connection refused, every first message is retried later
        drain(T0)
        with db.engine.connect() as conn:
            rows = conn.execute(select(m.OutboxMessage.step, m.OutboxMessage.status, m.OutboxMessage.attempts)).all()
        assert {(r.step, r.status, r.attempts) for r in rows} == {("ask", "pending", 1), ("reminder_1", "pending", 0)}
        # 2. the API is back but answers 5xx, then 130429 with Retry-After, for a while
        fake.script.extend([ScriptedResponse(503, {"error": {"message": "Service unavailable", "code": 2, "is_transient": True}})] * 15
                           + [ScriptedResponse(502, "<html><body>502 Bad Gateway</body></html>")] * 5
                           + [ScriptedResponse(429, {"error": {"message": "(#130429) Rate limit hit", "code": 130429}},
                                               {"Retry-After": "2400"})] * 20)
        with SandboxServer(fake.app, port=port):
            t = T0
            while t < T0 + timedelta(hours=20):
                t += timedelta(minutes=2 if t < T0 + timedelta(minutes=20) else 15)
                drain(t)
        assert not fake.script  # every scripted failure was served
    finally:
        db.dispose()

    with Database.from_url(db_url).engine.connect() as conn:
        rows = conn.execute(select(m.OutboxMessage.id, m.OutboxMessage.contact_id, m.OutboxMessage.step, m.OutboxMessage.status)
                            .order_by(m.OutboxMessage.id)).all()
    # once: every row sent, and the API accepted each callback exactly once
    assert all(r.status == "sent" for r in rows) and len(rows) == 2 * CONTACTS
    per_callback = fake.sends_per_callback()
    assert sorted(per_callback) == sorted(ob.callback_for(r.id) for r in rows) and set(per_callback.values()) == {1}
    # in order per contact: the ask (queued first) was accepted before the reminder, never after
    by_contact: dict[int, list[datetime]] = defaultdict(list)
    order_seen = {c.callback_data: i for i, c in enumerate(fake.accepted())}
    for r in rows:
        by_contact[r.contact_id].append(order_seen[ob.callback_for(r.id)])
    assert all(seq == sorted(seq) for seq in by_contact.values())
    # never in quiet hours (21:00-09:00 Kolkata): what was not out by 21:00 waited for the morning
    tz = store.tz
    hours = sorted({at.astimezone(tz).strftime("%H:%M") for at in accepted_at.values()})
    assert all("09:00" <= h < "21:00" for h in hours), hours
    # the 130429 answers asked for 40 minutes: that ran into quiet hours, so all went the next morning
    assert hours and all("09:00" <= h < "10:00" for h in hours), hours
