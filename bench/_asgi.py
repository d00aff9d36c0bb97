"""Where a webhook delivery's CPU goes, without a network: the ASGI app called in process.

    .venv/bin/python bench/_asgi.py                 # connector, then the bare app
    .venv/bin/python bench/_asgi.py --requests 5000

bench/ingest.py measures what a user gets (the real `storeloop serve` over 127.0.0.1 against a
bare endpoint), but its ratio moves with the machine and the load generator shares the two
cores. This calls each app's ASGI entry point directly: N distinct, signed 11.6 KB Shopify
orders/create deliveries, C at a time on one uvloop, after an uncounted warm-up. It prints
the process CPU per delivery and, for the connector, the event loop's time in the inbox
writes (InboxWriter.inline_seconds) per row: the figures to compare an optimisation by, in
alternating runs. The connector runs with --no-worker settings on a fresh SQLite file; uvicorn
and the kernel's share of a real request is not in these figures. Not part of `make bench`.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import hashlib
import hmac
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
sys.path[:0] = [str(BENCH.parent), str(BENCH)]

import uvloop  # noqa: E402

import _bare  # noqa: E402
from _load import body_template  # noqa: E402
from connector.config import parse_settings  # noqa: E402
from connector.runtime import tune_gc  # noqa: E402
from connector.web.app import create_app  # noqa: E402

SECRET = "bench-asgi-secret"
SHOP = "bench.myshopify.com"


def deliveries(n: int, tag: str) -> list[tuple[list[tuple[bytes, bytes]], bytes]]:
    parts = body_template()
    out = []
    for i in range(n):
        body = str(900_000_000_000 + i).encode().join(parts)
        sig = base64.b64encode(hmac.new(SECRET.encode(), body, hashlib.sha256).digest())
        headers = [(b"host", b"127.0.0.1"), (b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                   (b"x-shopify-topic", b"orders/create"), (b"x-shopify-hmac-sha256", sig), (b"x-shopify-shop-domain", SHOP.encode()),
                   (b"x-shopify-api-version", b"2026-07"), (b"x-shopify-webhook-id", f"{tag}-w{i}".encode()),
                   (b"x-shopify-event-id", f"{tag}-{i}".encode()), (b"x-shopify-triggered-at", b"2026-11-20T10:00:00.000000Z")]
        out.append((headers, body))
    return out


async def drive(app: Any, todo: list[tuple[list[tuple[bytes, bytes]], bytes]], concurrency: int) -> dict[int, int]:
    statuses: dict[int, int] = {}

    async def one(headers: list[tuple[bytes, bytes]], body: bytes) -> None:
        scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST", "scheme": "http",
                 "path": "/webhooks/shopify", "raw_path": b"/webhooks/shopify", "query_string": b"", "root_path": "",
                 "headers": headers, "client": ("127.0.0.1", 1), "server": ("127.0.0.1", 8000)}
        sent = False

        async def receive() -> dict[str, Any]:
            nonlocal sent
            if sent:
                return {"type": "http.disconnect"}
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}

        async def send(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                statuses[message["status"]] = statuses.get(message["status"], 0) + 1

        await app(scope, receive, send)

    queue = iter(todo)

    async def connection() -> None:
        for headers, body in queue:
            await one(headers, body)

    await asyncio.gather(*(connection() for _ in range(concurrency)))
    return statuses


async def measure(target: str, requests: int, concurrency: int, journal: str = "burst") -> str:
    with tempfile.TemporaryDirectory(prefix="storeloop-asgi-") as tmp:
        runtime = None
        if target == "bare":
            app: Any = _bare.app
        else:
            settings = parse_settings({"server": {"log_level": "warning"}, "database": {"url": f"sqlite:///{tmp}/asgi.db", "ingest_journal": journal},
                                       "stores": [{"key": "bench", "platform": "shopify", "shop_domain": SHOP,
                                                   "webhook_secret": SECRET}]}, environ={})
            app = create_app(settings, run_worker=False)
            lifespan = app.router.lifespan_context(app)
            await lifespan.__aenter__()
            runtime = app.state.runtime
        tune_gc()
        await drive(app, deliveries(500, "warm"), concurrency)
        todo = deliveries(requests, "run")
        if runtime is not None:
            w = runtime.writer
            while w.journal_pending():  # the warm-up's own import is not this run's
                await asyncio.sleep(0.01)
            w.inline_seconds, w.inline_batches, w.batches, w.rows, w.journaled_rows = 0.0, 0, 0, 0, 0
        cpu0, t0 = time.process_time(), time.perf_counter()
        statuses = await drive(app, todo, concurrency)
        cpu, wall = time.process_time() - cpu0, time.perf_counter() - t0
        line = (f"{target:9} {requests / wall:>8,.0f} deliveries/s, CPU {cpu / requests * 1e6:6.1f} us per delivery, "
                f"answers {statuses}")
        if runtime is not None:
            w = runtime.writer
            line += (f"; inbox writes on the loop {w.inline_seconds / max(w.rows - w.journaled_rows, 1) * 1e6:.1f} us per row "
                     f"({w.inline_batches} of {w.batches} batches, {w.rows / max(w.batches, 1):.0f} rows each)")
            if w.journaled_rows:  # a burst acknowledged from the ingest journal: its import's cost too
                cpu0, t0 = time.process_time(), time.perf_counter()
                while w.journal_pending():
                    await asyncio.sleep(0.01)
                line += (f"; {w.journaled_rows:,} journaled, imported after in {time.perf_counter() - t0:.2f} s at "
                         f"{(time.process_time() - cpu0) / w.journaled_rows * 1e6:.1f} us CPU per row")
            await lifespan.__aexit__(None, None, None)
        return line


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=20_000)
    ap.add_argument("--concurrency", type=int, default=64, help="deliveries in flight, like bench/ingest.py's connections")
    ap.add_argument("--target", choices=["both", "connector", "bare"], default="both")
    ap.add_argument("--journal", choices=["burst", "always", "off"], default="burst", help="the connector's database.ingest_journal")
    args = ap.parse_args()
    uvloop.install()
    for target in (["connector", "bare"] if args.target == "both" else [args.target]):
        print(asyncio.run(measure(target, args.requests, args.concurrency, args.journal)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
