"""The number's quality rating read from Meta: a YELLOW (medium) number is shown and its owner warned.

Meta's ``phone_number_quality_update`` webhook carries an event (FLAGGED, UNFLAGGED...) and no
rating: the connector read FLAGGED as RED and UNFLAGGED as GREEN, and could never show YELLOW, the
early warning an owner most needs. Now a scheduled job (``number-quality:<store>``, every
``worker.number_quality_hours``) asks the Graph API for the number's ``quality_rating`` and
``messaging_limit_tier`` and keeps them as Meta's news, by the webhooks' rules:

- YELLOW is shown on the dashboard and the admin API, and the owner is warned once, in the
  number's case; the same reading again tells nobody;
- RED holds marketing as FLAGGED does; GREEN releases it and joins the open case;
- an older webhook arriving after a newer reading changes nothing;
- a failed read is logged and shown in the job's health, and raises nothing.

Real app, a virtual clock, the fake Graph API answering the number's GET (tests/scenarios/fakes.py);
the first story on SQLite and PostgreSQL.
"""

from __future__ import annotations

import logging
from datetime import timedelta

from apscheduler.schedulers.asyncio import AsyncIOScheduler
from sqlalchemy import select, update

from connector.storage import models as m
from jobs.scheduler import add_number_quality_jobs, number_quality_store
from tests.conftest import PHONE_ID_A
from tests.scenarios.conftest import _world_server, scenario, sqlite_url, world  # noqa: F401 (fixtures)
from tests.scenarios.stores import SHOPIFY
from tests.scenarios.test_store_journeys import COD, LADDER
from tests.test_number_health import RAVI, account, dashboard, number, told, whatsapp_health

EVERY = timedelta(hours=4)


def read_number(sc) -> bool:
    """One tick of the store's number-quality job, as the worker's scheduler runs it."""
    store = next(s for s in sc.settings.stores if s.key == sc.key)
    assert sc.client.portal is not None
    ran = sc.client.portal.call(number_quality_store, sc.runtime, store, "worker-1", EVERY)
    sc.work()  # the owner's alert goes out
    return ran


def job(sc) -> dict:
    return next(j for j in sc.report()["connector_health"]["jobs"] if j["job"] == "number-quality")


def test_a_yellow_number_is_shown_and_its_owner_warned_once(db_url, scenario, world):
    sc = scenario(db_url, "shopify", journeys=COD)
    world.whatsapp_number = {"quality_rating": "YELLOW", "messaging_limit_tier": "TIER_1K"}
    assert read_number(sc) is True

    health = whatsapp_health(sc)
    assert (health["quality_rating"], health["messaging_limit"], health["marketing_held"]) == ("YELLOW", "TIER_1K", False)
    assert health["quality_since"] == sc.now.isoformat()
    assert "quality rating <strong>YELLOW</strong>" in dashboard(sc)
    [(stage, text)] = told(world)
    assert stage == "entry" and f"(id {PHONE_ID_A}) is rated YELLOW (medium) by Meta" in text
    assert "If it turns RED, cart and reorder reminders (marketing) are held until it recovers" in text
    [case] = sc.handoffs("open")
    assert case["subject"] == f"number:{PHONE_ID_A}"
    assert job(sc)["status"] == "ok"

    first_seen = sc.now
    sc.later(hours=4)
    assert read_number(sc) is True  # Meta says the same: nobody is told again
    assert len(told(world)) == 1 and not sc.handoffs("open")[0]["context"].get("updates")
    assert whatsapp_health(sc)["quality_since"] == first_seen.isoformat()  # since it became YELLOW, not since the last read


def test_a_red_reading_holds_cart_reminders_and_green_releases_them(sqlite_url, scenario, world):
    sc = scenario(sqlite_url, "shopify", journeys={**COD, **LADDER})
    world.whatsapp_number = {"quality_rating": "RED", "messaging_limit_tier": "TIER_1K"}
    read_number(sc)
    SHOPIFY.start_checkout(sc, "cartR", RAVI)
    sc.later(hours=2, step=timedelta(minutes=20))
    assert sc.templates_to(RAVI) == []  # due after 30 minutes, held while the number is RED
    [(_, text)] = told(world)
    assert "its quality rating is RED" in text and "Cart and reorder reminders (marketing) are held" in text
    assert whatsapp_health(sc)["marketing_held"] is True

    world.whatsapp_number = {"quality_rating": "GREEN", "messaging_limit_tier": "TIER_1K"}
    read_number(sc)
    sc.later(hours=1, minutes=5, step=timedelta(minutes=20))
    assert sc.templates_to(RAVI) == ["cart_1_v1"]
    assert len(told(world)) == 2 and "Update: WhatsApp number" in told(world)[1][1] and "no longer flagged" in told(world)[1][1]
    assert whatsapp_health(sc)["marketing_held"] is False


def test_a_lowered_limit_read_is_told_and_an_older_webhook_does_not_undo_a_newer_reading(sqlite_url, scenario, world):
    sc = scenario(sqlite_url, "shopify", journeys=COD)
    read_number(sc)  # GREEN, TIER_1K: the first reading tells nobody
    assert told(world) == []
    sc.later(hours=4)
    world.whatsapp_number = {"quality_rating": "YELLOW", "messaging_limit_tier": "TIER_250"}
    read_number(sc)
    warned, lowered = told(world)
    assert "is rated YELLOW" in warned[1] and "lowered the messaging limit" in lowered[1] and "from TIER_1K to TIER_250" in lowered[1]
    account(sc, number("UNFLAGGED", current_limit="TIER_1K"), at=sc.now - timedelta(hours=1))  # older news, late
    sc.later(minutes=5)
    assert (whatsapp_health(sc)["quality_rating"], whatsapp_health(sc)["messaging_limit"]) == ("YELLOW", "TIER_250")
    account(sc, number("FLAGGED", current_limit="TIER_250"), at=sc.now)  # newer news still counts
    sc.later(minutes=5)
    assert whatsapp_health(sc)["quality_rating"] == "RED" and len(told(world)) == 3


def test_a_failed_read_is_shown_in_the_jobs_health_and_raises_nothing(sqlite_url, scenario, world, caplog):
    sc = scenario(sqlite_url, "shopify", journeys=COD)
    world.whatsapp_number_status = 500
    with caplog.at_level(logging.ERROR, logger="storeloop.jobs"):
        assert read_number(sc) is True
    state = job(sc)
    assert state["status"] == "failing" and state["failures_in_a_row"] == 1 and "500" in (state["last_error"] or "")
    assert any("number-quality shop-a failed" in r.getMessage() for r in caplog.records)
    assert whatsapp_health(sc)["quality_rating"] is None and told(world) == []

    world.whatsapp_number_status = 200
    sc.later(hours=4)
    read_number(sc)
    assert job(sc)["status"] == "ok" and whatsapp_health(sc)["quality_rating"] == "GREEN"


def test_the_job_runs_per_store_number_every_few_hours_and_is_off_at_zero(sqlite_url, scenario, world):
    sc = scenario(sqlite_url, "shopify", journeys=COD)
    scheduler = AsyncIOScheduler()
    added = add_number_quality_jobs(scheduler, sc.runtime, "worker-1")
    assert sc.key in added and [s.key for s in sc.settings.stores if s.whatsapp_phone_number_id] == added
    assert scheduler.get_job(f"number-quality:{sc.key}").trigger.interval == timedelta(hours=4)

    off = sc.settings.model_copy(update={"worker": sc.settings.worker.model_copy(update={"number_quality_hours": 0})})
    runtime = type("R", (), {"settings": off})()
    assert add_number_quality_jobs(AsyncIOScheduler(), runtime, "worker-1") == []


def test_a_reading_that_agrees_does_not_make_a_flag_meta_sent_just_before_look_stale(sqlite_url, scenario, world):
    """Meta flags the number a minute before a reading, whose answer still says GREEN (what is kept). The
    reading changes nothing, not even the rating's time: before, it moved that time on, and the FLAGGED
    webhook arriving just after it was dropped as older news, so marketing went on for hours while RED."""
    sc = scenario(sqlite_url, "shopify", journeys=COD)
    read_number(sc)  # GREEN kept
    sc.later(hours=4)
    read_number(sc)  # GREEN again, at sc.now
    account(sc, number("FLAGGED", current_limit="TIER_1K"), at=sc.now - timedelta(minutes=1))  # sent before the reading
    sc.later(minutes=5)
    health = whatsapp_health(sc)
    assert (health["quality_rating"], health["marketing_held"]) == ("RED", True)
    [(_, text)] = told(world)
    assert "was flagged by Meta" in text


def test_a_reading_never_releases_the_sends_a_restriction_holds(sqlite_url, scenario, world):
    """A reading says nothing of restrictions: it must not touch the sends' hold. Before, it recomputed it
    from what was kept, and a kept restriction whose end is no date (held until the store's own hold time)
    was released by the first reading, hours early, with no note that it ended."""
    sc = scenario(sqlite_url, "shopify", journeys=COD)
    held_until = sc.now + timedelta(hours=6)
    broken = {"restriction": {"restrictions": [{"kind": "RESTRICTED_BIZ_INITIATED_MESSAGING", "until": "next tuesday"}],
                              "at": (sc.now - timedelta(hours=1)).isoformat()}}
    with sc.runtime.db.engine.begin() as conn:
        conn.execute(update(m.Store).where(m.Store.key == sc.key).values(whatsapp_health=broken, whatsapp_held_until=held_until))
    world.whatsapp_number = {"quality_rating": "YELLOW", "messaging_limit_tier": "TIER_1K"}
    read_number(sc)
    assert whatsapp_health(sc)["quality_rating"] == "YELLOW"
    with sc.runtime.db.engine.connect() as conn:
        assert conn.execute(select(m.Store.whatsapp_held_until).where(m.Store.key == sc.key)).scalar_one() == held_until


def test_a_limit_the_webhook_gave_as_a_count_and_a_reading_gives_as_a_tier_is_one_limit(sqlite_url, scenario, world):
    """Meta's webhooks now give the limit as a count (``max_daily_conversations_per_business``: "2000"), the
    number's node as a tier ("TIER_2K"). A lower limit read after such a webhook is told as lowered (before, a
    count was no tier it knew the order of, and the owner heard nothing of a downgrade whose webhook was lost);
    the same limit read after it tells nobody."""
    sc = scenario(sqlite_url, "shopify", journeys=COD)
    read_number(sc)  # GREEN, TIER_1K
    account(sc, number("UPGRADE", max_daily_conversations_per_business="2000", old_limit="TIER_1K"), at=sc.now + timedelta(minutes=1))
    sc.later(hours=4)
    before = len(told(world))
    world.whatsapp_number = {"quality_rating": "GREEN", "messaging_limit_tier": "TIER_250"}  # the DOWNGRADE webhook was lost
    read_number(sc)
    lowered = told(world)[before:]
    assert len(lowered) == 1 and "lowered the messaging limit" in lowered[0][1] and "to TIER_250" in lowered[0][1], lowered
    account(sc, number("UPGRADE", max_daily_conversations_per_business="2000", old_limit="TIER_250"), at=sc.now + timedelta(minutes=1))
    sc.later(hours=4)
    before = len(told(world))
    world.whatsapp_number = {"quality_rating": "GREEN", "messaging_limit_tier": "TIER_2K"}
    read_number(sc)
    assert len(told(world)) == before  # the same limit, written another way
