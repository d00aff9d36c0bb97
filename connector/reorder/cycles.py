"""Replenishment cycles: how long one unit of a product lasts a customer.

Pure functions, no I/O. Precedence, as a merchant would expect: a cycle written in the
TOML config wins, then a product tag (``replenish:30d``), then what history shows: the
customer's own cadence once they have bought the product at least twice, else the median
over every repeat buyer once there are ``min_repeat_buyers`` of them.

Cycles are per unit: an interval between two purchases is divided by the quantity of the
earlier one (two 30-day packs bought, 60 days until the next order = 30 days per unit),
and a window scales back by the quantity bought. Orders less than a day apart are one purchase
split in two (a second pack ordered an hour later): their quantities add up.
"""

from __future__ import annotations

import re
import statistics
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol, TypeVar

_CYCLE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(d|day|days|w|wk|week|weeks|m|mo|month|months)?\s*$", re.IGNORECASE)
_UNIT_DAYS = {"d": 1, "day": 1, "days": 1, "w": 7, "wk": 7, "week": 7, "weeks": 7, "m": 30, "mo": 30, "month": 30, "months": 30}
TAG_PREFIX = "replenish:"


def parse_cycle(text: str) -> float:
    """'30d', '4w', '2m' (30 days), '45' (days) -> days. Raises ValueError with the reason."""
    match = _CYCLE.match(str(text))
    if not match:
        raise ValueError(f"{text!r} is not a cycle (use e.g. '30d', '4w' or '2m')")
    days = float(match.group(1)) * _UNIT_DAYS[(match.group(2) or "d").lower()]
    if days <= 0:
        raise ValueError(f"{text!r}: a cycle must be longer than 0 days")
    return days


def cycle_from_tags(tags: Iterable[str]) -> float | None:
    """The first well-formed ``replenish:<cycle>`` tag (case-insensitive); malformed ones are ignored."""
    for tag in tags:
        tag = tag.strip()
        if tag.lower().startswith(TAG_PREFIX):
            try:
                return parse_cycle(tag[len(TAG_PREFIX):])
            except ValueError:
                continue
    return None


def product_key(product_id: str | None, sku: str | None, title: str | None) -> str:
    """What cycles are learned and windows kept per: the product (variants pooled)."""
    if product_id:
        return f"p:{product_id}"
    if sku:
        return f"s:{sku}"
    return f"t:{(title or '').strip().lower()[:130]}"


@dataclass(frozen=True, slots=True)
class Purchase:
    placed_at: datetime
    quantity: int


class _Bought(Protocol):
    """Anything with a purchase time and a quantity: a ``Purchase``, or a history line of the scan."""

    @property
    def placed_at(self) -> datetime: ...

    @property
    def quantity(self) -> int: ...


_B = TypeVar("_B", bound=_Bought)


def intervals_in_order(purchases: Sequence[_Bought]) -> list[float]:
    """Days per unit between consecutive purchases already in time order, same-day repeats skipped.

    The one interval rule: the windows' full scan, the incremental tick and ``learn_cycles``
    all learn through it (each product of each customer, once per scan).
    """
    out: list[float] = []
    held = 0  # units of the purchases less than a day before ``before``: one purchase split in two orders
    for before, after in zip(purchases, purchases[1:]):
        days = (after.placed_at - before.placed_at).total_seconds() / 86400
        if days >= 1:  # two orders on one day are a correction or a split, not a cycle: their packs last together
            out.append(days / max(1, before.quantity + held))
            held = 0
        else:
            held += before.quantity
    return out


def one_purchase(purchases: Sequence[_B]) -> Sequence[_B]:
    """The latest purchase (of purchases in time order) with the orders placed less than a day apart before it
    (a second pack ordered an hour later), as ``intervals_in_order`` counts them: one purchase split in orders."""
    start = len(purchases) - 1
    while start > 0 and (purchases[start].placed_at - purchases[start - 1].placed_at).total_seconds() / 86400 < 1:
        start -= 1
    return purchases[start:]


def units_in_hand(purchases: Sequence[_Bought]) -> int:
    """What the latest purchase (of purchases in time order) left her with: the units of ``one_purchase``:
    her supply lasts for all of them."""
    return sum(p.quantity for p in one_purchase(purchases))


def unit_intervals(purchases: list[Purchase]) -> list[float]:
    """Days per unit between consecutive purchases (sorted by time here), same-day repeats skipped."""
    return intervals_in_order(sorted(purchases, key=lambda p: p.placed_at))


def cadence(intervals: list[float]) -> float | None:
    """A customer's own cycle from their intervals: the median, once there is one."""
    return statistics.median(intervals) if intervals else None


def customer_cadence(purchases: list[Purchase]) -> float | None:
    """A customer's own cycle once they have bought the product at least twice."""
    return cadence(unit_intervals(purchases))


def learned_cycle(per_buyer_intervals: Iterable[list[float]], min_repeat_buyers: int) -> tuple[float, int] | None:
    """Median over every repeat buyer's intervals, once enough buyers came back; (days, buyers)."""
    buyers = [i for i in per_buyer_intervals if i]
    if len(buyers) < max(1, min_repeat_buyers):
        return None
    return statistics.median(x for intervals in buyers for x in intervals), len(buyers)


def learn_all(per_product: Mapping[str, list[list[float]]], min_repeat_buyers: int) -> dict[str, tuple[float, int]]:
    """``learned_cycle`` for every product: {key: (days, buyers)} for those with enough repeat buyers."""
    out: dict[str, tuple[float, int]] = {}
    for key, buyers in per_product.items():
        found = learned_cycle(buyers, min_repeat_buyers)
        if found is not None:
            out[key] = found
    return out


@dataclass(frozen=True, slots=True)
class CycleBook:
    """Everything that can name a cycle, looked up in precedence order."""

    config: Mapping[str, float]  # by variant id, SKU or product id
    tags: Mapping[str, float]  # by product key
    learned: Mapping[str, float]  # by product key
    min_days: float = 1.0
    max_days: float = 730.0
    unavailable: frozenset[str] = frozenset()  # product keys the store no longer sells: no cycle, so no window


    def resolve(
        self, *, key: str, product_id: str | None, variant_id: str | None, sku: str | None, customer: float | None = None,
    ) -> tuple[float, str] | None:
        """(days per unit, source) or None when nothing knows this product yet, or it is no longer sold."""
        if key in self.unavailable:
            return None
        for ident in (variant_id, sku, product_id):
            if ident and ident in self.config:
                return self.config[ident], "config"
        if key in self.tags:
            return self.tags[key], "tag"
        if customer is not None:
            return min(max(customer, self.min_days), self.max_days), "customer"
        if key in self.learned:
            return min(max(self.learned[key], self.min_days), self.max_days), "learned"
        return None
