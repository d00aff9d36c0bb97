"""A thin async Shopify Admin GraphQL client: the store write-backs (``StoreWriter``).

Why not a library: ShopifyAPI is urllib-based with no GraphQL timeout, and shopifyapp's
``admin_graphql_request`` ignores Retry-After and does not retry ``THROTTLED``
(shared/docs/libraries.md §1). So this is one POST per call over httpx with explicit
timeouts, and failures are classified here, at the edge:

- ``THROTTLED`` (HTTP 200 or 429) -> ``RetryableError(retry_after=wait)`` where
  ``wait = (requestedQueryCost - currentlyAvailable) / restoreRate`` clamped to
  [0.5, 60] s (platform-facts.md A7). No sleeping here: the outbox retries durably.
- HTTP 429 without a cost -> ``RetryableError`` with the Retry-After header.
- 5xx / transport -> ``RetryableError`` (a read timeout sets ``outcome_unknown``).
- 401 / 403 -> ``PermanentError`` (token revoked, scope missing); other 4xx permanent.
- GraphQL ``errors`` -> ``PermanentError`` with the first error's short message, except
  ``INTERNAL_SERVER_ERROR`` (Shopify-side, retryable, outcome unknown).
- ``userErrors`` of a mutation -> ``PermanentError`` listing field/message.

Never in an exception or a log line: the access token, the response body. Shopify's own
short error messages are scrubbed and cut to 200 characters. ``trace_id`` carries
Shopify's ``X-Request-Id``.

Idempotence (the outbox may repeat a write-back whose first try timed out):
``tagsAdd`` is a set union; ``cancel_order`` treats "already cancelled" as success;
``add_note`` skips a line the note already holds.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import httpx

from adapters.whatsapp.errors import classify_transport, retry_after_of
from connector.config import ShopifyStore
from connector.errors import PermanentError, RetryableError
from connector.storage import jsoncodec

DEFAULT_TIMEOUT = httpx.Timeout(10.0, connect=5.0)
MIN_THROTTLE_WAIT = 0.5
MAX_THROTTLE_WAIT = 60.0
MAX_MESSAGE = 200
ORDER_GID = "gid://shopify/Order/"

# Our reason strings -> OrderCancelReason (CUSTOMER, DECLINED, FRAUD, INVENTORY, STAFF, OTHER).
CANCEL_REASONS = {r: r.upper() for r in ("customer", "declined", "fraud", "inventory", "staff", "other")}

TAGS_ADD = """
mutation StoreloopTagsAdd($id: ID!, $tags: [String!]!) {
  tagsAdd(id: $id, tags: $tags) {
    node { id }
    userErrors { field message }
  }
}
"""

# API 2026-07 signature. Source: shopify.dev/docs/api/admin-graphql/2026-07/mutations/orderCancel
# (example: orderId, notifyCustomer, refundMethod: OrderCancelRefundMethodInput!, restock,
# reason, staffNote) and the changelog "Order cancellation now supports refunds to store
# credit" (2025-07: the `refundMethod` input replaces the deprecated `refund: Boolean!`).
# "No refund" = refundMethod {originalPaymentMethodsRefund: false} and no storeCreditRefund;
# Shopify still releases an authorized-but-uncaptured payment on cancel (same page).
# Only `orderCancelUserErrors` is selected: the payload's `userErrors` is deprecated.
# The mutation is asynchronous: it returns a Job, which can end without cancelling (an open
# return, a payment still being processed); ``cancel_order`` waits for it and reads the order.
ORDER_CANCEL = """
mutation StoreloopOrderCancel($orderId: ID!, $reason: OrderCancelReason!,
    $refundMethod: OrderCancelRefundMethodInput!, $restock: Boolean!,
    $notifyCustomer: Boolean, $staffNote: String) {
  orderCancel(orderId: $orderId, reason: $reason, refundMethod: $refundMethod,
      restock: $restock, notifyCustomer: $notifyCustomer, staffNote: $staffNote) {
    job { id done }
    orderCancelUserErrors { field message code }
  }
}
"""

ORDER_CANCELLED_AT = """
query StoreloopOrderCancelledAt($id: ID!) {
  order(id: $id) { id cancelledAt }
}
"""

JOB_DONE = """
query StoreloopJob($id: ID!) {
  job(id: $id) { id done }
}
"""

# how long ``cancel_order`` waits for Shopify's cancel job, in pauses between looks (about 15 s in all)
CANCEL_JOB_WAITS = (0.5, 1.0, 2.0, 4.0, 8.0)

ORDER_NOTE = """
query StoreloopOrderNote($id: ID!) {
  order(id: $id) { id note }
}
"""

ORDER_UPDATE_NOTE = """
mutation StoreloopOrderNoteUpdate($input: OrderInput!) {
  orderUpdate(input: $input) {
    order { id }
    userErrors { field message }
  }
}
"""

_PHONE = re.compile(r"\+?\d[\d\s().-]{5,}\d")
_TOKENISH = re.compile(r"[A-Za-z0-9_\-]{32,}")


def _short(text: object, redact: Sequence[str] = ()) -> str:
    """Shopify's message, safe for a log: no token, no long numbers, one line, <= 200 chars."""
    out = str(text)
    for secret in redact:
        if secret:
            out = out.replace(secret, "[redacted]")
    out = _PHONE.sub(lambda m: m.group(0) if len(re.sub(r"\D", "", m.group(0))) < 7 else "[number]", out)
    out = _TOKENISH.sub("[redacted]", out)
    return " ".join(out.split())[:MAX_MESSAGE]


def order_gid(order_id: str) -> str:
    """``"820982911946154508"`` (or an Order gid) -> ``gid://shopify/Order/820982911946154508``."""
    raw = str(order_id).strip()
    if raw.startswith(ORDER_GID):
        raw = raw[len(ORDER_GID):]
    if not raw.isdigit():
        raise PermanentError("Shopify order id must be numeric")
    return ORDER_GID + raw


@dataclass(frozen=True, slots=True)
class ThrottleStatus:
    """The last ``extensions.cost.throttleStatus`` seen, and when (our clock)."""

    maximum_available: float
    currently_available: float
    restore_rate: float
    observed_at: float

    def available_at(self, now: float) -> float:
        """Points the bucket should hold at ``now`` (leaky bucket refill, capped)."""
        elapsed = max(0.0, now - self.observed_at)
        return min(self.maximum_available, self.currently_available + self.restore_rate * elapsed)


def _num(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value)


def _user_errors(errors: object) -> list[dict[str, Any]]:
    return [e for e in errors if isinstance(e, dict)] if isinstance(errors, list) else []


def _describe_user_errors(errors: list[dict[str, Any]], redact: Sequence[str]) -> str:
    parts = []
    for e in errors[:5]:
        field = e.get("field")
        field_s = ".".join(str(f) for f in field) if isinstance(field, list) else (str(field) if field else "")
        code = e.get("code")
        msg = _short(e.get("message") or "", redact)
        parts.append(" ".join(p for p in (f"[{code}]" if code else "", f"{field_s}:" if field_s else "", msg) if p))
    return _short("; ".join(parts), redact)


class ShopifyAdminClient:
    """``StoreWriter`` over the Admin GraphQL API for one shop.

    ``timeout`` applies to every request, also on a client passed as ``http`` (which we
    then do not own and do not close). ``sleep`` and ``clock`` are injectable for tests.
    """

    def __init__(
        self,
        store: ShopifyStore,
        *,
        http: httpx.AsyncClient | None = None,
        timeout: httpx.Timeout = DEFAULT_TIMEOUT,
        sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep,
        clock: Callable[[], float] = time.monotonic,
    ):
        self._endpoint = f"{store.admin_base_url}/admin/api/{store.api_version}/graphql.json"
        self._shop = store.shop_domain
        self._token = store.access_token.get_secret_value() if store.access_token is not None else ""
        self._timeout = timeout
        self._sleep = sleep
        self._clock = clock
        self._owns_http = http is None
        self._http = http if http is not None else httpx.AsyncClient(timeout=timeout)
        self._throttle: ThrottleStatus | None = None
        self._reserved = 0.0  # points promised by wait_for_budget since the last throttleStatus

    def __repr__(self) -> str:  # never the token
        return f"ShopifyAdminClient({self._shop!r})"

    @property
    def endpoint(self) -> str:
        return self._endpoint

    @property
    def throttle(self) -> ThrottleStatus | None:
        """The last throttle status Shopify reported (None before the first answer)."""
        return self._throttle

    async def aclose(self) -> None:
        if self._owns_http:
            await self._http.aclose()

    async def __aenter__(self) -> "ShopifyAdminClient":
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    # ------------------------------------------------------------------ pacing

    async def wait_for_budget(self, cost: float) -> float:
        """Sleep until the bucket should hold ``cost`` points; returns the seconds slept.

        Based on the last throttleStatus plus the refill since then, minus what earlier
        ``wait_for_budget`` calls already promised (so concurrent callers queue rather
        than all waking at once). Every fresh answer resets that estimate. Without a
        throttle status yet there is nothing to go on: no wait. A cost above the bucket
        size is treated as a full bucket.
        """
        status = self._throttle
        if status is None or status.restore_rate <= 0:
            return 0.0
        cost = min(float(cost), status.maximum_available)
        available = status.available_at(self._clock()) - self._reserved
        wait = max(0.0, (cost - available) / status.restore_rate)
        self._reserved += cost
        if wait > 0:
            await self._sleep(wait)
        return wait

    def _observe(self, body: dict[str, Any]) -> tuple[float | None, ThrottleStatus | None]:
        """Record extensions.cost.throttleStatus; returns (requestedQueryCost, status)."""
        ext = body.get("extensions")
        cost = ext.get("cost") if isinstance(ext, dict) else None
        if not isinstance(cost, dict):
            return None, None
        requested = _num(cost.get("requestedQueryCost"))
        ts = cost.get("throttleStatus")
        if not isinstance(ts, dict):
            return requested, None
        maximum, current, rate = (_num(ts.get(k)) for k in ("maximumAvailable", "currentlyAvailable", "restoreRate"))
        if maximum is None or current is None or rate is None:
            return requested, None
        status = ThrottleStatus(maximum, current, rate, self._clock())
        self._throttle = status
        self._reserved = 0.0
        return requested, status

    # ------------------------------------------------------------------ transport

    async def graphql(self, query: str, variables: dict[str, Any] | None = None) -> dict[str, Any]:
        """One POST; returns the response's ``data``. Raises RetryableError / PermanentError."""
        if not self._token:
            raise PermanentError(f"Shopify store {self._shop}: no access token configured")
        headers = {
            "X-Shopify-Access-Token": self._token,
            "Content-Type": "application/json",
            "Accept": "application/json",
        }
        try:
            response = await self._http.post(
                self._endpoint, json={"query": query, "variables": variables or {}}, headers=headers,
                timeout=self._timeout,
            )
        except httpx.TransportError as exc:
            raise classify_transport(exc) from None  # the cause's repr could carry the URL
        return self._read(response)

    def _read(self, response: httpx.Response) -> dict[str, Any]:
        status = response.status_code
        trace_id = response.headers.get("X-Request-Id")
        trace_id = trace_id[:64] if trace_id else None
        retry_after = retry_after_of(response)
        redact = (self._token,)
        try:
            body = jsoncodec.loads(response.content)  # a lone surrogate (no database stores one) becomes U+FFFD
        except (ValueError, UnicodeDecodeError):
            body = None
        if not isinstance(body, dict):
            body = None
        kw: dict[str, Any] = {"http_status": status, "trace_id": trace_id}

        requested, throttle = self._observe(body) if body is not None else (None, None)
        errors = body.get("errors") if body is not None else None
        first = errors[0] if isinstance(errors, list) and errors and isinstance(errors[0], dict) else None
        ext = first.get("extensions") if first is not None else None
        gql_code = ext.get("code") if isinstance(ext, dict) else None

        if gql_code == "THROTTLED" or (status == 429 and body is not None and self._is_throttled_text(errors)):
            wait = self._throttle_wait(requested, throttle, retry_after)
            raise RetryableError(f"Shopify THROTTLED (HTTP {status}); retry in {wait:.1f} s", retry_after=wait, **kw)
        if status == 429:
            raise RetryableError("HTTP 429 (rate limited)", retry_after=retry_after, **kw)
        if status >= 500:
            raise RetryableError(f"HTTP {status} from Shopify", retry_after=retry_after, **kw)
        if status == 401:
            raise PermanentError("HTTP 401: access token invalid, expired or revoked", **kw)
        if status == 403:
            raise PermanentError("HTTP 403: access denied (missing scope, e.g. write_orders?)", **kw)
        if status == 402:
            raise PermanentError("HTTP 402: shop frozen (payment required)", **kw)
        if status == 423:
            raise PermanentError("HTTP 423: shop locked", **kw)
        if not response.is_success:
            raise PermanentError(f"HTTP {status} from Shopify", **kw)
        if body is None:
            # A 2xx we cannot read (a proxy page?): a mutation may have been applied.
            raise PermanentError("unexpected response (not a JSON object)", outcome_unknown=True, **kw)
        if errors:
            msg = _short(first.get("message") or "", redact) if first is not None else ""
            code_s = f" {gql_code}" if isinstance(gql_code, str) else ""
            if gql_code == "INTERNAL_SERVER_ERROR":
                raise RetryableError(f"GraphQL error{code_s}: {msg}", outcome_unknown=True, **kw)
            raise PermanentError(f"GraphQL error{code_s}: {msg}" if msg else f"GraphQL error{code_s}", **kw)
        data = body.get("data")
        if not isinstance(data, dict):
            raise PermanentError("GraphQL response without data", outcome_unknown=True, **kw)
        return data

    @staticmethod
    def _is_throttled_text(errors: object) -> bool:
        if isinstance(errors, str):
            return "throttled" in errors.lower()
        if isinstance(errors, list):
            return any(isinstance(e, dict) and str(e.get("message", "")).lower() == "throttled" for e in errors)
        return False

    @staticmethod
    def _throttle_wait(requested: float | None, status: ThrottleStatus | None, retry_after: float | None) -> float:
        """``(requested - currentlyAvailable) / restoreRate`` in [0.5, 60] s (A7).

        Without a cost in the answer: the Retry-After header, else 1 s. With both, the
        longer of the two.
        """
        wait: float | None = None
        if requested is not None and status is not None and status.restore_rate > 0:
            wait = (requested - status.currently_available) / status.restore_rate
        if retry_after is not None:
            wait = retry_after if wait is None else max(wait, retry_after)
        if wait is None:
            wait = 1.0
        return min(MAX_THROTTLE_WAIT, max(MIN_THROTTLE_WAIT, wait))

    def _payload(self, data: dict[str, Any], field: str) -> dict[str, Any]:
        payload = data.get(field)
        if not isinstance(payload, dict):
            raise PermanentError(f"{field}: no payload in the response", outcome_unknown=True)
        return payload

    # ------------------------------------------------------------------ StoreWriter

    async def add_tags(self, order_id: str, tags: Sequence[str]) -> None:
        """``tagsAdd``: adds without touching other tags; adding a present tag is a no-op."""
        gid = order_gid(order_id)
        clean = list(dict.fromkeys(t.strip() for t in tags if t and t.strip()))
        if not clean:
            return
        data = await self.graphql(TAGS_ADD, {"id": gid, "tags": clean})
        payload = self._payload(data, "tagsAdd")
        errors = _user_errors(payload.get("userErrors"))
        if errors:
            raise PermanentError(f"tagsAdd: {_describe_user_errors(errors, (self._token,))}")

    async def cancel_order(self, order_id: str, *, reason: str, notify_customer: bool, staff_note: str | None,
                           unless_since: datetime | None = None) -> None:
        """``orderCancel`` without refund, with restock. Asynchronous at Shopify (a Job).

        An order that is already cancelled is a success (write-backs must be idempotent).
        Shopify has no dedicated error code for it (OrderCancelUserErrorCode in 2025-10 …
        2026-07: INTERNAL_ERROR, INVALID, NO_REFUND_PERMISSION, NOT_FOUND, store-credit
        codes), so on any user error other than NOT_FOUND we ask for the order's
        ``cancelledAt``: set -> done, otherwise the user error is raised.
        """
        gid = order_gid(order_id)
        mapped = CANCEL_REASONS.get(reason.strip().lower())
        if mapped is None:
            raise PermanentError(f"unknown cancel reason {reason[:40]!r} (use one of {', '.join(CANCEL_REASONS)})")
        if unless_since is not None and await self._is_cancelled(gid):
            return  # a retry: the first try's job cancelled it after all
        variables = {
            "orderId": gid,
            "reason": mapped,
            "refundMethod": {"originalPaymentMethodsRefund": False},
            "restock": True,
            "notifyCustomer": bool(notify_customer),
            "staffNote": staff_note,
        }
        data = await self.graphql(ORDER_CANCEL, variables)
        payload = self._payload(data, "orderCancel")
        errors = _user_errors(payload.get("orderCancelUserErrors")) + _user_errors(payload.get("userErrors"))
        if not errors:
            await self._cancel_job_done(gid, payload.get("job"))
            return
        if not any(e.get("code") == "NOT_FOUND" for e in errors) and await self._is_cancelled(gid):
            return
        raise PermanentError(f"orderCancel: {_describe_user_errors(errors, (self._token,))}")

    async def _cancel_job_done(self, gid: str, job: Any) -> None:
        """Wait for the cancel job, then read the order: a job that ended without cancelling it
        (Shopify refuses some cancels only once the job runs) is a failed write-back, which a person
        hears of; one still running after the waits is retried (the retry first reads the order)."""
        job_id = job.get("id") if isinstance(job, dict) else None
        done = bool(job.get("done")) if isinstance(job, dict) else False
        for pause in CANCEL_JOB_WAITS if job_id and not done else ():
            await self._sleep(pause)
            data = await self.graphql(JOB_DONE, {"id": job_id})
            found = data.get("job")
            if isinstance(found, dict) and found.get("done"):
                done = True
                break
        if await self._is_cancelled(gid):
            return
        if done:
            raise PermanentError("orderCancel: Shopify's cancel job ended without cancelling the order "
                                 "(an open return or a payment still being processed can stop it)")
        raise RetryableError("orderCancel: Shopify's cancel job is still running", outcome_unknown=True)

    async def _is_cancelled(self, gid: str) -> bool:
        data = await self.graphql(ORDER_CANCELLED_AT, {"id": gid})
        order = data.get("order")
        return isinstance(order, dict) and bool(order.get("cancelledAt"))

    async def add_note(self, order_id: str, note: str, *, unless_since: datetime | None = None) -> None:
        """Append a line to the order's note (Shopify has one note field, overwritten on update).
        (``unless_since`` is not needed here: a line the note holds is never added again.)

        Two calls: read ``order.note``, then ``orderUpdate(input: {id, note})`` with the line
        appended. NOT atomic: a merchant edit between the two calls is lost (last writer
        wins). State belongs in tags; the note is for humans. A line the note already holds
        is not added again, so a repeated write-back is a no-op. ``note`` is written as one
        line (whitespace collapsed).
        """
        gid = order_gid(order_id)
        line = " ".join(note.split())
        if not line:
            return
        data = await self.graphql(ORDER_NOTE, {"id": gid})
        order = data.get("order")
        if not isinstance(order, dict):
            raise PermanentError("add_note: order not found")
        current = order.get("note") or ""
        if not isinstance(current, str):
            current = ""
        if line in (existing.strip() for existing in current.splitlines()):
            return
        new_note = f"{current.rstrip()}\n{line}" if current.strip() else line
        data = await self.graphql(ORDER_UPDATE_NOTE, {"input": {"id": gid, "note": new_note}})
        payload = self._payload(data, "orderUpdate")
        errors = _user_errors(payload.get("userErrors"))
        if errors:
            raise PermanentError(f"orderUpdate: {_describe_user_errors(errors, (self._token,))}")

    async def set_status(self, order_id: str, status: str) -> None:
        raise PermanentError("Shopify orders have no settable status")


__all__ = ["CANCEL_REASONS", "ShopifyAdminClient", "ThrottleStatus", "order_gid"]
