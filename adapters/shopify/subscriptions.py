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


async def register_webhooks(client: Any, uri: str, topics: tuple[str, ...] = TOPICS) -> SubscriptionReport:
    """Create the missing subscriptions to ``uri``; a failure on one topic does not stop the others.

    A topic subscribed to a different address (an old public URL) is reported in ``elsewhere``
    and our subscription is still created; the old one is not deleted (it may be another
    deployment's). Product topics ask for the ``storeloop`` metafield namespace; one of ours
    made without it (an earlier version) gets it added (``updated``) with
    ``webhookSubscriptionUpdate``. A listing that does not say which namespaces a
    subscription has leaves it alone.
    """
    report = SubscriptionReport(uri=uri)
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
        report.failed.append((topic, str(exc)))
        return
    failure = _failure(data, field_name)
    if failure:
        report.failed.append((topic, failure))
    else:
        done.append(topic)


def _failure(data: Any, field_name: str) -> str | None:
    """Why a subscription mutation did nothing (its userErrors, or no subscription in the answer); None when it worked."""
    payload = data.get(field_name) if isinstance(data, dict) else None
    errors = payload.get("userErrors") if isinstance(payload, dict) else None
    if errors:
        return "; ".join(str(e.get("message", ""))[:120] for e in errors if isinstance(e, dict)) or "user error"
    if not isinstance(payload, dict) or not isinstance(payload.get("webhookSubscription"), dict):
        return "no subscription in the answer"
    return None


__all__ = ["COMPLIANCE_NOTE", "METAFIELD_NAMESPACE", "NAMESPACES", "SubscriptionReport", "TOPICS", "list_subscriptions", "register_webhooks"]
