"""Where a customer's typed reply goes when they have more than one conversation with the store.

A reply continues the journey it answers: the message it quotes first, the phone second.

- One quoting the COD question for order 2 while a failed delivery of order 1 waits on the
  delivery desk is a new case for the COD team (told), not a silent note on the delivery case.
- Two replies quoting the COD questions of two orders are two cases, one per order.
- While a COD run waits for a cancel reason, words quoting the failed-delivery message of
  another order go to the delivery case; the next unquoted message is the reason.
- An unquoted reply while the COD question is open is the COD team's case for that order,
  and a later reply quoting the question joins it.
- A question quoting the COD ask opens the COD team's case; once she has confirmed (the run
  ended), her next plain message joins that open case, not a second, generic one; a message
  after ``reply_match_days`` of silence is a new conversation.
"""

from __future__ import annotations

import asyncio
import json
from datetime import datetime, timedelta, timezone

import respx
from sqlalchemy import select

from connector.config import parse_settings
from connector.storage import models as m
from tests.conftest import FIXTURES, settings_dict
from tests.helpers import load_json, running_app
from tests.test_handoffs import ADMIN, COD_TEMPLATES, HOOK, NDR_TEMPLATES, dispatch, order, post_shopify, post_wa, tap, wamid_of

COD_HOOK = "https://hooks.slack.example/services/T000/B000/CODTEAM"
ORDER_1 = "order:820982911946154508"
ORDER_2 = "order:820982911946154509"


def reply_settings(db_url: str, cod: dict | None = None):
    raw = settings_dict(db_url)
    raw["whatsapp"]["pair_spacing_seconds"] = 0  # each message goes out at once, with the wamid a reply quotes
    raw["stores"][0].update(
        journeys={"cod_confirmation": cod or {}, "delivery": {}}, templates=COD_TEMPLATES + NDR_TEMPLATES, policy={"quiet_hours": ""},
        stages={"post_purchase": {"owner": "Delivery desk", "notify_url": HOOK},
                "qualification": {"owner": "COD team", "notify_url": COD_HOOK}})
    return parse_settings(raw, environ={})


def second_cod_order() -> dict:
    return order(id=820982911946154509, admin_graphql_api_id="gid://shopify/Order/820982911946154509", name="#10000",
                 order_number=10000, created_at="2026-11-22T12:00:00+05:30", updated_at="2026-11-22T12:00:00+05:30")


def failed_delivery_of_order_1(client, runtime) -> None:
    """Order 1 (#9999), paid, could not be delivered: its case is open with the delivery desk."""
    post_shopify(client, order(financial_status="paid", payment_gateway_names=["razorpay"]), "orders/create")
    fulfilment = load_json(FIXTURES / "shopify" / "fulfillments_update.sample.json")
    fulfilment.update(order_id=820982911946154508, shipment_status="attempted_delivery", updated_at="2026-11-22T10:00:00Z")
    post_shopify(client, fulfilment, "fulfillments/update")
    runtime.processor.drain()


def ask_of(runtime, subject: str) -> str:
    with runtime.db.engine.connect() as conn:
        rows = conn.execute(select(m.OutboxMessage.wamid, m.OutboxMessage.payload).where(
            m.OutboxMessage.journey == "cod_confirmation", m.OutboxMessage.step == "ask")).all()
    [wamid] = [r.wamid for r in rows if r.payload["subject"] == subject]
    return wamid


def text(client, msg_id: str, body: str, quoted: str | None = None, at: int = 1795158000) -> None:
    msg = {"from": "919876543210", "id": msg_id, "timestamp": str(at), "type": "text", "text": {"body": body}}
    if quoted:
        msg["context"] = {"from": "1", "id": quoted}
    post_wa(client, {"messages": [msg]})


def notifications(runtime) -> dict[str, list[str]]:
    """What each team's channel was told (every notification due, in order)."""
    with respx.mock(assert_all_called=False) as slack:
        desk = slack.post(HOOK).respond(200, text="ok")
        cod = slack.post(COD_HOOK).respond(200, text="ok")
        while asyncio.run(runtime.notifier.run_once()):
            pass
    return {"desk": [json.loads(c.request.content)["text"] for c in desk.calls],
            "cod": [json.loads(c.request.content)["text"] for c in cod.calls]}


def cases(client) -> dict[tuple[str | None, str | None], dict]:
    items = client.get("/api/stores/shop-a/handoffs", headers=ADMIN).json()["items"]
    by = {(h["journey"], h["subject"]): h for h in items}
    assert len(by) == len(items), items  # one case per journey and order
    return by


def updates(case: dict) -> list[str]:
    return [u["reason"] for u in case["context"].get("updates") or []]


def test_a_question_quoting_the_cod_ask_of_order_2_is_a_cod_case_not_a_note_on_order_1s_failed_delivery(db_url):
    settings = reply_settings(db_url)
    with running_app(settings) as (client, runtime):
        failed_delivery_of_order_1(client, runtime)
        post_shopify(client, second_cod_order(), "orders/create")
        runtime.processor.drain()
        dispatch(runtime, settings)
        text(client, "wamid.Q1", "Can I pay #10000 by card instead?", quoted=ask_of(runtime, ORDER_2))
        runtime.processor.drain()
        told = notifications(runtime)
        by = cases(client)
    assert set(by) == {("delivery", ORDER_1), ("cod_confirmation", ORDER_2)}
    assert updates(by["delivery", ORDER_1]) == []  # the delivery desk's case is about the failed delivery only
    cod = by["cod_confirmation", ORDER_2]
    assert cod["owner"] == "COD team" and "Can I pay #10000 by card instead?" in cod["reason"]
    assert len(told["cod"]) == 1 and "Can I pay #10000 by card instead?" in told["cod"][0]  # the COD team hears of it
    assert len(told["desk"]) == 1 and "delivery failed" in told["desk"][0]


def test_replies_quoting_the_cod_asks_of_two_orders_are_two_cases_each_told(db_url):
    settings = reply_settings(db_url)
    with running_app(settings) as (client, runtime):
        post_shopify(client, order(), "orders/create")
        post_shopify(client, second_cod_order(), "orders/create")
        runtime.processor.drain()
        dispatch(runtime, settings)
        text(client, "wamid.Q1", "Is #9999 gift wrapped?", quoted=ask_of(runtime, ORDER_1))
        runtime.processor.drain()
        text(client, "wamid.Q2", "Can #10000 come on Friday?", quoted=ask_of(runtime, ORDER_2), at=1795158060)
        runtime.processor.drain()
        told = notifications(runtime)
        by = cases(client)
    assert set(by) == {("cod_confirmation", ORDER_1), ("cod_confirmation", ORDER_2)}
    assert "Is #9999 gift wrapped?" in by["cod_confirmation", ORDER_1]["reason"] and updates(by["cod_confirmation", ORDER_1]) == []
    assert "Can #10000 come on Friday?" in by["cod_confirmation", ORDER_2]["reason"]
    assert len(told["cod"]) == 2 and "Can #10000 come on Friday?" in told["cod"][1]


def test_words_quoting_order_1s_failed_delivery_are_not_the_reason_order_2s_cod_was_cancelled(db_url):
    settings = reply_settings(db_url, {"cancel_reason_minutes": 60})
    with running_app(settings) as (client, runtime):
        failed_delivery_of_order_1(client, runtime)
        post_shopify(client, second_cod_order(), "orders/create")
        runtime.processor.drain()
        dispatch(runtime, settings)
        tap(client, "cod_cancel", "wamid.T1", ask_of(runtime, ORDER_2))  # the COD order is cancelled; the run asks why
        runtime.processor.drain()
        dispatch(runtime, settings)
        ndr = wamid_of(runtime, "delivery", "failed")
        text(client, "wamid.Q1", "I'm home after 6 pm, deliver #9999 then", quoted=ndr, at=1795158060)
        runtime.processor.drain()
        text(client, "wamid.Q2", "Ordered twice by mistake", at=1795158120)  # as people type: quoting nothing
        runtime.processor.drain()
        by = cases(client)
        with runtime.db.engine.connect() as conn:
            cod_run = conn.execute(select(m.JourneyRun).where(m.JourneyRun.journey == "cod_confirmation")).one()
    assert set(by) == {("delivery", ORDER_1), ("cod_confirmation", ORDER_2)}
    [note] = updates(by["delivery", ORDER_1])
    assert "I'm home after 6 pm, deliver #9999 then" in note  # the delivery desk sees when to come back
    assert by["cod_confirmation", ORDER_2]["reason"] == "customer cancelled COD order #10000: Ordered twice by mistake"
    assert (cod_run.status, cod_run.state["cancel_reason"]) == ("finished", "Ordered twice by mistake")


def test_an_unquoted_reply_to_the_open_cod_ask_is_the_cod_teams_case_for_that_order(db_url):
    settings = reply_settings(db_url)
    with running_app(settings) as (client, runtime):
        post_shopify(client, order(), "orders/create")
        runtime.processor.drain()
        dispatch(runtime, settings)
        ask = ask_of(runtime, ORDER_1)
        post_wa(client, {"messages": [{"from": "919876543210", "id": "wamid.S1", "timestamp": "1795158000", "type": "reaction",
                                       "reaction": {"message_id": ask, "emoji": "\U0001F44D"}}]})  # a reaction answers nothing
        text(client, "wamid.Q1", "Can you deliver after 6 pm?", at=1795158030)  # as people type: quoting nothing
        runtime.processor.drain()
        text(client, "wamid.Q2", "and please gift wrap it", quoted=ask, at=1795158060)
        runtime.processor.drain()
        told = notifications(runtime)
        by = cases(client)
    [(key, case)] = by.items()
    assert key == ("cod_confirmation", ORDER_1) and case["owner"] == "COD team"
    assert "Can you deliver after 6 pm?" in case["reason"]
    [joined] = updates(case)
    assert "and please gift wrap it" in joined
    assert len(told["cod"]) == 1


def test_plain_messages_of_one_conversation_stay_one_case_while_the_run_they_answered_ends(db_url):
    """'is COD available?' answers the open COD ask by phone and opens the case; once the run the
    first message matched is gone, the next plain message still joins that case, told once."""
    settings = reply_settings(db_url)
    with running_app(settings) as (client, runtime):
        post_shopify(client, order(), "orders/create")
        runtime.processor.drain()
        dispatch(runtime, settings)
        text(client, "wamid.P1", "is COD available?", at=1795158000)
        runtime.processor.drain()
        tap(client, "cod_confirm", "wamid.P2", ask_of(runtime, ORDER_1))  # the COD run ends: confirmed
        runtime.processor.drain()
        text(client, "wamid.P3", "hello?", at=1795158120)
        runtime.processor.drain()
        told = notifications(runtime)
        by = cases(client)
    [case] = by.values()
    assert "is COD available?" in case["reason"] and any("hello?" in u for u in updates(case))
    assert len(told["cod"]) + len(told["desk"]) == 1


class Clock:
    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


T0 = datetime(2026, 11, 20, 6, 40, tzinfo=timezone.utc)


def quoted_question_then_confirm(client, runtime, settings, clock: Clock) -> None:
    """She asks, quoting the COD ask of order 1 (the COD team's case opens), then taps Confirm: the run ends."""
    runtime.processor.clock = clock
    post_shopify(client, order(), "orders/create")
    runtime.processor.drain()
    dispatch(runtime, settings, clock=clock)
    ask = ask_of(runtime, ORDER_1)
    text(client, "wamid.Q1", "Can you deliver after 6 pm?", quoted=ask, at=int((T0 + timedelta(minutes=5)).timestamp()))
    clock.now = T0 + timedelta(minutes=6)
    runtime.processor.drain()
    tap(client, "cod_confirm", "wamid.Q2", ask)
    runtime.processor.drain()


def test_a_plain_follow_up_after_the_quoted_question_s_run_ended_joins_its_case_not_a_new_one(db_url):
    settings = reply_settings(db_url)
    clock = Clock(T0)
    with running_app(settings) as (client, runtime):
        quoted_question_then_confirm(client, runtime, settings, clock)
        text(client, "wamid.Q3", "hello? did you see my question?", at=int((T0 + timedelta(minutes=20)).timestamp()))
        clock.now = T0 + timedelta(minutes=21)
        runtime.processor.drain()
        told = notifications(runtime)
        by = cases(client)
        # eight days of silence later (past the default reply_match_days, 7): a new conversation, a case of its own
        text(client, "wamid.Q4", "do you sell gift cards?", at=int((T0 + timedelta(days=8)).timestamp()))
        clock.now = T0 + timedelta(days=8)
        runtime.processor.drain()
        later = cases(client)
    [(key, case)] = by.items()
    assert key == ("cod_confirmation", ORDER_1) and case["owner"] == "COD team"
    assert "Can you deliver after 6 pm?" in case["reason"]
    assert [u for u in updates(case) if "hello? did you see my question?" in u]
    assert len(told["cod"]) == 1 and told["desk"] == []  # the COD team was told once; nobody got a second alert
    assert set(later) == {("cod_confirmation", ORDER_1), (None, None)}
    assert len(updates(later["cod_confirmation", ORDER_1])) == 1 and "do you sell gift cards?" in later[None, None]["reason"]
