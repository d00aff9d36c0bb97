"""COD confirmation once the order has shipped, and taps that come after the no-answer step.

Told end to end with the journey scenarios' harness (tests/scenarios): signed store and
WhatsApp webhooks in over HTTP, the real worker rounds on a virtual clock, and assertions on
what reached the customer's phone and the store's API (fake peers on 127.0.0.1).
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from decimal import Decimal
from typing import Any

import pytest

from adapters.woocommerce.normalize import normalize
from connector import events as ev
from connector.config import parse_settings
from connector.journeys.cod_confirmation import CodConfirmation, CodConfirmationConfig
from connector.journeys.engine import Facts, OrderFacts, Run, Send, Update
from tests.conftest import settings_dict
from tests.scenarios import payloads as p
from tests.scenarios.conftest import _world_server, scenario, sqlite_url, store, world  # noqa: F401  (the scenarios' fixtures)
from tests.scenarios.harness import T0
from tests.scenarios.stores import SHOPIFY, WOOCOMMERCE, Store

ASHA = "+919876543210"
COD = {"reminder_hours": [6], "answer_window_hours": 24}


def status_puts(world) -> list[str]:
    """Every status WooCommerce was told to take (cancel included)."""
    return [c.body["status"] for c in world.woo_writes() if c.method == "PUT" and c.path == "" and "status" in (c.body or {})]


def notes(world) -> list[str]:
    return [c.body["note"] for c in world.woo_writes() if c.path == "/notes"]


def tagged(world, store: Store) -> list[str]:
    """Tags written to the order, in order."""
    if store.platform == "shopify":
        return [t for op in world.shopify_ops("tagsAdd") for t in op["tags"]]
    return [n.removeprefix("storeloop tags: ") for n in notes(world) if n.startswith("storeloop tags: ")]


def cancelled(world, store: Store) -> bool:
    if store.platform == "shopify":
        return bool(world.shopify_ops("orderCancel"))
    return "cancelled" in status_puts(world)


# ---- once the order has shipped, the COD run is over ------------------------------------------

# ---- taps after the no-answer step -----------------------------------------------------------

# ---- WooCommerce: cancelled orders, and the pay-now link -------------------------------------

def woo_store() -> Any:
    settings = parse_settings(settings_dict("sqlite://"), environ={})
    return next(s for s in settings.stores if s.key == "woo")


def test_a_woocommerce_order_created_already_cancelled_is_not_asked_to_confirm(sqlite_url, scenario, world):
    sc = scenario(sqlite_url, "woocommerce", journeys={"cod_confirmation": COD})
    sc.woo("order.created", p.woo_order(7310, ASHA, sc.now, status="cancelled"))
    sc.later(days=2)
    assert sc.templates_to(ASHA) == []
    [event] = normalize("order.created", p.woo_order(7310, ASHA, T0, status="cancelled"), woo_store())
    assert event.order.cancelled_at == T0


