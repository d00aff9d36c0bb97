"""Shopify backfill benchmark: `storeloop sync --backfill --since 365d` against a fake Admin GraphQL API.

Issue #5's done-criterion: backfill 100,000 orders from a fake Shopify Admin GraphQL API
with Shopify's cost throttling; print orders/s, the GraphQL cost used against the bucket's
restore rate (target >= 90% of the allowed rate), the THROTTLED answers (every one handled)
and peak memory (bounded: target < 300 MB).

    .venv/bin/python bench/sync.py                      # 100,000 orders (make bench)
    .venv/bin/python bench/sync.py --quick              # 5,000 orders, a smoke run
    .venv/bin/python bench/sync.py --process            # then InboxProcessor.drain() too (slow: minutes)
    .venv/bin/python bench/sync.py --db-url postgresql+psycopg://postgres@127.0.0.1:5432/test

The fake (bench/_fake_shopify.py) runs in its own process on 127.0.0.1: it generates each
page's orders from their index (nothing is preloaded), charges Shopify's calculated query
cost against a leaky bucket (--maximum points, refilled at --restore-rate points/s; the
requested cost is taken up front and the unused part refunded) and answers THROTTLED when the
bucket cannot cover a query. --bursts times during the run (evenly spread) "another client of
the same app" empties the bucket just before one of our requests, which the connector cannot
foresee: those requests come back THROTTLED and must be slept off and retried.

Time is compressed. Shopify refills 100-2,000 points/s (platform-facts.md A7), at which
100,000 orders take from half an hour to hours. The default --restore-rate of 30,000 points/s
makes the run about 80 s and still leaves this process room: unthrottled, the connector does
about 107-147 pages/s here (4.5 ms of CPU per page), i.e. 42,000-58,000 points/s at the ~393
points a page is charged, so the bucket and not the CPU is the limit, unless other processes
take the two cores (the "time waiting for the bucket" row tells which). One artefact of the
compression: after a THROTTLED answer the client sleeps at least MIN_THROTTLE_WAIT (0.5 s)
while the bucket is full again in 67 ms, so each burst costs ~0.4 s of refill (under 2% of
a default run, but ~10% of a 4 s --quick run, whose figure is therefore below target).

This process does what `storeloop sync --store bench-sync --backfill --since 365d` does,
without the subprocess: a fresh migrated database (a SQLite file in a temp dir, or a new
schema in the PostgreSQL given with --db-url), `sync_stores`, `jobs.scheduler.make_client`
(the real ShopifyAdminClient, pointed at the fake through the store's `api_base_url`), and
`connector.sync.reconcile_orders(..., since=now - 365 days)` under `asyncio.run`, as the CLI.

Figures:
  * orders/s           = orders stored / wall time of reconcile_orders;
  * cost vs allowed    = actual query cost charged by the fake / (restoreRate x wall time):
                         the share of the bucket's refill the sync turned into orders (target
                         >= 90%; the full bucket at the start is at most maximum/(rate x wall) of it);
  * THROTTLED answers  = counted by the fake; each must show up as one retry in the
                         SyncReport, and the run must end with every order stored;
  * peak RSS           = ru_maxrss of this process (the syncing one) right after the run, next
                         to the RSS before it and samples during it (streaming = flat).
Verification: the backfill writes inbox rows (topic sync/order), which the worker turns into
`orders` rows later; so the check is on the inbox: one row per generated order id, none
missing, none twice, and the stored cursor = the newest order's updatedAt. A second,
incremental run then reads only the overlap window and stores nothing. With --process the
InboxProcessor then drains the inbox and `orders` must hold every order too.
Exit 1 if an order is missing or duplicated, the cursor is wrong, or the run failed.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import sys
import tempfile
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
sys.path[:0] = [str(ROOT), str(BENCH)]

from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402
from sqlalchemy import func, select  # noqa: E402

from _fake_shopify import ID_BASE, Store, order_cost, requested_cost  # noqa: E402
from _peer import PeerProcess  # noqa: E402
from _summary import record  # noqa: E402
from _fresh_db import FreshDatabase  # noqa: E402
from adapters.shopify import graphql as gql  # noqa: E402
from adapters.shopify.client import MIN_THROTTLE_WAIT  # noqa: E402
from connector.config import Settings, parse_settings  # noqa: E402
from connector.storage import models as m  # noqa: E402
from connector.storage.db import Database  # noqa: E402
from connector.storage.inbox import sync_stores  # noqa: E402
from connector.sync import ORDERS_CURSOR, SyncReport, read_cursor, reconcile_orders  # noqa: E402
from jobs.scheduler import make_client  # noqa: E402

STORE_KEY = "bench-sync"
SHOP = "bench-sync.myshopify.com"
TOKEN = "shpat_bench_sync"
TARGET_UTILISATION = 0.90
TARGET_RSS_MB = 300.0
DEFAULT_RESTORE_RATE = 30_000.0  # see main(): the bucket, not this process's CPU, must be the limit
AVG_LINES = 3  # the fake's orders have 1-5 line items

console = Console()
if console.width < 132:
    console = Console(width=132)


# ---- infrastructure -----------------------------------------------------------------------


class FakeShopifyProcess(PeerProcess):
    """bench/_fake_shopify.py in a child process on 127.0.0.1."""

    def __init__(self, workdir: Path, *, orders: int, now: datetime, restore_rate: float, maximum: float,
                 drain_at: list[int], drain_points: float):
        super().__init__(workdir, "_fake_shopify.py", "fake Shopify", [
            "--orders", str(orders), "--now", str(now.timestamp()), "--token", TOKEN, "--restore-rate", str(restore_rate),
            "--maximum", str(maximum), "--drain-at", ",".join(map(str, drain_at)), "--drain-points", str(drain_points)])

    def stats(self) -> dict[str, Any]:
        return self.get_json("/_stats")


def bench_settings(db_url: str, base_url: str) -> Settings:
    return parse_settings({
        "server": {"log_level": "warning"},
        "database": {"url": db_url},
        "stores": [{
            "key": STORE_KEY, "name": "Bench Sync", "platform": "shopify", "shop_domain": SHOP, "webhook_secret": "bench-sync-secret",
            "access_token": TOKEN, "api_base_url": base_url, "timezone": "Asia/Kolkata", "default_country": "IN",
            "policy": {"quiet_hours": ""},
        }],
    }, environ={})


# ---- memory -----------------------------------------------------------------------------------


def rss_mb() -> float:
    """Current resident set size (VmRSS) of this process."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except (OSError, ValueError):
        pass
    return float("nan")


def maxrss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def own_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


# ---- the run ----------------------------------------------------------------------------------


@dataclass
class Run:
    orders: int
    restore_rate: float
    maximum: float
    bursts: int
    report: SyncReport | None = None
    error: str | None = None
    wall: float = 0.0
    cpu: float = 0.0
    rss_before: float = 0.0
    maxrss_before: float = 0.0
    peak_rss: float = 0.0
    rss_samples: list[tuple[int, float]] = field(default_factory=list)  # (orders seen, VmRSS MB)
    stats: dict[str, Any] = field(default_factory=dict)
    rerun: SyncReport | None = None
    rerun_requests: int = 0
    checks: dict[str, Any] = field(default_factory=dict)
    process_seconds: float | None = None
    processed: int | None = None
    db_mb: float | None = None


async def backfill(db: Database, store: Any, store_id: int, now: datetime, since: datetime | None, run: Run | None) -> SyncReport:
    """What the CLI's `sync` runs: make_client + reconcile_orders (default page size, overlap)."""
    step = max(1, (run.orders // 10) if run else 1)
    next_sample = [step]

    def progress(report: SyncReport) -> None:
        if run is not None and report.orders_seen >= next_sample[0]:
            run.rss_samples.append((report.orders_seen, rss_mb()))
            next_sample[0] += step

    async with make_client(store) as client:
        return await reconcile_orders(db, store, store_id, client, now=now, since=since, progress=progress)


def verify(db: Database, store_id: int, run: Run, fake_store: Store) -> None:
    """One inbox row per generated order, none twice; the cursor at the newest updatedAt."""
    with db.engine.connect() as conn:
        rows = conn.execute(select(m.InboxEvent.dedupe_key, m.InboxEvent.topic).where(m.InboxEvent.store_id == store_id)).all()
    ids: list[int] = []
    topics: dict[str, int] = {}
    for key, topic in rows:
        # shopify:sync:{order id}:{updatedAt}
        ids.append(int(key.split(":")[2]))
        topics[topic] = topics.get(topic, 0) + 1
    got = set(ids)
    expected = set(range(ID_BASE, ID_BASE + run.orders))
    run.checks["inbox_rows"] = len(rows)
    run.checks["distinct_orders"] = len(got)
    run.checks["duplicates"] = len(ids) - len(got)
    run.checks["missing"] = len(expected - got)
    run.checks["unexpected"] = len(got - expected)
    run.checks["topics"] = topics
    newest = fake_store.updated_at(run.orders - 1)
    stored = read_cursor(db, store_id, ORDERS_CURSOR)
    run.checks["cursor"] = stored
    run.checks["cursor_expected"] = newest.isoformat()
    run.checks["cursor_ok"] = stored == newest.isoformat()


def process_inbox(db: Database, settings: Settings, store_ids: dict[str, int], store_id: int, run: Run) -> None:
    """--process: the worker's InboxProcessor drains the inbox; `orders` must then hold every order."""
    from adapters.registry import normalizers
    from connector.processor import InboxProcessor

    proc = InboxProcessor(db, settings, store_ids, normalizers())
    t0 = time.perf_counter()
    total = 0
    while True:
        n = proc.drain(max_batches=100)
        total += n
        if n == 0:
            break
    run.process_seconds = time.perf_counter() - t0
    run.processed = total
    with db.engine.connect() as conn:
        run.checks["orders_rows"] = conn.execute(select(func.count()).select_from(m.Order).where(m.Order.store_id == store_id)).scalar()
        run.checks["inbox_failed"] = conn.execute(select(func.count()).select_from(m.InboxEvent).where(
            m.InboxEvent.store_id == store_id, m.InboxEvent.status == "failed")).scalar()
        run.checks["inbox_pending"] = conn.execute(select(func.count()).select_from(m.InboxEvent).where(
            m.InboxEvent.store_id == store_id, m.InboxEvent.status == "pending")).scalar()


def execute(args: argparse.Namespace, workdir: Path) -> Run:
    run = Run(orders=args.orders, restore_rate=args.restore_rate, maximum=args.maximum, bursts=args.bursts)
    now = datetime.now(timezone.utc).replace(microsecond=0)
    since = now - timedelta(days=365)  # `--backfill` without --since, i.e. --since 365d
    first = gql.page_size_for(100)
    pages = -(-args.orders // first)
    drain_at = [pages * (k + 1) // (args.bursts + 1) for k in range(args.bursts)]  # evenly spread over the run
    fresh = FreshDatabase(workdir, "sync", args.db_url)
    try:
        with FakeShopifyProcess(workdir, orders=args.orders, now=now, restore_rate=args.restore_rate, maximum=args.maximum,
                                drain_at=drain_at, drain_points=args.maximum) as fake:
            settings = bench_settings(fresh.url, fake.url)
            store = settings.stores[0]
            store_ids = sync_stores(fresh.db, [(s.key, s.platform) for s in settings.stores])
            store_id = store_ids[STORE_KEY]
            run.rss_before, run.maxrss_before = rss_mb(), maxrss_mb()
            cpu0, t0 = own_cpu(), time.perf_counter()
            try:
                run.report = asyncio.run(backfill(fresh.db, store, store_id, now, since, run))
            except Exception as exc:  # noqa: BLE001 - reported, exit 1
                run.error = f"{exc.__class__.__name__}: {exc}"
            run.wall = time.perf_counter() - t0
            run.cpu = own_cpu() - cpu0
            run.peak_rss = maxrss_mb()  # before anything else of this process allocates
            run.rss_samples.append((run.report.orders_seen if run.report else -1, rss_mb()))
            run.stats = fake.stats()
            if run.error is None:
                # the next scheduled run: from the stored cursor minus the overlap; nothing new
                try:
                    run.rerun = asyncio.run(backfill(fresh.db, store, store_id, now + timedelta(minutes=15), None, None))
                except Exception as exc:  # noqa: BLE001
                    run.error = f"incremental rerun: {exc.__class__.__name__}: {exc}"
                run.rerun_requests = fake.stats()["orders_requests"] - run.stats["orders_requests"]
        verify(fresh.db, store_id, run, Store(args.orders, now))
        if args.process and run.error is None:
            process_inbox(fresh.db, settings, store_ids, store_id, run)
        run.db_mb = fresh.size_mb()
    finally:
        fresh.close()
    return run


# ---- the report -------------------------------------------------------------------------------


def _ok(good: bool, text: str) -> str:
    return f"[{'green' if good else 'red'}]{text}[/]"


def report(args: argparse.Namespace, run: Run) -> bool:
    """Print the figures; True when every correctness check passed."""
    r, st, c = run.report, run.stats, run.checks
    stored = c.get("distinct_orders", 0)
    first = gql.page_size_for(100)
    req = requested_cost(first, gql.LINES_PER_ORDER, gql.FULFILLMENTS_PER_ORDER, gql.TRACKING_PER_FULFILLMENT, consent=True)
    avg_actual = 2 + first * order_cost(AVG_LINES, [1], 2)  # a fulfilled order: one parcel with one number, and the consent
    charged = float(st.get("points_charged", 0.0))
    allowed = run.restore_rate * run.wall
    util = charged / allowed if allowed else 0.0
    throttled = int(st.get("throttled", 0))
    retries = r.retries if r else 0
    ok = (run.error is None and c.get("missing") == 0 and c.get("duplicates") == 0 and c.get("unexpected") == 0
          and c.get("cursor_ok") and (run.rerun is None or run.rerun.new_rows == 0) and throttled == retries)
    if args.process:
        ok = ok and c.get("orders_rows") == run.orders and c.get("inbox_failed") == 0 and c.get("inbox_pending") == 0

    db_label = "PostgreSQL" if args.db_url else "SQLite"
    table = Table(title=f"Shopify backfill: reconcile_orders (`sync --backfill --since 365d`) -> fake Admin GraphQL in its own process ({db_label})")
    table.add_column("figure")
    table.add_column("value", justify="right")
    table.add_column("target / check")
    table.add_row("orders generated / stored in the inbox", f"{run.orders:,} / {stored:,}",
                  _ok(stored == run.orders and c.get("missing") == 0, f"missing {c.get('missing', '?')}, duplicates "
                      f"{c.get('duplicates', '?')}, unknown {c.get('unexpected', '?')}"))
    table.add_row("wall time of reconcile_orders", f"{run.wall:.1f} s", run.error and _ok(False, run.error) or "")
    table.add_row("orders/s", f"{stored / run.wall:,.0f}" if run.wall else "-", f"pages of {first}: {r.pages if r else 0:,} pages, "
                  f"{(r.pages / run.wall if r and run.wall else 0):.0f} pages/s")
    table.add_row("GraphQL cost charged / allowed (restoreRate x wall)",
                  f"{charged:,.0f} / {allowed:,.0f} pts", "")
    table.add_row("cost used vs allowed rate", f"{charged / run.wall if run.wall else 0:,.0f} of {run.restore_rate:,.0f} pts/s",
                  _ok(util >= TARGET_UTILISATION, f"{util:.1%} (target >= {TARGET_UTILISATION:.0%})"))
    if r is not None and run.wall:
        waited = r.throttle_seconds / run.wall
        starved = util < TARGET_UTILISATION and waited < 0.1
        table.add_row("time waiting for the bucket (budget waits + throttle sleeps)",
                      f"{r.throttle_seconds:.1f} s ({waited:.0%})",
                      f"[yellow]the sync process, not the bucket, was the limit (CPU; load average {os.getloadavg()[0]:.1f})[/]"
                      if starved else f"{r.throttle_waits - r.retries:,} of {r.pages:,} pages waited for budget")
    table.add_row("THROTTLED answers / retries in the SyncReport", f"{throttled} / {retries}",
                  _ok(throttled == retries and run.error is None, "every one slept off and retried; run completed"
                      if throttled == retries and run.error is None else "unhandled throttling"))
    table.add_row("peak RSS of the syncing process (ru_maxrss)", f"{run.peak_rss:.0f} MB",
                  _ok(run.peak_rss < TARGET_RSS_MB, f"< {TARGET_RSS_MB:.0f} MB; RSS before the run {run.rss_before:.0f} MB "
                      f"(ru_maxrss {run.maxrss_before:.0f})"))
    samples = run.rss_samples[:-1]
    if samples:
        half = [mb for n, mb in samples if n >= run.orders // 2]
        table.add_row("RSS during the run (every 10% of the orders)", " ".join(f"{mb:.0f}" for _, mb in samples) + " MB",
                      f"growth over the second half: {max(half) - min(half):+.1f} MB" if len(half) > 1 else "")
    table.add_row("stored cursor (orders_updated_at)", str(c.get("cursor")), _ok(bool(c.get("cursor_ok")),
                  "= newest order's updatedAt" if c.get("cursor_ok") else f"expected {c.get('cursor_expected')}"))
    if run.rerun is not None:
        table.add_row("incremental rerun (from the cursor - 5 min)", f"{run.rerun.orders_seen} seen, {run.rerun.new_rows} new",
                      _ok(run.rerun.new_rows == 0, f"{run.rerun_requests} request(s); nothing stored twice"))
    if run.processed is not None:
        table.add_row("InboxProcessor.drain() (--process)", f"{run.processed:,} rows in {run.process_seconds:.1f} s",
                      f"{run.processed / run.process_seconds:,.0f} rows/s" if run.process_seconds else "")
        table.add_row("orders rows after processing", f"{c.get('orders_rows', 0):,}",
                      _ok(c.get("orders_rows") == run.orders and c.get("inbox_failed") == 0,
                          f"failed {c.get('inbox_failed')}, pending {c.get('inbox_pending')}"))
    console.print(table)
    record("sync", f"Shopify backfill, {run.orders:,} orders ({db_label}): orders/s, cost used vs restore rate",
           f"{stored / run.wall if run.wall else 0:,.0f}/s, {util:.1%} of {run.restore_rate:,.0f} pts/s, {throttled} THROTTLED retried",
           f">= {TARGET_UTILISATION:.0%}, < {TARGET_RSS_MB:.0f} MB", ok and util >= TARGET_UTILISATION and run.peak_rss < TARGET_RSS_MB,
           peak=round(run.peak_rss))

    T = max(0.0, (st.get("at") or 0) - (st.get("first_request") or 0))
    console.print(
        f"  fake: {st.get('requests', 0):,} requests ({st.get('ok', 0):,} answered, {throttled} THROTTLED, {st.get('errors', 0)} errors), "
        f"requested cost per page {req} (first={first}, lineItems(first: {gql.LINES_PER_ORDER}), fulfillments(first: "
        f"{gql.FULFILLMENTS_PER_ORDER}) x trackingInfo(first: {gql.TRACKING_PER_FULFILLMENT})), actual ~{avg_actual} at "
        f"{AVG_LINES} lines and one parcel/order; bucket {run.maximum:,.0f} pts, restore {run.restore_rate:,.0f}/s")
    console.print(
        f"  bucket from the first request to the end ({T:.1f} s): full {run.maximum:,.0f} + refill {run.restore_rate * T:,.0f} = "
        f"charged {charged:,.0f} + other client {st.get('points_other', 0):,.0f} ({run.bursts} bursts) + lost to the cap "
        f"{st.get('points_capped', 0):,.0f} + left {st.get('available', 0):,.0f}")
    if r is not None:
        console.print(f"  SyncReport: {r.pages:,} pages, {r.orders_seen:,} seen, {r.new_rows:,} new ({r.placed} placed = fresh first sight), "
                      f"budget waits + retries {r.throttle_waits:,} for {r.throttle_seconds:.1f} s, retries {r.retries}; inbox topics {c.get('topics')}")
    per_page_ms = run.cpu * 1000 / r.pages if r and r.pages else 0
    console.print(f"  CPU: sync process {run.cpu:.1f} s ({per_page_ms:.1f} ms/page), fake {st.get('cpu_seconds', 0):.1f} s; "
                  f"database {'%.0f MB' % run.db_mb if run.db_mb is not None else '-'}; machine {os.cpu_count()} CPUs, "
                  f"load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    console.print("  cost used = actual query cost charged / (restoreRate x wall of reconcile_orders); the backfill writes inbox rows "
                  "(topic sync/order) that a worker turns into orders rows (--process does it here).")
    if throttled:
        lost = throttled * max(0.0, MIN_THROTTLE_WAIT - run.maximum / run.restore_rate) * run.restore_rate
        console.print(f"  each THROTTLED answer is slept off for at least {MIN_THROTTLE_WAIT} s (the client's floor); at this compressed "
                      f"rate the bucket is full again after {run.maximum / run.restore_rate * 1000:.0f} ms, so about {lost:,.0f} points "
                      f"({lost / allowed if allowed else 0:.1%} of the allowed) are lost to the cap; at Shopify's own rates "
                      f"(<= 2,000 pts/s) refilling a page's {req} points takes about as long as the floor.")
    if not ok:
        console.print("[bold red]FAILED[/]: " + "; ".join(
            x for x in (run.error, "orders missing or duplicated" if c.get("missing") or c.get("duplicates") else None,
                        None if c.get("cursor_ok") else "cursor not at the newest order",
                        "THROTTLED answers != retries" if throttled != retries else None) if x))
    return bool(ok)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--orders", type=int, default=100_000)
    parser.add_argument("--quick", action="store_true", help="5,000 orders (a smoke run)")
    parser.add_argument("--restore-rate", type=float, default=DEFAULT_RESTORE_RATE,
                        help="bucket refill, points/s (default %(default)s; see above)")
    parser.add_argument("--maximum", type=float, default=2000.0, help="bucket size, points (default %(default)s)")
    parser.add_argument("--bursts", type=int, default=None,
                        help="times another client of the app empties the bucket mid-run (default: 3, 1 for --quick / < 30,000 orders)")
    parser.add_argument("--db-url", default=None, help="PostgreSQL URL; a fresh schema is created and dropped")
    parser.add_argument("--process", action="store_true", help="afterwards run InboxProcessor.drain() and check the orders table")
    args = parser.parse_args()
    if args.quick:
        args.orders = 5_000
    if args.bursts is None:
        args.bursts = 3 if args.orders >= 30_000 else 1
    if args.db_url is not None and not args.db_url.startswith("postgresql"):
        parser.error("--db-url must be a postgresql URL (SQLite is the default, in a temp dir)")
    console.print(f"[dim]backfilling {args.orders:,} orders from a fake Shopify (bucket {args.maximum:,.0f} pts, restore "
                  f"{args.restore_rate:,.0f} pts/s, {args.bursts} burst(s) of other traffic)...[/]")
    with tempfile.TemporaryDirectory(prefix="storeloop-sync-") as tmp:
        run = execute(args, Path(tmp))
    return 0 if report(args, run) else 1


if __name__ == "__main__":
    sys.exit(main())
