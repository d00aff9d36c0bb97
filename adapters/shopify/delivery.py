"""How a Shopify order was placed and reaches the customer, shared by the webhook and the reconcile readers.

Nothing to ship (every line ``requires_shipping: false``: gift cards, digital goods) is
``none``; a shipping line named as one of the store's pickup locations (``pickup_lines``) is
``pickup`` (Shopify's order marks a pickup no other way: its line is titled after the
location, like any rate); a POS sale without a shipping line was taken home from the till
(``none``); everything else ships.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from connector.events import Delivery, SalesChannel


def sales_channel(source_name: str | None) -> SalesChannel:
    """Where the order came from, by its ``source_name`` (GraphQL ``sourceName``): ``pos`` is the till;
    an order a subscription contract's billing raised is ``subscription_contract`` (and, since October
    2025, ``subscription_contract_checkout_one``). Shopify keeps this a free string, not an enum, so any
    value starting ``subscription_contract`` counts (community.shopify.dev, "Order/paid webhook
    SourceName property changed for subscription")."""
    source = (source_name or "").strip().lower()
    if source == "pos":
        return SalesChannel.POS
    if source.startswith("subscription_contract"):
        return SalesChannel.SUBSCRIPTION
    return SalesChannel.ONLINE


def delivery(needs_shipping: bool, channel: SalesChannel, pickup_lines: Iterable[str],
             line_names: Callable[[], list[list[str | None]]]) -> Delivery:
    """``line_names`` gives each live shipping line's (title, code); it is only called when the
    answer depends on it (a store with pickup lines, or a POS sale), so most orders never read
    their shipping lines."""
    if not needs_shipping:
        return Delivery.NONE
    pickup = tuple(pickup_lines)
    if not pickup and channel is not SalesChannel.POS:
        return Delivery.SHIPPING
    lines = line_names()
    if any(name and name.strip().lower() in pickup for names in lines for name in names):
        return Delivery.PICKUP
    if channel is SalesChannel.POS and not lines:
        return Delivery.NONE
    return Delivery.SHIPPING
