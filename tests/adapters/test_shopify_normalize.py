"""Shopify adapter: every public sample payload through ``normalize``, plus the edge cases
the core relies on (COD detection, phone choice, unknown values, malformed bodies)."""

from __future__ import annotations

import copy
import json
from datetime import datetime, timezone
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from adapters.shopify.normalize import normalize
from connector.config import ShopifyStore
from connector.errors import NormalizationError
from connector.events import (
    AppUninstalled,
    CheckoutUpdated,
    ComplianceRequested,
    ConsentCategory,
    ConsentChanged,
    ConsentState,
    CustomerUpdated,
    Delivery,
    FulfillmentState,
    FulfillmentUpdated,
    OrderCancelled,
    OrderFulfilled,
    OrderPaid,
    OrderPlaced,
    OrderUpdated,
    PaymentState,
    SalesChannel,
    ShipmentStatus,
    dump_events,
    load_events,
)

FIXTURES = Path(__file__).resolve().parents[3] / "shared" / "fixtures" / "public" / "shopify"
NEW_YEAR_UTC = datetime(2022, 1, 1, tzinfo=timezone.utc)  # the samples' 2021-12-31T19:00:00-05:00


def load(name: str) -> dict[str, Any]:
    """A sample as the store would receive it: the reference's ``{shop}`` placeholder is the shop's own name."""
    return json.loads((FIXTURES / f"{name}.sample.json").read_text().replace("{shop}.myshopify.com", "demo.myshopify.com"))


def make_store(**overrides: Any) -> ShopifyStore:
    data = {"key": "demo", "platform": "shopify", "webhook_secret": "s3cret", "shop_domain": "demo.myshopify.com"}
    return ShopifyStore.model_validate({**data, **overrides})


STORE = make_store()


def cod_order() -> dict[str, Any]:
    """The public sample turned into a fresh COD order by exactly the fields in platform-facts A4."""
    order = load("orders_create")
    order.update(
        financial_status="pending",
        payment_gateway_names=["Cash on Delivery (COD)"],
        processing_method="manual",
        gateway="Cash on Delivery (COD)",
        cancelled_at=None,
        cancel_reason=None,
        test=False,
    )
    return order


def only(events: list) -> Any:
    assert len(events) == 1, events
    return events[0]


# ---- the fixtures -----------------------------------------------------------------------

FIXTURE_TOPICS = [
    ("orders_create", "orders/create", OrderPlaced),
    ("checkouts_create", "checkouts/create", CheckoutUpdated),
    ("fulfillments_update", "fulfillments/update", FulfillmentUpdated),
    ("customers_data_request", "customers/data_request", ComplianceRequested),
    ("customers_redact", "customers/redact", ComplianceRequested),
    ("shop_redact", "shop/redact", ComplianceRequested),
    ("app_uninstalled", "app/uninstalled", AppUninstalled),
    ("customers_marketing_consent_update", "customers_marketing_consent/update", ConsentChanged),
    ("customers_whats_app_marketing_consent_update", "customers_whats_app_marketing_consent/update", ConsentChanged),
]


def test_every_body_fixture_is_covered() -> None:
    covered = {name for name, _, _ in FIXTURE_TOPICS} | {"webhook_headers"}  # headers: not a body
    assert {p.name.removesuffix(".sample.json") for p in FIXTURES.glob("*.json")} == covered


@pytest.mark.parametrize(("name", "topic", "event_type"), FIXTURE_TOPICS)
def test_fixture_normalizes_and_round_trips_through_the_inbox_json(name: str, topic: str, event_type: type) -> None:
    events = normalize(topic, load(name), STORE)
    assert [type(e) for e in events] == [event_type]
    assert load_events(json.loads(json.dumps(dump_events(events)))) == events


def test_sample_order() -> None:
    order = only(normalize("orders/create", load("orders_create"), STORE)).order
    assert order.external_id == "820982911946154508"
    assert order.name == "#9999"
    assert order.created_at == order.updated_at == order.cancelled_at == NEW_YEAR_UTC
    assert order.created_at.tzinfo is timezone.utc
    assert order.payment_state is PaymentState.VOIDED
    assert order.platform_status == "voided"
    assert order.fulfillment_state is FulfillmentState.UNFULFILLED
    assert order.is_cod is False
    assert order.gateway_names == ("visa", "bogus")
    assert order.total == Decimal("414.95")  # current_total_price wins over total_price 404.95
    assert order.currency == "USD"
    assert order.tags == ("tag1", "tag2")
    assert order.test is True
    assert order.checkout_token is None
    assert order.status_url == "https://jsmith.myshopify.com/548380009/orders/123456abcd/authenticate?key=abcdefg"
    assert order.payment_url == order.status_url  # Shopify has no separate pay link: the status page takes payment


def test_sample_order_customer_and_phone() -> None:
    customer = only(normalize("orders/create", load("orders_create"), STORE)).order.customer
    assert customer.external_id == "115310627314723954"
    assert (customer.first_name, customer.last_name) == ("John", "Smith")
    assert customer.email == "jon@example.com"  # order.email before customer.email
    assert customer.country == "US"  # shipping_address.country_code
    assert customer.locale == "en"
    # order.phone and customer.phone are null: the shipping phone is next, and it is free text.
    assert customer.phone is not None
    assert customer.phone.raw == "555-555-SHIP"
    assert customer.phone.e164 is None  # kept for staff, never messaged


def test_sample_order_line_items() -> None:
    items = only(normalize("orders/create", load("orders_create"), STORE)).order.line_items
    assert len(items) == 5
    first = items[0]
    assert first.external_id == "487817672276298554"
    assert first.product_id == "788032119674292922"
    assert first.variant_id is None  # every variant_id in the sample is null
    assert (first.sku, first.title, first.quantity, first.price) == ("SKU2006-001", "Aviator sunglasses", 1, Decimal("89.99"))
    assert items[1].product_id is None
    assert sum(i.price * i.quantity for i in items) == Decimal("414.95")


@pytest.mark.parametrize(
    ("topic", "event_type"),
    [
        ("orders/create", OrderPlaced),
        ("orders/updated", OrderUpdated),
        ("orders/paid", OrderPaid),
        ("orders/cancelled", OrderCancelled),
        ("orders/fulfilled", OrderFulfilled),
        ("orders/partially_fulfilled", OrderFulfilled),
    ],
)
def test_order_topics(topic: str, event_type: type) -> None:
    event = only(normalize(topic, load("orders_create"), STORE))
    assert type(event) is event_type
    assert event.order.name == "#9999"


def test_cod_variant_of_the_sample() -> None:
    order = only(normalize("orders/create", cod_order(), STORE)).order
    assert order.is_cod is True
    assert order.payment_state is PaymentState.PENDING
    assert order.platform_status == "pending"
    assert order.cancelled_at is None
    assert order.test is False
    assert order.gateway_names == ("Cash on Delivery (COD)",)  # `gateway` repeats it: not added twice


def test_cod_detected_from_the_deprecated_gateway_field_alone() -> None:
    body = cod_order()
    body["payment_gateway_names"] = []
    order = only(normalize("orders/create", body, STORE)).order
    assert order.is_cod is True
    assert order.gateway_names == ("Cash on Delivery (COD)",)


@pytest.mark.parametrize("name", ["cash_on_delivery", "  COD ", "Cash on Delivery"])
def test_cod_default_names(name: str) -> None:
    body = cod_order()
    body["payment_gateway_names"] = ["gift_card", name]
    body["gateway"] = None
    assert only(normalize("orders/create", body, STORE)).order.is_cod is True


def test_store_cod_gateways_name_a_gateway_whose_words_do_not_say_cod() -> None:
    store = make_store(cod_gateways=["Nakad Bhugtan", "Pay at door"])  # exact names (case-insensitive), as before
    custom = cod_order()
    custom["payment_gateway_names"] = ["pay at door "]
    custom["gateway"] = None
    assert only(normalize("orders/create", custom, store)).order.is_cod is True
    assert only(normalize("orders/create", custom, STORE)).order.is_cod is False  # not a default name, no COD words
    # the configured names replace the default list; a gateway whose own words say COD is COD besides
    assert only(normalize("orders/create", cod_order(), store)).order.is_cod is True


def with_gateways(*names: str) -> dict[str, Any]:
    body = cod_order()
    body.update(payment_gateway_names=list(names), gateway=None)
    return body


RENAMED_COD = ["Cash on Delivery - Pay at door", "COD - Cash on Delivery", "Pay on Delivery", "Payment on delivery",
               "Collect on Delivery", "cash-on-delivery", "C.O.D.", "CashOnDelivery", "COD_fee_app", "Partial COD (₹100 advance)"]
NOT_COD = ["Barcode Pay", "Codapay", "Encoded Payments", "bogus", "Razorpay", "Cash", "Delivery partner wallet", "Cash on pickup",
           "shopify_payments", "Pay later"]


@pytest.mark.parametrize("name", RENAMED_COD)
def test_a_cod_method_the_merchant_renamed_is_still_cod(name: str) -> None:
    """Renamed manual methods were missed by the exact default names: the customer got a prepaid "order
    confirmed" and a "complete your payment" reminder instead of the Confirm/Cancel question."""
    assert only(normalize("orders/create", with_gateways("gift_card", name), STORE)).order.is_cod is True


@pytest.mark.parametrize("name", NOT_COD)
def test_a_gateway_with_cod_letters_inside_a_word_is_not_cod(name: str) -> None:
    assert only(normalize("orders/create", with_gateways(name), STORE)).order.is_cod is False


@pytest.mark.parametrize(("name", "cod"), [("COD - Cash on Delivery", True), ("Pay on Delivery", True), ("Barcode Pay", False)])
def test_the_reconciled_order_reads_cod_the_same_way(name: str, cod: bool) -> None:
    from adapters.shopify.graphql import normalize_node

    node = {"id": "gid://shopify/Order/77", "name": "#1077", "createdAt": "2026-11-20T06:00:00Z", "updatedAt": "2026-11-20T06:00:00Z",
            "displayFinancialStatus": "PENDING", "paymentGatewayNames": [name], "currencyCode": "INR",
            "currentTotalPriceSet": {"shopMoney": {"amount": "1299.00", "currencyCode": "INR"}}}
    assert only(normalize_node(node, STORE)).order.is_cod is cod


@pytest.mark.parametrize(
    ("financial_status", "state"),
    [
        ("paid", PaymentState.PAID),
        ("authorized", PaymentState.AUTHORIZED),
        ("partially_paid", PaymentState.PARTIALLY_PAID),
        ("partially_refunded", PaymentState.PARTIALLY_REFUNDED),
        ("refunded", PaymentState.REFUNDED),
        ("expired", PaymentState.OTHER),
        ("something_new", PaymentState.OTHER),
        (None, PaymentState.OTHER),
    ],
)
def test_payment_state(financial_status: str | None, state: PaymentState) -> None:
    body = load("orders_create")
    body["financial_status"] = financial_status
    assert only(normalize("orders/updated", body, STORE)).order.payment_state is state


@pytest.mark.parametrize(
    ("status", "state"),
    [
        (None, FulfillmentState.UNFULFILLED),
        ("partial", FulfillmentState.PARTIAL),
        ("fulfilled", FulfillmentState.FULFILLED),
        ("restocked", FulfillmentState.OTHER),
    ],
)
def test_fulfillment_state(status: str | None, state: FulfillmentState) -> None:
    body = load("orders_create")
    body["fulfillment_status"] = status
    assert only(normalize("orders/updated", body, STORE)).order.fulfillment_state is state


def test_total_falls_back_to_total_price() -> None:
    body = load("orders_create")
    del body["current_total_price"]
    assert only(normalize("orders/create", body, STORE)).order.total == Decimal("404.95")


def test_order_phone_comes_first_and_uses_the_shipping_country() -> None:
    body = load("orders_create")
    body["phone"] = "098765 43210"
    body["shipping_address"]["country_code"] = "IN"
    customer = only(normalize("orders/create", body, STORE)).order.customer
    assert customer.phone is not None and customer.phone.e164 == "+919876543210"
    assert customer.country == "IN"


def test_phone_country_falls_back_to_billing_then_the_store() -> None:
    body = load("orders_create")
    body["phone"] = "98765 43210"
    body["shipping_address"] = None
    body["billing_address"]["country_code"] = "IN"
    customer = only(normalize("orders/create", body, make_store(default_country="GB"))).order.customer
    assert (customer.country, customer.phone.e164) == ("IN", "+919876543210")

    body["billing_address"] = None
    customer = only(normalize("orders/create", body, make_store(default_country="IN"))).order.customer
    assert (customer.country, customer.phone.e164) == ("IN", "+919876543210")


def test_customer_default_address_phone_is_the_last_resort() -> None:
    body = load("orders_create")
    body["shipping_address"]["phone"] = None
    body["billing_address"]["phone"] = " "
    customer = only(normalize("orders/create", body, STORE)).order.customer
    assert customer.phone is not None and customer.phone.raw == "123-123-1234"


def test_order_without_customer_or_phone() -> None:
    body = load("orders_create")
    body.update(customer=None, shipping_address=None, billing_address=None, email=None, contact_email=None)
    customer = only(normalize("orders/create", body, STORE)).order.customer
    assert customer.external_id is None and customer.phone is None and customer.email is None
    assert customer.country == "US"  # the store default


def test_tags_empty_and_unknown_topic() -> None:
    body = load("orders_create")
    body["tags"] = ""
    assert only(normalize("orders/create", body, STORE)).order.tags == ()
    assert normalize("inventory_levels/update", body, STORE) == []
    assert normalize("checkouts/delete", {"id": 123}, STORE) == []


# ---- checkouts, fulfillments -------------------------------------------------------------


def test_sample_checkout() -> None:
    checkout = only(normalize("checkouts/create", load("checkouts_create"), STORE)).checkout
    assert checkout.token == "123123123"
    assert checkout.recovery_url == "https://checkout.local/548380009/checkouts/123123123/recover?key=example-secret-token"
    assert checkout.completed_at is None
    assert checkout.created_at == checkout.updated_at == NEW_YEAR_UTC
    assert (checkout.total, checkout.currency) == (Decimal("421.88"), "USD")
    assert checkout.accepts_marketing is False
    assert len(checkout.line_items) == 2
    assert checkout.line_items[0].variant_id == "808950810"
    assert checkout.line_items[0].external_id is None  # checkout lines carry a `key`, not an id
    assert checkout.customer.external_id == "603851970716743426"
    assert checkout.customer.email == "example@email.com"
    assert checkout.customer.phone.raw == "555-555-SHIP"  # phone/sms_marketing_phone/customer.phone are null


def test_checkout_sms_marketing_phone_and_consent() -> None:
    body = load("checkouts_create")
    body.update(buyer_accepts_sms_marketing=True, sms_marketing_phone="+16505551234")
    checkout = only(normalize("checkouts/update", body, STORE)).checkout
    assert checkout.accepts_marketing is True
    assert checkout.customer.phone.e164 == "+16505551234"
    assert checkout.marketing_phone.e164 == "+16505551234"


def test_the_sms_opt_in_names_its_own_number_beside_the_checkout_phone() -> None:
    """The checkout's phone is the contact; the opt-in was typed with another number: the event says
    which, so consent goes to that number only."""
    body = load("checkouts_create")
    body.update(phone="+14155550100", buyer_accepts_sms_marketing=True, sms_marketing_phone="(415) 555-0199")  # a US address
    checkout = only(normalize("checkouts/update", body, STORE)).checkout
    assert (checkout.customer.phone.e164, checkout.marketing_phone.e164, checkout.accepts_marketing) == ("+14155550100", "+14155550199", True)
    assert only(normalize("checkouts/create", load("checkouts_create"), STORE)).checkout.marketing_phone is None  # the sample names none


def test_an_email_marketing_tick_alone_is_no_whatsapp_marketing_consent() -> None:
    """``buyer_accepts_marketing`` is the checkout's email box: a shopper who ticked only that
    must not get WhatsApp cart reminders (platform-facts A5, C7)."""
    body = load("checkouts_create")
    body.update(buyer_accepts_marketing=True, buyer_accepts_sms_marketing=False, phone="+919876543210")
    checkout = only(normalize("checkouts/update", body, STORE)).checkout
    assert checkout.accepts_marketing is False


def test_sample_fulfillment() -> None:
    f = only(normalize("fulfillments/update", load("fulfillments_update"), STORE)).fulfillment
    assert (f.external_id, f.order_external_id, f.status) == ("123456", "820982911946154508", "pending")
    assert f.shipment_status is ShipmentStatus.NONE
    assert f.tracking_company == "UPS"
    assert f.tracking_number == "1z827wk74630"
    assert f.tracking_url == "https://www.ups.com/WebTracking?loc=en_US&requester=ST&trackNums=1z827wk74630"
    assert f.created_at == NEW_YEAR_UTC


@pytest.mark.parametrize(
    ("value", "status"),
    [
        ("out_for_delivery", ShipmentStatus.OUT_FOR_DELIVERY),
        ("delivered", ShipmentStatus.DELIVERED),
        ("carrier_picked_up", ShipmentStatus.CARRIER_PICKED_UP),
        # in Shopify's unstable API so far: read for what they mean (a failed delivery), not "other"
        ("returning_to_sender", ShipmentStatus.RETURNING_TO_SENDER),
        ("buyer_action_required", ShipmentStatus.BUYER_ACTION_REQUIRED),
        ("ready_for_recipient_pickup", ShipmentStatus.READY_FOR_RECIPIENT_PICKUP),
        ("parcel_teleported", ShipmentStatus.OTHER),  # a value Shopify may add later
    ],
)
def test_shipment_status(value: str, status: ShipmentStatus) -> None:
    body = load("fulfillments_update")
    body["shipment_status"] = value
    assert only(normalize("fulfillments/create", body, STORE)).fulfillment.shipment_status is status


def test_tracking_lists_are_used_when_the_single_fields_are_empty() -> None:
    body = load("fulfillments_update")
    body.update(tracking_number=None, tracking_url=None, tracking_numbers=["", "T2"], tracking_urls=["https://t/2"])
    f = only(normalize("fulfillments/update", body, STORE)).fulfillment
    assert (f.tracking_number, f.tracking_url) == ("T2", "https://t/2")


def test_every_tracking_number_of_a_multi_package_fulfilment_is_kept() -> None:
    """Before: only the first number was kept, so a second package's number was never heard of."""
    body = load("fulfillments_update")
    body.update(tracking_number="T1", tracking_url="https://t/1", tracking_numbers=["T1", "T2"], tracking_urls=["https://t/1", "https://t/2"])
    f = only(normalize("fulfillments/update", body, STORE)).fulfillment
    assert (f.tracking_number, f.tracking_url) == ("T1", "https://t/1")  # what a template shows
    assert (f.tracking_numbers, f.tracking_urls) == (("T1", "T2"), ("https://t/1", "https://t/2"))


def test_a_fulfilment_of_lines_that_need_no_shipping_is_read_as_shipping_nothing() -> None:
    """A gift card or a digital line is fulfilled in a fulfilment of its own that no carrier reports on:
    the delivery journey must know it is no parcel. One physical line among them makes it one."""
    body = load("fulfillments_update")
    assert only(normalize("fulfillments/update", body, STORE)).fulfillment.ships is True  # the sample's lines all ship
    for li in body["line_items"]:
        li["requires_shipping"] = False
    assert only(normalize("fulfillments/update", body, STORE)).fulfillment.ships is False
    body["line_items"][0].pop("requires_shipping")  # not said: it ships, as an order's line
    assert only(normalize("fulfillments/update", body, STORE)).fulfillment.ships is True


def test_the_reconciled_fulfilment_reads_whether_it_ships() -> None:
    from adapters.shopify.graphql import normalize_node

    gift = {"id": "gid://shopify/Fulfillment/9", "status": "SUCCESS", "displayStatus": "FULFILLED", "createdAt": "2026-11-20T06:00:00Z",
            "updatedAt": "2026-11-20T06:00:00Z", "requiresShipping": False, "trackingInfo": []}
    node = {"id": "gid://shopify/Order/77", "name": "#1077", "createdAt": "2026-11-20T06:00:00Z", "updatedAt": "2026-11-20T06:00:00Z",
            "displayFinancialStatus": "PAID", "paymentGatewayNames": ["shopify_payments"], "currencyCode": "INR",
            "currentTotalPriceSet": {"shopMoney": {"amount": "1299.00", "currencyCode": "INR"}},
            "lineItems": {"nodes": [{"id": "gid://shopify/LineItem/1", "quantity": 1, "title": "Tea", "requiresShipping": True}]},
            "fulfillments": [gift, {**gift, "id": "gid://shopify/Fulfillment/10", "requiresShipping": True}]}
    read = [e.fulfillment.ships for e in normalize_node(node, STORE) if isinstance(e, FulfillmentUpdated)]
    assert read == [False, True]


# ---- customers, consent, app, compliance -------------------------------------------------


def customer_body(**extra: Any) -> dict[str, Any]:
    body = {
        "id": 706405506930370084,
        "email": "bob@example.com",
        "first_name": "Bob",
        "last_name": "Norman",
        "phone": "+13125551212",
        "updated_at": "2026-07-01T10:00:00+05:30",
        "default_address": {"country_code": "US", "phone": "555-625-1199"},
    }
    return {**body, **extra}


def test_customer_update_without_consent() -> None:
    event = only(normalize("customers/update", customer_body(), STORE))
    assert isinstance(event, CustomerUpdated)
    assert event.customer.external_id == "706405506930370084"
    assert event.customer.phone.e164 == "+13125551212"
    assert event.updated_at == datetime(2026, 7, 1, 4, 30, tzinfo=timezone.utc)


@pytest.mark.parametrize(
    ("state", "expected"),
    [
        ("subscribed", ConsentState.GRANTED),
        ("unsubscribed", ConsentState.REVOKED),
        ("redacted", ConsentState.REVOKED),
        ("pending", ConsentState.PENDING),
        ("not_subscribed", ConsentState.UNKNOWN),
        (None, ConsentState.UNKNOWN),
    ],
)
def test_customer_update_with_sms_consent(state: str | None, expected: ConsentState) -> None:
    consent = {"state": state, "opt_in_level": "single_opt_in", "consent_updated_at": "2026-07-01T00:00:00Z"}
    updated, changed = normalize("customers/update", customer_body(sms_marketing_consent=consent), STORE)
    assert isinstance(updated, CustomerUpdated)
    assert isinstance(changed, ConsentChanged)
    assert changed.state is expected
    assert changed.category is ConsentCategory.MARKETING
    assert changed.source == "shopify_sms_marketing"
    assert changed.customer_external_id == "706405506930370084"
    assert changed.phone.e164 == "+13125551212"
    assert changed.occurred_at == datetime(2026, 7, 1, tzinfo=timezone.utc)


def test_sample_consent_topics_have_null_state() -> None:
    sms = only(normalize("customers_marketing_consent/update", load("customers_marketing_consent_update"), STORE))
    wa = only(
        normalize("customers_whats_app_marketing_consent/update", load("customers_whats_app_marketing_consent_update"), STORE)
    )
    assert (sms.source, sms.state, sms.phone) == ("shopify_sms_marketing", ConsentState.UNKNOWN, None)
    assert (wa.source, wa.state, wa.phone) == ("shopify_whatsapp_marketing", ConsentState.UNKNOWN, None)
    assert sms.customer_external_id == wa.customer_external_id == "706405506930370084"


def test_whatsapp_consent_granted_with_phone() -> None:
    body = load("customers_whats_app_marketing_consent_update")
    body["phone_number"] = "+919876543210"
    body["whats_app_marketing_consent"].update(state="SUBSCRIBED", updated_at="2026-07-02T08:00:00Z")
    event = only(normalize("customers_whats_app_marketing_consent/update", body, STORE))
    assert event.state is ConsentState.GRANTED
    assert event.phone.e164 == "+919876543210"
    assert event.occurred_at == datetime(2026, 7, 2, 8, tzinfo=timezone.utc)


def test_app_uninstalled() -> None:
    # The sample's domain and myshopify_domain are both null: the store's own domain stands in.
    assert only(normalize("app/uninstalled", load("app_uninstalled"), STORE)).shop == "demo.myshopify.com"
    body = load("app_uninstalled")
    body.update(domain="toys.example", myshopify_domain="super-toys.myshopify.com")
    assert only(normalize("app/uninstalled", body, STORE)).shop == "super-toys.myshopify.com"
    body["myshopify_domain"] = None
    assert only(normalize("app/uninstalled", body, STORE)).shop == "toys.example"


@pytest.mark.parametrize(
    ("name", "topic", "kind"),
    [
        ("customers_data_request", "customers/data_request", "customer_data_request"),
        ("customers_redact", "customers/redact", "customer_redact"),
    ],
)
def test_customer_compliance(name: str, topic: str, kind: str) -> None:
    event = only(normalize(topic, load(name), STORE))
    assert event.kind == kind
    assert event.customer.external_id == "191167"
    assert event.customer.email == "john@example.com"
    assert event.customer.phone.raw == "555-625-1199"
    assert event.order_external_ids == ("299938", "280263", "220458")


def test_shop_redact() -> None:
    event = only(normalize("shop/redact", load("shop_redact"), STORE))
    assert (event.kind, event.customer, event.order_external_ids) == ("shop_redact", None, ())


# ---- malformed bodies ----------------------------------------------------------------------


def broken(name: str, mutate: Any) -> dict[str, Any]:
    body = copy.deepcopy(load(name))
    mutate(body)
    return body


@pytest.mark.parametrize(
    ("topic", "body", "field"),
    [
        ("orders/create", broken("orders_create", lambda b: b.pop("id")), "id"),
        ("orders/create", broken("orders_create", lambda b: b.update(customer="John")), "customer"),
        ("orders/create", broken("orders_create", lambda b: b.update(created_at="yesterday")), "created_at"),
        ("orders/create", broken("orders_create", lambda b: b.update(created_at=None)), "created_at"),
        ("orders/create", broken("orders_create", lambda b: b.update(current_total_price="abc")), "current_total_price"),
        ("orders/create", broken("orders_create", lambda b: b.update(line_items="none")), "line_items"),
        ("orders/create", broken("orders_create", lambda b: b["line_items"].append(7)), "line_items[5]"),
        ("orders/create", broken("orders_create", lambda b: b["line_items"][0].update(current_quantity="x")), "current_quantity"),
        ("orders/create", broken("orders_create", lambda b: b["line_items"][0].update(current_quantity=None, quantity="x")), "quantity"),
        ("orders/create", broken("orders_create", lambda b: b.update(shipping_address=[])), "shipping_address"),
        ("orders/create", broken("orders_create", lambda b: b.update(test="yes")), "test"),
        ("orders/create", broken("orders_create", lambda b: b.update(tags=5)), "tags"),
        ("orders/create", broken("orders_create", lambda b: b.update(payment_gateway_names="visa")), "payment_gateway_names"),
        ("orders/create", broken("orders_create", lambda b: b.update(currency=None)), "currency"),
        ("checkouts/update", broken("checkouts_create", lambda b: b.pop("token")), "token"),
        ("fulfillments/update", broken("fulfillments_update", lambda b: b.pop("order_id")), "order_id"),
        ("fulfillments/update", broken("fulfillments_update", lambda b: b.update(tracking_url=None, tracking_urls="u")), "tracking_urls"),
        ("fulfillments/update", broken("fulfillments_update", lambda b: b["line_items"][0].update(requires_shipping="no")),
         "requires_shipping"),
        ("customers/update", customer_body(id=None), "id"),
        ("customers/update", customer_body(sms_marketing_consent="subscribed"), "sms_marketing_consent"),
        (
            "customers_whats_app_marketing_consent/update",
            broken("customers_whats_app_marketing_consent_update", lambda b: b.pop("customer_id")),
            "customer_id",
        ),
        ("customers/redact", broken("customers_redact", lambda b: b.update(orders_to_redact=[{"id": 1}])), "orders_to_redact[0]"),
        ("customers/data_request", broken("customers_data_request", lambda b: b.update(customer=191167)), "customer"),
    ],
)
def test_malformed_body_raises_normalization_error_naming_the_field(topic: str, body: dict, field: str) -> None:
    with pytest.raises(NormalizationError, match=field.replace("[", r"\[").replace("]", r"\]")):
        normalize(topic, body, STORE)


@pytest.mark.parametrize("body", [[], "order", None, 42])
def test_body_that_is_not_an_object(body: Any) -> None:
    with pytest.raises(NormalizationError, match="body"):
        normalize("orders/create", body, STORE)


# ---- payment terms (B2B / draft orders on Net 30, a fixed date, due on fulfilment) ----------------------


def on_terms(terms: Any) -> Any:
    body = load("orders_create")
    body.update(financial_status="pending", cancelled_at=None, created_at="2026-11-20T06:00:00Z", payment_terms=terms)
    return only(normalize("orders/create", body, STORE)).order


NET_30 = {"payment_terms_name": "Net 30", "payment_terms_type": "net", "due_in_days": 30,
          "payment_schedules": [{"amount": "1299.00", "issued_at": "2026-11-20T06:00:00Z", "due_at": "2026-12-20T06:00:00Z",
                                 "completed_at": None}]}


def test_an_order_on_net_30_carries_when_its_payment_is_due() -> None:
    order = on_terms(NET_30)
    assert (order.payment_terms, order.payment_due_at) == ("net", datetime(2026, 12, 20, 6, 0, tzinfo=timezone.utc))


@pytest.mark.parametrize(("terms", "kind", "due"), [
    (None, None, None),  # the sample: no terms, due at once
    ({**NET_30, "payment_terms_type": "NET", "payment_schedules": [{"issued_at": "2026-11-21T00:00:00Z", "due_at": None}]},
     "net", datetime(2026, 12, 21, tzinfo=timezone.utc)),  # no due_at: issued + due_in_days
    ({**NET_30, "payment_schedules": []}, "net", datetime(2026, 12, 20, 6, 0, tzinfo=timezone.utc)),  # nor a schedule: placed + 30 days
    ({"payment_terms_type": "fixed", "payment_schedules": [
        {"due_at": "2026-12-01T00:00:00Z", "completed_at": "2026-11-30T10:00:00Z"},  # paid already: the next one counts
        {"due_at": "2027-01-01T00:00:00Z", "completed_at": ""}]}, "fixed", datetime(2027, 1, 1, tzinfo=timezone.utc)),
    ({"payment_terms_type": "fulfillment", "due_in_days": None, "payment_schedules": []}, "fulfillment", None),  # no date until fulfilled
])
def test_payment_terms_shapes(terms: Any, kind: str | None, due: datetime | None) -> None:
    order = on_terms(terms)
    assert (order.payment_terms, order.payment_due_at) == (kind, due)


def test_malformed_payment_terms_name_the_field() -> None:
    with pytest.raises(NormalizationError, match="payment_terms.due_in_days"):
        on_terms({**NET_30, "payment_schedules": [], "due_in_days": "thirty"})


# ---- where the order was placed and how it reaches the customer ------------------------------

PICKUP_LINE = {"id": 7001, "code": "Main Street Store", "title": "Main Street Store", "source": "shopify", "price": "0.00",
               "carrier_identifier": None, "delivery_category": None, "is_removed": False}


def sold(source_name: str = "web", shipping_lines: list | None = None, requires_shipping: bool | None = True) -> Any:
    """The sample order (paid, open) placed through ``source_name`` with these shipping lines."""
    body = load("orders_create")
    body.update(source_name=source_name, financial_status="paid", cancelled_at=None, test=False)
    if shipping_lines is not None:
        body["shipping_lines"] = shipping_lines
    for li in body["line_items"]:
        li["requires_shipping"] = requires_shipping
    return only(normalize("orders/create", body, STORE)).order


PICKUP_STORE = make_store(pickup_lines=[" main street STORE "])  # as a store owner may type it


def test_the_sample_web_order_ships() -> None:
    order = only(normalize("orders/create", load("orders_create"), STORE)).order
    assert (order.channel, order.delivery) == (SalesChannel.ONLINE, Delivery.SHIPPING)


def test_a_sale_at_the_till_is_a_pos_order_with_nothing_to_ship() -> None:
    """A POS sale (``source_name`` pos, no shipping line): the customer left the shop with it, so the
    journeys must not thank them for an order or tell them it has shipped."""
    order = sold("pos", shipping_lines=[])
    assert (order.channel, order.delivery) == (SalesChannel.POS, Delivery.NONE)


def test_a_pos_order_shipped_to_the_customer_still_ships() -> None:
    order = sold("pos")  # the sample's shipping line: "ship to customer" from the till
    assert (order.channel, order.delivery) == (SalesChannel.POS, Delivery.SHIPPING)


def test_a_shipping_line_named_as_a_pickup_location_is_a_pickup() -> None:
    body = load("orders_create")
    body["shipping_lines"] = [PICKUP_LINE]
    assert only(normalize("orders/create", body, PICKUP_STORE)).order.delivery is Delivery.PICKUP
    # the webhook marks a pickup no other way: a store that names no pickup location gets a shipping order
    assert only(normalize("orders/create", body, STORE)).order.delivery is Delivery.SHIPPING
    # a removed line is not the order's delivery method
    body["shipping_lines"] = [{**PICKUP_LINE, "is_removed": True}]
    assert only(normalize("orders/create", body, PICKUP_STORE)).order.delivery is Delivery.SHIPPING


def test_an_order_with_nothing_that_requires_shipping_has_nothing_to_deliver() -> None:
    assert sold(requires_shipping=False).delivery is Delivery.NONE
    assert sold(requires_shipping=None).delivery is Delivery.SHIPPING  # not said: ships, as before


def test_the_reconciled_order_reads_channel_and_delivery_the_same_way() -> None:
    from adapters.shopify.graphql import normalize_node

    node = {"id": "gid://shopify/Order/77", "name": "#1077", "createdAt": "2026-11-20T06:00:00Z", "updatedAt": "2026-11-20T06:00:00Z",
            "displayFinancialStatus": "PAID", "paymentGatewayNames": ["shopify_payments"], "currencyCode": "INR",
            "currentTotalPriceSet": {"shopMoney": {"amount": "1299.00", "currencyCode": "INR"}}, "sourceName": "pos",
            "shippingLine": None, "lineItems": {"nodes": [{"id": "gid://shopify/LineItem/1", "quantity": 1, "title": "Tea",
                                                          "requiresShipping": True}]}}
    order = only(normalize_node(node, STORE)).order
    assert (order.channel, order.delivery) == (SalesChannel.POS, Delivery.NONE)
    picked = {**node, "sourceName": "web", "shippingLine": {"title": "Main Street Store", "code": "Main Street Store"}}
    assert only(normalize_node(picked, PICKUP_STORE)).order.delivery is Delivery.PICKUP
    assert only(normalize_node(picked, STORE)).order.delivery is Delivery.SHIPPING


# ---- lines an order edit removed, or the customer returned ------------------------------------

def test_a_line_at_current_quantity_zero_is_no_purchase_and_a_reduced_one_counts_what_is_left() -> None:
    """orders/updated after an edit or a refund with restock keeps the line at ``current_quantity`` 0:
    stored with its original quantity, it counted as bought (a reorder reminder for what was returned)."""
    body = load("orders_create")
    body["line_items"][0].update(quantity=3, current_quantity=1)  # two of three taken off the order
    body["line_items"][1].update(current_quantity=0)  # removed
    items = only(normalize("orders/updated", body, STORE)).order.line_items
    assert [(i.external_id, i.quantity) for i in items] == [
        ("487817672276298554", 1), ("890123456789012345", 1), ("976318377106520349", 1), ("315789986012684393", 1)]


def test_a_payload_without_current_quantity_keeps_the_quantity() -> None:
    body = load("orders_create")
    for li in body["line_items"]:
        del li["current_quantity"]
    assert [i.quantity for i in only(normalize("orders/create", body, STORE)).order.line_items] == [1] * 5


def test_only_returned_goods_leave_nothing_that_ships_and_nothing_bought() -> None:
    """Every line returned: no purchase left; the order keeps its delivery as before (it is taken to ship)."""
    body = load("orders_create")
    for li in body["line_items"]:
        li["current_quantity"] = 0
    order = only(normalize("orders/updated", body, STORE)).order
    assert (order.line_items, order.delivery) == ((), Delivery.SHIPPING)


def test_the_reconciled_order_drops_removed_lines_the_same_way() -> None:
    from adapters.shopify.graphql import normalize_node

    lines = [{"id": "gid://shopify/LineItem/1", "quantity": 2, "currentQuantity": 0, "title": "Soap"},
             {"id": "gid://shopify/LineItem/2", "quantity": 3, "currentQuantity": 2, "title": "Tea"}]
    node = {"id": "gid://shopify/Order/77", "name": "#1077", "createdAt": "2026-11-20T06:00:00Z", "updatedAt": "2026-11-21T06:00:00Z",
            "displayFinancialStatus": "PARTIALLY_REFUNDED", "paymentGatewayNames": ["shopify_payments"], "currencyCode": "INR",
            "currentTotalPriceSet": {"shopMoney": {"amount": "200.00", "currencyCode": "INR"}}, "lineItems": {"nodes": lines}}
    assert [(i.title, i.quantity) for i in only(normalize_node(node, STORE)).order.line_items] == [("Tea", 2)]


# ---- Shopify Markets: the shop's money and the customer's ------------------------------------

def markets_order(shop: str = "100.00", charged: str = "92.50") -> dict[str, Any]:
    body = load("orders_create")
    money = {"shop_money": {"amount": shop, "currency_code": "USD"}, "presentment_money": {"amount": charged, "currency_code": "EUR"}}
    body.update(currency="USD", presentment_currency="EUR", current_total_price=shop, current_total_price_set=money)
    return body


def test_an_order_paid_in_another_currency_carries_what_the_customer_was_charged() -> None:
    """The shop's money stays the total (revenue adds up in one currency); what the customer sees is kept beside it."""
    order = only(normalize("orders/create", markets_order(), STORE)).order
    assert (order.total, order.currency) == (Decimal("100.00"), "USD")
    assert (order.customer_total, order.customer_currency) == (Decimal("92.50"), "EUR")


def test_an_order_in_the_shops_own_currency_carries_no_second_amount() -> None:
    order = only(normalize("orders/create", load("orders_create"), STORE)).order  # USD shop, USD customer
    assert (order.customer_total, order.customer_currency) == (None, None)


def test_without_the_current_set_the_original_presentment_total_is_taken() -> None:
    body = markets_order()
    body["total_price_set"] = body.pop("current_total_price_set")
    assert only(normalize("orders/create", body, STORE)).order.customer_total == Decimal("92.50")


def test_a_checkouts_total_is_in_the_customers_currency() -> None:
    """The checkout webhook's ``total_price`` is in the presentment currency; ``currency`` is the shop's
    default (REST Abandoned checkout reference): the total is labelled with the presentment currency."""
    body = load("checkouts_create")
    body.update(currency="USD", presentment_currency="EUR", total_price="92.50")
    checkout = only(normalize("checkouts/update", body, STORE)).checkout
    assert (checkout.total, checkout.currency) == (Decimal("92.50"), "EUR")
    body.pop("presentment_currency")
    assert only(normalize("checkouts/update", body, STORE)).checkout.currency == "USD"  # not said: the shop's


def test_the_reconciled_order_and_polled_checkout_read_the_customers_money_the_same_way() -> None:
    from adapters.shopify.graphql import normalize_checkout_node, normalize_node

    node = {"id": "gid://shopify/Order/77", "name": "#1077", "createdAt": "2026-11-20T06:00:00Z", "updatedAt": "2026-11-20T06:00:00Z",
            "displayFinancialStatus": "PAID", "paymentGatewayNames": ["shopify_payments"], "currencyCode": "USD",
            "presentmentCurrencyCode": "EUR", "currentTotalPriceSet": {"shopMoney": {"amount": "100.00", "currencyCode": "USD"},
                                                                      "presentmentMoney": {"amount": "92.50", "currencyCode": "EUR"}}}
    order = only(normalize_node(node, STORE)).order
    assert (order.total, order.currency, order.customer_total, order.customer_currency) == (Decimal("100.00"), "USD", Decimal("92.50"), "EUR")
    checkout = {"id": "gid://shopify/AbandonedCheckout/5", "abandonedCheckoutUrl": "https://shop.example/1/checkouts/abc/recover?key=k",
                "createdAt": "2026-11-20T06:00:00Z", "updatedAt": "2026-11-20T06:00:00Z",
                "totalPriceSet": {"presentmentMoney": {"amount": "92.50", "currencyCode": "EUR"}}}
    polled = only(normalize_checkout_node(checkout, STORE)).checkout
    assert (polled.total, polled.currency) == (Decimal("92.50"), "EUR")
    stored_before = {**checkout, "totalPriceSet": {"shopMoney": {"amount": "100.00", "currencyCode": "USD"}}}  # an inbox row from before
    assert only(normalize_checkout_node(stored_before, STORE)).checkout.currency == "USD"


def test_a_lines_discounts_are_its_allocations_in_the_shops_money() -> None:
    """A discount code spread over the order reaches each line as an allocation: what the line brought
    is its price x quantity less those (the reorder credit counts that, not the list price)."""
    body = load("orders_create")
    body["line_items"][0]["discount_allocations"] = [
        {"amount": "9.00", "amount_set": {"shop_money": {"amount": "10.00", "currency_code": "USD"},
                                          "presentment_money": {"amount": "9.00", "currency_code": "EUR"}},
         "discount_application_index": 0},
        {"amount": "2.50", "discount_application_index": 1}]  # an older payload: the amount alone
    items = only(normalize("orders/create", body, STORE)).order.line_items
    assert [i.discount for i in items] == [Decimal("12.50"), Decimal("0"), Decimal("0"), Decimal("0"), Decimal("0")]


@pytest.mark.parametrize("topic,name", [("customers/redact", "customers_redact"), ("shop/redact", "shop_redact"),
                                        ("customers/data_request", "customers_data_request")])
def test_a_privacy_request_about_another_shop_is_refused(topic, name):
    body = load(name)
    with pytest.raises(NormalizationError, match="another shop than demo.myshopify.com"):
        normalize(topic, {**body, "shop_domain": "other.myshopify.com"}, STORE)
    assert normalize(topic, {**body, "shop_domain": "DEMO.myshopify.com"}, STORE)  # the same shop, however written
    assert normalize(topic, {k: v for k, v in body.items() if k != "shop_domain"}, STORE)
