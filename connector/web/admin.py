"""Admin JSON API behind a bearer token."""

from __future__ import annotations

import hmac
import logging
from functools import partial

import anyio.to_thread
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from connector import admin
from connector.web.auth import LoginLimiter
from connector.web.http import problem

log = logging.getLogger("storeloop.admin")


def _authorized(request: Request) -> bool:
    token = request.app.state.runtime.settings.server.admin_token
    given = request.headers.get("authorization", "")
    if token is None or not token.get_secret_value() or not given.startswith("Bearer "):
        return False
    presented = given.removeprefix("Bearer ").strip()
    return presented.isascii() and hmac.compare_digest(presented, token.get_secret_value())


def _store_id(request: Request) -> int | None:
    return request.app.state.runtime.store_ids.get(request.path_params["store_key"])


def _limiter(request: Request) -> LoginLimiter:
    """Failed bearer attempts per client address (in memory, per process, like the dashboard's)."""
    state = request.app.state
    limiter = getattr(state, "admin_api_limiter", None)
    if limiter is None:
        limiter = state.admin_api_limiter = LoginLimiter()
    return limiter


def _guard(request: Request) -> Response | int:
    client = request.client.host if request.client else "unknown"
    limiter = _limiter(request)
    wait = limiter.retry_after(client)
    if wait:
        log.warning("admin request refused: too many failed attempts", extra={"path": request.url.path, "client": client})
        return problem(429, f"too many failed attempts; try again in {wait} s", headers={"Retry-After": str(wait)})
    if not _authorized(request):
        limiter.failed(client)
        log.warning("admin request without a valid token", extra={"path": request.url.path, "client": client})
        return problem(401, "unauthorized: send Authorization: Bearer <server.admin_token>")
    limiter.succeeded(client)
    store_id = _store_id(request)
    if store_id is None:
        return problem(404, "unknown store")
    return store_id


async def contact(request: Request) -> Response:
    guard = _guard(request)
    if isinstance(guard, Response):
        return guard
    runtime = request.app.state.runtime
    store = runtime.stores_by_key[request.path_params["store_key"]]
    view = await anyio.to_thread.run_sync(
        partial(admin.contact_view, runtime.db, guard, request.path_params["phone"], store.default_country)
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
    runtime = request.app.state.runtime
    rows = await anyio.to_thread.run_sync(partial(admin.inbox_view, runtime.db, guard, status, limit, before))
    return JSONResponse({"items": rows})


async def handoffs(request: Request) -> Response:
    guard = _guard(request)
    if isinstance(guard, Response):
        return guard
    status = request.query_params.get("status")
    if status and status not in ("open", "closed"):
        return problem(400, "status must be open or closed")
    runtime = request.app.state.runtime
    rows = await anyio.to_thread.run_sync(partial(admin.handoffs_view, runtime.db, guard, status))
    return JSONResponse({"items": rows})


async def close_handoff(request: Request) -> Response:
    guard = _guard(request)
    if isinstance(guard, Response):
        return guard
    try:
        handoff_id = int(request.path_params["handoff_id"])
        body = await request.json() if await request.body() else {}
    except ValueError:
        return problem(400, "body must be JSON: {\"by\": \"name\", \"resolution\": \"...\"}")
    if not isinstance(body, dict) or not str(body.get("by") or "").strip():
        return problem(400, "say who closes it: {\"by\": \"name\"}")
    runtime = request.app.state.runtime
    closed = await anyio.to_thread.run_sync(
        partial(admin.close_handoff, runtime.db, guard, handoff_id, str(body["by"]), body.get("resolution")))
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
    data = await anyio.to_thread.run_sync(partial(build_report, runtime.db, store, guard, period))
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
    runtime = request.app.state.runtime
    view = await anyio.to_thread.run_sync(partial(get_request, runtime.db, guard, int(request.path_params["request_id"])))
    return JSONResponse(view) if view else problem(404, "no such privacy request in this store")
