"""Run every benchmark script in bench/ (all *.py except this one and _*.py helpers), one after another.

    .venv/bin/python bench/run.py        # what `make bench` does
Exit code: non-zero if any script failed.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parent


def main() -> int:
    scripts = sorted(p for p in BENCH.glob("*.py") if p.name != Path(__file__).name and not p.name.startswith("_"))
    failed = []
    for script in scripts:
        print(f"== {script.relative_to(BENCH.parent)}", flush=True)
        code = subprocess.call([sys.executable, str(script)], cwd=BENCH.parent)  # output goes straight through
        if code != 0:
            failed.append(f"{script.name} (exit {code})")
        print(flush=True)
    if failed:
        print("failed: " + ", ".join(failed))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
