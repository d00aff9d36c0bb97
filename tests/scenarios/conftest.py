"""Fixtures for the end-to-end journey scenarios (see harness.py).

- ``world``: the fake WhatsApp Cloud API, Shopify Admin API, WooCommerce REST API and
  hand-off webhook, served once per session on 127.0.0.1 and emptied before each test;
- ``sqlite_url``: a fresh migrated SQLite database (most scenarios run on SQLite only);
  scenarios that must also hold on PostgreSQL take the shared ``db_url`` fixture instead;
- ``scenario``: builds and starts a ``Scenario`` for a platform, closed after the test;
- ``store``: what the platform sends for each step of a story (stores.py), once for Shopify and
  once for WooCommerce.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from connector.sandbox.whatsapp import SandboxServer
from tests.scenarios.fakes import FakeWorld
from tests.scenarios.harness import Scenario
from tests.scenarios.stores import SHOPIFY, WOOCOMMERCE, Store


@pytest.fixture(scope="session")
def _world_server() -> Iterator[FakeWorld]:
    world = FakeWorld()
    with SandboxServer(world.app) as server:
        world.url = server.url
        yield world


@pytest.fixture
def world(_world_server: FakeWorld) -> FakeWorld:
    _world_server.reset()
    return _world_server


@pytest.fixture
def sqlite_url(tmp_path: Path, sqlite_template: Path) -> str:
    path = tmp_path / "storeloop.db"
    shutil.copy(sqlite_template, path)
    return f"sqlite:///{path}"


@pytest.fixture(params=[SHOPIFY, WOOCOMMERCE], ids=lambda s: s.platform)
def store(request: pytest.FixtureRequest) -> Store:
    return request.param


@pytest.fixture
def scenario(world: FakeWorld) -> Iterator[Callable[..., Scenario]]:
    started: list[Scenario] = []

    def start(db_url: str, platform: str, **kw: Any) -> Scenario:
        sc = Scenario(world, db_url, platform, **kw).__enter__()
        started.append(sc)
        return sc

    yield start
    for sc in reversed(started):
        sc.__exit__(None, None, None)
    assert not world.refused, f"calls refused by the fake peers (bad credentials or signature): {world.refused}"
