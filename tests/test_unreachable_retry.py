"""A number WhatsApp refused (131026: not on WhatsApp, terms not accepted, an old app) is tried
again some days later, told as store stories (the scenario harness: real app, virtual clock, fake
WhatsApp and Shopify on 127.0.0.1): what the customer receives and what the store owner sees.

1. a week after the refusal her next order is confirmed: one new message tries her number again;
   the messages skipped meanwhile are not sent late, and once the try reaches her she is reachable;
2. the try refused again (in a status webhook, or in the answer to the send) restarts the clock;
3. it is one try: a second message before its news comes is skipped as before;
4. the period is the store's ``policy.unreachable_retry_days`` (0: never), checked by ``check-config``;
5. a contact already unreachable before the upgrade gets her retry clock from the migration.
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from sqlalchemy import insert, select
from typer.testing import CliRunner

from connector.cli import app
from connector.config import PolicySettings
from connector.outbox.store import contact_facts
from connector.policy import SendHistory, check
from connector.storage import models as m
from connector.storage.db import make_engine, migrate
from tests.scenarios.conftest import _world_server, scenario, sqlite_url, world  # noqa: F401 (fixtures)
from tests.scenarios.harness import T0
from tests.scenarios.stores import SHOPIFY
from tests.test_bsuid_and_send_errors import _refuse_next, _send_through, graph  # noqa: F401 (fixture)
from tests.test_consent_and_reachability_fixes import _status

ASHA = "+919876543210"
THANKS = {"order_confirmation": {}}


def _thank(sc, n: int) -> None:
    """Asha's prepaid order ``n`` reaches the store, and the worker has had a few minutes."""
    SHOPIFY.place(sc, SHOPIFY.order(n, ASHA, sc.now, cod=False))
    sc.later(minutes=5)


def _thanked(sc) -> list[str]:
    """The orders whose thanks reached WhatsApp for her, in order."""
    return [s.params[0] for s in sc.sent(ASHA) if s.template == "order_thanks_v1"]


def _refused(sc) -> None:
    """Her last message comes back as undeliverable (131026) in a status webhook."""
    _status(sc, sc.sent(ASHA)[-1], "failed", sc.now, code=131026)
    sc.later(minutes=1)


# ---- 1. a week later, one more try ------------------------------------------------------------

def test_a_week_after_a_131026_her_next_order_is_confirmed_and_the_skipped_one_is_not_sent_late(sqlite_url, scenario, world):
    """Order 1's thanks is undeliverable (she had no WhatsApp yet). Order 2, six days on, is skipped as before; she
    installs WhatsApp, and order 3, a week after the refusal, is confirmed. Order 2's thanks never follows, and once
    order 3's is delivered she is reachable again: order 4 is confirmed at once."""
    sc = scenario(sqlite_url, "shopify", journeys=THANKS)
    _thank(sc, 1)
    refused_at = sc.now
    _refused(sc)
    seen = sc.contact(ASHA)["contact"]
    assert (seen["reachable"], seen["unreachable_since"]) == (False, refused_at.isoformat())  # the owner sees since when

    sc.at(refused_at + timedelta(days=6))
    _thank(sc, 2)
    assert _thanked(sc) == [SHOPIFY.name(1)]  # not yet worth another try

    sc.at(refused_at + timedelta(days=7))
    _thank(sc, 3)
    sc.later(days=2)
    assert _thanked(sc) == [SHOPIFY.name(1), SHOPIFY.name(3)]  # order 2's stale thanks is not sent late

    _status(sc, sc.sent(ASHA)[-1], "delivered", sc.now)
    sc.later(minutes=1)
    seen = sc.contact(ASHA)["contact"]
    assert (seen["reachable"], seen["unreachable_since"]) == (True, None)
    _thank(sc, 4)
    assert _thanked(sc) == [SHOPIFY.name(1), SHOPIFY.name(3), SHOPIFY.name(4)]


# ---- 2. refused again: the clock restarts -----------------------------------------------------

@pytest.mark.parametrize("how", ["status webhook", "answer to the send"])
def test_a_try_refused_again_restarts_the_week(sqlite_url, scenario, world, graph, how):
    """A week after the first refusal, order 2's thanks tries her number and WhatsApp refuses it again. Order 3, three
    days later, is skipped; order 4, a week after the second refusal, is tried."""
    fake, url = graph
    sc = scenario(sqlite_url, "shopify", journeys=THANKS)
    client = _send_through(sc, url)

    def order(n: int) -> None:
        if how == "answer to the send":
            _refuse_next(fake, 131026)
        _thank(sc, n)
        if how == "status webhook":
            _status(sc, fake.calls[-1], "failed", sc.now, code=131026)
            sc.later(minutes=1)

    try:
        order(1)
        sc.later(days=7)
        order(2)
        tried_at = sc.now
        assert sc.contact(ASHA)["contact"]["reachable"] is False
        sc.later(days=3)
        _thank(sc, 3)
        sc.at(tried_at + timedelta(days=7))
        order(4)
        assert [c.params[0] for c in fake.calls] == [SHOPIFY.name(1), SHOPIFY.name(2), SHOPIFY.name(4)]
    finally:
        sc.client.portal.call(client.aclose)


# ---- 3. one try, not a burst ------------------------------------------------------------------

def test_the_try_is_one_message_until_its_news_comes(sqlite_url, scenario, world):
    """A week after the refusal Asha places two orders a minute apart: order 2's thanks tries her number, order 3's is
    skipped (no news of the try yet). The owner sees her still unreachable, the clock restarted at the try."""
    sc = scenario(sqlite_url, "shopify", journeys=THANKS)
    _thank(sc, 1)
    _refused(sc)
    sc.later(days=7)
    SHOPIFY.place(sc, SHOPIFY.order(2, ASHA, sc.now, cod=False))
    SHOPIFY.place(sc, SHOPIFY.order(3, ASHA, sc.now + timedelta(minutes=1), cod=False))
    sc.later(minutes=5)
    tried_at = sc.now  # the worker's round that sent it

    assert _thanked(sc) == [SHOPIFY.name(1), SHOPIFY.name(2)]
    seen = sc.contact(ASHA)["contact"]
    assert (seen["reachable"], seen["unreachable_since"]) == (False, tried_at.isoformat())
    sc.later(days=2)
    assert _thanked(sc) == [SHOPIFY.name(1), SHOPIFY.name(2)]


# ---- 4. the store's setting --------------------------------------------------------------------

@pytest.mark.parametrize(("days", "wait", "tried"), [(3, 3, True), (0, 30, False)], ids=["3 days", "never"])
def test_the_retry_period_is_the_stores_setting(sqlite_url, scenario, world, days, wait, tried):
    sc = scenario(sqlite_url, "shopify", journeys=THANKS, policy={"unreachable_retry_days": days})
    _thank(sc, 1)
    refused_at = sc.now
    _refused(sc)
    sc.at(refused_at + timedelta(days=wait))
    _thank(sc, 2)
    assert _thanked(sc) == [SHOPIFY.name(1)] + [SHOPIFY.name(2)] * tried


def test_check_config_accepts_the_retry_period_and_names_a_bad_one(tmp_path):
    store = '[[stores]]\nkey = "a"\nplatform = "shopify"\nshop_domain = "a.myshopify.com"\nwebhook_secret = "s"\n[stores.policy]\n'
    good, bad = tmp_path / "good.toml", tmp_path / "bad.toml"
    good.write_text(store + "unreachable_retry_days = 14\n")
    bad.write_text(store + "unreachable_retry_days = -1\nunreachable_retry_day = 7\n")
    ok = CliRunner().invoke(app, ["check-config", str(good)])
    assert ok.exit_code == 0, ok.output
    refused = CliRunner().invoke(app, ["check-config", str(bad)])
    assert refused.exit_code == 2
    assert "stores[0].policy.unreachable_retry_days" in refused.output
    assert "stores[0].policy.unreachable_retry_day: unknown key (typo?)" in refused.output


# ---- 5. contacts refused before the upgrade ---------------------------------------------------

def test_a_contact_refused_before_the_upgrade_is_tried_a_week_after_her_last_change(tmp_path: Path):
    """Before this release a refused number had no retry clock; the migration takes her last change as the refusal.
    A contact with no number (never parsed, or erased) is never tried."""
    engine = make_engine(f"sqlite:///{tmp_path / 'old.db'}")
    migrate(engine, "0015")
    refused_at = T0 - timedelta(days=8)
    with engine.begin() as conn:
        sid = conn.execute(insert(m.Store.__table__).values(key="a", platform="shopify", created_at=T0)).inserted_primary_key[0]
        people = [dict(store_id=sid, phone_key=key, phone_e164=phone, reachable=False, consent_utility="granted",
                       consent_marketing="unknown", stage="entry", created_at=refused_at, updated_at=refused_at)
                  for key, phone in ((ASHA, ASHA), ("raw:12", None))]
        conn.execute(insert(m.Contact.__table__), people)
    migrate(engine)
    with engine.begin() as conn:
        ids = dict(conn.execute(select(m.Contact.phone_key, m.Contact.id)).all())
        facts = contact_facts(conn, list(ids.values()))
    engine.dispose()
    rules = PolicySettings().rules()

    def allowed(key: str, now) -> bool:  # type: ignore[no-untyped-def]
        return check(category="utility", kind="template", journey="order_confirmation", contact=facts[ids[key]],
                     history=SendHistory(), rules=rules, tz=ZoneInfo("UTC"), now=now).allowed

    assert not allowed(ASHA, refused_at + timedelta(days=6))
    assert allowed(ASHA, T0)
    assert not allowed("raw:12", T0 + timedelta(days=365))
