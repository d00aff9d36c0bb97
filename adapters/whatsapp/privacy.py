"""What a stored WhatsApp item says about whom, for a privacy request (``connector/compliance.py``).

The webhook adapter stores one inbox item per message, status or preference change, each with the
batch's ``contacts`` list (Meta lists every contact of a batch in each of its changes). Which keys
name the parties is WhatsApp's shape, so it is read here; the core decides what is hers.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Collection
from typing import Any

PARTIES = ("from", "recipient_id", "wa_id")  # whom an item is from or to


def contacts_of(body: Any, wa_ids: Collection[str]) -> Any:
    """The item with only these WhatsApp ids' entries in its contacts list (her export shows no one else)."""
    if isinstance(body, dict) and isinstance(body.get("contacts"), list):
        return {**body, "contacts": [c for c in body["contacts"] if isinstance(c, dict) and str(c.get("wa_id")) in wa_ids]}
    return body


def without(body: dict[str, Any], names_her: Callable[[str], bool], is_her: Callable[[str], bool]) -> dict[str, Any] | None:
    """The item without her entry in its contacts list (``names_her``: an entry's JSON text), or None when
    the item itself is hers: from her number, a status of a message to her, her preference (``is_her``:
    a party's id), or an item naming no party."""
    if isinstance(body.get("contacts"), list):
        body = {**body, "contacts": [c for c in body["contacts"] if not names_her(json.dumps(c))]}
    parties = [str(part[k]) for key, part in body.items() if key != "metadata" and isinstance(part, dict)
               for k in PARTIES if isinstance(part.get(k), (str, int)) and not isinstance(part.get(k), bool)]
    if not parties or any(is_her(p) for p in parties):
        return None
    return body
