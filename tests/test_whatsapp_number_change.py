"""A customer changes her WhatsApp number: her contact, her journeys and her opt-out follow her.

Meta says so with a system message (``messages[].type == "system"``, ``system.type ==
"user_changed_number"``, sent from the old number, ``system.wa_id`` the new one: Meta's "System
messages webhook reference"; pywa ``tests/data/updates/system.json``). Before, the connector kept it
as a message with no text: her COD reminder still went to the number she left, her words from the new
one came from a stranger (no run answered, no consent, no STOP), and a message queued for her went to
the old number.

Real app, signed webhooks through the real HTTP endpoint, a virtual clock, fake Graph API and store
(tests/scenarios); SQLite and PostgreSQL.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from sqlalchemy import select

from connector.storage import models as m
from tests.conftest import PHONE_ID_B
from tests.scenarios.conftest import _world_server, scenario, sqlite_url, world  # noqa: F401 (fixtures)
from tests.scenarios import payloads as p
from tests.scenarios.harness import T0, wa_id
from tests.scenarios.stores import SHOPIFY
from tests.scenarios.test_store_journeys import COD

ASHA, ASHA_NEW, RAVI = "+919876543210", "+919845001122", "+919812345678"


def number_change(phone_number_id: str, old: str, new: str, message_id: str, at: Any, *, legacy: bool = False) -> dict[str, Any]:
    """Meta's ``user_changed_number`` system message: from the old number, no contacts array;
    ``legacy``: as webhooks of v11.0 and older said it (``new_wa_id``, type ``customer_changed_number``)."""
    system = ({"body": f"User A changed from {wa_id(old)} to {wa_id(new)}", "new_wa_id": wa_id(new), "type": "customer_changed_number"}
              if legacy else {"body": f"User A changed from {wa_id(old)} to {wa_id(new)}", "wa_id": wa_id(new), "type": "user_changed_number"})
    return {"object": "whatsapp_business_account", "entry": [{"id": "102290129340398", "changes": [{"field": "messages", "value": {
        "messaging_product": "whatsapp", "metadata": {"display_phone_number": "15550783881", "phone_number_id": phone_number_id},
        "messages": [{"from": wa_id(old), "id": message_id, "timestamp": str(int(at.timestamp())), "type": "system",
                      "system": system}]}}]}]}


def changes_number(sc, old: str, new: str, *, legacy: bool = False) -> None:
    sc.post(sc.whatsapp_delivery(number_change(sc.phone_number_id, old, new, sc._message_id(), sc.now, legacy=legacy)))


def test_her_cod_reminder_and_her_unquoted_reply_follow_her_to_the_new_number(db_url, scenario, world):
    """Asha is asked to confirm her COD order, then changes her number. The reminder six hours on goes to
    the new number (never the old one), her words from the new number answer her COD run (its case, not a
    stranger's), and a late reply from the old number still reaches her. Meta's retry moves nothing twice."""
    sc = scenario(db_url, "shopify", journeys=COD)
    SHOPIFY.place(sc, SHOPIFY.order(1, ASHA, sc.now))
    sc.work()
    assert sc.templates_to(ASHA) == ["cod_confirm_v1"]

    sc.later(minutes=30)
    changes_number(sc, ASHA, ASHA_NEW)
    changes_number(sc, ASHA, ASHA_NEW, legacy=True)  # the same news again, as an older webhook version says it
    sc.at(T0 + timedelta(hours=6, minutes=5))
    assert sc.templates_to(ASHA) == ["cod_confirm_v1"]
    assert sc.templates_to(ASHA_NEW) == ["cod_reminder_v1"]

    sc.later(minutes=10)
    sc.say(ASHA_NEW, "I will pay cash when it comes")  # quoting nothing
    sc.later(minutes=10)
    [case] = sc.handoffs("open")
    assert (case["journey"], case["subject"]) == ("cod_confirmation", f"order:{SHOPIFY.order_id(1)}")
    assert "I will pay cash when it comes" in case["reason"]

    sc.say(ASHA, "hello?")  # a late message Meta still delivers from the old number
    sc.later(minutes=10)
    her = sc.contact(ASHA_NEW)
    assert sc.contact(ASHA)["contact"] == her["contact"]  # her old number finds her
    assert her["contact"]["phone"] == ASHA_NEW and her["contact"]["wa_id"] == wa_id(ASHA_NEW)
    assert [(r["journey"], r["subject"]) for r in her["journeys"]] == [("cod_confirmation", f"order:{SHOPIFY.order_id(1)}")]
    assert [o["id"] for o in her["orders"]] == [str(SHOPIFY.order_id(1))]
    with sc.runtime.db.engine.connect() as conn:
        assert conn.execute(select(m.Contact.id)).all().__len__() == 1  # one person, one contact
        assert conn.execute(select(m.PreviousNumber.phone_key)).scalars().all() == [ASHA]


def test_a_message_queued_to_her_old_number_goes_to_the_new_one(db_url, scenario, world):
    """Her COD question is queued for the old number when Meta's notice of the change comes in (the same
    round of the worker): it goes to the new number, once, and nothing reaches the old one."""
    sc = scenario(db_url, "shopify", journeys=COD)
    SHOPIFY.place(sc, SHOPIFY.order(2, ASHA, sc.now))
    changes_number(sc, ASHA, ASHA_NEW)
    sc.work()
    assert sc.templates_to(ASHA) == []
    assert sc.templates_to(ASHA_NEW) == ["cod_confirm_v1"]
    ask = sc.last_to(ASHA_NEW, "cod_confirm_v1")
    sc.later(minutes=20)
    sc.tap(ASHA_NEW, "cod_confirm", ask)
    sc.later(hours=7)
    assert world.shopify_ops("tagsAdd") == [{"id": f"gid://shopify/Order/{SHOPIFY.order_id(2)}", "tags": ["cod-confirmed"]}]
    assert sc.templates_to(ASHA_NEW) == ["cod_confirm_v1"]  # confirmed: no reminder


def test_she_stays_opted_out_on_her_new_number_and_another_stores_contact_is_not_touched(db_url, scenario, world):
    """Asha wrote STOP from her old number. After the change a new COD order with her new number asks her
    nothing. Store B knows the same old number as its own customer: Meta's notice to store A's number moves
    nothing there."""
    sc = scenario(db_url, "shopify", journeys=COD)
    sc.post(sc.whatsapp_delivery(p.wa_text(PHONE_ID_B, wa_id(ASHA), "wamid.B0001", "hi shop B", sc.now)))
    sc.say(ASHA, "STOP")
    sc.later(minutes=5)
    changes_number(sc, ASHA, ASHA_NEW)
    SHOPIFY.place(sc, SHOPIFY.order(3, ASHA_NEW, sc.now))
    sc.later(hours=8)

    assert sc.sent() == []
    her = sc.contact(ASHA_NEW)["contact"]
    assert her["opted_out_at"] is not None and her["phone"] == ASHA_NEW
    with sc.runtime.db.engine.connect() as conn:
        store_b = conn.execute(select(m.Store.id).where(m.Store.key == "shop-b")).scalar_one()
        b = conn.execute(select(m.Contact.phone_e164, m.Contact.wa_id, m.Contact.opted_out_at).where(m.Contact.store_id == store_b)).all()
        assert [tuple(r) for r in b] == [(ASHA, wa_id(ASHA), None)]
        assert conn.execute(select(m.PreviousNumber.store_id)).scalars().all() == [sc.runtime.store_ids["shop-a"]]


def test_when_her_new_number_is_already_a_contact_her_run_and_her_refusal_join_it(db_url, scenario, world):
    """She wrote once from the new number before Meta's notice came (a second contact). Her COD run, her
    refusal of marketing messages and her old number all go to that contact: the reminder reaches the new
    number, marketing stays refused there, and her old number finds that contact."""
    sc = scenario(db_url, "shopify", journeys=COD)
    SHOPIFY.place(sc, SHOPIFY.order(4, ASHA, sc.now))
    sc.work()
    sc.marketing_preference(ASHA, "stop")
    sc.say(ASHA_NEW, "hi")
    sc.later(minutes=5)
    changes_number(sc, ASHA, ASHA_NEW)
    sc.at(T0 + timedelta(hours=6, minutes=5))

    assert sc.templates_to(ASHA) == ["cod_confirm_v1"]
    assert sc.templates_to(ASHA_NEW) == ["cod_reminder_v1"]
    her = sc.contact(ASHA_NEW)
    assert her["consent"]["marketing"]["state"] == "revoked"
    assert [(r["journey"], r["subject"]) for r in her["journeys"]] == [("cod_confirmation", f"order:{SHOPIFY.order_id(4)}")]
    assert sc.contact(ASHA)["contact"] == her["contact"]


def test_a_number_change_without_the_new_number_moves_no_one_and_says_why(sqlite_url, scenario, world):
    """A system message naming no new number: the inbox row fails with the reason (it can be replayed after a
    fix); her contact and her COD reminder stay on the number she has."""
    sc = scenario(sqlite_url, "shopify", journeys=COD)
    SHOPIFY.place(sc, SHOPIFY.order(5, ASHA, sc.now))
    sc.work()
    body = number_change(sc.phone_number_id, ASHA, ASHA_NEW, "wamid.SYS1", sc.now)
    del body["entry"][0]["changes"][0]["value"]["messages"][0]["system"]["wa_id"]
    sc.post(sc.whatsapp_delivery(body))
    sc.at(T0 + timedelta(hours=6, minutes=5))
    assert sc.templates_to(ASHA) == ["cod_confirm_v1", "cod_reminder_v1"]
    with sc.runtime.db.engine.connect() as conn:
        row = conn.execute(select(m.InboxEvent.status, m.InboxEvent.last_error).where(m.InboxEvent.topic == "message")).one()
    assert row.status == "failed" and "without the old and the new number" in row.last_error


def test_an_erasure_naming_her_old_number_erases_her_and_forgets_the_number(db_url, scenario, world):
    """Shopify's customers/redact names the number she had: it finds her contact (now on the new number),
    erases it, and the old number is kept nowhere; a later message from it is a new relationship."""
    sc = scenario(db_url, "shopify", journeys=COD)
    SHOPIFY.place(sc, SHOPIFY.order(6, ASHA, sc.now))
    sc.work()
    changes_number(sc, ASHA, ASHA_NEW)
    sc.later(minutes=5)
    sc.shopify("customers/redact", {"shop_id": 954889, "shop_domain": "shop-a.myshopify.com",
                                    "customer": {"id": 424242, "email": None, "phone": ASHA}, "orders_to_redact": []})
    sc.later(minutes=5)
    with sc.runtime.db.engine.connect() as conn:
        assert conn.execute(select(m.PreviousNumber.id)).all() == []
        assert [tuple(r) for r in conn.execute(select(m.Contact.phone_e164, m.Contact.phone_key))] == [(None, "redacted:1")]
    sc.say(ASHA, "hello")
    sc.later(minutes=5)
    assert sc.contact(ASHA)["contact"]["phone"] == ASHA and sc.contact(ASHA)["contact"]["opted_out_at"] is None


# ---- a recycled number: her old one is hers for WhatsApp's echoes only, for a while ----------------

def test_a_late_reply_from_her_old_number_reaches_her_but_a_month_on_the_number_is_a_strangers(db_url, scenario, world):
    """A reply of hers Meta delivers from the old number three days after the change still reaches her
    contact. Forty days on (past ``number_change.WINDOW``) the telco has given the number to Ravi: his
    "hello" is a new customer's, kept on a contact of his own; hers keeps her name and her new number."""
    sc = scenario(db_url, "shopify", journeys=COD)
    SHOPIFY.place(sc, SHOPIFY.order(1, ASHA, sc.now))
    sc.work()
    changes_number(sc, ASHA, ASHA_NEW)
    sc.later(days=3)
    sc.say(ASHA, "did you get my answer?")
    sc.later(minutes=10)
    her = sc.contact(ASHA_NEW)["contact"]
    assert sc.contact(ASHA)["contact"] == her  # within the window, the old number finds her

    sc.later(days=40, step=timedelta(days=5))
    sc.say(ASHA, "hello, is this the shop?")  # Ravi, on the number she left
    sc.later(minutes=10)
    his = sc.contact(ASHA)
    assert (his["contact"]["phone"], his["contact"]["wa_id"], his["contact"]["name"], his["orders"]) == (ASHA, wa_id(ASHA), None, [])
    assert sc.contact(ASHA_NEW)["contact"] == her  # her name, her number, her WhatsApp id: untouched
    with sc.runtime.db.engine.connect() as conn:
        assert len(conn.execute(select(m.Contact.id)).all()) == 2


def test_her_order_placed_before_the_change_stays_hers_when_the_store_updates_it_weeks_later(sqlite_url, scenario, world):
    """Shopify's updates of her order keep naming the number she gave when she placed it. Six weeks after
    the change (past the window) the store ships it: the order stays on her contact, "shipped" goes to
    her new number, and no contact is made for the number she left."""
    from tests.scenarios.test_delivery_stories import parcel, start

    sc = start(scenario, sqlite_url)
    order = SHOPIFY.order(1, ASHA, sc.now, cod=False)
    SHOPIFY.place(sc, order)
    sc.later(minutes=10)
    changes_number(sc, ASHA, ASHA_NEW)
    sc.later(days=42, step=timedelta(days=6))
    SHOPIFY.confirmed_echo(sc, {**order, "updated_at": p.iso(sc.now)})  # an app tags it: orders/updated, old number
    sc.shopify("fulfillments/create", parcel(7001, order, sc.now, "in_transit", "AAA111"))
    sc.later(hours=1)

    assert [s.to for s in sc.world.sent() if s.template == "shipped_track_v1"] == [ASHA_NEW]
    with sc.runtime.db.engine.connect() as conn:
        assert conn.execute(select(m.Contact.phone_e164)).scalars().all() == [ASHA_NEW]


def test_a_privacy_request_naming_only_her_old_number_after_the_window_touches_nothing_of_hers(db_url, scenario, world):
    """Forty days after the change, customers/redact names only the number she left (the customer it names is
    not hers): her contact, her order and her new number stay. A data request by her own customer id still
    finds her, on her new number."""
    from tests.scenarios.payloads import customer_id_for

    sc = scenario(db_url, "shopify", journeys=COD)
    SHOPIFY.place(sc, SHOPIFY.order(1, ASHA, sc.now))
    sc.work()
    changes_number(sc, ASHA, ASHA_NEW)
    sc.later(days=40, step=timedelta(days=5))
    sc.shopify("customers/redact", {"shop_id": 954889, "shop_domain": "shop-a.myshopify.com",
                                    "customer": {"id": 777000111, "email": None, "phone": ASHA}, "orders_to_redact": []})
    sc.later(minutes=5)
    her = sc.contact(ASHA_NEW)
    assert her["contact"]["phone"] == ASHA_NEW and [o["id"] for o in her["orders"]] == [str(SHOPIFY.order_id(1))]

    sc.shopify("customers/data_request", {"shop_id": 954889, "shop_domain": "shop-a.myshopify.com",
                                          "customer": {"id": customer_id_for(ASHA), "email": None, "phone": None},
                                          "orders_requested": [], "data_request": {"id": 9998}})
    sc.later(minutes=5)
    [request] = [i for i in sc.api("/compliance")["items"] if i["kind"] == "customer_data_request"]
    export = sc.api(f"/compliance/{request['id']}")["export"]
    assert [c.get("phone_e164") for c in export["contacts"] if c.get("phone_e164")] == [ASHA_NEW]
    assert [o["external_id"] for o in export["orders"]] == [str(SHOPIFY.order_id(1))]


# ---- a join: the contact of her new number becomes hers in full ----------------------------------

def test_after_a_join_she_is_one_customer_in_the_report_and_her_order_and_questions_are_on_her_new_number(db_url, scenario, world):
    """She ordered with her new number before Meta's notice came (prepaid: a second contact). After the join the
    week's report counts one new customer, not two; both orders, the question she was sent and her consent
    history are on her new number's contact; and in the same worker round as the notice, her unquoted answer
    from the new number answers her COD question (the batch reads nothing stale)."""
    sc = scenario(db_url, "shopify", journeys=COD)
    SHOPIFY.place(sc, SHOPIFY.order(4, ASHA, sc.now))
    sc.work()
    sc.marketing_preference(ASHA, "stop")
    SHOPIFY.place(sc, SHOPIFY.order(5, ASHA_NEW, sc.now, cod=False))
    sc.later(minutes=5)
    assert sc.report()["stages"]["entry"]["metrics"]["new_contacts"] == 2  # two people, as far as anyone knew

    changes_number(sc, ASHA, ASHA_NEW)
    sc.say(ASHA_NEW, "I will pay cash when it comes")  # quoting nothing; processed with the notice
    sc.work()

    assert sc.report()["stages"]["entry"]["metrics"]["new_contacts"] == 1
    cases = [(c["journey"], c["subject"]) for c in sc.handoffs("open") if "I will pay cash when it comes" in c["reason"]]
    assert cases == [("cod_confirmation", f"order:{SHOPIFY.order_id(4)}")]
    her = sc.contact(ASHA_NEW)
    assert sorted(o["id"] for o in her["orders"]) == [str(SHOPIFY.order_id(4)), str(SHOPIFY.order_id(5))]
    assert her["consent"]["marketing"]["state"] == "revoked"
    with sc.runtime.db.engine.connect() as conn:
        [contact_id] = conn.execute(select(m.Contact.id).where(m.Contact.phone_e164 == ASHA_NEW)).scalars().all()
        owners = {table.__tablename__: set(conn.execute(select(table.contact_id)).scalars())
                  for table in (m.Order, m.OutboxMessage, m.Message, m.ConsentChange, m.JourneyRun)}
    assert owners == {name: {contact_id} for name in owners}  # everything of hers is on one contact
