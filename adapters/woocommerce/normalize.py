"""WooCommerce webhook bodies (REST v3 resources) -> store-neutral events.

Pure translation, keyed by ``X-WC-Webhook-Topic``. WooCommerce builds the body at
delivery time, so an ``order.created`` may already show a later status (B3); we simply
report what the body says. Field notes: platform-facts.md B2 (orders, COD), B3 (webhooks).
"""

from __future__ import annotations

import html
from decimal import Decimal
from typing import Any
from urllib.parse import parse_qsl, quote, urlencode, urlsplit, urlunsplit

from adapters._parse import (
    as_object,
    first_str,
    get_datetime,
    get_decimal,
    get_id,
    get_int,
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
from adapters.cod_gateways import is_cod as is_cod_gateway
from adapters.woocommerce import carts
from connector.config import WooCommerceStore, provider_slug
from connector.contacts import normalize_phone
from connector.errors import NormalizationError
from connector.events import (
    Customer,
    CustomerUpdated,
    Event,
    Fulfillment,
    FulfillmentState,
    FulfillmentUpdated,
    LineItem,
    Order,
    OrderCancelled,
    OrderDeleted,
    OrderPlaced,
    OrderUpdated,
    PaymentState,
    ProductDeleted,
    ProductUpdated,
    SalesChannel,
    ShipmentStatus,
)

Body = dict[str, Any]

# Statuses of an order that has not been paid yet; a fresh COD order is ``processing``
# (or ``on-hold``), and unpaid whatever its ``date_paid`` says (``_COD_PAID_STATUSES``).
_UNPAID_STATES = {
    "pending": PaymentState.PENDING,
    "processing": PaymentState.PENDING,
    "on-hold": PaymentState.PENDING,
    "failed": PaymentState.FAILED,
    "cancelled": PaymentState.VOIDED,
}

_ORDER_TOPICS = {"order.created", "order.updated", "order.restored"}
_CUSTOMER_TOPICS = {"customer.created", "customer.updated"}
_PRODUCT_TOPICS = {"product.created", "product.updated", "product.restored"}  # restored: out of the bin, the product as it is now
_CHECKOUT_DRAFT = "checkout-draft"  # block-checkout drafts leak into order.updated (B3)


@guard("woocommerce")
def normalize(topic: str, body: dict, store: WooCommerceStore) -> list[Event]:
    """Translate one WooCommerce webhook (topic + JSON body) into events.

    ``order.deleted`` (body ``{"id": N}``: the bin or deleted for good) gives ``OrderDeleted``, and
    ``product.deleted`` (the same body: the product binned) ``ProductDeleted``;
    checkout drafts and unknown topics give ``[]``.
    ``cart.*`` topics are the Cart Abandonment Recovery plugin's posts (``carts.py``).
    """
    data = as_object(body, "body")
    if topic in carts.TOPICS:
        return carts.normalize(topic, data, store)
    if topic in _ORDER_TOPICS:
        if (get_str(data, "status") or "").lower() == _CHECKOUT_DRAFT:
            return []
        items = _tracking_items(data)
        tracking = items[0] if items else {}  # the first parcel's is what a template shows
        order = _order(data, store, tracking)
        shipment = _shipment(data, order, items, store)
        if topic == "order.created":
            return [OrderPlaced(order=order), *shipment]
        if topic == "order.updated" and order.platform_status in _CLOSED:
            return [OrderCancelled(order=order)]
        return [OrderUpdated(order=order), *shipment]
    if topic == "order.deleted":
        return [OrderDeleted(order_external_id=req_id(data, "id"))]
    if topic == "product.deleted":  # moved to the bin (``wp_trash_post``): only the id
        return [ProductDeleted(product_id=req_id(data, "id"))]
    if topic in _CUSTOMER_TOPICS:
        return [_customer_updated(data, store)]
    if topic in _PRODUCT_TOPICS:
        return [_product(data)]
    return []


REPLENISH_META = ("_storeloop_replenish", "storeloop_replenish", "replenish")  # product meta naming its cycle, first found wins


def _product(data: dict) -> ProductUpdated:
    """``product.created|updated``: tags are ``[{"id", "name", "slug"}]``; the cycle tag is a name.

    A product meta ``_storeloop_replenish`` (or ``replenish``) such as ``"30d"`` names the cycle
    too and wins over a tag, as Shopify's ``storeloop.replenish`` metafield does. Only a ``publish``ed
    product is for sale (a draft, one pending review, private or in the bin is not); ``stock_status``
    ``outofstock`` is sold out (``onbackorder`` can still be ordered). ``catalog_visibility: hidden``
    is still sold by its link. ``sku`` (the product's own; a variation's is on the variation) names it
    on order lines whose ``product_id`` is 0 (the product deleted for good).
    """
    tags = []
    for i, tag in enumerate(get_list(data, "tags")):
        if not isinstance(tag, dict):
            raise NormalizationError(f"tags[{i}]: expected an object")
        name = get_str(tag, "name", f"tags[{i}]")
        if name:
            tags.append(name)
    meta: dict[str, str] = {}
    for path, item in get_objects(data, "meta_data"):
        key, value = item.get("key"), item.get("value")
        if key in REPLENISH_META and value not in (None, ""):
            if not isinstance(value, (str, int, float)) or isinstance(value, bool):
                raise NormalizationError(f"{path}.value: expected a cycle like '30d'")
            meta.setdefault(key, str(value).strip())
    replenish = next((meta[k] for k in REPLENISH_META if k in meta), None)
    status = get_str(data, "status")
    return ProductUpdated(product_id=req_id(data, "id"), title=_plain(get_str(data, "name")), tags=tuple(tags), replenish=replenish,
                          available=status is None or status.strip().lower() == "publish",
                          in_stock=(get_str(data, "stock_status") or "").strip().lower() != "outofstock",
                          skus=tuple(sku for sku in (get_str(data, "sku"),) if sku), updated_at=get_datetime(data, "date_modified_gmt"))


# WooCommerce has no fulfilment object: stores mark shipping with a status (core "completed", or
# statuses that plugins add: the store's ``shipping_statuses``, with their meanings) and the Shipment
# Tracking extension's meta. An order in any of these statuses has left the warehouse: fulfilled, so
# a COD run stops asking and a late Cancel goes to a person.
_SHIPMENT_FOR_MEANING = {
    "shipped": ShipmentStatus.IN_TRANSIT,
    "out_for_delivery": ShipmentStatus.OUT_FOR_DELIVERY,
    "delivered": ShipmentStatus.DELIVERED,
    # the courier could not deliver (returned to origin): a failed delivery attempt, asked about and handed
    # off; not FAILURE, which is Shopify's "tracking could not be read", told to the store only
    "failed_delivery": ShipmentStatus.ATTEMPTED_DELIVERY,
}
TRACKING_META = "_wc_shipment_tracking_items"
AFTERSHIP_META = "_aftership_tracking_items"
AFTERSHIP_PAGE = "https://track.aftership.com"  # the AfterShip plugin's tracking page when the store set no domain of its own
# Shipping methods that send nothing: the customer collects the order ("completed" is then no parcel)
_PICKUP_METHODS = frozenset({"local_pickup", "pickup_location"})
# A COD order is paid when the cash is taken: WooCommerce sets ``date_paid`` as soon as any order
# reaches processing (``WC_Order::maybe_set_date_paid``, every gateway since 3.0), so for COD
# only ``completed`` and a status the store calls delivered say the money came in.

# Where an order was placed, by its ``created_via`` (WooCommerce core: checkout, store-api, admin,
# rest-api; its Point of Sale: pos-rest-api / point-of-sale; the WCPOS plugin: woocommerce-pos;
# Subscriptions: subscription for a renewal). Anything else (checkout, a headless store's REST
# order, a payment plugin's own) is the online shop. WooCommerce itself only treats unpaid
# checkout / store-api orders as abandoned (``wc_cancel_unpaid_orders``).
_CHANNEL_FOR_CREATED_VIA = {
    "pos-rest-api": SalesChannel.POS,
    "point-of-sale": SalesChannel.POS,
    "woocommerce-pos": SalesChannel.POS,
    "admin": SalesChannel.ADMIN,
    "subscription": SalesChannel.SUBSCRIPTION,
}
# The pay-for-order page takes payment only in these (WC_Order::needs_payment's default valid statuses):
# a COD order in processing / on-hold has no pay link that works.
_PAYABLE_STATUSES = frozenset({"pending", "failed"})
# The status of an order moved to the bin (``wp_trash_post``): the core reads it through the adapters'
# registry (``bin_statuses``) to tell a binned order restored from one merely cancelled
BIN_STATUS = "trash"
# Called off: cancelled, or moved to the bin (``order.deleted`` says the same with only the id)
_CLOSED = frozenset({"cancelled", BIN_STATUS})
# Tracking meta on an order in these says nothing about a parcel on its way: never paid, called off or money returned
_NOT_ON_ITS_WAY = frozenset({"pending", "failed", "cancelled", "refunded", "checkout-draft", BIN_STATUS})


# Placeholders of a provider's link format: the Shipment Tracking extension's (sprintf positions) and
# Advanced Shipment Tracking's (zorem: ``get_formatted_tracking_item``; ``%number2%`` its product code)
_WST_PLACEHOLDERS = (("%1$s", "number"), ("%2$s", "postcode"), ("%3$s", "country"))
_AST_PLACEHOLDERS = (("%number2%", "code"), ("%number%", "number"), ("%postal_code%", "postcode"), ("%country_code%", "country"))
_NUMBER_PLACEHOLDERS = ("%1$s", "%number%")


def _tracking_items(o: Body) -> list[dict[str, Any]]:
    """The order's parcels, in the order the plugin lists them ([] without one): each is a parcel (a
    store adds one per package it sends). The Shipment Tracking extension's items (Advanced Shipment
    Tracking writes the same meta), else the AfterShip plugin's, read in the same shape."""
    items: list[dict[str, Any]] = []
    for _, meta in get_objects(o, "meta_data"):
        if meta.get("key") == TRACKING_META and isinstance(meta.get("value"), list) and meta["value"]:
            items = [i for i in meta["value"] if isinstance(i, dict)]
    return items or _aftership_items(o)


def _aftership_items(o: Body) -> list[dict[str, Any]]:
    """The AfterShip plugin's parcels as Shipment Tracking items: ``_aftership_tracking_items`` (courier
    ``slug``, ``tracking_number``), or in its older meta one parcel in ``_aftership_tracking_number``, the
    courier's slug in ``_aftership_tracking_provider`` (its meta box's select) and its display name in
    ``_aftership_tracking_provider_name``. Its items carry no link: the plugin's own tracking page (its
    default domain) is the link, which names the courier by its slug, unless the store lists a format for
    the courier (``tracking_links``); the courier shown is its name when the meta gives one."""
    meta = {m.get("key"): m.get("value") for _, m in get_objects(o, "meta_data") if str(m.get("key") or "").startswith("_aftership_")}
    listed = meta.get(AFTERSHIP_META)
    if isinstance(listed, list) and listed:
        found = [(i.get("slug"), None, i.get("tracking_number")) for i in listed if isinstance(i, dict)]
    else:
        found = [(meta.get("_aftership_tracking_provider"), meta.get("_aftership_tracking_provider_name"),
                  meta.get("_aftership_tracking_number"))]
    items = []
    for raw_slug, raw_name, raw_number in found:
        slug, name, number = (_meta_text(v) for v in (raw_slug, raw_name, raw_number))
        if not slug and name and provider_slug(name) == name:
            slug = name  # a name field holding a slug ("india-post"): what some older saves wrote
        if number:
            page = f"{AFTERSHIP_PAGE}/{quote(slug, safe='')}/%1$s" if slug else None
            items.append({"tracking_provider": name or slug, "tracking_number": number, "default_link": page})
    return items


def _meta_text(value: Any) -> str:
    """A meta value as text ("" for none, a list, a bool)."""
    return str(value).strip() if isinstance(value, (str, int)) and not isinstance(value, bool) else ""


def _ships(o: Body) -> bool:
    """Whether the order has a shipping line that sends a parcel (not a pickup; a virtual or
    downloadable order has none)."""
    for _, line in get_objects(o, "shipping_lines"):
        if str(line.get("method_id") or "").lower() not in _PICKUP_METHODS:
            return True
    return False


def _tracked(order_status: str | None, tracking: dict[str, Any]) -> bool:
    """Tracking meta on an order that is on its way (not one never paid, called off or refunded)."""
    return bool(tracking) and order_status not in _NOT_ON_ITS_WAY


def _tracking_link(o: Body, tracking: dict[str, Any], store: WooCommerceStore) -> tuple[str | None, str | None]:
    """The carrier's name and the tracking link of a Shipment Tracking item.

    A custom provider's item carries its link; a predefined provider's names only the provider,
    whose link format the extension keeps in PHP (``store.tracking_links`` has the store's). The
    format's placeholders are the extension's (%1$s the number, %2$s the postcode, %3$s the country)
    or Advanced Shipment Tracking's, which writes the same meta and answers the same providers
    endpoint with its own (``_AST_PLACEHOLDERS``)."""
    number = str(tracking.get("tracking_number") or "").strip()
    custom = str(tracking.get("custom_tracking_provider") or "").strip()
    provider = str(tracking.get("tracking_provider") or "").strip()
    link = str(tracking.get("custom_tracking_link") or "").strip()
    configured = store.tracking_provider(provider) if provider and not custom else None
    company = custom or (configured[0] if configured else provider) or None
    if not link and configured:
        link = configured[1]
    link = link or str(tracking.get("default_link") or "")
    if not link or (not number and any(p in link for p in _NUMBER_PLACEHOLDERS)):
        return company, None
    where = "shipping" if get_str(get_obj(o, "shipping") or {}, "postcode", "shipping") else "billing"
    address = get_obj(o, where) or {}
    postcode = (get_str(address, "postcode", where) or "").replace(" ", "").upper()
    country = (get_str(address, "country", where) or "").upper()
    code = str(tracking.get("tracking_product_code") or "").strip()
    values = {"number": number, "postcode": postcode, "country": country, "code": code}
    for placeholder, value in (*_WST_PLACEHOLDERS, *_AST_PLACEHOLDERS):
        link = link.replace(placeholder, quote(values[value], safe=""))
    return company, link


def _shipment_status(status: str | None, store: WooCommerceStore) -> ShipmentStatus | None:
    """What the order's status says about its parcel (``store.shipping_statuses``); None: not shipped."""
    meaning = store.shipping_statuses.get(status or "")
    return _SHIPMENT_FOR_MEANING.get(meaning) if meaning else None


def _shipment(o: Body, order: Order, items: list[dict[str, Any]], store: WooCommerceStore) -> list[Event]:
    """A FulfillmentUpdated from the order's status and Shipment Tracking meta, when it shipped.

    ``completed`` is a parcel on its way only for an order that ships: WooCommerce completes a
    virtual or downloadable order at payment, and a store completes a pickup when it is collected.
    Every item's number and link are kept (``tracking_numbers`` / ``tracking_urls``), so a parcel the
    store adds later is told of; the first item's is what a template shows."""
    tracking = items[0] if items else {}
    status = _shipment_status(order.platform_status, store)
    if status is not None and order.platform_status == "completed" and not tracking and not _ships(o):
        status = None
    if status is None and _tracked(order.platform_status, tracking):
        status = ShipmentStatus.IN_TRANSIT
    if status is None:
        return []
    company, link = _tracking_link(o, tracking, store)
    numbers = [str(i.get("tracking_number") or "").strip() for i in items]
    links = [_tracking_link(o, i, store)[1] for i in items]
    return [
        FulfillmentUpdated(
            fulfillment=Fulfillment(
                external_id=f"{order.external_id}:wc",
                order_external_id=order.external_id,
                status="success",
                shipment_status=status,
                tracking_company=company,
                tracking_number=str(tracking.get("tracking_number") or "").strip() or None,
                tracking_url=link,
                # paired by position: only when every item has both a number and a link
                tracking_numbers=tuple(n for n in numbers if n),
                tracking_urls=tuple(u for u in links if u) if all(numbers) and all(links) else (),
                created_at=order.updated_at,
                updated_at=order.updated_at,
            )
        )
    ]


def _order(o: Body, store: WooCommerceStore, tracking: dict[str, Any]) -> Order:
    order_id = req_id(o, "id")
    status = req_str(o, "status").lower()
    created_at = get_datetime(o, "date_created_gmt") or req_datetime(o, "date_created")
    updated_at = get_datetime(o, "date_modified_gmt") or get_datetime(o, "date_modified") or created_at
    payment_method = get_str(o, "payment_method")
    gateway_names = tuple(n for n in (payment_method, get_str(o, "payment_method_title")) if n)
    # the gateway id or its title: a configured name, or words that say cash on delivery (a COD
    # plugin's own id such as "cod_advance", a renamed "Cash on delivery" method)
    is_cod = is_cod_gateway(gateway_names, store.cod_gateway_names())
    delivered = status == "completed" or store.shipping_statuses.get(status) == "delivered"
    paid = delivered if is_cod else (get_datetime(o, "date_paid_gmt") or get_datetime(o, "date_paid")) is not None
    number = get_id(o, "number") or order_id
    # the REST order's own pay link (v3 ``payment_url``) knows the store's checkout page, whose
    # slug is translated or renamed on many stores; the thank-you page is on the same page
    own_pay_url = _http_url(get_str(o, "payment_url"))
    status_url, payment_url = _order_urls(order_id, get_str(o, "order_key"), own_pay_url, store)
    payment_url = own_pay_url or payment_url
    payment_state = _payment_state(status, paid)
    if payment_state is not PaymentState.PAID and status not in _PAYABLE_STATUSES:
        payment_url = None  # unpaid, and the pay page would refuse it: no link to offer
    return Order(
        external_id=order_id,
        name=f"#{number}",
        created_at=created_at,
        updated_at=updated_at,
        # WooCommerce keeps no cancel time: the last change of a cancelled (or binned) order is the best we have
        cancelled_at=updated_at if status in _CLOSED else None,
        payment_state=payment_state,
        # shipped by its status, or by tracking a store added while the order stayed in processing
        fulfillment_state=(FulfillmentState.FULFILLED if status in store.shipping_statuses or _tracked(status, tracking)
                           else FulfillmentState.UNFULFILLED),
        platform_status=status,
        is_cod=is_cod,
        gateway_names=gateway_names,
        total=req_decimal(o, "total"),
        currency=req_str(o, "currency"),
        customer=_order_customer(o, store),
        line_items=_line_items(o),
        status_url=status_url,
        payment_url=payment_url,
        channel=_CHANNEL_FOR_CREATED_VIA.get((get_str(o, "created_via") or "").strip().lower(), SalesChannel.ONLINE),
    )


def _payment_state(status: str, paid: bool) -> PaymentState:
    if status == "refunded":
        return PaymentState.REFUNDED
    if paid or status == "completed":
        return PaymentState.PAID
    return _UNPAID_STATES.get(status, PaymentState.OTHER)


def _http_url(value: str | None) -> str | None:
    return value if value and value.startswith(("https://", "http://")) else None


def _order_urls(order_id: str, order_key: str | None, pay_url: str | None, store: WooCommerceStore) -> tuple[str | None, str | None]:
    """The customer-facing thank-you and pay-for-order pages; both need the order key.

    Both are endpoints of the checkout page, whose slug many stores rename or translate
    (``/kasse/``, ``/finalizar-compra/``): taken from the order's own pay link when it has one,
    else the store's ``checkout_url``, else the default ``{site}/checkout/``."""
    if not order_key:
        return None, None
    key = quote(order_key, safe="")
    received = _received_from_pay_url(pay_url, order_id, key)
    if received is not None:
        return received, pay_url
    checkout = str(store.checkout_url or f"{str(store.site_url).rstrip('/')}/checkout/").rstrip("/")
    return (
        f"{checkout}/order-received/{order_id}/?key={key}",
        f"{checkout}/order-pay/{order_id}/?pay_for_order=true&key={key}",
    )


def _received_from_pay_url(pay_url: str | None, order_id: str, key: str) -> str | None:
    """The thank-you page beside a pay link: ``{checkout}/order-pay/{id}/…`` ->
    ``{checkout}/order-received/{id}/?key=…``; with plain permalinks ``?page_id=7&order-pay={id}…``
    -> ``?page_id=7&order-received={id}&key=…``. None for a link of another shape (a renamed
    ``order-pay`` endpoint: its thank-you endpoint's name is not in it)."""
    if not pay_url:
        return None
    parts = urlsplit(pay_url)
    marker = f"/order-pay/{order_id}/"
    if marker in parts.path:
        checkout = parts.path[: parts.path.index(marker)]
        return urlunsplit((parts.scheme, parts.netloc, f"{checkout}/order-received/{order_id}/", f"key={key}", ""))
    query = parse_qsl(parts.query, keep_blank_values=True)
    if ("order-pay", order_id) in query:
        kept = [(k, v) for k, v in query if k not in ("order-pay", "pay_for_order", "key")]
        return urlunsplit((parts.scheme, parts.netloc, parts.path,
                           urlencode([*kept, ("order-received", order_id)]) + f"&key={key}", ""))
    return None


def _order_customer(o: Body, store: WooCommerceStore) -> Customer:
    billing = get_obj(o, "billing") or {}
    shipping = get_obj(o, "shipping") or {}
    return _customer(
        external_id=get_id(o, "customer_id", zero_is_none=True),  # 0 = guest checkout
        email=get_str(billing, "email", "billing"),
        first_name=first_str(get_str(billing, "first_name", "billing"), get_str(shipping, "first_name", "shipping")),
        last_name=first_str(get_str(billing, "last_name", "billing"), get_str(shipping, "last_name", "shipping")),
        billing=billing,
        shipping=shipping,
        store=store,
    )


def _customer(
    *,
    external_id: str | None,
    email: str | None,
    first_name: str | None,
    last_name: str | None,
    billing: Body,
    shipping: Body,
    store: WooCommerceStore,
) -> Customer:
    """Phone from billing, else shipping (shipping.phone exists since WC 5.6), each read with its own
    address's country (a recipient abroad writes a local number), else the store's."""
    billing_country = get_str(billing, "country", "billing")
    shipping_country = get_str(shipping, "country", "shipping")
    country = (billing_country or shipping_country or store.default_country).upper()
    billing_phone = get_str(billing, "phone", "billing")
    if billing_phone and billing_phone.strip():
        phone = normalize_phone(billing_phone, country)
    else:
        phone = normalize_phone(get_str(shipping, "phone", "shipping"), (shipping_country or store.default_country).upper())
    return Customer(
        external_id=external_id,
        first_name=first_name,
        last_name=last_name,
        email=email,
        phone=phone,
        country=country,
    )


def _plain(name: str | None) -> str:
    """A product or line name as the customer reads it: WordPress keeps titles HTML-escaped (``Salt &amp;
    Pepper``, a variation's ``Ship Your Idea &ndash; Color: Black``) and the REST API returns them so; a
    WhatsApp message shows text, where the entity would be printed as typed."""
    return html.unescape(name) if name and "&" in name else (name or "")


def _line_items(o: Body) -> tuple[LineItem, ...]:
    items = []
    for where, li in get_objects(o, "line_items"):
        price = get_decimal(li, "price", where)
        items.append(
            LineItem(
                external_id=get_id(li, "id", where),
                product_id=get_id(li, "product_id", where, zero_is_none=True),
                variant_id=get_id(li, "variation_id", where, zero_is_none=True),
                sku=get_str(li, "sku", where),
                title=_plain(get_str(li, "name", where)),
                quantity=get_int(li, "quantity", where, default=1),
                price=Decimal("0") if price is None else price,
                discount=_line_discount(li, where),
            )
        )
    return tuple(items)


def _line_discount(li: Body, where: str) -> Decimal:
    """What the line's coupons took off: ``subtotal`` (before discounts) less ``total`` (after)."""
    subtotal, total = get_decimal(li, "subtotal", where), get_decimal(li, "total", where)
    if subtotal is None or total is None or total >= subtotal:
        return Decimal("0")
    return subtotal - total


def _customer_updated(c: Body, store: WooCommerceStore) -> CustomerUpdated:
    billing = get_obj(c, "billing") or {}
    shipping = get_obj(c, "shipping") or {}
    customer = _customer(
        external_id=req_id(c, "id"),
        email=first_str(get_str(c, "email"), get_str(billing, "email", "billing")),
        first_name=first_str(get_str(c, "first_name"), get_str(billing, "first_name", "billing")),
        last_name=first_str(get_str(c, "last_name"), get_str(billing, "last_name", "billing")),
        billing=billing,
        shipping=shipping,
        store=store,
    )
    updated_at = get_datetime(c, "date_modified_gmt") or get_datetime(c, "date_modified")
    return CustomerUpdated(customer=customer, updated_at=updated_at)
