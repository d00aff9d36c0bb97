"""Shopify app authentication: the query HMAC of install/callback requests, the authorize URL,
and the three token requests (client credentials, authorization code, refresh).

Sources (platform-facts.md A8, and each checked for this module):

- Query HMAC: ``shopify_python_api`` ``shopify/session.py`` (``calculate_hmac``): drop ``hmac``;
  ``foo[]`` arrays become ``foo=["1", "2"]``; escape ``%``→``%25`` and, in keys, ``=``→``%3D``,
  then ``&``→``%26`` in each pair; sort the ``k=v`` pairs; join with ``&``; hex
  HMAC-SHA256 with the client secret; constant-time compare. That package keeps the secret
  in class-level global state (``Session.secret``), so the same rules are re-implemented
  here as pure functions (tested against Shopify's documented example, secret ``hush``).
- Token endpoint ``POST https://{shop}/admin/oauth/access_token``, form-encoded (shopify.dev
  "About client credentials": ``grant_type=client_credentials&client_id=…&client_secret=…``,
  answer ``{"access_token", "scope", "expires_in"}``; 86399 s in the examples).
- Refresh: ``grant_type=refresh_token``, ``refresh_token``, ``client_id``, ``client_secret``
  → ``access_token``, ``expires_in``, ``refresh_token`` (rotated), ``refresh_token_expires_in``.
- Authorization code: ``client_id``, ``client_secret``, ``code``, plus ``expiring=1`` for an
  expiring offline token with a refresh token (changelog "Offline access tokens now support
  expiry and refresh", 2025-12-10; the ``expiring`` parameter as in Shopify/shopify-app-php#12).

Shopify's ``shopifyapp`` (1.0.2) builds the client credentials and refresh requests with the
same fields (as a JSON body; we send the form encoding shopify.dev documents, which the
endpoint takes as well); ``tests/test_install_shopify.py`` posts both through one fake edge
and compares them. We do not call it because its exchange functions post to
``https://{shop}.myshopify.com`` only (no ``api_base_url`` for a proxy or a loopback fake),
date expiry by the wall clock instead of the caller's ``now``, and ``refresh_access_token``
makes no request while its own clock says the token has more than 60 s left, so renewal
``RENEW_BEFORE`` ahead of expiry cannot be driven by our (injectable) clock. Its client
credentials exchange also answers a 429 or a 5xx like a refused secret (``ok=False``; the
status only in its log records), where we need retryable vs permanent with ``Retry-After``,
and it has no authorization-code exchange.
Its functions keep no global state; the older ``shopify_python_api`` does (``Session.secret``).

Nothing here logs, and no exception message carries a secret, a token or a response body.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import urlencode

import httpx

from adapters.whatsapp.errors import classify_transport, retry_after_of
from connector.errors import PermanentError, RetryableError

TOKEN_TIMEOUT = httpx.Timeout(15.0, connect=5.0)
MAX_TIMESTAMP_AGE = timedelta(hours=24)  # what shopify_python_api's validate_params allows
MAX_CLOCK_SKEW = timedelta(minutes=5)  # a timestamp from the future beyond this is refused too
_SHOP_RE = re.compile(r"[a-z0-9][a-z0-9-]*\.myshopify\.com")
_ERR_CODE = re.compile(r"[^a-z0-9_.\-]")


def is_myshopify_host(shop: str | None) -> bool:
    """``name.myshopify.com`` and nothing else: no scheme, port, path, custom domain or suffix trick."""
    return bool(shop) and _SHOP_RE.fullmatch(shop) is not None  # type: ignore[arg-type]


Params = Mapping[str, str | Sequence[str]] | Iterable[tuple[str, str]]


def _grouped(params: Params) -> dict[str, str | list[str]]:
    """Query pairs -> dict; a repeated ``foo[]`` key collects a list (as Shopify sends arrays)."""
    items = params.items() if isinstance(params, Mapping) else params
    out: dict[str, str | list[str]] = {}
    for key, value in items:
        if key.endswith("[]"):
            bucket = out.setdefault(key, [])
            assert isinstance(bucket, list)
            bucket.extend([value] if isinstance(value, str) else list(value))
        else:
            out[key] = value if isinstance(value, str) else (list(value)[-1] if value else "")
    return out


def hmac_message(params: Params) -> str:
    """The string Shopify signs: sorted ``k=v`` pairs without ``hmac``, with its escaping rules."""
    pairs = []
    for key, value in _grouped(params).items():
        if key == "hmac":
            continue
        if key.endswith("[]"):
            key = key[:-2]
            value = json.dumps([str(v) for v in value])  # ["1", "2"]: note the space after the comma
        k = str(key).replace("%", "%25").replace("=", "%3D")
        v = str(value).replace("%", "%25")
        pairs.append(f"{k}={v}".replace("&", "%26"))
    return "&".join(sorted(pairs))


def calculate_hmac(params: Params, secret: str) -> str:
    return hmac.new(secret.encode("utf-8"), hmac_message(params).encode("utf-8"), hashlib.sha256).hexdigest()


def verify_hmac(params: Params, secret: str) -> bool:
    grouped = _grouped(params)
    given = grouped.get("hmac")
    if not isinstance(given, str) or not given or not secret or not given.isascii():
        return False
    return hmac.compare_digest(calculate_hmac(grouped, secret).encode("ascii"), given.lower().encode("ascii"))


def timestamp_ok(timestamp: str | None, now: datetime) -> bool:
    """Not older than 24 h (replays) and not from the future beyond a little clock skew."""
    if not timestamp or not timestamp.isdigit() or len(timestamp) > 12:
        return False
    age = now.timestamp() - int(timestamp)
    return -MAX_CLOCK_SKEW.total_seconds() <= age <= MAX_TIMESTAMP_AGE.total_seconds()


def authorize_url(shop: str, client_id: str, scopes: Sequence[str], redirect_uri: str, state: str) -> str:
    """``https://{shop}/admin/oauth/authorize?client_id=…&scope=…&redirect_uri=…&state=…`` (offline
    access: no ``grant_options[]``)."""
    if not is_myshopify_host(shop):
        raise ValueError("shop must be a *.myshopify.com host")
    query = urlencode({"client_id": client_id, "scope": ",".join(scopes), "redirect_uri": redirect_uri, "state": state})
    return f"https://{shop}/admin/oauth/authorize?{query}"


@dataclass(frozen=True)
class TokenGrant:
    """What the token endpoint answered (times computed from the caller's ``now``)."""

    access_token: str = field(repr=False)
    scope: str
    expires_at: datetime | None
    refresh_token: str | None = field(default=None, repr=False)
    refresh_token_expires_at: datetime | None = None


class OAuthError(PermanentError):
    """The token endpoint refused (bad credentials, used code, revoked refresh token, app not installed)."""


def _seconds(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)) and value > 0:
        return int(value)
    if isinstance(value, str) and value.isdigit():
        return int(value)
    return None


def _parse_grant(response: httpx.Response, now: datetime, what: str) -> TokenGrant:
    status = response.status_code
    try:
        body = response.json()
    except ValueError:
        body = None
    if status == 429 or status >= 500:
        raise RetryableError(f"{what}: HTTP {status} from Shopify", http_status=status,
                             retry_after=retry_after_of(response))
    if not response.is_success or not isinstance(body, dict):
        code = body.get("error") if isinstance(body, dict) else None
        code_s = _ERR_CODE.sub("", str(code).lower())[:60] if code else ""
        raise OAuthError(f"{what}: HTTP {status}" + (f" ({code_s})" if code_s else ""), http_status=status)
    token = body.get("access_token")
    if not isinstance(token, str) or not token:
        raise OAuthError(f"{what}: no access_token in the answer", http_status=status)
    expires_in = _seconds(body.get("expires_in"))
    refresh = body.get("refresh_token") if isinstance(body.get("refresh_token"), str) and body.get("refresh_token") else None
    refresh_in = _seconds(body.get("refresh_token_expires_in"))
    scope = body.get("scope") if isinstance(body.get("scope"), str) else ""
    return TokenGrant(
        access_token=token,
        scope=scope,
        expires_at=now + timedelta(seconds=expires_in) if expires_in else None,
        refresh_token=refresh,
        refresh_token_expires_at=now + timedelta(seconds=refresh_in) if refresh and refresh_in else None,
    )


async def _post(http: httpx.AsyncClient, base_url: str, form: dict[str, str], now: datetime, what: str) -> TokenGrant:
    url = f"{base_url.rstrip('/')}/admin/oauth/access_token"
    try:
        response = await http.post(url, data=form, headers={"Accept": "application/json"}, timeout=TOKEN_TIMEOUT)
    except httpx.TransportError as exc:
        raise classify_transport(exc) from None  # the cause's repr could carry the URL
    return _parse_grant(response, now, what)


async def client_credentials_grant(
    http: httpx.AsyncClient, base_url: str, client_id: str, client_secret: str, now: datetime,
) -> TokenGrant:
    """Own store (an app of the merchant's organisation installed on its store): id + secret -> token."""
    form = {"grant_type": "client_credentials", "client_id": client_id, "client_secret": client_secret}
    return await _post(http, base_url, form, now, "client credentials grant")


async def exchange_code(
    http: httpx.AsyncClient, base_url: str, client_id: str, client_secret: str, code: str, now: datetime,
    *, expiring: bool = True,
) -> TokenGrant:
    """Authorization code -> offline token (expiring, with a refresh token, unless ``expiring=False``)."""
    form = {"client_id": client_id, "client_secret": client_secret, "code": code}
    if expiring:
        form["expiring"] = "1"
    return await _post(http, base_url, form, now, "authorization code exchange")


async def refresh_grant(
    http: httpx.AsyncClient, base_url: str, client_id: str, client_secret: str, refresh_token: str, now: datetime,
) -> TokenGrant:
    """Refresh an expiring offline token; the answer carries a new (rotated) refresh token to store."""
    form = {"grant_type": "refresh_token", "client_id": client_id, "client_secret": client_secret,
            "refresh_token": refresh_token}
    return await _post(http, base_url, form, now, "token refresh")


__all__ = [
    "OAuthError", "TokenGrant", "authorize_url", "calculate_hmac", "client_credentials_grant", "exchange_code",
    "hmac_message", "is_myshopify_host", "refresh_grant", "timestamp_ok", "verify_hmac",
]
