"""erased_refs: an erased customer's orders and platform customer id, so later events about them are ignored

After an erasure the store still holds her orders: a later update of one of them (WooCommerce's
``order.updated``, Shopify's ``orders/updated``, a fulfilment, the reconcile reading it back) or of her
account carried her name, phone, email and address back under a new contact. Each erasure now records
the order ids it reached and a keyed hash of her customer id (``connector/erased.py``); erasures made
before this migration recorded nothing and are not covered.

Revision ID: 0023
Revises: 0022
Create Date: 2026-12-18
"""
import sqlalchemy as sa
from alembic import op

import connector.storage.models


revision = '0023'
down_revision = '0022'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('erased_refs',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('store_id', sa.Integer(), nullable=False),
    sa.Column('kind', sa.String(length=16), nullable=False),
    sa.Column('ref', sa.String(length=64), nullable=False),
    sa.Column('erased_at', connector.storage.models.UTCDateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['store_id'], ['stores.id'], name=op.f('fk_erased_refs_store_id_stores')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_erased_refs')),
    sa.UniqueConstraint('store_id', 'kind', 'ref', name='uq_erased_refs_store_kind_ref')
    )


def downgrade() -> None:
    op.drop_table('erased_refs')
