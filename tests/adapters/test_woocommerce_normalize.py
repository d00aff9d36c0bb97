"""WooCommerce adapter: the REST v3 docs order through ``normalize``, its COD variant
(platform-facts B2), status mapping, checkout drafts and malformed bodies."""

from __future__ import annotations

import json
from datetime import datetime, timezone
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from adapters.woocommerce.normalize import normalize
from connector.config import WooCommerceStore
from connector.errors import NormalizationError
from connector.events import (
    FulfillmentUpdated,
    ShipmentStatus,
    CustomerUpdated,
    FulfillmentState,
    OrderCancelled,
    OrderDeleted,
    OrderPlaced,
    OrderUpdated,
    PaymentState,
    dump_events,
    load_events,
)

FIXTURES = Path(__file__).resolve().parents[3] / "shared" / "fixtures" / "public" / "woocommerce"
ORDER_FIXTURE = "order.created.rest-v3-docs-example.json"


def load_order() -> dict[str, Any]:
    return json.loads((FIXTURES / ORDER_FIXTURE).read_text())


def make_store(**overrides: Any) -> WooCommerceStore:
    data = {"key": "woo", "platform": "woocommerce", "webhook_secret": "s3cret", "site_url": "https://shop.example/"}
    return WooCommerceStore.model_validate({**data, **overrides})


STORE = make_store()


def cod_order() -> dict[str, Any]:
    """The docs order as a fresh COD order, per platform-facts B2.

    B2 lists ``date_paid: null``; WooCommerce derives ``date_paid`` and ``date_paid_gmt``
    from one stored value, so both are null on a real unpaid order.
    """
    order = load_order()
    order.update(
        payment_method="cod",
        payment_method_title="Cash on delivery",
        status="processing",
        date_paid=None,
        date_paid_gmt=None,
    )
    return order


def only(events: list) -> Any:
    """The one order/customer event (a shipped order also carries its FulfillmentUpdated)."""
    main = [e for e in events if not isinstance(e, FulfillmentUpdated)]
    assert len(main) == 1, events
    return main[0]


def test_every_fixture_is_covered() -> None:
    assert [p.name for p in FIXTURES.glob("*.json")] == [ORDER_FIXTURE]


def test_docs_order() -> None:
    events = normalize("order.created", load_order(), STORE)
    assert load_events(json.loads(json.dumps(dump_events(events)))) == events
    event = only(events)
    assert isinstance(event, OrderPlaced)
    order = event.order
    assert (order.external_id, order.name) == ("727", "#727")
    assert order.created_at == datetime(2017, 3, 22, 19, 28, 2, tzinfo=timezone.utc)  # date_created_gmt
    assert order.updated_at == datetime(2017, 3, 22, 19, 28, 8, tzinfo=timezone.utc)
    assert order.cancelled_at is None
    assert order.payment_state is PaymentState.PAID  # bacs with date_paid set
    assert order.fulfillment_state is FulfillmentState.UNFULFILLED
    assert order.platform_status == "processing"
    assert order.is_cod is False
    assert order.gateway_names == ("bacs", "Direct Bank Transfer")
    assert (order.total, order.currency) == (Decimal("29.35"), "USD")
    assert order.status_url == "https://shop.example/checkout/order-received/727/?key=wc_order_58d2d042d1d"
    assert order.payment_url == "https://shop.example/checkout/order-pay/727/?pay_for_order=true&key=wc_order_58d2d042d1d"
    assert order.tags == () and order.test is False


def test_docs_order_customer() -> None:
    customer = only(normalize("order.created", load_order(), STORE)).order.customer
    assert customer.external_id is None  # customer_id 0 = guest
    assert (customer.first_name, customer.last_name) == ("John", "Doe")
    assert customer.email == "john.doe@example.com"
    assert customer.country == "US"
    assert customer.phone is not None
    assert customer.phone.raw == "(555) 555-5555"
    assert customer.phone.e164 is None  # 555 is no real area code: kept, never messaged


def test_docs_order_line_items() -> None:
    first, second = only(normalize("order.created", load_order(), STORE)).order.line_items
    assert (first.external_id, first.product_id, first.variant_id, first.sku) == ("315", "93", None, None)
    assert (first.title, first.quantity, first.price) == ("Woo Single #1", 2, Decimal("3"))
    assert (second.product_id, second.variant_id, second.sku, second.price) == ("22", "23", "Bar3", Decimal("12"))
    assert second.title == "Ship Your Idea \u2013 Color: Black, Size: M Test"  # WordPress's &ndash; read as the dash it is


def test_cod_variant() -> None:
    order = only(normalize("order.created", cod_order(), STORE)).order
    assert order.is_cod is True
    assert order.payment_state is PaymentState.PENDING
    assert order.platform_status == "processing"
    assert order.gateway_names == ("cod", "Cash on delivery")


def test_store_cod_gateways_are_honoured() -> None:
    cheque = {**cod_order(), "payment_method": "Cheque", "payment_method_title": "Check payments"}
    assert only(normalize("order.created", cheque, STORE)).order.is_cod is False  # paid before it ships
    store = make_store(cod_gateways=["cheque"])
    assert only(normalize("order.created", cheque, store)).order.is_cod is True
    # as on Shopify, a gateway whose words say cash on delivery stays COD whatever the list
    assert only(normalize("order.created", cod_order(), store)).order.is_cod is True


@pytest.mark.parametrize(
    ("status", "paid", "state"),
    [
        ("pending", False, PaymentState.PENDING),
        ("on-hold", False, PaymentState.PENDING),
        ("processing", False, PaymentState.PENDING),
        ("processing", True, PaymentState.PAID),
        ("completed", False, PaymentState.PAID),
        ("failed", False, PaymentState.FAILED),
        ("cancelled", False, PaymentState.VOIDED),
        ("refunded", True, PaymentState.REFUNDED),
        ("trash", False, PaymentState.OTHER),
        ("wc-shipped", False, PaymentState.OTHER),  # plugin status
    ],
)
def test_payment_state(status: str, paid: bool, state: PaymentState) -> None:
    body = {**load_order(), "date_paid": None, "date_paid_gmt": None}  # bank transfer
    body["status"] = status
    if paid:
        body["date_paid_gmt"] = "2017-03-22T19:28:08"
    assert only(normalize("order.updated", body, STORE)).order.payment_state is state


@pytest.mark.parametrize(
    ("status", "state"),
    [("processing", PaymentState.PENDING), ("on-hold", PaymentState.PENDING), ("completed", PaymentState.PAID),
     ("delivered", PaymentState.PAID), ("refunded", PaymentState.REFUNDED), ("cancelled", PaymentState.VOIDED)],
)
def test_a_cod_order_is_paid_when_the_cash_is_taken_whatever_its_date_paid_says(status: str, state: PaymentState) -> None:
    """WooCommerce stamps ``date_paid`` on every order that reaches processing, COD included
    (``WC_Order::maybe_set_date_paid``): a fresh COD order as the REST API really sends it is not paid,
    and its pay link is none (the pay page refuses a processing order)."""
    body = {**cod_order(), "status": status, "date_paid": "2017-03-22T16:28:08", "date_paid_gmt": "2017-03-22T19:28:08"}
    order = only(normalize("order.updated" if status != "cancelled" else "order.created", body, STORE)).order
    assert order.payment_state is state
    if status in ("processing", "on-hold"):
        assert order.payment_url is None


def test_date_paid_without_gmt_still_counts_as_paid() -> None:
    body = {**load_order(), "date_paid_gmt": None, "date_paid": "2017-03-22T16:28:08", "status": "processing"}
    assert only(normalize("order.updated", body, STORE)).order.payment_state is PaymentState.PAID


def test_the_orders_own_pay_link_wins_over_the_default_checkout_path() -> None:
    """A German store's checkout page is /kasse/: the REST order's payment_url says so, our /checkout/ guess would 404."""
    pay = "https://shop.example/kasse/order-pay/727/?pay_for_order=true&key=wc_order_58d2d042d1d"
    body = {**load_order(), "status": "pending", "date_paid": None, "date_paid_gmt": None}
    assert only(normalize("order.updated", {**body, "payment_url": pay}, STORE)).order.payment_url == pay
    guessed = only(normalize("order.updated", body, STORE)).order.payment_url
    assert guessed is not None and guessed.startswith("https://shop.example/checkout/order-pay/727/")
    assert only(normalize("order.updated", {**body, "payment_url": "javascript:alert(1)"}, STORE)).order.payment_url == guessed


def test_a_completed_order_that_ships_nothing_is_no_parcel_on_its_way() -> None:
    """WooCommerce completes a virtual or downloadable order at payment, and a store completes a pickup when it is
    collected: no "your order is on its way". An order with a delivery shipping line, or tracking, still is one."""
    def shipped(**change: Any) -> list:
        events = normalize("order.updated", {**load_order(), "status": "completed", **change}, STORE)
        return [e.fulfillment.shipment_status for e in events if isinstance(e, FulfillmentUpdated)]
    pickup = [{"id": 1, "method_title": "Local pickup", "method_id": "local_pickup", "total": "0.00"}]
    tracking = {"key": "_wc_shipment_tracking_items", "value": [{"tracking_provider": "delhivery", "tracking_number": "DL42"}]}
    assert shipped(shipping_lines=[]) == [] and shipped(shipping_lines=pickup) == []
    assert shipped() == [ShipmentStatus.IN_TRANSIT]  # the docs order ships flat rate
    assert shipped(shipping_lines=[], meta_data=[tracking]) == [ShipmentStatus.IN_TRANSIT]


def test_tracking_added_while_the_order_stays_in_processing_makes_it_fulfilled() -> None:
    """The parcel is on its way (the customer was told so), so a late COD Cancel goes to a person, not to the store."""
    tracking = {"key": "_wc_shipment_tracking_items", "value": [{"tracking_provider": "delhivery", "tracking_number": "DL42"}]}
    assert only(normalize("order.updated", {**cod_order(), "meta_data": [tracking]}, STORE)).order.fulfillment_state is FulfillmentState.FULFILLED
    assert only(normalize("order.updated", cod_order(), STORE)).order.fulfillment_state is FulfillmentState.UNFULFILLED
    refunded = {**cod_order(), "status": "refunded", "meta_data": [tracking]}
    assert only(normalize("order.updated", refunded, STORE)).order.fulfillment_state is FulfillmentState.UNFULFILLED


def test_completed_is_fulfilled() -> None:
    body = load_order()
    body["status"] = "completed"
    event = only(normalize("order.updated", body, STORE))
    assert isinstance(event, OrderUpdated)
    assert event.order.fulfillment_state is FulfillmentState.FULFILLED


def test_cancelled_update_is_order_cancelled() -> None:
    body = cod_order()
    body["status"] = "cancelled"
    event = only(normalize("order.updated", body, STORE))
    assert isinstance(event, OrderCancelled)
    assert event.order.payment_state is PaymentState.VOIDED


def test_an_order_moved_to_the_bin_is_cancelled() -> None:
    event = only(normalize("order.updated", {**cod_order(), "status": "trash"}, STORE))
    assert isinstance(event, OrderCancelled) and event.order.cancelled_at is not None


def test_topics() -> None:
    assert isinstance(only(normalize("order.restored", load_order(), STORE)), OrderUpdated)
    assert normalize("order.deleted", {"id": 727}, STORE) == [OrderDeleted(order_external_id="727")]
    assert normalize("coupon.updated", load_order(), STORE) == []
    assert normalize("action.woocommerce_checkout_order_processed", {"action": "x", "arg": 1}, STORE) == []


@pytest.mark.parametrize("topic", ["order.created", "order.updated", "order.restored"])
def test_checkout_drafts_are_ignored(topic: str) -> None:
    body = load_order()
    body["status"] = "checkout-draft"
    assert normalize(topic, body, STORE) == []


def test_local_dates_are_taken_as_utc_when_gmt_is_missing() -> None:
    body = load_order()
    for key in ("date_created_gmt", "date_modified_gmt"):
        del body[key]
    body["date_modified"] = None
    order = only(normalize("order.created", body, STORE)).order
    assert order.created_at == order.updated_at == datetime(2017, 3, 22, 16, 28, 2, tzinfo=timezone.utc)


def test_no_order_key_no_urls_and_plain_site_url() -> None:
    body = load_order()
    body["order_key"] = ""
    order = only(normalize("order.created", body, make_store(site_url="https://shop.example/store"))).order
    assert (order.status_url, order.payment_url) == (None, None)
    body["order_key"] = "wc_order_k"
    order = only(normalize("order.created", body, make_store(site_url="https://shop.example/store"))).order
    assert order.status_url == "https://shop.example/store/checkout/order-received/727/?key=wc_order_k"


def test_phone_country_from_billing_then_shipping_then_store() -> None:
    body = load_order()
    body["billing"].update(phone="98765 43210", country="IN")
    assert only(normalize("order.created", body, STORE)).order.customer.phone.e164 == "+919876543210"

    body["billing"]["country"] = ""
    body["shipping"]["country"] = "IN"
    customer = only(normalize("order.created", body, STORE)).order.customer
    assert (customer.country, customer.phone.e164) == ("IN", "+919876543210")

    body["shipping"]["country"] = ""
    customer = only(normalize("order.created", body, make_store(default_country="IN"))).order.customer
    assert (customer.country, customer.phone.e164) == ("IN", "+919876543210")


def test_registered_customer_and_missing_phone() -> None:
    body = load_order()
    body["customer_id"] = 12
    body["billing"]["phone"] = ""
    customer = only(normalize("order.created", body, STORE)).order.customer
    assert customer.external_id == "12"
    assert customer.phone is None


def test_customer_updated() -> None:
    body = {
        "id": 25,
        "date_modified_gmt": "2026-07-01T12:00:00",
        "email": "jane@example.com",
        "first_name": "Jane",
        "last_name": "Roe",
        "billing": {"first_name": "Jane", "phone": "020 7946 0018", "country": "GB", "email": "billing@example.com"},
        "shipping": {"country": "GB"},
    }
    event = only(normalize("customer.updated", body, STORE))
    assert isinstance(event, CustomerUpdated)
    assert event.customer.external_id == "25"
    assert event.customer.email == "jane@example.com"
    assert event.customer.phone.e164 == "+442079460018"
    assert event.customer.country == "GB"
    assert event.updated_at == datetime(2026, 7, 1, 12, tzinfo=timezone.utc)
    assert isinstance(only(normalize("customer.created", body, STORE)), CustomerUpdated)


@pytest.mark.parametrize(
    ("topic", "change", "field"),
    [
        ("order.created", {"id": None}, "id"),
        ("order.created", {"billing": "John Doe"}, "billing"),
        ("order.created", {"date_created_gmt": "22/03/2017"}, "date_created_gmt"),
        ("order.created", {"date_created_gmt": None, "date_created": None}, "date_created"),
        ("order.created", {"total": "twenty"}, "total"),
        ("order.created", {"line_items": {"id": 1}}, "line_items"),
        ("order.created", {"status": 3}, "status"),
        ("order.updated", {"customer_id": [1]}, "customer_id"),
        ("customer.updated", {"id": None}, "id"),
    ],
)
def test_malformed_body_raises_normalization_error(topic: str, change: dict, field: str) -> None:
    body = {**load_order(), **change}
    with pytest.raises(NormalizationError, match=field):
        normalize(topic, body, STORE)


def test_body_that_is_not_an_object() -> None:
    with pytest.raises(NormalizationError, match="body"):
        normalize("order.created", "webhook_id=12", STORE)  # type: ignore[arg-type]


def test_shipping_status_and_tracking_meta_become_a_fulfilment() -> None:
    tracking = {"key": "_wc_shipment_tracking_items", "value": [
        {"tracking_provider": "delhivery", "tracking_number": "DL42", "custom_tracking_link": "https://track.example/DL42"}]}
    shipped = normalize("order.updated", {**cod_order(), "status": "processing", "meta_data": [tracking]}, STORE)
    [f] = [e.fulfillment for e in shipped if isinstance(e, FulfillmentUpdated)]
    assert (f.order_external_id, f.shipment_status, f.tracking_company, f.tracking_number, f.tracking_url) == (
        "727", ShipmentStatus.IN_TRANSIT, "delhivery", "DL42", "https://track.example/DL42")
    delivered = normalize("order.updated", {**cod_order(), "status": "delivered"}, STORE)
    assert [e.fulfillment.shipment_status for e in delivered if isinstance(e, FulfillmentUpdated)] == [ShipmentStatus.DELIVERED]
    assert not any(isinstance(e, FulfillmentUpdated) for e in normalize("order.updated", cod_order(), STORE))
    for status in ("refunded", "cancelled", "failed"):  # tracking meta left on an order whose parcel is not on its way
        events = normalize("order.updated", {**cod_order(), "status": status, "meta_data": [tracking]}, STORE)
        assert not any(isinstance(e, FulfillmentUpdated) for e in events), status


def test_every_shipment_tracking_item_is_kept_and_the_first_is_shown() -> None:
    """Before: only the last item was kept, under the one fulfilment: the other parcel was never told."""
    items = [{"tracking_provider": "", "custom_tracking_provider": "Delhivery", "tracking_number": "DL1",
              "custom_tracking_link": "https://track.example/DL1"},
             {"tracking_provider": "", "custom_tracking_provider": "Delhivery", "tracking_number": "DL2",
              "custom_tracking_link": "https://track.example/DL2"}]
    body = {**cod_order(), "status": "completed", "meta_data": [{"key": "_wc_shipment_tracking_items", "value": items}]}
    [f] = [e.fulfillment for e in normalize("order.updated", body, STORE) if isinstance(e, FulfillmentUpdated)]
    assert (f.tracking_number, f.tracking_url) == ("DL1", "https://track.example/DL1")
    assert (f.tracking_numbers, f.tracking_urls) == (("DL1", "DL2"), ("https://track.example/DL1", "https://track.example/DL2"))


def _shipped(store: WooCommerceStore, item: dict[str, Any], **order: Any) -> Any:
    body = {**cod_order(), "status": "completed", **order,
            "meta_data": [{"key": "_wc_shipment_tracking_items", "value": [item]}]}
    [f] = [e.fulfillment for e in normalize("order.updated", body, store) if isinstance(e, FulfillmentUpdated)]
    return f


def test_a_predefined_providers_parcel_gets_the_link_the_store_lists_for_it() -> None:
    """A tracking item of one of Shipment Tracking's own providers stores only the provider's slug
    and the number: the link comes from the formats the store lists (``tracking_links``)."""
    store = make_store(tracking_links={"DHL US": "https://www.dhl.example/track?id=%1$s&zip=%2$s&c=%3$s",
                                       "Delhivery": "https://www.delhivery.example/track/package/%1$s"})
    f = _shipped(store, {"tracking_provider": "dhl-us", "tracking_number": "JD 014/600", "custom_tracking_link": ""},
                 shipping={**cod_order()["shipping"], "postcode": "94 103", "country": "us"})
    assert (f.tracking_company, f.tracking_number, f.tracking_url) == (
        "DHL US", "JD 014/600", "https://www.dhl.example/track?id=JD%20014%2F600&zip=94103&c=US")
    # written through the extension's REST API the item names the provider as it is listed
    f = _shipped(store, {"tracking_provider": "Delhivery", "tracking_number": "DL42"})
    assert (f.tracking_company, f.tracking_url) == ("Delhivery", "https://www.delhivery.example/track/package/DL42")
    # a provider the store lists no link for: the parcel is still on its way, with no link
    f = _shipped(store, {"tracking_provider": "usps", "tracking_number": "9400"})
    assert (f.tracking_company, f.tracking_number, f.tracking_url) == ("usps", "9400", None)
    assert _shipped(STORE, {"tracking_provider": "delhivery", "tracking_number": "DL42"}).tracking_url is None


def test_a_custom_providers_link_gets_its_placeholders_filled() -> None:
    f = _shipped(STORE, {"tracking_provider": "", "custom_tracking_provider": "Shree Couriers",
                         "custom_tracking_link": "https://shree.example/t/%1$s", "tracking_number": "SC77"})
    assert (f.tracking_company, f.tracking_url) == ("Shree Couriers", "https://shree.example/t/SC77")
    # a link format with the number's place but no number would be a dead link
    f = _shipped(STORE, {"custom_tracking_provider": "Shree Couriers", "custom_tracking_link": "https://shree.example/t/%1$s"})
    assert f.tracking_url is None
    # a custom provider's own link wins over a listed provider of the same name
    store = make_store(tracking_links={"Shree Couriers": "https://other.example/%1$s"})
    f = _shipped(store, {"custom_tracking_provider": "Shree Couriers", "custom_tracking_link": "https://shree.example/x",
                         "tracking_number": "SC1"})
    assert f.tracking_url == "https://shree.example/x"


@pytest.mark.parametrize("links, error", [({"DHL US": "dhl.example/%1$s"}, "must be an http"), ({" ": "https://x.example"}, "empty")])
def test_a_tracking_link_that_is_not_one_is_a_config_error(links: dict[str, str], error: str) -> None:
    with pytest.raises(ValueError, match=error):
        make_store(tracking_links=links)


def test_a_lines_coupon_discount_is_its_subtotal_less_its_total() -> None:
    body = load_order()
    body["line_items"][0].update(subtotal="21.98", total="19.78")
    body["line_items"][1].update(subtotal="18.00", total="18.00")
    items = normalize("order.created", body, STORE)[0].order.line_items
    assert [i.discount for i in items] == [Decimal("2.20"), Decimal("0")]


# ---- where the order was placed (created_via) ----------------------------------------------------


@pytest.mark.parametrize("created_via,channel", [
    ("checkout", "online"), ("store-api", "online"), ("rest-api", "online"), (None, "online"), ("some-plugin", "online"),
    ("admin", "admin"), ("subscription", "subscription"),
    ("pos-rest-api", "pos"), ("point-of-sale", "pos"), ("woocommerce-pos", "pos"),
])
def test_created_via_gives_the_sales_channel(created_via, channel) -> None:
    order = {**load_order(), "created_via": created_via}
    assert only(normalize("order.created", order, STORE)).order.channel == channel


# ---- shipping statuses plugins add ---------------------------------------------------------------


@pytest.mark.parametrize("status,shipment", [("dispatched", ShipmentStatus.IN_TRANSIT), ("in-transit", ShipmentStatus.IN_TRANSIT),
                                             ("out-for-delivery", ShipmentStatus.OUT_FOR_DELIVERY),
                                             ("delivered", ShipmentStatus.DELIVERED), ("rto", ShipmentStatus.ATTEMPTED_DELIVERY)])
def test_default_shipping_statuses_ship_the_order(status, shipment) -> None:
    placed, fulfilled = normalize("order.updated", {**cod_order(), "status": status}, STORE)
    assert placed.order.fulfillment_state is FulfillmentState.FULFILLED
    assert fulfilled.fulfillment.shipment_status is shipment


def test_a_store_configures_its_plugins_statuses() -> None:
    store = make_store(shipping_statuses={"wc-Handed-To-Courier": "shipped", "completed": "delivered"})
    assert store.shipping_statuses["dispatched"] == "shipped"  # the defaults stay
    placed, fulfilled = normalize("order.updated", {**cod_order(), "status": "handed-to-courier"}, store)
    assert placed.order.fulfillment_state is FulfillmentState.FULFILLED
    assert fulfilled.fulfillment.shipment_status is ShipmentStatus.IN_TRANSIT
    # a COD store that completes the order when the cash is in: delivered, and paid
    placed, fulfilled = normalize("order.updated", {**cod_order(), "status": "completed"}, store)
    assert fulfilled.fulfillment.shipment_status is ShipmentStatus.DELIVERED and placed.order.payment_state is PaymentState.PAID


@pytest.mark.parametrize("statuses,words", [({"dispatched": "shiped"}, "must be one of"), ({"processing": "shipped"}, "not shipped"),
                                            ({"far too long a status name": "shipped"}, "not a WooCommerce status")])
def test_a_typo_in_shipping_statuses_is_a_clear_error(statuses, words) -> None:
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match=words):
        make_store(shipping_statuses=statuses)


# ---- the order-status link follows the store's checkout page ---------------------------------------


def test_status_url_is_on_the_checkout_page_the_pay_link_names() -> None:
    order = {**load_order(), "status": "pending", "date_paid": None, "date_paid_gmt": None, "order_key": "wc_order_k1",
             "payment_url": "https://shop.example/kasse/order-pay/727/?pay_for_order=true&key=wc_order_k1"}
    o = only(normalize("order.created", order, STORE)).order
    assert o.status_url == "https://shop.example/kasse/order-received/727/?key=wc_order_k1"
    assert o.payment_url == "https://shop.example/kasse/order-pay/727/?pay_for_order=true&key=wc_order_k1"


def test_status_url_with_plain_permalinks() -> None:
    order = {**load_order(), "order_key": "wc_order_k1",
             "payment_url": "https://shop.example/?page_id=7&order-pay=727&pay_for_order=true&key=wc_order_k1"}
    o = only(normalize("order.created", order, STORE)).order
    assert o.status_url == "https://shop.example/?page_id=7&order-received=727&key=wc_order_k1"


def test_status_url_on_the_configured_checkout_page_without_a_pay_link() -> None:
    store = make_store(checkout_url="https://shop.example/finalizar-compra/")
    order = {**load_order(), "order_key": "wc_order_k1"}
    order.pop("payment_url", None)
    o = only(normalize("order.created", order, store)).order
    assert o.status_url == "https://shop.example/finalizar-compra/order-received/727/?key=wc_order_k1"
    assert only(normalize("order.created", order, STORE)).order.status_url == \
        "https://shop.example/checkout/order-received/727/?key=wc_order_k1"  # nothing known: the default page


# ---- each phone with its own address's country --------------------------------------------------------


def test_a_shipping_phone_is_read_with_the_shipping_country() -> None:
    order = load_order()
    order["billing"].update(phone="", country="IN")
    order["shipping"].update(phone="050 123 4567", country="AE")
    assert only(normalize("order.created", order, STORE)).order.customer.phone.e164 == "+971501234567"
    order["billing"].update(phone="098765 43210")  # billing's own, read with billing's country
    assert only(normalize("order.created", order, STORE)).order.customer.phone.e164 == "+919876543210"


# ---- COD plugins' own gateways ---------------------------------------------------------------------


@pytest.mark.parametrize("method,title,cod", [
    ("cod", "Cash on delivery", True),
    ("cod_advance", "Partial COD (pay shipping now)", True),  # a partial-COD plugin's gateway
    ("cash_on_delivery", "Pay at your door", True),
    ("wc_gateway_offline_2", "Cash on Delivery", True),  # a cloned offline gateway, titled by the merchant
    ("cheque", "Check payments", False), ("bacs", "Direct bank transfer", False), ("razorpay", "Razorpay", False),
])
def test_cod_gateways_by_id_or_words(method, title, cod) -> None:
    order = {**cod_order(), "payment_method": method, "payment_method_title": title}
    assert only(normalize("order.created", order, STORE)).order.is_cod is cod


def test_names_wordpress_keeps_html_escaped_read_as_the_customer_sees_them() -> None:
    """WordPress stores titles HTML-escaped and the REST API returns them so: a reminder or confirmation must
    say "Salt & Pepper Scrub", not "Salt &amp; Pepper Scrub"; a name with a bare ampersand stays as written."""
    order = load_order()
    order["line_items"][0]["name"] = "Salt &amp; Pepper Scrub &#8211; 200g"
    order["line_items"][1]["name"] = "Tom & Jerry soap"
    line, other = only(normalize("order.created", order, STORE)).order.line_items[:2]
    assert (line.title, other.title) == ("Salt & Pepper Scrub \u2013 200g", "Tom & Jerry soap")
    product = normalize("product.updated", {"id": 7, "name": "Salt &amp; Pepper Scrub", "status": "publish"}, STORE)
    assert [e.title for e in product] == ["Salt & Pepper Scrub"]
