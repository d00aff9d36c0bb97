"""journey_runs.content_removed_at, when the conversation retention took the customer's words out of a run

A COD run keeps the reason she typed for cancelling (``cancel_reason``) and every run the reason
of its hand-off (``handoff_reason``, which quotes her message); the hourly retention job now
empties those in runs finished more than ``worker.conversation_retention_days`` ago, as it does
for messages, sends and hand-offs (0024). The column says a run's state was reduced (a view of it
can say "removed after N days") and lets each run of the job skip the runs done before. Nothing is
emptied here: the first run of the job does it.

Revision ID: 0026
Revises: 0025
Create Date: 2026-12-07
"""
import sqlalchemy as sa
from alembic import op

import connector.storage.models


revision = '0026'
down_revision = '0025'
branch_labels = None
depends_on = None


def upgrade() -> None:
    # plain ADD COLUMN, as 0024: no batch rebuild of a table others point at
    op.add_column('journey_runs', sa.Column('content_removed_at', connector.storage.models.UTCDateTime(timezone=True), nullable=True))


def downgrade() -> None:
    if op.get_bind().dialect.name == "sqlite":
        op.execute("ALTER TABLE journey_runs DROP COLUMN content_removed_at")  # SQLite >= 3.35, as 0010 needs
    else:
        op.drop_column('journey_runs', 'content_removed_at')
