"""Install routes (browser-facing, so HTML answers with security headers):

- ``GET /shopify/install``: Shopify's app URL; verified, then 302 to the authorize page.
- ``GET /shopify/callback``: the OAuth redirect; verified, code exchanged, webhooks registered;
  once the page is sent, the orders changed while the app was uninstalled are read back (after
  an ``app/uninstalled``) and, for a store running the reorder journey, every product once.
- ``GET /woocommerce/connect?store=KEY``: 302 to the store's wc-auth authorize page, for the
  admin only: with ``Authorization: Bearer <server.admin_token>`` (failures limited and logged
  with the admin API's), else 303 to ``/dashboard/{KEY}/woocommerce/connect``, which starts
  it for a signed-in dashboard session and shows the sign-in form otherwise. Whoever starts
  the flow learns the callback's single-use path, and a key pair posted there replaces the
  store's REST keys, so starting it must not be open to anyone.
- ``POST /woocommerce/callback/{nonce}``: WooCommerce posts the new REST keys (JSON, read under
  ``MAX_CALLBACK_BYTES`` as it streams in: 413 beyond; orjson: 400 for malformed or deeply nested).
- ``GET /woocommerce/connected``: where WooCommerce sends the merchant back (``success=0|1``).

Refusals never say more than what failed; nothing secret is logged or shown. ``Referrer-Policy:
no-referrer`` keeps the callback's one-time code out of any onward Referer header.
"""

from __future__ import annotations

import html
import logging
from functools import partial
from typing import Any
from urllib.parse import quote

import anyio.to_thread
from starlette.background import BackgroundTask, BackgroundTasks
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from starlette.routing import Route

from connector.install import shopify as shopify_flow
from connector.install import woocommerce as woo_flow
from connector.install.products import wants_products
from connector.install.shopify import InstallRefused
from connector.web import admin as admin_api
from connector.web import auth
from connector.web.http import BodyTooLarge, parse_json

log = logging.getLogger("storeloop.install")

SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}


def page(title: str, lines: list[str], status: int = 200) -> HTMLResponse:
    items = "".join(f"<li>{html.escape(line)}</li>" for line in lines)
    body = (f"<!doctype html><html><head><meta charset=utf-8><title>{html.escape(title)}</title></head>"
            f"<body style='font-family:sans-serif;max-width:44em;margin:2em auto'><h1>{html.escape(title)}</h1>"
            f"<ul>{items}</ul></body></html>")
    return HTMLResponse(body, status_code=status, headers=SECURITY_HEADERS)


def redirect(url: str) -> Response:
    return RedirectResponse(url, status_code=302, headers=SECURITY_HEADERS)


def _refused(exc: InstallRefused) -> HTMLResponse:
    return page("storeloop: install refused", [str(exc)], status=exc.status)


async def shopify_install(request: Request) -> Response:
    runtime = request.app.state.runtime
    params = list(request.query_params.multi_items())
    try:
        url = await anyio.to_thread.run_sync(
            partial(shopify_flow.begin_oauth, runtime.db, runtime.settings, params, runtime.clock()))
    except InstallRefused as exc:
        return _refused(exc)
    return redirect(url)


async def shopify_callback(request: Request) -> Response:
    runtime = request.app.state.runtime
    params = list(request.query_params.multi_items())
    try:
        report = await shopify_flow.complete_oauth(runtime, params, runtime.clock())
    except InstallRefused as exc:
        return _refused(exc)
    except Exception as exc:  # the token exchange failed (RetryableError / PermanentError: short, secret-free)
        log.warning("shopify install failed", extra={"reason": f"{type(exc).__name__}: {exc}"})
        return page("storeloop: install failed", [f"{type(exc).__name__}: {exc}", "open the app from the Shopify admin to try again"],
                    status=502)
    lines = [f"shop: {report.shop}", f"token: {report.token}"]
    hooks = report.webhooks
    if hooks is not None:
        lines.append(f"webhooks to {hooks.uri}: {shopify_flow.webhook_summary(hooks)}")
        lines += [f"failed: {topic}: {why}" for topic, why in hooks.failed]
    if report.webhook_error:
        lines.append(f"webhooks not registered: {report.webhook_error} (run `storeloop install shopify --store {report.store}`)")
    background = BackgroundTasks()
    if report.resumed:
        lines.append("orders: reading back those changed while the app was uninstalled; messages and reminders wait for them, "
                     "and what was queued meanwhile is not sent")
        background.add_task(_catch_up_orders, runtime, report.store)
    if wants_products(runtime.settings.store(report.store)):
        lines.append("products: being read now, for the reorder journey's cycles (tags, storeloop.replenish)")
        background.add_task(_sync_shopify_products, runtime, report.store)
    lines += report.notes
    answer = page("storeloop installed" if report.ok else "storeloop installed, with problems", lines)
    answer.background = background
    return answer


async def _catch_up_orders(rt: Any, key: str) -> None:
    """After the callback's page: the orders changed while the app was uninstalled, which the
    store's timers and sends wait for (``connector/reinstall.py``)."""
    store = rt.settings.store(key)
    caught, _error = await shopify_flow.catch_up_orders(rt.db, store, rt.store_ids[key], rt.shopify_tokens[key], rt.clock())
    if caught is not None:
        log.info("orders read back after the reinstall", extra={"store": key, "orders": caught.orders_seen, "new_rows": caught.new_rows})
        rt.wake()


async def _sync_shopify_products(rt: Any, key: str) -> None:
    """After the callback's page: every product once, with the token the callback stored."""
    store = rt.settings.store(key)
    products, error = await shopify_flow.sync_store_products(rt.db, store, rt.store_ids[key], rt.shopify_tokens[key], rt.clock())
    if products is not None:
        log.info("shopify products read after install", extra={"store": key, "products": products.products_seen,
                                                                "new_rows": products.new_rows})


async def _begin_woocommerce(request: Request, key: str) -> Response:
    runtime = request.app.state.runtime
    try:
        url = await anyio.to_thread.run_sync(partial(woo_flow.begin_connect, runtime.db, runtime.settings, key, runtime.clock()))
    except InstallRefused as exc:
        return _refused(exc)
    log.info("wc-auth connect started", extra={"store": key[:64], "client": admin_api.client_address(request)})
    return redirect(url)


async def woocommerce_connect(request: Request) -> Response:
    """The admin's API client (bearer token) starts at once; a browser is sent to the dashboard's
    copy of this route, where its session cookie (scoped to /dashboard) is sent."""
    key = request.query_params.get("store", "")
    if "authorization" in request.headers:
        refused = admin_api.bearer_refusal(request)
        return refused if refused is not None else await _begin_woocommerce(request, key)
    target = f"{request.scope.get('root_path', '')}/dashboard/{quote(key[:64], safe='')}/woocommerce/connect"
    return RedirectResponse(target, status_code=303, headers=SECURITY_HEADERS)


async def dashboard_woocommerce_connect(request: Request) -> Response:
    """``GET /dashboard/{store_key}/woocommerce/connect``: for a signed-in dashboard session (the
    sign-in form otherwise, which comes back here)."""
    from connector.web import dashboard

    token = request.app.state.runtime.settings.server.admin_token
    secret = token.get_secret_value() if token is not None else None
    if not auth.session_valid(request.cookies.get(auth.COOKIE), secret or None):
        return dashboard.sign_in_form(request)
    return await _begin_woocommerce(request, request.path_params["store_key"])


async def woocommerce_callback(request: Request) -> Response:
    runtime = request.app.state.runtime
    try:
        body = await admin_api.read_body(request, woo_flow.MAX_CALLBACK_BYTES)
    except BodyTooLarge:
        return JSONResponse({"error": f"body larger than {woo_flow.MAX_CALLBACK_BYTES} bytes"}, status_code=413)
    try:
        payload = parse_json(body)
    except ValueError as exc:
        return JSONResponse({"error": f"body must be JSON: {exc}"}, status_code=400)
    try:
        store = await anyio.to_thread.run_sync(
            partial(woo_flow.complete_connect, runtime, request.path_params["nonce"], payload, runtime.clock()))
    except InstallRefused as exc:
        return JSONResponse({"error": str(exc)}, status_code=exc.status)
    # WooCommerce waits for this 200 before it sends the merchant back: create the webhooks after it.
    return JSONResponse({"ok": True, "store": store.key}, background=BackgroundTask(_install_webhooks, runtime, store.key))


async def _install_webhooks(rt: Any, key: str) -> None:
    store = rt.woocommerce_store(key)
    try:
        report = await woo_flow.install_woocommerce(rt.db, rt.settings, store, rt.store_ids[key], rt.clock(), box=rt.secret_box)
    except Exception as exc:  # InstallRefused, SendError: short and secret-free
        log.warning("woocommerce webhooks not installed after wc-auth", extra={"store": key, "reason": f"{type(exc).__name__}: {exc}"})
        return
    await rt.woo_webhook_secrets.reload(key)  # the endpoint knows the new secret before the first delivery
    log.info("woocommerce webhooks installed after wc-auth", extra={
        "store": key, "hooks_created": len(report.created), "hooks_failed": len(report.failed), "ping": report.ping})


async def woocommerce_connected(request: Request) -> Response:
    key = request.query_params.get("store", "")[:64]
    if request.query_params.get("success") == "1":
        return page("storeloop connected", [f"WooCommerce store {key}: REST keys received and stored encrypted",
                                            "its webhooks are being created now; `storeloop install woocommerce "
                                            f"--store {key}` shows (and repairs) them"])
    return page("storeloop not connected", [f"WooCommerce store {key}: access was not granted"], status=400)


ROUTES = [
    Route("/shopify/install", shopify_install, methods=["GET"]),
    Route("/shopify/callback", shopify_callback, methods=["GET"]),
    Route("/woocommerce/connect", woocommerce_connect, methods=["GET"]),
    Route("/dashboard/{store_key}/woocommerce/connect", dashboard_woocommerce_connect, methods=["GET"]),
    Route("/woocommerce/callback/{nonce}", woocommerce_callback, methods=["POST"]),
    Route("/woocommerce/connected", woocommerce_connected, methods=["GET"]),
]

__all__ = ["ROUTES", "SECURITY_HEADERS", "dashboard_woocommerce_connect", "shopify_callback", "shopify_install",
           "woocommerce_callback", "woocommerce_connect", "woocommerce_connected"]
