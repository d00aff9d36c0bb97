"""Command line: serve, worker, migrate, check-config, demo, sync, replay, report, install..."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Optional

import typer
from rich.console import Console
from rich.markup import escape

from connector.config import Settings, load_settings
from connector.errors import ConfigError, DatabaseNotReadyError

if TYPE_CHECKING:  # the commands import datetime when they run; annotations only name it
    from datetime import datetime

app = typer.Typer(help="storeloop: store events to WhatsApp journeys.", no_args_is_help=True, add_completion=False)
console = Console(stderr=True)
ConfigOpt = Annotated[Path, typer.Option("--config", "-c", help="TOML configuration file", envvar="STORELOOP_CONFIG")]
StoreOpt = Annotated[str, typer.Option("--store", help="store key from the configuration")]
# who a privacy command is about (``customer export``, ``customer redact``)
PhoneOpt = Annotated[Optional[str], typer.Option(help="the customer's phone (any format; the store's country is the default)")]
EmailOpt = Annotated[Optional[str], typer.Option(help="the customer's email")]
CustomerIdOpt = Annotated[Optional[str], typer.Option("--customer-id", help="the store's customer id")]


def _load(path: Path) -> Settings:
    """The settings, or exit 2 listing every problem; settings that work against each other are
    said (and logged) but do not stop it."""
    import logging

    try:
        settings = load_settings(path)
    except ConfigError as exc:
        console.print(f"[bold red]{escape(str(path))}: invalid configuration[/]")
        for p, line in zip(exc.problems, exc.lines):
            console.print(f"  - {p}", markup=False, highlight=False, soft_wrap=True)  # one line each: greppable
            if line is not None:  # where it is written: the tenth [[stores]] table is hard to find by counting
                console.print(f"    at {path.name} line {line}", markup=False, highlight=False, soft_wrap=True)
        raise typer.Exit(2) from None
    for warning in settings.warnings():
        console.print(f"[yellow]warning:[/] {escape(warning)}", highlight=False)
        logging.getLogger("storeloop.config").warning("%s", warning)
    return settings


def _store(settings: Settings, key: str) -> Any:
    """The configured store ``key``, or exit 2 naming the stores there are."""
    chosen = next((s for s in settings.stores if s.key == key), None)
    if chosen is None:
        known = ", ".join(s.key for s in settings.stores) or "none configured"
        console.print(f"[bold red]unknown store {escape(repr(key))}[/] (stores: {known})", highlight=False)
        raise typer.Exit(2)
    return chosen


def _refuse(verb: str, exc: DatabaseNotReadyError) -> typer.Exit:
    """Exit 3: the database cannot be reached or is not migrated. Said on stderr and logged
    (``serve`` and ``worker`` log to a collector); the URL in it never carries its password."""
    import logging

    console.print(f"[bold red]{verb}:[/] {escape(str(exc))}", highlight=False)
    if logging.getLogger("storeloop").handlers:  # configured (serve, worker); else Python's fallback would say it twice
        logging.getLogger("storeloop.cli").error("%s: %s", verb, exc)
    return typer.Exit(3)


def _open_db(settings: Settings, verb: str) -> tuple[Any, dict[str, int]]:
    """The database at the current schema with every configured store registered, or exit 3."""
    from connector.storage.db import Database, ensure_schema
    from connector.storage.inbox import sync_stores

    db = Database.from_url(settings.database.url)
    try:
        ensure_schema(db.engine, auto_migrate=settings.database.auto_migrate)
    except DatabaseNotReadyError as exc:
        db.dispose()
        raise _refuse(f"refusing to {verb}", exc) from None
    return db, sync_stores(db, [(s.key, s.platform) for s in settings.stores])


@app.command("check-config")
def check_config(path: Annotated[Path, typer.Argument(help="TOML configuration file")]) -> None:
    """Validate a configuration file and print a summary without secrets."""
    settings = _load(path)
    from rich.table import Table

    out = Console()
    summary = settings.summary()
    out.print(f"[green]{path}: valid[/] ({len(settings.stores)} store(s))")
    table = Table("store", "platform", "domain / site", "time zone", "country", "WhatsApp number id", "webhook secret")
    for s in summary["stores"]:
        table.add_row(
            s["key"], s["platform"], str(s.get("shop_domain") or s.get("site_url")), s["timezone"], s["default_country"],
            str(s["whatsapp_phone_number_id"] or "-"), s["webhook_secret"],
        )
    out.print(table)
    out.print_json(json.dumps({k: v for k, v in summary.items() if k != "stores"}))


@app.command()
def migrate(config: ConfigOpt = Path("storeloop.toml")) -> None:
    """Bring the database schema to the version this code needs."""
    from connector.storage.db import current_revision, head_revision, make_engine, migrate as run

    settings = _load(config)
    engine = make_engine(settings.database.url)
    try:
        before = current_revision(engine)
        run(engine)
    except DatabaseNotReadyError as exc:
        raise _refuse("cannot migrate", exc) from None
    finally:
        engine.dispose()
    console.print(f"database at {head_revision()} (was {before or 'empty'})")


@app.command()
def serve(
    config: ConfigOpt = Path("storeloop.toml"),
    host: Annotated[Optional[str], typer.Option(help="overrides server.host")] = None,
    port: Annotated[Optional[int], typer.Option(help="overrides server.port", min=1, max=65535)] = None,
    workers: Annotated[int, typer.Option(help="uvicorn worker processes", min=1)] = 1,
    no_worker: Annotated[bool, typer.Option("--no-worker", help="web only; run `storeloop worker` separately")] = False,
) -> None:
    """Run the web server (webhooks, admin API) and, unless --no-worker, the inbox processor."""
    import uvicorn

    from connector.logs import configure_logging
    from connector.storage.db import ensure_schema, make_engine

    settings = _load(config)
    configure_logging(settings.server.log_level)
    engine = make_engine(settings.database.url)
    try:
        status = ensure_schema(engine, auto_migrate=settings.database.auto_migrate)
    except DatabaseNotReadyError as exc:
        raise _refuse("refusing to start", exc) from None
    finally:
        engine.dispose()
    console.print(f"database schema {status}; WhatsApp sender: {'dry-run' if settings.whatsapp.dry_run else 'live'}")
    bound = host or settings.server.host
    base = getattr(settings.server, "public_base_url", None) or f"http://{'127.0.0.1' if bound in ('0.0.0.0', '::') else bound}:{port or settings.server.port}"
    console.print(f"dashboard: {base}/dashboard (sign in with server.admin_token)")
    os.environ["STORELOOP_CONFIG"] = str(config.resolve())
    os.environ["STORELOOP_RUN_WORKER"] = "0" if no_worker else "1"
    os.environ["STORELOOP_WORKERS"] = str(workers)  # one process takes every webhook: its processor can yield to them
    uvicorn.run(
        "connector.web.factory:app",
        factory=True,
        host=host or settings.server.host,
        port=port or settings.server.port,
        workers=workers,
        log_level=settings.server.log_level,
        access_log=False,
        loop="uvloop",
        http="httptools",
    )


@app.command()
def worker(config: ConfigOpt = Path("storeloop.toml")) -> None:
    """Process the inbox without the web server (scale-out role)."""
    from connector.logs import configure_logging
    from connector.runtime import Runtime

    settings = _load(config)
    configure_logging(settings.server.log_level)

    async def main() -> None:
        runtime = Runtime(settings, run_worker=True)
        try:
            await runtime.start()
        except DatabaseNotReadyError as exc:
            raise _refuse("refusing to start", exc) from None
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        console.print("worker running; Ctrl-C to stop")
        await stop.wait()
        await runtime.stop()

    asyncio.run(main())


templates_app = typer.Typer(help="WhatsApp message templates: export definitions, check them against the account.", no_args_is_help=True)
app.add_typer(templates_app, name="templates")


@templates_app.command("export")
def templates_export(
    config: ConfigOpt = Path("storeloop.toml"),
    store: Annotated[Optional[str], typer.Option(help="only this store")] = None,
) -> None:
    """Print the template definitions (category, body with examples, buttons) to submit to WhatsApp Manager."""
    from connector.templates import definition

    settings = _load(config)
    if store is not None:
        _store(settings, store)  # a key that is not configured: exit 2, not an empty list
    seen: dict[tuple[str, str], dict] = {}
    for s in settings.stores:
        if store and s.key != store:
            continue
        for tpl in s.templates:
            seen.setdefault((tpl.name, tpl.language), definition(tpl))
    typer.echo(json.dumps(list(seen.values()), indent=2, ensure_ascii=False))


@templates_app.command("check")
def templates_check(config: ConfigOpt = Path("storeloop.toml")) -> None:
    """Compare configured templates with the business account's (Graph API): missing, unapproved, mismatched."""
    from rich.table import Table

    from connector.template_check import check_templates

    settings = _load(config)
    wa = settings.whatsapp
    if wa.dry_run or not wa.business_account_id:
        console.print("[red]templates check needs whatsapp.access_token and whatsapp.business_account_id[/]")
        raise typer.Exit(2)
    from adapters.whatsapp.client import WhatsAppClient

    async def fetch() -> list[dict]:
        assert wa.access_token is not None and wa.business_account_id is not None
        async with WhatsAppClient(str(wa.graph_base_url).rstrip("/"), wa.api_version, wa.access_token.get_secret_value()) as client:
            return await client.list_templates(wa.business_account_id)

    try:
        remote = asyncio.run(fetch())
    except Exception as exc:
        console.print(f"[red]could not read the account's templates:[/] {escape(str(exc))}", highlight=False)
        raise typer.Exit(1) from None
    findings = check_templates(settings, remote)
    out = Console()
    table = Table("store", "step", "template", "language", "result", "detail")
    for f in findings:
        colour = "green" if f.ok else "red"
        table.add_row(f.store, f.step, f.name, f.language, f"[{colour}]{f.result}[/]", f.detail)
    out.print(table)
    bad = [f for f in findings if not f.ok]
    out.print(f"{len(findings) - len(bad)} ok, {len(bad)} need attention")
    raise typer.Exit(1 if bad else 0)


@app.command()
def demo(
    days: Annotated[int, typer.Option(help="simulated days (the report covers the last complete week)", min=1, max=3650)] = 25,
    scale: Annotated[float, typer.Option(help="orders and checkouts per day, relative to the default store")] = 1.0,
    seed: Annotated[int, typer.Option(help="the simulation's random seed")] = 7,
    keep_running: Annotated[bool, typer.Option("--keep-running", help="keep serving (admin API, dashboard) after the run")] = False,
    port: Annotated[int, typer.Option(help="0 picks a free port", min=0, max=65535)] = 0,
) -> None:
    """Run the real connector against a simulated store and WhatsApp on 127.0.0.1, then print the weekly report."""
    from connector.demo import run_demo

    if not scale > 0:
        raise typer.BadParameter(f"{scale:g}: must be more than 0 (e.g. 0.5 for half the orders)", param_hint="--scale")
    code = run_demo(days=days, seed=seed, keep_running=keep_running, port=port, scale=scale)
    raise typer.Exit(code)


def _parse_since(value: str, now: datetime) -> datetime:
    """``365d`` / ``12h`` back from now, or an ISO date / datetime (UTC when naive)."""
    import re
    from datetime import datetime, timedelta, timezone

    text = value.strip()
    m = re.fullmatch(r"(\d+)\s*([dh])", text, re.IGNORECASE)
    try:
        if m:
            n = int(m.group(1))
            return now - (timedelta(days=n) if m.group(2).lower() == "d" else timedelta(hours=n))
        dt = datetime.fromisoformat(text.replace("Z", "+00:00"))
        return dt.replace(tzinfo=timezone.utc) if dt.tzinfo is None else dt.astimezone(timezone.utc)
    except ValueError:
        raise typer.BadParameter(f"{value!r}: use Nd, Nh or an ISO date like 2026-01-31", param_hint="--since") from None
    except OverflowError:
        raise typer.BadParameter(f"{value!r} is before the year 1", param_hint="--since") from None


def backfill_hint(db: Any, store: Any, store_id: int) -> str | None:
    """What to run next while no backfill has imported the store's order history (None once one has).

    Printed by ``storeloop sync`` without ``--backfill``, and meant for the end of ``storeloop install``.
    """
    from connector.sync import BACKFILL_CURSOR, read_cursor

    if read_cursor(db, store_id, BACKFILL_CURSOR) is not None:
        return None
    extra = " (Shopify shows orders older than 60 days only with the read_all_orders scope)" if store.platform == "shopify" else ""
    return (f"no order history imported yet for {store.key}: run `storeloop sync --store {store.key} --backfill --since 365d` "
            f"so reorder cycles can be learned from it (imported orders send no messages){extra}")


def _sync_rows(report: Any) -> list[tuple[str, str]]:
    rows = []
    for key, value in report.as_dict().items():
        if isinstance(value, list):
            value = ", ".join(value) if value else "-"
        rows.append((key, str(value)))
    return rows


@app.command()
def sync(
    config: ConfigOpt = Path("storeloop.toml"),
    store: StoreOpt = ...,  # type: ignore[assignment]
    backfill: Annotated[bool, typer.Option("--backfill", help="read from --since (default 365d) instead of the stored cursor")] = False,
    since: Annotated[Optional[str], typer.Option(help="backfill start: Nd, Nh or an ISO date (implies --backfill)")] = None,
) -> None:
    """Reconcile a store's orders once: fetch what changed since the last run into the inbox
    (Shopify: and the marketing consent of the customers changed since the last run).

    A backfill (``--backfill`` / ``--since``) also reads every product first (tags and cycle
    metafields for the reorder journey) and shows a progress bar against the platform's count.
    WooCommerce: webhooks of ours that WooCommerce disabled are switched back on first.
    """
    from datetime import datetime, timedelta, timezone

    from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
    from rich.table import Table

    from connector.sync import PLACED_WITHIN, ProductSyncReport, SyncError, SyncReport, reconcile_orders, sync_products, woocommerce_delivery_url
    from jobs.scheduler import has_credentials, make_client

    settings = _load(config)
    chosen = _store(settings, store)
    try:
        stored = has_credentials(chosen) or _has_stored_credentials(settings, chosen)
    except DatabaseNotReadyError as exc:
        raise _refuse("refusing to sync", exc) from None
    if not stored:
        what = "access_token" if chosen.platform == "shopify" else "consumer_key and consumer_secret"
        console.print(f"[bold red]store {store!r} has no API credentials:[/] set {what} to sync "
                      f"(or `storeloop install {chosen.platform} --store {chosen.key}`)")
        raise typer.Exit(2)
    now = datetime.now(timezone.utc)
    start = _parse_since(since, now) if since else (_parse_since("365d", now) if backfill else None)
    public = settings.server.public_base_url
    hook_url = woocommerce_delivery_url(public, chosen.key) if public and chosen.platform == "woocommerce" else None
    db, store_ids = _open_db(settings, "sync")
    products: ProductSyncReport | None = None
    try:
        store_id = store_ids[chosen.key]

        async def run() -> SyncReport:
            nonlocal products
            columns = (SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
            with Progress(*columns, console=console) as bar:
                async with make_client(chosen, db) as client:  # credentials stored by install first
                    if start is not None and "reorder" in chosen.enabled_journeys():
                        task = bar.add_task(f"{chosen.key}: products", total=None)
                        products = await sync_products(db, chosen, store_id, client, now=now)
                        bar.update(task, completed=products.products_seen, total=products.products_seen)
                    task = bar.add_task(f"{chosen.key}: orders", total=None)

                    def progress(report: SyncReport) -> None:
                        total = report.orders_total
                        if total is not None:  # an AT_LEAST count, or orders changed meanwhile: never past the end
                            total = max(total, report.orders_seen)
                        bar.update(task, completed=report.orders_seen, total=total,
                                   description=f"{chosen.key}: orders, {report.pages} page(s), {report.new_rows} new")

                    # a backfill is history: orders placed before the connector knew the store get no messages
                    placed_within = timedelta(0) if start is not None else PLACED_WITHIN
                    return await reconcile_orders(db, chosen, store_id, client, now=now, since=start, progress=progress,
                                                  placed_within=placed_within, reenable_webhooks_under=hook_url)

        try:
            report = asyncio.run(run())
        except SyncError as exc:
            console.print(f"[bold red]sync stopped:[/] {escape(str(exc))}", highlight=False)
            raise typer.Exit(1) from None
        except Exception as exc:  # RetryableError / PermanentError from the platform: short, secret-free messages
            console.print(f"[bold red]sync failed:[/] {exc.__class__.__name__}: {escape(str(exc))}", highlight=False)
            raise typer.Exit(1) from None
        hint = backfill_hint(db, chosen, store_id) if start is None else None
    finally:
        db.dispose()
    table = Table("field", "value")
    for key, value in _sync_rows(report):
        table.add_row(key, escape(value))
    Console().print(table)
    total = f" of {report.orders_total}" if report.orders_total is not None else ""
    console.print(f"{report.orders_seen}{total} order(s) read in {report.pages} page(s); {report.new_rows} new inbox row(s)"
                  + ("; a running worker processes them" if report.new_rows else ""), highlight=False)
    if products is not None:
        console.print(f"{products.products_seen} product(s) read, {products.new_rows} with new tags or cycle", highlight=False)
    if report.customers_failed:
        console.print(f"[red]customers' consent not read back:[/] {escape(report.customers_failed)}", highlight=False)
    elif chosen.platform == "shopify":
        console.print(f"{report.customers_seen} changed customer(s) read back for their marketing consent", highlight=False)
    for label in report.webhooks_reenabled:
        console.print(f"[yellow]re-enabled WooCommerce webhook {escape(label)}[/] (WooCommerce had disabled it after failed deliveries)",
                      highlight=False)
    for why in report.webhooks_failed:
        console.print(f"[red]WooCommerce webhook not re-enabled:[/] {escape(why)}", highlight=False)
    if hint:
        console.print(f"hint: {escape(hint)}", highlight=False)


@app.command()
def replay(
    config: ConfigOpt = Path("storeloop.toml"),
    store: StoreOpt = ...,  # type: ignore[assignment]
    ids: Annotated[Optional[list[int]], typer.Option("--id", help="only this inbox row (repeat for several)")] = None,
    status: Annotated[str, typer.Option(help="which rows: failed (default) or held")] = "failed",
    since: Annotated[Optional[str], typer.Option(help="only rows received since: Nd, Nh or an ISO date")] = None,
    timers: Annotated[bool, typer.Option("--timers", help="instead: fire the journey runs whose timer raised at once")] = False,
) -> None:
    """Process a store's failed inbox rows again, after the fix for why they failed.

    The rows become pending as if just received (attempts reset, due now) and the worker
    (``serve`` or ``worker``) processes them at its next poll. Harmless for an event that
    reached the connector some other way meanwhile: it is stale, and a journey never sends
    a step twice for one order or checkout.

    With ``--timers``: the store's journey runs whose timer raised (each waits, tried again
    after a growing pause) are due now instead; the worker fires them at its next poll.
    """
    from datetime import datetime, timezone

    from rich.table import Table

    from connector.admin import REPLAYABLE, replay_inbox

    if status not in REPLAYABLE:
        console.print(f"[bold red]--status must be one of {', '.join(REPLAYABLE)}[/]")
        raise typer.Exit(2)
    settings = _load(config)
    chosen = _store(settings, store)
    now = datetime.now(timezone.utc)
    if timers:
        _retry_timers(settings, chosen.key, now)
        return
    start = _parse_since(since, now) if since else None
    db, store_ids = _open_db(settings, "replay")
    try:
        result = replay_inbox(db, store_ids[chosen.key], ids=ids or None, status=status, since=start)
    finally:
        db.dispose()
    if result.rows:
        shown = 50
        table = Table("id", "source", "topic", "received", "last error", title=f"{chosen.key}: inbox rows made pending again")
        for row in result.rows[:shown]:
            table.add_row(str(row["id"]), row["source"], escape(row["topic"]), (row["received_at"] or "")[:19],
                          escape((row["error"] or "")[:120]))
        Console().print(table)
        more = f" ({len(result.rows) - shown} more not listed)" if len(result.rows) > shown else ""
        console.print(f"{len(result.rows)} {status} row(s) replayed{more}; a running worker processes them within "
                      f"{settings.worker.inbox_poll_seconds:g} s", highlight=False, soft_wrap=True)
    elif not result.refused:
        console.print(f"no {status} inbox rows in {chosen.key}" + (" since then" if start else ""), highlight=False)
    for row_id, why in result.refused.items():
        console.print(f"[yellow]row {row_id} not replayed:[/] {escape(why)}", highlight=False, soft_wrap=True)
    if ids and result.refused:
        raise typer.Exit(1)


def _retry_timers(settings: Settings, store_key: str, now: Any) -> None:
    """``replay --timers``: the store's parked journey runs due now (``journeys/timer_failures.py``)."""
    from connector.journeys.timer_failures import retry_now

    db, store_ids = _open_db(settings, "replay")
    try:
        ids = retry_now(db, store_ids[store_key], now)
    finally:
        db.dispose()
    if not ids:
        console.print(f"no journey run of {store_key} waits after its timer raised", highlight=False)
        return
    shown = ", ".join(str(i) for i in ids[:50]) + (f" and {len(ids) - 50} more" if len(ids) > 50 else "")
    console.print(f"{len(ids)} journey run(s) due now: {shown}; a running worker fires them at its next timer round",
                  highlight=False, soft_wrap=True)


@app.command()
def windows(
    config: ConfigOpt = Path("storeloop.toml"),
    store: StoreOpt = ...,  # type: ignore[assignment]
    days: Annotated[float, typer.Option(help="show windows opening within this many days", min=0, max=3650)] = 7,
    limit: Annotated[int, typer.Option(help="at most this many rows", min=1)] = 200,
) -> None:
    """List upcoming reorder windows (refreshed first): who will hear about what, and when."""
    from datetime import datetime, timedelta, timezone

    from rich.table import Table

    from connector.contacts import redact_phone
    from connector.reorder.windows import config_for, refresh_windows, upcoming

    settings = _load(config)
    chosen = _store(settings, store)
    if config_for(chosen) is None:
        console.print(f"[bold red]store {store!r} does not run the reorder journey:[/] add \\[stores.journeys.reorder] to the configuration")
        raise typer.Exit(2)
    now = datetime.now(timezone.utc)
    db, store_ids = _open_db(settings, "read windows")
    try:
        store_id = store_ids[chosen.key]
        scan = refresh_windows(db, chosen, store_id, now)
        rows = upcoming(db, store_id, now + timedelta(days=days), limit=limit)
    finally:
        db.dispose()
    tz = chosen.tz
    table = Table(title=f"{chosen.key}: reorder windows opening in the next {days:g} days ({len(rows)} shown)")
    for col in ("opens", "customer", "product", "qty", "cycle", "from", "anchor"):
        table.add_column(col, justify="right" if col in ("qty", "cycle") else "left")
    for w in rows:
        when = "due now" if w.opens_at <= now else w.opens_at.astimezone(tz).strftime("%a %d %b %H:%M")
        who = " ".join(x for x in (w.first_name, redact_phone(w.phone_e164) if w.phone_e164 else None) if x) or f"contact {w.contact_id}"
        table.add_row(when, who, w.title, str(w.quantity), f"{w.cycle_days:g} d", w.cycle_source,
                      f"{w.anchor} {w.anchor_at.astimezone(tz):%d %b}")
    Console().print(table)
    console.print(f"{scan.mode} scan: {scan.customers} customer(s), {scan.windows} window(s) written, {scan.learned} cycle(s) learned")


@app.command()
def report(
    config: ConfigOpt = Path("storeloop.toml"),
    store: StoreOpt = ...,  # type: ignore[assignment]
    week: Annotated[Optional[str], typer.Option(help="ISO week, e.g. 2026-W47 (default: the last complete week)")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print the report as JSON")] = False,
) -> None:
    """The weekly journey audit: each stage's KPIs against last week, message health, lift, the biggest leak."""
    import json as _json
    from datetime import datetime, timezone

    from connector.reports import build_report, parse_week

    settings = _load(config)
    chosen = _store(settings, store)
    try:
        period = parse_week(week, chosen.tz, datetime.now(timezone.utc))
    except ValueError as exc:
        console.print(f"[bold red]{escape(str(exc))}[/]", highlight=False)
        raise typer.Exit(2) from None
    db, store_ids = _open_db(settings, "report")
    try:
        store_id = store_ids[chosen.key]
        data = build_report(db, chosen, store_id, period)
    finally:
        db.dispose()
    if as_json:
        typer.echo(_json.dumps(data, indent=2))
        return
    from connector.report_view import render_report

    render_report(data, Console(), chosen.name or chosen.key)


# ---- store install and secrets at rest (connector/install, connector/secrets.py) ----


install_app = typer.Typer(help="Connect a store: tokens (stored encrypted) and the webhooks the connector needs.",
                          no_args_is_help=True)
app.add_typer(install_app, name="install")


def _has_stored_credentials(settings: Settings, store: object) -> bool:
    """Credentials stored by install, without decrypting (False when the database is not there
    yet); ``DatabaseUnavailableError`` when it cannot be reached, rather than a wrong "no credentials"."""
    from connector.install.credentials import has_stored_credentials
    from connector.storage.db import Database, connect

    db = Database.from_url(settings.database.url)
    try:
        connect(db.engine).close()
        return has_stored_credentials(db, store)
    finally:
        db.dispose()


def _install_target(config: Path, store: str, platform: str):  # type: ignore[no-untyped-def]
    """Settings, the chosen store, the migrated database and the store's id; exits with a clear message."""
    from connector.secrets import SecretBox, SecretsUnavailable
    from connector.storage.db import Database, ensure_schema
    from connector.storage.inbox import sync_stores

    settings = _load(config)
    chosen = next((s for s in settings.stores if s.key == store), None)
    if chosen is None or chosen.platform != platform:
        known = ", ".join(s.key for s in settings.stores if s.platform == platform) or "none configured"
        console.print(f"[bold red]no {platform} store {escape(repr(store))}[/] ({platform} stores: {known})", highlight=False)
        raise typer.Exit(2)
    try:
        box = SecretBox.from_env()
    except SecretsUnavailable as exc:
        console.print(f"[bold red]refusing to install:[/] {escape(str(exc))}", highlight=False)
        raise typer.Exit(2) from None
    db = Database.from_url(settings.database.url)
    try:
        ensure_schema(db.engine, auto_migrate=settings.database.auto_migrate)
    except DatabaseNotReadyError as exc:
        db.dispose()
        raise _refuse("refusing to install", exc) from None
    store_id = sync_stores(db, [(s.key, s.platform) for s in settings.stores])[chosen.key]
    return settings, chosen, db, store_id, box


def _topics_table(title: str, rows: list[tuple[str, str, str]]) -> None:
    from rich.table import Table

    colours = {"created": "green", "already present": "cyan", "re-activated": "yellow", "secret updated": "yellow",
               "updated": "yellow", "failed": "red", "also at": "yellow"}
    table = Table("topic", "result", "detail", title=title)
    for topic, result, detail in rows:
        table.add_row(escape(topic), f"[{colours.get(result, 'white')}]{result}[/]", escape(detail))
    Console().print(table)


def _install_ending(out: Console, report: Any, hint: str | None) -> None:
    """What every install ends with: the products read for the reorder journey (or why not), then
    the backfill hint while no order history was imported."""
    from connector.install.products import products_line

    line = products_line(report.products, report.products_error)
    if line is not None:
        out.print(f"[yellow]{escape(line)}[/]" if report.products_error else escape(line), highlight=False)
    if hint:
        out.print(f"hint: {escape(hint)}", highlight=False, soft_wrap=True)


@install_app.command("shopify")
def install_shopify_cmd(
    config: ConfigOpt = Path("storeloop.toml"),
    store: StoreOpt = ...,  # type: ignore[assignment]
) -> None:
    """Own store: client credentials grant (client_id + client_secret), or the legacy access_token;
    then register the webhook subscriptions (idempotent) and, for the reorder journey, read every
    product once. Other organisations' stores install from their admin through /shopify/install."""
    from datetime import datetime, timezone

    from connector.install.shopify import InstallRefused, install_shopify, webhook_rows, webhook_summary

    settings, chosen, db, store_id, box = _install_target(config, store, "shopify")
    try:
        report = asyncio.run(install_shopify(db, settings, chosen, store_id, datetime.now(timezone.utc), box=box))
        hint = backfill_hint(db, chosen, store_id)
    except InstallRefused as exc:
        console.print(f"[bold red]install refused:[/] {escape(str(exc))}", highlight=False)
        raise typer.Exit(2) from None
    except Exception as exc:  # the token grant failed: RetryableError / PermanentError, short and secret-free
        console.print(f"[bold red]install failed:[/] {exc.__class__.__name__}: {escape(str(exc))}", highlight=False)
        raise typer.Exit(1) from None
    finally:
        db.dispose()
    out = Console()
    expiry = f", expires {report.expires_at:%Y-%m-%d %H:%M} UTC (renewed automatically)" if report.expires_at else ""
    out.print(f"[bold]{report.store}[/] ({report.shop}): token: {report.token}{expiry}")
    hooks = report.webhooks
    if hooks is not None:
        _topics_table(f"webhook subscriptions -> {hooks.uri}", webhook_rows(hooks))
        out.print(webhook_summary(hooks))
    if report.webhook_error:
        out.print(f"[red]webhooks not registered:[/] {escape(report.webhook_error)}", highlight=False)
    if report.catch_up_error:
        out.print(f"[yellow]orders changed while the app was uninstalled not read back: {escape(report.catch_up_error)} (the "
                  f"worker's reconcile tries again; until it has, the store's messages and reminders wait)[/]", highlight=False)
    elif report.catch_up is not None:
        out.print(f"{report.catch_up.orders_seen} order(s) changed while the app was uninstalled read back; what was queued "
                  f"meanwhile is not sent, and messages and reminders resume once a running worker has processed them",
                  highlight=False)
    for note in report.notes:
        out.print(f"note: {note}", markup=False, highlight=False)
    _install_ending(out, report, hint)
    raise typer.Exit(0 if report.ok else 1)


@install_app.command("woocommerce")
def install_woocommerce_cmd(
    config: ConfigOpt = Path("storeloop.toml"),
    store: StoreOpt = ...,  # type: ignore[assignment]
    new_secret: Annotated[bool, typer.Option("--new-secret", help="generate a new webhook secret and push it to the webhooks")] = False,
    ping: Annotated[bool, typer.Option("--ping/--no-ping", help="check that the delivery URL answers WooCommerce's ping")] = True,
) -> None:
    """Check the REST keys, create or repair the webhooks (secret generated and stored encrypted),
    read every product once for the reorder journey, and ping the delivery URL. Keys can come from
    the configuration or /woocommerce/connect."""
    from datetime import datetime, timezone

    from connector.install.shopify import InstallRefused
    from connector.install.woocommerce import install_woocommerce

    settings, chosen, db, store_id, box = _install_target(config, store, "woocommerce")
    try:
        report = asyncio.run(install_woocommerce(db, settings, chosen, store_id, datetime.now(timezone.utc), box=box,
                                                 new_secret=new_secret, ping=ping))
        hint = backfill_hint(db, chosen, store_id)
    except InstallRefused as exc:
        console.print(f"[bold red]install refused:[/] {escape(str(exc))}", highlight=False)
        raise typer.Exit(2) from None
    except Exception as exc:
        console.print(f"[bold red]install failed:[/] {exc.__class__.__name__}: {escape(str(exc))}", highlight=False)
        raise typer.Exit(1) from None
    finally:
        db.dispose()
    out = Console()
    out.print(f"[bold]{report.store}[/]: REST credentials ok ({report.auth}); webhook secret {report.secret}", highlight=False)
    rows = [(t, "created", "") for t in report.created] + [(t, "already present", "") for t in report.present]
    rows += [(t, "re-activated", "") for t in report.reactivated] + [(t, "secret updated", "") for t in report.updated]
    rows += [(t, "failed", why) for t, why in report.failed]
    _topics_table(f"webhooks -> {report.delivery_url}", rows)
    out.print(f"{len(report.created)} created, {len(report.present)} already present, {len(report.reactivated)} re-activated, "
              f"{len(report.updated)} secret updated, {len(report.failed)} failed")
    colour = {True: "green", False: "red", None: "white"}[report.ping_ok]
    out.print(f"ping: [{colour}]{escape(report.ping)}[/]", highlight=False)
    _install_ending(out, report, hint)
    raise typer.Exit(0 if report.ok else 1)


@app.command("rotate-secrets")
def rotate_secrets(config: ConfigOpt = Path("storeloop.toml")) -> None:
    """Re-encrypt every stored credential with the first key of STORELOOP_SECRET_KEYS.

    Rotation: put the new key first (STORELOOP_SECRET_KEYS=new,old), run this, then drop the old key.
    """
    from connector.secrets import SecretBox, SecretsUnavailable, rotate_credentials
    from connector.storage.db import Database, ensure_schema

    settings = _load(config)
    try:
        box = SecretBox.require()
    except SecretsUnavailable as exc:
        console.print(f"[bold red]cannot rotate:[/] {escape(str(exc))}", highlight=False)
        raise typer.Exit(2) from None
    db = Database.from_url(settings.database.url)
    try:
        ensure_schema(db.engine, auto_migrate=settings.database.auto_migrate)
        count = rotate_credentials(db, box)
    except DatabaseNotReadyError as exc:
        raise _refuse("cannot rotate", exc) from None
    except SecretsUnavailable as exc:
        console.print(f"[bold red]nothing rotated:[/] {escape(str(exc))}", highlight=False)
        raise typer.Exit(1) from None
    finally:
        db.dispose()
    console.print(f"{count} stored credential(s) re-encrypted with the first of {box.key_count} key(s); "
                  "older keys can now be removed from STORELOOP_SECRET_KEYS")


@app.command("new-secret-key")
def new_secret_key() -> None:
    """Print a new Fernet key for STORELOOP_SECRET_KEYS (keep it out of the configuration file)."""
    from connector.secrets import generate_key

    typer.echo(generate_key())


customer_app = typer.Typer(help="One customer's data: what is stored about them (privacy requests).", no_args_is_help=True)
app.add_typer(customer_app, name="customer")


@customer_app.command("export")
def customer_export(
    config: ConfigOpt = Path("storeloop.toml"),
    store: StoreOpt = ...,  # type: ignore[assignment]
    phone: PhoneOpt = None,
    email: EmailOpt = None,
    customer_id: CustomerIdOpt = None,
    request: Annotated[Optional[int], typer.Option("--request", help="print the export stored for this privacy request id instead")] = None,
    out: Annotated[Optional[Path], typer.Option("--out", "-o", help="write the JSON here (mode 0600) instead of stdout")] = None,
) -> None:
    """Export everything stored about one customer as JSON (contacts, consent, orders, messages, journeys...)."""
    from datetime import datetime, timezone

    from connector.compliance import export_customer, get_request

    given = [x for x in (phone, email, customer_id, request) if x is not None]
    if len(given) != 1:
        console.print("[bold red]give exactly one of --phone, --email, --customer-id or --request[/]")
        raise typer.Exit(2)
    from connector.erasure import BadRequest, parse_request

    settings = _load(config)
    chosen = _store(settings, store)
    if request is None:
        try:  # as `customer redact` reads them: a phone that is no phone would find "nothing stored"
            asked = parse_request(chosen, phone=phone, email=email, customer_id=customer_id)
        except BadRequest as exc:
            console.print(f"[bold red]{escape(str(exc))}[/]", highlight=False)
            raise typer.Exit(2) from None
        phone, email, customer_id = asked.phone, asked.email, asked.customer_id
    db, store_ids = _open_db(settings, "export")
    try:
        store_id = store_ids[chosen.key]
        if request is not None:
            stored = get_request(db, store_id, request)
            if stored is None or stored.get("export") is None:
                why = "no such request in this store" if stored is None else f"request {request} has no export ({stored['kind']}, {stored['status']})"
                console.print(f"[bold red]{why}[/]")
                raise typer.Exit(1)
            data = stored["export"]
        else:
            with db.engine.connect() as conn:
                data = export_customer(conn, store_id, customer_external_id=customer_id, phone=phone, emails=(email,) if email else (),
                                       default_country=chosen.default_country, store_key=chosen.key, now=datetime.now(timezone.utc))
    finally:
        db.dispose()
    text = json.dumps(data, indent=2, ensure_ascii=False)
    counts = data.get("counts") or {}
    if out is None:
        typer.echo(text)
    else:
        try:
            fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)  # personal data: readable by the owner only
        except OSError as exc:
            console.print(f"[bold red]cannot write {escape(str(out))}:[/] {exc.strerror}", highlight=False, soft_wrap=True)
            raise typer.Exit(2) from None
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text + "\n")
        console.print(f"wrote {escape(str(out))}", highlight=False)
    console.print(" ".join(f"{k}={v}" for k, v in counts.items()) or "nothing stored for that customer")
    if not counts.get("contacts") and not counts.get("orders"):
        console.print("[yellow]no contact or order matched[/]")



_COUNT_WORDS = (("contacts", "contact(s)"), ("orders", "order(s)"), ("checkouts", "checkout(s)"), ("messages", "message(s)"),
                ("outbox", "queued or sent message(s)"), ("journey_runs", "journey run(s)"), ("handoffs", "hand-off(s)"),
                ("reorder_windows", "reorder window(s)"), ("inbox_events", "received event(s)"))


def _counted(counts: dict[str, int]) -> str:
    return ", ".join(f"{counts.get(key, 0)} {words}" for key, words in _COUNT_WORDS)


@customer_app.command("redact")
def customer_redact(
    config: ConfigOpt = Path("storeloop.toml"),
    store: StoreOpt = ...,  # type: ignore[assignment]
    phone: PhoneOpt = None,
    email: EmailOpt = None,
    customer_id: CustomerIdOpt = None,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="do not ask for confirmation")] = False,
) -> None:
    """Erase one customer's personal data, as Shopify's customers/redact does (for WooCommerce, or a request on WhatsApp).

    Shows what will be erased (counts only) and asks first. Exit codes: 0 erased, or nothing
    stored for that customer (nothing to erase); 1 not confirmed, or the erasure failed (the
    worker retries it); 2 bad input (unknown store, not a phone, not an email, no customer given,
    or several identifiers that name different contacts);
    3 database not reachable or not migrated; 4 recorded, but deliveries of the store received before it are
    still pending: a running worker answers it once they are processed.
    """
    from connector.erasure import BadRequest, answer_now, found_anything, one_customer, parse_request, preview, submit

    settings = _load(config)
    chosen = _store(settings, store)
    try:
        request = parse_request(chosen, phone=phone, email=email, customer_id=customer_id)
    except BadRequest as exc:
        console.print(f"[bold red]{escape(str(exc))}[/]", highlight=False)
        raise typer.Exit(2) from None
    db, store_ids = _open_db(settings, "erase")
    try:
        store_id = store_ids[chosen.key]
        try:
            unmatched = one_customer(db, chosen, store_id, request)
        except BadRequest as exc:
            console.print(f"[bold red]{escape(str(exc))}[/]", highlight=False)
            raise typer.Exit(2) from None
        counts = preview(db, chosen, store_id, request)
        who = escape(request.described())
        for name in unmatched:
            console.print(f"[yellow]the {name} given matches no contact[/]", highlight=False)
        if not found_anything(counts):
            console.print(f"nothing stored about the customer with {who} in {chosen.key}: nothing to erase", highlight=False)
            return
        console.print(f"{chosen.key}: the customer with {who}: {_counted(counts)} will be erased "
                      "(totals, statuses and times stay for the reports)", highlight=False, soft_wrap=True)
        if not yes and not typer.confirm("Erase this customer's personal data? This cannot be undone", default=False):
            console.print("nothing erased")
            raise typer.Exit(1)
        inbox_id = submit(db, chosen.key, store_id, request, "cli", counts)
        result = answer_now(db, settings, chosen, store_id, inbox_id)
    finally:
        db.dispose()
    if result.status == "done":
        console.print(f"erased: {_counted(result.counts)} (privacy request {result.request_id}, "
                      f"GET /api/stores/{chosen.key}/compliance/{result.request_id})", highlight=False, soft_wrap=True)
        return
    if result.status == "waiting":
        console.print(f"[yellow]recorded (inbox row {inbox_id}), not yet done:[/] deliveries of {chosen.key} received before it are "
                      "still pending (one retried after an error, or being processed by a worker); a running worker erases the "
                      f"customer once they are processed (GET /api/stores/{chosen.key}/compliance lists it)", highlight=False,
                      soft_wrap=True)
        raise typer.Exit(4)
    console.print(f"[bold red]the erasure failed:[/] {escape(result.error or '')} (inbox row {inbox_id}; the worker retries it, "
                  f"`storeloop replay --store {chosen.key} --id {inbox_id}` once it has failed for good)", highlight=False, soft_wrap=True)
    raise typer.Exit(1)

def main() -> None:
    app()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
