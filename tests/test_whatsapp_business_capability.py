"""Meta's ``business_capability_update`` keeps the store's messaging limit, as its dashboard shows it.

Meta's webhook reference: ``entry[].id`` the WhatsApp Business Account, ``value`` with
``max_daily_conversations_per_business`` (the business portfolio's messaging limit: 250, 2000, 10000,
100000, or -1 for unlimited), the older ``max_daily_conversation_per_phone`` ("will be removed") and
``max_phone_numbers_per_business`` / ``_per_waba``. Meta sends it when the account is created and when
the limit changes (its "Messaging limits" page). Before, it was kept as an unhandled field and the
store's limit stayed whatever a number update last said. A value of an odd shape is logged and left out,
and the POST is still answered 200 (Meta would retry a refused one for days).

Real app, signed webhooks, a virtual clock (tests/scenarios).
"""

from __future__ import annotations

import logging
from datetime import timedelta

import pytest
from sqlalchemy import select

from connector.storage import models as m
from tests.scenarios.conftest import _world_server, scenario, sqlite_url, world  # noqa: F401 (fixtures)
from tests.test_number_health import COD, account, dashboard, number, told, whatsapp_health


def capability(**value) -> dict:
    return {"field": "business_capability_update", "value": value}


def test_the_portfolios_messaging_limit_is_kept_and_shown(db_url, scenario, world):
    sc = scenario(db_url, "shopify", journeys=COD)
    account(sc, capability(max_daily_conversation_per_phone=250, max_daily_conversations_per_business=2000,
                           max_phone_numbers_per_business=2), at=sc.now)
    sc.work()
    assert whatsapp_health(sc)["messaging_limit"] == "2000"  # Meta's current field wins over the one it removes
    assert "Messaging limit <strong>2000</strong>" in dashboard(sc)
    assert told(world) == []  # kept, not a case: a lowered limit also comes as the number's DOWNGRADE

    account(sc, capability(max_daily_conversations_per_business=-1), at=sc.now + timedelta(days=1))
    account(sc, capability(max_daily_conversations_per_business=10000), at=sc.now - timedelta(hours=1))  # older, arriving late
    sc.later(days=1, hours=1)
    assert whatsapp_health(sc)["messaging_limit"] == "UNLIMITED"


def test_only_the_older_field_still_sets_the_limit(sqlite_url, scenario, world):
    sc = scenario(sqlite_url, "shopify", journeys=COD)
    account(sc, capability(max_daily_conversation_per_phone="10000", max_phone_numbers_per_waba=2), at=sc.now)
    sc.work()
    assert whatsapp_health(sc)["messaging_limit"] == "10000"


@pytest.mark.parametrize("value", [
    {"max_daily_conversations_per_business": "lots"},
    {"max_daily_conversations_per_business": [2000]},
    {"max_daily_conversations_per_business": True, "max_daily_conversation_per_phone": {"n": 1}},
    {"max_daily_conversations_per_business": 0},
    {},
    {"unexpected": "shape"},
])
def test_an_update_of_an_odd_shape_is_logged_and_changes_nothing(sqlite_url, scenario, world, caplog, value):
    sc = scenario(sqlite_url, "shopify", journeys=COD)
    account(sc, number("UPGRADE", old_limit="TIER_250", current_limit="TIER_1K"), at=sc.now)
    with caplog.at_level(logging.WARNING, logger="storeloop.whatsapp"):
        account(sc, capability(**value), at=sc.now + timedelta(minutes=1))
        sc.later(minutes=5)
    assert whatsapp_health(sc)["messaging_limit"] == "TIER_1K"
    with sc.runtime.db.engine.connect() as conn:
        rows = conn.execute(select(m.InboxEvent.status).where(m.InboxEvent.topic == "business_capability")).scalars().all()
    assert rows and set(rows) == {"ignored"}  # one row per store of the account, each kept, none failed
    assert any("business_capability_update" in r.getMessage() for r in caplog.records)
    assert not any("lots" in r.getMessage() for r in caplog.records)  # the field is named, never its value


def test_an_update_whose_value_is_no_object_is_kept_as_ignored_and_the_rest_of_the_post_is_applied(sqlite_url, scenario, world):
    sc = scenario(sqlite_url, "shopify", journeys=COD)
    sc.post(sc.whatsapp_delivery({"object": "whatsapp_business_account", "entry": [{"id": "102290129340398", "time": int(sc.now.timestamp()),
            "changes": [{"field": "business_capability_update", "value": "2000"},
                        capability(max_daily_conversations_per_business=100000)]}]}))
    sc.work()
    assert whatsapp_health(sc)["messaging_limit"] == "100000"


def test_a_capability_update_below_the_limit_kept_tells_the_owner_once_and_the_downgrade_after_it_nobody(db_url, scenario, world):
    """The number's limit is 1K (Meta's UPGRADE said so). Meta cuts the portfolio's limit to 250 and says it
    twice: the business_capability_update first, then the number's DOWNGRADE (stamped a minute later, and
    Meta's retry of it). The owner hears of the cut once, from whichever came first."""
    sc = scenario(db_url, "shopify", journeys=COD)
    account(sc, number("UPGRADE", old_limit="TIER_250", current_limit="TIER_1K"), at=sc.now - timedelta(days=3))
    sc.later(minutes=5)
    cut = sc.now
    account(sc, capability(max_daily_conversations_per_business=250), at=cut)
    sc.later(minutes=5)
    lowered = [text for _, text in told(world) if "Meta lowered the messaging limit" in text]
    assert len(lowered) == 1 and "from 1K" in lowered[0].replace("TIER_", "") and "250" in lowered[0]

    account(sc, number("DOWNGRADE", old_limit="TIER_1K", current_limit="TIER_250"), at=cut + timedelta(minutes=1))
    account(sc, number("DOWNGRADE", old_limit="TIER_1K", current_limit="TIER_250"), at=cut + timedelta(minutes=1))
    sc.later(minutes=10)
    assert [text for _, text in told(world) if "Meta lowered the messaging limit" in text] == lowered
    assert whatsapp_health(sc)["messaging_limit"] in ("250", "TIER_250")


def test_a_downgrade_after_a_first_capability_update_of_the_same_limit_is_told_once(sqlite_url, scenario, world):
    """Meta's first capability update (no limit was known) says 250 and tells nobody; the number's DOWNGRADE
    from 1K to 250, stamped later, is the owner's only word of the cut: told, once (its retry tells nobody)."""
    sc = scenario(sqlite_url, "shopify", journeys=COD)
    account(sc, capability(max_daily_conversations_per_business=250), at=sc.now)
    sc.later(minutes=5)
    assert told(world) == []
    for _ in range(2):
        account(sc, number("DOWNGRADE", old_limit="TIER_1K", current_limit="TIER_250"), at=sc.now)
    sc.later(minutes=10)
    assert len([text for _, text in told(world) if "Meta lowered the messaging limit" in text]) == 1
