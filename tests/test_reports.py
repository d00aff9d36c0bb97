"""The weekly report on a hand-built week with known answers for every KPI (SQLite and PostgreSQL)."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone
from zoneinfo import ZoneInfo

import pytest

from connector.config import parse_settings
from connector.reports import build_report, diff_interval, parse_week
from connector.storage import models as m
from connector.storage.inbox import sync_stores
from tests.conftest import SECRETS, settings_dict
from tests.helpers import running_app

TZ = ZoneInfo("Asia/Kolkata")
WEEK = parse_week("2026-W47", TZ, datetime(2026, 11, 24, tzinfo=timezone.utc))
MON = WEEK.start  # Monday 16 Nov 2026 00:00 in Kolkata
LAST_WEEK = MON - timedelta(days=3)


def _settings(db_url: str):
    raw = settings_dict(db_url)
    raw["stores"][0]["stages"] = {"conversion": {"owner": "Ravi"}, "post_purchase": {"owner": "Priya"}}
    return parse_settings(raw, environ={})


class Week:
    """Rows written straight into the tables: the report reads nothing else."""

    def __init__(self, conn, store_id: int):
        self.conn, self.sid, self.n = conn, store_id, 0

    def _next(self) -> int:
        self.n += 1
        return self.n

    def contact(self, at: datetime, consent: str = "unknown") -> int:
        i = self._next()
        return self.conn.execute(m.Contact.__table__.insert().values(
            store_id=self.sid, phone_key=f"+9190000{i:05d}", phone_e164=f"+9190000{i:05d}", consent_marketing=consent,
            created_at=at, updated_at=at)).inserted_primary_key[0]

    def order(self, cid: int, at: datetime) -> None:
        i = self._next()
        self.conn.execute(m.Order.__table__.insert().values(
            store_id=self.sid, external_id=f"o{i}", name=f"#{i}", contact_id=cid, payment_state="paid", fulfillment_state="unfulfilled",
            total=100, currency="INR", placed_at=at, source_updated_at=at))

    def checkout(self, cid: int, at: datetime) -> None:
        i = self._next()
        self.conn.execute(m.Checkout.__table__.insert().values(
            store_id=self.sid, token=f"t{i}", contact_id=cid, total=100, currency="INR", started_at=at, source_updated_at=at))

    def inbound(self, cid: int, at: datetime) -> None:
        self.conn.execute(m.Message.__table__.insert().values(
            store_id=self.sid, contact_id=cid, direction="in", kind="text", body="hi", occurred_at=at))

    def run(self, journey: str, state: dict, *, at: datetime = MON + timedelta(days=1), holdout: bool = False, status: str = "finished") -> None:
        i = self._next()
        self.conn.execute(m.JourneyRun.__table__.insert().values(
            store_id=self.sid, journey=journey, subject=f"s{i}", status=status, state=state, holdout=holdout, started_at=at, updated_at=at))

    def outbox(self, journey: str, step: str, status: str, *, template: str = "tpl", skip: str | None = None,
               code: int | None = None, at: datetime = MON + timedelta(days=2)) -> None:
        i = self._next()
        oid = self.conn.execute(m.OutboxMessage.__table__.insert().values(
            store_id=self.sid, idempotency_key=f"k{i}", channel="whatsapp", journey=journey, step=step, category="utility",
            payload={"message": {"name": template}}, status=status, skip_reason=skip, due_at=at, created_at=at, updated_at=at)
        ).inserted_primary_key[0]
        if code is not None:
            self.conn.execute(m.OutboxAttempt.__table__.insert().values(
                store_id=self.sid, outbox_id=oid, started_at=at, outcome="permanent", error_code=code))

    def handoff(self, opened: datetime, closed: datetime | None, owner: str | None) -> None:
        i = self._next()
        self.conn.execute(m.Handoff.__table__.insert().values(
            store_id=self.sid, key=f"h{i}", reason="x", stage="post_purchase", owner=owner, status="closed" if closed else "open",
            opened_at=opened, closed_at=closed, context={}))

    def window(self, cid: int, opened: datetime | None) -> None:
        i = self._next()
        at = MON - timedelta(days=40)
        self.conn.execute(m.ReorderWindow.__table__.insert().values(
            store_id=self.sid, contact_id=cid, order_external_id=f"w{i}", product_key="p:1", title="Neem", quantity=1, placed_at=at,
            anchor="placed", anchor_at=at, cycle_days=30, cycle_source="config", opens_at=at + timedelta(days=30),
            status="opened" if opened else "pending", opened_at=opened, updated_at=at))

    def revoked(self, cid: int, at: datetime) -> None:
        self.conn.execute(m.ConsentChange.__table__.insert().values(
            store_id=self.sid, contact_id=cid, category="marketing", state="revoked", source="keyword", occurred_at=at))


def build_week(db, store_id: int) -> None:
    d = lambda days, hours=0: MON + timedelta(days=days, hours=hours)  # noqa: E731
    with db.engine.begin() as conn:
        w = Week(conn, store_id)
        # entry: 4 new contacts this week (2 consented), 1 last week (consented)
        c1, c2, c3, c4 = w.contact(d(0, 1), "granted"), w.contact(d(1)), w.contact(d(2), "granted"), w.contact(d(3), "revoked")
        w.contact(LAST_WEEK, "granted")
        w.checkout(c1, d(0, 3)); w.order(c1, d(0, 2))  # noqa: E702  first seen through the order
        w.checkout(c2, d(1, 1)); w.inbound(c2, d(1, 5))  # noqa: E702
        w.inbound(c3, d(2, 1))
        # qualification: 4 COD runs, 3 asked; answers after 30 and 90 minutes
        asked = (MON + timedelta(days=1)).isoformat()
        w.run("cod_confirmation", {"asked_at": asked, "choice": "confirmed", "answered_at": (MON + timedelta(days=1, minutes=30)).isoformat()})
        w.run("cod_confirmation", {"asked_at": asked, "choice": "cancelled", "answered_at": (MON + timedelta(days=1, minutes=90)).isoformat()})
        w.run("cod_confirmation", {"asked_at": asked, "choice": "no_answer"})
        w.run("cod_confirmation", {"phase": "waiting"}, status="active")
        w.run("cod_confirmation", {"asked_at": asked, "choice": "confirmed"}, at=LAST_WEEK)  # last week: 1 of 1
        # conversion: 7 checkout runs (2 in the holdout), 2 payment runs
        w.run("checkout_recovery", {"sent": 2, "recovered": True, "revenue": "500", "order_id": "a"})
        w.run("checkout_recovery", {"sent": 1})
        w.run("checkout_recovery", {"sent": 0}, status="active")
        w.run("checkout_recovery", {"sent": 3, "recovered": True, "revenue": "250.50", "order_id": "b"})
        w.run("checkout_recovery", {"sent": 1})
        w.run("checkout_recovery", {"sent": 1, "recovered": True, "revenue": "90", "order_id": "c"}, holdout=True)
        w.run("checkout_recovery", {"sent": 1}, holdout=True)
        w.run("payment_recovery", {"reminded": True, "paid": True, "revenue": "100"})
        w.run("payment_recovery", {"reminded": True})
        # post-purchase: delivery messages, 2 shipments (1 NDR), 2 hand-offs
        for status in ("sent", "delivered", "read", "read"):
            w.outbox("delivery", "shipped", status, template="shipped_v1")
        w.outbox("delivery", "failed", "failed", template="ndr_v1", code=131026)
        w.run("delivery", {"sent": ["delivered", "shipped"]})
        w.run("delivery", {"sent": ["failed", "shipped"]})
        w.handoff(d(2), d(2, 2), "Priya")
        w.handoff(d(3), None, "Priya")
        w.handoff(LAST_WEEK, None, None)
        # retention: 3 windows opened, 3 reorder runs (one skipped as busy)
        for _ in range(3):
            w.window(c1, d(1))
        w.window(c2, None)
        w.run("reorder", {"sent": 1, "attributed": True, "revenue": "300"})
        w.run("reorder", {"sent": 2})
        w.run("reorder", {"skipped": "cod_confirmation"})
        # message health: a skipped and a failed COD ask; one opt-out
        w.outbox("cod_confirmation", "ask", "skipped", template="cod_v1", skip="no_utility_consent")
        w.outbox("cod_confirmation", "ask", "failed", template="cod_v1", code=131026)
        w.outbox("cod_confirmation", "ask", "sent", template="cod_v1", at=LAST_WEEK)
        w.revoked(c4, d(3))


def test_every_kpi_of_a_hand_built_week(db):
    settings = _settings("sqlite://")
    store_id = sync_stores(db, [("shop-a", "shopify")])["shop-a"]
    build_week(db, store_id)
    r = build_report(db, settings.stores[0], store_id, WEEK)
    s = {k: v["metrics"] for k, v in r["stages"].items()}
    assert r["period"] == {"week": "2026-W47", "start": "2026-11-15T18:30:00+00:00", "end": "2026-11-22T18:30:00+00:00",
                           "timezone": "Asia/Kolkata", "previous": "2026-W46"}
    assert s["entry"] == {"new_contacts": 4, "by_source": {"checkout": 1, "order": 1, "other": 1, "whatsapp": 1},
                          "marketing_consent": 2, "consent_rate": 0.5, "lost": 2}
    assert r["stages"]["entry"]["previous"]["consent_rate"] == 1.0 and r["stages"]["entry"]["change"]["consent_rate"] == -0.5
    assert s["qualification"] == {"cod_orders": 4, "asked": 3, "confirmed": 1, "cancelled": 1, "cancel_after_fulfilment": 0,
                                  "no_answer": 1, "confirmation_rate": 0.3333, "median_minutes_to_answer": 60.0, "lost": 2}
    assert s["conversion"] == {
        "checkouts_abandoned": 7, "checkouts_reminded": 4, "checkouts_recovered": 2, "recovery_rate": 0.5, "recovered_revenue": "750.50",
        "payments_stalled": 2, "payments_reminded": 2, "payments_recovered": 1, "payment_recovery_rate": 0.5,
        "payment_recovered_revenue": "100", "lost": 3}
    assert s["post_purchase"] == {"updates_sent": 4, "updates_delivered": 3, "updates_read": 2, "updates_failed": 1, "shipments": 2,
                                  "ndr": 1, "ndr_rate": 0.5, "handoffs_opened": 2, "handoffs_resolved": 1,
                                  "median_hours_to_resolve": 2.0, "lost": 1}
    assert s["retention"] == {"windows_opened": 3, "reminded": 2, "skipped_busy": 1, "reordered_in_window": 1, "repeat_rate": 0.5,
                              "revenue": "300", "lost": 1}
    health = r["message_health"]
    assert health["opt_outs"] == 1
    assert health["templates"]["cod_confirmation.ask"] == {
        "template": "cod_v1", "queued": 2, "sent": 0, "delivered": 0, "read": 0, "failed": 1, "failed_by_code": {"131026": 1},
        "skipped": 1, "skipped_by_reason": {"no_utility_consent": 1}, "pending": 0, "read_rate": None}
    assert health["templates"]["delivery.shipped"]["read_rate"] == 0.5
    # 2 of 5 treated checkouts converted against 1 of 2 in the holdout: no evidence the reminders helped
    lift = r["lift"]["checkout_recovery"]
    assert (lift["treated_rate"], lift["control_rate"], lift["lift"], lift["ci95"], lift["significant"]) == (0.4, 0.5, -0.1, [-0.9152, 0.7152], False)
    assert set(r["lift"]) == {"checkout_recovery"}  # no holdout elsewhere
    assert r["biggest_leak"] == {"stage": "conversion", "lost": 3, "owner": "Ravi"}
    assert r["open_handoffs"] == {"Priya": 1, "unassigned": 1}
    json.dumps(r)  # the API and --json serve it as is


def test_lift_interval_covers_a_known_effect():
    # 30% vs 20% over 2,000 each: a real 10-point lift, clearly significant
    out = diff_interval(600, 2000, 400, 2000)
    assert out["lift"] == 0.1 and out["significant"] is True and out["ci95"][0] < 0.1 < out["ci95"][1]
    assert out["ci95"] == [0.0733, 0.1267] and out["relative_lift"] == 0.5
    assert diff_interval(3, 10, 0, 0)["lift"] is None


def test_week_labels():
    assert parse_week("2026-W01", TZ, MON).start == datetime(2025, 12, 28, 18, 30, tzinfo=timezone.utc)
    last = parse_week(None, TZ, datetime(2026, 11, 24, 12, tzinfo=timezone.utc))
    assert last.label == "2026-W47"
    for bad in ("2026-47", "W47", "2026-W54"):
        with pytest.raises(ValueError):
            parse_week(bad, TZ, MON)


def test_report_over_the_api_and_the_cli(db_url, tmp_path):
    from typer.testing import CliRunner

    from connector.cli import app

    settings = _settings(db_url)
    with running_app(settings) as (client, runtime):
        build_week(runtime.db, runtime.store_ids["shop-a"])
        assert client.get("/api/stores/shop-a/report?week=2026-W47").status_code == 401
        auth = {"Authorization": f"Bearer {SECRETS['admin']}"}
        bad = client.get("/api/stores/shop-a/report?week=2026-47", headers=auth)
        assert bad.status_code == 400 and "ISO week" in bad.text
        body = client.get("/api/stores/shop-a/report?week=2026-W47", headers=auth).json()
        assert body["biggest_leak"]["stage"] == "conversion" and body["stages"]["qualification"]["metrics"]["confirmed"] == 1
    if not db_url.startswith("sqlite"):
        return  # the CLI reads the same database; once is enough
    config = tmp_path / "storeloop.toml"
    config.write_text(
        f'[database]\nurl = "{db_url}"\n\n[[stores]]\nkey = "shop-a"\nplatform = "shopify"\nshop_domain = "shop-a.myshopify.com"\n'
        f'webhook_secret = "x"\ntimezone = "Asia/Kolkata"\n\n[stores.stages.conversion]\nowner = "Ravi"\n')
    as_json = CliRunner().invoke(app, ["report", "--config", str(config), "--store", "shop-a", "--week", "2026-W47", "--json"])
    assert as_json.exit_code == 0, as_json.output
    assert json.loads(as_json.stdout)["stages"]["conversion"]["metrics"]["recovered_revenue"] == "750.50"
    table = CliRunner().invoke(app, ["report", "--config", str(config), "--store", "shop-a", "--week", "2026-W47"], env={"COLUMNS": "160"})
    assert table.exit_code == 0, table.output
    assert "Biggest leak: conversion" in table.output and "Ravi" in table.output and "recovery_rate" in table.output
