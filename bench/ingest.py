"""Webhook ingest benchmark: the real `storeloop serve` against a bare Starlette endpoint.

Starts, on 127.0.0.1 only:
  * the connector as users run it (`storeloop serve`: uvicorn, uvloop, httptools) on a
    fresh SQLite file, with the inbox processor on (the real deployment) and, unless
    --skip-no-worker, a second fresh instance with --no-worker;
  * a bare Starlette app (bench/_bare.py) on the same uvicorn stack, as the baseline.
Each target gets the same N distinct, signed orders/create webhooks from bench/_load.py
(a separate process) after a short uncounted warm-up. Afterwards the rows stored in
inbox_events are counted and must equal the 2xx answers (exit code 1 otherwise; only
requests left unanswered at the time limit may explain extra stored rows).

    .venv/bin/python bench/ingest.py [--requests N] [--connections C] [--workers 1]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _peer import free_port  # noqa: E402
from _summary import process_cpu_seconds, process_peak_mb, record  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
BENCH = Path(__file__).resolve().parent
SECRET = "bench-shopify-webhook-secret"
SHOP = "bench.myshopify.com"
console = Console()
if console.width < 170:  # pipes and CI default to 80 columns: keep the table on one line per row
    console = Console(width=170)


def write_config(directory: Path) -> Path:
    """A minimal config: one Shopify store, SQLite in `directory`, warnings only."""
    path = directory / "storeloop.toml"
    path.write_text(
        f"""
[server]
log_level = "warning"
admin_token = "bench-admin-token"

[database]
url = "sqlite:///{directory / 'bench.db'}"

[[stores]]
key = "bench"
platform = "shopify"
shop_domain = "{SHOP}"
webhook_secret = "{SECRET}"
"""
    )
    return path


class Servers:
    """Every subprocess this benchmark starts; `stop_all` terminates, then kills, each one."""

    def __init__(self) -> None:
        self.procs: list[tuple[str, subprocess.Popen, Path]] = []

    def start(self, name: str, cmd: list[str], port: int, logdir: Path) -> subprocess.Popen:
        log = logdir / f"{name}.log"
        with open(log, "wb") as fh:
            proc = subprocess.Popen(cmd, cwd=ROOT, stdout=fh, stderr=subprocess.STDOUT)
        self.procs.append((name, proc, log))
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"{name} exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
            with contextlib.suppress(OSError):
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1) as r:
                    if r.status == 200:
                        return proc
            time.sleep(0.1)
        raise RuntimeError(f"{name} did not answer /healthz within 60 s:\n{log.read_text()[-3000:]}")

    def stop(self, proc: subprocess.Popen) -> None:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5)

    def stop_all(self) -> None:
        for _, proc, _ in reversed(self.procs):
            with contextlib.suppress(Exception):
                self.stop(proc)


def run_load(port: int, args: argparse.Namespace, tag: str, procs: Servers, server_pid: int | None = None) -> dict:
    """Run bench/_load.py in its own process against `port`; return its JSON result, with the
    server's CPU time per answered request (warm-up included) when ``server_pid`` is given."""
    cmd = [
        sys.executable, str(BENCH / "_load.py"), "--port", str(port), "--requests", str(args.requests),
        "--connections", str(args.connections), "--warmup", str(args.warmup), "--secret", SECRET,
        "--shop", SHOP, "--tag", tag, "--time-limit", str(args.time_limit),
    ]
    cpu_before = process_cpu_seconds(server_pid) if server_pid else None
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, text=True)
    procs.procs.append((f"load-{tag}", proc, Path(os.devnull)))
    try:
        out, _ = proc.communicate(timeout=args.time_limit + 120)  # + building and warm-up
    except subprocess.TimeoutExpired:
        procs.stop(proc)
        raise RuntimeError(f"load generator for {tag} overran its time limit") from None
    if proc.returncode != 0:
        raise RuntimeError(f"load generator for {tag} failed with exit code {proc.returncode}")
    result = json.loads(out.strip().splitlines()[-1])
    cpu_after = process_cpu_seconds(server_pid) if server_pid else None
    answered = result["ok"] + (result.get("warmup") or {}).get("ok", 0)
    if cpu_before is not None and cpu_after is not None and answered:
        result["cpu_us_per_req"] = (cpu_after - cpu_before) / answered * 1e6
    result["cpu_before"] = cpu_before
    return result


def stored_rows(db: Path, tag: str) -> tuple[int, dict[str, int]]:
    """Rows of this run in inbox_events with their body in inbox_bodies (warm-up rows excluded by
    their event id), by status: a row without its body would be a delivery lost."""
    with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=30)) as conn:
        pattern = f"shopify:orders/create:event:{tag}-%"
        warm = f"shopify:orders/create:event:{tag}-warm-%"
        rows = conn.execute(
            "SELECT status, count(*) FROM inbox_events e JOIN inbox_bodies b ON b.id = e.id "
            "WHERE dedupe_key LIKE ? AND dedupe_key NOT LIKE ? GROUP BY status",
            (pattern, warm),
        ).fetchall()
    by_status = {s: n for s, n in rows}
    return sum(by_status.values()), by_status


def bench_connector(name: str, extra: list[str], args: argparse.Namespace, procs: Servers, tmp: Path) -> dict:
    """Fresh database, start `storeloop serve`, load it, count stored rows, stop it."""
    directory = tmp / name
    directory.mkdir()
    config = write_config(directory)
    port = free_port()
    # `python -m connector` from ROOT, not the `storeloop` script: the script imports whichever
    # tree the package was installed from (the main checkout's, for a second worktree), so a
    # run from another worktree measured main's code instead of its own
    cmd = [sys.executable, "-m", "connector", "serve", "--config", str(config), "--port", str(port), "--workers", str(args.workers),
           *extra]
    proc = procs.start(name, cmd, port, tmp)
    console.print(f"[dim]{name}: {' '.join(cmd[1:])} (port {port})[/]")
    res = run_load(port, args, name, procs, proc.pid)
    # Deliveries acknowledged from the ingest journal (a burst: connector/storage/journal.py) reach
    # the inbox after the burst: wait for them (at most 60 s), and count the server's CPU until
    # then as well, so the import's cost is in the figures, not hidden after them.
    waited = time.monotonic()
    while True:
        res["stored"], res["stored_by_status"] = stored_rows(directory / "bench.db", name)
        if res["stored"] >= res["ok"] or time.monotonic() - waited > 60:
            break
        time.sleep(0.05)
    res["stored_after_s"] = time.monotonic() - waited
    answered = res["ok"] + (res.get("warmup") or {}).get("ok", 0)
    if res.get("cpu_before") is not None and answered:
        res["cpu_us_per_req_stored"] = (process_cpu_seconds(proc.pid) - res["cpu_before"]) / answered * 1e6
    res["peak_mb"] = process_peak_mb(proc.pid)  # the server's own peak RSS, while it still runs
    procs.stop(proc)
    return res


def fmt(v: float | None, spec: str = ".1f") -> str:
    return "-" if v is None else format(v, spec)


def report(results: dict[str, dict], args: argparse.Namespace) -> bool:
    """Print the table; return True when every connector acknowledged exactly what it stored."""
    table = Table(title=f"webhook ingest, {args.requests} requests, {args.connections} connections, {os.cpu_count()} CPUs")
    for col in ("target", "requests", "2xx", "non-2xx", "errors", "unsent", "req/s", "p50 ms", "p99 ms", "max ms", "vs bare",
                "server CPU us/req", "stored +s", "CPU us/req until stored", "peak MB"):
        table.add_column(col, justify="left" if col == "target" else "right")
    bare = results.get("bare", {}).get("rps")
    for name, r in results.items():
        ratio = f"{r['rps'] / bare:.0%}" if bare and name != "bare" else "-"
        table.add_row(
            name, str(r["requests"]), str(r["ok"]), str(r["non2xx"]), str(r["errors"]), str(r["unsent"]),
            fmt(r["rps"], ",.0f"), fmt(r["p50_ms"]), fmt(r["p99_ms"]), fmt(r["max_ms"]), ratio, fmt(r.get("cpu_us_per_req"), ".0f"),
            fmt(r.get("stored_after_s"), ".2f"), fmt(r.get("cpu_us_per_req_stored"), ".0f"), fmt(r.get("peak_mb"), ".0f"),
        )
    console.print(table)
    summarise(results)
    good = True
    for name, r in results.items():
        if r["non2xx"] or r["errors"]:
            console.print(f"{name}: statuses {r['statuses']}, samples {r['samples']}")
        if r.get("timed_out"):
            console.print(f"[yellow]{name}: stopped at the {args.time_limit:.0f} s limit[/]")
        if "stored" in r:
            # Requests without an answer (cut off at the time limit, or a broken connection) may or
            # may not have been stored; only then is "stored > acknowledged" explainable.
            unanswered = r["abandoned"] + r["errors"]
            same = r["stored"] == r["ok"]
            explained = r["ok"] <= r["stored"] <= r["ok"] + unanswered
            good &= same or explained
            verdict = "equal" if same else f"differs by {r['stored'] - r['ok']}, within {unanswered} unanswered" if explained else "MISMATCH"
            colour = "green" if same else "yellow" if explained else "bold red"
            console.print(
                f"[{colour}]{name}: acknowledged (2xx) {r['ok']} vs stored with their body {r['stored']} -> {verdict}[/]"
                f"  (status at the end of the run: {r['stored_by_status']})"
            )
    return good


def _figures(r: dict) -> str:
    cpu = f", {r['cpu_us_per_req']:.0f} us CPU/req" if r.get("cpu_us_per_req") else ""
    if r.get("cpu_us_per_req_stored"):
        cpu += f" ({r['cpu_us_per_req_stored']:.0f} until all stored, {r['stored_after_s']:.1f} s after the load)"
    return f"{r['rps']:,.0f} req/s, p50 {fmt(r['p50_ms'])} ms, p99 {fmt(r['p99_ms'])} ms{cpu}"


def summarise(results: dict[str, dict]) -> None:
    """The `make bench` summary lines: each connector against the bare endpoint of this run,
    and acknowledged (2xx) against stored rows; peak memory is each server process's own."""
    bare = results.get("bare")
    if not bare or not bare.get("rps"):
        return
    against = f"bare Starlette: {_figures(bare)}"
    for name, label, target in (("connector", "serve, SQLite", ">= 50% of bare req/s"),
                                ("connector --no-worker", "serve --no-worker, SQLite", None)):
        r = results.get(name)
        if r is None:
            continue
        ratio = r["rps"] / bare["rps"]
        record("ingest", f"signed 11.6 KB webhooks: req/s, p50, p99 ({label})", _figures(r), target,
               ratio >= 0.5 if target else None, r.get("peak_mb"), in_process=False, peak_of="serve" if r.get("peak_mb") else None,
               against=against, ratio=f"{ratio:.0%} req/s")
    checked = [(name, r) for name, r in results.items() if "stored" in r]
    if checked:
        record("ingest", "acknowledged (2xx) vs stored (inbox row and body)",
               "; ".join(f"{'serve' if name == 'connector' else name.replace('connector ', 'serve ')}: {r['ok']:,} acknowledged"
                         for name, r in checked),
               "equal", all(r["stored"] == r["ok"] for _, r in checked), in_process=False,
               against="; ".join(f"{r['stored']:,} stored" for _, r in checked),
               ratio="; ".join("equal" if r["stored"] == r["ok"] else f"{r['stored'] - r['ok']:+,}" for _, r in checked))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=20000, help="measured requests per target")
    ap.add_argument("--connections", type=int, default=64, help="concurrent keep-alive connections")
    ap.add_argument("--workers", type=int, default=1, help="uvicorn workers for the connector")
    ap.add_argument("--warmup", type=int, default=500, help="uncounted requests per target first")
    ap.add_argument("--time-limit", type=float, default=120.0, help="seconds per target, then the load stops")
    ap.add_argument("--skip-no-worker", action="store_true", help="do not also measure `serve --no-worker`")
    args = ap.parse_args()
    signal.signal(signal.SIGINT, signal.default_int_handler)  # even if started with SIGINT ignored
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))  # stop like Ctrl-C
    procs = Servers()
    results: dict[str, dict] = {}
    try:
        with tempfile.TemporaryDirectory(prefix="storeloop-bench-") as tmp_s:
            tmp = Path(tmp_s)
            try:
                bare_port = free_port()
                bare_cmd = [
                    sys.executable, "-m", "uvicorn", "--app-dir", str(BENCH), "_bare:app", "--host", "127.0.0.1",
                    "--port", str(bare_port), "--loop", "uvloop", "--http", "httptools", "--workers", "1",
                    "--log-level", "warning", "--no-access-log",
                ]
                bare = procs.start("bare", bare_cmd, bare_port, tmp)
                results["bare"] = run_load(bare_port, args, "bare", procs, bare.pid)
                results["bare"]["peak_mb"] = process_peak_mb(bare.pid)
                procs.stop(bare)  # idle, but leave both CPUs to the connector
                results["connector"] = bench_connector("connector", [], args, procs, tmp)
                if not args.skip_no_worker:
                    results["connector --no-worker"] = bench_connector(
                        "connector-no-worker", ["--no-worker"], args, procs, tmp
                    )
            finally:
                procs.stop_all()  # always, before the temp directory goes away
    except KeyboardInterrupt:
        console.print("[yellow]interrupted[/]")
        return 130
    return 0 if report(results, args) else 1


if __name__ == "__main__":
    sys.exit(main())
