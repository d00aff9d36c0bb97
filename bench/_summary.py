"""One line per headline figure, collected by bench/run.py into the `make bench` summary table.

A bench calls ``record(bench, figure, value, target, ok, peak_mb)``; when run.py started it,
the line is appended (JSON) to the file named by ``STORELOOP_BENCH_SUMMARY``. Run alone, a
bench prints its own tables and this does nothing.
"""

from __future__ import annotations

import json
import os
import resource
from typing import Any


def peak_mb() -> float:
    """This process's peak resident memory (ru_maxrss is in KiB on Linux)."""
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def record(bench: str, figure: str, value: Any, target: str | None = None, ok: bool | None = None, peak: float | None = None,
           *, in_process: bool = True) -> None:
    """``in_process=False`` when the measured system ran in another process (its memory is not ours)."""
    path = os.environ.get("STORELOOP_BENCH_SUMMARY")
    if not path:
        return
    line = {"bench": bench, "figure": figure, "value": str(value), "target": target, "ok": ok,
            "peak_mb": None if not in_process else (peak if peak is not None else peak_mb())}
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(line) + "\n")
