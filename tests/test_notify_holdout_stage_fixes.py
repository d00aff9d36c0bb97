"""Hand-off notifications, holdouts and stages, as a store owner sees them:

- one stage's broken webhook URL fails its own notification; the other hand-offs of the same
  batch (any store) are posted once, not again after every lease;
- a notify_url with a trailing newline or a non-http(s) scheme is a config error at startup;
- a holdout only on a journey that keeps a control group: a COD-confirmation holdout would
  cancel orders of customers who were never asked;
- a COD order paid after delivery leaves the customer in retention;
- every notified update of a case reaches its owner, past the 20 kept in the case;
- of two people closing a case at once, the first keeps their name and resolution.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from datetime import datetime, timedelta, timezone

import httpx
import pytest
import respx
from pydantic import SecretStr
from sqlalchemy import event, select

from connector.config import parse_settings
from connector.errors import ConfigError
from connector.handoffs import HandoffRequest, close_handoff, open_handoff
from connector.storage import models as m
from connector.storage.models import utcnow
from tests.conftest import FIXTURES, SECRETS, settings_dict
from tests.helpers import dumps, load_json, running_app, shopify_headers
from tests.test_handoffs import HOOK, contact_stage, order, post_shopify

HOOK_B = "https://hooks.slack.example/services/T000/B000/SHOPB"
T0 = datetime(2026, 11, 20, 6, 30, tzinfo=timezone.utc)


def _failed_delivery(client, post) -> None:
    post(client, order(financial_status="paid", payment_gateway_names=["razorpay"]), "orders/create")
    fulfilment = load_json(FIXTURES / "shopify" / "fulfillments_update.sample.json")
    fulfilment.update(order_id=820982911946154508, shipment_status="attempted_delivery", updated_at="2026-11-22T10:00:00Z")
    post(client, fulfilment, "fulfillments/update")


def _post_shop_b(client, payload, topic):
    body = dumps(payload)
    return client.post("/webhooks/shopify", content=body, headers=shopify_headers(body, SECRETS["shop_b"], "shop-b.myshopify.com", topic))


def _notify_rows(runtime) -> dict[str, tuple[str, str | None]]:
    keys = {sid: key for key, sid in runtime.store_ids.items()}
    with runtime.db.engine.connect() as conn:
        rows = conn.execute(select(m.OutboxMessage.store_id, m.OutboxMessage.status, m.OutboxMessage.last_error)
                            .where(m.OutboxMessage.channel == "notify")).all()
    return {keys[r.store_id]: (r.status, r.last_error) for r in rows}


# ---- 1. a broken webhook URL fails alone ----------------------------------------------------

def test_a_broken_notify_url_fails_alone_and_the_other_owner_is_told_once(db_url):
    raw = settings_dict(db_url)
    for store, hook in zip(raw["stores"][:2], (HOOK, HOOK_B)):
        store.update(journeys={"delivery": {}}, policy={"quiet_hours": ""},
                     stages={"post_purchase": {"owner": "Delivery desk", "notify_url": hook}})
    settings = parse_settings(raw, environ={})
    # shop-b's URL as an env: secret often arrives, with a newline; the config check now refuses it
    # at startup, but the notifier must not depend on that (a URL can fail in ways no check foresees)
    a, b, woo = settings.stores
    stage = b.stages["post_purchase"].model_copy(update={"notify_url": SecretStr(HOOK_B + "\n")})
    settings = settings.model_copy(update={"stores": (a, b.model_copy(update={"stages": {"post_purchase": stage}}), woo)})
    with running_app(settings) as (client, runtime):
        _failed_delivery(client, post_shopify)  # shop-a's hand-off: first in the batch
        _failed_delivery(client, _post_shop_b)  # shop-b's: broken URL
        runtime.processor.drain()
        with respx.mock(assert_all_called=False) as slack:
            hook_a = slack.post(HOOK).respond(200, text="ok")
            with contextlib.suppress(httpx.InvalidURL):  # before the fix it escaped the batch
                asyncio.run(runtime.notifier.run_once())
            runtime.notifier.clock = lambda: utcnow() + timedelta(minutes=3)  # past the lease (2.5 minutes)
            for _ in range(3):
                with contextlib.suppress(httpx.InvalidURL):
                    asyncio.run(runtime.notifier.run_once())
        rows = _notify_rows(runtime)
    assert hook_a.call_count == 1  # shop-a's owner is told once, not after every lease
    assert "hand-off" in json.loads(hook_a.calls.last.request.content)["text"]
    assert rows["shop-a"] == ("sent", None)
    status, error = rows["shop-b"]
    assert status == "failed" and error is not None and "InvalidURL" in error
    assert "hooks.slack" not in error and "SHOPB" not in error  # the URL is a secret


def test_a_notify_url_with_a_newline_or_another_scheme_is_a_config_error_that_never_quotes_it():
    raw = settings_dict("sqlite://")
    raw["stores"][0]["stages"] = {"post_purchase": {"notify_url": HOOK + "\n"}, "retention": {"notify_url": "ftp://hooks.example/x"},
                                  "qualification": {"notify_url": HOOK}}
    with pytest.raises(ConfigError) as err:
        parse_settings(raw, environ={})
    text = "\n".join(err.value.problems)
    assert "stores[0].stages.post_purchase.notify_url" in text and "newline" in text
    assert "stores[0].stages.retention.notify_url" in text and "http" in text
    assert "qualification" not in text and "XXXX" not in text and "hooks.example" not in text


# ---- 2. a holdout only where a control group gets nothing ---------------------------------

@pytest.mark.parametrize("journey", ["cod_confirmation", "delivery", "order_confirmation"])
def test_a_holdout_on_a_journey_that_acts_on_orders_is_a_config_error_naming_it(journey):
    raw = settings_dict("sqlite://")
    raw["stores"][1]["journeys"] = {journey: {"holdout_percent": 10}}
    with pytest.raises(ConfigError) as err:
        parse_settings(raw, environ={})
    [problem] = err.value.problems
    assert problem.startswith("stores[1].journeys") and f"{journey}.holdout_percent" in problem


def test_marketing_journeys_and_payment_recovery_keep_their_holdout():
    raw = settings_dict("sqlite://")
    raw["stores"][0]["journeys"] = {"checkout_recovery": {"holdout_percent": 10}, "payment_recovery": {"holdout_percent": 30},
                                    "reorder": {"holdout_percent": 20}, "cod_confirmation": {"holdout_percent": 0}}
    journeys = parse_settings(raw, environ={}).stores[0].journeys
    assert (journeys["checkout_recovery"].holdout_percent, journeys["payment_recovery"].holdout_percent,
            journeys["reorder"].holdout_percent) == (10, 30, 20)


# ---- 3. stages move forward; only a new order starts a new cycle ----------------------------

def test_a_cod_order_paid_after_delivery_leaves_the_customer_in_retention(db_url):
    raw = settings_dict(db_url)
    raw["stores"][0].update(journeys={"delivery": {}}, policy={"quiet_hours": ""})
    with running_app(parse_settings(raw, environ={})) as (client, runtime):
        post_shopify(client, order(), "orders/create")  # COD, pending
        runtime.processor.drain()
        placed = contact_stage(runtime)
        fulfilment = load_json(FIXTURES / "shopify" / "fulfillments_update.sample.json")
        fulfilment.update(order_id=820982911946154508, shipment_status="delivered", updated_at="2026-11-22T10:00:00Z")
        post_shopify(client, fulfilment, "fulfillments/update")
        runtime.processor.drain()
        delivered = contact_stage(runtime)
        # the courier hands the cash over: Shopify marks the COD order paid, after delivery
        post_shopify(client, order(financial_status="paid", updated_at="2026-11-23T10:00:00+05:30"), "orders/paid")
        runtime.processor.drain()
        paid = contact_stage(runtime)
        # a new order is a new purchase cycle: the customer is in qualification for it
        post_shopify(client, order(id=820982911946154999, name="#10000", created_at="2026-12-20T12:00:00+05:30",
                                   updated_at="2026-12-20T12:00:00+05:30"), "orders/create")
        runtime.processor.drain()
        reordered = contact_stage(runtime)
    assert (placed, delivered, paid, reordered) == ("qualification", "retention", "retention", "qualification")


def test_a_woocommerce_customer_who_pays_later_moves_on_from_conversion(db_url):
    """WooCommerce has no "paid" webhook: a pending order updated to processing with ``date_paid``
    is the payment. Her questions must then go to the post-purchase owner, not the checkout desk."""
    from tests.helpers import woo_headers

    raw = settings_dict(db_url)
    raw["stores"][2].update(policy={"quiet_hours": ""})
    woo = load_json(FIXTURES / "woocommerce" / "order.created.rest-v3-docs-example.json")
    woo.update(status="pending", date_paid=None, date_paid_gmt=None, date_created_gmt="2026-11-20T06:00:00",
               date_modified_gmt="2026-11-20T06:00:00")
    woo["billing"]["phone"] = "+1 415 555 2671"
    paid = {**woo, "status": "processing", "date_paid_gmt": "2026-11-20T07:00:00", "date_paid": "2026-11-20T07:00:00",
            "date_modified_gmt": "2026-11-20T07:00:00"}
    with running_app(parse_settings(raw, environ={})) as (client, runtime):
        stages = []
        for topic, body in (("order.created", dumps(woo)), ("order.updated", dumps(paid))):
            client.post("/webhooks/woocommerce/woo", content=body, headers=woo_headers(body, SECRETS["woo"], topic))
            runtime.processor.drain()
            stages.append(contact_stage(runtime))
    assert stages == ["conversion", "post_purchase"]


# ---- 6a. every notified update reaches the owner --------------------------------------------

def test_every_notified_update_of_a_case_reaches_its_owner_past_the_twenty_kept(db_url):
    raw = settings_dict(db_url)
    raw["stores"][0].update(stages={"entry": {"owner": "Front desk", "notify_url": HOOK}})
    settings = parse_settings(raw, environ={})
    with running_app(settings) as (client, runtime):
        store, sid = settings.stores[0], runtime.store_ids["shop-a"]
        for i in range(23):  # opened, then 22 notified updates
            with runtime.db.engine.begin() as conn:
                open_handoff(conn, store, sid, None, HandoffRequest("case:1", f"update {i}"), T0 + timedelta(minutes=i))
        with respx.mock(assert_all_called=True) as slack:
            hook = slack.post(HOOK).respond(200, text="ok")
            while asyncio.run(runtime.notifier.run_once()):
                pass
        with runtime.db.engine.connect() as conn:
            [h] = conn.execute(select(m.Handoff)).all()
    texts = [json.loads(c.request.content)["text"] for c in hook.calls]
    assert len(texts) == 23 and all("hand-off" in t for t in texts)  # opened, then told of each of the 22 updates
    assert len(h.context["updates"]) == 20  # the case keeps the latest 20


# ---- 6b. two people close the same case ------------------------------------------------------

def test_two_people_closing_one_case_at_once_the_first_keeps_their_resolution(db_url):
    raw = settings_dict(db_url)
    settings = parse_settings(raw, environ={})
    with running_app(settings) as (client, runtime):
        store, sid = settings.stores[0], runtime.store_ids["shop-a"]
        with runtime.db.engine.begin() as conn:
            hid = open_handoff(conn, store, sid, None, HandoffRequest("case:1", "customer wrote"), T0)
        first: list[bool] = []
        engine = runtime.db.engine
        with engine.connect() as conn_b:
            if engine.dialect.name == "postgresql":
                # Ravi has read the case (open) when Asha's close commits, just before his UPDATE
                def asha_closes_first(conn, cursor, statement, *args):  # type: ignore[no-untyped-def]
                    if statement.lstrip().upper().startswith("UPDATE HANDOFFS") and not first:
                        with engine.begin() as conn_a:
                            first.append(close_handoff(conn_a, sid, hid, "Asha", "refunded", T0 + timedelta(hours=1)))
                event.listen(conn_b, "before_cursor_execute", asha_closes_first)
            else:
                # SQLite's BEGIN IMMEDIATE serializes the two transactions: Asha's commits first
                with engine.begin() as conn_a:
                    first.append(close_handoff(conn_a, sid, hid, "Asha", "refunded", T0 + timedelta(hours=1)))
            with conn_b.begin():
                second = close_handoff(conn_b, sid, hid, "Ravi", "rescheduled", T0 + timedelta(hours=2))
        [closed] = client.get("/api/stores/shop-a/handoffs", params={"status": "closed"},
                              headers={"Authorization": f"Bearer {SECRETS['admin']}"}).json()["items"]
    assert first == [True] and second is False  # Ravi is told it is no longer open
    assert (closed["closed_by"], closed["resolution"]) == ("Asha", "refunded")
    assert datetime.fromisoformat(closed["closed_at"]) == T0 + timedelta(hours=1)


def test_a_second_orders_failed_delivery_puts_a_retention_customer_back_in_post_purchase():
    """Order A delivered (retention), order B still on its way fails: B's case belongs to the
    post-purchase owner, so the fulfilment moves the customer back; a payment does not."""
    from connector import events as ev
    from connector.handoffs import stage_after

    at = T0
    failed = ev.FulfillmentUpdated(fulfillment=ev.Fulfillment(external_id="B1", order_external_id="B", status="success",
                                                              shipment_status=ev.ShipmentStatus.FAILURE, created_at=at, updated_at=at))
    assert stage_after(failed, "retention") == "post_purchase"
    assert stage_after(ev.OrderPaid(order=_order_event("A", at)), "retention") is None


def test_a_card_payment_authorised_for_capture_later_puts_her_in_post_purchase_not_conversion():
    """Manual capture: the order is placed with its payment authorised, paid as far as she knows; her questions
    belong to post-purchase (before, she sat in conversion, with the checkout desk, until the store captured)."""
    from connector import events as ev
    from connector.handoffs import stage_after

    order = _order_event("A", T0).model_copy(update={"payment_state": ev.PaymentState.AUTHORIZED, "is_cod": False})
    assert stage_after(ev.OrderPlaced(order=order), "entry") == "post_purchase"
    assert stage_after(ev.OrderUpdated(order=order), "conversion") == "post_purchase"



def _order_event(external_id: str, at: datetime):
    from decimal import Decimal

    from connector import events as ev

    return ev.Order(external_id=external_id, name=f"#{external_id}", created_at=at, updated_at=at, payment_state=ev.PaymentState.PAID,
                    is_cod=True, total=Decimal("499"), currency="INR", customer=ev.Customer())

