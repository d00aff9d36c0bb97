"""Apply journeys inside the processor's transaction: gather facts, decide, apply commands.

The same transaction that marks an inbox row done writes the journey run, its outbox
rows and its store write-backs, so a crash leaves either all of it or none of it, and a
retried row finds the run it already started.

Runs, contacts and orders are read through the processor's transaction cache when one is
installed (``storage/txcache.py``): ``prefetch_runs`` and ``on_timers`` load a batch's
rows with a few ``IN`` queries, so deciding an event costs no lookups of its own.
"""

from __future__ import annotations

import functools
import hashlib
import logging
from collections.abc import Callable
from dataclasses import replace
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Connection, bindparam, func, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import OperationalError

from connector import events as ev
from connector.journeys.engine import (
    Facts, Finish, Handoff, MoveStage, OpenCase, OrderFacts, Refresh, Rehome, Run, Send, Start, TimerFired, Update, Wake, Withdraw,
    WithdrawWriteBack, WriteBack,
)
from connector.handoffs import HandoffRequest, journey_stage, open_handoff, stage_after
from connector.handoffs import rules as handoff_rules
from connector.journeys._common import continued, is_reply
from connector.journeys import timer_failures
from connector.journeys.registry import journeys
from connector.outbox import store as ob
from connector.outbox.queue import queue_template, refresh_template, step_key
from connector.policy import worth_trying
from connector.templates import shows
from connector.rows import contact_row, order_row
from connector.state import active_runs, cache_active_runs
from connector.contacts import email_key
from connector.storage.sql import flush, insert_id, update_by_id, CONTACTS, HANDOFFS, ORDERS, OUTBOX, RUNS
from connector.storage.txcache import by_key, current

log = logging.getLogger("storeloop.journeys")


def in_holdout(contact_id: int, journey: str, percent: float) -> bool:
    """Deterministic control group: the same contact stays in (or out of) a journey's holdout."""
    if percent <= 0:
        return False
    digest = hashlib.sha256(f"{journey}:{contact_id}".encode()).digest()
    return int.from_bytes(digest[:4], "big") / 2**32 * 100 < percent


_RUN = select(RUNS).where(RUNS.c.store_id == bindparam("sid"), RUNS.c.journey == bindparam("j"), RUNS.c.subject == bindparam("s"))
_RUNS_BY_SUBJECTS = select(RUNS).where(
    RUNS.c.store_id == bindparam("sid"), RUNS.c.journey.in_(bindparam("js", expanding=True)),
    RUNS.c.subject.in_(bindparam("ss", expanding=True)))
_DUE = (select(RUNS).where(RUNS.c.store_id == bindparam("sid"), RUNS.c.status == "active", RUNS.c.next_due_at <= bindparam("now"))
        .order_by(RUNS.c.next_due_at).limit(bindparam("limit")))
# PostgreSQL, several workers: a run another worker is firing is skipped, neither fired twice
# nor waited for (SQLite's one write lock already takes timer batches in turn)
_DUE_SKIP_LOCKED = _DUE.with_for_update(skip_locked=True, of=RUNS)
_CONTACTS_BY_IDS = select(CONTACTS).where(CONTACTS.c.id.in_(bindparam("ids", expanding=True)))
_ORDERS_BY_IDS = select(ORDERS).where(ORDERS.c.store_id == bindparam("sid"), ORDERS.c.external_id.in_(bindparam("ids", expanding=True)))
CONTACT_ACTIVITY = (ev.OrderPlaced, ev.MessageReceived, ev.ButtonReplied)  # what a follows_contact journey's other runs hear
# (a journey may name its own: ``contact_events``)


def _never(_config: Any) -> bool:
    return False
CONVERSIONS = (ev.OrderPlaced, ev.OrderUpdated, ev.OrderPaid)  # what can credit a run's reminders with an order
REACHED = ob.REACHED_STATES  # WhatsApp took it: a reminder that went out


@functools.cache
def _new_run_statement(dialect: str) -> Any:
    ins = (postgresql.insert if dialect == "postgresql" else sqlite.insert)(RUNS)
    return ins.on_conflict_do_nothing(index_elements=["store_id", "journey", "subject"]).returning(RUNS.c.id)


def _found(row: Any, subject: str) -> tuple[int, Run, bool]:
    return row.id, Run(row.journey, subject, row.status, dict(row.state or {}), row.next_due_at, row.contact_id, row.started_at), row.holdout


REPEATS = "_repeats"  # run state: {step: its highest Send.occurrence}, so the run's later keys are known
# run state: the run as it was when the store binned its order (``OrderDeleted``), what it goes on from if the
# order is restored (``JourneyRunner.on_restored``); what the bin withdrew is skipped as ``BINNED_SKIP``
BINNED = "_binned"
BINNED_SKIP = "order_binned"
# in ``BINNED``: the customer's replies (taps, words) the run heard while its order lay in the bin, each as
# ``{"event": ..., "handed_off": case id}``: its decision then saw a cancelled order; ``on_restored`` has the
# journey decide them again on the restored run (``facts.extra["heard_in_bin"]``), so her answer counts. A tap
# that matched none of our messages is kept too, with ``"unmatched"``: the other runs it may have been meant for
# (``JourneyRunner._keep_unmatched``)
HEARD = "heard"
UNMATCHED = "unmatched"


def _step_keys(store: Any, journey: str, subject: str, state: dict[str, Any] | None = None) -> list[str]:
    """The outbox keys of every template step this journey can queue for a subject (as
    ``queue_template`` names them), with the second and later times of a step the run repeated."""
    prefix = f"{journey}."
    repeats = (state or {}).get(REPEATS) or {}
    return [step_key(journey, step, subject, n) for t in store.templates if t.step.startswith(prefix)
            for step in (t.step[len(prefix):],) for n in range(1, int(repeats.get(step, 1)) + 1)]


def writeback_key(journey: str, key: str, subject: str) -> str:
    """The outbox key of a run's store write-back (``WriteBack.key``): queued once per run."""
    return f"{journey}:writeback:{key}:{subject}"


def _with_writebacks(conn: Connection, store_id: int, journey: Any, name: str, event: Any, subject: str,
                     found: tuple[int, Run, bool] | None, facts: Facts, config: Any) -> Facts:
    """The facts with the state of the run's write-backs its journey's decision turns on (``needs_writebacks``:
    a Confirm made in time that finds the no-answer cancel still waiting withdraws it), their rows locked
    until the decision is applied. No lookup for any other event: the journey names none."""
    needs = getattr(journey, "needs_writebacks", None)
    if needs is None or found is None:
        return facts
    keys = needs(event, found[1], config)
    if not keys:
        return facts
    flush(conn)  # a write-back this batch queued is read as stored
    states = ob.writeback_states(conn, store_id, [writeback_key(name, k, subject) for k in keys])
    known = {k: states[full] for k in keys if (full := writeback_key(name, k, subject)[:255]) in states}
    return replace(facts, extra={**facts.extra, "writebacks": known})


def _reminders_sent(conn: Connection, store: Any, store_id: int, journey: str, subject: str) -> tuple[datetime, ...]:
    """When each of the run's messages went out, in order: only those WhatsApp took, so a
    reminder still waiting, skipped (quiet hours then the order, the cap) or failed is none."""
    keys = _step_keys(store, journey, subject)
    return tuple(sorted(ob.sent_times(conn, store_id, keys).values())) if keys else ()


def _supersede_waiting(conn: Connection, store: Any, store_id: int, journey: str, step: str, subject: str, now: datetime) -> None:
    """A marketing run's step was just queued for later (quiet hours): the run's other steps
    still waiting are skipped as ``superseded``, so only the latest reminder goes out. Without
    this, a first reminder held until 09:00 and the second one (due at 03:30, held too) reached
    the customer seconds apart. Only a held step looks (one lookup of the run's keys, or the
    batch's held rows: ``ob.skip_pending``): a step that goes now finds the earlier ones sent."""
    own = step_key(journey, step, subject)
    ob.skip_pending(conn, store_id, [k for k in _step_keys(store, journey, subject) if k != own], "superseded", now)


def _with_sends(conn: Connection, store: Any, store_id: int, journey: Any, event: Any, found: tuple[int, Run, bool] | None,
                facts: Facts) -> Facts:
    """The facts for an order reaching a run that credits orders to its reminders
    (``credits_sent_reminders``): which of them went out, and when (one lookup, and only
    for a run that queued a reminder and has no order yet: not for every event or timer)."""
    if not getattr(journey, "credits_sent_reminders", False) or found is None or not isinstance(event, CONVERSIONS):
        return facts
    run = found[1]
    if run.state.get("order_id") or not int(run.state.get("sent", 0)):
        return facts
    may_credit = getattr(journey, "may_credit", None)
    if may_credit is not None and not may_credit(event, run):
        return facts  # an order the run cannot credit (reorder: another product): no lookup
    sent = _reminders_sent(conn, store, store_id, run.journey, run.subject)
    for took_over in continued(run.state):  # the run took over another's ladder (a cart that became an unpaid order): its sends count
        sent = tuple(sorted(sent + _reminders_sent(conn, store, store_id, run.journey, took_over)))
    return replace(facts, extra={**facts.extra, "reminders_sent": sent})


def _sends_of_due_runs(conn: Connection, store: Any, store_id: int, due: list[tuple[Any, tuple[int, Run, bool]]],
                       enabled: dict[str, Any], now: datetime) -> dict[tuple[str, str], tuple[datetime, ...]]:
    """When the messages went out of each due run whose timer turns on whether they reached the
    customer (a journey's ``needs_sends``: COD's answer deadline, which must not cancel an order
    nobody could ask), by (journey, subject), with those of the runs it went on from (``continued``:
    a pay reminder's newer try listens out the older try's reminder's window), as ``_with_sends``
    tells them for an order: one query per 500 step keys for the whole timer batch (a query per run
    cost the timers 6%), before any of them fires."""
    asking = {name: needs for name in enabled if (needs := getattr(journeys().get(name), "needs_sends", None)) is not None}
    wanted: dict[str, list[tuple[str, str]]] = {}
    for row, found in due if asking else ():
        needs = asking.get(row.journey)
        if needs is not None and needs(TimerFired(now), found[1], enabled[row.journey]):
            for subject in (row.subject, *continued(found[1].state)):
                for k in _step_keys(store, row.journey, subject):
                    wanted.setdefault(k[:255], []).append((row.journey, row.subject))
    sent: dict[tuple[str, str], list[datetime]] = {run: [] for runs in wanted.values() for run in runs}
    for key, at in ob.sent_times(conn, store_id, wanted).items():
        for run in wanted[key]:
            sent[run].append(at)
    return {run: tuple(sorted(times)) for run, times in sent.items()}


# the open hand-offs of a batch's contacts, by the (store_id, status) index: open cases are few
_OPEN_CASES = select(HANDOFFS.c.id, HANDOFFS.c.contact_id, HANDOFFS.c.journey, HANDOFFS.c.subject).where(
    HANDOFFS.c.store_id == bindparam("sid"), HANDOFFS.c.status == "open", HANDOFFS.c.contact_id.in_(bindparam("cids", expanding=True)))


def _cases_of_due_runs(conn: Connection, store_id: int, due: list[tuple[Any, tuple[int, Run, bool]]], enabled: dict[str, Any],
                       now: datetime) -> dict[tuple[str, str], tuple[OpenCase, ...]]:
    """The open hand-offs of the contact of each due run whose timer turns on whether a person
    still has its case (a journey's ``needs_cases``: COD's answer deadline of a run her words
    went to a person, who may have closed it), by (journey, subject): one query per 500
    contacts for the whole timer batch, before any of them fires."""
    asking = {name: needs for name in enabled if (needs := getattr(journeys().get(name), "needs_cases", None)) is not None}
    wanted: dict[tuple[str, str], int | None] = {}
    for row, found in due if asking else ():
        needs = asking.get(row.journey)
        if needs is not None and needs(TimerFired(now), found[1], enabled[row.journey]):
            wanted[(row.journey, row.subject)] = row.contact_id
    cids = sorted({c for c in wanted.values() if c is not None})
    open_cases: dict[int, list[OpenCase]] = {}
    for i in range(0, len(cids), 500):
        for r in conn.execute(_OPEN_CASES, {"sid": store_id, "cids": cids[i:i + 500]}):
            open_cases.setdefault(r.contact_id, []).append(OpenCase(r.id, r.journey, r.subject))
    return {run: tuple(open_cases.get(cid, ())) if cid is not None else () for run, cid in wanted.items()}


def _sharing_the_order(journey: Any, event: Any, targets: list[tuple[str, tuple[int, Run, bool] | None, Facts]]
                       ) -> list[tuple[str, tuple[int, Run, bool] | None, Facts]]:
    """An order that reaches several runs of a journey that credits an order to one run only
    (``credits_one_run``: the customer's open carts, and the order's own checkout's run): each
    run is told of all of them, with when each one's reminders went out (``facts.extra["order_runs"]``),
    so the journey picks the one. Otherwise the targets as they are."""
    if not getattr(journey, "credits_one_run", False) or not isinstance(event, CONVERSIONS):
        return targets
    reached = tuple((found[1], seen.extra.get("reminders_sent")) for _s, found, seen in targets if found is not None)
    if len(reached) < 2:
        return targets
    return [(s, found, replace(seen, extra={**seen.extra, "order_runs": reached})) for s, found, seen in targets]


def _run(conn: Connection, store_id: int, journey: str, subject: str) -> tuple[int, Run, bool] | None:
    row = by_key(conn, "journey_runs", (store_id, journey, subject), _RUN, {"sid": store_id, "j": journey, "s": subject})
    return None if row is None else _found(row, subject)


def _found_run(conn: Connection, store_id: int, journey: str, subject: str) -> tuple[int, Run, bool]:
    """A run known to exist (one of a contact's active runs)."""
    found = _run(conn, store_id, journey, subject)
    assert found is not None
    return found


def _active_subjects(conn: Connection, store_id: int, journey: str, contact_id: int) -> list[str]:
    """Subjects of the contact's active runs of a journey, in id order."""
    return [r.subject for r in active_runs(conn, store_id, contact_id) if r.journey == journey]


_UNFINISHED = select(RUNS.c.subject).where(  # by the (store_id, contact_id) index: a contact's runs are few
    RUNS.c.store_id == bindparam("sid"), RUNS.c.contact_id == bindparam("cid"), RUNS.c.journey == bindparam("j"),
    RUNS.c.status != "finished").order_by(RUNS.c.id)


def _unfinished_subjects(conn: Connection, store_id: int, journey: str, contact_id: int) -> list[str]:
    """Subjects of the contact's runs of a journey not finished (active, or waiting on a person:
    status ``handoff``), in id order. Read from the database (the batch's held writes first): only a
    tap that matched none of our messages asks, which is rare."""
    flush(conn)
    subjects = conn.execute(_UNFINISHED, {"sid": store_id, "cid": contact_id, "j": journey}).scalars().all()
    return [s for s in subjects if (found := _run(conn, store_id, journey, s)) is not None and found[1].status != "finished"]


def _about_its_order(conn: Connection, store_id: int, facts: Facts, subject: str) -> Facts:
    """The facts with the order a run is about (``order:<id>``): a tap matched to no message names none."""
    if not subject.startswith("order:") or (facts.order is not None and facts.order.external_id == subject[6:]):
        return facts
    return replace(facts, order=_order_facts(conn, store_id, subject[6:]))


_CONTACTS_BY_EMAIL = select(CONTACTS.c.id, CONTACTS.c.first_name, CONTACTS.c.last_name).where(  # the (store_id, lower(trim(email))) index
    CONTACTS.c.store_id == bindparam("sid"), func.lower(func.trim(CONTACTS.c.email)) == bindparam("key"))


def _named_otherwise(row: Any, customer: Any) -> bool:
    """Whether a contact is named otherwise than the order's customer (a first or last name known on
    both sides differs, case and spaces aside): another person who typed the same address."""
    for attr in ("first_name", "last_name"):
        ours, theirs = (getattr(customer, attr, None) or "").strip().casefold(), (row[attr] or "").strip().casefold()
        if ours and theirs and ours != theirs:
            return True
    return False


def _same_email_contacts(conn: Connection, store_id: int, customer: Any, contact_id: int) -> list[int]:
    """The store's other contacts with the order customer's email (trimmed, any case) and no other
    name: the same customer who checked out under another phone. A contact named otherwise is
    someone else who typed the same address (a placeholder, "noemail@gmail.com"): her cart is not
    ended, nor credited, by a stranger's order. Usually none: one indexed lookup of contacts."""
    key = email_key(customer.email)
    if key is None:
        return []
    cache = current(conn)
    if cache is not None and ("email", store_id, key) in cache.loaded:  # the batch's prefetch read them all
        rows = {r.id: r for r in cache.matching_contacts("email", store_id, key)}
    else:
        rows = {r.id: r._mapping for r in conn.execute(_CONTACTS_BY_EMAIL, {"sid": store_id, "key": key})}
        if cache is not None:  # a cached contact is newer than its stored row (a held INSERT, a held email change)
            for cid in set(rows) | cache.contacts_by_email(key):
                row = cache.get("contacts", cid)
                if row is None:
                    continue
                if row["store_id"] != store_id or email_key(row.get("email")) != key:
                    rows.pop(cid, None)
                else:
                    rows[cid] = row
    return sorted(cid for cid, row in rows.items() if cid != contact_id and not _named_otherwise(row, customer))


def _one_email_contacts_runs(conn: Connection, store_id: int, journey: str, contact_ids: list[int]) -> list[str]:
    """The open runs of ``journey`` an order reaches by its email (``_same_email_contacts``): asked only for an order
    that matches none by its checkout or its phone (she checked out with one number and bought with another). Two
    people may share one address, and one name too (a family's one store account, each with a phone): an order with
    a run of its own, or whose phone has runs, is theirs, and ends or credits no one else's. Runs of two or more
    other contacts are no one's to tell apart (as ``state.contact_by_email`` ties an order to none of them): none."""
    found = [subjects for cid in contact_ids if (subjects := _active_subjects(conn, store_id, journey, cid))]
    return found[0] if len(found) == 1 else []


AWAITED = "awaits_order"  # run state: the order whose money the run waits for (her bank-transfer try: payment_recovery,
# checkout_recovery), placed perhaps under her other number: its later news reaches the run (``_awaiting_runs``)
AWAITABLE = (ev.OrderUpdated, ev.OrderPaid, ev.OrderCancelled)  # an order's news after it was placed


def _awaiting_runs(conn: Connection, store_id: int, journey: str, contact_ids: list[int], order_id: str) -> list[str]:
    """The active runs of ``journey`` of her other contacts with the order's email (``_same_email_contacts``) that
    wait for this order's money (``AWAITED``): she placed her bank-transfer try under her other number, and it was
    taken as her try when placed. Its payment (or its cancel) is what they wait for, so it reaches them as it does
    a run of her own number. Their runs come from the batch's prefetch (``order_email_keys``): no lookup of its own."""
    return [r.subject for cid in contact_ids for r in active_runs(conn, store_id, cid)
            if r.journey == journey and (r.state or {}).get(AWAITED) == order_id]


def _order_facts(conn: Connection, store_id: int, order_id: str) -> OrderFacts | None:
    o = order_row(conn, store_id, order_id)
    if o is None:
        return None
    return OrderFacts(o.external_id, o.name, o.is_cod, o.payment_state, o.fulfillment_state, o.total, o.currency,
                      o.cancelled_at is not None, o.status_url, o.payment_url, o.checkout_token, o.placed_at,
                      channel=o.channel, delivery=o.delivery, customer_total=o.customer_total, customer_currency=o.customer_currency,
                      payment_terms=o.payment_terms, payment_due_at=o.payment_due_at)


def run_subjects(event: Any) -> list[str]:
    """The run subjects an event can concern, as the built-in journeys name them (for ``prefetch_runs``)."""
    if isinstance(event, (ev.OrderPlaced, ev.OrderUpdated, ev.OrderPaid, ev.OrderCancelled, ev.OrderFulfilled)):
        o = event.order
        return [f"order:{o.external_id}", *([f"checkout:{o.checkout_token}"] if o.checkout_token else [])]
    if isinstance(event, ev.CheckoutUpdated):
        return [f"checkout:{event.checkout.token}"]
    if isinstance(event, ev.FulfillmentUpdated):
        return [f"order:{event.fulfillment.order_external_id}"]
    return []


def order_email_keys(event: Any) -> list[str]:
    """The email keys ``on_event`` matches other contacts by (a placed order's customer; the customer of a later event
    of an order that is no cash on delivery, which a run of her other number may await: ``_awaiting_runs``), for
    ``rows.prefetch_contacts``; the processor prefetches those contacts' active runs too."""
    if (isinstance(event, ev.OrderPlaced) or (isinstance(event, AWAITABLE) and not event.order.is_cod)) \
            and event.order.customer is not None:
        key = email_key(event.order.customer.email)
        return [key] if key else []
    return []


def prefetch_runs(conn: Connection, store: Any, store_id: int, subjects: set[str], contact_ids: set[int]) -> None:
    """Load a batch's journey runs into the transaction cache: the runs of these subjects, and
    every active run of these contacts (what a follows-contact journey looks for)."""
    cache = current(conn)
    if cache is None:
        return
    names = sorted(store.enabled_journeys())
    todo = sorted(s for s in subjects if any(not cache.lookup(("journey_runs", store_id, j, s))[0] for j in names))
    if todo and names:
        for row in conn.execute(_RUNS_BY_SUBJECTS, {"sid": store_id, "js": names, "ss": todo}):
            cache.put("journey_runs", row)
        for s in todo:
            for j in names:
                cache.absent(("journey_runs", store_id, j, s))
    cache_active_runs(conn, store_id, contact_ids)


def _prefetch_for_timers(conn: Connection, store_id: int, rows: list[Any]) -> None:
    """The contacts and orders the due runs' facts need, in two queries."""
    cache = current(conn)
    if cache is None:
        return
    cids = sorted({r.contact_id for r in rows if r.contact_id is not None and cache.get("contacts", r.contact_id) is None})
    if cids:
        for row in conn.execute(_CONTACTS_BY_IDS, {"ids": cids}):
            cache.put("contacts", row)
    oids = sorted({r.subject.split(":", 1)[1] for r in rows if r.subject.startswith("order:")})
    oids = [o for o in oids if not cache.lookup(("orders", store_id, o))[0]]
    if oids:
        for row in conn.execute(_ORDERS_BY_IDS, {"sid": store_id, "ids": oids}):
            cache.put("orders", row)
        for o in oids:
            cache.absent(("orders", store_id, o))


# newest first by when each went out (``ob.SENT_AT``: its outbound message row; else the row's last change),
# not by ``updated_at`` alone: a read receipt moves that, and Meta sends them in no set order. A message that
# went out since ``since`` was updated since then too, which keeps the (contact_id, updated_at) index.
_REACHED_LATELY = select(OUTBOX.c.journey, OUTBOX.c.payload, ob.SENT_AT.label("sent_at")).where(
    OUTBOX.c.contact_id == bindparam("cid"), OUTBOX.c.updated_at >= bindparam("since"), OUTBOX.c.store_id == bindparam("sid"),
    OUTBOX.c.channel == "whatsapp", OUTBOX.c.status.in_(REACHED), OUTBOX.c.journey.is_not(None),
).order_by(OUTBOX.c.updated_at.desc()).limit(200)


def _last_heard(conn: Connection, store: Any, store_id: int, contact_id: int, at: datetime) -> tuple[str, str, int] | None:
    """The active run an unquoted reply answers: the one whose message reached the customer
    last, within ``handoff.reply_match_days``. Not merely the run that moved last: a cart
    reminder the gate skipped (no marketing consent), or a holdout run, said nothing to her;
    and a run still open weeks on (a parcel never reported delivered) is not what "hello"
    answers. The active runs come through the transaction cache (the batch's prefetch)."""
    since = at - timedelta(days=store.handoff.reply_match_days)
    runs: dict[tuple[str, str], Any] = {}
    for r in active_runs(conn, store_id, contact_id):
        runs[(r.journey, r.subject)] = r
        for took_over in continued(r.state or {}):  # an unpaid order's run went on with a cart's ladder
            runs.setdefault((r.journey, took_over), r)
    if not runs:
        return None
    reached = conn.execute(_REACHED_LATELY, {"sid": store_id, "cid": contact_id, "since": since}).all()
    for row in sorted(reached, key=lambda r: r.sent_at, reverse=True):
        run = runs.get((row.journey, (row.payload or {}).get("subject")))
        if run is not None and row.sent_at >= since:
            return run.journey, run.subject, run.contact_id
    return None


def _facts(conn: Connection, store: Any, store_id: int, event: Any, contact_id: int | None, subject: str | None,
           now: datetime) -> Facts:
    order_id = None
    fulfillment = None
    extra: dict[str, Any] = {}
    if isinstance(event, (ev.OrderPlaced, ev.OrderUpdated, ev.OrderPaid, ev.OrderCancelled, ev.OrderFulfilled)):
        order_id = event.order.external_id
    elif isinstance(event, ev.FulfillmentUpdated):
        order_id = event.fulfillment.order_external_id
        fulfillment = event.fulfillment.model_dump(mode="json")
    elif isinstance(event, (ev.ButtonReplied, ev.MessageReceived)):
        # a reply continues the journey it answers: the message it quotes first, the phone second
        # (the contact's most recently updated active run; a reaction or a sticker answers nothing)
        answered = None
        if event.context_message_id:
            sent = conn.execute(
                select(OUTBOX.c.journey, OUTBOX.c.payload, OUTBOX.c.contact_id)
                .where(OUTBOX.c.store_id == store_id, OUTBOX.c.wamid == event.context_message_id)
            ).first()
            if sent is not None and sent.journey:
                answered = (sent.journey, (sent.payload or {}).get("subject"), sent.contact_id)
                extra["reply_quoted"] = True  # it quotes one of this journey's messages: it answers that, no other
        # a tap on a message we have no record of (its send's answer was lost) is not guessed by phone: the
        # message she last got may be another order's question; the journeys' runs see it unmatched (``reached_runs``)
        guess = not (isinstance(event, ev.ButtonReplied) and event.context_message_id)
        if answered is None and contact_id is not None and is_reply(event) and guess:
            answered = _last_heard(conn, store, store_id, contact_id, event.occurred_at)
        if answered is not None:
            extra.update(reply_journey=answered[0], reply_subject=answered[1])
            contact_id = contact_id or answered[2]
            subj = answered[1] or ""
            order_id = subj.split(":", 1)[1] if subj.startswith("order:") else None
    elif isinstance(event, TimerFired) and subject and subject.startswith("order:"):
        order_id = subject.split(":", 1)[1]
    order = _order_facts(conn, store_id, order_id) if order_id else None
    if order is not None and contact_id is None:
        contact_id = order_row(conn, store_id, order_id).contact_id
    first_name = None
    if contact_id is not None:
        person = contact_row(conn, contact_id)
        if person is not None:
            first_name = person.first_name
            extra["stage"] = person.stage
            # whether a marketing message can reach them at all (the gate's consent rules), so a
            # journey counts only reminders the customer could get (checkout attribution); a refused number
            # counts once it is worth another try, as the gate lets that try through
            extra["marketing_ok"] = (person.consent_marketing == "granted" and person.opted_out_at is None
                                     and (bool(person.reachable) or worth_trying(False, person.unreachable_at, store.policy.rules(), now)))
            if person.opted_out_at is not None:  # STOP: nothing reaches her now (a COD run must not take her silence for an answer)
                extra["opted_out_at"] = person.opted_out_at
    return Facts(store_name=store.name or store.key, contact_id=contact_id, first_name=first_name, order=order,
                 fulfillment=fulfillment, extra=extra)


_BUSY_ERRORS = frozenset({"LockNotAvailable", "DeadlockDetected", "SerializationFailure", "QueryCanceled"})


def _database_busy(exc: OperationalError) -> bool:
    """A lock, a deadlock or a timeout: the database was busy, not wrong about this run (retried whole).
    Any other OperationalError of one run (a plugin's query SQLite cannot run) parks that run."""
    orig = getattr(exc, "orig", None)
    if type(orig).__name__ in _BUSY_ERRORS:
        return True
    text = str(orig or exc).lower()
    return "database is locked" in text or "database table is locked" in text or "busy" in text


LISTENING = "_listening"  # run state: its timer plans no message (``Wake.listening``); the reorder's busy check reads it


def _mark_listening(state: dict[str, Any], wake: Wake) -> bool:
    """Keep in the run's state whether its timer only listens; True when that changed (the state is written)."""
    if wake.listening and wake.at is not None:
        if state.get(LISTENING):
            return False
        state[LISTENING] = True
        return True
    return state.pop(LISTENING, None) is not None


_BINNED_SENDS = select(OUTBOX.c.id, OUTBOX.c.planned_at).where(
    OUTBOX.c.store_id == bindparam("sid"), OUTBOX.c.idempotency_key.in_(bindparam("keys", expanding=True)),
    OUTBOX.c.channel == "whatsapp", OUTBOX.c.status == "skipped", OUTBOX.c.skip_reason == BINNED_SKIP)


def _requeue_binned(conn: Connection, store: Any, store_id: int, journey: str, subject: str, state: dict[str, Any],
                    paused: timedelta, now: datetime) -> None:
    """The run's messages the bin withdrew are pending again (the same rows, so still once each), due now: the
    dispatcher's gate holds them for quiet hours as it would any; their latest useful time moves as the run's clock."""
    keys = [k[:255] for k in _step_keys(store, journey, subject, state)]
    if not keys:
        return
    flush(conn)  # the bin's skips may be held for the batch's flush
    for row in conn.execute(_BINNED_SENDS, {"sid": store_id, "keys": keys}).all():
        planned = row.planned_at + paused if row.planned_at is not None else None
        update_by_id(conn, OUTBOX, row.id, {"status": "pending", "skip_reason": None, "due_at": now, "planned_at": planned,
                                            "updated_at": now})


def _heard_in_bin(found: tuple[int, Run, bool] | None, event: Any, facts: Facts) -> dict[str, Any] | None:
    """What a run whose order lies in the bin keeps of an event, to decide it again if the order is restored:
    a reply of hers (a tap, words). None for anything else, a run not binned, and a tap matched to none of our
    messages (``reached_runs``: which order she meant is a person's question already)."""
    if found is None or BINNED not in found[1].state or not isinstance(event, (ev.ButtonReplied, ev.MessageReceived)) \
            or "reached_runs" in facts.extra:
        return None
    case = facts.extra.get("handed_off")
    return {"event": ev.dump_events([event])[0], **({"handed_off": case} if type(case) is int else {})}


_HER_RUNS = select(RUNS.c.subject, RUNS.c.state).where(  # by the (store_id, contact_id) index: a contact's runs are few
    RUNS.c.store_id == bindparam("sid"), RUNS.c.contact_id == bindparam("cid"), RUNS.c.journey == bindparam("j")).order_by(RUNS.c.id)


def _binned_runs(conn: Connection, store_id: int, journey: str, contact_id: int) -> list[tuple[int, Run, bool]]:
    """The contact's runs of a journey whose order lies in the bin (``BINNED``), in id order. Read from the
    database (the batch's held writes first): only a tap that matched none of our messages asks, which is rare."""
    flush(conn)
    rows = conn.execute(_HER_RUNS, {"sid": store_id, "cid": contact_id, "j": journey}).all()
    found = [_run(conn, store_id, journey, r.subject) for r in rows if BINNED in (r.state or {})]
    return [f for f in found if f is not None and BINNED in f[1].state]


def _keep_heard(found: tuple[int, Run, bool], heard: dict[str, Any]) -> tuple[int, Run, bool]:
    """The binned run with ``heard`` added to what it heard in the bin (``HEARD``)."""
    state = dict(found[1].state)
    binned = dict(state[BINNED])
    binned[HEARD] = [*binned.get(HEARD, ()), heard]
    state[BINNED] = binned
    return found[0], replace(found[1], state=state), found[2]


class JourneyRunner:
    def on_event(self, conn: Connection, store: Any, store_id: int, event: Any, contact_id: int | None, now: datetime,
                 *, moves_stage: bool = True, binned: bool = False) -> int:
        """Run every enabled journey for one event; returns how many commands were applied.

        ``binned``: the event leaves its order in the bin (``state.Outcome.binned``: an ``OrderDeleted``, or the
        order read in the bin by the sync): the runs it changes keep what they were (``BINNED``), to go on if
        the order is restored, whichever way the bin was heard.

        ``moves_stage`` False: the event repeats what is known (an order's payment, a parcel's status, as
        stored: an old order tagged or saved again), so it moves no one: an old delivered order's save must
        not take a customer busy with a new COD order from its owner to post-purchase or retention."""
        applied = 0
        facts = _facts(conn, store, store_id, event, contact_id, None, now)
        if facts.contact_id is not None and moves_stage:
            current = facts.extra.get("stage")
            # the stored order says whether parcel news is of an order called off (a fulfilment carries no order state)
            stored = facts.order
            called_off = stored is not None and (stored.cancelled or ev.called_off(None, stored.payment_state))
            stage = stage_after(event, current or "entry", order_called_off=called_off)
            if stage is not None and stage != current:
                update_by_id(conn, CONTACTS, facts.contact_id, {"stage": stage, "updated_at": now})
        handed_off: int | None = None
        for req in handoff_rules(event, facts.contact_id, store, facts.extra.get("reply_journey"), facts.extra.get("reply_subject"),
                                 quoted=bool(facts.extra.get("reply_quoted"))):
            flush(conn)  # the hand-off's context reads the contact and its runs from the database
            handed_off = open_handoff(conn, store, store_id, facts.contact_id, req, now) or handed_off
        if handed_off:  # a person has her words now (in this case): the run they answer stops asking (COD confirmation)
            facts = replace(facts, extra={**facts.extra, "handed_off": handed_off})
        same_email: list[int] | None = None
        for name, config in store.enabled_journeys().items():
            journey = journeys().get(name)
            if journey is None:
                continue
            subject = journey.subject(event, facts)
            others: list[str] = []
            jfacts = facts
            # a tap that matched none of our messages (its send's outcome was lost, so its message id is unknown)
            unmatched = isinstance(event, ev.ButtonReplied) and facts.extra.get("reply_journey") is None
            hears_unmatched = unmatched and facts.contact_id is not None and getattr(journey, "hears_unmatched_taps", False)
            follows = getattr(journey, "follows_contact", False) and facts.contact_id is not None \
                and isinstance(event, getattr(journey, "contact_events", CONTACT_ACTIVITY))
            if follows:
                # the customer bought, wrote or tapped: the journey's other open runs for them hear it too;
                # an order also reaches the runs of the same email under another phone, when it is hers alone
                others = _active_subjects(conn, store_id, name, facts.contact_id)
                if isinstance(event, ev.OrderPlaced) and event.order.customer is not None and not others \
                        and (subject is None or _run(conn, store_id, name, subject) is None):
                    if same_email is None:  # once per event, whichever journeys ask
                        same_email = _same_email_contacts(conn, store_id, event.order.customer, facts.contact_id)
                    others = _one_email_contacts_runs(conn, store_id, name, same_email)
                elif isinstance(event, AWAITABLE) and not event.order.is_cod and event.order.customer is not None:
                    # her try placed under her other number, which a run there waits for the money of
                    if same_email is None:
                        same_email = _same_email_contacts(conn, store_id, event.order.customer, facts.contact_id)
                    others = [*others, *(s for s in _awaiting_runs(conn, store_id, name, same_email, event.order.external_id)
                                         if s not in others)]
                others = [o for o in others if o != subject]
                if others:  # what the event's own run decides beside (a new run can take over an open one's ladder)
                    jfacts = replace(facts, extra={**facts.extra, "open_runs": tuple(_found_run(conn, store_id, name, o)[1] for o in others)})
            elif hears_unmatched:
                # her runs of the journey not finished, those waiting on a person too (a failed delivery's question
                # is asked as its case opens), each with its own order: the journey tells which one it may mean
                assert facts.contact_id is not None
                others = [s for s in _unfinished_subjects(conn, store_id, name, facts.contact_id) if s != subject]
            elif isinstance(event, ev.CheckoutUpdated) and facts.contact_id is not None and subject is not None \
                    and getattr(journey, "new_cart_sees_open_runs", _never)(config) and _run(conn, store_id, name, subject) is None:
                # a cart heard for the first time decides beside her open runs (the ladder her unpaid order already
                # runs reminds her of this cart: checkout_recovery._order_laddering); they do not hear the cart
                mine = [o for o in _active_subjects(conn, store_id, name, facts.contact_id) if o != subject]
                if mine:
                    jfacts = replace(facts, extra={**facts.extra, "open_runs": tuple(_found_run(conn, store_id, name, o)[1] for o in mine)})
            targets: list[tuple[str, tuple[int, Run, bool] | None, Facts]] = []
            if subject is not None:
                found = _run(conn, store_id, name, subject)
                targets.append((subject, found, _with_sends(conn, store, store_id, journey, event, found, jfacts)))
            for other in others:
                found = _found_run(conn, store_id, name, other)
                seen = _about_its_order(conn, store_id, facts, other) if hears_unmatched else facts
                targets.append((other, found, _with_sends(conn, store, store_id, journey, event, found, seen)))
            if unmatched and (len(targets) > 1 or (hears_unmatched and targets)):
                # a tap that matched none of our messages reaches all her runs: each is told of all of them,
                # so a journey can act only when one run could be meant (one Cancel must not cancel every order);
                # a journey that hears such taps (``hears_unmatched_taps``) is told so even of one run
                reached = tuple(found[1] for _s, found, _f in targets if found is not None)
                targets = [(s, found, replace(seen, extra={**seen.extra, "reached_runs": reached})) for s, found, seen in targets]
            taken: list[str] = []  # the runs an unmatched tap did something to
            for target, found, seen in _sharing_the_order(journey, event, targets):
                seen = _with_writebacks(conn, store_id, journey, name, event, target, found, seen, config)
                commands = journey.decide(event, found[1] if found else None, seen, config, now)
                if commands:
                    taken.append(target)
                heard = _heard_in_bin(found, event, seen)
                if heard is not None:  # its order is in the bin: kept, to be decided again if it is restored
                    assert found is not None
                    found = _keep_heard(found, heard)
                applied += self._apply(conn, store, store_id, name, target, found, commands, seen, config, now,
                                       binned=binned or isinstance(event, ev.OrderDeleted), rewrite_state=heard is not None)
            if unmatched and (follows or hears_unmatched):
                # kept by her binned runs of a journey such a tap reaches (COD's), not of one it never reaches (a pay link
                # asks nothing to tap): restoring that order must not ask her which order she meant
                self._keep_unmatched(conn, store, store_id, name, config, event, facts, {t[0] for t in targets}, taken, now)
        return applied

    def _keep_unmatched(self, conn: Connection, store: Any, store_id: int, name: str, config: Any, event: ev.ButtonReplied,
                        facts: Facts, reached: set[str], taken: list[str], now: datetime) -> None:
        """A tap that matched none of our messages reaches only her runs still going; one she made on the question of
        an order lying in the bin would be lost. Asked only for a journey such a tap reaches (it follows her taps, or
        ``hears_unmatched_taps``): each of her runs of the journey whose order is in the bin keeps it
        (``HEARD``), with the other runs it may have been meant for (``UNMATCHED``: those it did something to now, her
        other binned ones): at the restore it counts if it can only have meant that run, else a person asks her
        which order she meant (``_decide_heard``)."""
        binned = [f for f in _binned_runs(conn, store_id, name, facts.contact_id) if f[1].subject not in reached] \
            if facts.contact_id is not None else []
        for found in binned:
            also = [*taken, *(b[1].subject for b in binned if b[1].subject != found[1].subject)]
            heard = {"event": ev.dump_events([event])[0], UNMATCHED: also}
            self._apply(conn, store, store_id, name, found[1].subject, _keep_heard(found, heard), [], facts, config, now,
                        rewrite_state=True)

    def on_restored(self, conn: Connection, store: Any, store_id: int, subject: str, now: datetime) -> int:
        """The store took an order out of the bin (``state.Outcome.restored``): every run of it the bin ended
        or changed goes on as it was then (status, state), before the journeys hear the order again. Its
        clock stood still while the order lay in the bin: its timer moves by as long (a journey that keeps
        times of its own moves them too: ``resumed(run, paused)``), so she gets the same time to answer and
        no burst of overdue reminders. What the bin withdrew (a message held for quiet hours, a retry) is
        queued again, the same row: nothing already sent goes out twice. What she answered while it lay
        there (a Confirm tap, decided then on a cancelled order) is decided again on the run as it goes on
        (``_decide_heard``), so it counts. Returns how many runs went on."""
        resumed = 0
        for name, config in store.enabled_journeys().items():
            found = _run(conn, store_id, name, subject)
            if found is None or BINNED not in found[1].state:
                continue
            run_id, run, holdout = found
            then = run.state[BINNED]
            paused = max(now - datetime.fromisoformat(then["at"]), timedelta(0))
            due = datetime.fromisoformat(then["next_due_at"]) + paused if then.get("next_due_at") else None
            before = Run(run.journey, subject, then["status"], dict(then["state"]), due, run.contact_id, run.started_at)
            state = dict(before.state)
            moves = getattr(journeys().get(name), "resumed", None)
            if moves is not None:
                state.update(moves(before, paused))
            update_by_id(conn, RUNS, run_id, {"status": before.status, "state": state, "next_due_at": due, "updated_at": now})
            _requeue_binned(conn, store, store_id, name, subject, state, paused, now)
            log.info("journey run goes on: its order was restored", extra={"journey": name})
            self._decide_heard(conn, store, store_id, name, config, (run_id, replace(before, state=state), holdout),
                               then.get(HEARD) or (), now)
            resumed += 1
        return resumed

    def _decide_heard(self, conn: Connection, store: Any, store_id: int, name: str, config: Any, found: tuple[int, Run, bool],
                      heard: Any, now: datetime) -> None:
        """The replies a run heard while its order lay in the bin (``HEARD``), decided again, in order, on the run
        as it goes on, with the order as it is now (restored): the journey is told so (``heard_in_bin``), to say
        so to a case the first decision opened, and of what she said after each reply there (``heard_after``). Her
        words' case (``handed_off``) is the one they went to then."""
        journey = journeys().get(name)
        if journey is None:
            return
        events = ev.load_events([kept["event"] for kept in heard])
        for i, (kept, event) in enumerate(zip(heard, events)):
            facts = _facts(conn, store, store_id, event, found[1].contact_id, found[1].subject, now)
            if kept.get(UNMATCHED):  # it may have been meant for another order: not acted on, a person asks her
                self._ask_which_order(conn, store, store_id, name, found[1], event, kept[UNMATCHED], now)
                continue
            # what she said after it, in the bin too: a Cancel decided now need not ask why she already told
            extra = {**facts.extra, "heard_in_bin": True, "heard_after": tuple(events[i + 1:]),
                     **({"handed_off": kept["handed_off"]} if "handed_off" in kept else {}),
                     # a tap that matched none of our messages, this run the only one it can mean: heard as such
                     **({"reached_runs": (found[1],)} if UNMATCHED in kept else {})}
            seen = _with_writebacks(conn, store_id, journey, name, event, found[1].subject, found, replace(facts, extra=extra), config)
            commands = journey.decide(event, found[1], seen, config, now)
            self._apply(conn, store, store_id, name, found[1].subject, found, commands, seen, config, now)
            found = _found_run(conn, store_id, name, found[1].subject)

    @staticmethod
    def _ask_which_order(conn: Connection, store: Any, store_id: int, name: str, run: Run, event: Any, others: list[str],
                         now: datetime) -> None:
        """A tap heard in the bin that matched none of our messages and may have been meant for another of her
        orders (one it did something to then, or one in the bin too): acting on it now could answer for the wrong
        order, so the restored run is left as it was and a person asks her which order she meant."""
        def called(subject: str) -> str:
            order = _order_facts(conn, store_id, subject[6:]) if subject.startswith("order:") else None
            return order.name if order is not None else subject

        tapped = getattr(event, "title", None) or getattr(event, "payload", "a button")
        reason = (f"order {called(run.subject)} was restored from the bin: while it lay there the customer tapped \"{tapped}\" "
                  f"on a message we could not match to one of her orders, and it may have been meant for "
                  f"{', '.join(called(o) for o in others)}; nothing was changed for {called(run.subject)}: ask her which order "
                  f"she meant")
        flush(conn)
        open_handoff(conn, store, store_id, run.contact_id, HandoffRequest(f"{name}:{run.subject}", reason[:2000], name, run.subject,
                                                                           stage=journey_stage(name)), now)

    def on_timers(self, conn: Connection, store: Any, store_id: int, now: datetime, limit: int = 100,
                  stop: Callable[[], bool] | None = None, *, isolate: bool = False) -> int:
        """Fire up to ``limit`` due runs; each fires once (its timer is cleared in the run's one UPDATE).

        ``stop`` is asked after each run: True ends the batch there, and the runs not reached
        stay due for the next one. Returns how many fired (a parked run counts: its turn was taken).

        A journey whose ``decide`` raises parks its run (``timer_failures.park``) and the others
        fire. ``isolate`` (the processor's retry of a batch in which applying a run raised, or its
        flush was refused; no transaction cache then) fires each run in its own savepoint, so the
        one that raises is rolled back alone and parked."""
        cache = current(conn)
        flush(conn)  # the due query must see every held-back timer change
        due = _DUE if conn.dialect.name == "sqlite" else _DUE_SKIP_LOCKED
        rows = conn.execute(due, {"sid": store_id, "now": now, "limit": limit}).all()
        if cache is not None:
            rows = [cache.put("journey_runs", r) for r in rows]
            _prefetch_for_timers(conn, store_id, rows)
            if rows:  # the gate's send history of every contact a reminder may go to, in one query
                rules = store.policy.rules()
                ob.send_history(conn, sorted({r.contact_id for r in rows if r.contact_id is not None}),
                                now - max(rules.marketing_cap_window, rules.cart_quiet_after_order))
        enabled = store.enabled_journeys()
        due = [(row, _found(row, row.subject)) for row in rows]
        if not isolate:
            sends = _sends_of_due_runs(conn, store, store_id, due, enabled, now)
            cases = _cases_of_due_runs(conn, store_id, due, enabled, now)
        fired = 0
        for row, found in due:
            fired += 1
            if not isolate:
                self._fire(conn, store, store_id, row, found, enabled, sends, cases, now)
            else:
                try:
                    with conn.begin_nested():
                        one = [(row, found)]  # a journey's needs_sends or needs_cases may be what raises
                        self._fire(conn, store, store_id, row, found, enabled, _sends_of_due_runs(conn, store, store_id, one, enabled, now),
                                   _cases_of_due_runs(conn, store_id, one, enabled, now), now)
                except OperationalError as exc:
                    if _database_busy(exc):
                        raise  # the database, not this run (a lock, a deadlock): the whole batch is tried again later
                    timer_failures.park(conn, store, row, now, exc)
                except Exception as exc:  # rolled back to before this run: the others' firings stand
                    timer_failures.park(conn, store, row, now, exc)
            if stop is not None and stop():
                break
        return fired

    def _fire(self, conn: Connection, store: Any, store_id: int, row: Any, found: tuple[int, Run, bool], enabled: dict[str, Any],
              sends: dict[tuple[str, str], tuple[datetime, ...]], cases: dict[tuple[str, str], tuple[OpenCase, ...]],
              now: datetime) -> None:
        """Fire one due run: decide on ``TimerFired`` and apply it."""
        journey = journeys().get(row.journey)
        if journey is None or row.journey not in enabled:
            update_by_id(conn, RUNS, row.id, {"next_due_at": None})  # fire once
            return
        parked = timer_failures.FAILURES in found[1].state
        if parked:  # the journey decides on its own state; the failure record goes with this firing
            found = (found[0], replace(found[1], state=timer_failures.without_record(found[1].state)), found[2])
        facts = _facts(conn, store, store_id, TimerFired(now), row.contact_id, row.subject, now)
        if (row.journey, row.subject) in sends:
            facts = replace(facts, extra={**facts.extra, "reminders_sent": sends[(row.journey, row.subject)]})
        if (row.journey, row.subject) in cases:
            facts = replace(facts, extra={**facts.extra, "open_cases": cases[(row.journey, row.subject)]})
        try:
            commands = journey.decide(TimerFired(now), found[1], facts, enabled[row.journey], now)
        except Exception as exc:  # a journey's bug (a plugin's, say); decide is pure, so nothing to undo
            timer_failures.park(conn, store, row, now, exc)
            return
        self._apply(conn, store, store_id, row.journey, row.subject, found, commands, facts, enabled[row.journey], now,
                    fired=True, rewrite_state=parked)

    def _apply(self, conn: Connection, store: Any, store_id: int, journey: str, subject: str,
               found: tuple[int, Run, bool] | None, commands: list[Any], facts: Facts, config: Any, now: datetime,
               *, fired: bool = False, rewrite_state: bool = False, binned: bool = False) -> int:
        """Apply a journey's commands: at most one INSERT or one UPDATE of the run, then its sends.

        ``fired``: a timer fired this run; its ``next_due_at`` is cleared (fire once) in the
        same UPDATE, unless a ``Wake`` sets it again. ``rewrite_state``: the run's stored state
        differs from ``found``'s (a parked run's failure record is dropped, a binned run keeps a reply
        it heard: ``HEARD``), so it is written, with or without commands. ``binned``: the commands answer the order's bin (``OrderDeleted``): the run as it was is kept
        (``BINNED``), and what they withdraw is skipped as ``BINNED_SKIP``, for ``on_restored``.
        """
        if not commands:
            if fired and found is not None:
                update_by_id(conn, RUNS, found[0], {"next_due_at": None, **({"state": dict(found[1].state)} if rewrite_state else {})})
            elif rewrite_state and found is not None:
                update_by_id(conn, RUNS, found[0], {"state": dict(found[1].state), "updated_at": now})
            return 0
        run_id = found[0] if found else None
        holdout = found[2] if found else False
        contact_id = found[1].contact_id if found else facts.contact_id
        state = dict(found[1].state) if found else {}
        values: dict[str, Any] = {}
        handoffs: list[HandoffRequest] = []
        created = False
        if binned and found is not None and BINNED not in state:  # binned again before a restore: the first bin's stands
            run = found[1]
            state[BINNED] = {"status": run.status, "state": dict(run.state), "at": now.isoformat(),
                             "next_due_at": run.next_due_at.isoformat() if run.next_due_at is not None else None}
            values["state"] = state
        start = next((c for c in commands if isinstance(c, Start)), None) if run_id is None else None
        if start is not None:
            # fold the run's fields first, so a new run is one INSERT, not an INSERT and an UPDATE
            holdout = start.contact_id is not None and in_holdout(start.contact_id, journey, config.holdout_percent)
            contact_id = start.contact_id
            state, status, due = dict(start.state), "active", None
            for cmd in commands:
                if isinstance(cmd, Update):
                    state.update(cmd.state)
                elif isinstance(cmd, Wake):
                    due = cmd.at
                    _mark_listening(state, cmd)
                elif isinstance(cmd, Finish):
                    state["outcome"], status = cmd.outcome, "finished"
                elif isinstance(cmd, Handoff):
                    state.update(handoff_reason=cmd.reason, handoff_at=now.isoformat())
                    status = "handoff" if cmd.waits else status
            row = dict(store_id=store_id, journey=journey, subject=subject[:160], contact_id=contact_id, status=status,
                       state=state, holdout=holdout, started_at=now, updated_at=now, next_due_at=due)
            if current(conn) is not None:
                # held for the batch's executemany; a run another worker created meanwhile makes the
                # batch fail at its flush, and the processor redoes it row by row (the branch below)
                run_id = insert_id(conn, RUNS, row)
            else:
                run_id = conn.execute(_new_run_statement(conn.dialect.name), row).scalar()
                if run_id is None:  # raced with another worker: theirs is the run
                    return 0
            created = True
        if run_id is not None and not created and any(
                (isinstance(c, Withdraw) and not c.only) or (isinstance(c, Handoff) and c.waits)
                or (isinstance(c, Finish) and c.skip_waiting)
                for c in commands):
            # the customer bought, answered, cancelled, opted out, or a person took over: what the
            # run queued earlier and is still waiting (a reminder held for the morning, a retry)
            # goes no further. This decision's own sends, below, are queued after.
            ob.skip_pending(conn, store_id, _step_keys(store, journey, subject, state), BINNED_SKIP if binned else "journey_ended", now)
        rehome = next((c for c in commands if isinstance(c, Rehome)), None) if run_id is not None and not created else None
        if rehome is not None and rehome.contact_id != contact_id:
            # before this decision's sends: they go to the new contact. What waits for the old one is not hers
            ob.skip_pending(conn, store_id, _step_keys(store, journey, subject, state), "contact_moved", now)
            contact_id = values["contact_id"] = rehome.contact_id
            if rehome.regroup:
                holdout = values["holdout"] = in_holdout(contact_id, journey, config.holdout_percent)
        held_send = False  # a message of this decision waits (quiet hours): the run does not only listen yet
        for cmd in commands:
            if isinstance(cmd, (Start, Rehome)):
                continue
            elif isinstance(cmd, Send):
                if contact_id is None or (cmd.shows and not shows(store.template_for(f"{journey}.{cmd.step}"), cmd.shows)):
                    continue  # nobody to send to, or the message would say nothing its template shows
                if cmd.occurrence > 1 and run_id is not None and int((state.get(REPEATS) or {}).get(cmd.step, 1)) < cmd.occurrence:
                    state[REPEATS] = {**(state.get(REPEATS) or {}), cmd.step: cmd.occurrence}
                    values["state"] = state
                if holdout:
                    ob.enqueue(conn, store_id=store_id, key=step_key(journey, cmd.step, subject, cmd.occurrence), contact_id=contact_id,
                               journey=journey, step=cmd.step, category=None, payload={"subject": subject}, due_at=now, now=now,
                               skip_reason="holdout")
                else:
                    queued = queue_template(conn, store=store, store_id=store_id, contact_id=contact_id, journey=journey, step=cmd.step,
                                            subject=subject, context=cmd.context, now=now, due_at=cmd.due_at,
                                            retry_missing_value=cmd.retry_missing_value, occurrence=cmd.occurrence,
                                            retry_withdrawn=cmd.retry_withdrawn)
                    held_send = held_send or queued.deferred
                    if queued.deferred and run_id is not None and not created and getattr(journeys().get(journey), "marketing", False):
                        _supersede_waiting(conn, store, store_id, journey, cmd.step, subject, now)
            elif isinstance(cmd, Refresh):
                if contact_id is not None and run_id is not None and not created and not holdout:
                    refresh_template(conn, store=store, store_id=store_id, contact_id=contact_id, journey=journey, step=cmd.step,
                                     subject=subject, context=cmd.context, now=now)
            elif isinstance(cmd, WriteBack):
                ob.enqueue(conn, store_id=store_id, key=writeback_key(journey, cmd.key, subject), contact_id=contact_id,
                           journey=journey, step=cmd.key, category=None, channel="store",
                           payload={"subject": subject, "action": cmd.action, "order_id": cmd.order_id, "args": cmd.args,
                                    **({"if_shipped": cmd.if_shipped} if cmd.if_shipped else {})},
                           due_at=now, now=now)
            elif isinstance(cmd, Withdraw) and cmd.only:
                if run_id is not None and not created and (
                        not cmd.shows or shows(store.template_for(f"{journey}.{cmd.only[0][0]}"), cmd.shows)):
                    # one message made wrong while the run's others stand (a "shipped" whose tracking was called off)
                    ob.skip_pending(conn, store_id, [step_key(journey, step, subject, n) for step, n in cmd.only], "superseded", now)
            elif isinstance(cmd, WithdrawWriteBack):
                if run_id is not None and not created:
                    # only while still pending: one the dispatcher claimed is being made, and goes on
                    ob.skip_pending(conn, store_id, [writeback_key(journey, cmd.key, subject)], cmd.reason, now, channel="store")
                    log.info("store write-back withdrawn", extra={"journey": journey, "step": cmd.key, "outcome": cmd.reason})
            elif isinstance(cmd, Update):
                state.update(cmd.state)
                values["state"] = state
            elif isinstance(cmd, Wake):
                values["next_due_at"] = cmd.at
                if _mark_listening(state, replace(cmd, listening=False) if held_send else cmd):
                    values["state"] = state
            elif isinstance(cmd, Finish):
                state["outcome"] = cmd.outcome
                values.update(status="finished", state=state)
            elif isinstance(cmd, MoveStage):
                if contact_id is not None:
                    update_by_id(conn, CONTACTS, contact_id, {"stage": cmd.stage, "updated_at": now})
            elif isinstance(cmd, Handoff):
                state.update(handoff_reason=cmd.reason, handoff_at=now.isoformat())
                values.update(state=state, **({"status": "handoff"} if cmd.waits else {}))
                handoffs.append(HandoffRequest(f"{journey}:{subject}", cmd.reason, journey, subject, stage=journey_stage(journey),
                                               only_open=cmd.only_open, case_id=cmd.case))
        if not fired and run_id is not None and not created and timer_failures.FAILURES in state \
                and ("next_due_at" in values or values.get("status") == "finished"):
            # an event moved or ended a parked run: its timer is the journey's new plan, not the one that raised
            state = timer_failures.without_record(state)
            values["state"] = state
        if rewrite_state and run_id is not None and not created:
            values.setdefault("state", state)
        if values and run_id is not None and not created:
            values["updated_at"] = now
        if fired and run_id is not None and not created:
            values.setdefault("next_due_at", None)
        if values and run_id is not None and not created:
            update_by_id(conn, RUNS, run_id, values)
        for req in handoffs:  # after the run update, so the hand-off's context shows it
            flush(conn)
            open_handoff(conn, store, store_id, contact_id, req, now)
        return len(commands)
