"""A restriction Meta gave an end expires: the number's state and its case say so.

Meta sends ``account_update`` when it restricts the account (``restriction_info`` with an
``expiration``) and when it lifts a restriction early, but nothing when one simply runs out.
Before, the sends resumed at its end (the outbox reads ``whatsapp_held_until``) while the store
row still listed the restriction as current and the owner's case, opened for it, never heard
that it ended. Now the worker's round after the end notes it on the row (the dashboard and the
report say when it ended) and adds it to the open case, telling its owner once, as a lift
Meta sends is told; Meta repeating the old restriction afterwards tells nobody and holds nothing.

Real app, signed webhooks, a virtual clock, fake Graph API and Slack hooks (tests/scenarios),
on SQLite and PostgreSQL.
"""

from __future__ import annotations

import logging
from contextlib import contextmanager
from datetime import timedelta

import pytest
from sqlalchemy import text, update

from connector.storage import models as m
from tests.scenarios.conftest import _world_server, scenario, world  # noqa: F401 (fixtures)
from tests.scenarios.stores import SHOPIFY
from tests.scenarios.test_store_journeys import COD, LADDER
from tests.test_number_health import ASHA, RAVI, account, dashboard, outbox, restriction, told, whatsapp_health


def test_a_restriction_that_runs_out_is_noted_ended_and_its_case_hears_it_once(db_url, scenario, world):
    sc = scenario(db_url, "shopify", journeys=COD)
    start = sc.now
    until = start + timedelta(hours=2)
    restricted = restriction("RESTRICTED_BIZ_INITIATED_MESSAGING", until=until)
    account(sc, restricted, at=start)
    SHOPIFY.place(sc, SHOPIFY.order(1, ASHA, sc.now))
    sc.later(minutes=30)
    assert outbox(sc) == [("ask", "pending", 0)]
    [(_, opened)] = told(world)
    assert "Meta restricted the WhatsApp Business Account" in opened
    assert whatsapp_health(sc).get("restriction_ended_at") is None

    sc.at(until + timedelta(minutes=1))
    assert outbox(sc) == [("ask", "sent", 1)]
    [case] = sc.handoffs("open")
    assert [u["reason"] for u in case["context"].get("updates", [])] == [
        "The restriction Meta put on the WhatsApp Business Account (RESTRICTED_BIZ_INITIATED_MESSAGING) "
        f"ended {until:%Y-%m-%d %H:%M} UTC: waiting messages go out now; none was held past its send_within limit"]
    assert len(told(world)) == 2 and "Update: The restriction Meta put on the WhatsApp Business Account" in told(world)[1][1]
    health = whatsapp_health(sc)
    assert health["sends_held"] is None and health.get("restriction_ended_at") == until.isoformat()
    assert "restriction of the account ended" in dashboard(sc)
    assert "sends resumed; no message was held past its send_within limit" in dashboard(sc)

    # more rounds, and Meta repeating the old restriction (its retry, after the end): nobody is told again
    account(sc, restricted, at=start)
    sc.later(hours=1, step=timedelta(minutes=10))
    assert len(told(world)) == 2 and len(sc.handoffs("open")[0]["context"]["updates"]) == 1
    assert whatsapp_health(sc).get("restriction_ended_at") == until.isoformat()


def test_a_restriction_meta_lifts_early_is_noted_ended_when_meta_says_so(db_url, scenario, world):
    """The lift Meta sends (the restriction list without a messaging restriction) ends it at once: the
    row says when, the case hears it, and the later end of the original time tells nobody again."""
    sc = scenario(db_url, "shopify", journeys=COD)
    until = sc.now + timedelta(hours=6)
    account(sc, restriction("RESTRICTED_BIZ_INITIATED_MESSAGING", until=until), at=sc.now)
    sc.later(minutes=30)
    lifted_at = sc.now
    account(sc, {"field": "account_update", "value": {"event": "ACCOUNT_RESTRICTION", "restriction_info": []}}, at=lifted_at)
    sc.later(minutes=5)
    assert whatsapp_health(sc).get("restriction_ended_at") == lifted_at.isoformat()
    assert len(told(world)) == 2 and "no longer restricts" in told(world)[1][1]
    sc.at(until + timedelta(hours=1), step=timedelta(hours=1))
    assert len(told(world)) == 2


@contextmanager
def refusing_the_note(sc):
    """The database refuses every change of the stores' hold (``whatsapp_held_until``), as a trigger would that
    someone left behind: noting a restriction's end fails at every round. Dropped after (the PostgreSQL schema
    is the session's)."""
    pg = sc.runtime.db.engine.dialect.name == "postgresql"
    with sc.runtime.db.engine.begin() as conn:
        if pg:
            conn.execute(text("CREATE FUNCTION refuse_note() RETURNS trigger LANGUAGE plpgsql AS "
                              "$$ BEGIN RAISE EXCEPTION 'the hold may not change'; END $$"))
            conn.execute(text("CREATE TRIGGER refuse_note BEFORE UPDATE OF whatsapp_held_until ON stores "
                              "FOR EACH ROW EXECUTE FUNCTION refuse_note()"))
        else:
            conn.execute(text("CREATE TRIGGER refuse_note BEFORE UPDATE OF whatsapp_held_until ON stores "
                              "BEGIN SELECT RAISE(ABORT, 'the hold may not change'); END"))
    try:
        yield
    finally:
        with sc.runtime.db.engine.begin() as conn:
            conn.execute(text("DROP TRIGGER refuse_note ON stores" if pg else "DROP TRIGGER refuse_note"))
            if pg:
                conn.execute(text("DROP FUNCTION refuse_note()"))


def test_a_timer_round_still_fires_the_journeys_when_noting_a_restrictions_end_raises(db_url, scenario, world, caplog):
    """A restriction whose end has passed, and a database that refuses the note of it: noting its end raises at
    every round. The round logs it and fires the store's journeys all the same: Ravi's cart reminder is queued
    and goes (the claim reads the hold's time, which has passed); nothing about the hold is told."""
    sc = scenario(db_url, "shopify", journeys=LADDER)
    ended = {"restriction": {"restrictions": [{"kind": "RESTRICTED_BIZ_INITIATED_MESSAGING",
                                               "until": (sc.now - timedelta(hours=1)).isoformat()}],
                             "at": (sc.now - timedelta(hours=3)).isoformat()}}
    with sc.runtime.db.engine.begin() as conn:
        conn.execute(update(m.Store).where(m.Store.key == sc.key).values(
            whatsapp_health=ended, whatsapp_held_until=sc.now - timedelta(hours=1)))
    SHOPIFY.start_checkout(sc, "cartR", RAVI)
    with refusing_the_note(sc), caplog.at_level(logging.ERROR, logger="storeloop.processor"):
        sc.later(hours=1, step=timedelta(minutes=20))
    assert sc.templates_to(RAVI) == ["cart_1_v1"]  # the abandonment timer fired at 30 minutes, and the reminder went
    assert any("noting the end of a WhatsApp restriction failed" in r.getMessage() for r in caplog.records)
    assert told(world) == []


def test_a_restriction_kept_with_an_end_that_is_not_a_date_is_noted_ended_once_and_raises_nothing(db_url, scenario, world, caplog):
    """A restriction kept with an end that is not a date (a row written by hand, or by an older version) and a
    hold that has passed: it used to raise at every round (an error logged each time, never noted ended). Now
    the round takes it as ended when the store's hold did, warns once, and the sends go on."""
    sc = scenario(db_url, "shopify", journeys=LADDER)
    held_until = sc.now - timedelta(hours=1)
    broken = {"restriction": {"restrictions": [{"kind": "RESTRICTED_BIZ_INITIATED_MESSAGING", "until": "next tuesday"}],
                              "at": (sc.now - timedelta(hours=3)).isoformat()}}
    sc = _held_past_with(sc, broken, held_until, caplog)
    assert sc.templates_to(RAVI) == ["cart_1_v1"]
    assert [r for r in caplog.records if r.levelno >= logging.ERROR] == []
    warned = [r for r in caplog.records if "end that is not a date" in r.getMessage()]
    assert len(warned) == 1 and warned[0].levelno == logging.WARNING
    health = whatsapp_health(sc)
    assert health["sends_held"] is None and health["restriction_ended_at"] == held_until.isoformat()
    assert told(world) == []  # no case was open to hear it


ASK_AND_ONE_REMINDER = {"cod_confirmation": {"reminder_hours": [], "answer_window_hours": 24},
                        "checkout_recovery": {"abandon_after_minutes": 30, "ladder_minutes": [0]}}


@pytest.mark.parametrize("dispatcher_first", [False, True], ids=["noted first", "claimed first"])
def test_the_note_of_a_restrictions_end_says_how_many_messages_it_held_too_long(db_url, scenario, world, dispatcher_first):
    """Meta restricts the account for 8 hours: Asha's COD question (utility: 24 hours to go) and Ravi's cart
    reminder (marketing: 6 hours, meant for 30 minutes) wait. When it runs out the reminder, 7.5 hours late, is
    dropped as too_late and the question goes. The owner's case, the dashboard and the report say that it cost
    one message, not just that some may have been dropped; and so whichever comes first after the end: the
    worker's round that notes it, or a dispatcher that already skipped the reminder."""
    sc = scenario(db_url, "shopify", journeys=ASK_AND_ONE_REMINDER)
    until = sc.now + timedelta(hours=8)
    account(sc, restriction("RESTRICTED_BIZ_INITIATED_MESSAGING", until=until), at=sc.now)
    SHOPIFY.place(sc, SHOPIFY.order(1, ASHA, sc.now))
    SHOPIFY.start_checkout(sc, "R", RAVI)
    sc.at(until - timedelta(minutes=1), step=timedelta(minutes=30))
    assert sc.sent() == [] and outbox(sc) == [("ask", "pending", 0), ("first", "pending", 0)]

    if dispatcher_first:  # the dispatcher's claim after the end, before any round of the worker's
        sc.clock.now = until + timedelta(minutes=1)
        sc.client.portal.call(sc.runtime.dispatcher.drain)
        assert outbox(sc) == [("ask", "sent", 1), ("first", "skipped", 0)]
        assert whatsapp_health(sc)["restriction_ended_at"] is None
    sc.at(until + timedelta(minutes=1))
    assert sc.templates_to(ASHA) == ["cod_confirm_v1"] and sc.templates_to(RAVI) == []
    assert outbox(sc) == [("ask", "sent", 1), ("first", "skipped", 0)]
    [case] = sc.handoffs("open")
    assert [u["reason"] for u in case["context"]["updates"]] == [
        "The restriction Meta put on the WhatsApp Business Account (RESTRICTED_BIZ_INITIATED_MESSAGING) "
        f"ended {until:%Y-%m-%d %H:%M} UTC: waiting messages still in time go out now; 1 held past its send_within limit "
        "is dropped, skipped as too_late (the dashboard counts them)"]
    health = whatsapp_health(sc)
    assert (health["restriction_ended_at"], health["restriction_too_late"]) == (until.isoformat(), 1)
    assert "sends resumed; 1 message held past its send_within limit was skipped as too_late." in dashboard(sc)

    sc.later(hours=2, step=timedelta(minutes=30))  # later rounds tell nobody again, and the count stands
    assert len(sc.handoffs("open")[0]["context"]["updates"]) == 1 and whatsapp_health(sc)["restriction_too_late"] == 1


NOT_OBJECTS = {
    "the restriction a string": "RESTRICTED_BIZ_INITIATED_MESSAGING until next tuesday",
    "the restriction a list": ["RESTRICTED_BIZ_INITIATED_MESSAGING", "next tuesday"],
    "its list a string": {"restrictions": "RESTRICTED_BIZ_INITIATED_MESSAGING"},
    "an entry a string": {"restrictions": ["RESTRICTED_BIZ_INITIATED_MESSAGING until next tuesday"]},
}


@pytest.mark.parametrize("kept", list(NOT_OBJECTS.values()), ids=list(NOT_OBJECTS))
def test_a_restriction_kept_in_a_shape_that_is_not_an_object_is_noted_ended_once_and_raises_nothing(
        db_url, scenario, world, caplog, kept):
    """A restriction kept as something other than an object (a row written by hand, or by an older version) and
    a hold that has passed: noting its end used to raise at every round (an error logged each time, never
    noted ended). Now the round takes it as ended when the store's hold did, warns once, and the sends go
    on; a restriction Meta sends later is kept and told as any is."""
    sc = scenario(db_url, "shopify", journeys=LADDER)
    held_until = sc.now - timedelta(hours=1)
    sc = _held_past_with(sc, {"restriction": kept}, held_until, caplog)
    assert sc.templates_to(RAVI) == ["cart_1_v1"]
    assert [r for r in caplog.records if r.levelno >= logging.ERROR] == []
    warned = [r for r in caplog.records if "shape that cannot be read" in r.getMessage()]
    assert len(warned) == 1 and warned[0].levelno == logging.WARNING
    assert "until next tuesday" not in warned[0].getMessage()  # what a hand wrote there is not copied to the log
    health = whatsapp_health(sc)
    assert health["sends_held"] is None and health["restriction_ended_at"] == held_until.isoformat()
    assert told(world) == []  # no case was open to hear it

    until = sc.now + timedelta(hours=2)
    account(sc, restriction("RESTRICTED_BIZ_INITIATED_MESSAGING", until=until), at=sc.now)
    sc.later(minutes=5)
    assert whatsapp_health(sc)["sends_held"]["until"] == until.isoformat()
    assert len(told(world)) == 1 and "Meta restricted the WhatsApp Business Account" in told(world)[0][1]


@pytest.mark.parametrize("kept", [NOT_OBJECTS["the restriction a string"], NOT_OBJECTS["an entry a string"]],
                         ids=["the restriction a string", "an entry a string"])
def test_while_a_restriction_kept_in_a_shape_that_is_not_an_object_holds_the_sends_the_state_reads_and_meta_news_is_kept(
        db_url, scenario, world, kept):
    """The same shapes, their hold not over yet: the dashboard and the report still say the sends are held
    (they used to raise reading it), and a restriction Meta sends then replaces it and is told (its webhook
    used to fail: nothing kept, nobody told)."""
    sc = scenario(db_url, "shopify", journeys=LADDER)
    with sc.runtime.db.engine.begin() as conn:
        conn.execute(update(m.Store).where(m.Store.key == sc.key).values(
            whatsapp_health={"restriction": kept}, whatsapp_held_until=sc.now + timedelta(hours=1)))
    held = whatsapp_health(sc)["sends_held"]
    assert held == {"reason": "Meta restricted the WhatsApp Business Account", "until": (sc.now + timedelta(hours=1)).isoformat()}
    assert "WhatsApp sends are paused" in dashboard(sc)

    until = sc.now + timedelta(hours=3)
    account(sc, restriction("RESTRICTED_BIZ_INITIATED_MESSAGING", until=until), at=sc.now)
    sc.later(minutes=5)
    assert whatsapp_health(sc)["sends_held"]["until"] == until.isoformat()
    assert len(told(world)) == 1 and "Meta restricted the WhatsApp Business Account" in told(world)[0][1]


def _held_past_with(sc, health: dict, held_until, caplog):
    """The store's number health kept as ``health``, its hold ended at ``held_until``; Ravi's cart is
    begun and the worker's rounds run an hour on, warnings captured."""
    with sc.runtime.db.engine.begin() as conn:
        conn.execute(update(m.Store).where(m.Store.key == sc.key).values(whatsapp_health=health, whatsapp_held_until=held_until))
    SHOPIFY.start_checkout(sc, "cartR", RAVI)
    with caplog.at_level(logging.WARNING):
        sc.later(hours=1, step=timedelta(minutes=20))
    return sc
