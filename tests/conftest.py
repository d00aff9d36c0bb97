"""Shared fixtures: a migrated database on SQLite and on PostgreSQL, settings for two stores,
and a running app driven over HTTP. Storage tests take ``db`` and run once per backend."""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import text

from connector.config import Settings, parse_settings
from connector.storage.db import Database, make_engine, migrate
from connector.storage.models import Base

FIXTURES = Path(__file__).resolve().parents[2] / "shared" / "fixtures" / "public"
PG_URL = os.environ.get("STORELOOP_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
# CI (.ci/run) sets STORELOOP_REQUIRE_PG=1: a PostgreSQL test that cannot run there is a failure,
# not a skip. Without it (a laptop with no PostgreSQL) they skip, and the summary says so in red.
REQUIRE_PG = os.environ.get("STORELOOP_REQUIRE_PG", "") not in ("", "0")
_pg_problem: list[str] = []

SECRETS = {
    "shop_a": "shpss_store_a_secret",
    "shop_b": "shpss_store_b_secret",
    "woo": "woo_webhook_secret_1",
    "wa_app": "1222e786b144d0e85b9f365372d93676",  # the pywa signed vector's app secret
    "verify": "verify-me-please",
    "admin": "admin-token-123",
}
PHONE_ID_A = "106540352242922"
PHONE_ID_B = "277321005464405"
PHONE_ID_WOO = "1122334455667"


def settings_dict(db_url: str) -> dict:
    return {
        "server": {"admin_token": SECRETS["admin"], "max_body_bytes": 65536},
        "database": {"url": db_url},
        "worker": {"inbox_max_attempts": 3},
        "whatsapp": {"app_secret": SECRETS["wa_app"], "verify_token": SECRETS["verify"]},
        "stores": [
            {
                "key": "shop-a", "platform": "shopify", "shop_domain": "shop-a.myshopify.com",
                "webhook_secret": SECRETS["shop_a"], "timezone": "Asia/Kolkata", "default_country": "IN",
                "whatsapp_phone_number_id": PHONE_ID_A,
            },
            {
                "key": "shop-b", "platform": "shopify", "shop_domain": "shop-b.myshopify.com",
                "webhook_secret": SECRETS["shop_b"], "timezone": "America/New_York", "default_country": "US",
                "whatsapp_phone_number_id": PHONE_ID_B,
            },
            {
                "key": "woo", "platform": "woocommerce", "site_url": "https://bloom.example",
                "webhook_secret": SECRETS["woo"], "timezone": "Europe/Rome", "default_country": "US",
                "whatsapp_phone_number_id": PHONE_ID_WOO,
            },
        ],
    }


def make_settings(db_url: str, **overrides: dict) -> Settings:
    data = settings_dict(db_url)
    for section, values in overrides.items():
        data[section] = {**data.get(section, {}), **values}
    return parse_settings(data, environ={})


@pytest.fixture(autouse=True)
def _logging_restored():
    """``serve`` and ``worker`` point the storeloop logger at the stderr CliRunner captures and then
    closes: a later test that logs through it (a config warning, say) would print a logging error
    into its own CliRunner output. Every test starts from an unconfigured logger."""
    import logging

    logger = logging.getLogger("storeloop")
    saved = (logger.handlers[:], logger.level, logger.propagate)
    logger.handlers[:], logger.propagate = [], True
    yield
    logger.handlers[:], logger.level, logger.propagate = saved[0], saved[1], saved[2]


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("template") / "template.db"
    engine = make_engine(f"sqlite:///{path}")
    migrate(engine)
    engine.dispose()
    return path


@pytest.fixture(scope="session")
def pg_schema() -> Iterator[str | None]:
    """One migrated schema per test session; tables are emptied between tests."""
    schema = f"sl_test_{uuid.uuid4().hex[:10]}"
    try:
        admin = make_engine(PG_URL)
        with admin.begin() as conn:
            conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    except Exception as exc:  # no server here: PostgreSQL tests skip, and the summary says so loudly
        _pg_problem.append(f"{exc.__class__.__name__}: {str(exc).splitlines()[0]}")
    if _pg_problem:
        if REQUIRE_PG:
            pytest.fail(f"STORELOOP_REQUIRE_PG=1 but PostgreSQL is not reachable at {PG_URL}: {_pg_problem[0]}", pytrace=False)
        yield None
        return
    engine = make_engine(PG_URL, connect_args={"options": f"-csearch_path={schema}"})
    migrate(engine)
    engine.dispose()
    yield schema
    with admin.begin() as conn:
        conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
    admin.dispose()


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def db_url(request: pytest.FixtureRequest, tmp_path: Path, sqlite_template: Path) -> Iterator[str]:
    if request.param == "sqlite":
        path = tmp_path / "storeloop.db"
        shutil.copy(sqlite_template, path)
        yield f"sqlite:///{path}"
        return
    schema = request.getfixturevalue("pg_schema")
    if schema is None:
        pytest.skip(f"PostgreSQL not reachable at {PG_URL}: {_pg_problem[0]}")
    yield empty_pg_schema(schema)


def empty_pg_schema(schema: str) -> str:
    """Empty every table of the session's PostgreSQL schema; returns the URL that uses it."""
    engine = make_engine(PG_URL, connect_args={"options": f"-csearch_path={schema}"})
    with engine.begin() as conn:
        names = ", ".join(f'"{t.name}"' for t in Base.metadata.sorted_tables)
        conn.execute(text(f"TRUNCATE {names} RESTART IDENTITY CASCADE"))
    engine.dispose()
    return f"{PG_URL}?options=-csearch_path%3D{schema}"


@pytest.fixture
def db(db_url: str) -> Iterator[Database]:
    database = Database.from_url(db_url)
    yield database
    database.dispose()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):  # type: ignore[no-untyped-def]
    """With STORELOOP_REQUIRE_PG=1 a skipped PostgreSQL test (for whatever reason) fails."""
    report = yield
    if REQUIRE_PG and report.skipped and item.get_closest_marker("postgres") is not None and not hasattr(report, "wasxfail"):
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        report.outcome = "failed"
        report.longrepr = f"STORELOOP_REQUIRE_PG=1: this PostgreSQL test may not skip ({reason})"
    return report


def pytest_terminal_summary(terminalreporter, exitstatus, config):  # type: ignore[no-untyped-def]
    if _pg_problem and REQUIRE_PG:
        terminalreporter.write_sep("!", "PostgreSQL tests FAILED: STORELOOP_REQUIRE_PG=1 and no PostgreSQL", red=True, bold=True)
        terminalreporter.write_line(f"No PostgreSQL at {PG_URL}: {_pg_problem[0]}", red=True)
    elif _pg_problem:
        terminalreporter.write_sep("!", "PostgreSQL tests SKIPPED", red=True, bold=True)
        terminalreporter.write_line(f"No PostgreSQL at {PG_URL}: {_pg_problem[0]}", red=True)
        terminalreporter.write_line("Set STORELOOP_TEST_PG_URL to run the storage and webhook tests on PostgreSQL.", red=True)
