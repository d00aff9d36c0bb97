"""Personal data is kept only as long as it is useful: raw webhook bodies past the retention, and
conversation content past ``worker.conversation_retention_days``.

The raw body (names, phones, addresses, message texts as the platform sent them) is deleted
from ``inbox_bodies`` for inbox rows that are settled (done, ignored) and older than
``worker.raw_body_retention_days``, and the row's normalised ``event``, a copy of the same
data (her name, phone, email, the text she wrote), keeps only each event's type: what the
contact timeline shows of an old delivery. (Until 0021 the normalised event stayed for good,
so the retention removed nothing but the bytes: the same data stayed one column over.) Failed
and held rows keep their body so they can still be replayed after a fix (``storeloop replay``).

The conversation itself has a retention of its own (``purge_conversations``), by each row's own
time: message texts (``messages.body``; direction, status, wamid, kind, times and the outbox link
stay), closed hand-offs' context and the customer's words in their reason (an open case keeps
both: a person works on it), and settled sends' rendered messages (a pending or sending row still
has to go). What the weekly report, the dashboard and the export count stays: journey, step,
category, status, skip reason, the template's name, times, subjects. ``content_removed_at`` marks
an emptied row, so the timeline says so and a run skips the rows done before.
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta
from typing import Any, Callable

from sqlalchemy import Connection, bindparam, delete, select, update

from connector.compliance import HANDOFF_CONTEXT_KEEP, MESSAGE_KEEP, PAYLOAD_KEEP, REDACTED, generic_scrub
from connector.handoffs import reason_without_words
from connector.storage.db import Database
from connector.storage.sql import ATTEMPTS, BODIES, HANDOFFS, INBOX, MESSAGES, OUTBOX

log = logging.getLogger("storeloop.retention")

SETTLED = ("done", "ignored")


def event_types(event: Any) -> list[dict[str, Any]] | None:
    """What an inbox row's event keeps past the retention: the type of each event, nothing it carried."""
    if not isinstance(event, list):
        return event
    return [{"type": e.get("type")} for e in event if isinstance(e, dict)]


_KEEP_TYPES = update(INBOX).where(INBOX.c.id == bindparam("_id")).values(event=bindparam("_event"))


def purge_raw_bodies(db: Database, now: datetime, retention_days: int, batch: int = 5000) -> int:
    """Drop raw bodies of settled inbox rows received before the retention, and their events but
    for the types; returns rows purged."""
    cutoff = now - timedelta(days=retention_days)
    total = 0
    while True:  # in batches, so one run never holds the SQLite write lock for long
        with db.write_lock(), db.engine.begin() as conn:
            rows = conn.execute(
                select(BODIES.c.id, INBOX.c.event).join(INBOX, INBOX.c.id == BODIES.c.id)
                .where(INBOX.c.status.in_(SETTLED), INBOX.c.received_at < cutoff)
                .limit(batch)
            ).all()
            if rows:
                conn.execute(delete(BODIES).where(BODIES.c.id.in_([r.id for r in rows])))
                reduced = [{"_id": r.id, "_event": kept} for r in rows if (kept := event_types(r.event)) != r.event]
                if reduced:
                    conn.execute(_KEEP_TYPES, reduced)
        total += len(rows)
        if len(rows) < batch:
            return total


# ---- conversation content -------------------------------------------------------------------------------
UNSENT = ("pending", "sending")  # a send still to go (or going) keeps its message
REMOVED = "removed_after_days"  # the key an emptied payload or context has: after how many days


def removed_note(days: int) -> str:
    return f"removed after {days} days"


def purge_conversations(db: Database, now: datetime, retention_days: int, batch: int = 1000) -> dict[str, int]:
    """Empty the conversation content older than ``retention_days`` (see the module's docstring);
    returns the rows emptied per table. Each table in batches by id, each batch its own short
    transaction, so the SQLite write lock is never held long; rows done before are skipped."""
    cutoff = now - timedelta(days=retention_days)
    return {name: _batches(db, lambda conn, after: step(conn, cutoff, now, retention_days, after, batch), batch)
            for name, step in (("messages", _messages), ("handoffs", _handoffs), ("outbox", _outbox))}


def _batches(db: Database, step: Callable[[Connection, int], tuple[int, int | None]], batch: int) -> int:
    """Run ``step`` (one batch after the id ``after``: rows emptied, the last id read) until a batch reads fewer than ``batch``."""
    total, after = 0, 0
    while True:
        with db.write_lock(), db.engine.begin() as conn:
            emptied, last = step(conn, after)
        total += emptied
        if last is None:
            return total
        after = last


def _messages(conn: Connection, cutoff: datetime, now: datetime, days: int, after: int, batch: int) -> tuple[int, int | None]:
    """Only messages with a text are marked: a photo or reaction that never had one is not shown as removed."""
    ids = conn.execute(select(MESSAGES.c.id).where(
        MESSAGES.c.id > after, MESSAGES.c.occurred_at < cutoff, MESSAGES.c.body.is_not(None))
        .order_by(MESSAGES.c.id).limit(batch)).scalars().all()
    if ids:
        conn.execute(update(MESSAGES).where(MESSAGES.c.id.in_(ids)).values(body=None, content_removed_at=now))
    return len(ids), (ids[-1] if len(ids) == batch else None)


def _handoffs(conn: Connection, cutoff: datetime, now: datetime, days: int, after: int, batch: int) -> tuple[int, int | None]:
    """Closed cases closed before the cutoff (a case worked on for months keeps its context until it has been
    closed that long). Kept: the stage, the orders and journeys it was about, when its owner was told, when each update came."""
    rows = conn.execute(select(HANDOFFS.c.id, HANDOFFS.c.reason, HANDOFFS.c.context).where(
        HANDOFFS.c.id > after, HANDOFFS.c.status == "closed", HANDOFFS.c.closed_at < cutoff,
        HANDOFFS.c.content_removed_at.is_(None)).order_by(HANDOFFS.c.id).limit(batch)).all()
    params = []
    for r in rows:
        before = r.context or {}
        context: dict[str, Any] = {k: v for k, v in before.items() if k in (*HANDOFF_CONTEXT_KEEP, "update_count", REDACTED)}
        if isinstance(before.get("updates"), list):
            context["updates"] = [{"at": u.get("at")} for u in before["updates"] if isinstance(u, dict)]
        context[REMOVED] = days
        params.append({"_id": r.id, "_reason": reason_without_words(r.reason, f"words {removed_note(days)}"),
                       "_context": context})
    if params:
        conn.execute(update(HANDOFFS).where(HANDOFFS.c.id == bindparam("_id")).values(
            reason=bindparam("_reason"), context=bindparam("_context"), content_removed_at=now), params)
    return len(rows), (rows[-1].id if len(rows) == batch else None)


def _outbox(conn: Connection, cutoff: datetime, now: datetime, days: int, after: int, batch: int) -> tuple[int, int | None]:
    """Settled sends last changed before the cutoff: the payload keeps what reports and the runs read (its
    subject, the template's name, a write-back's action); error texts lose any email or long number."""
    rows = conn.execute(select(OUTBOX.c.id, OUTBOX.c.payload, OUTBOX.c.last_error).where(
        OUTBOX.c.id > after, OUTBOX.c.status.not_in(UNSENT), OUTBOX.c.updated_at < cutoff,
        OUTBOX.c.content_removed_at.is_(None)).order_by(OUTBOX.c.id).limit(batch)).all()
    params = []
    for r in rows:
        payload = r.payload or {}
        kept: dict[str, Any] = {k: payload[k] for k in (*PAYLOAD_KEEP, REDACTED) if k in payload}  # an erasure's mark stays
        if isinstance(message := payload.get("message"), dict):
            kept["message"] = {k: message[k] for k in MESSAGE_KEEP if k in message}
        kept[REMOVED] = days
        params.append({"_id": r.id, "_payload": kept, "_error": generic_scrub(r.last_error)})
    if params:
        conn.execute(update(OUTBOX).where(OUTBOX.c.id == bindparam("_id")).values(
            payload=bindparam("_payload"), last_error=bindparam("_error"), content_removed_at=now), params)
        attempts = conn.execute(select(ATTEMPTS.c.id, ATTEMPTS.c.error_detail).where(
            ATTEMPTS.c.outbox_id.in_([p["_id"] for p in params]), ATTEMPTS.c.error_detail.is_not(None))).all()
        scrubbed = [{"_id": a.id, "_detail": d} for a in attempts if (d := generic_scrub(a.error_detail)) != a.error_detail]
        if scrubbed:
            conn.execute(update(ATTEMPTS).where(ATTEMPTS.c.id == bindparam("_id")).values(error_detail=bindparam("_detail")), scrubbed)
    return len(rows), (rows[-1].id if len(rows) == batch else None)
