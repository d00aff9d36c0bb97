"""contacts (store_id, wa_user_id) index: a sender shown only by their business-scoped id finds their contact

A WhatsApp user with a username may show no number (platform-facts C9): their STOP, a
marketing "stop" and their messages find the contact by the business-scoped user id
(``state.contact_by_user_id``), which without this index read every contact of the store.

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-05
"""
import sqlalchemy as sa
from alembic import op


revision = '0011'
down_revision = '0010'
branch_labels = None
depends_on = None


def upgrade() -> None:
    # partial: only contacts that have one (most have none, and then cost no index entry)
    op.create_index('ix_contacts_store_wa_user_id', 'contacts', ['store_id', 'wa_user_id'], unique=False,
                    sqlite_where=sa.text('wa_user_id IS NOT NULL'), postgresql_where=sa.text('wa_user_id IS NOT NULL'))


def downgrade() -> None:
    op.drop_index('ix_contacts_store_wa_user_id', table_name='contacts')
