"""Hand-offs and stages over HTTP: who gets which conversation, with what context."""

from __future__ import annotations

import asyncio
import json
from datetime import datetime, timedelta, timezone

import pytest

from connector.errors import ConfigError
import respx
from sqlalchemy import select

from connector.config import parse_settings
from connector.storage import models as m
from tests.conftest import FIXTURES, PHONE_ID_A, SECRETS, settings_dict
from tests.helpers import dumps, load_json, meta_signature, running_app, shopify_headers

ADMIN = {"Authorization": f"Bearer {SECRETS['admin']}"}
HOOK = "https://hooks.slack.example/services/T000/B000/XXXX"
T0 = datetime(2026, 11, 20, 6, 30, tzinfo=timezone.utc)


def settings(db_url: str, **store):
    raw = settings_dict(db_url)
    raw["stores"][0].update(
        journeys={"cod_confirmation": {}, "delivery": {}},
        stages={"post_purchase": {"owner": "Delivery desk", "notify_url": HOOK}, "qualification": {"owner": "COD team"}},
        policy={"quiet_hours": ""},
        **store,
    )
    return parse_settings(raw, environ={})


def post_shopify(client, payload, topic):
    body = dumps(payload)
    return client.post("/webhooks/shopify", content=body, headers=shopify_headers(body, SECRETS["shop_a"], "shop-a.myshopify.com", topic))


def post_wa(client, value):
    env = {"object": "whatsapp_business_account", "entry": [{"id": "1", "changes": [{"field": "messages", "value": {
        "messaging_product": "whatsapp", "metadata": {"display_phone_number": "1", "phone_number_id": PHONE_ID_A},
        "contacts": [{"profile": {"name": "Asha"}, "wa_id": "919876543210"}], **value}}]}]}
    body = json.dumps(env).encode()
    return client.post("/webhooks/whatsapp", content=body, headers={"X-Hub-Signature-256": meta_signature(body, SECRETS["wa_app"])})


def order(**kw) -> dict:
    o = load_json(FIXTURES / "shopify" / "orders_create.sample.json")
    o.update({"financial_status": "pending", "payment_gateway_names": ["Cash on Delivery (COD)"], "cancelled_at": None, "test": False,
              "created_at": "2026-11-20T12:00:00+05:30", "updated_at": "2026-11-20T12:00:00+05:30", "phone": "+91 98765 43210", **kw})
    return o


def contact_stage(runtime) -> str:
    with runtime.db.engine.connect() as conn:
        return conn.execute(select(m.Contact.stage)).scalar_one()


def test_failed_delivery_hands_off_to_the_stage_owner_and_notifies_them(db_url):
    with running_app(settings(db_url)) as (client, runtime):
        post_shopify(client, order(financial_status="paid", payment_gateway_names=["razorpay"]), "orders/create")
        runtime.processor.drain()
        stage_after_order = contact_stage(runtime)
        fulfilment = load_json(FIXTURES / "shopify" / "fulfillments_update.sample.json")
        fulfilment.update(order_id=820982911946154508, shipment_status="attempted_delivery", updated_at="2026-11-22T10:00:00Z")
        post_shopify(client, fulfilment, "fulfillments/update")
        runtime.processor.drain()
        with respx.mock(assert_all_called=True) as slack:
            hook = slack.post(HOOK).respond(200, text="ok")
            asyncio.run(runtime.notifier.run_once())
        opened = client.get("/api/stores/shop-a/handoffs", params={"status": "open"}, headers=ADMIN).json()["items"]
        runtime.clock = lambda: datetime(2026, 11, 22, 13, 30, tzinfo=timezone.utc)  # the connector's clock, not the wall's
        closed = client.post(f"/api/stores/shop-a/handoffs/{opened[0]['id']}/close", headers=ADMIN,
                             json={"by": "Ravi", "resolution": "rescheduled for Friday"})
        done = client.get("/api/stores/shop-a/handoffs", params={"status": "closed"}, headers=ADMIN).json()["items"]
        again = client.post(f"/api/stores/shop-a/handoffs/{opened[0]['id']}/close", headers=ADMIN, json={"by": "Ravi"})
        other_store = client.get("/api/stores/shop-b/handoffs", headers=ADMIN).json()["items"]
        still_open = client.get("/api/stores/shop-a/handoffs", params={"status": "open"}, headers=ADMIN).json()["items"]
        no_token = client.get("/api/stores/shop-a/handoffs")
    assert stage_after_order == "post_purchase"
    [h] = opened
    assert h["owner"] == "Delivery desk" and h["stage"] == "post_purchase" and h["journey"] == "delivery"
    assert "delivery failed (attempted_delivery)" in h["reason"]
    assert h["context"]["phone"] == "+919876543210" and h["context"]["last_order"]["name"] == "#9999"
    assert {"journey": "delivery", "subject": "order:820982911946154508", "status": "handoff"} in h["context"]["active_journeys"]
    text = json.loads(hook.calls.last.request.content)["text"]
    assert "hand-off" in text and "Delivery desk" in text and "#9999" in text
    assert closed.status_code == 200 and again.status_code == 404
    assert datetime.fromisoformat(done[0]["closed_at"]) == datetime(2026, 11, 22, 13, 30, tzinfo=timezone.utc)
    assert (done[0]["closed_by"], done[0]["resolution"]) == ("Ravi", "rescheduled for Friday")
    assert other_store == [] and still_open == [] and no_token.status_code == 401


def test_free_text_reply_to_a_journey_message_goes_to_a_person_with_that_journey(db_url):
    raw_templates = [{"step": "cod_confirmation.ask", "name": "cod_v1", "category": "utility", "body_text": "Confirm {{1}}?", "body": ["order.name"],
                      "buttons": [{"type": "quick_reply", "text": "Yes", "payload": "cod_confirm"}]}]
    with running_app(settings(db_url, templates=raw_templates)) as (client, runtime):
        post_shopify(client, order(), "orders/create")
        runtime.processor.drain()
        stage_cod = contact_stage(runtime)
        with runtime.db.engine.begin() as conn:  # the ask went out (as the dispatcher records it)
            conn.execute(m.OutboxMessage.__table__.update().values(status="sent", wamid="wamid.ASK"))
        post_wa(client, {"messages": [{"from": "919876543210", "id": "wamid.R1", "timestamp": "1795158000", "type": "text",
                                       "text": {"body": "Can you deliver after 6 pm?"}, "context": {"from": "1", "id": "wamid.ASK"}}]})
        post_wa(client, {"messages": [{"from": "919876543210", "id": "wamid.R2", "timestamp": "1795158060", "type": "text",
                                       "text": {"body": "STOP"}}]})
        # a button tap without a quoted message still reaches the run, by phone
        post_wa(client, {"messages": [{"from": "919876543210", "id": "wamid.R3", "timestamp": "1795158120", "type": "button",
                                       "button": {"payload": "cod_confirm", "text": "Yes"}}]})
        runtime.processor.drain()
        items = client.get("/api/stores/shop-a/handoffs", headers=ADMIN).json()["items"]
        with runtime.db.engine.connect() as conn:
            run = conn.execute(select(m.JourneyRun)).one()
        stage_after = contact_stage(runtime)
    assert stage_cod == "qualification"
    [h] = items  # STOP is a keyword, not a conversation
    assert h["owner"] == "COD team" and h["journey"] == "cod_confirmation" and h["subject"] == "order:820982911946154508"
    assert "Can you deliver after 6 pm?" in h["reason"]
    assert run.state["choice"] == "confirmed" and stage_after == "post_purchase"


def test_high_value_orders_open_a_hand_off(db_url):
    with running_app(settings(db_url, handoff={"order_value_over": 400})) as (client, runtime):
        post_shopify(client, order(), "orders/create")  # 414.95
        runtime.processor.drain()
        items = client.get("/api/stores/shop-a/handoffs", headers=ADMIN).json()["items"]
    assert [i["reason"] for i in items] == ["high-value order #9999 (USD 414.95)"]


def test_the_high_value_threshold_is_in_one_currency_and_a_table_names_one_per_currency(db_url):
    """A store in USD with a multi-currency checkout: 400 is dollars, so an INR 414.95 order (about 5 dollars)
    is no high-value order; a table names a threshold per currency, and a currency it does not name is not
    compared (no exchange rates)."""
    reasons = []
    for n, handoff in enumerate(({"order_value_over": 400}, {"order_value_over": {"usd": 400, "INR": 30000}},
                                 {"order_value_over": {"EUR": 100}})):
        with running_app(settings(db_url, currency="USD", handoff=handoff)) as (client, runtime):  # one database: new orders each time
            post_shopify(client, order(id=8880001 + 10 * n, name=f"#88{n}1"), "orders/create")  # USD 414.95
            post_shopify(client, order(id=8880002 + 10 * n, name=f"#88{n}2", currency="INR", presentment_currency="INR"), "orders/create")
            runtime.processor.drain()
            reasons.append(sorted(i["reason"] for i in client.get("/api/stores/shop-a/handoffs", headers=ADMIN).json()["items"]
                                  if i["subject"] in (f"order:{8880001 + 10 * n}", f"order:{8880002 + 10 * n}")))
    assert reasons == [["high-value order #8801 (USD 414.95)"], ["high-value order #8811 (USD 414.95)"], []]
    with pytest.raises(ConfigError, match="'rupees' is not a currency code"):
        settings(db_url, handoff={"order_value_over": {"rupees": 100}})


def test_hand_offs_are_listed_a_page_at_a_time_so_none_is_out_of_reach(db_url):
    """Five high-value orders are five open cases; pages of two, newest first, reach all five once."""
    with running_app(settings(db_url, handoff={"order_value_over": 400})) as (client, runtime):
        for n in range(5):
            post_shopify(client, order(id=7770000 + n, name=f"#77{n}"), "orders/create")
        runtime.processor.drain()
        pages, before = [], None
        for _ in range(5):  # bounded: an API that ignored before_id would repeat the first page for ever
            params = {"status": "open", "limit": "2", **({"before_id": str(before)} if before else {})}
            items = client.get("/api/stores/shop-a/handoffs", params=params, headers=ADMIN).json()["items"]
            if not items:
                break
            pages.append([i["subject"] for i in items])
            before = items[-1]["id"]
        bad = client.get("/api/stores/shop-a/handoffs", params={"limit": "ten"}, headers=ADMIN)
    assert pages == [["order:7770004", "order:7770003"], ["order:7770002", "order:7770001"], ["order:7770000"]]
    assert bad.status_code == 400 and "limit and before_id must be integers" in bad.text


# ---- answers that belong to a person: a COD cancel with a reason, a failed delivery's choice ----

def store_settings(db_url: str, journeys: dict, templates: list[dict]):
    raw = settings_dict(db_url)
    raw["stores"][0].update(journeys=journeys, templates=templates, policy={"quiet_hours": ""},
                            stages={"post_purchase": {"owner": "Delivery desk", "notify_url": HOOK}, "qualification": {"owner": "COD team"}})
    return parse_settings(raw, environ={})


def dispatch(runtime, settings, **kw):
    """Send what is due (dry run), so each message has the wamid a customer's reply quotes."""
    from connector.outbox.dispatcher import Dispatcher
    from connector.outbox.senders import DryRunSender

    asyncio.run(Dispatcher(runtime.db, settings, runtime.store_ids, DryRunSender(), **kw).drain())


SHIPPED_TEMPLATE = {"step": "delivery.shipped", "name": "shipped_v1", "category": "utility", "body_text": "Order {{1}} is on its way",
                    "body": ["order.name"]}


def wamid_of(runtime, journey: str, step: str) -> str:
    with runtime.db.engine.connect() as conn:
        return conn.execute(select(m.OutboxMessage.wamid).where(m.OutboxMessage.journey == journey, m.OutboxMessage.step == step)).scalar_one()


def tap(client, payload: str, msg_id: str, quoted: str) -> None:
    post_wa(client, {"messages": [{"from": "919876543210", "id": msg_id, "timestamp": "1795158000", "type": "button",
                                   "button": {"payload": payload, "text": payload}, "context": {"from": "1", "id": quoted}}]})


def quick_replies(*payloads: str) -> list[dict]:
    return [{"type": "quick_reply", "text": p[:20], "payload": p} for p in payloads]


COD_TEMPLATES = [
    {"step": "cod_confirmation.ask", "name": "cod_v1", "category": "utility", "body_text": "Confirm {{1}}?", "body": ["order.name"],
     "buttons": quick_replies("cod_confirm", "cod_cancel")},
    {"step": "cod_confirmation.cancel_reason", "name": "cod_why_v1", "category": "utility",
     "body_text": "Order {{1}} is cancelled. Could you tell us why?", "body": ["order.name"]},
]


def test_a_cod_cancel_with_a_reason_in_the_next_message_opens_one_hand_off_for_the_cod_team(db_url):
    settings = store_settings(db_url, {"cod_confirmation": {"cancel_reason_minutes": 60}}, COD_TEMPLATES)
    with running_app(settings) as (client, runtime):
        post_shopify(client, order(), "orders/create")
        runtime.processor.drain()
        dispatch(runtime, settings)
        ask = wamid_of(runtime, "cod_confirmation", "ask")
        tap(client, "cod_cancel", "wamid.T1", ask)
        runtime.processor.drain()
        # not quoting anything, as people type: the run that asked takes it, the general reply rule stands back
        post_wa(client, {"messages": [{"from": "919876543210", "id": "wamid.R1", "timestamp": "1795158060", "type": "text",
                                       "text": {"body": "Ordered twice by mistake, sorry"}}]})
        runtime.processor.drain()
        tap(client, "cod_confirm", "wamid.T2", ask)  # changes their mind: the choice is locked, the COD team is told in the case
        post_wa(client, {"messages": [{"from": "919876543210", "id": "wamid.R2", "timestamp": "1795158120", "type": "text",
                                       "text": {"body": "Can I order again later?"}}]})  # the run waits on that person: the same case
        runtime.processor.drain()
        items = client.get("/api/stores/shop-a/handoffs", headers=ADMIN).json()["items"]
        with runtime.db.engine.connect() as conn:
            run = conn.execute(select(m.JourneyRun)).one()
            queued = [(o.channel, o.step) for o in conn.execute(select(m.OutboxMessage).order_by(m.OutboxMessage.id))]
    [reason] = items
    assert (reason["owner"], reason["stage"], reason["journey"], reason["subject"]) == (
        "COD team", "qualification", "cod_confirmation", "order:820982911946154508")
    assert reason["reason"] == "customer cancelled COD order #9999: Ordered twice by mistake, sorry"
    updates = [u["reason"] for u in reason["context"]["updates"]]
    assert updates[0] == "customer tapped Confirm on COD order #9999 after cancelling it" and "Can I order again later?" in updates[1]
    assert (run.status, run.state["outcome"], run.state["choice"], run.state["cancel_reason"]) == (
        "handoff", "cancelled", "cancelled", "Ordered twice by mistake, sorry")
    assert queued == [("whatsapp", "ask"), ("store", "cancel"), ("whatsapp", "cancel_reason")]  # cancelled once, as configured


CANCEL_PRICE = {"cancel_reasons": {"cod_cancel_price": "found it cheaper"}}
CANCEL_PRICE_TEMPLATES = [{**COD_TEMPLATES[0], "buttons": quick_replies("cod_confirm", "cod_cancel_price")}]


def cod_order_after_a_delivered_one(client, runtime, settings) -> str:
    """Asha's paid order #5550 is delivered (she is in retention now) while her new COD order #9999 waits for its
    answer: the ask's wamid."""
    post_shopify(client, order(id=5550001, name="#5550", financial_status="paid", payment_gateway_names=["razorpay"]), "orders/create")
    post_shopify(client, order(), "orders/create")
    runtime.processor.drain()
    dispatch(runtime, settings)
    fulfilment = load_json(FIXTURES / "shopify" / "fulfillments_update.sample.json")
    fulfilment.update(order_id=5550001, shipment_status="delivered", updated_at="2026-11-21T10:00:00Z")
    post_shopify(client, fulfilment, "fulfillments/update")
    runtime.processor.drain()
    return wamid_of(runtime, "cod_confirmation", "ask")


def test_a_cod_cancel_reason_goes_to_the_cod_team_even_after_another_order_was_delivered(db_url):
    """Asha's earlier order is delivered (she moves to retention) while her new COD order waits for its answer:
    her cancel with a reason is the COD team's case, and a reply quoting the COD ask too, not the retention owner's."""
    settings = store_settings(db_url, {"cod_confirmation": CANCEL_PRICE, "delivery": {}}, CANCEL_PRICE_TEMPLATES)
    with running_app(settings) as (client, runtime):
        ask = cod_order_after_a_delivered_one(client, runtime, settings)
        stage_now = contact_stage(runtime)
        post_wa(client, {"messages": [{"from": "919876543210", "id": "wamid.R0", "timestamp": "1795158000", "type": "text",
                                       "text": {"body": "Is this the same as my last order?"}, "context": {"from": "1", "id": ask}}]})
        tap(client, "cod_cancel_price", "wamid.T1", ask)
        runtime.processor.drain()
        items = sorted(client.get("/api/stores/shop-a/handoffs", headers=ADMIN).json()["items"], key=lambda h: h["id"])
    assert stage_now == "retention"
    assert [(h["owner"], h["stage"], h["journey"]) for h in items] == [("COD team", "qualification", "cod_confirmation")]
    assert [u["reason"] for u in items[0]["context"]["updates"]] == ["customer cancelled COD order #9999: found it cheaper"]


def test_a_journeys_case_goes_to_the_customers_stage_owner_when_the_journeys_stage_has_none(db_url):
    """Only retention has an owner here: a COD cancel reason from a customer in retention still reaches a person."""
    raw = settings_dict(db_url)
    raw["stores"][0].update(journeys={"cod_confirmation": CANCEL_PRICE, "delivery": {}}, templates=CANCEL_PRICE_TEMPLATES,
                            policy={"quiet_hours": ""}, stages={"retention": {"owner": "Care team"}})
    settings = parse_settings(raw, environ={})
    with running_app(settings) as (client, runtime):
        tap(client, "cod_cancel_price", "wamid.T1", cod_order_after_a_delivered_one(client, runtime, settings))
        runtime.processor.drain()
        [h] = client.get("/api/stores/shop-a/handoffs", headers=ADMIN).json()["items"]
    assert (h["owner"], h["stage"], h["journey"]) == ("Care team", "retention", "cod_confirmation")


def delivered_order(client, runtime, order_id: int = 5550001, name: str = "#5550") -> None:
    """A prepaid order whose one parcel has been delivered."""
    post_shopify(client, order(id=order_id, name=name, financial_status="paid", payment_gateway_names=["razorpay"]), "orders/create")
    runtime.processor.drain()
    fulfilment = load_json(FIXTURES / "shopify" / "fulfillments_update.sample.json")
    fulfilment.update(order_id=order_id, shipment_status="delivered", updated_at="2026-11-21T10:00:00Z")
    post_shopify(client, fulfilment, "fulfillments/update")
    runtime.processor.drain()


def test_a_reply_after_a_delivered_order_is_not_filed_under_that_orders_delivery(db_url):
    """Order A was delivered, order B is newly confirmed: an unquoted "where is my order?" is about B, or at least
    not about A's delivery, whose story is over, so it does not land in a delivery case for A."""
    settings = store_settings(db_url, {"order_confirmation": {}, "delivery": {}}, [])
    with running_app(settings) as (client, runtime):
        delivered_order(client, runtime)
        post_shopify(client, order(financial_status="paid", payment_gateway_names=["razorpay"]), "orders/create")  # order B, #9999
        runtime.processor.drain()
        post_wa(client, {"messages": [{"from": "919876543210", "id": "wamid.R9", "timestamp": "1795158000", "type": "text",
                                       "text": {"body": "Where is my order?"}}]})
        runtime.processor.drain()
        [h] = client.get("/api/stores/shop-a/handoffs", headers=ADMIN).json()["items"]
        with runtime.db.engine.connect() as conn:
            delivery = conn.execute(select(m.JourneyRun).where(m.JourneyRun.journey == "delivery")).one()
    assert (h["journey"], h["subject"]) == (None, None) and "Where is my order?" in h["reason"]
    assert (delivery.status, delivery.state["outcome"]) == ("finished", "delivered")


def test_a_second_parcel_that_fails_after_the_first_was_delivered_is_still_asked_about(db_url):
    """The order's run ended with its first parcel delivered; a second parcel of the same order fails
    later: the customer is asked and the delivery desk gets the case, as for any failed delivery."""
    settings = store_settings(db_url, {"delivery": {}}, [])
    with running_app(settings) as (client, runtime):
        delivered_order(client, runtime)
        second = load_json(FIXTURES / "shopify" / "fulfillments_update.sample.json")
        second.update(id=second["id"] + 1, order_id=5550001, shipment_status="attempted_delivery", updated_at="2026-11-23T10:00:00Z")
        post_shopify(client, second, "fulfillments/update")
        runtime.processor.drain()
        [h] = client.get("/api/stores/shop-a/handoffs", headers=ADMIN).json()["items"]
        with runtime.db.engine.connect() as conn:
            asked = conn.execute(select(m.OutboxMessage.idempotency_key).where(m.OutboxMessage.journey == "delivery", m.OutboxMessage.channel == "whatsapp")).scalars().all()
    assert sorted(asked) == ["delivery:delivered:order:5550001", "delivery:failed:order:5550001"]
    assert (h["journey"], h["subject"], h["owner"]) == ("delivery", "order:5550001", "Delivery desk")
    assert "delivery failed (attempted_delivery)" in h["reason"]


@pytest.mark.parametrize("days_later, filed_under", [(3, ("delivery", "order:5550001")), (10, (None, None))])
def test_an_unquoted_reply_continues_a_run_that_moved_lately_not_one_left_open_for_weeks(db_url, days_later, filed_under):
    """The parcel was reported shipped and never delivered, so its delivery run stays open. "Hello?"
    three days on is about that parcel; ten days on (past handoff.reply_match_days) it is a case of its own."""
    settings = store_settings(db_url, {"delivery": {}}, [SHIPPED_TEMPLATE])
    shipped_at = datetime(2026, 11, 21, 10, 0, tzinfo=timezone.utc)
    with running_app(settings) as (client, runtime):
        runtime.processor.clock = lambda: shipped_at
        post_shopify(client, order(id=5550001, name="#5550", financial_status="paid", payment_gateway_names=["razorpay"]), "orders/create")
        fulfilment = load_json(FIXTURES / "shopify" / "fulfillments_update.sample.json")
        fulfilment.update(order_id=5550001, shipment_status="in_transit", updated_at="2026-11-21T10:00:00Z")
        post_shopify(client, fulfilment, "fulfillments/update")
        runtime.processor.drain()
        dispatch(runtime, settings, clock=lambda: shipped_at)  # "on its way" reaches her
        said = shipped_at + timedelta(days=days_later)
        runtime.processor.clock = lambda: said
        post_wa(client, {"messages": [{"from": "919876543210", "id": "wamid.R9", "timestamp": str(int(said.timestamp())), "type": "text",
                                       "text": {"body": "Hello?"}}]})
        runtime.processor.drain()
        [h] = client.get("/api/stores/shop-a/handoffs", headers=ADMIN).json()["items"]
    assert (h["journey"], h["subject"]) == filed_under and "Hello?" in h["reason"]


def test_a_cancel_reason_button_cancels_and_hands_off_in_one_tap(db_url):
    templates = [{**COD_TEMPLATES[0], "buttons": quick_replies("cod_confirm", "cod_cancel_price")}]
    settings = store_settings(db_url, {"cod_confirmation": {"cancel_action": "tag", "cancel_reasons": {"cod_cancel_price": "found it cheaper"}}},
                              templates)
    with running_app(settings) as (client, runtime):
        post_shopify(client, order(), "orders/create")
        runtime.processor.drain()
        dispatch(runtime, settings)
        ask = wamid_of(runtime, "cod_confirmation", "ask")
        for n in (1, 2):  # the same tap delivered twice
            tap(client, "cod_cancel_price", f"wamid.T{n}", ask)
        runtime.processor.drain()
        items = client.get("/api/stores/shop-a/handoffs", headers=ADMIN).json()["items"]
        with runtime.db.engine.connect() as conn:
            writes = [(o.step, o.payload["args"]) for o in conn.execute(select(m.OutboxMessage).where(m.OutboxMessage.channel == "store"))]
    [h] = items
    assert h["owner"] == "COD team" and h["reason"] == "customer cancelled COD order #9999: found it cheaper"
    assert writes == [("cancel_tag", {"tags": ["cod-cancelled-by-customer"]})]  # cancel_action = "tag", once


NDR_TEMPLATES = [
    {"step": "delivery.failed", "name": "ndr_v1", "category": "utility", "body_text": "We could not deliver {{1}}. What should we do?",
     "body": ["order.name"], "buttons": quick_replies("ndr_reschedule", "ndr_update_address", "ndr_cancel")},
    {"step": "delivery.ndr_reschedule", "name": "ndr_ok_v1", "category": "utility", "body_text": "Thanks, we will rearrange {{1}}.",
     "body": ["order.name"]},
]


def failed_delivery(client, runtime, settings) -> str:
    """A paid order whose delivery failed, its failed-delivery message sent: that message's wamid."""
    post_shopify(client, order(financial_status="paid", payment_gateway_names=["razorpay"]), "orders/create")
    fulfilment = load_json(FIXTURES / "shopify" / "fulfillments_update.sample.json")
    fulfilment.update(order_id=820982911946154508, shipment_status="attempted_delivery", updated_at="2026-11-22T10:00:00Z")
    post_shopify(client, fulfilment, "fulfillments/update")
    runtime.processor.drain()
    dispatch(runtime, settings)
    return wamid_of(runtime, "delivery", "failed")


def test_answers_to_a_failed_delivery_are_kept_noted_and_added_to_the_open_hand_off(db_url):
    settings = store_settings(db_url, {"delivery": {"acknowledge_answers": True}}, NDR_TEMPLATES)
    with running_app(settings) as (client, runtime):
        ndr = failed_delivery(client, runtime, settings)
        tap(client, "ndr_reschedule", "wamid.N1", ndr)
        tap(client, "ndr_reschedule", "wamid.N2", ndr)  # tapped again: already recorded
        tap(client, "ndr_cancel", "wamid.N3", ndr)
        runtime.processor.drain()
        with respx.mock(assert_all_called=True) as slack:
            hook = slack.post(HOOK).respond(200, text="ok")
            while asyncio.run(runtime.notifier.run_once()):  # one notification per customer at a time, in order
                pass
        [h] = client.get("/api/stores/shop-a/handoffs", params={"status": "open"}, headers=ADMIN).json()["items"]
        with runtime.db.engine.connect() as conn:
            run = conn.execute(select(m.JourneyRun)).one()
            store_rows = [(o.step, o.payload["action"], o.payload["args"]) for o in
                          conn.execute(select(m.OutboxMessage).where(m.OutboxMessage.channel == "store"))]
            replies = [o.step for o in conn.execute(select(m.OutboxMessage).where(m.OutboxMessage.channel == "whatsapp").order_by(m.OutboxMessage.id))]
    assert (run.status, run.state["ndr_choice"], run.state["ndr_answers"]) == ("handoff", "cancel", ["reschedule", "cancel"])
    assert h["owner"] == "Delivery desk" and "delivery failed" in h["reason"]
    assert [u["reason"] for u in h["context"]["updates"]] == [
        "customer asked to reschedule the failed delivery of #9999",
        "customer asked to cancel #9999 after the failed delivery: it has shipped, so a person decides (no automatic cancel)"]
    assert store_rows == [("ndr_reschedule", "add_note", {"note": "Failed delivery: the customer asked on WhatsApp to reschedule"})]
    assert replies == ["failed", "ndr_reschedule", "ndr_cancel"]  # acknowledged (ndr_cancel has no template: recorded as skipped)
    texts = [json.loads(c.request.content)["text"] for c in hook.calls]
    assert len(texts) == 3 and all("hand-off" in t for t in texts)  # opened, then told of each answer
    assert "Update: customer asked to cancel #9999" in texts[-1]


def test_a_second_failed_delivery_asks_again_and_takes_a_second_reschedule(db_url):
    """The courier tries again the next day and fails again: the customer is asked again, her new answer is noted
    for the courier desk, and the open hand-off hears of both; a repeat of the same failure asks nothing."""
    settings = store_settings(db_url, {"delivery": {}}, NDR_TEMPLATES)
    with running_app(settings) as (client, runtime):
        first = failed_delivery(client, runtime, settings)
        tap(client, "ndr_reschedule", "wamid.N1", first)
        fulfilment = load_json(FIXTURES / "shopify" / "fulfillments_update.sample.json")
        for status, at in (("out_for_delivery", "2026-11-23T08:00:00Z"), ("attempted_delivery", "2026-11-23T12:00:00Z"),
                           ("attempted_delivery", "2026-11-23T12:00:00Z")):  # Shopify retries the last delivery
            fulfilment.update(order_id=820982911946154508, shipment_status=status, updated_at=at)
            post_shopify(client, fulfilment, "fulfillments/update")
            runtime.processor.drain()
        dispatch(runtime, settings)
        with runtime.db.engine.connect() as conn:
            asks = conn.execute(select(m.OutboxMessage.idempotency_key, m.OutboxMessage.status, m.OutboxMessage.wamid)
                                .where(m.OutboxMessage.step == "failed").order_by(m.OutboxMessage.id)).all()
        tap(client, "ndr_reschedule", "wamid.N2", asks[-1].wamid)  # her answer to the second message
        runtime.processor.drain()
        [h] = client.get("/api/stores/shop-a/handoffs", params={"status": "open"}, headers=ADMIN).json()["items"]
        with runtime.db.engine.connect() as conn:
            run = conn.execute(select(m.JourneyRun)).one()
            notes = [o.payload["args"]["note"] for o in conn.execute(
                select(m.OutboxMessage).where(m.OutboxMessage.channel == "store").order_by(m.OutboxMessage.id))]
    assert [(a.idempotency_key, a.status) for a in asks] == [
        ("delivery:failed:order:820982911946154508", "dry_run"), ("delivery:failed#2:order:820982911946154508", "dry_run")]
    assert (run.state["failed_attempts"], run.state["ndr_answers"]) == (2, ["reschedule"])
    assert notes == ["Failed delivery: the customer asked on WhatsApp to reschedule"] * 2
    assert [u["reason"] for u in h["context"]["updates"]] == [
        "customer asked to reschedule the failed delivery of #9999",
        "delivery failed again (attempt 2, attempted_delivery) for #9999 (UPS 1z827wk74630); call the customer to rearrange",
        "customer asked to reschedule the failed delivery of #9999"]


def test_an_answer_that_comes_before_the_second_ask_went_out_withdraws_that_ask(db_url):
    """The courier failed a second time and the second ask waits to go out; meanwhile the customer taps
    Reschedule on the first one. That answers the second failure (noted for the desk), so the second
    ask (its own outbox key, delivery:failed#2) is not sent to ask her again."""
    settings = store_settings(db_url, {"delivery": {}}, NDR_TEMPLATES)
    with running_app(settings) as (client, runtime):
        first = failed_delivery(client, runtime, settings)
        fulfilment = load_json(FIXTURES / "shopify" / "fulfillments_update.sample.json")
        for status, at in (("out_for_delivery", "2026-11-23T08:00:00Z"), ("attempted_delivery", "2026-11-23T12:00:00Z")):
            fulfilment.update(order_id=820982911946154508, shipment_status=status, updated_at=at)
            post_shopify(client, fulfilment, "fulfillments/update")
        runtime.processor.drain()
        tap(client, "ndr_reschedule", "wamid.N1", first)
        runtime.processor.drain()
        dispatch(runtime, settings)
        with runtime.db.engine.connect() as conn:
            asks = conn.execute(select(m.OutboxMessage.idempotency_key, m.OutboxMessage.status, m.OutboxMessage.skip_reason)
                                .where(m.OutboxMessage.step == "failed").order_by(m.OutboxMessage.id)).all()
            notes = conn.execute(select(m.OutboxMessage.idempotency_key).where(m.OutboxMessage.channel == "store",
                                                                               m.OutboxMessage.journey == "delivery")).scalars().all()
    assert [tuple(a) for a in asks] == [("delivery:failed:order:820982911946154508", "dry_run", None),
                                        ("delivery:failed#2:order:820982911946154508", "skipped", "journey_ended")]
    assert notes == ["delivery:writeback:ndr_reschedule_2:order:820982911946154508"]


def test_a_reply_after_the_rearranged_parcel_arrived_joins_the_open_delivery_case(db_url):
    """The delivery failed, the desk's case is open; the parcel then arrives. "Got it but the box is damaged",
    quoting nothing, belongs in that open case, not in a new one for another desk."""
    settings = store_settings(db_url, {"delivery": {}}, NDR_TEMPLATES)
    with running_app(settings) as (client, runtime):
        failed_delivery(client, runtime, settings)
        fulfilment = load_json(FIXTURES / "shopify" / "fulfillments_update.sample.json")
        fulfilment.update(order_id=820982911946154508, shipment_status="delivered", updated_at="2026-11-23T10:00:00Z")
        post_shopify(client, fulfilment, "fulfillments/update")
        runtime.processor.drain()
        post_wa(client, {"messages": [{"from": "919876543210", "id": "wamid.D1", "timestamp": "1795158000", "type": "text",
                                       "text": {"body": "Got it but the box is damaged"}}]})
        runtime.processor.drain()
        cases = client.get("/api/stores/shop-a/handoffs", params={"status": "open"}, headers=ADMIN).json()["items"]
    [case] = cases
    assert (case["journey"], case["owner"]) == ("delivery", "Delivery desk")
    assert "Got it but the box is damaged" in case["context"]["updates"][-1]["reason"]


def test_a_notification_row_never_posts_another_stores_hand_off(db_url):
    """A notification names its hand-off by id: the notifier reads it within the row's own
    store, so a row of shop-b naming shop-a's hand-off (a hand-edited or corrupted row) posts
    nothing and fails with a reason; shop-a's customer details never reach shop-b's channel."""
    raw = settings_dict(db_url)
    for store in raw["stores"][:2]:
        store.update(journeys={"cod_confirmation": {}, "delivery": {}}, policy={"quiet_hours": ""},
                     stages={"post_purchase": {"owner": "Delivery desk", "notify_url": HOOK}})
    with running_app(parse_settings(raw, environ={})) as (client, runtime):
        post_shopify(client, order(financial_status="paid", payment_gateway_names=["razorpay"]), "orders/create")
        runtime.processor.drain()
        fulfilment = load_json(FIXTURES / "shopify" / "fulfillments_update.sample.json")
        fulfilment.update(order_id=820982911946154508, shipment_status="attempted_delivery", updated_at="2026-11-22T10:00:00Z")
        post_shopify(client, fulfilment, "fulfillments/update")
        runtime.processor.drain()
        with runtime.db.engine.begin() as conn:  # the notification row now claims to be shop-b's
            conn.execute(m.OutboxMessage.__table__.update().where(m.OutboxMessage.channel == "notify")
                         .values(store_id=runtime.store_ids["shop-b"]))
        with respx.mock(assert_all_called=False) as slack:
            hook = slack.post(HOOK).respond(200, text="ok")
            asyncio.run(runtime.notifier.run_once())
        with runtime.db.engine.connect() as conn:
            row = conn.execute(select(m.OutboxMessage.status, m.OutboxMessage.last_error).where(m.OutboxMessage.channel == "notify")).one()
    assert not hook.called
    assert row.status == "failed" and "hand-off not found" in (row.last_error or "")


def test_an_order_heard_placed_twice_tells_the_owner_of_its_high_value_once(db_url):
    """orders/updated before orders/create with the same body: the order is news at the first and
    heard again at the second; its high-value case opens once and its owner is told once."""
    with running_app(settings(db_url, handoff={"order_value_over": 400})) as (client, runtime):
        now = datetime.now(timezone.utc).replace(microsecond=0).isoformat()  # news: placed just now
        paid = order(financial_status="paid", payment_gateway_names=["razorpay"], created_at=now, updated_at=now)  # the desk is told
        post_shopify(client, paid, "orders/updated")
        runtime.processor.drain()
        post_shopify(client, paid, "orders/create")
        runtime.processor.drain()
        items = client.get("/api/stores/shop-a/handoffs", headers=ADMIN).json()["items"]
        with runtime.db.engine.connect() as conn:
            told = conn.execute(select(m.OutboxMessage.idempotency_key).where(m.OutboxMessage.channel == "notify")).scalars().all()
    assert [i["reason"] for i in items] == ["high-value order #9999 (USD 414.95)"]
    assert len(told) == 1, told


# ---- Shopify's shipment statuses as Shopify means them --------------------------------------------------


def shipment(status: str, at: str, **kw) -> dict:
    f = load_json(FIXTURES / "shopify" / "fulfillments_update.sample.json")
    f.update(order_id=820982911946154508, status="success", shipment_status=status, tracking_number="1Z001", updated_at=at, **kw)
    return f


def delivery_outbox(runtime) -> list[str]:
    with runtime.db.engine.connect() as conn:
        return [r.step for r in conn.execute(select(m.OutboxMessage.step).where(
            m.OutboxMessage.journey == "delivery", m.OutboxMessage.channel == "whatsapp").order_by(m.OutboxMessage.id))]


def test_a_tracking_failure_goes_to_the_delivery_desk_and_the_customer_is_not_asked_about_a_failed_delivery(db_url):
    """Shopify's ``failure``: "something went wrong when pulling tracking information for the shipment, such as
    the tracking number was invalid or the shipment was canceled". The parcel may well be on its way: nobody
    tells the customer their delivery failed or asks them to reschedule; the delivery desk checks with the courier."""
    with running_app(settings(db_url)) as (client, runtime):
        post_shopify(client, order(financial_status="paid", payment_gateway_names=["razorpay"]), "orders/create")
        post_shopify(client, shipment("in_transit", "2026-11-21T10:00:00Z"), "fulfillments/create")
        post_shopify(client, shipment("failure", "2026-11-22T10:00:00Z"), "fulfillments/update")
        post_shopify(client, shipment("failure", "2026-11-22T11:00:00Z"), "fulfillments/update")  # the same news again
        runtime.processor.drain()
        steps = delivery_outbox(runtime)
        cases = client.get("/api/stores/shop-a/handoffs", params={"status": "open"}, headers=ADMIN).json()["items"]
    assert steps == ["shipped"]  # no "failed" (NDR) message, not even a skipped one
    [h] = cases
    assert h["owner"] == "Delivery desk" and h["journey"] == "delivery"
    assert "tracking failed for #9999 (UPS 1Z001)" in h["reason"] and "the customer was not told" in h["reason"]
    assert "delivery failed" not in h["reason"]


def test_a_parcel_picked_up_at_a_pickup_point_counts_as_delivered(db_url):
    """``picked_up``: the customer collected it. Told as delivered, the delivery run ends, the order has its
    delivered date (the reorder window counts from it) and the customer moves on to retention."""
    with running_app(settings(db_url)) as (client, runtime):
        post_shopify(client, order(financial_status="paid", payment_gateway_names=["razorpay"]), "orders/create")
        post_shopify(client, shipment("in_transit", "2026-11-21T10:00:00Z"), "fulfillments/create")
        post_shopify(client, shipment("ready_for_pickup", "2026-11-22T09:00:00Z"), "fulfillments/update")
        post_shopify(client, shipment("picked_up", "2026-11-22T17:00:00Z"), "fulfillments/update")
        runtime.processor.drain()
        steps = delivery_outbox(runtime)
        with runtime.db.engine.connect() as conn:
            run = conn.execute(select(m.JourneyRun).where(m.JourneyRun.journey == "delivery")).one()
            delivered_at = conn.execute(select(m.Fulfillment.delivered_at)).scalar_one()
        stage = contact_stage(runtime)
    assert steps == ["shipped", "delivered"]
    assert (run.status, run.state["outcome"]) == ("finished", "delivered")
    assert delivered_at is not None and delivered_at.replace(tzinfo=timezone.utc) == datetime(2026, 11, 22, 17, 0, tzinfo=timezone.utc)
    assert stage == "retention"


def test_closing_a_failed_delivery_case_while_the_worker_adds_that_orders_news_to_it_does_not_deadlock(db_url):
    """The worker's batch updates the order's run, then adds the news to its case; Ravi closes that case
    meanwhile. Before: the close wrote the case, then waited for the run the worker held, while the
    worker waited for the case: PostgreSQL killed one of them (Ravi's close a 500, or the batch retried).
    Both go through now, the news first. Only PostgreSQL's row locks can show this (SQLite writes one at a time)."""
    import threading
    import time

    from sqlalchemy import text, update

    from connector.handoffs import HandoffRequest, open_handoff
    from connector.storage.db import make_engine
    from connector.storage.sql import RUNS

    if not db_url.startswith("postgresql"):
        pytest.skip("row locks taken in another order only deadlock on PostgreSQL")
    s = settings(db_url)
    with running_app(s) as (client, runtime):
        post_shopify(client, order(financial_status="paid", payment_gateway_names=["razorpay"]), "orders/create")
        fulfilment = load_json(FIXTURES / "shopify" / "fulfillments_update.sample.json")
        fulfilment.update(order_id=820982911946154508, shipment_status="attempted_delivery", updated_at="2026-11-22T10:00:00Z")
        post_shopify(client, fulfilment, "fulfillments/update")
        runtime.processor.drain()
        [case] = client.get("/api/stores/shop-a/handoffs", params={"status": "open"}, headers=ADMIN).json()["items"]
        # the worker and the watcher connect through an engine of their own: taken from the app's pool, they
        # could leave Ravi's close waiting for a free connection instead of for the worker's lock
        sid, engine = runtime.store_ids["shop-a"], make_engine(db_url)
        closed: list[object] = []

        def close() -> None:  # Ravi's close, through the admin API
            try:
                closed.append(client.post(f"/api/stores/shop-a/handoffs/{case['id']}/close", headers=ADMIN, json={"by": "Ravi"}).status_code)
            except Exception as exc:  # the deadlock PostgreSQL broke, raised by the app
                closed.append(exc)
        with engine.connect() as worker:
            batch = worker.begin()
            worker_pid = worker.execute(text("SELECT pg_backend_pid()")).scalar()
            run = worker.execute(select(m.JourneyRun).where(m.JourneyRun.subject == case["subject"])).one()
            worker.execute(update(RUNS).where(RUNS.c.id == run.id).values(updated_at=T0))  # the batch has the run
            closer = threading.Thread(target=close)
            closer.start()
            # wait (no sleep) until the close is held by a lock the worker has; each look its own transaction:
            # PostgreSQL keeps one snapshot of pg_stat_activity per transaction, which may predate the close's backend
            with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as watch:
                deadline = time.monotonic() + 10
                while not watch.execute(text("SELECT count(*) FROM pg_stat_activity WHERE :me = ANY(pg_blocking_pids(pid))"), {"me": worker_pid}).scalar():
                    assert time.monotonic() < deadline and closer.is_alive(), "the close never waited for the worker"
            try:  # the batch adds the order's news to the case, as the runner does after the run's update
                open_handoff(worker, s.stores[0], sid, run.contact_id,
                             HandoffRequest(f"delivery:{case['subject']}", "order #9999 was delivered after the failed attempt",
                                            "delivery", case["subject"], only_open=True), T0)
                batch.commit()
                worker_error = None
            except Exception as exc:  # the deadlock PostgreSQL broke
                batch.rollback()
                worker_error = exc
            closer.join(timeout=30)
        engine.dispose()
        done = client.get("/api/stores/shop-a/handoffs", params={"status": "closed"}, headers=ADMIN).json()["items"]
    assert worker_error is None and closed == [200], (worker_error, closed)
    [done] = done
    assert [u["reason"] for u in done["context"]["updates"]] == ["order #9999 was delivered after the failed attempt"]
