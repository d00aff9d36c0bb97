"""Fixes after review rev7b (2026-12-07): a checkout's SMS opt-in taken back in the same inbox batch whatever else the
batch holds, a tick and an untick of the same minute, a poll read after a tick; a BSUID change heard after her words.

Real app, signed webhooks, the scenario harness's fake Shopify and WhatsApp, a virtual clock.
"""

from __future__ import annotations

import asyncio
from datetime import timedelta

import pytest

from tests.conftest import SECRETS
from tests.helpers import running_app
from tests.scenarios import conftest as _fixtures
from tests.scenarios.harness import T0
from tests.scenarios.stores import SHOPIFY
from tests.scenarios.test_store_journeys import LADDER
from tests.test_bsuid_change_2026_12_07b import ASHA, NEW, OLD, bsuid_text, contacts, inbox, user_id_change
from tests.test_checkout_poll import FIXTURE_ID, FakeCheckouts, fixture_checkout, poll, polled_twin, post_webhook, sent_to, shop_settings
from tests.test_checkout_poll import T as PT
from tests.test_checkout_poll import Clock as PollClock
from tests.test_checkout_poll import iso as poll_iso
from tests.test_consent_and_spacing_fixes import _text
from tests.test_consent_batch_2026_12_07b import ASHA_SMS, _history, _ticked, _unticked

# the scenarios' fixtures (tests/scenarios/conftest.py), for a test file outside that folder
_world_server, world, sqlite_url, scenario = _fixtures._world_server, _fixtures.world, _fixtures.sqlite_url, _fixtures.scenario


# ---- from review rev7b ---------------------------------------------------------------------------------------------

def test_a_tick_for_another_number_and_its_untick_in_one_batch_with_an_order_between_send_that_number_nothing(db_url, scenario, world):
    """The box ticked for a number of its own (Shopify's sms_marketing_phone), then unticked two minutes on; in the same
    minute another customer's order arrives (orders/create and orders/updated, as Shopify sends them): one batch."""
    sc = scenario(db_url, "shopify", journeys=LADDER)
    sc.shopify("checkouts/create", _ticked(T0, sms_phone=ASHA_SMS))
    SHOPIFY.place(sc, SHOPIFY.order(9, "+919800000009", T0, cod=False))
    sc.shopify("checkouts/update", _unticked(T0 + timedelta(minutes=2)))
    sc.later(days=2)

    assert [(s, src) for s, src, _ in _history(sc, ASHA_SMS)] == [("granted", "checkout_opt_in"), ("unknown", "checkout_opt_in_withdrawn")]
    assert sc.contact(ASHA_SMS)["consent"]["marketing"]["state"] == "unknown"


def test_a_user_id_change_heard_after_her_words_with_her_number_keeps_her_number(sqlite_url, scenario, world):
    """Asha first wrote hiding her number (BSUID OLD only). Her id changes to NEW; before Meta's notice arrives she orders
    with her number and writes from it (number and NEW in the message). The notice then comes: her one contact keeps her
    number and her new id, and her order's "shipped" reaches her."""
    sc = scenario(sqlite_url, "shopify", journeys={"delivery": {}})
    bsuid_text(sc, OLD, "Is the neem face wash in stock?", "wamid.HIDDEN")
    sc.later(minutes=5)
    order = SHOPIFY.order(3, ASHA, sc.now, cod=False)
    SHOPIFY.place(sc, order)
    sc.later(minutes=5)
    _text(sc, ASHA, "I just ordered it", sc.now, "wamid.SHOWN", user_id=NEW)
    sc.later(minutes=5)
    sc.post(sc.whatsapp_delivery(user_id_change(sc, OLD, NEW, "wamid.SYS")))
    sc.later(minutes=5)
    sc.post(*SHOPIFY.shipped_deliveries(sc, order))
    sc.later(minutes=5, step=timedelta(minutes=1))
    assert sc.templates_to(ASHA) == ["shipped_v1"]
    assert (ASHA, NEW) in contacts(sc)


# ---- a tick and an untick of the same second ----------------------------------------------------------------------

@pytest.mark.parametrize("together", [True, False], ids=["one batch", "two batches"])
@pytest.mark.parametrize("first", ["ticked", "unticked"])
def test_a_tick_and_an_untick_of_the_same_time_leave_her_without_consent_whichever_comes_first(db_url, scenario, world, first, together):
    """Two reads of her checkout with the same ``updated_at``, one ticked and one not (Shopify keeps no order, and its
    times are to the second): which came first does not decide; without a clear last word, she gave no consent."""
    sc = scenario(db_url, "shopify", journeys=LADDER)
    reads = [_ticked(T0), _unticked(T0)] if first == "ticked" else [_unticked(T0), _ticked(T0)]
    sc.shopify("checkouts/create", reads[0])
    if not together:
        sc.later(minutes=1)
    sc.shopify("checkouts/update", reads[1])
    sc.later(days=2)

    assert sc.templates_to(ASHA) == []
    assert sc.contact(ASHA)["consent"]["marketing"]["state"] != "granted"


# ---- the abandoned-checkout poll, which cannot see the box ----------------------------------------------------------

def _consent(client, phone: str) -> str:
    r = client.get(f"/api/stores/shop-a/contacts/{phone}", headers={"Authorization": f"Bearer {SECRETS['admin']}"})
    assert r.status_code == 200, r.text
    return r.json()["consent"]["marketing"]["state"]


def _polled(webhook: dict, at) -> FakeCheckouts:
    """The poll's read of ``webhook``'s checkout as of ``at``: her account phone is the same number, and her account has
    no WhatsApp or SMS opt-in (all the poll can tell of marketing)."""
    twin = polled_twin(webhook, FIXTURE_ID)
    twin["updatedAt"] = poll_iso(at)
    return FakeCheckouts([twin])


def test_a_tick_heard_after_the_polls_newer_read_still_opts_her_in(db_url):
    """Her checkout's webhook (the box ticked, 06:55) is late; the poll reads the checkout at 07:00 first (it cannot see
    the box). The poll's read is no answer to her tick: when the webhook comes, she is opted in, and her cart reminder
    goes."""
    settings = shop_settings(db_url)
    store = settings.stores[0]
    webhook = fixture_checkout()  # ticked, updated 06:55
    clock = PollClock(PT)
    with running_app(settings) as (client, runtime):
        runtime.processor.clock = clock
        sid = runtime.store_ids["shop-a"]
        asyncio.run(poll(runtime.db, store, sid, _polled(webhook, PT), PT))
        runtime.processor.drain()
        clock.now = PT + timedelta(minutes=2)
        post_webhook(client, webhook)
        runtime.processor.drain()
        clock.now = PT + timedelta(minutes=31)  # abandoned at 07:30
        runtime.processor.process_timers()
        queued, _ = sent_to(runtime.db)
        consent = _consent(client, "+919876543210")
    assert consent == "granted"
    assert queued == [("+919876543210", "first", "pending")]


@pytest.mark.parametrize("untick_at", [4, 1], ids=["untick after the poll's read", "untick before the poll's read, heard after"])
def test_a_poll_read_between_her_tick_and_her_untick_does_not_keep_her_opted_in(db_url, untick_at):
    """She ticks the box (06:55) and unticks it (06:59, or 06:56 but heard late); the poll read the checkout at 06:58 in
    between (it cannot see the box, and her account has no opt-in). Her last word is the untick: no cart reminder."""
    settings = shop_settings(db_url)
    store = settings.stores[0]
    webhook = fixture_checkout()  # ticked, updated 06:55
    unticked = {**webhook, "buyer_accepts_sms_marketing": False, "updated_at": poll_iso(PT - timedelta(minutes=5 - untick_at))}
    clock = PollClock(PT - timedelta(minutes=5))
    with running_app(settings) as (client, runtime):
        runtime.processor.clock = clock
        sid = runtime.store_ids["shop-a"]
        post_webhook(client, webhook)
        runtime.processor.drain()
        assert _consent(client, "+919876543210") == "granted"
        clock.now = PT - timedelta(minutes=2)
        asyncio.run(poll(runtime.db, store, sid, _polled(webhook, clock.now), clock.now))
        runtime.processor.drain()
        clock.now = PT
        post_webhook(client, unticked, "checkouts/update")
        runtime.processor.drain()
        clock.now = PT + timedelta(hours=1)
        runtime.processor.process_timers()
        queued, _ = sent_to(runtime.db)
        consent = _consent(client, "+919876543210")
    assert consent == "unknown"
    assert [q for q in queued if q[2] != "skipped"] == []  # her reminder is withheld: nothing goes


# ---- a BSUID change: which contact is hers ------------------------------------------------------------------------

def test_a_user_id_change_between_two_numberless_contacts_keeps_one_and_hears_her_new_id(sqlite_url, scenario, world):
    """Both ids wrote with her number hidden (OLD, then NEW before the notice): two contacts without a number. The
    notice joins them: one contact, her new id, both messages on it."""
    sc = scenario(sqlite_url, "shopify", journeys=LADDER)
    bsuid_text(sc, OLD, "Is the neem face wash in stock?", "wamid.H1")
    sc.later(minutes=5)
    bsuid_text(sc, NEW, "And the rose water?", "wamid.H2")
    sc.later(minutes=5)
    sc.post(sc.whatsapp_delivery(user_id_change(sc, OLD, NEW, "wamid.SYS")))
    sc.later(minutes=5)
    bsuid_text(sc, NEW, "Hello again", "wamid.H3")
    sc.later(minutes=5)
    assert [status for status, _ in inbox(sc)] == ["done"] * 4, inbox(sc)
    assert [r for r in contacts(sc) if r[1] is not None] == [(None, NEW)]


def test_her_previous_id_heard_after_the_window_is_a_new_sender_and_fails_nothing(sqlite_url, scenario, world):
    """Asha wrote with her number hidden (OLD), and Meta changed her id to NEW. Over 30 days on, a message under OLD
    comes (the window in which a previous id still finds her has passed: as for a previous number, it is no longer
    taken for her). It is kept, as a new sender's, and its inbox row is done, not failed for a key her contact still
    held; her own contact keeps her new id."""
    sc = scenario(sqlite_url, "shopify", journeys=LADDER)
    bsuid_text(sc, OLD, "Is the neem face wash in stock?", "wamid.HIDDEN")
    sc.later(minutes=5)
    sc.post(sc.whatsapp_delivery(user_id_change(sc, OLD, NEW, "wamid.SYS")))
    sc.later(days=31)
    bsuid_text(sc, OLD, "Hello?", "wamid.LATE")
    sc.later(minutes=5)
    bsuid_text(sc, NEW, "Still there?", "wamid.NEW")
    sc.later(minutes=5)
    assert [status for status, _ in inbox(sc)] == ["done"] * 4, inbox(sc)
    assert [r for r in contacts(sc) if r[1] is not None] == [(None, NEW), (None, OLD)]
