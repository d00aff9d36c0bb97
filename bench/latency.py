"""COD order webhook -> WhatsApp send call: end-to-end latency through the real server.

`storeloop serve` runs in its own process (SQLite, uvicorn, the inbox processor and the
dispatcher on their default tick, a live WhatsApp client) against the sandbox Cloud API in
this process on 127.0.0.1. The bench posts signed COD `orders/create` webhooks at a steady
rate and times each from the moment its POST starts to the moment the sandbox receives the
COD confirmation ask for that customer (both on this process's monotonic clock).

    .venv/bin/python bench/latency.py [--orders 300] [--rate 30]

Target (issue #8): p95 under 2 s with the default tick. Exit 1 if an ask is missing or sent twice.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import hmac
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from datetime import datetime, timezone
from pathlib import Path

import httpx
from rich.console import Console
from rich.table import Table

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
sys.path[:0] = [str(ROOT), str(BENCH)]

from _pipeline_data import SHOP, DayBuilder  # noqa: E402
from _summary import process_peak_mb, record  # noqa: E402

from connector.sandbox.whatsapp import SandboxServer, SandboxWhatsApp  # noqa: E402
from tests.helpers import cod_store_toml, stop_process  # noqa: E402  (shared with tests/faults/test_kill_between_send_and_record.py)

console = Console()
if console.width < 132:  # pipes and CI default to 80 columns: keep the table on one line per row
    console = Console(width=132)
SECRET = "bench-latency-secret"
PHONE_ID = "106540352242922"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _config(path: Path, port: int, db: Path, wa_url: str) -> None:
    path.write_text(f"""
[server]
host = "127.0.0.1"
port = {port}
log_level = "warning"

[database]
url = "sqlite:///{db}"

[whatsapp]
access_token = "sandbox-token"
graph_base_url = "{wa_url}"
pair_spacing_seconds = 0

""" + cod_store_toml("bench", SHOP, SECRET, PHONE_ID))


def _headers(body: bytes, n: int) -> dict[str, str]:
    sig = base64.b64encode(hmac.new(SECRET.encode(), body, hashlib.sha256).digest()).decode()
    return {"Content-Type": "application/json", "X-Shopify-Topic": "orders/create", "X-Shopify-Hmac-Sha256": sig,
            "X-Shopify-Shop-Domain": SHOP, "X-Shopify-Event-Id": f"lat-{n}", "X-Shopify-Webhook-Id": f"wh-{n}",
            "X-Shopify-API-Version": "2026-07"}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--orders", type=int, default=300)
    ap.add_argument("--rate", type=float, default=30.0, help="COD order webhooks per second")
    args = ap.parse_args()

    fake = SandboxWhatsApp()
    builder = DayBuilder(seed=7)
    server_peak: float | None = None
    with tempfile.TemporaryDirectory(prefix="storeloop-latency-") as tmp, SandboxServer(fake.app) as sandbox:
        port = _free_port()
        config = Path(tmp) / "storeloop.toml"
        _config(config, port, Path(tmp) / "latency.db", sandbox.url)
        log = (Path(tmp) / "serve.log").open("w")
        proc = subprocess.Popen([sys.executable, "-m", "connector", "serve", "--config", str(config)], cwd=ROOT, stdout=log,
                                stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"})
        base = f"http://127.0.0.1:{port}"
        try:
            with httpx.Client(base_url=base, timeout=10) as client:
                deadline = time.monotonic() + 30
                while True:
                    try:
                        if client.get("/readyz").status_code == 200:
                            break
                    except httpx.TransportError:
                        pass
                    if time.monotonic() > deadline or proc.poll() is not None:
                        console.print(f"[red]the server did not start; see {log.name}[/]")
                        return 1
                    time.sleep(0.05)
                posted: dict[str, float] = {}  # E.164 -> when its POST started
                bodies = []
                for n in range(args.orders):
                    buyer = builder.buyer()
                    order = builder.order(n, datetime.now(timezone.utc), buyer, cod=True, checkout_token=None, accepts=False)
                    digits = "".join(ch for ch in buyer.phone if ch.isdigit())[-10:]
                    bodies.append((n, "+91" + digits, json.dumps(order).encode()))
                started = time.monotonic()
                for i, (n, phone, body) in enumerate(bodies):
                    wait = started + i / args.rate - time.monotonic()
                    if wait > 0:
                        time.sleep(wait)
                    posted[phone] = time.monotonic()
                    if client.post("/webhooks/shopify", content=body, headers=_headers(body, n)).status_code != 200:
                        console.print("[red]a webhook was refused[/]")
                        return 1
                deadline = time.monotonic() + 60
                while len(fake.accepted()) < args.orders and time.monotonic() < deadline:
                    time.sleep(0.05)
                server_peak = process_peak_mb(proc.pid)  # the server's own peak RSS, while it still runs
        finally:
            stop_process(proc, grace=15)
            log.close()
    first: dict[str, float] = {}
    sends: dict[str, int] = {}
    for call in fake.accepted():
        to = "+" + call.to.lstrip("+")
        sends[to] = sends.get(to, 0) + 1
        first.setdefault(to, call.at)
    latencies = sorted(first[p] - t for p, t in posted.items() if p in first)
    missing, twice = len(posted) - len(latencies), sum(1 for n in sends.values() if n > 1)
    if not latencies:
        console.print("[red]no ask reached the sandbox[/]")
        return 1
    p50 = statistics.median(latencies)
    p95 = latencies[min(len(latencies) - 1, int(len(latencies) * 0.95))]
    table = Table(title=f"COD order webhook -> WhatsApp send call ({args.orders} orders at {args.rate:g}/s, `storeloop serve`, SQLite)")
    for col in ("orders", "asks sent", "missing", "sent twice", "p50 ms", "p95 ms", "max ms", "target p95", "serve peak MB"):
        table.add_column(col, justify="right")
    ok = p95 < 2.0 and not missing and not twice
    table.add_row(str(args.orders), str(len(latencies)), str(missing), str(twice), f"{p50 * 1000:.0f}", f"{p95 * 1000:.0f}",
                  f"{latencies[-1] * 1000:.0f}", f"[{'green' if p95 < 2 else 'red'}]< 2,000[/]",
                  "-" if server_peak is None else f"{server_peak:.0f}")
    console.print(table)
    record("latency", f"COD order webhook -> WhatsApp send call, p50 / p95 ({args.orders} orders at {args.rate:g}/s)",
           f"{p50 * 1000:.0f} / {p95 * 1000:.0f} ms", "p95 < 2 s, none missing or twice", ok, server_peak, in_process=False,
           peak_of="serve" if server_peak is not None else None)
    return 0 if not missing and not twice else 1


if __name__ == "__main__":
    sys.exit(main())
