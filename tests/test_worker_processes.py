"""On PostgreSQL two ``storeloop worker`` processes share one periodic job: it runs once per tick.

Two real worker processes (the ``storeloop worker`` command, each with its own config file)
run the real scheduler on the same PostgreSQL schema, with order reconciliation every 1.5 s
(``worker.reconcile_minutes = 0.025``; the lease is 80 % of that, 1.2 s). The store's Admin
API is a fake Shopify GraphQL endpoint on 127.0.0.1 in this (the test) process: every
reconcile run posts one ``orders`` query to it, and each worker has its own access token,
so the fake records which worker ran the job and when. Each skipped tick shows in the
worker's debug log ("... is held by another worker; skipping this tick").

What the test checks, over 4 ticks with both workers up, then the job's holder killed with
SIGKILL and 3 more ticks:

- two runs are never closer than the lease (a second run in the same tick would be at most
  half an interval after the first, whatever the two schedulers' phase);
- no tick is missed while a worker holds the job (runs at most an interval apart), and
  in every tick the other worker's timer fired too and was refused by the lease;
- after the SIGKILL the survivor takes the job over at its first tick after the dead
  worker's lease expired (no earlier: nothing runs twice; no later than lease + one
  interval), and the lease row names the survivor's process.

Waits are on conditions (a ``threading.Condition`` the fake server notifies, a bounded
wait for the workers' start line), never fixed sleeps. About 15 s (up to ~25 s on a loaded machine).
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import pytest
from sqlalchemy import select
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from connector.sandbox.whatsapp import SandboxServer
from connector.storage import models as m
from connector.storage.db import Database
from tests.conftest import PG_URL, SECRETS, empty_pg_schema
from tests.helpers import wait_until

pytestmark = pytest.mark.postgres

ROOT = Path(__file__).resolve().parents[1]
INTERVAL = 1.5  # seconds between ticks (worker.reconcile_minutes = INTERVAL / 60)
LEASE = 0.8 * INTERVAL  # jobs.scheduler.LEASE_FRACTION of the interval
SLACK = 0.3  # scheduling and request latency between a tick, its lease and its API call (< LEASE - INTERVAL / 2)
LEASE_NAME = "job:reconcile:shop-a"
SKIP_LINE = re.compile(r'^ts=(\S+) .*msg="job:reconcile:shop-a is held by another worker; skipping this tick"')


@pytest.fixture
def pg_url(pg_schema: str | None) -> str:
    if pg_schema is None:
        pytest.skip(f"PostgreSQL not reachable at {PG_URL} (set STORELOOP_TEST_PG_URL): the two-worker lease test needs it")
    return empty_pg_schema(pg_schema)


# ---- the fake store ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Run:
    token: str  # which worker: each has its own access token
    at: float  # time.time() when the orders query arrived


class FakeShopify:
    """Answers the reconcile job's ``orders`` query with no orders and records each run (who, when)."""

    def __init__(self) -> None:
        self.runs: list[Run] = []
        self.changed = threading.Condition()
        self.app = Starlette(routes=[Route("/admin/api/{version}/graphql.json", self._graphql, methods=["POST"])])

    async def _graphql(self, request: Request) -> JSONResponse:
        body = await request.json()
        if "StoreloopReconcileCustomers" in body.get("query", ""):  # the same run's customers pass: nobody changed
            return JSONResponse({"data": {"customers": {"pageInfo": {"hasNextPage": False, "endCursor": None}, "nodes": []}}})
        if "StoreloopReconcileOrders" not in body.get("query", ""):  # another job's query: not what is counted
            return JSONResponse({"errors": [{"message": "not served by this fake", "extensions": {"code": "BAD_REQUEST"}}]})
        with self.changed:
            self.runs.append(Run(request.headers.get("x-shopify-access-token", ""), time.time()))
            self.changed.notify_all()
        return JSONResponse({
            "data": {"orders": {"pageInfo": {"hasNextPage": False, "endCursor": None}, "nodes": []}},
            "extensions": {"cost": {"requestedQueryCost": 10, "actualQueryCost": 2,
                                    "throttleStatus": {"maximumAvailable": 2000.0, "currentlyAvailable": 1998, "restoreRate": 100.0}}},
        })

    def wait_for(self, predicate: Callable[[list[Run]], bool], timeout: float, what: str, workers: list[Worker]) -> list[Run]:
        with self.changed:
            if not self.changed.wait_for(lambda: predicate(self.runs), timeout=timeout):
                logs = "\n".join(f"--- {w.token} (exit {w.proc.poll()}):\n{w.text()[-2000:]}" for w in workers)
                raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}; runs so far: {self.runs}\n{logs}")
            return list(self.runs)


# ---- the workers ------------------------------------------------------------------------------


def write_config(path: Path, db_url: str, api_url: str, token: str) -> Path:
    path.write_text(f"""
[server]
log_level = "debug"

[database]
url = "{db_url}"

[worker]
reconcile_minutes = {INTERVAL / 60!r}
inbox_poll_seconds = 1

[whatsapp]
app_secret = "{SECRETS['wa_app']}"
verify_token = "{SECRETS['verify']}"

[[stores]]
key = "shop-a"
platform = "shopify"
shop_domain = "shop-a.myshopify.com"
webhook_secret = "{SECRETS['shop_a']}"
access_token = "{token}"
api_base_url = "{api_url}"
""")
    return path


def worker_command(config: Path) -> list[str]:
    """The installed ``storeloop`` console script when it is there, else the same entry point via -m."""
    script = Path(sys.executable).with_name("storeloop")
    head = [str(script)] if script.exists() else [sys.executable, "-m", "connector.cli"]
    return [*head, "worker", "--config", str(config)]


@dataclass
class Worker:
    token: str
    proc: subprocess.Popen[bytes]
    log: Path

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def skips(self) -> list[float]:
        """When this worker's timer fired and the lease was held by the other (epoch seconds)."""
        out = []
        for line in self.text().splitlines():
            match = SKIP_LINE.match(line)
            if match:
                out.append(datetime.fromisoformat(match.group(1).replace("Z", "+00:00")).timestamp())
        return out


@pytest.fixture
def workers(tmp_path: Path) -> Iterator[list[Worker]]:
    """Started by the test; whatever is still running at the end is stopped (killed if it hangs)."""
    started: list[Worker] = []
    yield started
    for w in started:
        if w.proc.poll() is None:
            w.proc.kill()
            w.proc.wait(timeout=10)


def start_worker(tmp_path: Path, name: str, db_url: str, api_url: str) -> Worker:
    token = f"shpat_{name}"
    config = write_config(tmp_path / f"{name}.toml", db_url, api_url, token)
    log = tmp_path / f"{name}.log"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    with log.open("wb") as out:  # stderr to a file: nothing to drain, readable after a kill
        proc = subprocess.Popen(worker_command(config), cwd=tmp_path, env=env, stdin=subprocess.DEVNULL,
                                stdout=out, stderr=subprocess.STDOUT)
    return Worker(token, proc, log)


def lease_holder_pid(db: Database) -> int | None:
    with db.engine.connect() as conn:
        holder = conn.execute(select(m.Lease.holder).where(m.Lease.name == LEASE_NAME)).scalar()
    return None if holder is None else int(holder.split(":")[1])  # jobs.scheduler.worker_id(): host:pid:random


def gaps(runs: list[Run]) -> list[float]:
    return [round(b.at - a.at, 3) for a, b in zip(runs, runs[1:])]


# ---- the test ---------------------------------------------------------------------------------


def test_two_worker_processes_run_the_periodic_job_once_per_tick_and_take_over_after_a_kill(
    pg_url: str, tmp_path: Path, workers: list[Worker]
) -> None:
    fake = FakeShopify()
    db = Database.from_url(pg_url)
    try:
        with SandboxServer(fake.app) as server:
            workers += [start_worker(tmp_path, name, pg_url, server.url) for name in ("one", "two")]
            for w in workers:
                wait_until(lambda: "worker running" in w.text() or w.proc.poll() is not None, 20, f"{w.token} to start")
                assert w.proc.poll() is None, f"{w.token} exited:\n{w.text()[-3000:]}"
            by_token = {w.token: w for w in workers}

            # ---- both workers up: 4 ticks ----
            before = fake.wait_for(lambda runs: len(runs) >= 4, 6 * INTERVAL + 5, "4 reconcile runs", workers)
            holder = by_token[before[-1].token]
            survivor = next(w for w in workers if w is not holder)
            lease_before_kill = lease_holder_pid(db)
            holder.proc.send_signal(signal.SIGKILL)
            killed_at = time.time()
            holder.proc.wait(timeout=10)
            last_before_kill = before[-1]

            # ---- holder killed: the survivor takes over, then 3 more ticks ----
            runs = fake.wait_for(
                lambda runs: sum(r.token == survivor.token and r.at > killed_at for r in runs) >= 4,
                LEASE + 5 * INTERVAL + 5, "the survivor to take over and run 3 more ticks", workers,
            )
            assert survivor.proc.poll() is None, survivor.text()[-3000:]
            lease_after_kill = lease_holder_pid(db)
            survivor.proc.send_signal(signal.SIGTERM)  # a clean stop still works
            assert survivor.proc.wait(timeout=15) == 0, survivor.text()[-3000:]
    finally:
        db.dispose()

    phase1 = [r for r in runs if r.at <= killed_at]
    phase2 = [r for r in runs if r.at > killed_at]
    report = f"gaps {gaps(runs)}; runs {[(r.token, round(r.at - runs[0].at, 3)) for r in runs]}"

    # Never twice in one tick: consecutive runs are at least a lease apart, give or take SLACK.
    # (If both workers ran in a tick, some gap would be at most half an interval, 0.75 s < 0.9 s,
    # whatever the schedulers' phase.)
    assert min(gaps(runs)) >= LEASE - SLACK, report
    # Once per tick while a worker holds the job: no tick missed (at most one interval apart).
    assert phase1 == before and len(phase1) >= 4
    assert max(gaps(phase1)) <= INTERVAL + SLACK, report
    assert max(gaps(phase2)) <= INTERVAL + SLACK, report
    assert all(r.token == survivor.token for r in phase2), report
    # The survivor's first run after the kill: once the dead worker's lease had expired, and at
    # its first tick after that (lease + one interval at most after the dead worker's last run).
    takeover = phase2[0].at - last_before_kill.at
    assert LEASE - SLACK <= takeover <= LEASE + INTERVAL + SLACK, report
    # The lease row (kept after each run, not released) names the process that called the store.
    assert (lease_before_kill, lease_after_kill) == (holder.proc.pid, survivor.proc.pid)

    # Both timers fired in every tick: for each run in phase 1 the other worker was refused once
    # (give or take the window's edges). The job ran once per tick, not once per worker per tick.
    skips = sorted(s for w in workers for s in w.skips() if phase1[0].at - SLACK <= s <= killed_at)
    assert len(phase1) - 2 <= len(skips) <= len(phase1) + 1, (skips, report)
    # and every skip fell while another run's lease was live (not in a tick the job missed)
    for s in skips:
        assert any(0 <= s - r.at + SLACK <= LEASE + SLACK for r in phase1), (s, report)
