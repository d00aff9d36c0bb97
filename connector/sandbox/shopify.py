"""A sandbox Shopify Admin GraphQL API: a real HTTP peer on 127.0.0.1 for the demo.

It answers the write-backs the connector makes (``tagsAdd``, ``orderCancel``,
``orderUpdate``) with Shopify's shapes and a cost extension, checks the access token, and
records every call so the demo can show which orders were tagged or cancelled. Nothing
here is used in production.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

COST = {"requestedQueryCost": 10, "actualQueryCost": 10,
        "throttleStatus": {"maximumAvailable": 2000.0, "currentlyAvailable": 1990.0, "restoreRate": 100.0}}


def admin_graphql_answer(body: dict[str, Any], cancelled: dict[str, str] | None = None,
                         ) -> tuple[str, str | None, dict[str, Any], dict[str, Any]]:
    """What the Admin GraphQL API answers to the connector's write-backs and its order reads:
    (operation, order gid, variables, data). Shared by this sandbox and the scenario tests' fake.
    ``cancelled`` (order gid -> when) is the peer's memory of the orders it cancelled, so the
    order read after a cancel job finds the order cancelled, as Shopify's would."""
    cancelled = {} if cancelled is None else cancelled
    query = str(body.get("query") or "")
    variables = body.get("variables") or {}
    gid = variables.get("id") or variables.get("orderId") or (variables.get("input") or {}).get("id")
    if "tagsAdd" in query:
        return "tagsAdd", gid, variables, {"tagsAdd": {"node": {"id": gid}, "userErrors": []}}
    if "orderCancel" in query:
        if gid:
            cancelled.setdefault(gid, "2026-01-01T00:00:00Z")
        return "orderCancel", gid, variables, {"orderCancel": {"job": {"id": "gid://shopify/Job/1", "done": True},
                                                               "orderCancelUserErrors": [], "userErrors": []}}
    if "orderUpdate" in query:
        return "orderUpdate", gid, variables, {"orderUpdate": {"order": {"id": gid}, "userErrors": []}}
    if "job(" in query:
        return "job", None, variables, {"job": {"id": gid, "done": True}}
    return "query", gid, variables, {"order": {"id": gid, "cancelledAt": cancelled.get(gid or ""), "note": None}}


@dataclass
class AdminCall:
    operation: str  # tagsAdd | orderCancel | orderUpdate | query
    order_gid: str | None
    variables: dict[str, Any]


class SandboxShopify:
    def __init__(self, *, token: str = "sandbox-admin-token"):
        self.token = token
        self.calls: list[AdminCall] = []
        self.cancelled_at: dict[str, str] = {}
        self._lock = threading.Lock()
        self.app = Starlette(routes=[Route("/admin/api/{version}/graphql.json", self._graphql, methods=["POST"])])

    def tagged(self) -> dict[str, list[str]]:
        """Order gid -> every tag added to it, in order."""
        out: dict[str, list[str]] = {}
        for c in self.calls:
            if c.operation == "tagsAdd" and c.order_gid:
                tags = c.variables.get("tags") or []
                out.setdefault(c.order_gid, []).extend([tags] if isinstance(tags, str) else tags)
        return out

    def cancelled(self) -> list[str]:
        return [c.order_gid for c in self.calls if c.operation == "orderCancel" and c.order_gid]

    async def _graphql(self, request: Request) -> Response:
        if request.headers.get("x-shopify-access-token") != self.token:
            return JSONResponse({"errors": "[API] Invalid API key or access token (unrecognized login or wrong password)"}, 401)
        body = await request.json()
        with self._lock:
            op, gid, variables, data = admin_graphql_answer(body, self.cancelled_at)
            self.calls.append(AdminCall(op, gid, variables))
        return JSONResponse({"data": data, "extensions": {"cost": COST}})
