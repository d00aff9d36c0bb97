"""Alembic environment: the engine is handed in by ``connector.storage.db``."""

from __future__ import annotations

from alembic import context

from connector.storage.models import Base

config = context.config
engine = config.attributes["engine"]

with engine.connect() as connection:
    context.configure(
        connection=connection,
        target_metadata=Base.metadata,
        render_as_batch=True,  # SQLite cannot ALTER most columns; batch mode rebuilds the table
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()
    connection.commit()
