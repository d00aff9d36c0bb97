"""What comes back from WhatsApp (Meta's webhooks) and what it does: a review's faults, told as store stories.

1. The number's health kept on the store row in a shape that is not an object (the whole of it a string or
   a list, or a part such as ``ban`` a plain string: a row written by hand, or by an older version) made
   every reader raise: the outbox claim (no WhatsApp message of any store in the batch went out), the
   dashboard and the report, and each of Meta's later updates and the number's readings (their inbox rows
   failed, nobody told). Now what cannot be read is read as unknown, a clear warning says so, the rest of
   the row is kept, and Meta's news is kept and told as any is.

Real app, signed webhooks, a virtual clock, fake Graph API and Slack hooks (tests/scenarios).
"""

from __future__ import annotations

import logging
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import select, update

from connector.storage import models as m
from tests.scenarios.conftest import _world_server, scenario, sqlite_url, world  # noqa: F401 (fixtures)
from tests.scenarios.stores import SHOPIFY
from tests.scenarios.test_store_journeys import COD
from tests.test_number_health import ASHA, account, dashboard, number, outbox, told, whatsapp_health
from tests.test_number_quality_poll import read_number


# ---- 1. the number's health kept in a shape that is not an object ---------------------------------

def _keep_health(sc, health: Any) -> None:
    with sc.runtime.db.engine.begin() as conn:
        conn.execute(update(m.Store).where(m.Store.key == sc.key).values(whatsapp_health=health))


def _kept_health(sc) -> Any:
    with sc.runtime.db.engine.connect() as conn:
        return conn.execute(select(m.Store.whatsapp_health).where(m.Store.key == sc.key)).scalar()


UNREADABLE = {
    "the whole of it a string": ("until next tuesday", "the whole of it is a string"),
    "the whole of it a list": (["DISABLE"], "the whole of it is a list"),
    "the ban a plain string": ({"ban": "DISABLE"}, "ban is a string"),
    "the rating a plain string": ({"quality": "RED"}, "quality is a string"),
    "the limit a number": ({"limit": 1000}, "limit is a number"),
    "the violation a plain string": ({"violation": "SPAM"}, "violation is a string"),
}


@pytest.mark.parametrize("kept, said", list(UNREADABLE.values()), ids=list(UNREADABLE))
def test_a_number_health_kept_in_a_shape_that_is_not_an_object_stops_no_send_and_meta_news_is_kept(
        sqlite_url, scenario, world, caplog, kept, said):
    """The dashboard and the report read it (they raised), the COD question goes out (the outbox claim
    raised: no WhatsApp message went), and Meta flagging the number is kept and told once (its webhook
    failed); a clear warning names what cannot be read without copying it, and the rest of the row stays."""
    sc = scenario(sqlite_url, "shopify", journeys=COD)
    _keep_health(sc, kept)
    health = whatsapp_health(sc)
    assert (health["quality_rating"], health["messaging_limit"], health["sends_held"], health["violation"]) == (None, None, None, None)
    assert "WhatsApp sends are paused" not in dashboard(sc)

    SHOPIFY.place(sc, SHOPIFY.order(1, ASHA, sc.now))
    with caplog.at_level(logging.WARNING):
        sc.later(minutes=5)
        account(sc, number("FLAGGED"), at=sc.now)
        sc.later(minutes=5)

    assert sc.templates_to(ASHA) == ["cod_confirm_v1"] and outbox(sc) == [("ask", "sent", 1)]
    assert whatsapp_health(sc)["quality_rating"] == "RED"
    [(_, text)] = told(world)
    assert "was flagged by Meta: its quality rating is RED" in text
    assert [r for r in caplog.records if r.levelno >= logging.ERROR] == []
    warned = [r.getMessage() for r in caplog.records if "number health is kept with what is not an object" in r.getMessage()]
    assert warned and all(f"({said})" in w for w in warned)
    assert not any("tuesday" in w or "DISABLE" in w or "SPAM" in w for w in warned)  # what a hand wrote is not copied
    if isinstance(kept, dict) and "quality" not in kept:
        stored = _kept_health(sc)
        assert all(stored[k] == v for k, v in kept.items())  # the rest of the row is kept as it was


@pytest.mark.parametrize("kept", [{"quality": "RED"}, {"limit": 1000}], ids=["the rating a plain string", "the limit a number"])
def test_a_reading_of_the_number_is_kept_and_told_over_a_part_that_is_not_an_object(sqlite_url, scenario, world, caplog, kept):
    """The number's scheduled reading (YELLOW, the early warning) used to raise on such a row: nothing kept, nobody warned."""
    sc = scenario(sqlite_url, "shopify", journeys=COD)
    _keep_health(sc, kept)
    world.whatsapp_number = {"quality_rating": "YELLOW", "messaging_limit_tier": "TIER_1K"}
    with caplog.at_level(logging.WARNING):
        assert read_number(sc) is True
    health = whatsapp_health(sc)
    assert (health["quality_rating"], health["messaging_limit"]) == ("YELLOW", "TIER_1K")
    [(_, text)] = told(world)
    assert "is rated YELLOW (medium) by Meta" in text
    assert any("number health is kept with what is not an object" in r.getMessage() for r in caplog.records)
