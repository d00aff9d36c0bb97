"""A pay reminder whose unpaid order the store cancels (WooCommerce's hold-stock timeout, a Shopify cancel) still earns
her new paid try at the purchase, within the attribution window of the reminder that went out (the scenario harness:
the real app over HTTP, fake store and WhatsApp on 127.0.0.1, virtual clock).

The run ended ``closed`` at the cancel and stopped listening, so the weekly report counted the reminder, no recovery
and a lost payment, though the reminder brought her back.
"""

from __future__ import annotations

from datetime import timedelta

from tests.conftest import sqlite_template  # noqa: F401
from tests.scenarios import payloads as p
from tests.scenarios.conftest import _world_server, scenario, sqlite_url, world  # noqa: F401
from tests.scenarios.stores import SHOPIFY, WOOCOMMERCE
from tests.scenarios.test_store_journeys import conversion
from tests.scenarios.test_woo_recovery import paid, unpaid
from tests.test_payment_review2_2026_12_07 import ASHA, QUIET, pay_reminders, recovered, shopify_unpaid, start


def test_woocommerce_hold_stock_cancel_after_the_pay_link_then_her_paid_new_order_is_its_recovery(sqlite_url, scenario, world):
    """#7301 is left pending at the card page; its pay link reaches her an hour on. Ten minutes later WooCommerce's
    hold-stock timeout cancels #7301; half an hour after that she checks out again and pays (#7302, INR 1349): the
    reminder's recovery, with #7302's revenue, not a lost payment."""
    sc = start(sqlite_url, scenario, "woocommerce")
    first = unpaid(1, sc.now, status="pending")
    sc.woo("order.created", first)
    sc.later(hours=1, step=timedelta(minutes=10))
    assert pay_reminders(sc) == ["#7301"]
    sc.later(minutes=10)
    WOOCOMMERCE.cancelled_echo(sc, first)  # the store's hold-stock timeout
    sc.later(minutes=30)
    sc.woo("order.created", WOOCOMMERCE.order(2, ASHA, sc.now, cod=False, total="1349.00"))  # placed paid
    sc.later(days=1)
    assert pay_reminders(sc) == ["#7301"]
    assert recovered(sc) == (1, 1, {"INR": "1349.00"})
    assert conversion(sc)["lost"] == 0


def test_shopify_cancel_of_the_reminded_order_then_her_paid_new_order_is_its_recovery(sqlite_url, scenario, world):
    """#5001's payment stays pending; its pay link reaches her an hour on. The store cancels #5001; the next morning
    (within attribution_days, 3) she checks out again and pays #5002: the reminder's recovery, with #5002's revenue."""
    sc = start(sqlite_url, scenario, "shopify")
    first = shopify_unpaid(1, sc.now)
    SHOPIFY.place(sc, first)
    sc.later(hours=1, step=timedelta(minutes=10))
    assert pay_reminders(sc) == ["#5001"]
    sc.later(minutes=20)
    cancelled = {**first, "cancelled_at": p.iso(sc.now), "cancel_reason": "other", "updated_at": p.iso(sc.now)}
    sc.shopify("orders/cancelled", cancelled)
    sc.shopify("orders/updated", cancelled)
    sc.later(hours=20, step=timedelta(hours=2))
    SHOPIFY.place(sc, SHOPIFY.order(2, ASHA, sc.now, cod=False, total="1349.00"))  # paid
    sc.later(days=1)
    assert pay_reminders(sc) == ["#5001"]
    assert recovered(sc) == (1, 1, {"INR": "1349.00"})


def test_a_paid_new_order_after_the_attribution_window_of_a_cancelled_reminded_order_is_no_recovery(sqlite_url, scenario, world):
    """The same, but she pays #7302 five days after the link (attribution_days 3): not the reminder's doing."""
    sc = start(sqlite_url, scenario, "woocommerce")
    first = unpaid(1, sc.now, status="pending")
    sc.woo("order.created", first)
    sc.later(hours=1, step=timedelta(minutes=10))
    sc.later(minutes=10)
    WOOCOMMERCE.cancelled_echo(sc, first)
    sc.later(days=5, step=timedelta(hours=6))
    sc.woo("order.created", WOOCOMMERCE.order(2, ASHA, sc.now, cod=False))
    sc.later(hours=1)
    assert recovered(sc) == (1, 0, {})


def test_a_cancel_before_the_pay_link_went_out_credits_nothing_later(sqlite_url, scenario, world):
    """The hold-stock timeout cancels #7301 before its pay link is due: no reminder, so her paid #7302 an hour on is
    nobody's recovery."""
    sc = start(sqlite_url, scenario, "woocommerce")
    first = unpaid(1, sc.now, status="pending")
    sc.woo("order.created", first)
    sc.later(minutes=30)
    WOOCOMMERCE.cancelled_echo(sc, first)
    sc.later(hours=1, step=timedelta(minutes=10))
    sc.woo("order.created", WOOCOMMERCE.order(2, ASHA, sc.now, cod=False))
    sc.later(days=1)
    assert pay_reminders(sc) == []
    assert recovered(sc) == (0, 0, {})


def test_her_new_try_created_pending_after_the_cancel_and_then_paid_is_one_recovered_payment(sqlite_url, scenario, world):
    """WooCommerce's usual new try: after the hold-stock cancel of reminded #7301 she checks out again, #7302 is created
    pending and paid by an update minutes later, before its own pay link. One purchase: one stalled payment, recovered by
    the reminder that went out, with #7302's revenue."""
    sc = start(sqlite_url, scenario, "woocommerce")
    first = unpaid(1, sc.now, status="pending")
    sc.woo("order.created", first)
    sc.later(hours=1, step=timedelta(minutes=10))
    sc.later(minutes=10)
    WOOCOMMERCE.cancelled_echo(sc, first)
    sc.later(minutes=30)
    second = {**unpaid(2, sc.now, status="pending"), "total": "1349.00"}
    sc.woo("order.created", second)
    sc.later(minutes=5)
    sc.woo("order.updated", paid(second, sc.now))
    sc.later(days=1)
    assert pay_reminders(sc) == ["#7301"]
    assert recovered(sc) == (1, 1, {"INR": "1349.00"})
    assert conversion(sc)["payments_stalled"] == 1


def test_a_reminder_held_for_the_night_and_cancelled_with_its_order_earns_nothing(sqlite_url, scenario, world):
    """#5001's pay link is held for the night; the store cancels #5001 at 22:30 and she pays #5002 the next morning.
    The link is withdrawn, never goes out, and the report credits it nothing (nor counts it reminded)."""
    sc = start(sqlite_url, scenario, "shopify", policy=QUIET)
    sc.at(SHOPIFY.local(20, 30))
    first = shopify_unpaid(1, sc.now)
    SHOPIFY.place(sc, first)
    sc.later(hours=2, step=timedelta(minutes=10))
    cancelled = {**first, "cancelled_at": p.iso(sc.now), "cancel_reason": "other", "updated_at": p.iso(sc.now)}
    sc.shopify("orders/cancelled", cancelled)
    sc.shopify("orders/updated", cancelled)
    sc.later(hours=12, step=timedelta(minutes=30))
    SHOPIFY.place(sc, SHOPIFY.order(2, ASHA, sc.now, cod=False))
    sc.later(days=1)
    assert pay_reminders(sc) == []
    assert recovered(sc) == (0, 0, {})
