"""When a journey may chase an order's payment: not before the order's payment terms make it due.

An order on terms (a B2B or draft order on Net 30) is pending from the moment it is placed; a
pay-link reminder an hour later asks for money nobody owes yet. Pure: the journeys call it in
``decide``.
"""

from __future__ import annotations

from datetime import datetime

from connector import events as ev

DUE_AT_ONCE = "receipt"  # terms "due on receipt": owed as any order is


def chase_from(order: ev.Order, earliest: datetime) -> datetime | None:
    """When a reminder about ``order``'s payment may go: ``earliest`` (the journey's own wait), or the
    due date if later; None while the terms defer the payment with no date yet (due on fulfilment):
    an update that dates it starts the chase then."""
    if order.payment_due_at is not None:
        return max(earliest, order.payment_due_at)
    if order.payment_terms is None or order.payment_terms == DUE_AT_ONCE:
        return earliest
    return None


__all__ = ["chase_from"]
