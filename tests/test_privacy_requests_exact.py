"""A privacy request reaches her data exactly: her numbers as stores and WhatsApp write them, nobody
else's; another customer's unprocessed delivery that names her stays his to process; her data-request
export lists the numbers she changed from, and neither those numbers nor a stored export outlive their
retention.

Signed webhooks into the real app (Shopify shop-a, default country IN), on SQLite and PostgreSQL.
"""

from __future__ import annotations

import json
from datetime import timedelta

import anyio
from sqlalchemy import select

from connector.storage import models as m
from connector.storage.inbox import with_body
from jobs.scheduler import purge_job
from tests.test_compliance import (
    ADMIN, KABIR, MEENA, T0, Clock, Person, _address, order_payload, post_shopify, post_whatsapp, request_payload,
)
from tests.helpers import running_app
from tests.test_privacy_completeness import drain, make_settings, stored_export, unreadable_order
from tests.scenarios.conftest import _world_server, scenario, world  # noqa: F401  (the scenarios' fixtures)
from tests.scenarios.harness import T0 as SCENARIO_T0
from tests.scenarios.stores import SHOPIFY
from tests.scenarios.test_store_journeys import COD
from tests.test_whatsapp_number_change import ASHA, ASHA_NEW, RAVI, changes_number

RAVI_NEW = "+919845003344"

# the same ten national digits: an Italian mobile and a Chicago number, two people
GIULIA = Person("Giulia", "Moretti", "giulia.m@example.it", "+39 312 345 6789", "+393123456789", 7720011)
TOM = Person("Thomas", "Whitaker", "tom.w@example.com", "+1 312 345 6789", "+13123456789", 7720012)


def inbox_row(db, topic: str, needle: str):
    """The inbox row of ``topic`` whose stored body holds ``needle``."""
    with db.engine.connect() as conn:
        rows = conn.execute(with_body().where(m.InboxEvent.topic == topic)).all()
    [row] = [r for r in rows if r.raw_body is not None and needle.encode() in r.raw_body]
    return row


def row_by_id(db, inbox_id: int):
    with db.engine.connect() as conn:
        return conn.execute(with_body().where(m.InboxEvent.id == inbox_id)).one()


# -- 1. her number, exactly -----------------------------------------------------------------------------------
def test_erasing_an_italian_number_leaves_the_order_of_an_american_with_the_same_national_digits(db_url):
    """Giulia (+39 312 345 6789) asks to be erased. Tom (+1 312 345 6789) is someone else: his order,
    its stored body and its event, must stay for his own replay and export; hers go."""
    settings = make_settings(db_url)
    with running_app(settings) as (client, runtime):
        runtime.processor.clock = Clock(T0)
        assert post_shopify(client, order_payload(TOM, 7101, "2026-11-20T07:00:00Z"), "orders/create").status_code == 200
        assert post_shopify(client, order_payload(GIULIA, 7102, "2026-11-20T07:10:00Z"), "orders/create").status_code == 200
        drain(runtime)
        tom_before = inbox_row(runtime.db, "orders/create", TOM.email)
        assert tom_before.status == "done" and tom_before.event is not None
        assert post_shopify(client, request_payload(GIULIA, [7102]), "customers/redact").status_code == 200
        drain(runtime)
        tom_after = row_by_id(runtime.db, tom_before.id)
        with runtime.db.engine.connect() as conn:
            events = dict(conn.execute(select(m.InboxEvent.id, m.InboxEvent.event).where(m.InboxEvent.topic == "orders/create")).all())
    assert (tom_after.raw_body, tom_after.event) == (tom_before.raw_body, tom_before.event)
    assert [e for i, e in events.items() if i != tom_before.id] == [None]  # hers erased


def guest_order_written_nationally(p: Person, order_id: int, phone: str) -> dict:
    """A guest order of ``p`` the adapter cannot read, her phone written as the store's form wrote it
    (national, with the trunk prefix), her country in the address, no email: only the number names her."""
    o = unreadable_order(p, order_id)
    o.update(email=None, contact_email=None, phone=phone, customer=None)
    o["billing_address"] = o["shipping_address"] = {**_address(p), "phone": phone}
    return o


def test_her_unread_delivery_writing_her_number_with_the_trunk_prefix_is_erased(db_url):
    """Meena's number, stored as +91 98765 43210, is 098765 43210 in a delivery the adapter could not
    read (failed, tied to no contact): it is hers, and the erasure must find it."""
    settings = make_settings(db_url)
    with running_app(settings) as (client, runtime):
        runtime.processor.clock = Clock(T0)
        assert post_shopify(client, order_payload(MEENA, 7001, "2026-11-20T07:00:00Z"), "orders/create").status_code == 200
        assert post_shopify(client, guest_order_written_nationally(MEENA, 7003, "098765 43210"), "orders/updated").status_code == 200
        drain(runtime)
        unread = inbox_row(runtime.db, "orders/updated", "098765 43210")
        assert (unread.status, unread.contact_id) == ("failed", None)
        assert post_shopify(client, request_payload(MEENA, [7001]), "customers/redact").status_code == 200
        drain(runtime)
        row = row_by_id(runtime.db, unread.id)
    text = (row.raw_body or b"").decode() + json.dumps(row.event)
    assert not any(n in text for n in ("98765 43210", "9876543210", MEENA.first, MEENA.last)), text[:300]


# -- 2. another customer's unprocessed delivery stays his -----------------------------------------------------
def gift(buyer: Person, to: Person, order_id: int) -> dict:
    """``buyer``'s order shipped to ``to``, which the adapter cannot read (failed): his order, naming her."""
    o = unreadable_order(buyer, order_id)
    o["shipping_address"] = _address(to)
    return o


def batch_with_his_broken_button(her: Person, him: Person, at) -> dict:
    """One WhatsApp delivery: her text, and his button reply without its payload (which fails); the
    contacts list names both of them, as Meta sends a batch."""
    return {"contacts": [{"profile": {"name": f"{him.first} {him.last}"}, "wa_id": him.wa_id},
                         {"profile": {"name": f"{her.first} {her.last}"}, "wa_id": her.wa_id}],
            "messages": [{"from": her.wa_id, "id": her.inbound_wamid, "timestamp": str(int(at.timestamp())), "type": "text",
                          "text": {"body": "Please forget me"}},
                         {"from": him.wa_id, "id": "wamid.KABIR-BUTTON-1", "timestamp": str(int(at.timestamp())), "type": "button",
                          "button": {}}]}


def test_an_erasure_leaves_another_customers_failed_order_and_message_replayable_without_her(db_url):
    """Kabir's gift to Meena and his WhatsApp button reply (in a batch naming her) failed to process.
    Erasing Meena takes her out of them, but they stay his: failed, replayable, his data in them,
    the message's dedupe key kept (Meta's retry is still known as his message). Her own message goes."""
    settings = make_settings(db_url)
    clock = Clock(T0)
    with running_app(settings) as (client, runtime):
        runtime.processor.clock = clock
        assert post_shopify(client, order_payload(MEENA, 7001, "2026-11-20T07:00:00Z"), "orders/create").status_code == 200
        assert post_shopify(client, gift(KABIR, MEENA, 7002), "orders/create").status_code == 200
        assert post_whatsapp(client, batch_with_his_broken_button(MEENA, KABIR, T0)).status_code == 200
        drain(runtime)
        his_order = inbox_row(runtime.db, "orders/create", KABIR.email)
        his_message = inbox_row(runtime.db, "message", "KABIR-BUTTON-1")
        assert (his_order.status, his_message.status) == ("failed", "failed")
        assert post_shopify(client, request_payload(MEENA, [7001]), "customers/redact").status_code == 200
        drain(runtime)
        order_after, message_after = row_by_id(runtime.db, his_order.id), row_by_id(runtime.db, his_message.id)
        replay = client.post("/api/stores/shop-a/inbox/replay", headers=ADMIN, json={"ids": [his_order.id, his_message.id]})
    assert (order_after.status, message_after.status) == ("failed", "failed")
    assert message_after.dedupe_key == his_message.dedupe_key
    order_text, message_text = order_after.raw_body.decode(), message_after.raw_body.decode()
    assert KABIR.email in order_text and KABIR.phone in order_text and "12 Lake Road" in order_text
    body = json.loads(message_text)
    assert body["contacts"] == [{"profile": {"name": f"{KABIR.first} {KABIR.last}"}, "wa_id": KABIR.wa_id}]
    assert body["message"]["from"] == KABIR.wa_id
    for text in (order_text, message_text):
        assert not [n for n in MEENA.needles() if n.lower() in text.lower()], text[:400]
    assert replay.status_code == 200, replay.text
    assert sorted(r["id"] for r in replay.json()["items"]) == sorted([his_order.id, his_message.id])


# -- 3. the numbers she changed from ---------------------------------------------------------------------------
def test_her_data_request_export_lists_the_number_she_changed_from(db_url, scenario, world):  # noqa: F811
    """Asha changed her WhatsApp number: the store keeps the old one (so a late reply on it finds her).
    It is her data: her export lists it, with when she changed it."""
    sc = scenario(db_url, "shopify", journeys=COD)
    SHOPIFY.place(sc, SHOPIFY.order(6, ASHA, sc.now))
    sc.work()
    changes_number(sc, ASHA, ASHA_NEW)
    sc.later(minutes=5)
    sc.shopify("customers/data_request", {"shop_id": 954889, "shop_domain": "shop-a.myshopify.com", "orders_requested": [],
                                          "customer": {"id": 424242, "email": None, "phone": ASHA_NEW}, "data_request": {"id": 9999}})
    sc.later(minutes=5)
    export = stored_export(sc.runtime)
    assert [n["phone"] for n in export["previous_numbers"]] == [ASHA]
    assert export["previous_numbers"][0]["changed_at"] and export["counts"]["previous_numbers"] == 1


def test_a_number_she_changed_from_is_forgotten_after_the_conversation_retention(db_url, scenario, world):  # noqa: F811
    """The old number is kept to tie late replies and orders on it to her conversation, so it is kept as
    long as that conversation: ``worker.conversation_retention_days`` after the change, then the hourly
    purge forgets it. A change made since stays."""
    sc = scenario(db_url, "shopify", journeys=COD)
    days = sc.settings.worker.conversation_retention_days
    SHOPIFY.place(sc, SHOPIFY.order(6, ASHA, sc.now))
    SHOPIFY.place(sc, SHOPIFY.order(7, RAVI, sc.now))
    sc.work()
    changes_number(sc, ASHA, ASHA_NEW)
    sc.work()
    sc.clock.now = SCENARIO_T0 + timedelta(days=days - 1)
    changes_number(sc, RAVI, RAVI_NEW)
    sc.work()
    with sc.runtime.db.engine.connect() as conn:
        assert len(conn.execute(select(m.PreviousNumber.id)).all()) == 2
    sc.clock.now = SCENARIO_T0 + timedelta(days=days, hours=1)
    done = anyio.run(purge_job, sc.runtime, "test-worker")
    with sc.runtime.db.engine.connect() as conn:
        kept = conn.execute(select(m.PreviousNumber.phone_key)).scalars().all()
    assert kept == [RAVI] and done["previous_numbers"] == 1


# -- 4. a stored export expires ----------------------------------------------------------------------------------
def test_a_stored_export_expires_after_the_raw_body_retention_and_its_request_stays_on_record(db_url):
    """The export a data request stored (her whole conversation, her raw deliveries) went on being kept
    after every retention window had removed the same data elsewhere. It is kept for
    ``worker.raw_body_retention_days`` (the time to hand it over), then emptied; that the request came
    and was answered, when and with what counts, stays listed."""
    settings = make_settings(db_url)
    days = settings.worker.raw_body_retention_days
    clock = Clock(T0)
    with running_app(settings, clock=clock) as (client, runtime):
        runtime.processor.clock = clock
        assert post_shopify(client, order_payload(MEENA, 7001, "2026-11-20T07:00:00Z"), "orders/create").status_code == 200
        assert post_shopify(client, request_payload(MEENA, [7001], data_request=True), "customers/data_request").status_code == 200
        drain(runtime)
        [listed] = client.get("/api/stores/shop-a/compliance", headers=ADMIN).json()["items"]
        assert listed["has_export"] and listed["status"] == "done"
        clock.now = T0 + timedelta(days=days - 1)
        anyio.run(purge_job, runtime, "test-worker")
        assert client.get(f"/api/stores/shop-a/compliance/{listed['id']}", headers=ADMIN).json()["export"] is not None
        clock.now = T0 + timedelta(days=days, hours=1)
        done = anyio.run(purge_job, runtime, "test-worker")
        view = client.get(f"/api/stores/shop-a/compliance/{listed['id']}", headers=ADMIN).json()
    assert done["exports_expired"] == 1
    assert view["export"] is None and not view["has_export"] and view["status"] == "expired"
    assert (view["kind"], view["created_at"], view["counts"]) == (listed["kind"], listed["created_at"], listed["counts"])
    assert view["erased_at"] == clock.now.isoformat()


def test_her_export_does_not_hand_her_another_customers_failed_order_that_names_her(db_url):
    """Kabir's gift to Meena failed to process (tied to no contact yet). It is his order, as the gift he
    placed and the store processed is: her data request must not hand her his name, phone and email."""
    settings = make_settings(db_url)
    with running_app(settings) as (client, runtime):
        runtime.processor.clock = Clock(T0)
        assert post_shopify(client, order_payload(MEENA, 7001, "2026-11-20T07:00:00Z"), "orders/create").status_code == 200
        assert post_shopify(client, gift(KABIR, MEENA, 7002), "orders/create").status_code == 200
        assert post_shopify(client, request_payload(MEENA, [7001], data_request=True), "customers/data_request").status_code == 200
        drain(runtime)
        export = stored_export(runtime)
    text = json.dumps(export)
    assert [n for n in KABIR.needles() if n in text] == []
    assert [o["external_id"] for o in export["orders"]] == ["7001"]
