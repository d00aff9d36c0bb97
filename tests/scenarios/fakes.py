"""The outside world at the HTTP boundary, on one real 127.0.0.1 port.

One Starlette app plays three peers and records every call it gets:

- the WhatsApp Cloud API: ``POST /{version}/{phone_number_id}/messages`` (bearer token checked),
  answering with a fresh ``wamid`` like Meta does;
- the Shopify Admin GraphQL API: ``POST /admin/api/{version}/graphql.json``
  (``X-Shopify-Access-Token`` checked; ``tagsAdd``, ``orderCancel``, ``orderUpdate``, reads), the
  reconcile's order pages from ``shopify_orders`` (the store's orders as GraphQL nodes, sorted by
  update time, ``updated_at:>=`` filter, cursors; each order's fulfilments cut at what is asked for),
  its customer pages from ``shopify_customers`` (the same way: the customers' consent as Shopify has it),
  and install's ``webhookSubscriptions`` / ``webhookSubscriptionCreate``;
- the WooCommerce REST API v3 under ``/wp-json/wc/v3`` (OAuth 1.0a consumer key checked,
  as WooCommerce does on plain http): ``GET``/``PUT /orders/{id}``, ``POST /orders/{id}/notes``,
  and the reconcile's ``GET /orders`` listing of ``woo_orders`` (``modified_after``, ``offset``,
  ``per_page``; the bin only with ``status=trash``, as WordPress lists it);
  it keeps each order's ``meta_data`` so a second tag write sees the first, and its ``status``
  (from the order webhooks the scenario posted, a status PUT, or ``woo_status`` set by a test);
- a Slack-compatible incoming webhook for hand-off notifications: ``POST /hooks/{stage}``.

The scenarios assert on what these fakes received, never on the connector's tables.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import itertools
import threading
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any
from urllib.parse import quote

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from connector.sandbox.shopify import admin_graphql_answer

WA_TOKEN = "wa-scenario-token"
SHOP_TOKEN = "shpat_scenario_token"
WOO_KEY = "ck_scenario_key"
WOO_SECRET = "cs_scenario_secret"
COST = {"requestedQueryCost": 10, "actualQueryCost": 10,
        "throttleStatus": {"maximumAvailable": 2000.0, "currentlyAvailable": 1990.0, "restoreRate": 100.0}}


@dataclass(frozen=True)
class WhatsAppSend:
    """One message the Cloud API accepted."""

    phone_number_id: str
    to: str
    template: str | None
    params: tuple[str, ...]  # body parameters: text, or a currency's fallback value
    buttons: tuple[str, ...]  # quick-reply payloads
    callback: str | None
    wamid: str


@dataclass(frozen=True)
class ShopifyCall:
    operation: str  # tagsAdd | orderCancel | orderUpdate | query | orders | customers | orderFulfillments | webhookSubscriptions | webhookSubscriptionCreate
    variables: dict[str, Any]


@dataclass(frozen=True)
class WooCall:
    method: str
    order_id: str
    path: str  # "" for the order itself, "/notes" for a note
    body: dict[str, Any] | None


@dataclass
class FakeWorld:
    url: str = ""
    whatsapp: list[WhatsAppSend] = field(default_factory=list)
    shopify: list[ShopifyCall] = field(default_factory=list)
    woo: list[WooCall] = field(default_factory=list)
    notifications: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    refused: list[str] = field(default_factory=list)  # calls without valid credentials
    whatsapp_down: bool = False  # True: the Cloud API answers 503 (an outage), and nothing reaches a phone
    # True: the Cloud API takes each message (it reaches the phone) but its answer names no message id,
    # as when the answer is lost: the connector cannot tell the message went out, nor match a reply to it
    whatsapp_answer_lost: bool = False
    # True: the store's API (Shopify Admin GraphQL, WooCommerce REST) answers 503 and changes nothing (an outage)
    store_down: bool = False
    # the sending number as the Cloud API's GET of it answers (the number-quality job), and its status (not 200: an error);
    # Graph answers the fields asked for (``?fields=``) that have a value
    whatsapp_number: dict[str, Any] = field(default_factory=dict)
    whatsapp_number_status: int = 200
    # fields of the number the Graph API does not know (a field Meta dropped, or one newer than the API version): asking
    # for one fails the whole request, as Graph answers it (HTTP 400, code 100, "Tried accessing nonexisting field")
    whatsapp_number_unknown: set[str] = field(default_factory=set)

    def __post_init__(self) -> None:
        self._lock = threading.Lock()
        self._ids = itertools.count(1)
        self.woo_meta: dict[str, list[dict[str, Any]]] = {}
        # each order's status as the fake WooCommerce has it: what the scenario's order webhooks said
        # (harness.Scenario.woo_delivery), a status PUT, or set by a test (a change whose webhook was lost)
        self.woo_status: dict[str, str] = {}
        # order id -> the order as WooCommerce's REST API has it now (its status from ``woo_status``): what the
        # reconcile lists, whether or not its webhooks reached the connector (a test sets one whose webhook was lost)
        self.woo_orders: dict[str, dict[str, Any]] = {}
        self.shopify_cancelled: dict[str, str] = {}  # order gid -> cancelledAt, as the fake Shopify remembers it
        # order gid -> the order as Shopify's Admin GraphQL has it now (tests/scenarios/payloads.shopify_order_node):
        # what the reconcile reads, whether or not its webhooks reached the connector
        self.shopify_orders: dict[str, dict[str, Any]] = {}
        self.shopify_orders_status = 200  # anything else: the order pages answer it (403: the token lacks read_orders)
        # customer gid -> the customer as Shopify's Admin GraphQL has it now (payloads.shopify_customer_node): her phone's
        # consent, whether or not its consent webhook reached the connector
        self.shopify_customers: dict[str, dict[str, Any]] = {}
        self.shopify_hooks: list[dict[str, Any]] = []  # webhook subscriptions made by install
        self.app = Starlette(routes=[
            Route("/{version}/{phone_number_id}/messages", self._wa_messages, methods=["POST"]),
            Route("/admin/api/{version}/graphql.json", self._shopify_graphql, methods=["POST"]),
            Route("/wp-json/wc/v3/orders", self._woo_orders, methods=["GET"]),
            Route("/wp-json/wc/v3/orders/{order_id}", self._woo_order, methods=["GET", "PUT"]),
            Route("/wp-json/wc/v3/orders/{order_id}/notes", self._woo_note, methods=["POST"]),
            Route("/hooks/{stage}", self._hook, methods=["POST"]),
            Route("/{version}/{phone_number_id}", self._wa_number, methods=["GET"]),
        ])

    def reset(self) -> None:
        with self._lock:
            self.whatsapp.clear()
            self.shopify.clear()
            self.woo.clear()
            self.notifications.clear()
            self.refused.clear()
            self.woo_meta.clear()
            self.woo_status.clear()
            self.woo_orders.clear()
            self.shopify_cancelled.clear()
            self.shopify_orders.clear()
            self.shopify_orders_status = 200
            self.shopify_customers.clear()
            self.shopify_hooks.clear()
            self.whatsapp_down = False
            self.whatsapp_answer_lost = False
            self.store_down = False
            # as Meta answers now: the limit in ``whatsapp_business_manager_messaging_limit`` (``messaging_limit_tier`` is
            # deprecated and answers nothing)
            self.whatsapp_number = {"quality_rating": "GREEN", "whatsapp_business_manager_messaging_limit": "TIER_1K"}
            self.whatsapp_number_status = 200
            self.whatsapp_number_unknown = set()

    # ---- what scenarios read -------------------------------------------------------------
    def sent(self, to: str | None = None) -> list[WhatsAppSend]:
        return [s for s in self.whatsapp if to is None or s.to == to]

    def templates_to(self, to: str) -> list[str]:
        return [s.template or s.to for s in self.sent(to)]

    def shopify_ops(self, operation: str) -> list[dict[str, Any]]:
        return [c.variables for c in self.shopify if c.operation == operation]

    def woo_writes(self) -> list[WooCall]:
        return [c for c in self.woo if c.method != "GET"]

    # ---- WhatsApp Cloud API --------------------------------------------------------------
    async def _wa_messages(self, request: Request) -> Response:
        if request.headers.get("authorization") != f"Bearer {WA_TOKEN}":
            self.refused.append("whatsapp")
            return JSONResponse({"error": {"message": "Invalid OAuth access token.", "type": "OAuthException", "code": 190}}, 401)
        if self.whatsapp_down:
            return JSONResponse({"error": {"message": "Service temporarily unavailable", "type": "OAuthException", "code": 2}}, 503)
        body = await request.json()
        template = body.get("template") or {}
        params: list[str] = []
        buttons: list[str] = []
        for component in template.get("components") or []:
            for p in component.get("parameters") or []:
                if component.get("type") == "body":
                    params.append(p["text"] if p.get("type") == "text" else p.get(p.get("type"), {}).get("fallback_value", ""))
                elif p.get("type") == "payload":
                    buttons.append(p["payload"])
        with self._lock:
            wamid = f"wamid.FAKE{next(self._ids):06d}"
            self.whatsapp.append(WhatsAppSend(request.path_params["phone_number_id"], str(body.get("to")), template.get("name"),
                                              tuple(params), tuple(buttons), body.get("biz_opaque_callback_data"), wamid))
        to = str(body.get("to", ""))
        if self.whatsapp_answer_lost:
            return JSONResponse({"messaging_product": "whatsapp", "contacts": [{"input": to, "wa_id": to.lstrip("+")}]})
        return JSONResponse({"messaging_product": "whatsapp", "contacts": [{"input": to, "wa_id": to.lstrip("+")}],
                             "messages": [{"id": wamid}]})

    async def _wa_number(self, request: Request) -> Response:
        if request.headers.get("authorization") != f"Bearer {WA_TOKEN}":
            self.refused.append("whatsapp")
            return JSONResponse({"error": {"message": "Invalid OAuth access token.", "type": "OAuthException", "code": 190}}, 401)
        if self.whatsapp_number_status != 200:
            return JSONResponse({"error": {"message": "An unexpected error has occurred.", "type": "OAuthException", "code": 2}},
                                self.whatsapp_number_status)
        wanted = [f for f in request.query_params.get("fields", "").split(",") if f]
        unknown = [f for f in wanted if f in self.whatsapp_number_unknown]
        if unknown:
            return JSONResponse({"error": {"message": f"(#100) Tried accessing nonexisting field ({unknown[0]}) on node type "
                                           "(WhatsAppBusinessPhoneNumber)", "type": "OAuthException", "code": 100}}, 400)
        node = {k: v for k, v in self.whatsapp_number.items() if v is not None and (not wanted or k in wanted)}
        return JSONResponse({**node, "id": request.path_params["phone_number_id"]})

    # ---- Shopify Admin GraphQL -----------------------------------------------------------
    async def _shopify_graphql(self, request: Request) -> Response:
        if request.headers.get("x-shopify-access-token") != SHOP_TOKEN:
            self.refused.append("shopify")
            return JSONResponse({"errors": "[API] Invalid API key or access token (unrecognized login or wrong password)"}, 401)
        if self.store_down:
            return JSONResponse({"errors": "Service Unavailable"}, 503)
        body = await request.json()
        query, variables = str(body.get("query") or ""), body.get("variables") or {}
        with self._lock:
            if "orders(first: $first" in query and self.shopify_orders_status != 200:
                self.shopify.append(ShopifyCall("orders", variables))
                return JSONResponse({"errors": "[API] This action requires merchant approval for read_orders scope."},
                                    self.shopify_orders_status)
            if "orders(first: $first" in query:  # the reconcile's page
                op, data = "orders", {"orders": self._orders_page(variables)}
            elif "customers(first: $first" in query:  # the reconcile's customers pass
                op, data = "customers", {"customers": _updated_page(self.shopify_customers, variables)}
            elif "webhookSubscriptionCreate" in query:
                hook = {"id": f"gid://shopify/WebhookSubscription/{next(self._ids)}", "topic": variables["topic"],
                        "uri": variables["webhookSubscription"]["uri"]}
                if "metafieldNamespaces" in variables["webhookSubscription"]:
                    hook["metafieldNamespaces"] = list(variables["webhookSubscription"]["metafieldNamespaces"])
                self.shopify_hooks.append(hook)
                op, data = "webhookSubscriptionCreate", {"webhookSubscriptionCreate": {"webhookSubscription": hook, "userErrors": []}}
            elif "webhookSubscriptions(" in query:
                op, data = "webhookSubscriptions", {"webhookSubscriptions": {
                    "nodes": list(self.shopify_hooks), "pageInfo": {"hasNextPage": False, "endCursor": None}}}
            elif "StoreloopOrderFulfillments" in query:  # an order listing as many fulfilments as the page asked for
                node = self.shopify_orders.get(variables.get("id") or "")
                op, data = "orderFulfillments", {"order": _as_listed(node, variables) if node else None}
            else:
                op, _, variables, data = admin_graphql_answer(body, self.shopify_cancelled)
            self.shopify.append(ShopifyCall(op, variables))
        return JSONResponse({"data": data, "extensions": {"cost": COST}})

    def _orders_page(self, v: dict[str, Any]) -> dict[str, Any]:
        """``orders(first, after, sortKey: UPDATED_AT, query: "updated_at:>='…'")``: (updatedAt, id) order."""
        page = _updated_page(self.shopify_orders, v)
        return {**page, "nodes": [_as_listed(n, v) for n in page["nodes"]]}

    # ---- WooCommerce REST v3 -------------------------------------------------------------
    def _woo_authorized(self, request: Request) -> bool:
        """WooCommerce's check for plain http (WC_REST_Authentication::check_oauth_signature):
        HMAC-SHA256 over ``METHOD&rawurlencode(url)&rawurlencode(sorted query)``, key ``secret&``."""
        q = dict(request.query_params)
        given = q.pop("oauth_signature", "")
        ok = q.get("oauth_consumer_key") == WOO_KEY and q.get("oauth_signature_method") == "HMAC-SHA256"
        if ok:
            url = f"{request.url.scheme}://{request.url.netloc}{request.url.path}"
            normalized = "&".join(f"{_rawurlencode(k)}={_rawurlencode(v)}" for k, v in sorted(q.items()))
            base = f"{request.method}&{_rawurlencode(url)}&{_rawurlencode(normalized)}"
            expected = base64.b64encode(hmac.new(f"{WOO_SECRET}&".encode(), base.encode(), hashlib.sha256).digest()).decode()
            ok = hmac.compare_digest(given, expected)
        if not ok:
            self.refused.append("woocommerce")
        return ok

    async def _woo_order(self, request: Request) -> Response:
        if not self._woo_authorized(request):
            return JSONResponse({"code": "woocommerce_rest_cannot_view", "message": "Sorry, you cannot view this resource."}, 401)
        if self.store_down:
            return Response("Service Unavailable", 503)
        oid = request.path_params["order_id"]
        body = await request.json() if request.method == "PUT" else None
        with self._lock:
            self.woo.append(WooCall(request.method, oid, "", body))
            meta = self.woo_meta.setdefault(oid, [])
            if body and isinstance(body.get("meta_data"), list):
                for item in body["meta_data"]:
                    meta[:] = [m for m in meta if m.get("key") != item.get("key")] + [item]
            if body and "status" in body:
                self.woo_status[oid] = body["status"]
            current = list(meta)
            status = self.woo_status.get(oid, "processing")
        return JSONResponse({"id": int(oid), "status": status, "meta_data": current})

    async def _woo_orders(self, request: Request) -> Response:
        """The orders listing the reconcile pages through: sorted by id, those modified after ``modified_after``
        (GMT), the bin (``trash``) only when asked for (WordPress's ``any`` leaves it out), by ``offset``."""
        if not self._woo_authorized(request):
            return JSONResponse({"code": "woocommerce_rest_cannot_view", "message": "Sorry, you cannot list resources."}, 401)
        if self.store_down:
            return Response("Service Unavailable", 503)
        q = request.query_params
        binned, after = q.get("status") == "trash", q.get("modified_after") or ""
        with self._lock:
            orders = [{**o, "status": self.woo_status.get(oid, o.get("status"))} for oid, o in self.woo_orders.items()]
        listed = sorted((o for o in orders if (o["status"] == "trash") == binned and str(o.get("date_modified_gmt")) > after),
                        key=lambda o: int(o["id"]))
        offset, per_page = int(q.get("offset", "0")), int(q.get("per_page", "10"))
        pages = -(-len(listed) // per_page)
        return JSONResponse(listed[offset:offset + per_page], headers={"X-WP-Total": str(len(listed)), "X-WP-TotalPages": str(pages)})

    async def _woo_note(self, request: Request) -> Response:
        if not self._woo_authorized(request):
            return JSONResponse({"code": "woocommerce_rest_cannot_create", "message": "Sorry, you are not allowed to create resources."}, 401)
        if self.store_down:
            return Response("Service Unavailable", 503)
        body = await request.json()
        with self._lock:
            self.woo.append(WooCall("POST", request.path_params["order_id"], "/notes", body))
            note_id = next(self._ids)
        return JSONResponse({"id": note_id, **body}, 201)

    # ---- hand-off notifications ----------------------------------------------------------
    async def _hook(self, request: Request) -> Response:
        body = await request.json()
        with self._lock:
            self.notifications.append((request.path_params["stage"], body))
        return Response("ok")


def _time(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).astimezone(timezone.utc)


def _updated_page(nodes: dict[str, dict[str, Any]], v: dict[str, Any]) -> dict[str, Any]:
    """A connection ``(first, after, sortKey: UPDATED_AT, query: "updated_at:>='…'")``: (updatedAt, id) order, Relay cursors."""
    since = _time(str(v.get("q") or "").split(">=", 1)[1].strip("'\""))
    rows = sorted((n for n in nodes.values() if _time(n["updatedAt"]) >= since), key=lambda n: (_time(n["updatedAt"]), n["id"]))
    if v.get("cursor"):
        at, oid = v["cursor"].split("|", 1)
        rows = [n for n in rows if (_time(n["updatedAt"]), n["id"]) > (_time(at), oid)]
    page = rows[: int(v["first"])]
    end = f"{page[-1]['updatedAt']}|{page[-1]['id']}" if page else None
    return {"pageInfo": {"hasNextPage": len(rows) > len(page), "endCursor": end}, "nodes": page}


def _as_listed(node: dict[str, Any], v: dict[str, Any]) -> dict[str, Any]:
    """The order as a query asking for ``fulfillments(first: $fulfillments)`` / ``trackingInfo(first: $tracking)``
    gets it: plain lists, cut at what was asked for (none when the query does not ask)."""
    listed = node.get("fulfillments") or []
    return {**node, "fulfillments": [{**f, "trackingInfo": (f.get("trackingInfo") or [])[: int(v.get("tracking") or 0)]}
                                     for f in listed[: int(v.get("fulfillments") or 0)]]}


def _rawurlencode(value: str) -> str:
    """PHP's rawurlencode (RFC 3986: only ``-_.~`` and alphanumerics stay)."""
    return quote(value, safe="~")
