"""The loop every outbox consumer runs (messages, store write-backs, hand-off notices)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable


async def drain(run_once: Callable[[], Awaitable[int]], max_batches: int = 10_000) -> int:
    """Run batches until one finds nothing due (tests, the CLI, benchmarks)."""
    total = 0
    for _ in range(max_batches):
        n = await run_once()
        total += n
        if n == 0:
            break
    return total


async def run_forever(run_once: Callable[[], Awaitable[int]], stop: asyncio.Event, idle_seconds: float, log: logging.Logger) -> None:
    """Batches back to back while there is work; an idle wait (cut short by ``stop``) when there is none."""
    while not stop.is_set():
        try:
            n = await run_once()
        except Exception:
            log.exception("%s cycle failed; retrying", log.name)
            n = 0
        if n == 0:
            try:
                await asyncio.wait_for(stop.wait(), timeout=idle_seconds)
            except asyncio.TimeoutError:
                pass
