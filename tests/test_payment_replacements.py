"""Payment recovery when she tries again: what reaches her phone (the scenario harness: the real app over HTTP,
fake store and WhatsApp on 127.0.0.1, virtual clock).

1. A pay reminder held for the store's quiet hours is withdrawn when she replaces the unpaid order before
   it goes (a paid second try at the same purchase): she is never asked to pay for what she has paid;
   nor for an order the store cancelled meanwhile.
2. Two unpaid tries at the same purchase get one reminder, for the newest try, whichever order the store's
   webhooks arrive in; the older try's reminder, held or not yet due, never reaches her. A newer try she
   cancels brings no reminder for the older one back (the purchase is off).
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

import pytest

from tests.conftest import sqlite_template  # noqa: F401
from tests.scenarios.conftest import _world_server, scenario, sqlite_url, world  # noqa: F401
from tests.scenarios.harness import TEMPLATES, Scenario
from tests.scenarios.stores import SHOPIFY, WOOCOMMERCE
from tests.scenarios.test_woo_recovery import PAY, paid, unpaid

ASHA = "+919876543210"
QUIET = {"quiet_hours": "21:00-09:00", "utility_in_quiet_hours": False}  # the pay link waits for the morning


def start(sqlite_url: str, scenario: Any, platform: str, policy: dict[str, Any] | None = None) -> Scenario:
    return scenario(sqlite_url, platform, journeys={"payment_recovery": {}}, policy=policy,
                    store_settings={"templates": [*TEMPLATES, PAY]})


def shopify_unpaid(n: int, at: datetime) -> dict[str, Any]:
    """Asha's Shopify order #500n, its card payment still pending (the pay link: the order status page)."""
    return {**SHOPIFY.order(n, ASHA, at, cod=False), "financial_status": "pending"}


def pay_links(sc: Scenario) -> list[str]:
    """The orders her pay reminders name, in the order they reached her."""
    return [s.params[0] for s in sc.sent(ASHA) if s.template == "pay_v1"]


# ---- 1. a held reminder is withdrawn when she replaces the order -----------------------------------------------

def test_shopify_a_pay_link_held_for_the_night_is_withdrawn_when_she_pays_a_second_order(sqlite_url, scenario, world):
    """#5001 is left pending at 20:30; its pay link (21:30) waits for 09:00. At 22:00 she checks out again and pays
    (#5002). The morning brings her no "complete your payment" for #5001."""
    sc = start(sqlite_url, scenario, "shopify", QUIET)
    sc.at(SHOPIFY.local(20, 30))
    SHOPIFY.place(sc, shopify_unpaid(1, sc.now))
    sc.later(hours=1, minutes=30, step=timedelta(minutes=10))  # 22:00: the reminder is queued, held for the morning
    assert pay_links(sc) == []
    SHOPIFY.place(sc, SHOPIFY.order(2, ASHA, sc.now, cod=False))  # paid
    sc.later(hours=14)
    assert pay_links(sc) == []


def test_shopify_a_pay_link_held_for_the_night_is_withdrawn_when_the_order_is_cancelled(sqlite_url, scenario, world):
    """The store cancels #5001 at 22:00, while its pay link waits for the morning: it never goes."""
    sc = start(sqlite_url, scenario, "shopify", QUIET)
    sc.at(SHOPIFY.local(20, 30))
    order = shopify_unpaid(1, sc.now)
    SHOPIFY.place(sc, order)
    sc.later(hours=1, minutes=30, step=timedelta(minutes=10))
    SHOPIFY.cancelled_echo(sc, order)
    sc.later(hours=14)
    assert pay_links(sc) == []


@pytest.mark.parametrize("pays", ["placed paid", "created pending, paid by an update"])
def test_woocommerce_a_pay_link_held_for_the_morning_is_withdrawn_when_she_pays_a_second_order(sqlite_url, scenario, world, pays):
    """Rome, 06:00: her card is declined on #7301; its pay link (07:00) waits for 09:00. At 07:20 she checks out
    again (#7302) and pays: WooCommerce's usual second try is created pending and paid by an update."""
    sc = start(sqlite_url, scenario, "woocommerce", QUIET)
    sc.woo("order.created", unpaid(1, sc.now))
    sc.later(hours=1, minutes=20, step=timedelta(minutes=10))
    assert pay_links(sc) == []  # queued, held
    if pays == "placed paid":
        sc.woo("order.created", WOOCOMMERCE.order(2, ASHA, sc.now, cod=False))
    else:
        second = unpaid(2, sc.now, status="pending")
        sc.woo("order.created", second)
        sc.later(minutes=2)
        sc.woo("order.updated", paid(second, sc.now))
    sc.later(hours=6)
    assert pay_links(sc) == []


# ---- 2. only the newest unpaid try is chased --------------------------------------------------------------------

def test_shopify_two_unpaid_tries_at_one_purchase_get_one_pay_link_for_the_newer(sqlite_url, scenario, world):
    sc = start(sqlite_url, scenario, "shopify")
    SHOPIFY.place(sc, shopify_unpaid(1, sc.now))
    sc.later(minutes=20)
    SHOPIFY.place(sc, shopify_unpaid(2, sc.now))  # she tries again, and leaves it pending too
    sc.later(days=2)
    assert pay_links(sc) == ["#5002"]


def test_shopify_an_older_try_heard_after_the_newer_one_gets_no_pay_link(sqlite_url, scenario, world):
    """Shopify's webhooks come in any order: #5001's arrive after #5002's."""
    sc = start(sqlite_url, scenario, "shopify")
    first = shopify_unpaid(1, sc.now)
    sc.later(minutes=20)
    SHOPIFY.place(sc, shopify_unpaid(2, sc.now))
    sc.later(minutes=5)
    SHOPIFY.place(sc, first)
    sc.later(days=2)
    assert pay_links(sc) == ["#5002"]


def test_woocommerce_the_older_tries_held_pay_link_is_withdrawn_and_the_newer_one_is_reminded(sqlite_url, scenario, world):
    """Rome, 06:00: #7301 declined; its pay link (07:00) waits for 09:00. At 08:00 she tries again and is declined
    again (#7302). At 09:00 she gets one pay link: #7302's."""
    sc = start(sqlite_url, scenario, "woocommerce", QUIET)
    sc.woo("order.created", unpaid(1, sc.now))
    sc.later(hours=2, step=timedelta(minutes=10))
    assert pay_links(sc) == []  # #7301's, held
    sc.woo("order.created", unpaid(2, sc.now))
    sc.later(days=2, step=timedelta(minutes=30))
    assert pay_links(sc) == ["#7302"]
    assert "order-pay/7302/" in sc.last_to(ASHA, "pay_v1").params[-1]


def test_a_newer_try_she_cancels_brings_no_pay_link_for_the_older_one(sqlite_url, scenario, world):
    """The purchase is off: #5002, her newer try, is cancelled before its reminder; #5001 is not chased again."""
    sc = start(sqlite_url, scenario, "shopify")
    SHOPIFY.place(sc, shopify_unpaid(1, sc.now))
    sc.later(minutes=20)
    second = shopify_unpaid(2, sc.now)
    SHOPIFY.place(sc, second)
    sc.later(minutes=10)
    SHOPIFY.cancelled_echo(sc, second)
    sc.later(days=2)
    assert pay_links(sc) == []
