"""Marketing consent given and taken back close together: the last word she gave is what counts, whether the
two webhooks are applied in one inbox batch (the processor's transaction cache) or arrive in the other order.

Told through the real app (signed webhooks, the scenario harness's fake WhatsApp and Shopify, a virtual clock):
what reaches her phone, what the owner sees of her consent, and her consent history as the export shows it.
"""

from __future__ import annotations

from datetime import timedelta

import pytest

from connector.compliance import export_customer
from tests.scenarios import payloads as p
from tests.scenarios.conftest import _world_server, scenario, sqlite_url, world  # noqa: F401 (fixtures)
from tests.scenarios.harness import T0
from tests.scenarios.test_store_journeys import LADDER
from tests.test_consent_and_spacing_fixes import _text

ASHA = "+919876543210"
ASHA_SMS = "+919822200022"  # the number she types into the checkout's "Text me with news and offers" box
CART = ("cart_1_v1", "cart_2_v1")


def _history(sc, phone: str) -> list[tuple[str, str, str]]:
    """Her marketing consent history, oldest first, as `storeloop export` shows it: (state, source, when)."""
    db = sc.runtime.db
    with db.engine.connect() as conn:
        store_id = sc.runtime.store_ids[sc.key]
        export = export_customer(conn, store_id, phone=phone, default_country="IN")
    [contact] = [c for c in export["contacts"] if c["phone_e164"] == phone]
    return [(h["state"], h["source"], str(h["occurred_at"])) for h in contact["consent_history"] if h["category"] == "marketing"]


def _ticked(at, *, phone: str = ASHA, sms_phone: str | None = None) -> dict:
    c = {**p.shopify_checkout("tokA", phone, T0), "updated_at": p.iso(at)}
    if sms_phone:
        c["sms_marketing_phone"] = sms_phone
    return c


def _unticked(at, *, phone: str = ASHA) -> dict:
    return {**p.shopify_checkout("tokA", phone, T0, accepts_marketing=False), "updated_at": p.iso(at), "sms_marketing_phone": None}


def _sms_consent(phone: str, state: str, at) -> dict:
    return {"id": p.customer_id_for(phone), "phone": phone,
            "sms_marketing_consent": {"state": state, "opt_in_level": "single_opt_in", "consent_updated_at": p.iso(at),
                                      "consent_collected_from": "SHOPIFY"}}


# ---- the checkout's SMS box, ticked and unticked ------------------------------------------------------------------

def test_a_tick_and_untick_applied_in_one_batch_send_no_cart_reminder(db_url, scenario, world):
    """Both checkout webhooks reach the connector before the worker's next round: one batch applies them."""
    sc = scenario(db_url, "shopify", journeys=LADDER)
    sc.shopify("checkouts/create", _ticked(T0))
    sc.shopify("checkouts/update", _unticked(T0 + timedelta(minutes=2)))
    sc.later(days=2)

    assert sc.templates_to(ASHA) == []
    assert sc.contact(ASHA)["consent"]["marketing"]["state"] == "unknown"
    assert [(s, src) for s, src, _ in _history(sc, ASHA)] == [("granted", "checkout_opt_in"), ("unknown", "checkout_opt_in_withdrawn")]


def test_a_tick_for_another_number_and_its_untick_applied_in_one_batch_send_that_number_nothing(db_url, scenario, world):
    """The box ticked for a number of its own (Shopify's sms_marketing_phone), then unticked, in one batch."""
    sc = scenario(db_url, "shopify", journeys=LADDER)
    sc.shopify("checkouts/create", _ticked(T0, sms_phone=ASHA_SMS))
    sc.shopify("checkouts/update", _unticked(T0 + timedelta(minutes=2)))
    sc.later(days=2)

    assert sc.contact(ASHA_SMS)["consent"]["marketing"]["state"] == "unknown"
    assert [(s, src) for s, src, _ in _history(sc, ASHA_SMS)] == [("granted", "checkout_opt_in"), ("unknown", "checkout_opt_in_withdrawn")]
    assert sc.templates_to(ASHA) == sc.templates_to(ASHA_SMS) == []


@pytest.mark.parametrize("together", [True, False], ids=["one batch", "two batches"])
def test_an_untick_heard_before_the_older_tick_leaves_her_without_consent(db_url, scenario, world, together):
    """Shopify sends webhooks in no set order: the untick (10:32) is heard before the tick (10:30) it undoes."""
    sc = scenario(db_url, "shopify", journeys=LADDER)
    sc.shopify("checkouts/update", _unticked(T0 + timedelta(minutes=2)))
    if not together:
        sc.later(minutes=1)
    sc.shopify("checkouts/create", _ticked(T0))
    sc.later(days=2)

    assert sc.templates_to(ASHA) == []
    assert sc.contact(ASHA)["consent"]["marketing"]["state"] != "granted"


def test_an_untick_then_a_new_tick_in_one_batch_opt_her_in(db_url, scenario, world):
    """The other way round: unticked, then ticked again before she leaves: she asked for news."""
    sc = scenario(db_url, "shopify", journeys=LADDER)
    sc.shopify("checkouts/create", _unticked(T0))
    sc.shopify("checkouts/update", _ticked(T0 + timedelta(minutes=2)))
    sc.later(hours=7)

    assert sc.templates_to(ASHA) == list(CART)
    assert sc.contact(ASHA)["consent"]["marketing"]["state"] == "granted"


# ---- the store's SMS marketing consent, subscribed and unsubscribed ---------------------------------------------------

@pytest.mark.parametrize("order", ["subscribed then unsubscribed", "unsubscribed then subscribed"])
def test_the_stores_consent_webhooks_in_one_batch_leave_the_later_one(db_url, scenario, world, order):
    """She subscribes to the store's texts and unsubscribes a minute later (or the other way round), then leaves a
    cart: both consent webhooks and the checkout are applied in one batch. (An unsubscribe ends the cart runs she
    has, so the cart comes after it here.)"""
    sc = scenario(db_url, "shopify", journeys=LADDER)
    first, last = order.split(" then ")
    sc.shopify("customers_marketing_consent/update", _sms_consent(ASHA, first, T0 - timedelta(minutes=2)))
    sc.shopify("customers_marketing_consent/update", _sms_consent(ASHA, last, T0 - timedelta(minutes=1)))
    sc.shopify("checkouts/create", p.shopify_checkout("tokA", ASHA, T0, accepts_marketing=False))
    sc.later(hours=7)

    want = "granted" if last == "subscribed" else "revoked"
    assert sc.contact(ASHA)["consent"]["marketing"]["state"] == want
    assert [s for s, _, _ in _history(sc, ASHA)] == ["granted" if first == "subscribed" else "revoked", want]
    assert sc.templates_to(ASHA) == (list(CART) if want == "granted" else [])


@pytest.mark.parametrize("together", [True, False], ids=["one batch", "two batches"])
def test_the_stores_older_consent_heard_last_does_not_override_the_newer(db_url, scenario, world, together):
    """Her unsubscribe (10:32) is heard before the subscribe (10:31) it followed: she stays unsubscribed."""
    sc = scenario(db_url, "shopify", journeys=LADDER)
    sc.shopify("checkouts/create", p.shopify_checkout("tokA", ASHA, T0, accepts_marketing=False))
    sc.shopify("customers_marketing_consent/update", _sms_consent(ASHA, "unsubscribed", T0 + timedelta(minutes=2)))
    if not together:
        sc.later(minutes=1)
    sc.shopify("customers_marketing_consent/update", _sms_consent(ASHA, "subscribed", T0 + timedelta(minutes=1)))
    sc.later(hours=7)

    assert sc.contact(ASHA)["consent"]["marketing"]["state"] == "revoked"
    assert sc.templates_to(ASHA) == []


# ---- the checkout's tick and her STOP on WhatsApp -------------------------------------------------------------------

def test_a_tick_then_a_stop_in_one_batch_send_nothing(db_url, scenario, world):
    sc = scenario(db_url, "shopify", journeys={**LADDER, "order_confirmation": {}})
    sc.shopify("checkouts/create", _ticked(T0))
    _text(sc, ASHA, "STOP", T0 + timedelta(minutes=1), "wamid.STOP")
    sc.later(days=2)

    assert sc.templates_to(ASHA) == []
    seen = sc.contact(ASHA)
    assert seen["consent"]["marketing"]["state"] == "revoked" and seen["contact"]["opted_out_at"] is not None
    assert [(s, src) for s, src, _ in _history(sc, ASHA)] == [("granted", "checkout_opt_in"), ("revoked", "whatsapp_keyword_stop")]


def test_a_stop_then_a_tick_in_one_batch_keep_her_stop(db_url, scenario, world):
    """A checkout's tick is no answer to a STOP on WhatsApp (only START, "resume" or the store's WhatsApp consent)."""
    sc = scenario(db_url, "shopify", journeys=LADDER)
    _text(sc, ASHA, "STOP", T0, "wamid.STOP")
    sc.shopify("checkouts/create", _ticked(T0 + timedelta(minutes=1)))
    sc.later(days=2)

    assert sc.templates_to(ASHA) == []
    assert sc.contact(ASHA)["consent"]["marketing"]["state"] == "revoked"


def test_a_tick_for_another_number_and_its_untick_applied_row_by_row_send_that_number_nothing(db_url, scenario, world):
    """The same, in a batch the processor applies row by row (a privacy request came in the same minute)."""
    sc = scenario(db_url, "shopify", journeys=LADDER)
    sc.shopify("checkouts/create", _ticked(T0, sms_phone=ASHA_SMS))
    sc.shopify("checkouts/update", _unticked(T0 + timedelta(minutes=2)))
    sc.shopify("customers/data_request", {"shop_id": 954889, "shop_domain": "shop-a.myshopify.com",
                                          "customer": {"id": 4242, "email": "ravi@example.com", "phone": "+919800000001"},
                                          "orders_requested": [], "data_request": {"id": 9999}})
    sc.later(days=2)

    assert sc.contact(ASHA_SMS)["consent"]["marketing"]["state"] == "unknown"
    assert [(s, src) for s, src, _ in _history(sc, ASHA_SMS)] == [("granted", "checkout_opt_in"), ("unknown", "checkout_opt_in_withdrawn")]
