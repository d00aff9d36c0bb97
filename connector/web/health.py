"""Liveness and readiness for load balancers and orchestrators."""

from __future__ import annotations

import anyio.to_thread
from sqlalchemy import text
from starlette.requests import Request
from starlette.responses import JSONResponse


async def healthz(request: Request) -> JSONResponse:
    return JSONResponse({"status": "ok"})


def _ping(runtime) -> None:  # type: ignore[no-untyped-def]
    with runtime.db.engine.connect() as conn:
        conn.execute(text("SELECT 1"))


async def readyz(request: Request) -> JSONResponse:
    runtime = request.app.state.runtime
    try:
        await anyio.to_thread.run_sync(_ping, runtime)
    except Exception as exc:
        return JSONResponse({"status": "unavailable", "database": exc.__class__.__name__}, status_code=503)
    return JSONResponse({"status": "ready", "database": "reachable"})
