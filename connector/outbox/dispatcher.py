"""Send due outbox rows at the allowed rate, once, and record what happened.

One loop per worker: claim a batch with a lease (committed before any call, so a crash
leaves ``sending`` rows that become ``uncertain``, never resent), run the policy gate
again, pace through the per-number token bucket and the per-recipient spacer, send with
bounded concurrency, then write every outcome in one transaction while the next batch
is being claimed (again and again until it commits: a database blip loses no result).

An account-level refusal (an expired token, a permission, payment, a block: ``AccountError``)
fails no message: the row waits, its attempts unspent, and the number's sends pause in this
worker's memory (a restart, e.g. with a new token, tries at once); after the pause one message
probes, and its success lets the rest go. /readyz, the dashboard and the report show the pause
(``ob.mark_paused``). Meta's
API call rate limits (a ``SendError`` the adapter flagged ``rate_limited``) pause the number the same way, spend no try either, and
leave the messages due at the pause's end.

WhatsApp's messaging limit (the unique customers the business may message outside their 24 h window in
a moving 24 h; Meta says nothing when a send goes over it) is metered in the claim (``meter``): a
conversation-starting template over it stays pending, due when the window has room.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import socket
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from datetime import datetime, timedelta

import anyio.to_thread
from pydantic import TypeAdapter

from connector.config import Settings, ShopifyStore, WooCommerceStore
from connector.errors import AccountError, PermanentError, RetryableError, SendError, describe_error
from connector.messages import MessageSender, OutboundMessage
from connector.outbox import loop
from connector.outbox import store as ob
from connector.outbox.meter import Meter
from connector.outbox.ratelimit import InFlightLimit, RecipientSpacer, TokenBucket
from connector.outbox.retry import RetryPolicy, next_attempt_at
from connector.policy import TOO_LATE, ContactFacts, PolicyRules, check, send_by
from connector.state import another_day
from connector.storage.db import Database
from connector.storage.models import utcnow

log = logging.getLogger("storeloop.dispatcher")
MESSAGE = TypeAdapter(OutboundMessage)
SHORT_WAIT = 0.5  # recipient spacing below this is slept; above it becomes a durable due time
HEARTBEAT_EVERY = 0.25  # seconds between counting live dispatchers (a joining one is counted at once)
HEARTBEAT_TTL = 5.0  # a dispatcher not heard from for this long no longer takes a share
PAUSE_FIRST = 60.0  # seconds a number's sends pause after an account-level refusal ...
PAUSE_CAP = 900.0  # ... doubling with each refused probe, up to a quarter of an hour
# Meta's answers that a message came too fast (the number's throughput, or to one user): it is
# retried soon, without spending one of max_attempts (a peak above the number's real rate once
# failed messages "after 8 attempts"); 130429 also slows the number's bucket (ratelimit.py)
THROTTLES = frozenset({130429, 131056})
# Meta's API call rate limits (the adapter flags them: ``SendError.rate_limited``) are counted over a
# window of up to an hour, which 8 tries of backoff (about 4 minutes) did not outlast: a burst failed
# its messages for good. The number's sends pause as for an account-level refusal (Meta's estimate,
# when given, is the pause's floor), no try is spent, and the refused messages are due at the
# pause's end, so a restart or another worker waits too.
RECORD_RETRY_FIRST = 0.1  # seconds before writing a batch's outcomes again after the database refused them ...
RECORD_RETRY_CAP = 5.0  # ... doubling up to this
# the RED hold's last look at a held marketing message comes this long before its latest useful send time
LAST_LOOK_BEFORE = timedelta(minutes=5)
RECORD_AFTER_STOP = 20.0  # seconds a stopping worker still tries (at most half its lease) before leaving the rows to it


@dataclass(slots=True)
class Pause:
    """Sends from one number stopped after an account-level refusal; at ``until`` one message probes."""

    code: int | None
    reason: str
    until: datetime
    seconds: float
    rate_limit: bool = False  # Meta's call rate limit (``SendError.rate_limited``), not the account: waits, not shown as "fix the account"
    since: datetime | None = None  # the first refusal: a refused probe extends the pause, not its start


class Dispatcher:
    def __init__(
        self,
        db: Database,
        settings: Settings,
        store_ids: Mapping[str, int],
        sender: MessageSender,
        *,
        clock: Callable[[], datetime] = utcnow,
        worker_id: str | None = None,
        rng: random.Random | None = None,
        spacer: RecipientSpacer | None = None,
    ):
        self.db = db
        self.settings = settings
        self.sender = sender
        self.clock = clock
        self.worker_id = worker_id or f"{socket.gethostname()}:{os.getpid()}"
        self.rng = rng or random.Random()
        wa = settings.whatsapp
        self.stores: dict[int, ShopifyStore | WooCommerceStore] = {store_ids[s.key]: s for s in settings.stores if s.key in store_ids}
        self.rules: dict[int, PolicyRules] = {sid: s.policy.rules() for sid, s in self.stores.items()}
        self.retry = RetryPolicy(wa.backoff_base_seconds, wa.backoff_cap_seconds, wa.max_attempts)
        self.throttle_retry = RetryPolicy(wa.backoff_base_seconds, wa.backoff_cap_seconds, max_attempts=2**31)  # unbounded
        self.lease = timedelta(seconds=wa.lease_seconds)
        # a quarter of a second of sends per claim: the bucket's 5% burst (50 ms) covers the
        # pause while the next batch is claimed, which a second's batch outlasted (1,000/s ran
        # at 0.95 of the rate, at 1.00 with this), and fewer claimed rows wait on a crash
        self.batch = max(1, min(250, int(wa.messages_per_second / 4)))
        self.buckets: dict[str, TokenBucket] = {}
        # the gap kept between two messages to one person (131056); given: one shared more widely than this process
        self.spacer = spacer or RecipientSpacer(wa.pair_spacing_seconds)
        self.in_flight = InFlightLimit(wa.send_concurrency, self._total_rate)
        self.history_window = max(
            [timedelta(days=s.policy.marketing_cap_days) for s in self.stores.values()]
            + [timedelta(hours=s.policy.cart_quiet_after_order_hours) for s in self.stores.values()]
            + [timedelta(days=1)]
        )
        # WhatsApp's messaging limit, metered in each claim (``meter``): what it held counts as work done
        self.meter = Meter(self.stores, self.rules, messages_per_second=wa.messages_per_second, slack=2 * self.batch)
        self._pending_record: asyncio.Task[None] | None = None
        self._recording_again = False  # the pending outcomes were refused once: written again until they commit
        self._stop: asyncio.Event | None = None  # set when the worker stops: outcomes still refused are given up then
        self.paused: dict[str, Pause] = {}  # phone_number_id -> its pause (this worker's memory)
        self._probes: set[int] = set()  # rows of this batch that test a paused number
        self._shown: dict[str, Pause | None] = {}  # pause changes still to show /readyz and the dashboard (None: resumed)
        self._fresh = True  # no pause of an earlier run (another token, perhaps) is this one's
        self.sent = 0
        self.peers = 1
        self._beat_at = 0.0

    async def join(self) -> int:
        """Announce this dispatcher now and take its share of the rate; returns the peers seen.

        ``run_once`` does this every second anyway; calling it before the first claim means a
        dispatcher starting next to others never sends at the whole rate, even briefly.
        """
        self._beat_at = 0.0
        await self._heartbeat()
        return self.peers

    async def _heartbeat(self) -> None:
        """Every second or so: count live dispatchers and share each number's rate among them."""
        if time.monotonic() - self._beat_at < HEARTBEAT_EVERY:
            return
        self._beat_at = time.monotonic()
        now = self.clock()
        peers = await anyio.to_thread.run_sync(
            lambda: ob.heartbeat(self.db, f"dispatcher:{self.worker_id}", self.worker_id, now, timedelta(seconds=HEARTBEAT_TTL))
        )
        if peers != self.peers:
            log.info("dispatchers sharing each number's rate", extra={"dispatchers": peers})
        self.peers = max(1, peers)
        for bucket in self.buckets.values():
            bucket.rate = self.settings.whatsapp.messages_per_second / self.peers

    async def close(self) -> None:
        """Leave the pool so the others take back the whole rate at once."""
        await self.flush()
        await anyio.to_thread.run_sync(ob.release, self.db, f"dispatcher:{self.worker_id}")

    def _total_rate(self) -> float:
        """This dispatcher's share of the rate over every number it sends from."""
        return self.settings.whatsapp.messages_per_second * max(1, len(self.buckets)) / self.peers

    def _bucket(self, phone_number_id: str) -> TokenBucket:
        bucket = self.buckets.get(phone_number_id)
        if bucket is None:
            rate = self.settings.whatsapp.messages_per_second / self.peers
            bucket = self.buckets[phone_number_id] = TokenBucket(rate, burst=max(1.0, rate * 0.05))
        return bucket

    async def run_once(self) -> int:
        """Claim and send one batch; returns how many rows were claimed, or held for the messaging limit
        (``meter``: a claim that only held rows found work all the same, and one more may find more)."""
        await self._heartbeat()
        if self._recording_again:
            await self.flush()  # the database refused the last outcomes: no claim (which expires leases, ours too) before they are in
        now = self.clock()
        rows = await self._claim_due(now)
        if not rows and self._pending_record is not None:
            # a contact's next message waits its turn until the batch being recorded is settled:
            # "nothing due" is only true once that batch is in
            await self.flush()
            rows = await self._claim_due(now)
        if rows:
            results = await asyncio.gather(*(self._one(row) for row in rows))
            self._probes.clear()
            await self.flush()  # at most one batch of results in flight; the previous one's are in before these go
            self._pending_record = asyncio.create_task(self._record(list(results)))
        await self._show_pauses()
        return len(rows) + self.meter.take_held()

    async def _claim_due(self, now: datetime) -> list[ob.Claimed]:
        """A batch from the numbers that send; one row of each paused number whose pause is over (its probe)."""
        if not self.paused:
            return await self._claim(now, list(self.stores), self.batch)
        sending = [sid for sid, s in self.stores.items() if s.whatsapp_phone_number_id not in self.paused]
        rows = await self._claim(now, sending, self.batch) if sending else []
        for phone_id, pause in list(self.paused.items()):
            if pause.until <= now:
                probe = await self._claim(now, [sid for sid, s in self.stores.items() if s.whatsapp_phone_number_id == phone_id], 1)
                self._probes.update(r.id for r in probe)
                rows += probe
        return rows

    async def _claim(self, now: datetime, store_ids: list[int], limit: int) -> list[ob.Claimed]:
        return await anyio.to_thread.run_sync(
            lambda: ob.claim(
                self.db, store_ids=store_ids, now=now, limit=limit, lease=self.lease,
                worker=self.worker_id, history_window=self.history_window, rules=self.rules, hold=self.meter.hold,
            )
        )

    async def _record(self, results: list[ob.Result]) -> None:
        """Write a batch's outcomes, trying again until they commit: given up, the rows would stay
        ``sending`` and end ``uncertain`` when their lease runs out, never to be sent (even one
        that a 503 kept from Meta, or quiet hours held back). A retry writes the same values; the
        rows move only while still ``sending`` (a status webhook may have settled one meanwhile)."""
        wait = RECORD_RETRY_FIRST
        given_up_at: float | None = None  # once told to stop: the tries go on this long (a blip during a deploy), no longer
        while True:
            try:
                await anyio.to_thread.run_sync(lambda: ob.record(self.db, self._marketing_limit(results), self.clock()))
                self._recording_again = False
                return
            except Exception as exc:
                self._recording_again = True
                stopping = self._stop is not None and self._stop.is_set()
                if stopping and given_up_at is None:
                    given_up_at = time.monotonic() + min(RECORD_AFTER_STOP, self.lease.total_seconds() / 2)
                if given_up_at is not None and time.monotonic() >= given_up_at:
                    # a worker told to stop does not wait for the database for ever (its orchestrator would
                    # kill it anyway): these rows stay 'sending' and their lease settles them, as after a crash
                    log.error("recording %d send outcomes failed (%s) while stopping; given up: rows %s end as their lease "
                              "runs out", len(results), describe_error(exc), sorted(r.row.id for r in results))
                    self._recording_again = False
                    return
                log.error("recording %d send outcomes failed (%s); trying again in %.1f s", len(results), describe_error(exc), wait)
                await asyncio.sleep(wait)
                wait = min(RECORD_RETRY_CAP, wait * 2)

    def _marketing_limit(self, results: list[ob.Result]) -> list[ob.Result]:
        """131049 (the user's marketing limit) answered to the send: tomorrow again by the failed
        status webhook's rule (``state.another_day``: three tries at most, only while the run goes
        on), else failed. Runs in the recording thread (it reads the runs)."""
        limited = [r for r in results if r.outcome == "retry" and r.error_code == 131049]
        if not limited:
            return results
        with self.db.engine.connect() as conn:
            ended = {id(r) for r in limited if not another_day(conn, r.row.store_id, r.row.journey, r.row.payload, r.row.attempts + 1)}
        return [replace(r, outcome="failed", due_at=None, error_detail=f"not tried again (third try, or its run ended): {r.error_detail}")
                if id(r) in ended else r for r in results]

    async def flush(self) -> None:
        if self._pending_record is not None:
            task, self._pending_record = self._pending_record, None
            await task

    def _stores_of(self, phone_id: str) -> str:
        return ", ".join(sorted(s.key for s in self.stores.values() if s.whatsapp_phone_number_id == phone_id))

    def _pause(self, phone_id: str, exc: SendError, *, rate_limit: bool = False) -> Pause:
        """An account-level refusal, or Meta's call rate limit: no more sends from this number for a
        while, then one probe. Returns the pause in force."""
        now = self.clock()
        current = self.paused.get(phone_id)
        if current is not None and current.until > now:
            return current  # another send of the same batch said so too
        seconds = PAUSE_FIRST if current is None else min(PAUSE_CAP, current.seconds * 2)
        seconds = max(seconds, exc.retry_after or 0.0)
        since = current.since if current is not None and current.rate_limit == rate_limit else now
        pause = self.paused[phone_id] = Pause(exc.code, str(exc), now + timedelta(seconds=seconds), seconds, rate_limit, since)
        self._shown[phone_id] = pause  # shown either way: a call rate limit as a wait, not as "fix the account"
        if rate_limit:
            log.warning(
                "WhatsApp's API call rate limit reached for store %s (code %s): %s; its messages wait, none spends a try, "
                "and one is tried again in %d s", self._stores_of(phone_id), exc.code, exc, seconds,
                extra={"store": self._stores_of(phone_id), "code": exc.code},
            )
            return pause
        log.error(
            "WhatsApp refuses every send of store %s (code %s): %s; its messages wait unsent, and one is tried again in %d s. "
            "Fix the account (a new access token needs a restart), and the waiting messages still in time go out",
            self._stores_of(phone_id), exc.code, exc, seconds, extra={"store": self._stores_of(phone_id), "code": exc.code},
        )
        return pause

    def _resume(self, phone_id: str) -> None:
        if self.paused.pop(phone_id, None) is not None:
            self._shown[phone_id] = None
            log.warning("WhatsApp takes store %s's messages again; the waiting ones still in time go out now", self._stores_of(phone_id),
                        extra={"store": self._stores_of(phone_id)})

    async def _show_pauses(self) -> None:
        """Make pause changes visible to /readyz, the dashboard and the report in every process (a leases
        row per paused number)."""
        if self._fresh:
            self._shown = {**{s.whatsapp_phone_number_id: None for s in self.stores.values() if s.whatsapp_phone_number_id},
                           **self._shown}
        if not self._shown:
            return
        shown, self._shown = self._shown, {}

        def write() -> None:
            ob.clear_paused(self.db, [p for p, pause in shown.items() if pause is None])
            for phone_id, pause in shown.items():
                if pause is not None:
                    ob.mark_paused(self.db, phone_id, pause.code, pause.until, since=pause.since, rate_limit=pause.rate_limit)

        try:
            await anyio.to_thread.run_sync(write)
            self._fresh = False
        except Exception as exc:  # only the report of it: the pause holds all the same
            log.warning("could not show paused WhatsApp numbers (%s)", describe_error(exc))
            self._shown = {**shown, **self._shown}

    async def drain(self, max_batches: int = 10_000) -> int:
        total = await loop.drain(self.run_once, max_batches)
        await self.close()
        return total

    async def run_forever(self, stop: asyncio.Event, idle_seconds: float = 0.5) -> None:
        self._stop = stop
        await loop.run_forever(self.run_once, stop, idle_seconds, log)
        await self.close()

    async def _one(self, row: ob.Claimed) -> ob.Result:
        started = self.clock()
        store = self.stores[row.store_id]
        try:
            message = MESSAGE.validate_python(row.payload.get("message"))
        except Exception as exc:
            return ob.Result(row, "failed", started, error_detail=f"unreadable payload: {exc.__class__.__name__}")
        phone_id = store.whatsapp_phone_number_id
        if not phone_id:
            return ob.Result(row, "failed", started, error_detail=f"store {store.key} has no whatsapp_phone_number_id")
        pair = f"{phone_id}:{message.to}"  # Meta spaces one business number's messages to one user (131056)
        try:
            decision = check(
                category=row.category or "utility",
                kind=message.kind,
                journey=row.journey,
                contact=row.facts or ContactFacts(),
                history=row.history,
                rules=self.rules[row.store_id],
                tz=store.tz,
                now=started,
                number_quality=row.number_quality,
            )
            wait = self.spacer.wait_for(pair) if decision.allowed else 0.0
        except Exception as exc:
            # a bug before any call: this message was not sent. Raised out of the batch's gather, it left
            # every outcome of the batch unwritten (all 'uncertain' once their lease ran out, never sent)
            log.exception("outbox %s could not be prepared for sending; failed, the rest of its batch goes on", row.id)
            return ob.Result(row, "failed", started, error_detail=f"not sent: preparing it raised {describe_error(exc)}"[:255])
        latest = self._send_by(row)
        if decision.deferred:
            due = decision.defer_until
            if latest is not None and due is not None and due > latest:
                if not decision.looks_again or started >= latest - LAST_LOOK_BEFORE:
                    # quiet hours would release it past its time, or the RED hold lasted to its last look:
                    # dropped now, with the reason visible at once
                    return ob.Result(row, "skipped", started, error_detail=TOO_LATE)
                # the RED hold may end before its time: one last look shortly before it (a claim comes a
                # poll or more after the due time; one at the limit itself would find it past and drop it)
                due = latest - LAST_LOOK_BEFORE
            return ob.Result(row, "deferred", started, due_at=due, error_detail=decision.reason)
        if not decision.allowed:
            return ob.Result(row, "skipped", started, error_detail=decision.reason)
        if wait > SHORT_WAIT:
            if latest is not None and started + timedelta(seconds=wait) > latest:
                return ob.Result(row, "skipped", started, error_detail=TOO_LATE)
            return ob.Result(row, "deferred", started, due_at=started + timedelta(seconds=wait))
        async with self.in_flight:
            if wait > 0:
                await asyncio.sleep(wait)
            await self._bucket(phone_id).acquire()
            pause = self.paused.get(phone_id)
            if pause is not None and row.id not in self._probes:  # refused meanwhile: this one waits with the others
                # untried, its reason kept (so it still holds her later messages back: ``ob._waits_its_turn``);
                # after a call rate limit due when the pause ends, so a restart or another worker waits too
                return ob.Result(row, "held", started, error_detail=f"waits: sends paused ({pause.reason})",
                                 due_at=pause.until if pause.rate_limit else None)
            result = await self._send(row, phone_id, pair, message, started)
            if row.id in self._probes and self.paused.get(phone_id) is pause:
                self._resume(phone_id)  # WhatsApp answered something else than "the account" or "the rate": it works again
            return result

    def _send_by(self, row: ob.Claimed) -> datetime | None:
        """The row's latest useful send time (``policy.send_by``); None for a row claimed without its plan."""
        if row.planned_at is None:
            return None
        return send_by(row.planned_at, category=row.category, journey=row.journey, step=row.step, rules=self.rules[row.store_id])

    async def _send(self, row: ob.Claimed, phone_id: str, pair: str, message: OutboundMessage, started: datetime) -> ob.Result:
        """One call to WhatsApp and what its answer means for the row."""
        self.spacer.mark(pair)
        label = message.name if message.kind == "template" else None
        t0 = time.perf_counter()
        try:
            try:
                sent = await self.sender.send(phone_id, message.model_copy(update={"callback_data": ob.callback_for(row.id)}))
            finally:
                self.in_flight.observe(time.perf_counter() - t0)
        except RetryableError as exc:
            ms = int((time.perf_counter() - t0) * 1000)
            if exc.outcome_unknown:
                return ob.Result(row, "uncertain", started, ms, error_code=exc.code, error_detail=f"outcome unknown: {exc}")
            if exc.rate_limited:
                pause = self._pause(phone_id, exc, rate_limit=True)
                return ob.Result(row, "retry", started, ms, error_code=exc.code, error_detail=f"waits: {exc}", due_at=pause.until,
                                 counts=False)
            throttled = exc.code in THROTTLES
            if exc.code == 130429:
                self._bucket(phone_id).throttled()
            when = next_attempt_at(row.attempts + 1, exc.retry_after, self.throttle_retry if throttled else self.retry, self.clock(),
                                   self.rng.random())
            if when is None:
                return ob.Result(row, "failed", started, ms, error_code=exc.code, error_detail=f"gave up after {row.attempts + 1} attempts: {exc}")
            return ob.Result(row, "retry", started, ms, error_code=exc.code, error_detail=str(exc), due_at=when, counts=not throttled)
        except AccountError as exc:  # the token, a permission, payment, a block: not this message's fault
            ms = int((time.perf_counter() - t0) * 1000)
            self._pause(phone_id, exc)
            return ob.Result(row, "held", started, ms, error_code=exc.code, error_detail=f"waits: {exc}", counts=False)
        except PermanentError as exc:
            ms = int((time.perf_counter() - t0) * 1000)
            if exc.outcome_unknown:  # e.g. a 200 without a message id: it may have gone out
                return ob.Result(row, "uncertain", started, ms, error_code=exc.code, error_detail=f"outcome unknown: {exc}")
            # 131026 / 131050 in the answer itself: the contact changes as for a failed status webhook
            return ob.Result(row, "failed", started, ms, error_code=exc.code, error_detail=str(exc),
                             about_contact=exc.code in ob.CONTACT_ERRORS)
        except Exception as exc:  # a bug after the request may have left: do not risk a second send
            log.exception("unexpected error while sending outbox %s", row.id)
            return ob.Result(row, "uncertain", started, error_detail=f"unexpected {exc.__class__.__name__}")
        ms = int((time.perf_counter() - t0) * 1000)
        self.sent += 1
        return ob.Result(
            row, "dry_run" if sent.dry_run else "sent", started, ms, wamid=sent.wamid, wa_id=sent.wa_id,
            recipient=message.to, kind=message.kind, label=label,
        )
