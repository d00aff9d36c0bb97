"""Poll the store's abandoned checkouts: the checkout webhooks that got lost still start recovery.

Shopify has no "abandoned" webhook (abandonment is ours to decide, platform-facts.md A3) and
does not guarantee ``checkouts/create|update`` delivery (A1), so a periodic job reads the
``abandonedCheckouts`` connection (A6) and writes every checkout updated since a stored
cursor through ``write_items``: the same inbox path as a webhook, so the processor, the
stale-state check and the checkout-recovery journey treat both alike.

One checkout, one journey run: the run's subject is ``checkout:{token}``, and the webhook
names a checkout by its token while the API names it by an id and a recovery URL. The
platform's pager hands over what it can tell (``PolledCheckout``: the token when the URL
carries it, a link identity, a fallback key); here the key is chosen, in this order:

1. ``known``: a checkout we already store (from its webhook, or an earlier poll) whose
   recovery URL names the same checkout -> that checkout's token;
2. ``link``: the token the recovery URL carries;
3. ``id``: the pager's fallback key (Shopify: the checkout id). A webhook that arrives later
   would start a second run under its token, so such a checkout is held back until
   ``unmatched_grace`` after its last update (the webhook had that long to arrive and be
   processed; the cursor stays behind it meanwhile).

Before all of these, ``erased``: a checkout of a customer the connector erased. The erasure
removed its recovery URL (so 1. no longer finds it) and marked the link's identity
(``connector/erased.py``); the checkout is keyed by that mark, and the processor ignores the
row as it ignores any event about her checkout.

Only a checkout that could still be recovered is imported when we have never seen it: not
completed, and updated within ``start_within`` (older ones would get their whole reminder
ladder at once). A known checkout is always passed on, so a completion reaches its run.

Cursor: the connection cannot be sorted by update time (no UPDATED_AT sort key), so the
cursor moves once, after the last page is committed, to ``min(newest updatedAt seen, now,
oldest held-back checkout)``; it never moves back. The window starts ``overlap`` before it.
A failed run leaves it where it was; re-reading is harmless (the dedupe key is the
checkout id and its ``updatedAt``). Before each page the client's rate budget is awaited,
a THROTTLED or transient answer is slept off and retried (as ``connector.sync`` does), and
a repeated page cursor stops the run.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Protocol

import anyio.to_thread
from sqlalchemy import or_, select

from connector import erased
from connector.storage.db import Database
from connector.storage.inbox import InboxItem, write_items
from connector.storage.models import Checkout
from connector.sync import (
    DEFAULT_LOOKBACK, DEFAULT_OVERLAP, MAX_ATTEMPTS, JobReport, budget, parse_cursor, read_cursor, retrying, upsert_cursor,
)

log = logging.getLogger("storeloop.checkout_poll")

CHECKOUTS_CURSOR = "abandoned_checkouts_updated_at"
START_WITHIN = timedelta(hours=6)
UNMATCHED_GRACE = timedelta(hours=1)
_COUNTERS = {"known": "known", "link": "by_link", "id": "by_id", "erased": "erased"}

Sleep = Callable[[float], Awaitable[Any]]
Retrying = Callable[[Callable[[], Awaitable[Any]]], Awaitable[Any]]
Budget = Callable[[float], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class PolledCheckout:
    """One checkout as a platform's pager hands it over: neutral, its raw body kept for the inbox."""

    external_id: str | None  # the platform's id for the checkout
    updated_at: datetime | None
    created_at: datetime | None
    completed: bool
    link_token: str | None  # the checkout token, when the platform tells it (Shopify: in a classic recovery URL)
    link_identity: str | None  # equal for every URL of this checkout (see the pager's link_identity)
    link_needle: str | None  # a substring every such URL contains, to find stored ones
    fallback_token: str | None  # the key when the token cannot be learnt
    body: dict[str, Any] = field(repr=False)


class CheckoutPager(Protocol):
    source: str

    def pages(self, window_start: datetime, page_size: int, retrying: Retrying, budget: Budget) -> AsyncIterator[list[PolledCheckout]]:
        """Each page of checkouts updated since ``window_start`` (any order)."""

    def link_identity(self, url: str | None) -> str | None:
        """The identity of a stored recovery URL, comparable with ``PolledCheckout.link_identity``."""

    def inbox_entry(self, checkout: PolledCheckout, token: str, via: str) -> tuple[str, str, bytes]:
        """(topic, dedupe key, raw body) for the inbox, the chosen token recorded in the body."""


@dataclass(slots=True)
class CheckoutPollReport(JobReport):
    checkouts_seen: int = 0
    known: int = 0  # keyed by a checkout we already store
    by_link: int = 0  # keyed by the token in the recovery URL
    by_id: int = 0  # keyed by the fallback key
    erased: int = 0  # an erased customer's checkout, keyed by its link's mark: the processor ignores it
    held_back: int = 0  # unmatched and too fresh: read again next run
    skipped_completed: int = 0  # never seen, already completed: nothing to recover
    skipped_old: int = 0  # never seen, last updated before start_within


def checkout_pager_for(store: Any, client: Any) -> CheckoutPager:
    """The store's platform's pager over its abandoned checkouts; the adapters' registry knows which."""
    from adapters.registry import checkout_pagers  # late: the registry imports the processor, which imports us

    pager = checkout_pagers().get(store.platform)
    if pager is None:
        raise ValueError(f"{store.key}: abandoned checkouts are not polled for {store.platform} stores")
    return pager(client, store.key)


def link_identity_of(store: Any) -> Callable[[str | None], str | None] | None:
    """How the store's platform identifies a recovery link (``CheckoutPager.link_identity``, without a
    client): an erasure marks her checkouts' links with it. None for a platform that is not polled.
    The adapters' registry knows which platform reads links how."""
    from adapters.registry import link_readers  # late: the registry imports the processor, which imports us

    return link_readers().get(store.platform)


def _stored(db: Database, store_id: int, tokens: Iterable[str], needles: Iterable[str],
            identities: Iterable[str] = ()) -> tuple[set[str], list[tuple[str, str]], dict[str, str]]:
    """Tokens among ``tokens`` that we store, (token, recovery_url) of stored checkouts whose
    URL contains one of ``needles``, and the marks of the link ``identities`` an erasure marked."""
    tokens, needles = sorted(set(tokens)), sorted(set(needles))
    found: set[str] = set()
    links: list[tuple[str, str]] = []
    with db.engine.connect() as conn:
        erased_links = erased.marked_links(conn, store_id, identities)
        for i in range(0, len(tokens), 200):
            found.update(conn.execute(select(Checkout.token).where(
                Checkout.store_id == store_id, Checkout.token.in_(tokens[i:i + 200]))).scalars())
        for i in range(0, len(needles), 50):
            rows = conn.execute(select(Checkout.token, Checkout.recovery_url).where(
                Checkout.store_id == store_id,
                or_(*(Checkout.recovery_url.contains(n, autoescape=True) for n in needles[i:i + 50]))))
            links.extend((r.token, r.recovery_url) for r in rows)
    return found, links, erased_links


async def poll_abandoned_checkouts(
    db: Database,
    store: Any,
    store_id: int,
    client: Any,
    *,
    now: datetime,
    overlap: timedelta = DEFAULT_OVERLAP,
    page_size: int = 50,
    since: datetime | None = None,
    start_within: timedelta = START_WITHIN,
    unmatched_grace: timedelta = UNMATCHED_GRACE,
    sleep: Sleep = asyncio.sleep,
    max_attempts: int = MAX_ATTEMPTS,
    progress: Callable[[CheckoutPollReport], None] | None = None,
) -> CheckoutPollReport:
    """Fetch every checkout updated since the stored cursor (or ``since``) into the inbox."""
    if now.tzinfo is None:
        raise ValueError("now must be timezone-aware")
    stored = parse_cursor(await anyio.to_thread.run_sync(read_cursor, db, store_id, CHECKOUTS_CURSOR))
    start = since if since is not None else (stored or now - DEFAULT_LOOKBACK)
    report = CheckoutPollReport(store_key=store.key, platform=store.platform, cursor_before=stored,
                                window_start=start - overlap)
    poll = _Poll(db, store, store_id, client, now, report, sleep, max_attempts, start_within, unmatched_grace, progress)
    await poll.run(checkout_pager_for(store, client), report.window_start, page_size, stored)
    log.info("polled abandoned checkouts of %s: %d page(s), %d checkout(s), %d new, %d held back, cursor %s -> %s",
             store.key, report.pages, report.checkouts_seen, report.new_rows, report.held_back,
             report.cursor_before, report.cursor_after)
    return report


@dataclass(slots=True)
class _Poll:
    db: Database
    store: Any
    store_id: int
    client: Any
    now: datetime
    report: CheckoutPollReport
    sleep: Sleep
    max_attempts: int
    start_within: timedelta
    unmatched_grace: timedelta
    progress: Callable[[CheckoutPollReport], None] | None

    async def run(self, pager: CheckoutPager, window_start: datetime, page_size: int, cursor: datetime | None) -> None:
        newest: datetime | None = None
        hold: datetime | None = None  # the oldest checkout held back: the cursor must stay at or before it
        async for page in pager.pages(window_start, page_size, self._retrying, self._budget):
            items, page_hold = await self._page(pager, page)
            results = await anyio.to_thread.run_sync(write_items, self.db, items)
            self.report.new_rows += sum(results)
            self.report.pages += 1
            self.report.checkouts_seen += len(page)
            for c in page:
                if c.updated_at is not None and (newest is None or c.updated_at > newest):
                    newest = c.updated_at
            if page_hold is not None and (hold is None or page_hold < hold):
                hold = page_hold
            if self.progress is not None:
                self.progress(self.report)
        self.report.cursor_after = cursor
        if newest is None:
            return
        target = min(t for t in (newest, self.now, hold) if t is not None)
        if cursor is None or target > cursor:  # every page is committed: only now may the cursor move
            await anyio.to_thread.run_sync(upsert_cursor, self.db, self.store_id, CHECKOUTS_CURSOR, target.isoformat())
            self.report.cursor_after = target

    async def _page(self, pager: CheckoutPager, page: list[PolledCheckout]) -> tuple[list[InboxItem], datetime | None]:
        candidates = [t for c in page for t in (c.link_token, c.fallback_token) if t]
        needles = [c.link_needle for c in page if c.link_needle]
        identities = [c.link_identity for c in page if c.link_identity]
        found, links, erased_links = await anyio.to_thread.run_sync(_stored, self.db, self.store_id, candidates, needles, identities)
        by_link: dict[str, list[str]] = {}
        for token, url in links:
            identity = pager.link_identity(url)
            if identity is not None:
                by_link.setdefault(identity, []).append(token)
        items: list[InboxItem] = []
        hold: datetime | None = None
        for c in page:
            token, via, known = self._key(c, by_link, found, erased_links)
            if token is None:
                log.warning("%s: checkout %s has neither a usable recovery URL nor an id; skipped", self.store.key, c.external_id)
                continue
            if not known:
                if c.completed:
                    self.report.skipped_completed += 1
                    continue
                if c.updated_at is None or c.updated_at < self.now - self.start_within:
                    self.report.skipped_old += 1
                    continue
                if via == "id" and c.updated_at > self.now - self.unmatched_grace:
                    self.report.held_back += 1
                    hold = c.updated_at if hold is None or c.updated_at < hold else hold
                    continue
            counter = _COUNTERS[via]
            setattr(self.report, counter, getattr(self.report, counter) + 1)
            topic, key, body = pager.inbox_entry(c, token, via)
            items.append(InboxItem(store_id=self.store_id, source=pager.source, topic=topic, dedupe_key=key[:255],
                                   raw_body=body, headers={"x-storeloop-sync": "checkouts"}, triggered_at=c.updated_at))
        return items, hold

    @staticmethod
    def _key(c: PolledCheckout, by_link: dict[str, list[str]], found: set[str],
             erased_links: dict[str, str]) -> tuple[str | None, str, bool]:
        """(token, how it was chosen, whether we already store that checkout, or it was erased)."""
        if c.link_identity and (mark := erased_links.get(c.link_identity)):
            return mark, "erased", True  # the processor finds the mark and ignores the row
        tokens = by_link.get(c.link_identity or "") if c.link_identity else None
        if tokens:
            # the same link stored twice (a webhook that came after a fallback key): keep our own key steady
            for preferred in (c.link_token, c.fallback_token):
                if preferred in tokens:
                    return preferred, "known", True
            return sorted(tokens)[0], "known", True
        if c.link_token:
            return c.link_token, "link", c.link_token in found
        if c.fallback_token:
            return c.fallback_token, "id", c.fallback_token in found
        return None, "id", False

    async def _budget(self, cost: float) -> None:
        await budget(self.client, cost, self.report)

    async def _retrying(self, call: Callable[[], Awaitable[Any]]) -> Any:
        return await retrying(call, self.store.key, self.report, self.max_attempts, self.sleep)


__all__ = [
    "CHECKOUTS_CURSOR", "CheckoutPager", "CheckoutPollReport", "PolledCheckout", "START_WITHIN", "UNMATCHED_GRACE",
    "checkout_pager_for", "poll_abandoned_checkouts",
]
