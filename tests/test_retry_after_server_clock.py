"""A Retry-After given as a date is a moment on the server's clock, not ours.

Before: the date was read against the connector's clock, so a Slack hook (or Meta, a store) whose clock
ran an hour behind ours asked for two minutes and was called again at once, into the same limit; one
running ahead was left alone for the whole cap. Now the wait is the date minus the answer's own ``Date``
header (RFC 9110 10.2.3), and only an answer without a readable ``Date`` is read against our clock.
"""

from __future__ import annotations

import email.utils
from datetime import datetime, timedelta, timezone

import httpx

from adapters.whatsapp import errors
from connector.errors import RetryableError
from connector.storage.inbox import sync_stores
from tests.adapters.test_whatsapp_client import graph_error, send_error
from tests.test_notify_hooks import DELIVERY_HOOK, Hooks, alert_rows, open_case, rounds, two_desks
from tests.test_writebacks import T0, Clock


def http_date(when: datetime) -> str:
    return email.utils.format_datetime(when, usegmt=True)


def test_a_hook_whose_clock_is_an_hour_behind_still_gets_the_two_minutes_it_asked_for(db, db_url):
    settings = two_desks(db_url)
    ids = sync_stores(db, [(s.key, s.platform) for s in settings.stores])
    hid = open_case(db, settings, ids["shop-a"], "+919876543210", "parcel:1", "post_purchase")
    clock = Clock(T0)
    theirs = T0 - timedelta(hours=1)  # the hook's server clock
    answers = iter([httpx.Response(429, headers={"Date": http_date(theirs), "Retry-After": http_date(theirs + timedelta(seconds=120))},
                                   text="rate_limited")])
    hooks = Hooks(clock, lambda request: next(answers, httpx.Response(200, text="ok")))

    rounds(hooks.notifier(db, settings, ids), clock, [timedelta(0), timedelta(seconds=5), timedelta(seconds=119),
                                                     timedelta(seconds=121)])
    assert hooks.heard[DELIVERY_HOOK] == [T0, T0 + timedelta(seconds=121)]  # not again at 5 s
    assert alert_rows(db) == {hid: ("sent", 2)}


def test_meta_asking_for_a_minute_by_a_date_on_a_clock_ahead_of_ours_waits_a_minute():
    ours = datetime.now(timezone.utc)
    theirs = ours + timedelta(minutes=30)
    exc = send_error(graph_error(130429, status=429, headers={"Date": http_date(theirs),
                                                              "Retry-After": http_date(theirs + timedelta(seconds=60))}))
    assert type(exc) is RetryableError
    assert exc.retry_after == 60.0  # not the half hour (capped at an hour) our clock would have read


def test_an_unreadable_date_header_falls_back_to_our_clock():
    now = datetime(2026, 11, 22, 12, 0, tzinfo=timezone.utc)
    assert errors.parse_retry_after("Sun, 22 Nov 2026 12:00:30 GMT", now=now, sent="yesterday-ish") == 30.0
    assert errors.parse_retry_after("Sun, 22 Nov 2026 12:00:30 GMT", now=now, sent="Sun, 22 Nov 2026 11:00:00 GMT") == 3600.0  # capped
    assert errors.parse_retry_after("45", now=now, sent="Sun, 22 Nov 2026 11:00:00 GMT") == 45.0  # seconds need no clock
