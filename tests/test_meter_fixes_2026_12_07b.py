"""The messaging-limit meter's held messages (fixes of review rev7c, faults 1-3).

A held message is due again when the window would have room as the count stood at the hold; it goes sooner when
that no longer holds: the customer writes to the store (her service window opens: the template starts no
conversation), another message to her is counted, or Meta raises the limit. Meta counts unique recipients: a
customer of two stores of one deployment (one WhatsApp account, one limit) counts once.
"""

from __future__ import annotations

from collections import Counter
from datetime import timedelta

from connector.config import parse_settings
from connector.outbox.queue import queue_template
from tests.conftest import PHONE_ID_A, settings_dict
from tests.scenarios.conftest import _world_server, scenario, sqlite_url, world  # noqa: F401 (fixtures)
from tests.scenarios.stores import SHOPIFY
from tests.test_messaging_limit_2026_12_07b import (DAY, cod_asks, dispatch, limited, read_limit, reminders, statuses,
                                                    went_to)
from tests.test_number_health import account
from tests.test_outbox import CONTEXT, NOON_IST, TEMPLATES, Clock, outbox_rows, sandbox, seed_contact  # noqa: F401 (fixture)
from connector.reports import connector_health

THANKS = {"order_confirmation": {}}


def phone(n: int) -> str:
    return f"+9198765{n:05d}"


def limit_of(sc, users: int) -> None:
    """Meta says the portfolio may message ``users`` customers outside their window in 24 h."""
    account(sc, {"field": "business_capability_update", "value": {"max_daily_conversations_per_business": users}}, at=sc.now)
    sc.work()


def a_held_thanks(sc) -> int:
    """At a limit of 250, 251 buyers: the 251st's order thanks is held; returns her number."""
    limit_of(sc, 250)
    for n in range(251):
        SHOPIFY.place(sc, SHOPIFY.order(n, phone(n), sc.now, cod=False))
    sc.later(minutes=5, step=timedelta(minutes=5))
    assert sum(1 for n in range(251) if sc.templates_to(phone(n))) == 250
    [late] = [n for n in range(251) if not sc.templates_to(phone(n))]
    return late


# ---- 1. she writes to the store: her window is open -----------------------------------------------------------

def test_a_held_order_message_goes_once_the_customer_writes_to_the_store(sqlite_url, scenario, world):
    """(rev7c) Her thanks goes at the next round after she writes ("did my order go through?"), not a day later."""
    sc = scenario(sqlite_url, "shopify", journeys=THANKS)
    late = a_held_thanks(sc)
    sc.later(minutes=30)
    sc.say(phone(late), "did my order go through?")
    sc.later(minutes=5, step=timedelta(minutes=5))
    assert sc.templates_to(phone(late)) == ["order_thanks_v1"]


def test_another_customer_writing_frees_nobody_else(sqlite_url, scenario, world):
    """Only the writer's held message goes: the others still wait for the window to move."""
    sc = scenario(sqlite_url, "shopify", journeys=THANKS)
    limit_of(sc, 250)
    for n in range(252):
        SHOPIFY.place(sc, SHOPIFY.order(n, phone(n), sc.now, cod=False))
    sc.later(minutes=5, step=timedelta(minutes=5))
    late = [n for n in range(252) if not sc.templates_to(phone(n))]
    assert len(late) == 2
    sc.later(minutes=30)
    sc.say(phone(late[0]), "hello?")
    sc.later(minutes=10, step=timedelta(minutes=5))
    assert sc.templates_to(phone(late[0])) == ["order_thanks_v1"]
    assert sc.templates_to(phone(late[1])) == []


# ---- 1b. another message to her was counted -------------------------------------------------------------------

def test_a_held_reminder_goes_once_an_order_message_to_her_is_counted(db, db_url, sandbox):
    """At 250, reminders stop at 200: the 201st customer's reminder is held. Her COD question (utility, room up to
    250) then goes: she is counted, so her reminder starts nothing new and goes too, the same minute."""
    fake, url, settings, ids = limited(db, db_url, sandbox, "TIER_250")
    sid = ids["shop-a"]
    reminders(db, settings, sid, range(201))
    clock = Clock(NOON_IST)
    dispatch(db, settings, ids, clock, url)
    assert statuses(db) == {("remind", "sent"): 200, ("remind", "pending"): 1}
    [held] = [r for r in outbox_rows(db) if r.status == "pending"]
    her = held.payload["message"]["to"]

    clock.now += timedelta(minutes=10)
    cod_asks(db, settings, sid, [int(her[-7:])])  # her order's COD question
    dispatch(db, settings, ids, clock, url)
    dispatch(db, settings, ids, clock, url)
    assert Counter(c.to for c in fake.accepted())[her] == 2
    assert statuses(db) == {("remind", "sent"): 201, ("ask", "sent"): 1}


# ---- 2. Meta raises the limit ---------------------------------------------------------------------------------

def test_held_messages_go_once_meta_raises_the_limit(sqlite_url, scenario, world):
    """(rev7c) 250 -> 2,000: the order thanks held at 250 then have room; the buyer does not wait a day."""
    sc = scenario(sqlite_url, "shopify", journeys=THANKS)
    late = a_held_thanks(sc)
    sc.later(minutes=30)
    limit_of(sc, 2000)
    SHOPIFY.place(sc, SHOPIFY.order(251, phone(251), sc.now, cod=False))  # a new buyer: the 2,000 is in force
    sc.later(minutes=5, step=timedelta(minutes=5))
    assert sc.templates_to(phone(251)) == ["order_thanks_v1"]
    assert sc.templates_to(phone(late)) == ["order_thanks_v1"]


def test_held_reminders_go_when_the_worker_reads_a_raised_limit_and_the_dashboard_clears(db, db_url, sandbox):
    """The worker's reading of the number (not a webhook) says 1K: the reminders held at 250 go at the next
    dispatch, and the dashboard no longer shows sends held for the limit."""
    fake, url, settings, ids = limited(db, db_url, sandbox, "TIER_250")
    sid = ids["shop-a"]
    reminders(db, settings, sid, range(230))
    clock = Clock(NOON_IST)
    dispatch(db, settings, ids, clock, url)
    assert went_to(fake) == {"reorder_v1": 200}
    with db.engine.connect() as c:
        assert connector_health(c, sid, clock.now, PHONE_ID_A)["messaging_limit_hold"] == {
            "sends": 30, "until": (NOON_IST + DAY).isoformat()}

    clock.now += timedelta(hours=1)
    read_limit(db, settings, ids, url, fake, "TIER_1K", at=clock.now)
    dispatch(db, settings, ids, clock, url)
    assert went_to(fake) == {"reorder_v1": 230}
    with db.engine.connect() as c:
        assert connector_health(c, sid, clock.now, PHONE_ID_A)["messaging_limit_hold"] is None


def test_a_lowered_limit_leaves_held_messages_held(db, db_url, sandbox):
    """250 -> 50: nothing held has room: they keep waiting (and the dashboard keeps its time)."""
    fake, url, settings, ids = limited(db, db_url, sandbox, "TIER_250")
    sid = ids["shop-a"]
    reminders(db, settings, sid, range(210))
    clock = Clock(NOON_IST)
    dispatch(db, settings, ids, clock, url)
    clock.now += timedelta(hours=1)
    read_limit(db, settings, ids, url, fake, "TIER_50", at=clock.now)
    dispatch(db, settings, ids, clock, url)
    assert went_to(fake) == {"reorder_v1": 200}
    with db.engine.connect() as c:
        assert connector_health(c, sid, clock.now, PHONE_ID_A)["messaging_limit_hold"] == {
            "sends": 10, "until": (NOON_IST + DAY).isoformat()}


# ---- 3. one customer of two stores counts once ----------------------------------------------------------------

def two_stores(db_url: str, url: str):
    raw = settings_dict(db_url)
    raw["whatsapp"].update({"access_token": "sandbox-token", "graph_base_url": url, "pair_spacing_seconds": 0,
                            "messages_per_second": 1000})
    for store in raw["stores"][:2]:
        store.update(templates=TEMPLATES, policy={"utility_send_within_hours": 30, "marketing_send_within_hours": 30})
    return parse_settings(raw, environ={})


def ask(db, store, sid: int, number: str, n: int) -> None:
    cid = seed_contact(db, sid, phone=number)
    with db.engine.begin() as conn:
        queue_template(conn, store=store, store_id=sid, contact_id=cid, journey="cod_confirmation", step="ask",
                       subject=f"order:{n}", context=CONTEXT, now=NOON_IST)


def test_a_customer_of_two_stores_counts_once_against_the_shared_limit(db, db_url, sandbox):
    """(rev7c) Two stores of one WhatsApp Business Account (one shared limit, 250). 130 customers order in both:
    Meta counts 130 unique users messaged, so every order question goes."""
    fake, url, settings, ids = limited(db, db_url, sandbox, "TIER_250", two_stores)
    for n in range(130):
        for store in settings.stores[:2]:
            ask(db, store, ids[store.key], f"+91981{n:07d}", n)
    dispatch(db, settings, ids, Clock(NOON_IST), url)
    assert {r.status for r in outbox_rows(db)} == {"sent"}


def test_two_stores_together_still_stop_at_the_shared_limit(db, db_url, sandbox):
    """Distinct customers across the two stores still count one each: 150 + 150 at a limit of 250 sends 250."""
    fake, url, settings, ids = limited(db, db_url, sandbox, "TIER_250", two_stores)
    for i, store in enumerate(settings.stores[:2]):
        for n in range(150):
            ask(db, store, ids[store.key], f"+9198{i}{n:07d}", n)
    dispatch(db, settings, ids, Clock(NOON_IST), url)
    assert Counter(r.status for r in outbox_rows(db)) == {"sent": 250, "pending": 50}


def test_a_reminder_held_in_one_store_goes_once_the_other_store_messages_her(db, db_url, sandbox):
    """At 250 store A's reminders stop at 200: the 201st customer's is held. Store B, of the same account, then sends
    her an order question (utility, room up to 250): she is counted, so A's reminder to her goes too."""
    fake, url, settings, ids = limited(db, db_url, sandbox, "TIER_250", two_stores)
    a, b = settings.stores[:2]
    reminders(db, settings, ids[a.key], range(201))
    clock = Clock(NOON_IST)
    dispatch(db, settings, ids, clock, url)
    [held] = [r for r in outbox_rows(db) if r.status == "pending"]
    her = held.payload["message"]["to"]

    clock.now += timedelta(minutes=10)
    ask(db, b, ids[b.key], her, 1)
    dispatch(db, settings, ids, clock, url)
    dispatch(db, settings, ids, clock, url)
    assert Counter(c.to for c in fake.accepted())[her] == 2
    assert {r.status for r in outbox_rows(db)} == {"sent"}
