"""Store-neutral events: past-tense facts the adapters hand to the core.

Adapters translate platform JSON into these models; nothing in ``connector/`` reads a
platform's payload. Each event is a frozen pydantic model with a ``type`` tag so the
normalised form can be stored in the inbox as JSON and read back unchanged.
"""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from enum import StrEnum
from typing import Annotated, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter


class _Fact(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class PaymentState(StrEnum):
    """Where the money is; COD orders stay ``pending`` until the courier collects."""

    PENDING = "pending"
    AUTHORIZED = "authorized"
    PARTIALLY_PAID = "partially_paid"
    PAID = "paid"
    PARTIALLY_REFUNDED = "partially_refunded"
    REFUNDED = "refunded"
    VOIDED = "voided"
    FAILED = "failed"
    OTHER = "other"


# Paid as far as the customer knows: the money is taken, or part of it, or her card authorised for the store to
# capture later (Shopify manual capture), or paid and partly refunded since. Her questions are post-purchase
# ones, her order replaces an unpaid try at the same purchase, and it counts as a reorder.
PAID_AS_SHE_KNOWS = frozenset({PaymentState.PAID, PaymentState.PARTIALLY_PAID, PaymentState.AUTHORIZED,
                               PaymentState.PARTIALLY_REFUNDED})
# No money is owed or kept: all of it refunded, or the payment voided (an authorisation released, a WooCommerce
# order cancelled). Such an order, like a cancelled one, is no purchase of hers (``called_off``).
NO_MONEY_KEPT = frozenset({PaymentState.REFUNDED, PaymentState.VOIDED})


def called_off(cancelled_at: datetime | None, payment_state: str) -> bool:
    """Whether an order (an event's, or a stored row's fields) no longer counts as a purchase: it was
    cancelled or binned, fully refunded, or its payment voided. A failed payment is not: she can still pay."""
    return cancelled_at is not None or payment_state in NO_MONEY_KEPT


class FulfillmentState(StrEnum):
    UNFULFILLED = "unfulfilled"
    PARTIAL = "partial"
    FULFILLED = "fulfilled"
    OTHER = "other"


class ShipmentStatus(StrEnum):
    """Carrier-level progress (Shopify's ``shipment_status`` values and meanings); unknown platform
    values become ``other``, never an error."""

    NONE = "none"
    LABEL_PRINTED = "label_printed"
    LABEL_PURCHASED = "label_purchased"
    CONFIRMED = "confirmed"
    CARRIER_PICKED_UP = "carrier_picked_up"  # the courier collected it from the store: on its way
    IN_TRANSIT = "in_transit"
    OUT_FOR_DELIVERY = "out_for_delivery"
    ATTEMPTED_DELIVERY = "attempted_delivery"  # the courier tried and could not deliver (an NDR)
    READY_FOR_PICKUP = "ready_for_pickup"  # waiting at a pickup point for the customer
    READY_FOR_RECIPIENT_PICKUP = "ready_for_recipient_pickup"  # the same, as Shopify's newer API names it
    # the carrier cannot deliver until the customer acts (duties to pay, an address to confirm): a failed delivery
    BUYER_ACTION_REQUIRED = "buyer_action_required"
    RETURNING_TO_SENDER = "returning_to_sender"  # the courier gave up, the parcel goes back to the store: a failed delivery
    # a failed delivery as Shopify's admin shows it (FulfillmentDisplayStatus, read by the reconcile), not saying which:
    # the display has no word for returning to sender or waiting on the buyer
    NOT_DELIVERED = "not_delivered"
    PICKED_UP = "picked_up"  # the customer collected it at the pickup point: delivered
    DELAYED = "delayed"
    DELIVERED = "delivered"
    # the carrier's tracking could not be read (an invalid tracking number) or the shipment was
    # cancelled: news for the store, not a failed delivery (that is ATTEMPTED_DELIVERY)
    FAILURE = "failure"
    OTHER = "other"


# The parcel is in the customer's hands: delivered to the door, or collected at a pickup point.
DELIVERED_STATUSES = frozenset({ShipmentStatus.DELIVERED, ShipmentStatus.PICKED_UP})


class SalesChannel(StrEnum):
    """Where the order was placed. ``pos``: at the store's till (Shopify POS, WooCommerce's Point of
    Sale), the customer in the shop; the order-placed journeys (confirmation, COD, payment) leave it
    alone unless a store asks. ``admin``: entered by the store's staff (a phone order in wp-admin);
    ``subscription``: raised by the store itself (a subscription renewal). Neither is a checkout the
    customer left: an unpaid one is no abandoned cart."""

    ONLINE = "online"
    POS = "pos"
    ADMIN = "admin"
    SUBSCRIPTION = "subscription"


class Delivery(StrEnum):
    """How the goods reach the customer; only a ``shipping`` order gets shipped/delivered messages.

    ``pickup``: the customer collects it at the store (a fulfilment is the hand-over, not a parcel);
    ``none``: nothing to deliver (gift cards, digital goods, services) or taken home from the till."""

    SHIPPING = "shipping"
    PICKUP = "pickup"
    NONE = "none"


class ConsentCategory(StrEnum):
    UTILITY = "utility"
    MARKETING = "marketing"


class ConsentState(StrEnum):
    GRANTED = "granted"
    REVOKED = "revoked"
    PENDING = "pending"
    UNKNOWN = "unknown"


class Phone(_Fact):
    """A phone as received and, when it parses, in E.164. ``e164 is None`` means unreachable."""

    raw: str
    e164: str | None = None


class Customer(_Fact):
    external_id: str | None = None
    first_name: str | None = None
    last_name: str | None = None
    email: str | None = None
    phone: Phone | None = None
    country: str | None = None
    locale: str | None = None


class LineItem(_Fact):
    external_id: str | None = None
    product_id: str | None = None
    variant_id: str | None = None
    sku: str | None = None
    title: str = ""
    quantity: int = 1
    price: Decimal = Decimal("0")
    # the discounts the line got, in all (its own and its share of the order's: a discount code), in
    # the shop's money: what it brought is price x quantity less this
    discount: Decimal = Decimal("0")


class Fulfillment(_Fact):
    external_id: str
    order_external_id: str
    status: str
    shipment_status: ShipmentStatus = ShipmentStatus.NONE
    tracking_company: str | None = None
    tracking_number: str | None = None  # the first of ``tracking_numbers``: what a template shows
    tracking_url: str | None = None
    # every number of a fulfilment that carries several (Shopify's multi-package tracking, WooCommerce's
    # Shipment Tracking items) and their links, in the same order where the platform pairs them: a
    # number added later is another parcel, told of in its own "shipped"
    tracking_numbers: tuple[str, ...] = ()
    tracking_urls: tuple[str, ...] = ()
    # whether any of its lines goes to the customer as a parcel: Shopify fulfils a gift card or a digital
    # line (``requires_shipping: false``) at once, in a fulfilment of its own that never gets carrier
    # news; that one is no parcel. True where the platform cannot tell (WooCommerce's one per order)
    ships: bool = True
    # whether ``tracking_numbers`` are all it carries: False where the read is capped at a count (a
    # reconcile read), so a number told before and not read here is not taken as removed
    tracking_complete: bool = True
    created_at: datetime
    updated_at: datetime


class Order(_Fact):
    external_id: str
    name: str
    created_at: datetime
    updated_at: datetime
    cancelled_at: datetime | None = None
    payment_state: PaymentState
    fulfillment_state: FulfillmentState = FulfillmentState.UNFULFILLED
    platform_status: str | None = None
    is_cod: bool = False
    gateway_names: tuple[str, ...] = ()
    total: Decimal  # the shop's money: what revenue is counted in, one currency per store
    currency: str
    # what the customer was charged, in their own currency, when it is not the shop's (Shopify
    # Markets' presentment money): what a message shows them (the cash to have ready for COD)
    customer_total: Decimal | None = None
    customer_currency: str | None = None
    customer: Customer
    line_items: tuple[LineItem, ...] = ()
    checkout_token: str | None = None
    status_url: str | None = None
    payment_url: str | None = None
    tags: tuple[str, ...] = ()
    test: bool = False
    # Payment terms (a B2B or draft order on Net 30, a fixed date, due on fulfilment): the payment is
    # owed only from ``payment_due_at``; terms with no date yet (due on fulfilment) leave it None.
    payment_terms: str | None = None  # the terms' type, lower case: net, fixed, fulfillment, receipt, ...
    payment_due_at: datetime | None = None
    channel: SalesChannel = SalesChannel.ONLINE
    delivery: Delivery = Delivery.SHIPPING
    # the fulfilments the order lists with it (Shopify's order ``fulfillments[]``), each also its own event
    # after the order's; () where the platform lists none (WooCommerce). An order "fulfilled" by a parcel
    # first heard of in the same update is not complete until that parcel arrives: the order's event
    # comes first, so the delivery journey reads the parcel here
    fulfillments: tuple[Fulfillment, ...] = ()


class Checkout(_Fact):
    token: str
    created_at: datetime
    updated_at: datetime
    completed_at: datetime | None = None
    recovery_url: str | None = None
    # what the customer saw at checkout, in their currency (Shopify: the presentment currency); only
    # reminders show it, revenue is counted from the order
    total: Decimal
    currency: str
    customer: Customer
    line_items: tuple[LineItem, ...] = ()
    accepts_marketing: bool = False
    # the number the marketing opt-in was given for, when the platform names one (Shopify's
    # sms_marketing_phone): consent is recorded for that number only, not for the customer's phone
    marketing_phone: Phone | None = None
    # whether ``customer.phone`` is the one given on the checkout (its webhook; the cart plugin's post).
    # False: a read that cannot see it and names the customer's own or an address phone instead
    # (Shopify's ``abandonedCheckouts``): it never changes the contact a stored checkout already has
    phone_on_checkout: bool = True


# ---- store events -------------------------------------------------------------------


class OrderPlaced(_Fact):
    type: Literal["order.placed"] = "order.placed"
    order: Order


class OrderUpdated(_Fact):
    type: Literal["order.updated"] = "order.updated"
    order: Order


class OrderPaid(_Fact):
    type: Literal["order.paid"] = "order.paid"
    order: Order


class OrderCancelled(_Fact):
    type: Literal["order.cancelled"] = "order.cancelled"
    order: Order


class OrderDeleted(_Fact):
    """The store moved an order to the bin or deleted it (WooCommerce ``order.deleted``, whose body
    is only the id): as good as cancelled for every journey."""

    type: Literal["order.deleted"] = "order.deleted"
    order_external_id: str


class OrderFulfilled(_Fact):
    type: Literal["order.fulfilled"] = "order.fulfilled"
    order: Order


class CheckoutUpdated(_Fact):
    type: Literal["checkout.updated"] = "checkout.updated"
    checkout: Checkout


class FulfillmentUpdated(_Fact):
    type: Literal["fulfillment.updated"] = "fulfillment.updated"
    fulfillment: Fulfillment
    # one of the fulfilments an order event lists (Shopify's order ``fulfillments[]``), sent again with
    # every update of the order: news only when it changed, so a repeat is heard by no journey
    listed_on_order: bool = False


class CustomerUpdated(_Fact):
    type: Literal["customer.updated"] = "customer.updated"
    customer: Customer
    updated_at: datetime | None = None


class ConsentChanged(_Fact):
    """A store-side consent change (e.g. Shopify's WhatsApp marketing consent)."""

    type: Literal["consent.changed"] = "consent.changed"
    customer_external_id: str | None = None
    phone: Phone | None = None
    category: ConsentCategory
    state: ConsentState
    source: str
    occurred_at: datetime | None = None


class AppUninstalled(_Fact):
    type: Literal["app.uninstalled"] = "app.uninstalled"
    shop: str


class StoreCaughtUp(_Fact):
    """Ours, not a platform's: the orders changed while the app was uninstalled are read back and
    in the inbox ahead of this; the store's timers and sends resume (``connector/reinstall.py``)."""

    type: Literal["store.caught_up"] = "store.caught_up"
    reinstalled_at: datetime


class ComplianceRequested(_Fact):
    """Shopify's mandatory privacy topics; handled by the compliance issue."""

    type: Literal["compliance.requested"] = "compliance.requested"
    kind: Literal["customer_data_request", "customer_redact", "shop_redact"]
    customer: Customer | None = None
    order_external_ids: tuple[str, ...] = ()


# ---- WhatsApp events ----------------------------------------------------------------


class MessageReceived(_Fact):
    """Inbound free text (or any non-button message) from a customer; opens the 24 h window."""

    type: Literal["whatsapp.message_received"] = "whatsapp.message_received"
    phone_number_id: str
    message_id: str
    wa_id: str | None
    phone: Phone | None = None
    user_id: str | None = None
    profile_name: str | None = None
    message_type: str
    text: str | None = None
    context_message_id: str | None = None
    occurred_at: datetime


class ButtonReplied(_Fact):
    """A tap on a template quick reply or an interactive reply button."""

    type: Literal["whatsapp.button_replied"] = "whatsapp.button_replied"
    phone_number_id: str
    message_id: str
    wa_id: str | None
    phone: Phone | None = None
    user_id: str | None = None
    profile_name: str | None = None
    payload: str
    title: str | None = None
    context_message_id: str | None = None
    occurred_at: datetime


class NumberChanged(_Fact):
    """A customer changed her WhatsApp number (Meta's ``user_changed_number`` system message): the
    same person now writes from, and is reached on, ``new_wa_id``; ``old_wa_id`` is the message's sender."""

    type: Literal["whatsapp.number_changed"] = "whatsapp.number_changed"
    phone_number_id: str
    message_id: str
    old_wa_id: str
    old_phone: Phone | None = None
    new_wa_id: str
    new_phone: Phone
    user_id: str | None = None  # her new business-scoped id (a number change makes a new one), when Meta gives it
    occurred_at: datetime


class UserIdChanged(_Fact):
    """A customer's WhatsApp business-scoped user id (BSUID) changed (Meta's ``user_changed_user_id`` system
    message, which shares no phone number): the same person now writes under ``new_user_id``. ``wa_id`` /
    ``phone``: her number, in the rare notice that names one."""

    type: Literal["whatsapp.user_id_changed"] = "whatsapp.user_id_changed"
    phone_number_id: str
    message_id: str
    old_user_id: str | None = None
    new_user_id: str
    wa_id: str | None = None
    phone: Phone | None = None
    occurred_at: datetime


class BusinessCapabilityChanged(_Fact):
    """Meta's ``business_capability_update``: the business portfolio's messaging limit (unique customers
    reachable outside a service window in 24 h) and how many numbers it may have. Meta sends it when the
    account is created and when the limit changes."""

    type: Literal["whatsapp.business_capability_changed"] = "whatsapp.business_capability_changed"
    business_account_id: str
    limit: str | None = None  # a count ("2000") or "UNLIMITED" (Meta's -1); None: the update gave none we can read
    max_phone_numbers: int | None = None  # ``max_phone_numbers_per_waba`` (else ``..._per_business``)
    occurred_at: datetime | None = None  # the entry's ``time``


class MessageStatusChanged(_Fact):
    type: Literal["whatsapp.status_changed"] = "whatsapp.status_changed"
    phone_number_id: str
    message_id: str
    status: str
    recipient_id: str | None = None
    callback_data: str | None = None
    error_code: int | None = None
    error_title: str | None = None
    occurred_at: datetime


class MarketingPreferenceChanged(_Fact):
    """WhatsApp's own marketing preference: ``stop`` opts out, ``resume``/``signup`` opt in."""

    type: Literal["whatsapp.preference_changed"] = "whatsapp.preference_changed"
    phone_number_id: str
    wa_id: str | None
    phone: Phone | None = None
    user_id: str | None = None  # the business-scoped user id (C9): all a username user may show
    value: str
    category: str
    occurred_at: datetime


class TemplateStatusChanged(_Fact):
    """Meta changed the status of one of the business account's templates
    (``message_template_status_update``): approved, paused, disabled, rejected, flagged..."""

    type: Literal["whatsapp.template_status_changed"] = "whatsapp.template_status_changed"
    business_account_id: str
    template_id: str | None = None
    name: str
    language: str
    status: str  # Meta's ``event``: APPROVED, PAUSED, DISABLED, REJECTED, FLAGGED, REINSTATED...
    reason: str | None = None  # Meta's ``reason`` (``NONE`` for a pause, null for a deletion)
    title: str | None = None  # ``other_info.title``: FIRST_PAUSE, SECOND_PAUSE, UNPAUSE...
    description: str | None = None  # ``other_info.description``: Meta's words on the pause
    rejection: str | None = None  # ``rejection_info.reason``
    recommendation: str | None = None  # ``rejection_info.recommendation``
    disable_date: datetime | None = None  # ``disable_info.disable_date``
    category: str | None = None  # ``message_template_category``
    occurred_at: datetime | None = None  # the entry's ``time``


class TemplateCategoryChanged(_Fact):
    """Meta changed, or is about to change, a template's category (``template_category_update``):
    a utility template made marketing costs more and is limited as marketing."""

    type: Literal["whatsapp.template_category_changed"] = "whatsapp.template_category_changed"
    business_account_id: str
    template_id: str | None = None
    name: str
    language: str
    new_category: str  # the category now (an impending notice: still the current one)
    previous_category: str | None = None  # a completed change: what it was
    correct_category: str | None = None  # an impending change: what it is going to be
    effective_at: datetime | None = None  # an impending change: ``category_update_timestamp``
    occurred_at: datetime | None = None

    @property
    def category(self) -> str:
        """The category the template has, or is about to have."""
        return self.correct_category or self.new_category


class NumberQualityChanged(_Fact):
    """Meta's news about a business phone number (``phone_number_quality_update``): flagged for low
    quality (its rating Low, RED) or unflagged, its messaging limit lowered or raised."""

    type: Literal["whatsapp.number_quality_changed"] = "whatsapp.number_quality_changed"
    business_account_id: str
    display_phone_number: str | None = None  # the number as Meta shows it (digits); no phone_number_id is given
    event: str  # FLAGGED, UNFLAGGED, DOWNGRADE, UPGRADE, ONBOARDING, THROUGHPUT_UPGRADE...
    limit: str | None = None  # ``max_daily_conversations_per_business``, else the older ``current_limit``
    old_limit: str | None = None  # a limit change only
    occurred_at: datetime | None = None  # the entry's ``time``


class Restriction(_Fact):
    kind: str  # RESTRICTED_BIZ_INITIATED_MESSAGING, RESTRICTED_CUSTOMER_INITIATED_MESSAGING, RESTRICTED_ADD_PHONE_NUMBER_ACTION...
    until: datetime | None = None  # ``expiration``; None: not given (until Meta lifts it)


class AccountUpdated(_Fact):
    """Meta's news about the WhatsApp Business Account (``account_update``): restricted, a policy
    violation, disabled (banned) or reinstated, and others the connector only keeps."""

    type: Literal["whatsapp.account_updated"] = "whatsapp.account_updated"
    business_account_id: str
    event: str  # ACCOUNT_RESTRICTION, ACCOUNT_VIOLATION, DISABLED_UPDATE, ACCOUNT_DELETED, PARTNER_ADDED...
    restrictions: tuple[Restriction, ...] = ()  # ``restriction_info``
    violation: str | None = None  # ``violation_info.violation_type``
    ban_state: str | None = None  # ``ban_info.waba_ban_state``: SCHEDULE_FOR_DISABLE, DISABLE, REINSTATE
    ban_date: str | None = None  # ``ban_info.waba_ban_date``, as Meta words it ("April 17, 2025")
    occurred_at: datetime | None = None


class TemplateQualityChanged(_Fact):
    """Meta rated one of the account's templates anew (``message_template_quality_update``)."""

    type: Literal["whatsapp.template_quality_changed"] = "whatsapp.template_quality_changed"
    business_account_id: str
    template_id: str | None = None
    name: str
    language: str
    score: str  # ``new_quality_score``: GREEN, YELLOW, RED, UNKNOWN
    previous_score: str | None = None
    occurred_at: datetime | None = None


class ProductUpdated(_Fact):
    """A product's tags (and replenishment metafield) or status changed: ``replenish:30d`` sets its cycle;
    a product no longer sold (or sold out) gets no reorder reminder."""

    type: Literal["product.updated"] = "product.updated"
    product_id: str
    title: str = ""
    tags: tuple[str, ...] = ()
    replenish: str | None = None  # a metafield value such as "30d", when the payload carries one
    available: bool = True  # the store sells it (not archived, a draft or in the bin); a payload without a status: True
    in_stock: bool = True  # not sold out (WooCommerce ``stock_status``); a payload that does not say: True
    skus: tuple[str, ...] = ()  # its variants' SKUs, as order lines that name no product id carry them
    updated_at: datetime | None = None


class ProductDeleted(_Fact):
    """The store deleted a product (Shopify ``products/delete``) or moved it to the bin (WooCommerce
    ``product.deleted``); both bodies are only the id. No reorder reminder may link to it."""

    type: Literal["product.deleted"] = "product.deleted"
    product_id: str


class ReorderWindowOpened(_Fact):
    """A customer should be running low on something they bought (connector/reorder).

    Raised by the window scan, not by a platform: it is never stored in the inbox, so it
    is not part of ``Event``. ``busy_with`` names the other journeys active for the
    customer when the window opened.
    """

    type: Literal["reorder.window_opened"] = "reorder.window_opened"
    window_id: int
    order_external_id: str
    product_key: str
    product_id: str | None = None
    variant_id: str | None = None
    sku: str | None = None
    title: str
    quantity: int
    opens_at: datetime
    cycle_days: float
    cycle_source: str
    link: str | None = None
    busy_with: tuple[str, ...] = ()
    # she has placed an order since the window's (not called off): that order says her stage, not this reminder
    ordered_since: bool = False


Event = Annotated[
    Union[
        OrderPlaced,
        OrderUpdated,
        OrderPaid,
        OrderCancelled,
        OrderDeleted,
        OrderFulfilled,
        CheckoutUpdated,
        FulfillmentUpdated,
        CustomerUpdated,
        ConsentChanged,
        AppUninstalled,
        StoreCaughtUp,
        ComplianceRequested,
        MessageReceived,
        ButtonReplied,
        MessageStatusChanged,
        NumberChanged,
        UserIdChanged,
        MarketingPreferenceChanged,
        TemplateStatusChanged,
        TemplateCategoryChanged,
        NumberQualityChanged,
        AccountUpdated,
        TemplateQualityChanged,
        BusinessCapabilityChanged,
        ProductUpdated,
        ProductDeleted,
    ],
    Field(discriminator="type"),
]

_EVENT_LIST = TypeAdapter(list[Event])


def dump_events(events: list[Event]) -> list[dict]:
    """JSON-ready form for the inbox row."""
    return _EVENT_LIST.dump_python(events, mode="json")


def load_events(data: list[dict]) -> list[Event]:
    return _EVENT_LIST.validate_python(data)
