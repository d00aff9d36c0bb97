"""Retry as a pure decision over the attempts already recorded (no sleeps, no clock)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta


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
