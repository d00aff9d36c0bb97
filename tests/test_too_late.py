"""A WhatsApp message held past the time it could still make sense is dropped, with its reason, not sent late.

Messages wait when Meta restricts the account, the number is rated RED, the connector is down, quiet hours
push them. Before, the outbox sent each one whenever it became claimable, however late: a "you left items
in your cart" two days on, a COD question long after the order was placed. Now each message has a latest
useful send time (``policy.send_by``: the time it was meant to go plus ``marketing_send_within_hours``, 6 by
default, ``utility_send_within_hours``, 24, or a ``send_within_hours`` entry for its journey or step), and
one held past it is skipped as ``too_late``: nothing is posted to WhatsApp, no attempt is spent, the
contact's later messages are not held behind it, the report and the dashboard count it among the skips,
and the journeys that look for a message that reached her (COD's no-answer action, cart attribution)
treat it as not sent. Store write-backs are not customer messages: held as long, they still run.

Real app, signed webhooks, a virtual clock and fake WhatsApp / Shopify APIs (tests/scenarios); the
account restriction comes the way Meta sends it (``account_update``, as tests/test_number_health.py).
"""

from __future__ import annotations

from datetime import datetime, timedelta

import pytest
from sqlalchemy import select

from connector.sandbox.whatsapp import ScriptedResponse
from connector.storage.inbox import sync_stores
from connector.storage import models as m
from tests.conftest import settings_dict
from tests.scenarios.conftest import _world_server, scenario, sqlite_url, world  # noqa: F401 (fixtures)
from tests.scenarios.harness import TEMPLATES, WEEK
from tests.scenarios.stores import SHOPIFY
from tests.scenarios.test_delivery_stories import parcel
from tests.scenarios.test_delivery_stories import start as delivery_start
from tests.test_cod_shipped_and_late import cancelled, tagged
from tests.scenarios.fakes import WA_TOKEN
from tests.test_config_and_cli_errors import _example_with
from tests.test_dispatch_errors import graph  # noqa: F401 (fixture)
from tests.test_outbox import NOON_IST, Clock, dispatch, outbox_rows, queue, seed_contact, settings_for
from tests.test_number_health import account, dashboard, number, restriction

ASHA, RAVI = "+919876543210", "+919812345678"
ONE_REMINDER = {"checkout_recovery": {"abandon_after_minutes": 30, "ladder_minutes": [0]}}
COD = {"cod_confirmation": {"reminder_hours": [6], "answer_window_hours": 24}}
ACK = {"step": "cod_confirmation.confirmed", "name": "cod_thanks_v1", "category": "utility", "body_text": "Thanks, {{1}} is confirmed.",
       "body": ["order.name"]}


def rows(sc, journey: str | None = None) -> list[tuple]:
    """(journey, step, channel, status, skip_reason, attempts) of the outbox, in queue order."""
    query = select(m.OutboxMessage.journey, m.OutboxMessage.step, m.OutboxMessage.channel, m.OutboxMessage.status,
                   m.OutboxMessage.skip_reason, m.OutboxMessage.attempts).order_by(m.OutboxMessage.id)
    if journey is not None:
        query = query.where(m.OutboxMessage.journey == journey)
    with sc.runtime.db.engine.connect() as conn:
        return [tuple(r) for r in conn.execute(query)]


def restrict(sc, hours: float):
    """Meta restricts business-initiated messaging for ``hours`` from now; returns when it ends."""
    until = sc.now + timedelta(hours=hours)
    account(sc, restriction("RESTRICTED_BIZ_INITIATED_MESSAGING", until=until), at=sc.now)
    return until


def test_a_cart_reminder_held_past_its_time_by_a_restriction_is_dropped_and_the_next_one_still_goes(sqlite_url, scenario, world):
    """Meta restricts the account for 8 hours. Ravi's reminder for the cart he left first was meant to go at
    30 minutes: 7.5 hours late when the restriction ends, past marketing's 6 hours, it is skipped as
    too_late, nothing is posted and no attempt spent. His second cart's reminder (meant for 6.5 hours, 1.5
    hours late) was queued behind it and goes in the same round. The report and the dashboard count the
    skip."""
    sc = scenario(sqlite_url, "shopify", journeys=ONE_REMINDER)
    until = restrict(sc, 8)
    SHOPIFY.start_checkout(sc, "R1", RAVI)
    sc.later(hours=6, step=timedelta(minutes=30))
    SHOPIFY.start_checkout(sc, "R2", RAVI)
    sc.at(until - timedelta(minutes=1), step=timedelta(minutes=30))
    assert sc.sent() == [] and [r[3] for r in rows(sc, "checkout_recovery")] == ["pending", "pending"]

    sc.at(until + timedelta(minutes=1))
    assert len(sc.sent(RAVI)) == 1  # one reminder posted, not two: the first cart's was never sent
    assert rows(sc, "checkout_recovery") == [("checkout_recovery", "first", "whatsapp", "skipped", "too_late", 0),
                                             ("checkout_recovery", "first", "whatsapp", "sent", None, 1)]
    assert sc.last_to(RAVI, "cart_1_v1").params[-1].endswith(SHOPIFY.token("R2"))  # the second cart's reminder

    health = sc.report()["message_health"]["templates"]["checkout_recovery.first"]
    assert (health["queued"], health["sent"], health["skipped_by_reason"]) == (2, 1, {"too_late": 1})
    dashboard(sc)  # signs in
    assert "too_late × 1" in sc.client.get(f"/dashboard/{sc.key}?week={WEEK}").text
    # what the owner's case said at the start and is told at the end is true of the dropped reminder
    [case] = sc.handoffs("open")
    assert "unless held longer than its send_within limit (6 h for cart and reorder reminders" in case["reason"]
    assert case["context"]["updates"][-1]["reason"].endswith(
        "waiting messages still in time go out now; 1 held past its send_within limit is dropped, skipped as too_late "
        "(the dashboard counts them)")


def test_a_purchase_after_a_reminder_dropped_as_too_late_is_no_recovery(sqlite_url, scenario, world):
    """Ravi's only cart reminder was held 7.5 hours by a restriction and dropped as too_late. When he buys the
    cart the next day, no reminder of ours reached him: the cart counts as abandoned, neither reminded nor
    recovered by the reminders (attribution credits only reminders that went out)."""
    sc = scenario(sqlite_url, "shopify", journeys=ONE_REMINDER)
    until = restrict(sc, 8)
    SHOPIFY.start_checkout(sc, "R", RAVI)
    sc.at(until + timedelta(minutes=1), step=timedelta(minutes=30))
    assert sc.sent() == [] and rows(sc, "checkout_recovery") == [("checkout_recovery", "first", "whatsapp", "skipped", "too_late", 0)]

    sc.later(hours=12)
    SHOPIFY.pay_checkout(sc, 1, RAVI, "R", total="1299.00")
    sc.later(hours=1)
    c = sc.report()["stages"]["conversion"]["metrics"]
    assert (c["checkouts_abandoned"], c["checkouts_reminded"], c["checkouts_recovered"]) == (1, 0, 0)


@pytest.mark.parametrize(("policy", "asha", "ravi"), [
    ({}, ["cod_confirm_v1"], []),  # defaults: utility waits up to 24 h, marketing 6 h
    ({"utility_send_within_hours": 2, "marketing_send_within_hours": 12}, [], ["cart_1_v1"]),
    ({"send_within_hours": {"checkout_recovery.first": 10}}, ["cod_confirm_v1"], ["cart_1_v1"]),
    ({"send_within_hours": {"cod_confirmation": 3}}, [], []),
], ids=["defaults", "by category", "by step", "by journey"])
def test_utility_and_marketing_messages_held_alike_each_wait_as_long_as_configured(sqlite_url, scenario, world, policy, asha, ravi):
    """A 9-hour restriction holds Asha's COD question (utility, meant to go at once) and Ravi's cart reminder
    (marketing, meant for 30 minutes). When it ends, each goes only if its limit has not passed."""
    sc = scenario(sqlite_url, "shopify", journeys={"cod_confirmation": {"reminder_hours": [], "answer_window_hours": 24}, **ONE_REMINDER},
                  policy=policy)
    until = restrict(sc, 9)
    SHOPIFY.place(sc, SHOPIFY.order(1, ASHA, sc.now))
    SHOPIFY.start_checkout(sc, "R", RAVI)
    sc.at(until + timedelta(minutes=1), step=timedelta(minutes=30))
    assert sc.templates_to(ASHA) == asha and sc.templates_to(RAVI) == ravi
    skipped = [r for r in rows(sc) if r[3:] == ("skipped", "too_late", 0)]
    assert len(skipped) == 2 - len(asha) - len(ravi)


def test_a_store_write_back_held_as_long_as_a_dropped_message_still_runs(sqlite_url, scenario, world):
    """Asha taps Confirm; the worker records it (the order's tag write-back and her thanks are queued) and the
    connector is then down for 30 hours. When it is back, the tag still reaches the store; the thanks, a
    utility message held past its 24 hours, is skipped as too_late."""
    sc = scenario(sqlite_url, "shopify", journeys={"cod_confirmation": {**COD["cod_confirmation"], "send_acknowledgement": True}},
                  store_settings={"templates": [*TEMPLATES, ACK]})
    SHOPIFY.place(sc, SHOPIFY.order(1, ASHA, sc.now))
    sc.later(minutes=1)
    sc.tap(ASHA, "cod_confirm", sc.last_to(ASHA, "cod_confirm_v1"))
    sc.runtime.processor.drain()  # the tap is processed; nothing is sent before the connector stops
    assert [(r[1], r[2], r[3]) for r in rows(sc)][1:] == [("confirm_tag", "store", "pending"), ("confirmed", "whatsapp", "pending")]

    sc.later(hours=30, step=timedelta(hours=30))  # down: the next worker round is 30 hours later
    assert tagged(world, SHOPIFY) == ["cod-confirmed"]
    assert sc.templates_to(ASHA) == ["cod_confirm_v1"]
    assert [(r[1], r[2], r[3], r[4]) for r in rows(sc)][1:] == [("confirm_tag", "store", "sent", None),
                                                                ("confirmed", "whatsapp", "skipped", "too_late")]


def test_a_cod_question_dropped_as_too_late_never_reached_her_so_her_order_is_not_cancelled_for_no_answer(
        sqlite_url, scenario, world):
    """The store cancels COD orders nobody confirms. A 9-hour restriction holds Asha's question (meant to go at
    once) and its 6-hour reminder, both past the store's 2 hours for utility messages when it ends: both are
    skipped as too_late. At the answer deadline none of our messages reached her, so the order is tagged for a
    call, never cancelled for "no answer", and the report counts it as not reached."""
    sc = scenario(sqlite_url, "shopify", journeys={"cod_confirmation": {**COD["cod_confirmation"], "no_answer_action": "cancel"}},
                  policy={"utility_send_within_hours": 2})
    until = restrict(sc, 9)
    SHOPIFY.place(sc, SHOPIFY.order(1, ASHA, sc.now))
    sc.at(until + timedelta(minutes=1), step=timedelta(minutes=30))
    assert sc.sent() == []
    assert rows(sc, "cod_confirmation") == [("cod_confirmation", "ask", "whatsapp", "skipped", "too_late", 0),
                                            ("cod_confirmation", "reminder_1", "whatsapp", "skipped", "too_late", 0)]

    sc.later(hours=16)
    assert tagged(world, SHOPIFY) == ["cod-unconfirmed"] and not cancelled(world, SHOPIFY)
    assert sc.report()["stages"]["qualification"]["metrics"]["not_reached"] == 1


def test_a_reminder_that_quiet_hours_would_push_past_its_time_is_dropped_when_it_is_held_not_the_next_morning(
        sqlite_url, scenario, world):
    """Quiet hours 21:00-09:00 in Kolkata; the store gives marketing 12 hours. Ravi's cart reminder, meant for
    11:00, is held by a restriction until 21:10: quiet hours would hold it again until 09:00, past its 23:00,
    so it is skipped as too_late at once (the owner sees why tonight) and nothing reaches him in the morning."""
    sc = scenario(sqlite_url, "shopify", journeys=ONE_REMINDER,
                  policy={"quiet_hours": "21:00-09:00", "marketing_send_within_hours": 12})
    assert SHOPIFY.local(10, 30) == sc.now
    until = SHOPIFY.local(21, 10)
    account(sc, restriction("RESTRICTED_BIZ_INITIATED_MESSAGING", until=until), at=sc.now)
    SHOPIFY.start_checkout(sc, "R", RAVI)
    sc.at(until + timedelta(minutes=1), step=timedelta(minutes=30))
    assert rows(sc, "checkout_recovery") == [("checkout_recovery", "first", "whatsapp", "skipped", "too_late", 0)]
    sc.later(hours=14, step=timedelta(hours=1))
    assert sc.sent() == []


def planned_of(sc, journey: str) -> datetime:
    with sc.runtime.db.engine.connect() as conn:
        return conn.execute(select(m.OutboxMessage.planned_at).where(m.OutboxMessage.journey == journey)).scalar_one()


def _cart_reminder_held_red(scenario, sqlite_url):
    """The number rated RED, then Ravi's cart reminder (marketing) queued and held an hour; returns the
    scenario and the reminder's latest useful send time (6 hours after it was meant to go)."""
    sc = scenario(sqlite_url, "shopify", journeys=ONE_REMINDER)
    account(sc, number("FLAGGED", current_limit="TIER_1K"), at=sc.now)
    SHOPIFY.start_checkout(sc, "R", RAVI)
    sc.later(hours=1, step=timedelta(minutes=7))
    return sc, planned_of(sc, "checkout_recovery") + timedelta(hours=6)


def test_a_reminder_held_for_the_red_rating_waits_to_its_last_minute_and_goes_if_the_number_recovers_in_time(
        sqlite_url, scenario, world):
    """The number is RED: Ravi's cart reminder (marketing: 6 hours) is looked at again hourly. Before, the look
    that found the next hourly one past its limit dropped it as too_late at once, up to an hour early, though
    the number recovered before the limit. Now the last look comes shortly before the limit (a look at the
    limit itself found it past, the claim coming a poll after its due time): the number is UNFLAGGED 10 minutes
    before it, the worker's rounds fall 3 minutes before and 4 after it, and the reminder goes."""
    sc, latest = _cart_reminder_held_red(scenario, sqlite_url)
    sc.at(latest - timedelta(minutes=10), step=timedelta(minutes=7))
    assert sc.sent() == [] and rows(sc, "checkout_recovery") == [("checkout_recovery", "first", "whatsapp", "pending", None, 0)]

    account(sc, number("UNFLAGGED", current_limit="TIER_1K"), at=sc.now)
    sc.at(latest + timedelta(minutes=4), step=timedelta(minutes=7))  # no round at the limit itself: one before, one after
    assert sc.templates_to(RAVI) == ["cart_1_v1"]
    assert rows(sc, "checkout_recovery") == [("checkout_recovery", "first", "whatsapp", "sent", None, 1)]


def test_a_reminder_still_held_for_the_red_rating_at_its_limit_is_dropped_then_once(sqlite_url, scenario, world):
    """Still RED at its last look, shortly before the limit: the reminder is skipped as too_late then (it is
    not deferred to that look again and again), and nothing goes afterwards."""
    sc, latest = _cart_reminder_held_red(scenario, sqlite_url)
    sc.at(latest - timedelta(minutes=6), step=timedelta(minutes=7))
    assert rows(sc, "checkout_recovery") == [("checkout_recovery", "first", "whatsapp", "pending", None, 0)]
    sc.at(latest + timedelta(minutes=1), step=timedelta(minutes=7))  # its last look, shortly before the limit
    assert rows(sc, "checkout_recovery") == [("checkout_recovery", "first", "whatsapp", "skipped", "too_late", 0)]
    account(sc, number("UNFLAGGED", current_limit="TIER_1K"), at=sc.now)
    sc.later(hours=3, step=timedelta(minutes=30))
    assert sc.sent() == []


@pytest.mark.parametrize(("hours", "sent"), [(7, False), (5, True)])
def test_out_for_delivery_is_news_for_six_hours_a_restriction_held_it_longer(sqlite_url, scenario, world, hours, sent):
    """The built-in step limit: a parcel out for delivery is that day's news (6 hours, where utility has 24).
    Asha's "shipped" went before Meta restricted the account; her "out for delivery" is held by the restriction
    (the courier's delivered scan never came). Held 7 hours it is skipped as too_late; held 5, it goes."""
    sc = delivery_start(scenario, sqlite_url)
    order = SHOPIFY.order(1, ASHA, sc.now, cod=False)
    SHOPIFY.place(sc, order)
    sc.shopify("fulfillments/create", parcel(7001, order, sc.now, "in_transit", "AAA111"))
    sc.later(minutes=10)
    until = restrict(sc, hours)
    sc.shopify("fulfillments/update", parcel(7001, order, sc.now, "out_for_delivery", "AAA111"))
    sc.work()
    sc.at(until + timedelta(minutes=1), step=timedelta(hours=1))
    assert sc.templates_to(ASHA) == ["order_thanks_v1", "shipped_track_v1", *(["ofd_v1"] if sent else [])]
    assert [(r[1], r[3], r[4]) for r in rows(sc, "delivery")] == [
        ("shipped", "sent", None), ("out_for_delivery", "sent", None) if sent else ("out_for_delivery", "skipped", "too_late")]


# ---- the settings ------------------------------------------------------------------------------------

MARKETING, UTILITY, TABLE = ("marketing_send_within_hours = 6 ", "utility_send_within_hours = 24 ",
                             'send_within_hours = { "delivery.out_for_delivery" = 6 }')


@pytest.mark.parametrize(("old", "new", "expected"), [
    (MARKETING, "marketing_send_within_hours = -6 ", "stores[0].policy.marketing_send_within_hours: Input should be greater than 0"),
    (UTILITY, "utility_send_within_hours = 0 ", "stores[0].policy.utility_send_within_hours: Input should be greater than 0"),
    (UTILITY, "utility_send_within_hours = 9000 ",
     "stores[0].policy.utility_send_within_hours: Input should be less than or equal to 8760"),
    (MARKETING, "marketing_send_withn_hours = 6 ", "stores[0].policy.marketing_send_withn_hours: unknown key (typo?)"),
    (TABLE, 'send_within_hours = { "delivry.shipped" = 6 }',
     "stores[0].policy.send_within_hours.delivry.shipped: unknown journey 'delivry' (known: checkout_recovery, cod_confirmation, "
     "delivery, order_confirmation, payment_recovery, reorder); write a journey or journey.step, e.g. delivery.out_for_delivery"),
    (TABLE, 'send_within_hours = { "delivery.shiped" = 6 }',
     "stores[0].policy.send_within_hours.delivery.shiped: 'shiped' is not a step delivery sends (shipped, out_for_delivery, "
     "ready_for_pickup, delivered, failed, ndr_reschedule, ndr_update_address, ndr_cancel)"),
    (TABLE, 'send_within_hours = { "reorder" = 0 }',
     "stores[0].policy.send_within_hours.reorder: must be greater than 0 and at most 8760 hours (a year)"),
    (TABLE, 'send_within_hours = { "cod_confirmation.reminder_2" = "12" }',
     "stores[0].policy.send_within_hours.cod_confirmation.reminder_2: must be a number of hours, e.g. 6 or 0.5"),
])
def test_a_bad_send_within_setting_is_a_check_config_error_naming_it(tmp_path, monkeypatch, old, new, expected):
    """Run as the user runs it (``storeloop check-config`` on config.example.toml with one edit)."""
    problems = _example_with(tmp_path, monkeypatch, old, new)
    assert expected in problems, problems


def test_the_example_send_within_settings_load_with_the_step_defaults_kept(tmp_path, monkeypatch):
    """A store's own table adds to the built-in one (a parcel out for delivery: 6 hours) rather than replacing it."""
    from connector.config import parse_settings

    raw = settings_dict("sqlite:///x.db")
    raw["stores"][0]["policy"] = {"send_within_hours": {"reorder": 12, "cod_confirmation.reminder_1": 3.5}}
    policy = parse_settings(raw, environ={}).stores[0].policy
    assert dict(policy.send_within_hours) == {"delivery.out_for_delivery": 6.0, "reorder": 12.0, "cod_confirmation.reminder_1": 3.5}
    rules = policy.rules()
    assert (rules.marketing_send_within, rules.utility_send_within) == (timedelta(hours=6), timedelta(hours=24))


# ---- a message planned again is not held ----------------------------------------------------------------

def test_a_reminder_held_back_for_the_marketing_limit_goes_the_next_day_as_planned_not_dropped(db, db_url, graph):
    """131049 (her marketing limit) answered to Ravi's reorder reminder plans the same message for a day later
    (README: on three days at most): that is its new planned time, not a hold, so the next day it goes rather
    than being dropped as 24 hours late."""
    fake, url = graph
    settings = settings_for(db_url, url, access_token=WA_TOKEN)
    ids = sync_stores(db, [(s.key, s.platform) for s in settings.stores])
    sid = ids["shop-a"]
    cid = seed_contact(db, sid, phone=RAVI)
    queued = queue(db, settings, sid, cid, step="reorder.remind", subject="w:going")
    with db.engine.begin() as conn:
        conn.execute(m.JourneyRun.__table__.insert().values(
            store_id=sid, journey="reorder", subject="w:going", contact_id=cid, status="active", state={}, holdout=False,
            started_at=NOON_IST, updated_at=NOON_IST))
    fake.script.append(ScriptedResponse(400, {"error": {"message": "(#131049) This message was not delivered to maintain healthy "
                                                                   "ecosystem engagement.", "type": "OAuthException", "code": 131049}}))
    clock = Clock(NOON_IST)

    dispatch(db, settings, ids, clock, url, token=WA_TOKEN)
    [row] = [r for r in outbox_rows(db) if r.id == queued.outbox_id]
    assert row.status == "pending" and row.due_at >= NOON_IST + timedelta(hours=24)
    clock.now = row.due_at + timedelta(minutes=1)
    dispatch(db, settings, ids, clock, url, token=WA_TOKEN)
    [row] = [r for r in outbox_rows(db) if r.id == queued.outbox_id]
    assert (row.status, row.skip_reason) == ("sent", None)
    assert [c.to for c in fake.accepted()] == [RAVI]
