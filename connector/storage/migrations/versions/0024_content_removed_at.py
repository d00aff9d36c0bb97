"""messages, outbox, handoffs: content_removed_at, when the conversation retention emptied the row

The hourly retention job now empties the conversation content of rows older than
``worker.conversation_retention_days``: message texts, settled sends' rendered messages, closed
hand-offs' context and the customer's words in their reason. The column says a row was emptied
(the timeline shows "text removed after N days" rather than a message that never had text) and
lets each run skip the rows already done. Nothing is emptied here: the first run of the job does it.

Revision ID: 0024
Revises: 0023
Create Date: 2026-12-07
"""
import sqlalchemy as sa
from alembic import op

import connector.storage.models


revision = '0024'
down_revision = '0023'
branch_labels = None
depends_on = None

TABLES = ('messages', 'outbox', 'handoffs')


def upgrade() -> None:
    # plain ADD COLUMN (SQLite has it): a batch rebuild would drop the outbox and, with foreign keys on,
    # its attempts (see 0010)
    for table in TABLES:
        op.add_column(table, sa.Column('content_removed_at', connector.storage.models.UTCDateTime(timezone=True), nullable=True))


def downgrade() -> None:
    for table in TABLES:
        if op.get_bind().dialect.name == "sqlite":
            op.execute(f"ALTER TABLE {table} DROP COLUMN content_removed_at")  # SQLite >= 3.35, as 0010 needs
        else:
            op.drop_column(table, 'content_removed_at')
