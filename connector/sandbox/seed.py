"""Due messages in bulk for load tests and benchmarks: contacts with consent, one queued template each."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import insert, select

from connector.outbox import store as ob
from connector.storage import models as m
from connector.storage.db import Database
from connector.templates import render_stored

# A COD ask template binding and its values, shared by load tests and benchmarks.
TEMPLATE = {
    "step": "cod_confirmation.ask", "name": "cod_confirm_v1", "category": "utility", "language": "en",
    "body_text": "Hi {{1}}, please confirm order {{2}} of {{3}}.",
    "body": ["customer.first_name", "order.name", "order.total"],
    "buttons": [{"type": "quick_reply", "text": "Confirm", "payload": "cod_confirm"},
                {"type": "quick_reply", "text": "Cancel", "payload": "cod_cancel"}],
}
CONTEXT = {"customer.first_name": "Asha", "order.name": "#1042", "order.total": ("1299.00", "INR")}


def seed_due_messages(db: Database, store: Any, store_id: int, count: int, now: datetime, context: dict[str, Any] = CONTEXT,
                      step: str = "cod_confirmation.ask") -> None:
    """``count`` contacts with utility consent (bulk insert) and one due ``step`` message each."""
    tpl = store.template_for(step)
    assert tpl is not None, f"the store has no template for {step}"
    journey, _, name = step.partition(".")
    phones = [f"+9198{i:08d}" for i in range(count)]
    with db.write_lock(), db.engine.begin() as conn:
        for start in range(0, count, 2000):
            conn.execute(insert(m.Contact), [
                {"store_id": store_id, "phone_key": p, "phone_e164": p, "reachable": True, "first_name": "Asha",
                 "consent_utility": "granted", "consent_utility_source": "order_with_phone",
                 "consent_utility_at": now - timedelta(days=1), "consent_marketing": "unknown",
                 "stage": "entry", "created_at": now, "updated_at": now}
                for p in phones[start:start + 2000]
            ])
        contacts = dict(conn.execute(select(m.Contact.phone_e164, m.Contact.id).where(m.Contact.store_id == store_id)).all())
        for i, phone in enumerate(phones):
            payload = {"subject": f"order:{i}", "message": render_stored(tpl, context, to=phone, callback_data=None)}
            new_id = ob.enqueue(conn, store_id=store_id, key=f"{journey}:{name}:order:{i}", contact_id=contacts[phone],
                                journey=journey, step=name, category=tpl.category, payload=payload, due_at=now, now=now)
            assert new_id is not None
