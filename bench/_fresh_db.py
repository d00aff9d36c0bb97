"""A migrated, empty database for one benchmark run: a SQLite file, or a new PostgreSQL schema.

Shared by bench/dispatch.py, bench/sync.py and bench/windows.py.
"""

from __future__ import annotations

import uuid
from pathlib import Path

from sqlalchemy import text

from connector.storage.db import Database, make_engine, migrate


class FreshDatabase:
    """``workdir/<name>.db``, or a schema ``bench_<name>_<random>`` in ``pg_url`` (dropped by ``close``)."""

    def __init__(self, workdir: Path, name: str, pg_url: str | None):
        self.pg_url = pg_url
        self.path: Path | None = None
        if pg_url is None:
            self.path = workdir / f"{name}.db"
            self.url = f"sqlite:///{self.path}"
            engine = make_engine(self.url)
        else:
            self.schema = f"bench_{name.replace('-', '_')}_{uuid.uuid4().hex[:10]}"
            admin = make_engine(pg_url)
            with admin.begin() as conn:
                conn.execute(text(f'CREATE SCHEMA "{self.schema}"'))
            admin.dispose()
            self.url = f"{pg_url}{'&' if '?' in pg_url else '?'}options=-csearch_path%3D{self.schema}"
            engine = make_engine(pg_url, connect_args={"options": f"-csearch_path={self.schema}"})
        migrate(engine)
        engine.dispose()
        self.db = Database.from_url(self.url)  # connects on first use

    def size_mb(self) -> float | None:
        """The SQLite file with its WAL and shared-memory files; None on PostgreSQL."""
        if self.path is None:
            return None
        return sum(p.stat().st_size for p in self.path.parent.glob(self.path.name + "*")) / 2**20

    def close(self) -> None:
        self.db.dispose()
        if self.pg_url is not None:
            admin = make_engine(self.pg_url)
            with admin.begin() as conn:
                conn.execute(text(f'DROP SCHEMA "{self.schema}" CASCADE'))
            admin.dispose()
