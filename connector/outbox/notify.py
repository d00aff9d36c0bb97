"""Hand-off notifications to a stage owner's outgoing webhook (Slack-compatible ``{"text": ...}``).

The webhook URL is a secret and stays in the config: the outbox row names only the
hand-off and the stage, and the URL is looked up when the notification is sent.

Each hook fails on its own: a batch's alerts go to their hooks side by side (one after another
for one hook), and a hook that failed (no answer, 5xx, 429) is left alone until its failed alert's
retry (a 429's ``Retry-After``, up to ``HOOK_RETRY_AFTER_CAP``, is its floor): its other alerts
wait for it untried, their tries unspent, and no other stage's alert waits behind it (the outbox
lines a customer's alerts up per stage, not across stages: ``store._waits_its_turn``).
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import re
import socket
from collections.abc import Callable, Mapping
from datetime import datetime, timedelta

import anyio.to_thread
import httpx
from sqlalchemy import select

from connector.config import Settings
from connector.handoffs import notify_text
from connector.outbox import loop
from connector.outbox import store as ob
from connector.outbox.retry import RetryPolicy, next_attempt_at, parse_retry_after
from connector.storage.db import Database
from connector.storage.models import utcnow
from connector.storage.sql import HANDOFFS

log = logging.getLogger("storeloop.notify")
_SLACK_ERROR = re.compile(r"[a-z_]{1,40}")  # Slack's answer names its error: no_service, invalid_token, channel_is_archived
# The POSTs of a batch go one after another, and another worker takes a row over once its lease
# runs out: the lease covers a whole batch of calls at their longest, plus the time to record them.
# A call is bounded as a whole (httpx's timeouts are per step: a hook trickling its answer is not),
# and no call starts that the rest of the lease would not cover (a worker slowed by something
# else: a stalled process, a slow database); those rows go back untried for the next claim.
BATCH = 8
CALL_SECONDS = 15.0
RECORD_SECONDS = 30.0
LEASE = timedelta(seconds=BATCH * CALL_SECONDS + RECORD_SECONDS)
# a hook's Retry-After is honoured up to a quarter of an hour: a person waits on the alert, and a
# hook asking for a day (a misconfigured proxy) is asked again then, not tomorrow
HOOK_RETRY_AFTER_CAP = 900.0


def _said(resp: httpx.Response) -> str:
    """The webhook's own word for a refusal, when it is one of Slack's error names; any other body
    is left out (a proxy's error page may quote the request, and the URL is a secret)."""
    body = resp.text.strip()
    return f" ({body})" if _SLACK_ERROR.fullmatch(body) else ""


class NotifyDispatcher:
    def __init__(self, db: Database, settings: Settings, store_ids: Mapping[str, int], *,
                 http: httpx.AsyncClient | None = None, clock: Callable[[], datetime] = utcnow):
        self.db = db
        self.clock = clock
        self.stores = {store_ids[s.key]: s for s in settings.stores if s.key in store_ids}
        self.http = http or httpx.AsyncClient(timeout=httpx.Timeout(10, connect=5))
        wa = settings.whatsapp
        self.retry = RetryPolicy(wa.backoff_base_seconds, wa.backoff_cap_seconds, wa.max_attempts)
        self.rng = random.Random()
        self.worker = f"{socket.gethostname()}:{os.getpid()}:notify"
        # hook -> when it is called again after a failure (this worker's memory; keyed by the URL, never logged)
        self.resting: dict[str, tuple[datetime, str]] = {}

    async def aclose(self) -> None:
        await self.http.aclose()

    def _handoff(self, store_id: int, hid: int):  # type: ignore[no-untyped-def]
        """The hand-off a notification is about, within the notification's own store."""
        with self.db.engine.connect() as conn:
            return conn.execute(select(HANDOFFS).where(HANDOFFS.c.store_id == store_id, HANDOFFS.c.id == hid)).first()

    async def run_once(self) -> int:
        now = self.clock()
        rows = await anyio.to_thread.run_sync(
            lambda: ob.claim(self.db, store_ids=list(self.stores), now=now, limit=BATCH, lease=LEASE,
                             worker=self.worker, history_window=timedelta(0), channel="notify"))
        last_start = now + LEASE - timedelta(seconds=CALL_SECONDS + RECORD_SECONDS)
        by_hook: dict[str | None, list[ob.Claimed]] = {}
        for row in rows:
            by_hook.setdefault(self._hook_of(row), []).append(row)
        # each hook's alerts in turn, the hooks side by side: one that hangs holds up only its own
        batches = await asyncio.gather(*(self._to_hook(hook, its, last_start) for hook, its in by_hook.items()))
        results = [r for batch in batches for r in batch]
        left = [r.row.id for r in results if r.outcome == "released"]
        if left:
            log.warning("notifications %s left untried for the next claim: this batch ran late (%s of its %s lease used)",
                        left, self.clock() - now, LEASE)
        if results:
            await anyio.to_thread.run_sync(ob.record, self.db, results, self.clock())
        return len(rows)

    def _hook_of(self, row: ob.Claimed) -> str | None:
        stage_cfg = self.stores[row.store_id].stages.get(row.payload.get("stage"))
        return stage_cfg.notify_url.get_secret_value() if stage_cfg is not None and stage_cfg.notify_url is not None else None

    async def _to_hook(self, hook: str | None, rows: list[ob.Claimed], last_start: datetime) -> list[ob.Result]:
        """One hook's alerts of the batch, one after another; once it fails the rest wait for its retry."""
        results: list[ob.Result] = []
        for row in rows:
            now = self.clock()
            resting = self.resting.get(hook) if hook is not None else None
            if now > last_start:  # another worker could take it over mid-call: a second alert
                results.append(ob.Result(row, "released", now))
            elif resting is not None and resting[0] > now:
                # untried, its tries unspent, due when the hook is tried again (the failed alert's retry)
                results.append(ob.Result(row, "held", now, error_detail=f"waits: its hook failed ({resting[1]})", due_at=resting[0]))
            else:
                result = await self._guarded(row)
                if hook is not None and result.outcome == "sent":
                    self.resting.pop(hook, None)
                results.append(result)
        return results

    async def _guarded(self, row: ob.Claimed) -> ob.Result:
        """One row's result, whatever goes wrong with it: an exception escaping here would leave
        the whole batch (every store's rows, some already POSTed) unrecorded, and an expired
        lease would send those again, again and again. The error names only the exception's
        class: its message may quote the webhook URL, which is a secret."""
        started = self.clock()
        try:
            return await self._one(row, started)
        except Exception as exc:
            log.warning("notification %s (store %s) failed: %s", row.id, row.store_id, exc.__class__.__name__)
            return ob.Result(row, "failed", started, error_detail=exc.__class__.__name__)

    async def _one(self, row: ob.Claimed, started: datetime) -> ob.Result:
        store = self.stores[row.store_id]
        stage_cfg = store.stages.get(row.payload.get("stage"))
        if stage_cfg is None or stage_cfg.notify_url is None:
            return ob.Result(row, "skipped", started, error_detail="no notify_url for this stage")
        h = await anyio.to_thread.run_sync(self._handoff, row.store_id, int(row.payload["handoff_id"]))
        if h is None:
            return ob.Result(row, "failed", started, error_detail="hand-off not found")
        try:
            with anyio.fail_after(CALL_SECONDS):
                text = notify_text(h, store.name or store.key, row.payload.get("update"))  # the update this alert is about
                resp = await self.http.post(stage_cfg.notify_url.get_secret_value(), json={"text": text})
        except httpx.HTTPError as exc:
            return self._retry_or_fail(row, started, exc.__class__.__name__)
        except TimeoutError:
            return self._retry_or_fail(row, started, f"no answer within {CALL_SECONDS:g} s")
        if resp.status_code >= 500 or resp.status_code == 429:
            # Slack's 429 says when to come back: not sooner (nor much later: HOOK_RETRY_AFTER_CAP)
            wait = parse_retry_after(resp.headers.get("Retry-After"), now=self.clock(), cap=HOOK_RETRY_AFTER_CAP,
                                      sent=resp.headers.get("Date"))
            return self._retry_or_fail(row, started, f"HTTP {resp.status_code}{_said(resp)}", wait)
        if not resp.is_success:
            # a revoked or mistyped hook (Slack: 403 invalid_token, 404 no_service, 410 channel gone), or a
            # redirect (a moved hook, http:// for https://: httpx does not follow it, and a 301/302 would turn
            # the POST into a GET) fails every alert of its stage until someone fixes the config: it must be heard
            error = f"HTTP {resp.status_code}{_said(resp)}"
            log.warning("notification %s of hand-off %s (store %s, stage %s) refused: %s; its owner was not told "
                        "(check the stage's notify_url)", row.id, row.payload.get("handoff_id"), store.key,
                        row.payload.get("stage"), error)
            return ob.Result(row, "failed", started, error_detail=error)
        return ob.Result(row, "sent", started)

    def _retry_or_fail(self, row: ob.Claimed, started: datetime, error: str, retry_after: float | None = None) -> ob.Result:
        """Try again later, or give up once the retries are spent (logged: its owner was never told).
        The hook failed, not the alert: its other alerts wait until then (``resting``)."""
        when = next_attempt_at(row.attempts + 1, retry_after, self.retry, self.clock(), self.rng.random())
        hook = self._hook_of(row)
        if hook is not None:
            self.resting[hook] = (when or self.clock() + timedelta(seconds=max(self.retry.base_seconds, retry_after or 0.0)), error)
        if when is None:
            log.warning("notification %s of hand-off %s (store %s, stage %s) given up after %d attempts: %s; its owner "
                        "was not told", row.id, row.payload.get("handoff_id"), self.stores[row.store_id].key, row.payload.get("stage"),
                        row.attempts + 1, error)
        return ob.Result(row, "retry" if when else "failed", started, error_detail=error, due_at=when)

    async def run_forever(self, stop: asyncio.Event, idle_seconds: float = 1.0) -> None:
        await loop.run_forever(self.run_once, stop, idle_seconds, log)
