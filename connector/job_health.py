"""The last outcome of each scheduled job per store: last success, last error, failures in a row.

A reconciliation or checkout poll that fails (a revoked key's 401, 429/5xx retries used up, a
WooCommerce pager that cannot go on) used to reach only APScheduler's own logger: nothing the
store owner sees said that lost webhooks were no longer being made up for. Each tick now
records its outcome here, and the dashboard and the weekly report show it.

Kept in the database, not in the process: the dashboard is often served by another process
than the worker whose scheduler ran the job (``serve --no-worker`` beside ``storeloop worker``,
several uvicorn workers), and each tick runs in whichever worker took its lease. One row per
store and job in ``sync_cursors`` (named ``job:<job>``, the value JSON), so no schema change;
only the lease holder writes it, so the read-modify-write of the failure count has no race.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, bindparam, select, update
from sqlalchemy.dialects import postgresql, sqlite

from connector.errors import describe_error
from connector.storage.db import Database
from connector.storage.models import SyncCursor

PREFIX = "job:"
CREDENTIALS_LOST = "credentials lost: reinstall or fix the key"
LOST_AFTER = 2  # refusals of the credentials in a row before the hint: one 401 can be a token renewed a moment late
_URL = re.compile(r"\b[a-z][a-z0-9+.-]*://\S+", re.IGNORECASE)


def safe_error(exc: BaseException) -> str:
    """``Class: message`` without URLs (a plain-http WooCommerce site signs with its key in the
    query string) or a database error's values; the adapters' own messages carry no secret."""
    return _URL.sub("<url>", describe_error(exc))[:500]


def credentials_refused(exc: BaseException) -> bool:
    """The platform refused our credentials (HTTP 401, from the API or a token endpoint), or no
    usable token is left (not installed, refresh token expired), as opposed to a passing outage."""
    from connector.install.credentials import CredentialsMissing

    return getattr(exc, "http_status", None) == 401 or isinstance(exc, CredentialsMissing)


def _parse(value: str | None) -> dict[str, Any]:
    try:
        data = json.loads(value) if value else {}
    except ValueError:
        data = {}
    return data if isinstance(data, dict) else {}


def record(db: Database, store_id: int, job: str, now: datetime, error: BaseException | None = None) -> dict[str, Any]:
    """Store one tick's outcome (``error`` None: it succeeded); returns the job's state after it."""
    name = f"{PREFIX}{job}"
    with db.write_lock(), db.engine.begin() as conn:
        state = _parse(conn.execute(select(SyncCursor.value).where(SyncCursor.store_id == store_id, SyncCursor.name == name)).scalar())
        state["last_run_at"] = now.isoformat()
        if error is None:
            state.update(last_ok_at=now.isoformat(), failures=0, refused=0)
        else:
            refused = credentials_refused(error)
            state.update(last_error=safe_error(error), last_error_at=now.isoformat(), failures=int(state.get("failures") or 0) + 1,
                         refused=int(state.get("refused") or 0) + 1 if refused else 0)
        value = json.dumps(state, sort_keys=True)
        insert = postgresql.insert if conn.dialect.name == "postgresql" else sqlite.insert
        stmt = insert(SyncCursor).values(store_id=store_id, name=name, value=value, updated_at=now)
        conn.execute(stmt.on_conflict_do_update(index_elements=["store_id", "name"], set_={"value": value, "updated_at": now}))
    return view(job, state)


def view(job: str, state: dict[str, Any]) -> dict[str, Any]:
    """What the dashboard and the report show of one job: ``failing`` while its last tick failed,
    with the hint to reinstall once the credentials were refused ``LOST_AFTER`` times in a row."""
    failures = int(state.get("failures") or 0)
    return {
        "job": job,
        "status": "failing" if failures else "ok",
        "last_run_at": state.get("last_run_at"),
        "last_ok_at": state.get("last_ok_at"),
        "last_error": state.get("last_error"),
        "last_error_at": state.get("last_error_at"),
        "failures_in_a_row": failures,
        "hint": CREDENTIALS_LOST if int(state.get("refused") or 0) >= LOST_AFTER else None,
    }


def scrub_errors(conn: Connection, store_id: int, clean: Callable[[str], str]) -> int:
    """Rewrite the store's job error texts through ``clean`` (a privacy request: a tick's error can
    quote a customer's value, e.g. a window that would not open); the rest of each job's state
    (times, failure counts, the hint) stays, so the dashboard still shows a failing job. Returns
    the jobs rewritten."""
    changed = []
    for row in conn.execute(select(SyncCursor.id, SyncCursor.value).where(SyncCursor.store_id == store_id,
                                                                          SyncCursor.name.startswith(PREFIX))):
        state = _parse(row.value)
        error = state.get("last_error")
        if isinstance(error, str) and (cleaned := clean(error)) != error:
            changed.append({"_id": row.id, "_value": json.dumps({**state, "last_error": cleaned}, sort_keys=True)})
    if changed:
        table = SyncCursor.__table__
        conn.execute(update(table).where(table.c.id == bindparam("_id")).values(value=bindparam("_value")), changed)
    return len(changed)


def job_states(conn: Connection, store_id: int) -> list[dict[str, Any]]:
    """Every job that has run for the store, by name."""
    rows = conn.execute(select(SyncCursor.name, SyncCursor.value).where(
        SyncCursor.store_id == store_id, SyncCursor.name.startswith(PREFIX)).order_by(SyncCursor.name)).all()
    return [view(name.removeprefix(PREFIX), _parse(value)) for name, value in rows]
