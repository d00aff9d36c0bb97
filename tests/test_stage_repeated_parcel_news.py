"""Stages: only news of a parcel moves a customer; an order update that repeats it moves no one.

WooCommerce has no fulfilment object: the connector reads the parcel from the order's status
(and Shipment Tracking meta) on every ``order.updated``. A store's plugin saving an old, long
delivered order (a review request marking it asked, a note) repeats "delivered": the customer,
busy with her new order, must stay with that order's owner. Driven over HTTP: signed WooCommerce
webhooks into the app, the stage as the admin API shows it.
"""

from __future__ import annotations

from datetime import datetime, timezone

from tests.scenarios import payloads as p
from tests.test_handoffs import post_shopify
from tests.test_stages_after_cancel import WOO_PHONE, post_woo, prepaid, returning_customer, settings, stage, woo_returning_customer


def test_an_old_delivered_woocommerce_order_saved_again_leaves_her_with_her_new_orders_owner(db_url):
    """Before: her delivered order #7001 saved again by the store (status unchanged) took her from
    qualification (her new COD order, the COD team's) back to retention."""
    from tests.helpers import running_app

    with running_app(settings(db_url)) as (client, runtime):
        woo_returning_customer(client, runtime, p.woo_order(7002, WOO_PHONE, datetime(2026, 11, 20, 9, tzinfo=timezone.utc)))
        ordering = stage(client, "woo", WOO_PHONE)
        first = p.woo_order(7001, WOO_PHONE, datetime(2026, 11, 16, 9, tzinfo=timezone.utc), cod=False)
        later = datetime(2026, 11, 21, 9, tzinfo=timezone.utc)
        post_woo(client, "order.updated", {**first, "status": "delivered", "date_modified_gmt": p.gmt(later), "date_modified": p.gmt(later),
                                           "customer_note": "review requested"})
        runtime.processor.drain()
        assert (ordering, stage(client, "woo", WOO_PHONE)) == ("qualification", "qualification")


def test_an_old_paid_shopify_order_tagged_later_leaves_her_with_her_new_cod_orders_owner(db_url):
    """Before: an app tagging her delivered, long paid order #5550 (orders/updated, nothing new in it)
    took her from qualification (her new COD order #10000, unconfirmed) to post-purchase."""
    from tests.helpers import running_app

    with running_app(settings(db_url)) as (client, runtime):
        returning_customer(client, runtime)
        ordering = stage(client)
        post_shopify(client, prepaid(id=5550001, name="#5550", tags="review-asked", updated_at="2026-11-26T10:00:00+05:30"),
                     "orders/updated")
        runtime.processor.drain()
        assert (ordering, stage(client)) == ("qualification", "qualification")
