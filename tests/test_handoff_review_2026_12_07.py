"""Hand-offs as the support desk meets them (review of 2026-12-07):

- each alert about a case's update shows that update: the desk told of "reschedule" and then of
  "cancel" reads both in Slack, not "cancel" twice;
- a webhook that answers with a redirect did not take the alert: its owner was not told, and the
  case says so (a 301 was recorded as sent);
- words the customer typed about an order (matched to its COD question by phone) and the Cancel
  with a reason she taps next are one case for the COD team, not two (and her parcel question and
  its failed delivery one case for the delivery desk, whose closing frees the run);
- a reorder reminder does not move a customer whose newer order waits to ship to retention.
"""

from __future__ import annotations

import asyncio
import json
import logging
from datetime import datetime, timedelta, timezone

import pytest
import respx
from sqlalchemy import select

from connector.config import parse_settings
from connector.reorder.windows import refresh_windows, run_reorder_tick, upcoming
from connector.storage import models as m
from tests.conftest import FIXTURES, settings_dict
from tests.helpers import load_json, running_app
from tests.test_handoff_alerts import fail_delivery_of_9999, open_cases, paid
from tests.test_handoffs import (ADMIN, COD_TEMPLATES, HOOK, NDR_TEMPLATES, SHIPPED_TEMPLATE, dispatch, failed_delivery, order,
                                 post_shopify, quick_replies, settings, store_settings, tap)
from tests.test_reorder import T0 as R0, Clock, _consent, _delivered, _order, _post, _settings
from tests.test_reply_routing import COD_HOOK, ORDER_1, ask_of, text


def told(runtime) -> dict[str, list[str]]:
    """What each team's channel was told, every notification due, in order."""
    with respx.mock(assert_all_called=False) as slack:
        desk = slack.post(HOOK).respond(200, text="ok")
        cod = slack.post(COD_HOOK).respond(200, text="ok")
        while asyncio.run(runtime.notifier.run_once()):
            pass
    return {"desk": [json.loads(c.request.content)["text"] for c in desk.calls],
            "cod": [json.loads(c.request.content)["text"] for c in cod.calls]}


# ---- 1. each update's alert shows that update ---------------------------------------------------

def test_each_alert_of_a_failed_delivery_case_shows_the_answer_it_is_about(db_url):
    """She taps Reschedule, then Cancel, before the notifier's next round: the desk is told of each, and each
    alert shows its own answer (before, both showed the case's latest, "cancel", and "reschedule" never reached Slack)."""
    settings = store_settings(db_url, {"delivery": {}}, NDR_TEMPLATES)
    with running_app(settings) as (client, runtime):
        ndr = failed_delivery(client, runtime, settings)
        tap(client, "ndr_reschedule", "wamid.N1", ndr)
        tap(client, "ndr_cancel", "wamid.N2", ndr)
        runtime.processor.drain()
        texts = told(runtime)["desk"]
    assert len(texts) == 3 and "delivery failed" in texts[0]
    assert "Update: customer asked to reschedule the failed delivery of #9999" in texts[1]
    assert "cancel" not in texts[1].split("Update:", 1)[1]
    assert "Update: customer asked to cancel #9999" in texts[2]


# ---- 2. a redirect is no delivery ------------------------------------------------------------------

def test_a_webhook_that_answers_with_a_redirect_has_not_told_the_owner(db_url, caplog):
    """A hook moved or typed with http:// answers 301: httpx does not follow it, nothing reached the channel."""
    caplog.set_level(logging.WARNING, logger="storeloop.notify")
    with running_app(settings(db_url)) as (client, runtime):
        post_shopify(client, paid(), "orders/create")
        runtime.processor.drain()
        fail_delivery_of_9999(client, runtime)
        with respx.mock(assert_all_called=False) as slack:
            hook = slack.post(HOOK).respond(301, headers={"Location": "https://hooks.slack.example/services/moved"})
            asyncio.run(runtime.notifier.run_once())
        [case] = open_cases(client)
    assert hook.call_count == 1
    assert case["notify"]["status"] == "failed" and case["notify"]["error"] == "HTTP 301"
    logged = [r.getMessage() for r in caplog.records if r.name == "storeloop.notify"]
    assert any("HTTP 301" in line and "not told" in line for line in logged)
    assert not any("hooks.slack.example" in line for line in logged)  # the URL is a secret


# ---- 3. one conversation, one case ----------------------------------------------------------------

def cod_reason_settings(db_url: str):
    raw = settings_dict(db_url)
    raw["whatsapp"]["pair_spacing_seconds"] = 0  # each message goes out at once, with the wamid a reply quotes
    ask = dict(COD_TEMPLATES[0], buttons=quick_replies("cod_confirm", "cod_cancel", "cancel_price"))
    raw["stores"][0].update(
        journeys={"cod_confirmation": {"cancel_reasons": {"cancel_price": "found it cheaper elsewhere"}}},
        templates=[ask, COD_TEMPLATES[1]], policy={"quiet_hours": ""},
        stages={"post_purchase": {"owner": "Delivery desk", "notify_url": HOOK},
                "qualification": {"owner": "COD team", "notify_url": COD_HOOK}})
    return parse_settings(raw, environ={})


def test_her_words_about_the_cod_question_and_her_cancel_with_a_reason_are_one_case(db_url):
    """She types a question (quoting nothing: it answers the COD question she got last), then taps the
    "found it cheaper" Cancel: the COD team has one case about #9999 with both, told of each."""
    settings = cod_reason_settings(db_url)
    with running_app(settings) as (client, runtime):
        post_shopify(client, order(), "orders/create")
        runtime.processor.drain()
        dispatch(runtime, settings)
        text(client, "wamid.W1", "Is there a discount if I pay online?", at=1795158000)
        runtime.processor.drain()
        tap(client, "cancel_price", "wamid.W2", ask_of(runtime, ORDER_1))
        runtime.processor.drain()
        texts = told(runtime)
        items = client.get("/api/stores/shop-a/handoffs", headers=ADMIN).json()["items"]
    [case] = items
    assert (case["journey"], case["subject"], case["owner"]) == ("cod_confirmation", ORDER_1, "COD team")
    assert "Is there a discount if I pay online?" in case["reason"]
    assert [u["reason"] for u in case["context"]["updates"]] == ["customer cancelled COD order #9999: found it cheaper elsewhere"]
    assert len(texts["cod"]) == 2 and texts["desk"] == []
    assert "Update: customer cancelled COD order #9999: found it cheaper elsewhere" in texts["cod"][1]


def test_her_question_about_a_parcel_and_its_failed_delivery_are_one_case_that_frees_the_run_when_closed(db_url):
    """"Where is my parcel?" (quoting nothing: it answers "on its way") opens the delivery desk's case; the
    delivery then fails: its news joins that case (told), and closing it lets the run follow the parcel again
    (before: a second case, and the run waited on it)."""
    settings = store_settings(db_url, {"delivery": {}}, [SHIPPED_TEMPLATE, *NDR_TEMPLATES])
    with running_app(settings) as (client, runtime):
        post_shopify(client, paid(), "orders/create")
        fulfilment = load_json(FIXTURES / "shopify" / "fulfillments_update.sample.json")
        fulfilment.update(order_id=820982911946154508, shipment_status="in_transit", updated_at="2026-11-21T10:00:00Z")
        post_shopify(client, fulfilment, "fulfillments/update")
        runtime.processor.drain()
        dispatch(runtime, settings)  # "on its way" reaches her
        text(client, "wamid.D1", "Where is my parcel?", at=1795158000)
        runtime.processor.drain()
        fail_delivery_of_9999(client, runtime)
        texts = told(runtime)["desk"]
        items = client.get("/api/stores/shop-a/handoffs", headers=ADMIN).json()["items"]
        runtime.clock = lambda: datetime(2026, 11, 22, 13, 30, tzinfo=timezone.utc)
        closed = client.post(f"/api/stores/shop-a/handoffs/{items[0]['id']}/close", headers=ADMIN, json={"by": "Ravi"})
        with runtime.db.engine.connect() as conn:
            run = conn.execute(select(m.JourneyRun.status)).scalar_one()
    [case] = items
    assert (case["journey"], case["subject"], case["owner"]) == ("delivery", ORDER_1, "Delivery desk")
    assert "Where is my parcel?" in case["reason"]
    assert [u["reason"] for u in case["context"]["updates"]] == [
        "delivery failed (attempted_delivery) for #9999 (UPS 1z827wk74630); call the customer to rearrange"]
    assert len(texts) == 2 and "Update: delivery failed" in texts[1]
    assert closed.status_code == 200 and run == "active"


# ---- 4. a reorder reminder does not take her from her newer order's stage ------------------------

@pytest.mark.parametrize("ordered_since, stage", [(True, "post_purchase"), (False, "retention")])
def test_a_reorder_reminder_leaves_a_customer_whose_newer_order_waits_to_ship_in_post_purchase(db_url, ordered_since, stage):
    """Asha's face wash (#1001) was delivered; the day before its reorder window opens she buys soap, paid,
    not shipped yet: she is in post-purchase, with its owner. The face-wash reminder still goes, but does
    not move her to retention (before: it did, while her soap was still to ship); with no newer order it does."""
    settings = _settings(db_url)
    clock = Clock(R0)
    with running_app(settings) as (client, runtime):
        runtime.processor.clock = clock
        sid, store = runtime.store_ids["shop-a"], settings.stores[0]
        _post(client, "customers_whats_app_marketing_consent/update", _consent())
        _post(client, "orders/create", _order(1001, R0))
        clock.now = R0 + timedelta(days=4)
        _post(client, "fulfillments/update", _delivered(1001, clock.now))
        runtime.processor.drain()
        refresh_windows(runtime.db, store, sid, clock.now)
        [w] = upcoming(runtime.db, sid, clock.now + timedelta(days=90))
        if ordered_since:
            clock.now = w.opens_at - timedelta(days=1)
            _post(client, "orders/create", _order(2001, clock.now, product="9002", variant="49002", sku="SOAP-1"))
            runtime.processor.drain()
        clock.now = w.opens_at + timedelta(hours=1)
        run_reorder_tick(runtime.db, store, sid, clock.now)
        with runtime.db.engine.connect() as conn:
            now_in = conn.execute(select(m.Contact.stage)).scalar_one()
            sent = conn.execute(select(m.OutboxMessage.step).where(m.OutboxMessage.journey == "reorder")).scalars().all()
    assert sent == ["reminder"] and now_in == stage
