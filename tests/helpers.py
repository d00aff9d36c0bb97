"""Sign payloads the way each platform does, and run the app over HTTP."""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
import json
import os
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

from sqlalchemy import select
from starlette.testclient import TestClient

from connector.config import Settings
from connector.runtime import Runtime
from connector.sandbox.seed import TEMPLATE
from connector.storage.db import Database
from connector.storage.inbox import sync_stores, with_body
from connector.storage.models import InboxEvent
from connector.sync import BACKFILL_CURSOR, upsert_cursor
from connector.web.app import create_app

ROOT = Path(__file__).resolve().parents[1]


def shopify_signature(body: bytes, secret: str) -> str:
    return base64.b64encode(hmac.new(secret.encode(), body, hashlib.sha256).digest()).decode()


def woo_signature(body: bytes, secret: str) -> str:
    return base64.b64encode(hmac.new(secret.encode(), body, hashlib.sha256).digest()).decode()


def meta_signature(body: bytes, secret: str) -> str:
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def shopify_headers(body: bytes, secret: str, shop: str, topic: str, *, event_id: str | None = None, webhook_id: str | None = None) -> dict[str, str]:
    return {
        "Content-Type": "application/json",
        "X-Shopify-Topic": topic,
        "X-Shopify-Hmac-Sha256": shopify_signature(body, secret),
        "X-Shopify-Shop-Domain": shop,
        "X-Shopify-API-Version": "2026-07",
        "X-Shopify-Webhook-Id": webhook_id or str(uuid.uuid4()),
        "X-Shopify-Event-Id": event_id or str(uuid.uuid4()),
        "X-Shopify-Triggered-At": "2026-11-20T10:00:00.000000Z",
    }


def woo_headers(body: bytes, secret: str, topic: str, *, webhook_id: int = 7) -> dict[str, str]:
    resource, _, event = topic.partition(".")
    return {
        "Content-Type": "application/json",
        "X-WC-Webhook-Source": "https://bloom.example/",
        "X-WC-Webhook-Topic": topic,
        "X-WC-Webhook-Resource": resource,
        "X-WC-Webhook-Event": event,
        "X-WC-Webhook-Signature": woo_signature(body, secret),
        "X-WC-Webhook-ID": str(webhook_id),
        "X-WC-Webhook-Delivery-ID": "b4c1d0f1e2",
    }


def load_json(path: Path) -> Any:
    return json.loads(path.read_text())


def dumps(payload: Any) -> bytes:
    return json.dumps(payload).encode()


@contextlib.contextmanager
def running_app(settings: Settings, *, run_worker: bool = False, root_path: str = "",
                clock: Callable[[], datetime] | None = None) -> Iterator[tuple[TestClient, Runtime]]:
    """The real app with its lifespan; the processor is driven by the test unless run_worker.

    ``root_path``: served under a path prefix, as behind a reverse proxy (ASGI root_path).
    ``clock``: the runtime's clock from the start (its processor's and dispatcher's too).
    """
    runtime = Runtime(settings, Database.from_url(settings.database.url), run_worker=run_worker,
                      **({"clock": clock} if clock is not None else {}))
    app = create_app(settings, runtime)
    with TestClient(app, raise_server_exceptions=True, root_path=root_path) as client:
        yield client, runtime


def inbox_bodies(db_url: str, topic: str) -> list[Any]:
    """The stored bodies of the inbox rows of ``topic``, oldest first, read through a connection of its own."""
    db = Database.from_url(db_url)
    try:
        with db.engine.connect() as conn:
            bodies = [r.raw_body for r in conn.execute(with_body().where(InboxEvent.topic == topic).order_by(InboxEvent.id))]
    finally:
        db.dispose()
    return [json.loads(b) for b in bodies]


def mark_backfilled(db_url: str, key: str, platform: str, until: str) -> None:
    """As if ``storeloop sync --store KEY --backfill`` had run to its end: the store's backfill cursor is at ``until``."""
    db = Database.from_url(db_url)
    try:
        upsert_cursor(db, sync_stores(db, [(key, platform)])[key], BACKFILL_CURSOR, until)
    finally:
        db.dispose()


def cod_store_toml(key: str, shop_domain: str, webhook_secret: str, phone_number_id: str) -> str:
    """A ``[[stores]]`` table (TOML) for a Shopify store in Asia/Kolkata, no quiet hours, running the COD
    confirmation journey with the sandbox's ask template (connector/sandbox/seed.py ``TEMPLATE``)."""
    buttons = ", ".join(f'{{ type = "quick_reply", text = "{b["text"]}", payload = "{b["payload"]}" }}' for b in TEMPLATE["buttons"])
    body = ", ".join(f'"{b}"' for b in TEMPLATE["body"])
    return f"""[[stores]]
key = "{key}"
platform = "shopify"
shop_domain = "{shop_domain}"
webhook_secret = "{webhook_secret}"
timezone = "Asia/Kolkata"
default_country = "IN"
whatsapp_phone_number_id = "{phone_number_id}"
policy = {{ quiet_hours = "" }}

[[stores.templates]]
step = "{TEMPLATE['step']}"
name = "{TEMPLATE['name']}"
category = "{TEMPLATE['category']}"
language = "{TEMPLATE['language']}"
body_text = "{TEMPLATE['body_text']}"
body = [{body}]
buttons = [{buttons}]

[stores.journeys.cod_confirmation]
"""


def stop_process(proc: subprocess.Popen, grace: float = 10.0) -> None:
    """Stop a child server: SIGTERM, up to ``grace`` seconds to exit, then SIGKILL; reaped either way."""
    if proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=5)


def wait_until(condition: Callable[[], bool], timeout: float, what: str, every: float = 0.05) -> None:
    """Wait for something another thread or process makes true (a server up, rows processed).

    Checked every ``every`` seconds on an Event that nothing sets, until ``timeout``: the
    moment is decided by the condition, never by a fixed sleep.
    """
    deadline = time.monotonic() + timeout
    tick = threading.Event()
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        tick.wait(every)


def run_together(cmd: list[str], count: int, timeout: float) -> list[dict[str, Any]]:
    """Start ``count`` copies of a child script, wait until each prints "ready", release them
    at the same moment (a "go" line on stdin), and return the JSON each prints last.

    The children get this checkout on PYTHONPATH; a child that fails fails the test with its stderr.
    """
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    procs = [subprocess.Popen(cmd, cwd=ROOT, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(count)]
    try:
        for p in procs:
            assert p.stdout is not None and p.stdout.readline().strip() == "ready", p.stderr and p.stderr.read()
        for p in procs:  # release all at once
            assert p.stdin is not None
            p.stdin.write("go\n")
            p.stdin.flush()
        deadline = time.monotonic() + timeout
        outputs = [p.communicate(timeout=max(1.0, deadline - time.monotonic())) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    for p, (_out, err) in zip(procs, outputs):
        assert p.returncode == 0, err[-3000:]
    return [json.loads(out.strip().splitlines()[-1]) for out, _ in outputs]
