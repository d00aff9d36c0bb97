"""Turn stored inbox rows into events and state, one short transaction per batch.

Normalisation happens here, not in the webhook request: the raw body is already durable,
so a payload our adapter cannot read is marked ``failed`` with a reason (and replayed after
a fix: ``storeloop replay``, ``connector.admin.replay_inbox``) instead of being lost or answered with a 500.

A batch is first applied as a whole, inside one savepoint and with a transaction cache
(``storage/txcache.py``) filled by a few ``IN`` queries, which is several times fewer
statements than one savepoint and a dozen lookups per row. If any row raises, or a value
one row brings breaks those lookups, that savepoint is rolled back and the batch is redone
row by row, each row in its own savepoint, so one bad row still cannot cost the others
their work (nor stall the inbox: the batch would fail again on every try).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from datetime import datetime, timedelta, timezone
from typing import Any

from sqlalchemy import Connection, and_, bindparam, delete, exists, func, or_, select
from sqlalchemy.exc import DBAPIError

from connector import compliance, erasure, erased, reinstall
from connector.compliance import PRIVACY_TOPICS, PRIVACY_WAIT, waiting_for_earlier
from connector.config import Settings
from connector.errors import NormalizationError, describe_error
from connector.events import ComplianceRequested, ConsentChanged, Event, dump_events
from connector.gc_pause import cyclic_gc_paused
from connector.journeys.runner import JourneyRunner, order_email_keys, prefetch_runs, run_subjects
from connector.rows import contact_keys_of, fulfillment_keys_of, keys_of, prefetch, prefetch_contacts
from connector.state import apply_erased_withdrawal, apply_event
from connector.storage import jsoncodec
from connector.storage.db import Database
from connector.storage.inbox import with_body
from connector.storage.models import InboxEvent, JourneyRun, utcnow
from connector.storage.sql import BODIES, INBOX, STORES, execute_many, flush, update_statement
from connector.storage.txcache import TxCache, installed

log = logging.getLogger("storeloop.processor")

Normalizer = Callable[[str, dict[str, Any], Any], list[Event]]
Clock = Callable[[], datetime]


# the stores among ``sids`` with a run due, but for one whose timers wait (``reinstall.STORE_WAITS``): one
# (store_id, status, next_due_at) index probe per store
# a timer round's one read: per store, whether a run is due whose timer may fire, and whether its WhatsApp
# sends are held until a time now past (``end_passed_holds``)
_ROUND = (select(
    STORES.c.id,
    and_(~reinstall.STORE_WAITS, exists().where(JourneyRun.store_id == STORES.c.id, JourneyRun.status == "active",
                                               JourneyRun.next_due_at <= bindparam("now"))).label("due"),
    func.coalesce(STORES.c.whatsapp_held_until <= bindparam("now"), False).label("hold_passed"),
).where(STORES.c.id.in_(bindparam("sids", expanding=True))).order_by(STORES.c.id))


# rows processed only once every row of their store received before them is (``waiting_for_earlier``):
# privacy requests (Shopify's, and a store owner's erasure request), and a reinstalled store's caught-up row
AFTER_EARLIER = PRIVACY_TOPICS | {(reinstall.SOURCE, reinstall.CAUGHT_UP), (reinstall.SOURCE, erasure.TOPIC)}
# inbox rows of our own making (source ``storeloop``), by topic
OWN_ROWS: dict[str, Normalizer] = {reinstall.CAUGHT_UP: reinstall.normalize, erasure.TOPIC: erasure.normalize}


def own_row(topic: str, body: dict[str, Any], store: Any) -> list[Event]:
    """Our own rows' normaliser (``reinstall.SOURCE``): each topic's module reads its rows."""
    normalize = OWN_ROWS.get(topic)
    if normalize is None:
        raise NormalizationError(f"not a row of ours: {topic!r}")
    return normalize(topic, body, store)


class _RowFailed(Exception):
    """A row raised while its batch was applied as a whole: redo the batch row by row."""

    def __init__(self, index: int):
        super().__init__(index)
        self.index = index


def _mark_rows(conn: Connection, marks: list[tuple[int, dict[str, Any]]]) -> None:
    """Write the batch's outcomes with one executemany per shape (done, ignored, failed...);
    ``raw_body: None`` in a row's outcome deletes its stored body."""
    groups: dict[tuple[str, ...], list[dict[str, Any]]] = {}
    erase: list[int] = []
    for row_id, values in marks:
        if "raw_body" in values:
            values = dict(values)
            if values.pop("raw_body") is None:
                erase.append(row_id)
        groups.setdefault(tuple(sorted(values)), []).append({**values, "_pk": row_id})
    for fields, params in groups.items():
        execute_many(conn, update_statement(INBOX, fields), params)
    if erase:
        conn.execute(delete(BODIES).where(BODIES.c.id.in_(erase)))


def _from_sync(row: Any) -> bool:
    """An inbox row the sync job wrote (orders it read from the store's API), not a webhook."""
    return bool((row.headers or {}).get("x-storeloop-sync"))


FIRST_SLICE_ROWS = 32  # rows a time-budgeted batch loads before the processor knows how long a row takes
# A fulfilment whose order is not stored yet waits for it (Shopify sends fulfillments/create and
# orders/create in no set order; an order row retrying after an error comes later too): the row is
# looked at again every ORDER_WAIT_STEP for ORDER_WAIT after it was first processed (its
# ``processed_at`` stays that first time while it waits), then the journeys hear it without its
# order (which means nothing is sent for it). Waiting is not failing: it takes nothing from the
# row's attempts (``worker.inbox_max_attempts``).
ORDER_WAIT = timedelta(minutes=10)
ORDER_WAIT_STEP = timedelta(seconds=30)


class InboxProcessor:
    def __init__(
        self,
        db: Database,
        settings: Settings,
        store_ids: Mapping[str, int],
        normalizers: Mapping[str, Normalizer],
        *,
        clock: Clock = utcnow,
        batch_size: int | None = None,
    ):
        self.db = db
        self.settings = settings
        self.normalizers = {**normalizers, reinstall.SOURCE: own_row}  # and our own rows
        self.clock = clock
        self.batch_size = batch_size or settings.worker.inbox_batch_size
        self.max_attempts = settings.worker.inbox_max_attempts
        self._stores = {store_ids[s.key]: s for s in settings.stores if s.key in store_ids}
        self.journeys = JourneyRunner()
        self.erased = erased.Book()  # the marks of erased customers' orders and checkouts the batch's events meet
        self._seconds_per_row = 0.0  # moving average over the last batches (sizes batches under a time budget)
        # whether the last batch left due rows behind: it loaded as many as it could take, or its
        # budget or yield test ended it before the last one (the loop grows its busy slices on this)
        self.more_due = False

    def process_timers(self, limit: int = 100, time_budget: float | None = None,
                       yield_to: Callable[[], bool] | None = None) -> int:
        """Fire journey runs whose next step is due (reminders, delayed asks, abandonment);
        returns how many fired.

        ``time_budget`` and ``yield_to`` end the transaction early as in ``process_batch``
        (after the run being fired): a wave of reminders can go in long batches, which share
        the runs', outbox's and contacts' index pages and commit far less often, without
        holding up whoever waits for the write lock. Runs not reached stay due.

        The runs of a store that is uninstalled, or reinstalled and not caught up yet, wait
        (``connector/reinstall.py``): fired now, they would decide on what the store was.

        The runs fire in one transaction with the transaction cache (no statement more than that
        when nothing raises); if one raises (or the batch's writes are refused) it is rolled back
        and the runs fire again in a new one, each in its own savepoint, so the run that raises is
        parked alone (``journeys/timer_failures.py``) and the others, of every store, still fire:
        it cannot stall them batch after batch.
        """
        now = self.clock()
        stores, hold_passed = self._round(now)
        if hold_passed:
            try:
                self.end_passed_holds(now)
            except Exception:
                # its own transaction: the stores' timers fire all the same, and the next round tries it again
                log.exception("noting the end of a WhatsApp restriction failed; the journeys' timers fire all the same")
        if not stores:
            return 0  # the common case between steps: no write transaction, no write lock
        started = [0.0]  # once the write lock is ours

        def stop() -> bool:
            if yield_to is not None and yield_to():
                return True
            return time_budget is not None and time.perf_counter() - started[0] > time_budget

        reached = [0]
        try:
            with self.db.write_lock(), self.db.engine.begin() as conn, installed(conn):
                started[0] = time.perf_counter()
                return self._fire_timers(conn, stores, now, limit, stop, reached)
        except Exception as exc:
            # a run raised while its decision was applied, or a value one wrote was refused at the
            # flush: the transaction (and the cache, with every held write) is rolled back
            log.warning("timer batch raised after %d run(s) (%s); firing its runs one by one", reached[0], exc.__class__.__name__)
        # again run by run, each in its own savepoint, at least as far as that attempt got (it spent the budget)
        with self.db.write_lock(), self.db.engine.begin() as conn:
            return self._fire_timers(conn, stores, now, limit, stop, [0], isolate=True, must=reached[0] + 1)

    def _fire_timers(self, conn: Connection, stores: list[int], now: datetime, limit: int, stop: Callable[[], bool],
                     reached: list[int], *, isolate: bool = False, must: int = 0) -> int:
        """Fire the stores' due runs, up to ``limit``; ``reached`` counts the runs gone through.
        ``stop`` is heeded once ``must`` runs are. ``isolate``: each run in its own savepoint."""

        def after_run() -> bool:
            reached[0] += 1
            return reached[0] >= must and stop()

        fired = 0
        for store_id in stores:
            if fired >= limit:
                break
            fired += self.journeys.on_timers(conn, self._stores[store_id], store_id, now, limit - fired, after_run, isolate=isolate)
            if reached[0] >= must and stop():
                break
        flush(conn)
        return fired

    def end_passed_holds(self, now: datetime) -> int:
        """Restrictions whose end Meta gave have passed: noted on the store row and told to the number's
        open case (``number_health.end_passed_holds``), with how many messages it held past their
        send_within limit (each store's policy); Meta sends nothing when one simply expires.
        Returns how many ended. A timer round calls it when its read saw such a hold (``_round``)."""
        ids = list(self._stores)
        if not ids:
            return 0
        from connector.handoffs import number_request, open_handoff
        from connector.number_health import end_passed_holds

        with self.db.write_lock(), self.db.engine.begin() as conn:
            ended = end_passed_holds(conn, ids, now, {sid: store.policy.rules() for sid, store in self._stores.items()})
            for store_id, news in ended:
                open_handoff(conn, self._stores[store_id], store_id, None, number_request(self._stores[store_id], news), now)
        return len(ended)

    def _round(self, now: datetime) -> tuple[list[int], bool]:
        """A timer round's one indexed read, outside a write transaction: the stores with journeys on
        and a run due whose timers may fire, and whether a store's sends are held until a time now
        past (Meta's restriction ran out: ``end_passed_holds``).

        On SQLite every transaction of ours begins IMMEDIATE (takes the write lock), so the
        check reads through the driver in autocommit; a run that comes due just after is
        fired by the next call, as it would be anyway.
        """
        ids = list(self._stores)
        if not ids:
            return [], False
        if self.db.is_sqlite:
            marks = ", ".join(f"?{i + 2}" for i in range(len(ids)))  # ?1 is the time
            sql = (f"SELECT id, uninstalled_at IS NULL AND reinstalled_at IS NULL "
                   f"AND EXISTS (SELECT 1 FROM journey_runs WHERE store_id = stores.id AND status = 'active' "
                   f"AND next_due_at <= ?1), coalesce(whatsapp_held_until <= ?1, 0) FROM stores WHERE id IN ({marks}) ORDER BY id")
            at = now.astimezone(timezone.utc).replace(tzinfo=None).isoformat(" ", "microseconds")
            with self.db.engine.connect() as conn:
                rows = conn.connection.driver_connection.execute(sql, [at, *ids]).fetchall()
        else:
            with self.db.engine.connect() as conn:
                rows = conn.execute(_ROUND, {"sids": ids, "now": now}).all()
        due = [sid for sid, is_due, _ in rows if is_due and self._stores[sid].enabled_journeys()]
        return due, any(passed for *_, passed in rows)

    def process_batch(self, time_budget: float | None = None, limit: int | None = None,
                      yield_to: Callable[[], bool] | None = None, up_to_id: int | None = None) -> int:
        """Process due rows in one transaction; returns how many rows were handled.

        Rows are loaded, parsed and applied in batches of up to ``worker.inbox_batch_size`` (or
        ``limit``): a batch's bodies, events and transaction cache are held until its rows are
        marked, so the batch size bounds the memory. With a ``time_budget`` (seconds) and no
        ``limit`` (a backlog while no webhooks arrive) the transaction goes on with further
        batches until the budget is spent, then commits: each commit writes every page its rows
        touched, and the unique keys (delivery, step, run, phone, checkout token) are random,
        so rows share those index pages only within a transaction; fewer, longer transactions
        write less per row once the database is large (bench/HISTORY.md). Each batch loads only
        about as many rows as the budget still covers at the rate measured so far, so no row
        is read and parsed for nothing. ``yield_to`` (called from this thread after each row)
        ends the transaction as soon as it returns True: ``serve`` passes "a delivery or another
        thread of the process waits for the write lock", so a long transaction costs them no
        more than the commit of the rows done so far. ``up_to_id``: only rows with that id or a
        smaller one (``storeloop customer redact`` answers its request and what it waits for, not
        deliveries received after it, which the worker handles with its own configuration).

        Python's cyclic garbage collector is paused until the batch's objects are dropped
        (``connector/gc_pause.py``: walking them while the batch held them was ~5% of processing).
        """
        now = self.clock()
        self.more_due = False  # until this transaction says otherwise (one that raises leaves nothing to grow on)
        size = limit or self.batch_size
        done = 0
        with self.db.write_lock(), self.db.engine.begin() as conn:
            started = time.perf_counter()

            def stop() -> bool:
                if yield_to is not None and yield_to():
                    return True
                return time_budget is not None and time.perf_counter() - started > time_budget

            after: int | None = None
            while True:
                take = size
                if time_budget is not None:
                    # about as many rows as the budget still covers; before any row was timed, a few (not a
                    # whole batch read and parsed for the one row a short slice may have time for)
                    per_row = (time.perf_counter() - started) / done if done else self._seconds_per_row
                    left = time_budget - (time.perf_counter() - started)
                    take = max(1, min(size, int(left / per_row * 1.25) + 1 if per_row else FIRST_SLICE_ROWS))
                with cyclic_gc_paused():
                    loaded, handled, after = self._process_rows(conn, now, take, stop, yield_to, up_to_id, after)
                done += handled
                if loaded < take or handled < loaded:
                    # nothing more was due, or the budget or a waiting writer ended it before the last row
                    self.more_due = handled < loaded
                    break
                if limit is not None or time_budget is None or stop():
                    self.more_due = True  # it took as many as it could: more may be due
                    break
        if done:  # how long a row takes here, for the next transaction's batches under a time budget
            per_row = (time.perf_counter() - started) / done
            self._seconds_per_row = per_row if not self._seconds_per_row else 0.7 * self._seconds_per_row + 0.3 * per_row
        return done

    def _process_rows(self, conn: Connection, now: datetime, limit: int, stop: Callable[[], bool],
                      yield_to: Callable[[], bool] | None, up_to_id: int | None, after: int | None) -> tuple[int, int, int | None]:
        """One batch of the transaction: load up to ``limit`` due rows (with ids above ``after``), parse, apply and
        mark them. Returns how many were loaded, how many handled, and the last id loaded (where the next batch starts)."""
        query = (
            with_body()
            .where(
                InboxEvent.status == "pending",
                InboxEvent.store_id.in_(list(self._stores)),
                or_(InboxEvent.available_at.is_(None), InboxEvent.available_at <= now),
            )
            .order_by(InboxEvent.id)
            .limit(limit)
        )
        if up_to_id is not None:
            query = query.where(InboxEvent.id <= up_to_id)
        if after is not None:  # the transaction's earlier batches are behind it, done or left waiting
            query = query.where(InboxEvent.id > after)
        if not self.db.is_sqlite:
            query = query.with_for_update(skip_locked=True, of=InboxEvent)
        rows = list(conn.execute(query))
        loaded = len(rows)
        last = rows[-1].id if rows else after
        handled = 0
        parsed: list[list[Event] | Exception] | None = None
        if not any((row.source, row.topic) in AFTER_EARLIER for row in rows):
            parsed = []
            for row in rows:
                parsed.append(self._parse_row(row))
                if yield_to is not None and yield_to():
                    break  # someone waits for the write lock: apply what is parsed; the rest stay pending
            rows = rows[: len(parsed)]
        if parsed is None or any(isinstance(e, ComplianceRequested) for p in parsed if isinstance(p, list) for e in p):
            handled, marks = self._one_by_one(conn, rows, now, stop)  # a privacy request erases behind caches
        else:
            try:
                marks = self._apply_batch(conn, rows, parsed, now, stop)
            except _RowFailed as failed:  # rolled back: again, one savepoint per row
                handled, marks = self._one_by_one(conn, rows, now, stop, must=failed.index + 1)
        _mark_rows(conn, marks)
        return loaded, handled + len(marks), last

    def _apply_batch(self, conn: Connection, rows: list[Any], parsed: list[list[Event] | Exception], now: datetime,
                     stop: Callable[[], bool]) -> list[tuple[int, dict[str, Any]]]:
        """Apply the rows in one savepoint with the transaction cache; ``_RowFailed`` (rolled back) if one raises."""
        marks: list[tuple[int, dict[str, Any]]] = []
        self.erased.clear()
        with conn.begin_nested(), installed(conn) as cache:
            try:
                self._prefetch(conn, cache, rows, parsed)
            except Exception as exc:  # a value one row brings breaks the batch's lookups: its own savepoint finds it
                log.warning("inbox batch of %d rows could not be read ahead (%s); processing it row by row", len(rows), describe_error(exc))
                raise _RowFailed(-1) from exc
            for i, (row, events) in enumerate(zip(rows, parsed)):
                if isinstance(events, Exception):  # unreadable: decided without the database
                    values = self._failure(row, events, now)
                elif not events:
                    values = self._ignored(row)
                else:
                    try:
                        values = self._apply_events(conn, row, self._stores[row.store_id], events, now)
                    except Exception as exc:
                        log.debug("inbox %s raised in its batch (%s); redoing the batch row by row", row.id, exc.__class__.__name__)
                        raise _RowFailed(i) from exc
                    # its subject is written with the batch's end: a later row about the same subject finds it here
                    cache.applied(row.store_id, values.get("subject"), row.id, events)
                values.setdefault("attempts", row.attempts + 1)  # a row waiting for its order keeps its count
                values.setdefault("processed_at", now)  # and the time it began to wait
                marks.append((row.id, values))
                if stop():
                    break  # the rest stay pending (and unlocked) for the next batch
            try:
                flush(conn)
            except Exception as exc:  # which row wrote it is not known here: redo all of them
                raise _RowFailed(len(marks) - 1) from exc
        return marks

    def _prefetch(self, conn: Connection, cache: TxCache, rows: list[Any], parsed: list[list[Event] | Exception]) -> None:
        """Load what the batch's events will look up: contacts (by phone; by email and customer id
        where there is no phone; by a placed order's email), orders and checkouts, then journey runs."""
        wanted: dict[int, tuple[set[str], set[str], set[str], set[str], set[str], set[str], set[str]]] = {}
        refs: dict[int, tuple[set[str], set[str], set[str]]] = {}
        for row, events in zip(rows, parsed):
            if isinstance(events, Exception):
                continue
            phones, orders, tokens, subjects, emails, customers, fulfillments = wanted.setdefault(
                row.store_id, (set(), set(), set(), set(), set(), set(), set()))
            erased_orders, erased_customers, erased_checkouts = refs.setdefault(row.store_id, (set(), set(), set()))
            row_orders, row_customers, row_checkouts = erased.all_refs(events)
            erased_orders |= row_orders
            erased_customers |= row_customers
            erased_checkouts |= row_checkouts
            for event in events:
                p, o, t = keys_of(event)
                phones.update(p)
                orders.update(o)
                tokens.update(t)
                fulfillments.update(fulfillment_keys_of(event))
                subjects.update(run_subjects(event))
                e, c = contact_keys_of(event)
                emails.update(e, order_email_keys(event))
                customers.update(c)
        # in store order: the rows locked there are taken by every worker in one order (rows.prefetch)
        for store_id, (phones, orders, tokens, subjects, emails, customers, fulfillments) in sorted(wanted.items()):
            prefetch(conn, store_id, phones, orders, tokens, fulfillments)
            # after the orders are read locked: an erasure another worker committed meanwhile is seen
            self.erased.read(conn, store_id, *refs[store_id])
            prefetch_contacts(conn, store_id, "email", emails)
            prefetch_contacts(conn, store_id, "external_customer_id", customers)
            contacts = {cache.keys.get(("contacts", store_id, p)) for p in phones}
            contacts |= {o.contact_id for o in (cache.lookup(("orders", store_id, x))[1] for x in orders) if o is not None}
            # her other numbers' runs an order's email may reach (``runner.order_email_keys``): in the same query
            contacts |= {r["id"] for k in emails for r in cache.matching_contacts("email", store_id, k)}
            prefetch_runs(conn, self._stores[store_id], store_id, subjects, {c for c in contacts if c is not None})

    def _one_by_one(self, conn: Connection, rows: list[Any], now: datetime, stop: Callable[[], bool],
                    *, must: int = 0) -> tuple[int, list[tuple[int, dict[str, Any]]]]:
        """The careful path: each row in its own savepoint, no cache (privacy requests; a batch in which a row raised),
        its outcome written as it is done.

        Returns how many outcomes were already written and the rest (privacy requests left waiting). The first ``must``
        rows are done whatever ``stop`` says: the batch attempt spent the time budget on them.
        """
        marks: list[tuple[int, dict[str, Any]]] = []
        handled = 0
        for i, row in enumerate(rows):
            if (row.source, row.topic) in AFTER_EARLIER:
                # a privacy request sees, and can erase, everything received before it, and a reinstalled
                # store's timers resume only once the orders read back before its caught-up row are heard
                # (one retried after an error, or held by another worker, too): this batch's outcomes are
                # written first, and rows still pending before it are waited for
                _mark_rows(conn, marks)
                handled, marks = handled + len(marks), []
                if waiting_for_earlier(conn, row.store_id, row.id) or (
                        (row.source, row.topic) == (reinstall.SOURCE, erasure.TOPIC) and erasure.behind_the_journal(conn, self.db, row, AFTER_EARLIER)):
                    marks.append((row.id, {"available_at": now + PRIVACY_WAIT}))
                    continue
            # written at once: a later row reads what this one did by its subject (an untick, the grants of the
            # checkout's tick), as it would in a later batch
            _mark_rows(conn, [(row.id, self._process_row(conn, row, now))])
            handled += 1
            if i + 1 >= must and stop():
                break  # the rest stay pending (and unlocked) for the next batch
        return handled, marks

    def drain(self, max_batches: int = 1000) -> int:
        """Process until nothing is due (tests and the CLI use this)."""
        total = 0
        for _ in range(max_batches):
            n = self.process_batch()
            total += n
            if n == 0:
                break
        return total

    def _process_row(self, conn: Connection, row: Any, now: datetime) -> dict[str, Any]:
        store = self._stores[row.store_id]
        values: dict[str, Any]
        try:
            with conn.begin_nested():
                events = self._parse(row, store)
                self.erased.clear()  # the careful path reads the marks row by row (an erasure in the batch writes them)
                self.erased.read(conn, row.store_id, *erased.all_refs(events))
                values = self._apply_events(conn, row, store, events, now) if events else self._ignored(row)
        except Exception as exc:
            values = self._failure(row, exc, now)
        values.setdefault("attempts", row.attempts + 1)
        values.setdefault("processed_at", now)
        return values

    def _parse_row(self, row: Any) -> list[Event] | Exception:
        """The row's events (none: nothing to do), or why they cannot be read."""
        try:
            return self._parse(row, self._stores[row.store_id])
        except Exception as exc:
            return exc

    def _failure(self, row: Any, exc: Exception, now: datetime) -> dict[str, Any]:
        attempts = row.attempts + 1
        if isinstance(exc, NormalizationError):
            log.warning("inbox %s (%s %s) cannot be normalised: %s", row.id, row.source, row.topic, exc)
            return {"status": "failed", "last_error": f"normalisation: {exc}"[:2000]}
        # a bug or a database hiccup: retry later, then give up loudly (a database error's text
        # can hold the row's values, so it is logged and kept without them, and without traceback)
        status = "failed" if attempts >= self.max_attempts else "pending"
        described = describe_error(exc)
        log.error("inbox %s (%s %s) failed on attempt %d: %s", row.id, row.source, row.topic, attempts, described,
                  exc_info=None if isinstance(exc, DBAPIError) else exc)
        return {
            "status": status,
            "last_error": described[:2000],
            "available_at": now + timedelta(seconds=min(300, 2**attempts)),
        }

    @staticmethod
    def _about_erased(conn: Connection, row: Any, events: list[Event], found: erased.Erased, now: datetime) -> dict[str, Any]:
        """A later event about an erased customer's order, checkout or account: nothing applied, nothing heard
        by a journey; the row keeps no body, no event, and no key that spells her customer id. Only a
        consent withdrawal of hers is applied, to a contact her number already has (``state.apply_erased_withdrawal``)."""
        subjects = [f"order:{o}" for e in events for o in erased.refs_of(e)[0]]
        subjects += [f"checkout:{t}" for e in events for t in erased.refs_of(e)[2]]
        withdrawn = [c for e in events if isinstance(e, ConsentChanged)
                     and (c := apply_erased_withdrawal(conn, row.store_id, e, row.id, now)) is not None]
        reason = f"{found.reason}; her opt-out applied" if withdrawn else found.reason
        status = "done" if withdrawn else "ignored"
        log.info("inbox %s (%s %s) %s: %s", row.id, row.source, row.topic, status, reason)
        values: dict[str, Any] = {"status": status, "event": [],
                                  "subject": subjects[0][:160] if subjects else None,
                                  "contact_id": withdrawn[0] if withdrawn else None, "last_error": reason, "raw_body": None}
        if found.names_customer:
            values["dedupe_key"] = f"{compliance.REDACTED}:{row.id}"
        return values

    @staticmethod
    def _ignored(row: Any) -> dict[str, Any]:
        return {"status": "ignored", "event": [], "last_error": f"nothing to do for topic {row.topic}"}

    def _parse(self, row: Any, store: Any) -> list[Event]:
        normalize = self.normalizers.get(row.source)
        if normalize is None:
            raise NormalizationError(f"no adapter for source {row.source!r}")
        try:
            body = jsoncodec.loads_body(row.raw_body or b"")
        except (ValueError, UnicodeDecodeError) as exc:
            raise NormalizationError(f"stored body is not JSON ({exc})") from None
        if not isinstance(body, dict):
            raise NormalizationError("stored body is not a JSON object")
        return normalize(row.topic, body, store)

    def _apply_events(self, conn: Connection, row: Any, store: Any, events: list[Event], now: datetime) -> dict[str, Any]:
        about_erased = self.erased.erased_on(row.store_id, events)
        if about_erased is not None:
            return self._about_erased(conn, row, events, about_erased, now)
        subject = contact_id = None
        stale = False
        held: str | None = None
        private: list[dict[str, Any]] | None = None
        for event in events:
            outcome = apply_event(conn, store, row.store_id, event, row.id, now)
            since = row.processed_at or now
            if outcome.order_unknown and now < since + ORDER_WAIT:
                # "shipped" would be lost: the delivery journey needs the order (its customer, its name)
                return {"status": "pending", "available_at": now + ORDER_WAIT_STEP, "attempts": row.attempts,
                        "processed_at": since, "last_error": "waiting for its order to arrive"}
            subject = subject or outcome.subject
            contact_id = contact_id or outcome.contact_id
            stale = stale or outcome.stale
            held = held or outcome.held
            if outcome.private is not None:  # a privacy request: no journey hears it
                private = [*(private or []), *outcome.private]
            elif not outcome.stale and not outcome.held and not outcome.old_news:
                if outcome.restored and outcome.subject is not None:
                    # out of the bin: the runs the bin ended go on as they were, then hear the order as it is
                    self.journeys.on_restored(conn, store, row.store_id, outcome.subject, now)
                if outcome.placed is not None and not _from_sync(row):
                    # first sight of a fresh order through a later event: placed, then that event.
                    # The sync job decides first sight itself (a backfill places nothing).
                    self.journeys.on_event(conn, store, row.store_id, outcome.placed, outcome.contact_id, now)
                self.journeys.on_event(conn, store, row.store_id, event, outcome.contact_id, now, moves_stage=not outcome.repeated,
                                       binned=outcome.binned)
        values: dict[str, Any] = {
            "status": "done",
            "event": dump_events(events) if private is None else private,
            "subject": subject[:160] if subject else None,
            "contact_id": contact_id,
            "last_error": None,
        }
        if private is not None:
            values["raw_body"] = None  # the request names the customer; what was done is in compliance_requests
        self.erased.returning(conn, row.store_id, events)
        if stale:
            values.update(status="ignored", last_error="stale: newer state already stored")
        if held:
            values.update(status="held", last_error=held)
        return values
