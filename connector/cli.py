"""Command line: serve, worker, migrate, check-config, demo."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console

from connector.config import Settings, load_settings
from connector.errors import ConfigError, SchemaNotReadyError

app = typer.Typer(help="storeloop: store events to WhatsApp journeys.", no_args_is_help=True, add_completion=False)
console = Console(stderr=True)
ConfigOpt = Annotated[Path, typer.Option("--config", "-c", help="TOML configuration file", envvar="STORELOOP_CONFIG")]


def _load(path: Path) -> Settings:
    try:
        return load_settings(path)
    except ConfigError as exc:
        console.print(f"[bold red]{path}: invalid configuration[/]")
        for p in exc.problems:
            console.print(f"  - {p}", markup=False, highlight=False)
        raise typer.Exit(2) from None


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
    before = current_revision(engine)
    run(engine)
    console.print(f"database at {head_revision()} (was {before or 'empty'})")
    engine.dispose()


@app.command()
def serve(
    config: ConfigOpt = Path("storeloop.toml"),
    host: Annotated[Optional[str], typer.Option(help="overrides server.host")] = None,
    port: Annotated[Optional[int], typer.Option(help="overrides server.port")] = None,
    workers: Annotated[int, typer.Option(help="uvicorn worker processes")] = 1,
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
    except SchemaNotReadyError as exc:
        console.print(f"[bold red]refusing to start:[/] {exc}")
        raise typer.Exit(3) from None
    finally:
        engine.dispose()
    console.print(f"database schema {status}; WhatsApp sender: {'dry-run' if settings.whatsapp.dry_run else 'live'}")
    os.environ["STORELOOP_CONFIG"] = str(config.resolve())
    os.environ["STORELOOP_RUN_WORKER"] = "0" if no_worker else "1"
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
        except SchemaNotReadyError as exc:
            console.print(f"[bold red]refusing to start:[/] {exc}")
            raise typer.Exit(3) from None
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
        console.print(f"[red]could not read the account's templates:[/] {exc}")
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
    orders: Annotated[int, typer.Option(help="orders the sandbox store places")] = 40,
    keep_running: Annotated[bool, typer.Option("--keep-running", help="keep serving after the run")] = False,
    port: Annotated[int, typer.Option(help="0 picks a free port")] = 0,
) -> None:
    """Run the real connector against a sandbox store and WhatsApp on 127.0.0.1 and show what it recorded."""
    from connector.demo import run_demo

    code = run_demo(orders=orders, keep_running=keep_running, port=port)
    raise typer.Exit(code)


def _parse_since(value: str, now: datetime) -> datetime:
    """``365d`` / ``12h`` back from now, or an ISO date / datetime (UTC when naive)."""
    import re
    from datetime import datetime, timedelta, timezone

    text = value.strip()
    m = re.fullmatch(r"(\d+)\s*([dh])", text, re.IGNORECASE)
    if m:
        n = int(m.group(1))
        return now - (timedelta(days=n) if m.group(2).lower() == "d" else timedelta(hours=n))
    try:
        dt = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise typer.BadParameter(f"{value!r}: use Nd, Nh or an ISO date like 2026-01-31") from None
    return dt.replace(tzinfo=timezone.utc) if dt.tzinfo is None else dt.astimezone(timezone.utc)


@app.command()
def sync(
    config: ConfigOpt = Path("storeloop.toml"),
    store: Annotated[str, typer.Option("--store", help="store key from the configuration")] = ...,  # type: ignore[assignment]
    backfill: Annotated[bool, typer.Option("--backfill", help="read from --since (default 365d) instead of the stored cursor")] = False,
    since: Annotated[Optional[str], typer.Option(help="backfill start: Nd, Nh or an ISO date (implies --backfill)")] = None,
) -> None:
    """Reconcile a store's orders once: fetch what changed since the last run into the inbox."""
    from datetime import datetime, timezone

    from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
    from rich.table import Table

    from connector.storage.db import Database, ensure_schema
    from connector.storage.inbox import sync_stores
    from connector.sync import SyncError, SyncReport, reconcile_orders
    from jobs.scheduler import has_credentials, make_client

    settings = _load(config)
    chosen = next((s for s in settings.stores if s.key == store), None)
    if chosen is None:
        known = ", ".join(s.key for s in settings.stores) or "none configured"
        console.print(f"[bold red]unknown store {store!r}[/] (stores: {known})")
        raise typer.Exit(2)
    if not has_credentials(chosen):
        what = "access_token" if chosen.platform == "shopify" else "consumer_key and consumer_secret"
        console.print(f"[bold red]store {store!r} has no API credentials:[/] set {what} to sync")
        raise typer.Exit(2)
    now = datetime.now(timezone.utc)
    start = _parse_since(since, now) if since else (_parse_since("365d", now) if backfill else None)
    db = Database.from_url(settings.database.url)
    try:
        try:
            ensure_schema(db.engine, auto_migrate=settings.database.auto_migrate)
        except SchemaNotReadyError as exc:
            console.print(f"[bold red]refusing to sync:[/] {exc}")
            raise typer.Exit(3) from None
        store_id = sync_stores(db, [(s.key, s.platform) for s in settings.stores])[chosen.key]

        async def run() -> SyncReport:
            with Progress(SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn(), console=console) as bar:
                task = bar.add_task(f"{chosen.key}: starting", total=None)

                def progress(report: SyncReport) -> None:
                    bar.update(task, description=f"{chosen.key}: {report.orders_seen} order(s), {report.pages} page(s), "
                                                 f"{report.new_rows} new")

                async with make_client(chosen) as client:
                    return await reconcile_orders(db, chosen, store_id, client, now=now, since=start, progress=progress)

        try:
            report = asyncio.run(run())
        except SyncError as exc:
            console.print(f"[bold red]sync stopped:[/] {exc}")
            raise typer.Exit(1) from None
        except Exception as exc:  # RetryableError / PermanentError from the platform: short, secret-free messages
            console.print(f"[bold red]sync failed:[/] {exc.__class__.__name__}: {exc}")
            raise typer.Exit(1) from None
    finally:
        db.dispose()
    table = Table("field", "value")
    for key, value in report.as_dict().items():
        table.add_row(key, str(value))
    Console().print(table)
    if report.new_rows:
        console.print(f"{report.new_rows} new inbox row(s); a running worker processes them")


@app.command()
def windows(
    config: ConfigOpt = Path("storeloop.toml"),
    store: Annotated[str, typer.Option("--store", help="store key from the configuration")] = ...,  # type: ignore[assignment]
    days: Annotated[float, typer.Option(help="show windows opening within this many days")] = 7,
    limit: Annotated[int, typer.Option(help="at most this many rows")] = 200,
) -> None:
    """List upcoming reorder windows (refreshed first): who will hear about what, and when."""
    from datetime import datetime, timedelta, timezone

    from rich.table import Table

    from connector.contacts import redact_phone
    from connector.reorder.windows import config_for, refresh_windows, upcoming
    from connector.storage.db import Database, ensure_schema
    from connector.storage.inbox import sync_stores

    settings = _load(config)
    chosen = next((s for s in settings.stores if s.key == store), None)
    if chosen is None:
        known = ", ".join(s.key for s in settings.stores) or "none configured"
        console.print(f"[bold red]unknown store {store!r}[/] (stores: {known})")
        raise typer.Exit(2)
    if config_for(chosen) is None:
        console.print(f"[bold red]store {store!r} does not run the reorder journey:[/] add [stores.journeys.reorder] to the configuration")
        raise typer.Exit(2)
    now = datetime.now(timezone.utc)
    db = Database.from_url(settings.database.url)
    try:
        try:
            ensure_schema(db.engine, auto_migrate=settings.database.auto_migrate)
        except SchemaNotReadyError as exc:
            console.print(f"[bold red]refusing to read windows:[/] {exc}")
            raise typer.Exit(3) from None
        store_id = sync_stores(db, [(s.key, s.platform) for s in settings.stores])[chosen.key]
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
    store: Annotated[str, typer.Option("--store", help="store key from the configuration")] = ...,  # type: ignore[assignment]
    week: Annotated[Optional[str], typer.Option(help="ISO week, e.g. 2026-W47 (default: the last complete week)")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print the report as JSON")] = False,
) -> None:
    """The weekly journey audit: each stage's KPIs against last week, message health, lift, the biggest leak."""
    import json as _json
    from datetime import datetime, timezone

    from rich.table import Table

    from connector.reports import build_report, parse_week
    from connector.storage.db import Database, ensure_schema
    from connector.storage.inbox import sync_stores

    settings = _load(config)
    chosen = next((s for s in settings.stores if s.key == store), None)
    if chosen is None:
        known = ", ".join(s.key for s in settings.stores) or "none configured"
        console.print(f"[bold red]unknown store {store!r}[/] (stores: {known})")
        raise typer.Exit(2)
    try:
        period = parse_week(week, chosen.tz, datetime.now(timezone.utc))
    except ValueError as exc:
        console.print(f"[bold red]{exc}[/]")
        raise typer.Exit(2) from None
    db = Database.from_url(settings.database.url)
    try:
        try:
            ensure_schema(db.engine, auto_migrate=settings.database.auto_migrate)
        except SchemaNotReadyError as exc:
            console.print(f"[bold red]refusing to report:[/] {exc}")
            raise typer.Exit(3) from None
        store_id = sync_stores(db, [(s.key, s.platform) for s in settings.stores])[chosen.key]
        data = build_report(db, chosen, store_id, period)
    finally:
        db.dispose()
    if as_json:
        typer.echo(_json.dumps(data, indent=2))
        return
    out = Console()
    out.print(f"[bold]{chosen.name or chosen.key}[/]: week {data['period']['week']} ({chosen.timezone}), against {data['period']['previous']}")
    for name, stage in data["stages"].items():
        table = Table(title=f"{name.replace('_', '-')}" + (f" (owner: {stage['owner']})" if stage["owner"] else ""), title_justify="left")
        for col in ("KPI", "this week", "last week", "change"):
            table.add_column(col, justify="left" if col == "KPI" else "right")
        for key, value in stage["metrics"].items():
            if key == "lost":
                continue
            shown = ", ".join(f"{k} {v}" for k, v in value.items()) if isinstance(value, dict) else ("-" if value is None else str(value))
            before = stage["previous"].get(key)
            before_shown = "-" if before is None or isinstance(before, dict) else str(before)
            change = stage["change"].get(key)
            style = "bold" if key == stage["headline"] else ""
            table.add_row(f"[{style}]{key}[/]" if style else key, shown, before_shown, "" if change is None else f"{change:+}"
                          if isinstance(change, (int, float)) else str(change))
        out.print(table)
    health = Table(title="message health by template", title_justify="left")
    for col in ("step", "template", "queued", "sent", "delivered", "read", "failed (by code)", "skipped (by reason)"):
        health.add_column(col, justify="left" if col in ("step", "template") else "right")
    for step, t in data["message_health"]["templates"].items():
        failed = f"{t['failed']} " + (", ".join(f"{k}: {v}" for k, v in t["failed_by_code"].items()) if t["failed"] else "")
        skipped = f"{t['skipped']} " + (", ".join(f"{k}: {v}" for k, v in t["skipped_by_reason"].items()) if t["skipped"] else "")
        health.add_row(step, t["template"], str(t["queued"]), str(t["sent"]), str(t["delivered"]), str(t["read"]), failed.strip(), skipped.strip())
    out.print(health)
    out.print(f"marketing opt-outs this week: {data['message_health']['opt_outs']}")
    if data["lift"]:
        lift = Table(title="lift against the holdout (conversion, treated minus control, 95% interval)", title_justify="left")
        for col in ("journey", "treated", "control", "lift", "95% interval", "significant"):
            lift.add_column(col, justify="left" if col == "journey" else "right")
        for journey, x in data["lift"].items():
            if x["lift"] is None:
                lift.add_row(journey, str(x["treated"]), str(x["control"]), "-", "-", "-")
                continue
            lift.add_row(journey, f"{x['treated_converted']}/{x['treated']} ({x['treated_rate']:.1%})",
                         f"{x['control_converted']}/{x['control']} ({x['control_rate']:.1%})", f"{x['lift']:+.1%}",
                         f"{x['ci95'][0]:+.1%} .. {x['ci95'][1]:+.1%}", "yes" if x["significant"] else "no")
        out.print(lift)
    leak = data["biggest_leak"]
    if leak["stage"]:
        out.print(f"[bold red]Biggest leak: {leak['stage']}[/] ({leak['lost']} customers lost this week"
                  + (f"; owner {leak['owner']})" if leak["owner"] else ")"))
    else:
        out.print("No leak this week: nothing was lost at any stage.")
    if data["open_handoffs"]:
        out.print("Open hand-offs: " + ", ".join(f"{owner} {n}" for owner, n in data["open_handoffs"].items()))


def main() -> None:
    app()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
