"""Journeys: the pure decisions, then the whole path over HTTP on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import json
from datetime import datetime, timedelta, timezone
from decimal import Decimal

import pytest
import respx
from sqlalchemy import select

from adapters.whatsapp.client import WhatsAppClient
from connector import events as ev
from connector.config import parse_settings
from connector.errors import ConfigError
from connector.journeys.checkout_recovery import CheckoutRecovery, CheckoutRecoveryConfig
from connector.journeys.cod_confirmation import CodConfirmation, CodConfirmationConfig
from connector.journeys.delivery_updates import DeliveryUpdates, DeliveryUpdatesConfig
from connector.journeys.engine import Facts, Finish, Handoff, OrderFacts, Run, Send, Start, TimerFired, Update, Wake, WriteBack
from connector.journeys.payment_recovery import PaymentRecovery, PaymentRecoveryConfig
from connector.journeys.registry import journeys
from connector.journeys.runner import in_holdout
from connector.outbox.dispatcher import Dispatcher
from connector.outbox.senders import DryRunSender
from connector.sandbox.whatsapp import SandboxServer, SandboxWhatsApp
from connector.storage import models as m
from tests.conftest import FIXTURES, PHONE_ID_A, SECRETS, settings_dict
from tests.helpers import load_json, meta_signature, running_app, shopify_headers, dumps

T0 = datetime(2026, 11, 20, 6, 30, tzinfo=timezone.utc)


def order(**kw) -> ev.Order:
    base = dict(external_id="1042", name="#1042", created_at=T0, updated_at=T0, payment_state=ev.PaymentState.PENDING,
                is_cod=True, total=Decimal("1299"), currency="INR", customer=ev.Customer(first_name="Asha"), checkout_token="tok1")
    return ev.Order(**{**base, **kw})


def facts(o: ev.Order | None = None, **kw) -> Facts:
    o = o or order()
    of = OrderFacts(o.external_id, o.name, o.is_cod, o.payment_state.value, o.fulfillment_state.value, o.total, o.currency,
                    o.cancelled_at is not None, None, "https://pay.example/1042", o.checkout_token, o.created_at)
    return Facts(store_name="Acme", contact_id=7, first_name="Asha", order=of, **kw)


def run(journey: str, state: dict, status: str = "active") -> Run:
    return Run(journey, "order:1042", status, state, None, 7, T0)


def kinds(commands) -> list[str]:
    out = []
    for c in commands:
        if isinstance(c, Send):
            out.append(f"send:{c.step}")
        elif isinstance(c, WriteBack):
            out.append(f"{c.action}:{','.join(c.args.get('tags', [])) or c.args.get('status') or c.args.get('reason')}")
        elif isinstance(c, Finish):
            out.append(f"finish:{c.outcome}")
        elif isinstance(c, Handoff):
            out.append("handoff")
        else:
            out.append(type(c).__name__.lower())
    return out


def tap(payload: str, at: datetime = T0) -> ev.ButtonReplied:
    return ev.ButtonReplied(phone_number_id="1", message_id="wamid.in", wa_id="919876543210", payload=payload, occurred_at=at)


# ---- pure decisions ---------------------------------------------------------------------

def test_cod_asks_reminds_then_flags_an_unanswered_order():
    j, cfg = CodConfirmation(), CodConfirmationConfig(reminder_hours=(6, 24), answer_window_hours=48)
    placed = j.decide(ev.OrderPlaced(order=order()), None, facts(), cfg, T0)
    assert kinds(placed) == ["start", "send:ask", "wake"] and placed[-1].at == T0 + timedelta(hours=6)
    state = {"phase": "asked", "asked_at": T0.isoformat(), "reminders": 0}
    first = j.decide(TimerFired(T0 + timedelta(hours=6)), run("cod_confirmation", state), facts(), cfg, T0 + timedelta(hours=6))
    assert kinds(first) == ["update", "send:reminder_1", "wake"] and first[-1].at == T0 + timedelta(hours=24)
    state["reminders"] = 2
    last = j.decide(TimerFired(T0 + timedelta(hours=48)), run("cod_confirmation", state), facts(), cfg, T0 + timedelta(hours=48))
    assert kinds(last) == ["update", "wake", "add_tags:cod-unconfirmed", "finish:no_answer"]
    cancel_cfg = CodConfirmationConfig(reminder_hours=(), no_answer_action="cancel")
    state["reminders"] = 0
    assert "cancel_order:other" in kinds(j.decide(TimerFired(T0), run("cod_confirmation", state), facts(), cancel_cfg, T0))


def test_cod_confirm_and_cancel_are_locked_after_the_first_tap():
    j, cfg = CodConfirmation(), CodConfirmationConfig(confirm_status="processing")
    asked = run("cod_confirmation", {"phase": "asked", "asked_at": T0.isoformat(), "reminders": 0})
    assert kinds(j.decide(tap("cod_confirm"), asked, facts(), cfg, T0)) == [
        "update", "wake", "add_tags:cod-confirmed", "set_status:processing", "movestage", "finish:confirmed"]
    locked = run("cod_confirmation", {**asked.state, "choice": "confirmed"}, "finished")
    assert kinds(j.decide(tap("cod_cancel"), locked, facts(), cfg, T0)) == ["update", "handoff"]  # no flip: a person hears it
    assert j.decide(tap("cod_confirm"), locked, facts(), cfg, T0) == []
    assert kinds(j.decide(tap("cod_cancel"), asked, facts(), cfg, T0)) == ["update", "wake", "cancel_order:customer", "finish:cancelled"]
    tag_only = CodConfirmationConfig(cancel_action="tag")
    assert "add_tags:cod-cancelled-by-customer" in kinds(j.decide(tap("cod_cancel"), asked, facts(), tag_only, T0))
    shipped = facts(order(fulfillment_state=ev.FulfillmentState.FULFILLED))
    assert kinds(j.decide(tap("cod_cancel"), asked, shipped, cfg, T0)) == ["update", "wake", "handoff", "finish:cancel_after_fulfilment"]
    flagged = run("cod_confirmation", {**asked.state, "choice": "no_answer"}, "finished")
    assert kinds(j.decide(tap("cod_confirm", T0 + timedelta(days=3)), flagged, facts(), cfg, T0)) == [
        "update", "wake", "add_tags:cod-confirmed", "set_status:processing", "add_note:None", "movestage", "finish:confirmed"]
    # cancelled for no answer (its write-back may still be on its way): a late Cancel adds no second cancel
    cancel_cfg = CodConfirmationConfig(no_answer_action="cancel")
    assert j.decide(tap("cod_cancel", T0 + timedelta(days=3)), flagged, facts(), cancel_cfg, T0) == []


def test_cod_confirmation_can_offer_to_pay_now():
    j = CodConfirmation()
    asked = run("cod_confirmation", {"phase": "asked", "asked_at": T0.isoformat(), "reminders": 0})
    cfg = CodConfirmationConfig(prepaid_offer=True, prepaid_discount_code="PAYNOW5")
    commands = j.decide(tap("cod_confirm"), asked, facts(), cfg, T0)
    [offer] = [c for c in commands if isinstance(c, Send)]
    assert offer.step == "prepaid_offer" and offer.context["discount.code"] == "PAYNOW5"
    assert offer.context["order.payment_url"] == "https://pay.example/1042"
    assert not any(isinstance(c, Send) for c in j.decide(tap("cod_confirm"), asked, facts(), CodConfirmationConfig(), T0))


def test_cod_delay_is_skipped_when_the_order_is_cancelled_meanwhile():
    j, cfg = CodConfirmation(), CodConfirmationConfig(delay_minutes=30)
    placed = j.decide(ev.OrderPlaced(order=order()), None, facts(), cfg, T0)
    assert kinds(placed) == ["start", "wake"] and placed[-1].at == T0 + timedelta(minutes=30)
    waiting = run("cod_confirmation", {"phase": "waiting"})
    cancelled = facts(order(cancelled_at=T0 + timedelta(minutes=10)))
    assert kinds(j.decide(TimerFired(T0), waiting, cancelled, cfg, T0)) == ["wake", "finish:order_cancelled"]
    assert kinds(j.decide(TimerFired(T0), waiting, facts(), cfg, T0)) == ["update", "send:ask", "wake"]
    assert j.decide(ev.OrderPlaced(order=order(is_cod=True)), None, facts(order(cancelled_at=T0)), cfg, T0) == []


def test_delivery_updates_once_per_status_and_a_failure_hands_off():
    j, cfg = DeliveryUpdates(), DeliveryUpdatesConfig()

    def ful(status: str) -> ev.FulfillmentUpdated:
        return ev.FulfillmentUpdated(fulfillment=ev.Fulfillment(external_id="9", order_external_id="1042", status="success",
                                                                shipment_status=ev.ShipmentStatus(status), created_at=T0, updated_at=T0))
    assert kinds(j.decide(ful("in_transit"), None, facts(), cfg, T0)) == ["start", "update", "send:shipped"]
    r = run("delivery", {"sent": ["shipped"], "parcels": {"9": "in_transit"}})
    assert j.decide(ful("in_transit"), r, facts(), cfg, T0) == []
    # an update still waiting (held for quiet hours) is out of date once it has arrived: withdrawn first
    assert kinds(j.decide(ful("delivered"), r, facts(), cfg, T0)) == ["withdraw", "update", "send:delivered", "finish:delivered"]
    late = run("delivery", {"sent": ["delivered", "shipped"], "parcels": {"9": "in_transit"}})
    assert j.decide(ful("in_transit"), late, facts(), cfg, T0) == []
    assert kinds(j.decide(ful("attempted_delivery"), r, facts(), cfg, T0)) == ["update", "send:failed", "handoff"]


def test_checkout_recovery_ladder_and_attribution():
    j, cfg = CheckoutRecovery(), CheckoutRecoveryConfig(abandon_after_minutes=30, ladder_minutes=(0, 360), discount_code="BACK10", discount_from_step=2)
    chk = ev.Checkout(token="tok1", created_at=T0, updated_at=T0, recovery_url="https://x/recover", total=Decimal("899"), currency="INR",
                      customer=ev.Customer(), line_items=(ev.LineItem(title="Neem wash"),))
    started = j.decide(ev.CheckoutUpdated(checkout=chk), None, Facts("Acme", contact_id=7), cfg, T0)
    assert kinds(started) == ["start", "wake"] and started[-1].at == T0 + timedelta(minutes=30)
    state = started[0].state
    r = Run("checkout_recovery", "checkout:tok1", "active", state, None, 7, T0)
    first = j.decide(TimerFired(T0), r, Facts("Acme"), cfg, T0)
    assert kinds(first) == ["update", "send:first", "wake"] and "discount.code" not in first[1].context
    r2 = Run("checkout_recovery", "checkout:tok1", "active", {**state, "sent": 1}, None, 7, T0)
    second = j.decide(TimerFired(T0), r2, Facts("Acme"), cfg, T0)
    assert kinds(second)[:2] == ["update", "send:second"] and second[1].context["discount.code"] == "BACK10"
    # a paid order (a prepaid one still pending waits for its payment: test_decide_tables, checkout recovery cases)
    paid = order(is_cod=False, payment_state=ev.PaymentState.PAID, created_at=T0 + timedelta(hours=8))
    bought = j.decide(ev.OrderPlaced(order=paid), r2, facts(), cfg, T0)
    assert bought[0].state == {"order_id": "1042", "recovered": True, "revenue": "1299", "currency": "INR"}
    assert kinds(bought)[-1] == "finish:recovered"
    fresh = Run("checkout_recovery", "checkout:tok1", "active", state, None, 7, T0)
    assert j.decide(ev.OrderPlaced(order=order()), fresh, facts(), cfg, T0)[0].state["recovered"] is False  # bought before any reminder


def test_payment_recovery_reminds_once_and_attributes_the_payment():
    j, cfg = PaymentRecovery(), PaymentRecoveryConfig(after_minutes=60)
    prepaid = order(is_cod=False)
    started = j.decide(ev.OrderPlaced(order=prepaid), None, facts(prepaid), cfg, T0)
    assert kinds(started) == ["start", "wake"] and started[-1].at == T0 + timedelta(minutes=60)
    r = run("payment_recovery", {})
    reminding = j.decide(TimerFired(T0), r, facts(prepaid), cfg, T0)  # then listens for her second try out the attribution window
    assert kinds(reminding) == ["update", "send:remind", "wake"] and reminding[-1].at == T0 + timedelta(days=cfg.attribution_days)
    paid = order(is_cod=False, payment_state=ev.PaymentState.PAID)
    reminded = run("payment_recovery", {"reminded": True}, "finished")
    assert j.decide(ev.OrderPaid(order=paid), reminded, facts(paid), cfg, T0)[0].state == {
        "paid": True, "order_id": "1042", "recovered": True, "revenue": "1299", "currency": "INR"}
    assert kinds(j.decide(ev.OrderPaid(order=paid), r, facts(paid), cfg, T0)) == ["wake", "update", "finish:paid_without_reminder"]


def test_journeys_come_from_the_entry_point_group_and_their_settings_are_validated():
    assert {"order_confirmation", "cod_confirmation", "checkout_recovery", "payment_recovery", "delivery"} <= set(journeys())
    raw = settings_dict("sqlite://")
    raw["stores"][0]["journeys"] = {"cod_confirmation": {"delay_minutes": -1, "reminder_hourz": [1]}, "loyalty_points": {}}
    with pytest.raises(ConfigError) as err:
        parse_settings(raw, environ={})
    text = "\n".join(err.value.problems)
    assert "cod_confirmation.delay_minutes" in text and "cod_confirmation.reminder_hourz: unknown key (typo?)" in text
    assert "loyalty_points: unknown journey" in text


def test_holdout_is_deterministic_and_close_to_its_share():
    members = [in_holdout(c, "reorder", 10) for c in range(5000)]
    assert members == [in_holdout(c, "reorder", 10) for c in range(5000)]
    assert 0.08 < sum(members) / 5000 < 0.12
    assert not any(in_holdout(c, "reorder", 0) for c in range(100))


# ---- the whole path --------------------------------------------------------------------

TEMPLATES = [
    {"step": "cod_confirmation.ask", "name": "cod_confirm_v1", "category": "utility",
     "body_text": "Hi {{1}}, confirm order {{2}} of {{3}}?", "body": ["customer.first_name", "order.name", "order.total"],
     "buttons": [{"type": "quick_reply", "text": "Confirm", "payload": "cod_confirm"}, {"type": "quick_reply", "text": "Cancel", "payload": "cod_cancel"}]},
    {"step": "cod_confirmation.reminder_1", "name": "cod_reminder_v1", "category": "utility",
     "body_text": "Reminder: please confirm {{1}}", "body": ["order.name"],
     "buttons": [{"type": "quick_reply", "text": "Confirm", "payload": "cod_confirm"}, {"type": "quick_reply", "text": "Cancel", "payload": "cod_cancel"}]},
]


class Clock:
    def __init__(self, now: datetime):
        self.now = now

    def __call__(self) -> datetime:
        return self.now


def cod_order_payload(event_updated: str = "2026-11-20T12:00:00+05:30") -> dict:
    o = load_json(FIXTURES / "shopify" / "orders_create.sample.json")
    o.update(financial_status="pending", payment_gateway_names=["Cash on Delivery (COD)"], cancelled_at=None, cancel_reason=None,
             test=False, created_at="2026-11-20T12:00:00+05:30", updated_at=event_updated, phone="+91 98765 43210")
    return o


def test_cod_confirmation_end_to_end_over_http(db_url):
    fake = SandboxWhatsApp()
    with SandboxServer(fake.app) as sandbox:
        raw = settings_dict(db_url)
        raw["whatsapp"].update(access_token="sandbox-token", graph_base_url=sandbox.url, pair_spacing_seconds=0)
        raw["stores"][0].update(templates=TEMPLATES, journeys={"cod_confirmation": {"reminder_hours": [6]}},
                                policy={"quiet_hours": ""}, access_token="shpat_test", api_base_url="https://shop-a.example")
        settings = parse_settings(raw, environ={})
        clock = Clock(T0)
        with running_app(settings) as (client, runtime):
            runtime.processor.clock = clock
            body = dumps(cod_order_payload())
            for event_id in ("e1", "e1", "e2"):  # a retry, and a second subscription's delivery
                client.post("/webhooks/shopify", content=body, headers=shopify_headers(body, SECRETS["shop_a"], "shop-a.myshopify.com", "orders/create", event_id=event_id))
            runtime.processor.drain()

            async def send() -> None:
                wa = WhatsAppClient(sandbox.url, "v23.0", "sandbox-token")
                await Dispatcher(runtime.db, settings, runtime.store_ids, wa, clock=clock).drain()
                await wa.aclose()

            asyncio.run(send())
            [ask] = fake.accepted()
            assert ask.template == "cod_confirm_v1"

            def reply(payload: str, msg_id: str) -> None:
                env = {"object": "whatsapp_business_account", "entry": [{"id": "1", "changes": [{"field": "messages", "value": {
                    "messaging_product": "whatsapp", "metadata": {"display_phone_number": "1", "phone_number_id": PHONE_ID_A},
                    "contacts": [{"profile": {"name": "Asha"}, "wa_id": "919876543210"}],
                    "messages": [{"from": "919876543210", "id": msg_id, "timestamp": "1795158000", "type": "button",
                                  "button": {"payload": payload, "text": payload}, "context": {"from": "1", "id": ask.wamid}}]}}]}]}
                raw_body = json.dumps(env).encode()
                client.post("/webhooks/whatsapp", content=raw_body, headers={"X-Hub-Signature-256": meta_signature(raw_body, SECRETS["wa_app"])})

            reply("cod_confirm", "wamid.tap1")
            reply("cod_cancel", "wamid.tap2")  # changes its mind: the choice is locked, a person is told
            runtime.processor.drain()
            clock.now = T0 + timedelta(hours=7)  # the reminder would have been due
            runtime.processor.process_timers()
            runtime.processor.drain()
            with runtime.db.engine.connect() as conn:
                runs = conn.execute(select(m.JourneyRun)).all()
                outbox = conn.execute(select(m.OutboxMessage).order_by(m.OutboxMessage.id)).all()
            # the write-back goes to the store's Admin GraphQL API (faked at the HTTP boundary)
            with respx.mock(assert_all_called=True) as shopify:
                route = shopify.post("https://shop-a.example/admin/api/2026-07/graphql.json").respond(
                    json={"data": {"tagsAdd": {"node": {"id": "gid://shopify/Order/820982911946154508"}, "userErrors": []}}})
                asyncio.run(runtime.writebacks.drain())
                asyncio.run(runtime.writebacks.drain())  # nothing left: the tag is written once
            sent = json.loads(route.calls.last.request.content)
            assert route.call_count == 1 and route.calls.last.request.headers["X-Shopify-Access-Token"] == "shpat_test"
            assert sent["variables"] == {"id": "gid://shopify/Order/820982911946154508", "tags": ["cod-confirmed"]}
            with runtime.db.engine.connect() as conn:
                written = conn.execute(select(m.OutboxMessage.status).where(m.OutboxMessage.channel == "store")).scalar_one()
            assert written == "sent"
    [r] = runs
    assert (r.journey, r.subject, r.status, r.state["choice"], r.state["outcome"], r.state["changed_mind"]) == (
        "cod_confirmation", "order:820982911946154508", "handoff", "confirmed", "confirmed", "cancel")  # her Cancel went to a person
    assert [(o.channel, o.step, o.status) for o in outbox] == [("whatsapp", "ask", "sent"), ("store", "confirm_tag", "pending")]
    assert outbox[1].payload == {"subject": "order:820982911946154508", "action": "add_tags", "order_id": "820982911946154508", "args": {"tags": ["cod-confirmed"]}}


def test_unanswered_cod_order_gets_its_reminder_then_is_flagged(db_url):
    raw = settings_dict(db_url)
    raw["stores"][0].update(templates=TEMPLATES, journeys={"cod_confirmation": {"reminder_hours": [6], "answer_window_hours": 24}},
                            policy={"quiet_hours": ""})
    settings = parse_settings(raw, environ={})
    clock = Clock(T0)
    with running_app(settings) as (client, runtime):
        runtime.processor.clock = clock
        body = dumps(cod_order_payload())
        client.post("/webhooks/shopify", content=body, headers=shopify_headers(body, SECRETS["shop_a"], "shop-a.myshopify.com", "orders/create"))
        runtime.processor.drain()
        from connector.outbox.senders import DryRunSender

        for hours in (1, 6, 12, 24, 30):
            # the question and the reminder go out (the deadline acts only on a customer they reached)
            asyncio.run(Dispatcher(runtime.db, settings, runtime.store_ids, DryRunSender(), clock=lambda: clock.now).drain())
            clock.now = T0 + timedelta(hours=hours)
            runtime.processor.process_timers()
        with runtime.db.engine.connect() as conn:
            steps = [(o.channel, o.step) for o in conn.execute(select(m.OutboxMessage).order_by(m.OutboxMessage.id))]
            [r] = conn.execute(select(m.JourneyRun)).all()
    assert steps == [("whatsapp", "ask"), ("whatsapp", "reminder_1"), ("store", "no_answer_tag")]
    assert (r.status, r.state["outcome"]) == ("finished", "no_answer")


def test_woocommerce_cod_confirmation_writes_back_a_note_meta_and_status(db_url):
    woo_templates = [{**TEMPLATES[0]}]
    raw = settings_dict(db_url)
    raw["stores"][2].update(templates=woo_templates, journeys={"cod_confirmation": {"confirm_status": "processing"}},
                            policy={"quiet_hours": ""}, consumer_key="ck_test", consumer_secret="cs_test")
    settings = parse_settings(raw, environ={})
    woo_order = load_json(FIXTURES / "woocommerce" / "order.created.rest-v3-docs-example.json")
    woo_order.update(payment_method="cod", payment_method_title="Cash on delivery", status="processing", date_paid=None,
                     date_paid_gmt=None, date_modified_gmt="2026-11-20T06:30:00", date_created_gmt="2026-11-20T06:30:00")
    woo_order["billing"]["phone"] = "+1 415 555 2671"
    from tests.helpers import woo_headers
    from connector.outbox.senders import DryRunSender

    sender = DryRunSender()
    with running_app(settings) as (client, runtime):
        body = dumps(woo_order)
        for _ in range(2):  # WooCommerce sends the same state twice within a second
            client.post("/webhooks/woocommerce/woo", content=body, headers=woo_headers(body, SECRETS["woo"], "order.created"))
        runtime.processor.drain()
        asyncio.run(Dispatcher(runtime.db, settings, runtime.store_ids, sender).drain())
        with runtime.db.engine.connect() as conn:
            ask_wamid = conn.execute(select(m.OutboxMessage.wamid).where(m.OutboxMessage.channel == "whatsapp")).scalar_one()
        assert ask_wamid and ask_wamid.startswith("dryrun.")
        env = {"object": "whatsapp_business_account", "entry": [{"id": "1", "changes": [{"field": "messages", "value": {
            "messaging_product": "whatsapp", "metadata": {"display_phone_number": "1", "phone_number_id": "1122334455667"},
            "contacts": [{"profile": {"name": "John"}, "wa_id": "14155552671"}],
            "messages": [{"from": "14155552671", "id": "wamid.W1", "timestamp": "1795158000", "type": "button",
                          "button": {"payload": "cod_confirm", "text": "Confirm"}, "context": {"from": "1", "id": ask_wamid}}]}}]}]}
        raw_body = json.dumps(env).encode()
        for _ in range(2):  # the tap arrives twice
            client.post("/webhooks/whatsapp", content=raw_body, headers={"X-Hub-Signature-256": meta_signature(raw_body, SECRETS["wa_app"])})
        runtime.processor.drain()
        with respx.mock(assert_all_called=True) as woo:
            # the order as WooCommerce has it now: on hold (a COD order waiting for its confirmation)
            get = woo.get("https://bloom.example/wp-json/wc/v3/orders/727").respond(json={"id": 727, "status": "on-hold", "meta_data": []})
            note = woo.post("https://bloom.example/wp-json/wc/v3/orders/727/notes").respond(201, json={"id": 1})
            put = woo.put("https://bloom.example/wp-json/wc/v3/orders/727").respond(json={"id": 727, "status": "processing"})
            asyncio.run(runtime.writebacks.drain())
            asyncio.run(runtime.writebacks.drain())
    assert [m_.name for _, m_ in sender.sent] == ["cod_confirm_v1"]  # asked once despite the duplicate delivery
    assert json.loads(note.calls.last.request.content) == {"note": "storeloop tags: cod-confirmed", "customer_note": False}
    puts = [json.loads(c.request.content) for c in put.calls]
    assert {"status": "processing"} in puts and {"meta_data": [{"key": "_storeloop_tags", "value": "cod-confirmed"}]} in puts
    assert get.call_count == 2 and note.call_count == 1 and put.call_count == 2  # the tags' read and the status read


def test_duplicate_storm_and_opted_out_contacts(db_url):
    """Each webhook delivered 5 times in shuffled order: one message per step; STOP means nothing at all."""
    import random


    raw = settings_dict(db_url)
    raw["stores"][0].update(templates=TEMPLATES + [
        {"step": "order_confirmation.sent", "name": "order_ok_v1", "category": "utility", "body_text": "Thanks {{1}}", "body": ["order.name"]}],
        journeys={"cod_confirmation": {}, "order_confirmation": {}}, policy={"quiet_hours": ""})
    settings = parse_settings(raw, environ={})
    deliveries = []
    for n in range(12):
        o = cod_order_payload()
        o.update(id=5000 + n, name=f"#{5000 + n}", phone=f"+91 98765 432{n:02d}")
        if n % 2:
            o.update(financial_status="paid", payment_gateway_names=["razorpay"])
        body = dumps(o)
        for topic in ("orders/create", "orders/updated"):
            event = f"{topic}-{n}"
            deliveries += [(body, topic, event)] * 5
    random.Random(4).shuffle(deliveries)
    from connector.outbox.senders import DryRunSender

    sender = DryRunSender()
    with running_app(settings) as (client, runtime):
        # one customer said STOP before anything happened
        env = {"object": "whatsapp_business_account", "entry": [{"id": "1", "changes": [{"field": "messages", "value": {
            "messaging_product": "whatsapp", "metadata": {"display_phone_number": "1", "phone_number_id": PHONE_ID_A},
            "contacts": [{"profile": {"name": "X"}, "wa_id": "919876543200"}],
            "messages": [{"from": "919876543200", "id": "wamid.S", "timestamp": "1795000000", "type": "text", "text": {"body": "stop"}}]}}]}]}
        raw_body = json.dumps(env).encode()
        client.post("/webhooks/whatsapp", content=raw_body, headers={"X-Hub-Signature-256": meta_signature(raw_body, SECRETS["wa_app"])})
        runtime.processor.drain()
        for body, topic, event in deliveries:
            client.post("/webhooks/shopify", content=body, headers=shopify_headers(body, SECRETS["shop_a"], "shop-a.myshopify.com", topic, event_id=event))
        runtime.processor.drain()
        asyncio.run(Dispatcher(runtime.db, settings, runtime.store_ids, sender).drain())
        with runtime.db.engine.connect() as conn:
            skipped = conn.execute(select(m.OutboxMessage.skip_reason).where(m.OutboxMessage.status == "skipped")).scalars().all()
    sent_to = [msg.to for _, msg in sender.sent]
    assert len(sent_to) == 11 and len(set(sent_to)) == 11  # 12 orders, one customer opted out, nobody twice
    assert "+919876543200" not in sent_to and skipped == ["opted_out"]
    assert sorted(msg.name for _, msg in sender.sent) == ["cod_confirm_v1"] * 5 + ["order_ok_v1"] * 6


def test_checkout_ladder_stops_on_an_order_by_the_same_customer_or_a_reply(db_url):
    raw = settings_dict(db_url)
    raw["stores"][0].update(
        templates=[{"step": "checkout_recovery.first", "name": "cart_v1", "category": "marketing",
                    "body_text": "You left {{1}}: {{2}}", "body": ["reorder.product", "checkout.recovery_url"]}],
        journeys={"checkout_recovery": {"abandon_after_minutes": 30, "ladder_minutes": [0, 360]}}, policy={"quiet_hours": ""})
    settings = parse_settings(raw, environ={})
    clock = Clock(T0)

    def checkout(token: str, phone: str) -> dict:
        c = load_json(FIXTURES / "shopify" / "checkouts_create.sample.json")
        c.update(token=token, phone=phone, buyer_accepts_marketing=True, buyer_accepts_sms_marketing=True, completed_at=None,
                 created_at="2026-11-20T06:00:00Z", updated_at="2026-11-20T06:00:00Z")
        return c

    with running_app(settings) as (client, runtime):
        runtime.processor.clock = clock
        for token, phone in (("tokA", "+91 98765 43210"), ("tokB", "+91 98123 45678")):
            body = dumps(checkout(token, phone))
            client.post("/webhooks/shopify", content=body, headers=shopify_headers(body, SECRETS["shop_a"], "shop-a.myshopify.com", "checkouts/create"))
        runtime.processor.drain()
        clock.now = T0 + timedelta(minutes=10)  # 06:40, ten minutes after abandonment
        runtime.processor.process_timers()
        asyncio.run(Dispatcher(runtime.db, settings, runtime.store_ids, DryRunSender(), clock=clock).drain())  # both reminders go out
        # customer A orders through a new checkout (another token), customer B writes back
        o = cod_order_payload()
        o.update(checkout_token="another", created_at="2026-11-20T07:00:00Z", updated_at="2026-11-20T07:00:00Z", phone="+91 98765 43210")
        body = dumps(o)
        client.post("/webhooks/shopify", content=body, headers=shopify_headers(body, SECRETS["shop_a"], "shop-a.myshopify.com", "orders/create"))
        env = {"object": "whatsapp_business_account", "entry": [{"id": "1", "changes": [{"field": "messages", "value": {
            "messaging_product": "whatsapp", "metadata": {"display_phone_number": "1", "phone_number_id": PHONE_ID_A},
            "contacts": [{"profile": {"name": "B"}, "wa_id": "919812345678"}],
            "messages": [{"from": "919812345678", "id": "wamid.B1", "timestamp": "1795160000", "type": "text", "text": {"body": "is COD available?"}}]}}]}]}
        raw_body = json.dumps(env).encode()
        client.post("/webhooks/whatsapp", content=raw_body, headers={"X-Hub-Signature-256": meta_signature(raw_body, SECRETS["wa_app"])})
        runtime.processor.drain()
        clock.now = T0 + timedelta(hours=8)  # the second reminder would be due now
        runtime.processor.process_timers()
        with runtime.db.engine.connect() as conn:
            runs = {r.subject: r for r in conn.execute(select(m.JourneyRun))}
            steps = [(o_.payload["subject"], o_.step) for o_ in conn.execute(select(m.OutboxMessage).order_by(m.OutboxMessage.id))]
    a, b = runs["checkout:tokA"], runs["checkout:tokB"]
    assert (a.status, a.state["outcome"], a.state["recovered"], a.state["revenue"]) == ("finished", "recovered", True, "414.95")
    assert (b.status, b.state["outcome"]) == ("finished", "replied")
    assert steps == [("checkout:tokA", "first"), ("checkout:tokB", "first")]  # no second reminder for either


def test_woocommerce_shipping_status_drives_delivery_updates_once(db_url):
    raw = settings_dict(db_url)
    raw["stores"][2].update(
        templates=[{"step": "delivery.shipped", "name": "shipped_v1", "category": "utility", "body_text": "{{1}} shipped", "body": ["order.name"]},
                   {"step": "delivery.delivered", "name": "delivered_v1", "category": "utility", "body_text": "{{1}} delivered", "body": ["order.name"]}],
        journeys={"delivery": {}}, policy={"quiet_hours": ""})
    settings = parse_settings(raw, environ={})
    from tests.helpers import woo_headers

    def woo(status: str, modified: str, tracking: bool = False) -> bytes:
        o = load_json(FIXTURES / "woocommerce" / "order.created.rest-v3-docs-example.json")
        o.update(status=status, date_modified_gmt=modified, date_created_gmt="2026-11-20T06:00:00")
        o["billing"]["phone"] = "+1 415 555 2671"
        if tracking:
            o["meta_data"] = [{"key": "_wc_shipment_tracking_items", "value": [{"tracking_provider": "ups", "tracking_number": "1Z9"}]}]
        return dumps(o)

    with running_app(settings) as (client, runtime):
        deliveries = [woo("processing", "2026-11-20T06:00:00"), woo("processing", "2026-11-21T08:00:00", tracking=True),
                      woo("completed", "2026-11-21T09:00:00", tracking=True), woo("delivered", "2026-11-23T10:00:00", tracking=True)]
        for body in deliveries + deliveries[1:3]:  # WooCommerce sends some states again
            client.post("/webhooks/woocommerce/woo", content=body, headers=woo_headers(body, SECRETS["woo"], "order.updated"))
        runtime.processor.drain()
        with runtime.db.engine.connect() as conn:
            steps = [(o_.journey, o_.step) for o_ in conn.execute(select(m.OutboxMessage).order_by(m.OutboxMessage.id))]
    assert steps == [("delivery", "shipped"), ("delivery", "delivered")]


@pytest.mark.parametrize("status", ["failed-delivery", "rto"])
def test_woocommerce_failed_delivery_statuses_still_ask_the_customer_and_hand_off(db_url, status):
    """Shopify's ``failure`` (a tracking failure) is told to the store only; WooCommerce's own failed-delivery
    statuses are a courier who could not deliver: the customer is asked (NDR) and a person takes it, as before."""
    raw = settings_dict(db_url)
    raw["stores"][2].update(journeys={"delivery": {}}, policy={"quiet_hours": ""})
    settings = parse_settings(raw, environ={})
    from tests.helpers import woo_headers

    def woo(state: str, modified: str) -> bytes:
        o = load_json(FIXTURES / "woocommerce" / "order.created.rest-v3-docs-example.json")
        o.update(status=state, date_modified_gmt=modified, date_created_gmt="2026-11-20T06:00:00")
        o["billing"]["phone"] = "+1 415 555 2671"
        return dumps(o)

    with running_app(settings) as (client, runtime):
        for body in (woo("completed", "2026-11-21T09:00:00"), woo(status, "2026-11-23T10:00:00")):
            client.post("/webhooks/woocommerce/woo", content=body, headers=woo_headers(body, SECRETS["woo"], "order.updated"))
        runtime.processor.drain()
        with runtime.db.engine.connect() as conn:
            steps = [o_.step for o_ in conn.execute(select(m.OutboxMessage).where(m.OutboxMessage.channel == "whatsapp")
                                                     .order_by(m.OutboxMessage.id))]
            reasons = [h.reason for h in conn.execute(select(m.Handoff))]
    assert steps == ["shipped", "failed"]
    assert len(reasons) == 1 and "delivery failed (attempted_delivery)" in reasons[0]


def test_woocommerce_shipped_message_links_a_predefined_providers_parcel(db_url):
    """Shipment Tracking's own providers (UPS here) put no link in the order: the store's listed
    format makes one, so a "shipped" template that shows the link goes out instead of being skipped
    for a missing value."""
    raw = settings_dict(db_url)
    raw["stores"][2].update(
        templates=[{"step": "delivery.shipped", "name": "shipped_v2", "category": "utility", "body_text": "{{1}} shipped: {{2}}",
                    "body": ["order.name", "fulfillment.tracking_url"]}],
        journeys={"delivery": {}}, policy={"quiet_hours": ""},
        tracking_links={"UPS": "https://www.ups.example/track?tracknum=%1$s"})
    settings = parse_settings(raw, environ={})
    from tests.helpers import woo_headers

    o = load_json(FIXTURES / "woocommerce" / "order.created.rest-v3-docs-example.json")
    o.update(status="completed", date_modified_gmt="2026-11-21T09:00:00", date_created_gmt="2026-11-20T06:00:00")
    o["billing"]["phone"] = "+1 415 555 2671"
    o["meta_data"] = [{"key": "_wc_shipment_tracking_items", "value": [{"tracking_provider": "ups", "tracking_number": "1Z9"}]}]
    body = dumps(o)
    with running_app(settings) as (client, runtime):
        client.post("/webhooks/woocommerce/woo", content=body, headers=woo_headers(body, SECRETS["woo"], "order.updated"))
        runtime.processor.drain()
        with runtime.db.engine.connect() as conn:
            [row] = conn.execute(select(m.OutboxMessage)).all()
    assert (row.step, row.status, row.skip_reason) == ("shipped", "pending", None)
    assert "https://www.ups.example/track?tracknum=1Z9" in json.dumps(row.payload)
