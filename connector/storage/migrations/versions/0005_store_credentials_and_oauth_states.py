"""store credentials and oauth states

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-24
"""
from alembic import op
import sqlalchemy as sa
import connector.storage.models


revision = '0005'
down_revision = '0004'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('oauth_states',
    sa.Column('nonce', sa.String(length=64), nullable=False),
    sa.Column('store_key', sa.String(length=64), nullable=False),
    sa.Column('shop', sa.String(length=255), nullable=False),
    sa.Column('created_at', connector.storage.models.UTCDateTime(timezone=True), nullable=False),
    sa.Column('used_at', connector.storage.models.UTCDateTime(timezone=True), nullable=True),
    sa.PrimaryKeyConstraint('nonce', name=op.f('pk_oauth_states'))
    )
    op.create_table('store_credentials',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('store_id', sa.Integer(), nullable=False),
    sa.Column('kind', sa.String(length=40), nullable=False),
    sa.Column('value', sa.Text(), nullable=False),
    sa.Column('expires_at', connector.storage.models.UTCDateTime(timezone=True), nullable=True),
    sa.Column('updated_at', connector.storage.models.UTCDateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['store_id'], ['stores.id'], name=op.f('fk_store_credentials_store_id_stores')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_store_credentials')),
    sa.UniqueConstraint('store_id', 'kind', name='uq_store_credentials_store_kind')
    )


def downgrade() -> None:
    op.drop_table('store_credentials')
    op.drop_table('oauth_states')
