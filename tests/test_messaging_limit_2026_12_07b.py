"""WhatsApp's messaging limit, metered by the dispatcher.

Meta limits the unique customers a business portfolio may message outside their 24 h customer service
window in a moving 24 h (250, 2,000, 10,000, 100,000, unlimited; shared by all its numbers) and answers
no error when a send goes over it: the message is refused or never delivered. Before, the connector
kept the limit Meta said (the number's reading, ``business_capability_update``) and sent past it: a
store at 250 that queued a burst of 300 reminders lost 50 of them. Now:

1. marketing that would start a conversation with a customer not yet messaged so in the last 24 h stops
   at ``messaging_limit_marketing_percent`` of the limit (80% by default), order, COD and delivery
   messages (utility) may use the rest; what is held stays pending and goes out once the window moves;
2. a customer already messaged so in the window, or inside her own service window, is never held;
3. the count is what the stored rows say: two dispatchers at once, or a restarted one, keep to it;
4. no limit heard from Meta yet: nothing is held (the owner would not expect the lowest tier), said once;
5. the owner sees it: one log line when the meter starts holding, and on the dashboard and in
   ``storeloop report``: "held for the messaging limit: N sends, until HH:MM".

The real dispatcher against the sandbox Graph API on 127.0.0.1 (which answers the number's limit),
a virtual clock, SQLite and PostgreSQL; the owner's view through the real app and signed webhooks.
"""

from __future__ import annotations

import asyncio
import io
import logging
from collections import Counter
from datetime import timedelta

import pytest
from rich.console import Console
from sqlalchemy import update

from adapters.whatsapp.client import WhatsAppClient
from connector.config import parse_settings
from connector.number_health import note_reading
from connector.outbox.dispatcher import Dispatcher
from connector.reports import connector_health
from connector.storage import models as m
from connector.storage.inbox import sync_stores
from tests.conftest import PHONE_ID_A, settings_dict
from tests.scenarios.conftest import _world_server, scenario, sqlite_url, world  # noqa: F401 (fixtures)
from tests.scenarios.stores import SHOPIFY
from tests.test_number_health import account, dashboard
from tests.test_outbox import NOON_IST, TEMPLATES, Clock, outbox_rows, queue, sandbox, seed_contact  # noqa: F401 (fixture)
from tests.test_query_plans import conn, plan_of  # noqa: F401 (fixture)

DAY = timedelta(hours=24)


def limit_settings(db_url: str, url: str, **policy):
    """shop-a sending through the sandbox at 1,000/s (a burst drains in a second of real time); its
    messages may go up to 30 h after they were meant to (the defaults, 6 h for reminders and 24 h for order
    messages, would drop those held a day as too_late, as after any hold)."""
    raw = settings_dict(db_url)
    raw["whatsapp"].update({"access_token": "sandbox-token", "graph_base_url": url, "pair_spacing_seconds": 0,
                            "messages_per_second": 1000})
    raw["stores"][0].update(templates=TEMPLATES, policy={"marketing_send_within_hours": 30, "utility_send_within_hours": 30, **policy})
    return parse_settings(raw, environ={})


def phone(n: int) -> str:
    return f"+91981{n:07d}"


def read_limit(db, settings, ids, url, fake, limit: str, at=NOON_IST) -> None:
    """The worker's number-quality job: Meta (the sandbox) answers the number's limit, which is kept."""
    fake.messaging_limit = limit

    async def read():
        async with WhatsAppClient(url, settings.whatsapp.api_version, "sandbox-token") as client:
            return await client.number_quality(PHONE_ID_A)

    note_reading(db, settings.stores[0], ids["shop-a"], asyncio.run(read()), at)


def reminders(db, settings, sid, numbers) -> list[int]:
    """A reorder reminder (marketing) queued for each customer; returns their contact ids."""
    contacts = []
    for n in numbers:
        cid = seed_contact(db, sid, phone=phone(n))
        assert queue(db, settings, sid, cid, step="reorder.remind", subject=f"product:{n}").status == "pending"
        contacts.append(cid)
    return contacts


def cod_asks(db, settings, sid, numbers, subject: str = "order") -> None:
    """A COD question (utility) queued for each customer."""
    for n in numbers:
        cid = seed_contact(db, sid, phone=phone(n))
        assert queue(db, settings, sid, cid, subject=f"{subject}:{n}").status == "pending"


def dispatch(db, settings, ids, clock, url, workers: int = 1) -> int:
    """``workers`` dispatchers draining at once, each as a fresh process would (nothing kept in memory)."""
    async def one(n: int) -> int:
        client = WhatsAppClient(url, settings.whatsapp.api_version, "sandbox-token")
        try:
            return await Dispatcher(db, settings, ids, client, clock=clock, worker_id=f"w{n}").drain()
        finally:
            await client.aclose()

    async def run() -> list[int]:
        return await asyncio.gather(*(one(n) for n in range(workers)))

    return sum(asyncio.run(run()))


def statuses(db) -> Counter:
    return Counter((r.step, r.status) for r in outbox_rows(db))


def went_to(fake) -> Counter:
    """Sends Meta took per template; and no message went twice."""
    callbacks = Counter(c.callback_data for c in fake.accepted())
    assert set(callbacks.values()) <= {1}, "a message went out twice"
    return Counter(c.template for c in fake.accepted())


def limited(db, db_url, sandbox, tier: str | None, settings_of=None):  # type: ignore[no-untyped-def]
    """A deployment on the sandbox whose WhatsApp limit Meta said is ``tier`` (None: not said yet): (fake, url,
    settings, store ids). ``settings_of``: another deployment than ``limit_settings``'s one store."""
    fake, url = sandbox
    settings = (settings_of or limit_settings)(db_url, url)
    ids = sync_stores(db, [(s.key, s.platform) for s in settings.stores])
    if tier is not None:
        read_limit(db, settings, ids, url, fake, tier)
    return fake, url, settings, ids


def limit_lines(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "storeloop.dispatcher" and "messaging limit" in r.getMessage()]


# ---- 1. a burst at a 250 limit --------------------------------------------------------------------------

def test_a_burst_of_300_reminders_at_a_250_limit_sends_the_marketing_share_and_the_rest_once_the_window_moves(
        db, db_url, sandbox, caplog):
    fake, url, settings, ids = limited(db, db_url, sandbox, "TIER_250")
    sid = ids["shop-a"]
    reminders(db, settings, sid, range(300))
    clock = Clock(NOON_IST)

    with caplog.at_level(logging.INFO, logger="storeloop.dispatcher"):
        dispatch(db, settings, ids, clock, url)
        clock.now += timedelta(hours=1)
        dispatch(db, settings, ids, clock, url)  # an hour on: the window has not moved, nothing more
    assert went_to(fake) == {"reorder_v1": 200}  # 80% of 250: the rest of the limit stays for order messages
    assert statuses(db) == {("remind", "sent"): 200, ("remind", "pending"): 100}  # held, not failed, not lost
    [line] = [x for x in limit_lines(caplog) if "reached" in x]  # once for the episode, not once per message
    assert "200 of 250" in line and "shop-a" in line

    with db.engine.connect() as c:
        held = connector_health(c, sid, clock.now, PHONE_ID_A)["messaging_limit_hold"]
    assert held == {"sends": 100, "until": (NOON_IST + DAY).isoformat()}

    clock.now = NOON_IST + DAY + timedelta(minutes=1)  # the first 200 customers leave the moving window
    dispatch(db, settings, ids, clock, url)
    assert went_to(fake) == {"reorder_v1": 300}
    assert statuses(db) == {("remind", "sent"): 300}
    with db.engine.connect() as c:
        assert connector_health(c, sid, clock.now, PHONE_ID_A)["messaging_limit_hold"] is None


# ---- 1b. utility may use the rest ------------------------------------------------------------------------

def test_order_messages_use_the_rest_of_the_limit_once_marketing_stops(db, db_url, sandbox):
    fake, url, settings, ids = limited(db, db_url, sandbox, "TIER_250")
    sid = ids["shop-a"]
    reminders(db, settings, sid, range(210))
    cod_asks(db, settings, sid, range(1000, 1060))
    clock = Clock(NOON_IST)

    dispatch(db, settings, ids, clock, url)
    assert went_to(fake) == {"reorder_v1": 200, "cod_confirm_v1": 50}  # 200 + 50 = the whole limit
    assert statuses(db) == {("remind", "sent"): 200, ("remind", "pending"): 10, ("ask", "sent"): 50, ("ask", "pending"): 10}

    clock.now = NOON_IST + DAY + timedelta(minutes=1)
    dispatch(db, settings, ids, clock, url)
    assert went_to(fake) == {"reorder_v1": 210, "cod_confirm_v1": 60}
    assert set(s for _, s in statuses(db)) == {"sent"}


# ---- 2. never held: a customer already counted, or inside her service window --------------------------------

def test_a_customer_already_messaged_in_the_window_or_writing_to_the_store_is_never_held(db, db_url, sandbox):
    fake, url, settings, ids = limited(db, db_url, sandbox, "TIER_250")
    sid = ids["shop-a"]
    counted = reminders(db, settings, sid, range(200))
    cod_asks(db, settings, sid, range(1000, 1050))
    clock = Clock(NOON_IST)
    dispatch(db, settings, ids, clock, url)
    assert sum(went_to(fake).values()) == 250  # the whole limit is used

    clock.now += timedelta(hours=2)
    cod_asks(db, settings, sid, [0], subject="order-2")  # customer 0 was messaged two hours ago
    second = queue(db, settings, sid, counted[1], step="reorder.remind", subject="product:other")
    writing = seed_contact(db, sid, phone=phone(5000))
    with db.engine.begin() as c:  # she wrote to the store an hour ago
        c.execute(update(m.Contact).where(m.Contact.id == writing).values(last_inbound_at=clock.now - timedelta(hours=1)))
    assert second.status == "pending"
    assert queue(db, settings, sid, writing, step="reorder.remind", subject="product:5000").status == "pending"
    cod_asks(db, settings, sid, [6000])  # a new customer outside her window: the limit is reached
    dispatch(db, settings, ids, clock, url)

    to = Counter(c.to for c in fake.accepted())
    assert to[phone(0)] == 2 and to[phone(1)] == 2  # already counted: their second message goes at once
    assert to[phone(5000)] == 1  # she wrote an hour ago: inside her service window, no conversation to start
    assert to[phone(6000)] == 0
    [waiting] = [r for r in outbox_rows(db) if r.status == "pending"]
    assert waiting.payload["message"]["to"] == phone(6000) and waiting.due_at == NOON_IST + DAY


# ---- 3. what the stored rows say: several dispatchers, a restart --------------------------------------------

def test_two_dispatchers_at_once_keep_to_the_limit_together(db, db_url, sandbox):
    fake, url, settings, ids = limited(db, db_url, sandbox, "TIER_250")
    sid = ids["shop-a"]
    reminders(db, settings, sid, range(300))
    clock = Clock(NOON_IST)

    dispatch(db, settings, ids, clock, url, workers=2)
    assert went_to(fake) == {"reorder_v1": 200}
    dispatch(db, settings, ids, clock, url, workers=2)  # restarted: the count is read again from the rows
    assert went_to(fake) == {"reorder_v1": 200}
    assert statuses(db) == {("remind", "sent"): 200, ("remind", "pending"): 100}


# ---- 4. no limit heard yet ----------------------------------------------------------------------------------

def test_with_no_limit_heard_from_meta_nothing_is_held_and_the_log_says_so_once(db, db_url, sandbox, caplog):
    fake, url, settings, ids = limited(db, db_url, sandbox, None)
    reminders(db, settings, ids["shop-a"], range(300))

    with caplog.at_level(logging.INFO, logger="storeloop.dispatcher"):
        dispatch(db, settings, ids, Clock(NOON_IST), url)
    assert went_to(fake) == {"reorder_v1": 300}
    [line] = limit_lines(caplog)
    assert "not known" in line


def test_a_store_far_below_its_limit_sends_everything(db, db_url, sandbox):
    """At 2,000 (1,600 for marketing) a burst of 300 reminders goes out whole, the count read once and
    not again for each batch while it cannot have come near the limit."""
    fake, url, settings, ids = limited(db, db_url, sandbox, "TIER_2K")
    reminders(db, settings, ids["shop-a"], range(300))
    dispatch(db, settings, ids, Clock(NOON_IST), url)
    assert went_to(fake) == {"reorder_v1": 300}


def test_an_unlimited_portfolio_holds_nothing(db, db_url, sandbox):
    fake, url, settings, ids = limited(db, db_url, sandbox, "TIER_UNLIMITED")
    reminders(db, settings, ids["shop-a"], range(300))
    dispatch(db, settings, ids, Clock(NOON_IST), url)
    assert went_to(fake) == {"reorder_v1": 300}


# ---- 5. the owner sees it -----------------------------------------------------------------------------------

LADDER = {"checkout_recovery": {"abandon_after_minutes": 30, "ladder_minutes": [0]}}  # one reminder per cart


def test_the_owner_sees_the_sends_held_for_the_messaging_limit_and_until_when(sqlite_url, scenario, world, caplog):
    """Meta says the portfolio's limit is 250 (``business_capability_update``); this store keeps 2% of it for
    cart reminders (5 customers). Eight shoppers leave their carts: five first reminders go, three wait, and the
    dashboard and the report say so."""
    sc = scenario(sqlite_url, "shopify", journeys=LADDER, policy={"messaging_limit_marketing_percent": 2,
                                                                  "marketing_send_within_hours": 30})
    account(sc, {"field": "business_capability_update", "value": {"max_daily_conversations_per_business": 250}}, at=sc.now)
    sc.work()
    shoppers = [f"+9198765{n:05d}" for n in range(8)]
    start = sc.now
    with caplog.at_level(logging.INFO, logger="storeloop.dispatcher"):
        for n, shopper in enumerate(shoppers):
            SHOPIFY.start_checkout(sc, f"tok{n}", shopper)
        sc.later(minutes=40, step=timedelta(minutes=10))
        sc.later(minutes=30, step=timedelta(minutes=10))
    reached = [s for s in shoppers if sc.templates_to(s)]
    assert len(reached) == 5 and all(sc.templates_to(s) == ["cart_1_v1"] for s in reached)
    [line] = [x for x in limit_lines(caplog) if "reached" in x]
    assert "5 of 250" in line

    first_went = start + timedelta(minutes=30)
    callout = dashboard(sc).split('id="whatsapp-limit-held"')[1].split("</div>")[0]
    assert "held for the messaging limit: 3 sends, until" in callout
    assert (first_went + DAY).astimezone(sc.settings.stores[0].tz).strftime("%H:%M") in callout

    from connector.report_view import render_health

    out = Console(file=io.StringIO(), width=200)
    render_health(sc.report()["connector_health"], out, "shop-a", tz=sc.settings.stores[0].timezone)
    assert "held for the messaging limit: 3 sends, until" in out.file.getvalue()

    sc.at(first_went + DAY + timedelta(minutes=20), step=timedelta(hours=1))  # the window moves
    assert all(sc.templates_to(s) == ["cart_1_v1"] for s in shoppers)  # each shopper got her reminder, once
    assert 'id="whatsapp-limit-held"' not in dashboard(sc)


# ---- the setting ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("value", [0, 101, -5, "80"])
def test_the_marketing_share_must_be_a_percent(value):
    raw = settings_dict("sqlite:///x.db")
    raw["stores"][0]["policy"] = {"messaging_limit_marketing_percent": value}
    with pytest.raises(Exception) as err:
        parse_settings(raw, environ={})
    assert "messaging_limit_marketing_percent" in str(err.value)


def test_the_marketing_share_defaults_to_80_percent():
    assert parse_settings(settings_dict("sqlite:///x.db"), environ={}).stores[0].policy.messaging_limit_marketing_percent == 80


# ---- what the count reads --------------------------------------------------------------------------------------

def test_the_count_reads_a_day_and_a_little_of_sends_by_index_not_the_send_history(conn):  # noqa: F811 (fixture)
    """Per claim near the limit: the sent rows by the (status, due_at) index from the window's start less the
    longest send_within limit, each one's contact by its key and its message by the outbox index."""
    from connector.outbox.meter import _SENT_TEMPLATES

    plan = plan_of(conn, _SENT_TEMPLATES, {"sids": [1, 2, 3], "since": NOON_IST - DAY, "floor": NOON_IST - 2 * DAY})
    assert "SEARCH outbox USING INDEX ix_outbox_status_due (status=? AND due_at>?)" in plan, plan
    assert "SCAN" not in plan and "ix_messages_store_outbox" in plan, plan
