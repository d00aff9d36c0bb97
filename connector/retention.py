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
both: a person works on it), settled sends' rendered messages (a pending or sending row still
has to go), and the customer's words in finished journey runs' state (the COD cancel reason she
typed, the quote in a hand-off's reason; a run still going keeps them). What the weekly report, the dashboard and the export count stays: journey, step,
category, status, skip reason, the template's name, times, subjects, a run's phase, choice and
outcome. ``content_removed_at`` marks
an emptied row, so the timeline says so and a run skips the rows done before.

Two more records of a customer's data have windows of their own:

- a number she changed from on WhatsApp (``previous_numbers``, ``connector/number_change.py``) is kept
  to tie a late status, reply or order on it to her conversation, so as long as that conversation:
  ``worker.conversation_retention_days`` after the change (``purge_previous_numbers``); then a message
  from it is a stranger's, as after an erasure;
- a data request's stored export (her conversation and raw deliveries, copied) is the answer the store
  owes her: kept ``worker.raw_body_retention_days`` after it was made, the window the raw bodies it
  copies are kept in, then emptied (``expire_exports``). The request's row stays (kind, when, counts,
  whom by id), ``status`` ``expired`` and ``erased_at`` when: that it was answered is on record.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Callable
from weakref import WeakKeyDictionary

from sqlalchemy import Connection, Interval, bindparam, delete, func, literal, or_, select, update

from connector.compliance import HANDOFF_CONTEXT_KEEP, MESSAGE_KEEP, PAYLOAD_KEEP, PREVIOUS, REDACTED, REQUESTS, generic_scrub, holds_export
from connector.handoffs import reason_without_words
from connector.storage.db import Database
from connector.storage.sql import ATTEMPTS, BODIES, HANDOFFS, INBOX, MESSAGES, OUTBOX, RUNS

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


def purge_previous_numbers(db: Database, now: datetime, retention_days: int) -> int:
    """Forget the numbers customers changed from more than ``retention_days`` ago; returns how many."""
    with db.write_lock(), db.engine.begin() as conn:
        return conn.execute(delete(PREVIOUS).where(PREVIOUS.c.changed_at < now - timedelta(days=retention_days))).rowcount


EXPIRED = "expired"


def expire_exports(db: Database, now: datetime, retention_days: int) -> int:
    """Empty the data-request exports made more than ``retention_days`` ago, keeping each request's row
    (``status`` expired, ``erased_at`` now); returns how many."""
    with db.write_lock(), db.engine.begin() as conn:
        return conn.execute(update(REQUESTS).where(holds_export(), REQUESTS.c.created_at < now - timedelta(days=retention_days))
                            .values(export=None, status=EXPIRED, erased_at=now)).rowcount


# ---- conversation content -------------------------------------------------------------------------------
UNSENT = ("pending", "sending")  # a send still to go (or going) keeps its message
REMOVED = "removed_after_days"  # the key an emptied payload or context has: after how many days


def removed_note(days: int) -> str:
    return f"removed after {days} days"


def purge_conversations(db: Database, now: datetime, retention_days: int, batch: int = 1000) -> dict[str, int]:
    """Empty the conversation content older than ``retention_days`` (see the module's docstring);
    returns the rows emptied per table. Each table in batches by id, each batch its own short
    transaction, so the SQLite write lock is never held long; rows done before are skipped.

    Messages, sends and runs are read only between two ids (``_Marks``): from below the first row
    that still had something to empty last time, up to the last row stored before the cutoff (found
    in a few primary-key probes, ``_last_before``); walking them by id to their end every hour read
    the whole table however little was due (0.44 s a run at 2M messages and 1M sends)."""
    cutoff = now - timedelta(days=retention_days)
    marks = _MARKS.setdefault(db, _Marks())
    words = customer_words()
    done: dict[str, int] = {}
    upto: dict[str, int] = {}
    for name, table, stored_at, step in (("messages", MESSAGES, MESSAGES.c.occurred_at, _messages), ("outbox", OUTBOX, OUTBOX.c.created_at, _outbox),
                                         ("journey_runs", RUNS, RUNS.c.started_at, _runs)):
        with db.engine.connect() as conn:
            last = upto[name] = _last_before(conn, table, stored_at, cutoff + ORDER_SLACK)
        start = min(marks.done.get(name, 0), last)
        done[name] = _batches(db, lambda conn, after: step(conn, cutoff, now, retention_days, after, last, batch, words), batch, start)
        with db.engine.connect() as conn:
            marks.done[name] = _done_up_to(conn, name, cutoff, start, last)
    done["messages"] += _late_messages(db, marks, cutoff, now, upto["messages"], batch)
    done["handoffs"] = _batches(db, lambda conn, after: _handoffs(conn, cutoff, now, retention_days, after, batch), batch)
    return {k: done[k] for k in ("messages", "handoffs", "outbox", "journey_runs")}


# ---- where each table's due rows are ------------------------------------------------------------------
# Rows are stored in id order, and each one's time (a message's occurred_at, a send's created_at, a run's
# started_at) is about when it was stored, so the rows due are at the table's start. "About": two writers
# commit out of order by a few seconds, and an inbound message's occurred_at is WhatsApp's time of it,
# older than its storing when the webhook came late (Meta retries for days; ``storeloop replay`` of a held
# row, months). ``ORDER_SLACK`` covers the first and an inbound message up to ``LATE`` older than its
# storing; one later than that is noticed when stored and remembered, by id, until it is due (``_late_messages``).
# A send's created_at and a run's started_at are their storing: what makes them due (a send's updated_at, a
# run's) is never before it, so no row past the probe can be due.
LATE = timedelta(days=1)
ORDER_SLACK = timedelta(days=3)
OVERLAP = timedelta(hours=1)  # what each late-message scan reads again of the one before (a run an hour)


@dataclass
class _Marks:
    """Where the job got to in this process (a restart starts again from the start, once).
    ``done``: per table, every row at or below the id has nothing left to empty, now or later.
    ``seen``: the highest message id the last run looked at for late messages; ``since``: where the next run
    starts (the run before's ``seen``; after a restart's first run, the last row stored an ``OVERLAP`` before
    it); ``late``: those found, still to empty."""

    done: dict[str, int] = field(default_factory=dict)
    seen: int | None = None
    since: int | None = None
    late: set[int] = field(default_factory=set)


_MARKS: "WeakKeyDictionary[Database, _Marks]" = WeakKeyDictionary()


def _last_before(conn: Connection, table: Any, stored_at: Any, bound: datetime) -> int:
    """The highest id stored before ``bound`` (0: none), halving the id range: each probe reads the first
    row at or after an id, one primary-key seek, so 2M rows take some 21 reads however many are due. A row
    out of order (a late message) can only make it answer higher: more read, nothing missed."""
    ids = table.c.id
    # apart: SQLite reads min() or max() alone off the primary key, both in one query scan the table
    low, high = conn.execute(select(func.min(ids))).scalar(), conn.execute(select(func.max(ids))).scalar()
    if low is None or high is None:
        return 0
    if conn.execute(select(stored_at).where(ids == high)).scalar_one() < bound:
        return high
    before, after = low - 1, high  # rows at or below ``before`` are before the bound; the first row at or after ``after`` is not
    while after - before > 1:
        mid = (before + after) // 2
        row = conn.execute(select(ids, stored_at).where(ids >= mid).order_by(ids).limit(1)).one()
        if row[1] < bound:
            before = row[0]
        else:
            after = mid
    return before


def _done_up_to(conn: Connection, name: str, cutoff: datetime, start: int, upto: int) -> int:
    """After a pass over ids (start, upto]: the id below the first row there with something still to empty
    (a message's text, a send not yet settled or emptied, a run not finished a retention ago)."""
    table = {"messages": MESSAGES, "outbox": OUTBOX, "journey_runs": RUNS}[name]
    waiting = {"messages": MESSAGES.c.body.is_not(None),
               "outbox": OUTBOX.c.content_removed_at.is_(None),
               "journey_runs": or_(RUNS.c.status != "finished", RUNS.c.updated_at >= cutoff)}[name]
    first = conn.execute(select(func.min(table.c.id)).where(table.c.id > start, table.c.id <= upto, waiting)).scalar()
    return upto if first is None else first - 1


def _batches(db: Database, step: Callable[[Connection, int], tuple[int, int | None]], batch: int, after: int = 0) -> int:
    """Run ``step`` (one batch after the id ``after``: rows emptied, the last id read) until a batch reads fewer than ``batch``."""
    total = 0
    while True:
        with db.write_lock(), db.engine.begin() as conn:
            emptied, last = step(conn, after)
        total += emptied
        if last is None:
            return total
        after = last


_HAS_TEXT = (MESSAGES.c.body.is_not(None),)


def _empty_messages(conn: Connection, ids: list[int], now: datetime) -> int:
    """Rows emptied: one emptied since it was read (an erasure, another worker's run) is not counted again."""
    if not ids:
        return 0
    return conn.execute(update(MESSAGES).where(MESSAGES.c.id.in_(ids), *_HAS_TEXT).values(body=None, content_removed_at=now)).rowcount


def _messages(conn: Connection, cutoff: datetime, now: datetime, days: int, after: int, upto: int, batch: int,
              words: Any = None) -> tuple[int, int | None]:
    """Only messages with a text are marked: a photo or reaction that never had one is not shown as removed."""
    ids = list(conn.execute(select(MESSAGES.c.id).where(
        MESSAGES.c.id > after, MESSAGES.c.id <= upto, MESSAGES.c.occurred_at < cutoff, *_HAS_TEXT)
        .order_by(MESSAGES.c.id).limit(batch)).scalars().all())
    _empty_messages(conn, ids, now)
    return len(ids), (ids[-1] if len(ids) == batch else None)


def _late_messages(db: Database, marks: _Marks, cutoff: datetime, now: datetime, upto: int, batch: int) -> int:
    """Messages above ``upto`` already past the cutoff: stored later than the rows around them. The rows stored
    since the run before last are looked at (after a restart, all of them above ``upto``): those due are emptied,
    those a ``LATE`` older than their storing are remembered and emptied when due, until ``upto`` passes them.
    The database picks them (only those come back: reading every row's times into Python took 13 s at 1M rows).

    Not from the last run's top: PostgreSQL gives an id at insert, not at commit, so a row still uncommitted
    while a higher one committed is below that top when it commits. Each run reads again what the run before
    read (an hour of messages, ``OVERLAP``), far longer than any transaction stays open. The reads take no
    write lock (``Database.reading``: a restart's first scan reads months of messages, and SQLite's ingest
    and processor waited for it): only the emptying of the rows found does."""
    emptied = 0
    after = max(upto, marks.since or 0)
    late = _stored_late(db)
    with db.reading() as conn:
        top = conn.execute(select(func.max(MESSAGES.c.id))).scalar() or 0
        since = marks.seen if marks.seen is not None else _last_before(conn, MESSAGES, MESSAGES.c.updated_at, now - OVERLAP)
    while True:
        with db.reading() as conn:
            rows = conn.execute(select(MESSAGES.c.id, MESSAGES.c.occurred_at).where(
                MESSAGES.c.id > after, MESSAGES.c.id <= top, MESSAGES.c.direction == "in", *_HAS_TEXT,
                or_(MESSAGES.c.occurred_at < cutoff, late)).order_by(MESSAGES.c.id).limit(batch)).all()
        due = [r.id for r in rows if r.occurred_at < cutoff]
        if due:
            with db.write_lock(), db.engine.begin() as conn:
                emptied += _empty_messages(conn, due, now)
        marks.late.update(r.id for r in rows if r.occurred_at >= cutoff)
        if len(rows) < batch:
            break
        after = rows[-1].id
    marks.since, marks.seen = since, top
    marks.late = {i for i in marks.late if i > upto}
    for chunk in _chunks(sorted(marks.late), batch):
        with db.reading() as conn:
            still = set(conn.execute(select(MESSAGES.c.id).where(MESSAGES.c.id.in_(chunk), *_HAS_TEXT)).scalars())
            due = list(conn.execute(select(MESSAGES.c.id).where(
                MESSAGES.c.id.in_(chunk), MESSAGES.c.occurred_at < cutoff, *_HAS_TEXT)).scalars())
        if due:
            with db.write_lock(), db.engine.begin() as conn:
                emptied += _empty_messages(conn, due, now)
        marks.late -= set(chunk) - (still - set(due))
    return emptied


def _stored_late(db: Database) -> Any:
    """A message whose time is a ``LATE`` older than its storing (``updated_at``, set when stored; a status
    only moves it on, which makes an outgoing one look late: only inbound ones are asked)."""
    if db.is_sqlite:  # the times are ISO texts there
        return func.julianday(MESSAGES.c.updated_at) - func.julianday(MESSAGES.c.occurred_at) > LATE / timedelta(days=1)
    return MESSAGES.c.updated_at - MESSAGES.c.occurred_at > literal(LATE, Interval())


def _chunks(ids: list[int], size: int) -> list[list[int]]:
    return [ids[i:i + size] for i in range(0, len(ids), size)]


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


def _outbox(conn: Connection, cutoff: datetime, now: datetime, days: int, after: int, upto: int, batch: int,
            words: Any = None) -> tuple[int, int | None]:
    """Settled sends last changed before the cutoff: the payload keeps what reports and the runs read (its
    subject, the template's name, a write-back's action); error texts lose any email or long number."""
    rows = conn.execute(select(OUTBOX.c.id, OUTBOX.c.payload, OUTBOX.c.last_error).where(
        OUTBOX.c.id > after, OUTBOX.c.id <= upto, OUTBOX.c.status.not_in(UNSENT), OUTBOX.c.updated_at < cutoff,
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


# ---- journey runs: what she typed, kept in a run's state ----------------------------------------------
HANDOFF_REASON = "handoff_reason"  # every run's: the runner copies its hand-off's reason, which can quote her


def customer_words() -> dict[str, tuple[str, ...]]:
    """Per journey, the state keys that can hold what the customer typed (a journey's ``customer_words``)."""
    from connector.journeys.registry import journeys  # the plugins load once, when first asked

    return {name: tuple(getattr(j, "customer_words", ())) for name, j in journeys().items()}


def _runs(conn: Connection, cutoff: datetime, now: datetime, days: int, after: int, upto: int, batch: int,
          words: dict[str, tuple[str, ...]]) -> tuple[int, int | None]:
    """Runs finished before the cutoff: her words go (a COD cancel reason she typed, the quote in a hand-off's
    reason); the phase, the choice, the outcome, the times and the figures stay. A run still going (waiting for
    her reason, with a person) keeps them. Only a run that had words is marked, so a view says what went."""
    rows = conn.execute(select(RUNS.c.id, RUNS.c.journey, RUNS.c.state).where(
        RUNS.c.id > after, RUNS.c.id <= upto, RUNS.c.status == "finished", RUNS.c.updated_at < cutoff,
        RUNS.c.content_removed_at.is_(None)).order_by(RUNS.c.id).limit(batch)).all()
    params = []
    for r in rows:
        before = r.state or {}
        state = {k: v for k, v in before.items() if k not in words.get(r.journey, ()) or v in (None, "")}
        if isinstance(reason := before.get(HANDOFF_REASON), str):
            state[HANDOFF_REASON] = reason_without_words(reason, f"words {removed_note(days)}")
        if state != before:
            state[REMOVED] = days
            params.append({"_id": r.id, "_state": state})
    if params:
        conn.execute(update(RUNS).where(RUNS.c.id == bindparam("_id")).values(
            state=bindparam("_state"), content_removed_at=now), params)
    return len(params), (rows[-1].id if len(rows) == batch else None)
