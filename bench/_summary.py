"""One line per headline figure, collected by bench/run.py into the `make bench` summary table.

A bench calls ``record(bench, figure, value, target, ok, ...)``; when run.py started it, the
line is appended (JSON) to the file named by ``STORELOOP_BENCH_SUMMARY``. Run alone, a bench
prints its own tables and this does nothing.

Besides the value, a line may say what it was measured against (``against``: the bare
endpoint in the same run, the configured rate) and the ``ratio`` between the two, which is
the figure that matters on a shared machine. Peak memory is the peak resident set of the
process that did the work: the bench's own process (``peak_mb()``, the default), or a server
the bench started (``process_peak_mb(pid)``, read just before stopping it, with
``peak_of`` naming it).
"""

from __future__ import annotations

import json
import os
import resource
from pathlib import Path
from typing import Any


def peak_mb() -> float:
    """This process's peak resident memory (ru_maxrss is in KiB on Linux)."""
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def _children(pid: int) -> list[int]:
    """Every live descendant of ``pid`` (uvicorn --workers N runs its workers as children)."""
    parents: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])  # the name in (...) may hold spaces
        parents.setdefault(ppid, []).append(int(entry.name))
    found, todo = [], [pid]
    while todo:
        for child in parents.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def process_peak_mb(pid: int) -> float | None:
    """Peak resident memory (VmHWM) of a live process and its descendants, summed, in MB.

    Read it while the process still runs (just before stopping it): /proc forgets a process
    when it exits. None where /proc is not there (not Linux) or the process is gone.
    """
    total_kb, seen = 0, False
    for p in [pid, *_children(pid)]:
        try:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    total_kb += int(line.split()[1])
                    seen = True
                    break
        except (OSError, ValueError):
            continue
    return round(total_kb / 1024, 1) if seen else None


def process_cpu_seconds(pid: int) -> float | None:
    """CPU time (user + system) a live process and its live descendants have used so far, in
    seconds; None where /proc is not there or the process is gone. Two readings around a load
    give the server's CPU per request, which a shared machine disturbs less than req/s."""
    ticks, seen = 0, False
    for p in [pid, *_children(pid)]:
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        ticks += int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15 of proc(5))
        seen = True
    return ticks / os.sysconf("SC_CLK_TCK") if seen else None


def record(bench: str, figure: str, value: Any, target: str | None = None, ok: bool | None = None, peak: float | None = None,
           *, in_process: bool = True, peak_of: str | None = None, against: str | None = None, ratio: str | None = None) -> None:
    """One summary line.

    ``peak``/``peak_of``: the peak memory of the process that did the work and its name (a
    server's, from ``process_peak_mb``); without them, this (the bench's) process's own peak,
    unless ``in_process=False`` says the work ran elsewhere and nobody measured it.
    ``against``/``ratio``: what the value is compared with, and value / that.
    """
    path = os.environ.get("STORELOOP_BENCH_SUMMARY")
    if not path:
        return
    if in_process and peak_of is None:  # the bench's own process did the work
        peak, peak_of = (peak if peak is not None else peak_mb()), "bench"
    line = {"bench": bench, "figure": figure, "value": str(value), "against": against, "ratio": ratio, "target": target, "ok": ok,
            "peak_mb": peak, "peak_of": peak_of if peak is not None else None}
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(line) + "\n")
