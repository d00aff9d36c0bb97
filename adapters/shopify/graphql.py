"""Shopify Admin GraphQL for the reconciliation job: the orders query and a node normaliser.

Webhook delivery is not guaranteed (platform-facts.md A1), so ``connector.sync`` pages
through ``orders(sortKey: UPDATED_AT, query: "updated_at:>='…'")`` (A6) and stores each
node in the inbox with topic ``sync/order``; the worker turns it into events here with the
same rules as the webhook normaliser (``adapters/shopify/normalize.py``): COD by gateway
name, phones parsed with the address country, numeric ids taken from the gids.

Field names checked against the GraphQL Admin reference (API 2026-07): ``statusPageUrl``
(since 2024-10), ``displayFinancialStatus`` (OrderDisplayFinancialStatus: AUTHORIZED,
EXPIRED, PAID, PARTIALLY_PAID, PARTIALLY_REFUNDED, PENDING, REFUNDED, VOIDED),
``checkoutToken`` (new in 2026-07, changelog 2026-05-15). ``Customer.phone`` /
``Customer.email`` are the older single-value fields **[VERIFY they are still served in
2026-07; the replacements are defaultPhoneNumber / defaultEmailAddress]**.

Query cost (A7): a connection costs ``2 + first × (cost of one node)``, an object 1, a
scalar or enum 0, and a single query may not ask for more than 1,000 points **[VERIFY]**.
A list of objects sized by ``first`` (``Order.fulfillments``, ``Fulfillment.trackingInfo``:
plain lists, no pageInfo) is counted like a connection, the upper bound **[VERIFY on a
live response]**. One order node here is ``node_cost()`` points, so ``orders(first: 100)``
with ``lineItems(first: 50)`` would be refused outright. The page size is therefore derived
from the cost (``page_size_for``): 8 orders a page, 994 points requested (before the
fulfilments and consent were read: 11 orders, 992 points). An order with more line items
than the page query asks for is completed with ``ORDER_LINES_QUERY``, one that lists as many
fulfilments as the page asks for with ``ORDER_FULFILLMENTS_QUERY``.

Lost webhooks the reconcile replaces besides the order's own (Shopify stops retrying after
about 4 hours, A1): each order's ``fulfillments`` (Fulfillment: ``id status displayStatus
createdAt updatedAt trackingInfo { company number url }``, API 2026-07) become the
``FulfillmentUpdated`` events the order webhooks' ``fulfillments[]`` produce
(``listed_on_order``: only a parcel that changed is news, so a re-read or a webhook heard
first sends nothing twice); the customer's ``defaultPhoneNumber`` consent (``marketingState`` /
``marketingUpdatedAt``, the SMS state ``customers_marketing_consent/update`` brings, and
``whatsAppMarketingConsent { state updatedAt }``, the WhatsApp topic's) becomes the same
``ConsentChanged`` those webhooks produce, dated, so an older state never overrides a newer one.
A customer none of whose orders changed is read by the customers pass (``CUSTOMERS_QUERY``, the
same phone consent fields, ``phone_consents`` the one reading of them for both), stored with topic
``sync/customer`` and normalised by ``normalize_customer_node``.
``displayStatus`` stands in for the webhook's ``shipment_status`` (the latest carrier event):
the carrier values are the same words; FULFILLED, MARKED_AS_FULFILLED, SUBMITTED and CANCELED
carry no carrier news (the webhook's ``null``); NOT_DELIVERED (a failed delivery the display enum names no
further) is ``not_delivered``, a failed delivery (``_SHIPMENT_STATUSES``) **[VERIFY that displayStatus follows the latest
fulfilment event, and that a fulfilment event moves the order's updatedAt, without which the
reconcile does not re-read the order]**.

Abandoned checkouts (``ABANDONED_CHECKOUTS_QUERY``, stored with topic ``sync/checkout`` by
``connector.checkout_poll``): how a polled ``AbandonedCheckout`` is keyed so that it lands on
the same checkout and journey run as its ``checkouts/*`` webhook is explained in
``adapters/shopify/checkouts.py``; ``normalize_checkout_node`` reads the key the poll chose
from the stored node's ``_storeloop.token``.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from decimal import Decimal
from typing import Any
from urllib.parse import parse_qs, urlsplit

from adapters._parse import (
    kept_quantity,
    as_object,
    first_str,
    get_bool,
    get_datetime,
    get_decimal,
    get_list,
    get_obj,
    get_objects,
    get_str,
    req_datetime,
    req_str,
)
from adapters.cod_gateways import is_cod
from adapters.shopify.delivery import delivery, sales_channel
from adapters.shopify.normalize import SMS_SOURCE, WHATSAPP_SOURCE, consent_state_of
from connector.config import ShopifyStore
from connector.contacts import normalize_phone
from connector.errors import NormalizationError
from connector.events import (
    Checkout,
    CheckoutUpdated,
    ConsentCategory,
    ConsentChanged,
    ConsentState,
    Customer,
    Delivery,
    Event,
    Fulfillment,
    FulfillmentState,
    FulfillmentUpdated,
    LineItem,
    Order,
    OrderCancelled,
    OrderPlaced,
    OrderUpdated,
    PaymentState,
    SalesChannel,
    ShipmentStatus,
)

log = logging.getLogger("storeloop.shopify")

MAX_QUERY_COST = 1000  # single-query ceiling (A7) [VERIFY]
LINES_PER_ORDER = 10  # line items fetched with the page; more are fetched per order
LINES_PAGE = 50
FULFILLMENTS_PER_ORDER = 5  # fulfilments fetched with the page; an order listing this many is asked again for all
FULFILLMENTS_PAGE = 50  # what that second ask reads (a plain list: no cursor to page on)
TRACKING_PER_FULFILLMENT = 3  # tracking numbers read per fulfilment (multi-package tracking)
MARKER = "_storeloop"  # added by the sync job to the stored node: {"placed": true} = first sight of a fresh order

_LINE_FIELDS = """
      id quantity title sku
      variant { id }
      product { id }
      originalUnitPriceSet { shopMoney { amount } }
"""
# an order's line also says how many the customer still has, whether it ships and what was taken
# off it (AbandonedCheckoutLineItem has neither of the first two; its discounts are not read)
_ORDER_LINE_FIELDS = _LINE_FIELDS + """      currentQuantity requiresShipping
      discountAllocations { allocatedAmountSet { shopMoney { amount } } }
"""
LINE_COST = 8  # the item, variant, product, price set + money, and the discount allocation + its set + money

_FULFILLMENT_FIELDS = """
        id status displayStatus createdAt updatedAt requiresShipping
        trackingInfo(first: $tracking) { company number url }
"""
# the phone's consent, as the order pages and the customers pass both read it (``phone_consents``)
_PHONE_CONSENT_FIELDS = "defaultPhoneNumber { phoneNumber marketingState marketingUpdatedAt whatsAppMarketingConsent { state updatedAt } }"
CONSENT_COST = 2  # the customer's defaultPhoneNumber and its whatsAppMarketingConsent


def fulfillment_cost(tracking: int = TRACKING_PER_FULFILLMENT) -> int:
    """One fulfilment: itself and its trackingInfo list (counted as a connection: 2 + tracking)."""
    return 1 + 2 + tracking


def fulfillments_cost(fulfillments: int = FULFILLMENTS_PER_ORDER, tracking: int = TRACKING_PER_FULFILLMENT) -> int:
    return 2 + fulfillments * fulfillment_cost(tracking)

ORDERS_QUERY = (
    """
query StoreloopReconcileOrders($first: Int!, $cursor: String, $q: String, $lines: Int!, $fulfillments: Int!, $tracking: Int!) {
  orders(first: $first, after: $cursor, sortKey: UPDATED_AT, query: $q) {
    pageInfo { hasNextPage endCursor }
    nodes {
      id name createdAt updatedAt cancelledAt
      displayFinancialStatus displayFulfillmentStatus paymentGatewayNames
      email phone currencyCode presentmentCurrencyCode statusPageUrl tags test checkoutToken customerLocale sourceName
      currentTotalPriceSet { shopMoney { amount currencyCode } presentmentMoney { amount currencyCode } }
      customer {
        id firstName lastName email phone
        """
    + _PHONE_CONSENT_FIELDS
    + """
      }
      shippingAddress { phone countryCodeV2 firstName lastName }
      billingAddress { phone countryCodeV2 firstName lastName }
      shippingLine { title code }
      lineItems(first: $lines) {
        pageInfo { hasNextPage endCursor }
        nodes {"""
    + _ORDER_LINE_FIELDS
    + """        }
      }
      fulfillments(first: $fulfillments) {"""
    + _FULFILLMENT_FIELDS
    + """      }
    }
  }
}
"""
)

ORDER_FULFILLMENTS_QUERY = (
    """
query StoreloopOrderFulfillments($id: ID!, $fulfillments: Int!, $tracking: Int!) {
  order(id: $id) {
    id
    fulfillments(first: $fulfillments) {"""
    + _FULFILLMENT_FIELDS
    + """    }
  }
}
"""
)

ORDER_LINES_QUERY = (
    """
query StoreloopOrderLines($id: ID!, $after: String, $lines: Int!) {
  order(id: $id) {
    id
    lineItems(first: $lines, after: $after) {
      pageInfo { hasNextPage endCursor }
      nodes {"""
    + _ORDER_LINE_FIELDS
    + """      }
    }
  }
}
"""
)


def node_cost(lines: int = LINES_PER_ORDER) -> int:
    """Requested cost of one order node: itself, customer, 2 addresses, price set + shop and
    presentment money, the shipping line, the line item connection (2 + lines × ``LINE_COST``),
    the customer's phone consent and the fulfilments (``fulfillments_cost``)."""
    return 1 + 1 + 2 + 3 + 1 + 2 + lines * LINE_COST + CONSENT_COST + fulfillments_cost()


def page_size_for(page_size: int, lines: int = LINES_PER_ORDER) -> int:
    """The largest ``first`` <= page_size whose requested cost stays under the ceiling."""
    fit = (MAX_QUERY_COST - 2) // node_cost(lines)
    return max(1, min(int(page_size), fit))


def query_cost(first: int, lines: int = LINES_PER_ORDER) -> int:
    return 2 + first * node_cost(lines)


LINES_QUERY_COST = 1 + 2 + LINES_PAGE * LINE_COST
FULFILLMENTS_QUERY_COST = 1 + fulfillments_cost(FULFILLMENTS_PAGE)


# ---- the customers pass: consent changed on a customer none of whose orders changed ------------
#
# ``customers(first, after, sortKey: UPDATED_AT, query: "updated_at:>='…'")`` (CustomerSortKeys has
# UPDATED_AT; ``updated_at`` is a customer search term, as in ``customersCount``; needs read_customers).
# Only what the consent path reads: the id, ``updatedAt`` for the cursor, and the phone's consent, the
# same fields the order pages read on ``Order.customer``. **[VERIFY on a live store that a consent
# change moves ``Customer.updatedAt``, without which the pass does not see it, and that the search
# index honours the time of day in ``updated_at:>=`` (a coarser match only re-reads more).]**

CUSTOMERS_QUERY = (
    """
query StoreloopReconcileCustomers($first: Int!, $cursor: String, $q: String) {
  customers(first: $first, after: $cursor, sortKey: UPDATED_AT, query: $q) {
    pageInfo { hasNextPage endCursor }
    nodes {
      id updatedAt
      """
    + _PHONE_CONSENT_FIELDS
    + """
    }
  }
}
"""
)
CUSTOMERS_PAGE_MAX = 250  # a connection's ``first`` ceiling (A6)


def customer_node_cost() -> int:
    """One customer node: itself and its phone's consent (``CONSENT_COST``)."""
    return 1 + CONSENT_COST


def customers_page_size_for(page_size: int) -> int:
    """The largest ``first`` <= page_size (and the connection's ceiling) whose requested cost stays under the limit."""
    fit = (MAX_QUERY_COST - 2) // customer_node_cost()
    return max(1, min(int(page_size), CUSTOMERS_PAGE_MAX, fit))


def customers_query_cost(first: int) -> int:
    return 2 + first * customer_node_cost()


def legacy_id(gid: Any, where: str) -> str | None:
    """``gid://shopify/Order/123`` -> ``"123"`` (a plain id passes through)."""
    if gid is None:
        return None
    if isinstance(gid, bool) or not isinstance(gid, (str, int)):
        raise NormalizationError(f"{where}: expected an id")
    text = str(gid).strip()
    if not text:
        return None
    tail = text.rsplit("/", 1)[-1].split("?", 1)[0]
    if not tail:
        raise NormalizationError(f"{where}: malformed gid")
    return tail


# OrderDisplayFinancialStatus lower-cased = the REST financial_status values; EXPIRED -> other.
_PAYMENT_STATES = {s.value: s for s in PaymentState if s not in (PaymentState.OTHER, PaymentState.FAILED)}

# OrderDisplayFulfillmentStatus. REST reports ``null`` (unfulfilled) for the open/in-progress
# states, so they map to UNFULFILLED like the webhook's null; RESTOCKED is "other".
_FULFILLMENT_STATES = {
    "UNFULFILLED": FulfillmentState.UNFULFILLED,
    "PENDING_FULFILLMENT": FulfillmentState.UNFULFILLED,
    "OPEN": FulfillmentState.UNFULFILLED,
    "IN_PROGRESS": FulfillmentState.UNFULFILLED,
    "ON_HOLD": FulfillmentState.UNFULFILLED,
    "SCHEDULED": FulfillmentState.UNFULFILLED,
    "REQUEST_DECLINED": FulfillmentState.UNFULFILLED,
    "PARTIALLY_FULFILLED": FulfillmentState.PARTIAL,
    "FULFILLED": FulfillmentState.FULFILLED,
}


def order_id_of(node: dict[str, Any]) -> str:
    oid = legacy_id(node.get("id"), "id")
    if oid is None:
        raise NormalizationError("id: missing")
    return oid


def normalize_node(node: dict, store: ShopifyStore) -> list[Event]:
    """One ``orders.nodes[]`` item (as stored by the sync job) -> one order event.

    ``OrderCancelled`` when ``cancelledAt`` is set; ``OrderPlaced`` when the sync job saw
    the order for the first time while it was fresh (marker ``_storeloop.placed``: its
    ``orders/create`` webhook never arrived, and the journeys start on OrderPlaced);
    otherwise ``OrderUpdated``.
    """
    data = as_object(node, "body")
    order = _order(data, store)
    listed = _listed_fulfillments(data, order.external_id)
    # the order carries them too: its event is heard before theirs (``Order.fulfillments``)
    order = order.model_copy(update={"fulfillments": tuple(e.fulfillment for e in listed)})
    event: Event
    if order.cancelled_at is not None:
        event = OrderCancelled(order=order)
    elif (get_obj(data, MARKER) or {}).get("placed") is True:
        event = OrderPlaced(order=order)
    else:
        event = OrderUpdated(order=order)
    return [event, *listed, *_consents(data, store)]


# FulfillmentDisplayStatus (2026-10) -> the webhook's shipment_status: the carrier events are the same
# words; FULFILLED, MARKED_AS_FULFILLED, SUBMITTED and CANCELED say nothing of the carrier (the webhook's
# null; a cancelled fulfilment is its ``status``). NOT_DELIVERED is a failed delivery the display names no
# further (it has no RETURNING_TO_SENDER or BUYER_ACTION_REQUIRED): ``not_delivered``, asked about and handed
# off as the webhook's failures are. LABEL_VOIDED is "other": whether the parcel still goes is the
# fulfilment's own status, not this word. New values are "other", never an error.
_SHIPMENT_STATUSES = {s.value.upper(): s for s in ShipmentStatus if s not in (ShipmentStatus.NONE, ShipmentStatus.OTHER)}
_NO_CARRIER_NEWS = frozenset({"FULFILLED", "MARKED_AS_FULFILLED", "SUBMITTED", "CANCELED"})


def _shipment_status(display: str | None) -> ShipmentStatus:
    if display is None or display.upper() in _NO_CARRIER_NEWS:
        return ShipmentStatus.NONE
    return _SHIPMENT_STATUSES.get(display.upper(), ShipmentStatus.OTHER)


def _listed_fulfillments(o: dict[str, Any], order_id: str) -> list[FulfillmentUpdated]:
    """The order's ``fulfillments``, each as its parcel's news, as the order webhooks' ``fulfillments[]``
    (``listed_on_order``: an unchanged one is heard by no journey). One that cannot be read is left out
    with a log line, never the order with it."""
    listed: list[FulfillmentUpdated] = []
    items = o.get("fulfillments")
    for i, item in enumerate(items if isinstance(items, list) else ()):
        where = f"fulfillments[{i}]"
        try:
            listed.append(FulfillmentUpdated(fulfillment=_fulfillment(as_object(item, where), where, order_id), listed_on_order=True))
        except NormalizationError as exc:
            log.warning("order %s: fulfilment read by the reconcile left out: %s", order_id, exc)
    return listed


def _fulfillment(f: dict[str, Any], where: str, order_id: str) -> Fulfillment:
    """A GraphQL Fulfillment as the webhook's (normalize._read_fulfillment): status lower-cased to the
    REST words (SUCCESS -> success), the first tracking entry's company, number and link, and every
    number and link in order."""
    fid = legacy_id(f.get("id"), f"{where}.id")
    if fid is None:
        raise NormalizationError(f"{where}.id: missing")
    created_at = req_datetime(f, "createdAt", where)
    tracking = [t for _, t in get_objects(f, "trackingInfo", where)]
    numbers = tuple(n for t in tracking if (n := get_str(t, "number", f"{where}.trackingInfo")))
    urls = tuple(u for t in tracking if (u := get_str(t, "url", f"{where}.trackingInfo")))
    return Fulfillment(
        external_id=fid,
        order_external_id=order_id,
        status=req_str(f, "status", where).lower(),
        shipment_status=_shipment_status(get_str(f, "displayStatus", where)),
        tracking_company=first_str(*(get_str(t, "company", f"{where}.trackingInfo") for t in tracking)),
        tracking_number=numbers[0] if numbers else None,
        tracking_url=urls[0] if urls else None,
        tracking_numbers=numbers,
        tracking_urls=urls,
        # read ``first: TRACKING_PER_FULFILLMENT``: as many as that may leave some out, so none is taken as removed
        tracking_complete=len(tracking) < TRACKING_PER_FULFILLMENT,
        # any of its lines ships (a gift card's or a digital line's fulfilment does not); absent: yes
        ships=get_bool(f, "requiresShipping", where, default=True),
        created_at=created_at,
        updated_at=get_datetime(f, "updatedAt", where) or created_at,
    )


def _consents(o: dict[str, Any], store: ShopifyStore) -> list[Event]:
    """The consent of the order's customer (``phone_consents``), read again with every update of any of
    her orders. One that cannot be read is left out with a log line, not the order with it."""
    try:
        return phone_consents(get_obj(o, "customer") or {}, store, "customer")
    except NormalizationError as exc:
        log.warning("order %s: customer consent read by the reconcile left out: %s", o.get("id"), exc)
        return []


def phone_consents(customer: dict[str, Any], store: ShopifyStore, where: str) -> list[Event]:
    """A GraphQL ``Customer``'s marketing consent as the consent webhooks bring it: the phone's SMS state
    (``customers_marketing_consent/update``) and its WhatsApp consent (the 2026-07 topic). The one reading of
    it, for the order pages (``Order.customer``) and the customers pass alike.

    Only a dated state: ``record_consent`` keeps the newest, so a state older than what is stored (her STOP
    on WhatsApp since, a consent webhook heard after the read) changes nothing; an undated one would be
    taken as of now and could override that. No phone: nothing. NormalizationError when it cannot be read."""
    phone = get_obj(customer, "defaultPhoneNumber", where) or {}
    if not phone:
        return []
    at_phone = f"{where}.defaultPhoneNumber"
    customer_id = legacy_id(customer.get("id"), f"{where}.id")
    number = normalize_phone(get_str(phone, "phoneNumber", at_phone), store.default_country)
    whatsapp = get_obj(phone, "whatsAppMarketingConsent", at_phone) or {}
    out: list[Event] = []
    for state, at, source in (
        (get_str(phone, "marketingState", at_phone), get_datetime(phone, "marketingUpdatedAt", at_phone), SMS_SOURCE),
        (get_str(whatsapp, "state", f"{at_phone}.whatsAppMarketingConsent"),
         get_datetime(whatsapp, "updatedAt", f"{at_phone}.whatsAppMarketingConsent"), WHATSAPP_SOURCE),
    ):
        consent = consent_state_of(state)
        if at is not None and consent is not ConsentState.UNKNOWN:
            out.append(ConsentChanged(customer_external_id=customer_id, phone=number, category=ConsentCategory.MARKETING,
                                      state=consent, source=source, occurred_at=at))
    return out


def normalize_customer_node(node: dict, store: ShopifyStore) -> list[Event]:
    """One ``customers.nodes[]`` item (as stored by the customers pass) -> the ``ConsentChanged`` events
    its consent webhooks would have brought; ``[]`` when it carries no dated consent. A consent that cannot
    be read fails the row (NormalizationError), which keeps its body for a person to look at."""
    return phone_consents(as_object(node, "body"), store, "customer")


def _money(o: dict[str, Any], key: str, where: str = "") -> Decimal | None:
    price_set = get_obj(o, key, where) or {}
    money = get_obj(price_set, "shopMoney", f"{where}.{key}" if where else key) or {}
    return get_decimal(money, "amount", f"{key}.shopMoney")


def _order(o: dict[str, Any], store: ShopifyStore) -> Order:
    created_at = req_datetime(o, "createdAt")
    financial = get_str(o, "displayFinancialStatus")
    fulfillment = get_str(o, "displayFulfillmentStatus")
    gateways = tuple(g for g in (_strings(o, "paymentGatewayNames")) if g.strip())
    total = _money(o, "currentTotalPriceSet")
    if total is None:
        raise NormalizationError("currentTotalPriceSet.shopMoney.amount: missing")
    price_set = get_obj(get_obj(o, "currentTotalPriceSet") or {}, "shopMoney") or {}
    currency = first_str(get_str(o, "currencyCode"), get_str(price_set, "currencyCode", "currentTotalPriceSet.shopMoney"))
    charged, charged_in = _charged(o, currency or "")
    status_url = get_str(o, "statusPageUrl")
    line_items, needs_shipping = _order_lines(o)
    channel = sales_channel(get_str(o, "sourceName"))
    return Order(
        external_id=order_id_of(o),
        name=req_str(o, "name"),
        created_at=created_at,
        updated_at=get_datetime(o, "updatedAt") or created_at,
        cancelled_at=get_datetime(o, "cancelledAt"),
        payment_state=_PAYMENT_STATES.get((financial or "").lower(), PaymentState.OTHER),
        fulfillment_state=_FULFILLMENT_STATES.get((fulfillment or "").upper(), FulfillmentState.OTHER)
        if fulfillment else FulfillmentState.UNFULFILLED,
        platform_status=financial.lower() if financial else None,
        is_cod=is_cod(gateways, store.cod_gateway_names()),
        gateway_names=gateways,
        total=total,
        currency=currency or "",
        customer_total=charged,
        customer_currency=charged_in,
        customer=_customer(o, store),
        line_items=line_items,
        checkout_token=get_str(o, "checkoutToken"),
        status_url=status_url,
        payment_url=status_url,  # as for webhooks: the status page is where a pending payment is completed
        tags=tuple(t.strip() for t in _strings(o, "tags") if t.strip()),
        test=get_bool(o, "test"),
        channel=channel,
        delivery=_delivery(o, needs_shipping, channel, store),
    )


def _charged(o: dict[str, Any], shop_currency: str) -> tuple[Decimal | None, str | None]:
    """As the webhook's (normalize._charged): ``currentTotalPriceSet.presentmentMoney`` when the
    order's ``presentmentCurrencyCode`` is not the shop's; a node stored without them: (None, None)."""
    presentment = get_str(o, "presentmentCurrencyCode")
    if presentment is None or presentment.upper() == shop_currency.upper():
        return None, None
    money = get_obj(get_obj(o, "currentTotalPriceSet") or {}, "presentmentMoney", "currentTotalPriceSet") or {}
    amount = get_decimal(money, "amount", "currentTotalPriceSet.presentmentMoney")
    if amount is None:
        return None, None
    return amount, get_str(money, "currencyCode", "currentTotalPriceSet.presentmentMoney") or presentment.upper()


def _delivery(o: dict[str, Any], needs_shipping: bool, channel: SalesChannel, store: ShopifyStore) -> Delivery:
    """As the webhook's (``adapters/shopify/delivery.py``), from the order's ``shippingLine``."""
    def names() -> list[list[str | None]]:
        line = get_obj(o, "shippingLine") or {}
        return [[get_str(line, "title", "shippingLine"), get_str(line, "code", "shippingLine")]] if line else []
    return delivery(needs_shipping, channel, store.pickup_lines, names)


def _strings(o: dict[str, Any], key: str) -> list[str]:
    out = []
    for i, value in enumerate(get_list(o, key)):
        if not isinstance(value, str):
            raise NormalizationError(f"{key}[{i}]: expected a string")
        out.append(value)
    return out


def _address_country(shipping: dict[str, Any], billing: dict[str, Any], store: ShopifyStore) -> str | None:
    """The country a phone is parsed with: the shipping address's, else the billing's, else the store's."""
    return (
        get_str(shipping, "countryCodeV2", "shippingAddress")
        or get_str(billing, "countryCodeV2", "billingAddress")
        or store.default_country
    )


def _customer(o: dict[str, Any], store: ShopifyStore) -> Customer:
    """Phone: the order's, the customer's, the shipping then billing address's (as for webhooks),
    parsed with the shipping (else billing) country, else the store's default."""
    c = get_obj(o, "customer") or {}
    shipping = get_obj(o, "shippingAddress") or {}
    billing = get_obj(o, "billingAddress") or {}
    country = _address_country(shipping, billing, store)
    raw_phone = first_str(
        get_str(o, "phone"),
        get_str(c, "phone", "customer"),
        get_str(shipping, "phone", "shippingAddress"),
        get_str(billing, "phone", "billingAddress"),
    )
    return Customer(
        external_id=legacy_id(c.get("id"), "customer.id"),
        first_name=first_str(get_str(c, "firstName", "customer"), get_str(billing, "firstName", "billingAddress"),
                             get_str(shipping, "firstName", "shippingAddress")),
        last_name=first_str(get_str(c, "lastName", "customer"), get_str(billing, "lastName", "billingAddress"),
                            get_str(shipping, "lastName", "shippingAddress")),
        email=first_str(get_str(o, "email"), get_str(c, "email", "customer")),
        phone=normalize_phone(raw_phone, country),
        country=country.upper(),
        locale=get_str(o, "customerLocale"),
    )


def _line_items(o: dict[str, Any]) -> tuple[LineItem, ...]:
    return _order_lines(o)[0]


def _order_lines(o: dict[str, Any]) -> tuple[tuple[LineItem, ...], bool]:
    """The lines the customer still has (``currentQuantity``: a line removed by an edit or refunded
    and restocked is at 0 and left out, as the webhook's ``current_quantity``), and whether any ships
    (``requiresShipping``; absent, as on a checkout's line, or no lines at all: taken to ship)."""
    connection = get_obj(o, "lineItems") or {}
    items = []
    ships = False
    for where, li in get_objects(connection, "nodes", "lineItems"):
        quantity = kept_quantity(li, "currentQuantity", "quantity", where)
        if quantity is None:
            continue
        ships = ships or get_bool(li, "requiresShipping", where, default=True)
        variant = get_obj(li, "variant", where) or {}
        product = get_obj(li, "product", where) or {}
        price = _money(li, "originalUnitPriceSet", where)
        items.append(
            LineItem(
                external_id=legacy_id(li.get("id"), f"{where}.id"),
                product_id=legacy_id(product.get("id"), f"{where}.product.id"),
                variant_id=legacy_id(variant.get("id"), f"{where}.variant.id"),
                sku=get_str(li, "sku", where),
                title=get_str(li, "title", where) or "",
                quantity=quantity,
                price=Decimal("0") if price is None else price,
                discount=_line_discount(li, where),
            )
        )
    return tuple(items), ships or not items


def _line_discount(li: dict[str, Any], where: str) -> Decimal:
    """The line's ``discountAllocations`` in the shop's money, as the webhook's ``discount_allocations``:
    a reorder credited from an order the reconcile saw first counts what the customer paid."""
    total = Decimal("0")
    for at, allocation in get_objects(li, "discountAllocations", where):
        total += _money(allocation, "allocatedAmountSet", at) or Decimal("0")
    return total


def fulfillments_truncated(node: dict[str, Any]) -> bool:
    """Whether the page may not hold all of an order's fulfilments (a plain list: it lists as many as asked for)."""
    listed = node.get("fulfillments")
    return isinstance(listed, list) and len(listed) >= FULFILLMENTS_PER_ORDER


def lines_truncated(node: dict[str, Any]) -> str | None:
    """The lineItems end cursor when the page query did not return all of an order's lines."""
    connection = node.get("lineItems")
    if not isinstance(connection, dict):
        return None
    info = connection.get("pageInfo")
    if isinstance(info, dict) and info.get("hasNextPage") and isinstance(info.get("endCursor"), str):
        return info["endCursor"]
    return None


# ---- abandoned checkouts (the poll in connector/checkout_poll.py) -------------------------
#
# Field names from the GraphQL Admin reference, API 2026-07: AbandonedCheckout {id name
# abandonedCheckoutUrl createdAt updatedAt completedAt customer billingAddress shippingAddress
# totalPriceSet lineItems ...} (no email, phone, token or marketing flag on the checkout
# itself); abandonedCheckouts(first, after, query, sortKey) with the search fields
# created_at, updated_at, id, status, recovery_state, email_state; sort keys CHECKOUT_ID,
# CREATED_AT, CUSTOMER_NAME, ID, RELEVANCE, TOTAL_PRICE (no UPDATED_AT, so pages cannot be
# read in update order: the poll moves its cursor once, after the last page).
# AbandonedCheckoutLineItem {id title quantity sku variant product originalUnitPriceSet}.
# Customer.defaultEmailAddress / defaultPhoneNumber exist since 2025-04 (changelog "Adding
# defaultEmailAddress/defaultPhoneNumber field to Customer"); CustomerPhoneNumber.marketingState
# is deprecated since 2026-04 but still served; CustomerPhoneNumber.whatsAppMarketingConsent
# is new in 2026-07 (platform-facts.md A5) [VERIFY on a 2026-07 store: a field the version
# does not have fails the whole query]. Needs read_orders plus the staff permission
# manage_abandoned_checkouts.

CHECKOUT_LINES = 10  # line items fetched per checkout; only the first title reaches a reminder

ABANDONED_CHECKOUTS_QUERY = (
    """
query StoreloopAbandonedCheckouts($first: Int!, $cursor: String, $q: String, $lines: Int!) {
  abandonedCheckouts(first: $first, after: $cursor, query: $q, sortKey: ID) {
    pageInfo { hasNextPage endCursor }
    nodes {
      id name abandonedCheckoutUrl createdAt updatedAt completedAt
      totalPriceSet { presentmentMoney { amount currencyCode } }
      customer {
        id firstName lastName
        defaultEmailAddress { emailAddress marketingState }
        defaultPhoneNumber { phoneNumber marketingState whatsAppMarketingConsent { state } }
      }
      shippingAddress { phone countryCodeV2 firstName lastName }
      billingAddress { phone countryCodeV2 firstName lastName }
      lineItems(first: $lines) {
        pageInfo { hasNextPage endCursor }
        nodes {"""
    + _LINE_FIELDS
    + """        }
      }
    }
  }
}
"""
)


def checkout_node_cost(lines: int = CHECKOUT_LINES) -> int:
    """Requested cost of one checkout node: itself, total price set + money, customer, its email
    address, phone number and WhatsApp consent, 2 addresses (9), and the line item connection
    (2 + lines x (item, variant, product, price set, money))."""
    return 9 + 2 + lines * 5


def checkout_page_size_for(page_size: int, lines: int = CHECKOUT_LINES) -> int:
    """The largest ``first`` <= page_size whose requested cost stays under the ceiling."""
    fit = (MAX_QUERY_COST - 2) // checkout_node_cost(lines)
    return max(1, min(int(page_size), fit))


def checkout_query_cost(first: int, lines: int = CHECKOUT_LINES) -> int:
    return 2 + first * checkout_node_cost(lines)


_LINK_SEGMENT = re.compile(r"[A-Za-z0-9_\-]{1,128}")


@dataclass(frozen=True, slots=True)
class RecoveryLink:
    """What a Shopify recovery URL names. ``form`` is ``"token"`` for the classic
    ``/{shop id}/checkouts/{checkout token}/recover?key=...`` and ``"ac"`` for
    ``/{shop id}/checkouts/ac/{cart token}/recover?key=...``; ``ref`` is that path segment,
    ``key`` the per-checkout secret in the query string."""

    form: str
    ref: str
    key: str | None

    @property
    def identity(self) -> str:
        """Equal for two URLs of the same checkout, whatever the host or extra parameters (``locale``)."""
        return f"{self.form}:{self.ref}:{self.key or ''}"


def recovery_link(url: Any) -> RecoveryLink | None:
    """Parse a recovery URL (``abandoned_checkout_url`` / ``abandonedCheckoutUrl``); None when it is
    not one we recognise."""
    if not isinstance(url, str) or not url.strip():
        return None
    try:
        parts = urlsplit(url.strip())
    except ValueError:
        return None
    segments = [seg for seg in parts.path.split("/") if seg]
    if "checkouts" not in segments:
        return None
    rest = segments[segments.index("checkouts") + 1:]
    if len(rest) >= 3 and rest[0] == "ac" and rest[2] == "recover":
        form, ref = "ac", rest[1]
    elif len(rest) >= 2 and rest[1] == "recover":
        form, ref = "token", rest[0]
    else:
        return None
    if not _LINK_SEGMENT.fullmatch(ref):
        return None
    keys = parse_qs(parts.query).get("key")
    return RecoveryLink(form, ref, keys[0] if keys else None)


def checkout_id_of(node: dict[str, Any]) -> str:
    cid = legacy_id(node.get("id"), "id")
    if cid is None:
        raise NormalizationError("id: missing")
    return cid


def link_token(node: dict[str, Any]) -> str | None:
    """The checkout token when the recovery URL carries it (the classic form), else None."""
    link = recovery_link(node.get("abandonedCheckoutUrl"))
    return link.ref if link is not None and link.form == "token" else None


def fallback_token(checkout_id: str) -> str:
    """The key of a checkout whose token we cannot learn: Shopify's checkout id (see checkouts.py)."""
    return f"id:{checkout_id}"


def normalize_checkout_node(node: dict, store: ShopifyStore) -> list[Event]:
    """One ``abandonedCheckouts.nodes[]`` item (as stored by the poll) -> one ``CheckoutUpdated``,
    the event a ``checkouts/update`` webhook produces. A completed checkout (``completedAt``)
    is passed on as such: the recovery journey starts nothing for it and ends a running ladder.

    The token is the one the poll chose (``_storeloop.token``: the webhook's token when we know
    it); a node stored without one is keyed by the token in its recovery URL, else by its id.
    """
    data = as_object(node, "body")
    marker = get_obj(data, MARKER) or {}
    token = get_str(marker, "token", MARKER) or link_token(data) or fallback_token(checkout_id_of(data))
    created_at = req_datetime(data, "createdAt")
    # what the customer saw, in their currency (as the checkouts/* webhook's total_price); a node
    # stored before the poll asked for presentmentMoney has the shop's money only
    price_set = get_obj(data, "totalPriceSet") or {}
    price = get_obj(price_set, "presentmentMoney", "totalPriceSet") or get_obj(price_set, "shopMoney", "totalPriceSet") or {}
    total = get_decimal(price, "amount", "totalPriceSet.presentmentMoney")
    if total is None:
        raise NormalizationError("totalPriceSet.presentmentMoney.amount: missing")
    customer, accepts_marketing = _checkout_customer(data, store)
    checkout = Checkout(
        token=token,
        created_at=created_at,
        updated_at=get_datetime(data, "updatedAt") or created_at,
        completed_at=get_datetime(data, "completedAt"),
        recovery_url=get_str(data, "abandonedCheckoutUrl"),
        total=total,
        currency=req_str(price, "currencyCode", "totalPriceSet.presentmentMoney"),
        customer=customer,
        line_items=_line_items(data),
        accepts_marketing=accepts_marketing,
        phone_on_checkout=False,  # the node has no checkout phone: the customer's default, else an address's
    )
    return [CheckoutUpdated(checkout=checkout)]


def _checkout_customer(o: dict[str, Any], store: ShopifyStore) -> tuple[Customer, bool]:
    """The buyer, and whether they opted in to marketing.

    Phone: the customer's default phone, then the shipping and billing address (as for the
    webhook, which also has the checkout's own phone fields, absent here), parsed with the
    shipping (else billing) country, else the store's default.

    Marketing: the webhook's ``buyer_accepts_sms_marketing`` has no field on AbandonedCheckout;
    the nearest is the customer's consent, which the checkout's checkbox sets: the phone's SMS
    ``marketingState`` or its WhatsApp consent ``state`` equal to ``SUBSCRIBED`` counts as the
    same opt-in [VERIFY that the checkbox is reflected on the customer before the checkout is
    abandoned]. An email opt-in is no consent to WhatsApp marketing (platform-facts A5, C7).
    """
    c = get_obj(o, "customer") or {}
    email = get_obj(c, "defaultEmailAddress", "customer") or {}
    phone = get_obj(c, "defaultPhoneNumber", "customer") or {}
    whatsapp = get_obj(phone, "whatsAppMarketingConsent", "customer.defaultPhoneNumber") or {}
    shipping = get_obj(o, "shippingAddress") or {}
    billing = get_obj(o, "billingAddress") or {}
    country = _address_country(shipping, billing, store)
    raw_phone = first_str(
        get_str(phone, "phoneNumber", "customer.defaultPhoneNumber"),
        get_str(shipping, "phone", "shippingAddress"),
        get_str(billing, "phone", "billingAddress"),
    )
    states = (
        get_str(phone, "marketingState", "customer.defaultPhoneNumber"),
        get_str(whatsapp, "state", "customer.defaultPhoneNumber.whatsAppMarketingConsent"),
    )
    customer = Customer(
        external_id=legacy_id(c.get("id"), "customer.id"),
        first_name=first_str(get_str(c, "firstName", "customer"), get_str(billing, "firstName", "billingAddress"),
                             get_str(shipping, "firstName", "shippingAddress")),
        last_name=first_str(get_str(c, "lastName", "customer"), get_str(billing, "lastName", "billingAddress"),
                            get_str(shipping, "lastName", "shippingAddress")),
        email=get_str(email, "emailAddress", "customer.defaultEmailAddress"),
        phone=normalize_phone(raw_phone, country),
        country=country.upper(),
    )
    return customer, any(s is not None and s.upper() == "SUBSCRIBED" for s in states)


__all__ = [
    "ABANDONED_CHECKOUTS_QUERY", "CHECKOUT_LINES", "CUSTOMERS_QUERY", "FULFILLMENTS_PAGE", "FULFILLMENTS_PER_ORDER", "FULFILLMENTS_QUERY_COST",
    "LINES_PAGE", "LINES_PER_ORDER", "LINES_QUERY_COST", "MARKER", "MAX_QUERY_COST", "ORDERS_QUERY", "ORDER_FULFILLMENTS_QUERY",
    "ORDER_LINES_QUERY", "RecoveryLink", "TRACKING_PER_FULFILLMENT", "checkout_id_of", "checkout_node_cost",
    "checkout_page_size_for", "checkout_query_cost", "customer_node_cost", "customers_page_size_for", "customers_query_cost", "fallback_token", "fulfillment_cost", "fulfillments_cost",
    "fulfillments_truncated", "legacy_id", "lines_truncated", "link_token", "node_cost", "normalize_checkout_node",
    "normalize_customer_node", "normalize_node", "order_id_of", "page_size_for", "phone_consents", "query_cost", "recovery_link",
]
