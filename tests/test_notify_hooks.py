"""Hand-off alerts and the stage owners' webhooks (Slack-compatible), as a stage owner notices them:

- a hook that answers 429 with ``Retry-After`` is not called again before that time (seconds or an
  HTTP-date, read against the answer's Date header, else the notifier's clock), nor much later than ``HOOK_RETRY_AFTER_CAP`` whatever it asks;
- one stage's failing hook delays no other stage's alerts: neither those of other customers (a hook
  that hangs until its timeout, alert after alert, before any other stage's alert was tried) nor the
  same customer's (her COD case's alert waited behind her delivery case's retrying one);
- the failing hook is called once for its waiting alerts, not once each: they wait for its retry.

The notifier with its injected clock, and each hook faked at the HTTP boundary (respx).
"""

from __future__ import annotations

import asyncio
import email.utils
from datetime import datetime, timedelta

import httpx
import pytest
import respx
from sqlalchemy import select

from connector import events as ev
from connector.config import parse_settings
from connector.handoffs import HandoffRequest, open_handoff
from connector.outbox.notify import HOOK_RETRY_AFTER_CAP, NotifyDispatcher
from connector.state import upsert_contact
from connector.storage.db import Database
from connector.storage.inbox import sync_stores
from connector.storage.sql import OUTBOX
from tests.conftest import settings_dict
from tests.test_writebacks import T0, Clock

DELIVERY_HOOK = "https://hooks.slack.example/services/T000/B000/DELIVERY"
COD_HOOK = "https://hooks.slack.example/services/T000/B000/CODTEAM"


def two_desks(db_url: str):  # type: ignore[no-untyped-def]
    """shop-a: the delivery desk (post_purchase) and the COD team (qualification), each with its own hook."""
    raw = settings_dict(db_url)
    raw["stores"][0].update(journeys={"cod_confirmation": {}, "delivery": {}}, policy={"quiet_hours": ""},
                            stages={"post_purchase": {"owner": "Delivery desk", "notify_url": DELIVERY_HOOK},
                                    "qualification": {"owner": "COD team", "notify_url": COD_HOOK}})
    return parse_settings(raw, environ={})


def open_case(db: Database, settings, sid: int, phone: str, key: str, stage: str) -> int:  # type: ignore[no-untyped-def]
    with db.engine.begin() as conn:
        cid = upsert_contact(conn, sid, T0, phone=ev.Phone(raw=phone, e164=phone), customer=ev.Customer(first_name="Asha"))
        hid = open_handoff(conn, settings.store("shop-a"), sid, cid, HandoffRequest(key, f"{key}: please call her", stage=stage), T0)
    assert hid is not None
    return hid


class Hooks:
    """The two hooks at the HTTP boundary: what each heard, and when on the notifier's clock."""

    def __init__(self, clock: Clock, delivery, cod=None):  # type: ignore[no-untyped-def]
        self.clock = clock
        self.heard: dict[str, list[datetime]] = {DELIVERY_HOOK: [], COD_HOOK: []}
        self.router = respx.Router(assert_all_mocked=True)
        for url, answer in ((DELIVERY_HOOK, delivery), (COD_HOOK, cod or (lambda request: httpx.Response(200, text="ok")))):
            self.router.post(url).mock(side_effect=self._hearing(url, answer))

    def _hearing(self, url: str, answer):  # type: ignore[no-untyped-def]
        def hear(request: httpx.Request) -> httpx.Response:
            self.heard[url].append(self.clock.now)
            return answer(request)
        return hear

    def notifier(self, db: Database, settings, ids) -> NotifyDispatcher:  # type: ignore[no-untyped-def]
        return NotifyDispatcher(db, settings, ids, http=httpx.AsyncClient(transport=httpx.MockTransport(self.router.handler)),
                                clock=self.clock)


def rounds(notifier: NotifyDispatcher, clock: Clock, at: list[timedelta]) -> None:
    """The notifier's loop at each of these times after T0, until nothing is due."""
    async def run() -> None:
        try:
            for offset in at:
                clock.now = max(clock.now, T0 + offset)
                while await notifier.run_once():
                    pass
        finally:
            await notifier.aclose()

    asyncio.run(run())


def alert_rows(db: Database) -> dict[int, tuple[str, int]]:
    with db.engine.connect() as conn:
        rows = conn.execute(select(OUTBOX.c.payload, OUTBOX.c.status, OUTBOX.c.attempts).where(OUTBOX.c.channel == "notify")).all()
    return {r.payload["handoff_id"]: (r.status, r.attempts) for r in rows}


# ---- a 429's Retry-After ------------------------------------------------------------------------

@pytest.mark.parametrize("form", ["seconds", "http-date"])
def test_a_hook_answering_429_is_not_called_again_before_its_retry_after(db, db_url, form):
    """Slack rate-limits a hook (about one message a second) and says when to come back. Before: the
    Retry-After was ignored and the alert came back after the backoff's 1-2 s, into the same limit."""
    settings = two_desks(db_url)
    ids = sync_stores(db, [(s.key, s.platform) for s in settings.stores])
    hid = open_case(db, settings, ids["shop-a"], "+919876543210", "parcel:1", "post_purchase")
    clock = Clock(T0)
    wait = "120" if form == "seconds" else email.utils.format_datetime(T0 + timedelta(seconds=120), usegmt=True)
    answers = iter([httpx.Response(429, headers={"Retry-After": wait}, text="rate_limited")])
    hooks = Hooks(clock, lambda request: next(answers, httpx.Response(200, text="ok")))

    rounds(hooks.notifier(db, settings, ids), clock, [timedelta(0), timedelta(seconds=5), timedelta(seconds=60),
                                                     timedelta(seconds=119), timedelta(seconds=121)])
    assert hooks.heard[DELIVERY_HOOK] == [T0, T0 + timedelta(seconds=121)]  # nothing in between
    assert alert_rows(db) == {hid: ("sent", 2)}  # the delivery desk was told


def test_a_retry_after_of_a_day_is_capped_the_alert_still_reaches_its_owner_the_same_hour(db, db_url):
    """A hook that asks for a day (a misconfigured proxy): a person waits on the alert, so it is tried again
    after ``HOOK_RETRY_AFTER_CAP`` (not before: the hook asked for longer), not tomorrow."""
    settings = two_desks(db_url)
    ids = sync_stores(db, [(s.key, s.platform) for s in settings.stores])
    hid = open_case(db, settings, ids["shop-a"], "+919876543210", "parcel:1", "post_purchase")
    clock = Clock(T0)
    answers = iter([httpx.Response(429, headers={"Retry-After": "86400"})])
    hooks = Hooks(clock, lambda request: next(answers, httpx.Response(200, text="ok")))
    cap = timedelta(seconds=HOOK_RETRY_AFTER_CAP)
    assert timedelta(minutes=1) <= cap <= timedelta(hours=1)

    rounds(hooks.notifier(db, settings, ids), clock, [timedelta(0), timedelta(seconds=30), cap - timedelta(seconds=1),
                                                     cap + timedelta(seconds=1)])
    assert hooks.heard[DELIVERY_HOOK] == [T0, T0 + cap + timedelta(seconds=1)]
    assert alert_rows(db) == {hid: ("sent", 2)}


# ---- one stage's failing hook, another stage's alerts ---------------------------------------------

def test_a_hanging_hook_of_one_stage_delays_no_alert_of_another_stage(db, db_url):
    """Eight parcels went missing; the delivery desk's hook hangs until the call's timeout (15 s) on each
    alert. The COD team's case came just after. Before: the notifier waited out eight timeouts, one alert
    after the other (two minutes), before the COD team's alert was even tried."""
    settings = two_desks(db_url)
    ids = sync_stores(db, [(s.key, s.platform) for s in settings.stores])
    sid = ids["shop-a"]
    parcels = [open_case(db, settings, sid, f"+9198765{i:05d}", f"parcel:{i}", "post_purchase") for i in range(8)]
    cod = open_case(db, settings, sid, "+919812345678", "cod:1", "qualification")
    clock = Clock(T0)

    def hangs(request: httpx.Request) -> httpx.Response:
        clock.now += timedelta(seconds=15)  # the call's whole time, then no answer
        raise httpx.ReadTimeout("no answer", request=request)

    hooks = Hooks(clock, hangs)
    rounds(hooks.notifier(db, settings, ids), clock, [timedelta(0)])
    [told] = hooks.heard[COD_HOOK]
    assert told <= T0 + timedelta(seconds=15)  # the COD team heard at once, whatever the delivery desk's hook does
    assert len(hooks.heard[DELIVERY_HOOK]) == 1  # the hanging hook was tried once; its other alerts wait for its retry
    rows = alert_rows(db)
    assert rows[cod] == ("sent", 1)
    assert [rows[p] for p in parcels] == [("pending", 1)] + [("pending", 0)] * 7  # none failed, none spent a try untried


def test_her_cod_alert_does_not_wait_behind_her_delivery_alerts_failing_hook(db, db_url):
    """Asha's parcel case (the delivery desk, whose hook answers 503) and then her COD case (the COD
    team, whose hook works). Before: one alert per customer at a time, across stages: her COD alert
    waited in line behind the delivery alert's retries, for minutes, until the notifier gave up on it."""
    settings = two_desks(db_url)
    ids = sync_stores(db, [(s.key, s.platform) for s in settings.stores])
    sid = ids["shop-a"]
    parcel = open_case(db, settings, sid, "+919876543210", "parcel:1", "post_purchase")
    cod = open_case(db, settings, sid, "+919876543210", "cod:1", "qualification")
    clock = Clock(T0)
    hooks = Hooks(clock, lambda request: httpx.Response(503, text="<html>down</html>"))

    rounds(hooks.notifier(db, settings, ids), clock, [timedelta(0), timedelta(seconds=30), timedelta(seconds=90)])
    assert hooks.heard[COD_HOOK] == [T0]  # told at once
    rows = alert_rows(db)
    assert rows[cod] == ("sent", 1)
    assert rows[parcel][0] == "pending" and rows[parcel][1] >= 2  # the delivery alert still retries, on its own
