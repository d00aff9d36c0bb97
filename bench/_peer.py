"""Fake peers that benchmarks run in their own process (sandbox Cloud API, fake Shopify)."""

from __future__ import annotations

import subprocess
import time
import urllib.request


def wait_ready(proc: subprocess.Popen, url: str, what: str, log_name: str, timeout: float = 20.0) -> None:
    """Wait until ``url`` answers 200; fail at once if the process exits, or after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode}; see {log_name}")
        try:
            with urllib.request.urlopen(url, timeout=1) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what} did not start")
        time.sleep(0.05)
