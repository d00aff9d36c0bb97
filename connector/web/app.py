"""The Starlette application: webhooks, admin API and health, on one ``Runtime``."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

from starlette.applications import Starlette
from starlette.routing import Route

from connector.config import Settings
from connector.runtime import Runtime
from connector.install import web as install_web
from connector.web import admin, dashboard, health, webhooks


def create_app(settings: Settings, runtime: Runtime | None = None, *, run_worker: bool = True) -> Starlette:
    rt = runtime or Runtime(settings, run_worker=run_worker)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await rt.start()
        try:
            yield
        finally:
            await rt.stop()

    routes = [
        Route("/webhooks/shopify", webhooks.WebhookEndpoint(webhooks.shopify_webhook, "shopify"), methods=["POST"]),
        Route("/webhooks/woocommerce/{store_key}", webhooks.WebhookEndpoint(webhooks.woocommerce_webhook, "woocommerce"), methods=["POST"]),
        Route("/webhooks/woocommerce/{store_key}/carts", webhooks.WebhookEndpoint(webhooks.woocommerce_cart_webhook, "woocommerce-cart"), methods=["POST"]),
        Route("/webhooks/woocommerce/{store_key}/carts/{token}", webhooks.WebhookEndpoint(webhooks.woocommerce_cart_webhook, "woocommerce-cart"), methods=["POST"]),
        Route("/webhooks/whatsapp", webhooks.whatsapp_challenge, methods=["GET"]),
        Route("/webhooks/whatsapp", webhooks.WebhookEndpoint(webhooks.whatsapp_webhook, "whatsapp"), methods=["POST"]),
        Route("/api/stores/{store_key}/contacts/{phone}", admin.contact, methods=["GET"]),
        Route("/api/stores/{store_key}/orders/{order_id}", admin.order, methods=["GET"]),
        Route("/api/stores/{store_key}/inbox", admin.inbox, methods=["GET"]),
        Route("/api/stores/{store_key}/handoffs", admin.handoffs, methods=["GET"]),
        Route("/api/stores/{store_key}/handoffs/{handoff_id:int}/close", admin.close_handoff, methods=["POST"]),
        Route("/api/stores/{store_key}/report", admin.report, methods=["GET"]),
        Route("/api/stores/{store_key}/compliance", admin.compliance_requests, methods=["GET"]),
        Route("/api/stores/{store_key}/compliance/{request_id:int}", admin.compliance_request, methods=["GET"]),
        *install_web.ROUTES,  # /shopify/install + callback, /woocommerce/connect + callback (connector/install)
        Route("/healthz", health.healthz, methods=["GET"]),
        Route("/readyz", health.readyz, methods=["GET"]),
        *dashboard.ROUTES,  # HTML behind the admin token (login form, session cookie)
    ]
    app = Starlette(routes=routes, lifespan=lifespan)
    app.state.runtime = rt
    return app
