"""indexes for timers, statuses and send history

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-24
"""
from alembic import op
import sqlalchemy as sa
import connector.storage.models


revision = '0003'
down_revision = '0002'
branch_labels = None
depends_on = None


def upgrade() -> None:

    with op.batch_alter_table('journey_runs', schema=None) as batch_op:
        batch_op.create_index('ix_journey_runs_contact', ['store_id', 'contact_id'], unique=False)
        batch_op.create_index('ix_journey_runs_due', ['store_id', 'status', 'next_due_at'], unique=False)

    with op.batch_alter_table('outbox', schema=None) as batch_op:
        batch_op.create_index('ix_outbox_contact_updated', ['contact_id', 'updated_at'], unique=False)
        batch_op.create_index('ix_outbox_store_wamid', ['store_id', 'wamid'], unique=False)




def downgrade() -> None:

    with op.batch_alter_table('outbox', schema=None) as batch_op:
        batch_op.drop_index('ix_outbox_store_wamid')
        batch_op.drop_index('ix_outbox_contact_updated')

    with op.batch_alter_table('journey_runs', schema=None) as batch_op:
        batch_op.drop_index('ix_journey_runs_due')
        batch_op.drop_index('ix_journey_runs_contact')


