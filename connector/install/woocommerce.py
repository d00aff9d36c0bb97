"""WooCommerce install.

``storeloop install woocommerce --store KEY``:

1. checks the REST credentials (stored wc-auth keys first, else the configured pair) with one
   authenticated read; HTTPS stores use Basic auth, plain-HTTP ones OAuth 1.0a signing;
2. takes the store's webhook secret from the database, or generates one (URL-safe, so
   WooCommerce's HTML-entity decoding of secrets cannot alter it, B3) and stores it encrypted
   *before* any webhook exists, so the first delivery is already accepted;
3. for each topic our normaliser handles, creates the webhook to
   ``{public_url}/webhooks/woocommerce/{key}``, re-activates a paused or disabled one, and
   pushes the secret to existing ones when it is new (``--new-secret``). WooCommerce signs with
   the old secret until each webhook is updated, so the old one is kept (stored encrypted) and
   accepted until every webhook is confirmed updated - a failed update leaves it accepted and
   the next install pushes the secret again - then for ``ROTATION_GRACE`` more;
4. for a store running the reorder journey, reads every product once (tags and the
   ``_storeloop_replenish`` meta; ``connector/install/products.py``);
5. posts WooCommerce's ping body (``webhook_id=N``) to that address and expects the 200
   WooCommerce itself requires (it sends the same ping when a webhook is created).

The guided alternative (no keys to copy): ``GET /woocommerce/connect?store=KEY`` redirects to
``{site}/wc-auth/v1/authorize`` with a single-use callback path; WooCommerce posts
``{key_id, user_id, consumer_key, consumer_secret, key_permissions}`` as JSON to
``/woocommerce/callback/{nonce}`` and the keys are stored encrypted (woocommerce
``includes/class-wc-auth.php``: ``create_keys`` / ``post_consumer_data``; a non-200 answer
makes WooCommerce delete the key it just made). WooCommerce insists on an https callback.
"""

from __future__ import annotations

import contextlib
import logging
import secrets
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import urlencode

import anyio.to_thread
import httpx

from adapters.woocommerce import webhooks as woo_webhooks
from adapters.woocommerce.install import WooCommerceInstallClient
from connector.config import Settings, WooCommerceStore
from connector.errors import SendError
from connector.install import nonces
from connector.install.credentials import woocommerce_store_with_credentials
from connector.install.products import sync_products_at_install
from connector.install.shopify import InstallRefused, public_base
from connector.sync import same_url, woocommerce_delivery_url
from connector.secrets import (
    HOW_TO,
    WOO_CONSUMER_KEY,
    WOO_CONSUMER_SECRET,
    WOO_PREVIOUS_WEBHOOK_SECRET,
    WOO_WEBHOOK_SECRET,
    SecretBox,
    SecretsUnavailable,
    delete_credentials,
    get_credentials,
    put_credentials,
)
from connector.storage.db import Database
from connector.sync import ProductSyncReport

log = logging.getLogger("storeloop.install")

# What the webhook endpoint accepts (adapters/woocommerce/webhooks.py): order.created|updated|
# deleted|restored (deleted: an order moved to the bin, as good as cancelled), customer.created|updated.
TOPICS = tuple(sorted(woo_webhooks.TOPICS))
APP_NAME = "storeloop"
CALLBACK_PATH = "/woocommerce/callback/"
CONNECTED_PATH = "/woocommerce/connected"
MAX_CALLBACK_BYTES = 16_384
# after every webhook has the new secret, the previous one is still accepted this long: WooCommerce signs
# a delivery when it sends it, so only one already on its way (or a worker's stale copy of the webhook) needs it
ROTATION_GRACE = timedelta(hours=1)


def delivery_url(settings: Settings, store: WooCommerceStore) -> str:
    return woocommerce_delivery_url(public_base(settings), store.key)  # the address reconciliation re-enables too


@dataclass
class WooInstallReport:
    store: str
    auth: str
    delivery_url: str
    secret: str = ""  # what happened to the secret (never the secret)
    created: list[str] = field(default_factory=list)
    present: list[str] = field(default_factory=list)
    reactivated: list[str] = field(default_factory=list)
    updated: list[str] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)
    ping: str = "not sent"
    ping_ok: bool | None = None
    products: ProductSyncReport | None = None  # read at install (stores running the reorder journey)
    products_error: str | None = None  # why they were not (the install still counts: the daily sync retries)

    @property
    def ok(self) -> bool:
        return not self.failed and self.ping_ok is not False


async def _ping(http: httpx.AsyncClient, url: str, webhook_id: Any) -> tuple[bool, str]:
    body = f"webhook_id={int(webhook_id) if str(webhook_id).isdigit() else 0}"
    try:
        response = await http.post(url, content=body.encode(), headers={"Content-Type": "application/x-www-form-urlencoded"},
                                   timeout=httpx.Timeout(10.0, connect=5.0))
    except httpx.TransportError as exc:
        return False, f"unreachable ({type(exc).__name__}): is `storeloop serve` running and server.public_url right?"
    if response.status_code == 200:
        return True, "200 OK (WooCommerce accepts the delivery URL)"
    return False, f"HTTP {response.status_code} (WooCommerce wants exactly 200)"


async def _rotation_outcome(db: Database, box: SecretBox, store: WooCommerceStore, store_id: int, report: WooInstallReport, *,
                            previous_value: str, not_updated: int, now: datetime) -> None:
    """Every webhook confirmed on the new secret: the previous one is accepted for ``ROTATION_GRACE``
    more (a delivery signed just before its webhook changed), then no more. Otherwise it stays
    accepted, with no end, until a later install confirms them all."""
    if not_updated:
        report.secret += (f"; {not_updated} webhook(s) could not be updated, so the previous secret stays accepted until "
                          f"every webhook has the new one: run `storeloop install woocommerce --store {store.key}` again")
        log.warning("woocommerce webhook secret rotation not finished; the previous secret stays accepted",
                    extra={"store": store.key, "hooks_not_updated": not_updated})
        return
    until = now + ROTATION_GRACE
    await anyio.to_thread.run_sync(lambda: put_credentials(
        db, box, store_id, {WOO_PREVIOUS_WEBHOOK_SECRET: (previous_value, until)}, now))
    report.secret += f"; every webhook has the new one, the previous one is accepted until {until:%Y-%m-%d %H:%M} UTC"
    log.info("woocommerce webhook secret rotation finished", extra={"store": store.key, "previous_until": until.isoformat()})


async def install_woocommerce(
    db: Database, settings: Settings, store: WooCommerceStore, store_id: int, now: datetime, *,
    box: SecretBox | None, http: httpx.AsyncClient | None = None, new_secret: bool = False, ping: bool = True,
) -> WooInstallReport:
    url = delivery_url(settings, store)
    if box is None:
        raise InstallRefused(f"refusing to install {store.key}: its webhook secret must be stored encrypted; {HOW_TO}", status=503)
    try:
        effective = await anyio.to_thread.run_sync(woocommerce_store_with_credentials, db, box, store)
    except SecretsUnavailable as exc:
        raise InstallRefused(str(exc), status=503) from None
    if not (effective.consumer_key and effective.consumer_key.get_secret_value()
            and effective.consumer_secret and effective.consumer_secret.get_secret_value()):
        raise InstallRefused(
            f"store {store.key} has no REST keys: set consumer_key and consumer_secret, or connect it with "
            f"{public_base(settings)}/woocommerce/connect?store={store.key} (wc-auth key provisioning)")
    oauth1 = effective.rest_base_url.lower().startswith("http://")
    report = WooInstallReport(store=store.key, delivery_url=url,
                              auth="OAuth 1.0a signed (plain http)" if oauth1 else "HTTP Basic over https")
    async with WooCommerceInstallClient(effective, http=http) as client:
        try:
            await client.check_credentials()
        except SendError as exc:
            raise InstallRefused(f"the REST credentials of {store.key} do not work: {exc}") from None

        stored = await anyio.to_thread.run_sync(
            lambda: get_credentials(db, box, store_id, (WOO_WEBHOOK_SECRET, WOO_PREVIOUS_WEBHOOK_SECRET)))
        current, previous = stored.get(WOO_WEBHOOK_SECRET), stored.get(WOO_PREVIOUS_WEBHOOK_SECRET)
        pending = current is not None and previous is not None and previous.expires_at is None
        if new_secret and pending:
            assert previous is not None
            raise InstallRefused(
                f"the webhook secret rotation begun {previous.updated_at:%Y-%m-%d %H:%M} UTC is not finished (some webhook may "
                f"still sign with the secret before it): run `storeloop install woocommerce --store {store.key}` without "
                "--new-secret to finish it, then ask for a new secret")
        hooks = await client.list_webhooks()  # before any secret changes: a store that cannot be read keeps its secret
        rotating = pending
        if current is None:
            secret = secrets.token_urlsafe(32)
            await anyio.to_thread.run_sync(lambda: put_credentials(db, box, store_id, {WOO_WEBHOOK_SECRET: (secret, None)}, now))
            report.secret = "generated and stored encrypted"
        elif new_secret:
            secret, rotating = secrets.token_urlsafe(32), True
            old = current.value
            await anyio.to_thread.run_sync(lambda: put_credentials(
                db, box, store_id, {WOO_WEBHOOK_SECRET: (secret, None), WOO_PREVIOUS_WEBHOOK_SECRET: (old, None)}, now))
            report.secret = "generated and stored encrypted"
        else:
            secret = current.value
            report.secret = "kept (stored earlier)" + ("; finishing the rotation begun earlier" if pending else "")
            if previous is not None and previous.expires_at is not None and previous.expires_at <= now:
                await anyio.to_thread.run_sync(lambda: delete_credentials(db, store_id, (WOO_PREVIOUS_WEBHOOK_SECRET,)))
        push = current is None or rotating

        first_id = None
        not_updated = 0  # webhooks that may still sign with the previous secret
        for topic in TOPICS:
            mine = [h for h in hooks if h.get("topic") == topic and same_url(h.get("delivery_url"), url)]
            try:
                if not mine:
                    created = await client.create_webhook(name=f"{APP_NAME} {topic}", topic=topic, delivery_url=url, secret=secret)
                    report.created.append(topic)
                    first_id = first_id or created.get("id")
                    continue
                first_id = first_id or mine[0].get("id")
                done: set[str] = set()
                for i, hook in enumerate(mine):  # a duplicate of ours delivers too: it needs the secret as well
                    changes: dict[str, Any] = {}
                    if i == 0 and hook.get("status") != "active":
                        changes["status"] = "active"
                    if push:
                        changes["secret"] = secret
                    if changes:
                        try:
                            await client.update_webhook(int(hook["id"]), changes)
                        except SendError:
                            not_updated += "secret" in changes
                            raise
                        done.add("reactivated" if "status" in changes else "updated")
                if not done:
                    report.present.append(topic)
                else:
                    (report.reactivated if "reactivated" in done else report.updated).append(topic)
            except SendError as exc:
                report.failed.append((topic, str(exc)))
        if rotating:
            await _rotation_outcome(db, box, store, store_id, report, previous_value=previous.value if pending and previous
                                    else current.value if current else "", not_updated=not_updated, now=now)
        report.products, report.products_error = await sync_products_at_install(db, store, store_id, client, now)
    if ping:
        async with httpx.AsyncClient() if http is None else contextlib.nullcontext(http) as ping_http:  # ours, or the caller's (not closed)
            report.ping_ok, report.ping = await _ping(ping_http, url, first_id or 0)
    log.info("woocommerce webhooks installed", extra={
        "store": store.key, "hooks_created": len(report.created), "hooks_present": len(report.present),
        "hooks_reactivated": len(report.reactivated), "hooks_failed": len(report.failed),
        "products_read": report.products.products_seen if report.products else None})
    return report


# ---------------------------------------------------------------- wc-auth key provisioning (web)


def begin_connect(db: Database, settings: Settings, store_key: str, now: datetime) -> str:
    """``/woocommerce/connect?store=KEY``: the wc-auth authorize URL with a single-use callback path."""
    store = next((s for s in settings.stores if s.key == store_key and isinstance(s, WooCommerceStore)), None)
    if store is None:
        raise InstallRefused("unknown WooCommerce store", status=404)
    base = public_base(settings)
    if not base.lower().startswith("https://"):
        raise InstallRefused("WooCommerce sends the keys only to an https callback: server.public_url must be https", status=409)
    nonce = nonces.new_nonce(db, store.key, str(store.site_url), now)
    query = urlencode({
        "app_name": APP_NAME,
        "scope": "read_write",
        "user_id": store.key,
        "return_url": f"{base}{CONNECTED_PATH}?{urlencode({'store': store.key})}",
        "callback_url": f"{base}{CALLBACK_PATH}{nonce}",
    })
    return f"{str(store.site_url).rstrip('/')}/wc-auth/v1/authorize?{query}"


def complete_connect(runtime: Any, nonce: str, payload: Any, now: datetime) -> WooCommerceStore:
    """``POST /woocommerce/callback/{nonce}``: store the provisioned keys encrypted. Sync (thread)."""
    box = runtime.secret_box
    if box is None:
        raise InstallRefused(f"cannot accept keys: {HOW_TO}", status=503)
    owner = nonces.consume_nonce(runtime.db, nonce, now)
    if owner is None:
        log.warning("wc-auth callback with an unknown, used or expired nonce")
        raise InstallRefused("unknown, used or expired callback", status=401)
    store_key, _site = owner
    store = runtime.woocommerce_store(store_key)
    if store is None:
        raise InstallRefused("unknown WooCommerce store", status=404)
    if not isinstance(payload, dict):
        raise InstallRefused("body must be a JSON object")
    ck, cs = payload.get("consumer_key"), payload.get("consumer_secret")
    if str(payload.get("user_id")) != store.key:
        raise InstallRefused("user_id does not match the store this callback was made for")
    if payload.get("key_permissions") != "read_write":
        raise InstallRefused("storeloop needs read_write keys (it writes order notes, statuses and tags)")
    if not (isinstance(ck, str) and ck.startswith("ck_") and 4 < len(ck) <= 128
            and isinstance(cs, str) and cs.startswith("cs_") and 4 < len(cs) <= 128):
        raise InstallRefused("consumer_key / consumer_secret missing or malformed")
    store_id = runtime.store_ids[store.key]
    put_credentials(runtime.db, box, store_id, {WOO_CONSUMER_KEY: (ck, None), WOO_CONSUMER_SECRET: (cs, None)}, now)
    log.info("woocommerce keys provisioned (wc-auth)", extra={"store": store.key, "key_id": str(payload.get("key_id"))[:20]})
    effective = woocommerce_store_with_credentials(runtime.db, box, store)
    _use_as_writer(runtime, store_id, effective)
    return effective


def _use_as_writer(runtime: Any, store_id: int, store: WooCommerceStore) -> None:
    from adapters.woocommerce.client import WooCommerceClient
    from connector.outbox.writebacks import DryRunWriter

    writers = getattr(runtime, "writers", None)
    if isinstance(writers, dict) and isinstance(writers.get(store_id), DryRunWriter):
        writers[store_id] = WooCommerceClient(store)


__all__ = ["ROTATION_GRACE", "TOPICS", "WooInstallReport", "begin_connect", "complete_connect", "delivery_url", "install_woocommerce"]
