"""The one place that knows which adapter normalises which source."""

from __future__ import annotations

from connector.processor import Normalizer


def normalizers() -> dict[str, Normalizer]:
    from adapters.shopify.normalize import normalize as shopify
    from adapters.whatsapp.normalize import normalize as whatsapp
    from adapters.woocommerce.normalize import normalize as woocommerce

    return {"shopify": shopify, "woocommerce": woocommerce, "whatsapp": whatsapp}
