"""The Shopify app uninstalled, then installed again (connector/reinstall.py).

While the app is uninstalled the store is out of sight: no webhooks, no reconcile. Nothing is sent
or written for it, and its journeys decide nothing on what it was: their timers wait. An install
that ends the uninstall reads back the orders changed meanwhile; only once they are heard do the
timers fire and the sends go, so a run whose order the staff cancelled or shipped in between ends
without a word, and the others carry on, late by the gap: a reminder minutes late after a
re-install to change scopes; after days, the reminder she never got, with her full time to answer
it before anything is done to her order. What was decided meanwhile on a customer's tap is not made
blindly: a person checks the order.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from functools import partial

from connector.install.shopify import ShopifyInstallReport, install_shopify
from tests.scenarios import payloads as p
from tests.scenarios.fakes import FakeWorld
from tests.scenarios.harness import Scenario
from tests.scenarios.stores import SHOPIFY

ASHA = "+919876543210"
RAVI = "+919812345678"
# no answer within a day of the question: the order is cancelled (and Shopify tells her so)
COD_CANCEL = {"cod_confirmation": {"reminder_hours": [6], "answer_window_hours": 24, "no_answer_action": "cancel"}}
PUBLIC = {"public_url": "https://connector.example"}


def uninstall(sc: Scenario) -> None:
    sc.shopify("app/uninstalled", {**p.fixture("shopify/app_uninstalled.sample.json"), "myshopify_domain": "shop-a.myshopify.com"})


def reinstall(sc: Scenario) -> ShopifyInstallReport:
    """``storeloop install shopify --store shop-a`` at the clock's time (webhooks, then the read-back)."""
    store = sc.settings.store(sc.key)
    return sc.client.portal.call(partial(install_shopify, sc.runtime.db, sc.settings, store, sc.runtime.store_ids[sc.key],
                                         sc.now, box=None))


def in_store(world: FakeWorld, n: int, phone: str, placed: datetime, *, updated: datetime | None = None,
             cancelled: datetime | None = None, shipped: bool = False) -> None:
    """The COD order as Shopify has it now (what the reconcile reads)."""
    order = SHOPIFY.order(n, phone, placed)
    order.update(updated_at=p.iso(updated or placed), fulfillment_status="fulfilled" if shipped else None,
                 cancelled_at=p.iso(cancelled) if cancelled else None, cancel_reason="other" if cancelled else None)
    node = p.shopify_order_node(order)
    world.shopify_orders[node["id"]] = node


def test_an_order_the_staff_cancelled_while_the_app_was_uninstalled_gets_no_reminder_and_no_second_cancel(sqlite_url, scenario, world):
    sc = scenario(sqlite_url, "shopify", journeys=COD_CANCEL, server=PUBLIC)
    placed = sc.now
    SHOPIFY.place(sc, SHOPIFY.order(1, ASHA, placed))
    sc.work()
    assert sc.templates_to(ASHA) == ["cod_confirm_v1"]
    sc.later(hours=1)
    uninstall(sc)
    in_store(world, 1, ASHA, placed, updated=placed + timedelta(hours=20), cancelled=placed + timedelta(hours=20))
    sc.later(hours=39)  # the reminder (6 h) and the answer deadline (24 h) pass with the app uninstalled
    assert sc.templates_to(ASHA) == ["cod_confirm_v1"]
    reinstall(sc)
    sc.later(days=2)
    assert sc.templates_to(ASHA) == ["cod_confirm_v1"]  # no "please confirm" for an order the staff cancelled
    assert world.shopify_ops("orderCancel") == []  # nor a "not confirmed" cancel, with Shopify's notice to her


def test_a_reinstall_minutes_later_reminds_whoever_still_has_to_answer_but_not_for_an_order_shipped_meanwhile(
        sqlite_url, scenario, world):
    sc = scenario(sqlite_url, "shopify", journeys=COD_CANCEL, server=PUBLIC)
    placed = sc.now
    SHOPIFY.place(sc, SHOPIFY.order(1, ASHA, placed))
    SHOPIFY.place(sc, SHOPIFY.order(2, RAVI, placed))
    sc.work()
    in_store(world, 2, RAVI, placed)  # unchanged
    sc.later(hours=5, minutes=55)
    uninstall(sc)  # to install it again with other scopes
    in_store(world, 1, ASHA, placed, updated=sc.now + timedelta(minutes=3), shipped=True)  # Asha's parcel leaves
    sc.later(minutes=10, step=timedelta(minutes=5))  # both reminders come due meanwhile
    reinstall(sc)
    sc.work()
    assert sc.templates_to(RAVI) == ["cod_confirm_v1", "cod_reminder_v1"]  # minutes late
    assert sc.templates_to(ASHA) == ["cod_confirm_v1"]  # her order is on its way: nothing to confirm
    sc.later(hours=18)  # a day and a few minutes after the question
    assert [c["orderId"] for c in world.shopify_ops("orderCancel")] == [f"gid://shopify/Order/{SHOPIFY.order_id(2)}"]


def test_after_days_uninstalled_she_gets_the_reminder_she_missed_and_her_full_time_to_answer_it(sqlite_url, scenario, world):
    sc = scenario(sqlite_url, "shopify", journeys=COD_CANCEL, server=PUBLIC)
    placed = sc.now
    SHOPIFY.place(sc, SHOPIFY.order(1, ASHA, placed))
    in_store(world, 1, ASHA, placed)  # nobody touches it while the app is gone
    sc.work()
    sc.later(hours=1)
    uninstall(sc)
    sc.later(hours=39)
    reinstall(sc)
    sc.work()
    assert sc.templates_to(ASHA) == ["cod_confirm_v1", "cod_reminder_v1"]
    sc.later(hours=17, minutes=30, step=timedelta(minutes=30))
    assert world.shopify_ops("orderCancel") == []  # the 18 h a reminder leaves her (24 h window, reminder at 6 h)
    sc.later(hours=1, step=timedelta(minutes=30))
    assert len(world.shopify_ops("orderCancel")) == 1


def test_her_cancel_tapped_while_the_app_was_uninstalled_goes_to_a_person_not_to_the_store(sqlite_url, scenario, world):
    sc = scenario(sqlite_url, "shopify", journeys=COD_CANCEL, server=PUBLIC)
    placed = sc.now
    SHOPIFY.place(sc, SHOPIFY.order(1, ASHA, placed))
    sc.work()
    ask = sc.last_to(ASHA, "cod_confirm_v1")
    sc.later(hours=1)
    uninstall(sc)
    in_store(world, 1, ASHA, placed, updated=placed + timedelta(hours=2), shipped=True)  # the staff shipped it meanwhile
    sc.later(hours=2)
    sc.tap(ASHA, "cod_cancel", ask)  # WhatsApp still reaches us: she asks to cancel
    sc.later(hours=30)
    reinstall(sc)
    sc.later(hours=2)
    assert world.shopify_ops("orderCancel") == []  # a parcel on its way is not cancelled on a word from the gap
    [case] = sc.handoffs()
    assert f"of order {SHOPIFY.order_id(1)} was decided while the app was uninstalled" in case["reason"]
    assert "cancel" in case["reason"]


def test_while_the_orders_cannot_be_read_back_the_store_keeps_waiting_and_the_next_reconcile_resumes_it(sqlite_url, scenario, world):
    from jobs.scheduler import reconcile_store

    sc = scenario(sqlite_url, "shopify", journeys=COD_CANCEL, server=PUBLIC)
    placed = sc.now
    SHOPIFY.place(sc, SHOPIFY.order(1, RAVI, placed))
    in_store(world, 1, RAVI, placed)
    sc.work()
    sc.later(hours=5, minutes=55)
    uninstall(sc)
    sc.later(minutes=10, step=timedelta(minutes=5))
    world.shopify_orders_status = 403  # installed again without read_orders
    report = reinstall(sc)
    sc.later(minutes=30, step=timedelta(minutes=5))
    # installed, but what changed meanwhile is not known: nothing is decided or sent on what the store was
    assert sc.templates_to(RAVI) == ["cod_confirm_v1"]
    assert report.ok and "403" in (report.catch_up_error or "")
    world.shopify_orders_status = 200  # the scope granted
    store = sc.settings.store(sc.key)
    assert sc.client.portal.call(partial(reconcile_store, sc.runtime, store, "worker-1", timedelta(minutes=15)))
    sc.work()
    assert sc.templates_to(RAVI) == ["cod_confirm_v1", "cod_reminder_v1"]


def test_words_she_writes_after_the_late_reminder_wait_for_a_person_until_the_moved_deadline(sqlite_url, scenario, world):
    sc = scenario(sqlite_url, "shopify", journeys=COD_CANCEL, server=PUBLIC)
    placed = sc.now
    SHOPIFY.place(sc, SHOPIFY.order(1, ASHA, placed))
    in_store(world, 1, ASHA, placed)
    sc.work()
    sc.later(hours=1)
    uninstall(sc)
    sc.later(hours=39)
    reinstall(sc)
    sc.work()
    sc.later(minutes=30)
    sc.say(ASHA, "Can I change the address first?", quoting=sc.last_to(ASHA, "cod_reminder_v1"))
    sc.later(hours=2)
    assert world.shopify_ops("tagsAdd") == [] and world.shopify_ops("orderCancel") == []  # a person has her words
    sc.later(hours=16, step=timedelta(hours=1))  # 18 h after the reminder, nobody acted on them
    assert [t["tags"] for t in world.shopify_ops("tagsAdd")] == [["cod-unconfirmed"]] and world.shopify_ops("orderCancel") == []


def test_timers_wait_for_a_read_back_order_that_failed_once_before_its_caught_up_row(sqlite_url, scenario, world):
    """The staff shipped the COD order while the app was gone; its read-back row meets a transient database
    error (retried seconds later). The caught-up row right behind it must not end the wait first: the
    no-answer cancel would be decided on the order as it was, and Shopify would cancel a shipped parcel."""
    from sqlalchemy import event
    from sqlalchemy.exc import OperationalError

    sc = scenario(sqlite_url, "shopify", journeys={"cod_confirmation": {"reminder_hours": [], "answer_window_hours": 24,
                                                                        "no_answer_action": "cancel"}}, server=PUBLIC)
    placed = sc.now
    SHOPIFY.place(sc, SHOPIFY.order(1, ASHA, placed))
    sc.work()
    sc.later(hours=1)
    uninstall(sc)
    in_store(world, 1, ASHA, placed, updated=placed + timedelta(hours=10), shipped=True)
    sc.later(hours=30)
    blips: list[str] = []

    def refuse_once(conn, cursor, statement, parameters, context, executemany):  # type: ignore[no-untyped-def]
        # the batch's attempt, then the row's own: it is put back to be retried seconds later
        if len(blips) < 2 and statement.lstrip().upper().startswith("UPDATE ORDERS"):
            blips.append(statement)
            raise OperationalError(statement, parameters, Exception("database is locked"))

    event.listen(sc.runtime.db.engine, "before_cursor_execute", refuse_once)
    try:
        reinstall(sc)
        sc.work()
        sc.later(hours=1, step=timedelta(seconds=10))
    finally:
        event.remove(sc.runtime.db.engine, "before_cursor_execute", refuse_once)
    assert len(blips) == 2  # the read-back order's row did fail
    assert world.shopify_ops("orderCancel") == []


def test_the_team_hears_of_a_tap_made_while_the_app_was_gone_even_while_the_orders_cannot_be_read_back(sqlite_url, scenario, world):
    """Notices to the store's own team (Slack) tell a person of a case: they wait for no read-back."""
    sc = scenario(sqlite_url, "shopify", journeys=COD_CANCEL, server=PUBLIC)  # each stage's owner has a Slack hook (the fake's)
    placed = sc.now
    SHOPIFY.place(sc, SHOPIFY.order(1, ASHA, placed))
    in_store(world, 1, ASHA, placed)
    sc.work()
    ask = sc.last_to(ASHA, "cod_confirm_v1")
    sc.later(hours=1)
    uninstall(sc)
    sc.later(hours=2)
    sc.tap(ASHA, "cod_cancel", ask)
    sc.later(hours=2)
    world.shopify_orders_status = 403  # installed again without read_orders: the read-back fails
    before = len(world.notifications)
    reinstall(sc)
    sc.later(hours=1, step=timedelta(minutes=5))
    assert [c for c in sc.handoffs() if "decided while the app was uninstalled" in c["reason"]]
    assert world.notifications[before:]  # the team was told of it


def test_an_uninstall_still_waiting_in_the_inbox_when_the_app_is_installed_again_does_not_undo_the_install(sqlite_url, scenario, world):
    """The worker was behind when the merchant removed the app and added it back: the old app/uninstalled,
    processed after the install, paused the store for good (no reminder, no deadline action, no reconcile)."""
    sc = scenario(sqlite_url, "shopify", journeys=COD_CANCEL, server=PUBLIC)
    placed = sc.now
    SHOPIFY.place(sc, SHOPIFY.order(1, ASHA, placed))
    in_store(world, 1, ASHA, placed)
    sc.work()
    sc.later(hours=1)
    uninstall(sc)  # stored, not processed yet
    reinstall(sc)  # the merchant adds the app back at once
    sc.later(hours=7, step=timedelta(hours=1))
    assert sc.templates_to(ASHA) == ["cod_confirm_v1", "cod_reminder_v1"]
