"""Fake Shopify and WooCommerce servers for the install tests, served for real on 127.0.0.1
(uvicorn in a thread), plus a helper that serves the connector itself the same way.

FakeShopify: the token endpoint (client credentials, authorization code with ``expiring=1``,
refresh with rotation; an invalidated refresh token is refused) and the Admin GraphQL
webhookSubscriptions / webhookSubscriptionCreate / webhookSubscriptionUpdate (metafield
namespaces kept), products (cursor pages), orders (``updated_at:>=`` search, one page), customers (none) and the
order write-backs (tagsAdd, orderCancel: recorded in ``writes``), answering 401 to any token it
did not issue (or revoked). FakeWoo: REST v3 orders, products (pages with X-WP-Total /
X-WP-TotalPages) and webhooks, every request's OAuth 1.0a signature checked, and WooCommerce's
ping posted to the delivery URL when a webhook is made.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
import itertools
import json
import socket
from collections.abc import Iterator
from typing import Any
from urllib.parse import parse_qsl

import httpx
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from adapters.woocommerce.client import oauth1_signature
from connector.sandbox.whatsapp import SandboxServer

API_VERSION = "2026-07"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def serve(app: Any, port: int = 0) -> Iterator[str]:
    """Run an ASGI app on 127.0.0.1 (``port``, or a free one) until the block ends; yields its base URL."""
    with SandboxServer(app, port) as server:
        yield server.url


SCOPED_TOPICS = {t: {"read_fulfillments", "write_fulfillments", "read_marketplace_orders"} for t in ("FULFILLMENTS_CREATE", "FULFILLMENTS_UPDATE")}


class FakeShopify:
    def __init__(self, client_id: str, client_secret: str):
        self.client_id, self.client_secret = client_id, client_secret
        self.seq = itertools.count(1)
        self.valid_tokens: set[str] = set()
        self.issued: list[str] = []  # every access / refresh token handed out (for leak checks)
        self.refresh_tokens: set[str] = set()
        self.codes: set[str] = set()
        self.grants: list[str] = []  # grant types served, in order
        self.subscriptions: list[dict[str, Any]] = []  # id, topic, uri (, metafieldNamespaces when it was given)
        self.creates = 0
        self.updates: list[dict[str, Any]] = []  # webhookSubscriptionUpdate variables, in order
        self.products: list[dict[str, Any]] = []  # Product nodes: id, title, tags, updatedAt, metafield
        self.product_queries: list[dict[str, Any]] = []  # variables of each products page asked for
        self.orders: list[dict[str, Any]] = []  # Order nodes (tests/test_sync.py gql_node), for the reconcile
        self.writes: list[tuple[str, dict[str, Any]]] = []  # (mutation, variables) of each write-back, in order
        # the scopes the store granted; set: a topic needing another is refused, as Shopify does (the
        # WebhookSubscriptionTopic reference: fulfillments/* need read_fulfillments or read_marketplace_orders)
        self.granted_scopes: set[str] | None = None
        self.app = Starlette(routes=[
            Route("/admin/oauth/access_token", self.token, methods=["POST"]),
            Route(f"/admin/api/{API_VERSION}/graphql.json", self.graphql, methods=["POST"]),
        ])

    def issue_code(self) -> str:
        code = f"code{next(self.seq):04d}abcdef"
        self.codes.add(code)
        return code

    def revoke_all(self) -> None:
        self.valid_tokens.clear()

    def _token(self, prefix: str) -> str:
        token = f"{prefix}_{next(self.seq):04d}_{'x' * 24}"
        self.issued.append(token)
        return token

    async def token(self, request: Request) -> Response:
        form = dict(parse_qsl((await request.body()).decode()))
        if form.get("client_id") != self.client_id or form.get("client_secret") != self.client_secret:
            return JSONResponse({"error": "invalid_client"}, status_code=401)
        grant = form.get("grant_type", "authorization_code")
        self.grants.append(grant)
        if grant == "client_credentials":
            token = self._token("shpat_cc")
            self.valid_tokens.add(token)
            return JSONResponse({"access_token": token, "scope": "read_orders,write_orders", "expires_in": 86399})
        if grant == "refresh_token":
            old = form.get("refresh_token", "")
            if old not in self.refresh_tokens:
                return JSONResponse({"error": "invalid_grant"}, status_code=400)
            self.refresh_tokens.discard(old)
            return self._expiring()
        code = form.get("code", "")
        if code not in self.codes:
            return JSONResponse({"error": "invalid_request"}, status_code=400)
        self.codes.discard(code)
        if form.get("expiring") != "1":
            token = self._token("shpat_forever")
            self.valid_tokens.add(token)
            return JSONResponse({"access_token": token, "scope": "read_orders"})
        return self._expiring()

    def _expiring(self) -> Response:
        token, refresh = self._token("shpat_exp"), self._token("shprt")
        self.valid_tokens.add(token)
        self.refresh_tokens.add(refresh)
        return JSONResponse({"access_token": token, "scope": "read_orders,write_orders", "expires_in": 3600,
                             "refresh_token": refresh, "refresh_token_expires_in": 7776000})

    async def graphql(self, request: Request) -> Response:
        if request.headers.get("x-shopify-access-token") not in self.valid_tokens:
            return JSONResponse({"errors": "[API] Invalid API key or access token (unrecognized login or wrong password)"},
                                status_code=401)
        body = json.loads(await request.body())
        query, variables = body["query"], body.get("variables") or {}
        if "webhookSubscriptionCreate" in query:
            self.creates += 1
            topic, uri = variables["topic"], variables["webhookSubscription"]["uri"]
            if self.granted_scopes is not None and topic in SCOPED_TOPICS and not self.granted_scopes & SCOPED_TOPICS[topic]:
                return JSONResponse({"data": {"webhookSubscriptionCreate": {
                    "webhookSubscription": None, "userErrors": [{"field": ["topic"], "message": f"Invalid topic specified: {topic}"}]}}})
            if any(s["topic"] == topic and s["uri"] == uri for s in self.subscriptions):
                return JSONResponse({"data": {"webhookSubscriptionCreate": {
                    "webhookSubscription": None,
                    "userErrors": [{"field": ["webhookSubscription", "uri"], "message": "Address for this topic has already been taken"}]}}})
            sub = {"id": f"gid://shopify/WebhookSubscription/{next(self.seq)}", "topic": topic, "uri": uri}
            if "metafieldNamespaces" in variables["webhookSubscription"]:
                sub["metafieldNamespaces"] = list(variables["webhookSubscription"]["metafieldNamespaces"])
            self.subscriptions.append(sub)
            return JSONResponse({"data": {"webhookSubscriptionCreate": {"webhookSubscription": sub, "userErrors": []}}})
        if "webhookSubscriptionUpdate" in query:
            self.updates.append(variables)
            sub = next((s for s in self.subscriptions if s["id"] == variables["id"]), None)
            if sub is None:
                return JSONResponse({"data": {"webhookSubscriptionUpdate": {
                    "webhookSubscription": None, "userErrors": [{"field": ["id"], "message": "Webhook subscription does not exist"}]}}})
            sub.update(variables["webhookSubscription"])
            return JSONResponse({"data": {"webhookSubscriptionUpdate": {"webhookSubscription": sub, "userErrors": []}}})
        if "products(" in query:
            self.product_queries.append(variables)
            start = int(variables["cursor"]) if variables.get("cursor") else 0
            page = self.products[start:start + variables["first"]]
            more = start + variables["first"] < len(self.products)
            return JSONResponse({"data": {"products": {
                "nodes": page, "pageInfo": {"hasNextPage": more, "endCursor": str(start + variables["first"]) if more else None}}}})
        if "orders(" in query:
            since = variables["q"].split(">='", 1)[1].rstrip("'")
            page = sorted((n for n in self.orders if n["updatedAt"] >= since), key=lambda n: (n["updatedAt"], n["id"]))
            return JSONResponse({"data": {"orders": {"nodes": page, "pageInfo": {"hasNextPage": False, "endCursor": None}}}})
        if "customers(" in query:  # the reconcile's customers pass: nobody's consent changed
            return JSONResponse({"data": {"customers": {"nodes": [], "pageInfo": {"hasNextPage": False, "endCursor": None}}}})
        if "tagsAdd(" in query:
            self.writes.append(("tagsAdd", variables))
            return JSONResponse({"data": {"tagsAdd": {"node": {"id": variables["id"]}, "userErrors": []}}})
        if "orderCancel(" in query:
            self.writes.append(("orderCancel", variables))
            return JSONResponse({"data": {"orderCancel": {"job": {"id": "gid://shopify/Job/1", "done": True},
                                                          "orderCancelUserErrors": []}}})
        if "order(id:" in query:  # a cancel's check: cancelled by the store, or by a write-back above
            cancelled = any(n["id"] == variables["id"] and n["cancelledAt"] for n in self.orders) or any(
                name == "orderCancel" and v["orderId"] == variables["id"] for name, v in self.writes)
            return JSONResponse({"data": {"order": {"id": variables["id"], "cancelledAt": "2026-01-01T00:00:00Z" if cancelled else None}}})
        if "webhookSubscriptions(" in query:
            first, after = variables.get("first", 50), variables.get("after")
            start = int(after) if after else 0
            page = self.subscriptions[start:start + first]
            more = start + first < len(self.subscriptions)
            return JSONResponse({"data": {"webhookSubscriptions": {
                "nodes": page, "pageInfo": {"hasNextPage": more, "endCursor": str(start + first) if more else None}}}})
        return JSONResponse({"errors": [{"message": "unexpected query"}]}, status_code=200)


class FakeWoo:
    """WooCommerce REST v3 on plain http: every request must carry a valid OAuth 1.0a signature."""

    def __init__(self, consumer_key: str, consumer_secret: str):
        self.ck, self.cs = consumer_key, consumer_secret
        self.hooks: list[dict[str, Any]] = []
        self.secrets: dict[int, str] = {}
        self.pings: list[tuple[str, int]] = []  # (delivery_url, status) of the ping sent on create
        self.ids = itertools.count(101)
        self.requests = 0
        self.products: list[dict[str, Any]] = []
        self.product_requests: list[dict[str, str]] = []  # query of each /products page asked for (oauth_* left out)
        self.products_status = 200  # anything else: that status and WooCommerce's error body
        self.failing_updates: set[str] = set()  # topics whose webhook update (PUT) answers 500 and changes nothing
        self.list_status = 200  # anything else: the webhook list (GET) answers that status
        self.app = Starlette(routes=[
            Route("/wp-json/wc/v3/orders", self.orders, methods=["GET"]),
            Route("/wp-json/wc/v3/products", self.products_page, methods=["GET"]),
            Route("/wp-json/wc/v3/webhooks", self.webhooks, methods=["GET", "POST"]),
            Route("/wp-json/wc/v3/webhooks/{hook_id:int}", self.update, methods=["PUT"]),
        ])

    def _authorized(self, request: Request) -> bool:
        self.requests += 1
        params = dict(request.query_params.multi_items())
        if params.get("oauth_consumer_key") != self.ck or "oauth_signature" not in params:
            return False
        url = str(request.url).split("?")[0]
        expected = oauth1_signature(request.method, url, params, self.cs)
        return hmac.compare_digest(expected, params["oauth_signature"])

    def _denied(self) -> Response:
        return JSONResponse({"code": "woocommerce_rest_authentication_error", "message": "Invalid signature",
                             "data": {"status": 401}}, status_code=401)

    async def orders(self, request: Request) -> Response:
        if not self._authorized(request):
            return self._denied()
        return JSONResponse([{"id": 1}])

    async def products_page(self, request: Request) -> Response:
        if not self._authorized(request):
            return self._denied()
        query = {k: v for k, v in request.query_params.items() if not k.startswith("oauth_")}
        self.product_requests.append(query)
        if self.products_status != 200:
            return JSONResponse({"code": "woocommerce_rest_cannot_view", "message": "Sorry, you cannot list resources.",
                                 "data": {"status": self.products_status}}, status_code=self.products_status)
        per_page, page = int(query.get("per_page", "10")), int(query.get("page", "1"))
        rows = sorted(self.products, key=lambda p: p["id"])
        pages = max(1, -(-len(rows) // per_page))
        return JSONResponse(rows[(page - 1) * per_page:page * per_page], headers={"X-WP-Total": str(len(rows)), "X-WP-TotalPages": str(pages)})

    async def webhooks(self, request: Request) -> Response:
        if not self._authorized(request):
            return self._denied()
        if request.method == "GET":
            if self.list_status != 200:
                return JSONResponse({"code": "internal_server_error"}, status_code=self.list_status)
            return JSONResponse([dict(h) for h in self.hooks], headers={"X-WP-TotalPages": "1"})
        body = json.loads(await request.body())
        hook = {"id": next(self.ids), "name": body["name"], "status": body.get("status", "active"), "topic": body["topic"],
                "delivery_url": body["delivery_url"]}
        self.hooks.append(hook)
        self.secrets[hook["id"]] = body["secret"]
        async with httpx.AsyncClient(timeout=5) as client:  # WooCommerce's ping (deliver_ping), result ignored
            try:
                r = await client.post(hook["delivery_url"], content=f"webhook_id={hook['id']}".encode(),
                                      headers={"Content-Type": "application/x-www-form-urlencoded"})
                self.pings.append((hook["delivery_url"], r.status_code))
            except httpx.TransportError:
                self.pings.append((hook["delivery_url"], 0))
        return JSONResponse(hook, status_code=201)

    async def update(self, request: Request) -> Response:
        if not self._authorized(request):
            return self._denied()
        hook = next((h for h in self.hooks if h["id"] == request.path_params["hook_id"]), None)
        if hook is None:
            return JSONResponse({"code": "woocommerce_rest_webhook_invalid_id"}, status_code=404)
        if hook["topic"] in self.failing_updates:
            return JSONResponse({"code": "internal_server_error"}, status_code=500)
        body = json.loads(await request.body())
        if "secret" in body:
            self.secrets[hook["id"]] = body["secret"]
        for k in ("status", "delivery_url", "name"):
            if k in body:
                hook[k] = body[k]
        return JSONResponse(hook)

    def deliver(self, hook_topic: str, payload: dict[str, Any], *, secret: str | None = None) -> int:
        """Post an order webhook the way WooCommerce does, signed with the hook's secret (or ``secret``)."""
        hook = next(h for h in self.hooks if h["topic"] == hook_topic)
        body = json.dumps(payload).encode()
        key = (secret if secret is not None else self.secrets[hook["id"]]).encode()
        resource, _, event = hook_topic.partition(".")
        headers = {
            "Content-Type": "application/json",
            "X-WC-Webhook-Source": f"{getattr(self, 'base', 'http://woo.test').rstrip('/')}/",  # the site's home_url('/')
            "X-WC-Webhook-Topic": hook_topic,
            "X-WC-Webhook-Resource": resource,
            "X-WC-Webhook-Event": event,
            "X-WC-Webhook-Signature": base64.b64encode(hmac.new(key, body, hashlib.sha256).digest()).decode(),
            "X-WC-Webhook-ID": str(hook["id"]),
            "X-WC-Webhook-Delivery-ID": "d1",
        }
        return httpx.post(hook["delivery_url"], content=body, headers=headers, timeout=10).status_code
