"""WooCommerce review (2026-12-07): journeys as a WooCommerce store drives them, through signed webhooks in
and the fake WhatsApp Cloud API out (tests/scenarios/harness.py); the assertions are what reached the phone.
"""

from __future__ import annotations

from typing import Any

from tests.scenarios import payloads as p
from tests.scenarios.conftest import _world_server, scenario, sqlite_url, world  # noqa: F401  (the scenario fixtures)
from tests.scenarios.harness import TEMPLATES
from tests.scenarios.stores import WOOCOMMERCE

ASHA = "+919876543210"
# a "shipped" template that shows the courier, the number and the link, as stores' usually do
SHIPPED_WITH_LINK = {"step": "delivery.shipped", "name": "shipped_link_v1", "category": "utility",
                     "body_text": "Order {{1}} is on its way with {{2}} ({{3}}): {{4}}",
                     "body": ["order.name", "fulfillment.tracking_company", "fulfillment.tracking_number", "fulfillment.tracking_url"]}
TEMPLATES_WITH_LINK = [t for t in TEMPLATES if t["step"] != "delivery.shipped"] + [SHIPPED_WITH_LINK]


def _shipped_with(order: dict[str, Any], at, meta: list[dict[str, Any]], status: str = "completed") -> dict[str, Any]:
    return {**order, "status": status, "date_modified_gmt": p.gmt(at), "date_modified": p.gmt(at),
            "meta_data": [*order.get("meta_data", []), *meta]}


# ---- Advanced Shipment Tracking's link formats ---------------------------------------------------

def test_an_advanced_shipment_tracking_providers_link_is_filled_in(sqlite_url, scenario, world):  # noqa: F811
    """Advanced Shipment Tracking (zorem; the same ``_wc_shipment_tracking_items`` meta) answers the providers
    endpoint the README points to with its own formats: ``%number%`` for the number, ``%postal_code%`` and
    ``%country_code%``. A store that lists them in ``tracking_links`` sent its customers a dead link with a
    literal ``%number%`` in it; now she gets her parcel's page."""
    sc = scenario(sqlite_url, "woocommerce", journeys={"delivery": {}},
                  store_settings={"templates": TEMPLATES_WITH_LINK,
                                  "tracking_links": {"Delhivery": "https://www.delhivery.com/track/package/%number%",
                                                     "Aramex": "https://www.aramex.com/track?ShipmentNumber=%number%&zip=%postal_code%&c=%country_code%"}})
    order = WOOCOMMERCE.order(1, ASHA, sc.now, cod=False)
    sc.woo("order.created", order)
    sc.later(hours=1)
    # AST's item: its provider's ts_slug, an empty custom provider and link, the number
    ast = {"tracking_provider": "delhivery", "custom_tracking_provider": "", "custom_tracking_link": "",
           "tracking_number": "DL7301", "tracking_product_code": "", "date_shipped": "1763269200", "status_shipped": "1",
           "tracking_id": "5f0c1e1e2d7a4c0f9b6f3c2a1d0e9f8a", "products_list": ""}
    sc.woo("order.updated", _shipped_with(order, sc.now, [{"id": 991, "key": "_wc_shipment_tracking_items", "value": [ast]}]))
    sc.later(minutes=10)
    [shipped] = [s for s in sc.sent(ASHA) if s.template == "shipped_link_v1"]
    assert shipped.params == ("#7301", "Delhivery", "DL7301", "https://www.delhivery.com/track/package/DL7301")

    order2 = WOOCOMMERCE.order(2, ASHA, sc.now, cod=False)
    order2["shipping"].update(postcode="560 001", country="IN")
    sc.woo("order.created", order2)
    sc.later(hours=1)
    aramex = {**ast, "tracking_provider": "aramex", "tracking_number": "AX55"}
    sc.woo("order.updated", _shipped_with(order2, sc.now, [{"id": 992, "key": "_wc_shipment_tracking_items", "value": [aramex]}]))
    sc.later(minutes=10)
    [_, second] = [s for s in sc.sent(ASHA) if s.template == "shipped_link_v1"]
    assert second.params[3] == "https://www.aramex.com/track?ShipmentNumber=AX55&zip=560001&c=IN"
