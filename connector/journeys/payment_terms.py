"""When a journey may chase an order's payment: not before the order's payment terms make it due.

An order on terms (a B2B or draft order on Net 30) is pending from the moment it is placed; a
pay-link reminder an hour later asks for money nobody owes yet. Pure: the journeys call it in
``decide``.

Where the terms come from: Shopify's order webhooks carry them (``payment_terms``); the 15-minute
reconcile reads orders through Admin GraphQL, which does not (that needs the read_payment_terms
scope, which existing installs lack), so its events have none. The order row keeps the terms the
last event that carried them gave (``state.apply_order``), and the journeys read them from there
(``OrderFacts``) when the event has none: ``terms_of``. A reconcile read of an order on "due on
fulfilment" terms therefore starts no reminder.

Not covered: an order on terms first seen by the reconcile alone (its webhooks lost) has no terms
on record anywhere, and is chased like an order without terms (after the journey's usual wait)
until a webhook that carries the terms arrives; by then the reminder may have gone.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

DUE_AT_ONCE = "receipt"  # terms "due on receipt": owed as any order is


def terms_of(order: Any, stored: Any) -> tuple[str | None, datetime | None]:
    """``(terms type, due at)`` to decide by: the event's ``order`` when it carries terms, else the
    stored order's (``OrderFacts``, None when not stored), which keep what an earlier event said."""
    for source in (order, stored):
        if source is not None and (source.payment_terms is not None or source.payment_due_at is not None):
            return source.payment_terms, source.payment_due_at
    return None, None


def chase_from(terms: str | None, due_at: datetime | None, earliest: datetime) -> datetime | None:
    """When a reminder about an order's payment may go, given its terms (``terms_of``): ``earliest``
    (the journey's own wait), or the due date if later; None while the terms defer the payment with
    no date yet (due on fulfilment): an update that dates it starts the chase then."""
    if due_at is not None:
        return max(earliest, due_at)
    if terms is None or terms == DUE_AT_ONCE:
        return earliest
    return None


__all__ = ["chase_from", "terms_of"]
