"""Webhook bodies built from the real public samples (../shared/fixtures/public), changed only
where a scenario needs it (ids, phones, times, payment method, status)."""

from __future__ import annotations

import base64
import copy
import functools
from datetime import datetime, timezone
from typing import Any
from urllib.parse import quote_plus

from tests.conftest import FIXTURES
from tests.helpers import load_json


@functools.cache
def _fixture(name: str) -> Any:
    return load_json(FIXTURES / name)


def fixture(name: str) -> Any:
    return copy.deepcopy(_fixture(name))


def iso(at: datetime) -> str:
    return at.astimezone(timezone.utc).isoformat()


def gmt(at: datetime) -> str:
    """WooCommerce's ``*_gmt`` fields: naive ISO in UTC."""
    return at.astimezone(timezone.utc).replace(tzinfo=None).isoformat(timespec="seconds")


# ---- Shopify --------------------------------------------------------------------------------

def shopify_order(order_id: int, phone: str, at: datetime, *, cod: bool = True, total: str = "1299.00", updated: datetime | None = None,
                  checkout_token: str | None = None, fulfilled: bool = False, customer_id: int | None = None) -> dict[str, Any]:
    """``orders/create`` sample turned into a live order: COD (pending) or prepaid (paid), not cancelled, not a test."""
    o = fixture("shopify/orders_create.sample.json")
    o.update(id=order_id, admin_graphql_api_id=f"gid://shopify/Order/{order_id}", name=f"#{order_id % 100000}",
             order_number=order_id % 100000, financial_status="pending" if cod else "paid",
             payment_gateway_names=["Cash on Delivery (COD)"] if cod else ["razorpay"], cancelled_at=None, cancel_reason=None,
             test=False, created_at=iso(at), processed_at=iso(at), updated_at=iso(updated or at), phone=phone,
             current_total_price=total, total_price=total, currency="INR", presentment_currency="INR",
             checkout_token=checkout_token, fulfillment_status="fulfilled" if fulfilled else None)
    o["customer"].update(id=customer_id or customer_id_for(phone), first_name="Asha", phone=None,
                         admin_graphql_api_id=f"gid://shopify/Customer/{customer_id or customer_id_for(phone)}")
    return o


def customer_id_for(phone: str) -> int:
    """One Shopify customer per phone in these stories."""
    return int("".join(ch for ch in phone if ch.isdigit()))


def shopify_checkout(token: str, phone: str, at: datetime, *, accepts_marketing: bool = True, total: str = "899.00") -> dict[str, Any]:
    c = fixture("shopify/checkouts_create.sample.json")
    c.update(token=token, phone=phone, buyer_accepts_marketing=accepts_marketing, buyer_accepts_sms_marketing=accepts_marketing, completed_at=None, created_at=iso(at), updated_at=iso(at),
             total_price=total, currency="INR", presentment_currency="INR",
             abandoned_checkout_url=f"https://shop-a.example/548380009/checkouts/{token}/recover?key=k-{token}")
    c["customer"].update(id=customer_id_for(phone), admin_graphql_api_id=f"gid://shopify/Customer/{customer_id_for(phone)}")
    return c


def shopify_fulfillment(fulfillment_id: int, order_id: int, at: datetime, shipment_status: str | None = "in_transit") -> dict[str, Any]:
    f = fixture("shopify/fulfillments_update.sample.json")
    f.update(id=fulfillment_id, order_id=order_id, status="success", shipment_status=shipment_status, created_at=iso(at), updated_at=iso(at),
             admin_graphql_api_id=f"gid://shopify/Fulfillment/{fulfillment_id}")
    return f


def with_gift_card(order: dict[str, Any]) -> dict[str, Any]:
    """``order`` with a gift card bought beside its items: a line that requires no shipping."""
    gift = {**order["line_items"][0], "id": 555000111, "title": "Gift card", "name": "Gift card", "sku": None, "product_id": 555000222,
            "requires_shipping": False, "gift_card": True, "fulfillment_service": "gift_card", "grams": 0, "price": "500.00",
            "discount_allocations": [], "admin_graphql_api_id": "gid://shopify/LineItem/555000111"}
    return {**order, "line_items": [*order["line_items"], gift]}


def shopify_gift_card_fulfillment(fid: int, order: dict[str, Any], at: datetime) -> dict[str, Any]:
    """What Shopify creates for the gift card at once: a fulfilment of that line only, no carrier status, no tracking."""
    f = shopify_fulfillment(fid, order["id"], at, shipment_status=None)
    f.update(line_items=[li for li in order["line_items"] if not li["requires_shipping"]], tracking_company=None,
             tracking_number=None, tracking_numbers=[], tracking_url=None, tracking_urls=[])
    return f


def shopify_whatsapp_consent(customer_id: int, phone: str, state: str, at: datetime) -> dict[str, Any]:
    """``customers_whats_app_marketing_consent/update`` (API 2026-07)."""
    c = fixture("shopify/customers_whats_app_marketing_consent_update.sample.json")
    c.update(customer_id=customer_id, phone_number=phone)
    c["whats_app_marketing_consent"].update(state=state, opt_in_level="single_opt_in", updated_at=iso(at))
    return c


# ---- Shopify Admin GraphQL: what the reconcile reads ------------------------------------------
#
# The same order, parcels and consent as the webhook bodies above, in the shape the reconcile's
# ``orders`` query returns them (adapters/shopify/graphql.py ``ORDERS_QUERY``, API 2026-07): ids as
# gids, enums upper case, times in UTC.

def gql_time(text: str | None) -> str | None:
    """A webhook timestamp (any offset) as GraphQL's DateTime: UTC, ``Z``."""
    if text is None:
        return None
    return datetime.fromisoformat(text.replace("Z", "+00:00")).astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def shopify_fulfillment_node(f: dict[str, Any]) -> dict[str, Any]:
    """A ``fulfillments/*`` body (``shopify_fulfillment``) as the GraphQL Fulfillment: its carrier status is
    the ``displayStatus`` (FULFILLED before any carrier news), every tracking number with its link, and
    ``requiresShipping`` (whether any of its lines does)."""
    numbers = f.get("tracking_numbers") or ([f["tracking_number"]] if f.get("tracking_number") else [])
    urls = f.get("tracking_urls") or ([f["tracking_url"]] if f.get("tracking_url") else [])
    status = str(f["status"]).upper()
    display = str(f["shipment_status"]).upper() if f.get("shipment_status") else {"SUCCESS": "FULFILLED", "CANCELLED": "CANCELED"}.get(status, "SUBMITTED")
    lines = f.get("line_items") or []
    return {"id": f["admin_graphql_api_id"], "status": status, "displayStatus": display,
            "createdAt": gql_time(f["created_at"]), "updatedAt": gql_time(f["updated_at"]),
            "requiresShipping": not lines or any(li.get("requires_shipping", True) for li in lines),
            "trackingInfo": [{"company": f.get("tracking_company"), "number": n, "url": urls[i] if i < len(urls) else None}
                             for i, n in enumerate(numbers)]}


def shopify_phone_consent(phone: str, *, sms: tuple[str, datetime | None] | None = None,
                          whatsapp: tuple[str, datetime | None] | None = None) -> dict[str, Any]:
    """The customer's ``defaultPhoneNumber`` with its consent, from the two consent webhooks' samples:
    ``sms`` / ``whatsapp`` = (state, when) as those webhooks would say it (when None: Shopify kept no date)."""
    sms_consent = fixture("shopify/customers_marketing_consent_update.sample.json")["sms_marketing_consent"]
    wa_consent = fixture("shopify/customers_whats_app_marketing_consent_update.sample.json")["whats_app_marketing_consent"]
    if sms:
        sms_consent.update(state=sms[0], consent_updated_at=iso(sms[1]) if sms[1] else None)
    if whatsapp:
        wa_consent.update(state=whatsapp[0], updated_at=iso(whatsapp[1]) if whatsapp[1] else None)
    return {"phoneNumber": phone, "marketingState": (sms_consent["state"] or "not_subscribed").upper(),
            "marketingUpdatedAt": gql_time(sms_consent["consent_updated_at"]),
            "whatsAppMarketingConsent": {"state": (wa_consent["state"] or "not_subscribed").upper(), "updatedAt": gql_time(wa_consent["updated_at"])}}


def shopify_customer_node(phone: str, phone_consent: dict[str, Any], updated: datetime) -> dict[str, Any]:
    """The customer with this phone as the reconcile's ``customers`` query reads her (API 2026-07): her id,
    when she last changed, and her ``defaultPhoneNumber`` with its consent (``shopify_phone_consent``)."""
    return {"id": f"gid://shopify/Customer/{customer_id_for(phone)}", "updatedAt": gql_time(iso(updated)),
            "defaultPhoneNumber": phone_consent}


def shopify_order_node(order: dict[str, Any], *, fulfillments: tuple[dict[str, Any], ...] | list[dict[str, Any]] = (),
                       phone_consent: dict[str, Any] | None = None) -> dict[str, Any]:
    """An ``orders/*`` body (``shopify_order``) as the GraphQL Order the reconcile reads, with these
    fulfilments (``fulfillments/*`` bodies) and the customer's ``defaultPhoneNumber`` (``shopify_phone_consent``)."""
    currency = order["currency"]

    def address(a: dict[str, Any] | None) -> dict[str, Any] | None:
        return {"phone": a.get("phone"), "countryCodeV2": a.get("country_code"), "firstName": a.get("first_name"),
                "lastName": a.get("last_name")} if a else None

    def gid(kind: str, value: Any) -> dict[str, str] | None:
        return {"id": f"gid://shopify/{kind}/{value}"} if value else None

    lines = [{"id": li["admin_graphql_api_id"], "quantity": li["quantity"], "currentQuantity": li.get("current_quantity", li["quantity"]),
              "title": li.get("title"), "sku": li.get("sku"), "variant": gid("ProductVariant", li.get("variant_id")),
              "product": gid("Product", li.get("product_id")), "originalUnitPriceSet": {"shopMoney": {"amount": li["price"]}},
              "requiresShipping": li.get("requires_shipping", True),
              "discountAllocations": [{"allocatedAmountSet": {"shopMoney": {"amount": d["amount_set"]["shop_money"]["amount"]}}}
                                      for d in li.get("discount_allocations") or []]}
             for li in order.get("line_items") or []]
    shipping = next((s for s in order.get("shipping_lines") or [] if not s.get("is_removed")), None)
    customer = order.get("customer") or {}
    total = order.get("current_total_price") or order["total_price"]
    return {
        "id": order["admin_graphql_api_id"], "name": order["name"], "createdAt": gql_time(order["created_at"]),
        "updatedAt": gql_time(order["updated_at"]), "cancelledAt": gql_time(order.get("cancelled_at")),
        "displayFinancialStatus": str(order["financial_status"]).upper(),
        "displayFulfillmentStatus": {"fulfilled": "FULFILLED", "partial": "PARTIALLY_FULFILLED"}.get(order.get("fulfillment_status") or "", "UNFULFILLED"),
        "paymentGatewayNames": order.get("payment_gateway_names") or [], "email": order.get("email"), "phone": order.get("phone"),
        "currencyCode": currency, "presentmentCurrencyCode": order.get("presentment_currency"), "statusPageUrl": order.get("order_status_url"),
        "tags": [t.strip() for t in (order.get("tags") or "").split(",") if t.strip()], "test": bool(order.get("test")),
        "checkoutToken": order.get("checkout_token"), "customerLocale": order.get("customer_locale"), "sourceName": order.get("source_name"),
        "currentTotalPriceSet": {"shopMoney": {"amount": total, "currencyCode": currency},
                                 "presentmentMoney": {"amount": total, "currencyCode": order.get("presentment_currency") or currency}},
        "customer": {"id": customer.get("admin_graphql_api_id"), "firstName": customer.get("first_name"), "lastName": customer.get("last_name"),
                     "email": customer.get("email"), "phone": customer.get("phone"), "defaultPhoneNumber": phone_consent} if customer else None,
        "shippingAddress": address(order.get("shipping_address")), "billingAddress": address(order.get("billing_address")),
        "shippingLine": {"title": shipping.get("title"), "code": shipping.get("code")} if shipping else None,
        "lineItems": {"pageInfo": {"hasNextPage": False, "endCursor": None}, "nodes": lines},
        "fulfillments": [shopify_fulfillment_node(f) for f in fulfillments],
    }


# ---- WooCommerce ----------------------------------------------------------------------------

def woo_order(order_id: int, phone: str, at: datetime, *, cod: bool = True, status: str = "processing", total: str = "1299.00") -> dict[str, Any]:
    """The REST v3 order example turned into a COD (``cod``, unpaid) or paid order."""
    o = fixture("woocommerce/order.created.rest-v3-docs-example.json")
    o.update(id=order_id, number=str(order_id), order_key=f"wc_order_{order_id}", status=status, currency="INR", total=total,
             date_created_gmt=gmt(at), date_created=gmt(at), date_modified_gmt=gmt(at), date_modified=gmt(at))
    if cod:
        o.update(payment_method="cod", payment_method_title="Cash on delivery", date_paid=None, date_paid_gmt=None, transaction_id="")
    else:
        o.update(payment_method="razorpay", payment_method_title="Razorpay", date_paid=gmt(at), date_paid_gmt=gmt(at))
    o["billing"].update(phone=phone, first_name="Asha")
    return o


def woo_shipped(order: dict[str, Any], at: datetime) -> dict[str, Any]:
    """``order`` shipped at ``at``: completed, with a Shipment Tracking item in its meta."""
    tracking = {"id": 99, "key": "_wc_shipment_tracking_items",
                "value": [{"tracking_provider": "Delhivery", "tracking_number": f"DL{order['id']}"}]}
    return {**order, "status": "completed", "date_modified_gmt": gmt(at), "date_modified": gmt(at),
            "meta_data": [*order.get("meta_data", []), tracking]}


CART_TOKEN = "cart-hook-Scenario-7Qm2xWv9Lr4Tn8Kp3Zs6"


def _php_urlencode(value: str) -> str:
    return quote_plus(value, safe="").replace("~", "%7E")


def http_build_query(fields: dict[str, str]) -> bytes:
    return "&".join(f"{_php_urlencode(k)}={_php_urlencode(v)}" for k, v in fields.items()).encode("ascii")


def woo_cart(session: str, phone: str, status: str = "abandoned", *, opt_in: bool = True, total: str = "899.00") -> dict[str, str]:
    """What the Cart Abandonment Recovery plugin posts (``trigger_zapier_webhook``), plus the site's opt-in field."""
    token = _php_urlencode(base64.b64encode(f"wcf_session_id={session}".encode()).decode())
    fields = {
        "first_name": "Asha", "last_name": "Rao", "phone_number": phone,
        "billing_address": "Bloom Co 12 MG Road, KA, IN, Bengaluru, 560001", "shipping_address": "Bloom Co 12 MG Road, Bengaluru, KA, 560001",
        "email": f"{session[:6]}@example.in",
        "checkout_url": f"https://bloom.example/checkout/?wcf_ac_token={token}&#038;utm_source=whatsapp",
        "product_names": "Neem face wash & Rose toner", "coupon_code": "", "order_status": status, "cart_total": total,
        "product_table": "<table><tr><td>Neem face wash</td><td>1</td></tr></table>", "currency": "INR",
    }
    if opt_in:
        fields["whatsapp_opt_in"] = "1"
    return fields


# ---- WhatsApp -------------------------------------------------------------------------------

def _inbound(sample: str, phone_number_id: str, wa_id: str, message_id: str, at: datetime) -> tuple[dict[str, Any], dict[str, Any]]:
    env = fixture(f"whatsapp/{sample}")
    value = env["entry"][0]["changes"][0]["value"]
    value["metadata"]["phone_number_id"] = phone_number_id
    value["contacts"][0].update(wa_id=wa_id, profile={"name": "Asha"})
    msg = value["messages"][0]
    msg.update({"from": wa_id, "id": message_id, "timestamp": str(int(at.timestamp()))})
    return env, msg


def wa_button_tap(phone_number_id: str, wa_id: str, message_id: str, payload: str, context_wamid: str, at: datetime) -> dict[str, Any]:
    """A template quick-reply tap (type ``button``) quoting the message it answers."""
    env, msg = _inbound("inbound_template_quick_reply_button.pywa.json", phone_number_id, wa_id, message_id, at)
    msg["button"] = {"payload": payload, "text": {"cod_confirm": "Confirm", "cod_cancel": "Cancel"}.get(payload, payload)}
    msg["context"] = {"from": phone_number_id, "id": context_wamid}
    return env


def wa_text(phone_number_id: str, wa_id: str, message_id: str, text: str, at: datetime, context_wamid: str | None = None) -> dict[str, Any]:
    """Words from the customer; ``context_wamid``: the message she quotes (a swipe-to-reply)."""
    env, msg = _inbound("inbound_text.pywa.json", phone_number_id, wa_id, message_id, at)
    msg["text"] = {"body": text}
    if context_wamid:
        msg["context"] = {"from": phone_number_id, "id": context_wamid}
    return env


def wa_marketing_preference(phone_number_id: str, wa_id: str, value: str, at: datetime) -> dict[str, Any]:
    """WhatsApp's own marketing-messages preference (``user_preferences``): ``stop`` / ``resume``."""
    env = fixture("whatsapp/user_preferences_marketing_resume.pywa.json")
    change = env["entry"][0]["changes"][0]["value"]
    change["metadata"]["phone_number_id"] = phone_number_id
    change["contacts"][0]["wa_id"] = wa_id
    change["user_preferences"][0].update(wa_id=wa_id, value=value, timestamp=int(at.timestamp()),
                                         detail=f"User requested to {value} marketing messages")
    return env


def wa_status(phone_number_id: str, wa_id: str, wamid: str, status: str, at: datetime, callback: str | None = None) -> dict[str, Any]:
    env = fixture(f"whatsapp/status_{status}.pywa.json")
    value = env["entry"][0]["changes"][0]["value"]
    value["metadata"]["phone_number_id"] = phone_number_id
    value["contacts"][0]["wa_id"] = wa_id
    item = value["statuses"][0]
    item.update(id=wamid, recipient_id=wa_id, timestamp=str(int(at.timestamp())))
    if callback:
        item["biz_opaque_callback_data"] = callback
    return env
