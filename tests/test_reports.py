"""The weekly report on a hand-built week with known answers for every KPI (SQLite and PostgreSQL)."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone
from zoneinfo import ZoneInfo

import pytest

from connector.config import parse_settings
from connector.outbox.queue import step_key
from connector.reports import build_report, diff_interval, parse_week
from connector.storage import models as m
from connector.storage.inbox import sync_stores
from tests.conftest import SECRETS, settings_dict
from tests.helpers import running_app

TZ = ZoneInfo("Asia/Kolkata")
WEEK = parse_week("2026-W47", TZ, datetime(2026, 11, 24, tzinfo=timezone.utc))
MON = WEEK.start  # Monday 16 Nov 2026 00:00 in Kolkata
LAST_WEEK = MON - timedelta(days=3)  # Friday of 2026-W46
OLD = MON - timedelta(days=40)  # customers from before either week: not new contacts in it


def _raw_settings(db_url: str) -> dict:
    raw = settings_dict(db_url)
    raw["stores"][0]["stages"] = {"conversion": {"owner": "Ravi"}, "post_purchase": {"owner": "Priya"}}
    return raw


def _settings(db_url: str):
    return parse_settings(_raw_settings(db_url), environ={})


def _d(days: float, hours: float = 0) -> datetime:
    return MON + timedelta(days=days, hours=hours)


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

    def order(self, cid: int, at: datetime, total: str = "100", *, external_id: str | None = None, payment_state: str = "paid",
              cancelled_at: datetime | None = None, is_cod: bool = False) -> str:
        i = self._next()
        external_id = external_id or f"o{i}"
        self.conn.execute(m.Order.__table__.insert().values(
            store_id=self.sid, external_id=external_id, name=f"#{i}", contact_id=cid, payment_state=payment_state, is_cod=is_cod,
            fulfillment_state="unfulfilled", total=total, currency="INR", placed_at=at, source_updated_at=at, cancelled_at=cancelled_at))
        return external_id

    def checkout(self, cid: int, at: datetime) -> None:
        i = self._next()
        self.conn.execute(m.Checkout.__table__.insert().values(
            store_id=self.sid, token=f"t{i}", contact_id=cid, total=100, currency="INR", started_at=at, source_updated_at=at))

    def inbound(self, cid: int, at: datetime) -> None:
        self.conn.execute(m.Message.__table__.insert().values(
            store_id=self.sid, contact_id=cid, direction="in", kind="text", body="hi", occurred_at=at))

    def run(self, journey: str, state: dict, *, at: datetime = MON + timedelta(days=1), holdout: bool = False, status: str = "finished",
            subject: str | None = None) -> None:
        i = self._next()
        if "revenue" in state:
            state = {"currency": "INR", **state}  # the journeys keep the order's currency beside its revenue
        self.conn.execute(m.JourneyRun.__table__.insert().values(
            store_id=self.sid, journey=journey, subject=subject or f"s{i}", status=status, state=state, holdout=holdout, started_at=at,
            updated_at=at))

    def outbox(self, journey: str, step: str, status: str, *, template: str = "tpl", skip: str | None = None,
               codes: tuple[int | None, ...] = (), at: datetime = MON + timedelta(days=2), to: int | None = None,
               failed_later: int | None = None) -> None:
        """One WhatsApp send; ``codes``: its attempts' error codes; ``to``: it reached this contact (a message row);
        ``failed_later``: sent, then Meta's status webhook said failed with this code."""
        i = self._next()
        oid = self.conn.execute(m.OutboxMessage.__table__.insert().values(
            store_id=self.sid, idempotency_key=f"k{i}", channel="whatsapp", journey=journey, step=step, category="utility",
            contact_id=to, payload={"message": {"name": template}}, status=status, skip_reason=skip, due_at=at, created_at=at,
            updated_at=at)).inserted_primary_key[0]
        for code in codes:
            self.conn.execute(m.OutboxAttempt.__table__.insert().values(
                store_id=self.sid, outbox_id=oid, started_at=at, outcome="permanent" if code else "sent", error_code=code))
        if to is not None:
            self.conn.execute(m.Message.__table__.insert().values(
                store_id=self.sid, contact_id=to, direction="out", wamid=f"wamid.{i}", kind="template", body=template,
                status=status, error_code=failed_later, outbox_id=oid, occurred_at=at))

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
    """2026-W47 and the week before, built so that every KPI has a known answer (see the test)."""
    d = _d
    with db.engine.begin() as conn:
        w = Week(conn, store_id)
        # entry: 4 new contacts this week (2 consented); 1 last week (consented, first seen on WhatsApp)
        c1, c2, c3, c4 = w.contact(d(0, 1), "granted"), w.contact(d(1)), w.contact(d(2), "granted"), w.contact(d(3), "revoked")
        p1 = w.contact(LAST_WEEK, "granted")
        w.inbound(p1, LAST_WEEK + timedelta(hours=1))
        w.checkout(c1, d(0, 3)); w.order(c1, d(0, 2))  # noqa: E702  first seen through the order
        w.checkout(c2, d(1, 1)); w.inbound(c2, d(1, 5))  # noqa: E702
        w.inbound(c3, d(2, 1))
        regular, c5, c6, c7 = (w.contact(OLD, "granted") for _ in range(4))  # earlier customers

        # qualification: 6 COD runs, 5 asked; answers after 10, 30 and 1,800 minutes (median 30, mean 613)
        asked, at = (MON + timedelta(days=1)), lambda minutes: (MON + timedelta(days=1, minutes=minutes)).isoformat()  # noqa: E731
        w.run("cod_confirmation", {"asked_at": asked.isoformat(), "choice": "confirmed", "answered_at": at(10)})
        w.run("cod_confirmation", {"asked_at": asked.isoformat(), "choice": "cancelled", "answered_at": at(30)})
        w.run("cod_confirmation", {"asked_at": asked.isoformat(), "choice": "confirmed_late", "answered_at": at(1800)})
        w.run("cod_confirmation", {"asked_at": asked.isoformat(), "choice": "cancel_too_late"}, status="handoff")  # already shipped
        w.run("cod_confirmation", {"asked_at": asked.isoformat(), "choice": "no_answer"})
        w.run("cod_confirmation", {"phase": "waiting"}, status="active")
        w.run("cod_confirmation", {"asked_at": LAST_WEEK.isoformat(), "choice": "confirmed",
                                   "answered_at": (LAST_WEEK + timedelta(minutes=20)).isoformat()}, at=LAST_WEEK)

        # conversion: 7 checkout runs (2 in the holdout), 6 abandoned: one is still being filled in (no ladder step yet)
        w.run("checkout_recovery", {"sent": 2, "recovered": True, "revenue": "500", "order_id": "a"})
        w.run("checkout_recovery", {"sent": 1})
        w.run("checkout_recovery", {"sent": 0}, status="active")
        w.run("checkout_recovery", {"sent": 3, "recovered": True, "revenue": "250.50", "order_id": "b"})
        w.run("checkout_recovery", {"sent": 1})
        w.run("checkout_recovery", {"sent": 1, "recovered": True, "revenue": "90", "order_id": "c"}, holdout=True)
        w.run("checkout_recovery", {"sent": 1}, holdout=True)
        w.run("checkout_recovery", {"sent": 1, "recovered": True, "revenue": "199.99", "order_id": "z"}, at=LAST_WEEK)
        w.run("checkout_recovery", {"sent": 1}, at=LAST_WEEK)
        # ... and 8 payment runs, 7 stalled (3 in the holdout, whose reminder the runner skipped); one was paid before its
        # reminder was due, so it never stalled
        w.run("payment_recovery", {"reminded": True, "paid": True, "revenue": "100"})
        w.run("payment_recovery", {"reminded": True})
        w.run("payment_recovery", {"reminded": True, "paid": True, "revenue": "250.25"})
        w.run("payment_recovery", {"paid": True})
        w.run("payment_recovery", {"reminded": True})
        w.run("payment_recovery", {"reminded": True, "paid": True, "revenue": "80"}, holdout=True)
        w.run("payment_recovery", {"reminded": True}, holdout=True)
        w.run("payment_recovery", {"reminded": True}, holdout=True)
        w.run("payment_recovery", {"reminded": True, "paid": True, "revenue": "40"}, at=LAST_WEEK)

        # post-purchase: delivery messages (one failed on sending, one failed later by status webhook), 3 shipments (1 NDR)
        w.outbox("delivery", "shipped", "sent", template="shipped_v1", at=d(1), to=c6)
        for status in ("delivered", "read", "read"):
            w.outbox("delivery", "shipped", status, template="shipped_v1")
        w.outbox("delivery", "shipped", "failed", template="shipped_v1", codes=(None,), at=d(4, -1), to=c5, failed_later=131026)
        w.outbox("delivery", "failed", "failed", template="ndr_v1", codes=(131026,))
        w.outbox("delivery", "shipped", "delivered", template="shipped_v1", at=LAST_WEEK)
        w.run("delivery", {"sent": ["delivered", "shipped"]})
        w.run("delivery", {"sent": ["failed", "shipped"]})
        w.run("delivery", {"sent": ["shipped"]})
        w.run("delivery", {"sent": ["delivered", "shipped"]}, at=LAST_WEEK)
        w.run("delivery", {"sent": ["shipped"]}, at=LAST_WEEK)
        # hand-offs: 5 this week, resolved in 1, 3 and 11 hours (median 3, mean 5); 2 last week (one resolved in 5 hours)
        w.handoff(d(2), d(2, 1), "Priya")
        w.handoff(d(2), d(2, 3), "Priya")
        w.handoff(d(3), d(3, 11), "Ravi")
        w.handoff(d(3), None, "Priya")
        w.handoff(d(4), None, "Ravi")
        w.handoff(LAST_WEEK, None, None)
        w.handoff(LAST_WEEK, LAST_WEEK + timedelta(hours=5), "Priya")

        # retention: 3 windows opened (1 last week); reorder runs, each window's attribution ending 7 days after it opened
        for _ in range(3):
            w.window(c1, d(1))
        w.window(c2, None)
        w.window(c1, LAST_WEEK)
        ends = d(8).isoformat()
        inside, late = lambda total: w.order(regular, d(3), total), lambda: w.order(regular, d(8, 2))  # noqa: E731

        def reorder(state: dict, **kw) -> None:
            w.run("reorder", {"attribution_ends": ends, **state}, **kw)

        reorder({"sent": 1, "reordered": True, "attributed": True, "order_id": inside("300"), "revenue": "300"})
        reorder({"sent": 2})
        # the reorder reached the run after its window had ended (before the timer closed it): not a conversion
        reorder({"sent": 1, "reordered": True, "attributed": False, "order_id": late(), "revenue": "0"})
        reorder({"skipped": "cod_confirmation"})
        reorder({"sent": 1, "reordered": True, "attributed": True, "order_id": inside("150"), "revenue": "150"})
        # the holdout: nothing was sent, so nothing is attributed; what counts is the same reorder inside the window
        reorder({"sent": 1, "reordered": True, "order_id": inside("99")}, holdout=True)
        reorder({"sent": 1, "reordered": True, "order_id": late()}, holdout=True)
        reorder({"sent": 1}, holdout=True)
        reorder({"sent": 1}, holdout=True)
        w.run("reorder", {"sent": 1, "reordered": True, "attributed": True, "order_id": w.order(regular, LAST_WEEK + timedelta(days=1), "120.50"),
                          "revenue": "120.50", "attribution_ends": (LAST_WEEK + timedelta(days=7)).isoformat()}, at=LAST_WEEK)

        # message health: COD asks (skipped, failed twice with two codes, one read, one pending), cart and reorder reminders
        w.outbox("cod_confirmation", "ask", "skipped", template="cod_v1", skip="no_utility_consent")
        w.outbox("cod_confirmation", "ask", "failed", template="cod_v1", codes=(131000, 131026))  # retried, then undeliverable
        w.outbox("cod_confirmation", "ask", "failed", template="cod_v1", codes=(132015,))
        w.outbox("cod_confirmation", "ask", "read", template="cod_v1", at=d(2, 18), to=c5)
        w.outbox("cod_confirmation", "ask", "pending", template="cod_v1")
        w.outbox("cod_confirmation", "ask", "sent", template="cod_v1", at=LAST_WEEK)
        w.outbox("checkout_recovery", "first", "delivered", template="cart_v1", at=d(2), to=c4)
        w.outbox("reorder", "reminder", "read", template="reorder_v1", at=d(2, 22), to=c4)
        w.outbox("reorder", "reminder", "skipped", skip="holdout")
        w.outbox("reorder", "reminder", "skipped", skip="opted_out")
        w.outbox("order_confirmation", "sent", "read", template="thanks_v1", at=MON - timedelta(hours=10), to=c7)
        # opt-outs: each to the last message that reached the contact in the 72 hours before
        w.revoked(c4, d(3))  # cart reminder 24 h before, reorder reminder 2 h before: the reorder reminder
        w.revoked(c5, d(4))  # COD ask 30 h before; the delivery update an hour before never reached them: the COD ask
        w.revoked(c6, d(5))  # the last message 96 h before: no template
        w.revoked(c7, d(0, 2))  # Sunday's order confirmation, from last week's messages


def test_every_kpi_of_a_hand_built_week(db):
    settings = _settings("sqlite://")
    store_id = sync_stores(db, [("shop-a", "shopify")])["shop-a"]
    build_week(db, store_id)
    r = build_report(db, settings.stores[0], store_id, WEEK)
    stages = r["stages"]
    assert r["period"] == {"week": "2026-W47", "start": "2026-11-15T18:30:00+00:00", "end": "2026-11-22T18:30:00+00:00",
                           "timezone": "Asia/Kolkata", "previous": "2026-W46"}

    assert stages["entry"] == {
        "owner": None, "headline": "consent_rate",
        "metrics": {"new_contacts": 4, "by_source": {"checkout": 1, "order": 1, "other": 1, "whatsapp": 1}, "marketing_consent": 2,
                    "consent_rate": 0.5, "lost": 2},
        "previous": {"new_contacts": 1, "by_source": {"whatsapp": 1}, "marketing_consent": 1, "consent_rate": 1.0, "lost": 0},
        "change": {"new_contacts": 3, "by_source": {"checkout": 1, "order": 1, "other": 1, "whatsapp": 0}, "marketing_consent": 1,
                   "consent_rate": -0.5, "lost": 2}}

    assert stages["qualification"] == {
        "owner": None, "headline": "confirmation_rate",
        "metrics": {"cod_orders": 6, "asked": 5, "confirmed": 2, "cancelled": 1, "cancel_after_fulfilment": 1, "no_answer": 1, "not_reached": 0, "confirmed_by_store": 0, "paid": 0, "with_person": 0, "opted_out": 0,
                    "confirmation_rate": 0.4, "median_minutes_to_answer": 30.0, "lost": 3},
        "previous": {"cod_orders": 1, "asked": 1, "confirmed": 1, "cancelled": 0, "cancel_after_fulfilment": 0, "no_answer": 0, "not_reached": 0, "confirmed_by_store": 0, "paid": 0, "with_person": 0, "opted_out": 0,
                     "confirmation_rate": 1.0, "median_minutes_to_answer": 20.0, "lost": 0},
        "change": {"cod_orders": 5, "asked": 4, "confirmed": 1, "cancelled": 1, "cancel_after_fulfilment": 1, "no_answer": 1, "not_reached": 0, "confirmed_by_store": 0, "paid": 0, "with_person": 0, "opted_out": 0,
                   "confirmation_rate": -0.6, "median_minutes_to_answer": 10.0, "lost": 3}}

    assert stages["conversion"] == {
        "owner": "Ravi", "headline": "recovery_rate",
        "metrics": {"checkouts_abandoned": 6, "checkouts_reminded": 4, "checkouts_recovered": 2, "recovery_rate": 0.5,
                    "recovered_revenue": {"INR": "750.50"}, "payments_stalled": 7, "payments_reminded": 4, "payments_recovered": 2,
                    "payment_recovery_rate": 0.5, "payment_recovered_revenue": {"INR": "350.25"}, "lost": 4},
        "previous": {"checkouts_abandoned": 2, "checkouts_reminded": 2, "checkouts_recovered": 1, "recovery_rate": 0.5,
                     "recovered_revenue": {"INR": "199.99"}, "payments_stalled": 1, "payments_reminded": 1, "payments_recovered": 1,
                     "payment_recovery_rate": 1.0, "payment_recovered_revenue": {"INR": "40"}, "lost": 1},
        "change": {"checkouts_abandoned": 4, "checkouts_reminded": 2, "checkouts_recovered": 1, "recovery_rate": 0.0,
                   "recovered_revenue": {"INR": "550.51"}, "payments_stalled": 6, "payments_reminded": 3, "payments_recovered": 1,
                   "payment_recovery_rate": -0.5, "payment_recovered_revenue": {"INR": "310.25"}, "lost": 3}}

    assert stages["post_purchase"] == {
        "owner": "Priya", "headline": "ndr_rate",
        "metrics": {"updates_sent": 4, "updates_delivered": 3, "updates_read": 2, "updates_failed": 2, "shipments": 3, "ndr": 1,
                    "ndr_rate": 0.3333, "handoffs_opened": 5, "handoffs_resolved": 3, "median_hours_to_resolve": 3.0, "lost": 1},
        "previous": {"updates_sent": 1, "updates_delivered": 1, "updates_read": 0, "updates_failed": 0, "shipments": 2, "ndr": 0,
                     "ndr_rate": 0.0, "handoffs_opened": 2, "handoffs_resolved": 1, "median_hours_to_resolve": 5.0, "lost": 0},
        "change": {"updates_sent": 3, "updates_delivered": 2, "updates_read": 2, "updates_failed": 2, "shipments": 1, "ndr": 1,
                   "ndr_rate": 0.3333, "handoffs_opened": 3, "handoffs_resolved": 2, "median_hours_to_resolve": -2.0, "lost": 1}}

    assert stages["retention"] == {
        "owner": None, "headline": "repeat_rate",
        "metrics": {"windows_opened": 3, "reminded": 4, "skipped_busy": 1, "reordered_in_window": 2, "repeat_rate": 0.5,
                    "revenue": {"INR": "450"}, "lost": 2},
        "previous": {"windows_opened": 1, "reminded": 1, "skipped_busy": 0, "reordered_in_window": 1, "repeat_rate": 1.0,
                     "revenue": {"INR": "120.50"}, "lost": 0},
        "change": {"windows_opened": 2, "reminded": 3, "skipped_busy": 1, "reordered_in_window": 1, "repeat_rate": -0.5,
                   "revenue": {"INR": "329.50"}, "lost": 2}}

    health = r["message_health"]
    assert (health["opt_outs"], health["opt_outs_without_message"], health["opt_out_hours"]) == (4, 1, 72)

    def row(template, queued=0, sent=0, delivered=0, read=0, failed=None, skipped=None, pending=0, opt_outs=0):
        failed, skipped = failed or {}, skipped or {}
        return {"template": template, "queued": queued, "sent": sent, "delivered": delivered, "read": read, "failed": sum(failed.values()),
                "failed_by_code": failed, "skipped": sum(skipped.values()), "skipped_by_reason": skipped, "pending": pending,
                "opt_outs": opt_outs, "read_rate": round(read / sent, 4) if sent else None}

    assert health["templates"] == {
        "checkout_recovery.first": row("cart_v1", queued=1, sent=1, delivered=1),
        # the last attempt's code (131000 was retried); the status webhook's code for a send Meta failed later
        "cod_confirmation.ask": row("cod_v1", queued=5, sent=1, delivered=1, read=1, failed={"131026": 1, "132015": 1},
                                    skipped={"no_utility_consent": 1}, pending=1, opt_outs=1),
        "delivery.failed": row("ndr_v1", queued=1, failed={"131026": 1}),
        "delivery.shipped": row("shipped_v1", queued=5, sent=4, delivered=3, read=2, failed={"131026": 1}),
        # sent last week, answered with STOP this Monday: the opt-out shows against it
        "order_confirmation.sent": row("thanks_v1", opt_outs=1),
        "reorder.reminder": row("reorder_v1", queued=3, sent=1, delivered=1, read=1, skipped={"holdout": 1, "opted_out": 1}, opt_outs=1),
    }

    # lift: treated minus holdout, each with its own interval (Newcombe's score interval, 95%)
    lifts = {j: (x["treated_converted"], x["treated"], x["control_converted"], x["control"], x["lift"], x["ci95"], x["significant"])
             for j, x in r["lift"].items()}
    assert lifts == {
        # 2 of 4 abandoned treated checkouts converted against 1 of 2 in the holdout (the one still being filled in is in
        # neither): no evidence the reminders helped
        "checkout_recovery": (2, 4, 1, 2, 0.0, [-0.5356, 0.5356], False),
        # paid: 2 of 4 stalled treated against 1 of 3 (the one paid before its reminder was due is in neither group)
        "payment_recovery": (2, 4, 1, 3, 0.1667, [-0.4105, 0.6098], False),
        # reordered inside the window: 2 of 4 treated (the busy run is left out) against 1 of 4; late reorders count for neither
        "reorder": (2, 4, 1, 4, 0.25, [-0.3196, 0.6553], False),
    }
    assert r["biggest_leak"] == {"stage": "conversion", "lost": 4, "owner": "Ravi"}
    assert r["open_handoffs"] == {"Priya": 1, "Ravi": 1, "unassigned": 1}
    json.dumps(r)  # the API and --json serve it as is


def test_cod_orders_answered_in_words_are_a_persons_not_lost(db):
    """She answered the question in words: a person decides, so the order is neither confirmed here nor lost;
    her words count as her answer's time. One the store cancelled after talking to her is lost; one she then
    confirmed with a tap is confirmed."""
    settings = _settings("sqlite://")
    store_id = sync_stores(db, [("shop-a", "shopify")])["shop-a"]
    asked = MON + timedelta(days=1)
    at = lambda minutes: (asked + timedelta(minutes=minutes)).isoformat()  # noqa: E731
    with db.engine.begin() as conn:
        w = Week(conn, store_id)
        w.run("cod_confirmation", {"asked_at": asked.isoformat(), "phase": "with_person", "replied_at": at(20)}, status="active")
        w.run("cod_confirmation", {"asked_at": asked.isoformat(), "phase": "with_person", "replied_at": at(40),
                                   "closed_by": "order.cancelled", "outcome": "order_cancelled"})
        w.run("cod_confirmation", {"asked_at": asked.isoformat(), "phase": "with_person", "replied_at": at(60), "choice": "confirmed",
                                   "answered_at": at(90)})
    q = build_report(db, settings.stores[0], store_id, WEEK)["stages"]["qualification"]["metrics"]
    assert (q["asked"], q["with_person"], q["confirmed"], q["lost"]) == (3, 1, 1, 1)
    assert q["median_minutes_to_answer"] == 40.0  # 20, 40 and 60 (her words, before the tap at 90)


def test_a_cart_that_went_on_as_an_unpaid_order_is_one_checkout_in_the_funnel_and_the_lift(db):
    """A WooCommerce cart reminded, then its pending order (which went on with the cart's ladder) paid: one checkout,
    recovered; the cart's own run (ended "order_pending") counts neither as a second checkout nor as an unconverted one."""
    settings = _settings("sqlite://")
    store_id = sync_stores(db, [("shop-a", "shopify")])["shop-a"]
    with db.engine.begin() as conn:
        w = Week(conn, store_id)
        w.run("checkout_recovery", {"sent": 2, "superseded_by": "727"}, subject="checkout:wcf-a1")
        w.run("checkout_recovery", {"sent": 2, "continues": "checkout:wcf-a1", "order_id": "727", "recovered": True, "revenue": "50"},
              subject="order:727")
        # the control group (abandoned: their first step fired, the holdout kept its message back): one that did not buy
        w.run("checkout_recovery", {"step": 1, "sent": 1}, holdout=True)
        w.run("checkout_recovery", {"step": 1, "sent": 1, "order_id": "9", "recovered": False, "revenue": "0"}, holdout=True)  # and one that did
    r = build_report(db, settings.stores[0], store_id, WEEK)
    c = r["stages"]["conversion"]["metrics"]
    assert (c["checkouts_abandoned"], c["checkouts_reminded"], c["checkouts_recovered"], c["recovered_revenue"]) == (3, 1, 1, {"INR": "50"})
    lift = r["lift"]["checkout_recovery"]
    assert (lift["treated"], lift["control"], lift["lift"]) == (1, 2, 0.5)  # 1 of 1 treated bought, 1 of 2 in the holdout


def test_only_abandoned_checkouts_and_stalled_payments_are_counted_and_compared_in_the_lift(db):
    """A run starts with the checkout (or the order), so there is one for a checkout bought five minutes later and for an
    order paid before its reminder was due: those were never abandoned or stalled, and count in neither the funnel nor
    the lift, whichever group their contact is in. Runs kept before ``abandoned`` was recorded count by their ladder
    steps (``step``; before that was kept, ``sent``); payment runs have always kept ``reminded``."""
    settings = _settings("sqlite://")
    store_id = sync_stores(db, [("shop-a", "shopify")])["shop-a"]
    with db.engine.begin() as conn:
        w = Week(conn, store_id)
        # never abandoned: bought or completed before the abandonment time (both groups), and one still being filled in
        w.run("checkout_recovery", {"sent": 0, "order_id": "n1", "recovered": False, "revenue": "0", "outcome": "converted"})
        w.run("checkout_recovery", {"sent": 0, "order_id": "n2", "recovered": False, "revenue": "0", "outcome": "converted"},
              holdout=True)
        w.run("checkout_recovery", {"sent": 0, "outcome": "completed"}, holdout=True)
        w.run("checkout_recovery", {"sent": 0}, status="active")
        # abandoned: a ladder step fired while it was open, or it was bought after its abandonment time
        w.run("checkout_recovery", {"step": 1, "sent": 1})
        w.run("checkout_recovery", {"sent": 2, "order_id": "a1", "recovered": True, "revenue": "400"})  # kept before ``step`` was
        w.run("checkout_recovery", {"step": 1, "sent": 0}, holdout=True)
        w.run("checkout_recovery", {"sent": 0, "abandoned": True, "order_id": "a2", "recovered": False, "revenue": "0"}, holdout=True)
        # payments paid before their reminder was due, in both groups: never stalled
        w.run("payment_recovery", {"paid": True, "outcome": "paid_without_reminder"})
        w.run("payment_recovery", {"paid": True, "outcome": "paid_without_reminder"}, holdout=True)
        w.run("payment_recovery", {"reminded": True, "sent": 1, "paid": True, "recovered": True, "revenue": "120"})
        w.run("payment_recovery", {"reminded": True, "sent": 1})
        w.run("payment_recovery", {"reminded": True, "sent": 1}, holdout=True)
    r = build_report(db, settings.stores[0], store_id, WEEK)
    c = r["stages"]["conversion"]["metrics"]
    assert (c["checkouts_abandoned"], c["checkouts_reminded"], c["checkouts_recovered"], c["recovered_revenue"]) == (4, 2, 1, {"INR": "400"})
    assert (c["payments_stalled"], c["payments_reminded"], c["payments_recovered"], c["payment_recovered_revenue"]) == (3, 2, 1, {"INR": "120"})
    groups = {j: (x["treated_converted"], x["treated"], x["control_converted"], x["control"]) for j, x in r["lift"].items()}
    assert groups == {"checkout_recovery": (1, 2, 1, 2), "payment_recovery": (1, 2, 0, 1)}


def test_recovered_revenue_leaves_out_orders_the_store_cancelled_voided_or_refunded_since(db):
    """A reminded checkout, payment or reorder whose order was cancelled, voided or refunded afterwards recovered nothing:
    the report reads each order as it stands now, in its own store only (shop-b's order "5001", cancelled, is another order)."""
    settings = _settings("sqlite://")
    ids = sync_stores(db, [("shop-a", "shopify"), ("shop-b", "shopify")])
    a, b = ids["shop-a"], ids["shop-b"]
    with db.engine.begin() as conn:
        w, other = Week(conn, a), Week(conn, b)
        cid = w.contact(OLD, "granted")
        kept = w.order(cid, _d(1), "500", external_id="5001")
        other.order(other.contact(OLD), _d(1), "500", external_id="5001", cancelled_at=_d(2))  # shop-b's own order 5001
        cancelled = w.order(cid, _d(1), "300", cancelled_at=_d(2))
        refunded = w.order(cid, _d(1), "200", payment_state="refunded")
        partly = w.order(cid, _d(1), "80", payment_state="partially_refunded")  # a partial refund: the sale stands
        for order_id, total in ((kept, "500"), (cancelled, "300"), (refunded, "200"), (partly, "80")):
            w.run("checkout_recovery", {"sent": 1, "recovered": True, "revenue": total, "order_id": order_id})
        voided = w.order(cid, _d(1), "700", payment_state="voided")
        paid = w.order(cid, _d(1), "150")
        w.run("payment_recovery", {"reminded": True, "sent": 1, "paid": True, "order_id": voided, "revenue": "700"}, subject=f"order:{voided}")
        w.run("payment_recovery", {"reminded": True, "paid": True, "revenue": "150"}, subject=f"order:{paid}")  # no order_id kept
        ends = _d(8).isoformat()
        for order_id, total in ((w.order(cid, _d(3), "90"), "90"), (w.order(cid, _d(3), "60", payment_state="refunded"), "60")):
            w.run("reorder", {"sent": 1, "reordered": True, "attributed": True, "order_id": order_id, "revenue": total,
                              "attribution_ends": ends})
    r = build_report(db, settings.stores[0], a, WEEK)
    c, kept_back = r["stages"]["conversion"]["metrics"], r["stages"]["retention"]["metrics"]
    assert (c["checkouts_reminded"], c["checkouts_recovered"], c["recovered_revenue"]) == (4, 2, {"INR": "580"})
    assert (c["payments_reminded"], c["payments_recovered"], c["payment_recovered_revenue"]) == (2, 1, {"INR": "150"})
    assert (kept_back["reminded"], kept_back["reordered_in_window"], kept_back["revenue"]) == (2, 1, {"INR": "90"})


def test_a_cart_credited_with_an_order_still_waiting_for_its_bank_transfer_recovered_nothing(db):
    """Runs from before checkout recovery waited for a bank transfer credited the on-hold order as placed: the report
    reads the order as it stands now, so one still awaiting its money is no recovery (nor a conversion in the lift),
    while a cash-on-delivery order (pending until the courier collects) and one paid since still count."""
    settings = _settings("sqlite://")
    a = sync_stores(db, [("shop-a", "shopify")])["shop-a"]
    with db.engine.begin() as conn:
        w = Week(conn, a)
        cid = w.contact(OLD, "granted")
        on_hold = w.order(cid, _d(1), "900", payment_state="pending")  # a bank transfer that never came
        cod = w.order(cid, _d(1), "400", payment_state="pending", is_cod=True)
        paid_since = w.order(cid, _d(1), "250")
        for order_id, total in ((on_hold, "900"), (cod, "400"), (paid_since, "250")):
            w.run("checkout_recovery", {"sent": 1, "step": 1, "recovered": True, "revenue": total, "order_id": order_id})
    c = build_report(db, settings.stores[0], a, WEEK)["stages"]["conversion"]["metrics"]
    assert (c["checkouts_reminded"], c["checkouts_recovered"], c["recovered_revenue"], c["lost"]) == (3, 2, {"INR": "650"}, 1)


def test_the_lift_says_how_many_treated_customers_a_reminder_reached_and_the_lift_per_customer_reached(db):
    """Ten treated reorder windows, a reminder reached eight (two were skipped: no consent, opted out), four reordered;
    one of ten in the holdout reordered. The lift over everyone treated is 30 points; the two never reached converted
    like the holdout, so per customer reached a reminder did 30 / 0.8 = 37.5 points, its interval scaled alike."""
    settings = _settings("sqlite://")
    store_id = sync_stores(db, [("shop-a", "shopify")])["shop-a"]
    ends = _d(8).isoformat()
    with db.engine.begin() as conn:
        w = Week(conn, store_id)
        for i in range(10):
            subject = f"reorder:o{i}:p:1"
            bought = {"reordered": True, "order_id": f"r{i}"} if i < 4 else {}
            w.run("reorder", {"sent": 1, "attribution_ends": ends, **bought}, subject=subject)
            status, skip = ("read", None) if i < 8 else ("skipped", "no_marketing_consent" if i == 8 else "opted_out")
            conn.execute(m.OutboxMessage.__table__.insert().values(
                store_id=store_id, idempotency_key=step_key("reorder", "reminder", subject), channel="whatsapp", journey="reorder",
                step="reminder", category="marketing", payload={}, status=status, skip_reason=skip, due_at=_d(1), created_at=_d(1),
                updated_at=_d(1)))
        for i in range(10):
            w.run("reorder", {"sent": 1, "attribution_ends": ends, **({"reordered": True} if i == 0 else {})}, holdout=True)
    x = build_report(db, settings.stores[0], store_id, WEEK)["lift"]["reorder"]
    assert (x["treated_converted"], x["treated"], x["control_converted"], x["control"], x["lift"]) == (4, 10, 1, 10, 0.3)
    assert (x["treated_reached"], x["reach_rate"], x["lift_per_reached"]) == (8, 0.8, 0.375)
    assert x["ci95_per_reached"] == pytest.approx([x["ci95"][0] / 0.8, x["ci95"][1] / 0.8], abs=2e-4)
    assert diff_interval(4, 10, 1, 10, reached=0)["lift_per_reached"] is None  # nobody reached: no per-reached figure
    assert "lift_per_reached" not in diff_interval(4, 10, 1, 10)


def test_lift_interval_covers_a_known_effect():
    # 30% vs 20% over 2,000 each: a real 10-point lift, clearly significant
    out = diff_interval(600, 2000, 400, 2000)
    assert out["lift"] == 0.1 and out["significant"] is True and out["ci95"][0] < 0.1 < out["ci95"][1]
    assert out["ci95"] == [0.0733, 0.1266] and out["relative_lift"] == 0.5
    assert diff_interval(3, 10, 0, 0)["lift"] is None


def test_week_labels():
    assert parse_week("2026-W01", TZ, MON).start == datetime(2025, 12, 28, 18, 30, tzinfo=timezone.utc)
    last = parse_week(None, TZ, datetime(2026, 11, 24, 12, tzinfo=timezone.utc))
    assert last.label == "2026-W47"
    for bad in ("2026-47", "W47", "2026-W54"):
        with pytest.raises(ValueError):
            parse_week(bad, TZ, MON)


def _toml(value) -> str:
    """Enough TOML for a settings dict: inline tables and arrays, JSON-quoted strings."""
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{json.dumps(k)} = {_toml(v)}" for k, v in value.items()) + " }"
    if isinstance(value, list):
        return "[ " + ", ".join(_toml(v) for v in value) + " ]"
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value) if isinstance(value, (int, float)) else json.dumps(value)


def test_report_over_the_api_and_the_cli(db_url, tmp_path):
    from typer.testing import CliRunner

    from connector.cli import app

    raw = _raw_settings(db_url)
    settings = parse_settings(raw, environ={})
    with running_app(settings) as (client, runtime):
        build_week(runtime.db, runtime.store_ids["shop-a"])
        assert client.get("/api/stores/shop-a/report?week=2026-W47").status_code == 401
        auth = {"Authorization": f"Bearer {SECRETS['admin']}"}
        bad = client.get("/api/stores/shop-a/report?week=2026-47", headers=auth)
        assert bad.status_code == 400 and "ISO week" in bad.text
        body = client.get("/api/stores/shop-a/report?week=2026-W47", headers=auth).json()
    assert body["biggest_leak"] == {"stage": "conversion", "lost": 4, "owner": "Ravi"}
    assert body["stages"]["post_purchase"]["owner"] == "Priya" and set(body["lift"]) == {"checkout_recovery", "payment_recovery", "reorder"}
    # the CLI, given the same settings as a TOML file, prints the very same report
    config = tmp_path / "storeloop.toml"
    config.write_text("".join(f"{key} = {_toml(value)}\n" for key, value in raw.items()))
    as_json = CliRunner().invoke(app, ["report", "--config", str(config), "--store", "shop-a", "--week", "2026-W47", "--json"])
    assert as_json.exit_code == 0, as_json.output
    assert json.loads(as_json.stdout) == body
    table = CliRunner().invoke(app, ["report", "--config", str(config), "--store", "shop-a", "--week", "2026-W47"], env={"COLUMNS": "200"})
    assert table.exit_code == 0, table.output
    assert "Biggest leak: conversion" in table.output and "Ravi" in table.output and "recovery_rate" in table.output
    assert "checkout 1, order 1, other 1, whatsapp 1" in table.output and "checkout +1, order +1, other +1, whatsapp +0" in table.output
    assert "marketing opt-outs this week: 4 (1 with no message in the 72 h before)" in table.output
    assert "INR 750.50" in table.output and "INR 199.99" in table.output and "INR +550.51" in table.output  # revenue per currency
