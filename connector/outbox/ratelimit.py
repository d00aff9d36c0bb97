"""Pacing: a token bucket per sending phone number, and spacing per recipient.

Meta allows 80 messages/s per number by default (up to 1,000) and limits messages to
one recipient in a short time (131056). The bucket hands out send slots at exactly the
configured rate; the spacer tells the dispatcher when a recipient may get the next one,
so a long wait becomes a durable due time instead of a sleep.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable


class TokenBucket:
    """Slots at ``rate`` per second with a small burst; ``acquire`` waits for the next slot."""

    def __init__(self, rate: float, burst: float = 1.0, clock: Callable[[], float] = time.monotonic):
        self.rate = rate
        self.burst = max(1.0, burst)
        self.clock = clock
        self._next = clock()
        self._lock: asyncio.Lock | None = None

    def reserve(self) -> float:
        """Take the next slot; returns how long to wait for it (0 when a token is free)."""
        now = self.clock()
        earliest = now - (self.burst - 1) / self.rate
        slot = max(self._next, earliest)
        self._next = slot + 1 / self.rate
        return max(0.0, slot - now)

    async def acquire(self) -> None:
        """Wait for the next slot. One waiter at a time reserves, so a rate change (another
        dispatcher joined) applies to the very next send, not after slots booked ahead."""
        if self._lock is None:
            self._lock = asyncio.Lock()
        async with self._lock:
            wait = self.reserve()
            if wait > 0:
                await asyncio.sleep(wait)


class RecipientSpacer:
    """Remembers when each recipient was last messaged by this dispatcher."""

    def __init__(self, spacing: float, clock: Callable[[], float] = time.monotonic):
        self.spacing = spacing
        self.clock = clock
        self._last: dict[str, float] = {}

    def wait_for(self, recipient: str) -> float:
        last = self._last.get(recipient)
        if last is None:
            return 0.0
        return max(0.0, last + self.spacing - self.clock())

    def mark(self, recipient: str) -> None:
        self._last[recipient] = self.clock()
        if len(self._last) > 100_000:  # forget the oldest half; they are long past their spacing
            for key in sorted(self._last, key=self._last.__getitem__)[: len(self._last) // 2]:
                del self._last[key]
