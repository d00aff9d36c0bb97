"""WooCommerce webhook deliveries: the creation ping, the signature, envelope and dedupe key.

WooCommerce never retries and disables a webhook after repeated failures, so every
answer here must be a fast 200 unless the delivery is not authentic.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
from collections.abc import Iterable, Mapping
from typing import Any

from adapters.envelope import Envelope, body_digest, is_ascii
from adapters.woocommerce import site
from connector.config import WooCommerceStore
from connector.errors import VerificationError

_PING = re.compile(rb"\s*webhook_id=\d+\s*")
TOPICS = frozenset(
    {
        "order.created",
        "order.updated",
        "order.deleted",
        "order.restored",
        "customer.created",
        "customer.updated",
        "product.created",
        "product.updated",
        "product.deleted",
        "product.restored",
    }
)
_ONLY_THE_ID = frozenset({"order.deleted", "product.deleted"})  # a ``deleted`` body is ``{"id": N}`` (WC_Webhook::build_payload)
_KEPT_HEADERS = (
    "x-wc-webhook-source",
    "x-wc-webhook-topic",
    "x-wc-webhook-resource",
    "x-wc-webhook-event",
    "x-wc-webhook-id",
    "x-wc-webhook-delivery-id",
)


def is_ping(headers: Mapping[str, str], body: bytes) -> bool:
    """The unsigned ``webhook_id=N`` form body WooCommerce posts when a webhook is created."""
    return "x-wc-webhook-signature" not in headers and _PING.fullmatch(body) is not None


def verify(store: WooCommerceStore, headers: Mapping[str, str], body: bytes, *, extra_secrets: Iterable[str] = ()) -> None:
    """The configured secrets, plus ``extra_secrets`` (the one ``storeloop install woocommerce`` stored)."""
    signature = headers.get("x-wc-webhook-signature")
    if not signature:
        raise VerificationError("missing X-WC-Webhook-Signature")
    if not is_ascii(signature):
        raise VerificationError("malformed X-WC-Webhook-Signature")
    for secret in (*store.webhook_secrets(), *extra_secrets):
        expected = base64.b64encode(hmac.new(secret.encode("utf-8"), body, hashlib.sha256).digest()).decode()
        if hmac.compare_digest(expected, signature):
            return
    raise VerificationError("X-WC-Webhook-Signature does not match")


def source(headers: Mapping[str, str]) -> str | None:
    """``X-WC-Webhook-Source`` as WooCommerce wrote it (UTF-8, not the latin-1 the server reads), None when absent."""
    value = headers.get("x-wc-webhook-source")
    return None if value is None else site.header_text(value)


def verify_source(store: WooCommerceStore, headers: Mapping[str, str]) -> None:
    """``X-WC-Webhook-Source`` (the sending site's ``home_url('/')``, WooCommerce 2.6+) is the store's ``site_url``
    or one of its ``webhook_sources``.

    A copy of the shop (a host's staging site, a clone for tests) carries the live shop's webhooks with
    their secret, so its test orders come correctly signed; only this header tells them apart. Absent
    (an older WooCommerce), nothing is checked."""
    sent = source(headers)
    if sent is None:
        return
    if not site.is_own_site(store, sent):
        raise VerificationError("X-WC-Webhook-Source is another site than the store's site_url and webhook_sources")


def envelope(headers: Mapping[str, str], body: bytes, payload: Any) -> Envelope:
    """Dedupe on (topic, resource id, modification time).

    ``X-WC-Webhook-Delivery-ID`` is ``wp_hash(webhook_id . unix_time)`` and repeats for two
    deliveries in the same second, so it cannot identify an event. The payload is built
    at delivery time, so (id, date_modified_gmt) names the state it carries.
    """
    topic = (headers.get("x-wc-webhook-topic") or "").strip()
    kept = {h: site.header_text(headers[h]) for h in _KEPT_HEADERS if h in headers}  # the source: UTF-8 as sent
    ignored = None if topic in TOPICS else f"unknown topic {topic or '(none)'}"
    key = None
    if isinstance(payload, dict):
        rid = payload.get("id")
        modified = payload.get("date_modified_gmt") or payload.get("date_modified")
        status = payload.get("status")
        if rid is not None and modified:
            key = f"woocommerce:{topic}:{rid}:{modified}:{status}"
        elif rid is not None and topic in _ONLY_THE_ID and headers.get("x-wc-webhook-delivery-id"):
            # the body is only the id, the same every time: an order (or product) binned, restored and binned again is
            # two events. WooCommerce does not retry, and its delivery id changes by the second: the id tells them apart
            key = f"woocommerce:{topic}:{rid}:{headers['x-wc-webhook-delivery-id']}"
        if ignored is None and topic.startswith("order.") and status == "checkout-draft":
            ignored = "checkout-draft order (block checkout in progress)"
    if key is None:
        key = f"woocommerce:{topic}:sha256:{body_digest(body)}"
    return Envelope(topic=topic or "(none)", dedupe_key=key[:255], headers=kept, ignored_reason=ignored)
