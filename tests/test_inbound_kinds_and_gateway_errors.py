"""What a store owner sees when a customer reacts, sends a sticker or a voice note, and when
WhatsApp's gateway times out on a send.

- A thumbs-up (or a sticker, or WhatsApp's "changed number" notice) on a cart reminder is no
  answer: the recovery goes on and the next reminder still goes; nobody gets a hand-off.
- A voice note, a photo or a document is an answer only a person can take in: the recovery
  stops as replied and a hand-off opens saying what the customer sent.
- A 504 from a gateway (no Meta error body) may hide a send Meta did make: the message is
  ``uncertain`` and never sent a second time; a 503, a 502 and a 5xx with Meta's error body
  are still retried.

Inbound message shapes are those of Meta's Cloud API as recorded in pywa's
``tests/data/updates/message.json`` (reaction, voice, image, sticker), put into the public
``inbound_text`` sample's envelope (tests/scenarios/payloads.py).
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import httpx
import pytest
from sqlalchemy import select

from adapters.whatsapp.errors import classify, is_outcome_unknown
from adapters.whatsapp.normalize import normalize
from connector.errors import RetryableError
from connector.config import ShopifyStore
from connector.journeys.engine import Facts, Run, Update, Wake
from connector.journeys.reorder import Reorder, ReorderConfig
from connector.sandbox.whatsapp import ScriptedResponse
from connector.storage import models as m
from connector.storage.inbox import sync_stores
from tests.scenarios import payloads as p
from tests.scenarios.conftest import _world_server, scenario, sqlite_url, world  # noqa: F401 (fixtures)
from tests.scenarios.harness import T0, wa_id
from tests.scenarios.stores import SHOPIFY
from tests.test_outbox import NOON_IST, Clock, attempts, dispatch, outbox_rows, queue, sandbox, seed_contact, settings_for  # noqa: F401

ASHA = "+919876543210"
SHOPIFY_STORE = ShopifyStore.model_validate({"key": "demo", "platform": "shopify", "webhook_secret": "s", "shop_domain": "demo.myshopify.com"})
LADDER = {"checkout_recovery": {"abandon_after_minutes": 30, "ladder_minutes": [0, 360, 1440]}}

# the message part of each kind, as Meta sends it (pywa tests/data/updates/message.json)
KINDS: dict[str, dict[str, Any]] = {
    "reaction": {"type": "reaction", "reaction": {"message_id": "", "emoji": "\U0001f44d"}},
    "sticker": {"type": "sticker", "sticker": {"mime_type": "image/webp", "sha256": "OmT4nhjUhCMIPNmj7eeOZeCYjTXkLxoOv85OMCFwSuc=",
                                               "id": "1234567890987654321", "animated": False}},
    "system": {"type": "system", "system": {"body": "Asha changed their phone number", "type": "user_changed_number",
                                            "new_wa_id": "919811100000"}},
    "voice": {"type": "audio", "audio": {"mime_type": "audio/ogg; codecs=opus", "sha256": "m04pFf2ERdaopTyFkGPA0+bX3i+YY2dYgVFwOgDLSDI=",
                                         "id": "1234567890987654321", "voice": True}},
    "image": {"type": "image", "image": {"caption": "is this the right size?", "mime_type": "image/jpeg", "sha256": "4654+8g=",
                                         "id": "65463453"}},
}


def inbound(sc, phone: str, kind: str, *, reacting_to: str | None = None) -> None:
    """The customer sends ``kind`` (a reaction names the message it reacts to)."""
    sc._messages += 1
    env, msg = p._inbound("inbound_text.pywa.json", sc.phone_number_id, wa_id(phone), f"wamid.IN{sc._messages:05d}", sc.now)
    del msg["text"]
    part = {k: (dict(v) if isinstance(v, dict) else v) for k, v in KINDS[kind].items()}
    if kind == "reaction":
        part["reaction"]["message_id"] = reacting_to
    msg.update(part)
    sc.post(sc.whatsapp_delivery(env))


def checkout_run(sc) -> Any:
    with sc.runtime.db.engine.connect() as conn:
        return conn.execute(select(m.JourneyRun).where(m.JourneyRun.journey == "checkout_recovery")).one()


# ---- finding 1: a reaction is no reply; a voice note is one a person must hear -------------------

@pytest.mark.parametrize("kind", ["reaction", "sticker", "system"])
def test_a_thumbs_up_sticker_or_number_change_after_the_first_cart_reminder_does_not_stop_the_next_one(sqlite_url, scenario, world, kind):
    sc = scenario(sqlite_url, SHOPIFY.platform, journeys=LADDER)
    SHOPIFY.start_checkout(sc, "A", ASHA)
    sc.at(T0 + timedelta(minutes=30))
    assert sc.templates_to(ASHA) == ["cart_1_v1"]
    inbound(sc, ASHA, kind, reacting_to=sc.last_to(ASHA, "cart_1_v1").wamid)
    sc.at(T0 + timedelta(hours=6, minutes=30))

    # the second reminder still reached her (after a number change, at her new number: test_whatsapp_number_change.py)
    assert sc.templates_to(ASHA) + sc.templates_to("+919811100000") == ["cart_1_v1", "cart_2_v1"]
    assert sc.templates_to("+919811100000") == (["cart_2_v1"] if kind == "system" else [])
    assert [r["status"] for r in sc.contact(ASHA)["journeys"] if r["journey"] == "checkout_recovery"] == ["active"]
    assert sc.handoffs() == [] and world.notifications == []  # nobody is asked to answer a thumbs-up
    # it is still on her timeline
    assert [t["type"] for t in sc.contact(ASHA)["timeline"] if t["kind"] == "message" and t["direction"] == "in"] == [kind]


def test_a_voice_note_after_the_first_cart_reminder_ends_recovery_and_reaches_a_person(sqlite_url, scenario, world):
    sc = scenario(sqlite_url, SHOPIFY.platform, journeys=LADDER)
    SHOPIFY.start_checkout(sc, "A", ASHA)
    sc.at(T0 + timedelta(minutes=30))
    assert sc.templates_to(ASHA) == ["cart_1_v1"]
    inbound(sc, ASHA, "voice")
    sc.at(T0 + timedelta(days=2))

    assert sc.templates_to(ASHA) == ["cart_1_v1"]  # a person answers from here, not reminders
    run = checkout_run(sc)
    assert (run.status, run.state.get("replied"), run.state.get("outcome")) == ("finished", True, "replied")
    [case] = sc.handoffs("open")
    assert "voice note" in case["reason"]
    [(stage, _)] = world.notifications  # the stage owner is told once
    assert stage == case["stage"]


def test_a_photo_with_a_question_reaches_a_person_with_its_caption(sqlite_url, scenario, world):
    sc = scenario(sqlite_url, SHOPIFY.platform, journeys=LADDER)
    SHOPIFY.start_checkout(sc, "A", ASHA)
    sc.at(T0 + timedelta(minutes=30))
    inbound(sc, ASHA, "image")
    sc.later(hours=1)

    [case] = sc.handoffs("open")
    assert case["reason"] == "customer sent a photo: is this the right size?"
    assert checkout_run(sc).status == "finished"


def wa_message(kind: str, at) -> Any:
    [event] = normalize("message", {"field": "messages", "metadata": {"phone_number_id": "1122334455667"},
                                    "contacts": [{"wa_id": wa_id(ASHA), "profile": {"name": "Asha"}}],
                                    "message": {"from": wa_id(ASHA), "id": f"wamid.{kind}", "timestamp": str(int(at.timestamp())),
                                                **KINDS[kind]}}, SHOPIFY_STORE)
    return event


def test_a_reaction_to_a_reorder_reminder_keeps_its_follow_up_and_a_voice_note_ends_it():
    now = T0 + timedelta(days=1)
    follow_up = T0 + timedelta(days=3)
    run = Run(journey="reorder", subject="reorder:1:sku-1", status="active", next_due_at=follow_up, contact_id=1, started_at=T0,
              state={"sent": 1, "attribution_ends": (T0 + timedelta(days=14)).isoformat()})
    facts = Facts(store_name="Bloom", contact_id=1, first_name="Asha")
    config = ReorderConfig()
    assert Reorder().decide(wa_message("reaction", now), run, facts, config, now) == []  # the follow-up stays due
    commands = Reorder().decide(wa_message("voice", now), run, facts, config, now)
    assert Update({"replied": True}) in commands and Wake(T0 + timedelta(days=14)) in commands  # no follow-up after an answer


# ---- finding 5: a gateway timeout is outcome-unknown, never re-sent ----------------------------

def test_a_504_without_a_meta_error_is_outcome_unknown_while_503_502_and_meta_errors_are_retried():
    html = "<html><body><h1>504 Gateway Time-out</h1></body></html>"
    timeout = classify(httpx.Response(504, text=html, headers={"Content-Type": "text/html"}))
    assert isinstance(timeout, RetryableError) and timeout.outcome_unknown and is_outcome_unknown(timeout)
    assert timeout.http_status == 504 and "Time-out" not in str(timeout)  # not the body
    for answer in (httpx.Response(503, text="<html>Service Unavailable</html>"),
                   httpx.Response(502, text="<html>502 Bad Gateway</html>"),
                   httpx.Response(504, json={"error": {"code": 131000, "message": "Something went wrong"}}),
                   httpx.Response(429, json={"error": {"code": 130429, "message": "Rate limit hit"}})):
        exc = classify(answer)
        assert isinstance(exc, RetryableError) and not exc.outcome_unknown, answer.status_code


def test_a_send_answered_by_a_gateway_timeout_is_uncertain_and_never_sent_twice(db, db_url, sandbox):
    fake, url = sandbox
    settings = settings_for(db_url, url)
    ids = sync_stores(db, [(s.key, s.platform) for s in settings.stores])
    cid = seed_contact(db, ids["shop-a"])
    queue(db, settings, ids["shop-a"], cid)
    fake.script.append(ScriptedResponse(504, "<html><body>504 Gateway Time-out</body></html>"))
    clock = Clock(NOON_IST)
    dispatch(db, settings, ids, clock, url)
    clock.now += timedelta(days=1)  # long past any backoff
    dispatch(db, settings, ids, clock, url)

    [row] = outbox_rows(db)
    assert (row.status, row.attempts) == ("uncertain", 1)  # its status webhook settles it
    assert [a.outcome for a in attempts(db)] == ["uncertain"]
    assert fake.accepted() == []  # the customer never gets the message a second time
