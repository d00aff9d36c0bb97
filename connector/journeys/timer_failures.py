"""Journey runs whose timer raised: parked with a growing pause, kept visible, tried again.

Every due run fires in one transaction (``InboxProcessor.process_timers``), so a run that
raises (a plugin's bug, a value the database refuses) must not take the others down with it,
batch after batch. Such a run is parked instead: nothing of the failed firing is kept, its
timer is set again after a pause (5 minutes, doubling, at most a day), and the failure is
recorded in the run's own state, where the dashboard's "Connector health" finds it. The next
firing that goes through clears the record; ``retry_now`` (``storeloop replay --timers``)
makes the parked runs due at once after a fix. No schema change: two keys of ``state``.
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Connection, bindparam, func, select, update
from sqlalchemy.exc import DBAPIError

from connector.errors import describe_error
from connector.storage.db import Database
from connector.storage.sql import RUNS, update_by_id

log = logging.getLogger("storeloop.journeys")

FAILURES = "_timer_failures"  # run state: how many times in a row its timer raised
ERROR = "_timer_error"  # run state: the last of those errors (``describe_error``: no database values)
KEYS = (FAILURES, ERROR)
FIRST_PAUSE = timedelta(minutes=5)
MAX_PAUSE = timedelta(days=1)
SHOWN = 20  # parked runs listed on the dashboard (all are counted)


def pause_after(failures: int) -> timedelta:
    """How long a run waits after its ``failures``-th failure in a row (bounded: a broken run is
    neither fired in a tight loop nor forgotten)."""
    return min(MAX_PAUSE, FIRST_PAUSE * 2 ** min(failures - 1, 10))


def without_record(state: dict[str, Any]) -> dict[str, Any]:
    """The journey's own state, without the failure record."""
    return {k: v for k, v in state.items() if k not in KEYS}


def park(conn: Connection, store: Any, row: Any, now: datetime, exc: BaseException) -> None:
    """A run's timer raised and what it did is rolled back (or was never written: ``decide`` is
    pure): log it once, record it in the run and set its timer again after the pause."""
    state = dict(row.state or {})
    failures = int(state.get(FAILURES) or 0) + 1
    pause = pause_after(failures)
    error = (describe_error(exc).splitlines() or [""])[0][:500]  # a statement error's SQL follows on the next lines
    log.error("journey %s: the timer of run %s of store %s raised (%d time(s) in a row), tried again in %s: %s",
              row.journey, row.id, store.key, failures, pause, error,
              exc_info=None if isinstance(exc, DBAPIError) else exc,  # a database error's traceback holds its values
              extra={"store": store.key, "journey": row.journey, "run": row.id})
    update_by_id(conn, RUNS, row.id, {"next_due_at": now + pause, "updated_at": now,
                                      "state": {**state, FAILURES: failures, ERROR: error}})


# a store's active runs with a failure record: its active runs by the (store_id, status, next_due_at)
# index, the state read for those only (the dashboard's count and list, and ``retry_now``)
# (a run with no timer left, its journey disabled or removed since, waits for nothing: not listed)
_PARKED = (RUNS.c.store_id == bindparam("sid"), RUNS.c.status == "active", RUNS.c.next_due_at.is_not(None),
           RUNS.c.state[FAILURES].as_integer() > 0)
PARKED_COUNT = select(func.count()).select_from(RUNS).where(*_PARKED)
_PARKED_LATEST = (select(RUNS.c.id, RUNS.c.journey, RUNS.c.state, RUNS.c.next_due_at, RUNS.c.updated_at).where(*_PARKED)
                  .order_by(RUNS.c.updated_at.desc(), RUNS.c.id.desc()).limit(SHOWN))


def parked_runs(conn: Connection, store_id: int) -> dict[str, Any]:
    """What "Connector health" shows: how many runs are parked, and the latest ``SHOWN`` of them."""
    count = int(conn.execute(PARKED_COUNT, {"sid": store_id}).scalar() or 0)
    if not count:
        return {"count": 0, "runs": []}
    rows = conn.execute(_PARKED_LATEST, {"sid": store_id}).all()
    return {"count": count, "runs": [
        {"id": r.id, "journey": r.journey, "failures": int(r.state[FAILURES]), "error": r.state.get(ERROR),
         "failed_at": r.updated_at.isoformat() if r.updated_at else None,
         "next_try_at": r.next_due_at.isoformat() if r.next_due_at else None} for r in rows]}


def retry_now(db: Database, store_id: int, now: datetime) -> list[int]:
    """Make a store's parked runs due now (after a fix); their record stays until a firing goes
    through, so one that fails again waits its next, longer pause. Returns their ids."""
    with db.write_lock(), db.engine.begin() as conn:
        return sorted(conn.execute(update(RUNS).where(*_PARKED).values(next_due_at=now, updated_at=now).returning(RUNS.c.id),
                                   {"sid": store_id}).scalars())
