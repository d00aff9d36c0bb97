"""Personal data is kept only as long as it is useful: raw webhook bodies past the retention.

The normalised event, the state tables and the timeline stay; the raw body (names, phones,
addresses as the platform sent them) is deleted from ``inbox_bodies`` for inbox rows that are
settled (done, ignored) and older than ``worker.raw_body_retention_days``. Failed and held
rows keep their body so they can still be replayed after a fix (``storeloop replay``).
"""

from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy import delete, select

from connector.storage.db import Database
from connector.storage.sql import BODIES, INBOX

SETTLED = ("done", "ignored")


def purge_raw_bodies(db: Database, now: datetime, retention_days: int, batch: int = 5000) -> int:
    """Drop raw bodies of settled inbox rows received before the retention; returns rows purged."""
    cutoff = now - timedelta(days=retention_days)
    total = 0
    while True:  # in batches, so one run never holds the SQLite write lock for long
        with db.write_lock(), db.engine.begin() as conn:
            ids = [r.id for r in conn.execute(
                select(BODIES.c.id).join(INBOX, INBOX.c.id == BODIES.c.id)
                .where(INBOX.c.status.in_(SETTLED), INBOX.c.received_at < cutoff)
                .limit(batch)
            )]
            if ids:
                conn.execute(delete(BODIES).where(BODIES.c.id.in_(ids)))
        total += len(ids)
        if len(ids) < batch:
            return total
