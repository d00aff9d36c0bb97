"""Third review of 2026-12-07: what the weekly report credits the pay reminder with (merge 01b4a50: d776e25, 145d350).

Each test proves a fault a store owner read in the report (each was a strict xfail until its fix):

1. One order credited twice: her paid order that is a new try at two purchases the pay reminder chased (two unpaid
   orders, each reminded), or at one it chased while the cart ladder chased its checkout, is recovered revenue twice.
2. She pays the reminded order itself after placing a newer unpaid try: the report shows no recovered payment and
   counts one lost (the older run, which recorded the recovery, is dropped as taken over).
3. A newer try that goes on from a reminded one started in the previous week: one reminder, one stalled payment,
   counted reminded (and stalled) in both weeks.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from tests.conftest import sqlite_template  # noqa: F401
from tests.scenarios.conftest import _world_server, scenario, sqlite_url, world  # noqa: F401
from tests.scenarios.stores import SHOPIFY, WOOCOMMERCE
from tests.scenarios.test_store_journeys import LADDER, conversion
from tests.scenarios.test_woo_recovery import paid, unpaid
from tests.test_payment_review2_2026_12_07 import ASHA, pay_reminders, shopify_unpaid, start


def products(order: dict[str, Any], *ids: int) -> dict[str, Any]:
    """``order`` with one line per product id (a purchase of those products only)."""
    line = order["line_items"][0]
    return {**order, "line_items": [{**line, "id": 900 + i, "product_id": pid, "variant_id": None, "sku": None, "title": f"Product {pid}"}
                                    for i, pid in enumerate(ids)]}


# ---- 1. one order credited twice ------------------------------------------------------------------------------------

def test_one_order_paying_for_two_reminded_orders_is_credited_once(sqlite_url, scenario, world):
    """10:30 #5001 (face wash) and 10:40 #5002 (toner) are left pending; each gets its pay link. At 12:20 she places and
    pays #5003 with both (INR 1500). One payment of INR 1500 came in: the report credits the reminders with INR 1500,
    not INR 3000 (it did: both runs recorded #5003 and its whole total), and counts no payment lost (it counted the run
    #5003 did not credit as reminded and unpaid)."""
    sc = start(sqlite_url, scenario, "shopify")
    SHOPIFY.place(sc, products(shopify_unpaid(1, sc.now), 111))
    sc.later(minutes=10)
    SHOPIFY.place(sc, products(shopify_unpaid(2, sc.now), 222))
    sc.later(hours=1, minutes=10, step=timedelta(minutes=10))
    assert pay_reminders(sc) == ["#5001", "#5002"]
    sc.later(minutes=30)
    SHOPIFY.place(sc, products(SHOPIFY.order(3, ASHA, sc.now, cod=False, total="1500.00"), 111, 222))
    sc.later(days=1)
    c = conversion(sc)
    assert c["payment_recovered_revenue"] == {"INR": "1500.00"}
    assert c["lost"] == 0  # nothing was lost: the run #5003 did not credit is not counted reminded and unpaid


def test_an_order_recovered_by_a_cart_reminder_is_not_also_the_pay_reminders_revenue(sqlite_url, scenario, world):
    """#5001 is left pending at 10:30; its pay link reaches her at 11:30. She starts checkout B, leaves it, and its cart
    reminder reaches her; she then pays B as #5002 (INR 899). One order, one INR 899: the report credits it once, to
    one reminder (it credited both the cart ladder and the pay reminder with INR 899)."""
    sc = start(sqlite_url, scenario, "shopify", {"payment_recovery": {}, **LADDER})
    SHOPIFY.place(sc, shopify_unpaid(1, sc.now))
    sc.later(hours=1, step=timedelta(minutes=10))
    SHOPIFY.start_checkout(sc, "B", ASHA)
    sc.later(hours=1, step=timedelta(minutes=10))
    assert sc.templates_to(ASHA) == ["pay_v1", "cart_1_v1"]
    SHOPIFY.pay_checkout(sc, 2, ASHA, "B", "899.00")
    sc.later(days=1)
    c = conversion(sc)
    assert c["checkouts_recovered"] + c["payments_recovered"] == 1
    credited = int(float(c["recovered_revenue"].get("INR", "0"))) + int(float(c["payment_recovered_revenue"].get("INR", "0")))
    assert credited == 899


# ---- 2. she pays the reminded order itself after a newer try ---------------------------------------------------------

def test_paying_the_reminded_order_after_a_newer_unpaid_try_is_a_recovery(sqlite_url, scenario, world):
    """#7301's card is declined; its pay link reaches her. Half an hour on she checks out again (#7302, pending), then
    pays #7301 through the link she got. The reminder recovered a payment: the report says so (it said 0 recovered and
    one lost; before 145d350 it counted #7301 recovered)."""
    sc = start(sqlite_url, scenario, "woocommerce")
    first = unpaid(1, sc.now)
    sc.woo("order.created", first)
    sc.later(hours=1, step=timedelta(minutes=10))
    assert pay_reminders(sc) == ["#7301"]
    sc.later(minutes=30)
    sc.woo("order.created", unpaid(2, sc.now, status="pending"))
    sc.later(minutes=10)
    sc.woo("order.updated", paid(first, sc.now))
    sc.later(days=2)
    c = conversion(sc)
    assert (c["payments_recovered"], c["payment_recovered_revenue"]) == (1, {"INR": "1299.00"})


# ---- 3. one reminder, two weeks ---------------------------------------------------------------------------------------

def test_a_second_try_after_midnight_on_sunday_counts_its_reminder_once(sqlite_url, scenario, world):
    """Sunday 20:00 #7301's card is declined; its pay link reaches her at 21:00. At 00:30 on Monday (the next week) she
    checks out again (#7302, pending) and pays it. One purchase, one reminder: the two weeks' reports together count
    one reminded stalled payment (they counted one in each week: lost in the first, recovered in the second)."""
    sc = start(sqlite_url, scenario, "woocommerce")
    sc.at(WOOCOMMERCE.local(20, 0) + timedelta(days=6))
    sc.woo("order.created", unpaid(1, sc.now))
    sc.later(hours=1, step=timedelta(minutes=10))
    assert pay_reminders(sc) == ["#7301"]
    sc.at(WOOCOMMERCE.local(0, 30) + timedelta(days=7))
    second = unpaid(2, sc.now, status="pending")
    sc.woo("order.created", second)
    sc.later(minutes=10)
    sc.woo("order.updated", paid(second, sc.now))
    sc.later(days=1)
    assert pay_reminders(sc) == ["#7301"]
    weeks = [sc.report(w)["stages"]["conversion"]["metrics"] for w in ("2026-W47", "2026-W48")]
    assert sum(w["payments_reminded"] for w in weeks) == 1


def test_paying_the_reminded_order_ends_the_newer_try_that_went_on_from_it(sqlite_url, scenario, world):
    """As above: #7301 reminded, #7302 (pending) goes on from it, then she pays #7301 through its link. She has paid
    for the purchase: #7302 gets no pay link asking her to pay it again (it got one an hour after it was placed)."""
    sc = start(sqlite_url, scenario, "woocommerce")
    first = unpaid(1, sc.now)
    sc.woo("order.created", first)
    sc.later(hours=1, step=timedelta(minutes=10))
    sc.later(minutes=30)
    sc.woo("order.created", unpaid(2, sc.now, status="pending"))
    sc.later(minutes=10)
    sc.woo("order.updated", paid(first, sc.now))
    sc.later(days=2)
    assert pay_reminders(sc) == ["#7301"]
    c = conversion(sc)
    assert (c["payments_stalled"], c["payments_recovered"], c["lost"]) == (1, 1, 0)
