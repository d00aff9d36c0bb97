"""A store owner erases a customer on request: ``storeloop customer redact`` and
``POST /api/stores/{key}/customers/redact``.

WooCommerce sends no privacy webhook, and a customer may ask on WhatsApp to be forgotten. Her story
on a WooCommerce store (a paid order, a COD order asked on WhatsApp, her answer in words: a hand-off),
told with the journey scenarios' harness (signed webhooks in over HTTP, fake WhatsApp, WooCommerce and
hand-off peers); the same phone and customer id are a customer of a Shopify store too. Then the owner
erases her from the command line (a config file, typer's CliRunner) or the admin API, and what is left
is what Shopify's ``customers/redact`` leaves (tests/test_compliance.py's scans: every column of every
table, the logs, the report's aggregates). The reorder scans plan nothing for an erased customer.
SQLite and PostgreSQL.
"""

from __future__ import annotations

import logging
import math
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from sqlalchemy import func, select, update
from typer.testing import CliRunner

from connector.cli import app as cli_app
from connector.storage import models as m
from tests.conftest import PHONE_ID_WOO, SECRETS
from tests.helpers import running_app
from tests.scenarios import harness
from tests.scenarios import payloads as p
from tests.scenarios.conftest import _world_server, scenario, world  # noqa: F401  (the scenarios' fixtures)
from tests.test_compliance import Person, aggregates, inbound_text, leaks, order_payload, personal_data_in_logs

LUCIA = Person("Lucrezia", "Bellandi", "lucrezia.b@example.org", "+91 99887 76655", "+919988776655", 4242)
TEAM_WOO = "bloom-support-token-0123456789"
TEAM_SHOP_A = "shop-a-support-token-9876543210"
COD = {"reminder_hours": [6], "answer_window_hours": 24, "no_answer_action": "cancel", "confirm_status": "processing"}


def _settings_with_shop_a_token(db_url: str) -> dict:
    from tests.conftest import settings_dict

    raw = settings_dict(db_url)
    raw["stores"][0]["admin_token"] = TEAM_SHOP_A
    return raw


@pytest.fixture
def woo(db_url, scenario, monkeypatch):  # noqa: F811
    """The WooCommerce store ``woo`` running COD confirmation, with its own admin token; shop-a (Shopify) has its own."""
    monkeypatch.setattr(harness, "settings_dict", _settings_with_shop_a_token)
    return scenario(db_url, "woocommerce", journeys={"cod_confirmation": COD}, store_settings={"admin_token": TEAM_WOO})


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def woo_order(person: Person, order_id: int, at: datetime, *, cod: bool, status: str) -> dict:
    """A WooCommerce order of a registered customer (``customer_id``), billed and shipped to her."""
    o = p.woo_order(order_id, person.phone, at, cod=cod, status=status)
    o["customer_id"] = person.customer_id
    o["billing"].update(first_name=person.first, last_name=person.last, email=person.email, phone=person.phone)
    o["shipping"].update(first_name=person.first, last_name=person.last)
    return o


def her_words(sc, person: Person, text: str, quoting: str) -> dict:
    """Her WhatsApp message (her profile name, a message id that encodes her number) answering ``quoting``."""
    value = inbound_text(person, text, sc.now, PHONE_ID_WOO)
    value["messages"][0]["context"] = {"from": PHONE_ID_WOO, "id": quoting}
    return {"object": "whatsapp_business_account", "entry": [{"id": "1", "changes": [{"field": "messages", "value": {
        "messaging_product": "whatsapp", "metadata": {"display_phone_number": "1", "phone_number_id": PHONE_ID_WOO}, **value}}]}]}


def her_story(sc) -> None:
    """A paid order; a COD order asked on WhatsApp, which she answers in words asking to be forgotten (a
    person's case). The same phone and customer id buy from shop-a (Shopify) as well."""
    sc.woo("order.created", woo_order(LUCIA, 7301, sc.now - timedelta(days=20), cod=False, status="completed"))
    sc.woo("order.created", woo_order(LUCIA, 7302, sc.now, cod=True, status="on-hold"))
    sc.work()
    ask = sc.last_to(LUCIA.e164, "cod_confirm_v1")
    sc.later(minutes=30)
    text = f"Hi, this is {LUCIA.first} {LUCIA.last}. Please remove my data, my number {LUCIA.phone} and {LUCIA.email}"
    sc.post(sc.whatsapp_delivery(her_words(sc, LUCIA, text, ask.wamid)))
    sc.later(minutes=5)
    sc.shopify("orders/create", order_payload(LUCIA, 9001, p.iso(sc.now)))
    sc.work()
    [case] = sc.handoffs(status="open")
    assert "remove my data" in case["reason"]


def cli_config(tmp_path: Path, db_url: str) -> Path:
    path = tmp_path / "storeloop.toml"
    path.write_text(f'[database]\nurl = "{db_url}"\n\n'
                    '[[stores]]\nkey = "woo"\nplatform = "woocommerce"\nsite_url = "https://bloom.example"\nwebhook_secret = "x"\n'
                    'default_country = "IN"\ntimezone = "Europe/Rome"\n\n'
                    '[[stores]]\nkey = "shop-a"\nplatform = "shopify"\nshop_domain = "shop-a.myshopify.com"\nwebhook_secret = "y"\n'
                    'default_country = "IN"\ntimezone = "Asia/Kolkata"\n')
    return path


def redact(cfg: Path, *args: str, answer: str | None = None):
    return CliRunner().invoke(cli_app, ["customer", "redact", "--config", str(cfg), *args], input=answer)


def inbox_count(db) -> int:
    with db.engine.connect() as conn:
        return conn.execute(select(func.count()).select_from(m.InboxEvent)).scalar_one()


def assert_erased_as_shopify_erases(sc, before: dict, shop_a_before: list) -> int:
    """What tests/test_compliance.py checks after Shopify's customers/redact: nothing of hers in any column of
    the store's tables, the figures the report needs unchanged (her unsent messages skipped), the contact
    kept without a phone and never messaged again, her journeys finished; the other store's customer as it was.
    Returns her contact's id."""
    db, woo_id, shop_a = sc.runtime.db, sc.runtime.store_ids["woo"], sc.runtime.store_ids["shop-a"]
    assert leaks(db, LUCIA.needles(), woo_id) == []
    assert leaks(db, LUCIA.needles(), shop_a) == shop_a_before
    after = aggregates(db, woo_id)
    moved = {k: before["outbox"][k] - after["outbox"][k] for k in before["outbox"] if before["outbox"][k] != after["outbox"][k]}
    assert all(k[3] == "pending" for k in moved), moved  # only unsent messages changed: now skipped
    after["outbox"] = before["outbox"]
    # her journeys still running end, outcome "redacted"; finished ones keep theirs
    ended = [(j, subject, "finished", "redacted", *rest) if status == "active" else (j, subject, status, outcome, *rest)
             for j, subject, status, outcome, *rest in before["runs"]]
    assert ("active" in {r[2] for r in before["runs"]}) and after == {**before, "runs": ended, "inbox": before["inbox"] + 1}  # + its row
    with db.engine.connect() as conn:
        contact = conn.execute(select(m.Contact).where(m.Contact.store_id == woo_id)).one()
        runs = conn.execute(select(m.JourneyRun.journey, m.JourneyRun.status, m.JourneyRun.state).where(m.JourneyRun.store_id == woo_id)).all()
        handoff = conn.execute(select(m.Handoff).where(m.Handoff.store_id == woo_id)).one()
        texts = conn.execute(select(m.Message.body).where(m.Message.contact_id == contact.id)).scalars().all()
        [answered] = conn.execute(select(m.ComplianceRequest).where(m.ComplianceRequest.store_id == woo_id)).all()
        request_row = conn.execute(select(m.InboxEvent).where(m.InboxEvent.id == answered.inbox_event_id)).one()
    assert contact.phone_key == f"redacted:{contact.id}" and not contact.reachable and contact.opted_out_at is not None
    assert (contact.phone_e164, contact.first_name, contact.email, contact.external_customer_id) == (None, None, None, None)
    assert ("cod_confirmation", "finished", "redacted") in {(j, s, state.get("outcome")) for j, s, state in runs}
    assert handoff.reason.startswith("redacted") and len(texts) >= 2 and set(texts) == {None}
    assert (answered.kind, answered.status, answered.contact_ids, answered.counts["contacts"]) == ("customer_redact", "done", [contact.id], 1)
    assert (request_row.source, request_row.topic, request_row.status) == ("storeloop", "customers/redact", "done")
    return contact.id


# -- the command ---------------------------------------------------------------------------------------------
def test_the_command_erases_a_woocommerce_customer_as_shopifys_customers_redact_does(db_url, woo, tmp_path, caplog):
    sc = woo
    db, woo_id = sc.runtime.db, sc.runtime.store_ids["woo"]
    her_story(sc)
    before = aggregates(db, woo_id)
    shop_a_before = leaks(db, LUCIA.needles(), sc.runtime.store_ids["shop-a"])
    assert {n for *_, n in shop_a_before} >= {LUCIA.e164, LUCIA.first, LUCIA.email}
    cfg = cli_config(tmp_path, db_url)

    # she is shown as counts, and nothing happens unless the owner says yes
    declined = redact(cfg, "--store", "woo", "--phone", LUCIA.phone, answer="n\n")
    assert declined.exit_code == 1 and "nothing erased" in declined.output, declined.output
    assert "1 contact(s), 2 order(s)" in declined.output and "1 hand-off(s)" in declined.output
    assert not any(n in declined.output for n in (LUCIA.first, LUCIA.last, LUCIA.email)), declined.output
    assert {n for *_, n in leaks(db, LUCIA.needles(), woo_id)} >= {LUCIA.e164, LUCIA.first, LUCIA.email}

    caplog.set_level(logging.DEBUG)
    caplog.clear()
    done = redact(cfg, "--store", "woo", "--phone", LUCIA.phone, answer="y\n")
    assert done.exit_code == 0, done.output
    assert "erased: 1 contact(s), 2 order(s)" in done.output and "privacy request" in done.output
    assert not any(n in done.output for n in (LUCIA.first, LUCIA.last, LUCIA.email)), done.output
    assert personal_data_in_logs(caplog.records, LUCIA.needles()) == []
    assert any(r.getMessage().startswith("privacy request customer_redact answered") for r in caplog.records)
    cid = assert_erased_as_shopify_erases(sc, before, shop_a_before)
    [item] = sc.client.get("/api/stores/woo/compliance", headers=bearer(TEAM_WOO)).json()["items"]
    assert (item["kind"], item["status"], item["counts"]["contacts"]) == ("customer_redact", "done", 1)

    # the COD question's reminder and deadline pass: nothing more reaches her phone, nothing is done to her order
    sent, writes = len(sc.sent(LUCIA.e164)), len(sc.world.woo_writes())
    sc.later(hours=30)
    assert len(sc.sent(LUCIA.e164)) == sent and len(sc.world.woo_writes()) == writes

    # a second request (by phone, email or id) finds nothing: a no-op that says so
    rows, snapshot = inbox_count(db), aggregates(db, woo_id)
    for given in (["--phone", LUCIA.e164], ["--email", LUCIA.email.upper()], ["--customer-id", str(LUCIA.customer_id)]):
        again = redact(cfg, "--store", "woo", *given, "--yes")
        assert again.exit_code == 0 and "nothing stored about the customer" in again.output, again.output
    assert inbox_count(db) == rows and aggregates(db, woo_id) == snapshot
    with db.engine.connect() as conn:
        assert conn.execute(select(m.Contact.phone_key).where(m.Contact.id == cid)).scalar_one() == f"redacted:{cid}"


def test_the_command_refuses_an_unknown_store_and_what_names_no_customer(tmp_path, sqlite_template):
    import shutil

    db_path = tmp_path / "storeloop.db"
    shutil.copy(sqlite_template, db_path)
    cfg = cli_config(tmp_path, f"sqlite:///{db_path}")
    cases = {
        ("--store", "nope", "--phone", LUCIA.phone): "unknown store 'nope'",
        ("--store", "woo", "--phone", "12"): "'12' is not a phone number",
        ("--store", "woo", "--phone", "call me"): "is not a phone number",
        ("--store", "woo", "--email", "lucrezia at example"): "is not an email address",
        ("--store", "woo", "--customer-id", "0"): "guest checkout",
        ("--store", "woo", "--customer-id", "Lucrezia"): "is not a customer id",
        ("--store", "woo"): "give the customer's phone, email or customer id",
    }
    for args, said in cases.items():
        result = redact(cfg, *args, "--yes")
        assert result.exit_code == 2 and said in result.output, (args, result.output)


def test_an_erasure_from_the_command_waits_for_a_delivery_received_before_it(db_url, woo, tmp_path):
    """Her order update arrived just before the erasure and waits for its retry: the erasure is recorded and
    waits for it (exit 4, as Shopify's request would), then the worker processes both, in order, and nothing
    of hers comes back with the late update."""
    sc = woo
    db, woo_id = sc.runtime.db, sc.runtime.store_ids["woo"]
    order = woo_order(LUCIA, 7301, sc.now - timedelta(days=2), cod=False, status="processing")
    sc.woo("order.created", order)
    sc.work()
    sc.woo("order.updated", {**order, "status": "completed", "date_modified_gmt": p.gmt(sc.now)})
    retry_at = max(datetime.now(timezone.utc), sc.now) + timedelta(minutes=5)  # after the command's clock and the worker's
    with db.engine.begin() as conn:
        conn.execute(update(m.InboxEvent).where(m.InboxEvent.topic == "order.updated").values(available_at=retry_at))

    waiting = redact(cli_config(tmp_path, db_url), "--store", "woo", "--customer-id", str(LUCIA.customer_id), "--yes")
    assert waiting.exit_code == 4 and "not yet done" in waiting.output, waiting.output
    assert {n for *_, n in leaks(db, LUCIA.needles(), woo_id)} >= {LUCIA.e164, LUCIA.email}  # not before the update is heard

    sc.clock.now = retry_at + timedelta(minutes=1)  # the update's retry comes due; a worker round
    sc.runtime.processor.drain()
    with db.engine.connect() as conn:
        rows = conn.execute(select(m.InboxEvent.source, m.InboxEvent.topic, m.InboxEvent.status).order_by(m.InboxEvent.id)).all()
    assert [tuple(r) for r in rows] == [("woocommerce", "order.created", "done"), ("woocommerce", "order.updated", "done"),
                                        ("storeloop", "customers/redact", "done")]
    assert leaks(db, LUCIA.needles(), woo_id) == []


RAVI = Person("Raviteja", "Kondapalli", "raviteja.k@example.com", "+91 90000 11122", "+919000011122", 5151)


def recorded_then_a_delivery(sc, person: Person, order: dict) -> int:
    """The owner's erasure of ``person`` is recorded (through the admin API, as the command records it),
    then ``order`` (another customer's) is delivered: a later inbox row. The request's inbox id."""
    queued = sc.client.post("/api/stores/woo/customers/redact", json={"customer_id": person.customer_id}, headers=bearer(TEAM_WOO))
    assert queued.status_code == 202, queued.text
    sc.woo("order.created", order)
    return queued.json()["inbox_id"]


def answered_as_the_command_answers(sc, tmp_path: Path, db_url: str, inbox_id: int):
    """What ``storeloop customer redact`` runs once its request is recorded (``erasure.answer_now``), with the
    command's own configuration file (no journeys): its outcome."""
    from connector.config import load_settings
    from connector.erasure import answer_now

    settings = load_settings(cli_config(tmp_path, db_url))
    store = next(s for s in settings.stores if s.key == "woo")
    return answer_now(sc.runtime.db, settings, store, sc.runtime.store_ids["woo"], inbox_id)


def last_delivery(db) -> str:
    """The status of the store's last delivery (the one that arrived during the command)."""
    with db.engine.connect() as conn:
        return conn.execute(select(m.InboxEvent.status).where(m.InboxEvent.source == "woocommerce")
                            .order_by(m.InboxEvent.id.desc()).limit(1)).scalar_one()


def test_the_command_answers_its_request_and_leaves_deliveries_after_it_to_the_worker(db_url, woo, tmp_path):
    """Ravi's COD order arrives just after the owner's erasure of Lucrezia is recorded. The command (its own
    config file: no journeys) answers the erasure only; Ravi's order is the worker's, which asks him to confirm
    it. Before, the command processed the store's whole inbox with its own config: his order was stored, and
    never asked."""
    sc = woo
    db, woo_id = sc.runtime.db, sc.runtime.store_ids["woo"]
    sc.woo("order.created", woo_order(LUCIA, 7301, sc.now - timedelta(days=2), cod=False, status="completed"))
    sc.work()
    inbox_id = recorded_then_a_delivery(sc, LUCIA, woo_order(RAVI, 7401, sc.now, cod=True, status="on-hold"))

    done = answered_as_the_command_answers(sc, tmp_path, db_url, inbox_id)
    assert done.status == "done" and (done.counts.get("contacts"), done.counts.get("orders")) == (1, 1), done
    assert leaks(db, LUCIA.needles(), woo_id) == [] and last_delivery(db) == "pending"
    sc.work()
    assert last_delivery(db) == "done" and sc.templates_to(RAVI.e164) == ["cod_confirm_v1"]


def test_an_erasure_that_can_only_wait_leaves_the_command_at_once(db_url, woo, tmp_path):
    """Her order update waits for its retry: the command records the erasure, says it waits (exit 4) and touches
    nothing received after it (Ravi's order, the worker's)."""
    sc = woo
    order = woo_order(LUCIA, 7301, sc.now - timedelta(days=2), cod=False, status="processing")
    sc.woo("order.created", order)
    sc.work()
    sc.woo("order.updated", {**order, "status": "completed", "date_modified_gmt": p.gmt(sc.now)})
    retry_at = max(datetime.now(timezone.utc), sc.now) + timedelta(minutes=5)
    with sc.runtime.db.engine.begin() as conn:
        conn.execute(update(m.InboxEvent).where(m.InboxEvent.topic == "order.updated").values(available_at=retry_at))
    inbox_id = recorded_then_a_delivery(sc, LUCIA, woo_order(RAVI, 7401, sc.now, cod=True, status="on-hold"))

    waiting = answered_as_the_command_answers(sc, tmp_path, db_url, inbox_id)
    assert waiting.status == "waiting", waiting
    assert last_delivery(sc.runtime.db) == "pending"


def test_identifiers_that_name_different_customers_are_refused(db_url, woo, tmp_path):
    """The owner types Lucrezia's phone and, by mistake, Ravi's email: the erasure would reach both. The command
    (exit 2) and the API (400) refuse, with counts only, and nothing is recorded; an identifier that matches
    nothing beside one that matches her is said, and she alone is erased."""
    sc = woo
    db, woo_id = sc.runtime.db, sc.runtime.store_ids["woo"]
    sc.woo("order.created", woo_order(LUCIA, 7301, sc.now - timedelta(days=2), cod=False, status="completed"))
    sc.woo("order.created", woo_order(RAVI, 7401, sc.now - timedelta(days=1), cod=False, status="completed"))
    sc.work()
    cfg, rows = cli_config(tmp_path, db_url), inbox_count(db)
    ravi_stored = {n for *_, n in leaks(db, RAVI.needles(), woo_id)}
    assert ravi_stored >= {RAVI.e164, RAVI.email}

    for given in (["--phone", LUCIA.phone, "--email", RAVI.email], ["--customer-id", str(RAVI.customer_id), "--email", LUCIA.email],
                  ["--customer-id", str(LUCIA.customer_id), "--phone", LUCIA.phone, "--email", RAVI.email]):
        refused = redact(cfg, "--store", "woo", *given, "--yes")
        assert refused.exit_code == 2 and "name different contacts" in refused.output, (given, refused.output)
        assert not any(n in refused.output for n in (LUCIA.first, RAVI.first, RAVI.last)), refused.output
    api = sc.client.post("/api/stores/woo/customers/redact", json={"phone": LUCIA.phone, "email": RAVI.email}, headers=bearer(TEAM_WOO))
    assert api.status_code == 400 and "name different contacts" in api.json()["error"], api.text
    assert "2 in all" in api.json()["error"] and RAVI.first not in api.text
    assert inbox_count(db) == rows and {n for *_, n in leaks(db, LUCIA.needles(), woo_id)} >= {LUCIA.e164, LUCIA.email}

    # all of hers, and one that matches no one: she alone is erased, and the owner is told which matched nothing
    done = redact(cfg, "--store", "woo", "--phone", LUCIA.phone, "--customer-id", str(LUCIA.customer_id),
                  "--email", "lucrezia.typo@example.org", "--yes")
    assert done.exit_code == 0 and "the email given matches no contact" in done.output, done.output
    assert "erased: 1 contact(s), 1 order(s)" in done.output, done.output
    assert leaks(db, LUCIA.needles(), woo_id) == [] and {n for *_, n in leaks(db, RAVI.needles(), woo_id)} == ravi_stored


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)  # only a SQLite file journals
@pytest.mark.parametrize("via", ["api", "cli"])
def test_an_erasure_waits_for_a_delivery_acknowledged_from_the_ingest_journal_before_it(db_url, woo, tmp_path, via):
    """A burst: her new order is acknowledged (200) from the ingest journal, not yet in the inbox, when the owner
    erases her. Imported after the request was recorded, it has the larger id; the erasure still waits for it
    (the command says so: exit 4), so her order does not bring her contact back after the erasure."""
    sc = woo
    db, woo_id, writer = sc.runtime.db, sc.runtime.store_ids["woo"], sc.runtime.writer
    sc.woo("order.created", woo_order(LUCIA, 7301, sc.now - timedelta(days=2), cod=False, status="completed"))
    sc.work()
    rows = inbox_count(db)
    writer.journal_mode = "always"  # as under a burst: answered from the journal, imported later
    writer.defer_imports(math.inf)
    sc.woo("order.created", woo_order(LUCIA, 7302, sc.now, cod=False, status="processing"))
    assert writer.journal_pending() and inbox_count(db) == rows

    if via == "api":
        queued = sc.client.post("/api/stores/woo/customers/redact", json={"customer_id": str(LUCIA.customer_id)}, headers=bearer(TEAM_WOO))
        assert queued.status_code == 202, queued.text
    else:
        waiting = redact(cli_config(tmp_path, db_url), "--store", "woo", "--customer-id", str(LUCIA.customer_id), "--yes")
        assert waiting.exit_code == 4 and "not yet done" in waiting.output, waiting.output
        sc.clock.now = max(datetime.now(timezone.utc), sc.now)  # the command put it back by its own clock
    sc.work()  # a worker round while the burst lasts

    async def burst_over() -> None:
        while writer.journal_pending():
            assert await writer._import_chunk()

    writer.journal_mode = "burst"
    sc.client.portal.call(burst_over)
    writer.defer_imports(0.0)
    sc.later(minutes=1)  # the worker's rounds: her order (the erasure, before it by id, waits for it)...
    sc.later(minutes=1)  # ... then the erasure's retry
    with db.engine.connect() as conn:
        order = conn.execute(select(m.InboxEvent.id, m.InboxEvent.status).where(m.InboxEvent.topic == "order.created")
                             .order_by(m.InboxEvent.id.desc()).limit(1)).one()
        request = conn.execute(select(m.InboxEvent.id, m.InboxEvent.status).where(m.InboxEvent.source == "storeloop")).one()
        [answered] = conn.execute(select(m.ComplianceRequest.counts).where(m.ComplianceRequest.store_id == woo_id)).scalars().all()
    assert order.id > request.id and (order.status, request.status) == ("done", "done")
    assert (answered["contacts"], answered["orders"]) == (1, 2)
    assert leaks(db, LUCIA.needles(), woo_id) == []


# -- the admin API ----------------------------------------------------------------------------------------------
def test_the_admin_api_erases_her_with_the_stores_own_token_and_refuses_another_stores(db_url, woo, caplog):
    sc = woo
    db, woo_id = sc.runtime.db, sc.runtime.store_ids["woo"]
    her_story(sc)
    before = aggregates(db, woo_id)
    shop_a_before = leaks(db, LUCIA.needles(), sc.runtime.store_ids["shop-a"])
    url = "/api/stores/woo/customers/redact"

    refused = [sc.client.post(url, json={"phone": LUCIA.phone}, headers=h).status_code
               for h in ({}, bearer(TEAM_SHOP_A), bearer("not-a-token"))]
    assert refused == [401, 401, 401]
    bad = {"phone": "12", "email": "nope", "customer_id": 0}
    answers = [sc.client.post(url, json={k: v}, headers=bearer(TEAM_WOO)) for k, v in bad.items()]
    answers += [sc.client.post(url, json=body, headers=bearer(TEAM_WOO)) for body in ({}, {"name": LUCIA.first}, [LUCIA.phone])]
    assert [a.status_code for a in answers] == [400] * 6, [a.text for a in answers]
    assert "not a phone number" in answers[0].json()["error"] and "unknown field" in answers[4].json()["error"]
    unknown = sc.client.post("/api/stores/nope/customers/redact", json={"phone": LUCIA.phone}, headers=bearer(SECRETS["admin"]))
    assert unknown.status_code == 404
    assert aggregates(db, woo_id) == before  # nothing was recorded

    caplog.set_level(logging.DEBUG)
    caplog.clear()
    queued = sc.client.post(url, json={"customer_id": str(LUCIA.customer_id)}, headers=bearer(TEAM_WOO))
    assert queued.status_code == 202, queued.text
    body = queued.json()
    assert body["status"] == "queued" and (body["found"]["contacts"], body["found"]["orders"], body["found"]["handoffs"]) == (1, 2, 1)
    sc.work()  # the worker answers it, as it answers Shopify's webhook
    assert_erased_as_shopify_erases(sc, before, shop_a_before)
    assert personal_data_in_logs(caplog.records, LUCIA.needles()) == []
    [item] = sc.client.get("/api/stores/woo/compliance", headers=bearer(TEAM_WOO)).json()["items"]
    assert (item["kind"], item["status"], item["inbox_event_id"]) == ("customer_redact", "done", body["inbox_id"])

    again = sc.client.post(url, json={"phone": LUCIA.phone, "email": LUCIA.email}, headers=bearer(SECRETS["admin"]))
    assert again.status_code == 200 and again.json()["status"] == "nothing_stored"
    assert aggregates(db, woo_id)["inbox"] == before["inbox"] + 1


# -- the reorder scans ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("scan", ["daily full scan", "incremental tick"])
def test_the_reorder_scans_plan_no_window_for_an_erased_customer(db_url, scan):
    """Meena's purchase had no window when she was erased (no cycle known yet; or not paid yet). Then the
    product gets a cycle (a replenish tag: a full scan), or her order ships (the tick's incremental scan):
    before, the scan planned her a window, which later opened into a reorder run for a contact with no
    phone. Now nothing is planned for her; Kabir, who bought the same, gets his window and reminder. A
    window an earlier version planned for her is closed unopened when it comes due."""
    from connector.reorder.windows import refresh_windows, run_reorder_tick
    from tests.test_compliance import ADMIN
    from tests.test_reorder import Clock, T0, _delivered, _order, _post, _settings

    full = scan == "daily full scan"
    settings = _settings(db_url, **({"cycles": {}} if full else {}))  # incremental: NEEM-100 every 30 days
    clock = Clock(T0)
    meena, kabir = ("+91 98765 43210", 1), ("+91 98123 45678", 2)
    with running_app(settings) as (client, runtime):
        runtime.processor.clock = clock
        sid, store = runtime.store_ids["shop-a"], settings.stores[0]
        hers = _order(6001, T0, qty=1, phone=meena[0], customer_id=meena[1])
        if not full:
            hers.update(financial_status="pending")  # awaiting payment: no purchase, no window (yet)
        _post(client, "orders/create", hers)
        _post(client, "orders/create", _order(6002, T0, qty=1, phone=kabir[0], customer_id=kabir[1]))
        runtime.processor.drain()
        refresh_windows(runtime.db, store, sid, clock.now, full=True)
        with runtime.db.engine.connect() as conn:
            planned = conn.execute(select(m.ReorderWindow.order_external_id)).scalars().all()
        assert planned == ([] if full else ["6002"])

        clock.now = T0 + timedelta(hours=1)
        erased = client.post("/api/stores/shop-a/customers/redact", json={"phone": meena[0]}, headers=ADMIN)
        assert erased.status_code == 202, erased.text
        runtime.processor.drain()
        clock.now = T0 + timedelta(hours=2)
        if full:
            _post(client, "products/update", {"id": 9001, "title": "Neem face wash", "tags": "Replenish:3w", "updated_at": clock.now.isoformat()})
        else:
            _post(client, "fulfillments/update", _delivered(6001, clock.now))  # her old order ships
        runtime.processor.drain()
        report, _ = run_reorder_tick(runtime.db, store, sid, clock.now)
        assert report.mode == ("full" if full else "incremental")
        clock.now = T0 + timedelta(days=22.5 if full else 31.5)  # every window planned is due (21 or 30 days + transit - lead)
        run_reorder_tick(runtime.db, store, sid, clock.now)
        with runtime.db.engine.connect() as conn:
            meena_id = conn.execute(select(m.Contact.id).where(m.Contact.phone_key.startswith("redacted:"))).scalar_one()
            windows = conn.execute(select(m.ReorderWindow.contact_id, m.ReorderWindow.order_external_id, m.ReorderWindow.status)).all()
            runs = conn.execute(select(m.JourneyRun.contact_id, m.JourneyRun.subject).where(m.JourneyRun.journey == "reorder")).all()
        assert [(o, s) for c, o, s in windows if c == meena_id] == []
        assert [o for c, o, s in windows if c != meena_id] == ["6002"] and [s for *_, s in runs] == ["reorder:6002:p:9001"]

        # a window planned for her by an earlier version, due now: closed, never opened into a run
        with runtime.db.engine.begin() as conn:
            conn.execute(m.ReorderWindow.__table__.insert().values(
                store_id=sid, contact_id=meena_id, order_external_id="6001", product_key="p:9001", product_id="9001", variant_id="49001",
                sku="NEEM-100", title="Neem face wash", quantity=1, placed_at=T0, anchor="placed", anchor_at=T0, cycle_days=21,
                cycle_source="tag", opens_at=clock.now - timedelta(days=1), status="pending", updated_at=T0))
        opened = run_reorder_tick(runtime.db, store, sid, clock.now + timedelta(minutes=1))[1]
        with runtime.db.engine.connect() as conn:
            status = conn.execute(select(m.ReorderWindow.status).where(m.ReorderWindow.contact_id == meena_id)).scalar_one()
            runs_after = conn.execute(select(func.count()).select_from(m.JourneyRun).where(m.JourneyRun.journey == "reorder")).scalar_one()
        assert (status, opened.opened, opened.redacted, runs_after) == ("redacted", 0, 1, 1)

