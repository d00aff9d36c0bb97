"""Outbox dispatch benchmark: the real Dispatcher against the sandbox Cloud API on 127.0.0.1.

For each scenario, on a fresh database (a SQLite file in a temp dir, or a fresh schema in
the PostgreSQL given with --db-url), queue N due template messages for N distinct contacts
with utility consent (pair spacing 0, quiet hours off), run ``Dispatcher.run_forever`` until
every row is in a final state (or the time limit), and read the sandbox's accepted calls:

  * steady  80/s and 1000/s: N = rate x --seconds;
  * failures 80/s: after the first 200 accepted sends the sandbox answers a burst of
    scripted failures (130429 with and without Retry-After, a JSON 5xx, an HTML 502); the
    dispatcher's retries are durable due times, so the run lasts until they are sent too.

Achieved rate = accepted sends per second over the central 80% of them (first and last
10% excluded: connection warm-up and the tail). ``run rate`` = accepted / (last - first
call). Max/1s = most API calls (any answer) in a sliding one-second window; the token
bucket allows rate + 5% burst. Duplicates = callbacks accepted more than once; lost = rows
not ``sent`` or sent rows the API never accepted. Exit 1 if duplicates or lost > 0.

The sandbox runs in its own process (bench/_sandbox_server.py) unless --sandbox thread.

    .venv/bin/python bench/dispatch.py [--seconds 8] [--rates 80,1000] [--db-url postgresql+psycopg://... [--processes 2]]

With --processes N the 1,000/s scenario runs N dispatcher processes on one PostgreSQL
schema (the production layout for high rates); they share the number's rate through their
heartbeat leases, and the table's max/1s shows whether the shared rate holds.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parents[1]
BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT))

from sqlalchemy import func, select  # noqa: E402

import httpx  # noqa: E402

from adapters.whatsapp.client import DEFAULT_TIMEOUT, WhatsAppClient  # noqa: E402
from connector.config import Settings, parse_settings  # noqa: E402
from connector.outbox import store as ob  # noqa: E402
from connector.outbox.dispatcher import Dispatcher  # noqa: E402
from connector.runtime import tune_gc
from connector.sandbox.seed import CONTEXT, TEMPLATE, seed_due_messages
from connector.storage import models as m  # noqa: E402
from connector.storage.db import Database  # noqa: E402
from connector.storage.inbox import sync_stores  # noqa: E402

sys.path.insert(0, str(BENCH))
from _peer import SandboxProcess, SandboxThread  # noqa: E402
from _summary import record  # noqa: E402
from _fresh_db import FreshDatabase  # noqa: E402

console = Console()
if console.width < 150:
    console = Console(width=150)

PHONE_ID = "106540352242922"
TOKEN = "sandbox-token"
FINAL = ("sent", "failed", "skipped", "uncertain", "dry_run", "delivered", "read")


def failure_burst(n: int) -> list[dict[str, Any]]:
    """n scripted failures, the four kinds interleaved."""
    kinds = [
        {"status": 429, "body": {"error": {"message": "(#130429) Rate limit hit", "type": "OAuthException", "code": 130429, "fbtrace_id": "BENCH"}},
         "headers": {"Retry-After": "3"}},
        {"status": 429, "body": {"error": {"message": "(#130429) Rate limit hit", "type": "OAuthException", "code": 130429, "fbtrace_id": "BENCH"}}},
        {"status": 503, "body": {"error": {"message": "Service temporarily unavailable", "type": "OAuthException", "code": 2, "is_transient": True, "fbtrace_id": "BENCH"}}},
        {"status": 502, "body": "<html><head><title>502 Bad Gateway</title></head><body><center><h1>502 Bad Gateway</h1></center></body></html>"},
    ]
    return [kinds[i % len(kinds)] for i in range(n)]


@dataclass
class Scenario:
    name: str
    rate: float
    messages: int
    failures: int = 0
    fail_after: int = 200
    processes: int = 1  # dispatcher processes (more than one needs PostgreSQL)

    @property
    def label(self) -> str:
        return self.name + (f" x{self.processes} proc" if self.processes > 1 else "")


@dataclass
class Result:
    scenario: Scenario
    calls: list[tuple[float, int, str | None]] = field(default_factory=list)
    statuses: dict[str, int] = field(default_factory=dict)
    attempts: dict[str, int] = field(default_factory=dict)
    row_ids: list[int] = field(default_factory=list)
    sent_ids: set[int] = field(default_factory=set)
    wall: float = 0.0
    seed_seconds: float = 0.0
    timed_out: bool = False
    cpu_dispatcher: float = 0.0  # CPU seconds of this process (event loop + DB threads) during the run
    cpu_sandbox: float | None = None

    # -- figures ------------------------------------------------------------------------
    @property
    def accepted_times(self) -> list[float]:
        return sorted(t for t, status, _ in self.calls if status == 200)

    def achieved(self) -> float:
        return self._central_rate(self.accepted_times)

    def call_rate(self) -> float:
        """Every API call (also the failed ones: they use a send slot too), central 80%."""
        return self._central_rate(sorted(t for t, _, _ in self.calls))

    @staticmethod
    def _central_rate(ts: list[float]) -> float:
        if len(ts) < 10:
            return 0.0
        lo, hi = int(len(ts) * 0.1), int(len(ts) * 0.9) - 1
        return (hi - lo) / (ts[hi] - ts[lo]) if ts[hi] > ts[lo] else 0.0

    def run_rate(self) -> float:
        ts = sorted(t for t, _, _ in self.calls)
        ok = len(self.accepted_times)
        return (ok - 1) / (ts[-1] - ts[0]) if len(ts) > 1 and ts[-1] > ts[0] else 0.0

    def max_per_second(self) -> int:
        ts = sorted(t for t, _, _ in self.calls)
        best, j = 0, 0
        for i, t in enumerate(ts):
            while ts[j] <= t - 1.0:
                j += 1
            best = max(best, i - j + 1)
        return best

    def duplicates(self) -> int:
        counts = Counter(cb for _, status, cb in self.calls if status == 200)
        return sum(1 for n in counts.values() if n > 1)

    def lost(self) -> int:
        accepted = {cb for _, status, cb in self.calls if status == 200}
        not_sent = len(self.row_ids) - len(self.sent_ids)
        sent_not_accepted = sum(1 for i in self.sent_ids if ob.callback_for(i) not in accepted)
        return not_sent + sent_not_accepted

    def unknown_accepted(self) -> int:
        known = {ob.callback_for(i) for i in self.row_ids}
        return sum(1 for _, status, cb in self.calls if status == 200 and cb not in known)


# -- infrastructure ---------------------------------------------------------------------
def sandbox_process(workdir: Path, scenario: Scenario) -> SandboxProcess:
    """bench/_sandbox_server.py in a child process, armed with the scenario's failure burst."""
    args: list[str] = []
    if scenario.failures:
        script = workdir / f"script-{scenario.fail_after}-{scenario.failures}.json"
        script.write_text(json.dumps(failure_burst(scenario.failures)))
        args = ["--script-after", str(scenario.fail_after), "--script-file", str(script)]
    return SandboxProcess(workdir, args)


def sandbox_thread(workdir: Path, scenario: Scenario) -> SandboxThread:
    """The same sandbox in a thread of this process (what tests do), for comparison."""
    from _sandbox_server import BenchSandbox  # type: ignore[import-not-found]

    from connector.sandbox.whatsapp import ScriptedResponse

    scripted = [ScriptedResponse(s["status"], s.get("body"), s.get("headers") or {}) for s in failure_burst(scenario.failures)]
    return SandboxThread(BenchSandbox(after=scenario.fail_after if scenario.failures else None, scripted=scripted))


def make_settings(db_url: str, base_url: str, rate: float, concurrency: int | None = None) -> Settings:
    extra = {"send_concurrency": concurrency} if concurrency else {}
    return parse_settings({
        "database": {"url": db_url},
        "whatsapp": {"access_token": TOKEN, "graph_base_url": base_url, "messages_per_second": rate, "pair_spacing_seconds": 0, **extra},
        "stores": [{
            "key": "bench", "platform": "shopify", "shop_domain": "bench.myshopify.com", "webhook_secret": "bench-secret",
            "timezone": "Asia/Kolkata", "default_country": "IN", "whatsapp_phone_number_id": PHONE_ID,
            "templates": [TEMPLATE], "policy": {"quiet_hours": ""},
        }],
    }, environ={})


def seed(db: Database, settings: Settings, store_id: int, n: int, now: datetime) -> None:
    seed_due_messages(db, settings.stores[0], store_id, n, now, CONTEXT)


def unfinished(db: Database) -> int:
    """Rows still pending/sending. Under the write lock: on SQLite every transaction is BEGIN
    IMMEDIATE, and an unserialised reader would make the dispatcher's writes hit the busy handler."""
    with db.write_lock(), db.engine.connect() as conn:
        return conn.execute(
            select(func.count()).select_from(m.OutboxMessage).where(m.OutboxMessage.status.in_(("pending", "sending")))
        ).scalar() or 0


async def drive(
    db: Database, settings: Settings, store_ids: dict[str, int], base_url: str, messages: int, time_limit: float,
    keepalive: int | None = None, barrier: Any = None,
) -> tuple[float, bool]:
    """run_forever until no row is pending/sending, or the time limit.

    The database is asked only every 2 s, or as soon as the dispatcher has sent every
    message once, so the monitor does not compete with the dispatcher for the database.
    """
    http = None
    if keepalive is not None:  # what the runtime would pass if it sized the pool to send_concurrency
        http = httpx.AsyncClient(timeout=DEFAULT_TIMEOUT, limits=httpx.Limits(max_connections=max(100, keepalive), max_keepalive_connections=keepalive))
    client = WhatsAppClient(base_url, settings.whatsapp.api_version, TOKEN, http=http)
    tune_gc()  # as `storeloop serve` / `worker` do when their runtime starts
    dispatcher = Dispatcher(db, settings, store_ids, client)
    if barrier is not None:
        await barrier(dispatcher)
    stop = asyncio.Event()
    t0 = time.monotonic()
    task = asyncio.create_task(dispatcher.run_forever(stop, idle_seconds=0.1))
    timed_out = False
    next_check = t0 + 2.0
    try:
        while not task.done():
            await asyncio.sleep(0.05)
            now = time.monotonic()
            if dispatcher.sent >= messages or now >= next_check:
                next_check = now + 2.0
                if await asyncio.to_thread(unfinished, db) == 0:
                    break
            if now - t0 > time_limit:
                timed_out = True
                break
        stop.set()
        await asyncio.wait_for(task, timeout=60)
    finally:
        await client.aclose()
        if http is not None:
            await http.aclose()
    return time.monotonic() - t0, timed_out


async def _child_barrier(dispatcher: Dispatcher) -> None:
    """Join, say ready, wait for "go", join again: every child then knows every peer and takes
    only its share of the number's rate from its first send."""
    await dispatcher.join()
    print("ready", flush=True)
    await asyncio.to_thread(sys.stdin.readline)
    await dispatcher.join()


def child_main(db_url: str, base_url: str, rate: float, messages: int, time_limit: float, loop: str) -> int:
    """One of several dispatcher processes (--processes): drive, then print wall and CPU as JSON."""
    settings = make_settings(db_url, base_url, rate)
    db = Database.from_url(db_url)
    store_ids = sync_stores(db, [(s.key, s.platform) for s in settings.stores])
    cpu0 = _own_cpu()
    coro = drive(db, settings, store_ids, base_url, messages, time_limit, barrier=_child_barrier)
    wall, timed_out = (uvloop_run(coro) if loop == "uvloop" else asyncio.run(coro))
    db.dispose()
    print(json.dumps({"wall": wall, "timed_out": timed_out, "cpu": _own_cpu() - cpu0}), flush=True)
    return 0


def uvloop_run(coro: Any) -> Any:
    import uvloop

    return uvloop.run(coro)


def run_children(n: int, db_url: str, base_url: str, scenario: "Scenario", time_limit: float, loop: str) -> tuple[float, bool, float]:
    """n dispatcher processes on one PostgreSQL schema; returns (longest wall, any timed out, CPU seconds)."""
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", db_url, base_url, str(scenario.rate), str(scenario.messages),
           str(time_limit), loop]
    procs = [subprocess.Popen(cmd, cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True) for _ in range(n)]
    try:
        for proc in procs:
            line = proc.stdout.readline().strip()  # type: ignore[union-attr]
            if line != "ready":
                raise RuntimeError(f"dispatcher child did not start: {line!r}")
        for proc in procs:
            proc.stdin.write("go\n")  # type: ignore[union-attr]
            proc.stdin.flush()  # type: ignore[union-attr]
        out = [json.loads(proc.communicate(timeout=time_limit + 60)[0].strip().splitlines()[-1]) for proc in procs]
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
    return max(o["wall"] for o in out), any(o["timed_out"] for o in out), sum(o["cpu"] for o in out)


def _own_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def run_scenario(
    scenario: Scenario, workdir: Path, pg_url: str | None, sandbox_mode: str, time_limit: float, loop: str, keepalive: int | None,
    concurrency: int | None = None,
) -> Result:
    result = Result(scenario)
    fresh = FreshDatabase(workdir, f"{scenario.name}-{int(scenario.rate)}", pg_url)
    box_cls = sandbox_process if sandbox_mode == "process" else sandbox_thread
    try:
        with box_cls(workdir, scenario) as box:
            settings = make_settings(fresh.url, box.url, scenario.rate, concurrency)
            store_ids = sync_stores(fresh.db, [(s.key, s.platform) for s in settings.stores])
            t = time.monotonic()
            seed(fresh.db, settings, store_ids["bench"], scenario.messages, datetime.now(timezone.utc) - timedelta(seconds=1))
            result.seed_seconds = time.monotonic() - t
            cpu0, box0 = _own_cpu(), box.cpu_seconds()
            if scenario.processes > 1:
                result.wall, result.timed_out, result.cpu_dispatcher = run_children(
                    scenario.processes, fresh.url, box.url, scenario, time_limit, loop)
            else:
                coro = drive(fresh.db, settings, store_ids, box.url, scenario.messages, time_limit, keepalive)
                result.wall, result.timed_out = uvloop_run(coro) if loop == "uvloop" else asyncio.run(coro)
                result.cpu_dispatcher = _own_cpu() - cpu0
            box1 = box.cpu_seconds()
            result.cpu_sandbox = box1 - box0 if box0 is not None and box1 is not None else None
            result.calls = [c[:3] for c in box.calls()]  # (time, status, callback)
        with fresh.db.engine.connect() as conn:
            rows = conn.execute(select(m.OutboxMessage.id, m.OutboxMessage.status)).all()
            result.statuses = dict(Counter(r.status for r in rows))
            result.row_ids = [r.id for r in rows]
            result.sent_ids = {r.id for r in rows if r.status == "sent"}
            result.attempts = dict(conn.execute(select(m.OutboxAttempt.outcome, func.count()).group_by(m.OutboxAttempt.outcome)).all())
    finally:
        fresh.close()
    return result


def report(results: list[Result], db_label: str, sandbox_mode: str, loop: str) -> None:
    table = Table(title=f"Outbox dispatch: Dispatcher.run_forever ({loop}) -> sandbox Cloud API ({db_label}, sandbox in a {sandbox_mode})")
    for col in ("scenario", "rate/s", "messages", "achieved/s", "ratio", "calls/s", "run rate/s", "max/1s", "API calls", "retries",
                "duplicates", "lost", "wall s", "CPU ms/call disp|sbx"):
        table.add_column(col, justify="left" if col == "scenario" else "right")
    for r in results:
        s = r.scenario
        ratio = r.achieved() / s.rate
        burst_cap = s.rate + max(1.0, s.rate * 0.05)
        dup, lost = r.duplicates(), r.lost()
        mx = r.max_per_second()
        table.add_row(
            s.label + (" (TIME LIMIT)" if r.timed_out else ""), f"{s.rate:g}", str(s.messages),
            f"{r.achieved():.1f}", f"[{'green' if ratio >= 0.95 else 'red'}]{ratio:.3f}[/]", f"{r.call_rate():.1f}", f"{r.run_rate():.1f}",
            f"[{'green' if mx <= burst_cap else 'red'}]{mx}[/]", str(len(r.calls)), str(r.attempts.get("retry", 0)),
            f"[{'green' if dup == 0 else 'red'}]{dup}[/]", f"[{'green' if lost == 0 else 'red'}]{lost}[/]", f"{r.wall:.1f}",
            f"{r.cpu_dispatcher * 1000 / max(1, len(r.calls)):.2f} | "
            + (f"{r.cpu_sandbox * 1000 / max(1, len(r.calls)):.2f}" if r.cpu_sandbox is not None else "-"),
        )
    console.print(table)
    for r in results:
        s = r.scenario
        record("dispatch", f"{s.label} at {s.rate:g}/s ({db_label}): achieved, duplicates, lost",
               f"{r.achieved():.0f}/s ({r.achieved() / s.rate:.3f}), {r.duplicates()} dup, {r.lost()} lost",
               "within 5%, 0 dup, 0 lost" if s.name == "steady" else "0 dup, 0 lost",
               (r.achieved() / s.rate >= 0.95 if s.name == "steady" else True) and not r.duplicates() and not r.lost())
    for r in results:
        extra = r.unknown_accepted()
        console.print(
            f"  {r.scenario.label} {r.scenario.rate:g}/s: outbox {dict(sorted(r.statuses.items()))}, attempts {dict(sorted(r.attempts.items()))}, "
            f"API answers {dict(sorted(Counter(st for _, st, _ in r.calls).items()))}, seed {r.seed_seconds:.1f}s"
            + (f", {extra} accepted calls for unknown callbacks" if extra else "")
        )
    console.print(f"  machine: {os.cpu_count()} CPUs, load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    console.print("  achieved = accepted sends/s over the central 80% of them (ratio = achieved/rate, target >= 0.95); calls/s = the same "
                  "over every API call, failed ones included;\n  run rate = accepted/(last - first call); max/1s = API calls in any 1 s "
                  "window (cap: rate + 5% burst); CPU ms/call = CPU time of the dispatcher process | the sandbox process per API call.")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=8.0, help="messages queued = rate x seconds")
    parser.add_argument("--rates", default="80,1000")
    parser.add_argument("--failures", type=int, default=60, help="scripted failures in the 80/s failure scenario (0: skip it)")
    parser.add_argument("--db-url", default=None, help="PostgreSQL URL; a fresh schema is created and dropped per scenario")
    parser.add_argument("--sandbox", choices=("process", "thread"), default="process")
    parser.add_argument("--only", default=None, help="steady|failures")
    parser.add_argument("--loop", choices=("uvloop", "asyncio"), default="uvloop",
                        help="uvloop: as in `storeloop serve` (the default deployment); asyncio: as in `storeloop worker`")
    parser.add_argument("--concurrency", type=int, default=None, help="whatsapp.send_concurrency (default: the setting's default, 32)")
    parser.add_argument("--keepalive", type=int, default=None,
                        help="experiment: give WhatsAppClient an httpx pool keeping this many connections alive (default: httpx's 20)")
    parser.add_argument("--processes", type=int, default=1,
                        help="dispatcher processes for the 1,000/s scenario (more than 1 needs --db-url: SQLite is one worker)")
    parser.add_argument("--child", nargs=6, metavar=("URL", "BASE", "RATE", "N", "LIMIT", "LOOP"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        url, base, rate, n, limit, loop = args.child
        return child_main(url, base, float(rate), int(n), float(limit), loop)
    if args.processes > 1 and args.db_url is None:
        parser.error("--processes > 1 needs --db-url (PostgreSQL): on SQLite one worker sends")
    if args.db_url is not None and not args.db_url.startswith("postgresql"):
        parser.error("--db-url must be a postgresql URL (SQLite is the default, in a temp dir)")

    scenarios: list[Scenario] = []
    if args.only in (None, "steady"):
        scenarios += [Scenario("steady", float(r), int(float(r) * args.seconds), processes=args.processes if float(r) >= 1000 else 1)
                      for r in args.rates.split(",")]
    if args.failures and args.only in (None, "failures"):
        scenarios.append(Scenario("failures", 80.0, int(80 * args.seconds), failures=args.failures))

    results: list[Result] = []
    with tempfile.TemporaryDirectory(prefix="storeloop-dispatch-") as tmp:
        for s in scenarios:
            limit = s.messages / s.rate * 3 + 30
            console.print(f"[dim]{s.label}: {s.messages} messages at {s.rate:g}/s (time limit {limit:.0f} s)...[/]")
            results.append(run_scenario(s, Path(tmp), args.db_url, args.sandbox, limit, args.loop, args.keepalive, args.concurrency))
    report(results, "PostgreSQL" if args.db_url else "SQLite", args.sandbox, args.loop)
    bad = [r for r in results if r.duplicates() or r.lost()]
    if bad:
        console.print(f"[red]FAILED: duplicates or lost messages in {', '.join(r.scenario.name for r in bad)}[/]")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
