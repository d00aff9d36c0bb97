"""The README's first command: the demo runs the real server over 127.0.0.1, simulates a store, and reports.

The simulation's customers convert with set probabilities, reminded or not, so the true lift
of each marketing journey is known; the report's 95% interval must contain it.
"""

from __future__ import annotations

import re
import subprocess
import sys


def test_demo_runs_end_to_end_and_its_report_finds_the_true_lift():
    result = subprocess.run(
        [sys.executable, "-m", "connector", "demo"],
        capture_output=True, text=True, timeout=300, env={"PATH": "/usr/bin:/bin", "COLUMNS": "200"},
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    out = result.stdout
    assert "What the connector stored" in out
    stored = out.split("What the connector stored")[1].split("What it sent")[0]
    assert "pending" not in stored and "failed" not in stored  # every webhook processed
    assert re.search(r"refused 1\)", out)  # the forged delivery
    assert "Biggest leak:" in out and "week 2026-W47" in out
    lift = out.split("Lift: what the report found vs the truth")[1]
    rows = [line for line in lift.splitlines() if "checkout_recovery" in line or "reorder" in line]
    assert len(rows) == 2 and all(line.rstrip(" │").endswith("yes") for line in rows), lift
    assert '"source": "order_with_phone"' in out  # one customer's context from the admin API
    assert "/dashboard/demo-shop?week=2026-W47" in out
