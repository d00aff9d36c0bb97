"""The COD pay-now offer (``cod_confirmation.prepaid_offer``) and her opt-outs.

The offer goes out as its template's category in the config: a marketing template needs her marketing opt-in,
which "Stop promotions" or WhatsApp's own marketing "stop" takes back; a utility one is stopped by a STOP (which
opts her out of everything; a utility offer carries no discount code, which would make it marketing). The gate is applied again when the message goes out, so an opt-out given while the
offer waits (quiet hours) stops it. What reaches her phone is the assertion.
"""

from __future__ import annotations

from datetime import timedelta

import pytest

from tests.scenarios.conftest import _world_server, scenario, sqlite_url, world  # noqa: F401 (fixtures)
from tests.scenarios.harness import TEMPLATES
from tests.scenarios.stores import SHOPIFY
from tests.scenarios.test_cod_prepaid_offer import JOURNEYS, OFFER
from tests.test_consent_and_spacing_fixes import _text

ASHA = "+919876543210"


# a utility offer is only her order's pay link: one with a discount code is marketing, refused as utility at load
# (tests/test_config_discount_category_2026_12_07b.py)
UTILITY_OFFER = {**OFFER, "category": "utility", "body_text": "Pay now for {{1}}: {{2}}", "body": ["order.name", "order.payment_url"]}
NO_CODE = {"cod_confirmation": {k: v for k, v in JOURNEYS["cod_confirmation"].items() if k != "prepaid_discount_code"}}


def _store(sc_factory, db_url, category: str, **policy):
    utility = category == "utility"
    return sc_factory(db_url, "shopify", journeys=NO_CODE if utility else JOURNEYS, policy=policy,
                      store_settings={"templates": [*TEMPLATES, UTILITY_OFFER if utility else {**OFFER, "category": category}]})


def _asked(sc) -> None:
    """Asha orders COD and is asked to confirm; she has opted in to WhatsApp marketing."""
    sc.marketing_preference(ASHA, "resume")
    sc.later(minutes=1)
    SHOPIFY.place(sc, SHOPIFY.order(1, ASHA, sc.now))
    sc.later(minutes=1)


def _confirm(sc) -> None:
    sc.tap(ASHA, "cod_confirm", sc.last_to(ASHA, "cod_confirm_v1"))
    sc.later(minutes=5)


def test_a_marketing_offer_reaches_her_when_she_stopped_nothing(db_url, scenario, world):
    sc = _store(scenario, db_url, "marketing", quiet_hours="")
    _asked(sc)
    _confirm(sc)
    assert sc.templates_to(ASHA) == ["cod_confirm_v1", "prepaid_v1"]


@pytest.mark.parametrize("how", ["Stop promotions", "whatsapp marketing stop", "STOP"])
def test_a_marketing_offer_is_not_sent_after_she_stopped_marketing(db_url, scenario, world, how):
    """She stopped promotions before she tapped Confirm: her order is confirmed, no offer comes."""
    sc = _store(scenario, db_url, "marketing", quiet_hours="")
    _asked(sc)
    if how == "whatsapp marketing stop":
        sc.marketing_preference(ASHA, "stop")
    else:
        _text(sc, ASHA, how, sc.now, "wamid.OPTOUT")
    sc.later(minutes=1)
    _confirm(sc)
    assert sc.templates_to(ASHA) == ["cod_confirm_v1"]
    assert [t["tags"] for t in world.shopify_ops("tagsAdd")] == [["cod-confirmed"]]  # the Confirm still counts


@pytest.mark.parametrize("how", ["Stop promotions", "whatsapp marketing stop"])
def test_a_marketing_offer_held_for_the_morning_is_not_sent_after_she_stops_marketing_overnight(db_url, scenario, world, how):
    """The offer waits out quiet hours; she stops promotions at 22:00: at 09:00 the gate reads her consent again."""
    sc = _store(scenario, db_url, "marketing", quiet_hours="21:00-09:00")
    sc.at(SHOPIFY.local(20, 30))
    _asked(sc)
    sc.at(SHOPIFY.local(21, 10))
    _confirm(sc)
    assert sc.templates_to(ASHA) == ["cod_confirm_v1"]  # held for the morning
    sc.at(SHOPIFY.local(22, 0))
    if how == "whatsapp marketing stop":
        sc.marketing_preference(ASHA, "stop")
    else:
        _text(sc, ASHA, how, sc.now, "wamid.OPTOUT")
    sc.at(SHOPIFY.local(10, 0) + timedelta(days=1))
    assert sc.templates_to(ASHA) == ["cod_confirm_v1"]


def test_a_utility_offer_reaches_her_when_she_stopped_nothing(db_url, scenario, world):
    sc = _store(scenario, db_url, "utility", quiet_hours="")
    _asked(sc)
    _confirm(sc)
    assert sc.templates_to(ASHA) == ["cod_confirm_v1", "prepaid_v1"]


def test_a_utility_offer_is_not_sent_after_her_stop(db_url, scenario, world):
    """A STOP opts her out of everything: the Confirm she taps after it still confirms the order, but no offer."""
    sc = _store(scenario, db_url, "utility", quiet_hours="")
    _asked(sc)
    _text(sc, ASHA, "STOP", sc.now, "wamid.STOP")
    sc.later(minutes=1)
    _confirm(sc)
    assert sc.templates_to(ASHA) == ["cod_confirm_v1"]


def test_a_utility_offer_held_overnight_is_not_sent_after_her_stop(db_url, scenario, world):
    """A store that holds utility messages in quiet hours too: the offer waits, her STOP at 22:00 stops it."""
    sc = _store(scenario, db_url, "utility", quiet_hours="21:00-09:00", utility_in_quiet_hours=False)
    sc.at(SHOPIFY.local(20, 30))
    _asked(sc)
    sc.at(SHOPIFY.local(21, 10))
    _confirm(sc)
    assert sc.templates_to(ASHA) == ["cod_confirm_v1"]
    sc.at(SHOPIFY.local(22, 0))
    _text(sc, ASHA, "STOP", sc.now, "wamid.STOP")
    sc.at(SHOPIFY.local(10, 0) + timedelta(days=1))
    assert sc.templates_to(ASHA) == ["cod_confirm_v1"]
