"""contacts (store_id, lower(trim(email))) index: orders end checkout runs of the same email

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-02
"""
import sqlalchemy as sa
from alembic import op


revision = '0008'
down_revision = '0007'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index('ix_contacts_store_email', 'contacts', ['store_id', sa.text('lower(trim(email))')], unique=False)


def downgrade() -> None:
    op.drop_index('ix_contacts_store_email', table_name='contacts')
