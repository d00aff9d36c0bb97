"""``storeloop demo``: the real connector on SQLite, a simulated store and WhatsApp on 127.0.0.1.

The connector is the real app (uvicorn, webhooks, inbox, journeys, outbox) with a live
WhatsApp client pointed at a sandbox Cloud API and a Shopify Admin client pointed at a
sandbox store API: real HTTP both ways. ``connector.sandbox.simulator`` plays three and a
half weeks of a D2C store over a virtual clock, an hour at a time: orders (a COD share), abandoned
checkouts, stalled prepaid payments, deliveries (some fail), reorders on product cycles, and
customers who react to what actually reached them. The sandbox WhatsApp refuses a few
utility updates (Meta's 131026), and a support desk works the hand-offs through the admin
API, closing most within hours. Each hour the demo runs what the worker would (process the
inbox, fire due timers, open reorder windows, send, write back), so the run is
deterministic for a seed and takes about a minute instead of three weeks.

It ends with the weekly report of the last complete simulated week (the days after it let
that week's customers finish deciding), the lift it measured for each journey with a
holdout next to the generator's true lift, and, with ``--keep-running``, the dashboard URL
(without it the connector stops with the demo, and says so).
"""

from __future__ import annotations

import asyncio
import json
import random
import secrets
import socket
import tempfile
import threading
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import httpx
import uvicorn
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from connector.config import Settings, parse_settings
from connector.reorder.windows import run_reorder_tick
from connector.report_view import render_report
from connector.reports import build_report, parse_week
from connector.runtime import Runtime
from connector.sandbox.shopify import SandboxShopify
from connector.sandbox.simulator import PRODUCTS, Plan, Store
from connector.sandbox.whatsapp import SandboxServer, SandboxWhatsApp
from connector.web.app import create_app

SHOP = "demo-naturals.myshopify.com"
STORE_KEY = "demo-shop"
REFUSED_SHARE = 0.03  # of these utility updates, refused by the sandbox WhatsApp as undeliverable (131026)
REFUSED_TEMPLATES = frozenset({"order_thanks_v1", "shipped_v1", "delivered_v1"})
PHONE_ID = "100000000000001"
START = datetime(2026, 11, 2, 0, 0, tzinfo=timezone.utc)  # Monday of 2026-W45
console = Console()

TEMPLATES: list[dict[str, Any]] = [
    {"step": "order_confirmation.sent", "name": "order_thanks_v1", "category": "utility",
     "body_text": "Hi {{1}}, thanks for order {{2}} ({{3}}).", "body": ["customer.first_name", "order.name", "order.total"]},
    {"step": "cod_confirmation.ask", "name": "cod_confirm_v1", "category": "utility",
     "body_text": "Hi {{1}}, please confirm your cash-on-delivery order {{2}} of {{3}}.", "body": ["customer.first_name", "order.name", "order.total"],
     "buttons": [{"type": "quick_reply", "text": "Confirm", "payload": "cod_confirm"}, {"type": "quick_reply", "text": "Cancel", "payload": "cod_cancel"}]},
    {"step": "cod_confirmation.reminder_1", "name": "cod_reminder_v1", "category": "utility",
     "body_text": "Reminder: please confirm order {{1}}.", "body": ["order.name"],
     "buttons": [{"type": "quick_reply", "text": "Confirm", "payload": "cod_confirm"}, {"type": "quick_reply", "text": "Cancel", "payload": "cod_cancel"}]},
    {"step": "payment_recovery.remind", "name": "payment_pending_v1", "category": "utility",
     "body_text": "Hi {{1}}, the payment for order {{2}} did not go through. Pay here: {{3}}",
     "body": ["customer.first_name", "order.name", "order.payment_url"]},
    {"step": "checkout_recovery.first", "name": "cart_reminder_v1", "category": "marketing",
     "body_text": "{{1}} is still in your cart: {{2}}", "body": ["reorder.product", "checkout.recovery_url"]},
    {"step": "checkout_recovery.second", "name": "cart_reminder_2_v1", "category": "marketing",
     "body_text": "Your cart is waiting: {{1}}", "body": ["checkout.recovery_url"]},
    {"step": "delivery.shipped", "name": "shipped_v1", "category": "utility",
     "body_text": "Order {{1}} is on its way with {{2}}: {{3}}", "body": ["order.name", "fulfillment.tracking_company", "fulfillment.tracking_url"]},
    {"step": "delivery.delivered", "name": "delivered_v1", "category": "utility", "body_text": "Order {{1}} was delivered.", "body": ["order.name"]},
    {"step": "delivery.failed", "name": "ndr_v1", "category": "utility",
     "body_text": "We could not deliver order {{1}}. Reply to reschedule.", "body": ["order.name"]},
    {"step": "reorder.reminder", "name": "reorder_v1", "category": "marketing",
     "body_text": "Hi {{1}}, running low on {{2}}? Reorder in one tap: {{3}}", "body": ["customer.first_name", "reorder.product", "reorder.link"]},
]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def demo_settings(workdir: Path, port: int, keys: dict[str, str], whatsapp_url: str, shopify_url: str) -> Settings:
    return parse_settings({
        "server": {"host": "127.0.0.1", "port": port, "admin_token": keys["admin"], "log_level": "warning"},
        "database": {"url": f"sqlite:///{workdir / 'demo.db'}"},
        "whatsapp": {"app_secret": keys["meta"], "verify_token": keys["verify"], "access_token": keys["wa_token"],
                     "graph_base_url": whatsapp_url, "pair_spacing_seconds": 0},
        "stores": [{
            "key": STORE_KEY, "platform": "shopify", "name": "Demo Naturals", "shop_domain": SHOP, "webhook_secret": keys["shopify"],
            "access_token": keys["shop_token"], "api_base_url": shopify_url, "timezone": "Asia/Kolkata", "default_country": "IN",
            "whatsapp_phone_number_id": PHONE_ID, "templates": TEMPLATES,
            "policy": {"quiet_hours": "", "marketing_cap": 4},
            "stages": {"qualification": {"owner": "COD desk"}, "conversion": {"owner": "Growth"}, "post_purchase": {"owner": "Support"},
                       "retention": {"owner": "CRM"}},
            "journeys": {
                "order_confirmation": {}, "cod_confirmation": {"reminder_hours": [6], "answer_window_hours": 24},
                "checkout_recovery": {"abandon_after_minutes": 30, "ladder_minutes": [0, 360], "holdout_percent": 30},
                "payment_recovery": {"after_minutes": 60, "holdout_percent": 30},
                "delivery": {"steps": ["shipped", "delivered", "failed"]},
                "reorder": {"cycles": {f"SKU-{p[0]}": f"{p[4]}d" for p in PRODUCTS}, "lead_days": 3, "follow_up_days": None,
                            "holdout_percent": 30, "attribution_days": 7, "skip_when_busy": True},
            },
        }],
    }, environ={})


class VirtualClock:
    def __init__(self, now: datetime):
        self.now = now

    def __call__(self) -> datetime:
        return self.now


class Connector:
    """The real app served by uvicorn on its own event loop; ``tick`` does a worker's rounds."""

    def __init__(self, settings: Settings, clock: VirtualClock):
        self.settings = settings
        self.runtime = Runtime(settings, clock=clock, run_worker=False)
        self.server = uvicorn.Server(uvicorn.Config(create_app(settings, self.runtime), host="127.0.0.1", port=settings.server.port,
                                                    log_level="warning", access_log=False, lifespan="on"))
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=lambda: self.loop.run_until_complete(self.server.serve()), name="storeloop", daemon=True)
        self.clock = clock

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.settings.server.port}"

    def __enter__(self) -> "Connector":
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("the connector did not start")
            time.sleep(0.02)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=15)

    def _await(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout=120)

    def tick(self) -> None:
        rt = self.runtime
        assert rt.processor is not None and rt.dispatcher is not None
        now = self.clock()
        rt.processor.drain()
        while rt.processor.process_timers(limit=500):
            pass
        for store in self.settings.stores:
            run_reorder_tick(rt.db, store, rt.store_ids[store.key], now)
        rt.processor.drain()
        self._await(rt.dispatcher.drain())
        self._await(rt.writebacks.drain())


class SupportDesk:
    """The store's support person, working the open hand-offs through the admin API.

    Each new hand-off is taken (``close_share`` of them) and closed 1 to 12 hours after it
    opened, the rest stay open; the choices come from the seed, so a run stays reproducible.
    """

    def __init__(self, client: httpx.Client, seed: int, close_share: float = 0.75):
        self.client, self.close_share = client, close_share
        self.rng = random.Random(f"support-desk-{seed}")
        self.due: dict[int, datetime | None] = {}
        self.closed = 0

    def work(self, now: datetime) -> None:
        listed = self.client.get(f"/api/stores/{STORE_KEY}/handoffs", params={"status": "open"})
        listed.raise_for_status()
        for h in sorted(listed.json()["items"], key=lambda h: h["id"]):
            if h["id"] not in self.due:
                takes = self.rng.random() < self.close_share
                hours = 1 + self.rng.random() * 11
                self.due[h["id"]] = datetime.fromisoformat(h["opened_at"]) + timedelta(hours=hours) if takes else None
            due = self.due[h["id"]]
            if due is not None and due <= now:
                closed = self.client.post(f"/api/stores/{STORE_KEY}/handoffs/{h['id']}/close",
                                          json={"by": "Support desk", "resolution": "called the customer; sorted"})
                closed.raise_for_status()
                self.closed += 1


def run_demo(days: int = 25, seed: int = 7, keep_running: bool = False, port: int = 0, scale: float = 1.0) -> int:
    keys = {k: secrets.token_hex(16) for k in ("shopify", "meta", "verify", "admin", "wa_token", "shop_token")}
    workdir = Path(tempfile.mkdtemp(prefix="storeloop-demo-"))
    plan = Plan(days=days, seed=seed, orders_per_day=14 * scale, checkouts_per_day=28 * scale, stalled_payments_per_day=12 * scale)
    whatsapp = SandboxWhatsApp(token=keys["wa_token"], fail_share=REFUSED_SHARE, fail_templates=REFUSED_TEMPLATES, fail_seed=seed)
    shopify = SandboxShopify(token=keys["shop_token"])
    clock = VirtualClock(START)
    started = time.perf_counter()
    with SandboxServer(whatsapp.app) as wa_server, SandboxServer(shopify.app) as shop_server:
        settings = demo_settings(workdir, port or _free_port(), keys, wa_server.url, shop_server.url)
        with Connector(settings, clock) as connector, \
                httpx.Client(base_url=connector.url, timeout=30, headers={"Authorization": f"Bearer {keys['admin']}"}) as admin:
            console.print(f"connector on {connector.url} (SQLite {workdir / 'demo.db'}); sandbox WhatsApp {wa_server.url}, "
                          f"sandbox Shopify {shop_server.url}")
            store = Store(connector.url, shop=SHOP, shopify_secret=keys["shopify"], app_secret=keys["meta"], phone_number_id=PHONE_ID,
                          whatsapp=whatsapp, plan=plan, start=START, templates={t["step"]: t["name"] for t in TEMPLATES})
            desk = SupportDesk(admin, seed)
            store.plan_days()
            hours = days * 24
            with Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total} h"), TimeElapsedColumn(),
                          console=console) as progress:
                task = progress.add_task("simulating", total=hours)
                for hour in range(hours):
                    clock.now = START + timedelta(hours=hour)
                    store.run_until(clock.now)
                    connector.tick()
                    if store.react(clock.now):
                        store.run_until(clock.now)  # reactions due right away
                        connector.tick()
                    desk.work(clock.now)
                    sent = len(whatsapp.accepted())
                    progress.update(task, advance=1, description=f"day {hour // 24 + 1:>2}/{days}: {store.stats['orders']} orders, "
                                                               f"{store.stats['checkouts']} checkouts, {sent} WhatsApp messages")
            store.forged()
            elapsed = time.perf_counter() - started
            week = parse_week(None, settings.stores[0].tz, START + timedelta(days=days))
            rt = connector.runtime
            report = build_report(rt.db, settings.stores[0], rt.store_ids[STORE_KEY], week)
            console.print(f"\nsimulated {days} days in {elapsed:.0f} s: {store.stats['webhooks']} signed webhooks "
                          f"(platform retries {store.stats['retries']}, stored once; refused {store.stats['refused']}), "
                          f"{len(whatsapp.accepted())} WhatsApp messages sent ({len(whatsapp.refused())} refused by WhatsApp as "
                          f"undeliverable), {store.stats['stalled']} stalled payments ({store.stats['paid']} paid later), "
                          f"{store.stats['questions']} customer questions, {desk.closed} hand-offs closed by the support desk, "
                          f"{len(shopify.tagged())} orders tagged and {len(shopify.cancelled())} cancelled in the store")
            _stored(rt)
            console.print()
            render_report(report, console, "Demo Naturals")
            _lift_check(report, plan)
            buyer = store.first_buyer
            if buyer is None:
                console.print(f"[yellow]no order was placed in {days} simulated day(s) at --scale {scale:g}[/]: "
                              "raise --days or --scale to see journeys at work")
            else:
                phone = "+91" + buyer.phone
                view = admin.get(f"/api/stores/{STORE_KEY}/contacts/{phone}").json()
                console.print(f"[bold]One customer's context[/] (GET /api/stores/{STORE_KEY}/contacts/{phone}):")
                console.print_json(json.dumps({k: view[k] for k in ("contact", "consent", "orders") if k in view}, default=str))
            page = f"/dashboard/{STORE_KEY}?week={week.label}"
            if keep_running:
                console.print(f"\nweekly report JSON: {connector.url}/api/stores/{STORE_KEY}/report?week={week.label}  "
                              f"(Authorization: Bearer {keys['admin']})")
                console.print(f"dashboard: {connector.url}{page}  (admin token {keys['admin']})")
                console.print("[bold]serving until Ctrl-C[/]")
                try:
                    while connector.thread.is_alive():
                        time.sleep(0.5)
                except KeyboardInterrupt:
                    console.print("stopping the connector")
            store.close()
    if not keep_running:
        console.print(f"\n[bold]The connector stopped with the demo[/]: its dashboard ({page}) and admin API no longer answer. "
                      f"To browse them, run [bold]storeloop demo --keep-running[/] (the same seed gives the same data; Ctrl-C stops it).")
    return 0


def _stored(rt: Runtime) -> None:
    from sqlalchemy import func, select

    from connector.storage import models as m

    with rt.db.engine.connect() as conn:
        inbox = conn.execute(select(m.InboxEvent.source, m.InboxEvent.status, func.count())
                             .group_by(m.InboxEvent.source, m.InboxEvent.status).order_by(m.InboxEvent.source, m.InboxEvent.status)).all()
        outbox = conn.execute(select(m.OutboxMessage.channel, m.OutboxMessage.status, func.count())
                              .group_by(m.OutboxMessage.channel, m.OutboxMessage.status).order_by(m.OutboxMessage.channel)).all()
    t = Table("source", "inbox status", "rows", title="What the connector stored")
    for row in inbox:
        t.add_row(row[0], row[1], str(row[2]))
    console.print(t)
    t = Table("channel", "outbox status", "rows", title="What it sent or wrote back")
    for row in outbox:
        t.add_row(row[0], row[1], str(row[2]))
    console.print(t)


def _lift_check(report: dict[str, Any], plan: Plan) -> bool:
    """Each journey with a holdout: the generator's true lift against the report's interval. True when every one holds it.

    The generator's lift is what a reminder does for a customer it reaches (``Plan.true_lift``), so it is set against the
    report's lift per customer reached; the lift over every treated customer is smaller by the share never reached."""
    t = Table("journey", "true lift (generator)", "measured, per customer reached", "95% interval", "truth inside",
              title="Lift: what the report found vs the truth")
    held = True
    for journey, truth in plan.true_lift.items():
        x = report["lift"].get(journey)
        if not x or x.get("lift_per_reached") is None:
            t.add_row(journey, f"{truth:+.1%}", "-", "-", "no holdout data")
            held = False
            continue
        lo, hi = x["ci95_per_reached"]
        t.add_row(journey, f"{truth:+.1%}", f"{x['lift_per_reached']:+.1%} ({x['treated_reached']}/{x['treated']} reached)",
                  f"{lo:+.1%} .. {hi:+.1%}", "yes" if lo <= truth <= hi else "NO")
        held = held and lo <= truth <= hi
    console.print(t)
    return held
