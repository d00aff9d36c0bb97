"""An erased guest's abandoned checkout does not bring her back.

A guest (no customer account) leaves a cart, then asks to be erased (Shopify's ``customers/redact``
with her email and phone, a store owner's request). Shopify still holds her checkout: an update of it
(``checkouts/update``), or the abandoned-checkout poll reading it back, carries her phone again; it
would start a new contact and the checkout-recovery journey would message her. Such a delivery is
stored ``ignored`` ("customer erased on <date>") without its body, and creates no contact, no run, no
send. A checkout she begins later (a new token) is a new relationship. Another store's checkout with the
same token is that store's own. The real app over HTTP with signed webhooks, Shopify's Admin GraphQL
faked at the HTTP boundary (respx); SQLite and PostgreSQL.
"""

from __future__ import annotations

import asyncio
from datetime import timedelta

from alembic import command
from alembic.script import ScriptDirectory
from sqlalchemy import select, text

from connector.storage import models as m
from connector.storage.db import alembic_config, current_revision, migrate
from tests.conftest import SECRETS
from tests.helpers import dumps, running_app, shopify_headers
from tests.test_checkout_poll import AC_URL, T, Clock, FakeCheckouts, fixture_checkout, iso, poll, polled_twin, shop_settings
from tests.scenarios import payloads as p
from tests.scenarios.conftest import _world_server, scenario, world  # noqa: F401  (the scenarios' fixtures)
from tests.scenarios.test_store_journeys import LADDER
from tests.test_compliance import Person, _address, leaks
from tests.test_customer_redact import TEAM_WOO, bearer
from tests.test_erased_orders import contacts_with, last_inbox_id, marks_of, own_db_url, rows_after  # noqa: F401  (own_db_url: a fixture)

GUEST = Person("Ashwini", "Kulkarnee", "ashwini.k@example.in", "+91 97311 22334", "+919731122334", 0)
SHOP_A, SHOP_B = "shop-a.myshopify.com", "shop-b.myshopify.com"
ASHA = "+919876543210"  # a guest at the WooCommerce store


def guest_checkout(token: str, at, url: str | None = None, person: Person = GUEST) -> dict:
    """Her checkout as Shopify's checkouts/* webhook sends it: no customer (a guest), her phone, email and address."""
    return fixture_checkout(token=token, phone=person.phone, email=person.email, customer=None,
                            billing_address=_address(person), shipping_address=_address(person),
                            created_at=iso(at), updated_at=iso(at),
                            abandoned_checkout_url=url or f"https://shop-a.example/7001/checkouts/{token}/recover?key=k-{token}")


def send(client, topic: str, payload: dict, shop: str = SHOP_A) -> None:
    body = dumps(payload)
    secret = SECRETS["shop_a"] if shop == SHOP_A else SECRETS["shop_b"]
    r = client.post("/webhooks/shopify", content=body, headers=shopify_headers(body, secret, shop, topic))
    assert r.status_code == 200, r.text


def redact_guest(client, person: Person = GUEST) -> None:
    """Shopify's customers/redact for a guest: no customer id, her email and phone, no order."""
    send(client, "customers/redact", {"shop_id": 954889, "shop_domain": SHOP_A,
                                      "customer": {"id": None, "email": person.email, "phone": person.phone}, "orders_to_redact": []})


def sends_for(db, store_id: int) -> list[tuple]:
    with db.engine.connect() as conn:
        return conn.execute(select(m.OutboxMessage.journey, m.OutboxMessage.step, m.OutboxMessage.status, m.OutboxMessage.skip_reason)
                            .where(m.OutboxMessage.store_id == store_id).order_by(m.OutboxMessage.id)).all()


def run_subjects(db, store_id: int) -> list[str]:
    with db.engine.connect() as conn:
        return list(conn.execute(select(m.JourneyRun.subject).where(m.JourneyRun.store_id == store_id).order_by(m.JourneyRun.id)).scalars())


def checkout_marks(db, store_id: int) -> list[tuple]:
    return [(ref, at) for kind, ref, at in marks_of(db, store_id) if kind == "checkout"]


def work(runtime, clock, when) -> None:
    clock.now = when
    runtime.processor.drain()
    runtime.processor.process_timers()
    runtime.processor.drain()


def test_an_erased_guests_checkout_updated_later_brings_nothing_back_and_a_new_checkout_is_new(db_url):
    """Her cart is reminded once; she asks to be erased; days later Shopify sends checkouts/update for that
    cart (twice: a redelivery): ignored, no contact, no send. Shop-b's checkout with the same token, hers too,
    is shop-b's. Her new cart is processed and reminded. A shop erasure forgets her checkout's mark."""
    settings = shop_settings(db_url)
    clock = Clock(T)
    with running_app(settings, clock=clock) as (client, runtime):
        runtime.processor.clock = clock
        db, sid, other = runtime.db, runtime.store_ids["shop-a"], runtime.store_ids["shop-b"]
        cart = guest_checkout("guest-cart-1", T - timedelta(minutes=10))
        send(client, "checkouts/create", cart)
        work(runtime, clock, T + timedelta(minutes=25))
        assert sends_for(db, sid) == [("checkout_recovery", "first", "pending", None)]
        assert len(contacts_with(db, sid, GUEST.e164)) == 1

        redact_guest(client)
        erased_on = clock.now.date().isoformat()
        work(runtime, clock, T + timedelta(minutes=30))
        assert leaks(db, GUEST.needles(), sid) == []
        assert ("checkout", "guest-cart-1") in [(k, r) for k, r, _ in marks_of(db, sid)]
        assert sends_for(db, sid) == [("checkout_recovery", "first", "skipped", "redacted")]
        mark, runs_before = last_inbox_id(db), run_subjects(db, sid)

        later = T + timedelta(days=3)
        update = {**cart, "updated_at": iso(later), "total_price": "949.00"}  # she came back to the cart as a guest
        send(client, "checkouts/update", update)
        send(client, "checkouts/update", update)  # a redelivery (another webhook id)
        send(client, "checkouts/create", {**cart, "updated_at": iso(later)}, shop=SHOP_B)  # shop-b's own checkout, same token
        work(runtime, clock, later + timedelta(hours=1))

        reason = f"customer erased on {erased_on}"
        assert rows_after(db, sid, mark) == [("shopify", "checkouts/update", "ignored", reason, False),
                                             ("shopify", "checkouts/update", "ignored", reason, False)]
        assert leaks(db, GUEST.needles(), sid) == [] and contacts_with(db, sid, GUEST.e164) == []
        assert sends_for(db, sid) == [("checkout_recovery", "first", "skipped", "redacted")]
        assert run_subjects(db, sid) == runs_before
        # shop-b never erased her: its checkout is processed as any, under its own contact
        assert rows_after(db, other, mark) == [("shopify", "checkouts/create", "done", None, True)]
        [theirs] = contacts_with(db, other, GUEST.e164)
        assert theirs.email == GUEST.email

        # a new cart of hers (a new token): a new relationship, reminded as any
        fresh = guest_checkout("guest-cart-2", clock.now)
        send(client, "checkouts/create", fresh)
        work(runtime, clock, clock.now + timedelta(minutes=35))
        assert rows_after(db, sid, last_inbox_id(db) - 1)[-1][:3] == ("shopify", "checkouts/create", "done")
        assert len(contacts_with(db, sid, GUEST.e164)) == 1
        assert sends_for(db, sid) == [("checkout_recovery", "first", "skipped", "redacted"), ("checkout_recovery", "first", "pending", None)]
        assert run_subjects(db, sid)[-1] == "checkout:guest-cart-2"

        # the whole shop erased: the marks of its erased customers' checkouts go with the rest
        send(client, "shop/redact", {"shop_id": 954889, "shop_domain": SHOP_A})
        work(runtime, clock, clock.now + timedelta(minutes=40))
        assert marks_of(db, sid) == []
        assert marks_of(db, other) == []  # shop-b erased no one


def test_the_poll_reading_an_erased_guests_checkouts_back_brings_nothing_back(db_url):
    """Her two carts: one with a classic recovery link (it carries the token), one with a newer link (it does
    not: the poll had matched it by the stored link, which the erasure removed). Erased, then both are
    updated and the poll reads them back, with another shopper's cart: hers are ignored, his starts."""
    settings = shop_settings(db_url)
    store = settings.stores[0]
    clock = Clock(T)
    classic = guest_checkout("guest-cart-9", T - timedelta(minutes=10))
    newer = guest_checkout("84ad78572dae52a8cbea7d55371afe89", T - timedelta(minutes=10), url=AC_URL)
    with running_app(settings, clock=clock) as (client, runtime):
        runtime.processor.clock = clock
        db, sid = runtime.db, runtime.store_ids["shop-a"]
        send(client, "checkouts/create", classic)
        send(client, "checkouts/create", newer)
        work(runtime, clock, T)
        assert len(contacts_with(db, sid, GUEST.e164)) == 1
        redact_guest(client)
        erased_on = clock.now.date().isoformat()
        work(runtime, clock, T + timedelta(minutes=5))
        assert leaks(db, GUEST.needles() + ["8a0dccedfd237694", "k-guest-cart-9"], sid) == []  # the links' secrets too
        mark, runs_before = last_inbox_id(db), run_subjects(db, sid)

        # two hours on: both carts were touched 90 minutes ago (past the poll's grace for a checkout it cannot
        # match, within its import window); their webhooks were lost. A stranger left a cart as well.
        now = T + timedelta(hours=2)
        touched = now - timedelta(minutes=90)
        stranger = Person("Devendra", "Pillai", "dev.p@example.in", "+91 94440 55667", "+919444055667", 0)
        fake = FakeCheckouts([
            polled_twin({**classic, "updated_at": iso(touched)}, 7001),
            polled_twin({**newer, "updated_at": iso(touched)}, 35550298931313,
                        url=AC_URL.replace("shop-a.myshopify.com", "shop-a.example") + "&locale=en-IN"),
            polled_twin(guest_checkout("stranger-cart-1", touched, person=stranger), 7002),
        ])
        report = asyncio.run(poll(db, store, sid, fake, now))
        assert report.new_rows == 3
        work(runtime, clock, now + timedelta(minutes=1))

        reason = f"customer erased on {erased_on}"
        rows = rows_after(db, sid, mark)
        assert sorted(rows) == sorted([("shopify", "sync/checkout", "ignored", reason, False),
                                       ("shopify", "sync/checkout", "ignored", reason, False),
                                       ("shopify", "sync/checkout", "done", None, True)])
        assert leaks(db, GUEST.needles() + ["8a0dccedfd237694", "k-guest-cart-9"], sid) == []
        assert contacts_with(db, sid, GUEST.e164) == []
        assert run_subjects(db, sid) == [*runs_before, "checkout:stranger-cart-1"]
        assert len(contacts_with(db, sid, stranger.e164)) == 1
        with db.engine.connect() as conn:
            keys = conn.execute(select(m.InboxEvent.dedupe_key).where(m.InboxEvent.store_id == sid, m.InboxEvent.id > mark)).scalars().all()
        assert not any("84ad78572dae52a8cbea7d55371afe89" in k for k in keys)


def test_a_guest_erased_before_migration_0025_stays_erased_for_her_checkout(own_db_url):  # noqa: F811
    """An erasure before 0025 marked no checkout: her cart (Shopify's checkouts/update) came back. She is
    erased through the app, and the database taken back to 0024 (the checkout marks go) is one such an
    erasure left. Upgrading marks her checkout with the erasure's time; a later update of it is ignored."""
    settings = shop_settings(own_db_url)
    clock = Clock(T)
    cart = guest_checkout("guest-cart-5", T - timedelta(minutes=10))
    with running_app(settings, clock=clock) as (client, runtime):
        runtime.processor.clock = clock
        db, sid = runtime.db, runtime.store_ids["shop-a"]
        send(client, "checkouts/create", cart)
        send(client, "checkouts/create", guest_checkout("stranger-cart-5", T - timedelta(minutes=10),
                                                        person=Person("Devendra", "Pillai", "dev.p@example.in", "+91 94440 55667", "+919444055667", 0)))
        work(runtime, clock, T)
        redact_guest(client)
        work(runtime, clock, T + timedelta(minutes=5))
        erased_at = clock.now  # the request is answered when processed

        command.downgrade(alembic_config(db.engine), "0024")
        assert current_revision(db.engine) == "0024"
        assert checkout_marks(db, sid) == []  # she had no order and no customer id: nothing of hers marked then
        with db.engine.connect() as conn:
            assert conn.execute(text("SELECT count(*) FROM checkouts WHERE token = 'guest-cart-5' AND recovery_url IS NULL")).scalar() == 1
        migrate(db.engine)
        assert checkout_marks(db, sid) == [("guest-cart-5", erased_at)]  # not the stranger's
        step = ScriptDirectory.from_config(alembic_config(db.engine)).get_revision("0025").module
        with db.engine.begin() as conn:  # the step again (an upgrade retried): nothing changes
            step._mark_earlier_checkouts(conn)
        assert checkout_marks(db, sid) == [("guest-cart-5", erased_at)]
        mark = last_inbox_id(db)

        send(client, "checkouts/update", {**cart, "updated_at": iso(T + timedelta(days=1))})
        work(runtime, clock, T + timedelta(days=1, minutes=40))
        assert rows_after(db, sid, mark) == [("shopify", "checkouts/update", "ignored", f"customer erased on {erased_at.date().isoformat()}", False)]
        assert contacts_with(db, sid, GUEST.e164) == [] and leaks(db, GUEST.needles(), sid) == []
        assert all(journey != "checkout_recovery" or status != "pending" or subject != "checkout:guest-cart-5"
                   for journey, subject, status in _sends_with_subject(db, sid))


def _sends_with_subject(db, store_id: int) -> list[tuple]:
    with db.engine.connect() as conn:
        return [(o.journey, (o.payload or {}).get("subject"), o.status)
                for o in conn.execute(select(m.OutboxMessage).where(m.OutboxMessage.store_id == store_id))]


def test_an_erased_guests_woocommerce_cart_posted_again_brings_nothing_back(db_url, scenario):  # noqa: F811
    """The Cart Abandonment Recovery plugin posts her cart (a guest: no account, no order); she is reminded once,
    then the owner erases her by phone (the admin API, as ``storeloop customer redact --phone``). The plugin posts
    that cart again, completed (she came back to it and bought): ignored, no contact, nothing sent. Her new cart
    (a new session) is a new relationship."""
    sc = scenario(db_url, "woocommerce", journeys=LADDER, store_settings={"admin_token": TEAM_WOO})
    db, woo_id = sc.runtime.db, sc.runtime.store_ids["woo"]
    sc.cart(p.woo_cart("a1a1a1a1a1", ASHA))
    sc.later(hours=1, step=timedelta(minutes=10))
    assert sc.templates_to(ASHA) == ["cart_1_v1"]

    erased = sc.client.post("/api/stores/woo/customers/redact", json={"phone": ASHA}, headers=bearer(TEAM_WOO))
    assert erased.status_code == 202, erased.text
    sc.work()
    erased_on = sc.now.date().isoformat()
    assert contacts_with(db, woo_id, ASHA) == []
    mark, sent = last_inbox_id(db), len(sc.world.sent())

    sc.later(days=2)
    sc.cart(p.woo_cart("a1a1a1a1a1", ASHA, status="completed"))  # she came back to that cart and bought
    sc.later(days=2, step=timedelta(hours=1))
    assert rows_after(db, woo_id, mark) == [("woocommerce", "cart.completed", "ignored", f"customer erased on {erased_on}", False)]
    assert contacts_with(db, woo_id, ASHA) == [] and len(sc.world.sent()) == sent

    sc.cart(p.woo_cart("c9c9c9c9c9", ASHA))  # a new cart: a new relationship
    sc.later(hours=1, step=timedelta(minutes=10))
    assert sc.templates_to(ASHA) == ["cart_1_v1", "cart_1_v1"]
    assert len(contacts_with(db, woo_id, ASHA)) == 1
