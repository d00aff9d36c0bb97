"""Two people sharing one email (a family's one store account, so one name too), each with a phone of their own:
an order of one of them ends and credits the run its checkout or its phone names, never the other's as well, nor
the other's instead (the scenario harness: the real app over HTTP, fake Shopify and WhatsApp, virtual clock).

The email reaches another phone's runs only for an order that matches no run by its checkout or its phone (she
checked out with one number and bought with another), and only when one contact's runs are there to reach.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from sqlalchemy import select

from connector.storage import models as m
from tests.conftest import sqlite_template  # noqa: F401
from tests.scenarios import payloads as p
from tests.scenarios.conftest import _world_server, scenario, sqlite_url, world  # noqa: F401
from tests.scenarios.harness import TEMPLATES, Scenario
from tests.scenarios.stores import SHOPIFY
from tests.scenarios.test_store_journeys import LADDER, conversion
from tests.scenarios.test_woo_recovery import PAY
from tests.test_payment_review3_2026_12_07 import products

ASHA, RAVI = "+919876543210", "+919812345678"
FAMILY = {"id": 77001, "first_name": "Asha", "last_name": "Sharma", "email": "sharma.home@example.in"}  # one account, two phones


def start(sqlite_url: str, scenario: Any, journeys: dict[str, Any]) -> Scenario:
    return scenario(sqlite_url, "shopify", journeys=journeys, store_settings={"templates": [*TEMPLATES, PAY]})


def of_family(body: dict[str, Any]) -> dict[str, Any]:
    """A checkout or order of the family's shared account: its email and its name, whoever's phone is on it."""
    return {**body, "email": FAMILY["email"], "contact_email": FAMILY["email"],
            "customer": {**body["customer"], **FAMILY, "admin_graphql_api_id": f"gid://shopify/Customer/{FAMILY['id']}"}}


def leaves_checkout(sc: Scenario, key: str, phone: str) -> None:
    sc.shopify("checkouts/create", of_family(p.shopify_checkout(SHOPIFY.token(key), phone, sc.now)))


def order(n: int, phone: str, at: Any, *, pending: bool = False, checkout: str | None = None, product: int = 111) -> dict[str, Any]:
    o = products(of_family(SHOPIFY.order(n, phone, at, cod=False, checkout=checkout)), product)
    return {**o, "financial_status": "pending"} if pending else o


def carts_to(sc: Scenario, phone: str) -> list[str]:
    return [t for t in sc.templates_to(phone) if t.startswith("cart_")]


# ---- the cart ladder ------------------------------------------------------------------------------------------------

def test_his_order_for_his_checkout_leaves_her_cart_ladder_going(sqlite_url, scenario, world):
    """10:30 Asha and Ravi each leave a checkout of the family account; each gets a first cart reminder. At 12:00 Ravi
    pays his checkout (the order names it, his phone on it). His cart is recovered; Asha has bought nothing: her ladder
    goes on (her second reminder at 17:00), and the report counts one recovered cart of two reminded."""
    sc = start(sqlite_url, scenario, LADDER)
    leaves_checkout(sc, "A", ASHA)
    leaves_checkout(sc, "B", RAVI)
    sc.later(minutes=40, step=timedelta(minutes=10))
    assert (carts_to(sc, ASHA), carts_to(sc, RAVI)) == (["cart_1_v1"], ["cart_1_v1"])
    sc.later(minutes=50)
    SHOPIFY.place(sc, order(1, RAVI, sc.now, checkout="B"))
    sc.later(hours=6, step=timedelta(minutes=30))
    assert (carts_to(sc, ASHA), carts_to(sc, RAVI)) == (["cart_1_v1", "cart_2_v1"], ["cart_1_v1"])
    c = conversion(sc)
    assert (c["checkouts_reminded"], c["checkouts_recovered"], c["recovered_revenue"]) == (2, 1, {"INR": "1299.00"})


def test_his_order_naming_no_checkout_credits_his_cart_not_hers(sqlite_url, scenario, world):
    """Ravi's cart is reminded at 11:00, Asha's (left at 10:45) at 11:15. At 12:00 Ravi buys with his phone, the order
    naming no checkout the connector heard of. It is his cart's recovery, by his phone: Asha's cart is not credited
    with his order (it was, as the run reminded last), and her ladder goes on."""
    sc = start(sqlite_url, scenario, LADDER)
    leaves_checkout(sc, "B", RAVI)
    sc.later(minutes=15)
    leaves_checkout(sc, "A", ASHA)
    sc.later(minutes=45, step=timedelta(minutes=5))
    assert (carts_to(sc, ASHA), carts_to(sc, RAVI)) == (["cart_1_v1"], ["cart_1_v1"])
    SHOPIFY.place(sc, order(1, RAVI, sc.now))
    sc.later(hours=6, step=timedelta(minutes=30))
    assert (carts_to(sc, ASHA), carts_to(sc, RAVI)) == (["cart_1_v1", "cart_2_v1"], ["cart_1_v1"])
    with sc.runtime.db.engine.connect() as conn:
        runs = {r.subject: r for r in conn.execute(select(m.JourneyRun).where(m.JourneyRun.journey == "checkout_recovery"))}
    assert runs[f"checkout:{SHOPIFY.token('B')}"].state.get("order_id") == str(SHOPIFY.order_id(1))
    assert "order_id" not in runs[f"checkout:{SHOPIFY.token('A')}"].state


def test_an_order_from_a_third_phone_of_the_account_credits_neither_familys_cart(sqlite_url, scenario, world):
    """Both carts reminded; an order of the family account comes from a phone neither checkout gave, naming no checkout.
    Whose cart it bought cannot be told: neither is credited nor ended (one was credited, the other ended as
    converted elsewhere), and both ladders go on."""
    sc = start(sqlite_url, scenario, LADDER)
    leaves_checkout(sc, "A", ASHA)
    leaves_checkout(sc, "B", RAVI)
    sc.later(hours=1, step=timedelta(minutes=10))
    SHOPIFY.place(sc, order(1, "+919800000001", sc.now))
    sc.later(hours=6, step=timedelta(minutes=30))
    assert (carts_to(sc, ASHA), carts_to(sc, RAVI)) == (["cart_1_v1", "cart_2_v1"], ["cart_1_v1", "cart_2_v1"])
    assert conversion(sc)["checkouts_recovered"] == 0


# ---- the pay reminder -------------------------------------------------------------------------------------------------

def test_her_paid_second_try_credits_her_pay_reminder_not_his(sqlite_url, scenario, world):
    """Both leave an order of the same product unpaid: Asha's #5001 at 10:30, Ravi's #5002 at 10:40; each gets the pay
    link. At 12:00 Asha pays a new try (#5003, her phone). It is her reminder's recovery; Ravi has paid nothing and his
    run is not credited with her money (it was, as the reminder that went out last). When he pays #5002 the next
    morning, that is his reminder's recovery: two recovered payments."""
    sc = start(sqlite_url, scenario, {"payment_recovery": {}})
    SHOPIFY.place(sc, order(1, ASHA, sc.now, pending=True))
    sc.later(minutes=10)
    his = order(2, RAVI, sc.now, pending=True)
    SHOPIFY.place(sc, his)
    sc.later(hours=1, minutes=10, step=timedelta(minutes=10))
    assert ([s.params[0] for s in sc.sent(ASHA)], [s.params[0] for s in sc.sent(RAVI)]) == (["#5001"], ["#5002"])
    sc.later(minutes=20)
    SHOPIFY.place(sc, order(3, ASHA, sc.now))
    sc.later(hours=20, step=timedelta(hours=1))
    c = conversion(sc)
    assert (c["payments_reminded"], c["payments_recovered"], c["lost"]) == (2, 1, 1)
    sc.shopify("orders/paid", {**his, "financial_status": "paid", "updated_at": p.iso(sc.now)})
    sc.later(hours=1)
    c = conversion(sc)
    assert (c["payments_reminded"], c["payments_recovered"], c["payment_recovered_revenue"]) == (2, 2, {"INR": "2598.00"})
