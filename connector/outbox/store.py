"""Outbox rows in the database: enqueue once, claim with a lease, record every attempt.

Statuses: ``pending`` (due at ``due_at``) -> ``sending`` (claimed, leased) -> ``sent`` ->
``delivered`` -> ``read``; or ``failed`` (permanent), ``skipped`` (policy, with a reason),
``dry_run``, and ``uncertain``: a send whose outcome was lost (the worker died after the
call). An uncertain row is never sent again; the status webhook carrying its outbox id
settles it.
"""

from __future__ import annotations

import functools
import logging
import secrets
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from sqlalchemy import Connection, and_, bindparam, exists, func, insert, or_, select, true, update
from sqlalchemy.dialects import postgresql, sqlite

from connector.policy import TOO_LATE, ContactFacts, PolicyRules, SendHistory, send_by
from connector.reinstall import STORE_WAITS
from connector.storage.sql import ATTEMPTS, CONTACTS, MESSAGES, OUTBOX, STORES
from connector.storage.db import Database
from connector.storage.txcache import current

log = logging.getLogger("storeloop.outbox")

SENT_STATES = ("sending", "sent", "delivered", "read", "uncertain", "dry_run")
STATUS_RANK = {"sending": 0, "uncertain": 0, "sent": 1, "delivered": 2, "read": 3, "played": 4}
# the message that confirms an order to the customer (the policy gate's "order confirmation"): the
# thanks for a prepaid order, the question for a COD one. Not a COD reminder or the answer to her tap
# (the same order, later), nor the store write-back her tap makes (a ``store`` row of the journey).
CONFIRMATIONS = (("order_confirmation", "sent"), ("cod_confirmation", "ask"))


def callback_for(outbox_id: int) -> str:
    return f"outbox:{outbox_id}"


def outbox_id_from_callback(data: str | None) -> int | None:
    if data and data.startswith("outbox:") and data[7:].isdigit():
        return int(data[7:])
    return None


@functools.cache
def _enqueue_statement(dialect: str, returning: bool = True) -> Any:
    ins = (postgresql.insert if dialect == "postgresql" else sqlite.insert)(OUTBOX)
    ins = ins.on_conflict_do_nothing(index_elements=["store_id", "idempotency_key"])
    return ins.returning(OUTBOX.c.id) if returning else ins


# When a message went out: its outbound message row (by the (store_id, outbox_id) index). Not the
# row's ``updated_at``: a status webhook (a read receipt comes hours later) moves that on. A row in
# flight has no message yet: its last change, the claim, stands in.
WENT_OUT = (select(func.min(MESSAGES.c.occurred_at))
            .where(MESSAGES.c.store_id == OUTBOX.c.store_id, MESSAGES.c.outbox_id == OUTBOX.c.id, MESSAGES.c.direction == "out")
            .scalar_subquery())
SENT_AT = func.coalesce(WENT_OUT, OUTBOX.c.updated_at)

# By the (contact_id, updated_at) index (a message that went out since ``since`` was updated since
# then too); the status is checked on the rows found. With ``status IN (...)`` in SQL, SQLite's
# planner took the (status, due_at) index and read every sent message of every contact (the whole
# send history) for each batch.
_HISTORY = (
    select(OUTBOX.c.contact_id, OUTBOX.c.category, OUTBOX.c.journey, OUTBOX.c.step, OUTBOX.c.status, SENT_AT.label("sent_at"))
    .where(
        OUTBOX.c.contact_id.in_(bindparam("cids", expanding=True)),
        OUTBOX.c.updated_at >= bindparam("since"),
        OUTBOX.c.channel == "whatsapp",
        or_(OUTBOX.c.category == "marketing", *(and_(OUTBOX.c.journey == j, OUTBOX.c.step == s) for j, s in CONFIRMATIONS)),
    )
)


def enqueue(
    conn: Connection,
    *,
    store_id: int,
    key: str,
    contact_id: int | None,
    journey: str | None,
    step: str | None,
    category: str | None,
    payload: dict[str, Any],
    due_at: datetime,
    now: datetime,
    channel: str = "whatsapp",
    skip_reason: str | None = None,
) -> int | None:
    """Insert once per idempotency key; returns the new id, or None if the key exists.

    Inside the processor's transaction cache the row is held and written with the batch's
    other outbox rows in one executemany (same order, so the same ids; nothing in the batch
    reads a pending row back), and None is returned.
    """
    row = dict(
        store_id=store_id,
        idempotency_key=key[:255],
        channel=channel,
        contact_id=contact_id,
        journey=journey,
        step=step,
        category=category,
        payload=payload,
        status="skipped" if skip_reason else "pending",
        skip_reason=skip_reason,
        due_at=due_at,
        planned_at=due_at,
        attempts=0,
        created_at=now,
        updated_at=now,
        lease_until=None,
        leased_by=None,
        last_error=None,
        wamid=None,
    )
    cache = current(conn)
    if cache is not None:
        cache.hold_later(_enqueue_statement(conn.dialect.name, returning=False), [row], (store_id, row["idempotency_key"]))
        return None
    return conn.execute(_enqueue_statement(conn.dialect.name), row).scalar()


# By the unique (store_id, key) index alone: with ``status = 'pending'`` in the WHERE clause
# SQLite's planner chose the (status, due_at) index and read every pending row per lookup
# (thousands during a WhatsApp outage; 14% of bench/pipeline.py's timer phase). Channel and
# status are checked on the few rows found.
_BY_KEYS = select(OUTBOX.c.id, OUTBOX.c.idempotency_key, OUTBOX.c.channel, OUTBOX.c.status).where(
    OUTBOX.c.store_id == bindparam("sid"), OUTBOX.c.idempotency_key.in_(bindparam("keys", expanding=True)))
_SKIP_BY_ID = (OUTBOX.update().where(OUTBOX.c.id == bindparam("_id"), OUTBOX.c.status == "pending")
               .values(status="skipped", skip_reason=bindparam("reason"), updated_at=bindparam("now")))


def skip_pending(conn: Connection, store_id: int, keys: list[str], reason: str, now: datetime, channel: str = "whatsapp") -> None:
    """Skip the rows of a channel with these keys that are still waiting (not yet claimed).

    A journey run that ends (the customer bought, answered, opted out, a person took over)
    must not leave a message behind that a later dispatch would still send: a cart reminder
    held for the morning by quiet hours, a COD reminder whose answer already came. On the
    ``store`` channel: a write-back its journey withdrew (a no-answer cancel of an order she
    confirmed in time). A claimed row (``sending``) is being made and is left alone. Rows held
    in the processor's transaction cache are changed in memory; stored rows with one query
    per batch (deferred to the cache's next flush), or at once without a cache.
    """
    if not keys:
        return
    wanted = {k[:255] for k in keys}
    cache = current(conn)
    if cache is None:
        _skip_stored(conn, [(store_id, wanted, reason, now, channel)])
        return
    # this store's rows only: step keys name a subject ("order:101"), and two stores can both
    # have an order #101 in one batch (a COD ask of one store was once skipped by the other's cancel)
    stmt = _enqueue_statement(conn.dialect.name, returning=False)
    for key in wanted:
        for row in cache.held_later(stmt, (store_id, key)):
            if row["channel"] == channel and row["status"] == "pending":
                row.update(status="skipped", skip_reason=reason, updated_at=now)
    cache.defer("outbox.skip_pending", _skip_stored, (store_id, wanted, reason, now, channel))


def _skip_stored(conn: Connection, requests: list[tuple[int, set[str], str, datetime, str]]) -> set[tuple[int, str]]:
    """One lookup per store and 500 keys, then one executemany for what is still pending; the (store, key) skipped."""
    by_store: dict[int, dict[str, tuple[str, datetime, str]]] = {}
    for store_id, keys, reason, now, channel in requests:
        by_store.setdefault(store_id, {}).update({k: (reason, now, channel) for k in keys})
    updates: list[dict[str, Any]] = []
    skipped: set[tuple[int, str]] = set()
    for store_id, wanted in by_store.items():
        keys = sorted(wanted)
        for start in range(0, len(keys), 500):
            for row_id, key, channel, status in conn.execute(_BY_KEYS, {"sid": store_id, "keys": keys[start:start + 500]}):
                reason, now, of = wanted[key]
                if channel != of or status != "pending":
                    continue
                updates.append({"_id": row_id, "reason": reason, "now": now})
                skipped.add((store_id, key))
    if updates:
        conn.execute(_SKIP_BY_ID, sorted(updates, key=lambda u: u["_id"]))
    return skipped


def skip_waiting(conn: Connection, store_id: int, keys: list[str], reason: str, now: datetime, channel: str = "whatsapp") -> set[str]:
    """``skip_pending`` for a caller that must know which of these rows were still waiting: written at once (the
    transaction cache flushed first, so a row it still holds is stored and read), the keys skipped returned."""
    from connector.storage.sql import flush

    if not keys:
        return set()
    flush(conn)
    return {key for _, key in _skip_stored(conn, [(store_id, {k[:255] for k in keys}, reason, now, channel)])}


# what ``unskip`` reads: by the unique (store_id, key) index alone, status checked on the rows found (as ``_BY_KEYS``)
_SKIPPED_BY_KEYS = select(OUTBOX.c.id, OUTBOX.c.idempotency_key, OUTBOX.c.channel, OUTBOX.c.status, OUTBOX.c.skip_reason,
                          OUTBOX.c.due_at, OUTBOX.c.contact_id, OUTBOX.c.category, OUTBOX.c.journey, OUTBOX.c.step,
                          OUTBOX.c.payload).where(
    OUTBOX.c.store_id == bindparam("sid"), OUTBOX.c.idempotency_key.in_(bindparam("keys", expanding=True)))
_UNSKIP_BY_ID = (update(OUTBOX).where(OUTBOX.c.id == bindparam("_id"), OUTBOX.c.status == "skipped")
                 .values(status="pending", skip_reason=None, due_at=bindparam("_planned"), planned_at=bindparam("_planned"),
                         updated_at=bindparam("_now")))


def unskip(conn: Connection, store_id: int, keys: list[str], reason: str, now: datetime,
           plan: Callable[[list[Any]], Mapping[int, datetime]] | None = None) -> list[str]:
    """Put back to waiting the rows with these keys that ``skip_pending`` skipped for ``reason``, and only for it
    (a reorder reminder withdrawn while its product was not sold or sold out, the product buyable again): a row
    skipped for any other reason (the cap, an opt-out) stays skipped. Each is meant to go from now (or its own due
    time, if later), or when ``plan`` says (by row id, given the rows found: ``queue.put_back`` plans them as
    queueing them now would, so one put back in quiet hours waits for the morning): its latest useful send time
    (``policy.send_by``) counts from then, so a reminder put back the next morning is not skipped as ``too_late`` for
    the hours it was withheld. Stored rows: the transaction cache is flushed first, so a skip it still holds is
    written before it is undone. One read per 500 keys and one executemany. The keys put back."""
    from connector.storage.sql import flush

    wanted = sorted({k[:255] for k in keys})
    if not wanted:
        return []
    flush(conn)
    found = [r for start in range(0, len(wanted), 500)
             for r in conn.execute(_SKIPPED_BY_KEYS, {"sid": store_id, "keys": wanted[start:start + 500]})
             if (r.channel, r.status, r.skip_reason) == ("whatsapp", "skipped", reason)]
    if not found:
        return []
    found.sort(key=lambda r: r.id)
    planned = dict(plan(found)) if plan is not None else {}
    conn.execute(_UNSKIP_BY_ID, [{"_id": r.id, "_now": now,
                                  "_planned": planned.get(r.id) or (max(r.due_at, now) if r.due_at is not None else now)} for r in found])
    cache = current(conn)
    if cache is not None:
        cache.history.clear()  # what waits for the contact changed
    return [r.idempotency_key for r in found]


# what a store write-back's ``last_error`` starts with when its try may have reached the store all the same
OUTCOME_UNKNOWN = "outcome unknown: "
LEASE_EXPIRED = "lease expired; retrying the idempotent write-back"
_WRITEBACKS_FOR_UPDATE = (select(OUTBOX.c.idempotency_key, OUTBOX.c.channel, OUTBOX.c.status, OUTBOX.c.attempts, OUTBOX.c.last_error)
                          .where(OUTBOX.c.store_id == bindparam("sid"), OUTBOX.c.idempotency_key.in_(bindparam("keys", expanding=True)))
                          .with_for_update())


def writeback_states(conn: Connection, store_id: int, keys: list[str]) -> dict[str, str]:
    """Where each of these store write-backs is, by key, for a decision that turns on whether it can
    still be withdrawn (``skip_pending``, later in the same transaction): its status, except that a
    ``pending`` retry whose earlier try may have reached the store (its answer was lost, its worker
    died) is ``uncertain``: withdrawing it would not undo that. Locked until the transaction ends
    (PostgreSQL: the dispatcher's claim skips a locked row, or we wait for its claim to commit; SQLite:
    both hold the write lock), so a ``pending`` read here is still pending when it is skipped. A key
    not queued is absent."""
    if not keys:
        return {}
    out: dict[str, str] = {}
    for r in conn.execute(_WRITEBACKS_FOR_UPDATE, {"sid": store_id, "keys": sorted({k[:255] for k in keys})}):
        if r.channel != "store":
            continue
        maybe_made = r.attempts > 0 and (r.last_error or "").startswith((OUTCOME_UNKNOWN, LEASE_EXPIRED))
        out[r.idempotency_key] = "uncertain" if r.status == "pending" and maybe_made else r.status
    return out


def contact_facts(conn: Connection, contact_ids: list[int]) -> dict[int, ContactFacts]:
    if not contact_ids:
        return {}
    rows = conn.execute(
        select(
            CONTACTS.c.id, CONTACTS.c.consent_utility, CONTACTS.c.consent_marketing, CONTACTS.c.opted_out_at,
            CONTACTS.c.last_inbound_at, CONTACTS.c.reachable, CONTACTS.c.unreachable_at,
        ).where(CONTACTS.c.id.in_(contact_ids))
    )
    return {
        r.id: ContactFacts(r.consent_utility, r.consent_marketing, r.opted_out_at, r.last_inbound_at, r.reachable, r.unreachable_at)
        for r in rows
    }


def send_history(conn: Connection, contact_ids: list[int], since: datetime) -> dict[int, SendHistory]:
    """Marketing sends and order confirmations (``CONFIRMATIONS``) per contact since ``since``, each at
    when it went out (one query).

    Inside the processor's transaction cache a contact's history is read once per batch
    (queueing only adds pending or skipped rows, which do not count; a status update of
    an outbox row clears it).
    """
    if not contact_ids:
        return {}
    cache = current(conn)
    if cache is not None:
        todo = [c for c in dict.fromkeys(contact_ids) if (c, since) not in cache.history]
        if todo:
            found = _history(conn, todo, since)
            for c in todo:
                cache.history[(c, since)] = found.get(c)
        known = {c: cache.history[(c, since)] for c in contact_ids}
        return {c: h for c, h in known.items() if h is not None}
    return _history(conn, contact_ids, since)


def _history(conn: Connection, contact_ids: list[int], since: datetime) -> dict[int, SendHistory]:
    rows = conn.execute(_HISTORY, {"cids": list(contact_ids), "since": since})
    marketing: dict[int, list[datetime]] = {}
    confirmed: dict[int, datetime] = {}
    for r in rows:
        if r.status not in SENT_STATES or r.sent_at < since:
            continue
        if r.category == "marketing":
            marketing.setdefault(r.contact_id, []).append(r.sent_at)
        if (r.journey, r.step) in CONFIRMATIONS and (r.contact_id not in confirmed or confirmed[r.contact_id] < r.sent_at):
            confirmed[r.contact_id] = r.sent_at
    return {
        cid: SendHistory(tuple(sorted(marketing.get(cid, ()))), confirmed.get(cid)) for cid in set(marketing) | set(confirmed)
    }


@dataclass(slots=True)
class Claimed:
    id: int
    store_id: int
    contact_id: int | None
    journey: str | None
    category: str | None
    payload: dict[str, Any]
    attempts: int
    facts: ContactFacts | None = None
    history: SendHistory = field(default_factory=SendHistory)
    created_at: datetime | None = None  # when it was queued (a retried store note looks for itself since then)
    step: str | None = None
    planned_at: datetime | None = None  # when it was meant to go (``policy.send_by``)
    lease: str | None = None  # the claim's ``leased_by``: its result is written only while the row is still this claim's
    number_quality: str | None = None  # the store's number's rating as Meta last said it (the gate holds marketing while RED)
    key: str | None = None  # its idempotency key (a 131047 fallback is queued under it + ":template")


def expire_leases(conn: Connection, now: datetime, channel: str = "whatsapp") -> int:
    """A claimed row whose lease ran out was possibly sent: that call counts as an attempt
    (``attempts`` + 1 and an ``uncertain`` attempt row), so ``max_attempts`` still bounds it.

    A WhatsApp message becomes ``uncertain`` (never resent; its status webhook settles it).
    A store write-back is idempotent (tags are a set, a cancelled order stays cancelled),
    and nothing would ever settle it, so it simply becomes due again.
    """
    expired = list(
        conn.execute(
            select(OUTBOX.c.id, OUTBOX.c.store_id, OUTBOX.c.lease_until).where(
                OUTBOX.c.status == "sending", OUTBOX.c.lease_until < now, OUTBOX.c.channel == channel
            ).order_by(OUTBOX.c.id)  # rows locked in id order, as ``record`` locks them: no deadlock between the two
        )
    )
    if channel == "whatsapp":
        then: dict[str, Any] = {"status": "uncertain", "last_error": "lease expired during send; awaiting status webhook"}
    else:
        then = {"status": "pending", "due_at": now, "last_error": LEASE_EXPIRED}
    done = 0
    for row in expired:
        changed = conn.execute(
            update(OUTBOX)
            .where(OUTBOX.c.id == row.id, OUTBOX.c.status == "sending", OUTBOX.c.lease_until < now)
            .values(**then, attempts=OUTBOX.c.attempts + 1, updated_at=now)
        ).rowcount
        if not changed:  # its worker recorded it meanwhile (PostgreSQL: we waited on its lock), or another worker expired it
            continue
        done += 1
        conn.execute(
            insert(ATTEMPTS).values(
                store_id=row.store_id, outbox_id=row.id, started_at=row.lease_until, outcome="uncertain",
                error_detail="worker stopped before recording the result",
            )
        )
    return done


RETRY_KEEPS_PLACE = timedelta(hours=1)


def _waits_its_turn(now: datetime, channel: str = "whatsapp") -> Any:
    """True for a row whose contact has an earlier-queued message still in line: one message
    per contact at a time, in the order they were queued. A hand-off alert (``notify``) waits only
    for the contact's earlier alerts of its own stage (its owner's hook): a case's update never
    overtakes its opening, and one stage's failing hook holds no other stage's alert back.

    In line are the contact's message in flight (``sending``), a due one, and one that
    failed and retries within the hour, so an outage or a 130429 burst never lets a later
    message overtake it; so does one left untried by a call rate limit's pause (up to an hour),
    its reason kept as ``last_error`` (``Result`` ``held``) for this. A message scheduled for later (a reminder tomorrow), or held for
    long (131049's 24 h), does not hold the contact's other messages back. Queue order (the
    id) is total, so two rows can never wait for each other.
    """
    ahead = OUTBOX.alias("ahead")
    same_stage = (ahead.c.payload["stage"].as_string() == OUTBOX.c.payload["stage"].as_string()) if channel == "notify" else true()
    return exists().where(
        ahead.c.contact_id == OUTBOX.c.contact_id,
        ahead.c.channel == OUTBOX.c.channel,
        same_stage,
        ahead.c.id < OUTBOX.c.id,
        ahead.c.status.in_(("pending", "sending")),
        # tried before: a spent attempt, or an error kept without one (a throttle answer spends none)
        or_(ahead.c.status == "sending", ahead.c.due_at <= now,
            and_(or_(ahead.c.attempts > 0, ahead.c.last_error.is_not(None)), ahead.c.due_at <= now + RETRY_KEEPS_PLACE)),
    )


# A contact's messages by the (contact_id, updated_at) index, status and due time checked in Python on
# the rows found: with ``status = 'pending'`` in SQL, SQLite took the status index and read every waiting
# row of the outbox (tests/test_query_plans.py). A customer has tens of rows, not thousands.
_DUE_MARKETING = select(OUTBOX.c.id, OUTBOX.c.store_id, OUTBOX.c.contact_id, OUTBOX.c.journey, OUTBOX.c.idempotency_key,
                        OUTBOX.c.channel, OUTBOX.c.status, OUTBOX.c.category, OUTBOX.c.due_at).where(
    OUTBOX.c.contact_id.in_(bindparam("cids", expanding=True)))


def _run_of(row: Any) -> tuple[int, int, str, str] | None:
    """(store, contact, journey, subject) of a journey step's message, from its key (``queue.step_key``)."""
    parts = (row.idempotency_key or "").split(":", 2)
    if row.journey is None or len(parts) < 3 or parts[0] != row.journey:
        return None
    return row.store_id, row.contact_id, row.journey, parts[2]


def _superseded(conn: Connection, found: list[Any], now: datetime) -> set[int]:
    """The claimed marketing messages of a run that has a later one waiting and due too: skipped, so
    only the run's latest reminder goes. They pile up only while something held them (the number
    rated RED, Meta restricting the account, a paused number, the connector down): in normal running
    a reminder is sent long before the run queues the next one. Without this, a recovered number
    sent a customer every cart reminder held since, seconds apart. One query per batch with
    marketing in it."""
    from connector.journeys.registry import journeys  # which journeys are reminder ladders (``marketing``)

    ladders = {name for name, journey in journeys().items() if getattr(journey, "marketing", False)}
    marketing = [r for r in found if r.category == "marketing" and r.journey in ladders and r.contact_id is not None
                 and _run_of(r) is not None]
    if not marketing:
        return set()
    latest: dict[tuple[int, int, str, str], int] = {}
    contacts = sorted({r.contact_id for r in marketing})
    for start in range(0, len(contacts), 500):
        for other in conn.execute(_DUE_MARKETING, {"cids": contacts[start:start + 500]}):
            if other.status != "pending" or other.channel != "whatsapp" or other.category != "marketing" or other.due_at > now:
                continue
            run = _run_of(other)
            if run is not None and other.id > latest.get(run, 0):
                latest[run] = other.id
    return {r.id for r in marketing if latest.get(_run_of(r), r.id) > r.id}


def planned(row: Any) -> datetime:
    """When a row was meant to go; a row queued before ``planned_at`` was kept (migration 0022 gave
    the waiting ones their due time) has its due time."""
    return row.planned_at or row.due_at


def _too_late(found: list[Any], rules: Mapping[int, PolicyRules], now: datetime) -> set[int]:
    """The claimed WhatsApp messages held past their latest useful send time (``policy.send_by``)."""
    late = {r.id for r in found if r.store_id in rules and send_by(
        planned(r), category=r.category, journey=r.journey, step=r.step, rules=rules[r.store_id]) < now}
    if late:
        log.info("outbox rows %s skipped as too_late: held past the time they could still make sense", sorted(late),
                 extra={"skipped": len(late)})
    return late


def held_too_late(conn: Connection, store_id: int, rules: PolicyRules, since: datetime, now: datetime) -> int:
    """How many of a store's WhatsApp messages a hold that ended at ``since`` (Meta's restriction ran out)
    cost: those a claim skipped as ``too_late`` since then, and those waiting, due and past their latest
    useful send time now, which the next claim skips so (``_too_late``; the hold let no claim take them
    before its end). Read once per hold's end (``number_health.end_passed_holds``), so the owner hears
    the number the dashboard counts, whichever of the worker's round and the dispatcher came first."""
    mine = (OUTBOX.c.store_id == store_id, OUTBOX.c.channel == "whatsapp")
    skipped = conn.execute(select(func.count()).select_from(OUTBOX).where(
        *mine, OUTBOX.c.status == "skipped", OUTBOX.c.skip_reason == TOO_LATE, OUTBOX.c.updated_at >= since)).scalar_one()
    waiting = conn.execute(select(OUTBOX.c.category, OUTBOX.c.journey, OUTBOX.c.step, OUTBOX.c.planned_at, OUTBOX.c.due_at).where(
        *mine, OUTBOX.c.status == "pending", OUTBOX.c.due_at <= now)).all()
    return skipped + sum(1 for r in waiting if send_by(planned(r), category=r.category, journey=r.journey, step=r.step, rules=rules) < now)


def claim(
    db: Database, *, store_ids: list[int], now: datetime, limit: int, lease: timedelta, worker: str, history_window: timedelta,
    channel: str = "whatsapp", rules: Mapping[int, PolicyRules] | None = None,
    hold: Callable[[Connection, list[Claimed], datetime], Mapping[int, datetime]] | None = None,
) -> list[Claimed]:
    """Lease up to ``limit`` due rows of a channel (SKIP LOCKED on PostgreSQL, the write lock on SQLite).

    ``leased_by`` names the worker and this one claim, so a result that comes back after the
    lease ran out can tell the row was taken over, even by another dispatcher of the same process.
    With ``rules`` (each store's policy), a WhatsApp message held past its latest useful send
    time is skipped as ``too_late`` here, not claimed: no attempt, and it holds no later one back.
    ``hold`` (WhatsApp's messaging limit: ``meter.Meter.hold``), given the found rows with their
    contact's facts and history, names those that wait, each with its new due time: they stay
    pending, marked ``HELD_FOR_LIMIT``, in the same transaction, and are not claimed.
    """
    lease_id = f"{worker[:55]}/{secrets.token_hex(4)}"
    with db.write_lock(), db.engine.begin() as conn:
        expire_leases(conn, now, channel)
        query = (
            select(
                OUTBOX.c.id, OUTBOX.c.store_id, OUTBOX.c.contact_id, OUTBOX.c.journey,
                OUTBOX.c.category, OUTBOX.c.payload, OUTBOX.c.attempts, OUTBOX.c.created_at, OUTBOX.c.idempotency_key,
                OUTBOX.c.step, OUTBOX.c.due_at, OUTBOX.c.planned_at,
            )
            .where(
                OUTBOX.c.status == "pending",
                OUTBOX.c.channel == channel,
                OUTBOX.c.due_at <= now,
                OUTBOX.c.store_id.in_(store_ids),
                # app/uninstalled stops every send and write-back for that shop at once; after a
                # reinstall they wait until its orders are read back (connector/reinstall.py)
                # (a notice to the store's own team goes all the same: it only tells a person of a case);
                # while Meta restricts or disables its WhatsApp account its messages wait (connector/number_health.py)
                true() if channel == "notify" else ~exists().where(
                    STORES.c.id == OUTBOX.c.store_id,
                    or_(STORE_WAITS, STORES.c.whatsapp_held_until > now) if channel == "whatsapp" else STORE_WAITS),
                ~_waits_its_turn(now, channel),
            )
            .order_by(OUTBOX.c.due_at, OUTBOX.c.id)
            .limit(limit)
        )
        if not db.is_sqlite:
            query = query.with_for_update(skip_locked=True)
        for _ in range(8):  # a batch that was all skipped frees the line behind it: look again, a few times at most
            found = conn.execute(query).all()
            late = _too_late(found, rules, now) if channel == "whatsapp" and rules else set()
            if late:  # first: a run's earlier reminders are not "superseded" by a latest that does not go either
                conn.execute(_SKIP_BY_ID, [{"_id": i, "reason": TOO_LATE, "now": now} for i in sorted(late)])
            superseded = _superseded(conn, [r for r in found if r.id not in late], now) if channel == "whatsapp" else set()
            if superseded:
                conn.execute(_SKIP_BY_ID, [{"_id": i, "reason": "superseded", "now": now} for i in sorted(superseded)])
            rows = [Claimed(r.id, r.store_id, r.contact_id, r.journey, r.category, r.payload, r.attempts, created_at=r.created_at,
                            lease=lease_id, step=r.step, planned_at=planned(r), key=r.idempotency_key)
                    for r in found if r.id not in superseded and r.id not in late]
            held: Mapping[int, datetime] = {}
            if rows:
                _read_facts(conn, rows, now - history_window, channel)  # before this batch counts as "sending"
                if hold is not None and channel == "whatsapp":
                    held = hold(conn, rows, now)
                if held:
                    conn.execute(_HOLD_BY_ID, [{"_id": i, "due": held[i], "now": now} for i in sorted(held)])
                    rows = [r for r in rows if r.id not in held]
            if rows or not (superseded or late or held):
                break
        if not rows:
            return []
        conn.execute(
            update(OUTBOX)
            .where(OUTBOX.c.id.in_([r.id for r in rows]))
            .values(status="sending", lease_until=now + lease, leased_by=lease_id, updated_at=now, skip_reason=None)
        )
        return rows


# a message WhatsApp's messaging limit holds (``meter``): pending, due when the moving window has room, and marked
# so for the dashboard (``held_for_limit``) in ``skip_reason``, which no other pending row has (its claim clears it)
HELD_FOR_LIMIT = "messaging_limit"
_HOLD_BY_ID = (OUTBOX.update().where(OUTBOX.c.id == bindparam("_id"), OUTBOX.c.status == "pending")
               .values(due_at=bindparam("due"), skip_reason=HELD_FOR_LIMIT, updated_at=bindparam("now")))
# A held message's due time is when the window would have room for its kind as the count stood at the hold; it is
# due at once (the next claim meters it again) when that no longer holds: she wrote to the store (her service window
# is open, the template starts no conversation: ``state.record_inbound``), another of her messages was counted (the
# claim: ``meter.Meter.hold``), or Meta changed the limit (``number_health``). Only held rows (``skip_reason``) move.
_HELD = (OUTBOX.c.status == "pending", OUTBOX.c.channel == "whatsapp", OUTBOX.c.skip_reason == HELD_FOR_LIMIT,
         OUTBOX.c.due_at > bindparam("now"))
# her rows by the (contact_id, updated_at) index, the contact alone in the WHERE (with the status or the due time in
# it SQLite plans on (status, due_at) and reads every pending message due later); the held ones are picked here
_OF_CONTACTS = select(OUTBOX.c.id, OUTBOX.c.status, OUTBOX.c.channel, OUTBOX.c.skip_reason, OUTBOX.c.due_at).where(
    OUTBOX.c.contact_id.in_(bindparam("cids", expanding=True)))
_RELEASE_BY_ID = OUTBOX.update().where(OUTBOX.c.id == bindparam("_id"), *_HELD).values(due_at=bindparam("now"), updated_at=bindparam("now"))


def release_of_contacts(conn: Connection, contact_ids: Iterable[int], now: datetime) -> int:
    """These contacts' messages held for the messaging limit, due now: her rows read by her contact (a customer has
    tens), one query per 500 contacts and one executemany. How many were released."""
    wanted = sorted(set(contact_ids))
    ids: list[int] = []
    for start in range(0, len(wanted), 500):
        ids += [r.id for r in conn.execute(_OF_CONTACTS, {"cids": wanted[start:start + 500]})
                if (r.status, r.channel, r.skip_reason) == ("pending", "whatsapp", HELD_FOR_LIMIT) and r.due_at is not None and r.due_at > now]
    if ids:
        conn.execute(_RELEASE_BY_ID, [{"_id": i, "now": now} for i in sorted(ids)])
    return len(ids)


def release_held(conn: Connection, now: datetime, *, store_ids: list[int] | None = None, recipients: list[str] | None = None) -> int:
    """Held messages due now: with ``recipients`` (numbers), those to them in ``store_ids`` (her contacts of each
    store, by the contacts' (store, phone) index, then ``release_of_contacts``); without, every held message (Meta
    changed the limit: rare)."""
    if recipients is None:
        return conn.execute(OUTBOX.update().where(*_HELD).values(due_at=now, updated_at=now), {"now": now}).rowcount
    if not recipients:
        return 0
    contacts = conn.execute(select(CONTACTS.c.id).where(CONTACTS.c.store_id.in_(store_ids or []),
                                                        CONTACTS.c.phone_key.in_(sorted(set(recipients))))).scalars()
    return release_of_contacts(conn, contacts, now)


def _read_facts(conn: Connection, rows: list[Claimed], since: datetime, channel: str) -> None:
    """Each claimed row's contact facts and send history since ``since``, and its number's rating (three queries)."""
    ids = [r.contact_id for r in rows if r.contact_id is not None]
    facts = contact_facts(conn, ids)
    history = send_history(conn, ids, since)
    if channel == "whatsapp":
        from connector.number_health import quality_of

        quality = {s.id: quality_of(s.whatsapp_health) for s in conn.execute(
            select(STORES.c.id, STORES.c.whatsapp_health).where(STORES.c.id.in_(sorted({r.store_id for r in rows}))))}
    for r in rows:
        if channel == "whatsapp":
            r.number_quality = quality.get(r.store_id)
        if r.contact_id is not None:
            r.facts = facts.get(r.contact_id)
            r.history = history.get(r.contact_id, SendHistory())


def held_for_limit(conn: Connection, store_id: int, now: datetime) -> dict[str, Any] | None:
    """The store's WhatsApp messages held for the messaging limit (``meter``) and when the first of them is
    due again, for the dashboard and the report; None: none is."""
    n, until = conn.execute(select(func.count(), func.min(OUTBOX.c.due_at)).where(
        OUTBOX.c.status == "pending", OUTBOX.c.due_at > now, OUTBOX.c.store_id == store_id, OUTBOX.c.channel == "whatsapp",
        OUTBOX.c.skip_reason == HELD_FOR_LIMIT)).one()
    return {"sends": n, "until": until.isoformat()} if n else None


@dataclass(slots=True)
class Result:
    """The outcome of one claimed row, written back in one batch."""

    row: Claimed
    outcome: str  # sent | dry_run | retry | failed | uncertain | skipped | deferred | held (the number paused) | released (not tried)
    started_at: datetime
    duration_ms: int | None = None
    wamid: str | None = None
    wa_id: str | None = None
    error_code: int | None = None
    error_detail: str | None = None
    due_at: datetime | None = None
    recipient: str | None = None
    kind: str | None = None
    label: str | None = None
    about_contact: bool = False  # WhatsApp refused the send for a reason of the person's (CONTACT_ERRORS)
    counts: bool = True  # the try spends one of max_attempts (a throttle answer does not)


@functools.cache
def _record_statement(fields: tuple[str, ...]) -> Any:
    """Settle a claimed row: only while it is still ours ('sending'); a status webhook may have won."""
    return (OUTBOX.update().where(OUTBOX.c.id == bindparam("_pk"), OUTBOX.c.status == "sending")
            .values({f: bindparam(f) for f in fields}))


@functools.cache
def _message_statement(dialect: str) -> Any:
    ins = (postgresql.insert if dialect == "postgresql" else sqlite.insert)(MESSAGES)
    return ins.on_conflict_do_nothing(index_elements=["store_id", "wamid"])


_LEARN_WA_ID = CONTACTS.update().where(CONTACTS.c.id == bindparam("_cid"), CONTACTS.c.wa_id.is_(None)).values(wa_id=bindparam("wa_id"))
# Meta failures that say something about the person: the contact changes (state.apply_contact_error)
CONTACT_ERRORS = (131026, 131050)
# a message that went (or may have gone) to a number marked unreachable (131026) was the one try the gate let through
# once the retry period had passed (policy.worth_trying): the period starts again from it, so her
# next message waits for this one's news (delivered: reachable again; 131026: the clock restarts)
_TRIED_AGAIN = CONTACTS.update().where(
    CONTACTS.c.id == bindparam("_cid"), CONTACTS.c.reachable.is_(False), CONTACTS.c.unreachable_at < bindparam("_at"),
).values(unreachable_at=bindparam("tried_at"))
# WhatsApp took the message (or a dry run stood in for it): what counts as a reminder that went
# out, for attribution (journeys.runner) and the weekly report (reports)
REACHED_STATES = ("sent", "delivered", "read", "dry_run")
# steps by the unique (store_id, key) index, each with when it went out (``SENT_AT``: its outbound message row, else
# the row's last change, as the policy gate reads it); the status is checked on the few rows found (as ``_BY_KEYS``)
SENT_STEPS = select(OUTBOX.c.idempotency_key, OUTBOX.c.status, SENT_AT.label("sent_at")).where(
    OUTBOX.c.store_id == bindparam("sid"), OUTBOX.c.idempotency_key.in_(bindparam("keys", expanding=True)),
    OUTBOX.c.channel == "whatsapp")


def sent_times(conn: Connection, store_id: int, keys: Iterable[str]) -> dict[str, datetime]:
    """When each of these steps (outbox keys, as ``queue_template`` names them) went out, by key: only those WhatsApp
    took (``REACHED_STATES``), so a message still waiting, skipped or failed is absent. Aware UTC times (the columns'
    ``UTCDateTime``). One query per 500 keys: the runner's attribution and timers, the report's credit."""
    wanted = sorted({k[:255] for k in keys})
    out: dict[str, datetime] = {}
    for start in range(0, len(wanted), 500):
        out.update((r.idempotency_key, r.sent_at) for r in conn.execute(SENT_STEPS, {"sid": store_id, "keys": wanted[start:start + 500]})
                   if r.status in REACHED_STATES)
    return out


TRIED = ("sent", "dry_run", "retry", "failed", "uncertain")  # outcomes of a call that was made: an attempt
# The rows a batch's results are for that are still leased ('sending'), with their claim; locked on
# PostgreSQL until the results commit (in id order, as ``expire_leases`` takes them)
_LEASED = (select(OUTBOX.c.id, OUTBOX.c.leased_by)
           .where(OUTBOX.c.id.in_(bindparam("ids", expanding=True)), OUTBOX.c.status == "sending").order_by(OUTBOX.c.id))


def _still_ours(conn: Connection, results: list[Result]) -> set[int]:
    """The ids of the rows these results' claims still hold. A result that comes back after its
    lease ran out, when another worker has expired the row (made it due again, or ``uncertain``),
    claimed it or settled it, is not the row's outcome any more: that claim's is."""
    query = _LEASED if conn.dialect.name == "sqlite" else _LEASED.with_for_update()
    held = dict(conn.execute(query, {"ids": sorted({res.row.id for res in results})}).all())
    return {res.row.id for res in results if res.row.id in held and res.row.lease in (None, held[res.row.id])}


def record(db: Database, results: list[Result], now: datetime,
           also: Callable[[Connection, list[Result]], Any] | None = None) -> list[Result]:
    """Write a batch's outcomes: a few executemany statements, whatever the batch size.

    A row is settled only while this batch's claim still holds it; a late result (its lease ran
    out and another worker took the row over) keeps its attempt row, the call did happen, but
    changes no status. ``also`` writes what must commit with them, given the results that
    settled their rows (the hand-offs of failed store write-backs). Returns those results."""
    if not results:
        return []
    attempts: list[dict[str, Any]] = []
    messages: list[dict[str, Any]] = []
    wa_ids: list[dict[str, Any]] = []
    tried_again: list[dict[str, Any]] = []
    contact_errors: list[tuple[int, int, int, datetime]] = []
    for res in results:
        r = res.row
        # held: the number is paused (an account-level refusal); an attempt row if the refusal came from a call
        if res.outcome in TRIED or (res.outcome == "held" and res.duration_ms is not None):
            attempts.append({
                "store_id": r.store_id, "outbox_id": r.id, "started_at": res.started_at, "duration_ms": res.duration_ms,
                "outcome": res.outcome, "error_code": res.error_code,
                "error_detail": (res.error_detail or None) and res.error_detail[:255],
            })
        if res.outcome in ("sent", "dry_run") and res.wamid:
            messages.append({
                "store_id": r.store_id, "contact_id": r.contact_id, "direction": "out", "wamid": res.wamid,
                "kind": (res.kind or "template")[:32], "body": res.label, "status": res.outcome, "error_code": None,
                "outbox_id": r.id, "occurred_at": res.started_at, "updated_at": now,
            })
            if res.wa_id and r.contact_id is not None:
                wa_ids.append({"_cid": r.contact_id, "wa_id": res.wa_id})
        if res.outcome in ("sent", "dry_run", "uncertain") and r.facts is not None and not r.facts.reachable and r.contact_id is not None:
            tried_again.append({"_cid": r.contact_id, "_at": res.started_at, "tried_at": res.started_at})
        if res.outcome == "failed" and res.about_contact and res.error_code in CONTACT_ERRORS and r.contact_id is not None:
            contact_errors.append((r.store_id, r.contact_id, res.error_code, res.started_at))
    with db.write_lock(), db.engine.begin() as conn:
        ours = _still_ours(conn, results)
        settled = [res for res in results if res.row.id in ours]
        late = sorted(res.row.id for res in results if res.row.id not in ours and res.outcome != "released")
        if late:
            log.warning("outbox rows %s: the result came after the lease ran out and another worker had expired, claimed "
                        "or settled the row; kept as an attempt only", late)
        updates: dict[tuple[str, ...], list[dict[str, Any]]] = {}
        for res in settled:
            values = _settle(res, now)
            updates.setdefault(tuple(sorted(values)), []).append({**values, "_pk": res.row.id})
        for fields, params in updates.items():
            conn.execute(_record_statement(fields), params)
        if attempts:
            conn.execute(insert(ATTEMPTS), attempts)
        if messages:  # a status webhook may have beaten us to it (settled an uncertain send)
            conn.execute(_message_statement(conn.dialect.name), messages)
        if wa_ids:
            conn.execute(_LEARN_WA_ID, wa_ids)
        if tried_again:
            conn.execute(_TRIED_AGAIN, tried_again)
        fallbacks = [res for res in settled if res.outcome == "failed" and res.error_code == OUTSIDE_WINDOW]
        if fallbacks:
            _queue_fallbacks(conn, fallbacks, now)
        if contact_errors:
            from connector.state import apply_contact_error

            for store_id, cid, code, at in contact_errors:
                apply_contact_error(conn, store_id, cid, code, at, now)
        if also is not None:
            also(conn, settled)
    return settled


OUTSIDE_WINDOW = 131047  # the 24 h window had closed: a free-form message with a template fallback goes out as that


def _queue_fallbacks(conn: Connection, results: list[Result], now: datetime) -> None:
    """The step of a free-form message WhatsApp refused with 131047 in its answer goes out once more,
    as its template (``queue_fallback``), as a failed status webhook's 131047 does (``state._settle_outbox``)."""
    for res in results:
        r = res.row
        if r.key:
            queue_fallback(conn, r.store_id, r.key, r.contact_id, r.journey, r.step, r.payload, now)


def queue_fallback(conn: Connection, store_id: int, key: str, contact_id: int | None, journey: str | None,
                   step: str | None, payload: dict[str, Any] | None, now: datetime) -> None:
    """The 24 h window had closed (131047): a free-form message's step goes out once more as the template
    ``queue.queue_free_form`` kept in its payload (none kept: nothing), under its key + ``:template``, so
    whichever says so first (the send's answer or a failed status webhook), it is queued once."""
    p = payload or {}
    if p.get("fallback"):
        enqueue(conn, store_id=store_id, key=f"{key}:template", contact_id=contact_id, journey=journey, step=step,
                category=p.get("fallback_category"), payload={"subject": p.get("subject"), "message": p["fallback"]},
                due_at=now, now=now)


def _settle(res: Result, now: datetime) -> dict[str, Any]:
    """The row's new values for its result (the lease is released whatever the outcome)."""
    values: dict[str, Any] = {"updated_at": now, "lease_until": None, "leased_by": None}
    if res.outcome in TRIED and res.counts:  # a throttle answer spends none of max_attempts
        values["attempts"] = res.row.attempts + 1
    if res.outcome in ("sent", "dry_run"):
        values.update(status=res.outcome, wamid=res.wamid, last_error=None)
    elif res.outcome == "retry":
        values.update(status="pending", due_at=res.due_at, last_error=res.error_detail)
        if res.error_code == 131049:  # her marketing limit: the same message is planned again for tomorrow, not held
            values["planned_at"] = res.due_at
    elif res.outcome == "deferred":
        values.update(status="pending", due_at=res.due_at, skip_reason=None)
    elif res.outcome == "released":  # never tried: due as it was, its attempts and last error as they were
        values.update(status="pending")
    elif res.outcome == "held":  # the number is paused: pending again, its attempts unspent, its place in line kept
        values.update(status="pending", last_error=res.error_detail)
        if res.due_at is not None:  # a call rate limit's pause: due at its end
            values["due_at"] = res.due_at
    elif res.outcome == "skipped":
        values.update(status="skipped", skip_reason=res.error_detail)
    else:  # failed | uncertain
        values.update(status=res.outcome, last_error=res.error_detail)
    return values


def heartbeat(db: Database, name: str, holder: str, now: datetime, ttl: timedelta, prefix: str = "dispatcher:") -> int:
    """Announce this dispatcher and count the live ones (itself included).

    Meta's throughput limit is per sending number, not per process: with N dispatchers
    each paces at rate / N, so together they stay within the number's rate.
    """
    from connector.storage.sql import LEASES

    ins = (postgresql.insert if db.engine.dialect.name == "postgresql" else sqlite.insert)(LEASES)
    stmt = ins.on_conflict_do_update(index_elements=["name"], set_={"holder": holder, "expires_at": now + ttl})
    with db.write_lock(), db.engine.begin() as conn:
        conn.execute(stmt, {"name": name, "holder": holder, "expires_at": now + ttl})
        return conn.execute(
            select(func.count()).select_from(LEASES).where(LEASES.c.name.like(f"{prefix}%"), LEASES.c.expires_at > now)
        ).scalar_one()


def release(db: Database, name: str) -> None:
    from connector.storage.sql import LEASES

    with db.write_lock(), db.engine.begin() as conn:
        conn.execute(LEASES.delete().where(LEASES.c.name == name))


PAUSED = "whatsapp-paused:"  # a leases row per sending number a dispatcher has paused (holder: see ``_pause_holder``)
RATE_LIMITED = "rate"  # the holder's word for a pause over the platform's call rate limit (no account to fix)


@dataclass(frozen=True, slots=True)
class NumberPause:
    """A number's paused sends as a dispatcher showed them: why (the platform's code; a call rate limit
    or the account), since when (its first refusal: a refused probe extends the pause, not its start)
    and the next try."""

    code: int | None
    until: datetime
    since: datetime | None = None  # None: shown by an older version, which did not say
    rate_limit: bool = False


def _pause_holder(code: int | None, since: datetime | None, rate_limit: bool) -> str:
    """``code|rate|since`` (or ``code|account|since``) in the lease's 64-character holder: no schema change."""
    return "|".join(("" if code is None else str(code), RATE_LIMITED if rate_limit else "account",
                     since.isoformat() if since is not None else ""))[:64]


def _read_pause(holder: str, until: datetime) -> NumberPause:
    code, kind, since = (holder.split("|") + ["", ""])[:3]  # an older version's holder: the code alone
    try:
        started = datetime.fromisoformat(since) if since else None
    except ValueError:
        started = None
    return NumberPause(int(code) if code.lstrip("-").isdigit() else None, until, started, kind == RATE_LIMITED)


def mark_paused(db: Database, phone_number_id: str, code: int | None, next_try: datetime, *, since: datetime | None = None,
                rate_limit: bool = False) -> None:
    """Say (for /readyz, the dashboard and the report) that sends from this number are paused until
    ``next_try``: the pause itself lives in the dispatcher's memory, this row only makes it visible
    to every process."""
    from connector.storage.sql import LEASES

    ins = (postgresql.insert if db.engine.dialect.name == "postgresql" else sqlite.insert)(LEASES)
    values = {"holder": _pause_holder(code, since, rate_limit), "expires_at": next_try}
    with db.write_lock(), db.engine.begin() as conn:
        conn.execute(ins.on_conflict_do_update(index_elements=["name"], set_=values), {"name": f"{PAUSED}{phone_number_id}"[:120], **values})


def clear_paused(db: Database, phone_number_ids: list[str]) -> None:
    """The number sends again (or a dispatcher starts afresh with, perhaps, a new token)."""
    from connector.storage.sql import LEASES

    if phone_number_ids:
        with db.write_lock(), db.engine.begin() as conn:
            conn.execute(LEASES.delete().where(LEASES.c.name.in_([f"{PAUSED}{p}"[:120] for p in phone_number_ids])))


def paused_numbers(db: Database, now: datetime) -> dict[str, NumberPause]:
    """phone_number_id -> its pause, for every number a dispatcher paused that is paused at ``now``.

    A pause whose next try has passed is over as far as anyone can tell: its probe, if a message waited,
    re-marked it or cleared it; with nothing left to send no probe comes and its row stays behind, which
    must not say "paused until" a time long past."""
    from connector.storage.sql import LEASES

    with db.engine.connect() as conn:
        rows = conn.execute(select(LEASES.c.name, LEASES.c.holder, LEASES.c.expires_at).where(
            LEASES.c.name.like(f"{PAUSED}%"), LEASES.c.expires_at > now))
        return {r.name[len(PAUSED):]: _read_pause(r.holder, r.expires_at) for r in rows}


def paused_number(conn: Connection, phone_number_id: str | None, now: datetime) -> NumberPause | None:
    """The pause of one number, if a dispatcher paused it and its next try is still ahead of ``now``."""
    from connector.storage.sql import LEASES

    if not phone_number_id:
        return None
    row = conn.execute(select(LEASES.c.holder, LEASES.c.expires_at).where(
        LEASES.c.name == f"{PAUSED}{phone_number_id}"[:120], LEASES.c.expires_at > now)).first()
    return _read_pause(row.holder, row.expires_at) if row is not None else None


def waiting(conn: Connection, store_id: int, by: datetime, channel: str = "whatsapp") -> int:
    """How many of the store's messages wait to be sent by ``by`` (a pause's end): pending and due then,
    not a reminder planned days ahead, which no pause holds back."""
    return conn.execute(select(func.count()).select_from(OUTBOX).where(
        OUTBOX.c.store_id == store_id, OUTBOX.c.channel == channel, OUTBOX.c.status == "pending",
        OUTBOX.c.due_at <= by)).scalar_one()
