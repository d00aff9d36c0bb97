"""Shopify Admin GraphQL client against a respx-routed fake shop: request shapes, userErrors,
THROTTLED in both forms, HTTP and transport failures, orderCancel idempotence, note
appending and budget pacing."""

from __future__ import annotations

import asyncio
import json
from datetime import datetime, timezone
from typing import Any

import httpx
import pytest
import respx

from adapters.shopify.client import ShopifyAdminClient, ThrottleStatus, order_gid
from connector.config import ShopifyStore
from connector.errors import PermanentError, RetryableError, SendError
from connector.store_writer import StoreWriter

TOKEN = "shpat_0123456789abcdefSECRETtoken0123456789"
SHOP = "demo-shop.myshopify.com"
ENDPOINT = f"https://{SHOP}/admin/api/2026-07/graphql.json"
ORDER_ID = "820982911946154508"
GID = f"gid://shopify/Order/{ORDER_ID}"


def make_store(**kw: Any) -> ShopifyStore:
    data = {"key": "demo", "platform": "shopify", "shop_domain": SHOP, "webhook_secret": "whsec", "access_token": TOKEN}
    data.update(kw)
    return ShopifyStore.model_validate(data)


def cost(requested: float = 10, available: float = 990, rate: float = 50, maximum: float = 1000, actual: float | None = 10):
    return {"cost": {"requestedQueryCost": requested, "actualQueryCost": actual,
                     "throttleStatus": {"maximumAvailable": maximum, "currentlyAvailable": available, "restoreRate": rate}}}


def ok(data: dict, **kw: Any) -> httpx.Response:
    return httpx.Response(200, json={"data": data, "extensions": cost(**kw)}, headers={"X-Request-Id": "req-abc-123"})


THROTTLED_BODY = {
    "errors": [{"message": "Throttled", "extensions": {"code": "THROTTLED",
                "documentation": "https://shopify.dev/api/usage/rate-limits"}}],
    "extensions": cost(requested=202, available=52, rate=50, maximum=1000, actual=None),
}


def run(coro_fn, *responses: Any, client_kw: dict | None = None, store: ShopifyStore | None = None):
    """Run ``coro_fn(client)`` against the mocked endpoint; return (result or SendError, route, client)."""
    holder: dict[str, Any] = {}

    async def go():
        client = ShopifyAdminClient(store or make_store(), **(client_kw or {}))
        holder["client"] = client
        try:
            return await coro_fn(client)
        except SendError as exc:
            return exc
        finally:
            await client.aclose()

    with respx.mock(assert_all_called=False) as mock:
        route = mock.post(ENDPOINT)
        route.side_effect = list(responses)
        result = asyncio.run(go())
    return result, route, holder["client"]


def sent(route: respx.Route, i: int = -1) -> dict:
    return json.loads(route.calls[i].request.content)


def assert_clean(exc: BaseException) -> None:
    assert TOKEN not in str(exc) and TOKEN not in repr(exc)


def test_is_a_store_writer():
    assert isinstance(ShopifyAdminClient(make_store()), StoreWriter)


def test_order_gid():
    assert order_gid(ORDER_ID) == GID
    assert order_gid(GID) == GID
    with pytest.raises(PermanentError):
        order_gid("12; drop")


def test_tags_add_request_shape():
    resp = ok({"tagsAdd": {"node": {"id": GID}, "userErrors": []}})
    result, route, client = run(lambda c: c.add_tags(ORDER_ID, ["cod-confirmed", " whatsapp ", "cod-confirmed", ""]), resp)
    assert result is None
    req = route.calls.last.request
    assert str(req.url) == ENDPOINT
    assert req.method == "POST"
    assert req.headers["X-Shopify-Access-Token"] == TOKEN
    assert req.headers["Content-Type"] == "application/json"
    body = sent(route)
    assert "tagsAdd(id: $id, tags: $tags)" in body["query"]
    assert body["variables"] == {"id": GID, "tags": ["cod-confirmed", "whatsapp"]}
    # the throttle status is kept for pacing
    assert client.throttle is not None
    assert (client.throttle.currently_available, client.throttle.restore_rate, client.throttle.maximum_available) == (990, 50, 1000)


def test_tags_add_nothing_to_add_makes_no_call():
    result, route, _ = run(lambda c: c.add_tags(ORDER_ID, ["", "  "]))
    assert result is None and route.call_count == 0


def test_tags_add_user_errors_are_permanent():
    resp = ok({"tagsAdd": {"node": None, "userErrors": [{"field": ["id"], "message": "Order does not exist"}]}})
    result, _, _ = run(lambda c: c.add_tags(ORDER_ID, ["x"]), resp)
    assert isinstance(result, PermanentError)
    assert "id: Order does not exist" in str(result)
    assert_clean(result)


@pytest.mark.parametrize("status", [200, 429])
def test_throttled_is_retryable_with_computed_wait(status):
    resp = httpx.Response(status, json=THROTTLED_BODY)
    result, _, client = run(lambda c: c.add_tags(ORDER_ID, ["x"]), resp)
    assert isinstance(result, RetryableError)
    assert result.code is None
    # (requested 202 - available 52) / restoreRate 50 = 3.0 s
    assert result.retry_after == pytest.approx(3.0)
    assert result.http_status == status
    assert "THROTTLED" in str(result)
    assert client.throttle is not None and client.throttle.currently_available == 52
    assert_clean(result)


def test_throttled_wait_is_clamped():
    low = {**THROTTLED_BODY, "extensions": cost(requested=60, available=55, rate=50, actual=None)}
    high = {**THROTTLED_BODY, "extensions": cost(requested=1000, available=0, rate=10, actual=None)}
    r1, _, _ = run(lambda c: c.add_tags(ORDER_ID, ["x"]), httpx.Response(200, json=low))
    r2, _, _ = run(lambda c: c.add_tags(ORDER_ID, ["x"]), httpx.Response(200, json=high))
    assert r1.retry_after == 0.5
    assert r2.retry_after == 60.0


def test_429_with_retry_after():
    result, _, _ = run(lambda c: c.add_tags(ORDER_ID, ["x"]), httpx.Response(429, headers={"Retry-After": "2.0"}, text="Too Many"))
    assert isinstance(result, RetryableError)
    assert result.retry_after == 2.0 and result.http_status == 429


@pytest.mark.parametrize("status", [500, 502, 503])
def test_5xx_is_retryable(status):
    result, _, _ = run(lambda c: c.add_tags(ORDER_ID, ["x"]),
                       httpx.Response(status, text="<html>oops " + TOKEN + "</html>", headers={"X-Request-Id": "r-1"}))
    assert isinstance(result, RetryableError)
    assert result.http_status == status and result.trace_id == "r-1"
    assert not result.outcome_unknown
    assert_clean(result)


def test_read_timeout_is_retryable_outcome_unknown():
    result, _, _ = run(lambda c: c.add_tags(ORDER_ID, ["x"]), httpx.ReadTimeout("timed out"))
    assert isinstance(result, RetryableError)
    assert result.outcome_unknown
    assert_clean(result)


def test_connect_error_is_retryable_and_not_sent():
    result, _, _ = run(lambda c: c.add_tags(ORDER_ID, ["x"]), httpx.ConnectError("refused"))
    assert isinstance(result, RetryableError) and not result.outcome_unknown


def test_401_is_permanent_and_clean():
    body = {"errors": f"[API] Invalid API key or access token (unrecognized login or wrong password) {TOKEN}"}
    result, _, _ = run(lambda c: c.add_tags(ORDER_ID, ["x"]), httpx.Response(401, json=body))
    assert isinstance(result, PermanentError)
    assert result.http_status == 401 and "401" in str(result)
    assert_clean(result)


def test_403_is_permanent():
    result, _, _ = run(lambda c: c.add_tags(ORDER_ID, ["x"]), httpx.Response(403, json={"errors": "forbidden"}))
    assert isinstance(result, PermanentError) and "scope" in str(result)


def test_graphql_error_is_permanent_with_short_message():
    body = {"errors": [{"message": "Field 'nope' doesn't exist on type 'Order' " + "x" * 500,
                        "locations": [{"line": 1, "column": 2}], "extensions": {"code": "undefinedField"}}]}
    result, _, _ = run(lambda c: c.graphql("{ order(id: \"x\") { nope } }"), httpx.Response(200, json=body))
    assert isinstance(result, PermanentError)
    assert "Field 'nope' doesn't exist" in str(result)
    assert len(str(result)) < 260


def test_graphql_access_denied_is_permanent():
    body = {"errors": [{"message": "Access denied for tagsAdd field.", "extensions": {"code": "ACCESS_DENIED"}}],
            "data": {"tagsAdd": None}}
    result, _, _ = run(lambda c: c.add_tags(ORDER_ID, ["x"]), httpx.Response(200, json=body))
    assert isinstance(result, PermanentError) and "ACCESS_DENIED" in str(result)


def test_graphql_internal_error_is_retryable():
    body = {"errors": [{"message": "Internal error. Looks like something went wrong on our end.",
                        "extensions": {"code": "INTERNAL_SERVER_ERROR"}}]}
    result, _, _ = run(lambda c: c.add_tags(ORDER_ID, ["x"]), httpx.Response(200, json=body))
    assert isinstance(result, RetryableError) and result.outcome_unknown


def test_unreadable_2xx_is_outcome_unknown():
    result, _, _ = run(lambda c: c.add_tags(ORDER_ID, ["x"]), httpx.Response(200, text="<html>proxy</html>"))
    assert isinstance(result, PermanentError) and result.outcome_unknown


def test_no_access_token_is_permanent_without_a_call():
    result, route, _ = run(lambda c: c.add_tags(ORDER_ID, ["x"]), store=make_store(access_token=None))
    assert isinstance(result, PermanentError) and route.call_count == 0


def test_graphql_returns_data():
    result, route, _ = run(lambda c: c.graphql("query { shop { name } }", {"a": 1}), ok({"shop": {"name": "Demo"}}))
    assert result == {"shop": {"name": "Demo"}}
    assert sent(route) == {"query": "query { shop { name } }", "variables": {"a": 1}}


# ---------------------------------------------------------------- orderCancel


QUEUED = ok({"orderCancel": {"job": {"id": "gid://shopify/Job/1", "done": False}, "orderCancelUserErrors": []}})


def job(done: bool) -> httpx.Response:
    return ok({"job": {"id": "gid://shopify/Job/1", "done": done}})


def order_cancelled_at(when: str | None) -> httpx.Response:
    return ok({"order": {"id": GID, "cancelledAt": when}})


class Pauses:
    def __init__(self) -> None:
        self.taken: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.taken.append(seconds)


def test_order_cancel_shape():
    result, route, _ = run(lambda c: c.cancel_order(ORDER_ID, reason="customer", notify_customer=True,
                                                     staff_note="COD not confirmed on WhatsApp"),
                           QUEUED, job(True), order_cancelled_at("2026-09-01T10:00:00Z"), client_kw={"sleep": Pauses()})
    assert result is None
    body = sent(route, 0)
    assert "orderCancel(orderId: $orderId" in body["query"]
    assert "refundMethod: $refundMethod" in body["query"]
    assert "refund:" not in body["query"]  # the deprecated Boolean argument
    assert body["variables"] == {
        "orderId": GID,
        "reason": "CUSTOMER",
        "refundMethod": {"originalPaymentMethodsRefund": False},
        "restock": True,
        "notifyCustomer": True,
        "staffNote": "COD not confirmed on WhatsApp",
    }


@pytest.mark.parametrize("ours,theirs", [("declined", "DECLINED"), ("fraud", "FRAUD"), ("inventory", "INVENTORY"),
                                          ("staff", "STAFF"), ("other", "OTHER"), ("Customer", "CUSTOMER")])
def test_order_cancel_reasons(ours, theirs):
    _, route, _ = run(lambda c: c.cancel_order(ORDER_ID, reason=ours, notify_customer=False, staff_note=None),
                      QUEUED, job(True), order_cancelled_at("2026-09-01T10:00:00Z"), client_kw={"sleep": Pauses()})
    assert sent(route, 0)["variables"]["reason"] == theirs
    assert sent(route, 0)["variables"]["staffNote"] is None


def test_order_cancel_waits_for_shopifys_job_and_reads_the_order():
    """The cancel is a job at Shopify: done only when the job is, and the order says so."""
    pauses = Pauses()
    result, route, _ = run(lambda c: c.cancel_order(ORDER_ID, reason="customer", notify_customer=False, staff_note=None),
                           QUEUED, job(False), job(True), order_cancelled_at("2026-09-01T10:00:00Z"), client_kw={"sleep": pauses})
    assert result is None
    assert [("job(" in sent(route, i)["query"], "cancelledAt" in sent(route, i)["query"]) for i in (1, 2, 3)] == [
        (True, False), (True, False), (False, True)]
    assert sent(route, 1)["variables"] == {"id": "gid://shopify/Job/1"} and pauses.taken == [0.5, 1.0]


def test_a_cancel_job_that_ends_without_cancelling_is_a_failed_write_back():
    """Shopify accepted the mutation, then its job could not cancel (an open return, a payment in
    flight): the order ships unless someone is told, so this is a failure, not a success."""
    result, _, _ = run(lambda c: c.cancel_order(ORDER_ID, reason="customer", notify_customer=False, staff_note=None),
                       QUEUED, job(True), order_cancelled_at(None), client_kw={"sleep": Pauses()})
    assert isinstance(result, PermanentError) and not result.outcome_unknown
    assert "cancel job ended without cancelling the order" in str(result)


def test_a_cancel_job_still_running_is_retried_and_the_retry_reads_the_order_first():
    pauses = Pauses()
    result, route, _ = run(lambda c: c.cancel_order(ORDER_ID, reason="customer", notify_customer=False, staff_note=None),
                           QUEUED, *[job(False)] * 5, order_cancelled_at(None), client_kw={"sleep": pauses})
    assert isinstance(result, RetryableError) and result.outcome_unknown
    assert sum(pauses.taken) == 15.5 and route.call_count == 7
    # the retry: the job has cancelled it meanwhile, so no second orderCancel
    since = datetime(2026, 9, 1, tzinfo=timezone.utc)
    result, route, _ = run(lambda c: c.cancel_order(ORDER_ID, reason="customer", notify_customer=False, staff_note=None,
                                                    unless_since=since), order_cancelled_at("2026-09-01T10:00:05Z"))
    assert result is None and route.call_count == 1 and "orderCancel(" not in sent(route, 0)["query"]


def test_order_cancel_unknown_reason_is_permanent_without_a_call():
    result, route, _ = run(lambda c: c.cancel_order(ORDER_ID, reason="bored", notify_customer=False, staff_note=None))
    assert isinstance(result, PermanentError) and route.call_count == 0


def test_order_cancel_already_cancelled_is_a_no_op():
    err = ok({"orderCancel": {"job": None, "orderCancelUserErrors": [
        {"field": ["orderId"], "message": "Order has already been cancelled", "code": "INVALID"}]}})
    check = ok({"order": {"id": GID, "cancelledAt": "2026-09-01T10:00:00Z"}})
    result, route, _ = run(lambda c: c.cancel_order(ORDER_ID, reason="customer", notify_customer=False, staff_note=None),
                           err, check)
    assert result is None
    assert route.call_count == 2
    assert "cancelledAt" in sent(route, 1)["query"]
    assert sent(route, 1)["variables"] == {"id": GID}


def test_order_cancel_user_error_on_a_live_order_is_permanent():
    err = ok({"orderCancel": {"job": None, "orderCancelUserErrors": [
        {"field": ["orderId"], "message": "Cannot cancel an order with pending payment authorizations", "code": "INVALID"}]}})
    check = ok({"order": {"id": GID, "cancelledAt": None}})
    result, _, _ = run(lambda c: c.cancel_order(ORDER_ID, reason="customer", notify_customer=False, staff_note=None),
                       err, check)
    assert isinstance(result, PermanentError)
    assert "[INVALID] orderId: Cannot cancel" in str(result)


def test_order_cancel_not_found_is_permanent_without_a_check():
    err = ok({"orderCancel": {"job": None, "orderCancelUserErrors": [
        {"field": ["orderId"], "message": "Order not found", "code": "NOT_FOUND"}]}})
    result, route, _ = run(lambda c: c.cancel_order(ORDER_ID, reason="other", notify_customer=False, staff_note=None), err)
    assert isinstance(result, PermanentError) and route.call_count == 1


# ---------------------------------------------------------------- notes and status


def test_add_note_appends_a_line():
    read = ok({"order": {"id": GID, "note": "Leave at the door"}})
    write = ok({"orderUpdate": {"order": {"id": GID}, "userErrors": []}})
    result, route, _ = run(lambda c: c.add_note(ORDER_ID, "storeloop: COD confirmed via WhatsApp"), read, write)
    assert result is None
    assert route.call_count == 2
    assert sent(route, 0)["variables"] == {"id": GID}
    assert "note" in sent(route, 0)["query"]
    update = sent(route, 1)
    assert "orderUpdate(input: $input)" in update["query"]
    assert update["variables"] == {"input": {"id": GID, "note": "Leave at the door\nstoreloop: COD confirmed via WhatsApp"}}


def test_add_note_on_an_empty_note():
    read = ok({"order": {"id": GID, "note": None}})
    write = ok({"orderUpdate": {"order": {"id": GID}, "userErrors": []}})
    _, route, _ = run(lambda c: c.add_note(ORDER_ID, "first"), read, write)
    assert sent(route, 1)["variables"]["input"]["note"] == "first"


def test_add_note_already_present_is_a_no_op():
    read = ok({"order": {"id": GID, "note": "Leave at the door\nstoreloop: COD confirmed"}})
    result, route, _ = run(lambda c: c.add_note(ORDER_ID, "storeloop: COD confirmed"), read)
    assert result is None and route.call_count == 1


def test_add_note_user_errors_are_permanent():
    read = ok({"order": {"id": GID, "note": ""}})
    write = ok({"orderUpdate": {"order": None, "userErrors": [{"field": ["note"], "message": "Note is too long"}]}})
    result, _, _ = run(lambda c: c.add_note(ORDER_ID, "x"), read, write)
    assert isinstance(result, PermanentError) and "note: Note is too long" in str(result)


def test_add_note_missing_order_is_permanent():
    result, _, _ = run(lambda c: c.add_note(ORDER_ID, "x"), ok({"order": None}))
    assert isinstance(result, PermanentError)


def test_set_status_is_not_supported():
    result, route, _ = run(lambda c: c.set_status(ORDER_ID, "cancelled"))
    assert isinstance(result, PermanentError) and "no settable status" in str(result)
    assert route.call_count == 0


# ---------------------------------------------------------------- pacing


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


def test_wait_for_budget_sleeps_the_computed_time():
    clock = FakeClock()

    async def scenario(c: ShopifyAdminClient):
        assert await c.wait_for_budget(100) == 0.0  # nothing known yet: no wait
        await c.graphql("query { shop { name } }")  # bucket: 50 of 1000, +50/s
        clock.now += 0.2  # refilled to 60
        first = await c.wait_for_budget(100)  # needs 40 more: 0.8 s
        second = await c.wait_for_budget(50)  # the first took the bucket: 50 more needed
        return first, second

    result, _, client = run(scenario, ok({"shop": {"name": "x"}}, available=50, rate=50, maximum=1000),
                            client_kw={"sleep": clock.sleep, "clock": clock})
    assert result == (pytest.approx(0.8), pytest.approx(1.0))
    assert clock.sleeps == [pytest.approx(0.8), pytest.approx(1.0)]
    assert client.throttle == ThrottleStatus(1000, 50, 50, 1000.0)


def test_wait_for_budget_no_sleep_when_enough():
    clock = FakeClock()

    async def scenario(c: ShopifyAdminClient):
        await c.graphql("query { shop { name } }")
        return await c.wait_for_budget(100)

    result, _, _ = run(scenario, ok({"shop": {"name": "x"}}, available=900), client_kw={"sleep": clock.sleep, "clock": clock})
    assert result == 0.0 and clock.sleeps == []


def test_repr_has_no_token():
    assert TOKEN not in repr(ShopifyAdminClient(make_store()))
