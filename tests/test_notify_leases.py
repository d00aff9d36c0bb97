"""Several workers share the outbox (PostgreSQL, ``storeloop worker`` more than once): what a
stage owner and a merchant see when a hook or a store is slow, or a worker stalls mid-batch.

- two workers and a Slack hook taking 10 s an alert: each case is posted once, not again by
  the other worker when the first one's batch outlives its lease;
- a worker that stalls past its lease with an alert in flight posts no more of its batch, and
  its late result (a timeout) never undoes the other worker's, which took the rows over: the
  case says its owner was told, and no retry tells them again;
- the same for a store write-back: a late "gave up" from the stalled worker opens no "do it by
  hand" case for a tag the other worker wrote.

Each worker has its own database connection and its own fake at the HTTP boundary (respx);
time is the workers' injected clock, moved by the fakes as their calls "take" it.
"""

from __future__ import annotations

import asyncio
import logging
import random
import re
from collections import Counter
from collections.abc import Awaitable, Callable
from datetime import timedelta

import httpx
import respx
from sqlalchemy import select

from adapters.shopify.client import ShopifyAdminClient
from connector import events as ev
from connector.config import parse_settings
from connector.handoffs import HandoffRequest, open_handoff
from connector.outbox.notify import NotifyDispatcher
from connector.outbox.writebacks import WriteBackDispatcher
from connector.state import upsert_contact
from connector.storage.db import Database
from connector.storage.inbox import sync_stores
from connector.storage.sql import ATTEMPTS, OUTBOX
from tests.conftest import settings_dict
from tests.test_handoffs import HOOK, settings
from tests.test_writebacks import GRAPHQL, T0, TAGGED, Clock, handoffs, outbox, queue

Answer = Callable[[httpx.Request], Awaitable[httpx.Response]]


def open_cases(db: Database, store_settings, ids: dict[str, int], n: int) -> list[int]:
    """``n`` customers of shop-a whose parcels went missing: one case each, for the delivery desk (which has a hook)."""
    store, sid, cases = store_settings.store("shop-a"), ids["shop-a"], []
    with db.engine.begin() as conn:
        for i in range(n):
            phone = f"+9198765{i:05d}"
            cid = upsert_contact(conn, sid, T0, phone=ev.Phone(raw=phone, e164=phone), customer=ev.Customer(first_name=f"Customer {i}"))
            cases.append(open_handoff(conn, store, sid, cid, HandoffRequest(
                f"parcel:{i}", f"Customer {i}: my parcel never came", "delivery", stage="post_purchase"), T0))
    return cases


def case_of(request: httpx.Request) -> int:
    """The hand-off an alert is about, from its text (``*shop-a: hand-off #12* for ...``)."""
    found = re.search(r"hand-off #(\d+)\*", request.read().decode())
    assert found is not None
    return int(found.group(1))


def notifier(db_url: str, store_settings, ids: dict[str, int], clock: Clock, answer: Answer) -> NotifyDispatcher:
    """One worker's notifier: its own database connection, and the hook as this worker reaches it."""
    hook = respx.Router(assert_all_mocked=True)
    hook.post(HOOK).mock(side_effect=answer)
    return NotifyDispatcher(Database.from_url(db_url), store_settings, ids,
                            http=httpx.AsyncClient(transport=httpx.MockTransport(hook.async_handler)), clock=clock)


async def close(*workers: NotifyDispatcher) -> None:
    for w in workers:
        await w.aclose()
        w.db.dispose()


def notify_rows(db: Database) -> dict[int, tuple[str, int]]:
    with db.engine.connect() as conn:
        rows = conn.execute(select(OUTBOX.c.payload, OUTBOX.c.status, OUTBOX.c.attempts).where(OUTBOX.c.channel == "notify")).all()
    return {r.payload["handoff_id"]: (r.status, r.attempts) for r in rows}


def trails(db: Database) -> dict[int, list[str]]:
    """Each notification's attempt rows (outcomes, in order), by hand-off."""
    with db.engine.connect() as conn:
        rows = conn.execute(select(OUTBOX.c.payload, ATTEMPTS.c.outcome).join(ATTEMPTS, ATTEMPTS.c.outbox_id == OUTBOX.c.id)
                            .where(OUTBOX.c.channel == "notify").order_by(ATTEMPTS.c.id)).all()
    out: dict[int, list[str]] = {}
    for r in rows:
        out.setdefault(r.payload["handoff_id"], []).append(r.outcome)
    return out


async def until_idle(*workers) -> None:  # type: ignore[no-untyped-def]
    """The workers' loops, taking turns, until none finds anything to do."""
    while sum([await w.run_once() for w in workers]):
        pass


# ---- 1. a slow hook, two workers ------------------------------------------------------------

def test_two_workers_and_a_hook_taking_10_s_an_alert_tell_the_owner_of_each_case_once(db, db_url):
    """20 cases at once; Slack takes 10 s to answer each alert. While one worker's call is in
    flight the other polls (and its own calls take their 10 s too), so the first worker's batch
    runs past what its lease covered: before the fix the other worker expired that lease, made
    every row of the batch due again and posted all 20 a second time."""
    store_settings = settings(db_url)
    ids = sync_stores(db, [(s.key, s.platform) for s in store_settings.stores])
    cases = open_cases(db, store_settings, ids, 20)
    clock = Clock(T0)
    heard: list[int] = []
    in_poll = False

    def slow_hook(other: Callable[[], NotifyDispatcher]) -> Answer:
        async def answer(request: httpx.Request) -> httpx.Response:
            nonlocal in_poll
            heard.append(case_of(request))
            clock.now += timedelta(seconds=10)
            if not in_poll:  # the other worker's loop runs while this call is in flight
                in_poll = True
                try:
                    await other().run_once()
                finally:
                    in_poll = False
            return httpx.Response(200, text="ok")
        return answer

    a: NotifyDispatcher = notifier(db_url, store_settings, ids, clock, slow_hook(lambda: b))
    b: NotifyDispatcher = notifier(db_url, store_settings, ids, clock, slow_hook(lambda: a))

    async def both() -> None:
        try:
            await until_idle(a, b)
        finally:
            await close(a, b)

    asyncio.run(both())
    assert Counter(heard) == Counter(cases)  # every case's alert reached Slack, once
    assert notify_rows(db) == {hid: ("sent", 1) for hid in cases}
    assert trails(db) == {hid: ["sent"] for hid in cases}  # no lease ran out: no lost call on record


# ---- 2. a worker that stalls past its lease -------------------------------------------------

def test_a_worker_stalled_past_its_lease_posts_no_more_and_its_late_timeout_leaves_the_owner_told(db, db_url, caplog):
    """Worker A's host pauses for 3 minutes with its first alert in flight; its lease runs out and
    worker B takes the three alerts over. B's call for the first case is in flight when A wakes,
    its call timed out, and records. Before the fix A went on to post the other two (B posted them
    too) and its "retry" for the first case replaced B's claim: B's success was never recorded,
    and an hour later the first case's owner was told a second time."""
    store_settings = settings(db_url)
    ids = sync_stores(db, [(s.key, s.platform) for s in store_settings.stores])
    first, *others = cases = open_cases(db, store_settings, ids, 3)
    clock = Clock(T0)
    told: list[tuple[str, int]] = []  # (worker, case) of each alert Slack took
    a_stalled, b_posting, a_wakes, b_answers = (asyncio.Event() for _ in range(4))

    async def hook_for_a(request: httpx.Request) -> httpx.Response:
        if not a_stalled.is_set():
            clock.now += timedelta(minutes=3)
            a_stalled.set()
            await a_wakes.wait()
            raise httpx.ReadTimeout("no answer", request=request)
        told.append(("a", case_of(request)))
        return httpx.Response(200, text="ok")

    async def hook_for_b(request: httpx.Request) -> httpx.Response:
        if not b_posting.is_set():
            b_posting.set()
            await b_answers.wait()
        told.append(("b", case_of(request)))
        return httpx.Response(200, text="ok")

    a = notifier(db_url, store_settings, ids, clock, hook_for_a)
    b = notifier(db_url, store_settings, ids, clock, hook_for_b)

    async def story() -> None:
        try:
            worker_a = asyncio.create_task(a.run_once())
            await asyncio.wait_for(a_stalled.wait(), 10)
            worker_b = asyncio.create_task(b.run_once())
            await asyncio.wait_for(b_posting.wait(), 10)  # B expired A's lease and took the alerts over
            a_wakes.set()
            await worker_a  # A's late result, recorded while B holds the rows
            b_answers.set()
            await worker_b
            clock.now += timedelta(hours=1)  # past any retry's backoff
            await until_idle(a, b)
        finally:
            await close(a, b)

    with caplog.at_level(logging.WARNING, logger="storeloop"):
        asyncio.run(story())
    assert sorted(told) == sorted(("b", hid) for hid in cases)  # each owner told once, by B; A posted nothing more
    assert {hid: status for hid, (status, _) in notify_rows(db).items()} == {hid: "sent" for hid in cases}
    trail = trails(db)
    # A's timed-out call is on record (as is the lost lease), and B's alert that reached Slack
    assert sorted(trail[first]) == ["retry", "sent", "uncertain"]
    assert all(sorted(trail[hid]) == ["sent", "uncertain"] for hid in others)
    assert any("result came after the lease ran out" in r.getMessage() for r in caplog.records)


# ---- 3. the same for a store write-back ----------------------------------------------------

def test_a_late_given_up_write_back_opens_no_hand_off_for_a_tag_the_other_worker_wrote(db, db_url):
    """Shopify was down for two tries of the COD confirmation's tag. Worker A's third (and last
    allowed) try stalls past its 5-minute lease and ends in a 503; meanwhile worker B took the row
    over and wrote the tag. Before the fix A's late "gave up" replaced B's claim: the row read
    failed and a case told the COD team to tag the order by hand, though it was tagged."""
    raw = settings_dict(db_url)
    raw["whatsapp"].update(max_attempts=3)
    raw["stores"][0].update(access_token="shpat_test", api_base_url="https://shop-a.example")
    store_settings = parse_settings(raw, environ={})
    ids = sync_stores(db, [(s.key, s.platform) for s in store_settings.stores])
    oid = queue(db, ids["shop-a"], "add_tags", {"tags": ["cod-confirmed"]})
    with db.engine.begin() as conn:  # what the two tries during Shopify's outage left
        conn.execute(OUTBOX.update().where(OUTBOX.c.id == oid).values(attempts=2))
    clock = Clock(T0)
    a_stalled, b_calling, a_wakes, b_answers = (asyncio.Event() for _ in range(4))
    tagged: list[str] = []

    async def shopify_for_a(request: httpx.Request) -> httpx.Response:
        clock.now += timedelta(minutes=6)
        a_stalled.set()
        await a_wakes.wait()
        return httpx.Response(503)

    async def shopify_for_b(request: httpx.Request) -> httpx.Response:
        b_calling.set()
        await b_answers.wait()
        tagged.append("b")
        return httpx.Response(200, json=TAGGED)

    def worker(answer: Answer) -> WriteBackDispatcher:
        shopify = respx.Router(assert_all_mocked=True)
        shopify.post(GRAPHQL).mock(side_effect=answer)
        client = ShopifyAdminClient(store_settings.store("shop-a"),
                                    http=httpx.AsyncClient(transport=httpx.MockTransport(shopify.async_handler)))
        return WriteBackDispatcher(Database.from_url(db_url), store_settings, ids, {ids["shop-a"]: client}, clock=clock,
                                   rng=random.Random(0))

    a, b = worker(shopify_for_a), worker(shopify_for_b)

    async def story() -> None:
        try:
            worker_a = asyncio.create_task(a.run_once())
            await asyncio.wait_for(a_stalled.wait(), 10)
            worker_b = asyncio.create_task(b.run_once())
            await asyncio.wait_for(b_calling.wait(), 10)  # B expired A's lease and is writing the tag
            a_wakes.set()
            await worker_a  # A's late "gave up", recorded while B holds the row
            b_answers.set()
            await worker_b
            clock.now += timedelta(hours=1)
            await until_idle(a, b)
        finally:
            for w in (a, b):
                for client in w.writers.values():
                    await client.aclose()
                w.db.dispose()

    asyncio.run(story())
    row, trail = outbox(db, oid)
    assert tagged == ["b"]
    assert row.status == "sent"
    assert handoffs(db) == []  # nobody is asked to tag by hand an order that is tagged
    assert sorted(t[0] for t in trail) == ["failed", "sent", "uncertain"]  # A's late 503 stays on record
