"""A third party adds a journey through the ``storeloop.journeys`` entry-point group, without a fork (issue #4).

The entry points are the installed ones (the built-in journeys, from this package's metadata)
plus the plugins of tests/plugin_journeys.py, as an installed plugin package would declare them.
"""

from __future__ import annotations

import logging
from datetime import timedelta
from importlib.metadata import EntryPoint, entry_points

import pytest

from connector.config import parse_settings
from connector.errors import ConfigError
from connector.journeys import registry
from connector.journeys.order_confirmation import OrderConfirmation
from tests.conftest import settings_dict
from tests.helpers import running_app
from tests.plugin_journeys import LoyaltyThanks
from sqlalchemy import select

from connector.storage import models as m
from tests.test_decide_tables import post, runs, steps
from tests.test_payment_and_shipped_fixes import shopify_order, T0

PLUGINS = {"loyalty_thanks": "LoyaltyThanks", "impostor": "Impostor", "zz_second_loyalty": "SecondLoyalty",
           "fails_to_start": "FailsToStart", "not_a_journey": "NotAJourney", "exploding": "Exploding",
           "timer_bomb": "TimerBomb"}


@pytest.fixture
def plugins(monkeypatch):
    installed = list(entry_points(group=registry.GROUP))
    published = [EntryPoint(name, f"tests.plugin_journeys:{cls}", registry.GROUP) for name, cls in PLUGINS.items()]
    published.append(EntryPoint("gone", "tests.no_such_plugin_module:Gone", registry.GROUP))  # uninstalled half-way
    monkeypatch.setattr(registry, "entry_points", lambda group: [*installed, *published] if group == registry.GROUP else [])
    registry.journeys.cache_clear()
    yield
    registry.journeys.cache_clear()  # the next caller reads the real entry points again


def test_a_plugin_journey_is_found_and_broken_or_clashing_ones_are_left_out_with_a_reason(plugins, caplog):
    with caplog.at_level(logging.ERROR, logger="storeloop.journeys"):
        found = registry.journeys()
    assert isinstance(found["loyalty_thanks"], LoyaltyThanks)
    assert type(found["order_confirmation"]) is OrderConfirmation  # a plugin cannot swap a built-in journey out
    assert {"fails_to_start", "not_a_journey", "gone"}.isdisjoint(found)
    assert {"cod_confirmation", "checkout_recovery", "payment_recovery", "delivery", "reorder"} <= set(found)
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert "impostor = 'tests.plugin_journeys:Impostor'" in logged and "'order_confirmation' is taken by order_confirmation" in logged
    assert "zz_second_loyalty" in logged and "'loyalty_thanks' is taken by loyalty_thanks" in logged
    assert "fails_to_start" in logged and "RuntimeError: no licence key" in logged
    assert "not_a_journey" in logged and "it has no subject or decide" in logged
    assert "gone = 'tests.no_such_plugin_module:Gone'" in logged and "ModuleNotFoundError" in logged


def test_a_plugin_journey_runs_from_a_stores_config_like_a_built_in_one(plugins, db_url):
    raw = settings_dict(db_url)
    raw["stores"][0].update(policy={"quiet_hours": ""}, journeys={"loyalty_thanks": {"points_per_order": 25}}, templates=[
        {"step": "loyalty_thanks.points", "name": "points_v1", "category": "utility", "body_text": "Hi {{1}}, you earned points",
         "body": ["customer.first_name"]}])
    settings = parse_settings(raw, environ={})
    with running_app(settings) as (client, runtime):
        post(client, "orders/create", shopify_order(1001, "paid", T0))
        runtime.processor.drain()
        sent = steps(runtime)
        found = runs(runtime)
    sid = runtime.store_ids["shop-a"]
    assert sent == [("loyalty_thanks", "order:1001", "points")]
    assert found[(sid, "loyalty_thanks", "order:1001")].state == {"points": 25, "outcome": "sent"}


def test_a_plugins_settings_are_checked_like_a_built_in_journeys(plugins):
    raw = settings_dict("sqlite://")
    raw["stores"][0]["journeys"] = {"loyalty_thanks": {"points_per_order": -1, "point": 3}, "fails_to_start": {}}
    with pytest.raises(ConfigError) as err:
        parse_settings(raw, environ={})
    text = "\n".join(err.value.problems)
    assert "loyalty_thanks.points_per_order" in text and "loyalty_thanks.point: unknown key (typo?)" in text
    assert "fails_to_start: unknown journey" in text


def test_a_journey_that_raises_on_one_order_leaves_nothing_of_that_row_and_costs_the_others_nothing(plugins, db_url, caplog):
    """One transaction per row: order 1002's own state, its order_confirmation run and its queued message (all written
    before the plugin raised) go back together; its inbox row stays to be retried; order 1001 in the same batch is done."""
    raw = settings_dict(db_url)
    raw["stores"][0].update(policy={"quiet_hours": ""}, journeys={"order_confirmation": {}, "exploding": {}}, templates=[
        {"step": "order_confirmation.sent", "name": "thanks_v1", "category": "utility", "body_text": "Thanks {{1}}", "body": ["order.name"]}])
    settings = parse_settings(raw, environ={})
    with running_app(settings) as (client, runtime):
        for n in (1001, 1002):
            post(client, "orders/create", shopify_order(n, "paid", T0))
        with caplog.at_level(logging.ERROR, logger="storeloop.processor"):
            runtime.processor.drain()
        sent = steps(runtime)
        found = runs(runtime)
        with runtime.db.engine.connect() as conn:
            orders = set(conn.execute(select(m.Order.external_id)).scalars())
            inbox = {r.topic + ":" + r.status: r.last_error for r in conn.execute(select(m.InboxEvent))}
    sid = runtime.store_ids["shop-a"]
    assert sent == [("order_confirmation", "order:1001", "sent")]
    assert set(found) == {(sid, "order_confirmation", "order:1001")}
    assert orders == {"1001"}
    assert set(inbox) == {"orders/create:done", "orders/create:pending"}
    assert "RuntimeError" in inbox["orders/create:pending"]
    assert "plugin bug on order 1002" in caplog.text


def test_a_journey_that_raises_on_one_timer_costs_the_other_timers_nothing(plugins, db_url, caplog):
    """Every due run fires in one transaction: a plugin whose timer raises for order 1002 must not keep order 1001's
    (or any other journey's) timer from firing batch after batch. The broken run is logged and tried again later."""
    raw = settings_dict(db_url)
    raw["stores"][0].update(policy={"quiet_hours": ""}, journeys={"timer_bomb": {}}, templates=[
        {"step": "timer_bomb.points", "name": "points_v1", "category": "utility", "body_text": "Thanks {{1}}", "body": ["customer.first_name"]}])
    settings = parse_settings(raw, environ={})
    with running_app(settings) as (client, runtime):
        for n in (1002, 1001):
            post(client, "orders/create", shopify_order(n, "paid", T0))
        runtime.processor.clock = lambda: T0
        runtime.processor.drain()
        runtime.processor.clock = lambda: T0 + timedelta(hours=2)
        with caplog.at_level(logging.ERROR, logger="storeloop.journeys"):
            fired = runtime.processor.process_timers()
            again = runtime.processor.process_timers()  # the broken run is not due again at once
        sent = steps(runtime)
        found = runs(runtime)
    sid = runtime.store_ids["shop-a"]
    assert (fired, again) == (2, 0)
    assert sent == [("timer_bomb", "order:1001", "points")]
    broken = found[(sid, "timer_bomb", "order:1002")]
    assert broken.status == "active" and broken.next_due_at > T0 + timedelta(hours=2)
    assert "plugin bug in the timer of order 1002" in caplog.text
