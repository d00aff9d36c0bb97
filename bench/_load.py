"""Load generator for bench/ingest.py, run as its own process (never in the server's).

Builds every request up front (distinct, correctly signed Shopify ``orders/create``
webhooks from the real sample payload), then drives them over raw asyncio sockets:
HTTP/1.1 keep-alive, C concurrent connections, one request in flight per connection.
A warm-up phase runs first and is not counted. Prints one JSON line with the results.

    python bench/_load.py --port 8080 --requests 20000 --connections 64 --secret s --tag run1
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import hashlib
import hmac
import json
import sys
import time
from pathlib import Path

SAMPLE = Path(__file__).resolve().parents[2] / "shared/fixtures/public/shopify/orders_create.sample.json"
TOPIC = "orders/create"
HOST = "127.0.0.1"  # the only target this script ever talks to
_ID = 777000000000000777  # placeholders in the JSON template, replaced per request
_NUM = 777000777


def body_template() -> tuple[bytes, ...]:
    """The sample order serialised once, split around the per-request fields."""
    payload = json.loads(SAMPLE.read_text())
    payload["id"] = _ID
    payload["admin_graphql_api_id"] = f"gid://shopify/Order/{_ID}"
    payload["order_number"] = _NUM
    payload["name"] = f"#{_NUM}"
    return tuple(json.dumps(payload).encode().split(str(_ID).encode()))


def build_requests(port: int, n: int, secret: str, shop: str, tag: str, first_id: int) -> list[bytes]:
    """n complete HTTP requests: unique order id, event id and webhook id, each body signed."""
    parts = body_template()
    key = secret.encode()
    out: list[bytes] = []
    for i in range(n):
        oid = first_id + i
        body = str(oid).encode().join(parts).replace(str(_NUM).encode(), str(oid % 10**9).encode())
        sig = base64.b64encode(hmac.new(key, body, hashlib.sha256).digest()).decode()
        head = (
            f"POST /webhooks/shopify HTTP/1.1\r\n"
            f"Host: {HOST}:{port}\r\n"
            f"Content-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n"
            f"X-Shopify-Topic: {TOPIC}\r\n"
            f"X-Shopify-Hmac-Sha256: {sig}\r\n"
            f"X-Shopify-Shop-Domain: {shop}\r\n"
            f"X-Shopify-API-Version: 2026-07\r\n"
            f"X-Shopify-Webhook-Id: {tag}-wh-{i}\r\n"
            f"X-Shopify-Event-Id: {tag}-{i}\r\n"
            f"X-Shopify-Triggered-At: 2026-11-20T10:00:00.000000Z\r\n"
            f"\r\n"
        )
        out.append(head.encode() + body)
    return out


async def read_response(reader: asyncio.StreamReader) -> tuple[int, bytes, bool]:
    """Status code, body (by Content-Length) and whether the server will close the connection."""
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ", 2)[1])
    length, close = None, False
    for line in lines[1:]:
        name, _, value = line.partition(":")
        name = name.strip().lower()
        if name == "content-length":
            length = int(value.strip())
        elif name == "connection" and value.strip().lower() == "close":
            close = True
    if length is None:
        raise ValueError("response without Content-Length")
    body = await reader.readexactly(length) if length else b""
    return status, body, close


async def run_phase(port: int, reqs: list[bytes], conns: int, time_limit: float) -> dict:
    """Send every request once over `conns` keep-alive connections; stop at the time limit."""
    next_i = iter(range(len(reqs)))
    latencies: list[float] = []
    statuses: dict[int, int] = {}
    stats = {"sent": 0, "errors": 0}
    samples: dict[int, str] = {}
    deadline = time.perf_counter() + time_limit

    async def connection() -> None:
        reader = writer = None
        try:
            for i in next_i:
                if time.perf_counter() > deadline:
                    return
                if writer is None:
                    reader, writer = await asyncio.open_connection(HOST, port)
                t0 = time.perf_counter()
                stats["sent"] += 1
                try:
                    writer.write(reqs[i])
                    status, body, close = await read_response(reader)
                except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError):
                    stats["errors"] += 1
                    writer.close()
                    reader = writer = None
                    continue
                latencies.append(time.perf_counter() - t0)
                statuses[status] = statuses.get(status, 0) + 1
                if not 200 <= status < 300 and status not in samples:
                    samples[status] = body[:200].decode("utf-8", "replace")
                if close:
                    writer.close()
                    reader = writer = None
        finally:
            if writer is not None:
                writer.close()

    start = time.perf_counter()
    tasks = [asyncio.ensure_future(connection()) for _ in range(conns)]
    _, pending = await asyncio.wait(tasks, timeout=time_limit + 1)
    for t in pending:  # a request still in flight at the hard limit: abandoned, not counted
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    elapsed = time.perf_counter() - start
    for t in tasks:
        if not t.cancelled() and t.exception() is not None:  # e.g. connection refused
            stats["errors"] += 1
            samples.setdefault(0, repr(t.exception()))
    latencies.sort()

    def pct(p: float) -> float | None:
        return latencies[min(len(latencies) - 1, int(p / 100 * len(latencies)))] * 1000 if latencies else None

    done = len(latencies)
    ok = sum(v for k, v in statuses.items() if 200 <= k < 300)
    return {
        "requests": len(reqs),
        "sent": stats["sent"],
        "completed": done,
        "ok": ok,
        "non2xx": done - ok,
        "errors": stats["errors"],
        "unsent": len(reqs) - stats["sent"],
        "abandoned": stats["sent"] - done - stats["errors"],  # in flight at the hard time limit
        "statuses": {str(k): v for k, v in sorted(statuses.items())},
        "samples": {str(k): v for k, v in samples.items()},
        "elapsed_s": elapsed,
        "rps": done / elapsed if elapsed else 0.0,
        "ok_rps": ok / elapsed if elapsed else 0.0,
        "p50_ms": pct(50),
        "p90_ms": pct(90),
        "p99_ms": pct(99),
        "max_ms": latencies[-1] * 1000 if latencies else None,
        "timed_out": bool(pending) or stats["sent"] < len(reqs),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--requests", type=int, default=20000)
    ap.add_argument("--connections", type=int, default=64)
    ap.add_argument("--warmup", type=int, default=500)
    ap.add_argument("--secret", required=True)
    ap.add_argument("--shop", default="bench.myshopify.com")
    ap.add_argument("--tag", required=True, help="prefix of event ids (warm-up uses TAG-warm)")
    ap.add_argument("--time-limit", type=float, default=120.0, help="seconds, for the measured phase")
    args = ap.parse_args()
    try:
        import uvloop

        uvloop.install()
    except ImportError:  # pragma: no cover - plain asyncio still works
        pass
    t0 = time.perf_counter()
    warm = build_requests(args.port, args.warmup, args.secret, args.shop, f"{args.tag}-warm", 5_000_000_000_000)
    reqs = build_requests(args.port, args.requests, args.secret, args.shop, args.tag, 6_000_000_000_000)
    build_s = time.perf_counter() - t0
    warm_res = asyncio.run(run_phase(args.port, warm, args.connections, 30.0)) if warm else None
    res = asyncio.run(run_phase(args.port, reqs, args.connections, args.time_limit))
    res.update(
        connections=args.connections,
        build_s=build_s,
        body_bytes=len(reqs[0].split(b"\r\n\r\n", 1)[1]) if reqs else 0,
        warmup={k: warm_res[k] for k in ("requests", "ok", "non2xx", "errors")} if warm_res else None,
    )
    json.dump(res, sys.stdout)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
