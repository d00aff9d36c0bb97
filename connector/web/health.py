"""Liveness and readiness for load balancers and orchestrators.

/readyz also lists the stores whose WhatsApp sends a dispatcher paused (an expired token, a
missing permission, payment, a block: connector/outbox/dispatcher.py), still with 200: the
connector takes webhooks all the same, and its messages wait for the account to be fixed.
"""

from __future__ import annotations

from typing import Any

import anyio.to_thread
from sqlalchemy import text
from starlette.requests import Request
from starlette.responses import JSONResponse

from adapters.whatsapp.errors import describe
from connector.outbox import store as ob


async def healthz(request: Request) -> JSONResponse:
    return JSONResponse({"status": "ok"})


def _ping(runtime) -> None:  # type: ignore[no-untyped-def]
    with runtime.db.engine.connect() as conn:
        conn.execute(text("SELECT 1"))


def _paused(runtime) -> list[dict[str, Any]]:  # type: ignore[no-untyped-def]
    """The configured stores whose number a dispatcher paused, with Meta's code and the next try."""
    paused = ob.paused_numbers(runtime.db)
    out = []
    for store in runtime.settings.stores:
        if store.whatsapp_phone_number_id in paused:
            code, next_try = paused[store.whatsapp_phone_number_id]
            out.append({"store": store.key, "code": code, "reason": describe(code), "next_try_at": next_try.isoformat()})
    return out


async def readyz(request: Request) -> JSONResponse:
    runtime = request.app.state.runtime
    try:
        await anyio.to_thread.run_sync(_ping, runtime)
    except Exception as exc:
        return JSONResponse({"status": "unavailable", "database": exc.__class__.__name__}, status_code=503)
    body: dict[str, Any] = {"status": "ready", "database": "reachable"}
    try:
        paused = await anyio.to_thread.run_sync(_paused, runtime)
    except Exception:  # readiness is the database's; the pauses are news
        body["whatsapp"] = "unknown"
    else:
        body["whatsapp"] = "paused" if paused else "sending"
        if paused:
            body["whatsapp_paused"] = paused
    return JSONResponse(body)
