"""Pausing Python's cyclic garbage collector while the processor applies a batch.

A batch holds its rows, their parsed events, the transaction cache's rows and the held
writes until it commits, and every one of those objects is young: each gen-0 collection the
batch's allocations trigger walks all of them, only to find them alive. On the issue's full
day (bench/pipeline.py, 150,000 events) that was ~2.9 s of a 55 s process phase, about
20 us a row, and a larger gen-0 threshold did not help (the same objects are walked once
whatever the threshold). With the collector paused for the batch, what the batch drops at
its end is freed by reference counting and never walked at all. Cycles made meanwhile (by
any thread) wait for the next collection after the batch: a batch lasts its time slice
(about a second) plus any wait for SQLite's write lock (at most the 30 s busy timeout, when
another process writes), so little can pile up.

The collector is process-wide, so the pause counts its holders: with two threads inside,
it resumes when the last one leaves, and never turns on a collector the embedding
application had turned off.
"""

from __future__ import annotations

import gc
import threading
from collections.abc import Iterator
from contextlib import contextmanager

_lock = threading.Lock()
_holders = 0
_resume = False  # whether the collector was on when the first holder paused it


@contextmanager
def cyclic_gc_paused() -> Iterator[None]:
    global _holders, _resume
    with _lock:
        if _holders == 0:
            _resume = gc.isenabled()
            gc.disable()
        _holders += 1
    try:
        yield
    finally:
        with _lock:
            _holders -= 1
            if _holders == 0 and _resume:
                gc.enable()
