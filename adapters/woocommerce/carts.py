"""The "Cart Abandonment Recovery" plugin (CartFlows) webhook -> store-neutral checkout events.

WooCommerce core has no abandoned-cart webhook (platform-facts.md B4). This free plugin can
POST each cart it marks abandoned, and again when that cart is recovered, to one URL:

- the body is ``http_build_query`` of flat fields: ``first_name``, ``last_name``,
  ``phone_number``, ``email``, ``checkout_url`` (the recovery link, carrying the cart's
  ``wcf_ac_token``), ``product_names``, ``coupon_code``, ``order_status``, ``cart_total``,
  ``product_table`` (HTML), ``billing_address``, ``shipping_address``. Sites can change the
  set with the ``woo_ca_webhook_trigger_details`` filter, so only ``checkout_url``,
  ``order_status`` and one of ``phone_number`` / ``email`` are required here;
- ``order_status`` is ``abandoned`` for a new abandoned cart and ``completed`` when an order
  recovers it (the plugin's constant; ``recovered`` is accepted as the same thing). Other
  values (``lost``, ``normal``, ``failed``) are stored and ignored;
- there is **no signature** and no retry (5 s timeout, the answer is not read), so the URL
  carries a per-store secret (``cart_webhook_token``) and every answer is fast.

The web layer stores ``{"received_at": ..., "form": <the body, verbatim>}``: the plugin sends
no timestamp, so the arrival time (the runtime's clock) is the cart's time, and the processor
normalises from the verbatim form (a fix here can replay stored rows).

Mapping (see ``normalize``): one ``CheckoutUpdated`` per post, keyed by the cart's session, so
the ``checkout_recovery`` journey runs its ladder for an ``abandoned`` cart and stops when the
``completed`` post (``completed_at`` set) arrives.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import html
import json
import re
from collections.abc import Mapping
from datetime import datetime, timezone
from decimal import Decimal
from typing import Any
from urllib.parse import parse_qs, parse_qsl, urlsplit

from adapters._parse import get_datetime, get_decimal, req_str
from adapters.envelope import Envelope, is_ascii
from adapters.woocommerce import site
from connector.config import WooCommerceStore
from connector.contacts import normalize_phone
from connector.errors import BadPayloadError, NormalizationError, VerificationError
from connector.events import Checkout, CheckoutUpdated, Customer, Event, LineItem, Phone

ABANDONED = "abandoned"
COMPLETED = frozenset({"completed", "recovered"})
TOPICS = frozenset({f"cart.{ABANDONED}", *(f"cart.{s}" for s in COMPLETED)})
MAX_FIELDS = 200  # the plugin sends 12; a filter may add a few
OPT_IN_FIELD = "whatsapp_opt_in"  # not the plugin's: a site may add it through the filter
_TRUE = frozenset({"1", "true", "yes", "on"})
_STATUS_RE = re.compile(r"[a-z0-9_-]{1,32}")
_SESSION_RE = re.compile(r"[A-Za-z0-9_-]{1,64}")
_KEPT_HEADERS = ("content-type", "user-agent")


# ---- in the request -------------------------------------------------------------------


def verify_token(store: WooCommerceStore, given: str) -> None:
    """The URL's secret against the store's ``cart_webhook_token``, in constant time."""
    expected = store.cart_webhook_token
    if expected is None:
        raise VerificationError("cart_webhook_token is not configured for this store")
    if not given:
        raise VerificationError("missing token")
    if not is_ascii(given):
        raise VerificationError("malformed token")
    if not hmac.compare_digest(given.encode("ascii"), expected.get_secret_value().encode("utf-8")):
        raise VerificationError("token does not match")


def parse_form(body: bytes) -> dict[str, str]:
    """The plugin's fields; ``BadPayloadError`` with a reason that never quotes the body.

    Parsed as PHP writes it: ``+`` is a space, percent-escapes are UTF-8, a repeated name
    keeps its last value. Nested arrays (``a[b]=c``) stay flat keys; none are read.
    """
    if not body.strip():
        raise BadPayloadError("empty body; expected the plugin's form-encoded fields")
    try:
        text = body.decode("utf-8").strip()
    except UnicodeDecodeError:
        raise BadPayloadError("body is not UTF-8 text") from None
    try:
        pairs = parse_qsl(text, keep_blank_values=True, strict_parsing=True, errors="strict", max_num_fields=MAX_FIELDS)
    except UnicodeDecodeError:
        raise BadPayloadError("a percent-encoded value is not UTF-8") from None
    except ValueError as exc:
        if "max number of fields" in str(exc).lower():
            raise BadPayloadError(f"more than {MAX_FIELDS} fields") from None
        raise BadPayloadError("not a form-encoded body (expected name=value pairs joined by '&')") from None
    fields = dict(pairs)
    missing = [name for name in ("checkout_url", "order_status") if not fields.get(name, "").strip()]
    if not fields.get("phone_number", "").strip() and not fields.get("email", "").strip():
        missing.append("phone_number or email")
    if missing:
        raise BadPayloadError(f"missing {', '.join(missing)}")
    recovery_url(fields["checkout_url"])  # raises when it is not a link
    return fields


def other_site(store: WooCommerceStore, headers: Mapping[str, str], fields: Mapping[str, str]) -> str | None:
    """The site that sent this post when it is not the store's own (a staging copy posts with the live
    token it was cloned with, and its recovery link opens the copy), None when it is the store's.

    WordPress names its ``home_url()`` in the User-Agent (``WordPress/6.8; https://bloom.example``):
    compared as ``X-WC-Webhook-Source`` is (``site_url`` or ``webhook_sources``). The ``checkout_url``
    must be a page of the store's site, which catches a copy on another host even when a site
    changed its User-Agent. Only ``scheme://host`` of a page is returned: the link holds the cart's token."""
    home = site.user_agent_home(headers)
    if home is not None and not site.is_own_site(store, home):
        return site.shown(home)
    url = recovery_url(fields["checkout_url"])
    if not site.is_own_page(store, url):
        return site.origin(url)
    return None


def envelope(headers: Mapping[str, str], fields: Mapping[str, str], received_at: datetime) -> Envelope:
    """Topic ``cart.<order_status>``; dedupe on (cart, status), since the plugin may post a cart twice.

    The inbox key is unique per store, so the store is part of it without being spelled here.
    """
    status = _status(fields)
    topic = f"cart.{status}" if _STATUS_RE.fullmatch(status) else "cart.other"
    ignored = None if topic in TOPICS else f"cart status {status[:32]!r} is not handled"
    key = f"woocommerce:cart:{cart_id(fields['checkout_url'])}:{topic}"
    kept = {h: headers[h][:200] for h in _KEPT_HEADERS if h in headers}
    return Envelope(topic=topic, dedupe_key=key[:255], headers=kept, triggered_at=received_at, ignored_reason=ignored)


def stored_body(body: bytes, received_at: datetime) -> bytes:
    """What the inbox keeps: the form verbatim and when it arrived (the plugin sends no time)."""
    doc = {"received_at": received_at.astimezone(timezone.utc).isoformat(), "form": body.decode("utf-8").strip()}
    return json.dumps(doc, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


# ---- shared -----------------------------------------------------------------------------


def _status(fields: Mapping[str, str]) -> str:
    return fields.get("order_status", "").strip().lower()


def recovery_url(raw: str) -> str:
    """The link as a customer should get it: WordPress's ``esc_url`` writes ``&`` as ``&#038;``."""
    url = html.unescape(raw.strip())
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise BadPayloadError("checkout_url is not an http(s) link")
    return url


def cart_id(checkout_url: str) -> str:
    """A stable id for the plugin's cart, the same in its ``abandoned`` and ``completed`` posts.

    ``wcf_ac_token`` is ``urlencode(base64(http_build_query({"wcf_session_id": ...})))``,
    followed by ``|hmac`` inside the base64 in newer versions; the session id is used when it
    decodes, else a digest of the token (or of the whole link, when there is no token).
    """
    url = html.unescape(checkout_url.strip())
    token = (parse_qs(urlsplit(url).query).get("wcf_ac_token") or [""])[-1].strip()
    if not token:
        return "url-" + hashlib.sha256(url.encode("utf-8")).hexdigest()[:40]
    session = _session_id(token)
    return f"wcf-{session}" if session else "tok-" + hashlib.sha256(token.encode("utf-8")).hexdigest()[:40]


def _session_id(token: str) -> str | None:
    try:
        decoded = base64.b64decode(token.replace(" ", "+"), validate=True).decode("ascii")
    except (binascii.Error, ValueError):
        return None
    values = parse_qs(decoded.split("|", 1)[0]).get("wcf_session_id") or []
    session = values[-1] if values else ""
    return session if _SESSION_RE.fullmatch(session) else None


# ---- in the processor -------------------------------------------------------------------


def normalize(topic: str, doc: dict[str, Any], store: WooCommerceStore) -> list[Event]:
    """One stored post -> ``[CheckoutUpdated]`` (``[]`` for a status the journeys do not use).

    - Token: the cart's session (``cart_id``), so the run's subject is ``checkout:wcf-<session>``.
    - Times: the post's arrival. The plugin has already waited its own cut-off (15 minutes by
      default) before posting, and the journey then waits ``abandon_after_minutes`` more.
    - ``completed`` / ``recovered``: ``completed_at`` is set, which finishes an active
      recovery run (outcome ``completed``); an order webhook from the same customer that
      arrives first ends it as ``recovered`` with revenue, as for Shopify.
    - Phone: ``phone_number`` with the store's ``default_country`` (the plugin sends no
      country field). Text that is not a phone fails the row with a reason (never the phone
      itself); a cart with only an email is stored with no contact, so no run starts.
    - Lines: ``product_names`` is ``"A, B & C"`` and cannot be split safely (a name may hold
      either separator), so the cart is one line titled with the whole list at the cart total.
    - Currency: the plugin sends none; an optional ``currency`` field (ISO 4217, added with
      the plugin's filter) is used, else it is empty, so bind ``checkout.total`` only with it.
    - Consent: the plugin captures a cart (and an email for its own reminders); that is not
      WhatsApp marketing consent, so ``accepts_marketing`` is false and checkout recovery
      (a marketing journey) reaches only contacts already opted in (WhatsApp START, a store
      opt-in). A site that collects an explicit WhatsApp opt-in at checkout may send it as
      ``whatsapp_opt_in=1`` through the filter; it is then recorded as a checkout opt-in.
    """
    received = get_datetime(doc, "received_at")
    if received is None:
        raise NormalizationError("cart webhook: stored received_at is missing")
    try:
        fields = parse_form(req_str(doc, "form").encode("utf-8"))
        url = recovery_url(fields["checkout_url"])
    except BadPayloadError as exc:
        raise NormalizationError(f"cart webhook: {exc}") from None
    status = _status(fields)
    if status != ABANDONED and status not in COMPLETED:
        return []
    total = get_decimal(fields, "cart_total") or Decimal("0")
    names = _text(fields, "product_names")
    checkout = Checkout(
        token=cart_id(fields["checkout_url"]),
        created_at=received,
        updated_at=received,
        completed_at=received if status in COMPLETED else None,
        recovery_url=url,
        total=total,
        currency=_currency(fields),
        customer=Customer(
            first_name=_text(fields, "first_name"),
            last_name=_text(fields, "last_name"),
            email=_text(fields, "email"),
            phone=_phone(fields, store),
            country=store.default_country,
        ),
        line_items=(LineItem(title=names[:255], quantity=1, price=total),) if names else (),
        accepts_marketing=fields.get(OPT_IN_FIELD, "").strip().lower() in _TRUE,
    )
    return [CheckoutUpdated(checkout=checkout)]


def _text(fields: Mapping[str, str], name: str) -> str | None:
    value = fields.get(name, "").strip()
    return value or None


def _phone(fields: Mapping[str, str], store: WooCommerceStore) -> Phone | None:
    raw = _text(fields, "phone_number")
    if raw is None:
        return None
    phone = normalize_phone(raw, store.default_country)
    if phone is None or phone.e164 is None:
        raise NormalizationError(f"phone_number: not a valid phone number (read with default_country {store.default_country})")
    return phone


def _currency(fields: Mapping[str, str]) -> str:
    code = fields.get("currency", "").strip().upper()
    if code and not re.fullmatch(r"[A-Z]{3}", code):
        raise NormalizationError("currency: expected an ISO 4217 code like INR")
    return code
