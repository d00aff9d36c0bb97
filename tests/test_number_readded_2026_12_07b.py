"""A customer's number taken away and put back (the order's phone edited and edited back, her Shopify account's
phone changed and changed back, a WhatsApp number change reverted) sends her no journey message twice.

Contacts are keyed by the number (``phone_key``), a journey run by (journey, subject: the order or checkout), and
each step's message by (journey, step, subject): the number coming back finds the contact it had, and every step
already queued for the order is on record. What reaches her phones is the assertion.
"""

from __future__ import annotations

from datetime import timedelta

from tests.scenarios import payloads as p
from tests.scenarios.conftest import _world_server, scenario, sqlite_url, world  # noqa: F401 (fixtures)
from tests.scenarios.harness import T0
from tests.scenarios.stores import SHOPIFY
from tests.scenarios.test_store_journeys import COD
from tests.test_whatsapp_number_change import changes_number

ASHA, ASHA_OTHER = "+919876543210", "+919845001122"
JOURNEYS = {**COD, "order_confirmation": {}, "delivery": {"steps": ["shipped"]}}


def _edited(sc, order: dict, phone: str) -> dict:
    """The store edits the order's phone (orders/updated), and her account's phone with it (customers/update)."""
    edited = {**order, "phone": phone, "updated_at": p.iso(sc.now)}
    sc.shopify("orders/updated", edited)
    sc.shopify("customers/update", {**order["customer"], "phone": phone, "updated_at": p.iso(sc.now)})
    return edited


def _all_sent(sc) -> list[tuple[str, str]]:
    return [(s.to, s.template or "?") for s in sc.sent()]


def test_a_cod_order_whose_phone_is_changed_away_and_back_asks_and_ships_once(db_url, scenario, world):
    sc = scenario(db_url, "shopify", journeys=JOURNEYS)
    order = SHOPIFY.order(1, ASHA, sc.now)
    SHOPIFY.place(sc, order)
    sc.later(minutes=5)
    order = _edited(sc, order, ASHA_OTHER)
    sc.later(minutes=5)
    order = _edited(sc, order, ASHA)
    sc.later(minutes=5)
    SHOPIFY.place(sc, order)  # Shopify's retries of the order's first deliveries
    sc.later(minutes=5)
    sc.tap(ASHA, "cod_confirm", sc.last_to(ASHA, "cod_confirm_v1"))
    sc.later(minutes=5)
    sc.post(*SHOPIFY.shipped_deliveries(sc, order))
    sc.at(T0 + timedelta(days=2))

    sent = _all_sent(sc)
    assert [t for _, t in sent] == ["cod_confirm_v1", "shipped_v1"], sent


def test_a_paid_order_whose_phone_is_changed_away_and_back_is_thanked_once(db_url, scenario, world):
    sc = scenario(db_url, "shopify", journeys=JOURNEYS)
    order = SHOPIFY.order(1, ASHA, sc.now, cod=False)
    SHOPIFY.place(sc, order)
    sc.later(minutes=5)
    order = _edited(sc, order, ASHA_OTHER)
    order = _edited(sc, order, ASHA)  # both edits in one batch
    sc.later(minutes=5)
    SHOPIFY.place(sc, order)
    sc.post(*SHOPIFY.shipped_deliveries(sc, order))
    sc.at(T0 + timedelta(days=2))

    sent = _all_sent(sc)
    assert [t for _, t in sent] == ["order_thanks_v1", "shipped_v1"], sent
    assert {to for to, _ in sent} == {ASHA}


def test_a_whatsapp_number_change_reverted_sends_the_cod_question_and_its_reminder_once(db_url, scenario, world):
    """She moves her WhatsApp to another number and back before her COD reminder: the reminder goes once, to the
    number she has now; the question is not asked again."""
    sc = scenario(db_url, "shopify", journeys=JOURNEYS)
    order = SHOPIFY.order(1, ASHA, sc.now)
    SHOPIFY.place(sc, order)
    sc.later(minutes=30)
    changes_number(sc, ASHA, ASHA_OTHER)
    sc.later(hours=1)
    changes_number(sc, ASHA_OTHER, ASHA)
    sc.later(minutes=5)
    SHOPIFY.place(sc, order)  # a retry of the order's first deliveries, still naming her number
    sc.at(T0 + timedelta(hours=7))

    assert _all_sent(sc) == [(ASHA, "cod_confirm_v1"), (ASHA, "cod_reminder_v1")]
