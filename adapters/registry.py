"""The one place that knows which adapter serves which platform: normalisers, recovery-link readers,
abandoned-checkout pagers, the status an order in the store's bin has."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from connector.processor import Normalizer

LinkReader = Callable[[str | None], str | None]
PagerFactory = Callable[[Any, str], Any]  # (the store's API client, the store's key) -> a checkout_poll.CheckoutPager


def normalizers() -> dict[str, Normalizer]:
    from adapters.shopify.normalize import normalize as shopify
    from adapters.whatsapp.normalize import normalize as whatsapp
    from adapters.woocommerce.normalize import normalize as woocommerce

    return {"shopify": shopify, "woocommerce": woocommerce, "whatsapp": whatsapp}


def link_readers() -> dict[str, LinkReader]:
    """How each polled platform identifies a checkout's recovery link (``CheckoutPager.link_identity``,
    without a client). A platform whose checkouts are not polled has none."""
    from adapters.shopify.checkouts import link_identity as shopify

    return {"shopify": shopify}


def checkout_pagers() -> dict[str, PagerFactory]:
    """Each polled platform's abandoned-checkout pager (``checkout_poll.CheckoutPager``). A platform
    whose checkouts are not polled has none."""
    from adapters.shopify.checkouts import ShopifyCheckoutPager

    return {"shopify": ShopifyCheckoutPager}


def bin_statuses() -> dict[str, str]:
    """The status each platform leaves on an order moved to its bin (``OrderDeleted``), which the core
    writes on the stored order so a later update that takes it out again reads as the order restored.
    A platform without a bin has none."""
    from adapters.woocommerce.normalize import BIN_STATUS as woocommerce

    return {"woocommerce": woocommerce}
