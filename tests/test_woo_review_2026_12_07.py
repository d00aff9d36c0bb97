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


# ---- the AfterShip plugin's tracking -------------------------------------------------------------

def _aftership(slug: str, number: str) -> dict[str, Any]:
    """An item as the AfterShip plugin (aftership-woocommerce-tracking, ``add_tracking_item``) keeps it."""
    return {"slug": slug, "tracking_number": number, "tracking_id": f"{slug}-{number}-md5",
            "additional_fields": {"account_number": "", "key": "", "postal_code": "", "ship_date": "2026-11-16",
                                  "destination_country": "", "state": ""},
            "metrics": {"created_at": "2026-11-16T06:00:00Z", "updated_at": "2026-11-16T06:00:00Z"}}


def _aftership_meta(*items: dict[str, Any]) -> list[dict[str, Any]]:
    """The plugin's meta (``save_tracking_items``): every item, and the first's number and courier beside them."""
    return [{"id": 881, "key": "_aftership_tracking_items", "value": list(items)},
            {"id": 882, "key": "_aftership_tracking_number", "value": items[0]["tracking_number"]},
            {"id": 883, "key": "_aftership_tracking_provider_name", "value": items[0]["slug"]}]


def test_a_parcel_tracked_with_the_aftership_plugin_is_told_with_its_courier_number_and_link(sqlite_url, scenario, world):  # noqa: F811
    """The AfterShip plugin keeps its parcels in ``_aftership_tracking_items`` (courier slug and number) and
    leaves the order's status alone. Its parcels were not read: an order still ``processing`` got no "shipped"
    at all, and a ``completed`` one's "shipped" that shows the tracking was skipped for the missing number,
    so she never heard it. Now the parcel is on its way with its courier, number and the plugin's own
    tracking page (``track.aftership.com/{courier}/{number}``, or the store's ``tracking_links`` format)."""
    sc = scenario(sqlite_url, "woocommerce", journeys={"delivery": {}},
                  store_settings={"templates": TEMPLATES_WITH_LINK,
                                  "tracking_links": {"India Post": "https://www.indiapost.gov.in/track?consignment=%1$s"}})
    processing = WOOCOMMERCE.order(1, ASHA, sc.now, cod=False)
    sc.woo("order.created", processing)
    sc.later(hours=1)
    # the plugin's save sets the order's modified date and saves it: an order.updated, status unchanged
    sc.woo("order.updated", _shipped_with(processing, sc.now, _aftership_meta(_aftership("delhivery", "DL7301")), status="processing"))
    sc.later(minutes=10)
    assert [s.params for s in sc.sent(ASHA) if s.template == "shipped_link_v1"] == [
        ("#7301", "delhivery", "DL7301", "https://track.aftership.com/delhivery/DL7301")]

    completed = WOOCOMMERCE.order(2, ASHA, sc.now, cod=False)
    sc.woo("order.created", completed)
    sc.later(hours=1)
    sc.woo("order.updated", _shipped_with(completed, sc.now, _aftership_meta(_aftership("india-post", "EE42IN"))))
    sc.later(minutes=10)
    assert [s.params for s in sc.sent(ASHA) if s.template == "shipped_link_v1"][1:] == [
        ("#7302", "India Post", "EE42IN", "https://www.indiapost.gov.in/track?consignment=EE42IN")]


def test_a_parcel_in_the_aftership_plugins_older_meta_is_read_too(sqlite_url, scenario, world):  # noqa: F811
    """Before its tracking items (plugin 1.12 and older) the plugin kept one parcel in ``_aftership_tracking_number``,
    the courier's slug in ``_aftership_tracking_provider`` and its name in ``_aftership_tracking_provider_name``;
    orders shipped then still carry only those. The link names the courier by its slug, she reads its name."""
    sc = scenario(sqlite_url, "woocommerce", journeys={"delivery": {}}, store_settings={"templates": TEMPLATES_WITH_LINK})
    order = WOOCOMMERCE.order(1, ASHA, sc.now, cod=False)
    sc.woo("order.created", order)
    sc.later(hours=1)
    old = [{"id": 770, "key": "_aftership_tracking_provider", "value": "india-post"},
           {"id": 771, "key": "_aftership_tracking_provider_name", "value": "India Post"},
           {"id": 772, "key": "_aftership_tracking_number", "value": "EE123456789IN"}]
    sc.woo("order.updated", _shipped_with(order, sc.now, old))
    sc.later(minutes=10)
    assert [s.params for s in sc.sent(ASHA) if s.template == "shipped_link_v1"] == [
        ("#7301", "India Post", "EE123456789IN", "https://track.aftership.com/india-post/EE123456789IN")]
