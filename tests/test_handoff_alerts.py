"""What a stage owner reads in a hand-off alert, and what the admin API says about it:

- a failed delivery's case and alert name the order that failed, not the customer's newest;
- the customer's words and name reach Slack as text: no ``<!channel>`` ping, no disguised link;
- a webhook that refuses the alerts (a revoked Slack hook) is logged, never with its URL, and every
  case in the admin API and the dashboard's queue says whether its owner was told; httpx's own
  request line (which quotes the URL) stays out of an INFO log;
- a customer's later message in an open case tells its owner again, at most once per
  ``handoff.follow_up_minutes`` (a burst of lines right after the opening is not a second alert).
"""

from __future__ import annotations

import asyncio
import json
import logging
from datetime import datetime, timedelta, timezone

import respx

from connector.config import parse_settings
from connector.storage.models import utcnow
from tests.conftest import FIXTURES, SECRETS, settings_dict
from tests.helpers import load_json, running_app
from tests.test_handoffs import ADMIN, HOOK, order, post_shopify, post_wa, settings

ORDER_9999 = "order:820982911946154508"


def slack_texts(runtime, status: int = 200, body: str = "ok") -> list[str]:
    """Run the notifier once against a fake Slack webhook: what it was sent."""
    with respx.mock(assert_all_called=False) as slack:
        hook = slack.post(HOOK).respond(status, text=body)
        asyncio.run(runtime.notifier.run_once())
    return [json.loads(c.request.content)["text"] for c in hook.calls]


def open_cases(client) -> list[dict]:
    return client.get("/api/stores/shop-a/handoffs", params={"status": "open"}, headers=ADMIN).json()["items"]


def paid(**kw) -> dict:
    return order(financial_status="paid", payment_gateway_names=["razorpay"], **kw)


def fail_delivery_of_9999(client, runtime) -> None:
    fulfilment = load_json(FIXTURES / "shopify" / "fulfillments_update.sample.json")
    fulfilment.update(order_id=820982911946154508, shipment_status="attempted_delivery", updated_at="2026-11-22T10:00:00Z")
    post_shopify(client, fulfilment, "fulfillments/update")
    runtime.processor.drain()


# ---- the failed delivery's own order ----------------------------------------------------------

def test_a_failed_delivery_alert_names_the_order_that_failed_not_the_customers_newer_one(db_url):
    """#9999's delivery fails while Asha's newer order #10000 is on its way: the delivery desk must reschedule #9999."""
    with running_app(settings(db_url)) as (client, runtime):
        post_shopify(client, paid(), "orders/create")
        post_shopify(client, paid(id=820982911946154509, name="#10000", created_at="2026-11-21T12:00:00+05:30",
                                  updated_at="2026-11-21T12:00:00+05:30"), "orders/create")
        runtime.processor.drain()
        fail_delivery_of_9999(client, runtime)
        [text] = slack_texts(runtime)
        [case] = open_cases(client)
    assert case["subject"] == ORDER_9999 and "#9999" in case["reason"]
    assert case["context"]["order"]["name"] == "#9999"
    assert case["context"]["last_order"]["name"] == "#10000"  # the newest is still there, as what it is
    assert "Order: #9999 USD 414.95 (paid)" in text
    assert "#10000" not in text


def text(client, msg_id: str, body: str, at: int = 1795158000) -> None:
    post_wa(client, {"messages": [{"from": "919876543210", "id": msg_id, "timestamp": str(at), "type": "text", "text": {"body": body}}]})


# ---- Slack's control characters --------------------------------------------------------------

HOSTILE = "<!channel> refund here <https://evil.example/login|shop-a.myshopify.com/admin> & fast"


def test_a_customers_words_and_name_reach_slack_as_text_not_a_ping_or_a_disguised_link(db_url):
    with running_app(settings(db_url)) as (client, runtime):
        customer = {**load_json(FIXTURES / "shopify" / "orders_create.sample.json")["customer"], "first_name": "Jo <!here>"}
        post_shopify(client, paid(customer=customer), "orders/create")
        runtime.processor.drain()
        text(client, "wamid.S1", HOSTILE)
        runtime.processor.drain()
        [sent] = slack_texts(runtime)
        [case] = open_cases(client)
    assert HOSTILE in case["reason"]  # the case keeps her words as she wrote them
    assert "&lt;!channel&gt; refund here &lt;https://evil.example/login|shop-a.myshopify.com/admin&gt; &amp; fast" in sent
    assert "Jo &lt;!here&gt;" in sent
    assert "<" not in sent and ">" not in sent  # nothing Slack would read as a mention or a link
    assert sent.startswith(f"*shop-a: hand-off #{case['id']}* for Delivery desk")  # our own markup still bold


# ---- a webhook that refuses the alerts -------------------------------------------------------

def no_secret_logged(caplog) -> None:
    """Our logs never quote the webhook URL (Slack's hook path is its secret); httpx's request line: see below."""
    lines = [r.getMessage() for r in caplog.records if r.name.startswith("storeloop")]
    assert not [line for line in lines if "hooks.slack" in line or "XXXX" in line or "T000" in line], lines


def test_httpx_request_lines_which_quote_the_webhook_url_stay_out_of_an_info_log():
    """httpx logs ``HTTP Request: POST https://hooks.slack.com/services/...`` at INFO. A deployment that
    logs the root logger at INFO would print every hook's secret path; the connector's logging setup
    keeps httpx at WARNING."""
    from connector.logs import configure_logging

    root, ours, httpx_log = logging.getLogger(), logging.getLogger("storeloop"), logging.getLogger("httpx")
    saved = (root.level, ours.level, ours.handlers[:], ours.propagate, httpx_log.level)
    try:
        root.setLevel(logging.INFO)
        configure_logging("info")
        assert not httpx_log.isEnabledFor(logging.INFO) and httpx_log.isEnabledFor(logging.WARNING)
    finally:
        root.setLevel(saved[0])
        ours.setLevel(saved[1])
        ours.handlers[:] = saved[2]
        ours.propagate = saved[3]
        httpx_log.setLevel(saved[4])


def test_a_revoked_slack_hook_is_logged_and_every_case_says_its_owner_was_not_told(db_url, caplog):
    with running_app(settings(db_url)) as (client, runtime):
        post_shopify(client, paid(), "orders/create")
        runtime.processor.drain()
        fail_delivery_of_9999(client, runtime)
        [queued] = open_cases(client)
        caplog.clear()
        with caplog.at_level(logging.INFO):
            slack_texts(runtime, 404, "no_service")  # Slack's answer for a removed or revoked hook
        [case] = open_cases(client)
        assert client.post("/dashboard/login", data={"token": SECRETS["admin"], "next": "/dashboard"}).status_code == 200
        queue = client.get("/dashboard/shop-a").text.split('id="handoffs"')[1].split('id="health"')[0]
    assert queued["notify"] == {"status": "pending", "attempts": 0}
    assert (case["notify"]["status"], case["notify"]["error"]) == ("failed", "HTTP 404 (no_service)")
    [warning] = [r for r in caplog.records if r.name == "storeloop.notify" and r.levelno == logging.WARNING]
    assert f"hand-off {case['id']}" in warning.getMessage() and "HTTP 404 (no_service)" in warning.getMessage()
    assert "shop-a" in warning.getMessage() and "post_purchase" in warning.getMessage()
    no_secret_logged(caplog)
    assert "failed: HTTP 404 (no_service)" in queue


def test_a_hook_that_keeps_failing_is_logged_when_the_notifier_gives_up(db_url, caplog):
    raw = settings_dict(db_url)
    raw["whatsapp"]["max_attempts"] = 2
    raw["stores"][0].update(journeys={"delivery": {}}, policy={"quiet_hours": ""},
                            stages={"post_purchase": {"owner": "Delivery desk", "notify_url": HOOK}})
    with running_app(parse_settings(raw, environ={})) as (client, runtime):
        post_shopify(client, paid(), "orders/create")
        runtime.processor.drain()
        fail_delivery_of_9999(client, runtime)
        with caplog.at_level(logging.INFO):
            slack_texts(runtime, 503, "<html>Service Unavailable for https://hooks.slack.example/services/T000/B000/XXXX</html>")
            [retrying] = open_cases(client)
            runtime.notifier.clock = lambda: utcnow() + timedelta(hours=1)  # past the retry's backoff
            slack_texts(runtime, 503, "<html>Service Unavailable</html>")
        [case] = open_cases(client)
    assert retrying["notify"] == {"status": "pending", "attempts": 1, "error": "HTTP 503"}  # a page's body is left out
    assert (case["notify"]["status"], case["notify"]["error"]) == ("failed", "HTTP 503")
    [warning] = [r for r in caplog.records if r.name == "storeloop.notify" and r.levelno == logging.WARNING]
    assert "given up after 2 attempts: HTTP 503" in warning.getMessage() and f"hand-off {case['id']}" in warning.getMessage()
    no_secret_logged(caplog)


def test_each_case_says_whether_its_owner_was_told_sent_or_not_configured(db_url):
    """The COD team has no webhook (told nowhere: they must watch the queue); the delivery desk's was told."""
    with running_app(settings(db_url, handoff={"order_value_over": 400})) as (client, runtime):
        post_shopify(client, order(), "orders/create")  # COD: the qualification stage, COD team, no notify_url
        post_shopify(client, paid(id=820982911946154509, name="#10000"), "orders/create")  # paid: the delivery desk's
        runtime.processor.drain()
        slack_texts(runtime)
        by_order = {c["subject"]: c["notify"] for c in open_cases(client)}
    assert by_order[ORDER_9999] == {"status": "not_configured"}
    assert by_order["order:820982911946154509"]["status"] == "sent"


# ---- her later messages in an open case --------------------------------------------------------

class Clock:
    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


def test_a_customers_later_message_in_an_open_case_tells_its_owner_again_at_most_once_per_half_hour(db_url):
    t0 = datetime(2026, 11, 22, 10, 5, tzinfo=timezone.utc)
    clock = Clock(t0)
    with running_app(settings(db_url)) as (client, runtime):
        runtime.processor.clock = clock
        post_shopify(client, paid(), "orders/create")
        runtime.processor.drain()
        fail_delivery_of_9999(client, runtime)
        opening, later = slack_texts(runtime), []
        for minutes, msg_id, body in ((2, "wamid.F1", "I was at work, sorry"),  # right after the alert: in the case only
                                      (120, "wamid.F2", "actually, cancel my order"),  # two hours on: the desk is told
                                      (125, "wamid.F3", "please confirm"),  # five minutes later: in the case only
                                      (160, "wamid.F4", "hello??")):  # 40 minutes after the last alert: told again
            clock.now = t0 + timedelta(minutes=minutes)
            text(client, msg_id, body, at=int(clock.now.timestamp()))
            runtime.processor.drain()
            later += slack_texts(runtime)  # the notifier runs all the time
        [case] = open_cases(client)
    assert len(opening) == 1 and "delivery failed (attempted_delivery) for #9999" in opening[0]
    assert [u["reason"] for u in case["context"]["updates"]] == [
        "customer wrote: I was at work, sorry", "customer wrote: actually, cancel my order", "customer wrote: please confirm",
        "customer wrote: hello??"]
    assert len(later) == 2
    assert "Update: customer wrote: actually, cancel my order" in later[0] and "Update: customer wrote: hello??" in later[1]
    assert case["notify"]["status"] == "sent"
