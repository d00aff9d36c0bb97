"""An order's payment terms (Shopify ``payment_terms`` in order webhooks) -> when its payment is due.

B2B and draft orders can be placed on terms: ``{"payment_terms_type": "net", "due_in_days": 30,
"payment_schedules": [{"issued_at": …, "due_at": …, "completed_at": null}]}`` (also "fixed": a
date; "fulfillment": due once fulfilled, no date before; "receipt": due at once). Such an order
is ``pending`` from the start without anyone being late, so the core needs the due date to
leave it alone until then. The earliest unpaid schedule's ``due_at`` is the date; a net schedule
without one is due ``due_in_days`` after it was issued (or the order placed).
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from adapters._parse import get_datetime, get_int, get_obj, get_objects, get_str

FIELD = "payment_terms"


def payment_due(o: dict[str, Any], placed_at: datetime) -> tuple[str | None, datetime | None]:
    """``(terms type, due at)`` of a REST-shaped order; ``(None, None)`` without terms."""
    terms = get_obj(o, FIELD)
    if not terms:
        return None, None
    kind = (get_str(terms, "payment_terms_type", FIELD) or "unknown").strip().lower()
    unpaid = [(where, s) for where, s in get_objects(terms, "payment_schedules", FIELD) if get_datetime(s, "completed_at", where) is None]
    dates = [d for where, s in unpaid if (d := get_datetime(s, "due_at", where)) is not None]
    if dates:
        return kind, min(dates)
    days = get_int(terms, "due_in_days", FIELD)
    if kind == "net" and days is not None:
        issued = [d for where, s in unpaid if (d := get_datetime(s, "issued_at", where)) is not None]
        return kind, min(issued, default=placed_at) + timedelta(days=days)
    return kind, None


__all__ = ["payment_due"]
