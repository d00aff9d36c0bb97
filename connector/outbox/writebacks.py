"""Store write-backs (tag a confirmed COD order, cancel, note, status) through the outbox.

Same durable path as messages: a committed row, a lease, one attempt row per try (with the
platform's code or HTTP status: the audit trail), retries as due times. Write-backs are
idempotent at the platform (tags are a set; cancelling a cancelled order is a no-op), so an
unknown outcome (a timeout, a 2xx we cannot read, a bug of ours) is retried rather than
parked, up to ``whatsapp.max_attempts``.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import socket
import time
from collections.abc import Callable, Mapping
from datetime import datetime, timedelta
from typing import Any

import anyio.to_thread
from sqlalchemy import Connection, bindparam, select

from connector.config import Settings
from connector.errors import PermanentError, RetryableError
from connector.handoffs import HandoffRequest, journey_stage, open_handoff
from connector.outbox import loop
from connector.outbox import store as ob
from connector.outbox.retry import RetryPolicy, next_attempt_at
from connector.storage.db import Database
from connector.storage.models import utcnow
from connector.storage.sql import ORDERS
from connector.store_writer import StoreWriter

log = logging.getLogger("storeloop.writebacks")
ACTIONS = ("add_tags", "cancel_order", "add_note", "set_status")
# write-backs that change an order's state: never on an order that has shipped or was cancelled
# since the journey queued them (a COD confirmation's status, a no-answer cancel)
MOVES = ("cancel_order", "set_status")
# Another worker takes a row over once its lease runs out, and calls the store again (the audit
# trail shows a lost call; the store gets a second tag, cancel or status call). As for hand-off
# notifications (notify.py): a call is bounded as a whole (a cancel waits for Shopify's job, httpx's
# timeouts are per request), and no call starts that the rest of the lease would not cover (a slow
# store, a stalled worker); those rows go back untried for the next claim.
BATCH = 50
CALL_SECONDS = 90.0
RECORD_SECONDS = 30.0
LEASE = timedelta(minutes=5)
_ORDER_STATES = select(ORDERS.c.external_id, ORDERS.c.fulfillment_state, ORDERS.c.cancelled_at).where(
    ORDERS.c.store_id == bindparam("sid"), ORDERS.c.external_id.in_(bindparam("ids", expanding=True)))


def closed_orders(db: Database, rows: list[ob.Claimed]) -> dict[tuple[int, str], str]:
    """Why each order a state-changing write-back is for may no longer be moved, as stored now
    (the store's webhooks keep it current): ``order_shipped`` (fully or partly) or
    ``order_cancelled``. One query per store."""
    wanted: dict[int, set[str]] = {}
    for r in rows:
        if (r.payload or {}).get("action") in MOVES:
            wanted.setdefault(r.store_id, set()).add(str(r.payload.get("order_id")))
    out: dict[tuple[int, str], str] = {}
    if not wanted:
        return out
    with db.engine.connect() as conn:
        for sid, ids in wanted.items():
            for o in conn.execute(_ORDER_STATES, {"sid": sid, "ids": sorted(ids)}):
                if o.fulfillment_state in ("fulfilled", "partial"):
                    out[(sid, o.external_id)] = "order_shipped"
                elif o.cancelled_at is not None:
                    out[(sid, o.external_id)] = "order_cancelled"
    return out


def _what(action: str | None, args: Mapping[str, object]) -> str:
    """A write-back as a person reads it."""
    if action == "add_tags":
        return "tags " + ", ".join(str(t) for t in (args.get("tags") or []))  # type: ignore[attr-defined]
    if action == "set_status":
        return f"status {args.get('status')}"
    return {"cancel_order": "cancel", "add_note": "note"}.get(action or "", str(action))


def hand_off_failures(conn: Connection, stores: Mapping[int, object], results: list[ob.Result], now: datetime) -> int:
    """A write-back the store refused for good, or one given up on, is what the customer asked
    for (a cancel, a confirmation's tag or status) not done: a person does it by hand. One
    hand-off per write-back, for its journey's stage owner, with the store's answer; written in
    the transaction that records the failure, so a crash between the two cannot lose it. Only
    results that settled their rows: one that came after its lease ran out leaves the row to the
    worker that took it over (whose call may well succeed)."""
    failed = [r for r in results if r.outcome == "failed" and r.row.store_id in stores]
    for res in failed:
        p = res.row.payload or {}
        reason = (f"the store did not take our {_what(p.get('action'), p.get('args') or {})} of order {p.get('order_id')}: "
                  f"{res.error_detail or 'no answer'}; do it by hand")
        _hand_off(conn, stores[res.row.store_id], res.row.store_id, res.row, reason, now)
    return len(failed)


def hand_off_shipped(conn: Connection, stores: Mapping[int, object], results: list[ob.Result], now: datetime) -> int:
    """A write-back skipped because the order shipped since it was queued, which its journey said a
    person must hear of (``if_shipped``: the customer's own Cancel; the parcel is on its way to someone
    who asked not to have it). Keyed as its run's own case, so it joins one already open about the order
    (her cancel reason, say); written with the skip, like ``hand_off_failures``."""
    shipped = [r for r in results if r.outcome == "skipped" and r.error_detail == "order_shipped" and r.row.store_id in stores
               and (r.row.payload or {}).get("if_shipped")]
    for res in shipped:
        row, p = res.row, res.row.payload
        req = HandoffRequest(f"{row.journey}:{p.get('subject')}", str(p["if_shipped"])[:2000], row.journey, p.get("subject"),
                             stage=journey_stage(row.journey))
        open_handoff(conn, stores[row.store_id], row.store_id, row.contact_id, req, now)
    return len(shipped)


def hand_off_unmade(conn: Connection, store: object, store_id: int, rows: list[Any], now: datetime) -> int:
    """Write-backs decided while the app was uninstalled, skipped at the reinstall (``connector/reinstall.py``):
    what a customer asked for then (her Cancel, her Confirm's tag) is not made blindly on an order that may
    have moved on since, and not dropped unseen either: a person checks the order, one hand-off each."""
    for row in rows:
        p = row.payload or {}
        reason = (f"our {_what(p.get('action'), p.get('args') or {})} of order {p.get('order_id')} was decided while the app "
                  f"was uninstalled and was not made: check the order and do it by hand if it still holds")
        _hand_off(conn, store, store_id, row, reason, now)
    return len(rows)


def _hand_off(conn: Connection, store: object, store_id: int, row: Any, reason: str, now: datetime) -> None:
    """One hand-off per write-back (its outbox row: ``id``, ``payload``, ``journey``, ``contact_id``), for its journey's stage owner."""
    p = row.payload or {}
    req = HandoffRequest(f"writeback:{row.id}", reason[:2000], row.journey, p.get("subject"), stage=journey_stage(row.journey))
    open_handoff(conn, store, store_id, row.contact_id, req, now)


class DryRunWriter:
    """A store without API credentials: write-backs are recorded, not made."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str, dict]] = []

    async def add_tags(self, order_id: str, tags: list[str]) -> None:
        self.calls.append(("add_tags", order_id, {"tags": list(tags)}))

    async def cancel_order(self, order_id: str, *, reason: str, notify_customer: bool, staff_note: str | None,
                           unless_since: datetime | None = None) -> None:
        self.calls.append(("cancel_order", order_id, {"reason": reason}))

    async def add_note(self, order_id: str, note: str, *, unless_since: datetime | None = None) -> None:
        self.calls.append(("add_note", order_id, {"note": note}))

    async def set_status(self, order_id: str, status: str) -> None:
        self.calls.append(("set_status", order_id, {"status": status}))

    async def aclose(self) -> None:
        return None


class WriteBackDispatcher:
    def __init__(
        self,
        db: Database,
        settings: Settings,
        store_ids: Mapping[str, int],
        writers: Mapping[int, StoreWriter],
        *,
        clock: Callable[[], datetime] = utcnow,
        concurrency: int = 4,
        rng: random.Random | None = None,
    ):
        self.db = db
        self.writers = writers
        self.clock = clock
        self.store_ids = [store_ids[s.key] for s in settings.stores if s.key in store_ids]
        self.stores = {store_ids[s.key]: s for s in settings.stores if s.key in store_ids}
        wa = settings.whatsapp
        self.retry = RetryPolicy(wa.backoff_base_seconds, wa.backoff_cap_seconds, wa.max_attempts)
        self.semaphore = asyncio.Semaphore(concurrency)
        self.rng = rng or random.Random()
        self.worker = f"{socket.gethostname()}:{os.getpid()}:store"

    async def run_once(self) -> int:
        now = self.clock()
        rows = await anyio.to_thread.run_sync(
            lambda: ob.claim(self.db, store_ids=self.store_ids, now=now, limit=BATCH, lease=LEASE,
                             worker=self.worker, history_window=timedelta(0), channel="store")
        )
        if rows:
            last_start = now + LEASE - timedelta(seconds=CALL_SECONDS + RECORD_SECONDS)
            closed = await anyio.to_thread.run_sync(closed_orders, self.db, rows)
            results = await asyncio.gather(*(self._one(r, closed, last_start) for r in rows))
            left = sorted(r.row.id for r in results if r.outcome == "released")
            if left:
                log.warning("store write-backs %s left untried for the next claim: this batch ran late (%s of its %s lease used)",
                            left, self.clock() - now, LEASE)
            now, done = self.clock(), list(results)
            await anyio.to_thread.run_sync(
                lambda: ob.record(self.db, done, now, also=lambda conn, settled: self._hand_offs(conn, settled, now)))
        return len(rows)

    def _hand_offs(self, conn: Connection, settled: list[ob.Result], now: datetime) -> None:
        """What a person must hear of the batch, committed with it: a write-back the store refused
        or we gave up on, and one the order's shipping stopped that its journey said matters."""
        hand_off_failures(conn, self.stores, settled, now)
        hand_off_shipped(conn, self.stores, settled, now)

    async def drain(self, max_batches: int = 1000) -> int:
        return await loop.drain(self.run_once, max_batches)

    async def run_forever(self, stop: asyncio.Event, idle_seconds: float = 1.0) -> None:
        await loop.run_forever(self.run_once, stop, idle_seconds, log)

    async def _one(self, row: ob.Claimed, closed: Mapping[tuple[int, str], str], last_start: datetime) -> ob.Result:
        started = self.clock()
        p = row.payload
        writer = self.writers.get(row.store_id)
        action, order_id, args = p.get("action"), str(p.get("order_id")), dict(p.get("args") or {})
        if writer is None or action not in ACTIONS:
            return ob.Result(row, "failed", started, error_detail=f"cannot perform {action!r} for this store")
        why = closed.get((row.store_id, order_id)) if action in MOVES else None
        if why is not None:  # shipped or cancelled since it was queued: the store's state stands
            log.info("store write-back skipped", extra={"action": action, "order": order_id, "outcome": why})
            return ob.Result(row, "skipped", started, error_detail=why)
        async with self.semaphore:
            if self.clock() > last_start:  # another worker could take it over mid-call: a second call
                return ob.Result(row, "released", self.clock())
            t0 = time.perf_counter()
            try:
                # a retry: the earlier try may have landed though its answer was lost (a timeout, a
                # worker that died); a note is the one write that is not idempotent at the store
                with anyio.fail_after(CALL_SECONDS):
                    await self._call(writer, action, order_id, args, row.created_at if row.attempts else None)
            except TimeoutError:
                err = RetryableError(f"no answer within {CALL_SECONDS:g} s", outcome_unknown=True)
                return self._after_error(row, started, int((time.perf_counter() - t0) * 1000), err)
            except (RetryableError, PermanentError) as exc:
                return self._after_error(row, started, int((time.perf_counter() - t0) * 1000), exc)
            except Exception as exc:  # a bug must not leave the batch leased: recorded and retried like an unknown outcome
                log.exception("unexpected error in store write-back %s", row.id)
                err = RetryableError(f"unexpected {exc.__class__.__name__}", outcome_unknown=True)
                return self._after_error(row, started, int((time.perf_counter() - t0) * 1000), err)
        outcome = "dry_run" if isinstance(writer, DryRunWriter) else "sent"
        log.info("store write-back done", extra={"action": action, "order": order_id, "outcome": outcome})
        return ob.Result(row, outcome, started, int((time.perf_counter() - t0) * 1000))

    @staticmethod
    async def _call(writer: StoreWriter, action: str, order_id: str, args: dict, retry_since: datetime | None) -> None:
        if action == "add_tags":
            await writer.add_tags(order_id, args["tags"])
        elif action == "cancel_order":
            await writer.cancel_order(order_id, reason=args.get("reason", "other"), notify_customer=bool(args.get("notify_customer")),
                                      staff_note=args.get("staff_note"), unless_since=retry_since)
        elif action == "add_note":
            await writer.add_note(order_id, args["note"], unless_since=retry_since)
        else:
            await writer.set_status(order_id, args["status"])

    def _after_error(self, row: ob.Claimed, started: datetime, ms: int, exc: RetryableError | PermanentError) -> ob.Result:
        """Retry (at a durable due time) or fail, with the platform's code or HTTP status on the attempt row.

        A permanent answer whose outcome is unknown (a 2xx we cannot read) is retried too:
        the write-back is idempotent, so trying again is safe and a silent miss is not.
        """
        code = exc.code if exc.code is not None else (exc.http_status if (exc.http_status or 0) >= 400 else None)
        if isinstance(exc, PermanentError) and not exc.outcome_unknown:
            return ob.Result(row, "failed", started, ms, error_code=code, error_detail=str(exc))
        detail = f"{ob.OUTCOME_UNKNOWN}{exc}" if exc.outcome_unknown else str(exc)
        when = next_attempt_at(row.attempts + 1, exc.retry_after, self.retry, self.clock(), self.rng.random())
        if when is None:
            return ob.Result(row, "failed", started, ms, error_code=code, error_detail=f"gave up after {row.attempts + 1} attempts: {detail}")
        return ob.Result(row, "retry", started, ms, error_code=code, error_detail=detail, due_at=when)
