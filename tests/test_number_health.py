"""Meta's news about the store's WhatsApp number and account reaches its owner, and the sends obey it.

Meta sends, besides messages, webhooks about the sender: ``phone_number_quality_update`` (the
number flagged for low quality, its messaging limit lowered or raised), ``account_update`` (the
account restricted, disabled, reinstated) and ``message_template_quality_update``. Before, they
were kept in the inbox and read by nobody: a restricted store kept queuing messages that fail,
a flagged number kept sending cart reminders that lower its rating further, and nobody was told.

- a restriction or a disabled account opens one case for the store's owner and every WhatsApp
  message of the store waits, no attempt spent, shown on the dashboard; its end, or Meta lifting
  it, lets them go;
- a flagged number (RED) holds cart reminders (marketing) but not the COD question (utility);
  unflagged, the held reminder goes;
- a messaging limit lowered tells the owner once, whatever Meta repeats; raised, the case hears it;
- a template the store sends rated RED opens the template's case for the stage owner of its journey;
- an older update arriving after a newer one changes nothing (Meta's entry ``time``);
- a number's news reaches only the store that sends from it (``whatsapp_display_phone_number``).

Shapes: Meta's webhook references (``phone_number_quality_update``: ``display_phone_number``,
``event``, ``current_limit`` / ``max_daily_conversations_per_business``, ``old_limit``;
``account_update``); the values of ``restriction_info``, ``ban_info`` and the template quality
update are pywa's test data (``tests/data/updates/account_update.json``, ``template_quality_update.json``).
Real app, signed webhooks, a virtual clock, fake Graph API and Slack hook (tests/scenarios).
"""

from __future__ import annotations

import json
from datetime import datetime, timedelta

from sqlalchemy import select

from connector.config import parse_settings
from connector.storage import models as m
from tests.conftest import PHONE_ID_A, SECRETS, settings_dict
from tests.helpers import meta_signature, running_app
from tests.scenarios.conftest import _world_server, scenario, sqlite_url, world  # noqa: F401 (fixtures)
from tests.scenarios.stores import SHOPIFY
from tests.scenarios.test_store_journeys import COD, LADDER
from tests.test_handoffs import ADMIN

WABA = "102290129340398"
ASHA, RAVI = "+919876543210", "+919812345678"
NUMBER_A = "15550783881"


def account(sc, *changes: dict, at: datetime) -> None:
    """Meta posts changes about the business account (``entry[].id``), sent at ``at``."""
    sc.post(sc.whatsapp_delivery({"object": "whatsapp_business_account",
                                  "entry": [{"id": WABA, "time": int(at.timestamp()), "changes": list(changes)}]}))


def number(event: str, *, display: str = NUMBER_A, **limits) -> dict:
    return {"field": "phone_number_quality_update", "value": {"display_phone_number": display, "event": event, **limits}}


def restriction(*kinds: str, until: datetime) -> dict:
    return {"field": "account_update", "value": {"event": "ACCOUNT_RESTRICTION", "restriction_info": [
        {"restriction_type": k, "expiration": int(until.timestamp())} for k in kinds]}}


def ban(state: str) -> dict:
    return {"field": "account_update", "value": {"event": "DISABLED_UPDATE",
                                                 "ban_info": {"waba_ban_state": state, "waba_ban_date": "November 16, 2026"}}}


def template_quality(name: str, score: str, previous: str | None = None, language: str = "en") -> dict:
    return {"field": "message_template_quality_update", "value": {
        "previous_quality_score": previous, "new_quality_score": score, "message_template_id": 806312974732579,
        "message_template_name": name, "message_template_language": language}}


def told(world) -> list[tuple[str, str]]:
    """(stage, text) of each alert the store's stage owners got (their Slack hooks)."""
    return [(stage, body["text"]) for stage, body in world.notifications]


def outbox(sc) -> list[tuple]:
    with sc.runtime.db.engine.connect() as conn:
        return [tuple(r) for r in conn.execute(select(m.OutboxMessage.step, m.OutboxMessage.status, m.OutboxMessage.attempts)
                                               .where(m.OutboxMessage.channel == "whatsapp").order_by(m.OutboxMessage.id))]


def whatsapp_health(sc) -> dict:
    return sc.report()["connector_health"]["whatsapp"]


def dashboard(sc) -> str:
    assert sc.client.post("/dashboard/login", data={"token": SECRETS["admin"], "next": "/dashboard"}).status_code == 200
    return sc.client.get(f"/dashboard/{sc.key}").text


def test_a_restricted_account_tells_the_owner_once_and_its_messages_wait_until_the_restriction_ends(sqlite_url, scenario, world):
    """Meta restricts business-initiated messaging for two hours: the owner hears it once (Meta's retry and
    the same news again later tell nobody twice), the COD question waits unsent with no attempt spent, the
    dashboard and /readyz say sends are paused; when the restriction ends the question goes out, once."""
    sc = scenario(sqlite_url, "shopify", journeys=COD)
    until = sc.now + timedelta(hours=2)
    restricted = restriction("RESTRICTED_BIZ_INITIATED_MESSAGING", "RESTRICTED_ADD_PHONE_NUMBER_ACTION", until=until)
    account(sc, restricted, at=sc.now)
    account(sc, restricted, at=sc.now)  # Meta retries the same POST
    account(sc, restricted, at=sc.now + timedelta(minutes=1))  # and says the same again in a later one
    SHOPIFY.place(sc, SHOPIFY.order(1, ASHA, sc.now))
    sc.later(minutes=30)

    assert sc.sent() == []
    assert outbox(sc) == [("ask", "pending", 0)]  # waiting, no try spent
    [(stage, text)] = told(world)
    assert stage == "entry" and text.startswith("*shop-a: hand-off #")
    assert "Meta restricted the WhatsApp Business Account" in text and "RESTRICTED_BIZ_INITIATED_MESSAGING" in text
    assert f"Every WhatsApp message of this store waits unsent and goes out when it ends, {until:%Y-%m-%d %H:%M} UTC, unless held " \
           "longer than its send_within limit (6 h for cart and reorder reminders, 24 h for order, COD and delivery messages, " \
           "6 h for delivery.out_for_delivery) " \
           "after it was meant to go: then it is skipped as too_late" in text and "Business Support Home" in text
    assert "none is lost" not in text
    [case] = sc.handoffs("open")
    assert (case["subject"], case["journey"], case["stage"], case["context"]) == (f"number:{PHONE_ID_A}", None, "entry", {})
    held = whatsapp_health(sc)["sends_held"]
    assert held["until"] == until.isoformat() and "no message may start a conversation" in held["reason"]
    page = dashboard(sc)
    assert "WhatsApp sends are paused" in page and "Meta restricted the WhatsApp Business Account" in page
    assert "except those held past their send_within limit, skipped as too_late" in page and "none is lost" not in page
    ready = sc.client.get("/readyz").json()
    assert ready["whatsapp"] == "paused" and ready["whatsapp_paused_stores"] >= 1

    sc.at(until + timedelta(minutes=1))
    assert sc.templates_to(ASHA) == ["cod_confirm_v1"]  # the question reached her once the restriction ended
    assert outbox(sc) == [("ask", "sent", 1)]
    assert whatsapp_health(sc)["sends_held"] is None
    assert "WhatsApp sends are paused" not in dashboard(sc)


def test_a_disabled_account_holds_every_message_until_meta_reinstates_it(sqlite_url, scenario, world):
    """Disabled (banned): no end date, the messages wait however long; reinstated, they go, and the case hears it."""
    sc = scenario(sqlite_url, "shopify", journeys=COD)
    account(sc, ban("DISABLE"), at=sc.now)
    SHOPIFY.place(sc, SHOPIFY.order(1, ASHA, sc.now))
    sc.later(hours=3, step=timedelta(hours=1))
    assert sc.sent() == [] and outbox(sc) == [("ask", "pending", 0)]
    assert whatsapp_health(sc)["sends_held"] == {"reason": "Meta disabled the WhatsApp Business Account", "until": None}
    assert "once Meta lifts it" in dashboard(sc)

    account(sc, ban("REINSTATE"), at=sc.now)
    sc.later(minutes=1)
    assert sc.templates_to(ASHA) == ["cod_confirm_v1"]
    first, second = told(world)
    assert "Meta disabled the WhatsApp Business Account (November 16, 2026)" in first[1]
    assert "Update: Meta reinstated the WhatsApp Business Account" in second[1]
    assert "waits until Meta reinstates it, unless held longer than its send_within limit" in first[1]
    assert "waiting messages still in time go out now; those held past their send_within limit are skipped as too_late" in second[1]
    [case] = sc.handoffs("open")
    assert len(case["context"]["updates"]) == 1


def test_a_flagged_number_holds_cart_reminders_not_the_cod_question_and_an_older_update_does_not_undo_it(
        sqlite_url, scenario, world):
    """FLAGGED (quality RED): Ravi's cart reminder (marketing) is held, Asha's COD question (utility) goes. An
    UNFLAGGED sent before the FLAGGED but arriving after it changes nothing. The UNFLAGGED Meta sends later
    releases the reminder, and the owner hears both."""
    sc = scenario(sqlite_url, "shopify", journeys={**COD, **LADDER})
    flagged_at = sc.now
    account(sc, number("FLAGGED", current_limit="TIER_1K"), at=flagged_at)
    account(sc, number("UNFLAGGED", current_limit="TIER_1K"), at=flagged_at - timedelta(hours=1))  # older news, late
    SHOPIFY.start_checkout(sc, "cartR", RAVI)
    SHOPIFY.place(sc, SHOPIFY.order(1, ASHA, sc.now))
    sc.later(hours=2, step=timedelta(minutes=20))

    assert sc.templates_to(ASHA) == ["cod_confirm_v1"]
    assert sc.templates_to(RAVI) == []  # due after 30 minutes, held while the number is RED
    [(_, text)] = told(world)
    assert f"WhatsApp number +{NUMBER_A} (id {PHONE_ID_A}) was flagged by Meta: its quality rating is RED" in text
    assert "Cart and reorder reminders (marketing) are held" in text
    health = whatsapp_health(sc)
    assert (health["quality_rating"], health["messaging_limit"], health["marketing_held"], health["sends_held"]) == (
        "RED", "TIER_1K", True, None)
    assert "quality rating <strong>RED</strong>" in dashboard(sc)
    late = [r for r in sc.api("/inbox")["items"] if r["topic"] == "number_quality" and r["status"] == "ignored"]
    assert [r["error"] for r in late] == ["stale: newer state already stored"]

    account(sc, number("UNFLAGGED", current_limit="TIER_1K"), at=sc.now)
    sc.later(hours=1, minutes=5, step=timedelta(minutes=20))
    assert sc.templates_to(RAVI) == ["cart_1_v1"]  # the held reminder went once the number recovered
    assert len(told(world)) == 2 and "Update: WhatsApp number" in told(world)[1][1] and "no longer flagged" in told(world)[1][1]
    assert whatsapp_health(sc)["quality_rating"] == "GREEN" and whatsapp_health(sc)["marketing_held"] is False


def test_cart_reminders_held_for_the_rating_go_as_one_the_latest_when_the_number_recovers(sqlite_url, scenario, world):
    """Ravi's cart reminders wait while the number is RED (queued at 30 minutes, 6.5 h and 24.5 h); the
    number recovers at 26 h. Only the last one goes then, not all three seconds apart: the first is skipped
    as superseded when the second comes due, the second as too_late once it has waited longer than
    marketing's 6 hours (policy.marketing_send_within_hours), before the third was queued."""
    sc = scenario(sqlite_url, "shopify", journeys={**COD, **LADDER})
    account(sc, number("FLAGGED", current_limit="TIER_1K"), at=sc.now)
    SHOPIFY.start_checkout(sc, "cartR", RAVI)
    sc.later(hours=26, step=timedelta(hours=1))
    account(sc, number("UNFLAGGED", current_limit="TIER_1K"), at=sc.now)
    sc.later(hours=2, step=timedelta(minutes=30))

    assert sc.templates_to(RAVI) == ["cart_3_v1"]
    assert [(step, status, reason) for step, status, reason in _cart_rows(sc)] == [
        ("first", "skipped", "superseded"), ("second", "skipped", "too_late"), ("third", "sent", None)]


def test_a_reminder_deferred_by_quiet_hours_still_goes_after_a_short_red_spell(sqlite_url, scenario, world):
    """Quiet hours held Ravi's one cart reminder until 20:00; the number was RED from 19:55 to 20:30. The
    reminder goes once it recovers (it was held 35 minutes, not dropped)."""
    sc = scenario(sqlite_url, "shopify", journeys={"checkout_recovery": {"abandon_after_minutes": 30, "ladder_minutes": [0]}},
                  policy={"quiet_hours": "11:00-20:00"})
    t0 = sc.now
    SHOPIFY.start_checkout(sc, "cartR", RAVI)
    sc.at(t0 + timedelta(hours=9, minutes=25), step=timedelta(minutes=30))
    account(sc, number("FLAGGED", current_limit="TIER_1K"), at=sc.now)
    sc.later(minutes=10, step=timedelta(minutes=5))
    assert sc.templates_to(RAVI) == []
    account(sc, number("UNFLAGGED", current_limit="TIER_1K"), at=sc.now + timedelta(minutes=25))
    sc.later(hours=1, step=timedelta(minutes=10))
    assert sc.templates_to(RAVI) == ["cart_1_v1"]


def test_a_lifted_restriction_sends_the_latest_held_reminder_not_all_of_them(sqlite_url, scenario, world):
    """A 30-hour restriction of business-initiated messages held all three of Ravi's cart reminders; once it
    ends only the latest goes."""
    sc = scenario(sqlite_url, "shopify", journeys=LADDER)
    until = sc.now + timedelta(hours=30)
    account(sc, restriction("RESTRICTED_BIZ_INITIATED_MESSAGING", until=until), at=sc.now)
    SHOPIFY.start_checkout(sc, "cartR", RAVI)
    sc.at(until + timedelta(minutes=1), step=timedelta(hours=1))
    sc.later(minutes=5, step=timedelta(minutes=1))
    assert sc.templates_to(RAVI) == ["cart_3_v1"]
    assert [status for _, status, _ in _cart_rows(sc)] == ["skipped", "skipped", "sent"]


def test_a_restriction_of_replies_only_is_told_and_holds_no_cod_question(sqlite_url, scenario, world):
    """Meta restricts only replies to customers who write in: the owner hears it, and Asha's COD question
    (a template, which starts a conversation) still goes."""
    sc = scenario(sqlite_url, "shopify", journeys=COD)
    account(sc, restriction("RESTRICTED_CUSTOMER_INITIATED_MESSAGING", until=sc.now + timedelta(days=2)), at=sc.now)
    SHOPIFY.place(sc, SHOPIFY.order(1, ASHA, sc.now))
    sc.later(minutes=30)
    assert sc.templates_to(ASHA) == ["cod_confirm_v1"]
    [(_, text)] = told(world)
    assert "Meta restricted the WhatsApp Business Account" in text and "COD questions, order updates and reminders" in text
    assert whatsapp_health(sc)["sends_held"] is None


def _cart_rows(sc) -> list[tuple]:
    with sc.runtime.db.engine.connect() as conn:
        return [tuple(r) for r in conn.execute(
            select(m.OutboxMessage.step, m.OutboxMessage.status, m.OutboxMessage.skip_reason)
            .where(m.OutboxMessage.journey == "checkout_recovery").order_by(m.OutboxMessage.id))]


def test_a_lowered_messaging_limit_is_told_once_and_a_raised_one_joins_its_case(sqlite_url, scenario, world):
    sc = scenario(sqlite_url, "shopify", journeys=COD)
    lowered = number("DOWNGRADE", old_limit="TIER_1K", current_limit="TIER_250")
    account(sc, lowered, at=sc.now)
    account(sc, lowered, at=sc.now)
    account(sc, lowered, at=sc.now + timedelta(minutes=5))
    # a raise Meta sent an hour before the cut, arriving after it: stale, nobody is told, the cut stands
    account(sc, number("UPGRADE", old_limit="TIER_250", current_limit="TIER_1K"), at=sc.now - timedelta(hours=1))
    sc.later(minutes=10)
    [(_, text)] = told(world)
    assert "Meta lowered the messaging limit of WhatsApp number" in text and "from TIER_1K to TIER_250" in text
    assert whatsapp_health(sc)["messaging_limit"] == "TIER_250"
    late = [r for r in sc.api("/inbox")["items"] if r["topic"] == "number_quality" and r["status"] == "ignored"]
    assert [r["error"] for r in late] == ["stale: newer state already stored"]

    account(sc, number("UPGRADE", old_limit="TIER_250", max_daily_conversations_per_business=2000), at=sc.now + timedelta(days=1))
    sc.later(minutes=10)
    assert len(told(world)) == 2 and "Meta raised the messaging limit" in told(world)[1][1] and "to 2000" in told(world)[1][1]
    assert whatsapp_health(sc)["messaging_limit"] == "2000"
    [case] = sc.handoffs("open")
    assert len(case["context"]["updates"]) == 1


def test_a_number_not_yet_given_a_limit_is_told_of_no_tier_not_set_limit(sqlite_url, scenario, world):
    """TIER_NOT_SET (Meta's reference: the number has not sent a message yet) is no messaging limit: a new
    number flagged, then raised to its first limit, is never told its limit "is TIER_NOT_SET" nor that it
    was raised "from TIER_NOT_SET"."""
    sc = scenario(sqlite_url, "shopify", journeys=COD)
    account(sc, number("FLAGGED", current_limit="TIER_NOT_SET"), at=sc.now)
    sc.later(minutes=10)
    [(_, flagged)] = told(world)
    assert "was flagged by Meta: its quality rating is RED" in flagged and "TIER_NOT_SET" not in flagged

    account(sc, number("UPGRADE", old_limit="TIER_NOT_SET", current_limit="TIER_250"), at=sc.now + timedelta(hours=1))
    sc.later(minutes=10)
    assert len(told(world)) == 2
    raised = told(world)[1][1]
    assert "Meta raised the messaging limit of WhatsApp number" in raised and "to TIER_250" in raised
    assert "TIER_NOT_SET" not in raised
    assert whatsapp_health(sc)["messaging_limit"] == "TIER_250"


def test_a_template_the_store_sends_rated_red_opens_its_case_for_the_journeys_owner(sqlite_url, scenario, world):
    """YELLOW tells nobody; RED opens the COD question's template case for the qualification desk; a template
    the store does not send tells nobody; GREEN again joins the open case."""
    sc = scenario(sqlite_url, "shopify", journeys=COD)
    account(sc, template_quality("cod_confirm_v1", "YELLOW", "GREEN"), template_quality("welcome_v3", "RED", "GREEN"), at=sc.now)
    sc.later(minutes=1)
    assert told(world) == [] and sc.handoffs() == []

    account(sc, template_quality("cod_confirm_v1", "RED", "YELLOW"), at=sc.now)
    account(sc, template_quality("cod_confirm_v1", "RED", "YELLOW"), at=sc.now + timedelta(minutes=1))  # the same news again
    sc.later(minutes=2)
    [(stage, text)] = told(world)
    assert stage == "qualification"
    assert "WhatsApp template cod_confirm_v1 (en), used by cod_confirmation.ask, is rated RED (low quality, was YELLOW)" in text
    assert "132015" in text
    [case] = sc.handoffs("open")
    assert (case["subject"], case["journey"]) == ("template:cod_confirm_v1:en", "cod_confirmation")

    account(sc, template_quality("cod_confirm_v1", "GREEN", "RED"), at=sc.now)
    sc.later(minutes=1)
    assert len(told(world)) == 2 and "is rated GREEN (high quality, was RED)" in told(world)[1][1]


def test_a_numbers_news_reaches_only_the_store_that_sends_from_it(db_url):
    """Two stores on one business account: shop-a's number flagged is shop-a's news, not shop-b's; an account
    event nothing here acts on (a partner added) is kept and opens nothing."""
    raw = settings_dict(db_url)
    raw["whatsapp"]["business_account_id"] = WABA
    raw["stores"][0]["whatsapp_display_phone_number"] = "+1 555-078-3881"
    raw["stores"][1]["whatsapp_display_phone_number"] = "15550001111"
    for s in raw["stores"][:2]:
        s["stages"] = {"entry": {"owner": "Owner"}}
    settings = parse_settings(raw, environ={})
    partner = {"field": "account_update", "value": {"event": "PARTNER_ADDED", "waba_info": {"waba_id": WABA, "owner_business_id": "1"}}}
    env = {"object": "whatsapp_business_account", "entry": [{"id": WABA, "time": 1795158000, "changes": [number("FLAGGED"), partner]}]}
    body = json.dumps(env).encode()
    with running_app(settings) as (client, runtime):
        r = client.post("/webhooks/whatsapp", content=body, headers={"Content-Type": "application/json",
                                                                     "X-Hub-Signature-256": meta_signature(body, SECRETS["wa_app"])})
        runtime.processor.drain()
        cases = {k: client.get(f"/api/stores/{k}/handoffs", headers=ADMIN).json()["items"] for k in ("shop-a", "shop-b")}
        quality = {k: client.get(f"/api/stores/{k}/report", headers=ADMIN).json()["connector_health"]["whatsapp"]["quality_rating"]
                   for k in ("shop-a", "shop-b")}
        kept_b = client.get("/api/stores/shop-b/inbox", headers=ADMIN).json()["items"]
    assert r.status_code == 200
    assert [c["subject"] for c in cases["shop-a"]] == [f"number:{PHONE_ID_A}"] and cases["shop-a"][0]["owner"] == "Owner"
    assert cases["shop-b"] == []
    assert quality == {"shop-a": "RED", "shop-b": None}
    assert [(r["topic"], r["status"]) for r in kept_b] == [("account_update", "done")]
