"""The Starlette application: webhooks, admin API and health, on one ``Runtime``."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

from typing import Any

from starlette._utils import get_route_path
from starlette.applications import Starlette
from starlette.routing import Route

from connector.config import Settings
from connector.runtime import Runtime
from connector.install import web as install_web
from connector.web import admin, dashboard, health, webhooks


class ConnectorApp(Starlette):
    """Starlette, with the webhook POSTs (nearly all of the traffic) answered before the
    middleware stack and the router.

    Those endpoints are plain ASGI apps that catch their own errors; skipping the two
    exception middlewares (each wraps ``send``) and the route scan saves about a fifth of a
    delivery's CPU. Every other request, and any other method on those paths, goes through
    Starlette as usual.
    """

    def __init__(self, *, fast_posts: dict[str, Any], **kw: Any):
        super().__init__(**kw)
        self.fast_posts = fast_posts

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope["method"] == "POST":
            endpoint = self.fast_posts.get(get_route_path(scope))  # the router's own reading of the path
            if endpoint is not None:
                scope["app"] = self
                scope.setdefault("path_params", {})
                await endpoint(scope, receive, send)
                return
        await super().__call__(scope, receive, send)


def create_app(settings: Settings, runtime: Runtime | None = None, *, run_worker: bool = True, ingest_here: bool = True) -> Starlette:
    """``ingest_here``: this app takes every webhook for its database (False with several uvicorn
    processes): its processor may then run long batches that a waiting delivery ends (Runtime)."""
    rt = runtime or Runtime(settings, run_worker=run_worker, ingest_here=ingest_here)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await rt.start()
        try:
            yield
        finally:
            await rt.stop()

    shopify = webhooks.WebhookEndpoint(webhooks.shopify_webhook, "shopify")
    whatsapp = webhooks.WebhookEndpoint(webhooks.whatsapp_webhook, "whatsapp", floor=webhooks.WHATSAPP_LARGEST_POST)
    routes = [
        Route("/webhooks/shopify", shopify, methods=["POST"]),
        Route("/webhooks/woocommerce/{store_key}", webhooks.WebhookEndpoint(webhooks.woocommerce_webhook, "woocommerce"), methods=["POST"]),
        Route("/webhooks/woocommerce/{store_key}/carts", webhooks.WebhookEndpoint(webhooks.woocommerce_cart_webhook, "woocommerce-cart"), methods=["POST"]),
        Route("/webhooks/woocommerce/{store_key}/carts/{token}", webhooks.WebhookEndpoint(webhooks.woocommerce_cart_webhook, "woocommerce-cart"), methods=["POST"]),
        Route("/webhooks/whatsapp", webhooks.whatsapp_challenge, methods=["GET"]),
        Route("/webhooks/whatsapp", whatsapp, methods=["POST"]),
        Route("/api/stores/{store_key}/contacts/{phone}", admin.contact, methods=["GET"]),
        Route("/api/stores/{store_key}/orders/{order_id}", admin.order, methods=["GET"]),
        Route("/api/stores/{store_key}/inbox", admin.inbox, methods=["GET"]),
        Route("/api/stores/{store_key}/inbox/replay", admin.replay_inbox, methods=["POST"]),
        Route("/api/stores/{store_key}/handoffs", admin.handoffs, methods=["GET"]),
        Route("/api/stores/{store_key}/handoffs/{handoff_id}/close", admin.close_handoff, methods=["POST"]),
        Route("/api/stores/{store_key}/report", admin.report, methods=["GET"]),
        Route("/api/stores/{store_key}/compliance", admin.compliance_requests, methods=["GET"]),
        Route("/api/stores/{store_key}/compliance/{request_id}", admin.compliance_request, methods=["GET"]),
        Route("/api/stores/{store_key}/customers/redact", admin.redact_customer, methods=["POST"]),
        *install_web.ROUTES,  # /shopify/install + callback, /woocommerce/connect + callback (connector/install)
        Route("/healthz", health.healthz, methods=["GET"]),
        Route("/readyz", health.readyz, methods=["GET"]),
        *dashboard.ROUTES,  # HTML behind the admin token (login form, session cookie)
    ]
    app = ConnectorApp(routes=routes, lifespan=lifespan, fast_posts={"/webhooks/shopify": shopify, "/webhooks/whatsapp": whatsapp})
    app.state.runtime = rt
    return app
