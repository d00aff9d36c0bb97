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

A site's notice goes once the store takes its deliveries (the owner listed it in ``webhook_sources``):
at the start of a process with that setting (``forget``) and when a delivery from it is accepted
(``accepted``). Writers lock the row (``_locked``): two workers recording at once each add their sites.
"""

from __future__ import annotations

import json
import logging
from datetime import datetime, timedelta
from typing import Any, Callable

import anyio
from sqlalchemy import Connection, select, update
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
        self._cleared: dict[int, datetime] = {}  # when an accepted delivery last looked at the store's notice

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
            state = _locked(conn, store_id, now)
            for site, (count, at) in batch.items():
                seen = state.get(site) or {"count": 0, "first_at": at.isoformat()}
                state[site] = {"count": int(seen.get("count") or 0) + count, "first_at": seen.get("first_at") or at.isoformat(),
                               "last_at": at.isoformat()}
            _save(conn, store_id, state, now)

    async def accepted(self, store_id: int, now: datetime, takes: Callable[[str], bool]) -> None:
        """A delivery was accepted from a site the store now takes (``takes``: the owner listed it): the
        notices of the sites it takes go, a fix made is not shown as still needed. Looked at once per
        ``EVERY`` per store and process, so accepted traffic costs no write storm; a refusal of such a
        site still waiting to be written is dropped too."""
        pending = self._pending.get(store_id, {})
        for site in [s for s in pending if takes(s)]:
            del pending[site]
        last = self._cleared.get(store_id)
        if last is not None and now - last < self.every:
            return
        self._cleared[store_id] = now
        await self.forget(store_id, takes, now)

    async def forget(self, store_id: int, accepted: Callable[[str], bool], now: datetime) -> None:
        """Drop the sites ``accepted`` now takes (a ``webhook_sources`` added since they were refused)."""
        try:
            await anyio.to_thread.run_sync(self._forget, store_id, accepted, now)
        except SQLAlchemyError:
            log.warning("could not clear a refused site's notice", extra={"store_id": store_id}, exc_info=True)

    def _forget(self, store_id: int, accepted: Callable[[str], bool], now: datetime) -> None:
        with self.db.reading() as conn:  # most calls find nothing to drop: no write lock for them
            if not any(accepted(s) for s in _sites(_value(conn, store_id))):
                return
        with self.db.write_lock(), self.db.engine.begin() as conn:
            state = _locked(conn, store_id, now)
            kept = {s: seen for s, seen in state.items() if not accepted(s)}
            if kept != state:
                _save(conn, store_id, kept, now)


def _value(conn: Connection, store_id: int, *, lock: bool = False) -> str | None:
    query = select(SyncCursor.value).where(SyncCursor.store_id == store_id, SyncCursor.name == NAME)
    return conn.execute(query.with_for_update() if lock else query).scalar()


def _locked(conn: Connection, store_id: int, now: datetime) -> dict[str, dict[str, Any]]:
    """The notice's sites, its row locked until the transaction ends (PostgreSQL; SQLite's ``BEGIN IMMEDIATE``
    serialises writers already): two workers writing at once each add to what the other wrote, instead of
    each writing back what it read before the other's write (a site lost from the notice). The row is made
    first when missing (a no-op when there), so there is always a row to lock."""
    insert = postgresql.insert if conn.dialect.name == "postgresql" else sqlite.insert
    conn.execute(insert(SyncCursor).values(store_id=store_id, name=NAME, value=json.dumps({"sites": {}}), updated_at=now)
                 .on_conflict_do_nothing(index_elements=["store_id", "name"]))
    return _sites(_value(conn, store_id, lock=True))


def _save(conn: Connection, store_id: int, state: dict[str, dict[str, Any]], now: datetime) -> None:
    kept = dict(sorted(state.items(), key=lambda kv: str(kv[1].get("last_at")), reverse=True)[:MAX_SITES])
    conn.execute(update(SyncCursor).where(SyncCursor.store_id == store_id, SyncCursor.name == NAME)
                 .values(value=json.dumps({"sites": kept}, sort_keys=True), updated_at=now))


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
    value = _value(conn, store_id)
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
