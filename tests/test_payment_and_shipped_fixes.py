"""Payment recovery, as a store owner sees it.

- A card payment that is only authorized (Shopify stores that capture manually) is paid as far
  as the customer knows: no "pay now" reminder, and the later capture is no recovered payment.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from connector import events as ev
from connector.journeys.engine import TimerFired
from connector.journeys.payment_recovery import PaymentRecovery
from connector.reports import Period, conversion
from tests.conftest import FIXTURES
from tests.helpers import load_json, running_app
from tests.test_decide_tables import (
    D, H, MIN, PR, T0, Case, Clock, check, facts, post, prepaid, run, runs, shopify_app, steps, table,
)

AUTHORIZED = ev.PaymentState.AUTHORIZED
WEEK = Period("this week", T0 - D, T0 + 7 * D)
PAY_TEMPLATE = {"step": "payment_recovery.remind", "name": "pay_v1", "category": "utility", "body_text": "Pay for {{1}}: {{2}}",
                "body": ["order.name", "order.payment_url"]}


def iso(at: datetime) -> str:
    return at.isoformat().replace("+00:00", "Z")


def shopify_order(order_id: int, financial_status: str, at: datetime) -> dict[str, Any]:
    """A prepaid (card) Shopify order for Asha, +91 98765 43210."""
    o = load_json(FIXTURES / "shopify" / "orders_create.sample.json")
    o.update(id=order_id, name=f"#{order_id}", financial_status=financial_status, payment_gateway_names=["shopify_payments"],
             cancelled_at=None, test=False, created_at=iso(at), updated_at=iso(at), phone="+91 98765 43210", checkout_token=None)
    return o


# ---- manual capture: an authorized payment is no stalled one ---------------------------------

AUTHORIZED_CASES = [
    Case("manual capture: an authorized card order gets no pay reminder", ev.OrderPlaced(order=prepaid(payment_state=AUTHORIZED)),
         None, facts(prepaid(payment_state=AUTHORIZED)), PR, []),
    Case("an authorized update starts nothing either", ev.OrderUpdated(order=prepaid(payment_state=AUTHORIZED)),
         None, facts(prepaid(payment_state=AUTHORIZED)), PR, []),
    Case("a pending payment becomes authorized: closed, not paid, no reminder",
         ev.OrderUpdated(order=prepaid(payment_state=AUTHORIZED)), run("payment_recovery", {}), facts(prepaid(payment_state=AUTHORIZED)),
         PR, ["wake:none", "update(paid)", "finish:closed"], state={"paid": False}),
    Case("the hour is up but the payment is authorized by now: no reminder", TimerFired(T0 + H),
         run("payment_recovery", {}), facts(prepaid(payment_state=AUTHORIZED)), PR,
         ["wake:none", "update(paid)", "finish:closed"], now=T0 + H, state={"paid": False}),
]


@table(AUTHORIZED_CASES)
def test_an_authorized_payment_is_not_stalled(case: Case) -> None:
    check(PaymentRecovery(), case)


# ---- manual capture: through the app ---------------------------------------------------------

def test_manual_capture_orders_get_no_pay_reminder_and_their_capture_is_no_recovered_payment(db_url):
    settings = shopify_app(db_url, 0, templates=[PAY_TEMPLATE], journeys={"payment_recovery": {"after_minutes": 60}})
    clock = Clock(T0)
    with running_app(settings) as (client, runtime):
        runtime.processor.clock = clock
        card = shopify_order(1001, "authorized", T0)  # the store captures at fulfilment
        later = shopify_order(1002, "pending", T0)  # the bank confirms the authorization 20 minutes on
        unpaid = shopify_order(1003, "pending", T0)  # the control: still pending after the hour
        for o in (card, later, unpaid):
            post(client, "orders/create", o)
        runtime.processor.drain()
        post(client, "orders/updated", {**later, "financial_status": "authorized", "updated_at": iso(T0 + 20 * MIN)})
        runtime.processor.drain()
        clock.now = T0 + 2 * H
        runtime.processor.process_timers()
        clock.now = T0 + 2 * D
        for o in (card, later):  # both ship and are captured two days on
            post(client, "orders/paid", {**o, "financial_status": "paid", "updated_at": iso(clock.now)})
        runtime.processor.drain()
        sent = steps(runtime, "payment_recovery")
        found = runs(runtime)
        sid = runtime.store_ids["shop-a"]
        with runtime.db.engine.connect() as conn:
            report = conversion(conn, sid, WEEK)
    assert sent == [("payment_recovery", "order:1003", "remind")]  # only the order with nothing paid
    assert (sid, "payment_recovery", "order:1001") not in found
    ended = found[(sid, "payment_recovery", "order:1002")]
    assert ended.status == "finished" and ended.state["paid"] is False and not ended.state.get("reminded")
    assert (report["payments_reminded"], report["payments_recovered"], report["payment_recovered_revenue"]) == (1, 0, "0")
