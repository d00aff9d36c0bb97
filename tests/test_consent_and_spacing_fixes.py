"""Consent and spacing fixes, told as store stories (the scenario harness: real app, virtual clock,
fake WhatsApp and Shopify on 127.0.0.1): what the customer receives and what the store owner sees.

1. a cart reminder held for the morning by quiet hours is superseded by the next one, so the
   customer never gets two reminders of one cart seconds apart;
4. a step of a marketing journey is gated as marketing even if its template says utility;
6. STOP and START arriving out of order: the newer one stands;
3. a STOP from a sender named only by a business-scoped user id (no phone) opts them out;
7. "no cart reminder within 24 h of an order confirmation" counts from when the confirmation
   went out: a read receipt or a tap on the COD question later does not start the 24 hours again.
"""

from __future__ import annotations

from datetime import timedelta

import pytest

from tests.scenarios import harness
from tests.scenarios import payloads as p
from tests.scenarios.conftest import _world_server, scenario, sqlite_url, world  # noqa: F401 (fixtures)
from tests.scenarios.harness import T0, wa_id
from tests.scenarios.stores import SHOPIFY
from tests.scenarios.test_store_journeys import LADDER, conversion

ASHA = "+919876543210"
BSUID = "IN.13491208655302741918"


def _text(sc, phone: str | None, text: str, at, message_id: str, *, user_id: str | None = None) -> None:
    """A WhatsApp text at ``at`` (not the clock's time); ``phone`` None: the sender shows no number, only ``user_id``."""
    env = p.wa_text(sc.phone_number_id, wa_id(phone) if phone else (user_id or ""), message_id, text, at)
    contact = env["entry"][0]["changes"][0]["value"]["contacts"][0]
    if user_id:
        contact["user_id"] = user_id
    if phone is None:
        contact.pop("wa_id", None)
    sc.post(sc.whatsapp_delivery(env))


# ---- 1. quiet hours must not bunch a cart's reminders together --------------------------------

def test_reminders_held_by_quiet_hours_reach_the_customer_once_not_seconds_apart(sqlite_url, scenario, world):
    sc = scenario(sqlite_url, "shopify", journeys=LADDER, policy={"quiet_hours": "21:00-09:00", "marketing_cap": 3})
    sc.at(SHOPIFY.local(21, 0))
    SHOPIFY.start_checkout(sc, "A", ASHA)  # abandoned 21:30: reminder 1 waits for 09:00; reminder 2 is due 03:30, waits too
    sc.at(SHOPIFY.local(21, 0) + timedelta(hours=12, minutes=30))  # 09:30 the next morning
    assert sc.templates_to(ASHA) == ["cart_2_v1"]  # one reminder this morning, not reminders 1 and 2 seconds apart

    sc.at(SHOPIFY.local(21, 0) + timedelta(hours=13))  # she pays after the reminder she got
    SHOPIFY.pay_checkout(sc, 11, ASHA, "A", total="899.00")
    sc.later(days=2)
    assert sc.templates_to(ASHA) == ["cart_2_v1"]  # reminder 3 never came
    c = conversion(sc)
    assert (c["checkouts_reminded"], c["checkouts_recovered"], c["recovered_revenue"]) == (1, 1, {"INR": "899.00"})


# ---- 4. a marketing journey is marketing, whatever its template's category says ----------------

def test_cart_reminder_bound_to_a_utility_template_still_needs_marketing_opt_in(sqlite_url, scenario, world, monkeypatch):
    templates = [{**t, "category": "utility"} if t["step"] == "checkout_recovery.first" else t for t in harness.TEMPLATES]
    monkeypatch.setattr(harness, "TEMPLATES", templates)
    sc = scenario(sqlite_url, "shopify", journeys=LADDER)
    SHOPIFY.place(sc, SHOPIFY.order(1, ASHA, sc.now, cod=False))  # an order with her phone: WhatsApp contact (utility) consent
    sc.later(hours=1)
    SHOPIFY.start_checkout(sc, "A", ASHA, opt_in=False)  # she did not tick the marketing opt-in
    sc.later(hours=2)
    assert sc.sent(ASHA) == []  # no cart promotion to someone who never opted in to marketing


# ---- 6. STOP and START out of order ----------------------------------------------------------

def test_an_older_start_arriving_after_a_stop_does_not_undo_it(sqlite_url, scenario, world):
    sc = scenario(sqlite_url, "shopify", journeys={"order_confirmation": {}})
    SHOPIFY.place(sc, SHOPIFY.order(1, ASHA, sc.now, cod=False))
    sc.later(minutes=10)
    assert sc.templates_to(ASHA) == ["order_thanks_v1"]
    stop_at = sc.now + timedelta(minutes=1)
    _text(sc, ASHA, "STOP", stop_at, "wamid.STOP1")
    _text(sc, ASHA, "START", stop_at - timedelta(minutes=1), "wamid.START0")  # sent first, delivered last
    sc.later(minutes=10)

    seen = sc.contact(ASHA)
    assert seen["contact"]["opted_out_at"] is not None  # the owner's view: she is still opted out
    assert seen["consent"]["utility"]["state"] == seen["consent"]["marketing"]["state"] == "revoked"


def test_an_older_stop_arriving_after_a_start_does_not_opt_her_out(sqlite_url, scenario, world):
    sc = scenario(sqlite_url, "shopify", journeys={"order_confirmation": {}})
    SHOPIFY.place(sc, SHOPIFY.order(1, ASHA, sc.now, cod=False))
    sc.later(minutes=10)
    start_at = sc.now + timedelta(minutes=2)
    _text(sc, ASHA, "START", start_at, "wamid.START2")
    _text(sc, ASHA, "STOP", start_at - timedelta(minutes=1), "wamid.STOP1")  # sent before START, delivered after
    sc.later(minutes=10)

    seen = sc.contact(ASHA)
    assert seen["contact"]["opted_out_at"] is None
    assert seen["consent"]["marketing"]["state"] == "granted"
    SHOPIFY.place(sc, SHOPIFY.order(2, ASHA, sc.now, cod=False))
    sc.later(minutes=10)
    assert sc.templates_to(ASHA) == ["order_thanks_v1", "order_thanks_v1"]  # she asked to hear from the shop again


# ---- 3. STOP from a sender who shows only a business-scoped user id -------------------------

def test_stop_from_a_sender_without_a_phone_opts_out_the_contact_known_by_their_user_id(sqlite_url, scenario, world):
    sc = scenario(sqlite_url, "shopify", journeys={"order_confirmation": {}})
    SHOPIFY.place(sc, SHOPIFY.order(1, ASHA, sc.now, cod=False))
    sc.later(minutes=5)
    _text(sc, ASHA, "Thanks!", sc.now, "wamid.HI", user_id=BSUID)  # WhatsApp names her by phone and user id
    sc.later(hours=1)
    _text(sc, None, "STOP", sc.now, "wamid.STOPB", user_id=BSUID)  # she adopted a username: no phone any more
    sc.later(minutes=5)

    assert sc.contact(ASHA)["contact"]["opted_out_at"] is not None
    SHOPIFY.place(sc, SHOPIFY.order(2, ASHA, sc.now, cod=False))
    sc.later(minutes=10)
    assert sc.templates_to(ASHA) == ["order_thanks_v1"]  # nothing after her STOP


def test_a_start_between_two_stops_does_not_undo_the_later_stop(sqlite_url, scenario, world):
    """STOP at 10:00, STOP at 10:20, and a START sent at 10:10 delivered last: her last word was STOP."""
    sc = scenario(sqlite_url, "shopify", journeys={"order_confirmation": {}})
    SHOPIFY.place(sc, SHOPIFY.order(1, ASHA, sc.now, cod=False))
    sc.later(minutes=10)
    first = sc.now + timedelta(minutes=1)
    _text(sc, ASHA, "STOP", first, "wamid.STOP1")
    _text(sc, ASHA, "STOP", first + timedelta(minutes=20), "wamid.STOP2")
    _text(sc, ASHA, "START", first + timedelta(minutes=10), "wamid.START1")
    sc.later(minutes=30)
    seen = sc.contact(ASHA)
    assert seen["contact"]["opted_out_at"] is not None


# ---- 7. the cart quiet period after an order confirmation counts from when it was sent ----------

def test_a_read_receipt_for_the_order_confirmation_does_not_hold_back_a_cart_reminder_a_day_later(sqlite_url, scenario, world):
    """Asha's order is confirmed at once; she reads the confirmation 20 hours later. A new cart she leaves the next day is
    reminded 24.5 hours after the confirmation went out: the read receipt is no new confirmation."""
    sc = scenario(sqlite_url, "shopify", journeys={"order_confirmation": {}, **LADDER})
    SHOPIFY.place(sc, SHOPIFY.order(1, ASHA, sc.now, cod=False))
    sc.later(minutes=1)
    thanks = sc.last_to(ASHA, "order_thanks_v1")
    sc.at(T0 + timedelta(hours=20))
    sc.post(sc.whatsapp_delivery(p.wa_status(sc.phone_number_id, wa_id(ASHA), thanks.wamid, "read", sc.now)))
    sc.at(T0 + timedelta(hours=24))
    SHOPIFY.start_checkout(sc, "B", ASHA)
    sc.at(T0 + timedelta(hours=24, minutes=31))  # abandoned at 24 h 30

    assert sc.templates_to(ASHA) == ["order_thanks_v1", "cart_1_v1"]


ACK = {"step": "cod_confirmation.confirmed", "name": "cod_thanks_v1", "category": "utility", "body_text": "Thanks, {{1}} is confirmed.",
       "body": ["order.name"]}


@pytest.mark.parametrize("ack", [False, True], ids=["no acknowledgement", "acknowledged"])
def test_a_confirm_tap_on_the_cod_question_does_not_hold_back_a_cart_reminder_a_day_after_the_question(sqlite_url, scenario,
                                                                                                         world, monkeypatch, ack):
    """Asha is asked to confirm her COD order; she taps Confirm 20 hours later (the store tags the order; with
    ``send_acknowledgement`` she is thanked). A new cart she leaves the next day is reminded 24.5 hours after the question
    went out: her tap, the tag it wrote and the thanks for it are no new order confirmation."""
    if ack:
        monkeypatch.setattr(harness, "TEMPLATES", [*harness.TEMPLATES, ACK])
    cod = {"cod_confirmation": {"reminder_hours": [], "answer_window_hours": 72, "send_acknowledgement": ack}}
    sc = scenario(sqlite_url, "shopify", journeys={**cod, **LADDER})
    SHOPIFY.place(sc, SHOPIFY.awaiting_confirmation(1, ASHA, sc.now))
    sc.later(minutes=1)
    ask = sc.last_to(ASHA, "cod_confirm_v1")
    sc.at(T0 + timedelta(hours=20))
    sc.tap(ASHA, "cod_confirm", ask)
    sc.later(minutes=5)
    assert world.shopify_ops("tagsAdd")  # the tap confirmed the order in the store
    sc.at(T0 + timedelta(hours=24))
    SHOPIFY.start_checkout(sc, "B", ASHA)
    sc.at(T0 + timedelta(hours=24, minutes=31))

    assert sc.templates_to(ASHA) == ["cod_confirm_v1", *(["cod_thanks_v1"] if ack else []), "cart_1_v1"]


def test_a_cart_reminder_still_waits_out_the_day_after_the_order_confirmation(sqlite_url, scenario, world):
    """The rule itself stands: a cart left an hour after the confirmation gets no reminder inside the 24 hours."""
    sc = scenario(sqlite_url, "shopify", journeys={"order_confirmation": {}, **LADDER})
    SHOPIFY.place(sc, SHOPIFY.order(1, ASHA, sc.now, cod=False))
    sc.later(hours=1)
    SHOPIFY.start_checkout(sc, "B", ASHA)
    sc.at(T0 + timedelta(hours=2))

    assert sc.templates_to(ASHA) == ["order_thanks_v1"]
