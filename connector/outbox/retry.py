"""Retry as a pure decision over the attempts already recorded (no sleeps, no clock)."""

from __future__ import annotations

import email.utils
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    base_seconds: float = 2.0
    cap_seconds: float = 3600.0
    max_attempts: int = 8


def next_attempt_at(
    attempts: int, retry_after: float | None, policy: RetryPolicy, now: datetime, jitter: float
) -> datetime | None:
    """When to try again after ``attempts`` failed tries, or None to give up.

    Capped exponential backoff with "equal jitter" (half fixed, half random, ``jitter`` in
    [0, 1)) so many messages failing together do not retry in lockstep. A server's
    Retry-After is a floor: we never come back sooner than it asked.
    """
    if attempts >= policy.max_attempts:
        return None
    delay = min(policy.cap_seconds, policy.base_seconds * 2 ** max(0, attempts - 1))
    delay = delay / 2 + jitter * delay / 2
    if retry_after is not None:
        delay = max(delay, retry_after)
    return now + timedelta(seconds=delay)


def parse_retry_after(value: str | None, *, now: datetime, cap: float, sent: str | None = None) -> float | None:
    """An HTTP ``Retry-After`` (``"2"``, ``"2.5"`` or an HTTP-date) as seconds, clamped to [0, ``cap``]:
    a server asking for longer is not believed that far. None when absent or unreadable.

    An HTTP-date is a moment on the server's clock: with ``sent`` (the answer's ``Date`` header) the
    wait is that date minus ``sent`` (RFC 9110 10.2.3), so a server whose clock is an hour behind
    ours still gets the minute it asked for, not nothing; without a readable ``Date``, against ``now``.
    """
    if not value:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        when = _http_date(value)
        if when is None:
            return None
        seconds = (when - (_http_date(sent) or now)).total_seconds()
    if seconds != seconds:  # NaN
        return None
    return min(max(0.0, seconds), cap)


def _http_date(value: str | None) -> datetime | None:
    if not value:
        return None
    try:
        when = email.utils.parsedate_to_datetime(value.strip())
    except (TypeError, ValueError, IndexError):
        return None
    return when.replace(tzinfo=timezone.utc) if when.tzinfo is None else when  # an HTTP-date is always GMT
