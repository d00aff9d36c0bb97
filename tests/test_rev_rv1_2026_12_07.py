"""Reviewer rv1, 2026-12-07: faults found in the merges f1feb1d ("Merge wa": a customer's WhatsApp number
change) and c93d250 ("Merge ops": the rate-limit pause shown, hook Retry-After, per-hook alerts).

Each test states what a store owner or a customer would see, and is a strict xfail until fixed.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from tests.scenarios.conftest import _world_server, scenario, sqlite_url, world  # noqa: F401 (fixtures)
from tests.scenarios.stores import SHOPIFY
from tests.scenarios.test_store_journeys import COD
from tests.test_whatsapp_number_change import ASHA, ASHA_NEW, changes_number

RAVI_EMAIL = "ravi.k@example.in"


def strangers_order(n: int, phone: str, at: Any) -> dict[str, Any]:
    """A COD order by another Shopify customer (Ravi: his own customer id, name and email) with this phone."""
    o = SHOPIFY.order(n, phone, at)
    o["email"] = o["contact_email"] = RAVI_EMAIL
    o["customer"].update(id=777000111, first_name="Ravi", last_name="Kumar", email=RAVI_EMAIL,
                         admin_graphql_api_id="gid://shopify/Customer/777000111")
    for part in ("billing_address", "shipping_address"):
        if isinstance(o.get(part), dict):
            o[part].update(first_name="Ravi", last_name="Kumar", name="Ravi Kumar")
    return o


# ---- f1feb1d: a number change ------------------------------------------------------------------

def test_a_recycled_number_months_later_is_a_new_customer_not_the_one_who_left_it(sqlite_url, scenario, world):
    sc = scenario(sqlite_url, "shopify", journeys=COD)
    first = SHOPIFY.order(1, ASHA, sc.now)
    SHOPIFY.place(sc, first)
    sc.work()
    ask = sc.last_to(ASHA, "cod_confirm_v1")
    sc.later(minutes=20)
    sc.tap(ASHA, "cod_confirm", ask)
    sc.later(minutes=30)
    changes_number(sc, ASHA, ASHA_NEW)
    sc.later(days=120, step=timedelta(days=10))

    SHOPIFY.place(sc, strangers_order(2, ASHA, sc.now))  # Ravi, on the number Asha gave up four months ago
    sc.later(minutes=10)

    assert sc.templates_to(ASHA_NEW) == []  # Asha is asked nothing about an order that is not hers
    assert sc.templates_to(ASHA) == ["cod_confirm_v1", "cod_confirm_v1"]  # Ravi is asked about his


def test_a_data_request_by_the_new_owner_of_a_recycled_number_exports_nothing_of_the_woman_who_left_it(sqlite_url, scenario, world):
    sc = scenario(sqlite_url, "shopify", journeys=COD)
    SHOPIFY.place(sc, SHOPIFY.order(1, ASHA, sc.now))
    sc.work()
    sc.later(minutes=30)
    changes_number(sc, ASHA, ASHA_NEW)
    sc.later(days=120, step=timedelta(days=10))

    sc.shopify("customers/data_request", {"shop_id": 954889, "shop_domain": "shop-a.myshopify.com",
                                          "customer": {"id": 777000111, "email": RAVI_EMAIL, "phone": ASHA},
                                          "orders_requested": [], "data_request": {"id": 9999}})
    sc.later(minutes=5)
    [item] = sc.api("/compliance")["items"]
    assert item["kind"] == "customer_data_request" and item["status"] == "done"
    export = sc.api(f"/compliance/{item['id']}")["export"]
    assert [c.get("phone_e164") for c in export["contacts"]] == []  # nothing of Asha's: not her new number ...
    assert [o["external_id"] for o in export["orders"]] == []  # ... nor her order


def test_her_order_placed_before_a_join_still_tells_her_it_shipped_on_her_new_number(sqlite_url, scenario, world):
    from tests.scenarios.test_delivery_stories import parcel, start

    sc = start(scenario, sqlite_url)
    order = SHOPIFY.order(1, ASHA, sc.now, cod=False)
    SHOPIFY.place(sc, order)
    sc.later(minutes=10)
    sc.say(ASHA_NEW, "hi, it's Asha, this is my new number")  # before Meta's notice: a second contact
    sc.later(minutes=5)
    changes_number(sc, ASHA, ASHA_NEW)
    sc.later(hours=2)
    sc.shopify("fulfillments/create", parcel(7001, order, sc.now, "in_transit", "AAA111"))
    sc.later(hours=1)

    shipped = [s.to for s in sc.world.sent() if s.template == "shipped_track_v1"]
    assert shipped == [ASHA_NEW]


def test_after_a_join_her_unquoted_answer_from_the_new_number_answers_her_cod_question(sqlite_url, scenario, world):
    sc = scenario(sqlite_url, "shopify", journeys=COD)
    SHOPIFY.place(sc, SHOPIFY.order(4, ASHA, sc.now))
    sc.work()
    assert sc.templates_to(ASHA) == ["cod_confirm_v1"]
    sc.later(minutes=5)
    SHOPIFY.place(sc, SHOPIFY.order(5, ASHA_NEW, sc.now, cod=False))  # prepaid, with her new number: a second contact
    sc.later(minutes=5)
    changes_number(sc, ASHA, ASHA_NEW)
    sc.later(minutes=10)
    sc.say(ASHA_NEW, "I will pay cash when it comes")  # quoting nothing
    sc.later(minutes=10)

    cases = [(c["journey"], c["subject"]) for c in sc.handoffs("open") if "I will pay cash when it comes" in c["reason"]]
    assert cases == [("cod_confirmation", f"order:{SHOPIFY.order_id(4)}")]


def test_a_lowered_limit_is_told_even_when_metas_capability_update_came_first(sqlite_url, scenario, world):
    from tests.test_number_health import account, number, told, whatsapp_health
    from tests.test_whatsapp_business_capability import capability

    sc = scenario(sqlite_url, "shopify", journeys=COD)
    cut = sc.now
    account(sc, capability(max_daily_conversations_per_business=250), at=cut + timedelta(minutes=1))
    account(sc, number("DOWNGRADE", old_limit="TIER_1K", current_limit="TIER_250"), at=cut)
    sc.later(minutes=10)

    assert whatsapp_health(sc)["messaging_limit"] in ("250", "TIER_250")
    assert [text for _, text in told(world) if "Meta lowered the messaging limit" in text] != []


# ---- c93d250: the rate-limit pause shown ---------------------------------------------------------------

def test_a_rate_limit_pause_with_nothing_left_to_send_is_not_shown_hours_after_its_end(sqlite_url, scenario, world):
    from adapters.whatsapp.client import WhatsAppClient
    from connector.sandbox.whatsapp import SandboxServer, SandboxWhatsApp
    from tests.conftest import SECRETS
    from tests.scenarios.fakes import WA_TOKEN
    from tests.test_dispatch_errors import RATE_LIMITED

    fake = SandboxWhatsApp(token=WA_TOKEN)
    with SandboxServer(fake.app) as server:
        sc = scenario(sqlite_url, "shopify", journeys=COD)
        client = WhatsAppClient(server.url, sc.settings.whatsapp.api_version, WA_TOKEN)
        sc.runtime.dispatcher.sender = client
        try:
            fake.script.extend([RATE_LIMITED] * 100)
            order = SHOPIFY.order(1, ASHA, sc.now)
            SHOPIFY.place(sc, order)
            sc.work()
            assert sc.client.get("/readyz").json()["whatsapp"] == "rate_limited"  # shown, as c93d250 meant
            sc.later(minutes=5)
            SHOPIFY.cancelled_echo(sc, order)  # her question is withdrawn: nothing waits any more
            sc.later(minutes=5)
            fake.script.clear()  # Meta's window closes
            sc.later(hours=3, step=timedelta(minutes=10))

            assert fake.accepted() == []
            assert sc.client.post("/dashboard/login", data={"token": SECRETS["admin"], "next": "/dashboard"}).status_code == 200
            assert 'id="whatsapp-rate-limited"' not in sc.client.get("/dashboard/shop-a").text
            assert sc.client.get("/readyz").json()["whatsapp"] == "sending"
        finally:
            sc.client.portal.call(client.aclose)
