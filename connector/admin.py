"""Read models for support staff: a customer's whole context without a CRM.

Every query is scoped by store: a key from one store never finds another store's rows.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from sqlalchemy import func, select, update

from connector.contacts import normalize_phone
from connector.number_change import previous_owner
from connector.rows import phone_key
from connector.storage.db import Database
from connector.storage import models as m
from connector.storage.sql import BODIES, INBOX


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value else None


def _event_summary(row: Any) -> dict[str, Any]:
    return {
        "at": _iso(row.received_at),
        "kind": "event",
        "id": row.id,
        "source": row.source,
        "topic": row.topic,
        "status": row.status,
        "types": [e.get("type") for e in (row.event or [])],
        "subject": row.subject,
        "error": row.last_error,
    }


def _message_text(msg: Any) -> str | None:
    """The text, or what became of it: the conversation retention (``connector/retention.py``) empties texts
    past ``worker.conversation_retention_days``; the days are the message's age when it went."""
    if msg.content_removed_at is None:
        return msg.body
    days = (_aware(msg.content_removed_at) - _aware(msg.occurred_at)).days
    return f"(text removed after {days} days)"


def contact_view(db: Database, store_id: int, phone: str, default_country: str, limit: int = 100,
                 now: datetime | None = None) -> dict[str, Any] | None:
    parsed = normalize_phone(phone, default_country)
    if parsed is None:
        return None
    key = phone_key(parsed)  # as the contact was stored (a raw phone's key is cut to its column)
    with db.engine.connect() as conn:
        contact = conn.execute(
            select(m.Contact).where(m.Contact.store_id == store_id, m.Contact.phone_key == key)
        ).one_or_none()
        if contact is None and parsed.e164:
            contact = conn.execute(
                select(m.Contact).where(m.Contact.store_id == store_id, m.Contact.wa_id == parsed.e164.lstrip("+"))
            ).one_or_none()
        if contact is None and (moved_to := previous_owner(conn, store_id, key, now or m.utcnow())) is not None:
            # a number she changed on WhatsApp lately (``number_change.WINDOW``): her contact, now on her new number
            contact = conn.execute(select(m.Contact).where(m.Contact.id == moved_to)).one_or_none()
        if contact is None:
            return None
        events = conn.execute(
            select(m.InboxEvent)
            .where(m.InboxEvent.store_id == store_id, m.InboxEvent.contact_id == contact.id)
            .order_by(m.InboxEvent.id.desc())
            .limit(limit)
        ).all()
        messages = conn.execute(
            select(m.Message)
            .where(m.Message.store_id == store_id, m.Message.contact_id == contact.id)
            .order_by(m.Message.occurred_at.desc())
            .limit(limit)
        ).all()
        runs = conn.execute(
            select(m.JourneyRun).where(m.JourneyRun.store_id == store_id, m.JourneyRun.contact_id == contact.id)
        ).all()
        orders = conn.execute(
            select(m.Order.external_id, m.Order.name, m.Order.payment_state, m.Order.total, m.Order.currency, m.Order.placed_at)
            .where(m.Order.store_id == store_id, m.Order.contact_id == contact.id)
            .order_by(m.Order.placed_at.desc())
            .limit(limit)
        ).all()
        timeline = [_event_summary(e) for e in events] + [
            {
                "at": _iso(msg.occurred_at),
                "kind": "message",
                "direction": msg.direction,
                "wamid": msg.wamid,
                "type": msg.kind,
                "status": msg.status,
                "error_code": msg.error_code,
                "text": _message_text(msg),
            }
            for msg in messages
        ]
        timeline.sort(key=lambda t: t["at"] or "", reverse=True)
        return {
            "contact": {
                "phone": contact.phone_e164,
                "phone_raw": contact.phone_raw,
                "reachable": contact.reachable,
                # when WhatsApp last refused the number (131026) or it was last tried again: the retry clock
                "unreachable_since": _iso(contact.unreachable_at),
                "wa_id": contact.wa_id,
                "name": " ".join(p for p in (contact.first_name, contact.last_name) if p) or None,
                "email": contact.email,
                "customer_id": contact.external_customer_id,
                "stage": contact.stage,
                "last_inbound_at": _iso(contact.last_inbound_at),
                "opted_out_at": _iso(contact.opted_out_at),
            },
            "consent": {
                cat: {
                    "state": getattr(contact, f"consent_{cat}"),
                    "source": getattr(contact, f"consent_{cat}_source"),
                    "at": _iso(getattr(contact, f"consent_{cat}_at")),
                }
                for cat in ("utility", "marketing")
            },
            "journeys": [
                {"journey": r.journey, "subject": r.subject, "status": r.status, "next_due_at": _iso(r.next_due_at)}
                for r in runs
            ],
            "orders": [
                {"id": o.external_id, "name": o.name, "payment_state": o.payment_state, "total": str(o.total), "currency": o.currency, "placed_at": _iso(o.placed_at)}
                for o in orders
            ],
            "timeline": timeline[:limit],
        }


def order_view(db: Database, store_id: int, external_id: str) -> dict[str, Any] | None:
    with db.engine.connect() as conn:
        order = conn.execute(
            select(m.Order).where(m.Order.store_id == store_id, m.Order.external_id == external_id)
        ).one_or_none()
        if order is None:
            return None
        lines = conn.execute(select(m.OrderLine).where(m.OrderLine.order_id == order.id)).all()
        fulfillments = conn.execute(
            select(m.Fulfillment).where(m.Fulfillment.store_id == store_id, m.Fulfillment.order_external_id == external_id)
        ).all()
        events = conn.execute(
            select(m.InboxEvent)
            .where(m.InboxEvent.store_id == store_id, m.InboxEvent.subject == f"order:{external_id}")
            .order_by(m.InboxEvent.id)
        ).all()
        phone = None
        if order.contact_id is not None:
            phone = conn.execute(select(m.Contact.phone_e164).where(m.Contact.id == order.contact_id)).scalar()
        return {
            "order": {
                "id": order.external_id,
                "name": order.name,
                "payment_state": order.payment_state,
                "fulfillment_state": order.fulfillment_state,
                "platform_status": order.platform_status,
                "is_cod": order.is_cod,
                "total": str(order.total),
                "currency": order.currency,
                "tags": order.tags,
                "placed_at": _iso(order.placed_at),
                "cancelled_at": _iso(order.cancelled_at),
                "updated_at": _iso(order.source_updated_at),
                "contact_phone": phone,
                "status_url": order.status_url,
            },
            "line_items": [
                {"title": li.title, "quantity": li.quantity, "price": str(li.price), "product_id": li.product_id, "variant_id": li.variant_id, "sku": li.sku}
                for li in lines
            ],
            "fulfillments": [
                {"id": f.external_id, "status": f.status, "shipment_status": f.shipment_status, "tracking_company": f.tracking_company, "tracking_url": f.tracking_url}
                for f in fulfillments
            ],
            "events": [_event_summary(e) for e in events],
        }


INBOX_STATUSES = ("pending", "done", "ignored", "failed", "held")


def inbox_view(db: Database, store_id: int, status: str | None, limit: int = 50, before_id: int | None = None) -> list[dict[str, Any]]:
    query = select(m.InboxEvent).where(m.InboxEvent.store_id == store_id)
    if status:
        query = query.where(m.InboxEvent.status == status)
    if before_id:
        query = query.where(m.InboxEvent.id < before_id)
    with db.engine.connect() as conn:
        rows = conn.execute(query.order_by(m.InboxEvent.id.desc()).limit(limit)).all()
        return [
            {**_event_summary(r), "dedupe_key": r.dedupe_key, "attempts": r.attempts, "received_at": _iso(r.received_at)}
            for r in rows
        ]


REPLAYABLE = ("failed", "held")
REPLAY_CHUNK = 500  # ids per statement (SQLite's bound-parameter limit, PostgreSQL's plan size)


@dataclass(slots=True)
class Replay:
    """What a replay did: the rows made pending again (id, topic, their last error) and, for ids
    asked for by number, why each other one was not."""

    rows: list[dict[str, Any]] = field(default_factory=list)
    refused: dict[int, str] = field(default_factory=dict)

    def as_dict(self, listed: int = 1000) -> dict[str, Any]:
        return {"replayed": len(self.rows), "items": self.rows[:listed], "not_replayed": {str(k): v for k, v in self.refused.items()}}


def replay_inbox(db: Database, store_id: int, *, ids: list[int] | None = None, status: str = "failed",
                 since: datetime | None = None) -> Replay:
    """Make a store's ``status`` rows (failed by default; those ``ids``, received since ``since``)
    pending again, as if just received: attempts back to 0, due at once (no due time, so a
    worker whose clock is behind this process's takes it too), first-processed time cleared (a
    fulfilment waits for its order again).

    Failed rows keep their body for this (``retention.py``): after a fix, their events are
    applied as they would have been, through the processor's usual checks, so a row whose news
    reached us some other way since (a later webhook, the reconciliation) is stale, and one run
    per journey and subject means no customer hears the same thing twice. A row without its body
    (erased for a privacy request) cannot be read again and is left as it is. The update is
    conditional on the status, so two replays at once make a row pending once.
    """
    if status not in REPLAYABLE:
        raise ValueError(f"status must be one of {', '.join(REPLAYABLE)}")
    result = Replay()
    query = (select(INBOX.c.id, INBOX.c.status, INBOX.c.topic, INBOX.c.source, INBOX.c.received_at, INBOX.c.last_error,
                    BODIES.c.id.label("body"))
             .select_from(INBOX.outerjoin(BODIES, BODIES.c.id == INBOX.c.id)).where(INBOX.c.store_id == store_id))
    with db.write_lock(), db.engine.begin() as conn:
        if ids:
            found = []
            for chunk in _chunks(sorted(set(ids)), REPLAY_CHUNK):
                found += conn.execute(query.where(INBOX.c.id.in_(chunk))).all()
        else:
            where = query.where(INBOX.c.status == status)
            found = conn.execute(where if since is None else where.where(INBOX.c.received_at >= since)).all()
        chosen = []
        for row in sorted(found, key=lambda r: r.id):
            if row.status != status:
                result.refused[row.id] = f"{row.status}, not {status}"
            elif since is not None and _aware(row.received_at) < since:
                result.refused[row.id] = "received before --since"
            elif row.body is None:
                result.refused[row.id] = "no stored body (erased for a privacy request)"
            else:
                chosen.append(row)
        for missing in sorted(set(ids or ()) - {r.id for r in found}):
            result.refused[missing] = "no such inbox row in this store"
        replayed: set[int] = set()
        for chunk in _chunks([r.id for r in chosen], REPLAY_CHUNK):
            done = conn.execute(update(INBOX).where(INBOX.c.id.in_(chunk), INBOX.c.status == status)
                                .values(status="pending", attempts=0, available_at=None, processed_at=None)
                                .returning(INBOX.c.id))
            replayed.update(r.id for r in done)
    for row in chosen:
        if row.id in replayed:
            result.rows.append({"id": row.id, "source": row.source, "topic": row.topic, "received_at": _iso(row.received_at),
                                "error": row.last_error})
        else:
            result.refused[row.id] = "replayed by someone else meanwhile"
    return result


def failed_count(conn: Any, store_id: int) -> int:
    """The store's inbox rows that failed for good (what ``storeloop replay`` takes)."""
    return int(conn.execute(select(func.count()).select_from(INBOX).where(INBOX.c.status == "failed",
                                                                            INBOX.c.store_id == store_id)).scalar() or 0)


def _chunks(items: list[int], size: int) -> list[list[int]]:
    return [items[i:i + size] for i in range(0, len(items), size)]


def _aware(value: datetime) -> datetime:
    return value if value.tzinfo is not None else value.replace(tzinfo=timezone.utc)


def notifications(conn: Any, store_id: int, cases: list[Any]) -> dict[int, dict[str, Any]]:
    """Whether each case's owner was told: its latest notification (the opening's, or that of the
    last update its owner was told of) as ``sent``, ``failed`` (with the webhook's answer, e.g.
    ``HTTP 404 (no_service)``: a revoked hook tells no one until the config is fixed), ``pending``
    (queued, or waiting to retry) or ``not_configured`` (the stage has no ``notify_url``)."""
    from connector.handoffs import notification_key
    from connector.storage.sql import OUTBOX

    keys = {notification_key(h.id, int((h.context or {}).get("told_update") or 0)): h.id for h in cases}
    if not keys:
        return {}
    rows = {r.idempotency_key: r for r in conn.execute(
        select(OUTBOX.c.idempotency_key, OUTBOX.c.status, OUTBOX.c.last_error, OUTBOX.c.skip_reason, OUTBOX.c.attempts,
               OUTBOX.c.updated_at).where(OUTBOX.c.store_id == store_id, OUTBOX.c.channel == "notify",
                                          OUTBOX.c.idempotency_key.in_(list(keys))))}
    out: dict[int, dict[str, Any]] = {}
    for key, hid in keys.items():
        r = rows.get(key)
        if r is None or r.status == "skipped":  # never queued, or the stage's URL was removed before it went
            out[hid] = {"status": "not_configured"}
        elif r.status in ("sent", "failed"):
            out[hid] = {"status": r.status, "at": _iso(r.updated_at), **({"error": r.last_error} if r.status == "failed" else {})}
        else:  # pending or sending; a retry keeps the last error
            out[hid] = {"status": "pending", "attempts": r.attempts, **({"error": r.last_error} if r.last_error else {})}
    return out


def handoffs_view(db: Database, store_id: int, status: str | None, limit: int = 100, before_id: int | None = None) -> list[dict[str, Any]]:
    """Newest first, a page at a time: the next page is ``before_id`` = the last item's id (as the
    inbox's), so a store with more open cases than a page still sees every one of them. Each case
    says whether its owner was told (``notify``, see ``notifications``)."""
    from connector.storage.sql import HANDOFFS

    query = select(HANDOFFS).where(HANDOFFS.c.store_id == store_id)
    if status:
        query = query.where(HANDOFFS.c.status == status)
    if before_id:
        query = query.where(HANDOFFS.c.id < before_id)
    with db.engine.connect() as conn:
        rows = conn.execute(query.order_by(HANDOFFS.c.id.desc()).limit(limit)).all()
        told = notifications(conn, store_id, rows)
    return [
        {"id": h.id, "status": h.status, "stage": h.stage, "owner": h.owner, "reason": h.reason, "journey": h.journey,
         "subject": h.subject, "opened_at": _iso(h.opened_at), "closed_at": _iso(h.closed_at), "closed_by": h.closed_by,
         "resolution": h.resolution, "notify": told[h.id], "context": h.context}
        for h in rows
    ]


def close_handoff(db: Database, store_id: int, handoff_id: int, by: str, resolution: str | None, now: datetime) -> bool:
    """``now`` from the runtime's clock, as every other timestamp (resolution times are measured against ``opened_at``)."""
    from connector.handoffs import close_handoff as close

    with db.write_lock(), db.engine.begin() as conn:
        return close(conn, store_id, handoff_id, by, resolution, now)
