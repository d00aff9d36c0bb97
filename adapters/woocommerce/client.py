"""A thin async WooCommerce REST v3 client: the store write-backs (``StoreWriter``) and
the listings (``get_page``: one page of a collection with its totals) for the sync jobs.

Not the ``woocommerce`` package: it uses module-level ``requests`` calls (no pooling, no
async) (shared/docs/libraries.md §2). Auth follows platform-facts.md B1:

- ``https://`` stores: HTTP Basic, consumer key / consumer secret (never in the URL).
- ``http://`` stores (local dev sites): OAuth 1.0a one-legged, query-string signed with
  HMAC-SHA256 (``oauth1_signature`` below). The query then carries the consumer key, a
  timestamp, a nonce and the signature, never the secret.

Errors are classified here: 429 / 5xx (503 included; Retry-After honoured) and transport
failures -> ``RetryableError``; 400 / 401 / 403 / 404 and other 4xx -> ``PermanentError``
whose message holds the status and WooCommerce's ``code`` string (e.g.
``woocommerce_rest_shop_order_invalid_id``), never the body, a URL or a secret.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import secrets
import time
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime, timedelta, timezone
from typing import Any, NamedTuple
from urllib.parse import quote

import httpx

from adapters.whatsapp.errors import classify_transport, retry_after_of
from connector.config import WooCommerceStore
from connector.errors import PermanentError, RetryableError
from connector.storage import jsoncodec

DEFAULT_TIMEOUT = httpx.Timeout(10.0, connect=5.0)
NOTE_CLOCK_GRACE = timedelta(minutes=10)  # our clock against the store's, when a retried note looks for itself
TAGS_META_KEY = "_storeloop_tags"
TAGS_NOTE_PREFIX = "storeloop tags: "
MAX_PER_PAGE = 100  # WordPress caps per_page at 100 (B1)
_CODE_RE = re.compile(r"[^A-Za-z0-9_.\-]")

_MEANING = {
    400: "bad request",
    401: "authentication failed (consumer key/secret wrong, revoked, or the Authorization header stripped)",
    403: "not permitted (the key's user or permission lacks write access?)",
    404: "not found",
}


class Page(NamedTuple):
    """One page of a REST v3 collection (``GET /orders``, ``/products``, ``/webhooks``...) and
    what WordPress says about the whole listing with the same filters."""

    items: list[dict[str, Any]]  # the JSON array's objects, in the order WooCommerce gave them
    total: int | None  # X-WP-Total: items in the whole listing; None when the header is missing or not a number
    total_pages: int | None  # X-WP-TotalPages at this per_page; None likewise


def _header_int(headers: Mapping[str, str], name: str) -> int | None:
    raw = (headers.get(name) or "").strip()
    return int(raw) if raw.isdigit() else None


def _enc(value: str) -> str:
    """RFC 3986 percent-encoding (PHP's rawurlencode, which WooCommerce uses)."""
    return quote(value, safe="~")


def oauth1_signature(method: str, url: str, params: Mapping[str, str], consumer_secret: str) -> str:
    """The OAuth 1.0a HMAC-SHA256 signature WooCommerce checks (platform-facts.md B1).

    Base string ``METHOD&enc(url)&enc(k1=v1&k2=v2…)`` with each key and value encoded and
    the pairs sorted by key (WooCommerce: ``uksort(strcmp)``); ``url`` without its query;
    ``oauth_signature`` itself excluded; key ``consumer_secret&`` (no token secret).
    Only the query is signed (a JSON body is not).
    """
    pairs = sorted((str(k), str(v)) for k, v in params.items() if k != "oauth_signature")
    normalized = "&".join(f"{_enc(k)}={_enc(v)}" for k, v in pairs)
    base = f"{method.upper()}&{_enc(url)}&{_enc(normalized)}"
    digest = hmac.new(f"{consumer_secret}&".encode(), base.encode(), hashlib.sha256).digest()
    return base64.b64encode(digest).decode("ascii")


def oauth1_params(
    method: str, url: str, params: Mapping[str, str], consumer_key: str, consumer_secret: str,
    *, timestamp: int, nonce: str,
) -> dict[str, str]:
    """``params`` plus the signed ``oauth_*`` query parameters (no ``oauth_version``, per B1)."""
    signed = {str(k): str(v) for k, v in params.items()}
    signed.update({
        "oauth_consumer_key": consumer_key,
        "oauth_timestamp": str(timestamp),
        "oauth_nonce": nonce,
        "oauth_signature_method": "HMAC-SHA256",
    })
    signed["oauth_signature"] = oauth1_signature(method, url, signed, consumer_secret)
    return signed


# Statuses an order is never moved out of by a write-back (platform-facts B2): called off, money
# returned, payment failed, in the bin, or (a COD plugin's status) refused at the door. Shipped ones
# (``completed`` and the store's ``shipping_statuses``) likewise.
_SETTLED = {"cancelled": "it was cancelled", "refunded": "it was refunded", "failed": "its payment failed",
            "trash": "it is in the bin", "refused": "it was refused", "checkout-draft": "it is a checkout draft"}
# The way an order moves forward before it ships: a move to an earlier one is backwards
_FORWARD = ("pending", "on-hold", "processing")


def refusal(current: str, target: str, shipping: frozenset[str] | set[str]) -> str | None:
    """Why an order in status ``current`` may not be moved to ``target``, or None when it may."""
    if current == "completed" or current in shipping:
        return f"it has shipped (status {current})"
    if current in _SETTLED:
        return _SETTLED[current]
    if current in _FORWARD and target in _FORWARD and _FORWARD.index(target) < _FORWARD.index(current):
        return f"that would move it back from {current}"
    return None


def _order_id(order_id: str) -> str:
    raw = str(order_id).strip()
    if not raw.isdigit():
        raise PermanentError("WooCommerce order id must be numeric")
    return raw


def _clean_tags(tags: Sequence[str]) -> list[str]:
    # commas separate tags in the meta value, so they cannot be part of one
    return list(dict.fromkeys(t.replace(",", " ").strip() for t in tags if t and t.replace(",", " ").strip()))


class WooCommerceClient:
    """``StoreWriter`` over ``{site}/wp-json/wc/v3`` for one store.

    ``timeout`` applies to every request, also on a client passed as ``http`` (which we
    then do not own and do not close). ``clock`` and ``nonce`` feed OAuth signing.
    """

    def __init__(
        self,
        store: WooCommerceStore,
        *,
        http: httpx.AsyncClient | None = None,
        timeout: httpx.Timeout = DEFAULT_TIMEOUT,
        clock: Callable[[], float] = time.time,
        nonce: Callable[[], str] = lambda: secrets.token_hex(16),
    ):
        self._base = store.rest_base_url
        self._key_name = store.key
        self._ck = store.consumer_key.get_secret_value() if store.consumer_key is not None else ""
        self._cs = store.consumer_secret.get_secret_value() if store.consumer_secret is not None else ""
        self._oauth = self._base.lower().startswith("http://")
        self._timeout = timeout
        self._clock = clock
        self._nonce = nonce
        self._shipping = frozenset(store.shipping_statuses)  # the store's statuses of an order that has left
        self._owns_http = http is None
        self._http = http if http is not None else httpx.AsyncClient(timeout=timeout)

    def __repr__(self) -> str:  # never the key or secret
        return f"WooCommerceClient({self._base!r})"

    async def aclose(self) -> None:
        if self._owns_http:
            await self._http.aclose()

    async def __aenter__(self) -> "WooCommerceClient":
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    # ------------------------------------------------------------------ transport

    async def _request(
        self, method: str, path: str, *, params: Mapping[str, str] | None = None, json_body: Any = None,
    ) -> httpx.Response:
        if not self._ck or not self._cs:
            raise PermanentError(f"WooCommerce store {self._key_name}: consumer key/secret not configured")
        url = f"{self._base}{path}"
        query = {str(k): str(v) for k, v in (params or {}).items()}
        kw: dict[str, Any] = {"headers": {"Accept": "application/json"}, "timeout": self._timeout}
        if self._oauth:
            query = oauth1_params(method, url, query, self._ck, self._cs,
                                  timestamp=int(self._clock()), nonce=self._nonce())
        else:
            kw["auth"] = httpx.BasicAuth(self._ck, self._cs)
        if query:
            kw["params"] = query
        if json_body is not None:
            kw["json"] = json_body
        try:
            response = await self._http.request(method, url, **kw)
        except httpx.TransportError as exc:
            raise classify_transport(exc) from None  # the cause's repr could carry the URL
        if not response.is_success:
            raise self._classify(response)
        return response

    def _classify(self, response: httpx.Response) -> Exception:
        status = response.status_code
        retry_after = retry_after_of(response)
        code = None
        try:
            body = jsoncodec.loads(response.content)
            if isinstance(body, dict) and isinstance(body.get("code"), str):
                code = _CODE_RE.sub("", body["code"])[:100] or None
        except (ValueError, UnicodeDecodeError):
            pass
        text = f"HTTP {status}"
        if code:
            text += f", {code}"
        meaning = _MEANING.get(status)
        if status == 429:
            meaning = "rate limited (host or firewall)"
        elif status >= 500:
            meaning = "server error" if status != 503 else "service unavailable"
        if meaning:
            text += f" ({meaning})"
        if status == 429 or status >= 500:
            return RetryableError(text, http_status=status, retry_after=retry_after)
        return PermanentError(text, http_status=status)

    @staticmethod
    def _json(response: httpx.Response) -> Any:
        try:
            return jsoncodec.loads(response.content)  # a lone surrogate (no database stores one) becomes U+FFFD
        except (ValueError, UnicodeDecodeError):
            # A 2xx that is not JSON: a firewall/captcha or caching page. A write may or
            # may not have happened.
            raise PermanentError("unexpected response (not JSON)", http_status=response.status_code,
                                 outcome_unknown=True) from None

    # ------------------------------------------------------------------ listings

    async def get_page(self, path: str, params: Mapping[str, str] | None = None) -> Page:
        """``GET {rest base}{path}`` of a collection: its items and the totals WordPress sends
        (``X-WP-Total``, ``X-WP-TotalPages``), for paging and progress.

        ``path`` is the collection under ``/wp-json/wc/v3`` (``"/orders"``); filters and
        ``page`` / ``per_page`` go in ``params``. Same auth and error classes as every call
        here (429 / 5xx retryable with Retry-After, other 4xx permanent); an answer that is
        not a JSON array is a ``PermanentError``; array entries that are not objects are dropped.
        """
        if not path.startswith("/") or "?" in path:
            raise ValueError("path must start with / and carry no query (use params)")
        response = await self._request("GET", path, params=params)
        items = self._json(response)
        if not isinstance(items, list):
            raise PermanentError(f"{path.strip('/')} list: unexpected response", http_status=response.status_code)
        return Page([i for i in items if isinstance(i, dict)], _header_int(response.headers, "X-WP-Total"),
                    _header_int(response.headers, "X-WP-TotalPages"))

    # ------------------------------------------------------------------ sync job

    async def disabled_webhooks(self) -> list[dict[str, Any]]:
        """The store's webhooks WooCommerce disabled after repeated delivery failures (B3)."""
        response = await self._request("GET", "/webhooks", params={"status": "disabled", "per_page": "100"})
        hooks = self._json(response)
        return [{"id": h.get("id"), "topic": h.get("topic"), "delivery_url": h.get("delivery_url")}
                for h in hooks if isinstance(h, dict)] if isinstance(hooks, list) else []

    async def activate_webhook(self, webhook_id: int) -> None:
        await self._request("PUT", f"/webhooks/{int(webhook_id)}", json_body={"status": "active"})

    async def get_orders(self, modified_after: datetime, page: int, per_page: int = 100) -> tuple[list[dict], int]:
        """One page of orders modified after ``modified_after`` (aware datetime), oldest id first.

        Returns ``(orders, total_pages)`` with total_pages from ``X-WP-TotalPages``; when
        that header is missing, ``page`` for a short page and ``page + 1`` for a full one.
        Ordered by id so that an order modified while we page does not shift the pages.
        (``modified_after`` needs WooCommerce 5.8+.)
        """
        if modified_after.tzinfo is None:
            raise ValueError("modified_after must be timezone-aware")
        page = max(1, int(page))
        per_page = min(MAX_PER_PAGE, max(1, int(per_page)))
        params = {
            "modified_after": modified_after.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S"),
            "dates_are_gmt": "true",
            "orderby": "id",
            "order": "asc",
            "page": str(page),
            "per_page": str(per_page),
        }
        listed = await self.get_page("/orders", params)
        orders = listed.items
        if listed.total_pages is not None:
            total = listed.total_pages
        else:
            total = page if len(orders) < per_page else page + 1
        return orders, total

    # ------------------------------------------------------------------ StoreWriter

    async def set_status(self, order_id: str, status: str) -> None:
        """``PUT /orders/{id} {"status": status}``, after reading the order as it is now.

        Our copy of the order can be stale (WooCommerce never retries a failed webhook, B3), so the
        live status decides: an order that has shipped, was called off, failed or refunded, or a move
        backwards (completed -> processing), is refused with a ``PermanentError`` naming why (the
        write-back fails and a person gets it, as a refused Shopify cancel does). Setting the status
        it already has is a no-op (a retry whose first try landed). The answer must show the status
        asked for: a plugin that vetoes the change answers 200 with the old one."""
        oid = _order_id(order_id)
        status = status.strip().lower().removeprefix("wc-")
        if not status or not re.fullmatch(r"[a-z0-9_\-]{1,20}", status):
            raise PermanentError("invalid WooCommerce order status")
        current = await self._status(oid)
        if current == status:
            return
        why = refusal(current, status, self._shipping)
        if why is not None:
            raise PermanentError(f"order {oid} not moved to {status}: {why}")
        response = await self._request("PUT", f"/orders/{oid}", json_body={"status": status})
        answer = self._json(response)
        now = str(answer.get("status") or "").lower() if isinstance(answer, dict) else ""
        if now != status:
            raise PermanentError(f"order {oid} not moved to {status}: WooCommerce answered status {now[:20] or 'none'!r} "
                                 "(a plugin or the order's state refused the change)")

    async def _status(self, oid: str) -> str:
        """The order's status at WooCommerce now (``GET /orders/{id}?_fields=id,status``)."""
        response = await self._request("GET", f"/orders/{oid}", params={"_fields": "id,status"})
        order = self._json(response)
        status = order.get("status") if isinstance(order, dict) else None
        if not isinstance(status, str) or not status.strip():
            raise PermanentError(f"order {oid}: WooCommerce's answer has no status", outcome_unknown=True)
        return status.strip().lower().removeprefix("wc-")

    async def cancel_order(self, order_id: str, *, reason: str, notify_customer: bool, staff_note: str | None,
                           unless_since: datetime | None = None) -> None:
        """Status ``cancelled`` (``set_status``: only an order not yet shipped, nor called off,
        failed or refunded; one already cancelled stays as it is), then the staff note (if any)
        as a private order note.

        WooCommerce has no cancel reason, refund or notify switch on this call: ``reason``
        is not sent (put it in ``staff_note``), nothing is refunded, stock of a cancelled
        order is restored by WooCommerce itself, and which emails go out is the shop's
        email settings (``notify_customer`` is ignored).
        """
        await self.set_status(order_id, "cancelled")
        if staff_note and staff_note.strip():
            await self.add_note(order_id, staff_note, unless_since=unless_since)

    async def add_note(self, order_id: str, note: str, *, unless_since: datetime | None = None) -> None:
        """``POST /orders/{id}/notes {"note": …, "customer_note": false}`` (private; no email).

        Not idempotent at WooCommerce: a repeated call adds a second identical note. So a retry
        (``unless_since``: when the write-back was queued) first reads the order's private notes
        (``GET /orders/{id}/notes?type=internal``) and writes nothing when the same note is there
        from since then (ten minutes' grace for the two clocks): the earlier try landed though
        its answer was lost. The same words written before that (a second reschedule after a
        second failed delivery) are a note of their own.
        """
        oid = _order_id(order_id)
        if not note.strip():
            return
        if unless_since is not None and await self._has_note_since(oid, note, unless_since - NOTE_CLOCK_GRACE):
            return
        await self._request("POST", f"/orders/{oid}/notes", json_body={"note": note, "customer_note": False})

    async def _has_note_since(self, oid: str, note: str, since: datetime) -> bool:
        response = await self._request("GET", f"/orders/{oid}/notes", params={"type": "internal", "_fields": "note,date_created_gmt"})
        notes = self._json(response)
        wanted = note.strip()
        for item in notes if isinstance(notes, list) else []:
            if not isinstance(item, dict) or str(item.get("note") or "").strip() != wanted:
                continue
            try:
                created = datetime.fromisoformat(str(item.get("date_created_gmt"))).replace(tzinfo=timezone.utc)
            except ValueError:
                continue
            if created >= since:
                return True
        return False

    async def add_tags(self, order_id: str, tags: Sequence[str]) -> None:
        """WooCommerce orders have no tags; we keep them in two places.

        1. Order meta ``_storeloop_tags`` = comma-joined set (machine-readable state), via
           ``PUT /orders/{id} {"meta_data": [{"key": "_storeloop_tags", "value": "a,b"}]}``.
           WooCommerce updates an existing meta with that key rather than adding another.
        2. A private order note ``storeloop tags: a, b`` naming the tags just added, so the
           merchant sees them in the order screen (underscore meta is hidden there).

        Like Shopify's ``tagsAdd`` this is a union: the order is read first
        (``GET /orders/{id}?_fields=id,meta_data``) and the meta keeps earlier tags. Tags already present are
        skipped, so a repeated call writes nothing. The note is written before the meta:
        if the meta write fails, the retry repeats the note (a duplicate note rather
        than a missing one).
        """
        oid = _order_id(order_id)
        wanted = _clean_tags(tags)
        if not wanted:
            return
        # _fields (WordPress REST) keeps the customer's data out of the answer
        response = await self._request("GET", f"/orders/{oid}", params={"_fields": "id,meta_data"})
        order = self._json(response)
        existing: list[str] = []
        if isinstance(order, dict) and isinstance(order.get("meta_data"), list):
            for meta in order["meta_data"]:
                if isinstance(meta, dict) and meta.get("key") == TAGS_META_KEY and isinstance(meta.get("value"), str):
                    existing = _clean_tags(meta["value"].split(","))
                    break
        new = [t for t in wanted if t not in existing]
        if not new:
            return
        await self.add_note(oid, TAGS_NOTE_PREFIX + ", ".join(new))
        merged = ",".join(existing + new)
        await self._request("PUT", f"/orders/{oid}", json_body={"meta_data": [{"key": TAGS_META_KEY, "value": merged}]})


__all__ = ["Page", "TAGS_META_KEY", "WooCommerceClient", "oauth1_params", "oauth1_signature", "refusal"]
