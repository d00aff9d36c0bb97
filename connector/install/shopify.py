"""Shopify install, the three ways a store connects (platform-facts.md A8):

- **own store** (``storeloop install shopify --store KEY``): a Dev Dashboard app installed on
  the merchant's store, ``client_id`` + ``client_secret`` in the configuration; the client
  credentials grant gives a token (24 h), stored encrypted and renewed before it expires;
- **agency / many stores**: ``GET /shopify/install?shop=…&hmac=…&timestamp=…`` (the app URL)
  checks the query HMAC, the shop host and that the shop is configured, then redirects to
  Shopify's authorize page with a single-use ``state``; ``GET /shopify/callback`` checks the
  HMAC, the timestamp (24 h) and the state, and exchanges the code for an expiring offline
  token with a refresh token (both stored encrypted; refreshed before expiry);
- **legacy**: a custom-app ``access_token`` in the configuration keeps working.

After either install the webhook subscriptions are registered (``adapters/shopify/subscriptions.py``),
then, for a store running the reorder journey, every product is read once (``connector/install/products.py``;
after the web callback that happens once the page is sent). An install that ends an ``app/uninstalled``
also reads back the orders changed meanwhile (``catch_up_orders``), which the store's timers and sends
wait for (``connector/reinstall.py``).
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import anyio.to_thread
import httpx

from adapters.shopify import oauth
from adapters.shopify.subscriptions import COMPLIANCE_NOTE, METAFIELD_NAMESPACE, SubscriptionReport, register_webhooks
from connector import reinstall
from connector.config import Settings, ShopifyStore
from connector.errors import SendError, StoreloopError
from connector.install import nonces
from connector.install.credentials import (
    CredentialsMissing,
    RenewingShopifyClient,
    ShopifyTokenSource,
    can_use_client_credentials,
    obtain_shopify_token,
    save_grant,
)
from connector.install.products import sync_products_at_install, wants_products
from connector.secrets import HOW_TO, SecretBox
from connector.storage.db import Database
from connector.sync import ProductSyncReport, SyncReport, reconcile_orders

log = logging.getLogger("storeloop.install")

CALLBACK_PATH = "/shopify/callback"
WEBHOOK_PATH = "/webhooks/shopify"


class InstallRefused(StoreloopError):
    """An install step that must not go on; ``status`` for the web answer, message safe to show."""

    def __init__(self, message: str, status: int = 400):
        self.status = status
        super().__init__(message)


@dataclass
class ShopifyInstallReport:
    store: str
    shop: str
    token: str  # how the token was obtained: never the token
    expires_at: datetime | None = None
    webhooks: SubscriptionReport | None = None
    webhook_error: str | None = None
    notes: list[str] = field(default_factory=list)
    products: ProductSyncReport | None = None  # read at install (stores running the reorder journey)
    products_error: str | None = None  # why they were not (the install still counts: the daily sync retries)
    resumed: bool = False  # it ended an app/uninstalled: the orders changed meanwhile are read back before sends resume
    catch_up: SyncReport | None = None  # that read (the CLI install does it; the web callback once the page is sent)
    catch_up_error: str | None = None  # why it failed (the worker's reconcile tries again; the store waits until then)

    @property
    def ok(self) -> bool:
        return self.webhook_error is None and (self.webhooks is None or self.webhooks.ok)


def webhook_rows(hooks: SubscriptionReport) -> list[tuple[str, str, str]]:
    """(topic, result, detail), one outcome per topic: a subscription whose metafield namespace was
    added is ``updated`` (not also ``already present``), one whose update failed is ``failed`` only;
    plus an ``also at`` line for each other address a topic is subscribed to."""
    failed = {topic for topic, _ in hooks.failed}
    present = [t for t in hooks.present if t not in hooks.updated and t not in failed]
    rows = [(t, "created", "") for t in hooks.created] + [(t, "already present", "") for t in present]
    rows += [(t, "updated", f"metafield namespace {METAFIELD_NAMESPACE!r} added") for t in hooks.updated]
    rows += [(t, "failed", why) for t, why in hooks.failed] + [(t, "also at", uri) for t, uri in hooks.elsewhere]
    return rows


def scope_notes(hooks: SubscriptionReport) -> list[str]:
    """Topics subscribed although the store's ``scopes`` lack what they need: this token has it
    (a client-credentials token carries the app version's scopes), but an install from the
    Shopify admin asks for ``scopes`` only."""
    failed = {topic for topic, _ in hooks.failed}
    return [f"{topic} is subscribed, but the store's `scopes` lack {' or '.join(needs)}: add {needs[0]} there, "
            f"since an install from the Shopify admin asks for `scopes` only" for topic, needs in hooks.scope_gaps.items()
            if topic not in failed]


def webhook_summary(hooks: SubscriptionReport) -> str:
    """``N created, N already present[, N updated], N failed``, counting each topic once."""
    counts = {"created": 0, "already present": 0, "updated": 0, "failed": 0}
    for _topic, result, _detail in webhook_rows(hooks):
        if result in counts:
            counts[result] += 1
    updated = f", {counts['updated']} updated" if counts["updated"] else ""
    return f"{counts['created']} created, {counts['already present']} already present{updated}, {counts['failed']} failed"


def public_base(settings: Settings) -> str:
    base = settings.server.public_base_url
    if not base:
        raise InstallRefused("server.public_url is not set: it is the address Shopify and WooCommerce reach this "
                             "server at (install redirect and webhook deliveries)", status=503)
    return base


def shopify_store_for(settings: Settings, shop: str) -> ShopifyStore | None:
    for s in settings.stores:
        if isinstance(s, ShopifyStore) and s.shop_domain == shop:
            return s
    return None


def clear_uninstalled(db: Database, store: ShopifyStore, store_id: int, now: datetime) -> bool:
    """A fresh install undoes an earlier ``app/uninstalled``: the jobs resume at once; what was queued
    meanwhile is skipped, and timers and sends wait for the orders to be read back
    (``connector/reinstall.py``). False when the store was not uninstalled."""
    with db.write_lock(), db.engine.begin() as conn:
        return reinstall.resume(conn, store, store_id, now)


async def catch_up_orders(
    db: Database, store: ShopifyStore, store_id: int, source: ShopifyTokenSource, now: datetime, *,
    http: httpx.AsyncClient | None = None,
) -> tuple[SyncReport | None, str | None]:
    """After an uninstall, the orders changed meanwhile at once (the reconcile from its cursor, which
    ends the store's wait), not at the worker's next reconcile tick: ``(report, None)`` or ``(None, why)``."""
    try:
        async with RenewingShopifyClient(store, source, http=http) as client:
            return await reconcile_orders(db, store, store_id, client, now=now), None
    except StoreloopError as exc:  # after its retries: the worker's reconcile tries again, the store waits until then
        why = f"{type(exc).__name__}: {exc}"
        log.warning("orders not read back after the reinstall", extra={"store": store.key, "reason": why})
        return None, why


async def register_store_webhooks(
    db: Database, settings: Settings, store: ShopifyStore, source: ShopifyTokenSource, *, http: httpx.AsyncClient | None = None,
) -> SubscriptionReport:
    uri = public_base(settings) + WEBHOOK_PATH
    async with RenewingShopifyClient(store, source, http=http) as client:
        return await register_webhooks(client, uri, scopes=store.scopes)


async def sync_store_products(
    db: Database, store: ShopifyStore, store_id: int, source: ShopifyTokenSource, now: datetime, *,
    http: httpx.AsyncClient | None = None,
) -> tuple[ProductSyncReport | None, str | None]:
    """Every product into the inbox once (reorder stores only; see ``connector/install/products.py``)."""
    if not wants_products(store):
        return None, None
    async with RenewingShopifyClient(store, source, http=http) as client:
        return await sync_products_at_install(db, store, store_id, client, now)


async def install_shopify(
    db: Database, settings: Settings, store: ShopifyStore, store_id: int, now: datetime, *,
    box: SecretBox | None, http: httpx.AsyncClient | None = None,
) -> ShopifyInstallReport:
    """``storeloop install shopify``: a token (client credentials, or the configured/stored one),
    then the webhook subscriptions, then (reorder journey) every product once. Refuses before
    any call when nothing would work."""
    public_base(settings)
    report = ShopifyInstallReport(store=store.key, shop=store.shop_domain, token="")
    if can_use_client_credentials(store):
        if box is None:
            raise InstallRefused(f"refusing to install {store.key}: the token must be stored encrypted; {HOW_TO}", status=503)
    elif store.access_token is None or not store.access_token.get_secret_value():
        raise InstallRefused(
            f"store {store.key} has neither client_id + client_secret (own store: client credentials grant) nor a "
            f"custom-app access_token; for a store of another organisation open "
            f"{public_base(settings)}/shopify/install?shop={store.shop_domain} from its admin (app URL)")
    try:
        token = await obtain_shopify_token(db, store, now, box=box, store_id=store_id, http=http)
    except CredentialsMissing as exc:
        raise InstallRefused(str(exc)) from None
    report.expires_at = token.expires_at
    report.token = {
        "client_credentials": "client credentials grant (new token, stored encrypted)",
        "refresh": "refreshed with the stored refresh token",
        "stored": "stored token (still valid)",
        "config": "custom-app access_token from the configuration (legacy)",
    }.get(token.source, token.source)
    if token.source == "config":
        report.notes.append("legacy custom-app token: consider a Dev Dashboard app with client_id/client_secret")
    source = ShopifyTokenSource(db, store, box=box, store_id=store_id, clock=lambda: now, http=http)
    try:
        report.webhooks = await register_store_webhooks(db, settings, store, source, http=http)
        report.notes += scope_notes(report.webhooks)
    except SendError as exc:
        report.webhook_error = str(exc)
    report.resumed = await anyio.to_thread.run_sync(clear_uninstalled, db, store, store_id, now)
    if report.resumed:
        report.catch_up, report.catch_up_error = await catch_up_orders(db, store, store_id, source, now, http=http)
    report.products, report.products_error = await sync_store_products(db, store, store_id, source, now, http=http)
    report.notes.append(COMPLIANCE_NOTE.replace("{public_url}", public_base(settings)))
    return report


# ---------------------------------------------------------------- authorization code (web)


def _single(params: list[tuple[str, str]], name: str) -> str:
    values = [v for k, v in params if k == name]
    if len(values) != 1:
        raise InstallRefused(f"expected exactly one {name!r} parameter")
    return values[0]


def _checked_store(settings: Settings, params: list[tuple[str, str]], now: datetime) -> tuple[ShopifyStore, str]:
    """Shop host, configured store, app credentials, HMAC, timestamp: in that order."""
    shop = _single(params, "shop").strip().lower()
    if not oauth.is_myshopify_host(shop):
        raise InstallRefused("shop must be a *.myshopify.com domain")
    store = shopify_store_for(settings, shop)
    if store is None:
        raise InstallRefused("this shop is not configured on this server", status=404)
    if not can_use_client_credentials(store):
        raise InstallRefused("this shop has no client_id / client_secret configured", status=409)
    secret = store.client_secret.get_secret_value()  # type: ignore[union-attr]
    if not oauth.verify_hmac(params, secret):
        log.warning("shopify install request with a bad hmac", extra={"store": store.key})
        raise InstallRefused("invalid hmac", status=401)
    if not oauth.timestamp_ok(_single(params, "timestamp"), now):
        log.warning("shopify install request with a stale timestamp", extra={"store": store.key})
        raise InstallRefused("request too old (timestamp)", status=401)
    return store, shop


def begin_oauth(db: Database, settings: Settings, params: list[tuple[str, str]], now: datetime) -> str:
    """``/shopify/install``: the authorize URL to redirect to, with a fresh single-use state."""
    store, shop = _checked_store(settings, params, now)
    base = public_base(settings)
    nonce = nonces.new_nonce(db, store.key, shop, now)
    assert store.client_id is not None
    return oauth.authorize_url(shop, store.client_id, store.scopes, base + CALLBACK_PATH, nonce)


async def complete_oauth(runtime: Any, params: list[tuple[str, str]], now: datetime, *,
                         http: httpx.AsyncClient | None = None) -> ShopifyInstallReport:
    """``/shopify/callback``: verify, use up the state, exchange the code, store the tokens,
    register the webhooks. Raises ``InstallRefused`` with the status to answer."""
    settings, db = runtime.settings, runtime.db
    store, shop = _checked_store(settings, params, now)
    box = runtime.secret_box
    if box is None:
        raise InstallRefused(f"install is not possible yet: {HOW_TO}", status=503)
    state = _single(params, "state")
    owner = await anyio.to_thread.run_sync(nonces.peek_nonce, db, state, now)
    if owner is None or owner != (store.key, shop):
        log.warning("shopify callback with an unknown, used or expired state", extra={"store": store.key})
        raise InstallRefused("unknown, used or expired state", status=401)
    if await anyio.to_thread.run_sync(nonces.consume_nonce, db, state, now) is None:
        raise InstallRefused("unknown, used or expired state", status=401)  # lost a race with a replay
    code = _single(params, "code")
    store_id = runtime.store_ids[store.key]
    secret = store.client_secret.get_secret_value()  # type: ignore[union-attr]
    assert store.client_id is not None
    async with httpx.AsyncClient(timeout=oauth.TOKEN_TIMEOUT) if http is None else contextlib.nullcontext(http) as client:  # ours, or the caller's (not closed)
        grant = await oauth.exchange_code(client, store.admin_base_url, store.client_id, secret, code, now)
        await anyio.to_thread.run_sync(lambda: save_grant(db, box, store_id, grant, now))
        resumed = await anyio.to_thread.run_sync(clear_uninstalled, db, store, store_id, now)
        log.info("shopify app installed", extra={"store": store.key, "scope": grant.scope[:200],
                                                 "expiring": grant.expires_at is not None})
        source = runtime.shopify_tokens.get(store.key)
        if source is None:
            source = runtime.shopify_tokens[store.key] = ShopifyTokenSource(db, store, box=box, store_id=store_id,
                                                                             clock=lambda: runtime.clock())
        source.forget()
        _use_as_writer(runtime, store_id, store, source)
        report = ShopifyInstallReport(store=store.key, shop=shop, token="authorization code (expiring offline token)"
                                      if grant.refresh_token else "authorization code (offline token)",
                                      expires_at=grant.expires_at, resumed=resumed)
        try:
            report.webhooks = await register_store_webhooks(db, settings, store, source, http=client)
            report.notes += scope_notes(report.webhooks)
        except SendError as exc:
            report.webhook_error = str(exc)
    report.notes.append(COMPLIANCE_NOTE.replace("{public_url}", public_base(settings)))
    return report


def _use_as_writer(runtime: Any, store_id: int, store: ShopifyStore, source: ShopifyTokenSource) -> None:
    """A store that had no credentials wrote back in dry-run: from now on it writes for real."""
    from connector.outbox.writebacks import DryRunWriter

    writers = getattr(runtime, "writers", None)
    if isinstance(writers, dict) and isinstance(writers.get(store_id), DryRunWriter):
        writers[store_id] = RenewingShopifyClient(store, source)


__all__ = [
    "InstallRefused", "ShopifyInstallReport", "begin_oauth", "catch_up_orders", "clear_uninstalled", "complete_oauth",
    "install_shopify", "public_base",
    "register_store_webhooks", "scope_notes", "sync_store_products", "webhook_rows", "webhook_summary",
]
