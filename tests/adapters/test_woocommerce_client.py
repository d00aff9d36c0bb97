"""WooCommerce REST client against a respx-routed fake store: Basic auth over HTTPS, OAuth 1.0a
query signing over plain HTTP (checked against a base string written out by hand), the
write-back request shapes, error classes and order paging."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
from datetime import datetime, timezone
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import httpx
import pytest
import respx

from adapters.woocommerce.client import WooCommerceClient, oauth1_signature
from connector.config import WooCommerceStore
from connector.errors import PermanentError, RetryableError, SendError
from connector.store_writer import StoreWriter

CK = "ck_4f1e2d3c4b5a69788796a5b4c3d2e1f0a9b8c7d6"
CS = "cs_9a8b7c6d5e4f3a2b1c0d9e8f7a6b5c4d3e2f1a0b"
HTTPS_BASE = "https://bloom.example/wp-json/wc/v3"
HTTP_BASE = "http://woo.test/wp-json/wc/v3"
TS = 1767225600
NONCE = "abc123"


def make_store(site: str = "https://bloom.example", **kw: Any) -> WooCommerceStore:
    data = {"key": "woo", "platform": "woocommerce", "site_url": site, "webhook_secret": "whsec",
            "consumer_key": CK, "consumer_secret": CS}
    data.update(kw)
    return WooCommerceStore.model_validate(data)


class Calls(list):
    """The requests made, in order (respx forgets its calls when the mock context ends)."""

    @property
    def calls(self) -> "Calls":
        return self

    @property
    def last(self) -> Any:
        return self[-1]


def run(coro_fn, routes: list[tuple[str, str, Any]], *, store: WooCommerceStore | None = None, status: str = "pending"):
    """Mock (method, url, response-or-list) routes, run ``coro_fn(client)``; return (result or SendError, calls).

    A read of one order that no route answers finds it in ``status`` (the read before a status move)."""

    async def go():
        client = WooCommerceClient(store or make_store(), clock=lambda: float(TS), nonce=lambda: NONCE)
        try:
            return await coro_fn(client)
        except SendError as exc:
            return exc
        finally:
            await client.aclose()

    with respx.mock(assert_all_called=False) as mock:
        for method, url, response in routes:
            route = mock.route(method=method, url=url)
            route.side_effect = response if isinstance(response, list) else [response]
        mock.route(method="GET", path__regex=r"/wp-json/wc/v3/orders/\d+$").mock(
            side_effect=lambda request: httpx.Response(200, json={"id": int(request.url.path.rsplit("/", 1)[1]), "status": status}))
        result = asyncio.run(go())
        calls = Calls(mock.calls)
    return result, calls


def body(request: httpx.Request) -> Any:
    return json.loads(request.content)


def assert_clean(exc: BaseException) -> None:
    for secret in (CS, CK):
        assert secret not in str(exc) and secret not in repr(exc)


def test_is_a_store_writer():
    assert isinstance(WooCommerceClient(make_store()), StoreWriter)


# ---------------------------------------------------------------- auth


def test_basic_auth_over_https():
    result, mock = run(lambda c: c.set_status("123", "cancelled"),
                       [("PUT", f"{HTTPS_BASE}/orders/123", httpx.Response(200, json={"id": 123, "status": "cancelled"}))])
    assert result is None
    req = mock.calls.last.request
    expected = "Basic " + base64.b64encode(f"{CK}:{CS}".encode()).decode()
    assert req.headers["Authorization"] == expected
    assert CK not in str(req.url) and CS not in str(req.url)
    assert req.url.query == b""


def test_oauth_signature_over_http_matches_a_hand_built_vector():
    store = make_store("http://woo.test")
    when = datetime(2026, 9, 1, 5, 30, tzinfo=timezone(__import__("datetime").timedelta(hours=5, minutes=30)))
    result, mock = run(lambda c: c.get_orders(when, page=2, per_page=50),
                       [("GET", f"{HTTP_BASE}/orders", httpx.Response(200, json=[], headers={"X-WP-TotalPages": "2"}))],
                       store=store)
    assert result == ([], 2)
    req = mock.calls.last.request
    assert "Authorization" not in req.headers
    parts = urlsplit(str(req.url))
    assert f"{parts.scheme}://{parts.netloc}{parts.path}" == f"{HTTP_BASE}/orders"
    query = dict(parse_qsl(parts.query))
    assert CS not in str(req.url)
    assert query["oauth_consumer_key"] == CK
    assert query["oauth_timestamp"] == str(TS)
    assert query["oauth_nonce"] == NONCE
    assert query["oauth_signature_method"] == "HMAC-SHA256"
    assert "oauth_version" not in query
    assert query["modified_after"] == "2026-09-01T00:00:00"  # 05:30 +05:30 in UTC
    # RFC 5849 style base string, written out by hand: sorted params, each pair encoded,
    # then the whole parameter string encoded once more (':' -> %3A -> %253A).
    base_string = (
        "GET&http%3A%2F%2Fwoo.test%2Fwp-json%2Fwc%2Fv3%2Forders&"
        "dates_are_gmt%3Dtrue"
        "%26modified_after%3D2026-09-01T00%253A00%253A00"
        f"%26oauth_consumer_key%3D{CK}"
        "%26oauth_nonce%3Dabc123"
        "%26oauth_signature_method%3DHMAC-SHA256"
        "%26oauth_timestamp%3D1767225600"
        "%26order%3Dasc"
        "%26orderby%3Did"
        "%26page%3D2"
        "%26per_page%3D50"
    )
    expected = base64.b64encode(hmac.new(f"{CS}&".encode(), base_string.encode(), hashlib.sha256).digest()).decode()
    assert query["oauth_signature"] == expected


def test_oauth_signature_function_known_vector():
    # Encodes reserved characters in keys and values (space -> %20, not '+'), sorts by key.
    params = {"b": "x y", "a": "1/2", "oauth_signature": "ignored"}
    base_string = "POST&http%3A%2F%2Fwoo.test%2Fp&a%3D1%252F2%26b%3Dx%2520y"
    expected = base64.b64encode(hmac.new(b"sec&", base_string.encode(), hashlib.sha256).digest()).decode()
    assert oauth1_signature("post", "http://woo.test/p", params, "sec") == expected


def test_oauth_signs_writes_with_their_method():
    store = make_store("http://woo.test")
    result, mock = run(lambda c: c.set_status("77", "on-hold"),
                       [("PUT", f"{HTTP_BASE}/orders/77", httpx.Response(200, json={"id": 77, "status": "on-hold"}))], store=store)
    assert result is None
    req = mock.calls.last.request
    query = dict(parse_qsl(urlsplit(str(req.url)).query))
    base_string = (
        "PUT&http%3A%2F%2Fwoo.test%2Fwp-json%2Fwc%2Fv3%2Forders%2F77&"
        f"oauth_consumer_key%3D{CK}%26oauth_nonce%3Dabc123%26oauth_signature_method%3DHMAC-SHA256"
        "%26oauth_timestamp%3D1767225600"
    )
    expected = base64.b64encode(hmac.new(f"{CS}&".encode(), base_string.encode(), hashlib.sha256).digest()).decode()
    assert query["oauth_signature"] == expected
    assert body(req) == {"status": "on-hold"}


def test_missing_keys_is_permanent_without_a_call():
    result, mock = run(lambda c: c.set_status("1", "cancelled"), [], store=make_store(consumer_key=None))
    assert isinstance(result, PermanentError) and not mock.calls


# ---------------------------------------------------------------- write-backs


def test_set_status_shape():
    result, mock = run(lambda c: c.set_status("123", "wc-processing"),
                       [("PUT", f"{HTTPS_BASE}/orders/123", httpx.Response(200, json={"id": 123, "status": "processing"}))])
    assert result is None
    assert body(mock.calls.last.request) == {"status": "processing"}


def test_non_numeric_order_id_is_permanent():
    result, mock = run(lambda c: c.set_status("../customers/1", "cancelled"), [])
    assert isinstance(result, PermanentError) and not mock.calls


def test_add_note_shape():
    result, mock = run(lambda c: c.add_note("123", "COD confirmed on WhatsApp"),
                       [("POST", f"{HTTPS_BASE}/orders/123/notes", httpx.Response(201, json={"id": 9}))])
    assert result is None
    assert body(mock.calls.last.request) == {"note": "COD confirmed on WhatsApp", "customer_note": False}


def test_a_retried_note_is_not_written_again_when_the_earlier_try_landed():
    """The first POST timed out after WooCommerce saved the note: the retry finds it (written since the write-back was
    queued) and writes nothing. The same words from before that (an earlier failed delivery's) are another note."""
    since = datetime(2026, 12, 6, 10, 0, tzinfo=timezone.utc)
    ours = [{"note": "Failed delivery: reschedule", "date_created_gmt": "2026-12-06T10:00:03"}]
    older = [{"note": "Failed delivery: reschedule", "date_created_gmt": "2026-12-04T09:00:00"}]
    _, landed = run(lambda c: c.add_note("123", "Failed delivery: reschedule", unless_since=since),
                    [("GET", f"{HTTPS_BASE}/orders/123/notes", httpx.Response(200, json=ours))])
    assert [c.request.method for c in landed.calls] == ["GET"]
    assert dict(landed.calls[0].request.url.params) == {"type": "internal", "_fields": "note,date_created_gmt"}
    _, lost = run(lambda c: c.add_note("123", "Failed delivery: reschedule", unless_since=since),
                  [("GET", f"{HTTPS_BASE}/orders/123/notes", httpx.Response(200, json=older)),
                   ("POST", f"{HTTPS_BASE}/orders/123/notes", httpx.Response(201, json={"id": 10}))])
    assert [c.request.method for c in lost.calls] == ["GET", "POST"]


def test_cancel_shape_with_staff_note():
    result, mock = run(
        lambda c: c.cancel_order("123", reason="customer", notify_customer=True, staff_note="Customer said no"),
        [("PUT", f"{HTTPS_BASE}/orders/123", httpx.Response(200, json={"id": 123, "status": "cancelled"})),
         ("POST", f"{HTTPS_BASE}/orders/123/notes", httpx.Response(201, json={"id": 9}))],
    )
    assert result is None
    calls = [(c.request.method, c.request.url.path, c.request.content and body(c.request)) for c in mock.calls]
    assert calls == [
        ("GET", "/wp-json/wc/v3/orders/123", b""),  # read first: only an order not yet shipped is cancelled
        ("PUT", "/wp-json/wc/v3/orders/123", {"status": "cancelled"}),
        ("POST", "/wp-json/wc/v3/orders/123/notes", {"note": "Customer said no", "customer_note": False}),
    ]


def test_cancel_without_staff_note_is_one_call():
    result, mock = run(lambda c: c.cancel_order("123", reason="other", notify_customer=False, staff_note=None),
                       [("PUT", f"{HTTPS_BASE}/orders/123", httpx.Response(200, json={"id": 123, "status": "cancelled"}))])
    assert result is None and [c.request.method for c in mock.calls] == ["GET", "PUT"]


def test_add_tags_note_and_merged_meta():
    order = {"id": 123, "meta_data": [{"id": 5, "key": "_other", "value": "v"},
                                      {"id": 6, "key": "_storeloop_tags", "value": "cod-asked"}]}
    result, mock = run(
        lambda c: c.add_tags("123", ["cod-confirmed", "cod-asked", "whatsapp"]),
        [("GET", f"{HTTPS_BASE}/orders/123", httpx.Response(200, json=order)),
         ("POST", f"{HTTPS_BASE}/orders/123/notes", httpx.Response(201, json={"id": 9})),
         ("PUT", f"{HTTPS_BASE}/orders/123", httpx.Response(200, json={"id": 123}))],
    )
    assert result is None
    get, note, put = (c.request for c in mock.calls)
    assert get.method == "GET" and get.url.params["_fields"] == "id,meta_data"
    assert body(note) == {"note": "storeloop tags: cod-confirmed, whatsapp", "customer_note": False}
    assert body(put) == {"meta_data": [{"key": "_storeloop_tags", "value": "cod-asked,cod-confirmed,whatsapp"}]}


def test_add_tags_on_an_untagged_order():
    result, mock = run(
        lambda c: c.add_tags("123", ["a", "b"]),
        [("GET", f"{HTTPS_BASE}/orders/123", httpx.Response(200, json={"id": 123, "meta_data": []})),
         ("POST", f"{HTTPS_BASE}/orders/123/notes", httpx.Response(201, json={"id": 9})),
         ("PUT", f"{HTTPS_BASE}/orders/123", httpx.Response(200, json={"id": 123}))],
    )
    assert result is None
    assert body(mock.calls[1].request)["note"] == "storeloop tags: a, b"
    assert body(mock.calls[2].request) == {"meta_data": [{"key": "_storeloop_tags", "value": "a,b"}]}


def test_add_tags_already_present_writes_nothing():
    order = {"id": 123, "meta_data": [{"id": 6, "key": "_storeloop_tags", "value": "a,b"}]}
    result, mock = run(lambda c: c.add_tags("123", ["b", "a"]),
                       [("GET", f"{HTTPS_BASE}/orders/123", httpx.Response(200, json=order))])
    assert result is None and len(mock.calls) == 1


# ---------------------------------------------------------------- errors


def test_429_with_retry_after_is_retryable():
    result, _ = run(lambda c: c.set_status("1", "cancelled"),
                    [("PUT", f"{HTTPS_BASE}/orders/1", httpx.Response(429, headers={"Retry-After": "30"}, text="slow down"))])
    assert isinstance(result, RetryableError)
    assert result.retry_after == 30 and result.http_status == 429


def test_503_with_retry_after_is_retryable():
    result, _ = run(lambda c: c.add_note("1", "x"),
                    [("POST", f"{HTTPS_BASE}/orders/1/notes", httpx.Response(503, headers={"Retry-After": "120"}))])
    assert isinstance(result, RetryableError) and result.retry_after == 120


def test_500_is_retryable():
    result, _ = run(lambda c: c.add_note("1", "x"),
                    [("POST", f"{HTTPS_BASE}/orders/1/notes", httpx.Response(500, json={
                        "code": "internal_server_error", "message": "There has been a critical error", "data": {"status": 500}}))])
    assert isinstance(result, RetryableError) and "internal_server_error" in str(result)


def test_404_is_permanent_with_the_code_not_the_body():
    resp = httpx.Response(404, json={"code": "woocommerce_rest_shop_order_invalid_id",
                                     "message": f"Invalid ID. jane@example.com {CS}", "data": {"status": 404}})
    result, _ = run(lambda c: c.set_status("999", "cancelled"), [("PUT", f"{HTTPS_BASE}/orders/999", resp)])
    assert isinstance(result, PermanentError)
    assert result.http_status == 404
    assert "woocommerce_rest_shop_order_invalid_id" in str(result)
    assert "jane@example.com" not in str(result) and "Invalid ID" not in str(result)
    assert_clean(result)


@pytest.mark.parametrize("status,code", [(401, "woocommerce_rest_cannot_edit"), (403, "woocommerce_rest_cannot_edit"),
                                         (400, "rest_invalid_param")])
def test_4xx_is_permanent(status, code):
    resp = httpx.Response(status, json={"code": code, "message": "nope", "data": {"status": status}})
    result, _ = run(lambda c: c.set_status("1", "cancelled"), [("PUT", f"{HTTPS_BASE}/orders/1", resp)])
    assert isinstance(result, PermanentError) and code in str(result) and str(status) in str(result)
    assert_clean(result)


def test_read_timeout_is_outcome_unknown():
    result, _ = run(lambda c: c.add_note("1", "x"),
                    [("POST", f"{HTTPS_BASE}/orders/1/notes", httpx.ReadTimeout("timed out"))])
    assert isinstance(result, RetryableError) and result.outcome_unknown
    assert_clean(result)


def test_oauth_transport_error_does_not_leak_the_url():
    result, _ = run(lambda c: c.add_note("1", "x"),
                    [("POST", f"{HTTP_BASE}/orders/1/notes", httpx.ConnectError("refused"))],
                    store=make_store("http://woo.test"))
    assert isinstance(result, RetryableError) and not result.outcome_unknown
    assert "oauth" not in str(result) and "woo.test" not in str(result)


# ---------------------------------------------------------------- listing


def test_get_orders_paging_over_https():
    orders = [{"id": 1, "status": "processing"}, {"id": 2, "status": "on-hold"}]
    result, mock = run(lambda c: c.get_orders(datetime(2026, 9, 1, tzinfo=timezone.utc), page=3, per_page=500),
                       [("GET", f"{HTTPS_BASE}/orders", httpx.Response(200, json=orders,
                                                                        headers={"X-WP-Total": "402", "X-WP-TotalPages": "5"}))])
    assert result == (orders, 5)
    params = mock.calls.last.request.url.params
    assert dict(params) == {"modified_after": "2026-09-01T00:00:00", "dates_are_gmt": "true", "orderby": "id",
                            "order": "asc", "page": "3", "per_page": "100"}


def test_get_orders_without_total_pages_header():
    full = [{"id": i} for i in range(2)]
    r1, _ = run(lambda c: c.get_orders(datetime(2026, 9, 1, tzinfo=timezone.utc), page=1, per_page=2),
                [("GET", f"{HTTPS_BASE}/orders", httpx.Response(200, json=full))])
    r2, _ = run(lambda c: c.get_orders(datetime(2026, 9, 1, tzinfo=timezone.utc), page=2, per_page=2),
                [("GET", f"{HTTPS_BASE}/orders", httpx.Response(200, json=full[:1]))])
    assert r1 == (full, 2) and r2 == (full[:1], 2)


def test_get_orders_rejects_naive_datetimes():
    with pytest.raises(ValueError):
        run(lambda c: c.get_orders(datetime(2026, 9, 1), page=1), [])


def test_get_orders_non_list_is_permanent():
    result, _ = run(lambda c: c.get_orders(datetime(2026, 9, 1, tzinfo=timezone.utc), page=1),
                    [("GET", f"{HTTPS_BASE}/orders", httpx.Response(200, json={"unexpected": True}))])
    assert isinstance(result, PermanentError)


def test_non_json_2xx_is_outcome_unknown():
    result, _ = run(lambda c: c.get_orders(datetime(2026, 9, 1, tzinfo=timezone.utc), page=1),
                    [("GET", f"{HTTPS_BASE}/orders", httpx.Response(200, text="<html>captcha</html>"))])
    assert isinstance(result, PermanentError) and result.outcome_unknown


def test_repr_has_no_secret():
    client = WooCommerceClient(make_store())
    assert CS not in repr(client) and CK not in repr(client)


# ---------------------------------------------------------------- get_page (sync pagers, install)


def test_get_page_returns_the_items_and_both_totals():
    products = [{"id": 93, "name": "Rose water"}, "not an object", {"id": 94, "name": "Amla oil"}]
    result, mock = run(lambda c: c.get_page("/products", {"per_page": "2", "page": "3", "_fields": "id,name"}),
                       [("GET", f"{HTTPS_BASE}/products", httpx.Response(200, json=products,
                                                                          headers={"X-WP-Total": "5", "X-WP-TotalPages": "3"}))])
    assert result == ([{"id": 93, "name": "Rose water"}, {"id": 94, "name": "Amla oil"}], 5, 3)
    assert (result.total, result.total_pages) == (5, 3)
    req = mock.calls.last.request
    assert dict(req.url.params) == {"per_page": "2", "page": "3", "_fields": "id,name"}
    assert req.headers["Authorization"] == "Basic " + base64.b64encode(f"{CK}:{CS}".encode()).decode()


def test_get_page_is_signed_on_plain_http_and_says_none_for_missing_or_odd_totals():
    result, mock = run(lambda c: c.get_page("/webhooks", {"status": "disabled"}),
                       [("GET", f"{HTTP_BASE}/webhooks", httpx.Response(200, json=[], headers={"X-WP-Total": "-1"}))],
                       store=make_store("http://woo.test"))
    assert result == ([], None, None)
    query = dict(parse_qsl(urlsplit(str(mock.calls.last.request.url)).query))
    assert query["status"] == "disabled" and query["oauth_consumer_key"] == CK
    expected = oauth1_signature("GET", f"{HTTP_BASE}/webhooks", query, CS)
    assert query["oauth_signature"] == expected and CS not in str(mock.calls.last.request.url)


def test_get_page_errors_are_classified_like_every_call():
    slow, _ = run(lambda c: c.get_page("/orders", {"page": "1"}),
                  [("GET", f"{HTTPS_BASE}/orders", httpx.Response(429, headers={"Retry-After": "7"}))])
    assert isinstance(slow, RetryableError) and slow.retry_after == 7
    odd, _ = run(lambda c: c.get_page("/orders"), [("GET", f"{HTTPS_BASE}/orders", httpx.Response(200, json={"code": "x"}))])
    assert isinstance(odd, PermanentError) and "orders list: unexpected response" in str(odd)
    with pytest.raises(ValueError):
        run(lambda c: c.get_page("orders?page=2"), [])


# ---------------------------------------------------------------- the order as WooCommerce has it now


@pytest.mark.parametrize("now,why", [("completed", "shipped"), ("dispatched", "shipped"), ("refunded", "refunded"),
                                     ("failed", "payment failed"), ("trash", "bin")])
def test_cancel_reads_the_order_and_refuses_one_shipped_or_settled(now, why):
    """Our copy can be stale (a lost webhook): the live status decides, and a refused cancel names why."""
    result, mock = run(lambda c: c.cancel_order("123", reason="other", notify_customer=True, staff_note="COD not confirmed"),
                       [], status=now)
    assert isinstance(result, PermanentError) and why in str(result) and not result.outcome_unknown
    assert [c.request.method for c in mock.calls] == ["GET"]  # nothing cancelled, no note
    assert mock.calls[0].request.url.params["_fields"] == "id,status"


def test_a_status_move_never_goes_backwards():
    for now, target in (("completed", "processing"), ("processing", "on-hold"), ("cancelled", "processing")):
        result, mock = run(lambda c: c.set_status("123", target), [], status=now)
        assert isinstance(result, PermanentError), (now, target)
        assert [c.request.method for c in mock.calls] == ["GET"]


def test_cancelling_a_cancelled_order_changes_nothing_but_still_notes_it():
    """A retry whose first PUT landed (its answer lost) finds the order cancelled: done, no second PUT."""
    result, mock = run(lambda c: c.cancel_order("123", reason="other", notify_customer=True, staff_note="COD not confirmed"),
                       [("POST", f"{HTTPS_BASE}/orders/123/notes", httpx.Response(201, json={"id": 9}))], status="cancelled")
    assert result is None and [c.request.method for c in mock.calls] == ["GET", "POST"]


def test_a_status_change_the_store_did_not_make_is_a_failed_write_back():
    """A plugin that vetoes the change answers 200 with the order as it was."""
    result, mock = run(lambda c: c.set_status("123", "processing"),
                       [("PUT", f"{HTTPS_BASE}/orders/123", httpx.Response(200, json={"id": 123, "status": "on-hold"}))],
                       status="on-hold")
    assert isinstance(result, PermanentError) and "on-hold" in str(result)


def test_a_configured_shipping_status_is_shipped_for_the_write_backs_too():
    store = make_store(shipping_statuses={"handed-to-courier": "shipped"})
    result, mock = run(lambda c: c.cancel_order("123", reason="other", notify_customer=True, staff_note=None), [],
                       store=store, status="handed-to-courier")
    assert isinstance(result, PermanentError) and "shipped" in str(result)
    assert [c.request.method for c in mock.calls] == ["GET"]
