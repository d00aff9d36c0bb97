"""Webhook endpoints: verify the raw bytes, store once, answer.

No outbound call and no business logic happen inside a request: one inbox write (group
committed with whatever else is arriving), then the answer. A 2xx is only sent after the
commit, or under a burst on SQLite after the batch is in the ingest journal
(storage/journal.py), which the inbox imports after the burst; if neither can take the
write, the sender gets a 503 and retries.
"""

from __future__ import annotations

import logging
from typing import Any

from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response

from adapters.envelope import Envelope
from adapters.whatsapp import webhooks as wa
from adapters.woocommerce import carts as woo_carts
from adapters.woocommerce import site as woo_site
from adapters.woocommerce import webhooks as woo
from connector.errors import BadPayloadError, VerificationError
from connector.runtime import Runtime
from connector.storage.inbox import InboxItem, log_duplicates
from connector.web.http import BodyTooLarge, json_object_error, parse_json, problem, receive_body

log = logging.getLogger("storeloop.webhooks")
# what a refusal as "another site" asks of the operator (a log line's ``hint``)
ANOTHER_SITE = ("neither site_url nor one of the store's webhook_sources: a staging copy of the shop is refused on purpose "
                "(turn off its webhooks and cart plugin, or give it its own secrets); if it is this shop's own address (a language "
                "directory), add it to the store's webhook_sources")



def _runtime(request: Request) -> Runtime:
    return request.app.state.runtime


class Delivery:
    """What a POST webhook handler needs, read straight from the ASGI scope (the hot path
    skips Starlette's Request object and exception wrappers: every delivery goes through here)."""

    __slots__ = ("runtime", "headers", "body", "path_params")

    def __init__(self, runtime: Runtime, headers: dict[str, str], body: bytes, path_params: dict[str, Any]):
        self.runtime = runtime
        self.headers = headers
        self.body = body
        self.path_params = path_params


WHATSAPP_LARGEST_POST = 4 * 2**20  # Meta batches up to 1,000 updates and ~3 MB in one POST (platform-facts C2)


class WebhookEndpoint:
    """A plain ASGI endpoint around ``handler(delivery) -> Response``: headers as one dict
    (Starlette's ``Headers.get`` rescans the raw list per call), the body read under the cap."""

    def __init__(self, handler: Any, source: str, floor: int = 0):
        self.handler = handler
        self.source = source
        self.floor = floor  # a sender's documented largest POST: a lower cap would refuse it on every retry

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        runtime: Runtime = scope["app"].state.runtime
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
        cap = max(runtime.settings.server.max_body_bytes, self.floor)
        response: Response
        try:
            body = await receive_body(receive, headers, cap)
        except BodyTooLarge:
            log.warning("body over the size cap", extra={"source": self.source, "cap": cap})
            response = problem(413, f"body larger than {cap} bytes")
        else:
            response = await self.handler(Delivery(runtime, headers, body, scope.get("path_params", {})))
        await response(scope, receive, send)


async def _store(runtime: Runtime, items: list[InboxItem], source: str) -> Response:
    try:
        results = await runtime.writer.submit(items)
    except Exception:
        return problem(503, "storage unavailable; retry later")
    log_duplicates(results, source)
    return Response(status_code=200)


def _item(runtime: Runtime, store_key: str, source: str, env: Envelope, body: bytes) -> InboxItem:
    return InboxItem(
        store_id=runtime.store_ids[store_key],
        source=source,
        topic=env.topic[:80],
        dedupe_key=env.dedupe_key,
        raw_body=body,
        headers=env.headers,
        triggered_at=env.triggered_at,
        status="ignored" if env.ignored_reason else "pending",
        last_error=env.ignored_reason,
    )


def _json_or_400(body: bytes, source: str, store_key: str) -> Any | Response:
    try:
        return parse_json(body)
    except ValueError as exc:
        log.warning("signed body is not valid JSON", extra={"source": source, "store": store_key, "reason": str(exc)})
        return problem(400, str(exc))


async def shopify_webhook(d: Delivery) -> Response:
    runtime, headers, body = d.runtime, d.headers, d.body
    try:
        store = runtime.shopify.verify(headers, body)
    except VerificationError as exc:
        log.warning("shopify webhook rejected", extra={"reason": exc.reason})
        return problem(401, "unauthorized")
    invalid = json_object_error(body)
    if invalid is not None:
        what = "not valid JSON" if invalid.startswith("malformed") else "not a JSON object"
        log.warning(f"signed body is {what}", extra={"source": "shopify", "store": store.key, "reason": invalid})
        return problem(400, invalid)
    env = runtime.shopify.envelope(headers, body)
    if env.ignored_reason:
        log.info("shopify topic ignored", extra={"store": store.key, "topic": env.topic})
    return await _store(runtime, [_item(runtime, store.key, "shopify", env, body)], "shopify")


async def woocommerce_webhook(d: Delivery) -> Response:
    runtime, headers, body = d.runtime, d.headers, d.body
    key = d.path_params["store_key"]
    store = runtime.woocommerce_store(key)
    if store is None:
        log.warning("woocommerce webhook for unknown store", extra={"store": key[:64]})
        return problem(401, "unauthorized")
    if woo.is_ping(headers, body):
        log.info("woocommerce webhook ping answered", extra={"store": key})
        return Response(status_code=200)
    try:
        await runtime.woo_webhook_secrets.verify(store, headers, body)  # configured + installed (stored) secrets
    except VerificationError as exc:
        log.warning("woocommerce webhook rejected", extra={"store": key, "reason": exc.reason})
        return problem(401, "unauthorized")
    try:
        woo.verify_source(store, headers)
    except VerificationError:
        # a staging copy of the shop signs with the live shop's secret: its test orders must reach no customer
        sent = woo_site.shown(woo.source(headers) or "")
        log.warning("woocommerce webhook from another site refused", extra={"store": key, "source": sent, "hint": ANOTHER_SITE})
        await runtime.refused_sites.note(runtime.store_ids[key], sent, runtime.clock())
        return problem(401, "unauthorized")
    if woo.source(headers) is not None:  # a site the store takes: a notice of its refusals, from before it was listed, goes
        await runtime.refused_sites.accepted(runtime.store_ids[key], runtime.clock(), lambda s: woo_site.is_own_site(store, s))
    payload = _json_or_400(body, "woocommerce", key)
    if isinstance(payload, Response):
        return payload
    if not isinstance(payload, dict):
        return problem(400, "body must be a JSON object")
    env = woo.envelope(headers, body, payload)
    return await _store(runtime, [_item(runtime, key, "woocommerce", env, body)], "woocommerce")


async def woocommerce_cart_webhook(d: Delivery) -> Response:
    """The Cart Abandonment Recovery plugin's form post; the secret is the URL's last segment.

    Unknown store, no ``cart_webhook_token`` configured, or a missing or wrong token: 401,
    logged without the token. A body that is not the plugin's form: 400. Otherwise one
    inbox row (a repeated post is a duplicate), normalised later like any other webhook.
    """
    runtime = d.runtime
    key = d.path_params["store_key"]
    store = runtime.woocommerce_store(key)
    if store is None:
        log.warning("woocommerce cart webhook for unknown store", extra={"store": key[:64]})
        return problem(401, "unauthorized")
    try:
        woo_carts.verify_token(store, d.path_params.get("token", ""))
    except VerificationError as exc:
        log.warning("woocommerce cart webhook rejected", extra={"store": key, "reason": exc.reason})
        return problem(401, "unauthorized")
    try:
        fields = woo_carts.parse_form(d.body)
    except BadPayloadError as exc:
        log.warning("woocommerce cart webhook body is malformed", extra={"store": key, "reason": str(exc)})
        return problem(400, str(exc))
    sent = woo_carts.other_site(store, d.headers, fields)
    if sent is not None:
        # a staging copy posts its carts with the live token: its recovery link would reach a real customer
        log.warning("woocommerce cart webhook from another site refused", extra={"store": key, "source": sent, "hint": ANOTHER_SITE})
        await runtime.refused_sites.note(runtime.store_ids[key], sent, runtime.clock())
        return problem(401, "unauthorized")
    received_at = runtime.clock()
    env = woo_carts.envelope(d.headers, fields, received_at)
    if env.ignored_reason:
        log.info("woocommerce cart status ignored", extra={"store": key, "topic": env.topic})
    item = _item(runtime, key, "woocommerce", env, woo_carts.stored_body(d.body, received_at))
    return await _store(runtime, [item], "woocommerce-cart")


async def whatsapp_challenge(request: Request) -> Response:
    runtime = _runtime(request)
    token = runtime.settings.whatsapp.verify_token
    answer = wa.challenge(request.query_params, token.get_secret_value() if token else None)
    if answer is None:
        log.warning("whatsapp subscription challenge refused")
        return problem(403, "forbidden")
    return PlainTextResponse(answer)


async def whatsapp_webhook(d: Delivery) -> Response:
    runtime, body = d.runtime, d.body
    secret = runtime.settings.whatsapp.app_secret
    try:
        wa.verify(secret.get_secret_value() if secret else None, d.headers, body)
    except VerificationError as exc:
        log.warning("whatsapp webhook rejected", extra={"reason": exc.reason})
        return problem(401, "unauthorized")
    payload = _json_or_400(body, "whatsapp", "-")
    if isinstance(payload, Response):
        return payload
    try:
        parts = wa.split(payload, body)
    except BadPayloadError as exc:
        log.warning("whatsapp update has an unexpected shape", extra={"reason": str(exc)})
        return problem(400, str(exc))
    items: list[InboxItem] = []
    for part in parts:
        if part.topic == "number_quality" and part.business_account_id is not None:  # one of the account's numbers
            stores = runtime.stores_of_number(part.business_account_id, part.display_phone_number)
            header = {"business_account_id": part.business_account_id}
        elif part.business_account_id is not None:  # about the account itself (its templates): each of its stores keeps it
            stores = runtime.stores_of_account(part.business_account_id)
            header = {"business_account_id": part.business_account_id}
        else:
            store = runtime.stores_by_phone_id.get(part.phone_number_id or "")
            stores = (store,) if store is not None else ()
            header = {"phone_number_id": part.phone_number_id or ""}
        if not stores:
            # Not a number (or an account) this deployment serves: acknowledged so Meta stops
            # retrying, and logged so a missing mapping is visible.
            if part.ignored_reason:
                log.warning("whatsapp update has a malformed part naming no number we serve; dropped, the rest stored",
                            extra={"reason": part.ignored_reason})
            elif part.topic == "number_quality" and runtime.stores_of_account(part.business_account_id or ""):
                log.warning("whatsapp number quality update names a number no store has as whatsapp_display_phone_number",
                            extra={"display_phone_number": (part.display_phone_number or "")[:32]})
            elif part.business_account_id is not None:
                log.warning("whatsapp account update reaches no store: another business account than "
                            "whatsapp.business_account_id, or no store has a WhatsApp number",
                            extra={"business_account_id": part.business_account_id[:64], "topic": part.topic})
            else:
                log.warning("whatsapp update for an unconfigured phone number", extra={"phone_number_id": part.phone_number_id, "topic": part.topic})
            continue
        if part.ignored_reason:
            log.warning("whatsapp update has a malformed part; kept as ignored, the rest stored",
                        extra={"store": stores[0].key, "reason": part.ignored_reason})
            ignored: str | None = f"malformed: {part.ignored_reason}"
        else:
            ignored = f"field {part.topic[6:]} is not handled" if part.topic.startswith("field:") else None
        raw = part.raw()
        for store in stores:
            items.append(
                InboxItem(
                    store_id=runtime.store_ids[store.key],
                    source="whatsapp",
                    topic=part.topic[:80],
                    dedupe_key=part.dedupe_key,
                    raw_body=raw,
                    headers=header,
                    status="ignored" if ignored else "pending",
                    last_error=ignored,
                )
            )
    if not items:
        return Response(status_code=200)
    return await _store(runtime, items, "whatsapp")
