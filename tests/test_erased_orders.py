"""An erased customer's orders do not bring her back.

The store still holds her orders after the connector erased her (``storeloop customer redact``, the
admin API, Shopify's ``customers/redact``): a later update of one of them (a status change, a refund, a
note; WooCommerce's ``order.updated``, Shopify's ``orders/updated`` or a fulfilment), the reconcile
reading it back, or her profile (``customer.updated``) carries her name, phone, email and address again.
Such a delivery is stored ``ignored`` ("customer erased on <date>") without its body, and creates no
contact, no order, no journey run, no message. A new order she places (a new order id) is a new
relationship, processed as any. Another store's order with the same id is that store's own.
Told with the journey scenarios' harness (signed webhooks over HTTP, the fake WhatsApp API); SQLite
and PostgreSQL.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
import respx
from alembic import command
from alembic.script import ScriptDirectory
from sqlalchemy import select, text

from adapters.woocommerce.client import WooCommerceClient
from connector.storage import models as m
from connector.storage.db import alembic_config, current_revision, make_engine, migrate
from connector.sync import reconcile_orders
from tests.conftest import PG_URL
from tests.scenarios import harness
from tests.scenarios import payloads as p
from tests.scenarios.conftest import _world_server, scenario, world  # noqa: F401  (the scenarios' fixtures)
from tests.test_compliance import aggregates, checkout_payload, leaks, order_payload, request_payload
from tests.test_customer_redact import LUCIA, RAVI, TEAM_WOO, _settings_with_shop_a_token, bearer, woo_order
from tests.test_sync import FakeWoo

THANKS = "order_thanks_v1"


@pytest.fixture
def woo(db_url, scenario, monkeypatch):  # noqa: F811
    """The WooCommerce store ``woo`` sending order confirmations; shop-a (Shopify) is another store of the deployment."""
    monkeypatch.setattr(harness, "settings_dict", _settings_with_shop_a_token)
    return scenario(db_url, "woocommerce", journeys={"order_confirmation": {}}, store_settings={"admin_token": TEAM_WOO})


@pytest.fixture
def shop(db_url, scenario):  # noqa: F811
    return scenario(db_url, "shopify", journeys={"order_confirmation": {}})


def woo_customer(person, at) -> dict:
    """WooCommerce's ``customer.updated`` body for a registered customer."""
    address = {"first_name": person.first, "last_name": person.last, "address_1": "12 Lake Road", "city": "Chennai",
               "postcode": "600001", "country": "IN", "email": person.email, "phone": person.phone}
    return {"id": person.customer_id, "email": person.email, "first_name": person.first, "last_name": person.last,
            "role": "customer", "username": person.first.lower(), "billing": address, "shipping": {**address, "phone": ""},
            "date_created_gmt": p.gmt(at - timedelta(days=90)), "date_modified_gmt": p.gmt(at), "date_modified": p.gmt(at)}


def rows_after(db, store_id: int, after_id: int) -> list[tuple]:
    """(source, topic, status, last_error, has a body) of the store's inbox rows after ``after_id``."""
    with db.engine.connect() as conn:
        bodies = set(conn.execute(select(m.InboxBody.id)).scalars())
        rows = conn.execute(select(m.InboxEvent).where(m.InboxEvent.store_id == store_id, m.InboxEvent.id > after_id)
                            .order_by(m.InboxEvent.id)).all()
    return [(r.source, r.topic, r.status, r.last_error, r.id in bodies) for r in rows]


def last_inbox_id(db) -> int:
    with db.engine.connect() as conn:
        return conn.execute(select(m.InboxEvent.id).order_by(m.InboxEvent.id.desc()).limit(1)).scalar_one()


def contacts_with(db, store_id: int, e164: str) -> list:
    with db.engine.connect() as conn:
        return conn.execute(select(m.Contact).where(m.Contact.store_id == store_id, m.Contact.phone_e164 == e164)).all()


def test_a_woocommerce_update_of_an_erased_order_brings_nothing_back_and_a_new_order_is_a_new_relationship(db_url, woo):
    sc = woo
    db, woo_id, shop_a = sc.runtime.db, sc.runtime.store_ids["woo"], sc.runtime.store_ids["shop-a"]
    order = woo_order(LUCIA, 7301, sc.now - timedelta(hours=1), cod=False, status="processing")
    sc.woo("order.created", order)
    ravi = woo_order(RAVI, 7302, sc.now - timedelta(hours=1), cod=False, status="processing")
    sc.woo("order.created", ravi)
    # the same order number at another store of the deployment (Shopify's shop-a): her order there too
    theirs = order_payload(LUCIA, 7301, p.iso(sc.now - timedelta(hours=1)))
    sc.shopify("orders/create", theirs)
    sc.work()
    assert sc.templates_to(LUCIA.e164) == [THANKS]

    erased_on = sc.now.date().isoformat()
    for person in (LUCIA, RAVI):  # Ravi asks too, a while later: the store's second erasure
        erased = sc.client.post("/api/stores/woo/customers/redact", json={"customer_id": person.customer_id}, headers=bearer(TEAM_WOO))
        assert erased.status_code == 202, erased.text
        sc.work()
        sc.later(hours=1)
    assert leaks(db, LUCIA.needles(), woo_id) == [] and leaks(db, RAVI.needles(), woo_id) == []
    with db.engine.connect() as conn:  # their orders are remembered by their ids, their customer ids only as keyed hashes
        marks = conn.execute(select(m.ErasedRef.kind, m.ErasedRef.ref).where(m.ErasedRef.store_id == woo_id)).all()
    assert sorted(k for k, _ in marks) == ["customer", "customer", "key", "order", "order"]
    assert {r for k, r in marks if k == "order"} == {"7301", "7302"}
    assert not {str(LUCIA.customer_id), str(RAVI.customer_id)} & {r for _, r in marks}
    before, mark, sent = aggregates(db, woo_id), last_inbox_id(db), len(sc.world.sent())

    # days later the owner completes the order and refunds a part: WooCommerce sends the whole order again
    sc.later(days=3)
    sc.woo("order.updated", {**order, "status": "completed", "date_modified_gmt": p.gmt(sc.now), "date_modified": p.gmt(sc.now),
                             "customer_note": f"Refunded the vase to {LUCIA.first}, call {LUCIA.phone}"})
    sc.woo("customer.updated", woo_customer(LUCIA, sc.now))  # she edits her account
    sc.woo("customer.updated", woo_customer(RAVI, sc.now))  # so does he
    sc.shopify("orders/updated", {**theirs, "tags": "vip", "updated_at": p.iso(sc.now)})  # shop-a's own order 7301
    sc.later(hours=6)

    reason = f"customer erased on {erased_on}"
    assert rows_after(db, woo_id, mark) == [("woocommerce", "order.updated", "ignored", reason, False),
                                            ("woocommerce", "customer.updated", "ignored", reason, False),
                                            ("woocommerce", "customer.updated", "ignored", reason, False)]
    assert leaks(db, LUCIA.needles(), woo_id) == [] and contacts_with(db, woo_id, LUCIA.e164) == []
    assert leaks(db, RAVI.needles(), woo_id) == []
    assert aggregates(db, woo_id) == {**before, "inbox": before["inbox"] + 3}
    assert len(sc.world.sent()) == sent
    # shop-a's order 7301 is shop-a's: updated as ever, she is still its customer there
    assert rows_after(db, shop_a, mark) == [("shopify", "orders/updated", "done", None, True)]
    [there] = contacts_with(db, shop_a, LUCIA.e164)
    assert there.first_name == LUCIA.first
    with db.engine.connect() as conn:
        assert conn.execute(select(m.Order.tags).where(m.Order.store_id == shop_a, m.Order.external_id == "7301")).scalar_one() == ["vip"]

    # she orders again: a new order, a new relationship; its confirmation reaches her, and her account is hers again
    sc.woo("order.created", woo_order(LUCIA, 7330, sc.now, cod=False, status="processing"))
    sc.work()
    assert sc.templates_to(LUCIA.e164) == [THANKS, THANKS]
    [again] = contacts_with(db, woo_id, LUCIA.e164)
    assert again.external_customer_id == str(LUCIA.customer_id)
    sc.later(hours=1)
    sc.woo("customer.updated", {**woo_customer(LUCIA, sc.now), "email": "lucrezia.new@example.org"})
    sc.work()
    assert rows_after(db, woo_id, last_inbox_id(db) - 1)[-1][:3] == ("woocommerce", "customer.updated", "done")
    assert [c.email for c in contacts_with(db, woo_id, LUCIA.e164)] == ["lucrezia.new@example.org"]


def _lucia_and_ravi_ordered(sc):
    """Lucia's order 7301 and Ravi's 7302, placed at the WooCommerce store and processed; returns their bodies."""
    order = woo_order(LUCIA, 7301, sc.now - timedelta(hours=1), cod=False, status="processing")
    ravi = woo_order(RAVI, 7302, sc.now - timedelta(minutes=50), cod=False, status="processing")
    sc.woo("order.created", order)
    sc.woo("order.created", ravi)
    sc.work()
    return order, ravi


def test_the_woocommerce_reconcile_reading_an_erased_order_back_brings_nothing_back(db_url, woo):
    """The WooCommerce webhook of the update was lost; the reconcile reads the order from the REST API (her data in it)."""
    sc = woo
    db, woo_id = sc.runtime.db, sc.runtime.store_ids["woo"]
    order, ravi = _lucia_and_ravi_ordered(sc)
    queued = sc.client.post("/api/stores/woo/customers/redact", json={"phone": LUCIA.phone}, headers=bearer(TEAM_WOO))
    assert queued.status_code == 202, queued.text
    sc.work()
    before, mark, sent = aggregates(db, woo_id), last_inbox_id(db), len(sc.world.sent())

    sc.later(hours=2)
    fake = FakeWoo([{**order, "status": "completed", "date_modified_gmt": p.gmt(sc.now)},
                    {**ravi, "status": "completed", "date_modified_gmt": p.gmt(sc.now)}])
    store = next(s for s in sc.settings.stores if s.key == "woo")

    async def reconcile():
        with respx.mock() as mock:
            mock.route(path__startswith="/wp-json/wc/v3/").mock(side_effect=fake.handler)
            async with WooCommerceClient(store) as client:
                return await reconcile_orders(db, store, woo_id, client, now=sc.now, since=sc.now - timedelta(hours=1))

    report = asyncio.run(reconcile())
    assert report.orders_seen == 2
    sc.work()
    statuses = [(topic, status, error) for _, topic, status, error, _ in rows_after(db, woo_id, mark)]
    assert ("order.updated", "ignored", f"customer erased on {(sc.now - timedelta(hours=2)).date().isoformat()}") in statuses
    assert ("order.updated", "done", None) in statuses  # Ravi's
    assert leaks(db, LUCIA.needles(), woo_id) == [] and contacts_with(db, woo_id, LUCIA.e164) == []
    after = aggregates(db, woo_id)
    assert after["contacts"] == before["contacts"] and after["runs"] == before["runs"] and len(sc.world.sent()) == sent
    # her order's row is as the erasure left it
    assert [o for o in after["orders"] if o[0] == "7301"] == [o for o in before["orders"] if o[0] == "7301"]


def test_shopify_updates_of_an_erased_customers_orders_bring_nothing_back(db_url, shop):
    """Shopify's customers/redact names her orders (one the connector never stored); a late orders/updated and a
    fulfilment of them, an update of an order of hers from before the erasure it did not know of, and of a
    cart she left before it, are ignored; her new order is confirmed."""
    sc = shop
    db, sid = sc.runtime.db, sc.runtime.store_ids["shop-a"]
    placed = p.iso(sc.now - timedelta(hours=2))
    first = order_payload(LUCIA, 9001, placed)
    sc.shopify("orders/create", first)
    cart = {**checkout_payload(LUCIA, "c-lucia-1"), "created_at": placed, "updated_at": placed}  # a cart she left
    sc.shopify("checkouts/create", cart)
    sc.work()
    assert sc.templates_to(LUCIA.e164) == [THANKS]

    sc.later(days=10)
    mark = last_inbox_id(db)
    sc.shopify("customers/redact", request_payload(LUCIA, [9001, 9002]))  # 9002: an old order never stored here
    # an update right behind it, processed in the same worker round, after the erasure
    sc.shopify("orders/updated", {**first, "note": f"Call {LUCIA.phone}", "updated_at": p.iso(sc.now)})
    erased_on = sc.now.date().isoformat()
    sc.work()
    assert leaks(db, LUCIA.needles(), sid) == []
    before, sent = aggregates(db, sid), len(sc.world.sent())

    sc.later(hours=1)
    sc.shopify("orders/updated", {**order_payload(LUCIA, 9002, placed), "updated_at": p.iso(sc.now)})
    sc.shopify("fulfillments/create", p.shopify_fulfillment(555001, 9001, sc.now))
    # an order of hers from before the erasure that it knew nothing of (its webhooks were lost): hers by her customer id
    sc.shopify("orders/updated", {**order_payload(LUCIA, 9003, placed), "updated_at": p.iso(sc.now)})
    sc.shopify("checkouts/update", {**cart, "updated_at": p.iso(sc.now)})  # the cart she left, touched again
    sc.later(hours=1)
    reason = f"customer erased on {erased_on}"
    assert rows_after(db, sid, mark) == [("shopify", "customers/redact", "done", None, False),
                                         ("shopify", "orders/updated", "ignored", reason, False),
                                         ("shopify", "orders/updated", "ignored", reason, False),
                                         ("shopify", "fulfillments/create", "ignored", reason, False),
                                         ("shopify", "orders/updated", "ignored", reason, False),
                                         ("shopify", "checkouts/update", "ignored", reason, False)]
    assert leaks(db, LUCIA.needles(), sid) == [] and contacts_with(db, sid, LUCIA.e164) == []
    assert aggregates(db, sid) == {**before, "inbox": before["inbox"] + 4}
    assert len(sc.world.sent()) == sent

    sc.shopify("orders/create", order_payload(LUCIA, 9010, p.iso(sc.now)))
    sc.work()
    assert sc.templates_to(LUCIA.e164) == [THANKS, THANKS]
    assert len(contacts_with(db, sid, LUCIA.e164)) == 1


@pytest.fixture
def own_db_url(db_url: str, tmp_path: Path) -> Iterator[str]:
    """A migrated database of the test's own, which it may take back to an older revision: the SQLite file
    ``db_url`` is already; on PostgreSQL a schema of its own (the session's is shared), dropped afterwards."""
    if db_url.startswith("sqlite"):
        yield db_url
        return
    schema = f"sl_oldmarks_{os.getpid()}"
    admin = make_engine(PG_URL)
    with admin.begin() as conn:
        conn.execute(text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
        conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    engine = make_engine(PG_URL, connect_args={"options": f"-csearch_path={schema}"})
    migrate(engine)
    engine.dispose()
    try:
        yield f"{PG_URL}?options=-csearch_path%3D{schema}"
    finally:
        with admin.begin() as conn:
            conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()


def marks_of(db, store_id: int) -> list[tuple]:
    with db.engine.connect() as conn:
        query = select(m.ErasedRef.kind, m.ErasedRef.ref, m.ErasedRef.erased_at).where(m.ErasedRef.store_id == store_id)
        return sorted(tuple(r) for r in conn.execute(query))


def test_an_erasure_made_before_migration_0023_keeps_her_erased_after_the_upgrade(own_db_url, scenario, monkeypatch):  # noqa: F811
    """An erasure before 0023 left everything one leaves now but the marks (table erased_refs): her contact
    ``redacted:<id>`` with no phone, name or customer id, her orders with their ids and that contact, the
    request's ``compliance_requests`` row. So she is erased through the app, and the database taken back to
    0022 (the marks go with their table) is one such an erasure left. Upgrading marks her orders; a later
    WooCommerce ``order.updated`` of her old order is then ignored: no contact, nothing sent. Another
    customer's order of the same store is not marked, and his update is processed as ever."""
    monkeypatch.setattr(harness, "settings_dict", _settings_with_shop_a_token)
    sc = scenario(own_db_url, "woocommerce", journeys={"order_confirmation": {}}, store_settings={"admin_token": TEAM_WOO})
    db, woo_id = sc.runtime.db, sc.runtime.store_ids["woo"]
    order, ravi = _lucia_and_ravi_ordered(sc)
    assert sc.templates_to(LUCIA.e164) == [THANKS]
    erased_at = sc.now
    queued = sc.client.post("/api/stores/woo/customers/redact", json={"customer_id": LUCIA.customer_id}, headers=bearer(TEAM_WOO))
    assert queued.status_code == 202, queued.text
    sc.work()
    assert leaks(db, LUCIA.needles(), woo_id) == []

    command.downgrade(alembic_config(db.engine), "0022")  # the database as an erasure before 0023 left it
    assert current_revision(db.engine) == "0022"
    with db.engine.connect() as conn:
        [(contact_id, phone_key)] = conn.execute(text("SELECT c.id, c.phone_key FROM contacts c JOIN orders o ON o.contact_id = c.id "
                                                      "WHERE o.external_id = '7301'")).all()
    assert phone_key == f"redacted:{contact_id}"
    migrate(db.engine)

    # her order is marked, with the erasure's time; no customer id is left to hash; his order is not marked
    assert marks_of(db, woo_id) == [("order", "7301", erased_at)]
    step = ScriptDirectory.from_config(alembic_config(db.engine)).get_revision("0023").module
    with db.engine.begin() as conn:  # the step again (an upgrade retried): nothing changes
        step._mark_earlier_erasures(conn)
    assert marks_of(db, woo_id) == [("order", "7301", erased_at)]
    before, mark, sent = aggregates(db, woo_id), last_inbox_id(db), len(sc.world.sent())

    sc.later(days=3)  # the owner completes both orders: WooCommerce sends them whole again, her data in hers
    sc.woo("order.updated", {**order, "status": "completed", "date_modified_gmt": p.gmt(sc.now), "date_modified": p.gmt(sc.now),
                             "customer_note": f"Delivered to {LUCIA.first}, call {LUCIA.phone}"})
    sc.woo("order.updated", {**ravi, "status": "completed", "date_modified_gmt": p.gmt(sc.now), "date_modified": p.gmt(sc.now)})
    sc.later(hours=6)

    assert rows_after(db, woo_id, mark) == [
        ("woocommerce", "order.updated", "ignored", f"customer erased on {erased_at.date().isoformat()}", False),
        ("woocommerce", "order.updated", "done", None, True)]
    assert leaks(db, LUCIA.needles(), woo_id) == [] and contacts_with(db, woo_id, LUCIA.e164) == []
    assert len(sc.world.sent()) == sent
    after = aggregates(db, woo_id)
    assert after["contacts"] == before["contacts"] and after["runs"] == before["runs"]
    assert [o for o in after["orders"] if o[0] == "7301"] == [o for o in before["orders"] if o[0] == "7301"]


def _whatsapp_consent(sc, person, state: str) -> None:
    sc.shopify("customers_whats_app_marketing_consent/update", p.shopify_whatsapp_consent(person.customer_id, person.phone, state, sc.now))


def test_an_erased_customers_opt_out_still_reaches_the_contact_she_started_since(db_url, shop):
    """After her erasure Lucia writes to the store on WhatsApp: a new contact, a new relationship. She then
    unsubscribes from the store's WhatsApp marketing in her Shopify account: the webhook names her erased
    customer id, yet her opt-out reaches that contact (nothing of the webhook is kept, her customer id is not
    written back). An opt-out while her number has no contact creates none; a later subscribe stays ignored."""
    sc = shop
    db, sid = sc.runtime.db, sc.runtime.store_ids["shop-a"]
    sc.shopify("orders/create", order_payload(LUCIA, 9001, p.iso(sc.now - timedelta(hours=2))))
    sc.work()
    sc.later(days=1)
    sc.shopify("customers/redact", request_payload(LUCIA, [9001]))
    sc.later(hours=1)
    erased_on = sc.now.date().isoformat()
    mark = last_inbox_id(db)

    _whatsapp_consent(sc, LUCIA, "unsubscribed")  # her number has no contact: nothing to apply, nothing created
    sc.later(hours=1)
    assert contacts_with(db, sid, LUCIA.e164) == []
    sc.say(LUCIA.e164, "Hello, is the blue vase back in stock?")  # a new relationship she started
    sc.later(hours=1)
    [new] = contacts_with(db, sid, LUCIA.e164)
    assert new.consent_marketing != "revoked"

    _whatsapp_consent(sc, LUCIA, "unsubscribed")
    sc.later(hours=1)
    _whatsapp_consent(sc, LUCIA, "subscribed")  # a grant for her erased customer id: still ignored
    sc.later(hours=1)

    reason = f"customer erased on {erased_on}"
    topic = "customers_whats_app_marketing_consent/update"
    rows = [r for r in rows_after(db, sid, mark) if r[0] == "shopify"]
    assert rows == [("shopify", topic, "ignored", reason, False), ("shopify", topic, "done", f"{reason}; her opt-out applied", False),
                    ("shopify", topic, "ignored", reason, False)]
    [after] = contacts_with(db, sid, LUCIA.e164)
    assert after.id == new.id and after.consent_marketing == "revoked"
    assert after.external_customer_id is None and after.email is None
    with db.engine.connect() as conn:
        keys = conn.execute(select(m.InboxEvent.dedupe_key, m.InboxEvent.event).where(
            m.InboxEvent.store_id == sid, m.InboxEvent.id > mark, m.InboxEvent.source == "shopify")).all()
    assert all(str(LUCIA.customer_id) not in (k or "") and not e for k, e in keys)
