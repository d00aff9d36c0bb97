"""What an adapter's webhook layer hands the web layer: where a delivery goes and its dedupe key."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from datetime import datetime, timezone


@dataclass(frozen=True, slots=True)
class Envelope:
    topic: str
    dedupe_key: str
    headers: dict[str, str] = field(default_factory=dict)
    triggered_at: datetime | None = None
    ignored_reason: str | None = None  # stored, but never processed (unknown topic, draft order...)


def body_digest(body: bytes) -> str:
    return hashlib.sha256(body).hexdigest()


def parse_http_time(value: str | None) -> datetime | None:
    """ISO 8601 as Shopify sends it (``2025-07-10T16:15:47.000000Z``); None when absent or odd."""
    if not value:
        return None
    try:
        dt = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return dt.replace(tzinfo=timezone.utc) if dt.tzinfo is None else dt.astimezone(timezone.utc)


def is_ascii(value: str) -> bool:
    """``hmac.compare_digest`` raises on non-ASCII str; such a header is simply wrong."""
    return value.isascii()
