"""Shopify webhook bodies (REST-shaped JSON) -> store-neutral events.

Pure translation: no I/O, no database. The worker calls ``normalize`` for each inbox
row; ``[]`` means "nothing for the core" (the caller records the row as ignored) and a
``NormalizationError`` means the body had the wrong shape for its topic.
Field notes: platform-facts.md A3 (payloads), A4 (COD), A5 (consent).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import datetime
from decimal import Decimal
from typing import Any

from adapters._parse import (
    kept_quantity,
    as_object,
    first_str,
    get_bool,
    get_datetime,
    get_decimal,
    get_id,
    get_list,
    get_obj,
    get_objects,
    get_str,
    guard,
    req_datetime,
    req_decimal,
    req_id,
    req_str,
)
from adapters.cod_gateways import is_cod
from adapters.shopify.delivery import delivery, sales_channel
from adapters.shopify.payment_terms import payment_due
from connector.config import ShopifyStore
from connector.contacts import normalize_phone
from connector.errors import NormalizationError

log = logging.getLogger("storeloop.shopify")
from connector.events import (
    AppUninstalled,
    Checkout,
    CheckoutUpdated,
    ComplianceRequested,
    ConsentCategory,
    ConsentChanged,
    ConsentState,
    Customer,
    CustomerUpdated,
    Delivery,
    Event,
    Fulfillment,
    FulfillmentState,
    FulfillmentUpdated,
    LineItem,
    Order,
    OrderCancelled,
    OrderFulfilled,
    OrderPaid,
    OrderPlaced,
    OrderUpdated,
    PaymentState,
    ProductDeleted,
    ProductUpdated,
    SalesChannel,
    ShipmentStatus,
)

Body = dict[str, Any]

_ORDER_EVENTS: dict[str, type[OrderPlaced | OrderUpdated | OrderPaid | OrderCancelled | OrderFulfilled]] = {
    "orders/create": OrderPlaced,
    "orders/updated": OrderUpdated,
    "orders/paid": OrderPaid,
    "orders/cancelled": OrderCancelled,
    "orders/fulfilled": OrderFulfilled,
    "orders/partially_fulfilled": OrderFulfilled,
}

# REST financial_status values; anything else (``expired``, future values) is OTHER.
_PAYMENT_STATES = {state.value: state for state in PaymentState if state is not PaymentState.OTHER}

_FULFILLMENT_STATES = {
    None: FulfillmentState.UNFULFILLED,
    "unfulfilled": FulfillmentState.UNFULFILLED,
    "partial": FulfillmentState.PARTIAL,
    "fulfilled": FulfillmentState.FULFILLED,
}

_SHIPMENT_STATUSES = {s.value: s for s in ShipmentStatus if s not in (ShipmentStatus.NONE, ShipmentStatus.OTHER)}

_CONSENT_STATES = {
    "subscribed": ConsentState.GRANTED,
    "unsubscribed": ConsentState.REVOKED,
    "redacted": ConsentState.REVOKED,
    "pending": ConsentState.PENDING,
    "not_subscribed": ConsentState.UNKNOWN,
}

_COMPLIANCE = {
    "customers/data_request": ("customer_data_request", "orders_requested"),
    "customers/redact": ("customer_redact", "orders_to_redact"),
    "shop/redact": ("shop_redact", "orders_to_redact"),
}

SYNC_ORDER_TOPIC = "sync/order"
SYNC_CHECKOUT_TOPIC = "sync/checkout"  # an abandonedCheckouts node stored by the checkout poll
SYNC_CUSTOMER_TOPIC = "sync/customer"  # a customers node (her phone's consent) stored by the reconcile's customers pass
SMS_SOURCE = "shopify_sms_marketing"
WHATSAPP_SOURCE = "shopify_whatsapp_marketing"


@guard("shopify")
def normalize(topic: str, body: dict, store: ShopifyStore) -> list[Event]:
    """Translate one Shopify webhook (``X-Shopify-Topic`` + JSON body) into events."""
    data = as_object(body, "body")
    if topic == SYNC_ORDER_TOPIC:  # a GraphQL order node stored by the reconciliation job
        from adapters.shopify import graphql

        return graphql.normalize_node(data, store)
    if topic == SYNC_CHECKOUT_TOPIC:  # keyed like its checkouts/* webhook (adapters/shopify/checkouts.py)
        from adapters.shopify import graphql

        return graphql.normalize_checkout_node(data, store)
    if topic == SYNC_CUSTOMER_TOPIC:  # the consent its lost consent webhooks would have brought
        from adapters.shopify import graphql

        return graphql.normalize_customer_node(data, store)
    if topic in _ORDER_EVENTS:
        order = _order(data, store)
        listed = _listed_fulfillments(data, order.external_id)
        # the order carries them too: its event is heard before theirs (``Order.fulfillments``)
        order = order.model_copy(update={"fulfillments": tuple(e.fulfillment for e in listed)})
        return [_ORDER_EVENTS[topic](order=order), *listed]
    handler = _HANDLERS.get(topic)
    return handler(topic, data, store) if handler else []


# ---- orders ---------------------------------------------------------------------------


def _order(o: Body, store: ShopifyStore) -> Order:
    created_at = req_datetime(o, "created_at")
    financial_status = get_str(o, "financial_status")
    gateways = _gateway_names(o)
    terms, due_at = payment_due(o, created_at)
    total = get_decimal(o, "current_total_price")
    if total is None:
        total = req_decimal(o, "total_price")
    line_items, needs_shipping = _order_lines(o)
    channel = sales_channel(get_str(o, "source_name"))
    currency = req_str(o, "currency")
    charged, charged_in = _charged(o, currency)
    return Order(
        external_id=req_id(o, "id"),
        name=req_str(o, "name"),
        created_at=created_at,
        updated_at=get_datetime(o, "updated_at") or created_at,
        cancelled_at=get_datetime(o, "cancelled_at"),
        payment_state=_PAYMENT_STATES.get((financial_status or "").lower(), PaymentState.OTHER),
        fulfillment_state=_fulfillment_state(get_str(o, "fulfillment_status")),
        platform_status=financial_status,
        is_cod=is_cod(gateways, store.cod_gateway_names()),
        gateway_names=gateways,
        total=total,
        currency=currency,
        customer_total=charged,
        customer_currency=charged_in,
        customer=_customer(o, store, phone_keys=("phone",)),
        line_items=line_items,
        checkout_token=get_str(o, "checkout_token"),
        status_url=get_str(o, "order_status_url"),
        # Shopify sends no separate pay link; the order status page is where a customer
        # completes a pending payment (or sees the payment instructions).
        payment_url=get_str(o, "order_status_url"),
        tags=_tags(o),
        test=get_bool(o, "test"),
        payment_terms=terms,
        payment_due_at=due_at,
        channel=channel,
        delivery=_delivery(o, needs_shipping, channel, store),
    )


def _charged(o: Body, shop_currency: str) -> tuple[Decimal | None, str | None]:
    """What the customer was charged in their own currency, when it is not the shop's (Shopify
    Markets): ``current_total_price_set.presentment_money`` (else ``total_price_set``'s). The sets
    are read only for such an order: most orders are in the shop's currency."""
    presentment = get_str(o, "presentment_currency")
    if presentment is None or presentment.strip().upper() == shop_currency.strip().upper():
        return None, None
    for key in ("current_total_price_set", "total_price_set"):
        money = get_obj(get_obj(o, key) or {}, "presentment_money", key) or {}
        amount = get_decimal(money, "amount", f"{key}.presentment_money")
        if amount is not None:
            return amount, get_str(money, "currency_code", f"{key}.presentment_money") or presentment.strip().upper()
    return None, None


def _delivery(o: Body, needs_shipping: bool, channel: SalesChannel, store: ShopifyStore) -> Delivery:
    """How the order reaches the customer (``adapters/shopify/delivery.py``), from the webhook's
    live (not ``is_removed``) shipping lines."""
    def names() -> list[list[str | None]]:
        return [[get_str(line, "title", where), get_str(line, "code", where)]
                for where, line in get_objects(o, "shipping_lines") if not get_bool(line, "is_removed", where)]
    return delivery(needs_shipping, channel, store.pickup_lines, names)


def _gateway_names(o: Body) -> tuple[str, ...]:
    """``payment_gateway_names`` plus the deprecated ``gateway`` when it adds a name."""
    names: list[str] = []
    for i, value in enumerate(get_list(o, "payment_gateway_names")):
        if not isinstance(value, str):
            raise NormalizationError(f"payment_gateway_names[{i}]: expected a string")
        if value.strip():
            names.append(value)
    gateway = get_str(o, "gateway")
    if gateway and gateway.strip().lower() not in {n.strip().lower() for n in names}:
        names.append(gateway)
    return tuple(names)


def _fulfillment_state(status: str | None) -> FulfillmentState:
    return _FULFILLMENT_STATES.get(status.lower() if status else None, FulfillmentState.OTHER)


def _tags(o: Body) -> tuple[str, ...]:
    value = o.get("tags")
    if value is None:
        return ()
    if isinstance(value, list) and all(isinstance(t, str) for t in value):
        parts = value
    elif isinstance(value, str):
        parts = value.split(",")
    else:
        raise NormalizationError("tags: expected a comma-separated string")
    return tuple(t.strip() for t in parts if t.strip())


def _line_items(o: Body) -> tuple[LineItem, ...]:
    return _order_lines(o)[0]


def _order_lines(o: Body) -> tuple[tuple[LineItem, ...], bool]:
    """The lines the customer still has, and whether any of them ships.

    ``current_quantity`` (REST 2024-01 on) is the quantity after removals: a line an order edit
    took out, or refunded and restocked, is at 0 and is no purchase (no reorder reminder for
    it); absent (a checkout's line, an older payload), ``quantity`` counts. ``requires_shipping``
    absent counts as yes; an order without lines is taken to ship, as before the flag was read."""
    items = []
    ships = False
    for where, li in get_objects(o, "line_items"):
        quantity = kept_quantity(li, "current_quantity", "quantity", where)
        if quantity is None:
            continue
        ships = ships or get_bool(li, "requires_shipping", where, default=True)
        items.append(
            LineItem(
                external_id=get_id(li, "id", where),
                product_id=get_id(li, "product_id", where),
                variant_id=get_id(li, "variant_id", where),
                sku=get_str(li, "sku", where),
                title=first_str(get_str(li, "title", where), get_str(li, "name", where)) or "",
                quantity=quantity,
                price=_or_zero(get_decimal(li, "price", where)),
                discount=_line_discount(li, where),
            )
        )
    return tuple(items), ships or not items


def _line_discount(li: Body, where: str) -> Decimal:
    """The line's discounts in the shop's money: its ``discount_allocations`` (its own discount and
    its share of an order-level one, such as the reorder reminder's code)."""
    total = Decimal("0")
    for at, allocation in get_objects(li, "discount_allocations", where):
        shop = get_obj(get_obj(allocation, "amount_set", at) or {}, "shop_money", at) or {}
        total += _or_zero(get_decimal(shop, "amount", at) if shop else get_decimal(allocation, "amount", at))
    return total


def _or_zero(value: Decimal | None) -> Decimal:
    return Decimal("0") if value is None else value


# ---- customers and phones ---------------------------------------------------------------


def _customer(o: Body, store: ShopifyStore, *, phone_keys: tuple[str, ...]) -> Customer:
    """The buyer of an order or checkout.

    The phone is the first non-empty of the body's own phone fields, the customer's,
    the shipping/billing address and the customer's default address (A3); it is
    parsed with the shipping (else billing) country, else the store's default.
    """
    c = get_obj(o, "customer", "") or {}
    shipping = get_obj(o, "shipping_address") or {}
    billing = get_obj(o, "billing_address") or {}
    default_address = get_obj(c, "default_address", "customer") or {}
    country = (
        get_str(shipping, "country_code", "shipping_address")
        or get_str(billing, "country_code", "billing_address")
        or store.default_country
    )
    raw_phone = first_str(
        *(get_str(o, key) for key in phone_keys),
        get_str(c, "phone", "customer"),
        get_str(shipping, "phone", "shipping_address"),
        get_str(billing, "phone", "billing_address"),
        get_str(default_address, "phone", "customer.default_address"),
    )
    return Customer(
        external_id=get_id(c, "id", "customer"),
        first_name=first_str(
            get_str(c, "first_name", "customer"),
            get_str(billing, "first_name", "billing_address"),
            get_str(shipping, "first_name", "shipping_address"),
        ),
        last_name=first_str(
            get_str(c, "last_name", "customer"),
            get_str(billing, "last_name", "billing_address"),
            get_str(shipping, "last_name", "shipping_address"),
        ),
        email=first_str(get_str(o, "email"), get_str(o, "contact_email"), get_str(c, "email", "customer")),
        phone=normalize_phone(raw_phone, country),
        country=country.upper(),
        locale=get_str(o, "customer_locale") or get_str(c, "locale", "customer"),
    )


def consent_state_of(state: str | None) -> ConsentState:
    """A Shopify marketing consent state (the webhook's lower case or GraphQL's enum) as ours; unknown: UNKNOWN."""
    return _CONSENT_STATES.get(state.lower(), ConsentState.UNKNOWN) if state else ConsentState.UNKNOWN


def _consent_state(consent: Body | None, where: str) -> ConsentState:
    return consent_state_of(get_str(consent or {}, "state", where))


def _consent_time(consent: Body | None, where: str) -> datetime | None:
    consent = consent or {}
    return get_datetime(consent, "consent_updated_at", where) or get_datetime(consent, "updated_at", where)


# ---- topic handlers ---------------------------------------------------------------------


def _checkout(_topic: str, o: Body, store: ShopifyStore) -> list[Event]:
    if _topic == "checkouts/delete":
        return []
    created_at = req_datetime(o, "created_at")
    customer = _customer(o, store, phone_keys=("phone", "sms_marketing_phone"))
    # the phone typed in this checkout (its own field, the opt-in's, an address's) before her account's (the customer's
    # phone, its default address): the account's may be an old number, and her first step (the email) gives none yet.
    # Only her account's: a guess (``phone_on_checkout`` False), which the first phone the checkout gives corrects.
    own = first_str(get_str(o, "phone"), get_str(o, "sms_marketing_phone"),
                    get_str(get_obj(o, "shipping_address") or {}, "phone", "shipping_address"),
                    get_str(get_obj(o, "billing_address") or {}, "phone", "billing_address"))
    typed = normalize_phone(own, customer.country) if own else None
    if typed is not None:
        customer = customer.model_copy(update={"phone": typed})
    checkout = Checkout(
        token=req_id(o, "token"),
        created_at=created_at,
        updated_at=get_datetime(o, "updated_at") or created_at,
        completed_at=get_datetime(o, "completed_at"),
        recovery_url=get_str(o, "abandoned_checkout_url"),
        # the checkout's prices are in the customer's (presentment) currency; ``currency`` is the shop's
        total=req_decimal(o, "total_price"),
        currency=get_str(o, "presentment_currency") or req_str(o, "currency"),
        customer=customer,
        line_items=_line_items(o),
        # a phone-channel opt-in only: buyer_accepts_marketing is the email checkbox, and an email
        # opt-in is no consent to WhatsApp marketing (platform-facts A5, C7)
        accepts_marketing=get_bool(o, "buyer_accepts_sms_marketing"),
        # "Text me with news and offers" asks for its own number: the opt-in is for that one
        marketing_phone=normalize_phone(get_str(o, "sms_marketing_phone"), customer.country),
        phone_on_checkout=typed is not None or customer.phone is None,
    )
    return [CheckoutUpdated(checkout=checkout)]


def _fulfillment(_topic: str, f: Body, _store: ShopifyStore) -> list[Event]:
    return [FulfillmentUpdated(fulfillment=_read_fulfillment(f))]


def _listed_fulfillments(o: Body, order_id: str) -> list[FulfillmentUpdated]:
    """The order's ``fulfillments[]`` (the Fulfillment resource, as fulfillments/* sends it), each as news
    of its parcel: a carrier status can reach the order (orders/updated) with no fulfillments/update
    (a tracking app that writes fulfilment events, Shopify's own tracking), and "delivered" must not
    depend on which webhook came. An order lists them all, every time: ``listed_on_order`` says so,
    and only a fulfilment that changed is heard (``state.apply_event``)."""
    listed: list[FulfillmentUpdated] = []
    for i, item in enumerate(o.get("fulfillments") or () if isinstance(o.get("fulfillments"), list) else ()):
        try:
            listed.append(FulfillmentUpdated(fulfillment=_read_fulfillment(as_object(item, f"fulfillments[{i}]"), f"fulfillments[{i}]",
                                                                           order_id), listed_on_order=True))
        except NormalizationError as exc:
            # the order itself is good: an entry we cannot read is left out (its own fulfillments/* webhook
            # still tells), never the order update with it
            log.warning("order %s: fulfilment listed on the order left out: %s", order_id, exc)
    return listed


def _read_fulfillment(f: Body, where: str = "", order_id: str | None = None) -> Fulfillment:
    created_at = req_datetime(f, "created_at", where)
    status = get_str(f, "shipment_status", where)
    shipment = _SHIPMENT_STATUSES.get(status.lower(), ShipmentStatus.OTHER) if status else ShipmentStatus.NONE
    return Fulfillment(
        external_id=req_id(f, "id", where),
        order_external_id=order_id or req_id(f, "order_id", where),  # an order lists its own
        status=req_str(f, "status", where),
        shipment_status=shipment,
        tracking_company=get_str(f, "tracking_company", where),
        tracking_number=get_str(f, "tracking_number", where) or _first_of(f, "tracking_numbers", where),
        tracking_url=get_str(f, "tracking_url", where) or _first_of(f, "tracking_urls", where),
        tracking_numbers=_all_of(f, "tracking_numbers", where),  # multi-package tracking: every parcel's number
        tracking_urls=_all_of(f, "tracking_urls", where),
        ships=_ships(f, where),
        created_at=created_at,
        updated_at=get_datetime(f, "updated_at", where) or created_at,
    )


def _ships(f: Body, where: str = "") -> bool:
    """Whether any of the fulfilment's lines requires shipping: a fulfilment of gift cards or digital
    goods only is no parcel. ``requires_shipping`` absent counts as yes, and a fulfilment that lists
    no lines is taken to ship, as an order's lines are read (``_order_lines``)."""
    lines = get_objects(f, "line_items", where)
    return not lines or any(get_bool(li, "requires_shipping", at, default=True) for at, li in lines)


def _first_of(d: Body, key: str, where: str = "") -> str | None:
    found = _all_of(d, key, where)
    return found[0] if found else None


def _all_of(d: Body, key: str, where: str = "") -> tuple[str, ...]:
    """The non-blank strings of a list field, in order."""
    values: list[str] = []
    for i, value in enumerate(get_list(d, key, where)):
        if not isinstance(value, str):
            raise NormalizationError(f"{where + '.' if where else ''}{key}[{i}]: expected a string")
        if value.strip():
            values.append(value)
    return tuple(values)


def _customer_updated(_topic: str, c: Body, store: ShopifyStore) -> list[Event]:
    external_id = req_id(c, "id")
    address = get_obj(c, "default_address") or {}
    country = get_str(address, "country_code", "default_address") or store.default_country
    phone = normalize_phone(first_str(get_str(c, "phone"), get_str(address, "phone", "default_address")), country)
    customer = Customer(
        external_id=external_id,
        first_name=get_str(c, "first_name"),
        last_name=get_str(c, "last_name"),
        email=get_str(c, "email"),
        phone=phone,
        country=country.upper(),
        locale=get_str(c, "locale"),
    )
    events: list[Event] = [CustomerUpdated(customer=customer, updated_at=get_datetime(c, "updated_at"))]
    consent = get_obj(c, "sms_marketing_consent")
    if consent is not None:
        events.append(
            ConsentChanged(
                customer_external_id=external_id,
                phone=normalize_phone(get_str(c, "phone"), country),
                category=ConsentCategory.MARKETING,
                state=_consent_state(consent, "sms_marketing_consent"),
                source=SMS_SOURCE,
                occurred_at=_consent_time(consent, "sms_marketing_consent"),
            )
        )
    return events


def _consent_update(topic: str, c: Body, store: ShopifyStore) -> list[Event]:
    """``customers_marketing_consent/update`` (SMS) and the 2026-07 WhatsApp consent topic."""
    if topic == "customers_whats_app_marketing_consent/update":
        key, source = "whats_app_marketing_consent", WHATSAPP_SOURCE
        external_id = req_id(c, "customer_id")
    else:
        key, source = "sms_marketing_consent", SMS_SOURCE
        external_id = get_id(c, "id") or req_id(c, "customer_id")
    consent = get_obj(c, key)
    raw_phone = first_str(get_str(c, "phone_number"), get_str(c, "phone"))
    return [
        ConsentChanged(
            customer_external_id=external_id,
            phone=normalize_phone(raw_phone, store.default_country),
            category=ConsentCategory.MARKETING,
            state=_consent_state(consent, key),
            source=source,
            occurred_at=_consent_time(consent, key),
        )
    ]


def _app_uninstalled(_topic: str, shop: Body, store: ShopifyStore) -> list[Event]:
    # myshopify_domain first: it is the tenant key (A1); ``domain`` is the custom storefront domain.
    name = first_str(get_str(shop, "myshopify_domain"), get_str(shop, "domain")) or store.shop_domain
    return [AppUninstalled(shop=name)]


def _product(_topic: str, b: Body, _store: ShopifyStore) -> list[Event]:
    """``products/create|update``: tags come as one comma-separated string; a metafield
    ``storeloop.replenish`` (included when the subscription asks for that namespace) wins.
    ``status`` archived or draft: no longer for sale. The variants' SKUs name it on order lines that
    carry no product id (a custom item, or a line whose product Shopify no longer links)."""
    replenish = None
    for i, mf in enumerate(get_list(b, "metafields")):
        if isinstance(mf, dict) and mf.get("namespace") == "storeloop" and mf.get("key") == "replenish":
            value = mf.get("value")
            if not isinstance(value, str):
                raise NormalizationError(f"metafields[{i}].value: expected a string like '30d'")
            replenish = value
    tags = get_str(b, "tags") or ""
    status = (get_str(b, "status") or "").strip().lower()
    skus = tuple(dict.fromkeys(sku for where, v in get_objects(b, "variants") if (sku := get_str(v, "sku", where))))  # as lines carry them
    return [ProductUpdated(product_id=req_id(b, "id"), title=get_str(b, "title") or "", replenish=replenish,
                           tags=tuple(t.strip() for t in tags.split(",") if t.strip()), available=status not in _NOT_FOR_SALE,
                           skus=skus, updated_at=get_datetime(b, "updated_at"))]


def _product_deleted(_topic: str, b: Body, _store: ShopifyStore) -> list[Event]:
    """``products/delete``: the body is only ``{"id": N}``."""
    return [ProductDeleted(product_id=req_id(b, "id"))]


# Product ``status`` values of a product no customer can buy (``active`` and ``unlisted``, sold by link, can be)
_NOT_FOR_SALE = frozenset({"archived", "draft"})


def _compliance(topic: str, b: Body, store: ShopifyStore) -> list[Event]:
    """The body names its shop (``shop_domain``): the stores of one app share its secret and the
    X-Shopify-Shop-Domain header that chose the store is not signed, so a request about another
    shop (replayed with this shop's header, or misrouted) must erase or export nothing here."""
    kind, orders_key = _COMPLIANCE[topic]
    named = get_str(b, "shop_domain")
    if named is not None and named.strip().lower() != store.shop_domain.lower():
        raise NormalizationError(f"{topic} is about another shop than {store.shop_domain}: nothing done for this store")
    c = get_obj(b, "customer")
    customer = None
    if c is not None:
        customer = Customer(
            external_id=get_id(c, "id", "customer"),
            email=get_str(c, "email", "customer"),
            phone=normalize_phone(get_str(c, "phone", "customer"), store.default_country),
        )
    order_ids = tuple(_id_item(value, f"{orders_key}[{i}]") for i, value in enumerate(get_list(b, orders_key)))
    return [ComplianceRequested(kind=kind, customer=customer, order_external_ids=order_ids)]


def _id_item(value: Any, where: str) -> str:
    if isinstance(value, bool) or not isinstance(value, (int, str)) or not str(value).strip():
        raise NormalizationError(f"{where}: expected an id")
    return str(value).strip()


_HANDLERS: dict[str, Callable[[str, Body, ShopifyStore], list[Event]]] = {
    "checkouts/create": _checkout,
    "checkouts/update": _checkout,
    "checkouts/delete": _checkout,
    "fulfillments/create": _fulfillment,
    "fulfillments/update": _fulfillment,
    "customers/update": _customer_updated,
    "customers_marketing_consent/update": _consent_update,
    "customers_whats_app_marketing_consent/update": _consent_update,
    "app/uninstalled": _app_uninstalled,
    "products/create": _product,
    "products/update": _product,
    "products/delete": _product_deleted,
    "customers/data_request": _compliance,
    "customers/redact": _compliance,
    "shop/redact": _compliance,
}
