"""What comes back from WhatsApp, second review: faults a store owner would notice, told as store stories.

1. The number's reading asked Graph for ``quality_rating,messaging_limit_tier``. Meta deprecated
   ``messaging_limit_tier`` for ``whatsapp_business_manager_messaging_limit`` (its "Messaging Limits" page:
   "Request the ``whatsapp_business_manager_messaging_limit`` field instead", example answer
   ``{"whatsapp_business_manager_messaging_limit": "TIER_250", "id": ...}``); the old field now answers
   nothing (pywa issue #221), and a field Graph no longer knows fails the whole request (HTTP 400, code 100,
   "Tried accessing nonexisting field"). So the limit was never read again, and once Meta drops the old field
   the YELLOW warning is lost with it. Now the reading asks for both, reads whichever answers (Meta's field
   first), and a limit field Graph refuses never costs the rating.

2. Meta's ``phone_number_quality_update`` reference (Nov 2025) lists, besides a limit's tiers, ``TIER_NOT_SET``:
   "the business phone number has not been used to send a message yet", no limit at all. An ONBOARDING update
   saying it (a number still being registered) was kept as the number's messaging limit: the dashboard showed
   "Messaging limit TIER_NOT_SET" instead of the limit Meta last gave. Now it changes no limit.
   And since October 7, 2025 Meta sets limits per business portfolio: "The Flagged phone number quality state is
   no longer possible. If your business phone number quality rating drops, its messaging limit will not be
   downgraded" (Meta, "Upcoming changes to messaging limits", now live). The owner was still told that a low
   rating makes Meta lower the limit (the YELLOW and RED warnings) and that a lowered limit "follows low
   quality". Now the warnings say what a low rating does (marketing held while RED) and no longer that.

Real app, a virtual clock, the fake Graph API (tests/scenarios/fakes.py) answering as Meta does now.
"""

from __future__ import annotations

import asyncio

from tests.scenarios.conftest import _world_server, scenario, sqlite_url, world  # noqa: F401 (fixtures)
from tests.scenarios.test_store_journeys import COD
from datetime import timedelta

from tests.test_number_health import account, dashboard, number, told, whatsapp_health
from tests.test_number_quality_poll import job, read_number

NEW, OLD = "whatsapp_business_manager_messaging_limit", "messaging_limit_tier"


# ---- 1. the number's reading: Meta's limit field now, and the rating never lost for the limit ----------

def test_once_meta_drops_the_old_limit_field_a_yellow_number_is_still_read_and_its_owner_warned(sqlite_url, scenario, world):
    sc = scenario(sqlite_url, "shopify", journeys=COD)
    world.whatsapp_number = {"quality_rating": "YELLOW", NEW: "TIER_10K"}
    world.whatsapp_number_unknown = {OLD}  # Graph: "(#100) Tried accessing nonexisting field (messaging_limit_tier)"
    assert read_number(sc) is True

    assert job(sc)["status"] == "ok"
    health = whatsapp_health(sc)
    assert (health["quality_rating"], health["messaging_limit"]) == ("YELLOW", "TIER_10K")
    assert "quality rating <strong>YELLOW</strong>" in dashboard(sc)
    [(_, text)] = told(world)
    assert "is rated YELLOW (medium) by Meta" in text


def test_the_limit_is_read_from_metas_current_field_and_a_later_change_of_it_is_told(sqlite_url, scenario, world):
    """Meta answers the limit in its new field only (the deprecated one gives nothing): the dashboard shows
    it, and a lower limit read later is told as Meta's DOWNGRADE was."""
    sc = scenario(sqlite_url, "shopify", journeys=COD)
    world.whatsapp_number = {"quality_rating": "GREEN", NEW: "TIER_2K", OLD: None}
    read_number(sc)
    assert whatsapp_health(sc)["messaging_limit"] == "TIER_2K"
    assert "Messaging limit <strong>TIER_2K</strong>" in dashboard(sc)

    sc.later(hours=4)
    world.whatsapp_number = {"quality_rating": "GREEN", NEW: "TIER_250"}
    read_number(sc)
    [(_, text)] = told(world)
    assert "lowered the messaging limit" in text and "from TIER_2K to TIER_250" in text


def test_an_api_version_that_does_not_know_metas_new_field_still_gives_the_rating_and_the_old_limit(sqlite_url, scenario, world):
    """Meta's page of late 2025: the new field for v24.0 and newer, ``messaging_limit_tier`` for v23.0 and older
    (the connector's default ``api_version`` is v23.0): a Graph that refuses the new field still gives both."""
    sc = scenario(sqlite_url, "shopify", journeys=COD)
    world.whatsapp_number = {"quality_rating": "YELLOW", OLD: "TIER_1K"}
    world.whatsapp_number_unknown = {NEW}
    read_number(sc)
    health = whatsapp_health(sc)
    assert job(sc)["status"] == "ok" and (health["quality_rating"], health["messaging_limit"]) == ("YELLOW", "TIER_1K")


def test_a_graph_that_knows_neither_limit_field_still_gives_the_rating(sqlite_url, scenario, world):
    sc = scenario(sqlite_url, "shopify", journeys=COD)
    world.whatsapp_number = {"quality_rating": "RED"}
    world.whatsapp_number_unknown = {NEW, OLD}
    read_number(sc)
    health = whatsapp_health(sc)
    assert job(sc)["status"] == "ok"
    assert (health["quality_rating"], health["messaging_limit"], health["marketing_held"]) == ("RED", None, True)


def test_the_sandbox_answers_metas_current_field_and_can_play_meta_dropping_the_old_one():
    """The sandbox Cloud API (a real HTTP peer) answers the limit as Meta does now, and refuses a field it is
    told Graph no longer knows as Graph does: the client reads the rating and the limit either way."""
    from adapters.whatsapp.client import WhatsAppClient
    from connector.number_health import NumberReading
    from connector.sandbox.whatsapp import SandboxServer, SandboxWhatsApp

    sandbox = SandboxWhatsApp(token="tok")
    sandbox.quality_rating, sandbox.messaging_limit = "YELLOW", "TIER_100K"

    async def read() -> NumberReading:
        async with WhatsAppClient(server.url, "v23.0", "tok", max_connections=1) as client:
            return await client.number_quality("106540352242922")

    with SandboxServer(sandbox.app) as server:
        assert asyncio.run(read()) == NumberReading(rating="YELLOW", limit="TIER_100K")
        sandbox.unknown_fields = {OLD}
        assert asyncio.run(read()) == NumberReading(rating="YELLOW", limit="TIER_100K")


# ---- 2. TIER_NOT_SET is no messaging limit -------------------------------------------------------------

def test_an_onboarding_update_saying_tier_not_set_leaves_the_known_limit(sqlite_url, scenario, world):
    sc = scenario(sqlite_url, "shopify", journeys=COD)
    world.whatsapp_number = {"quality_rating": "GREEN", NEW: "TIER_10K"}
    read_number(sc)
    account(sc, number("ONBOARDING", max_daily_conversations_per_business="TIER_NOT_SET"), at=sc.now + timedelta(minutes=1))
    account(sc, number("ONBOARDING", current_limit="TIER_NOT_SET"), at=sc.now + timedelta(minutes=2))  # the older shape
    sc.later(minutes=5)
    assert whatsapp_health(sc)["messaging_limit"] == "TIER_10K"
    assert "Messaging limit <strong>TIER_10K</strong>" in dashboard(sc)
    sc.later(hours=4)
    world.whatsapp_number = {"quality_rating": "GREEN", NEW: "TIER_NOT_SET"}  # the same said by the number's node
    read_number(sc)
    assert whatsapp_health(sc)["messaging_limit"] == "TIER_10K"
    assert told(world) == []


def test_the_owner_is_no_longer_told_that_a_low_rating_makes_meta_lower_the_limit(sqlite_url, scenario, world):
    sc = scenario(sqlite_url, "shopify", journeys=COD)
    read_number(sc)  # GREEN, TIER_1K: tells nobody
    for rating, limit in (("YELLOW", "TIER_1K"), ("RED", "TIER_1K"), ("RED", "TIER_250")):
        sc.later(hours=4)
        world.whatsapp_number = {"quality_rating": rating, NEW: limit}
        read_number(sc)
    yellow, red, lowered = (text for _, text in told(world))
    assert "is rated YELLOW" in yellow and "quality rating is RED" in red and "lowered the messaging limit" in lowered
    assert "If it turns RED, cart and reorder reminders (marketing) are held until it recovers" in yellow
    for text in (yellow, red):
        assert "lower its messaging limit" not in text and "lowers the messaging limit" not in text
    assert "follows low quality" not in lowered and "from TIER_1K to TIER_250" in lowered
