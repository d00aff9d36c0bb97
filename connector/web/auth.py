"""Browser sessions for the dashboard, and a limiter for failed logins.

Browsers cannot send the admin API's bearer header, so the dashboard trades the admin token
for a cookie once, through a login form:

- The cookie value is ``v1.<expires>.<nonce>.<signature>``: an expiry (Unix seconds) and a
  random nonce, signed with HMAC-SHA256 keyed by ``server.admin_token``. A store's own
  ``admin_token`` opens a session for that store only: ``v1.<expires>.<nonce>.<store>``, signed
  with that store's token, so rotating it ends that store's sessions. Nothing is stored on
  the server, so every process of a deployment accepts it; rotating the admin token ends
  every session at once. Logging out clears the browser's cookie; a copied cookie stays
  valid until it expires (``SESSION_SECONDS``), so rotate the token if one leaks.
- The cookie is HttpOnly (no script reads it), SameSite=Strict (no other site can make the
  browser send it; the sign-in and sign-out POSTs, which need no cookie, also refuse a form
  another site posted: ``dashboard._cross_site``), scoped to
  ``/dashboard`` and Secure when the browser is on HTTPS (the request, or a TLS-terminating
  proxy's ``X-Forwarded-Proto``, says so).
- Failed logins are counted per client IP in memory, **per process**: with several uvicorn
  workers each keeps its own count, so the effective limit is workers x ``LOGIN_ATTEMPTS``.
  Behind a proxy, the client IP is what uvicorn's ``--proxy-headers`` makes of it.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import threading
import time
from collections import deque
from collections.abc import Mapping

COOKIE = "storeloop_session"
COOKIE_PATH = "/dashboard"
SESSION_SECONDS = 12 * 3600
LOGIN_ATTEMPTS = 5  # failed logins allowed per client IP ...
LOGIN_WINDOW_SECONDS = 60.0  # ... within this many seconds; then 429 until the oldest ages out
_CONTEXT = b"storeloop.dashboard.session|"  # the same key signs nothing else
ALL_STORES = "*"  # a session opened with server.admin_token (store keys are slugs: never "*")


def token_matches(given: str | None, token: str | None) -> bool:
    """Constant-time comparison of a presented token with the configured one (None: never)."""
    if not token or given is None:
        return False
    return hmac.compare_digest(given.encode("utf-8", "surrogatepass"), token.encode("utf-8"))


def _sign(payload: str, token: str) -> str:
    mac = hmac.new(token.encode("utf-8"), _CONTEXT + payload.encode("ascii"), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(mac).decode("ascii").rstrip("=")


def issue_session(token: str, *, now: float | None = None, ttl: int = SESSION_SECONDS, store: str | None = None) -> str:
    """A session for everything (``server.admin_token``), or for one store, signed with that
    store's own ``admin_token`` (``v1.<expires>.<nonce>.<store key>``)."""
    expires = int((time.time() if now is None else now) + ttl)
    payload = f"v1.{expires}.{secrets.token_urlsafe(12)}" + (f".{store}" if store else "")
    return f"{payload}.{_sign(payload, token)}"


def session_scope(value: str | None, token: str | None, store_tokens: Mapping[str, str] | None = None, *,
                  now: float | None = None) -> str | None:
    """``ALL_STORES`` for an untampered, unexpired session signed with the admin token; a store's key
    for one signed with that store's own token; None otherwise."""
    if not value or len(value) > 200 or not value.isascii():
        return None
    payload, _, signature = value.rpartition(".")
    parts = payload.split(".")
    if len(parts) not in (3, 4) or parts[0] != "v1" or not parts[1].isdigit():
        return None
    store = parts[3] if len(parts) == 4 else None
    key = (store_tokens or {}).get(store) if store else token
    if not key or not hmac.compare_digest(signature.encode("ascii"), _sign(payload, key).encode("ascii")):
        return None
    current = time.time() if now is None else now
    expires = int(parts[1])
    if not current < expires <= current + SESSION_SECONDS + 60:
        return None
    return store or ALL_STORES


def session_valid(value: str | None, token: str | None, *, now: float | None = None) -> bool:
    """True for an untampered, unexpired session signed with this admin token (every store)."""
    return session_scope(value, token, now=now) == ALL_STORES


class LoginLimiter:
    """Failed login attempts per client IP in a sliding window (in memory, per process).

    A store's token forgives nothing: the failures age out of the window. A store's team holds a
    valid token (its own store's); if using it wiped the count, they could guess
    ``server.admin_token`` without limit, four guesses and one sign-in at a time. The admin token
    itself does forgive (``forgive``)."""

    def __init__(self, attempts: int = LOGIN_ATTEMPTS, window: float = LOGIN_WINDOW_SECONDS, max_clients: int = 10_000):
        self.attempts, self.window, self.max_clients = attempts, window, max_clients
        self._failures: dict[str, deque[float]] = {}
        self._lock = threading.Lock()

    def _recent(self, client: str, now: float) -> deque[float] | None:
        failures = self._failures.get(client)
        if failures is not None:
            while failures and failures[0] <= now - self.window:
                failures.popleft()
            if not failures:
                del self._failures[client]
                return None
        return failures

    def retry_after(self, client: str, *, now: float | None = None) -> int:
        """Seconds until this client may try again; 0 when it may try now."""
        now = time.monotonic() if now is None else now
        with self._lock:
            failures = self._recent(client, now)
            if failures is None or len(failures) < self.attempts:
                return 0
            return max(1, int(failures[0] + self.window - now + 0.999))

    def failed(self, client: str, *, now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        with self._lock:
            if client not in self._failures and len(self._failures) >= self.max_clients:
                for key in list(self._failures):  # bounded memory: drop clients whose failures aged out
                    self._recent(key, now)
                if len(self._failures) >= self.max_clients:
                    self._failures.pop(next(iter(self._failures)))
            self._failures.setdefault(client, deque()).append(now)

    def forgive(self, client: str) -> None:
        """``server.admin_token`` itself signed in: its holder has nothing left to guess, so the count
        (one client's stale token behind a shared proxy address, say) no longer locks the others out.
        A store team's token forgives nothing: with it they could otherwise guess the admin token."""
        with self._lock:
            self._failures.pop(client, None)

