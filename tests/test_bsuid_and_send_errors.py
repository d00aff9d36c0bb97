"""A WhatsApp user known only by their business-scoped id, and send errors Meta answers at once,
told as store stories (the scenario harness: real app, virtual clock, fake peers on 127.0.0.1).

1. WhatsApp's own marketing "stop" (the ``user_preferences`` webhook) from a user who shows only
   their business-scoped user id (BSUID, no number: platform-facts C9) opts out the contact that
   id was learnt on: no more cart reminders;
3. 131050 (user stopped marketing) and 131026 (undeliverable) in the answer to the send itself
   change the contact as they do in a failed status webhook.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta

import pytest
from sqlalchemy import select

from adapters.whatsapp.client import WhatsAppClient
from connector.sandbox.whatsapp import SandboxServer, SandboxWhatsApp, ScriptedResponse
from connector.storage import models as m
from tests.scenarios import payloads as p
from tests.scenarios.fakes import WA_TOKEN
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


def bsuid_only_text(sc, words: str, message_id: str, name: str = "Meera") -> None:
    """A text from a user who hides their number: no wa_id anywhere, only the BSUID."""
    env = p.wa_text(sc.phone_number_id, "0", message_id, words, sc.now)
    change = env["entry"][0]["changes"][0]["value"]
    change["contacts"] = [{"profile": {"name": name}, "user_id": BSUID}]
    msg = change["messages"][0]
    msg.pop("from")
    msg["from_user_id"] = BSUID
    sc.post(sc.whatsapp_delivery(env))


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


def test_a_new_customer_who_hides_her_number_writes_in_and_a_person_hears_of_it(sqlite_url, scenario, world):
    """A customer the store has never heard of writes from a username account: no number anywhere, only her BSUID.
    Her question is kept against a contact named by that id and opens a case for a person (it used to be stored
    with no contact, and nobody heard of it); her second message joins that contact and that case."""
    sc = scenario(sqlite_url, "shopify", journeys=LADDER)
    for i, words in enumerate(("Do you deliver to Pune? I want to order 10 units", "Please call me back")):
        bsuid_only_text(sc, words, f"wamid.BS{i}")
        sc.later(minutes=5)
    [case] = sc.handoffs(status="open")
    assert "Pune" in str(case) and "Please call me back" in str(case)
    with sc.runtime.db.engine.connect() as conn:
        contacts = conn.execute(select(m.Contact.id, m.Contact.phone_e164, m.Contact.wa_user_id, m.Contact.reachable)).all()
        authors = conn.execute(select(m.Message.contact_id).where(m.Message.direction == "in")).scalars().all()
    [(cid, phone, user_id, reachable)] = contacts
    assert (phone, user_id, reachable) == (None, BSUID, False)  # nothing is sent to her by a number we do not have
    assert authors == [cid, cid]


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


# ---- 3. 131050 / 131026 in the answer to the send itself -----------------------------------------

@pytest.fixture
def graph() -> Iterator[tuple[SandboxWhatsApp, str]]:
    """A fake Graph API that can be scripted to refuse a send with a Meta error code."""
    fake = SandboxWhatsApp(token=WA_TOKEN)
    with SandboxServer(fake.app) as server:
        yield fake, server.url


def _send_through(sc, url: str) -> WhatsAppClient:
    """The scenario's dispatcher sends to ``url`` (the scripted Graph API) instead of the fake world."""
    client = WhatsAppClient(url, sc.settings.whatsapp.api_version, WA_TOKEN)
    sc.runtime.dispatcher.sender = client
    return client


def _refuse_next(fake: SandboxWhatsApp, code: int) -> None:
    fake.script.append(ScriptedResponse(400, {"error": {"message": f"(#{code}) refused", "type": "OAuthException", "code": code,
                                                        "error_data": {"messaging_product": "whatsapp", "details": "refused"},
                                                        "fbtrace_id": "T1"}}))


def test_131050_answered_to_a_cart_reminder_stops_her_other_carts_reminders(sqlite_url, scenario, world, graph):
    fake, url = graph
    sc = scenario(sqlite_url, "shopify", journeys=LADDER)
    client = _send_through(sc, url)
    try:
        SHOPIFY.start_checkout(sc, "A", ASHA)  # cart A: first reminder at +30 min
        sc.later(minutes=10)
        SHOPIFY.start_checkout(sc, "B", ASHA)  # cart B: first reminder at +40 min
        _refuse_next(fake, 131050)  # she stopped marketing on WhatsApp: Meta refuses cart A's reminder at once
        sc.later(minutes=25)
        assert [(c.template, c.status) for c in fake.calls] == [("cart_1_v1", 400)]

        sc.later(days=2)
        assert fake.accepted() == []  # no reminder of cart A or cart B reached her after Meta said she stopped marketing
        seen = sc.contact(ASHA)
        assert (seen["consent"]["marketing"]["state"], seen["consent"]["marketing"]["source"]) == ("revoked", "whatsapp_error_131050")
        assert sorted(j["status"] for j in seen["journeys"]) == ["finished", "finished"]  # both cart runs ended at once
    finally:
        sc.client.portal.call(client.aclose)


def test_131026_answered_to_a_send_marks_her_unreachable_and_later_updates_are_skipped(sqlite_url, scenario, world, graph):
    fake, url = graph
    sc = scenario(sqlite_url, "shopify", journeys={"order_confirmation": {}})
    client = _send_through(sc, url)
    try:
        _refuse_next(fake, 131026)  # her number cannot get WhatsApp messages
        SHOPIFY.place(sc, SHOPIFY.order(1, ASHA, sc.now, cod=False))
        sc.later(minutes=10)
        assert [(c.template, c.status) for c in fake.calls] == [("order_thanks_v1", 400)]
        assert sc.contact(ASHA)["contact"]["reachable"] is False  # the owner sees the number cannot be reached

        SHOPIFY.place(sc, SHOPIFY.order(2, ASHA, sc.now, cod=False))
        sc.later(minutes=10)
        assert [(c.template, c.status) for c in fake.calls] == [("order_thanks_v1", 400)]  # no second try at a dead number
        with sc.runtime.db.engine.connect() as conn:
            rows = conn.execute(select(m.OutboxMessage.status, m.OutboxMessage.skip_reason).order_by(m.OutboxMessage.id)).all()
        assert [tuple(r) for r in rows] == [("failed", None), ("skipped", "unreachable")]
    finally:
        sc.client.portal.call(client.aclose)
