"""A fake Shopify Admin GraphQL API for bench/sync.py, in its own process on 127.0.0.1.

It answers the connector's reconciliation query (``adapters/shopify/graphql.py``
``ORDERS_QUERY``): ``orders(first: $first, after: $cursor, sortKey: UPDATED_AT, query: $q)``
with ``$q = "updated_at:>='…'"``, ``lineItems(first: $lines)`` and, when the query asks,
``fulfillments(first: $fulfillments)`` with ``trackingInfo(first: $tracking)`` (a fulfilled
order has one delivered parcel) and the customer's ``defaultPhoneNumber`` consent. The store holds
``--orders`` orders, but none of them is kept in memory: order ``i`` (0-based) is generated
on the fly from its index (deterministic, same bytes every run), with ``updatedAt``
non-decreasing in ``i`` (every tenth order shares its predecessor's timestamp, as real
stores have ties) and the ids increasing, so the sort (updatedAt, id) is index order, the
``updated_at`` filter is a binary search and a page is ``first`` consecutive indexes.
Cursors are opaque base64 JSON ``{"last_id", "last_value"}`` like Shopify's.

Cost and throttling as platform-facts.md A7 describes Shopify's: a leaky bucket of
``--maximum`` points refilled at ``--restore-rate`` points/s (full at the first request).
Each query's requested cost (object 1, connection 2 + first x node, scalars 0, a list sized
by ``first`` like a connection: the rule ``graphql.query_cost`` implements) must be in the bucket, else the answer is HTTP 200 with
``errors[0].extensions.code = "THROTTLED"`` and ``actualQueryCost: null``; otherwise the
requested cost is taken, the query runs, and the difference to the actual cost (the nodes
and line items really returned) is refunded. Every answer carries ``extensions.cost`` with
``requestedQueryCost``, ``actualQueryCost`` and ``throttleStatus``. A query over 1,000
requested points is refused with ``MAX_COST_EXCEEDED``.

The customers pass that follows the orders (``CUSTOMERS_QUERY``) gets an empty page: the bench
measures the orders backfill.

Other traffic of the same app (write-backs by the outbox share the per-app-and-store
bucket): with ``--drain-at 1500,3000`` the 1,500th and 3,000th orders requests first find
up to ``--drain-points`` taken from the bucket by "another client", which the connector
cannot see coming; such a request is then THROTTLED if the rest cannot cover it.

    python bench/_fake_shopify.py --port 8124 --orders 100000 --now 1790000000 --restore-rate 50000

``GET /_stats`` returns the counters (requests, throttled, points requested / charged /
taken by the other client / lost to the bucket's cap, bucket level, server CPU seconds);
``GET /_ready`` is 200.
"""

from __future__ import annotations

import argparse
import base64
import random
import resource
import sys
import time
from datetime import datetime, timedelta, timezone
from typing import Any

import orjson
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

ID_BASE = 5_100_000_000_000  # Shopify order ids are 13 digits nowadays
SPAN = timedelta(days=360)  # orders' updatedAt spread over the last 360 days ...
END_GAP = timedelta(minutes=10)  # ... ending 10 minutes before "now"
MAX_QUERY_COST = 1000
MAX_FIRST = 250
SHOP_HOST = "bench-sync.myshopify.com"

FIRST_NAMES = ("Asha", "Ravi", "Priya", "Arjun", "Meera", "Kabir", "Nisha", "Vikram", "Sana", "Rohan")
LAST_NAMES = ("Kumar", "Sharma", "Iyer", "Patel", "Reddy", "Nair", "Singh", "Das", "Menon", "Gupta")
PRODUCTS = (("Masala chai 250 g", "TEA-250", "349.00"), ("Assam gold 500 g", "TEA-500", "599.00"),
            ("Cast iron kettle", "KET-01", "1899.00"), ("Clay cups x4", "CUP-04", "450.00"),
            ("Ginger honey 200 g", "HON-200", "275.00"), ("Cardamom pods 100 g", "CAR-100", "320.00"),
            ("Steel strainer", "STR-01", "149.00"), ("Gift box", "GFT-01", "999.00"))


def iso(dt: datetime) -> str:
    return dt.strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_iso(text: str) -> datetime:
    dt = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    return dt.replace(tzinfo=timezone.utc) if dt.tzinfo is None else dt.astimezone(timezone.utc)


# ---- cost (Shopify's calculated query cost, requested and actual) ----------------------------


def line_cost() -> int:
    """A line item node: the item, variant, product, originalUnitPriceSet, shopMoney."""
    return 5


def fulfillment_cost(tracking: int) -> int:
    """A fulfilment: itself and its trackingInfo list (2 + tracking x entry)."""
    return 1 + 2 + tracking


def order_cost(lines: int, fulfillments: list[int] | None = None, consent: int = 0) -> int:
    """An order node: itself, customer, shippingAddress, billingAddress, currentTotalPriceSet,
    shopMoney (scalars are free), its lineItems connection (2 + lines x item), the customer's
    phone and WhatsApp consent objects (``consent``), and when asked for its fulfillments list
    (2 + each fulfilment's cost, ``fulfillments`` = the tracking entries of each)."""
    listed = 0 if fulfillments is None else 2 + sum(fulfillment_cost(t) for t in fulfillments)
    return 6 + 2 + lines * line_cost() + consent + listed


def requested_cost(first: int, lines: int, fulfillments: int | None = None, tracking: int = 0, consent: bool = False) -> int:
    asked = None if fulfillments is None else [tracking] * fulfillments
    return 2 + first * order_cost(lines, asked, 2 if consent else 0)


def actual_cost(nodes: list[dict[str, Any]]) -> int:
    def cost(n: dict[str, Any]) -> int:
        phone = (n.get("customer") or {}).get("defaultPhoneNumber")
        consent = 0 if phone is None else 1 + (1 if phone.get("whatsAppMarketingConsent") is not None else 0)
        listed = n.get("fulfillments")
        return order_cost(len(n["lineItems"]["nodes"]), None if listed is None else [len(f["trackingInfo"]) for f in listed], consent)
    return 2 + sum(cost(n) for n in nodes)


# ---- the store -------------------------------------------------------------------------------


class Store:
    """``n`` orders generated from their index."""

    def __init__(self, n: int, now: datetime, seed: int = 5):
        self.n = n
        self.seed = seed
        self.start = now - SPAN
        self.span_s = int((SPAN - END_GAP).total_seconds())

    def updated_at(self, i: int) -> datetime:
        j = i - 1 if i % 10 == 9 else i  # ties
        return self.start + timedelta(seconds=(j * self.span_s) // max(1, self.n - 1))

    def first_at_or_after(self, since: datetime) -> int:
        lo, hi = 0, self.n
        while lo < hi:
            mid = (lo + hi) // 2
            if self.updated_at(mid) < since:
                lo = mid + 1
            else:
                hi = mid
        return lo

    def node(self, i: int, lines_limit: int, fulfillments: int | None = None, tracking: int = 0, consent: bool = False) -> dict[str, Any]:
        rng = random.Random(self.seed * 1_000_003 + i)
        oid = ID_BASE + i
        updated = self.updated_at(i)
        created = updated - timedelta(seconds=rng.randint(0, 3 * 86400))
        kind = rng.random()
        cod, paid = kind < 0.3, 0.3 <= kind < 0.95
        cancelled = rng.random() < 0.03
        old = updated < self.start + SPAN - timedelta(days=7)
        fn, ln = rng.choice(FIRST_NAMES), rng.choice(LAST_NAMES)
        phone = f"+91 9{rng.randint(100000000, 999999999)}"
        count = rng.randint(1, 5)
        items = []
        total = 0.0
        for k in range(count):
            title, sku, price = PRODUCTS[rng.randrange(len(PRODUCTS))]
            qty = rng.randint(1, 3)
            total += qty * float(price)
            vid = 44_000_000_000_000 + rng.randrange(500)
            items.append({
                "id": f"gid://shopify/LineItem/{15_000_000_000_000 + i * 8 + k}",
                "quantity": qty, "title": title, "sku": sku,
                "variant": {"id": f"gid://shopify/ProductVariant/{vid}"},
                "product": {"id": f"gid://shopify/Product/{8_000_000_000_000 + vid % 50}"},
                "originalUnitPriceSet": {"shopMoney": {"amount": price}},
            })
        shown = items[:lines_limit]
        more = len(items) > lines_limit
        address = {"phone": phone if rng.random() < 0.5 else None, "countryCodeV2": "IN", "firstName": fn, "lastName": ln}
        fulfilled = old and paid and not cancelled
        customer: dict[str, Any] = {"id": f"gid://shopify/Customer/{7_000_000_000_000 + rng.randrange(self.n // 2 + 1)}",
                                    "firstName": fn, "lastName": ln, "email": None, "phone": None}
        if consent:
            opted = rng.random() < 0.3
            customer["defaultPhoneNumber"] = {
                "phoneNumber": phone, "marketingState": "SUBSCRIBED" if opted else "NOT_SUBSCRIBED",
                "marketingUpdatedAt": iso(created) if opted else None,
                "whatsAppMarketingConsent": {"state": "SUBSCRIBED" if opted else "NOT_SUBSCRIBED", "updatedAt": iso(created) if opted else None}}
        node = {
            "id": f"gid://shopify/Order/{oid}",
            "name": f"#{1001 + i}",
            "createdAt": iso(created),
            "updatedAt": iso(updated),
            "cancelledAt": iso(updated) if cancelled else None,
            "displayFinancialStatus": "PAID" if paid else "PENDING",
            "displayFulfillmentStatus": "FULFILLED" if fulfilled else "UNFULFILLED",
            "paymentGatewayNames": ["Cash on Delivery (COD)"] if cod else (["shopify_payments"] if paid else ["razorpay"]),
            "email": f"{fn.lower()}.{ln.lower()}{i}@example.com",
            "phone": phone if rng.random() < 0.7 else None,
            "currencyCode": "INR",
            "statusPageUrl": f"https://{SHOP_HOST}/81234567/orders/{oid:x}/authenticate?key=k{oid}",
            "tags": ["repeat"] if rng.random() < 0.2 else [],
            "test": False,
            "checkoutToken": f"{oid:032x}",
            "customerLocale": "en-IN",
            "currentTotalPriceSet": {"shopMoney": {"amount": f"{total:.2f}", "currencyCode": "INR"}},
            "customer": customer,
            "shippingAddress": address,
            "billingAddress": dict(address),
            "lineItems": {
                "pageInfo": {"hasNextPage": more,
                             "endCursor": _cursor(int(shown[-1]["id"].rsplit("/", 1)[1]), 0) if shown else None},
                "nodes": shown,
            },
        }
        if fulfillments is not None:  # a fulfilled order: one parcel, delivered
            parcel = {"id": f"gid://shopify/Fulfillment/{ID_BASE + i}", "status": "SUCCESS", "displayStatus": "DELIVERED",
                      "createdAt": iso(created + timedelta(days=1)), "updatedAt": iso(updated),
                      "trackingInfo": [{"company": "Delhivery", "number": f"DL{oid}", "url": f"https://track.example/DL{oid}"}][:tracking]}
            node["fulfillments"] = [parcel][:fulfillments] if fulfilled else []
        return node


def _cursor(last_id: int, last_value: int) -> str:
    return base64.b64encode(orjson.dumps({"last_id": last_id, "last_value": last_value})).decode()


# ---- the API ----------------------------------------------------------------------------------


class FakeShopify:
    def __init__(self, store: Store, *, token: str, maximum: float, restore_rate: float, drain_at: set[int], drain_points: float):
        self.store = store
        self.token = token
        self.maximum = float(maximum)
        self.rate = float(restore_rate)
        self.drain_at = drain_at
        self.drain_points = float(drain_points)
        self.available = self.maximum
        self.last: float | None = None  # monotonic time of the last refill (None: before the first request)
        self.stats: dict[str, Any] = {
            "requests": 0, "orders_requests": 0, "ok": 0, "throttled": 0, "errors": 0, "orders_served": 0,
            "points_requested": 0.0, "points_charged": 0.0, "points_other": 0.0, "points_capped": 0.0,
            "first_request": None, "last_request": None, "max_first": 0, "requested_costs": {},
        }
        self.app = Starlette(routes=[
            Route("/admin/api/{version}/graphql.json", self.graphql, methods=["POST"]),
            Route("/_stats", self.get_stats, methods=["GET"]),
            Route("/_ready", self.ready, methods=["GET"]),
        ])

    # -- the bucket
    def _refill(self, now: float) -> None:
        if self.last is None:
            self.last = now
            return
        added = self.rate * max(0.0, now - self.last)
        self.last = now
        room = self.maximum - self.available
        if added > room:
            self.stats["points_capped"] += added - room
            added = room
        self.available += added

    def _cost(self, requested: float, actual: float | None) -> dict[str, Any]:
        return {"requestedQueryCost": requested, "actualQueryCost": actual,
                "throttleStatus": {"maximumAvailable": self.maximum, "currentlyAvailable": round(self.available, 3),
                                   "restoreRate": self.rate}}

    @staticmethod
    def _json(body: dict[str, Any], status: int = 200) -> Response:
        return Response(orjson.dumps(body), status_code=status, media_type="application/json")

    def _error(self, message: str, code: str, status: int = 200) -> Response:
        self.stats["errors"] += 1
        return self._json({"errors": [{"message": message, "extensions": {"code": code}}]}, status)

    async def graphql(self, request: Request) -> Response:
        now = time.monotonic()
        st = self.stats
        st["requests"] += 1
        st["first_request"] = st["first_request"] or now
        st["last_request"] = now
        if request.headers.get("x-shopify-access-token") != self.token:
            return self._error("[API] Invalid API key or access token (unrecognized login or wrong password)", "ACCESS_DENIED", 401)
        try:
            body = orjson.loads(await request.body())
            query, variables = body["query"], body.get("variables") or {}
        except (ValueError, KeyError, TypeError):
            return self._error("Parse error on request body", "BAD_REQUEST", 400)
        if "ordersCount(query: $q" in query:  # the backfill's progress-bar total (adapters/shopify/sync.py)
            return self._count(variables.get("q") or "", now)
        if "customers(first: $first, after: $cursor, sortKey: UPDATED_AT, query: $q)" in query:  # the customers pass
            return self._customers(variables, now)
        if "orders(first: $first, after: $cursor, sortKey: UPDATED_AT, query: $q)" not in query:
            return self._error("this fake answers only the connector's orders and ordersCount queries", "UNSUPPORTED")
        try:
            first, lines = int(variables["first"]), int(variables["lines"])
            fulfillments = int(variables["fulfillments"]) if "fulfillments" in variables else None
            tracking = int(variables.get("tracking") or 0)
            consent = "defaultPhoneNumber" in query
            q = variables.get("q") or ""
            cursor = variables.get("cursor")
        except (KeyError, TypeError, ValueError):
            return self._error("Variable $first / $lines of type Int! was provided invalid value", "INVALID_VARIABLE")
        if not (1 <= first <= MAX_FIRST) or not (0 <= lines <= MAX_FIRST):
            return self._error(f"The first argument must be between 1 and {MAX_FIRST}", "BAD_REQUEST")
        st["orders_requests"] += 1
        st["max_first"] = max(st["max_first"], first)
        requested = float(requested_cost(first, lines, fulfillments, tracking, consent))
        st["requested_costs"][str(int(requested))] = st["requested_costs"].get(str(int(requested)), 0) + 1
        if requested > MAX_QUERY_COST:
            st["errors"] += 1
            return self._json({"errors": [{"message": f"Query cost is {requested:.0f}, which exceeds the single query max cost "
                                                      f"limit ({MAX_QUERY_COST}).", "extensions": {"code": "MAX_COST_EXCEEDED"}}],
                               "extensions": {"cost": self._cost(requested, None)}})
        self._refill(now)
        if st["orders_requests"] in self.drain_at:
            taken = min(self.available, self.drain_points)
            self.available -= taken
            st["points_other"] += taken
        if requested > self.available:
            st["throttled"] += 1
            return self._json({"errors": [{"message": "Throttled", "extensions": {
                "code": "THROTTLED", "documentation": "https://shopify.dev/api/usage/rate-limits"}}],
                "extensions": {"cost": self._cost(requested, None)}})
        self.available -= requested
        st["points_requested"] += requested
        try:
            start = self._start(q, cursor)
        except ValueError as exc:
            self.available += requested  # refused before execution: nothing charged
            st["points_requested"] -= requested
            return self._error(str(exc), "BAD_REQUEST")
        end = min(self.store.n, start + first)
        nodes = [self.store.node(i, lines, fulfillments, tracking, consent) for i in range(start, end)]
        actual = float(actual_cost(nodes))
        self.available = min(self.maximum, self.available + requested - actual)  # the refund
        st["points_charged"] += actual
        st["ok"] += 1
        st["orders_served"] += len(nodes)
        last = end - 1
        page_info = {"hasNextPage": end < self.store.n,
                     "endCursor": _cursor(ID_BASE + last, int(self.store.updated_at(last).timestamp() * 1000)) if nodes else None}
        return self._json({"data": {"orders": {"pageInfo": page_info, "nodes": nodes}},
                           "extensions": {"cost": self._cost(requested, actual)}})

    def _customers(self, variables: dict[str, Any], now: float) -> Response:
        """The reconcile's customers pass (consent changed on customers with no changed order): this store's
        customers changed with their orders, so the page is empty; its cost comes out of the same bucket
        (requested: the connection, 2 + first x 3 for the customer and her phone's consent; charged: 2)."""
        try:
            first = int(variables["first"])
        except (KeyError, TypeError, ValueError):
            return self._error("Variable $first of type Int! was provided invalid value", "INVALID_VARIABLE")
        requested = float(2 + first * 3)
        self._refill(now)
        if requested > self.available:
            self.stats["throttled"] += 1
            return self._json({"errors": [{"message": "Throttled", "extensions": {"code": "THROTTLED"}}],
                               "extensions": {"cost": self._cost(requested, None)}})
        self.available -= 2.0
        self.stats["points_charged"] += 2.0
        return self._json({"data": {"customers": {"pageInfo": {"hasNextPage": False, "endCursor": None}, "nodes": []}},
                           "extensions": {"cost": self._cost(requested, 2.0)}})

    def _count(self, q: str, now: float) -> Response:
        """``ordersCount`` with the pages' search query: an exact count for 1 point, like Shopify's."""
        self._refill(now)
        if self.available < 1:
            self.stats["throttled"] += 1
            return self._json({"errors": [{"message": "Throttled", "extensions": {"code": "THROTTLED"}}],
                               "extensions": {"cost": self._cost(1.0, None)}})
        try:
            start = self._start(q, None)
        except ValueError as exc:
            return self._error(str(exc), "BAD_REQUEST")
        self.available -= 1
        self.stats["points_charged"] += 1
        self.stats["points_requested"] += 1
        return self._json({"data": {"ordersCount": {"count": self.store.n - start, "precision": "EXACT"}},
                           "extensions": {"cost": self._cost(1.0, 1.0)}})

    def _start(self, q: str, cursor: str | None) -> int:
        """First index of the page: after the cursor, and updatedAt >= the filter's date."""
        start = 0
        q = q.strip()
        if q:
            prefix = "updated_at:>="
            if not q.startswith(prefix):
                raise ValueError(f"unsupported search query {q[:60]!r}")
            start = self.store.first_at_or_after(parse_iso(q[len(prefix):].strip("'\"")))
        if cursor:
            try:
                last_id = int(orjson.loads(base64.b64decode(cursor))["last_id"])
            except (ValueError, KeyError, TypeError):
                raise ValueError("Invalid cursor for current pagination") from None
            start = max(start, last_id - ID_BASE + 1)
        return start

    async def get_stats(self, request: Request) -> Response:
        if self.last is not None:
            self._refill(time.monotonic())
        usage = resource.getrusage(resource.RUSAGE_SELF)
        out = dict(self.stats, at=time.monotonic(), available=self.available, maximum=self.maximum, restore_rate=self.rate,
                   cpu_seconds=usage.ru_utime + usage.ru_stime, maxrss_mb=usage.ru_maxrss / 1024)
        return self._json(out)

    async def ready(self, request: Request) -> Response:
        return Response(b"ok")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--orders", type=int, required=True)
    parser.add_argument("--now", type=float, required=True, help="the bench's 'now' (epoch seconds): orders end 10 min before it")
    parser.add_argument("--token", default="shpat_bench")
    parser.add_argument("--maximum", type=float, default=2000.0)
    parser.add_argument("--restore-rate", type=float, required=True)
    parser.add_argument("--drain-at", default="", help="orders request numbers, comma-separated")
    parser.add_argument("--drain-points", type=float, default=0.0)
    args = parser.parse_args()
    store = Store(args.orders, datetime.fromtimestamp(args.now, timezone.utc))
    fake = FakeShopify(store, token=args.token, maximum=args.maximum, restore_rate=args.restore_rate,
                       drain_at={int(x) for x in args.drain_at.split(",") if x.strip()}, drain_points=args.drain_points)
    uvicorn.run(fake.app, host="127.0.0.1", port=args.port, log_level="warning", access_log=False, loop="uvloop", http="httptools")


if __name__ == "__main__":
    sys.exit(main())
