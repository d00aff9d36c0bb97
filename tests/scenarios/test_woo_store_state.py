"""WooCommerce stories where the store's own state decides (issue #4): the order as WooCommerce has it now,
not our copy of it (a webhook WooCommerce never retried), where an order was placed (``created_via``),
and the statuses its shipping plugins add.

Same harness as test_store_journeys.py: signed webhooks in over HTTP, the fake WooCommerce REST API and
WhatsApp Cloud API out; the assertions are what reached the store, the phone and the hand-off desk.
"""

from __future__ import annotations

from tests.scenarios import payloads as p
from tests.scenarios.stores import WOOCOMMERCE
from tests.scenarios.test_store_journeys import COD, LADDER

ASHA = "+919876543210"
CANCEL_ON_SILENCE = {"cod_confirmation": {**COD["cod_confirmation"], "no_answer_action": "cancel"}}


def status_puts(world) -> list[str]:
    return [c.body["status"] for c in world.woo_writes() if c.path == "" and "status" in (c.body or {})]


def test_no_answer_cancel_reads_the_order_first_and_leaves_one_the_store_completed(sqlite_url, scenario, world):
    """The store completed the COD order (shipped) but that webhook never reached us (WooCommerce does not retry):
    at the answer deadline the cancel finds the order completed at WooCommerce, cancels nothing (no restock, no
    cancellation email) and a person is told."""
    sc = scenario(sqlite_url, "woocommerce", journeys=CANCEL_ON_SILENCE)
    sc.woo("order.created", WOOCOMMERCE.order(1, ASHA, sc.now))
    sc.work()
    assert sc.templates_to(ASHA) == ["cod_confirm_v1"]
    sc.later(hours=8)
    world.woo_status["7301"] = "completed"  # shipped in wp-admin; the order.updated was lost
    sc.later(hours=20)

    assert status_puts(world) == []  # never moved to cancelled
    [handoff] = sc.handoffs(status="open")
    assert handoff["subject"] == "order:7301" and "cancel" in handoff["reason"] and "shipped" in handoff["reason"]
    assert world.notifications


def test_no_answer_cancel_leaves_an_order_the_store_binned(sqlite_url, scenario, world):
    """An order in the bin is not brought out of it as cancelled."""
    sc = scenario(sqlite_url, "woocommerce", journeys=CANCEL_ON_SILENCE)
    sc.woo("order.created", WOOCOMMERCE.order(1, ASHA, sc.now))
    sc.later(hours=8)
    world.woo_status["7301"] = "trash"  # binned; order.deleted lost
    sc.later(hours=22)  # the reminder went 2 h late (3 h rounds), and so does the deadline
    assert status_puts(world) == []
    [handoff] = sc.handoffs(status="open")
    assert "bin" in handoff["reason"]


def test_a_confirm_never_moves_a_completed_order_back_to_processing(sqlite_url, scenario, world):
    """She taps Confirm after the store completed the order (its webhook lost): the order stays completed."""
    sc = scenario(sqlite_url, "woocommerce", journeys={"cod_confirmation": {**COD["cod_confirmation"], **WOOCOMMERCE.confirm_settings}})
    order = WOOCOMMERCE.awaiting_confirmation(1, ASHA, sc.now)
    sc.woo("order.created", order)
    sc.work()
    ask = sc.last_to(ASHA, "cod_confirm_v1")
    world.woo_status["7301"] = "completed"
    sc.later(hours=1)
    sc.tap(ASHA, "cod_confirm", ask)
    sc.later(minutes=5)
    assert "processing" not in status_puts(world)
    [handoff] = sc.handoffs(status="open")
    assert "processing" in handoff["reason"] and "shipped" in handoff["reason"]


# ---- where the order was placed (created_via) --------------------------------------------------

def unpaid(n: int, at, **fields) -> dict:
    return {**WOOCOMMERCE.order(n, ASHA, at, cod=False), "status": "pending", "date_paid": None, "date_paid_gmt": None, **fields}


def test_orders_the_staff_entered_or_a_renewal_raised_get_no_cart_reminders(sqlite_url, scenario, world):
    """A pending order the merchant created in wp-admin for a phone customer, and a subscription renewal whose
    charge failed, are not carts she left: no "still in your cart" ladder, no discount code. A checkout's own
    unpaid order still gets it."""
    sc = scenario(sqlite_url, "woocommerce", journeys=LADDER)
    sc.say(ASHA, "START")  # she opted in to marketing earlier
    sc.later(days=1)
    sc.woo("order.created", unpaid(1, sc.now, created_via="admin"))
    sc.woo("order.created", unpaid(2, sc.now, created_via="subscription", status="failed"))
    sc.later(days=3)
    assert [t for t in sc.templates_to(ASHA) if t.startswith("cart_")] == []

    sc.woo("order.created", unpaid(3, sc.now, created_via="checkout"))
    sc.later(hours=2)
    assert [t for t in sc.templates_to(ASHA) if t.startswith("cart_")] == ["cart_1_v1"]


def test_a_sale_at_the_woocommerce_till_gets_no_order_confirmation(sqlite_url, scenario, world):
    """WooCommerce's Point of Sale (created_via pos-rest-api) is handled like Shopify POS: the customer is in the shop."""
    sc = scenario(sqlite_url, "woocommerce", journeys={"order_confirmation": {}})
    till = {**WOOCOMMERCE.order(1, ASHA, sc.now, cod=False), "status": "completed", "created_via": "pos-rest-api", "shipping_lines": []}
    sc.woo("order.created", till)
    sc.later(minutes=10)
    assert sc.templates_to(ASHA) == []
    sc.woo("order.created", WOOCOMMERCE.order(2, ASHA, sc.now, cod=False))  # an online order is thanked
    sc.later(minutes=10)
    assert sc.templates_to(ASHA) == ["order_thanks_v1"]


# ---- statuses shipping plugins add -----------------------------------------------------------------

def test_a_dispatched_cod_order_is_not_chased_nor_cancelled_and_gets_its_shipped_message(sqlite_url, scenario, world):
    """A shipping plugin moves the COD order to ``dispatched`` (a default shipping status) before she answers:
    no reminder, no cancel at the deadline, and the "on its way" message."""
    sc = scenario(sqlite_url, "woocommerce", journeys={**CANCEL_ON_SILENCE, "delivery": {}})
    order = WOOCOMMERCE.order(1, ASHA, sc.now)
    sc.woo("order.created", order)
    sc.later(hours=2)
    sc.woo("order.updated", {**order, "status": "dispatched", "date_modified_gmt": p.gmt(sc.now)})
    sc.later(hours=30)
    assert sc.templates_to(ASHA) == ["cod_confirm_v1", "shipped_v1"]
    assert status_puts(world) == []


def test_a_store_names_its_own_shipping_status(sqlite_url, scenario, world):
    """``shipping_statuses`` adds a plugin's status the defaults do not know (``handed-to-courier``)."""
    sc = scenario(sqlite_url, "woocommerce", journeys={**CANCEL_ON_SILENCE, "delivery": {}},
                  store_settings={"shipping_statuses": {"handed-to-courier": "shipped"}})
    order = WOOCOMMERCE.order(1, ASHA, sc.now)
    sc.woo("order.created", order)
    sc.later(hours=2)
    sc.woo("order.updated", {**order, "status": "handed-to-courier", "date_modified_gmt": p.gmt(sc.now)})
    sc.later(hours=30)
    assert sc.templates_to(ASHA) == ["cod_confirm_v1", "shipped_v1"]
    assert status_puts(world) == []
