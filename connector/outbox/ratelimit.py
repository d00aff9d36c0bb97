"""Pacing: a token bucket per sending phone number, and spacing per recipient.

Meta allows 80 messages/s per number by default (up to 1,000) and limits messages to
one recipient in a short time (131056). The bucket hands out send slots at exactly the
configured rate; the spacer tells the dispatcher when a recipient may get the next one,
so a long wait becomes a durable due time instead of a sleep. A number that answers 130429
is slower than configured (shared with the WhatsApp Business app, not yet upgraded): its
bucket halves its pace and climbs back over half a minute, as TCP does.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import deque
from collections.abc import Callable

THROTTLE_FLOOR = 1 / 16  # a throttled number's pace falls at most to this share of its rate ...
THROTTLE_RECOVERY = 30.0  # ... and climbs back to the whole rate within this many seconds without a 130429


class TokenBucket:
    """Slots at ``rate`` per second with a small burst; ``acquire`` waits for the next slot."""

    def __init__(self, rate: float, burst: float = 1.0, clock: Callable[[], float] = time.monotonic):
        self.rate = rate
        self.burst = max(1.0, burst)
        self.clock = clock
        self._next = clock()
        self._lock: asyncio.Lock | None = None
        self._cut = 1.0  # the share of ``rate`` right after the last 130429 ...
        self._cut_at: float | None = None  # ... and when that was

    def share(self, now: float | None = None) -> float:
        """The part of ``rate`` in force: 1 unless Meta said 130429 lately."""
        if self._cut_at is None:
            return 1.0
        now = self.clock() if now is None else now
        return min(1.0, self._cut + (now - self._cut_at) / THROTTLE_RECOVERY)

    def throttled(self) -> None:
        """Meta answered 130429: halve the pace at once, at most once a second (the sends already
        in flight say the same thing), down to ``THROTTLE_FLOOR``; it then climbs back linearly."""
        now = self.clock()
        if self._cut_at is not None and now - self._cut_at < 1.0:
            return
        self._cut, self._cut_at = max(THROTTLE_FLOOR, self.share(now) / 2), now

    def reserve(self) -> float:
        """Take the next slot; returns how long to wait for it (0 when a token is free)."""
        now = self.clock()
        rate = self.rate * self.share(now)
        earliest = now - (self.burst - 1) / rate
        slot = max(self._next, earliest)
        self._next = slot + 1 / rate
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
    """Remembers when each recipient was last messaged by this dispatcher (the dispatcher's
    key is the sending number and the recipient: Meta's pair limit is per business number)."""

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


class InFlightLimit:
    """Bounds the sends in flight to what the rate needs, never above ``cap``.

    Little's law: sends in flight = rate x latency. Holding many more open than that buys
    nothing (the token bucket paces anyway) and costs CPU: every idle pooled connection is
    polled on each request, which at 1,000/s on 127.0.0.1 made a fixed 32 slower than 4.
    The latency used is the smallest seen over the last two windows (as TCP BBR uses its
    min RTT), not the mean: a mean includes the time a finished send waits for the busy
    event loop, which grows with the limit and would feed back into it. With ``gain`` 2,
    a Graph answering in 150 ms at 80/s gets 25 slots and a 0.5 ms fake at 1,000/s gets 2.
    """

    def __init__(
        self, cap: int, rate: Callable[[], float], *, start: int = 4, gain: float = 2.0, window: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.cap = max(1, cap)
        self.rate = rate
        self.gain = gain
        self.window = window
        self.clock = clock
        self.limit = min(self.cap, max(1, start))
        self.in_flight = 0
        self._waiters: deque[asyncio.Future[None]] = deque()
        self._window_end = clock() + window
        self._current: float | None = None  # smallest latency in the window now open
        self._previous: float | None = None  # ... and in the one before

    @property
    def latency(self) -> float | None:
        seen = [x for x in (self._current, self._previous) if x is not None]
        return min(seen) if seen else None

    def observe(self, seconds: float) -> None:
        """Fold one send's latency into the estimate and resize the limit."""
        now = self.clock()
        if now >= self._window_end:
            self._previous, self._current = self._current, None
            self._window_end = now + self.window
        if self._current is None or seconds < self._current:
            self._current = seconds
        latency = self.latency or seconds
        self.limit = min(self.cap, max(1, math.ceil(self.rate() * latency * self.gain) + 1))
        self._wake()

    def _wake(self) -> None:
        while self._waiters and self.in_flight < self.limit:
            waiter = self._waiters.popleft()
            if not waiter.done():
                self.in_flight += 1
                waiter.set_result(None)

    async def __aenter__(self) -> None:
        if self.in_flight < self.limit and not self._waiters:
            self.in_flight += 1
            return
        waiter = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            await waiter
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():
                self.in_flight -= 1  # the slot was handed over just as we were cancelled
                self._wake()
            raise

    async def __aexit__(self, *exc: object) -> None:
        self.in_flight -= 1
        self._wake()
