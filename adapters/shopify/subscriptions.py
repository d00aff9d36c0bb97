"""Register the webhook subscriptions the connector needs through Admin GraphQL, idempotently.

First ``webhookSubscriptions`` is read (all pages), then ``webhookSubscriptionCreate`` runs
only for the topics that have no subscription to our address yet, so running install
again creates nothing. API 2026-07 shapes: ``WebhookSubscriptionInput.uri`` (``callbackUrl``
is deprecated since the "webhookSubscriptionCreate and webhookSubscriptionUpdate support all
URI types" change, shopify.dev changelog), ``WebhookSubscription { id topic uri }``.

The mandatory compliance topics (``customers/data_request``, ``customers/redact``,
``shop/redact``) cannot be subscribed through the API: they are configured in the app's
TOML (``[webhooks] compliance_topics``) or the Partner/Dev Dashboard (platform-facts.md A2).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from adapters.shopify.webhooks import COMPLIANCE_TOPICS
from adapters.shopify.webhooks import TOPICS as ACCEPTED_TOPICS
from connector.errors import SendError



def topic_enum(topic: str) -> str:
    """``orders/create`` -> ``ORDERS_CREATE``, ``customers_whats_app_marketing_consent/update`` ->
    ``CUSTOMERS_WHATS_APP_MARKETING_CONSENT_UPDATE`` (WebhookSubscriptionTopic values)."""
    return topic.upper().replace("/", "_")


# Every topic the webhook endpoint accepts (adapters/shopify/webhooks.py), so the two never drift
# apart, except the compliance ones. With API 2026-07 that includes ORDERS_*, CHECKOUTS_*,
# FULFILLMENTS_*, CUSTOMERS_UPDATE, CUSTOMERS_MARKETING_CONSENT_UPDATE,
# CUSTOMERS_WHATS_APP_MARKETING_CONSENT_UPDATE (2026-07 and later, platform-facts.md A5) and APP_UNINSTALLED.
TOPICS = tuple(topic_enum(t) for t in sorted(ACCEPTED_TOPICS - COMPLIANCE_TOPICS))
COMPLIANCE_NOTE = (
    "compliance topics (customers/data_request, customers/redact, shop/redact) cannot be subscribed "
    "through the API: declare them in the app's shopify.app.toml ([webhooks] compliance_topics) or the "
    "Partner/Dev Dashboard, with the URI {public_url}/webhooks/shopify"
)

# Product deliveries carry our ``storeloop.replenish`` metafield (a replenishment cycle such as
# "30d", read by adapters/shopify/normalize.py) only when the subscription asks for the
# namespace: ``WebhookSubscriptionInput.metafieldNamespaces`` (Admin GraphQL 2024-10 .. 2027-01,
# "The list of namespaces for any metafields that should be included in the webhook subscription";
# ``WebhookSubscription.metafieldNamespaces`` reads it back).
# What a token needs to subscribe to each topic we use, and what stops working without it.
# Shopify's WebhookSubscriptionTopic reference: "Requires at least one of the following scopes"
# (FULFILLMENTS_CREATE / FULFILLMENTS_UPDATE: read_fulfillments, read_marketplace_orders;
# ORDERS_*: read_orders, read_marketplace_orders[, read_buyer_membership_orders]), or "Requires
# the `read_orders` scope" (CHECKOUTS_*), `read_customers` (CUSTOMERS_*), `read_products`
# (PRODUCTS_*); APP_UNINSTALLED needs none. The WhatsApp consent topic (API 2026-07) is assumed
# to need read_customers like the SMS one [VERIFY in the 2026-07 topic table]. A write scope
# grants its read scope too (shopify.dev "Shopify API access scopes").
_ORDERS = ("read_orders", "read_marketplace_orders")
_ORDERS_WIDE = (*_ORDERS, "read_buyer_membership_orders")
TOPIC_SCOPES: dict[str, tuple[tuple[str, ...], str]] = {
    "ORDERS_CREATE": (_ORDERS, "every order journey"),
    "ORDERS_UPDATED": (_ORDERS_WIDE, "every order journey"),
    "ORDERS_PAID": (_ORDERS, "payment recovery and order confirmation"),
    "ORDERS_CANCELLED": (_ORDERS_WIDE, "ending journeys of cancelled orders"),
    "ORDERS_FULFILLED": (_ORDERS, "COD confirmation (shipped orders)"),
    "ORDERS_PARTIALLY_FULFILLED": (_ORDERS, "COD confirmation (shipped orders)"),
    "FULFILLMENTS_CREATE": (("read_fulfillments", "read_marketplace_orders"), "delivery updates"),
    "FULFILLMENTS_UPDATE": (("read_fulfillments", "read_marketplace_orders"), "delivery updates"),
    "CHECKOUTS_CREATE": (("read_orders",), "checkout recovery"),
    "CHECKOUTS_UPDATE": (("read_orders",), "checkout recovery"),
    "CHECKOUTS_DELETE": (("read_orders",), "checkout recovery"),
    "CUSTOMERS_UPDATE": (("read_customers",), "customer details and consent"),
    "CUSTOMERS_MARKETING_CONSENT_UPDATE": (("read_customers",), "marketing consent"),
    "CUSTOMERS_WHATS_APP_MARKETING_CONSENT_UPDATE": (("read_customers",), "WhatsApp marketing consent"),
    "PRODUCTS_CREATE": (("read_products",), "reorder cycles"),
    "PRODUCTS_UPDATE": (("read_products",), "reorder cycles"),
    "PRODUCTS_DELETE": (("read_products",), "no reorder reminder for a deleted product"),
    "APP_UNINSTALLED": ((), "pausing a store that removed the app"),
}


def granted(scopes: Iterable[str]) -> frozenset[str]:
    """The scopes as Shopify reads them: each ``write_x`` also grants ``read_x``."""
    out = {s.strip().lower() for s in scopes if s.strip()}
    return frozenset(out | {"read_" + s.removeprefix("write_") for s in out if s.startswith("write_")})


def missing_scopes(topic: str, scopes: Iterable[str]) -> tuple[str, ...]:
    """The scopes one of which ``topic`` needs when ``scopes`` hold none of them; () when covered
    (or when the topic is not in the table: Shopify is then the judge)."""
    needs = TOPIC_SCOPES.get(topic, ((), ""))[0]
    return () if not needs or granted(scopes) & set(needs) else needs


def scope_hint(topic: str, needs: tuple[str, ...]) -> str:
    """What a store owner reads beside a topic its configured scopes do not cover."""
    either = needs[0] + (f" (or {', '.join(needs[1:])})" if needs[1:] else "")
    use = TOPIC_SCOPES.get(topic, ((), ""))[1]
    return (f"needs scope {either}, which this store's `scopes` lack" + (f" ({use} will not work)" if use else "")
            + f": add {needs[0]} to `scopes` (and to the app's access scopes), then install again")


METAFIELD_NAMESPACE = "storeloop"
NAMESPACES: dict[str, tuple[str, ...]] = {"PRODUCTS_CREATE": (METAFIELD_NAMESPACE,), "PRODUCTS_UPDATE": (METAFIELD_NAMESPACE,)}

LIST_SUBSCRIPTIONS = """
query StoreloopWebhookSubscriptions($first: Int!, $after: String) {
  webhookSubscriptions(first: $first, after: $after) {
    nodes { id topic uri metafieldNamespaces }
    pageInfo { hasNextPage endCursor }
  }
}
"""

CREATE_SUBSCRIPTION = """
mutation StoreloopWebhookSubscriptionCreate($topic: WebhookSubscriptionTopic!, $webhookSubscription: WebhookSubscriptionInput!) {
  webhookSubscriptionCreate(topic: $topic, webhookSubscription: $webhookSubscription) {
    webhookSubscription { id topic uri metafieldNamespaces }
    userErrors { field message }
  }
}
"""

UPDATE_SUBSCRIPTION = """
mutation StoreloopWebhookSubscriptionUpdate($id: ID!, $webhookSubscription: WebhookSubscriptionInput!) {
  webhookSubscriptionUpdate(id: $id, webhookSubscription: $webhookSubscription) {
    webhookSubscription { id topic uri metafieldNamespaces }
    userErrors { field message }
  }
}
"""

MAX_PAGES = 20


@dataclass
class SubscriptionReport:
    uri: str
    created: list[str] = field(default_factory=list)
    present: list[str] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)
    updated: list[str] = field(default_factory=list)  # present (listed there too) without the metafield namespaces it needs: added
    elsewhere: list[tuple[str, str]] = field(default_factory=list)  # (topic, other uri): left alone
    scope_gaps: dict[str, tuple[str, ...]] = field(default_factory=dict)  # topic -> scopes (one of) the configured ones lack

    @property
    def ok(self) -> bool:
        return not self.failed


def _same_uri(a: str, b: str) -> bool:
    return a.rstrip("/") == b.rstrip("/")


async def list_subscriptions(client: Any) -> list[dict[str, Any]]:
    """Every shop-scoped subscription of this app: ``[{"id", "topic", "uri", "namespaces"}]``
    (``namespaces`` None when the answer did not say)."""
    out: list[dict[str, Any]] = []
    after = None
    for _ in range(MAX_PAGES):
        data = await client.graphql(LIST_SUBSCRIPTIONS, {"first": 100, "after": after})
        conn = data.get("webhookSubscriptions") if isinstance(data, dict) else None
        if not isinstance(conn, dict):
            break
        for node in conn.get("nodes") or []:
            if isinstance(node, dict) and isinstance(node.get("topic"), str):
                names = node.get("metafieldNamespaces")
                out.append({"id": str(node.get("id") or ""), "topic": node["topic"], "uri": str(node.get("uri") or ""),
                            "namespaces": [str(n) for n in names] if isinstance(names, list) else None})
        page = conn.get("pageInfo") or {}
        if not page.get("hasNextPage") or not page.get("endCursor"):
            break
        after = page["endCursor"]
    return out


async def register_webhooks(client: Any, uri: str, topics: tuple[str, ...] = TOPICS,
                            scopes: Iterable[str] | None = None) -> SubscriptionReport:
    """Create the missing subscriptions to ``uri``; a failure on one topic does not stop the others.

    A topic subscribed to a different address (an old public URL) is reported in ``elsewhere``
    and our subscription is still created; the old one is not deleted (it may be another
    deployment's). Product topics ask for the ``storeloop`` metafield namespace; one of ours
    made without it (an earlier version) gets it added (``updated``) with
    ``webhookSubscriptionUpdate``. A listing that does not say which namespaces a
    subscription has leaves it alone.

    ``scopes`` (the store's configured ones): a topic they do not cover (``TOPIC_SCOPES``) is in
    ``scope_gaps`` and, if Shopify refuses it, its failure says which scope to add. It is still
    tried: a client-credentials token has the scopes of the app's version, not of this list.
    """
    report = SubscriptionReport(uri=uri)
    if scopes is not None:
        have = granted(scopes)
        report.scope_gaps = {t: needs for t in topics if (needs := missing_scopes(t, have))}
    existing = await list_subscriptions(client)
    for topic in topics:
        wanted = NAMESPACES.get(topic, ())
        mine = [s for s in existing if s["topic"] == topic and _same_uri(s["uri"], uri)]
        if mine:
            have = mine[0]["namespaces"]
            report.present.append(topic)
            if wanted and have is not None and not set(wanted) <= set(have):
                # subscribed before it asked for the namespace: product deliveries come without our metafield
                await _update(client, report, topic, mine[0]["id"], sorted({*have, *wanted}))
            continue
        report.elsewhere.extend((topic, s["uri"]) for s in existing if s["topic"] == topic)
        subscription: dict[str, Any] = {"uri": uri, "format": "JSON"}
        if wanted:
            subscription["metafieldNamespaces"] = list(wanted)
        await _mutate(client, report, topic, "webhookSubscriptionCreate", CREATE_SUBSCRIPTION,
                      {"topic": topic, "webhookSubscription": subscription}, done=report.created)
    return report


async def _update(client: Any, report: SubscriptionReport, topic: str, sub_id: str, namespaces: list[str]) -> None:
    await _mutate(client, report, topic, "webhookSubscriptionUpdate", UPDATE_SUBSCRIPTION,
                  {"id": sub_id, "webhookSubscription": {"metafieldNamespaces": namespaces}}, done=report.updated)


async def _mutate(client: Any, report: SubscriptionReport, topic: str, field_name: str, mutation: str, variables: dict[str, Any],
                  *, done: list[str]) -> None:
    """Run one subscription mutation for ``topic``: it goes to ``done`` when it worked, to ``report.failed``
    with the reason when the call failed or the answer says it did nothing."""
    try:
        data = await client.graphql(mutation, variables)
    except SendError as exc:
        _failed(report, topic, str(exc))
        return
    failure = _failure(data, field_name)
    if failure:
        _failed(report, topic, failure)
    else:
        done.append(topic)


def _failed(report: SubscriptionReport, topic: str, why: str) -> None:
    """A refused topic; when the configured scopes lack what it needs, that comes first (Shopify's own
    answer for a missing scope is a bare "Invalid topic" or "Access denied")."""
    needs = report.scope_gaps.get(topic)
    report.failed.append((topic, f"{scope_hint(topic, needs)}; Shopify said: {why}" if needs else why))


def _failure(data: Any, field_name: str) -> str | None:
    """Why a subscription mutation did nothing (its userErrors, or no subscription in the answer); None when it worked."""
    payload = data.get(field_name) if isinstance(data, dict) else None
    errors = payload.get("userErrors") if isinstance(payload, dict) else None
    if errors:
        return "; ".join(str(e.get("message", ""))[:120] for e in errors if isinstance(e, dict)) or "user error"
    if not isinstance(payload, dict) or not isinstance(payload.get("webhookSubscription"), dict):
        return "no subscription in the answer"
    return None


__all__ = ["COMPLIANCE_NOTE", "METAFIELD_NAMESPACE", "NAMESPACES", "SubscriptionReport", "TOPICS", "TOPIC_SCOPES", "granted",
           "list_subscriptions", "missing_scopes", "register_webhooks", "scope_hint"]
