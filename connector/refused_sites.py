"""Authentic deliveries refused because another site sent them, counted where the owner looks.

A copy of a shop (a staging site) carries the live shop's secret, and its deliveries are refused on
purpose. But a shop whose own home address is not the configured one (a language directory in it,
a move to a new domain) has every delivery refused the same way, and the store looked healthy
except for log lines: no order reached a journey until the next reconcile. The dashboard's
connector health and the weekly report now name each site refused in the last week, with the fix.

Kept in the database, not in the process (the dashboard may run in another process than the one
that answered the delivery), in one ``sync_cursors`` row per store (``webhooks:refused-sites``, the
value JSON, at most ``MAX_SITES`` sites), so no schema change. A flood of refused deliveries costs
no write storm: each is counted in memory and the count written at most once a minute per store
and process (``EVERY``); what is counted after the last write of a burst is not written.
"""

from __future__ import annotations

import json
import logging
from datetime import datetime, timedelta
from typing import Any

import anyio
from sqlalchemy import Connection, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import SQLAlchemyError

from connector.storage.db import Database
from connector.storage.models import SyncCursor

log = logging.getLogger("storeloop.webhooks")

NAME = "webhooks:refused-sites"
EVERY = timedelta(minutes=1)
SHOWN_FOR = timedelta(days=7)  # the weekly report's horizon: a copy switched off leaves the notice within a week
MAX_SITES = 5  # the most recently refused are kept


class RefusedSites:
    """Counts refused deliveries per store and sending site; writes them at most once per ``EVERY``."""

    def __init__(self, db: Database, every: timedelta = EVERY):
        self.db, self.every = db, every
        self._pending: dict[int, dict[str, tuple[int, datetime]]] = {}  # store -> site -> (count, last refused)
        self._written: dict[int, datetime] = {}

    async def note(self, store_id: int, site: str, now: datetime) -> None:
        """One refused delivery from ``site`` (already bounded for display by the adapter)."""
        pending = self._pending.setdefault(store_id, {})
        if site in pending or len(pending) < 4 * MAX_SITES:  # bounded however many sites a leaked secret signs for
            pending[site] = (pending.get(site, (0, now))[0] + 1, now)
        last = self._written.get(store_id)
        if last is not None and now - last < self.every:
            return
        self._written[store_id] = now  # before the write: a concurrent refusal does not write again
        batch = self._pending.pop(store_id)
        try:
            await anyio.to_thread.run_sync(self._write, store_id, batch, now)
        except SQLAlchemyError:
            log.warning("could not record a refused delivery for the dashboard", extra={"store_id": store_id}, exc_info=True)

    def _write(self, store_id: int, batch: dict[str, tuple[int, datetime]], now: datetime) -> None:
        with self.db.write_lock(), self.db.engine.begin() as conn:
            state = _sites(conn.execute(select(SyncCursor.value).where(SyncCursor.store_id == store_id,
                                                                       SyncCursor.name == NAME)).scalar())
            for site, (count, at) in batch.items():
                seen = state.get(site) or {"count": 0, "first_at": at.isoformat()}
                state[site] = {"count": int(seen.get("count") or 0) + count, "first_at": seen.get("first_at") or at.isoformat(),
                               "last_at": at.isoformat()}
            kept = dict(sorted(state.items(), key=lambda kv: str(kv[1].get("last_at")), reverse=True)[:MAX_SITES])
            value = json.dumps({"sites": kept}, sort_keys=True)
            insert = postgresql.insert if conn.dialect.name == "postgresql" else sqlite.insert
            stmt = insert(SyncCursor).values(store_id=store_id, name=NAME, value=value, updated_at=now)
            conn.execute(stmt.on_conflict_do_update(index_elements=["store_id", "name"], set_={"value": value, "updated_at": now}))


def _sites(value: str | None) -> dict[str, dict[str, Any]]:
    try:
        data = json.loads(value) if value else {}
    except ValueError:
        data = {}
    sites = data.get("sites") if isinstance(data, dict) else None
    return {str(k): v for k, v in sites.items() if isinstance(v, dict)} if isinstance(sites, dict) else {}


def refused_sites(conn: Connection, store_id: int, now: datetime) -> list[dict[str, Any]]:
    """The sites whose deliveries were refused in the last ``SHOWN_FOR``, the latest first: each with the
    count written so far and the first and last refusal."""
    value = conn.execute(select(SyncCursor.value).where(SyncCursor.store_id == store_id, SyncCursor.name == NAME)).scalar()
    since = now - SHOWN_FOR
    out = []
    for site, seen in _sites(value).items():
        try:
            last = datetime.fromisoformat(str(seen.get("last_at")))
        except ValueError:
            continue
        if last >= since:
            out.append({"site": site, "count": int(seen.get("count") or 0), "first_at": seen.get("first_at"), "last_at": last.isoformat()})
    return sorted(out, key=lambda s: s["last_at"], reverse=True)


__all__ = ["EVERY", "RefusedSites", "refused_sites"]
