"""Store write-backs through the outbox, against respx fakes of the Shopify Admin GraphQL and
WooCommerce REST APIs: what is retried (and when), what ends failed, and the attempt rows
that say why (the audit trail a merchant reads when a tag is missing)."""

from __future__ import annotations

import asyncio
import json
import random
from datetime import datetime, timedelta, timezone

import httpx
import pytest
import respx
from sqlalchemy import select

from adapters.shopify.client import ShopifyAdminClient
from adapters.woocommerce.client import WooCommerceClient
from connector.config import parse_settings
from connector.outbox import store as ob
from connector.outbox.writebacks import WriteBackDispatcher
from connector.storage.inbox import sync_stores
from connector.storage.sql import ATTEMPTS, OUTBOX
from tests.conftest import settings_dict

T0 = datetime(2026, 11, 20, 6, 30, tzinfo=timezone.utc)
GRAPHQL = "https://shop-a.example/admin/api/2026-07/graphql.json"
WOO = "https://bloom.example/wp-json/wc/v3"
TAGGED = {"data": {"tagsAdd": {"node": {"id": "gid://shopify/Order/1042"}, "userErrors": []}}}


class Clock:
    def __init__(self, now: datetime):
        self.now = now

    def __call__(self) -> datetime:
        return self.now


def throttled(requested: float, available: float, rate: float) -> dict:
    return {"errors": [{"message": "Throttled", "extensions": {"code": "THROTTLED"}}],
            "extensions": {"cost": {"requestedQueryCost": requested, "actualQueryCost": None,
                                    "throttleStatus": {"maximumAvailable": 1000.0, "currentlyAvailable": available, "restoreRate": rate}}}}


@pytest.fixture
def world(db, db_url):
    """Two stores with API credentials, their clients, a clock and a dispatcher retrying at most 3 times."""
    raw = settings_dict(db_url)
    raw["whatsapp"].update(max_attempts=3, backoff_base_seconds=2)
    raw["stores"][0].update(access_token="shpat_test", api_base_url="https://shop-a.example")
    raw["stores"][2].update(consumer_key="ck_test", consumer_secret="cs_test")
    settings = parse_settings(raw, environ={})
    ids = sync_stores(db, [(s.key, s.platform) for s in settings.stores])
    clients = {ids["shop-a"]: ShopifyAdminClient(settings.store("shop-a")), ids["woo"]: WooCommerceClient(settings.store("woo"))}
    clock = Clock(T0)
    dispatcher = WriteBackDispatcher(db, settings, ids, clients, clock=clock, rng=random.Random(0))
    yield db, ids, clock, dispatcher
    for c in clients.values():
        asyncio.run(c.aclose())


def queue(db, store_id: int, action: str, args: dict, order_id: str = "1042", step: str = "confirm_tag") -> int:
    """The row the journey runner writes for a ``WriteBack`` command."""
    with db.engine.begin() as conn:
        ob.enqueue(conn, store_id=store_id, key=f"cod_confirmation:writeback:{step}:order:{order_id}", contact_id=None,
                   journey="cod_confirmation", step=step, category=None, channel="store",
                   payload={"subject": f"order:{order_id}", "action": action, "order_id": order_id, "args": args},
                   due_at=T0, now=T0)
        return conn.execute(select(OUTBOX.c.id).where(OUTBOX.c.store_id == store_id, OUTBOX.c.step == step)).scalar_one()


def outbox(db, oid: int):
    with db.engine.connect() as conn:
        row = conn.execute(select(OUTBOX).where(OUTBOX.c.id == oid)).one()
        trail = conn.execute(select(ATTEMPTS.c.outcome, ATTEMPTS.c.error_code, ATTEMPTS.c.error_detail)
                             .where(ATTEMPTS.c.outbox_id == oid).order_by(ATTEMPTS.c.id)).all()
    return row, [tuple(t) for t in trail]


def run(dispatcher) -> int:
    return asyncio.run(dispatcher.run_once())


def test_shopify_throttled_then_5xx_is_retried_at_durable_times_until_the_tag_is_written(world):
    db, ids, clock, dispatcher = world
    oid = queue(db, ids["shop-a"], "add_tags", {"tags": ["cod-confirmed"]})
    with respx.mock(assert_all_called=True) as shopify:
        route = shopify.post(GRAPHQL).mock(side_effect=[
            httpx.Response(200, json=throttled(requested=1000, available=0, rate=50)),  # the bucket needs 20 s
            httpx.Response(503, headers={"X-Request-Id": "req-503"}),
            httpx.Response(200, json=TAGGED),
        ])
        assert run(dispatcher) == 1
        first, _ = outbox(db, oid)
        clock.now = T0 + timedelta(seconds=19)
        assert run(dispatcher) == 0  # not before the cost bucket has refilled
        clock.now = T0 + timedelta(seconds=20)
        assert run(dispatcher) == 1
        second, _ = outbox(db, oid)
        clock.now = second.due_at
        assert run(dispatcher) == 1
        clock.now += timedelta(hours=1)
        assert run(dispatcher) == 0  # written once: nothing left
    row, trail = outbox(db, oid)
    assert (first.status, first.due_at) == ("pending", T0 + timedelta(seconds=20))
    assert second.status == "pending" and T0 + timedelta(seconds=21) <= second.due_at <= T0 + timedelta(seconds=24)
    assert (row.status, row.attempts, row.last_error) == ("sent", 3, None)
    assert [t[0] for t in trail] == ["retry", "retry", "sent"]
    assert "THROTTLED" in trail[0][2] and "retry in 20.0 s" in trail[0][2]
    assert trail[1][1:] == (503, "HTTP 503 from Shopify")
    assert route.call_count == 3
    assert all(json.loads(c.request.content)["variables"] == {"id": "gid://shopify/Order/1042", "tags": ["cod-confirmed"]}
               for c in route.calls)


def test_shopify_user_errors_end_failed_with_the_reason_and_are_not_retried(world):
    db, ids, clock, dispatcher = world
    oid = queue(db, ids["shop-a"], "add_tags", {"tags": ["cod-confirmed"]})
    with respx.mock(assert_all_called=True) as shopify:
        route = shopify.post(GRAPHQL).respond(json={"data": {"tagsAdd": {"node": None, "userErrors": [
            {"field": ["id"], "message": "Order does not exist"}]}}})
        run(dispatcher)
        clock.now = T0 + timedelta(days=1)
        assert run(dispatcher) == 0
    row, trail = outbox(db, oid)
    assert row.status == "failed" and "Order does not exist" in row.last_error
    assert trail == [("failed", None, row.last_error)]
    assert route.call_count == 1


def test_shopify_5xx_every_time_gives_up_after_max_attempts_with_every_attempt_recorded(world):
    db, ids, clock, dispatcher = world
    oid = queue(db, ids["shop-a"], "cancel_order", {"reason": "customer", "notify_customer": False, "staff_note": "Cancelled on WhatsApp"},
                step="cancel")
    with respx.mock(assert_all_called=True) as shopify:
        route = shopify.post(GRAPHQL).respond(502)
        for _ in range(5):
            run(dispatcher)
            clock.now += timedelta(minutes=10)
    row, trail = outbox(db, oid)
    assert row.status == "failed" and row.attempts == 3 and row.last_error.startswith("gave up")
    assert [t[:2] for t in trail] == [("retry", 502), ("retry", 502), ("failed", 502)]
    assert route.call_count == 3


def test_shopify_answer_that_is_not_json_is_retried_since_write_backs_are_idempotent(world):
    """A 200 with a proxy's HTML page: the tag may or may not be on the order; tagsAdd is a set, so try again."""
    db, ids, clock, dispatcher = world
    oid = queue(db, ids["shop-a"], "add_tags", {"tags": ["cod-confirmed"]})
    with respx.mock(assert_all_called=True) as shopify:
        shopify.post(GRAPHQL).mock(side_effect=[httpx.Response(200, text="<html>Checking your browser</html>"),
                                                httpx.Response(200, json=TAGGED)])
        run(dispatcher)
        clock.now += timedelta(minutes=1)
        run(dispatcher)
    row, trail = outbox(db, oid)
    assert row.status == "sent" and [t[0] for t in trail] == ["retry", "sent"]
    assert "not a JSON object" in trail[0][2]


def test_woocommerce_503_is_retried_after_its_retry_after_and_a_404_ends_failed(world):
    db, ids, clock, dispatcher = world
    status = queue(db, ids["woo"], "set_status", {"status": "processing"}, order_id="727", step="confirm_status")
    gone = queue(db, ids["woo"], "add_note", {"note": "Confirmed on WhatsApp"}, order_id="728", step="note")
    with respx.mock(assert_all_called=True) as woo:
        woo.get(f"{WOO}/orders/727").respond(json={"id": 727, "status": "on-hold"})  # read before the move
        put = woo.put(f"{WOO}/orders/727").mock(side_effect=[
            httpx.Response(503, headers={"Retry-After": "120"}, json={"code": "maintenance"}),
            httpx.Response(200, json={"id": 727, "status": "processing"}),
        ])
        note = woo.post(f"{WOO}/orders/728/notes").respond(404, json={"code": "woocommerce_rest_shop_order_invalid_id", "message": "Invalid ID."})
        assert run(dispatcher) == 2
        clock.now = T0 + timedelta(seconds=119)
        assert run(dispatcher) == 0  # WooCommerce asked for two minutes
        clock.now = T0 + timedelta(seconds=120)
        assert run(dispatcher) == 1
    row, trail = outbox(db, status)
    assert (row.status, row.attempts) == ("sent", 2)
    assert trail[0][:2] == ("retry", 503) and "service unavailable" in trail[0][2] and trail[1][0] == "sent"
    assert [json.loads(c.request.content) for c in put.calls] == [{"status": "processing"}] * 2
    failed, failed_trail = outbox(db, gone)
    assert failed.status == "failed" and failed.last_error == "HTTP 404, woocommerce_rest_shop_order_invalid_id (not found)"
    assert failed_trail == [("failed", 404, failed.last_error)]
    assert note.call_count == 1


def test_a_woocommerce_note_whose_answer_was_lost_is_not_written_twice(world):
    """The note's POST timed out after WooCommerce had saved it (outcome unknown): the retry reads the order's notes,
    finds it, and writes nothing more; the audit trail shows the unknown try and the retry that found it."""
    db, ids, clock, dispatcher = world
    oid = queue(db, ids["woo"], "add_note", {"note": "Failed delivery: the customer asked to reschedule"}, order_id="727", step="ndr")
    saved = [{"note": "Failed delivery: the customer asked to reschedule", "date_created_gmt": (T0 + timedelta(seconds=2)).strftime("%Y-%m-%dT%H:%M:%S")}]
    with respx.mock(assert_all_called=True) as woo:
        post = woo.post(f"{WOO}/orders/727/notes").mock(side_effect=httpx.ReadTimeout("read timed out"))
        listed = woo.get(f"{WOO}/orders/727/notes").respond(200, json=saved)
        assert run(dispatcher) == 1
        row, _ = outbox(db, oid)
        clock.now = row.due_at
        assert run(dispatcher) == 1
    row, trail = outbox(db, oid)
    assert (row.status, row.attempts) == ("sent", 2)
    assert post.call_count == 1 and listed.call_count == 1
    assert [t[0] for t in trail] == ["retry", "sent"] and "outcome unknown" in trail[0][2]


def test_a_store_without_a_writer_fails_its_row_and_never_touches_another_stores_api(world):
    db, ids, clock, dispatcher = world
    oid = queue(db, ids["shop-b"], "add_tags", {"tags": ["cod-confirmed"]})  # shop-b has no credentials here
    with respx.mock(assert_all_called=False) as anything:
        route = anything.route().respond(200, json=TAGGED)
        run(dispatcher)
    row, trail = outbox(db, oid)
    assert row.status == "failed" and "cannot perform 'add_tags'" in row.last_error
    assert trail == [("failed", None, row.last_error)] and route.call_count == 0


def test_a_write_back_whose_worker_died_mid_call_counts_that_attempt_and_is_written_once_after(world):
    """The worker claimed the row (lease) and died during the call: when the lease runs out the
    idempotent write-back is due again, and the lost call counts toward ``max_attempts``."""
    db, ids, clock, dispatcher = world
    oid = queue(db, ids["shop-a"], "add_tags", {"tags": ["cod-confirmed"]})
    with db.engine.begin() as conn:  # what the dead worker's claim left behind
        conn.execute(OUTBOX.update().where(OUTBOX.c.id == oid).values(status="sending", lease_until=T0 + timedelta(seconds=60)))
    clock.now = T0 + timedelta(minutes=5)
    with db.engine.begin() as conn:
        assert ob.expire_leases(conn, clock.now, channel="store") == 1
    row, _ = outbox(db, oid)
    assert (row.status, row.attempts) == ("pending", 1)
    with respx.mock(assert_all_called=True) as shopify:
        route = shopify.post(GRAPHQL).mock(return_value=httpx.Response(200, json=TAGGED))
        assert run(dispatcher) == 1
        clock.now += timedelta(hours=1)
        assert run(dispatcher) == 0
    row, trail = outbox(db, oid)
    assert (row.status, row.attempts) == ("sent", 2) and route.call_count == 1
    assert trail == [("uncertain", None, "worker stopped before recording the result"), ("sent", None, None)]  # the lost call is on record


def _stored_order(db, store_id: int, external_id: str, **state) -> None:
    """The order as the store's webhooks left it in our tables."""
    from decimal import Decimal

    from connector.storage import models as m

    with db.engine.begin() as conn:
        conn.execute(m.Order.__table__.insert().values(
            store_id=store_id, external_id=external_id, name=f"#{external_id}", payment_state="pending", is_cod=True,
            total=Decimal("499"), currency="INR", tags=[], test=False, placed_at=T0, source_updated_at=T0, updated_at=T0,
            **{"fulfillment_state": "unfulfilled", "cancelled_at": None, **state}))


def test_a_status_or_cancel_write_back_never_moves_an_order_that_shipped_or_was_cancelled_since_it_was_queued(world):
    """A Confirm's status (WooCommerce) queued just before the order shipped, and a no-answer
    cancel (Shopify) for an order the merchant cancelled meanwhile: skipped with the reason, no
    call to the store; a tag for the same shipped order still goes."""
    db, ids, clock, dispatcher = world
    _stored_order(db, ids["woo"], "727", fulfillment_state="fulfilled")
    _stored_order(db, ids["shop-a"], "1042", cancelled_at=T0)
    status = queue(db, ids["woo"], "set_status", {"status": "processing"}, order_id="727", step="confirm_status")
    tag = queue(db, ids["woo"], "add_tags", {"tags": ["cod-confirmed"]}, order_id="727", step="confirm_tag")
    cancel = queue(db, ids["shop-a"], "cancel_order", {"reason": "customer", "notify_customer": False, "staff_note": None},
                   order_id="1042", step="no_answer_cancel")
    with respx.mock(assert_all_called=False) as stores:
        put = stores.put(f"{WOO}/orders/727").respond(200, json={"id": 727})
        get = stores.get(f"{WOO}/orders/727").respond(200, json={"id": 727, "meta_data": []})
        notes = stores.post(f"{WOO}/orders/727/notes").respond(201, json={"id": 1})
        shopify = stores.post(GRAPHQL).respond(200, json={"data": {}})
        run(dispatcher)
    assert [(outbox(db, oid)[0].status, outbox(db, oid)[0].skip_reason) for oid in (status, cancel)] == [
        ("skipped", "order_shipped"), ("skipped", "order_cancelled")]
    assert outbox(db, tag)[0].status == "sent" and get.called and notes.called
    meta_puts = [json.loads(c.request.content) for c in put.calls]
    assert all("status" not in b for b in meta_puts) and not shopify.called



def handoffs(db) -> list:
    from connector.storage import models as m

    with db.engine.connect() as conn:
        return conn.execute(select(m.Handoff.key, m.Handoff.reason, m.Handoff.journey, m.Handoff.subject, m.Handoff.stage,
                                   m.Handoff.status).order_by(m.Handoff.id)).all()


def test_a_cancel_the_store_refuses_goes_to_a_person_with_the_stores_answer(world):
    """The customer tapped Cancel; Shopify's cancel job ended without cancelling (an open return). Nobody
    would know, and the order would ship: a person takes it, with what the store said."""
    db, ids, clock, dispatcher = world
    oid = queue(db, ids["shop-a"], "cancel_order", {"reason": "customer", "notify_customer": False}, step="cancel")
    dispatcher.writers[ids["shop-a"]]._sleep = _no_pause  # type: ignore[attr-defined]
    with respx.mock(assert_all_called=True) as shopify:
        shopify.post(GRAPHQL).mock(side_effect=[
            httpx.Response(200, json={"data": {"orderCancel": {"job": {"id": "gid://shopify/Job/9", "done": True},
                                                               "orderCancelUserErrors": []}}}),
            httpx.Response(200, json={"data": {"order": {"id": "gid://shopify/Order/1042", "cancelledAt": None}}}),
        ])
        run(dispatcher)
    row, _ = outbox(db, oid)
    [case] = handoffs(db)
    assert row.status == "failed"
    assert case.key == f"writeback:{oid}" and (case.journey, case.subject, case.status) == ("cod_confirmation", "order:1042", "open")
    assert "did not take our cancel of order 1042" in case.reason and "cancel job ended without cancelling" in case.reason


def test_a_write_back_given_up_on_goes_to_a_person_and_one_that_lands_does_not(world):
    db, ids, clock, dispatcher = world
    given_up = queue(db, ids["woo"], "set_status", {"status": "processing"}, order_id="727", step="confirm_status")
    queue(db, ids["shop-a"], "add_tags", {"tags": ["cod-confirmed"]})
    with respx.mock(assert_all_called=True) as mock:
        mock.get(f"{WOO}/orders/727").respond(json={"id": 727, "status": "on-hold"})
        mock.put(f"{WOO}/orders/727").respond(503)
        mock.post(GRAPHQL).respond(json=TAGGED)
        for _ in range(3):
            run(dispatcher)
            clock.now += timedelta(minutes=10)
    [case] = handoffs(db)
    assert case.key == f"writeback:{given_up}" and "status processing of order 727" in case.reason
    assert "gave up after 3 attempts" in case.reason


async def _no_pause(_seconds: float) -> None:
    return None


def test_a_withdrawn_cancel_is_never_made_and_one_being_made_or_maybe_made_is_not_taken_back(world):
    """What a COD Confirm made in time can take back of a no-answer cancel (the runner reads the rows'
    states, then skips those still ``pending`` on the store channel, in one transaction): one still
    waiting is skipped with the reason and never claimed; one the dispatcher has claimed is being made
    (``sending``) and goes on; one whose earlier try timed out may have reached the store, so it reads
    ``uncertain``, and its retry goes on too."""
    db, ids, clock, dispatcher = world
    sid = ids["shop-a"]
    args = {"reason": "other", "notify_customer": True, "staff_note": "COD order not confirmed on WhatsApp"}
    maybe = queue(db, sid, "cancel_order", args, order_id="1041", step="cancel_a")
    with respx.mock(assert_all_called=True) as shopify:
        shopify.post(GRAPHQL).mock(side_effect=httpx.ReadTimeout("read timed out"))
        assert run(dispatcher) == 1
    claimed = queue(db, sid, "cancel_order", args, order_id="1042", step="cancel_b")
    waiting = queue(db, sid, "cancel_order", args, order_id="1043", step="cancel_c")
    [taken] = ob.claim(db, store_ids=[sid], now=clock.now, limit=1, lease=timedelta(minutes=5), worker="another-worker",
                       history_window=timedelta(0), channel="store")
    assert taken.id == claimed
    keys = {oid: outbox(db, oid)[0].idempotency_key for oid in (maybe, claimed, waiting)}
    with db.engine.begin() as conn:
        states = ob.writeback_states(conn, sid, list(keys.values()))
        ob.skip_pending(conn, sid, [k for k, s in states.items() if s == "pending"], "answered_in_time", clock.now, channel="store")
    assert states == {keys[maybe]: "uncertain", keys[claimed]: "sending", keys[waiting]: "pending"}
    rows = {oid: outbox(db, oid)[0] for oid in keys}
    assert (rows[waiting].status, rows[waiting].skip_reason) == ("skipped", "answered_in_time")
    assert (rows[claimed].status, rows[maybe].status) == ("sending", "pending")
    clock.now += timedelta(hours=1)  # the claim's lease ran out (its worker died) and the timed-out try is due again
    again = ob.claim(db, store_ids=[sid], now=clock.now, limit=10, lease=timedelta(minutes=5), worker="w", history_window=timedelta(0),
                     channel="store")
    assert sorted(r.id for r in again) == sorted([maybe, claimed])  # the withdrawn one is never made
