"""Consent and reachability fixes, told as store stories (the scenario harness: real app, virtual
clock, fake WhatsApp and Shopify on 127.0.0.1): what the customer receives and what the store owner sees.

1. a Hindi word one vowel sign away from a keyword ("रुको", wait; "बाद", later) opts nobody out;
2. one 131026 (undeliverable) is not for good: a message from her, or one of ours reaching her
   after it, makes her reachable again; older news arriving late does not;
3. after STOP, WhatsApp's "resume" or the store's WhatsApp marketing consent, when newer, opts her
   back in as START does (her COD questions too); an older one arriving late does not, a STOP
   older than her "resume" does not undo it, and an SMS opt-in in the store is no answer to it;
4. a tap on a quick reply that says STOP opts her out as the typed word does; a cart template's "Stop
   promotions" button (its label as the payload) ends marketing only; a journey's own button (COD Cancel)
   is its answer, whatever its label says.
"""

from __future__ import annotations

from datetime import timedelta
from types import SimpleNamespace

import pytest

from connector import events as ev
from connector.config import PolicySettings
from connector.journeys.cod_confirmation import CodConfirmationConfig
from connector.journeys.delivery_updates import DeliveryUpdatesConfig
from connector.state import tap_intent

from tests.scenarios import harness
from tests.scenarios import payloads as p
from tests.scenarios.conftest import _world_server, scenario, sqlite_url, world  # noqa: F401 (fixtures)
from tests.scenarios.fakes import WhatsAppSend
from tests.scenarios.harness import wa_id
from tests.scenarios.stores import SHOPIFY
from tests.scenarios.test_store_journeys import LADDER
from tests.test_consent_and_spacing_fixes import _text

ASHA = "+919876543210"
THANKS = {"order_confirmation": {}}
COD = {"cod_confirmation": {"reminder_hours": [], "answer_window_hours": 72}}


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


# ---- 2. one 131026 is not for good --------------------------------------------------------------

def _status(sc, sent: WhatsAppSend, status: str, at, code: int | None = None) -> None:
    """WhatsApp's status webhook for one of our messages, dated ``at``; ``code``: the failure's error code."""
    env = p.wa_status(sc.phone_number_id, wa_id(sent.to), sent.wamid, status, at)
    if code is not None:
        env["entry"][0]["changes"][0]["value"]["statuses"][0]["errors"] = [{"code": code, "title": "Message undeliverable"}]
    sc.post(sc.whatsapp_delivery(env))


def test_after_a_131026_her_own_message_makes_her_reachable_for_the_next_cod_question(sqlite_url, scenario, world):
    """Asha's first COD question is undeliverable (she had not accepted WhatsApp's new terms). Two days later she
    writes to the store from WhatsApp, then orders again: this time she is asked to confirm."""
    sc = scenario(sqlite_url, "shopify", journeys=COD)
    SHOPIFY.place(sc, SHOPIFY.awaiting_confirmation(1, ASHA, sc.now))
    sc.later(minutes=1)
    _status(sc, sc.last_to(ASHA, "cod_confirm_v1"), "failed", sc.now, code=131026)
    sc.later(minutes=1)
    assert sc.contact(ASHA)["contact"]["reachable"] is False

    sc.later(days=2)
    _text(sc, ASHA, "Hi, I updated WhatsApp. Where is my order?", sc.now, "wamid.BACK")
    sc.later(minutes=1)
    assert sc.contact(ASHA)["contact"]["reachable"] is True  # the owner sees she can be reached again
    SHOPIFY.place(sc, SHOPIFY.awaiting_confirmation(2, ASHA, sc.now))
    sc.later(minutes=5)
    asks = [s for s in sc.sent(ASHA) if s.template == "cod_confirm_v1"]
    assert [SHOPIFY.name(2) in s.params for s in asks] == [False, True]  # order 2's question reached her


def test_a_131026_that_comes_after_her_newer_message_does_not_mark_her_unreachable(sqlite_url, scenario, world):
    """The failure of the first question (at 10:31) reaches the store only after her message of 10:35: it is older
    news, and her next order is confirmed."""
    sc = scenario(sqlite_url, "shopify", journeys=THANKS)
    SHOPIFY.place(sc, SHOPIFY.order(1, ASHA, sc.now, cod=False))
    sc.later(minutes=1)
    thanks = sc.last_to(ASHA, "order_thanks_v1")
    failed_at = sc.now
    sc.later(minutes=4)
    _text(sc, ASHA, "Thanks! Is it gift wrapped?", sc.now, "wamid.HI")
    sc.later(minutes=5)
    _status(sc, thanks, "failed", failed_at, code=131026)  # Meta's retry of a webhook we missed
    sc.later(minutes=1)

    assert sc.contact(ASHA)["contact"]["reachable"] is True
    SHOPIFY.place(sc, SHOPIFY.order(2, ASHA, sc.now, cod=False))
    sc.later(minutes=5)
    assert sc.templates_to(ASHA) == ["order_thanks_v1", "order_thanks_v1"]


def test_a_later_message_delivered_after_a_131026_makes_her_reachable_again(sqlite_url, scenario, world):
    """Order 1's thanks fails with 131026, but its webhook comes after order 2's thanks went out; that one is
    delivered: she is reachable, and order 3 is confirmed too."""
    sc = scenario(sqlite_url, "shopify", journeys=THANKS)
    SHOPIFY.place(sc, SHOPIFY.order(1, ASHA, sc.now, cod=False))
    sc.later(minutes=1)
    first = sc.last_to(ASHA, "order_thanks_v1")
    failed_at = sc.now
    SHOPIFY.place(sc, SHOPIFY.order(2, ASHA, sc.now, cod=False))
    sc.later(minutes=1)
    second = sc.sent(ASHA)[-1]
    _status(sc, first, "failed", failed_at, code=131026)
    sc.later(minutes=1)
    assert sc.contact(ASHA)["contact"]["reachable"] is False

    _status(sc, second, "delivered", sc.now)
    sc.later(minutes=1)
    assert sc.contact(ASHA)["contact"]["reachable"] is True
    SHOPIFY.place(sc, SHOPIFY.order(3, ASHA, sc.now, cod=False))
    sc.later(minutes=5)
    assert sc.templates_to(ASHA) == ["order_thanks_v1"] * 3


def test_a_delivery_older_than_the_131026_arriving_late_leaves_her_unreachable(sqlite_url, scenario, world):
    """Order 1's thanks was delivered at once, but that webhook comes only after order 2's thanks failed with
    131026: the delivery is older news, and order 3 is not sent to a number WhatsApp refused since."""
    sc = scenario(sqlite_url, "shopify", journeys=THANKS)
    SHOPIFY.place(sc, SHOPIFY.order(1, ASHA, sc.now, cod=False))
    sc.later(minutes=1)
    first, delivered_at = sc.last_to(ASHA, "order_thanks_v1"), sc.now
    sc.later(minutes=10)
    SHOPIFY.place(sc, SHOPIFY.order(2, ASHA, sc.now, cod=False))
    sc.later(minutes=1)
    _status(sc, sc.sent(ASHA)[-1], "failed", sc.now, code=131026)
    sc.later(minutes=1)
    _status(sc, first, "delivered", delivered_at)
    sc.later(minutes=1)

    assert sc.contact(ASHA)["contact"]["reachable"] is False
    SHOPIFY.place(sc, SHOPIFY.order(3, ASHA, sc.now, cod=False))
    sc.later(minutes=5)
    assert sc.templates_to(ASHA) == ["order_thanks_v1", "order_thanks_v1"]


# ---- 3. "resume" and the store's WhatsApp consent answer a STOP, when newer ----------------------

def _shopify_whatsapp_consent(sc, phone: str, state: str, at) -> None:
    sc.shopify("customers_whats_app_marketing_consent/update", p.shopify_whatsapp_consent(p.customer_id_for(phone), phone, state, at))


def _stopped(sc) -> None:
    """Asha's first COD order is asked about; she writes STOP."""
    SHOPIFY.place(sc, SHOPIFY.awaiting_confirmation(1, ASHA, sc.now))
    sc.later(minutes=5)
    _text(sc, ASHA, "STOP", sc.now, "wamid.STOP")
    sc.later(minutes=5)
    assert sc.contact(ASHA)["contact"]["opted_out_at"] is not None


def _asked_about_order_2(sc) -> bool:
    SHOPIFY.place(sc, SHOPIFY.awaiting_confirmation(2, ASHA, sc.now))
    sc.later(minutes=5)
    return any(SHOPIFY.name(2) in s.params for s in sc.sent(ASHA) if s.template == "cod_confirm_v1")


@pytest.mark.parametrize("opt_in", ["whatsapp resume", "store consent"])
def test_a_resume_after_stop_opts_her_back_in_to_cod_questions_and_marketing(sqlite_url, scenario, world, opt_in):
    """A day after her STOP, Asha taps "Resume promotions" in WhatsApp (or subscribes to the store's WhatsApp
    marketing): the owner sees her opted in, and her next COD order is asked about."""
    sc = scenario(sqlite_url, "shopify", journeys=COD)
    _stopped(sc)
    sc.later(days=1)
    if opt_in == "whatsapp resume":
        sc.marketing_preference(ASHA, "resume")
    else:
        _shopify_whatsapp_consent(sc, ASHA, "subscribed", sc.now)
    sc.later(minutes=5)

    seen = sc.contact(ASHA)
    assert seen["contact"]["opted_out_at"] is None
    assert seen["consent"]["marketing"]["state"] == seen["consent"]["utility"]["state"] == "granted"
    assert _asked_about_order_2(sc)


@pytest.mark.parametrize("opt_in", ["whatsapp resume", "store consent"])
def test_a_resume_older_than_the_stop_arriving_late_leaves_her_opted_out(sqlite_url, scenario, world, opt_in):
    """The opt-in was given before her STOP; its webhook comes only after it: her STOP stands."""
    sc = scenario(sqlite_url, "shopify", journeys=COD)
    before = sc.now + timedelta(minutes=2)
    _stopped(sc)
    if opt_in == "whatsapp resume":
        env = p.wa_marketing_preference(sc.phone_number_id, wa_id(ASHA), "resume", before)
        sc.post(sc.whatsapp_delivery(env))
    else:
        _shopify_whatsapp_consent(sc, ASHA, "subscribed", before)
    sc.later(minutes=5)

    assert sc.contact(ASHA)["contact"]["opted_out_at"] is not None
    assert not _asked_about_order_2(sc)


def test_a_stop_older_than_her_resume_arriving_late_does_not_opt_her_out(sqlite_url, scenario, world):
    """She wrote STOP at 10:40 and tapped "Resume promotions" at 10:45; the STOP's webhook comes last. Her last word
    was to hear from the store."""
    sc = scenario(sqlite_url, "shopify", journeys=COD)
    SHOPIFY.place(sc, SHOPIFY.awaiting_confirmation(1, ASHA, sc.now))
    sc.later(minutes=10)
    stop_at = sc.now
    sc.later(minutes=5)
    sc.marketing_preference(ASHA, "resume")
    sc.later(minutes=1)
    _text(sc, ASHA, "STOP", stop_at, "wamid.STOP")
    sc.later(minutes=5)

    assert sc.contact(ASHA)["contact"]["opted_out_at"] is None
    assert _asked_about_order_2(sc)


def test_an_sms_opt_in_in_the_store_does_not_answer_a_stop_sent_on_whatsapp(sqlite_url, scenario, world):
    """A day after her STOP on WhatsApp she ticks the store's SMS marketing box: that is about texts, not WhatsApp."""
    sc = scenario(sqlite_url, "shopify", journeys=COD)
    _stopped(sc)
    sc.later(days=1)
    sms = {"id": p.customer_id_for(ASHA), "phone": ASHA,
           "sms_marketing_consent": {"state": "subscribed", "opt_in_level": "single_opt_in", "consent_updated_at": p.iso(sc.now),
                                     "consent_collected_from": "SHOPIFY"}}
    sc.shopify("customers_marketing_consent/update", sms)
    sc.later(minutes=5)

    seen = sc.contact(ASHA)
    assert (seen["consent"]["marketing"]["state"], seen["consent"]["marketing"]["source"]) == ("granted", "shopify_sms_marketing")
    assert seen["contact"]["opted_out_at"] is not None
    assert not _asked_about_order_2(sc)


# ---- 4. a STOP or "Stop promotions" tap is an opt-out; a journey's own button is not --------------

TAP_STORE = SimpleNamespace(
    policy=PolicySettings(stop_words=("stop", "cancel", "stop promotions")),
    journeys={"cod_confirmation": CodConfirmationConfig(cancel_reasons={"cod_cancel_mistake": "ordered by mistake"}),
              "delivery": DeliveryUpdatesConfig(enabled=False)})


@pytest.mark.parametrize(("payload", "label", "intent"), [
    ("STOP", "Stop promotions", "stop"),
    ("promo_optout_7", "Stop promotions", "stop"),  # a payload of its own: the label says it
    ("RESUME", "Resume", "start"),
    ("size_m", "Medium", None),
    ("cod_cancel", "Cancel", None),  # the journeys' own buttons, whatever their label
    ("cod_cancel_mistake", "Cancel", None),
    ("cod_confirm", "Stop", None),
    ("ndr_cancel", "Cancel", None),  # a journey switched off still sent its buttons once
])
def test_which_taps_are_keywords(payload, label, intent):
    tap = ev.ButtonReplied(phone_number_id="1", message_id="wamid.T", wa_id="919876543210", payload=payload, title=label,
                           occurred_at=harness.T0)
    assert tap_intent(tap, TAP_STORE) == intent


def _tap(sc, quoting: WhatsAppSend, payload: str, label: str) -> None:
    env = p.wa_button_tap(sc.phone_number_id, wa_id(quoting.to), f"wamid.TAP{payload[:8]}", payload, quoting.wamid, sc.now)
    env["entry"][0]["changes"][0]["value"]["messages"][0]["button"]["text"] = label
    sc.post(sc.whatsapp_delivery(env))


@pytest.mark.parametrize("payload", ["STOP", "Stop promotions"], ids=["payload STOP", "the label as payload"])
def test_a_stop_promotions_tap_on_a_cart_reminder_opts_her_out(sqlite_url, scenario, world, monkeypatch, payload):
    """The first cart reminder carries a "Stop promotions" quick reply (payload STOP, or none set: WhatsApp then
    sends the label). Asha taps it: no second or third reminder, none for the cart she leaves two days later.
    A STOP payload opts her out of everything; the label alone asks for no more promotions only, so the COD
    question of the order she places next still reaches her."""
    stop = {"type": "quick_reply", "text": "Stop promotions", "payload": payload}
    monkeypatch.setattr(harness, "TEMPLATES", [{**t, "buttons": [stop]} if t["step"] == "checkout_recovery.first" else t
                                               for t in harness.TEMPLATES])
    sc = scenario(sqlite_url, "shopify", journeys={**LADDER, **COD})
    SHOPIFY.start_checkout(sc, "A", ASHA)
    sc.later(hours=1)
    _tap(sc, sc.last_to(ASHA, "cart_1_v1"), payload, "Stop promotions")
    sc.later(days=2)
    SHOPIFY.start_checkout(sc, "B", ASHA)
    sc.later(days=2)

    assert sc.templates_to(ASHA) == ["cart_1_v1"]
    seen = sc.contact(ASHA)
    if payload == "STOP":
        assert seen["contact"]["opted_out_at"] is not None
        assert (seen["consent"]["marketing"]["state"], seen["consent"]["marketing"]["source"]) == ("revoked", "whatsapp_keyword_stop")
    else:
        assert seen["contact"]["opted_out_at"] is None
        assert (seen["consent"]["marketing"]["state"], seen["consent"]["marketing"]["source"]) == \
            ("revoked", "whatsapp_keyword_stop_promotions")
    SHOPIFY.place(sc, SHOPIFY.awaiting_confirmation(1, ASHA, sc.now))
    sc.later(minutes=5)
    assert sc.templates_to(ASHA)[1:] == ([] if payload == "STOP" else ["cod_confirm_v1"])


def test_a_cod_cancel_button_labelled_with_a_stop_word_cancels_the_order_and_opts_nobody_out(sqlite_url, scenario, world):
    """The store counts a typed "cancel" as an opt-out (its stop_words); its COD question's Cancel button is labelled
    "Cancel". Asha taps it: her order is cancelled, and she is not opted out (her shipping updates still come)."""
    sc = scenario(sqlite_url, "shopify", journeys=COD, policy={"stop_words": ["stop", "cancel"]})
    SHOPIFY.place(sc, SHOPIFY.awaiting_confirmation(1, ASHA, sc.now))
    sc.later(minutes=5)
    _tap(sc, sc.last_to(ASHA, "cod_confirm_v1"), "cod_cancel", "Cancel")
    sc.later(minutes=5)

    assert len(world.shopify_ops("orderCancel")) == 1
    assert sc.contact(ASHA)["contact"]["opted_out_at"] is None
