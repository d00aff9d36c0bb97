"""WhatsApp Cloud API client against a respx-routed fake Graph API: the exact JSON sent,
the accepted answer, every error class, transport failures and template paging."""

from __future__ import annotations

import asyncio
import email.utils
import json
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest
import respx

from adapters.whatsapp import errors
from adapters.whatsapp.client import WhatsAppClient, build_payload
from connector.errors import AccountError, PermanentError, RetryableError, SendError
from connector.messages import (
    CurrencyParam,
    DateTimeParam,
    HeaderMedia,
    InteractiveButtons,
    QuickReplyButton,
    ReplyButton,
    SendResult,
    TemplateMessage,
    TextMessage,
    TextParam,
    UrlButton,
)

FIXTURES = Path(__file__).resolve().parents[3] / "shared" / "fixtures" / "public" / "whatsapp"
BASE = "https://graph.test"
VERSION = "v23.0"
TOKEN = "EAAGsecretTOKENvalue0123456789abcdefXYZ"
PHONE_ID = "106540352242922"
WABA = "102290129340398"
TO = "+919876543210"
MESSAGES_URL = f"{BASE}/{VERSION}/{PHONE_ID}/messages"
ACCEPTED = {
    "messaging_product": "whatsapp",
    "contacts": [{"input": TO, "wa_id": "919876543210"}],
    "messages": [{"id": "wamid.HBgMOTE5ODc2NTQzMjEwFQIAERgSQUFBQUFBQUFBQUFBQUFBQQA="}],
}


def run_send(message, *, route_response=None, side_effect=None, client_kw=None) -> tuple[Any, respx.Route]:
    """Send one message through a fresh client against a mocked Graph; return (result or exc, route)."""

    async def go():
        client = WhatsAppClient(BASE, VERSION, TOKEN, **(client_kw or {}))
        try:
            return await client.send(PHONE_ID, message)
        except SendError as exc:
            return exc
        finally:
            await client.aclose()

    with respx.mock(base_url=BASE, assert_all_called=True) as mock:
        route = mock.post(f"/{VERSION}/{PHONE_ID}/messages")
        if side_effect is not None:
            route.mock(side_effect=side_effect)
        else:
            route.mock(return_value=route_response or httpx.Response(200, json=ACCEPTED))
        result = asyncio.run(go())
    return result, route


def sent_json(route: respx.Route) -> dict:
    return json.loads(route.calls.last.request.content)


def graph_error(code, *, status=400, subcode=None, message=None, headers=None, extra=None) -> httpx.Response:
    error: dict[str, Any] = {
        "message": message if message is not None else f"(#{code}) Something happened",
        "type": "OAuthException",
        "code": code,
        "error_data": {"messaging_product": "whatsapp", "details": f"recipient {TO} token {TOKEN}"},
        "fbtrace_id": "AbCdEfGhIjK",
    }
    if subcode is not None:
        error["error_subcode"] = subcode
    if extra:
        error.update(extra)
    return httpx.Response(status, json={"error": error}, headers=headers or {})


def shape(value: Any) -> Any:
    """A JSON value with leaves replaced by their type, to compare structure with Meta's examples."""
    if isinstance(value, dict):
        return {k: shape(v) for k, v in value.items()}
    if isinstance(value, list):
        return [shape(v) for v in value]
    return type(value).__name__


FULL_TEMPLATE = TemplateMessage(
    to=TO,
    name="order_update_v2",
    language="en_US",
    header_media=HeaderMedia(type="image", link="https://cdn.example/p.png"),
    body=(
        TextParam(text="Maria"),
        CurrencyParam(code="INR", amount=Decimal("1299.50"), fallback="₹1,299.50"),
        DateTimeParam(fallback="November 22, 2026"),
    ),
    buttons=(QuickReplyButton(payload="COD_CONFIRM:1042"), UrlButton(suffix="orders/1042")),
    callback_data="outbox:17",
)


# -- what we send ----------------------------------------------------------------------


def test_template_with_header_image_body_params_and_buttons_is_sent_exactly():
    result, route = run_send(FULL_TEMPLATE)
    assert isinstance(result, SendResult)
    request = route.calls.last.request
    assert str(request.url) == MESSAGES_URL
    assert request.headers["Authorization"] == f"Bearer {TOKEN}"
    assert request.headers["Content-Type"] == "application/json"
    assert sent_json(route) == {
        "messaging_product": "whatsapp",
        "recipient_type": "individual",
        "to": TO,
        "biz_opaque_callback_data": "outbox:17",
        "type": "template",
        "template": {
            "name": "order_update_v2",
            "language": {"code": "en_US"},
            "components": [
                {"type": "header", "parameters": [{"type": "image", "image": {"link": "https://cdn.example/p.png"}}]},
                {"type": "body", "parameters": [
                    {"type": "text", "text": "Maria"},
                    {"type": "currency", "currency": {"fallback_value": "₹1,299.50", "code": "INR", "amount_1000": 1299500}},
                    {"type": "date_time", "date_time": {"fallback_value": "November 22, 2026"}},
                ]},
                {"type": "button", "sub_type": "quick_reply", "index": "0",
                 "parameters": [{"type": "payload", "payload": "COD_CONFIRM:1042"}]},
                {"type": "button", "sub_type": "url", "index": "1",
                 "parameters": [{"type": "text", "text": "orders/1042"}]},
            ],
        },
    }


def test_template_components_have_the_shape_of_metas_own_example():
    meta = json.loads((FIXTURES / "template_object_request_fragment.meta-nodejs-sdk.json").read_text())
    ours = build_payload(FULL_TEMPLATE)["template"]
    assert set(ours) == {"name", "language", "components"}
    assert set(ours["language"]) <= set(meta["language"])  # Meta's example also has the legacy "policy"
    meta_by_type = {c["type"]: c for c in meta["components"] if c["type"] != "button"}
    ours_by_type = {c["type"]: c for c in ours["components"] if c["type"] != "button"}
    assert shape(ours_by_type["header"]) == shape(meta_by_type["header"])
    assert shape(ours_by_type["body"]) == shape(meta_by_type["body"])
    meta_quick_reply = meta["components"][2]
    assert shape(ours["components"][2]) == shape(meta_quick_reply)
    assert ours["components"][2]["index"] == meta_quick_reply["index"] == "0"


def test_template_without_params_omits_components_and_header_text_params_are_sent():
    bare = build_payload(TemplateMessage(to=TO, name="hello_world", language="en_US"))
    assert bare["template"] == {"name": "hello_world", "language": {"code": "en_US"}}
    assert "biz_opaque_callback_data" not in bare
    with_header = build_payload(TemplateMessage(to=TO, name="t", language="hi", header_text=(TextParam(text="#1042"),)))
    assert with_header["template"]["components"] == [{"type": "header", "parameters": [{"type": "text", "text": "#1042"}]}]
    doc = build_payload(TemplateMessage(to=TO, name="t", language="hi", header_media=HeaderMedia(type="document", link="https://x/i.pdf")))
    assert doc["template"]["components"][0]["parameters"] == [{"type": "document", "document": {"link": "https://x/i.pdf"}}]


def test_currency_amount_is_an_integer_thousandth():
    p = build_payload(TemplateMessage(to=TO, name="t", language="en", body=(CurrencyParam(code="USD", amount=Decimal("19.99"), fallback="$19.99"),)))
    currency = p["template"]["components"][0]["parameters"][0]["currency"]
    assert currency["amount_1000"] == 19990 and isinstance(currency["amount_1000"], int)


def test_template_with_both_header_kinds_is_refused_before_sending():
    bad = TemplateMessage(to=TO, name="t", language="en", header_text=(TextParam(text="x"),),
                          header_media=HeaderMedia(type="image", link="https://x/y.png"))
    with pytest.raises(PermanentError):
        build_payload(bad)


def test_interactive_buttons_are_sent_exactly_and_match_metas_example():
    msg = InteractiveButtons(
        to=TO, body="Confirm your order #1042?", header="Order #1042", footer="Reply within 24 h",
        buttons=(ReplyButton(id="cod:confirm:1042", title="Confirm"), ReplyButton(id="cod:cancel:1042", title="Cancel")),
        callback_data="outbox:9",
    )
    _, route = run_send(msg)
    body = sent_json(route)
    assert body == {
        "messaging_product": "whatsapp",
        "recipient_type": "individual",
        "to": TO,
        "biz_opaque_callback_data": "outbox:9",
        "type": "interactive",
        "interactive": {
            "type": "button",
            "header": {"type": "text", "text": "Order #1042"},
            "body": {"text": "Confirm your order #1042?"},
            "footer": {"text": "Reply within 24 h"},
            "action": {"buttons": [
                {"type": "reply", "reply": {"id": "cod:confirm:1042", "title": "Confirm"}},
                {"type": "reply", "reply": {"id": "cod:cancel:1042", "title": "Cancel"}},
            ]},
        },
    }
    meta = json.loads((FIXTURES / "interactive_reply_buttons_request_fragment.meta-nodejs-sdk.json").read_text())
    plain = build_payload(msg.model_copy(update={"header": None, "footer": None}))["interactive"]
    assert shape(plain) == shape(meta)


def test_text_message_without_callback_data():
    _, route = run_send(TextMessage(to="919876543210", body="Hi Maria", preview_url=True))
    assert sent_json(route) == {
        "messaging_product": "whatsapp",
        "recipient_type": "individual",
        "to": "919876543210",  # sent as given
        "type": "text",
        "text": {"body": "Hi Maria", "preview_url": True},
    }


def test_callback_data_present_and_absent():
    assert build_payload(TextMessage(to=TO, body="x", callback_data="outbox:1"))["biz_opaque_callback_data"] == "outbox:1"
    assert "biz_opaque_callback_data" not in build_payload(TextMessage(to=TO, body="x"))


def test_a_given_http_client_is_used_with_our_timeout_and_not_closed():
    async def go():
        async with httpx.AsyncClient() as http:
            client = WhatsAppClient(BASE + "/", VERSION, TOKEN, http=http, timeout=httpx.Timeout(3.0))
            result = await client.send(PHONE_ID, TextMessage(to=TO, body="x"))
            await client.aclose()
            assert not http.is_closed
            return result

    with respx.mock(base_url=BASE) as mock:
        route = mock.post(f"/{VERSION}/{PHONE_ID}/messages").respond(json=ACCEPTED)
        result = asyncio.run(go())
    assert result.wamid.startswith("wamid.")
    assert route.calls.last.request.extensions["timeout"]["read"] == 3.0
    assert TOKEN not in repr(WhatsAppClient(BASE, VERSION, TOKEN, http=httpx.AsyncClient()))


# -- what comes back -------------------------------------------------------------------


def test_accepted_response_is_parsed():
    result, _ = run_send(TextMessage(to=TO, body="x"))
    assert result == SendResult(wamid=ACCEPTED["messages"][0]["id"], wa_id="919876543210")
    body = {"messaging_product": "whatsapp", "messages": [{"id": "wamid.X", "message_status": "held_for_quality_assessment"}]}
    result, _ = run_send(TextMessage(to=TO, body="x"), route_response=httpx.Response(200, json=body))
    assert result == SendResult(wamid="wamid.X", wa_id=None)


@pytest.mark.parametrize("response", [
    httpx.Response(200, json={"messaging_product": "whatsapp", "contacts": [{"input": TO, "wa_id": "91"}]}),
    httpx.Response(200, json={"messages": []}),
    httpx.Response(200, json={"messages": [{"id": ""}]}),
    httpx.Response(200, text="<html>ok</html>"),
])
def test_accepted_response_without_message_id_is_permanent_and_outcome_unknown(response):
    exc, _ = run_send(TextMessage(to=TO, body="x"), route_response=response)
    assert type(exc) is PermanentError
    assert str(exc) == "unexpected accepted response"
    assert exc.code is None and exc.outcome_unknown is True and exc.http_status == 200


# -- errors ----------------------------------------------------------------------------


def send_error(response: httpx.Response) -> SendError:
    exc, _ = run_send(TextMessage(to=TO, body="x"), route_response=response)
    assert isinstance(exc, SendError), exc
    return exc


def assert_clean(exc: SendError) -> None:
    for text in (str(exc), repr(exc)):
        assert TOKEN not in text
        assert TO not in text and "9876543210" not in text
        assert "details" not in text and "error_data" not in text


@pytest.mark.parametrize("code,status", [(130429, 429), (131056, 400), (131000, 500), (131016, 503), (1, 500),
                                         (2, 503), (4, 400), (80007, 400), (133016, 400)])
def test_retryable_codes(code, status):
    exc = send_error(graph_error(code, status=status))
    assert type(exc) is RetryableError
    assert (exc.code, exc.http_status, exc.trace_id) == (code, status, "AbCdEfGhIjK")
    assert exc.outcome_unknown is False
    assert_clean(exc)


@pytest.mark.parametrize("code", [131026, 131047, 131050, 131051, 131048, 131064, 130472, 132000, 132001, 132005,
                                  132007, 132008, 132012, 132015, 132016, 132999, 131008, 131009, 131042, 131031,
                                  368, 130497, 190, 0, 3, 10, 200, 250, 299, 131030])
def test_permanent_codes(code):
    exc = send_error(graph_error(code, status=401 if code == 190 else 400))
    # the account's (token, permission, payment, block): the outbox pauses the number instead of failing the message
    account = code in (190, 0, 3, 10, 200, 250, 299, 131031, 131042, 368, 131048)
    assert type(exc) is (AccountError if account else PermanentError)
    assert exc.code == code
    assert f"code {code}" in str(exc)
    assert_clean(exc)


def test_130429_honours_retry_after_seconds():
    exc = send_error(graph_error(130429, status=429, headers={"Retry-After": "2"}))
    assert type(exc) is RetryableError and exc.retry_after == 2.0
    exc = send_error(graph_error(130429, status=400, headers={"Retry-After": "1.5"}))
    assert type(exc) is RetryableError and exc.retry_after == 1.5


def test_130429_honours_retry_after_http_date():
    when = datetime.now(timezone.utc) + timedelta(seconds=120)
    exc = send_error(graph_error(130429, status=429, headers={"Retry-After": email.utils.format_datetime(when, usegmt=True)}))
    assert type(exc) is RetryableError
    assert 115 <= exc.retry_after <= 120


def test_retry_after_parsing_edges():
    now = datetime(2026, 11, 22, 12, 0, tzinfo=timezone.utc)
    assert errors.parse_retry_after("Sun, 22 Nov 2026 12:00:30 GMT", now=now) == 30.0
    assert errors.parse_retry_after("Sun, 22 Nov 2026 11:00:00 GMT", now=now) == 0.0  # in the past
    assert errors.parse_retry_after("999999") == 3600.0  # capped
    assert errors.parse_retry_after("-5") == 0.0
    assert errors.parse_retry_after("soon") is None
    assert errors.parse_retry_after("nan") is None
    assert errors.parse_retry_after(None) is None and errors.parse_retry_after("") is None


def test_131049_waits_a_day():
    exc = send_error(graph_error(131049))
    assert type(exc) is RetryableError
    assert exc.retry_after == 86400
    assert "24 h" in str(exc)


def test_5xx_json_with_unknown_code_is_retryable():
    exc = send_error(graph_error(987654, status=500))
    assert type(exc) is RetryableError and exc.http_status == 500


def test_unknown_code_with_4xx_is_permanent_unless_transient():
    exc = send_error(graph_error(100, status=400, message="(#100) Invalid parameter"))
    assert type(exc) is PermanentError and exc.code == 100
    assert "unknown error code 100" in str(exc) and "(#100) Invalid parameter" in str(exc)
    exc = send_error(graph_error(987654, status=400, extra={"is_transient": True}))
    assert type(exc) is RetryableError


def test_html_502_from_a_proxy_is_retryable_by_status():
    html = f"<html><body><h1>502 Bad Gateway</h1><pre>{TO} Bearer {TOKEN}</pre></body></html>"
    exc = send_error(httpx.Response(502, text=html, headers={"Content-Type": "text/html"}))
    assert type(exc) is RetryableError
    assert (exc.code, exc.http_status, exc.trace_id) == (None, 502, None)
    assert "Bad Gateway" not in str(exc)
    assert_clean(exc)


def test_429_without_json_is_retryable_with_retry_after():
    exc = send_error(httpx.Response(429, text="Too Many Requests", headers={"Retry-After": "7"}))
    assert type(exc) is RetryableError and exc.retry_after == 7.0 and exc.http_status == 429


def test_non_json_4xx_is_permanent():
    exc = send_error(httpx.Response(404, text="Not Found"))
    assert type(exc) is PermanentError and exc.http_status == 404 and exc.code is None


def test_json_without_error_object_is_classified_by_status():
    assert type(send_error(httpx.Response(503, json={"oops": True}))) is RetryableError
    assert type(send_error(httpx.Response(400, json=["x"]))) is PermanentError


def test_code_subcode_and_trace_id_are_kept():
    exc = send_error(graph_error(131030, subcode=2494010, message="(#131030) Recipient phone number not in allowed list"))
    assert type(exc) is PermanentError
    assert (exc.code, exc.subcode, exc.trace_id, exc.http_status) == (131030, 2494010, "AbCdEfGhIjK", 400)
    assert str(exc) == ("HTTP 400, code 131030/2494010 (recipient not in the allowed list (test number)): "
                        "(#131030) Recipient phone number not in allowed list")


def test_body_and_token_never_leak_even_when_meta_quotes_them():
    noisy = f"(#131026) Message undeliverable for {TO} using {TOKEN} " + "x" * 500
    exc = send_error(graph_error(131026, message=noisy, extra={"error_user_msg": f"call {TO}"}))
    assert type(exc) is PermanentError
    assert_clean(exc)
    assert "[number]" in str(exc) and "[redacted]" in str(exc)
    assert len(str(exc)) < 320
    # a token that does not look like one is still removed, because the client passes it to redact
    short = "tok123"
    exc = errors.classify(graph_error(190, status=401, message=f"Invalid OAuth access token {short}"), redact=(short,))
    assert short not in str(exc) and type(exc) is AccountError


def test_numbers_in_codes_and_short_messages_survive_scrubbing():
    exc = send_error(graph_error(131047, message="(#131047) Re-engagement message"))
    assert str(exc).endswith("(#131047) Re-engagement message")


def test_describe_knows_every_listed_code():
    for code in errors.CODES:
        assert not errors.describe(code).startswith("unknown error code")
    assert errors.describe(132099) == "template error"
    assert errors.describe(None).startswith("no error code")
    assert errors.describe(424242) == "unknown error code 424242"


# -- transport -------------------------------------------------------------------------


def test_connect_error_is_retryable_and_known_not_sent():
    exc, _ = run_send(TextMessage(to=TO, body="x"), side_effect=httpx.ConnectError("refused"))
    assert type(exc) is RetryableError
    assert str(exc).startswith("connection failed") and exc.outcome_unknown is False
    exc, _ = run_send(TextMessage(to=TO, body="x"), side_effect=httpx.ConnectTimeout("slow"))
    assert str(exc).startswith("connection failed") and exc.outcome_unknown is False


def test_read_timeout_is_retryable_with_unknown_outcome():
    exc, _ = run_send(TextMessage(to=TO, body="x"), side_effect=httpx.ReadTimeout(f"timed out {TOKEN}"))
    assert type(exc) is RetryableError
    assert str(exc).startswith("timeout; outcome unknown") and exc.outcome_unknown is True
    assert TOKEN not in str(exc) and exc.__cause__ is None


@pytest.mark.parametrize("exc,unknown", [
    (httpx.ReadTimeout("x"), True), (httpx.WriteTimeout("x"), True), (httpx.RemoteProtocolError("x"), True),
    (httpx.ReadError("x"), True), (httpx.ConnectError("x"), False), (httpx.ConnectTimeout("x"), False),
    (httpx.PoolTimeout("x"), False),
])
def test_is_outcome_unknown(exc, unknown):
    assert errors.is_outcome_unknown(exc) is unknown
    classified = errors.classify_transport(exc)
    assert classified.outcome_unknown is unknown and errors.is_outcome_unknown(classified) is unknown


# -- templates -------------------------------------------------------------------------


def template(name: str) -> dict:
    return {"name": name, "language": "en_US", "status": "APPROVED", "category": "UTILITY", "components": [], "id": name}


def run_list(pages: list[httpx.Response]) -> tuple[Any, respx.Route]:
    async def go():
        async with WhatsAppClient(BASE, VERSION, TOKEN) as client:
            try:
                return await client.list_templates(WABA)
            except SendError as exc:
                return exc

    with respx.mock(base_url=BASE) as mock:
        route = mock.get(f"/{VERSION}/{WABA}/message_templates").mock(side_effect=pages)
        result = asyncio.run(go())
    return result, route


def page(names: list[str], after: str | None, *, next_: bool = True) -> httpx.Response:
    paging: dict[str, Any] = {"cursors": {"before": "B", "after": after or "LAST"}}
    if next_ and after:
        paging["next"] = f"https://graph.facebook.com/{VERSION}/{WABA}/message_templates?limit=100&after={after}&access_token=leak"
    return httpx.Response(200, json={"data": [template(n) for n in names], "paging": paging})


def test_list_templates_follows_cursors_on_our_own_host():
    result, route = run_list([page(["a", "b"], "C1"), page(["c"], "C2"), page(["d"], None, next_=False)])
    assert [t["name"] for t in result] == ["a", "b", "c", "d"]
    assert result[0]["status"] == "APPROVED"
    urls = [call.request.url for call in route.calls]
    assert [u.host for u in urls] == ["graph.test"] * 3
    assert [dict(u.params) for u in urls] == [{"limit": "100"}, {"limit": "100", "after": "C1"}, {"limit": "100", "after": "C2"}]
    assert all(c.request.headers["Authorization"] == f"Bearer {TOKEN}" for c in route.calls)


def test_list_templates_last_page_keeps_cursors_but_has_no_next():
    # the shape the sandbox (and Graph) returns on a single page
    single = httpx.Response(200, json={"data": [template("x")], "paging": {"cursors": {"before": "a", "after": "a"}}})
    result, route = run_list([single])
    assert [t["name"] for t in result] == ["x"] and route.call_count == 1


def test_list_templates_refuses_a_repeated_cursor():
    result, route = run_list([page(["a"], "C1"), page(["b"], "C2"), page(["c"], "C1")])
    assert type(result) is PermanentError and "repeated" in str(result)
    assert route.call_count == 3


def test_list_templates_surfaces_graph_errors():
    result, _ = run_list([graph_error(190, status=401)])
    assert type(result) is AccountError and result.code == 190
    assert_clean(result)


def test_number_quality_reads_the_rating_and_limit_from_the_sandbox_and_classifies_its_errors():
    """GET /{phone_number_id}?fields=quality_rating,whatsapp_business_manager_messaging_limit,... against the sandbox Cloud API
    (a real HTTP peer): YELLOW, which no webhook says; a 5xx is retryable, a refused token permanent."""
    from connector.number_health import NumberReading
    from connector.sandbox.whatsapp import SandboxServer, SandboxWhatsApp, ScriptedResponse

    sandbox = SandboxWhatsApp(token=TOKEN)
    sandbox.quality_rating, sandbox.messaging_limit = "YELLOW", "TIER_10K"

    async def read(token: str = TOKEN) -> NumberReading:
        async with WhatsAppClient(server.url, VERSION, token, max_connections=1) as client:
            return await client.number_quality(PHONE_ID)

    with SandboxServer(sandbox.app) as server:
        assert asyncio.run(read()) == NumberReading(rating="YELLOW", limit="TIER_10K")
        sandbox.number_script.append(ScriptedResponse(503, {"error": {"message": "down", "type": "OAuthException", "code": 2}}))
        with pytest.raises(RetryableError) as down:
            asyncio.run(read())
        with pytest.raises(PermanentError) as refused:
            asyncio.run(read("wrong-token"))
    assert down.value.http_status == 503 and refused.value.http_status == 401
    assert TOKEN not in str(down.value) and sandbox.number_reads == 2
