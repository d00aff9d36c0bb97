"""Run every benchmark script in bench/ (all *.py except this one and _*.py helpers), then print one table.

    .venv/bin/python bench/run.py                  # what `make bench` does
    .venv/bin/python bench/run.py ingest latency   # only these scripts, same summary

Each script prints its own tables as it goes and records its headline figures through
bench/_summary.py; the summary at the end puts them side by side with what each was measured
against in the same run (the bare endpoint, the configured rate) and the ratio, their
targets, the peak memory of the process that did the work (the bench's own, or the
`storeloop serve` it started), and the machine, with a reference loop timed before each
script (``loop_ms``): shared machines change speed, and that tells a slow machine from a
slow connector.
Exit code: non-zero if any script failed.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

BENCH = Path(__file__).resolve().parent


def _cpu() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def loop_ms() -> float:
    """CPU milliseconds for a fixed pure-Python loop (3 million additions): how fast this machine
    runs Python right now. Shared virtual machines change speed during a run (a loop like this
    one ran 1.7x slower at one time than another within one hour on 2026-12-02); absolute figures
    move with it, ratios much less."""
    t0 = time.process_time()
    x = 0
    for i in range(3_000_000):
        x += i
    return (time.process_time() - t0) * 1000


def summary_table(rows: list[dict], elapsed: float) -> Table:
    table = Table(title=f"storeloop benchmarks: {os.cpu_count()} CPUs ({_cpu()}), Python {platform.python_version()} "
                        f"({os.path.realpath(sys.executable)}), "
                        f"{time.strftime('%Y-%m-%d')}, {elapsed:.0f} s in all")
    for col in ("bench", "figure", "value", "against (same run)", "ratio", "target", "met", "peak MB (process)"):
        table.add_column(col, justify="right" if col in ("ratio", "met", "peak MB (process)") else "left")
    for r in rows:
        met = "" if r["ok"] is None else ("[green]yes[/]" if r["ok"] else "[red]no[/]")
        peak = "-" if r.get("peak_mb") is None else f"{r['peak_mb']:.0f}" + (f" ({r['peak_of']})" if r.get("peak_of") else "")
        table.add_row(r["bench"], r["figure"], r["value"], r.get("against") or "", r.get("ratio") or "", r["target"] or "", met, peak)
    return table


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("only", nargs="*", help="run only these scripts (e.g. ingest latency); default: every one")
    args = ap.parse_args()
    scripts = sorted(p for p in BENCH.glob("*.py") if p.name != Path(__file__).name and not p.name.startswith("_"))
    if args.only:
        unknown = set(args.only) - {p.stem for p in scripts}
        if unknown:
            ap.error(f"no such bench script: {', '.join(sorted(unknown))}")
        scripts = [p for p in scripts if p.stem in args.only]
    failed = []
    took: list[str] = []
    started = time.monotonic()
    with tempfile.NamedTemporaryFile("r", suffix=".jsonl", prefix="storeloop-bench-") as summary:
        env = {**os.environ, "STORELOOP_BENCH_SUMMARY": summary.name}
        for script in scripts:
            speed = loop_ms()
            print(f"== {script.relative_to(BENCH.parent)} (machine check: reference loop {speed:.0f} ms)", flush=True)
            t0 = time.monotonic()
            code = subprocess.call([sys.executable, str(script)], cwd=BENCH.parent, env=env)  # output goes straight through
            took.append(f"{script.stem} {time.monotonic() - t0:.0f} s (loop {speed:.0f} ms)")
            if code != 0:
                failed.append(f"{script.name} (exit {code})")
            print(flush=True)
        rows = [json.loads(line) for line in Path(summary.name).read_text().splitlines() if line.strip()]
    console = Console(width=max(170, Console().width))
    console.print(summary_table(rows, time.monotonic() - started))
    console.print("ratio: value / against, both measured in this run on this machine. peak MB: peak resident memory of the process "
                  "that did the work: the bench's own, or the `storeloop serve` it started (VmHWM, read just before stopping it).")
    console.print(f"wall time per script, with the reference loop's CPU time just before it: {', '.join(took)}; "
                  f"after the last: {loop_ms():.0f} ms")
    if failed:
        print("failed: " + ", ".join(failed))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
