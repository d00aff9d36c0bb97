"""Liveness and readiness for load balancers and orchestrators.

/readyz also says whether a dispatcher paused WhatsApp sends (an expired token, a missing
permission, payment, a block: connector/outbox/dispatcher.py; Meta restricting or disabling the
account: connector/number_health.py) and for how many stores, still with
200: the connector takes webhooks all the same, and its messages wait for the account to be fixed.
A pause over Meta's API call rate limit is counted apart (``rate_limited``): nothing to fix, the
messages wait for Meta's window to close.
It names no store and no code: it answers anyone, and in an agency deployment one brand's trouble is
not another's business. Which store and why are in the error log and on that store's dashboard.
"""

from __future__ import annotations

from typing import Any

import anyio.to_thread
from sqlalchemy import select, text
from starlette.requests import Request
from starlette.responses import JSONResponse

from connector.outbox import store as ob
from connector.storage.sql import STORES


async def healthz(request: Request) -> JSONResponse:
    return JSONResponse({"status": "ok"})


def _ping(runtime) -> None:  # type: ignore[no-untyped-def]
    with runtime.db.engine.connect() as conn:
        conn.execute(text("SELECT 1"))


def _paused(runtime) -> tuple[int, int]:  # type: ignore[no-untyped-def]
    """How many configured stores have a number a dispatcher paused, or sends held while Meta
    restricts or disables their account (``stores.whatsapp_held_until``); and how many others wait
    out Meta's API call rate limit."""
    pauses = ob.paused_numbers(runtime.db, runtime.clock())  # a pause past its end with nothing to send is over
    with runtime.db.engine.connect() as conn:
        held = {r.id for r in conn.execute(select(STORES.c.id).where(STORES.c.whatsapp_held_until > runtime.clock()))}
    paused = rate_limited = 0
    for store in runtime.settings.stores:
        pause = pauses.get(store.whatsapp_phone_number_id or "")
        if runtime.store_ids.get(store.key) in held or (pause is not None and not pause.rate_limit):
            paused += 1
        elif pause is not None:
            rate_limited += 1
    return paused, rate_limited


async def readyz(request: Request) -> JSONResponse:
    runtime = request.app.state.runtime
    try:
        await anyio.to_thread.run_sync(_ping, runtime)
    except Exception as exc:
        return JSONResponse({"status": "unavailable", "database": exc.__class__.__name__}, status_code=503)
    body: dict[str, Any] = {"status": "ready", "database": "reachable"}
    try:
        paused, rate_limited = await anyio.to_thread.run_sync(_paused, runtime)
    except Exception:  # readiness is the database's; the pauses are news
        body["whatsapp"] = "unknown"
    else:
        body["whatsapp"] = "paused" if paused else "rate_limited" if rate_limited else "sending"
        if paused:
            body["whatsapp_paused_stores"] = paused
        if rate_limited:
            body["whatsapp_rate_limited_stores"] = rate_limited
    return JSONResponse(body)
