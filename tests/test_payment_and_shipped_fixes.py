"""Payment recovery and the "shipped" update, as a store owner sees them.

- A card payment that is only authorized (Shopify stores that capture manually) is paid as far
  as the customer knows: no "pay now" reminder, and the later capture is no recovered payment.
- A WooCommerce order paid after the pay reminder arrives as an order update (there is no
  orders/paid): it counts as a recovered payment, once, with its revenue.
- A fulfilment first marked without tracking, then given tracking, still gets its one
  "shipped" message (with the tracking) when the shipped template needs tracking.
"""

from __future__ import annotations

import asyncio
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest
import respx
from sqlalchemy import select

from adapters.shopify.client import ShopifyAdminClient
from connector import events as ev
from connector.config import parse_settings
from connector.journeys.delivery_updates import DeliveryUpdates, DeliveryUpdatesConfig
from connector.journeys.engine import TimerFired
from connector.journeys.payment_recovery import PaymentRecovery
from connector.outbox.dispatcher import Dispatcher
from connector.outbox.senders import DryRunSender
from connector.reports import Period, conversion
from connector.storage import models as m
from connector.sync import reconcile_orders
from tests.conftest import FIXTURES, SECRETS, settings_dict
from tests.helpers import dumps, load_json, running_app, woo_headers
from tests.test_decide_tables import (
    D, H, MIN, PR, T0, Case, Clock, check, dispatcher, facts, post, prepaid, run, runs, shopify_app, steps, table, woo,
)
from tests.test_sync import SHOP_URL, FakeShopify, gql_node

AUTHORIZED = ev.PaymentState.AUTHORIZED
WEEK = Period("this week", T0 - D, T0 + 7 * D)
PAY_TEMPLATE = {"step": "payment_recovery.remind", "name": "pay_v1", "category": "utility", "body_text": "Pay for {{1}}: {{2}}",
                "body": ["order.name", "order.payment_url"]}
# as in config.example.toml: the shipped message names the courier and links the tracking number
TRACKED_SHIPPED = {"step": "delivery.shipped", "name": "shipped_tracked_v1", "category": "utility",
                   "body_text": "Order {{1}} is on its way with {{2}}, tracking {{3}}",
                   "body": ["order.name", "fulfillment.tracking_company", "fulfillment.tracking_number"]}
PLAIN_SHIPPED = {"step": "delivery.shipped", "name": "shipped_plain_v1", "category": "utility",
                 "body_text": "Order {{1}} is on its way", "body": ["order.name"]}


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
        asyncio.run(Dispatcher(runtime.db, settings, runtime.store_ids, DryRunSender(), clock=clock).drain())  # it goes out
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
    assert (report["payments_reminded"], report["payments_recovered"], report["payment_recovered_revenue"]) == (1, 0, {})


# ---- the payment's attribution window -------------------------------------------------------------

def test_a_payment_weeks_after_the_pay_reminder_is_not_recovered_by_it(db_url):
    """Two card orders stay pending and get the pay link. One is paid the next day: recovered. The other is paid a
    month later (a bank transfer at last): paid, but not the reminder's doing, so no recovered revenue."""
    settings = shopify_app(db_url, 0, templates=[PAY_TEMPLATE], journeys={"payment_recovery": {"after_minutes": 60, "attribution_days": 3}})
    clock = Clock(T0)
    with running_app(settings) as (client, runtime):
        runtime.processor.clock = clock
        soon, late = shopify_order(1101, "pending", T0), shopify_order(1102, "pending", T0)
        for o in (soon, late):
            post(client, "orders/create", o)
        runtime.processor.drain()
        clock.now = T0 + 2 * H
        runtime.processor.process_timers()
        for _ in range(2):  # both go out (the second a few seconds after the first: two messages to one phone are spaced)
            asyncio.run(Dispatcher(runtime.db, settings, runtime.store_ids, DryRunSender(), clock=clock).drain())
            clock.now += MIN
        for o, at in ((soon, T0 + D), (late, T0 + 30 * D)):
            clock.now = at
            post(client, "orders/paid", {**o, "financial_status": "paid", "updated_at": iso(at)})
            runtime.processor.drain()
        sid = runtime.store_ids["shop-a"]
        with runtime.db.engine.connect() as conn:
            report = conversion(conn, sid, WEEK)
            total = conn.execute(select(m.Order.total).where(m.Order.external_id == "1101")).scalar_one()
    assert steps(runtime, "payment_recovery") == [("payment_recovery", "order:1101", "remind"), ("payment_recovery", "order:1102", "remind")]
    assert (report["payments_reminded"], report["payments_recovered"], report["payment_recovered_revenue"]) == (2, 1, {"USD": str(total)})


def test_an_order_paid_before_its_pay_reminder_was_due_is_no_stalled_payment(db_url):
    """Three card orders start pending. One is paid five minutes later (the bank was slow), one after its pay reminder,
    one never. The report counts two stalled payments, not three: the first never stalled."""
    settings = shopify_app(db_url, 0, templates=[PAY_TEMPLATE], journeys={"payment_recovery": {"after_minutes": 60}})
    clock = Clock(T0)
    with running_app(settings) as (client, runtime):
        runtime.processor.clock = clock
        quick, reminded, unpaid = (shopify_order(n, "pending", T0) for n in (1201, 1202, 1203))
        for o in (quick, reminded, unpaid):
            post(client, "orders/create", o)
        runtime.processor.drain()
        clock.now = T0 + 5 * MIN
        post(client, "orders/paid", {**quick, "financial_status": "paid", "updated_at": iso(clock.now)})
        runtime.processor.drain()
        clock.now = T0 + 2 * H
        runtime.processor.process_timers()
        for _ in range(2):  # two messages to one phone go out a little apart
            asyncio.run(Dispatcher(runtime.db, settings, runtime.store_ids, DryRunSender(), clock=clock).drain())
            clock.now += MIN
        clock.now = T0 + 5 * H
        post(client, "orders/paid", {**reminded, "financial_status": "paid", "updated_at": iso(clock.now)})
        runtime.processor.drain()
        sid = runtime.store_ids["shop-a"]
        with runtime.db.engine.connect() as conn:
            report = conversion(conn, sid, WEEK)
    assert steps(runtime, "payment_recovery") == [("payment_recovery", "order:1202", "remind"), ("payment_recovery", "order:1203", "remind")]
    assert (report["payments_stalled"], report["payments_reminded"], report["payments_recovered"]) == (2, 2, 1)


# ---- payment terms: a B2B order on Net 30 is not late an hour after it was placed ----------------------


def test_an_order_on_net_30_gets_no_pay_reminder_before_its_payment_is_due(db_url):
    """A B2B / draft order on Net 30 is pending from the start. Before, its buyer got "complete your
    payment" an hour after ordering; now the pay link goes only once the payment is due (and not at all
    if it is paid by then). An order without terms is reminded after the hour as before."""
    settings = shopify_app(db_url, 0, templates=[PAY_TEMPLATE], journeys={"payment_recovery": {"after_minutes": 60}})
    clock = Clock(T0)
    net30 = {"payment_terms_name": "Net 30", "payment_terms_type": "net", "due_in_days": 30,
             "payment_schedules": [{"issued_at": iso(T0), "due_at": iso(T0 + 30 * D), "completed_at": None}]}
    with running_app(settings) as (client, runtime):
        runtime.processor.clock = clock
        post(client, "orders/create", {**shopify_order(1001, "pending", T0), "payment_terms": net30})
        post(client, "orders/create", {**shopify_order(1002, "pending", T0), "payment_terms": net30})  # paid on day 20
        post(client, "orders/create", shopify_order(1003, "pending", T0))  # no terms
        runtime.processor.drain()
        clock.now = T0 + 2 * H
        runtime.processor.process_timers()
        after_two_hours = steps(runtime, "payment_recovery")
        clock.now = T0 + 20 * D
        post(client, "orders/paid", {**shopify_order(1002, "paid", T0), "payment_terms": {**net30, "payment_schedules": [
            {"issued_at": iso(T0), "due_at": iso(T0 + 30 * D), "completed_at": iso(clock.now)}]}, "updated_at": iso(clock.now)})
        runtime.processor.drain()
        runtime.processor.process_timers()
        clock.now = T0 + 30 * D + MIN
        runtime.processor.process_timers()
        after_due = steps(runtime, "payment_recovery")
    assert after_two_hours == [("payment_recovery", "order:1003", "remind")]
    assert after_due == [("payment_recovery", "order:1003", "remind"), ("payment_recovery", "order:1001", "remind")]


def test_an_order_on_terms_re_read_by_the_reconcile_gets_no_pay_reminder_before_its_payment_is_due(db_url):
    """The 15-minute reconcile reads orders through Admin GraphQL, which does not read payment terms.
    Before, its re-read of an order on "due on fulfilment" terms (the webhook rightly started nothing)
    started the pay reminder as for an order owed at once: the B2B buyer got "complete your payment"
    an hour after ordering. Now the order keeps the terms its webhook carried and the journey decides
    by them: nothing until the fulfilment dates the payment, and a Net 30 order is still reminded
    only once it is due. An order without terms is reminded after the hour as before."""
    settings = shopify_app(db_url, 0, templates=[PAY_TEMPLATE], journeys={"payment_recovery": {"after_minutes": 60}},
                           access_token="shpat_test", api_base_url="https://shop-a.example")
    store = settings.stores[0]
    clock = Clock(T0)
    on_fulfilment = {"payment_terms_name": "Due on fulfillment", "payment_terms_type": "fulfillment", "due_in_days": None,
                     "payment_schedules": []}
    net30 = {"payment_terms_name": "Net 30", "payment_terms_type": "net", "due_in_days": 30,
             "payment_schedules": [{"issued_at": iso(T0), "due_at": iso(T0 + 30 * D), "completed_at": None}]}
    orders = {2001: on_fulfilment, 2002: net30, 2003: None}  # 2003: no terms

    def node(oid: int, updated: datetime) -> dict[str, Any]:
        """The reconcile's GraphQL node of the same order: no payment terms in it."""
        n = gql_node(oid, updated=updated, created=T0, phone="+91 98765 43210", oid=oid)
        n.update(name=f"#{oid}", paymentGatewayNames=["shopify_payments"], checkoutToken=None)
        return n

    fake = FakeShopify([])

    def reconcile(runtime: Any) -> None:
        """The reconcile job's tick: every order was touched since the last (an app tags it, say)."""
        for oid in orders:
            fake.put(node(oid, clock.now - 5 * MIN))

        async def tick() -> None:
            with respx.mock() as mock:
                mock.post(SHOP_URL).mock(side_effect=fake.handler)
                async with ShopifyAdminClient(store) as api:
                    await reconcile_orders(runtime.db, store, runtime.store_ids["shop-a"], api, now=clock.now)

        asyncio.run(tick())
        runtime.processor.drain()

    with running_app(settings) as (client, runtime):
        runtime.processor.clock = clock
        for oid, terms in orders.items():
            post(client, "orders/create", {**shopify_order(oid, "pending", T0), "payment_terms": terms})
        runtime.processor.drain()
        for minutes in (15, 30, 45, 60, 75, 90):  # the reconcile's ticks re-read all three
            clock.now = T0 + minutes * MIN
            reconcile(runtime)
            runtime.processor.process_timers()
        clock.now = T0 + 6 * H
        reconcile(runtime)
        runtime.processor.process_timers()
        within_hours = steps(runtime, "payment_recovery")
        with runtime.db.engine.connect() as conn:
            kept = {r.external_id: (r.payment_terms, r.payment_due_at) for r in conn.execute(
                select(m.Order).where(m.Order.store_id == runtime.store_ids["shop-a"]))}
            reads = [r.status for r in conn.execute(select(m.InboxEvent).where(m.InboxEvent.topic == "sync/order"))]
        clock.now = T0 + 29 * D
        reconcile(runtime)
        runtime.processor.process_timers()
        before_due = steps(runtime, "payment_recovery")
        clock.now = T0 + 30 * D + MIN
        runtime.processor.process_timers()
        after_due = steps(runtime, "payment_recovery")
    assert reads == ["done"] * 3 * 7  # every re-read was applied as an update (none stale, none failed)
    assert within_hours == before_due == [("payment_recovery", "order:2003", "remind")]
    assert after_due == [("payment_recovery", "order:2003", "remind"), ("payment_recovery", "order:2002", "remind")]
    assert kept == {"2001": ("fulfillment", None), "2002": ("net", T0 + 30 * D), "2003": (None, None)}


def test_an_order_row_keeps_the_terms_an_event_carried_in_the_transaction_cache_and_without(db):
    """What the journeys read (``OrderFacts``, from the order row): the terms of the last event that
    carried them. An update without terms (the reconcile's read) leaves them, whether the row is a
    held INSERT in the processor's transaction cache, a stored row read into the cache, or a plain
    read; an event with other terms replaces them (the fulfilment that dates the payment)."""
    from connector.rows import order_row, prefetch
    from connector.state import apply_order
    from connector.storage.inbox import sync_stores
    from connector.storage.sql import flush
    from connector.storage.txcache import installed

    sid = sync_stores(db, [("a", "shopify")])["a"]
    due = (T0 + 30 * D).astimezone(timezone(timedelta(hours=5, minutes=30)))  # stored (and cached) as UTC
    with db.engine.begin() as conn, installed(conn):
        apply_order(conn, sid, prepaid(payment_terms="net", payment_due_at=due), None, T0)  # the webhook
        apply_order(conn, sid, prepaid(updated_at=T0 + 15 * MIN), None, T0 + 15 * MIN)  # the reconcile: no terms
        held = dict(order_row(conn, sid, "1042"))
        flush(conn)
    with db.engine.begin() as conn, installed(conn):
        prefetch(conn, sid, set(), {"1042"}, set())
        read = dict(order_row(conn, sid, "1042"))
        apply_order(conn, sid, prepaid(updated_at=T0 + 30 * MIN), None, T0 + 30 * MIN)
        cached = dict(order_row(conn, sid, "1042"))
        flush(conn)
    with db.engine.begin() as conn:
        stored = order_row(conn, sid, "1042")._asdict()
        apply_order(conn, sid, prepaid(payment_terms="fulfillment", payment_due_at=T0 + 2 * D, updated_at=T0 + 2 * D), None, T0 + 2 * D)
        dated = order_row(conn, sid, "1042")._asdict()
    for row in (held, read, cached, stored):
        assert (row["payment_terms"], row["payment_due_at"]) == ("net", T0 + 30 * D)
        assert row["payment_due_at"].utcoffset() == timedelta(0)
    assert (dated["payment_terms"], dated["payment_due_at"]) == ("fulfillment", T0 + 2 * D)


# ---- WooCommerce: paid after the reminder ---------------------------------------------------

WOO_PAID_CASES = [
    Case("WooCommerce paid after the reminder (an order update): recovered with its revenue",
         ev.OrderUpdated(order=woo("processing", updated_at=T0 + 2 * H)),
         run("payment_recovery", {"reminded": True, "sent": 1}, "finished", subject="order:727"),
         facts(woo("processing"), reminders_sent=(T0 + H,)), PR, ["update(currency,order_id,paid,recovered,revenue)"],
         state={"paid": True, "revenue": "1299", "currency": "INR"}),
    Case("the same payment heard again (orders/paid after the update): counted once", ev.OrderPaid(order=woo("processing")),
         run("payment_recovery", {"reminded": True, "paid": True, "revenue": "1299"}, "finished", subject="order:727"),
         facts(woo("processing")), PR, []),
    Case("a reminded WooCommerce order still unpaid: nothing recorded", ev.OrderUpdated(order=woo("on-hold")),
         run("payment_recovery", {"reminded": True}, "finished", subject="order:727"), facts(woo("on-hold")), PR, []),
]


@table(WOO_PAID_CASES)
def test_a_payment_heard_as_an_order_update_is_recorded_once(case: Case) -> None:
    check(PaymentRecovery(), case)


def woo_settings(db_url: str, templates: list[dict[str, Any]], journeys: dict[str, Any]):
    raw = settings_dict(db_url)
    raw["stores"][2].update(templates=templates, journeys=journeys, policy={"quiet_hours": ""})
    return parse_settings(raw, environ={})


def post_woo(client, status: str, modified: datetime, *, paid: bool = False, tracking: dict[str, str] | None = None,
             topic: str = "order.updated") -> None:
    """WooCommerce order #727 (John, +1 415 555 2671, 29.35 USD, card) as the store sends it."""
    o = load_json(FIXTURES / "woocommerce" / "order.created.rest-v3-docs-example.json")
    stamp = modified.strftime("%Y-%m-%dT%H:%M:%S")
    o.update(status=status, payment_method="stripe", payment_method_title="Card", date_created_gmt="2026-11-20T06:30:00",
             date_modified_gmt=stamp, date_paid=stamp if paid else None, date_paid_gmt=stamp if paid else None)
    o["billing"]["phone"] = "+1 415 555 2671"
    if tracking is not None:  # the Shipment Tracking extension's meta
        o["meta_data"] = [*o["meta_data"], {"id": 99, "key": "_wc_shipment_tracking_items", "value": [tracking]}]
    body = dumps(o)
    assert client.post("/webhooks/woocommerce/woo", content=body, headers=woo_headers(body, SECRETS["woo"], topic)).status_code == 200


def test_a_woocommerce_payment_after_the_pay_reminder_counts_as_recovered_once(db_url):
    settings = woo_settings(db_url, [PAY_TEMPLATE], {"payment_recovery": {"after_minutes": 60}})
    clock = Clock(T0)
    with running_app(settings) as (client, runtime):
        runtime.processor.clock = clock
        post_woo(client, "pending", T0, topic="order.created")
        runtime.processor.drain()
        clock.now = T0 + 61 * MIN
        runtime.processor.process_timers()
        sender = DryRunSender()
        asyncio.run(Dispatcher(runtime.db, settings, runtime.store_ids, sender, clock=clock).drain())
        clock.now = T0 + 3 * H  # John pays with the link
        post_woo(client, "processing", clock.now, paid=True)
        runtime.processor.drain()
        post_woo(client, "completed", clock.now + H, paid=True)  # shipped: the payment again
        runtime.processor.drain()
        sent = steps(runtime)
        sid = runtime.store_ids["woo"]
        r = runs(runtime)[(sid, "payment_recovery", "order:727")]
        with runtime.db.engine.connect() as conn:
            report = conversion(conn, sid, WEEK)
    assert sent == [("payment_recovery", "order:727", "remind")]
    assert [message.name for _, message in sender.sent] == ["pay_v1"]
    assert (r.state["reminded"], r.state["paid"], r.state["revenue"], r.state["currency"]) == (True, True, "29.35", "USD")
    assert (report["payments_reminded"], report["payments_recovered"], report["payment_recovered_revenue"]) == (1, 1, {"USD": "29.35"})  # the fixture's dollars


def test_a_payment_made_while_the_pay_reminder_waits_for_the_morning_skips_it_and_is_not_counted_as_recovered(db_url):
    raw = settings_dict(db_url)  # the WooCommerce store is in Rome: 06:30 UTC is 07:30 there, inside its quiet hours
    raw["stores"][2].update(templates=[PAY_TEMPLATE], journeys={"payment_recovery": {"after_minutes": 60}},
                            policy={"quiet_hours": "21:00-09:00", "utility_in_quiet_hours": False})
    settings = parse_settings(raw, environ={})
    clock = Clock(T0)
    sender = DryRunSender()
    with running_app(settings) as (client, runtime):
        runtime.processor.clock = clock
        dispatch = dispatcher(runtime, settings, clock, sender)
        post_woo(client, "pending", T0, topic="order.created")
        runtime.processor.drain()
        clock.now = T0 + 61 * MIN  # 08:31 in Rome: the pay link waits for 09:00
        runtime.processor.process_timers()
        assert dispatch() == []
        clock.now = T0 + 80 * MIN  # John pays at 08:50 anyway
        post_woo(client, "processing", clock.now, paid=True)
        runtime.processor.drain()
        clock.now = T0 + 3 * H  # the morning: nothing asks him to pay for what he paid
        assert dispatch() == []
        sid = runtime.store_ids["woo"]
        r = runs(runtime)[(sid, "payment_recovery", "order:727")]
        with runtime.db.engine.connect() as conn:
            report = conversion(conn, sid, WEEK)
            [row] = conn.execute(select(m.OutboxMessage.status, m.OutboxMessage.skip_reason).where(m.OutboxMessage.journey == "payment_recovery")).all()
    assert (r.state["paid"], r.state["paid_before_reminder"], r.state.get("revenue")) == (True, True, None)
    assert tuple(row) == ("skipped", "journey_ended")
    assert (report["payments_reminded"], report["payments_recovered"], report["payment_recovered_revenue"]) == (0, 0, {})


# ---- the shipped update: decide -------------------------------------------------------------

DU = DeliveryUpdatesConfig()


def shipped(tracked: bool, status: str = "none") -> ev.FulfillmentUpdated:
    tracking = dict(tracking_company="UPS", tracking_number="1z827wk74630") if tracked else {}
    return ev.FulfillmentUpdated(fulfillment=ev.Fulfillment(external_id="9", order_external_id="1042", status="success",
                                                            shipment_status=ev.ShipmentStatus(status), created_at=T0, updated_at=T0,
                                                            **tracking))


# no carrier status yet ("none"): the run also listens a week for the parcel's news (``UNTRACKED_WAIT``)
SHIPPED_CASES = [
    Case("fulfilled without tracking: the shipped step is tried, not used up", shipped(False), None, facts(prepaid()), DU,
         ["start:order:1042", "update(last_status,parcels,sent)", "send:shipped", "wake:+7d"], state={"sent": []}),
    Case("still no tracking: not tried again", shipped(False, "confirmed"), run("delivery", {"sent": [], "last_status": "none"}),
         facts(prepaid()), DU, []),
    Case("tracking added: shipped, now used up", shipped(True), run("delivery", {"sent": [], "last_status": "none"}),
         facts(prepaid()), DU, ["update(last_status,parcels,sent,tracking)", "send:shipped", "wake:+7d"], state={"sent": ["shipped"]}),
    Case("tracked from the start: shipped once", shipped(True), None, facts(prepaid()), DU,
         ["start:order:1042", "update(last_status,parcels,sent,tracking)", "send:shipped", "wake:+7d"], state={"sent": ["shipped"]}),
    # a run from before each parcel's tracking was kept: nothing said, its tracking now kept (a later correction is told)
    Case("tracking again: nothing", shipped(True), run("delivery", {"sent": ["shipped"], "last_status": "none"}), facts(prepaid()), DU,
         ["update(tracking)"]),
    Case("tracking only after out for delivery: no late shipped", shipped(True),
         run("delivery", {"sent": ["out_for_delivery"], "last_status": "out_for_delivery"}), facts(prepaid()), DU, []),
]


@table(SHIPPED_CASES)
def test_shipped_waits_to_be_used_up_until_tracking(case: Case) -> None:
    check(DeliveryUpdates(), case)


# ---- the shipped update: through the app ----------------------------------------------------

def fulfillment(order_id: int, at: datetime, *, tracked: bool) -> dict[str, Any]:
    """Shopify's fulfilment of the whole order, with or without the courier's tracking."""
    f = load_json(FIXTURES / "shopify" / "fulfillments_update.sample.json")
    f.update(id=order_id + 2000, order_id=order_id, status="success", shipment_status=None, created_at=iso(T0 + H), updated_at=iso(at))
    if not tracked:
        f.update(tracking_company=None, tracking_number=None, tracking_numbers=[], tracking_url=None, tracking_urls=[])
    return f


def dispatch(runtime, settings, clock: Clock, sender: DryRunSender) -> None:
    asyncio.run(Dispatcher(runtime.db, settings, runtime.store_ids, sender, clock=clock).drain())


@pytest.mark.parametrize("same_batch", [False, True], ids=["tracking added hours later", "both webhooks in one batch"])
def test_a_fulfilment_marked_without_tracking_gets_its_shipped_message_once_tracking_is_added(db_url, same_batch):
    settings = shopify_app(db_url, 0, templates=[TRACKED_SHIPPED], journeys={"delivery": {}})
    clock, sender = Clock(T0), DryRunSender()
    with running_app(settings) as (client, runtime):
        runtime.processor.clock = clock
        post(client, "orders/create", shopify_order(1001, "paid", T0))
        runtime.processor.drain()
        clock.now = T0 + H
        post(client, "fulfillments/create", fulfillment(1001, clock.now, tracked=False))  # marked fulfilled, no tracking yet
        if not same_batch:
            runtime.processor.drain()
            dispatch(runtime, settings, clock, sender)
            clock.now = T0 + 3 * H
        post(client, "fulfillments/update", fulfillment(1001, T0 + 3 * H, tracked=True))  # the merchant adds tracking
        runtime.processor.drain()
        clock.now = T0 + 4 * H
        post(client, "fulfillments/update", fulfillment(1001, clock.now, tracked=True))  # and saves it again
        runtime.processor.drain()
        dispatch(runtime, settings, clock, sender)
    [(_, message)] = sender.sent
    assert message.name == "shipped_tracked_v1"
    assert [p.text for p in message.body] == ["#1001", "UPS", "1z827wk74630"]


def test_a_woocommerce_order_completed_before_its_tracking_gets_the_shipped_message_with_it(db_url):
    settings = woo_settings(db_url, [TRACKED_SHIPPED], {"delivery": {}})
    clock, sender = Clock(T0), DryRunSender()
    tracking = {"tracking_provider": "Delhivery", "tracking_number": "DL727"}
    with running_app(settings) as (client, runtime):
        runtime.processor.clock = clock
        post_woo(client, "processing", T0, paid=True, topic="order.created")
        runtime.processor.drain()
        clock.now = T0 + H
        post_woo(client, "completed", clock.now, paid=True)  # completed first
        runtime.processor.drain()
        dispatch(runtime, settings, clock, sender)
        for hours in (2, 3):  # Shipment Tracking saved, then the order saved again
            clock.now = T0 + hours * H
            post_woo(client, "completed", clock.now, paid=True, tracking=tracking)
            runtime.processor.drain()
        dispatch(runtime, settings, clock, sender)
    [(_, message)] = sender.sent
    assert [p.text for p in message.body] == ["#727", "Delhivery", "DL727"]


def test_a_shipped_template_without_tracking_goes_out_at_once_and_only_once(db_url):
    settings = shopify_app(db_url, 0, templates=[PLAIN_SHIPPED], journeys={"delivery": {}})
    clock, sender = Clock(T0), DryRunSender()
    with running_app(settings) as (client, runtime):
        runtime.processor.clock = clock
        post(client, "orders/create", shopify_order(1001, "paid", T0))
        clock.now = T0 + H
        post(client, "fulfillments/create", fulfillment(1001, clock.now, tracked=False))
        runtime.processor.drain()
        dispatch(runtime, settings, clock, sender)
        first = [m.name for _, m in sender.sent]
        clock.now = T0 + 3 * H
        post(client, "fulfillments/update", fulfillment(1001, clock.now, tracked=True))
        runtime.processor.drain()
        dispatch(runtime, settings, clock, sender)
    assert first == ["shipped_plain_v1"]
    assert [m.name for _, m in sender.sent] == ["shipped_plain_v1"]
