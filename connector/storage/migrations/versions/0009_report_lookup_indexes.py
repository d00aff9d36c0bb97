"""messages (store_id, outbox_id) and consent_changes (store_id, category, state, occurred_at) indexes:
the weekly report's failure codes and opt-outs read their rows, not the whole table

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-03
"""
from alembic import op


revision = '0009'
down_revision = '0008'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index('ix_messages_store_outbox', 'messages', ['store_id', 'outbox_id'], unique=False)
    op.create_index('ix_consent_changes_store_state_time', 'consent_changes', ['store_id', 'category', 'state', 'occurred_at'],
                    unique=False)


def downgrade() -> None:
    op.drop_index('ix_consent_changes_store_state_time', table_name='consent_changes')
    op.drop_index('ix_messages_store_outbox', table_name='messages')
