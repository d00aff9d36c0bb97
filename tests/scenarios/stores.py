"""What each platform sends in the journey stories (test_store_journeys.py): one story, told through
Shopify's webhooks or through WooCommerce's and the Cart Abandonment Recovery plugin's.

A story numbers its orders: order ``n`` is Shopify order 5000 + n, WooCommerce order 7300 + n.
It names its checkouts by a short key ("A", "M2"): a Shopify checkout token, a plugin cart session.
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import Any, ClassVar
from zoneinfo import ZoneInfo

from tests.scenarios import payloads as p
from tests.scenarios.harness import T0, Delivery, Scenario


class _Store:
    """What the two platforms share; the steps of a story are on ShopifyStore and WooStore, with the same names."""

    platform: ClassVar[str]
    first_order: ClassVar[int]
    timezone: ClassVar[str]  # the store's in tests/conftest.py settings_dict
    confirm_settings: ClassVar[dict[str, Any]]  # what Confirm does to the order, besides the tag

    def order_id(self, n: int) -> int:
        return self.first_order + n

    def name(self, n: int) -> str:
        return f"#{self.order_id(n)}"

    def local(self, hour: int, minute: int) -> datetime:
        """That time on T0's day in the store's time zone (in UTC, as the scenario's clock keeps it)."""
        midnight = datetime.combine(T0.date(), datetime.min.time(), ZoneInfo(self.timezone))
        return (midnight + timedelta(hours=hour, minutes=minute)).astimezone(timezone.utc)

    def start_checkout(self, sc: Scenario, key: str, phone: str, *, opt_in: bool = True) -> None:
        """She leaves a checkout (cart) ``key``; ``opt_in``: she ticked the marketing opt-in."""
        sc.post(self.checkout_delivery(sc, key, phone, opt_in=opt_in))

    def checkout_delivery(self, sc: Scenario, key: str, phone: str, *, opt_in: bool = True) -> Delivery:
        raise NotImplementedError


class ShopifyStore(_Store):
    platform = "shopify"
    first_order = 5000
    timezone = "Asia/Kolkata"
    confirm_settings: ClassVar[dict[str, Any]] = {}  # Confirm tags the order, nothing more

    def order(self, n: int, phone: str, at: datetime, *, cod: bool = True, total: str = "1299.00",
              checkout: str | None = None) -> dict[str, Any]:
        """A COD (pending) or prepaid (paid) order; ``checkout``: the checkout it completes."""
        return p.shopify_order(self.order_id(n), phone, at, cod=cod, total=total, checkout_token=checkout and self.token(checkout))

    def awaiting_confirmation(self, n: int, phone: str, at: datetime) -> dict[str, Any]:
        return self.order(n, phone, at)

    def order_deliveries(self, sc: Scenario, order: dict[str, Any]) -> list[Delivery]:
        """Shopify sends ``orders/create`` and ``orders/updated`` with the same body for a new order."""
        return [sc.shopify_delivery("orders/create", order, event_id=f"o{order['id']}-create"),
                sc.shopify_delivery("orders/updated", order, event_id=f"o{order['id']}-updated")]

    def place(self, sc: Scenario, order: dict[str, Any]) -> None:
        """A new order reaches the connector: both deliveries."""
        sc.post(*self.order_deliveries(sc, order))

    def confirmed_echo(self, sc: Scenario, order: dict[str, Any]) -> None:
        """tagsAdd makes Shopify send the order again, now tagged."""
        sc.shopify("orders/updated", {**order, "tags": "cod-confirmed", "updated_at": p.iso(sc.now)})

    def cancelled_echo(self, sc: Scenario, order: dict[str, Any]) -> None:
        """orderCancel makes Shopify send the cancelled order back."""
        cancelled = {**order, "cancelled_at": p.iso(sc.now), "cancel_reason": "customer", "updated_at": p.iso(sc.now)}
        sc.shopify("orders/cancelled", cancelled)
        sc.shopify("orders/updated", cancelled)

    def shipped_deliveries(self, sc: Scenario, order: dict[str, Any], *, orders_fulfilled: bool = False) -> list[Delivery]:
        """What Shopify sends when the whole order ships (fulfilment 70nn for order 50nn): the fulfilment,
        the updated order, and with ``orders_fulfilled`` ``orders/fulfilled`` as well."""
        shipped = {**order, "fulfillment_status": "fulfilled", "updated_at": p.iso(sc.now)}
        return [sc.shopify_delivery("fulfillments/create", p.shopify_fulfillment(order["id"] + 2000, order["id"], sc.now)),
                sc.shopify_delivery("orders/updated", shipped),
                *([sc.shopify_delivery("orders/fulfilled", shipped)] if orders_fulfilled else [])]

    def token(self, key: str) -> str:
        return f"tok{key}"

    def checkout_delivery(self, sc: Scenario, key: str, phone: str, *, opt_in: bool = True) -> Delivery:
        return sc.shopify_delivery("checkouts/create", p.shopify_checkout(self.token(key), phone, sc.now, accepts_marketing=opt_in))

    def change_checkout(self, sc: Scenario, key: str, phone: str, *, total: str) -> None:
        """She comes back to checkout ``key`` and changes it (``total``; ``phone``: the number she gives now)."""
        sc.shopify("checkouts/update", {**p.shopify_checkout(self.token(key), phone, T0, total=total), "updated_at": p.iso(sc.now)})

    def pay_checkout(self, sc: Scenario, n: int, phone: str, key: str, total: str) -> None:
        """She pays: the order names the checkout it completes (``checkout_token``)."""
        self.place(sc, self.order(n, phone, sc.now, cod=False, total=total, checkout=key))

    def cart_recovered(self, sc: Scenario, key: str, phone: str) -> None:
        """Nothing more: the order's ``checkout_token`` already said so."""

    def revoke_marketing(self, sc: Scenario, phone: str) -> None:
        """She unsubscribes in the store: Shopify's WhatsApp marketing consent webhook."""
        sc.shopify("customers_whats_app_marketing_consent/update",
                   p.shopify_whatsapp_consent(p.customer_id_for(phone), phone, "unsubscribed", sc.now))


class WooStore(_Store):
    platform = "woocommerce"
    first_order = 7300
    timezone = "Europe/Rome"
    confirm_settings: ClassVar[dict[str, Any]] = {"confirm_status": "processing"}  # Confirm also moves the order on
    SESSIONS: ClassVar[dict[str, str]] = {"A": "a1a1a1a1a1", "R": "b2b2b2b2b2", "M": "m3m3m3m3m3", "D": "d4d4d4d4d4",
                                          "M2": "m6m6m6m6m6", "N": "n7n7n7n7n7"}  # the plugin's cart session ids

    def order(self, n: int, phone: str, at: datetime, *, cod: bool = True, total: str = "1299.00") -> dict[str, Any]:
        return p.woo_order(self.order_id(n), phone, at, cod=cod, total=total)

    def awaiting_confirmation(self, n: int, phone: str, at: datetime) -> dict[str, Any]:
        """On hold until Confirm moves it to processing (``confirm_settings``)."""
        return p.woo_order(self.order_id(n), phone, at, status="on-hold")

    def order_deliveries(self, sc: Scenario, order: dict[str, Any]) -> list[Delivery]:
        return [sc.woo_delivery("order.created", order), sc.woo_delivery("order.updated", order)]

    def place(self, sc: Scenario, order: dict[str, Any]) -> None:
        """A new order reaches the connector: ``order.created`` (``order_deliveries`` adds the ``order.updated``
        WooCommerce may send with it)."""
        sc.woo("order.created", order)

    def confirmed_echo(self, sc: Scenario, order: dict[str, Any]) -> None:
        """The status write-back makes WooCommerce send the order again, now processing."""
        sc.woo("order.updated", {**order, "status": "processing", "date_modified_gmt": p.gmt(sc.now)})

    def cancelled_echo(self, sc: Scenario, order: dict[str, Any]) -> None:
        """WooCommerce sends the cancelled order back."""
        sc.woo("order.updated", {**order, "status": "cancelled", "date_modified_gmt": p.gmt(sc.now)})

    def shipped_deliveries(self, sc: Scenario, order: dict[str, Any]) -> list[Delivery]:
        """Shipped: completed, with Shipment Tracking."""
        return [sc.woo_delivery("order.updated", p.woo_shipped(order, sc.now))]

    def checkout_delivery(self, sc: Scenario, key: str, phone: str, *, opt_in: bool = True) -> Delivery:
        """``opt_in=False``: the plugin's default, a captured cart is not consent."""
        return sc.cart_delivery(p.woo_cart(self.SESSIONS[key], phone, opt_in=opt_in))

    def change_checkout(self, sc: Scenario, key: str, phone: str, *, total: str) -> None:
        """The plugin posts the cart again, changed (``total``; ``phone``: the number she gives now)."""
        sc.cart(p.woo_cart(self.SESSIONS[key], phone, total=total))

    def pay_checkout(self, sc: Scenario, n: int, phone: str, key: str, total: str) -> None:
        """She pays: a WooCommerce order says nothing of the plugin's cart."""
        sc.woo("order.created", self.order(n, phone, sc.now, cod=False, total=total))

    def cart_recovered(self, sc: Scenario, key: str, phone: str) -> None:
        """A quarter of an hour later the plugin reports the cart recovered."""
        sc.later(minutes=15)
        sc.cart(p.woo_cart(self.SESSIONS[key], phone, status="completed"))

    def revoke_marketing(self, sc: Scenario, phone: str) -> None:
        """WooCommerce has no consent webhook: she stops marketing in WhatsApp itself."""
        sc.marketing_preference(phone, "stop")


Store = ShopifyStore | WooStore
SHOPIFY, WOOCOMMERCE = ShopifyStore(), WooStore()
