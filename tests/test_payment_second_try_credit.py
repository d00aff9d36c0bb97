"""What the weekly report credits the pay reminder with when her second try is not a card payment, or comes late
(the scenario harness: the real app over HTTP, fake store and WhatsApp on 127.0.0.1, virtual clock).

1. Her second try at the purchase, after the pay link went out, placed cash on delivery: a purchase, credited as
   placed (as a cart's COD order is), and left out again if the store cancels it (she refuses the parcel).
2. Her second try placed to pay by bank transfer (WooCommerce ``on-hold``), or the reminded order itself moved to a
   bank transfer on its pay page: no sale until the money comes; credited, with its revenue, once the store marks it
   paid within the attribution window of the reminder; never paid, or paid too late, nothing.
3. Her paid second try placed more than ``REPLACED_WITHIN`` (a day) after the unpaid order, but within the attribution
   window of the reminder that went out: the reminder's recovery, as ``attribution_days`` promises.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest

from tests.conftest import sqlite_template  # noqa: F401
from tests.scenarios.conftest import _world_server, scenario, sqlite_url, world  # noqa: F401
from tests.scenarios.stores import WOOCOMMERCE
from tests.scenarios.test_store_journeys import conversion
from tests.scenarios.test_woo_recovery import bank_transfer, paid, unpaid
from tests.test_payment_review2_2026_12_07 import ASHA, pay_reminders, recovered, start

RAVI = "+919812345678"


def reminded_declined_card(sc: Any) -> dict[str, Any]:
    """#7301: her card declined at 06:00 (Rome); its pay link reaches her an hour on."""
    first = unpaid(1, sc.now)
    sc.woo("order.created", first)
    sc.later(hours=1, step=timedelta(minutes=10))
    assert pay_reminders(sc) == ["#7301"]
    return first


def bank_transfer_try(sc: Any, **order: Any) -> dict[str, Any]:
    """#7301's pay link reaches her; half an hour on she checks out again (#7302, ``order``'s fields) by direct bank
    transfer: on hold, no money yet. Returns #7302 as sent."""
    reminded_declined_card(sc)
    sc.later(minutes=30)
    transfer = bank_transfer(WOOCOMMERCE.order(2, ASHA, sc.now, cod=False, **order), sc.now)
    sc.woo("order.created", transfer)
    return transfer


# ---- 1. cash on delivery ---------------------------------------------------------------------------------------------

def test_her_second_try_placed_cash_on_delivery_after_the_pay_link_is_its_recovery(sqlite_url, scenario, world):
    """Half an hour after #7301's pay link she checks out again with cash on delivery (#7302, INR 1349): the reminder
    brought the sale back. The report credits it as placed (it said: reminded, not recovered, one lost); once the store
    cancels #7302 (she refused the parcel) it is no sale, and the report leaves it out again."""
    sc = start(sqlite_url, scenario, "woocommerce")
    reminded_declined_card(sc)
    sc.later(minutes=30)
    cod = WOOCOMMERCE.order(2, ASHA, sc.now, cod=True, total="1349.00")
    sc.woo("order.created", cod)
    sc.later(days=1)
    assert pay_reminders(sc) == ["#7301"]
    assert recovered(sc) == (1, 1, {"INR": "1349.00"})
    assert conversion(sc)["lost"] == 0
    WOOCOMMERCE.cancelled_echo(sc, cod)
    sc.later(hours=1)
    assert recovered(sc) == (1, 0, {})


def test_a_cash_on_delivery_try_before_the_pay_link_went_out_is_no_recovery(sqlite_url, scenario, world):
    """She places the COD order 20 minutes after the declined card, before any pay link: the reminder is dropped and
    nothing is credited to it."""
    sc = start(sqlite_url, scenario, "woocommerce")
    sc.woo("order.created", unpaid(1, sc.now))
    sc.later(minutes=20)
    sc.woo("order.created", WOOCOMMERCE.order(2, ASHA, sc.now, cod=True))
    sc.later(days=1)
    assert pay_reminders(sc) == []
    assert recovered(sc) == (0, 0, {})


# ---- 2. bank transfer ------------------------------------------------------------------------------------------------

def test_her_second_try_by_bank_transfer_is_credited_when_the_money_comes(sqlite_url, scenario, world):
    """Half an hour after #7301's pay link she checks out again with a direct bank transfer (#7302, on hold). No sale
    yet: nothing credited, and no more pay links for #7301. The next day the store marks the transfer received: one
    recovered payment with #7302's revenue (the report never credited it)."""
    sc = start(sqlite_url, scenario, "woocommerce")
    transfer = bank_transfer_try(sc, total="1349.00")
    sc.later(hours=20)
    assert recovered(sc) == (1, 0, {})
    sc.woo("order.updated", paid(transfer, sc.now))
    sc.later(days=1)
    assert pay_reminders(sc) == ["#7301"]
    assert recovered(sc) == (1, 1, {"INR": "1349.00"})
    assert conversion(sc)["lost"] == 0


def test_a_bank_transfer_paid_after_the_attribution_window_recovers_nothing(sqlite_url, scenario, world):
    """The transfer for #7302 arrives five days after the pay link (attribution_days 3): not the reminder's doing."""
    sc = start(sqlite_url, scenario, "woocommerce")
    transfer = bank_transfer_try(sc)
    sc.later(days=5)
    sc.woo("order.updated", paid(transfer, sc.now))
    sc.later(hours=1)
    assert recovered(sc) == (1, 0, {})


def test_the_reminded_order_moved_to_bank_transfer_on_its_pay_page_is_credited_when_paid(sqlite_url, scenario, world):
    """The pay link takes her to #7301's pay page, where she picks bank transfer (on hold). The store marks it paid the
    next day: the reminder recovered #7301 (it ended the run unpaid, 'closed', and credited nothing)."""
    sc = start(sqlite_url, scenario, "woocommerce")
    first = reminded_declined_card(sc)
    sc.later(minutes=20)
    on_hold = bank_transfer(first, sc.now)
    sc.woo("order.updated", on_hold)
    sc.later(hours=20)
    assert recovered(sc) == (1, 0, {})
    sc.woo("order.updated", paid(on_hold, sc.now))
    sc.later(hours=1)
    assert pay_reminders(sc) == ["#7301"]
    assert recovered(sc) == (1, 1, {"INR": "1299.00"})


# ---- 3. a paid second try more than a day on ---------------------------------------------------------------------------

@pytest.mark.parametrize("after_minutes, pays_after", [(60, timedelta(hours=30)), (1440, timedelta(hours=25))],
                         ids=["link after an hour, pays on day 2", "link after a day, pays an hour on"])
def test_her_paid_second_try_a_day_on_within_the_attribution_window_is_credited(sqlite_url, scenario, world, after_minutes, pays_after):
    """#7301 declined; its pay link reaches her (after ``after_minutes``); she comes back and pays the same purchase as
    #7302 more than a day after #7301, within attribution_days (3) of the link. With the link a day on she could not be
    credited at all: the run stopped listening as it queued its reminder."""
    sc = start(sqlite_url, scenario, "woocommerce", {"payment_recovery": {"after_minutes": after_minutes}})
    sc.woo("order.created", unpaid(1, sc.now))
    sc.later(minutes=after_minutes + 10, step=timedelta(minutes=30))
    assert pay_reminders(sc) == ["#7301"]
    sc.later(minutes=(pays_after - timedelta(minutes=after_minutes + 10)).total_seconds() / 60, step=timedelta(hours=2))
    sc.woo("order.created", WOOCOMMERCE.order(2, ASHA, sc.now, cod=False, total="1349.00"))
    sc.later(days=1)
    assert pay_reminders(sc) == ["#7301"]
    assert recovered(sc) == (1, 1, {"INR": "1349.00"})


def test_her_paid_order_after_the_attribution_window_is_no_recovery(sqlite_url, scenario, world):
    """The same purchase paid as #7302 five days after the link (attribution_days 3): not credited."""
    sc = start(sqlite_url, scenario, "woocommerce")
    reminded_declined_card(sc)
    sc.later(days=5)
    sc.woo("order.created", WOOCOMMERCE.order(2, ASHA, sc.now, cod=False))
    sc.later(hours=1)
    assert recovered(sc) == (1, 0, {})


def test_a_bank_transfer_try_converts_in_the_holdout_as_it_does_for_the_reminded(sqlite_url, scenario, world):
    """Asha (the first contact: in the 10% holdout) and Ravi (reminded) each have a card declined, then each checks
    out again by bank transfer, and each transfer is received the next day. The lift compares payments, treated or
    not: one conversion in each group (the holdout's transfer was not waited for, so the lift saw the reminder win)."""
    sc = start(sqlite_url, scenario, "woocommerce", {"payment_recovery": {"holdout_percent": 10}})
    sc.woo("order.created", unpaid(1, sc.now))
    sc.woo("order.created", {**unpaid(2, sc.now), "billing": {**unpaid(2, sc.now)["billing"], "phone": RAVI}})
    sc.later(hours=1, step=timedelta(minutes=10))
    assert (pay_reminders(sc), [s.params[0] for s in sc.sent(RAVI)]) == ([], ["#7302"])  # Asha is held out
    sc.later(minutes=30)
    transfers = [bank_transfer(WOOCOMMERCE.order(3, ASHA, sc.now, cod=False), sc.now),
                 bank_transfer({**WOOCOMMERCE.order(4, RAVI, sc.now, cod=False)}, sc.now)]
    for t in transfers:
        sc.woo("order.created", t)
    sc.later(hours=20)
    for t in transfers:
        sc.woo("order.updated", paid(t, sc.now))
    sc.later(hours=1)
    lift = sc.report()["lift"]["payment_recovery"]
    assert (lift["treated"], lift["control"], lift["treated_converted"], lift["control_converted"]) == (1, 1, 1, 1)
    assert recovered(sc) == (1, 1, {"INR": "1299.00"})  # the reminded one's revenue only
