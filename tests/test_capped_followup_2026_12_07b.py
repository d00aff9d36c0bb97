"""Reminders the per-contact marketing cap skipped (``frequency_cap``): the later steps keep their own times, and a
skipped reminder earns nothing (the scenario harness: the real app over HTTP, fake store and WhatsApp on 127.0.0.1,
virtual clock; the reorder tick run as the worker runs it).
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from tests.conftest import sqlite_template  # noqa: F401
from tests.scenarios.conftest import _world_server, scenario, world  # noqa: F401
from tests.scenarios.harness import TEMPLATES, T0, Scenario
from tests.scenarios.stores import SHOPIFY
from tests.test_reorder_cart_credit_2026_12_07b import ASHA, JOURNEYS, REORDER_TEMPLATES, reorder_tick, stages, start, sunglasses

FOLLOW_UP = {"step": "reorder.follow_up", "name": "reorder_nudge_v1", "category": "marketing",
             "body_text": "Still time to restock {{1}}: {{2}}", "body": ["reorder.product", "reorder.link"]}


def skipped(sc: Scenario, step: str) -> dict[str, int]:
    """Why the week's messages of ``step`` (``journey.step``) were skipped, as the report's message health says."""
    return sc.report()["message_health"]["templates"].get(step, {}).get("skipped_by_reason", {})


def test_a_cart_step_skipped_by_the_cap_leaves_the_next_step_at_its_own_time(db_url, scenario, world):
    """One marketing message a day (``marketing_cap = 1``, ``marketing_cap_days = 1``). Asha leaves a checkout: the
    first reminder goes at once; the second, two hours on, is over the cap and skipped; the third goes at its own time,
    26 hours after the abandonment, not earlier. Her order after it is the ladder's recovery."""
    ladder = {"checkout_recovery": {"abandon_after_minutes": 30, "ladder_minutes": [0, 120, 1560],
                                    "discount_code": "BACK10", "discount_from_step": 3}}
    sc = scenario(db_url, "shopify", journeys=ladder, policy={"marketing_cap": 1, "marketing_cap_days": 1})
    SHOPIFY.start_checkout(sc, "A", ASHA)
    sc.later(minutes=40, step=timedelta(minutes=10))
    assert sc.templates_to(ASHA) == ["cart_1_v1"]
    sc.later(hours=3, step=timedelta(minutes=10))
    assert sc.templates_to(ASHA) == ["cart_1_v1"]
    assert skipped(sc, "checkout_recovery.second") == {"frequency_cap": 1}
    sc.at(T0 + timedelta(minutes=30 + 1560 - 10), step=timedelta(minutes=30))
    assert sc.templates_to(ASHA) == ["cart_1_v1"]  # not pulled forward by the skipped step
    sc.later(minutes=20, step=timedelta(minutes=10))
    assert sc.templates_to(ASHA) == ["cart_1_v1", "cart_3_v1"]
    sc.later(hours=1)
    SHOPIFY.pay_checkout(sc, 2, ASHA, "A", "899.00")
    sc.later(hours=1)
    conversion, _retention = stages(sc)
    assert (conversion["checkouts_reminded"], conversion["checkouts_recovered"], conversion["recovered_revenue"]) == (1, 1, {"INR": "899.00"})


def test_an_order_after_cart_reminders_the_cap_skipped_is_not_their_recovery(db_url, scenario, world):
    """One marketing message a week (``marketing_cap = 1``): her reorder reminder reaches her. She leaves a checkout the
    next day; its first reminder is over the cap and skipped, so none reaches her. Her order of the sunglasses from that
    checkout is no recovered checkout (none was reminded; a skipped reminder is not the last message she got): it is
    the reorder reminder's, the last message that reached her before it."""
    sc = start(db_url, scenario, policy={"marketing_cap": 1})
    sc.later(days=1, hours=1)
    reorder_tick(sc)
    assert sc.templates_to(ASHA) == ["reorder_v1"]
    sc.later(days=1)
    SHOPIFY.start_checkout(sc, "A", ASHA)
    sc.later(minutes=40, step=timedelta(minutes=10))
    assert sc.templates_to(ASHA) == ["reorder_v1"]
    SHOPIFY.place(sc, sunglasses(2, sc.now, checkout="A"))
    sc.later(hours=1)
    conversion, retention = stages(sc)
    assert skipped(sc, "checkout_recovery.first") == {"frequency_cap": 1}
    assert (conversion["checkouts_reminded"], conversion["checkouts_recovered"], conversion["recovered_revenue"]) == (0, 0, {})
    assert (retention["reordered_in_window"], retention["revenue"], retention["lost"]) == (1, {"INR": "89.99"}, 0)


def ipod(n: int, at: Any, checkout: str) -> dict[str, Any]:
    """Asha's paid order #500n of the iPod in checkout ``checkout`` (no sunglasses: no reorder of them)."""
    o = SHOPIFY.order(n, ASHA, at, cod=False, total="899.00", checkout=checkout)
    line = {**o["line_items"][0], "product_id": 632910392, "variant_id": 808950810, "sku": "IPOD2008PINK", "title": "IPod Nano - 8GB",
            "price": "899.00"}
    return {**o, "line_items": [line]}


def capped_reorder_reminder(db_url: str, scenario: Any) -> Scenario:
    """One marketing message a day. The day before her sunglasses' window opens Asha leaves a checkout; its first
    reminder reaches her and she buys the iPod in it. An hour past the next morning's opening, the reorder reminder is
    over the cap and skipped; its follow-up is due three days after it."""
    sc = start(db_url, scenario, {"reorder": {**JOURNEYS["reorder"], "follow_up_days": 3}},
               policy={"marketing_cap": 1, "marketing_cap_days": 1}, templates=(FOLLOW_UP,))
    sc.later(hours=23)
    SHOPIFY.start_checkout(sc, "A", ASHA)
    sc.later(minutes=40, step=timedelta(minutes=10))
    SHOPIFY.place(sc, ipod(2, sc.now, "A"))
    sc.at(T0 + timedelta(days=1, hours=1))
    reorder_tick(sc)
    assert sc.templates_to(ASHA) == ["cart_1_v1"]
    assert skipped(sc, "reorder.reminder") == {"frequency_cap": 1}
    return sc


def test_a_reorder_after_only_a_reorder_reminder_the_cap_skipped_is_not_credited(db_url, scenario, world):
    """She reorders the sunglasses the next day, before the follow-up: the skipped reminder never reached her, so the
    report counts no reminded customer and no reorder revenue; and no follow-up goes after her reorder."""
    sc = capped_reorder_reminder(db_url, scenario)
    sc.later(days=1)
    SHOPIFY.place(sc, sunglasses(3, sc.now, checkout="R"))
    sc.later(days=3)
    assert sc.templates_to(ASHA) == ["cart_1_v1"]
    _conversion, retention = stages(sc)
    assert (retention["reminded"], retention["reordered_in_window"], retention["revenue"], retention["lost"]) == (0, 0, {}, 0)


def test_the_follow_up_of_a_capped_reorder_reminder_goes_at_its_own_time_and_earns_her_reorder(db_url, scenario, world):
    """No reorder: the follow-up goes three days after the skipped reminder, not earlier; her reorder after it is the
    follow-up's (the one reorder message that reached her)."""
    sc = capped_reorder_reminder(db_url, scenario)
    sc.at(T0 + timedelta(days=4, minutes=50), step=timedelta(hours=1))
    assert sc.templates_to(ASHA) == ["cart_1_v1"]
    sc.later(minutes=20, step=timedelta(minutes=10))
    assert sc.templates_to(ASHA) == ["cart_1_v1", "reorder_nudge_v1"]
    sc.later(hours=5)
    SHOPIFY.place(sc, sunglasses(3, sc.now, checkout="R"))
    sc.later(hours=1)
    _conversion, retention = stages(sc)
    assert (retention["reminded"], retention["reordered_in_window"], retention["revenue"]) == (1, 1, {"INR": "89.99"})
