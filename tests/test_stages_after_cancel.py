"""Where a customer stands once an order of hers is called off (cancelled, fully refunded, binned):
in the stage her other orders give, as if the order had never been placed, and her next question
goes to that stage's owner.

- a returning customer (an earlier order delivered) whose new COD order is cancelled is back in
  retention, not left with the COD team; with an earlier order still on its way, in post-purchase,
  and with an earlier COD order she confirmed, in post-purchase too;
- a first-time buyer whose only order is cancelled is back in conversion (she went through the
  checkout and did not buy), not in qualification or post-purchase, and news of the dead order
  (the store tagging it later) does not move her on;
- a full refund does the same, a partial one does not; a WooCommerce order binned or refunded too.
"""

from __future__ import annotations

from sqlalchemy import select

from connector.config import parse_settings
from connector.storage import models as m
from tests.conftest import FIXTURES, SECRETS, settings_dict
from tests.helpers import dumps, load_json, running_app, woo_headers
from tests.scenarios import payloads as p
from tests.test_handoffs import ADMIN, COD_TEMPLATES, dispatch, order, post_shopify, post_wa, tap, wamid_of

STAGES = {"retention": {"owner": "Care team"}, "qualification": {"owner": "COD team"},
          "post_purchase": {"owner": "Delivery desk"}, "conversion": {"owner": "Checkout desk"}}
PHONE = "+919876543210"  # the phone of ``order()``
NEW = 820982911946154999  # her new order, placed after the first was delivered


def settings(db_url: str, **journeys):
    raw = settings_dict(db_url)
    raw["stores"][0].update(journeys=journeys or {"cod_confirmation": {}, "delivery": {}}, templates=COD_TEMPLATES,
                            stages=STAGES, policy={"quiet_hours": ""})
    raw["stores"][2].update(stages=STAGES, policy={"quiet_hours": ""})
    return parse_settings(raw, environ={})


def stage(client, store: str = "shop-a", phone: str = PHONE) -> str:
    """The stage the store owner sees on the contact's page of the admin API."""
    return client.get(f"/api/stores/{store}/contacts/{phone.replace('+', '%2B')}", headers=ADMIN).json()["contact"]["stage"]


def prepaid(**kw) -> dict:
    return order(financial_status="paid", payment_gateway_names=["razorpay"], **kw)


def parcel(client, order_id: int, status: str, at: str, fulfilment_id: int = 255858046) -> None:
    f = load_json(FIXTURES / "shopify" / "fulfillments_update.sample.json")
    f.update(id=fulfilment_id, order_id=order_id, shipment_status=status, created_at=at, updated_at=at)
    post_shopify(client, f, "fulfillments/update")


def returning_customer(client, runtime, first_parcel: str = "delivered") -> None:
    """Asha's prepaid order #5550 (``first_parcel``: its parcel's news), then her new COD order #10000."""
    post_shopify(client, prepaid(id=5550001, name="#5550"), "orders/create")
    runtime.processor.drain()
    parcel(client, 5550001, first_parcel, "2026-11-21T10:00:00Z")
    runtime.processor.drain()
    post_shopify(client, order(id=NEW, name="#10000", created_at="2026-11-25T12:00:00+05:30",
                               updated_at="2026-11-25T12:00:00+05:30"), "orders/create")
    runtime.processor.drain()


def cancelled(**kw) -> dict:
    return order(**{"cancelled_at": "2026-11-26T09:00:00+05:30", "cancel_reason": "customer", "updated_at": "2026-11-26T09:00:00+05:30", **kw})


def ask(client, text: str) -> None:
    post_wa(client, {"messages": [{"from": "919876543210", "id": "wamid.Q1", "timestamp": "1795158000", "type": "text",
                                   "text": {"body": text}}]})


def test_a_returning_customers_cancelled_cod_order_puts_her_back_in_retention_with_its_owner(db_url):
    with running_app(settings(db_url)) as (client, runtime):
        returning_customer(client, runtime)
        ordering = stage(client)
        post_shopify(client, cancelled(id=NEW, name="#10000", created_at="2026-11-25T12:00:00+05:30", financial_status="voided"),
                     "orders/cancelled")
        runtime.processor.drain()
        after = stage(client)
        ask(client, "Do you have the same in blue?")
        runtime.processor.drain()
        [case] = client.get("/api/stores/shop-a/handoffs", headers=ADMIN).json()["items"]
    assert (ordering, after) == ("qualification", "retention")
    assert (case["owner"], case["stage"]) == ("Care team", "retention")  # not the COD team's, for an order that is gone


def test_a_cancelled_cod_order_leaves_a_customer_whose_earlier_order_is_on_its_way_in_post_purchase(db_url):
    with running_app(settings(db_url)) as (client, runtime):
        returning_customer(client, runtime, first_parcel="in_transit")
        post_shopify(client, cancelled(id=NEW, name="#10000", created_at="2026-11-25T12:00:00+05:30"), "orders/cancelled")
        runtime.processor.drain()
        assert stage(client) == "post_purchase"


def test_a_cancelled_cod_order_leaves_her_confirmed_earlier_cod_order_in_post_purchase(db_url):
    """She confirmed COD order #9999 on WhatsApp (post-purchase: it is coming), then placed #10000 and cancelled it."""
    s = settings(db_url)
    with running_app(s) as (client, runtime):
        post_shopify(client, order(), "orders/create")
        runtime.processor.drain()
        dispatch(runtime, s)
        tap(client, "cod_confirm", "wamid.T1", wamid_of(runtime, "cod_confirmation", "ask"))
        runtime.processor.drain()
        confirmed = stage(client)
        post_shopify(client, order(id=NEW, name="#10000", created_at="2026-11-21T12:00:00+05:30",
                                   updated_at="2026-11-21T12:00:00+05:30"), "orders/create")
        runtime.processor.drain()
        post_shopify(client, cancelled(id=NEW, name="#10000", created_at="2026-11-21T12:00:00+05:30"), "orders/cancelled")
        runtime.processor.drain()
        after = stage(client)
    assert (confirmed, after) == ("post_purchase", "post_purchase")


def test_a_first_time_buyers_only_order_cancelled_puts_her_back_in_conversion(db_url):
    with running_app(settings(db_url)) as (client, runtime):
        post_shopify(client, order(), "orders/create")
        runtime.processor.drain()
        ordering = stage(client)
        post_shopify(client, cancelled(financial_status="voided"), "orders/cancelled")
        runtime.processor.drain()
        assert (ordering, stage(client)) == ("qualification", "conversion")


def test_a_prepaid_order_cancelled_without_a_refund_moves_no_one_on_when_the_store_tags_it_later(db_url):
    """Shopify keeps ``paid`` on an order cancelled without a refund: the cancel puts her back, and the
    store's later edit of the dead order (a tag) is no payment that moves her to post-purchase again."""
    with running_app(settings(db_url)) as (client, runtime):
        post_shopify(client, prepaid(), "orders/create")
        runtime.processor.drain()
        ordering = stage(client)
        post_shopify(client, cancelled(financial_status="paid", payment_gateway_names=["razorpay"]), "orders/cancelled")
        runtime.processor.drain()
        after_cancel = stage(client)
        post_shopify(client, cancelled(financial_status="paid", payment_gateway_names=["razorpay"], tags="fraud-check",
                                       updated_at="2026-11-27T09:00:00+05:30"), "orders/updated")
        runtime.processor.drain()
        after_tag = stage(client)
    assert (ordering, after_cancel, after_tag) == ("post_purchase", "conversion", "conversion")


def test_a_full_refund_puts_a_returning_customer_back_in_retention_and_a_partial_one_does_not(db_url):
    with running_app(settings(db_url)) as (client, runtime):
        returning_customer(client, runtime)
        new = {"id": NEW, "name": "#10000", "created_at": "2026-11-25T12:00:00+05:30", "payment_gateway_names": ["razorpay"]}
        post_shopify(client, order(**new, financial_status="paid", updated_at="2026-11-25T12:05:00+05:30"), "orders/paid")
        runtime.processor.drain()
        paid = stage(client)
        post_shopify(client, order(**new, financial_status="partially_refunded", updated_at="2026-11-26T09:00:00+05:30"), "orders/updated")
        runtime.processor.drain()
        partly = stage(client)
        post_shopify(client, order(**new, financial_status="refunded", updated_at="2026-11-27T09:00:00+05:30"), "orders/updated")
        runtime.processor.drain()
        refunded = stage(client)
    assert (paid, partly, refunded) == ("post_purchase", "post_purchase", "retention")


# ---- WooCommerce: an order binned (order.deleted) or refunded -------------------------------------

WOO_PHONE = "+14155552671"


def post_woo(client, topic: str, body: dict) -> None:
    raw = dumps(body)
    client.post("/webhooks/woocommerce/woo", content=raw, headers=woo_headers(raw, SECRETS["woo"], topic))


def woo_returning_customer(client, runtime, second: dict) -> None:
    """Her first order (paid) was delivered; ``second`` is her new one."""
    from datetime import datetime, timezone

    first = p.woo_order(7001, WOO_PHONE, datetime(2026, 11, 16, 9, tzinfo=timezone.utc), cod=False)
    post_woo(client, "order.created", first)
    runtime.processor.drain()
    at = datetime(2026, 11, 18, 9, tzinfo=timezone.utc)
    post_woo(client, "order.updated", {**first, "status": "delivered", "date_modified_gmt": p.gmt(at), "date_modified": p.gmt(at)})
    runtime.processor.drain()
    post_woo(client, "order.created", second)
    runtime.processor.drain()


def test_a_woocommerce_order_moved_to_the_bin_puts_a_returning_customer_back_in_retention(db_url):
    from datetime import datetime, timezone

    with running_app(settings(db_url)) as (client, runtime):
        woo_returning_customer(client, runtime, p.woo_order(7002, WOO_PHONE, datetime(2026, 11, 20, 9, tzinfo=timezone.utc)))
        ordering = stage(client, "woo", WOO_PHONE)
        post_woo(client, "order.deleted", {"id": 7002})
        runtime.processor.drain()
        assert (ordering, stage(client, "woo", WOO_PHONE)) == ("qualification", "retention")


def test_a_refunded_woocommerce_order_puts_a_returning_customer_back_in_retention(db_url):
    from datetime import datetime, timezone

    at = datetime(2026, 11, 20, 9, tzinfo=timezone.utc)
    second = p.woo_order(7002, WOO_PHONE, at, cod=False)
    with running_app(settings(db_url)) as (client, runtime):
        woo_returning_customer(client, runtime, second)
        ordering = stage(client, "woo", WOO_PHONE)
        later = datetime(2026, 11, 21, 9, tzinfo=timezone.utc)
        post_woo(client, "order.updated", {**second, "status": "refunded", "date_modified_gmt": p.gmt(later), "date_modified": p.gmt(later)})
        runtime.processor.drain()
        with runtime.db.engine.connect() as conn:
            refunded = conn.execute(select(m.Order.payment_state).where(m.Order.external_id == "7002")).scalar_one()
        assert (ordering, refunded, stage(client, "woo", WOO_PHONE)) == ("post_purchase", "refunded", "retention")


def test_parcel_news_of_a_cancelled_order_leaves_her_where_her_other_orders_put_her(db_url):
    """A carrier scan of the cancelled order's parcel (shipped before the cancel, now on its way back) is no
    purchase of hers: it used to put the returning customer back in post-purchase, with the delivery desk."""
    with running_app(settings(db_url)) as (client, runtime):
        returning_customer(client, runtime)
        post_shopify(client, cancelled(id=NEW, name="#10000", created_at="2026-11-25T12:00:00+05:30", financial_status="voided"),
                     "orders/cancelled")
        runtime.processor.drain()
        after_cancel = stage(client)
        parcel(client, NEW, "in_transit", "2026-11-26T12:00:00Z", fulfilment_id=255858047)
        runtime.processor.drain()
        after_scan = stage(client)
    assert (after_cancel, after_scan) == ("retention", "retention")
