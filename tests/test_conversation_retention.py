"""Conversation content past ``worker.conversation_retention_days`` is emptied by the hourly retention job.

The raw webhook bodies went after their retention, but the conversation stayed for good: her texts
(``messages``), the hand-off's context and the reason quoting her, the rendered messages we sent
(her name, her recovery link). The job (``jobs.scheduler.purge_job``, the function the scheduler
runs) now empties them by each row's own time, on the runtime's clock. An open case, a send still
to go and a recent message keep everything; the weekly report's figures are the same before and
after. Signed webhooks into the real app, SQLite and PostgreSQL; the config errors through the CLI.
"""

from __future__ import annotations

import json
import logging
import shutil
import threading
from datetime import datetime, timedelta, timezone

import anyio
import pytest
from sqlalchemy import event as sqlalchemy_event, func, insert, select
from typer.testing import CliRunner

from connector.cli import app
from connector.reports import build_report, parse_week
from connector.storage import models as m
from jobs.scheduler import purge_job
from tests.helpers import running_app
from tests.test_compliance import (
    ADMIN, KABIR, MEENA, T0, Clock, Person, checkout_payload, customer_story, inbound_text, leaks, personal_data_in_logs, post_shopify,
    request_payload,
    post_whatsapp,
)
from tests.test_config_and_cli_errors import _config, _no_traceback, _plain
from tests.test_privacy_completeness import make_settings

RIYA = Person("Riyanka", "Thakurdas", "riya.t@example.com", "099887 76655", "+919988776655", 7720003)
CONTENT_TABLES = ("messages", "handoffs", "outbox", "outbox_attempts")


def rows(db, model, *where):
    with db.engine.connect() as conn:
        return conn.execute(select(model).where(*where).order_by(model.id)).all()


def test_old_conversations_and_closed_cases_are_emptied_open_cases_pending_sends_and_recent_texts_stay(db_url, caplog):
    """Meena's whole story (reminder, order confirmation, her free-text reply, its hand-off, closed) is a
    retention old: her texts, the case's context and her words in its reason, and the rendered messages
    go; direction, status, wamid, times, template names and the report's figures stay, and the timeline
    says the text was removed. Kabir's old case is still open (kept whole, though his message itself is
    emptied), his reminder is still pending (kept whole: it still has to go); Riya's message of yesterday keeps its text."""
    settings = make_settings(db_url)
    days = settings.worker.conversation_retention_days
    assert days == 365  # the default
    clock = Clock(T0)
    with running_app(settings, clock=clock) as (client, runtime):
        runtime.processor.clock = clock
        a = runtime.store_ids["shop-a"]
        store = settings.stores[0]
        customer_story(client, runtime, settings, clock, MEENA, order_id=7001, token="tokM")
        # Kabir: a checkout whose reminder is queued and not sent, and a question that opens a case
        clock.now = T0 + timedelta(minutes=50)
        assert post_whatsapp(client, inbound_text(KABIR, "Is the blue one back in stock?", clock.now, wamid="wamid.K1")).status_code == 200
        runtime.processor.drain()
        assert post_shopify(client, checkout_payload(KABIR, "tokK"), "checkouts/create").status_code == 200
        runtime.processor.drain()
        clock.now = T0 + timedelta(minutes=90)
        runtime.processor.process_timers()
        cases = {h.contact_id: h for h in rows(runtime.db, m.Handoff, m.Handoff.store_id == a)}
        meena_id = next(c for c, h in cases.items() if "Please call me" in h.reason)
        kabir_id = next(c for c, h in cases.items() if "blue one" in h.reason)
        clock.now = T0 + timedelta(hours=2)
        closed = client.post(f"/api/stores/shop-a/handoffs/{cases[meena_id].id}/close", headers=ADMIN,
                             json={"by": "Asha", "resolution": "called her back"})
        assert closed.status_code == 200, closed.text
        pending = [o for o in rows(runtime.db, m.OutboxMessage, m.OutboxMessage.store_id == a) if o.status == "pending"]
        # his reminder and the note telling the care desk of her case are still to go
        assert sorted((o.channel, o.contact_id) for o in pending) == [("notify", meena_id), ("whatsapp", kabir_id)]
        assert any("checkouts/tokK" in json.dumps(o.payload) for o in pending)
        # a day before the purge, Riya writes for the first time
        later = T0 + timedelta(days=days + 1)
        clock.now = later - timedelta(days=1)
        assert post_whatsapp(client, inbound_text(RIYA, "Do you ship to Pune?", clock.now)).status_code == 200
        runtime.processor.drain()

        week = parse_week("2026-W47", store.tz, later)
        report_before = build_report(runtime.db, store, a, week, now=later)
        meena_texts = ["Please call me", "shop-a.example/checkouts/tokM"]
        assert {t for t, _, _, _ in leaks(runtime.db, meena_texts, a)} >= {"messages", "handoffs"}
        kabir_case = rows(runtime.db, m.Handoff, m.Handoff.id == cases[kabir_id].id)[0]

        clock.now = later
        caplog.clear()
        with caplog.at_level(logging.INFO, logger="storeloop"):
            done = anyio.run(purge_job, runtime, "test-worker")
        assert done["messages"] >= 4 and done["handoffs"] == 1 and done["outbox"] >= 2, done
        said = [r for r in caplog.records if r.getMessage() == "emptied conversation content past retention"]
        assert len(said) == 1 and said[0].messages_emptied == done["messages"]  # counts, never what went
        assert personal_data_in_logs(caplog.records, MEENA.needles() + KABIR.needles() + meena_texts) == []

        # Meena: no text of hers or ours left in the conversation tables; the contact and the order are not this job's
        found = [(t, c) for t, c, _, _ in leaks(runtime.db, meena_texts + [MEENA.email, MEENA.first], a) if t in CONTENT_TABLES]
        assert found == [], found
        msgs = rows(runtime.db, m.Message, m.Message.store_id == a, m.Message.contact_id == meena_id)
        assert msgs and all(x.body is None and x.content_removed_at == later for x in msgs)
        assert {(x.direction, x.status) for x in msgs} >= {("in", "received"), ("out", "delivered")}
        assert all(x.wamid for x in msgs)
        case = rows(runtime.db, m.Handoff, m.Handoff.id == cases[meena_id].id)[0]
        assert case.reason == f"customer wrote (words removed after {days} days)", case.reason
        assert "recent_messages" not in case.context and "name" not in case.context and "phone" not in case.context
        assert case.context["stage"] and case.closed_by == "Asha" and case.resolution == "called her back"
        sent = [o for o in rows(runtime.db, m.OutboxMessage, m.OutboxMessage.contact_id == meena_id) if o.channel == "whatsapp"]
        assert sent and all(o.payload["message"].get("name") and o.payload["subject"] for o in sent)
        assert {o.status for o in sent} == {"dry_run", "delivered"}  # as they were
        # Kabir: his open case, his pending reminder and his message of yesterday are untouched
        assert rows(runtime.db, m.Handoff, m.Handoff.id == kabir_case.id)[0]._mapping == kabir_case._mapping
        assert [(o.status, o.payload) for o in rows(runtime.db, m.OutboxMessage, m.OutboxMessage.status == "pending")] == \
            [(o.status, o.payload) for o in pending]
        assert [x.body for x in rows(runtime.db, m.Message, m.Message.contact_id == kabir_id)] == [None]  # old, his case open or not
        assert [x.body for x in rows(runtime.db, m.Message, m.Message.wamid == RIYA.inbound_wamid)] == ["Do you ship to Pune?"]

        # the figures the report shows are the same
        assert build_report(runtime.db, store, a, week, now=later) == report_before
        # the timeline says what became of her texts
        view = client.get(f"/api/stores/shop-a/contacts/{MEENA.e164}", headers=ADMIN).json()
        said = [t["text"] for t in view["timeline"] if t["kind"] == "message"]
        assert said and set(said) == {f"(text removed after {days} days)"}, said

        # the next hour's run finds nothing more to do
        clock.now = later + timedelta(hours=1)
        assert not any(v for k, v in anyio.run(purge_job, runtime, "test-worker").items() if k != "raw_bodies")


def test_a_conversation_retention_of_zero_or_below_the_raw_bodies_is_a_config_error(tmp_path):
    """0 (or less) is no number of days; below raw_body_retention_days the raw bodies, which hold the same
    texts, would outlive the conversation. Both are refused by check-config, saying why."""
    runner = CliRunner()
    for extra, says in (("conversation_retention_days = 0", "at least 1"),
                        ("conversation_retention_days = -5", "at least 1"),
                        ("conversation_retention_days = 20", "below raw_body_retention_days (30)"),
                        ("raw_body_retention_days = 90\nconversation_retention_days = 60", "below raw_body_retention_days (90)")):
        result = runner.invoke(app, ["check-config", str(_config(tmp_path, 'url = "sqlite://"', extra=f"[worker]\n{extra}"))])
        _no_traceback(result)
        assert result.exit_code == 2, result.output
        out = _plain(result)
        assert "conversation_retention_days" in out and says in out, out
    ok = runner.invoke(app, ["check-config", str(_config(tmp_path, 'url = "sqlite://"', extra="[worker]\nconversation_retention_days = 30"))])
    assert ok.exit_code == 0, ok.output


def test_a_config_that_kept_raw_bodies_over_a_year_still_loads_and_keeps_the_conversation_as_long(tmp_path):
    """Before conversation_retention_days existed, raw_body_retention_days = 400 was a valid config; its
    default of 365 would now be below it and refuse to start serve and worker after the upgrade. Unset, the
    conversation is kept as long as the bodies; set explicitly below them, it is still refused."""
    runner = CliRunner()
    ok = runner.invoke(app, ["check-config", str(_config(tmp_path, 'url = "sqlite://"', extra="[worker]\nraw_body_retention_days = 400"))])
    _no_traceback(ok)
    assert ok.exit_code == 0, ok.output
    assert "'conversation_retention_days': 400" in _plain(ok) or '"conversation_retention_days": 400' in _plain(ok), _plain(ok)
    refused = runner.invoke(app, ["check-config", str(_config(
        tmp_path, 'url = "sqlite://"', extra="[worker]\nraw_body_retention_days = 400\nconversation_retention_days = 365"))])
    assert refused.exit_code == 2 and "below raw_body_retention_days (400)" in _plain(refused), refused.output


def test_an_erased_customers_rows_keep_their_erasure_mark_when_the_retention_empties_them(db_url):
    """An erasure marks what it scrubbed (``"redacted": true`` on her sends' payloads and her cases'
    context); the conversation retention, emptying the same rows a year later, keeps that mark: an
    audit or an export still tells an erased customer's rows from merely old ones."""
    settings = make_settings(db_url)
    clock = Clock(T0)
    with running_app(settings, clock=clock) as (client, runtime):
        runtime.processor.clock = clock
        a = runtime.store_ids["shop-a"]
        customer_story(client, runtime, settings, clock, MEENA, order_id=7001, token="tokM")
        clock.now = T0 + timedelta(hours=2)
        assert post_shopify(client, request_payload(MEENA, [7001]), "customers/redact").status_code == 200
        runtime.processor.drain()
        marked = lambda: ({o.id for o in rows(runtime.db, m.OutboxMessage, m.OutboxMessage.store_id == a)  # noqa: E731
                           if (o.payload or {}).get("redacted")},
                          {h.id for h in rows(runtime.db, m.Handoff, m.Handoff.store_id == a) if (h.context or {}).get("redacted")})
        sends, cases = marked()
        assert sends and cases  # what the erasure marked
        for case in cases:
            assert client.post(f"/api/stores/shop-a/handoffs/{case}/close", headers=ADMIN,
                               json={"by": "Asha", "resolution": "erased"}).status_code == 200
        clock.now = T0 + timedelta(days=settings.worker.conversation_retention_days + 2)
        done = anyio.run(purge_job, runtime, "test-worker")
        assert done["outbox"] >= len(sends) and done["handoffs"] >= len(cases), done
        assert marked() == (sends, cases)


# ---- her words in journey runs ------------------------------------------------------------------------------
def run_of(db, subject: str):
    [run] = rows(db, m.JourneyRun, m.JourneyRun.journey == "cod_confirmation", m.JourneyRun.subject == subject)
    return run


def test_the_cod_cancel_reason_she_typed_leaves_the_finished_run_after_the_retention_a_run_with_a_person_stays_whole(db_url):
    """Asha cancels COD order #9999 and types why; her words were kept in the run's state (``cancel_reason`` and
    the quote in ``handoff_reason``) for good, after her message, the case and the sends had been emptied. A day
    before the retention they are still there; after it they are gone, while the choice, the outcome, the phase
    and the times stay and the run says what was removed. Her question about order #10000 is with a person (that
    run still going): it is kept whole. The weekly report's figures are the same."""
    from tests.test_handoffs import dispatch, order, tap
    from tests.test_reply_routing import ORDER_1, ORDER_2, ask_of, reply_settings, second_cod_order, text

    settings = reply_settings(db_url, {"cancel_reason_minutes": 60})
    days = settings.worker.conversation_retention_days
    start = datetime(2026, 11, 20, 6, 55, tzinfo=timezone.utc)  # the taps and texts are stamped 07:00 on
    clock = Clock(start)
    with running_app(settings, clock=clock) as (client, runtime):
        runtime.processor.clock = clock
        a = runtime.store_ids["shop-a"]
        store = settings.stores[0]
        post_shopify(client, order(), "orders/create")
        runtime.processor.drain()
        dispatch(runtime, settings, clock=clock)
        tap(client, "cod_cancel", "wamid.T1", ask_of(runtime, ORDER_1))  # the run asks why
        runtime.processor.drain()
        dispatch(runtime, settings, clock=clock)
        text(client, "wamid.R1", "Ordered twice by mistake, my husband ordered too", at=1795158060)
        runtime.processor.drain()
        [case] = rows(runtime.db, m.Handoff, m.Handoff.store_id == a)
        assert client.post(f"/api/stores/shop-a/handoffs/{case.id}/close", headers=ADMIN,
                           json={"by": "Asha", "resolution": "cancelled"}).status_code == 200
        post_shopify(client, second_cod_order(), "orders/create")
        runtime.processor.drain()
        dispatch(runtime, settings, clock=clock)
        text(client, "wamid.Q2", "Can #10000 come on Friday after 6?", at=1795158120)  # unquoted: the COD ask open is what it answers
        runtime.processor.drain()
        typed, asked = run_of(runtime.db, ORDER_1), run_of(runtime.db, ORDER_2)
        assert typed.status == "finished" and typed.state["cancel_reason"] == "Ordered twice by mistake, my husband ordered too"
        assert "my husband ordered too" in typed.state["handoff_reason"]
        assert (asked.status, asked.state["phase"]) == ("active", "with_person") 

        # a day before the retention: nothing of hers goes yet
        clock.now = typed.updated_at + timedelta(days=days - 1)
        done = anyio.run(purge_job, runtime, "test-worker")
        assert done.get("journey_runs", 0) == 0, done
        assert run_of(runtime.db, ORDER_1).state == typed.state

        later = typed.updated_at + timedelta(days=days, hours=1)
        week = parse_week("2026-W47", store.tz, later)
        report_before = build_report(runtime.db, store, a, week, now=later)
        clock.now = later
        done = anyio.run(purge_job, runtime, "test-worker")
        after = run_of(runtime.db, ORDER_1)
        assert "cancel_reason" not in after.state, after.state
        assert done["journey_runs"] == 1, done
        assert after.state["handoff_reason"] == f"customer cancelled COD order #9999 (words removed after {days} days)"
        kept = {k: v for k, v in typed.state.items() if k not in ("cancel_reason", "handoff_reason")}
        assert {k: after.state[k] for k in kept} == kept and kept["choice"] == "cancelled" and kept["outcome"] == "cancelled"
        assert after.state["removed_after_days"] == days and after.content_removed_at == later
        assert (after.status, after.updated_at) == (typed.status, typed.updated_at)
        # nothing she typed about #9999 is left in the runs or her messages (the open case about #10000 quotes her
        # recent messages: a person works on it, so it keeps them)
        assert [(t, c) for t, c, _, _ in leaks(runtime.db, ["my husband ordered too"], a) if t in ("journey_runs", "messages")] == []
        # the run still with a person is kept whole
        assert run_of(runtime.db, ORDER_2)._mapping == asked._mapping
        assert build_report(runtime.db, store, a, week, now=later) == report_before
        # the next hour's run finds nothing more to do
        clock.now = later + timedelta(hours=1)
        assert anyio.run(purge_job, runtime, "test-worker").get("journey_runs") == 0


# ---- reading only where the due rows are ----------------------------------------------------------------
def message_bodies(db) -> dict[str, str | None]:
    return {x.wamid: x.body for x in rows(db, m.Message)}


def test_messages_are_emptied_by_their_own_time_also_one_stored_months_after_the_rows_around_it(db_url):
    """The job reads only the start of the table, where the rows stored a retention ago are. Riya's message of
    ten days before Meena's first came in months late (a webhook retried, a held row replayed), after Kabir's:
    it is emptied by its own time, ten days before Meena's, not when the rows stored around it come due; the
    messages of later days keep their text."""
    settings = make_settings(db_url)
    days = settings.worker.conversation_retention_days
    clock = Clock(T0)
    with running_app(settings, clock=clock) as (client, runtime):
        runtime.processor.clock = clock

        def write(p: Person, text: str, at, wamid: str) -> None:
            assert post_whatsapp(client, inbound_text(p, text, at, wamid=wamid)).status_code == 200
            runtime.processor.drain()

        write(MEENA, "Hello, is this the shop?", T0, "wamid.M1")
        clock.now = T0 + timedelta(days=200)
        write(KABIR, "Is the blue one back in stock?", clock.now, "wamid.K1")
        write(RIYA, "Do you ship to Pune?", T0 - timedelta(days=10), "wamid.R1")  # stored now, written 210 days ago
        clock.now = T0 + timedelta(days=300)
        write(RIYA, "Still there?", clock.now, "wamid.R2")
        assert message_bodies(runtime.db) == {"wamid.M1": "Hello, is this the shop?", "wamid.K1": "Is the blue one back in stock?",
                                              "wamid.R1": "Do you ship to Pune?", "wamid.R2": "Still there?"}

        def purge_at(now) -> int:
            clock.now = now
            return anyio.run(purge_job, runtime, "test-worker")["messages"]

        assert purge_at(T0 + timedelta(days=days - 20)) == 0  # nothing is a retention old yet
        assert purge_at(T0 + timedelta(days=days - 9)) == 1  # Riya's late message is
        assert message_bodies(runtime.db) == {"wamid.M1": "Hello, is this the shop?", "wamid.K1": "Is the blue one back in stock?",
                                              "wamid.R1": None, "wamid.R2": "Still there?"}
        assert purge_at(T0 + timedelta(days=days, hours=1)) == 1  # Meena's first
        assert message_bodies(runtime.db) == {"wamid.M1": None, "wamid.K1": "Is the blue one back in stock?",
                                              "wamid.R1": None, "wamid.R2": "Still there?"}
        assert purge_at(T0 + timedelta(days=days + 200, hours=1)) == 1  # Kabir's, on its day
        assert message_bodies(runtime.db)["wamid.R2"] == "Still there?"


def test_a_late_message_still_uncommitted_while_a_later_one_committed_is_emptied_on_its_own_day(db_url):
    """PostgreSQL gives a row its id at insert, not at commit: a worker storing a replayed message (written
    months before) still has it uncommitted while another worker's later message commits, and the hourly run
    reads in between. Once committed, the late message is still emptied on its own day, not when the rows
    stored around it come due months later; whether the run that missed it was the first after a start or
    one of the hourly ones after it."""
    if not db_url.startswith("postgresql"):
        pytest.skip("SQLite writes one at a time: an id is taken and committed under its write lock")
    settings = make_settings(db_url)
    days = settings.worker.conversation_retention_days
    clock = Clock(T0)
    with running_app(settings, clock=clock) as (client, runtime):
        runtime.processor.clock = clock
        sid = runtime.store_ids["shop-a"]

        def write(p: Person, text: str, at, wamid: str) -> None:
            assert post_whatsapp(client, inbound_text(p, text, at, wamid=wamid)).status_code == 200
            runtime.processor.drain()

        def purge_at(now) -> int:
            clock.now = now
            return anyio.run(purge_job, runtime, "test-worker")["messages"]

        def in_flight(wamid: str, text: str, written):
            """Another worker's batch storing a replayed message, not yet committed."""
            conn = runtime.db.engine.connect()
            tx = conn.begin()
            conn.execute(insert(m.Message).values(store_id=sid, direction="in", wamid=wamid, kind="text", body=text,
                                                  status="received", occurred_at=written, updated_at=clock.now))
            return conn, tx

        write(MEENA, "Hello, is this the shop?", T0, "wamid.M1")
        with runtime.db.engine.begin() as conn:  # the store's ordinary traffic, around day 100
            conn.execute(insert(m.Message), [
                {"store_id": sid, "direction": "in", "wamid": f"wamid.X{i}", "kind": "text", "body": "hi", "status": "received",
                 "occurred_at": T0 + timedelta(days=100, minutes=i), "updated_at": T0 + timedelta(days=100, minutes=i)} for i in range(10)])
        clock.now = T0 + timedelta(days=200)
        write(KABIR, "Is the blue one back in stock?", clock.now, "wamid.K1")
        # the first run after a start, a few minutes in, while the replay of Riya's message is uncommitted
        conn, tx = in_flight("wamid.R1", "my address is 12 MG Road", T0 - timedelta(days=10))
        clock.now += timedelta(minutes=1)
        write(KABIR, "Hello?", clock.now, "wamid.K2")  # committed first, with the higher id
        assert purge_at(clock.now + timedelta(minutes=4)) == 0  # nothing a retention old yet
        tx.commit()
        conn.close()
        assert purge_at(clock.now + timedelta(hours=1)) == 0
        # an hourly run later on, while another replayed message is uncommitted
        conn, tx = in_flight("wamid.R2", "my new number is 98111 22233", T0 - timedelta(days=5))
        clock.now += timedelta(minutes=1)
        write(KABIR, "Anyone there?", clock.now, "wamid.K3")
        assert purge_at(clock.now + timedelta(minutes=58)) == 0
        tx.commit()
        conn.close()
        assert purge_at(clock.now + timedelta(hours=1)) == 0
        assert purge_at(T0 + timedelta(days=days - 9)) == 1  # Riya's first is a retention old
        assert purge_at(T0 + timedelta(days=days - 4)) == 1  # her second
        assert message_bodies(runtime.db) == {"wamid.M1": "Hello, is this the shop?", "wamid.K1": "Is the blue one back in stock?",
                                              "wamid.K2": "Hello?", "wamid.K3": "Anyone there?", "wamid.R1": None, "wamid.R2": None,
                                              **{f"wamid.X{i}": "hi" for i in range(10)}}


def _on_a_sqlite_file(tmp_path, sqlite_template):
    """A store on its own SQLite file copied from the migrated template (these tests watch SQLite's write lock and
    read steps); returns its settings, its retention in days, and a clock at T0."""
    path = tmp_path / "storeloop.db"
    shutil.copy(sqlite_template, path)
    settings = make_settings(f"sqlite:///{path}")
    return settings, settings.worker.conversation_retention_days, Clock(T0)


def test_storing_messages_goes_on_while_the_run_looks_for_late_messages(tmp_path, sqlite_template):
    """After a start the run looks through every message stored since a retention ago for late ones (months
    of them on a busy store); on SQLite that search held the one write lock, so webhooks and the processor
    waited for it. A message is stored while the search reads, and the late one it finds is still emptied."""
    settings, days, clock = _on_a_sqlite_file(tmp_path, sqlite_template)
    with running_app(settings, clock=clock) as (client, runtime):
        runtime.processor.clock = clock
        sid = runtime.store_ids["shop-a"]
        assert post_whatsapp(client, inbound_text(MEENA, "Hello", T0, wamid="wamid.M1")).status_code == 200
        clock.now = T0 + timedelta(days=200)
        assert post_whatsapp(client, inbound_text(RIYA, "Do you ship to Pune?", T0 - timedelta(days=30),
                                                  wamid="wamid.R1")).status_code == 200  # stored months late
        runtime.processor.drain()
        stored: list[bool] = []
        writers: list[threading.Thread] = []

        def store_one() -> None:  # what ingest does: take the write lock, insert, commit
            with runtime.db.write_lock(), runtime.db.engine.begin() as conn:
                conn.execute(insert(m.Message).values(store_id=sid, direction="in", wamid="wamid.K1", kind="text", body="Hi",
                                                      status="received", occurred_at=clock.now, updated_at=clock.now))

        def during_the_search(conn, cursor, statement, *args) -> None:
            if "julianday" in statement and not stored:  # the search for late messages (their times are texts on SQLite)
                writers.append(writer := threading.Thread(target=store_one))
                writer.start()
                writer.join(timeout=10)  # returns at once unless the write lock is held
                stored.append(not writer.is_alive())

        sqlalchemy_event.listen(runtime.db.engine, "before_cursor_execute", during_the_search)
        try:
            clock.now = T0 + timedelta(days=days - 29)
            assert anyio.run(purge_job, runtime, "test-worker")["messages"] == 1
        finally:
            sqlalchemy_event.remove(runtime.db.engine, "before_cursor_execute", during_the_search)
            for writer in writers:  # stored once the lock was let go
                writer.join()
        assert stored == [True], "the message waited for the search to end"
        assert message_bodies(runtime.db) == {"wamid.M1": "Hello", "wamid.R1": None, "wamid.K1": "Hi"}


class VmSteps:
    """Counts SQLite's virtual-machine steps (in hundreds) on every connection of an engine: how much a job read."""

    def __init__(self, engine):
        self.engine, self.count = engine, 0
        sqlalchemy_event.listen(engine, "before_cursor_execute", self._arm)

    def _arm(self, conn, *args):
        conn.connection.dbapi_connection.set_progress_handler(self._tick, 100)

    def _tick(self) -> int:
        self.count += 1
        return 0

    def close(self) -> None:
        sqlalchemy_event.remove(self.engine, "before_cursor_execute", self._arm)


def test_the_hourly_run_reads_the_rows_that_came_due_not_the_whole_messages_table(tmp_path, sqlite_template):
    """Two and a half years of messages, one an hour: the first run empties the oldest; the next hour's run
    reads about the hour that came due, not every message to the table's end (the job had walked 2M messages
    and 1M sends every hour, 0.44 s). Read is counted in SQLite's steps, against one plain scan of the table."""
    settings, days, clock = _on_a_sqlite_file(tmp_path, sqlite_template)
    with running_app(settings, clock=clock) as (client, runtime):
        a = runtime.store_ids["shop-a"]
        first = T0 - timedelta(hours=20_000)
        with runtime.db.engine.begin() as conn:
            conn.execute(insert(m.Message), [
                {"store_id": a, "direction": "in", "wamid": f"wamid.bulk{i}", "kind": "text", "body": f"message {i}", "status": "received",
                 "occurred_at": first + timedelta(hours=i), "updated_at": first + timedelta(hours=i)} for i in range(20_000)])
        due = sum(1 for i in range(20_000) if first + timedelta(hours=i) < T0 - timedelta(days=days))
        clock.now = T0
        assert anyio.run(purge_job, runtime, "test-worker")["messages"] == due
        steps = VmSteps(runtime.db.engine)
        try:
            with runtime.db.engine.connect() as conn:
                assert conn.execute(select(func.count()).select_from(m.Message).where(m.Message.body.is_not(None))).scalar() == 20_000 - due
            one_scan, steps.count = steps.count, 0
            clock.now = T0 + timedelta(hours=1)
            assert anyio.run(purge_job, runtime, "test-worker")["messages"] == 1  # the hour that came due
            assert steps.count * 10 < one_scan, (steps.count, one_scan)
        finally:
            steps.close()
        assert [x.body for x in rows(runtime.db, m.Message, m.Message.wamid.in_([f"wamid.bulk{due}", f"wamid.bulk{due + 1}"]))] == \
            [None, f"message {due + 1}"]
