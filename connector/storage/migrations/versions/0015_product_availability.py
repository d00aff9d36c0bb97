"""product_availability: no reorder reminder for a product the store no longer sells, or has sold out

A product archived, made a draft or binned (Shopify ``status``, WooCommerce ``status``) kept its
customers' pending reorder windows, and the reminder linked to a product no one can buy. The product
webhooks now record such products (and sold-out ones, WooCommerce ``stock_status``); one row per
product that is not buyable, none for the others.

Revision ID: 0015
Revises: 0014
Create Date: 2026-12-10
"""
import sqlalchemy as sa
from alembic import op

import connector.storage.models


revision = '0015'
down_revision = '0014'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('product_availability',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('store_id', sa.Integer(), nullable=False),
    sa.Column('product_key', sa.String(length=140), nullable=False),
    sa.Column('available', sa.Boolean(), nullable=False),
    sa.Column('in_stock', sa.Boolean(), nullable=False),
    sa.Column('updated_at', connector.storage.models.UTCDateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['store_id'], ['stores.id'], name=op.f('fk_product_availability_store_id_stores')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_product_availability')),
    sa.UniqueConstraint('store_id', 'product_key', name='uq_product_availability_key')
    )


def downgrade() -> None:
    op.drop_table('product_availability')
