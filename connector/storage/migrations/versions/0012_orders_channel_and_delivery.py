"""orders.channel and orders.delivery: a till sale or a pickup is no parcel to announce

A Shopify POS sale (the customer in the shop) got "order confirmed" and then "your order has
shipped", and a local-pickup order got "shipped" when it was marked picked up. The order now
says where it was placed (``online`` / ``pos``) and how it reaches the customer (``shipping`` /
``pickup`` / ``none``); the journeys read both (connector/events.py SalesChannel, Delivery).
Orders stored before keep the old behaviour: online, shipping.

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-07
"""
import sqlalchemy as sa
from alembic import op


revision = '0012'
down_revision = '0011'
branch_labels = None
depends_on = None


def upgrade() -> None:
    # plain ADD COLUMN (SQLite has it): a batch rebuild would drop orders, and with foreign keys on
    # that would take its order_lines with it (see 0010)
    op.add_column('orders', sa.Column('channel', sa.String(length=16), server_default='online', nullable=False))
    op.add_column('orders', sa.Column('delivery', sa.String(length=16), server_default='shipping', nullable=False))


def downgrade() -> None:
    for column in ('delivery', 'channel'):
        if op.get_bind().dialect.name == "sqlite":
            op.execute(f"ALTER TABLE orders DROP COLUMN {column}")  # SQLite >= 3.35, as 0010 needs
        else:
            op.drop_column('orders', column)
