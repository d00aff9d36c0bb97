"""previous_numbers: the numbers customers had before they changed them on WhatsApp

Meta's ``user_changed_number`` system message says a customer now uses another number. Her contact
moves to it (``connector/number_change.py``): her consent, opt-out, journey runs, open cases and queued
messages follow her. The old number is kept here, against her contact, so a late status or reply
naming it still finds her for a while after ``changed_at``. A new table: nothing to read back from earlier data.

Revision ID: 0029
Revises: 0028
Create Date: 2026-12-08
"""
import sqlalchemy as sa
from alembic import op

import connector.storage.models


revision = '0029'
down_revision = '0028'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('previous_numbers',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('store_id', sa.Integer(), nullable=False),
    sa.Column('phone_key', sa.String(length=80), nullable=False),
    sa.Column('contact_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('from_contact_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('changed_at', connector.storage.models.UTCDateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['contact_id'], ['contacts.id'], name=op.f('fk_previous_numbers_contact_id_contacts')),
    sa.ForeignKeyConstraint(['from_contact_id'], ['contacts.id'], name=op.f('fk_previous_numbers_from_contact_id_contacts')),
    sa.ForeignKeyConstraint(['store_id'], ['stores.id'], name=op.f('fk_previous_numbers_store_id_stores')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_previous_numbers')),
    sa.UniqueConstraint('store_id', 'phone_key', name='uq_previous_numbers_store_phone')
    )
    op.create_index('ix_previous_numbers_store_contact', 'previous_numbers', ['store_id', 'contact_id'], unique=False)


def downgrade() -> None:
    op.drop_index('ix_previous_numbers_store_contact', table_name='previous_numbers')
    op.drop_table('previous_numbers')
