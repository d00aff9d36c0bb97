"""Money figures per currency: amounts in different currencies are never added together.

A WooCommerce store with a multi-currency plugin takes each order in the customer's currency
(the order's ``currency``); a Shopify store's orders carry the shop's money, but a shop can
change its currency. There are no exchange rates here, so a money figure is a mapping
``{currency: amount}`` (ISO 4217 code to a decimal string), never one number: 1,000 INR and
20 USD stay "INR 1,000.00 + USD 20.00", not 1,020.

Order: the store's own currency (``stores.currency``) first, listed even when it earned
nothing; then the currency most amounts were in, then by code.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from decimal import Decimal, InvalidOperation
from typing import Any

UNKNOWN = "unknown"  # an amount kept without its currency, in a store whose currency is not configured


def by_currency(amounts: Iterable[tuple[str | None, Any]], main: str | None = None) -> dict[str, str]:
    """Sum ``(currency, amount)`` pairs per currency; an amount with no currency is the store's (``main``)."""
    totals: dict[str, Decimal] = {}
    counts: Counter[str] = Counter()
    for currency, amount in amounts:
        if amount in (None, ""):
            continue
        code = (currency or "").strip().upper() or main or UNKNOWN
        totals[code] = totals.get(code, Decimal("0")) + Decimal(str(amount))
        counts[code] += 1
    if main and main not in totals:
        totals[main] = Decimal("0")
    order = sorted(totals, key=lambda code: (code != main, -counts[code], code))
    return {code: str(totals[code]) for code in order}


def is_money(value: Any, key: str = "") -> bool:
    """A money figure: a mapping of currency codes to decimal strings (empty: a ``*revenue`` key that earned nothing)."""
    if not isinstance(value, Mapping):
        return False
    return all(isinstance(v, str) for v in value.values()) and (bool(value) or key.endswith("revenue"))


def difference(now: Mapping[str, str], before: Mapping[str, str]) -> dict[str, str]:
    """This week's figure less last week's, per currency (a currency missing from a week is 0 in it)."""
    codes = [*now, *(c for c in before if c not in now)]
    return {c: str(Decimal(now.get(c, "0")) - Decimal(before.get(c, "0"))) for c in codes}


def _amount(value: str, sign: bool = False) -> str:
    try:
        return format(Decimal(value), "+," if sign else ",")
    except (InvalidOperation, ValueError):
        return value


def shown(figure: Mapping[str, str]) -> str:
    """``INR 1,000.00 + USD 20.00``; ``0`` when nothing was earned (and no store currency is set)."""
    return " + ".join(f"{code} {_amount(v)}" for code, v in figure.items()) or "0"


def shown_change(change: Mapping[str, str]) -> str:
    """``INR +550.51, USD -20.00``."""
    return ", ".join(f"{code} {_amount(v, sign=True)}" for code, v in change.items())
