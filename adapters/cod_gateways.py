"""Which payment gateway names mean cash on delivery (platform-facts.md A4).

Merchants name Shopify's manual payment methods themselves ("Cash on Delivery (COD)",
"COD - Cash on Delivery", "Cash on Delivery - Pay at door", "Pay on Delivery"), and COD apps
use their own ("cash_on_delivery"), so a fixed list of names misses COD orders, and a missed
COD customer is thanked for a payment they have not made and chased for it. A name is COD
when it is one of the store's configured names (``cod_gateways``: exact, case-insensitive)
or when its words say so: the word "COD" (also "C.O.D."), or cash / pay / payment / collect
on delivery. Words, not letters: "Barcode Pay" and "Codapay" are not COD.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

_WORD = re.compile(r"[a-z0-9]+")
# word sequences that mean "paid in cash when the parcel arrives"; each also matches written as one
# word ("CashOnDelivery")
COD_PHRASES: tuple[tuple[str, ...], ...] = (
    ("cod",),
    ("cash", "on", "delivery"),
    ("pay", "on", "delivery"),
    ("payment", "on", "delivery"),
    ("collect", "on", "delivery"),
)


def words(name: str) -> tuple[str, ...]:
    """Lower-case words of a gateway name, punctuation and ``_`` as spaces; a run of single
    letters is one word ("C.O.D." -> "cod")."""
    out: list[str] = []
    letters = ""
    for token in _WORD.findall(name.lower().replace("_", " ")):
        if len(token) == 1 and token.isalpha():
            letters += token
            continue
        if letters:
            out.append(letters)
            letters = ""
        out.append(token)
    if letters:
        out.append(letters)
    return tuple(out)


def says_cod(name: str) -> bool:
    """Whether the gateway name's own words say cash on delivery."""
    found = words(name)
    for phrase in COD_PHRASES:
        n = len(phrase)
        if "".join(phrase) in found or any(found[i:i + n] == phrase for i in range(len(found) - n + 1)):
            return True
    return False


def is_cod(gateway_names: Iterable[str], configured: Iterable[str]) -> bool:
    """COD if any of the order's gateways is a configured name or says so in its words."""
    names = {n.strip().lower() for n in configured}
    return any(g.strip().lower() in names or says_cod(g) for g in gateway_names)


__all__ = ["COD_PHRASES", "is_cod", "says_cod", "words"]
