"""COD confirmation answers that come late, or that wait on a person who never acts.

- The question reached her only after the answer deadline (her phone was off for two days, and the
  deadline found none of our messages delivered: ``not_reached``, tagged for a call, a case for a
  person). Her Confirm or Cancel then still acts as an in-time tap would while the order is open, the
  case that asks for a call hears she answered, and a second tap changes nothing.
- She answered in words (a person has her case) and nobody acts: at the answer deadline the order is
  tagged for a call (never cancelled: she did answer), unless a person closed her case or the order
  moved on (cancelled, shipped, confirmed).

Told end to end with the journey scenarios' harness (tests/scenarios): signed store and WhatsApp webhooks
in over HTTP, the real worker rounds on a virtual clock, and assertions on what reached her phone, the
store's API and the hand-off webhook (fake peers on 127.0.0.1). The decide table (tests/test_decide_tables.py)
has the rows; the migration that gives stored runs their deadline is at the end.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta

import pytest
from sqlalchemy import Engine, insert, select, text

from connector.storage import models as m
from connector.storage.db import alembic_config, make_engine, migrate
from tests.conftest import PG_URL, SECRETS
from tests.scenarios import payloads as p
from tests.scenarios.conftest import _world_server, scenario, sqlite_url, store, world  # noqa: F401  (the scenarios' fixtures)
from tests.scenarios.harness import T0, wa_id
from tests.scenarios.stores import SHOPIFY, WOOCOMMERCE, Store
from tests.test_cod_shipped_and_late import cancelled, notes, status_puts, tagged

ASHA = "+919876543210"
COD = {"reminder_hours": [6], "answer_window_hours": 24}


def told(world, stage: str = "qualification") -> list[str]:
    """The texts of the hand-off notifications a stage's owner got."""
    return [body["text"] for s, body in world.notifications if s == stage]


def order_notes(world, store: Store) -> list[str]:
    """Notes written to the order for its staff (tags aside)."""
    if store.platform == "shopify":
        return [op["input"]["note"] for op in world.shopify_ops("orderUpdate")]
    return [n for n in notes(world) if not n.startswith("storeloop tags: ")]


def updates(case: dict) -> list[str]:
    """What a case heard after it was opened, oldest first."""
    return [u["reason"] for u in (case["context"] or {}).get("updates") or []]


def close(sc, case: dict) -> None:
    """A person closes the case through the admin API."""
    r = sc.client.post(f"/api/stores/{sc.key}/handoffs/{case['id']}/close", json={"by": "Ravi", "resolution": "rang her"},
                       headers={"Authorization": f"Bearer {SECRETS['admin']}"})
    assert r.status_code == 200, r.text


def qualification(sc) -> dict:
    return sc.report()["stages"]["qualification"]["metrics"]


# ---- the question reached her after the deadline ----------------------------------------------------

def _not_reached(sc, world, store: Store, n: int):
    """Order ``n`` asked while WhatsApp's answers were lost (the connector cannot tell the question and the
    reminder went out); the deadline finds none delivered: tagged for a call, a case. Then her phone comes
    on: WhatsApp reports the question delivered (its status carries our outbox id). Returns the ask."""
    world.whatsapp_answer_lost = True
    store.place(sc, store.awaiting_confirmation(n, ASHA, sc.now))
    sc.work()
    ask = sc.last_to(ASHA, "cod_confirm_v1")
    sc.later(days=2)
    assert tagged(world, store) == ["cod-unconfirmed"] and not cancelled(world, store)
    [case] = sc.handoffs(status="open")
    assert "none of our WhatsApp messages reached" in case["reason"] and store.name(n) in case["reason"]
    assert len(told(world)) == 1
    world.whatsapp_answer_lost = False
    sc.post(sc.whatsapp_delivery(p.wa_status(sc.phone_number_id, wa_id(ASHA), ask.wamid, "delivered", sc.now, ask.callback)))
    sc.later(minutes=5)
    return ask


def test_a_confirm_after_the_not_reached_deadline_confirms_and_tells_the_call_case(sqlite_url, scenario, world, store: Store):
    """Two days late, she taps Confirm: the order is tagged confirmed (and, on WooCommerce, moved to its confirm
    status), a note says the call flag is stale, and the case asking a person to call her hears she confirmed.
    Her second tap, and Meta delivering it again, change nothing and tell nobody."""
    sc = scenario(sqlite_url, store.platform, journeys={"cod_confirmation": {**COD, "no_answer_action": "cancel", **store.confirm_settings}})
    ask = _not_reached(sc, world, store, 61)
    sc.tap(ASHA, "cod_confirm", ask, times=2)
    sc.later(hours=1)

    assert tagged(world, store) == ["cod-unconfirmed", "cod-confirmed"] and not cancelled(world, store)
    assert any("cod-unconfirmed" in n and "no longer applies" in n for n in order_notes(world, store))
    if store.platform == "woocommerce":
        assert status_puts(world) == ["processing"]
    [case] = sc.handoffs(status="open")
    assert updates(case) == [f"customer tapped Confirm on WhatsApp: COD order {store.name(61)} confirmed (tagged cod-confirmed); "
                             "no need to call them"]
    assert len(told(world)) == 2 and "no need to call them" in told(world)[-1]  # the COD team heard it at once

    sc.later(hours=2)
    sc.tap(ASHA, "cod_confirm", ask)  # again, a little later
    sc.later(hours=1)
    assert tagged(world, store) == ["cod-unconfirmed", "cod-confirmed"] and len(told(world)) == 2
    assert len(updates(sc.handoffs(status="open")[0])) == 1
    q = qualification(sc)
    assert (q["asked"], q["confirmed"], q["not_reached"], q["lost"]) == (1, 1, 0, 0)  # it reached her after all


@pytest.mark.parametrize(("action", "done"), [("cancel", "cancelled"), ("tag", "tagged cod-cancelled-by-customer")])
def test_a_cancel_after_the_not_reached_deadline_cancels_as_configured_and_tells_the_call_case(sqlite_url, scenario, world,
                                                                                             action, done):
    sc = scenario(sqlite_url, "shopify", journeys={"cod_confirmation": {**COD, "cancel_action": action}})
    ask = _not_reached(sc, world, SHOPIFY, 62)
    sc.tap(ASHA, "cod_cancel", ask)
    sc.later(hours=1)
    assert cancelled(world, SHOPIFY) == (action == "cancel")
    assert tagged(world, SHOPIFY) == ["cod-unconfirmed"] + (["cod-cancelled-by-customer"] if action == "tag" else [])
    [case] = sc.handoffs(status="open")
    assert updates(case) == [f"customer tapped Cancel on WhatsApp: COD order {SHOPIFY.name(62)} {done}; no need to call them"]
    sc.tap(ASHA, "cod_cancel", ask)  # again
    sc.later(hours=1)
    assert len(world.shopify_ops("orderCancel")) == (1 if action == "cancel" else 0) and len(told(world)) == 2
    assert qualification(sc)["cancelled"] == 1


def test_a_confirm_after_the_store_cancelled_the_not_reached_order_goes_to_a_person(sqlite_url, scenario, world):
    """Nobody could call her, so the store cancelled the order (and closed the case); then the question reaches her
    and she confirms. We cannot restore a cancelled order: nothing is written to the store, and a person hears it."""
    sc = scenario(sqlite_url, "shopify", journeys={"cod_confirmation": COD})
    order = SHOPIFY.awaiting_confirmation(63, ASHA, T0)
    ask = _not_reached(sc, world, SHOPIFY, 63)
    [call] = sc.handoffs(status="open")
    SHOPIFY.cancelled_echo(sc, order)
    close(sc, call)
    sc.later(hours=1)
    sc.tap(ASHA, "cod_confirm", ask)
    sc.later(hours=1)

    assert tagged(world, SHOPIFY) == ["cod-unconfirmed"] and order_notes(world, SHOPIFY) == []  # no confirm tag on a cancelled order
    [case] = sc.handoffs(status="open")
    assert f"customer confirmed COD order {SHOPIFY.name(63)} after the answer window, but it was cancelled" in case["reason"]
    sc.tap(ASHA, "cod_confirm", ask)  # again: the case has it
    sc.later(hours=1)
    assert len(sc.handoffs(status="open")) == 1 and len(told(world)) == 2


def test_a_confirm_after_a_person_closed_the_call_case_confirms_and_opens_nothing(sqlite_url, scenario, world):
    """The case was closed (the call did not get through, say) while the order stayed open: her Confirm confirms it,
    and no case is opened or told (nobody has to act)."""
    sc = scenario(sqlite_url, "shopify", journeys={"cod_confirmation": COD})
    ask = _not_reached(sc, world, SHOPIFY, 64)
    [call] = sc.handoffs(status="open")
    close(sc, call)
    sc.tap(ASHA, "cod_confirm", ask)
    sc.later(hours=1)
    assert tagged(world, SHOPIFY) == ["cod-unconfirmed", "cod-confirmed"]
    assert sc.handoffs(status="open") == [] and len(told(world)) == 1


# ---- she answered in words, and nobody acts ---------------------------------------------------------

def _in_words(sc, store: Store, n: int, *, quoting: bool = True):
    """Order ``n`` asked; half an hour later she answers in words (a person's case). Returns the order and the ask."""
    order = store.awaiting_confirmation(n, ASHA, sc.now)
    store.place(sc, order)
    sc.work()
    ask = sc.last_to(ASHA, "cod_confirm_v1")
    sc.later(minutes=30)
    sc.say(ASHA, "Is it the blue one? Deliver after 6 pm please", quoting=ask if quoting else None)
    sc.later(minutes=5)
    return order, ask


@pytest.mark.parametrize("quotes", [True, False], ids=["quoting the ask", "quoting nothing"])
def test_words_nobody_acted_on_are_tagged_for_a_call_at_the_deadline_never_cancelled(sqlite_url, scenario, world, store: Store,
                                                                                    quotes):
    """The store cancels unanswered orders; she answered, in words, and her case sat open past the deadline: the
    order is tagged for a call (not cancelled), and her case hears it (the COD team is told again). A Confirm tap
    after that confirms it, notes the flag is stale, and her case hears there is no need to call."""
    sc = scenario(sqlite_url, store.platform, journeys={"cod_confirmation": {**COD, "no_answer_action": "cancel", **store.confirm_settings}})
    _order, ask = _in_words(sc, store, 71, quoting=quotes)
    sc.later(hours=23)
    assert tagged(world, store) == [] and len(told(world)) == 1  # before the deadline: a person has time
    sc.later(hours=1)

    assert tagged(world, store) == ["cod-unconfirmed"] and not cancelled(world, store)
    assert sc.templates_to(ASHA) == ["cod_confirm_v1"]
    [case] = sc.handoffs(status="open")
    assert "blue one" in case["reason"]
    assert updates(case) == [f"COD order {store.name(71)}: the customer answered the question in words and no one has acted on it by "
                             "the answer deadline; tagged cod-unconfirmed: call them to confirm"]
    assert len(told(world)) == 2
    assert qualification(sc)["with_person"] == 1  # she answered: a person's, not lost

    sc.later(days=1)
    sc.tap(ASHA, "cod_confirm", ask)
    sc.later(hours=1)
    assert tagged(world, store) == ["cod-unconfirmed", "cod-confirmed"] and not cancelled(world, store)
    assert any("no longer applies" in n for n in order_notes(world, store))
    if store.platform == "woocommerce":
        assert status_puts(world) == ["processing"]
    [case] = sc.handoffs(status="open")
    assert updates(case)[-1] == (f"customer tapped Confirm on WhatsApp: COD order {store.name(71)} confirmed (tagged cod-confirmed); "
                                 "no need to call them")
    assert len(told(world)) == 3
    assert qualification(sc)["confirmed"] == 1


def test_words_whose_case_a_person_closed_are_left_as_the_person_left_them(sqlite_url, scenario, world):
    """A person answered her and closed the case before the deadline: nothing is tagged, nobody is told again."""
    sc = scenario(sqlite_url, "shopify", journeys={"cod_confirmation": COD})
    _in_words(sc, SHOPIFY, 72)
    [case] = sc.handoffs(status="open")
    sc.later(hours=3)
    close(sc, case)
    sc.later(days=2)
    assert tagged(world, SHOPIFY) == [] and not cancelled(world, SHOPIFY)
    assert sc.handoffs(status="open") == [] and len(told(world)) == 1


def test_words_whose_case_was_closed_then_reopened_by_her_next_words_are_tagged(sqlite_url, scenario, world):
    """The case was closed, then she wrote again (quoting the question): a new case about the order, open at the
    deadline, so nobody has dealt with what she says now: tagged, and that case hears it."""
    sc = scenario(sqlite_url, "shopify", journeys={"cod_confirmation": COD})
    _order, ask = _in_words(sc, SHOPIFY, 73)
    [first] = sc.handoffs(status="open")
    close(sc, first)
    sc.later(hours=2)
    sc.say(ASHA, "Hello? Is it the blue one?", quoting=ask)
    sc.later(days=1)
    assert tagged(world, SHOPIFY) == ["cod-unconfirmed"]
    [second] = sc.handoffs(status="open")
    assert second["id"] != first["id"] and "Hello?" in second["reason"]
    assert updates(second)[-1].endswith("tagged cod-unconfirmed: call them to confirm")


@pytest.mark.parametrize("moves_on", ["cancelled", "shipped", "confirmed by the store"])
def test_words_on_an_order_that_moved_on_are_not_tagged(sqlite_url, scenario, world, moves_on):
    """The store cancelled, shipped or (WooCommerce: moved to the confirm status after a call) confirmed the order
    before the deadline, her case still open: the order is past asking about; nothing is tagged or told."""
    sc = scenario(sqlite_url, "woocommerce", journeys={"cod_confirmation": {**COD, **WOOCOMMERCE.confirm_settings}})
    order, _ask = _in_words(sc, WOOCOMMERCE, 74)
    sc.later(hours=2)
    if moves_on == "cancelled":
        WOOCOMMERCE.cancelled_echo(sc, order)
    elif moves_on == "shipped":
        sc.post(*WOOCOMMERCE.shipped_deliveries(sc, order))
    else:
        WOOCOMMERCE.confirmed_echo(sc, order)
    sc.later(days=2)
    assert tagged(world, WOOCOMMERCE) == [] and status_puts(world) == []
    assert len(told(world)) == 1


def test_a_tap_before_the_deadline_on_words_a_person_has_settles_it_and_no_deadline_tag_follows(sqlite_url, scenario, world):
    """Before the deadline, her Confirm after her question confirms the order; its owner still has her question to
    answer (the case stays open), but the deadline tags nothing and alerts nobody."""
    sc = scenario(sqlite_url, "shopify", journeys={"cod_confirmation": COD})
    _order, ask = _in_words(sc, SHOPIFY, 75, quoting=False)
    sc.later(hours=1)
    sc.tap(ASHA, "cod_confirm", ask)
    sc.later(days=2)
    assert tagged(world, SHOPIFY) == ["cod-confirmed"]
    [case] = sc.handoffs(status="open")
    assert updates(case) == [] and len(told(world)) == 1


# ---- runs stored before the deadline was kept ---------------------------------------------------------

@contextmanager
def _empty_database(db_url: str, tmp_path) -> Iterator[Engine]:
    """An empty database of the fixture's kind: a SQLite file, or a PostgreSQL schema of its own (the session's is at head)."""
    if db_url.startswith("sqlite"):
        engine = make_engine(f"sqlite:///{tmp_path / 'old.db'}")
        try:
            yield engine
        finally:
            engine.dispose()
        return
    schema = f"sl_cod_{os.getpid()}"
    admin = make_engine(PG_URL)
    with admin.begin() as conn:
        conn.execute(text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
        conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    engine = make_engine(PG_URL, connect_args={"options": f"-csearch_path={schema}"})
    try:
        yield engine
    finally:
        engine.dispose()
        with admin.begin() as conn:
            conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()


def test_migration_0018_gives_runs_waiting_on_a_person_their_deadline_back(db_url, tmp_path):
    """Runs that waited on a person with no timer become due (their journey then sets the deadline); others are
    left alone; downgrading clears those timers again (the code before would take one for a reminder's)."""
    from alembic import command

    runs_table = m.JourneyRun.__table__
    asked = {"phase": "asked", "asked_at": T0.isoformat(), "reminders": 0}
    runs = {"words": ({**asked, "phase": "with_person"}, "active", None),
            "words, then a tap": ({**asked, "phase": "with_person", "choice": "confirmed"}, "finished", None),
            "asked": (asked, "active", T0 + timedelta(hours=6)),
            "waiting on a reason": ({**asked, "phase": "cancel_reason", "choice": "cancelled"}, "active", T0 + timedelta(hours=1))}
    with _empty_database(db_url, tmp_path) as engine:
        migrate(engine, "0017")
        with engine.begin() as conn:
            conn.execute(text("INSERT INTO stores (key, platform, created_at) VALUES ('a', 'shopify', '2026-11-01 00:00:00')"))
            sid = conn.execute(text("SELECT id FROM stores")).scalar()
            conn.execute(insert(runs_table), [
                {"store_id": sid, "journey": "cod_confirmation", "subject": subject, "status": status, "state": state, "holdout": False,
                 "started_at": T0, "updated_at": T0, "next_due_at": due} for subject, (state, status, due) in runs.items()])

        def timers() -> dict[str, object]:
            with engine.connect() as conn:
                return dict(conn.execute(select(runs_table.c.subject, runs_table.c.next_due_at)).all())

        migrate(engine)
        after = timers()
        assert after["words"] is not None  # due now: its first timer sets the deadline
        assert after["words, then a tap"] is None
        assert (after["asked"], after["waiting on a reason"]) == (T0 + timedelta(hours=6), T0 + timedelta(hours=1))
        command.downgrade(alembic_config(engine), "0017")
        assert timers() == {**after, "words": None}
