"""One order, one home across journeys, and a pay reminder that keeps listening after a cancel (fixes of review rev7b).

The scenario harness: the real app over HTTP, the fake store and WhatsApp on 127.0.0.1, a virtual clock.

1. The report found the other journeys' runs that credit an order by the run's own contact only: an order she placed
   under her other number (same email) was credited both as a recovered checkout and as a reorder.
2. Its tie-break rules formed a cycle (a cart yielded to a pay reminder whatever the times; a pay reminder to a later
   reorder reminder; a reorder reminder to a later cart reminder), so an order three reminders would earn was credited
   to none of them. Now exactly one journey keeps an order: the one whose reminder reached her last before it.
3. payment_recovery: her newer unpaid try that went on from a reminded one, cancelled by WooCommerce's hold-stock timeout
   before its own pay link, ended ``closed``, so the third try she paid was nobody's recovery; an order the store put
   back to pending after a cancel stayed "cancelled" for the run, which ended ``closed`` instead of ``reminded``.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from sqlalchemy import select

from connector.storage import models as m
from tests.scenarios import conftest as _fixtures
from tests.scenarios import payloads as p
from tests.scenarios.harness import Scenario
from tests.scenarios.stores import SHOPIFY, WOOCOMMERCE
from tests.scenarios.test_store_journeys import conversion
from tests.scenarios.test_woo_recovery import unpaid
from tests.test_payment_review2_2026_12_07 import pay_reminders, recovered, start as pay_start
from tests.test_reorder_cart_credit_2026_12_07b import ASHA, reorder_tick, stages, start, sunglasses

# the scenarios' fixtures (tests/scenarios/conftest.py), for a test file outside that folder
_world_server, world, sqlite_url, scenario = _fixtures._world_server, _fixtures.world, _fixtures.sqlite_url, _fixtures.scenario

ASHA_2 = "+919811122233"  # her second number


def _under_her_second_number(order: dict[str, Any]) -> dict[str, Any]:
    """``order`` placed with her second number (its checkout's phone and customer), the same email as her first's."""
    return {**order, "phone": ASHA_2, "customer": {**order["customer"], "id": p.customer_id_for(ASHA_2)}}


def _with_case(order: dict[str, Any], *, sunglasses_too: bool) -> dict[str, Any]:
    """``order`` (the sunglasses, from ``sunglasses``) for the premium leather case, and the sunglasses too if asked."""
    case = next(li for li in p.fixture("shopify/orders_create.sample.json")["line_items"] if li["sku"] == "CASE-LEATHER-PREM")
    return {**order, "line_items": [case, *(order["line_items"] if sunglasses_too else [])]}


# ---- 1. an order under her other number ------------------------------------------------------------------------------

def test_an_order_under_her_other_number_is_credited_once(db_url, scenario, world):
    """(review rev7b) Day 1: the reorder reminder reaches Asha's first number. Day 2: she checks out with her second
    number (same email), leaves, and the cart reminder reaches that number; an hour on she completes it. The cart
    reminder came last: the order is the cart's recovery only, not also a reorder."""
    sc = start(db_url, scenario)
    sc.later(days=1, hours=1)
    reorder_tick(sc)
    assert sc.templates_to(ASHA) == ["reorder_v1"]
    sc.later(days=1)
    SHOPIFY.start_checkout(sc, "B", ASHA_2)
    sc.later(minutes=40, step=timedelta(minutes=10))
    assert sc.templates_to(ASHA_2) == ["cart_1_v1"]
    sc.later(hours=1)
    SHOPIFY.place(sc, _under_her_second_number(sunglasses(2, sc.now, checkout="B")))
    sc.later(hours=1)
    conversion_, retention = stages(sc)
    assert conversion_["checkouts_recovered"] == 1
    assert (retention["reordered_in_window"], retention["revenue"]) == (0, {})
    assert (conversion_["lost"], retention["lost"]) == (0, 0)


def test_an_order_under_her_other_number_after_a_later_reorder_reminder_is_the_reorders_only(db_url, scenario, world):
    """The other way round: she leaves a checkout under her second number and its three cart reminders reach it over a
    day; the next day the reorder reminder reaches her first number, and she completes that checkout (#5002) under her
    second number. The reorder reminder came last: a reorder with the sunglasses' line, not also a recovered checkout
    with #5002's total (each run, read from its own number, used to find no other and keep the order)."""
    sc = start(db_url, scenario)
    SHOPIFY.start_checkout(sc, "B", ASHA_2)
    sc.later(days=1, hours=1, step=timedelta(minutes=30))
    assert sc.templates_to(ASHA_2) == ["cart_1_v1", "cart_2_v1", "cart_3_v1"]
    sc.later(hours=3)
    reorder_tick(sc)
    assert sc.templates_to(ASHA) == ["reorder_v1"]
    sc.later(hours=2)
    SHOPIFY.place(sc, _under_her_second_number(sunglasses(2, sc.now, checkout="B")))
    sc.later(hours=1)
    conversion_, retention = stages(sc)
    assert (retention["reordered_in_window"], retention["revenue"]) == (1, {"INR": "89.99"})
    assert (conversion_["checkouts_recovered"], conversion_["recovered_revenue"]) == (0, {})
    assert (conversion_["lost"], retention["lost"]) == (0, 0)


# ---- 2. three reminders, one home ------------------------------------------------------------------------------------

def _three_reminders(db_url: str, scenario: Any) -> Scenario:
    """Day 0: Asha leaves an order for a leather case unpaid (card pending); its pay link reaches her an hour on. Day 1:
    the reorder reminder for her sunglasses; she starts a checkout, leaves it, the cart reminder reaches her, and she
    buys the case and the sunglasses in it (#5003, paid)."""
    sc = start(db_url, scenario, {"payment_recovery": {}})
    unpaid_case = {**_with_case(sunglasses(2, sc.now), sunglasses_too=False), "financial_status": "pending"}
    SHOPIFY.place(sc, unpaid_case)
    sc.later(hours=1, minutes=30, step=timedelta(minutes=15))
    assert sc.templates_to(ASHA) == ["pay_v1"]
    sc.later(hours=23)
    reorder_tick(sc)
    assert sc.templates_to(ASHA) == ["pay_v1", "reorder_v1"]
    sc.later(hours=2)
    SHOPIFY.start_checkout(sc, "C", ASHA)
    sc.later(minutes=40, step=timedelta(minutes=10))
    assert sc.templates_to(ASHA) == ["pay_v1", "reorder_v1", "cart_1_v1"]
    sc.later(hours=1)
    SHOPIFY.place(sc, _with_case(sunglasses(3, sc.now, checkout="C"), sunglasses_too=True))
    sc.later(hours=1)
    return sc


def test_an_order_three_reminders_would_earn_is_credited_to_one_of_them(db_url, scenario, world):
    """(review rev7b) Three runs would earn that order; one order is credited once, to one of them, never to none."""
    conversion_, retention = stages(_three_reminders(db_url, scenario))
    credited = conversion_["checkouts_recovered"] + conversion_["payments_recovered"] + retention["reordered_in_window"]
    assert credited == 1, (conversion_, retention)


def test_an_order_three_reminders_would_earn_is_the_last_reminders_with_its_revenue_and_nothing_lost(db_url, scenario, world):
    """The cart reminder reached her last before she bought: a recovered checkout with #5003's total; the pay reminder and
    the reorder reminder that also led to it are neither credited nor counted lost."""
    conversion_, retention = stages(_three_reminders(db_url, scenario))
    assert (conversion_["checkouts_recovered"], conversion_["recovered_revenue"]) == (1, {"INR": "1299.00"})
    assert (conversion_["payments_reminded"], conversion_["payments_recovered"], conversion_["payment_recovered_revenue"]) == (1, 0, {})
    assert (retention["reminded"], retention["reordered_in_window"], retention["revenue"]) == (1, 0, {})
    assert (conversion_["lost"], retention["lost"]) == (0, 0)


# ---- 3. payment_recovery: a continued try cancelled; an order restored -----------------------------------------------

def _newer_try_cancelled(sqlite_url: str, scenario: Any) -> Scenario:
    """#7301 is left pending; its pay link reaches her an hour on. Ten minutes later she checks out again and leaves
    #7302 pending too (it goes on from #7301's reminder); forty minutes on, before #7302's own pay link, WooCommerce's
    hold-stock timeout cancels #7302."""
    sc = pay_start(sqlite_url, scenario, "woocommerce")
    sc.woo("order.created", unpaid(1, sc.now, status="pending"))
    sc.later(hours=1, step=timedelta(minutes=10))
    assert pay_reminders(sc) == ["#7301"]
    sc.later(minutes=10)
    second = unpaid(2, sc.now, status="pending")
    sc.woo("order.created", second)
    sc.later(minutes=40, step=timedelta(minutes=10))
    WOOCOMMERCE.cancelled_echo(sc, second)
    return sc


def test_her_third_try_paid_after_her_continued_try_was_cancelled_is_the_reminders_recovery(sqlite_url, scenario, world):
    """Half an hour after the hold-stock cancel of #7302 she checks out a third time and pays (#7303, INR 1349): the
    reminder that went out for #7301 brought her back, as it would have had #7301 itself been cancelled. #7302, cancelled,
    gets no pay link of its own."""
    sc = _newer_try_cancelled(sqlite_url, scenario)
    sc.later(minutes=30, step=timedelta(minutes=10))
    sc.woo("order.created", WOOCOMMERCE.order(3, ASHA, sc.now, cod=False, total="1349.00"))  # placed paid
    sc.later(days=1)
    assert pay_reminders(sc) == ["#7301"]
    assert recovered(sc) == (1, 1, {"INR": "1349.00"})
    assert conversion(sc)["lost"] == 0


def test_her_third_try_paid_the_next_evening_within_the_reminders_window_is_its_recovery(sqlite_url, scenario, world):
    """The same, but she pays her third try 30 hours after #7302 (more than the day a try replaces another in, within
    the 3 attribution days of #7301's pay link): still the reminder's recovery."""
    sc = _newer_try_cancelled(sqlite_url, scenario)
    sc.later(hours=30)
    sc.woo("order.created", WOOCOMMERCE.order(3, ASHA, sc.now, cod=False, total="1349.00"))
    sc.later(days=1)
    assert pay_reminders(sc) == ["#7301"]
    assert recovered(sc) == (1, 1, {"INR": "1349.00"})


def test_her_third_try_paid_after_the_reminders_window_is_no_recovery(sqlite_url, scenario, world):
    """She pays her third try five days after #7301's pay link (attribution_days 3): not the reminder's doing."""
    sc = _newer_try_cancelled(sqlite_url, scenario)
    sc.later(days=5)
    sc.woo("order.created", WOOCOMMERCE.order(3, ASHA, sc.now, cod=False, total="1349.00"))
    sc.later(days=1)
    assert pay_reminders(sc) == ["#7301"]
    assert recovered(sc) == (1, 0, {})


def _outcome(sc: Scenario, order: dict[str, Any]) -> tuple[str, str | None]:
    """The pay reminder run of ``order``: its status and how it ended."""
    with sc.runtime.db.engine.connect() as conn:
        run = conn.execute(select(m.JourneyRun).where(m.JourneyRun.journey == "payment_recovery",
                                                      m.JourneyRun.subject == f"order:{order['id']}")).one()
    return run.status, run.state.get("outcome")


def test_an_order_put_back_to_pending_after_its_cancel_ends_reminded_not_closed(sqlite_url, scenario, world):
    """#7301's pay link reaches her; WooCommerce's hold-stock timeout cancels it, and the store puts it back to pending
    payment an hour on. She never pays: the run ends as any reminded, unpaid order's does (``reminded``), not as one
    the store cancelled (``closed``)."""
    sc = pay_start(sqlite_url, scenario, "woocommerce")
    first = unpaid(1, sc.now, status="pending")
    sc.woo("order.created", first)
    sc.later(hours=1, step=timedelta(minutes=10))
    assert pay_reminders(sc) == ["#7301"]
    sc.later(minutes=10)
    WOOCOMMERCE.cancelled_echo(sc, first)
    sc.later(hours=1)
    sc.woo("order.updated", {**first, "status": "pending", "date_modified_gmt": p.gmt(sc.now)})
    sc.later(days=4)
    assert _outcome(sc, first) == ("finished", "reminded")
    assert pay_reminders(sc) == ["#7301"]
    assert recovered(sc) == (1, 0, {})


def test_an_order_put_back_to_pending_after_its_cancel_and_then_paid_is_the_reminders_recovery(sqlite_url, scenario, world):
    """The same, but she pays #7301 the next morning: the reminder's recovery, with #7301's revenue."""
    sc = pay_start(sqlite_url, scenario, "woocommerce")
    first = unpaid(1, sc.now, status="pending")
    sc.woo("order.created", first)
    sc.later(hours=1, step=timedelta(minutes=10))
    sc.later(minutes=10)
    WOOCOMMERCE.cancelled_echo(sc, first)
    sc.later(hours=1)
    sc.woo("order.updated", {**first, "status": "pending", "date_modified_gmt": p.gmt(sc.now)})
    sc.later(hours=12)
    sc.woo("order.updated", {**first, "status": "processing", "date_paid_gmt": p.gmt(sc.now), "date_modified_gmt": p.gmt(sc.now)})
    sc.later(days=1)
    assert _outcome(sc, first) == ("finished", "reminded")
    assert recovered(sc) == (1, 1, {"INR": "1299.00"})
