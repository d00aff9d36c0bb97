"""outbox.planned_at: when a WhatsApp message was meant to go, so one held far past it is dropped

A queued message went out whenever it became claimable, however late (a restricted account, the
number rated RED, the dispatcher down for a day). The dispatcher now skips a message held longer
than ``policy.*send_within_hours`` after it was meant to go as ``too_late``. ``due_at`` cannot say
when that was: every deferral moves it (the RED hold looks again hourly, quiet hours, spacing,
retries), and ``created_at`` is when it was queued, not when it was meant to go (a step queued for
later, a message requeued once its missing value came, 131049's retry the next day). Messages
still waiting take their due time now as their planned time.

Revision ID: 0022
Revises: 0021
Create Date: 2026-12-18
"""
import sqlalchemy as sa
from alembic import op

import connector.storage.models


revision = '0022'
down_revision = '0021'
branch_labels = None
depends_on = None


def upgrade() -> None:
    # plain ADD COLUMN (SQLite has it): a batch rebuild would drop the outbox and, with foreign keys on,
    # its attempts (see 0010)
    op.add_column('outbox', sa.Column('planned_at', connector.storage.models.UTCDateTime(timezone=True), nullable=True))
    outbox = sa.table('outbox', sa.column('status', sa.String()),
                      sa.column('due_at', connector.storage.models.UTCDateTime(timezone=True)),
                      sa.column('planned_at', connector.storage.models.UTCDateTime(timezone=True)))
    op.execute(outbox.update().where(outbox.c.status == 'pending').values(planned_at=outbox.c.due_at))


def downgrade() -> None:
    if op.get_bind().dialect.name == "sqlite":
        op.execute("ALTER TABLE outbox DROP COLUMN planned_at")  # SQLite >= 3.35, as 0010 needs
    else:
        op.drop_column('outbox', 'planned_at')
