"""On PostgreSQL two dispatcher processes draining the same 10,000 due messages send each exactly once.

The sandbox Cloud API runs in this (the test) process; the two dispatchers are separate OS
processes (``sys.executable -c``), each with its own engine, event loop and token bucket,
claiming from the same schema with ``FOR UPDATE SKIP LOCKED``. Both import everything,
report "ready" and wait for one "go" line, so neither can drain the queue before the other
is up.
"""

from __future__ import annotations

import json
import sys
from datetime import datetime, timedelta, timezone

import pytest
from sqlalchemy import func, insert, select, text

from connector.config import parse_settings
from connector.outbox import store as ob
from connector.sandbox.whatsapp import SandboxServer, SandboxWhatsApp
from connector.storage import models as m
from connector.storage.db import Database, make_engine
from connector.storage.inbox import sync_stores
from connector.storage.models import Base
from connector.templates import render
from connector.sandbox.seed import CONTEXT, TEMPLATE, seed_due_messages
from tests.conftest import PG_URL, empty_pg_schema, settings_dict
from tests.helpers import run_together

pytestmark = pytest.mark.postgres

N = 10_000

# What each dispatcher process runs: argv = database URL, settings JSON. It prints one JSON line.
CHILD = r"""
import asyncio, json, sys
from adapters.whatsapp.client import WhatsAppClient
from connector.config import parse_settings
from connector.outbox.dispatcher import Dispatcher
from connector.storage.db import Database
from connector.storage.inbox import sync_stores

url, raw = sys.argv[1], json.loads(sys.argv[2])
settings = parse_settings(raw, environ={})
db = Database.from_url(url)
ids = sync_stores(db, [(s.key, s.platform) for s in settings.stores])

async def main():
    wa = settings.whatsapp
    client = WhatsAppClient(str(wa.graph_base_url), wa.api_version, wa.access_token.get_secret_value())
    try:
        dispatcher = Dispatcher(db, settings, ids, client)
        print("ready", flush=True)
        await asyncio.to_thread(sys.stdin.readline)  # wait for "go"
        claimed = await dispatcher.drain()
        return {"claimed": claimed, "sent": dispatcher.sent}
    finally:
        await client.aclose()

result = asyncio.run(main())
db.dispose()
print(json.dumps(result), flush=True)
"""


@pytest.fixture
def pg_url(pg_schema: str | None) -> str:
    if pg_schema is None:
        pytest.skip(f"PostgreSQL not reachable at {PG_URL} (set STORELOOP_TEST_PG_URL): the two-process dispatch test needs SKIP LOCKED")
    return empty_pg_schema(pg_schema)


def _settings_raw(db_url: str, base_url: str, rate: float = 1000) -> dict:
    raw = settings_dict(db_url)
    raw["whatsapp"].update({
        "access_token": "sandbox-token", "graph_base_url": base_url, "pair_spacing_seconds": 0,
        "messages_per_second": rate,
    })
    raw["stores"][0]["templates"] = [TEMPLATE]
    raw["stores"][0]["policy"] = {"quiet_hours": ""}
    return raw


def _seed(db: Database, store, store_id: int, now: datetime, count: int = N) -> None:
    """``count`` contacts with utility consent and one due cod_confirmation.ask each (distinct keys)."""
    seed_due_messages(db, store, store_id, count, now, CONTEXT)


def _run_two(pg_url: str, count: int, rate: float):  # type: ignore[no-untyped-def]
    now = datetime.now(timezone.utc).replace(microsecond=0) - timedelta(seconds=1)
    fake = SandboxWhatsApp()
    with SandboxServer(fake.app) as server:
        raw = _settings_raw(pg_url, server.url, rate)
        settings = parse_settings(raw, environ={})
        db = Database.from_url(pg_url)
        try:
            ids = sync_stores(db, [(s.key, s.platform) for s in settings.stores])
            _seed(db, settings.stores[0], ids["shop-a"], now, count)

            results = run_together([sys.executable, "-c", CHILD, pg_url, json.dumps(raw)], 2, timeout=120)

            with db.engine.connect() as conn:
                rows = conn.execute(select(m.OutboxMessage.id, m.OutboxMessage.status, m.OutboxMessage.attempts)).all()
                by_status = dict(conn.execute(select(m.OutboxMessage.status, func.count()).group_by(m.OutboxMessage.status)).all())
                attempts = dict(conn.execute(select(m.OutboxAttempt.outcome, func.count()).group_by(m.OutboxAttempt.outcome)).all())
                per_row = select(func.count().label("n")).select_from(m.OutboxAttempt).group_by(m.OutboxAttempt.outbox_id).subquery()
                attempts_per_row = conn.execute(select(func.max(per_row.c.n))).scalar()
                messages = conn.execute(select(func.count()).select_from(m.Message).where(m.Message.direction == "out")).scalar()
        finally:
            db.dispose()
    return fake, rows, by_status, attempts, attempts_per_row, messages, results


def test_two_dispatcher_processes_send_each_message_exactly_once(pg_url: str) -> None:
    fake, rows, by_status, attempts, attempts_per_row, messages, results = _run_two(pg_url, N, 1000)
    expected = {ob.callback_for(r.id) for r in rows}
    sends = fake.sends_per_callback()
    assert len(rows) == N
    assert by_status == {"sent": N}  # nothing left pending, sending or uncertain
    assert all(r.attempts == 1 for r in rows)
    assert set(sends) == expected  # every message reached the API...
    assert sorted(set(sends.values())) == [1]  # ...exactly once
    assert len(fake.calls) == N  # and nothing else was called (no failed or duplicate request)
    assert attempts == {"sent": N} and attempts_per_row == 1
    assert messages == N
    assert sum(r["sent"] for r in results) == N and sum(r["claimed"] for r in results) == N
    assert all(r["sent"] > 0 for r in results), results  # the work really was shared


def test_two_dispatchers_share_one_numbers_rate(pg_url: str) -> None:
    """Meta's limit is per number: two processes together must not exceed it."""
    fake, rows, by_status, *_ , results = _run_two(pg_url, 240, 30)
    times = sorted(c.at for c in fake.accepted())
    assert by_status == {"sent": 240} and all(r["sent"] > 0 for r in results)
    achieved = (len(times) - 1) / (times[-1] - times[0])
    assert achieved <= 30 * 1.15, f"{achieved:.1f} messages/s against a limit of 30/s"
