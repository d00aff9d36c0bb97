"""A WooCommerce order binned (``order.deleted``: only its id) and restored (``order.restored``: the whole order
again): its journeys go on as if the bin had not happened, and nothing already sent is sent again. Told through
the scenarios' harness (tests/scenarios): signed webhooks in, the fake WhatsApp Cloud API and WooCommerce out.
"""

from __future__ import annotations

from datetime import timedelta
from functools import partial
from typing import Any

import pytest

from tests.scenarios import payloads as p
from tests.scenarios.conftest import _world_server, scenario, sqlite_url, world  # noqa: F401  (the scenario fixtures)
from tests.scenarios.stores import WOOCOMMERCE

ASHA = "+919876543210"
COD = {"reminder_hours": [6], "answer_window_hours": 24, "no_answer_action": "tag"}
NIGHT_HOLDS_UTILITY = {"quiet_hours": "21:00-09:00", "utility_in_quiet_hours": False}


def tagged(world) -> list[str]:
    """Tags written to the WooCommerce order (the client writes them as a note), in order."""
    return [c.body["note"].removeprefix("storeloop tags: ") for c in world.woo_writes()
            if c.path == "/notes" and c.body["note"].startswith("storeloop tags: ")]


def restored(order: dict[str, Any], at) -> dict[str, Any]:
    """WooCommerce's ``order.restored``: the order as it was before the bin, modified now."""
    return {**order, "date_modified_gmt": p.gmt(at), "date_modified": p.gmt(at)}


def asked_then_binned(sc: Any, number: int) -> tuple[dict[str, Any], Any]:
    """Her COD order ``number`` placed and asked about; an hour later the store bins it by mistake (``order.deleted``).
    Returns the order (as WooCommerce sent it) and the question she was sent."""
    order = WOOCOMMERCE.order(number, ASHA, sc.now)
    WOOCOMMERCE.place(sc, order)
    sc.work()
    [ask] = sc.sent(ASHA)
    sc.later(hours=1)
    sc.woo("order.deleted", {"id": order["id"]})
    return order, ask


def test_a_cod_order_binned_by_mistake_and_restored_is_reminded_and_its_confirm_counts(sqlite_url, scenario, world):  # noqa: F811
    """Asked, binned by mistake an hour later, restored ten minutes after that: she still gets the reminder (once,
    and no second question), and her Confirm on the question confirms the order. Before, the bin had finished the run
    for good: no reminder, no "no answer" tag, and her Confirm tap did nothing."""
    sc = scenario(sqlite_url, "woocommerce", journeys={"cod_confirmation": COD})
    order, ask = asked_then_binned(sc, 1)
    sc.later(minutes=10)
    sc.woo("order.restored", restored(order, sc.now))
    sc.later(minutes=5)
    assert sc.templates_to(ASHA) == ["cod_confirm_v1"]
    sc.later(hours=5, minutes=5)  # 6 h of the run's own time after the question
    assert sc.templates_to(ASHA) == ["cod_confirm_v1", "cod_reminder_v1"]
    sc.tap(ASHA, "cod_confirm", ask)
    sc.later(minutes=5)
    assert tagged(world) == ["cod-confirmed"]
    sc.later(days=2)
    assert sc.templates_to(ASHA) == ["cod_confirm_v1", "cod_reminder_v1"]
    assert tagged(world) == ["cod-confirmed"]  # confirmed: no "no answer" tag at the deadline


def test_a_cod_order_restored_days_later_gets_the_time_it_had_left(sqlite_url, scenario, world):  # noqa: F811
    """Restored three days after the bin: the run's clock stood still while the order lay in the bin. Nothing at the
    restore itself; the reminder comes 5 h later (6 h after the question, less the hour before the bin), and the
    no-answer tag only when her 24 h to answer have run, not in the next worker rounds."""
    sc = scenario(sqlite_url, "woocommerce", journeys={"cod_confirmation": COD})
    order = WOOCOMMERCE.order(2, ASHA, sc.now)
    WOOCOMMERCE.place(sc, order)
    sc.work()
    sc.later(hours=1)
    sc.woo("order.deleted", {"id": order["id"]})
    sc.work()
    sc.later(days=3)
    sc.woo("order.restored", restored(order, sc.now))
    back = sc.now
    sc.work()
    sc.later(hours=4, minutes=50, step=timedelta(minutes=30))
    assert sc.templates_to(ASHA) == ["cod_confirm_v1"]
    assert tagged(world) == []
    sc.at(back + timedelta(hours=5, minutes=10))
    assert sc.templates_to(ASHA) == ["cod_confirm_v1", "cod_reminder_v1"]
    sc.at(back + timedelta(hours=22, minutes=50))
    assert tagged(world) == []
    sc.at(back + timedelta(hours=23, minutes=10))
    assert tagged(world) == ["cod-unconfirmed"]
    assert sc.templates_to(ASHA) == ["cod_confirm_v1", "cod_reminder_v1"]


def test_a_question_held_for_the_night_goes_out_once_the_order_is_restored(sqlite_url, scenario, world):  # noqa: F811
    """Placed at 23:00: the question waits for the morning (quiet hours). Binned at 23:05 by mistake, restored at
    23:10: in the morning she gets the question, once. Before, the bin skipped it for good and the run was over."""
    sc = scenario(sqlite_url, "woocommerce", journeys={"cod_confirmation": {**COD, "reminder_hours": [12]}}, policy=NIGHT_HOLDS_UTILITY)
    sc.at(WOOCOMMERCE.local(23, 0))
    order = WOOCOMMERCE.order(3, ASHA, sc.now)
    WOOCOMMERCE.place(sc, order)
    sc.later(minutes=5)
    assert sc.sent(ASHA) == []
    sc.woo("order.deleted", {"id": order["id"]})
    sc.later(minutes=5)
    sc.woo("order.restored", restored(order, sc.now))
    sc.at(WOOCOMMERCE.local(24 + 9, 30), step=timedelta(minutes=30))
    assert sc.templates_to(ASHA) == ["cod_confirm_v1"]


def test_a_parcel_message_held_for_the_night_goes_out_once_the_order_is_restored(sqlite_url, scenario, world):  # noqa: F811
    """A prepaid order shipped at 23:00: "shipped" waits for the morning. Binned and restored a few minutes later:
    in the morning she hears it, once. Before, the bin had withdrawn it for good (the step counted as told)."""
    sc = scenario(sqlite_url, "woocommerce", journeys={"delivery": {}}, policy=NIGHT_HOLDS_UTILITY)
    order = WOOCOMMERCE.order(4, ASHA, sc.now, cod=False)
    sc.woo("order.created", order)
    sc.at(WOOCOMMERCE.local(23, 0))
    shipped = p.woo_shipped(order, sc.now)
    sc.woo("order.updated", shipped)
    sc.later(minutes=5)
    assert sc.sent(ASHA) == []
    sc.woo("order.deleted", {"id": order["id"]})
    sc.later(minutes=5)
    sc.woo("order.restored", restored(shipped, sc.now))
    sc.at(WOOCOMMERCE.local(24 + 9, 30), step=timedelta(minutes=30))
    assert sc.templates_to(ASHA) == ["shipped_v1"]


# ---- her answer while the order lay in the bin -----------------------------------------------------------------

def _updates(case: dict[str, Any]) -> list[str]:
    return [u["reason"] for u in (case.get("context") or {}).get("updates") or []]


def _statuses(world) -> list[str]:
    """The statuses written to the WooCommerce order (the client's PUT of the order itself)."""
    return [c.body["status"] for c in world.woo_writes() if c.path == "" and c.body and "status" in c.body]


def test_a_confirm_tapped_while_the_order_is_in_the_bin_confirms_it_once_it_is_restored(sqlite_url, scenario, world):  # noqa: F811
    """Asked at 10:00, binned by mistake at 11:00, she taps Confirm at 11:05: the order is in the bin (cancelled for
    every journey), so a person hears she tapped Confirm after the store cancelled it. The store restores it at 11:10:
    her Confirm counts (tagged cod-confirmed, once), and with ``no_answer_action = "cancel"`` the deadline does not
    cancel the order she confirmed; the case opened in the bin hears that nothing needs restoring or re-creating.
    Before, the restore put the run back as the bin found it: reminded, then cancelled for "no answer"."""
    sc = scenario(sqlite_url, "woocommerce", journeys={"cod_confirmation": {**COD, "no_answer_action": "cancel"}})
    order, ask = asked_then_binned(sc, 5)
    sc.later(minutes=5)
    sc.tap(ASHA, "cod_confirm", ask)
    sc.later(minutes=5)
    [case] = sc.handoffs(status="open")
    assert "after the store cancelled it" in case["reason"]
    assert tagged(world) == []  # nothing written to a binned order
    sc.woo("order.restored", restored(order, sc.now))
    sc.later(minutes=5)
    assert tagged(world) == ["cod-confirmed"]
    [case] = sc.handoffs(status="open")
    assert any("restored from the bin" in u and "Confirm" in u and "confirmed now" in u for u in _updates(case)), _updates(case)
    sc.later(days=2)
    assert tagged(world) == ["cod-confirmed"]
    assert "cancelled" not in _statuses(world)
    assert sc.templates_to(ASHA) == ["cod_confirm_v1"]  # no reminder to confirm what she confirmed


def test_a_cancel_tapped_while_the_order_is_in_the_bin_cancels_it_once_it_is_restored(sqlite_url, scenario, world):  # noqa: F811
    """Her Cancel while the order lay in the bin did nothing (the order was cancelled as far as the run knew). Once
    the store restores it, her Cancel counts as if tapped before the bin (``cancel_action``: the order is cancelled),
    and she is not reminded to confirm it nor is it tagged as unanswered."""
    sc = scenario(sqlite_url, "woocommerce", journeys={"cod_confirmation": COD})
    order, ask = asked_then_binned(sc, 6)
    sc.later(minutes=5)
    sc.tap(ASHA, "cod_cancel", ask)
    sc.later(minutes=5)
    assert world.woo_writes() == []
    sc.woo("order.restored", restored(order, sc.now))
    sc.later(minutes=5)
    assert _statuses(world) == ["cancelled"]
    sc.later(days=2)
    assert _statuses(world) == ["cancelled"]
    assert "cod-unconfirmed" not in tagged(world)
    assert sc.templates_to(ASHA) == ["cod_confirm_v1"]


# ---- binned as the scheduled sync finds it (its ``order.deleted`` lost) ----------------------------------------

def in_the_bin_unheard(sc: Any, world: Any, order: dict[str, Any]) -> None:
    """The store bins ``order`` now and its ``order.deleted`` never reaches us: WooCommerce lists it in the bin."""
    world.woo_orders[str(order["id"])] = {**order, "status": "trash", "date_modified_gmt": p.gmt(sc.now), "date_modified": p.gmt(sc.now)}
    world.woo_status[str(order["id"])] = "trash"


def reconcile(sc: Any) -> None:
    """One tick of the scheduled sync (``jobs.scheduler.reconcile_store``: the orders changed since its cursor, the
    bin's too), then a worker round that processes what it read."""
    from jobs.scheduler import reconcile_store

    assert sc.client.portal.call(partial(reconcile_store, sc.runtime, sc.settings.store(sc.key), "worker-1", timedelta(minutes=15)))
    sc.work()


@pytest.mark.parametrize("back_by", ["order.restored", "sync"])
def test_a_cod_order_the_sync_finds_in_the_bin_and_restored_is_reminded_and_her_confirm_counts(sqlite_url, scenario, world,  # noqa: F811
                                                                                               back_by):
    """Asked, binned by mistake an hour later with its ``order.deleted`` lost: the scheduled sync finds it in the bin ten
    minutes on. Restored ten minutes after that (``order.restored``, or the next sync reads it out of the bin): as with
    a bin the webhook told, she still gets the reminder (once, no second question) and her Confirm confirms the order.
    Before, the sync's bin kept nothing of the run: it stayed ended, no reminder, and her Confirm did nothing."""
    sc = scenario(sqlite_url, "woocommerce", journeys={"cod_confirmation": COD})
    order = WOOCOMMERCE.order(7, ASHA, sc.now)
    WOOCOMMERCE.place(sc, order)
    sc.work()
    [ask] = sc.sent(ASHA)
    sc.later(hours=1)
    in_the_bin_unheard(sc, world, order)
    sc.later(minutes=10)
    reconcile(sc)
    sc.later(minutes=10)
    back = restored(order, sc.now)
    if back_by == "sync":
        world.woo_orders[str(order["id"])], world.woo_status[str(order["id"])] = back, back["status"]
        reconcile(sc)
    else:
        sc.woo("order.restored", back)
    sc.later(minutes=5)
    assert sc.templates_to(ASHA) == ["cod_confirm_v1"]
    sc.later(hours=5, step=timedelta(minutes=30))
    assert sc.templates_to(ASHA) == ["cod_confirm_v1", "cod_reminder_v1"]
    sc.tap(ASHA, "cod_confirm", ask)
    sc.later(minutes=5)
    assert tagged(world) == ["cod-confirmed"]
    sc.later(days=2)
    assert sc.templates_to(ASHA) == ["cod_confirm_v1", "cod_reminder_v1"]
    assert tagged(world) == ["cod-confirmed"]



def test_a_bin_first_heard_as_an_update_to_trash_is_resumed_at_the_restore(sqlite_url, scenario, world):  # noqa: F811
    """WooCommerce's ``order.updated`` saying ``trash`` can reach us before the bin's ``order.deleted`` (the sync's
    read of the bin comes later still): the run is kept as the first word of the bin found it, and the restore
    resumes it (the reminder, once; "cod-unconfirmed" at the deadline). Before, the update ended the run as a cancel
    and kept nothing, so the restored order was never reminded nor tagged."""
    sc = scenario(sqlite_url, "woocommerce", journeys={"cod_confirmation": COD})
    order = WOOCOMMERCE.order(11, ASHA, sc.now)
    WOOCOMMERCE.place(sc, order)
    sc.work()
    sc.later(hours=1)
    in_the_bin_unheard(sc, world, order)
    sc.woo("order.updated", world.woo_orders[str(order["id"])])
    sc.later(minutes=1)
    sc.woo("order.deleted", {"id": order["id"]})
    sc.later(minutes=10)
    reconcile(sc)
    sc.later(minutes=10)
    sc.woo("order.restored", restored(order, sc.now))
    sc.later(hours=6, step=timedelta(minutes=30))
    assert sc.templates_to(ASHA) == ["cod_confirm_v1", "cod_reminder_v1"]
    sc.later(days=2)
    assert sc.templates_to(ASHA) == ["cod_confirm_v1", "cod_reminder_v1"]
    assert tagged(world) == ["cod-unconfirmed"]

# ---- a tap in the bin that matches none of our messages -------------------------------------------------------

@pytest.mark.parametrize("button, written", [("cod_confirm", ("cod-confirmed", None)), ("cod_cancel", (None, "cancelled"))],
                         ids=["Confirm", "Cancel"])
def test_a_tap_in_the_bin_that_matches_no_message_counts_once_the_order_is_restored(sqlite_url, scenario, world,  # noqa: F811
                                                                                     button, written):
    """The question reached her phone but its send's answer was lost (its message id unknown). The store bins the order
    by mistake; she taps Confirm (or Cancel) on the question: the tap matches none of our messages and her only COD
    order lies in the bin. Restored ten minutes later: her answer counts as a tap tied to the question does (tagged
    confirmed, or the order cancelled), she is not reminded, and nothing is tagged unanswered at the deadline. Before,
    the tap reached no run and was not kept: the restored run reminded her and tagged the order "cod-unconfirmed"."""
    sc = scenario(sqlite_url, "woocommerce", journeys={"cod_confirmation": COD})
    world.whatsapp_answer_lost = True
    order, ask = asked_then_binned(sc, 8)
    world.whatsapp_answer_lost = False
    sc.later(minutes=5)
    sc.tap(ASHA, button, ask)
    sc.later(minutes=5)
    assert world.woo_writes() == []  # nothing written to a binned order
    sc.woo("order.restored", restored(order, sc.now))
    sc.later(minutes=5)
    tag, status = written
    assert tagged(world) == ([tag] if tag else [])
    assert _statuses(world) == ([status] if status else [])
    sc.later(days=2)
    assert tagged(world) == ([tag] if tag else [])
    assert sc.templates_to(ASHA) == ["cod_confirm_v1"]


def test_a_tap_in_the_bin_that_matches_no_message_and_may_mean_another_order_goes_to_a_person_at_the_restore(
        sqlite_url, scenario, world):  # noqa: F811
    """Two COD orders asked, both sends' answers lost. The store bins the first by mistake; she taps Confirm on a
    question: it matches no message, and the one order still open takes it (confirmed). When the first is restored,
    the tap may have been meant for it: it is not confirmed on a guess, and a person is asked to find out which
    order she meant. Before, the restore said nothing: her first order went on as if she had never answered."""
    sc = scenario(sqlite_url, "woocommerce", journeys={"cod_confirmation": COD})
    world.whatsapp_answer_lost = True
    first, second = WOOCOMMERCE.order(9, ASHA, sc.now), WOOCOMMERCE.order(10, ASHA, sc.now)
    WOOCOMMERCE.place(sc, first)
    WOOCOMMERCE.place(sc, second)
    sc.work()
    world.whatsapp_answer_lost = False
    sc.later(hours=1)
    sc.woo("order.deleted", {"id": first["id"]})
    sc.later(minutes=5)
    sc.tap(ASHA, "cod_confirm", sc.sent(ASHA)[0])
    sc.later(minutes=5)
    assert {c.order_id for c in world.woo_writes()} == {str(second["id"])}  # the order still open took it
    assert sc.handoffs(status="open") == []
    sc.woo("order.restored", restored(first, sc.now))
    sc.later(minutes=5)
    assert {c.order_id for c in world.woo_writes()} == {str(second["id"])}  # nothing confirmed on a guess
    [case] = sc.handoffs(status="open")
    assert "which order she meant" in case["reason"]
    assert WOOCOMMERCE.name(9) in case["reason"] and WOOCOMMERCE.name(10) in case["reason"]


def test_a_cod_tap_that_matches_no_message_is_none_of_her_binned_pay_reminders_business(sqlite_url, scenario, world):  # noqa: F811
    """Two orders of hers whose card was declined (#7311, #7312) wait for their pay link; the store bins both ten
    minutes on (a clean-up). She then orders cash on delivery (#7313); its question reaches her but its send's answer
    is lost, and she taps Confirm on it: the tap matches none of our messages, and her COD order takes it (confirmed).
    A pay link asks nothing to tap: the tap is none of the pay runs' business. The store restores #7311: its pay link
    goes out as due, and nobody is asked to find out which order she meant. Before, each binned pay run kept the tap
    as maybe meant for the other one, and the restore opened a "which order she meant" case for #7311 and #7312."""
    from tests.scenarios.harness import TEMPLATES
    from tests.scenarios.test_woo_recovery import PAY, unpaid

    sc = scenario(sqlite_url, "woocommerce", journeys={"cod_confirmation": COD, "payment_recovery": {}},
                  store_settings={"templates": [*TEMPLATES, PAY]})
    first, second = unpaid(11, sc.now), unpaid(12, sc.now)
    sc.woo("order.created", first)
    sc.woo("order.created", second)
    sc.later(minutes=10)
    sc.woo("order.deleted", {"id": first["id"]})
    sc.woo("order.deleted", {"id": second["id"]})
    sc.later(minutes=5)
    world.whatsapp_answer_lost = True
    cod = WOOCOMMERCE.order(13, ASHA, sc.now)
    WOOCOMMERCE.place(sc, cod)
    sc.work()
    world.whatsapp_answer_lost = False
    [ask] = sc.sent(ASHA)
    sc.later(minutes=5)
    sc.tap(ASHA, "cod_confirm", ask)
    sc.later(minutes=5)
    assert {c.order_id for c in world.woo_writes()} == {str(cod["id"])}  # her COD order took it
    sc.woo("order.restored", restored(first, sc.now))
    sc.later(hours=2, step=timedelta(minutes=10))
    assert [case["reason"] for case in sc.handoffs(status="open")] == []
    assert [s.params[0] for s in sc.sent(ASHA) if s.template == "pay_v1"] == [WOOCOMMERCE.name(11)]
