"""The one place that knows which adapter serves which platform: normalisers, recovery-link readers."""

from __future__ import annotations

from collections.abc import Callable

from connector.processor import Normalizer

LinkReader = Callable[[str | None], str | None]


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
