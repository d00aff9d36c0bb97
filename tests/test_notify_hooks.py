"""Hand-off alerts and the stage owners' webhooks (Slack-compatible), as a stage owner notices them:

- a hook that answers 429 with ``Retry-After`` is not called again before that time (seconds or an
  HTTP-date, read on the notifier's clock), nor much later than ``HOOK_RETRY_AFTER_CAP`` whatever it asks.

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
