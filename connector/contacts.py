"""Phones to E.164 and the small pure rules about contacts."""

from __future__ import annotations

import functools
import re
from datetime import datetime, timedelta

import phonenumbers

from connector.events import Phone

SERVICE_WINDOW = timedelta(hours=24)
_DIGITS = re.compile(r"\d")


def normalize_phone(raw: str | None, default_country: str | None) -> Phone | None:
    """Parse a free-text phone with the address country as the default region.

    Returns ``None`` when there is no phone at all; a ``Phone`` with ``e164=None`` when
    there is text that is not a valid number (kept so support staff can see it, never
    messaged). WhatsApp ``wa_id`` values (digits, no ``+``) parse as international.
    """
    if raw is None:
        return None
    text = str(raw).strip()
    if not text or not _DIGITS.search(text):
        return Phone(raw=text) if text else None
    return _parse(text, (default_country or "").upper() or None)


@functools.lru_cache(maxsize=16_384)
def _parse(text: str, region: str | None) -> Phone:
    """Cached: one customer's phone comes back in every order update, fulfilment and WhatsApp
    status, and phonenumbers takes ~50-100 us per parse (``Phone`` is immutable)."""
    candidates = [text]
    if not text.startswith("+") and text.isdigit() and len(text) > 10:
        candidates.append("+" + text)  # a wa_id or an international number written without '+'
    for candidate in candidates:
        try:
            parsed = phonenumbers.parse(candidate, region)
        except phonenumbers.NumberParseException:
            continue
        if phonenumbers.is_valid_number(parsed):
            return Phone(raw=text, e164=phonenumbers.format_number(parsed, phonenumbers.PhoneNumberFormat.E164))
    return Phone(raw=text)


def wa_id_to_e164(wa_id: str | None) -> Phone | None:
    """A WhatsApp id is the international number without '+'."""
    if not wa_id:
        return None
    return normalize_phone("+" + wa_id.lstrip("+"), None)


def redact_phone(phone: str | None) -> str:
    """For logs: keep the country code and last two digits."""
    if not phone:
        return "-"
    digits = re.sub(r"\D", "", phone)
    if len(digits) <= 4:
        return "*" * len(digits)
    return f"+{digits[:2]}{'*' * (len(digits) - 4)}{digits[-2:]}"


def in_service_window(last_inbound_at: datetime | None, now: datetime) -> bool:
    """Free-form and interactive messages are allowed only within 24 h of the customer's last message."""
    return last_inbound_at is not None and now - last_inbound_at < SERVICE_WINDOW


def email_key(email: str | None) -> str | None:
    """An email as contacts are matched by it: trimmed, case-insensitive (None when empty)."""
    key = (email or "").strip().lower()
    return key or None
