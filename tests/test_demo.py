"""The README's first command: the demo runs the real server over 127.0.0.1 and reports."""

from __future__ import annotations

import subprocess
import sys


def test_demo_runs_end_to_end():
    result = subprocess.run(
        [sys.executable, "-m", "connector", "demo", "--orders", "10"],
        capture_output=True, text=True, timeout=120, env={"PATH": "/usr/bin:/bin", "COLUMNS": "200"},
    )
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    assert "What the connector stored" in out
    assert "refused 1" in out  # the forged delivery
    assert '"source": "order_with_phone"' in out  # one customer's context from the admin API
    assert "pending" not in out.split("What the connector stored")[1].split("Orders")[0]  # everything processed
