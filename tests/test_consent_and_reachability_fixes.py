"""Consent and reachability fixes, told as store stories (the scenario harness: real app, virtual
clock, fake WhatsApp and Shopify on 127.0.0.1): what the customer receives and what the store owner sees.

1. a Hindi word one vowel sign away from a keyword ("रुको", wait; "बाद", later) opts nobody out;
"""

from __future__ import annotations

import pytest

from tests.scenarios.conftest import _world_server, scenario, sqlite_url, world  # noqa: F401 (fixtures)
from tests.scenarios.stores import SHOPIFY
from tests.test_consent_and_spacing_fixes import _text

ASHA = "+919876543210"
THANKS = {"order_confirmation": {}}


# ---- 1. "wait" in Hindi is not "stop" -------------------------------------------------------------

@pytest.mark.parametrize("text", ["रुको", "बाद"], ids=["wait", "later"])
def test_a_hindi_wait_or_later_does_not_opt_her_out(sqlite_url, scenario, world, text):
    """Asha answers "रुको" (wait) or "बाद" (later): one vowel sign from रोको / बंद (stop), but another word.
    Her next order is still confirmed on WhatsApp, and the owner sees her consent as it was."""
    sc = scenario(sqlite_url, "shopify", journeys=THANKS)
    SHOPIFY.place(sc, SHOPIFY.order(1, ASHA, sc.now, cod=False))
    sc.later(minutes=10)
    _text(sc, ASHA, text, sc.now, "wamid.WAIT")
    sc.later(minutes=10)

    seen = sc.contact(ASHA)
    assert seen["contact"]["opted_out_at"] is None
    assert seen["consent"]["utility"]["state"] == "granted"
    SHOPIFY.place(sc, SHOPIFY.order(2, ASHA, sc.now, cod=False))
    sc.later(minutes=10)
    assert sc.templates_to(ASHA) == ["order_thanks_v1", "order_thanks_v1"]


def test_a_hindi_stop_still_opts_her_out(sqlite_url, scenario, world):
    """The word itself, रोको (stop), still does: nothing after it."""
    sc = scenario(sqlite_url, "shopify", journeys=THANKS)
    SHOPIFY.place(sc, SHOPIFY.order(1, ASHA, sc.now, cod=False))
    sc.later(minutes=10)
    _text(sc, ASHA, "रोको", sc.now, "wamid.STOP")
    sc.later(minutes=10)

    assert sc.contact(ASHA)["contact"]["opted_out_at"] is not None
    SHOPIFY.place(sc, SHOPIFY.order(2, ASHA, sc.now, cod=False))
    sc.later(minutes=10)
    assert sc.templates_to(ASHA) == ["order_thanks_v1"]
