"""Baseline for bench/ingest.py: a bare Starlette app that reads the body and answers 200.

Served by uvicorn on the same stack as the connector (uvloop + httptools, one worker):
    python -m uvicorn --app-dir bench _bare:app --loop uvloop --http httptools
"""

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route


async def ok(request: Request) -> Response:
    await request.body()  # consume the upload like the real endpoint does
    return Response(status_code=200)


app = Starlette(routes=[Route("/{path:path}", ok, methods=["GET", "POST"])])
