"""Run every benchmark script in bench/ (all *.py except this one and _*.py helpers), then print one table.

    .venv/bin/python bench/run.py        # what `make bench` does

Each script prints its own tables as it goes and records its headline figures through
bench/_summary.py; the summary at the end puts them side by side with their targets, the
peak memory of the process that measured them, and the machine.
Exit code: non-zero if any script failed.
"""

from __future__ import annotations

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


def main() -> int:
    scripts = sorted(p for p in BENCH.glob("*.py") if p.name != Path(__file__).name and not p.name.startswith("_"))
    failed = []
    started = time.monotonic()
    with tempfile.NamedTemporaryFile("r", suffix=".jsonl", prefix="storeloop-bench-") as summary:
        env = {**os.environ, "STORELOOP_BENCH_SUMMARY": summary.name}
        for script in scripts:
            print(f"== {script.relative_to(BENCH.parent)}", flush=True)
            code = subprocess.call([sys.executable, str(script)], cwd=BENCH.parent, env=env)  # output goes straight through
            if code != 0:
                failed.append(f"{script.name} (exit {code})")
            print(flush=True)
        rows = [json.loads(line) for line in Path(summary.name).read_text().splitlines() if line.strip()]
    console = Console(width=max(120, Console().width))
    table = Table(title=f"storeloop benchmarks: {os.cpu_count()} CPUs ({_cpu()}), Python {platform.python_version()}, "
                        f"{time.strftime('%Y-%m-%d')}, {time.monotonic() - started:.0f} s in all")
    for col in ("bench", "figure", "value", "target", "met", "peak MB (in-process)"):
        table.add_column(col, justify="left" if col in ("bench", "figure", "target") else "right")
    for r in rows:
        met = "" if r["ok"] is None else ("[green]yes[/]" if r["ok"] else "[red]no[/]")
        table.add_row(r["bench"], r["figure"], r["value"], r["target"] or "", met, "-" if r["peak_mb"] is None else f"{r['peak_mb']:.0f}")
    console.print(table)
    if failed:
        print("failed: " + ", ".join(failed))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
