"""A WhatsApp user known only by their business-scoped id, and send errors Meta answers at once,
told as store stories (the scenario harness: real app, virtual clock, fake peers on 127.0.0.1).

1. WhatsApp's own marketing "stop" (the ``user_preferences`` webhook) from a user who shows only
   their business-scoped user id (BSUID, no number: platform-facts C9) opts out the contact that
   id was learnt on: no more cart reminders;
3. 131050 (user stopped marketing) and 131026 (undeliverable) in the answer to the send itself
   change the contact as they do in a failed status webhook.
"""

from __future__ import annotations

from datetime import timedelta

from tests.scenarios import payloads as p
from tests.scenarios.conftest import _world_server, scenario, sqlite_url, world  # noqa: F401 (fixtures)
from tests.scenarios.stores import SHOPIFY
from tests.scenarios.test_store_journeys import LADDER
from tests.test_consent_and_spacing_fixes import _text

ASHA = "+919876543210"
BSUID = "IN.13491208655302741918"


def _preference_by_user_id_only(sc, user_id: str, value: str) -> dict:
    """WhatsApp's marketing preference of a user who hides their number: no wa_id anywhere, only the BSUID."""
    env = p.wa_marketing_preference(sc.phone_number_id, "0", value, sc.now)
    change = env["entry"][0]["changes"][0]["value"]
    change["contacts"] = [{"profile": {"name": "Asha"}, "user_id": user_id}]
    change["user_preferences"][0].pop("wa_id")
    return env


# ---- 1. WhatsApp's marketing "stop" from a user named only by their BSUID -----------------------

def test_whatsapp_marketing_stop_by_business_scoped_id_only_stops_cart_reminders(sqlite_url, scenario, world):
    sc = scenario(sqlite_url, "shopify", journeys=LADDER)
    _text(sc, ASHA, "Hi, is the neem face wash in stock?", sc.now, "wamid.HI", user_id=BSUID)  # phone and BSUID, together
    SHOPIFY.start_checkout(sc, "A", ASHA)  # she leaves a cart: reminders at +30 min, +6 h 30, +24 h 30
    sc.later(hours=1)
    assert sc.templates_to(ASHA) == ["cart_1_v1"]

    # she adopted a username: WhatsApp's "stop marketing" names her by her BSUID alone
    sc.post(sc.whatsapp_delivery(_preference_by_user_id_only(sc, BSUID, "stop")))
    sc.later(days=2)

    assert sc.templates_to(ASHA) == ["cart_1_v1"]  # no second or third cart reminder after she stopped marketing
    marketing = sc.contact(ASHA)["consent"]["marketing"]
    assert (marketing["state"], marketing["source"]) == ("revoked", "whatsapp_preference_stop")


# ---- 2. the BSUID lookup reads its index, not every contact of the store ------------------------

def test_a_contact_is_found_by_business_scoped_id_through_its_index(tmp_path, sqlite_template):
    """A username user's STOP or marketing "stop" finds their contact by BSUID alone: in a store
    with a hundred thousand contacts that lookup must read the (store, wa_user_id) index."""
    import shutil

    from connector.state import _CONTACT_BY_USER_ID
    from connector.storage.db import make_engine
    from tests.test_query_plans import plan_of

    path = tmp_path / "plans.db"
    shutil.copy(sqlite_template, path)
    engine = make_engine(f"sqlite:///{path}")
    try:
        with engine.connect() as conn:
            plan = plan_of(conn, _CONTACT_BY_USER_ID, {"sid": 1, "v": BSUID})
    finally:
        engine.dispose()
    assert "ix_contacts_store_wa_user_id (store_id=? AND wa_user_id=?)" in plan, plan
