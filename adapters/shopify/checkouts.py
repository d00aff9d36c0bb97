"""Page through Shopify's abandoned checkouts for the poll (Admin GraphQL ``abandonedCheckouts``).

Shopify sends no "abandoned" webhook, and ``checkouts/create|update`` deliveries get lost
like any other, so ``connector.checkout_poll`` reads the connection every
``worker.checkout_poll_minutes`` and stores each node in the inbox with topic
``sync/checkout``; ``graphql.normalize_checkout_node`` turns it into the same
``CheckoutUpdated`` a webhook produces.

How a polled checkout is matched to its webhook
-----------------------------------------------
The webhook normaliser keys a checkout by ``token`` and the checkout-recovery journey's run
subject is ``checkout:{token}`` (orders find it again by their ``checkout_token``). The
GraphQL ``AbandonedCheckout`` (API 2026-07) has no token field: only ``id``
(``gid://shopify/AbandonedCheckout/N``), ``name`` and ``abandonedCheckoutUrl``. What the
two share:

- The recovery URL comes in two shapes.
  * Classic: ``https://{shop}/{shop id}/checkouts/{token}/recover?key={secret}``. The path
    segment is the checkout ``token``: the 2026-07 ``checkouts/create`` sample (fixture
    ``checkouts_create.sample.json``: token ``123123123``, URL
    ``.../548380009/checkouts/123123123/recover?key=...``) and Shopify's REST
    abandoned-checkout sample (token ``2a1ace52255252df566af0faaedfbfa7``, URL
    ``.../checkouts/2a1ace52255252df566af0faaedfbfa7/recover``, copied in public client
    tests) agree.
  * Newer: ``https://{shop}/{shop id}/checkouts/ac/{cart token}/recover?key={secret}&locale=...``.
    The segment is NOT the checkout token: a real ``checkouts/create`` payload from a dev
    store (rudderlabs/rudder-transformer, Shopify source test fixtures, 2024-11) has
    ``token: 84ad78572dae52a8cbea7d55371afe89``,
    ``cart_token: Z2NwLXVzLWVhc3QxOjAxSkJaTUVRSjgzNUJUN1BTNjEzRFdRUFFQ`` and
    ``abandoned_checkout_url: .../59026964593/checkouts/ac/Z2NwLXVzLWVhc3QxOjAxSkJaTUVRSjgzNUJUN1BTNjEzRFdRUFFQ/recover?key=...&locale=en-US``;
    the GraphQL reference's own ``abandonedCheckouts`` example answers
    ``.../26371970/checkouts/ac/cart_token_k23sabns3/recover?key=secret_token_i23kd8f88&locale=en``.
    The real URLs we found in public code (stores from 2024 to 2026) all have this shape.
  The webhook's ``abandoned_checkout_url`` and the API's ``abandonedCheckoutUrl`` are both
  documented as the checkout's recovery URL and have the same shape, so they are taken to
  be the same link (path segment and ``key``), possibly on another host or with other
  parameters such as ``locale`` [VERIFY on one checkout seen both ways].
- ``id``: Shopify's convention is that a gid's number is the REST id; the webhook body is
  the REST checkout, and its ``name`` is ``#`` + its ``id`` (REST sample: id 450789469, name
  ``#450789469``; the real payload above: id 35550298931313, name ``#35550298931313``), and
  ``AbandonedCheckout.name`` is documented as the "unique merchant-facing identifier for the
  checkout". Third-party code uses the gid number as the REST checkout id. So the gid number
  is very probably the webhook's ``id`` [VERIFY: the connection offers a CHECKOUT_ID sort
  key beside ID, which hints that the two could differ]. But the webhook's ``id`` is not stored
  anywhere we can look it up (the checkouts table keeps the token and the recovery URL; the
  public sample has no ``id`` at all), and orders point at checkouts by token.

So the key is chosen in this order (``connector/checkout_poll.py`` decides; this pager
supplies the facts):

1. a checkout we already store whose recovery URL names the same checkout (same shape,
   same path segment, same ``key``; host and other parameters ignored) -> its token. This
   covers every checkout whose webhook did arrive, in either URL shape;
2. the token in a classic recovery URL -> the token the webhook would carry;
3. otherwise (a newer-shape URL and no webhook seen) ``id:{N}`` with N the gid's number.
   A webhook for it that arrives later would still start a second run under its token, so
   the poll holds such checkouts back for a grace period first.

The cart token is not used as a key: a cart can outlive several checkouts.

Pages come in id order (the connection has no UPDATED_AT sort key) filtered by
``updated_at:>='…'``; the page size follows the query cost ceiling
(``graphql.checkout_page_size_for``), the rate budget is awaited before each page, and a
repeated page cursor stops the run. Line items beyond ``graphql.CHECKOUT_LINES`` are not
fetched (the reminder names the first product only).
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from datetime import datetime
from typing import Any

from adapters.shopify import graphql as gql
from adapters.shopify.sync import connection_pages, since_filter, timestamp
from adapters.shopify.normalize import SYNC_CHECKOUT_TOPIC
from connector.checkout_poll import Budget, PolledCheckout, Retrying


def link_identity(url: str | None) -> str | None:
    link = gql.recovery_link(url)
    return link.identity if link is not None else None


class ShopifyCheckoutPager:
    source = "shopify"

    def __init__(self, client: Any, store_key: str):
        self.client = client
        self.store_key = store_key

    async def pages(self, window_start: datetime, page_size: int, retrying: Retrying, budget: Budget) -> AsyncIterator[list[PolledCheckout]]:
        first = gql.checkout_page_size_for(page_size)
        variables = {"first": first, "q": since_filter(window_start), "lines": gql.CHECKOUT_LINES}
        async for nodes in connection_pages(self.client, self.store_key, gql.ABANDONED_CHECKOUTS_QUERY, "abandonedCheckouts",
                                            variables, gql.checkout_query_cost(first), retrying, budget):
            yield [self.checkout(node) for node in nodes]

    @staticmethod
    def checkout(node: dict[str, Any]) -> PolledCheckout:
        try:
            cid: str | None = gql.checkout_id_of(node)
        except Exception:
            cid = None
        url = node.get("abandonedCheckoutUrl")
        link = gql.recovery_link(url)
        return PolledCheckout(
            external_id=cid,
            updated_at=timestamp(node.get("updatedAt")),
            created_at=timestamp(node.get("createdAt")),
            completed=bool(node.get("completedAt")),
            link_token=link.ref if link is not None and link.form == "token" else None,
            link_identity=link.identity if link is not None else None,
            link_needle=f"/{link.ref}/" if link is not None else None,
            fallback_token=gql.fallback_token(cid) if cid else None,
            body=node,
        )

    @staticmethod
    def link_identity(url: str | None) -> str | None:
        return link_identity(url)

    @staticmethod
    def inbox_entry(checkout: PolledCheckout, token: str, via: str) -> tuple[str, str, bytes]:
        body = dict(checkout.body)
        body[gql.MARKER] = {"token": token, "via": via}
        updated_raw = checkout.body.get("updatedAt") if isinstance(checkout.body.get("updatedAt"), str) else None
        key = f"shopify:sync-checkout:{checkout.external_id or 'unknown'}:{updated_raw}"
        return SYNC_CHECKOUT_TOPIC, key, json.dumps(body, separators=(",", ":")).encode()


__all__ = ["SYNC_CHECKOUT_TOPIC", "ShopifyCheckoutPager", "link_identity"]
