"""The command line a store's engineer uses."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

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


def test_python_dash_m_connector_is_the_same_cli(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "connector", "check-config", str(EXAMPLE)],
        capture_output=True, text=True, env={"PATH": "/usr/bin:/bin", **EXAMPLE_ENV}, timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert "acme" in result.stdout
