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
from datetime import timedelta

import anyio
from sqlalchemy import select
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
