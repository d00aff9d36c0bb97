"""The worker is SIGKILLed between the WhatsApp call and recording its result (issue 8).

A real ``storeloop serve`` process (web server + inbox processor + dispatcher, SQLite, a live
WhatsApp client) sends to a fake Cloud API on 127.0.0.1 in this (the test) process. A signed
COD order webhook makes the connector send its confirmation ask; the fake receives the call,
accepts it (Meta would deliver it) but holds the answer, and while the connector waits for
that answer the test kills the process with SIGKILL: the message went out, and the connector
never learnt it. Then:

1. the connector is started again; once the dead worker's lease runs out (``lease_seconds =
   5``) the row is ``uncertain``: never sent again blindly, the fake still has one call;
2. the restarted worker keeps sending (a second customer's ask goes out and is recorded), and
   the first customer still has exactly one call: nothing resends the uncertain row;
3. Meta's signed status webhooks for that wamid, carrying the row's
   ``biz_opaque_callback_data``, settle it: ``sent``, then ``delivered``, with the wamid the
   fake gave; the customer's timeline (admin API) shows one outbound message, delivered; still
   one call.

Every wait is on a condition, bounded; about 12 s here, at most 30 s.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import httpx
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from connector.sandbox.seed import TEMPLATE
from connector.sandbox.whatsapp import SandboxServer
from tests.conftest import FIXTURES
from tests.helpers import cod_store_toml, load_json, shopify_headers, stop_process, wait_until

ROOT = Path(__file__).resolve().parents[2]
SHOP = "kill-send.myshopify.com"
SECRET = "kill-send-webhook-secret"
APP_SECRET = "kill-send-app-secret"
ADMIN = "kill-send-admin-token"
PHONE_ID = "106540352242922"
FIRST, SECOND = "+919876543210", "+919812345678"
LEASE_SECONDS = 5  # the smallest the config allows: a claimed send not finished by then is "uncertain"
BUDGET = 30.0  # seconds for the whole test


@dataclass
class Call:
    to: str
    callback_data: str | None
    template: str | None
    wamid: str


class HoldingCloudAPI:
    """``POST /{version}/{phone_number_id}/messages``: every call is recorded and accepted (a
    wamid is issued, as Meta does once it has the message); the answer to the first call is
    held until ``release`` is set, so the sender is still waiting for it when it is killed."""

    def __init__(self) -> None:
        self.calls: list[Call] = []
        self.changed = threading.Condition()
        self.release = threading.Event()
        self.app = Starlette(routes=[Route("/{version}/{phone_number_id}/messages", self._messages, methods=["POST"])])

    async def _messages(self, request: Request) -> JSONResponse:
        body = await request.json()
        to = "+" + str(body.get("to", "")).lstrip("+")
        with self.changed:
            n = len(self.calls)
            call = Call(to, body.get("biz_opaque_callback_data"), (body.get("template") or {}).get("name"), f"wamid.HELD{n + 1:04d}")
            self.calls.append(call)
            self.changed.notify_all()
        if n == 0:
            while not self.release.is_set():  # the answer never reaches the killed worker
                await asyncio.sleep(0.05)
        return JSONResponse({"messaging_product": "whatsapp", "contacts": [{"input": to, "wa_id": to.lstrip("+")}],
                             "messages": [{"id": call.wamid}]})

    def calls_to(self, phone: str) -> list[Call]:
        with self.changed:
            return [c for c in self.calls if c.to == phone]

    def wait_for_calls(self, n: int, timeout: float) -> None:
        with self.changed:
            assert self.changed.wait_for(lambda: len(self.calls) >= n, timeout=timeout), f"the fake Cloud API got {self.calls}"


def _config(path: Path, db: Path, api_url: str) -> None:
    path.write_text(f"""
[server]
host = "127.0.0.1"
log_level = "info"
admin_token = "{ADMIN}"

[database]
url = "sqlite:///{db}"

[whatsapp]
access_token = "fake-cloud-api-token"
graph_base_url = "{api_url}"
app_secret = "{APP_SECRET}"
verify_token = "kill-send-verify"
pair_spacing_seconds = 0
lease_seconds = {LEASE_SECONDS}

""" + cod_store_toml("shop", SHOP, SECRET, PHONE_ID))


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Connector:
    """``storeloop serve`` as a child process on a fresh port; its output goes to a log file."""

    def __init__(self, config: Path, log: Path):
        self.port = _free_port()
        self.log = log
        script = Path(sys.executable).with_name("storeloop")
        head = [str(script)] if script.exists() else [sys.executable, "-m", "connector"]
        with log.open("ab") as out:
            self.proc = subprocess.Popen([*head, "serve", "--config", str(config), "--port", str(self.port)], cwd=ROOT,
                                         env={**os.environ, "PYTHONPATH": str(ROOT)}, stdout=out, stderr=subprocess.STDOUT)
        self.client = httpx.Client(base_url=f"http://127.0.0.1:{self.port}", timeout=5)

        def ready() -> bool:
            assert self.proc.poll() is None, f"storeloop serve exited:\n{log.read_text()[-3000:]}"
            with contextlib.suppress(httpx.TransportError):
                return self.client.get("/readyz").status_code == 200
            return False

        wait_until(ready, 20, "storeloop serve to answer /readyz")

    def stop(self) -> None:
        self.client.close()
        stop_process(self.proc)


def _cod_order(order_id: int, phone: str) -> bytes:
    o = load_json(FIXTURES / "shopify" / "orders_create.sample.json")
    now = datetime.now(timezone.utc).isoformat(timespec="seconds")
    o.update(id=order_id, name=f"#{order_id}", admin_graphql_api_id=f"gid://shopify/Order/{order_id}", phone=phone,
             financial_status="pending", payment_gateway_names=["Cash on Delivery (COD)"], cancelled_at=None, cancel_reason=None,
             test=False, created_at=now, updated_at=now)
    o["customer"] = {**o["customer"], "id": order_id + 1, "phone": phone, "admin_graphql_api_id": f"gid://shopify/Customer/{order_id + 1}"}
    return json.dumps(o).encode()


def _post_order(conn: Connector, order_id: int, phone: str) -> None:
    body = _cod_order(order_id, phone)
    r = conn.client.post("/webhooks/shopify", content=body, headers=shopify_headers(body, SECRET, SHOP, "orders/create", event_id=f"ev-{order_id}"))
    assert r.status_code == 200, r.text


def _status_webhook(conn: Connector, call: Call, status: str) -> None:
    envelope = {"object": "whatsapp_business_account", "entry": [{"id": "1", "changes": [{"field": "messages", "value": {
        "messaging_product": "whatsapp", "metadata": {"display_phone_number": "15550000000", "phone_number_id": PHONE_ID},
        "statuses": [{"id": call.wamid, "status": status, "timestamp": str(int(time.time())), "recipient_id": call.to.lstrip("+"),
                      "biz_opaque_callback_data": call.callback_data}]}}]}]}
    raw = json.dumps(envelope).encode()
    sig = "sha256=" + hmac.new(APP_SECRET.encode(), raw, hashlib.sha256).hexdigest()
    r = conn.client.post("/webhooks/whatsapp", content=raw, headers={"X-Hub-Signature-256": sig, "Content-Type": "application/json"})
    assert r.status_code == 200, r.text


def _outbox(db: Path) -> dict[str, dict[str, Any]]:
    """Each WhatsApp outbox row by recipient: status, wamid, attempt outcomes (read-only, as an operator would look)."""
    with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)) as conn:
        rows = conn.execute("SELECT id, status, wamid, payload FROM outbox WHERE channel = 'whatsapp'").fetchall()
        outcomes = conn.execute("SELECT outbox_id, outcome FROM outbox_attempts ORDER BY id").fetchall()
    out: dict[str, dict[str, Any]] = {}
    for oid, status, wamid, payload in rows:
        to = "+" + str(json.loads(payload)["message"]["to"]).lstrip("+")
        out[to] = {"id": oid, "status": status, "wamid": wamid, "outcomes": [o for i, o in outcomes if i == oid]}
    return out


def test_a_worker_killed_between_the_call_and_its_record_never_resends_and_the_status_webhook_settles_it(tmp_path: Path) -> None:
    started = time.monotonic()
    db, config, log = tmp_path / "kill-send.db", tmp_path / "storeloop.toml", tmp_path / "serve.log"
    api = HoldingCloudAPI()
    with SandboxServer(api.app) as sandbox:
        _config(config, db, sandbox.url)
        conn = Connector(config, log)
        try:
            # 1. a COD order: the connector sends the ask; the fake takes it and holds the answer
            _post_order(conn, 5001, FIRST)
            api.wait_for_calls(1, timeout=15)
            [held] = api.calls
            assert (held.to, held.template) == (FIRST, TEMPLATE["name"]) and (held.callback_data or "").startswith("outbox:")
            row = _outbox(db)[FIRST]
            assert row["status"] == "sending" and row["outcomes"] == [], row  # claimed, called, nothing recorded
            os.kill(conn.proc.pid, signal.SIGKILL)  # ...and the worker dies waiting for the answer
            conn.proc.wait(timeout=10)
            conn.client.close()
            assert _outbox(db)[FIRST]["status"] == "sending"

            # 2. restart: once the dead worker's lease is over the row is uncertain, not sent again
            conn = Connector(config, log)
            wait_until(lambda: _outbox(db)[FIRST]["status"] != "sending", LEASE_SECONDS + 10, "the dead worker's lease to expire")
            row = _outbox(db)[FIRST]
            assert row["status"] == "uncertain" and row["outcomes"] == ["uncertain"], row
            assert len(api.calls_to(FIRST)) == 1
            # the restarted worker is sending (another customer's ask goes out and is recorded),
            # and still nothing resends the uncertain one
            _post_order(conn, 5002, SECOND)
            wait_until(lambda: _outbox(db).get(SECOND, {}).get("status") == "sent", 15, "the second customer's ask to be sent and recorded")
            assert len(api.calls_to(SECOND)) == 1
            assert len(api.calls_to(FIRST)) == 1 and _outbox(db)[FIRST]["status"] == "uncertain"

            # 3. Meta's status webhooks carry the row's callback data: they settle it
            _status_webhook(conn, held, "sent")
            wait_until(lambda: _outbox(db)[FIRST]["status"] == "sent", 10, "the 'sent' status to settle the uncertain row")
            _status_webhook(conn, held, "delivered")
            wait_until(lambda: _outbox(db)[FIRST]["status"] == "delivered", 10, "the 'delivered' status to move it on")
            timeline = conn.client.get(f"/api/stores/shop/contacts/{FIRST}", headers={"Authorization": f"Bearer {ADMIN}"}).json()["timeline"]
        finally:
            api.release.set()
            conn.stop()
    row = _outbox(db)[FIRST]
    assert (row["status"], row["wamid"], row["outcomes"]) == ("delivered", held.wamid, ["uncertain"]), row
    sent = [t for t in timeline if t["kind"] == "message" and t["direction"] == "out"]
    assert [(t["wamid"], t["status"]) for t in sent] == [(held.wamid, "delivered")], timeline
    assert len(api.calls_to(FIRST)) == 1 and len(api.calls) == 2, api.calls  # one call per customer, ever
    assert time.monotonic() - started < BUDGET
