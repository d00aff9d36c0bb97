"""The command line a store's engineer uses."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from connector.cli import app
from connector.storage.db import current_revision, head_revision, make_engine
from tests.test_config import EXAMPLE, EXAMPLE_ENV

runner = CliRunner()


def test_check_config_prints_a_summary_without_secrets(monkeypatch):
    for k, v in EXAMPLE_ENV.items():
        monkeypatch.setenv(k, v)
    result = runner.invoke(app, ["check-config", str(EXAMPLE)])
    assert result.exit_code == 0, result.output
    assert "valid" in result.output and "acme" in result.output and "bloom" in result.output
    assert "dry-run" in result.output
    for secret in EXAMPLE_ENV.values():
        assert secret not in result.output


def test_check_config_lists_every_problem_and_exits_2(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text(
        '[server]\nprot = 1\n[[stores]]\nkey = "a"\nplatform = "shopify"\nshop_domain = "a.myshopify.com"\n'
        'webhook_secret = "env:NOPE_NOT_SET"\ntimezone = "Mars/Base"\n'
    )
    result = runner.invoke(app, ["check-config", str(bad)])
    assert result.exit_code == 2
    assert "server.prot: unknown key (typo?)" in result.output
    assert "stores[0].webhook_secret: environment variable NOPE_NOT_SET is not set" in result.output
    assert "stores[0].timezone" in result.output


STORE = '''
[[stores]]
key = "acme"
platform = "shopify"
shop_domain = "acme.myshopify.com"
webhook_secret = "whsec-1"
'''


def _config(tmp_path: Path, *, auto_migrate: bool) -> Path:
    path = tmp_path / "c.toml"
    path.write_text(f'[database]\nurl = "sqlite:///{tmp_path / "x.db"}"\nauto_migrate = {str(auto_migrate).lower()}\n')
    return path


def test_serve_refuses_an_unmigrated_database_and_migrate_fixes_it(tmp_path):
    config = _config(tmp_path, auto_migrate=False)
    refused = runner.invoke(app, ["serve", "--config", str(config)])
    assert refused.exit_code == 3
    assert "run `storeloop migrate" in refused.output
    migrated = runner.invoke(app, ["migrate", "--config", str(config)])
    assert migrated.exit_code == 0, migrated.output
    engine = make_engine(f"sqlite:///{tmp_path / 'x.db'}")
    assert current_revision(engine) == head_revision()
    engine.dispose()


@pytest.mark.parametrize("command", [["migrate"], ["serve"], ["report", "--store", "acme"]])
@pytest.mark.parametrize("auto_migrate", [True, False])
def test_a_database_a_newer_release_migrated_is_refused_in_words_not_a_traceback(tmp_path, command, auto_migrate):
    """After a rollback to an older release, the database is at a revision this code does not know:
    every command says so (and what to do) and exits 3, rather than printing Alembic's traceback."""
    from sqlalchemy import text

    config = _config(tmp_path, auto_migrate=auto_migrate)
    config.write_text(config.read_text() + STORE)
    assert runner.invoke(app, ["migrate", "--config", str(config)]).exit_code == 0
    engine = make_engine(f"sqlite:///{tmp_path / 'x.db'}")
    with engine.begin() as conn:
        conn.execute(text("UPDATE alembic_version SET version_num = '9999'"))
    engine.dispose()
    result = runner.invoke(app, [*command, "--config", str(config)])
    assert result.exit_code == 3, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    said = " ".join(result.output.split())
    assert "9999" in said and "newer" in said and head_revision() in said
    engine = make_engine(f"sqlite:///{tmp_path / 'x.db'}")
    assert current_revision(engine) == "9999"  # nothing was touched
    engine.dispose()


def test_python_dash_m_connector_is_the_same_cli(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "connector", "check-config", str(EXAMPLE)],
        capture_output=True, text=True, env={"PATH": "/usr/bin:/bin", **EXAMPLE_ENV}, timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert "acme" in result.stdout


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _serve(tmp_path: Path, *flags: str):
    """The real `storeloop serve` in its own process on a free 127.0.0.1 port, a fresh SQLite file."""
    import os

    from tests.conftest import SECRETS
    from tests.helpers import ROOT

    port = _free_port()
    config = tmp_path / "serve.toml"
    config.write_text(
        f'[server]\nport = {port}\nlog_level = "warning"\n[database]\nurl = "sqlite:///{tmp_path / "serve.db"}"\n'
        f'[[stores]]\nkey = "shop-a"\nplatform = "shopify"\nshop_domain = "shop-a.myshopify.com"\n'
        f'webhook_secret = "{SECRETS["shop_a"]}"\ndefault_country = "IN"\n'
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-m", "connector", "serve", "--config", str(config), *flags], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    return proc, f"http://127.0.0.1:{port}", tmp_path / "serve.db"


def test_serve_no_worker_answers_webhooks_and_leaves_them_for_a_worker(tmp_path):
    """`storeloop serve --no-worker` (the web role behind a load balancer) stores a signed webhook
    and answers 200, but runs no processor: the row stays pending for `storeloop worker`."""
    import sqlite3
    import threading

    import httpx

    from tests.conftest import FIXTURES, SECRETS
    from tests.helpers import dumps, load_json, shopify_headers, stop_process, wait_until

    proc, base, db_path = _serve(tmp_path, "--no-worker")
    try:
        def up() -> bool:
            if proc.poll() is not None:
                raise AssertionError(f"serve exited: {proc.stderr.read() if proc.stderr else ''}")
            try:
                return httpx.get(f"{base}/readyz", timeout=0.5).status_code == 200
            except httpx.TransportError:
                return False

        wait_until(up, 30, "storeloop serve --no-worker to answer /readyz")
        order = load_json(FIXTURES / "shopify" / "orders_create.sample.json") | {"phone": "+91 98765 43210"}
        body = dumps(order)
        answer = httpx.post(f"{base}/webhooks/shopify", content=body,
                            headers=shopify_headers(body, SECRETS["shop_a"], "shop-a.myshopify.com", "orders/create"), timeout=5)
        assert answer.status_code == 200, answer.text

        def rows() -> list[tuple[str, str]]:
            with sqlite3.connect(db_path) as conn:
                return conn.execute("SELECT topic, status FROM inbox_events").fetchall()

        assert rows() == [("orders/create", "pending")]  # committed before the 200
        # Nothing can signal that a processor is absent: give one far longer than it needs (a row
        # is processed within milliseconds when `serve` runs the worker), then look again.
        threading.Event().wait(1.5)
        assert rows() == [("orders/create", "pending")]
        with sqlite3.connect(db_path) as conn:
            assert conn.execute("SELECT count(*) FROM orders").fetchone()[0] == 0
    finally:
        stop_process(proc)
