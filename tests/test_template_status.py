"""Meta's news about the business account's templates reaches the store owner.

Template updates name no phone number (``entry[].id`` is the WhatsApp Business Account): they
are routed to the account's stores, kept in each store's inbox, and a pause, disable, rejection
or recategorisation of a template a store sends opens a case (no customer) for the stage owner
of the journey that sends it, with Slack told. Shapes: Meta's ``message_template_status_update``
and ``template_category_update`` webhook references (pywa's test data has the same). Template quality,
a number's quality and account restrictions: tests/test_number_health.py.
"""

from __future__ import annotations

import json

from connector.config import parse_settings
from tests.conftest import SECRETS, settings_dict
from tests.helpers import meta_signature, running_app
from tests.test_handoff_alerts import open_cases, slack_texts
from tests.test_handoffs import ADMIN, HOOK

WABA = "102290129340398"
COD_TEMPLATE = {"step": "cod_confirmation.ask", "name": "cod_v1", "language": "en_US", "category": "utility",
                "body_text": "Confirm order {{1}}?", "body": ["order.name"],
                "buttons": [{"type": "quick_reply", "text": "Confirm", "payload": "cod_confirm"}]}
SHIPPED_TEMPLATE = {"step": "delivery.shipped", "name": "shipped_v1", "category": "utility",
                    "body_text": "Order {{1}} is on its way", "body": ["order.name"]}
PAUSE = ("Your WhatsApp message template has been paused for 6 hours until Aug 31 at 12:47 AM UTC "
         "because it continued to have issues.")


def settings(db_url: str):
    raw = settings_dict(db_url)
    raw["whatsapp"]["business_account_id"] = WABA
    raw["stores"][0].update(
        journeys={"cod_confirmation": {}, "delivery": {}}, templates=[COD_TEMPLATE, SHIPPED_TEMPLATE],
        stages={"qualification": {"owner": "COD team", "notify_url": HOOK}, "post_purchase": {"owner": "Delivery desk"}},
    )
    return parse_settings(raw, environ={})


def post(client, *changes: dict, waba: str = WABA, at: int = 1795158000):
    env = {"object": "whatsapp_business_account", "entry": [{"id": waba, "time": at, "changes": list(changes)}]}
    body = json.dumps(env).encode()
    return client.post("/webhooks/whatsapp", content=body, headers={"Content-Type": "application/json",
                                                                     "X-Hub-Signature-256": meta_signature(body, SECRETS["wa_app"])})


def status(event: str, name: str = "cod_v1", language: str = "en_US", reason: str | None = "NONE", **extra) -> dict:
    return {"field": "message_template_status_update", "value": {
        "event": event, "message_template_id": 1689556908129832, "message_template_name": name,
        "message_template_language": language, "reason": reason, "message_template_category": "UTILITY", **extra}}


def inbox(client, store: str = "shop-a") -> list[dict]:
    return client.get(f"/api/stores/{store}/inbox", headers=ADMIN).json()["items"]


def test_a_paused_cod_template_tells_the_cod_team_which_step_stops_and_why(db_url):
    """Meta pauses the COD question's template: the COD team hears it now, not when customers stop getting asked."""
    paused = status("PAUSED", other_info={"title": "SECOND_PAUSE", "description": PAUSE})
    with running_app(settings(db_url)) as (client, runtime):
        first = post(client, paused)
        again = post(client, paused)  # Meta retries the same POST
        elsewhere = post(client, paused, waba="999000111")  # another business account's template of the same name
        runtime.processor.drain()
        [text] = slack_texts(runtime)
        cases = open_cases(client)
        other_store = client.get("/api/stores/shop-b/handoffs", headers=ADMIN).json()["items"]
        kept_a, kept_b = inbox(client), inbox(client, "shop-b")
    assert [r.status_code for r in (first, again, elsewhere)] == [200, 200, 200]
    [case] = cases
    assert (case["owner"], case["stage"], case["journey"], case["subject"]) == (
        "COD team", "qualification", "cod_confirmation", "template:cod_v1:en_US")
    assert case["reason"].startswith("WhatsApp template cod_v1 (en_US), used by cod_confirmation.ask, is now PAUSED")
    assert f"SECOND_PAUSE: {PAUSE}" in case["reason"] and "132015" in case["reason"]
    assert text.startswith(f"*shop-a: hand-off #{case['id']}* for COD team") and "cod_confirmation.ask" in text and "PAUSED" in text
    assert other_store == []  # shop-b sends no such template: told nothing
    # each store of the account keeps the update once, raw, processed
    assert [(r["topic"], r["status"], r["types"]) for r in kept_a] == [
        ("template_status", "done", ["whatsapp.template_status_changed"])]
    assert [(r["topic"], r["status"]) for r in kept_b] == [("template_status", "done")]


def test_a_disabled_template_adds_to_its_open_case_and_approval_closes_the_loop(db_url):
    """A pause, then disabling: one case for the template, its owner told of each; approved again
    (a reinstated pause) is told too. An approval of a template nobody sends opens nothing."""
    with running_app(settings(db_url)) as (client, runtime):
        post(client, status("APPROVED"), status("PAUSED", name="welcome_v3"), status("REJECTED", name="cod_v1", language="pt_BR"))
        runtime.processor.drain()
        nothing = open_cases(client)
        post(client, status("PAUSED", other_info={"title": "FIRST_PAUSE", "description": PAUSE}), at=1795158100)
        post(client, status("DISABLED", disable_info={"disable_date": 1795244400}), at=1795244400)
        runtime.processor.drain()
        told = slack_texts(runtime)
        post(client, status("REINSTATED"), at=1795330800)
        runtime.processor.drain()
        [approved] = slack_texts(runtime)
        [case] = open_cases(client)
        stored = inbox(client)
    assert nothing == []
    assert len(told) == 2 and "is now PAUSED" in told[0]
    assert "Update: WhatsApp template cod_v1 (en_US), used by cod_confirmation.ask, is now DISABLED" in told[1]
    assert "disable date 2026-11-21 07:00 UTC" in told[1] and "132016" in told[1]
    assert "is REINSTATED again: it can be sent" in approved
    assert case["reason"].endswith("until Meta unpauses it") and len(case["context"]["updates"]) == 2
    assert len(stored) == 6 and {r["status"] for r in stored} == {"done"}


def test_a_utility_template_meta_moves_to_marketing_is_flagged_with_the_step_it_costs(db_url):
    """Recategorised from utility to marketing: it costs more and counts against marketing limits while
    the config still sends it as utility. Meta's notice ahead of the change says when."""
    done = {"field": "template_category_update", "value": {
        "message_template_id": 12345678, "message_template_name": "cod_v1", "message_template_language": "en_US",
        "previous_category": "UTILITY", "new_category": "MARKETING"}}
    ahead = {"field": "template_category_update", "value": {
        "message_template_id": 12345679, "message_template_name": "shipped_v1", "message_template_language": "en",
        "correct_category": "MARKETING", "new_category": "UTILITY", "category_update_timestamp": 1795330800}}
    same = {"field": "template_category_update", "value": {
        "message_template_name": "shipped_v1", "message_template_language": "en", "new_category": "UTILITY"}}
    with running_app(settings(db_url)) as (client, runtime):
        post(client, done, ahead, same)
        runtime.processor.drain()
        [text] = slack_texts(runtime)  # the delivery desk has no notify_url: its case is in the queue only
        cases = {c["subject"]: c for c in open_cases(client)}
    cod, shipped = cases["template:cod_v1:en_US"], cases["template:shipped_v1:en"]
    assert "was recategorised from UTILITY to MARKETING by Meta; the config sends it as UTILITY" in cod["reason"]
    assert "cod_confirmation.ask" in text and "MARKETING" in text
    assert (shipped["owner"], shipped["journey"]) == ("Delivery desk", "delivery")
    assert "used by delivery.shipped, will be recategorised from UTILITY to MARKETING on 2026-11-22 07:00 UTC" in shipped["reason"]
    assert len(cases) == 2


def test_other_account_updates_are_kept_not_dropped(db_url):
    """An account field the connector does not read (the account's review) names no number either: kept in the
    inbox, raw, as not handled; its capabilities (the messaging limit) it reads, beside it. (Quality and
    restrictions: tests/test_number_health.py; capabilities: tests/test_whatsapp_business_capability.py.)"""
    review = {"field": "account_review_update", "value": {"decision": "APPROVED"}}
    capability = {"field": "business_capability_update", "value": {"max_daily_conversation_per_phone": 1000, "max_phone_numbers_per_business": 2}}
    with running_app(settings(db_url)) as (client, runtime):
        assert post(client, review, capability).status_code == 200
        runtime.processor.drain()
        stored = inbox(client, "woo")
    assert sorted((r["topic"], r["status"], r["error"]) for r in stored) == [
        ("business_capability", "done", None),
        ("field:account_review_update", "ignored", "field account_review_update is not handled")]
