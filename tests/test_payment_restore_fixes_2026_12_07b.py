"""Pay reminders after a cancel: an order the store puts back, a newer try with no pay date (fixes of review rev7c).

The scenario harness: the real app over HTTP, the fake store and WhatsApp on 127.0.0.1, a virtual clock.

1. An order whose pay link was held for quiet hours when WooCommerce's hold-stock timeout cancelled it (the held link
   withdrawn) and which the store put back to pending payment in the morning never got its pay link: the run had
   queued it once (``reminded``) and planned nothing more. It now gets the link it never had, once.
2. Her newer unpaid try that went on from a reminded one, its own pay link not planned (payment terms given without a
   date), cancelled: the run stayed active for ever with no timer. It now listens out the older reminder's window and
   ends ``closed``.
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
from tests.scenarios.test_woo_recovery import unpaid
from tests.test_payment_review2_2026_12_07 import QUIET, pay_reminders, recovered, shopify_unpaid, start as pay_start

# the scenarios' fixtures (tests/scenarios/conftest.py), for a test file outside that folder
_world_server, world, sqlite_url, scenario = _fixtures._world_server, _fixtures.world, _fixtures.sqlite_url, _fixtures.scenario


def _run(sc: Scenario, order: dict[str, Any]) -> tuple[str, str | None, Any]:
    """The pay reminder run of ``order``: its status, how it ended, its timer."""
    with sc.runtime.db.engine.connect() as conn:
        run = conn.execute(select(m.JourneyRun).where(m.JourneyRun.journey == "payment_recovery",
                                                      m.JourneyRun.subject == f"order:{order['id']}")).one()
    return run.status, run.state.get("outcome"), run.next_due_at


# ---- 1. an order put back after a night cancel gets the pay link it never had -------------------------------------

def _cancelled_in_the_night(sqlite_url: str, scenario: Any) -> tuple[Scenario, dict[str, Any]]:
    """#7301 is left pending at 20:30; its pay link, queued at 21:30, waits for the morning (quiet hours). At 22:00
    WooCommerce's hold-stock timeout cancels #7301 (the held link is withdrawn)."""
    sc = pay_start(sqlite_url, scenario, "woocommerce", policy=QUIET)
    sc.at(WOOCOMMERCE.local(20, 30))
    first = unpaid(1, sc.now, status="pending")
    sc.woo("order.created", first)
    sc.at(WOOCOMMERCE.local(22, 0), step=timedelta(minutes=10))
    assert pay_reminders(sc) == []  # held for the night
    WOOCOMMERCE.cancelled_echo(sc, first)
    return sc, first


def _put_back(sc: Scenario, order: dict[str, Any]) -> None:
    sc.woo("order.updated", {**order, "status": "pending", "date_modified_gmt": p.gmt(sc.now)})


def test_an_order_restored_after_a_night_cancel_still_gets_its_pay_link(sqlite_url, scenario, world):
    """The reviewer's story (rev7c): at 08:00 the store puts #7301 back to pending payment. README: an order the store
    puts back "is chased as before it": before the cancel her pay link was to go at 09:00. She gets it."""
    sc, first = _cancelled_in_the_night(sqlite_url, scenario)
    sc.at(WOOCOMMERCE.local(22, 0) + timedelta(hours=10), step=timedelta(minutes=30))  # 08:00
    _put_back(sc, first)
    sc.later(hours=4, step=timedelta(minutes=30))
    assert pay_reminders(sc) == ["#7301"]


def test_a_pay_link_put_back_waits_for_the_morning_and_goes_once(sqlite_url, scenario, world):
    """The store puts #7301 back at 23:00, still quiet hours: the pay link waits for 09:00, not sent in the night; the
    order heard again (its update echoed) queues no second one; she pays at noon: the reminder's recovery."""
    sc, first = _cancelled_in_the_night(sqlite_url, scenario)
    sc.later(hours=1)  # 23:00
    _put_back(sc, first)
    _put_back(sc, first)  # heard again
    sc.at(WOOCOMMERCE.local(22, 0) + timedelta(hours=10, minutes=50), step=timedelta(minutes=10))  # 08:50
    assert pay_reminders(sc) == []
    sc.later(hours=1, step=timedelta(minutes=10))  # 09:50
    assert pay_reminders(sc) == ["#7301"]
    sc.later(hours=2)
    _put_back(sc, first)  # a note added to it: no second link
    sc.woo("order.updated", {**first, "status": "processing", "date_paid_gmt": p.gmt(sc.now), "date_modified_gmt": p.gmt(sc.now)})
    sc.later(days=1, step=timedelta(hours=1))
    assert pay_reminders(sc) == ["#7301"]
    assert recovered(sc) == (1, 1, {"INR": "1299.00"})


def test_an_order_put_back_after_its_pay_link_went_out_gets_no_second_one(sqlite_url, scenario, world):
    """Her pay link reached her before the cancel: put back, the order is chased as before it, with no second link."""
    sc = pay_start(sqlite_url, scenario, "woocommerce")
    first = unpaid(1, sc.now, status="pending")
    sc.woo("order.created", first)
    sc.later(hours=1, step=timedelta(minutes=10))
    assert pay_reminders(sc) == ["#7301"]
    WOOCOMMERCE.cancelled_echo(sc, first)
    sc.later(hours=1)
    _put_back(sc, first)
    sc.later(days=4, step=timedelta(hours=1))
    assert pay_reminders(sc) == ["#7301"]
    assert _run(sc, first)[:2] == ("finished", "reminded")


# ---- 2. a newer try with no pay date, cancelled: the run ends -------------------------------------------------------

ON_FULFILMENT = {"payment_terms_name": "Due on fulfillment", "payment_terms_type": "fulfillment", "due_in_days": None,
                 "payment_schedules": []}


def _reminded_then_a_newer_try_on_terms_cancelled(sc) -> dict:  # type: ignore[no-untyped-def]
    """#5001 left pending, its pay link an hour on; #5002 placed, put on terms due on fulfilment (no pay date), then
    cancelled by the store. Returns #5002 as last sent."""
    SHOPIFY.place(sc, shopify_unpaid(1, sc.now))
    sc.later(hours=1, step=timedelta(minutes=10))
    assert pay_reminders(sc) == ["#5001"]
    sc.later(minutes=10)
    second = shopify_unpaid(2, sc.now)
    SHOPIFY.place(sc, second)
    sc.later(minutes=10)
    second = {**second, "payment_terms": ON_FULFILMENT, "updated_at": p.iso(sc.now)}
    sc.shopify("orders/updated", second)
    sc.later(minutes=10)
    SHOPIFY.cancelled_echo(sc, second)
    return second


def test_a_cancelled_newer_try_with_no_pay_date_ends_closed(sqlite_url, scenario, world):
    """#5001 is left pending; its pay link reaches her an hour on. She checks out again and leaves #5002 pending (it goes
    on from #5001's reminder); the store puts #5002 on terms due on fulfilment (no date: no pay link planned), then
    cancels it. The run listens out #5001's reminder's window, and ends ``closed``, not active for ever with no timer."""
    sc = pay_start(sqlite_url, scenario, "shopify")
    second = _reminded_then_a_newer_try_on_terms_cancelled(sc)
    sc.later(days=5, step=timedelta(hours=6))
    assert _run(sc, second) == ("finished", "closed", None)
    assert pay_reminders(sc) == ["#5001"]
    assert recovered(sc) == (1, 0, {})


def test_her_third_try_paid_after_a_cancelled_newer_try_with_no_pay_date_is_the_reminders_recovery(sqlite_url, scenario, world):
    """The same, and 30 hours on she pays a third try at it (within #5001's reminder's 3 attribution days): the
    reminder brought her back."""
    sc = pay_start(sqlite_url, scenario, "shopify")
    _reminded_then_a_newer_try_on_terms_cancelled(sc)
    sc.later(hours=30, step=timedelta(hours=6))
    SHOPIFY.place(sc, SHOPIFY.order(3, "+919876543210", sc.now, cod=False, total="1349.00"))
    sc.later(days=1, step=timedelta(hours=6))
    assert pay_reminders(sc) == ["#5001"]
    assert recovered(sc) == (1, 1, {"INR": "1349.00"})
