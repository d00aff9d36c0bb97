"""Fake peers that benchmarks run in their own process (sandbox Cloud API, fake Shopify)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


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


class PeerProcess:
    """A fake peer (a ``bench/_*.py`` server) in a child process on 127.0.0.1: started with
    ``args``, ready once its ``/_ready`` answers, stopped on exit; its output goes to a log."""

    def __init__(self, workdir: Path, script: str, what: str, args: list[str]):
        self.what = what
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        cmd = [sys.executable, str(BENCH / script), "--port", str(self.port), *args]
        self.log = (workdir / f"{Path(script).stem.lstrip('_')}-{self.port}.log").open("w")
        self.proc = subprocess.Popen(cmd, cwd=BENCH.parent, stdout=self.log, stderr=subprocess.STDOUT)

    def __enter__(self):
        try:
            wait_ready(self.proc, f"{self.url}/_ready", self.what, self.log.name)
        except BaseException:
            self.__exit__()
            raise
        return self

    def cpu_seconds(self) -> float | None:
        """utime + stime of the peer's process so far (Linux /proc)."""
        try:
            fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
            return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        except (OSError, ValueError, IndexError):
            return None

    def get_json(self, path: str) -> Any:
        with urllib.request.urlopen(f"{self.url}{path}", timeout=30) as r:
            return json.loads(r.read())

    def __exit__(self, *exc: object) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.log.close()


class SandboxProcess(PeerProcess):
    """bench/_sandbox_server.py (the sandbox Cloud API) in a child process, so the fake server
    shares neither the event loop nor the GIL of what the bench measures."""

    def __init__(self, workdir: Path, args: list[str] | None = None):
        super().__init__(workdir, "_sandbox_server.py", "sandbox", args or [])

    def calls(self) -> list[tuple]:
        """Every call as (monotonic time, HTTP status, callback data, to): CLOCK_MONOTONIC is
        one clock for every process of the machine, so the times compare with the bench's."""
        return [tuple(c) for c in self.get_json("/_calls")]


class SandboxThread:
    """A sandbox Cloud API app (``connector.sandbox.whatsapp``) served in a thread of this
    process, as tests run it: the same face as ``SandboxProcess``, sharing this process's CPU."""

    def __init__(self, fake: Any):
        from connector.sandbox.whatsapp import SandboxServer

        self.fake = fake
        self.server = SandboxServer(fake.app)
        self.url = self.server.url

    def __enter__(self) -> "SandboxThread":
        self.server.__enter__()
        return self

    def cpu_seconds(self) -> float | None:
        return None  # shares this process

    def calls(self) -> list[tuple]:
        """Every call as (monotonic time, HTTP status, callback data, to)."""
        return [(c.at, c.status, c.callback_data, c.to) for c in self.fake.calls]

    def __exit__(self, *exc: object) -> None:
        self.server.__exit__(*exc)
