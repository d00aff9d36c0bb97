"""The outbox review of 2026-12-07, second pass: what a store owner or customer saw go wrong in sending.

1. Meta's API call rate limits (4 the app's, 80007 the WhatsApp Business Account's, 17 the user's,
   613 Graph's): each answer spent one of the message's 8 tries, whose backoff lasts about 4
   minutes, while Meta's window lasts up to an hour: a throttled burst failed its messages for good.
   Now the number's sends wait (Meta's hint honoured), no try is spent, and each goes out once after;
2. 33 (the business phone number deleted, or its id not valid): every queued message failed for
   good, as if each were at fault; now they wait and the number pauses, as for 133010;
3. a customer's first name that is only spaces went to Meta as is (Meta refuses an empty
   parameter: the whole message fails); now it is missing, so "there" stands in, and a value a
   template cannot do without skips the message as ``missing_value``;
4. a store write-back batch that outran its lease: another worker took its rows over and called
   the store a second time for each; now no call starts that the rest of the lease cannot cover.

Real dispatchers and clients, a virtual clock, and fakes at the HTTP boundary (the sandbox Graph
API on 127.0.0.1, respx for the store).
"""

from __future__ import annotations

import asyncio
import json
from datetime import timedelta

import pytest

from adapters.whatsapp.client import WhatsAppClient
from connector.outbox.dispatcher import Dispatcher
from connector.sandbox.whatsapp import ScriptedResponse
from connector.storage.inbox import sync_stores
from tests.test_outbox import CONTEXT, NOON_IST, PHONE, Clock, dispatch, outbox_rows, queue, sandbox, seed_contact, settings_for  # noqa: F401
from tests.test_outbox_review_2026_12_07 import MEERA, RAVI, graph_error


def _three_queued(db, settings, sid) -> list:
    return [queue(db, settings, sid, seed_contact(db, sid, phone=p), subject=f"order:{n}") for n, p in enumerate((PHONE, RAVI, MEERA))]


def over_an_hour(db, settings, ids, clock: Clock, url: str, fake, *, window: timedelta, step: timedelta = timedelta(minutes=1),
                 until: timedelta = timedelta(minutes=75)) -> list[int]:
    """One long-running dispatcher, its loop turning once a ``step`` of virtual time from now until
    ``until``; Meta's scripted answers stop ``window`` after the start (the window closed). Returns
    the minutes at which a call reached Meta."""
    start = clock.now

    async def run() -> list[int]:
        client = WhatsAppClient(url, settings.whatsapp.api_version, "sandbox-token")
        dispatcher = Dispatcher(db, settings, ids, client, clock=clock)
        minutes: list[int] = []
        try:
            while clock.now - start <= until:
                if clock.now - start >= window:
                    fake.script.clear()
                before = len(fake.calls)
                while await dispatcher.run_once():
                    pass
                await dispatcher.flush()
                minutes += [int((clock.now - start).total_seconds() // 60)] * (len(fake.calls) - before)
                clock.now += step
        finally:
            await dispatcher.close()
            await client.aclose()
        return minutes

    return asyncio.run(run())


# ---- 1. Meta's API call rate limits ------------------------------------------------------------

@pytest.mark.parametrize("code, message", [
    (4, "Application request limit reached"),
    (80007, "Rate limit issues"),
    (17, "User request limit reached"),
    (613, "Calls to this api have exceeded the rate limit."),
])
def test_a_rate_limit_lasting_an_hour_fails_no_message_and_each_goes_once_after(db, db_url, sandbox, code, message):
    """Meta's call-rate window lasts up to an hour. Before: each refusal spent a try, 8 tries of backoff
    lasted about 4 minutes, and the three messages ended failed for good, never sent."""
    fake, url = sandbox
    settings = settings_for(db_url, url)
    ids = sync_stores(db, [(s.key, s.platform) for s in settings.stores])
    queued = _three_queued(db, settings, ids["shop-a"])
    fake.script.extend([graph_error(400, code, message)] * 60)
    clock = Clock(NOON_IST)

    minutes = over_an_hour(db, settings, ids, clock, url, fake, window=timedelta(minutes=60))
    assert sorted(c.callback_data for c in fake.accepted()) == sorted(f"outbox:{q.outbox_id}" for q in queued)  # each once
    assert [(r.status, r.attempts) for r in outbox_rows(db)] == [("sent", 1)] * 3  # the refusals spent no try
    refused = [m for m, c in zip(minutes, fake.calls) if c.status != 200]
    assert len(refused) <= 12  # the number's sends wait; one message tries again now and then, not each of them


def test_a_rate_limit_with_metas_estimate_sends_nothing_before_it(db, db_url, sandbox):
    """Meta's X-Business-Use-Case-Usage says how long until the calls are taken again
    (``estimated_time_to_regain_access``, minutes): nothing is tried before. Before: the messages were
    retried within seconds, each call counting against the limit, and failed for good within 4 minutes."""
    fake, url = sandbox
    settings = settings_for(db_url, url)
    ids = sync_stores(db, [(s.key, s.platform) for s in settings.stores])
    queued = _three_queued(db, settings, ids["shop-a"])
    usage = {"102290129340398": [{"type": "whatsapp_business_management", "call_count": 100, "total_cputime": 12, "total_time": 9,
                                  "estimated_time_to_regain_access": 30}]}
    refusal = graph_error(400, 80007, "Rate limit issues")
    fake.script.extend([ScriptedResponse(refusal.status, refusal.body, {"X-Business-Use-Case-Usage": json.dumps(usage)})] * 60)
    clock = Clock(NOON_IST)

    minutes = over_an_hour(db, settings, ids, clock, url, fake, window=timedelta(minutes=30), until=timedelta(minutes=40))
    assert all(m == 0 or m >= 30 for m in minutes)  # nothing between the refusal and Meta's estimate
    assert sorted(c.callback_data for c in fake.accepted()) == sorted(f"outbox:{q.outbox_id}" for q in queued)
    assert [(r.status, r.attempts) for r in outbox_rows(db)] == [("sent", 1)] * 3


# ---- 2. code 33: the business phone number deleted ---------------------------------------------

def test_the_business_number_deleted_fails_no_message_and_they_go_once_it_is_fixed(db, db_url, sandbox):
    """Meta's error page: 33, "The business phone number has been deleted" (elsewhere: the phone number
    id is not valid): about the number every message is sent from, not any one message."""
    fake, url = sandbox
    settings = settings_for(db_url, url)
    ids = sync_stores(db, [(s.key, s.platform) for s in settings.stores])
    queued = _three_queued(db, settings, ids["shop-a"])
    fake.script.extend([graph_error(400, 33, "Parameter value is not valid")] * 50)
    clock = Clock(NOON_IST)

    dispatch(db, settings, ids, clock, url)
    assert fake.accepted() == [] and 1 <= len(fake.calls) <= 3
    assert [(r.status, r.attempts) for r in outbox_rows(db)] == [("pending", 0)] * 3  # waiting, none failed, no try spent

    fake.script.clear()  # the owner sets the right number (or adds it back) and restarts
    clock.now = NOON_IST + timedelta(minutes=2)
    for _ in range(3):
        dispatch(db, settings, ids, clock, url)
    assert sorted(c.callback_data for c in fake.accepted()) == sorted(f"outbox:{q.outbox_id}" for q in queued)
    assert [r.status for r in outbox_rows(db)] == ["sent"] * 3


# ---- 3. a value blank after trimming -------------------------------------------------------------

@pytest.mark.parametrize("name", ["   ", " \t ", "\n"])
def test_a_first_name_of_only_spaces_greets_her_as_there(db, db_url, sandbox, name):
    fake, url = sandbox
    settings = settings_for(db_url, url)
    ids = sync_stores(db, [(s.key, s.platform) for s in settings.stores])
    sid = ids["shop-a"]
    queued = queue(db, settings, sid, seed_contact(db, sid), context={**CONTEXT, "customer.first_name": name})
    assert queued.status == "pending"
    dispatch(db, settings, ids, Clock(NOON_IST), url)
    [call] = fake.accepted()
    assert call.params[0] == "there"


def test_a_value_the_template_needs_that_is_only_spaces_skips_the_message_as_missing(db, db_url, sandbox):
    fake, url = sandbox
    settings = settings_for(db_url, url)
    ids = sync_stores(db, [(s.key, s.platform) for s in settings.stores])
    sid = ids["shop-a"]
    queued = queue(db, settings, sid, seed_contact(db, sid), step="reorder.remind", subject="reorder:1",
                   context={**CONTEXT, "reorder.product": "  "})
    assert queued.status == "skipped"
    dispatch(db, settings, ids, Clock(NOON_IST + timedelta(minutes=1)), url)
    assert fake.calls == []
    [row] = outbox_rows(db)
    assert row.status == "skipped" and row.skip_reason.startswith("missing_value")


# ---- 4. a store write-back batch that outruns its lease ----------------------------------------

def test_two_workers_and_a_slow_store_tag_each_confirmed_order_once(db, db_url):
    """Ten COD orders confirmed at once; Shopify takes 40 s to answer each tag. While worker A's call is
    in flight, worker B polls (its own calls take their 40 s too). Before: A's batch ran past its 5-minute
    lease, B expired it, made every row due again and tagged them all a second time (A's calls already
    made, whose results were not yet recorded, and the ones A went on to make), each row's trail showing
    a lost call. Now A starts no call its lease cannot cover and leaves those rows for the next claim."""
    import random
    from collections import Counter

    import httpx
    import respx

    from adapters.shopify.client import ShopifyAdminClient
    from connector.config import parse_settings
    from connector.outbox.writebacks import WriteBackDispatcher
    from connector.storage.db import Database
    from tests.conftest import settings_dict
    from tests.test_notify_leases import until_idle
    from tests.test_writebacks import GRAPHQL, T0, TAGGED, outbox
    from tests.test_writebacks import Clock as WbClock
    from tests.test_writebacks import queue as queue_writeback

    raw = settings_dict(db_url)
    raw["stores"][0].update(access_token="shpat_test", api_base_url="https://shop-a.example")
    store_settings = parse_settings(raw, environ={})
    ids = sync_stores(db, [(s.key, s.platform) for s in store_settings.stores])
    rows = [queue_writeback(db, ids["shop-a"], "add_tags", {"tags": ["cod-confirmed"]}, order_id=str(1000 + n),
                            step=f"confirm_tag_{n}") for n in range(10)]
    clock = WbClock(T0)
    tagged: list[str] = []
    in_poll = False

    def slow_shopify(other):  # type: ignore[no-untyped-def]
        async def answer(request: httpx.Request) -> httpx.Response:
            nonlocal in_poll
            tagged.append(json.loads(request.content)["variables"]["id"])
            clock.now += timedelta(seconds=40)
            if not in_poll:  # the other worker's loop runs while this call is in flight
                in_poll = True
                try:
                    await other().run_once()
                finally:
                    in_poll = False
            return httpx.Response(200, json=TAGGED)
        return answer

    def worker(answer) -> WriteBackDispatcher:  # type: ignore[no-untyped-def]
        shopify = respx.Router(assert_all_mocked=True)
        shopify.post(GRAPHQL).mock(side_effect=answer)
        client = ShopifyAdminClient(store_settings.store("shop-a"),
                                    http=httpx.AsyncClient(transport=httpx.MockTransport(shopify.async_handler)))
        return WriteBackDispatcher(Database.from_url(db_url), store_settings, ids, {ids["shop-a"]: client}, clock=clock,
                                   rng=random.Random(0), concurrency=1)

    a: WriteBackDispatcher = worker(slow_shopify(lambda: b))
    b: WriteBackDispatcher = worker(slow_shopify(lambda: a))

    async def both() -> None:
        try:
            await until_idle(a, b)
        finally:
            for w in (a, b):
                for client in w.writers.values():
                    await client.aclose()
                w.db.dispose()

    asyncio.run(both())
    assert Counter(tagged) == Counter(f"gid://shopify/Order/{1000 + n}" for n in range(10))  # each order tagged once
    for oid in rows:
        row, trail = outbox(db, oid)
        assert (row.status, row.attempts) == ("sent", 1)
        assert [t[0] for t in trail] == ["sent"]  # no lease ran out: no lost call on record
