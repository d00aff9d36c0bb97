"""Privacy requests reach every place a customer's data now lives, and nothing of another store.

tests/test_compliance.py tells one customer's story (checkout, order, messages, a hand-off) and
scans every column of every table after each request. These add what that story never writes:
a delivery the adapter could not read (the export), a job's error text (job health), a
personalised item whose title names her (reorder windows, runs and sends keyed by it), her
platform customer id (customer webhooks, the reconcile's customers pass), and the retention
purge. Signed webhooks into the real app, the same phone in a second store, on SQLite and
PostgreSQL.
"""

from __future__ import annotations

import json
from datetime import timedelta

from sqlalchemy import select

from connector.config import parse_settings
from connector.storage import models as m
from connector.storage.inbox import with_body
from tests.conftest import PHONE_ID_B, SECRETS, settings_dict
from tests.helpers import running_app
from tests.test_compliance import (
    KABIR, MEENA, SHOP_A, SHOP_B, T0, TEMPLATES, Clock, Person, _address, customer_story, leaks, order_payload, post_shopify,
    request_payload, two_shops,
)

REORDER_TEMPLATE = {"step": "reorder.reminder", "name": "reorder_v1", "category": "marketing",
                    "body_text": "Hi {{1}}, running low on {{2}}?", "body": ["customer.first_name", "reorder.product"]}


def make_settings(db_url: str, *, admin_api: bool = False):
    """Shops A and B with the compliance tests' journeys and reorder reminders; ``admin_api``: shop A
    has an Admin API token (the reconcile reads the fake Shopify of tests/test_sync.py)."""
    raw = settings_dict(db_url)
    if admin_api:
        raw["stores"][0].update(access_token="shpat_test", api_base_url="https://shop-a.example")
    for store in raw["stores"][:2]:
        store.update(templates=[*TEMPLATES, REORDER_TEMPLATE], policy={"quiet_hours": ""},
                     journeys={"order_confirmation": {}, "checkout_recovery": {"abandon_after_minutes": 30, "ladder_minutes": [0]},
                               "reorder": {"follow_up_days": None}},
                     stages={"post_purchase": {"owner": "Care desk", "notify_url": "https://hooks.slack.example/services/T0/B0/X"}})
    return parse_settings(raw, environ={})


def drain(runtime) -> None:
    runtime.processor.drain()


def stored_export(runtime) -> dict:
    with runtime.db.engine.connect() as conn:
        return conn.execute(select(m.ComplianceRequest.export).where(m.ComplianceRequest.kind == "customer_data_request")
                            .order_by(m.ComplianceRequest.id.desc())).scalars().first()


def unreadable_order(p: Person, order_id: int) -> dict:
    """An order update the adapter cannot read (a broken date): stored, failed, never tied to a contact."""
    return {**order_payload(p, order_id, "2026-11-20T07:00:00Z"), "created_at": "yesterday"}


def gift(buyer: Person, to: Person, order_id: int) -> dict:
    """``buyer``'s order shipped to ``to``: it names her, but it is the buyer's."""
    o = order_payload(buyer, order_id, "2026-11-20T07:20:00Z")
    o["shipping_address"] = _address(to)
    return o


# -- the export --------------------------------------------------------------------------------------------
def test_a_data_request_exports_the_unread_delivery_about_her_but_not_someone_elses_order_naming_her(db_url):
    """Meena's order update that the adapter could not read (failed, tied to no contact) names her:
    the erasure erases it, so the export she is owed must show it too. Kabir's gift to her names
    her as well, but it is his order: it stays out of her export."""
    settings = make_settings(db_url)
    clock = Clock(T0)
    with running_app(settings) as (client, runtime):
        runtime.processor.clock = clock
        customer_story(client, runtime, settings, clock, MEENA, order_id=7001, token="tokM")
        assert post_shopify(client, unreadable_order(MEENA, 7001), "orders/updated").status_code == 200
        assert post_shopify(client, gift(KABIR, MEENA, 7002), "orders/create").status_code == 200
        drain(runtime)
        with runtime.db.engine.connect() as conn:
            unread = conn.execute(select(m.InboxEvent.id, m.InboxEvent.status, m.InboxEvent.contact_id)
                                  .where(m.InboxEvent.topic == "orders/updated")).one()
        assert (unread.status, unread.contact_id) == ("failed", None)
        assert post_shopify(client, request_payload(MEENA, [7001], data_request=True), "customers/data_request").status_code == 200
        drain(runtime)
        export = stored_export(runtime)
    exported = {e["id"]: e for e in export["inbox_events"]}
    assert unread.id in exported, sorted((e["topic"], e["status"]) for e in exported.values())
    assert exported[unread.id]["body"]["email"] == MEENA.email and exported[unread.id]["status"] == "failed"
    assert export["counts"]["inbox_events"] == len(exported)
    # Kabir's order (his name, email and phone) is not handed to her
    text = json.dumps(export)
    assert not any(n in text for n in KABIR.needles()), [n for n in KABIR.needles() if n in text]
    assert [o["external_id"] for o in export["orders"]] == ["7001"]


# -- job health --------------------------------------------------------------------------------------------
def window_failure(p: Person) -> Exception:
    """The reorder tick's error when a window would not open, its reason quoting the customer (a plugin's bug)."""
    from connector.reorder.windows import WindowsNotOpened

    return WindowsNotOpened("shop", {41: f"ValueError: no reminder for {p.first} {p.last} <{p.email}> at {p.phone}"})


def job_errors(runtime, store_key: str) -> list[dict]:
    from connector.job_health import job_states

    with runtime.db.engine.connect() as conn:
        return job_states(conn, runtime.store_ids[store_key])


def test_erasures_scrub_job_error_texts_and_keep_the_failing_job_shown(db_url):
    """A failed reorder tick's error, shown on the dashboard, quotes Meena. Her erasure takes her out
    of it; store B's job error (the same person is B's customer too) is B's and stays. The shop's
    erasure leaves no customer text in A's job errors either. The jobs still show as failing."""
    from connector import job_health

    with two_shops(db_url) as (settings, clock, client, runtime, a, b):
        customer_story(client, runtime, settings, clock, MEENA, order_id=7001, token="tokM")
        customer_story(client, runtime, settings, clock, KABIR, order_id=7002, token="tokK")
        customer_story(client, runtime, settings, clock, MEENA, order_id=8001, token="tokB", shop=SHOP_B,
                       secret=SECRETS["shop_b"], phone_id=PHONE_ID_B)
        job_health.record(runtime.db, a, "reorder", clock.now, window_failure(MEENA))
        job_health.record(runtime.db, a, "sync", clock.now, window_failure(KABIR))
        job_health.record(runtime.db, b, "reorder", clock.now, window_failure(MEENA))
        b_jobs = job_errors(runtime, "shop-b")
        assert MEENA.email in b_jobs[0]["last_error"]

        clock.now = T0 + timedelta(hours=2)
        assert post_shopify(client, request_payload(MEENA, [7001]), "customers/redact").status_code == 200
        drain(runtime)
        assert leaks(runtime.db, MEENA.needles(), a) == []
        jobs = {j["job"]: j for j in job_errors(runtime, "shop-a")}
        assert jobs["reorder"]["status"] == "failing" and jobs["reorder"]["last_error"].startswith("WindowsNotOpened: ")
        assert KABIR.email in jobs["sync"]["last_error"]  # another customer's text is not hers to erase
        assert job_errors(runtime, "shop-b") == b_jobs

        clock.now = T0 + timedelta(days=2)
        assert post_shopify(client, {"shop_id": 954889, "shop_domain": SHOP_A}, "shop/redact").status_code == 200
        drain(runtime)
        assert leaks(runtime.db, KABIR.needles() + MEENA.needles(), a) == []
        jobs = {j["job"]: j for j in job_errors(runtime, "shop-a")}
        assert [(j["status"], j["last_error"].split(":")[0]) for j in jobs.values()] == [("failing", "WindowsNotOpened")] * 2
        assert job_errors(runtime, "shop-b") == b_jobs


# -- a personalised item -----------------------------------------------------------------------------------
def personalised(p: Person, order_id: int, at: str) -> dict:
    """An order of one custom item (no product, no SKU) whose title names her: keyed by its title."""
    o = order_payload(p, order_id, at)
    title = f"Engraved bracelet for {p.first}"
    o["line_items"] = [{**o["line_items"][0], "id": order_id * 10, "product_id": None, "variant_id": None, "sku": None,
                        "title": title, "name": title, "quantity": 1}]
    return o


def test_an_erasure_takes_her_name_out_of_the_keys_a_personalised_items_title_made(db_url):
    """Meena twice bought a bracelet engraved with her name (a custom item: no product, no SKU), so her
    reorder window, its run and its reminder are keyed by the title. After her erasure the title was
    scrubbed but those keys still spelled her name, and the next daily scan, reading the scrubbed
    title, planned her a new pending window. Now the keys are scrubbed as the title is: no name, and
    the scan finds the same window (closed). Kabir's window of the same kind and store B's stay."""
    from connector.reorder.windows import refresh_windows, run_reorder_tick

    settings = make_settings(db_url)
    clock = Clock(T0)
    with running_app(settings) as (client, runtime):
        runtime.processor.clock = clock
        a, b = runtime.store_ids["shop-a"], runtime.store_ids["shop-b"]
        store_a, store_b = settings.stores[0], settings.stores[1]
        for shop, secret, base in ((SHOP_A, SECRETS["shop_a"], 7000), (SHOP_B, SECRETS["shop_b"], 8000)):
            for n, day in ((1, "2026-11-10"), (2, "2026-11-16")):
                post_shopify(client, personalised(MEENA, base + n, f"{day}T07:00:00Z"), "orders/create", shop, secret)
        for n, day in ((3, "2026-11-10"), (4, "2026-11-16")):
            post_shopify(client, personalised(KABIR, 7000 + n, f"{day}T07:00:00Z"), "orders/create")
        drain(runtime)
        clock.now = T0 + timedelta(days=4)  # her cadence: 6 days; opens 3 days early, 4 days' transit after the second
        for store, sid in ((store_a, a), (store_b, b)):
            refresh_windows(runtime.db, store, sid, clock.now, full=True)
            run_reorder_tick(runtime.db, store, sid, clock.now)  # both windows open: a reminder each is queued
        with runtime.db.engine.connect() as conn:
            subjects = conn.execute(select(m.JourneyRun.subject).where(m.JourneyRun.journey == "reorder", m.JourneyRun.store_id == a)
                                    .order_by(m.JourneyRun.id)).scalars().all()
            kabirs = conn.execute(select(m.OutboxMessage.idempotency_key, m.OutboxMessage.status, m.OutboxMessage.skip_reason).where(
                m.OutboxMessage.journey == "reorder", m.OutboxMessage.store_id == a, m.OutboxMessage.idempotency_key.contains("kabirdas"))).one()
        assert subjects == ["reorder:7002:t:engraved bracelet for meenakshi", "reorder:7004:t:engraved bracelet for kabirdas"]
        b_before = leaks(runtime.db, MEENA.needles(), b)
        assert ("reorder_windows", "product_key") in {(t, c) for t, c, *_ in b_before}

        clock.now = T0 + timedelta(days=5)
        assert post_shopify(client, request_payload(MEENA, [7001, 7002]), "customers/redact").status_code == 200
        drain(runtime)
        assert leaks(runtime.db, MEENA.needles(), a) == []
        clock.now = T0 + timedelta(days=6)
        refresh_windows(runtime.db, store_a, a, clock.now, full=True)  # the daily scan reads the scrubbed title
        assert leaks(runtime.db, MEENA.needles(), a) == []
        with runtime.db.engine.connect() as conn:
            windows = conn.execute(select(m.ReorderWindow.product_key, m.ReorderWindow.status).where(m.ReorderWindow.store_id == a)
                                   .order_by(m.ReorderWindow.id)).all()
            runs = conn.execute(select(m.JourneyRun.subject, m.JourneyRun.status).where(m.JourneyRun.journey == "reorder",
                                                                                        m.JourneyRun.store_id == a).order_by(m.JourneyRun.id)).all()
            reminders = conn.execute(select(m.OutboxMessage.idempotency_key, m.OutboxMessage.status, m.OutboxMessage.skip_reason).where(
                m.OutboxMessage.journey == "reorder", m.OutboxMessage.store_id == a).order_by(m.OutboxMessage.id)).all()
    assert windows == [("t:engraved bracelet for [redacted]", "opened"), ("t:engraved bracelet for kabirdas", "opened")]
    assert runs == [("reorder:7002:t:engraved bracelet for [redacted]", "finished"), ("reorder:7004:t:engraved bracelet for kabirdas", "active")]
    assert reminders[0][0] == "reorder:reminder:reorder:7002:t:engraved bracelet for [redacted]" and reminders[1] == kabirs
    assert leaks(runtime.db, MEENA.needles(), b) == b_before  # store B's customer is B's


# -- her platform customer id ------------------------------------------------------------------------------
def customer_update(p: Person) -> dict:
    return {"id": p.customer_id, "first_name": p.first, "last_name": p.last, "email": p.email, "phone": p.phone,
            "updated_at": "2026-11-20T06:40:00Z", "default_address": _address(p)}


def customer_node(p: Person, at) -> dict:
    """Her ``customers`` node as the reconcile's customers pass reads it."""
    from tests.test_sync import iso

    return {"id": f"gid://shopify/Customer/{p.customer_id}", "updatedAt": iso(at), "defaultPhoneNumber": {
        "phoneNumber": p.e164, "marketingState": "NOT_SUBSCRIBED", "marketingUpdatedAt": None,
        "whatsAppMarketingConsent": {"state": "SUBSCRIBED", "updatedAt": iso(at)}}}


def test_an_erasure_leaves_no_platform_customer_id_in_the_inbox(db_url):
    """Her contact's platform customer id is erased, but a customers/update webhook kept it as its inbox
    subject (``customer:<id>``) and the reconcile's customers pass as its dedupe key
    (``shopify:sync-customer:gid://shopify/Customer/<id>:...``). Both go with her; store B's rows
    about the same customer (same id, same phone) stay, and so does Kabir's subject."""
    from tests.test_reconcile_consent import run_reconcile
    from tests.test_sync import FakeShopify

    settings = make_settings(db_url, admin_api=True)
    clock = Clock(T0)
    ids = [str(MEENA.customer_id), f"Customer/{MEENA.customer_id}"]
    with running_app(settings) as (client, runtime):
        runtime.processor.clock = clock
        a, b = runtime.store_ids["shop-a"], runtime.store_ids["shop-b"]
        customer_story(client, runtime, settings, clock, MEENA, order_id=7001, token="tokM")
        for p in (MEENA, KABIR):
            assert post_shopify(client, customer_update(p), "customers/update").status_code == 200
        assert post_shopify(client, customer_update(MEENA), "customers/update", SHOP_B, SECRETS["shop_b"]).status_code == 200
        fake = FakeShopify([])
        fake.customers = {f"gid://shopify/Customer/{MEENA.customer_id}": customer_node(MEENA, T0 - timedelta(minutes=20))}
        report = run_reconcile(runtime.db, settings.stores[0], a, fake, now=T0 + timedelta(hours=1))
        assert (report.customers_seen, report.new_rows) == (1, 1)
        drain(runtime)
        with runtime.db.engine.connect() as conn:
            rows = conn.execute(select(m.InboxEvent.topic, m.InboxEvent.subject, m.InboxEvent.dedupe_key, m.InboxEvent.status)
                                .where(m.InboxEvent.store_id == a, m.InboxEvent.topic.in_(("customers/update", "sync/customer")))).all()
        assert {(r.topic, r.status) for r in rows} == {("customers/update", "done"), ("sync/customer", "done")}
        assert {(t, c) for t, c, *_ in leaks(runtime.db, ids, a)} >= {("inbox_events", "subject"), ("inbox_events", "dedupe_key")}
        b_before = leaks(runtime.db, ids + MEENA.needles(), b)
        assert ("inbox_events", "subject") in {(t, c) for t, c, *_ in b_before}

        clock.now = T0 + timedelta(hours=2)
        assert post_shopify(client, request_payload(MEENA, [7001]), "customers/redact").status_code == 200
        drain(runtime)
        assert leaks(runtime.db, ids + MEENA.needles(), a) == []
        assert leaks(runtime.db, ids + MEENA.needles(), b) == b_before
        with runtime.db.engine.connect() as conn:
            kabir = conn.execute(select(m.InboxEvent.subject).where(m.InboxEvent.store_id == a, m.InboxEvent.subject.contains(
                str(KABIR.customer_id)))).scalars().all()
        assert kabir == [f"customer:{KABIR.customer_id}"]

        # the shop's erasure: no customer's id left in A's inbox
        clock.now = T0 + timedelta(days=2)
        assert post_shopify(client, {"shop_id": 954889, "shop_domain": SHOP_A}, "shop/redact").status_code == 200
        drain(runtime)
        assert leaks(runtime.db, [str(KABIR.customer_id)] + KABIR.needles(), a) == []
        assert leaks(runtime.db, ids + MEENA.needles(), b) == b_before


# -- the retention purge ------------------------------------------------------------------------------------
def test_the_retention_purge_leaves_no_copy_of_an_old_body_in_the_normalised_event(db_url):
    """Past ``worker.raw_body_retention_days`` the raw bodies of settled rows went, but each row's
    normalised event, the same data (her name, phone, email, the text she wrote), stayed for good.
    Now it keeps the event types only (the contact timeline still says what each delivery was). A
    failed delivery keeps its body for a replay, a recent one keeps everything, and the timeline's
    own texts stay as documented."""
    from connector.retention import purge_raw_bodies
    from tests.test_compliance import ADMIN

    settings = make_settings(db_url)
    clock = Clock(T0)
    with running_app(settings) as (client, runtime):
        runtime.processor.clock = clock
        a = runtime.store_ids["shop-a"]
        customer_story(client, runtime, settings, clock, MEENA, order_id=7001, token="tokM")
        assert post_shopify(client, unreadable_order(MEENA, 7001), "orders/updated").status_code == 200
        drain(runtime)
        retention = settings.worker.raw_body_retention_days
        with runtime.db.engine.begin() as conn:  # her story, received a retention and a day ago
            old = dict(conn.execute(select(m.InboxEvent.id, m.InboxEvent.status).where(m.InboxEvent.store_id == a)).all())
            conn.execute(m.InboxEvent.__table__.update().where(m.InboxEvent.id.in_(old))
                         .values(received_at=m.utcnow() - timedelta(days=retention + 1)))
        assert post_shopify(client, order_payload(KABIR, 7002, "2026-11-21T07:00:00Z"), "orders/create").status_code == 200
        drain(runtime)
        failed = [i for i, status in old.items() if status == "failed"]
        assert len(failed) == 1 and len(old) == 5

        purged = purge_raw_bodies(runtime.db, m.utcnow(), retention)
        assert purged == len(old) - 1
        texts = [n for n in MEENA.needles() if n != MEENA.inbound_wamid] + ["Please call me"]  # message ids stay, as in the timeline
        inbox_leaks = {(t, row) for t, _, row, _ in leaks(runtime.db, texts, a) if t in ("inbox_events", "inbox_bodies")}
        assert inbox_leaks == {("inbox_bodies", failed[0])}  # kept for a replay
        with runtime.db.engine.connect() as conn:
            kabir = conn.execute(with_body().where(m.InboxEvent.store_id == a, m.InboxEvent.id.not_in(old))).one()
        assert KABIR.email in json.dumps(kabir.event) and kabir.raw_body is not None  # recent: all of it
        # what the timeline shows of her old deliveries: each one's kind; her messages' texts stay
        view = client.get(f"/api/stores/shop-a/contacts/{MEENA.e164}", headers=ADMIN).json()
        kinds = {t["topic"]: t["types"] for t in view["timeline"] if t["kind"] == "event"}
        assert kinds["orders/create"] == ["order.placed"] and kinds["message"] == ["whatsapp.message_received"]
        assert any(MEENA.email in (t.get("text") or "") for t in view["timeline"] if t["kind"] == "message")


def test_migration_0021_reduces_the_events_of_rows_the_purge_emptied_before(db_url, tmp_path):
    """Rows purged by the earlier code (settled, no body) keep their event types only; a row still
    within the retention (its body there), a failed one and a privacy request's own row are left."""
    from sqlalchemy import insert, text

    from connector.storage.db import migrate
    from tests.test_cod_late_answers import _empty_database

    full = [{"type": "whatsapp.message_received", "profile_name": MEENA.first, "text": f"call me on {MEENA.phone}"}]
    rows = {"purged": ("done", "message", True), "ignored": ("ignored", "message", True), "recent": ("done", "message", False),
            "failed": ("failed", "message", True), "request": ("done", "customers/redact", True)}
    with _empty_database(db_url, tmp_path) as engine:
        migrate(engine, "0020")
        with engine.begin() as conn:
            conn.execute(text("INSERT INTO stores (key, platform, created_at) VALUES ('a', 'shopify', '2026-11-01 00:00:00')"))
            sid = conn.execute(text("SELECT id FROM stores")).scalar()
            summary = [{"type": "compliance.requested", "kind": "customer_redact", "request_id": 3, "counts": {"contacts": 1}}]
            for key, (status, topic, purged) in rows.items():
                row_id = conn.execute(insert(m.InboxEvent.__table__).returning(m.InboxEvent.id), {
                    "store_id": sid, "source": "whatsapp", "topic": topic, "dedupe_key": key, "received_at": T0, "headers": {},
                    "status": status, "attempts": 0, "event": summary if key == "request" else full}).scalar_one()
                if not purged:
                    conn.execute(insert(m.InboxBody.__table__), {"id": row_id, "raw_body": b"{}"})
        migrate(engine)
        with engine.connect() as conn:
            events = dict(conn.execute(select(m.InboxEvent.dedupe_key, m.InboxEvent.event)).all())
    assert events["purged"] == events["ignored"] == [{"type": "whatsapp.message_received"}]
    assert events["recent"] == events["failed"] == full
    assert events["request"][0]["request_id"] == 3
