"""Fuzzing the webhook parsers and normalisers with hypothesis: random and mutated real payloads.

Two properties:
1. A normaliser given any JSON object for any topic either returns events or raises
   ``NormalizationError`` (which stores the row as ``failed`` with the reason); anything else
   is a bug that would leave the row retrying.
2. Over HTTP, with a valid signature or none, any body gets 200 (stored), 400, 401 or 413,
   never a 500; after processing, every stored row is done, ignored or failed with a reason.
   The bodies go to every webhook endpoint: Shopify (every handled topic), WooCommerce (every
   handled topic and an unknown one), the Cart Abandonment Recovery plugin's form post
   (``/webhooks/woocommerce/{store}/carts/{token}``, with the right token or a wrong one),
   WhatsApp, and bodies over ``server.max_body_bytes`` (declared or chunked), which get 413.

Bounded: a few hundred examples per property, SQLite, 127.0.0.1 only (the app runs in-process).
The examples are derived from a fixed seed so a CI run is repeatable; set
``STORELOOP_FUZZ_EXPLORE=1`` to draw new ones each run (and keep what it finds as a test).
"""

from __future__ import annotations

import base64
import copy
import itertools
import json
import os
from datetime import datetime, timezone
from typing import Any
from urllib.parse import quote_plus

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import select

from adapters.registry import normalizers
from connector.config import parse_settings
from connector.errors import NormalizationError
from connector.storage import models as m
from connector.web.webhooks import WHATSAPP_LARGEST_POST
from tests.conftest import FIXTURES, PHONE_ID_A, SECRETS, settings_dict
from tests.helpers import load_json, meta_signature, running_app, shopify_headers, woo_headers

SHOPIFY = {
    "orders/create": "orders_create.sample.json",
    "orders/updated": "orders_create.sample.json",
    "checkouts/create": "checkouts_create.sample.json",
    "fulfillments/update": "fulfillments_update.sample.json",
    "customers/update": "customers_redact.sample.json",
    "customers_whats_app_marketing_consent/update": "customers_whats_app_marketing_consent_update.sample.json",
    "customers/data_request": "customers_data_request.sample.json",
    "app/uninstalled": "app_uninstalled.sample.json",
}
WOO_TOPICS = ["order.created", "order.updated", "order.deleted", "order.restored", "customer.created", "customer.updated",
              "product.created", "product.updated", "coupon.created"]
WOO_CUSTOMER = {"id": 25, "date_modified_gmt": "2026-11-20T10:00:00", "email": "asha@example.in", "first_name": "Asha",
                "last_name": "Rao", "billing": {"phone": "098765 43210", "country": "IN", "email": "asha@example.in"},
                "shipping": {"country": "IN"}, "meta_data": [{"id": 1, "key": "whatsapp_opt_in", "value": "yes"}]}
WOO_PRODUCT = {"id": 799, "name": "Neem face wash", "date_modified_gmt": "2026-11-20T10:00:00",
               "tags": [{"id": 3, "name": "replenish:30d", "slug": "replenish-30d"}]}
CART_TOKEN = "fuzz-cart-token-7Qm2xWv9Lr4Tn8Kp"
CART_FORM = {  # what the Cart Abandonment Recovery plugin posts (http_build_query), see tests/test_woocommerce_carts.py
    "first_name": "Asha", "last_name": "Rao", "phone_number": "+91 98765 43210",
    "billing_address": "Bloom Co 12 MG Road, KA, IN, Bengaluru, 560001", "email": "asha@example.in",
    "checkout_url": "",  # per example: a cart session of its own, so posts are not all duplicates of one cart
    "product_names": "Neem face wash & Rose toner", "coupon_code": "", "order_status": "abandoned", "cart_total": "899.00",
    "product_table": "<table><tr><td>Neem face wash</td></tr></table>",
}
WHATSAPP = ["inbound_text.pywa.json", "inbound_template_quick_reply_button.pywa.json", "status_failed.pywa.json",
            "user_preferences_marketing_resume.pywa.json", "inbound_reply_with_context.pywa.json"]

json_scalars = st.one_of(st.none(), st.booleans(), st.integers(-2**70, 2**70), st.floats(allow_nan=False), st.text(max_size=40),
                         st.sampled_from(["", "0", "-1", "2026-13-45T99:99:99Z", "+91 98765 43210", "not a phone", "☃", "null",
                                          "' OR 1=1 --", "\r\nX-Injected: 1", "1e309", "9" * 40]))
json_values = st.recursive(json_scalars, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                                  st.dictionaries(st.text(max_size=12), inner, max_size=5)), max_leaves=20)


def _paths(value: Any, prefix: tuple = ()) -> list[tuple]:
    out = [prefix]
    if isinstance(value, dict):
        for k, v in value.items():
            out += _paths(v, prefix + (k,))
    elif isinstance(value, list):
        for i, v in enumerate(value[:3]):
            out += _paths(v, prefix + (i,))
    return out


@st.composite
def mutated(draw: Any, base: dict[str, Any]) -> dict[str, Any]:
    """The real payload with a few of its fields deleted or replaced by other JSON."""
    doc = copy.deepcopy(base)
    for _ in range(draw(st.integers(1, 4))):
        paths = [p for p in _paths(doc) if p]
        if not paths:
            break
        path = draw(st.sampled_from(paths))
        parent = doc
        for key in path[:-1]:
            parent = parent[key]
        if draw(st.booleans()) and isinstance(parent, dict):
            parent.pop(path[-1], None)
        else:
            parent[path[-1]] = draw(json_values)
    return doc


def _php_urlencode(value: str) -> str:
    return quote_plus(value, safe="").replace("~", "%7E")


form_text = st.one_of(st.text(max_size=30), st.sampled_from(["", "abandoned", "completed", "recovered", "lost", "ABANDONED ",
                                                              "not a phone", "+91 98765 43210", "javascript:alert(1)", "http://",
                                                              "https://x.example/?wcf_ac_token=%%%", "1e309", "-5", "XYZW", "☃"]))


@st.composite
def cart_form(draw: Any) -> bytes:
    """The plugin's form with fields dropped, replaced, added or repeated; now and then not a form at all."""
    if draw(st.integers(0, 9)) == 0:
        return draw(st.one_of(st.binary(max_size=200), st.text(max_size=200).map(lambda t: t.encode("utf-8")),
                              st.just(b"&".join([b"a=1"] * 300)), st.just(b"%ff%fe=1"), st.just(b"=&=&==")))
    session = draw(st.uuids()).hex
    token = _php_urlencode(base64.b64encode(f"wcf_session_id={session}".encode()).decode())
    fields = {**CART_FORM, "checkout_url": f"https://bloom.example/checkout/?wcf_ac_token={token}&#038;utm_source=whatsapp"}
    for _ in range(draw(st.integers(0, 4))):
        name = draw(st.sampled_from([*CART_FORM, "currency", "whatsapp_opt_in", "a[b]", ""]))
        if draw(st.booleans()):
            fields.pop(name, None)
        else:
            fields[name] = draw(form_text)
    pairs = [f"{_php_urlencode(k)}={_php_urlencode(v)}" for k, v in fields.items()]
    if draw(st.booleans()):
        pairs = draw(st.permutations(pairs))
    return "&".join(pairs).encode("ascii")


def _store(source: str):
    raw = settings_dict("sqlite://")
    settings = parse_settings(raw, environ={})
    return {"shopify": settings.stores[0], "woocommerce": settings.stores[2], "whatsapp": settings.stores[0]}[source]


DERANDOMIZE = not os.environ.get("STORELOOP_FUZZ_EXPLORE")
FUZZ = settings(max_examples=300, deadline=None, derandomize=DERANDOMIZE,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])


def _only_normalization_errors(source: str, topic: str, body: Any) -> None:
    normalize = normalizers()[source]
    try:
        events = normalize(topic, body, _store(source))
    except NormalizationError:
        return
    assert isinstance(events, list)


def test_shopify_normalisers_raise_only_normalisation_errors():
    bases = {t: load_json(FIXTURES / "shopify" / f) for t, f in SHOPIFY.items()}

    @FUZZ
    @given(st.sampled_from(sorted(SHOPIFY)), st.data())
    def check(topic: str, data: Any) -> None:
        body = data.draw(st.one_of(mutated(bases[topic]), st.dictionaries(st.text(max_size=12), json_values, max_size=6)))
        _only_normalization_errors("shopify", topic, body)

    check()


def _woo_base(topic: str, order: dict[str, Any]) -> dict[str, Any]:
    resource = topic.partition(".")[0]
    if topic == "order.deleted":
        return {"id": order["id"]}
    return {"order": order, "customer": WOO_CUSTOMER, "product": WOO_PRODUCT}.get(resource, order)


def test_woocommerce_normalisers_raise_only_normalisation_errors():
    order = load_json(FIXTURES / "woocommerce" / "order.created.rest-v3-docs-example.json")

    @FUZZ
    @given(st.sampled_from(WOO_TOPICS), st.data())
    def check(topic: str, data: Any) -> None:
        body = data.draw(st.one_of(mutated(_woo_base(topic, order)), st.dictionaries(st.text(max_size=12), json_values, max_size=6)))
        _only_normalization_errors("woocommerce", topic, body)

    check()


def test_woocommerce_cart_normaliser_raises_only_normalisation_errors():
    """The stored cart row is ``{"received_at": ..., "form": <the plugin's body>}``."""
    received = datetime(2026, 11, 20, 6, 30, tzinfo=timezone.utc).isoformat()

    @FUZZ
    @given(st.sampled_from(["cart.abandoned", "cart.completed", "cart.recovered", "cart.other"]), cart_form(), st.data())
    def check(topic: str, form: bytes, data: Any) -> None:
        doc: dict[str, Any] = {"received_at": received, "form": form.decode("utf-8", "replace")}
        if data.draw(st.integers(0, 4)) == 0:  # the stored envelope itself damaged (a hand-edited row, a replay)
            doc = data.draw(mutated(doc))
        _only_normalization_errors("woocommerce", topic, doc)

    check()


def test_whatsapp_normaliser_raises_only_normalisation_errors():
    bases = [load_json(FIXTURES / "whatsapp" / f) for f in WHATSAPP]
    # the normaliser sees one item of the split batch: the envelope's change value
    values = [b["entry"][0]["changes"][0]["value"] for b in bases]

    @FUZZ
    @given(st.sampled_from(range(len(values))), st.sampled_from(["messages", "statuses", "user_preferences", "unknown"]), st.data())
    def check(i: int, kind: str, data: Any) -> None:
        body = data.draw(st.one_of(mutated(values[i]), st.dictionaries(st.text(max_size=12), json_values, max_size=6)))
        _only_normalization_errors("whatsapp", kind, body)

    check()


def test_no_body_gets_a_500_and_every_stored_row_ends_with_a_reason(tmp_path, sqlite_template):
    import shutil

    db_path = tmp_path / "fuzz.db"
    shutil.copy(sqlite_template, db_path)
    raw_settings = settings_dict(f"sqlite:///{db_path}")
    raw_settings["stores"][2]["cart_webhook_token"] = CART_TOKEN
    settings_ = parse_settings(raw_settings, environ={})
    cap = settings_.server.max_body_bytes
    bases = {t: load_json(FIXTURES / "shopify" / f) for t, f in SHOPIFY.items()}
    woo_order = load_json(FIXTURES / "woocommerce" / "order.created.rest-v3-docs-example.json")
    wa_bases = [load_json(FIXTURES / "whatsapp" / f) for f in WHATSAPP]
    answers: dict[int, int] = {}
    by_target: dict[str, dict[int, int]] = {}
    woo_topics: set[str] = set()
    woo_ids = itertools.count(90_000)

    with running_app(settings_) as (client, runtime):

        @settings(max_examples=450, deadline=None, derandomize=DERANDOMIZE, suppress_health_check=list(HealthCheck))
        @given(st.data())
        def post(data: Any) -> None:
            target = data.draw(st.sampled_from(["shopify", "woocommerce", "cart", "whatsapp", "raw", "too_big"]))
            if target == "shopify":
                topic = data.draw(st.sampled_from(sorted(SHOPIFY)))
                body = json.dumps(data.draw(mutated(bases[topic]))).encode()
                headers = shopify_headers(body, SECRETS["shop_a"], "shop-a.myshopify.com", topic)
                r = client.post("/webhooks/shopify", content=body, headers=headers)
            elif target == "woocommerce":
                topic = data.draw(st.sampled_from(WOO_TOPICS))
                woo_topics.add(topic)
                base = {**_woo_base(topic, woo_order), "id": next(woo_ids)}  # a resource of its own: not a duplicate
                body = json.dumps(data.draw(mutated(base))).encode()
                r = client.post("/webhooks/woocommerce/woo", content=body, headers=woo_headers(body, SECRETS["woo"], topic))
            elif target == "cart":  # the plugin's unsigned form post; the URL's last segment is the secret
                body = data.draw(cart_form())
                store, token = data.draw(st.sampled_from([("woo", CART_TOKEN)] * 8 + [("woo", CART_TOKEN[:-1]), ("woo", "x" * 40),
                                                                                     ("shop-a", CART_TOKEN), ("nope", CART_TOKEN)]))
                r = client.post(f"/webhooks/woocommerce/{store}/carts/{token}", content=body,
                                headers={"User-Agent": "WordPress/6.8; https://bloom.example"})
                assert r.status_code in ((200, 400) if (store, token) == ("woo", CART_TOKEN) else (401,)), (store, r.status_code, r.text)
            elif target == "too_big":  # over the endpoint's cap, correctly signed: 413 whatever the endpoint
                where = data.draw(st.sampled_from(["shopify", "woocommerce", "cart", "whatsapp"]))
                # WhatsApp's route never caps below Meta's largest POST, whatever server.max_body_bytes says
                limit = max(cap, WHATSAPP_LARGEST_POST) if where == "whatsapp" else cap
                size = limit + data.draw(st.integers(1, 4096))
                body = b'{"id":1,"pad":"' + b"x" * (size - 17) + b'"}'
                url, headers = {
                    "shopify": ("/webhooks/shopify", shopify_headers(body, SECRETS["shop_a"], "shop-a.myshopify.com", "orders/create")),
                    "woocommerce": ("/webhooks/woocommerce/woo", woo_headers(body, SECRETS["woo"], "order.updated")),
                    "cart": (f"/webhooks/woocommerce/woo/carts/{CART_TOKEN}", {}),
                    "whatsapp": ("/webhooks/whatsapp", {"X-Hub-Signature-256": meta_signature(body, SECRETS["wa_app"])}),
                }[where]
                if data.draw(st.booleans()):  # no Content-Length: chunked, counted as it arrives
                    r = client.post(url, content=iter([body[: limit // 2], body[limit // 2:]]), headers=headers)
                else:
                    r = client.post(url, content=body, headers=headers)
                assert r.status_code == 413, (where, r.status_code, r.text[:200])
            elif target == "whatsapp":
                doc = data.draw(mutated(wa_bases[data.draw(st.integers(0, len(wa_bases) - 1))]))
                if isinstance(doc.get("entry"), list) and doc["entry"] and isinstance(doc["entry"][0], dict):
                    changes = doc["entry"][0].get("changes")
                    for change in changes if isinstance(changes, list) else []:
                        if isinstance(change, dict) and isinstance(change.get("value"), dict):
                            change["value"]["metadata"] = {"phone_number_id": PHONE_ID_A, "display_phone_number": "1"}
                body = json.dumps(doc).encode()
                r = client.post("/webhooks/whatsapp", content=body, headers={"X-Hub-Signature-256": meta_signature(body, SECRETS["wa_app"])})
            else:  # not JSON at all, nested too deep, or not UTF-8, correctly signed
                body = data.draw(st.one_of(st.binary(max_size=200), st.just(b"[" * 5000 + b"]" * 5000),
                                           st.just(b'{"a":' * 3000 + b"1" + b"}" * 3000), st.just(b"\xff\xfe{}")))
                r = client.post("/webhooks/shopify", content=body,
                                headers=shopify_headers(body, SECRETS["shop_a"], "shop-a.myshopify.com", "orders/create"))
            answers[r.status_code] = answers.get(r.status_code, 0) + 1
            seen = by_target.setdefault(target, {})
            seen[r.status_code] = seen.get(r.status_code, 0) + 1
            assert r.status_code in (200, 400, 401, 413), (target, r.status_code, r.text[:200])

        post()
        for _ in range(settings_.worker.inbox_max_attempts + 1):  # retried rows come back after their backoff
            runtime.processor.drain()
        with runtime.db.engine.connect() as conn:
            rows = conn.execute(select(m.InboxEvent.status, m.InboxEvent.last_error, m.InboxEvent.source, m.InboxEvent.topic)).all()
    assert answers.get(200, 0) > 50 and answers.get(400, 0) > 5, by_target  # both kinds were exercised
    # every endpoint and answer was reached: the plugin's form stored and refused, wrong tokens
    # refused, WooCommerce on more than one topic, and the size cap
    assert {200, 400, 401} <= set(by_target.get("cart", {})), by_target
    assert len(woo_topics) >= 5 and by_target.get("too_big", {}).get(413, 0) >= 10, (woo_topics, by_target)
    assert any(r.source == "woocommerce" and r.topic.startswith("cart.") for r in rows)
    # a failure that is not a normalisation error, or a row waiting to retry one, is a crash in our code
    bugs = [r for r in rows if (r.status == "failed" and not (r.last_error or "").startswith("normalisation:"))
            or (r.status == "pending" and r.last_error)]
    assert not bugs, bugs[:5]
    assert all(r.status in ("done", "ignored", "failed") for r in rows)
    assert all(r.last_error for r in rows if r.status == "failed")
