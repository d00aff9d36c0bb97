"""End-to-end pipeline benchmark: a day of a large store through ingest -> engine -> outbox, in one process.

The issue: "pushes a day of synthetic events for a large store (e.g. 50,000 orders, 30% COD,
100,000 checkouts) through ingest -> engine -> outbox in one process and prints events/s and
peak memory; target at least 2,000 events/s end to end on SQLite."

    .venv/bin/python bench/pipeline.py                                   # a tenth of the day (make bench)
    .venv/bin/python bench/pipeline.py --orders 50000 --checkouts 100000 # the issue's full day

The default (5,000 orders, 10,000 checkouts) is a tenth of the issue's day so `make bench`
stays short. Payloads come from bench/_pipeline_data.py (built from the real Shopify samples)
and are generated and serialised before anything is timed, then frozen out of the garbage
collector's sight (gc.freeze: a worker never holds a day of payloads), and the collector is set
as `storeloop serve` and `worker` set it (runtime.tune_gc). One Shopify store with every
built-in journey enabled and a template for each step; quiet hours off, so nothing is deferred.

Timed phases (events = orders + checkouts; every phase is reported against that count):
  1. ingest   - `write_items` in batches of --batch: the durable inbox write the webhook
                handler awaits (HTTP, HMAC and group commit are measured by bench/ingest.py);
  2. process  - `InboxProcessor.process_batch()` as the worker's loop calls it on a backlog:
                JSON, normalise, state, journeys, outbox rows; transactions of
                runtime.DRAIN_SLICE, each loading batches of up to worker.inbox_batch_size rows
                (serve's batches while no webhooks arrive; a separate `storeloop worker` on
                SQLite ends them at IDLE_SLICE).
                The injected clock replays the day: each batch runs "when" its last event
                arrived, as a worker keeping up with the webhooks would;
  3. timers   - the clock walks from the start of the day in --step-minutes steps for
                --timer-hours (default 72: the day plus the two days its follow-ups need -
                checkout reminders up to 24 h after abandonment, COD reminders at 6 h / 24 h
                and the 48 h no-answer tag); at every step `process_timers()` runs until
                nothing fires, in batches of up to runtime.IDLE_TIMERS runs ended early once
                runtime.DRAIN_SLICE is spent (serve's timer batches while no webhooks arrive).
Nothing is sent: the outbox is only filled (bench/dispatch.py measures sending).

Disk: "MB written" is what each phase made the kernel write to storage (/proc/self/io
write_bytes: the WAL, the checkpoints' copies into the database file): the figure that grows
with the database and that a slow or metered disk feels first.

Memory: peak RSS per phase (VmHWM, reset before each phase through /proc/self/clear_refs
where the kernel allows it) and ru_maxrss for the whole process, which includes the
pre-generated payloads. tracemalloc is off unless --tracemalloc (it traces only the
processing phase and slows it down several times, so its events/s are not comparable).

127.0.0.1 only: no network at all unless --db-url points at a PostgreSQL server.
Exit code 0 with the figures (no throughput asserts); 1 if any inbox row ended `failed`.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import resource
import signal
import sys
import tempfile
import time
import tracemalloc
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
sys.path[:0] = [str(ROOT), str(BENCH)]

from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402
from sqlalchemy import event, func, select, update  # noqa: E402

from _pipeline_data import DAY_START, SHOP, Webhook, build_day  # noqa: E402
from _summary import record  # noqa: E402
from adapters.registry import normalizers  # noqa: E402
from connector.config import Settings, parse_settings  # noqa: E402
from connector.processor import InboxProcessor  # noqa: E402
from connector.runtime import DRAIN_SLICE, IDLE_TIMERS, tune_gc  # noqa: E402
from connector.storage import models as m  # noqa: E402
from connector.storage.db import Database, make_engine, migrate  # noqa: E402
from connector.storage.inbox import InboxItem, sync_stores, write_items  # noqa: E402

STORE_KEY = "bench-pipeline"
TARGET = 2000.0  # events/s end to end on SQLite (the issue)
console = Console()
if console.width < 175:  # pipes and CI default to 80 columns: keep the table on one line per row
    console = Console(width=175)

# ---- settings ---------------------------------------------------------------------------

_NAME = ["customer.first_name", "order.name", "order.total"]
_COD_BUTTONS = [{"type": "quick_reply", "text": "Confirm order", "payload": "cod_confirm"},
                {"type": "quick_reply", "text": "Cancel order", "payload": "cod_cancel"}]
TEMPLATES = [
    {"step": "order_confirmation.sent", "name": "order_confirmed_v1", "category": "utility",
     "body_text": "Hi {{1}}, thank you for order {{2}} of {{3}} at {{4}}. Track it here: {{5}}",
     "body": [*_NAME, "store.name", "order.status_url"]},
    {"step": "cod_confirmation.ask", "name": "cod_confirm_v1", "category": "utility",
     "body_text": "Hi {{1}}, please confirm your cash on delivery order {{2}} of {{3}} from {{4}}.",
     "body": [*_NAME, "store.name"], "buttons": _COD_BUTTONS},
    {"step": "cod_confirmation.reminder_1", "name": "cod_reminder_1_v1", "category": "utility",
     "body_text": "Hi {{1}}, your COD order {{2}} of {{3}} is waiting for your confirmation.",
     "body": _NAME, "buttons": _COD_BUTTONS},
    {"step": "cod_confirmation.reminder_2", "name": "cod_reminder_2_v1", "category": "utility",
     "body_text": "Last reminder, {{1}}: please confirm COD order {{2}} of {{3}} so we can ship it.",
     "body": _NAME, "buttons": _COD_BUTTONS},
    {"step": "checkout_recovery.first", "name": "cart_first_v1", "category": "marketing",
     "body_text": "You left {{1}} in your cart ({{2}}). Complete your order: {{3}}",
     "body": ["reorder.product", "checkout.total", "checkout.recovery_url"]},
    {"step": "checkout_recovery.second", "name": "cart_second_v1", "category": "marketing",
     "body_text": "{{1}} is still in your cart. Pick up where you left off: {{2}}",
     "body": ["reorder.product", "checkout.recovery_url"]},
    {"step": "checkout_recovery.third", "name": "cart_third_v1", "category": "marketing",
     "body_text": "Use code {{1}} for 10% off {{2}} ({{3}}): {{4}}",
     "body": ["discount.code", "reorder.product", "checkout.total", "checkout.recovery_url"]},
    {"step": "payment_recovery.remind", "name": "payment_remind_v1", "category": "utility",
     "body_text": "Hi {{1}}, the payment for order {{2}} of {{3}} did not go through. Pay here: {{4}}",
     "body": [*_NAME, "order.payment_url"]},
    {"step": "delivery.shipped", "name": "shipped_v1", "category": "utility",
     "body_text": "Hi {{1}}, order {{2}} has shipped with {{3}}: {{4}}",
     "body": ["customer.first_name", "order.name", "fulfillment.tracking_company", "fulfillment.tracking_url"]},
    {"step": "delivery.out_for_delivery", "name": "out_for_delivery_v1", "category": "utility",
     "body_text": "Hi {{1}}, order {{2}} is out for delivery today.", "body": ["customer.first_name", "order.name"]},
    {"step": "delivery.delivered", "name": "delivered_v1", "category": "utility",
     "body_text": "Hi {{1}}, order {{2}} has been delivered. Enjoy!", "body": ["customer.first_name", "order.name"]},
    {"step": "delivery.failed", "name": "delivery_failed_v1", "category": "utility",
     "body_text": "Hi {{1}}, we could not deliver order {{2}}. We will call you to rearrange.",
     "body": ["customer.first_name", "order.name"]},
]
JOURNEYS = {
    "order_confirmation": {},
    "cod_confirmation": {},  # ask at once, reminders at 6 h and 24 h, tag for a call at 48 h
    "checkout_recovery": {"discount_code": "COMEBACK10"},  # abandoned after 30 min; reminders at 0, 6 h, 24 h
    "payment_recovery": {},
    "delivery": {},
}


def bench_settings(db_url: str) -> Settings:
    return parse_settings({
        "server": {"log_level": "warning"},
        "database": {"url": db_url},
        "stores": [{
            "key": STORE_KEY, "name": "Bench Naturals", "platform": "shopify", "shop_domain": SHOP,
            "webhook_secret": "bench-pipeline-secret", "timezone": "Asia/Kolkata", "default_country": "IN",
            "whatsapp_phone_number_id": "109876543210987",
            # quiet hours off: nothing deferred. Marketing consent comes from the checkout's phone
            # opt-in (buyer_accepts_sms_marketing) as the connector records it; utility consent from the order's phone.
            "policy": {"quiet_hours": ""},
            "templates": TEMPLATES,
            "journeys": JOURNEYS,
        }],
    }, environ={})


# ---- clocks, memory -----------------------------------------------------------------------


class Clock:
    """The injected clock: the phases set ``now`` as they replay the day."""

    def __init__(self, now: datetime):
        self.now = now

    def __call__(self) -> datetime:
        return self.now


def _proc_value(path: str, field_name: str) -> int | None:
    """The number after ``field_name:`` in a /proc file of this process; None where unreadable (not Linux)."""
    with contextlib.suppress(OSError, ValueError):
        for line in Path(path).read_text().splitlines():
            if line.startswith(field_name + ":"):
                return int(line.split()[1])
    return None


def _status_kb(field_name: str) -> int | None:
    return _proc_value("/proc/self/status", field_name)


def written_bytes() -> int | None:
    """Bytes this process has caused to be written to storage (the WAL, checkpoints)."""
    return _proc_value("/proc/self/io", "write_bytes")


def reset_peak_rss() -> bool:
    """Reset VmHWM to the current RSS (Linux >= 4.0); False where not allowed."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def maxrss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


@dataclass
class Phase:
    name: str
    seconds: float = 0.0
    cpu_seconds: float = 0.0  # this process's CPU time (user + system) in the phase: steadier than wall time on a shared machine
    work: int = 0  # rows written / rows processed / timers fired
    work_label: str = ""
    peak_rss_mb: float | None = None
    written_mb: float | None = None  # bytes this process sent to storage in the phase (/proc/self/io write_bytes): WAL, checkpoints
    rss_start_mb: float | None = None
    note: str = ""
    cut: bool = False
    statements: int = 0  # SQL statements sent (an executemany counts once): SQLAlchemy's per-statement cost dominates
    extra: dict = field(default_factory=dict)


# ---- the phases ------------------------------------------------------------------------------


def to_items(store_id: int, day: list[Webhook]) -> list[InboxItem]:
    """Inbox items as the Shopify webhook route builds them (envelope headers, event-id dedupe key)."""
    items = []
    for w in day:
        at_utc = w.at.astimezone(timezone.utc)
        headers = {
            "x-shopify-topic": w.topic, "x-shopify-shop-domain": SHOP, "x-shopify-api-version": "2026-07",
            "x-shopify-webhook-id": f"wh-{w.event_id}", "x-shopify-event-id": w.event_id,
            "x-shopify-triggered-at": at_utc.strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
        }
        items.append(InboxItem(store_id=store_id, source="shopify", topic=w.topic, dedupe_key=f"shopify:{w.topic}:event:{w.event_id}",
                               raw_body=w.body, headers=headers, triggered_at=at_utc))
    return items


STATEMENTS = [0]  # counted by a before_cursor_execute listener on the engine (see main)


def count_statements(*_: object) -> None:
    STATEMENTS[0] += 1


def start_phase(name: str, track: bool) -> Phase:
    p = Phase(name)
    p.extra["statements_at_start"] = STATEMENTS[0]
    p.extra["cpu_at_start"] = time.process_time()
    p.extra["written_at_start"] = written_bytes()
    p.extra["hwm_reset"] = reset_peak_rss() if track else False
    rss = _status_kb("VmRSS")
    p.rss_start_mb = rss / 1024 if rss is not None else None
    return p


def end_phase(p: Phase) -> None:
    p.statements = STATEMENTS[0] - p.extra["statements_at_start"]
    p.cpu_seconds = time.process_time() - p.extra["cpu_at_start"]
    written = written_bytes()
    if written is not None and p.extra["written_at_start"] is not None:
        p.written_mb = (written - p.extra["written_at_start"]) / 2**20
    hwm = _status_kb("VmHWM")
    if p.extra.get("hwm_reset") and hwm is not None:
        p.peak_rss_mb = hwm / 1024


def phase_ingest(db: Database, items: list[InboxItem], batch: int, deadline: float) -> Phase:
    p = start_phase("1 ingest (write_items)", True)
    p.work_label = "rows stored"
    dupes = 0
    t0 = time.perf_counter()
    for i in range(0, len(items), batch):
        if time.perf_counter() > deadline:
            p.cut = True
            break
        res = write_items(db, items[i : i + batch])
        p.work += sum(res)
        dupes += len(res) - sum(res)
    p.seconds = time.perf_counter() - t0
    end_phase(p)
    p.note = f"batches of {batch}" + (f", {dupes} duplicates" if dupes else "")
    return p


def phase_process(proc: InboxProcessor, clock: Clock, day: list[Webhook], stored: int, deadline: float, trace: bool,
                  slice_s: float | None = DRAIN_SLICE) -> Phase:
    p = start_phase("2 process (batches)", True)
    p.work_label = "rows processed"
    b = proc.batch_size
    if trace:
        tracemalloc.start()
    t0 = time.perf_counter()
    last = 0
    while p.work < stored:
        if time.perf_counter() > deadline:
            p.cut = True
            break
        # transactions as `serve` takes them from a backlog while no webhooks arrive: batches of up
        # to worker.inbox_batch_size rows until the drain slice is spent. Each runs "when" the last
        # row it is likely to take had arrived (as many as the last one took), as a worker keeping up
        # with the webhooks would.
        clock.now = day[min(p.work + max(b, last), stored) - 1].at.astimezone(timezone.utc)
        n = last = proc.process_batch(slice_s)
        p.work += n
        if n == 0:
            break
    p.seconds = time.perf_counter() - t0
    if trace:
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        p.extra["tracemalloc_peak_mb"] = peak / 2**20
    end_phase(p)
    p.note = f"inbox batch {b}, " + (f"slice {slice_s:g} s" if slice_s else "no slice")
    return p


def cod_questions_sent(db: Database, store_id: int) -> int:
    """Untimed, between the phases: the COD questions the process phase queued go out, as the
    dispatcher sends them within seconds (nothing else is dispatched here). The answer deadline
    acts on a customer the question reached; one it reached nobody with is handed to a person."""
    with db.engine.begin() as conn:
        return conn.execute(update(m.OutboxMessage).where(
            m.OutboxMessage.store_id == store_id, m.OutboxMessage.journey == "cod_confirmation", m.OutboxMessage.step == "ask",
            m.OutboxMessage.status == "pending").values(status="sent", updated_at=m.OutboxMessage.due_at)).rowcount


def phase_timers(proc: InboxProcessor, clock: Clock, hours: float, step_minutes: float, deadline: float,
                 slice_s: float | None = DRAIN_SLICE) -> Phase:
    p = start_phase("3 timers (process_timers)", True)
    p.work_label = "timers fired"
    steps = int(hours * 60 / step_minutes)
    busiest = 0
    t0 = time.perf_counter()
    done_steps = 0
    for s in range(1, steps + 1):
        if time.perf_counter() > deadline:
            p.cut = True
            break
        clock.now = DAY_START.astimezone(timezone.utc) + timedelta(minutes=s * step_minutes)
        fired_here = 0
        while True:
            n = proc.process_timers(IDLE_TIMERS, slice_s)
            fired_here += n
            if n == 0 or time.perf_counter() > deadline:
                break
        busiest = max(busiest, fired_here)
        p.work += fired_here
        done_steps = s
    p.seconds = time.perf_counter() - t0
    end_phase(p)
    p.note = f"{done_steps} steps of {step_minutes:g} min ({done_steps * step_minutes / 60:g} h), busiest step {busiest}, batches of {IDLE_TIMERS}"
    return p


# ---- report -----------------------------------------------------------------------------------


def fmt_rate(n: float, s: float) -> str:
    return f"{n / s:,.0f}" if s > 0 else "-"


def counts(db: Database, store_id: int) -> dict:
    with db.engine.connect() as conn:
        inbox = dict(conn.execute(select(m.InboxEvent.status, func.count()).where(m.InboxEvent.store_id == store_id)
                                  .group_by(m.InboxEvent.status)).all())
        failed = conn.execute(select(m.InboxEvent.last_error, func.count()).where(
            m.InboxEvent.store_id == store_id, m.InboxEvent.status == "failed").group_by(m.InboxEvent.last_error)
            .order_by(func.count().desc()).limit(10)).all()
        retrying = conn.execute(select(m.InboxEvent.last_error, func.count()).where(
            m.InboxEvent.store_id == store_id, m.InboxEvent.status == "pending", m.InboxEvent.attempts > 0)
            .group_by(m.InboxEvent.last_error).limit(10)).all()
        O = m.OutboxMessage
        outbox = conn.execute(select(O.journey, O.step, O.channel, O.status, O.skip_reason, func.count())
                              .where(O.store_id == store_id).group_by(O.journey, O.step, O.channel, O.status, O.skip_reason)
                              .order_by(O.journey, O.step, O.status)).all()
        R = m.JourneyRun
        runs = conn.execute(select(R.journey, R.status, func.count()).where(R.store_id == store_id)
                            .group_by(R.journey, R.status).order_by(R.journey, R.status)).all()
        contacts = conn.execute(select(func.count()).select_from(m.Contact).where(m.Contact.store_id == store_id)).scalar()
    return {"inbox": inbox, "failed": failed, "retrying": retrying, "outbox": outbox, "runs": runs, "contacts": contacts}


def report(args: argparse.Namespace, day: list[Webhook], phases: list[Phase], c: dict, gen_s: float, gen_rss: float | None,
           db_label: str, db_bytes: int | None, sqlite: bool) -> None:
    events = len(day)
    n_orders = sum(1 for w in day if w.topic == "orders/create")
    title = (f"pipeline: {n_orders:,} orders + {events - n_orders:,} checkouts = {events:,} events, one store, "
             f"all journeys, {db_label}")
    t = Table(title=title)
    for col in ("phase", "seconds", "CPU s", "events/s", "work", "work/s", "stmts/event", "MB written", "peak RSS MB", "notes"):
        t.add_column(col, justify="left" if col in ("phase", "notes", "work") else "right")
    for p in phases:
        peak = f"{p.peak_rss_mb:,.0f}" if p.peak_rss_mb is not None else "-"
        note = p.note + (" [bold red]CUT at time limit[/]" if p.cut else "")
        if "tracemalloc_peak_mb" in p.extra:
            note += f"; tracemalloc peak {p.extra['tracemalloc_peak_mb']:,.1f} MB (traced: slower)"
        t.add_row(p.name, f"{p.seconds:.2f}", f"{p.cpu_seconds:.2f}", fmt_rate(events, p.seconds), f"{p.work:,} {p.work_label}",
                  fmt_rate(p.work, p.seconds), f"{p.statements / events:.1f}" if events else "-",
                  f"{p.written_mb:,.0f}" if p.written_mb is not None else "-", peak, note)
    total = sum(p.seconds for p in phases)
    statements = sum(p.statements for p in phases)
    cpu = sum(p.cpu_seconds for p in phases)
    written = [p.written_mb for p in phases]
    t.add_row("[bold]end to end (1+2+3)[/]", f"[bold]{total:.2f}[/]", f"{cpu:.2f}", f"[bold]{fmt_rate(events, total)}[/]", "", "",
              f"{statements / events:.1f}" if events else "-", f"{sum(written):,.0f}" if None not in written else "-",  # type: ignore[arg-type]
              f"{maxrss_mb():,.0f} (ru_maxrss)",
              "whole process, incl. the pre-generated payloads")
    console.print(t)
    rss_note = f", RSS after generation {gen_rss:,.0f} MB" if gen_rss is not None else ""
    size = f", database {db_bytes / 2**20:,.0f} MB" if db_bytes is not None else ""
    console.print(f"[dim]generation (untimed): {gen_s:.1f} s, {sum(len(w.body) for w in day) / 2**20:,.0f} MB of JSON"
                  f"{rss_note}{size}; contacts {c['contacts']:,}; inbox {dict(sorted(c['inbox'].items()))}[/]")
    if any(p.peak_rss_mb is None for p in phases):
        console.print("[dim]peak RSS per phase unavailable (no /proc/self/clear_refs): see ru_maxrss[/]")
    if not args.tracemalloc:
        console.print("[dim]memory: RSS only (VmHWM per phase, reset before each; ru_maxrss for the process). "
                      "tracemalloc off: --tracemalloc traces the process phase at a large speed cost.[/]")

    ot = Table(title="outbox rows by journey / step / status (nothing is dispatched here)")
    for col in ("journey", "step", "channel", "status", "skip reason", "rows"):
        ot.add_column(col, justify="right" if col == "rows" else "left")
    for journey, step, channel, status, reason, n in c["outbox"]:
        ot.add_row(journey or "-", step or "-", channel, status, reason or "", f"{n:,}")
    ot.add_row("[bold]total[/]", "", "", "", "", f"[bold]{sum(r[-1] for r in c['outbox']):,}[/]")
    console.print(ot)
    rt = Table(title="journey runs by status")
    for col in ("journey", "status", "runs"):
        rt.add_column(col, justify="right" if col == "runs" else "left")
    for journey, status, n in c["runs"]:
        rt.add_row(journey, status, f"{n:,}")
    console.print(rt)

    rate = events / total if total > 0 else 0.0
    complete = not any(p.cut for p in phases) and len(phases) == 3
    if sqlite:
        verdict = ("[green]met[/]" if rate >= TARGET else "[bold red]missed[/]") if complete else "[yellow]incomplete run[/]"
        console.print(f"target: >= {TARGET:,.0f} events/s end to end on SQLite -> {rate:,.0f} events/s: {verdict}")
    else:
        console.print(f"target: >= {TARGET:,.0f} events/s end to end on SQLite (this run: {db_label}) -> {rate:,.0f} events/s")
    if args.orders != 50000 or args.checkouts != 100000:
        console.print("[dim]the issue's full day: --orders 50000 --checkouts 100000[/]")
    phase = {p.name.split(" ")[1]: p for p in phases}
    detail = ", ".join(f"{k} {fmt_rate(events, v.seconds)}/s" for k, v in phase.items())
    record("pipeline", f"events/s end to end, {events:,} events ({detail})", f"{rate:,.0f}", f">= {TARGET:,.0f} on SQLite",
           rate >= TARGET if sqlite and complete else None, peak=round(maxrss_mb()))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--orders", type=int, default=5000, help="orders/create webhooks (issue's day: 50000; default is a tenth)")
    ap.add_argument("--checkouts", type=int, default=10000, help="checkouts/create webhooks (issue's day: 100000; default a tenth)")
    ap.add_argument("--db-url", default=None, help="default: a fresh SQLite file in a temporary directory")
    ap.add_argument("--batch", type=int, default=256, help="inbox items per write_items call")
    ap.add_argument("--timer-hours", type=float, default=72.0, help="simulated hours the timer phase walks from the day's start")
    ap.add_argument("--step-minutes", type=float, default=10.0, help="simulated minutes per timer step")
    ap.add_argument("--seed", type=int, default=20261120)
    ap.add_argument("--time-limit", type=float, default=300.0, help="seconds for the timed phases together; then stop and report")
    ap.add_argument("--slice", type=float, default=DRAIN_SLICE,
                    help="seconds a process or timer batch may run before it ends (default: runtime.DRAIN_SLICE, as serve "
                         "drains a backlog); 0 = batches end by size only, so what they do does not depend on how fast the "
                         "machine is right now: use it for instruction counts under valgrind")
    ap.add_argument("--tracemalloc", action="store_true", help="trace allocations in the process phase (slows it a lot)")
    args = ap.parse_args()
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    if args.orders < 0 or args.checkouts < 0 or args.orders + args.checkouts == 0 or args.batch < 1:
        ap.error("need some events and --batch >= 1")

    console.print(f"[dim]generating {args.orders:,} orders and {args.checkouts:,} checkouts (untimed)...[/]")
    g0 = time.perf_counter()
    day = build_day(args.orders, args.checkouts, seed=args.seed)
    gen_s = time.perf_counter() - g0

    try:
        with tempfile.TemporaryDirectory(prefix="storeloop-pipeline-") as tmp:
            url = args.db_url or f"sqlite:///{Path(tmp) / 'pipeline.db'}"
            settings = bench_settings(url)
            engine = make_engine(settings.database.url)
            event.listen(engine, "before_cursor_execute", count_statements)
            migrate(engine)
            db = Database(engine)
            db.start_checkpoints()  # as `storeloop serve` and `worker` run (SQLite): the log is also copied in a thread
            try:
                store_ids = sync_stores(db, [(STORE_KEY, "shopify")])
                store_id = store_ids[STORE_KEY]
                with db.engine.connect() as conn:
                    existing = conn.execute(select(func.count()).select_from(m.InboxEvent).where(m.InboxEvent.store_id == store_id)).scalar()
                if existing:
                    console.print(f"[red]{url}: store {STORE_KEY!r} already has {existing} inbox rows; use a fresh database[/]")
                    return 2
                items = to_items(store_id, day)
                # the pre-generated day is the bench's, not the connector's: a worker never holds a
                # day of payloads, so the collector should not walk them during the timed phases;
                # then the collector's settings of `storeloop serve` / `worker` (runtime.tune_gc)
                gc.collect()
                tune_gc()
                gen_rss = (_status_kb("VmRSS") or 0) / 1024 or None
                clock = Clock(DAY_START.astimezone(timezone.utc))
                proc = InboxProcessor(db, settings, store_ids, normalizers(), clock=clock)
                deadline = time.perf_counter() + args.time_limit
                phases = [phase_ingest(db, items, args.batch, deadline)]
                del items
                if not phases[-1].cut:
                    phases.append(phase_process(proc, clock, day, phases[0].work, deadline, args.tracemalloc, args.slice or None))
                if not phases[-1].cut:
                    cod_questions_sent(db, store_id)
                    phases.append(phase_timers(proc, clock, args.timer_hours, args.step_minutes, deadline, args.slice or None))
                c = counts(db, store_id)
                db_bytes = None
                if db.is_sqlite and engine.url.database:
                    db_bytes = sum(p.stat().st_size for p in Path(engine.url.database).parent.glob(Path(engine.url.database).name + "*"))
                label = "SQLite (temporary file)" if not args.db_url else engine.url.render_as_string(hide_password=True)
                report(args, day, phases, c, gen_s, gen_rss, label, db_bytes, db.is_sqlite)
            finally:
                db.dispose()
    except KeyboardInterrupt:
        console.print("[yellow]interrupted[/]")
        return 130

    if c["retrying"]:
        console.print("[yellow]rows still pending after an error (will retry):[/]")
        for err, n in c["retrying"]:
            console.print(f"  {n:,} x {err}")
    if c["failed"]:
        console.print(f"[bold red]{sum(n for _, n in c['failed']):,} inbox rows ended failed (a bug); last_error:[/]")
        for err, n in c["failed"]:
            console.print(f"  {n:,} x {err}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
