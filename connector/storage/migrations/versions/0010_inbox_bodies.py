"""inbox_bodies: an inbox row's raw body in a table of its own, written once

SQLite rewrites a changed record whole, overflow pages included, so with the body inside
inbox_events every status change (pending -> done) wrote the 7-12 KB body again. The bodies
move out here; the column is dropped in place (SQLite >= 3.35 ``ALTER TABLE ... DROP
COLUMN``: a rebuild would drop inbox_events, and with foreign keys on that would cascade).

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-04
"""
import sqlite3

import sqlalchemy as sa
from alembic import op


revision = '0010'
down_revision = '0009'
branch_labels = None
depends_on = None


def upgrade() -> None:
    sqlite_ = op.get_bind().dialect.name == "sqlite"
    if sqlite_ and sqlite3.sqlite_version_info < (3, 35):
        raise RuntimeError(f"this migration needs SQLite 3.35 or newer (ALTER TABLE DROP COLUMN); this Python has {sqlite3.sqlite_version}")
    op.create_table('inbox_bodies',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), autoincrement=False, nullable=False),
    sa.Column('raw_body', sa.LargeBinary(), nullable=False),
    sa.ForeignKeyConstraint(['id'], ['inbox_events.id'], name=op.f('fk_inbox_bodies_id_inbox_events'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_inbox_bodies'))
    )
    op.execute("INSERT INTO inbox_bodies (id, raw_body) SELECT id, raw_body FROM inbox_events WHERE raw_body IS NOT NULL ORDER BY id")
    if sqlite_:
        op.execute("ALTER TABLE inbox_events DROP COLUMN raw_body")
    else:
        op.drop_column('inbox_events', 'raw_body')


def downgrade() -> None:
    if op.get_bind().dialect.name == "sqlite":
        op.execute("ALTER TABLE inbox_events ADD COLUMN raw_body BLOB")
    else:
        op.add_column('inbox_events', sa.Column('raw_body', sa.LargeBinary(), nullable=True))
    op.execute("UPDATE inbox_events SET raw_body = (SELECT b.raw_body FROM inbox_bodies b WHERE b.id = inbox_events.id)")
    op.drop_table('inbox_bodies')
