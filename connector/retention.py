"""Personal data is kept only as long as it is useful: raw webhook bodies past the retention.

The raw body (names, phones, addresses, message texts as the platform sent them) is deleted
from ``inbox_bodies`` for inbox rows that are settled (done, ignored) and older than
``worker.raw_body_retention_days``, and the row's normalised ``event``, a copy of the same
data (her name, phone, email, the text she wrote), keeps only each event's type: what the
contact timeline shows of an old delivery. (Until 0021 the normalised event stayed for good,
so the retention removed nothing but the bytes: the same data stayed one column over.) The
state tables and the timeline (message texts, hand-offs) stay. Failed and held rows keep
their body so they can still be replayed after a fix (``storeloop replay``).
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import bindparam, delete, select, update

from connector.storage.db import Database
from connector.storage.sql import BODIES, INBOX

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
