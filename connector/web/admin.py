"""Admin JSON API behind a bearer token.

Every route answers 401 without ``Authorization: Bearer <server.admin_token>`` (compared in
constant time) and 429 once a client address has failed ``auth.LOGIN_ATTEMPTS`` times within
a minute (in memory, per process; each failure is logged with the route's template, never the
concrete path, which can hold a phone, nor the presented token). A body is read under
``server.max_body_bytes`` as it streams in (413 beyond) and parsed with orjson, which refuses
deep nesting (400 with the reason).
"""

from __future__ import annotations

import hmac
import logging
from functools import partial
from typing import Any

import anyio.to_thread
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from connector import admin
from connector.web.auth import LoginLimiter
from connector.web.http import BodyTooLarge, parse_json, problem, receive_body

log = logging.getLogger("storeloop.admin")

CLOSED_BY_MAX = 120  # handoffs.closed_by is VARCHAR(120): longer would be a database error on PostgreSQL
MAX_ROW_ID = 2**63 - 1  # ids are BIGINT: a larger number is no row, and SQLite / PostgreSQL raise on it


def _row_id(value: int) -> bool:
    """An id a row could have (a path's digits can be any length)."""
    return 0 <= value <= MAX_ROW_ID


def _path_id(request: Request, name: str) -> int | None:
    """A row id from the path, or None (not digits, or more than a row id can be): parsed here, not by
    the route's ``int`` convertor, which raised on 4,300 digits and more (a 500 before any check)."""
    text = request.path_params[name]
    if not (text.isascii() and text.isdigit()) or len(text) > len(str(MAX_ROW_ID)):
        return None
    value = int(text)
    return value if _row_id(value) else None


def _authorized(request: Request, store_key: str | None = None) -> str | None:
    """``"admin"`` when the bearer is ``server.admin_token``, ``"store"`` when (for a route of
    ``store_key``) it is that store's own ``admin_token``, else None: a store's token opens nothing
    of another store."""
    given = request.headers.get("authorization", "")
    if not given.startswith("Bearer "):
        return None
    presented = given.removeprefix("Bearer ").strip()
    if not presented.isascii():
        return None
    runtime = request.app.state.runtime
    store = runtime.stores_by_key.get(store_key) if store_key else None
    matched: list[bool] = []
    for token in (runtime.settings.server.admin_token, store.admin_token if store is not None else None):
        secret = token.get_secret_value() if token is not None else ""
        matched.append(bool(secret) and hmac.compare_digest(presented, secret))  # both compared, in constant time each
    return "admin" if matched[0] else "store" if matched[1] else None


def _store_id(request: Request) -> int | None:
    return request.app.state.runtime.store_ids.get(request.path_params["store_key"])


def _limiter(request: Request) -> LoginLimiter:
    """Failed bearer attempts per client address (in memory, per process, like the dashboard's)."""
    state = request.app.state
    limiter = getattr(state, "admin_api_limiter", None)
    if limiter is None:
        limiter = state.admin_api_limiter = LoginLimiter()
    return limiter


def client_address(request: Request) -> str:
    return request.client.host if request.client else "unknown"


def route_template(request: Request) -> str:
    """``/api/stores/{store_key}/contacts/{phone}``, not the path itself (which can carry a phone)."""
    route = request.scope.get("route")
    return getattr(route, "path", None) or "?"


def bearer_refusal(request: Request, store_key: str | None = None) -> Response | None:
    """None when the request carries the admin token (or ``store_key``'s own); else the 401/429
    answer (failure counted and logged).

    Shared by the admin API and the install routes that start a flow (``/woocommerce/connect``,
    which only ``server.admin_token`` opens), so a token guessed on one is limited on all of them."""
    client = client_address(request)
    limiter = _limiter(request)
    wait = limiter.retry_after(client)
    if wait:
        log.warning("admin request refused: too many failed attempts", extra={"route": route_template(request), "client": client})
        return problem(429, f"too many failed attempts; try again in {wait} s", headers={"Retry-After": str(wait)})
    who = _authorized(request, store_key)
    if who is None:
        limiter.failed(client)
        log.warning("admin request without a valid token", extra={"route": route_template(request), "client": client})
        return problem(401, "unauthorized: send Authorization: Bearer <server.admin_token>")
    if who == "admin":
        limiter.forgive(client)
    return None


def _guard(request: Request) -> Response | int:
    refused = bearer_refusal(request, request.path_params["store_key"])
    if refused is not None:
        return refused
    store_id = _store_id(request)
    if store_id is None:
        return problem(404, "unknown store")
    return store_id


async def _guarded_object(request: Request, example: str) -> Response | tuple[int, dict[str, Any]]:
    """The store id and the body as a JSON object for a POST of the admin API, or the answer to send
    instead (401/404 from the guard, 413/400 for the body; ``example`` shows the expected shape)."""
    guard = _guard(request)
    if isinstance(guard, Response):
        return guard
    body = await json_body(request, request.app.state.runtime.settings.server.max_body_bytes, empty={})
    if isinstance(body, Response):
        return body
    if not isinstance(body, dict):
        return problem(400, f"body must be a JSON object: {example}")
    return guard, body


async def read_body(request: Request, cap: int) -> bytes:
    """The request body under ``cap`` (``BodyTooLarge`` beyond), read as the webhook endpoints read theirs."""
    return await receive_body(request.receive, request.headers, cap)


async def json_body(request: Request, cap: int, *, empty: Any = None) -> Any:
    """The body as JSON (``empty`` when there is none), or the 413 / 400 answer to send instead."""
    try:
        body = await read_body(request, cap)
    except BodyTooLarge:
        log.warning("admin request body over the size cap", extra={"route": route_template(request), "cap": cap})
        return problem(413, f"body larger than {cap} bytes")
    if not body.strip():
        return empty
    try:
        return parse_json(body)
    except ValueError as exc:
        return problem(400, f"body must be JSON: {exc}")


async def contact(request: Request) -> Response:
    guard = _guard(request)
    if isinstance(guard, Response):
        return guard
    runtime = request.app.state.runtime
    store = runtime.stores_by_key[request.path_params["store_key"]]
    view = await anyio.to_thread.run_sync(
        partial(admin.contact_view, runtime.db, guard, request.path_params["phone"], store.default_country, now=runtime.clock())
    )
    return JSONResponse(view) if view else problem(404, "no contact with that phone in this store")


async def order(request: Request) -> Response:
    guard = _guard(request)
    if isinstance(guard, Response):
        return guard
    runtime = request.app.state.runtime
    view = await anyio.to_thread.run_sync(partial(admin.order_view, runtime.db, guard, request.path_params["order_id"]))
    return JSONResponse(view) if view else problem(404, "no such order in this store")


async def inbox(request: Request) -> Response:
    guard = _guard(request)
    if isinstance(guard, Response):
        return guard
    status = request.query_params.get("status")
    if status and status not in admin.INBOX_STATUSES:
        return problem(400, f"status must be one of {', '.join(admin.INBOX_STATUSES)}")
    try:
        limit = min(500, max(1, int(request.query_params.get("limit", "50"))))
        before = int(request.query_params["before_id"]) if "before_id" in request.query_params else None
    except ValueError:
        return problem(400, "limit and before_id must be integers")
    if before is not None and not _row_id(before):
        return problem(400, f"before_id must be between 0 and {MAX_ROW_ID}")
    runtime = request.app.state.runtime
    rows = await anyio.to_thread.run_sync(partial(admin.inbox_view, runtime.db, guard, status, limit, before))
    return JSONResponse({"items": rows})


async def replay_inbox(request: Request) -> Response:
    """``POST .../inbox/replay``: make the store's failed rows pending again after a fix (all of them,
    or ``{"ids": [...]}``, ``"status"`` failed or held, ``"since"`` an ISO time); the processor is woken."""
    from datetime import datetime, timezone

    guarded = await _guarded_object(request, '{"ids": [1, 2], "status": "failed", "since": "2026-11-20T00:00:00Z"}')
    if isinstance(guarded, Response):
        return guarded
    guard, body = guarded
    runtime = request.app.state.runtime
    ids, status, since = body.get("ids"), body.get("status", "failed"), body.get("since")
    if ids is not None and (not isinstance(ids, list) or not ids or not all(isinstance(i, int) and not isinstance(i, bool) and _row_id(i) for i in ids)):
        return problem(400, "ids must be a non-empty list of inbox row ids (integers); leave it out for every failed row")
    if status not in admin.REPLAYABLE:
        return problem(400, f"status must be one of {', '.join(admin.REPLAYABLE)}")
    when = None
    if since is not None:
        try:
            when = datetime.fromisoformat(str(since).replace("Z", "+00:00"))
        except ValueError:
            return problem(400, "since must be an ISO 8601 time, e.g. 2026-11-20T00:00:00Z")
        when = when.replace(tzinfo=timezone.utc) if when.tzinfo is None else when
    result = await anyio.to_thread.run_sync(partial(admin.replay_inbox, runtime.db, guard, ids=ids or None,
                                                    status=status, since=when))
    if result.rows:
        log.info("inbox rows replayed", extra={"store": request.path_params["store_key"], "rows": len(result.rows),
                                               "client": client_address(request)})
        runtime.wake()
    return JSONResponse(result.as_dict())


async def handoffs(request: Request) -> Response:
    guard = _guard(request)
    if isinstance(guard, Response):
        return guard
    status = request.query_params.get("status")
    if status and status not in ("open", "closed"):
        return problem(400, "status must be open or closed")
    try:
        limit = min(500, max(1, int(request.query_params.get("limit", "100"))))
        before = int(request.query_params["before_id"]) if "before_id" in request.query_params else None
    except ValueError:
        return problem(400, "limit and before_id must be integers")
    if before is not None and not _row_id(before):
        return problem(400, f"before_id must be between 0 and {MAX_ROW_ID}")
    runtime = request.app.state.runtime
    rows = await anyio.to_thread.run_sync(partial(admin.handoffs_view, runtime.db, guard, status, limit, before))
    return JSONResponse({"items": rows})


async def close_handoff(request: Request) -> Response:
    guarded = await _guarded_object(request, '{"by": "name", "resolution": "..."}')
    if isinstance(guarded, Response):
        return guarded
    guard, body = guarded
    runtime = request.app.state.runtime
    by, resolution = body.get("by"), body.get("resolution")
    if not isinstance(by, str) or not by.strip():
        return problem(400, "say who closes it: {\"by\": \"name\"}")
    if len(by) > CLOSED_BY_MAX:
        return problem(400, f"by: at most {CLOSED_BY_MAX} characters")
    if resolution is not None and not isinstance(resolution, str):
        return problem(400, "resolution must be a string")
    handoff_id = _path_id(request, "handoff_id")
    if handoff_id is None:
        return problem(404, "no open hand-off with that id in this store")
    closed = await anyio.to_thread.run_sync(partial(admin.close_handoff, runtime.db, guard, handoff_id, by, resolution, runtime.clock()))
    return JSONResponse({"closed": True}) if closed else problem(404, "no open hand-off with that id in this store")


async def report(request: Request) -> Response:
    """The weekly report as JSON (``?week=2026-W47``; default: the last complete week)."""
    from datetime import datetime, timezone

    from connector.reports import build_report, parse_week

    guard = _guard(request)
    if isinstance(guard, Response):
        return guard
    runtime = request.app.state.runtime
    store = runtime.stores_by_key[request.path_params["store_key"]]
    try:
        period = parse_week(request.query_params.get("week"), store.tz, datetime.now(timezone.utc))
    except ValueError as exc:
        return problem(400, str(exc))
    data = await anyio.to_thread.run_sync(partial(build_report, runtime.db, store, guard, period, runtime.clock()))
    return JSONResponse(data)


async def compliance_requests(request: Request) -> Response:
    """Privacy requests answered for this store (newest first), without their exports."""
    from connector.compliance import list_requests

    guard = _guard(request)
    if isinstance(guard, Response):
        return guard
    runtime = request.app.state.runtime
    rows = await anyio.to_thread.run_sync(partial(list_requests, runtime.db, guard))
    return JSONResponse({"items": rows})


async def compliance_request(request: Request) -> Response:
    """One privacy request; a customers/data_request carries the export the merchant owes the customer."""
    from connector.compliance import get_request

    guard = _guard(request)
    if isinstance(guard, Response):
        return guard
    request_id = _path_id(request, "request_id")
    if request_id is None:
        return problem(404, "no such privacy request in this store")
    runtime = request.app.state.runtime
    view = await anyio.to_thread.run_sync(partial(get_request, runtime.db, guard, request_id))
    return JSONResponse(view) if view else problem(404, "no such privacy request in this store")


async def redact_customer(request: Request) -> Response:
    """``POST .../customers/redact``: the store owner erases a customer (WooCommerce has no privacy webhook;
    a customer asks on WhatsApp). Body ``{"phone": ...}``, ``{"email": ...}`` and/or ``{"customer_id": ...}``.
    202 with the inbox row the worker answers, as Shopify's ``customers/redact`` (the answer is listed at
    ``GET .../compliance``; ``matched_nothing``: the identifiers given that match no contact); 200
    ``nothing_stored`` when nothing is stored about the customer; 400 when several identifiers name
    different contacts (a typo in one would erase a second person)."""
    from connector.erasure import BadRequest, found_anything, one_customer, parse_request, preview, submit

    guarded = await _guarded_object(request, '{"phone": "+39 333 123 4567"} or {"email": "..."} or {"customer_id": "123"}')
    if isinstance(guarded, Response):
        return guarded
    store_id, body = guarded
    unknown = sorted(set(body) - {"phone", "email", "customer_id"})
    if unknown:
        return problem(400, f"unknown field(s) {', '.join(unknown)}: give phone, email and/or customer_id")
    runtime = request.app.state.runtime
    key = request.path_params["store_key"]
    store = runtime.stores_by_key[key]
    try:
        wanted = parse_request(store, phone=body.get("phone"), email=body.get("email"), customer_id=body.get("customer_id"))
        unmatched = await anyio.to_thread.run_sync(partial(one_customer, runtime.db, store, store_id, wanted))
    except BadRequest as exc:
        return problem(400, str(exc))
    counts = await anyio.to_thread.run_sync(partial(preview, runtime.db, store, store_id, wanted))
    if not found_anything(counts):
        return JSONResponse({"status": "nothing_stored", "found": counts})
    inbox_id = await anyio.to_thread.run_sync(partial(submit, runtime.db, key, store_id, wanted, "api", counts))
    runtime.wake()
    return JSONResponse({"status": "queued", "inbox_id": inbox_id, "found": counts, "matched_nothing": unmatched,
                         "answer": f"GET /api/stores/{key}/compliance (the request whose inbox_event_id is {inbox_id})"},
                        status_code=202)
