"""What comes back from WhatsApp (Meta's webhooks) and what it does: a review's faults, told as store stories.

1. The number's health kept on the store row in a shape that is not an object (the whole of it a string or
   a list, or a part such as ``ban`` a plain string: a row written by hand, or by an older version) made
   every reader raise: the outbox claim (no WhatsApp message of any store in the batch went out), the
   dashboard and the report, and each of Meta's later updates and the number's readings (their inbox rows
   failed, nobody told). Now what cannot be read is read as unknown, a clear warning says so, the rest of
   the row is kept, and Meta's news is kept and told as any is.
2. An account update Meta sends in a shape that cannot be read: a change whose ``value`` is not an object
   was refused with a 400 (Meta retries it for days) and kept nowhere; a ``ban_info`` that is a plain
   string failed its row. Now the first is kept as ignored with why, the second left out with a warning.
3. WhatsApp's marketing "stop" of two customers who hide their numbers, in the same second: the second
   was dropped as a duplicate of the first.

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
from tests.scenarios.test_store_journeys import COD, LADDER
from tests.test_bsuid_and_send_errors import _preference_by_user_id_only
from tests.test_consent_and_spacing_fixes import _text
from tests.test_number_health import ASHA, RAVI, WABA, account, ban, dashboard, number, outbox, told, whatsapp_health
from tests.test_number_quality_poll import read_number

ASHA_ID, RAVI_ID = "IN.13491208655302741918", "IN.27715230901847733610"


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


# ---- 2. an account update Meta sends in a shape that cannot be read -------------------------------

def _inbox(sc) -> list[tuple[str, str, str | None]]:
    with sc.runtime.db.engine.connect() as conn:
        return [(r.topic, r.status, r.last_error) for r in conn.execute(
            select(m.InboxEvent).where(m.InboxEvent.store_id == sc.runtime.store_ids[sc.key]).order_by(m.InboxEvent.id))]


def _post_account(sc, *changes: dict, at) -> int:
    """Meta's POST about the business account, as ``account`` sends it, answered with its status code."""
    d = sc.whatsapp_delivery({"object": "whatsapp_business_account",
                              "entry": [{"id": WABA, "time": int(at.timestamp()), "changes": list(changes)}]})
    return sc.client.post(d.path, content=d.body, headers=d.headers).status_code


def test_an_account_update_whose_value_is_not_an_object_is_kept_ignored_not_refused(sqlite_url, scenario, world, caplog):
    """Alone in its POST it was answered 400 (Meta retries such a POST for days) and kept nowhere, logged as
    naming no number we serve. Now it is answered 200 and kept on the account's stores as ignored, with why;
    the retry stores nothing twice, and the next good update is kept and told."""
    sc = scenario(sqlite_url, "shopify", journeys=COD)
    bad = {"field": "account_update", "value": "DISABLED_UPDATE"}
    with caplog.at_level(logging.WARNING):
        assert _post_account(sc, bad, at=sc.now) == 200
        assert _post_account(sc, bad, at=sc.now) == 200  # Meta's retry of the same POST
    assert _inbox(sc) == [("malformed", "ignored", "malformed: account_update change without a value object")]
    assert any("malformed part; kept as ignored" in r.getMessage() for r in caplog.records)

    account(sc, ban("DISABLE"), at=sc.now + timedelta(minutes=1))
    sc.later(minutes=5)
    assert whatsapp_health(sc)["sends_held"] == {"reason": "Meta disabled the WhatsApp Business Account", "until": None}
    assert len(told(world)) == 1


def test_an_account_update_whose_ban_is_a_plain_string_is_logged_and_changes_nothing(sqlite_url, scenario, world, caplog):
    """``ban_info`` sent as a plain string failed the update's inbox row (``normalisation: value.ban_info``), a
    row no replay can mend. Now the ban is left out with a clear warning, the row is done, and the account's
    state is kept as it was: still disabled, its messages still waiting; nobody is told a thing it did not say."""
    sc = scenario(sqlite_url, "shopify", journeys=COD)
    account(sc, ban("DISABLE"), at=sc.now)
    sc.later(minutes=5)
    with caplog.at_level(logging.WARNING):
        account(sc, {"field": "account_update", "value": {"event": "DISABLED_UPDATE", "ban_info": "REINSTATE"}},
                at=sc.now + timedelta(minutes=1))
        sc.later(minutes=5)
    assert [(topic, status) for topic, status, _ in _inbox(sc)] == [("account_update", "done")] * 2
    assert whatsapp_health(sc)["sends_held"] == {"reason": "Meta disabled the WhatsApp Business Account", "until": None}
    assert len(told(world)) == 1  # the disable only
    warned = [r.getMessage() for r in caplog.records if "value.ban_info is a string, not an object" in r.getMessage()]
    assert warned and not any("REINSTATE" in w for w in warned)  # once per store of the account; its words not copied


# ---- 3. two customers who hide their number stop marketing in the same second -----------------------

def test_two_customers_named_only_by_their_business_scoped_ids_who_stop_marketing_in_the_same_second_both_stop(
        sqlite_url, scenario, world):
    """WhatsApp's marketing "stop" of a user who hides her number names her by her BSUID alone (no wa_id). Its
    inbox key was ``preference:None:<category>:<value>:<second>``: a second customer's stop in the same second
    was taken for Meta's retry of the first and dropped, and her cart reminders went on. Each is kept now."""
    sc = scenario(sqlite_url, "shopify", journeys=LADDER)
    _text(sc, ASHA, "Hi, is the neem face wash in stock?", sc.now, "wamid.HI.A", user_id=ASHA_ID)
    _text(sc, RAVI, "Do you ship to Pune?", sc.now, "wamid.HI.R", user_id=RAVI_ID)
    SHOPIFY.start_checkout(sc, "A", ASHA)
    SHOPIFY.start_checkout(sc, "R", RAVI)
    sc.later(hours=1)
    assert (sc.templates_to(ASHA), sc.templates_to(RAVI)) == (["cart_1_v1"], ["cart_1_v1"])

    for user_id in (ASHA_ID, RAVI_ID):  # two POSTs, one per customer, stamped with the same second
        sc.post(sc.whatsapp_delivery(_preference_by_user_id_only(sc, user_id, "stop")))
    sc.later(days=2)

    assert (sc.templates_to(ASHA), sc.templates_to(RAVI)) == (["cart_1_v1"], ["cart_1_v1"])
    for phone in (ASHA, RAVI):
        marketing = sc.contact(phone)["consent"]["marketing"]
        assert (marketing["state"], marketing["source"]) == ("revoked", "whatsapp_preference_stop"), phone
