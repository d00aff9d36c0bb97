"""A customer's business-scoped user id (BSUID) changes: Meta's ``user_changed_user_id`` (review of 2026-12-07b).

Meta's "System messages webhook reference" (changelog of 11 August 2026): when a WhatsApp user's BSUID changes and no
phone number can be shared, a system message on the ``messages`` field says so, ``system.type`` ``user_changed_user_id``,
with the new ``system.user_id`` (and ``parent_user_id``) beside ``system.previous_user_id`` (and
``previous_parent_user_id``); like every system message it has no ``contacts`` array, and no phone number. A customer who
hides her number is known by her BSUID alone (platform-facts C9): her contact must learn the new one, or her next words
(or her WhatsApp marketing "stop") under it come from a stranger.

Real app, signed webhooks, virtual clock, fake peers (tests/scenarios).
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from sqlalchemy import select

from connector.storage import models as m
from tests.scenarios import conftest as _fixtures
from tests.scenarios import payloads as p
from tests.scenarios.stores import SHOPIFY
from tests.scenarios.test_store_journeys import LADDER
from tests.test_bsuid_and_send_errors import _preference_by_user_id_only
from tests.test_consent_and_spacing_fixes import _text

# the scenarios' fixtures (tests/scenarios/conftest.py), for a test file outside that folder
_world_server, world, sqlite_url, scenario = _fixtures._world_server, _fixtures.world, _fixtures.sqlite_url, _fixtures.scenario

ASHA = "+919876543210"
OLD, NEW = "IN.13491208655302741918", "IN.88822200011133344455"


def user_id_change(sc, previous: str, new: str, message_id: str, **extra: Any) -> dict[str, Any]:
    """Meta's ``user_changed_user_id`` system message: no ``from`` number, no contacts array."""
    system = {"body": f"User A changed from {previous} to {new}", "user_id": new, "previous_user_id": previous,
              "type": "user_changed_user_id", **extra}
    return {"object": "whatsapp_business_account", "entry": [{"id": "102290129340398", "changes": [{"field": "messages", "value": {
        "messaging_product": "whatsapp", "metadata": {"display_phone_number": "15550783881", "phone_number_id": sc.phone_number_id},
        "messages": [{"id": message_id, "timestamp": str(int(sc.now.timestamp())), "type": "system", "system": system}]}}]}]}


def bsuid_text(sc, user_id: str, words: str, message_id: str) -> None:
    """A text from a user who hides her number: only her BSUID names her."""
    env = p.wa_text(sc.phone_number_id, "0", message_id, words, sc.now)
    change = env["entry"][0]["changes"][0]["value"]
    change["contacts"] = [{"profile": {"name": "Asha"}, "user_id": user_id}]
    msg = change["messages"][0]
    msg.pop("from")
    msg["from_user_id"] = user_id
    sc.post(sc.whatsapp_delivery(env))


def inbox(sc) -> list[tuple[str, str | None]]:
    with sc.runtime.db.engine.connect() as conn:
        return [(r.status, r.last_error) for r in conn.execute(select(m.InboxEvent).where(m.InboxEvent.source == "whatsapp")
                                                                .order_by(m.InboxEvent.id))]


def contacts(sc) -> list[tuple[str | None, str | None]]:
    with sc.runtime.db.engine.connect() as conn:
        return [(r.phone_e164, r.wa_user_id) for r in conn.execute(select(m.Contact).where(
            m.Contact.store_id == sc.runtime.store_ids["shop-a"]).order_by(m.Contact.id))]


def test_her_words_under_her_new_user_id_reach_her_own_case_not_a_strangers(sqlite_url, scenario, world):
    """Asha wrote with her number and BSUID; Meta then says her BSUID changed. Her next words, under the new id alone,
    are hers: the same contact (no stranger made of the new id), her case, her timeline. Meta's retry changes nothing."""
    sc = scenario(sqlite_url, "shopify", journeys=LADDER)
    _text(sc, ASHA, "Hi, is the neem face wash in stock?", sc.now, "wamid.HI", user_id=OLD)
    sc.later(minutes=5)
    change = user_id_change(sc, OLD, NEW, "wamid.SYS1")
    sc.post(sc.whatsapp_delivery(change), times=2)  # Meta's retry
    sc.later(minutes=5)
    bsuid_text(sc, NEW, "And the rose water?", "wamid.LATER")
    sc.later(minutes=5)

    assert [status for status, _ in inbox(sc)] == ["done"] * 3, inbox(sc)  # Meta's retry: one row
    assert contacts(sc) == [(ASHA, NEW)]  # one person, her new id learnt
    said = [(t["type"], t["text"]) for t in sc.contact(ASHA)["timeline"] if t["kind"] == "message" and t["direction"] == "in"]
    assert said == [("text", "And the rose water?"), ("system", None), ("text", "Hi, is the neem face wash in stock?")]
    [case] = sc.handoffs("open")
    assert "neem face wash" in case["reason"]  # her one conversation case, her later words added to it
    assert any("And the rose water?" in u["reason"] for u in case["context"]["updates"]), case["context"]


def test_her_whatsapp_marketing_stop_under_her_new_user_id_stops_her_cart_reminders(sqlite_url, scenario, world):
    """After the change, WhatsApp's own "stop promotions" names her by the new id only: her cart reminders stop."""
    sc = scenario(sqlite_url, "shopify", journeys=LADDER)
    _text(sc, ASHA, "Hi, is the neem face wash in stock?", sc.now, "wamid.HI", user_id=OLD)
    SHOPIFY.start_checkout(sc, "A", ASHA)  # reminders at +30 min, +6 h 30, +24 h 30
    sc.later(hours=1)
    assert sc.templates_to(ASHA) == ["cart_1_v1"]
    sc.post(sc.whatsapp_delivery(user_id_change(sc, OLD, NEW, "wamid.SYS2")))
    sc.later(minutes=5)
    sc.post(sc.whatsapp_delivery(_preference_by_user_id_only(sc, NEW, "stop")))
    sc.later(days=2)
    assert sc.templates_to(ASHA) == ["cart_1_v1"]
    assert sc.contact(ASHA)["consent"]["marketing"]["state"] == "revoked"


def test_a_user_id_change_for_someone_the_store_does_not_know_is_done_and_makes_no_contact(sqlite_url, scenario, world):
    """A BSUID change of a user who never wrote to this store: nothing to move; the row is done, not failed, and no
    contact is made of a bare id."""
    sc = scenario(sqlite_url, "shopify", journeys=LADDER)
    sc.post(sc.whatsapp_delivery(user_id_change(sc, OLD, NEW, "wamid.SYS3")))
    sc.later(minutes=5)
    assert [status for status, _ in inbox(sc)] == ["done"], inbox(sc)
    assert contacts(sc) == []


def test_a_parent_user_id_change_is_learnt_with_it(sqlite_url, scenario, world):
    """A managed business's customer also has a parent BSUID (``US.ENT.…``): the change carries both; her contact keeps
    the business-scoped one (what a message names her by), and a message under the new one finds her."""
    sc = scenario(sqlite_url, "shopify", journeys=LADDER)
    _text(sc, ASHA, "Hello", sc.now, "wamid.HI", user_id=OLD)
    sc.post(sc.whatsapp_delivery(user_id_change(sc, OLD, NEW, "wamid.SYS4", parent_user_id="IN.ENT.1112223334445556667",
                                                previous_parent_user_id="IN.ENT.9998887776665554443")))
    sc.later(minutes=5)
    bsuid_text(sc, NEW, "Still there?", "wamid.AGAIN")
    sc.later(minutes=5)
    assert contacts(sc) == [(ASHA, NEW)]


def test_a_late_message_under_her_previous_id_still_reaches_her_and_leaves_her_new_id(sqlite_url, scenario, world):
    """Words she wrote under her previous id before the change, delivered after it (with her number, or under the id
    alone), are hers, and her new id stands: her next message under it finds her too."""
    sc = scenario(sqlite_url, "shopify", journeys=LADDER)
    _text(sc, ASHA, "Hello", sc.now, "wamid.HI", user_id=OLD)
    sc.later(minutes=5)
    sc.post(sc.whatsapp_delivery(user_id_change(sc, OLD, NEW, "wamid.SYS5")))
    sc.later(minutes=5)
    _text(sc, ASHA, "written before the change", sc.now - timedelta(minutes=8), "wamid.LATE1", user_id=OLD)
    bsuid_text(sc, OLD, "also before the change", "wamid.LATE2")
    sc.later(minutes=5)
    bsuid_text(sc, NEW, "and now", "wamid.NOW")
    sc.later(minutes=5)
    assert contacts(sc) == [(ASHA, NEW)]
    said = {t["text"] for t in sc.contact(ASHA)["timeline"] if t["kind"] == "message" and t["direction"] == "in"}
    assert {"written before the change", "also before the change", "and now"} <= said


def test_her_words_under_the_new_id_before_metas_notice_join_her_contact(sqlite_url, scenario, world):
    """Meta keeps no order: her words under the new id came before the notice and made a contact of the bare id. The
    notice says it is her: one contact (her number, her new id), those words on her timeline, her STOP there too."""
    sc = scenario(sqlite_url, "shopify", journeys=LADDER)
    _text(sc, ASHA, "Hello", sc.now, "wamid.HI", user_id=OLD)
    sc.later(minutes=5)
    bsuid_text(sc, NEW, "STOP", "wamid.EARLY")
    sc.later(minutes=1)
    sc.post(sc.whatsapp_delivery(user_id_change(sc, OLD, NEW, "wamid.SYS6")))
    sc.later(minutes=5)
    assert [r for r in contacts(sc) if r[1] is not None] == [(ASHA, NEW)]
    her = sc.contact(ASHA)
    assert "STOP" in {t["text"] for t in her["timeline"] if t["kind"] == "message"}
    assert her["contact"]["opted_out_at"] is not None
    assert [status for status, _ in inbox(sc)] == ["done"] * 3, inbox(sc)
