"""One journey run whose timer cannot fire must not stall every store's timers.

Every due run of every store fires in one transaction (``InboxProcessor.process_timers``). A run
whose firing raises (a plugin's bug while its decision is applied, a value the database refuses
when the batch's writes are flushed) used to roll all of them back, and the next call picked the
same runs first: reminders, COD deadlines and delayed asks of every store stopped for good. Now the
batch is redone run by run, the bad run is parked (tried again later, logged once, shown on the
dashboard) and the others fire.

The journeys are plugins (tests/plugin_journeys.py) published through the entry-point group, as
in tests/test_journey_plugins.py; orders come in as signed webhooks; time is the processor's clock.
"""

from __future__ import annotations

import asyncio
import logging
import shutil
from datetime import datetime, timedelta, timezone
from importlib.metadata import EntryPoint, entry_points

import pytest
from sqlalchemy import select
from typer.testing import CliRunner

from connector.cli import app as cli_app
from connector.config import load_settings, parse_settings
from connector.journeys import registry
from connector.storage import models as m
from tests import plugin_journeys
from tests.conftest import PHONE_ID_A, SECRETS, settings_dict
from tests.helpers import running_app
from tests.test_dashboard import login
from tests.test_decide_tables import post, runs, steps
from tests.test_outbox import sandbox  # noqa: F401 (fixture)
from tests.test_payment_and_shipped_fixes import T0, shopify_order

ADMIN = {"Authorization": f"Bearer {SECRETS['admin']}"}
PLUGINS = {"timer_lost_stage": "TimerLostStage", "timer_odd_state": "TimerOddState", "timer_then_week": "TimerThenWeek",
           "window_bomb": "WindowBomb"}


@pytest.fixture
def plugins(monkeypatch):
    installed = list(entry_points(group=registry.GROUP))
    published = [EntryPoint(name, f"tests.plugin_journeys:{cls}", registry.GROUP) for name, cls in PLUGINS.items()]
    monkeypatch.setattr(registry, "entry_points", lambda group: [*installed, *published] if group == registry.GROUP else [])
    registry.journeys.cache_clear()
    yield
    registry.journeys.cache_clear()


def two_stores(db_url: str, journey: str):
    """shop-a and shop-b both run the plugin journey, with its one template."""
    raw = settings_dict(db_url)
    for store in raw["stores"][:2]:
        store.update(policy={"quiet_hours": ""}, journeys={journey: {}}, templates=[
            {"step": f"{journey}.points", "name": "points_v1", "category": "utility", "body_text": "Thanks {{1}}",
             "body": ["customer.first_name"]}])
    return parse_settings(raw, environ={})


def place_orders(client, runtime) -> None:
    """Orders 1001 and 1002 in shop-a, 2001 in shop-b, all at T0: each starts a run due at T0 + 1 h."""
    for n in (1002, 1001):
        post(client, "orders/create", shopify_order(n, "paid", T0))
    post(client, "orders/create", shopify_order(2001, "paid", T0), shop="shop-b")
    runtime.processor.clock = lambda: T0
    runtime.processor.drain()


@pytest.mark.parametrize("journey", ["timer_lost_stage", "timer_odd_state"],
                         ids=["refused at the batch's flush", "raises while its decision is applied"])
def test_one_run_whose_timer_cannot_fire_costs_no_other_run_of_any_store_its_timer(plugins, db_url, caplog, journey):
    settings = two_stores(db_url, journey)
    with running_app(settings) as (client, runtime):
        place_orders(client, runtime)
        runtime.processor.clock = lambda: T0 + timedelta(hours=2)
        with caplog.at_level(logging.WARNING, logger="storeloop"):
            fired = runtime.processor.process_timers()
            again = runtime.processor.process_timers()  # the broken run is not due again at once, nor raises
        sent = steps(runtime)
        found = runs(runtime)
    a, b = runtime.store_ids["shop-a"], runtime.store_ids["shop-b"]
    # the same store's other run and the other store's run fired: their thanks are queued
    assert sorted(sent) == [(journey, "order:1001", "points"), (journey, "order:2001", "points")]
    assert found[(a, journey, "order:1001")].status == found[(b, journey, "order:2001")].status == "finished"
    assert fired == 3 and again == 0
    broken = found[(a, journey, "order:1002")]
    assert broken.status == "active" and broken.next_due_at == T0 + timedelta(hours=2, minutes=5)  # parked, not lost
    assert broken.state["_timer_failures"] == 1 and broken.state["_timer_error"]
    told = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(told) == 1  # once, with the store, the journey and the run
    line = told[0].getMessage()
    assert "shop-a" in line and journey in line and f"run {broken.id}" in line and broken.state["_timer_error"] in line


def test_a_parked_run_is_shown_on_the_dashboard_and_fires_once_its_bug_is_fixed(plugins, db_url, monkeypatch):
    settings = two_stores(db_url, "timer_odd_state")
    with running_app(settings) as (client, runtime):
        place_orders(client, runtime)
        runtime.processor.clock = lambda: T0 + timedelta(hours=2)
        runtime.processor.process_timers()
        broken = runs(runtime)[(runtime.store_ids["shop-a"], "timer_odd_state", "order:1002")]
        assert login(client).status_code == 303
        page = client.get("/dashboard/shop-a").text
        health = client.get("/api/stores/shop-a/report", headers=ADMIN).json()["connector_health"]
        other = client.get("/api/stores/shop-b/report", headers=ADMIN).json()["connector_health"]

        # tried again after the pause: still broken, the pause doubles
        runtime.processor.clock = lambda: T0 + timedelta(hours=2, minutes=6)
        assert runtime.processor.process_timers() == 1
        again = runs(runtime)[(runtime.store_ids["shop-a"], "timer_odd_state", "order:1002")]

        monkeypatch.setattr(plugin_journeys.TimerOddState, "broken", False)  # the plugin's fix is deployed
        runtime.processor.clock = lambda: T0 + timedelta(hours=2, minutes=17)
        assert runtime.processor.process_timers() == 1
        fixed = runs(runtime)[(runtime.store_ids["shop-a"], "timer_odd_state", "order:1002")]
        sent = steps(runtime)
        after = client.get("/api/stores/shop-a/report", headers=ADMIN).json()["connector_health"]
        page_after = client.get("/dashboard/shop-a").text

    [shown] = health["timers_failing"]["runs"]
    assert health["timers_failing"]["count"] == 1
    assert (shown["id"], shown["journey"], shown["failures"]) == (broken.id, "timer_odd_state", 1)
    assert shown["error"] == broken.state["_timer_error"] and "TypeError" in shown["error"]
    assert 'id="timers-failing"' in page and f"run {broken.id}" in page and "TypeError" in page
    assert other["timers_failing"]["count"] == 0  # shop-b's dashboard is about shop-b only
    assert again.state["_timer_failures"] == 2 and again.next_due_at == T0 + timedelta(hours=2, minutes=16)
    # fixed: it fired as any run does, and what it kept of the failures is gone (the journey's own state is left)
    assert ("timer_odd_state", "order:1002", "points") in sent
    assert fixed.status == "finished" and fixed.state == {"points": 10, "thanked": True, "outcome": "sent"}
    assert after["timers_failing"]["count"] == 0 and 'id="timers-failing"' not in page_after


def test_after_the_fix_replay_timers_fires_the_parked_run_at_once(plugins, tmp_path, sqlite_template, monkeypatch):
    """The owner need not wait out the pause (up to a day): `storeloop replay --timers` makes the store's
    parked runs due now; the next timer round fires them, and the report no longer names them."""
    db_path = tmp_path / "storeloop.db"
    shutil.copy(sqlite_template, db_path)
    cfg = tmp_path / "storeloop.toml"
    cfg.write_text(f"""
[server]
admin_token = "{SECRETS['admin']}"
[database]
url = "sqlite:///{db_path}"
[whatsapp]
app_secret = "{SECRETS['wa_app']}"
verify_token = "v"

[[stores]]
key = "shop-a"
platform = "shopify"
shop_domain = "shop-a.myshopify.com"
webhook_secret = "{SECRETS['shop_a']}"
timezone = "Asia/Kolkata"
default_country = "IN"
whatsapp_phone_number_id = "{PHONE_ID_A}"
policy = {{ quiet_hours = "" }}

[[stores.templates]]
step = "timer_odd_state.points"
name = "points_v1"
category = "utility"
body_text = "Thanks {{{{1}}}}"
body = ["customer.first_name"]

[stores.journeys.timer_odd_state]
""")
    settings = load_settings(cfg)
    cli = CliRunner()
    with running_app(settings) as (client, runtime):
        for n in (1002, 1001):
            post(client, "orders/create", shopify_order(n, "paid", T0))
        runtime.processor.clock = lambda: T0
        runtime.processor.drain()
        runtime.processor.clock = lambda: T0 + timedelta(hours=2)
        assert runtime.processor.process_timers() == 2
        weekly = cli.invoke(cli_app, ["report", "--config", str(cfg), "--store", "shop-a"])
        assert weekly.exit_code == 0, weekly.output
        assert "1 journey run(s) whose timer raised" in weekly.output and "storeloop replay --store shop-a --timers" in weekly.output

        monkeypatch.setattr(plugin_journeys.TimerOddState, "broken", False)  # the fix is deployed
        assert runtime.processor.process_timers() == 0  # parked: not before its pause is over
        replayed = cli.invoke(cli_app, ["replay", "--config", str(cfg), "--store", "shop-a", "--timers"])
        assert replayed.exit_code == 0, replayed.output
        assert "1 journey run(s) due now" in replayed.output
        # due "now" by the command's clock (the wall clock), whichever is later
        later = max(T0 + timedelta(hours=2, seconds=1), datetime.now(timezone.utc) + timedelta(seconds=1))
        runtime.processor.clock = lambda: later
        assert runtime.processor.process_timers() == 1
        sent = steps(runtime)
        again = cli.invoke(cli_app, ["replay", "--config", str(cfg), "--store", "shop-a", "--timers"])
        after = cli.invoke(cli_app, ["report", "--config", str(cfg), "--store", "shop-a"])
    assert sorted(sent) == [("timer_odd_state", "order:1001", "points"), ("timer_odd_state", "order:1002", "points")]
    assert "no journey run of shop-a waits" in again.output
    assert "whose timer raised" not in after.output


def test_a_parked_run_whose_timer_an_event_moved_is_no_longer_parked_and_a_replay_does_not_fire_it_early(
        plugins, db_url, monkeypatch):
    """Order 1002's timer raised and its run was parked. Then the order was paid, and the journey planned
    its thanks a week later. That plan stands: the run is no longer listed as failing, and the owner's
    `replay --timers` after the fix does not send the thanks now, a week early."""
    from connector.journeys import timer_failures
    from connector.reports import connector_health

    settings = two_stores(db_url, "timer_then_week")
    with running_app(settings) as (client, runtime):
        place_orders(client, runtime)
        runtime.processor.clock = lambda: T0 + timedelta(hours=2)
        runtime.processor.process_timers()
        sid = runtime.store_ids["shop-a"]
        with runtime.db.engine.connect() as conn:
            assert connector_health(conn, sid)["timers_failing"]["count"] == 1
        paid = shopify_order(1002, "paid", T0)
        paid["updated_at"] = (T0 + timedelta(hours=2, minutes=1)).isoformat()
        post(client, "orders/updated", paid)
        runtime.processor.clock = lambda: T0 + timedelta(hours=2, minutes=1)
        runtime.processor.drain()
        with runtime.db.engine.connect() as conn:
            failing = connector_health(conn, sid)["timers_failing"]["count"]
        monkeypatch.setattr(plugin_journeys.TimerOddState, "broken", False)
        replayed = timer_failures.retry_now(runtime.db, sid, T0 + timedelta(hours=2, minutes=2))
        runtime.processor.clock = lambda: T0 + timedelta(hours=2, minutes=3)
        runtime.processor.process_timers()
        thanked = [s for s in steps(runtime) if s[1] == "order:1002"]
    assert (failing, replayed, thanked) == (0, [], [])


# ---- the reorder tick ----------------------------------------------------------------------------

def test_a_reorder_window_that_cannot_open_costs_the_stores_other_windows_nothing_and_the_job_says_so(plugins, db_url, caplog,
                                                                                                      monkeypatch):
    """The reorder tick opens a store's due windows in one transaction. A window whose opening raises (here a
    plugin that hears reorder windows) used to roll back every window of the batch, tick after tick: no
    customer of the store got a reorder reminder again. Now the others open; that one stays pending, is
    tried again at the next tick, and the job is shown failing with the window and the error until it opens."""
    from jobs.scheduler import reorder_job
    from tests.test_reorder import TEMPLATES, _order

    raw = settings_dict(db_url)
    raw["stores"][0].update(templates=TEMPLATES, policy={"quiet_hours": ""},
                            journeys={"reorder": {"cycles": {"NEEM-100": "30d"}, "lead_days": 3}, "window_bomb": {}})
    settings = parse_settings(raw, environ={})
    clock = [T0]
    phones = {7000: "+91 98765 43210", 7001: "+91 98123 45678", 7002: "+91 99887 76655"}
    with running_app(settings, clock=lambda: clock[0]) as (client, runtime):
        runtime.processor.clock = lambda: clock[0]
        for i, (n, phone) in enumerate(phones.items()):
            post(client, "orders/create", _order(n, T0, phone=phone, customer_id=100 + i))
        runtime.processor.drain()
        store, sid = settings.stores[0], runtime.store_ids["shop-a"]

        def tick() -> None:
            assert asyncio.run(reorder_job(runtime, store, "w1", timedelta(minutes=15))) is True

        def windows() -> dict:
            with runtime.db.engine.connect() as conn:
                return {w.order_external_id: w for w in conn.execute(select(m.ReorderWindow).where(m.ReorderWindow.store_id == sid))}

        tick()  # plans the windows
        clock[0] = max(w.opens_at for w in windows().values()) + timedelta(hours=1)
        with caplog.at_level(logging.WARNING, logger="storeloop"):
            tick()
            clock[0] += timedelta(minutes=15)
            tick()  # the next tick tries it again, and opens nothing twice
        first = windows()
        job = next(j for j in client.get("/api/stores/shop-a/report", headers=ADMIN).json()["connector_health"]["jobs"]
                   if j["job"] == "reorder")
        reminders = sorted(s for _j, s, _step in steps(runtime, "reorder"))

        monkeypatch.setattr(plugin_journeys.WindowBomb, "broken", False)  # the fix is deployed
        clock[0] += timedelta(minutes=15)
        tick()
        last = windows()
        fixed = next(j for j in client.get("/api/stores/shop-a/report", headers=ADMIN).json()["connector_health"]["jobs"]
                     if j["job"] == "reorder")
        after = sorted(s for _j, s, _step in steps(runtime, "reorder"))
    assert {o: w.status for o, w in first.items()} == {"7000": "opened", "7001": "pending", "7002": "opened"}
    subject = {o: f"reorder:{o}:{w.product_key}" for o, w in last.items()}
    assert reminders == [subject["7000"], subject["7002"]]  # one each, not two
    assert (job["status"], job["failures_in_a_row"]) == ("failing", 2)
    assert f"window {first['7001'].id}" in job["last_error"] and "plugin bug on the window of order 7001" in job["last_error"]
    told = [r.getMessage() for r in caplog.records if r.name == "storeloop.reorder" and r.levelno >= logging.ERROR]
    assert len(told) == 2 and all("shop-a" in t and f"window {first['7001'].id}" in t for t in told)  # once a tick
    assert last["7001"].status == "opened" and fixed["status"] == "ok"
    assert after == sorted(subject.values())


# ---- the WhatsApp dispatcher ---------------------------------------------------------------------

def _three_queued(db, db_url, url):
    """Asha's, Ravi's and Meera's COD asks, queued in one batch's worth (the dispatcher claims them together)."""
    from connector.storage.inbox import sync_stores
    from tests.test_outbox import queue, seed_contact, settings_for

    settings = settings_for(db_url, url, messages_per_second=40)
    ids = sync_stores(db, [(s.key, s.platform) for s in settings.stores])
    sid = ids["shop-a"]
    queued = {name: queue(db, settings, sid, seed_contact(db, sid, phone=phone), subject=f"order:{n}")
              for n, (name, phone) in enumerate((("asha", "+919876543210"), ("ravi", "+919812345678"), ("meera", "+919900112233")))}
    return settings, ids, queued


def _dispatch_once(db, settings, ids, url, spacer=None) -> None:
    from adapters.whatsapp.client import WhatsAppClient
    from connector.outbox.dispatcher import Dispatcher
    from tests.test_outbox import NOON_IST, Clock

    async def run() -> None:
        client = WhatsAppClient(url, settings.whatsapp.api_version, "sandbox-token")
        try:
            dispatcher = Dispatcher(db, settings, ids, client, clock=Clock(NOON_IST), spacer=spacer)
            try:
                await dispatcher.run_once()
            finally:
                await dispatcher.close()
        finally:
            await client.aclose()

    asyncio.run(run())


def test_a_message_whose_request_cannot_be_built_fails_with_its_reason_and_its_batch_goes_out(db, db_url, sandbox):
    """A stored message whose parameters no longer render into a request (an amount no request can carry)
    was sent to nobody: it is ``failed`` with the reason, not ``uncertain`` (which says it may have gone
    out, and is never looked at again); the other messages of its batch go out."""
    from tests.test_outbox import attempts, outbox_rows

    fake, url = sandbox
    settings, ids, queued = _three_queued(db, db_url, url)
    with db.engine.begin() as conn:  # Ravi's stored amount is one no request can carry
        row = conn.execute(select(m.OutboxMessage).where(m.OutboxMessage.id == queued["ravi"].outbox_id)).one()
        payload = dict(row.payload)
        payload["message"] = {**payload["message"], "body": [
            {**p, "amount": "1E+5000"} if p.get("type") == "currency" else p for p in payload["message"]["body"]]}
        conn.execute(m.OutboxMessage.__table__.update().where(m.OutboxMessage.id == row.id).values(payload=payload))
    _dispatch_once(db, settings, ids, url)
    rows = {r.id: r for r in outbox_rows(db)}
    assert [rows[queued[n].outbox_id].status for n in ("asha", "ravi", "meera")] == ["sent", "failed", "sent"]
    assert "cannot be built" in rows[queued["ravi"].outbox_id].last_error
    assert sorted(c.to for c in fake.accepted()) == ["+919876543210", "+919900112233"]  # nothing went out for Ravi
    assert sorted(a.outcome for a in attempts(db)) == ["failed", "sent", "sent"]


def test_a_bug_before_one_send_costs_the_rest_of_its_batch_nothing(db, db_url, sandbox, caplog):
    """Every claimed row of a batch is sent concurrently and the outcomes are written together: an
    exception out of one row's preparation (a bug, here in a recipient spacer given to the dispatcher)
    made the whole batch's outcomes unwritten, so every message of it (any store's) ended ``uncertain``
    when its lease ran out, never sent. Now that row alone fails, with the reason, and is logged."""
    from connector.outbox.ratelimit import RecipientSpacer
    from tests.test_outbox import outbox_rows

    class BuggySpacer(RecipientSpacer):
        def wait_for(self, pair: str) -> float:
            if pair.endswith("+919812345678"):
                raise KeyError("spacing bug")
            return super().wait_for(pair)

    fake, url = sandbox
    settings, ids, queued = _three_queued(db, db_url, url)
    with caplog.at_level(logging.ERROR, logger="storeloop.dispatcher"):
        _dispatch_once(db, settings, ids, url, spacer=BuggySpacer(settings.whatsapp.pair_spacing_seconds))
    rows = {r.id: r for r in outbox_rows(db)}
    assert [rows[queued[n].outbox_id].status for n in ("asha", "ravi", "meera")] == ["sent", "failed", "sent"]
    assert "KeyError" in rows[queued["ravi"].outbox_id].last_error
    assert sorted(c.to for c in fake.accepted()) == ["+919876543210", "+919900112233"]
    assert f"outbox {queued['ravi'].outbox_id}" in caplog.text
