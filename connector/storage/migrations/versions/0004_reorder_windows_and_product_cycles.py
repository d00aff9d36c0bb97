"""reorder windows and product cycles

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-24
"""
from alembic import op
import sqlalchemy as sa
import connector.storage.models


revision = '0004'
down_revision = '0003'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('product_cycles',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('store_id', sa.Integer(), nullable=False),
    sa.Column('product_key', sa.String(length=140), nullable=False),
    sa.Column('source', sa.String(length=16), nullable=False),
    sa.Column('cycle_days', sa.Float(), nullable=False),
    sa.Column('samples', sa.Integer(), nullable=False),
    sa.Column('updated_at', connector.storage.models.UTCDateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['store_id'], ['stores.id'], name=op.f('fk_product_cycles_store_id_stores')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_product_cycles')),
    sa.UniqueConstraint('store_id', 'product_key', 'source', name='uq_product_cycles_key_source')
    )
    op.create_table('reorder_windows',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('store_id', sa.Integer(), nullable=False),
    sa.Column('contact_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('order_external_id', sa.String(length=64), nullable=False),
    sa.Column('product_key', sa.String(length=140), nullable=False),
    sa.Column('product_id', sa.String(length=64), nullable=True),
    sa.Column('variant_id', sa.String(length=64), nullable=True),
    sa.Column('sku', sa.String(length=128), nullable=True),
    sa.Column('title', sa.String(length=255), nullable=False),
    sa.Column('quantity', sa.Integer(), nullable=False),
    sa.Column('placed_at', connector.storage.models.UTCDateTime(timezone=True), nullable=False),
    sa.Column('anchor', sa.String(length=12), nullable=False),
    sa.Column('anchor_at', connector.storage.models.UTCDateTime(timezone=True), nullable=False),
    sa.Column('cycle_days', sa.Float(), nullable=False),
    sa.Column('cycle_source', sa.String(length=16), nullable=False),
    sa.Column('opens_at', connector.storage.models.UTCDateTime(timezone=True), nullable=False),
    sa.Column('status', sa.String(length=12), nullable=False),
    sa.Column('opened_at', connector.storage.models.UTCDateTime(timezone=True), nullable=True),
    sa.Column('reorder_order_id', sa.String(length=64), nullable=True),
    sa.Column('updated_at', connector.storage.models.UTCDateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['contact_id'], ['contacts.id'], name=op.f('fk_reorder_windows_contact_id_contacts')),
    sa.ForeignKeyConstraint(['store_id'], ['stores.id'], name=op.f('fk_reorder_windows_store_id_stores')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_reorder_windows')),
    sa.UniqueConstraint('store_id', 'order_external_id', 'product_key', name='uq_reorder_windows_order_product')
    )
    with op.batch_alter_table('reorder_windows', schema=None) as batch_op:
        batch_op.create_index('ix_reorder_windows_contact', ['store_id', 'contact_id', 'product_key'], unique=False)
        batch_op.create_index('ix_reorder_windows_due', ['store_id', 'status', 'opens_at'], unique=False)

    with op.batch_alter_table('fulfillments', schema=None) as batch_op:
        batch_op.add_column(sa.Column('delivered_at', connector.storage.models.UTCDateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column('updated_at', connector.storage.models.UTCDateTime(timezone=True), nullable=True))
        batch_op.create_index(batch_op.f('ix_fulfillments_updated_at'), ['updated_at'], unique=False)



def downgrade() -> None:
    with op.batch_alter_table('fulfillments', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_fulfillments_updated_at'))
        batch_op.drop_column('updated_at')
        batch_op.drop_column('delivered_at')

    with op.batch_alter_table('reorder_windows', schema=None) as batch_op:
        batch_op.drop_index('ix_reorder_windows_due')
        batch_op.drop_index('ix_reorder_windows_contact')

    op.drop_table('reorder_windows')
    op.drop_table('product_cycles')
