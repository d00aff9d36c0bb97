"""The server is killed with SIGKILL in the middle of a webhook burst: every delivery that got
a 2xx is in the inbox after the restart, and processing resumes (issue 8's first fault test).

Run with each ``database.ingest_journal`` mode: "off" (every 2xx is already an inbox row when
the process dies), "always" (every batch goes through the journal; what was not imported yet
is imported by the restart before it answers /readyz) and the default "burst" (the journal
if these eight senders make a burst of it)."""

from __future__ import annotations

import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import httpx
import pytest

from tests.conftest import FIXTURES
from tests.helpers import shopify_headers

ROOT = Path(__file__).resolve().parents[2]
SECRET = "kill-test-secret"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_until(predicate, timeout: float, interval: float = 0.05) -> bool:  # type: ignore[no-untyped-def]
    """Poll a condition (an Event's timed wait, not a sleep) until it holds or time runs out."""
    pause = threading.Event()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        pause.wait(interval)
    return predicate()


def _ready(port: int) -> bool:
    try:
        return httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


def _serve(config: Path, port: int, log: Path | None = None) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    out = open(log, "ab") if log is not None else subprocess.DEVNULL  # noqa: SIM115 (the child holds it)
    proc = subprocess.Popen([sys.executable, "-m", "connector", "serve", "--config", str(config), "--port", str(port)],
                            cwd=ROOT, env=env, stdout=out, stderr=out)
    if log is not None:
        out.close()
    if _wait_until(lambda: _ready(port), timeout=30, interval=0.1):
        return proc
    proc.kill()
    raise RuntimeError("server did not start")


def _assert_stored(db: Path, acknowledged: list[str]) -> set[str]:
    with sqlite3.connect(db) as conn:
        stored = {row[0] for row in conn.execute("SELECT dedupe_key FROM inbox_events")}
        with_body = {row[0] for row in conn.execute("SELECT e.dedupe_key FROM inbox_events e JOIN inbox_bodies b ON b.id = e.id")}
    missing = [k for k in acknowledged if k not in with_body]
    assert missing == [], f"{len(missing)} acknowledged deliveries are not in the inbox with their body"
    assert with_body == stored  # a row is never committed without its body
    return stored


@pytest.mark.parametrize("journal", ["off", "always", "burst"])
def test_every_acknowledged_webhook_survives_sigkill(tmp_path: Path, journal: str) -> None:
    db = tmp_path / "kill.db"
    config = tmp_path / "c.toml"
    config.write_text(
        f'[server]\nlog_level = "info"\n[database]\nurl = "sqlite:///{db}"\ningest_journal = "{journal}"\n'
        f'[[stores]]\nkey = "k"\nplatform = "shopify"\nshop_domain = "kill.myshopify.com"\nwebhook_secret = "{SECRET}"\n'
    )
    template = json.loads((FIXTURES / "shopify" / "orders_create.sample.json").read_text())
    port = _free_port()
    log = tmp_path / "serve.log"
    server = _serve(config, port, log)
    acknowledged: list[str] = []
    lock = threading.Condition()
    stop = threading.Event()

    def sender(lane: int) -> None:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=5) as client:
            for n in range(2000):  # bounded; the kill comes long before the end
                if stop.is_set():
                    return
                event = str(uuid.uuid4())
                body = json.dumps({**template, "id": lane * 100_000 + n}).encode()
                try:
                    resp = client.post("/webhooks/shopify", content=body,
                                       headers=shopify_headers(body, SECRET, "kill.myshopify.com", "orders/create", event_id=event))
                except httpx.HTTPError:
                    return  # the server is gone
                if resp.status_code == 200:
                    with lock:
                        acknowledged.append(f"shopify:orders/create:event:{event}")
                        lock.notify_all()

    threads = [threading.Thread(target=sender, args=(lane,)) for lane in range(8)]
    for t in threads:
        t.start()
    with lock:  # kill the server once 300 deliveries have been acknowledged
        lock.wait_for(lambda: len(acknowledged) >= 300, timeout=20)
    os.kill(server.pid, signal.SIGKILL)
    server.wait(timeout=10)
    stop.set()
    for t in threads:
        t.join(timeout=10)
    assert len(acknowledged) >= 300, "the burst never got going"
    journaled = "burst: webhooks acknowledged from the ingest journal" in log.read_text()
    if journal == "always":  # the journal was written (whatever was not imported yet is still in it)
        assert journaled and list(tmp_path.glob("kill.db-ingest-*.journal"))
    if journal == "off":
        assert not journaled and list(tmp_path.glob("kill.db-ingest-*")) == []
        _assert_stored(db, acknowledged)

    server = _serve(config, port)  # restart: the journal is imported first, then the backlog is processed
    try:
        stored = _assert_stored(db, acknowledged)
        assert list(tmp_path.glob("kill.db-ingest-*.journal")) == []  # imported and deleted
        def backlog() -> int:
            with sqlite3.connect(db) as conn:
                return conn.execute("SELECT count(*) FROM inbox_events WHERE status = 'pending'").fetchone()[0]

        assert _wait_until(lambda: backlog() == 0, timeout=60, interval=0.2), f"{backlog()} rows still pending"
        with sqlite3.connect(db) as conn:
            orders = conn.execute("SELECT count(*) FROM orders").fetchone()[0]
        assert orders == len(stored)  # one order per stored delivery (each has its own order id)
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=20)
