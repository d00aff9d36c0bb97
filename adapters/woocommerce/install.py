"""The WooCommerce REST calls install needs: a credentials check and the webhooks API.

Same transport, auth and error classification as ``WooCommerceClient`` (Basic auth over
HTTPS, OAuth 1.0a one-legged signing for plain-HTTP dev sites; platform-facts.md B1).
Webhook resource (REST v3 ``/webhooks``): ``id``, ``name``, ``status`` (``active`` |
``paused`` | ``disabled``), ``topic``, ``delivery_url``, ``secret`` (write: we always set our
own; WooCommerce generates one otherwise). Creating one makes WooCommerce post a ping
(``webhook_id=N``) to the delivery URL (B3).
"""

from __future__ import annotations

from typing import Any

from adapters.woocommerce.client import MAX_PER_PAGE, WooCommerceClient
from connector.errors import PermanentError

MAX_PAGES = 20


def _hook(h: dict[str, Any]) -> dict[str, Any]:
    """The fields install looks at (never the secret WooCommerce may echo back)."""
    return {"id": h.get("id"), "name": h.get("name"), "status": h.get("status"), "topic": h.get("topic"),
            "delivery_url": h.get("delivery_url")}


class WooCommerceInstallClient(WooCommerceClient):
    async def check_credentials(self) -> None:
        """One cheap authenticated read (``GET /orders?per_page=1&_fields=id``): raises on 401/403."""
        response = await self._request("GET", "/orders", params={"per_page": "1", "_fields": "id"})
        if not isinstance(self._json(response), list):
            raise PermanentError("order list: unexpected response", http_status=response.status_code)

    async def list_webhooks(self) -> list[dict[str, Any]]:
        hooks: list[dict[str, Any]] = []
        for page in range(1, MAX_PAGES + 1):
            response = await self._request("GET", "/webhooks", params={"per_page": str(MAX_PER_PAGE), "page": str(page)})
            batch = self._json(response)
            if not isinstance(batch, list):
                raise PermanentError("webhook list: unexpected response", http_status=response.status_code)
            hooks.extend(_hook(h) for h in batch if isinstance(h, dict))
            total = response.headers.get("X-WP-TotalPages", "").strip()
            if len(batch) < MAX_PER_PAGE or (total.isdigit() and page >= int(total)):
                break
        return hooks

    async def create_webhook(self, *, name: str, topic: str, delivery_url: str, secret: str) -> dict[str, Any]:
        body = {"name": name, "topic": topic, "delivery_url": delivery_url, "secret": secret, "status": "active"}
        response = await self._request("POST", "/webhooks", json_body=body)
        created = self._json(response)
        if not isinstance(created, dict):
            raise PermanentError("webhook create: unexpected response", http_status=response.status_code, outcome_unknown=True)
        return _hook(created)

    async def update_webhook(self, webhook_id: int, changes: dict[str, Any]) -> dict[str, Any]:
        response = await self._request("PUT", f"/webhooks/{int(webhook_id)}", json_body=changes)
        updated = self._json(response)
        return _hook(updated) if isinstance(updated, dict) else {"id": webhook_id}


__all__ = ["WooCommerceInstallClient"]
