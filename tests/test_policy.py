"""The policy gate's rules, each on its own, as a store owner would state them."""

from __future__ import annotations

import asyncio

from datetime import datetime, time, timedelta, timezone
from zoneinfo import ZoneInfo

import pytest

from connector.outbox.ratelimit import InFlightLimit, RecipientSpacer, TokenBucket
from connector.outbox.retry import RetryPolicy, next_attempt_at
from connector.policy import (DEFAULT_START_WORDS, DEFAULT_STOP_WORDS, ContactFacts, PolicyRules, SendHistory, check, keyword_intent,
                              next_allowed)

IST = ZoneInfo("Asia/Kolkata")
NY = ZoneInfo("America/New_York")
NOON_IST = datetime(2026, 11, 20, 6, 30, tzinfo=timezone.utc)  # 12:00 in Kolkata
OK = ContactFacts(consent_utility="granted", consent_marketing="granted")
RULES = PolicyRules()


def decide(category="marketing", kind="template", journey="reorder", contact=OK, history=SendHistory(), rules=RULES, tz=IST, now=NOON_IST):
    return check(category=category, kind=kind, journey=journey, contact=contact, history=history, rules=rules, tz=tz, now=now)


def test_consent_per_category():
    assert decide().allowed
    assert decide(contact=ContactFacts(consent_utility="granted")).reason == "no_marketing_consent"
    assert decide(category="utility", contact=ContactFacts(consent_marketing="granted")).reason == "no_utility_consent"
    assert decide(category="utility", contact=ContactFacts(), rules=PolicyRules(utility_needs_consent=False)).allowed
    revoked = ContactFacts(consent_utility="granted", consent_marketing="revoked")
    assert decide(contact=revoked).reason == "no_marketing_consent"


def test_opted_out_and_unreachable_block_everything():
    out = ContactFacts("granted", "granted", opted_out_at=NOON_IST - timedelta(days=1))
    assert decide(category="utility", contact=out).reason == "opted_out"
    assert decide(category="utility", contact=ContactFacts("granted", "granted", reachable=False)).reason == "unreachable"


def test_free_form_only_inside_the_24_hour_window():
    recent = ContactFacts("granted", "granted", last_inbound_at=NOON_IST - timedelta(hours=23, minutes=59))
    stale = ContactFacts("granted", "granted", last_inbound_at=NOON_IST - timedelta(hours=24))
    assert decide(category="utility", kind="interactive", contact=recent).allowed
    assert decide(category="utility", kind="text", contact=stale).reason == "outside_service_window"
    assert decide(category="utility", kind="text", contact=OK).reason == "outside_service_window"
    assert decide(category="utility", kind="template", contact=stale).allowed  # templates are fine outside it


def test_quiet_hours_defer_marketing_to_the_morning_in_the_store_zone():
    late = datetime(2026, 11, 20, 17, 0, tzinfo=timezone.utc)  # 22:30 in Kolkata, 12:00 in New York
    d = decide(now=late)
    assert not d.allowed and d.reason == "quiet_hours"
    assert d.defer_until == datetime(2026, 11, 21, 3, 30, tzinfo=timezone.utc)  # 09:00 IST next day
    assert decide(now=late, tz=NY).allowed  # same instant, a New York store is at noon
    assert decide(category="utility", now=late).allowed  # utility goes out by default
    strict = PolicyRules(utility_in_quiet_hours=False)
    assert decide(category="utility", now=late, rules=strict).reason == "quiet_hours"


def test_quiet_hours_across_midnight_and_a_dst_change():
    early = datetime(2026, 11, 20, 2, 0, tzinfo=timezone.utc)  # 07:30 IST, still quiet
    assert decide(now=early).defer_until == datetime(2026, 11, 20, 3, 30, tzinfo=timezone.utc)
    # New York falls back on 2026-11-01: 09:00 local is 13:00 UTC the day before and 14:00 UTC on that day
    before = datetime(2026, 11, 1, 4, 0, tzinfo=timezone.utc)  # 00:00 EDT
    assert next_allowed(before, NY, time(21), time(9)) == datetime(2026, 11, 1, 14, 0, tzinfo=timezone.utc)
    assert next_allowed(NOON_IST, IST, time(21), time(9)) == NOON_IST
    assert decide(rules=PolicyRules(quiet_start=None, quiet_end=None), now=early).allowed


def test_frequency_cap_counts_all_marketing_journeys():
    two = SendHistory(marketing_sent_at=(NOON_IST - timedelta(days=1), NOON_IST - timedelta(days=6)))
    assert decide(journey="checkout_recovery", history=two).reason == "frequency_cap"
    assert decide(journey="reorder", history=two).reason == "frequency_cap"
    old = SendHistory(marketing_sent_at=(NOON_IST - timedelta(days=1), NOON_IST - timedelta(days=8)))
    assert decide(history=old).allowed
    assert decide(category="utility", history=two).allowed  # the cap is for marketing only


def test_no_cart_reminder_right_after_an_order_confirmation():
    confirmed = SendHistory(last_order_confirmation_at=NOON_IST - timedelta(hours=3))
    assert decide(journey="checkout_recovery", history=confirmed).reason == "recent_order_confirmation"
    assert decide(journey="reorder", history=confirmed).allowed
    day_old = SendHistory(last_order_confirmation_at=NOON_IST - timedelta(hours=25))
    assert decide(journey="checkout_recovery", history=day_old).allowed


@pytest.mark.parametrize("text", ["STOP", "stop.", " Unsubscribe ", "arrêt", "BAJA", "बंद करो", "توقف", "Stop!!"])
def test_stop_keywords_in_several_languages(text):
    assert keyword_intent(text, RULES) == "stop"


@pytest.mark.parametrize("text", ["please stop calling me, I confirmed", "Confirm", "cancel", "", None, "stopped?"])
def test_ordinary_messages_are_not_keywords(text):
    assert keyword_intent(text, RULES) is None


@pytest.mark.parametrize("text", ["रुको", "रुको।", "बाद", "बाद करो", "शेर", "रखो"])
def test_a_hindi_word_a_vowel_sign_away_from_a_keyword_is_not_one(text):
    """रुको (wait) is not रोको (stop), बाद (later) is not बंद (stop), शेर (lion) is not शुरू (start): the
    vowel signs spell the word, so "wait" to a COD question opts nobody out."""
    assert keyword_intent(text, RULES) is None


_AS_TYPED = {"arret": "Arrêt !", "arreter": "ARRÊTER", "desabonner": "Désabonner", "desinscrire": "désinscrire",
             "demarrer": "Démarrer", "cancelar suscripcion": "Cancelar suscripción", "الغاء الاشتراك": "إلغاء الاشتراك",
             "توقف": "تَوَقَّفْ", "बंद करो": "बंद करो।", "रोको": "रोको!", "शुरू": "शुरू 🙏", "stop": "ＳＴＯＰ 🛑"}


@pytest.mark.parametrize(("word", "intent"), [(w, "stop") for w in DEFAULT_STOP_WORDS] + [(w, "start") for w in DEFAULT_START_WORDS])
def test_every_default_keyword_matches_as_customers_type_it(word, intent):
    """Each shipped keyword (English, Hindi and Hinglish, Spanish, Portuguese, Italian, French, German, Arabic) in
    capitals, with punctuation, with the accents or vowel points its language may carry, and with an emoji."""
    for typed in (word, word.upper(), f" {word.title()}! ", f"{word} 👍", _AS_TYPED.get(word, word)):
        assert keyword_intent(typed, RULES) == intent, typed


def test_start_and_custom_keywords():
    assert keyword_intent("START", RULES) == "start"
    custom = PolicyRules(stop_words=frozenset({"basta ya"}), start_words=frozenset({"volver"}))
    assert keyword_intent("Basta ya!", custom) == "stop" and keyword_intent("stop", custom) is None
    assert keyword_intent("volver", custom) == "start"


def test_retry_backoff_is_capped_jittered_and_honours_retry_after():
    policy = RetryPolicy(base_seconds=2, cap_seconds=60, max_attempts=5)
    t0 = NOON_IST
    delays = [(next_attempt_at(n, None, policy, t0, 1.0) - t0).total_seconds() for n in range(1, 5)]
    assert delays == [2, 4, 8, 16]
    assert (next_attempt_at(1, None, policy, t0, 0.0) - t0).total_seconds() == 1  # half fixed, half jitter
    assert (next_attempt_at(4, None, RetryPolicy(2, 10, 9), t0, 1.0) - t0).total_seconds() == 10  # capped
    assert (next_attempt_at(1, 30.0, policy, t0, 0.5) - t0).total_seconds() == 30  # Retry-After is a floor
    assert next_attempt_at(5, None, policy, t0, 0.5) is None  # give up


def test_token_bucket_hands_out_slots_at_the_rate():
    clock = [100.0]
    bucket = TokenBucket(rate=80, clock=lambda: clock[0])
    waits = [bucket.reserve() for _ in range(161)]
    assert waits[0] == 0 and waits[-1] == pytest.approx(2.0)  # 160 more slots take exactly 2 s
    clock[0] += 10  # idle: no stockpile beyond the burst
    assert bucket.reserve() == 0 and bucket.reserve() == pytest.approx(1 / 80)


def test_sends_in_flight_follow_rate_times_latency_within_the_cap():
    clock = [0.0]
    rate = [80.0]
    limit = InFlightLimit(64, lambda: rate[0], clock=lambda: clock[0])
    assert limit.limit == 4  # before any answer: start small
    limit.observe(0.150)  # Graph at 150 ms, 80/s: 80 x 0.15 x 2 + 1
    assert limit.limit == 25
    limit.observe(2.0)  # one slow answer (or a busy event loop) does not inflate it
    assert limit.limit == 25
    rate[0] = 1000.0
    limit.observe(0.0005)  # a 0.5 ms peer at 1,000/s needs 2, not 64 idle connections
    assert limit.limit == 2
    clock[0] = 11.0  # latency really rose: the old minimum still counts for one window...
    limit.observe(0.3)
    assert limit.limit == 2
    clock[0] = 17.0  # ... and is forgotten after two
    limit.observe(0.3)
    assert limit.limit == 64  # 1000 x 0.3 x 2 + 1 = 601, capped


def test_in_flight_limit_makes_the_rest_wait_and_wakes_them_in_order():
    async def go():
        limit = InFlightLimit(2, lambda: 1.0, start=2)
        order: list[int] = []
        peak = 0
        release = asyncio.Event()

        async def send(i: int) -> None:
            nonlocal peak
            async with limit:
                peak = max(peak, limit.in_flight)
                order.append(i)
                if i < 2:
                    await release.wait()

        tasks = [asyncio.create_task(send(i)) for i in range(5)]
        await asyncio.sleep(0)
        assert order == [0, 1]  # the other three wait for a slot
        release.set()
        await asyncio.gather(*tasks)
        return order, peak, limit.in_flight

    order, peak, left = asyncio.run(go())
    assert order == [0, 1, 2, 3, 4] and peak == 2 and left == 0


def test_a_cancelled_waiter_gives_its_slot_back():
    async def go():
        limit = InFlightLimit(1, lambda: 1.0, start=1)
        await limit.__aenter__()
        waiter = asyncio.create_task(limit.__aenter__())
        await asyncio.sleep(0)
        waiter.cancel()
        await limit.__aexit__(None, None, None)
        await asyncio.gather(waiter, return_exceptions=True)
        assert limit.in_flight == 0
        await asyncio.wait_for(limit.__aenter__(), 1)  # the slot is free again
        return limit.in_flight

    assert asyncio.run(go()) == 1


def test_recipient_spacer():
    clock = [0.0]
    spacer = RecipientSpacer(6, clock=lambda: clock[0])
    assert spacer.wait_for("+1") == 0
    spacer.mark("+1")
    clock[0] = 2
    assert spacer.wait_for("+1") == 4 and spacer.wait_for("+2") == 0
