"""What the weekly report credits the pay reminder with, and a thanks after a refund (second review of 2026-12-07).

The scenario harness: the real app over HTTP, the fake store and WhatsApp on 127.0.0.1, a virtual clock.

1. A payment that came before the reminder went out (the dispatcher had already taken the reminder, and sent it,
   while the payment was processed) is no recovery: the report counts none, and no revenue.
2. She pays a new try at the same purchase after the pay reminder went out: the reminder recovered it, and the
   report credits that order's revenue to it, once; never when the reminder was withdrawn before it went. A new try
   created unpaid (WooCommerce's usual second try) goes on from the reminded one: one stalled payment, credited when paid.
3. A card authorised after the reminder (Shopify manual capture) is her payment: recovered when she authorises,
   however long the store takes to capture; the capture is not counted again, and a voided authorisation recovers nothing.
4. A thanks held for quiet hours is withdrawn when the store refunds the whole order (or voids its payment)
   without cancelling it.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any, Callable

import pytest

from connector.outbox import store as ob
from tests.conftest import sqlite_template  # noqa: F401
from tests.scenarios import payloads as p
from tests.scenarios.conftest import _world_server, scenario, sqlite_url, world  # noqa: F401
from tests.scenarios.harness import TEMPLATES, Scenario
from tests.scenarios.stores import SHOPIFY, WOOCOMMERCE
from tests.scenarios.test_store_journeys import conversion
from tests.scenarios.test_woo_recovery import PAY, paid, unpaid

ASHA = "+919876543210"
QUIET = {"quiet_hours": "21:00-09:00", "utility_in_quiet_hours": False}


def start(sqlite_url: str, scenario: Any, platform: str, journeys: dict[str, Any] | None = None,
          policy: dict[str, Any] | None = None) -> Scenario:
    return scenario(sqlite_url, platform, journeys=journeys or {"payment_recovery": {}}, policy=policy,
                    store_settings={"templates": [*TEMPLATES, PAY]})


def shopify_unpaid(n: int, at: Any) -> dict[str, Any]:
    """Asha's Shopify order #500n, its card payment still pending (the pay link: the order status page)."""
    return {**SHOPIFY.order(n, ASHA, at, cod=False), "financial_status": "pending"}


def pay_reminders(sc: Scenario) -> list[str]:
    return [s.params[0] for s in sc.sent(ASHA) if s.template == "pay_v1"]


def recovered(sc: Scenario) -> tuple[int, int, dict[str, str]]:
    c = conversion(sc)
    return c["payments_reminded"], c["payments_recovered"], c["payment_recovered_revenue"]


def dispatch_with(sc: Scenario, meanwhile: Callable[[], None]) -> None:
    """One round of the dispatcher with ``meanwhile`` happening in between its claim and its send, as the worker's
    processor does it beside the dispatcher: the dispatcher's own claim, send and record, in two halves."""
    rt, portal = sc.runtime, sc.client.portal
    assert rt.dispatcher is not None and portal is not None
    claimed = portal.call(rt.dispatcher._claim, sc.now, list(rt.dispatcher.stores), 10)
    assert claimed, "nothing was due to send"
    meanwhile()
    results = [portal.call(rt.dispatcher._one, row) for row in claimed]
    ob.record(rt.db, results, sc.now)


# ---- 1. paid before the reminder went out: not recovered ------------------------------------------------------

def test_a_payment_processed_while_the_reminder_was_already_on_its_way_is_not_a_recovery(sqlite_url, scenario, world):
    """#5001 pending at 10:30. At 11:30 its pay link is due; the dispatcher has taken it when her payment comes
    through, and the link reaches her after she paid. She paid before it could have moved her: the report
    counts the reminder, and no recovered payment (there used to be one, with no revenue)."""
    sc = start(sqlite_url, scenario, "shopify")
    order = shopify_unpaid(1, sc.now)
    SHOPIFY.place(sc, order)
    sc.later(minutes=50)
    sc.clock.now += timedelta(minutes=10)  # 11:30: the reminder is due
    rt = sc.runtime
    assert rt.processor is not None
    rt.processor.process_timers(limit=500)

    def she_pays() -> None:
        sc.shopify("orders/paid", {**order, "financial_status": "paid", "updated_at": p.iso(sc.now)})
        rt.processor.drain()

    dispatch_with(sc, she_pays)
    sc.later(days=1)
    assert pay_reminders(sc) == ["#5001"]  # the race: it had already left
    assert recovered(sc) == (1, 0, {})


# ---- 2. a new try paid after the reminder is the reminder's recovery ----------------------------------------------

def test_shopify_her_paid_second_try_after_the_pay_reminder_is_credited_to_it(sqlite_url, scenario, world):
    """#5001 is left pending at 10:30; its pay link reaches her at 11:30. At 12:00 she checks out again and pays #5002
    (the same products). The reminder brought her back: one recovered payment, #5002's revenue; not a lost one."""
    sc = start(sqlite_url, scenario, "shopify")
    SHOPIFY.place(sc, shopify_unpaid(1, sc.now))
    sc.later(hours=1, step=timedelta(minutes=10))
    assert pay_reminders(sc) == ["#5001"]
    sc.later(minutes=30)
    second = SHOPIFY.order(2, ASHA, sc.now, cod=False, total="1349.00")  # paid
    SHOPIFY.place(sc, second)
    sc.shopify("orders/paid", {**second, "updated_at": p.iso(sc.now)})  # the same order heard again: credited once
    sc.later(days=1)
    assert pay_reminders(sc) == ["#5001"]
    assert recovered(sc) == (1, 1, {"INR": "1349.00"})
    assert conversion(sc)["lost"] == 0


def test_woocommerce_her_second_try_placed_paid_after_the_pay_reminder_is_credited_to_it(sqlite_url, scenario, world):
    """Her card is declined on #7301; its pay link reaches her an hour on. Half an hour later she checks out again
    and pays (#7302, placed paid): the reminder's recovery, with #7302's revenue."""
    sc = start(sqlite_url, scenario, "woocommerce")
    sc.woo("order.created", unpaid(1, sc.now))
    sc.later(hours=1, step=timedelta(minutes=10))
    assert pay_reminders(sc) == ["#7301"]
    sc.later(minutes=30)
    sc.woo("order.created", WOOCOMMERCE.order(2, ASHA, sc.now, cod=False))  # placed paid
    sc.later(days=1)
    assert pay_reminders(sc) == ["#7301"]
    assert recovered(sc) == (1, 1, {"INR": "1299.00"})


def test_woocommerce_her_second_try_created_pending_and_paid_after_the_pay_reminder_is_credited_to_it(sqlite_url, scenario, world):
    """WooCommerce's usual second try: #7301's pay link reaches her; half an hour on she checks out again, #7302 is
    created pending (her newest try, chased instead) and paid by an update minutes later, before its own reminder.
    One purchase, one stalled payment, recovered by the reminder that went out, with #7302's revenue."""
    sc = start(sqlite_url, scenario, "woocommerce")
    sc.woo("order.created", unpaid(1, sc.now))
    sc.later(hours=1, step=timedelta(minutes=10))
    assert pay_reminders(sc) == ["#7301"]
    sc.later(minutes=30)
    second = unpaid(2, sc.now, status="pending")
    sc.woo("order.created", second)
    sc.later(minutes=5)
    sc.woo("order.updated", paid(second, sc.now))
    sc.later(days=1)
    assert pay_reminders(sc) == ["#7301"]
    assert recovered(sc) == (1, 1, {"INR": "1299.00"})
    assert conversion(sc)["payments_stalled"] == 1


def test_woocommerce_her_second_try_left_unpaid_after_the_pay_reminder_is_one_stalled_payment(sqlite_url, scenario, world):
    """The same, but she leaves #7302 unpaid too: it gets its own pay link (her newest try). One purchase: one stalled
    payment, reminded, not recovered."""
    sc = start(sqlite_url, scenario, "woocommerce")
    sc.woo("order.created", unpaid(1, sc.now))
    sc.later(hours=1, step=timedelta(minutes=10))
    sc.later(minutes=30)
    sc.woo("order.created", unpaid(2, sc.now, status="pending"))
    sc.later(days=2)
    assert pay_reminders(sc) == ["#7301", "#7302"]
    c = conversion(sc)
    assert (c["payments_stalled"], c["payments_reminded"], c["payments_recovered"], c["lost"]) == (1, 1, 0, 1)


def test_a_second_try_paid_while_the_reminder_was_held_credits_nothing(sqlite_url, scenario, world):
    """The other side: #5001's pay link is held for the night; she pays #5002 at 22:00. The link is withdrawn, never
    went out, and the report credits it nothing (nor counts it reminded)."""
    sc = start(sqlite_url, scenario, "shopify", policy=QUIET)
    sc.at(SHOPIFY.local(20, 30))
    SHOPIFY.place(sc, shopify_unpaid(1, sc.now))
    sc.later(hours=1, minutes=30, step=timedelta(minutes=10))
    SHOPIFY.place(sc, SHOPIFY.order(2, ASHA, sc.now, cod=False))
    sc.later(hours=14)
    assert pay_reminders(sc) == []
    assert recovered(sc) == (0, 0, {})


def test_a_second_try_paid_after_the_attribution_window_is_not_credited(sqlite_url, scenario, world):
    """A store that credits a reminder for two hours only: #5002 paid 20 hours after the reminder is not its doing."""
    sc = start(sqlite_url, scenario, "shopify", {"payment_recovery": {"attribution_days": 2 / 24}})
    SHOPIFY.place(sc, shopify_unpaid(1, sc.now))
    sc.later(hours=1, step=timedelta(minutes=10))
    assert pay_reminders(sc) == ["#5001"]
    sc.later(hours=20)
    SHOPIFY.place(sc, SHOPIFY.order(2, ASHA, sc.now, cod=False))
    sc.later(days=1)
    assert recovered(sc) == (1, 0, {})


def test_a_second_try_refunded_since_is_no_recovery(sqlite_url, scenario, world):
    """Her paid #5002 after the reminder, refunded in full by the store later: no recovered payment, no revenue."""
    sc = start(sqlite_url, scenario, "shopify")
    SHOPIFY.place(sc, shopify_unpaid(1, sc.now))
    sc.later(hours=1, step=timedelta(minutes=10))
    second = SHOPIFY.order(2, ASHA, sc.now, cod=False)
    SHOPIFY.place(sc, second)
    sc.later(hours=2)
    sc.shopify("orders/updated", {**second, "financial_status": "refunded", "updated_at": p.iso(sc.now)})
    sc.later(days=1)
    assert recovered(sc) == (1, 0, {})


# ---- 3. a card authorised after the reminder ------------------------------------------------------------------------

def authorized(order: dict[str, Any], at: Any) -> dict[str, Any]:
    """Shopify manual capture: her card is authorised; the store captures at fulfilment."""
    return {**order, "financial_status": "authorized", "updated_at": p.iso(at)}


def test_a_card_authorised_after_the_pay_reminder_is_recovered_however_late_the_capture(sqlite_url, scenario, world):
    """#5001 pending; the pay link reaches her at 11:30; at 12:00 she authorises her card. The store captures five
    days later, when it ships (past the three days' attribution). She paid when she authorised, moved by the
    reminder: one recovered payment with its revenue, counted once (the capture adds nothing)."""
    sc = start(sqlite_url, scenario, "shopify")
    order = shopify_unpaid(1, sc.now)
    SHOPIFY.place(sc, order)
    sc.later(hours=1, step=timedelta(minutes=10))
    assert pay_reminders(sc) == ["#5001"]
    sc.later(minutes=30)
    sc.shopify("orders/updated", authorized(order, sc.now))
    sc.later(days=5)
    sc.shopify("orders/paid", {**order, "financial_status": "paid", "updated_at": p.iso(sc.now)})
    sc.later(hours=1)
    assert pay_reminders(sc) == ["#5001"]
    assert recovered(sc) == (1, 1, {"INR": "1299.00"})


def test_a_card_authorised_after_the_reminder_and_voided_recovers_nothing(sqlite_url, scenario, world):
    """The store releases the authorisation instead of capturing it: no sale, nothing recovered."""
    sc = start(sqlite_url, scenario, "shopify")
    order = shopify_unpaid(1, sc.now)
    SHOPIFY.place(sc, order)
    sc.later(hours=1, step=timedelta(minutes=10))
    sc.later(minutes=30)
    sc.shopify("orders/updated", authorized(order, sc.now))
    sc.later(days=1)
    sc.shopify("orders/updated", {**order, "financial_status": "voided", "updated_at": p.iso(sc.now)})
    sc.later(hours=1)
    assert recovered(sc) == (1, 0, {})


def test_a_card_authorised_while_the_reminder_was_held_withdraws_it_and_credits_nothing(sqlite_url, scenario, world):
    """#5001's pay link held for the night; she authorises at 22:00: it never goes, and nothing is credited to it."""
    sc = start(sqlite_url, scenario, "shopify", policy=QUIET)
    sc.at(SHOPIFY.local(20, 30))
    order = shopify_unpaid(1, sc.now)
    SHOPIFY.place(sc, order)
    sc.later(hours=1, minutes=30, step=timedelta(minutes=10))
    sc.shopify("orders/updated", authorized(order, sc.now))
    sc.later(hours=14)
    sc.shopify("orders/paid", {**order, "financial_status": "paid", "updated_at": p.iso(sc.now)})
    sc.later(hours=1)
    assert pay_reminders(sc) == []
    assert recovered(sc) == (0, 0, {})


# ---- 4. a thanks held for the night is withdrawn by a full refund ---------------------------------------------------

@pytest.mark.parametrize("platform,money", [("shopify", "refunded"), ("shopify", "voided"), ("woocommerce", "refunded")])
def test_a_thanks_held_for_the_night_is_withdrawn_when_the_order_is_refunded_in_full(sqlite_url, scenario, world, platform, money):
    """22:00: she pays an order; its thanks waits for 09:00. At 23:00 the store refunds it in full (or voids the
    payment) without cancelling it. The morning brings her no "thanks for your order"."""
    sc = start(sqlite_url, scenario, platform, {"order_confirmation": {}}, QUIET)
    store = SHOPIFY if platform == "shopify" else WOOCOMMERCE
    sc.at(store.local(22, 0))
    order = store.order(1, ASHA, sc.now, cod=False)
    store.place(sc, order)
    sc.later(hours=1)
    assert sc.templates_to(ASHA) == []  # held
    if platform == "shopify":
        sc.shopify("orders/updated", {**order, "financial_status": money, "updated_at": p.iso(sc.now)})
    else:
        sc.woo("order.updated", {**order, "status": "refunded", "date_modified_gmt": p.gmt(sc.now)})
    sc.later(hours=12)
    assert sc.templates_to(ASHA) == []


def test_a_thanks_held_for_the_night_still_goes_after_a_partial_refund(sqlite_url, scenario, world):
    """The other side: a partial refund leaves the order standing; the thanks goes at 09:00."""
    sc = start(sqlite_url, scenario, "shopify", {"order_confirmation": {}}, QUIET)
    sc.at(SHOPIFY.local(22, 0))
    order = SHOPIFY.order(1, ASHA, sc.now, cod=False)
    SHOPIFY.place(sc, order)
    sc.later(hours=1)
    sc.shopify("orders/updated", {**order, "financial_status": "partially_refunded", "updated_at": p.iso(sc.now)})
    sc.later(hours=12)
    assert sc.templates_to(ASHA) == ["order_thanks_v1"]
